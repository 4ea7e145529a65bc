//! How one attempt on an upstream ended: the one vocabulary shared by `retries.on`,
//! `passive_health.on`, the per-upstream metrics, passive health and the logs.
//!
//! [`Outcome`] is what happened; [`OutcomeMatch`] is one entry of an `on: [...]` list as the
//! operator wrote it (`connect_failure`, `timeout`, `reset`, `status_503`, `status_5xx`), and
//! [`OutcomeSet`] the whole list. It depends on nothing else in lb.

use std::fmt;

/// How an attempt on an upstream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The TCP connection could not be made (refused, unreachable, connect timeout).
    ConnectFailure,
    /// The upstream did not answer in time once connected.
    Timeout,
    /// The connection broke before a response header arrived.
    Reset,
    /// The upstream answered with this status.
    Status(u16),
}

/// The failure kinds counted per upstream in `lb_upstream_failures_total{kind=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    Connect = 0,
    Timeout = 1,
    Reset = 2,
    Status5xx = 3,
}

impl FailureKind {
    pub(crate) const ALL: [FailureKind; 4] = [
        FailureKind::Connect,
        FailureKind::Timeout,
        FailureKind::Reset,
        FailureKind::Status5xx,
    ];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Reset => "reset",
            FailureKind::Status5xx => "status_5xx",
        }
    }
}

impl Outcome {
    /// The failure this outcome counts as in the metrics, if any (a 5xx answer is one).
    pub(crate) fn failure_kind(self) -> Option<FailureKind> {
        match self {
            Outcome::ConnectFailure => Some(FailureKind::Connect),
            Outcome::Timeout => Some(FailureKind::Timeout),
            Outcome::Reset => Some(FailureKind::Reset),
            Outcome::Status(s) if s >= 500 => Some(FailureKind::Status5xx),
            Outcome::Status(_) => None,
        }
    }

    /// The status of an answered attempt.
    pub(crate) fn status(self) -> Option<u16> {
        match self {
            Outcome::Status(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::ConnectFailure => f.write_str("connect_failure"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Reset => f.write_str("reset"),
            Outcome::Status(s) => write!(f, "status_{s}"),
        }
    }
}

/// An inclusive range of HTTP status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub(crate) low: u16,
    pub(crate) high: u16,
}

impl StatusRange {
    pub(crate) const fn single(code: u16) -> Self {
        StatusRange {
            low: code,
            high: code,
        }
    }

    /// Every status of a class: `class(5)` is 500–599.
    pub(crate) const fn class(class: u16) -> Self {
        StatusRange {
            low: class * 100,
            high: class * 100 + 99,
        }
    }

    pub(crate) fn contains(&self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

/// One entry of an `on: [...]` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeMatch {
    ConnectFailure,
    Timeout,
    Reset,
    Status(StatusRange),
}

impl OutcomeMatch {
    pub(crate) fn matches(self, outcome: Outcome) -> bool {
        match (self, outcome) {
            (OutcomeMatch::ConnectFailure, Outcome::ConnectFailure)
            | (OutcomeMatch::Timeout, Outcome::Timeout)
            | (OutcomeMatch::Reset, Outcome::Reset) => true,
            (OutcomeMatch::Status(range), Outcome::Status(s)) => range.contains(s),
            _ => false,
        }
    }

    /// Parses the written form: `connect_failure`, `timeout`, `reset`, `status_NNN`,
    /// `status_Nxx`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "unknown failure `{text}`: expected connect_failure, timeout, reset, \
                 status_NNN (e.g. status_503) or status_Nxx (e.g. status_5xx)"
            )
        };
        match text {
            "connect_failure" => return Ok(OutcomeMatch::ConnectFailure),
            "timeout" => return Ok(OutcomeMatch::Timeout),
            "reset" => return Ok(OutcomeMatch::Reset),
            _ => {}
        }
        let code = text.strip_prefix("status_").ok_or_else(bad)?;
        if let Some(class) = code.strip_suffix("xx") {
            let class: u16 = class.parse().map_err(|_| bad())?;
            if !(1..=5).contains(&class) {
                return Err(bad());
            }
            return Ok(OutcomeMatch::Status(StatusRange::class(class)));
        }
        let code: u64 = code.parse().map_err(|_| bad())?;
        Ok(OutcomeMatch::Status(StatusRange::single(status_code(
            code,
        )?)))
    }
}

/// A status code between 100 and 599.
pub(crate) fn status_code(n: u64) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(code) if (100..=599).contains(&code) => Ok(code),
        _ => Err(format!(
            "invalid status code {n}: must be between 100 and 599"
        )),
    }
}

