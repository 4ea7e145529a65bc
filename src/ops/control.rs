//! `lb reload`, `lb upgrade` and `lb stop`: commands that act on a running instance, found
//! through the pid file of the configuration. Each validates before it acts and reports what
//! happened with its exit status.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::instance::{self, InstanceError, InstanceFiles};
use super::lifecycle::{UpgradeStage, READY_FILE_ENV};
use crate::config::{self, Config, ConfigError};

/// Set by `lb upgrade` for the process it starts, which is already detached and must not
/// daemonize again (its pid must stay the one `lb upgrade` watches).
pub const NO_DAEMON_ENV: &str = "LB_NO_DAEMON";

/// Why a control command failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{path}: {source}")]
    Config { path: String, source: ConfigError },
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error("cannot signal process {pid}: {source}")]
    Signal { pid: i32, source: std::io::Error },
    #[error("reload refused by the running instance (pid {pid}): {message}")]
    ReloadRefused { pid: i32, message: String },
    #[error("the running instance (pid {pid}) did not answer the reload within {waited:?}")]
    NoAnswer { pid: i32, waited: Duration },
    #[error("cannot start the new process {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {reason}; the old instance keeps serving")]
    ListenClash { addr: SocketAddr, reason: String },
    #[error("the new process failed before taking over ({detail}); the old instance (pid {old}) keeps serving")]
    NewProcessFailed { old: i32, detail: String },
    #[error("the new process (pid {new}) exited while taking over ({detail}); the old instance was already handing over")]
    TakeoverFailed { new: u32, detail: String },
    #[error("process {pid} is still running after {waited:?}")]
    StillRunning { pid: i32, waited: Duration },
}

fn load(path: &Path) -> Result<Config, ControlError> {
    Config::load(path).map_err(|source| ControlError::Config {
        path: path.display().to_string(),
        source,
    })
}

fn send(pid: i32, sig: libc::c_int) -> Result<(), ControlError> {
    instance::signal(pid, sig).map_err(|source| ControlError::Signal { pid, source })
}

