//! Choosing the upstream for a request.
//!
//! The upstream set and its active checks live in pingora's [`LoadBalancer`] (see
//! [`crate::health`]); the picking is done here, because it must see what pingora's selectors
//! do not: requests in flight, latency, passive ejection, admin state, slow start and
//! `max_conns`. All of that is read from the long-lived [`UpstreamState`]s, so a selector can be
//! rebuilt (on reload, on a weight change) without losing anything.
//!
//! Every algorithm picks in constant or logarithmic time in the number of upstreams; a linear
//! scan is only the fallback when most of the pool is unusable or a retry excludes upstreams.
//!
//! Upstreams are split into two tiers: primaries, and backups used only while no primary is
//! usable.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::FutureExt;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use rand::Rng;
use tokio::sync::Notify;

use crate::config::{LbConfig, Selection, Upstream};
use crate::upstream::{self, now_ms, Registry, UpstreamState};

/// One configured upstream with its live state.
#[derive(Clone)]
pub struct Member {
    pub upstream: Upstream,
    pub state: Arc<UpstreamState>,
}

impl Member {
    /// The weight in force, slow start included, in thousandths.
    fn effective_weight(&self, now: u64, slow_start: Duration) -> u64 {
        let weight = self.state.weight(self.upstream.weight) as f64;
        ((weight * self.state.ramp(now, slow_start) * 1000.0) as u64).max(1)
    }
}

/// The result of a pick.
pub enum Pick {
    /// An upstream, with a slot of its `max_conns` held until the lease is dropped.
    Got(Lease),
    /// Usable upstreams exist but every one is at its `max_conns`.
    Busy,
    /// No usable upstream (outside `exclude`).
    Empty,
}

/// A request's hold on an upstream: counts as in flight until dropped.
pub struct Lease {
    tier: Arc<Tier>,
    index: usize,
}

impl Lease {
    pub fn state(&self) -> &Arc<UpstreamState> {
        &self.tier.members[self.index].state
    }

    pub fn upstream(&self) -> &Upstream {
        &self.tier.members[self.index].upstream
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.state().release();
        self.tier.released(self.index);
    }
}

/// The upstreams of one routing and the algorithm that picks among them.
pub struct Pool {
    /// pingora's upstream set: holds the active health checks.
    checked: LoadBalancer<RoundRobin>,
    pub members: Vec<Member>,
    primary: Arc<Tier>,
    backup: Option<Arc<Tier>>,
    pub slow_start: Duration,
    /// Requests waiting for a slot below `max_conns`, and their wake-up.
    pub waiting: Arc<AtomicUsize>,
    pub freed: Arc<Notify>,
}

impl Pool {
    /// Builds the pool for `config`; `check`, when given, is what marks upstreams up and down.
    pub fn new(
        config: &LbConfig,
        registry: &Registry,
        check: Option<Box<dyn HealthCheck + Send + Sync>>,
    ) -> Self {
        let states = registry.members(&config.upstreams);
        let members: Vec<Member> = config
            .upstreams
            .iter()
            .zip(states)
            .map(|(upstream, state)| Member {
                upstream: upstream.clone(),
                state,
            })
            .collect();
        let set: BTreeSet<Backend> = config.upstreams.iter().map(backend_for).collect();
        let mut checked = LoadBalancer::from_backends(Backends::new(discovery::Static::new(set)));
        if let Some(check) = check {
            checked.set_health_check(check);
        }
        // Static discovery answers at once; this fills pingora's set from the list.
        if !matches!(checked.update().now_or_never(), Some(Ok(()))) {
            log::error!("building the upstream set did not complete");
        }
        let waiting = Arc::new(AtomicUsize::new(0));
        let freed = Arc::new(Notify::new());
        let tier = |backup: bool| {
            let list: Vec<Member> = members
                .iter()
                .filter(|m| m.upstream.backup == backup)
                .cloned()
                .collect();
            (!list.is_empty())
                .then(|| Arc::new(Tier::new(list, config, waiting.clone(), freed.clone())))
        };
        let primary = tier(false).unwrap_or_else(|| {
            // Validation guarantees a primary; an all-backup list still works as one tier.
            Arc::new(Tier::new(
                members.clone(),
                config,
                waiting.clone(),
                freed.clone(),
            ))
        });
        Pool {
            checked,
            backup: tier(true),
            primary,
            members,
            slow_start: config.slow_start,
            waiting,
            freed,
        }
    }

