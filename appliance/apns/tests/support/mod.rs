//! Test scaffolding: a local HTTP/2 server that answers like APNs (TLS, client certificate
//! required), a tiny HTTP CONNECT proxy, and the certificates both need.
//!
//! The server is written from Apple's documented request and answer formats, not from the
//! client under test. Shared with the benchmark.

// Test scaffolding: a failure here should abort the test loudly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mdm_pki::{CertificateParams, KeyAlgorithm, KeyUsages, Name, PrivateKey};
use mdm_service::ports::{PushIdentity, PushMessage};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A CA, the server's certificate (for 127.0.0.1) and a way to issue push identities.
pub struct Pki {
    pub ca: mdm_pki::Certificate,
    ca_key: PrivateKey,
    pub server_cert: mdm_pki::Certificate,
    server_key: PrivateKey,
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let ca_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let ca = mdm_pki::self_signed(
            &CertificateParams::ca(
                Name::new("Test APNs CA"),
                None,
                DAY,
                Duration::from_secs(60),
            ),
            &ca_key,
        )
        .unwrap();
        let server_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let mut params =
            CertificateParams::leaf(Name::new("api.push.test"), DAY, Duration::from_secs(60));
        params.key_usage = KeyUsages::SIGN;
        params.ip_addresses = vec!["127.0.0.1".parse().unwrap()];
        params.extended_key_usage = vec![mdm_pki::oid::KP_SERVER_AUTH];
        let server_cert =
            mdm_pki::issue(&params, &server_key.public_key_der(), &ca, &ca_key).unwrap();
        Pki {
            ca,
            ca_key,
            server_cert,
            server_key,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The CA as a PEM file (what `ApnsRoots::PemFile` reads).
    pub fn roots_pem(&self) -> PathBuf {
        let path = self.dir.path().join("roots.pem");
        if !path.exists() {
            std::fs::write(&path, self.ca.to_pem()).unwrap();
        }
        path
    }

    /// A push identity (RSA-2048, like Apple's) issued by this CA, with `uid` as topic.
    pub fn identity(&self, uid: &str) -> PushIdentity {
        issue_identity(&self.ca, &self.ca_key, uid)
    }
}

/// A push identity from a CA the server does not trust.
pub fn foreign_identity(uid: &str) -> PushIdentity {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let ca = mdm_pki::self_signed(
        &CertificateParams::ca(
            Name::new("Some Other CA"),
            None,
            DAY,
            Duration::from_secs(60),
        ),
        &key,
    )
    .unwrap();
    issue_identity(&ca, &key, uid)
}

fn issue_identity(ca: &mdm_pki::Certificate, ca_key: &PrivateKey, uid: &str) -> PushIdentity {
    let key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    let name = Name {
        common_name: format!("APSP:{uid}"),
        uid: Some(uid.to_string()),
        ..Name::default()
    };
    let mut params = CertificateParams::leaf(name, DAY, Duration::from_secs(60));
    params.extended_key_usage = vec![mdm_pki::oid::KP_CLIENT_AUTH];
    let cert = mdm_pki::issue(&params, &key.public_key_der(), ca, ca_key).unwrap();
    PushIdentity {
        cert_chain_der: vec![cert.der().to_vec()],
        key_pkcs8_der: key.to_pkcs8_der(),
        topic: uid.to_string(),
    }
}

/// A message for device `n`.
pub fn message(n: usize, topic: &str) -> PushMessage {
    PushMessage {
        enrollment_id: format!("device-{n}"),
        token_hex: format!("{n:064x}"),
        push_magic: format!("magic-{n}"),
        topic: topic.to_string(),
    }
}

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// 1-based number of the connection it came on.
    pub conn: usize,
    /// 1-based number of the request on that connection.
    pub nth_on_conn: usize,
    pub method: String,
    pub path: String,
    pub authority: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    /// The client certificate's common name.
    pub client_cn: Option<String>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn token(&self) -> &str {
        self.path.trim_start_matches("/3/device/")
    }
}

/// How the server answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with an `apns-id`.
    Ok,
    /// This status with `{"reason": ...}`.
    Error(u16, &'static str),
    /// Send GOAWAY on this connection, then answer 503 Shutdown.
    GoAway,
    /// Send GOAWAY on this connection, then answer 200: the connection closes once its
    /// streams are done.
    GoAwayOk,
    /// Close the connection without answering.
    Drop,
    /// Wait, then answer.
    After(Duration, Box<Reply>),
}

pub type Behaviour = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

enum Control {
    GoAway,
    Kill,
}

struct State {
    behaviour: Mutex<Behaviour>,
    record: bool,
    seen: Mutex<Vec<Seen>>,
    requests: AtomicUsize,
    connections: AtomicUsize,
    tls_failures: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// The APNs stand-in.
pub struct ApnsServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
    /// Dropping the server closes every connection it has.
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Drop for ApnsServer {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = self.shutdown.send(true);
    }
}

