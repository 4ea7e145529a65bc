//! The admin listener: metrics after known traffic, the upstream API (drain, disable, enable,
//! weight), its token, and that its effects survive a reload.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::backends::Backend;
use common::client::{request, Response};
use common::lb_conf::{fields, LbConf, Upstream};
use common::lb_process::{lb_command, Lb, TempDir};
use common::load::Load;
use common::ports::unique_addr;
use common::wait::wait_until;
use serde_json::Value;

const TOKEN: &str = "test-token-0123456789abcdef";

/// Starts lb on `config` with an admin listener on a fresh port, its token in a file when
/// `token`; returns it and the admin address.
fn start(config: LbConf, token: bool) -> (Lb, SocketAddr) {
    let dir = TempDir::new();
    let token_file = token.then(|| {
        let path = dir.0.join("admin.token");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        path
    });
    let lb = Lb::start_in(dir, config.admin(unique_addr(), token_file.as_deref()));
    let admin = lb.admin();
    (lb, admin)
}

/// One admin request; `token` adds the Authorization header.
fn call(admin: SocketAddr, method: &str, path: &str, body: &str, token: Option<&str>) -> Response {
    let mut call = request(method, admin, path);
    if let Some(token) = token {
        call = call.header("Authorization", &format!("Bearer {token}"));
    }
    if !body.is_empty() || method != "GET" {
        call = call.body(body);
    }
    call.send()
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn json(r: &Response) -> Value {
    serde_json::from_str(&r.text()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

fn upstream(all: &Value, addr: SocketAddr) -> &Value {
    all["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["addr"] == addr.to_string())
        .unwrap_or_else(|| panic!("{addr} not listed: {all}"))
}

/// Scrapes `/metrics` until `series` reads `expected` (a request is counted just after its
/// response is sent, so the client can be a moment ahead), then returns that scrape.
fn scrape_when(admin: SocketAddr, series: &str, expected: f64) -> String {
    let mut text = String::new();
    wait_until(Duration::from_secs(3), || {
        text = call(admin, "GET", "/metrics", "", None).text();
        metric(&text, series) == expected
    });
    text
}

/// The value of one exact series in a Prometheus exposition (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

#[test]
fn metrics_count_exactly_what_happened() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    b.set_status(500);
    let mut c = Backend::start("c");
    c.kill();
    let (lb, admin) = start(
        LbConf::new()
            .upstreams([&a, &b, &c])
            .health(fields().set("interval", "30s")),
        false,
    );
    // c is down from the start; a and b alternate until b's fifth 500 ejects it.
    let statuses: Vec<u16> = (0..20).map(|i| lb.get(&format!("/m/{i}")).status).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 500).count(), 5);

    let text = scrape_when(admin, "lb_request_duration_seconds_count", 20.0);
    let (a, b, c) = (a.addr, b.addr, c.addr);
    let series = |name: &str, labels: &str| metric(&text, &format!("{name}{{{labels}}}"));
    assert_eq!(
        series(
            "lb_upstream_requests_total",
            &format!("pool=\"default\",upstream=\"{a}\"")
        ),
        15.0
    );
    assert_eq!(
        series(
            "lb_upstream_requests_total",
            &format!("pool=\"default\",upstream=\"{b}\"")
        ),
        5.0
    );
    assert_eq!(
        series(
            "lb_upstream_requests_total",
            &format!("pool=\"default\",upstream=\"{c}\"")
        ),
        0.0
    );
    assert_eq!(
        series(
            "lb_upstream_responses_total",
            &format!("class=\"2xx\",pool=\"default\",upstream=\"{a}\"")
        ),
        15.0
    );
    assert_eq!(
        series(
            "lb_upstream_responses_total",
            &format!("class=\"5xx\",pool=\"default\",upstream=\"{b}\"")
        ),
        5.0
    );
    assert_eq!(
        series(
            "lb_upstream_failures_total",
            &format!("kind=\"status_5xx\",pool=\"default\",upstream=\"{b}\"")
        ),
        5.0
    );
    assert_eq!(
        series(
            "lb_upstream_ejections_total",
            &format!("pool=\"default\",upstream=\"{b}\"")
        ),
        1.0
    );
    assert_eq!(
        series(
            "lb_upstream_state",
            &format!("pool=\"default\",state=\"up\",upstream=\"{a}\"")
        ),
        1.0
    );
    assert_eq!(
        series(
            "lb_upstream_state",
            &format!("pool=\"default\",state=\"ejected\",upstream=\"{b}\"")
        ),
        1.0
    );
    assert_eq!(
        series(
            "lb_upstream_state",
            &format!("pool=\"default\",state=\"down\",upstream=\"{c}\"")
        ),
        1.0
    );
    assert_eq!(
        series(
            "lb_upstream_state",
            &format!("pool=\"default\",state=\"up\",upstream=\"{c}\"")
        ),
        0.0
    );
    assert_eq!(series("lb_requests_total", "class=\"2xx\""), 15.0);
    assert_eq!(series("lb_requests_total", "class=\"5xx\""), 5.0);
    assert_eq!(metric(&text, "lb_request_duration_seconds_count"), 20.0);
    assert_eq!(
        series(
            "lb_upstream_response_seconds_count",
            &format!("pool=\"default\",upstream=\"{a}\"")
        ),
        15.0
    );
    assert!(
        metric(&text, "process_resident_memory_bytes") > 1e6,
        "{text}"
    );
    assert!(metric(&text, "process_open_fds") > 0.0);
}

#[test]
fn connect_failures_and_retries_are_counted() {
    let (x, mut y) = (Backend::start("x"), Backend::start("y"));
    let (lb, admin) = start(
        LbConf::new()
            .upstreams([&x, &y])
            .health(fields().set("interval", "30s")),
        false,
    );
    y.kill();
    // The first request goes to x; the second to y, is refused, and is retried on x.
    assert_eq!(lb.get("/1").backend().as_deref(), Some("x"));
    assert_eq!(lb.get("/2").backend().as_deref(), Some("x"));
    let text = scrape_when(admin, "lb_request_duration_seconds_count", 2.0);
    let (x, y) = (x.addr, y.addr);
    assert_eq!(
        metric(
            &text,
            &format!(
                "lb_upstream_failures_total{{kind=\"connect\",pool=\"default\",upstream=\"{y}\"}}"
            )
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!("lb_upstream_retries_total{{pool=\"default\",upstream=\"{y}\"}}")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!("lb_upstream_requests_total{{pool=\"default\",upstream=\"{x}\"}}")
        ),
        2.0
    );
    assert_eq!(metric(&text, "lb_requests_total{class=\"2xx\"}"), 2.0);
}

#[test]
fn api_lists_upstreams_with_live_figures() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (lb, admin) = start(
        LbConf::new()
            .upstream(&a)
            .upstream(Upstream::new(b.addr).weight(2).max_conns(5)),
        false,
    );
    for i in 0..30 {
        lb.get(&format!("/{i}"));
    }
    let all = json(&call(admin, "GET", "/api/upstreams", "", None));
    assert_eq!(all["selection"], "round_robin");
    let a_json = upstream(&all, a.addr);
    let b_json = upstream(&all, b.addr);
    assert_eq!(a_json["state"], "up");
    assert_eq!(a_json["requests_total"], 10);
    assert_eq!(b_json["requests_total"], 20);
    assert_eq!(b_json["weight"], 2);
    assert_eq!(b_json["max_conns"], 5);
    assert_eq!(a_json["responses"]["2xx"], 10);
    assert_eq!(a_json["last_check"]["ok"], true);
    assert_eq!(a_json["history"]["rps"].as_array().unwrap().len(), 59);
    // The page is served too.
    let page = call(admin, "GET", "/", "", None);
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
}

