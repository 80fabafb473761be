//! Sealing small secrets (private keys, tokens) at rest, so they can be stored in the
//! database or on disk without being readable there.
//!
//! A [`Sealer`] turns a secret into a [`SealedBlob`] bound to a *purpose* (`"ca-key"`,
//! `"tls-key"`, ...): the purpose is authenticated data, so a blob sealed for one purpose
//! cannot be unsealed as another, and any modification is detected. Unsealed secrets come
//! back in [`Zeroizing`] buffers.
//!
//! Backends:
//! - [`SoftSealer`]: a random master key in a 0600 file, AES-256-GCM. NOT hardware-backed:
//!   whoever can read the data directory can unseal everything.
//! - `TpmSealer` (not written yet): the blob format is shaped for it. Its [`Backend::Tpm`]
//!   blobs will carry, as the key id, the name of the TPM storage key that sealed them (so
//!   a replaced TPM or cleared hierarchy is reported as [`KeystoreError::WrongKey`]), and
//!   either the AES-GCM nonce of a TPM-wrapped data key or no nonce at all with the
//!   marshalled TPM2B_PUBLIC/TPM2B_PRIVATE pair as ciphertext. Variable-length key id and
//!   nonce fields, and the version byte, leave room for either.
//!
//! What it cannot do yet: TPM sealing; re-sealing blobs under a new master key (key
//! rotation); checking that the key file is owned by the service user (only its mode is
//! checked). Unix only.

mod blob;
mod error;
mod soft;

use std::fmt;

pub use blob::{validate_purpose, SealedBlob, BLOB_VERSION};
pub use error::KeystoreError;
pub use soft::SoftSealer;
pub use zeroize::Zeroizing;

/// Which kind of key protects a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// [`SoftSealer`]: a key in a file.
    Software,
    /// A TPM 2.0 (backend not written yet).
    Tpm,
}

impl Backend {
    /// The id byte stored in blobs.
    pub(crate) fn id(self) -> u8 {
        match self {
            Self::Software => 1,
            Self::Tpm => 2,
        }
    }

    pub(crate) fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Self::Software),
            2 => Some(Self::Tpm),
            _ => None,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Software => "software",
            Self::Tpm => "TPM",
        })
    }
}

/// Seals small secrets (private keys, tokens) so they can be stored on disk or in the
/// database.
pub trait Sealer: Send + Sync + 'static {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Encrypts and authenticates `plaintext` for `purpose` (see [`validate_purpose`]).
    fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<SealedBlob, KeystoreError>;

    /// Checks and decrypts a blob sealed for `purpose` by this sealer's key.
    fn unseal(&self, purpose: &str, blob: &SealedBlob)
        -> Result<Zeroizing<Vec<u8>>, KeystoreError>;
}
