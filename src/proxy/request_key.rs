//! What a request is hashed on for `consistent_hash`.

use http::header;
use pingora::proxy::Session;

use crate::balancer::selection::hash_bytes;
use crate::config::HashKey;

/// The `consistent_hash` key of a request. A request without the configured header or cookie
/// hashes on its client address.
pub(super) fn request_hash(session: &Session, key: &HashKey) -> u64 {
    let req = session.req_header();
    let found: Option<&[u8]> = match key {
        HashKey::ClientIp => None,
        HashKey::Uri => Some(
            req.uri
                .path_and_query()
                .map(|p| p.as_str().as_bytes())
                .unwrap_or(b"/"),
        ),
        HashKey::Header(name) => req.headers.get(name).map(|v| v.as_bytes()),
        HashKey::Cookie(name) => req
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_bytes()),
    };
    match found {
        Some(bytes) => hash_bytes(bytes),
        None => match session.client_addr().and_then(|a| a.as_inet()) {
            Some(addr) => match addr.ip() {
                std::net::IpAddr::V4(ip) => hash_bytes(&ip.octets()),
                std::net::IpAddr::V6(ip) => hash_bytes(&ip.octets()),
            },
            None => 0,
        },
    }
}
