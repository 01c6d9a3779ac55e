//! What the daemon's three servers (webhook, admin, hooks) share so that no client can starve
//! them: a cap of connections per peer, file descriptors kept in reserve for the webhook,
//! timeouts that close a connection which sends no request or goes idle, and failure logs
//! that a flood cannot multiply.
//!
//! The webhook matters most: the API server waits on it for every Pod. So the admin and hooks
//! listeners close new connections at once when the process is within [`FdBudget`]'s reserve
//! of its open-file limit, and [`raise_open_file_limit`] lifts the soft limit to the hard one
//! at start.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---- per-peer cap -----------------------------------------------------------------------

/// Counts the open connections of each peer and refuses those over a cap, so one client
/// cannot hold every connection a server allows.
///
/// A peer is an IPv4 address, or an IPv6 /64: one host usually owns a whole /64, so counting
/// single IPv6 addresses would give it billions of peers.
#[derive(Debug)]
pub struct PeerLimiter {
    per_peer: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection of a peer (or the units [`PeerLimiter::try_take`] took);
/// dropping it frees them.
#[derive(Debug)]
pub struct PeerGuard {
    limiter: Arc<PeerLimiter>,
    peer: IpAddr,
    units: usize,
}

impl PeerLimiter {
    pub fn new(per_peer: usize) -> Arc<Self> {
        Arc::new(PeerLimiter {
            per_peer: per_peer.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection of `ip`, or `None` when it holds `per_peer` already.
    pub fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Option<PeerGuard> {
        self.try_take(ip, 1)
    }

    /// `units` more of the peer's share (bytes, KiB: whatever the cap counts), or `None`
    /// when that would take it past `per_peer`.
    pub fn try_take(self: &Arc<Self>, ip: IpAddr, units: usize) -> Option<PeerGuard> {
        let peer = peer_of(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(peer).or_insert(0);
        if count.saturating_add(units) > self.per_peer {
            if *count == 0 {
                open.remove(&peer);
            }
            return None;
        }
        *count += units;
        Some(PeerGuard {
            limiter: self.clone(),
            peer,
            units,
        })
    }

    /// Open connections of the peer `ip` belongs to.
    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&peer_of(ip)).copied().unwrap_or(0)
    }

    /// Peers with at least one open connection (the map never outgrows them).
    pub fn peers(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        let mut open = self
            .limiter
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.peer) {
            *count = count.saturating_sub(self.units);
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// The key a connection from `ip` is counted under.
fn peer_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

// ---- file descriptors -------------------------------------------------------------------

/// The open-file limit after [`raise_open_file_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    pub before: u64,
    pub now: u64,
}

/// Raises the soft limit of open files to the hard limit: the servers, the registry clients
/// and Git share one process, and a soft limit of 1024 is soon reached under load.
pub fn raise_open_file_limit() -> io::Result<OpenFileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(OpenFileLimit {
        before: to_u64(before),
        now: to_u64(limit.rlim_cur),
    })
}

/// The current soft limit of open files, `None` when unlimited or unknown.
pub fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(to_u64(limit.rlim_cur))
}

/// `rlim_t` is `u64` on 64-bit Linux but not on every target.
#[allow(clippy::unnecessary_cast)]
fn to_u64(value: libc::rlim_t) -> u64 {
    value as u64
}

/// How often the open descriptors are counted again; in between, every admitted connection
/// adds one to the last count (closed ones are not subtracted: the estimate errs high).
const FD_RECOUNT: Duration = Duration::from_millis(100);

/// Keeps `reserve` file descriptors free for the webhook: the admin and hooks servers ask
/// [`FdBudget::has_room`] before they keep a new connection.
#[derive(Debug)]
pub struct FdBudget {
    limit: Option<u64>,
    reserve: u64,
    estimate: Mutex<FdEstimate>,
}

#[derive(Debug)]
struct FdEstimate {
    counted_at: Option<Instant>,
    open: u64,
}

impl FdBudget {
    /// The reserve when the operator sets none: a quarter of the limit, at least 16 and at
    /// most 1024 descriptors.
    pub fn default_reserve(limit: u64) -> u64 {
        (limit / 4).clamp(16, 1024)
    }

