//! DNS service discovery (`dns:` and `srv:` upstreams) against a real DNS server on loopback
//! (tests/dns_server.py, on Python's dnslib) whose records the tests change while lb runs.
//! Backends listen on 127.0.0.2, 127.0.0.3, ... with one port per test: all of 127.0.0.0/8 is
//! loopback on Linux.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::backends::Backend;
use common::browser::Browser;
use common::client::{get, request, try_get};
use common::lb_conf::{fast_checks, quoted, LbConf, Upstream};
use common::lb_process::{lb_command, Lb, TempDir};
use common::load::Load;
use common::ports::{unique_addr, unique_port};
use common::wait::{poll_until, wait_until};
use serde::Deserialize;
use serde_json::{json, Value};

/// The Python with dnslib: Debian's (`python3-dnslib`), not whatever `python3` is on PATH.
const PYTHON: &str = "/usr/bin/python3";

/// tests/dns_server.py, serving the zone in a JSON file that [`Dns::set`] rewrites.
struct Dns {
    child: Child,
    zone: PathBuf,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Dns {
    fn start(zone: Value) -> Dns {
        let dir = TempDir::new();
        let addr = unique_addr();
        let mut dns = Dns {
            child: Command::new("true").spawn().unwrap(),
            zone: dir.0.join("zone.json"),
            addr,
            _dir: dir,
        };
        dns.set(zone);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dns_server.py");
        let mut child = Command::new(PYTHON)
            .arg(script)
            .arg(&dns.zone)
            .arg(addr.port().to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run /usr/bin/python3 tests/dns_server.py (install python3-dnslib: .ci/install-deps)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the DNS server did not start");
        let _ = dns.child.wait();
        dns.child = child;
        dns
    }

    /// Replaces the zone (atomically: the server reads it at every query).
    fn set(&self, zone: Value) {
        let tmp = self.zone.with_extension("tmp");
        std::fs::write(&tmp, zone.to_string()).unwrap();
        std::fs::rename(&tmp, &self.zone).unwrap();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.kill();
    }
}

/// 127.0.0.`n`:`port`.
fn loopback(n: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), port)
}

/// A zone where `name` has A records for 127.0.0.`n` of each `n` in `hosts`, with `ttl`.
fn a_records(name: &str, hosts: &[u8], ttl: u32) -> Value {
    let ips: Vec<String> = hosts.iter().map(|n| format!("127.0.0.{n}")).collect();
    json!({ name: { "ttl": ttl, "A": ips } })
}

/// lb following `upstream` through `dns`, with fast HTTP checks on /health and an admin
/// listener.
fn lb_conf(dns: &Dns, upstream: Upstream, discovery: &str) -> LbConf {
    LbConf::new()
        .upstream(upstream)
        .health(fast_checks().set("type", "http").set("path", "/health"))
        .key(
            "discovery",
            format!("{{ resolvers: [{}], {discovery} }}", quoted(dns.addr)),
        )
        .admin(unique_addr(), None)
}

/// Which backends answer `n` requests.
fn spread(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let r = get(addr, &format!("/spread/{i}"));
        assert_eq!(r.status, 200, "{}", r.text());
        *seen.entry(r.backend().unwrap_or_default()).or_default() += 1;
    }
    seen
}

fn names(seen: &BTreeMap<String, usize>) -> Vec<&str> {
    seen.keys().map(String::as_str).collect()
}

