//! The software sealer: a master key in a file, AES-256-GCM.

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::aead::{random, KeyRing, KEY_LEN, MAX_RING};
use crate::blob::hex;
use crate::keyfile::{corrupt, publish_new, read_existing, replace, Published};
use crate::{Backend, KeystoreError, KeystoreInfo, SealedBlob, Sealer};

/// First bytes of the key file, so that a wrong file is reported as such.
///
/// `MDMSKEY1` is followed by the one data key; `MDMSKEY2` (written only while a rotation is
/// under way) by a count byte and that many keys, the current one first.
const KEY_FILE_MAGIC: &[u8; 8] = b"MDMSKEY1";
const RING_FILE_MAGIC: &[u8; 8] = b"MDMSKEY2";
const KEY_FILE_MAX_LEN: usize = RING_FILE_MAGIC.len() + 1 + MAX_RING * KEY_LEN;

/// The key file's contents for `keys` (current first).
fn encode_key_file(keys: &[Zeroizing<[u8; KEY_LEN]>]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(KEY_FILE_MAX_LEN));
    if keys.len() == 1 {
        out.extend_from_slice(KEY_FILE_MAGIC);
    } else {
        out.extend_from_slice(RING_FILE_MAGIC);
        // At most MAX_RING keys: `begin_rotation` never adds one beyond it.
        out.push(u8::try_from(keys.len()).unwrap_or(u8::MAX));
    }
    for key in keys {
        out.extend_from_slice(&key[..]);
    }
    out
}

/// The keys in a key file, current first; `Err` holds the reason it is corrupt.
fn decode_key_file(contents: &[u8]) -> Result<Vec<Zeroizing<[u8; KEY_LEN]>>, String> {
    let (count, keys) = if let Some(rest) = contents.strip_prefix(&KEY_FILE_MAGIC[..]) {
        (1, rest)
    } else if let Some(rest) = contents.strip_prefix(&RING_FILE_MAGIC[..]) {
        let (count, keys) = rest.split_first().ok_or("it is truncated")?;
        (usize::from(*count), keys)
    } else {
        return Err("it does not start with the key file marker".to_owned());
    };
    if count == 0 || count > MAX_RING || keys.len() != count * KEY_LEN {
        return Err(format!(
            "it is {} bytes long, which does not fit {count} key(s)",
            contents.len()
        ));
    }
    Ok(keys
        .chunks_exact(KEY_LEN)
        .map(|chunk| {
            let mut key = Zeroizing::new([0u8; KEY_LEN]);
            key.copy_from_slice(chunk);
            key
        })
        .collect())
}

/// Software backend: a random 256-bit master key in a file, AES-256-GCM via aws-lc-rs.
///
/// WARNING: this is NOT hardware-backed. The key sits in a plain file (mode 0600): anyone who
/// can read the data directory (root, a backup, a copied disk image) can unseal every secret.
/// It protects against secrets leaking through database dumps, logs and exports that do not
/// include the key file, nothing more. Use the TPM backend where the hardware has one.
///
/// The key file is created with `O_EXCL` semantics (published by a hard link, so it either
/// exists complete or not at all, and two processes racing to create it end up with the same
/// key). An existing file that group or others may access is refused.
pub struct SoftSealer {
    path: PathBuf,
    key: KeyRing,
}

impl SoftSealer {
    /// Loads the master key from `path`, creating it (mode 0600) if the file does not exist.
    /// The parent directory must exist.
    pub fn open_or_create(path: &Path) -> Result<Self, KeystoreError> {
        if let Some(sealer) = Self::open_existing(path)? {
            return Ok(sealer);
        }
        Self::create(path)
    }

    /// The key file this sealer was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id recorded in every blob this sealer makes (derived from the key; reveals nothing
    /// about it). Shown in diagnostics to tell keys apart.
    pub fn key_id(&self) -> Vec<u8> {
        self.key.key_id()
    }

    /// A copy of the data key every blob of this keystore is encrypted under, FOR BACKUPS
    /// ONLY: it goes into an encrypted backup ([`BackupWriter`](crate::BackupWriter)) so that
    /// [`create_with_data_key`](Self::create_with_data_key) can install it on another machine.
    ///
    /// Whoever holds this key and the database can open every secret in it: never log it,
    /// store it unencrypted or send it anywhere but into a backup.
    pub fn export_data_key(&self) -> Zeroizing<[u8; KEY_LEN]> {
        self.key.export()
    }

