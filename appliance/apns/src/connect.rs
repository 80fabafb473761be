//! Opening one HTTP/2 connection to the push service: TCP (directly or through an HTTP
//! CONNECT proxy), TLS with the push certificate, HTTP/2.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::client::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;
use zeroize::Zeroizing;

use crate::config::ProxyConfig;
use crate::error::{ApnsError, ConnectError};
use crate::gate::StreamGate;
use crate::tls;

/// Longest proxy answer head accepted; real ones are a few hundred bytes.
const MAX_PROXY_HEAD: usize = 8 * 1024;
/// How long an unanswered HTTP/2 PING may stay unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The push service's address, parsed once from the base URL.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// Host name or IP address, without IPv6 brackets.
    pub(crate) host: String,
    /// `host:port` as it goes into CONNECT and the TCP dial.
    pub(crate) authority: String,
    /// The request `:authority`: the host, with the port only when it is not 443.
    pub(crate) request_authority: String,
    pub(crate) server_name: ServerName<'static>,
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> Result<Self, ApnsError> {
        let bad = |reason: &str| ApnsError::BaseUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the scheme must be https"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user information is not allowed"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad(
                "a path or query is not allowed; give only https://host[:port]",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = authority.port_u16().unwrap_or(443);
        let server_name =
            ServerName::try_from(host.clone()).map_err(|_| bad("the host is not a valid name"))?;
        let request_authority = if port == 443 {
            authority.host().to_string()
        } else {
            join_host_port(&host, port)
        };
        Ok(Endpoint {
            authority: join_host_port(&host, port),
            request_authority,
            host,
            server_name,
        })
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A parsed [`ProxyConfig`].
#[derive(Clone)]
pub(crate) struct Proxy {
    /// `host:port` of the proxy.
    pub(crate) addr: String,
    /// The full `Proxy-Authorization` value.
    authorization: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("authenticated", &self.authorization.is_some())
            .finish()
    }
}

impl Proxy {
    pub(crate) fn parse(config: &ProxyConfig) -> Result<Self, ApnsError> {
        let bad = |reason: &str| ApnsError::ProxyUrl {
            url: config.url.clone(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = config
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad(
                "the scheme must be http (the tunnel itself carries TLS)",
            ));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("put credentials in basic_auth, not in the URL"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad(
                "a path or query is not allowed; give only http://host:port",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = authority.port_u16().unwrap_or(80);
        let authorization = match &config.basic_auth {
            None => None,
            Some(creds) => {
                if creds.username.contains(':') {
                    return Err(ApnsError::ProxyCredentials);
                }
                let joined = Zeroizing::new(format!("{}:{}", creds.username, *creds.password));
                let encoded = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(joined.as_bytes()),
                );
                Some(Zeroizing::new(format!("Basic {}", *encoded)))
            }
        };
        Ok(Proxy {
            addr: join_host_port(host, port),
            authorization,
        })
    }
}

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

impl<T: AsyncWrite + Unpin> AsyncWrite for Observed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.note(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.note(polled)
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
        .map_or_else(|| settings.endpoint.authority.clone(), |p| p.addr.clone());
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
    let tcp = match &settings.proxy {
        None => dial(&endpoint.authority).await?,
        Some(proxy) => {
            let mut tcp = dial(&proxy.addr).await?;
            tunnel(&mut tcp, proxy, &endpoint.authority).await?;
            tcp
        }
    };
    let stream = TlsConnector::from(tls)
        .connect(endpoint.server_name.clone(), tcp)
        .await
        .map_err(|source| ConnectError::Tls {
            host: endpoint.host.clone(),
            source,
        })?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
        return Err(ConnectError::NoHttp2 {
            host: endpoint.host.clone(),
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
            host: endpoint.host.clone(),
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

async fn dial(target: &str) -> Result<TcpStream, ConnectError> {
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|source| ConnectError::Tcp {
            target: target.to_string(),
            source,
        })?;
    // Pushes are small and latency matters more than packet count.
    tcp.set_nodelay(true).map_err(|source| ConnectError::Tcp {
        target: target.to_string(),
        source,
    })?;
    Ok(tcp)
}

/// Asks the proxy for a tunnel to `target` and reads its answer head.
async fn tunnel(tcp: &mut TcpStream, proxy: &Proxy, target: &str) -> Result<(), ConnectError> {
    let protocol = |reason: String| ConnectError::ProxyProtocol {
        proxy: proxy.addr.clone(),
        reason,
    };
    let mut request = Zeroizing::new(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"));
    if let Some(auth) = &proxy.authorization {
        request.push_str("Proxy-Authorization: ");
        request.push_str(auth);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| protocol(format!("cannot send CONNECT: {e}")))?;

    // Byte by byte: whatever follows the head belongs to the TLS stream and must stay in
    // the socket. This happens once per connection, so the cost does not matter.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_PROXY_HEAD {
            return Err(protocol(format!(
                "the answer head is longer than {MAX_PROXY_HEAD} bytes"
            )));
        }
        let byte = tcp.read_u8().await.map_err(|e| {
            protocol(format!(
                "the connection ended before the answer was complete ({e})"
            ))
        })?;
        head.push(byte);
    }
    let status_line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_string())
        .unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().and_then(|c| c.parse::<u16>().ok());
    let Some(code) = code.filter(|_| version.starts_with("HTTP/1.")) else {
        return Err(protocol(format!("unexpected status line {status_line:?}")));
    };
    if (200..300).contains(&code) {
        return Ok(());
    }
    let hint = match (code, proxy.authorization.is_some()) {
        (407, false) => ": the proxy wants credentials; configure the proxy user name and password",
        (407, true) => ": the proxy did not accept the configured credentials",
        (403, _) => ": the proxy does not allow this destination; allow api.push.apple.com:443",
        _ => "",
    };
    Err(ConnectError::ProxyRefused {
        proxy: proxy.addr.clone(),
        target: target.to_string(),
        status_line,
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyCredentials;

    #[test]
    fn base_urls() {
        let e = Endpoint::parse("https://api.push.apple.com").unwrap();
        assert_eq!(e.authority, "api.push.apple.com:443");
        assert_eq!(e.request_authority, "api.push.apple.com");
        assert_eq!(e.host, "api.push.apple.com");
        let e = Endpoint::parse("https://127.0.0.1:8443/").unwrap();
        assert_eq!(e.authority, "127.0.0.1:8443");
        assert_eq!(e.request_authority, "127.0.0.1:8443");
        assert!(matches!(e.server_name, ServerName::IpAddress(_)));
        let e = Endpoint::parse("https://[::1]:9").unwrap();
        assert_eq!(e.authority, "[::1]:9");
        assert_eq!(e.request_authority, "[::1]:9");
        let e = Endpoint::parse("https://[::1]").unwrap();
        assert_eq!(e.request_authority, "[::1]");
        assert_eq!(e.host, "::1");
        for bad in [
            "http://api.push.apple.com",
            "https://api.push.apple.com/3/device",
            "https://u:p@api.push.apple.com",
            "https://api.push.apple.com?x=1",
            "api.push.apple.com",
            "",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn proxy_urls_and_credentials() {
        let p = Proxy::parse(&ProxyConfig {
            url: "http://proxy.lan:3128/".into(),
            basic_auth: Some(ProxyCredentials {
                username: "mdm".into(),
                password: Zeroizing::new("s3cret".into()),
            }),
        })
        .unwrap();
        assert_eq!(p.addr, "proxy.lan:3128");
        // base64("mdm:s3cret")
        assert_eq!(
            p.authorization.as_deref().map(String::as_str),
            Some("Basic bWRtOnMzY3JldA==")
        );
        assert!(!format!("{p:?}").contains("bWRt"));
        let bad_user = ProxyConfig {
            url: "http://proxy.lan:3128".into(),
            basic_auth: Some(ProxyCredentials {
                username: "a:b".into(),
                password: Zeroizing::new(String::new()),
            }),
        };
        assert!(matches!(
            Proxy::parse(&bad_user),
            Err(ApnsError::ProxyCredentials)
        ));
        for bad in [
            "https://proxy.lan:3128",
            "http://u:p@proxy.lan:1",
            "http://proxy.lan:1/x",
        ] {
            let cfg = ProxyConfig {
                url: bad.into(),
                basic_auth: None,
            };
            assert!(Proxy::parse(&cfg).is_err(), "{bad} should be refused");
        }
    }
}
