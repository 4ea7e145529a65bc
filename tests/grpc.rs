//! gRPC through lb: a real grpcio server behind an `h2c` pool and behind an `https_h2` pool,
//! a real grpcio client talking h2c to lb; unary and server-streaming calls, and an error status
//! with its message (carried in the `grpc-status` / `grpc-message` trailers).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::lb_conf::{fields, quoted, LbConf};
use common::lb_process::{Lb, TempDir};
use common::ports::unique_addr;
use common::python::{make_certs, run, PyServer};

/// Runs the gRPC client against lb; its JSON report.
fn call(lb: SocketAddr) -> serde_json::Value {
    let out = run(
        "grpc_client.py",
        &[&lb.to_string(), "4"],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpc client failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// What a grpcio server named `name` answers (see tests/py/grpc_server.py).
fn assert_answers(report: &serde_json::Value, names: &[&str]) {
    let unary = report["unary"].as_array().expect("unary answers");
    assert_eq!(unary.len(), 4, "{report}");
    for (i, answer) in unary.iter().enumerate() {
        let answer = answer.as_str().unwrap();
        assert!(
            names.iter().any(|n| answer == format!("{n}:hello{i}")),
            "{report}"
        );
    }
    let stream = report["stream"].as_array().expect("streamed answers");
    assert_eq!(stream.len(), 5, "{report}");
    assert!(stream
        .iter()
        .enumerate()
        .all(|(i, m)| m.as_str().is_some_and(|m| m.ends_with(&format!(":{i}")))));
    assert_eq!(
        report["missing"],
        serde_json::json!(["NOT_FOUND", "no such thing"]),
        "the error status and message must pass through"
    );
}

fn grpc_server(name: &str, extra: &[&str]) -> PyServer {
    let addr = unique_addr();
    let port = addr.port().to_string();
    let mut args = vec!["--port", &port, "--name", name];
    args.extend(extra);
    PyServer::start("grpc_server.py", addr, &args)
}

#[test]
fn grpc_unary_streaming_and_errors_through_an_h2c_pool() {
    let (a, b) = (grpc_server("a", &[]), grpc_server("b", &[]));
    let lb = Lb::start(
        LbConf::new()
            .upstreams([a.addr, b.addr])
            .key("protocol", "h2c"),
    );
    let report = call(lb.addr);
    assert_answers(&report, &["a", "b"]);
    // Calls on one client connection are balanced per call.
    let unary: Vec<&str> = report["unary"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        unary.iter().any(|m| m.starts_with("a:")) && unary.iter().any(|m| m.starts_with("b:")),
        "{report}"
    );
}

#[test]
fn grpc_through_an_https_h2_pool() {
    let dir = TempDir::new();
    let certs = make_certs(&dir.0);
    let server = grpc_server(
        "tls",
        &[
            "--cert",
            certs.cert.to_str().unwrap(),
            "--key",
            certs.key.to_str().unwrap(),
        ],
    );
    let lb = Lb::start(
        LbConf::new()
            .upstream(server.addr)
            .key("protocol", "https_h2")
            .key(
                "upstream_tls",
                fields()
                    .set("sni", "backend.test")
                    .set("ca_file", quoted(certs.ca.display())),
            ),
    );
    assert_answers(&call(lb.addr), &["tls"]);
}
