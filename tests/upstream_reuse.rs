//! A backend that sends an unsolicited response after each real one must not desync pooled
//! upstream connections: a connection with unread bytes is to be dropped before it is reused
//! (pingora 0.9 checks with a non-blocking read through tokio when a connection is returned to
//! the pool, while it idles and when it is taken out; `vendor/patches/0001` adds a kernel
//! `recv(MSG_PEEK)`). The one request in flight when the stray bytes arrive can still get them
//! (HTTP/1.1 cannot tell), but never a response meant for another request.
//!
//! Ignored: the goal is not reached for every backend yet. Measured (debug build, 80 requests
//! in a row; `got the stray` is the request in flight when the stray arrived, which HTTP/1.1
//! cannot protect; `another's` is the cascade):
//!
//! | backend | stray after 0 ms | 2 ms | 10 ms |
//! |---|---|---|---|
//! | Nagle on (default) | 0-2 stray, 0-2 another's | ~40 stray, ~37 another's | ~40 stray, ~39 another's |
//! | `TCP_NODELAY` (`LB_STRAY_NODELAY=1`) | 1 stray, 0 another's | 38 stray, 0 another's | 40 stray, 0-1 another's |
//!
//! With Nagle the backend's real answer to request N leaves only when its stray is
//! acknowledged, after lb has already sent request N+1 on the connection: no check before reuse
//! can see bytes that have not arrived, and each answer goes to the next request. Closing that
//! needs lb to distrust a response that was readable before its request was written (a pingora
//! change not made here). `vendor/patches/0001` (a kernel peek at reuse) made no measurable
//! difference in either row: pingora 0.9.1's own checks (on release, while idle, on reuse)
//! already catch bytes that arrived in time.
//!
//! `cargo test --test upstream_reuse -- --ignored --nocapture` runs it (`LB_STRAY_REPORT_ONLY=1`
//! prints the figures without failing, `LB_STRAY_LOG=1` adds lb's warnings).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::client::KeepAliveClient;
use common::lb_conf::{fields, LbConf};
use common::lb_process::Lb;
use common::ports::unique_addr;

/// A backend that answers `GET /x` with body `/x`, then `stray_after` later writes a second,
/// unsolicited response with body `STRAY`.
fn stray_backend(stray_after: Duration) -> SocketAddr {
    let listener = TcpListener::bind(unique_addr()).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn, stray_after));
        }
    });
    addr
}

fn serve(conn: TcpStream, stray_after: Duration) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    if std::env::var_os("LB_STRAY_NODELAY").is_some() {
        let _ = conn.set_nodelay(true);
    }
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
            path.len()
        );
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
        if !stray_after.is_zero() {
            std::thread::sleep(stray_after);
        }
        let stray = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTRAY";
        if writer.write_all(stray.as_bytes()).is_err() {
            return;
        }
    }
}

/// 80 requests in a row through lb: (answered right, got the stray, got another request's
/// response, failed).
fn run(stray_after: Duration) -> (usize, usize, usize, usize) {
    let backend = stray_backend(stray_after);
    let lb = Lb::start(
        LbConf::new()
            .upstream(backend)
            .health(fields().set("type", "none"))
            .retries(0)
            .passive_health(fields().set("consecutive_failures", 0)),
    );
    let mut client = KeepAliveClient::new(lb.addr);
    let (mut right, mut stray, mut cascade, mut failed) = (0, 0, 0, 0);
    for i in 0..80 {
        let path = format!("/req/{i}");
        match client.get(&path) {
            Ok(r) if r.status == 200 && r.text() == path => right += 1,
            Ok(r) if r.text() == "STRAY" => stray += 1,
            Ok(r) if r.text().starts_with("/req/") => cascade += 1,
            _ => failed += 1,
        }
    }
    if std::env::var_os("LB_STRAY_LOG").is_some() {
        let log = lb.log();
        for needle in ["peek", "idle client connection", "idle connection", "Fail"] {
            eprintln!("  {needle}: {}", log.matches(needle).count());
        }
        eprintln!(
            "{}",
            log.lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .take(6)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    (right, stray, cascade, failed)
}

#[test]
#[ignore = "the cascade is not closed yet: see the module comment"]
fn stray_upstream_responses_never_cascade() {
    for ms in [0, 2, 10] {
        let (right, stray, cascade, failed) = run(Duration::from_millis(ms));
        eprintln!(
            "stray after {ms} ms: {right} right, {stray} got the stray, {cascade} got another request's response, {failed} failed (of 80)"
        );
        if std::env::var_os("LB_STRAY_REPORT_ONLY").is_none() {
            assert_eq!(
                cascade, 0,
                "stray after {ms} ms: a response went to another request"
            );
        }
    }
}
