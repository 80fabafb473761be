//! The MDM service: enrollment profiles and links, ADE MachineInfo checks, SCEP issuance,
//! the check-in and command protocol, and the admin operations the API exposes.
//!
//! It declares the storage it needs in [`ports`] and knows nothing of HTTP: the web layer turns
//! requests into calls here and [`ServiceError`]s into responses.
//!
//! Pushes go through a [`ports::PushProvider`] (APNs, in `mdm-apns`) driven by
//! [`push::run_pusher`].
//!
//! Not yet here:
//! declarations (DeclarativeManagement answers valid empty documents), user-channel
//! authentication (UserAuthenticate is declined).

pub mod abm;
pub mod accounts;
pub mod authority;
pub mod backup;
pub mod checkin;
pub mod commands;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod enroll;
pub mod error;
pub mod export;
pub mod lifecycle;
pub mod ports;
pub mod profiles;
pub mod push;
pub mod rotation;
pub mod scep;
pub mod settings;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mdm_keystore::Sealer;
use mdm_pki::Certificate;

pub use authority::{Authority, TlsNames};
pub use checkin::{ConnectionScratch, DeviceReply, DeviceRequest, PeerCertificate};
pub use error::{ErrorKind, ServiceError, ServiceResult};
use ports::{RetentionPolicy, Store};

/// What [`TokenProvider::token`] returns: the token bytes, once made.
pub type TokenFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = ServiceResult<Vec<u8>>> + Send + 'a>>;

/// Answers a `GetToken` check-in for one `TokenServiceType` (e.g. `com.apple.maid`, provided by
/// the ABM integration: [`abm::maid::MaidTokenProvider`]). Providers are registered at
/// start-up. Asynchronous because a token may be signed by a key inside the TPM, which takes
/// longer than a request handler should block.
pub trait TokenProvider: Send + Sync + 'static {
    /// The token bytes returned to the device as `TokenData`, for the (bound) enrollment
    /// `enrollment_id`.
    fn token<'a>(
        &'a self,
        enrollment_id: &'a str,
        parameters: Option<&'a plist::Dictionary>,
    ) -> TokenFuture<'a>;
}

/// ADE (Automated Device Enrollment) settings.
#[derive(Debug, Clone, Default)]
pub struct AdeConfig {
    /// Roots a MachineInfo signature must chain to (Apple's device CA roots in production).
    pub device_ca_roots: Vec<Certificate>,
    /// Devices below this OS version that can update are asked to (403
    /// `com.apple.softwareupdate.required`).
    pub min_os_version: Option<String>,
    /// The build to report alongside `min_os_version`, when known.
    pub min_os_build: Option<String>,
}

/// How the service behaves. Built by the daemon from its configuration file.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The appliance's public base URL, e.g. `https://mdm.example.lan:8443` (no trailing `/`).
    pub base_url: String,
    /// Shown in profiles and certificate subjects.
    pub organization: String,
    /// How long a SCEP challenge in a served profile stays valid.
    pub challenge_ttl: Duration,
    /// WARNING: a static challenge lets anyone who learns it obtain device certificates.
    /// `None` (the default) issues a one-time challenge per served profile.
    pub static_challenge: Option<String>,
    /// Lifetime of device identity certificates.
    pub device_cert_lifetime: Duration,
    /// Ask devices to sign every message (`SignMessage`).
    pub sign_message: bool,
    pub ade: AdeConfig,
    /// Command history bounds.
    pub retention: RetentionPolicy,
    /// Default lifetime of an enrollment link.
    pub link_ttl: Duration,
    /// The appliance's state directory: backups copy the database there before encrypting
    /// it. `None` disables backups.
    pub state_dir: Option<std::path::PathBuf>,
}

impl ServiceConfig {
    /// Defaults for a given base URL and organisation.
    pub fn new(base_url: &str, organization: &str) -> Self {
        ServiceConfig {
            base_url: base_url.trim_end_matches('/').to_string(),
            organization: organization.to_string(),
            challenge_ttl: Duration::from_secs(3600),
            static_challenge: None,
            device_cert_lifetime: authority::DEFAULT_DEVICE_CERT_LIFETIME,
            sign_message: true,
            ade: AdeConfig::default(),
            retention: RetentionPolicy {
                max_age: authority::days(30),
                max_finished_per_enrollment: 500,
                batch_limit: 1000,
            },
            link_ttl: authority::days(7),
            state_dir: None,
        }
    }
}

