//! Zero-downtime operations under a steady load: upgrade, reload, stop. Each loses nothing.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::backends::{Backend, WebSocketEchoBackend};
use common::client::{try_get, Error, KeepAliveClient, Response};
use common::lb_conf::{fast_checks, LbConf, Upstream};
use common::lb_process::{lb_binary, lb_command, pid_alive, read_pid, signal, Lb, TempDir};
use common::load::{Load, LoadReport};
use common::ports::unique_addr;
use common::raw::read_response;
use common::wait::wait_until;

/// A request that takes `ms` at the backend, made on its own thread; returns once one of
/// `backends` has received it.
fn slow_request(
    addr: SocketAddr,
    ms: u64,
    backends: &[&Backend],
) -> JoinHandle<Result<Response, Error>> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("/slow/{}", N.fetch_add(1, Ordering::SeqCst));
    let target = format!("{name}?sleep_ms={ms}");
    let request = std::thread::spawn(move || try_get(addr, &target));
    assert!(
        wait_until(Duration::from_secs(10), || backends
            .iter()
            .any(|b| b.has_seen(&format!("{name}?")))),
        "{name} never reached a backend"
    );
    request
}

fn two_backends_fast_checks(a: &Backend, b: &Backend) -> LbConf {
    LbConf::new().upstreams([a, b]).health(fast_checks())
}

fn assert_no_loss(report: &LoadReport, lb: &Lb) {
    assert_eq!(report.failed, 0, "{:?}\n{}", report.errors, lb.log());
    assert!(
        report.ok > 500,
        "too little load to prove anything: {report:?}"
    );
    eprintln!(
        "{} requests, 0 failed, {} keep-alive reconnects after the server closed an idle connection",
        report.ok, report.reconnects
    );
}

/// Waits for the old process to exit, lets the load run on against the new one, and checks
/// that nothing was lost.
fn finish_after_old_exits(load: Load, lb: &Lb, old: i32) {
    assert!(
        wait_until(Duration::from_secs(20), || !pid_alive(old)),
        "{}",
        lb.log()
    );
    load.wait_for_more(200);
    assert_no_loss(&load.finish(), lb);
}

#[test]
fn upgrade_under_load_loses_nothing() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start(two_backends_fast_checks(&a, &b));
    let old = lb.pid();
    let load = Load::start(lb.addr, 6, 5000);
    load.wait_for(200);
    let slow = slow_request(lb.addr, 2000, &[&a, &b]);

    let (ok, out) = lb.command("upgrade");
    assert!(ok, "{out}\n{}", lb.log());
    assert!(out.contains("upgraded"), "{out}");
    let new = read_pid(&lb.pid_file()).unwrap();
    assert_ne!(new, old);

    // The old process finishes what it has and exits; the new one serves meanwhile.
    finish_after_old_exits(load, &lb, old);
    let slow = slow.join().unwrap().expect("slow request failed");
    assert_eq!(slow.status, 200);
    assert!(pid_alive(new));
    assert_eq!(lb.get("/after").status, 200);
}

#[test]
fn pingora_way_new_process_then_sigquit_loses_nothing() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start(two_backends_fast_checks(&a, &b));
    let old = lb.pid();
    let load = Load::start(lb.addr, 6, 5000);
    load.wait_for(200);

    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(&lb.log_path)
        .unwrap();
    let mut new = Command::new(lb_binary())
        .args(["-u", "-c", lb.conf()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // The new process is ready for the old one's listeners once it listens on the upgrade
    // socket.
    assert!(
        wait_until(Duration::from_secs(10), || lb.upgrade_sock().exists()),
        "no upgrade socket: {}",
        lb.log()
    );
    signal(old, libc::SIGQUIT).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || read_pid(&lb.pid_file())
            == Some(new.id() as i32)),
        "{}",
        lb.log()
    );
    finish_after_old_exits(load, &lb, old);
    let _ = new.kill();
    let _ = new.wait();
}

