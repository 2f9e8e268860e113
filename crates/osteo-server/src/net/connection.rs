//! Connections: an accept loop that backs off on errors, a cap on open connections, TLS
//! termination (each handshake in its own task, under the handshake timeout), and a stream
//! wrapper that closes a connection which has not finished its handshake in time, has had no
//! request in flight for the idle timeout, or is idle when the server shuts down.
//!
//! The wrapper learns whether requests are in flight from [`ActivityLayer`], a tower layer that
//! finds the connection's state in each request's extensions (tonic puts the stream's connect
//! info there) and holds a guard until the response body has been sent.

use crate::net::tls::{PeerCert, TlsSource};
use bytes::Bytes;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Limits of the connections of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time a new connection has to send `handshake_bytes` bytes.
    pub handshake_timeout: Duration,
    /// Bytes that complete the handshake (HTTP/2: the 24-byte preface and a 9-byte frame
    /// header of the client's SETTINGS).
    pub handshake_bytes: usize,
    /// Time a connection with no request in flight stays open.
    pub idle_timeout: Duration,
}

/// Bytes of the HTTP/2 client preface plus one frame header.
pub const HTTP2_HANDSHAKE_BYTES: usize = 24 + 9;

/// After shutdown, how long an idle connection is left to the HTTP/2 GOAWAY exchange (and the
/// flushing of its last response) before it is closed.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);

/// What the stream wrapper and the activity layer share about one connection.
#[derive(Debug)]
struct ConnState {
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
}

/// The connect info of a wrapped stream: tonic's TCP addresses, the client certificate's
/// identity and the connection's state.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    tcp: TcpConnectInfo,
    peer_cert: Arc<PeerCert>,
    state: Arc<ConnState>,
}

impl ConnInfo {
    /// What the client certificate of the connection says ([`PeerCert::Absent`] without TLS).
    pub fn peer_cert(&self) -> &PeerCert {
        &self.peer_cert
    }

    /// The client's address.
    pub fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp.remote_addr
    }
}

/// The byte stream of a connection: plain TCP or TLS over it.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Io {
    fn pin(&mut self) -> Pin<&mut dyn AsyncReadWrite> {
        match self {
            Io::Plain(s) => Pin::new(s),
            Io::Tls(s) => Pin::new(s.as_mut()),
        }
    }
}

/// A stream that reads and writes.
trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

/// A guard counting one request in flight on a connection.
#[derive(Debug)]
pub struct ActiveGuard(Arc<ConnState>);

