//! lb's own reasons for not proxying a request, and the short plain-text response sent for
//! each (no internals named).

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

use super::strict::Refusal;
use crate::balancer::selection::queue::AcquireError;
use crate::observe::metrics::Metrics;

/// No upstream is healthy: answered with 503.
pub(super) const NO_HEALTHY_UPSTREAM: ErrorType = ErrorType::Custom("NoHealthyUpstream");
/// Every healthy upstream was tried and failed: answered with 502.
pub(super) const NO_UPSTREAM_LEFT: ErrorType = ErrorType::Custom("NoUpstreamLeft");
/// Every usable upstream is at `max_conns` and the queue is full: 503.
pub(super) const QUEUE_FULL: ErrorType = ErrorType::Custom("QueueFull");
/// Every usable upstream stayed at `max_conns` for the whole queue timeout: 503.
pub(super) const QUEUE_TIMEOUT: ErrorType = ErrorType::Custom("QueueTimeout");
/// The upstream answered with a status that `retries.on` retries; the answer is dropped and
/// the request goes to another upstream.
pub(super) const RETRY_ON_STATUS: ErrorType = ErrorType::Custom("RetryOnStatus");

/// A client request refused by lb's limits or strictness (see [`super::strict`]); the status
/// and message travel in the error's context.
pub(super) const REFUSED: ErrorType = ErrorType::Custom("Refused");

/// The error for a refused request, counted in `lb_client_rejected_total`.
pub(super) fn refuse(metrics: &Metrics, refusal: Refusal) -> Box<Error> {
    metrics
        .client_rejected
        .with_label_values(&[refusal.reason])
        .inc();
    let mut e = Error::explain(REFUSED, refusal.message);
    e.set_retry(false);
    e.as_down();
    e.set_cause(RefusalCause(refusal));
    e
}

/// The error for a request over `lb.limits.rate`: a 429 with `Retry-After`.
pub(super) fn too_many_requests(metrics: &Metrics, retry_after: u64) -> Box<Error> {
    let mut e = refuse(metrics, super::strict::TOO_MANY_REQUESTS);
    e.set_context(format!("retry after {retry_after}s"));
    e
}

/// The `Retry-After` seconds of a 429 refusal.
fn retry_after(e: &Error) -> Option<u64> {
    let context = e.context.as_ref()?.as_str();
    context
        .strip_prefix("retry after ")?
        .strip_suffix('s')?
        .parse()
        .ok()
}

/// The refusal `e` carries, itself or in its causes (pingora may wrap a hook's error).
fn find_refusal(e: &Error) -> Option<Refusal> {
    let mut current = e;
    // Bounded: pingora wraps an error a few times at most.
    for _ in 0..8 {
        let cause = current.cause.as_ref()?;
        if let Some(r) = cause.downcast_ref::<RefusalCause>() {
            return Some(r.0);
        }
        current = crate::outcome::as_pingora_error(cause.as_ref())?;
    }
    None
}

/// Whether `e` is a refusal (or a client too slow with its body), which is not logged.
pub(super) fn is_refusal(e: &Error) -> bool {
    find_refusal(e).is_some()
        || (e.esource() == &ErrorSource::Downstream && e.etype() == &ErrorType::ReadTimedout)
}

/// Carries the [`Refusal`] in the error.
#[derive(Debug)]
struct RefusalCause(Refusal);

impl std::fmt::Display for RefusalCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.message)
    }
}

impl std::error::Error for RefusalCause {}

/// The status and a short explanation for a request that could not be proxied.
fn error_response(e: &Error) -> (u16, &'static str) {
    match e.etype() {
        _ if find_refusal(e).is_some() => {
            find_refusal(e).map_or((400, "the request is malformed"), |r| (r.status, r.message))
        }
        ErrorType::ReadTimedout if e.esource() == &ErrorSource::Downstream => {
            (408, "the request body did not arrive in time")
        }
        ErrorType::HTTPStatus(code) => (*code, "the request could not be served"),
        t if *t == NO_HEALTHY_UPSTREAM => (503, "no healthy upstream is available"),
        t if *t == NO_UPSTREAM_LEFT => (502, "no upstream could be reached"),
        t if *t == QUEUE_FULL => (
            503,
            "every upstream is at its max_conns and the queue is full",
        ),
        t if *t == QUEUE_TIMEOUT => (
            503,
            "every upstream stayed at its max_conns for the whole queue timeout",
        ),
        t if *t == RETRY_ON_STATUS => (502, "no upstream gave a usable answer"),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            (504, "the upstream did not answer in time")
        }
        _ => match e.esource() {
            ErrorSource::Upstream => (502, "the upstream failed"),
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                    (0, "")
                }
                _ => (400, "the request is malformed"),
            },
            ErrorSource::Internal | ErrorSource::Unset => (500, "internal error"),
        },
    }
}

/// The pingora error for a failed acquire.
pub(super) fn acquire_error(e: AcquireError) -> Box<Error> {
    match e {
        AcquireError::NoHealthyUpstream => {
            Error::explain(NO_HEALTHY_UPSTREAM, "no healthy upstream")
        }
        AcquireError::NoUpstreamLeft => {
            Error::explain(NO_UPSTREAM_LEFT, "every healthy upstream failed")
        }
        AcquireError::QueueFull => Error::explain(QUEUE_FULL, "queue full"),
        AcquireError::QueueTimeout => Error::explain(QUEUE_TIMEOUT, "queue timeout"),
    }
}

/// Sends the response for `e` (when the client can still get one); returns its status, 0 when
/// nothing was sent.
pub(super) async fn respond(session: &mut Session, e: &Error) -> u16 {
    let (status, message) = error_response(e);
    if status == 0 {
        return 0;
    }
    let body = Bytes::from(format!(
        "{status} {}: {message}\n",
        http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error")
    ));
    let written = match ResponseHeader::build(status, Some(4)) {
        Ok(mut resp) => {
            let _ = resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
            let _ = resp.insert_header(header::CONTENT_LENGTH, body.len());
            let _ = resp.insert_header(header::CACHE_CONTROL, "no-store");
            if status == 429 {
                let seconds = retry_after(e).unwrap_or(1);
                let _ = resp.insert_header(header::RETRY_AFTER, seconds);
            }
            session.write_error_response(resp, body).await
        }
        Err(e) => Err(e),
    };
    if let Err(write_error) = written {
        log::debug!("could not send the {status} response to the client: {write_error}");
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_statuses() {
        let up = |t: ErrorType| {
            let mut e = Error::new(t);
            e.as_up();
            e
        };
        assert_eq!(error_response(&up(ErrorType::ReadTimedout)).0, 504);
        assert_eq!(error_response(&up(ErrorType::ConnectRefused)).0, 502);
        assert_eq!(error_response(&Error::new(NO_HEALTHY_UPSTREAM)).0, 503);
    }
}