impl fmt::Display for OutcomeMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutcomeMatch::ConnectFailure => f.write_str("connect_failure"),
            OutcomeMatch::Timeout => f.write_str("timeout"),
            OutcomeMatch::Reset => f.write_str("reset"),
            OutcomeMatch::Status(r) if r.low == r.high => write!(f, "status_{}", r.low),
            OutcomeMatch::Status(r) => write!(f, "status_{}xx", r.low / 100),
        }
    }
}

/// An `on: [...]` list: which outcomes a policy acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeSet(pub Vec<OutcomeMatch>);

impl OutcomeSet {
    pub(crate) fn contains(&self, outcome: Outcome) -> bool {
        self.0.iter().any(|m| m.matches(outcome))
    }
}

impl fmt::Display for OutcomeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "[{}]", names.join(", "))
    }
}

/// A short, operator-readable reason for a pingora error ("connection refused", "timed out"),
/// for logs and the health-check detail.
/// Whether `e` failed for want of a local resource (file descriptors, buffers, memory, local
/// ports): then it says nothing about the upstream, and must not count against its health.
pub(crate) fn is_local_resource_error(e: &pingora::Error) -> bool {
    const LOCAL: [i32; 5] = [
        libc::EMFILE,
        libc::ENFILE,
        libc::ENOBUFS,
        libc::ENOMEM,
        libc::EADDRNOTAVAIL,
    ];
    let mut cause = e.cause.as_deref();
    // Bounded: pingora wraps an error a few times at most.
    for _ in 0..8 {
        let Some(c) = cause else { return false };
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return io.raw_os_error().is_some_and(|code| LOCAL.contains(&code));
        }
        match as_pingora_error(c) {
            Some(inner) => cause = inner.cause.as_deref(),
            None => break,
        }
    }
    // A cause that was turned into text on the way still names the OS error.
    let text = e.root_cause().to_string();
    LOCAL
        .iter()
        .any(|code| text.contains(&format!("(os error {code})")))
}

/// `cause` as a pingora error: pingora keeps a wrapped error as `Box<Error>` (or `Error`).
pub(crate) fn as_pingora_error<'a>(
    cause: &'a (dyn std::error::Error + Send + Sync + 'static),
) -> Option<&'a pingora::Error> {
    cause
        .downcast_ref::<pingora::Error>()
        .or_else(|| cause.downcast_ref::<Box<pingora::Error>>().map(|b| &**b))
}

pub(crate) fn describe_error(e: &pingora::Error) -> String {
    use pingora::ErrorType;
    match e.etype() {
        ErrorType::ConnectRefused => "connection refused".to_string(),
        ErrorType::ConnectTimedout => "connect timed out".to_string(),
        ErrorType::ReadTimedout => "no response in time".to_string(),
        ErrorType::CustomCode(_, status) => format!("health check answered HTTP {status}"),
        ErrorType::ConnectionClosed => "connection closed".to_string(),
        other => match e.root_cause().to_string() {
            cause if cause.is_empty() => other.as_str().to_string(),
            cause => format!("{}: {cause}", other.as_str()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_resource_errors_are_told_apart() {
        let wrap = |code: i32| {
            let mut e = pingora::Error::new(pingora::ErrorType::ConnectError);
            e.set_cause(std::io::Error::from_raw_os_error(code));
            e
        };
        assert!(is_local_resource_error(&wrap(libc::EMFILE)));
        assert!(is_local_resource_error(&wrap(libc::ENOBUFS)));
        assert!(!is_local_resource_error(&wrap(libc::ECONNREFUSED)));
        let mut outer = pingora::Error::new(pingora::ErrorType::ConnectError);
        outer.set_cause(wrap(libc::ENFILE));
        assert!(is_local_resource_error(&outer));
        assert!(!is_local_resource_error(&pingora::Error::new(
            pingora::ErrorType::ConnectRefused
        )));
    }

    #[test]
    fn written_forms_round_trip_and_match() {
        for text in [
            "connect_failure",
            "timeout",
            "reset",
            "status_503",
            "status_5xx",
        ] {
            assert_eq!(OutcomeMatch::parse(text).unwrap().to_string(), text);
        }
        let set = OutcomeSet(vec![
            OutcomeMatch::parse("status_5xx").unwrap(),
            OutcomeMatch::Reset,
        ]);
        assert!(set.contains(Outcome::Status(503)));
        assert!(!set.contains(Outcome::Status(404)));
        assert!(set.contains(Outcome::Reset));
        assert!(!set.contains(Outcome::Timeout));
        assert!(OutcomeMatch::parse("status_999").is_err());
        assert!(OutcomeMatch::parse("status_6xx").is_err());
    }

    #[test]
    fn failure_kinds_for_metrics() {
        assert_eq!(
            Outcome::Status(502).failure_kind(),
            Some(FailureKind::Status5xx)
        );
        assert_eq!(Outcome::Status(404).failure_kind(), None);
        assert_eq!(
            Outcome::ConnectFailure
                .failure_kind()
                .map(FailureKind::label),
            Some("connect")
        );
    }
}
