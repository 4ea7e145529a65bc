//! What a client sees through `lb`: rotation, weights, forwarded headers, bodies, errors.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::backends::{fnv, Backend};
use common::client::{request, KeepAliveClient};
use common::lb_conf::{fields, LbConf, Upstream};
use common::lb_process::Lb;
use common::raw::{read_response, send_raw};

#[test]
fn rotates_strictly_over_three_backends() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let lb = Lb::start(LbConf::new().upstreams([&a, &b, &c]));
    let order: Vec<String> = (0..30).map(|_| lb.get("/").backend().unwrap()).collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for name in &order {
        *counts.entry(name).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{order:?}");
    assert!(counts.values().all(|&n| n == 10), "{counts:?}");
    // Strict: every window of three consecutive requests hits three different backends.
    for w in order.windows(3) {
        assert!(w[0] != w[1] && w[1] != w[2] && w[0] != w[2], "{order:?}");
    }
}

#[test]
fn weights_are_honoured() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start(
        LbConf::new()
            .upstream(&a)
            .upstream(Upstream::new(b.addr).weight(3)),
    );
    let mut keep_alive = KeepAliveClient::new(lb.addr);
    for _ in 0..40 {
        keep_alive.get("/").unwrap();
    }
    assert_eq!((a.requests(), b.requests()), (10, 30));
}

#[test]
fn forwards_request_unchanged_except_forwarding_headers() {
    let a = Backend::start("a");
    let lb = Lb::start(LbConf::new().upstream(&a));
    let resp = request("PATCH", lb.addr, "/some/path?x=1&y=%20z")
        .header("Host", "shop.example")
        .header("X-Custom", "kept")
        .header("X-Forwarded-For", "203.0.113.7")
        .header("Connection", "close, X-Hop")
        .header("X-Hop", "secret")
        .header("Keep-Alive", "timeout=5")
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-backend"), Some("a"));
    assert_eq!(resp.echo("method").as_deref(), Some("PATCH"));
    assert_eq!(
        resp.echo("target").as_deref(),
        Some("/some/path?x=1&y=%20z")
    );
    assert_eq!(resp.echo("body_len").as_deref(), Some("5"));
    assert_eq!(resp.echo("header:x-custom").as_deref(), Some("kept"));
    assert_eq!(resp.echo("header:host").as_deref(), Some("shop.example"));
    assert_eq!(
        resp.echo("header:x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(
        resp.echo("header:x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        resp.echo("header:x-forwarded-host").as_deref(),
        Some("shop.example")
    );
    assert_eq!(
        resp.echo("header:x-hop"),
        None,
        "headers named in Connection are hop-by-hop"
    );
    assert_eq!(resp.echo("header:keep-alive"), None);
}

#[test]
fn large_bodies_arrive_intact() {
    let a = Backend::start("a");
    let lb = Lb::start(LbConf::new().upstream(&a));
    let body: Vec<u8> = (0..1_048_576u32).map(|i| (i * 7 % 251) as u8).collect();

    let resp = request("POST", lb.addr, "/upload")
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.echo("body_len"), Some(body.len().to_string()));
    assert_eq!(resp.echo("body_fnv"), Some(fnv(&body).to_string()));

    // The same body streamed in chunks of uneven size: the chunk framing is the point, so it is
    // written by hand.
    let mut stream = TcpStream::connect(lb.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"PUT /upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    for chunk in body.chunks(65_537) {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .unwrap();
        stream.write_all(chunk).unwrap();
        stream.write_all(b"\r\n").unwrap();
    }
    stream.write_all(b"0\r\n\r\n").unwrap();
    let resp = read_response(&mut std::io::BufReader::new(stream)).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.echo("method").as_deref(), Some("PUT"));
    assert_eq!(resp.echo("body_len"), Some(body.len().to_string()));
    assert_eq!(resp.echo("body_fnv"), Some(fnv(&body).to_string()));
}

#[test]
fn slow_upstream_is_a_504() {
    let a = Backend::start("a");
    let lb = Lb::start(
        LbConf::new()
            .upstream(&a)
            .timeouts(fields().set("read", "300ms")),
    );
    let started = Instant::now();
    let resp = lb.get("/slow?sleep_ms=3000");
    assert_eq!(resp.status, 504, "{}", resp.text());
    assert!(started.elapsed() < Duration::from_millis(2500));
    assert!(
        resp.text().contains("did not answer in time"),
        "{}",
        resp.text()
    );
    assert_eq!(lb.get("/").status, 200, "still serving");
}

#[test]
fn malformed_requests_get_4xx_and_lb_keeps_serving() {
    let a = Backend::start("a");
    let mut lb = Lb::start(LbConf::new().upstream(&a));
    let bad: [&[u8]; 4] = [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nBad Header Without Colon\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    ];
    for raw in bad {
        match send_raw(lb.addr, raw) {
            Ok(resp) => assert!(
                (400..500).contains(&resp.status),
                "{:?} got {}",
                String::from_utf8_lossy(raw),
                resp.status
            ),
            // Closing the connection without a response is also a refusal.
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ),
                "{e}"
            ),
        }
    }
    assert!(lb.is_running());
    assert_eq!(a.requests(), 0, "nothing malformed reached the backend");
    assert_eq!(lb.get("/after").status, 200);
}

#[test]
fn conflicting_framing_cannot_smuggle_a_request() {
    let a = Backend::start("a");
    let lb = Lb::start(LbConf::new().upstream(&a));
    // Content-Length says the body runs on; Transfer-Encoding says it ended at "0". A proxy that
    // honoured one while the backend honoured the other would let GET /smuggled through.
    let raw = b"POST /first HTTP/1.1\r\nHost: t\r\nContent-Length: 40\r\n\
                Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut stream = TcpStream::connect(lb.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(raw).unwrap();
    let mut reader = std::io::BufReader::new(stream);
    if let Ok(first) = read_response(&mut reader) {
        assert!(first.status == 200 || (400..500).contains(&first.status));
        // No second response may follow on this connection.
        assert!(read_response(&mut reader).is_err());
    }
    assert_eq!(lb.get("/after").status, 200);
    let seen = a.state.seen.lock().unwrap().clone();
    assert!(!seen.iter().any(|t| t.contains("smuggled")), "{seen:?}");
}

#[test]
fn keep_alive_to_clients() {
    let a = Backend::start("a");
    let lb = Lb::start(LbConf::new().upstream(&a));
    let mut client = KeepAliveClient::new(lb.addr);
    for i in 0..5 {
        let resp = client.get(&format!("/{i}")).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.echo("target"), Some(format!("/{i}")));
    }
    assert_eq!(client.connections(), 1, "all five on one connection");
}
