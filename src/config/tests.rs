use std::time::Duration;

use pingora::server::configuration::ServerConf;

use super::values::parse_duration;
use super::*;
use crate::outcome::Outcome;

const MINIMAL: &str = "lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [\"127.0.0.1:8081\"]\n";

fn err(text: &str) -> String {
    Config::from_yaml(text).unwrap_err().to_string()
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = Config::from_yaml(MINIMAL).unwrap();
    assert_eq!(c.lb.pools[0].selection, Selection::RoundRobin);
    assert_eq!(c.lb.pools[0].retries, RetryPolicy::default());
    assert_eq!(c.lb.pools[0].retries.attempts, 2);
    assert_eq!(c.lb.pools[0].passive_health, PassiveHealth::default());
    assert_eq!(c.lb.pools[0].slow_start, Duration::ZERO);
    assert_eq!(c.lb.pools[0].hash_key, HashKey::ClientIp);
    assert_eq!(c.lb.pools[0].queue, QueueConfig::default());
    assert_eq!(c.lb.pools[0].timeouts, Timeouts::default());
    assert_eq!(c.lb.pools[0].health_check, HealthCheckConfig::default());
    assert_eq!(c.lb.pools[0].upstreams[0].weight, 1);
    assert_eq!(c.server.threads, ServerConf::default().threads);
}

#[test]
fn full_config_parses() {
    let c = Config::from_yaml(
        r#"
version: 1
threads: 2
lb:
  listen: ["0.0.0.0:80", "[::1]:8080"]
  upstreams:
    - 127.0.0.1:8081
    - { addr: 127.0.0.1:8082, weight: 2 }
  selection: random
  retries: 1
  timeouts: { connect: 500ms, read: 2s, write: 1m, idle: 1h }
  health_check:
    type: http
    interval: 3s
    timeout: 250ms
    healthy_after: 1
    unhealthy_after: 5
    path: /healthz
    host: example.org
    expect_status: [200, "300-399"]
"#,
    )
    .unwrap();
    assert_eq!(c.server.threads, 2);
    assert_eq!(c.lb.listen.len(), 2);
    assert_eq!(c.lb.pools[0].upstreams[1].weight, 2);
    assert_eq!(c.lb.pools[0].selection, Selection::Random);
    assert_eq!(c.lb.pools[0].timeouts.connect, Duration::from_millis(500));
    assert_eq!(c.lb.pools[0].timeouts.idle, Duration::from_secs(3600));
    assert_eq!(c.lb.pools[0].health_check.kind, CheckType::Http);
    assert!(c.lb.pools[0].health_check.expect_status[1].contains(302));
    assert!(
        !c.lb.pools[0].health_check.expect_status[1].contains(200)
            || c.lb.pools[0].health_check.expect_status[0].contains(200)
    );
}

#[test]
fn balancing_keys_parse() {
    let c = Config::from_yaml(
        r#"
lb:
  listen: ["127.0.0.1:8080"]
  selection: consistent_hash
  hash_key: "cookie:session"
  upstreams:
    - { addr: 127.0.0.1:8081, weight: 3, max_conns: 100 }
    - { addr: 127.0.0.1:8083, backup: true }
  slow_start: 30s
  passive_health:
    consecutive_failures: 5
    eject_for: 30s
    max_ejected_percent: 50
    on: [connect_failure, status_5xx]
  retries:
    attempts: 2
    on: [connect_failure, timeout, status_502, status_503]
    budget_percent: 20
  queue: { size: 10, timeout: 500ms }
"#,
    )
    .unwrap();
    let lb = &c.lb.pools[0];
    assert_eq!(lb.selection, Selection::ConsistentHash);
    assert_eq!(lb.hash_key, HashKey::Cookie("session".into()));
    assert_eq!(lb.upstreams[0].max_conns, Some(100));
    assert!(lb.upstreams[1].backup);
    assert_eq!(lb.slow_start, Duration::from_secs(30));
    assert!(lb.passive_health.on.contains(Outcome::Status(503)));
    assert!(!lb.passive_health.on.contains(Outcome::Timeout));
    assert!(
        lb.retries.on.contains(Outcome::Status(502))
            && !lb.retries.on.contains(Outcome::Status(500))
    );
    assert_eq!(lb.queue.size, 10);
    let short = Config::from_yaml(&format!("{MINIMAL}  retries: 0\n")).unwrap();
    assert_eq!(short.lb.pools[0].retries.attempts, 0);
    assert_eq!(short.lb.pools[0].retries.on, RetryPolicy::default().on);
}

