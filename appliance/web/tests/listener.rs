//! End-to-end tests of the HTTPS listener: real sockets on 127.0.0.1, real TLS with throwaway
//! certificates made by the `openssl` CLI, and hyper clients over tokio-rustls.
//!
//! Every test skips (with a note on stderr) when the `openssl` binary is missing, since the
//! certificates come from it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mdm_web::listen::{take_listeners, ListenSource};
use mdm_web::server::{read_body, serve, BodyError, ConnectionInfo, Handler, ServeOptions};
use mdm_web::tls::{server_config, ReloadableTls, TlsError, TlsIdentity};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Mutex as AsyncMutex, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

/// Request bodies the test handler accepts on `/body`.
const BODY_LIMIT: usize = 1024;

/// Upper bound for anything a test waits on, so a broken server fails the test instead of
/// hanging it. Never reached when things work.
const PATIENCE: Duration = Duration::from_secs(20);

// Throwaway PKI

struct Pki {
    ca: Vec<u8>,
    server: KeyPair,
    server_renewed: KeyPair,
    client: KeyPair,
    other_ca_client: KeyPair,
}

struct KeyPair {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl KeyPair {
    fn identity(&self) -> TlsIdentity {
        TlsIdentity {
            cert_chain_der: vec![self.cert.clone()],
            key_pkcs8_der: Zeroizing::new(self.key.clone()),
        }
    }
}

const EXTENSIONS: &str = "\
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

const REQ_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
";

fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes an EC P-256 key and a certificate for it; `issuer` is `None` for a self-signed CA.
fn make_cert(dir: &Path, name: &str, cn: &str, section: &str, issuer: Option<&str>, serial: u32) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let pem = format!("{name}.pem");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ],
    );
    let subj = format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req", "-new", "-config", "req.cnf", "-key", &key, "-subj", &subj, "-out", &csr,
        ],
    );
    let serial = serial.to_string();
    let mut args = vec![
        "x509",
        "-req",
        "-in",
        &csr,
        "-days",
        "2",
        "-sha256",
        "-set_serial",
        &serial,
        "-extfile",
        "ext.cnf",
        "-extensions",
        section,
        "-out",
        &pem,
    ];
    let (ca_pem, ca_key);
    match issuer {
        None => args.extend(["-signkey", &key]),
        Some(issuer) => {
            ca_pem = format!("{issuer}.pem");
            ca_key = format!("{issuer}.key");
            args.extend(["-CA", &ca_pem, "-CAkey", &ca_key]);
        }
    }
    openssl(dir, &args);
    openssl(
        dir,
        &[
            "x509",
            "-in",
            &pem,
            "-outform",
            "DER",
            "-out",
            &format!("{name}.der"),
        ],
    );
    openssl(
        dir,
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            &key,
            "-outform",
            "DER",
            "-out",
            &format!("{name}.key.der"),
        ],
    );
}

fn load(dir: &Path, name: &str) -> KeyPair {
    KeyPair {
        cert: std::fs::read(dir.join(format!("{name}.der"))).unwrap(),
        key: std::fs::read(dir.join(format!("{name}.key.der"))).unwrap(),
    }
}

fn generate_pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("ext.cnf"), EXTENSIONS).unwrap();
    std::fs::write(d.join("req.cnf"), REQ_CONFIG).unwrap();
    make_cert(d, "ca", "Listener Test CA", "ca", None, 1);
    make_cert(d, "server", "localhost", "server", Some("ca"), 2);
    make_cert(d, "server2", "localhost", "server", Some("ca"), 3);
    make_cert(d, "client", "device-1", "client", Some("ca"), 4);
    make_cert(d, "other-ca", "Some Other CA", "ca", None, 1);
    make_cert(d, "stranger", "device-2", "client", Some("other-ca"), 2);
    Pki {
        ca: load(d, "ca").cert,
        server: load(d, "server"),
        server_renewed: load(d, "server2"),
        client: load(d, "client"),
        other_ca_client: load(d, "stranger"),
    }
}

/// The shared test PKI, or `None` (and a note) when `openssl` is not installed.
fn pki() -> Option<&'static Pki> {
    static PKI: OnceLock<Option<Pki>> = OnceLock::new();
    let pki = PKI
        .get_or_init(|| openssl_available().then(generate_pki))
        .as_ref();
    if pki.is_none() {
        eprintln!("skipping: the openssl CLI is not installed");
    }
    pki
}

// Test handler

struct TestHandler {
    calls: AtomicUsize,
    /// Receives one message per `/slow` request that has started.
    slow_started: std::sync::Mutex<Option<mpsc::UnboundedSender<()>>>,
    /// `/slow` waits for a permit here.
    slow_release: Arc<Semaphore>,
}

