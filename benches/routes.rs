//! The cost of finding the route of a request, for 1, 100 and 10,000 routes: one exact host
//! per route (the multi-tenant case), and 100 prefix paths on one host (the worst case the
//! table walks).
//!
//! `cargo bench --bench routes`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use lb::bench::RouteTable;
use lb::config::{HostMatch, PathMatch, RouteConfig};

fn by_host(count: usize) -> RouteTable {
    let routes: Vec<RouteConfig> = (0..count)
        .map(|i| RouteConfig {
            host: HostMatch::Exact(format!("site{i}.example.com")),
            ..RouteConfig::catch_all(&format!("r{i}"), 0)
        })
        .chain(std::iter::once(RouteConfig::catch_all("last", 0)))
        .collect();
    RouteTable::new(&routes)
}

fn by_path(count: usize) -> RouteTable {
    let routes: Vec<RouteConfig> = (0..count)
        .map(|i| RouteConfig {
            host: HostMatch::Exact("www.example.com".into()),
            path: PathMatch::Prefix(format!("/app{i}/")),
            ..RouteConfig::catch_all(&format!("r{i}"), 0)
        })
        .chain(std::iter::once(RouteConfig::catch_all("last", 0)))
        .collect();
    RouteTable::new(&routes)
}

fn lookups(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("route/by_host");
    for count in [1usize, 100, 10_000] {
        let table = by_host(count);
        let host = format!("site{}.example.com", count - 1);
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, _| {
            b.iter(|| black_box(table.find(Some(&host), "/index.html", &Method::GET, &headers)))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("route/by_path_last_of");
    for count in [1usize, 100] {
        let table = by_path(count);
        let path = format!("/app{}/index.html", count - 1);
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, _| {
            b.iter(|| black_box(table.find(Some("www.example.com"), &path, &Method::GET, &headers)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = lookups
}
criterion_main!(benches);
