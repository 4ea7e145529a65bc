//! Service discovery: the `dns:` and `srv:` upstreams of the pools, looked up in the
//! background and followed as their records change.
//!
//! [`Discovery`] holds, per pool and name, the last good set of addresses and when to look
//! again: the answer's TTL clamped to `min_refresh`..`max_refresh` (or the fixed `refresh`),
//! and after a failure a backoff from `min_refresh` doubling up to `max_refresh`. A failed
//! lookup keeps the last good set. [`Discovery::expand`] writes the current sets into a
//! configuration's pools as upstreams (marked with their `origin`), so that the rest of lb sees
//! ordinary upstreams; the operations layer rebuilds the routing when a set changes, exactly as
//! a reload does for a changed upstream list.
//!
//! pingora's `ServiceDiscovery` trait is not used: it would change the backends inside one
//! pingora `LoadBalancer`, whereas lb picks upstreams itself (its `Pool`, with the state kept
//! in the registry) and uses pingora's set only for the health checks; a changed set must
//! reach the picking, the checks, the admin API and the metrics alike, which a new routing
//! does.
//!
//! Depends on: [`crate::config`], [`crate::observe`] (its metrics); the resolver is
//! hickory-resolver (see [`lookup`]).

mod lookup;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::config::{DiscoveredName, DiscoveryTarget, LbConfig, PoolConfig, Refresh, Upstream};
use crate::observe::metrics::Metrics;

pub(crate) use lookup::Found;

/// A name that did not resolve when it had to (at start, or when a reload added it).
#[derive(Debug, thiserror::Error)]
#[error("{key}: `{target}` does not resolve: {reason} (set discovery.allow_empty: true to start without its addresses)")]
pub(crate) struct DiscoveryError {
    pub(crate) key: String,
    pub(crate) target: String,
    pub(crate) reason: String,
}

/// What is known of one name in one pool.
#[derive(Debug, Clone)]
pub(crate) struct NameState {
    /// The last good set, sorted by address.
    pub(crate) found: Vec<Found>,
    pub(crate) last_refresh: Option<SystemTime>,
    pub(crate) last_success: Option<SystemTime>,
    /// The last lookup's error, while lookups fail.
    pub(crate) last_error: Option<String>,
    /// Consecutive failed lookups.
    failures: u32,
    next_due: Instant,
    pub(crate) refreshes: u64,
    pub(crate) errors: u64,
}

impl NameState {
    fn new() -> Self {
        NameState {
            found: Vec::new(),
            last_refresh: None,
            last_success: None,
            last_error: None,
            failures: 0,
            next_due: Instant::now(),
            refreshes: 0,
            errors: 0,
        }
    }
}

/// One name as the admin API shows it.
pub(crate) struct NameView {
    pub(crate) pool: String,
    pub(crate) target: String,
    pub(crate) state: NameState,
}

type NameKey = (String, DiscoveryTarget);

/// The process's discovered names and their last good sets.
pub(crate) struct Discovery {
    names: Mutex<BTreeMap<NameKey, NameState>>,
    metrics: Arc<Metrics>,
    /// Held while a routing is built from the current one and swapped in, by discovery and by
    /// reload alike, so that neither undoes the other's change.
    pub(crate) apply: tokio::sync::Mutex<()>,
}

impl Discovery {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Discovery {
            names: Mutex::default(),
            metrics,
            apply: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NameKey, NameState>> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks up every name of `lb` not known yet (all of them at start, those a reload added
    /// later). One that does not resolve is an error unless its pool allows it to be empty.
    pub(crate) async fn resolve_new(&self, lb: &LbConfig) -> Result<(), DiscoveryError> {
        let new: Vec<(&PoolConfig, &DiscoveredName)> = {
            let names = self.lock();
            lb.pools
                .iter()
                .flat_map(|p| p.discovered.iter().map(move |d| (p, d)))
                .filter(|(p, d)| !names.contains_key(&(p.name.clone(), d.target.clone())))
                .collect()
        };
        let results =
            futures::future::join_all(new.iter().map(|(pool, name)| self.refresh(pool, name)))
                .await;
        for ((pool, name), _) in new.iter().zip(results) {
            let names = self.lock();
            let Some(state) = names.get(&(pool.name.clone(), name.target.clone())) else {
                continue;
            };
            if state.found.is_empty() && !pool.discovery.allow_empty {
                let error = DiscoveryError {
                    key: format!(
                        "{}.{}",
                        name.key,
                        match name.target {
                            DiscoveryTarget::Dns { .. } => "dns",
                            DiscoveryTarget::Srv { .. } => "srv",
                        }
                    ),
                    target: name.target.to_string(),
                    reason: state.last_error.clone().unwrap_or_default(),
                };
                drop(names);
                // Not kept: the next attempt (another start, a reload) tries it afresh.
                self.lock()
                    .remove(&(pool.name.clone(), name.target.clone()));
                return Err(error);
            }
        }
        Ok(())
    }

    /// The names of `lb` whose lookup is due.
    pub(crate) fn due<'a>(&self, lb: &'a LbConfig) -> Vec<(&'a PoolConfig, &'a DiscoveredName)> {
        let now = Instant::now();
        let names = self.lock();
        lb.pools
            .iter()
            .flat_map(|p| p.discovered.iter().map(move |d| (p, d)))
            .filter(|(p, d)| {
                names
                    .get(&(p.name.clone(), d.target.clone()))
                    .is_none_or(|s| s.next_due <= now)
            })
            .collect()
    }

