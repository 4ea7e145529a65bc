//! The routing snapshot: everything a request needs to be routed, immutable, behind an
//! [`ArcSwap`]. A reload builds a new one and swaps it in; requests in flight keep the one they
//! started with.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::lb::health_check::HealthCheck;

use super::passive;
use super::registry::Registry;
use super::selection::Pool;
use crate::config::LbConfig;
use crate::observe::access_log::AccessLog;

/// How requests are routed right now.
pub(crate) struct Routing {
    pub(crate) config: LbConfig,
    pub(crate) pool: Pool,
    /// Every upstream's live state, shared by all routings of this process.
    pub(crate) registry: Arc<Registry>,
    /// Whether active checks are on.
    checked: bool,
    /// Off when `None`.
    pub(crate) access_log: Option<AccessLog>,
}

/// The current routing, replaced as a whole on reload.
pub(crate) type SharedRouting = Arc<ArcSwap<Routing>>;

/// An active health check over a pool's upstreams, as built by [`crate::health`].
pub type Check = Box<dyn HealthCheck + Send + Sync>;

impl Routing {
    /// Builds the routing for `config`. Upstreams already in `registry` keep their state;
    /// `check` (built over `registry.members(..)` of the pool) marks them up and down, or
    /// `None` when checks are off; `previous` lends its access log when that is configured
    /// the same.
    pub(crate) fn new(
        config: LbConfig,
        registry: Arc<Registry>,
        previous: Option<&Routing>,
        check: Option<Check>,
    ) -> std::io::Result<Self> {
        let access_log = match &config.access_log {
            None => None,
            Some(settings) => match previous.and_then(|p| p.access_log.as_ref()) {
                Some(log) if log.settings() == settings => Some(log.clone()),
                _ => Some(AccessLog::open(settings)?),
            },
        };
        let checked = check.is_some();
        let pool = Pool::new(&config.pool, &registry, check);
        if !checked {
            for member in &pool.members {
                member.state.unchecked();
            }
        }
        Ok(Routing {
            config,
            pool,
            registry,
            checked,
            access_log,
        })
    }

    pub(crate) fn shared(self) -> SharedRouting {
        Arc::new(ArcSwap::from_pointee(self))
    }

    /// Runs one round of active checks over every upstream, concurrently.
    pub(crate) async fn check_round(&self) {
        if self.checked {
            self.pool.backends().run_health_check(true).await;
        }
    }

    /// Time between check rounds, or `None` when checks are off.
    pub(crate) fn check_interval(&self) -> Option<Duration> {
        self.checked
            .then_some(self.config.pool.health_check.interval)
    }

    /// Ends the passive ejections whose time is up.
    pub(crate) fn end_due_ejections(&self) {
        passive::end_due_ejections(&self.pool.members);
    }
}