    /// A budget against the process's current limit (`None`: no limit, always room).
    pub fn for_process(reserve: Option<u64>) -> Arc<Self> {
        let limit = open_file_limit();
        let reserve = reserve.unwrap_or_else(|| limit.map_or(0, Self::default_reserve));
        Self::new(limit, reserve)
    }

    pub fn new(limit: Option<u64>, reserve: u64) -> Arc<Self> {
        Arc::new(FdBudget {
            limit,
            reserve,
            estimate: Mutex::new(FdEstimate {
                counted_at: None,
                open: 0,
            }),
        })
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Whether one more connection leaves the reserve untouched.
    pub fn has_room(&self) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        let now = Instant::now();
        let mut estimate = self.estimate.lock().unwrap_or_else(PoisonError::into_inner);
        let stale = estimate
            .counted_at
            .is_none_or(|at| now.duration_since(at) >= FD_RECOUNT);
        match stale.then(count_open_fds).flatten() {
            Some(open) => {
                estimate.open = open;
                estimate.counted_at = Some(now);
            }
            None => estimate.open += 1,
        }
        estimate.open.saturating_add(self.reserve) < limit
    }
}

/// Descriptors open in this process (Linux `/proc`, else `/dev/fd`); `None` when neither
/// can be listed.
fn count_open_fds() -> Option<u64> {
    let dir = std::fs::read_dir("/proc/self/fd")
        .or_else(|_| std::fs::read_dir("/dev/fd"))
        .ok()?;
    // The directory being listed is one of them.
    Some((dir.count() as u64).saturating_sub(1))
}

// ---- rate-limited logs ------------------------------------------------------------------

/// Lets one log line through per interval and counts the others, so a flood of bad requests
/// writes one line per interval with a count instead of one per request.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    state: Mutex<LogState>,
}

#[derive(Debug)]
struct LogState {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub const fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            state: Mutex::new(LogState {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being the lines held back since the last
    /// one; `None` when this one is to be held back.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                state.suppressed += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.suppressed))
            }
        }
    }
}

// ---- connections ------------------------------------------------------------------------

/// How long a connection may stay open without doing anything useful.
#[derive(Debug, Clone)]
pub struct ConnectionTimeouts {
    /// From the connection being ready (TCP accepted, or TLS handshake done) to its first
    /// complete request head. Trickling bytes does not extend it.
    pub first_request: Duration,
    /// Once the first byte of an HTTP/1 request head arrives, the whole head must arrive
    /// within this.
    pub header: Duration,
    /// With no request in flight for this long, a connection is closed (HTTP/2 gets a
    /// GOAWAY): the keep-alive time of an idle connection.
    pub idle: Duration,
    /// A connection older than this is closed gracefully.
    pub max_age: Duration,
    /// How long requests in flight may take to finish when the connection is closed.
    pub grace: Duration,
}

impl Default for ConnectionTimeouts {
    fn default() -> Self {
        ConnectionTimeouts {
            first_request: Duration::from_secs(2),
            header: Duration::from_secs(2),
            idle: Duration::from_secs(30),
            max_age: Duration::from_secs(300),
            grace: Duration::from_secs(10),
        }
    }
}

/// The HTTP version a connection speaks: chosen by ALPN on TLS, HTTP/1 on plain HTTP (the
/// admin and hooks ports have no use for cleartext HTTP/2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// The server settings of every connection speaking `protocol`.
pub fn http_builder(
    timeouts: &ConnectionTimeouts,
    protocol: Protocol,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The keep-alive limit: hyper's timer runs from when it waits for a head. Heads that
        // have begun are timed by `drive`, which sees the bytes.
        .header_read_timeout(timeouts.idle)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(256)
        .max_header_list_size(64 << 10);
    match protocol {
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
    }
}