/// The value of one exact series in lb's /metrics (0 when absent).
fn metric(lb: &Lb, series: &str) -> f64 {
    get(lb.admin(), "/metrics")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

fn overview(lb: &Lb) -> Value {
    serde_json::from_slice(&get(lb.admin(), "/api/upstreams").body).unwrap()
}

/// The addresses the admin API lists for pool `default`.
fn listed(lb: &Lb) -> Vec<String> {
    let mut list: Vec<String> = overview(lb)["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["addr"].as_str().unwrap().to_string())
        .collect();
    list.sort();
    list
}

#[test]
fn addresses_follow_the_name_checked_before_traffic_and_drained_when_gone() {
    let port = unique_port();
    let b2 = Backend::start_on("b2", loopback(2, port));
    let _b3 = Backend::start_on("b3", loopback(3, port));
    let b4 = Backend::start_on("b4", loopback(4, port));
    let dns = Dns::start(a_records("api.test.", &[2, 3], 1));
    let conf = lb_conf(
        &dns,
        Upstream::dns(format!("api.test:{port}")),
        "min_refresh: 200ms",
    );
    let mut lb = Lb::start(conf.clone());
    assert_eq!(names(&spread(lb.addr, 20)), ["b2", "b3"]);

    // The API groups the addresses under the name.
    let view = overview(&lb);
    let origin = format!("dns:api.test:{port}");
    for u in view["upstreams"].as_array().unwrap() {
        assert_eq!(u["origin"], origin, "{u}");
    }
    let names_view = view["discovery"].as_array().unwrap();
    assert_eq!(names_view.len(), 1, "{view}");
    assert_eq!(names_view[0]["name"], origin);
    assert_eq!(
        names_view[0]["addresses"],
        json!([loopback(2, port).to_string(), loopback(3, port).to_string()])
    );
    assert!(names_view[0]["last_refresh"].is_string());

    // A new address whose health check fails gets no traffic...
    b4.set_health(503);
    dns.set(a_records("api.test.", &[2, 3, 4], 1));
    let b4_addr = loopback(4, port).to_string();
    assert!(
        wait_until(Duration::from_secs(10), || listed(&lb).contains(&b4_addr)),
        "127.0.0.4 was not added: {}",
        lb.log()
    );
    assert_eq!(names(&spread(lb.addr, 30)), ["b2", "b3"]);
    assert_eq!(b4.requests(), 0);
    // ...until it passes.
    b4.set_health(200);
    assert!(
        poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
            spread(lb.addr, 6).contains_key("b4")
        }),
        "b4 never got traffic: {}",
        lb.log()
    );

    // A reload of the same file keeps the discovered addresses.
    lb.reload(conf);
    assert_eq!(names(&spread(lb.addr, 30)), ["b2", "b3", "b4"]);

    // A removed address drains under load: no request fails.
    let load = Load::start(lb.addr, 4, 400);
    load.wait_for(40);
    dns.set(a_records("api.test.", &[3, 4], 1));
    let b2_addr = loopback(2, port).to_string();
    assert!(
        wait_until(Duration::from_secs(10), || !listed(&lb).contains(&b2_addr)),
        "127.0.0.2 was not removed: {}",
        lb.log()
    );
    load.wait_for_more(40);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let before = b2.requests();
    assert_eq!(names(&spread(lb.addr, 30)), ["b3", "b4"]);
    assert_eq!(
        b2.requests(),
        before,
        "the removed address still got requests"
    );
}

#[test]
fn a_resolver_that_goes_down_leaves_the_last_set_serving() {
    let port = unique_port();
    let _b2 = Backend::start_on("b2", loopback(2, port));
    let _b3 = Backend::start_on("b3", loopback(3, port));
    let mut dns = Dns::start(a_records("api.test.", &[2, 3], 1));
    let lb = Lb::start(lb_conf(
        &dns,
        Upstream::dns(format!("api.test:{port}")),
        "min_refresh: 200ms, max_refresh: 1s",
    ));
    assert_eq!(names(&spread(lb.addr, 10)), ["b2", "b3"]);
    dns.kill();
    let series =
        format!("lb_discovery_errors_total{{name=\"dns:api.test:{port}\",pool=\"default\"}}");
    assert!(
        wait_until(Duration::from_secs(20), || metric(&lb, &series) >= 2.0),
        "no lookup errors counted: {}",
        get(lb.admin(), "/metrics").text()
    );
    assert_eq!(names(&spread(lb.addr, 20)), ["b2", "b3"]);
    let view = overview(&lb);
    assert!(view["discovery"][0]["last_error"].is_string(), "{view}");
    assert_eq!(
        view["discovery"][0]["addresses"].as_array().unwrap().len(),
        2
    );
    lb.expect_log("keeping the last 2 addresses");
}

