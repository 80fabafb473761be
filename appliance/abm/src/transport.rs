//! HTTP/1.1 over TLS to the ABM API, with a few kept-alive connections.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use mdm_net::{Endpoint, Proxy};
use rustls::ClientConfig;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tracing::debug;

/// Largest answer body read. A page of 1000 devices is a few hundred kilobytes.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Idle connections kept for reuse: the calls of one ABM connection are mostly sequential.
const MAX_IDLE: usize = 2;
/// An idle connection older than this is closed rather than reused: servers and proxies
/// drop idle keep-alive connections after a while, and a request on one they just dropped
/// costs a round trip.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One request, kept so it can be sent again.
pub(crate) struct Outgoing {
    pub(crate) method: Method,
    /// The path with the endpoint's prefix.
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// A complete answer.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// Why no complete answer arrived.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// TCP, proxy or TLS.
    #[error("{0}")]
    Connect(String),
    /// The request or the answer failed on an open connection.
    #[error("the connection to {host} failed during the request: {reason}")]
    Exchange { host: String, reason: String },
    /// The answer body is larger than the client reads.
    #[error("the answer is larger than {MAX_BODY} bytes")]
    TooLarge,
    /// No complete answer within the per-request timeout.
    #[error("no complete answer from {host} within {timeout_ms} ms")]
    Timeout { host: String, timeout_ms: u128 },
}

/// Aborts the task driving a connection when the connection's handle is dropped, so that a
/// connection abandoned mid-request (timeout) does not linger waiting for the server.
struct Driver(JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    _driver: Driver,
    id: u64,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Sends requests to one endpoint.
pub(crate) struct Transport {
    endpoint: Endpoint,
    proxy: Option<Proxy>,
    tls: TlsConnector,
    host_header: HeaderValue,
    idle: Mutex<Vec<Idle>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// A failed exchange, and whether it failed before any answer arrived (the request may then
/// never have reached the server).
struct Failed {
    error: SendError,
    before_answer: bool,
}

impl Transport {
    pub(crate) fn new(
        endpoint: Endpoint,
        proxy: Option<Proxy>,
        tls: Arc<ClientConfig>,
    ) -> Result<Self, http::header::InvalidHeaderValue> {
        let host_header = HeaderValue::from_str(endpoint.request_authority())?;
        Ok(Transport {
            endpoint,
            proxy,
            tls: TlsConnector::from(tls),
            host_header,
            idle: Mutex::new(Vec::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends `request` and reads the whole answer, on a kept-alive connection when one is
    /// idle. Not bounded in time: the caller applies its timeout.
    pub(crate) async fn send(&self, request: &Outgoing) -> Result<Reply, SendError> {
        if let Some(conn) = self.take_idle().await {
            match self.exchange(conn, request).await {
                Ok(reply) => return Ok(reply),
                // The server may have closed the idle connection just as the request went
                // out. Sending again on a fresh connection is safe: every ABM call is
                // idempotent (see `client.rs`).
                Err(Failed {
                    error,
                    before_answer: true,
                }) => {
                    debug!(error = %error, "a kept-alive ABM connection failed; sending on a new one");
                }
                Err(failed) => return Err(failed.error),
            }
        }
        let conn = self.open().await?;
        self.exchange(conn, request).await.map_err(|f| f.error)
    }

    async fn take_idle(&self) -> Option<Conn> {
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()?;
            if idle.since.elapsed() > IDLE_TIMEOUT || idle.conn.sender.is_closed() {
                continue;
            }
            let mut conn = idle.conn;
            // Ready at once unless the connection closed meanwhile.
            if conn.sender.ready().await.is_ok() {
                return Some(conn);
            }
        }
    }

    fn put_idle(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|i| i.since.elapsed() <= IDLE_TIMEOUT && !i.conn.sender.is_closed());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn open(&self) -> Result<Conn, SendError> {
        let host = self.endpoint.host();
        let tcp = mdm_net::dial(&self.endpoint, self.proxy.as_ref())
            .await
            .map_err(|e| SendError::Connect(e.to_string()))?;
        let tls = self
            .tls
            .connect(self.endpoint.server_name().clone(), tcp)
            .await
            .map_err(|e| SendError::Connect(format!("TLS handshake with {host} failed: {e}")))?;
        let (sender, connection) = http1::Builder::new()
            .handshake::<_, Full<Bytes>>(TokioIo::new(tls))
            .await
            .map_err(|e| SendError::Connect(format!("HTTP handshake with {host} failed: {e}")))?;
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(conn_id = id, error = %e, "ABM connection ended with an error");
            }
        });
        debug!(conn_id = id, target = %self.endpoint.authority(), via_proxy = self.proxy.is_some(), "connected to the ABM API");
        Ok(Conn {
            sender,
            _driver: Driver(driver),
            id,
        })
    }

    async fn exchange(&self, mut conn: Conn, request: &Outgoing) -> Result<Reply, Failed> {
        let exchange_error = |reason: String, before_answer| Failed {
            error: SendError::Exchange {
                host: self.endpoint.host().to_string(),
                reason,
            },
            before_answer,
        };
        let mut builder = Request::builder()
            .method(request.method.clone())
            .uri(request.path.as_str());
        if let Some(headers) = builder.headers_mut() {
            headers.clone_from(&request.headers);
            headers.insert(HOST, self.host_header.clone());
        }
        let http_request = builder
            .body(Full::new(request.body.clone()))
            .map_err(|e| exchange_error(format!("cannot build the request: {e}"), false))?;
        let answer = conn
            .sender
            .send_request(http_request)
            .await
            .map_err(|e| exchange_error(e.to_string(), true))?;
        let (parts, body) = answer.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    Failed {
                        error: SendError::TooLarge,
                        before_answer: false,
                    }
                } else {
                    exchange_error(e.to_string(), false)
                }
            })?
            .to_bytes();
        debug!(conn_id = conn.id, "ABM answer read");
        self.put_idle(conn);
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}
