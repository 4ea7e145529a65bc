//! The request path: pingora's [`ProxyHttp`] hooks for the balancer.
//!
//! - this file: the hooks and the per-request state ([`RequestCtx`]): pick an upstream, count
//!   each attempt's [`Outcome`], decide retries;
//! - [`forwarding`]: the forwarding headers and the hop-by-hop headers;
//! - [`errors`]: lb's own error kinds and the short responses sent for them;
//! - [`request_key`]: what a request hashes on for `consistent_hash`;
//! - [`client`]: the client-connection wrapper that keeps idle keep-alive connections lean and
//!   enforces the connection limit, the header deadline, pipelining order and the drain;
//! - [`strict`]: what a request header may not be (ambiguous framing, no Host, over a limit);
//! - [`rate_limit`]: the per-client-address token buckets of `lb.limits.rate`;
//! - [`in_flight`]: the count of requests being proxied;
//! - [`tls`]: the HTTPS listeners' settings and the choice of a certificate by SNI.
//!
//! Depends on: [`crate::balancer`], [`crate::config`], [`crate::observe`], [`crate::outcome`].

mod client;
mod errors;
mod forwarding;
mod in_flight;
mod rate_limit;
mod request_key;
mod respond;
mod strict;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::apps::HttpServerOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::balancer::routes::{has_dot_segment, Route};
use crate::balancer::selection::Pool;
use crate::balancer::{passive, peer, Lease, Routing, SharedRouting};
use crate::config::{LbConfig, RouteAction, Selection};
use crate::observe::access_log::AccessEntry;
use crate::outcome::{describe_error, is_local_resource_error, Outcome};

pub(crate) use client::{ClientApp, ClientConnections, ConnState};
pub(crate) use in_flight::{InFlight, InFlightGuard};
pub(crate) use tls::listener_settings as tls_listener_settings;

/// The load-balancing proxy.
pub(crate) struct LbProxy {
    routing: SharedRouting,
    in_flight: InFlight,
    /// `lb.limits.rate`: kept across reloads.
    rate: rate_limit::RateLimiter,
}

impl LbProxy {
    pub(crate) fn new(routing: SharedRouting, in_flight: InFlight) -> Self {
        LbProxy {
            routing,
            in_flight,
            rate: rate_limit::RateLimiter::default(),
        }
    }
}

/// Per-request state.
pub(crate) struct RequestCtx {
    /// The routing this request started with; a reload does not change it midway.
    routing: Arc<Routing>,
    /// Upstreams this request was sent to, in order; never picked again for it.
    pub(crate) tried: Vec<SocketAddr>,
    /// The upstream of the current attempt, held (for `max_conns` and `least_conn`) until the
    /// attempt ends.
    lease: Option<Lease>,
    /// When the current attempt started.
    attempt_started: Option<Instant>,
    /// Whether the current attempt's outcome has been counted.
    attempt_recorded: bool,
    /// Time to the response header of the attempt that answered.
    pub(crate) upstream_time: Option<Duration>,
    pub(crate) started: Instant,
    /// Retries made for this request.
    pub(crate) retries: u32,
    /// How the last attempt on an upstream ended.
    outcome: Option<Outcome>,
    /// The route that took the request (an index into the routing's routes), once matched.
    route: Option<usize>,
    /// The pool the request goes to (an index into the routing's pools), once routed.
    pool: usize,
    /// Request body bytes received so far (for `lb.limits.max_body_bytes`).
    body_bytes: u64,
    _in_flight: InFlightGuard,
}

impl RequestCtx {
    /// The pool this request was routed to.
    fn pool(&self) -> &Pool {
        // `pool` is an index the routing's own route table gave, so it is in range; the
        // fallback keeps a request path free of panics all the same.
        self.routing
            .pools
            .get(self.pool)
            .unwrap_or(&self.routing.pools[0])
    }

    fn route(&self) -> Option<&Route> {
        self.route.and_then(|i| self.routing.routes.get(i))
    }

