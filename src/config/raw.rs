//! The file as written: serde shapes that mirror the YAML. Every struct denies unknown keys;
//! optional keys stay `None` here and get their defaults during validation. The hand-written
//! visitors raise errors at the value itself, so the YAML library names its key.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::types::{AccessLogFormat, CheckType, LogFormat, Selection, UpstreamProtocol};
use super::values::parse_duration;
use crate::outcome::{status_code, OutcomeMatch, StatusRange};

/// The `lb:` section. Its pool keys (the same as [`RawPool`]'s) describe the single pool of the
/// one-pool form, or the defaults of every pool in `pools:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLb {
    pub(crate) listen: Option<Vec<String>>,
    pub(crate) tls: Option<super::tls::RawTls>,
    pub(crate) redirect_to_https: Option<bool>,
    pub(crate) h2c: Option<bool>,
    pub(crate) admin: Option<RawAdmin>,
    pub(crate) access_log: Option<RawAccessLog>,
    #[serde(default)]
    pub(crate) log_format: LogFormat,
    #[serde(default)]
    pub(crate) limits: RawLimits,
    pub(crate) pools: Option<RawPools>,
    pub(crate) routes: Option<Vec<RawRoute>>,
    // Pool keys, as in `RawPool` (serde cannot flatten into a struct that denies unknown keys).
    pub(crate) upstreams: Option<Vec<RawUpstream>>,
    pub(crate) selection: Option<Selection>,
    pub(crate) hash_key: Option<String>,
    pub(crate) retries: Option<RawRetries>,
    pub(crate) timeouts: Option<RawTimeouts>,
    pub(crate) health_check: Option<RawHealthCheck>,
    pub(crate) passive_health: Option<RawPassiveHealth>,
    pub(crate) slow_start: Option<DurationValue>,
    pub(crate) queue: Option<RawQueue>,
    pub(crate) discovery: Option<RawDiscovery>,
    pub(crate) protocol: Option<UpstreamProtocol>,
    pub(crate) upstream_tls: Option<RawUpstreamTls>,
}

/// `lb.limits`: what one client connection or request may use.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub(crate) max_header_bytes: Option<ByteSize>,
    pub(crate) max_headers: Option<usize>,
    pub(crate) max_body_bytes: Option<ByteSize>,
    pub(crate) max_client_connections: Option<usize>,
    pub(crate) rate: Option<RawRate>,
}

/// `lb.limits.rate`: requests per second per client address, and the burst above it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRate {
    pub(crate) per_client_ip: RateValue,
    pub(crate) burst: Option<u32>,
}

/// A rate: `100/s`, `6000/m`, or a number (per second).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateValue(pub(crate) f64);

impl<'de> Deserialize<'de> for RateValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RateVisitor;
        impl Visitor<'_> for RateVisitor {
            type Value = RateValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rate such as 100/s or 600/m")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RateValue, E> {
                Ok(RateValue(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RateValue, E> {
                let bad = || {
                    E::custom(format!(
                        "invalid rate `{}`: expected e.g. 100/s or 600/m",
                        super::values::cut(v)
                    ))
                };
                let (n, unit) = v.trim().split_once('/').ok_or_else(bad)?;
                let n: u64 = n.trim().parse().map_err(|_| bad())?;
                let per = match unit.trim() {
                    "s" => 1.0,
                    "m" => 60.0,
                    "h" => 3600.0,
                    _ => return Err(bad()),
                };
                Ok(RateValue(n as f64 / per))
            }
        }
        deserializer.deserialize_any(RateVisitor)
    }
}

