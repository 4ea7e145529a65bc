//! The routing snapshot: everything a request needs to be routed — the routes, the pools with
//! their upstreams and settings, the access log — immutable, behind an [`ArcSwap`]. A reload
//! builds a new one and swaps it in; requests in flight keep the one they started with, so a
//! removed pool finishes its requests.

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::lb::health_check::HealthCheck;

use super::passive;
use super::registry::Registry;
use super::routes::RouteTable;
use super::selection::Pool;
use super::upstream::UpstreamState;
use crate::config::{LbConfig, PoolConfig};
use crate::observe::access_log::AccessLog;

/// How requests are routed right now.
pub(crate) struct Routing {
    pub(crate) config: LbConfig,
    /// In the order of `config.pools`.
    pub(crate) pools: Vec<Pool>,
    pub(crate) routes: RouteTable,
    /// Every upstream's live state, shared by all routings of this process.
    pub(crate) registry: Arc<Registry>,
    /// Off when `None`.
    pub(crate) access_log: Option<AccessLog>,
}

/// The current routing, replaced as a whole on reload.
pub(crate) type SharedRouting = Arc<ArcSwap<Routing>>;

/// An active health check over a pool's upstreams, as built by [`crate::health`].
pub type Check = Box<dyn HealthCheck + Send + Sync>;

impl Routing {
    /// Builds the routing for `config`. Upstreams already in `registry` keep their state;
    /// `check` builds each pool's active check over its upstreams' states (`None` when checks
    /// are off); `previous` lends its access log when that is configured the same.
    pub(crate) fn new(
        config: LbConfig,
        registry: Arc<Registry>,
        previous: Option<&Routing>,
        check: impl Fn(&PoolConfig, &[Arc<UpstreamState>]) -> Option<Check>,
    ) -> std::io::Result<Self> {
        let access_log = match &config.access_log {
            None => None,
            Some(settings) => match previous.and_then(|p| p.access_log.as_ref()) {
                Some(log) if log.settings() == settings => Some(log.clone()),
                _ => Some(AccessLog::open(settings)?),
            },
        };
        let pools = config
            .pools
            .iter()
            .map(|pool| {
                let states = registry.members(&pool.name, &pool.upstreams);
                Pool::new(pool, &registry, check(pool, &states))
            })
            .collect();
        registry.retain(&config.pools);
        Ok(Routing {
            routes: RouteTable::new(&config.routes),
            config,
            pools,
            registry,
            access_log,
        })
    }

    pub(crate) fn shared(self) -> SharedRouting {
        Arc::new(ArcSwap::from_pointee(self))
    }

    /// Runs one round of active checks over every pool, concurrently.
    pub(crate) async fn check_round(&self) {
        futures::future::join_all(self.pools.iter().map(Pool::check_round)).await;
    }

    /// Ends the passive ejections whose time is up.
    pub(crate) fn end_due_ejections(&self) {
        for pool in &self.pools {
            passive::end_due_ejections(&pool.members);
        }
    }

    pub(crate) fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.config.name == name)
    }
}
