//! Building a pool's active check: pingora's probe wrapped in [`UpstreamCheck`], which adds a
//! timeout per check, the `healthy_after` / `unhealthy_after` hysteresis, a first round that
//! decides the initial state, and one log line per change with the reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;
use pingora::{Error, ErrorType};

use crate::balancer::peer::upstream_peer;
use crate::balancer::UpstreamState;
use crate::config::{CheckType, HealthCheckConfig, PoolConfig, Upstream, UpstreamProtocol};
use crate::outcome::{describe_error, is_local_resource_error};

/// Builds the configured check over `members`, or `None` for `type: none`.
///
/// The settled state of each upstream lives in its [`UpstreamState`], which outlives a reload:
/// upstreams that stay keep their up/down state and streak instead of starting over.
///
/// An `http` check speaks the pool's `protocol` (TLS with the pool's server name and certificate
/// checks, HTTP/2), so it fails when requests would; a `tcp` check only connects.
pub(crate) fn build_check(
    pool: &PoolConfig,
    members: &[Arc<UpstreamState>],
) -> Option<Box<dyn HealthCheck + Send + Sync>> {
    let config = &pool.health_check;
    let probe: Box<dyn HealthCheck + Send + Sync> = match config.kind {
        CheckType::Http if pool.protocol != UpstreamProtocol::Http1 => {
            // One probe per upstream: each has its own peer (its server name).
            let probes = members
                .iter()
                .map(|member| {
                    let upstream = pool
                        .upstreams
                        .iter()
                        .find(|u| u.addr == member.addr)
                        .cloned()
                        .unwrap_or_else(|| Upstream {
                            name: member.addr.to_string(),
                            addr: member.addr,
                            weight: 1,
                            max_conns: None,
                            backup: false,
                            origin: None,
                        });
                    let mut http = http_probe(config);
                    let mut peer = upstream_peer(pool, &upstream);
                    peer.options.connection_timeout = Some(config.timeout);
                    peer.options.total_connection_timeout = Some(config.timeout);
                    peer.options.read_timeout = Some(config.timeout);
                    peer.options.write_timeout = Some(config.timeout);
                    http.peer_template = peer;
                    (member.addr, http)
                })
                .collect();
            Box::new(ByUpstream(probes))
        }
        CheckType::None => return None,
        CheckType::Tcp => {
            let mut tcp = TcpHealthCheck::default();
            tcp.peer_template.options.connection_timeout = Some(config.timeout);
            tcp.peer_template.options.total_connection_timeout = Some(config.timeout);
            Box::new(tcp)
        }
        CheckType::Http => {
            let mut http = http_probe(config);
            http.peer_template.options.connection_timeout = Some(config.timeout);
            http.peer_template.options.total_connection_timeout = Some(config.timeout);
            http.peer_template.options.read_timeout = Some(config.timeout);
            http.peer_template.options.write_timeout = Some(config.timeout);
            Box::new(http)
        }
    };
    Some(Box::new(UpstreamCheck::new(probe, config, members)))
}

/// pingora's HTTP probe with lb's request and status check (over plain HTTP/1 until its peer
/// template is replaced).
fn http_probe(config: &HealthCheckConfig) -> HttpHealthCheck {
    let mut http = HttpHealthCheck::new(&config.host, false);
    match http_check_request(config) {
        Ok(req) => http.req = req,
        Err(e) => log::error!("health check request for {}: {e}", config.path),
    }
    let expected = config.expect_status.clone();
    http.validator = Some(Box::new(move |resp| {
        let status = resp.status.as_u16();
        if expected.iter().any(|range| range.contains(status)) {
            Ok(())
        } else {
            Error::e_explain(
                ErrorType::CustomCode("unexpected status", status),
                "during http health check",
            )
        }
    }));
    http
}

/// A probe per upstream address.
struct ByUpstream(HashMap<SocketAddr, HttpHealthCheck>);

#[async_trait]
impl HealthCheck for ByUpstream {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let probe = target.addr.as_inet().and_then(|addr| self.0.get(addr));
        match probe {
            Some(probe) => probe.check(target).await,
            None => Error::e_explain(ErrorType::InternalError, "no probe for this upstream"),
        }
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}

fn http_check_request(config: &HealthCheckConfig) -> pingora::Result<pingora::http::RequestHeader> {
    let mut req = pingora::http::RequestHeader::build("GET", config.path.as_bytes(), None)?;
    req.insert_header("Host", &config.host)?;
    req.insert_header(
        "User-Agent",
        concat!("lb-health-check/", env!("CARGO_PKG_VERSION")),
    )?;
    Ok(req)
}

/// A pingora probe plus timeout, hysteresis and logging.
///
/// It answers pingora with the *settled* state of the upstream (so pingora's own threshold is 1):
/// a failing probe of an upstream that is still up counts towards `unhealthy_after` and reports
/// success until the count is reached.
pub(crate) struct UpstreamCheck {
    probe: Box<dyn HealthCheck + Send + Sync>,
    timeout: Duration,
    healthy_after: usize,
    unhealthy_after: usize,
    states: HashMap<SocketAddr, Arc<UpstreamState>>,
}

