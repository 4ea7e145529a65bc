//! The validated configuration: the types the rest of lb reads. Everything here has passed
//! validation, so its users need no checks of their own.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use super::tls::{Certificate, CertificateSet, Material, TlsConfig, TlsVersion};
pub use crate::outcome::{OutcomeMatch, OutcomeSet, StatusRange};

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

impl Selection {
    /// Every algorithm, in the order the documentation lists them.
    pub const ALL: [Selection; 5] = [
        Selection::RoundRobin,
        Selection::Random,
        Selection::LeastConn,
        Selection::P2cEwma,
        Selection::ConsistentHash,
    ];
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

/// How lb speaks to a pool's upstreams (`protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over TCP.
    #[default]
    Http1,
    /// HTTP/2 over TCP with prior knowledge (gRPC without TLS).
    H2c,
    /// HTTP/1.1 over TLS.
    Https,
    /// TLS, offering h2 then http/1.1 by ALPN.
    HttpsH2,
}

impl UpstreamProtocol {
    /// Whether connections to the upstreams use TLS.
    pub fn tls(self) -> bool {
        matches!(self, UpstreamProtocol::Https | UpstreamProtocol::HttpsH2)
    }
}

impl fmt::Display for UpstreamProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::Https => "https",
            UpstreamProtocol::HttpsH2 => "https_h2",
        })
    }
}

/// CA certificates read from `upstream_tls.ca_file` at load, shared by every connection.
#[derive(Clone)]
pub struct CaBundle {
    /// In the form pingora's peers take.
    pub certs: Arc<pingora::protocols::tls::CaType>,
    /// The certificates' DER bytes: what two bundles are compared by.
    der: Arc<[Vec<u8>]>,
    /// A hash of `der`, to keep connections checked against other CAs apart.
    fingerprint: u64,
}

impl CaBundle {
    /// Every certificate in a PEM text; an error when there is none or one is malformed.
    pub fn from_pem(pem: &[u8]) -> Result<CaBundle, String> {
        let certs = pingora::tls::x509::X509::stack_from_pem(pem)
            .map_err(|e| format!("not PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string());
        }
        let der = certs
            .iter()
            .map(|c| c.to_der().map_err(|e| format!("bad certificate: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            der.hash(&mut hasher);
            hasher.finish()
        };
        Ok(CaBundle {
            certs: Arc::new(certs.into_boxed_slice()),
            der: der.into(),
            fingerprint,
        })
    }

    /// A hash of the certificates.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    pub fn len(&self) -> usize {
        self.der.len()
    }

    pub fn is_empty(&self) -> bool {
        self.der.is_empty()
    }
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for CaBundle {}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaBundle({} certificates)", self.der.len())
    }
}

/// `upstream_tls`: how lb checks the upstreams of an `https`/`https_h2` pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The server name sent (SNI) and checked; `None`: each upstream's host name as written
    /// (none for an upstream written as an IP address).
    pub sni: Option<String>,
    /// Whether the upstream's certificate chain and name are checked.
    pub verify: bool,
    pub ca_file: Option<PathBuf>,
    /// The certificates of `ca_file`; `None`: the system's roots.
    pub ca: Option<CaBundle>,
}

impl Default for UpstreamTls {
    fn default() -> Self {
        UpstreamTls {
            sni: None,
            verify: true,
            ca_file: None,
            ca: None,
        }
    }
}

impl UpstreamTls {
    /// The server name sent to and checked against `upstream`: `sni`, else its host name.
    pub fn server_name<'a>(&'a self, upstream: &'a Upstream) -> &'a str {
        self.sni
            .as_deref()
            .or_else(|| upstream.host_name())
            .unwrap_or("")
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
    /// The `dns:`/`srv:` name this address was discovered from (see [`DiscoveryTarget`]'s
    /// text form); `None` for an upstream written as an address.
    pub origin: Option<String>,
}

/// A name followed in the background: each of its addresses is an upstream of the pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DiscoveryTarget {
    /// `dns: host:port`: every A (and AAAA) address of `host`, on `port`.
    Dns { host: String, port: u16 },
    /// `srv: _service._proto.name`: each SRV target's addresses, on its port, with its weight;
    /// targets of a priority below the best are backups.
    Srv { name: String },
}

impl fmt::Display for DiscoveryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscoveryTarget::Dns { host, port } => write!(f, "dns:{host}:{port}"),
            DiscoveryTarget::Srv { name } => write!(f, "srv:{name}"),
        }
    }
}

/// One `dns:` or `srv:` entry of a pool's `upstreams`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredName {
    /// The key path of the entry (`lb.pools.api.upstreams[2]`), for errors.
    pub key: String,
    pub target: DiscoveryTarget,
    /// `dns:` only: the weight of each address (SRV records carry their own).
    pub weight: usize,
    pub max_conns: Option<usize>,
    pub backup: bool,
}

