//! Headers a proxy adds or removes: the forwarding headers on the way to the upstream, the
//! hop-by-hop headers on the way back.

use http::header::{self, HeaderName};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use crate::balancer::routes::Route;

/// Adds X-Forwarded-For, -Proto and -Host to the request sent upstream.
pub(super) fn add_forwarding_headers(session: &Session, request: &mut RequestHeader) -> Result<()> {
    // pingora has already removed the hop-by-hop headers (including those named in
    // `Connection`) and kept only a WebSocket upgrade; we add the forwarding headers.
    if let Some(client) = session.client_addr().and_then(|a| a.as_inet()) {
        let ip = client.ip().to_string();
        let forwarded_for = match request.headers.get("x-forwarded-for").map(|v| v.to_str()) {
            Some(Ok(previous)) if !previous.trim().is_empty() => format!("{previous}, {ip}"),
            _ => ip,
        };
        request.insert_header("X-Forwarded-For", forwarded_for)?;
    }
    let proto = if is_tls(session) { "https" } else { "http" };
    request.insert_header("X-Forwarded-Proto", proto)?;
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
                .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
        });
    match host {
        Some(host) => request.insert_header("X-Forwarded-Host", host)?,
        None => {
            request.remove_header("X-Forwarded-Host");
        }
    }
    Ok(())
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
pub(super) fn strip_hop_by_hop(response: &mut ResponseHeader) -> Result<()> {
    let switching = response.status == http::StatusCode::SWITCHING_PROTOCOLS;
    for name in hop_by_hop(&response.headers, switching) {
        response.remove_header(&name);
    }
    if switching {
        response.insert_header(header::CONNECTION, "upgrade")?;
    }
    Ok(())
}

/// Headers that only describe one connection and are never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 4] = [
    header::CONNECTION,
    header::TE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// The hop-by-hop headers present in `headers`, including any named in `Connection`. With
/// `keep_upgrade` the `Upgrade` header (of a WebSocket handshake, say) is kept.
fn hop_by_hop(headers: &http::HeaderMap, keep_upgrade: bool) -> Vec<HeaderName> {
    let listed = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok());
    let upgrade = (!keep_upgrade).then_some(header::UPGRADE);
    HOP_BY_HOP
        .iter()
        .cloned()
        .chain(listed)
        .chain(upgrade)
        .filter(|name| headers.contains_key(name) && !(keep_upgrade && name == header::UPGRADE))
        .collect()
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

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = http::HeaderMap::new();
        h.insert("connection", "keep-alive, X-Secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        for name in hop_by_hop(&h, false) {
            h.remove(name);
        }
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut h = http::HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        for name in hop_by_hop(&h, true) {
            h.remove(name);
        }
        assert!(h.contains_key("upgrade"));
        assert!(!h.contains_key("connection"));
    }
}
