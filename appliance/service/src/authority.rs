//! The appliance's own certificates and keys: its CA, the SCEP RA certificate, the
//! profile-signing certificate and the TLS server certificate.
//!
//! Created on first start and kept in the settings table as certificate DER plus a private key
//! sealed by the keystore. The CA, the RA and the profile signer are RSA-2048; the TLS server
//! key is ECDSA P-256. `docs/design/pki.md` explains the choice: SCEP clients exist that encrypt
//! to every certificate `GetCACert` returns, so every certificate there must be RSA.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mdm_keystore::{SealedBlob, Sealer};
use mdm_pki::{Certificate, CertificateParams, KeyAlgorithm, KeyUsages, Name, PrivateKey};
use tracing::{info, warn};

use crate::error::{ServiceError, ServiceResult};
use crate::ports::SettingsStore;

const DAY: Duration = Duration::from_secs(24 * 3600);
/// The CA can be replaced only by re-enrolling devices, so it should outlive the hardware;
/// ten years keeps an RSA-2048 key within conservative guidance for its whole life.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const SERVICE_CERT_LIFETIME: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// Apple platforms refuse TLS server certificates valid for more than 398 days.
const TLS_CERT_LIFETIME: Duration = Duration::from_secs(397 * 24 * 3600);
/// Service certificates are replaced this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Device clocks are often minutes off; certificates start this far in the past.
pub const BACKDATE: Duration = Duration::from_secs(10 * 60);

/// The names the TLS server certificate must carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsNames {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// One certificate with its private key.
#[derive(Clone)]
pub struct KeyedCert {
    pub cert: Certificate,
    pub key: Arc<PrivateKey>,
}

impl std::fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCert")
            .field("subject", &self.cert.subject())
            .finish_non_exhaustive()
    }
}

/// The appliance's certificates and keys, unsealed in memory.
#[derive(Debug, Clone)]
pub struct Authority {
    pub ca: KeyedCert,
    pub scep_ra: KeyedCert,
    pub profile_signer: KeyedCert,
    pub tls: KeyedCert,
}

#[derive(Clone, Copy)]
enum Role {
    Ca,
    ScepRa,
    ProfileSigner,
    Tls,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Ca => "ca",
            Role::ScepRa => "scep-ra",
            Role::ProfileSigner => "profile-signer",
            Role::Tls => "tls",
        }
    }
    fn cert_key(self) -> String {
        format!("pki/{}.cert", self.name())
    }
    fn sealed_key(self) -> String {
        format!("pki/{}.key.sealed", self.name())
    }
    fn purpose(self) -> String {
        format!("{}-key", self.name())
    }
}

fn pki_err(what: &str, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::internal("PKI_FAILURE", format!("{what}: {e}"))
}

fn load<S: SettingsStore>(
    store: &S,
    sealer: &dyn Sealer,
    role: Role,
) -> ServiceResult<Option<KeyedCert>> {
    let (Some(cert_der), Some(sealed)) = (
        store.setting(&role.cert_key())?,
        store.setting(&role.sealed_key())?,
    ) else {
        return Ok(None);
    };
    let cert = Certificate::from_der(&cert_der)
        .map_err(|e| pki_err(&format!("stored {} certificate", role.name()), e))?;
    let blob = SealedBlob::from_bytes(&sealed).map_err(|e| {
        ServiceError::internal("KEY_UNSEAL_FAILED", format!("{} key: {e}", role.name()))
    })?;
    let pkcs8 = sealer.unseal(&role.purpose(), &blob).map_err(|e| {
        ServiceError::internal("KEY_UNSEAL_FAILED", format!("{} key: {e}", role.name()))
    })?;
    let key = PrivateKey::from_pkcs8_der(&pkcs8)
        .map_err(|e| pki_err(&format!("stored {} key", role.name()), e))?;
    Ok(Some(KeyedCert {
        cert,
        key: Arc::new(key),
    }))
}