#[test]
fn srv_records_give_ports_weights_and_backups() {
    let port = unique_port();
    let other_port = unique_port();
    let _b2 = Backend::start_on("b2", loopback(2, port));
    let _b3 = Backend::start_on("b3", loopback(3, other_port));
    let b4 = Backend::start_on("b4", loopback(4, port));
    let dns = Dns::start(json!({
        "_http._tcp.api.test.": { "ttl": 1, "SRV": [
            [10, 1, port, "one.test."],
            [10, 3, other_port, "three.test."],
            [20, 5, port, "spare.test."],
        ]},
        "one.test.": { "A": ["127.0.0.2"] },
        "three.test.": { "A": ["127.0.0.3"] },
        "spare.test.": { "A": ["127.0.0.4"] },
    }));
    let lb = Lb::start(lb_conf(
        &dns,
        Upstream::srv("_http._tcp.api.test"),
        "ipv6: false",
    ));
    let seen = spread(lb.addr, 200);
    assert_eq!(names(&seen), ["b2", "b3"], "the lower priority is a backup");
    let share = seen["b3"] as f64 / 200.0;
    assert!((0.6..=0.9).contains(&share), "weight 3 of 4 got {seen:?}");
    assert_eq!(b4.requests(), 0);
    let view = overview(&lb);
    let spare = view["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["addr"] == loopback(4, port).to_string())
        .cloned()
        .unwrap_or_default();
    assert_eq!(spare["backup"], true, "{view}");
    assert_eq!(spare["origin"], "srv:_http._tcp.api.test");
}

#[test]
fn the_ttl_decides_when_to_look_again_within_the_clamp() {
    let port = unique_port();
    let _b2 = Backend::start_on("b2", loopback(2, port));
    let dns = Dns::start(json!({
        "long.test.": { "ttl": 3600, "A": ["127.0.0.2"] },
        "short.test.": { "ttl": 0, "A": ["127.0.0.2"] },
    }));
    // A TTL of an hour is looked up again after max_refresh...
    let lb = Lb::start(lb_conf(
        &dns,
        Upstream::dns(format!("long.test:{port}")),
        "max_refresh: 1s",
    ));
    let long =
        format!("lb_discovery_refreshes_total{{name=\"dns:long.test:{port}\",pool=\"default\"}}");
    assert!(
        wait_until(Duration::from_secs(20), || metric(&lb, &long) >= 3.0),
        "max_refresh did not shorten a long TTL: {}",
        get(lb.admin(), "/metrics").text()
    );
    drop(lb);
    // ...and a TTL of 0 only after min_refresh: at most one lookup per 2 s (and the first).
    let started = Instant::now();
    let lb = Lb::start(lb_conf(
        &dns,
        Upstream::dns(format!("short.test:{port}")),
        "min_refresh: 2s",
    ));
    let short =
        format!("lb_discovery_refreshes_total{{name=\"dns:short.test:{port}\",pool=\"default\"}}");
    assert!(wait_until(Duration::from_secs(20), || metric(&lb, &short) >= 3.0));
    let count = metric(&lb, &short);
    let bound = (started.elapsed().as_secs_f64() / 2.0).floor() + 1.0;
    assert!(count <= bound, "{count} lookups in {:?}", started.elapsed());
}

#[test]
fn a_name_that_does_not_resolve_stops_the_start_unless_allowed_empty() {
    let port = unique_port();
    let dns = Dns::start(json!({}));
    let conf = lb_conf(
        &dns,
        Upstream::dns(format!("missing.test:{port}")),
        "ipv6: false",
    );
    let dir = TempDir::new();
    let path = dir.0.join("lb.yaml");
    std::fs::write(&path, conf.to_yaml(&dir.0)).unwrap();
    let path = path.to_str().unwrap();
    let (ok, out) = lb_command(&["-t", "-c", path]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("lb.upstreams[0].dns") && out.contains("NXDOMAIN"),
        "{out}"
    );
    let (ok, out) = lb_command(&["-c", path]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("lb.upstreams[0].dns") && out.contains("NXDOMAIN"),
        "{out}"
    );

    // allow_empty: it starts with no upstream, answers 5xx, and serves once the name appears.
    let lb = Lb::start(lb_conf(
        &dns,
        Upstream::dns(format!("missing.test:{port}")),
        "allow_empty: true, min_refresh: 200ms, max_refresh: 500ms",
    ));
    let r = try_get(lb.addr, "/");
    assert!(
        r.as_ref().is_ok_and(|r| r.status == 503),
        "{r:?}: {}",
        lb.log()
    );
    let _b2 = Backend::start_on("b2", loopback(2, port));
    dns.set(a_records("missing.test.", &[2], 1));
    assert!(
        poll_until(Duration::from_secs(15), Duration::from_millis(100), || {
            try_get(lb.addr, "/").is_ok_and(|r| r.status == 200)
        }),
        "the name's address never served: {}",
        lb.log()
    );
}

#[test]
fn two_instances_following_one_name_hash_keys_alike() {
    let port = unique_port();
    let _b: Vec<Backend> = (2..=5)
        .map(|n| Backend::start_on(&format!("b{n}"), loopback(n, port)))
        .collect();
    let dns = Dns::start(a_records("api.test.", &[2, 3, 4, 5], 5));
    let conf = || {
        lb_conf(
            &dns,
            Upstream::dns(format!("api.test:{port}")),
            "ipv6: false",
        )
        .selection("consistent_hash")
        .hash_key("header:x-key")
    };
    let one = Lb::start(conf());
    let two = Lb::start(conf());
    let mut used = std::collections::BTreeSet::new();
    for key in 0..300 {
        let key = format!("user-{key}");
        let via = |lb: &Lb| {
            let r = request("GET", lb.addr, "/")
                .header("x-key", &key)
                .send()
                .unwrap();
            assert_eq!(r.status, 200);
            r.backend().unwrap()
        };
        let (a, b) = (via(&one), via(&two));
        assert_eq!(a, b, "key {key}");
        used.insert(a);
    }
    assert_eq!(
        used.len(),
        4,
        "300 keys should reach every backend: {used:?}"
    );
}

#[test]
fn a_reload_adds_names_and_refuses_one_that_does_not_resolve() {
    let port = unique_port();
    let static_backend = Backend::start("static");
    let _b2 = Backend::start_on("b2", loopback(2, port));
    let dns = Dns::start(a_records("api.test.", &[2], 1));
    // The listeners stay the same across reloads.
    let (listen, admin) = (unique_addr(), unique_addr());
    let conf = |upstreams: Vec<Upstream>| {
        LbConf::new()
            .listen(listen)
            .upstreams(upstreams)
            .key(
                "discovery",
                format!("{{ resolvers: [{}], ipv6: false }}", quoted(dns.addr)),
            )
            .admin(admin, None)
    };
    let mut lb = Lb::start(conf(vec![Upstream::from(&static_backend)]));
    assert_eq!(names(&spread(lb.addr, 4)), ["static"]);

    // A name added by a reload is looked up then and there.
    let out = lb.reload(conf(vec![
        Upstream::from(&static_backend),
        Upstream::dns(format!("api.test:{port}")),
    ]));
    assert!(out.contains("added"), "{out}");
    assert_eq!(names(&spread(lb.addr, 10)), ["b2", "static"]);

    // One that does not resolve is refused, naming its key, and changes nothing.
    lb.write_config(conf(vec![
        Upstream::from(&static_backend),
        Upstream::dns(format!("api.test:{port}")),
        Upstream::dns(format!("missing.test:{port}")),
    ]));
    let (ok, out) = lb.command("reload");
    assert!(!ok, "{out}");
    assert!(
        out.contains("lb.upstreams[2].dns") && out.contains("NXDOMAIN"),
        "{out}"
    );
    assert_eq!(names(&spread(lb.addr, 10)), ["b2", "static"]);
}

#[test]
fn the_deploy_examples_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    // Kubernetes: every document parses; the ConfigMap holds a valid lb configuration.
    let text = std::fs::read_to_string(format!("{root}/deploy/kubernetes/lb.yaml")).unwrap();
    let mut kinds = Vec::new();
    let mut config = None;
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = serde_yaml_ng::Value::deserialize(doc).unwrap();
        kinds.push(value["kind"].as_str().unwrap().to_string());
        if let Some(file) = value["data"]["lb.yaml"].as_str() {
            config = Some(file.to_string());
        }
    }
    assert_eq!(kinds, ["Service", "ConfigMap", "Deployment", "Service"]);
    let dir = TempDir::new();
    let token = dir.0.join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef").unwrap();
    let config = config
        .unwrap()
        .replace("/etc/lb-admin/token", token.to_str().unwrap());
    if let Err(e) = lb::config::Config::from_yaml(&config) {
        panic!("deploy/kubernetes/lb.yaml, lb-config: {e}");
    }
    // Consul.
    let text = std::fs::read_to_string(format!("{root}/deploy/consul/lb.yaml")).unwrap();
    if let Err(e) = lb::config::Config::from_yaml(&text) {
        panic!("deploy/consul/lb.yaml: {e}");
    }
}