/// A size in bytes: a number, or a number with `k`/`KiB`, `m`/`MiB` or `g`/`GiB`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ByteSize(pub(crate) u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes such as 65536, 64KiB or 10MiB")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_byte_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// Parses `65536`, `64k`, `64KiB`, `10m`, `10MiB`, `1g`, `1GiB` (powers of 1024).
pub(crate) fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || {
        format!(
            "invalid size `{}`: expected e.g. 65536, 64KiB or 10MiB",
            super::values::cut(text)
        )
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

impl RawLb {
    /// The pool keys written at `lb:` level.
    pub(crate) fn pool_keys(&self) -> RawPool {
        RawPool {
            upstreams: self.upstreams.clone(),
            selection: self.selection,
            hash_key: self.hash_key.clone(),
            retries: self.retries.clone(),
            timeouts: self.timeouts.clone(),
            health_check: self.health_check.clone(),
            passive_health: self.passive_health.clone(),
            slow_start: self.slow_start,
            queue: self.queue.clone(),
            discovery: self.discovery.clone(),
            protocol: self.protocol,
            upstream_tls: self.upstream_tls.clone(),
        }
    }
}

/// One pool: its upstreams and how they are balanced and checked.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub(crate) upstreams: Option<Vec<RawUpstream>>,
    pub(crate) selection: Option<Selection>,
    pub(crate) hash_key: Option<String>,
    pub(crate) retries: Option<RawRetries>,
    pub(crate) timeouts: Option<RawTimeouts>,
    pub(crate) health_check: Option<RawHealthCheck>,
    pub(crate) passive_health: Option<RawPassiveHealth>,
    pub(crate) slow_start: Option<DurationValue>,
    pub(crate) queue: Option<RawQueue>,
    pub(crate) discovery: Option<RawDiscovery>,
    pub(crate) protocol: Option<UpstreamProtocol>,
    pub(crate) upstream_tls: Option<RawUpstreamTls>,
}

/// `a.or(b)` for each field, and recursively for blocks: what `self` leaves out, `defaults`
/// fills in.
fn merge_block<T: Merge>(value: Option<T>, defaults: &Option<T>) -> Option<T> {
    match (value, defaults) {
        (Some(v), Some(d)) => Some(v.over(d)),
        (Some(v), None) => Some(v),
        (None, d) => d.clone(),
    }
}

/// A raw block whose keys fall back, one by one, to those of a default block.
pub(crate) trait Merge: Clone {
    fn over(self, defaults: &Self) -> Self;
}

impl Merge for RawPool {
    fn over(self, d: &Self) -> Self {
        RawPool {
            upstreams: self.upstreams.or_else(|| d.upstreams.clone()),
            selection: self.selection.or(d.selection),
            hash_key: self.hash_key.or_else(|| d.hash_key.clone()),
            retries: merge_block(self.retries, &d.retries),
            timeouts: merge_block(self.timeouts, &d.timeouts),
            health_check: merge_block(self.health_check, &d.health_check),
            passive_health: merge_block(self.passive_health, &d.passive_health),
            slow_start: self.slow_start.or(d.slow_start),
            queue: merge_block(self.queue, &d.queue),
            discovery: merge_block(self.discovery, &d.discovery),
            protocol: self.protocol.or(d.protocol),
            upstream_tls: merge_block(self.upstream_tls, &d.upstream_tls),
        }
    }
}

impl Merge for RawUpstreamTls {
    fn over(self, d: &Self) -> Self {
        RawUpstreamTls {
            sni: self.sni.or_else(|| d.sni.clone()),
            verify: self.verify.or(d.verify),
            ca_file: self.ca_file.or_else(|| d.ca_file.clone()),
        }
    }
}

/// `upstream_tls:` as written.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub(crate) sni: Option<String>,
    pub(crate) verify: Option<bool>,
    pub(crate) ca_file: Option<PathBuf>,
}

impl Merge for RawRetries {
    fn over(self, d: &Self) -> Self {
        RawRetries::Block(self.block().over(&d.block()))
    }
}

impl Merge for RawRetryBlock {
    fn over(self, d: &Self) -> Self {
        RawRetryBlock {
            attempts: self.attempts.or(d.attempts),
            on: self.on.or_else(|| d.on.clone()),
            budget_percent: self.budget_percent.or(d.budget_percent),
            budget_min_per_second: self.budget_min_per_second.or(d.budget_min_per_second),
        }
    }
}

impl Merge for RawTimeouts {
    fn over(self, d: &Self) -> Self {
        RawTimeouts {
            connect: self.connect.or(d.connect),
            read: self.read.or(d.read),
            write: self.write.or(d.write),
            idle: self.idle.or(d.idle),
            client_header: self.client_header.or(d.client_header),
            client_body: self.client_body.or(d.client_body),
        }
    }
}

impl Merge for RawHealthCheck {
    fn over(self, d: &Self) -> Self {
        RawHealthCheck {
            kind: self.kind.or(d.kind),
            interval: self.interval.or(d.interval),
            timeout: self.timeout.or(d.timeout),
            healthy_after: self.healthy_after.or(d.healthy_after),
            unhealthy_after: self.unhealthy_after.or(d.unhealthy_after),
            path: self.path.or_else(|| d.path.clone()),
            host: self.host.or_else(|| d.host.clone()),
            expect_status: self.expect_status.or_else(|| d.expect_status.clone()),
        }
    }
}

