//! A typed builder for lb's configuration file, so that tests say what they configure instead of
//! assembling indented YAML:
//!
//! ```ignore
//! LbConf::new()
//!     .upstreams([&a, &b])
//!     .upstream(Upstream::new(c.addr).backup())
//!     .selection("least_conn")
//!     .health(fast_checks())
//!     .passive_health(fields().set("consecutive_failures", 5).set("eject_for", "30s"))
//! ```
//!
//! Tests about the YAML itself (config errors) write their documents by hand.

use std::fmt::{self, Display};
use std::net::SocketAddr;
use std::path::Path;

use super::backends::Backend;
use super::ports::unique_addr;

/// A YAML flow mapping, `{ key: value, ... }`; values are written as given (YAML scalars,
/// lists or mappings).
#[derive(Clone, Debug, Default)]
pub struct Fields(Vec<(String, String)>);

/// An empty [`Fields`].
pub fn fields() -> Fields {
    Fields::default()
}

impl Fields {
    /// Sets `key` (replacing an earlier value).
    pub fn set(mut self, key: &str, value: impl Display) -> Fields {
        let value = value.to_string();
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key.to_owned(), value)),
        }
        self
    }
}

impl Display for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        write!(f, "{{ {} }}", pairs.join(", "))
    }
}

/// A quoted YAML string (addresses, paths).
pub fn quoted(value: impl Display) -> String {
    format!("{:?}", value.to_string())
}

/// Health checks fast enough for tests: every 100 ms, 2 results to change state.
pub fn fast_checks() -> Fields {
    fields()
        .set("interval", "100ms")
        .set("timeout", "200ms")
        .set("healthy_after", 2)
        .set("unhealthy_after", 2)
}

/// One entry of `lb.upstreams`: a bare address, or a mapping when it has settings.
#[derive(Clone, Debug)]
pub struct Upstream {
    addr: String,
    settings: Fields,
}

impl Upstream {
    pub fn new(addr: impl Display) -> Upstream {
        Upstream {
            addr: addr.to_string(),
            settings: Fields::default(),
        }
    }

    /// `{ dns: "name:port" }`: every address of the name.
    pub fn dns(name: impl Display) -> Upstream {
        Upstream {
            addr: String::new(),
            settings: fields().set("dns", quoted(name)),
        }
    }

    /// `{ srv: "_service._proto.name" }`: the SRV record's targets.
    pub fn srv(name: impl Display) -> Upstream {
        Upstream {
            addr: String::new(),
            settings: fields().set("srv", quoted(name)),
        }
    }

    pub fn weight(mut self, weight: u32) -> Upstream {
        self.settings = self.settings.set("weight", weight);
        self
    }

    pub fn max_conns(mut self, max: u32) -> Upstream {
        self.settings = self.settings.set("max_conns", max);
        self
    }

    pub fn backup(mut self) -> Upstream {
        self.settings = self.settings.set("backup", true);
        self
    }
}

impl Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.settings.0.is_empty() {
            return write!(f, "{}", self.addr);
        }
        if self.addr.is_empty() {
            return write!(f, "{}", self.settings);
        }
        let mut all = Fields::default().set("addr", quoted(&self.addr));
        all.0.extend(self.settings.0.iter().cloned());
        write!(f, "{all}")
    }
}

impl From<SocketAddr> for Upstream {
    fn from(addr: SocketAddr) -> Upstream {
        Upstream::new(addr)
    }
}

impl From<&Backend> for Upstream {
    fn from(backend: &Backend) -> Upstream {
        Upstream::new(backend.addr)
    }
}

impl From<&str> for Upstream {
    fn from(addr: &str) -> Upstream {
        Upstream::new(addr)
    }
}

/// A whole configuration file: pingora's keys (2 threads; pid file and upgrade socket in the
/// directory given to [`LbConf::to_yaml`]) and the `lb:` section.
#[derive(Clone, Debug)]
pub struct LbConf {
    listen: Vec<SocketAddr>,
    upstreams: Vec<Upstream>,
    admin: Option<SocketAddr>,
    /// Whether `pid_file` and `upgrade_sock` are left to lb's defaults.
    default_instance_files: bool,
    /// The other `lb:` keys, in the order first set.
    keys: Fields,
}

