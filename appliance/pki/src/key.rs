//! Private keys, signing, RSA key transport decryption and signature verification.
//!
//! [`PrivateKeyOps`] is what certificate building and CMS decryption need from a private key;
//! [`PrivateKey`] (a key in memory) implements it, and so can a key held elsewhere (a TPM,
//! through the appliance's keystore) that never hands its private half out.

use std::fmt;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{
    KeyPair as RsaKeyPair, KeySize, Pkcs1PrivateDecryptingKey, PrivateDecryptingKey,
};
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, VerificationAlgorithm,
};
use const_oid::ObjectIdentifier;
use der::{Any, Decode};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use zeroize::Zeroizing;

use crate::asn1;
use crate::error::PkiError;
use crate::oid;

/// The key types the appliance generates and holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// RSA with a 2048-bit modulus (SCEP RA, profile signing, ABM token key, device keys).
    Rsa2048,
    /// ECDSA on NIST P-256 (the appliance CA and TLS).
    EcdsaP256,
}

impl KeyAlgorithm {
    fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::Rsa2048 => "RSA-2048",
            KeyAlgorithm::EcdsaP256 => "ECDSA P-256",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

enum Inner {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A private key held in memory as PKCS#8 (zeroized on drop) plus the parsed aws-lc key.
///
/// `Debug` shows the algorithm and a fingerprint of the public key, never key material.
pub struct PrivateKey {
    pkcs8: Zeroizing<Vec<u8>>,
    inner: Inner,
    spki: Vec<u8>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.spki);
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm())
            .field("public_key_sha256", &hex::encode(digest.as_ref()))
            .finish_non_exhaustive()
    }
}

fn rejected(reason: impl Into<String>) -> PkiError {
    PkiError::InvalidPrivateKey(reason.into())
}

