//! A small HTTPS client for the admin API: HTTP/1.1 (hyper) over TLS (rustls, aws-lc-rs),
//! trusting only the appliance CA, with a bearer token on every request.
//!
//! One connection is opened lazily and reused for the requests of one command (paging
//! through devices); it is re-opened if the appliance closed it in between.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use crate::error::CliError;
use crate::table::clean;

/// Limit for TCP connect and, separately, for the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit for one request, from sending it to the last byte of the answer. Generous because a
/// long device list or a command result with a Mac's application inventory can be large.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Limit for a request the appliance answers only after talking to Apple: a sync fetches
/// every device page by page and then assigns profiles in batches of 1000, which for a large
/// organisation takes minutes, with Apple's own back-off included.
pub const APPLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest answer accepted; protects the CLI from a misdirected `--server`.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// How much of a non-API error body is quoted back to the admin.
const QUOTED_BODY_CHARS: usize = 200;

/// The admin API's path prefix.
pub const API_PREFIX: &str = "/api/v1";

/// Where the appliance is, parsed from `--server`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `https://host:port` plus any path prefix, without a trailing slash; used in messages.
    origin: String,
    /// Host to connect to (IPv6 without brackets).
    host: String,
    port: u16,
    /// The `Host` header value.
    authority: String,
    /// The name the certificate must be valid for.
    server_name: ServerName<'static>,
    /// Path under which the appliance is served (usually empty), without a trailing slash.
    prefix: String,
}

impl Endpoint {
    /// Parses an absolute `https://` URL. A path is kept as a prefix (for an appliance behind
    /// a reverse proxy); credentials, queries and fragments are refused.
    pub fn parse(url: &str) -> Result<Self, CliError> {
        let bad = |reason: &str| CliError::ServerUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = url.trim();
        if trimmed.is_empty() {
            return Err(CliError::NoServer);
        }
        let uri: Uri = trimmed.parse().map_err(|e: http::uri::InvalidUri| {
            bad(&format!("not a URL ({e}); write it as https://HOST:PORT"))
        })?;
        match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => {}
            Some(s) if s.eq_ignore_ascii_case("http") => {
                return Err(bad(
                    "plain http would send the API token unencrypted; use https://",
                ))
            }
            _ => return Err(bad("it must start with https://")),
        }
        let authority = uri.authority().ok_or_else(|| bad("it names no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "credentials in the URL are not supported; use --token-file",
            ));
        }
        if uri.query().is_some() {
            return Err(bad("it must not have a query string"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(bad("it names no host"));
        }
        let port = authority.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| bad("the host is neither a DNS name nor an IP address"))?;
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let origin = format!("https://{}{}", authority.as_str(), prefix);
        Ok(Endpoint {
            origin,
            host,
            port,
            authority: authority.as_str().to_owned(),
            server_name,
            prefix,
        })
    }

    /// The appliance address as shown in messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// Builds the TLS client configuration whose only roots are the certificates in `ca`.
