//! The HTTPS serving loop: accept, TLS handshake, HTTP/1.1 or HTTP/2, graceful drain.
//!
//! [`serve`] owns the listeners and runs every connection on its own task. Route handling is
//! behind the [`Handler`] trait; a handler learns about the connection through
//! [`ConnectionInfo`], which also carries per-connection scratch state ([`ConnState`]) the MDM
//! layer needs because Apple's protocol gives some answers (NotNow) connection scope.
//!
//! Limits that protect the appliance: a handshake timeout, a request-header timeout (HTTP/1.1),
//! an idle timeout, a cap on open connections, and [`read_body`] for bounded request bodies.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use mdm_service::ports::EnrollmentBinding;
use mdm_service::PeerCertificate;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::tls::ReloadableTls;

/// How long the accept loop pauses after an accept error that is not about one connection
/// (file descriptor or memory exhaustion): retrying at once would spin on the same error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Most a body read preallocates before data has arrived.
const PREALLOCATE_MAX: usize = 64 * 1024;

/// At most one warning per this interval when connections are refused for being over the limit,
/// so a flood cannot flood the journal too.
const OVERLOAD_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// What a handler learns about the connection a request arrived on.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// Number of the connection, unique within one [`serve`] call (counts from 1).
    pub id: u64,
    /// The peer's address.
    pub remote_addr: SocketAddr,
    /// The leaf certificate the client presented in the TLS handshake, if any. When present
    /// it has already been verified to chain to the appliance CA.
    pub peer_certificate: Option<PeerCertificate>,
    /// Whether the connection speaks HTTP/2 (negotiated with ALPN).
    pub alpn_h2: bool,
    /// Per-connection scratch space the MDM layer uses (e.g. the set of command UUIDs a device
    /// answered NotNow to on this connection). Dropped with the connection.
    pub state: Arc<Mutex<ConnState>>,
}

impl ConnectionInfo {
    /// Describes a connection with empty [`ConnState`]; [`serve`] builds these itself, this is
    /// for handler tests.
    pub fn new(
        id: u64,
        remote_addr: SocketAddr,
        peer_certificate: Option<Vec<u8>>,
        alpn_h2: bool,
    ) -> Self {
        Self {
            id,
            remote_addr,
            peer_certificate: peer_certificate.map(PeerCertificate::new),
            alpn_h2,
            state: Arc::new(Mutex::new(ConnState::default())),
        }
    }
}

/// State that lives exactly as long as one connection.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Per enrollment id, the command UUIDs answered `NotNow` on this connection: Apple's
    /// protocol says such a command is not offered again until the device reconnects.
    pub not_now: HashMap<String, HashSet<String>>,
    /// The enrollments this connection's requests were checked against, each with the
    /// version it was read at (newest last, at most [`KEPT_BINDINGS`]).
    pub bindings: Vec<(u64, EnrollmentBinding)>,
}

/// How many bindings a connection keeps: a device's channel and its users' channels.
pub const KEPT_BINDINGS: usize = 4;

impl ConnState {
    /// The binding kept for `enrollment_id`, if it was read at `version`.
    pub fn kept_binding(&self, enrollment_id: &str, version: u64) -> Option<&EnrollmentBinding> {
        self.bindings
            .iter()
            .find(|(v, b)| *v == version && b.id == enrollment_id)
            .map(|(_, b)| b)
    }

    /// Keeps `binding`, read at `version`, in place of any other kept for its enrollment.
    pub fn keep_binding(&mut self, binding: &EnrollmentBinding, version: u64) {
        self.bindings.retain(|(_, b)| b.id != binding.id);
        if self.bindings.len() >= KEPT_BINDINGS {
            self.bindings.remove(0);
        }
        self.bindings.push((version, binding.clone()));
    }
}

/// Answers requests. Implemented by the routing layer.
pub trait Handler: Send + Sync + 'static {
    /// Produces the response to `req`, which arrived on the connection `conn` describes.
    fn handle(
        &self,
        req: http::Request<Incoming>,
        conn: Arc<ConnectionInfo>,
    ) -> impl Future<Output = http::Response<Full<Bytes>>> + Send;
}

