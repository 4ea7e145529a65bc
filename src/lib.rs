//! `lb`: an HTTP load balancer built on Cloudflare's Pingora.
//!
//! One module per concern: [`config`] reads and validates the YAML file, [`upstream`] holds each
//! upstream's live state, [`selection`] picks an upstream, [`health`] runs the active checks,
//! [`retry`] keeps the retry budget, [`stats`] the metrics, [`proxy`] is the request path, [`connection`] keeps idle client connections lean, [`server`]
//! assembles pingora services from a config, [`reload`] applies a changed config in place,
//! [`lifecycle`] announces the instance and ends it gracefully, [`instance`] and [`control`]
//! let `lb reload|upgrade|stop` find and drive a running instance, [`demo`] is the built-in
//! demo, [`cli`] the command line.

pub mod access_log;
pub mod admin;
pub mod cli;
pub mod config;
pub mod connection;
pub mod control;
pub mod demo;
pub mod health;
pub mod instance;
pub mod lifecycle;
pub mod proxy;
pub mod reload;
pub mod retry;
pub mod selection;
pub mod server;
pub mod stats;
pub mod upstream;

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
