//! Connections: an accept loop that backs off on errors, a cap on open connections, and a TCP
//! stream wrapper that closes a connection which has not finished its handshake in time, has
//! had no request in flight for the idle timeout, or is idle when the server shuts down.
//!
//! The wrapper learns whether requests are in flight from [`ActivityLayer`], a tower layer that
//! finds the connection's state in each request's extensions (tonic puts the stream's connect
//! info there) and holds a guard until the response body has been sent.

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

/// The connect info of a wrapped stream: tonic's TCP addresses plus the connection's state.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    tcp: TcpConnectInfo,
    state: Arc<ConnState>,
}

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
    io: TcpStream,
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
    fn new(
        io: TcpStream,
        limits: ConnLimits,
        mut shutdown: watch::Receiver<bool>,
        permit: OwnedSemaphorePermit,
        listener: &'static str,
    ) -> Self {
        let now = Instant::now();
        let tcp = TcpConnectInfo {
            local_addr: io.local_addr().ok(),
            remote_addr: io.peer_addr().ok(),
        };
        Self {
            io,
            info: ConnInfo {
                tcp,
                state: Arc::new(ConnState {
                    active: AtomicUsize::new(0),
                    idle_since: Mutex::new(now),
                }),
            },
            limits,
            accepted: now,
            read_bytes: 0,
            timer: Box::pin(tokio::time::sleep_until(now + limits.handshake_timeout)),
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
        if let Poll::Ready(r) = Pin::new(&mut this.io).poll_read(cx, buf) {
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
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Accepts connections from `listener` into a channel until the receiver is dropped: at most
/// `limits.max_connections` open at once (a connection beyond is closed at once and counted),
/// accept errors (such as running out of file descriptors) retried after a back-off that
/// doubles from 5 ms to 1 s, logged once per episode instead of once per failure.
pub fn accept_loop(
    listener: TcpListener,
    limits: ConnLimits,
    shutdown: watch::Receiver<bool>,
    name: &'static str,
) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel::<Conn>(1);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        const FIRST: Duration = Duration::from_millis(5);
        let mut backoff = FIRST;
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
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
                    let conn = Conn::new(tcp, limits, shutdown.clone(), permit, name);
                    if tx.send(conn).await.is_err() {
                        return;
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
