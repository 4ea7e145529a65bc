//! Traffic figures: Prometheus metrics (cumulative, scraped from `/metrics`) and a short recent
//! history per upstream (req/s, error rate, latency quantiles for the API and the status page).
//!
//! Per-upstream metric handles are resolved once, when the upstream's state is created, so the
//! request path only increments atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The process-wide metrics.
pub struct Metrics {
    pub registry: Registry,
    upstream_requests: IntCounterVec,
    upstream_responses: IntCounterVec,
    upstream_failures: IntCounterVec,
    upstream_retries: IntCounterVec,
    upstream_ejections: IntCounterVec,
    upstream_latency: HistogramVec,
    /// Filled at scrape time from the upstream states.
    pub upstream_in_flight: IntGaugeVec,
    pub upstream_state: IntGaugeVec,
    pub upstream_weight: IntGaugeVec,
    /// Whole requests as the client saw them, by status class (and "none" last), resolved
    /// once so that counting is one atomic add.
    requests: [IntCounter; 6],
    pub request_duration: Histogram,
    pub retries_denied_by_budget: IntCounter,
    pub queue_rejected: IntCounterVec,
    pub queued: IntGauge,
    pub in_flight: IntGauge,
    pub reloads: IntCounterVec,
    pub access_log_dropped: IntGauge,
    pub process_resident_memory: IntGauge,
    pub process_virtual_memory: IntGauge,
    pub process_cpu_seconds: prometheus::Counter,
    pub process_open_fds: IntGauge,
    pub process_max_fds: IntGauge,
    pub process_threads: IntGauge,
    pub process_start_time: prometheus::Gauge,
}

/// Latency buckets (seconds) shared by the histograms: 0.5 ms to 30 s.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

/// The kinds of failure counted per upstream.
pub const FAILURE_KINDS: [&str; 4] = ["connect", "timeout", "reset", "status_5xx"];

