//! The access log: one line per request, in the combined format or as JSON.
//!
//! The request path never waits on the disk: each line is formatted on the caller's thread and
//! handed to a dedicated writer thread through a bounded queue. When the queue is full (the
//! disk cannot keep up) the line is dropped and counted (`lb_access_log_dropped`), which is
//! better than slowing every request down.
//!
//! Rotation works both ways operators expect: `SIGUSR1` (as with nginx) makes the writer reopen
//! the path, and the writer also notices by itself, about once a second, that the file at the
//! path is no longer the one it has open (moved or removed by logrotate) and reopens it.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{AccessLogFormat, AccessLogSettings};
use crate::outcome::Outcome;

/// Lines that may wait for the writer.
const QUEUE_LINES: usize = 65_536;
/// How often the writer flushes and checks whether the file was rotated away.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// One finished request.
pub(crate) struct AccessEntry<'a> {
    /// When the request started.
    pub(crate) time: SystemTime,
    pub(crate) client: Option<IpAddr>,
    pub(crate) method: &'a str,
    /// Path and query as received.
    pub(crate) target: &'a str,
    pub(crate) version: &'a str,
    /// 0 when no response was sent.
    pub(crate) status: u16,
    /// Response body bytes sent to the client.
    pub(crate) bytes: u64,
    pub(crate) referer: Option<&'a str>,
    pub(crate) user_agent: Option<&'a str>,
    /// The last upstream tried.
    pub(crate) upstream: Option<SocketAddr>,
    /// From sending to the upstream until its response header.
    pub(crate) upstream_time: Option<Duration>,
    pub(crate) total_time: Duration,
    pub(crate) retries: u32,
    /// The pool and route that took the request.
    pub(crate) pool: Option<&'a str>,
    pub(crate) route: Option<&'a str>,
    /// How the last attempt on an upstream ended.
    pub(crate) outcome: Option<Outcome>,
}

/// The receiving end and the file, held until the writer thread takes them.
type PendingWriter = Arc<Mutex<Option<(Receiver<Message>, Sink)>>>;

/// What the writer is asked to do.
enum Message {
    Line(Vec<u8>),
    /// Write everything before this, then tell the waiter.
    Flush(Arc<(Mutex<bool>, Condvar)>),
}

struct Shared {
    dropped: AtomicU64,
    reopen: AtomicBool,
}

/// A handle on the access log; cheap to clone. The writer thread ends, after writing what is
/// queued, when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct AccessLog {
    sender: SyncSender<Message>,
    shared: Arc<Shared>,
    format: AccessLogFormat,
    settings: AccessLogSettings,
    /// The writer's half, until the writer starts. It starts on first use rather than at open,
    /// because `lb -d` forks after the config is loaded and a thread does not survive a fork.
    writer: PendingWriter,
    started: Arc<OnceLock<()>>,
}

impl AccessLog {
    /// Opens the log now, so that a bad path is an error at start, and starts its writer.
    pub(crate) fn open(settings: &AccessLogSettings) -> std::io::Result<AccessLog> {
        Self::with_capacity(settings, QUEUE_LINES)
    }

