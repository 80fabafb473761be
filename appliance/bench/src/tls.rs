//! TLS client pieces: fetching the appliance CA from a daemon this tool just started, a
//! streamed GET for answers too large to hold, and the
//! per-device client configurations (TLS 1.3, client certificate, session resumption) the
//! round-trip workers connect with.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::sign::{CertifiedKey, SigningKey, SingleCertAndKey};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;

use crate::error::BenchError;

/// The crypto provider every connection uses (the daemon's backend too).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Accepts whatever certificate the server presents, while still checking that the server
/// holds the key for it.
///
/// Used for exactly one request: `GET /ca.pem` from the daemon this process started a moment
/// earlier on loopback, to learn the CA it generated on first start (it writes no copy to its
/// data directory). Everything after that verifies against the fetched CA, so a wrong CA
/// would fail the very next connection.
#[derive(Debug)]
struct TrustOnFirstUse(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for TrustOnFirstUse {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Fetches `/ca.pem` from the freshly started daemon at `addr` (see [`TrustOnFirstUse`]).
pub async fn fetch_ca_pem(addr: SocketAddr) -> Result<String, BenchError> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustOnFirstUse(
            provider.signature_verification_algorithms,
        )))
        .with_no_client_auth();
    let tls = connect(addr, config).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| ca_error(addr, e))?;
    tokio::spawn(conn);
    let req = http::Request::get("/ca.pem")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| ca_error(addr, e))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ca_error(addr, e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ca_error(addr, e))?
        .to_bytes();
    let pem = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() || !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(BenchError::ApiAnswer {
            path: "/ca.pem".into(),
            reason: format!("HTTP {status}, not a PEM certificate"),
        });
    }
    Ok(pem)
}

/// `GET path` on the daemon at `addr` (trusting `ca_pem`) with a bearer token, handing each
/// piece of the body to `chunk` as it arrives instead of holding the whole answer: for
/// answers larger than the admin client takes (a CSV export of 100,000 devices is tens of
/// MiB). Fails on any status but 2xx.
pub async fn get_streamed(
    addr: SocketAddr,
    ca_pem: &str,
    token: &str,
    path: &str,
    mut chunk: impl FnMut(&[u8]),
) -> Result<(), BenchError> {
    let fail = |e: &dyn std::fmt::Display| BenchError::ApiAnswer {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots_from_pem(ca_pem)?)
        .with_no_client_auth();
    let tls = connect(addr, config).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| fail(&e))?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| fail(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| fail(&e))?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let text = body.collect().await.map_err(|e| fail(&e))?.to_bytes();
        return Err(BenchError::Api {
            method: "GET",
            path: path.to_owned(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&text).chars().take(400).collect(),
        });
    }
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.map_err(|e| fail(&e))?.data_ref() {
            chunk(data);
        }
    }
    Ok(())
}

fn ca_error(addr: SocketAddr, e: impl std::fmt::Display) -> BenchError {
    BenchError::ApiAnswer {
        path: format!("https://{addr}/ca.pem"),
        reason: e.to_string(),
    }
}

/// A root store holding the CA certificates of `pem`.
pub fn roots_from_pem(pem: &str) -> Result<Arc<RootCertStore>, BenchError> {
    let certs = mdm_sim::x509::certificates_from_pem(pem.as_bytes())?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        let der = der::Encode::to_der(&cert)?;
        roots.add(CertificateDer::from(der))?;
    }
    if roots.is_empty() {
        return Err(BenchError::ApiAnswer {
            path: "/ca.pem".into(),
            reason: "no certificate in it".into(),
        });
    }
    Ok(Arc::new(roots))
}

/// Loads a PKCS#8 private key for TLS client authentication.
pub fn signing_key(pkcs8: &[u8]) -> Result<Arc<dyn SigningKey>, BenchError> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
    Ok(rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)?)
}

/// A device's TLS client configuration: TLS 1.3 only (what current Apple devices negotiate),
/// HTTP/1.1 by ALPN, the device certificate as client identity, and a private session cache
/// so that a reconnect resumes that device's session and never another device's.
///
/// Keys are shared between devices (a pool, see `enroll`), so the loaded `key` is passed in
/// rather than parsed again for each device.
pub fn device_config(
    provider: &Arc<CryptoProvider>,
    roots: &Arc<RootCertStore>,
    cert_der: Vec<u8>,
    key: Arc<dyn SigningKey>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let certified = CertifiedKey::new(vec![CertificateDer::from(cert_der)], key);
    let mut config = ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(Arc::clone(roots))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The server sends two tickets per full handshake; a device only ever needs the newest.
    config.resumption = Resumption::in_memory_sessions(2);
    Ok(Arc::new(config))
}

/// A TCP connection to `addr` with a TLS session on it.
async fn connect(
    addr: SocketAddr,
    config: ClientConfig,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BenchError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(BenchError::io(format!("connect to {addr}")))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::from(addr.ip()), tcp)
        .await
        .map_err(BenchError::io(format!(
            "complete a TLS handshake with {addr}"
        )))
}
