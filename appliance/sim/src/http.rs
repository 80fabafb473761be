//! A small HTTP/1.1 client (hyper over tokio-rustls) that behaves like a device's: one
//! kept-alive connection reused across requests, a configurable set of trusted CAs, and
//! an optional TLS client certificate. Every answer, whatever its status, comes back as
//! an [`HttpResponse`]; only transport failures are errors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use der::Encode;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use x509_cert::Certificate;

use crate::error::{CryptoError, HttpError, UnexpectedStatus};
use crate::keys::PrivateKey;
use crate::x509;

/// Largest response body accepted; profiles and CertReps are a few kilobytes.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// The User-Agent a device's MDM client sends (shape only: servers must not depend on it).
pub const DEVICE_USER_AGENT: &str = "MDM/1.0";

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl HttpResponse {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A header as a string, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Turns this answer into the error value carried by typed errors.
    pub fn to_unexpected(&self) -> UnexpectedStatus {
        UnexpectedStatus {
            status: self.status,
            content_type: self.header("content-type").map(str::to_owned),
            body: self.body.to_vec(),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
}

struct Connection {
    target: Target,
    sender: SendRequest<Full<Bytes>>,
}

/// A certificate and key presented as TLS client identity.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    /// The certificate chain, leaf first.
    pub chain: Vec<Certificate>,
    /// The leaf's private key.
    pub key: PrivateKey,
}

/// The HTTP client. Cheap to share by reference: requests are serialised on its single
/// connection, which is what a device's MDM client does too. Must be used inside a tokio
/// runtime (each connection's driver runs as a spawned task).
pub struct HttpClient {
    tls: Option<Arc<rustls::ClientConfig>>,
    conn: tokio::sync::Mutex<Option<Connection>>,
    timeout: Duration,
    connections_opened: AtomicUsize,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("tls", &self.tls.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl HttpClient {
    /// A client trusting `trust` for https URLs and presenting `identity` (if any) as its
    /// TLS client certificate. With an empty `trust`, only plain http URLs work.
    pub fn new(trust: &[Certificate], identity: Option<&TlsIdentity>) -> Result<Self, HttpError> {
        let tls = if trust.is_empty() {
            None
        } else {
            let mut roots = rustls::RootCertStore::empty();
            for cert in trust {
                let der = cert.to_der().map_err(|_| HttpError::BadTrustAnchor)?;
                roots
                    .add(CertificateDer::from(der))
                    .map_err(|_| HttpError::BadTrustAnchor)?;
            }
            let builder = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots);
            let config = match identity {
                None => builder.with_no_client_auth(),
                Some(id) => {
                    let chain = id
                        .chain
                        .iter()
                        .map(|c| c.to_der().map(CertificateDer::from))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| HttpError::BadTrustAnchor)?;
                    let key =
                        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.pkcs8_der().to_vec()));
                    builder.with_client_auth_cert(chain, key)?
                }
            };
            Some(Arc::new(config))
        };
        Ok(Self {
            tls,
            conn: tokio::sync::Mutex::new(None),
            timeout: Duration::from_secs(30),
            connections_opened: AtomicUsize::new(0),
        })
    }

    /// A client trusting every certificate in a PEM bundle.
    pub fn from_ca_pem(pem: &[u8]) -> Result<Self, HttpError> {
        let certs =
            x509::certificates_from_pem(pem).map_err(|_: CryptoError| HttpError::BadTrustAnchor)?;
        if certs.is_empty() {
            return Err(HttpError::NoTrustAnchors);
        }
        Self::new(&certs, None)
    }

    /// Sets the per-request timeout (connect + exchange), 30 s by default.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many connections this client has opened so far (keep-alive diagnostics).
    pub fn connections_opened(&self) -> usize {
        self.connections_opened.load(Ordering::Relaxed)
    }

    /// Closes the kept-alive connection; the next request opens a new one.
    pub async fn disconnect(&self) {
        *self.conn.lock().await = None;
    }

    /// GET `url`.
    pub async fn get(&self, url: &str, headers: HeaderMap) -> Result<HttpResponse, HttpError> {
        self.request(Method::GET, url, headers, Vec::new()).await
    }

    /// POST `body` to `url` with `content_type`.
    pub async fn post(
        &self,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<HttpResponse, HttpError> {
        self.request(Method::POST, url, content_header(content_type)?, body)
            .await
    }

    /// PUT `body` to `url` with `content_type`.
    pub async fn put(
        &self,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<HttpResponse, HttpError> {
        self.request(Method::PUT, url, content_header(content_type)?, body)
            .await
    }

    /// Sends a request and reads the whole answer.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<HttpResponse, HttpError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.request_inner(method, url, headers, body))
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    }

    async fn request_inner(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<HttpResponse, HttpError> {
        let (target, path, authority) = parse_url(url)?;
        let body = Bytes::from(body);
        let mut guard = self.conn.lock().await;

        // Try the kept-alive connection first; if the server closed it while idle, the
        // request fails without a response and is retried once on a fresh connection.
        let mut kept = guard
            .take()
            .filter(|c| c.target == target && !c.sender.is_closed());
        if let Some(c) = kept.as_mut() {
            if c.sender.ready().await.is_err() {
                kept = None;
            }
        }
        let reused = kept.is_some();
        let conn = match kept {
            Some(c) => c,
            None => self.connect(&target).await?,
        };
        let conn = guard.insert(conn);
        let req = build_request(&method, &path, &authority, &headers, body.clone())?;
        let response = match conn.sender.send_request(req).await {
            Ok(r) => r,
            Err(e) if reused && (e.is_canceled() || e.is_closed() || e.is_incomplete_message()) => {
                tracing::debug!("kept-alive connection was closed by the server; reconnecting");
                *guard = None;
                let conn = guard.insert(self.connect(&target).await?);
                let req = build_request(&method, &path, &authority, &headers, body)?;
                conn.sender.send_request(req).await?
            }
            Err(e) => {
                *guard = None;
                return Err(e.into());
            }
        };
        let (parts, incoming) = response.into_parts();
        let collected = Limited::new(incoming, MAX_BODY)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(h) => HttpError::Hyper(*h),
                Err(_) => HttpError::BodyTooLarge(MAX_BODY),
            })?;
        let close = parts
            .headers
            .get(http::header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if close {
            *guard = None;
        }
        Ok(HttpResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: collected.to_bytes(),
        })
    }

    async fn connect(&self, target: &Target) -> Result<Connection, HttpError> {
        let authority = format!("{}:{}", target.host, target.port);
        let io_err = |error| HttpError::Connect {
            authority: authority.clone(),
            error,
        };
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(io_err)?;
        tcp.set_nodelay(true).map_err(io_err)?;
        let io: Box<dyn Io> = if target.tls {
            let config = self.tls.clone().ok_or(HttpError::NoTrustAnchors)?;
            let server_name =
                ServerName::try_from(target.host.clone()).map_err(|_| HttpError::InvalidUrl {
                    url: target.host.clone(),
                    reason: "host is not a valid TLS server name",
                })?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await
                .map_err(io_err)?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
        });
        self.connections_opened.fetch_add(1, Ordering::Relaxed);
        Ok(Connection {
            target: target.clone(),
            sender,
        })
    }
}

