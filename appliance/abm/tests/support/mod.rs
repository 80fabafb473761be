//! Test scaffolding: a scripted HTTPS server that answers like the ABM API and checks every
//! `/session` request's OAuth signature on its own (RFC 5849, written here from the RFC, not
//! from the client), a tiny HTTP CONNECT proxy, and the certificates they need.

// Test scaffolding: a failure here should abort the test loudly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mdm_pki::{CertificateParams, KeyAlgorithm, KeyUsages, Name, PrivateKey};
use mdm_proto::abm::ServerToken;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// RFC 5849 §3.6: all but the unreserved characters are encoded.
const OAUTH_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A test CA and a server certificate for 127.0.0.1 issued by it.
pub struct Pki {
    pub ca_pem: String,
    server_cert: mdm_pki::Certificate,
    server_key: PrivateKey,
}

impl Pki {
    pub fn new() -> Self {
        let ca_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let ca = mdm_pki::self_signed(
            &CertificateParams::ca(Name::new("Test ABM CA"), None, DAY, Duration::from_secs(60)),
            &ca_key,
        )
        .unwrap();
        let server_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let mut params = CertificateParams::leaf(
            Name::new("mdmenrollment.test"),
            DAY,
            Duration::from_secs(60),
        );
        params.key_usage = KeyUsages::SIGN;
        params.ip_addresses = vec!["127.0.0.1".parse().unwrap()];
        params.extended_key_usage = vec![mdm_pki::oid::KP_SERVER_AUTH];
        let server_cert =
            mdm_pki::issue(&params, &server_key.public_key_der(), &ca, &ca_key).unwrap();
        Pki {
            ca_pem: ca.to_pem(),
            server_cert,
            server_key,
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = vec![rustls::pki_types::CertificateDer::from(
            self.server_cert.der().to_vec(),
        )];
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(self.server_key.to_pkcs8_der().to_vec()),
        );
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A server token with recognisable values.
pub fn token() -> ServerToken {
    ServerToken {
        consumer_key: "CK_48dd68d198350f51258e885ce9a5c37ab7f98543c4a697323d75682a6c10a32501cb247e3db08105db868f73f2c972bdb6ae77112aea803b9219eb52689d42e6".into(),
        consumer_secret: "CS_34c7b2b531a600d99a0e4edcf4a78ded79b86ef318118c2f5bcfee1b011108c32d5302df801adbe29d446eb78f02b13144e323eb9aad51c79f01e50cb45c3a68".into(),
        access_token: "AT_927696831c59ba510cfe4ec1a69e5267c19881257d4bca2906a99d0785b785a6f6fdeb09774954fdd5e2d0ad952e3af52c6d8d2f21c924ba0caf4a031c158b89".into(),
        access_secret: "AS_c31afd7a09691d83548489336e8ff1cb11b82b6bca13f793344496a556b1f4972eaff4dde6deb5ac9cf076fdfa97ec97699c34d515947b9cf9ed31c99dded6ba".into(),
        access_token_expiry: "2030-01-01T00:00:00Z".into(),
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Never answer (the connection stays open, silent).
    pub hang: bool,
}

impl Answer {
    pub fn json(status: u16, value: serde_json::Value) -> Self {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: value.to_string(),
            hang: false,
        }
    }

    pub fn text(status: u16, body: &str) -> Self {
        Answer {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.to_string(),
            hang: false,
        }
    }

    pub fn hang() -> Self {
        Answer {
            status: 200,
            headers: Vec::new(),
            body: String::new(),
            hang: true,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// 1-based number of the TCP connection it came on.
    pub conn: usize,
    pub method: String,
    /// The path without the server's prefix, with the query.
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    /// For `/session`: why the OAuth signature was refused, if it was.
    pub oauth_error: Option<String>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

struct State {
    prefix: String,
    port: u16,
    token: ServerToken,
    script: HashMap<String, VecDeque<Answer>>,
    seen: Vec<Seen>,
    sessions_issued: u32,
    connections: usize,
    nonces: HashSet<String>,
}

/// The scripted ABM API. `/session` answers `session-N` (N counting from 1) unless scripted;
/// other paths answer what was scripted for them, in order, and 404 `NOT_SCRIPTED` after.
pub struct AbmServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for AbmServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl AbmServer {
    pub async fn start(pki: &Pki, prefix: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            prefix: prefix.to_string(),
            port: addr.port(),
            token: token(),
            script: HashMap::new(),
            seen: Vec::new(),
            sessions_issued: 0,
            connections: 0,
            nonces: HashSet::new(),
        }));
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
        let accept_state = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let conn = {
                    let mut s = accept_state.lock().unwrap();
                    s.connections += 1;
                    s.connections
                };
                let acceptor = acceptor.clone();
                let state = Arc::clone(&accept_state);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(state, conn, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        AbmServer {
            addr,
            state,
            accept,
        }
    }

    pub fn url(&self) -> String {
        let prefix = self.state.lock().unwrap().prefix.clone();
        format!("https://127.0.0.1:{}{prefix}", self.addr.port())
    }

    /// Queues answers for `path` (without the prefix, with any query).
    pub fn script(&self, path: &str, answers: impl IntoIterator<Item = Answer>) {
        self.state
            .lock()
            .unwrap()
            .script
            .entry(path.to_string())
            .or_default()
            .extend(answers);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The requests to `path`.
    pub fn calls(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    conn: usize,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    let full_path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let answer = {
        let mut s = state.lock().unwrap();
        let Some(path) = full_path.strip_prefix(&s.prefix).map(str::to_string) else {
            return respond(&Answer::text(404, "WRONG_PREFIX"));
        };
        let mut seen = Seen {
            conn,
            method: parts.method.to_string(),
            path: path.clone(),
            headers: parts.headers.clone(),
            body,
            oauth_error: None,
        };
        let answer = if path == "/session" {
            let url = format!("https://127.0.0.1:{}{}/session", s.port, s.prefix);
            let header = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let checked = verify_oauth(&header, &s.token, parts.method.as_str(), &url);
            let checked = checked.and_then(|nonce| {
                if s.nonces.insert(nonce.clone()) {
                    Ok(())
                } else {
                    Err(format!("nonce {nonce} used twice"))
                }
            });
            match checked {
                Err(e) => {
                    seen.oauth_error = Some(e);
                    Answer::text(401, "UNAUTHORIZED")
                }
                Ok(()) => match s.script.get_mut(&path).and_then(VecDeque::pop_front) {
                    Some(scripted) => scripted,
                    None => {
                        s.sessions_issued += 1;
                        Answer::json(
                            200,
                            serde_json::json!({
                                "auth_session_token": format!("session-{}", s.sessions_issued)
                            }),
                        )
                    }
                },
            }
        } else {
            s.script
                .get_mut(&path)
                .and_then(VecDeque::pop_front)
                .unwrap_or_else(|| Answer::text(404, "NOT_SCRIPTED"))
        };
        s.seen.push(seen);
        answer
    };
    if answer.hang {
        std::future::pending::<()>().await;
    }
    respond(&answer)
}

fn respond(answer: &Answer) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(answer.status);
    for (name, value) in &answer.headers {
        builder = builder.header(name, value);
    }
    builder
        .body(Full::new(Bytes::from(answer.body.clone())))
        .unwrap()
}

fn oauth_encode(s: &str) -> String {
    utf8_percent_encode(s, OAUTH_ENCODE).to_string()
}

/// Checks an `Authorization: OAuth ...` header as a server would (RFC 5849 §3.2) and returns
/// its nonce.
pub fn verify_oauth(
    header: &str,
    token: &ServerToken,
    method: &str,
    url: &str,
) -> Result<String, String> {
    let rest = header
        .strip_prefix("OAuth ")
        .ok_or_else(|| format!("not an OAuth header: {header:?}"))?;
    let mut params: HashMap<String, String> = HashMap::new();
    for part in rest.split(',') {
        let (name, value) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| format!("bad parameter {part:?}"))?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(|| format!("unquoted value in {part:?}"))?;
        let decoded = percent_decode_str(value)
            .decode_utf8()
            .map_err(|e| e.to_string())?
            .to_string();
        if params.insert(name.to_string(), decoded).is_some() {
            return Err(format!("{name} given twice"));
        }
    }
    let get = |name: &str| {
        params
            .get(name)
            .cloned()
            .ok_or_else(|| format!("{name} missing"))
    };
    let expect = |name: &str, value: &str| -> Result<(), String> {
        let got = get(name)?;
        if got == value {
            Ok(())
        } else {
            Err(format!("{name} is {got:?}, expected {value:?}"))
        }
    };
    expect("realm", "ADM")?;
    expect("oauth_consumer_key", &token.consumer_key)?;
    expect("oauth_token", &token.access_token)?;
    expect("oauth_signature_method", "HMAC-SHA1")?;
    expect("oauth_version", "1.0")?;
    let timestamp: u64 = get("oauth_timestamp")?
        .parse()
        .map_err(|_| "oauth_timestamp is not a number".to_string())?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if timestamp.abs_diff(now) > 300 {
        return Err(format!(
            "oauth_timestamp {timestamp} is far from now ({now})"
        ));
    }
    let nonce = get("oauth_nonce")?;
    if nonce.len() < 8 {
        return Err(format!("oauth_nonce {nonce:?} is too short"));
    }

    // §3.4.1: the base string from everything but realm and the signature, sorted.
    let mut pairs: Vec<String> = params
        .iter()
        .filter(|(name, _)| *name != "realm" && *name != "oauth_signature")
        .map(|(name, value)| format!("{}={}", oauth_encode(name), oauth_encode(value)))
        .collect();
    pairs.sort();
    let base = format!(
        "{method}&{}&{}",
        oauth_encode(url),
        oauth_encode(&pairs.join("&"))
    );
    let key = format!(
        "{}&{}",
        oauth_encode(&token.consumer_secret),
        oauth_encode(&token.access_secret)
    );
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        key.as_bytes(),
    );
    let expected = base64::engine::general_purpose::STANDARD
        .encode(aws_lc_rs::hmac::sign(&key, base.as_bytes()).as_ref());
    let given = get("oauth_signature")?;
    if given != expected {
        return Err(format!(
            "signature {given} does not verify (expected {expected} over {base})"
        ));
    }
    Ok(nonce)
}

/// A minimal HTTP CONNECT proxy that requires `authorization` (a full
/// `Proxy-Authorization` value) when set, and records the request heads it received.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    pub heads: Arc<Mutex<Vec<String>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl ConnectProxy {
    pub async fn start(authorization: Option<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let accept_heads = Arc::clone(&heads);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(tunnel(
                    client,
                    authorization.clone(),
                    Arc::clone(&accept_heads),
                ));
            }
        });
        ConnectProxy {
            addr,
            heads,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }
}

async fn tunnel(
    mut client: TcpStream,
    authorization: Option<String>,
    heads: Arc<Mutex<Vec<String>>>,
) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match client.read_u8().await {
            Ok(b) => head.push(b),
            Err(_) => return,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    heads.lock().unwrap().push(head.clone());
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (
        request_line.next().unwrap_or_default(),
        request_line.next().unwrap_or_default(),
    );
    if method != "CONNECT" {
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    }
    if let Some(expected) = authorization {
        let given = head
            .lines()
            .find_map(|l| l.strip_prefix("Proxy-Authorization: "))
            .unwrap_or_default();
        if given != expected {
            let _ = client
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
                .await;
            return;
        }
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