/// `origin` is used in the error when no CA is given.
pub fn tls_config(ca: Option<&Path>, origin: &str) -> Result<Arc<ClientConfig>, CliError> {
    let Some(path) = ca else {
        return Err(CliError::NoCa {
            url: origin.to_owned(),
        });
    };
    let pem = std::fs::read(path).map_err(|source| CliError::CaFile {
        path: path.to_path_buf(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| CliError::CaPem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        roots.add(cert).map_err(|source| CliError::CaCertificate {
            path: path.to_path_buf(),
            source,
        })?;
    }
    if roots.is_empty() {
        return Err(CliError::CaPem {
            path: path.to_path_buf(),
            reason: "no BEGIN CERTIFICATE block found".into(),
        });
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CliError::TlsConfig)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The appliance also speaks h2; this client only speaks HTTP/1.1 and says so.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a request carries.
#[derive(Debug, Clone)]
pub enum RequestBody {
    /// Nothing.
    Empty,
    /// A JSON document.
    Json(serde_json::Value),
    /// Raw bytes with their content type.
    Raw {
        /// The `Content-Type`.
        content_type: &'static str,
        /// The body.
        bytes: Bytes,
    },
}

/// An authenticated admin API client.
pub struct ApiClient {
    endpoint: Endpoint,
    tls: Arc<ClientConfig>,
    token: Zeroizing<String>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token must never reach a log or error line.
        f.debug_struct("ApiClient")
            .field("endpoint", &self.endpoint.origin)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A client for `endpoint` that authenticates with `token`.
    pub fn new(endpoint: Endpoint, tls: Arc<ClientConfig>, token: Zeroizing<String>) -> Self {
        ApiClient {
            endpoint,
            tls,
            token,
            sender: None,
        }
    }

    /// The appliance address, for messages.
    pub fn origin(&self) -> &str {
        self.endpoint.origin()
    }

    /// Sends a request to `path` (which starts with [`API_PREFIX`] and may carry a query) and
    /// returns the body of a 2xx answer. Any other status becomes [`CliError::Api`].
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: RequestBody,
    ) -> Result<Bytes, CliError> {
        self.call_within(method, path, body, REQUEST_TIMEOUT).await
    }

    /// [`ApiClient::call`] with its own limit for the whole exchange, for requests that are
    /// known to take long (see [`APPLE_TIMEOUT`]).
    pub async fn call_within(
        &mut self,
        method: Method,
        path: &str,
        body: RequestBody,
        limit: Duration,
    ) -> Result<Bytes, CliError> {
        let (status, bytes) = self.answer_within(method, path, body, limit).await?;
        interpret(status, bytes)
    }

    /// Sends a request and returns the status with the body, whatever the status: for the
    /// few endpoints whose refusals carry a report worth printing (a pre-enrollment import
    /// answers 422 with every row error). Transport failures are still errors.
    pub async fn answer(
        &mut self,
        method: Method,
        path: &str,
        body: RequestBody,
    ) -> Result<(StatusCode, Bytes), CliError> {
        self.answer_within(method, path, body, REQUEST_TIMEOUT)
            .await
    }

    async fn answer_within(
        &mut self,
        method: Method,
        path: &str,
        body: RequestBody,
        limit: Duration,
    ) -> Result<(StatusCode, Bytes), CliError> {
        let reused = self.sender.as_ref().is_some_and(|s| !s.is_closed());
        match self
            .exchange(method.clone(), path, body.clone(), limit)
            .await
        {
            // The appliance may close an idle keep-alive connection just as the next request
            // goes out; a GET is safe to repeat once on a fresh connection.
            Err(CliError::Http { .. }) if reused && method == Method::GET => {
                self.sender = None;
                self.exchange(method, path, body, limit).await
            }
            other => other,
        }
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        body: RequestBody,
        limit: Duration,
    ) -> Result<(StatusCode, Bytes), CliError> {
        let url = format!("{}{}", self.endpoint.origin, path);
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        let request = self.build_request(method, path, body, "application/json")?;
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let collected = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await;
            Ok::<_, hyper::Error>((status, collected))
        };
        let (status, collected) = tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| CliError::Timeout {
                url: url.clone(),
                seconds: limit.as_secs(),
                stage: "waiting for the answer",
            })?
            .map_err(|source| CliError::Http {
                url: url.clone(),
                source,
            })?;
        let bytes = match collected {
            Ok(c) => c.to_bytes(),
            Err(e) => return Err(body_error(e, &url)),
        };
        if !sender.is_closed() {
            self.sender = Some(sender);
        }
        Ok((status, bytes))
    }

    /// Sends a request whose success answer is a file too large to hold in memory (an
    /// appliance backup), and hands its body to `sink` piece by piece as it arrives; returns
    /// how many bytes it was given. A success answer whose media type is not `media_type` is
    /// refused before anything reaches `sink`: a misdirected `--server`'s page is not the
    /// file. Other statuses become [`CliError::Api`], as with [`ApiClient::call`]. `limit`
    /// covers the whole exchange; the body has no size limit (the disk is the limit). The
    /// request is not repeated on a fresh connection: it is not a GET.
    pub async fn download_within(
        &mut self,
        method: Method,
        path: &str,
        body: RequestBody,
        media_type: &'static str,
        limit: Duration,
        mut sink: impl FnMut(&[u8]) -> Result<(), CliError>,
    ) -> Result<u64, CliError> {
        let url = format!("{}{}", self.endpoint.origin, path);
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        let request = self.build_request(method, path, body, media_type)?;
        let http = |source| CliError::Http {
            url: url.clone(),
            source,
        };
        let exchange = async {
            sender.ready().await.map_err(http)?;
            let response = sender.send_request(request).await.map_err(http)?;
            let status = response.status();
            if !status.is_success() {
                let collected = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                    .collect()
                    .await;
                return Err(match collected {
                    Ok(c) => api_error(status, &c.to_bytes()),
                    Err(e) => body_error(e, &url),
                });
            }
            let served = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !is_media_type(served, media_type) {
                return Err(CliError::BadResponse {
                    url: url.clone(),
                    reason: format!(
                        "the answer is {}, not {media_type}",
                        if served.is_empty() {
                            "of no stated type".to_owned()
                        } else {
                            clean(served)
                        }
                    ),
                });
            }
            let mut incoming = response.into_body();
            let mut received: u64 = 0;
            while let Some(frame) = incoming.frame().await {
                if let Ok(data) = frame.map_err(http)?.into_data() {
                    sink(&data)?;
                    received =
                        received.saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
                }
            }
            Ok(received)
        };
        let received =
            tokio::time::timeout(limit, exchange)
                .await
                .map_err(|_| CliError::Timeout {
                    url: url.clone(),
                    seconds: limit.as_secs(),
                    stage: "waiting for the answer",
                })??;
        if !sender.is_closed() {
            self.sender = Some(sender);
        }
        Ok(received)
    }

    /// [`ApiClient::call`], with the answer parsed as JSON.
    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        body: RequestBody,
    ) -> Result<serde_json::Value, CliError> {
        self.json_within(method, path, body, REQUEST_TIMEOUT).await
    }

    /// [`ApiClient::call_within`], with the answer parsed as JSON.
    pub async fn json_within(
        &mut self,
        method: Method,
        path: &str,
        body: RequestBody,
        limit: Duration,
    ) -> Result<serde_json::Value, CliError> {
        let bytes = self.call_within(method, path, body, limit).await?;
        serde_json::from_slice(&bytes).map_err(|e| CliError::BadResponse {
            url: format!("{}{}", self.endpoint.origin, path),
            reason: format!("the answer is not JSON: {e}"),
        })
    }

    /// The request, authenticated, asking for an answer of type `accept`.
    fn build_request(
        &self,
        method: Method,
        path: &str,
        body: RequestBody,
        accept: &'static str,
    ) -> Result<Request<Full<Bytes>>, CliError> {
        let mut auth =
            HeaderValue::try_from(format!("Bearer {}", self.token.as_str())).map_err(|_| {
                CliError::Usage("the API token cannot be sent in an HTTP header".into())
            })?;
        auth.set_sensitive(true);
        let (content_type, bytes) = match body {
            RequestBody::Empty => (None, Bytes::new()),
            RequestBody::Json(v) => (Some("application/json"), Bytes::from(v.to_string())),
            RequestBody::Raw {
                content_type,
                bytes,
            } => (Some(content_type), bytes),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.endpoint.prefix, path))
            .header(header::HOST, self.endpoint.authority.as_str())
            .header(header::AUTHORIZATION, auth)
            .header(header::ACCEPT, accept)
            .header(
                header::USER_AGENT,
                concat!("mdmctl/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        builder
            .body(Full::new(bytes))
            .map_err(|e| CliError::Usage(format!("the request for {path} cannot be built: {e}")))
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, CliError> {
        let url = self.endpoint.origin.clone();
        let timeout = |stage| CliError::Timeout {
            url: url.clone(),
            seconds: CONNECT_TIMEOUT.as_secs(),
            stage,
        };
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port)),
        )
        .await
        .map_err(|_| timeout("connecting"))?
        .map_err(|source| CliError::Connect {
            url: url.clone(),
            source,
        })?;
        // Requests are small and answered at once; Nagle would only add latency.
        tcp.set_nodelay(true).map_err(|source| CliError::Connect {
            url: url.clone(),
            source,
        })?;
        let connector = TlsConnector::from(Arc::clone(&self.tls));
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            connector.connect(self.endpoint.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| timeout("TLS handshake"))?
        .map_err(|e| CliError::Tls {
            url: url.clone(),
            reason: describe_tls_failure(&e, &self.endpoint.host),
        })?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|source| CliError::Http {
                url: url.clone(),
                source,
            })?;
        // The connection task ends with the connection; its errors reach the caller through
        // `send_request`, so the task's own result carries nothing new.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// Explains a failed TLS handshake with the fix an admin most likely needs.