/// How often a name is looked up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// When the answer's TTL runs out, within `min_refresh`..`max_refresh`.
    Ttl,
    /// At this fixed interval (also within `min_refresh`..`max_refresh`).
    Every(Duration),
}

/// `discovery:`: how a pool's `dns:` and `srv:` upstreams are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Name servers asked (UDP, then TCP for a truncated answer); empty: the system's
    /// (`/etc/resolv.conf`).
    pub resolvers: Vec<SocketAddr>,
    pub refresh: Refresh,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    /// Whether AAAA records are asked for as well as A records.
    pub ipv6: bool,
    /// Whether a name may resolve to nothing at start (the pool then starts without it).
    pub allow_empty: bool,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            resolvers: Vec::new(),
            refresh: Refresh::Ttl,
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(300),
            ipv6: true,
            allow_empty: false,
        }
    }
}

impl Upstream {
    /// The host name the upstream was written with (`backend.internal` of
    /// `backend.internal:8443`); `None` when it was written as an IP address.
    /// An address discovered from `dns: host:port` has `host`.
    pub fn host_name(&self) -> Option<&str> {
        let written = match self.origin.as_deref().and_then(|o| o.strip_prefix("dns:")) {
            Some(dns) => dns,
            None => &self.name,
        };
        let host = match written.rsplit_once(':') {
            Some((host, _port)) => host,
            None => written,
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        (!bare.is_empty() && bare.parse::<std::net::IpAddr>().is_err()).then_some(host)
    }
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

/// Retrying a failed attempt on another upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many other upstreams one request may be moved to.
    pub attempts: usize,
    /// Which failures are retried (a request is only ever retried when repeating it is safe).
    pub on: OutcomeSet,
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
            on: OutcomeSet(vec![
                OutcomeMatch::ConnectFailure,
                OutcomeMatch::Reset,
                OutcomeMatch::Timeout,
                OutcomeMatch::Status(StatusRange::single(502)),
                OutcomeMatch::Status(StatusRange::single(503)),
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
    pub on: OutcomeSet,
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
            on: OutcomeSet(vec![
                OutcomeMatch::ConnectFailure,
                OutcomeMatch::Timeout,
                OutcomeMatch::Reset,
                OutcomeMatch::Status(StatusRange::class(5)),
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
            expect_status: vec![StatusRange::single(200)],
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

/// How lb's own log (stderr, or `error_log` for a daemon) is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `[time LEVEL module] message`, one line per event.
    #[default]
    Text,
    /// One JSON object per line: `time`, `level`, `target`, `message`.
    Json,
}

/// The access log: a line per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSettings {
    /// A file path, or `None` for standard output.
    pub path: Option<PathBuf>,
    pub format: AccessLogFormat,
}

/// One pool of upstreams and how requests are balanced over it: every key that is about the
/// upstreams rather than the listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// `default` for the one-pool form.
    pub name: String,
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
    /// The `dns:`/`srv:` entries of `upstreams`; their current addresses are in `upstreams`
    /// (with an `origin`), filled in by the discovery layer.
    pub discovered: Vec<DiscoveredName>,
    pub discovery: DiscoveryConfig,
    /// How lb speaks to the upstreams.
    pub protocol: UpstreamProtocol,
    /// `https`/`https_h2` only: server name and certificate checks.
    pub upstream_tls: UpstreamTls,
}

impl PoolConfig {
    /// A pool with every default over `upstreams`.
    pub fn with_defaults(upstreams: Vec<Upstream>) -> Self {
        PoolConfig {
            name: DEFAULT_POOL.to_string(),
            upstreams,
            selection: Selection::default(),
            hash_key: HashKey::default(),
            retries: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            health_check: HealthCheckConfig::default(),
            passive_health: PassiveHealth::default(),
            slow_start: Duration::ZERO,
            queue: QueueConfig::default(),
            discovered: Vec::new(),
            discovery: DiscoveryConfig::default(),
            protocol: UpstreamProtocol::default(),
            upstream_tls: UpstreamTls::default(),
        }
    }
}

/// The name of the pool of the one-pool form.
pub const DEFAULT_POOL: &str = "default";

/// Which hosts a route applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// Every host.
    Any,
    /// One host, lowercase, without a port.
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (held as `example.com`).
    Wildcard(String),
}

impl HostMatch {
    /// Whether `host` (lowercase, without a port) is one this matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h == host,
            HostMatch::Wildcard(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
        }
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Any => f.write_str("any host"),
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// Which paths a route applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Any,
    /// `/static/` matches `/static/...`; `/static` matches `/static` and `/static/...` (whole
    /// segments).
    Prefix(String),
    /// `= /exact`.
    Exact(String),
    /// `~ ^/v[0-9]+/`: a regular expression, checked at load.
    Regex(String),
}

impl PathMatch {
    /// Whether a prefix route's prefix matches `path`.
    pub fn prefix_matches(prefix: &str, path: &str) -> bool {
        path.starts_with(prefix)
            && (prefix.ends_with('/')
                || path.len() == prefix.len()
                || path.as_bytes()[prefix.len()] == b'/')
    }
}

/// What a route does with a request it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// Proxy to the pool at this index of `LbConfig::pools`.
    Pool(usize),
    /// Answer with a redirect to `to` followed by the request's path and query.
    Redirect { to: String, status: u16 },
    /// Answer with a fixed response.
    Respond {
        status: u16,
        body: String,
        content_type: String,
    },
}

/// One validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// As written, or `routes[N]`.
    pub name: String,
    pub host: HostMatch,
    pub path: PathMatch,
    /// A prefix route: the prefix is removed from the path sent upstream.
    pub strip_prefix: bool,
    /// Empty for any method.
    pub methods: Vec<http::Method>,
    /// Request headers that must be present with exactly these values.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub action: RouteAction,
    pub set_request_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove_request_headers: Vec<http::HeaderName>,
    pub set_response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove_response_headers: Vec<http::HeaderName>,
}