struct Inner<S> {
    store: S,
    sealer: Arc<dyn Sealer>,
    authority: Authority,
    config: ServiceConfig,
    token_providers: HashMap<String, Arc<dyn TokenProvider>>,
    /// The push topic from the imported push certificate (cached from settings).
    topic: RwLock<Option<String>>,
    /// Enrollments owed a push.
    pushes: push::PushQueue,
    /// Every device known, joined by serial number.
    devices: lifecycle::directory::DeviceDirectory,
    /// Lifecycle policy (cached from settings).
    lifecycle: RwLock<lifecycle::LifecycleSettings>,
    /// Lifecycle activity waiting to be written.
    activity: lifecycle::activity::ActivityBuffer,
    /// Groups and profile records.
    catalog: RwLock<profiles::Catalog>,
    /// Held by every change to groups, profiles or install plans, so that two never plan
    /// from the same state.
    profile_lock: tokio::sync::Mutex<()>,
    accounts: accounts::setup::Accounts,
    /// Held by a backup and by a data-key rotation: a backup carries one data key, so it must
    /// not copy a database that a rotation is re-sealing.
    maintenance: tokio::sync::Mutex<()>,
}

/// The MDM service. Cheap to clone.
pub struct MdmService<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for MdmService<S> {
    fn clone(&self) -> Self {
        MdmService {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: Store> MdmService<S> {
    /// Assemble the service. `authority` comes from [`Authority::load_or_create`].
    pub fn new(
        store: S,
        sealer: Arc<dyn Sealer>,
        authority: Authority,
        config: ServiceConfig,
        token_providers: HashMap<String, Arc<dyn TokenProvider>>,
    ) -> ServiceResult<Self> {
        let topic = settings::load_topic(&store)?;
        let lifecycle = lifecycle::load_settings(&store)?;
        let devices = lifecycle::directory::DeviceDirectory::load(&store)?;
        let catalog = profiles::Catalog::load(&store)?;
        Ok(MdmService {
            inner: Arc::new(Inner {
                store,
                sealer,
                authority,
                config,
                token_providers,
                topic: RwLock::new(topic),
                pushes: push::PushQueue::default(),
                devices,
                lifecycle: RwLock::new(lifecycle),
                activity: lifecycle::activity::ActivityBuffer::default(),
                catalog: RwLock::new(catalog),
                profile_lock: tokio::sync::Mutex::new(()),
                accounts: accounts::setup::Accounts::default(),
                maintenance: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The storage backend.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The appliance's certificates.
    pub fn authority(&self) -> &Authority {
        &self.inner.authority
    }

    /// Every device known (pre-enrolled, listed by ABM, enrolled), joined by serial number.
    pub fn devices(&self) -> &lifecycle::directory::DeviceDirectory {
        &self.inner.devices
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// The current push topic, if a push certificate was imported.
    pub fn topic(&self) -> Option<String> {
        self.inner.topic.read().map(|t| t.clone()).unwrap_or(None)
    }

    fn sealer(&self) -> &dyn Sealer {
        self.inner.sealer.as_ref()
    }

    /// The keystore, for work moved off the async threads (keys held in a TPM).
    fn shared_sealer(&self) -> Arc<dyn Sealer> {
        Arc::clone(&self.inner.sealer)
    }

    /// What the keystore is now (backend, current data key, a rotation under way), for
    /// status pages. Costs no I/O.
    pub fn keystore(&self) -> mdm_keystore::KeystoreInfo {
        self.inner.sealer.describe()
    }
}

/// Hex SHA-256, used for every stored hash (tokens, challenges, certificates).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// A random URL-safe token with 256 bits of entropy.
pub fn random_token() -> ServiceResult<String> {
    use base64::Engine as _;
    let mut buf = [0u8; 32];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| {
        ServiceError::internal("RANDOM_FAILED", "the system random generator failed")
    })?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}
