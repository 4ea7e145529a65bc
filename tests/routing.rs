//! Several sites behind one lb: named pools, host and path routes, redirects, fixed answers and
//! header rules, with the real binary and real backends.

mod common;

use std::net::SocketAddr;

use common::backends::Backend;
use common::client::{request, Response};
use common::lb_conf::LbConf;
use common::lb_process::{lb_command, Lb, TempDir};
use common::load::Load;
use common::raw::send_raw;

fn send(addr: SocketAddr, method: &str, host: &str, path: &str) -> Response {
    request(method, addr, path)
        .header("Host", host)
        .send()
        .expect("response")
}

fn get(addr: SocketAddr, host: &str, path: &str) -> Response {
    send(addr, "GET", host, path)
}

/// Pools `api` (a), `web` (w) and `static` (s), and the routes of the example.
fn three_sites(a: &Backend, w: &Backend, s: &Backend) -> LbConf {
    LbConf::new()
        .key(
            "pools",
            format!(
                "{{ api: {{ upstreams: [\"{}\"], selection: least_conn }}, \
                   web: {{ upstreams: [\"{}\"] }}, \
                   static: {{ upstreams: [\"{}\"] }} }}",
                a.addr, w.addr, s.addr
            ),
        )
        .key(
            "routes",
            "[ { name: api, host: API.example.com, pool: api }, \
               { name: assets, host: www.example.com, path: /static/, strip_prefix: true, pool: static, \
                 set_request_headers: { X-Site: www, Host: internal.web }, remove_request_headers: [X-Drop], \
                 set_response_headers: { X-Served-By: lb }, remove_response_headers: [X-Backend] }, \
               { host: \"*.example.org\", pool: api }, \
               { host: example.com, redirect: { to: \"https://www.example.com\", status: 301 } }, \
               { path: \"= /ping\", respond: { status: 200, body: \"pong\\n\" } }, \
               { path: \"~ ^/v[0-9]+/\", methods: [GET], pool: api }, \
               { path: /admin/, headers: { X-Token: letmein }, pool: api }, \
               { host: www.example.com, pool: web } ]",
        )
}

#[test]
fn hosts_paths_actions_and_header_rules() {
    let (a, w, s) = (
        Backend::start("api"),
        Backend::start("web"),
        Backend::start("static"),
    );
    let lb = Lb::start(three_sites(&a, &w, &s));
    let addr = lb.addr;

    // Exact host, case and port ignored.
    let r = get(addr, "api.EXAMPLE.com:8443", "/users");
    assert_eq!(r.backend().as_deref(), Some("api"), "{}", r.text());
    // Wildcard host: any name under example.org, not the bare name.
    assert_eq!(
        get(addr, "a.b.example.org", "/").backend().as_deref(),
        Some("api")
    );
    assert_eq!(get(addr, "example.org", "/").status, 404);

    // Prefix path with strip_prefix, and header rules both ways.
    let r = request("GET", addr, "/static/css/a.css?v=2")
        .header("Host", "www.example.com")
        .header("X-Drop", "secret")
        .send()
        .unwrap();
    assert_eq!(r.backend().as_deref(), Some("static"));
    assert_eq!(r.echo("target").as_deref(), Some("/css/a.css?v=2"));
    assert_eq!(r.echo("header:x-site").as_deref(), Some("www"));
    assert_eq!(r.echo("header:host").as_deref(), Some("internal.web"));
    assert_eq!(r.echo("header:x-drop"), None);
    // X-Forwarded-Host is the client's Host even though a rule rewrote Host.
    assert_eq!(
        r.echo("header:x-forwarded-host").as_deref(),
        Some("www.example.com")
    );
    assert_eq!(r.header("X-Served-By"), Some("lb"));
    assert_eq!(r.header("X-Backend"), None);
    // The prefix itself, with and without its trailing slash.
    let r = get(addr, "www.example.com", "/static/");
    assert_eq!(r.echo("target").as_deref(), Some("/"));
    let r = get(addr, "www.example.com", "/static");
    assert_eq!(
        r.backend().as_deref(),
        Some("web"),
        "`/static/` is not `/static`"
    );
    // A path that merely starts with the prefix's letters is not under it.
    assert_eq!(
        get(addr, "www.example.com", "/staticfile")
            .backend()
            .as_deref(),
        Some("web")
    );

    // Redirect keeps path and query and uses the status.
    let r = get(addr, "example.com", "/a/b?c=1");
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("Location"),
        Some("https://www.example.com/a/b?c=1")
    );

    // Fixed answer, exact path only.
    let r = get(addr, "anything.test", "/ping");
    assert_eq!((r.status, r.text().as_str()), (200, "pong\n"));
    assert_eq!(get(addr, "anything.test", "/ping/x").status, 404);

    // Regex path with a method condition.
    assert_eq!(
        get(addr, "anything.test", "/v2/users").backend().as_deref(),
        Some("api")
    );
    assert_eq!(send(addr, "POST", "anything.test", "/v2/users").status, 404);

    // Header condition.
    assert_eq!(get(addr, "anything.test", "/admin/x").status, 404);
    let r = request("GET", addr, "/admin/x")
        .header("Host", "anything.test")
        .header("X-Token", "letmein")
        .send()
        .unwrap();
    assert_eq!(r.backend().as_deref(), Some("api"));

    // Nothing matches: a short 404 naming no internals.
    let r = get(addr, "unknown.test", "/");
    assert_eq!(r.status, 404);
    assert!(
        !r.text().contains("pool") && !r.text().contains("route"),
        "{}",
        r.text()
    );
    // First match wins: www.example.com/static/ went to `static`, the rest of www to `web`.
    assert_eq!(
        get(addr, "www.example.com", "/x").backend().as_deref(),
        Some("web")
    );
    assert_eq!((a.requests(), w.requests(), s.requests()), (4, 3, 2));
}

