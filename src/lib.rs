//! `lb`: an HTTP load balancer built on Cloudflare's Pingora.
//!
//! The modules, from the bottom layer up (each may use only those before it):
//! - [`clock`], [`outcome`]: the process clock and the vocabulary of an attempt's outcome;
//! - [`config`]: reads and validates the YAML file;
//! - [`observe`]: metrics, per-upstream recent history, the access log;
//! - [`discovery`]: `dns:` and `srv:` upstreams, looked up in the background (hickory-resolver);
//! - [`balancer`]: the routing snapshot, each upstream's live state, selection, passive health,
//!   retry budget;
//! - [`health`]: the active health checks;
//! - [`proxy`]: the request path (pingora's `ProxyHttp` hooks) and the client connection;
//! - [`admin`]: the admin listener (metrics, upstream API, status page);
//! - [`ops`]: server assembly, reload, lifecycle, instance files, control commands;
//! - [`demo`], [`cli`]: the built-in demo and the command line.

mod admin;
mod balancer;
pub mod cli;
mod clock;
pub mod config;
pub mod demo;
mod discovery;
mod health;
mod observe;
pub mod ops;
mod outcome;
mod proxy;

/// What the benchmarks drive directly: a pool, its registry and a pick; the route table.
pub mod bench {
    pub use crate::balancer::registry::Registry;
    pub use crate::balancer::routes::RouteTable;
    pub use crate::balancer::selection::hash_bytes;
    pub use crate::balancer::selection::{Lease, Pick, Pool};
}

/// Sets up lb's log: see [`observe::logging`].
pub fn init_logging() {
    observe::logging::init();
}

/// Sets the format of lb's log lines (`lb.log_format`).
pub fn set_log_format(format: config::LogFormat) {
    observe::logging::set_format(format);
}
