//! Every upstream's live state, by address, for the life of the process, plus what is shared by
//! all routings: the metrics, the retry budget and the change counters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::retry_budget::RetryBudget;
use super::upstream::{Epochs, State, UpstreamState, ALL_STATES};
use crate::config::{PoolConfig, Upstream};
use crate::observe::metrics::{Metrics, UpstreamStats};

/// An upstream is one address in one pool.
type UpstreamKey = (Arc<str>, SocketAddr);

/// The process's upstream states, by pool and address. A reload builds a new routing over the
/// same registry, so an upstream that stays in its pool keeps its health, ejection, admin
/// state and counters. The same address in two pools is two upstreams: each pool checks it
/// with its own health check and keeps its own state.
pub struct Registry {
    states: Mutex<HashMap<UpstreamKey, Arc<UpstreamState>>>,
    /// Set once the first health round is done: upstreams added later ramp up.
    serving: AtomicBool,
    pub(crate) retry_budget: RetryBudget,
    metrics: Arc<Metrics>,
    epochs: Arc<Epochs>,
}

impl Registry {
    /// An empty registry with metrics of its own.
    pub fn new() -> Arc<Self> {
        Arc::new(Registry {
            states: Mutex::default(),
            serving: AtomicBool::new(false),
            retry_budget: RetryBudget::default(),
            metrics: Arc::new(Metrics::new()),
            epochs: Arc::default(),
        })
    }

    /// The metrics every upstream and request of this process count into.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(crate) fn epochs(&self) -> &Arc<Epochs> {
        &self.epochs
    }

    /// The states of pool `pool`'s `upstreams`, in order, created where new.
    pub(crate) fn members(&self, pool: &str, upstreams: &[Upstream]) -> Vec<Arc<UpstreamState>> {
        let ramp = self.serving.load(Ordering::Relaxed);
        let pool: Arc<str> = pool.into();
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        upstreams
            .iter()
            .map(|u| {
                states
                    .entry((pool.clone(), u.addr))
                    .or_insert_with(|| {
                        let stats = UpstreamStats::new(&self.metrics, &pool, &u.addr.to_string());
                        Arc::new(UpstreamState::new(
                            pool.clone(),
                            u.addr,
                            ramp,
                            stats,
                            self.epochs.clone(),
                        ))
                    })
                    .clone()
            })
            .collect()
    }

    /// Forgets the upstreams that are in none of `pools` (requests still holding them keep
    /// their own reference), with their metric series.
    pub(crate) fn retain(&self, pools: &[PoolConfig]) {
        let kept: std::collections::HashSet<(&str, SocketAddr)> = pools
            .iter()
            .flat_map(|p| p.upstreams.iter().map(|u| (p.name.as_str(), u.addr)))
            .collect();
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|(pool, addr), _| {
            let keep = kept.contains(&(&**pool, *addr));
            if !keep {
                self.metrics.forget_upstream(
                    pool,
                    &addr.to_string(),
                    &ALL_STATES.map(State::as_str),
                );
            }
            keep
        });
    }

    /// Every upstream state this process knows.
    pub(crate) fn all_states(&self) -> Vec<Arc<UpstreamState>> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.values().cloned().collect()
    }

    /// The state of the upstream at `addr` in pool `pool`, if it is configured.
    pub(crate) fn state_of(&self, pool: &str, addr: SocketAddr) -> Option<Arc<UpstreamState>> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.get(&(Arc::from(pool), addr)).cloned()
    }

    pub(crate) fn set_serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }
}
