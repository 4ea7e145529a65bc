//! Applying a changed configuration inside the running process.
//!
//! Everything a request needs to be routed — the upstream set with its health, the selection
//! algorithm, retries and timeouts — is one immutable [`Routing`] behind an `ArcSwap`. A
//! reload builds a new one, checks its upstreams once (carrying over the state of those that
//! stay, so none flaps), and swaps it in. Requests in flight keep the routing they started
//! with; open connections are never touched.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::instance::{InstanceFiles, Status};
use crate::balancer::{Registry, Routing, SharedRouting};
use crate::config::{Config, LbConfig, PoolConfig, TlsConfig, Upstream};
use crate::discovery::Discovery;
use crate::health;

/// Builds the routing for `config` with its active health check (see [`Routing::new`]).
pub(crate) fn build_routing(
    config: LbConfig,
    registry: Arc<Registry>,
    previous: Option<&Routing>,
) -> std::io::Result<Routing> {
    Routing::new(config, registry, previous, |pool, states| {
        health::build_check(pool, states)
    })
}

/// Why a reload was not applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0} changed: that needs `lb upgrade`; nothing was changed")]
    NeedsUpgrade(String),
    #[error("lb.access_log.path: cannot open {0}; nothing was changed")]
    AccessLog(String),
    #[error("{0}; nothing was changed")]
    Discovery(#[from] crate::discovery::DiscoveryError),
}

/// Re-reads the configuration on SIGHUP and applies what can change in place.
pub(crate) struct ReloadService {
    routing: SharedRouting,
    config_path: PathBuf,
    /// The pingora server settings and listeners the process started with; changing them
    /// needs new sockets or a new process.
    started_server: serde_yaml_ng::Value,
    started_listen: Vec<SocketAddr>,
    started_proxy_listen: Vec<SocketAddr>,
    files: InstanceFiles,
    status: Mutex<Status>,
    /// The discovered sets, applied on top of each new configuration.
    discovery: Arc<Discovery>,
}

impl ReloadService {
    pub(crate) fn new(
        routing: SharedRouting,
        config_path: PathBuf,
        config: &Config,
        discovery: Arc<Discovery>,
    ) -> Self {
        let files = InstanceFiles::new(&config.server.pid_file);
        let status = Status {
            config: config_path.clone(),
            listen: config.lb.all_listeners(),
            ..Status::default()
        };
        ReloadService {
            routing,
            config_path,
            started_server: server_value(&config.server),
            started_listen: config.lb.all_listeners(),
            started_proxy_listen: config.lb.listen.clone(),
            files,
            status: Mutex::new(status),
            discovery,
        }
    }

    /// Publishes the status file (done once serving, and after each reload).
    pub(crate) fn publish_status(&self) {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Read now: a daemon has forked since this service was built.
        status.pid = std::process::id() as i32;
        if let Err(e) = self.files.write_status(&status) {
            log::warn!("cannot write {}: {e}", self.files.status_file.display());
        }
    }

    /// Reads the file again and swaps in the new routing; returns what changed.
    pub(crate) async fn reload(&self) -> Result<String, ReloadError> {
        let config = Config::load(&self.config_path)?;
        if server_value(&config.server) != self.started_server {
            let changed = changed_keys(&self.started_server, &server_value(&config.server));
            return Err(ReloadError::NeedsUpgrade(format!(
                "pingora server settings ({changed})"
            )));
        }
        if config.lb.all_listeners() != self.started_listen {
            let tls_listen = |c: Option<&TlsConfig>| c.map(|t| t.listen.clone());
            let key = if self.started_proxy_listen != config.lb.listen {
                "lb.listen"
            } else if tls_listen(self.routing.load().config.tls.as_ref())
                != tls_listen(config.lb.tls.as_ref())
            {
                "lb.tls.listen"
            } else {
                "lb.admin.listen"
            };
            return Err(ReloadError::NeedsUpgrade(key.to_string()));
        }
        // Discovery waits while this reload applies, and then builds on it.
        let _applying = self.discovery.apply.lock().await;
        let mut lb = config.lb;
        // Names the file adds are looked up now; the others keep their current sets.
        self.discovery.resolve_new(&lb).await?;
        self.discovery.expand(&mut lb);
        self.discovery.retain(&lb);
        let current = self.routing.load_full();
        if let Some(key) = tls_change_needing_upgrade(current.config.tls.as_ref(), lb.tls.as_ref())
        {
            return Err(ReloadError::NeedsUpgrade(key.to_string()));
        }
        if let Some(tls) = &lb.tls {
            log_certificate_expiry(tls);
        }
        let log_format = lb.log_format;
        let next = build_routing(lb, current.registry.clone(), Some(&current))
            .map_err(|e| ReloadError::AccessLog(e.to_string()))?;
        // Settle the new upstream set before it takes traffic: kept upstreams keep their
        // state, new ones get their first check now.
        next.check_round().await;
        let summary = describe_changes(&current.config, &next.config);
        self.routing.store(Arc::new(next));
        crate::observe::logging::set_format(log_format);
        Ok(summary)
    }

