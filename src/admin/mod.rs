//! The admin listener: Prometheus metrics, the upstream API, the status page, and `/healthz`
//! (lb's own health for an outer balancer: 200 while serving, 503 while starting or draining,
//! no token).
//!
//! It is a pingora listening service of its own (so `lb upgrade` hands its socket over like
//! the proxy's). Everything it shows is read from the live [`crate::balancer::UpstreamState`]s
//! of the current routing, and everything it changes is written there, so admin actions take
//! effect on the next pick and survive in-place reloads.
//!
//! With a token configured every API request needs `Authorization: Bearer <token>`; without
//! one the listener must be on a loopback address (checked when the config is loaded). While
//! the process hands over to a new one or stops, changes are refused with a 503 (the operations
//! layer sets the [`Phase`]), so that none is made after the state was handed over; every
//! accepted change is passed to the [`OnChange`] hook, which saves the state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};

use crate::balancer::selection::Pool;
use crate::balancer::upstream::ALL_STATES;
use crate::balancer::{AdminState, Member, Routing, SharedRouting};
use crate::clock::now_ms;
use crate::config::MAX_WEIGHT;
use crate::discovery::Discovery;
use crate::observe::metrics::STATUS_CLASSES;
use crate::proxy::InFlight;

/// The status page, embedded in the binary.
const STATUS_PAGE: &str = include_str!("status.html");

/// Largest request body the API reads.
const MAX_BODY: usize = 4096;

/// Where the process is in its life, as `GET /healthz` reports it: set by the operations
/// layer, read here.
#[derive(Debug, Clone, Default)]
pub(crate) struct Phase(Arc<AtomicU8>);

impl Phase {
    const STARTING: u8 = 0;
    const SERVING: u8 = 1;
    const UPGRADING: u8 = 2;
    const STOPPING: u8 = 3;

    pub(crate) fn serving(&self) {
        self.0.store(Self::SERVING, Ordering::SeqCst);
    }

    /// Handing the listeners to a new process: changes are refused from now on, so that none
    /// is made here after the state was handed over.
    pub(crate) fn upgrading(&self) {
        self.0.store(Self::UPGRADING, Ordering::SeqCst);
    }

    pub(crate) fn stopping(&self) {
        self.0.store(Self::STOPPING, Ordering::SeqCst);
    }

    /// What the process is doing, as `/healthz` says it.
    pub(crate) fn as_str(&self) -> &'static str {
        match self.0.load(Ordering::SeqCst) {
            Self::STARTING => "starting",
            Self::SERVING => "serving",
            Self::UPGRADING => "draining: handing over to a new process (upgrade)",
            _ => "draining: stopping",
        }
    }

    fn is_serving(&self) -> bool {
        self.0.load(Ordering::SeqCst) == Self::SERVING
    }

    fn is_draining(&self) -> bool {
        self.0.load(Ordering::SeqCst) >= Self::UPGRADING
    }
}

/// Called after every change made through the API (the operations layer saves the state).
pub(crate) type OnChange = Arc<dyn Fn(&Routing) + Send + Sync>;

/// The admin HTTP application.
pub(crate) struct AdminApp {
    routing: SharedRouting,
    in_flight: InFlight,
    started: Instant,
    phase: Phase,
    on_change: OnChange,
    /// The `dns:`/`srv:` names and their last lookups.
    discovery: Arc<Discovery>,
}

impl AdminApp {
    pub(crate) fn new(
        routing: SharedRouting,
        in_flight: InFlight,
        phase: Phase,
        on_change: OnChange,
        discovery: Arc<Discovery>,
    ) -> Self {
        AdminApp {
            routing,
            in_flight,
            started: Instant::now(),
            phase,
            on_change,
            discovery,
        }
    }
}

/// An API answer before it is turned into an HTTP response.
struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Answer {
    fn json(status: StatusCode, value: &Value) -> Self {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Answer {
            status,
            content_type: "application/json",
            body,
        }
    }

    fn error(status: StatusCode, message: impl Into<String>) -> Self {
        Self::json(status, &json!({ "error": message.into() }))
    }

    fn text(content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Answer {
            status: StatusCode::OK,
            content_type,
            body: body.into(),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut body = Vec::new();
        let mut too_large = false;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            if body.len() + chunk.len() > MAX_BODY {
                too_large = true;
            } else {
                body.extend_from_slice(&chunk);
            }
        }
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let authorization = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let answer = if too_large {
            Answer::error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
        } else {
            self.route(&method, &path, authorization.as_deref(), &body)
        };
        Response::builder()
            .status(answer.status)
            .header(http::header::CONTENT_TYPE, answer.content_type)
            .header(http::header::CONTENT_LENGTH, answer.body.len())
            .header(http::header::CACHE_CONTROL, "no-store")
            .header("X-Content-Type-Options", "nosniff")
            .body(answer.body)
            .unwrap_or_default()
    }
}

