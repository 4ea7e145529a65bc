//! `lb`: an HTTP load balancer built on Cloudflare's Pingora.
//!
//! The modules, from the bottom layer up (each may use only those before it):
//! - [`clock`], [`outcome`]: the process clock and the vocabulary of an attempt's outcome;
//! - [`config`]: reads and validates the YAML file;
//! - [`observe`]: metrics, per-upstream recent history, the access log;
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

/// Sets up logging to stderr: level from `RUST_LOG`, `info` by default.
///
/// pingora's own health-check messages are kept to errors by default because [`health`] logs
/// every state change itself, with the reason.
pub fn init_logging() {
    let default = "info,pingora_load_balancing=error";
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .init();
}
