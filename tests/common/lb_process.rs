//! The real `lb` binary as a child process: its configuration file and directory, waiting until
//! it serves, its log, its pid file, and its command-line subcommands.
//!
//! Everything here that needs lb's own process helpers goes through [`signal`] and
//! [`pid_alive`], the only two uses of the `lb` library in this module.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::client::{get, Response};
use super::lb_conf::LbConf;
use super::wait::{port_accepts, wait_until};

/// Sends `signal` to process `pid`.
pub fn signal(pid: i32, signal: libc::c_int) -> std::io::Result<()> {
    lb::ops::instance::signal(pid, signal)
}

/// Whether process `pid` is running.
pub fn pid_alive(pid: i32) -> bool {
    lb::ops::instance::process_alive(pid)
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lb-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn lb_binary() -> &'static str {
    env!("CARGO_BIN_EXE_lb")
}

/// Runs `lb` with `args`; returns (success, stdout and stderr).
pub fn lb_command(args: &[&str]) -> (bool, String) {
    let out = Command::new(lb_binary())
        .args(args)
        .output()
        .expect("lb did not run");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs `lb ARGS -c conf` in the background, its stderr appended to `log`.
fn spawn(args: &[&str], conf: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    Command::new(lb_binary())
        .args(args)
        .arg("-c")
        .arg(conf)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("lb did not start")
}

/// The pid in a pid file, if any.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A running `lb` process; killed when dropped, with a process that took over from it.
pub struct Lb {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The admin listener, if configured.
    pub admin: Option<SocketAddr>,
    /// The configuration last written.
    pub config: LbConf,
    pub child: Child,
    pub log_path: PathBuf,
    pub conf_path: PathBuf,
    pub dir: TempDir,
}

impl Lb {
    /// Starts `lb` on `config` in a new directory and waits until it serves.
    pub fn start(config: LbConf) -> Lb {
        Self::start_in(TempDir::new(), config)
    }

    /// Starts `lb` on `config` written into `dir` and waits until it accepts connections on its
    /// listener and, if configured, its admin listener.
    pub fn start_in(dir: TempDir, config: LbConf) -> Lb {
        let conf_path = dir.0.join("lb.yaml");
        std::fs::write(&conf_path, config.to_yaml(&dir.0)).unwrap();
        let log_path = dir.0.join("lb.log");
        std::fs::File::create(&log_path).unwrap();
        let child = spawn(&[], &conf_path, &log_path);
        let mut lb = Lb {
            addr: config.addr(),
            admin: config.admin_addr(),
            config,
            child,
            log_path,
            conf_path,
            dir,
        };
        lb.wait_listening();
        lb
    }

    /// Starts `lb` again, with `args` (such as `--keep-state`) before `-c`, on the same
    /// configuration file and directory, after the process before it has exited; its log goes
    /// on in the same file. Waits until it serves, as [`Lb::start_in`] does.
    pub fn respawn(&mut self, args: &[&str]) {
        assert!(
            !self.is_running(),
            "lb {} is still running: stop it first",
            self.pid()
        );
        self.child = spawn(args, &self.conf_path, &self.log_path);
        self.wait_listening();
    }

    /// Waits until lb accepts connections on its listener and, if configured, its admin
    /// listener; fails the test with the log if it exits or does not listen within 15 s.
    fn wait_listening(&mut self) {
        for addr in [Some(self.addr), self.admin].into_iter().flatten() {
            let up = wait_until(Duration::from_secs(15), || {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("lb exited with {status}: {}", self.log());
                }
                port_accepts(addr, Duration::ZERO)
            });
            assert!(up, "lb did not listen on {addr}: {}", self.log());
        }
    }

    /// The admin listener; panics when lb has none.
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("no admin listener configured")
    }

    /// Writes `config` over the configuration file (for a reload or upgrade to pick up).
    pub fn write_config(&mut self, config: LbConf) {
        std::fs::write(&self.conf_path, config.to_yaml(&self.dir.0)).unwrap();
        self.config = config;
    }

    /// Runs `lb COMMAND -c <this lb's config file>`; returns (success, output).
    pub fn command(&self, command: &str) -> (bool, String) {
        lb_command(&[command, "-c", self.conf()])
    }

    /// Writes `config` and reloads it; fails the test if the reload fails. Returns its output.
    pub fn reload(&mut self, config: LbConf) -> String {
        self.write_config(config);
        let (ok, out) = self.command("reload");
        assert!(ok, "reload failed: {out}\n{}", self.log());
        out
    }

    /// Waits up to 10 s for `needle` to appear in the log; fails the test with the log if not.
    pub fn expect_log(&self, needle: &str) {
        assert!(
            wait_until(Duration::from_secs(10), || self.log().contains(needle)),
            "no {needle:?} in the log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn get(&self, path: &str) -> Response {
        get(self.addr, path)
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.0.join("lb.pid")
    }

    /// The socket a new process (`lb -u`) listens on for the old one's listeners; it exists
    /// only while a new process waits for them.
    pub fn upgrade_sock(&self) -> PathBuf {
        self.dir.0.join("upgrade.sock")
    }

    /// The configuration file, as an argument for `lb -c`.
    pub fn conf(&self) -> &str {
        self.conf_path.to_str().unwrap()
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        // A process started by `lb upgrade` is not our child: find it through the pid file.
        if let Some(pid) = read_pid(&self.pid_file()) {
            if pid as u32 != self.child.id() && pid_alive(pid) {
                let _ = signal(pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
