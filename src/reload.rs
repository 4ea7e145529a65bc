//! Applying a changed configuration inside the running process.
//!
//! Everything a request needs to be routed — the upstream set with its health, the selection
//! algorithm, retries and timeouts — is one immutable [`Routing`] behind an [`ArcSwap`]. A
//! reload builds a new one, checks its upstreams once (carrying over the state of those that
//! stay, so none flaps), and swaps it in. Requests in flight keep the routing they started
//! with; open connections are never touched.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::access_log::AccessLog;
use crate::config::{Config, LbConfig, Upstream};
use crate::health;
use crate::instance::{InstanceFiles, Status};
use crate::selection::Pool;
use crate::upstream::{now_ms, Registry, UpstreamState};

/// How requests are routed right now.
pub struct Routing {
    pub config: LbConfig,
    pub pool: Pool,
    /// Every upstream's live state, shared by all routings of this process.
    pub registry: Arc<Registry>,
    /// Whether active checks are on.
    checked: bool,
    /// Off when `None`.
    pub access_log: Option<AccessLog>,
}

/// The current routing, replaced as a whole on reload.
pub type SharedRouting = Arc<ArcSwap<Routing>>;

impl Routing {
    /// Builds the routing for `config`. Upstreams already in `registry` keep their state;
    /// `previous` lends its access log when that is configured the same.
    pub fn new(
        config: LbConfig,
        registry: Arc<Registry>,
        previous: Option<&Routing>,
    ) -> std::io::Result<Self> {
        let access_log = match &config.access_log {
            None => None,
            Some(settings) => match previous.and_then(|p| p.access_log.as_ref()) {
                Some(log) if log.settings() == settings => Some(log.clone()),
                _ => Some(AccessLog::open(settings)?),
            },
        };
        let states = registry.members(&config.upstreams);
        let check = health::build_check(&config.health_check, &states);
        if check.is_none() {
            for state in &states {
                state.unchecked();
            }
        }
        let checked = check.is_some();
        let pool = Pool::new(&config, &registry, check);
        Ok(Routing {
            config,
            pool,
            registry,
            checked,
            access_log,
        })
    }

    pub fn shared(self) -> SharedRouting {
        Arc::new(ArcSwap::from_pointee(self))
    }

    /// Runs one round of active checks over every upstream, concurrently.
    pub async fn check_round(&self) {
        if self.checked {
            self.pool.backends().run_health_check(true).await;
        }
    }

    /// Time between check rounds, or `None` when checks are off.
    pub fn check_interval(&self) -> Option<Duration> {
        self.checked.then_some(self.config.health_check.interval)
    }

    /// A failed attempt on `state` (of a kind passive health counts): ejects the upstream after
    /// `consecutive_failures` in a row, unless that would eject more than
    /// `max_ejected_percent` of the pool.
    pub fn note_failure(&self, state: &UpstreamState, what: &str) {
        let policy = &self.config.passive_health;
        if policy.consecutive_failures == 0 {
            return;
        }
        let failures = state.record_failure();
        let now = now_ms();
        if failures < policy.consecutive_failures || state.is_ejected(now) {
            return;
        }
        let members = &self.pool.members;
        let ejected = members.iter().filter(|m| m.state.is_ejected(now)).count();
        let allowed = members.len() * policy.max_ejected_percent as usize / 100;
        if ejected >= allowed {
            log::warn!(
                "upstream {} failed {failures} times in a row ({what}) but stays in: \
                 {ejected} of {} upstreams are ejected already (max_ejected_percent {})",
                state.addr,
                members.len(),
                policy.max_ejected_percent
            );
            return;
        }
        let reason = format!("{failures} consecutive failures, last: {what}");
        let length = state.eject(policy, &reason);
        log::warn!(
            "upstream {} is EJECTED for {}s: {reason}",
            state.addr,
            length.as_secs()
        );
    }

    /// Ends the ejections whose time is up, with a log line each.
    pub fn end_due_ejections(&self) {
        let now = now_ms();
        for m in &self.pool.members {
            if m.state.end_ejection_if_due(now) {
                log::info!(
                    "upstream {} is back in rotation: its ejection ended",
                    m.upstream.addr
                );
            }
        }
    }
}

/// Why a reload was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0} changed: that needs `lb upgrade`; nothing was changed")]
    NeedsUpgrade(String),
    #[error("lb.access_log.path: cannot open {0}; nothing was changed")]
    AccessLog(String),
}

/// Re-reads the configuration on SIGHUP and applies what can change in place.
pub struct ReloadService {
    routing: SharedRouting,
    config_path: PathBuf,
    /// The pingora server settings and listeners the process started with; changing them
    /// needs new sockets or a new process.
    started_server: serde_yaml::Value,
    started_listen: Vec<SocketAddr>,
    started_proxy_listen: Vec<SocketAddr>,
    files: InstanceFiles,
    status: Mutex<Status>,
}

impl ReloadService {
    pub fn new(routing: SharedRouting, config_path: PathBuf, config: &Config) -> Self {
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
        }
    }

    /// Publishes the status file (done once serving, and after each reload).
    pub fn publish_status(&self) {
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
    pub async fn reload(&self) -> Result<String, ReloadError> {
        let config = Config::load(&self.config_path)?;
        if server_value(&config.server) != self.started_server {
            let changed = changed_keys(&self.started_server, &server_value(&config.server));
            return Err(ReloadError::NeedsUpgrade(format!(
                "pingora server settings ({changed})"
            )));
        }
        if config.lb.all_listeners() != self.started_listen {
            let key = if self.started_proxy_listen == config.lb.listen {
                "lb.admin.listen"
            } else {
                "lb.listen"
            };
            return Err(ReloadError::NeedsUpgrade(key.to_string()));
        }
        let current = self.routing.load_full();
        let next = Routing::new(config.lb, current.registry.clone(), Some(&current))
            .map_err(|e| ReloadError::AccessLog(e.to_string()))?;
        // Settle the new upstream set before it takes traffic: kept upstreams keep their
        // state, new ones get their first check now.
        next.check_round().await;
        let summary = describe_changes(&current.config, &next.config);
        self.routing.store(Arc::new(next));
        Ok(summary)
    }

    async fn handle_reload(&self) {
        let outcome = self.reload().await;
        crate::stats::metrics()
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

fn server_value(conf: &pingora::server::configuration::ServerConf) -> serde_yaml::Value {
    serde_yaml::to_value(conf).unwrap_or(serde_yaml::Value::Null)
}

fn changed_keys(before: &serde_yaml::Value, after: &serde_yaml::Value) -> String {
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
fn describe_changes(before: &LbConfig, after: &LbConfig) -> String {
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
    if parts.is_empty() {
        format!("no change ({} upstreams)", after.upstreams.len())
    } else {
        format!("{} ({} upstreams)", parts.join("; "), after.upstreams.len())
    }
}
