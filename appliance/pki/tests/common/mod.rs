//! Shared fixtures: a small PKI and an `openssl` runner.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mdm_pki::{
    issue, self_signed, Certificate, CertificateParams, KeyAlgorithm, KeyUsages, Name, PrivateKey,
};

pub const DAY: Duration = Duration::from_secs(86_400);
pub const BACKDATE: Duration = Duration::from_secs(300);

/// `true` when the `openssl` binary runs; tests that need it print a note and return early
/// otherwise.
pub fn have_openssl() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("openssl binary not available: skipping the cross-check");
    }
    ok
}

/// Runs `openssl args...` in `dir`, asserting success; returns stdout.
pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = openssl_raw(dir, args);
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs `openssl args...` in `dir` and returns whatever happened.
pub fn openssl_raw(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("spawn openssl")
}

pub fn write(dir: &Path, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write test file");
    p
}

pub fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).expect("read test file")
}

/// An ECDSA root CA, an RSA leaf it issued, and their keys.
pub struct Pki {
    pub ca_key: PrivateKey,
    pub ca: Certificate,
    pub leaf_key: PrivateKey,
    pub leaf: Certificate,
}

pub fn ca() -> (PrivateKey, Certificate) {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let name = Name {
        common_name: "Test Appliance CA".into(),
        organization: Some("Test Org".into()),
        ..Name::default()
    };
    let cert = self_signed(
        &CertificateParams::ca(name, Some(0), 3650 * DAY, BACKDATE),
        &key,
    )
    .unwrap();
    (key, cert)
}

pub fn rsa_leaf(ca: &Certificate, ca_key: &PrivateKey, cn: &str) -> (PrivateKey, Certificate) {
    let key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    let params = CertificateParams::leaf(Name::new(cn), 365 * DAY, BACKDATE);
    let cert = issue(&params, &key.public_key_der(), ca, ca_key).unwrap();
    (key, cert)
}

pub fn pki() -> Pki {
    let (ca_key, ca) = ca();
    let (leaf_key, leaf) = rsa_leaf(&ca, &ca_key, "signer.example");
    Pki {
        ca_key,
        ca,
        leaf_key,
        leaf,
    }
}

/// A self-signed RSA identity such as a SCEP client makes for itself.
pub fn self_signed_rsa(cn: &str) -> (PrivateKey, Certificate) {
    let key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    let mut params = CertificateParams::leaf(Name::new(cn), DAY, BACKDATE);
    params.key_usage = KeyUsages::SIGN_AND_ENCRYPT;
    let cert = self_signed(&params, &key).unwrap();
    (key, cert)
}
