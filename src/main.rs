use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use lb::cli::{Cli, Command};
use lb::config::Config;
use lb::ops::control::{self, NO_DAEMON_ENV};
use lb::ops::handover::SavedStateUse;
use lb::ops::instance::{InstanceError, InstanceFiles};

/// mimalloc: per-thread free lists suit pingora's many short-lived per-request allocations
/// (measured in bench/: see README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Until the reload service takes SIGHUP over, a reload request must not kill the process.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let cli = Cli::parse();
    lb::init_logging();
    let conf = cli.server.conf.clone();
    let need_conf = || {
        conf.clone()
            .ok_or("no configuration file: give one with -c FILE (or try `lb demo`)")
    };
    let outcome = match cli.command {
        Some(Command::Demo { listen }) => lb::demo::run(listen).map_err(|e| e.to_string()),
        Some(Command::Reload) => need_conf()
            .map_err(str::to_string)
            .and_then(|path| report(control::reload(Path::new(&path)))),
        Some(Command::Upgrade { binary }) => need_conf()
            .map_err(str::to_string)
            .and_then(|path| report(control::upgrade(Path::new(&path), binary.as_deref()))),
        Some(Command::Stop) => need_conf()
            .map_err(str::to_string)
            .and_then(|path| report(control::stop(Path::new(&path)))),
        None => match need_conf() {
            Ok(path) => run(cli, &path),
            Err(e) => Err(e.to_string()),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("lb: {message}");
            ExitCode::FAILURE
        }
    }
}

fn report(result: Result<String, control::ControlError>) -> Result<(), String> {
    result
        .map(|message| println!("lb: {message}"))
        .map_err(|e| e.to_string())
}

/// Runs the balancer in this process until it is stopped.
fn run(mut cli: Cli, path: &str) -> Result<(), String> {
    let mut config = Config::load(Path::new(path)).map_err(|e| format!("{path}: {e}"))?;
    if cli.server.test {
        println!("lb: configuration file {path} is valid");
        return Ok(());
    }
    if std::env::var_os(NO_DAEMON_ENV).is_some() {
        config.server.daemon = false;
        cli.server.daemon = false;
    }
    let files = InstanceFiles::new(&config.server.pid_file);
    if !cli.server.upgrade {
        match files.running_pid() {
            Ok(pid) => {
                return Err(format!(
                    "lb is already running with pid file {} (pid {pid}); stop it, upgrade it, or use another pid_file",
                    files.pid_file.display()
                ))
            }
            Err(InstanceError::Stale { path, pid }) => {
                log::warn!("removing stale pid file {} (process {pid} is gone)", path.display());
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => {}
        }
        lb::ops::server::check_listen(&config.lb.all_listeners()).map_err(|e| e.to_string())?;
        if !config.server.daemon && !cli.server.daemon {
            // A daemon gets its pid file from pingora after forking.
            files
                .write_pid()
                .map_err(|e| format!("cannot write pid file {}: {e}", files.pid_file.display()))?;
        }
    }
    let saved = if cli.server.upgrade || cli.keep_state {
        SavedStateUse::Restore
    } else {
        // A fresh start: admin actions of a previous instance are forgotten.
        files.remove_state();
        SavedStateUse::Ignore
    };
    let config_path = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
    lb::ops::server::build(cli.server, config, Some(config_path), saved)
        .map_err(|e| e.to_string())?
        .run();
    files.remove_if_ours();
    Ok(())
}
