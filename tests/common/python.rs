//! The Python helpers under `tests/py/` (HTTP/2 backend, gRPC server and client, HTTP/2 abuse
//! client), run with Debian's `/usr/bin/python3`, which has python3-h2 and python3-grpcio
//! (`.ci/install-deps` installs them); and test certificates made with the openssl CLI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::wait::port_accepts;

/// The interpreter with the Debian packages (a `python3` on PATH may be another one).
pub const PYTHON: &str = "/usr/bin/python3";

/// A script of `tests/py/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

/// A server script running as a child process, killed when dropped.
pub struct PyServer {
    child: Child,
    pub addr: SocketAddr,
}

impl PyServer {
    /// Starts `tests/py/NAME ARGS` and waits until it accepts connections on `addr`.
    pub fn start(name: &str, addr: SocketAddr, args: &[&str]) -> PyServer {
        let child = Command::new(PYTHON)
            .arg(script(name))
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {PYTHON} {name}: {e}"));
        let mut server = PyServer { child, addr };
        let up = super::wait::wait_until(Duration::from_secs(20), || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("{name} exited with {status}");
            }
            port_accepts(addr, Duration::ZERO)
        });
        assert!(up, "{name} did not listen on {addr}");
        server
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `tests/py/NAME ARGS` to its end, at most `limit`; its output.
pub fn run(name: &str, args: &[&str], limit: Duration) -> Output {
    let child = Command::new(PYTHON)
        .arg(script(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON} {name}: {e}"));
    let pid = child.id() as i32;
    // A watchdog: the script is killed if it runs past its limit.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            let _ = super::lb_process::signal(pid, libc::SIGKILL);
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = done_tx.send(());
    let _ = watchdog.join();
    out
}

/// A CA and a server certificate it signed for `backend.test`, plus an unrelated CA.
pub struct Certs {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl CLI missing");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes the test certificates in `dir` (EC P-256, valid two days).
pub fn make_certs(dir: &Path) -> Certs {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (key, pem, subject) = (
            format!("{ca}.key"),
            format!("{ca}.pem"),
            format!("/CN=lb test {ca}"),
        );
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subject,
        ]);
        openssl(dir, &args);
    }
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=backend.test",
    ]);
    openssl(dir, &req);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:backend.test\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    Certs {
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other-ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}