#[test]
fn reload_shifts_traffic_in_place_and_loses_nothing() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let mut lb = Lb::start(two_backends_fast_checks(&a, &b));
    let pid = lb.child.id();

    // Opened before the reload: a slow request to the backend being removed, and a kept-alive
    // connection.
    let mut kept = KeepAliveClient::new(lb.addr);
    assert_eq!(kept.get("/before").unwrap().status, 200);
    let slow: Vec<_> = (0..2)
        .map(|_| slow_request(lb.addr, 1500, &[&a, &b]))
        .collect();
    let load = Load::start(lb.addr, 4, 5000);
    load.wait_for(200);

    // b leaves, c joins, a gets three times c's share.
    let out = lb.reload(
        lb.config
            .clone()
            .upstreams([Upstream::new(a.addr).weight(3), Upstream::from(&c)]),
    );
    assert!(out.contains(&format!("added {}", c.addr)), "{out}");
    assert!(out.contains(&format!("removed {}", b.addr)), "{out}");
    assert!(out.contains(&format!("{} 1→3", a.addr)), "{out}");

    load.wait_for_more(400);
    let report = load.finish();
    assert_no_loss(&report, &lb);
    for s in slow {
        assert_eq!(
            s.join()
                .unwrap()
                .expect("slow request cut by the reload")
                .status,
            200
        );
    }
    assert_eq!(kept.get("/after").unwrap().status, 200);
    assert_eq!(
        kept.connections(),
        1,
        "the kept-alive connection survived the reload"
    );

    let b_before = b.requests();
    let names: Vec<String> = (0..40).map(|_| lb.get("/").backend().unwrap()).collect();
    assert_eq!(names.iter().filter(|n| *n == "a").count(), 30, "{names:?}");
    assert_eq!(names.iter().filter(|n| *n == "c").count(), 10, "{names:?}");
    assert_eq!(b.requests(), b_before, "b is out of the rotation");
    assert!(lb.is_running());
    assert_eq!(lb.child.id(), pid, "same process");
}

#[test]
fn websocket_stays_open_across_a_reload() {
    use std::io::{BufRead, BufReader, Read, Write};
    let echo = WebSocketEchoBackend::start();
    let other = Backend::start("other");
    let mut lb = Lb::start(LbConf::new().upstream(echo.addr).health(fast_checks()));

    // A WebSocket upgrade: raw bytes, as no HTTP client library hands over the connection.
    let stream = std::net::TcpStream::connect(lb.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    writer
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let log_path = lb.log_path.clone();
    let mut echo_round = |message: &[u8]| {
        writer.write_all(message).unwrap();
        let mut back = vec![0u8; message.len()];
        if let Err(e) = reader.read_exact(&mut back) {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!(
                "no echo of {:?}: {e}\n{log}",
                String::from_utf8_lossy(message)
            );
        }
        assert_eq!(back, message);
    };
    echo_round(b"before the reload");

    // The echo backend leaves the configuration; its open connection is not cut.
    lb.reload(lb.config.clone().upstreams([&other]));
    assert_eq!(lb.get("/").backend().as_deref(), Some("other"));
    echo_round(b"after the reload");
}

#[test]
fn reload_keeps_health_state_of_upstreams_that_stay() {
    let (a, mut b) = (Backend::start("a"), Backend::start("b"));
    let mut lb = Lb::start(two_backends_fast_checks(&a, &b));
    b.kill();
    lb.expect_log(&format!("upstream {} is DOWN", b.addr));
    lb.reload(lb.config.clone());
    // No retries needed: b is still known down, not back to "up until checked".
    for _ in 0..20 {
        assert_eq!(lb.get("/").backend().as_deref(), Some("a"));
    }
    let up_lines = lb
        .log()
        .matches(&format!("upstream {} is UP", b.addr))
        .count();
    assert_eq!(up_lines, 1, "only the first check found b up: {}", lb.log());
}

#[test]
fn bad_reloads_and_upgrades_change_nothing() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut lb = Lb::start(two_backends_fast_checks(&a, &b));
    let good = lb.config.clone();

    // A broken file: both commands refuse before touching the instance.
    let text = std::fs::read_to_string(&lb.conf_path).unwrap();
    std::fs::write(&lb.conf_path, text.replace("upstreams:", "upstreamz:")).unwrap();
    for command in ["reload", "upgrade"] {
        let (ok, out) = lb.command(command);
        assert!(!ok, "{command} accepted a broken config: {out}");
        assert!(out.contains("upstreamz"), "{out}");
    }

    // A listener change cannot be reloaded in place.
    lb.write_config(good.clone().listen(unique_addr()));
    let (ok, out) = lb.command("reload");
    assert!(!ok);
    assert!(
        out.contains("lb.listen changed: that needs `lb upgrade`"),
        "{out}"
    );

    // An upgrade whose new listener is taken by someone else.
    let taken = TcpListener::bind(unique_addr()).unwrap();
    lb.write_config(good.clone().also_listen(taken.local_addr().unwrap()));
    let (ok, out) = lb.command("upgrade");
    assert!(!ok);
    assert!(
        out.contains("cannot listen on") && out.contains("keeps serving"),
        "{out}"
    );

    // An upgrade to a binary that cannot start.
    lb.write_config(good);
    let (ok, out) = lb_command(&["upgrade", "--binary", "/nonexistent/lb", "-c", lb.conf()]);
    assert!(!ok);
    assert!(
        out.contains("cannot start the new process /nonexistent/lb"),
        "{out}"
    );

    // An upgrade to a binary that starts and dies at once.
    let (ok, out) = lb_command(&["upgrade", "--binary", "/bin/false", "-c", lb.conf()]);
    assert!(!ok);
    assert!(
        out.contains("failed before taking over") && out.contains("keeps serving"),
        "{out}"
    );

    // Still the same process, still serving both backends with the old config.
    assert!(lb.is_running());
    assert_eq!(read_pid(&lb.pid_file()), Some(lb.child.id() as i32));
    let names: Vec<String> = (0..10).map(|_| lb.get("/").backend().unwrap()).collect();
    assert_eq!(names.iter().filter(|n| *n == "b").count(), 5, "{names:?}");
}

