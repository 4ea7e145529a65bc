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
//! HTTP/1.1 over TLS takes the same path once the handshake is done. HTTP/2 with prior
//! knowledge (h2c, `lb.h2c`) is told from HTTP/1 by the first bytes of a new plain connection
//! ([`sniff_h2c`]); an HTTP/2 connection (h2c, or ALPN `h2` over TLS), like a custom one, goes
//! to pingora's own handling (one request task per stream), counted against the connection
//! limit.

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
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

use crate::balancer::SharedRouting;
use crate::config::ClientLimits;
use crate::observe::metrics::Metrics;

/// Size of the response write buffer: a header and a body of known length up to this size leave
/// in one `write` (+15 % req/s for 16 KiB responses against unbuffered writes). Streamed bodies
/// are flushed by pingora at every chunk, so real-time responses are not held back.
pub(crate) const WRITE_BUFFER: usize = 32 * 1024;

/// Serves HTTP/1 client connections (plain or TLS) with `inner`, holding only the socket between requests.
///
/// It also enforces, per connection, what pingora leaves open (see `lb.limits` and
/// `lb.timeouts.client_*`):
/// - at most `max_client_connections` open connections: beyond, a new one is closed at once;
/// - the whole request header within `client_header` from its first byte (a connection that
///   trickles its header a byte at a time is closed), and a new connection's first byte within
///   the same time;
/// - pipelined requests are answered one after the other, in order;
/// - once a graceful stop or upgrade begins, each idle connection's next request is still
///   served, with `Connection: close`; a connection that stays idle is closed at its idle
///   timeout or just before the grace period ends, whichever is first.
pub(crate) struct ClientApp<A> {
    inner: Arc<A>,
    routing: SharedRouting,
    connections: ClientConnections,
    /// The connection limit when `lb.limits.max_client_connections` is not set.
    default_max_connections: usize,
    /// How long after shutdown begins idle connections are closed (grace period less a margin).
    drain_for: Duration,
    /// Set when shutdown begins: the end of the drain.
    drain_deadline: OnceLock<Instant>,
    shutdown: Notify,
    /// Last time (seconds on the process clock) a rejected connection was logged.
    last_reject_log: AtomicU64,
}

/// Client connections open now: shared with the process lifecycle, which waits for them at a
/// graceful stop.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientConnections(Arc<AtomicUsize>);

impl ClientConnections {
    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One connection's state shared with the request hooks (through pingora's connection user
/// context): the hooks say when the request header is in.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    header_done: AtomicBool,
}

impl ConnState {
    /// The request header is read and parsed: its deadline no longer applies.
    pub(crate) fn header_done(&self) {
        self.header_done.store(true, Ordering::Release);
    }
}

/// Counts an open connection until dropped.
struct OpenGuard<'a> {
    connections: &'a ClientConnections,
    gauge: prometheus::IntGauge,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.connections.0.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

/// What one wait for a request ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The client sent something (or closed, or the socket failed: the read tells).
    Readable,
    /// The wait's time ran out.
    TimedOut,
}

impl<A> ClientApp<A> {
    pub(crate) fn new(
        inner: A,
        routing: SharedRouting,
        connections: ClientConnections,
        default_max_connections: usize,
        grace: Duration,
    ) -> Self {
        ClientApp {
            inner: Arc::new(inner),
            routing,
            connections,
            default_max_connections,
            // Leave a second (or a quarter of a short grace) to close before the runtime ends.
            drain_for: grace.saturating_sub(Duration::from_secs(1).min(grace / 4)),
            drain_deadline: OnceLock::new(),
            shutdown: Notify::new(),
            last_reject_log: AtomicU64::new(u64::MAX),
        }
    }

