//! Choosing the upstream for a request.
//!
//! The upstream set and its active checks live in pingora's [`LoadBalancer`] (see
//! [`crate::health`]); the picking is done here, because it must see what pingora's selectors
//! do not: requests in flight, latency, passive ejection, admin state, slow start and
//! `max_conns`. All of that is read from the long-lived [`UpstreamState`]s, so a selector can be
//! rebuilt (on reload, on a weight change) without losing anything.
//!
//! One file per algorithm family: [`weighted`] (smooth weighted round robin and weighted
//! random), [`least_conn`], [`p2c`] (power of two choices on peak-EWMA latency), [`ring`]
//! (consistent hashing); [`queue`] is the wait for a free upstream when every usable one is at
//! its `max_conns`. Every algorithm picks in constant or logarithmic time in the number of
//! upstreams; a linear scan is only the fallback when most of the pool is unusable or a retry
//! excludes upstreams.
//!
//! Upstreams are split into two tiers: primaries, and backups used only while no primary is
//! usable.

mod least_conn;
mod p2c;
pub(crate) mod queue;
mod ring;
mod weighted;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::FutureExt;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use rand::Rng;
use tokio::sync::Notify;

use super::registry::Registry;
use super::routing::Check;
use super::upstream::{Epochs, UpstreamState};
use crate::clock::now_ms;
use crate::config::{PoolConfig, Selection, Upstream};
use crate::observe::metrics::Metrics;

pub use ring::hash_bytes;

/// One configured upstream with its live state.
#[derive(Clone)]
pub(crate) struct Member {
    pub(crate) upstream: Upstream,
    pub(crate) state: Arc<UpstreamState>,
}

impl Member {
    /// The weight in force, slow start included, in thousandths.
    fn effective_weight(&self, now: u64, slow_start: Duration) -> u64 {
        let weight = self.state.weight(self.upstream.weight) as f64;
        ((weight * self.state.ramp(now, slow_start) * 1000.0) as u64).max(1)
    }

    /// Whether this upstream may take a new request (capacity aside) from a request that has
    /// already tried the upstreams in `exclude`.
    fn eligible(&self, now: u64, exclude: &[SocketAddr]) -> bool {
        self.state.usable(now) && !exclude.contains(&self.upstream.addr)
    }

    /// Takes a slot below `max_conns`.
    fn try_acquire(&self) -> bool {
        self.state.try_acquire(self.upstream.max_conns)
    }
}

/// The result of a pick.
pub enum Pick {
    /// An upstream, with a slot of its `max_conns` held until the lease is dropped.
    Got(Lease),
    /// Usable upstreams exist but every one is at its `max_conns`.
    Busy,
    /// No usable upstream (outside `exclude`).
    Empty,
}

/// A request's hold on an upstream: counts as in flight until dropped.
pub struct Lease {
    tier: Arc<Tier>,
    index: usize,
}

impl Lease {
    pub(crate) fn state(&self) -> &Arc<UpstreamState> {
        &self.tier.members[self.index].state
    }

    pub fn upstream(&self) -> &Upstream {
        &self.tier.members[self.index].upstream
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.state().release();
        self.tier.released(self.index);
    }
}

