//! Bad configuration files: a clear message naming the key, a non-zero exit, nothing bound.

mod common;

use std::net::TcpListener;
use std::process::Command;

use common::lb_process::{lb_binary, TempDir};
use common::ports::unique_port;

/// Runs `lb` (with `-t` or for real) on `config`; returns (exit success, stderr).
fn run_lb(config: &str, test_only: bool) -> (bool, String) {
    let dir = TempDir::new();
    let path = dir.0.join("lb.yaml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(lb_binary());
    if test_only {
        cmd.arg("-t");
    }
    let out = cmd.arg("-c").arg(&path).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn shipped_example_config_is_valid() {
    // `lb -t` also checks that the listen address can be bound: port 80 may be taken (or
    // privileged) on a test machine, so the example is checked on a free port.
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/pingora.yaml")).unwrap();
    assert!(example.contains("\"0.0.0.0:80\""));
    let dir = TempDir::new();
    let path = dir.0.join("pingora.yaml");
    std::fs::write(
        &path,
        example.replace(
            "\"0.0.0.0:80\"",
            &format!("\"127.0.0.1:{}\"", unique_port()),
        ),
    )
    .unwrap();
    let out = Command::new(lb_binary())
        .args(["-t", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));
}

#[test]
fn each_config_error_names_its_key_and_exits_non_zero() {
    let port = unique_port();
    let listen = format!("listen: [\"127.0.0.1:{port}\"]");
    let cases: Vec<(String, &str)> = vec![
        (format!("lb:\n  {listen}\n  upstreams: [127.0.0.1:1]\n  retires: 2\n"), "retires"),
        (format!("treads: 2\nlb:\n  {listen}\n  upstreams: [127.0.0.1:1]\n"), "treads"),
        (
            format!("lb:\n  {listen}\n  upstreams: [127.0.0.1:1]\n  health_check: {{ intreval: 2s }}\n"),
            "intreval",
        ),
        (format!("lb:\n  {listen}\n  upstreams: [\"not an address\"]\n"), "lb.upstreams[0].addr"),
        (format!("lb:\n  {listen}\n  upstreams: [127.0.0.1]\n"), "lb.upstreams[0].addr"),
        (format!("lb:\n  {listen}\n  upstreams: []\n"), "lb.upstreams"),
        (format!("lb:\n  {listen}\n"), "lb.upstreams"),
        (
            format!("lb:\n  {listen}\n  upstreams: [{{ addr: 127.0.0.1:1, weight: 0 }}]\n"),
            "lb.upstreams[0].weight",
        ),
        (
            format!("lb:\n  {listen}\n  upstreams: [{{ addr: 127.0.0.1:1, wieght: 2 }}]\n"),
            "wieght",
        ),
        (
            format!("lb:\n  {listen}\n  upstreams: [127.0.0.1:1]\n  timeouts: {{ connect: 5 }}\n"),
            "lb.timeouts.connect",
        ),
        (
            format!("lb:\n  {listen}\n  upstreams: [127.0.0.1:1]\n  health_check: {{ interval: 2 seconds }}\n"),
            "lb.health_check.interval",
        ),
        (
            format!("lb:\n  {listen}\n  upstreams: [127.0.0.1:1]\n  health_check: {{ type: ping }}\n"),
            "lb.health_check.type",
        ),
        ("lb:\n  listen: [\"127.0.0.1:99999\"]\n  upstreams: [127.0.0.1:1]\n".to_string(), "lb.listen[0]"),
        ("lb:\n  upstreams: [127.0.0.1:1]\n".to_string(), "lb.listen"),
        (format!("threads: many\nlb:\n  {listen}\n  upstreams: [127.0.0.1:1]\n"), "threads"),
        (format!("lb:\n  {listen}\n  upstreams: [127.0.0.1:1\n"), "line"),
    ];
    for (config, key) in cases {
        for test_only in [true, false] {
            let (ok, message) = run_lb(&config, test_only);
            assert!(!ok, "accepted:\n{config}");
            assert!(
                message.contains(key),
                "message for\n{config}\ndoes not name {key}: {message}"
            );
            assert!(message.starts_with("lb: "), "{message}");
        }
        // Nothing was bound.
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}

#[test]
fn missing_file_and_missing_flag_are_clear() {
    let out = Command::new(lb_binary())
        .args(["-c", "/nonexistent/lb.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
    let out = Command::new(lb_binary()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-c FILE"));
}

#[test]
fn taken_port_is_reported_before_starting() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (ok, message) = run_lb(
        &format!("lb:\n  listen: [\"{addr}\"]\n  upstreams: [127.0.0.1:1]\n"),
        false,
    );
    assert!(!ok);
    assert!(
        message.contains(&format!(
            "cannot listen on {addr}: the address is already in use"
        )),
        "{message}"
    );
}
