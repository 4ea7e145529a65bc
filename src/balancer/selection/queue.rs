//! The wait for a free upstream: when every usable upstream is at its `max_conns`, a request
//! waits (bounded by `queue.size` and `queue.timeout`) until a lease is released.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::{Lease, Pick, Pool};
use crate::config::QueueConfig;
use crate::observe::metrics::Metrics;

/// Why no upstream was acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcquireError {
    /// No upstream is usable at all.
    NoHealthyUpstream,
    /// Every usable upstream was already tried by this request.
    NoUpstreamLeft,
    /// Every usable upstream is at `max_conns` and the queue is full.
    QueueFull,
    /// Every usable upstream stayed at `max_conns` for the whole queue timeout.
    QueueTimeout,
}

impl Pool {
    /// Picks an upstream outside `tried`, waiting in the queue while every usable one is at
    /// its `max_conns`; `hash` is the request's key for `consistent_hash`.
    pub(crate) async fn acquire(
        &self,
        hash: u64,
        tried: &[SocketAddr],
        queue: &QueueConfig,
    ) -> Result<Lease, AcquireError> {
        // The common case: an upstream is free at once.
        if let Some(found) = self.pick_or_fail(hash, tried) {
            return found;
        }
        let mut place = None;
        let deadline = Instant::now() + queue.timeout;
        loop {
            // Registered before the pick, so a slot freed in between is not missed.
            let freed = self.freed.notified();
            if let Some(found) = self.pick_or_fail(hash, tried) {
                return found;
            }
            if place.is_none() {
                let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
                self.metrics.queued.inc();
                let entered = QueuePlace {
                    waiting: &self.waiting,
                    metrics: &self.metrics,
                };
                if queued >= queue.size {
                    self.metrics
                        .queue_rejected
                        .with_label_values(&["full"])
                        .inc();
                    return Err(AcquireError::QueueFull);
                }
                place = Some(entered);
            }
            let now = Instant::now();
            if now >= deadline {
                self.metrics
                    .queue_rejected
                    .with_label_values(&["timeout"])
                    .inc();
                return Err(AcquireError::QueueTimeout);
            }
            // Woken when a slot frees; the short cap also catches slots freed by requests of
            // an earlier routing and upstreams coming back.
            let wait = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(wait, freed).await;
        }
    }

    /// A pick's answer, or `None` when every usable upstream is busy.
    fn pick_or_fail(&self, hash: u64, tried: &[SocketAddr]) -> Option<Result<Lease, AcquireError>> {
        match self.pick(hash, tried) {
            Pick::Got(lease) => Some(Ok(lease)),
            Pick::Empty if tried.is_empty() => Some(Err(AcquireError::NoHealthyUpstream)),
            Pick::Empty => Some(Err(AcquireError::NoUpstreamLeft)),
            Pick::Busy => None,
        }
    }
}

/// Wakes one waiting request, if any waits.
pub(super) fn wake_one(waiting: &AtomicUsize, freed: &Notify) {
    if waiting.load(Ordering::Relaxed) > 0 {
        freed.notify_one();
    }
}

/// A waiting request's place in the queue; leaving it (in any way) frees the place.
struct QueuePlace<'a> {
    waiting: &'a AtomicUsize,
    metrics: &'a Metrics,
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        self.metrics.queued.dec();
    }
}