    /// pingora's upstream set with its health checks.
    pub fn backends(&self) -> &Backends {
        self.checked.backends()
    }

    /// Picks an upstream outside `exclude`; `hash` is the request's key for `consistent_hash`.
    pub fn pick(&self, hash: u64, exclude: &[SocketAddr]) -> Pick {
        match self.primary.pick(hash, exclude) {
            Pick::Empty => match &self.backup {
                Some(backup) => backup.pick(hash, exclude),
                None => Pick::Empty,
            },
            other => other,
        }
    }

    /// Whether any upstream outside `exclude` could take a request now (capacity aside).
    pub fn has_usable(&self, exclude: &[SocketAddr]) -> bool {
        let now = now_ms();
        self.members
            .iter()
            .any(|m| m.state.usable(now) && !exclude.contains(&m.upstream.addr))
    }
}

/// Primaries or backups, with their selector.
struct Tier {
    members: Vec<Member>,
    picker: Picker,
    slow_start: Duration,
    waiting: Arc<AtomicUsize>,
    freed: Arc<Notify>,
}

enum Picker {
    RoundRobin(ArcSwap<Schedule>),
    Random(ArcSwap<Schedule>),
    LeastConn(Mutex<MinTree>),
    P2cEwma,
    ConsistentHash(Ring),
}

impl Tier {
    fn new(
        members: Vec<Member>,
        config: &LbConfig,
        waiting: Arc<AtomicUsize>,
        freed: Arc<Notify>,
    ) -> Self {
        let picker = match config.selection {
            Selection::RoundRobin => {
                Picker::RoundRobin(ArcSwap::from_pointee(Schedule::new(&members)))
            }
            Selection::Random => Picker::Random(ArcSwap::from_pointee(Schedule::new(&members))),
            Selection::LeastConn => Picker::LeastConn(Mutex::new(MinTree::new(members.len()))),
            Selection::P2cEwma => Picker::P2cEwma,
            Selection::ConsistentHash => Picker::ConsistentHash(Ring::new(&members)),
        };
        Tier {
            members,
            picker,
            slow_start: config.slow_start,
            waiting,
            freed,
        }
    }

    fn lease(self: &Arc<Self>, index: usize) -> Pick {
        Pick::Got(Lease {
            tier: self.clone(),
            index,
        })
    }

    /// Tries to take `index`: usable, not excluded, below its limit, and (while ramping up)
    /// lucky in proportion to its ramp.
    fn try_take(&self, index: usize, now: u64, exclude: &[SocketAddr], saw: &mut Seen) -> bool {
        let m = &self.members[index];
        if !m.state.usable(now) || exclude.contains(&m.upstream.addr) {
            return false;
        }
        saw.usable = true;
        if !self.slow_start.is_zero() {
            let ramp = m.state.ramp(now, self.slow_start);
            if ramp < 1.0 && rand::thread_rng().gen::<f64>() > ramp {
                saw.skipped_for_ramp = true;
                return false;
            }
        }
        m.state.try_acquire(m.upstream.max_conns)
    }

    /// The linear fallback: the first upstream that can be taken, from a random start (slow
    /// start is ignored here: something must be picked).
    fn scan(self: &Arc<Self>, now: u64, exclude: &[SocketAddr], mut saw: Seen) -> Pick {
        let n = self.members.len();
        let start = rand::thread_rng().gen_range(0..n);
        for i in (0..n).map(|k| (start + k) % n) {
            let m = &self.members[i];
            if !m.state.usable(now) || exclude.contains(&m.upstream.addr) {
                continue;
            }
            saw.usable = true;
            if m.state.try_acquire(m.upstream.max_conns) {
                return self.lease(i);
            }
        }
        if saw.usable {
            Pick::Busy
        } else {
            Pick::Empty
        }
    }