impl AdminApp {
    fn route(
        &self,
        method: &Method,
        path: &str,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Answer {
        let routing = self.routing.load_full();
        // For an outer balancer or a Kubernetes probe: no token, no data.
        if path == "/healthz" {
            return match *method {
                Method::GET | Method::HEAD => {
                    let status = if self.phase.is_serving() {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    Answer {
                        status,
                        content_type: "text/plain; charset=utf-8",
                        body: format!("{}\n", self.phase.as_str()).into_bytes(),
                    }
                }
                _ => method_not_allowed(),
            };
        }
        // The page itself holds no data; everything else needs the token when one is set.
        if path == "/" || path == "/index.html" {
            return match *method {
                Method::GET | Method::HEAD => Answer::text("text/html; charset=utf-8", STATUS_PAGE),
                _ => method_not_allowed(),
            };
        }
        if let Some(expected) = routing.config.admin.as_ref().and_then(|a| a.token.as_ref()) {
            let given = authorization
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(str::trim);
            if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())) {
                log::warn!("admin: {method} {path} refused: missing or wrong token");
                return Answer::error(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong token: send Authorization: Bearer <token>",
                );
            }
        }
        match path {
            "/metrics" => match *method {
                Method::GET | Method::HEAD => Answer::text(
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics_text(&routing),
                ),
                _ => method_not_allowed(),
            },
            "/api/upstreams" => match *method {
                Method::GET | Method::HEAD => {
                    Answer::json(StatusCode::OK, &self.overview(&routing))
                }
                _ => method_not_allowed(),
            },
            _ => {
                if let Some(rest) = path.strip_prefix("/api/upstreams/") {
                    return self.upstream_route(&routing, None, method, rest, body);
                }
                let in_pool = path
                    .strip_prefix("/api/pools/")
                    .and_then(|rest| rest.split_once("/upstreams/"));
                match in_pool {
                    Some((pool, rest)) => {
                        let pool = percent_decode(pool);
                        if routing.pool(&pool).is_none() {
                            return Answer::error(
                                StatusCode::NOT_FOUND,
                                format!("no pool {pool} in the current configuration"),
                            );
                        }
                        self.upstream_route(&routing, Some(&pool), method, rest, body)
                    }
                    None => Answer::error(StatusCode::NOT_FOUND, format!("no such page: {path}")),
                }
            }
        }
    }

