//! Active health checks as a client sees them: dead backends leave the rotation and come back,
//! and no request that could be retried elsewhere fails.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::backends::Backend;
use common::client::{try_get, KeepAliveClient};
use common::lb_conf::{fast_checks, fields, LbConf};
use common::lb_process::Lb;
use common::ports::unique_addr;
use common::wait::wait_until;

fn backend_names(lb: &Lb, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| lb.get("/").backend().unwrap_or_default())
        .collect()
}

#[test]
fn backend_killed_under_traffic_costs_no_request_and_comes_back() {
    let (a, mut b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let lb = Lb::start(LbConf::new().upstreams([&a, &b, &c]).health(fast_checks()));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (addr, failures, done) = (lb.addr, failures.clone(), done.clone());
            std::thread::spawn(move || {
                let mut keep_alive = KeepAliveClient::new(addr);
                for n in 0..300 {
                    let result = if i % 2 == 0 {
                        keep_alive.get(&format!("/ka/{n}"))
                    } else {
                        try_get(addr, &format!("/new/{n}"))
                    };
                    match result {
                        Ok(r) if r.status == 200 => {}
                        other => {
                            eprintln!("client {i} request {n}: {other:?}");
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(30), || done
        .load(Ordering::SeqCst)
        >= 300));
    b.kill();
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0, "{}", lb.log());
    assert!(b.requests() > 0, "b served before it was killed");

    lb.expect_log(&format!(
        "upstream {} is DOWN after 2 failed checks",
        b.addr
    ));
    let after = backend_names(&lb, 30);
    assert!(after.iter().all(|n| n == "a" || n == "c"), "{after:?}");
    assert_eq!(after.iter().filter(|n| *n == "a").count(), 15, "{after:?}");

    b.restart();
    lb.expect_log(&format!("upstream {} is UP after 2 passed checks", b.addr));
    let back = backend_names(&lb, 30);
    assert_eq!(back.iter().filter(|n| *n == "b").count(), 10, "{back:?}");
}

#[test]
fn backend_down_at_start_gets_no_request() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let dead = unique_addr();
    // No retries: a request sent to the dead upstream would fail, so none may be.
    let lb = Lb::start(
        LbConf::new()
            .upstreams([a.addr, dead, b.addr])
            .retries(0)
            .health(fast_checks()),
    );
    for _ in 0..30 {
        assert_eq!(lb.get("/").status, 200);
    }
    assert_eq!(a.requests() + b.requests(), 30);
    assert!(
        lb.log().contains(&format!(
            "upstream {dead} is DOWN (first check failed): connection refused"
        )),
        "{}",
        lb.log()
    );
}

#[test]
fn http_check_removes_backend_answering_503_on_its_health_path() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let checks = fast_checks()
        .set("type", "http")
        .set("path", "/health")
        .set("expect_status", r#"["200-299"]"#);
    let lb = Lb::start(LbConf::new().upstreams([&a, &b]).health(checks));
    assert_eq!(
        backend_names(&lb, 4).iter().filter(|n| *n == "b").count(),
        2
    );

    b.set_health(503);
    lb.expect_log(&format!(
        "upstream {} is DOWN after 2 failed checks: health check answered HTTP 503",
        b.addr
    ));
    assert!(backend_names(&lb, 20).iter().all(|n| n == "a"));

    b.set_health(200);
    lb.expect_log(&format!("upstream {} is UP after 2 passed checks", b.addr));
    assert_eq!(
        backend_names(&lb, 20).iter().filter(|n| *n == "b").count(),
        10
    );
}

#[test]
fn all_backends_down_is_a_503_and_service_resumes() {
    let (mut a, mut b) = (Backend::start("a"), Backend::start("b"));
    let mut lb = Lb::start(LbConf::new().upstreams([&a, &b]).health(fast_checks()));
    assert_eq!(lb.get("/").status, 200);
    a.kill();
    b.kill();
    // While the checks catch up, requests fail over and then fail with 502; once both are down
    // the answer is a clear 503.
    assert!(wait_until(Duration::from_secs(10), || lb.get("/").status == 503));
    let resp = lb.get("/");
    assert_eq!(resp.status, 503);
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(
        resp.text().contains("no healthy upstream"),
        "{}",
        resp.text()
    );
    assert!(lb.is_running());

    a.restart();
    assert!(wait_until(Duration::from_secs(10), || lb.get("/").status == 200));
    assert_eq!(lb.get("/").backend().as_deref(), Some("a"));
}

#[test]
fn dead_backend_between_checks_is_retried_elsewhere() {
    // Checks too slow to notice: only retries protect the client.
    let (a, mut b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start(
        LbConf::new()
            .upstreams([&a, &b])
            .health(fields().set("interval", "1h")),
    );
    b.kill();
    for _ in 0..20 {
        let resp = lb.get("/");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.backend().as_deref(), Some("a"));
    }
}
