//! Operations: the process around the proxy.
//!
//! - [`server`]: assembling pingora's `Server` and its services from a validated config;
//! - [`reload`]: applying a changed config in place (SIGHUP), and building a routing with its
//!   health check;
//! - [`lifecycle`]: announcing the instance, the handshake with `lb upgrade`, a graceful end;
//! - [`instance`]: the pid and status files a running instance is found by;
//! - [`control`]: `lb reload | upgrade | stop`, driving a running instance from outside.
//! - [`fd_limit`]: the open-files limit, raised at start, and the client connections it allows.
//!
//! The top layer: depends on everything below (balancer, health, proxy, observe, admin,
//! config); nothing depends on it but `main`, the demo and the tests.

pub mod control;
mod fd_limit;
pub mod instance;
pub(crate) mod lifecycle;
pub(crate) mod reload;
pub mod server;
