//! Handing the process over: the runtime state (admin actions, admin weights, ejections) saved
//! to `<pid_file>.state` and restored by the next process, and lb's own handling of the
//! shutdown signals.
//!
//! pingora's SIGQUIT handling sends the listening sockets to the new process, then keeps
//! accepting on all of them (the admin listener included) for a fixed 5 s with its own state.
//! lb's [`Signals`] does the hand-over itself instead: it refuses admin changes from the first
//! moment, saves the state, sends the sockets, waits until the new process has written its pid
//! (it serves), and only then lets pingora's graceful shutdown close every listener at once. A
//! hand-over that fails (no new process takes the sockets, or it never serves) leaves this
//! process serving, as before the signal.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};

use super::instance::InstanceFiles;
use crate::admin::Phase;
use crate::balancer::SharedRouting;

/// How long the old process waits for the new one to serve once it has the sockets.
const SERVE_WAIT: Duration = Duration::from_secs(60);

/// What to do with a state file found at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavedStateUse {
    /// Apply it (an upgrade, or `--keep-state`).
    Restore,
    /// Start fresh.
    Ignore,
}

/// Saves the current runtime state to the state file; logs when it cannot.
pub(crate) fn save_state(files: &InstanceFiles, routing: &SharedRouting) {
    let snapshot = routing.load().registry.snapshot();
    if let Err(e) = files.write_state(&snapshot) {
        log::error!(
            "cannot save the runtime state to {}: {e} (admin changes would not survive an upgrade)",
            files.state_file.display()
        );
    }
}

/// The listening sockets pingora holds, captured when the services start.
#[derive(Clone, Default)]
pub(crate) struct ListenerTable(Arc<Mutex<Option<ListenFds>>>);

/// Started once the old process (if any) has handed over its sockets, before the proxy and the
/// admin listener: restores the saved runtime state, and keeps a handle on the socket table.
pub(crate) struct HandoverService {
    files: InstanceFiles,
    routing: SharedRouting,
    saved: SavedStateUse,
    table: ListenerTable,
}

impl HandoverService {
    pub(crate) fn new(
        files: InstanceFiles,
        routing: SharedRouting,
        saved: SavedStateUse,
        table: ListenerTable,
    ) -> Self {
        HandoverService {
            files,
            routing,
            saved,
            table,
        }
    }

    fn restore(&self) {
        if self.saved == SavedStateUse::Ignore {
            return;
        }
        match self.files.read_state() {
            Ok(None) => {}
            Ok(Some(saved)) => {
                let lines = self.routing.load().registry.restore(&saved);
                if lines.is_empty() {
                    log::info!(
                        "runtime state from {} (pid {}): nothing to restore",
                        self.files.state_file.display(),
                        saved.pid
                    );
                }
                for line in lines {
                    log::warn!("runtime state restored (from pid {}): {line}", saved.pid);
                }
            }
            Err(e) => log::error!("runtime state not restored: {e}"),
        }
    }
}

#[async_trait]
impl ServiceWithDependents for HandoverService {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        _shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
        ready: ServiceReadyNotifier,
    ) {
        *self.table.0.lock().unwrap_or_else(|p| p.into_inner()) = fds;
        self.restore();
        ready.notify_ready();
    }

    fn name(&self) -> &str {
        "handover"
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }
}

/// lb's handling of SIGQUIT (hand over), SIGTERM (graceful stop) and SIGINT (stop at once).
pub(crate) struct Signals {
    pub(crate) files: InstanceFiles,
    pub(crate) routing: SharedRouting,
    pub(crate) phase: Phase,
    pub(crate) table: ListenerTable,
    pub(crate) upgrade_sock: String,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (quit, term, int) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        let (mut quit, mut term, mut int) = match (quit, term, int) {
            (Ok(q), Ok(t), Ok(i)) => (q, t, i),
            _ => {
                log::error!("cannot listen for signals: stopping");
                return ShutdownSignal::FastShutdown;
            }
        };
        loop {
            tokio::select! {
                _ = int.recv() => {
                    log::info!("SIGINT received: stopping now");
                    return ShutdownSignal::FastShutdown;
                }
                _ = term.recv() => {
                    self.phase.stopping();
                    save_state(&self.files, &self.routing);
                    log::info!("SIGTERM received: graceful stop");
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = quit.recv() => {
                    if self.hand_over().await {
                        return ShutdownSignal::GracefulTerminate;
                    }
                }
            }
        }
    }
}

impl Signals {
    /// Hands the sockets and the state to the new process; true once it serves.
    async fn hand_over(&self) -> bool {
        log::info!(
            "SIGQUIT received: handing the listeners over through {}",
            self.upgrade_sock
        );
        // From here on no admin change is accepted, so the state saved next is final.
        self.phase.upgrading();
        save_state(&self.files, &self.routing);
        let table = self
            .table
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(table) = table else {
            log::error!("hand-over refused: the listeners are not set up yet; still serving");
            self.phase.serving();
            return false;
        };
        let sock = self.upgrade_sock.clone();
        let sent = tokio::task::spawn_blocking(move || table.lock().send_to_sock(sock.as_str()))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = sent {
            log::error!(
                "hand-over failed: no new process took the listeners at {} ({e}); still serving",
                self.upgrade_sock
            );
            self.phase.serving();
            return false;
        }
        let deadline = Instant::now() + SERVE_WAIT;
        loop {
            if let Some(new) = self.successor() {
                log::info!(
                    "pid {new} serves now: closing every listener, finishing requests in flight"
                );
                return true;
            }
            if Instant::now() >= deadline {
                log::error!(
                    "the new process took the listeners but did not serve within {}s; still serving too",
                    SERVE_WAIT.as_secs()
                );
                self.phase.serving();
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The pid of the process that has taken over, once it serves: it has written the pid
    /// file and then its status file. (The pid file alone is not enough: a daemonizing `-u -d`
    /// writes it when it forks, long before it serves.)
    fn successor(&self) -> Option<i32> {
        let pid = self.files.running_pid().ok()?;
        let serves = self.files.read_status().is_some_and(|s| s.pid == pid);
        (pid as u32 != std::process::id() && serves).then_some(pid)
    }
}
