//! Hostile and careless clients: slow headers and bodies, ambiguous or oversized requests,
//! pipelining, connection floods. Each is cut or refused while normal traffic is served, and
//! nothing of a refused request reaches a backend.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::backends::Backend;
use common::client::{get, try_get, KeepAliveClient, Response};
use common::lb_conf::{fast_checks, fields, LbConf};
use common::lb_process::Lb;
use common::ports::unique_addr;
use common::raw::{read_response, send_raw};
use common::wait::wait_until;

/// Writes `data` a byte at a time, `every` apart, until the server closes the connection or
/// `limit` passes; returns how long the server kept the connection and what it answered.
fn trickle(addr: SocketAddr, data: &[u8], every: Duration, limit: Duration) -> (Duration, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let mut sent = 0;
    while start.elapsed() < limit {
        if sent < data.len() && stream.write_all(&data[sent..sent + 1]).is_err() {
            break;
        }
        sent += 1;
        let wake = Instant::now() + every;
        let mut closed = false;
        while Instant::now() < wake {
            match stream.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            return (start.elapsed(), answer);
        }
    }
    (start.elapsed(), answer)
}

/// One backend, and client header and body timeouts of one second.
fn client_timeouts(a: &Backend) -> LbConf {
    LbConf::new()
        .upstream(a)
        .timeouts(fields().set("client_header", "1s").set("client_body", "1s"))
}