fn describe_tls_failure(e: &std::io::Error, host: &str) -> String {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return format!(
            "the connection closed during the handshake ({e}); is this the appliance's HTTPS port?"
        );
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the appliance's certificate is not trusted: it was not issued by the CA in --ca; \
                 pass --ca with the appliance CA ({cert:?})"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "the appliance's certificate is not valid for {host:?}; use the host name or address \
                 the appliance's certificate was issued for"
            ),
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => format!(
                "the appliance's certificate is outside its validity period ({cert:?}); check the \
                 clocks of this machine and the appliance"
            ),
            other => format!("the appliance's certificate was rejected: {other:?}"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("the server does not speak TLS as expected ({tls}); is this the appliance's HTTPS port?")
        }
        other => other.to_string(),
    }
}

/// The error for a body that could not be read whole: the connection broke, or the body
/// passed [`MAX_RESPONSE_BYTES`].
fn body_error(e: Box<dyn std::error::Error + Send + Sync>, url: &str) -> CliError {
    match e.downcast::<hyper::Error>() {
        Ok(source) => CliError::Http {
            url: url.to_owned(),
            source: *source,
        },
        Err(_) => CliError::BadResponse {
            url: url.to_owned(),
            reason: format!("the answer is larger than {MAX_RESPONSE_BYTES} bytes"),
        },
    }
}