    /// Writes a NEW key file at `path` holding `key` (a data key from
    /// [`export_data_key`](Self::export_data_key), restored from a backup), and returns the
    /// sealer over it: blobs sealed by the keystore the key came from open with it.
    ///
    /// Refuses, with [`KeystoreError::KeyFileExists`], when a file already exists at `path`
    /// (whatever it holds): it is left untouched. The file is created like
    /// [`open_or_create`](Self::open_or_create) creates one (mode 0600, complete or not at
    /// all); the parent directory must exist.
    pub fn create_with_data_key(
        path: &Path,
        key: Zeroizing<[u8; KEY_LEN]>,
    ) -> Result<Self, KeystoreError> {
        let contents = encode_key_file(std::slice::from_ref(&key));
        match publish_new(path, &contents)? {
            Published::Created => {}
            Published::AlreadyExisted => {
                return Err(KeystoreError::KeyFileExists {
                    path: path.to_owned(),
                })
            }
        }
        let sealer = Self::from_keys(path, key, Vec::new());
        tracing::warn!(
            path = %path.display(),
            key_id = %hex(&sealer.key_id()),
            "installed a software master key restored from a backup; it is NOT \
             hardware-backed: keep the data directory unreadable by others"
        );
        Ok(sealer)
    }

    fn from_keys(
        path: &Path,
        current: Zeroizing<[u8; KEY_LEN]>,
        previous: Vec<Zeroizing<[u8; KEY_LEN]>>,
    ) -> Self {
        Self {
            path: path.to_owned(),
            key: KeyRing::new(Backend::Software, current, previous),
        }
    }

    /// `Ok(None)` if there is no file at `path`.
    fn open_existing(path: &Path) -> Result<Option<Self>, KeystoreError> {
        let Some(contents) = read_existing(path, KEY_FILE_MAX_LEN as u64)? else {
            return Ok(None);
        };
        let mut keys = decode_key_file(&contents).map_err(|reason| corrupt(path, reason))?;
        let current = keys.remove(0);
        Ok(Some(Self::from_keys(path, current, keys)))
    }

    fn create(path: &Path) -> Result<Self, KeystoreError> {
        let key: Zeroizing<[u8; KEY_LEN]> = random("generate a master key")?;
        let contents = encode_key_file(std::slice::from_ref(&key));
        match publish_new(path, &contents)? {
            Published::Created => {}
            Published::AlreadyExisted => {
                return Self::open_existing(path)?
                    .ok_or_else(|| corrupt(path, "it appeared and vanished while being created"));
            }
        }
        let sealer = Self::from_keys(path, key, Vec::new());
        tracing::warn!(
            path = %path.display(),
            key_id = %hex(&sealer.key_id()),
            "created a new software master key; it is NOT hardware-backed: back it up, and \
             keep the data directory unreadable by others"
        );
        Ok(sealer)
    }
}

impl Sealer for SoftSealer {
    fn export_data_key(&self) -> Option<Zeroizing<[u8; 32]>> {
        Some(SoftSealer::export_data_key(self))
    }

    fn backend(&self) -> Backend {
        Backend::Software
    }

    fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<SealedBlob, KeystoreError> {
        self.key.seal(purpose, plaintext)
    }

    fn unseal(
        &self,
        purpose: &str,
        blob: &SealedBlob,
    ) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        self.key.unseal(purpose, blob)
    }

    fn describe(&self) -> KeystoreInfo {
        KeystoreInfo {
            key_id: Some(hex(&self.key_id())),
            previous_key_ids: self.key.previous_key_ids().iter().map(|k| hex(k)).collect(),
            key_file: Some(self.path.clone()),
            ..KeystoreInfo::bare(Backend::Software)
        }
    }

    fn begin_rotation(&self) -> Result<(), KeystoreError> {
        self.key.begin_rotation(&self.path, |keys| {
            replace(&self.path, &encode_key_file(keys))
        })
    }

    fn finish_rotation(&self) -> Result<(), KeystoreError> {
        self.key.finish_rotation(&self.path, |keys| {
            replace(&self.path, &encode_key_file(keys))
        })
    }

    fn reseal_blob(&self, blob: &[u8]) -> Result<Option<Vec<u8>>, KeystoreError> {
        self.key.reseal(blob)
    }
}

impl fmt::Debug for SoftSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftSealer")
            .field("path", &self.path)
            .field("key_id", &hex(&self.key.key_id()))
            .finish_non_exhaustive()
    }
}
