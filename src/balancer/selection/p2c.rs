//! Power of two random choices on peak-EWMA latency times load (Finagle, Linkerd): two random
//! upstreams, the cheaper one first.

use std::net::SocketAddr;

use rand::Rng;

use super::{Seen, Tier};

pub(super) fn pick(
    tier: &Tier,
    now: u64,
    exclude: &[SocketAddr],
    tries: usize,
    saw: &mut Seen,
) -> Option<usize> {
    let n = tier.members.len();
    if n == 1 {
        return tier.try_take(0, now, exclude, saw).then_some(0);
    }
    let mut rng = rand::thread_rng();
    for _ in 0..tries.min(8) {
        let a = rng.gen_range(0..n);
        let b = (a + rng.gen_range(1..n)) % n;
        let (first, second) = if cost(tier, a, now) <= cost(tier, b, now) {
            (a, b)
        } else {
            (b, a)
        };
        for index in [first, second] {
            if tier.try_take(index, now, exclude, saw) {
                return Some(index);
            }
        }
    }
    None
}

/// Peak-EWMA latency times load, per unit of weight.
fn cost(tier: &Tier, index: usize, now: u64) -> f64 {
    let m = &tier.members[index];
    // A floor of 0.1 ms keeps load meaningful for upstreams not yet measured.
    let latency = m.state.latency_estimate_at(now) + 100_000.0;
    latency * (m.state.in_flight() as f64 + 1.0) / m.effective_weight(now, tier.slow_start) as f64
}