/// What a connection did last: requests in flight and answered, bytes read while idle.
#[derive(Debug)]
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    served: AtomicU64,
    /// Milliseconds since `started` of the last request's start or end.
    last_change: AtomicU64,
    /// 1 + milliseconds since `started` of the first byte read since then; 0: none.
    head_started: AtomicU64,
    /// Wakes `drive` when a deadline may have moved closer: a request ended, a head began.
    changed: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            last_change: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_change.store(self.millis(), Ordering::Relaxed);
    }

    /// Bytes arrived: with no request in flight, a request head has begun.
    fn on_read(&self) {
        let began = self.in_flight.load(Ordering::Acquire) == 0
            && self
                .head_started
                .compare_exchange(
                    0,
                    self.millis().saturating_add(1),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok();
        if began {
            self.changed.notify_one();
        }
    }

    /// When the connection is to be closed if nothing happens before; `None` while a
    /// request is in flight. `heads` when a begun HTTP/1 head has its own deadline.
    fn idle_at(&self, timeouts: &ConnectionTimeouts, heads: bool) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let allowed = if self.served.load(Ordering::Relaxed) == 0 {
            timeouts.first_request
        } else {
            timeouts.idle
        };
        let last = Duration::from_millis(self.last_change.load(Ordering::Relaxed));
        let idle_at = self.started + last + allowed;
        let head = self.head_started.load(Ordering::Acquire);
        if heads && head > 0 {
            let head_at = self.started + Duration::from_millis(head - 1) + timeouts.header;
            return Some(idle_at.min(head_at));
        }
        Some(idle_at)
    }
}

/// A connection's stream that tells its [`Activity`] when bytes arrive.
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.on_read();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Counts a request as in flight until its response is ready (or the request is dropped).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.head_started.store(0, Ordering::Release);
        activity.served.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

/// A hyper service that records its requests in an [`Activity`].
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::begin(&self.activity);
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            drop(in_flight);
            response
        })
    }
}

/// Why [`drive`] stopped a connection that was still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The client ended it, or it failed.
    ByClient,
    /// No request head in time, or idle too long.
    Idle,
    /// Older than `max_age`.
    Aged,
    /// The server is shutting down.
    Shutdown,
}