/// The upstreams of one routing and the algorithm that picks among them.
pub struct Pool {
    /// The pool's settings: selection, retries, timeouts, queue, health checks.
    pub(crate) config: PoolConfig,
    /// pingora's upstream set: holds the active health checks.
    checked: LoadBalancer<RoundRobin>,
    /// Whether active checks are on.
    has_check: bool,
    pub(crate) members: Vec<Member>,
    primary: Arc<Tier>,
    backup: Option<Arc<Tier>>,
    /// Requests waiting for a slot below `max_conns`, and their wake-up.
    waiting: Arc<AtomicUsize>,
    freed: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl Pool {
    /// Builds the pool for `config`; `check`, when given, is what marks upstreams up and down.
    pub fn new(config: &PoolConfig, registry: &Registry, check: Option<Check>) -> Self {
        let states = registry.members(&config.name, &config.upstreams);
        let members: Vec<Member> = config
            .upstreams
            .iter()
            .zip(states)
            .map(|(upstream, state)| Member {
                upstream: upstream.clone(),
                state,
            })
            .collect();
        let set: BTreeSet<Backend> = config.upstreams.iter().map(backend_for).collect();
        let mut checked = LoadBalancer::from_backends(Backends::new(discovery::Static::new(set)));
        let has_check = check.is_some();
        if let Some(check) = check {
            checked.set_health_check(check);
        } else {
            for member in &members {
                member.state.unchecked();
            }
        }
        // Static discovery answers at once; this fills pingora's set from the list.
        if !matches!(checked.update().now_or_never(), Some(Ok(()))) {
            log::error!("building the upstream set did not complete");
        }
        let waiting = Arc::new(AtomicUsize::new(0));
        let freed = Arc::new(Notify::new());
        let tier = |list: Vec<Member>| {
            Arc::new(Tier::new(
                list,
                config,
                registry.epochs().clone(),
                waiting.clone(),
                freed.clone(),
            ))
        };
        let (backups, primaries): (Vec<Member>, Vec<Member>) =
            members.iter().cloned().partition(|m| m.upstream.backup);
        // Validation guarantees a primary; an all-backup list still works as one tier.
        let (primary, backup) = if primaries.is_empty() {
            (tier(backups), None)
        } else {
            (
                tier(primaries),
                (!backups.is_empty()).then(|| tier(backups)),
            )
        };
        Pool {
            config: config.clone(),
            checked,
            has_check,
            backup,
            primary,
            members,
            waiting,
            freed,
            metrics: registry.metrics().clone(),
        }
    }

    /// Runs one round of active checks over every upstream, concurrently.
    pub(crate) async fn check_round(&self) {
        if self.has_check {
            self.checked.backends().run_health_check(true).await;
        }
    }

    /// Time between check rounds, or `None` when checks are off.
    pub(crate) fn check_interval(&self) -> Option<std::time::Duration> {
        self.has_check.then_some(self.config.health_check.interval)
    }

    /// Picks an upstream outside `exclude`; `hash` is the request's key for `consistent_hash`.
    pub fn pick(&self, hash: u64, exclude: &[SocketAddr]) -> Pick {
        match self.primary.pick(hash, exclude) {
            Pick::Empty => match &self.backup {
                Some(backup) => backup.pick(hash, exclude),
                None => Pick::Empty,
            },
            other => other,
        }
    }

    /// Whether any upstream outside `exclude` could take a request now (capacity aside).
    pub(crate) fn has_usable(&self, exclude: &[SocketAddr]) -> bool {
        let now = now_ms();
        self.members.iter().any(|m| m.eligible(now, exclude))
    }
}

/// Primaries or backups, with their selector.
struct Tier {
    members: Vec<Member>,
    picker: Picker,
    slow_start: Duration,
    epochs: Arc<Epochs>,
    waiting: Arc<AtomicUsize>,
    freed: Arc<Notify>,
}

enum Picker {
    RoundRobin(ArcSwap<weighted::Schedule>),
    Random(ArcSwap<weighted::Schedule>),
    LeastConn(Mutex<least_conn::MinTree>),
    P2cEwma,
    ConsistentHash(ring::Ring),
}

/// What a pick saw on its way, to tell "busy" from "empty" when it finds nothing.
#[derive(Default)]
struct Seen {
    usable: bool,
}

impl Seen {
    fn verdict(&self) -> Pick {
        if self.usable {
            Pick::Busy
        } else {
            Pick::Empty
        }
    }
}

impl Tier {
    fn new(
        members: Vec<Member>,
        config: &PoolConfig,
        epochs: Arc<Epochs>,
        waiting: Arc<AtomicUsize>,
        freed: Arc<Notify>,
    ) -> Self {
        let picker = match config.selection {
            Selection::RoundRobin => Picker::RoundRobin(ArcSwap::from_pointee(
                weighted::Schedule::new(&members, epochs.weights()),
            )),
            Selection::Random => Picker::Random(ArcSwap::from_pointee(weighted::Schedule::new(
                &members,
                epochs.weights(),
            ))),
            Selection::LeastConn => {
                Picker::LeastConn(Mutex::new(least_conn::MinTree::new(members.len())))
            }
            Selection::P2cEwma => Picker::P2cEwma,
            Selection::ConsistentHash => Picker::ConsistentHash(ring::Ring::new(&members)),
        };
        Tier {
            members,
            picker,
            slow_start: config.slow_start,
            epochs,
            waiting,
            freed,
        }
    }

