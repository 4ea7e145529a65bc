//! lb's own log (stderr, or `error_log` for a daemon): one line per event, as text or as JSON
//! objects (`lb.log_format`).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::LogFormat;

/// pingora's modules whose lines repeat lb's own (see [`init`]).
const PINGORA_QUIET: &str =
    ",pingora_load_balancing=error,pingora_core::server=warn,pingora_core::services=warn";

/// Whether log lines are JSON objects (`lb.log_format: json`) rather than text.
static JSON_LOG: AtomicBool = AtomicBool::new(false);

/// Sets the format of lb's log lines (read on every line, so a reload applies it at once).
pub(crate) fn set_format(format: LogFormat) {
    JSON_LOG.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// Sets up logging to stderr: level from `RUST_LOG`, `info` by default; text until
/// [`set_format`] says otherwise.
///
/// One line per event: pingora's own lines that repeat what lb logs are kept to warnings and
/// errors, whatever the level: its health-check verdicts (`pingora_load_balancing`:
/// `lb::health` logs every state change itself, with the reason), and its per-service start-up
/// and shutdown chatter (`pingora_core::server`, `pingora_core::services`: lb logs one line
/// naming every listener, and one per signal). A `RUST_LOG` that names a pingora module
/// decides for itself.
pub(crate) fn init() {
    use std::io::Write;
    let mut filters = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "info".to_string());
    if !filters.contains("pingora") {
        filters.push_str(PINGORA_QUIET);
    }
    let logger = env_logger::Builder::new()
        .parse_filters(&filters)
        .format(|buf, record| {
            let time = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
            if JSON_LOG.load(Ordering::Relaxed) {
                let line = serde_json::json!({
                    "time": time.to_string(),
                    "level": record.level().as_str(),
                    "target": record.target(),
                    "message": record.args().to_string(),
                });
                writeln!(buf, "{line}")
            } else {
                writeln!(
                    buf,
                    "[{time} {:<5} {}] {}",
                    record.level(),
                    record.target(),
                    record.args()
                )
            }
        })
        .build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(QuietHandshakes(logger))).is_ok() {
        log::set_max_level(max);
    }
}

/// pingora's accept loop logs every failed TLS handshake as an error: a port scanner, a TCP
/// health probe of an HTTPS port, a client offering only TLS 1.0. Those are the client's
/// business, not lb's (nginx logs them at `info`): they become `debug` lines.
struct QuietHandshakes(env_logger::Logger);

impl QuietHandshakes {
    fn is_handshake_failure(record: &log::Record<'_>) -> bool {
        record.target() == "pingora_core::services::listening"
            && record.level() == log::Level::Error
            && record.args().as_str().map_or_else(
                || {
                    record
                        .args()
                        .to_string()
                        .starts_with("Downstream handshake")
                },
                |s| s.starts_with("Downstream handshake"),
            )
    }
}

impl log::Log for QuietHandshakes {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !Self::is_handshake_failure(record) {
            self.0.log(record);
            return;
        }
        let demoted = log::Record::builder()
            .args(*record.args())
            .level(log::Level::Debug)
            .target(record.target())
            .module_path(record.module_path())
            .file(record.file())
            .line(record.line())
            .build();
        if self.0.enabled(demoted.metadata()) {
            self.0.log(&demoted);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}
