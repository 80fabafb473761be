//! The blob encryption both backends share: AES-256-GCM under a 256-bit data key.
//!
//! The backends differ only in how that key is kept at rest (a plain file, or sealed by a
//! TPM); once it is in memory, sealing and unsealing a blob is the same operation, so a
//! blob's security rests on one reviewed piece of code.

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM};
use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand;
use zeroize::Zeroizing;

use std::path::Path;
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::blob::{associated_data, hex, validate_purpose, BLOB_VERSION};
use crate::{Backend, KeystoreError, SealedBlob};

/// The most data keys a key file holds: the current one and, while a rotation is under way,
/// the one before it (and one more should a rotation be started again before the last one
/// finished). Also keeps a TPM key file's sealed data within the 128 bytes a TPM accepts.
pub(crate) const MAX_RING: usize = 3;

/// Length of a data key (AES-256).
pub(crate) const KEY_LEN: usize = 32;
/// Length of the key id recorded in blobs.
const KEY_ID_LEN: usize = 8;

/// Fills a zeroized buffer from the system random generator.
pub(crate) fn random<const N: usize>(
    what: &'static str,
) -> Result<Zeroizing<[u8; N]>, KeystoreError> {
    let mut out = Zeroizing::new([0u8; N]);
    rand::fill(&mut out[..]).map_err(|_| KeystoreError::Crypto(what))?;
    Ok(out)
}

/// Domain separation for the key id, per backend. The software context is the one the first
/// release used; changing it would make every existing blob report [`KeystoreError::WrongKey`].
fn key_id_context(backend: Backend) -> &'static [u8] {
    match backend {
        Backend::Software => b"mdm-keystore soft key id v1\0",
        Backend::Tpm => b"mdm-keystore tpm key id v1\0",
    }
}

/// The id of a data key: the first 8 bytes of SHA-256(context || key). Reveals nothing
/// useful about the key, and tells keys (and backends) apart in blobs and diagnostics.
pub(crate) fn key_id(backend: Backend, key: &[u8; KEY_LEN]) -> [u8; KEY_ID_LEN] {
    let context = key_id_context(backend);
    let mut input = Zeroizing::new(Vec::with_capacity(context.len() + KEY_LEN));
    input.extend_from_slice(context);
    input.extend_from_slice(key);
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest(&SHA256, &input).as_ref()[..KEY_ID_LEN]);
    id
}

/// A data key held in memory for one backend.
pub(crate) struct DataKey {
    backend: Backend,
    key: Zeroizing<[u8; KEY_LEN]>,
    key_id: [u8; KEY_ID_LEN],
}

impl DataKey {
    pub(crate) fn new(backend: Backend, key: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let key_id = key_id(backend, &key);
        Self {
            backend,
            key,
            key_id,
        }
    }

    #[cfg(test)]
    pub(crate) fn key_id(&self) -> &[u8] {
        &self.key_id
    }

    /// A copy of the key itself, for an encrypted backup.
    pub(crate) fn export(&self) -> Zeroizing<[u8; KEY_LEN]> {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        out.copy_from_slice(&self.key[..]);
        out
    }

    fn aead_key(&self) -> Result<RandomizedNonceKey, KeystoreError> {
        // Built per operation so that the only long-lived copy of the key is the zeroized one.
        RandomizedNonceKey::new(&AES_256_GCM, &self.key[..])
            .map_err(|_| KeystoreError::Crypto("load the AES-256-GCM key"))
    }

    pub(crate) fn seal(
        &self,
        purpose: &str,
        plaintext: &[u8],
    ) -> Result<SealedBlob, KeystoreError> {
        validate_purpose(purpose)?;
        let aad = associated_data(BLOB_VERSION, self.backend, purpose, &self.key_id);
        // Sized up front: a reallocation while appending the tag would leave a plaintext copy
        // in freed memory.
        let mut in_out =
            Zeroizing::new(Vec::with_capacity(plaintext.len() + AES_256_GCM.tag_len()));
        in_out.extend_from_slice(plaintext);
        let nonce = self
            .aead_key()?
            .seal_in_place_append_tag(Aad::from(&aad[..]), &mut *in_out)
            .map_err(|_| KeystoreError::Crypto("encrypt"))?;
        let ciphertext = std::mem::take(&mut *in_out);
        SealedBlob::new(
            self.backend,
            purpose,
            self.key_id.to_vec(),
            nonce.as_ref().to_vec(),
            ciphertext,
        )
    }