/// Limits and timeouts of [`serve`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Longest time a client may take to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Longest time an HTTP/1.1 client may take to send a request's headers. hyper starts this
    /// clock whenever it waits for a request, so it also bounds the pause between keep-alive
    /// requests.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed (HTTP/1.1 and HTTP/2).
    pub idle_timeout: Duration,
    /// After shutdown starts, how long in-flight requests may take before their connections
    /// are closed regardless.
    pub drain_timeout: Duration,
    /// Connections open at once (including those still in the handshake); more are accepted
    /// and closed immediately.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            drain_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is longer than allowed.
    #[error("the request body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The connection failed while the body was being read.
    #[error("the request body could not be read from the connection: {0}")]
    Read(#[source] hyper::Error),
}

/// Reads a request body of at most `max` bytes.
///
/// A declared length (`Content-Length`) over the limit fails before anything is read; a body
/// without one is read until it crosses the limit, and the rest is never buffered.
pub async fn read_body(mut body: Incoming, max: usize) -> Result<Bytes, BodyError> {
    let too_large = || BodyError::TooLarge { limit: max };
    let declared = body.size_hint().lower();
    let limit = u64::try_from(max).unwrap_or(u64::MAX);
    if declared > limit {
        return Err(too_large());
    }
    // Preallocate for the declared length, but only up to a bound: a client could otherwise
    // make every connection reserve `max` bytes by declaring a length it never sends.
    let capacity = usize::try_from(declared).map_or(0, |d| d.min(PREALLOCATE_MAX));
    let mut buf = BytesMut::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            if data.len() > max.saturating_sub(buf.len()) {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Serves HTTPS on `listeners` until `shutdown` resolves, then drains.
///
/// Each accepted connection gets its own task: TLS handshake (bounded by
/// `handshake_timeout`), then HTTP/1.1 with keep-alive or HTTP/2 as negotiated by ALPN (a
/// client that offers no ALPN is served whichever it speaks). When `shutdown` resolves the
/// listeners are closed, so new connections are refused; every open connection is shut down
/// gracefully (in-flight requests finish, idle HTTP/1.1 connections close, HTTP/2 peers get
/// GOAWAY); whatever is still open after `drain_timeout` is closed. Returns once every
/// connection is gone.
///
/// Fails only if `listeners` is empty; accept, handshake and connection errors are logged and
/// never end the server.
pub async fn serve<H: Handler>(
    listeners: Vec<TcpListener>,
    tls: Arc<ReloadableTls>,
    handler: Arc<H>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    if listeners.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "serve needs at least one listener",
        ));
    }
    for listener in &listeners {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "accepting HTTPS connections");
        }
    }

    let drain_timeout = opts.drain_timeout;
    let max_connections = opts.max_connections;
    let graceful = GracefulShutdown::new();
    let tracker = TaskTracker::new();
    let shared = Arc::new(Shared {
        tls,
        handler,
        opts,
        // Aborts handshakes still in progress when shutdown starts.
        stop: CancellationToken::new(),
        // Drops connections still open when the drain timeout ends.
        force: CancellationToken::new(),
        tracker: tracker.clone(),
    });
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut overload = OverloadLog::default();
    let mut next_id: u64 = 0;
    let mut next_listener = 0;
    let mut shutdown = pin!(shutdown);

    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = accept_any(&listeners, &mut next_listener) => accepted,
        };
        let (stream, remote_addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => {
                debug!(error = %e, "a connection failed before it was accepted");
                continue;
            }
            Err(e) => {
                error!(error = %e, "accepting connections failed; pausing before the next try");
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            overload.refused(remote_addr, max_connections);
            drop(stream);
            continue;
        };
        next_id += 1;
        let accepted = Accepted {
            id: next_id,
            stream,
            remote_addr,
            // Taken now, before shutdown can start, so that a connection still handshaking
            // when it does is told to shut down as soon as it is serving.
            watcher: graceful.watcher(),
            _permit: permit,
        };
        tracker.spawn(run_connection(Arc::clone(&shared), accepted));
    }

    drop(listeners);
    info!(
        open = tracker.len(),
        "stopped accepting connections; draining open connections"
    );
    shared.stop.cancel();
    tracker.close();
    let drain = {
        let tracker = tracker.clone();
        async move {
            graceful.shutdown().await;
            tracker.wait().await;
        }
    };
    if tokio::time::timeout(drain_timeout, drain).await.is_err() {
        warn!(
            open = tracker.len(),
            timeout = ?drain_timeout,
            "connections still busy after the drain timeout; closing them"
        );
        shared.force.cancel();
        tracker.wait().await;
    }
    info!("all connections closed");
    Ok(())
}

