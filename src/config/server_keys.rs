//! pingora's own server keys (the top level of the file): checked against the fields pingora's
//! [`ServerConf`] really has (pingora ignores unknown keys, so a typo would silently do nothing),
//! with a "did you mean" hint, and lb's defaults where pingora's do not suit a load balancer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use pingora::server::configuration::ServerConf;

use super::ConfigError;

/// Builds pingora's [`ServerConf`] from the top-level keys, rejecting any key pingora does not know.
///
/// pingora itself ignores unknown keys; a typo such as `treads: 4` would then silently do
/// nothing, so we check every key against the fields pingora actually has.
pub(crate) fn server_conf_from(
    keys: BTreeMap<String, serde_yaml_ng::Value>,
) -> Result<ServerConf, ConfigError> {
    let known = pingora_server_keys();
    for key in keys.keys() {
        if !known.contains(key) {
            let hint = match closest(key, known.iter().map(String::as_str).chain(["lb"])) {
                Some(near) => format!("not a pingora server key nor `lb`; did you mean `{near}`?"),
                None => {
                    "not a pingora server key nor `lb` (lb's own keys go under `lb:`)".to_string()
                }
            };
            return Err(ConfigError::UnknownKey {
                key: key.clone(),
                hint,
            });
        }
    }
    let present: BTreeSet<String> = keys.keys().cloned().collect();
    // Deserialize key by key first so that a wrong value names its key.
    for (key, value) in &keys {
        let mut single = serde_yaml_ng::Mapping::new();
        single.insert(serde_yaml_ng::Value::String(key.clone()), value.clone());
        serde_yaml_ng::from_value::<ServerConf>(serde_yaml_ng::Value::Mapping(single))
            .map_err(|e| ConfigError::invalid(key.clone(), e.to_string()))?;
    }
    let mapping: serde_yaml_ng::Mapping = keys
        .into_iter()
        .map(|(k, v)| (serde_yaml_ng::Value::String(k), v))
        .collect();
    let mut conf: ServerConf = serde_yaml_ng::from_value(serde_yaml_ng::Value::Mapping(mapping))
        .map_err(|e| ConfigError::Syntax(e.to_string()))?;
    apply_lb_server_defaults(&mut conf, &present);
    check_start_values(&conf)?;
    conf.validate()
        .map_err(|e| ConfigError::Syntax(format!("pingora server settings: {e}")))
}

/// lb's defaults for pingora server keys where pingora's own do not suit a load balancer
/// (pingora waits 300 s on a graceful stop and keeps its files in the shared `/tmp`).
pub mod server_defaults {
    use std::path::PathBuf;

    /// The pid file's name in [`runtime_dir`].
    pub const PID_FILE_NAME: &str = "lb.pid";
    /// The upgrade socket's name in [`runtime_dir`].
    pub const UPGRADE_SOCK_NAME: &str = "upgrade.sock";

    /// Where the pid file and the upgrade socket go by default, a directory only this user
    /// can write to (lb creates it at start: 0750 for root, 0700 otherwise):
    /// `/run/lb` for root; `$XDG_RUNTIME_DIR/lb` for another user; without
    /// `XDG_RUNTIME_DIR`, `$XDG_STATE_HOME/lb` or `~/.local/state/lb`. Never a predictable path
    /// in a shared directory such as `/tmp`.
    pub fn runtime_dir() -> PathBuf {
        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return PathBuf::from("/run/lb");
        }
        let absolute_env = |name: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        if let Some(dir) = absolute_env("XDG_RUNTIME_DIR") {
            return dir.join("lb");
        }
        if let Some(dir) = absolute_env("XDG_STATE_HOME") {
            return dir.join("lb");
        }
        if let Some(home) = absolute_env("HOME") {
            return home.join(".local/state/lb");
        }
        // No home either: a directory named after the user id under /run/user, which only
        // the system creates.
        // SAFETY: geteuid(2) cannot fail.
        PathBuf::from(format!("/run/user/{}/lb", unsafe { libc::geteuid() }))
    }

    /// The default `pid_file`.
    pub fn pid_file() -> String {
        runtime_dir().join(PID_FILE_NAME).display().to_string()
    }

    /// The default `upgrade_sock`.
    pub fn upgrade_sock() -> String {
        runtime_dir().join(UPGRADE_SOCK_NAME).display().to_string()
    }

    /// How long a graceful stop or upgrade waits for requests in flight.
    pub const GRACE_PERIOD_SECONDS: u64 = 30;
    /// How long the final step of a graceful shutdown may take.
    pub const GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS: u64 = 5;
    /// How long (in 1 s tries) a new process waits for the old one to hand over its sockets.
    pub const UPGRADE_SOCK_RETRIES: usize = 30;
}