    async fn handle_reload(&self) {
        let outcome = self.reload().await;
        self.routing
            .load()
            .registry
            .metrics()
            .reloads
            .with_label_values(&[if outcome.is_ok() { "ok" } else { "refused" }])
            .inc();
        match &outcome {
            Ok(summary) => log::info!("reloaded {}: {summary}", self.config_path.display()),
            Err(e) => log::error!("reload of {} refused: {e}", self.config_path.display()),
        }
        {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            status.reloads += 1;
            status.last_reload_ok = outcome.is_ok();
            status.last_reload = match outcome {
                Ok(summary) => summary,
                Err(e) => e.to_string(),
            };
        }
        self.publish_status();
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    log::error!("cannot listen for SIGHUP, reload is unavailable: {e}");
                    return;
                }
            };
        let mut reopens =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) {
                Ok(s) => Some(s),
                Err(e) => {
                    log::error!("cannot listen for SIGUSR1, log reopening is unavailable: {e}");
                    None
                }
            };
        loop {
            let reopen = async {
                match reopens.as_mut() {
                    Some(signals) => signals.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                received = hangups.recv() => {
                    if received.is_none() {
                        return;
                    }
                    log::info!("SIGHUP received: reloading {}", self.config_path.display());
                    self.handle_reload().await;
                }
                Some(()) = reopen => {
                    if let Some(log) = &self.routing.load().access_log {
                        log::info!("SIGUSR1 received: reopening the access log");
                        log.reopen();
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
            }
        }
    }
}

/// The `lb.tls` key whose change needs new listeners (`lb upgrade`), if any: the listeners
/// themselves and what their settings fix. Certificates change in place.
fn tls_change_needing_upgrade(
    before: Option<&TlsConfig>,
    after: Option<&TlsConfig>,
) -> Option<&'static str> {
    match (before, after) {
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => Some("lb.tls"),
        (Some(b), Some(a)) => {
            if b.listen != a.listen {
                Some("lb.tls.listen")
            } else if b.min_version != a.min_version {
                Some("lb.tls.min_version")
            } else if b.http2 != a.http2 {
                Some("lb.tls.http2")
            } else {
                None
            }
        }
    }
}

/// Logs each certificate that has expired (an error) or expires within 14 days (a warning).
pub(crate) fn log_certificate_expiry(tls: &TlsConfig) {
    let now = chrono::Utc::now().timestamp();
    for (expired, line) in tls.certificates.expiry_warnings(now) {
        if expired {
            log::error!("{line}");
        } else {
            log::warn!("{line}");
        }
    }
}

fn server_value(conf: &pingora::server::configuration::ServerConf) -> serde_yaml_ng::Value {
    serde_yaml_ng::to_value(conf).unwrap_or(serde_yaml_ng::Value::Null)
}

fn changed_keys(before: &serde_yaml_ng::Value, after: &serde_yaml_ng::Value) -> String {
    let (Some(before), Some(after)) = (before.as_mapping(), after.as_mapping()) else {
        return "unknown".to_string();
    };
    let keys: Vec<String> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .filter_map(|(k, _)| k.as_str().map(str::to_owned))
        .collect();
    keys.join(", ")
}

