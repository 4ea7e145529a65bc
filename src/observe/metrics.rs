//! Prometheus metrics, cumulative, scraped from `/metrics`.
//!
//! One [`Metrics`] per process, owned by the balancer's registry and handed to whoever counts
//! (no global). Per-upstream metric handles are resolved once, when the upstream's state is
//! created ([`UpstreamStats`]), so the request path only increments atomics. The standard
//! `process_*` series come from the prometheus crate's process collector.

use std::sync::atomic::{AtomicU64, Ordering};

use super::history::{History, Recent};
use crate::outcome::{FailureKind, Outcome};
use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The metrics of one process.
pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    upstream_requests: IntCounterVec,
    upstream_responses: IntCounterVec,
    upstream_failures: IntCounterVec,
    upstream_retries: IntCounterVec,
    upstream_ejections: IntCounterVec,
    upstream_latency: HistogramVec,
    /// Filled at scrape time from the upstream states.
    pub(crate) upstream_in_flight: IntGaugeVec,
    pub(crate) upstream_state: IntGaugeVec,
    pub(crate) upstream_weight: IntGaugeVec,
    /// Whole requests as the client saw them, by status class (and "none" last), resolved
    /// once so that counting is one atomic add.
    requests: [IntCounter; 6],
    pub(crate) request_duration: Histogram,
    pub(crate) retries_denied_by_budget: IntCounter,
    pub(crate) queue_rejected: IntCounterVec,
    pub(crate) queued: IntGauge,
    pub(crate) in_flight: IntGauge,
    pub(crate) reloads: IntCounterVec,
    pub(crate) access_log_dropped: IntGauge,
    /// Client connections open now.
    pub(crate) client_connections: IntGauge,
    /// Client connections closed at once because `lb.limits.max_client_connections` was reached.
    pub(crate) client_connections_rejected: IntCounter,
    /// Client requests refused before forwarding, by reason (`header_timeout`, `body_timeout`,
    /// `header_too_large`, `body_too_large`, `malformed`).
    pub(crate) client_rejected: IntCounterVec,
    /// Lookups of `dns:`/`srv:` names, and those that failed, by pool and name.
    pub(crate) discovery_refreshes: IntCounterVec,
    pub(crate) discovery_errors: IntCounterVec,
    /// When a name last resolved (Unix seconds), and to how many addresses.
    pub(crate) discovery_last_success: IntGaugeVec,
    pub(crate) discovery_addresses: IntGaugeVec,
    /// When each TLS certificate expires (seconds since the epoch), by its names.
    tls_certificate_expiry: IntGaugeVec,
}

/// Latency buckets (seconds) shared by the histograms: 0.5 ms to 30 s.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

