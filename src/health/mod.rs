//! Active health checks.
//!
//! Depends on: [`crate::balancer`] (the upstream states it marks and the routing it checks),
//! [`crate::config`], [`crate::outcome`]. The operations layer builds it and is told, through a
//! callback, when the first round is done.
//!
//! pingora's [`TcpHealthCheck`] and [`HttpHealthCheck`] do the probing; [`UpstreamCheck`] wraps
//! them to add what operators need on top: a timeout per check, the `healthy_after` /
//! `unhealthy_after` hysteresis, a first round that decides the initial state of every upstream
//! (pingora would otherwise start them all as healthy), and one log line per state change with
//! the reason. [`HealthService`] runs the rounds in the background and tells the server it is
//! ready only after the first round, so no request reaches an upstream that was down at start.

mod check;

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;

use crate::balancer::SharedRouting;

pub(crate) use check::build_check;

/// Runs the health-check rounds in the background, always on the current routing (a reload
/// may replace it between two rounds).
pub(crate) struct HealthService {
    routing: SharedRouting,
    /// Called once the first round has decided every upstream's state (an upgrading process
    /// tells `lb upgrade` it may ask the old one to hand over).
    on_first_round: Box<dyn Fn() + Send + Sync>,
}

impl HealthService {
    pub(crate) fn new(
        routing: SharedRouting,
        on_first_round: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        HealthService {
            routing,
            on_first_round: Box::new(on_first_round),
        }
    }
}

/// How often ejections are looked at, and the longest a due check round waits.
const TICK: Duration = Duration::from_millis(250);

#[async_trait]
impl BackgroundService for HealthService {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        // Every upstream is checked once, concurrently, before traffic is served.
        let first = self.routing.load_full();
        first.check_round().await;
        first.registry.set_serving();
        (self.on_first_round)();
        ready.notify_ready();
        // Each pool runs on its own interval, by name, so a reload that keeps a pool keeps its
        // rhythm; ejections end on their own time, between rounds.
        let mut next_round: HashMap<String, Instant> = HashMap::new();
        let start = Instant::now();
        for pool in &first.pools {
            if let Some(interval) = pool.check_interval() {
                next_round.insert(pool.config.name.clone(), start + interval);
            }
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
            }
            let routing = self.routing.load_full();
            routing.end_due_ejections();
            let now = Instant::now();
            let due: Vec<_> = routing
                .pools
                .iter()
                .filter(|pool| {
                    let Some(interval) = pool.check_interval() else {
                        return false;
                    };
                    let next = next_round
                        .entry(pool.config.name.clone())
                        .or_insert(now + interval);
                    if now < *next {
                        return false;
                    }
                    *next = now + interval;
                    true
                })
                .collect();
            if !due.is_empty() {
                futures::future::join_all(due.into_iter().map(|pool| pool.check_round())).await;
            }
        }
    }
}