impl UpstreamCheck {
    pub(crate) fn new(
        probe: Box<dyn HealthCheck + Send + Sync>,
        config: &HealthCheckConfig,
        members: &[Arc<UpstreamState>],
    ) -> Self {
        UpstreamCheck {
            probe,
            // The probe's own timeouts cover connect and read; this bounds the whole check.
            timeout: config.timeout,
            healthy_after: config.healthy_after,
            unhealthy_after: config.unhealthy_after,
            states: members.iter().map(|m| (m.addr, m.clone())).collect(),
        }
    }

    /// Whether the upstream counts as up now, without a new result (unknown counts as down,
    /// as before its first check).
    fn settled_up(&self, addr: SocketAddr) -> bool {
        self.states.get(&addr).is_some_and(|upstream| {
            upstream
                .check
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .up
                .unwrap_or(false)
        })
    }

    /// Folds one probe result into the upstream's state; returns whether it is now up.
    fn observe(&self, addr: SocketAddr, result: &Result<(), String>) -> bool {
        let Some(upstream) = self.states.get(&addr) else {
            return result.is_ok();
        };
        upstream.set_last_check(
            result.is_ok(),
            match result {
                Ok(()) => "ok".to_string(),
                Err(reason) => reason.clone(),
            },
        );
        let addr = upstream.label();
        let mut state = upstream.check.lock().unwrap_or_else(|p| p.into_inner());
        let passed = result.is_ok();
        match state.up {
            None => {
                state.up = Some(passed);
                match result {
                    Ok(()) => {
                        log::info!("upstream {addr} is UP (first check passed)");
                        upstream.set_healthy(true, true, "first check passed");
                    }
                    Err(reason) => {
                        log::warn!("upstream {addr} is DOWN (first check failed): {reason}");
                        upstream.set_healthy(false, true, &format!("first check failed: {reason}"));
                    }
                }
            }
            Some(up) if up == passed => state.streak = 0,
            Some(_) => {
                state.streak += 1;
                let needed = if passed {
                    self.healthy_after
                } else {
                    self.unhealthy_after
                };
                if state.streak >= needed {
                    state.up = Some(passed);
                    let streak = std::mem::take(&mut state.streak);
                    let s = if streak == 1 { "" } else { "s" };
                    match result {
                        Ok(()) => {
                            log::info!("upstream {addr} is UP after {streak} passed check{s}");
                            upstream.set_healthy(true, false, &format!("passed {streak} check{s}"));
                        }
                        Err(reason) => {
                            log::warn!(
                                "upstream {addr} is DOWN after {streak} failed check{s}: {reason}"
                            );
                            upstream.set_healthy(
                                false,
                                false,
                                &format!("failed {streak} check{s}: {reason}"),
                            );
                        }
                    }
                }
            }
        }
        state.up.unwrap_or(passed)
    }
}

#[async_trait]
impl HealthCheck for UpstreamCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let Some(addr) = target.addr.as_inet().copied() else {
            return Error::e_explain(ErrorType::InternalError, "not an inet upstream");
        };
        let result = match tokio::time::timeout(self.timeout, self.probe.check(target)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if is_local_resource_error(&e) => {
                // lb itself is short of file descriptors or buffers: this says nothing about
                // the upstream, whose state stays as it was.
                log::warn!(
                    "health check of {addr} not made: {} (a local shortage; the upstream's state is kept)",
                    describe_error(&e)
                );
                return if self.settled_up(addr) {
                    Ok(())
                } else {
                    Error::e_explain(ErrorType::Custom("upstream down"), "still down")
                };
            }
            Ok(Err(e)) => Err(describe_error(&e)),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        if self.observe(addr, &result) {
            Ok(())
        } else {
            let reason = result.err().unwrap_or_else(|| "still settling".to_string());
            Error::e_explain(ErrorType::Custom("upstream down"), reason)
        }
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
    }

    fn backend_summary(&self, target: &Backend) -> String {
        format!("upstream {}", target.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(healthy_after: usize, unhealthy_after: usize, a: SocketAddr) -> UpstreamCheck {
        let config = HealthCheckConfig {
            healthy_after,
            unhealthy_after,
            ..HealthCheckConfig::default()
        };
        let members = [UpstreamState::detached(a)];
        UpstreamCheck::new(Box::new(TcpHealthCheck::default()), &config, &members)
    }

    #[test]
    fn first_result_decides_then_hysteresis_applies() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let c = check(2, 3, a);
        let fail = Err("connection refused".to_string());
        assert!(!c.observe(a, &fail), "down at start");
        assert!(!c.observe(a, &Ok(())), "one pass is not enough");
        assert!(c.observe(a, &Ok(())), "two passes bring it back");
        assert!(c.observe(a, &fail));
        assert!(c.observe(a, &fail));
        assert!(c.observe(a, &Ok(())), "a pass resets the failure streak");
        assert!(c.observe(a, &fail));
        assert!(c.observe(a, &fail));
        assert!(!c.observe(a, &fail), "three failures in a row take it out");
    }
}
