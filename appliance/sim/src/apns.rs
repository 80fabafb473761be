//! A stand-in for Apple Push Notification service (APNs) as an MDM server sees it: an
//! HTTP/2-only TLS endpoint that takes `POST /3/device/<token>` with the MDM push
//! certificate as TLS client identity, validates each request the way Apple documents
//! ("Sending notification requests to APNs", "Handling notification responses from
//! APNs"), records what it accepted and wakes simulated devices.
//!
//! The pieces:
//! - [`ApnsAuthorities`]: a stand-in "Apple" server CA (issues the simulator's TLS
//!   certificate; give [`ApnsAuthorities::server_ca_pem`] to the client as its trust
//!   anchor) and a stand-in "Apple push" CA that issues push certificates the way Apple's
//!   push certificates portal does ([`ApnsAuthorities::issue_push_certificate`]: subject
//!   `UID=<topic>, CN=APSP:<uuid>, C=US`, from a CSR, a public key or a vendor-signed
//!   portal request).
//! - [`ApnsSimulator`]: the server. It requires a client certificate issued by the push
//!   CA (or by one of [`ApnsConfig::extra_client_cas`]), answers with Apple's status codes
//!   and `{"reason": ...}` bodies, records accepted pushes ([`Push`]) and every exchange
//!   ([`Exchange`]), notifies subscribers ([`ApnsSimulator::subscribe`]), and injects
//!   faults ([`Fault`], [`CertificateFault`], [`ApnsSimulator::set_goaway_after_streams`]).
//! - [`wake_on_push`]: what a device does when its push arrives: check the push magic,
//!   then run one command session against the MDM server.
//!
//! A simulated device reacting to pushes (`device` enrolled, `sim` running):
//!
//! ```no_run
//! # async fn example(
//! #     sim: &mdm_sim::apns::ApnsSimulator,
//! #     device: &mut mdm_sim::SimDevice,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! let mut pushes = sim.subscribe(&mdm_sim::apns::token_hex(&device.push_token));
//! // ... the MDM server queues a command and pushes ...
//! if let Some(processed) = mdm_sim::apns::wake_on_push(&mut pushes, device).await? {
//!     println!("the push made the device run {} commands", processed.len());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Deliberate differences from Apple: a missing `apns-push-type` is refused on MDM topics
//! (Apple still tolerates it on iOS and macOS, but the appliance must always send it);
//! a body that is not a JSON object with a non-empty string `mdm` is answered with
//! `PayloadEmpty` (Apple documents no reason for malformed JSON); GOAWAY frames carry no
//! JSON debug data (hyper cannot attach it). Not implemented yet: token-based (JWT)
//! provider authentication, the sandbox/production split (`BadCertificateEnvironment`),
//! multi-topic certificates (the topic extension), `apns-unique-id`, storing pushes for
//! offline devices and coalescing them (every accepted push is delivered to subscribers).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use der::{Decode, Encode, Tagged};
use http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use spki::SubjectPublicKeyInfoOwned;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use x509_cert::request::CertReq;
use x509_cert::Certificate;

use crate::commands::ProcessedCommand;
use crate::device::SimDevice;
use crate::error::{CryptoError, DeviceError};
use crate::keys::{self, DigestAlgorithm, KeyAlgorithm, PrivateKey};
use crate::oids;
use crate::x509::{self as x509util, CertificateParams, KeyUsageFlags};

/// Largest payload Apple accepts for every push type but VoIP (4 KB).
pub const MAX_PAYLOAD: usize = 4096;

/// Prefix of every MDM push topic (`com.apple.mgmt.External.<uuid>` for customer
/// certificates).
pub const MDM_TOPIC_PREFIX: &str = "com.apple.mgmt.";

/// Prefix of the topics Apple's portal issues to MDM customers.
const EXTERNAL_TOPIC_PREFIX: &str = "com.apple.mgmt.External.";

/// How many pushes a subscriber's channel buffers before newer ones are dropped. A
/// device needs only one push to poll its whole command queue, so losing the surplus is
/// harmless (APNs itself keeps only the latest push for an offline device).
const SUBSCRIBER_BUFFER: usize = 64;

/// A TLS handshake that has not finished in this time is abandoned, so silent peers do
/// not pin tasks forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const SERVER_CA_CERT: &str = "apns-server-ca.pem";
const SERVER_CA_KEY: &str = "apns-server-ca.key.pem";
const PUSH_CA_CERT: &str = "apns-push-ca.pem";
const PUSH_CA_KEY: &str = "apns-push-ca.key.pem";

/// `apns-push-type` values Apple documents, apart from `mdm`.
const APP_PUSH_TYPES: &[&str] = &[
    "alert",
    "background",
    "location",
    "voip",
    "complication",
    "fileprovider",
    "liveactivity",
    "pushtotalk",
    "widgets",
    "controls",
];

/// Request headers APNs refuses to see twice (`DuplicateHeaders`).
const SINGLE_HEADERS: &[&str] = &[
    "apns-id",
    "apns-topic",
    "apns-push-type",
    "apns-priority",
    "apns-expiration",
    "apns-collapse-id",
];

/// Failures of the APNs simulator and of its certificate authorities.
#[derive(Debug, thiserror::Error)]
pub enum ApnsError {
    /// Key, certificate or ASN.1 processing failed.
    #[error("APNs simulator: {0}")]
    Crypto(#[from] CryptoError),
    /// Reading or writing a CA file failed.
    #[error("APNs simulator file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The listening socket could not be opened.
    #[error("the APNs simulator cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TLS server configuration was refused by rustls.
    #[error("the APNs simulator's TLS configuration is invalid: {0}")]
    Tls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the trusted CAs.
    #[error("the trusted push CAs cannot verify client certificates: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    /// A trusted CA certificate was refused as a trust anchor.
    #[error("a push CA certificate cannot be used as a trust anchor: {0}")]
    TrustAnchor(String),
    /// The push topic is empty or contains characters a certificate UID cannot hold.
    #[error("the push topic {0:?} is invalid: use a non-empty string without spaces, such as com.apple.mgmt.External.<uuid>")]
    InvalidTopic(String),
    /// The certificate request is in none of the accepted forms.
    #[error("the push certificate request is not usable: {0}; supply a PKCS #10 CSR (DER or PEM), a public key (DER or PEM) or a vendor-signed portal request")]
    InvalidRequest(String),
    /// The CSR's own signature does not verify (the requester does not hold the key).
    #[error("the CSR's signature does not verify with its public key")]
    CsrSignature,
    /// The MDM vendor signature over the CSR does not verify.
    #[error("the vendor signature (PushCertSignature) does not verify against the first certificate of PushCertCertificateChain")]
    VendorSignature,
}

/// The `reason` strings APNs answers with, and their HTTP status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// 400: the collapse identifier exceeds the maximum allowed size.
    BadCollapseId,
    /// 400: the device token is invalid.
    BadDeviceToken,
    /// 400: the `apns-expiration` value is invalid.
    BadExpirationDate,
    /// 400: the `apns-id` value is invalid.
    BadMessageId,
    /// 400: the `apns-priority` value is invalid.
    BadPriority,
    /// 400: the `apns-topic` value is invalid.
    BadTopic,
    /// 400: the device token does not match the topic.
    DeviceTokenNotForTopic,
    /// 400: a header was repeated.
    DuplicateHeaders,
    /// 400: idle timeout.
    IdleTimeout,
    /// 400: the `apns-push-type` value is invalid.
    InvalidPushType,
    /// 400: the device token is not in the `:path`.
    MissingDeviceToken,
    /// 400: `apns-topic` is required and missing.
    MissingTopic,
    /// 400: the payload is empty.
    PayloadEmpty,
    /// 400: pushing to this topic is not allowed.
    TopicDisallowed,
    /// 403: the certificate is invalid.
    BadCertificate,
    /// 403: the certificate is for the other environment.
    BadCertificateEnvironment,
    /// 403: the provider token is stale.
    ExpiredProviderToken,
    /// 403: the action is not allowed.
    Forbidden,
    /// 403: the provider token is invalid.
    InvalidProviderToken,
    /// 403: no provider certificate or token.
    MissingProviderToken,
    /// 403: the key ID in the provider token is unrelated to the team.
    UnrelatedKeyIdInToken,
    /// 403: the key ID in the provider token is for the other environment.
    BadEnvironmentKeyIdInToken,
    /// 404: the `:path` is invalid.
    BadPath,
    /// 405: only POST is supported.
    MethodNotAllowed,
    /// 410: the device token has expired.
    ExpiredToken,
    /// 410: the device token is no longer active for the topic.
    Unregistered,
    /// 413: the payload is too large.
    PayloadTooLarge,
    /// 429: the provider token is updated too often.
    TooManyProviderTokenUpdates,
    /// 429: too many requests for the same device token.
    TooManyRequests,
    /// 500: internal server error.
    InternalServerError,
    /// 503: the service is unavailable.
    ServiceUnavailable,
    /// 503: the server is shutting down.
    Shutdown,
}

