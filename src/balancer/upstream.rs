//! The live state of each upstream: health, passive ejection, admin state, load and latency.
//!
//! pingora rebuilds its selector whenever the upstream set changes, and a reload builds a whole
//! new [`super::Routing`]; state that must outlive both lives here instead, one
//! [`UpstreamState`] per address in the long-lived [`super::Registry`]. Every source of "may
//! this upstream take a request" — active checks, passive ejection, the admin API, slow start —
//! is folded into one [`State`], logged with its reason whenever it changes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::clock::now_ms;
#[cfg(test)]
use crate::observe::metrics::Metrics;
use crate::observe::metrics::UpstreamStats;

/// What the operator said about an upstream through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminState {
    Enabled = 0,
    /// Takes no new requests; those in flight finish.
    Draining = 1,
    /// Takes no requests at all.
    Disabled = 2,
}

/// The one state an upstream is in, most decisive first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Disabled,
    Draining,
    /// Active checks say it is down.
    Down,
    /// Passive health took it out for a while.
    Ejected,
    /// Up, ramping to its full weight.
    SlowStart,
    Up,
}

/// Every state, for metrics that export one series per state.
pub(crate) const ALL_STATES: [State; 6] = [
    State::Up,
    State::SlowStart,
    State::Ejected,
    State::Down,
    State::Draining,
    State::Disabled,
];

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Disabled => "disabled",
            State::Draining => "draining",
            State::Down => "down",
            State::Ejected => "ejected",
            State::SlowStart => "slow_start",
            State::Up => "up",
        }
    }
}

/// The last change of state, for the logs, the API and the status page.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) state: State,
    pub(crate) reason: String,
    pub(crate) at: SystemTime,
}

/// The last active check of an upstream.
#[derive(Debug, Clone)]
pub(crate) struct CheckResult {
    pub(crate) ok: bool,
    pub(crate) detail: String,
    pub(crate) at: SystemTime,
}

/// What the active checks have settled on for one upstream (with hysteresis).
#[derive(Debug, Clone, Default)]
pub(crate) struct CheckState {
    /// `None` until the first check of this upstream finished.
    pub(crate) up: Option<bool>,
    /// Consecutive results that disagree with `up`.
    pub(crate) streak: usize,
}

/// How quickly the latency estimate forgets (peak-EWMA time constant).
const EWMA_DECAY: Duration = Duration::from_secs(5);
/// How quickly the estimate of an upstream that gets no traffic fades.
const IDLE_DECAY: Duration = Duration::from_secs(1);

/// The live state of one upstream address.
pub(crate) struct UpstreamState {
    /// The pool this upstream belongs to.
    pub(crate) pool: Arc<str>,
    pub(crate) addr: SocketAddr,
    in_flight: AtomicUsize,
    /// The verdict of the active checks (always true when they are off).
    healthy: AtomicBool,
    pub(crate) check: Mutex<CheckState>,
    pub(crate) last_check: Mutex<Option<CheckResult>>,
    admin: AtomicU8,
    /// Weight set through the admin API; 0 means "as configured".
    weight_override: AtomicUsize,
    /// When the upstream last became usable (for slow start); 0 for "long ago".
    usable_since_ms: AtomicU64,
    /// Whether becoming healthy for the first time ramps up (true for upstreams added while
    /// serving; those present at start all begin together, so ramping them is pointless).
    ramp_first_up: bool,
    consecutive_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// When the last ejection ended (for forgetting old ones).
    last_ejection_end_ms: AtomicU64,
    /// Ejections in a row, for the doubling of `eject_for`.
    ejection_level: AtomicU32,
    /// Peak-EWMA latency estimate in nanoseconds (f64 bits), and when it was last updated.
    ewma_ns: AtomicU64,
    ewma_at_ms: AtomicU64,
    last_change: Mutex<Change>,
    pub(crate) stats: UpstreamStats,
    /// The registry's change counters, bumped on every change of usability or weight.
    epochs: Arc<Epochs>,
}

impl UpstreamState {
    pub(super) fn new(
        pool: Arc<str>,
        addr: SocketAddr,
        ramp_first_up: bool,
        stats: UpstreamStats,
        epochs: Arc<Epochs>,
    ) -> Self {
        UpstreamState {
            pool,
            addr,
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            check: Mutex::new(CheckState::default()),
            last_check: Mutex::new(None),
            admin: AtomicU8::new(AdminState::Enabled as u8),
            weight_override: AtomicUsize::new(0),
            usable_since_ms: AtomicU64::new(0),
            ramp_first_up,
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            last_ejection_end_ms: AtomicU64::new(0),
            ejection_level: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(0f64.to_bits()),
            ewma_at_ms: AtomicU64::new(0),
            last_change: Mutex::new(Change {
                state: State::Up,
                reason: "configured".to_string(),
                at: SystemTime::now(),
            }),
            stats,
            epochs,
        }
    }