impl Merge for RawPassiveHealth {
    fn over(self, d: &Self) -> Self {
        RawPassiveHealth {
            consecutive_failures: self.consecutive_failures.or(d.consecutive_failures),
            on: self.on.or_else(|| d.on.clone()),
            eject_for: self.eject_for.or(d.eject_for),
            max_eject_for: self.max_eject_for.or(d.max_eject_for),
            max_ejected_percent: self.max_ejected_percent.or(d.max_ejected_percent),
        }
    }
}

impl Merge for RawQueue {
    fn over(self, d: &Self) -> Self {
        RawQueue {
            size: self.size.or(d.size),
            timeout: self.timeout.or(d.timeout),
        }
    }
}

/// A YAML map kept in the order written (`pools:`, header maps); a key given twice is an
/// error rather than silently the last one.
pub(crate) struct OrderedMap<V>(pub(crate) Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedMap<V>, A::Error> {
                let mut entries: Vec<(String, V)> = Vec::new();
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.to_ascii_lowercase()) {
                        return Err(de::Error::custom(format!("`{key}` is given twice")));
                    }
                    let value = map.next_value::<V>()?;
                    entries.push((key, value));
                }
                Ok(OrderedMap(entries))
            }
        }
        deserializer.deserialize_map(MapVisitor(std::marker::PhantomData))
    }
}

/// `pools:`, from name to pool.
pub(crate) type RawPools = OrderedMap<RawPool>;

/// One entry of `routes:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) name: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) strip_prefix: Option<bool>,
    pub(crate) methods: Option<Vec<String>>,
    pub(crate) headers: Option<OrderedMap<String>>,
    pub(crate) pool: Option<String>,
    pub(crate) redirect: Option<RawRedirect>,
    pub(crate) respond: Option<RawRespond>,
    pub(crate) set_request_headers: Option<OrderedMap<String>>,
    pub(crate) remove_request_headers: Option<Vec<String>>,
    pub(crate) set_response_headers: Option<OrderedMap<String>>,
    pub(crate) remove_response_headers: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedirect {
    pub(crate) to: String,
    pub(crate) status: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRespond {
    pub(crate) status: u16,
    pub(crate) body: Option<String>,
    pub(crate) content_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) listen: String,
    pub(crate) token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    pub(crate) path: String,
    #[serde(default)]
    pub(crate) format: AccessLogFormat,
}

/// `retries: 2` or the block form.
#[derive(Clone)]
pub(crate) enum RawRetries {
    Attempts(usize),
    Block(RawRetryBlock),
}

impl RawRetries {
    /// The block form of either way of writing it.
    pub(crate) fn block(&self) -> RawRetryBlock {
        match self {
            RawRetries::Attempts(n) => RawRetryBlock {
                attempts: Some(*n),
                ..RawRetryBlock::default()
            },
            RawRetries::Block(block) => block.clone(),
        }
    }
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

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetryBlock {
    pub(crate) attempts: Option<usize>,
    pub(crate) on: Option<Vec<FailureValue>>,
    pub(crate) budget_percent: Option<u32>,
    pub(crate) budget_min_per_second: Option<u32>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPassiveHealth {
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) on: Option<Vec<FailureValue>>,
    pub(crate) eject_for: Option<DurationValue>,
    pub(crate) max_eject_for: Option<DurationValue>,
    pub(crate) max_ejected_percent: Option<u32>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueue {
    pub(crate) size: Option<usize>,
    pub(crate) timeout: Option<DurationValue>,
}

/// A failure kind as written: `connect_failure`, `timeout`, `reset`, `status_503`, `status_5xx`.
#[derive(Clone)]
pub(crate) struct FailureValue(pub OutcomeMatch);

impl<'de> Deserialize<'de> for FailureValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FailureVisitor;
        impl Visitor<'_> for FailureVisitor {
            type Value = FailureValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("connect_failure, timeout, reset, status_NNN or status_Nxx")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FailureValue, E> {
                OutcomeMatch::parse(v).map(FailureValue).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(FailureVisitor)
    }
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub(crate) connect: Option<DurationValue>,
    pub(crate) read: Option<DurationValue>,
    pub(crate) write: Option<DurationValue>,
    pub(crate) idle: Option<DurationValue>,
    /// Client side, `lb:` level only.
    pub(crate) client_header: Option<DurationValue>,
    pub(crate) client_body: Option<DurationValue>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    #[serde(rename = "type")]
    pub(crate) kind: Option<CheckType>,
    pub(crate) interval: Option<DurationValue>,
    pub(crate) timeout: Option<DurationValue>,
    pub(crate) healthy_after: Option<usize>,
    pub(crate) unhealthy_after: Option<usize>,
    pub(crate) path: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) expect_status: Option<Vec<StatusValue>>,
}

