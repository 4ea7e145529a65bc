//! Least connections: a tournament tree over the tier keyed by requests in flight per unit of
//! weight, ties rotating by last pick.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use super::{Member, Seen, Tier};

/// Picks the least loaded upstream; a retry (which excludes upstreams) scans instead.
pub(super) fn pick(
    tier: &Tier,
    tree: &Mutex<MinTree>,
    now: u64,
    exclude: &[SocketAddr],
    tries: usize,
    saw: &mut Seen,
) -> Option<usize> {
    if !exclude.is_empty() {
        return best_outside(tier, now, exclude, saw);
    }
    let mut tree = tree.lock().unwrap_or_else(|p| p.into_inner());
    tree.refresh_if_stale(tier, now);
    for _ in 0..tries {
        let index = tree.min()?;
        let taken = tier.try_take_now(index, now, exclude, saw);
        tree.update(tier, index, now, taken);
        if taken {
            return Some(index);
        }
    }
    None
}

/// The least loaded eligible upstream outside `exclude` that can be taken, by scan.
fn best_outside(tier: &Tier, now: u64, exclude: &[SocketAddr], saw: &mut Seen) -> Option<usize> {
    let mut candidates: Vec<(u64, usize)> = tier
        .members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.eligible(now, exclude))
        .map(|(i, m)| (least_conn_key(m, now, tier.slow_start), i))
        .collect();
    saw.usable |= !candidates.is_empty();
    candidates.sort_unstable();
    candidates
        .into_iter()
        .map(|(_, i)| i)
        .find(|&i| tier.members[i].try_acquire())
}

/// The load key of `least_conn`: requests in flight (counting this one) per unit of weight.
fn least_conn_key(m: &Member, now: u64, slow_start: Duration) -> u64 {
    ((m.state.in_flight() as u64 + 1) << 32) / m.effective_weight(now, slow_start)
}

/// A tournament tree over the tier's upstreams keyed by (load, last pick): the root is the
/// least loaded usable upstream, and among equals the one picked longest ago, so ties rotate.
/// Updates and picks are O(log n).
pub(super) struct MinTree {
    /// Leaves start at `size`; each node holds (load, sequence, member index).
    nodes: Vec<(u64, u64, usize)>,
    size: usize,
    count: usize,
    sequence: u64,
    /// The usability epoch the leaves reflect, and when they must be refreshed anyway (an
    /// ejection ending, slow start ramping).
    epoch: u64,
    refresh_at: u64,
}

const UNUSABLE: u64 = u64::MAX;

impl MinTree {
    pub(super) fn new(count: usize) -> Self {
        let size = count.next_power_of_two().max(1);
        MinTree {
            nodes: vec![(UNUSABLE, u64::MAX, usize::MAX); 2 * size],
            size,
            count,
            sequence: 0,
            epoch: 0,
            refresh_at: 0,
        }
    }

    fn min(&self) -> Option<usize> {
        let (key, _, index) = self.nodes[1];
        (key != UNUSABLE).then_some(index)
    }

    fn refresh_if_stale(&mut self, tier: &Tier, now: u64) {
        if self.epoch == tier.epochs.usability() && now < self.refresh_at {
            return;
        }
        self.epoch = tier.epochs.usability();
        self.refresh_at = u64::MAX;
        for i in 0..self.count {
            let m = &tier.members[i];
            if let Some(until) = m.state.ejected_until(now) {
                self.refresh_at = self.refresh_at.min(until);
            }
            if m.state.ramp(now, tier.slow_start) < 1.0 {
                self.refresh_at = self.refresh_at.min(now + 1000);
            }
            let sequence = self.nodes[self.size + i].1.min(self.sequence);
            self.nodes[self.size + i] = (leaf_key(m, tier, now), sequence, i);
        }
        for node in (1..self.size).rev() {
            self.nodes[node] = self.nodes[2 * node].min(self.nodes[2 * node + 1]);
        }
    }

    /// Re-reads one upstream's load; `picked` moves it to the back of its ties.
    pub(super) fn update(&mut self, tier: &Tier, index: usize, now: u64, picked: bool) {
        if index >= self.count {
            return;
        }
        let leaf = self.size + index;
        if picked {
            self.sequence += 1;
            self.nodes[leaf].1 = self.sequence;
        }
        self.nodes[leaf].0 = leaf_key(&tier.members[index], tier, now);
        self.nodes[leaf].2 = index;
        let mut node = leaf / 2;
        while node >= 1 {
            self.nodes[node] = self.nodes[2 * node].min(self.nodes[2 * node + 1]);
            node /= 2;
        }
    }
}

fn leaf_key(m: &Member, tier: &Tier, now: u64) -> u64 {
    let full = m
        .upstream
        .max_conns
        .is_some_and(|max| m.state.in_flight() >= max);
    if !m.state.usable(now) || full {
        UNUSABLE
    } else {
        least_conn_key(m, now, tier.slow_start)
    }
}
