//! Private keys the keystore holds and uses on the caller's behalf ("held keys").
//!
//! A held key is an RSA-2048 key the caller never sees: it gets an opaque blob to store and
//! the public key, and asks the keystore to decrypt (RSAES-PKCS1-v1_5, the CMS key transport
//! of the ABM server token) or sign (RSASSA-PKCS1-v1_5 with SHA-256) with it. Where the key
//! lives depends on the backend and on when the key was made ([`KeyResidence`]):
//!
//! - [`KeyResidence::Tpm`]: created inside the TPM (`TpmSealer`), `fixedTPM | fixedParent`,
//!   so the private key never exists outside it. The blob is the TPM's own wrapping of the
//!   key under its storage key: useless without that TPM.
//! - [`KeyResidence::Sealed`]: a PKCS#8 key in an ordinary [`SealedBlob`], unsealed into
//!   zeroized memory for each operation. The software backend's keys, and keys a TPM
//!   keystore inherited from before it could hold keys.
//!
//! Both blob forms carry the purpose they were made for, and an operation asked for another
//! purpose is refused, as with sealed blobs.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{
    KeyPair as RsaKeyPair, KeySize, Pkcs1PrivateDecryptingKey, PrivateDecryptingKey,
};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use zeroize::Zeroizing;

use crate::{KeystoreError, SealedBlob, Sealer};

/// First bytes of a TPM-resident key blob (see the TPM backend). A sealed-and-loaded key is a
/// plain [`SealedBlob`] and starts with that format's own marker.
pub(crate) const RESIDENT_MAGIC: &[u8; 4] = b"MDRK";

/// A key the keystore made: the blob to store (as opaque bytes) and the public key.
#[derive(Clone, PartialEq, Eq)]
pub struct HeldKey {
    /// What to store and hand back to [`Sealer::rsa_decrypt`] / [`Sealer::rsa_sign_sha256`].
    /// Holds no usable key material outside this keystore.
    pub blob: Vec<u8>,
    /// The public key as a DER `SubjectPublicKeyInfo`.
    pub public_key_der: Vec<u8>,
    /// Where the private key lives.
    pub residence: KeyResidence,
}

impl std::fmt::Debug for HeldKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldKey")
            .field("residence", &self.residence)
            .field("blob_len", &self.blob.len())
            .finish_non_exhaustive()
    }
}

/// Where a held key's private half lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyResidence {
    /// Inside the TPM: it never leaves it in clear.
    Tpm,
    /// Sealed at rest by the data key, unsealed into memory for each use.
    Sealed,
}

impl KeyResidence {
    /// Which residence a stored blob has, from its marker alone (no key is touched).
    pub fn of_blob(blob: &[u8]) -> KeyResidence {
        if blob.starts_with(RESIDENT_MAGIC) {
            KeyResidence::Tpm
        } else {
            KeyResidence::Sealed
        }
    }

    /// `"tpm"` or `"sealed"`, as status pages show it.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyResidence::Tpm => "tpm",
            KeyResidence::Sealed => "sealed",
        }
    }
}

fn crypto(what: &'static str) -> impl FnOnce(aws_lc_rs::error::Unspecified) -> KeystoreError {
    move |_| KeystoreError::Crypto(what)
}

/// A new RSA-2048 key, sealed for `purpose` by `sealer`'s data key.
pub(crate) fn create_sealed<S: Sealer + ?Sized>(
    sealer: &S,
    purpose: &str,
) -> Result<HeldKey, KeystoreError> {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(crypto("generate an RSA key"))?;
    let pkcs8: Pkcs8V1Der<'static> = pair.as_der().map_err(crypto("encode an RSA key"))?;
    let pkcs8 = Zeroizing::new(pkcs8.as_ref().to_vec());
    let public: PublicKeyX509Der<'static> = pair
        .public_key()
        .as_der()
        .map_err(crypto("encode an RSA public key"))?;
    let blob = sealer.seal(purpose, &pkcs8)?;
    Ok(HeldKey {
        blob: blob.to_bytes(),
        public_key_der: public.as_ref().to_vec(),
        residence: KeyResidence::Sealed,
    })
}

/// The PKCS#8 key inside a sealed-and-loaded held key's blob.
fn open_sealed<S: Sealer + ?Sized>(
    sealer: &S,
    purpose: &str,
    blob: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    let blob = SealedBlob::from_bytes(blob)?;
    sealer.unseal(purpose, &blob)
}

fn key_pair(pkcs8: &[u8]) -> Result<RsaKeyPair, KeystoreError> {
    RsaKeyPair::from_pkcs8(pkcs8).map_err(|_| KeystoreError::CorruptBlob {
        reason: "the sealed key is not an RSA private key".to_owned(),
    })
}

/// [`Sealer::rsa_public_key`] for a sealed-and-loaded key.
pub(crate) fn sealed_public_key<S: Sealer + ?Sized>(
    sealer: &S,
    purpose: &str,
    blob: &[u8],
) -> Result<Vec<u8>, KeystoreError> {
    let pkcs8 = open_sealed(sealer, purpose, blob)?;
    let public: PublicKeyX509Der<'static> = key_pair(&pkcs8)?
        .public_key()
        .as_der()
        .map_err(crypto("encode an RSA public key"))?;
    Ok(public.as_ref().to_vec())
}

/// [`Sealer::rsa_decrypt`] for a sealed-and-loaded key.
pub(crate) fn sealed_decrypt<S: Sealer + ?Sized>(
    sealer: &S,
    purpose: &str,
    blob: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    let pkcs8 = open_sealed(sealer, purpose, blob)?;
    let key = PrivateDecryptingKey::from_pkcs8(&pkcs8).map_err(|_| KeystoreError::CorruptBlob {
        reason: "the sealed key is not an RSA private key".to_owned(),
    })?;
    let key = Pkcs1PrivateDecryptingKey::new(key).map_err(crypto("load an RSA key"))?;
    let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
    let len = key
        .decrypt(ciphertext, &mut out)
        .map_err(|_| KeystoreError::RsaDecryption)?
        .len();
    out.truncate(len);
    Ok(out)
}

/// [`Sealer::rsa_sign_sha256`] for a sealed-and-loaded key.
pub(crate) fn sealed_sign<S: Sealer + ?Sized>(
    sealer: &S,
    purpose: &str,
    blob: &[u8],
    message: &[u8],
) -> Result<Vec<u8>, KeystoreError> {
    let pkcs8 = open_sealed(sealer, purpose, blob)?;
    let pair = key_pair(&pkcs8)?;
    let mut signature = vec![0u8; pair.public_modulus_len()];
    pair.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        message,
        &mut signature,
    )
    .map_err(crypto("sign"))?;
    Ok(signature)
}
