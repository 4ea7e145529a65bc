//! HTTP/2 abuse against lb's h2c listener, with a frame-level client (tests/py/h2_abuse.py):
//! rapid reset (CVE-2023-44487), CONTINUATION flood, SETTINGS and PING floods, more concurrent
//! streams than allowed. In each case lb stays up, its memory stays bounded, and another
//! client's plain requests are served during the attack and after it.

mod common;

use std::time::Duration;

use common::backends::Backend;
use common::client::{get, try_get};
use common::lb_conf::LbConf;
use common::lb_process::Lb;
use common::python::run;
use common::wait::wait_until;

/// lb's resident memory in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Memory lb may gain during one attack: generous, far below what an unbounded one would take.
const RSS_GROWTH_LIMIT_KIB: u64 = 100 * 1024;

/// Runs one attack against a fresh lb while a plain client keeps requesting; returns the
/// attack's report after checking that lb survived it within bounds.
fn attack(mode: &str, count: usize) -> serde_json::Value {
    let backend = Backend::start("a");
    let mut lb = Lb::start(LbConf::new().upstream(&backend));
    let addr = lb.addr;
    assert!(
        wait_until(Duration::from_secs(15), || try_get(addr, "/")
            .is_ok_and(|r| r.status == 200)),
        "lb not ready"
    );
    let before = rss_kib(lb.pid());
    let target = addr.to_string();
    let count_arg = count.to_string();
    let mode_arg = mode.to_string();
    let attacker = std::thread::spawn(move || {
        run(
            "h2_abuse.py",
            &[&target, &mode_arg, &count_arg],
            Duration::from_secs(120),
        )
    });
    // Another client, meanwhile (bounded: at most 500 requests).
    let mut served = 0;
    while !attacker.is_finished() && served < 500 {
        let r = get(addr, "/during");
        assert_eq!(r.status, 200, "a plain request failed during {mode}");
        served += 1;
    }
    let out = attacker.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{mode}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(lb.is_running(), "lb died during {mode}: {}", lb.log());
    let after = rss_kib(lb.pid());
    assert!(
        after < before + RSS_GROWTH_LIMIT_KIB,
        "{mode}: RSS {before} KiB -> {after} KiB"
    );
    assert_eq!(get(addr, "/after").status, 200, "after {mode}");
    assert!(!lb.log().contains("panicked"), "{}", lb.log());
    eprintln!("{mode}: {report}; RSS {before} -> {after} KiB; {served} plain requests during");
    report
}

/// HTTP/2 error code ENHANCE_YOUR_CALM.
const ENHANCE_YOUR_CALM: u64 = 11;
/// HTTP/2 error code REFUSED_STREAM.
const REFUSED_STREAM: &str = "7";

#[test]
fn rapid_reset_ends_the_connection() {
    let count = 20_000;
    let report = attack("rapid-reset", count);
    // Streams reset faster than lb can serve them: lb sends GOAWAY and closes long before
    // the 20,000 streams are all sent.
    assert!(
        report["goaway"] == ENHANCE_YOUR_CALM
            || (report["closed"] == true && report["sent"].as_u64() < Some(2 * count as u64)),
        "{report}"
    );
}

#[test]
fn continuation_flood_ends_the_connection() {
    let count = 2_000; // 32 MB of header block if lb took it all
    let report = attack("continuation", count);
    assert_eq!(report["closed"], true, "{report}");
    assert!(report["sent"].as_u64() < Some(count as u64), "{report}");
}

#[test]
fn settings_flood_is_survived() {
    let report = attack("settings", 20_000);
    assert!(report["sent"].as_u64() > Some(0), "{report}");
}

#[test]
fn ping_flood_is_survived() {
    let report = attack("ping", 20_000);
    assert!(report["sent"].as_u64() > Some(0), "{report}");
}

#[test]
fn streams_beyond_the_advertised_limit_are_refused() {
    let report = attack("streams", 150);
    assert_eq!(report["max_concurrent_streams"], 100, "{report}");
    assert!(
        report["resets"][REFUSED_STREAM].as_u64() >= Some(50),
        "the 50 streams beyond 100 must be refused: {report}"
    );
}