/// pingora's server settings with lb's defaults, for a server started without a file.
pub fn default_server_conf() -> ServerConf {
    let mut conf = ServerConf::default();
    apply_lb_server_defaults(&mut conf, &BTreeSet::new());
    conf
}

/// Fills lb's defaults into the pingora keys that the file does not set.
fn apply_lb_server_defaults(conf: &mut ServerConf, present: &BTreeSet<String>) {
    use server_defaults::*;
    if !present.contains("pid_file") {
        conf.pid_file = pid_file();
    }
    if !present.contains("upgrade_sock") {
        conf.upgrade_sock = upgrade_sock();
    }
    conf.grace_period_seconds
        .get_or_insert(GRACE_PERIOD_SECONDS);
    conf.graceful_shutdown_timeout_seconds
        .get_or_insert(GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS);
    conf.upgrade_sock_connect_accept_max_retries
        .get_or_insert(UPGRADE_SOCK_RETRIES);
}

/// Most threads per service: more would exhaust the process before serving anything.
const MAX_THREADS: usize = 1024;
/// The longest grace period and shutdown timeout accepted (a day).
const MAX_SHUTDOWN_SECONDS: u64 = 86_400;
/// The longest path a Unix socket address holds (`sun_path`, less the final NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Values pingora accepts in its file but that would panic or hang at start (pingora's own
/// `validate` checks only a few).
fn check_start_values(conf: &ServerConf) -> Result<(), ConfigError> {
    let range = |key: &str, value: usize, min: usize, max: usize| {
        if (min..=max).contains(&value) {
            Ok(())
        } else {
            Err(ConfigError::invalid(
                key,
                format!("{value} is out of range: {min} to {max}"),
            ))
        }
    };
    range("threads", conf.threads, 1, MAX_THREADS)?;
    range("listener_tasks_per_fd", conf.listener_tasks_per_fd, 1, 64)?;
    range("max_retries", conf.max_retries, 1, 100)?;
    for (key, value) in [
        (
            "upstream_connect_offload_threadpools",
            conf.upstream_connect_offload_threadpools,
        ),
        (
            "upstream_connect_offload_thread_per_pool",
            conf.upstream_connect_offload_thread_per_pool,
        ),
        (
            "downstream_tls_offload_threadpools",
            conf.downstream_tls_offload_threadpools,
        ),
        (
            "downstream_tls_offload_thread_per_pool",
            conf.downstream_tls_offload_thread_per_pool,
        ),
        ("max_blocking_threads", conf.max_blocking_threads),
    ] {
        if let Some(value) = value {
            range(key, value, 1, MAX_THREADS)?;
        }
    }
    for (key, value) in [
        ("grace_period_seconds", conf.grace_period_seconds),
        (
            "graceful_shutdown_timeout_seconds",
            conf.graceful_shutdown_timeout_seconds,
        ),
    ] {
        if value.is_some_and(|v| v > MAX_SHUTDOWN_SECONDS) {
            return Err(ConfigError::invalid(
                key,
                format!("at most {MAX_SHUTDOWN_SECONDS} (a day)"),
            ));
        }
    }
    if conf.upgrade_sock.is_empty() || conf.upgrade_sock.len() > MAX_SOCKET_PATH {
        return Err(ConfigError::invalid(
            "upgrade_sock",
            format!("a Unix socket path of 1 to {MAX_SOCKET_PATH} bytes"),
        ));
    }
    if conf.pid_file.is_empty() {
        return Err(ConfigError::invalid("pid_file", "must not be empty"));
    }
    if let Some(ca) = &conf.ca_file {
        if !Path::new(ca).is_file() {
            return Err(ConfigError::invalid(
                "ca_file",
                format!("`{ca}` is not a readable file"),
            ));
        }
    }
    Ok(())
}

/// The `pid_file` a configuration file names (or the default), read leniently so that an
/// instance can be stopped even when its file has since been broken.
pub fn pid_file_of(path: &Path) -> Result<String, ConfigError> {
    let text = super::read_file(path)?;
    let value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    Ok(value
        .get("pid_file")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(server_defaults::pid_file))
}

/// The candidate nearest to `word` by edit distance, if it is near enough to be a typo.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The top-level keys pingora's [`ServerConf`] understands, read from its own serialization so
/// that the list follows the pingora version we are built with.
fn pingora_server_keys() -> BTreeSet<String> {
    match serde_yaml_ng::to_value(ServerConf::default()) {
        Ok(serde_yaml_ng::Value::Mapping(map)) => map
            .keys()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        _ => BTreeSet::new(),
    }
}
