//! The software sealer: a master key in a file, AES-256-GCM.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM};
use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand;
use zeroize::Zeroizing;

use crate::blob::{associated_data, hex, validate_purpose, BLOB_VERSION};
use crate::{Backend, KeystoreError, SealedBlob, Sealer};

/// First bytes of the key file, so that a wrong file is reported as such.
const KEY_FILE_MAGIC: &[u8; 8] = b"MDMSKEY1";
const KEY_LEN: usize = 32;
const KEY_FILE_LEN: usize = KEY_FILE_MAGIC.len() + KEY_LEN;
/// Domain separation for the key id, which is derived from the key.
const KEY_ID_CONTEXT: &[u8] = b"mdm-keystore soft key id v1\0";
const KEY_ID_LEN: usize = 8;

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
    key: Zeroizing<[u8; KEY_LEN]>,
    key_id: [u8; KEY_ID_LEN],
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> KeystoreError + 'a {
    move |source| KeystoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn random<const N: usize>(what: &'static str) -> Result<Zeroizing<[u8; N]>, KeystoreError> {
    let mut out = Zeroizing::new([0u8; N]);
    rand::fill(&mut out[..]).map_err(|_| KeystoreError::Crypto(what))?;
    Ok(out)
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
    pub fn key_id(&self) -> &[u8] {
        &self.key_id
    }

    fn from_key(path: &Path, key: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let mut input = Zeroizing::new(Vec::with_capacity(KEY_ID_CONTEXT.len() + KEY_LEN));
        input.extend_from_slice(KEY_ID_CONTEXT);
        input.extend_from_slice(&key[..]);
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&digest(&SHA256, &input).as_ref()[..KEY_ID_LEN]);
        Self {
            path: path.to_owned(),
            key,
            key_id,
        }
    }

    /// `Ok(None)` if there is no file at `path`.
    fn open_existing(path: &Path) -> Result<Option<Self>, KeystoreError> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open the master key file", path)(e)),
        };
        // Checked on the open descriptor, so the file cannot be swapped between check and read.
        let meta = file
            .metadata()
            .map_err(io_err("inspect the master key file", path))?;
        let corrupt = |reason: String| KeystoreError::KeyFileCorrupt {
            path: path.to_owned(),
            reason,
        };
        if !meta.is_file() {
            return Err(corrupt("it is not a regular file".to_owned()));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeystoreError::KeyFilePermissions {
                path: path.to_owned(),
                mode,
            });
        }
        if meta.len() != KEY_FILE_LEN as u64 {
            return Err(corrupt(format!(
                "it is {} bytes long, expected {KEY_FILE_LEN}",
                meta.len()
            )));
        }
        let mut contents = Zeroizing::new([0u8; KEY_FILE_LEN]);
        file.read_exact(&mut contents[..])
            .map_err(io_err("read the master key file", path))?;
        if &contents[..KEY_FILE_MAGIC.len()] != KEY_FILE_MAGIC {
            return Err(corrupt(
                "it does not start with the key file marker".to_owned(),
            ));
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&contents[KEY_FILE_MAGIC.len()..]);
        Ok(Some(Self::from_key(path, key)))
    }

    fn create(path: &Path) -> Result<Self, KeystoreError> {
        let parent = match path.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => Path::new("."),
        };
        if !parent.is_dir() {
            return Err(KeystoreError::ParentMissing {
                path: path.to_owned(),
            });
        }
        let file_name = path
            .file_name()
            .ok_or_else(|| KeystoreError::KeyFileCorrupt {
                path: path.to_owned(),
                reason: "the path has no file name".to_owned(),
            })?
            .to_string_lossy()
            .into_owned();

        let key: Zeroizing<[u8; KEY_LEN]> = random("generate a master key")?;
        let suffix: Zeroizing<[u8; 8]> = random("name a temporary file")?;
        let tmp = parent.join(format!(".{file_name}.{}.tmp", hex(&suffix[..])));

        let mut contents = Zeroizing::new(Vec::with_capacity(KEY_FILE_LEN));
        contents.extend_from_slice(KEY_FILE_MAGIC);
        contents.extend_from_slice(&key[..]);

        // Write the whole key under a temporary name, then publish it with link(2), which
        // (unlike rename) fails if the target exists: a crash never leaves a half-written key
        // file, and a concurrent creator's key is never overwritten.
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&contents)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("write a new master key file next to", path)(e));
        }
        let linked = fs::hard_link(&tmp, path);
        // The temporary name is only a staging step; failing to remove it leaves a 0600 file
        // that is not used.
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Self::open_existing(path)?.ok_or_else(|| KeystoreError::KeyFileCorrupt {
                    path: path.to_owned(),
                    reason: "it appeared and vanished while being created".to_owned(),
                });
            }
            Err(e) => return Err(io_err("create the master key file", path)(e)),
        }
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync the directory of", path))?;

        let sealer = Self::from_key(path, key);
        tracing::warn!(
            path = %path.display(),
            key_id = %hex(&sealer.key_id),
            "created a new software master key; it is NOT hardware-backed: back it up, and \
             keep the data directory unreadable by others"
        );
        Ok(sealer)
    }

    fn aead_key(&self) -> Result<RandomizedNonceKey, KeystoreError> {
        // Built per operation so that the only long-lived copy of the key is the zeroized one.
        RandomizedNonceKey::new(&AES_256_GCM, &self.key[..])
            .map_err(|_| KeystoreError::Crypto("load the AES-256-GCM key"))
    }
}

impl Sealer for SoftSealer {
    fn backend(&self) -> Backend {
        Backend::Software
    }

    fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<SealedBlob, KeystoreError> {
        validate_purpose(purpose)?;
        let aad = associated_data(BLOB_VERSION, Backend::Software, purpose, &self.key_id);
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
            Backend::Software,
            purpose,
            self.key_id.to_vec(),
            nonce.as_ref().to_vec(),
            ciphertext,
        )
    }

    fn unseal(
        &self,
        purpose: &str,
        blob: &SealedBlob,
    ) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        validate_purpose(purpose)?;
        if blob.backend() != Backend::Software {
            return Err(KeystoreError::WrongBackend {
                blob: blob.backend(),
                sealer: Backend::Software,
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
        // The associated data comes from the caller's purpose and this sealer's key id, so
        // an edited header cannot make the blob open under another purpose.
        let aad = associated_data(blob.version(), Backend::Software, purpose, &self.key_id);
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

impl fmt::Debug for SoftSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftSealer")
            .field("path", &self.path)
            .field("key_id", &hex(&self.key_id))
            .finish_non_exhaustive()
    }
}
