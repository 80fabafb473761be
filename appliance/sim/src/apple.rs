//! A stand-in for Apple's device-identity PKI: a self-signed "Apple Root CA", an
//! "Apple iPhone Device CA" intermediate under it, and per-device identity certificates
//! that sign MachineInfo during Automated Device Enrollment.
//!
//! Configure the appliance under test to trust [`AppleStandIn::root_pem`] as an Apple
//! root; it must never trust it in production.

use std::fs;
use std::path::{Path, PathBuf};

use x509_cert::Certificate;

use crate::error::{AppleError, CryptoError};
use crate::keys::{KeyAlgorithm, PrivateKey};
use crate::x509::{self, CertificateParams, KeyUsageFlags};

const ROOT_CERT: &str = "apple-root.pem";
const ROOT_KEY: &str = "apple-root.key.pem";
const INTERMEDIATE_CERT: &str = "apple-iphone-device-ca.pem";
const INTERMEDIATE_KEY: &str = "apple-iphone-device-ca.key.pem";

/// The stand-in Apple CA pair.
#[derive(Debug, Clone)]
pub struct AppleStandIn {
    root: Certificate,
    root_key: PrivateKey,
    intermediate: Certificate,
    intermediate_key: PrivateKey,
}

/// A device's Apple-issued identity: the key and certificate that sign MachineInfo.
#[derive(Debug, Clone)]
pub struct AppleDeviceIdentity {
    /// The leaf certificate, issued by the "Apple iPhone Device CA" stand-in.
    pub certificate: Certificate,
    /// Its private key.
    pub key: PrivateKey,
    /// The intermediate that issued it (sent along with the leaf).
    pub intermediate: Certificate,
}

impl AppleStandIn {
    /// Generates a new root and intermediate (RSA-2048 each, like Apple's).
    pub fn generate() -> Result<Self, AppleError> {
        let root_key = PrivateKey::generate_rsa2048()?;
        let root = x509::self_signed(
            &CertificateParams::new(x509::name(&[
                ("C", "US"),
                ("O", "Apple Inc."),
                ("OU", "Apple Certification Authority"),
                ("CN", "Apple Root CA"),
            ])?)
            .valid_for_days(25 * 365)
            .ca(None),
            &root_key,
        )?;
        let intermediate_key = PrivateKey::generate_rsa2048()?;
        let intermediate = x509::issue(
            &CertificateParams::new(x509::name(&[
                ("C", "US"),
                ("O", "Apple Inc."),
                ("OU", "Apple iPhone"),
                ("CN", "Apple iPhone Device CA"),
            ])?)
            .valid_for_days(15 * 365)
            .ca(Some(0)),
            &intermediate_key.public_key_info()?,
            Some(&root),
            &root_key,
        )?;
        Ok(Self {
            root,
            root_key,
            intermediate,
            intermediate_key,
        })
    }

    /// The root certificate.
    pub fn root(&self) -> &Certificate {
        &self.root
    }

    /// The "Apple iPhone Device CA" intermediate.
    pub fn intermediate(&self) -> &Certificate {
        &self.intermediate
    }

    /// The root as PEM, for the server's list of trusted Apple roots.
    pub fn root_pem(&self) -> Result<String, AppleError> {
        Ok(x509::to_pem(&self.root)?)
    }

    /// The intermediate as PEM.
    pub fn intermediate_pem(&self) -> Result<String, AppleError> {
        Ok(x509::to_pem(&self.intermediate)?)
    }