impl Reason {
    const ALL: [Self; 32] = [
        Self::BadCollapseId,
        Self::BadDeviceToken,
        Self::BadExpirationDate,
        Self::BadMessageId,
        Self::BadPriority,
        Self::BadTopic,
        Self::DeviceTokenNotForTopic,
        Self::DuplicateHeaders,
        Self::IdleTimeout,
        Self::InvalidPushType,
        Self::MissingDeviceToken,
        Self::MissingTopic,
        Self::PayloadEmpty,
        Self::TopicDisallowed,
        Self::BadCertificate,
        Self::BadCertificateEnvironment,
        Self::ExpiredProviderToken,
        Self::Forbidden,
        Self::InvalidProviderToken,
        Self::MissingProviderToken,
        Self::UnrelatedKeyIdInToken,
        Self::BadEnvironmentKeyIdInToken,
        Self::BadPath,
        Self::MethodNotAllowed,
        Self::ExpiredToken,
        Self::Unregistered,
        Self::PayloadTooLarge,
        Self::TooManyProviderTokenUpdates,
        Self::TooManyRequests,
        Self::InternalServerError,
        Self::ServiceUnavailable,
        Self::Shutdown,
    ];

    /// The string in the JSON `reason` key.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadCollapseId => "BadCollapseId",
            Self::BadDeviceToken => "BadDeviceToken",
            Self::BadExpirationDate => "BadExpirationDate",
            Self::BadMessageId => "BadMessageId",
            Self::BadPriority => "BadPriority",
            Self::BadTopic => "BadTopic",
            Self::DeviceTokenNotForTopic => "DeviceTokenNotForTopic",
            Self::DuplicateHeaders => "DuplicateHeaders",
            Self::IdleTimeout => "IdleTimeout",
            Self::InvalidPushType => "InvalidPushType",
            Self::MissingDeviceToken => "MissingDeviceToken",
            Self::MissingTopic => "MissingTopic",
            Self::PayloadEmpty => "PayloadEmpty",
            Self::TopicDisallowed => "TopicDisallowed",
            Self::BadCertificate => "BadCertificate",
            Self::BadCertificateEnvironment => "BadCertificateEnvironment",
            Self::ExpiredProviderToken => "ExpiredProviderToken",
            Self::Forbidden => "Forbidden",
            Self::InvalidProviderToken => "InvalidProviderToken",
            Self::MissingProviderToken => "MissingProviderToken",
            Self::UnrelatedKeyIdInToken => "UnrelatedKeyIdInToken",
            Self::BadEnvironmentKeyIdInToken => "BadEnvironmentKeyIdInToken",
            Self::BadPath => "BadPath",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::ExpiredToken => "ExpiredToken",
            Self::Unregistered => "Unregistered",
            Self::PayloadTooLarge => "PayloadTooLarge",
            Self::TooManyProviderTokenUpdates => "TooManyProviderTokenUpdates",
            Self::TooManyRequests => "TooManyRequests",
            Self::InternalServerError => "InternalServerError",
            Self::ServiceUnavailable => "ServiceUnavailable",
            Self::Shutdown => "Shutdown",
        }
    }

    /// The reason with this `reason` string, if Apple documents it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The HTTP status APNs pairs with this reason.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadCollapseId
            | Self::BadDeviceToken
            | Self::BadExpirationDate
            | Self::BadMessageId
            | Self::BadPriority
            | Self::BadTopic
            | Self::DeviceTokenNotForTopic
            | Self::DuplicateHeaders
            | Self::IdleTimeout
            | Self::InvalidPushType
            | Self::MissingDeviceToken
            | Self::MissingTopic
            | Self::PayloadEmpty
            | Self::TopicDisallowed => StatusCode::BAD_REQUEST,
            Self::BadCertificate
            | Self::BadCertificateEnvironment
            | Self::ExpiredProviderToken
            | Self::Forbidden
            | Self::InvalidProviderToken
            | Self::MissingProviderToken
            | Self::UnrelatedKeyIdInToken
            | Self::BadEnvironmentKeyIdInToken => StatusCode::FORBIDDEN,
            Self::BadPath => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::ExpiredToken | Self::Unregistered => StatusCode::GONE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyProviderTokenUpdates | Self::TooManyRequests => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::InternalServerError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ServiceUnavailable | Self::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CA certificate with its private key.
#[derive(Debug, Clone)]
pub struct CertificateAuthority {
    /// The CA certificate.
    pub certificate: Certificate,
    /// Its key.
    pub key: PrivateKey,
}

impl CertificateAuthority {
    fn generate(subject: &[(&str, &str)], days: u64) -> Result<Self, ApnsError> {
        let key = PrivateKey::generate_rsa2048()?;
        let certificate = x509util::self_signed(
            &CertificateParams::new(x509util::name(subject)?)
                .valid_for_days(days)
                .ca(Some(0)),
            &key,
        )?;
        Ok(Self { certificate, key })
    }

    /// The certificate as PEM.
    pub fn certificate_pem(&self) -> Result<String, ApnsError> {
        Ok(x509util::to_pem(&self.certificate)?)
    }
}

/// The simulator's two stand-in Apple CAs: one issues its TLS server certificate, the
/// other issues push certificates (and is what client certificates must chain to).
#[derive(Debug, Clone)]
pub struct ApnsAuthorities {
    server_ca: CertificateAuthority,
    push_ca: CertificateAuthority,
}

impl ApnsAuthorities {
    /// Generates both CAs (RSA-2048).
    pub fn generate() -> Result<Self, ApnsError> {
        let server_ca = CertificateAuthority::generate(
            &[
                ("C", "US"),
                ("O", "Apple Inc."),
                ("CN", "Apple Public Server RSA CA (APNs simulator)"),
            ],
            10 * 365,
        )?;
        // The name of the CA that issues MDM push certificates today; Apple's is an
        // intermediate under the Apple Root CA, this one is self-signed.
        let push_ca = CertificateAuthority::generate(
            &[
                ("C", "US"),
                ("O", "Apple Inc."),
                ("OU", "Apple Certification Authority"),
                (
                    "CN",
                    "Apple Application Integration 2 Certification Authority",
                ),
            ],
            10 * 365,
        )?;
        Ok(Self { server_ca, push_ca })
    }

    /// Builds the pair from existing CAs, for a push CA shared with other tests.
    pub fn from_parts(server_ca: CertificateAuthority, push_ca: CertificateAuthority) -> Self {
        Self { server_ca, push_ca }
    }

    /// The CA that issues the simulator's TLS certificate.
    pub fn server_ca(&self) -> &CertificateAuthority {
        &self.server_ca
    }

    /// The CA that issues push certificates.
    pub fn push_ca(&self) -> &CertificateAuthority {
        &self.push_ca
    }

    /// The server CA as PEM: the trust anchor an APNs client needs.
    pub fn server_ca_pem(&self) -> Result<String, ApnsError> {
        self.server_ca.certificate_pem()
    }

    /// The push CA as PEM.
    pub fn push_ca_pem(&self) -> Result<String, ApnsError> {
        self.push_ca.certificate_pem()
    }

