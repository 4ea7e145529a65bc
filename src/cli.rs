//! The command line: pingora's own flags (`-c`, `-u`, `-d`, `-t`) plus our subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use pingora::server::configuration::Opt;

/// An HTTP load balancer: round robin over health-checked upstreams, configured by one YAML file.
#[derive(Debug, Parser)]
#[command(
    name = "lb",
    version,
    after_help = "Examples:\n  lb -c conf/pingora.yaml      run with a config file\n  \
                  lb -t -c conf/pingora.yaml   check the config file and exit\n  \
                  lb reload -c conf/pingora.yaml   apply a changed config to the running lb\n  \
                  lb upgrade -c conf/pingora.yaml  replace the running lb with a new process, losing nothing\n  \
                  lb stop -c conf/pingora.yaml     stop gracefully: finish requests in flight, then exit\n  \
                  lb demo --listen 127.0.0.1:8080   try it with two built-in backends",
    mut_arg("upgrade", |a| a.help("Take over the listening sockets of a running lb (zero-downtime upgrade)")),
    mut_arg("daemon", |a| a.help("Run in the background (logs go to error_log, pid to pid_file)")),
    mut_arg("test", |a| a.help("Check the configuration file and exit: 0 if valid, 1 if not")),
    mut_arg("conf", |a| a
        .help("The YAML configuration file (pingora's server keys plus `lb:`)")
        .value_name("FILE")
        .global(true)),
)]
pub struct Cli {
    #[command(flatten)]
    pub server: Opt,

    /// Restore the admin actions (drain, disable, weights) and ejections saved by the previous
    /// instance of this config (`<pid_file>.state`); an upgrade (-u) always does
    #[arg(long)]
    pub keep_state: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start two built-in backends on 127.0.0.1 and balance over them (no config file needed)
    Demo {
        /// Where the balancer listens
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:80")]
        listen: SocketAddr,
    },
    /// Apply a changed config to the running instance (found through pid_file) without
    /// dropping any connection; changes to listeners or pingora keys need `upgrade`
    Reload,
    /// Start a new process that takes over the listening sockets of the running one, then let
    /// the old one finish its requests and exit (new binary, or any config change)
    Upgrade {
        /// The binary to start (default: this one)
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
    /// Stop the running instance gracefully: no new connections, requests in flight finish
    /// (within grace_period_seconds), then exit
    Stop,
    /// Print the version of lb, the pingora it is built on, and how it was built
    Version,
}

/// `lb version`: lb's version, pingora's, and the build.
pub fn version_text() -> String {
    // The exact pingora release, from the lock file the binary was built with.
    let lock = include_str!("../Cargo.lock");
    let pingora = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"pingora\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    format!(
        "lb {}\npingora {pingora} (features: lb, proxy, time)\nbuild: {profile}, {}-{}, allocator mimalloc, rust-version {}\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS,
        env!("CARGO_PKG_RUST_VERSION"),
    )
}
