//! Client connections, kept lean while they are idle.
//!
//! pingora gives every accepted connection its buffers at once and, as soon as one response is
//! done, starts the next request's whole task (session, header buffer, the proxy's boxed future),
//! so an idle keep-alive connection held about 60 KB. nginx and HAProxy hold about 1 KB. Here a
//! connection between requests holds little more than its socket:
//! - [`ClientApp`] waits until the client sends something before it builds the HTTP session;
//! - [`WriteBuffered`] coalesces a response's writes (header and body leave in one `write`) in a
//!   buffer that exists only while a response is being written.
//!
//! HTTP/2, TLS and custom protocols are not served by lb today; if pingora is ever configured
//! for them, those connections go to pingora's own handling unchanged.

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;

/// Size of the response write buffer: a header and a body of known length up to this size leave
/// in one `write` (+15 % req/s for 16 KiB responses against unbuffered writes). Streamed bodies
/// are flushed by pingora at every chunk, so real-time responses are not held back.
pub(crate) const WRITE_BUFFER: usize = 32 * 1024;

/// Serves HTTP/1 client connections with `inner`, holding only the socket between requests.
pub(crate) struct ClientApp<A> {
    inner: Arc<A>,
    /// How long an idle keep-alive connection waits for its next request (read on every wait,
    /// so a reload's new `lb.timeouts.idle` applies at once).
    idle_timeout: Box<dyn Fn() -> Duration + Send + Sync>,
    shutting_down: AtomicBool,
    shutdown: Notify,
}

impl<A> ClientApp<A> {
    pub(crate) fn new(
        inner: A,
        idle_timeout: impl Fn() -> Duration + Send + Sync + 'static,
    ) -> Self {
        ClientApp {
            inner: Arc::new(inner),
            idle_timeout: Box::new(idle_timeout),
            shutting_down: AtomicBool::new(false),
            shutdown: Notify::new(),
        }
    }

    /// Waits until the client sends the first byte of a request. False when the client closed
    /// the connection, stayed idle past the timeout, or (for a kept-alive connection, `reused`)
    /// the service is shutting down. A connection accepted just before the listeners closed
    /// still gets its first request served: its client has sent it already, or is about to, and
    /// would see a reset otherwise (as on the old process of an upgrade).
    async fn wait_for_request(&self, stream: &mut Stream, reused: bool) -> bool {
        // Created before the flag is read: `notify_waiters` wakes a `Notified` from its creation
        // on, and `cleanup` sets the flag before notifying, so no shutdown is missed.
        let notified = self.shutdown.notified();
        let shutdown = async {
            if reused {
                notified.await
            } else {
                std::future::pending().await
            }
        };
        if reused && self.shutting_down.load(Ordering::Acquire) {
            return false;
        }
        // Neither is registered until polled: a request that is already there costs nothing.
        let idle = pingora::time::sleep((self.idle_timeout)());
        tokio::pin!(shutdown, idle);
        let mut waiting = false;
        poll_fn(|cx| {
            if waiting {
                // Woken by the idle timer, by shutdown, or else by the socket, whose only wake
                // is "readable" (data, end of stream or error; the session's read tells which).
                // Deciding on the wake itself saves a `read` system call per request.
                let ended =
                    idle.as_mut().poll(cx).is_ready() || shutdown.as_mut().poll(cx).is_ready();
                return Poll::Ready(!ended);
            }
            if let Poll::Ready(readable) = poll_readable(stream, cx) {
                return Poll::Ready(readable);
            }
            waiting = true;
            if idle.as_mut().poll(cx).is_ready() || shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            Poll::Pending
        })
        .await
    }

    /// The session for the next request, with the keep-alive settings carried from the previous
    /// one. (A plain function, so that the session is not part of the idle connection's state.)
    fn session(
        &self,
        stream: Stream,
        settings: Option<HttpPersistentSettings>,
        limit: Option<u32>,
        shutdown: &ShutdownWatch,
    ) -> ServerSession {
        let mut session = ServerSession::new_http1(stream);
        match settings {
            Some(settings) => settings.apply_to_session(&mut session),
            None => {
                // A connection accepted while shutting down serves one request only.
                let keepalive = (self.idle_timeout)().as_secs().max(1);
                session.set_keepalive((!*shutdown.borrow()).then_some(keepalive));
                session.set_keepalive_reuses_remaining(limit);
            }
        }
        session
    }
}

/// Readiness without a buffer: a zero-length read registers for (or reports) readability and
/// consumes nothing. When the socket is already flagged readable it returns at once (at the
/// cost of one empty `read`); tokio keeps the flag, so the session's first real read finds the
/// data, and should the flag be stale, that read simply waits as it would have without this.
fn poll_readable(stream: &mut Stream, cx: &mut Context<'_>) -> Poll<bool> {
    let mut empty = ReadBuf::new(&mut []);
    match Pin::new(&mut **stream).poll_read(cx, &mut empty) {
        Poll::Ready(result) => Poll::Ready(result.is_ok()),
        Poll::Pending => Poll::Pending,
    }
}

#[async_trait]
impl<A> ServerApp for ClientApp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let options = self.inner.server_options();
        let plain_http1 = stream.get_ssl_digest().is_none()
            && stream.selected_alpn_proto().is_none()
            && !options.is_some_and(|o| o.h2c || o.force_custom);
        if !plain_http1 {
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        let limit = options.and_then(|o| o.keepalive_request_limit);

        let mut stream: Stream = Box::new(WriteBuffered::new(stream, WRITE_BUFFER));
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut reused = false;
        loop {
            if !self.wait_for_request(&mut stream, reused).await {
                return None;
            }
            let session = self.session(stream, settings.take(), limit, shutdown);
            let next = self.inner.process_new_http(session, shutdown).await?;
            (stream, settings) = next.consume();
            reused = true;
        }
    }

    async fn cleanup(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
        self.inner.http_cleanup().await;
    }
}

/// A client stream whose writes are buffered in a buffer allocated on the first write of a
/// response and freed when that response is flushed, so an idle connection carries none.
pub(crate) struct WriteBuffered {
    inner: Stream,
    buf: Vec<u8>,
    /// Bytes of `buf` already written to `inner`.
    written: usize,
    capacity: usize,
}

impl WriteBuffered {
    pub(crate) fn new(inner: Stream, capacity: usize) -> Self {
        WriteBuffered {
            inner,
            buf: Vec::new(),
            written: 0,
            capacity,
        }
    }

    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut *self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl fmt::Debug for WriteBuffered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBuffered")
            .field("inner", &self.inner)
            .field("buffered", &(self.buf.len() - self.written))
            .finish()
    }
}

impl AsyncRead for WriteBuffered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteBuffered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.buf.len() + data.len() > this.capacity {
            ready!(this.poll_drain(cx))?;
        }
        if data.len() >= this.capacity {
            return Pin::new(&mut *this.inner).poll_write(cx, data);
        }
        if this.buf.capacity() == 0 {
            this.buf.reserve_exact(this.capacity);
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        // The response is out: give the buffer back until the next one.
        this.buf = Vec::new();
        Pin::new(&mut *this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        this.buf = Vec::new();
        Pin::new(&mut *this.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for WriteBuffered {
    async fn shutdown(&mut self) {
        if let Err(e) = AsyncWriteExt::shutdown(self).await {
            log::debug!("failed to shut down a client connection: {e}");
        }
    }
}

#[async_trait]
impl Peek for WriteBuffered {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl UniqueID for WriteBuffered {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for WriteBuffered {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for WriteBuffered {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for WriteBuffered {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for WriteBuffered {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}
