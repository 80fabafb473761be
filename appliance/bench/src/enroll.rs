//! Phase 1: enroll simulated devices through the real protocol, several at a time: enrollment
//! link → signed profile → SCEP (GetCACaps, GetCACert, PKCSReq) → Authenticate → TokenUpdate,
//! the last two presenting the new identity as TLS client certificate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use der::Encode;
use mdm_sim::device::{DeviceKind, IdentityTransport, SimDevice};
use mdm_sim::error::DeviceError;
use mdm_sim::http::HttpClient;
use mdm_sim::keys::PrivateKey;
use x509_cert::Certificate;

use crate::error::BenchError;

/// What a worker needs to act as an enrolled device.
#[derive(Debug, Clone)]
pub struct EnrolledDevice {
    /// The enrollment id (UDID).
    pub udid: String,
    /// The SCEP-issued identity certificate, DER.
    pub cert_der: Vec<u8>,
    /// Index of its private key in the key pool.
    pub key_index: usize,
}

/// Generates `n` RSA-2048 keys, in parallel. RSA key generation costs tens of milliseconds,
/// more than a whole enrollment on the server, so devices share a pool: the server binds the
/// certificate (whose hash differs for every device), not the key.
pub async fn key_pool(n: usize) -> Result<Vec<PrivateKey>, BenchError> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n.max(1) {
        tasks.spawn_blocking(PrivateKey::generate_rsa2048);
    }
    let mut keys = Vec::with_capacity(n);
    while let Some(key) = tasks.join_next().await {
        keys.push(key??);
    }
    Ok(keys)
}

struct Shared {
    link_url: String,
    ca_pem: String,
    ca: Vec<Certificate>,
    keys: Vec<PrivateKey>,
    next: AtomicUsize,
    done: AtomicUsize,
    total: usize,
    progress: bool,
    started: Instant,
}

/// Enrolls `total` new simulated iPhones with `concurrency` devices in flight at a time.
/// Stops at the first failure: a benchmark over a partly failing enrollment would mislead.
pub async fn enroll(
    total: usize,
    concurrency: usize,
    link_url: &str,
    ca_pem: &str,
    keys: Vec<PrivateKey>,
    progress: bool,
) -> Result<Vec<EnrolledDevice>, BenchError> {
    let shared = Arc::new(Shared {
        link_url: link_url.to_owned(),
        ca_pem: ca_pem.to_owned(),
        ca: mdm_sim::x509::certificates_from_pem(ca_pem.as_bytes())?,
        keys,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        total,
        progress,
        started: Instant::now(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, total.max(1)) {
        let shared = Arc::clone(&shared);
        tasks.spawn(async move { enroll_loop(&shared).await });
    }
    let mut devices = Vec::with_capacity(total);
    while let Some(result) = tasks.join_next().await {
        match result? {
            Ok(mut batch) => devices.append(&mut batch),
            Err(e) => {
                tasks.abort_all();
                return Err(e);
            }
        }
    }
    Ok(devices)
}

/// Enrolls one new simulated iPhone through the enrollment link at `link_url` (profile
/// download with `client`, SCEP with `key` if given, Authenticate and TokenUpdate with the
/// new identity as TLS client certificate) and returns it, its connection to the daemon still
/// open.
pub async fn enroll_device(
    client: &HttpClient,
    link_url: &str,
    ca_pem: &str,
    ca: &[Certificate],
    key: Option<PrivateKey>,
) -> Result<SimDevice, BenchError> {
    let mut device = SimDevice::random(DeviceKind::IPhone)?;
    let udid = device.udid.clone();
    let wrap = |source: DeviceError| BenchError::Enroll {
        udid: udid.clone(),
        source,
    };
    device.trust_ca_pem(ca_pem.as_bytes())?;
    device.identity_transport = IdentityTransport::TlsClientCertificate;
    if let Some(key) = key {
        device.set_scep_key(key);
    }
    let profile = device.manual_enroll(client, link_url).await.map_err(wrap)?;
    device.install_profile(&profile, Some(ca)).map_err(wrap)?;
    device.complete_enrollment().await.map_err(wrap)?;
    Ok(device)
}

async fn enroll_loop(shared: &Shared) -> Result<Vec<EnrolledDevice>, BenchError> {
    // The profile download is an ordinary HTTPS GET; one kept-alive client per task serves it,
    // as a browser or Apple Configurator would. SCEP and check-ins use each device's own
    // connections (SimDevice keeps them), like a real device.
    let client = HttpClient::from_ca_pem(shared.ca_pem.as_bytes())?;
    let mut out = Vec::new();
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= shared.total {
            return Ok(out);
        }
        let key_index = i % shared.keys.len().max(1);
        let mut device = enroll_device(
            &client,
            &shared.link_url,
            &shared.ca_pem,
            &shared.ca,
            shared.keys.get(key_index).cloned(),
        )
        .await?;
        let udid = device.udid.clone();
        let identity = device.identity().ok_or_else(|| BenchError::Enroll {
            udid: udid.clone(),
            source: DeviceError::NoIdentity,
        })?;
        out.push(EnrolledDevice {
            udid,
            cert_der: identity.certificate.to_der()?,
            key_index,
        });
        // Dropping the device closes its connections now rather than at the idle timeout.
        device.disconnect().await;
        let done = shared.done.fetch_add(1, Ordering::Relaxed) + 1;
        if shared.progress
            && (done.is_multiple_of((shared.total / 10).max(1)) || done == shared.total)
        {
            eprintln!(
                "  enrolled {done}/{} ({:.0} s)",
                shared.total,
                shared.started.elapsed().as_secs_f64()
            );
        }
    }
}