/// Serves one connection (`protocol`, on a builder made by [`http_builder`] for it) with
/// `service` until the client closes it, it sends no request head in time, it stays idle too
/// long, it reaches its maximum age or `shutdown`; all but the first close it gracefully
/// (requests in flight finish within `grace`).
pub async fn drive<T, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: T,
    protocol: Protocol,
    service: S,
    timeouts: &ConnectionTimeouts,
    shutdown: &CancellationToken,
) -> (Closed, Result<(), BoxError>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let activity = Activity::new();
    let service = Tracked {
        inner: service,
        activity: activity.clone(),
    };
    // HTTP/2 reads frames (pings, window updates) while idle: only HTTP/1 bytes begin a head.
    let heads = protocol == Protocol::Http1;
    let io = TokioIo::new(Watched {
        inner: io,
        activity: activity.clone(),
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let aged = tokio::time::sleep(timeouts.max_age);
    tokio::pin!(aged);
    let closed = loop {
        // While a request is in flight, look again after `idle`: the answer's end resets it.
        let idle_at = activity
            .idle_at(timeouts, heads)
            .unwrap_or_else(|| Instant::now() + timeouts.idle);
        tokio::select! {
            result = connection.as_mut() => return (Closed::ByClient, result),
            _ = shutdown.cancelled() => break Closed::Shutdown,
            _ = aged.as_mut() => break Closed::Aged,
            // A new deadline: computed again at the top of the loop.
            _ = activity.changed.notified() => {}
            _ = tokio::time::sleep_until(idle_at.into()) => {
                if activity.idle_at(timeouts, heads).is_some_and(|at| at <= Instant::now()) {
                    break Closed::Idle;
                }
            }
        }
    };
    connection.as_mut().graceful_shutdown();
    // An idle connection has nothing to finish; HTTP/2 gets its GOAWAY out meanwhile.
    let grace = if closed == Closed::Idle {
        timeouts.grace.min(Duration::from_secs(1))
    } else {
        timeouts.grace
    };
    match tokio::time::timeout(grace, connection).await {
        Ok(result) => (closed, result),
        Err(_) => (closed, Ok(())),
    }
}

/// The next connection of `listener`. A failure (out of file descriptors, a connection reset
/// before it was accepted) is transient: it is logged at most once per 10 s with the count
/// held back, and accepting goes on after a pause.
pub async fn accept(listener: &TcpListener, server: &'static str) -> (TcpStream, SocketAddr) {
    static ACCEPT_FAILED: LogLimiter = LogLimiter::new(Duration::from_secs(10));
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                if let Some(suppressed) = ACCEPT_FAILED.allow() {
                    tracing::warn!(server, error = %e, suppressed, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

// ---- plain-HTTP servers (admin, hooks) --------------------------------------------------

/// Limits of a plain-HTTP server.
#[derive(Debug, Clone)]
pub struct PlainLimits {
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
    /// Open connections per peer at most (see [`PeerLimiter`]).
    pub max_per_peer: usize,
    pub timeouts: ConnectionTimeouts,
    /// Descriptors kept for the webhook; `None`: no check.
    pub fds: Option<Arc<FdBudget>>,
}

impl Default for PlainLimits {
    fn default() -> Self {
        PlainLimits {
            max_connections: 64,
            max_per_peer: 16,
            timeouts: ConnectionTimeouts::default(),
            fds: None,
        }
    }
}

/// Serves `router` over plain HTTP on `listener` until `shutdown`, within `limits`. `name`
/// goes into log lines.
pub async fn serve_plain(
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    limits: PlainLimits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    static REFUSED: LogLimiter = LogLimiter::new(Duration::from_secs(10));
    let builder = Arc::new(http_builder(&limits.timeouts, Protocol::Http1));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let peers = PeerLimiter::new(limits.max_per_peer);
    let timeouts = Arc::new(limits.timeouts.clone());
    let connections = TaskTracker::new();
    let service = hyper_util::service::TowerToHyperService::new(router);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = accept(&listener, name) => accepted,
        };
        // Checked in this order so that a refused connection costs nothing more.
        let why = if limits.fds.as_ref().is_some_and(|fds| !fds.has_room()) {
            Err(("fd_reserve", "file descriptors kept for the webhook"))
        } else {
            match (
                slots.clone().try_acquire_owned(),
                peers.try_admit(peer.ip()),
            ) {
                (Ok(slot), Some(guard)) => Ok((slot, guard)),
                (Err(_), _) => Err(("connections", "connection limit reached")),
                (_, None) => Err(("per_peer", "per-peer connection limit reached")),
            }
        };
        let (slot, guard) = match why {
            Ok(admitted) => admitted,
            Err((reason, why)) => {
                drop(tcp);
                crate::telemetry::METRICS.refused(name, reason);
                if let Some(suppressed) = REFUSED.allow() {
                    tracing::warn!(server = name, %peer, suppressed, "connection refused: {why}");
                }
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let builder = builder.clone();
        let service = service.clone();
        let timeouts = timeouts.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _held = (slot, guard);
            let (_, result) = drive(
                &builder,
                tcp,
                Protocol::Http1,
                service,
                &timeouts,
                &shutdown,
            )
            .await;
            if let Err(e) = result {
                tracing::debug!(server = name, %peer, error = %e, "connection ended with an error");
            }
        });
    }
    // The port closes now; the connections still open finish within the grace period.
    drop(listener);
    connections.close();
    let _ = tokio::time::timeout(limits.timeouts.grace, connections.wait()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_capped_and_freed() {
        let limiter = PeerLimiter::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let one = limiter.try_admit(a).unwrap();
        let two = limiter.try_admit(a).unwrap();
        assert!(limiter.try_admit(a).is_none(), "a third from one peer");
        let other = limiter
            .try_admit(b)
            .expect("another peer has its own count");
        assert_eq!(limiter.open(a), 2);
        drop(one);
        assert_eq!(limiter.open(a), 1);
        let three = limiter.try_admit(a).expect("a freed place is reused");
        drop((two, three, other));
        assert_eq!(limiter.peers(), 0, "no entry outlives its connections");
    }

    #[test]
    fn an_ipv6_slash_64_is_one_peer_and_mapped_ipv4_is_ipv4() {
        let limiter = PeerLimiter::new(1);
        let first = limiter
            .try_admit("2001:db8:1:2::1".parse().unwrap())
            .unwrap();
        assert!(
            limiter
                .try_admit("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_none(),
            "the same /64"
        );
        assert!(
            limiter
                .try_admit("2001:db8:1:3::1".parse().unwrap())
                .is_some()
        );
        let v4 = limiter.try_admit("192.0.2.7".parse().unwrap()).unwrap();
        assert!(
            limiter
                .try_admit("::ffff:192.0.2.7".parse().unwrap())
                .is_none()
        );
        drop((first, v4));
    }

    #[test]
    fn the_log_limiter_lets_one_line_through_per_interval_with_a_count() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(limiter.allow_at(start), Some(0));
        let held: usize = (1..=1000)
            .filter(|i| {
                limiter
                    .allow_at(start + Duration::from_millis(*i))
                    .is_none()
            })
            .count();
        assert_eq!(held, 1000);
        assert_eq!(
            limiter.allow_at(start + Duration::from_secs(10)),
            Some(1000)
        );
        assert_eq!(limiter.allow_at(start + Duration::from_secs(11)), None);
        assert_eq!(limiter.allow_at(start + Duration::from_secs(21)), Some(1));
    }

    #[test]
    fn deadlines_first_request_idle_and_a_begun_http1_head() {
        let timeouts = ConnectionTimeouts::default();
        let activity = Activity::new();
        let at = |heads| {
            activity
                .idle_at(&timeouts, heads)
                .map(|at| at.duration_since(activity.started))
        };
        let near = |got: Option<Duration>, want: u64| {
            got.is_some_and(|got| {
                got >= Duration::from_secs(want) && got < Duration::from_secs(want + 1)
            })
        };
        assert!(near(at(true), 2), "the first request: {:?}", at(true));
        {
            let _request = InFlight::begin(&activity);
            assert_eq!(
                at(true),
                None,
                "nothing closes a connection with a request in flight"
            );
            // Body bytes of the request in flight begin no head.
            activity.on_read();
        }
        assert!(near(at(true), 30), "idle after a request: {:?}", at(true));
        activity.on_read();
        assert!(near(at(true), 2), "a begun HTTP/1 head: {:?}", at(true));
        assert!(
            near(at(false), 30),
            "HTTP/2 frames begin no head: {:?}",
            at(false)
        );
        let _next = InFlight::begin(&activity);
        drop(_next);
        assert!(
            near(at(true), 30),
            "the head became a request: {:?}",
            at(true)
        );
    }

    #[test]
    fn the_fd_budget_keeps_its_reserve() {
        let open = count_open_fds().expect("this test runs where descriptors can be counted");
        assert!(open > 0);
        assert!(FdBudget::new(None, 10).has_room());
        // Far from the limit, and (with a reserve far above what other tests open) near it.
        assert!(FdBudget::new(Some(open + 10_000), 10).has_room());
        assert!(!FdBudget::new(Some(open + 100), 1_000).has_room());

        // Between two counts every admitted connection counts as one more.
        let budget = FdBudget::new(Some(100), 10);
        *budget.estimate.lock().unwrap() = FdEstimate {
            // Never stale within this test.
            counted_at: Some(Instant::now() + Duration::from_secs(3600)),
            open: 85,
        };
        let admitted = (0..10).take_while(|_| budget.has_room()).count();
        assert_eq!(admitted, 4, "86 to 89 open leave the 10 in reserve");
        assert_eq!(FdBudget::default_reserve(256), 64);
        assert_eq!(FdBudget::default_reserve(40), 16);
        assert_eq!(FdBudget::default_reserve(1 << 20), 1024);
    }

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let limit = raise_open_file_limit().unwrap();
        assert!(limit.now >= limit.before);
        let mut hard = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) },
            0
        );
        assert_eq!(limit.now, to_u64(hard.rlim_max));
    }
}