#[test]
fn drain_under_load_loses_nothing_and_sends_no_new_request() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (lb, admin) = start(LbConf::new().upstreams([&a, &b]), true);
    let load = Load::start(lb.addr, 4, 400);
    load.wait_for(100);
    let r = call(
        admin,
        "POST",
        &format!("/api/upstreams/{}/drain", b.addr),
        "",
        Some(TOKEN),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["state"], "draining");
    // Once nothing is in flight on b, b gets nothing more.
    assert!(wait_until(Duration::from_secs(5), || {
        let all = json(&call(admin, "GET", "/api/upstreams", "", Some(TOKEN)));
        upstream(&all, b.addr)["drained"] == true
    }));
    let served = b.requests();
    load.wait_for_more(200);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(
        b.requests(),
        served,
        "a drained upstream gets no new request"
    );
    lb.expect_log(&format!(
        "upstream {} is DRAINING through the admin API",
        b.addr
    ));

    // Enable brings it back.
    let r = call(
        admin,
        "POST",
        &format!("/api/upstreams/{}/enable", b.addr),
        "",
        Some(TOKEN),
    );
    assert_eq!(json(&r)["state"], "up");
    let names: Vec<String> = (0..10)
        .map(|i| lb.get(&format!("/e/{i}")).backend().unwrap())
        .collect();
    assert_eq!(names.iter().filter(|n| *n == "b").count(), 5);
}

