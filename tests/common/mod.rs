//! Test harness: real backend servers in-process, the real `lb` binary as a child process, and a
//! small HTTP/1.1 client that can also send malformed requests.
#![allow(dead_code)]

pub mod browser;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

/// Polls `f` every 20 ms until it is true or `limit` passes; returns whether it became true.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

// ------------------------------------------------------------------------------------------------
// Backends

/// What one backend has seen and how it should answer.
#[derive(Default)]
pub struct BackendState {
    pub requests: AtomicUsize,
    /// Request targets seen, in order.
    pub seen: Mutex<Vec<String>>,
    /// Status answered on `/health` (0 means 200).
    pub health_status: AtomicU16,
    /// Status answered on every other path (0 means 200).
    pub status: AtomicU16,
    /// Extra time taken by every other request, in milliseconds.
    pub delay_ms: AtomicU64,
    /// Requests being answered now, and the most ever at once.
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

struct EchoApp {
    name: String,
    state: Arc<BackendState>,
}

/// FNV-1a, to compare request bodies without shipping them back.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

#[async_trait]
impl ServeHttp for EchoApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body.extend_from_slice(&chunk);
        }
        let req = session.req_header();
        let target = req.uri.to_string();
        let path = req.uri.path().to_owned();
        if path == "/health" {
            let status = match self.state.health_status.load(Ordering::SeqCst) {
                0 => 200,
                s => s,
            };
            return http::Response::builder()
                .status(status)
                .header("Content-Length", 0)
                .body(Vec::new())
                .unwrap();
        }
        self.state.requests.fetch_add(1, Ordering::SeqCst);
        self.state.seen.lock().unwrap().push(target.clone());
        let now = self.state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let delay = self.state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(ms) = req
            .uri
            .query()
            .and_then(|q| q.strip_prefix("sleep_ms="))
            .and_then(|v| v.parse::<u64>().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let mut text = format!(
            "backend={}\nmethod={}\ntarget={}\nbody_len={}\nbody_fnv={}\n",
            self.name,
            req.method,
            target,
            body.len(),
            fnv(&body)
        );
        for (name, value) in req.headers.iter() {
            text.push_str(&format!(
                "header:{}={}\n",
                name.as_str(),
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        let status = match self.state.status.load(Ordering::SeqCst) {
            0 => 200,
            s => s,
        };
        http::Response::builder()
            .status(status)
            .header("Content-Type", "text/plain")
            .header("Content-Length", text.len())
            .header("X-Backend", &self.name)
            .body(text.into_bytes())
            .unwrap()
    }
}

/// A real HTTP backend on a loopback port that can be stopped and started again.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
    runtime: tokio::runtime::Runtime,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let mut backend = Backend {
            name: name.to_string(),
            addr,
            state: Arc::new(BackendState::default()),
            runtime,
            task: None,
        };
        backend.serve(listener);
        backend
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Arc::new(EchoApp {
            name: self.name.clone(),
            state: self.state.clone(),
        });
        self.task = Some(self.runtime.spawn(lb::demo::serve_http(listener, app)));
    }

    /// Three backends named a, b and c.
    pub fn three() -> (Backend, Backend, Backend) {
        (
            Backend::start("a"),
            Backend::start("b"),
            Backend::start("c"),
        )
    }

    /// Stops listening and closes every open connection, like a crashed server.
    pub fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = self.runtime.block_on(task);
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        let addr = self.addr;
        let listener = wait_for(Duration::from_secs(5), || {
            self.runtime
                .block_on(tokio::net::TcpListener::bind(addr))
                .ok()
        })
        .expect("could not listen on the backend port again");
        self.serve(listener);
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn set_health(&self, status: u16) {
        self.state.health_status.store(status, Ordering::SeqCst);
    }

    /// Answers every request (but `/health`) with `status`.
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Takes `ms` longer to answer every request (but `/health`).
    pub fn set_delay(&self, ms: u64) {
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }
}

/// A backend that accepts a WebSocket handshake (`Upgrade: websocket`), answers `101 Switching
/// Protocols`, then echoes every byte back: the part of a WebSocket a proxy sees.
pub struct WebSocketEchoBackend {
    pub addr: SocketAddr,
    _thread: std::thread::JoinHandle<()>,
}

impl WebSocketEchoBackend {
    pub fn start() -> Self {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = Self::serve(stream);
                });
            }
        });
        WebSocketEchoBackend {
            addr,
            _thread: thread,
        }
    }

    fn serve(stream: TcpStream) -> std::io::Result<()> {
        use std::io::Read;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut upgrade = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line.to_ascii_lowercase().starts_with("upgrade: websocket") {
                upgrade = true;
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut writer = stream;
        if !upgrade {
            writer.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
            return Ok(());
        }
        writer.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        )?;
        let mut buf = [0u8; 4096];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            writer.write_all(&buf[..n])?;
        }
    }
}

fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------------------------------------
// The lb binary

/// A running `lb` process; killed when dropped.
pub struct Lb {
    pub addr: SocketAddr,
    pub child: Child,
    pub log_path: PathBuf,
    pub conf_path: PathBuf,
    pub dir: TempDir,
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lb-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn lb_binary() -> &'static str {
    env!("CARGO_BIN_EXE_lb")
}

/// A whole config file: per-test pid file and upgrade socket in `dir`, the upstreams, and
/// extra `lb:` keys (already indented by two spaces).
pub fn config_yaml(dir: &Path, listen: SocketAddr, upstreams: &[String], extra: &str) -> String {
    let list: Vec<String> = upstreams.iter().map(|u| format!("    - {u}\n")).collect();
    format!(
        "threads: 2\npid_file: {}/lb.pid\nupgrade_sock: {}/upgrade.sock\nlb:\n  listen: [\"{listen}\"]\n  upstreams:\n{}{extra}",
        dir.display(),
        dir.display(),
        list.concat()
    )
}

/// Fast health checks for tests.
pub const FAST_CHECKS: &str = "  health_check:\n    interval: 100ms\n    timeout: 200ms\n    healthy_after: 2\n    unhealthy_after: 2\n";

impl Lb {
    /// Starts `lb` with the given upstreams and `lb:` extras and waits until it accepts
    /// connections.
    pub fn start(upstreams: &[String], extra: &str) -> Lb {
        let dir = TempDir::new();
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = config_yaml(&dir.0, listen, upstreams, extra);
        Self::start_in(dir, listen, &config)
    }

    /// Starts `lb` on a config file written into `dir`.
    pub fn start_in(dir: TempDir, addr: SocketAddr, config: &str) -> Lb {
        Self::start_in_with(dir, addr, config, |_| {})
    }

    /// Starts `lb` on a config file written into `dir`, its command adjusted by `customize`.
    pub fn start_in_with(
        dir: TempDir,
        addr: SocketAddr,
        config: &str,
        customize: impl FnOnce(&mut Command),
    ) -> Lb {
        let conf_path = dir.0.join("lb.yaml");
        std::fs::write(&conf_path, config).unwrap();
        let log_path = dir.0.join("lb.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(lb_binary());
        command
            .arg("-c")
            .arg(&conf_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        customize(&mut command);
        let child = command.spawn().expect("lb did not start");
        let mut lb = Lb {
            addr,
            child,
            log_path,
            conf_path,
            dir,
        };
        let up = wait_until(Duration::from_secs(15), || {
            if let Ok(Some(status)) = lb.child.try_wait() {
                panic!("lb exited with {status}: {}", lb.log());
            }
            TcpStream::connect(addr).is_ok()
        });
        assert!(up, "lb did not listen on {addr}: {}", lb.log());
        lb
    }

    /// Waits up to 10 s for `needle` to appear in the log; fails the test with the log if not.
    pub fn expect_log(&self, needle: &str) {
        assert!(
            wait_until(Duration::from_secs(10), || self.log().contains(needle)),
            "no {needle:?} in the log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn get(&self, path: &str) -> Response {
        get(self.addr, path)
    }
}

impl Lb {
    pub fn pid_file(&self) -> PathBuf {
        self.dir.0.join("lb.pid")
    }

    pub fn conf(&self) -> &str {
        self.conf_path.to_str().unwrap()
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        // A process started by `lb upgrade` is not our child: find it through the pid file.
        if let Some(pid) = read_pid(&self.pid_file()) {
            if pid as u32 != self.child.id() && pid_alive(pid) {
                let _ = lb::ops::instance::signal(pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------------------------------
// Client

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The backend that answered (from the echo body).
    pub fn backend(&self) -> Option<String> {
        self.echo("backend")
    }

    /// A `key=value` line of the echo body.
    pub fn echo(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.text()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
    }
}

/// Reads one response from `reader` (Content-Length, chunked, or until close).
pub fn read_response(reader: &mut impl BufRead, head_request: bool) -> std::io::Result<Response> {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if head_request || status == 204 || status == 304 || status / 100 == 1 {
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().map_err(std::io::Error::other)?;
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(std::io::Error::other)?;
            if size == 0 {
                let mut end = String::new();
                reader.read_line(&mut end)?;
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf)?;
        }
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Sends raw bytes on a new connection and reads one response.
pub fn send_raw(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.write_all(raw)?;
    let mut reader = BufReader::new(stream);
    read_response(&mut reader, false)
}

pub fn try_get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    send_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    try_get(addr, path).unwrap_or_else(|e| panic!("GET {path} on {addr} failed: {e}"))
}

/// A client that keeps one connection open across requests, reconnecting when the server closes.
pub struct KeepAliveClient {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    /// How often the server had closed the idle connection before a request.
    pub idle_closes: usize,
}

impl KeepAliveClient {
    pub fn new(addr: SocketAddr) -> Self {
        KeepAliveClient {
            addr,
            conn: None,
            idle_closes: 0,
        }
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Response> {
        let reused = self.conn.is_some();
        match self.try_get(path) {
            // Like every HTTP client: a kept-alive connection the server closed while idle
            // fails before any response, and the request is sent again on a new connection.
            Err(e) if reused && closed_before_response(&e) => {
                self.idle_closes += 1;
                self.conn = None;
                self.try_get(path)
            }
            other => other,
        }
    }

    fn try_get(&mut self, path: &str) -> std::io::Result<Response> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let s = TcpStream::connect(self.addr)?;
                s.set_read_timeout(Some(Duration::from_secs(20)))?;
                BufReader::new(s)
            }
        };
        conn.get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes())?;
        let resp = read_response(&mut conn, false)?;
        if !resp
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.conn = Some(conn);
        }
        Ok(resp)
    }
}

fn closed_before_response(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted
    )
}

// ------------------------------------------------------------------------------------------------
// Load

/// What a bounded load saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: usize,
    pub failed: usize,
    pub errors: Vec<String>,
    /// Responses per backend name.
    pub by_backend: std::collections::BTreeMap<String, usize>,
    /// Idle keep-alive connections the server closed (the client reconnected, as clients do).
    pub idle_closes: usize,
}

/// A steady load on `addr` from several threads, half keep-alive and half a new connection per
/// request, until stopped, `per_thread` requests are made, or a minute passes.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<LoadReport>>,
    pub sent: Arc<AtomicUsize>,
}