    pub(crate) fn with_capacity(
        settings: &AccessLogSettings,
        capacity: usize,
    ) -> std::io::Result<AccessLog> {
        let sink = match &settings.path {
            None => Sink::Stdout,
            Some(path) => Sink::File {
                file: BufWriter::new(open_append(path)?),
                path: path.clone(),
            },
        };
        let (sender, receiver) = sync_channel(capacity);
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
        });
        Ok(AccessLog {
            sender,
            shared,
            format: settings.format,
            settings: settings.clone(),
            writer: Arc::new(Mutex::new(Some((receiver, sink)))),
            started: Arc::new(OnceLock::new()),
        })
    }

    /// Starts the writer thread if it is not running yet.
    fn start_writer(&self) {
        self.started.get_or_init(|| {
            let taken = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some((receiver, sink)) = taken {
                let shared = self.shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("access-log".to_string())
                    .spawn(move || write_loop(receiver, sink, shared));
                if let Err(e) = spawned {
                    log::error!("access log: cannot start its writer thread: {e}");
                }
            }
        });
    }

    /// The settings this log was opened with.
    pub(crate) fn settings(&self) -> &AccessLogSettings {
        &self.settings
    }

    /// Queues one line; never blocks.
    pub(crate) fn log(&self, entry: &AccessEntry<'_>) {
        let mut line = match self.format {
            AccessLogFormat::Combined => combined(entry),
            AccessLogFormat::Json => json(entry),
        };
        line.push('\n');
        self.start_writer();
        match self.sender.try_send(Message::Line(line.into_bytes())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Asks the writer to reopen the file (after logrotate moved it).
    pub(crate) fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
    }

    /// Lines dropped because the writer fell behind.
    pub(crate) fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every line logged so far is written, or `timeout` passes.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        self.start_writer();
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        // Not for the request path: this may wait for room in the queue.
        if self.sender.send(Message::Flush(done.clone())).is_err() {
            return false;
        }
        let (lock, signal) = &*done;
        let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = signal
            .wait_timeout_while(guard, timeout, |flushed| !*flushed)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

enum Sink {
    Stdout,
    File {
        file: BufWriter<File>,
        path: PathBuf,
    },
    /// The file could not be reopened; lines are dropped until it can.
    Lost {
        path: PathBuf,
    },
}

impl Sink {
    fn write(&mut self, line: &[u8]) -> bool {
        match self {
            Sink::Stdout => std::io::stdout().lock().write_all(line).is_ok(),
            Sink::File { file, .. } => file.write_all(line).is_ok(),
            Sink::Lost { .. } => false,
        }
    }

    fn flush(&mut self) {
        match self {
            Sink::Stdout => {
                let _ = std::io::stdout().lock().flush();
            }
            Sink::File { file, .. } => {
                let _ = file.flush();
            }
            Sink::Lost { .. } => {}
        }
    }

    fn path(&self) -> Option<&Path> {
        match self {
            Sink::Stdout => None,
            Sink::File { path, .. } | Sink::Lost { path } => Some(path),
        }
    }

    /// Whether the path no longer names the file we write to.
    fn rotated_away(&self) -> bool {
        let Sink::File { file, path } = self else {
            return matches!(self, Sink::Lost { .. });
        };
        let Ok(open) = file.get_ref().metadata() else {
            return true;
        };
        match std::fs::metadata(path) {
            Ok(now) => now.dev() != open.dev() || now.ino() != open.ino(),
            Err(_) => true,
        }
    }

    fn reopen(&mut self, last_warning: &mut Option<Instant>) {
        self.flush();
        let Some(path) = self.path().map(Path::to_path_buf) else {
            return;
        };
        *self = match open_append(&path) {
            Ok(file) => Sink::File {
                file: BufWriter::new(file),
                path,
            },
            Err(e) => {
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    log::warn!("access log: cannot reopen {e}; lines are dropped until it can");
                    *last_warning = Some(Instant::now());
                }
                Sink::Lost { path }
            }
        };
    }
}