    /// Issues a one-year push certificate for `topic`, as Apple's push certificates
    /// portal does, from `request`: a PKCS #10 CSR (DER or PEM), a bare public key
    /// (`SubjectPublicKeyInfo`, DER or PEM) or the portal's vendor-signed request (the
    /// base64 plist with `PushCertRequestCSR`, `PushCertCertificateChain` and
    /// `PushCertSignature`). CSR and vendor signatures are verified.
    pub fn issue_push_certificate(
        &self,
        topic: &str,
        request: &[u8],
    ) -> Result<Certificate, ApnsError> {
        let now = SystemTime::now();
        self.issue_push_certificate_with_validity(
            topic,
            request,
            now - Duration::from_secs(3600),
            now + Duration::from_secs(365 * 24 * 3600),
        )
    }

    /// [`Self::issue_push_certificate`] with an explicit validity period (expired and
    /// not-yet-valid certificates for negative tests).
    pub fn issue_push_certificate_with_validity(
        &self,
        topic: &str,
        request: &[u8],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Certificate, ApnsError> {
        let spki = PushCertificateRequest::parse(request)?.public_key;
        self.issue_for_key(topic, &spki, not_before, not_after)
    }

    /// Generates an RSA-2048 key and issues a one-year push certificate for it: the
    /// certificate and key an MDM server would hold after the portal round trip.
    pub fn issue_push_identity(&self, topic: &str) -> Result<(Certificate, PrivateKey), ApnsError> {
        let key = PrivateKey::generate(KeyAlgorithm::Rsa2048)?;
        let cert = self.issue_push_certificate(topic, &key.public_key_info_der()?)?;
        Ok((cert, key))
    }

    fn issue_for_key(
        &self,
        topic: &str,
        spki: &SubjectPublicKeyInfoOwned,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Certificate, ApnsError> {
        validate_topic(topic)?;
        // Apple's portal names the certificate after the topic's UUID:
        // UID=com.apple.mgmt.External.<uuid>, CN=APSP:<uuid>, C=US.
        let cn_suffix = topic.strip_prefix(EXTERNAL_TOPIC_PREFIX).unwrap_or(topic);
        let cn = format!("APSP:{cn_suffix}");
        let subject = x509util::name(&[("UID", topic), ("CN", &cn), ("C", "US")])?;
        let mut usages = vec![KeyUsageFlags::DigitalSignature];
        if spki.algorithm.oid == oids::RSA_ENCRYPTION {
            usages.push(KeyUsageFlags::KeyEncipherment);
        }
        let mut params = CertificateParams::new(subject)
            .key_usage(&usages)
            .extended_key_usage(&[oids::KP_CLIENT_AUTH]);
        params.not_before = not_before;
        params.not_after = not_after;
        Ok(x509util::issue(
            &params,
            spki,
            Some(&self.push_ca.certificate),
            &self.push_ca.key,
        )?)
    }

    /// Writes both CAs into `dir` (created if missing; keys mode 0600).
    pub fn save(&self, dir: &Path) -> Result<(), ApnsError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        for (ca, cert_file, key_file) in [
            (&self.server_ca, SERVER_CA_CERT, SERVER_CA_KEY),
            (&self.push_ca, PUSH_CA_CERT, PUSH_CA_KEY),
        ] {
            write_file(
                &dir.join(cert_file),
                ca.certificate_pem()?.as_bytes(),
                false,
            )?;
            write_file(&dir.join(key_file), ca.key.to_pkcs8_pem()?.as_bytes(), true)?;
        }
        Ok(())
    }

    /// Reads what [`Self::save`] wrote.
    pub fn load(dir: &Path) -> Result<Self, ApnsError> {
        Ok(Self {
            server_ca: read_ca(&dir.join(SERVER_CA_CERT), &dir.join(SERVER_CA_KEY))?,
            push_ca: read_ca(&dir.join(PUSH_CA_CERT), &dir.join(PUSH_CA_KEY))?,
        })
    }

    /// Loads from `dir` if it holds the CAs, otherwise generates and saves them.
    pub fn load_or_generate(dir: &Path) -> Result<Self, ApnsError> {
        if dir.join(PUSH_CA_CERT).exists() {
            Self::load(dir)
        } else {
            let authorities = Self::generate()?;
            authorities.save(dir)?;
            Ok(authorities)
        }
    }

    /// Path of the server CA certificate inside a directory written by [`Self::save`].
    pub fn server_ca_path(dir: &Path) -> PathBuf {
        dir.join(SERVER_CA_CERT)
    }

    /// Path of the push CA certificate inside a directory written by [`Self::save`].
    pub fn push_ca_path(dir: &Path) -> PathBuf {
        dir.join(PUSH_CA_CERT)
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ApnsError + '_ {
    move |source| ApnsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), ApnsError> {
    crate::apple::write_sim_file(path, data, secret).map_err(io_error(path))
}

fn read_ca(cert_path: &Path, key_path: &Path) -> Result<CertificateAuthority, ApnsError> {
    let pem = fs::read(cert_path).map_err(io_error(cert_path))?;
    let certificate = x509util::certificates_from_pem(&pem)?
        .into_iter()
        .next()
        .ok_or_else(|| ApnsError::Io {
            path: cert_path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no CERTIFICATE block in the file",
            ),
        })?;
    let key_pem =
        zeroize::Zeroizing::new(fs::read_to_string(key_path).map_err(io_error(key_path))?);
    let key = PrivateKey::from_pkcs8_pem(&key_pem)?;
    if key.public_key_info()? != certificate.tbs_certificate.subject_public_key_info {
        return Err(ApnsError::Crypto(CryptoError::KeyRejected(format!(
            "{} does not hold the key of {}",
            key_path.display(),
            cert_path.display()
        ))));
    }
    Ok(CertificateAuthority { certificate, key })
}

fn validate_topic(topic: &str) -> Result<(), ApnsError> {
    if topic.is_empty() || !topic.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApnsError::InvalidTopic(topic.to_owned()));
    }
    Ok(())
}

/// A generated MDM topic in the portal's shape: `com.apple.mgmt.External.<uuid>`.
pub fn new_mdm_topic() -> String {
    format!("{EXTERNAL_TOPIC_PREFIX}{}", uuid::Uuid::new_v4())
}

/// The push topic a certificate is for: its subject `UID`.
pub fn certificate_topic(cert: &Certificate) -> Option<String> {
    cert.tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == oids::AT_USER_ID)
        .and_then(|atv| match atv.value.tag() {
            der::Tag::Utf8String | der::Tag::PrintableString | der::Tag::Ia5String => {
                String::from_utf8(atv.value.value().to_vec()).ok()
            }
            _ => None,
        })
}

/// A device token as APNs paths carry it: lowercase hex.
pub fn token_hex(token: &[u8]) -> String {
    hex::encode(token)
}

fn normalise_token(token: &str) -> String {
    token.trim().to_ascii_lowercase()
}

/// A parsed push certificate request.
#[derive(Debug, Clone)]
pub struct PushCertificateRequest {
    /// The key to certify.
    pub public_key: SubjectPublicKeyInfoOwned,
    /// The CSR, when the request carried one (its signature has been verified).
    pub csr: Option<CertReq>,
    /// `PushCertCertificateChain` of a vendor-signed request, leaf first (its signature
    /// over the CSR has been verified against the leaf; the chain itself is not checked
    /// against any Apple root).
    pub vendor_chain: Vec<Certificate>,
}

