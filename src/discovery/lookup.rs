//! One lookup of one name with hickory-resolver: a `dns:` name's A/AAAA addresses, or an `srv:`
//! name's targets with their ports, weights and priorities. No caching here (the resolver's
//! cache is off): the caller schedules the next lookup from the answer's TTL.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};

use crate::config::{DiscoveryConfig, DiscoveryTarget, MAX_WEIGHT};

/// One address a name stands for now.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Found {
    pub(crate) addr: SocketAddr,
    /// From the SRV record (scaled into 1..=256); `None` for a `dns:` name (the entry's own).
    pub(crate) weight: Option<usize>,
    /// An SRV target of a priority below the best one's.
    pub(crate) backup: bool,
}

/// A successful lookup: the addresses (sorted, without repeats) and how long they hold.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) found: Vec<Found>,
    pub(crate) ttl: Duration,
}

/// How long one query may take before it counts as failed.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A resolver for `settings`: the configured name servers (UDP, and TCP for truncated answers)
/// or the system's, with its cache off.
pub(crate) fn resolver(settings: &DiscoveryConfig) -> Result<TokioResolver, String> {
    let mut builder = if settings.resolvers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?
    } else {
        let mut config = ResolverConfig::new();
        for &addr in &settings.resolvers {
            config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
    };
    let options = builder.options_mut();
    options.cache_size = 0;
    options.timeout = QUERY_TIMEOUT;
    options.attempts = 1;
    options.ip_strategy = if settings.ipv6 {
        LookupIpStrategy::Ipv4AndIpv6
    } else {
        LookupIpStrategy::Ipv4Only
    };
    Ok(builder.build())
}

/// Looks `target` up once.
pub(crate) async fn lookup(
    resolver: &TokioResolver,
    target: &DiscoveryTarget,
) -> Result<Answer, String> {
    match target {
        DiscoveryTarget::Dns { host, port } => {
            let (ips, ttl) = lookup_ips(resolver, host).await?;
            let found = ips
                .into_iter()
                .map(|ip| Found {
                    addr: SocketAddr::new(ip, *port),
                    weight: None,
                    backup: false,
                })
                .collect();
            Ok(Answer { found, ttl })
        }
        DiscoveryTarget::Srv { name } => lookup_srv(resolver, name).await,
    }
}

async fn lookup_ips(
    resolver: &TokioResolver,
    host: &str,
) -> Result<(Vec<IpAddr>, Duration), String> {
    let answer = resolver.lookup_ip(host).await.map_err(|e| describe(&e))?;
    let mut ips: Vec<IpAddr> = answer.iter().collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return Err("no addresses in the answer".to_string());
    }
    Ok((ips, remaining(answer.valid_until())))
}

async fn lookup_srv(resolver: &TokioResolver, name: &str) -> Result<Answer, String> {
    let answer = resolver.srv_lookup(name).await.map_err(|e| describe(&e))?;
    let mut ttl = remaining(answer.as_lookup().valid_until());
    // The targets' addresses the answer carries (hickory adds them when the server did not).
    let mut carried: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for record in answer.as_lookup().record_iter() {
        let ip = match record.data() {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        carried
            .entry(normal(&record.name().to_ascii()))
            .or_default()
            .push(ip);
    }
    let records: Vec<(u16, u16, u16, String)> = answer
        .iter()
        .map(|srv| {
            (
                srv.priority(),
                srv.weight(),
                srv.port(),
                normal(&srv.target().to_ascii()),
            )
        })
        .filter(|(_, _, port, target)| *port != 0 && target != ".")
        .collect();
    if records.is_empty() {
        return Err("no SRV records (or only ones with target `.`)".to_string());
    }
    let best = records.iter().map(|r| r.0).min().unwrap_or(0);
    let heaviest = records.iter().map(|r| r.1).max().unwrap_or(0) as usize;
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for (priority, weight, port, target) in records {
        let ips = match carried.get(&target) {
            Some(ips) => ips.clone(),
            None => match lookup_ips(resolver, &target).await {
                Ok((ips, target_ttl)) => {
                    ttl = ttl.min(target_ttl);
                    ips
                }
                Err(e) => {
                    errors.push(format!("{target}: {e}"));
                    continue;
                }
            },
        };
        for ip in ips {
            found.push(Found {
                addr: SocketAddr::new(ip, port),
                weight: Some(scale_weight(weight as usize, heaviest)),
                backup: priority > best,
            });
        }
    }
    if found.is_empty() {
        return Err(format!("no SRV target resolves ({})", errors.join("; ")));
    }
    found.sort();
    // One address listed by two records: the first (best priority, then heaviest) wins.
    let mut seen = std::collections::HashSet::new();
    found.retain(|f| seen.insert(f.addr));
    Ok(Answer { found, ttl })
}

/// An SRV weight (0 to 65535) as an lb weight (1 to 256), keeping proportions when the
/// heaviest is above 256.
fn scale_weight(weight: usize, heaviest: usize) -> usize {
    let scaled = if heaviest > MAX_WEIGHT {
        weight * MAX_WEIGHT / heaviest
    } else {
        weight
    };
    scaled.clamp(1, MAX_WEIGHT)
}

/// A name in lowercase with its final dot.
fn normal(name: &str) -> String {
    let mut name = name.to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

fn remaining(valid_until: Instant) -> Duration {
    valid_until.saturating_duration_since(Instant::now())
}

/// A lookup error in a line an operator reads.
fn describe(e: &ResolveError) -> String {
    if e.is_nx_domain() {
        "NXDOMAIN (no such name)".to_string()
    } else if e.is_no_records_found() {
        "no records of that type".to_string()
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_weights_keep_their_proportions() {
        assert_eq!(scale_weight(0, 10), 1);
        assert_eq!(scale_weight(3, 10), 3);
        assert_eq!(scale_weight(65535, 65535), 256);
        assert_eq!(scale_weight(32768, 65535), 128);
        assert_eq!(scale_weight(1, 65535), 1);
    }

    #[test]
    fn names_compare_in_one_form() {
        assert_eq!(normal("Api.Example"), "api.example.");
        assert_eq!(normal("api.example."), "api.example.");
    }
}
