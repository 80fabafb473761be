//! The HTTPS listener: TLS with the simulator's own CA, HTTP/1.1 and HTTP/2 (ALPN),
//! and the split between the Apple API and the `/_sim/` control API.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use der::Encode;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use x509_cert::Certificate;

use super::api::{self, HttpResponse};
use super::control;
use super::error::AbmSimError;
use super::state::State;
use super::types::{Endpoint, RequestRecord};
use crate::error::CryptoError;
use crate::keys::PrivateKey;
use crate::oids;
use crate::x509::{self, CertificateParams, KeyUsageFlags};

/// A TLS handshake that has not finished in this time is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The tunables of a running simulator.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) session_lifetime: Duration,
    pub(crate) rotate_after: Option<u32>,
    pub(crate) rotation_grace_calls: u32,
    pub(crate) oauth_window: Duration,
    pub(crate) token_lifetime: Duration,
    pub(crate) max_body: usize,
}

/// What request handlers share.
pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) settings: Settings,
    pub(crate) cursor_key: aws_lc_rs::hmac::Key,
    pub(crate) control_token: Option<String>,
}

impl Shared {
    pub(crate) fn new(
        state: State,
        settings: Settings,
        control_token: Option<String>,
    ) -> Result<Self, AbmSimError> {
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).map_err(|_| AbmSimError::Random)?;
        Ok(Self {
            state: Mutex::new(state),
            settings,
            cursor_key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key),
            control_token,
        })
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the simulated world in a state
        // worse than a test double may be in; keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The simulator's CA and the TLS configuration built from it.
pub(crate) struct Tls {
    pub(crate) ca: Certificate,
    pub(crate) config: rustls::ServerConfig,
}

/// Generates a CA and a server certificate for `names` (DNS names or IP addresses).
pub(crate) fn tls(names: &[String]) -> Result<Tls, AbmSimError> {
    let ca_key = PrivateKey::generate_rsa2048()?;
    let ca = x509::self_signed(
        &CertificateParams::new(x509::name(&[
            ("C", "US"),
            ("O", "ABM Simulator"),
            ("CN", "ABM Simulator Root CA"),
        ])?)
        .valid_for_days(3650)
        .ca(Some(0)),
        &ca_key,
    )?;
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for name in names {
        match name.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) if !dns.contains(&name.as_str()) => dns.push(name.as_str()),
            Err(_) => {}
        }
    }
    let leaf_key = PrivateKey::generate_rsa2048()?;
    let leaf = x509::issue(
        &CertificateParams::new(x509::name(&[
            ("C", "US"),
            ("O", "ABM Simulator"),
            ("CN", "mdmenrollment.apple.com"),
        ])?)
        .valid_for_days(365)
        .key_usage(&[
            KeyUsageFlags::DigitalSignature,
            KeyUsageFlags::KeyEncipherment,
        ])
        .extended_key_usage(&[oids::KP_SERVER_AUTH])
        .subject_alt_names(&dns, &ips),
        &leaf_key.public_key_info()?,
        Some(&ca),
        &ca_key,
    )?;
    let chain = vec![
        CertificateDer::from(leaf.to_der().map_err(CryptoError::from)?),
        CertificateDer::from(ca.to_der().map_err(CryptoError::from)?),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.pkcs8_der().to_vec()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // Apple's front end speaks both; clients behind proxies often end up on HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Tls { ca, config })
}

/// Accepts connections until `shutdown` turns true, then lets open connections finish
/// their requests.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let acceptor = acceptor.clone();
                    let shared = shared.clone();
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let _ = tcp.set_nodelay(true);
                        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!("ABM simulator: TLS handshake with {peer} failed: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("ABM simulator: TLS handshake with {peer} timed out");
                                return;
                            }
                        };
                        let service = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                        });
                        let conn = builder.serve_connection(TokioIo::new(tls), service).into_owned();
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!("ABM simulator: connection with {peer} ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!("ABM simulator accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("ABM simulator: connections still open after 5 s; leaving them");
    }
}

/// Resolves once the simulator is shutting down (or was dropped).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; it is dropped inside this future.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Routes one request and records it.
async fn handle(shared: &Shared, req: Request<Incoming>) -> HttpResponse {
    let path = req.uri().path().to_owned();
    if path == "/_sim" || path.starts_with("/_sim/") {
        return control::handle(shared, req).await;
    }
    let method = req.method().clone();
    let route = Endpoint::route(&method, &path);
    let endpoint = route.and_then(Result::ok);
    let response = api_request(shared, req, route).await;
    shared.state().record(RequestRecord {
        method: method.to_string(),
        path,
        status: response.status().as_u16(),
        endpoint,
        at: SystemTime::now(),
    });
    response
}

async fn api_request(
    shared: &Shared,
    req: Request<Incoming>,
    route: Option<Result<Endpoint, ()>>,
) -> HttpResponse {
    let endpoint = match route {
        None => return api::bare(StatusCode::NOT_FOUND, "NOT_FOUND"),
        Some(Err(())) => return api::bare(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
        Some(Ok(e)) => e,
    };
    let delay = shared.state().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let fault = shared.state().take_fault(endpoint);
    if let Some(fault) = fault {
        return api::fault_response(fault);
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(body, shared.settings.max_body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    if endpoint == Endpoint::Session {
        api::session(shared, &parts)
    } else {
        api::authenticated(shared, endpoint, &parts, &body)
    }
}

/// Reads a whole request body, refusing more than `max` bytes.
pub(crate) async fn read_body(body: Incoming, max: usize) -> Result<Bytes, HttpResponse> {
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(api::object(
            StatusCode::PAYLOAD_TOO_LARGE,
            "REQUEST_ENTITY_TOO_LARGE",
            "The request body is too large.",
        )),
        Err(_) => Err(api::object(
            StatusCode::BAD_REQUEST,
            "MALFORMED_REQUEST_BODY",
            "The request body could not be read.",
        )),
    }
}

/// The address clients should use for a listener bound to `addr`.
pub(crate) fn base_url(addr: SocketAddr) -> String {
    let host = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".to_owned(),
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) if v6.is_unspecified() => "[::1]".to_owned(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    format!("https://{host}:{}", addr.port())
}
