//! The configuration file: one YAML document holding pingora's own server keys at the top level
//! and ours under `lb:`.
//!
//! This module is the single source of defaults. Loading is strict: a misspelt key anywhere, a bad
//! address, a bad duration or a value out of range is a [`ConfigError`] that names the key and the
//! reason, so that `lb` refuses to start before it binds anything.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pingora::server::configuration::ServerConf;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Everything that can be wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The YAML is malformed or a value has the wrong shape; serde_yaml's message names the key.
    #[error("{0}")]
    Syntax(String),
    /// A key that neither pingora nor lb knows.
    #[error("unknown key `{key}`: {hint}")]
    UnknownKey { key: String, hint: String },
    /// A well-formed value that is not acceptable.
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// A whole, validated configuration file.
#[derive(Debug)]
pub struct Config {
    /// Pingora's own server settings (the top-level keys), with pingora's defaults.
    pub server: ServerConf,
    /// The balancer's settings (the `lb:` section).
    pub lb: LbConfig,
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Parses and validates a configuration document.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let document: Document =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let lb = document.lb.ok_or_else(|| {
            ConfigError::invalid(
                "lb",
                "missing: the `lb:` section with `listen` and `upstreams` is required",
            )
        })?;
        let server = server_conf_from(document.server)?;
        let lb = lb.validate(&server)?;
        Ok(Config { server, lb })
    }
}

/// The file as written: `lb` plus whatever else is at the top level (pingora's keys).
#[derive(Deserialize)]
struct Document {
    lb: Option<RawLb>,
    #[serde(flatten)]
    server: BTreeMap<String, serde_yaml::Value>,
}

/// Builds pingora's [`ServerConf`] from the top-level keys, rejecting any key pingora does not know.
///
/// pingora itself ignores unknown keys; a typo such as `treads: 4` would then silently do
/// nothing, so we check every key against the fields pingora actually has.
fn server_conf_from(keys: BTreeMap<String, serde_yaml::Value>) -> Result<ServerConf, ConfigError> {
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
        let mut single = serde_yaml::Mapping::new();
        single.insert(serde_yaml::Value::String(key.clone()), value.clone());
        serde_yaml::from_value::<ServerConf>(serde_yaml::Value::Mapping(single))
            .map_err(|e| ConfigError::invalid(key.clone(), e.to_string()))?;
    }
    let mapping: serde_yaml::Mapping = keys
        .into_iter()
        .map(|(k, v)| (serde_yaml::Value::String(k), v))
        .collect();
    let mut conf: ServerConf = serde_yaml::from_value(serde_yaml::Value::Mapping(mapping))
        .map_err(|e| ConfigError::Syntax(e.to_string()))?;
    apply_lb_server_defaults(&mut conf, &present);
    conf.validate()
        .map_err(|e| ConfigError::Syntax(format!("pingora server settings: {e}")))
}

/// lb's defaults for pingora server keys where pingora's own do not suit a load balancer
/// (pingora waits 300 s on a graceful stop and names its files after itself).
pub mod server_defaults {
    pub const PID_FILE: &str = "/tmp/lb.pid";
    pub const UPGRADE_SOCK: &str = "/tmp/lb_upgrade.sock";
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
        conf.pid_file = PID_FILE.to_string();
    }
    if !present.contains("upgrade_sock") {
        conf.upgrade_sock = UPGRADE_SOCK.to_string();
    }
    conf.grace_period_seconds
        .get_or_insert(GRACE_PERIOD_SECONDS);
    conf.graceful_shutdown_timeout_seconds
        .get_or_insert(GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS);
    conf.upgrade_sock_connect_accept_max_retries
        .get_or_insert(UPGRADE_SOCK_RETRIES);
}

/// The `pid_file` a configuration file names (or the default), read leniently so that an
/// instance can be stopped even when its file has since been broken.
pub fn pid_file_of(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let value: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    Ok(value
        .get("pid_file")
        .and_then(|v| v.as_str())
        .unwrap_or(server_defaults::PID_FILE)
        .to_string())
}

/// The candidate nearest to `word` by edit distance, if it is near enough to be a typo.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The top-level keys pingora's [`ServerConf`] understands, read from its own serialization so
/// that the list follows the pingora version we are built with.
fn pingora_server_keys() -> BTreeSet<String> {
    match serde_yaml::to_value(ServerConf::default()) {
        Ok(serde_yaml::Value::Mapping(map)) => map
            .keys()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// How the next upstream is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Each healthy upstream in turn, in proportion to its weight.
    #[default]
    RoundRobin,
    /// A random healthy upstream, in proportion to its weight.
    Random,
    /// The upstream with the fewest requests in flight relative to its weight.
    LeastConn,
    /// Power of two random choices on peak-EWMA latency times load (Finagle, Linkerd).
    P2cEwma,
    /// A Ketama ring on `hash_key`: a key sticks to its upstream while that one is usable.
    ConsistentHash,
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Selection::RoundRobin => "round_robin",
            Selection::Random => "random",
            Selection::LeastConn => "least_conn",
            Selection::P2cEwma => "p2c_ewma",
            Selection::ConsistentHash => "consistent_hash",
        })
    }
}

