//! The request path: pingora's [`ProxyHttp`] hooks for one balancer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::access_log::AccessEntry;
use crate::config::{HashKey, Selection};
use crate::lifecycle::{InFlight, InFlightGuard};
use crate::reload::{Routing, SharedRouting};
use crate::selection::{hash_bytes, Lease, Pick};
use crate::stats::Outcome;

/// No upstream is healthy: answered with 503.
const NO_HEALTHY_UPSTREAM: ErrorType = ErrorType::Custom("NoHealthyUpstream");
/// Every healthy upstream was tried and failed: answered with 502.
const NO_UPSTREAM_LEFT: ErrorType = ErrorType::Custom("NoUpstreamLeft");
/// Every usable upstream is at `max_conns` and the queue is full: 503.
const QUEUE_FULL: ErrorType = ErrorType::Custom("QueueFull");
/// Every usable upstream stayed at `max_conns` for the whole queue timeout: 503.
const QUEUE_TIMEOUT: ErrorType = ErrorType::Custom("QueueTimeout");
/// The upstream answered with a status that `retries.on` retries; the answer is dropped and
/// the request goes to another upstream.
const RETRY_ON_STATUS: ErrorType = ErrorType::Custom("RetryOnStatus");

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
    /// The upstream of the current attempt, held (for `max_conns` and `least_conn`) until the
    /// attempt ends.
    lease: Option<Lease>,
    /// When the current attempt started.
    attempt_started: Option<Instant>,
    /// Whether the current attempt's outcome has been counted.
    attempt_recorded: bool,
    /// Time to the response header of the attempt that answered.
    pub upstream_time: Option<Duration>,
    pub started: Instant,
    /// Retries made for this request.
    pub retries: u32,
    _in_flight: InFlightGuard,
}

impl RequestCtx {
    /// Whether the retry policy still allows another upstream (attempts and budget). Spends
    /// from the budget when it does.
    fn may_retry(&self) -> bool {
        let policy = &self.routing.config.retries;
        if self.tried.len() > policy.attempts {
            return false;
        }
        if !self.routing.pool.has_usable(&self.tried) {
            return false;
        }
        if self.routing.registry.retry_budget.try_retry(policy) {
            true
        } else {
            crate::stats::metrics().retries_denied_by_budget.inc();
            log::debug!("retry budget spent: not retrying");
            false
        }
    }

    /// Counts the end of the current attempt: stats, passive health, latency estimate.
    fn record_attempt(&mut self, outcome: Outcome, what: impl FnOnce() -> String) {
        if std::mem::replace(&mut self.attempt_recorded, true) {
            return;
        }
        let Some(lease) = &self.lease else { return };
        let state = lease.state();
        let elapsed = self.attempt_started.map(|t| t.elapsed());
        let latency = match outcome {
            Outcome::Response(_) => elapsed,
            _ => None,
        };
        state.stats.record(outcome, latency);
        if let Some(elapsed) = elapsed {
            state.observe_latency(elapsed);
        }
        let passive = &self.routing.config.passive_health.on;
        let failed = match outcome {
            Outcome::Response(status) => passive.status(status),
            Outcome::Connect => passive.connect_failure(),
            Outcome::Timeout => passive.timeout(),
            Outcome::Reset => passive.reset(),
        };
        if failed {
            self.routing.note_failure(state, &what());
        } else {
            state.record_success();
        }
    }

    /// The current attempt failed and another upstream will be tried.
    fn count_retry(&mut self) {
        self.retries += 1;
        if let Some(lease) = &self.lease {
            lease.state().stats.record_retry();
        }
    }
}

/// A waiting request's place in the queue; leaving it (in any way) frees the place.
struct QueuePlace<'a>(&'a AtomicUsize);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        crate::stats::metrics().queued.dec();
    }
}

impl LbProxy {
    /// Picks an upstream for `ctx`, waiting in the queue while every usable one is at its
    /// `max_conns`.
    async fn acquire(&self, session: &Session, ctx: &RequestCtx) -> Result<Lease> {
        let routing = &ctx.routing;
        let pool = &routing.pool;
        let hash = match routing.config.selection {
            Selection::ConsistentHash => request_hash(session, &routing.config.hash_key),
            _ => 0,
        };
        // The common case: an upstream is free at once.
        match pool.pick(hash, &ctx.tried) {
            Pick::Got(lease) => return Ok(lease),
            Pick::Empty if ctx.tried.is_empty() => {
                return Error::e_explain(NO_HEALTHY_UPSTREAM, "no healthy upstream")
            }
            Pick::Empty => {
                return Error::e_explain(NO_UPSTREAM_LEFT, "every healthy upstream failed")
            }
            Pick::Busy => {}
        }
        let mut place = None;
        let deadline = Instant::now() + routing.config.queue.timeout;
        loop {
            // Registered before the pick, so a slot freed in between is not missed.
            let freed = pool.freed.notified();
            match pool.pick(hash, &ctx.tried) {
                Pick::Got(lease) => return Ok(lease),
                Pick::Empty if ctx.tried.is_empty() => {
                    return Error::e_explain(NO_HEALTHY_UPSTREAM, "no healthy upstream")
                }
                Pick::Empty => {
                    return Error::e_explain(NO_UPSTREAM_LEFT, "every healthy upstream failed")
                }
                Pick::Busy => {}
            }
            if place.is_none() {
                let queued = pool.waiting.fetch_add(1, Ordering::AcqRel);
                crate::stats::metrics().queued.inc();
                let entered = QueuePlace(&pool.waiting);
                if queued >= routing.config.queue.size {
                    crate::stats::metrics()
                        .queue_rejected
                        .with_label_values(&["full"])
                        .inc();
                    return Error::e_explain(QUEUE_FULL, "queue full");
                }
                place = Some(entered);
            }
            let now = Instant::now();
            if now >= deadline {
                crate::stats::metrics()
                    .queue_rejected
                    .with_label_values(&["timeout"])
                    .inc();
                return Error::e_explain(QUEUE_TIMEOUT, "queue timeout");
            }
            // Woken when a slot frees; the short cap also catches slots freed by requests of
            // an earlier routing and upstreams coming back.
            let wait = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(wait, freed).await;
        }
    }
}