    /// Counts a new connection; `None` (and the connection is to be closed) beyond the limit.
    fn admit(&self, limits: &ClientLimits, metrics: &Metrics) -> Option<OpenGuard<'_>> {
        let max = limits
            .max_connections
            .unwrap_or(self.default_max_connections);
        let open = self.connections.0.fetch_add(1, Ordering::Relaxed) + 1;
        if open > max {
            self.connections.0.fetch_sub(1, Ordering::Relaxed);
            metrics.client_connections_rejected.inc();
            let now = crate::clock::now_ms() / 1000;
            let last = self.last_reject_log.swap(now, Ordering::Relaxed);
            if last != now {
                log::warn!(
                    "{max} client connections are open (lb.limits.max_client_connections): \
                     closing new ones at once"
                );
            }
            return None;
        }
        metrics.client_connections.inc();
        Some(OpenGuard {
            connections: &self.connections,
            gauge: metrics.client_connections.clone(),
        })
    }

    /// Waits until the client sends the first byte of a request, at most `limit`. Once shutdown
    /// begins the wait goes on (the next request is served, with `Connection: close`) but ends
    /// when the drain time is up.
    async fn wait_for_request(&self, stream: &mut Stream, limit: Duration) -> Wait {
        // Not registered until polled: a request that is already there costs nothing.
        let idle = pingora::time::sleep(limit);
        // `notify_waiters` wakes a `Notified` from its creation on, and `cleanup` sets the
        // deadline before notifying, so no shutdown is missed between the check and the wait.
        let shutdown = self.shutdown.notified();
        tokio::pin!(idle, shutdown);
        let mut drain_end = self.drain_deadline.get().map(|&d| Box::pin(sleep_until(d)));
        let mut first = true;
        poll_fn(|cx| {
            let first_poll = std::mem::replace(&mut first, false);
            if first_poll && poll_readable(stream, cx).is_ready() {
                return Poll::Ready(Wait::Readable);
            }
            // Woken by a timer, by shutdown, or else by the socket, whose only wake is
            // "readable" (data, end of stream or error; the session's read tells which).
            // Deciding on the wake itself saves a `read` system call per request. (On the first
            // poll this registers the timers; the socket registered just above.)
            if idle.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wait::TimedOut);
            }
            let mut shutdown_woke = false;
            if drain_end.is_none() && shutdown.as_mut().poll(cx).is_ready() {
                shutdown_woke = true;
                drain_end = self.drain_deadline.get().map(|&d| Box::pin(sleep_until(d)));
            }
            if let Some(end) = drain_end.as_mut() {
                if end.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wait::TimedOut);
                }
            }
            if shutdown_woke {
                // Shutdown's wake, perhaps the socket's too: the socket tells.
                return match poll_readable(stream, cx) {
                    Poll::Ready(_) => Poll::Ready(Wait::Readable),
                    Poll::Pending => Poll::Pending,
                };
            }
            if first_poll {
                Poll::Pending
            } else {
                Poll::Ready(Wait::Readable)
            }
        })
        .await
    }

    /// Starts serving the next request: its session, handed to `inner`. A plain function, so
    /// that the session (680 bytes) never becomes part of `process_new`'s future, whose size
    /// every connection carries while it is idle.
    fn serve<'a>(
        &'a self,
        stream: Stream,
        settings: Option<HttpPersistentSettings>,
        limit: Option<u32>,
        shutdown: &'a ShutdownWatch,
        idle: Duration,
        conn: &Arc<ConnState>,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'a>>
    where
        A: HttpServerApp + Send + Sync + 'static,
    {
        let mut session = self.session(stream, settings, limit, shutdown, idle);
        session.set_connection_user_context(Some(Box::new(conn.clone())));
        self.inner.process_new_http(session, shutdown)
    }

    /// The session for the next request, with the keep-alive settings carried from the previous
    /// one.
    fn session(
        &self,
        stream: Stream,
        settings: Option<HttpPersistentSettings>,
        limit: Option<u32>,
        shutdown: &ShutdownWatch,
        idle: Duration,
    ) -> ServerSession {
        let mut session = ServerSession::new_http1(stream);
        match settings {
            Some(settings) => settings.apply_to_session(&mut session),
            None => {
                session.set_keepalive(Some(idle.as_secs().max(1)));
                session.set_keepalive_reuses_remaining(limit);
            }
        }
        if *shutdown.borrow() || self.drain_deadline.get().is_some() {
            // Draining: this request is answered with `Connection: close`.
            session.set_keepalive(None);
        }
        // Pipelined requests are parsed from what was read past the previous one and answered
        // in order (RFC 9112 §9.3.2) instead of the connection being closed under them.
        session.set_pipelining_enabled(true);
        session
    }
}

