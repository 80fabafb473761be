//! TLS client configuration: trusted roots and the push certificate as client identity.

use std::sync::Arc;

use mdm_service::ports::PushIdentity;
use rustls::client::ClientConfig;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::RootCertStore;

use crate::config::ApnsRoots;
use crate::error::ApnsError;

/// Loads the trusted roots (see [`mdm_net::load_roots`]).
pub(crate) fn load_roots(roots: &ApnsRoots) -> Result<Arc<RootCertStore>, ApnsError> {
    Ok(mdm_net::load_roots(roots)?)
}

/// A client configuration that presents `identity` and speaks only HTTP/2.
pub(crate) fn client_config(
    roots: &Arc<RootCertStore>,
    identity: &PushIdentity,
) -> Result<Arc<ClientConfig>, ApnsError> {
    let provider = mdm_net::crypto_provider();
    let key = certified_key(identity)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ApnsError::Tls)?
        .with_root_certificates(Arc::clone(roots))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn certified_key(identity: &PushIdentity) -> Result<CertifiedKey, ApnsError> {
    use mdm_net::IdentityError as E;
    mdm_net::certified_key(&identity.cert_chain_der, &identity.key_pkcs8_der).map_err(|e| match e {
        E::EmptyChain => ApnsError::EmptyChain,
        E::KeyMismatch => ApnsError::KeyMismatch,
        E::Key(e) | E::Certificate(e) => ApnsError::Key(e),
    })
}

/// When a TLS error is the server refusing our certificate, says so in words an admin can
/// act on. Walks the error's sources because hyper and tokio-rustls wrap it.
pub(crate) fn certificate_refusal(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = refusal_alert(e) {
            return found;
        }
        // `io::Error::source` skips the error it wraps, which is where tokio-rustls puts
        // the rustls error; h2 keeps its I/O error out of `source` altogether.
        let io = e
            .downcast_ref::<std::io::Error>()
            .or_else(|| e.downcast_ref::<h2::Error>().and_then(h2::Error::get_io));
        if let Some(inner) = io.and_then(|io| io.get_ref()) {
            if let Some(found) = refusal_alert(inner) {
                return found;
            }
        }
        current = e.source();
    }
    None
}

/// `Some(None)`: a TLS alert that is not about our certificate; `Some(Some(text))`: one that
/// is; `None`: not a TLS alert.
fn refusal_alert(e: &(dyn std::error::Error + 'static)) -> Option<Option<String>> {
    use rustls::AlertDescription as A;
    let Some(rustls::Error::AlertReceived(alert)) = e.downcast_ref::<rustls::Error>() else {
        return None;
    };
    let what = match alert {
        A::BadCertificate => "bad certificate",
        A::UnsupportedCertificate => "unsupported certificate",
        A::CertificateRevoked => "certificate revoked",
        A::CertificateExpired => "certificate expired",
        A::CertificateUnknown => "certificate unknown",
        A::UnknownCA => "unknown CA",
        A::AccessDenied => "access denied",
        A::CertificateRequired => "certificate required",
        _ => return Some(None),
    };
    Some(Some(format!(
        "the push service refused the push certificate during the TLS handshake ({what})"
    )))
}