#[test]
fn slowloris_header_is_cut_while_others_are_served() {
    let a = Backend::start("a");
    let lb = Lb::start(client_timeouts(&a));
    let addr = lb.addr;
    let slow: Vec<_> = (0..5)
        .map(|_| {
            std::thread::spawn(move || {
                trickle(
                    addr,
                    b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
                    Duration::from_millis(100),
                    Duration::from_secs(10),
                )
            })
        })
        .collect();
    // Normal traffic meanwhile.
    let mut client = KeepAliveClient::new(addr);
    for i in 0..20 {
        assert_eq!(client.get(&format!("/normal/{i}")).unwrap().status, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    for t in slow {
        let (held, _) = t.join().unwrap();
        assert!(
            held >= Duration::from_millis(900) && held < Duration::from_secs(5),
            "a trickled header was held {held:?} (client_header 1s)"
        );
    }
    assert_eq!(a.requests(), 20, "no trickled request reached the backend");
}

#[test]
fn silent_connection_is_closed_after_the_header_timeout() {
    let a = Backend::start("a");
    let lb = Lb::start(client_timeouts(&a));
    let (held, _) = trickle(
        lb.addr,
        b"",
        Duration::from_millis(50),
        Duration::from_secs(10),
    );
    assert!(
        held < Duration::from_secs(5),
        "silent connection held {held:?}"
    );
}

#[test]
fn slow_post_body_is_cut() {
    let a = Backend::start("a");
    let lb = Lb::start(client_timeouts(&a));
    // The header at once, then one body byte per 1.5 s: each pause exceeds client_body.
    let mut stream = TcpStream::connect(lb.addr).unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        .unwrap();
    let start = Instant::now();
    let (held, answer) = {
        let mut s = stream.try_clone().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        (start.elapsed(), answer)
    };
    assert!(held < Duration::from_secs(5), "slow body held {held:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "answer: {text}"
    );
    // Normal traffic is unaffected.
    assert_eq!(lb.get("/after").status, 200);
}

/// Sends `raw` on a new connection; the status lb answered with.
fn status_of(addr: SocketAddr, raw: &[u8]) -> u16 {
    match send_raw(addr, raw) {
        Ok(r) => r.status,
        Err(e) => panic!("no answer to {:?}: {e}", String::from_utf8_lossy(raw)),
    }
}

#[test]
fn ambiguous_and_oversized_requests_are_refused_and_never_forwarded() {
    let a = Backend::start("a");
    let lb = Lb::start(
        LbConf::new()
            .upstream(&a)
            .key("limits", "{ max_body_bytes: 1KiB, max_headers: 50 }"),
    );
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..10)
            .map(|i| format!("X-Big-{i}: {}\r\n", "a".repeat(8000)))
            .collect::<String>()
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..60).map(|i| format!("X-{i}: 1\r\n")).collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>, u16)> =
        vec![
        ("no Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        (
            "Content-Length list",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello".to_vec(),
            400,
        ),
        (
            "Content-Length twice",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
                .to_vec(),
            400,
        ),
        (
            "gzip, chunked",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "chunked, gzip",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
        ("two spaces", b"GET  /x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        ("header bytes", big_header.into_bytes(), 431),
        ("header lines", many_headers.into_bytes(), 431),
        (
            "body length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n".to_vec(),
            413,
        ),
    ];
    for (name, raw, expected) in &cases {
        assert_eq!(status_of(lb.addr, raw), *expected, "{name}");
    }
    assert_eq!(a.requests(), 0, "a refused request reached the backend");
    // A chunked body over the limit is stopped as it streams.
    let chunk = "a".repeat(600);
    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let status = status_of(lb.addr, chunked.as_bytes());
    // The part within the limit was streamed already: the request is cut and the upstream
    // never gets the whole body.
    assert!(
        (400..500).contains(&status),
        "chunked over the limit: {status}"
    );
    // The same requests, well-formed, are served.
    assert_eq!(lb.get("/ok").status, 200);
    assert_eq!(
        status_of(
            lb.addr,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        ),
        200
    );
}

/// Sends `n` GETs in one write on one connection; returns the paths echoed back, in order.
fn pipelined(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!("GET /pipe/{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    stream.write_all(batch.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    (0..n)
        .map_while(|_| read_response(&mut reader).ok())
        .map(|r| {
            assert_eq!(r.status, 200);
            r.echo("target").unwrap_or_default()
        })
        .collect()
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let a = Backend::start("a");
    let lb = Lb::start(LbConf::new().upstream(&a));
    for n in [2, 10, 50] {
        let paths = pipelined(lb.addr, n);
        let expected: Vec<String> = (0..n).map(|i| format!("/pipe/{i}")).collect();
        assert_eq!(paths, expected, "{n} pipelined requests");
    }
}

#[test]
fn connection_flood_beyond_the_limit_is_closed_at_once_and_others_are_served() {
    let a = Backend::start("a");
    let lb = Lb::start(
        LbConf::new()
            .upstream(&a)
            .key("limits", "{ max_client_connections: 20 }")
            .admin(unique_addr(), None)
            .health(fast_checks()),
    );
    let mut client = KeepAliveClient::new(lb.addr);
    assert_eq!(client.get("/first").unwrap().status, 200);
    // Fill the limit with idle connections, then some more.
    let mut flood = Vec::new();
    for _ in 0..40 {
        if let Ok(s) = TcpStream::connect(lb.addr) {
            flood.push(s);
        }
    }
    // Those beyond the limit are closed at once: a read sees the end.
    let closed = flood
        .iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            match (&mut &**s).read(&mut [0u8; 1]) {
                Ok(n) => n == 0,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        })
        .count();
    assert!(
        closed >= 20,
        "only {closed} of 40 flood connections were closed"
    );
    // The client that was there first keeps being served, and the upstream stays up.
    for i in 0..10 {
        assert_eq!(client.get(&format!("/during/{i}")).unwrap().status, 200);
    }
    assert!(!lb.log().contains("DOWN"), "{}", lb.log());
    lb.expect_log("max_client_connections");
    // Counted: the rejected ones, and the open ones (the first client and 19 of the flood).
    let metrics = get(lb.admin(), "/metrics").text();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert!(
        value("lb_client_connections_rejected_total ") >= 20.0,
        "{metrics}"
    );
    assert_eq!(value("lb_client_connections "), 20.0, "{metrics}");
}

#[test]
fn running_out_of_file_descriptors_never_marks_an_upstream_down() {
    let a = Backend::start("a");
    // A connection limit far above what 128 file descriptors allow: accepts and health checks
    // run out of descriptors (EMFILE).
    let lb = Lb::start(
        LbConf::new()
            .upstream(&a)
            .key("limits", "{ max_client_connections: 10000 }")
            .health(fast_checks()),
    );
    // At most 128 descriptors from now on (lb holds a few dozen: far fewer).
    let limit = libc::rlimit {
        rlim_cur: 128,
        rlim_max: 128,
    };
    // SAFETY: prlimit reads `limit` and writes nothing (the old limit is not asked for).
    let set = unsafe { libc::prlimit(lb.pid(), libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
    let mut client = KeepAliveClient::new(lb.addr);
    assert_eq!(client.get("/before").unwrap().status, 200);
    lb.expect_log("is UP");
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(lb.addr).ok())
        .collect();
    // Several health-check rounds (100 ms apart, 2 failures take an upstream out) while every
    // descriptor is taken; the client that was there keeps its connection and is served.
    assert!(
        wait_until(Duration::from_secs(10), || lb
            .log()
            .contains("local shortage")),
        "no health check ran short of descriptors: {}",
        lb.log()
    );
    for i in 0..10 {
        let r = client.get(&format!("/during/{i}")).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(flood);
    assert!(!lb.log().contains("is DOWN"), "{}", lb.log());
    // Once the flood is gone, new connections are served again.
    assert!(wait_until(Duration::from_secs(10), || try_get(
        lb.addr, "/after"
    )
    .is_ok_and(|r| r.status == 200)));
}

#[test]
fn requests_over_the_per_client_rate_get_429_with_retry_after() {
    let a = Backend::start("a");
    let lb = Lb::start(
        LbConf::new()
            .upstream(&a)
            .key("limits", "{ rate: { per_client_ip: 1/s, burst: 5 } }"),
    );
    let statuses: Vec<Response> = (0..10).map(|i| lb.get(&format!("/r/{i}"))).collect();
    let ok = statuses.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Response> = statuses.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok + limited.len(), 10);
    // The burst, and perhaps a token refilled while the requests were made.
    assert!((5..=7).contains(&ok), "{ok} served");
    for r in limited {
        assert!(
            r.header("retry-after")
                .is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)),
            "{:?}",
            r.headers
        );
    }
    assert_eq!(a.requests(), ok, "limited requests never reach the backend");
}