/// Status classes, indexed by `status / 100 - 1`.
pub(crate) const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn must<T>(result: prometheus::Result<T>) -> T {
    // The metric definitions are constants: an error here is a programming mistake caught by
    // the first test run, not something input can cause.
    match result {
        Ok(v) => v,
        Err(e) => panic!("metric definition: {e}"),
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let registry = Registry::new();
        register_process_collector(&registry);
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = must(IntGaugeVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let upstream_latency = must(HistogramVec::new(
            HistogramOpts::new(
                "lb_upstream_response_seconds",
                "Time from sending a request to an upstream until its response header arrived.",
            )
            .buckets(BUCKETS.to_vec()),
            &["pool", "upstream"],
        ));
        must(registry.register(Box::new(upstream_latency.clone())));
        let request_duration = must(Histogram::with_opts(
            HistogramOpts::new(
                "lb_request_duration_seconds",
                "Time from receiving a request until its response was sent, retries included.",
            )
            .buckets(BUCKETS.to_vec()),
        ));
        must(registry.register(Box::new(request_duration.clone())));
        let single = |name: &str, help: &str| {
            let g = must(IntGauge::new(name, help));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let retries_denied_by_budget = must(IntCounter::new(
            "lb_retries_denied_by_budget_total",
            "Retries not made because the retry budget was spent.",
        ));
        must(registry.register(Box::new(retries_denied_by_budget.clone())));
        let client_connections_rejected = must(IntCounter::new(
            "lb_client_connections_rejected_total",
            "Client connections closed at once because lb.limits.max_client_connections were open.",
        ));
        must(registry.register(Box::new(client_connections_rejected.clone())));
        Metrics {
            discovery_refreshes: counter(
                "lb_discovery_refreshes_total",
                "Lookups of a dns: or srv: upstream name, failed ones included.",
                &["pool", "name"],
            ),
            discovery_errors: counter(
                "lb_discovery_errors_total",
                "Failed lookups of a dns: or srv: upstream name (the last good set is kept).",
                &["pool", "name"],
            ),
            discovery_last_success: gauge(
                "lb_discovery_last_success_timestamp_seconds",
                "When a dns: or srv: upstream name last resolved, in Unix seconds.",
                &["pool", "name"],
            ),
            discovery_addresses: gauge(
                "lb_discovery_addresses",
                "Addresses a dns: or srv: upstream name resolved to at its last successful lookup.",
                &["pool", "name"],
            ),
            client_connections: single(
                "lb_client_connections",
                "Client connections open now.",
            ),
            client_connections_rejected,
            tls_certificate_expiry: gauge(
                "lb_tls_certificate_expiry_timestamp_seconds",
                "When each TLS certificate of lb.tls expires, in seconds since the Unix epoch.",
                &["names"],
            ),
            client_rejected: counter(
                "lb_client_rejected_total",
                "Client requests or connections refused by lb's client limits, by reason.",
                &["reason"],
            ),
            upstream_requests: counter(
                "lb_upstream_requests_total",
                "Attempts sent to an upstream (a retried request counts once per upstream).",
                &["pool", "upstream"],
            ),
            upstream_responses: counter(
                "lb_upstream_responses_total",
                "Responses received from an upstream, by status class.",
                &["pool", "upstream", "class"],
            ),
            upstream_failures: counter(
                "lb_upstream_failures_total",
                "Failed attempts on an upstream, by kind: connect, timeout, reset, status_5xx.",
                &["pool", "upstream", "kind"],
            ),
            upstream_retries: counter(
                "lb_upstream_retries_total",
                "Attempts on an upstream that failed and were retried on another one.",
                &["pool", "upstream"],
            ),
            upstream_ejections: counter(
                "lb_upstream_ejections_total",
                "Times passive health ejected an upstream.",
                &["pool", "upstream"],
            ),
            upstream_latency,
            upstream_in_flight: gauge(
                "lb_upstream_in_flight",
                "Requests in flight to an upstream.",
                &["pool", "upstream"],
            ),
            upstream_state: gauge(
                "lb_upstream_state",
                "1 for the state an upstream is in (up, slow_start, ejected, down, draining, disabled).",
                &["pool", "upstream", "state"],
            ),
            upstream_weight: gauge(
                "lb_upstream_weight",
                "The weight in force for an upstream.",
                &["pool", "upstream"],
            ),
            requests: {
                let vec = counter(
                    "lb_requests_total",
                    "Client requests answered, by status class (\"none\" when no response was sent).",
                    &["class"],
                );
                ["1xx", "2xx", "3xx", "4xx", "5xx", "none"].map(|c| vec.with_label_values(&[c]))
            },
            request_duration,
            retries_denied_by_budget,
            queue_rejected: counter(
                "lb_queue_rejected_total",
                "Requests answered 503 because every upstream was at max_conns, by reason.",
                &["reason"],
            ),
            queued: single(
                "lb_queue_waiting",
                "Requests waiting for an upstream below max_conns.",
            ),
            in_flight: single("lb_in_flight", "Client requests in flight."),
            reloads: counter(
                "lb_reloads_total",
                "Configuration reloads, by outcome.",
                &["outcome"],
            ),
            access_log_dropped: single(
                "lb_access_log_dropped",
                "Access log lines dropped because the writer fell behind.",
            ),
            registry,
        }
    }

    /// Counts one client request by the status it was answered with.
    pub(crate) fn count_request(&self, status: Option<u16>) {
        let index = match status {
            Some(s) => (s / 100).clamp(1, 5) as usize - 1,
            None => 5,
        };
        self.requests[index].inc();
    }

    /// Forgets the series of an upstream that left the configuration; `states` are the labels
    /// its `lb_upstream_state` series may carry.
    /// Removes the series of a name no longer followed.
    pub(crate) fn forget_discovered(&self, pool: &str, name: &str) {
        let _ = self.discovery_refreshes.remove_label_values(&[pool, name]);
        let _ = self.discovery_errors.remove_label_values(&[pool, name]);
        let _ = self
            .discovery_last_success
            .remove_label_values(&[pool, name]);
        let _ = self.discovery_addresses.remove_label_values(&[pool, name]);
    }

    pub(crate) fn forget_upstream(&self, pool: &str, addr: &str, states: &[&str]) {
        let _ = self.upstream_requests.remove_label_values(&[pool, addr]);
        let _ = self.upstream_retries.remove_label_values(&[pool, addr]);
        let _ = self.upstream_ejections.remove_label_values(&[pool, addr]);
        let _ = self.upstream_latency.remove_label_values(&[pool, addr]);
        let _ = self.upstream_in_flight.remove_label_values(&[pool, addr]);
        let _ = self.upstream_weight.remove_label_values(&[pool, addr]);
        for class in STATUS_CLASSES {
            let _ = self
                .upstream_responses
                .remove_label_values(&[pool, addr, class]);
        }
        for kind in FailureKind::ALL {
            let _ = self
                .upstream_failures
                .remove_label_values(&[pool, addr, kind.label()]);
        }
        for state in states {
            let _ = self
                .upstream_state
                .remove_label_values(&[pool, addr, state]);
        }
    }

    /// Sets the certificate expiry series to the certificates of `tls` (and only those, so
    /// that a certificate replaced by a reload leaves no series behind).
    pub(crate) fn set_certificates(&self, tls: Option<&crate::config::TlsConfig>) {
        self.tls_certificate_expiry.reset();
        for cert in tls.iter().flat_map(|t| t.certificates.list.iter()) {
            self.tls_certificate_expiry
                .with_label_values(&[&cert.names_label()])
                .set(cert.not_after);
        }
    }

    /// The text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::warn!("encoding metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The standard `process_*` series (memory, CPU, open and max fds, threads, start time), read
/// from /proc at scrape time.
fn register_process_collector(registry: &Registry) {
    let collector = prometheus::process_collector::ProcessCollector::for_self();
    if let Err(e) = registry.register(Box::new(collector)) {
        log::warn!("process metrics unavailable: {e}");
    }
}

/// One upstream's figures: its metric handles and its recent history.
pub(crate) struct UpstreamStats {
    requests: IntCounter,
    responses: [IntCounter; 5],
    failures: [IntCounter; 4],
    retries: IntCounter,
    ejections_counter: IntCounter,
    latency: Histogram,
    /// Ejections, also kept here for the API.
    pub(crate) ejections: AtomicU64,
    history: Mutex<History>,
}

impl UpstreamStats {
    pub(crate) fn new(m: &Metrics, pool: &str, addr: &str) -> Self {
        UpstreamStats {
            requests: m.upstream_requests.with_label_values(&[pool, addr]),
            responses: STATUS_CLASSES
                .map(|c| m.upstream_responses.with_label_values(&[pool, addr, c])),
            failures: FailureKind::ALL.map(|k| {
                m.upstream_failures
                    .with_label_values(&[pool, addr, k.label()])
            }),
            retries: m.upstream_retries.with_label_values(&[pool, addr]),
            ejections_counter: m.upstream_ejections.with_label_values(&[pool, addr]),
            latency: m.upstream_latency.with_label_values(&[pool, addr]),
            ejections: AtomicU64::new(0),
            history: Mutex::new(History::default()),
        }
    }

    /// Records one finished attempt. `latency` is the time to the response header, when one
    /// arrived.
    pub(crate) fn record(&self, outcome: Outcome, latency: Option<Duration>) {
        self.requests.inc();
        if let Some(status) = outcome.status() {
            self.responses[(status / 100).clamp(1, 5) as usize - 1].inc();
        }
        let failure = outcome.failure_kind();
        if let Some(kind) = failure {
            self.failures[kind as usize].inc();
        }
        if let Some(latency) = latency {
            self.latency.observe(latency.as_secs_f64());
        }
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(failure.is_some(), latency);
    }

    pub(crate) fn record_retry(&self) {
        self.retries.inc();
    }

    pub(crate) fn record_ejection(&self) {
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.ejections_counter.inc();
    }

    pub(crate) fn totals(&self) -> Totals {
        Totals {
            requests: self.requests.get(),
            responses: self.responses.each_ref().map(|c| c.get()),
            failures: self.failures.iter().map(|c| c.get()).sum(),
            retries: self.retries.get(),
            ejections: self.ejections.load(Ordering::Relaxed),
        }
    }

    /// Recent figures and the per-second history, oldest first.
    pub(crate) fn recent(&self) -> Recent {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recent()
    }
}

/// Cumulative counts for one upstream.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Totals {
    pub(crate) requests: u64,
    pub(crate) responses: [u64; 5],
    pub(crate) failures: u64,
    pub(crate) retries: u64,
    pub(crate) ejections: u64,
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_reach_the_exposition() {
        let metrics = Metrics::new();
        let stats = UpstreamStats::new(&metrics, "p", "127.0.0.9:1");
        stats.record(Outcome::Status(200), Some(Duration::from_millis(2)));
        stats.record(Outcome::Status(503), Some(Duration::from_millis(2)));
        stats.record(Outcome::ConnectFailure, None);
        let t = stats.totals();
        assert_eq!((t.requests, t.responses[1], t.failures), (3, 1, 2));
        let text = metrics.render();
        assert!(text.contains(
            "lb_upstream_failures_total{kind=\"connect\",pool=\"p\",upstream=\"127.0.0.9:1\"} 1"
        ));
        metrics.forget_upstream("p", "127.0.0.9:1", &[]);
        assert!(!metrics.render().contains("127.0.0.9:1"));
    }
}
