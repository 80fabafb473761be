//! Private keys (RSA-2048 and ECDSA P-256) and signature verification over
//! `SubjectPublicKeyInfo`, all backed by aws-lc-rs.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeySize, Pkcs1PrivateDecryptingKey, PrivateDecryptingKey};
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, KeyPair as _, RsaKeyPair, UnparsedPublicKey, VerificationAlgorithm,
};
use const_oid::ObjectIdentifier;
use der::asn1::BitString;
use der::{Any, Decode, Encode};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use zeroize::Zeroizing;

use crate::error::CryptoError;
use crate::oids;

/// The key algorithms the simulator can generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// RSA with a 2048-bit modulus: what SCEP payloads ask for (`Key Type` RSA,
    /// `Keysize` 2048) and what Apple's device CAs have historically issued.
    Rsa2048,
    /// ECDSA over NIST P-256, for exercising a server's elliptic-curve paths.
    EcdsaP256,
}

/// Hash functions that may appear in signatures the simulator verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestAlgorithm {
    /// SHA-1: only accepted when verifying, never produced.
    Sha1,
    /// SHA-256: the only hash the simulator signs with.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl DigestAlgorithm {
    /// Maps a digest-algorithm OID (`id-sha256`, ...) to the hash.
    pub fn from_oid(oid: &ObjectIdentifier) -> Result<Self, CryptoError> {
        match *oid {
            oids::SHA1 => Ok(Self::Sha1),
            oids::SHA256 => Ok(Self::Sha256),
            oids::SHA384 => Ok(Self::Sha384),
            oids::SHA512 => Ok(Self::Sha512),
            other => Err(CryptoError::UnsupportedAlgorithm(other)),
        }
    }

    /// The digest-algorithm OID.
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            Self::Sha1 => oids::SHA1,
            Self::Sha256 => oids::SHA256,
            Self::Sha384 => oids::SHA384,
            Self::Sha512 => oids::SHA512,
        }
    }

    /// Hashes `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            Self::Sha1 => &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &aws_lc_rs::digest::SHA256,
            Self::Sha384 => &aws_lc_rs::digest::SHA384,
            Self::Sha512 => &aws_lc_rs::digest::SHA512,
        };
        aws_lc_rs::digest::digest(alg, data).as_ref().to_vec()
    }

    /// The algorithm identifier as written in CMS `digestAlgorithms`: parameters absent,
    /// as RFC 5754 recommends.
    pub fn algorithm_identifier(self) -> AlgorithmIdentifierOwned {
        AlgorithmIdentifierOwned {
            oid: self.oid(),
            parameters: None,
        }
    }
}

enum KeyInner {
    Rsa {
        pair: RsaKeyPair,
        decrypt: PrivateDecryptingKey,
        pkcs8: Zeroizing<Vec<u8>>,
    },
    Ec {
        pair: EcdsaKeyPair,
        pkcs8: Zeroizing<Vec<u8>>,
    },
}

