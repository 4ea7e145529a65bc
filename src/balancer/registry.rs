//! Every upstream's live state, by address, for the life of the process, plus what is shared by
//! all routings: the metrics, the retry budget and the change counters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::retry_budget::RetryBudget;
use super::upstream::{Epochs, State, UpstreamState, ALL_STATES};
use crate::config::Upstream;
use crate::observe::metrics::{Metrics, UpstreamStats};

/// The process's upstream states. A reload builds a new routing over the same registry, so an
/// upstream that stays keeps its health, ejection, admin state and counters.
pub struct Registry {
    states: Mutex<HashMap<SocketAddr, Arc<UpstreamState>>>,
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

    /// The states of `upstreams`, in order, created where new. Addresses no longer configured
    /// are forgotten (requests still holding them keep their own reference).
    pub(crate) fn members(&self, upstreams: &[Upstream]) -> Vec<Arc<UpstreamState>> {
        let ramp = self.serving.load(Ordering::Relaxed);
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let members: Vec<Arc<UpstreamState>> = upstreams
            .iter()
            .map(|u| {
                states
                    .entry(u.addr)
                    .or_insert_with(|| {
                        let stats = UpstreamStats::new(&self.metrics, &u.addr.to_string());
                        Arc::new(UpstreamState::new(u.addr, ramp, stats, self.epochs.clone()))
                    })
                    .clone()
            })
            .collect();
        if states.len() > members.len() {
            let kept: std::collections::HashSet<SocketAddr> =
                upstreams.iter().map(|u| u.addr).collect();
            states.retain(|addr, _| {
                let keep = kept.contains(addr);
                if !keep {
                    self.metrics
                        .forget_upstream(&addr.to_string(), &ALL_STATES.map(State::as_str));
                }
                keep
            });
        }
        members
    }

    /// Every upstream state this process knows.
    pub(crate) fn all_states(&self) -> Vec<Arc<UpstreamState>> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.values().cloned().collect()
    }

    /// The state of the upstream at `addr`, if it is configured.
    pub(crate) fn state_of(&self, addr: SocketAddr) -> Option<Arc<UpstreamState>> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.get(&addr).cloned()
    }

    pub(crate) fn set_serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }
}