#[test]
fn a_path_with_dot_segments_cannot_slip_past_a_route() {
    let (a, w, s) = (
        Backend::start("api"),
        Backend::start("web"),
        Backend::start("static"),
    );
    let lb = Lb::start(three_sites(&a, &w, &s));
    // `/admin/` is guarded by a header condition; `/x/../admin/` must not reach a pool.
    for path in [
        "/x/../admin/secret",
        "/x/%2e%2e/admin/secret",
        "/./admin/secret",
    ] {
        let r = send_raw(
            lb.addr,
            format!("GET {path} HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 400, "{path}");
    }
    assert_eq!(a.requests() + w.requests() + s.requests(), 0);
    // A dotfile is a name, not a dot segment.
    let r = get(lb.addr, "www.example.com", "/.well-known/x");
    assert_eq!(r.backend().as_deref(), Some("web"));
}

#[test]
fn each_pool_has_its_own_selection_and_health_checks() {
    let (a1, a2) = (Backend::start("a1"), Backend::start("a2"));
    let (w1, w2) = (Backend::start("w1"), Backend::start("w2"));
    // Pool web checks /health over HTTP; w2 answers 503 there, so it is out. Pool api keeps
    // the TCP check: a2's /health answering 503 means nothing to it.
    a2.set_health(503);
    w2.set_health(503);
    let conf = LbConf::new()
        .key("health_check", "{ interval: 200ms, healthy_after: 1, unhealthy_after: 1 }")
        .key(
            "pools",
            format!(
                "{{ api: {{ upstreams: [\"{}\", \"{}\"] }}, \
                   web: {{ upstreams: [\"{}\", \"{}\"], health_check: {{ type: http, path: /health }} }} }}",
                a1.addr, a2.addr, w1.addr, w2.addr
            ),
        )
        .key("routes", "[ { path: /api/, pool: api }, { pool: web } ]");
    let lb = Lb::start(conf);
    for i in 0..20 {
        get(lb.addr, "x", &format!("/api/{i}"));
        get(lb.addr, "x", &format!("/page/{i}"));
    }
    assert_eq!((a1.requests(), a2.requests()), (10, 10));
    assert_eq!((w1.requests(), w2.requests()), (20, 0));
    // The log names the pool of a named pool's upstream.
    lb.expect_log(&format!("upstream {} (pool web) is DOWN", w2.addr));
}

#[test]
fn reload_adds_and_removes_a_pool_under_load_without_a_failure() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let base = LbConf::new();
    let one = base
        .clone()
        .key(
            "pools",
            format!("{{ main: {{ upstreams: [\"{}\"] }} }}", a.addr),
        )
        .key("routes", "[ { pool: main } ]");
    let two = base
        .key(
            "pools",
            format!(
                "{{ main: {{ upstreams: [\"{}\"] }}, extra: {{ upstreams: [\"{}\"] }} }}",
                a.addr, b.addr
            ),
        )
        .key(
            "routes",
            "[ { path: /extra/, pool: extra }, { pool: main } ]",
        );
    let mut lb = Lb::start(one.clone());
    let load = Load::start(lb.addr, 4, 100_000);
    load.wait_for(200);
    let summary = lb.reload(two.clone());
    assert!(summary.contains("pools added extra"), "{summary}");
    assert_eq!(
        get(lb.addr, "x", "/extra/1").backend().as_deref(),
        Some("b")
    );
    load.wait_for_more(200);
    let summary = lb.reload(one);
    assert!(summary.contains("pools removed extra"), "{summary}");
    assert_eq!(
        get(lb.addr, "x", "/extra/2").backend().as_deref(),
        Some("a")
    );
    load.wait_for_more(200);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.ok >= 600);
}