/// Status classes, indexed by `status / 100 - 1`.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn must<T>(result: prometheus::Result<T>) -> T {
    // The metric definitions are constants: an error here is a programming mistake caught by
    // the first test run, not something input can cause.
    match result {
        Ok(v) => v,
        Err(e) => panic!("metric definition: {e}"),
    }
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
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
            &["upstream"],
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
        let process_cpu_seconds = must(prometheus::Counter::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        ));
        must(registry.register(Box::new(process_cpu_seconds.clone())));
        let process_start_time = must(prometheus::Gauge::new(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        ));
        must(registry.register(Box::new(process_start_time.clone())));
        Metrics {
            process_resident_memory: single(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            process_virtual_memory: single(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
            process_cpu_seconds,
            process_open_fds: single("process_open_fds", "Number of open file descriptors."),
            process_max_fds: single(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            ),
            process_threads: single("process_threads", "Number of OS threads in the process."),
            process_start_time,
            upstream_requests: counter(
                "lb_upstream_requests_total",
                "Attempts sent to an upstream (a retried request counts once per upstream).",
                &["upstream"],
            ),
            upstream_responses: counter(
                "lb_upstream_responses_total",
                "Responses received from an upstream, by status class.",
                &["upstream", "class"],
            ),
            upstream_failures: counter(
                "lb_upstream_failures_total",
                "Failed attempts on an upstream, by kind: connect, timeout, reset, status_5xx.",
                &["upstream", "kind"],
            ),
            upstream_retries: counter(
                "lb_upstream_retries_total",
                "Attempts on an upstream that failed and were retried on another one.",
                &["upstream"],
            ),
            upstream_ejections: counter(
                "lb_upstream_ejections_total",
                "Times passive health ejected an upstream.",
                &["upstream"],
            ),
            upstream_latency,
            upstream_in_flight: gauge(
                "lb_upstream_in_flight",
                "Requests in flight to an upstream.",
                &["upstream"],
            ),
            upstream_state: gauge(
                "lb_upstream_state",
                "1 for the state an upstream is in (up, slow_start, ejected, down, draining, disabled).",
                &["upstream", "state"],
            ),
            upstream_weight: gauge(
                "lb_upstream_weight",
                "The weight in force for an upstream.",
                &["upstream"],
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
    pub fn count_request(&self, status: Option<u16>) {
        let index = match status {
            Some(s) => (s / 100).clamp(1, 5) as usize - 1,
            None => 5,
        };
        self.requests[index].inc();
    }

    /// Forgets the series of an upstream that left the configuration.
    pub fn forget_upstream(&self, addr: &str) {
        let _ = self.upstream_requests.remove_label_values(&[addr]);
        let _ = self.upstream_retries.remove_label_values(&[addr]);
        let _ = self.upstream_ejections.remove_label_values(&[addr]);
        let _ = self.upstream_latency.remove_label_values(&[addr]);
        let _ = self.upstream_in_flight.remove_label_values(&[addr]);
        let _ = self.upstream_weight.remove_label_values(&[addr]);
        for class in STATUS_CLASSES {
            let _ = self.upstream_responses.remove_label_values(&[addr, class]);
        }
        for kind in FAILURE_KINDS {
            let _ = self.upstream_failures.remove_label_values(&[addr, kind]);
        }
        for state in crate::upstream::ALL_STATES {
            let _ = self
                .upstream_state
                .remove_label_values(&[addr, state.as_str()]);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::warn!("encoding metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The metrics of this process.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Seconds kept in the recent history.
pub const HISTORY_SECONDS: usize = 60;
/// Recent figures (req/s, error rate, quantiles) are taken over this many seconds.
pub const RECENT_SECONDS: usize = 10;

/// Bounds (ms) of the buckets used for recent latency quantiles.
const RECENT_BOUNDS_MS: [f64; 20] = [
    0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 25.0, 40.0, 60.0, 100.0, 150.0, 250.0, 400.0,
    600.0, 1000.0, 2500.0, 5000.0,
];

#[derive(Clone, Copy, Default)]
struct Second {
    /// Which second (since process start) this slot holds.
    at: u64,
    requests: u32,
    errors: u32,
    latency: [u32; RECENT_BOUNDS_MS.len() + 1],
}

/// One upstream's figures.
pub struct UpstreamStats {
    requests: IntCounter,
    responses: [IntCounter; 5],
    failures: [IntCounter; 4],
    retries: IntCounter,
    ejections_counter: IntCounter,
    latency: Histogram,
    /// Ejections, also kept here for the API.
    pub ejections: AtomicU64,
    recent: Mutex<Vec<Second>>,
}

/// How an attempt on an upstream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Response(u16),
    Connect,
    Timeout,
    Reset,
}

impl UpstreamStats {
    pub fn new(addr: &str) -> Self {
        let m = metrics();
        UpstreamStats {
            requests: m.upstream_requests.with_label_values(&[addr]),
            responses: STATUS_CLASSES.map(|c| m.upstream_responses.with_label_values(&[addr, c])),
            failures: FAILURE_KINDS.map(|k| m.upstream_failures.with_label_values(&[addr, k])),
            retries: m.upstream_retries.with_label_values(&[addr]),
            ejections_counter: m.upstream_ejections.with_label_values(&[addr]),
            latency: m.upstream_latency.with_label_values(&[addr]),
            ejections: AtomicU64::new(0),
            recent: Mutex::new(vec![Second::default(); HISTORY_SECONDS]),
        }
    }

    /// Records one finished attempt. `latency` is the time to the response header, when one
    /// arrived.
    pub fn record(&self, outcome: Outcome, latency: Option<Duration>) {
        self.requests.inc();
        let error = match outcome {
            Outcome::Response(status) => {
                let class = (status / 100).clamp(1, 5) as usize - 1;
                self.responses[class].inc();
                if status >= 500 {
                    self.failures[3].inc();
                }
                status >= 500
            }
            Outcome::Connect => {
                self.failures[0].inc();
                true
            }
            Outcome::Timeout => {
                self.failures[1].inc();
                true
            }
            Outcome::Reset => {
                self.failures[2].inc();
                true
            }
        };
        if let Some(latency) = latency {
            self.latency.observe(latency.as_secs_f64());
        }
        let second = crate::upstream::now_ms() / 1000;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut recent[second as usize % HISTORY_SECONDS];
        if slot.at != second {
            *slot = Second {
                at: second,
                ..Second::default()
            };
        }
        slot.requests += 1;
        slot.errors += u32::from(error);
        if let Some(latency) = latency {
            let ms = latency.as_secs_f64() * 1000.0;
            let bucket = RECENT_BOUNDS_MS
                .iter()
                .position(|b| ms <= *b)
                .unwrap_or(RECENT_BOUNDS_MS.len());
            slot.latency[bucket] += 1;
        }
    }

    pub fn record_retry(&self) {
        self.retries.inc();
    }

    pub fn record_ejection(&self) {
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.ejections_counter.inc();
    }

    pub fn totals(&self) -> Totals {
        Totals {
            requests: self.requests.get(),
            responses: self.responses.each_ref().map(|c| c.get()),
            failures: self.failures.iter().map(|c| c.get()).sum(),
            retries: self.retries.get(),
            ejections: self.ejections.load(Ordering::Relaxed),
        }
    }

    /// Recent figures and the per-second history, oldest first.
    pub fn recent(&self) -> Recent {
        let now = crate::upstream::now_ms() / 1000;
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        // The current second is still filling: history and rates use complete seconds.
        let slot_for = |second: u64| -> Option<&Second> {
            let slot = &recent[second as usize % HISTORY_SECONDS];
            (slot.at == second).then_some(slot)
        };
        let mut rps_history = Vec::with_capacity(HISTORY_SECONDS);
        let mut p99_history = Vec::with_capacity(HISTORY_SECONDS);
        for back in (1..HISTORY_SECONDS as u64).rev() {
            let second = now.saturating_sub(back);
            match slot_for(second).filter(|_| now >= back) {
                Some(s) => {
                    rps_history.push(f64::from(s.requests));
                    p99_history.push(quantile(&s.latency, 0.99));
                }
                None => {
                    rps_history.push(0.0);
                    p99_history.push(None);
                }
            }
        }
        let mut requests = 0u64;
        let mut errors = 0u64;
        let mut latency = [0u32; RECENT_BOUNDS_MS.len() + 1];
        for back in 1..=RECENT_SECONDS as u64 {
            if let Some(s) = slot_for(now.saturating_sub(back)).filter(|_| now >= back) {
                requests += u64::from(s.requests);
                errors += u64::from(s.errors);
                for (sum, n) in latency.iter_mut().zip(s.latency) {
                    *sum += n;
                }
            }
        }
        Recent {
            rps: requests as f64 / RECENT_SECONDS as f64,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            p50_ms: quantile(&latency, 0.5),
            p99_ms: quantile(&latency, 0.99),
            rps_history,
            p99_history,
        }
    }
}

/// Cumulative counts for one upstream.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub requests: u64,
    pub responses: [u64; 5],
    pub failures: u64,
    pub retries: u64,
    pub ejections: u64,
}

/// The last seconds of one upstream.
#[derive(Debug, Clone, Default)]
pub struct Recent {
    pub rps: f64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub rps_history: Vec<f64>,
    pub p99_history: Vec<Option<f64>>,
}

/// The `q` quantile of a bucketed latency distribution, interpolated within its bucket.
fn quantile(buckets: &[u32], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().map(|&n| u64::from(n)).sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0);
    let mut seen = 0f64;
    for (i, &n) in buckets.iter().enumerate() {
        let before = seen;
        seen += f64::from(n);
        if seen >= rank {
            let low = if i == 0 { 0.0 } else { RECENT_BOUNDS_MS[i - 1] };
            let high = RECENT_BOUNDS_MS
                .get(i)
                .copied()
                .unwrap_or(RECENT_BOUNDS_MS[RECENT_BOUNDS_MS.len() - 1] * 2.0);
            let within = (rank - before) / f64::from(n.max(1));
            return Some(low + (high - low) * within);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_fall_in_the_right_bucket() {
        let mut b = [0u32; RECENT_BOUNDS_MS.len() + 1];
        b[2] = 99; // 0.5–1 ms
        b[10] = 1; // 25–40 ms
        let p50 = quantile(&b, 0.5).unwrap();
        assert!((0.5..=1.0).contains(&p50), "{p50}");
        let p99 = quantile(&b, 0.99).unwrap();
        assert!((0.5..=1.0).contains(&p99), "{p99}");
        let p100 = quantile(&b, 1.0).unwrap();
        assert!((25.0..=40.0).contains(&p100), "{p100}");
        assert_eq!(quantile(&[0; 3], 0.5), None);
    }

    #[test]
    fn counters_reach_the_exposition() {
        let stats = UpstreamStats::new("127.0.0.9:1");
        stats.record(Outcome::Response(200), Some(Duration::from_millis(2)));
        stats.record(Outcome::Response(503), Some(Duration::from_millis(2)));
        stats.record(Outcome::Connect, None);
        let t = stats.totals();
        assert_eq!((t.requests, t.responses[1], t.failures), (3, 1, 2));
        let text = metrics().render();
        assert!(text
            .contains("lb_upstream_failures_total{kind=\"connect\",upstream=\"127.0.0.9:1\"} 1"));
        metrics().forget_upstream("127.0.0.9:1");
        assert!(!metrics().render().contains("127.0.0.9:1"));
    }
}
