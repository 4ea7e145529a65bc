use std::collections::HashMap;

use super::weighted::deadline_order;
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
                max_conns: None,
                backup: false,
                origin: None,
            }
        })
        .collect()
}

fn pool(selection: Selection, list: Vec<Upstream>) -> Pool {
    let mut config = PoolConfig::with_defaults(list);
    config.selection = selection;
    Pool::new(&config, &Registry::new(), None)
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
    for selection in Selection::ALL {
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

#[test]
fn an_empty_pool_picks_nothing_with_every_algorithm() {
    // A pool whose discovered names resolve to nothing yet (`discovery.allow_empty`).
    for selection in Selection::ALL {
        let p = pool(selection, Vec::new());
        assert!(matches!(p.pick(42, &[]), Pick::Empty), "{selection}");
    }
}
