//! A short recent history per upstream (req/s, error rate, latency quantiles over the last
//! seconds) for the API and the status page, kept in one-second slots.

use std::time::Duration;

use crate::clock::now_ms;

/// Seconds kept in the recent history.
pub(crate) const HISTORY_SECONDS: usize = 60;
/// Recent figures (req/s, error rate, quantiles) are taken over this many seconds.
pub(crate) const RECENT_SECONDS: usize = 10;

/// Bounds (ms) of the buckets used for recent latency quantiles.
const RECENT_BOUNDS_MS: [f64; 20] = [
    0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 25.0, 40.0, 60.0, 100.0, 150.0, 250.0, 400.0,
    600.0, 1000.0, 2500.0, 5000.0,
];

#[derive(Clone, Copy, Default)]
struct Second {
    /// Which second (since process start) this slot holds.
    at: u64,
    requests: u32,
    errors: u32,
    latency: [u32; RECENT_BOUNDS_MS.len() + 1],
}

/// The last [`HISTORY_SECONDS`] of one upstream, one slot a second.
pub(crate) struct History {
    slots: Vec<Second>,
}

impl Default for History {
    fn default() -> Self {
        History {
            slots: vec![Second::default(); HISTORY_SECONDS],
        }
    }
}

impl History {
    /// Records one finished attempt: whether it failed, and its latency when it was answered.
    pub(crate) fn record(&mut self, error: bool, latency: Option<Duration>) {
        let second = now_ms() / 1000;
        let slot = &mut self.slots[second as usize % HISTORY_SECONDS];
        if slot.at != second {
            *slot = Second {
                at: second,
                ..Second::default()
            };
        }
        slot.requests += 1;
        slot.errors += u32::from(error);
        if let Some(latency) = latency {
            let ms = latency.as_secs_f64() * 1000.0;
            let bucket = RECENT_BOUNDS_MS
                .iter()
                .position(|b| ms <= *b)
                .unwrap_or(RECENT_BOUNDS_MS.len());
            slot.latency[bucket] += 1;
        }
    }

    /// Recent figures and the per-second history, oldest first.
    pub(crate) fn recent(&self) -> Recent {
        let now = now_ms() / 1000;
        let recent = &self.slots;
        // The current second is still filling: history and rates use complete seconds.
        let slot_for = |second: u64| -> Option<&Second> {
            let slot = &recent[second as usize % HISTORY_SECONDS];
            (slot.at == second).then_some(slot)
        };
        let mut rps_history = Vec::with_capacity(HISTORY_SECONDS);
        let mut p99_history = Vec::with_capacity(HISTORY_SECONDS);
        for back in (1..HISTORY_SECONDS as u64).rev() {
            let second = now.saturating_sub(back);
            match slot_for(second).filter(|_| now >= back) {
                Some(s) => {
                    rps_history.push(f64::from(s.requests));
                    p99_history.push(quantile(&s.latency, 0.99));
                }
                None => {
                    rps_history.push(0.0);
                    p99_history.push(None);
                }
            }
        }
        let mut requests = 0u64;
        let mut errors = 0u64;
        let mut latency = [0u32; RECENT_BOUNDS_MS.len() + 1];
        for back in 1..=RECENT_SECONDS as u64 {
            if let Some(s) = slot_for(now.saturating_sub(back)).filter(|_| now >= back) {
                requests += u64::from(s.requests);
                errors += u64::from(s.errors);
                for (sum, n) in latency.iter_mut().zip(s.latency) {
                    *sum += n;
                }
            }
        }
        Recent {
            rps: requests as f64 / RECENT_SECONDS as f64,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            p50_ms: quantile(&latency, 0.5),
            p99_ms: quantile(&latency, 0.99),
            rps_history,
            p99_history,
        }
    }
}

/// The last seconds of one upstream.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recent {
    pub(crate) rps: f64,
    pub(crate) error_rate: f64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) rps_history: Vec<f64>,
    pub(crate) p99_history: Vec<Option<f64>>,
}

/// The `q` quantile of a bucketed latency distribution, interpolated within its bucket.
fn quantile(buckets: &[u32], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().map(|&n| u64::from(n)).sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0);
    let mut seen = 0f64;
    for (i, &n) in buckets.iter().enumerate() {
        let before = seen;
        seen += f64::from(n);
        if seen >= rank {
            let low = if i == 0 { 0.0 } else { RECENT_BOUNDS_MS[i - 1] };
            let high = RECENT_BOUNDS_MS
                .get(i)
                .copied()
                .unwrap_or(RECENT_BOUNDS_MS[RECENT_BOUNDS_MS.len() - 1] * 2.0);
            let within = (rank - before) / f64::from(n.max(1));
            return Some(low + (high - low) * within);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_fall_in_the_right_bucket() {
        let mut b = [0u32; RECENT_BOUNDS_MS.len() + 1];
        b[2] = 99; // 0.5–1 ms
        b[10] = 1; // 25–40 ms
        let p50 = quantile(&b, 0.5).unwrap();
        assert!((0.5..=1.0).contains(&p50), "{p50}");
        let p99 = quantile(&b, 0.99).unwrap();
        assert!((0.5..=1.0).contains(&p99), "{p99}");
        let p100 = quantile(&b, 1.0).unwrap();
        assert!((25.0..=40.0).contains(&p100), "{p100}");
        assert_eq!(quantile(&[0; 3], 0.5), None);
    }
}
