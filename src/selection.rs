//! Choosing the upstream for a request.
//!
//! The upstream set lives in pingora's [`LoadBalancer`], which also holds each upstream's health
//! as marked by the active checks (see [`crate::health`]). This module picks among the healthy
//! ones with the configured algorithm and never hands out an upstream a request already tried.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use futures::FutureExt;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::selection::{Random, RoundRobin};
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;

use crate::config::{Selection, Upstream};

/// The upstreams and the algorithm that picks among them.
pub struct Balancer {
    algorithm: Algorithm,
    /// How many picks the algorithm may make before the full scan takes over: twice around
    /// the set (fixed with the set, so computed once).
    walk: usize,
}

enum Algorithm {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
}

impl Balancer {
    /// Builds the upstream set. `check`, when given, is what marks upstreams up and down.
    pub fn new(
        selection: Selection,
        upstreams: &[Upstream],
        check: Option<Box<dyn HealthCheck + Send + Sync>>,
    ) -> Self {
        let set: BTreeSet<Backend> = upstreams.iter().map(backend_for).collect();
        let backends = Backends::new(discovery::Static::new(set));
        let mut algorithm = match selection {
            Selection::RoundRobin => Algorithm::RoundRobin(LoadBalancer::from_backends(backends)),
            Selection::Random => Algorithm::Random(LoadBalancer::from_backends(backends)),
        };
        if let Some(check) = check {
            match &mut algorithm {
                Algorithm::RoundRobin(lb) => lb.set_health_check(check),
                Algorithm::Random(lb) => lb.set_health_check(check),
            }
        }
        // Static discovery answers at once; this builds the selector from the upstream list.
        let updated = match &algorithm {
            Algorithm::RoundRobin(lb) => lb.update().now_or_never(),
            Algorithm::Random(lb) => lb.update().now_or_never(),
        };
        if !matches!(updated, Some(Ok(()))) {
            log::error!("building the upstream selector did not complete");
        }
        Balancer {
            algorithm,
            walk: 2 * upstreams.len() + 1,
        }
    }

    /// The upstream set with its health state.
    pub fn backends(&self) -> &Backends {
        match &self.algorithm {
            Algorithm::RoundRobin(lb) => lb.backends(),
            Algorithm::Random(lb) => lb.backends(),
        }
    }

    /// The next healthy upstream that is not in `exclude`, or `None` if there is none.
    pub fn select(&self, exclude: &[SocketAddr]) -> Option<Backend> {
        let accept = |b: &Backend, healthy: bool| healthy && !is_excluded(b, exclude);
        // A random walk can miss the one healthy upstream left, so a full scan backs it up.
        let picked = match &self.algorithm {
            Algorithm::RoundRobin(lb) => lb.select_with(b"", self.walk, accept),
            Algorithm::Random(lb) => lb.select_with(b"", self.walk, accept),
        };
        picked.or_else(|| {
            let backends = self.backends();
            backends
                .get_backend()
                .iter()
                .find(|b| backends.ready(b) && !is_excluded(b, exclude))
                .cloned()
        })
    }
}

fn is_excluded(backend: &Backend, exclude: &[SocketAddr]) -> bool {
    match backend.addr.as_inet() {
        Some(addr) => exclude.contains(addr),
        None => false,
    }
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
                }
            })
            .collect()
    }

    fn port(b: &Backend) -> u16 {
        b.addr.as_inet().unwrap().port()
    }

    #[test]
    fn round_robin_rotates_strictly() {
        let balancer = Balancer::new(Selection::RoundRobin, &upstreams(&[1, 1, 1]), None);
        let picks: Vec<u16> = (0..6)
            .map(|_| port(&balancer.select(&[]).unwrap()))
            .collect();
        assert_eq!(picks[0..3], picks[3..6]);
        let distinct: BTreeSet<u16> = picks[0..3].iter().copied().collect();
        assert_eq!(distinct.len(), 3);
    }

    #[test]
    fn weights_are_honoured() {
        let balancer = Balancer::new(Selection::RoundRobin, &upstreams(&[1, 3]), None);
        let heavy = (0..400)
            .filter(|_| port(&balancer.select(&[]).unwrap()) == 10_001)
            .count();
        assert_eq!(heavy, 300);
    }

    #[test]
    fn excluded_and_unhealthy_upstreams_are_skipped() {
        for selection in [Selection::RoundRobin, Selection::Random] {
            let list = upstreams(&[1, 1, 1]);
            let balancer = Balancer::new(selection, &list, None);
            let exclude = [list[0].addr, list[1].addr];
            for _ in 0..50 {
                assert_eq!(port(&balancer.select(&exclude).unwrap()), 10_002);
            }
            let all: Vec<SocketAddr> = list.iter().map(|u| u.addr).collect();
            assert!(balancer.select(&all).is_none());
        }
    }
}
