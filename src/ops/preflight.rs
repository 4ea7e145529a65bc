//! What start-up needs from the machine, checked before anything is started, by `lb -t` and
//! by every start: listen addresses that can be bound, and the directories and files lb writes
//! (`pid_file`, `upgrade_sock`, `error_log`, `lb.access_log.path`); `lb -t` also looks up the
//! `dns:`/`srv:` upstream names (a start does that when it builds the server). Each failure names its key,
//! so that nothing fails later, half-started, in a service thread or after daemonizing.
//!
//! lb's default runtime directory (see [`server_defaults::runtime_dir`]) may be missing: start
//! creates it, 0750 for root and 0700 otherwise.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::instance::InstanceFiles;
use super::server::{check_listen, StartError};
use crate::config::{server_defaults, Config};

/// Why start-up would fail.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct PreflightError {
    pub key: String,
    pub reason: String,
}

fn fail(key: &str, reason: impl Into<String>) -> PreflightError {
    PreflightError {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// How the process is about to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `lb -t`: check only; addresses the running instance of this config holds count as
    /// bindable (an upgrade takes them over).
    Test,
    /// A fresh start: every address must be free.
    Start,
    /// `-u`: the listeners come from the old process.
    Upgrade,
}

/// Runs every check; the first failure is returned.
pub fn check(config: &Config, mode: Mode) -> Result<(), PreflightError> {
    let server = &config.server;
    check_instance_path("pid_file", Path::new(&server.pid_file))?;
    check_instance_path("upgrade_sock", Path::new(&server.upgrade_sock))?;
    if let Some(error_log) = server.error_log.as_deref().filter(|p| !p.is_empty()) {
        check_log_path("error_log", Path::new(error_log))?;
    }
    if let Some(path) = config
        .lb
        .access_log
        .as_ref()
        .and_then(|a| a.path.as_deref())
        .filter(|p| *p != Path::new("stdout"))
    {
        check_log_path("lb.access_log.path", path)?;
    }
    if let Some(token_file) = config.lb.admin.as_ref().and_then(|a| a.token_file.as_ref()) {
        // Read when the file was loaded; checked again in case it changed since.
        std::fs::read(token_file).map_err(|e| {
            fail(
                "lb.admin.token_file",
                format!("cannot read {}: {e}", token_file.display()),
            )
        })?;
    }
    match mode {
        Mode::Upgrade => Ok(()),
        Mode::Start => check_bindable(config, &[]),
        Mode::Test => {
            let files = InstanceFiles::new(&server.pid_file);
            let held: Vec<SocketAddr> = match files.running_pid() {
                Ok(pid) => files
                    .read_status()
                    .filter(|s| s.pid == pid)
                    .map(|s| s.listen)
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            check_bindable(config, &held)?;
            // `dns:`/`srv:` names must resolve, as at start (unless allowed empty).
            let discovery = crate::discovery::Discovery::new(std::sync::Arc::new(
                crate::observe::metrics::Metrics::new(),
            ));
            super::discovery::resolve_at_start(&discovery, &config.lb).map_err(|e| {
                PreflightError {
                    reason: format!("`{}` does not resolve: {} (set discovery.allow_empty: true to start without its addresses)", e.target, e.reason),
                    key: e.key,
                }
            })
        }
    }
}

/// Every listener, but those in `held`, can be bound now.
fn check_bindable(config: &Config, held: &[SocketAddr]) -> Result<(), PreflightError> {
    let admin = config.lb.admin.as_ref().map(|a| a.listen);
    for (i, addr) in config.lb.listen.iter().enumerate() {
        if !held.contains(addr) {
            check_listen(&[*addr]).map_err(|e| listen_error(&format!("lb.listen[{i}]"), e))?;
        }
    }
    let tls_listen = config.lb.tls.iter().flat_map(|t| t.listen.iter());
    for (i, addr) in tls_listen.enumerate() {
        if !held.contains(addr) {
            check_listen(&[*addr]).map_err(|e| listen_error(&format!("lb.tls.listen[{i}]"), e))?;
        }
    }
    if let Some(addr) = admin.filter(|a| !held.contains(a)) {
        check_listen(&[addr]).map_err(|e| listen_error("lb.admin.listen", e))?;
    }
    Ok(())
}

fn listen_error(key: &str, e: StartError) -> PreflightError {
    fail(key, e.to_string())
}

/// `pid_file` or `upgrade_sock`: its directory exists (or is lb's default one, created at
/// start) and is writable; the path itself is not a symlink nor another user's.
fn check_instance_path(key: &str, path: &Path) -> Result<(), PreflightError> {
    if !path.is_absolute() {
        return Err(fail(
            key,
            format!("{} must be an absolute path", path.display()),
        ));
    }
    let dir = parent(path);
    if dir == server_defaults::runtime_dir() && !dir.exists() {
        // Created at start (with its missing parents): the nearest existing one must let us.
        let existing = dir
            .ancestors()
            .find(|a| a.exists())
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        return writable_dir(key, &existing).map_err(|e| {
            fail(
                key,
                format!(
                    "cannot create lb's runtime directory {}: {}",
                    dir.display(),
                    e.reason
                ),
            )
        });
    }
    writable_dir(key, &dir)?;
    not_foreign(key, path)
}

/// A log file: its directory exists and is writable, and the file, if there, is a writable
/// regular file.
fn check_log_path(key: &str, path: &Path) -> Result<(), PreflightError> {
    writable_dir(key, &parent(path))?;
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(fail(key, format!("{} is a directory", path.display()))),
        Ok(_) if !access(path, libc::W_OK) => Err(fail(
            key,
            format!("{} is not writable by this user", path.display()),
        )),
        _ => Ok(()),
    }
}

/// The directory holding `path` (`.` for a bare name).
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn writable_dir(key: &str, dir: &Path) -> Result<(), PreflightError> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(fail(
            key,
            format!("directory {} does not exist", dir.display()),
        )),
        Err(e) => Err(fail(key, format!("cannot access {}: {e}", dir.display()))),
        Ok(meta) if !meta.is_dir() => {
            Err(fail(key, format!("{} is not a directory", dir.display())))
        }
        Ok(_) if !access(dir, libc::W_OK | libc::X_OK) => Err(fail(
            key,
            format!("directory {} is not writable by this user", dir.display()),
        )),
        Ok(_) => Ok(()),
    }
}

