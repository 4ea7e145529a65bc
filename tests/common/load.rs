//! Bounded load: client threads that send a fixed number of requests (or stop earlier, when told
//! or after a minute) and count what failed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::client::{KeepAliveClient, Response};
use super::raw::send_raw;
use super::wait::wait_until;

/// What a bounded load saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: usize,
    pub failed: usize,
    pub errors: Vec<String>,
    /// Responses per backend name.
    pub by_backend: BTreeMap<String, usize>,
    /// New connections the keep-alive clients had to open after their first, because the
    /// server closed an idle one (they reconnect, as clients do).
    pub reconnects: usize,
}

/// A steady load on `addr` from several threads, half keep-alive and half a new connection per
/// request, until stopped, `per_thread` requests are made, or a minute passes.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<LoadReport>>,
    pub sent: Arc<AtomicUsize>,
}

impl Load {
    pub fn start(addr: SocketAddr, threads: usize, per_thread: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|i| {
                let (stop, sent) = (stop.clone(), sent.clone());
                std::thread::spawn(move || run(addr, i, per_thread, &stop, &sent))
            })
            .collect();
        Load {
            stop,
            threads,
            sent,
        }
    }

    /// Waits until at least `n` requests were made.
    pub fn wait_for(&self, n: usize) {
        assert!(wait_until(Duration::from_secs(30), || self
            .sent
            .load(Ordering::SeqCst)
            >= n));
    }

    /// Waits until `n` more requests than now were made.
    pub fn wait_for_more(&self, n: usize) {
        self.wait_for(self.sent.load(Ordering::SeqCst) + n);
    }

    pub fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = LoadReport::default();
        for t in self.threads {
            let r = t.join().expect("load thread panicked");
            total.ok += r.ok;
            total.failed += r.failed;
            total.errors.extend(r.errors);
            total.reconnects += r.reconnects;
            for (k, v) in r.by_backend {
                *total.by_backend.entry(k).or_default() += v;
            }
        }
        total
    }
}

/// A GET on a new connection, written by hand so that the request follows the connect at once.
///
/// Not through `ureq` on purpose, for now: lb closes a connection it accepted just before a
/// graceful shutdown when the connection's first request has not arrived yet
/// (`ClientApp::wait_for_request` in `src/connection.rs` returns at once once shutting down,
/// before it looks for data), and the client sees a reset. A client that takes a moment between
/// connect and request (ureq takes about 2 ms in a debug build) makes the upgrade tests lose a
/// request in most runs. Once lb serves such a connection's first request, this can be
/// `super::client::try_get`.
fn one_shot_get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    send_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: load.test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// One load thread: even threads keep their connection alive, odd ones open one per request.
fn run(
    addr: SocketAddr,
    thread: usize,
    requests: usize,
    stop: &AtomicBool,
    sent: &AtomicUsize,
) -> LoadReport {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut report = LoadReport::default();
    let mut keep_alive = KeepAliveClient::new(addr);
    for n in 0..requests {
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            break;
        }
        let path = format!("/load/{thread}/{n}");
        let result = if thread % 2 == 0 {
            keep_alive.get(&path).map_err(|e| e.to_string())
        } else {
            one_shot_get(addr, &path).map_err(|e| e.to_string())
        };
        sent.fetch_add(1, Ordering::SeqCst);
        match result {
            Ok(r) if r.status == 200 => {
                report.ok += 1;
                *report
                    .by_backend
                    .entry(r.backend().unwrap_or_default())
                    .or_default() += 1;
            }
            Ok(r) => {
                report.failed += 1;
                report
                    .errors
                    .push(format!("{path}: {} {}", r.status, r.text()));
            }
            Err(e) => {
                report.failed += 1;
                report.errors.push(format!("{path}: {e}"));
            }
        }
        // Pacing, not waiting for anything: a steady stream of requests that leaves the two
        // cores to lb and the backends instead of saturating them.
        std::thread::sleep(Duration::from_millis(2));
    }
    report.reconnects = keep_alive.connections().saturating_sub(1);
    report
}