/// Checks that `sealer` opens the appliance CA's key stored in `store`, which every appliance
/// database holds from its first start: proof that `sealer` has the data key the database is
/// sealed under (`mdmd restore --key-only` checks a recovered key this way).
pub fn sealer_opens_store<S: SettingsStore>(store: &S, sealer: &dyn Sealer) -> ServiceResult<()> {
    match load(store, sealer, Role::Ca)? {
        Some(_) => Ok(()),
        None => Err(ServiceError::not_found(
            "CA_KEY_MISSING",
            "the database holds no appliance CA key; it is not an appliance database",
        )),
    }
}

fn seal_entries(
    sealer: &dyn Sealer,
    role: Role,
    kc: &KeyedCert,
) -> ServiceResult<Vec<(String, Vec<u8>)>> {
    let blob = sealer
        .seal(&role.purpose(), &kc.key.to_pkcs8_der())
        .map_err(|e| {
            ServiceError::internal("KEY_SEAL_FAILED", format!("{} key: {e}", role.name()))
        })?;
    Ok(vec![
        (role.cert_key(), kc.cert.der().to_vec()),
        (role.sealed_key(), blob.to_bytes()),
    ])
}

fn needs_renewal(cert: &Certificate, now: SystemTime) -> bool {
    cert.not_after() < now + RENEW_BEFORE
}

fn new_ca(org: &str) -> ServiceResult<KeyedCert> {
    let key = PrivateKey::generate(KeyAlgorithm::Rsa2048).map_err(|e| pki_err("CA key", e))?;
    let now = SystemTime::now();
    let params = CertificateParams {
        subject: Name {
            common_name: format!("{org} MDM Appliance CA"),
            organization: Some(org.to_string()),
            organizational_unit: None,
            uid: None,
        },
        subject_der: None,
        serial: None,
        not_before: now - BACKDATE,
        not_after: now + CA_LIFETIME,
        is_ca: true,
        path_len: Some(0),
        key_usage: KeyUsages {
            key_cert_sign: true,
            crl_sign: true,
            digital_signature: true,
            ..Default::default()
        },
        extended_key_usage: Vec::new(),
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
    };
    let cert = mdm_pki::self_signed(&params, &key).map_err(|e| pki_err("CA certificate", e))?;
    Ok(KeyedCert {
        cert,
        key: Arc::new(key),
    })
}

fn issue_service_cert(
    ca: &KeyedCert,
    role: Role,
    org: &str,
    names: &TlsNames,
) -> ServiceResult<KeyedCert> {
    let now = SystemTime::now();
    let (alg, cn, lifetime, usages, eku) = match role {
        Role::ScepRa => (
            KeyAlgorithm::Rsa2048,
            format!("{org} MDM SCEP RA"),
            SERVICE_CERT_LIFETIME,
            KeyUsages {
                digital_signature: true,
                key_encipherment: true,
                ..Default::default()
            },
            Vec::new(),
        ),
        // No extendedKeyUsage: `openssl cms -verify` (S/MIME purpose) and Apple's profile
        // verification both accept a signer without one.
        Role::ProfileSigner => (
            KeyAlgorithm::Rsa2048,
            format!("{org} MDM Profile Signing"),
            SERVICE_CERT_LIFETIME,
            KeyUsages {
                digital_signature: true,
                ..Default::default()
            },
            Vec::new(),
        ),
        // Apple requires serverAuth in the EKU and the names in subjectAltName.
        Role::Tls => (
            KeyAlgorithm::EcdsaP256,
            names
                .dns
                .first()
                .cloned()
                .unwrap_or_else(|| format!("{org} MDM")),
            TLS_CERT_LIFETIME,
            KeyUsages {
                digital_signature: true,
                ..Default::default()
            },
            vec![const_oid::db::rfc5280::ID_KP_SERVER_AUTH],
        ),
        Role::Ca => return new_ca(org),
    };
    let key = PrivateKey::generate(alg).map_err(|e| pki_err(role.name(), e))?;
    let (dns_names, ip_addresses) = match role {
        Role::Tls => (names.dns.clone(), names.ips.clone()),
        _ => (Vec::new(), Vec::new()),
    };
    let params = CertificateParams {
        subject: Name {
            common_name: cn,
            organization: Some(org.to_string()),
            organizational_unit: None,
            uid: None,
        },
        subject_der: None,
        serial: None,
        not_before: now - BACKDATE,
        not_after: now + lifetime,
        is_ca: false,
        path_len: None,
        key_usage: usages,
        extended_key_usage: eku,
        dns_names,
        ip_addresses,
    };
    let cert = mdm_pki::issue(&params, &key.public_key_der(), &ca.cert, &ca.key)
        .map_err(|e| pki_err(role.name(), e))?;
    Ok(KeyedCert {
        cert,
        key: Arc::new(key),
    })
}