    /// Whether the retry policy still allows another upstream (attempts and budget). Spends
    /// from the budget when it does.
    fn may_retry(&self) -> bool {
        let pool = self.pool();
        let policy = &pool.config.retries;
        if self.tried.len() > policy.attempts {
            return false;
        }
        if !pool.has_usable(&self.tried) {
            return false;
        }
        if self.routing.registry.retry_budget.try_retry(policy) {
            true
        } else {
            self.routing
                .registry
                .metrics()
                .retries_denied_by_budget
                .inc();
            log::debug!("retry budget spent: not retrying");
            false
        }
    }

    /// Counts the end of the current attempt: stats, passive health, latency estimate.
    fn record_attempt(&mut self, outcome: Outcome, what: impl FnOnce() -> String) {
        if std::mem::replace(&mut self.attempt_recorded, true) {
            return;
        }
        self.outcome = Some(outcome);
        let Some(lease) = &self.lease else { return };
        let state = lease.state();
        let elapsed = self.attempt_started.map(|t| t.elapsed());
        let latency = match outcome {
            Outcome::Status(_) => elapsed,
            _ => None,
        };
        state.stats.record(outcome, latency);
        if let Some(elapsed) = elapsed {
            state.observe_latency(elapsed);
        }
        let pool = self.pool();
        passive::record(
            &pool.config.passive_health,
            &pool.members,
            state,
            outcome,
            what,
        );
    }

