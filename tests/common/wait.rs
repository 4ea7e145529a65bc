//! Bounded waits on observable conditions, instead of fixed sleeps.

use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it is true or `limit` passes; returns whether it became true.
pub fn wait_until(limit: Duration, f: impl FnMut() -> bool) -> bool {
    poll_until(limit, Duration::from_millis(20), f)
}

/// Polls `f` every `every` until it is true or `limit` passes; returns whether it became true.
/// For conditions that are costly to check (a batch of requests) and need time to change.
pub fn poll_until(limit: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    wait_for_every(limit, every, || f().then_some(())).is_some()
}

/// Polls `f` every 20 ms until it returns something or `limit` passes.
pub fn wait_for<T>(limit: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    wait_for_every(limit, Duration::from_millis(20), f)
}

fn wait_for_every<T>(
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Whether something accepts TCP connections on `addr` within `limit`.
pub fn port_accepts(addr: std::net::SocketAddr, limit: Duration) -> bool {
    wait_until(limit, || std::net::TcpStream::connect(addr).is_ok())
}