fn tls_names_match(cert: &Certificate, names: &TlsNames) -> bool {
    let (dns, ips) = (cert.dns_names(), cert.ip_addresses());
    let mut want_dns = names.dns.clone();
    want_dns.sort();
    let mut have_dns = dns;
    have_dns.sort();
    let mut want_ips = names.ips.clone();
    want_ips.sort();
    let mut have_ips = ips;
    have_ips.sort();
    want_dns == have_dns && want_ips == have_ips
}

impl Authority {
    /// Load the appliance's certificates and keys, creating whatever is missing (first start)
    /// and replacing service certificates that expire within 30 days or, for TLS, that no
    /// longer carry the configured names. The CA itself is never replaced automatically.
    pub async fn load_or_create<S: SettingsStore>(
        store: &S,
        sealer: &dyn Sealer,
        org: &str,
        names: &TlsNames,
    ) -> ServiceResult<Authority> {
        let now = SystemTime::now();
        let mut writes = Vec::new();
        let ca = match load(store, sealer, Role::Ca)? {
            Some(ca) => {
                if ca.cert.not_after() < now {
                    return Err(ServiceError::internal(
                        "CA_EXPIRED",
                        "the appliance CA has expired; devices must be re-enrolled with a new CA",
                    ));
                }
                ca
            }
            None => {
                info!("creating the appliance CA (first start)");
                let ca = new_ca(org)?;
                writes.extend(seal_entries(sealer, Role::Ca, &ca)?);
                ca
            }
        };
        let mut get = |role: Role,
                       extra_check: &dyn Fn(&Certificate) -> bool|
         -> ServiceResult<KeyedCert> {
            match load(store, sealer, role)? {
                Some(kc)
                    if !needs_renewal(&kc.cert, now)
                        && extra_check(&kc.cert)
                        && mdm_pki::verify_chain(
                            &kc.cert,
                            &[],
                            std::slice::from_ref(&ca.cert),
                            now,
                        )
                        .is_ok() =>
                {
                    Ok(kc)
                }
                existing => {
                    if existing.is_some() {
                        warn!(certificate = role.name(), "replacing appliance certificate (expiring, renamed or not from the current CA)");
                    }
                    let kc = issue_service_cert(&ca, role, org, names)?;
                    writes.extend(seal_entries(sealer, role, &kc)?);
                    Ok(kc)
                }
            }
        };
        let scep_ra = get(Role::ScepRa, &|_| true)?;
        let profile_signer = get(Role::ProfileSigner, &|_| true)?;
        let tls = get(Role::Tls, &|c| tls_names_match(c, names))?;
        if !writes.is_empty() {
            store.put_settings(writes).await?;
        }
        Ok(Authority {
            ca,
            scep_ra,
            profile_signer,
            tls,
        })
    }

    /// The CA certificate (devices trust it; ABM profiles carry it as an anchor).
    pub fn ca_cert(&self) -> &Certificate {
        &self.ca.cert
    }

    /// The CA certificate as PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.cert.to_pem()
    }
}

/// The usual lifetime of a device identity certificate.
pub const DEFAULT_DEVICE_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Seconds in a day, for configuration defaults.
pub const fn days(n: u64) -> Duration {
    Duration::from_secs(n * DAY.as_secs())
}
