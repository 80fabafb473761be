//! A small ABM client for the tests: it signs `/session` requests, keeps the session
//! token (following rotations) and sends the headers Apple asks for.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use der::Encode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mdm_sim::abm::{oauth, AbmSimConfig, AbmSimulator, OAuthCredentials, ServerId};
use mdm_sim::http::HttpResponse;
use mdm_sim::HttpClient;
use serde_json::Value;

/// What the tests send as User-Agent: a product, as Apple requires.
pub const USER_AGENT: &str = "mdm-sim-tests/1.0";

pub async fn start() -> AbmSimulator {
    start_with(AbmSimConfig::default()).await
}

pub async fn start_with(config: AbmSimConfig) -> AbmSimulator {
    AbmSimulator::start(config).await.unwrap()
}

pub fn unix_now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn fresh_nonce() -> String {
    let mut bytes = [0u8; 12];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    hex::encode(bytes)
}

/// Reading helpers for answers.
pub trait RespExt {
    fn text(&self) -> String;
    fn json(&self) -> Value;
}

impl RespExt for HttpResponse {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body {:?} is not JSON: {e}",
                self.status,
                self.text()
            )
        })
    }
}

pub struct Client {
    http: Arc<HttpClient>,
    base: String,
    pub session: Option<String>,
}

impl Client {
    pub fn new(sim: &AbmSimulator) -> Self {
        Self::from_parts(&sim.base_url(), sim.ca_pem().as_bytes())
    }

    pub fn from_parts(base: &str, ca_pem: &[u8]) -> Self {
        Self {
            http: Arc::new(HttpClient::from_ca_pem(ca_pem).unwrap()),
            base: base.to_owned(),
            session: None,
        }
    }

    pub fn clone_with_session(&self, session: &str) -> Self {
        Self {
            http: self.http.clone(),
            base: self.base.clone(),
            session: Some(session.to_owned()),
        }
    }

    /// `GET /session` signed with `credentials`.
    pub async fn session_raw(
        &self,
        credentials: &OAuthCredentials,
        timestamp: i64,
        nonce: &str,
    ) -> HttpResponse {
        let url = format!("{}/session", self.base);
        let value = oauth::authorization_header(&url, credentials, timestamp, nonce);
        self.get_with_auth(&url, &value).await
    }

    /// `GET url` with this Authorization value (none when empty).
    pub async fn get_with_auth(&self, url: &str, authorization: &str) -> HttpResponse {
        let mut headers = mdm_sim::http::headers(&[
            ("user-agent", USER_AGENT),
            ("x-server-protocol-version", "10"),
        ])
        .unwrap();
        if !authorization.is_empty() {
            headers.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(authorization).unwrap(),
            );
        }
        self.http.get(url, headers).await.unwrap()
    }

    pub async fn login(&mut self, sim: &AbmSimulator, server: ServerId) {
        let credentials = sim.credentials(server).unwrap();
        self.login_with(&credentials).await;
    }

    pub async fn login_with(&mut self, credentials: &OAuthCredentials) {
        let r = self
            .session_raw(credentials, unix_now(), &fresh_nonce())
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        self.session = Some(r.json()["auth_session_token"].as_str().unwrap().to_owned());
    }

    pub async fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> HttpResponse {
        self.call_with(method, path, body.map(|b| b.to_string().into_bytes()), &[])
            .await
    }

    /// A call with Apple's headers, `extra` replacing them; follows session rotation.
    pub async fn call_with(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, &str)],
    ) -> HttpResponse {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
        headers.insert("x-server-protocol-version", HeaderValue::from_static("10"));
        if body.is_some() {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json;charset=UTF8"),
            );
        }
        if let Some(session) = &self.session {
            headers.insert(
                "x-adm-auth-session",
                HeaderValue::from_str(session).unwrap(),
            );
        }
        for (name, value) in extra {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let r = self
            .http
            .request(
                method.parse().unwrap(),
                &format!("{}{path}", self.base),
                headers,
                body.unwrap_or_default(),
            )
            .await
            .unwrap();
        if let Some(rotated) = r.header("x-adm-auth-session") {
            self.session = Some(rotated.to_owned());
        }
        r
    }
}

pub fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `openssl smime -decrypt -in FILE -inkey KEY`, as an administrator would run it.
pub fn openssl_smime_decrypt(file: &Path, key: &Path) -> String {
    let out = Command::new("openssl")
        .args(["smime", "-decrypt", "-in"])
        .arg(file)
        .arg("-inkey")
        .arg(key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl smime -decrypt failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `GET /session` over HTTP/2 (ALPN h2); returns the status and body.
pub async fn http2_session(sim: &AbmSimulator, credentials: &OAuthCredentials) -> (u16, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            sim.ca_certificate().to_der().unwrap(),
        ))
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let url = format!("{}/session", sim.base_url());
    let request = http::Request::get(&url)
        .header(
            http::header::AUTHORIZATION,
            oauth::authorization_header(&url, credentials, unix_now(), &fresh_nonce()),
        )
        .header(http::header::USER_AGENT, USER_AGENT)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The `mdm-abm-sim` binary, killed when dropped.
pub struct Binary {
    child: Child,
    base_url: String,
    // Kept open: the binary may print more, and a closed pipe would make that fail.
    _stdout: BufReader<ChildStdout>,
}

impl Binary {
    pub fn spawn(state_dir: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mdm-abm-sim"))
            .arg("--state-dir")
            .arg(state_dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let base_url = line.trim().to_owned();
        assert!(base_url.starts_with("https://127.0.0.1:"), "{base_url:?}");
        Self {
            child,
            base_url,
            _stdout: stdout,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        self.kill();
    }
}