#[async_trait]
impl ProxyHttp for LbProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            routing: self.routing.load_full(),
            tried: Vec::new(),
            lease: None,
            attempt_started: None,
            attempt_recorded: false,
            upstream_time: None,
            started: Instant::now(),
            retries: 0,
            _in_flight: self.in_flight.enter(),
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        session.set_keepalive(Some(ctx.routing.config.timeouts.idle.as_secs().max(1)));
        ctx.routing.registry.retry_budget.record_request();
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // A previous attempt (when retrying) lets go of its upstream first.
        ctx.lease = None;
        let lease = self.acquire(session, ctx).await?;
        let addr = lease.upstream().addr;
        ctx.tried.push(addr);
        ctx.lease = Some(lease);
        ctx.attempt_started = Some(Instant::now());
        ctx.attempt_recorded = false;
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

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = response.status.as_u16();
        if status == 101 || status < 100 {
            return Ok(());
        }
        ctx.upstream_time = ctx.attempt_started.map(|t| t.elapsed());
        ctx.record_attempt(Outcome::Response(status), || format!("HTTP {status}"));
        // An answer `retries.on` names is dropped and the request goes elsewhere, if that is
        // safe: nothing of it has reached the client yet.
        if ctx.routing.config.retries.on.status(status)
            && safe_to_repeat(session)
            && ctx.may_retry()
        {
            ctx.count_retry();
            log::warn!(
                "upstream {} answered {status}; trying another upstream",
                ctx.tried
                    .last()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            );
            let mut e = Error::explain(RETRY_ON_STATUS, format!("upstream answered {status}"));
            e.set_retry(true);
            return Err(e);
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
        let reason = crate::health::describe(&e);
        ctx.record_attempt(Outcome::Connect, || format!("connect: {reason}"));
        // Nothing of the request reached the upstream, so any request may go elsewhere.
        if ctx.routing.config.retries.on.connect_failure() && ctx.may_retry() {
            ctx.count_retry();
            log::warn!(
                "upstream {} connect failed ({reason}); trying another upstream",
                peer._address,
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
        if e.etype() == &RETRY_ON_STATUS {
            // Decided (and counted) in upstream_response_filter.
            return e;
        }
        let mut e = e.more_context(format!("upstream: {}", peer._address));
        let upstream_side = e.esource() == &ErrorSource::Upstream;
        let outcome = match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Some(Outcome::Timeout),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
                Some(Outcome::Reset)
            }
            _ => None,
        };
        let Some(outcome) = outcome.filter(|_| upstream_side) else {
            e.set_retry(false);
            return e;
        };
        ctx.record_attempt(outcome, || match outcome {
            Outcome::Timeout => "timeout".to_string(),
            _ => format!("connection broken: {}", crate::health::describe(&e)),
        });
        // A request may be repeated on another upstream only if repeating it is safe: an
        // idempotent method whose whole body we still hold, and no response started towards
        // the client.
        let on = &ctx.routing.config.retries.on;
        let wanted = match outcome {
            Outcome::Timeout => on.timeout(),
            _ => on.reset(),
        };
        let retry = wanted && safe_to_repeat(session) && ctx.may_retry();
        if retry {
            ctx.count_retry();
        }
        e.set_retry(retry);
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
        let status = session.response_written().map(|r| r.status.as_u16());
        let metrics = crate::stats::metrics();
        metrics.count_request(status);
        let total_time = ctx.started.elapsed();
        metrics.request_duration.observe(total_time.as_secs_f64());
        if let Some(access_log) = &ctx.routing.access_log {
            let req = session.req_header();
            let header = |name: http::header::HeaderName| {
                req.headers.get(name).and_then(|v| v.to_str().ok())
            };
            let target = req
                .uri
                .path_and_query()
                .map_or_else(|| req.uri.path(), |p| p.as_str());
            let version = format!("{:?}", req.version);
            access_log.log(&AccessEntry {
                time: SystemTime::now()
                    .checked_sub(total_time)
                    .unwrap_or_else(SystemTime::now),
                client: session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip()),
                method: req.method.as_str(),
                target,
                version: &version,
                status: status.unwrap_or(0),
                bytes: session.body_bytes_sent() as u64,
                referer: header(header::REFERER),
                user_agent: header(header::USER_AGENT),
                upstream: ctx.tried.last().copied(),
                upstream_time: ctx.upstream_time,
                total_time,
                retries: ctx.retries,
            });
        }
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

/// Whether the request may be sent again: an idempotent method whose body we still hold
/// whole, and nothing of a response sent to the client.
fn safe_to_repeat(session: &Session) -> bool {
    session.req_header().method.is_idempotent()
        && !session.as_ref().retry_buffer_truncated()
        && session.response_written().is_none()
}

/// The `consistent_hash` key of a request. A request without the configured header or cookie
/// hashes on its client address.
fn request_hash(session: &Session, key: &HashKey) -> u64 {
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
