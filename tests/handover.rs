//! Runtime state across process changes: admin actions and weights survive `lb upgrade` under
//! load (and a stop and start only with `--keep-state`); the old process refuses changes and
//! reports draining once it hands over; `/healthz`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Starts lb over `upstreams` with an admin listener (loopback, no token).
fn start(upstreams: &[String]) -> (Lb, SocketAddr) {
    let dir = TempDir::new();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let extra = format!("{FAST_CHECKS}  admin:\n    listen: \"{admin}\"\n");
    let config = config_yaml(&dir.0, listen, upstreams, &extra);
    let lb = Lb::start_in(dir, listen, &config);
    // Ready: the proxy listens and lb says it serves.
    assert!(wait_until(Duration::from_secs(10), || call_ok(admin)));
    (lb, admin)
}

fn call(admin: SocketAddr, method: &str, path: &str, body: &str) -> Response {
    send_raw(
        admin,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
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
    let (lb, admin) = start(&[a.addr, b.addr, c.addr, d.addr].map(|x| x.to_string()));
    let old = lb.child.id() as i32;
    steer(admin, a.addr, b.addr, c.addr);
    let (a_before, b_before) = (a.requests(), b.requests());

    let load = Load::start(lb.addr, 6, 5000);
    load.wait_for(200);
    // Keeps the old process alive, draining, for a while after the hand-over.
    let slow = {
        let addr = lb.addr;
        std::thread::spawn(move || try_get(addr, "/slow?sleep_ms=3000"))
    };
    assert!(wait_until(Duration::from_secs(5), || {
        [&c, &d].iter().any(|b| {
            b.state
                .seen
                .lock()
                .is_ok_and(|seen| seen.iter().any(|t| t.starts_with("/slow")))
        })
    }));
    let (ok, out) = lb_command(&["upgrade", "-c", lb.conf()]);
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
    let (mut lb, admin) = start(&[a.addr, b.addr, c.addr, d.addr].map(|x| x.to_string()));
    steer(admin, a.addr, b.addr, c.addr);
    let (ok, out) = lb_command(&["stop", "-c", lb.conf()]);
    assert!(ok, "{out}");
    let _ = lb.child.wait();

    // Started again with --keep-state: the state is back.
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(&lb.log_path)
        .unwrap();
    lb.child = std::process::Command::new(lb_binary())
        .args(["--keep-state", "-c", lb.conf()])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(15), || {
        call_ok(admin) && lb.get("/").status == 200
    }));
    assert_steered(&lb, admin, [&a, &b, &c, &d]);

    // Stopped and started without it: a fresh start.
    let (ok, out) = lb_command(&["stop", "-c", lb.conf()]);
    assert!(ok, "{out}");
    let _ = lb.child.wait();
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(&lb.log_path)
        .unwrap();
    lb.child = std::process::Command::new(lb_binary())
        .args(["-c", lb.conf()])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(15), || call_ok(admin)));
    let all = overview(admin);
    for backend in [&a, &b, &c, &d] {
        assert_eq!(upstream(&all, backend.addr)["state"], "up", "{all}");
        assert_eq!(upstream(&all, backend.addr)["weight"], 1, "{all}");
    }
}

fn call_ok(admin: SocketAddr) -> bool {
    try_get(admin, "/healthz").is_ok_and(|r| r.status == 200)
}

#[test]
fn healthz_and_changes_while_handing_over() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (lb, admin) = start(&[a.addr.to_string(), b.addr.to_string()]);
    let health = call(admin, "GET", "/healthz", "");
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.text(), "serving\n");

    // SIGQUIT with no new process to take the sockets: while lb tries to hand over, it says
    // it is draining and refuses changes; when nobody took them, it serves on as before.
    let pid = lb.child.id() as i32;
    lb::ops::instance::signal(pid, libc::SIGQUIT).unwrap();
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
    assert!(wait_until(Duration::from_secs(5), || call_ok(admin)));
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
