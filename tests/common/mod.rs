//! Test harness for the integration tests: real backends in the test process, the real `lb`
//! binary as a child process, and clients.
//!
//! - [`backends`]: in-process HTTP echo backends (and a WebSocket echo) and their state.
//! - [`lb_process`]: spawning `lb`, its directory, readiness, log, pid file and subcommands.
//! - [`lb_conf`]: a typed builder for lb's configuration file.
//! - [`client`]: well-formed HTTP requests through `ureq`, one-shot or kept alive.
//! - [`raw`]: HTTP at the byte level, for malformed input and wire-level tests.
//! - [`load`]: bounded load loops that count failures.
//! - [`browser`]: a headless chromium through chromedriver (WebDriver).
//! - [`python`]: the Python helpers of `tests/py/` (HTTP/2, gRPC) and test certificates.
//! - [`ports`]: loopback ports that are never handed out twice.
//! - [`wait`]: bounded waits on observable conditions.
//!
//! Every file in `tests/` is a crate of its own that includes this module with `mod common;` and
//! uses part of it, and the dead-code lint judges each such crate alone: an item that one test
//! file does not use would warn there although others use it. Hence the one allow below, for
//! that reason only; code that no test file uses is deleted, not allowed (check by removing
//! the allow and building: an item warned about in every test crate is dead).
#![allow(
    dead_code,
    reason = "each test crate uses a different part of the shared harness"
)]

pub mod backends;
pub mod browser;
pub mod client;
pub mod lb_conf;
pub mod lb_process;
pub mod load;
pub mod ports;
pub mod python;
pub mod raw;
pub mod wait;