    fn pick(self: &Arc<Self>, hash: u64, exclude: &[SocketAddr]) -> Pick {
        let now = now_ms();
        let mut saw = Seen::default();
        let n = self.members.len();
        // Bounded attempts of the algorithm proper before the scan takes over.
        let tries = 2 * n.min(32) + 2;
        match &self.picker {
            Picker::RoundRobin(schedule) | Picker::Random(schedule) => {
                let schedule = self.current_schedule(schedule);
                let len = schedule.order.len();
                let random = matches!(self.picker, Picker::Random(_));
                for _ in 0..tries.max(len.min(64)) {
                    let slot = if random {
                        rand::thread_rng().gen_range(0..len)
                    } else {
                        schedule.cursor.fetch_add(1, Ordering::Relaxed) % len
                    };
                    let index = schedule.order[slot] as usize;
                    if self.try_take(index, now, exclude, &mut saw) {
                        return self.lease(index);
                    }
                }
            }
            Picker::LeastConn(tree) if exclude.is_empty() => {
                let mut tree = tree.lock().unwrap_or_else(|p| p.into_inner());
                tree.refresh_if_stale(self, now);
                for _ in 0..tries {
                    let Some(index) = tree.min() else { break };
                    let m = &self.members[index];
                    let taken = m.state.usable(now) && {
                        saw.usable = true;
                        m.state.try_acquire(m.upstream.max_conns)
                    };
                    tree.update(self, index, now, taken);
                    if taken {
                        return self.lease(index);
                    }
                }
            }
            Picker::LeastConn(_) => {
                // A retry: the best one outside `exclude`, by scan.
                if let Some(index) =
                    self.best_by(now, exclude, |m| least_conn_key(m, now, self.slow_start))
                {
                    return self.lease(index);
                }
            }
            Picker::P2cEwma => {
                if n == 1 {
                    if self.try_take(0, now, exclude, &mut saw) {
                        return self.lease(0);
                    }
                } else {
                    let mut rng = rand::thread_rng();
                    for _ in 0..tries.min(8) {
                        let a = rng.gen_range(0..n);
                        let b = (a + rng.gen_range(1..n)) % n;
                        let (first, second) = if self.p2c_cost(a, now) <= self.p2c_cost(b, now) {
                            (a, b)
                        } else {
                            (b, a)
                        };
                        for index in [first, second] {
                            if self.try_take(index, now, exclude, &mut saw) {
                                return self.lease(index);
                            }
                        }
                    }
                }
            }
            Picker::ConsistentHash(ring) => {
                for index in ring.walk(hash).take(ring.points.len()) {
                    let m = &self.members[index];
                    if !m.state.usable(now) || exclude.contains(&m.upstream.addr) {
                        continue;
                    }
                    saw.usable = true;
                    // A full upstream spills its keys to the next one on the ring.
                    if m.state.try_acquire(m.upstream.max_conns) {
                        return self.lease(index);
                    }
                }
                return if saw.usable { Pick::Busy } else { Pick::Empty };
            }
        }
        self.scan(now, exclude, saw)
    }