/// A one-line account of what a reload changed.
pub(crate) fn describe_changes(before: &LbConfig, after: &LbConfig) -> String {
    let names = |c: &LbConfig| -> Vec<String> { c.pools.iter().map(|p| p.name.clone()).collect() };
    let (old, new) = (names(before), names(after));
    let mut parts = Vec::new();
    let added: Vec<&String> = new.iter().filter(|n| !old.contains(n)).collect();
    let removed: Vec<&String> = old.iter().filter(|n| !new.contains(n)).collect();
    if !added.is_empty() {
        parts.push(format!("pools added {}", join(&added)));
    }
    if !removed.is_empty() {
        parts.push(format!("pools removed {}", join(&removed)));
    }
    if let (Some(b), Some(a)) = (&before.tls, &after.tls) {
        if b.certificates != a.certificates {
            parts.push("TLS certificates replaced".to_string());
        }
    }
    let several = after.pools.len() > 1 || before.pools.len() > 1;
    for pool in &after.pools {
        if let Some(previous) = before.pool(&pool.name) {
            for part in describe_pool_changes(previous, pool) {
                parts.push(if several {
                    format!("{}: {part}", pool.name)
                } else {
                    part
                });
            }
        }
    }
    if before.routes != after.routes {
        parts.push(format!("routes changed ({} routes)", after.routes.len()));
    }
    if before.client_idle != after.client_idle {
        parts.push("timeouts changed".to_string());
    }
    let upstreams: usize = after.pools.iter().map(|p| p.upstreams.len()).sum();
    if parts.is_empty() {
        format!("no change ({upstreams} upstreams)")
    } else {
        format!("{} ({upstreams} upstreams)", parts.join("; "))
    }
}

fn join(names: &[&String]) -> String {
    names
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What changed in one pool that both configurations have.
fn describe_pool_changes(before: &PoolConfig, after: &PoolConfig) -> Vec<String> {
    let find = |list: &[Upstream], addr: SocketAddr| list.iter().find(|u| u.addr == addr).cloned();
    // The upstreams of `list` that `other` lacks.
    let missing = |list: &[Upstream], other: &[Upstream]| -> Vec<String> {
        list.iter()
            .filter(|u| find(other, u.addr).is_none())
            .map(|u| u.addr.to_string())
            .collect()
    };
    let mut parts = Vec::new();
    let added = missing(&after.upstreams, &before.upstreams);
    let removed = missing(&before.upstreams, &after.upstreams);
    let reweighted: Vec<String> = after
        .upstreams
        .iter()
        .filter_map(|u| {
            let old = find(&before.upstreams, u.addr)?;
            (old.weight != u.weight).then(|| format!("{} {}→{}", u.addr, old.weight, u.weight))
        })
        .collect();
    for (label, list) in [
        ("added", added),
        ("removed", removed),
        ("weight", reweighted),
    ] {
        if !list.is_empty() {
            parts.push(format!("{label} {}", list.join(", ")));
        }
    }
    if before.selection != after.selection {
        parts.push(format!(
            "selection {}→{}",
            before.selection, after.selection
        ));
    }
    if before.retries != after.retries {
        parts.push(format!(
            "retries {}→{}",
            before.retries.attempts, after.retries.attempts
        ));
    }
    if before.passive_health != after.passive_health {
        parts.push("passive health changed".to_string());
    }
    if before.slow_start != after.slow_start {
        parts.push(format!(
            "slow_start {:?}→{:?}",
            before.slow_start, after.slow_start
        ));
    }
    if before.hash_key != after.hash_key {
        parts.push(format!("hash_key {}→{}", before.hash_key, after.hash_key));
    }
    if before.queue != after.queue {
        parts.push("queue changed".to_string());
    }
    let flags = |u: &Upstream| (u.max_conns, u.backup);
    let reflagged: Vec<String> = after
        .upstreams
        .iter()
        .filter(|u| {
            before
                .upstreams
                .iter()
                .any(|b| b.addr == u.addr && flags(b) != flags(u))
        })
        .map(|u| u.addr.to_string())
        .collect();
    if !reflagged.is_empty() {
        parts.push(format!("max_conns/backup {}", reflagged.join(", ")));
    }
    if before.timeouts != after.timeouts {
        parts.push("timeouts changed".to_string());
    }
    if before.health_check != after.health_check {
        parts.push("health checks changed".to_string());
    }
    parts
}
