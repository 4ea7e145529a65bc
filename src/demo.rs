//! `lb demo`: the balancer in front of two built-in backends, to try it without any set-up.
//!
//! The backends are bound before the balancer starts (on ephemeral ports of 127.0.0.1), so the
//! first health-check round finds them up.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::Opt;

use crate::config::{Config, LbConfig, Upstream};

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the demo backends: {0}")]
    Backends(std::io::Error),
    #[error("--listen {addr}: {reason}; choose another address with --listen, e.g. lb demo --listen 127.0.0.1:8080")]
    Listen { addr: SocketAddr, reason: String },
    #[error("{0}")]
    Start(String),
}

impl From<crate::ops::server::StartError> for DemoError {
    fn from(e: crate::ops::server::StartError) -> Self {
        match e {
            crate::ops::server::StartError::Listen { addr, reason } => {
                DemoError::Listen { addr, reason }
            }
            other => DemoError::Start(other.to_string()),
        }
    }
}

/// The demo's pid file, in lb's runtime directory (never a shared one such as /tmp).
pub fn pid_file() -> String {
    crate::config::server_defaults::runtime_dir()
        .join("demo.pid")
        .display()
        .to_string()
}

/// A backend that answers every request with a short page naming itself.
pub struct NamedBackend {
    pub name: String,
}

#[async_trait]
impl ServeHttp for NamedBackend {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        // Drain any request body so the connection can be reused.
        while let Ok(Some(_)) = session.read_request_body().await {}
        let path = session.req_header().uri.path().to_owned();
        let body = format!("Hello from {} (you asked for {path})\n", self.name).into_bytes();
        http::Response::builder()
            .status(200)
            .header("Content-Type", "text/plain; charset=utf-8")
            .header("Content-Length", body.len())
            .header("X-Backend", &self.name)
            .body(body)
            .unwrap_or_default()
    }
}

/// Serves `app` on `listener` until the future is dropped; dropping it closes every connection.
pub async fn serve_http<A>(listener: tokio::net::TcpListener, app: Arc<A>)
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let (_shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let app = app.clone();
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    let stream: pingora::protocols::Stream =
                        Box::new(pingora::protocols::l4::stream::Stream::from(tcp));
                    let mut session = ServerSession::new_http1(stream);
                    while let Some(reused) = app.process_new_http(session, &shutdown).await {
                        let (stream, settings) = reused.consume();
                        session = ServerSession::new_http1(stream);
                        if let Some(settings) = settings {
                            settings.apply_to_session(&mut session);
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Runs the demo until Ctrl-C.
pub fn run(listen: SocketAddr) -> Result<(), DemoError> {
    let mut upstreams = Vec::new();
    let mut listeners = Vec::new();
    for _ in 0..2 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(DemoError::Backends)?;
        listener
            .set_nonblocking(true)
            .map_err(DemoError::Backends)?;
        let addr = listener.local_addr().map_err(DemoError::Backends)?;
        upstreams.push(Upstream {
            name: addr.to_string(),
            addr,
            weight: 1,
            max_conns: None,
            backup: false,
            origin: None,
        });
        listeners.push(listener);
    }
    crate::ops::server::check_listen(&[listen])?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("demo-backends")
        .enable_all()
        .build()
        .map_err(DemoError::Backends)?;
    for (i, listener) in listeners.into_iter().enumerate() {
        let name = format!("backend-{} ({})", i + 1, upstreams[i].addr);
        runtime.spawn(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => serve_http(listener, Arc::new(NamedBackend { name })).await,
                Err(e) => log::error!("demo backend {name} failed: {e}"),
            }
        });
    }
    std::thread::spawn(move || runtime.block_on(std::future::pending::<()>()));

    let url_host = if listen.ip().is_unspecified() {
        "localhost".to_string()
    } else {
        match listen {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        }
    };
    let url = if listen.port() == 80 {
        format!("http://{url_host}/")
    } else {
        format!("http://{url_host}:{}/", listen.port())
    };
    println!("lb demo: balancing {listen} over two built-in backends:");
    for u in &upstreams {
        println!("  {}", u.addr);
    }
    println!("Try:  curl {url}   (run it twice: the backends answer in turn)");
    println!("Press Ctrl-C to stop.");

    // Files of its own, so that the demo never touches a real instance's pid file.
    let mut server = crate::config::default_server_conf();
    server.pid_file = pid_file();
    server.upgrade_sock = crate::config::server_defaults::runtime_dir()
        .join("demo-upgrade.sock")
        .display()
        .to_string();
    let config = Config {
        server,
        lb: LbConfig::with_defaults(vec![listen], upstreams),
    };
    crate::ops::preflight::prepare_runtime_dir(&config)
        .map_err(|e| DemoError::Start(e.to_string()))?;
    let files = crate::ops::instance::InstanceFiles::new(&config.server.pid_file);
    crate::ops::server::build(
        Opt::default(),
        config,
        None,
        crate::ops::handover::SavedStateUse::Ignore,
    )?
    .run();
    // Ctrl-C ends the server here; a graceful stop (SIGTERM) removes the files itself.
    files.remove_if_ours();
    std::process::exit(0)
}