/// One backend server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The address as the operator wrote it (used in logs).
    pub name: String,
    /// The resolved socket address connected to.
    pub addr: SocketAddr,
    /// Relative share of requests, 1 to [`MAX_WEIGHT`].
    pub weight: usize,
    /// Requests in flight above which the upstream is skipped; `None` for no limit.
    pub max_conns: Option<usize>,
    /// Used only while no primary (non-backup) upstream is usable.
    pub backup: bool,
}

/// The largest weight (as in HAProxy): keeps the round-robin schedule small.
pub const MAX_WEIGHT: usize = 256;

/// What a request is hashed on for `consistent_hash`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashKey {
    /// The client's IP address.
    #[default]
    ClientIp,
    /// The path and query of the request.
    Uri,
    /// The value of a request header (requests without it hash on the client IP).
    Header(http::HeaderName),
    /// The value of a cookie (requests without it hash on the client IP).
    Cookie(String),
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Uri => f.write_str("uri"),
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

/// An outcome of one attempt on an upstream that can count as a failure (for passive health)
/// or trigger a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The TCP connection could not be made (refused, unreachable, connect timeout).
    ConnectFailure,
    /// The upstream did not answer in time once connected.
    Timeout,
    /// The connection broke before a response header arrived.
    Reset,
    /// The upstream answered with a status in this range.
    Status(StatusRange),
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::ConnectFailure => f.write_str("connect_failure"),
            FailureKind::Timeout => f.write_str("timeout"),
            FailureKind::Reset => f.write_str("reset"),
            FailureKind::Status(r) if r.low == r.high => write!(f, "status_{}", r.low),
            FailureKind::Status(r) => write!(f, "status_{}xx", r.low / 100),
        }
    }
}

/// A set of [`FailureKind`]s, as written in `on: [...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureSet(pub Vec<FailureKind>);

impl FailureSet {
    pub fn connect_failure(&self) -> bool {
        self.0.contains(&FailureKind::ConnectFailure)
    }
    pub fn timeout(&self) -> bool {
        self.0.contains(&FailureKind::Timeout)
    }
    pub fn reset(&self) -> bool {
        self.0.contains(&FailureKind::Reset)
    }
    pub fn status(&self, status: u16) -> bool {
        self.0
            .iter()
            .any(|k| matches!(k, FailureKind::Status(r) if r.contains(status)))
    }
}

impl fmt::Display for FailureSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "[{}]", names.join(", "))
    }
}

/// Retrying a failed attempt on another upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many other upstreams one request may be moved to.
    pub attempts: usize,
    /// Which failures are retried (a request is only ever retried when repeating it is safe).
    pub on: FailureSet,
    /// Retries never exceed this share of the requests of the last 10 seconds...
    pub budget_percent: u32,
    /// ...except that this many retries per second are always allowed, so that a quiet
    /// balancer still retries.
    pub budget_min_per_second: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            on: FailureSet(vec![
                FailureKind::ConnectFailure,
                FailureKind::Reset,
                FailureKind::Timeout,
                FailureKind::Status(StatusRange::single(502)),
                FailureKind::Status(StatusRange::single(503)),
            ]),
            budget_percent: 20,
            budget_min_per_second: 3,
        }
    }
}

/// Outlier ejection from live traffic, between active checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Consecutive failed attempts that eject an upstream; 0 turns passive health off.
    pub consecutive_failures: u32,
    /// Which outcomes count as failures.
    pub on: FailureSet,
    /// How long the first ejection lasts; each repeated one doubles it, up to `max_eject_for`.
    pub eject_for: Duration,
    pub max_eject_for: Duration,
    /// Never eject more than this share of the pool, so a pool-wide problem cannot empty it.
    pub max_ejected_percent: u32,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            consecutive_failures: 5,
            on: FailureSet(vec![
                FailureKind::ConnectFailure,
                FailureKind::Timeout,
                FailureKind::Reset,
                FailureKind::Status(StatusRange {
                    low: 500,
                    high: 599,
                }),
            ]),
            eject_for: Duration::from_secs(30),
            max_eject_for: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// The wait for a free upstream when every usable one is at its `max_conns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Requests that may wait at once; beyond it they get a 503 at once.
    pub size: usize,
    /// How long a request may wait before it gets a 503.
    pub timeout: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            size: 1000,
            timeout: Duration::from_secs(2),
        }
    }
}

/// Timeouts towards upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a TCP connection to an upstream.
    pub connect: Duration,
    /// Waiting for each read from an upstream (response header or body); exceeded → 504.
    pub read: Duration,
    /// Waiting for each write to an upstream.
    pub write: Duration,
    /// How long an idle keep-alive connection, to a client or to an upstream, is kept open.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_secs(60),
            write: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// What kind of active health check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CheckType {
    /// A TCP connect succeeds.
    #[default]
    Tcp,
    /// A `GET path` answers with an expected status.
    Http,
    /// No active checks: every upstream is always considered up.
    None,
}

