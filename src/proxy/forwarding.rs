//! Headers a proxy adds or removes: the forwarding headers on the way to the upstream, the
//! hop-by-hop headers on the way back.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use crate::balancer::routes::Route;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Adds X-Forwarded-For, -Proto and -Host to the request sent upstream.
///
/// This runs for every request, so it avoids what it can: the client address is formatted on
/// the stack, not through `to_string`, and values and lookups use static names. (pingora still
/// parses each inserted name once; names passed as `&'static str` keep their case without an
/// allocation.)
pub(super) fn add_forwarding_headers(session: &Session, request: &mut RequestHeader) -> Result<()> {
    // pingora has already removed the hop-by-hop headers (including those named in
    // `Connection`) and kept only a WebSocket upgrade; we add the forwarding headers.
    if let Some(client) = session.client_addr().and_then(|a| a.as_inet()) {
        let mut ip = IpText::default();
        ip.push_ip(client.ip());
        let forwarded_for = match request.headers.get(&X_FORWARDED_FOR).map(|v| v.to_str()) {
            Some(Ok(previous)) if !previous.trim().is_empty() => {
                HeaderValue::try_from(format!("{previous}, {}", ip.as_str()))
            }
            _ => HeaderValue::from_bytes(ip.as_str().as_bytes()),
        };
        let forwarded_for = forwarded_for
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "X-Forwarded-For", e))?;
        request.insert_header("X-Forwarded-For", forwarded_for)?;
    }
    let proto = if is_tls(session) { "https" } else { "http" };
    request.insert_header("X-Forwarded-Proto", HeaderValue::from_static(proto))?;
    let host = session
        .req_header()
        .headers
        .get(header::HOST)
        .cloned()
        .or_else(|| {
            session
                .req_header()
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
    match host {
        Some(host) => request.insert_header("X-Forwarded-Host", host)?,
        None => {
            request.remove_header("x-forwarded-host");
        }
    }
    Ok(())
}

/// An IP address as text, on the stack (the longest IPv6 text is 45 bytes).
struct IpText {
    bytes: [u8; 48],
    len: usize,
}

impl Default for IpText {
    fn default() -> Self {
        IpText {
            bytes: [0; 48],
            len: 0,
        }
    }
}

impl IpText {
    fn as_str(&self) -> &str {
        // Only ASCII digits, dots, colons and hex digits are ever written.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }

    fn push_ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.push_v4(v4),
            // Rare enough for the general formatter (which writes to the stack too).
            IpAddr::V6(v6) => {
                let _ = write!(self, "{v6}");
            }
        }
    }

    /// Dotted decimal, without `core::fmt` (whose padding support makes `Ipv4Addr`'s
    /// `Display` cost over a thousand instructions).
    fn push_v4(&mut self, ip: Ipv4Addr) {
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                self.push(b'.');
            }
            if octet >= 100 {
                self.push(b'0' + octet / 100);
            }
            if octet >= 10 {
                self.push(b'0' + octet / 10 % 10);
            }
            self.push(b'0' + octet % 10);
        }
    }

    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Whether the request came over TLS.
pub(super) fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// The `https://` URL of a request that came in the clear (`lb.redirect_to_https`): its host
/// without the port, then `tls_port` unless it is 443, then the path and query. `None` when
/// the request names no host.
pub(super) fn https_location(session: &Session, tls_port: u16) -> Option<String> {
    let req = session.req_header();
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))?;
    let host = strip_port(host.trim());
    if host.is_empty() {
        return None;
    }
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let path = if path.starts_with('/') { path } else { "/" };
    Some(if tls_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{tls_port}{path}")
    })
}

/// `host` without its `:port` (an IPv6 literal keeps its brackets).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.split(':').next().unwrap_or(host)
}

