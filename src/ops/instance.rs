//! The files through which `lb reload`, `lb upgrade` and `lb stop` find and talk to a running
//! instance: the pid file (pingora's `pid_file`), a status file beside it (`<pid_file>.status`)
//! that says what the instance listens on and how its last reload went, and the state file
//! (`<pid_file>.state`) that hands admin actions and ejections to the next process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::balancer::SavedState;

/// Why a running instance could not be found.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("no pid file at {0}: is lb running with this config?")]
    NoPidFile(PathBuf),
    #[error("pid file {path} does not hold a process id: {content:?}")]
    BadPidFile { path: PathBuf, content: String },
    #[error(
        "stale pid file {path}: process {pid} is not running (remove the file if lb is stopped)"
    )]
    Stale { path: PathBuf, pid: i32 },
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a running instance publishes about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub pid: i32,
    /// The configuration file it re-reads on reload.
    pub config: PathBuf,
    /// The addresses it listens on (an upgrade inherits these sockets).
    pub listen: Vec<SocketAddr>,
    /// How many reloads it has handled; a reload request waits for this to change.
    pub reloads: u64,
    /// Whether the last reload was applied.
    pub last_reload_ok: bool,
    /// What the last reload did, or why it was refused.
    pub last_reload: String,
}

/// The pid and status files of one configuration.
#[derive(Debug, Clone)]
pub struct InstanceFiles {
    pub pid_file: PathBuf,
    pub status_file: PathBuf,
    pub state_file: PathBuf,
}

impl InstanceFiles {
    pub fn new(pid_file: &str) -> Self {
        let pid_file = PathBuf::from(pid_file);
        let beside = |suffix: &str| {
            let mut path = pid_file.clone().into_os_string();
            path.push(suffix);
            PathBuf::from(path)
        };
        InstanceFiles {
            status_file: beside(".status"),
            state_file: beside(".state"),
            pid_file,
        }
    }

    /// The runtime state saved by this or a previous process, if there is a file.
    pub(crate) fn read_state(&self) -> Result<Option<SavedState>, String> {
        let text = match std::fs::read_to_string(&self.state_file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", self.state_file.display())),
        };
        let state: SavedState = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a state file: {e}", self.state_file.display()))?;
        if state.version != crate::balancer::saved::SAVED_STATE_VERSION {
            return Err(format!(
                "{} has version {}, this lb reads version {}",
                self.state_file.display(),
                state.version,
                crate::balancer::saved::SAVED_STATE_VERSION
            ));
        }
        Ok(Some(state))
    }

    /// Saves the runtime state (atomically; concurrent writers are serialized).
    pub(crate) fn write_state(&self, state: &SavedState) -> std::io::Result<()> {
        static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = WRITING.lock().unwrap_or_else(|p| p.into_inner());
        let mut text = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
        text.push(b'\n');
        write_atomically(&self.state_file, &text)
    }

    /// Forgets the saved state (a start without `--keep-state`).
    pub fn remove_state(&self) {
        let _ = std::fs::remove_file(&self.state_file);
    }

    /// The pid of the running instance; a pid file whose process is gone is reported as stale.
    pub fn running_pid(&self) -> Result<i32, InstanceError> {
        let path = &self.pid_file;
        let content = match std::fs::read_to_string(path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(InstanceError::NoPidFile(path.clone()))
            }
            Err(source) => {
                return Err(InstanceError::Io {
                    path: path.clone(),
                    source,
                })
            }
        };
        let pid: i32 = match content.trim().parse() {
            Ok(pid) if pid > 0 => pid,
            _ => {
                return Err(InstanceError::BadPidFile {
                    path: path.clone(),
                    content,
                })
            }
        };
        if process_alive(pid) {
            Ok(pid)
        } else {
            Err(InstanceError::Stale {
                path: path.clone(),
                pid,
            })
        }
    }

    /// Writes this process's pid (atomically, so a reader never sees half a file).
    pub fn write_pid(&self) -> std::io::Result<()> {
        write_atomically(
            &self.pid_file,
            format!("{}\n", std::process::id()).as_bytes(),
        )
    }

    /// Removes the pid and status files if they are still this process's.
    pub fn remove_if_ours(&self) {
        let ours = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|c| c.trim().parse::<u32>().ok())
            == Some(std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.pid_file);
            if self
                .read_status()
                .is_some_and(|s| s.pid as u32 == std::process::id())
            {
                let _ = std::fs::remove_file(&self.status_file);
            }
        }
    }

    pub fn read_status(&self) -> Option<Status> {
        let text = std::fs::read_to_string(&self.status_file).ok()?;
        serde_yaml_ng::from_str(&text).ok()
    }

    pub fn write_status(&self, status: &Status) -> std::io::Result<()> {
        let text = serde_yaml_ng::to_string(status).map_err(std::io::Error::other)?;
        write_atomically(&self.status_file, text.as_bytes())
    }
}

/// Whether a process with this pid exists (an exited one awaiting its parent does not count).
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence and permission.
    let ret = unsafe { libc::kill(pid, 0) };
    let exists = ret == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    // /proc/PID/stat: "pid (comm) state ..."; comm may hold spaces, so read after the last ')'.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "Z"))
        })
        .unwrap_or(false)
}

/// Sends `signal` to `pid`.
pub fn signal(pid: i32, signal: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes a new file beside `path` and renames it over `path`. The temporary file is created
/// exclusively (never through a symlink someone left there) and the rename replaces a symlink
/// at `path` rather than following it.
fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut file| file.write_all(content))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
