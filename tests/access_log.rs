//! The access log: lines match the requests made, in both formats, and logging goes on across
//! rotation (by SIGUSR1 and by the file being moved away).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::backends::Backend;
use common::client::request;
use common::lb_conf::LbConf;
use common::lb_process::{read_pid, signal, Lb, TempDir};
use common::wait::wait_until;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Waits until `path` holds `n` lines.
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    assert!(
        wait_until(Duration::from_secs(5), || lines(path).len() >= n),
        "{} has {} lines, expected {n}",
        path.display(),
        lines(path).len()
    );
    lines(path)
}

/// Starts lb logging to `access.log` in its own directory; returns it with the log's path.
fn start(upstreams: &[&Backend], format: &str) -> (Lb, PathBuf) {
    let dir = TempDir::new();
    let log = dir.0.join("access.log");
    let config = LbConf::new()
        .upstreams(upstreams.iter().copied())
        .access_log(&log, format);
    (Lb::start_in(dir, config), log)
}

#[test]
fn combined_lines_match_the_requests() {
    let a = Backend::start("a");
    let (lb, log) = start(&[&a], "combined");
    request("GET", lb.addr, "/a?x=1")
        .header("User-Agent", "probe/1.0")
        .header("Referer", "http://r/")
        .send()
        .unwrap();
    request("POST", lb.addr, "/b").body("hello").send().unwrap();
    let got = wait_lines(&log, 2);
    let first = got.iter().find(|l| l.contains("/a?x=1")).unwrap();
    let post = got.iter().find(|l| l.contains("POST")).unwrap();
    assert!(first.starts_with("127.0.0.1 - - ["), "{first}");
    assert!(first.contains("\"GET /a?x=1 HTTP/1.1\" 200 "), "{first}");
    assert!(first.contains("\"http://r/\" \"probe/1.0\""), "{first}");
    assert!(first.contains(&format!("upstream={}", a.addr)), "{first}");
    assert!(first.contains("retries=0"), "{first}");
    assert!(post.contains("\"POST /b HTTP/1.1\" 200 "), "{post}");
    // The byte count is the body the client got.
    let body_len = lb.get("/c").text().len();
    let got = wait_lines(&log, 3);
    assert!(
        got[2].contains(&format!("\" 200 {body_len} ")),
        "{}",
        got[2]
    );
}

#[test]
fn json_lines_carry_every_field() {
    let (a, mut b) = (Backend::start("a"), Backend::start("b"));
    let (lb, log) = start(&[&a, &b], "json");
    b.kill();
    // Round robin: the second request meets the dead b and is retried on a.
    lb.get("/one");
    lb.get("/two");
    let got = wait_lines(&log, 2);
    // A line is written just after its response is sent, so two quick requests may log in
    // either order.
    let second: serde_json::Value = got
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["path"] == "/two")
        .unwrap();
    assert_eq!(second["method"], "GET");
    assert_eq!(second["path"], "/two");
    assert_eq!(second["status"], 200);
    assert_eq!(second["client"], "127.0.0.1");
    assert_eq!(second["upstream"], a.addr.to_string());
    assert_eq!(second["retries"], 1);
    assert!(second["upstream_time"].as_f64().unwrap() >= 0.0);
    assert!(second["total_time"].as_f64().unwrap() >= second["upstream_time"].as_f64().unwrap());
    assert!(second["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn logging_survives_rotation() {
    let a = Backend::start("a");
    let (lb, log) = start(&[&a], "combined");
    let dir = log.parent().unwrap().to_path_buf();
    let pid = read_pid(&lb.pid_file()).expect("pid");
    for i in 0..5 {
        lb.get(&format!("/before/{i}"));
    }
    wait_lines(&log, 5);

    // logrotate, then SIGUSR1 (as with nginx).
    let first = dir.join("access.log.1");
    std::fs::rename(&log, &first).unwrap();
    signal(pid, libc::SIGUSR1).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || log.exists()),
        "no new access log after SIGUSR1"
    );
    for i in 0..5 {
        lb.get(&format!("/after-signal/{i}"));
    }
    let after_signal = wait_lines(&log, 5);
    assert!(after_signal.iter().all(|l| l.contains("/after-signal/")));

    // Moved away with no signal: lb notices within about a second.
    let second = dir.join("access.log.2");
    std::fs::rename(&log, &second).unwrap();
    let mut sent = 0;
    assert!(wait_until(Duration::from_secs(5), || {
        lb.get(&format!("/unsignalled/{sent}"));
        sent += 1;
        log.exists()
    }));
    lb.get("/last");
    sent += 1;
    // Nothing was lost along the way.
    assert!(wait_until(Duration::from_secs(5), || {
        lines(&first).len() + lines(&second).len() + lines(&log).len() == 10 + sent
    }));
    assert!(lines(&log).last().unwrap().contains("/last"));
}