fn content_header(content_type: &str) -> Result<HeaderMap, HttpError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type).map_err(|e| HttpError::Request(e.into()))?,
    );
    Ok(headers)
}

fn build_request(
    method: &Method,
    path: &str,
    authority: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, HttpError> {
    let mut builder = Request::builder().method(method.clone()).uri(path);
    if let Some(h) = builder.headers_mut() {
        for (name, value) in headers {
            h.append(name.clone(), value.clone());
        }
        h.insert(
            HOST,
            HeaderValue::from_str(authority).map_err(|e| HttpError::Request(e.into()))?,
        );
        if !h.contains_key(USER_AGENT) {
            h.insert(USER_AGENT, HeaderValue::from_static(DEVICE_USER_AGENT));
        }
    }
    Ok(builder.body(Full::new(body))?)
}

/// Splits an absolute http(s) URL into the connection target, the origin-form path and
/// the Host header value.
fn parse_url(url: &str) -> Result<(Target, String, String), HttpError> {
    let invalid = |reason| HttpError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let uri: Uri = url.parse().map_err(|_| invalid("not a URI"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(invalid("scheme must be http or https")),
    };
    let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    Ok((
        Target { tls, host, port },
        path,
        authority.as_str().to_owned(),
    ))
}

/// Builds a header map from name/value pairs.
pub fn headers(pairs: &[(&str, &str)]) -> Result<HeaderMap, HttpError> {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| HttpError::Request(e.into()))?;
        let value = HeaderValue::from_str(value).map_err(|e| HttpError::Request(e.into()))?;
        map.append(name, value);
    }
    Ok(map)
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters pass through).
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let (t, p, a) = parse_url("https://mdm.example.lan:8443/mdm/checkin?x=1").unwrap();
        assert_eq!(
            t,
            Target {
                tls: true,
                host: "mdm.example.lan".into(),
                port: 8443
            }
        );
        assert_eq!(p, "/mdm/checkin?x=1");
        assert_eq!(a, "mdm.example.lan:8443");
        let (t, p, _) = parse_url("http://[::1]").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.tls, p.as_str()),
            ("::1", 80, false, "/")
        );
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("/relative").is_err());
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("a b/c+d=="), "a%20b%2Fc%2Bd%3D%3D");
        assert_eq!(percent_encode("CA-1_x.y~"), "CA-1_x.y~");
    }
}