#[test]
fn stop_lets_requests_in_flight_finish() {
    let a = Backend::start("a");
    let mut lb = Lb::start(LbConf::new().upstream(&a).health(fast_checks()));
    let slow = slow_request(lb.addr, 2000, &[&a]);
    let (ok, out) = lb.command("stop");
    assert!(ok, "{out}\n{}", lb.log());
    assert!(out.contains("stopped"), "{out}");
    assert_eq!(
        slow.join()
            .unwrap()
            .expect("slow request cut by stop")
            .status,
        200
    );
    let status = lb.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(!lb.pid_file().exists(), "pid file removed on exit");
    assert!(try_get(lb.addr, "/").is_err(), "no longer accepting");

    // Nothing to stop now: a clear message.
    let (ok, out) = lb.command("stop");
    assert!(!ok);
    assert!(out.contains("no pid file"), "{out}");
}

#[test]
fn stale_pid_file_is_reported_not_trusted() {
    let dir = TempDir::new();
    let config = LbConf::new().upstream("127.0.0.1:1");
    let conf = dir.0.join("lb.yaml");
    std::fs::write(&conf, config.to_yaml(&dir.0)).unwrap();
    // A pid that cannot be running (above the kernel's pid_max).
    std::fs::write(dir.0.join("lb.pid"), "99999999\n").unwrap();
    for command in ["reload", "stop", "upgrade"] {
        let (ok, out) = lb_command(&[command, "-c", conf.to_str().unwrap()]);
        assert!(!ok);
        assert!(out.contains("stale pid file"), "{command}: {out}");
    }
    // Starting over a stale pid file works (and replaces it).
    let lb = Lb::start_in(dir, config);
    assert_eq!(read_pid(&lb.pid_file()), Some(lb.child.id() as i32));
}

/// What a strict keep-alive load saw: unlike [`KeepAliveClient`], it never sends a request
/// again, so a kept-alive connection closed under a request is a failure.
#[derive(Debug, Default)]
struct StrictReport {
    ok: usize,
    failed: usize,
    errors: Vec<String>,
    /// Responses that asked for the connection to be closed (a draining process).
    closes: usize,
}