/// A private key the simulator signs (and, for RSA, decrypts) with.
///
/// Cloning is cheap: clones share the key material. Generating an RSA key costs tens of
/// milliseconds, so benchmarks can generate a pool once and inject clones.
#[derive(Clone)]
pub struct PrivateKey {
    inner: Arc<KeyInner>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// Generates a fresh key.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, CryptoError> {
        match algorithm {
            KeyAlgorithm::Rsa2048 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048)
                    .map_err(|_| CryptoError::KeyGeneration)?;
                let pkcs8 = pair
                    .as_der()
                    .map_err(|_| CryptoError::KeyGeneration)?
                    .as_ref()
                    .to_vec();
                Self::from_pkcs8_der(&pkcs8)
            }
            KeyAlgorithm::EcdsaP256 => {
                let pair = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING)
                    .map_err(|_| CryptoError::KeyGeneration)?;
                let pkcs8 = pair
                    .to_pkcs8v1()
                    .map_err(|_| CryptoError::KeyGeneration)?
                    .as_ref()
                    .to_vec();
                Self::from_pkcs8_der(&pkcs8)
            }
        }
    }

    /// Generates an RSA-2048 key (the SCEP default).
    pub fn generate_rsa2048() -> Result<Self, CryptoError> {
        Self::generate(KeyAlgorithm::Rsa2048)
    }

    /// Loads an unencrypted PKCS #8 key (RSA or P-256).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CryptoError> {
        if let Ok(pair) = RsaKeyPair::from_pkcs8(der) {
            let decrypt = PrivateDecryptingKey::from_pkcs8(der)
                .map_err(|e| CryptoError::KeyRejected(e.to_string()))?;
            return Ok(Self {
                inner: Arc::new(KeyInner::Rsa {
                    pair,
                    decrypt,
                    pkcs8: Zeroizing::new(der.to_vec()),
                }),
            });
        }
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, der)
            .map_err(|e| CryptoError::KeyRejected(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(KeyInner::Ec {
                pair,
                pkcs8: Zeroizing::new(der.to_vec()),
            }),
        })
    }

    /// Loads a PEM `PRIVATE KEY` (PKCS #8) block.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CryptoError> {
        let (label, der) = der::pem::decode_vec(pem.as_bytes()).map_err(der::Error::from)?;
        if label != "PRIVATE KEY" {
            return Err(CryptoError::UnexpectedPemLabel(label.to_owned()));
        }
        let der = Zeroizing::new(der);
        Self::from_pkcs8_der(&der)
    }

    /// The PKCS #8 DER encoding.
    pub fn pkcs8_der(&self) -> &[u8] {
        match &*self.inner {
            KeyInner::Rsa { pkcs8, .. } | KeyInner::Ec { pkcs8, .. } => pkcs8,
        }
    }

    /// The PKCS #8 PEM encoding.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, CryptoError> {
        let pem =
            der::pem::encode_string("PRIVATE KEY", der::pem::LineEnding::LF, self.pkcs8_der())
                .map_err(der::Error::from)?;
        Ok(Zeroizing::new(pem))
    }

    /// Which algorithm this key is for.
    pub fn algorithm(&self) -> KeyAlgorithm {
        match &*self.inner {
            KeyInner::Rsa { .. } => KeyAlgorithm::Rsa2048,
            KeyInner::Ec { .. } => KeyAlgorithm::EcdsaP256,
        }
    }

    /// The public half as an X.509 `SubjectPublicKeyInfo`.
    pub fn public_key_info(&self) -> Result<SubjectPublicKeyInfoOwned, CryptoError> {
        match &*self.inner {
            KeyInner::Rsa { pair, .. } => Ok(SubjectPublicKeyInfoOwned {
                algorithm: AlgorithmIdentifierOwned {
                    oid: oids::RSA_ENCRYPTION,
                    parameters: Some(Any::null()),
                },
                subject_public_key: BitString::from_bytes(pair.public_key().as_ref())?,
            }),
            KeyInner::Ec { pair, .. } => Ok(SubjectPublicKeyInfoOwned {
                algorithm: AlgorithmIdentifierOwned {
                    oid: oids::EC_PUBLIC_KEY,
                    parameters: Some(Any::encode_from(&oids::SECP256R1)?),
                },
                subject_public_key: BitString::from_bytes(pair.public_key().as_ref())?,
            }),
        }
    }

    /// DER of [`Self::public_key_info`].
    pub fn public_key_info_der(&self) -> Result<Vec<u8>, CryptoError> {
        Ok(self.public_key_info()?.to_der()?)
    }

    /// Signs `message` with SHA-256 (PKCS #1 v1.5 for RSA, ASN.1 DER ECDSA for P-256).
    pub fn sign_sha256(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        match &*self.inner {
            KeyInner::Rsa { pair, .. } => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .map_err(|_| CryptoError::Signing)?;
                Ok(sig)
            }
            KeyInner::Ec { pair, .. } => Ok(pair
                .sign(&rng, message)
                .map_err(|_| CryptoError::Signing)?
                .as_ref()
                .to_vec()),
        }
    }

    /// Signature algorithm identifier for X.509 certificates and PKCS #10 requests:
    /// `sha256WithRSAEncryption` (NULL parameters) or `ecdsa-with-SHA256` (absent).
    pub fn x509_signature_algorithm(&self) -> AlgorithmIdentifierOwned {
        match &*self.inner {
            KeyInner::Rsa { .. } => AlgorithmIdentifierOwned {
                oid: oids::SHA256_WITH_RSA,
                parameters: Some(Any::null()),
            },
            KeyInner::Ec { .. } => AlgorithmIdentifierOwned {
                oid: oids::ECDSA_WITH_SHA256,
                parameters: None,
            },
        }
    }

    /// Signature algorithm identifier for a CMS `SignerInfo`. For RSA this is plain
    /// `rsaEncryption`, which is what OpenSSL and Apple's own CMS encoder write (the hash
    /// comes from `digestAlgorithm`); servers must accept it.
    pub fn cms_signature_algorithm(&self) -> AlgorithmIdentifierOwned {
        match &*self.inner {
            KeyInner::Rsa { .. } => AlgorithmIdentifierOwned {
                oid: oids::RSA_ENCRYPTION,
                parameters: Some(Any::null()),
            },
            KeyInner::Ec { .. } => AlgorithmIdentifierOwned {
                oid: oids::ECDSA_WITH_SHA256,
                parameters: None,
            },
        }
    }

    /// Decrypts an RSA PKCS #1 v1.5 ciphertext (CMS key transport).
    pub fn rsa_decrypt_pkcs1(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let KeyInner::Rsa { decrypt, .. } = &*self.inner else {
            return Err(CryptoError::NotAnRsaKey);
        };
        let key =
            Pkcs1PrivateDecryptingKey::new(decrypt.clone()).map_err(|_| CryptoError::Decryption)?;
        let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
        let len = key
            .decrypt(ciphertext, &mut out)
            .map_err(|_| CryptoError::Decryption)?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

/// Encrypts `plaintext` to the RSA key in `spki` with PKCS #1 v1.5 padding.
pub fn rsa_encrypt_pkcs1(
    spki: &SubjectPublicKeyInfoOwned,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if spki.algorithm.oid != oids::RSA_ENCRYPTION {
        return Err(CryptoError::NotAnRsaKey);
    }
    let public = aws_lc_rs::rsa::PublicEncryptingKey::from_der(&spki.to_der()?)
        .map_err(|e| CryptoError::KeyRejected(e.to_string()))?;
    let key = aws_lc_rs::rsa::Pkcs1PublicEncryptingKey::new(public)
        .map_err(|_| CryptoError::Encryption)?;
    let mut out = vec![0u8; key.ciphertext_size()];
    let len = key
        .encrypt(plaintext, &mut out)
        .map_err(|_| CryptoError::Encryption)?
        .len();
    out.truncate(len);
    Ok(out)
}

/// Verifies `signature` over `message` made by the key in `spki` with hash `digest`.
pub fn verify_signature(
    spki: &SubjectPublicKeyInfoOwned,
    digest: DigestAlgorithm,
    message: &[u8],
    signature: &[u8],
) -> Result<(), CryptoError> {
    let key_bytes = spki.subject_public_key.raw_bytes();
    let alg: &'static dyn VerificationAlgorithm = match spki.algorithm.oid {
        oids::RSA_ENCRYPTION => match digest {
            DigestAlgorithm::Sha1 => &signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
            DigestAlgorithm::Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            DigestAlgorithm::Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            DigestAlgorithm::Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        },
        oids::EC_PUBLIC_KEY => {
            let curve: ObjectIdentifier = spki
                .algorithm
                .parameters
                .as_ref()
                .ok_or(CryptoError::UnsupportedKey("EC key without a named curve"))?
                .decode_as()?;
            match (curve, digest) {
                (oids::SECP256R1, DigestAlgorithm::Sha256) => &signature::ECDSA_P256_SHA256_ASN1,
                (oids::SECP256R1, DigestAlgorithm::Sha384) => &signature::ECDSA_P256_SHA384_ASN1,
                (oids::SECP384R1, DigestAlgorithm::Sha256) => &signature::ECDSA_P384_SHA256_ASN1,
                (oids::SECP384R1, DigestAlgorithm::Sha384) => &signature::ECDSA_P384_SHA384_ASN1,
                _ => return Err(CryptoError::UnsupportedKey("EC curve/hash combination")),
            }
        }
        other => return Err(CryptoError::UnsupportedAlgorithm(other)),
    };
    UnparsedPublicKey::new(alg, key_bytes)
        .verify(message, signature)
        .map_err(|_| CryptoError::BadSignature)
}