/// An inclusive range of acceptable HTTP status codes for the `http` check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub low: u16,
    pub high: u16,
}

impl StatusRange {
    pub const fn single(code: u16) -> Self {
        StatusRange {
            low: code,
            high: code,
        }
    }

    pub fn contains(&self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

/// Active health checking of upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub kind: CheckType,
    /// Time between the starts of two check rounds.
    pub interval: Duration,
    /// How long one check may take before it counts as failed.
    pub timeout: Duration,
    /// Consecutive passes before a down upstream rejoins the rotation.
    pub healthy_after: usize,
    /// Consecutive failures before an up upstream leaves the rotation.
    pub unhealthy_after: usize,
    /// `http` only: the path requested.
    pub path: String,
    /// `http` only: the Host header sent.
    pub host: String,
    /// `http` only: the statuses that count as healthy.
    pub expect_status: Vec<StatusRange>,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: CheckType::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_after: 2,
            unhealthy_after: 3,
            path: "/".to_string(),
            host: "localhost".to_string(),
            expect_status: vec![StatusRange {
                low: 200,
                high: 200,
            }],
        }
    }
}

/// The admin listener: metrics, the upstream API and the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The bearer token read from `token_file`; when set, every API request must carry it.
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
}

/// How access log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// The Apache/nginx combined format plus lb's fields.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

/// The access log: a line per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSettings {
    /// A file path, or `None` for standard output.
    pub path: Option<PathBuf>,
    pub format: AccessLogFormat,
}

/// The validated `lb:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbConfig {
    pub listen: Vec<SocketAddr>,
    pub upstreams: Vec<Upstream>,
    pub selection: Selection,
    /// `consistent_hash` only: what is hashed.
    pub hash_key: HashKey,
    pub retries: RetryPolicy,
    pub timeouts: Timeouts,
    pub health_check: HealthCheckConfig,
    pub passive_health: PassiveHealth,
    /// How long a newly healthy upstream takes to ramp up to its full weight; zero for at once.
    pub slow_start: Duration,
    pub queue: QueueConfig,
    /// Off when `None`.
    pub admin: Option<AdminConfig>,
    /// Off when `None`.
    pub access_log: Option<AccessLogSettings>,
}

impl LbConfig {
    /// Every address the process listens on: the proxy's and the admin listener's.
    pub fn all_listeners(&self) -> Vec<SocketAddr> {
        let mut all = self.listen.clone();
        all.extend(self.admin.as_ref().map(|a| a.listen));
        all
    }

