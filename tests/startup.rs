//! Start-up: `lb -t` catches what start would fail on (each error naming its key, exit 1),
//! start fails in one line with no pid file left, safe default paths, the start-up log line,
//! JSON logs, one log line per event, and the small commands (`lb version`, `lb demo`).

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::backends::Backend;
use common::client::try_get;
use common::lb_conf::{fast_checks, fields, LbConf, Upstream};
use common::lb_process::{lb_binary, lb_command, read_pid, signal, Lb, TempDir};
use common::ports::unique_addr;
use common::wait::wait_until;

/// A config in `dir` listening on a free port, with `top` (top-level keys) and `extra`
/// (`lb:` keys) added; returns its path. Written by hand: these tests are about the
/// top-level keys (instance files, error log) that the builder sets on its own.
fn write_config(dir: &Path, top: &str, extra: &str) -> PathBuf {
    let listen = unique_addr();
    let path = dir.join("lb.yaml");
    std::fs::write(
        &path,
        format!("{top}lb:\n  listen: [\"{listen}\"]\n  upstreams: [127.0.0.1:1]\n{extra}"),
    )
    .unwrap();
    path
}

/// Runs `lb` with `args` and `-c conf`; returns (success, stdout + stderr).
fn run(args: &[&str], conf: &Path) -> (bool, String) {
    let mut all = args.to_vec();
    all.extend(["-c", conf.to_str().unwrap()]);
    lb_command(&all)
}

fn paths(dir: &Path) -> String {
    format!(
        "pid_file: {0}/lb.pid\nupgrade_sock: {0}/upgrade.sock\n",
        dir.display()
    )
}

#[test]
fn config_test_names_each_path_that_start_would_fail_on() {
    let dir = TempDir::new();
    let d = dir.0.display();
    let cases = [
        (
            format!("pid_file: /nonexistent-lb/lb.pid\nupgrade_sock: {d}/u.sock\n"),
            String::new(),
            "pid_file: directory /nonexistent-lb does not exist",
        ),
        (
            format!("pid_file: {d}/lb.pid\nupgrade_sock: /nonexistent-lb/u.sock\n"),
            String::new(),
            "upgrade_sock: directory /nonexistent-lb does not exist",
        ),
        (
            format!("{}error_log: /nonexistent-lb/error.log\n", paths(&dir.0)),
            String::new(),
            "error_log: directory /nonexistent-lb does not exist",
        ),
        (
            paths(&dir.0),
            "  access_log:\n    path: /nonexistent-lb/access.log\n".to_string(),
            "lb.access_log.path: directory /nonexistent-lb does not exist",
        ),
        (
            format!("pid_file: lb.pid\nupgrade_sock: {d}/u.sock\n"),
            String::new(),
            "pid_file: lb.pid must be an absolute path",
        ),
        (
            paths(&dir.0),
            format!(
                "  admin:\n    listen: {}\n    token_file: {d}/missing.token\n",
                unique_addr()
            ),
            "lb.admin.token_file",
        ),
    ];
    for (top, extra, expected) in cases {
        let conf = write_config(&dir.0, &top, &extra);
        for args in [&["-t"][..], &[][..], &["-d"][..]] {
            let (ok, out) = run(args, &conf);
            assert!(!ok, "lb {args:?} accepted:\n{top}{extra}");
            assert!(out.contains(expected), "lb {args:?}: {out}");
            assert_eq!(out.lines().count(), 1, "one line: {out}");
            assert!(!out.contains("panicked"), "{out}");
        }
        assert!(!dir.0.join("lb.pid").exists(), "no pid file left");
    }
}

#[test]
fn config_test_checks_listen_addresses_but_not_those_of_the_running_instance() {
    let dir = TempDir::new();
    let taken_listener = TcpListener::bind(unique_addr()).unwrap();
    let admin_taken_listener = TcpListener::bind(unique_addr()).unwrap();
    let (taken, admin_taken) = (
        taken_listener.local_addr().unwrap(),
        admin_taken_listener.local_addr().unwrap(),
    );
    let conf = dir.0.join("lb.yaml");
    std::fs::write(
        &conf,
        format!(
            "{}lb:\n  listen: [\"{taken}\"]\n  upstreams: [127.0.0.1:1]\n",
            paths(&dir.0)
        ),
    )
    .unwrap();
    let (ok, out) = run(&["-t"], &conf);
    assert!(!ok);
    assert!(
        out.contains(&format!(
            "lb.listen[0]: cannot listen on {taken}: the address is already in use"
        )),
        "{out}"
    );
    let conf = write_config(
        &dir.0,
        &paths(&dir.0),
        &format!("  admin:\n    listen: \"{admin_taken}\"\n"),
    );
    let (ok, out) = run(&["-t"], &conf);
    assert!(!ok);
    assert!(out.contains("lb.admin.listen: cannot listen on"), "{out}");

    // The addresses of the running instance of the same config are fine: an upgrade takes
    // them over.
    let a = Backend::start("a");
    let lb = Lb::start(LbConf::new().upstream(&a));
    let (ok, out) = run(&["-t"], &lb.conf_path);
    assert!(ok, "{out}");
}

