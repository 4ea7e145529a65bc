//! Loopback ports handed out to the tests of one test binary.
//!
//! The obvious `bind("127.0.0.1:0")`, read the port, drop the listener, hand the number out races:
//! between the drop and the moment lb (or a backend) binds it, the kernel may give that same port to
//! anyone asking for an ephemeral one, and the tests of a binary ask all the time, in parallel
//! threads (every backend listener, every outgoing connection from a client, from lb, from a
//! health check). A port handed out twice makes a test fail with "address in use" or, worse, talk
//! to the wrong server.
//!
//! So ports come from a process-wide counter over a range below the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`, 32768–60999 by default), where the kernel never
//! picks a port on its own. The counter never hands out the same port twice within a process;
//! its start is offset by the pid so that test binaries running one after another (or side by
//! side, from another checkout) start far apart. Each candidate is checked with a bind on
//! 127.0.0.1 and is kept only if that bind succeeded, which skips ports some other program holds.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// First port of the range: above the well-known and the usual registered service ports.
const FIRST: u32 = 20_000;
/// Size of the range: it ends at 31 999, below the default ephemeral range (32 768 and up).
const SPAN: u32 = 12_000;

/// The next port, counted from the process's pid, that could be bound on 127.0.0.1 just now.
pub fn unique_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // 997 ports a pid apart: consecutive test binaries (consecutive pids) never overlap within
    // the few dozen ports one binary uses.
    let start = std::process::id().wrapping_mul(997) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port left in 127.0.0.1:{FIRST}..{}", FIRST + SPAN);
}

/// `127.0.0.1` with a [`unique_port`].
pub fn unique_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], unique_port()))
}
