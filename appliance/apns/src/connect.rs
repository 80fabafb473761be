//! Opening one HTTP/2 connection to the push service: TCP (directly or through an HTTP
//! CONNECT proxy), TLS with the push certificate, HTTP/2.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mdm_net::{Endpoint, Proxy};
use rustls::client::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::error::ConnectError;
use crate::gate::StreamGate;
use crate::tls;

/// How long an unanswered HTTP/2 PING may stay unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// What every connection is opened with.
#[derive(Debug, Clone)]
pub(crate) struct ConnectSettings {
    pub(crate) endpoint: Endpoint,
    pub(crate) proxy: Option<Proxy>,
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalive_interval: Option<Duration>,
}

/// What the task driving a connection shares with the requests on it.
#[derive(Debug)]
pub(crate) struct ConnShared {
    pub(crate) gate: StreamGate,
    /// Set when the connection ended because the server refused our certificate. With
    /// TLS 1.3 that refusal arrives after the handshake, and requests still queued on the
    /// connection only learn that it closed.
    refused: OnceLock<String>,
}

impl ConnShared {
    pub(crate) fn new(stream_cap: usize) -> Self {
        ConnShared {
            gate: StreamGate::new(stream_cap),
            refused: OnceLock::new(),
        }
    }

    /// Why the server refused our certificate, if that is how the connection ended.
    pub(crate) fn certificate_refusal(&self) -> Option<&str> {
        self.refused.get().map(String::as_str)
    }

    fn note_io_error(&self, error: &std::io::Error) {
        if let Some(refusal) = tls::certificate_refusal(error) {
            // The first refusal is the one that counts.
            let _ = self.refused.set(refusal);
        }
    }
}

/// The TLS stream as HTTP/2 sees it, with its I/O errors inspected on the way: h2 keeps
/// only the text of an I/O error, so the TLS alert behind it can only be recognised here.
struct Observed<T> {
    inner: T,
    shared: Arc<ConnShared>,
}

impl<T> Observed<T> {
    fn note<R>(&self, polled: Poll<std::io::Result<R>>) -> Poll<std::io::Result<R>> {
        if let Poll::Ready(Err(e)) = &polled {
            self.shared.note_io_error(e);
        }
        polled
    }
}

impl<T: AsyncRead + Unpin> Observed<T> {
    /// Notes a write error, and when it says the server closed the connection, reads once
    /// more: a server that refuses our certificate sends its alert and closes, and a write of
    /// ours that crosses the close fails with a broken pipe or a reset before anything has
    /// read the alert waiting in the socket.
    fn note_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        use std::io::ErrorKind as K;
        if let Poll::Ready(Err(e)) = &polled {
            self.shared.note_io_error(e);
            let closed = matches!(
                e.kind(),
                K::BrokenPipe | K::ConnectionReset | K::ConnectionAborted
            );
            if closed && self.shared.certificate_refusal().is_none() {
                let mut scratch = [0u8; 256];
                let mut buf = ReadBuf::new(&mut scratch);
                if let Poll::Ready(Err(read)) = Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                    self.shared.note_io_error(&read);
                }
            }
        }
        polled
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Observed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.note(polled)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Observed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.note_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.note_write(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.note(polled)
    }
}

/// Opens a connection and spawns the task that drives it; returns the handle requests are
/// sent through. The task keeps `gate` informed of the server's stream limit, closes it when
/// the connection ends, and ends by itself then.
pub(crate) async fn open(
    settings: &ConnectSettings,
    tls: Arc<ClientConfig>,
    shared: Arc<ConnShared>,
    conn_id: u64,
) -> Result<SendRequest<Full<Bytes>>, ConnectError> {
    let target = settings
        .proxy
        .as_ref()
        .map_or(settings.endpoint.authority(), |p| p.addr())
        .to_string();
    match tokio::time::timeout(
        settings.connect_timeout,
        open_inner(settings, tls, shared, conn_id),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout {
            target,
            timeout_ms: settings.connect_timeout.as_millis(),
        }),
    }
}

async fn open_inner(
    settings: &ConnectSettings,
    tls: Arc<ClientConfig>,
    shared: Arc<ConnShared>,
    conn_id: u64,
) -> Result<SendRequest<Full<Bytes>>, ConnectError> {
    let endpoint = &settings.endpoint;
    let tcp = mdm_net::dial(endpoint, settings.proxy.as_ref()).await?;
    let stream = TlsConnector::from(tls)
        .connect(endpoint.server_name().clone(), tcp)
        .await
        .map_err(|source| ConnectError::Tls {
            host: endpoint.host().to_string(),
            source,
        })?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
        return Err(ConnectError::NoHttp2 {
            host: endpoint.host().to_string(),
        });
    }

    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    // One stream until the server's first SETTINGS says how many it takes: streams opened
    // above its limit before that would be refused (RFC 9113 §5.1.2). The SETTINGS frame is
    // the server's first frame, so this costs the first push at most a round trip.
    builder.initial_max_send_streams(1);
    if let Some(interval) = settings.keepalive_interval {
        builder
            .keep_alive_interval(interval)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
    }
    let (sender, conn) = builder
        .handshake::<_, Full<Bytes>>(TokioIo::new(Observed {
            inner: stream,
            shared: Arc::clone(&shared),
        }))
        .await
        .map_err(|source| ConnectError::Http2 {
            host: endpoint.host().to_string(),
            source,
        })?;

    tokio::spawn(async move {
        let mut conn = std::pin::pin!(conn);
        let ended = std::future::poll_fn(|cx| {
            let polled = std::future::Future::poll(conn.as_mut(), cx);
            // Polled whenever a frame arrives, SETTINGS included, so the gate follows the
            // server's limit as it changes.
            shared
                .gate
                .set_server_limit(conn.current_max_send_streams());
            polled
        })
        .await;
        match ended {
            Ok(()) => debug!(conn_id, "push connection closed"),
            Err(e) => debug!(conn_id, error = %e, "push connection ended with an error"),
        }
        shared.gate.close();
    });
    Ok(sender)
}