/// The connection preface every HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the first bytes of a new plain connection to tell HTTP/2 with prior knowledge from
/// HTTP/1, and puts them back (pingora's stream keeps them for the next read). It reads only
/// while the bytes match the preface, so an HTTP/1 request (which can never start with
/// `PRI * HTTP/2.0`) costs one small read and a short one is never waited on. pingora's own
/// `try_peek` waits for all 24 bytes, which a short HTTP/1 request never sends.
async fn sniff_h2c(mut stream: Stream) -> io::Result<(Stream, bool)> {
    use pingora::protocols::l4::stream::Stream as L4Stream;
    use tokio::io::AsyncReadExt;
    if !stream.as_any().is::<L4Stream>() {
        // Not a socket lb accepted (nothing to put bytes back into): HTTP/1.
        return Ok((stream, false));
    }
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    while n < buf.len() {
        let got = stream.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
        if buf[..n] != H2_PREFACE[..n] {
            break;
        }
    }
    let h2 = &buf == H2_PREFACE;
    let mut l4 = stream
        .into_any()
        .downcast::<L4Stream>()
        .map_err(|_| io::Error::other("client stream changed type"))?;
    l4.rewind(&buf[..n]);
    Ok((l4, h2))
}

/// Whether the settings carried to the next session hold bytes of a pipelined request already
/// read: then the socket may have nothing more to read and the session must start at once.
fn has_pipelined_bytes(settings: &HttpPersistentSettings) -> bool {
    // `has_pipelined_prefix` is added by lb's pingora-core patch (vendor/PATCHES.md); without
    // it the one window on the prefix was its `Debug` output, formatted for every request.
    settings.has_pipelined_prefix()
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
        let routing = self.routing.load_full();
        let metrics = routing.registry.metrics();
        let _open = self.admit(&routing.config.client, metrics)?;
        let options = self.inner.server_options();
        // HTTP/1 in the clear, or over TLS unless ALPN chose h2: both take the lean path.
        // (On a plain connection, checking for TLS costs one `None`.) pingora's `h2c` option
        // is not looked at here: plain connections are told apart below, and pingora's own
        // handling gets only those that start with the HTTP/2 preface.
        let tls = stream.get_ssl_digest().is_some();
        let http1 = !options.is_some_and(|o| o.force_custom)
            && if tls {
                stream.selected_alpn_proto() != Some(ALPN::H2)
            } else {
                stream.selected_alpn_proto().is_none()
            };
        if !http1 {
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        let mut stream = stream;
        // Whether the first request is known to be there already (its bytes were sniffed).
        let mut readable = false;
        if !tls && routing.config.h2c {
            let header_timeout = routing.config.client.header_timeout;
            let limit = routing.config.client_idle.min(header_timeout);
            if self.wait_for_request(&mut stream, limit).await == Wait::TimedOut {
                return None;
            }
            let (sniffed, h2) =
                match pingora::time::timeout(header_timeout, sniff_h2c(stream)).await {
                    Ok(Ok(sniffed)) => sniffed,
                    Ok(Err(e)) => {
                        log::debug!("client connection failed before its first request: {e}");
                        return None;
                    }
                    Err(_) => return None,
                };
            if h2 {
                // pingora's h2 server: one task per stream through the same proxy hooks, GOAWAY
                // when shutdown begins; `_open` counts the connection until it ends.
                return ServerApp::process_new(&self.inner, sniffed, shutdown).await;
            }
            stream = sniffed;
            readable = true;
        }
        let limit = options.and_then(|o| o.keepalive_request_limit);
        let conn = Arc::new(ConnState::default());
        let mut stream: Stream = Box::new(WriteBuffered::new(stream, WRITE_BUFFER, tls));
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            // Read afresh for every request, so that a reload's new limits apply at once.
            let (header_timeout, idle) = {
                let routing = self.routing.load();
                (
                    routing.config.client.header_timeout,
                    routing.config.client_idle,
                )
            };
            let pipelined = settings.as_ref().is_some_and(has_pipelined_bytes);
            if !pipelined && !std::mem::take(&mut readable) {
                // A new connection must start its request within the header timeout.
                let limit = if first {
                    idle.min(header_timeout)
                } else {
                    idle
                };
                if self.wait_for_request(&mut stream, limit).await == Wait::TimedOut {
                    return None;
                }
            }
            first = false;
            conn.header_done.store(false, Ordering::Release);
            let serve = self.serve(stream, settings.take(), limit, shutdown, idle, &conn);
            tokio::pin!(serve);
            // Not registered until polled, and polled only while the header is incomplete: a
            // request whose header was read on the first poll (nearly every one) costs no timer.
            let deadline = pingora::time::sleep(header_timeout);
            tokio::pin!(deadline);
            let mut expired = false;
            let served = poll_fn(|cx| {
                if let Poll::Ready(reused) = serve.as_mut().poll(cx) {
                    return Poll::Ready(Some(reused));
                }
                if !expired
                    && !conn.header_done.load(Ordering::Acquire)
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    expired = true;
                    if !conn.header_done.load(Ordering::Acquire) {
                        return Poll::Ready(None);
                    }
                }
                Poll::Pending
            })
            .await;
            let Some(reused) = served else {
                // The header did not arrive in time: dropping the request's task closes the
                // connection.
                log::debug!("client request header not complete after {header_timeout:?}: closing");
                metrics
                    .client_rejected
                    .with_label_values(&["header_timeout"])
                    .inc();
                return None;
            };
            let reused = reused?;
            (stream, settings) = reused.consume();
        }
    }

    async fn cleanup(&self) {
        // pingora's own `http_cleanup` is not called: it would drop requests whose header is
        // still being read. Waits end as `wait_for_request` says.
        let _ = self.drain_deadline.set(Instant::now() + self.drain_for);
        self.shutdown.notify_waiters();
    }
}