impl PushCertificateRequest {
    /// Recognises the forms listed at [`ApnsAuthorities::issue_push_certificate`].
    pub fn parse(input: &[u8]) -> Result<Self, ApnsError> {
        // Binary DER first, untrimmed: its last bytes are signature bytes and may well look
        // like ASCII whitespace.
        if input.first() == Some(&0x30) {
            if let Ok(csr) = CertReq::from_der(input) {
                return Self::from_csr(csr);
            }
            if SubjectPublicKeyInfoOwned::from_der(input).is_ok() {
                return Self::from_spki_der(input);
            }
        }
        let trimmed = input.trim_ascii();
        if trimmed.is_empty() {
            return Err(ApnsError::InvalidRequest("it is empty".into()));
        }
        if trimmed.starts_with(b"-----BEGIN ") {
            let (label, der) = der::pem::decode_vec(trimmed)
                .map_err(|e| ApnsError::InvalidRequest(format!("bad PEM: {e}")))?;
            return match label {
                "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => Self::from_csr_der(&der),
                "PUBLIC KEY" => Self::from_spki_der(&der),
                other => Err(ApnsError::InvalidRequest(format!(
                    "unexpected PEM label {other:?}"
                ))),
            };
        }
        if trimmed.first() == Some(&0x30) {
            if let Ok(csr) = CertReq::from_der(trimmed) {
                return Self::from_csr(csr);
            }
            return Self::from_spki_der(trimmed);
        }
        if trimmed.starts_with(b"<?xml") || trimmed.starts_with(b"bplist") {
            return Self::from_vendor_plist(trimmed);
        }
        // The portal upload is the plist, base64-encoded.
        let compact: Vec<u8> = trimmed
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&compact)
            .map_err(|_| ApnsError::InvalidRequest("neither DER, PEM, nor base64".into()))?;
        let decoded = decoded.trim_ascii();
        if decoded.starts_with(b"<?xml") || decoded.starts_with(b"bplist") {
            Self::from_vendor_plist(decoded)
        } else {
            Err(ApnsError::InvalidRequest(
                "base64 text that does not hold a property list".into(),
            ))
        }
    }

    fn from_spki_der(der: &[u8]) -> Result<Self, ApnsError> {
        let public_key = SubjectPublicKeyInfoOwned::from_der(der).map_err(|e| {
            ApnsError::InvalidRequest(format!("DER that is neither a CSR nor a public key: {e}"))
        })?;
        Ok(Self {
            public_key,
            csr: None,
            vendor_chain: Vec::new(),
        })
    }

    fn from_csr_der(der: &[u8]) -> Result<Self, ApnsError> {
        let csr = CertReq::from_der(der)
            .map_err(|e| ApnsError::InvalidRequest(format!("malformed CSR: {e}")))?;
        Self::from_csr(csr)
    }

    fn from_csr(csr: CertReq) -> Result<Self, ApnsError> {
        let digest = keys::digest_for_signature_algorithm(&csr.algorithm.oid, None)
            .map_err(|_| ApnsError::CsrSignature)?;
        let signature = csr.signature.as_bytes().ok_or(ApnsError::CsrSignature)?;
        keys::verify_signature(
            &csr.info.public_key,
            digest,
            &csr.info.to_der().map_err(CryptoError::from)?,
            signature,
        )
        .map_err(|_| ApnsError::CsrSignature)?;
        Ok(Self {
            public_key: csr.info.public_key.clone(),
            csr: Some(csr),
            vendor_chain: Vec::new(),
        })
    }

    fn from_vendor_plist(data: &[u8]) -> Result<Self, ApnsError> {
        let value = plist::Value::from_reader(std::io::Cursor::new(data))
            .map_err(|e| ApnsError::InvalidRequest(format!("unreadable property list: {e}")))?;
        let dict = value.as_dictionary().ok_or_else(|| {
            ApnsError::InvalidRequest("the property list is not a dictionary".into())
        })?;
        let b64 = |key: &str| -> Result<Vec<u8>, ApnsError> {
            match dict.get(key) {
                Some(plist::Value::Data(d)) => Ok(d.clone()),
                Some(plist::Value::String(s)) => {
                    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                    base64::engine::general_purpose::STANDARD
                        .decode(compact)
                        .map_err(|_| ApnsError::InvalidRequest(format!("{key} is not base64")))
                }
                _ => Err(ApnsError::InvalidRequest(format!("{key} is missing"))),
            }
        };
        let csr_der = b64("PushCertRequestCSR")?;
        let signature = b64("PushCertSignature")?;
        let chain_pem = match dict.get("PushCertCertificateChain") {
            Some(plist::Value::String(s)) => s.as_bytes().to_vec(),
            Some(plist::Value::Data(d)) => d.clone(),
            _ => {
                return Err(ApnsError::InvalidRequest(
                    "PushCertCertificateChain is missing".into(),
                ))
            }
        };
        let vendor_chain = x509util::certificates_from_pem(&chain_pem)?;
        let vendor = vendor_chain.first().ok_or_else(|| {
            ApnsError::InvalidRequest("PushCertCertificateChain holds no certificate".into())
        })?;
        // The signature is SHA-256 over the CSR's DER in current vendor tools; older
        // tools signed with SHA-1, which Apple still takes.
        let spki = &vendor.tbs_certificate.subject_public_key_info;
        let verified = [DigestAlgorithm::Sha256, DigestAlgorithm::Sha1]
            .into_iter()
            .any(|d| keys::verify_signature(spki, d, &csr_der, &signature).is_ok());
        if !verified {
            return Err(ApnsError::VendorSignature);
        }
        let mut parsed = Self::from_csr_der(&csr_der)?;
        parsed.vendor_chain = vendor_chain;
        Ok(parsed)
    }
}

/// An accepted push notification.
#[derive(Debug, Clone)]
pub struct Push {
    /// The device token from the path, lowercase hex.
    pub token: String,
    /// The topic it was sent to (the `apns-topic` header, else the certificate's UID).
    pub topic: String,
    /// The `apns-id` answered (the request's, or one the simulator generated).
    pub apns_id: String,
    /// The body's `mdm` string: the push magic (MDM topics only).
    pub push_magic: Option<String>,
    /// The raw body.
    pub body: Bytes,
    /// All request headers.
    pub headers: HeaderMap,
    /// Which TLS connection carried it (see [`Exchange::connection_id`]).
    pub connection_id: u64,
    /// When it was accepted.
    pub received_at: SystemTime,
}

impl Push {
    /// A request header as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request stream and what the simulator did with it.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Connection number, from 1 in the order TLS handshakes completed.
    pub connection_id: u64,
    /// The `:method`.
    pub method: String,
    /// The `:path`.
    pub path: String,
    /// The `apns-id` answered.
    pub apns_id: String,
    /// The status answered; `None` when the connection was dropped instead.
    pub status: Option<u16>,
    /// The reason answered with an error status.
    pub reason: Option<Reason>,
    /// When the answer was decided.
    pub at: SystemTime,
}

/// A fault to inject into request handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this reason (and its status) instead of handling the request.
    Respond(Reason),
    /// Wait this long, then handle the request normally.
    Delay(Duration),
    /// Handle the request normally, then close the connection gracefully with GOAWAY
    /// (streams already open finish; the client must reconnect for new ones).
    GoAway,
    /// Close the TCP connection at once without answering, as a crashed front end or a
    /// middlebox would: no response, no GOAWAY, no TLS close_notify.
    DropConnection,
}

impl Fault {
    /// 429 `TooManyRequests`.
    pub fn too_many_requests() -> Self {
        Self::Respond(Reason::TooManyRequests)
    }

    /// 500 `InternalServerError`.
    pub fn internal_server_error() -> Self {
        Self::Respond(Reason::InternalServerError)
    }

    /// 503 `ServiceUnavailable`.
    pub fn service_unavailable() -> Self {
        Self::Respond(Reason::ServiceUnavailable)
    }

    /// 503 `Shutdown`.
    pub fn shutdown() -> Self {
        Self::Respond(Reason::Shutdown)
    }
}

/// What the simulator holds against a particular client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateFault {
    /// Fail new TLS handshakes with this certificate (alert `bad_certificate`);
    /// connections already open keep working.
    RefuseHandshake,
    /// Accept the handshake but answer every request 403 `BadCertificate`.
    Rejected,
    /// Treat the certificate as revoked: new handshakes fail (alert
    /// `certificate_revoked`), requests on connections already open get 403
    /// `BadCertificate`.
    Revoked,
    /// Treat the certificate as expired: new handshakes fail (alert
    /// `certificate_expired`), requests on connections already open get 403
    /// `BadCertificate`. (`ExpiredProviderToken` is for token authentication, which
    /// MDM does not use.)
    Expired,
}

/// A snapshot of the simulator's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// TLS connections established.
    pub connections_opened: u64,
    /// TCP connections whose TLS handshake failed or timed out.
    pub handshakes_failed: u64,
    /// Request streams handled (whatever the answer).
    pub streams_served: u64,
    /// Pushes accepted with 200.
    pub pushes_accepted: u64,
    /// Connections closed with GOAWAY by a fault, the stream limit or shutdown.
    pub goaways_sent: u64,
    /// Connections dropped abruptly by [`Fault::DropConnection`].
    pub connections_dropped: u64,
}

