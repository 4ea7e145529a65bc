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
