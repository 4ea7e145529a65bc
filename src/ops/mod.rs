//! Operations: the process around the proxy.
//!
//! - [`server`]: assembling pingora's `Server` and its services from a validated config;
//! - [`reload`]: applying a changed config in place (SIGHUP), and building a routing with its
//!   health check;
//! - [`handover`]: the runtime state handed to the next process, and lb's handling of the
//!   shutdown signals (the socket hand-over on SIGQUIT);
//! - [`lifecycle`]: announcing the instance, the handshake with `lb upgrade`, a graceful end;
//! - [`preflight`]: what start-up needs from the machine, checked by `lb -t` and every start;
//! - [`instance`]: the pid and status files a running instance is found by;
//! - [`control`]: `lb reload | upgrade | stop`, driving a running instance from outside.
//! - [`discovery`]: `dns:`/`srv:` upstreams looked up at start and followed in the background;
//! - [`fd_limit`]: the open-files limit, raised at start, and the client connections it allows.
//!
//! The top layer: depends on everything below (balancer, health, proxy, observe, admin,
//! config); nothing depends on it but `main`, the demo and the tests.

pub mod control;
pub(crate) mod discovery;
mod fd_limit;
pub mod handover;
pub mod instance;
pub(crate) mod lifecycle;
pub mod preflight;
pub(crate) mod reload;
pub mod server;

/// Whether this process has started serving (a failure before that is a start-up failure).
pub fn has_served() -> bool {
    lifecycle::SERVED.load(std::sync::atomic::Ordering::SeqCst)
}
