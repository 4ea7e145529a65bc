//! Following `dns:` and `srv:` upstreams: the lookups at start (and by `lb -t`), and the
//! background service that looks names up again when due and, when a set changed, builds a
//! new routing from the current one and swaps it in, as a reload does: a new address gets its
//! first health check before it takes traffic, a removed one finishes its requests in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::reload::{build_routing, describe_changes};
use crate::balancer::SharedRouting;
use crate::config::LbConfig;
use crate::discovery::{Discovery, DiscoveryError};

/// Looks up every name of `lb` once, on a runtime of its own (before pingora's start).
pub(crate) fn resolve_at_start(discovery: &Discovery, lb: &LbConfig) -> Result<(), DiscoveryError> {
    if lb.pools.iter().all(|p| p.discovered.is_empty()) {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DiscoveryError {
            key: "lb".to_string(),
            target: "the names".to_string(),
            reason: format!("cannot start a runtime for the lookups: {e}"),
        })?;
    runtime.block_on(discovery.resolve_new(lb))
}

/// How often due lookups are looked for.
const TICK: Duration = Duration::from_millis(250);

/// Looks names up again when due and applies changed sets.
pub(crate) struct DiscoveryService {
    routing: SharedRouting,
    discovery: Arc<Discovery>,
    /// A changed set could not be applied (the routing could not be built): try again.
    pending: AtomicBool,
    /// The last attempt to apply failed (so that the failure is logged once).
    failing: AtomicBool,
}

impl DiscoveryService {
    pub(crate) fn new(routing: SharedRouting, discovery: Arc<Discovery>) -> Self {
        DiscoveryService {
            routing,
            discovery,
            pending: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        }
    }

    /// One pass: the due lookups, concurrently, then the new routing if a set changed.
    async fn pass(&self) {
        let routing = self.routing.load_full();
        let due = self.discovery.due(&routing.config);
        if due.is_empty() {
            // A reload meanwhile may have dropped names.
            self.discovery.retain(&routing.config);
            if self.pending.swap(false, Ordering::Relaxed) {
                self.apply().await;
            }
            return;
        }
        let changed = futures::future::join_all(
            due.iter()
                .map(|(pool, name)| self.discovery.refresh(pool, name)),
        )
        .await;
        // A reload meanwhile may have dropped a name just looked up.
        self.discovery.retain(&self.routing.load().config);
        if changed.into_iter().any(|c| c) || self.pending.swap(false, Ordering::Relaxed) {
            self.apply().await;
        }
    }

    /// Rebuilds the current routing with the current sets.
    async fn apply(&self) {
        let _applying = self.discovery.apply.lock().await;
        let current = self.routing.load_full();
        let mut config = current.config.clone();
        self.discovery.expand(&mut config);
        if config == current.config {
            return;
        }
        let next = match build_routing(config, current.registry.clone(), Some(&current)) {
            Ok(next) => next,
            Err(e) => {
                // Logged once; retried on every pass until it works.
                if !self.failing.swap(true, Ordering::Relaxed) {
                    log::error!("discovery: the new upstream set was not applied: {e}; retrying");
                }
                self.pending.store(true, Ordering::Relaxed);
                return;
            }
        };
        self.failing.store(false, Ordering::Relaxed);
        // As on reload: kept upstreams keep their state, new ones get their first check now.
        next.check_round().await;
        log::info!(
            "discovery: upstreams changed: {}",
            describe_changes(&current.config, &next.config)
        );
        self.routing.store(Arc::new(next));
    }
}

#[async_trait]
impl BackgroundService for DiscoveryService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
            }
            self.pass().await;
        }
    }
}
