//! Certificates and enveloped data through [`PrivateKeyOps`] with keys that are not a
//! `PrivateKey`: keys held "elsewhere" (here aws-lc keys behind the trait, as a keystore or
//! TPM would hold them), keys that cannot be reached, and keys that lie about their public
//! half.
// Test code: a failed unwrap is a failed test, and helpers outside #[test] functions too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::cell::Cell;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{
    KeyPair as RsaKeyPair, KeySize, Pkcs1PrivateDecryptingKey, PrivateDecryptingKey,
};
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
use common::{have_openssl, openssl, write, BACKDATE, DAY};
use mdm_pki::cms::{self, ContentCipher};
use mdm_pki::{
    issue, oid, self_signed, verify_signature, CertificateParams, KeyUsages, Name, PkiError,
    PrivateKeyOps,
};
use zeroize::Zeroizing;

/// An RSA key kept as aws-lc objects, used only through the trait (what the appliance's
/// keystore adapter does with a key it never sees).
struct HeldRsa {
    pair: RsaKeyPair,
    pkcs8: Vec<u8>,
    spki: Vec<u8>,
    decryptions: Cell<u32>,
}

impl HeldRsa {
    fn generate() -> Self {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let pkcs8: Pkcs8V1Der<'static> = pair.as_der().unwrap();
        let spki: PublicKeyX509Der<'static> = pair.public_key().as_der().unwrap();
        HeldRsa {
            pkcs8: pkcs8.as_ref().to_vec(),
            spki: spki.as_ref().to_vec(),
            pair,
            decryptions: Cell::new(0),
        }
    }
}

impl PrivateKeyOps for HeldRsa {
    fn public_key_der(&self) -> Vec<u8> {
        self.spki.clone()
    }

