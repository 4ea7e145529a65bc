//! HTTP/2: h2c from clients on the plain listener, and `protocol: h2c | https_h2` with
//! `upstream_tls` towards upstreams (real Python h2 backends, curl and h2load as clients).

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::backends::Backend;
use common::client::{get, request};
use common::lb_conf::{fields, quoted, LbConf};
use common::lb_process::{lb_command, Lb, TempDir};
use common::ports::unique_addr;
use common::python::{make_certs, PyServer};
use common::raw::send_raw;

/// `curl --http2-prior-knowledge`: (HTTP version, status, body).
fn curl_h2c(addr: SocketAddr, path: &str) -> (String, u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--http2-prior-knowledge"])
        .args(["-w", "\n%{http_version} %{http_code}"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl missing");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (version, code) = last.split_once(' ').unwrap_or(("", "0"));
    (
        version.to_string(),
        code.parse().unwrap_or(0),
        body.to_string(),
    )
}

/// Waits until lb answers `path` with 200 (its first health checks are done).
fn wait_ready(addr: SocketAddr) {
    let ok = common::wait::wait_until(Duration::from_secs(15), || {
        common::client::try_get(addr, "/").is_ok_and(|r| r.status == 200)
    });
    assert!(ok, "lb at {addr} never answered 200");
}

#[test]
fn h2c_streams_on_one_connection_are_balanced_per_request_and_http1_stays() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start(LbConf::new().upstreams([&a, &b]));
    wait_ready(lb.addr);
    let before = a.requests() + b.requests();

    // 40 requests, 10 streams at a time, all on one connection.
    let out = Command::new("h2load")
        .args(["-n", "40", "-c", "1", "-m", "10"])
        .arg(format!("http://{}/", lb.addr))
        .output()
        .expect("h2load missing (Debian nghttp2-client)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("40 succeeded, 0 failed"),
        "h2load: {report}"
    );
    assert!(report.contains("h2"), "not HTTP/2: {report}");
    let (ra, rb) = (a.requests(), b.requests());
    assert_eq!(ra + rb - before, 40, "{report}");
    assert!(
        ra >= 15 && rb >= 15,
        "one connection's streams must be spread over both upstreams: a={ra} b={rb}"
    );

    let (version, status, body) = curl_h2c(lb.addr, "/x");
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    assert!(body.contains("backend="), "{body}");

    // HTTP/1 on the same port: a normal request, and one shorter than the HTTP/2 preface (24
    // bytes), which must not be waited on.
    assert_eq!(get(lb.addr, "/").status, 200);
    let short = send_raw(lb.addr, b"GET / HTTP/1.0\r\n\r\n").expect("answer");
    assert!(short.status >= 200, "{short:?}");
    assert!(lb.log().lines().all(|l| !l.contains("panicked")));
}

#[test]
fn h2c_can_be_turned_off_by_a_reload() {
    let a = Backend::start("a");
    let conf = LbConf::new().upstream(&a);
    let mut lb = Lb::start(conf.clone());
    wait_ready(lb.addr);
    assert_eq!(curl_h2c(lb.addr, "/").1, 200);
    lb.reload(conf.key("h2c", false));
    let (version, status, _) = curl_h2c(lb.addr, "/");
    assert!(
        !(version == "2" && status == 200),
        "HTTP/2 served with h2c: false ({version} {status})"
    );
    assert_eq!(get(lb.addr, "/").status, 200);
}

fn h2_backend(name: &str, dir: &TempDir, extra: &[&str]) -> (PyServer, std::path::PathBuf) {
    let addr = unique_addr();
    let log = dir.0.join(format!("{name}.log"));
    let port = addr.port().to_string();
    let mut args = vec![
        "--port",
        &port,
        "--name",
        name,
        "--log",
        log.to_str().unwrap(),
    ];
    args.extend(extra);
    (PyServer::start("h2_backend.py", addr, &args), log)
}

#[test]
fn h2c_pool_speaks_http2_to_its_upstreams() {
    let dir = TempDir::new();
    let (backend, _log) = h2_backend("a", &dir, &[]);
    let lb = Lb::start(
        LbConf::new()
            .upstream(backend.addr)
            .key("protocol", "h2c")
            .health(fields().set("type", "http").set("interval", "500ms")),
    );
    wait_ready(lb.addr);
    let r = get(lb.addr, "/hello");
    assert_eq!(r.status, 200);
    assert_eq!(r.echo("protocol").as_deref(), Some("h2"), "{}", r.text());
    assert_eq!(r.echo("path").as_deref(), Some("/hello"));
    let posted = request("POST", lb.addr, "/up")
        .body(vec![b'x'; 100_000])
        .send()
        .unwrap();
    assert_eq!(posted.echo("body-bytes").as_deref(), Some("100000"));
    let (version, status, body) = curl_h2c(lb.addr, "/both");
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    assert!(body.contains("protocol=h2"), "{body}");
}

#[test]
fn https_h2_pool_verifies_the_upstream_against_ca_file() {
    let dir = TempDir::new();
    let certs = make_certs(&dir.0);
    let (backend, _log) = h2_backend(
        "tls",
        &dir,
        &[
            "--cert",
            certs.cert.to_str().unwrap(),
            "--key",
            certs.key.to_str().unwrap(),
        ],
    );
    let tls = |ca: &std::path::Path| {
        fields()
            .set("sni", "backend.test")
            .set("ca_file", quoted(ca.display()))
    };
    let lb = Lb::start(
        LbConf::new()
            .upstream(backend.addr)
            .key("protocol", "https_h2")
            .key("upstream_tls", tls(&certs.ca))
            .health(fields().set("type", "http").set("interval", "500ms")),
    );
    wait_ready(lb.addr);
    let r = get(lb.addr, "/secure");
    assert_eq!(r.status, 200);
    assert_eq!(r.echo("protocol").as_deref(), Some("h2"), "{}", r.text());
    assert_eq!(r.echo("backend").as_deref(), Some("tls"));

    // The same upstream checked against an unrelated CA: refused, with the reason in the log.
    let wrong = Lb::start(
        LbConf::new()
            .upstream(backend.addr)
            .key("protocol", "https_h2")
            .key("upstream_tls", tls(&certs.other_ca))
            .retries(0),
    );
    let ok = common::wait::wait_until(Duration::from_secs(15), || {
        common::client::try_get(wrong.addr, "/").is_ok_and(|r| r.status == 502)
    });
    assert!(ok, "expected 502 with the wrong CA: {}", wrong.log());
    wrong.expect_log("certificate verify failed");

    // verify: false accepts it.
    let lax = Lb::start(
        LbConf::new()
            .upstream(backend.addr)
            .key("protocol", "https_h2")
            .key(
                "upstream_tls",
                fields().set("sni", "backend.test").set("verify", false),
            ),
    );
    wait_ready(lax.addr);
}

/// `lb -t` on a configuration with these `lb:` lines added; (success, output).
fn check(dir: &TempDir, lines: &str) -> (bool, String) {
    let path = dir.0.join("check.yaml");
    let yaml = format!(
        "lb:\n  listen: [\"{}\"]\n  upstreams: [\"127.0.0.1:1\"]\n{lines}",
        unique_addr()
    );
    std::fs::write(&path, yaml).unwrap();
    lb_command(&["-t", "-c", path.to_str().unwrap()])
}

#[test]
fn bad_protocol_and_upstream_tls_are_refused_naming_the_key() {
    let dir = TempDir::new();
    let certs = make_certs(&dir.0);
    let not_pem = dir.0.join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let sni = "  upstream_tls: { sni: backend.test }\n";
    let cases = [
        ("  protocol: http3\n".to_string(), "unknown variant `http3`"),
        (
            format!(
                "  protocol: https\n  upstream_tls: {{ sni: backend.test, ca_file: {} }}\n",
                dir.0.join("missing.pem").display()
            ),
            "lb.upstream_tls.ca_file: cannot read",
        ),
        (
            format!(
                "  protocol: https\n  upstream_tls: {{ sni: backend.test, ca_file: {} }}\n",
                not_pem.display()
            ),
            "lb.upstream_tls.ca_file:",
        ),
        (
            format!(
                "  protocol: https\n  upstream_tls: {{ sni: backend.test, ca_file: {} }}\n",
                certs.key.display()
            ),
            "lb.upstream_tls.ca_file:",
        ),
        (
            format!("  protocol: h2c\n{sni}"),
            "lb.upstream_tls: only for protocol https or https_h2",
        ),
        (
            "  protocol: https\n  upstream_tls: { sni: 10.0.0.1 }\n".to_string(),
            "lb.upstream_tls.sni: `10.0.0.1`: an IP address",
        ),
        (
            "  protocol: https\n  upstream_tls: { sni: \"bad name!\" }\n".to_string(),
            "lb.upstream_tls.sni:",
        ),
        (
            "  protocol: https\n".to_string(),
            "lb.upstream_tls.sni: required with verify: true",
        ),
        (
            "  upstream_tls: { snii: x }\n".to_string(),
            "unknown field `snii`",
        ),
        ("  h2c: maybe\n".to_string(), "h2c"),
    ];
    for (lines, expected) in &cases {
        let (ok, out) = check(&dir, lines);
        assert!(!ok, "accepted:\n{lines}");
        assert!(
            out.contains(expected),
            "for\n{lines}expected {expected:?} in: {out}"
        );
    }
    // Good ones.
    for lines in [
        "  protocol: h2c\n".to_string(),
        format!(
            "  protocol: https_h2\n  upstream_tls: {{ sni: backend.test, ca_file: {} }}\n",
            certs.ca.display()
        ),
        "  protocol: https\n  upstream_tls: { verify: false }\n".to_string(),
        "  h2c: false\n".to_string(),
    ] {
        let (ok, out) = check(&dir, &lines);
        assert!(ok, "refused:\n{lines}{out}");
    }
}

/// Lines of a backend's request log that start with `method`.
fn logged(log: &std::path::Path, method: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(&format!("{method} ")))
        .count()
}