impl Load {
    pub fn start(addr: SocketAddr, threads: usize, per_thread: usize) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|i| {
                let (stop, sent) = (stop.clone(), sent.clone());
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut report = LoadReport::default();
                    let mut keep_alive = KeepAliveClient::new(addr);
                    for n in 0..per_thread {
                        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                            break;
                        }
                        let path = format!("/load/{i}/{n}");
                        let result = if i % 2 == 0 {
                            keep_alive.get(&path)
                        } else {
                            try_get(addr, &path)
                        };
                        sent.fetch_add(1, Ordering::SeqCst);
                        match result {
                            Ok(r) if r.status == 200 => {
                                report.ok += 1;
                                *report
                                    .by_backend
                                    .entry(r.backend().unwrap_or_default())
                                    .or_default() += 1;
                            }
                            Ok(r) => {
                                report.failed += 1;
                                report
                                    .errors
                                    .push(format!("{path}: {} {}", r.status, r.text()));
                            }
                            Err(e) => {
                                report.failed += 1;
                                report.errors.push(format!("{path}: {e}"));
                            }
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    report.idle_closes = keep_alive.idle_closes;
                    report
                })
            })
            .collect();
        Load {
            stop,
            threads,
            sent,
        }
    }

    /// Waits until at least `n` requests were made.
    pub fn wait_for(&self, n: usize) {
        assert!(wait_until(Duration::from_secs(30), || self
            .sent
            .load(Ordering::SeqCst)
            >= n));
    }

    /// Waits until `n` more requests than now were made.
    pub fn wait_for_more(&self, n: usize) {
        self.wait_for(self.sent.load(Ordering::SeqCst) + n);
    }

    pub fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = LoadReport::default();
        for t in self.threads {
            let r = t.join().expect("load thread panicked");
            total.ok += r.ok;
            total.failed += r.failed;
            total.errors.extend(r.errors);
            total.idle_closes += r.idle_closes;
            for (k, v) in r.by_backend {
                *total.by_backend.entry(k).or_default() += v;
            }
        }
        total
    }
}

/// Runs `lb` with `args`; returns (success, stdout and stderr).
pub fn lb_command(args: &[&str]) -> (bool, String) {
    let out = Command::new(lb_binary())
        .args(args)
        .output()
        .expect("lb did not run");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The pid in a pid file, if any.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn pid_alive(pid: i32) -> bool {
    lb::ops::instance::process_alive(pid)
}