#[test]
fn balancing_errors_name_the_key() {
    let with = |extra: &str| err(&format!("{MINIMAL}{extra}"));
    let e = with("  retries: { attempts: 1, on: [status_999] }\n");
    assert!(e.contains("lb.retries.on[0]") && e.contains("999"), "{e}");
    let e = with("  retries: { attemps: 1 }\n");
    assert!(e.contains("attemps"), "{e}");
    let e = with("  hash_key: body\n");
    assert!(e.contains("lb.hash_key"), "{e}");
    let e = with("  passive_health: { max_ejected_percent: 150 }\n");
    assert!(e.contains("lb.passive_health.max_ejected_percent"), "{e}");
    let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [{ addr: \"127.0.0.1:1\", backup: true }]\n");
    assert!(e.contains("lb.upstreams") && e.contains("backup"), "{e}");
    let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [{ addr: \"127.0.0.1:1\", weight: 1000 }]\n");
    assert!(
        e.contains("lb.upstreams[0].weight") && e.contains("256"),
        "{e}"
    );
    let e = with("  slow_start: soon\n");
    assert!(e.contains("lb.slow_start"), "{e}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
    assert!(parse_duration("2").is_err());
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("1.5s").is_err());
    assert!(parse_duration("-1s").is_err());
}

#[test]
fn errors_name_the_key() {
    let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [\"127.0.0.1:8081\"]\n  health_check: { intervall: 2s }\n");
    assert!(
        e.contains("lb.health_check") && e.contains("intervall"),
        "{e}"
    );
    let e =
        err("treads: 2\nlb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [\"127.0.0.1:8081\"]\n");
    assert!(e.contains("treads"), "{e}");
    let e = err(
        "threads: many\nlb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [\"127.0.0.1:8081\"]\n",
    );
    assert!(e.starts_with("threads:"), "{e}");
    let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: []\n");
    assert!(e.contains("lb.upstreams") && e.contains("empty"), "{e}");
    let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [{ addr: \"127.0.0.1:1\", weight: 0 }]\n");
    assert!(e.contains("lb.upstreams[0].weight"), "{e}");
    let e = err("lb:\n  listen: [\"nonsense\"]\n  upstreams: [\"127.0.0.1:8081\"]\n");
    assert!(e.contains("lb.listen[0]"), "{e}");
    let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [\"127.0.0.1:8081\"]\n  timeouts: { read: 5 parsecs }\n");
    assert!(
        e.contains("lb.timeouts.read") && e.contains("invalid duration"),
        "{e}"
    );
    let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [\"127.0.0.1\"]\n");
    assert!(
        e.contains("lb.upstreams[0].addr") && e.contains("no port"),
        "{e}"
    );
    let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [\"127.0.0.1:1\"]\n  selection: fastest\n");
    assert!(e.contains("lb.selection"), "{e}");
    let e = err("lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams: [\"127.0.0.1:1\"]\n  health_check: { expect_status: [\"399-200\"] }\n");
    assert!(e.contains("lb.health_check.expect_status"), "{e}");
    let e = err("version: 1\n");
    assert!(e.starts_with("lb:"), "{e}");
}

#[test]
fn duplicated_keys_are_refused_at_every_level() {
    let top = format!("threads: 2\nthreads: 4\n{MINIMAL}");
    assert!(err(&top).contains("duplicate"), "{}", err(&top));
    let lb = "lb:\n  listen: [\"127.0.0.1:8080\"]\n  listen: [\"127.0.0.1:8081\"]\n  upstreams: [\"127.0.0.1:8081\"]\n";
    assert!(err(lb).contains("duplicate"), "{}", err(lb));
    let deep = format!("{MINIMAL}  health_check:\n    interval: 1s\n    interval: 2s\n");
    assert!(err(&deep).contains("duplicate"), "{}", err(&deep));
}

#[test]
fn values_that_would_panic_at_start_are_refused() {
    for (extra, key) in [
        ("threads: 0\n", "threads"),
        ("threads: 100000000\n", "threads"),
        ("listener_tasks_per_fd: 0\n", "listener_tasks_per_fd"),
        ("max_retries: 0\n", "max_retries"),
        (
            "upstream_connect_offload_threadpools: 0\n",
            "upstream_connect_offload_threadpools",
        ),
        (
            "grace_period_seconds: 18446744073709551615\n",
            "grace_period_seconds",
        ),
        ("ca_file: /nonexistent/ca.pem\n", "ca_file"),
    ] {
        let e = err(&format!("{extra}{MINIMAL}"));
        assert!(e.starts_with(key), "{extra}: {e}");
    }
    let long_sock = format!("upgrade_sock: /tmp/{}\n{MINIMAL}", "s".repeat(200));
    assert!(err(&long_sock).starts_with("upgrade_sock"));
    let forever = format!("{MINIMAL}  timeouts:\n    read: 9999999999h\n");
    assert!(err(&forever).contains("at most 24h"), "{}", err(&forever));
}

#[test]
fn huge_values_are_echoed_cut_on_one_line() {
    let huge = "9".repeat(1024 * 1024);
    for text in [
        format!("{MINIMAL}  timeouts:\n    read: {huge}x\n"),
        format!("lb:\n  listen: [\"{huge}\"]\n  upstreams: [\"127.0.0.1:8081\"]\n"),
        format!("{huge}: 1\n{MINIMAL}"),
        format!("{MINIMAL}  selection: {huge}\n"),
    ] {
        let e = err(&text);
        assert!(e.len() < 400, "{} bytes: {}", e.len(), &e[..400]);
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn limits_and_client_timeouts_are_read_and_checked() {
    let c = Config::from_yaml(&format!(
        "{MINIMAL}  timeouts: {{ client_header: 5s, client_body: 7s }}\n  limits: {{ max_header_bytes: 32KiB, max_headers: 50, max_body_bytes: 10m, max_client_connections: 1000 }}\n"
    ))
    .unwrap();
    let l = c.lb.client;
    assert_eq!(l.header_timeout, Duration::from_secs(5));
    assert_eq!(l.body_timeout, Duration::from_secs(7));
    assert_eq!(l.max_header_bytes, 32 * 1024);
    assert_eq!(l.max_headers, 50);
    assert_eq!(l.max_body_bytes, Some(10 << 20));
    assert_eq!(l.max_connections, Some(1000));
    assert_eq!(
        Config::from_yaml(MINIMAL).unwrap().lb.client,
        ClientLimits::default()
    );
    for (limits, key) in [
        ("max_header_bytes: 10", "lb.limits.max_header_bytes"),
        ("max_header_bytes: 2MiB", "lb.limits.max_header_bytes"),
        ("max_headers: 0", "lb.limits.max_headers"),
        ("max_headers: 300", "lb.limits.max_headers"),
        ("max_body_bytes: 0", "lb.limits.max_body_bytes"),
        (
            "max_client_connections: 0",
            "lb.limits.max_client_connections",
        ),
    ] {
        let e = err(&format!("{MINIMAL}  limits: {{ {limits} }}\n"));
        assert!(e.starts_with(key), "{limits}: {e}");
    }
    let e = err(&format!(
        "{MINIMAL}  limits: {{ max_body_bytes: 10 apples }}\n"
    ));
    assert!(e.contains("invalid size"), "{e}");
    let e = err(&format!("{MINIMAL}  timeouts: {{ client_header: 0s }}\n"));
    assert!(e.starts_with("lb.timeouts.client_header"), "{e}");
}

#[test]
fn only_bounded_regular_files_are_read() {
    let dir = std::env::temp_dir().join(format!("lb-config-read-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = Config::load(&dir).unwrap_err().to_string();
    assert!(e.contains("a directory"), "{e}");
    let e = Config::load(std::path::Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a regular file"), "{e}");
    let fifo = dir.join("fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let e = Config::load(&fifo).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    let big = dir.join("big.yaml");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(MAX_FILE_BYTES + 1).unwrap();
    let e = Config::load(&big).unwrap_err().to_string();
    assert!(e.contains("16 MiB"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rate_limit_is_read_and_checked() {
    let c = Config::from_yaml(&format!(
        "{MINIMAL}  limits:\n    rate: {{ per_client_ip: 600/m, burst: 20 }}\n"
    ))
    .unwrap();
    assert_eq!(
        c.lb.client.rate,
        Some(RateLimit {
            per_second: 10.0,
            burst: 20
        })
    );
    let c = Config::from_yaml(&format!(
        "{MINIMAL}  limits:\n    rate: {{ per_client_ip: 50 }}\n"
    ))
    .unwrap();
    assert_eq!(c.lb.client.rate.map(|r| r.burst), Some(50));
    let e = err(&format!(
        "{MINIMAL}  limits:\n    rate: {{ per_client_ip: 0/s }}\n"
    ));
    assert!(e.starts_with("lb.limits.rate.per_client_ip"), "{e}");
    let e = err(&format!(
        "{MINIMAL}  limits:\n    rate: {{ per_client_ip: fast }}\n"
    ));
    assert!(e.contains("invalid rate"), "{e}");
    let e = err(&format!(
        "{MINIMAL}  limits:\n    rate: {{ per_client_ip: 5/s, burst: 0 }}\n"
    ));
    assert!(e.starts_with("lb.limits.rate.burst"), "{e}");
}

#[test]
fn dns_and_srv_upstreams_are_checked_and_kept_apart_from_static_ones() {
    let c = Config::from_yaml(
        "lb:\n  listen: [\"127.0.0.1:8080\"]\n  upstreams:\n    - 127.0.0.1:9000\n    - { dns: Api.Example.internal:8080, weight: 2, max_conns: 10 }\n    - { srv: _http._tcp.api.service.consul, backup: true }\n  discovery: { resolvers: [127.0.0.1, \"127.0.0.1:8600\"], refresh: 5s, min_refresh: 2s, ipv6: false }\n",
    )
    .unwrap();
    let pool = &c.lb.pools[0];
    assert_eq!(pool.upstreams.len(), 1);
    assert_eq!(pool.discovered.len(), 2);
    assert_eq!(
        pool.discovered[0].target,
        DiscoveryTarget::Dns {
            host: "api.example.internal".into(),
            port: 8080
        }
    );
    assert_eq!(pool.discovered[0].weight, 2);
    assert_eq!(pool.discovered[0].max_conns, Some(10));
    assert!(pool.discovered[1].backup);
    assert_eq!(pool.discovered[1].key, "lb.upstreams[2]");
    let d = &pool.discovery;
    assert_eq!(d.resolvers.len(), 2);
    assert_eq!(d.resolvers[0].port(), 53);
    assert_eq!(d.refresh, Refresh::Every(Duration::from_secs(5)));
    assert_eq!(d.max_refresh, Duration::from_secs(300));
    assert!(!d.ipv6 && !d.allow_empty);
}

#[test]
fn discovery_keys_merge_from_lb_level_into_pools() {
    let c = Config::from_yaml(
        "lb:\n  listen: [\"127.0.0.1:8080\"]\n  discovery: { min_refresh: 3s, allow_empty: true }\n  pools:\n    api:\n      upstreams: [{ dns: \"api.test:80\" }]\n      discovery: { max_refresh: 10s }\n",
    )
    .unwrap();
    let d = &c.lb.pools[0].discovery;
    assert_eq!(d.min_refresh, Duration::from_secs(3));
    assert_eq!(d.max_refresh, Duration::from_secs(10));
    assert!(d.allow_empty);
}

#[test]
fn bad_discovery_entries_name_their_key() {
    let cases = [
        ("upstreams: [{ dns: api.test }]", "lb.upstreams[0].dns", "needs a port"),
        ("upstreams: [{ dns: \"10.0.0.1:80\" }]", "lb.upstreams[0].dns", "not a name"),
        ("upstreams: [{ dns: \"bad name:80\" }]", "lb.upstreams[0].dns", "not a valid DNS name"),
        ("upstreams: [{ srv: api.service.consul }]", "lb.upstreams[0].srv", "_service._proto.name"),
        ("upstreams: [{ srv: \"_http._tcp\" }]", "lb.upstreams[0].srv", "_service._proto.name"),
        ("upstreams: [{ srv: _http._tcp.api, weight: 2 }]", "lb.upstreams[0].weight", "SRV records"),
        ("upstreams: [{ dns: \"a.test:80\", addr: \"127.0.0.1:80\" }]", "lb.upstreams[0]", "only one"),
        ("upstreams: [{ weight: 2 }]", "lb.upstreams[0]", "one of addr, dns or srv"),
        ("upstreams: [{ dns: \"a.test:80\" }, { dns: \"A.test:80\" }]", "lb.upstreams[1]", "already followed"),
        ("upstreams: [{ dns: \"a.test:80\", backup: true }]", "lb.upstreams", "backup"),
        ("upstreams: [{ dns: \"a.test:80\" }]\n  discovery: { refresh: 500ms }", "lb.discovery.refresh", "below min_refresh"),
        ("upstreams: [{ dns: \"a.test:80\" }]\n  discovery: { refresh: often }", "lb.discovery.refresh", "ttl"),
        ("upstreams: [{ dns: \"a.test:80\" }]\n  discovery: { min_refresh: 10s, max_refresh: 5s }", "lb.discovery.max_refresh", "below min_refresh"),
        ("upstreams: [{ dns: \"a.test:80\" }]\n  discovery: { resolvers: [dns.google] }", "lb.discovery.resolvers[0]", "not an address"),
        ("upstreams: [{ dns: \"a.test:80\" }]\n  discovery: { refersh: 5s }", "refersh", "refresh"),
        ("upstreams: [{ dnss: \"a.test:80\" }]", "dnss", "dns"),
    ];
    for (yaml, key, reason) in cases {
        let text = format!("lb:\n  listen: [\"127.0.0.1:8080\"]\n  {yaml}\n");
        let e = Config::from_yaml(&text).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains(reason), "{yaml}: {e}");
    }
}

#[test]
fn protocol_and_upstream_tls_defaults_and_inheritance() {
    let c = Config::from_yaml(MINIMAL).unwrap();
    assert!(c.lb.h2c);
    assert_eq!(c.lb.pools[0].protocol, UpstreamProtocol::Http1);
    assert_eq!(c.lb.pools[0].upstream_tls, UpstreamTls::default());
    assert!(c.lb.pools[0].upstream_tls.verify);

    // lb-level keys are every pool's defaults; upstream_tls written at lb level is no error
    // for a pool without TLS in the pools form.
    let c = Config::from_yaml(
        r#"
lb:
  listen: ["127.0.0.1:8080"]
  h2c: false
  protocol: https_h2
  upstream_tls: { sni: backend.internal, verify: false }
  pools:
    secure: { upstreams: ["127.0.0.1:8081"] }
    grpc: { upstreams: ["127.0.0.1:8082"], protocol: h2c }
    other: { upstreams: ["127.0.0.1:8083"], upstream_tls: { verify: true } }
  routes:
    - { path: /grpc, pool: grpc }
    - { path: /other, pool: other }
    - { pool: secure }
"#,
    )
    .unwrap();
    assert!(!c.lb.h2c);
    let secure = c.lb.pool("secure").unwrap();
    assert_eq!(secure.protocol, UpstreamProtocol::HttpsH2);
    assert_eq!(secure.upstream_tls.sni.as_deref(), Some("backend.internal"));
    assert!(!secure.upstream_tls.verify);
    assert_eq!(c.lb.pool("grpc").unwrap().protocol, UpstreamProtocol::H2c);
    let other = c.lb.pool("other").unwrap();
    assert!(
        other.upstream_tls.verify,
        "key by key over the lb-level block"
    );
    assert_eq!(other.upstream_tls.sni.as_deref(), Some("backend.internal"));

    // Written on a pool without TLS: an error naming the pool's key.
    let e = err(r#"
lb:
  listen: ["127.0.0.1:8080"]
  pools:
    api: { upstreams: ["127.0.0.1:8081"], protocol: h2c, upstream_tls: { verify: false } }
"#);
    assert!(
        e.starts_with("lb.pools.api.upstream_tls: only for protocol https or https_h2"),
        "{e}"
    );
}

#[test]
fn the_tls_server_name_defaults_to_the_upstream_host_name() {
    let upstream = |name: &str| Upstream {
        name: name.to_string(),
        addr: "127.0.0.1:443".parse().unwrap(),
        weight: 1,
        max_conns: None,
        backup: false,
        origin: None,
    };
    let tls = UpstreamTls::default();
    assert_eq!(
        tls.server_name(&upstream("backend-1.internal:8443")),
        "backend-1.internal"
    );
    assert_eq!(tls.server_name(&upstream("127.0.0.1:8443")), "");
    assert_eq!(tls.server_name(&upstream("[::1]:8443")), "");
    let named = UpstreamTls {
        sni: Some("api.internal".to_string()),
        ..UpstreamTls::default()
    };
    assert_eq!(
        named.server_name(&upstream("127.0.0.1:8443")),
        "api.internal"
    );
    assert_eq!(
        named.server_name(&upstream("backend-1.internal:8443")),
        "api.internal"
    );
}

#[test]
fn discovered_upstreams_get_their_dns_name_as_tls_server_name() {
    let discovered = Upstream {
        name: "127.0.0.3:8443".to_string(),
        addr: "127.0.0.3:8443".parse().unwrap(),
        weight: 1,
        max_conns: None,
        backup: false,
        origin: Some("dns:api.internal:8443".to_string()),
    };
    assert_eq!(
        UpstreamTls::default().server_name(&discovered),
        "api.internal"
    );
    let e = err(r#"
lb:
  listen: ["127.0.0.1:8080"]
  protocol: https
  upstreams: [{ srv: _https._tcp.api.service.consul }]
"#);
    assert!(
        e.starts_with("lb.upstream_tls.sni: required with verify: true"),
        "{e}"
    );
}