#[test]
fn a_post_reset_by_an_http2_upstream_is_not_retried_a_get_is() {
    let dir = TempDir::new();
    let (resets, reset_log) = h2_backend("resets", &dir, &["--reset"]);
    let (good, good_log) = h2_backend("good", &dir, &[]);
    let lb = Lb::start(
        LbConf::new()
            .upstreams([resets.addr, good.addr])
            .key("protocol", "h2c")
            .passive_health(fields().set("consecutive_failures", 0)),
    );
    // GET is idempotent: an attempt reset by `resets` goes on to `good`.
    for i in 0..4 {
        let r = get(lb.addr, &format!("/get{i}"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.backend().as_deref(), Some("good"));
    }
    assert!(
        logged(&reset_log, "GET") >= 1,
        "no GET reached the resetting upstream"
    );

    // POST is not: the upstream received it, so it is never sent again, whatever pingora says.
    let mut failed = 0;
    for i in 0..4 {
        let r = request("POST", lb.addr, &format!("/post{i}"))
            .body("payload")
            .send()
            .unwrap();
        match r.status {
            200 => assert_eq!(r.backend().as_deref(), Some("good")),
            502 => failed += 1,
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    let (at_reset, at_good) = (logged(&reset_log, "POST"), logged(&good_log, "POST"));
    assert!(at_reset >= 1, "no POST reached the resetting upstream");
    assert_eq!(
        failed, at_reset,
        "each POST reset upstream fails, none is retried"
    );
    assert_eq!(
        at_reset + at_good,
        4,
        "every POST reached an upstream exactly once"
    );
}

/// A well-behaved, idle HTTP/2 client (tests/py/h2_abuse.py idle: it answers PINGs and waits
/// up to 60 s for lb to end the connection); its first line said, and the rest to come.
fn idle_h2_client(
    addr: SocketAddr,
) -> (
    std::process::Child,
    String,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let mut client = Command::new(common::python::PYTHON)
        .arg(common::python::script("h2_abuse.py"))
        .args([&addr.to_string(), "idle", "60"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(client.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a first line").unwrap();
    (client, first, lines)
}

#[test]
fn http2_connections_count_against_the_connection_limit() {
    let a = Backend::start("a");
    let lb = Lb::start(
        LbConf::new()
            .upstream(&a)
            .key("limits", fields().set("max_client_connections", 2)),
    );
    let (mut first, said, _l1) = idle_h2_client(lb.addr);
    assert_eq!(said, "connected");
    let (mut second, said, _l2) = idle_h2_client(lb.addr);
    assert_eq!(said, "connected");
    let (mut third, said, _l3) = idle_h2_client(lb.addr);
    assert_eq!(said, "refused", "a third connection beyond the limit of 2");
    for c in [&mut first, &mut second, &mut third] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn a_graceful_stop_sends_goaway_and_waits_for_http2_connections() {
    let a = Backend::start("a");
    let mut lb = Lb::start(LbConf::new().upstream(&a));
    let (mut client, said, mut lines) = idle_h2_client(lb.addr);
    assert_eq!(said, "connected");
    common::lb_process::signal(lb.pid(), libc::SIGTERM).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&lines.next().expect("report").unwrap()).unwrap();
    let _ = client.wait();
    assert_eq!(report["goaway"], 0, "GOAWAY (NO_ERROR) expected: {report}");
    assert_eq!(report["closed"], true, "{report}");
    assert!(
        common::wait::wait_until(Duration::from_secs(30), || !lb.is_running()),
        "lb did not exit"
    );
    // It exited because the connection closed, not because the grace period ran out.
    lb.expect_log("all requests finished and client connections closed");
}