/// Applies a route's rules to the request sent upstream: the prefix it strips and the headers
/// it sets and removes.
pub(super) fn rewrite_request(route: &Route, request: &mut RequestHeader) -> Result<()> {
    let target = request.uri.path_and_query().map_or("/", |p| p.as_str());
    if let Some(stripped) = route.upstream_path(target) {
        let uri = if stripped.starts_with('/') {
            stripped.to_string()
        } else {
            format!("/{stripped}")
        };
        match http::Uri::try_from(uri) {
            Ok(uri) => request.set_uri(uri),
            Err(e) => {
                return Error::e_explain(
                    ErrorType::InvalidHTTPHeader,
                    format!("the path left after strip_prefix is not valid: {e}"),
                )
            }
        }
    }
    let config = &route.config;
    for name in &config.remove_request_headers {
        request.remove_header(name);
    }
    for (name, value) in &config.set_request_headers {
        request.insert_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// Applies a route's response header rules.
pub(super) fn rewrite_response(route: &Route, response: &mut ResponseHeader) -> Result<()> {
    let config = &route.config;
    for name in &config.remove_response_headers {
        response.remove_header(name);
    }
    for (name, value) in &config.set_response_headers {
        response.insert_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// Removes the hop-by-hop headers of an upstream's response; a protocol switch (WebSocket)
/// keeps `Upgrade` and says `Connection: upgrade`.
///
/// Nearly every response has one (`Connection: keep-alive`), so this allocates nothing: the
/// names listed in `Connection` are removed by their text, the others only when present.
pub(super) fn strip_hop_by_hop(response: &mut ResponseHeader) -> Result<()> {
    let switching = response.status == http::StatusCode::SWITCHING_PROTOCOLS;
    remove_hop_by_hop(response, switching);
    if switching {
        response.insert_header(header::CONNECTION, HeaderValue::from_static("upgrade"))?;
    }
    Ok(())
}

/// Headers that only describe one connection and are never forwarded (RFC 9110 §7.6.1), and
/// `Upgrade` (kept only by a protocol switch).
static HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    header::TE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::UPGRADE,
];

/// Removes the hop-by-hop headers of `response`, including any named in `Connection`. With
/// `keep_upgrade` the `Upgrade` header (of a WebSocket handshake, say) is kept.
fn remove_hop_by_hop(response: &mut ResponseHeader, keep_upgrade: bool) {
    let headers = &response.headers;
    // Which of the fixed names are present, in one pass over the names the response has.
    let mut present = [false; 5];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if present[0] {
        // The values are shared bytes: cloning them is a reference count, not a copy. A second
        // `Connection` field is rare; an empty `Vec` does not allocate.
        let mut values = headers.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let more: Vec<HeaderValue> = values.cloned().collect();
        for value in first.iter().chain(&more) {
            let Ok(listed) = value.to_str() else { continue };
            for token in listed.split(',').map(str::trim) {
                if token.is_empty() || (keep_upgrade && token.eq_ignore_ascii_case("upgrade")) {
                    continue;
                }
                // A name that is not a valid field name finds nothing.
                response.remove_header(token);
            }
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present && !(keep_upgrade && name == header::UPGRADE) {
            response.remove_header(name);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(super::strip_port("example.com:8080"), "example.com");
        assert_eq!(super::strip_port("example.com"), "example.com");
        assert_eq!(super::strip_port("[::1]:80"), "[::1]");
        assert_eq!(super::strip_port("[::1]"), "[::1]");
    }

    use super::*;

    fn response(headers: &[(&'static str, &'static str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (name, value) in headers {
            r.append_header(*name, *value).unwrap();
        }
        r
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut r = response(&[
            ("Connection", "keep-alive, X-Secret"),
            ("Connection", "X-Other , ,bad name"),
            ("Keep-Alive", "timeout=5"),
            ("X-Secret", "1"),
            ("X-Other", "1"),
            ("TE", "trailers"),
            ("Upgrade", "websocket"),
            ("Proxy-Connection", "close"),
            ("X-Kept", "1"),
        ]);
        remove_hop_by_hop(&mut r, false);
        assert_eq!(r.headers.len(), 1, "{:?}", r.headers);
        assert!(r.headers.contains_key("x-kept"));
        let mut wire = Vec::new();
        r.header_to_h1_wire(&mut wire);
        assert_eq!(wire, b"X-Kept: 1\r\n");
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut r = response(&[("Connection", "Upgrade"), ("Upgrade", "websocket")]);
        remove_hop_by_hop(&mut r, true);
        assert!(r.headers.contains_key("upgrade"));
        assert!(!r.headers.contains_key("connection"));
    }

    #[test]
    fn nothing_to_remove() {
        let mut r = response(&[("Content-Length", "3"), ("Server", "x")]);
        remove_hop_by_hop(&mut r, false);
        assert_eq!(r.headers.len(), 2);
    }

    #[test]
    fn client_addresses_as_text() {
        let text = |ip: &str| {
            let mut t = IpText::default();
            t.push_ip(ip.parse().unwrap());
            t.as_str().to_string()
        };
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "192.168.9.99",
            "255.255.255.255",
        ] {
            assert_eq!(text(ip), ip);
        }
        assert_eq!(text("::1"), "::1");
        assert_eq!(text("::ffff:10.0.0.1"), "::ffff:10.0.0.1");
        let long = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe";
        assert_eq!(text(long), long);
    }
}
