//! `lb.limits.rate`: a token bucket per client address, in bounded memory.
//!
//! The buckets live in shards of a map capped at [`MAX_CLIENTS`] addresses in all. A bucket
//! that has filled up again is the same as no bucket, so when a shard is full its full buckets
//! are dropped; should every address in it still be limited (a flood from very many addresses),
//! a new address is let through unlimited rather than refused: the cap protects lb's memory,
//! not the upstreams.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::config::RateLimit;

/// Client addresses tracked at most.
pub(crate) const MAX_CLIENTS: usize = 1 << 17;
const SHARDS: usize = 64;

struct Bucket {
    tokens: f64,
    /// Process clock, milliseconds.
    last: u64,
}

#[derive(Default)]
struct Shard {
    buckets: HashMap<IpAddr, Bucket>,
    /// When full buckets were last dropped (process clock, ms): at most once a second, so
    /// that a flood of new addresses does not scan the shard on every request.
    last_sweep: u64,
}

/// The buckets of every client address.
pub(crate) struct RateLimiter {
    shards: Vec<Mutex<Shard>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl RateLimiter {
    /// Takes a token for `client` at `now_ms`; `Err(seconds)` (to wait before retrying) when
    /// its bucket is empty.
    pub(crate) fn check(&self, client: IpAddr, limit: &RateLimit, now_ms: u64) -> Result<(), u64> {
        let shard = &self.shards[shard_of(&client)];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        let burst = f64::from(limit.burst);
        let refill = |b: &Bucket| {
            let elapsed = now_ms.saturating_sub(b.last) as f64 / 1000.0;
            (b.tokens + elapsed * limit.per_second).min(burst)
        };
        let full = |shard: &Shard| shard.buckets.len() >= MAX_CLIENTS / SHARDS;
        if full(&shard) && !shard.buckets.contains_key(&client) {
            if now_ms.saturating_sub(shard.last_sweep) >= 1000 {
                shard.last_sweep = now_ms;
                shard.buckets.retain(|_, b| refill(b) < burst);
            }
            if full(&shard) {
                return Ok(());
            }
        }
        let bucket = shard.buckets.entry(client).or_insert(Bucket {
            tokens: burst,
            last: now_ms,
        });
        bucket.tokens = refill(bucket);
        bucket.last = now_ms;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / limit.per_second;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

fn shard_of(ip: &IpAddr) -> usize {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    (SEED.get_or_init(Default::default).hash_one(ip) as usize) % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_the_rate() {
        let limiter = RateLimiter::default();
        let limit = RateLimit {
            per_second: 2.0,
            burst: 3,
        };
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.check(ip, &limit, 1000), Ok(()));
        }
        assert_eq!(limiter.check(ip, &limit, 1000), Err(1));
        assert_eq!(limiter.check(other, &limit, 1000), Ok(()), "per address");
        // Half a second brings one token back.
        assert_eq!(limiter.check(ip, &limit, 1500), Ok(()));
        assert!(limiter.check(ip, &limit, 1500).is_err());
        // A long pause refills up to the burst only.
        for _ in 0..3 {
            assert_eq!(limiter.check(ip, &limit, 100_000), Ok(()));
        }
        assert!(limiter.check(ip, &limit, 100_000).is_err());
    }

    #[test]
    fn memory_stays_bounded() {
        let limiter = RateLimiter::default();
        let limit = RateLimit {
            per_second: 1.0,
            burst: 1,
        };
        for i in 0..(MAX_CLIENTS as u32 + 20_000) {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = limiter.check(ip, &limit, 1000);
        }
        let total: usize = limiter
            .shards
            .iter()
            .map(|s| s.lock().map(|s| s.buckets.len()).unwrap_or(0))
            .sum();
        assert!(total <= MAX_CLIENTS, "{total} buckets");
    }
}