    /// The usable upstream outside `exclude` with the lowest `key` that can be taken.
    fn best_by(
        &self,
        now: u64,
        exclude: &[SocketAddr],
        key: impl Fn(&Member) -> u64,
    ) -> Option<usize> {
        let mut candidates: Vec<(u64, usize)> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.state.usable(now) && !exclude.contains(&m.upstream.addr))
            .map(|(i, m)| (key(m), i))
            .collect();
        candidates.sort_unstable();
        candidates.into_iter().map(|(_, i)| i).find(|&i| {
            let m = &self.members[i];
            m.state.try_acquire(m.upstream.max_conns)
        })
    }

    /// Peak-EWMA latency times load, per unit of weight.
    fn p2c_cost(&self, index: usize, now: u64) -> f64 {
        let m = &self.members[index];
        // A floor of 0.1 ms keeps load meaningful for upstreams not yet measured.
        let latency = m.state.latency_estimate_at(now) + 100_000.0;
        latency * (m.state.in_flight() as f64 + 1.0)
            / m.effective_weight(now, self.slow_start) as f64
    }

    /// The weighted schedule, rebuilt if an admin weight changed since it was made.
    fn current_schedule(&self, slot: &ArcSwap<Schedule>) -> Arc<Schedule> {
        let current = slot.load_full();
        if current.weights == upstream::weights_epoch() {
            return current;
        }
        let rebuilt = Arc::new(Schedule::new(&self.members));
        slot.store(rebuilt.clone());
        rebuilt
    }

    /// A request let go of `index`: selectors that track load hear of it, and so does a
    /// request waiting in the queue.
    fn released(&self, index: usize) {
        if let Picker::LeastConn(tree) = &self.picker {
            let mut tree = tree.lock().unwrap_or_else(|p| p.into_inner());
            tree.update(self, index, now_ms(), false);
        }
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.freed.notify_one();
        }
    }
}

#[derive(Default)]
struct Seen {
    usable: bool,
    skipped_for_ramp: bool,
}

// ---------------------------------------------------------------------------------------------
// Smooth weighted round robin

/// One cycle of smooth weighted round robin, precomputed so that a pick is one step.
///
/// The order is nginx's smooth weighted round robin (weights 5/1/1 give `a a b a c a a`): each
/// step every upstream's credit grows by its weight and the richest is picked and pays the
/// total. That sequence repeats with a period of the total weight, so one period is computed
/// when the pool is built. For very large pools, where that costs too much, an
/// earliest-deadline-first order with the same even spreading is used instead.
struct Schedule {
    order: Vec<u32>,
    cursor: AtomicUsize,
    /// The admin-weight epoch this schedule was built for.
    weights: u64,
}

/// Above this many steps (upstreams × total weight) the schedule is built by deadlines.
const EXACT_SCHEDULE_WORK: u64 = 1 << 24;