impl ApnsServer {
    /// Starts on 127.0.0.1 with `max_streams` as `SETTINGS_MAX_CONCURRENT_STREAMS`;
    /// `record` keeps every request for inspection (off for the benchmark).
    pub async fn start(pki: &Pki, max_streams: u32, record: bool) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(pki.ca.der().to_vec()))
            .unwrap();
        // Like APNs: no certificate, no connection.
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            pki.server_key.to_pkcs8_der().to_vec(),
        ));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(pki.server_cert.der().to_vec())],
                key,
            )
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            behaviour: Mutex::new(Arc::new(|_: &Seen| Reply::Ok)),
            record,
            seen: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            tls_failures: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let accept_state = Arc::clone(&state);
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let conn_no = accept_state.connections.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(serve(
                    Arc::clone(&accept_state),
                    acceptor.clone(),
                    tcp,
                    conn_no,
                    max_streams,
                    shutdown_rx.clone(),
                ));
            }
        });
        ApnsServer {
            addr,
            state,
            accept,
            shutdown,
        }
    }

    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn behave(&self, f: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        *self.state.behaviour.lock().unwrap() = Arc::new(f);
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn tls_failures(&self) -> usize {
        self.state.tls_failures.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

async fn serve(
    state: Arc<State>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    conn_no: usize,
    max_streams: u32,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let tls = match acceptor.accept(tcp).await {
        Ok(tls) => tls,
        Err(_) => {
            state.tls_failures.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let client_cn = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|der| mdm_pki::Certificate::from_der(der).ok())
        .and_then(|c| c.subject_common_name());
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Control>();
    let nth = Arc::new(AtomicUsize::new(0));
    let service = {
        let state = Arc::clone(&state);
        service_fn(move |req: Request<hyper::body::Incoming>| {
            let state = Arc::clone(&state);
            let ctl = ctl_tx.clone();
            let nth_on_conn = nth.fetch_add(1, Ordering::SeqCst) + 1;
            let client_cn = client_cn.clone();
            async move {
                let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                state.max_in_flight.fetch_max(now, Ordering::SeqCst);
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes().to_vec())
                    .unwrap_or_default();
                let seen = Seen {
                    conn: conn_no,
                    nth_on_conn,
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    authority: parts.uri.authority().map(|a| a.to_string()),
                    headers: parts.headers,
                    body,
                    client_cn,
                };
                let n = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
                let behaviour = Arc::clone(&*state.behaviour.lock().unwrap());
                let reply = behaviour(&seen);
                if state.record {
                    state.seen.lock().unwrap().push(seen);
                }
                let response = answer(reply, n, &ctl).await;
                state.in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(max_streams)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = shutdown.changed() => return,
            ctl = ctl_rx.recv() => match ctl {
                Some(Control::GoAway) => conn.as_mut().graceful_shutdown(),
                // Dropping the connection closes the socket with streams still open.
                Some(Control::Kill) | None => return,
            },
        }
    }
}

async fn answer(
    reply: Reply,
    n: usize,
    ctl: &mpsc::UnboundedSender<Control>,
) -> Response<Full<Bytes>> {
    let mut reply = reply;
    loop {
        match reply {
            Reply::After(delay, next) => {
                tokio::time::sleep(delay).await;
                reply = *next;
            }
            Reply::Ok => {
                return Response::builder()
                    .status(200)
                    .header("apns-id", format!("00000000-0000-4000-8000-{n:012x}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
            }
            Reply::Error(status, reason) => return error(status, reason),
            Reply::GoAway => {
                let _ = ctl.send(Control::GoAway);
                return error(503, "Shutdown");
            }
            Reply::GoAwayOk => {
                let _ = ctl.send(Control::GoAway);
                reply = Reply::Ok;
            }
            Reply::Drop => {
                let _ = ctl.send(Control::Kill);
                // The connection goes away and this future with it.
                std::future::pending::<()>().await;
            }
        }
    }
}

fn error(status: u16, reason: &str) -> Response<Full<Bytes>> {
    let body = format!(r#"{{"reason":"{reason}","timestamp":1700000000000}}"#);
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// How the CONNECT proxy treats requests.
#[derive(Debug, Clone)]
pub enum ProxyMode {
    /// Tunnel, requiring this exact `Proxy-Authorization` value when set.
    Tunnel { authorization: Option<String> },
    /// Refuse with this status.
    Refuse(u16),
}

/// A minimal HTTP CONNECT proxy.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    /// The request heads it received.
    pub heads: Arc<Mutex<Vec<String>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl ConnectProxy {
    pub async fn start(mode: ProxyMode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let accept_heads = Arc::clone(&heads);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(tunnel(client, mode.clone(), Arc::clone(&accept_heads)));
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

async fn tunnel(mut client: TcpStream, mode: ProxyMode, heads: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match client.read_u8().await {
            Ok(b) => head.push(b),
            Err(_) => return,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    heads.lock().unwrap().push(head.clone());
    let request_line = head.lines().next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let respond =
        |status: u16, text: &str| format!("HTTP/1.1 {status} {text}\r\nContent-Length: 0\r\n\r\n");
    match mode {
        ProxyMode::Refuse(status) => {
            let _ = client
                .write_all(respond(status, "Refused").as_bytes())
                .await;
        }
        ProxyMode::Tunnel { authorization } => {
            if method != "CONNECT" {
                let _ = client
                    .write_all(respond(405, "Method Not Allowed").as_bytes())
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
                    .write_all(respond(502, "Bad Gateway").as_bytes())
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
    }
}