/// Threads that each keep one connection alive and send GETs and POSTs (with a body) on it
/// back to back, reconnecting only when a response says `Connection: close`. Once `stopping`
/// is set, a refused new connection ends a thread (nothing is listening any more); before, it
/// is a failure. Bounded: 20 000 requests or 60 s per thread.
fn strict_keep_alive_load(
    addr: SocketAddr,
    threads: usize,
    stop: &Arc<AtomicBool>,
    stopping: &Arc<AtomicBool>,
    sent: &Arc<AtomicUsize>,
) -> Vec<std::thread::JoinHandle<StrictReport>> {
    use std::io::{BufReader, Write};
    use std::net::TcpStream;
    (0..threads)
        .map(|t| {
            let (stop, stopping, sent) = (stop.clone(), stopping.clone(), sent.clone());
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                let mut report = StrictReport::default();
                let mut conn: Option<BufReader<TcpStream>> = None;
                for n in 0..20_000 {
                    if stop.load(Ordering::SeqCst) || std::time::Instant::now() > deadline {
                        break;
                    }
                    let mut c = match conn.take() {
                        Some(c) => c,
                        None => match TcpStream::connect(addr) {
                            Ok(s) => {
                                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                                BufReader::new(s)
                            }
                            Err(_) if stopping.load(Ordering::SeqCst) => break,
                            Err(e) => {
                                report.failed += 1;
                                report.errors.push(format!("connect: {e}"));
                                continue;
                            }
                        },
                    };
                    let request = if n % 2 == 0 {
                        format!("GET /strict/{t}/{n} HTTP/1.1\r\nHost: x\r\n\r\n")
                    } else {
                        format!(
                            "POST /strict/{t}/{n} HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
                        )
                    };
                    sent.fetch_add(1, Ordering::SeqCst);
                    let result = c
                        .get_mut()
                        .write_all(request.as_bytes())
                        .and_then(|()| read_response(&mut c));
                    match result {
                        Ok(r) if r.status == 200 => {
                            report.ok += 1;
                            let close = r
                                .header("connection")
                                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                            if close {
                                report.closes += 1;
                            } else {
                                conn = Some(c);
                            }
                        }
                        Ok(r) => {
                            report.failed += 1;
                            report.errors.push(format!("{n}: {} {}", r.status, r.text()));
                        }
                        Err(e) => {
                            report.failed += 1;
                            report.errors.push(format!("{n} ({request:.20}): {e}"));
                        }
                    }
                }
                report
            })
        })
        .collect()
}

#[test]
fn keep_alive_gets_and_posts_survive_five_upgrades_and_a_stop() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut lb = Lb::start(two_backends_fast_checks(&a, &b));
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let threads = strict_keep_alive_load(lb.addr, 6, &stop, &stopping, &sent);
    let wait_sent = |n: usize| {
        assert!(wait_until(Duration::from_secs(30), || sent
            .load(Ordering::SeqCst)
            >= n));
    };
    wait_sent(300);
    let mut old = lb.child.id() as i32;
    for round in 0..5 {
        let (ok, out) = lb_command(&["upgrade", "-c", lb.conf()]);
        assert!(ok, "upgrade {round}: {out}\n{}", lb.log());
        let new = read_pid(&lb.pid_file()).unwrap();
        assert_ne!(new, old);
        assert!(
            wait_until(Duration::from_secs(20), || !pid_alive(old)),
            "old process {old} still running after upgrade {round}:\n{}",
            lb.log()
        );
        old = new;
        wait_sent(sent.load(Ordering::SeqCst) + 200);
    }
    stopping.store(true, Ordering::SeqCst);
    let (ok, out) = lb_command(&["stop", "-c", lb.conf()]);
    assert!(ok, "stop: {out}\n{}", lb.log());
    assert!(
        wait_until(Duration::from_secs(20), || !pid_alive(old)),
        "{}",
        lb.log()
    );
    stop.store(true, Ordering::SeqCst);
    let mut total = StrictReport::default();
    for t in threads {
        let r = t.join().expect("load thread panicked");
        total.ok += r.ok;
        total.failed += r.failed;
        total.closes += r.closes;
        total.errors.extend(r.errors);
    }
    assert_eq!(total.failed, 0, "{:?}\n{}", total.errors, lb.log());
    assert!(total.ok > 1000, "too little load: {total:?}");
    assert!(
        total.closes >= 5,
        "draining processes said Connection: close: {total:?}"
    );
    eprintln!(
        "{} keep-alive requests across 5 upgrades and a stop, 0 failed, {} answered with Connection: close",
        total.ok, total.closes
    );
    let _ = lb.child.wait();
}
