//! The cost of one pick (and its release) for each algorithm, for pools of 10, 1 000 and
//! 10 000 upstreams: it must stay flat as the pool grows.
//!
//! `cargo bench --bench selection`

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lb::bench::{hash_bytes, Pick, Pool, Registry};
use lb::config::{PoolConfig, Selection, Upstream};

fn pool(selection: Selection, size: usize) -> Pool {
    let upstreams: Vec<Upstream> = (0..size)
        .map(|i| {
            let addr: SocketAddr = format!("10.{}.{}.{}:80", i >> 16, (i >> 8) & 255, i & 255)
                .parse()
                .expect("address");
            Upstream {
                name: addr.to_string(),
                addr,
                // Mixed weights, so that weighted schedules are exercised.
                weight: 1 + i % 4,
                max_conns: None,
                backup: false,
                origin: None,
            }
        })
        .collect();
    let mut config = PoolConfig::with_defaults(upstreams);
    config.selection = selection;
    Pool::new(&config, &Registry::new(), None)
}

fn picks(c: &mut Criterion) {
    for selection in Selection::ALL {
        let mut group = c.benchmark_group(format!("pick/{selection}"));
        for size in [10usize, 1_000, 10_000] {
            let pool = pool(selection, size);
            let mut key = 0u64;
            group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
                b.iter(|| {
                    key = key.wrapping_add(1);
                    match pool.pick(hash_bytes(&key.to_le_bytes()), &[]) {
                        Pick::Got(lease) => black_box(lease.upstream().addr),
                        _ => panic!("nothing picked"),
                    }
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = picks
}
criterion_main!(benches);