/// Whether a `Content-Type` value names `media_type`, whatever its parameters and case.
fn is_media_type(content_type: &str, media_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(media_type))
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// Turns an answer into its body (2xx) or the API's refusal.
pub fn interpret(status: StatusCode, body: Bytes) -> Result<Bytes, CliError> {
    if status.is_success() {
        Ok(body)
    } else {
        Err(api_error(status, &body))
    }
}

/// Reads the API's error shape `{"error": {"code", "message"}}`. An answer without it (a
/// proxy's error page, say) becomes code `HTTP_<status>` with the start of the body quoted.
pub fn api_error(status: StatusCode, body: &[u8]) -> CliError {
    if let Ok(ErrorEnvelope { error }) = serde_json::from_slice::<ErrorEnvelope>(body) {
        return CliError::Api {
            status: status.as_u16(),
            code: clean(&error.code),
            message: clean(&error.message),
        };
    }
    let text = clean(String::from_utf8_lossy(body).trim());
    let mut message: String = text.chars().take(QUOTED_BODY_CHARS).collect();
    if text.chars().count() > QUOTED_BODY_CHARS {
        message.push_str("...");
    }
    if message.is_empty() {
        message = format!("the appliance answered {status} with no explanation");
    }
    CliError::Api {
        status: status.as_u16(),
        code: format!("HTTP_{}", status.as_u16()),
        message,
    }
}

/// Percent-encodes one path segment. Characters RFC 3986 allows in a segment stay as they
/// are (notably `:` in user-channel IDs `UDID:UserID`): the appliance matches segments
/// literally, without decoding.
pub fn encode_segment(segment: &str) -> String {
    encode(segment, |b| b"!$&'()*+,;=:@".contains(&b))
}

/// Percent-encodes a query value (only unreserved characters stay, so `+` and `&` survive
/// form decoding on the appliance).
pub fn encode_query(value: &str) -> String {
    encode(value, |_| false)
}