#[test]
fn start_refuses_symlinked_or_foreign_instance_files() {
    let dir = TempDir::new();
    let target = dir.0.join("elsewhere");
    std::fs::write(&target, "").unwrap();
    std::os::unix::fs::symlink(&target, dir.0.join("lb.pid")).unwrap();
    let conf = write_config(&dir.0, &paths(&dir.0), "");
    for args in [&["-t"][..], &[][..]] {
        let (ok, out) = run(args, &conf);
        assert!(!ok);
        assert!(
            out.contains("pid_file:") && out.contains("is a symlink"),
            "{out}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "",
        "not written through"
    );

    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        std::fs::remove_file(dir.0.join("lb.pid")).unwrap();
        let sock = dir.0.join("upgrade.sock");
        std::fs::write(&sock, "").unwrap();
        std::os::unix::fs::chown(&sock, Some(65534), Some(65534)).unwrap();
        let (ok, out) = run(&["-t"], &conf);
        assert!(!ok);
        assert!(
            out.contains("upgrade_sock:") && out.contains("belongs to uid 65534"),
            "{out}"
        );
    }
}

#[test]
fn default_instance_files_are_in_a_private_runtime_directory() {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: the /run/lb default is not exercised");
        return;
    }
    let a = Backend::start("a");
    // No pid_file, no upgrade_sock: lb's defaults.
    let mut lb = Lb::start(LbConf::new().upstream(&a).default_instance_files());
    let pid_file = Path::new("/run/lb/lb.pid");
    assert!(
        wait_until(Duration::from_secs(10), || read_pid(pid_file)
            == Some(lb.pid())),
        "{}",
        lb.log()
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata("/run/lb").unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o750);
    let (ok, out) = lb.command("stop");
    assert!(ok, "{out}");
    let _ = lb.child.wait();
    assert!(!pid_file.exists());
}

#[test]
fn start_up_line_names_every_listener_and_json_logs_are_one_object_per_line() {
    let a = Backend::start("a");
    let second = unique_addr();
    let lb = Lb::start(
        LbConf::new()
            .also_listen(second)
            .upstreams([Upstream::from(&a), Upstream::new("127.0.0.1:1")])
            .key("log_format", "json")
            .admin(unique_addr(), None)
            .health(fast_checks())
            .retries(
                fields()
                    .set("attempts", 1)
                    .set("budget_min_per_second", 1000),
            )
            .passive_health(fields().set("consecutive_failures", 0)),
    );
    let (listen, admin) = (lb.addr, lb.admin());
    lb.expect_log(&format!(
        "serving on http://{listen}, http://{second}; admin on http://{admin}"
    ));
    // The dead upstream is down after the first check; requests all go to a.
    assert_eq!(lb.get("/").status, 200);
    let log = lb.log();
    for line in log.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        for key in ["time", "level", "target", "message"] {
            assert!(value.get(key).is_some(), "{key} missing: {line}");
        }
    }
    // pingora's per-service chatter is not there.
    assert!(!log.contains("Starting service"), "{log}");
}

#[test]
fn a_retried_connect_failure_is_logged_once() {
    let a = Backend::start("a");
    // Nothing listens there: the port allocator hands it out once and lb's connect is refused.
    let dead = unique_addr();
    // No active checks, so the dead upstream stays in rotation and each request to it is
    // retried on a.
    let lb = Lb::start(
        LbConf::new()
            .upstreams([a.addr, dead])
            .health(fields().set("type", "none"))
            .passive_health(fields().set("consecutive_failures", 0))
            .retries(
                fields()
                    .set("attempts", 1)
                    .set("budget_min_per_second", 1000),
            ),
    );
    for _ in 0..4 {
        assert_eq!(lb.get("/").status, 200);
    }
    lb.expect_log(&format!("upstream {dead} connect failed"));
    let log = lb.log();
    let ours = log
        .matches(&format!("upstream {dead} connect failed"))
        .count();
    assert!(ours >= 1, "{log}");
    assert!(
        !log.contains("Fail to proxy"),
        "pingora's duplicate line: {log}"
    );
}

#[test]
fn version_and_demo_arguments() {
    let (ok, out) = lb_command(&["version"]);
    assert!(ok, "{out}");
    assert!(
        out.starts_with(&format!("lb {}\n", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(out.contains("\npingora 0."), "{out}");
    assert!(out.contains("build: "), "{out}");

    let (ok, out) = lb_command(&["demo", "-c", "some.yaml"]);
    assert!(!ok);
    assert!(
        out.contains("`lb demo` takes no configuration file"),
        "{out}"
    );

    let taken = TcpListener::bind(unique_addr()).unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (ok, out) = lb_command(&["demo", "--listen", &addr]);
    assert!(!ok);
    assert!(out.contains(&format!("--listen {addr}: ")), "{out}");
    assert!(out.contains("already in use"), "{out}");
}

#[test]
fn the_demo_removes_its_pid_file_on_every_way_out() {
    let pid_file = lb::demo::pid_file();
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let listen = unique_addr();
        let mut demo = Command::new(lb_binary())
            .args(["demo", "--listen", &listen.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = demo.id() as i32;
        let serving = wait_until(Duration::from_secs(15), || {
            read_pid(Path::new(&pid_file)) == Some(pid)
                && try_get(listen, "/").is_ok_and(|r| r.status == 200)
        });
        if !serving {
            let _ = demo.kill();
            panic!("the demo did not serve on {listen}");
        }
        signal(pid, sig).unwrap();
        let status = demo.wait().unwrap();
        assert!(status.success(), "signal {sig}: {status}");
        assert!(
            read_pid(Path::new(&pid_file)) != Some(pid),
            "signal {sig}: pid file {pid_file} left behind"
        );
    }
}