    fn sign_sha256(&self, msg: &[u8]) -> Result<Vec<u8>, PkiError> {
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                msg,
                &mut sig,
            )
            .map_err(|_| PkiError::Signing)?;
        Ok(sig)
    }

    fn rsa_decrypt_pkcs1(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, PkiError> {
        self.decryptions.set(self.decryptions.get() + 1);
        let key = PrivateDecryptingKey::from_pkcs8(&self.pkcs8).unwrap();
        let key = Pkcs1PrivateDecryptingKey::new(key).unwrap();
        let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
        let len = key
            .decrypt(ciphertext, &mut out)
            .map_err(|_| PkiError::Decryption)?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

/// An ECDSA P-256 key behind the trait, relying on the default `signature_algorithm`.
struct HeldEc {
    pair: EcdsaKeyPair,
    spki: Vec<u8>,
}

impl HeldEc {
    fn generate() -> Self {
        let pair = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let spki: PublicKeyX509Der<'static> = pair.public_key().as_der().unwrap();
        HeldEc {
            spki: spki.as_ref().to_vec(),
            pair,
        }
    }
}

impl PrivateKeyOps for HeldEc {
    fn public_key_der(&self) -> Vec<u8> {
        self.spki.clone()
    }

    fn sign_sha256(&self, msg: &[u8]) -> Result<Vec<u8>, PkiError> {
        self.pair
            .sign(&SystemRandom::new(), msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| PkiError::Signing)
    }

    fn rsa_decrypt_pkcs1(&self, _ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, PkiError> {
        Err(PkiError::NotRsa("ECDSA P-256"))
    }
}

/// A key whose holder cannot be reached (a TPM that does not answer).
struct Unreachable {
    spki: Vec<u8>,
}

const UNREACHABLE: &str = "could not reach the TPM through \"device:/dev/tpmrm0\"";

impl PrivateKeyOps for Unreachable {
    fn public_key_der(&self) -> Vec<u8> {
        self.spki.clone()
    }

    fn sign_sha256(&self, _msg: &[u8]) -> Result<Vec<u8>, PkiError> {
        Err(PkiError::KeyUnavailable(UNREACHABLE.into()))
    }

    fn rsa_decrypt_pkcs1(&self, _ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, PkiError> {
        Err(PkiError::KeyUnavailable(UNREACHABLE.into()))
    }
}

/// Reports one public key and signs or decrypts with another.
struct Impostor {
    claimed: Vec<u8>,
    real: HeldRsa,
}

impl PrivateKeyOps for Impostor {
    fn public_key_der(&self) -> Vec<u8> {
        self.claimed.clone()
    }

    fn sign_sha256(&self, msg: &[u8]) -> Result<Vec<u8>, PkiError> {
        self.real.sign_sha256(msg)
    }

    fn rsa_decrypt_pkcs1(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, PkiError> {
        self.real.rsa_decrypt_pkcs1(ciphertext)
    }
}

fn token_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::leaf(Name::new(cn), 365 * DAY, BACKDATE);
    params.key_usage = KeyUsages::SIGN_AND_ENCRYPT;
    params
}

#[test]
fn a_held_rsa_key_self_signs_and_opens_envelopes() {
    let key = HeldRsa::generate();
    let cert = self_signed(&token_params("held ABM token"), &key).unwrap();
    assert_eq!(cert.public_key_der(), key.public_key_der());
    assert_eq!(cert.subject(), "CN=held ABM token");
    // The default algorithm is derived from the public key.
    let alg = key.signature_algorithm().unwrap();
    assert_eq!(alg.oid, oid::SHA256_WITH_RSA);
    assert_eq!(cert.inner().signature_algorithm, alg);
    let tbs = der::Encode::to_der(&cert.inner().tbs_certificate).unwrap();
    let sig = cert.inner().signature.as_bytes().unwrap();
    verify_signature(&key.public_key_der(), &alg, None, &tbs, sig).unwrap();

    for cipher in [
        ContentCipher::Aes128Cbc,
        ContentCipher::Aes256Cbc,
        ContentCipher::DesEde3Cbc,
    ] {
        let env = cms::envelope(b"server token", &cert, cipher).unwrap();
        let (plain, used) = cms::open_envelope(&env, &cert, &key).unwrap();
        assert_eq!(plain.as_slice(), b"server token");
        assert_eq!(used, cipher);
    }
    assert_eq!(key.decryptions.get(), 3);
}

#[test]
fn held_keys_interoperate_with_openssl() {
    if !have_openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // A CA whose key is held (EC, default algorithm) issues for a held RSA key: both
    // signatures verify in OpenSSL.
    let ca_key = HeldEc::generate();
    assert_eq!(
        ca_key.signature_algorithm().unwrap().oid,
        oid::ECDSA_WITH_SHA256
    );
    let ca = self_signed(
        &CertificateParams::ca(Name::new("Held CA"), Some(0), 30 * DAY, BACKDATE),
        &ca_key,
    )
    .unwrap();
    let rsa = HeldRsa::generate();
    let leaf = issue(
        &token_params("held leaf"),
        &rsa.public_key_der(),
        &ca,
        &ca_key,
    )
    .unwrap();
    write(d, "ca.pem", ca.to_pem());
    write(d, "leaf.pem", leaf.to_pem());
    let out = openssl(d, &["verify", "-CAfile", "ca.pem", "leaf.pem"]);
    assert!(String::from_utf8_lossy(&out).contains("leaf.pem: OK"));

    // OpenSSL encrypts to the held key's self-signed certificate; the held key opens it.
    let cert = self_signed(&token_params("held ABM token"), &rsa).unwrap();
    write(d, "token.pem", cert.to_pem());
    write(
        d,
        "msg.txt",
        b"-----BEGIN MESSAGE-----\n{}\n-----END MESSAGE-----\n",
    );
    openssl(
        d,
        &[
            "cms",
            "-encrypt",
            "-binary",
            "-aes256",
            "-outform",
            "DER",
            "-in",
            "msg.txt",
            "-out",
            "env.der",
            "token.pem",
        ],
    );
    let env = std::fs::read(d.join("env.der")).unwrap();
    let (plain, used) = cms::open_envelope(&env, &cert, &rsa).unwrap();
    assert_eq!(used, ContentCipher::Aes256Cbc);
    assert!(plain.starts_with(b"-----BEGIN MESSAGE-----"));
}

#[test]
fn an_unreachable_key_is_not_reported_as_a_damaged_message() {
    let real = HeldRsa::generate();
    let cert = self_signed(&token_params("t"), &real).unwrap();
    let env = cms::envelope(b"content", &cert, ContentCipher::Aes256Cbc).unwrap();
    let gone = Unreachable {
        spki: real.public_key_der(),
    };
    match cms::open_envelope(&env, &cert, &gone) {
        Err(PkiError::KeyUnavailable(m)) => assert_eq!(m, UNREACHABLE),
        other => panic!("expected KeyUnavailable, got {other:?}"),
    }
    let err = self_signed(&token_params("t"), &gone).unwrap_err();
    assert!(matches!(err, PkiError::KeyUnavailable(_)), "{err}");
    assert!(err.to_string().contains("could not reach the TPM"), "{err}");

    // A key that fails to decrypt still gets the one generic answer.
    let other = HeldRsa::generate();
    let liar = Impostor {
        claimed: real.public_key_der(),
        real: other,
    };
    let err = cms::open_envelope(&env, &cert, &liar).unwrap_err();
    assert!(matches!(err, PkiError::Decryption), "{err}");
    assert_eq!(liar.real.decryptions.get(), 1);
}

#[test]
fn a_key_signing_with_another_key_makes_no_certificate() {
    let claimed = HeldRsa::generate();
    let liar = Impostor {
        claimed: claimed.public_key_der(),
        real: HeldRsa::generate(),
    };
    let err = self_signed(&token_params("t"), &liar).unwrap_err();
    assert!(
        matches!(
            err,
            PkiError::Invalid {
                context: "signer",
                ..
            }
        ),
        "{err}"
    );
}