    /// `/api/upstreams/{addr}[/action]` (the address in every pool that has it) and
    /// `/api/pools/{pool}/upstreams/{addr}[/action]` (in one pool).
    fn upstream_route(
        &self,
        routing: &Routing,
        pool: Option<&str>,
        method: &Method,
        rest: &str,
        body: &[u8],
    ) -> Answer {
        let (addr_text, action) = match rest.rsplit_once('/') {
            Some((addr, action)) => (addr, Some(action)),
            None => (rest, None),
        };
        let addr_text = percent_decode(addr_text);
        let found = find_members(routing, pool, &addr_text);
        if found.is_empty() {
            return Answer::error(
                StatusCode::NOT_FOUND,
                match pool {
                    Some(pool) => format!("no upstream {addr_text} in pool {pool}"),
                    None => format!("no upstream {addr_text} in the current configuration"),
                },
            );
        }
        let changes = matches!(
            (method, action),
            (&Method::POST, Some("drain" | "disable" | "enable")) | (&Method::PUT, Some("weight"))
        );
        if changes && self.phase.is_draining() {
            return Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                if self.phase.0.load(Ordering::SeqCst) == Phase::UPGRADING {
                    "lb is handing over to a new process: nothing was changed; retry in a moment, the new process answers on the same address"
                } else {
                    "lb is stopping: nothing was changed"
                },
            );
        }
        let answer = self.change_or_show(&found, method, action, body);
        if changes && answer.status == StatusCode::OK {
            (self.on_change)(routing);
        }
        answer
    }

    /// Applies an admin action to `found` (or shows them).
    fn change_or_show(
        &self,
        found: &[(&Pool, &Member)],
        method: &Method,
        action: Option<&str>,
        body: &[u8],
    ) -> Answer {
        let now = now_ms();
        let answer = |found: &[(&Pool, &Member)]| -> Answer {
            let list: Vec<Value> = found
                .iter()
                .map(|(pool, member)| upstream_json(pool, member, now))
                .collect();
            match <[Value; 1]>::try_from(list) {
                Ok([one]) => Answer::json(StatusCode::OK, &one),
                Err(list) => Answer::json(StatusCode::OK, &json!({ "upstreams": list })),
            }
        };
        match (method.clone(), action) {
            (Method::GET, None) => answer(found),
            (Method::POST, Some(action @ ("drain" | "disable" | "enable"))) => {
                let (admin, verb) = match action {
                    "drain" => (AdminState::Draining, "draining"),
                    "disable" => (AdminState::Disabled, "disabled"),
                    _ => (AdminState::Enabled, "enabled"),
                };
                let reason = format!("{verb} through the admin API");
                for (_, member) in found {
                    let state = &member.state;
                    if state.set_admin(admin, &reason) {
                        log::warn!(
                            "upstream {} is {} through the admin API ({} in flight)",
                            state.label(),
                            verb.to_uppercase(),
                            state.in_flight()
                        );
                    }
                }
                answer(found)
            }
            (Method::PUT, Some("weight")) => {
                let weight = serde_json::from_slice::<Value>(body)
                    .map_err(|e| format!("body is not JSON: {e}"))
                    .and_then(|v| match v.get("weight") {
                        Some(Value::Null) => Ok(None),
                        Some(w) => w
                            .as_u64()
                            .filter(|w| (1..=MAX_WEIGHT as u64).contains(w))
                            .map(|w| Some(w as usize))
                            .ok_or_else(|| {
                                format!("weight must be a whole number from 1 to {MAX_WEIGHT}, or null for the configured one")
                            }),
                        None => Err("expected {\"weight\": N}".to_string()),
                    });
                match weight {
                    Err(reason) => Answer::error(StatusCode::BAD_REQUEST, reason),
                    Ok(weight) => {
                        for (_, member) in found {
                            let state = &member.state;
                            state.set_weight_override(weight);
                            log::warn!(
                                "upstream {} weight set to {} through the admin API",
                                state.label(),
                                state.weight(member.upstream.weight)
                            );
                        }
                        answer(found)
                    }
                }
            }
            (_, Some("drain" | "disable" | "enable" | "weight")) | (_, None) => {
                method_not_allowed()
            }
            (_, Some(other)) => Answer::error(
                StatusCode::NOT_FOUND,
                format!("unknown action `{other}`: drain, disable, enable or weight"),
            ),
        }
    }

    /// `GET /api/upstreams`: every upstream (with its pool), and the pools.
    fn overview(&self, routing: &Routing) -> Value {
        let now = now_ms();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            // The first pool's, for the one-pool form.
            "selection": routing.pools[0].config.selection.to_string(),
            "now": rfc3339(SystemTime::now()),
            "in_flight": self.in_flight.count(),
            "pools": routing
                .pools
                .iter()
                .map(|pool| json!({
                    "name": pool.config.name,
                    "selection": pool.config.selection.to_string(),
                    "upstreams": pool.members.len(),
                }))
                .collect::<Vec<_>>(),
            "upstreams": routing
                .pools
                .iter()
                .flat_map(|pool| pool.members.iter().map(move |m| upstream_json(pool, m, now)))
                .collect::<Vec<_>>(),
            // Each followed name (`origin` of its upstreams) and its last lookups.
            "discovery": self
                .discovery
                .view()
                .into_iter()
                .map(|name| json!({
                    "pool": name.pool,
                    "name": name.target,
                    "addresses": name.state.found.iter().map(|f| f.addr.to_string()).collect::<Vec<_>>(),
                    "last_refresh": name.state.last_refresh.map(rfc3339),
                    "last_success": name.state.last_success.map(rfc3339),
                    "last_error": name.state.last_error,
                    "refreshes_total": name.state.refreshes,
                    "errors_total": name.state.errors,
                }))
                .collect::<Vec<_>>(),
            "certificates": certificates_json(routing),
        })
    }

    /// `GET /metrics`: the gauges are brought up to date, then everything is rendered.
    fn metrics_text(&self, routing: &Routing) -> String {
        let m = routing.registry.metrics();
        let now = now_ms();
        for pool in &routing.pools {
            let name = pool.config.name.as_str();
            for member in &pool.members {
                let addr = member.upstream.addr.to_string();
                let state = &member.state;
                m.upstream_in_flight
                    .with_label_values(&[name, &addr])
                    .set(state.in_flight() as i64);
                m.upstream_weight
                    .with_label_values(&[name, &addr])
                    .set(state.weight(member.upstream.weight) as i64);
                let current = state.state(now, pool.config.slow_start);
                for s in ALL_STATES {
                    m.upstream_state
                        .with_label_values(&[name, &addr, s.as_str()])
                        .set(i64::from(s == current));
                }
            }
        }
        m.in_flight.set(self.in_flight.count() as i64);
        m.set_certificates(routing.config.tls.as_ref());
        if let Some(log) = &routing.access_log {
            m.access_log_dropped.set(log.dropped() as i64);
        }
        m.render()
    }
}