    fn lease(self: &Arc<Self>, index: usize) -> Pick {
        Pick::Got(Lease {
            tier: self.clone(),
            index,
        })
    }

    /// Tries to take `index`: eligible, below its limit, and (while ramping up) lucky in
    /// proportion to its ramp.
    fn try_take(&self, index: usize, now: u64, exclude: &[SocketAddr], saw: &mut Seen) -> bool {
        let m = &self.members[index];
        if !m.eligible(now, exclude) {
            return false;
        }
        saw.usable = true;
        if !self.slow_start.is_zero() {
            let ramp = m.state.ramp(now, self.slow_start);
            if ramp < 1.0 && rand::thread_rng().gen::<f64>() > ramp {
                return false;
            }
        }
        m.try_acquire()
    }

    /// Takes `index` if it is eligible and below its limit, ignoring slow start.
    fn try_take_now(&self, index: usize, now: u64, exclude: &[SocketAddr], saw: &mut Seen) -> bool {
        let m = &self.members[index];
        if !m.eligible(now, exclude) {
            return false;
        }
        saw.usable = true;
        m.try_acquire()
    }

    /// The linear fallback: the first upstream that can be taken, from a random start (slow
    /// start is ignored here: something must be picked).
    fn scan(self: &Arc<Self>, now: u64, exclude: &[SocketAddr], mut saw: Seen) -> Pick {
        let n = self.members.len();
        let start = rand::thread_rng().gen_range(0..n);
        for i in (0..n).map(|k| (start + k) % n) {
            if self.try_take_now(i, now, exclude, &mut saw) {
                return self.lease(i);
            }
        }
        saw.verdict()
    }

    fn pick(self: &Arc<Self>, hash: u64, exclude: &[SocketAddr]) -> Pick {
        // A pool whose `dns:`/`srv:` names resolve to nothing yet (`allow_empty`).
        if self.members.is_empty() {
            return Pick::Empty;
        }
        let now = now_ms();
        let mut saw = Seen::default();
        // Bounded attempts of the algorithm proper before the scan takes over.
        let tries = 2 * self.members.len().min(32) + 2;
        let found = match &self.picker {
            Picker::RoundRobin(schedule) => {
                weighted::pick(self, schedule, false, now, exclude, tries, &mut saw)
            }
            Picker::Random(schedule) => {
                weighted::pick(self, schedule, true, now, exclude, tries, &mut saw)
            }
            Picker::LeastConn(tree) => least_conn::pick(self, tree, now, exclude, tries, &mut saw),
            Picker::P2cEwma => p2c::pick(self, now, exclude, tries, &mut saw),
            Picker::ConsistentHash(ring) => {
                // The ring walk is complete by itself: no scan after it.
                return match ring::pick(self, ring, hash, now, exclude, &mut saw) {
                    Some(index) => self.lease(index),
                    None => saw.verdict(),
                };
            }
        };
        match found {
            Some(index) => self.lease(index),
            None => self.scan(now, exclude, saw),
        }
    }

    /// A request let go of `index`: selectors that track load hear of it, and so does a
    /// request waiting in the queue.
    fn released(&self, index: usize) {
        if let Picker::LeastConn(tree) = &self.picker {
            let mut tree = tree.lock().unwrap_or_else(|p| p.into_inner());
            tree.update(self, index, now_ms(), false);
        }
        queue::wake_one(&self.waiting, &self.freed);
    }
}

/// pingora's description of one configured upstream.
pub(crate) fn backend_for(upstream: &Upstream) -> Backend {
    Backend {
        addr: PeerAddr::Inet(upstream.addr),
        weight: upstream.weight,
        ext: Default::default(),
    }
}

#[cfg(test)]
mod tests;