#[test]
fn the_single_pool_form_is_pool_default_with_a_catch_all_route() {
    let a = Backend::start("a");
    let lb = Lb::start(LbConf::new().upstream(&a));
    assert_eq!(
        get(lb.addr, "whatever", "/x").backend().as_deref(),
        Some("a")
    );
    let admin_less = lb.log();
    assert!(!admin_less.contains("(pool "), "{admin_less}");
}

/// `lb -t` on a config whose `lb:` section ends with `tail`.
fn check(tail: &str) -> (bool, String) {
    let dir = TempDir::new();
    let path = dir.0.join("lb.yaml");
    let text = format!(
        "lb:\n  listen: [\"127.0.0.1:1\"]\n  pools:\n    api: {{ upstreams: [\"127.0.0.1:2\"] }}\n    web: {{ upstreams: [\"127.0.0.1:3\"] }}\n{tail}"
    );
    std::fs::write(&path, text).unwrap();
    lb_command(&["-t", "-c", path.to_str().unwrap()])
}

#[test]
fn config_errors_name_the_key() {
    let cases: &[(&str, &str)] = &[
        (
            "  routes: [ { pool: api }, { pool: apis } ]\n",
            "lb.routes[1].pool: no pool named \"apis\"; pools are api, web",
        ),
        ("  routes: [ { pool: api } ]\n", "lb.pools.web: no route sends requests to this pool"),
        (
            "  routes: [ { pool: api }, { path: /x/, pool: web } ]\n",
            "lb.routes[1]: can never match",
        ),
        (
            "  routes: [ { host: \"*.example.com\", pool: api }, { host: a.example.com, path: /x/, pool: web } ]\n",
            "lb.routes[1]: can never match",
        ),
        (
            "  routes: [ { path: \"~ ^/(\", pool: api }, { pool: web } ]\n",
            "lb.routes[0].path: invalid regular expression",
        ),
        (
            "  routes: [ { pool: api, respond: { status: 200 } }, { pool: web } ]\n",
            "lb.routes[0]: more than one action",
        ),
        ("  routes: [ { path: /a/ }, { pool: web }, { pool: api } ]\n", "lb.routes[0]: no action"),
        (
            "  routes: [ { redirect: { to: www.example.com } }, { pool: api }, { pool: web } ]\n",
            "lb.routes[0].redirect.to: `www.example.com` is not an absolute URL",
        ),
        (
            "  routes: [ { pool: api, strip_prefix: true }, { pool: web } ]\n",
            "lb.routes[0].strip_prefix",
        ),
        ("  routes: [ { pool: api, hostt: a } ]\n", "unknown field `hostt`"),
        ("", "lb.routes: missing"),
    ];
    for (tail, expected) in cases {
        let (ok, out) = check(tail);
        assert!(!ok, "accepted: {tail}");
        assert!(
            out.contains(expected),
            "for {tail}\nexpected {expected}\ngot {out}"
        );
        assert_eq!(out.trim().lines().count(), 1, "{out}");
    }
    let (ok, out) = check("  routes: [ { host: api.example.com, pool: api }, { pool: web } ]\n");
    assert!(ok, "{out}");
}

#[test]
fn the_example_sites_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/sites.yaml");
    let (ok, out) = lb_command(&["-t", "-c", path]);
    assert!(ok, "{out}");
}

#[test]
fn a_pool_key_at_lb_level_is_the_default_and_its_errors_name_lb() {
    let dir = TempDir::new();
    let path = dir.0.join("lb.yaml");
    std::fs::write(
        &path,
        "lb:\n  listen: [\"127.0.0.1:1\"]\n  timeouts: { read: soon }\n  pools: { api: { upstreams: [\"127.0.0.1:2\"] } }\n",
    )
    .unwrap();
    let (ok, out) = lb_command(&["-t", "-c", path.to_str().unwrap()]);
    assert!(!ok && out.contains("lb.timeouts.read"), "{out}");
    std::fs::write(
        &path,
        "lb:\n  listen: [\"127.0.0.1:1\"]\n  pools: { api: { upstreams: [\"127.0.0.1:2\"], queue: { size: -1 } } }\n",
    )
    .unwrap();
    let (ok, out) = lb_command(&["-t", "-c", path.to_str().unwrap()]);
    assert!(!ok && out.contains("lb.pools.api"), "{out}");
}
