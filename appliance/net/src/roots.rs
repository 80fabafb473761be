//! The root certificates a service's TLS certificate must chain to.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tracing::debug;

use crate::error::ConfigError;

/// Debian's CA bundle (package `ca-certificates`), present on the appliance image.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Where trusted root certificates come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Roots {
    /// The system bundle at [`SYSTEM_CA_BUNDLE`].
    #[default]
    System,
    /// A PEM file with one or more `CERTIFICATE` blocks.
    PemFile(PathBuf),
    /// PEM text with one or more `CERTIFICATE` blocks (e.g. stored with a connection).
    Pem(String),
    /// DER certificates held in memory.
    Der(Vec<Vec<u8>>),
}

/// The TLS crypto provider every client of the appliance uses: aws-lc-rs, the one crypto
/// library in the build.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads the trusted roots. Certificates a bundle holds but webpki cannot use (a few legacy
/// roots in every distribution bundle) are skipped; an empty result is an error.
pub fn load_roots(roots: &Roots) -> Result<Arc<RootCertStore>, ConfigError> {
    let (name, ders): (String, Vec<CertificateDer<'static>>) = match roots {
        Roots::System => {
            let path = Path::new(SYSTEM_CA_BUNDLE);
            (path.display().to_string(), read_pem_file(path)?)
        }
        Roots::PemFile(path) => (path.display().to_string(), read_pem_file(path)?),
        Roots::Pem(text) => (
            "the configured PEM certificates".to_string(),
            CertificateDer::pem_slice_iter(text.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConfigError::RootsPem {
                    reason: e.to_string(),
                })?,
        ),
        Roots::Der(ders) => (
            "the configured certificates".to_string(),
            ders.iter()
                .map(|d| CertificateDer::from(d.clone()))
                .collect(),
        ),
    };
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(ders);
    if ignored > 0 {
        debug!(added, ignored, roots = %name, "some root certificates are not usable and were skipped");
    }
    if store.is_empty() {
        return Err(ConfigError::NoRoots { source_name: name });
    }
    Ok(Arc::new(store))
}

fn read_pem_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let failed = |e: rustls_pki_types::pem::Error| ConfigError::RootsFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    CertificateDer::pem_file_iter(path)
        .map_err(failed)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mdm_pki::{CertificateParams, KeyAlgorithm, Name, PrivateKey};

    use super::*;

    fn ca(name: &str) -> mdm_pki::Certificate {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let params = CertificateParams::ca(
            Name::new(name),
            None,
            Duration::from_secs(3600),
            Duration::from_secs(60),
        );
        mdm_pki::self_signed(&params, &key).unwrap()
    }

    #[test]
    fn every_source_loads() {
        let (a, b) = (ca("Root A"), ca("Root B"));
        let pem = format!("{}{}", a.to_pem(), b.to_pem());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("roots.pem");
        std::fs::write(&file, &pem).unwrap();

        assert_eq!(load_roots(&Roots::PemFile(file)).unwrap().len(), 2);
        assert_eq!(load_roots(&Roots::Pem(pem)).unwrap().len(), 2);
        let der = Roots::Der(vec![a.der().to_vec()]);
        assert_eq!(load_roots(&der).unwrap().len(), 1);
        if Path::new(SYSTEM_CA_BUNDLE).exists() {
            assert!(!load_roots(&Roots::System).unwrap().is_empty());
        }
    }

    #[test]
    fn unusable_sources_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = load_roots(&Roots::PemFile(missing.clone())).unwrap_err();
        assert!(
            matches!(&err, ConfigError::RootsFile { path, .. } if *path == missing),
            "{err}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let err = load_roots(&Roots::PemFile(empty)).unwrap_err();
        assert!(matches!(err, ConfigError::NoRoots { .. }), "{err}");

        let err = load_roots(&Roots::Pem(String::new())).unwrap_err();
        assert!(matches!(err, ConfigError::NoRoots { .. }), "{err}");
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let err = load_roots(&Roots::Pem(broken.into())).unwrap_err();
        assert!(matches!(err, ConfigError::RootsPem { .. }), "{err}");
        // Bytes that are not a certificate are skipped, leaving nothing.
        let err = load_roots(&Roots::Der(vec![vec![1, 2, 3]])).unwrap_err();
        assert!(matches!(err, ConfigError::NoRoots { .. }), "{err}");
    }
}
