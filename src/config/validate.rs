//! Validation of the `lb:` section, one function per section: defaults filled in, ranges and
//! cross-references checked, every error naming its key path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pingora::server::configuration::ServerConf;

use super::raw::*;
use super::types::*;
use super::values::{cut, non_zero, parse_hash_key, resolve};
use super::ConfigError;
use crate::outcome::OutcomeSet;

use super::raw::Merge;

impl RawLb {
    /// Validates the whole section against the pingora settings it runs under.
    pub(crate) fn validate(self, server: &ServerConf) -> Result<LbConfig, ConfigError> {
        let listen = validate_listen(self.listen.clone())?;
        let client = validate_client(self.timeouts.as_ref(), &self.limits)?;
        let defaults = self.pool_keys();
        let client_idle = validate_timeouts("lb", defaults.timeouts.clone())?.idle;
        let lb_tls_written = self.upstream_tls.is_some();
        let pools = match self.pools {
            None => vec![validate_pool(
                "lb",
                DEFAULT_POOL,
                defaults,
                server,
                true,
                lb_tls_written,
            )?],
            Some(OrderedMap(list)) => {
                if list.is_empty() {
                    return Err(ConfigError::invalid(
                        "lb.pools",
                        "empty: name at least one pool, e.g. { web: { upstreams: [...] } }",
                    ));
                }
                // The lb-level keys are checked as defaults first, so that their errors name
                // `lb.` keys and not the first pool that inherits them.
                validate_pool("lb", DEFAULT_POOL, defaults.clone(), server, false, false)?;
                let mut pools = Vec::with_capacity(list.len());
                for (name, raw) in list {
                    let key = format!("lb.pools.{name}");
                    if name.is_empty()
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                    {
                        return Err(ConfigError::invalid(
                            key,
                            "a pool name may hold only letters, digits, `_`, `-` and `.`",
                        ));
                    }
                    if raw
                        .timeouts
                        .as_ref()
                        .is_some_and(|t| t.client_header.is_some() || t.client_body.is_some())
                    {
                        return Err(ConfigError::invalid(
                            format!("{key}.timeouts"),
                            "client_header and client_body are about clients, not a pool: set them \
                             under lb.timeouts",
                        ));
                    }
                    let tls_written = raw.upstream_tls.is_some();
                    pools.push(validate_pool(
                        &key,
                        &name,
                        raw.over(&defaults),
                        server,
                        true,
                        tls_written,
                    )?);
                }
                pools
            }
        };
        let routes = super::routes::validate_routes(self.routes, &pools)?;
        let admin = self
            .admin
            .map(|raw| validate_admin(raw, &listen))
            .transpose()?;
        let access_log = self.access_log.map(validate_access_log).transpose()?;
        let tls = self
            .tls
            .map(|raw| super::tls::validate_tls(raw, &listen))
            .transpose()?;
        if let (Some(admin), Some(tls)) = (&admin, &tls) {
            if tls.listen.contains(&admin.listen) {
                return Err(ConfigError::invalid(
                    "lb.admin.listen",
                    format!(
                        "{} is also in lb.tls.listen: the admin listener needs its own address",
                        admin.listen
                    ),
                ));
            }
        }
        let redirect_to_https = self.redirect_to_https.unwrap_or(false);
        if redirect_to_https && tls.is_none() {
            return Err(ConfigError::invalid(
                "lb.redirect_to_https",
                "needs lb.tls: without an HTTPS listener there is nothing to redirect to",
            ));
        }
        Ok(LbConfig {
            listen,
            tls,
            redirect_to_https,
            h2c: self.h2c.unwrap_or(true),
            client_idle,
            pools,
            routes,
            admin,
            access_log,
            log_format: self.log_format,
            client,
        })
    }
}

/// pingora reads at most this many header lines; more are a 400 before lb sees the request.
const PINGORA_MAX_HEADERS: usize = 256;
/// pingora reads at most this many header bytes (1 MiB).
const PINGORA_MAX_HEADER_BYTES: u64 = 1_048_575;

