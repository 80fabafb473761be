//! Sealing small secrets (private keys, tokens) at rest, so they can be stored in the
//! database or on disk without being readable there.
//!
//! A [`Sealer`] turns a secret into a [`SealedBlob`] bound to a *purpose* (`"ca-key"`,
//! `"tls-key"`, ...): the purpose is authenticated data, so a blob sealed for one purpose
//! cannot be unsealed as another, and any modification is detected. Unsealed secrets come
//! back in [`Zeroizing`] buffers.
//!
//! Backends (both encrypt blobs with AES-256-GCM under a 256-bit data key; they differ in how
//! that key is kept at rest):
//! - [`TpmSealer`]: the data key is sealed by the TPM 2.0 (through `tss-esapi` and the
//!   system's libtss2, with the TCTI library loaded at run time), in a key file that is useless
//!   without that TPM. The appliance's backend.
//! - [`SoftSealer`]: the data key in a 0600 file. NOT hardware-backed: whoever can read the
//!   data directory can unseal everything. For development and tests.
//!
//! [`Sealer::describe`] says which keystore is in use ([`KeystoreInfo`]: backend, key id, key
//! file and, for a TPM, its manufacturer and firmware), for status pages and support.
//!
//! A blob records its backend and the id of its data key, so a blob of one backend is refused
//! by the other ([`KeystoreError::WrongBackend`]) and a blob from another key (another
//! appliance, a replaced key file) is reported as [`KeystoreError::WrongKey`].
//! `docs/design/keystore.md` explains the TPM design and its trade-offs.
//!
//! Backups: [`BackupWriter`] and [`BackupReader`] write and read passphrase-encrypted backup
//! files (Argon2id, AES-256-GCM in chunks, streamed) holding named entries, such as the
//! database file and the data key. A data key leaves a keystore through `export_data_key` and
//! enters a new key file (on another machine, under another TPM) through
//! `create_with_data_key`, so the database's blobs open there unchanged.
//!
//! Held keys ([`HeldKey`]): RSA keys the keystore uses for the caller (decrypt, sign) without
//! handing them out; on the TPM backend they are created inside the TPM.
//!
//! Rotation: [`Sealer::begin_rotation`], [`Sealer::reseal_blob`] and
//! [`Sealer::finish_rotation`] replace the data key while every blob stays readable; the key
//! file lists the old key until the caller has re-sealed every stored blob.
//!
//! Platform binding: [`TpmSealer::open_with_pcrs`] binds the TPM-sealed data key to PCR values
//! (TPM2_PolicyPCR); the recovery path when they change is the data key from a backup.
//!
//! What it cannot do yet: a signed PCR policy (PolicyAuthorize), so binding to PCRs that change
//! with updates is impractical; use an owner hierarchy that has a password; move blobs between
//! backends (blobs record theirs, so a data key from a TPM keystore serves a TPM keystore, not
//! a software one); check that key files are owned by the service user (only their mode is
//! checked). Unix only.

mod aead;
mod backup;
mod blob;
mod error;
mod info;
mod keyfile;
mod keys;
mod resident;
mod soft;
mod tpm;

use std::fmt;

pub use backup::{
    BackupEntry, BackupReader, BackupWriter, KdfParams, UnlockedBackup, BACKUP_FORMAT_VERSION,
    MIN_PASSPHRASE_CHARS,
};
pub use blob::{validate_purpose, SealedBlob, BLOB_VERSION};
pub use error::KeystoreError;
pub use info::{KeystoreInfo, TpmInfo};
pub use keys::{HeldKey, KeyResidence};
pub use soft::SoftSealer;
pub use tpm::{TpmSealer, DEFAULT_TCTI};
pub use zeroize::Zeroizing;

/// Length in bytes of a keystore's data key, as [`SoftSealer::export_data_key`] and
/// [`TpmSealer::export_data_key`] return it.
pub const DATA_KEY_LEN: usize = aead::KEY_LEN;

/// Which kind of key protects a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// [`SoftSealer`]: a key in a file.
    Software,
    /// [`TpmSealer`]: a key sealed by a TPM 2.0.
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

    /// What this keystore is, for status pages and support: backend, key id, key file and,
    /// for a TPM, which one. Gathered when the sealer was opened; costs no I/O. The default
    /// knows only the backend.
    fn describe(&self) -> KeystoreInfo {
        KeystoreInfo::bare(self.backend())
    }

    /// The data key every blob depends on, for an encrypted backup (`BackupWriter`) that a
    /// restore seals again on other hardware. `None` for a sealer that cannot hand it out.
    /// The default cannot.
    fn export_data_key(&self) -> Option<Zeroizing<[u8; 32]>> {
        None
    }

    /// Data-key rotation, step 1: makes a new data key the current one (new blobs are sealed
    /// under it) while the old one stays in the key file to open blobs not yet re-sealed.
    /// The key file is rewritten (atomically) before the new key seals anything. When a
    /// rotation is already under way (the key file lists older keys), nothing changes: the
    /// caller resumes it.
    ///
    /// Step 2 is the caller's: re-seal every stored blob with [`reseal_blob`](Self::reseal_blob).
    /// Step 3, [`finish_rotation`](Self::finish_rotation), removes the older keys from the key
    /// file. The default cannot rotate.
    fn begin_rotation(&self) -> Result<(), KeystoreError> {
        Err(KeystoreError::RotationUnsupported)
    }

    /// Data-key rotation, step 3: rewrites the key file with the current key only. Blobs still
    /// sealed under an older key will not open after the next start: call this only once every
    /// stored blob was re-sealed. This process keeps the older keys in memory until it ends.
    fn finish_rotation(&self) -> Result<(), KeystoreError> {
        Err(KeystoreError::RotationUnsupported)
    }

    /// Re-seals a stored blob (its bytes) under the current data key, keeping its purpose;
    /// `None` when it already is sealed under it.
    fn reseal_blob(&self, blob: &[u8]) -> Result<Option<Vec<u8>>, KeystoreError> {
        let _ = blob;
        Err(KeystoreError::RotationUnsupported)
    }

    /// Makes a new RSA-2048 key held by this keystore for `purpose` (see [`HeldKey`]). The
    /// default seals a software-generated key ([`KeyResidence::Sealed`]); the TPM backend
    /// creates it inside the TPM.
    fn create_rsa_key(&self, purpose: &str) -> Result<HeldKey, KeystoreError> {
        keys::create_sealed(self, purpose)
    }

    /// The public key (DER `SubjectPublicKeyInfo`) of a held key made for `purpose`.
    fn rsa_public_key(&self, purpose: &str, key_blob: &[u8]) -> Result<Vec<u8>, KeystoreError> {
        keys::sealed_public_key(self, purpose, key_blob)
    }

    /// Decrypts an RSAES-PKCS1-v1_5 block (a CMS key-transport `encryptedKey`) with a held
    /// key made for `purpose`. A bad block fails with [`KeystoreError::RsaDecryption`],
    /// which says nothing about why.
    fn rsa_decrypt(
        &self,
        purpose: &str,
        key_blob: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        keys::sealed_decrypt(self, purpose, key_blob, ciphertext)
    }

    /// Signs `message` (hashed here with SHA-256) with RSASSA-PKCS1-v1_5 using a held key made
    /// for `purpose`.
    fn rsa_sign_sha256(
        &self,
        purpose: &str,
        key_blob: &[u8],
        message: &[u8],
    ) -> Result<Vec<u8>, KeystoreError> {
        keys::sealed_sign(self, purpose, key_blob, message)
    }
}