impl Schedule {
    fn new(members: &[Member]) -> Self {
        let weights_epoch = upstream::weights_epoch();
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
fn deadline_order(weights: &[u64], total: u64) -> Vec<u32> {
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

// ---------------------------------------------------------------------------------------------
// Least connections

/// The load key of `least_conn`: requests in flight (counting this one) per unit of weight.
fn least_conn_key(m: &Member, now: u64, slow_start: Duration) -> u64 {
    ((m.state.in_flight() as u64 + 1) << 32) / m.effective_weight(now, slow_start)
}

/// A tournament tree over the tier's upstreams keyed by (load, last pick): the root is the
/// least loaded usable upstream, and among equals the one picked longest ago, so ties rotate.
/// Updates and picks are O(log n).
struct MinTree {
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
    fn new(count: usize) -> Self {
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
        if self.epoch == upstream::epoch() && now < self.refresh_at {
            return;
        }
        self.epoch = upstream::epoch();
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
    fn update(&mut self, tier: &Tier, index: usize, now: u64, picked: bool) {
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

// ---------------------------------------------------------------------------------------------
// Consistent hashing

/// Points per unit of weight on the ring (as in Ketama / nginx).
const POINTS_PER_WEIGHT: u64 = 160;
/// Bound on the ring's size for very large pools.
const MAX_POINTS: u64 = 1 << 20;

/// A Ketama-style ring. Point positions depend only on the upstream addresses and weights, so
/// every `lb` with the same configuration maps a key to the same upstream, and removing one of
/// N upstreams moves only the keys that were on it (about 1/N).
struct Ring {
    points: Vec<(u64, u32)>,
    /// For each value of a hash's top 16 bits, where its points start: a lookup touches one
    /// small stretch of the ring instead of binary-searching all of it (which, for large
    /// pools, is a cache miss per step).
    index: Vec<u32>,
}

const INDEX_BITS: u32 = 16;

impl Ring {
    fn new(members: &[Member]) -> Self {
        let total: u64 = members
            .iter()
            .map(|m| m.upstream.weight as u64 * POINTS_PER_WEIGHT)
            .sum();
        let scale = (MAX_POINTS as f64 / total.max(1) as f64).min(1.0);
        let mut points = Vec::new();
        for (i, m) in members.iter().enumerate() {
            let count =
                ((m.upstream.weight as u64 * POINTS_PER_WEIGHT) as f64 * scale).max(1.0) as u64;
            let name = m.upstream.addr.to_string();
            for k in 0..count {
                points.push((hash_bytes(format!("{name}-{k}").as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        let index = (0..1u64 << INDEX_BITS)
            .map(|b| points.partition_point(|p| p.0 < b << (64 - INDEX_BITS)) as u32)
            .collect();
        Ring { points, index }
    }

    /// The members met going clockwise from `hash`, starting at its owner.
    fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let bucket = (hash >> (64 - INDEX_BITS)) as usize;
        let low = self.index[bucket] as usize;
        let high = self
            .index
            .get(bucket + 1)
            .map_or(self.points.len(), |&i| i as usize);
        let start = low + self.points[low..high].partition_point(|p| p.0 < hash);
        let n = self.points.len();
        (0..n).map(move |k| self.points[(start + k) % n].1 as usize)
    }
}

/// A stable 64-bit hash (FNV-1a with a final avalanche), the same on every machine and build.
pub fn hash_bytes(data: &[u8]) -> u64 {
    let mut h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    // splitmix64 finaliser: spreads similar inputs (`addr-1`, `addr-2`) over the ring.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// pingora's description of one configured upstream.
pub fn backend_for(upstream: &Upstream) -> Backend {
    Backend {
        addr: PeerAddr::Inet(upstream.addr),
        weight: upstream.weight,
        ext: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn upstreams(weights: &[usize]) -> Vec<Upstream> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let addr: SocketAddr = format!("127.0.0.1:{}", 10_000 + i).parse().unwrap();
                Upstream {
                    name: addr.to_string(),
                    addr,
                    weight: *w,
                    max_conns: None,
                    backup: false,
                }
            })
            .collect()
    }

    fn pool(selection: Selection, list: Vec<Upstream>) -> Pool {
        let mut config = LbConfig::with_defaults(vec![], list);
        config.selection = selection;
        Pool::new(&config, &Registry::default(), None)
    }

    fn port(pick: Pick) -> u16 {
        match pick {
            Pick::Got(lease) => lease.upstream().addr.port(),
            Pick::Busy => panic!("busy"),
            Pick::Empty => panic!("empty"),
        }
    }

    #[test]
    fn smooth_round_robin_interleaves() {
        let p = pool(Selection::RoundRobin, upstreams(&[5, 1, 1]));
        let picks: Vec<u16> = (0..70).map(|_| port(p.pick(0, &[]))).collect();
        let heavy = picks.iter().filter(|&&p| p == 10_000).count();
        assert_eq!(heavy, 50);
        // nginx's order for 5/1/1.
        assert_eq!(
            picks[..7],
            [10_000, 10_000, 10_001, 10_000, 10_002, 10_000, 10_000]
        );
        let runs_of_five = picks
            .windows(5)
            .filter(|w| w.iter().all(|&p| p == 10_000))
            .count();
        assert_eq!(runs_of_five, 0, "never five in a row: {picks:?}");
    }

    #[test]
    fn deadline_order_is_even_too() {
        let order = deadline_order(&[5, 1, 1], 7);
        assert_eq!(order.iter().filter(|&&i| i == 0).count(), 5);
        let twice: Vec<u32> = order.iter().chain(order.iter()).copied().collect();
        assert!(
            !twice.windows(5).any(|w| w.iter().all(|&i| i == 0)),
            "{order:?}"
        );
    }

    #[test]
    fn round_robin_rotates_strictly() {
        let p = pool(Selection::RoundRobin, upstreams(&[1, 1, 1]));
        let picks: Vec<u16> = (0..6).map(|_| port(p.pick(0, &[]))).collect();
        assert_eq!(picks[0..3], picks[3..6]);
        let distinct: BTreeSet<u16> = picks[0..3].iter().copied().collect();
        assert_eq!(distinct.len(), 3);
    }

    #[test]
    fn excluded_upstreams_are_skipped_by_every_algorithm() {
        for selection in [
            Selection::RoundRobin,
            Selection::Random,
            Selection::LeastConn,
            Selection::P2cEwma,
            Selection::ConsistentHash,
        ] {
            let list = upstreams(&[1, 1, 1]);
            let exclude = [list[0].addr, list[1].addr];
            let p = pool(selection, list.clone());
            for h in 0..50 {
                assert_eq!(port(p.pick(h * 7919, &exclude)), 10_002, "{selection}");
            }
            let all: Vec<SocketAddr> = list.iter().map(|u| u.addr).collect();
            assert!(matches!(p.pick(0, &all), Pick::Empty), "{selection}");
        }
    }

    #[test]
    fn least_conn_prefers_the_idle_and_rotates_ties() {
        let p = pool(Selection::LeastConn, upstreams(&[1, 1, 1]));
        let held = match p.pick(0, &[]) {
            Pick::Got(l) => l,
            _ => panic!(),
        };
        // Two idle ones left; they alternate while the first is held.
        let a = port(p.pick(0, &[]));
        let b = port(p.pick(0, &[]));
        assert_ne!(a, held.upstream().addr.port());
        assert_ne!(b, held.upstream().addr.port());
        assert_ne!(a, b);
        drop(held);
    }

    #[test]
    fn max_conns_makes_the_pool_busy() {
        let mut list = upstreams(&[1]);
        list[0].max_conns = Some(1);
        let p = pool(Selection::RoundRobin, list);
        let lease = match p.pick(0, &[]) {
            Pick::Got(l) => l,
            _ => panic!(),
        };
        assert!(matches!(p.pick(0, &[]), Pick::Busy));
        drop(lease);
        assert!(matches!(p.pick(0, &[]), Pick::Got(_)));
    }

    #[test]
    fn backups_only_when_no_primary_is_usable() {
        let mut list = upstreams(&[1, 1]);
        list[1].backup = true;
        let p = pool(Selection::RoundRobin, list);
        for _ in 0..10 {
            assert_eq!(port(p.pick(0, &[])), 10_000);
        }
        p.members[0].state.set_healthy(false, false, "test");
        assert_eq!(port(p.pick(0, &[])), 10_001);
    }

    #[test]
    fn consistent_hash_moves_about_one_nth_of_keys() {
        let list = upstreams(&[1; 10]);
        let before = pool(Selection::ConsistentHash, list.clone());
        let after = pool(Selection::ConsistentHash, list[1..].to_vec());
        let keys = 20_000u64;
        let mut moved = 0;
        let mut share: HashMap<u16, usize> = HashMap::new();
        for k in 0..keys {
            let h = hash_bytes(&k.to_le_bytes());
            let a = port(before.pick(h, &[]));
            let b = port(after.pick(h, &[]));
            *share.entry(a).or_default() += 1;
            if a != b {
                moved += 1;
                assert_eq!(a, 10_000, "only keys of the removed upstream move");
            }
        }
        let fraction = moved as f64 / keys as f64;
        assert!((0.05..=0.15).contains(&fraction), "moved {fraction}");
        for (_, n) in share {
            assert!((1_000..=3_000).contains(&n), "balanced: {n}");
        }
    }
}