impl RouteConfig {
    /// A route that sends every request to pool `index`.
    pub fn catch_all(name: &str, index: usize) -> Self {
        RouteConfig {
            name: name.to_string(),
            host: HostMatch::Any,
            path: PathMatch::Any,
            strip_prefix: false,
            methods: Vec::new(),
            headers: Vec::new(),
            action: RouteAction::Pool(index),
            set_request_headers: Vec::new(),
            remove_request_headers: Vec::new(),
            set_response_headers: Vec::new(),
            remove_response_headers: Vec::new(),
        }
    }
}

/// What a client may take: time for its request header and body, sizes, connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// The whole request header must arrive within this (from its first byte); else the
    /// connection is closed. Also bounds how long a new connection may stay silent.
    pub header_timeout: Duration,
    /// The longest pause between two reads of a request body; exceeded → 408 and close.
    pub body_timeout: Duration,
    /// A request header larger than this is answered 431.
    pub max_header_bytes: usize,
    /// A request with more header lines than this is answered 431.
    pub max_headers: usize,
    /// A request body larger than this is answered 413; `None`: no limit.
    pub max_body_bytes: Option<u64>,
    /// Open client connections beyond this are closed at once; `None`: derived from the
    /// file-descriptor limit at start.
    pub max_connections: Option<usize>,
    /// Requests per client address; `None`: no limit.
    pub rate: Option<RateLimit>,
}

/// A token bucket per client address: `per_second` tokens a second, up to `burst` saved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

// Rates are finite and positive (checked at load), so equality is an equivalence.
impl Eq for RateLimit {}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_body_bytes: None,
            max_connections: None,
            rate: None,
        }
    }
}

/// The validated `lb:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbConfig {
    pub listen: Vec<SocketAddr>,
    /// The HTTPS listeners and their certificates; off when `None`.
    pub tls: Option<TlsConfig>,
    /// A request on a plain listener gets a 308 to its `https://` URL (needs `tls`).
    pub redirect_to_https: bool,
    /// HTTP/2 with prior knowledge on the plain listeners (`lb.h2c`).
    pub h2c: bool,
    /// How long an idle client keep-alive connection is kept open (`lb.timeouts.idle`).
    pub client_idle: Duration,
    /// At least one; the one-pool form has one named `default`.
    pub pools: Vec<PoolConfig>,
    /// First match wins; the one-pool form has one catch-all route.
    pub routes: Vec<RouteConfig>,
    /// `lb.timeouts.client_*` and `lb.limits`.
    pub client: ClientLimits,
    /// Off when `None`.
    pub admin: Option<AdminConfig>,
    /// Off when `None`.
    pub access_log: Option<AccessLogSettings>,
    /// lb's own log lines: `text` or `json`.
    pub log_format: LogFormat,
}

impl LbConfig {
    /// Every address the process listens on: the proxy's and the admin listener's.
    pub fn all_listeners(&self) -> Vec<SocketAddr> {
        let mut all = self.listen.clone();
        all.extend(self.tls.iter().flat_map(|t| t.listen.iter().copied()));
        all.extend(self.admin.as_ref().map(|a| a.listen));
        all
    }

    /// The one-pool form with every default, for `listen` and `upstreams`.
    pub fn with_defaults(listen: Vec<SocketAddr>, upstreams: Vec<Upstream>) -> Self {
        LbConfig {
            listen,
            tls: None,
            redirect_to_https: false,
            h2c: true,
            client_idle: Timeouts::default().idle,
            pools: vec![PoolConfig::with_defaults(upstreams)],
            routes: vec![RouteConfig::catch_all(DEFAULT_POOL, 0)],
            client: ClientLimits::default(),
            admin: None,
            access_log: None,
            log_format: LogFormat::default(),
        }
    }

    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}
