//! What lb refuses in a request header before anything is forwarded, beyond what pingora's
//! parser already refuses (bad syntax, differing `Content-Length`s, a final transfer coding
//! other than `chunked`, more than 256 header lines or 1 MiB of header):
//! - a header larger than `lb.limits.max_header_bytes` or with more lines than
//!   `lb.limits.max_headers` (431);
//! - an HTTP/1.1 request without `Host` (RFC 9112 §3.2) (400);
//! - a `Content-Length` given twice or as a list, even of equal values (400);
//! - `Transfer-Encoding` other than exactly `chunked` (400): lb neither decodes nor labels
//!   other codings, so it does not pass them on;
//! - a request target that is not one of the four forms of RFC 9112 §3.2 (for instance a
//!   request line with two spaces, which pingora would rewrite to a target `%20/x`) (400);
//! - a `Content-Length` above `lb.limits.max_body_bytes` (413; a chunked body is counted as it
//!   streams).

use http::{header, Method, Version};
use pingora::http::RequestHeader;

use crate::config::ClientLimits;

/// Why a request is refused: the status, the metric's reason label and a short explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) reason: &'static str,
    pub(crate) message: &'static str,
}

const fn malformed(message: &'static str) -> Refusal {
    Refusal {
        status: 400,
        reason: "malformed",
        message,
    }
}

pub(crate) const BODY_TOO_LARGE: Refusal = Refusal {
    status: 413,
    reason: "body_too_large",
    message: "the request body is larger than this server accepts",
};

pub(crate) const TOO_MANY_REQUESTS: Refusal = Refusal {
    status: 429,
    reason: "rate",
    message: "too many requests from this address; retry later",
};

/// Checks a parsed request header; `header_bytes` is its size as received.
pub(crate) fn check_request(
    req: &RequestHeader,
    header_bytes: usize,
    limits: &ClientLimits,
) -> Result<(), Refusal> {
    if header_bytes > limits.max_header_bytes || req.headers.len() > limits.max_headers {
        return Err(Refusal {
            status: 431,
            reason: "header_too_large",
            message: "the request header is larger than this server accepts",
        });
    }
    if req.version == Version::HTTP_11 && !req.headers.contains_key(header::HOST) {
        return Err(malformed("an HTTP/1.1 request needs a Host header"));
    }
    let mut lengths = req.headers.get_all(header::CONTENT_LENGTH).iter();
    let length = lengths.next();
    if lengths.next().is_some() {
        return Err(malformed("Content-Length is given more than once"));
    }
    let mut codings = req.headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(coding) = codings.next() {
        if codings.next().is_some()
            || !coding
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
        {
            return Err(malformed(
                "the only transfer coding accepted is a single `chunked`",
            ));
        }
    }
    if let Some(length) = length {
        let digits = length.as_bytes().trim_ascii();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(malformed("Content-Length is not a single number"));
        }
        if let Some(max) = limits.max_body_bytes {
            // Digits only: a failed parse means it overflowed, which is over any limit.
            let n = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse::<u64>().ok());
            if n.is_none_or(|n| n > max) {
                return Err(BODY_TOO_LARGE);
            }
        }
    }
    if !target_form_ok(&req.method, req.raw_path()) {
        return Err(malformed("the request target is malformed"));
    }
    Ok(())
}

/// Whether `target` has one of the forms of RFC 9112 §3.2: origin (`/path`), absolute
/// (`scheme://...`), authority (`host:port`, CONNECT only) or asterisk (`*`, OPTIONS only).
fn target_form_ok(method: &Method, target: &[u8]) -> bool {
    match target.first() {
        Some(b'/') => true,
        Some(b'*') => target.len() == 1 && method == Method::OPTIONS,
        Some(c) if c.is_ascii_alphabetic() => {
            if method == Method::CONNECT {
                return true;
            }
            // absolute-form: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) then "://"
            let scheme_end = target
                .iter()
                .position(|&c| !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')));
            scheme_end.is_some_and(|end| target[end..].starts_with(b"://"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, target, None).expect("valid request");
        for (name, value) in headers {
            req.append_header(name.to_string(), *value)
                .expect("valid header");
        }
        req
    }

    fn check(req: &RequestHeader) -> Result<(), u16> {
        check_request(req, 100, &ClientLimits::default()).map_err(|r| r.status)
    }

    #[test]
    fn plain_requests_pass() {
        assert_eq!(check(&request("GET", b"/x?y=1", &[("Host", "a")])), Ok(()));
        assert_eq!(
            check(&request(
                "POST",
                b"/",
                &[("Host", "a"), ("Transfer-Encoding", "Chunked")]
            )),
            Ok(())
        );
        assert_eq!(
            check(&request("GET", b"http://a/x", &[("Host", "a")])),
            Ok(())
        );
        assert_eq!(check(&request("OPTIONS", b"*", &[("Host", "a")])), Ok(()));
        assert_eq!(
            check(&request("CONNECT", b"a:443", &[("Host", "a")])),
            Ok(())
        );
    }

    #[test]
    fn ambiguous_requests_are_refused() {
        assert_eq!(check(&request("GET", b"/", &[])), Err(400));
        let mut http10 = request("GET", b"/", &[]);
        http10.set_version(Version::HTTP_10);
        assert_eq!(check(&http10), Ok(()));
        let twice = [
            ("Host", "a"),
            ("Content-Length", "5"),
            ("Content-Length", "5"),
        ];
        assert_eq!(check(&request("POST", b"/", &twice)), Err(400));
        let list = [("Host", "a"), ("Content-Length", "5, 5")];
        assert_eq!(check(&request("POST", b"/", &list)), Err(400));
        let gzip = [("Host", "a"), ("Transfer-Encoding", "gzip, chunked")];
        assert_eq!(check(&request("POST", b"/", &gzip)), Err(400));
        let two_te = [
            ("Host", "a"),
            ("Transfer-Encoding", "chunked"),
            ("Transfer-Encoding", "chunked"),
        ];
        assert_eq!(check(&request("POST", b"/", &two_te)), Err(400));
        assert_eq!(check(&request("GET", b"%20/x", &[("Host", "a")])), Err(400));
        assert_eq!(check(&request("GET", b"*", &[("Host", "a")])), Err(400));
        assert_eq!(check(&request("GET", b"a:443", &[("Host", "a")])), Err(400));
    }

    #[test]
    fn limits_give_431_and_413() {
        let limits = ClientLimits {
            max_headers: 2,
            max_body_bytes: Some(10),
            ..ClientLimits::default()
        };
        let req = request("GET", b"/", &[("Host", "a")]);
        let status =
            |req: &RequestHeader, bytes| check_request(req, bytes, &limits).map_err(|r| r.status);
        assert_eq!(status(&req, 100), Ok(()));
        assert_eq!(status(&req, 64 * 1024 + 1), Err(431));
        let many = request("GET", b"/", &[("Host", "a"), ("A", "1"), ("B", "2")]);
        assert_eq!(status(&many, 100), Err(431));
        let big = request("POST", b"/", &[("Host", "a"), ("Content-Length", "11")]);
        assert_eq!(status(&big, 100), Err(413));
        let huge = request(
            "POST",
            b"/",
            &[("Host", "a"), ("Content-Length", "99999999999999999999999")],
        );
        assert_eq!(status(&huge, 100), Err(413));
        let fits = request("POST", b"/", &[("Host", "a"), ("Content-Length", "10")]);
        assert_eq!(status(&fits, 100), Ok(()));
    }
}
