use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use lb::cli::{Cli, Command};
use lb::config::Config;
use lb::ops::control::{self, NO_DAEMON_ENV};
use lb::ops::handover::SavedStateUse;
use lb::ops::instance::{InstanceError, InstanceFiles};
use lb::ops::preflight;

/// mimalloc: per-thread free lists suit pingora's many short-lived per-request allocations
/// (measured in bench/: see README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The instance files of the process, once known: a failure before it serves removes its pid
/// file.
static PID_FILE: std::sync::OnceLock<InstanceFiles> = std::sync::OnceLock::new();

/// A panic before the process serves is a start-up failure like any other: one line naming
/// the cause, exit status 1, no pid file left behind (and no backtrace for the operator to
/// decode). After that, a panic is a bug and reported as such.
fn start_up_panics_fail_cleanly() {
    let report_bug = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if lb::ops::has_served() {
            return report_bug(info);
        }
        let cause = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown cause");
        let cause = cause.lines().next().unwrap_or_default();
        eprintln!("lb: start-up failed: {cause}");
        if let Some(files) = PID_FILE.get() {
            files.remove_if_ours();
        }
        std::process::exit(1);
    }));
}

fn main() -> ExitCode {
    // Until the reload service takes SIGHUP over, a reload request must not kill the process.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let cli = Cli::parse();
    lb::init_logging();
    start_up_panics_fail_cleanly();
    let conf = cli.server.conf.clone();
    let need_conf = || {
        conf.clone()
            .ok_or("no configuration file: give one with -c FILE (or try `lb demo`)")
    };
    let outcome = match cli.command {
        Some(Command::Version) => {
            print!("{}", lb::cli::version_text());
            Ok(())
        }
        Some(Command::Demo { .. }) if conf.is_some() => Err(
            "`lb demo` takes no configuration file: it runs two built-in backends behind \
             --listen ADDR; to run with your file: lb -c FILE"
                .to_string(),
        ),
        Some(Command::Demo { .. })
            if cli.server.test || cli.server.daemon || cli.server.upgrade =>
        {
            Err("`lb demo` takes only --listen ADDR (no -t, -d or -u)".to_string())
        }
        Some(Command::Demo { listen }) => {
            let _ = PID_FILE.set(InstanceFiles::new(&lb::demo::pid_file()));
            lb::demo::run(listen).map_err(|e| e.to_string())
        }
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
    lb::set_log_format(config.lb.log_format);
    if cli.server.test {
        // What start would fail on, beyond the file itself: addresses, directories, files.
        preflight::check(&config, preflight::Mode::Test).map_err(|e| format!("{path}: {e}"))?;
        if let Some(tls) = &config.lb.tls {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            for (_, line) in tls.certificates.expiry_warnings(now) {
                eprintln!("lb: warning: {line}");
            }
        }
        println!("lb: configuration file {path} is valid");
        return Ok(());
    }
    if std::env::var_os(NO_DAEMON_ENV).is_some() {
        config.server.daemon = false;
        cli.server.daemon = false;
    }
    let files = InstanceFiles::new(&config.server.pid_file);
    let _ = PID_FILE.set(files.clone());
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
    }
    let mode = if cli.server.upgrade {
        preflight::Mode::Upgrade
    } else {
        preflight::Mode::Start
    };
    preflight::check(&config, mode).map_err(|e| format!("{path}: {e}"))?;
    preflight::prepare_runtime_dir(&config).map_err(|e| format!("{path}: {e}"))?;
    // A daemon gets its pid file from pingora after forking; an upgrading process writes it
    // once it serves.
    if !cli.server.upgrade && !config.server.daemon && !cli.server.daemon {
        files
            .write_pid()
            .map_err(|e| format!("pid_file: cannot write {}: {e}", files.pid_file.display()))?;
    }
    let saved = if cli.server.upgrade || cli.keep_state {
        SavedStateUse::Restore
    } else {
        // A fresh start: admin actions of a previous instance are forgotten.
        files.remove_state();
        SavedStateUse::Ignore
    };
    let config_path = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
    let built = match lb::ops::server::build(cli.server, config, Some(config_path), saved) {
        Ok(built) => built,
        Err(e) => {
            files.remove_if_ours();
            return Err(e.to_string());
        }
    };
    built.run();
    files.remove_if_ours();
    Ok(())
}