impl ConnState {
    fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        ActiveGuard(self.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An accepted TCP stream under the connection limits.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    limits: ConnLimits,
    accepted: Instant,
    read_bytes: usize,
    timer: Pin<Box<Sleep>>,
    shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    shutdown_at: Option<Instant>,
    closed: bool,
    listener: &'static str,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    /// Wraps a stream accepted at `accepted` (the handshake deadline counts from then, TLS
    /// handshake included).
    fn new(
        io: Io,
        accepted: Instant,
        limits: ConnLimits,
        mut shutdown: watch::Receiver<bool>,
        permit: OwnedSemaphorePermit,
        listener: &'static str,
    ) -> Self {
        let (tcp, peer_cert) = match &io {
            Io::Plain(s) => (s, PeerCert::Absent),
            Io::Tls(s) => {
                let (tcp, session) = s.get_ref();
                (tcp, PeerCert::of(session.peer_certificates()))
            }
        };
        let tcp = TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: tcp.peer_addr().ok(),
        };
        Self {
            io,
            info: ConnInfo {
                tcp,
                peer_cert: Arc::new(peer_cert),
                state: Arc::new(ConnState {
                    active: AtomicUsize::new(0),
                    idle_since: Mutex::new(accepted),
                }),
            },
            limits,
            accepted,
            read_bytes: 0,
            timer: Box::pin(tokio::time::sleep_until(
                accepted + limits.handshake_timeout,
            )),
            shutdown: Some(Box::pin(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })),
            shutdown_at: None,
            closed: false,
            listener,
            _permit: permit,
        }
    }

    /// Whether the connection should close now; otherwise arms the timer for the next check.
    /// A connection that never completed its handshake closes at shutdown at once; an idle one
    /// after [`SHUTDOWN_LINGER`]; one with requests in flight is left to HTTP/2's graceful
    /// shutdown (GOAWAY, then close when its streams are done).
    fn should_close(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if let Some(s) = self.shutdown.as_mut()
                && s.as_mut().poll(cx).is_ready()
            {
                self.shutdown = None;
                self.shutdown_at = Some(Instant::now());
            }
            let handshaken = self.read_bytes >= self.limits.handshake_bytes;
            let idle = self.info.state.active.load(Ordering::SeqCst) == 0;
            if self.shutdown_at.is_some() && !handshaken {
                return true;
            }
            let now = Instant::now();
            let (deadline, why) = if !handshaken {
                (self.accepted + self.limits.handshake_timeout, "handshake")
            } else if idle {
                let since = *self
                    .info
                    .state
                    .idle_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match self.shutdown_at {
                    Some(at) => (at.max(since) + SHUTDOWN_LINGER, "shutdown"),
                    None => (since + self.limits.idle_timeout, "idle"),
                }
            } else {
                // Requests in flight: look again later.
                (now + self.limits.idle_timeout, "")
            };
            if deadline <= now && !why.is_empty() {
                metrics::counter!(
                    "osteo_connections_closed_total",
                    "listener" => self.listener,
                    "reason" => why
                )
                .increment(1);
                return true;
            }
            self.timer.as_mut().reset(deadline);
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Ok(())); // end of stream: the server closes the connection
        }
        let before = buf.filled().len();
        if let Poll::Ready(r) = this.io.pin().poll_read(cx, buf) {
            this.read_bytes = this.read_bytes.saturating_add(buf.filled().len() - before);
            return Poll::Ready(r);
        }
        if this.should_close(cx) {
            this.closed = true;
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().io.pin().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io.pin().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io.pin().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().io.pin().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// What every connection of one listener shares.
#[derive(Clone)]
struct Sink {
    limits: ConnLimits,
    shutdown: watch::Receiver<bool>,
    name: &'static str,
    tx: mpsc::Sender<Conn>,
}

impl Sink {
    /// Wraps a stream and hands it to the server; false when the server no longer accepts.
    async fn deliver(&self, io: Io, accepted: Instant, permit: OwnedSemaphorePermit) -> bool {
        let conn = Conn::new(
            io,
            accepted,
            self.limits,
            self.shutdown.clone(),
            permit,
            self.name,
        );
        self.tx.send(conn).await.is_ok()
    }

    /// Completes the TLS handshake of a connection accepted at `accepted` within the handshake
    /// timeout (or until shutdown) and hands the connection on; a failed or late handshake is
    /// counted and the connection dropped.
    async fn handshake(
        mut self,
        tcp: TcpStream,
        tls: tokio_rustls::TlsAcceptor,
        accepted: Instant,
        permit: OwnedSemaphorePermit,
    ) {
        let deadline = accepted + self.limits.handshake_timeout;
        let result = tokio::select! {
            _ = self.shutdown.wait_for(|stop| *stop) => return,
            r = tokio::time::timeout_at(deadline, tls.accept(tcp)) => r,
        };
        let name = self.name;
        match result {
            Ok(Ok(stream)) => {
                self.deliver(Io::Tls(Box::new(stream)), accepted, permit)
                    .await;
            }
            Ok(Err(e)) => {
                metrics::counter!("osteo_tls_handshake_failures_total", "listener" => name)
                    .increment(1);
                tracing::debug!(listener = name, error = %e, "TLS handshake failed");
            }
            Err(_) => {
                metrics::counter!(
                    "osteo_connections_closed_total",
                    "listener" => name,
                    "reason" => "handshake"
                )
                .increment(1);
            }
        }
    }
}

/// Accepts connections from `listener` into a channel until the receiver is dropped: at most
/// `limits.max_connections` open at once (a connection beyond is closed at once and counted;
/// connections in their TLS handshake count), accept errors (such as running out of file
/// descriptors) retried after a back-off that doubles from 5 ms to 1 s, logged once per
/// episode instead of once per failure. With `tls`, each connection's handshake runs in its own
/// task with the acceptor in force when it was accepted.
pub fn accept_loop(
    listener: TcpListener,
    limits: ConnLimits,
    tls: Option<Arc<TlsSource>>,
    shutdown: watch::Receiver<bool>,
    name: &'static str,
) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel::<Conn>(1);
    let sink = Sink {
        limits,
        shutdown,
        name,
        tx,
    };
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        const FIRST: Duration = Duration::from_millis(5);
        let mut backoff = FIRST;
        loop {
            let accepted = tokio::select! {
                () = sink.tx.closed() => return,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((tcp, _)) => {
                    backoff = FIRST;
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        metrics::counter!("osteo_connections_refused_total", "listener" => name)
                            .increment(1);
                        drop(tcp);
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let accepted = Instant::now();
                    match &tls {
                        Some(source) => {
                            let acceptor = source.acceptor();
                            tokio::spawn(sink.clone().handshake(tcp, acceptor, accepted, permit));
                        }
                        None => {
                            if !sink.deliver(Io::Plain(tcp), accepted, permit).await {
                                return;
                            }
                        }
                    }
                }
                Err(e) => {
                    if backoff == FIRST {
                        tracing::warn!(listener = name, error = %e, "accept failed; backing off");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    });
    rx
}

/// Tower layer that counts each request in flight on its connection ([`Conn`]) and restores
/// tonic's [`TcpConnectInfo`] in the request extensions.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivityLayer;

impl<S> tower_layer::Layer<S> for ActivityLayer {
    type Service = Activity<S>;

    fn layer(&self, inner: S) -> Activity<S> {
        Activity { inner }
    }
}

/// The service of [`ActivityLayer`].
#[derive(Debug, Clone)]
pub struct Activity<S> {
    inner: S,
}

/// A boxed response future (of the tower layers here and in `auth`).
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower_service::Service<http::Request<B>> for Activity<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<GuardedBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let info = req.extensions().get::<ConnInfo>().cloned();
        let guard = info.map(|i| {
            req.extensions_mut().insert(i.tcp.clone());
            i.state.begin()
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|inner| GuardedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
#[derive(Debug)]
pub struct GuardedBody<B> {
    inner: B,
    _guard: Option<ActiveGuard>,
}

impl<B> http_body::Body for GuardedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