impl PrivateKey {
    /// Generates a fresh key with the system random number generator.
    pub fn generate(alg: KeyAlgorithm) -> Result<Self, PkiError> {
        let pkcs8: Zeroizing<Vec<u8>> = match alg {
            KeyAlgorithm::Rsa2048 => {
                let kp = RsaKeyPair::generate(KeySize::Rsa2048)
                    .map_err(|_| PkiError::KeyGeneration(alg.name()))?;
                let der: Pkcs8V1Der<'static> = kp
                    .as_der()
                    .map_err(|_| PkiError::KeyGeneration(alg.name()))?;
                Zeroizing::new(der.as_ref().to_vec())
            }
            KeyAlgorithm::EcdsaP256 => {
                let kp = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING)
                    .map_err(|_| PkiError::KeyGeneration(alg.name()))?;
                let doc = kp
                    .to_pkcs8v1()
                    .map_err(|_| PkiError::KeyGeneration(alg.name()))?;
                Zeroizing::new(doc.as_ref().to_vec())
            }
        };
        Self::from_pkcs8_der(&pkcs8)
    }

    /// Parses an unencrypted PKCS#8 `PrivateKeyInfo`, telling RSA from EC by its algorithm
    /// identifier. Only RSA-2048 and ECDSA P-256 keys are accepted.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, PkiError> {
        let outer = asn1::read_single(der).map_err(|_| rejected("not a DER PKCS#8 structure"))?;
        let fields =
            asn1::children(outer.value).map_err(|_| rejected("not a DER PKCS#8 structure"))?;
        let alg_der = fields
            .get(1)
            .ok_or_else(|| rejected("PKCS#8 structure without an algorithm identifier"))?;
        let alg = AlgorithmIdentifierOwned::from_der(alg_der.raw)
            .map_err(|_| rejected("PKCS#8 algorithm identifier is malformed"))?;

        let inner = if alg.oid == oid::RSA_ENCRYPTION {
            let kp = RsaKeyPair::from_pkcs8(der)
                .map_err(|e| rejected(format!("aws-lc refused the RSA key ({e})")))?;
            let bits = kp.public_modulus_len() * 8;
            if bits != 2048 {
                return Err(rejected(format!(
                    "the RSA key has {bits} bits; only RSA-2048 is supported"
                )));
            }
            Inner::Rsa(kp)
        } else if alg.oid == oid::EC_PUBLIC_KEY {
            let curve = alg
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
            if curve != Some(oid::SECP256R1) {
                return Err(rejected("the EC key is not on P-256"));
            }
            let kp = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, der)
                .map_err(|e| rejected(format!("aws-lc refused the EC key ({e})")))?;
            Inner::Ec(kp)
        } else {
            return Err(rejected(format!("unsupported key algorithm {}", alg.oid)));
        };

        let spki = match &inner {
            Inner::Rsa(kp) => {
                let d: PublicKeyX509Der<'static> = kp
                    .public_key()
                    .as_der()
                    .map_err(|_| rejected("could not encode the RSA public key"))?;
                d.as_ref().to_vec()
            }
            Inner::Ec(kp) => {
                let d: PublicKeyX509Der<'static> = kp
                    .public_key()
                    .as_der()
                    .map_err(|_| rejected("could not encode the EC public key"))?;
                d.as_ref().to_vec()
            }
        };
        Ok(PrivateKey {
            pkcs8: Zeroizing::new(der.to_vec()),
            inner,
            spki,
        })
    }

    /// Parses a PEM `PRIVATE KEY` (unencrypted PKCS#8) block.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, PkiError> {
        let (label, der) = der::pem::decode_vec(pem.trim().as_bytes())
            .map_err(|e| PkiError::Pem(e.to_string()))?;
        let der = Zeroizing::new(der);
        if label != "PRIVATE KEY" {
            return Err(PkiError::Pem(format!(
                "expected a PRIVATE KEY block, found {label}"
            )));
        }
        Self::from_pkcs8_der(&der)
    }

    /// The PKCS#8 DER encoding of the key.
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        self.pkcs8.clone()
    }

    /// The PKCS#8 key as a PEM `PRIVATE KEY` block.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, PkiError> {
        der::pem::encode_string("PRIVATE KEY", der::pem::LineEnding::LF, &self.pkcs8)
            .map(Zeroizing::new)
            .map_err(|e| PkiError::Pem(e.to_string()))
    }

    /// Which kind of key this is.
    pub fn algorithm(&self) -> KeyAlgorithm {
        match self.inner {
            Inner::Rsa(_) => KeyAlgorithm::Rsa2048,
            Inner::Ec(_) => KeyAlgorithm::EcdsaP256,
        }
    }

    /// The public key as a DER `SubjectPublicKeyInfo`.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.spki.clone()
    }

    /// Signs `msg` with SHA-256: RSA PKCS#1 v1.5, or ECDSA with a DER `Ecdsa-Sig-Value`.
    pub fn sign_sha256(&self, msg: &[u8]) -> Result<Vec<u8>, PkiError> {
        let rng = SystemRandom::new();
        match &self.inner {
            Inner::Rsa(kp) => {
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(&signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig)
                    .map_err(|_| PkiError::Signing)?;
                Ok(sig)
            }
            Inner::Ec(kp) => kp
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| PkiError::Signing),
        }
    }

    /// The AlgorithmIdentifier matching [`PrivateKey::sign_sha256`]: sha256WithRSAEncryption
    /// (NULL parameters) or ecdsa-with-SHA256 (parameters absent).
    pub fn signature_algorithm(&self) -> AlgorithmIdentifierOwned {
        match self.inner {
            Inner::Rsa(_) => rsa_sha256_algorithm(),
            Inner::Ec(_) => ecdsa_sha256_algorithm(),
        }
    }

    /// Decrypts an RSA PKCS#1 v1.5 key-transport block (a CMS `encryptedKey`).
    ///
    /// The error does not say why decryption failed; callers that go on to decrypt content
    /// should also avoid revealing whether the padding or the content was wrong.
    pub fn rsa_decrypt_pkcs1(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, PkiError> {
        if !matches!(self.inner, Inner::Rsa(_)) {
            return Err(PkiError::NotRsa(self.algorithm().name()));
        }
        let key =
            PrivateDecryptingKey::from_pkcs8(&self.pkcs8).map_err(|_| PkiError::Decryption)?;
        let key = Pkcs1PrivateDecryptingKey::new(key).map_err(|_| PkiError::Decryption)?;
        let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
        let len = key
            .decrypt(ciphertext, &mut out)
            .map_err(|_| PkiError::Decryption)?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

/// The operations this crate performs with a private key, for keys that live in memory
/// ([`PrivateKey`]) and keys that do not (a keystore or TPM that signs and decrypts on the
/// caller's behalf).
///
/// Errors: a key-transport block that does not decrypt must come back as
/// [`PkiError::Decryption`] and nothing else, whatever the reason, so that
/// [`crate::cms::open_envelope`] can hide padding failures; a key that cannot be reached or
/// used at all (a TPM that does not answer, a key blob from another TPM) comes back as
/// [`PkiError::KeyUnavailable`], which callers pass on as such.
pub trait PrivateKeyOps {
    /// The public key as a DER `SubjectPublicKeyInfo`.
    fn public_key_der(&self) -> Vec<u8>;

    /// The AlgorithmIdentifier matching [`PrivateKeyOps::sign_sha256`]. The default derives
    /// it from the public key: sha256WithRSAEncryption (NULL parameters) for RSA,
    /// ecdsa-with-SHA256 (parameters absent) for EC.
    fn signature_algorithm(&self) -> Result<AlgorithmIdentifierOwned, PkiError> {
        let spki = SubjectPublicKeyInfoOwned::from_der(&self.public_key_der()).map_err(|e| {
            PkiError::InvalidPublicKey(format!("malformed SubjectPublicKeyInfo: {e}"))
        })?;
        match spki.algorithm.oid {
            oid::RSA_ENCRYPTION => Ok(rsa_sha256_algorithm()),
            oid::EC_PUBLIC_KEY => Ok(ecdsa_sha256_algorithm()),
            other => Err(PkiError::UnsupportedAlgorithm {
                oid: other.to_string(),
                purpose: "signing keys",
            }),
        }
    }

    /// Signs `msg` with SHA-256: RSASSA-PKCS1-v1_5, or ECDSA with a DER `Ecdsa-Sig-Value`.
    fn sign_sha256(&self, msg: &[u8]) -> Result<Vec<u8>, PkiError>;

    /// Decrypts an RSAES-PKCS1-v1_5 key-transport block (a CMS `encryptedKey`).
    fn rsa_decrypt_pkcs1(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, PkiError>;
}

fn rsa_sha256_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: oid::SHA256_WITH_RSA,
        parameters: Some(Any::null()),
    }
}

fn ecdsa_sha256_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: oid::ECDSA_WITH_SHA256,
        parameters: None,
    }
}