/// An upstream written either as `"host:port"` or as a map: `{ addr: "host:port", weight: N,
/// ... }`, `{ dns: "name:port", ... }` (every address of the name) or `{ srv: "_svc._proto.name",
/// ... }` (the targets of the SRV records).
#[derive(Clone)]
pub(crate) struct RawUpstream {
    pub(crate) source: RawSource,
    pub(crate) weight: Option<usize>,
    pub(crate) max_conns: Option<usize>,
    pub(crate) backup: Option<bool>,
}

/// Where an upstream entry's addresses come from.
#[derive(Clone)]
pub(crate) enum RawSource {
    /// One address, resolved once at load.
    Addr(String),
    /// `dns:`: a name and port, followed in the background.
    Dns(String),
    /// `srv:`: an SRV name, followed in the background.
    Srv(String),
    /// A map with none or several of `addr`, `dns`, `srv` (an error at validation).
    Ambiguous(usize),
}

impl RawUpstream {
    /// A static upstream at `addr`, with every setting left out.
    pub(crate) fn addr(addr: &str) -> Self {
        RawUpstream {
            source: RawSource::Addr(addr.to_owned()),
            weight: None,
            max_conns: None,
            backup: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamLong {
    pub(crate) addr: Option<String>,
    pub(crate) dns: Option<String>,
    pub(crate) srv: Option<String>,
    pub(crate) weight: Option<usize>,
    pub(crate) max_conns: Option<usize>,
    pub(crate) backup: Option<bool>,
}

impl<'de> Deserialize<'de> for RawUpstream {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UpstreamVisitor;
        impl<'de> Visitor<'de> for UpstreamVisitor {
            type Value = RawUpstream;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address such as \"127.0.0.1:8081\" or { addr: \"127.0.0.1:8081\", weight: 2 }, { dns: \"name:port\" }, { srv: \"_http._tcp.name\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawUpstream, E> {
                Ok(RawUpstream::addr(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawUpstream, A::Error> {
                let long =
                    RawUpstreamLong::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let given = [&long.addr, &long.dns, &long.srv]
                    .iter()
                    .filter(|v| v.is_some())
                    .count();
                let source = match (long.addr, long.dns, long.srv) {
                    (Some(addr), None, None) => RawSource::Addr(addr),
                    (None, Some(dns), None) => RawSource::Dns(dns),
                    (None, None, Some(srv)) => RawSource::Srv(srv),
                    _ => RawSource::Ambiguous(given),
                };
                Ok(RawUpstream {
                    source,
                    weight: long.weight,
                    max_conns: long.max_conns,
                    backup: long.backup,
                })
            }
        }
        deserializer.deserialize_any(UpstreamVisitor)
    }
}

/// `discovery:`: how `dns:` and `srv:` upstreams are looked up and followed.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDiscovery {
    pub(crate) resolvers: Option<Vec<String>>,
    pub(crate) refresh: Option<String>,
    pub(crate) min_refresh: Option<DurationValue>,
    pub(crate) max_refresh: Option<DurationValue>,
    pub(crate) ipv6: Option<bool>,
    pub(crate) allow_empty: Option<bool>,
}

impl Merge for RawDiscovery {
    fn over(self, d: &Self) -> Self {
        RawDiscovery {
            resolvers: self.resolvers.or_else(|| d.resolvers.clone()),
            refresh: self.refresh.or_else(|| d.refresh.clone()),
            min_refresh: self.min_refresh.or(d.min_refresh),
            max_refresh: self.max_refresh.or(d.max_refresh),
            ipv6: self.ipv6.or(d.ipv6),
            allow_empty: self.allow_empty.or(d.allow_empty),
        }
    }
}

/// A duration written as `500ms`, `2s`, `1m` or `1h`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DurationValue(pub(crate) Duration);

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

/// An expected status: `200` or a range `"200-399"`.
#[derive(Clone)]
pub(crate) struct StatusValue(pub(crate) StatusRange);

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
