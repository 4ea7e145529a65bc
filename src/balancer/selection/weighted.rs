//! Weighted schedules: smooth weighted round robin (nginx's order) and weighted random, both
//! drawn from one precomputed period.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rand::Rng;

use super::{Member, Seen, Tier};

/// Picks by the tier's schedule: the next step of the period, or a random step.
pub(super) fn pick(
    tier: &Tier,
    slot: &ArcSwap<Schedule>,
    random: bool,
    now: u64,
    exclude: &[SocketAddr],
    tries: usize,
    saw: &mut Seen,
) -> Option<usize> {
    let schedule = current(tier, slot);
    let len = schedule.order.len();
    for _ in 0..tries.max(len.min(64)) {
        let step = if random {
            rand::thread_rng().gen_range(0..len)
        } else {
            schedule.cursor.fetch_add(1, Ordering::Relaxed) % len
        };
        let index = schedule.order[step] as usize;
        if tier.try_take(index, now, exclude, saw) {
            return Some(index);
        }
    }
    None
}

/// The schedule, rebuilt if an admin weight changed since it was made.
fn current(tier: &Tier, slot: &ArcSwap<Schedule>) -> Arc<Schedule> {
    let current = slot.load_full();
    let weights = tier.epochs.weights();
    if current.weights == weights {
        return current;
    }
    let rebuilt = Arc::new(Schedule::new(&tier.members, weights));
    slot.store(rebuilt.clone());
    rebuilt
}

/// One cycle of smooth weighted round robin, precomputed so that a pick is one step.
///
/// The order is nginx's smooth weighted round robin (weights 5/1/1 give `a a b a c a a`): each
/// step every upstream's credit grows by its weight and the richest is picked and pays the
/// total. That sequence repeats with a period of the total weight, so one period is computed
/// when the pool is built. For very large pools, where that costs too much, an
/// earliest-deadline-first order with the same even spreading is used instead.
pub(super) struct Schedule {
    order: Vec<u32>,
    cursor: AtomicUsize,
    /// The admin-weight epoch this schedule was built for.
    weights: u64,
}

/// Above this many steps (upstreams × total weight) the schedule is built by deadlines.
const EXACT_SCHEDULE_WORK: u64 = 1 << 24;

impl Schedule {
    pub(super) fn new(members: &[Member], weights_epoch: u64) -> Self {
        let weights: Vec<u64> = members
            .iter()
            .map(|m| m.state.weight(m.upstream.weight).max(1) as u64)
            .collect();
        let divisor = weights.iter().copied().fold(0, gcd).max(1);
        let weights: Vec<u64> = weights.iter().map(|w| w / divisor).collect();
        let total: u64 = weights.iter().sum();
        let order = if weights.iter().all(|&w| w == 1) {
            (0..weights.len() as u32).collect()
        } else if total.saturating_mul(weights.len() as u64) <= EXACT_SCHEDULE_WORK {
            smooth_order(&weights, total)
        } else {
            deadline_order(&weights, total)
        };
        Schedule {
            order,
            cursor: AtomicUsize::new(0),
            weights: weights_epoch,
        }
    }
}

/// nginx's smooth weighted round robin, one period.
fn smooth_order(weights: &[u64], total: u64) -> Vec<u32> {
    let mut credit = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            credit[i] += *w as i64;
            if credit[i] > credit[best] {
                best = i;
            }
        }
        credit[best] -= total as i64;
        order.push(best as u32);
    }
    order
}

/// Each upstream `i` of weight `w` at the times `(k + φᵢ) / w` of the period, earliest first.
/// The phases φᵢ are spread by the golden ratio so that upstreams of equal weight do not all
/// fall on the same instants (which would bunch the heavy ones together).
pub(super) fn deadline_order(weights: &[u64], total: u64) -> Vec<u32> {
    let deadline = |i: usize, k: u64| -> u128 {
        let phase = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (1 << 63);
        (((k as u128) << 64) | phase as u128) / weights[i] as u128
    };
    let mut heap: BinaryHeap<Reverse<(u128, usize, u64)>> = (0..weights.len())
        .map(|i| Reverse((deadline(i, 0), i, 0)))
        .collect();
    let mut order = Vec::with_capacity(total as usize);
    while let Some(Reverse((_, i, k))) = heap.pop() {
        order.push(i as u32);
        if k + 1 < weights[i] {
            heap.push(Reverse((deadline(i, k + 1), i, k + 1)));
        }
    }
    order
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
