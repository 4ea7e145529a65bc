//! The process around the proxy: announcing that it serves (pid and status files, and the
//! handshake with `lb upgrade`), counting requests in flight, and leaving as soon as they are
//! done once a graceful stop or upgrade has begun.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::instance::InstanceFiles;
use super::reload::ReloadService;
use crate::admin::Phase;
use crate::balancer::SharedRouting;
use crate::proxy::{ClientConnections, InFlight};

/// The environment variable through which `lb upgrade` asks the new process to report progress.
pub(crate) const READY_FILE_ENV: &str = "LB_UPGRADE_READY_FILE";

/// How far a new process started by `lb upgrade` has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpgradeStage {
    /// The first health-check round is done: the old process may be asked to hand over.
    Checked,
    /// The listeners are taken over and requests are served.
    Serving,
}

impl UpgradeStage {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UpgradeStage::Checked => "checked",
            UpgradeStage::Serving => "serving",
        }
    }
}

/// Set once the proxy serves.
pub(crate) static SERVED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Tells a waiting `lb upgrade` (if any started this process) that `stage` is reached.
pub(crate) fn notify_upgrader(stage: UpgradeStage) {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    let path = PATH.get_or_init(|| std::env::var_os(READY_FILE_ENV).map(PathBuf::from));
    if let Some(path) = path {
        if let Err(e) = std::fs::write(path, stage.as_str()) {
            log::warn!("cannot report upgrade progress to {}: {e}", path.display());
        }
    }
}

/// Starts once the proxy serves; on shutdown, ends the process as soon as no request is left.
pub(crate) struct LifecycleService {
    files: InstanceFiles,
    reload: Option<Arc<ReloadService>>,
    in_flight: InFlight,
    /// Client connections still open: each may yet bring a request, answered with
    /// `Connection: close`.
    connections: ClientConnections,
    grace: Duration,
    /// For the access log, written out before the process exits.
    routing: SharedRouting,
    /// What `GET /healthz` reports: serving from the moment the proxy is.
    phase: Phase,
}

impl LifecycleService {
    pub(crate) fn new(
        files: InstanceFiles,
        reload: Option<Arc<ReloadService>>,
        in_flight: InFlight,
        connections: ClientConnections,
        grace: Duration,
        routing: SharedRouting,
        phase: Phase,
    ) -> Self {
        LifecycleService {
            files,
            reload,
            in_flight,
            connections,
            grace,
            routing,
            phase,
        }
    }
}

impl LifecycleService {
    /// The start-up line: every listener and the admin address.
    fn announcement(&self) -> String {
        let routing = self.routing.load();
        let tls_listen = routing.config.tls.iter().flat_map(|t| t.listen.iter());
        let listen: Vec<String> = (routing.config.listen.iter())
            .map(|a| format!("http://{a}"))
            .chain(tls_listen.map(|a| format!("https://{a}")))
            .collect();
        let admin = match &routing.config.admin {
            Some(admin) => format!("admin on http://{}", admin.listen),
            None => "no admin listener".to_string(),
        };
        format!(
            "lb {} serving on {}; {admin}; {} upstream(s); pid {}",
            env!("CARGO_PKG_VERSION"),
            listen.join(", "),
            routing
                .config
                .pools
                .iter()
                .map(|p| p.upstreams.len())
                .sum::<usize>(),
            std::process::id()
        )
    }
}

#[async_trait]
impl BackgroundService for LifecycleService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if let Err(e) = self.files.write_pid() {
            log::error!(
                "cannot write pid file {}: {e}",
                self.files.pid_file.display()
            );
        }
        if let Some(reload) = &self.reload {
            reload.publish_status();
        }
        self.phase.serving();
        SERVED.store(true, std::sync::atomic::Ordering::SeqCst);
        notify_upgrader(UpgradeStage::Serving);
        log::info!("{}", self.announcement());

        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        log::info!(
            "graceful shutdown: no new connections; waiting up to {}s for {} request(s) in flight and {} client connection(s)",
            self.grace.as_secs(),
            self.in_flight.count(),
            self.connections.count()
        );
        // Idle means no request for a few polls in a row, so that one whose connection was
        // accepted just before the listeners closed gets counted.
        let mut idle_polls = 0;
        while idle_polls < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.in_flight.count() == 0 && self.connections.count() == 0 {
                idle_polls += 1;
            } else {
                idle_polls = 0;
            }
        }
        log::info!(
            "graceful shutdown: all requests finished and client connections closed, exiting"
        );
        if let Some(access_log) = &self.routing.load().access_log {
            access_log.flush(Duration::from_secs(2));
        }
        self.files.remove_if_ours();
        std::process::exit(0);
    }
}