impl PrivateKeyOps for PrivateKey {
    fn public_key_der(&self) -> Vec<u8> {
        PrivateKey::public_key_der(self)
    }

    fn signature_algorithm(&self) -> Result<AlgorithmIdentifierOwned, PkiError> {
        Ok(PrivateKey::signature_algorithm(self))
    }

    fn sign_sha256(&self, msg: &[u8]) -> Result<Vec<u8>, PkiError> {
        PrivateKey::sign_sha256(self, msg)
    }

    fn rsa_decrypt_pkcs1(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, PkiError> {
        PrivateKey::rsa_decrypt_pkcs1(self, ciphertext)
    }
}

/// Shared keys (`Arc<PrivateKey>`, as services keep them) sign and decrypt like the key.
impl<K: PrivateKeyOps + ?Sized> PrivateKeyOps for std::sync::Arc<K> {
    fn public_key_der(&self) -> Vec<u8> {
        (**self).public_key_der()
    }

    fn signature_algorithm(&self) -> Result<AlgorithmIdentifierOwned, PkiError> {
        (**self).signature_algorithm()
    }

    fn sign_sha256(&self, msg: &[u8]) -> Result<Vec<u8>, PkiError> {
        (**self).sign_sha256(msg)
    }

    fn rsa_decrypt_pkcs1(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, PkiError> {
        (**self).rsa_decrypt_pkcs1(ciphertext)
    }
}

/// Hash functions the crate understands in CMS digestAlgorithm fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    pub(crate) fn from_oid(oid: &ObjectIdentifier) -> Option<Hash> {
        match *oid {
            oid::SHA1 => Some(Hash::Sha1),
            oid::SHA256 => Some(Hash::Sha256),
            oid::SHA384 => Some(Hash::Sha384),
            oid::SHA512 => Some(Hash::Sha512),
            _ => None,
        }
    }

    pub(crate) fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            Hash::Sha1 => &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            Hash::Sha256 => &aws_lc_rs::digest::SHA256,
            Hash::Sha384 => &aws_lc_rs::digest::SHA384,
            Hash::Sha512 => &aws_lc_rs::digest::SHA512,
        };
        aws_lc_rs::digest::digest(alg, data).as_ref().to_vec()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    Ec,
}