impl Default for LbConf {
    fn default() -> Self {
        Self::new()
    }
}

impl LbConf {
    /// Listening on a fresh loopback port, no upstreams yet.
    pub fn new() -> LbConf {
        LbConf {
            listen: vec![unique_addr()],
            upstreams: Vec::new(),
            admin: None,
            default_instance_files: false,
            keys: Fields::default(),
        }
    }

    /// The first listening address: where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.listen[0]
    }

    /// The admin listener, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Listens on `addr` only.
    pub fn listen(mut self, addr: SocketAddr) -> LbConf {
        self.listen = vec![addr];
        self
    }

    /// Listens on `addr` as well.
    pub fn also_listen(mut self, addr: SocketAddr) -> LbConf {
        self.listen.push(addr);
        self
    }

    /// Adds one upstream.
    pub fn upstream(mut self, upstream: impl Into<Upstream>) -> LbConf {
        self.upstreams.push(upstream.into());
        self
    }

    /// Replaces the upstreams.
    pub fn upstreams<U: Into<Upstream>>(mut self, list: impl IntoIterator<Item = U>) -> LbConf {
        self.upstreams = list.into_iter().map(Into::into).collect();
        self
    }

    /// Sets any `lb:` key; the typed setters below cover the common ones.
    pub fn key(mut self, key: &str, value: impl Display) -> LbConf {
        self.keys = self.keys.set(key, value);
        self
    }

    pub fn selection(self, selection: &str) -> LbConf {
        self.key("selection", selection)
    }

    pub fn hash_key(self, hash_key: &str) -> LbConf {
        self.key("hash_key", hash_key)
    }

    pub fn health(self, checks: Fields) -> LbConf {
        self.key("health_check", checks)
    }

    pub fn passive_health(self, settings: Fields) -> LbConf {
        self.key("passive_health", settings)
    }

    /// `0`, or a [`Fields`] mapping.
    pub fn retries(self, retries: impl Display) -> LbConf {
        self.key("retries", retries)
    }

    pub fn queue(self, size: usize, timeout: &str) -> LbConf {
        self.key("queue", fields().set("size", size).set("timeout", timeout))
    }

    pub fn timeouts(self, timeouts: Fields) -> LbConf {
        self.key("timeouts", timeouts)
    }

    pub fn slow_start(self, duration: &str) -> LbConf {
        self.key("slow_start", duration)
    }

    pub fn access_log(self, path: &Path, format: &str) -> LbConf {
        self.key(
            "access_log",
            fields()
                .set("path", quoted(path.display()))
                .set("format", format),
        )
    }

    /// An admin listener, with the token in `token_file` if given.
    pub fn admin(mut self, listen: SocketAddr, token_file: Option<&Path>) -> LbConf {
        self.admin = Some(listen);
        let mut admin = fields().set("listen", quoted(listen));
        if let Some(path) = token_file {
            admin = admin.set("token_file", quoted(path.display()));
        }
        self.key("admin", admin)
    }

    /// No `pid_file` and no `upgrade_sock`: lb's default locations, shared by every lb
    /// started this way on the machine (and [`super::lb_process::Lb::pid_file`] does not
    /// apply).
    pub fn default_instance_files(mut self) -> LbConf {
        self.default_instance_files = true;
        self
    }

    /// The file's text, with the pid file and upgrade socket in `dir` (unless
    /// [`LbConf::default_instance_files`]).
    pub fn to_yaml(&self, dir: &Path) -> String {
        let listen: Vec<String> = self.listen.iter().map(quoted).collect();
        let mut yaml = String::from("threads: 2\n");
        if !self.default_instance_files {
            yaml.push_str(&format!(
                "pid_file: {dir}/lb.pid\nupgrade_sock: {dir}/upgrade.sock\n",
                dir = dir.display()
            ));
        }
        yaml.push_str(&format!(
            "lb:\n  listen: [{}]\n  upstreams:\n",
            listen.join(", ")
        ));
        for upstream in &self.upstreams {
            yaml.push_str(&format!("    - {upstream}\n"));
        }
        for (key, value) in &self.keys.0 {
            yaml.push_str(&format!("  {key}: {value}\n"));
        }
        yaml
    }
}