#[test]
fn token_missing_or_wrong_is_401_and_changes_nothing() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (lb, admin) = start(LbConf::new().upstreams([&a, &b]), true);
    let drain = format!("/api/upstreams/{}/disable", b.addr);
    assert_eq!(call(admin, "POST", &drain, "", None).status, 401);
    assert_eq!(
        call(admin, "POST", &drain, "", Some("wrong-token-wrong-token")).status,
        401
    );
    assert_eq!(call(admin, "GET", "/api/upstreams", "", None).status, 401);
    assert_eq!(call(admin, "GET", "/metrics", "", None).status, 401);
    let names: Vec<String> = (0..10)
        .map(|i| lb.get(&format!("/t/{i}")).backend().unwrap())
        .collect();
    assert_eq!(
        names.iter().filter(|n| *n == "b").count(),
        5,
        "nothing changed"
    );

    // Unknown address, bad JSON, bad weight, unknown action, wrong method.
    let unknown = call(
        admin,
        "POST",
        "/api/upstreams/127.0.0.1:1/drain",
        "",
        Some(TOKEN),
    );
    assert_eq!(unknown.status, 404);
    let weight = format!("/api/upstreams/{}/weight", b.addr);
    assert_eq!(
        call(admin, "PUT", &weight, "{not json", Some(TOKEN)).status,
        400
    );
    assert_eq!(
        call(admin, "PUT", &weight, "{\"weight\": 0}", Some(TOKEN)).status,
        400
    );
    assert_eq!(
        call(admin, "PUT", &weight, "{\"weight\": \"3\"}", Some(TOKEN)).status,
        400
    );
    let action = format!("/api/upstreams/{}/explode", b.addr);
    assert_eq!(call(admin, "POST", &action, "", Some(TOKEN)).status, 404);
    assert_eq!(call(admin, "GET", &drain, "", Some(TOKEN)).status, 405);

    // Disable, then a weight change; the address may be URL-encoded.
    let encoded = b.addr.to_string().replace(':', "%3A");
    let r = call(
        admin,
        "POST",
        &format!("/api/upstreams/{encoded}/disable"),
        "",
        Some(TOKEN),
    );
    assert_eq!(json(&r)["state"], "disabled");
    let names: Vec<String> = (0..10)
        .map(|i| lb.get(&format!("/d/{i}")).backend().unwrap())
        .collect();
    assert!(names.iter().all(|n| n == "a"), "{names:?}");
    call(
        admin,
        "POST",
        &format!("/api/upstreams/{}/enable", b.addr),
        "",
        Some(TOKEN),
    );
    let r = call(admin, "PUT", &weight, "{\"weight\": 3}", Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["weight"], 3);
    let names: Vec<String> = (0..40)
        .map(|i| lb.get(&format!("/w/{i}")).backend().unwrap())
        .collect();
    assert_eq!(names.iter().filter(|n| *n == "b").count(), 30, "{names:?}");
}

#[test]
fn admin_changes_survive_a_reload() {
    let (a, b, c) = Backend::three();
    let (mut lb, admin) = start(LbConf::new().upstreams([&a, &b]), false);
    call(
        admin,
        "POST",
        &format!("/api/upstreams/{}/disable", b.addr),
        "",
        None,
    );
    // Add c by reload.
    lb.reload(lb.config.clone().upstream(&c));
    let all = json(&call(admin, "GET", "/api/upstreams", "", None));
    assert_eq!(upstream(&all, b.addr)["state"], "disabled");
    assert_eq!(upstream(&all, c.addr)["state"], "up");
    let names: Vec<String> = (0..10)
        .map(|i| lb.get(&format!("/r/{i}")).backend().unwrap())
        .collect();
    assert_eq!(names.iter().filter(|n| *n == "b").count(), 0, "{names:?}");
    assert_eq!(names.iter().filter(|n| *n == "c").count(), 5, "{names:?}");
}

#[test]
fn a_public_admin_address_without_a_token_is_refused() {
    let dir = TempDir::new();
    let path = dir.0.join("lb.yaml");
    let config = LbConf::new()
        .listen("127.0.0.1:1".parse().unwrap())
        .upstream("127.0.0.1:2")
        .admin("0.0.0.0:9901".parse().unwrap(), None);
    std::fs::write(&path, config.to_yaml(&dir.0)).unwrap();
    let (ok, out) = lb_command(&["-t", "-c", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains("lb.admin.token_file") && out.contains("loopback"),
        "{out}"
    );
}