    /// Looks `name` up once and records the outcome; returns whether its set changed.
    pub(crate) async fn refresh(&self, pool: &PoolConfig, name: &DiscoveredName) -> bool {
        let settings = &pool.discovery;
        let target = name.target.to_string();
        let outcome = match lookup::resolver(settings) {
            Ok(resolver) => lookup::lookup(&resolver, &name.target).await,
            Err(e) => Err(e),
        };
        let labels = [pool.name.as_str(), target.as_str()];
        self.metrics
            .discovery_refreshes
            .with_label_values(&labels)
            .inc();
        let mut names = self.lock();
        let state = names
            .entry((pool.name.clone(), name.target.clone()))
            .or_insert_with(NameState::new);
        let now = SystemTime::now();
        state.last_refresh = Some(now);
        state.refreshes += 1;
        match outcome {
            Ok(answer) => {
                let wait = match settings.refresh {
                    Refresh::Ttl => answer.ttl,
                    Refresh::Every(every) => every,
                }
                .clamp(settings.min_refresh, settings.max_refresh);
                state.next_due = Instant::now() + wait;
                if state.last_error.take().is_some() {
                    log::info!(
                        "discovery: {} in pool {}: lookups succeed again",
                        target,
                        pool.name
                    );
                }
                state.failures = 0;
                state.last_success = Some(now);
                self.metrics
                    .discovery_last_success
                    .with_label_values(&labels)
                    .set(unix_seconds(now));
                self.metrics
                    .discovery_addresses
                    .with_label_values(&labels)
                    .set(answer.found.len() as i64);
                if answer.found == state.found {
                    return false;
                }
                log::info!(
                    "discovery: {} in pool {} now has {} address{}: {}",
                    target,
                    pool.name,
                    answer.found.len(),
                    if answer.found.len() == 1 { "" } else { "es" },
                    answer
                        .found
                        .iter()
                        .map(|f| f.addr.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                state.found = answer.found;
                true
            }
            Err(reason) => {
                state.errors += 1;
                state.failures = state.failures.saturating_add(1);
                let backoff = settings
                    .min_refresh
                    .saturating_mul(1u32 << (state.failures - 1).min(16))
                    .min(settings.max_refresh);
                state.next_due = Instant::now() + backoff;
                self.metrics
                    .discovery_errors
                    .with_label_values(&labels)
                    .inc();
                // Once per change of state: the first failure after a success, or a new reason.
                if state.last_error.as_deref() != Some(reason.as_str()) {
                    let kept = match state.found.len() {
                        0 => "no addresses yet".to_string(),
                        1 => "keeping the last address".to_string(),
                        n => format!("keeping the last {n} addresses"),
                    };
                    log::warn!(
                        "discovery: lookup of {target} for pool {} failed: {reason}; {kept}, retrying with backoff",
                        pool.name,
                    );
                }
                state.last_error = Some(reason);
                false
            }
        }
    }

    /// Writes the current sets into `lb`'s pools: the upstreams discovered before are replaced
    /// by those of now, after the static ones (an address already there is not added twice).
    pub(crate) fn expand(&self, lb: &mut LbConfig) {
        let names = self.lock();
        for pool in &mut lb.pools {
            pool.upstreams.retain(|u| u.origin.is_none());
            let mut seen: std::collections::HashSet<std::net::SocketAddr> =
                pool.upstreams.iter().map(|u| u.addr).collect();
            for name in &pool.discovered {
                let Some(state) = names.get(&(pool.name.clone(), name.target.clone())) else {
                    continue;
                };
                let origin = name.target.to_string();
                for found in &state.found {
                    if !seen.insert(found.addr) {
                        continue;
                    }
                    pool.upstreams.push(Upstream {
                        name: found.addr.to_string(),
                        addr: found.addr,
                        weight: found.weight.unwrap_or(name.weight),
                        max_conns: name.max_conns,
                        backup: name.backup || found.backup,
                        origin: Some(origin.clone()),
                    });
                }
            }
        }
    }

    /// Forgets the names `lb` no longer has, with their metric series.
    pub(crate) fn retain(&self, lb: &LbConfig) {
        let kept: std::collections::HashSet<NameKey> = lb
            .pools
            .iter()
            .flat_map(|p| {
                p.discovered
                    .iter()
                    .map(|d| (p.name.clone(), d.target.clone()))
            })
            .collect();
        self.lock().retain(|key, _| {
            let keep = kept.contains(key);
            if !keep {
                self.metrics.forget_discovered(&key.0, &key.1.to_string());
            }
            keep
        });
    }

    /// Every name known, for the admin API.
    pub(crate) fn view(&self) -> Vec<NameView> {
        self.lock()
            .iter()
            .map(|((pool, target), state)| NameView {
                pool: pool.clone(),
                target: target.to_string(),
                state: state.clone(),
            })
            .collect()
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