/// How to run the simulator.
#[derive(Debug, Clone)]
pub struct ApnsConfig {
    /// Address to listen on; port 0 picks a free one. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// The CAs to use; `None` generates fresh ones.
    pub authorities: Option<ApnsAuthorities>,
    /// More CAs whose certificates are accepted as client identities (besides the push
    /// CA), for certificates issued elsewhere.
    pub extra_client_cas: Vec<Certificate>,
    /// Names for the TLS certificate's subjectAltName (DNS names or IP addresses).
    /// Default `localhost` and `127.0.0.1`; a specific listen address is added.
    pub server_names: Vec<String>,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` announced to clients. Default 1000, what APNs
    /// announces once a connection is established.
    pub max_concurrent_streams: u32,
    /// Largest accepted payload. Default [`MAX_PAYLOAD`].
    pub max_payload: usize,
    /// Refuse MDM pushes without `apns-push-type` (400 `InvalidPushType`). Default true.
    pub require_push_type: bool,
}

impl Default for ApnsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            authorities: None,
            extra_client_cas: Vec::new(),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            max_concurrent_streams: 1000,
            max_payload: MAX_PAYLOAD,
            require_push_type: true,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum TokenState {
    Unregistered(SystemTime),
    Expired,
}

#[derive(Debug)]
struct TokenFault {
    fault: Fault,
    /// Remaining uses; `None` applies to every request until cleared.
    remaining: Option<usize>,
}

#[derive(Default)]
struct State {
    pushes: Vec<Push>,
    exchanges: Vec<Exchange>,
    subscribers: HashMap<String, Vec<mpsc::Sender<Push>>>,
    all_subscribers: Vec<mpsc::Sender<Push>>,
    token_states: HashMap<String, TokenState>,
    token_topics: HashMap<String, String>,
    next_faults: VecDeque<Fault>,
    token_faults: HashMap<String, Vec<TokenFault>>,
    certificate_faults: HashMap<String, CertificateFault>,
    goaway_after: Option<u64>,
}

#[derive(Default)]
struct CounterCells {
    connections_opened: AtomicU64,
    handshakes_failed: AtomicU64,
    streams_served: AtomicU64,
    pushes_accepted: AtomicU64,
    goaways_sent: AtomicU64,
    connections_dropped: AtomicU64,
}

struct Shared {
    state: Mutex<State>,
    counters: CounterCells,
    next_connection_id: AtomicU64,
    max_payload: usize,
    require_push_type: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State inconsistent in a way that
        // matters to a test double; keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn certificate_fault(&self, fingerprint: &str) -> Option<CertificateFault> {
        self.state().certificate_faults.get(fingerprint).copied()
    }

    fn take_next_fault(&self) -> Option<Fault> {
        self.state().next_faults.pop_front()
    }

    fn take_token_fault(&self, token: &str) -> Option<Fault> {
        let mut state = self.state();
        let faults = state.token_faults.get_mut(token)?;
        let first = faults.first_mut()?;
        let fault = first.fault.clone();
        if let Some(n) = first.remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                faults.remove(0);
            }
        }
        if faults.is_empty() {
            state.token_faults.remove(token);
        }
        Some(fault)
    }

    fn record_exchange(&self, exchange: Exchange) {
        self.state().exchanges.push(exchange);
    }

    fn accept(&self, push: Push) {
        self.counters
            .pushes_accepted
            .fetch_add(1, Ordering::Relaxed);
        let mut state = self.state();
        let State {
            pushes,
            subscribers,
            all_subscribers,
            ..
        } = &mut *state;
        if let Some(list) = subscribers.get_mut(&push.token) {
            deliver(list, &push);
            if list.is_empty() {
                subscribers.remove(&push.token);
            }
        }
        deliver(all_subscribers, &push);
        pushes.push(push);
    }
}

/// Sends to every live subscriber; drops the closed ones. A full channel loses the push
/// (see [`SUBSCRIBER_BUFFER`]).
fn deliver(list: &mut Vec<mpsc::Sender<Push>>, push: &Push) {
    list.retain(|tx| match tx.try_send(push.clone()) {
        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
}

/// The running simulator. Dropping it stops accepting connections and closes open ones
/// gracefully.
pub struct ApnsSimulator {
    addr: SocketAddr,
    authorities: ApnsAuthorities,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    accept_task: Option<tokio::task::JoinHandle<()>>,
}

impl fmt::Debug for ApnsSimulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApnsSimulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ApnsSimulator {
    /// Starts a simulator with fresh CAs on a free port of 127.0.0.1.
    pub async fn start_default() -> Result<Self, ApnsError> {
        Self::start(ApnsConfig::default()).await
    }

    /// Starts the simulator. Must run inside a tokio runtime: the listener and every
    /// connection are spawned tasks.
    pub async fn start(config: ApnsConfig) -> Result<Self, ApnsError> {
        let authorities = match config.authorities {
            Some(a) => a,
            None => ApnsAuthorities::generate()?,
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ApnsError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ApnsError::Bind {
            addr: config.listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            counters: CounterCells::default(),
            next_connection_id: AtomicU64::new(1),
            max_payload: config.max_payload,
            require_push_type: config.require_push_type,
        });

        let mut names = config.server_names.clone();
        if !addr.ip().is_unspecified() {
            names.push(addr.ip().to_string());
        }
        let tls = server_tls_config(&authorities, &config.extra_client_cas, &names, &shared)?;
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2.max_concurrent_streams(config.max_concurrent_streams);

        let (shutdown, shutdown_rx) = watch::channel(false);
        let accept_task = tokio::spawn(accept_loop(
            listener,
            tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
            http2,
            shared.clone(),
            shutdown_rx,
        ));
        Ok(Self {
            addr,
            authorities,
            shared,
            shutdown,
            accept_task: Some(accept_task),
        })
    }

    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to configure as the APNs endpoint, `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        let host = match self.addr.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".to_owned(),
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) if v6.is_unspecified() => "[::1]".to_owned(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        format!("https://{host}:{}", self.addr.port())
    }

    /// The CAs in use.
    pub fn authorities(&self) -> &ApnsAuthorities {
        &self.authorities
    }

    /// The server CA as PEM: what the APNs client must trust.
    pub fn server_ca_pem(&self) -> Result<String, ApnsError> {
        self.authorities.server_ca_pem()
    }

    /// The push CA as PEM.
    pub fn push_ca_pem(&self) -> Result<String, ApnsError> {
        self.authorities.push_ca_pem()
    }

    /// See [`ApnsAuthorities::issue_push_certificate`].
    pub fn issue_push_certificate(
        &self,
        topic: &str,
        request: &[u8],
    ) -> Result<Certificate, ApnsError> {
        self.authorities.issue_push_certificate(topic, request)
    }

    /// See [`ApnsAuthorities::issue_push_identity`].
    pub fn issue_push_identity(&self, topic: &str) -> Result<(Certificate, PrivateKey), ApnsError> {
        self.authorities.issue_push_identity(topic)
    }

    /// Every accepted push, oldest first.
    pub fn pushes(&self) -> Vec<Push> {
        self.shared.state().pushes.clone()
    }

    /// The accepted pushes for one device token (hex, any case).
    pub fn pushes_for(&self, token: &str) -> Vec<Push> {
        let token = normalise_token(token);
        self.shared
            .state()
            .pushes
            .iter()
            .filter(|p| p.token == token)
            .cloned()
            .collect()
    }

    /// Every request stream handled, oldest first.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.shared.state().exchanges.clone()
    }

    /// Forgets recorded pushes and exchanges (counters keep counting).
    pub fn clear_records(&self) {
        let mut state = self.shared.state();
        state.pushes.clear();
        state.exchanges.clear();
    }

    /// A channel that receives every push accepted for `token` (hex, any case) from now
    /// on. It buffers 64 pushes (a simulated device only needs one to wake up) and is
    /// closed when the simulator is dropped or shut down.
    pub fn subscribe(&self, token: &str) -> mpsc::Receiver<Push> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        self.shared
            .state()
            .subscribers
            .entry(normalise_token(token))
            .or_default()
            .push(tx);
        rx
    }

    /// A channel that receives every accepted push, whatever the token.
    pub fn subscribe_all(&self) -> mpsc::Receiver<Push> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        self.shared.state().all_subscribers.push(tx);
        rx
    }

    /// Marks `token` as no longer registered for its topic since now: pushes get 410
    /// `Unregistered` with that time as `timestamp`.
    pub fn mark_unregistered(&self, token: &str) {
        self.mark_unregistered_at(token, SystemTime::now());
    }

    /// [`Self::mark_unregistered`] with an explicit time.
    pub fn mark_unregistered_at(&self, token: &str, since: SystemTime) {
        self.shared
            .state()
            .token_states
            .insert(normalise_token(token), TokenState::Unregistered(since));
    }

    /// Marks `token` as expired: pushes get 410 `ExpiredToken`.
    pub fn mark_expired(&self, token: &str) {
        self.shared
            .state()
            .token_states
            .insert(normalise_token(token), TokenState::Expired);
    }

    /// Makes `token` valid again (the device registered anew).
    pub fn mark_registered(&self, token: &str) {
        self.shared
            .state()
            .token_states
            .remove(&normalise_token(token));
    }

    /// Declares that `token` belongs to `topic`: pushes to it under another topic get 400
    /// `DeviceTokenNotForTopic`. Tokens without a binding are accepted for any topic.
    pub fn bind_token_topic(&self, token: &str, topic: &str) {
        self.shared
            .state()
            .token_topics
            .insert(normalise_token(token), topic.to_owned());
    }

    /// Applies `fault` to each of the next `count` requests, whatever they are (after the
    /// faults queued before).
    pub fn inject_next(&self, count: usize, fault: Fault) {
        let mut state = self.shared.state();
        state.next_faults.extend(std::iter::repeat_n(fault, count));
    }

    /// Applies `fault` to requests for `token` that pass validation: `Some(n)` for the
    /// next n of them, `None` for all until [`Self::clear_faults`]. Faults for the same
    /// token apply one after the other.
    pub fn inject_for_token(&self, token: &str, fault: Fault, times: Option<usize>) {
        if times == Some(0) {
            return;
        }
        self.shared
            .state()
            .token_faults
            .entry(normalise_token(token))
            .or_default()
            .push(TokenFault {
                fault,
                remaining: times,
            });
    }

    /// Removes every queued request and token fault (certificate faults and the GOAWAY
    /// stream limit stay).
    pub fn clear_faults(&self) {
        let mut state = self.shared.state();
        state.next_faults.clear();
        state.token_faults.clear();
    }

    /// Sends GOAWAY on every connection once it has served `streams` streams (`None`:
    /// never). Streams the client opened before the GOAWAY reached it still complete.
    pub fn set_goaway_after_streams(&self, streams: Option<u64>) {
        self.shared.state().goaway_after = streams.filter(|n| *n > 0);
    }

    /// Sets (or with `None` clears) a fault for a client certificate.
    pub fn set_certificate_fault(
        &self,
        certificate: &Certificate,
        fault: Option<CertificateFault>,
    ) -> Result<(), ApnsError> {
        let fingerprint = x509util::fingerprint_sha256(certificate)?;
        let mut state = self.shared.state();
        match fault {
            Some(f) => state.certificate_faults.insert(fingerprint, f),
            None => state.certificate_faults.remove(&fingerprint),
        };
        Ok(())
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        let c = &self.shared.counters;
        Counters {
            connections_opened: c.connections_opened.load(Ordering::Relaxed),
            handshakes_failed: c.handshakes_failed.load(Ordering::Relaxed),
            streams_served: c.streams_served.load(Ordering::Relaxed),
            pushes_accepted: c.pushes_accepted.load(Ordering::Relaxed),
            goaways_sent: c.goaways_sent.load(Ordering::Relaxed),
            connections_dropped: c.connections_dropped.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting connections, sends GOAWAY on open ones, closes subscriptions and
    /// waits for the listener to close. Open connections finish their streams in the
    /// background.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.accept_task.take() {
            if let Err(e) = task.await {
                tracing::warn!("APNs simulator listener ended abnormally: {e}");
            }
        }
    }
}