impl Default for TestHandler {
    fn default() -> Self {
        Self {
            calls: AtomicUsize::new(0),
            slow_started: std::sync::Mutex::new(None),
            slow_release: Arc::new(Semaphore::new(0)),
        }
    }
}

impl TestHandler {
    fn with_slow_channel() -> (Arc<Self>, mpsc::UnboundedReceiver<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handler = Self {
            slow_started: std::sync::Mutex::new(Some(tx)),
            slow_release: Arc::new(Semaphore::new(0)),
            ..Self::default()
        };
        (Arc::new(handler), rx)
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(body.into()))
        .unwrap()
}

impl Handler for TestHandler {
    async fn handle(
        &self,
        req: Request<Incoming>,
        conn: Arc<ConnectionInfo>,
    ) -> Response<Full<Bytes>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let path = req.uri().path().to_owned();
        match path.as_str() {
            "/info" => text(
                StatusCode::OK,
                format!("{} {} {:?}", conn.id, conn.alpn_h2, req.version()),
            ),
            "/peer" => text(
                StatusCode::OK,
                conn.peer_certificate
                    .as_ref()
                    .map(|c| c.der().to_vec())
                    .unwrap_or_default(),
            ),
            "/body" => match read_body(req.into_body(), BODY_LIMIT).await {
                Ok(body) => text(StatusCode::OK, body.len().to_string()),
                Err(BodyError::TooLarge { limit }) => {
                    text(StatusCode::PAYLOAD_TOO_LARGE, limit.to_string())
                }
                Err(e @ BodyError::Read(_)) => text(StatusCode::BAD_REQUEST, e.to_string()),
            },
            "/slow" => {
                let started = self.slow_started.lock().unwrap().clone();
                if let Some(started) = started {
                    let _ = started.send(());
                }
                let permit = self.slow_release.acquire().await.unwrap();
                permit.forget();
                text(StatusCode::OK, "slow done")
            }
            p if p.starts_with("/notnow/") => {
                let uuid = p.trim_start_matches("/notnow/").to_owned();
                let mut state = conn.state.lock().unwrap();
                let seen = state.not_now.entry("device-1".to_owned()).or_default();
                seen.insert(uuid);
                let mut list: Vec<_> = seen.iter().cloned().collect();
                list.sort();
                text(StatusCode::OK, list.join(","))
            }
            _ => text(StatusCode::NOT_FOUND, "no such test route"),
        }
    }
}

// Server and client harness

struct Server {
    addr: SocketAddr,
    tls: Arc<ReloadableTls>,
    handler: Arc<TestHandler>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl Server {
    async fn start(pki: &Pki, handler: Arc<TestHandler>, opts: ServeOptions) -> Self {
        let (listeners, source) = take_listeners(&["127.0.0.1:0".parse().unwrap()]).unwrap();
        assert_eq!(source, ListenSource::Bound { count: 1 });
        let addr = listeners[0].local_addr().unwrap();
        let tls = Arc::new(
            ReloadableTls::from_identity(&pki.server.identity(), std::slice::from_ref(&pki.ca))
                .unwrap(),
        );
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listeners,
            Arc::clone(&tls),
            Arc::clone(&handler),
            opts,
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            addr,
            tls,
            handler,
            shutdown: Some(tx),
            task,
        }
    }

    fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    async fn stop(mut self) {
        self.trigger_shutdown();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

fn opts() -> ServeOptions {
    ServeOptions {
        handshake_timeout: Duration::from_secs(5),
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        drain_timeout: Duration::from_secs(15),
        max_connections: 64,
    }
}

#[derive(Clone, Copy)]
enum Alpn {
    Http1,
    H2AndHttp1,
}

struct ClientSpec<'a> {
    alpn: Alpn,
    identity: Option<&'a KeyPair>,
    tls12_only: bool,
}

impl ClientSpec<'_> {
    fn h1() -> Self {
        ClientSpec {
            alpn: Alpn::Http1,
            identity: None,
            tls12_only: false,
        }
    }
    fn h2() -> Self {
        ClientSpec {
            alpn: Alpn::H2AndHttp1,
            identity: None,
            tls12_only: false,
        }
    }
}