fn write_loop(receiver: Receiver<Message>, mut sink: Sink, shared: Arc<Shared>) {
    let mut last_check = Instant::now();
    let mut last_warning = None;
    loop {
        let first = match receiver.recv_timeout(CHECK_EVERY) {
            Ok(message) => Some(message),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                sink.flush();
                return;
            }
        };
        if shared.reopen.swap(false, Ordering::AcqRel) {
            sink.reopen(&mut last_warning);
        }
        if let Some(first) = first {
            // Write the batch that is waiting, then flush once the queue runs dry (and at
            // least every second under steady load).
            let mut flushed_at = Instant::now();
            let mut next = Some(first);
            while let Some(message) = next {
                if shared.reopen.swap(false, Ordering::AcqRel) {
                    sink.reopen(&mut last_warning);
                }
                match message {
                    Message::Line(line) => {
                        if !sink.write(&line) {
                            shared.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Message::Flush(done) => {
                        sink.flush();
                        let (lock, signal) = &*done;
                        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
                        signal.notify_all();
                    }
                }
                if flushed_at.elapsed() >= CHECK_EVERY {
                    sink.flush();
                    flushed_at = Instant::now();
                }
                next = receiver.try_recv().ok();
            }
            sink.flush();
        }
        if last_check.elapsed() >= CHECK_EVERY {
            last_check = Instant::now();
            if sink.rotated_away() {
                sink.reopen(&mut last_warning);
            }
        }
    }
}

/// The combined log format plus lb's fields.
fn combined(e: &AccessEntry<'_>) -> String {
    let time = chrono::DateTime::<chrono::Utc>::from(e.time).format("%d/%b/%Y:%H:%M:%S +0000");
    let client = e.client.map_or("-".to_string(), |c| c.to_string());
    let upstream = e.upstream.map_or("-".to_string(), |u| u.to_string());
    let upstream_time = e
        .upstream_time
        .map_or("-".to_string(), |t| format!("{:.3}", t.as_secs_f64()));
    format!(
        "{client} - - [{time}] \"{} {} {}\" {} {} \"{}\" \"{}\" upstream={upstream} upstream_time={upstream_time} total_time={:.3} retries={} pool={} route={} outcome={}",
        escape(e.method),
        escape(e.target),
        escape(e.version),
        e.status,
        e.bytes,
        e.referer.map_or("-".to_string(), escape),
        e.user_agent.map_or("-".to_string(), escape),
        e.total_time.as_secs_f64(),
        e.retries,
        e.pool.unwrap_or("-"),
        e.route.unwrap_or("-"),
        e.outcome.map_or("-".to_string(), |o| o.to_string()),
    )
}

/// nginx-style escaping for quoted fields: `"`, `\`, control and non-ASCII bytes become
/// `\xHH`, so a request can never break or forge a line.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\x{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

fn json(e: &AccessEntry<'_>) -> String {
    let time = chrono::DateTime::<chrono::Utc>::from(e.time)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    serde_json::json!({
        "time": time,
        "client": e.client.map(|c| c.to_string()),
        "method": e.method,
        "path": e.target,
        "protocol": e.version,
        "status": e.status,
        "bytes": e.bytes,
        "referer": e.referer,
        "user_agent": e.user_agent,
        "upstream": e.upstream.map(|u| u.to_string()),
        "upstream_time": e.upstream_time.map(|t| round3(t.as_secs_f64())),
        "total_time": round3(e.total_time.as_secs_f64()),
        "retries": e.retries,
        "pool": e.pool,
        "route": e.route,
        "outcome": e.outcome.map(|o| o.to_string()),
    })
    .to_string()
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AccessEntry<'static> {
        AccessEntry {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
            client: Some("127.0.0.1".parse().unwrap()),
            method: "GET",
            target: "/a?b=1",
            version: "HTTP/1.1",
            status: 200,
            bytes: 13,
            referer: None,
            user_agent: Some("curl/8.0"),
            upstream: Some("127.0.0.1:8081".parse().unwrap()),
            upstream_time: Some(Duration::from_millis(1)),
            total_time: Duration::from_millis(2),
            retries: 0,
            pool: Some("default"),
            route: Some("default"),
            outcome: Some(Outcome::Status(200)),
        }
    }

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "lb-access-{}-{name}-{}",
            std::process::id(),
            crate::clock::now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("access.log")
    }

    fn settings(path: &Path, format: AccessLogFormat) -> AccessLogSettings {
        AccessLogSettings {
            path: Some(path.to_path_buf()),
            format,
        }
    }

    #[test]
    fn combined_line() {
        assert_eq!(
            combined(&entry()),
            "127.0.0.1 - - [18/Nov/2026:11:06:40 +0000] \"GET /a?b=1 HTTP/1.1\" 200 13 \"-\" \"curl/8.0\" upstream=127.0.0.1:8081 upstream_time=0.001 total_time=0.002 retries=0 pool=default route=default outcome=status_200"
        );
    }

    #[test]
    fn hostile_fields_cannot_break_a_line() {
        let mut e = entry();
        e.user_agent = Some("evil\"\n127.0.0.1 - - [forged]");
        let line = combined(&e);
        assert!(!line.contains('\n'));
        assert!(
            line.contains("\"evil\\x22\\x0A127.0.0.1 - - [forged]\""),
            "{line}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&json(&e)).unwrap();
        assert_eq!(parsed["user_agent"], "evil\"\n127.0.0.1 - - [forged]");
    }

    #[test]
    fn json_line() {
        let v: serde_json::Value = serde_json::from_str(&json(&entry())).unwrap();
        assert_eq!(v["time"], "2026-11-18T11:06:40.000Z");
        assert_eq!(v["status"], 200);
        assert_eq!(v["upstream"], "127.0.0.1:8081");
        assert_eq!(v["upstream_time"], 0.001);
        assert_eq!(v["referer"], serde_json::Value::Null);
    }

    #[test]
    fn rotation_by_signal_and_by_itself() {
        let path = temp_path("rotate");
        let log = AccessLog::open(&settings(&path, AccessLogFormat::Combined)).unwrap();
        log.log(&entry());
        assert!(log.flush(Duration::from_secs(5)));
        let rotated = path.with_extension("1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        log.log(&entry());
        assert!(log.flush(Duration::from_secs(5)));
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap().lines().count(),
            1
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);

        // Moved away without a signal: noticed within about a second.
        std::fs::rename(&path, path.with_extension("2")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            log.log(&entry());
            log.flush(Duration::from_secs(1));
            if path.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(path.exists(), "the log was reopened at its path");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let path = temp_path("full");
        let log = AccessLog::with_capacity(&settings(&path, AccessLogFormat::Json), 1).unwrap();
        for _ in 0..1000 {
            log.log(&entry());
        }
        log.flush(Duration::from_secs(5));
        let written = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
        assert_eq!(written + log.dropped(), 1000);
    }

    #[test]
    fn a_bad_path_is_an_error_naming_it() {
        let e = AccessLog::open(&settings(
            Path::new("/nonexistent-dir/access.log"),
            AccessLogFormat::Combined,
        ))
        .err()
        .unwrap();
        assert!(e.to_string().contains("/nonexistent-dir/access.log"), "{e}");
    }
}