fn encode(text: &str, also_keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || also_keep(b) {
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
    fn endpoints_parse_host_port_and_prefix() {
        let e = Endpoint::parse("https://127.0.0.1:8443").expect("parse");
        assert_eq!(
            (e.host.as_str(), e.port, e.authority.as_str()),
            ("127.0.0.1", 8443, "127.0.0.1:8443")
        );
        assert_eq!(e.origin(), "https://127.0.0.1:8443");
        assert_eq!(e.prefix, "");
        assert!(matches!(e.server_name, ServerName::IpAddress(_)));

        let e = Endpoint::parse("https://mdm.example.lan/").expect("parse");
        assert_eq!((e.host.as_str(), e.port), ("mdm.example.lan", 443));
        assert_eq!(e.origin(), "https://mdm.example.lan");
        assert!(matches!(e.server_name, ServerName::DnsName(_)));

        let e = Endpoint::parse("HTTPS://[::1]:9443/mdm/").expect("parse");
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("::1", 9443, "/mdm")
        );
        assert_eq!(e.origin(), "https://[::1]:9443/mdm");
        assert!(matches!(e.server_name, ServerName::IpAddress(_)));
    }

    #[test]
    fn unusable_endpoints_say_why() {
        let reason = |url: &str| match Endpoint::parse(url) {
            Err(CliError::ServerUrl { reason, .. }) => reason,
            other => panic!("{url}: {other:?}"),
        };
        assert!(reason("http://127.0.0.1:8443").contains("unencrypted"));
        assert!(reason("127.0.0.1:8443").contains("https://"));
        assert!(reason("ftp://x").contains("https://"));
        assert!(reason("https://admin:pw@x").contains("credentials"));
        assert!(reason("https://x/?a=b").contains("query"));
        assert!(matches!(Endpoint::parse("  "), Err(CliError::NoServer)));
        assert_eq!(
            Endpoint::parse("https://x y")
                .map(|_| ())
                .expect_err("space")
                .exit_code(),
            2
        );
    }

    #[test]
    fn the_api_error_shape_is_read() {
        let body = br#"{"error":{"code":"LINK_NOT_FOUND","message":"no enrollment link abc"}}"#;
        match api_error(StatusCode::NOT_FOUND, body) {
            CliError::Api {
                status,
                code,
                message,
            } => {
                assert_eq!(
                    (status, code.as_str(), message.as_str()),
                    (404, "LINK_NOT_FOUND", "no enrollment link abc")
                );
            }
            other => panic!("{other:?}"),
        }
        let err = interpret(
            StatusCode::UNAUTHORIZED,
            Bytes::from_static(
                br#"{"error":{"code":"API_TOKEN_INVALID","message":"unknown token"}}"#,
            ),
        )
        .expect_err("401");
        assert_eq!(err.stderr_line(), "error API_TOKEN_INVALID: unknown token");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn answers_without_the_error_shape_still_give_a_code() {
        match api_error(StatusCode::BAD_GATEWAY, b"<html>Bad Gateway</html>\n") {
            CliError::Api { code, message, .. } => {
                assert_eq!(code, "HTTP_502");
                assert_eq!(message, "<html>Bad Gateway</html>");
            }
            other => panic!("{other:?}"),
        }
        match api_error(StatusCode::SERVICE_UNAVAILABLE, b"") {
            CliError::Api { code, message, .. } => {
                assert_eq!(code, "HTTP_503");
                assert!(message.contains("503"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match api_error(StatusCode::BAD_REQUEST, &vec![b'x'; 1000]) {
            CliError::Api { message, .. } => assert_eq!(message.len(), QUOTED_BODY_CHARS + 3),
            other => panic!("{other:?}"),
        }
        // Right JSON, wrong shape: not mistaken for an API error code.
        match api_error(StatusCode::BAD_REQUEST, br#"{"code":"X"}"#) {
            CliError::Api { code, .. } => assert_eq!(code, "HTTP_400"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_text_from_the_server_cannot_drive_the_terminal() {
        let body = br#"{"error":{"code":"X\u001b[31m","message":"a\u001b]0;title\u0007b"}}"#;
        let line = api_error(StatusCode::BAD_REQUEST, body).stderr_line();
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }

    #[test]
    fn media_types_match_without_parameters_or_case() {
        let octets = "application/octet-stream";
        assert!(is_media_type("application/octet-stream", octets));
        assert!(is_media_type("Application/Octet-Stream ; x=y", octets));
        assert!(!is_media_type("application/json", octets));
        assert!(!is_media_type("", octets));
        assert!(!is_media_type("application/octet-stream-ish", octets));
    }

    #[test]
    fn success_bodies_pass_through() {
        let body = interpret(StatusCode::CREATED, Bytes::from_static(b"{}")).expect("201");
        assert_eq!(&body[..], b"{}");
    }

    #[test]
    fn segments_and_queries_are_encoded() {
        assert_eq!(
            encode_segment("00008030-001A:5E1B2C3D"),
            "00008030-001A:5E1B2C3D"
        );
        assert_eq!(encode_segment("a/b?c#d e%"), "a%2Fb%3Fc%23d%20e%25");
        assert_eq!(encode_query("a+b&c=d"), "a%2Bb%26c%3Dd");
        assert_eq!(encode_query("UDID:user"), "UDID%3Auser");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn a_missing_ca_is_a_trust_failure_naming_the_server() {
        let err = tls_config(None, "https://10.0.0.1:8443").expect_err("no CA");
        assert_eq!(err.exit_code(), 3);
        let text = err.to_string();
        assert!(
            text.contains("https://10.0.0.1:8443") && text.contains("--ca"),
            "{text}"
        );
    }

    #[test]
    fn ca_files_must_hold_a_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            tls_config(Some(&missing), "https://x"),
            Err(CliError::CaFile { .. })
        ));
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        assert!(matches!(
            tls_config(Some(&junk), "https://x"),
            Err(CliError::CaPem { .. })
        ));
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let err = tls_config(Some(&garbage), "https://x").expect_err("garbage");
        assert!(
            matches!(err, CliError::CaCertificate { .. } | CliError::CaPem { .. }),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 2);
    }
}