/// Works out which hash a signature algorithm identifier implies. `rsaEncryption` says
/// nothing about the hash, so the caller passes the one it learnt elsewhere (CMS
/// `digestAlgorithm`).
pub fn digest_for_signature_algorithm(
    alg: &ObjectIdentifier,
    fallback: Option<DigestAlgorithm>,
) -> Result<DigestAlgorithm, CryptoError> {
    match *alg {
        oids::SHA1_WITH_RSA => Ok(DigestAlgorithm::Sha1),
        oids::SHA256_WITH_RSA | oids::ECDSA_WITH_SHA256 => Ok(DigestAlgorithm::Sha256),
        oids::SHA384_WITH_RSA | oids::ECDSA_WITH_SHA384 => Ok(DigestAlgorithm::Sha384),
        oids::SHA512_WITH_RSA => Ok(DigestAlgorithm::Sha512),
        oids::RSA_ENCRYPTION | oids::EC_PUBLIC_KEY => {
            fallback.ok_or(CryptoError::UnsupportedAlgorithm(*alg))
        }
        other => Err(CryptoError::UnsupportedAlgorithm(other)),
    }
}

/// Parses a DER `SubjectPublicKeyInfo`.
pub fn parse_spki(der: &[u8]) -> Result<SubjectPublicKeyInfoOwned, CryptoError> {
    Ok(SubjectPublicKeyInfoOwned::from_der(der)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_sign_verify_and_pkcs1_round_trip() {
        let key = PrivateKey::generate_rsa2048().unwrap();
        let spki = key.public_key_info().unwrap();
        let sig = key.sign_sha256(b"hello").unwrap();
        verify_signature(&spki, DigestAlgorithm::Sha256, b"hello", &sig).unwrap();
        assert!(verify_signature(&spki, DigestAlgorithm::Sha256, b"hellO", &sig).is_err());

        let ct = rsa_encrypt_pkcs1(&spki, b"content key").unwrap();
        assert_eq!(&key.rsa_decrypt_pkcs1(&ct).unwrap()[..], b"content key");
    }

    #[test]
    fn ec_sign_verify_and_pem_round_trip() {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let pem = key.to_pkcs8_pem().unwrap();
        let again = PrivateKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(again.algorithm(), KeyAlgorithm::EcdsaP256);
        let sig = again.sign_sha256(b"m").unwrap();
        verify_signature(
            &key.public_key_info().unwrap(),
            DigestAlgorithm::Sha256,
            b"m",
            &sig,
        )
        .unwrap();
        assert!(key.rsa_decrypt_pkcs1(&[0u8; 256]).is_err());
    }
}