    /// A configuration with every default, for `listen` and `upstreams`.
    pub fn with_defaults(listen: Vec<SocketAddr>, upstreams: Vec<Upstream>) -> Self {
        LbConfig {
            listen,
            upstreams,
            selection: Selection::default(),
            hash_key: HashKey::default(),
            retries: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            health_check: HealthCheckConfig::default(),
            passive_health: PassiveHealth::default(),
            slow_start: Duration::ZERO,
            queue: QueueConfig::default(),
            admin: None,
            access_log: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The raw, as-written shape. Every struct denies unknown keys; optional keys fall back to the
// defaults above during validation.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLb {
    listen: Option<Vec<String>>,
    upstreams: Option<Vec<RawUpstream>>,
    #[serde(default)]
    selection: Selection,
    hash_key: Option<String>,
    retries: Option<RawRetries>,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    health_check: RawHealthCheck,
    #[serde(default)]
    passive_health: RawPassiveHealth,
    slow_start: Option<DurationValue>,
    #[serde(default)]
    queue: RawQueue,
    admin: Option<RawAdmin>,
    access_log: Option<RawAccessLog>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
    token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    path: String,
    #[serde(default)]
    format: AccessLogFormat,
}

/// `retries: 2` or the block form.
enum RawRetries {
    Attempts(usize),
    Block(RawRetryBlock),
}

impl<'de> Deserialize<'de> for RawRetries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor rather than `untagged`, so that a mistake inside the block is reported
        // as itself and not as "did not match any variant".
        struct RetriesVisitor;
        impl<'de> Visitor<'de> for RetriesVisitor {
            type Value = RawRetries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of attempts or { attempts, on, budget_percent }")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawRetries, E> {
                usize::try_from(v)
                    .map(RawRetries::Attempts)
                    .map_err(|_| E::custom("too many attempts"))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRetries, A::Error> {
                RawRetryBlock::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawRetries::Block)
            }
        }
        deserializer.deserialize_any(RetriesVisitor)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetryBlock {
    attempts: Option<usize>,
    on: Option<Vec<FailureValue>>,
    budget_percent: Option<u32>,
    budget_min_per_second: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPassiveHealth {
    consecutive_failures: Option<u32>,
    on: Option<Vec<FailureValue>>,
    eject_for: Option<DurationValue>,
    max_eject_for: Option<DurationValue>,
    max_ejected_percent: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    size: Option<usize>,
    timeout: Option<DurationValue>,
}

/// A failure kind as written: `connect_failure`, `timeout`, `reset`, `status_503`, `status_5xx`.
struct FailureValue(FailureKind);

impl<'de> Deserialize<'de> for FailureValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FailureVisitor;
        impl Visitor<'_> for FailureVisitor {
            type Value = FailureValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("connect_failure, timeout, reset, status_NNN or status_Nxx")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FailureValue, E> {
                parse_failure(v).map(FailureValue).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(FailureVisitor)
    }
}

fn parse_failure(text: &str) -> Result<FailureKind, String> {
    let bad = || {
        format!(
            "unknown failure `{text}`: expected connect_failure, timeout, reset, \
             status_NNN (e.g. status_503) or status_Nxx (e.g. status_5xx)"
        )
    };
    match text {
        "connect_failure" => return Ok(FailureKind::ConnectFailure),
        "timeout" => return Ok(FailureKind::Timeout),
        "reset" => return Ok(FailureKind::Reset),
        _ => {}
    }
    let code = text.strip_prefix("status_").ok_or_else(bad)?;
    if let Some(class) = code.strip_suffix("xx") {
        let class: u16 = class.parse().map_err(|_| bad())?;
        if !(1..=5).contains(&class) {
            return Err(bad());
        }
        return Ok(FailureKind::Status(StatusRange {
            low: class * 100,
            high: class * 100 + 99,
        }));
    }
    let code: u64 = code.parse().map_err(|_| bad())?;
    Ok(FailureKind::Status(StatusRange::single(status_code(code)?)))
}

fn parse_hash_key(text: &str) -> Result<HashKey, String> {
    match text.trim() {
        "client_ip" => Ok(HashKey::ClientIp),
        "uri" => Ok(HashKey::Uri),
        other => {
            if let Some(name) = other.strip_prefix("header:") {
                http::HeaderName::from_bytes(name.trim().as_bytes())
                    .map(HashKey::Header)
                    .map_err(|_| format!("`{name}` is not a valid header name"))
            } else if let Some(name) = other.strip_prefix("cookie:") {
                let name = name.trim();
                if name.is_empty() || name.contains([';', '=', ' ']) {
                    Err(format!("`{name}` is not a valid cookie name"))
                } else {
                    Ok(HashKey::Cookie(name.to_string()))
                }
            } else {
                Err(format!(
                    "unknown hash key `{other}`: expected client_ip, uri, header:NAME or cookie:NAME"
                ))
            }
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect: Option<DurationValue>,
    read: Option<DurationValue>,
    write: Option<DurationValue>,
    idle: Option<DurationValue>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    #[serde(rename = "type", default)]
    kind: CheckType,
    interval: Option<DurationValue>,
    timeout: Option<DurationValue>,
    healthy_after: Option<usize>,
    unhealthy_after: Option<usize>,
    path: Option<String>,
    host: Option<String>,
    expect_status: Option<Vec<StatusValue>>,
}

/// An upstream written either as `"host:port"` or as `{ addr: "host:port", weight: N, ... }`.
#[derive(Default)]
struct RawUpstream {
    addr: String,
    weight: Option<usize>,
    max_conns: Option<usize>,
    backup: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamLong {
    addr: String,
    weight: Option<usize>,
    max_conns: Option<usize>,
    backup: Option<bool>,
}

impl<'de> Deserialize<'de> for RawUpstream {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UpstreamVisitor;
        impl<'de> Visitor<'de> for UpstreamVisitor {
            type Value = RawUpstream;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address such as \"127.0.0.1:8081\" or { addr: \"127.0.0.1:8081\", weight: 2 }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawUpstream, E> {
                Ok(RawUpstream {
                    addr: v.to_owned(),
                    ..RawUpstream::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawUpstream, A::Error> {
                let long =
                    RawUpstreamLong::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawUpstream {
                    addr: long.addr,
                    weight: long.weight,
                    max_conns: long.max_conns,
                    backup: long.backup,
                })
            }
        }
        deserializer.deserialize_any(UpstreamVisitor)
    }
}

/// A duration written as `500ms`, `2s`, `1m` or `1h`.
#[derive(Debug, Clone, Copy)]
struct DurationValue(Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor, so that the error is raised at the value and serde_yaml names its key.
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 500ms, 2s or 1m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationValue, E> {
                parse_duration(v).map(DurationValue).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationValue, E> {
                Err(E::custom(format!(
                    "invalid duration `{v}`: give a unit, e.g. {v}s or {v}ms"
                )))
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

/// Parses `500ms`, `2s`, `1m`, `1h` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        format!(
            "invalid duration `{text}`: write a whole number and a unit, e.g. 500ms, 2s, 1m, 1h"
        )
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    Ok(duration)
}

/// An expected status: `200` or a range `"200-399"`.
struct StatusValue(StatusRange);

impl<'de> Deserialize<'de> for StatusValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StatusVisitor;
        impl Visitor<'_> for StatusVisitor {
            type Value = StatusValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a status code such as 200 or a range such as \"200-399\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusValue, E> {
                let code = status_code(v).map_err(E::custom)?;
                Ok(StatusValue(StatusRange {
                    low: code,
                    high: code,
                }))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusValue, E> {
                self.visit_u64(
                    u64::try_from(v).map_err(|_| E::custom(format!("invalid status code {v}")))?,
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusValue, E> {
                let parse = |s: &str| -> Result<u16, String> {
                    let n: u64 = s
                        .trim()
                        .parse()
                        .map_err(|_| format!("invalid status `{v}`: expected 200 or 200-399"))?;
                    status_code(n)
                };
                let range = match v.split_once('-') {
                    Some((low, high)) => StatusRange {
                        low: parse(low).map_err(E::custom)?,
                        high: parse(high).map_err(E::custom)?,
                    },
                    None => {
                        let code = parse(v).map_err(E::custom)?;
                        StatusRange {
                            low: code,
                            high: code,
                        }
                    }
                };
                if range.low > range.high {
                    return Err(E::custom(format!(
                        "invalid status range `{v}`: low end above high end"
                    )));
                }
                Ok(StatusValue(range))
            }
        }
        deserializer.deserialize_any(StatusVisitor)
    }
}

fn status_code(n: u64) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(code) if (100..=599).contains(&code) => Ok(code),
        _ => Err(format!(
            "invalid status code {n}: must be between 100 and 599"
        )),
    }
}

fn non_zero(key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(ConfigError::invalid(key, "must be greater than zero"))
    } else {
        Ok(d)
    }
}

/// Resolves `host:port` (an IP literal needs no lookup; a name is looked up once, at load).
fn resolve(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !text.contains(':') {
        return Err(ConfigError::invalid(
            key,
            format!("`{text}` has no port: write host:port, e.g. 127.0.0.1:8081"),
        ));
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| ConfigError::invalid(key, format!("cannot resolve `{text}`: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| ConfigError::invalid(key, format!("`{text}` resolves to no address")))
}

impl RawLb {
    fn validate(self, server: &ServerConf) -> Result<LbConfig, ConfigError> {
        let listen_raw = self.listen.ok_or_else(|| {
            ConfigError::invalid(
                "lb.listen",
                "missing: give at least one address such as \"0.0.0.0:80\"",
            )
        })?;
        if listen_raw.is_empty() {
            return Err(ConfigError::invalid(
                "lb.listen",
                "empty: give at least one address such as \"0.0.0.0:80\"",
            ));
        }
        let mut listen = Vec::with_capacity(listen_raw.len());
        for (i, text) in listen_raw.iter().enumerate() {
            let key = format!("lb.listen[{i}]");
            let addr: SocketAddr = text.trim().parse().map_err(|_| {
                ConfigError::invalid(
                    &key,
                    format!("invalid address `{text}`: write ip:port, e.g. 0.0.0.0:80 or [::]:80"),
                )
            })?;
            if listen.contains(&addr) {
                return Err(ConfigError::invalid(
                    key,
                    format!("`{text}` is listed twice"),
                ));
            }
            listen.push(addr);
        }

        let upstreams_raw = self.upstreams.ok_or_else(|| {
            ConfigError::invalid("lb.upstreams", "missing: give at least one backend address")
        })?;
        if upstreams_raw.is_empty() {
            return Err(ConfigError::invalid(
                "lb.upstreams",
                "empty: give at least one backend address",
            ));
        }
        let mut upstreams: Vec<Upstream> = Vec::with_capacity(upstreams_raw.len());
        for (i, raw) in upstreams_raw.into_iter().enumerate() {
            let addr = resolve(&format!("lb.upstreams[{i}].addr"), raw.addr.trim())?;
            let weight = raw.weight.unwrap_or(1);
            if weight == 0 {
                return Err(ConfigError::invalid(
                    format!("lb.upstreams[{i}].weight"),
                    "must be at least 1 (remove the upstream to send it nothing)",
                ));
            }
            if weight > MAX_WEIGHT {
                return Err(ConfigError::invalid(
                    format!("lb.upstreams[{i}].weight"),
                    format!("{weight} is above the maximum of {MAX_WEIGHT}"),
                ));
            }
            if raw.max_conns == Some(0) {
                return Err(ConfigError::invalid(
                    format!("lb.upstreams[{i}].max_conns"),
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
            if let Some(other) = upstreams.iter().find(|u| u.addr == addr) {
                return Err(ConfigError::invalid(
                    format!("lb.upstreams[{i}]"),
                    format!("`{}` is the same upstream as `{}`", raw.addr, other.name),
                ));
            }
            upstreams.push(Upstream {
                name: raw.addr.trim().to_owned(),
                addr,
                weight,
                max_conns: raw.max_conns,
                backup: raw.backup.unwrap_or(false),
            });
        }
        if upstreams.iter().all(|u| u.backup) {
            return Err(ConfigError::invalid(
                "lb.upstreams",
                "every upstream is a backup: at least one must be a primary",
            ));
        }

        let retries = validate_retries(self.retries, server)?;
        let passive_health = validate_passive(self.passive_health)?;
        let hash_key = match self.hash_key {
            Some(text) => parse_hash_key(&text)
                .map_err(|reason| ConfigError::invalid("lb.hash_key", reason))?,
            None => HashKey::default(),
        };
        let queue_defaults = QueueConfig::default();
        let queue = QueueConfig {
            size: self.queue.size.unwrap_or(queue_defaults.size),
            timeout: non_zero(
                "lb.queue.timeout",
                self.queue.timeout.map_or(queue_defaults.timeout, |d| d.0),
            )?,
        };

        let defaults = Timeouts::default();
        let t = self.timeouts;
        let timeouts = Timeouts {
            connect: non_zero(
                "lb.timeouts.connect",
                t.connect.map_or(defaults.connect, |d| d.0),
            )?,
            read: non_zero("lb.timeouts.read", t.read.map_or(defaults.read, |d| d.0))?,
            write: non_zero("lb.timeouts.write", t.write.map_or(defaults.write, |d| d.0))?,
            idle: non_zero("lb.timeouts.idle", t.idle.map_or(defaults.idle, |d| d.0))?,
        };

        let defaults = HealthCheckConfig::default();
        let h = self.health_check;
        let count = |key: &str, v: Option<usize>, default: usize| -> Result<usize, ConfigError> {
            match v.unwrap_or(default) {
                0 => Err(ConfigError::invalid(key, "must be at least 1")),
                n => Ok(n),
            }
        };
        let path = h.path.unwrap_or(defaults.path);
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::invalid(
                "lb.health_check.path",
                format!("`{path}` must start with / and contain no spaces"),
            ));
        }
        let host = h.host.unwrap_or(defaults.host);
        if host.is_empty() || http::HeaderValue::from_str(&host).is_err() {
            return Err(ConfigError::invalid(
                "lb.health_check.host",
                format!("`{host}` is not a valid Host header value"),
            ));
        }
        let expect_status = match h.expect_status {
            Some(list) if list.is_empty() => {
                return Err(ConfigError::invalid(
                    "lb.health_check.expect_status",
                    "empty: give at least one status, e.g. [200] or [\"200-399\"]",
                ))
            }
            Some(list) => list.into_iter().map(|s| s.0).collect(),
            None => defaults.expect_status,
        };
        let health_check = HealthCheckConfig {
            kind: h.kind,
            interval: non_zero(
                "lb.health_check.interval",
                h.interval.map_or(defaults.interval, |d| d.0),
            )?,
            timeout: non_zero(
                "lb.health_check.timeout",
                h.timeout.map_or(defaults.timeout, |d| d.0),
            )?,
            healthy_after: count(
                "lb.health_check.healthy_after",
                h.healthy_after,
                defaults.healthy_after,
            )?,
            unhealthy_after: count(
                "lb.health_check.unhealthy_after",
                h.unhealthy_after,
                defaults.unhealthy_after,
            )?,
            path,
            host,
            expect_status,
        };

        let admin = self
            .admin
            .map(|raw| validate_admin(raw, &listen))
            .transpose()?;
        let access_log = match self.access_log {
            None => None,
            Some(raw) => {
                let path = raw.path.trim();
                if path.is_empty() {
                    return Err(ConfigError::invalid(
                        "lb.access_log.path",
                        "empty: give a file path or \"stdout\"",
                    ));
                }
                Some(AccessLogSettings {
                    path: (path != "stdout").then(|| PathBuf::from(path)),
                    format: raw.format,
                })
            }
        };

        Ok(LbConfig {
            listen,
            upstreams,
            selection: self.selection,
            hash_key,
            retries,
            timeouts,
            health_check,
            passive_health,
            slow_start: self.slow_start.map_or(Duration::ZERO, |d| d.0),
            queue,
            admin,
            access_log,
        })
    }
}

fn validate_admin(raw: RawAdmin, listen: &[SocketAddr]) -> Result<AdminConfig, ConfigError> {
    let addr: SocketAddr = raw.listen.trim().parse().map_err(|_| {
        ConfigError::invalid(
            "lb.admin.listen",
            format!(
                "invalid address `{}`: write ip:port, e.g. 127.0.0.1:9901",
                raw.listen
            ),
        )
    })?;
    if listen.contains(&addr) {
        return Err(ConfigError::invalid(
            "lb.admin.listen",
            format!("{addr} is also in lb.listen: the admin listener needs its own address"),
        ));
    }
    let token = match &raw.token_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::invalid(
                    "lb.admin.token_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let token = text.trim().to_string();
            if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigError::invalid(
                    "lb.admin.token_file",
                    format!(
                        "{} must hold one token of at least 16 characters without spaces",
                        path.display()
                    ),
                ));
            }
            Some(token)
        }
    };
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(ConfigError::invalid(
            "lb.admin.token_file",
            format!(
                "required: the admin listener {addr} is not a loopback address, so it needs a token"
            ),
        ));
    }
    Ok(AdminConfig {
        listen: addr,
        token,
        token_file: raw.token_file,
    })
}

fn failure_set(list: Option<Vec<FailureValue>>, default: FailureSet) -> FailureSet {
    match list {
        Some(list) => FailureSet(list.into_iter().map(|f| f.0).collect()),
        None => default,
    }
}

fn validate_retries(
    raw: Option<RawRetries>,
    server: &ServerConf,
) -> Result<RetryPolicy, ConfigError> {
    let defaults = RetryPolicy::default();
    let block = match raw {
        None => RawRetryBlock::default(),
        Some(RawRetries::Attempts(n)) => RawRetryBlock {
            attempts: Some(n),
            ..RawRetryBlock::default()
        },
        Some(RawRetries::Block(block)) => block,
    };
    let attempts = block.attempts.unwrap_or(defaults.attempts);
    if attempts >= server.max_retries {
        return Err(ConfigError::invalid(
            "lb.retries.attempts",
            format!(
                "{attempts} must be below the server's max_retries ({})",
                server.max_retries
            ),
        ));
    }
    let budget_percent = block.budget_percent.unwrap_or(defaults.budget_percent);
    if budget_percent > 100 {
        return Err(ConfigError::invalid(
            "lb.retries.budget_percent",
            format!("{budget_percent} is above 100"),
        ));
    }
    Ok(RetryPolicy {
        attempts,
        on: failure_set(block.on, defaults.on),
        budget_percent,
        budget_min_per_second: block
            .budget_min_per_second
            .unwrap_or(defaults.budget_min_per_second),
    })
}

fn validate_passive(raw: RawPassiveHealth) -> Result<PassiveHealth, ConfigError> {
    let defaults = PassiveHealth::default();
    let eject_for = non_zero(
        "lb.passive_health.eject_for",
        raw.eject_for.map_or(defaults.eject_for, |d| d.0),
    )?;
    let max_eject_for = raw
        .max_eject_for
        .map_or(defaults.max_eject_for.max(eject_for), |d| d.0);
    if max_eject_for < eject_for {
        return Err(ConfigError::invalid(
            "lb.passive_health.max_eject_for",
            "must not be shorter than eject_for",
        ));
    }
    let max_ejected_percent = raw
        .max_ejected_percent
        .unwrap_or(defaults.max_ejected_percent);
    if max_ejected_percent > 100 {
        return Err(ConfigError::invalid(
            "lb.passive_health.max_ejected_percent",
            format!("{max_ejected_percent} is above 100"),
        ));
    }
    Ok(PassiveHealth {
        consecutive_failures: raw
            .consecutive_failures
            .unwrap_or(defaults.consecutive_failures),
        on: failure_set(raw.on, defaults.on),
        eject_for,
        max_eject_for,
        max_ejected_percent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [\"127.0.0.1:8081\"]\n";

    fn err(text: &str) -> String {
        Config::from_yaml(text).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::from_yaml(MINIMAL).unwrap();
        assert_eq!(c.lb.selection, Selection::RoundRobin);
        assert_eq!(c.lb.retries, RetryPolicy::default());
        assert_eq!(c.lb.retries.attempts, 2);
        assert_eq!(c.lb.passive_health, PassiveHealth::default());
        assert_eq!(c.lb.slow_start, Duration::ZERO);
        assert_eq!(c.lb.hash_key, HashKey::ClientIp);
        assert_eq!(c.lb.queue, QueueConfig::default());
        assert_eq!(c.lb.timeouts, Timeouts::default());
        assert_eq!(c.lb.health_check, HealthCheckConfig::default());
        assert_eq!(c.lb.upstreams[0].weight, 1);
        assert_eq!(c.server.threads, ServerConf::default().threads);
    }

    #[test]
    fn full_config_parses() {
        let c = Config::from_yaml(
            r#"
version: 1
threads: 2
lb:
  listen: ["0.0.0.0:80", "[::1]:8080"]
  upstreams:
    - 127.0.0.1:8081
    - { addr: 127.0.0.1:8082, weight: 2 }
  selection: random
  retries: 1
  timeouts: { connect: 500ms, read: 2s, write: 1m, idle: 1h }
  health_check:
    type: http
    interval: 3s
    timeout: 250ms
    healthy_after: 1
    unhealthy_after: 5
    path: /healthz
    host: example.org
    expect_status: [200, "300-399"]
"#,
        )
        .unwrap();
        assert_eq!(c.server.threads, 2);
        assert_eq!(c.lb.listen.len(), 2);
        assert_eq!(c.lb.upstreams[1].weight, 2);
        assert_eq!(c.lb.selection, Selection::Random);
        assert_eq!(c.lb.timeouts.connect, Duration::from_millis(500));
        assert_eq!(c.lb.timeouts.idle, Duration::from_secs(3600));
        assert_eq!(c.lb.health_check.kind, CheckType::Http);
        assert!(c.lb.health_check.expect_status[1].contains(302));
        assert!(
            !c.lb.health_check.expect_status[1].contains(200)
                || c.lb.health_check.expect_status[0].contains(200)
        );
    }

    #[test]
    fn balancing_keys_parse() {
        let c = Config::from_yaml(
            r#"
lb:
  listen: ["127.0.0.1:8080"]
  selection: consistent_hash
  hash_key: "cookie:session"
  upstreams:
    - { addr: 127.0.0.1:8081, weight: 3, max_conns: 100 }
    - { addr: 127.0.0.1:8083, backup: true }
  slow_start: 30s
  passive_health:
    consecutive_failures: 5
    eject_for: 30s
    max_ejected_percent: 50
    on: [connect_failure, status_5xx]
  retries:
    attempts: 2
    on: [connect_failure, timeout, status_502, status_503]
    budget_percent: 20
  queue: { size: 10, timeout: 500ms }
"#,
        )
        .unwrap();
        let lb = c.lb;
        assert_eq!(lb.selection, Selection::ConsistentHash);
        assert_eq!(lb.hash_key, HashKey::Cookie("session".into()));
        assert_eq!(lb.upstreams[0].max_conns, Some(100));
        assert!(lb.upstreams[1].backup);
        assert_eq!(lb.slow_start, Duration::from_secs(30));
        assert!(lb.passive_health.on.status(503));
        assert!(!lb.passive_health.on.timeout());
        assert!(lb.retries.on.status(502) && !lb.retries.on.status(500));
        assert_eq!(lb.queue.size, 10);
        let short = Config::from_yaml(&format!("{MINIMAL}  retries: 0\n")).unwrap();
        assert_eq!(short.lb.retries.attempts, 0);
        assert_eq!(short.lb.retries.on, RetryPolicy::default().on);
    }

    #[test]
    fn balancing_errors_name_the_key() {
        let with = |extra: &str| err(&format!("{MINIMAL}{extra}"));
        let e = with("  retries: { attempts: 1, on: [status_999] }\n");
        assert!(e.contains("lb.retries.on[0]") && e.contains("999"), "{e}");
        let e = with("  retries: { attemps: 1 }\n");
        assert!(e.contains("attemps"), "{e}");
        let e = with("  hash_key: body\n");
        assert!(e.contains("lb.hash_key"), "{e}");
        let e = with("  passive_health: { max_ejected_percent: 150 }\n");
        assert!(e.contains("lb.passive_health.max_ejected_percent"), "{e}");
        let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [{ addr: \"127.0.0.1:1\", backup: true }]\n");
        assert!(e.contains("lb.upstreams") && e.contains("backup"), "{e}");
        let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [{ addr: \"127.0.0.1:1\", weight: 1000 }]\n");
        assert!(
            e.contains("lb.upstreams[0].weight") && e.contains("256"),
            "{e}"
        );
        let e = with("  slow_start: soon\n");
        assert!(e.contains("lb.slow_start"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [\"127.0.0.1:8081\"]\n  health_check: { intervall: 2s }\n");
        assert!(
            e.contains("lb.health_check") && e.contains("intervall"),
            "{e}"
        );
        let e = err(
            "treads: 2\nlb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [\"127.0.0.1:8081\"]\n",
        );
        assert!(e.contains("treads"), "{e}");
        let e = err("threads: many\nlb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [\"127.0.0.1:8081\"]\n");
        assert!(e.starts_with("threads:"), "{e}");
        let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: []\n");
        assert!(e.contains("lb.upstreams") && e.contains("empty"), "{e}");
        let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [{ addr: \"127.0.0.1:1\", weight: 0 }]\n");
        assert!(e.contains("lb.upstreams[0].weight"), "{e}");
        let e = err("lb:\n  listen: [\"nonsense\"]\n  upstreams: [\"127.0.0.1:8081\"]\n");
        assert!(e.contains("lb.listen[0]"), "{e}");
        let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [\"127.0.0.1:8081\"]\n  timeouts: { read: 5 parsecs }\n");
        assert!(
            e.contains("lb.timeouts.read") && e.contains("invalid duration"),
            "{e}"
        );
        let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [\"127.0.0.1\"]\n");
        assert!(
            e.contains("lb.upstreams[0].addr") && e.contains("no port"),
            "{e}"
        );
        let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [\"127.0.0.1:1\"]\n  selection: fastest\n");
        assert!(e.contains("lb.selection"), "{e}");
        let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [\"127.0.0.1:1\"]\n  health_check: { expect_status: [\"399-200\"] }\n");
        assert!(e.contains("lb.health_check.expect_status"), "{e}");
        let e = err("version: 1\n");
        assert!(e.starts_with("lb:"), "{e}");
    }
}