/// Refuses a path that is a symlink (lb's writes would go wherever it points) or that belongs
/// to another user (someone else prepared it).
fn not_foreign(key: &str, path: &Path) -> Result<(), PreflightError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if meta.file_type().is_symlink() {
        return Err(fail(
            key,
            format!(
                "{} is a symlink; lb writes only to a file of its own there (remove it)",
                path.display()
            ),
        ));
    }
    let me = euid();
    if meta.uid() != me {
        return Err(fail(
            key,
            format!(
                "{} belongs to uid {}, not to this user (uid {me}); remove it or choose another path",
                path.display(),
                meta.uid()
            ),
        ));
    }
    Ok(())
}

fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() }
}

fn access(path: &Path, mode: libc::c_int) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::access(c.as_ptr(), mode) == 0 }
}

/// Creates lb's default runtime directory if the config uses it and it is missing, and checks
/// that it is a directory of this user's that no one else can write to.
pub fn prepare_runtime_dir(config: &Config) -> Result<(), PreflightError> {
    let dir = server_defaults::runtime_dir();
    let uses = |path: &str| parent(Path::new(path)) == dir;
    let key = if uses(&config.server.pid_file) {
        "pid_file"
    } else if uses(&config.server.upgrade_sock) {
        "upgrade_sock"
    } else {
        return Ok(());
    };
    let mode = if euid() == 0 { 0o750 } else { 0o700 };
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(&dir)
    {
        return Err(fail(
            key,
            format!(
                "cannot create lb's runtime directory {}: {e}",
                dir.display()
            ),
        ));
    }
    let meta = std::fs::symlink_metadata(&dir)
        .map_err(|e| fail(key, format!("cannot access {}: {e}", dir.display())))?;
    if !meta.is_dir() || meta.uid() != euid() || meta.mode() & 0o022 != 0 {
        return Err(fail(
            key,
            format!(
                "lb's runtime directory {} must be a directory of this user's that no one else can write to",
                dir.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_missing_directories_are_named() {
        let e = check_instance_path("pid_file", Path::new("lb.pid")).unwrap_err();
        assert_eq!(e.key, "pid_file");
        assert!(e.reason.contains("absolute"), "{e}");
        let e =
            check_instance_path("upgrade_sock", Path::new("/nonexistent-lb/u.sock")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "upgrade_sock: directory /nonexistent-lb does not exist"
        );
        let e = check_log_path("error_log", Path::new("/nonexistent-lb/error.log")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "error_log: directory /nonexistent-lb does not exist"
        );
    }
}
