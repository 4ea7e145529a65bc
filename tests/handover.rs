//! Runtime state across process changes: admin actions and weights survive `lb upgrade` under
//! load (and a stop and start only with `--keep-state`); the old process refuses changes and
//! reports draining once it hands over; `/healthz`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::backends::Backend;
use common::client::{request, try_get, Response};
use common::lb_conf::{fast_checks, LbConf};
use common::lb_process::{pid_alive, read_pid, signal, Lb};
use common::load::Load;
use common::ports::unique_addr;
use common::wait::wait_until;
use serde_json::Value;

/// Starts lb over `upstreams` with fast checks and an admin listener (loopback, no token);
/// returns once `/healthz` says it serves.
fn start(upstreams: &[&Backend]) -> (Lb, SocketAddr) {
    let lb = Lb::start(
        LbConf::new()
            .upstreams(upstreams.iter().copied())
            .health(fast_checks())
            .admin(unique_addr(), None),
    );
    let admin = lb.admin();
    assert!(
        wait_until(Duration::from_secs(10), || healthz_ok(admin)),
        "{}",
        lb.log()
    );
    (lb, admin)
}

/// One admin request on a connection of its own.
fn call(admin: SocketAddr, method: &str, path: &str, body: &str) -> Response {
    let mut call = request(method, admin, path);
    if method != "GET" {
        call = call.body(body);
    }
    call.send()
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn healthz_ok(admin: SocketAddr) -> bool {
    try_get(admin, "/healthz").is_ok_and(|r| r.status == 200)
}

fn overview(admin: SocketAddr) -> Value {
    let r = call(admin, "GET", "/api/upstreams", "");
    serde_json::from_str(&r.text()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

fn upstream(all: &Value, addr: SocketAddr) -> Value {
    all["upstreams"]
        .as_array()
        .and_then(|list| list.iter().find(|u| u["addr"] == addr.to_string()))
        .cloned()
        .unwrap_or_else(|| panic!("{addr} not listed: {all}"))
}

/// Drains `a`, disables `b`, gives `c` weight 3 (d keeps 1).
fn steer(admin: SocketAddr, a: SocketAddr, b: SocketAddr, c: SocketAddr) {
    assert_eq!(
        call(admin, "POST", &format!("/api/upstreams/{a}/drain"), "").status,
        200
    );
    assert_eq!(
        call(admin, "POST", &format!("/api/upstreams/{b}/disable"), "").status,
        200
    );
    assert_eq!(
        call(
            admin,
            "PUT",
            &format!("/api/upstreams/{c}/weight"),
            "{\"weight\": 3}"
        )
        .status,
        200
    );
}

/// The state kept: a draining, b disabled, c at weight 3, and traffic split 3:1 over c and d.
fn assert_steered(lb: &Lb, admin: SocketAddr, backends: [&Backend; 4]) {
    let [a, b, c, d] = backends;
    let all = overview(admin);
    assert_eq!(upstream(&all, a.addr)["state"], "draining", "{all}");
    assert_eq!(upstream(&all, b.addr)["state"], "disabled", "{all}");
    assert_eq!(upstream(&all, c.addr)["weight"], 3, "{all}");
    assert_eq!(upstream(&all, d.addr)["weight"], 1, "{all}");
    let (a_before, b_before) = (a.requests(), b.requests());
    let names: Vec<String> = (0..40)
        .map(|_| lb.get("/split").backend().unwrap_or_default())
        .collect();
    assert_eq!(names.iter().filter(|n| *n == "c").count(), 30, "{names:?}");
    assert_eq!(names.iter().filter(|n| *n == "d").count(), 10, "{names:?}");
    assert_eq!((a.requests(), b.requests()), (a_before, b_before));
}

#[test]
fn upgrade_under_load_keeps_admin_state_and_loses_nothing() {
    let (a, b, c, d) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
        Backend::start("d"),
    );
    let (lb, admin) = start(&[&a, &b, &c, &d]);
    let old = lb.pid();
    steer(admin, a.addr, b.addr, c.addr);
    let (a_before, b_before) = (a.requests(), b.requests());

    let load = Load::start(lb.addr, 6, 5000);
    load.wait_for(200);
    // Keeps the old process alive, draining, for a while after the hand-over.
    let slow = {
        let addr = lb.addr;
        std::thread::spawn(move || try_get(addr, "/slow?sleep_ms=3000"))
    };
    assert!(
        wait_until(Duration::from_secs(5), || c.has_seen("/slow")
            || d.has_seen("/slow")),
        "the slow request reached neither c nor d"
    );
    let (ok, out) = lb.command("upgrade");
    assert!(ok, "{out}\n{}", lb.log());
    let new = read_pid(&lb.pid_file()).unwrap_or_default();
    assert_ne!(new, old);

    // Once the new process serves, the old one, still finishing the slow request, no longer
    // answers on the admin address: every new connection reaches the new process.
    assert!(wait_until(Duration::from_secs(5), || overview(admin)
        ["pid"]
        == new));
    for _ in 0..20 {
        assert_eq!(overview(admin)["pid"], new);
    }
    assert!(pid_alive(old), "the old process is still draining");
    assert!(
        wait_until(Duration::from_secs(20), || !pid_alive(old)),
        "{}",
        lb.log()
    );
    load.wait_for_more(200);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}\n{}", report.errors, lb.log());
    assert!(report.ok > 500, "too little load: {report:?}");
    let slow = slow
        .join()
        .unwrap()
        .expect("slow request cut by the upgrade");
    assert_eq!(slow.status, 200);
    // Neither process sent anything to the drained or the disabled upstream meanwhile.
    assert_eq!((a.requests(), b.requests()), (a_before, b_before));

    // The new process answers on the admin address, with the state the old one had.
    assert_eq!(overview(admin)["pid"], new);
    assert_steered(&lb, admin, [&a, &b, &c, &d]);
    lb.expect_log(&format!(
        "runtime state restored (from pid {old}): {}: draining",
        a.addr
    ));
}

#[test]
fn keep_state_is_asked_for_on_a_fresh_start() {
    let (a, b, c, d) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
        Backend::start("d"),
    );
    let (mut lb, admin) = start(&[&a, &b, &c, &d]);
    steer(admin, a.addr, b.addr, c.addr);
    let (ok, out) = lb.command("stop");
    assert!(ok, "{out}");
    let _ = lb.child.wait();

    // Started again with --keep-state: the state is back.
    lb.respawn(&["--keep-state"]);
    assert!(
        wait_until(Duration::from_secs(15), || {
            healthz_ok(admin) && lb.get("/").status == 200
        }),
        "{}",
        lb.log()
    );
    assert_steered(&lb, admin, [&a, &b, &c, &d]);

    // Stopped and started without it: a fresh start.
    let (ok, out) = lb.command("stop");
    assert!(ok, "{out}");
    let _ = lb.child.wait();
    lb.respawn(&[]);
    assert!(
        wait_until(Duration::from_secs(15), || healthz_ok(admin)),
        "{}",
        lb.log()
    );
    let all = overview(admin);
    for backend in [&a, &b, &c, &d] {
        assert_eq!(upstream(&all, backend.addr)["state"], "up", "{all}");
        assert_eq!(upstream(&all, backend.addr)["weight"], 1, "{all}");
    }
}

#[test]
fn healthz_and_changes_while_handing_over() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (lb, admin) = start(&[&a, &b]);
    let health = call(admin, "GET", "/healthz", "");
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.text(), "serving\n");

    // SIGQUIT with no new process to take the sockets: while lb tries to hand over, it says
    // it is draining and refuses changes; when nobody took them, it serves on as before.
    signal(lb.pid(), libc::SIGQUIT).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || {
            call(admin, "GET", "/healthz", "").status == 503
        }),
        "{}",
        lb.log()
    );
    let refused = call(
        admin,
        "POST",
        &format!("/api/upstreams/{}/drain", a.addr),
        "",
    );
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.text().contains("nothing was changed"),
        "{}",
        refused.text()
    );
    assert_eq!(lb.get("/").status, 200, "still serving");
    lb.expect_log("hand-over failed");
    assert!(wait_until(Duration::from_secs(5), || healthz_ok(admin)));
    assert_eq!(
        call(
            admin,
            "POST",
            &format!("/api/upstreams/{}/drain", a.addr),
            ""
        )
        .status,
        200
    );
    assert_eq!(upstream(&overview(admin), a.addr)["state"], "draining");
}