/// What every connection task shares.
struct Shared<H> {
    tls: Arc<ReloadableTls>,
    handler: Arc<H>,
    opts: ServeOptions,
    stop: CancellationToken,
    force: CancellationToken,
    tracker: TaskTracker,
}

/// A connection the accept loop handed to its task.
struct Accepted {
    id: u64,
    stream: TcpStream,
    remote_addr: SocketAddr,
    watcher: Watcher,
    /// Held for the life of the connection task: one slot of `max_connections`.
    _permit: OwnedSemaphorePermit,
}

/// Accepts from whichever listener is ready, starting the scan after the listener served last
/// so that a busy listener cannot starve the others.
fn accept_any<'a>(
    listeners: &'a [TcpListener],
    next: &'a mut usize,
) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + 'a {
    std::future::poll_fn(move |cx| {
        let count = listeners.len();
        for (offset, listener) in listeners
            .iter()
            .enumerate()
            .cycle()
            .skip(*next % count.max(1))
            .take(count)
        {
            if let Poll::Ready(result) = listener.poll_accept(cx) {
                *next = offset + 1;
                return Poll::Ready(result);
            }
        }
        Poll::Pending
    })
}

/// Accept errors that concern one connection only (the peer gave up before we took it).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Rate-limits the warning about connections refused over the limit.
#[derive(Default)]
struct OverloadLog {
    last_warned: Option<Instant>,
    unreported: u64,
}

impl OverloadLog {
    fn refused(&mut self, remote_addr: SocketAddr, max_connections: usize) {
        let due = self
            .last_warned
            .is_none_or(|at| at.elapsed() >= OVERLOAD_WARN_INTERVAL);
        if due {
            warn!(
                remote = %remote_addr,
                max_connections,
                also_refused_since_last_warning = self.unreported,
                "connection limit reached; closing new connections"
            );
            self.last_warned = Some(Instant::now());
            self.unreported = 0;
        } else {
            self.unreported += 1;
        }
    }
}

async fn run_connection<H: Handler>(shared: Arc<Shared<H>>, accepted: Accepted) {
    let Accepted {
        id,
        stream,
        remote_addr,
        watcher,
        _permit,
    } = accepted;
    if let Err(e) = stream.set_nodelay(true) {
        debug!(conn = id, remote = %remote_addr, error = %e, "could not disable Nagle");
    }

    let acceptor = TlsAcceptor::from(shared.tls.current());
    let handshake = tokio::select! {
        biased;
        () = shared.stop.cancelled() => {
            debug!(conn = id, remote = %remote_addr, "shutdown during the TLS handshake");
            return;
        }
        result = tokio::time::timeout(shared.opts.handshake_timeout, acceptor.accept(stream)) => {
            result
        }
    };
    let tls_stream = match handshake {
        Ok(Ok(tls_stream)) => tls_stream,
        Ok(Err(e)) => {
            debug!(conn = id, remote = %remote_addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(conn = id, remote = %remote_addr, "TLS handshake timed out");
            return;
        }
    };

    let session = &tls_stream.get_ref().1;
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let alpn_h2 = alpn.as_deref() == Some(b"h2");
    let peer_certificate = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| PeerCertificate::new(leaf.as_ref().to_vec()));
    debug!(
        conn = id,
        remote = %remote_addr,
        tls = ?session.protocol_version(),
        alpn_h2,
        client_certificate = peer_certificate.is_some(),
        "connection established"
    );
    let info = Arc::new(ConnectionInfo {
        id,
        remote_addr,
        peer_certificate,
        alpn_h2,
        state: Arc::new(Mutex::new(ConnState::default())),
    });

    let activity = Arc::new(Activity::new());
    let service = {
        let handler = Arc::clone(&shared.handler);
        let activity = Arc::clone(&activity);
        service_fn(move |req| {
            let handler = Arc::clone(&handler);
            let info = Arc::clone(&info);
            let in_flight = InFlight::begin(Arc::clone(&activity));
            async move {
                let response = handler.handle(req, info).await;
                drop(in_flight);
                Ok::<_, Infallible>(response)
            }
        })
    };

    let mut builder = auto::Builder::new(TrackedExecutor {
        tracker: shared.tracker.clone(),
        force: shared.force.clone(),
    });
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.opts.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    // ALPN already settled the protocol; sniffing for the HTTP/2 preface is only for clients
    // that sent no ALPN.
    let builder = match alpn.as_deref() {
        Some(b"h2") => builder.http2_only(),
        Some(b"http/1.1") => builder.http1_only(),
        _ => builder,
    };
    let connection = watcher.watch(builder.serve_connection(TokioIo::new(tls_stream), service));

    tokio::select! {
        result = connection => match result {
            Ok(()) => debug!(conn = id, remote = %remote_addr, "connection closed"),
            Err(e) => debug!(conn = id, remote = %remote_addr, error = %e, "connection ended with an error"),
        },
        () = idle_expired(&activity, shared.opts.idle_timeout) => {
            debug!(conn = id, remote = %remote_addr, "closing idle connection");
        }
        () = shared.force.cancelled() => {
            info!(conn = id, remote = %remote_addr, "closing connection: drain timeout reached");
        }
    }
}