/// A client stream whose writes are buffered in a buffer allocated on the first write of a
/// response and freed when that response is flushed, so an idle connection carries none.
///
/// On a TLS stream it also answers the empty read of [`poll_readable`]: an empty read of a TLS
/// stream returns at once, whether or not a record has come, so the wait reads one byte of
/// plaintext ahead instead and hands it to the next real read.
pub(crate) struct WriteBuffered {
    inner: Stream,
    buf: Vec<u8>,
    /// Bytes of `buf` already written to `inner`.
    written: usize,
    capacity: usize,
    /// A TLS stream: readiness is found by reading ahead.
    tls: bool,
    /// The byte read ahead, not yet given to a reader.
    ahead: Option<u8>,
}

impl WriteBuffered {
    pub(crate) fn new(inner: Stream, capacity: usize, tls: bool) -> Self {
        WriteBuffered {
            inner,
            buf: Vec::new(),
            written: 0,
            capacity,
            tls,
            ahead: None,
        }
    }

    /// The TLS side of [`AsyncRead::poll_read`]: an empty `buf` waits for a byte of plaintext
    /// (or the end, or an error) and keeps it; a real read gets the kept byte first.
    fn poll_read_tls(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            if self.ahead.is_some() {
                return Poll::Ready(Ok(()));
            }
            let mut one = [0u8; 1];
            let mut ahead = ReadBuf::new(&mut one);
            ready!(Pin::new(&mut *self.inner).poll_read(cx, &mut ahead))?;
            self.ahead = ahead.filled().first().copied();
            return Poll::Ready(Ok(()));
        }
        match self.ahead.take() {
            Some(byte) => {
                buf.put_slice(&[byte]);
                // Whatever else is already there comes along; nothing more is waited for.
                match Pin::new(&mut *self.inner).poll_read(cx, buf) {
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    _ => Poll::Ready(Ok(())),
                }
            }
            None => Pin::new(&mut *self.inner).poll_read(cx, buf),
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
        if self.tls {
            return self.poll_read_tls(cx, buf);
        }
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
