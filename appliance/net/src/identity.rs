//! A TLS identity (certificate chain and PKCS#8 key) as rustls wants it, for servers and for
//! clients that present a certificate.

use rustls::sign::CertifiedKey;
use rustls::InconsistentKeys;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why a certificate chain and key do not make a usable TLS identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The chain holds no certificate.
    #[error("the identity has no certificate")]
    EmptyChain,
    /// The key is not a usable PKCS#8 RSA or ECDSA key.
    #[error("the private key is not a usable PKCS#8 RSA or ECDSA key: {0}")]
    Key(#[source] rustls::Error),
    /// The key belongs to another certificate than the chain's first.
    #[error("the private key does not belong to the leaf certificate")]
    KeyMismatch,
    /// The leaf certificate could not be read to compare it with the key.
    #[error("the leaf certificate could not be parsed: {0}")]
    Certificate(#[source] rustls::Error),
}

/// Builds the identity from `chain` (leaf first, DER) and a PKCS#8 key, checking that the key
/// is the leaf's.
///
/// The key is loaded through a borrowed `PrivateKeyDer`, so the only copy of its bytes stays in
/// the caller's (zeroizing) buffer; rustls' owned-key path would take and drop an unwiped copy.
pub fn certified_key(chain: &[Vec<u8>], pkcs8: &[u8]) -> Result<CertifiedKey, IdentityError> {
    if chain.is_empty() {
        return Err(IdentityError::EmptyChain);
    }
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
    let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der)
        .map_err(IdentityError::Key)?;
    let chain = chain
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(IdentityError::KeyMismatch)
        }
        // A key that cannot show its public half still proves possession in the handshake, so
        // this is not a reason to refuse it (aws-lc-rs keys always show it).
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(other) => Err(IdentityError::Certificate(other)),
    }
}