/// Validates the file, asks the running instance to re-read it, and waits for its answer.
pub fn reload(path: &Path) -> Result<String, ControlError> {
    let config = load(path)?;
    let files = InstanceFiles::new(&config.server.pid_file);
    let pid = files.running_pid()?;
    let before = files
        .read_status()
        .filter(|s| s.pid == pid)
        .map_or(0, |s| s.reloads);
    send(pid, libc::SIGHUP)?;
    // The instance checks new upstreams once before answering.
    let waited = longest_check_timeout(&config) + Duration::from_secs(10);
    let deadline = Instant::now() + waited;
    while Instant::now() < deadline {
        if let Some(status) = files
            .read_status()
            .filter(|s| s.pid == pid && s.reloads > before)
        {
            return if status.last_reload_ok {
                Ok(format!("reloaded (pid {pid}): {}", status.last_reload))
            } else {
                Err(ControlError::ReloadRefused {
                    pid,
                    message: status.last_reload,
                })
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(ControlError::NoAnswer { pid, waited })
}

/// Asks the running instance to stop gracefully and waits until it has exited.
pub fn stop(path: &Path) -> Result<String, ControlError> {
    let pid_file = config::pid_file_of(path).map_err(|source| ControlError::Config {
        path: path.display().to_string(),
        source,
    })?;
    // The grace period bounds the wait; read it from the file if it is valid.
    let grace = Config::load(path)
        .ok()
        .and_then(|c| c.server.grace_period_seconds)
        .unwrap_or(config::server_defaults::GRACE_PERIOD_SECONDS);
    let files = InstanceFiles::new(&pid_file);
    let pid = files.running_pid()?;
    send(pid, libc::SIGTERM)?;
    let waited =
        Duration::from_secs(grace + config::server_defaults::GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS + 5);
    if wait_until(waited, || !instance::process_alive(pid)) {
        Ok(format!("stopped (pid {pid})"))
    } else {
        Err(ControlError::StillRunning { pid, waited })
    }
}

/// Starts a new process (`binary`, by default this one) that takes over the listening sockets
/// of the running instance, then lets the old one finish its requests and exit.
pub fn upgrade(path: &Path, binary: Option<&Path>) -> Result<String, ControlError> {
    let config = load(path)?;
    let files = InstanceFiles::new(&config.server.pid_file);
    let old = files.running_pid()?;

    // Sockets the old instance does not hold must be free now: a clash found after the
    // hand-over would leave nobody serving them.
    let inherited: Vec<SocketAddr> = files
        .read_status()
        .filter(|s| s.pid == old)
        .map(|s| s.listen)
        .unwrap_or_default();
    for addr in config
        .lb
        .all_listeners()
        .iter()
        .filter(|a| !inherited.contains(a))
    {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Err(ControlError::ListenClash {
                addr: *addr,
                reason: e.to_string(),
            });
        }
    }

    let binary = match binary {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe().map_err(|source| ControlError::Spawn {
            binary: "lb".to_string(),
            source,
        })?,
    };
    let config_path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let ready_file = PathBuf::from(format!("{}.upgrade", files.pid_file.display()));
    let _ = std::fs::remove_file(&ready_file);

    let mut command = Command::new(&binary);
    command
        .arg("-u")
        .arg("-c")
        .arg(&config_path)
        .env(READY_FILE_ENV, &ready_file)
        .env(NO_DAEMON_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_destination_of(old, config.server.error_log.as_deref()));
    // SAFETY: setsid() is async-signal-safe; it detaches the new process from our session so
    // that it outlives this command and the terminal it runs in.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|source| ControlError::Spawn {
        binary: binary.display().to_string(),
        source,
    })?;
    let new = child.id();

    let checked_within = longest_check_timeout(&config) + Duration::from_secs(30);
    if let Err(detail) = wait_for_stage(
        &mut child,
        &ready_file,
        UpgradeStage::Checked,
        checked_within,
    ) {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&ready_file);
        return Err(ControlError::NewProcessFailed { old, detail });
    }
    send(old, libc::SIGQUIT)?;
    let result = wait_for_stage(
        &mut child,
        &ready_file,
        UpgradeStage::Serving,
        Duration::from_secs(30),
    );
    let _ = std::fs::remove_file(&ready_file);
    match result {
        Ok(()) => Ok(format!(
            "upgraded: pid {new} now serves; pid {old} finishes its requests and exits"
        )),
        Err(detail) => Err(ControlError::TakeoverFailed { new, detail }),
    }
}

/// Where the new process logs: wherever the old one does (its stderr, which is `error_log`
/// for a daemon), else `error_log`, else nowhere.
fn log_destination_of(old: i32, error_log: Option<&str>) -> Stdio {
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .append(true)
            .create(false)
            .open(p)
    };
    if let Ok(file) = open(Path::new(&format!("/proc/{old}/fd/2"))) {
        return Stdio::from(file);
    }
    if let Some(log) = error_log {
        if let Ok(file) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
        {
            return Stdio::from(file);
        }
    }
    Stdio::null()
}

fn wait_for_stage(
    child: &mut Child,
    ready_file: &Path,
    stage: UpgradeStage,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let reached = std::fs::read_to_string(ready_file).unwrap_or_default();
        if reached == stage.as_str()
            || (stage == UpgradeStage::Checked && reached == UpgradeStage::Serving.as_str())
        {
            return Ok(());
        }
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("it exited with {status}; see its log")),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "it did not report `{}` within {limit:?}",
                stage.as_str()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// The longest health-check timeout of any pool: how long a first check round may take.
fn longest_check_timeout(config: &Config) -> Duration {
    config
        .lb
        .pools
        .iter()
        .map(|p| p.health_check.timeout)
        .max()
        .unwrap_or_default()
}
