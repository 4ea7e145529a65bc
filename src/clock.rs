//! The process's monotonic clock in milliseconds.
//!
//! Live upstream state (ejections, slow start, latency decay, retry budget, recent history) keeps
//! its times as `u64` milliseconds in atomics; this is the one clock they all read, so their
//! figures agree. It depends on nothing else in lb.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds on a monotonic clock that starts near zero when the process does; never 0, so
/// that 0 can mean "never" in the atomics that hold these times.
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}