    /// A state outside any registry, with metrics of its own, for tests.
    #[cfg(test)]
    pub(crate) fn detached(addr: SocketAddr) -> Arc<Self> {
        let stats = UpstreamStats::new(&Metrics::new(), "test", &addr.to_string());
        Arc::new(Self::new("test".into(), addr, false, stats, Arc::default()))
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// How logs name this upstream: its address, and its pool unless that is the one pool of
    /// the one-pool form.
    pub(crate) fn label(&self) -> String {
        if &*self.pool == crate::config::DEFAULT_POOL {
            self.addr.to_string()
        } else {
            format!("{} (pool {})", self.addr, self.pool)
        }
    }

    /// Takes a slot unless `limit` requests are already in flight.
    pub(crate) fn try_acquire(&self, limit: Option<usize>) -> bool {
        match limit {
            None => {
                self.in_flight.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(limit) => self
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < limit).then_some(n + 1)
                })
                .is_ok(),
        }
    }

    pub(crate) fn release(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn admin(&self) -> AdminState {
        match self.admin.load(Ordering::Relaxed) {
            1 => AdminState::Draining,
            2 => AdminState::Disabled,
            _ => AdminState::Enabled,
        }
    }

    pub(crate) fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now
    }

    /// Whether the upstream may take a new request (capacity aside).
    pub(crate) fn usable(&self, now: u64) -> bool {
        self.is_healthy() && self.admin() == AdminState::Enabled && !self.is_ejected(now)
    }

    /// The weight in force: the admin override, else the configured one.
    pub(crate) fn weight(&self, configured: usize) -> usize {
        match self.weight_override.load(Ordering::Relaxed) {
            0 => configured,
            w => w,
        }
    }

    /// Share of its weight the upstream gets while slow start ramps it up (1.0 when done).
    pub(crate) fn ramp(&self, now: u64, slow_start: Duration) -> f64 {
        let since = self.usable_since_ms.load(Ordering::Relaxed);
        if slow_start.is_zero() || since == 0 {
            return 1.0;
        }
        if now <= since {
            return MIN_RAMP;
        }
        let elapsed = (now - since) as f64;
        (elapsed / slow_start.as_millis().max(1) as f64).clamp(MIN_RAMP, 1.0)
    }

    /// The state as the API and the logs show it.
    pub(crate) fn state(&self, now: u64, slow_start: Duration) -> State {
        match self.admin() {
            AdminState::Disabled => State::Disabled,
            AdminState::Draining => State::Draining,
            AdminState::Enabled if !self.is_healthy() => State::Down,
            AdminState::Enabled if self.is_ejected(now) => State::Ejected,
            AdminState::Enabled if self.ramp(now, slow_start) < 1.0 => State::SlowStart,
            AdminState::Enabled => State::Up,
        }
    }

    pub(crate) fn last_change(&self) -> Change {
        self.last_change
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn changed(&self, state: State, reason: String) {
        let mut last = self.last_change.lock().unwrap_or_else(|p| p.into_inner());
        *last = Change {
            state,
            reason,
            at: SystemTime::now(),
        };
    }

    /// Records the active checks' verdict. `first` is the very first verdict for this address.
    pub(crate) fn set_healthy(&self, healthy: bool, first: bool, reason: &str) {
        let was = self.healthy.swap(healthy, Ordering::AcqRel);
        if healthy && !was {
            // Back from being down by the active checks' word: an ejection made while it was
            // failing is over too (as Envoy does). A check that merely keeps passing does not
            // end one: a TCP check cannot see the errors that caused it.
            let until = self.ejected_until_ms.swap(0, Ordering::AcqRel);
            if until != 0 {
                self.last_ejection_end_ms.store(now_ms(), Ordering::Relaxed);
            }
        }
        if healthy && (!was || first) {
            if !first || self.ramp_first_up {
                self.usable_since_ms.store(now_ms(), Ordering::Relaxed);
            }
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if was != healthy || first {
            let state = if healthy { State::Up } else { State::Down };
            self.changed(state, reason.to_string());
            self.epochs.bump_usability();
        }
    }

    /// Turns active checking off for this upstream: it counts as healthy.
    pub(crate) fn unchecked(&self) {
        *self.check.lock().unwrap_or_else(|p| p.into_inner()) = CheckState::default();
        if !self.healthy.swap(true, Ordering::AcqRel) {
            self.changed(State::Up, "active checks turned off".to_string());
            self.epochs.bump_usability();
        }
    }

    pub(crate) fn set_last_check(&self, ok: bool, detail: String) {
        *self.last_check.lock().unwrap_or_else(|p| p.into_inner()) = Some(CheckResult {
            ok,
            detail,
            at: SystemTime::now(),
        });
    }

    /// Applies an admin action; returns false when it changed nothing.
    pub(crate) fn set_admin(&self, admin: AdminState, reason: &str) -> bool {
        let before = self.admin.swap(admin as u8, Ordering::AcqRel);
        if before == admin as u8 {
            return false;
        }
        let state = match admin {
            AdminState::Enabled => {
                // Coming back from maintenance ramps up like coming back from being down.
                self.usable_since_ms.store(now_ms(), Ordering::Relaxed);
                if self.is_healthy() {
                    State::Up
                } else {
                    State::Down
                }
            }
            AdminState::Draining => State::Draining,
            AdminState::Disabled => State::Disabled,
        };
        self.changed(state, reason.to_string());
        self.epochs.bump_usability();
        true
    }

    pub(crate) fn set_weight_override(&self, weight: Option<usize>) {
        self.weight_override
            .store(weight.unwrap_or(0), Ordering::Relaxed);
        self.epochs.bump_weights();
    }

    /// The weight set through the admin API, if any.
    pub(crate) fn weight_override(&self) -> Option<usize> {
        match self.weight_override.load(Ordering::Relaxed) {
            0 => None,
            w => Some(w),
        }
    }

    /// Ejections in a row so far (the next one lasts longer).
    pub(crate) fn ejection_level(&self) -> u32 {
        self.ejection_level.load(Ordering::Relaxed)
    }

    /// Takes over an ejection from the previous process: `remaining` of it, if any, and its
    /// place in the doubling.
    pub(super) fn restore_ejection(&self, remaining: Option<Duration>, level: u32) {
        self.ejection_level.store(level, Ordering::Relaxed);
        if let Some(remaining) = remaining {
            let until = now_ms() + remaining.as_millis() as u64;
            self.ejected_until_ms.store(until, Ordering::Relaxed);
            self.usable_since_ms.store(until, Ordering::Relaxed);
            self.changed(
                State::Ejected,
                format!(
                    "ejected before the restart; {}s left",
                    remaining.as_secs().max(1)
                ),
            );
            self.epochs.bump_usability();
        }
    }

    /// A successful attempt: the failure streak ends.
    pub(crate) fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A failed attempt; returns the consecutive failure count.
    pub(crate) fn record_failure(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// How many ejections in a row this one is (0 for the first), for the doubling of its
    /// length; a good spell longer than `forget_after` since the last one starts over.
    pub(super) fn next_ejection_level(&self, forget_after: Duration) -> u32 {
        let ended = self.last_ejection_end_ms.load(Ordering::Relaxed);
        if ended != 0 && now_ms().saturating_sub(ended) > forget_after.as_millis() as u64 {
            self.ejection_level.store(0, Ordering::Relaxed);
        }
        self.ejection_level.fetch_add(1, Ordering::AcqRel)
    }

    /// Takes the upstream out of rotation for `length`.
    pub(super) fn eject(&self, length: Duration, reason: &str) {
        let until = now_ms() + length.as_millis() as u64;
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        // When it comes back it ramps up (with slow start on).
        self.usable_since_ms.store(until, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.stats.record_ejection();
        self.changed(
            State::Ejected,
            format!("{reason}; ejected for {}s", length.as_secs()),
        );
        self.epochs.bump_usability();
    }

    /// Ends an ejection whose time is up; returns whether one ended (for its log line).
    pub(crate) fn end_ejection_if_due(&self, now: u64) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until == 0 || until > now {
            return false;
        }
        if self
            .ejected_until_ms
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.last_ejection_end_ms.store(until, Ordering::Relaxed);
        let state = if self.is_healthy() {
            State::Up
        } else {
            State::Down
        };
        self.changed(state, "ejection ended".to_string());
        self.epochs.bump_usability();
        true
    }

    /// When the current ejection ends (monotonic ms), if ejected.
    pub(crate) fn ejected_until(&self, now: u64) -> Option<u64> {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        (until > now).then_some(until)
    }

    /// Folds one observed upstream latency into the peak-EWMA estimate.
    pub(crate) fn observe_latency(&self, latency: Duration) {
        let now = now_ms();
        let sample = latency.as_nanos() as f64;
        let current = self.latency_estimate_at(now);
        // Peak sensitive: a slower sample is taken at once, faster ones are averaged in.
        let next = if sample > current {
            sample
        } else {
            let elapsed = now.saturating_sub(self.ewma_at_ms.load(Ordering::Relaxed)) as f64;
            let w = (-elapsed / EWMA_DECAY.as_millis() as f64).exp().max(0.5);
            current * w + sample * (1.0 - w)
        };
        self.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
        self.ewma_at_ms.store(now, Ordering::Relaxed);
    }

    /// The latency estimate in nanoseconds, decayed by the time since it was last fed: an
    /// upstream that became slow loses its traffic, so without this it would never be tried
    /// again. With it, it is probed every few seconds and wins its share back once fast.
    pub(crate) fn latency_estimate_at(&self, now: u64) -> f64 {
        let value = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let at = self.ewma_at_ms.load(Ordering::Relaxed);
        let idle = now.saturating_sub(at) as f64;
        value * (-idle / IDLE_DECAY.as_millis() as f64).exp()
    }
}

/// The smallest share slow start gives: an upstream coming back takes a little traffic at once.
const MIN_RAMP: f64 = 0.05;

/// Change counters that selectors watch: a selector caching a view of the pool rebuilds it
/// when the counter it was built for has moved.
#[derive(Debug)]
pub(crate) struct Epochs {
    /// Bumped on every change of usability (health, ejection, admin).
    usability: AtomicU64,
    /// Bumped when an admin weight changes: weighted schedules are rebuilt.
    weights: AtomicU64,
}

impl Default for Epochs {
    fn default() -> Self {
        Epochs {
            usability: AtomicU64::new(1),
            weights: AtomicU64::new(1),
        }
    }
}

impl Epochs {
    pub(crate) fn usability(&self) -> u64 {
        self.usability.load(Ordering::Acquire)
    }

    pub(crate) fn weights(&self) -> u64 {
        self.weights.load(Ordering::Acquire)
    }

    fn bump_usability(&self) {
        self.usability.fetch_add(1, Ordering::AcqRel);
    }

    fn bump_weights(&self) {
        self.weights.fetch_add(1, Ordering::AcqRel);
        self.bump_usability();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::passive;
    use crate::config::PassiveHealth;

    fn state() -> Arc<UpstreamState> {
        UpstreamState::detached("127.0.0.1:1".parse().unwrap())
    }

    #[test]
    fn max_conns_is_a_hard_limit() {
        let s = state();
        assert!(s.try_acquire(Some(2)));
        assert!(s.try_acquire(Some(2)));
        assert!(!s.try_acquire(Some(2)));
        s.release();
        assert!(s.try_acquire(Some(2)));
        assert_eq!(s.in_flight(), 2);
    }

    #[test]
    fn ejection_doubles_and_is_capped() {
        let s = state();
        let policy = PassiveHealth {
            eject_for: Duration::from_secs(10),
            max_eject_for: Duration::from_secs(25),
            ..PassiveHealth::default()
        };
        assert_eq!(passive::eject(&s, &policy, "x"), Duration::from_secs(10));
        assert_eq!(passive::eject(&s, &policy, "x"), Duration::from_secs(20));
        assert_eq!(passive::eject(&s, &policy, "x"), Duration::from_secs(25));
        assert!(!s.usable(now_ms()));
        assert_eq!(s.state(now_ms(), Duration::ZERO), State::Ejected);
    }

    #[test]
    fn state_precedence() {
        let s = state();
        s.set_healthy(false, false, "down");
        assert_eq!(s.state(now_ms(), Duration::ZERO), State::Down);
        s.set_admin(AdminState::Draining, "drain");
        assert_eq!(s.state(now_ms(), Duration::ZERO), State::Draining);
        s.set_admin(AdminState::Disabled, "off");
        assert_eq!(s.state(now_ms(), Duration::ZERO), State::Disabled);
        s.set_admin(AdminState::Enabled, "on");
        s.set_healthy(true, false, "up");
        assert_eq!(s.state(now_ms(), Duration::from_secs(30)), State::SlowStart);
        assert!(s.ramp(now_ms(), Duration::from_secs(30)) < 0.1);
        assert_eq!(s.state(now_ms(), Duration::ZERO), State::Up);
    }

    #[test]
    fn peak_ewma_takes_slow_samples_at_once() {
        let s = state();
        s.observe_latency(Duration::from_millis(1));
        s.observe_latency(Duration::from_millis(50));
        let estimate = s.latency_estimate_at(now_ms());
        assert!(estimate > 40e6, "{estimate}");
    }
}
