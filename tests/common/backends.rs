//! Backends that run inside the test process: an HTTP echo server whose answers can be changed
//! while it runs, and a WebSocket echo.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use super::ports::unique_addr;
use super::wait::wait_for;

/// What one backend has seen and how it should answer.
#[derive(Default)]
pub struct BackendState {
    pub requests: AtomicUsize,
    /// Request targets seen, in order (recorded when a request arrives, before any delay).
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

/// FNV-1a, to compare request bodies without shipping them back.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// Answers `/health` with the health status, everything else with a plain-text echo of the
/// request: `backend=`, `method=`, `target=`, `body_len=`, `body_fnv=` and a `header:name=value`
/// line per header. `?sleep_ms=N` makes it answer N ms later.
struct EchoApp {
    name: String,
    state: Arc<BackendState>,
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

/// A real HTTP backend (see [`EchoApp`]) on a loopback port that can be stopped and started
/// again.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
    runtime: tokio::runtime::Runtime,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        Self::start_on(name, unique_addr())
    }

    /// A backend on `addr` (any of 127.0.0.0/8 is loopback: several backends can share a port
    /// on 127.0.0.2, 127.0.0.3, ..., as the addresses of one DNS name).
    pub fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
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

    /// Whether a request whose target starts with `prefix` has arrived (it may still be
    /// being answered).
    pub fn has_seen(&self, prefix: &str) -> bool {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|t| t.starts_with(prefix))
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
        let listener = TcpListener::bind(unique_addr()).unwrap();
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
