//! Consistent hashing: a Ketama ring placed by address only, so every lb with the same
//! upstreams maps a key to the same upstream.

use std::net::SocketAddr;

use super::{Member, Seen, Tier};

/// Walks the ring from `hash`: the key's owner if it can be taken, else the next one (a full
/// or unusable upstream spills its keys to its neighbour).
pub(super) fn pick(
    tier: &Tier,
    ring: &Ring,
    hash: u64,
    now: u64,
    exclude: &[SocketAddr],
    saw: &mut Seen,
) -> Option<usize> {
    ring.walk(hash)
        .take(ring.points.len())
        .find(|&index| tier.try_take_now(index, now, exclude, saw))
}

/// Points per unit of weight on the ring (as in Ketama / nginx).
const POINTS_PER_WEIGHT: u64 = 160;
/// Bound on the ring's size for very large pools.
const MAX_POINTS: u64 = 1 << 20;

/// A Ketama-style ring. Point positions depend only on the upstream addresses and weights, so
/// every `lb` with the same configuration maps a key to the same upstream, and removing one of
/// N upstreams moves only the keys that were on it (about 1/N).
pub(super) struct Ring {
    points: Vec<(u64, u32)>,
    /// For each value of a hash's top 16 bits, where its points start: a lookup touches one
    /// small stretch of the ring instead of binary-searching all of it (which, for large
    /// pools, is a cache miss per step).
    index: Vec<u32>,
}

const INDEX_BITS: u32 = 16;

impl Ring {
    pub(super) fn new(members: &[Member]) -> Self {
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