fn method_not_allowed() -> Answer {
    Answer::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
}

/// The members whose address (or name as configured) is `text`, in pool `pool` or in every
/// pool.
fn find_members<'a>(
    routing: &'a Routing,
    pool: Option<&str>,
    text: &str,
) -> Vec<(&'a Pool, &'a Member)> {
    let parsed: Option<SocketAddr> = text.parse().ok();
    routing
        .pools
        .iter()
        .filter(|p| pool.is_none_or(|name| p.config.name == name))
        .flat_map(|p| {
            p.members
                .iter()
                .filter(|m| Some(m.upstream.addr) == parsed || m.upstream.name == text)
                .map(move |m| (p, m))
        })
        .collect()
}

/// One upstream as the API shows it.
fn upstream_json(pool: &Pool, member: &Member, now: u64) -> Value {
    let state = &member.state;
    let current = state.state(now, pool.config.slow_start);
    let change = state.last_change();
    let totals = state.stats.totals();
    let recent = state.stats.recent();
    let last_check = state
        .last_check
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let responses: serde_json::Map<String, Value> = STATUS_CLASSES
        .iter()
        .zip(totals.responses)
        .map(|(class, n)| (class.to_string(), json!(n)))
        .collect();
    let in_flight = state.in_flight();
    json!({
        "pool": pool.config.name,
        "addr": member.upstream.addr.to_string(),
        "name": member.upstream.name,
        // The `dns:`/`srv:` name it was discovered from; null when written as an address.
        "origin": member.upstream.origin,
        "backup": member.upstream.backup,
        "weight": state.weight(member.upstream.weight),
        "configured_weight": member.upstream.weight,
        "max_conns": member.upstream.max_conns,
        "state": current.as_str(),
        "drained": current.as_str() == "draining" && in_flight == 0,
        "reason": change.reason,
        "since": rfc3339(change.at),
        // The state that change led to (slow start ending, say, changes `state` but not this).
        "changed_to": change.state.as_str(),
        "last_check": last_check.map(|c| json!({
            "ok": c.ok,
            "at": rfc3339(c.at),
            "detail": c.detail,
        })),
        "in_flight": in_flight,
        "requests_total": totals.requests,
        "failures_total": totals.failures,
        "retries_total": totals.retries,
        "ejections_total": totals.ejections,
        "responses": responses,
        "rps": round(recent.rps, 2),
        "error_rate": round(recent.error_rate, 4),
        "latency_p50_ms": recent.p50_ms.map(|v| round(v, 3)),
        "latency_p99_ms": recent.p99_ms.map(|v| round(v, 3)),
        "history": {
            "rps": recent.rps_history,
            "latency_p99_ms": recent.p99_history.iter().map(|v| v.map(|v| round(v, 3))).collect::<Vec<_>>(),
        },
    })
}

fn round(v: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (v * scale).round() / scale
}

/// A time as RFC 3339 in UTC, to the millisecond.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Decodes `%XX` escapes (an address in a URL path may have its `:` or `[` `]` escaped).
fn percent_decode(text: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(high), Some(low)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                out.push(high * 16 + low);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was
/// right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Each TLS certificate: its names, file, expiry and whole days left (negative once expired).
fn certificates_json(routing: &Routing) -> Vec<Value> {
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let Some(tls) = routing.config.tls.as_ref() else {
        return Vec::new();
    };
    tls.certificates
        .list
        .iter()
        .enumerate()
        .map(|(i, cert)| {
            json!({
                "names": cert.names,
                "cert": cert.cert_path.display().to_string(),
                "default": i == tls.certificates.default,
                "not_after": rfc3339(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_secs(cert.not_after.max(0) as u64)
                ),
                "days_left": (cert.not_after - now).div_euclid(86_400),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_paths_are_decoded() {
        assert_eq!(percent_decode("127.0.0.1%3A8081"), "127.0.0.1:8081");
        assert_eq!(percent_decode("%5B%3A%3A1%5D%3A80"), "[::1]:80");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