    pub(crate) fn unseal(
        &self,
        purpose: &str,
        blob: &SealedBlob,
    ) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        validate_purpose(purpose)?;
        if blob.backend() != self.backend {
            return Err(KeystoreError::WrongBackend {
                blob: blob.backend(),
                sealer: self.backend,
            });
        }
        if blob.purpose() != purpose {
            return Err(KeystoreError::WrongPurpose {
                expected: purpose.to_owned(),
                found: blob.purpose().to_owned(),
            });
        }
        if blob.key_id() != self.key_id {
            return Err(KeystoreError::WrongKey {
                blob_key_id: hex(blob.key_id()),
                keystore_key_id: hex(&self.key_id),
            });
        }
        let nonce = Nonce::try_assume_unique_for_key(blob.nonce()).map_err(|_| {
            KeystoreError::CorruptBlob {
                reason: format!("nonce of {} bytes, expected 12", blob.nonce().len()),
            }
        })?;
        // The associated data comes from the caller's purpose and this key's id, so an edited
        // header cannot make the blob open under another purpose.
        let aad = associated_data(blob.version(), self.backend, purpose, &self.key_id);
        let mut buf = Zeroizing::new(blob.ciphertext().to_vec());
        let len = self
            .aead_key()?
            .open_in_place(nonce, Aad::from(&aad[..]), &mut buf[..])
            .map_err(|_| KeystoreError::Unauthentic {
                purpose: purpose.to_owned(),
            })?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// A keystore's data keys: the current one, which seals, and the older ones, which only
/// unseal. See [`Sealer::begin_rotation`](crate::Sealer::begin_rotation).
///
/// `previous` are the keys still in the key file (a rotation is under way: some blobs may
/// still be sealed under them); `retired` are keys a finished rotation removed from the key
/// file. Retired keys stay in memory until the process ends so that a blob a request sealed
/// just before the rotation, or a record some cache read before it, still opens: they are
/// gone from disk, which is what rotation is for.
pub(crate) struct KeyRing {
    backend: Backend,
    keys: RwLock<Ring>,
    /// Serializes rotations (key file rewrites).
    rotation: Mutex<()>,
}

struct Ring {
    current: DataKey,
    previous: Vec<DataKey>,
    retired: Vec<DataKey>,
}

impl Ring {
    /// The key with this id, or the current one (which then reports `WrongKey`).
    fn key_for(&self, key_id: &[u8]) -> &DataKey {
        std::iter::once(&self.current)
            .chain(self.previous.iter())
            .chain(self.retired.iter())
            .find(|k| k.key_id[..] == *key_id)
            .unwrap_or(&self.current)
    }
}

impl KeyRing {
    /// A ring with `current` sealing and `previous` (as a key file lists them after the
    /// current key) only unsealing.
    pub(crate) fn new(
        backend: Backend,
        current: Zeroizing<[u8; KEY_LEN]>,
        previous: Vec<Zeroizing<[u8; KEY_LEN]>>,
    ) -> Self {
        Self {
            backend,
            keys: RwLock::new(Ring {
                current: DataKey::new(backend, current),
                previous: previous
                    .into_iter()
                    .map(|k| DataKey::new(backend, k))
                    .collect(),
                retired: Vec::new(),
            }),
            rotation: Mutex::new(()),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Ring> {
        // The ring is replaced whole under the lock; a panic elsewhere cannot leave it torn.
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Ring> {
        self.keys.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current key's id.
    pub(crate) fn key_id(&self) -> Vec<u8> {
        self.read().current.key_id.to_vec()
    }

    /// The ids of the previous keys still in the key file (a rotation is under way).
    pub(crate) fn previous_key_ids(&self) -> Vec<Vec<u8>> {
        self.read()
            .previous
            .iter()
            .map(|k| k.key_id.to_vec())
            .collect()
    }

    /// The current key, for a backup.
    pub(crate) fn export(&self) -> Zeroizing<[u8; KEY_LEN]> {
        self.read().current.export()
    }

    /// The keys as the key file lists them: current first, then previous.
    pub(crate) fn file_keys(&self) -> Vec<Zeroizing<[u8; KEY_LEN]>> {
        let ring = self.read();
        std::iter::once(&ring.current)
            .chain(ring.previous.iter())
            .map(DataKey::export)
            .collect()
    }

    /// [`Sealer::begin_rotation`](crate::Sealer::begin_rotation) for a backend whose key file
    /// (at `path`, for the log) `write` replaces with the keys it is given, current first. The
    /// new key seals nothing before `write` succeeded; a rotation under way is left as it is.
    pub(crate) fn begin_rotation(
        &self,
        path: &Path,
        write: impl FnOnce(&[Zeroizing<[u8; KEY_LEN]>]) -> Result<(), KeystoreError>,
    ) -> Result<(), KeystoreError> {
        let _one = self.rotation.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.previous_key_ids().is_empty() {
            return Ok(());
        }
        let new: Zeroizing<[u8; KEY_LEN]> = random("generate a master key")?;
        let mut keys = vec![Zeroizing::new(*new)];
        keys.extend(self.file_keys());
        write(&keys)?;
        {
            let mut ring = self.write();
            let old = std::mem::replace(&mut ring.current, DataKey::new(self.backend, new));
            ring.previous.insert(0, old);
        }
        tracing::warn!(
            path = %path.display(),
            key_id = %hex(&self.key_id()),
            "data key rotation begun: new secrets are sealed under a new key"
        );
        Ok(())
    }

    /// [`Sealer::finish_rotation`](crate::Sealer::finish_rotation): `write` replaces the key
    /// file with the current key only; the previous keys are then retired (kept in memory).
    pub(crate) fn finish_rotation(
        &self,
        path: &Path,
        write: impl FnOnce(&[Zeroizing<[u8; KEY_LEN]>]) -> Result<(), KeystoreError>,
    ) -> Result<(), KeystoreError> {
        let _one = self.rotation.lock().unwrap_or_else(PoisonError::into_inner);
        let keys = self.file_keys();
        let Some(current) = keys.first() else {
            return Ok(());
        };
        if keys.len() > 1 {
            write(std::slice::from_ref(current))?;
            {
                let mut ring = self.write();
                let previous = std::mem::take(&mut ring.previous);
                ring.retired.extend(previous);
            }
            tracing::warn!(
                path = %path.display(),
                key_id = %hex(&self.key_id()),
                "data key rotation finished: older keys removed from the key file"
            );
        }
        Ok(())
    }

    pub(crate) fn seal(
        &self,
        purpose: &str,
        plaintext: &[u8],
    ) -> Result<SealedBlob, KeystoreError> {
        self.read().current.seal(purpose, plaintext)
    }

    pub(crate) fn unseal(
        &self,
        purpose: &str,
        blob: &SealedBlob,
    ) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        let ring = self.read();
        let key = ring.key_for(blob.key_id());
        key.unseal(purpose, blob)
    }

    /// Re-seals a blob under the current key; `None` when it already is. The blob is opened
    /// with the purpose it records (it is not exposed to the caller).
    pub(crate) fn reseal(&self, blob: &[u8]) -> Result<Option<Vec<u8>>, KeystoreError> {
        let blob = SealedBlob::from_bytes(blob)?;
        let ring = self.read();
        if blob.key_id() == ring.current.key_id {
            return Ok(None);
        }
        let key = ring.key_for(blob.key_id());
        let plaintext = key.unseal(blob.purpose(), &blob)?;
        Ok(Some(
            ring.current.seal(blob.purpose(), &plaintext)?.to_bytes(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_depend_on_key_and_backend() {
        let key = [7u8; KEY_LEN];
        let soft = key_id(Backend::Software, &key);
        assert_ne!(soft, key_id(Backend::Tpm, &key));
        assert_ne!(soft, key_id(Backend::Software, &[8u8; KEY_LEN]));
        // Pinned: blobs already stored carry ids computed this way.
        let mut input = b"mdm-keystore soft key id v1\0".to_vec();
        input.extend_from_slice(&key);
        assert_eq!(soft[..], digest(&SHA256, &input).as_ref()[..8]);
    }

    #[test]
    fn one_backend_cannot_open_the_others_blob_even_with_the_same_key() {
        let soft = DataKey::new(Backend::Software, Zeroizing::new([3u8; KEY_LEN]));
        let tpm = DataKey::new(Backend::Tpm, Zeroizing::new([3u8; KEY_LEN]));
        let blob = soft.seal("ca-key", b"secret").unwrap();
        assert!(matches!(
            tpm.unseal("ca-key", &blob),
            Err(KeystoreError::WrongBackend { .. })
        ));
        // Relabelled as a TPM blob with the TPM key's id, the associated data no longer
        // matches what was authenticated.
        let relabelled = SealedBlob::new(
            Backend::Tpm,
            "ca-key",
            tpm.key_id().to_vec(),
            blob.nonce().to_vec(),
            blob.ciphertext().to_vec(),
        )
        .unwrap();
        assert!(matches!(
            tpm.unseal("ca-key", &relabelled),
            Err(KeystoreError::Unauthentic { .. })
        ));
        assert_eq!(&soft.unseal("ca-key", &blob).unwrap()[..], b"secret");
    }
}