impl Drop for ApnsSimulator {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        // Close subscriptions now rather than when the last connection task lets go of
        // the shared state, so waiting devices learn at once that no push will come.
        let mut state = self.shared.state();
        state.subscribers.clear();
        state.all_subscribers.clear();
    }
}

fn server_tls_config(
    authorities: &ApnsAuthorities,
    extra_client_cas: &[Certificate],
    names: &[String],
    shared: &Arc<Shared>,
) -> Result<rustls::ServerConfig, ApnsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

    let mut roots = rustls::RootCertStore::empty();
    for ca in std::iter::once(&authorities.push_ca.certificate).chain(extra_client_cas) {
        roots
            .add(CertificateDer::from(
                ca.to_der().map_err(CryptoError::from)?,
            ))
            .map_err(|e| ApnsError::TrustAnchor(e.to_string()))?;
    }
    let inner =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let verifier = Arc::new(FaultingClientVerifier {
        inner,
        shared: shared.clone(),
    });

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
    let cn = dns.first().copied().unwrap_or("api.push.apple.com");
    let leaf_key = PrivateKey::generate_rsa2048()?;
    let leaf = x509util::issue(
        &CertificateParams::new(x509util::name(&[
            ("C", "US"),
            ("O", "Apple Inc."),
            ("CN", cn),
        ])?)
        .valid_for_days(365)
        .key_usage(&[
            KeyUsageFlags::DigitalSignature,
            KeyUsageFlags::KeyEncipherment,
        ])
        .extended_key_usage(&[oids::KP_SERVER_AUTH])
        .subject_alt_names(&dns, &ips),
        &leaf_key.public_key_info()?,
        Some(&authorities.server_ca.certificate),
        &authorities.server_ca.key,
    )?;
    let chain = vec![
        CertificateDer::from(leaf.to_der().map_err(CryptoError::from)?),
        CertificateDer::from(
            authorities
                .server_ca
                .certificate
                .to_der()
                .map_err(CryptoError::from)?,
        ),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.pkcs8_der().to_vec()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    // APNs speaks HTTP/2 only: a client offering ALPN without h2 is refused in the
    // handshake (no_application_protocol).
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The WebPKI client-certificate check (chain to a trusted push CA, validity, EKU) plus
/// the simulator's per-certificate faults.
struct FaultingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    shared: Arc<Shared>,
}