fn validate_client(t: Option<&RawTimeouts>, l: &RawLimits) -> Result<ClientLimits, ConfigError> {
    let defaults = ClientLimits::default();
    let (client_header, client_body) = t.map_or((None, None), |t| (t.client_header, t.client_body));
    let max_header_bytes = match l.max_header_bytes {
        None => defaults.max_header_bytes,
        Some(ByteSize(n)) if (1024..=PINGORA_MAX_HEADER_BYTES).contains(&n) => n as usize,
        Some(ByteSize(n)) => {
            return Err(ConfigError::invalid(
                "lb.limits.max_header_bytes",
                format!("{n} is out of range: 1KiB to 1MiB - 1 (1048575)"),
            ))
        }
    };
    let max_headers = match l.max_headers {
        None => defaults.max_headers,
        Some(n) if (1..=PINGORA_MAX_HEADERS).contains(&n) => n,
        Some(n) => {
            return Err(ConfigError::invalid(
                "lb.limits.max_headers",
                format!("{n} is out of range: 1 to {PINGORA_MAX_HEADERS}"),
            ))
        }
    };
    let max_body_bytes = match l.max_body_bytes {
        None => None,
        Some(ByteSize(0)) => {
            return Err(ConfigError::invalid(
                "lb.limits.max_body_bytes",
                "must be at least 1 (leave it out for no limit)",
            ))
        }
        Some(ByteSize(n)) => Some(n),
    };
    let max_connections =
        match l.max_client_connections {
            Some(0) => return Err(ConfigError::invalid(
                "lb.limits.max_client_connections",
                "must be at least 1 (leave it out for a limit derived from the open-files limit)",
            )),
            other => other,
        };
    let rate = match &l.rate {
        None => None,
        Some(r) => {
            let per_second = r.per_client_ip.0;
            if !(per_second.is_finite() && per_second > 0.0 && per_second <= 1e9) {
                return Err(ConfigError::invalid(
                    "lb.limits.rate.per_client_ip",
                    "must be above zero (e.g. 100/s)",
                ));
            }
            // Default burst: one second's worth, at least 1.
            let burst = r.burst.unwrap_or(per_second.ceil().max(1.0) as u32);
            if burst == 0 {
                return Err(ConfigError::invalid(
                    "lb.limits.rate.burst",
                    "must be at least 1",
                ));
            }
            Some(RateLimit { per_second, burst })
        }
    };
    Ok(ClientLimits {
        rate,
        header_timeout: non_zero(
            "lb.timeouts.client_header",
            client_header.map_or(defaults.header_timeout, |d| d.0),
        )?,
        body_timeout: non_zero(
            "lb.timeouts.client_body",
            client_body.map_or(defaults.body_timeout, |d| d.0),
        )?,
        max_header_bytes,
        max_headers,
        max_body_bytes,
        max_connections,
    })
}

/// Validates one pool's keys; `prefix` is the key path errors name (`lb` or `lb.pools.NAME`).
/// `tls_written`: `upstream_tls` was written at this level (not only inherited from `lb:`), so
/// it is an error on a pool that does not use TLS.
fn validate_pool(
    prefix: &str,
    name: &str,
    raw: RawPool,
    server: &ServerConf,
    require_upstreams: bool,
    tls_written: bool,
) -> Result<PoolConfig, ConfigError> {
    let (upstreams, discovered) = validate_upstreams(prefix, raw.upstreams, require_upstreams)?;
    let protocol = raw.protocol.unwrap_or_default();
    if tls_written && !protocol.tls() {
        return Err(ConfigError::invalid(
            format!("{prefix}.upstream_tls"),
            format!(
                "only for protocol https or https_h2 (this pool's protocol is {protocol}): \
                 remove it or set {prefix}.protocol"
            ),
        ));
    }
    let upstream_tls = validate_upstream_tls(
        prefix,
        raw.upstream_tls.unwrap_or_default(),
        protocol,
        &upstreams,
    )?;
    let srv_written = discovered
        .iter()
        .any(|d| matches!(d.target, DiscoveryTarget::Srv { .. }));
    if protocol.tls() && upstream_tls.verify && upstream_tls.sni.is_none() && srv_written {
        // SRV targets are not names the operator wrote: the name to check must be given.
        return Err(ConfigError::invalid(
            format!("{prefix}.upstream_tls.sni"),
            "required with verify: true when upstreams come from srv: records",
        ));
    }
    Ok(PoolConfig {
        name: name.to_string(),
        upstreams,
        discovered,
        discovery: validate_discovery(prefix, raw.discovery.unwrap_or_default())?,
        protocol,
        upstream_tls,
        selection: raw.selection.unwrap_or_default(),
        hash_key: match raw.hash_key {
            Some(text) => parse_hash_key(&text)
                .map_err(|reason| ConfigError::invalid(format!("{prefix}.hash_key"), reason))?,
            None => HashKey::default(),
        },
        retries: validate_retries(prefix, raw.retries, server)?,
        timeouts: validate_timeouts(prefix, raw.timeouts)?,
        health_check: validate_health_check(prefix, raw.health_check.unwrap_or_default())?,
        passive_health: validate_passive(prefix, raw.passive_health.unwrap_or_default())?,
        slow_start: raw.slow_start.map_or(Duration::ZERO, |d| d.0),
        queue: validate_queue(prefix, raw.queue.unwrap_or_default())?,
    })
}