/// Runs HTTP/2 stream tasks inside the server's task tracker, so that [`serve`] waits for them
/// and can end them when the drain timeout is reached.
#[derive(Clone)]
struct TrackedExecutor {
    tracker: TaskTracker,
    force: CancellationToken,
}

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let force = self.force.clone();
        self.tracker.spawn(async move {
            force.run_until_cancelled(future).await;
        });
    }
}

/// Requests in progress on one connection and when the last one finished.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` at which the last request finished.
    last_done_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
        }
    }

    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let ms = self.last_done_ms.load(Ordering::SeqCst);
        Some(self.started + Duration::from_millis(ms))
    }
}

/// Counts one request as in progress until dropped (also when the request is cancelled).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let elapsed = u64::try_from(self.0.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Record the finish time before the count drops, so the idle check never sees zero
        // requests together with a stale finish time.
        self.0.last_done_ms.fetch_max(elapsed, Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Resolves once the connection has had no request in progress for `idle`.
async fn idle_expired(activity: &Activity, idle: Duration) {
    loop {
        let deadline = match activity.idle_since() {
            Some(since) if since.elapsed() >= idle => return,
            Some(since) => since + idle,
            // A request is running; look again one idle period from now.
            None => Instant::now() + idle,
        };
        tokio::time::sleep_until(deadline.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mdm_service::ports::{Channel, EnrollmentState, Timestamp};

    fn binding(id: &str) -> EnrollmentBinding {
        EnrollmentBinding {
            id: id.to_owned(),
            device_id: id.split(':').next().unwrap_or(id).to_owned(),
            channel: Channel::Device,
            state: EnrollmentState::Enrolled,
            identity_sha256: format!("identity-of-{id}"),
            awaiting_configuration: false,
            last_seen_at: Timestamp(0),
        }
    }

    #[test]
    fn a_kept_binding_is_found_only_at_its_version_and_few_are_kept() {
        let mut state = ConnState::default();
        state.keep_binding(&binding("D"), 7);
        assert_eq!(state.kept_binding("D", 7), Some(&binding("D")));
        assert_eq!(state.kept_binding("D", 8), None, "the record moved on");
        assert_eq!(state.kept_binding("D:U", 7), None);

        // Keeping it again replaces it.
        state.keep_binding(&binding("D"), 8);
        assert_eq!(state.kept_binding("D", 7), None);
        assert_eq!(state.kept_binding("D", 8), Some(&binding("D")));

        // The oldest goes first.
        for i in 0..KEPT_BINDINGS {
            state.keep_binding(&binding(&format!("D:U{i}")), 1);
        }
        assert_eq!(state.bindings.len(), KEPT_BINDINGS);
        assert_eq!(state.kept_binding("D", 8), None);
        assert!(state
            .kept_binding(&format!("D:U{}", KEPT_BINDINGS - 1), 1)
            .is_some());
    }
}