impl fmt::Debug for FaultingClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultingClientVerifier")
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for FaultingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let fingerprint = hex::encode(DigestAlgorithm::Sha256.digest(end_entity.as_ref()));
        let refusal = match self.shared.certificate_fault(&fingerprint) {
            None | Some(CertificateFault::Rejected) => None,
            Some(CertificateFault::RefuseHandshake) => {
                Some(CertificateError::ApplicationVerificationFailure)
            }
            Some(CertificateFault::Revoked) => Some(CertificateError::Revoked),
            Some(CertificateFault::Expired) => Some(CertificateError::Expired),
        };
        match refusal {
            Some(error) => Err(rustls::Error::InvalidCertificate(error)),
            None => Ok(verified),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

type Http2Builder = hyper::server::conn::http2::Builder<TokioExecutor>;

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    http2: Http2Builder,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let for_connections = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    tokio::spawn(serve_connection(
                        tcp,
                        peer,
                        acceptor.clone(),
                        http2.clone(),
                        shared.clone(),
                        for_connections.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!("APNs simulator accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = stopped(&mut shutdown) => return,
        }
    }
}

/// Resolves once the simulator is shutting down (or was dropped).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it inside this future.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Signals between a connection's request handlers and its driver.
struct ConnectionControl {
    goaway: Notify,
    goaway_requested: AtomicBool,
    drop: Notify,
    closed: watch::Sender<bool>,
}

impl ConnectionControl {
    fn request_goaway(&self) {
        if !self.goaway_requested.swap(true, Ordering::SeqCst) {
            self.goaway.notify_one();
        }
    }
}

struct ConnectionContext {
    id: u64,
    /// SHA-256 of the client certificate (hex).
    fingerprint: String,
    /// The certificate's UID, the topic it may push to.
    certificate_topic: Option<String>,
    streams: AtomicU64,
    control: ConnectionControl,
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    http2: Http2Builder,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            shared
                .counters
                .handshakes_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("APNs simulator: TLS handshake with {peer} failed: {e}");
            return;
        }
        Err(_) => {
            shared
                .counters
                .handshakes_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("APNs simulator: TLS handshake with {peer} timed out");
            return;
        }
    };
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.as_ref().to_vec());
    let Some(leaf) = leaf else {
        // Unreachable with a mandatory client-auth verifier; refuse rather than serve
        // an unauthenticated provider.
        shared
            .counters
            .handshakes_failed
            .fetch_add(1, Ordering::Relaxed);
        return;
    };
    let certificate_topic = Certificate::from_der(&leaf)
        .ok()
        .as_ref()
        .and_then(certificate_topic);
    let id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
    shared
        .counters
        .connections_opened
        .fetch_add(1, Ordering::Relaxed);
    let ctx = Arc::new(ConnectionContext {
        id,
        fingerprint: hex::encode(DigestAlgorithm::Sha256.digest(&leaf)),
        certificate_topic,
        streams: AtomicU64::new(0),
        control: ConnectionControl {
            goaway: Notify::new(),
            goaway_requested: AtomicBool::new(false),
            drop: Notify::new(),
            closed: watch::channel(false).0,
        },
    });

    let service = {
        let shared = shared.clone();
        let ctx = ctx.clone();
        hyper::service::service_fn(move |req| handle(shared.clone(), ctx.clone(), req))
    };
    let mut conn = Box::pin(http2.serve_connection(TokioIo::new(tls), service));
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("APNs simulator: connection {id} ended: {e}");
                }
                break;
            }
            () = ctx.control.drop.notified() => {
                shared.counters.connections_dropped.fetch_add(1, Ordering::Relaxed);
                break;
            }
            () = ctx.control.goaway.notified(), if !draining => {
                draining = true;
                shared.counters.goaways_sent.fetch_add(1, Ordering::Relaxed);
                conn.as_mut().graceful_shutdown();
            }
            () = stopped(&mut shutdown), if !draining => {
                draining = true;
                shared.counters.goaways_sent.fetch_add(1, Ordering::Relaxed);
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    // Dropping the connection closes the socket: for DropConnection, without GOAWAY.
    drop(conn);
    ctx.control.closed.send_replace(true);
}

/// The request handler's way of telling hyper to reset the stream when the connection
/// is being dropped (the reset never reaches the peer: the socket is gone).
#[derive(Debug, thiserror::Error)]
#[error("the connection was dropped on purpose")]
struct ConnectionDropped;

enum Outcome {
    Accepted(Box<Push>),
    Rejected {
        reason: Reason,
        timestamp: Option<u64>,
    },
    Drop,
}

impl Outcome {
    fn reject(reason: Reason) -> Self {
        Self::Rejected {
            reason,
            timestamp: None,
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    ctx: Arc<ConnectionContext>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ConnectionDropped> {
    shared
        .counters
        .streams_served
        .fetch_add(1, Ordering::Relaxed);
    let served = ctx.streams.fetch_add(1, Ordering::Relaxed) + 1;
    let limit = shared.state().goaway_after;
    if limit.is_some_and(|limit| served >= limit) {
        ctx.control.request_goaway();
    }

    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    // The request's apns-id is echoed when well-formed; otherwise APNs makes one up.
    let requested_id = single_header(req.headers(), "apns-id").and_then(|v| v.ok());
    let apns_id = match requested_id {
        Some(id) if is_canonical_uuid(id) => id.to_owned(),
        _ => uuid::Uuid::new_v4().to_string().to_uppercase(),
    };

    let outcome = process(&shared, &ctx, req, &apns_id).await;
    let mut exchange = Exchange {
        connection_id: ctx.id,
        method,
        path,
        apns_id: apns_id.clone(),
        status: None,
        reason: None,
        at: SystemTime::now(),
    };
    match outcome {
        Outcome::Drop => {
            shared.record_exchange(exchange);
            let mut closed = ctx.control.closed.subscribe();
            ctx.control.drop.notify_one();
            let _ = closed.wait_for(|closed| *closed).await;
            Err(ConnectionDropped)
        }
        Outcome::Accepted(push) => {
            exchange.status = Some(200);
            shared.record_exchange(exchange);
            shared.accept(*push);
            Ok(response(StatusCode::OK, &apns_id, Bytes::new()))
        }
        Outcome::Rejected { reason, timestamp } => {
            exchange.status = Some(reason.status().as_u16());
            exchange.reason = Some(reason);
            shared.record_exchange(exchange);
            let mut body = serde_json::Map::new();
            body.insert("reason".into(), reason.as_str().into());
            if let Some(ts) = timestamp {
                body.insert("timestamp".into(), ts.into());
            }
            let json = serde_json::Value::Object(body).to_string();
            let mut resp = response(reason.status(), &apns_id, Bytes::from(json));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            Ok(resp)
        }
    }
}

fn response(status: StatusCode, apns_id: &str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(apns_id) {
        resp.headers_mut().insert("apns-id", v);
    }
    resp
}

/// What a fault does to the request in hand: `Some` ends it with that outcome.
async fn apply_fault(fault: Fault, ctx: &ConnectionContext) -> Option<Outcome> {
    match fault {
        Fault::Respond(reason) => Some(Outcome::reject(reason)),
        Fault::Delay(d) => {
            tokio::time::sleep(d).await;
            None
        }
        Fault::GoAway => {
            ctx.control.request_goaway();
            None
        }
        Fault::DropConnection => Some(Outcome::Drop),
    }
}

/// The value of a header that may appear at most once: `None` when absent,
/// `Some(Err(()))` when repeated or not visible ASCII.
fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Option<Result<&'a str, ()>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return Some(Err(()));
    }
    Some(first.to_str().map_err(|_| ()))
}

fn is_canonical_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Device tokens are 32 bytes today; Apple warns they may grow, so anything from 32 to
/// 100 bytes of hex is taken.
fn valid_token(token: &str) -> bool {
    (64..=200).contains(&token.len())
        && token.len().is_multiple_of(2)
        && token.bytes().all(|b| b.is_ascii_hexdigit())
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Validates and answers one request, in the order APNs appears to check: faults queued
/// for "the next requests", the client certificate, method, path, headers, topic, push
/// type, payload, token/topic binding, faults for the token, token state.
async fn process(
    shared: &Shared,
    ctx: &ConnectionContext,
    req: Request<Incoming>,
    apns_id: &str,
) -> Outcome {
    if let Some(fault) = shared.take_next_fault() {
        if let Some(outcome) = apply_fault(fault, ctx).await {
            return outcome;
        }
    }
    if matches!(
        shared.certificate_fault(&ctx.fingerprint),
        Some(CertificateFault::Rejected | CertificateFault::Revoked | CertificateFault::Expired)
    ) {
        return Outcome::reject(Reason::BadCertificate);
    }
    if req.method() != Method::POST {
        return Outcome::reject(Reason::MethodNotAllowed);
    }
    let Some(token) = req.uri().path().strip_prefix("/3/device/") else {
        return Outcome::reject(Reason::BadPath);
    };
    if token.is_empty() {
        return Outcome::reject(Reason::MissingDeviceToken);
    }
    if token.contains('/') {
        return Outcome::reject(Reason::BadPath);
    }
    if !valid_token(token) {
        return Outcome::reject(Reason::BadDeviceToken);
    }
    let token = token.to_ascii_lowercase();

    let headers = req.headers();
    if SINGLE_HEADERS
        .iter()
        .any(|name| headers.get_all(*name).iter().count() > 1)
    {
        return Outcome::reject(Reason::DuplicateHeaders);
    }
    if let Some(id) = single_header(headers, "apns-id") {
        if !id.is_ok_and(|id| id == apns_id) {
            return Outcome::reject(Reason::BadMessageId);
        }
    }
    if let Some(priority) = single_header(headers, "apns-priority") {
        if !matches!(priority, Ok("10" | "5" | "1")) {
            return Outcome::reject(Reason::BadPriority);
        }
    }
    if let Some(expiration) = single_header(headers, "apns-expiration") {
        if !expiration.is_ok_and(|e| e.parse::<u64>().is_ok()) {
            return Outcome::reject(Reason::BadExpirationDate);
        }
    }
    if let Some(collapse) = single_header(headers, "apns-collapse-id") {
        if !collapse.is_ok_and(|c| c.len() <= 64) {
            return Outcome::reject(Reason::BadCollapseId);
        }
    }

    let topic = match (single_header(headers, "apns-topic"), &ctx.certificate_topic) {
        (None, Some(own)) => own.clone(),
        (None, None) => return Outcome::reject(Reason::MissingTopic),
        (Some(Err(())), _) => return Outcome::reject(Reason::BadTopic),
        (Some(Ok(t)), _) if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) => {
            return Outcome::reject(Reason::BadTopic)
        }
        (Some(Ok(t)), Some(own)) if t != own => return Outcome::reject(Reason::TopicDisallowed),
        (Some(Ok(t)), _) => t.to_owned(),
    };
    let is_mdm = topic.starts_with(MDM_TOPIC_PREFIX);

    match single_header(headers, "apns-push-type") {
        None if is_mdm && shared.require_push_type => {
            return Outcome::reject(Reason::InvalidPushType)
        }
        None => {}
        Some(Ok("mdm")) if is_mdm => {}
        Some(Ok(t)) if !is_mdm && APP_PUSH_TYPES.contains(&t) => {}
        Some(_) => return Outcome::reject(Reason::InvalidPushType),
    }

    let declared_length = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared_length.is_some_and(|n| n > shared.max_payload) {
        return Outcome::reject(Reason::PayloadTooLarge);
    }
    let headers = headers.clone();
    let body = match Limited::new(req.into_body(), shared.max_payload)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Outcome::reject(Reason::PayloadTooLarge),
        // The client reset the stream mid-body: there is no payload to speak of, and no
        // one left to read the answer.
        Err(_) => return Outcome::reject(Reason::PayloadEmpty),
    };
    if body.trim_ascii().is_empty() {
        return Outcome::reject(Reason::PayloadEmpty);
    }
    let json: Option<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(&body).ok();
    let Some(json) = json else {
        return Outcome::reject(Reason::PayloadEmpty);
    };
    let push_magic = if is_mdm {
        match json.get("mdm").and_then(|v| v.as_str()) {
            Some(magic) if !magic.is_empty() => Some(magic.to_owned()),
            _ => return Outcome::reject(Reason::PayloadEmpty),
        }
    } else {
        None
    };