/// `upstream_tls`: the server name, the CA file (read and parsed now, once), and that a
/// certificate can really be checked when `verify` is on.
fn validate_upstream_tls(
    prefix: &str,
    raw: RawUpstreamTls,
    protocol: UpstreamProtocol,
    upstreams: &[Upstream],
) -> Result<UpstreamTls, ConfigError> {
    let key = format!("{prefix}.upstream_tls");
    let sni = match raw.sni {
        None => None,
        Some(name) => Some(validate_server_name(&name).map_err(|reason| {
            ConfigError::invalid(format!("{key}.sni"), format!("`{}`: {reason}", cut(&name)))
        })?),
    };
    let verify = raw.verify.unwrap_or(true);
    let ca = match &raw.ca_file {
        None => None,
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| {
                ConfigError::invalid(
                    format!("{key}.ca_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Some(CaBundle::from_pem(&bytes).map_err(|reason| {
                ConfigError::invalid(
                    format!("{key}.ca_file"),
                    format!("{}: {reason}", path.display()),
                )
            })?)
        }
    };
    if protocol.tls() && verify && sni.is_none() {
        // Without a server name there is nothing to check the certificate against (and
        // pingora then skips the check altogether): refuse rather than not verify silently.
        if let Some(ip) = upstreams.iter().find(|u| u.host_name().is_none()) {
            return Err(ConfigError::invalid(
                format!("{key}.sni"),
                format!(
                    "required with verify: true when an upstream is an IP address (`{}`): \
                     lb checks the upstream's certificate against this name",
                    cut(&ip.name)
                ),
            ));
        }
    }
    Ok(UpstreamTls {
        sni,
        verify,
        ca_file: raw.ca_file,
        ca,
    })
}

/// A TLS server name (SNI): a DNS name, not an IP address.
fn validate_server_name(name: &str) -> Result<String, String> {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return Err("empty: give a DNS name such as backend.internal".to_string());
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err("an IP address cannot be a TLS server name: give a DNS name".to_string());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err("not a DNS name (letters, digits, `-` and `.`)".to_string());
    }
    Ok(name)
}