fn client_config(pki: &Pki, spec: &ClientSpec<'_>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if spec.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(pki.ca.clone())).unwrap();
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match spec.identity {
        Some(pair) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(pair.cert.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pair.key.clone())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match spec.alpn {
        Alpn::Http1 => vec![b"http/1.1".to_vec()],
        Alpn::H2AndHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    Arc::new(config)
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

type ReqBody = UnsyncBoxBody<Bytes, Infallible>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

/// One client connection; `driver` finishes when the connection closes.
struct Client {
    sender: Sender,
    driver: JoinHandle<()>,
    server_leaf: Vec<u8>,
    handshake: Option<rustls::HandshakeKind>,
}

impl Client {
    async fn connect(addr: SocketAddr, pki: &Pki, spec: ClientSpec<'_>) -> Result<Self, BoxError> {
        Self::connect_with(addr, client_config(pki, &spec)).await
    }

    /// Connects with `config`, whose session store lets a later connection resume this one.
    async fn connect_with(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Self, BoxError> {
        let tls = tls_connect(addr, config).await?;
        let (_, session) = tls.get_ref();
        let server_leaf = session.peer_certificates().unwrap()[0].to_vec();
        let handshake = session.handshake_kind();
        let h2 = session.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let (sender, driver) = if h2 {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            (
                Sender::H2(sender),
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            (
                Sender::H1(sender),
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        };
        Ok(Self {
            sender,
            driver,
            server_leaf,
            handshake,
        })
    }

    fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: ReqBody,
        content_length: Option<usize>,
    ) -> Result<(StatusCode, Version, Bytes), BoxError> {
        // HTTP/2 requests carry the authority in the URI; HTTP/1.1 ones in Host.
        let uri = if self.is_h2() {
            format!("https://localhost{path}")
        } else {
            path.to_owned()
        };
        let mut builder = Request::builder().method(method).uri(uri);
        if !self.is_h2() {
            builder = builder.header(http::header::HOST, "localhost");
        }
        if let Some(len) = content_length {
            builder = builder.header(http::header::CONTENT_LENGTH, len);
        }
        let req = builder.body(body)?;
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = resp.status();
        let version = resp.version();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, version, body))
    }

    async fn get(&mut self, path: &str) -> Result<(StatusCode, Version, Bytes), BoxError> {
        self.send("GET", path, empty(), None).await
    }

    async fn info(&mut self) -> (u64, bool, Version) {
        let (status, version, body) = self.get("/info").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let body = String::from_utf8(body.to_vec()).unwrap();
        let mut parts = body.split(' ');
        let id = parts.next().unwrap().parse().unwrap();
        let h2 = parts.next().unwrap().parse().unwrap();
        (id, h2, version)
    }
}

fn empty() -> ReqBody {
    Full::new(Bytes::new()).boxed_unsync()
}

fn full(len: usize) -> ReqBody {
    Full::new(Bytes::from(vec![b'x'; len])).boxed_unsync()
}

/// A body of `chunks` × `chunk` bytes with no declared length (chunked on HTTP/1.1).
fn streamed(chunks: usize, chunk: usize) -> ReqBody {
    Chunks {
        left: chunks,
        chunk,
    }
    .boxed_unsync()
}

/// Yields its chunks one frame at a time and, unlike `Full`, does not tell its size.
struct Chunks {
    left: usize,
    chunk: usize,
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        let data = Bytes::from(vec![b'y'; self.chunk]);
        std::task::Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

/// A body that never delivers a byte and never ends.
struct Stalled;

impl hyper::body::Body for Stalled {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Pending
    }
}

/// Waits for the next `/slow` request to reach the handler; panics after [`PATIENCE`].
async fn slow_started(started: &mut mpsc::UnboundedReceiver<()>) {
    tokio::time::timeout(PATIENCE, started.recv())
        .await
        .expect("the slow request reaches the handler")
        .unwrap();
}

/// Waits until `check` holds, polling; panics after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Protocol negotiation and connection identity

#[tokio::test]
async fn http1_keep_alive_serves_two_requests_on_one_connection() {
    let Some(pki) = pki() else { return };
    let server = Server::start(pki, Arc::default(), opts()).await;

    let mut client = Client::connect(server.addr, pki, ClientSpec::h1())
        .await
        .unwrap();
    assert!(!client.is_h2());
    let (first, h2, version) = client.info().await;
    let (second, _, _) = client.info().await;
    assert_eq!(first, second, "keep-alive must reuse the connection");
    assert!(!h2);
    assert_eq!(version, Version::HTTP_11);

    let mut other = Client::connect(server.addr, pki, ClientSpec::h1())
        .await
        .unwrap();
    let (third, _, _) = other.info().await;
    assert_ne!(first, third, "a new connection gets a new id");
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 3);
    server.stop().await;
}

#[tokio::test]
async fn http2_is_negotiated_with_alpn() {
    let Some(pki) = pki() else { return };
    let server = Server::start(pki, Arc::default(), opts()).await;

    let mut client = Client::connect(server.addr, pki, ClientSpec::h2())
        .await
        .unwrap();
    assert!(client.is_h2(), "the server prefers h2 when offered");
    let (first, h2, version) = client.info().await;
    let (second, _, _) = client.info().await;
    assert!(h2);
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(first, second);
    server.stop().await;
}

// Client certificates and protocol versions

/// A client certificate from the appliance CA reaches the handler, over TLS 1.3 and 1.2. A
/// device that comes back resumes its TLS session, and its certificate still reaches the
/// handler (the session carries it). Each handshake hands out the ticket for the next one.
#[tokio::test]
async fn client_certificate_reaches_the_handler_on_full_and_resumed_sessions() {
    let Some(pki) = pki() else { return };
    let server = Server::start(pki, Arc::default(), opts()).await;

    for tls12_only in [false, true] {
        let config = client_config(
            pki,
            &ClientSpec {
                identity: Some(&pki.client),
                tls12_only,
                ..ClientSpec::h1()
            },
        );
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let mut client = Client::connect_with(server.addr, Arc::clone(&config))
                .await
                .unwrap();
            let (status, _, body) = client.get("/peer").await.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                body.as_ref(),
                pki.client.cert.as_slice(),
                "tls12_only={tls12_only}"
            );
            kinds.push(client.handshake);
        }
        use rustls::HandshakeKind::{Full, Resumed};
        assert_eq!(
            kinds,
            [Some(Full), Some(Resumed), Some(Resumed)],
            "tls12_only={tls12_only}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn no_client_certificate_is_accepted() {
    let Some(pki) = pki() else { return };
    let server = Server::start(pki, Arc::default(), opts()).await;

    let mut client = Client::connect(server.addr, pki, ClientSpec::h2())
        .await
        .unwrap();
    let (status, _, body) = client.get("/peer").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty(), "no certificate was presented");
    server.stop().await;
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_rejected_at_handshake() {
    let Some(pki) = pki() else { return };
    let server = Server::start(pki, Arc::default(), opts()).await;

    // TLS 1.2: the server's verdict arrives before the client's handshake completes.
    let spec = ClientSpec {
        identity: Some(&pki.other_ca_client),
        tls12_only: true,
        ..ClientSpec::h1()
    };
    let err = tls_connect(server.addr, client_config(pki, &spec))
        .await
        .expect_err("the handshake must fail");
    assert!(
        err.to_string().contains("alert"),
        "expected a TLS alert, got {err}"
    );

    // TLS 1.3: the client finishes its side first and learns of the rejection on its first
    // read, so the failure shows up at the latest on the first request.
    let spec = ClientSpec {
        identity: Some(&pki.other_ca_client),
        ..ClientSpec::h1()
    };
    let outcome = async {
        let mut client = Client::connect(server.addr, pki, spec).await?;
        client.get("/info").await
    }
    .await;
    assert!(
        outcome.is_err(),
        "request over a rejected handshake: {outcome:?}"
    );
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 0);
    server.stop().await;
}

/// Runs `openssl s_client` against the server with extra arguments; returns (success, stdout,
/// stderr).
async fn s_client(addr: SocketAddr, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "s_client".to_owned(),
        "-connect".to_owned(),
        addr.to_string(),
        "-servername".to_owned(),
        "localhost".to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let out = tokio::task::spawn_blocking(move || {
        Command::new("openssl")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn tls_1_1_is_refused() {
    let Some(pki) = pki() else { return };
    let server = Server::start(pki, Arc::default(), opts()).await;

    // Control: the same client completes a TLS 1.2 handshake, so a failure below is about the
    // version and not about the tool.
    let (ok, stdout, stderr) = s_client(server.addr, &["-tls1_2"]).await;
    assert!(ok, "TLS 1.2 handshake failed: {stdout}\n{stderr}");
    assert!(stdout.contains("TLSv1.2"), "{stdout}");

    let (ok, stdout, stderr) =
        s_client(server.addr, &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]).await;
    if stderr.contains("no protocols available") {
        eprintln!("skipping: this openssl cannot offer TLS 1.1 ({stderr})");
        server.stop().await;
        return;
    }
    assert!(!ok, "TLS 1.1 handshake succeeded: {stdout}");
    // rustls answers a TLS 1.1 ClientHello with a fatal alert (handshake_failure); a refusal by
    // the client itself would not mention one.
    assert!(
        stderr.contains("alert"),
        "expected the server to refuse with an alert: {stderr}"
    );
    server.stop().await;
}

// Bodies and per-connection state

#[tokio::test]
async fn request_bodies_are_bounded() {
    let Some(pki) = pki() else { return };
    let server = Server::start(pki, Arc::default(), opts()).await;
    let too_large = (BODY_LIMIT.to_string(), StatusCode::PAYLOAD_TOO_LARGE);

    for spec in [ClientSpec::h1, ClientSpec::h2] {
        // Declared length within the limit, then exactly at it.
        let mut client = Client::connect(server.addr, pki, spec()).await.unwrap();
        for len in [10, BODY_LIMIT] {
            let (status, _, body) = client
                .send("PUT", "/body", full(len), Some(len))
                .await
                .unwrap();
            assert_eq!(
                (status, body.as_ref()),
                (StatusCode::OK, len.to_string().as_bytes())
            );
        }

        // Declared length over the limit: refused from the header alone.
        let mut client = Client::connect(server.addr, pki, spec()).await.unwrap();
        let len = 64 * 1024;
        let (status, _, body) = client
            .send("PUT", "/body", full(len), Some(len))
            .await
            .unwrap();
        assert_eq!(
            (String::from_utf8_lossy(&body).into_owned(), status),
            too_large
        );
        // ... without waiting for the body: this one never arrives.
        let mut client = Client::connect(server.addr, pki, spec()).await.unwrap();
        let (status, _, body) = tokio::time::timeout(
            PATIENCE,
            client.send("PUT", "/body", Stalled.boxed_unsync(), Some(len)),
        )
        .await
        .expect("answered before the body was read")
        .unwrap();
        assert_eq!(
            (String::from_utf8_lossy(&body).into_owned(), status),
            too_large
        );

        // No declared length: counted while streaming.
        let mut client = Client::connect(server.addr, pki, spec()).await.unwrap();
        let (status, _, body) = client
            .send("PUT", "/body", streamed(4, 200), None)
            .await
            .unwrap();
        assert_eq!((status, body.as_ref()), (StatusCode::OK, b"800".as_ref()));
        let (status, _, body) = client
            .send("PUT", "/body", streamed(8, 200), None)
            .await
            .unwrap();
        assert_eq!(
            (String::from_utf8_lossy(&body).into_owned(), status),
            too_large
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn conn_state_belongs_to_one_connection() {
    let Some(pki) = pki() else { return };
    let server = Server::start(pki, Arc::default(), opts()).await;

    let mut first = Client::connect(server.addr, pki, ClientSpec::h1())
        .await
        .unwrap();
    let mut second = Client::connect(server.addr, pki, ClientSpec::h2())
        .await
        .unwrap();
    assert_eq!(first.get("/notnow/a").await.unwrap().2.as_ref(), b"a");
    assert_eq!(second.get("/notnow/c").await.unwrap().2.as_ref(), b"c");
    assert_eq!(first.get("/notnow/b").await.unwrap().2.as_ref(), b"a,b");
    assert_eq!(second.get("/notnow/d").await.unwrap().2.as_ref(), b"c,d");

    // A reconnecting device starts with a clean slate.
    drop(first);
    let mut again = Client::connect(server.addr, pki, ClientSpec::h1())
        .await
        .unwrap();
    assert_eq!(again.get("/notnow/e").await.unwrap().2.as_ref(), b"e");
    server.stop().await;
}

// Shutdown, limits and timeouts

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_and_refuses_new_connections() {
    let Some(pki) = pki() else { return };
    let (handler, mut started) = TestHandler::with_slow_channel();
    let mut server = Server::start(pki, Arc::clone(&handler), opts()).await;

    let mut idle = Client::connect(server.addr, pki, ClientSpec::h1())
        .await
        .unwrap();
    idle.info().await;
    let mut in_flight = Vec::new();
    for spec in [ClientSpec::h1, ClientSpec::h2] {
        let mut client = Client::connect(server.addr, pki, spec()).await.unwrap();
        in_flight.push(tokio::spawn(async move {
            let outcome = client.get("/slow").await;
            (outcome, client)
        }));
        slow_started(&mut started).await;
    }

    server.trigger_shutdown();
    let addr = server.addr;
    eventually("the listener is closed", || async move {
        matches!(
            TcpStream::connect(addr).await,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
        )
    })
    .await;
    // The idle keep-alive connection is closed without waiting for the slow requests.
    tokio::time::timeout(PATIENCE, &mut idle.driver)
        .await
        .expect("idle connection closed at shutdown")
        .unwrap();
    assert!(!server.task.is_finished(), "requests are still in flight");

    handler.slow_release.add_permits(2);
    for request in in_flight {
        let (outcome, _client) = request.await.unwrap();
        let (status, _, body) = outcome.unwrap();
        assert_eq!(
            (status, body.as_ref()),
            (StatusCode::OK, b"slow done".as_ref())
        );
    }
    tokio::time::timeout(PATIENCE, server.task)
        .await
        .expect("serve returns once drained")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn drain_timeout_closes_stuck_connections() {
    let Some(pki) = pki() else { return };
    let (handler, mut started) = TestHandler::with_slow_channel();
    let opts = ServeOptions {
        drain_timeout: Duration::from_millis(200),
        ..opts()
    };
    let mut server = Server::start(pki, Arc::clone(&handler), opts).await;

    let mut stuck = Vec::new();
    for spec in [ClientSpec::h1, ClientSpec::h2] {
        let mut client = Client::connect(server.addr, pki, spec()).await.unwrap();
        stuck.push(tokio::spawn(async move {
            client.get("/slow").await.map(|_| ())
        }));
        slow_started(&mut started).await;
    }
    server.trigger_shutdown();
    tokio::time::timeout(PATIENCE, server.task)
        .await
        .expect("serve returns after the drain timeout")
        .unwrap()
        .unwrap();
    for request in stuck {
        let outcome = tokio::time::timeout(PATIENCE, request)
            .await
            .unwrap()
            .unwrap();
        assert!(outcome.is_err(), "a force-closed request cannot succeed");
    }
    // The handlers were cancelled, not left running: only this test and `server.handler`
    // still hold the handler.
    assert_eq!(Arc::strong_count(&handler), 2);
}

#[tokio::test]
async fn idle_connections_are_closed_but_busy_ones_are_not() {
    let Some(pki) = pki() else { return };
    let (handler, mut started) = TestHandler::with_slow_channel();
    let idle_timeout = Duration::from_millis(300);
    let opts = ServeOptions {
        idle_timeout,
        ..opts()
    };
    let server = Server::start(pki, Arc::clone(&handler), opts).await;

    for spec in [ClientSpec::h1, ClientSpec::h2] {
        let mut idle = Client::connect(server.addr, pki, spec()).await.unwrap();
        idle.info().await;
        tokio::time::timeout(PATIENCE, &mut idle.driver)
            .await
            .expect("the server closes an idle connection")
            .unwrap();

        let mut busy = Client::connect(server.addr, pki, spec()).await.unwrap();
        let request = tokio::spawn(async move { busy.get("/slow").await.map(|r| r.0) });
        slow_started(&mut started).await;
        tokio::time::sleep(idle_timeout * 3).await;
        handler.slow_release.add_permits(1);
        assert_eq!(request.await.unwrap().unwrap(), StatusCode::OK);
    }
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed() {
    let Some(pki) = pki() else { return };
    let opts = ServeOptions {
        max_connections: 1,
        ..opts()
    };
    let server = Server::start(pki, Arc::default(), opts).await;

    let mut first = Client::connect(server.addr, pki, ClientSpec::h1())
        .await
        .unwrap();
    first.info().await;
    let refused = Client::connect(server.addr, pki, ClientSpec::h1()).await;
    assert!(refused.is_err(), "a second connection is over the limit");

    drop(first);
    let addr = server.addr;
    eventually("the slot is free again", || async move {
        match Client::connect(addr, pki, ClientSpec::h1()).await {
            Ok(mut client) => client.get("/info").await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn handshake_timeout_closes_silent_clients() {
    let Some(pki) = pki() else { return };
    let opts = ServeOptions {
        handshake_timeout: Duration::from_millis(200),
        ..opts()
    };
    let server = Server::start(pki, Arc::default(), opts).await;

    // Connect but never send a ClientHello: the server must hang up on its own.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(PATIENCE, silent.read(&mut buf))
        .await
        .expect("the server closes the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "unexpected data: {read:?}");
    server.stop().await;
}

// Certificate replacement and configuration errors

#[tokio::test]
async fn certificate_can_be_replaced_while_serving() {
    let Some(pki) = pki() else { return };
    let server = Server::start(pki, Arc::default(), opts()).await;

    let mut before = Client::connect(server.addr, pki, ClientSpec::h1())
        .await
        .unwrap();
    assert_eq!(before.server_leaf, pki.server.cert);

    server
        .tls
        .reload(
            &pki.server_renewed.identity(),
            std::slice::from_ref(&pki.ca),
        )
        .unwrap();
    let mut after = Client::connect(server.addr, pki, ClientSpec::h1())
        .await
        .unwrap();
    assert_eq!(after.server_leaf, pki.server_renewed.cert);
    after.info().await;
    // The connection made before the switch carries on.
    before.info().await;

    // A broken replacement leaves the working configuration in place.
    let broken = TlsIdentity {
        cert_chain_der: vec![pki.server.cert.clone()],
        key_pkcs8_der: Zeroizing::new(pki.client.key.clone()),
    };
    assert!(server
        .tls
        .reload(&broken, std::slice::from_ref(&pki.ca))
        .is_err());
    let mut still = Client::connect(server.addr, pki, ClientSpec::h1())
        .await
        .unwrap();
    assert_eq!(still.server_leaf, pki.server_renewed.cert);
    still.info().await;
    server.stop().await;
}

#[test]
fn server_config_refuses_unusable_inputs() {
    let Some(pki) = pki() else { return };
    let roots = [pki.ca.clone()];

    let config = server_config(&pki.server.identity(), &roots).unwrap();
    assert_eq!(
        config.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    assert_eq!(config.max_early_data_size, 0);

    let empty = TlsIdentity {
        cert_chain_der: Vec::new(),
        key_pkcs8_der: Zeroizing::new(pki.server.key.clone()),
    };
    assert!(matches!(
        server_config(&empty, &roots),
        Err(TlsError::EmptyChain)
    ));

    let mismatched = TlsIdentity {
        cert_chain_der: vec![pki.server.cert.clone()],
        key_pkcs8_der: Zeroizing::new(pki.client.key.clone()),
    };
    assert!(matches!(
        server_config(&mismatched, &roots),
        Err(TlsError::KeyMismatch)
    ));

    let garbage_key = TlsIdentity {
        cert_chain_der: vec![pki.server.cert.clone()],
        key_pkcs8_der: Zeroizing::new(b"not a key".to_vec()),
    };
    assert!(matches!(
        server_config(&garbage_key, &roots),
        Err(TlsError::Key(_))
    ));

    let bad_roots = [pki.ca.clone(), b"not a certificate".to_vec()];
    assert!(matches!(
        server_config(&pki.server.identity(), &bad_roots),
        Err(TlsError::ClientRoot { index: 1, .. })
    ));

    // The key must never show up in debug output.
    let shown = format!("{:?}", pki.server.identity());
    assert!(shown.contains("redacted"), "{shown}");
}

#[tokio::test]
async fn without_client_roots_no_certificate_is_requested() {
    let Some(pki) = pki() else { return };
    let tls = Arc::new(ReloadableTls::from_identity(&pki.server.identity(), &[]).unwrap());
    let (listeners, _) = take_listeners(&["127.0.0.1:0".parse().unwrap()]).unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listeners,
        tls,
        Arc::new(TestHandler::default()),
        opts(),
        async move {
            let _ = rx.await;
        },
    ));

    // The client has a certificate, but is never asked for it.
    let spec = ClientSpec {
        identity: Some(&pki.client),
        ..ClientSpec::h1()
    };
    let mut client = Client::connect(addr, pki, spec).await.unwrap();
    let (status, _, body) = client.get("/peer").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    tx.send(()).unwrap();
    tokio::time::timeout(PATIENCE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

// Listeners

#[tokio::test]
async fn serve_needs_a_listener() {
    let Some(pki) = pki() else { return };
    let tls = Arc::new(ReloadableTls::from_identity(&pki.server.identity(), &[]).unwrap());
    let err = serve(
        Vec::new(),
        tls,
        Arc::new(TestHandler::default()),
        opts(),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn binds_every_address_given() {
    let any = "127.0.0.1:0".parse().unwrap();
    let (listeners, source) = take_listeners(&[any, any]).unwrap();
    assert_eq!(source, ListenSource::Bound { count: 2 });
    let a = listeners[0].local_addr().unwrap();
    let b = listeners[1].local_addr().unwrap();
    assert_ne!(a.port(), b.port());

    // Both accept.
    for addr in [a, b] {
        let (connected, accepted) = tokio::join!(
            TcpStream::connect(addr),
            listeners
                .iter()
                .find(|l| l.local_addr().unwrap() == addr)
                .unwrap()
                .accept()
        );
        connected.unwrap();
        accepted.unwrap();
    }
}

#[tokio::test]
async fn bind_failure_names_the_address() {
    let (held, _) = take_listeners(&["127.0.0.1:0".parse().unwrap()]).unwrap();
    let taken = held[0].local_addr().unwrap();
    let err = take_listeners(&[taken]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains(&taken.to_string()), "{err}");

    let err = take_listeners(&[]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn take_listeners_needs_a_runtime() {
    let err = take_listeners(&["127.0.0.1:0".parse().unwrap()]).unwrap_err();
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
}

fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Environment variable telling [`socket_activation_child`] which port it was given.
const ACTIVATION_PORT_VAR: &str = "MDM_WEB_TEST_ACTIVATION_PORT";
/// Environment variable handing [`socket_activation_child`] the server certificate and key
/// (hex DER, `cert:key`), so that it presents the certificate this side trusts.
const ACTIVATION_IDENTITY_VAR: &str = "MDM_WEB_TEST_ACTIVATION_IDENTITY";

/// Runs this test binary under `systemd-socket-activate`, which binds a port, waits for the
/// first connection and then starts the child with the socket as fd 3, exactly as systemd
/// does. The child serves HTTPS on it; this side speaks to it through that first connection.
#[tokio::test]
async fn socket_activation_serves_on_the_passed_socket() {
    let Some(pki) = pki() else { return };
    let Some(activate) = find_program("systemd-socket-activate") else {
        eprintln!("skipping: systemd-socket-activate is not installed");
        return;
    };
    // systemd-socket-activate cannot bind port 0: borrow a free port from the kernel.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let exe = std::env::current_exe().unwrap();
    let identity = format!(
        "{ACTIVATION_IDENTITY_VAR}={}:{}",
        hex::encode(&pki.server.cert),
        hex::encode(&pki.server.key)
    );
    let child = tokio::task::spawn_blocking(move || {
        Command::new(activate)
            .arg("-l")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-E")
            .arg(format!("{ACTIVATION_PORT_VAR}={port}"))
            .arg("-E")
            .arg(identity)
            .arg(exe)
            .args([
                "socket_activation_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });

    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let client = Arc::new(AsyncMutex::new(None));
    let slot = Arc::clone(&client);
    eventually("the activated server answers", || {
        let slot = Arc::clone(&slot);
        async move {
            match Client::connect(addr, pki, ClientSpec::h1()).await {
                Ok(c) => {
                    *slot.lock().await = Some(c);
                    true
                }
                Err(_) => false,
            }
        }
    })
    .await;
    let mut client = client.lock().await.take().unwrap();
    let (status, _, body) = client.get("/activated").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_ref(), b"socket activation, 1 socket(s)");
    drop(client);

    let out = tokio::time::timeout(PATIENCE, child)
        .await
        .expect("the activated child exits")
        .unwrap();
    assert!(
        out.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Answers `/activated` with how its listeners were obtained, then stops.
struct ActivationHandler {
    source: ListenSource,
    done: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

impl Handler for ActivationHandler {
    async fn handle(
        &self,
        _req: Request<Incoming>,
        _conn: Arc<ConnectionInfo>,
    ) -> Response<Full<Bytes>> {
        if let Some(done) = self.done.lock().unwrap().take() {
            let _ = done.send(());
        }
        let body = match self.source {
            ListenSource::SocketActivation { count } => {
                format!("socket activation, {count} socket(s)")
            }
            ListenSource::Bound { count } => format!("bound {count}"),
        };
        text(StatusCode::OK, body)
    }
}

#[tokio::test]
#[ignore = "helper run by socket_activation_serves_on_the_passed_socket"]
async fn socket_activation_child() {
    let Ok(port) = std::env::var(ACTIVATION_PORT_VAR) else {
        eprintln!("not started by systemd-socket-activate; nothing to do");
        return;
    };
    let identity = std::env::var(ACTIVATION_IDENTITY_VAR).unwrap();
    let (cert, key) = identity.split_once(':').unwrap();
    let identity = TlsIdentity {
        cert_chain_der: vec![hex::decode(cert).unwrap()],
        key_pkcs8_der: Zeroizing::new(hex::decode(key).unwrap()),
    };
    // The bind address must be ignored when sockets are passed.
    let (listeners, source) = take_listeners(&["127.0.0.1:1".parse().unwrap()]).unwrap();
    assert_eq!(source, ListenSource::SocketActivation { count: 1 });
    assert_eq!(
        listeners[0].local_addr().unwrap().port().to_string(),
        port,
        "the passed socket is the one systemd-socket-activate bound"
    );
    let (done_tx, done_rx) = oneshot::channel();
    let handler = Arc::new(ActivationHandler {
        source,
        done: std::sync::Mutex::new(Some(done_tx)),
    });
    let tls = Arc::new(ReloadableTls::from_identity(&identity, &[]).unwrap());
    tokio::time::timeout(
        PATIENCE,
        serve(listeners, tls, handler, opts(), async move {
            let _ = done_rx.await;
        }),
    )
    .await
    .expect("the parent makes one request")
    .unwrap();
}