    let bound_topic = shared.state().token_topics.get(&token).cloned();
    if bound_topic.is_some_and(|bound| bound != topic) {
        return Outcome::reject(Reason::DeviceTokenNotForTopic);
    }
    if let Some(fault) = shared.take_token_fault(&token) {
        if let Some(outcome) = apply_fault(fault, ctx).await {
            return outcome;
        }
    }
    let token_state = shared.state().token_states.get(&token).copied();
    match token_state {
        Some(TokenState::Unregistered(since)) => {
            return Outcome::Rejected {
                reason: Reason::Unregistered,
                timestamp: Some(unix_millis(since)),
            }
        }
        Some(TokenState::Expired) => return Outcome::reject(Reason::ExpiredToken),
        None => {}
    }

    Outcome::Accepted(Box::new(Push {
        token,
        topic,
        apns_id: apns_id.to_owned(),
        push_magic,
        body,
        headers,
        connection_id: ctx.id,
        received_at: SystemTime::now(),
    }))
}

/// Waits for the next push carrying `device`'s push magic, then runs one command
/// session ([`SimDevice::run_until_idle`]), as a device does when APNs wakes it. Pushes
/// with another magic are ignored, like a device ignores pushes not meant for its MDM
/// enrollment; pushes already queued behind the waking one are discarded, since the
/// session polls the whole command queue anyway. Returns `Ok(None)` once the channel
/// is closed (the simulator was dropped).
pub async fn wake_on_push(
    pushes: &mut mpsc::Receiver<Push>,
    device: &mut SimDevice,
) -> Result<Option<Vec<ProcessedCommand>>, DeviceError> {
    loop {
        let Some(push) = pushes.recv().await else {
            return Ok(None);
        };
        if push.push_magic.as_deref() != Some(device.push_magic.as_str()) {
            tracing::debug!(
                "push {} for token {} carries another push magic; ignored",
                push.apns_id,
                push.token
            );
            continue;
        }
        while pushes.try_recv().is_ok() {}
        return device.run_until_idle().await.map(Some);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_with_statuses() {
        for reason in Reason::ALL {
            assert_eq!(Reason::from_name(reason.as_str()), Some(reason));
        }
        assert_eq!(Reason::from_name("BadPayload"), None);
        assert_eq!(Reason::Unregistered.status(), StatusCode::GONE);
        assert_eq!(Reason::BadPath.status(), StatusCode::NOT_FOUND);
        assert_eq!(Reason::Shutdown.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(Reason::TopicDisallowed.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn token_and_id_shapes() {
        assert!(valid_token(&"ab".repeat(32)));
        assert!(valid_token(&"AB".repeat(50)));
        assert!(!valid_token(&"ab".repeat(31)));
        assert!(!valid_token(&"ab".repeat(101)));
        assert!(!valid_token(&format!("{}a", "ab".repeat(32))));
        assert!(!valid_token(&"zz".repeat(32)));
        assert!(is_canonical_uuid("123e4567-e89b-12d3-a456-4266554400a0"));
        assert!(is_canonical_uuid("123E4567-E89B-12D3-A456-4266554400A0"));
        assert!(!is_canonical_uuid("123e4567e89b12d3a4564266554400a0"));
        assert!(!is_canonical_uuid("{123e4567-e89b-12d3-a456-4266554400a0}"));
    }

    #[test]
    fn push_certificate_from_public_key_and_csr() {
        let authorities = ApnsAuthorities::generate().unwrap();
        let key = PrivateKey::generate_rsa2048().unwrap();
        let topic = new_mdm_topic();
        let cert = authorities
            .issue_push_certificate(&topic, &key.public_key_info_der().unwrap())
            .unwrap();
        assert_eq!(certificate_topic(&cert).as_deref(), Some(topic.as_str()));
        let uuid = topic.strip_prefix(EXTERNAL_TOPIC_PREFIX).unwrap();
        assert_eq!(
            x509util::common_name(&cert.tbs_certificate.subject),
            Some(format!("APSP:{uuid}"))
        );
        x509util::verify_issued_by(&cert, &authorities.push_ca().certificate).unwrap();

        let csr = x509util::certificate_request(
            &x509util::name(&[("CN", "appliance")]).unwrap(),
            &key,
            None,
            &[],
        )
        .unwrap();
        let mut der = csr.to_der().unwrap();
        let parsed = PushCertificateRequest::parse(&der).unwrap();
        assert_eq!(parsed.public_key, key.public_key_info().unwrap());
        // A flipped bit in the signature: the requester does not prove key possession.
        let last = der.len() - 1;
        der[last] ^= 1;
        assert!(matches!(
            PushCertificateRequest::parse(&der),
            Err(ApnsError::CsrSignature)
        ));
        assert!(matches!(
            authorities.issue_push_certificate("bad topic", &key.public_key_info_der().unwrap()),
            Err(ApnsError::InvalidTopic(_))
        ));
        assert!(PushCertificateRequest::parse(b"  ").is_err());
        assert!(PushCertificateRequest::parse(b"hello world").is_err());
    }

    #[test]
    fn authorities_persist() {
        let dir = tempfile::tempdir().unwrap();
        let a = ApnsAuthorities::load_or_generate(dir.path()).unwrap();
        let b = ApnsAuthorities::load_or_generate(dir.path()).unwrap();
        assert_eq!(a.push_ca().certificate, b.push_ca().certificate);
        assert_eq!(a.server_ca().certificate, b.server_ca().certificate);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(PUSH_CA_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0);
        }
        // A key that does not match its certificate is refused.
        fs::copy(dir.path().join(SERVER_CA_KEY), dir.path().join(PUSH_CA_KEY)).unwrap();
        assert!(ApnsAuthorities::load(dir.path()).is_err());
    }
}
