//! TLS server configuration for the device-facing listener.
//!
//! One policy for every connection: TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`, and a
//! client certificate that is *requested but optional*. Devices may authenticate either with the
//! `Mdm-Signature` header or with their identity certificate in the handshake, while browsers and
//! admin tools connect without one; a certificate that *is* presented must chain to the
//! appliance CA, otherwise the handshake fails. Whether a request is allowed without a
//! certificate is decided by the route layer, not here.
//!
//! [`ReloadableTls`] lets the daemon swap the certificate (renewal, CA rotation) while serving:
//! connections accepted afterwards use the new configuration, established ones keep theirs.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

/// How many TLS sessions the server remembers for stateful (TLS 1.2 session id) resumption.
/// Devices reconnect after every push, so resumption saves most of the handshake cost; each
/// entry is a few hundred bytes.
const SESSION_CACHE_ENTRIES: usize = 4096;

/// The appliance's TLS server identity.
pub struct TlsIdentity {
    /// DER certificates, leaf first, then any intermediates (the root may be omitted).
    pub cert_chain_der: Vec<Vec<u8>>,
    /// The leaf's private key as DER PKCS#8 `PrivateKeyInfo`; wiped from memory when dropped.
    pub key_pkcs8_der: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key must never reach a log line.
        f.debug_struct("TlsIdentity")
            .field("certificates", &self.cert_chain_der.len())
            .field("key_pkcs8_der", &"<redacted>")
            .finish()
    }
}

/// Why a TLS server configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The identity holds no certificate.
    #[error("the TLS identity has no certificate; the chain must start with the leaf certificate")]
    EmptyChain,
    /// The private key could not be loaded.
    #[error("the TLS private key is not a usable PKCS#8 RSA or ECDSA key: {0}")]
    Key(#[source] rustls::Error),
    /// The private key belongs to another certificate.
    #[error("the TLS private key does not belong to the leaf certificate of the chain")]
    KeyMismatch,
    /// The leaf certificate could not be parsed.
    #[error("the TLS leaf certificate could not be parsed: {0}")]
    Certificate(#[source] rustls::Error),
    /// One of the client CA certificates is not a usable trust anchor.
    #[error("client CA certificate number {index} is not a usable trust anchor: {source}")]
    ClientRoot {
        /// Position of the certificate in the list given.
        index: usize,
        /// What rustls found wrong with it.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the client certificate verifier.
    #[error("the client certificate verifier could not be built: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// rustls refused the protocol versions or the session ticket key.
    #[error("the TLS configuration was refused by rustls: {0}")]
    Config(#[source] rustls::Error),
}

/// Builds the listener's TLS configuration.
///
/// TLS 1.2 and 1.3 only, ALPN `h2` then `http/1.1`, session resumption by session id and by
/// TLS 1.3 tickets (no 0-RTT data: device requests are not replay-safe). A client certificate
/// is requested but optional, and verified against `client_roots_der` when presented. With an
/// empty `client_roots_der` no client certificate is requested at all.
pub fn server_config(
    identity: &TlsIdentity,
    client_roots_der: &[Vec<u8>],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // Prefer the SHA-256 suites: AES-128-GCM is as strong as anything a device offers, and
    // SHA-384 (the default first choice) has no hardware help on x86, which shows at
    // thousands of handshakes and requests per second. The server's order decides.
    provider.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 3,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 1,
        _ => 4,
    });
    let provider = Arc::new(provider);
    let certified_key = certified_key(identity)?;
    let verifier = client_verifier(client_roots_der, &provider)?;

    let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified_key)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Our cipher-suite order (see above) decides, not the client's.
    config.ignore_client_order = true;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(TlsError::Config)?;
    config.max_early_data_size = 0;
    // One ticket per handshake (rustls sends two by default): a device makes one connection
    // at a time and resumes with the ticket of its last one, which hands it the next. Each
    // ticket is an encryption and a record on every device session.
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

fn certified_key(identity: &TlsIdentity) -> Result<CertifiedKey, TlsError> {
    use mdm_net::IdentityError as E;
    mdm_net::certified_key(&identity.cert_chain_der, &identity.key_pkcs8_der).map_err(|e| match e {
        E::EmptyChain => TlsError::EmptyChain,
        E::KeyMismatch => TlsError::KeyMismatch,
        E::Key(e) => TlsError::Key(e),
        E::Certificate(e) => TlsError::Certificate(e),
    })
}

fn client_verifier(
    client_roots_der: &[Vec<u8>],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    if client_roots_der.is_empty() {
        return Ok(WebPkiClientVerifier::no_client_auth());
    }
    let mut roots = RootCertStore::empty();
    for (index, der) in client_roots_der.iter().enumerate() {
        roots
            .add(CertificateDer::from(der.as_slice()))
            .map_err(|source| TlsError::ClientRoot { index, source })?;
    }
    // Requested, never required: browsers and admin tools connect without a certificate; the
    // MDM layer decides per request whether an identity is needed.
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .allow_unauthenticated()
        .build()
        .map_err(TlsError::Verifier)
}

/// A TLS configuration that can be replaced while the server runs.
///
/// The accept loop asks for [`ReloadableTls::current`] once per connection, so a replacement
/// applies to every connection accepted after it. Each configuration keeps its own resumption
/// state: a session from the old certificate or CA is never resumed under the new one.
pub struct ReloadableTls {
    current: RwLock<Arc<ServerConfig>>,
}

impl fmt::Debug for ReloadableTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableTls").finish_non_exhaustive()
    }
}

impl ReloadableTls {
    /// Starts with `config`.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self {
            current: RwLock::new(config),
        }
    }

    /// Starts with the configuration [`server_config`] builds from these inputs.
    pub fn from_identity(
        identity: &TlsIdentity,
        client_roots_der: &[Vec<u8>],
    ) -> Result<Self, TlsError> {
        server_config(identity, client_roots_der).map(Self::new)
    }

    /// The configuration new connections are accepted with.
    pub fn current(&self) -> Arc<ServerConfig> {
        // A poisoned lock still holds a complete `Arc`: writers only ever assign one.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Uses `config` for every connection accepted from now on.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
    }

    /// Builds a configuration with [`server_config`] and switches to it. On error the current
    /// configuration stays in use.
    pub fn reload(
        &self,
        identity: &TlsIdentity,
        client_roots_der: &[Vec<u8>],
    ) -> Result<(), TlsError> {
        let config = server_config(identity, client_roots_der)?;
        self.replace(config);
        Ok(())
    }
}
