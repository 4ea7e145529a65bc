//! Client connections: keep-alive reuse with responses of every size, idle timeouts, requests
//! that arrive in pieces. (lb holds only the socket of an idle connection and writes each
//! response through a buffer that exists while it is written; these are the cases that could
//! go wrong with that.)

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::backends::{fnv, Backend};
use common::client::KeepAliveClient;
use common::lb_conf::{fields, LbConf};
use common::lb_process::Lb;
use common::raw::read_response;

/// A raw connection to lb, for the tests that watch the connection itself.
fn connect(lb: &Lb) -> BufReader<TcpStream> {
    common::raw::connect(lb.addr, Duration::from_secs(10))
}

fn idle_timeout_of_one_second() -> LbConf {
    LbConf::new().timeouts(fields().set("idle", "1s"))
}

/// Reads until the server closes the connection; how long that took.
fn time_until_closed(conn: &mut BufReader<TcpStream>) -> Duration {
    let started = Instant::now();
    let mut rest = Vec::new();
    // A close is a zero-length read (or a reset); anything else would be a protocol error.
    let _ = conn.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "unexpected bytes: {:?}",
        String::from_utf8_lossy(&rest)
    );
    started.elapsed()
}

#[test]
fn responses_of_every_size_share_one_kept_alive_connection() {
    let backend = Backend::start("a");
    // Headers up to 120 KB make the responses that large: above the default header limit.
    let lb = Lb::start(
        LbConf::new()
            .upstream(&backend)
            .key("limits", "{ max_header_bytes: 512KiB }"),
    );
    let client = KeepAliveClient::new(lb.addr);
    // Around the 32 KiB write buffer: empty, small, just under, just over, several times over.
    for (i, size) in [0, 100, 20_000, 32_000, 33_000, 40_000, 120_000, 10, 65_536]
        .into_iter()
        .enumerate()
    {
        let pad: String = (0..size)
            .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
            .collect();
        let resp = client
            .request("GET", &format!("/size/{size}"))
            .header("X-Pad", &pad)
            .send()
            .expect("response");
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.echo("target").as_deref(),
            Some(format!("/size/{size}").as_str())
        );
        let echoed = resp.echo("header:x-pad").unwrap_or_default();
        assert!(
            echoed == pad,
            "response {i}: {size}-byte pad came back as {} bytes",
            echoed.len()
        );
    }
    assert_eq!(
        client.connections(),
        1,
        "every response on the same connection"
    );
    assert_eq!(backend.requests(), 9);
}

#[test]
fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let backend = Backend::start("a");
    let lb = Lb::start(idle_timeout_of_one_second().upstream(&backend));
    let mut conn = connect(&lb);
    for _ in 0..2 {
        conn.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: test.local\r\n\r\n")
            .expect("send");
        assert_eq!(read_response(&mut conn).expect("response").status, 200);
    }
    let waited = time_until_closed(&mut conn);
    assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    // And lb goes on serving.
    assert_eq!(lb.get("/").status, 200);
}

#[test]
fn a_connection_that_never_sends_a_request_is_closed_after_the_idle_timeout() {
    let backend = Backend::start("a");
    let lb = Lb::start(idle_timeout_of_one_second().upstream(&backend));
    let mut conn = connect(&lb);
    let waited = time_until_closed(&mut conn);
    assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    assert_eq!(backend.requests(), 0);
}

#[test]
fn a_request_that_arrives_in_pieces_is_served() {
    let backend = Backend::start("a");
    let lb = Lb::start(LbConf::new().upstream(&backend));
    let mut conn = connect(&lb);
    for _ in 0..2 {
        for piece in [
            &b"GE"[..],
            b"T /pieces HTTP/1.1\r\nHo",
            b"st: test.local\r\n",
            b"\r\n",
        ] {
            conn.get_mut().write_all(piece).expect("send");
            conn.get_mut().flush().expect("flush");
            // The pause is the test: each piece arrives on its own, like from a slow client.
            std::thread::sleep(Duration::from_millis(50));
        }
        let resp = read_response(&mut conn).expect("response");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.echo("target").as_deref(), Some("/pieces"));
    }
}

#[test]
fn a_large_upload_and_download_on_a_kept_alive_connection() {
    let backend = Backend::start("a");
    let lb = Lb::start(LbConf::new().upstream(&backend));
    let client = KeepAliveClient::new(lb.addr);
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..2 {
        let resp = client
            .request("POST", "/upload")
            .header("X-Pad", &"p".repeat(50_000))
            .body(body.clone())
            .send()
            .expect("response");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.echo("body_len").as_deref(), Some("1000000"));
        assert_eq!(resp.echo("body_fnv"), Some(fnv(&body).to_string()));
        assert_eq!(resp.echo("header:x-pad").map(|p| p.len()), Some(50_000));
    }
    assert_eq!(client.connections(), 1, "both on the same connection");
}