    /// Issues a device identity certificate (subject CN = UDID, serialNumber = serial).
    pub fn issue_device_identity(
        &self,
        udid: &str,
        serial: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<AppleDeviceIdentity, AppleError> {
        self.issue_device_identity_with_key(udid, serial, PrivateKey::generate(algorithm)?)
    }

    /// Like [`Self::issue_device_identity`] with a caller-supplied key (key pools).
    pub fn issue_device_identity_with_key(
        &self,
        udid: &str,
        serial: &str,
        key: PrivateKey,
    ) -> Result<AppleDeviceIdentity, AppleError> {
        let subject = x509::name(&[("SERIALNUMBER", serial), ("CN", udid)])
            .or_else(|_| x509::name(&[("CN", udid)]))?;
        let certificate = x509::issue(
            &CertificateParams::new(subject)
                .valid_for_days(3 * 365)
                .key_usage(&[
                    KeyUsageFlags::DigitalSignature,
                    KeyUsageFlags::KeyEncipherment,
                ]),
            &key.public_key_info()?,
            Some(&self.intermediate),
            &self.intermediate_key,
        )?;
        Ok(AppleDeviceIdentity {
            certificate,
            key,
            intermediate: self.intermediate.clone(),
        })
    }

    /// Writes the four PEM files into `dir` (created if missing; keys mode 0600).
    pub fn save(&self, dir: &Path) -> Result<(), AppleError> {
        fs::create_dir_all(dir).map_err(|source| AppleError::Io {
            path: dir.to_owned(),
            source,
        })?;
        write_file(
            &dir.join(ROOT_CERT),
            x509::to_pem(&self.root)?.as_bytes(),
            false,
        )?;
        write_file(
            &dir.join(ROOT_KEY),
            self.root_key.to_pkcs8_pem()?.as_bytes(),
            true,
        )?;
        write_file(
            &dir.join(INTERMEDIATE_CERT),
            x509::to_pem(&self.intermediate)?.as_bytes(),
            false,
        )?;
        write_file(
            &dir.join(INTERMEDIATE_KEY),
            self.intermediate_key.to_pkcs8_pem()?.as_bytes(),
            true,
        )?;
        Ok(())
    }

    /// Reads what [`Self::save`] wrote.
    pub fn load(dir: &Path) -> Result<Self, AppleError> {
        let root = read_cert(&dir.join(ROOT_CERT))?;
        let root_key = read_key(&dir.join(ROOT_KEY))?;
        let intermediate = read_cert(&dir.join(INTERMEDIATE_CERT))?;
        let intermediate_key = read_key(&dir.join(INTERMEDIATE_KEY))?;
        x509::verify_issued_by(&intermediate, &root)?;
        Ok(Self {
            root,
            root_key,
            intermediate,
            intermediate_key,
        })
    }

    /// Loads from `dir` if it holds a stand-in, otherwise generates and saves one.
    pub fn load_or_generate(dir: &Path) -> Result<Self, AppleError> {
        if dir.join(ROOT_CERT).exists() {
            Self::load(dir)
        } else {
            let ca = Self::generate()?;
            ca.save(dir)?;
            Ok(ca)
        }
    }

    /// The path of the root certificate inside a directory written by [`Self::save`].
    pub fn root_path(dir: &Path) -> PathBuf {
        dir.join(ROOT_CERT)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AppleError + '_ {
    move |source| AppleError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), AppleError> {
    write_sim_file(path, data, secret).map_err(io_err(path))
}

/// Writes one of the simulators' files; `secret` ones (private keys) are created mode 0600.
pub(crate) fn write_sim_file(path: &Path, data: &[u8], secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    options.open(path)?.write_all(data)
}

fn read_cert(path: &Path) -> Result<Certificate, AppleError> {
    let pem = fs::read(path).map_err(io_err(path))?;
    x509::certificates_from_pem(&pem)?
        .into_iter()
        .next()
        .ok_or(AppleError::Crypto(CryptoError::MalformedCms(
            "no certificate in PEM file",
        )))
}

fn read_key(path: &Path) -> Result<PrivateKey, AppleError> {
    let pem = zeroize::Zeroizing::new(fs::read_to_string(path).map_err(io_err(path))?);
    Ok(PrivateKey::from_pkcs8_pem(&pem)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_and_issues_chaining_identities() {
        let dir = tempfile::tempdir().unwrap();
        let ca = AppleStandIn::load_or_generate(dir.path()).unwrap();
        let again = AppleStandIn::load_or_generate(dir.path()).unwrap();
        assert_eq!(ca.root(), again.root());
        assert_eq!(ca.intermediate(), again.intermediate());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(ROOT_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0);
        }
        for alg in [KeyAlgorithm::Rsa2048, KeyAlgorithm::EcdsaP256] {
            let id = again
                .issue_device_identity("00008120-000A1B2C3D4E5F60", "F2LXK3ABCD", alg)
                .unwrap();
            x509::verify_chain(
                &id.certificate,
                std::slice::from_ref(&id.intermediate),
                &[ca.root().clone()],
            )
            .unwrap();
        }
        assert!(
            x509::common_name(&ca.intermediate().tbs_certificate.subject)
                .is_some_and(|cn| cn == "Apple iPhone Device CA")
        );
    }
}