fn validate_listen(raw: Option<Vec<String>>) -> Result<Vec<SocketAddr>, ConfigError> {
    let listen_raw = raw.ok_or_else(|| {
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
    let mut seen = std::collections::HashSet::with_capacity(listen_raw.len());
    for (i, text) in listen_raw.iter().enumerate() {
        let key = format!("lb.listen[{i}]");
        let addr: SocketAddr = text.trim().parse().map_err(|_| {
            ConfigError::invalid(
                &key,
                format!(
                    "invalid address `{}`: write ip:port, e.g. 0.0.0.0:80 or [::]:80",
                    cut(text)
                ),
            )
        })?;
        if !seen.insert(addr) {
            return Err(ConfigError::invalid(
                key,
                format!("`{}` is listed twice", cut(text)),
            ));
        }
        listen.push(addr);
    }
    Ok(listen)
}

/// A pool's `upstreams`: the static ones, and the `dns:`/`srv:` names to follow.
fn validate_upstreams(
    prefix: &str,
    raw: Option<Vec<RawUpstream>>,
    required: bool,
) -> Result<(Vec<Upstream>, Vec<DiscoveredName>), ConfigError> {
    let key = format!("{prefix}.upstreams");
    let upstreams_raw = match raw {
        Some(list) => list,
        None if !required => return Ok((Vec::new(), Vec::new())),
        None => {
            return Err(ConfigError::invalid(
                key,
                "missing: give at least one backend address",
            ))
        }
    };
    if upstreams_raw.is_empty() {
        return Err(ConfigError::invalid(
            key,
            "empty: give at least one backend address",
        ));
    }
    let mut upstreams: Vec<Upstream> = Vec::with_capacity(upstreams_raw.len());
    let mut discovered: Vec<DiscoveredName> = Vec::new();
    let mut seen = std::collections::HashMap::with_capacity(upstreams_raw.len());
    for (i, raw) in upstreams_raw.into_iter().enumerate() {
        let entry = format!("{key}[{i}]");
        let weight = raw.weight.unwrap_or(1);
        if weight == 0 {
            return Err(ConfigError::invalid(
                format!("{entry}.weight"),
                "must be at least 1 (remove the upstream to send it nothing)",
            ));
        }
        if weight > MAX_WEIGHT {
            return Err(ConfigError::invalid(
                format!("{entry}.weight"),
                format!("{weight} is above the maximum of {MAX_WEIGHT}"),
            ));
        }
        if raw.max_conns == Some(0) {
            return Err(ConfigError::invalid(
                format!("{entry}.max_conns"),
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        // An address, or a name followed in the background (`dns:`/`srv:`).
        let (text, target) = match raw.source {
            RawSource::Addr(text) => (text, None),
            RawSource::Ambiguous(given) => {
                return Err(ConfigError::invalid(
                    entry,
                    if given == 0 {
                        "give one of addr, dns or srv"
                    } else {
                        "give only one of addr, dns and srv"
                    },
                ))
            }
            RawSource::Dns(text) => {
                let target = parse_dns_target(text.trim())
                    .map_err(|reason| ConfigError::invalid(format!("{entry}.dns"), reason))?;
                (text, Some(target))
            }
            RawSource::Srv(text) => {
                if raw.weight.is_some() {
                    return Err(ConfigError::invalid(
                        format!("{entry}.weight"),
                        "an srv upstream takes its weights from the SRV records",
                    ));
                }
                let target = parse_srv_target(text.trim())
                    .map_err(|reason| ConfigError::invalid(format!("{entry}.srv"), reason))?;
                (text, Some(target))
            }
        };
        if let Some(target) = target {
            push_discovered(
                &mut discovered,
                entry,
                target,
                weight,
                raw.max_conns,
                raw.backup,
            )?;
            continue;
        }
        let addr = resolve(&format!("{entry}.addr"), text.trim())?;
        // A map, not a scan of the list: validation stays linear in the number of upstreams.
        if let Some(&other) = seen.get(&addr) {
            let other: &Upstream = &upstreams[other];
            return Err(ConfigError::invalid(
                entry,
                format!(
                    "`{}` is the same upstream as `{}`",
                    cut(&text),
                    cut(&other.name)
                ),
            ));
        }
        seen.insert(addr, upstreams.len());
        upstreams.push(Upstream {
            name: text.trim().to_owned(),
            addr,
            weight,
            max_conns: raw.max_conns,
            backup: raw.backup.unwrap_or(false),
            origin: None,
        });
    }
    let all_backups = upstreams.iter().all(|u| u.backup) && discovered.iter().all(|d| d.backup);
    if (!upstreams.is_empty() || !discovered.is_empty()) && all_backups {
        return Err(ConfigError::invalid(
            key,
            "every upstream is a backup: at least one must be a primary",
        ));
    }
    Ok((upstreams, discovered))
}

fn push_discovered(
    list: &mut Vec<DiscoveredName>,
    key: String,
    target: DiscoveryTarget,
    weight: usize,
    max_conns: Option<usize>,
    backup: Option<bool>,
) -> Result<(), ConfigError> {
    if let Some(other) = list.iter().find(|d| d.target == target) {
        return Err(ConfigError::invalid(
            key,
            format!("`{target}` is already followed by {}", other.key),
        ));
    }
    list.push(DiscoveredName {
        key,
        target,
        weight,
        max_conns,
        backup: backup.unwrap_or(false),
    });
    Ok(())
}

/// Whether `name` is a DNS name lb can look up: dot-separated labels of letters, digits, `-`
/// and `_`, each 1 to 63 characters, 253 in all (a final dot allowed).
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// `host:port` of a `dns:` upstream.
pub(crate) fn parse_dns_target(text: &str) -> Result<DiscoveryTarget, String> {
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "`{}` needs a port (host:port), e.g. api.default.svc.cluster.local:8080",
            cut(text)
        ));
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{}`: the port must be a number from 1 to 65535", cut(text)))?;
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return Err(format!(
            "`{}` is an address, not a name: write it as a plain upstream",
            cut(text)
        ));
    }
    if !is_dns_name(host) {
        return Err(format!("`{}` is not a valid DNS name", cut(host)));
    }
    Ok(DiscoveryTarget::Dns {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// `_service._proto.name` of an `srv:` upstream.
pub(crate) fn parse_srv_target(text: &str) -> Result<DiscoveryTarget, String> {
    let bad = || {
        format!(
            "`{}` is not of the form _service._proto.name, e.g. _http._tcp.api.service.consul",
            cut(text)
        )
    };
    if text.contains(':') {
        return Err(format!(
            "`{}`: an SRV name has no port (the records give it)",
            cut(text)
        ));
    }
    let mut labels = text.split('.');
    let (Some(service), Some(proto)) = (labels.next(), labels.next()) else {
        return Err(bad());
    };
    let rest: Vec<&str> = labels.collect();
    if service.len() < 2
        || !service.starts_with('_')
        || proto.len() < 2
        || !proto.starts_with('_')
        || rest.iter().all(|l| l.is_empty())
        || !is_dns_name(text)
    {
        return Err(bad());
    }
    Ok(DiscoveryTarget::Srv {
        name: text.to_ascii_lowercase(),
    })
}

/// The `discovery:` block: resolvers, refresh and its clamp.
fn validate_discovery(prefix: &str, raw: RawDiscovery) -> Result<DiscoveryConfig, ConfigError> {
    let defaults = DiscoveryConfig::default();
    let key = |k: &str| format!("{prefix}.discovery.{k}");
    let mut resolvers = Vec::new();
    for (i, text) in raw.resolvers.unwrap_or_default().iter().enumerate() {
        let text = text.trim();
        let addr = match text.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => match text.parse::<std::net::IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, 53),
                Err(_) => {
                    return Err(ConfigError::invalid(
                        key(&format!("resolvers[{i}]")),
                        format!(
                            "`{}` is not an address: write ip or ip:port, e.g. 127.0.0.1:53",
                            cut(text)
                        ),
                    ))
                }
            },
        };
        resolvers.push(addr);
    }
    let min_refresh = non_zero(
        &key("min_refresh"),
        raw.min_refresh.map_or(defaults.min_refresh, |d| d.0),
    )?;
    let max_refresh = raw
        .max_refresh
        .map_or(defaults.max_refresh.max(min_refresh), |d| d.0);
    if max_refresh < min_refresh {
        return Err(ConfigError::invalid(
            key("max_refresh"),
            format!("{max_refresh:?} is below min_refresh ({min_refresh:?})"),
        ));
    }
    let refresh = match raw.refresh.as_deref().map(str::trim) {
        None | Some("ttl") => Refresh::Ttl,
        Some(text) => {
            let every = super::values::parse_duration(text).map_err(|reason| {
                ConfigError::invalid(key("refresh"), format!("{reason}, or `ttl`"))
            })?;
            if every < min_refresh {
                return Err(ConfigError::invalid(
                    key("refresh"),
                    format!("{every:?} is below min_refresh ({min_refresh:?})"),
                ));
            }
            if every > max_refresh {
                return Err(ConfigError::invalid(
                    key("refresh"),
                    format!("{every:?} is above max_refresh ({max_refresh:?})"),
                ));
            }
            Refresh::Every(every)
        }
    };
    Ok(DiscoveryConfig {
        resolvers,
        refresh,
        min_refresh,
        max_refresh,
        ipv6: raw.ipv6.unwrap_or(defaults.ipv6),
        allow_empty: raw.allow_empty.unwrap_or(defaults.allow_empty),
    })
}

fn validate_queue(prefix: &str, raw: RawQueue) -> Result<QueueConfig, ConfigError> {
    let defaults = QueueConfig::default();
    Ok(QueueConfig {
        size: raw.size.unwrap_or(defaults.size),
        timeout: non_zero(
            &format!("{prefix}.queue.timeout"),
            raw.timeout.map_or(defaults.timeout, |d| d.0),
        )?,
    })
}

fn validate_timeouts(prefix: &str, t: Option<RawTimeouts>) -> Result<Timeouts, ConfigError> {
    let t = t.unwrap_or_default();
    let defaults = Timeouts::default();
    Ok(Timeouts {
        connect: non_zero(
            &format!("{prefix}.timeouts.connect"),
            t.connect.map_or(defaults.connect, |d| d.0),
        )?,
        read: non_zero(
            &format!("{prefix}.timeouts.read"),
            t.read.map_or(defaults.read, |d| d.0),
        )?,
        write: non_zero(
            &format!("{prefix}.timeouts.write"),
            t.write.map_or(defaults.write, |d| d.0),
        )?,
        idle: non_zero(
            &format!("{prefix}.timeouts.idle"),
            t.idle.map_or(defaults.idle, |d| d.0),
        )?,
    })
}

fn validate_health_check(
    prefix: &str,
    h: RawHealthCheck,
) -> Result<HealthCheckConfig, ConfigError> {
    let defaults = HealthCheckConfig::default();
    let count = |key: &str, v: Option<usize>, default: usize| -> Result<usize, ConfigError> {
        match v.unwrap_or(default) {
            0 => Err(ConfigError::invalid(key, "must be at least 1")),
            n => Ok(n),
        }
    };
    let path = h.path.unwrap_or(defaults.path);
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::invalid(
            format!("{prefix}.health_check.path"),
            format!("`{path}` must start with / and contain no spaces"),
        ));
    }
    let host = h.host.unwrap_or(defaults.host);
    if host.is_empty() || http::HeaderValue::from_str(&host).is_err() {
        return Err(ConfigError::invalid(
            format!("{prefix}.health_check.host"),
            format!("`{host}` is not a valid Host header value"),
        ));
    }
    let expect_status = match h.expect_status {
        Some(list) if list.is_empty() => {
            return Err(ConfigError::invalid(
                format!("{prefix}.health_check.expect_status"),
                "empty: give at least one status, e.g. [200] or [\"200-399\"]",
            ))
        }
        Some(list) => list.into_iter().map(|s| s.0).collect(),
        None => defaults.expect_status,
    };
    Ok(HealthCheckConfig {
        kind: h.kind.unwrap_or_default(),
        interval: non_zero(
            &format!("{prefix}.health_check.interval"),
            h.interval.map_or(defaults.interval, |d| d.0),
        )?,
        timeout: non_zero(
            &format!("{prefix}.health_check.timeout"),
            h.timeout.map_or(defaults.timeout, |d| d.0),
        )?,
        healthy_after: count(
            &format!("{prefix}.health_check.healthy_after"),
            h.healthy_after,
            defaults.healthy_after,
        )?,
        unhealthy_after: count(
            &format!("{prefix}.health_check.unhealthy_after"),
            h.unhealthy_after,
            defaults.unhealthy_after,
        )?,
        path,
        host,
        expect_status,
    })
}

fn validate_access_log(raw: RawAccessLog) -> Result<AccessLogSettings, ConfigError> {
    let path = raw.path.trim();
    if path.is_empty() {
        return Err(ConfigError::invalid(
            "lb.access_log.path",
            "empty: give a file path or \"stdout\"",
        ));
    }
    Ok(AccessLogSettings {
        path: (path != "stdout").then(|| PathBuf::from(path)),
        format: raw.format,
    })
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

fn failure_set(list: Option<Vec<FailureValue>>, default: OutcomeSet) -> OutcomeSet {
    match list {
        Some(list) => OutcomeSet(list.into_iter().map(|f| f.0).collect()),
        None => default,
    }
}

fn validate_retries(
    prefix: &str,
    raw: Option<RawRetries>,
    server: &ServerConf,
) -> Result<RetryPolicy, ConfigError> {
    let defaults = RetryPolicy::default();
    let block = raw.map(|r| r.block()).unwrap_or_default();
    let attempts = block.attempts.unwrap_or(defaults.attempts);
    if attempts >= server.max_retries {
        return Err(ConfigError::invalid(
            format!("{prefix}.retries.attempts"),
            format!(
                "{attempts} must be below the server's max_retries ({})",
                server.max_retries
            ),
        ));
    }
    let budget_percent = block.budget_percent.unwrap_or(defaults.budget_percent);
    if budget_percent > 100 {
        return Err(ConfigError::invalid(
            format!("{prefix}.retries.budget_percent"),
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

fn validate_passive(prefix: &str, raw: RawPassiveHealth) -> Result<PassiveHealth, ConfigError> {
    let defaults = PassiveHealth::default();
    let eject_for = non_zero(
        &format!("{prefix}.passive_health.eject_for"),
        raw.eject_for.map_or(defaults.eject_for, |d| d.0),
    )?;
    let max_eject_for = raw
        .max_eject_for
        .map_or(defaults.max_eject_for.max(eject_for), |d| d.0);
    if max_eject_for < eject_for {
        return Err(ConfigError::invalid(
            format!("{prefix}.passive_health.max_eject_for"),
            "must not be shorter than eject_for",
        ));
    }
    let max_ejected_percent = raw
        .max_ejected_percent
        .unwrap_or(defaults.max_ejected_percent);
    if max_ejected_percent > 100 {
        return Err(ConfigError::invalid(
            format!("{prefix}.passive_health.max_ejected_percent"),
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