/// Verify a signature made by the holder of `spki_der` (RSA PKCS#1 v1.5 with SHA-1/256/384/512
/// or ECDSA P-256/P-384 with SHA-256/384), selected by the AlgorithmIdentifier(s) given.
///
/// `sig_alg` is either a combined algorithm (sha256WithRSAEncryption, ecdsa-with-SHA256, ...)
/// or, as some CMS producers write it, a bare key algorithm (rsaEncryption, id-ecPublicKey);
/// in the latter case the hash comes from `digest_alg`. RSA moduli below 2048 bits are refused.
pub fn verify_signature(
    spki_der: &[u8],
    sig_alg: &AlgorithmIdentifierOwned,
    digest_alg: Option<&AlgorithmIdentifierOwned>,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), PkiError> {
    let spki = SubjectPublicKeyInfoOwned::from_der(spki_der)
        .map_err(|e| PkiError::InvalidPublicKey(format!("malformed SubjectPublicKeyInfo: {e}")))?;

    let unsupported = |oid: &ObjectIdentifier| PkiError::UnsupportedAlgorithm {
        oid: oid.to_string(),
        purpose: "signatures",
    };
    let from_digest = || -> Result<Hash, PkiError> {
        let d = digest_alg.ok_or_else(|| unsupported(&sig_alg.oid))?;
        Hash::from_oid(&d.oid).ok_or_else(|| unsupported(&d.oid))
    };
    let (kind, hash) = match sig_alg.oid {
        oid::SHA1_WITH_RSA => (KeyKind::Rsa, Hash::Sha1),
        oid::SHA256_WITH_RSA => (KeyKind::Rsa, Hash::Sha256),
        oid::SHA384_WITH_RSA => (KeyKind::Rsa, Hash::Sha384),
        oid::SHA512_WITH_RSA => (KeyKind::Rsa, Hash::Sha512),
        oid::ECDSA_WITH_SHA256 => (KeyKind::Ec, Hash::Sha256),
        oid::ECDSA_WITH_SHA384 => (KeyKind::Ec, Hash::Sha384),
        oid::RSA_ENCRYPTION => (KeyKind::Rsa, from_digest()?),
        oid::EC_PUBLIC_KEY => (KeyKind::Ec, from_digest()?),
        other => return Err(unsupported(&other)),
    };

    let key_kind = match spki.algorithm.oid {
        oid::RSA_ENCRYPTION => KeyKind::Rsa,
        oid::EC_PUBLIC_KEY => KeyKind::Ec,
        other => {
            return Err(PkiError::InvalidPublicKey(format!(
                "unsupported public key algorithm {other}"
            )))
        }
    };
    if key_kind != kind {
        return Err(PkiError::InvalidPublicKey(format!(
            "signature algorithm {} does not match the key type",
            sig_alg.oid
        )));
    }

    let key_bits = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| PkiError::InvalidPublicKey("public key has unused bits".into()))?;

    let (alg, key): (&'static dyn VerificationAlgorithm, &[u8]) = match kind {
        KeyKind::Rsa => {
            let alg: &'static dyn VerificationAlgorithm = match hash {
                Hash::Sha1 => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                Hash::Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                Hash::Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                Hash::Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            };
            (alg, key_bits)
        }
        KeyKind::Ec => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
            let alg: &'static dyn VerificationAlgorithm = match (curve, hash) {
                (Some(oid::SECP256R1), Hash::Sha256) => &signature::ECDSA_P256_SHA256_ASN1,
                (Some(oid::SECP256R1), Hash::Sha384) => &signature::ECDSA_P256_SHA384_ASN1,
                (Some(oid::SECP384R1), Hash::Sha256) => &signature::ECDSA_P384_SHA256_ASN1,
                (Some(oid::SECP384R1), Hash::Sha384) => &signature::ECDSA_P384_SHA384_ASN1,
                (Some(c), _) => {
                    return Err(PkiError::UnsupportedAlgorithm {
                        oid: format!("{c} with the requested hash"),
                        purpose: "ECDSA signatures",
                    })
                }
                (None, _) => {
                    return Err(PkiError::InvalidPublicKey(
                        "EC public key without a named curve".into(),
                    ))
                }
            };
            (alg, key_bits)
        }
    };
    UnparsedPublicKey::new(alg, key)
        .verify(msg, sig)
        .map_err(|_| PkiError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_decrypt_refuses_ec_keys() {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        assert!(matches!(
            key.rsa_decrypt_pkcs1(&[0u8; 256]),
            Err(PkiError::NotRsa(_))
        ));
    }

    #[test]
    fn bare_key_algorithm_needs_a_digest() {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let sig = key.sign_sha256(b"m").unwrap();
        let bare = AlgorithmIdentifierOwned {
            oid: oid::EC_PUBLIC_KEY,
            parameters: None,
        };
        let sha256 = AlgorithmIdentifierOwned {
            oid: oid::SHA256,
            parameters: None,
        };
        let spki = key.public_key_der();
        assert!(verify_signature(&spki, &bare, None, b"m", &sig).is_err());
        verify_signature(&spki, &bare, Some(&sha256), b"m", &sig).unwrap();
        // An RSA signature algorithm against an EC key is a mismatch, not a bad signature.
        let rsa = AlgorithmIdentifierOwned {
            oid: oid::SHA256_WITH_RSA,
            parameters: None,
        };
        assert!(matches!(
            verify_signature(&spki, &rsa, None, b"m", &sig),
            Err(PkiError::InvalidPublicKey(_))
        ));
    }
}