    /// The current attempt failed and another upstream will be tried.
    fn count_retry(&mut self) {
        self.retries += 1;
        if let Some(lease) = &self.lease {
            lease.state().stats.record_retry();
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
            outcome: None,
            route: None,
            pool: 0,
            body_bytes: 0,
            _in_flight: self.in_flight.enter(),
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A connection that is draining (graceful stop or upgrade) keeps `Connection: close`.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(ctx.routing.config.client_idle.as_secs().max(1)));
        }
        let client = &ctx.routing.config.client;
        // The longest pause between two reads of the request body.
        session.set_read_timeout(Some(client.body_timeout));
        let header_bytes = session
            .as_http1()
            .map_or(0, |s| s.get_headers_raw_bytes().len());
        if let Err(refusal) = strict::check_request(session.req_header(), header_bytes, client) {
            return Err(errors::refuse(ctx.routing.registry.metrics(), refusal));
        }
        if let Some(limit) = &client.rate {
            let ip = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            if let Some(ip) = ip {
                if let Err(retry_after) = self.rate.check(ip, limit, crate::clock::now_ms()) {
                    return Err(errors::too_many_requests(
                        ctx.routing.registry.metrics(),
                        retry_after,
                    ));
                }
            }
        }
        ctx.routing.registry.retry_budget.record_request();
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if ctx.routing.config.redirect_to_https && !forwarding::is_tls(session) {
            let port = ctx
                .routing
                .config
                .tls
                .as_ref()
                .and_then(|t| t.listen.first())
                .map_or(443, |a| a.port());
            match forwarding::https_location(session, port) {
                Some(location) => {
                    let body = Bytes::from(format!("Redirecting to {location}\n"));
                    let content_type = "text/plain; charset=utf-8";
                    respond::send(session, 308, content_type, body, Some(&location)).await?
                }
                None => {
                    respond::send(
                        session,
                        400,
                        "text/plain; charset=utf-8",
                        Bytes::from_static(b"400 Bad Request: no Host to redirect to\n"),
                        None,
                    )
                    .await?
                }
            }
            return Ok(true);
        }
        let req = session.req_header();
        let host = req
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()));
        if has_dot_segment(req.uri.path()) {
            respond::send(
                session,
                400,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"400 Bad Request: the path has a . or .. segment\n"),
                None,
            )
            .await?;
            return Ok(true);
        }
        let found = ctx
            .routing
            .routes
            .find(host, req.uri.path(), &req.method, &req.headers)
            .map(|(index, route)| (index, route.config.action.clone()));
        let Some((index, action)) = found else {
            respond::not_found(session).await?;
            return Ok(true);
        };
        ctx.route = Some(index);
        match action {
            RouteAction::Pool(pool) => {
                ctx.pool = pool;
                Ok(false)
            }
            RouteAction::Redirect { to, status } => {
                let target = session
                    .req_header()
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str());
                let path = match ctx.route().and_then(|r| r.upstream_path(target)) {
                    Some(stripped) => stripped.to_string(),
                    None => target.to_string(),
                };
                respond::redirect(session, status, &to, &path).await?;
                Ok(true)
            }
            RouteAction::Respond {
                status,
                body,
                content_type,
            } => {
                respond::fixed(session, status, &content_type, body).await?;
                Ok(true)
            }
        }
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        connection: Box<dyn std::any::Any + Send + Sync>,
    ) {
        // Called once the request header is read: its deadline is off.
        if let Ok(conn) = connection.downcast::<Arc<ConnState>>() {
            conn.header_done();
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(max), Some(chunk)) = (ctx.routing.config.client.max_body_bytes, body) {
            ctx.body_bytes = ctx.body_bytes.saturating_add(chunk.len() as u64);
            if ctx.body_bytes > max {
                return Err(errors::refuse(
                    ctx.routing.registry.metrics(),
                    strict::BODY_TOO_LARGE,
                ));
            }
        }
        Ok(())
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        // Refused requests are counted (lb_client_rejected_total), not logged one by one: a
        // hostile client must not be able to flood the log.
        errors::is_refusal(e)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // A previous attempt (when retrying) lets go of its upstream first.
        ctx.lease = None;
        let pool = ctx.pool();
        let hash = match pool.config.selection {
            Selection::ConsistentHash => request_key::request_hash(session, &pool.config.hash_key),
            _ => 0,
        };
        let lease = pool
            .acquire(hash, &ctx.tried, &pool.config.queue)
            .await
            .map_err(errors::acquire_error)?;
        let peer = peer::upstream_peer(&pool.config, lease.upstream());
        ctx.tried.push(lease.upstream().addr);
        ctx.lease = Some(lease);
        ctx.attempt_started = Some(Instant::now());
        ctx.attempt_recorded = false;
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forwarding::add_forwarding_headers(session, request)?;
        if let Some(route) = ctx.route() {
            forwarding::rewrite_request(route, request)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forwarding::strip_hop_by_hop(response)?;
        if let Some(route) = ctx.route() {
            forwarding::rewrite_response(route, response)?;
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
        ctx.record_attempt(Outcome::Status(status), || format!("HTTP {status}"));
        // An answer `retries.on` names is dropped and the request goes elsewhere, if that is
        // safe: nothing of it has reached the client yet.
        if ctx
            .pool()
            .config
            .retries
            .on
            .contains(Outcome::Status(status))
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
            let mut e = Error::explain(
                errors::RETRY_ON_STATUS,
                format!("upstream answered {status}"),
            );
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
        let reason = describe_error(&e);
        if is_local_resource_error(&e) {
            // lb is short of file descriptors or buffers: not the upstream's fault, so neither
            // its statistics nor passive health count it, and no other upstream would fare
            // better now.
            ctx.attempt_recorded = true;
            log::warn!(
                "cannot connect to upstream {}: {reason} (a local shortage, not counted against it)",
                peer._address
            );
            e.set_retry(false);
            return e;
        }
        ctx.record_attempt(Outcome::ConnectFailure, || format!("connect: {reason}"));
        // Nothing of the request reached the upstream, so any request may go elsewhere.
        if ctx
            .pool()
            .config
            .retries
            .on
            .contains(Outcome::ConnectFailure)
            && ctx.may_retry()
        {
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
        if e.etype() == &errors::RETRY_ON_STATUS {
            // Decided (and counted) in upstream_response_filter.
            return e;
        }
        let mut e = e.more_context(format!("upstream: {}", peer._address));
        let upstream_side = e.esource() == &ErrorSource::Upstream;
        let outcome = match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Some(Outcome::Timeout),
            // An HTTP/2 upstream that resets the stream or breaks the protocol broke this
            // attempt as a closed connection would.
            ErrorType::ConnectionClosed
            | ErrorType::ReadError
            | ErrorType::WriteError
            | ErrorType::H2Error
            | ErrorType::InvalidH2 => Some(Outcome::Reset),
            _ => None,
        };
        let Some(outcome) = outcome.filter(|_| upstream_side) else {
            e.set_retry(false);
            return e;
        };
        ctx.record_attempt(outcome, || match outcome {
            Outcome::Timeout => "timeout".to_string(),
            _ => format!("connection broken: {}", describe_error(&e)),
        });
        // A request may be repeated on another upstream only if repeating it is safe: an
        // idempotent method whose whole body we still hold, and no response started towards
        // the client. This decision replaces pingora's own flag, whatever it says: pingora
        // marks some HTTP/2 errors retryable after the request was sent (`InvalidH2`,
        // pingora issue #979), and a POST that reached an upstream must never be sent twice.
        // Only a failed connect (`fail_to_connect`) retries any method: nothing was sent.
        let retry = ctx.pool().config.retries.on.contains(outcome)
            && safe_to_repeat(session)
            && ctx.may_retry();
        if retry {
            ctx.count_retry();
            log::warn!(
                "upstream {} failed ({}); trying another upstream",
                peer._address,
                match outcome {
                    Outcome::Timeout => "timeout".to_string(),
                    _ => format!("connection broken: {}", describe_error(&e)),
                }
            );
        }
        e.set_retry(retry);
        e
    }

    /// Every retried attempt is logged above, once, with its reason; pingora's own line for it
    /// would say the same again.
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _error: &Error,
        context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        matches!(context, pingora::proxy::ProxyWarnLogContext::UpstreamRetry)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if e.esource() == &ErrorSource::Downstream && e.etype() == &ErrorType::ReadTimedout {
            // The client paused longer than `lb.timeouts.client_body` within its body.
            ctx.routing
                .registry
                .metrics()
                .client_rejected
                .with_label_values(&["body_timeout"])
                .inc();
        }
        let status = errors::respond(session, e).await;
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map(|r| r.status.as_u16());
        let metrics = ctx.routing.registry.metrics();
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
                pool: ctx
                    .route()
                    .filter(|r| matches!(r.config.action, RouteAction::Pool(_)))
                    .map(|_| ctx.pool().config.name.as_str()),
                route: ctx.route().map(|r| r.config.name.as_str()),
                outcome: ctx.outcome,
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

/// pingora's options for client connections. `h2c` is on so that the connections
/// [`ClientApp`] recognises as HTTP/2 (it reads their preface itself and sends HTTP/1 down its
/// own lean path, whatever `lb.h2c` says) are served as such.
pub(crate) fn server_options(config: &LbConfig) -> HttpServerOptions {
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    // An HTTP/2 connection without streams is closed after `lb.timeouts.idle`, as an idle
    // HTTP/1 one is (fixed at start: pingora reads it once).
    options.h2_idle_timeout = Some(config.client_idle);
    options
}

/// The limits of an HTTP/2 client connection. Those not set here are the h2 crate's (0.4.20),
/// which already bound the known HTTP/2 attacks: at most 20 streams reset by the client before
/// lb accepted them (rapid reset, CVE-2023-44487; beyond, GOAWAY `ENHANCE_YOUR_CALM`), 1024
/// streams lb had to reset for errors, 400 KiB of response data buffered per stream, a header
/// block (HEADERS and all its CONTINUATIONs) no larger than the header list limit,
/// one pending SETTINGS acknowledgement and one pending PING answer (more wait for the socket).
///
/// The header list limit is `lb.limits.max_header_bytes` as it was at start (pingora builds these
/// options once).
pub(crate) fn h2_options(config: &LbConfig) -> pingora::protocols::http::v2::server::H2Options {
    let mut options = pingora::protocols::http::v2::server::H2Options::new();
    options.max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
    // Validation keeps it below 1 MiB.
    let header_list = u32::try_from(config.client.max_header_bytes).unwrap_or(u32::MAX);
    options.max_header_list_size(header_list);
    options.max_pending_accept_reset_streams(20);
    options.max_local_error_reset_streams(Some(1024));
    options
}

/// SETTINGS_MAX_CONCURRENT_STREAMS lb advertises to HTTP/2 clients (as nginx and pingora do).
pub(crate) const H2_MAX_CONCURRENT_STREAMS: u32 = 100;

/// Whether the request may be sent again: an idempotent method whose body we still hold
/// whole, and nothing of a response sent to the client.
fn safe_to_repeat(session: &Session) -> bool {
    session.req_header().method.is_idempotent()
        && !session.as_ref().retry_buffer_truncated()
        && session.response_written().is_none()
}
