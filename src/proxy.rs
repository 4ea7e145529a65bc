//! The request path: pingora's [`ProxyHttp`] hooks for one balancer.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::lifecycle::{InFlight, InFlightGuard};
use crate::reload::{Routing, SharedRouting};

/// No upstream is healthy: answered with 503.
const NO_HEALTHY_UPSTREAM: ErrorType = ErrorType::Custom("NoHealthyUpstream");
/// Every healthy upstream was tried and failed: answered with 502.
const NO_UPSTREAM_LEFT: ErrorType = ErrorType::Custom("NoUpstreamLeft");

/// Headers that only describe one connection and are never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 4] = [
    header::CONNECTION,
    header::TE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// The load-balancing proxy.
pub struct LbProxy {
    routing: SharedRouting,
    in_flight: InFlight,
}

impl LbProxy {
    pub fn new(routing: SharedRouting, in_flight: InFlight) -> Self {
        LbProxy { routing, in_flight }
    }
}

/// Per-request state.
pub struct RequestCtx {
    /// The routing this request started with; a reload does not change it midway.
    routing: Arc<Routing>,
    /// Upstreams this request was sent to, in order; never picked again for it.
    pub tried: Vec<SocketAddr>,
    _in_flight: InFlightGuard,
}

impl RequestCtx {
    /// Whether another upstream may still be tried.
    fn may_retry(&self) -> bool {
        self.tried.len() <= self.routing.config.retries
    }
}

#[async_trait]
impl ProxyHttp for LbProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            routing: self.routing.load_full(),
            tried: Vec::new(),
            _in_flight: self.in_flight.enter(),
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        session.set_keepalive(Some(ctx.routing.config.timeouts.idle.as_secs().max(1)));
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(backend) = ctx.routing.balancer.select(&ctx.tried) else {
            return if ctx.tried.is_empty() {
                Error::e_explain(NO_HEALTHY_UPSTREAM, "no healthy upstream")
            } else {
                Error::e_explain(NO_UPSTREAM_LEFT, "every healthy upstream failed")
            };
        };
        let Some(addr) = backend.addr.as_inet().copied() else {
            return Error::e_explain(ErrorType::InternalError, "upstream is not an inet address");
        };
        ctx.tried.push(addr);
        let timeouts = &ctx.routing.config.timeouts;
        let mut peer = HttpPeer::new(addr, false, String::new());
        let options = &mut peer.options;
        options.connection_timeout = Some(timeouts.connect);
        options.total_connection_timeout = Some(timeouts.connect);
        options.read_timeout = Some(timeouts.read);
        options.write_timeout = Some(timeouts.write);
        options.idle_timeout = Some(timeouts.idle);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        request: &mut RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
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
        request.insert_header("X-Forwarded-Proto", "http")?;
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

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        let switching = response.status == http::StatusCode::SWITCHING_PROTOCOLS;
        for name in hop_by_hop(&response.headers, switching) {
            response.remove_header(&name);
        }
        if switching {
            response.insert_header(header::CONNECTION, "upgrade")?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing of the request reached the upstream, so any request may go elsewhere.
        if ctx.may_retry() {
            log::warn!(
                "upstream {} connect failed ({}); trying another upstream",
                peer._address,
                crate::health::describe(&e)
            );
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("upstream: {}", peer._address));
        // A request may be repeated on another upstream only if repeating it is safe: an
        // idempotent method whose whole body we still hold, no response started towards the
        // client, and a connection failure rather than a slow upstream (that is a 504).
        let connection_failed = matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        );
        let safe = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none();
        e.set_retry(connection_failed && safe && ctx.may_retry());
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (status, message) = error_response(e);
        if status > 0 {
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
                    session.write_error_response(resp, body).await
                }
                Err(e) => Err(e),
            };
            if let Err(write_error) = written {
                log::debug!("could not send the {status} response to the client: {write_error}");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(e) = e {
            log::debug!(
                "{} failed after trying {:?}: {e}",
                session.request_summary(),
                ctx.tried
            );
        }
    }
}

/// The status and a short explanation for a request that could not be proxied.
fn error_response(e: &Error) -> (u16, &'static str) {
    match e.etype() {
        ErrorType::HTTPStatus(code) => (*code, "the request could not be served"),
        t if *t == NO_HEALTHY_UPSTREAM => (503, "no healthy upstream is available"),
        t if *t == NO_UPSTREAM_LEFT => (502, "no upstream could be reached"),
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