#[test]
fn the_status_page_groups_discovered_upstreams_under_their_name() {
    let port = unique_port();
    let static_backend = Backend::start("static");
    let _b2 = Backend::start_on("b2", loopback(2, port));
    let _b3 = Backend::start_on("b3", loopback(3, port));
    let dns = Dns::start(a_records("api.test.", &[2, 3], 1));
    let lb = Lb::start(
        lb_conf(
            &dns,
            Upstream::dns(format!("api.test:{port}")),
            "ipv6: false",
        )
        .upstream(&static_backend),
    );
    let browser = Browser::start().unwrap_or_else(|e| panic!("{e}"));
    browser.goto(&format!("http://{}/", lb.admin())).unwrap();
    assert!(browser.wait_for(
        Duration::from_secs(10),
        "return document.querySelectorAll('#upstreams tr[data-addr]').length === 3;"
    ));
    // The static upstream first, then the name's heading, then its two addresses.
    let rows = browser
        .eval(
            "return [...document.querySelectorAll('#upstreams tbody tr')]
                .map(tr => tr.dataset.addr || ('name ' + tr.dataset.name + ' ' + tr.textContent));",
        )
        .unwrap();
    let rows: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(rows[0], static_backend.addr.to_string());
    assert!(
        rows[1].starts_with(&format!("name dns:api.test:{port} "))
            && rows[1].contains("2 addresses"),
        "{rows:?}"
    );
    assert_eq!(
        rows[2..],
        [loopback(2, port).to_string(), loopback(3, port).to_string()]
    );
}

#[test]
fn dns_names_give_ipv4_and_ipv6_addresses_unless_ipv6_is_off() {
    let port = unique_port();
    let _v4 = Backend::start_on("v4", loopback(2, port));
    let _v6 = Backend::start_on(
        "v6",
        SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), port),
    );
    let dns = Dns::start(json!({
        "both.test.": { "ttl": 1, "A": ["127.0.0.2"], "AAAA": ["::1"] },
    }));
    let lb = Lb::start(lb_conf(
        &dns,
        Upstream::dns(format!("both.test:{port}")),
        "ipv6: true",
    ));
    assert_eq!(names(&spread(lb.addr, 10)), ["v4", "v6"]);
    let lb = Lb::start(lb_conf(
        &dns,
        Upstream::dns(format!("both.test:{port}")),
        "ipv6: false",
    ));
    assert_eq!(names(&spread(lb.addr, 10)), ["v4"]);
}
