//! Passphrase-encrypted backup files: the container that carries the database and the data
//! key to another machine (another TPM), and its cryptography.
//!
//! A backup is a short header followed by AES-256-GCM chunks, written and read as streams:
//! at most one chunk (1 MiB) of plaintext is in memory at a time, whatever the size of the
//! database. The key comes from the admin's passphrase through Argon2id; the passphrase is
//! never stored, so it is the only thing between a copy of the file and every secret in it.
//!
//! ```text
//! header:
//!   "MDMBAK01"            8 bytes, marks the file
//!   format version        1 byte   (1)
//!   KDF id                1 byte   (1: Argon2id, version 0x13)
//!   memory, KiB           u32      \
//!   passes                u32       } Argon2id parameters
//!   lanes                 u32      /
//!   salt                  16 bytes, random
//!   nonce prefix          7 bytes, random
//!   chunk size            u32      plaintext bytes in every chunk but the last
//!   meta length           u32
//!   meta                  JSON from the caller (at most 64 KiB), readable without the passphrase
//! chunks, to the end of the file:
//!   ciphertext || 16-byte tag
//! ```
//!
//! Integers are big-endian. Every chunk holds exactly `chunk size` plaintext bytes except the
//! last, which holds fewer (possibly none), so a reader knows the last chunk by its length.
//! Chunk `i` is sealed with the nonce `prefix || i (u32) || last (1 byte: 1 for the last chunk,
//! else 0)` and with SHA-256 of the whole header as associated data. So a header edit fails
//! every chunk, chunks cannot be reordered or moved between files (each file also has its own
//! salt, hence its own key), and a file cut anywhere (even at a chunk boundary) fails, because
//! its last chunk was not sealed as the last.
//!
//! Decrypted, the chunks form one stream of records: `1 | name length (u8) | name | length
//! (u64) | bytes` per entry, then `0` and nothing after it.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};

use argon2::{Algorithm, Argon2, Block, Params, Version};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::digest::{digest, SHA256};
use zeroize::Zeroizing;

use crate::aead::random;
use crate::KeystoreError;

/// First bytes of every backup file.
const MAGIC: &[u8; 8] = b"MDMBAK01";
/// The only backup format version this build writes and reads.
pub const BACKUP_FORMAT_VERSION: u8 = 1;
/// KDF id of Argon2id (version 0x13), the only one so far.
const KDF_ARGON2ID: u8 = 1;
const SALT_LEN: usize = 16;
/// With the 4-byte counter and the 1-byte last-chunk flag, a 12-byte GCM nonce.
const NONCE_PREFIX_LEN: usize = 7;
const FIXED_HEADER_LEN: usize = MAGIC.len() + 1 + 1 + 3 * 4 + SALT_LEN + NONCE_PREFIX_LEN + 4 + 4;
/// The fewest characters a new backup's passphrase may have.
pub const MIN_PASSPHRASE_CHARS: usize = 12;
/// Plaintext bytes per chunk in the backups this build writes.
const CHUNK_SIZE: usize = 1 << 20;
/// Bounds on the chunk size a reader accepts: it allocates one chunk.
const MIN_CHUNK_SIZE: usize = 1024;
const MAX_CHUNK_SIZE: usize = 16 << 20;
/// Bound on the caller's meta, so a crafted header cannot make `open` allocate much.
const MAX_META_LEN: usize = 64 * 1024;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
const RECORD_END: u8 = 0;
const RECORD_ENTRY: u8 = 1;
const MAX_NAME_LEN: usize = 64;

/// Argon2id cost parameters, recorded in each backup's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, in KiB.
    pub memory_kib: u32,
    /// Passes over that memory.
    pub passes: u32,
    /// Lanes (parallelism). This crate computes them one after the other.
    pub lanes: u32,
}

impl KdfParams {
    /// What [`BackupWriter::new`] uses: 64 MiB, 3 passes, 1 lane. A few tenths of a second on
    /// one core for the appliance, once per backup or restore; for an attacker, the same time
    /// and 64 MiB of memory per guessed passphrase.
    pub const RECOMMENDED: Self = Self {
        memory_kib: 64 * 1024,
        passes: 3,
        lanes: 1,
    };
    /// The least memory accepted (8 MiB), when writing and when reading.
    pub const MIN_MEMORY_KIB: u32 = 8 * 1024;
    /// The most memory accepted (1 GiB): a file asking for more is refused before anything
    /// is allocated, so a crafted backup cannot exhaust the appliance's memory.
    pub const MAX_MEMORY_KIB: u32 = 1024 * 1024;
    /// The most passes accepted (bounds the time a crafted file can cost).
    pub const MAX_PASSES: u32 = 16;
    /// The most lanes accepted.
    pub const MAX_LANES: u32 = 16;

    /// Checks the parameters against the bounds above.
    pub fn check(&self) -> Result<(), KeystoreError> {
        let out_of_bounds = |reason: String| Err(KeystoreError::BackupKdfOutOfBounds { reason });
        if !(Self::MIN_MEMORY_KIB..=Self::MAX_MEMORY_KIB).contains(&self.memory_kib) {
            return out_of_bounds(format!(
                "memory {} KiB, accepted {} to {} KiB",
                self.memory_kib,
                Self::MIN_MEMORY_KIB,
                Self::MAX_MEMORY_KIB
            ));
        }
        if !(1..=Self::MAX_PASSES).contains(&self.passes) {
            return out_of_bounds(format!(
                "{} passes, accepted 1 to {}",
                self.passes,
                Self::MAX_PASSES
            ));
        }
        if !(1..=Self::MAX_LANES).contains(&self.lanes) {
            return out_of_bounds(format!(
                "{} lanes, accepted 1 to {}",
                self.lanes,
                Self::MAX_LANES
            ));
        }
        Ok(())
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::RECOMMENDED
    }
}

/// Derives the backup key from the passphrase. The Argon2 working memory is allocated here
/// (fallibly, so a machine short of memory gets an error rather than an abort) and wiped
/// afterwards, since it is derived from the passphrase.
fn derive_key(
    passphrase: &str,
    salt: &[u8; SALT_LEN],
    params: KdfParams,
) -> Result<Zeroizing<[u8; KEY_LEN]>, KeystoreError> {
    params.check()?;
    let argon_params = Params::new(
        params.memory_kib,
        params.passes,
        params.lanes,
        Some(KEY_LEN),
    )
    .map_err(|e| KeystoreError::BackupKdfOutOfBounds {
        reason: e.to_string(),
    })?;
    let blocks = argon_params.block_count();
    let mut memory: Zeroizing<Vec<Block>> = Zeroizing::new(Vec::new());
    memory
        .try_reserve_exact(blocks)
        .map_err(|_| KeystoreError::BackupKdfMemory {
            mib: params.memory_kib.div_ceil(1024),
        })?;
    memory.resize(blocks, Block::new());
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params)
        .hash_password_into_with_memory(passphrase.as_bytes(), salt, &mut key[..], &mut memory[..])
        .map_err(|e| KeystoreError::BackupKdfOutOfBounds {
            reason: e.to_string(),
        })?;
    Ok(key)
}

/// The fixed part of the header, parsed.
struct Header {
    params: KdfParams,
    salt: [u8; SALT_LEN],
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    chunk_size: usize,
    meta_len: usize,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_HEADER_LEN + self.meta_len);
        out.extend_from_slice(MAGIC);
        out.push(BACKUP_FORMAT_VERSION);
        out.push(KDF_ARGON2ID);
        out.extend_from_slice(&self.params.memory_kib.to_be_bytes());
        out.extend_from_slice(&self.params.passes.to_be_bytes());
        out.extend_from_slice(&self.params.lanes.to_be_bytes());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.nonce_prefix);
        // Both are bounded far below 4 GiB where they are chosen.
        out.extend_from_slice(
            &u32::try_from(self.chunk_size)
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(
            &u32::try_from(self.meta_len)
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out
    }

    /// Parses the first `got` bytes of `fixed` (fewer than its length when the input ended).
    fn decode(fixed: &[u8; FIXED_HEADER_LEN], got: usize) -> Result<Self, KeystoreError> {
        let fixed = &fixed[..got];
        if !fixed.starts_with(MAGIC) {
            return Err(KeystoreError::NotABackup);
        }
        // The version is checked before the length: a later version may have a shorter header.
        if let Some(&version) = fixed.get(MAGIC.len()) {
            if version != BACKUP_FORMAT_VERSION {
                return Err(KeystoreError::BackupUnsupportedVersion {
                    found: version,
                    supported: BACKUP_FORMAT_VERSION,
                });
            }
        }
        if got < FIXED_HEADER_LEN {
            return Err(damaged("it ends inside its header"));
        }
        let kdf = fixed[MAGIC.len() + 1];
        if kdf != KDF_ARGON2ID {
            return Err(KeystoreError::BackupUnsupportedKdf {
                found: kdf,
                supported: KDF_ARGON2ID,
            });
        }
        let u32_at = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&fixed[at..at + 4]);
            u32::from_be_bytes(b)
        };
        let params_at = MAGIC.len() + 2;
        let params = KdfParams {
            memory_kib: u32_at(params_at),
            passes: u32_at(params_at + 4),
            lanes: u32_at(params_at + 8),
        };
        let salt_at = params_at + 12;
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&fixed[salt_at..salt_at + SALT_LEN]);
        let prefix_at = salt_at + SALT_LEN;
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&fixed[prefix_at..prefix_at + NONCE_PREFIX_LEN]);
        let sizes_at = prefix_at + NONCE_PREFIX_LEN;
        let chunk_size = usize::try_from(u32_at(sizes_at)).unwrap_or(usize::MAX);
        let meta_len = usize::try_from(u32_at(sizes_at + 4)).unwrap_or(usize::MAX);
        params.check()?;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(damaged(format!(
                "its chunk size of {chunk_size} bytes is outside {MIN_CHUNK_SIZE} to \
                 {MAX_CHUNK_SIZE}"
            )));
        }
        if meta_len > MAX_META_LEN {
            return Err(damaged(format!(
                "its description is said to be {meta_len} bytes long, at most {MAX_META_LEN} \
                 expected"
            )));
        }
        Ok(Self {
            params,
            salt,
            nonce_prefix,
            chunk_size,
            meta_len,
        })
    }
}

fn damaged(reason: impl Into<String>) -> KeystoreError {
    KeystoreError::BackupDamaged {
        reason: reason.into(),
    }
}

fn io_err(action: &'static str) -> impl FnOnce(io::Error) -> KeystoreError {
    move |source| KeystoreError::BackupIo { action, source }
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Checks an entry name: 1 to 64 ASCII letters, digits, `.`, `-` or `_`, not starting with
/// a dot. Names may become file names on restore, so nothing that could leave a directory.
fn check_entry_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Err("it is longer than 64 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        Err("it may only contain ASCII letters, digits, '.', '-' and '_'")
    } else if name.starts_with('.') {
        Err("it starts with a dot")
    } else {
        Ok(())
    }
}

/// The chunk key with its nonce sequence and associated data.
struct ChunkCipher {
    key: LessSafeKey,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    /// SHA-256 of the whole header.
    aad: [u8; 32],
    /// Index of the next chunk; `None` once all 2^32 are used.
    next: Option<u32>,
}

impl ChunkCipher {
    fn new(
        key: &Zeroizing<[u8; KEY_LEN]>,
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
        header: &[u8],
    ) -> Result<Self, KeystoreError> {
        let key = UnboundKey::new(&AES_256_GCM, &key[..])
            .map_err(|_| KeystoreError::Crypto("load the AES-256-GCM backup key"))?;
        let mut aad = [0u8; 32];
        aad.copy_from_slice(digest(&SHA256, header).as_ref());
        Ok(Self {
            key: LessSafeKey::new(key),
            nonce_prefix,
            aad,
            next: Some(0),
        })
    }

    /// The nonce of the next chunk, and its index. `None` past 2^32 chunks (4 PiB).
    fn next_nonce(&mut self, last: bool) -> Option<(u32, Nonce)> {
        let index = self.next?;
        self.next = index.checked_add(1);
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        nonce[NONCE_PREFIX_LEN..NONCE_LEN - 1].copy_from_slice(&index.to_be_bytes());
        nonce[NONCE_LEN - 1] = u8::from(last);
        Some((index, Nonce::assume_unique_for_key(nonce)))
    }
}

/// Writes a backup: the header, then the entries added, encrypted in chunks.
///
/// Nothing is complete until [`finish`](Self::finish) returns: a writer dropped before (or
/// after an error) leaves a file every reader rejects as truncated. After an error, every
/// call returns [`KeystoreError::BackupAborted`], except a refused entry name, which changes
/// nothing.
pub struct BackupWriter<W: Write> {
    out: W,
    cipher: ChunkCipher,
    chunk_size: usize,
    /// Plaintext of the chunk being filled, sealed in place; sized once to hold the tag, so
    /// it never reallocates (which would leave plaintext in freed memory).
    buf: Zeroizing<Vec<u8>>,
    names: BTreeSet<String>,
    failed: bool,
}

impl<W: Write> BackupWriter<W> {
    /// Starts a backup into `out` under `passphrase` (at least [`MIN_PASSPHRASE_CHARS`]
    /// characters, used as its UTF-8 bytes, without normalisation), with the
    /// [`KdfParams::RECOMMENDED`] Argon2id parameters. `meta` (at most 64 KiB as JSON) is
    /// stored in clear in the header, for [`BackupReader::meta`] to show before the
    /// passphrase is asked for: put nothing secret in it.
    ///
    /// Derives the key (64 MiB and a few tenths of a second) and writes the header.
    pub fn new(out: W, passphrase: &str, meta: &serde_json::Value) -> Result<Self, KeystoreError> {
        Self::build(out, passphrase, meta, KdfParams::RECOMMENDED, CHUNK_SIZE)
    }

    /// [`new`](Self::new) with other Argon2id parameters (within the [`KdfParams`] bounds),
    /// to raise them above the recommended ones.
    pub fn with_kdf_params(
        out: W,
        passphrase: &str,
        meta: &serde_json::Value,
        params: KdfParams,
    ) -> Result<Self, KeystoreError> {
        Self::build(out, passphrase, meta, params, CHUNK_SIZE)
    }

    pub(crate) fn build(
        mut out: W,
        passphrase: &str,
        meta: &serde_json::Value,
        params: KdfParams,
        chunk_size: usize,
    ) -> Result<Self, KeystoreError> {
        let chars = passphrase.chars().count();
        if chars < MIN_PASSPHRASE_CHARS {
            return Err(KeystoreError::BackupPassphraseTooShort {
                min: MIN_PASSPHRASE_CHARS,
                found: chars,
            });
        }
        params.check()?;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(KeystoreError::BackupIo {
                action: "start a backup",
                source: io::Error::new(io::ErrorKind::InvalidInput, "chunk size out of bounds"),
            });
        }
        let meta = serde_json::to_vec(meta).map_err(|e| KeystoreError::BackupMeta {
            reason: e.to_string(),
        })?;
        if meta.len() > MAX_META_LEN {
            return Err(KeystoreError::BackupMeta {
                reason: format!(
                    "it is {} bytes long as JSON, at most {MAX_META_LEN} allowed",
                    meta.len()
                ),
            });
        }
        let salt: Zeroizing<[u8; SALT_LEN]> = random("generate a backup salt")?;
        let nonce_prefix: Zeroizing<[u8; NONCE_PREFIX_LEN]> =
            random("generate a backup nonce prefix")?;
        let fields = Header {
            params,
            salt: *salt,
            nonce_prefix: *nonce_prefix,
            chunk_size,
            meta_len: meta.len(),
        };
        let mut header = fields.encode();
        header.extend_from_slice(&meta);
        let key = derive_key(passphrase, &fields.salt, params)?;
        let cipher = ChunkCipher::new(&key, fields.nonce_prefix, &header)?;
        out.write_all(&header).map_err(io_err("write the backup"))?;
        Ok(Self {
            out,
            cipher,
            chunk_size,
            buf: Zeroizing::new(Vec::with_capacity(chunk_size + TAG_LEN)),
            names: BTreeSet::new(),
            failed: false,
        })
    }

    /// Adds an entry named `name` holding everything from `source`'s current position to its
    /// end (a `File`, or a `Cursor` over bytes), and returns its length.
    ///
    /// The length is measured first and recorded ahead of the bytes; a source that turns out
    /// shorter or longer (a file written meanwhile) fails with
    /// [`KeystoreError::BackupSourceChanged`]. Back up a snapshot nobody writes to.
    ///
    /// Names are 1 to 64 ASCII letters, digits, `.`, `-`, `_`, not starting with a dot, and
    /// unique within a backup.
    pub fn add(&mut self, name: &str, mut source: impl Read + Seek) -> Result<u64, KeystoreError> {
        self.check_new_name(name)?;
        self.guarded(|w| {
            let mut measure = || -> io::Result<u64> {
                let start = source.stream_position()?;
                let end = source.seek(SeekFrom::End(0))?;
                source.seek(SeekFrom::Start(start))?;
                Ok(end.saturating_sub(start))
            };
            let len = measure().map_err(io_err("measure the data for a backup entry"))?;
            w.write_entry(name, len, &mut source)?;
            Ok(len)
        })
    }

    /// Adds an entry named `name` holding exactly `len` bytes read from `source`, for sources
    /// that cannot seek; otherwise as [`add`](Self::add).
    pub fn add_sized(
        &mut self,
        name: &str,
        len: u64,
        mut source: impl Read,
    ) -> Result<(), KeystoreError> {
        self.check_new_name(name)?;
        self.guarded(|w| w.write_entry(name, len, &mut source))
    }

    /// Ends the backup: writes the end record and the last chunk, flushes `out` and returns
    /// it. The caller syncs it to disk (`File::sync_all`) before relying on it.
    pub fn finish(mut self) -> Result<W, KeystoreError> {
        self.guarded(|w| {
            w.push(&[RECORD_END])?;
            // `push` seals a chunk as soon as it is full, so what is left is shorter than a
            // chunk (possibly empty): the last chunk, known to readers by that.
            w.seal_chunk(true)?;
            w.out.flush().map_err(io_err("write the backup"))
        })?;
        Ok(self.out)
    }

    fn check_new_name(&self, name: &str) -> Result<(), KeystoreError> {
        let refuse = |reason| KeystoreError::BackupEntryName {
            name: name.to_owned(),
            reason,
        };
        check_entry_name(name).map_err(refuse)?;
        if self.names.contains(name) {
            return Err(refuse("this backup already has an entry of that name"));
        }
        Ok(())
    }

    /// Runs `f`, leaving the writer failed unless `f` succeeds.
    fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, KeystoreError>,
    ) -> Result<T, KeystoreError> {
        if self.failed {
            return Err(KeystoreError::BackupAborted);
        }
        self.failed = true;
        let value = f(self)?;
        self.failed = false;
        Ok(value)
    }

    fn write_entry(
        &mut self,
        name: &str,
        len: u64,
        source: &mut impl Read,
    ) -> Result<(), KeystoreError> {
        self.names.insert(name.to_owned());
        // `check_entry_name` bounds it to 64 bytes.
        self.push(&[RECORD_ENTRY, u8::try_from(name.len()).unwrap_or(u8::MAX)])?;
        self.push(name.as_bytes())?;
        self.push(&len.to_be_bytes())?;
        let changed = |found| KeystoreError::BackupSourceChanged {
            name: name.to_owned(),
            expected: len,
            found,
        };
        let mut remaining = len;
        while remaining > 0 {
            // Read straight into the chunk buffer: no second plaintext copy.
            let start = self.buf.len();
            let room = self.chunk_size - start;
            let want = usize::try_from(remaining).unwrap_or(usize::MAX).min(room);
            self.buf.resize(start + want, 0);
            let got = loop {
                match source.read(&mut self.buf[start..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.buf.truncate(start);
                        return Err(io_err("read the data for a backup entry")(e));
                    }
                }
            };
            self.buf.truncate(start + got);
            if got == 0 {
                return Err(changed("it ended sooner"));
            }
            remaining -= got as u64;
            if self.buf.len() == self.chunk_size {
                self.seal_chunk(false)?;
            }
        }
        let mut probe = Zeroizing::new([0u8; 1]);
        loop {
            match source.read(&mut probe[..]) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(changed("it is longer")),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("read the data for a backup entry")(e)),
            }
        }
    }

    /// Appends plaintext, sealing and writing each chunk as it fills.
    fn push(&mut self, mut bytes: &[u8]) -> Result<(), KeystoreError> {
        while !bytes.is_empty() {
            let n = (self.chunk_size - self.buf.len()).min(bytes.len());
            let (now, later) = bytes.split_at(n);
            self.buf.extend_from_slice(now);
            bytes = later;
            if self.buf.len() == self.chunk_size {
                self.seal_chunk(false)?;
            }
        }
        Ok(())
    }

    fn seal_chunk(&mut self, last: bool) -> Result<(), KeystoreError> {
        let (_, nonce) = self
            .cipher
            .next_nonce(last)
            .ok_or_else(|| KeystoreError::BackupIo {
                action: "write the backup",
                source: io::Error::other("a backup holds at most 2^32 chunks (4 PiB)"),
            })?;
        self.cipher
            .key
            .seal_in_place_append_tag(nonce, Aad::from(&self.cipher.aad[..]), &mut *self.buf)
            .map_err(|_| KeystoreError::Crypto("encrypt a backup chunk"))?;
        self.out
            .write_all(&self.buf)
            .map_err(io_err("write the backup"))?;
        self.buf.clear();
        Ok(())
    }
}

impl<W: Write> fmt::Debug for BackupWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupWriter")
            .field("entries", &self.names)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// A backup file opened but not yet decrypted: its header and its [`meta`](Self::meta).
pub struct BackupReader<R: Read> {
    input: R,
    header: Vec<u8>,
    fields: Header,
    meta: serde_json::Value,
}

impl<R: Read> BackupReader<R> {
    /// Reads and checks the header of the backup in `input` (nothing more), so that what the
    /// file is can be shown before the passphrase is asked for.
    ///
    /// Errors: [`KeystoreError::NotABackup`], [`KeystoreError::BackupUnsupportedVersion`],
    /// [`KeystoreError::BackupUnsupportedKdf`], [`KeystoreError::BackupKdfOutOfBounds`] (the
    /// parameters are checked here, before any memory is spent on them),
    /// [`KeystoreError::BackupDamaged`].
    pub fn open(mut input: R) -> Result<Self, KeystoreError> {
        let mut fixed = [0u8; FIXED_HEADER_LEN];
        let got = read_full(&mut input, &mut fixed).map_err(io_err("read the backup"))?;
        let fields = Header::decode(&fixed, got)?;
        let mut header = Vec::with_capacity(FIXED_HEADER_LEN + fields.meta_len);
        header.extend_from_slice(&fixed);
        header.resize(FIXED_HEADER_LEN + fields.meta_len, 0);
        let got = read_full(&mut input, &mut header[FIXED_HEADER_LEN..])
            .map_err(io_err("read the backup"))?;
        if got < fields.meta_len {
            return Err(damaged("it ends inside its header"));
        }
        let meta = serde_json::from_slice(&header[FIXED_HEADER_LEN..])
            .map_err(|e| damaged(format!("its description is not valid JSON ({e})")))?;
        Ok(Self {
            input,
            header,
            fields,
            meta,
        })
    }

    /// The description stored when the backup was made.
    ///
    /// NOT authenticated yet: anyone can edit it in the file. Editing it makes
    /// [`unlock`](Self::unlock) fail, so show it as a hint; [`UnlockedBackup::meta`] is the
    /// same value, verified.
    pub fn meta(&self) -> &serde_json::Value {
        &self.meta
    }

    /// The Argon2id parameters recorded in the header.
    pub fn kdf_params(&self) -> KdfParams {
        self.fields.params
    }

    /// Derives the key from `passphrase` and decrypts and verifies the first chunk, which
    /// also authenticates the header.
    ///
    /// A wrong passphrase and a damaged first chunk or header are the same failure,
    /// [`KeystoreError::BackupWrongPassphrase`]. The input is consumed either way: to try
    /// another passphrase, open the file again.
    pub fn unlock(self, passphrase: &str) -> Result<UnlockedBackup<R>, KeystoreError> {
        let key = derive_key(passphrase, &self.fields.salt, self.fields.params)?;
        let cipher = ChunkCipher::new(&key, self.fields.nonce_prefix, &self.header)?;
        let chunk_size = self.fields.chunk_size;
        let mut unlocked = UnlockedBackup {
            input: self.input,
            cipher,
            chunk_size,
            buf: Zeroizing::new(vec![0u8; chunk_size + TAG_LEN]),
            pos: 0,
            len: 0,
            last_seen: false,
            meta: self.meta,
            current: None,
            remaining: 0,
            names: BTreeSet::new(),
            done: false,
            failed: false,
        };
        unlocked.next_chunk()?;
        Ok(unlocked)
    }
}

impl<R: Read> fmt::Debug for BackupReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupReader")
            .field("meta", &self.meta)
            .field("kdf_params", &self.fields.params)
            .finish_non_exhaustive()
    }
}

/// An entry of a backup: its name and length in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupEntry {
    /// The name it was added under.
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
}

/// A backup whose passphrase was right, read entry by entry.
///
/// Plaintext is handed out only from chunks whose tag verified, but only the end of the
/// backup proves nothing was cut off or that the end is the one that was written: the backup
/// is verified as a whole once [`next_entry`](Self::next_entry) returns `Ok(None)`. A
/// restore therefore writes entries to temporary files and renames them into place only
/// after that; any error before means everything written must be discarded.
///
/// After an error, every call returns [`KeystoreError::BackupAborted`].
pub struct UnlockedBackup<R: Read> {
    input: R,
    cipher: ChunkCipher,
    chunk_size: usize,
    /// One chunk, decrypted in place; plaintext is `buf[pos..len]`.
    buf: Zeroizing<Vec<u8>>,
    pos: usize,
    len: usize,
    /// The chunk in `buf` is the last one.
    last_seen: bool,
    meta: serde_json::Value,
    /// The entry being read, and how many of its bytes are left.
    current: Option<String>,
    remaining: u64,
    names: BTreeSet<String>,
    /// The end record was read and verified.
    done: bool,
    failed: bool,
}

impl<R: Read> UnlockedBackup<R> {
    /// The description stored when the backup was made, authenticated.
    pub fn meta(&self) -> &serde_json::Value {
        &self.meta
    }

    /// Moves to the next entry (skipping, but still verifying, what is left of the current
    /// one) and returns its name and length; `Ok(None)` at the end, once the whole backup has
    /// verified.
    pub fn next_entry(&mut self) -> Result<Option<BackupEntry>, KeystoreError> {
        self.guarded(|b| {
            if b.done {
                return Ok(None);
            }
            b.skip_rest()?;
            let mut record = [0u8; 1];
            b.read_plain(&mut record)?;
            match record[0] {
                RECORD_END => {
                    b.check_end()?;
                    b.done = true;
                    Ok(None)
                }
                RECORD_ENTRY => {
                    let mut name_len = [0u8; 1];
                    b.read_plain(&mut name_len)?;
                    let mut name = vec![0u8; usize::from(name_len[0])];
                    b.read_plain(&mut name)?;
                    let name = String::from_utf8(name)
                        .ok()
                        .filter(|n| check_entry_name(n).is_ok())
                        .ok_or_else(|| damaged("an entry has an invalid name"))?;
                    if !b.names.insert(name.clone()) {
                        return Err(damaged(format!("the entry {name:?} appears twice")));
                    }
                    let mut len = [0u8; 8];
                    b.read_plain(&mut len)?;
                    let len = u64::from_be_bytes(len);
                    b.current = Some(name.clone());
                    b.remaining = len;
                    Ok(Some(BackupEntry { name, len }))
                }
                other => Err(damaged(format!("unknown record type {other}"))),
            }
        })
    }

    /// Writes what is left of the current entry to `out` and returns how many bytes that
    /// was (0 when there is no current entry, or it was read already).
    ///
    /// Each chunk is verified before any of it is written, but the entry is only known to be
    /// complete and genuine once [`next_entry`](Self::next_entry) has returned `Ok(None)`.
    pub fn copy_entry_to(&mut self, mut out: impl Write) -> Result<u64, KeystoreError> {
        self.guarded(|b| {
            let mut copied = 0u64;
            while b.remaining > 0 {
                b.fill()?;
                let n = (b.len - b.pos).min(usize::try_from(b.remaining).unwrap_or(usize::MAX));
                out.write_all(&b.buf[b.pos..b.pos + n])
                    .map_err(io_err("write a restored backup entry"))?;
                b.pos += n;
                b.remaining -= n as u64;
                copied += n as u64;
            }
            Ok(copied)
        })
    }

    /// Reads what is left of the current entry into a zeroized buffer, for small secret
    /// entries such as a data key. Refuses, with [`KeystoreError::BackupEntryTooLarge`], an
    /// entry longer than `max_len`.
    pub fn read_entry(&mut self, max_len: usize) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        self.guarded(|b| {
            let len = usize::try_from(b.remaining)
                .ok()
                .filter(|&len| len <= max_len)
                .ok_or_else(|| KeystoreError::BackupEntryTooLarge {
                    name: b.current.clone().unwrap_or_default(),
                    len: b.remaining,
                    max: max_len as u64,
                })?;
            // Sized up front: growing would leave copies of the secret in freed memory.
            let mut out = Zeroizing::new(vec![0u8; len]);
            b.read_plain(&mut out)?;
            b.remaining = 0;
            Ok(out)
        })
    }

    /// Runs `f`, leaving the reader failed unless `f` succeeds.
    fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, KeystoreError>,
    ) -> Result<T, KeystoreError> {
        if self.failed {
            return Err(KeystoreError::BackupAborted);
        }
        self.failed = true;
        let value = f(self)?;
        self.failed = false;
        Ok(value)
    }

    /// Decrypts the next chunk into `buf`.
    fn next_chunk(&mut self) -> Result<(), KeystoreError> {
        let capacity = self.chunk_size + TAG_LEN;
        let got = read_full(&mut self.input, &mut self.buf[..capacity])
            .map_err(io_err("read the backup"))?;
        let first = self.cipher.next == Some(0);
        if got < TAG_LEN {
            return Err(damaged(if first {
                "it ends right after its header".to_owned()
            } else {
                "it is cut off at a chunk boundary".to_owned()
            }));
        }
        // Only the last chunk is shorter than a full one.
        let last = got < capacity;
        let (index, nonce) = self
            .cipher
            .next_nonce(last)
            .ok_or_else(|| damaged("it has more than 2^32 chunks"))?;
        let opened = self.cipher.key.open_in_place(
            nonce,
            Aad::from(&self.cipher.aad[..]),
            &mut self.buf[..got],
        );
        let Ok(plain) = opened else {
            // The first chunk is where a wrong key shows; past it, the key is known good.
            return Err(if first {
                KeystoreError::BackupWrongPassphrase
            } else {
                damaged(format!(
                    "chunk {index} failed its integrity check: the file was cut, altered, or \
                     pieced together from several backups"
                ))
            });
        };
        self.len = plain.len();
        self.pos = 0;
        self.last_seen = last;
        Ok(())
    }

    /// Makes sure some plaintext is available, decrypting the next chunk if needed.
    fn fill(&mut self) -> Result<(), KeystoreError> {
        while self.pos == self.len {
            if self.last_seen {
                return Err(damaged("its contents end in the middle of a record"));
            }
            self.next_chunk()?;
        }
        Ok(())
    }

    fn read_plain(&mut self, out: &mut [u8]) -> Result<(), KeystoreError> {
        let mut filled = 0;
        while filled < out.len() {
            self.fill()?;
            let n = (self.len - self.pos).min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            filled += n;
        }
        Ok(())
    }

    fn skip_rest(&mut self) -> Result<(), KeystoreError> {
        while self.remaining > 0 {
            self.fill()?;
            let n =
                (self.len - self.pos).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
            self.pos += n;
            self.remaining -= n as u64;
        }
        self.current = None;
        Ok(())
    }

    /// After the end record: nothing may follow it, and the chunk holding it (or an empty
    /// one right after it) must be the last.
    fn check_end(&mut self) -> Result<(), KeystoreError> {
        loop {
            if self.pos < self.len {
                return Err(damaged("data follows its end record"));
            }
            if self.last_seen {
                return Ok(());
            }
            self.next_chunk()?;
        }
    }
}

impl<R: Read> fmt::Debug for UnlockedBackup<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnlockedBackup")
            .field("meta", &self.meta)
            .field("current", &self.current)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    const PASS: &str = "correct horse battery staple";
    /// The cheapest parameters accepted, so these tests can afford many key derivations.
    const FAST: KdfParams = KdfParams {
        memory_kib: KdfParams::MIN_MEMORY_KIB,
        passes: 1,
        lanes: 1,
    };
    const SMALL_CHUNK: usize = MIN_CHUNK_SIZE;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn backup(entries: &[(&str, &[u8])], chunk_size: usize) -> Vec<u8> {
        let meta = serde_json::json!({"schema": 3});
        let mut w = BackupWriter::build(Vec::new(), PASS, &meta, FAST, chunk_size).unwrap();
        for (name, bytes) in entries {
            assert_eq!(w.add(name, Cursor::new(bytes)).unwrap(), bytes.len() as u64);
        }
        w.finish().unwrap()
    }

    fn restore(file: &[u8]) -> Result<Vec<(String, Vec<u8>)>, KeystoreError> {
        let mut b = BackupReader::open(file)?.unlock(PASS)?;
        let mut out = Vec::new();
        while let Some(entry) = b.next_entry()? {
            let mut bytes = Vec::new();
            assert_eq!(b.copy_entry_to(&mut bytes)?, entry.len);
            out.push((entry.name, bytes));
        }
        Ok(out)
    }

    fn header_len(file: &[u8]) -> usize {
        let meta_len = u32::from_be_bytes(
            file[FIXED_HEADER_LEN - 4..FIXED_HEADER_LEN]
                .try_into()
                .unwrap(),
        );
        FIXED_HEADER_LEN + meta_len as usize
    }

    #[test]
    fn round_trips_across_every_chunk_boundary_case() {
        // One entry named "a" costs 11 bytes of framing and the end record 1, so 1012 data
        // bytes fill a 1024-byte chunk exactly: the end record closes a full chunk and an
        // empty last chunk follows.
        for len in [0usize, 1, 1011, 1012, 1013, 2035, 2036, 2037, 5000] {
            let bytes = data(len, 7);
            let file = backup(&[("a", &bytes)], SMALL_CHUNK);
            let body = file.len() - header_len(&file);
            let plain = 12 + len;
            let chunks = plain / SMALL_CHUNK + 1;
            assert_eq!(body, plain + chunks * TAG_LEN, "len {len}");
            assert_eq!(restore(&file).unwrap(), vec![("a".to_owned(), bytes)]);
        }
    }

    #[test]
    fn several_entries_straddle_chunks() {
        let (a, b, c) = (data(3000, 1), data(0, 2), data(1500, 3));
        let file = backup(
            &[("mdm.redb", &a), ("empty", &b), ("data-key", &c)],
            SMALL_CHUNK,
        );
        let back = restore(&file).unwrap();
        assert_eq!(
            back,
            vec![
                ("mdm.redb".to_owned(), a),
                ("empty".to_owned(), b),
                ("data-key".to_owned(), c)
            ]
        );

        // Entries may be skipped or read in part: what is skipped is still verified.
        let mut r = BackupReader::open(&file[..]).unwrap().unlock(PASS).unwrap();
        assert_eq!(r.next_entry().unwrap().unwrap().name, "mdm.redb");
        let mut partial = [0u8; 10];
        r.read_plain(&mut partial).unwrap();
        r.remaining -= 10;
        assert_eq!(r.next_entry().unwrap().unwrap().name, "empty");
        assert_eq!(r.next_entry().unwrap().unwrap().name, "data-key");
        assert_eq!(r.next_entry().unwrap(), None);
        assert_eq!(r.next_entry().unwrap(), None);
    }

    #[test]
    fn truncation_anywhere_is_detected() {
        let file = backup(&[("a", &data(3000, 9)), ("b", &data(100, 1))], SMALL_CHUNK);
        let h = header_len(&file);
        let full = SMALL_CHUNK + TAG_LEN;
        let mut cuts: Vec<usize> = (h..file.len()).step_by(97).collect();
        for k in 0..=(file.len() - h) / full {
            for delta in [0usize, 1, 15, 16, 17] {
                cuts.push(h + k * full + delta);
                cuts.push((h + k * full).saturating_sub(delta));
            }
        }
        cuts.push(file.len() - 1);
        for cut in cuts.into_iter().filter(|&c| c < file.len()) {
            let err = restore(&file[..cut]).unwrap_err();
            let in_first_chunk = cut > h && cut < h + full;
            assert!(
                matches!(err, KeystoreError::BackupDamaged { .. })
                    || (in_first_chunk && matches!(err, KeystoreError::BackupWrongPassphrase))
                    || (cut < h && matches!(err, KeystoreError::NotABackup)),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn appended_bytes_are_detected() {
        let file = backup(&[("a", &data(2500, 9))], SMALL_CHUNK);
        for extra in [1usize, 16, SMALL_CHUNK + TAG_LEN, 3000] {
            let mut longer = file.clone();
            longer.extend(data(extra, 3));
            assert!(
                matches!(restore(&longer), Err(KeystoreError::BackupDamaged { .. })),
                "{extra} bytes appended"
            );
        }
    }

    /// Decrypts chunk `index` of `file` and seals the same plaintext again with `last` as
    /// its last-chunk flag: what someone holding the key could do, to check that the reader
    /// checks the flag against the chunk's position.
    fn reseal(file: &[u8], index: usize, last: bool) -> Vec<u8> {
        let h = header_len(file);
        let key = derive_key(PASS, file[22..38].try_into().unwrap(), FAST).unwrap();
        let prefix: [u8; NONCE_PREFIX_LEN] = file[38..45].try_into().unwrap();
        let full = SMALL_CHUNK + TAG_LEN;
        let start = h + index * full;
        let end = (start + full).min(file.len());
        let genuine_last = end == file.len();
        let nonce_for = |last: bool| {
            let mut cipher = ChunkCipher::new(&key, prefix, &file[..h]).unwrap();
            for _ in 0..index {
                cipher.next_nonce(false).unwrap();
            }
            let (_, nonce) = cipher.next_nonce(last).unwrap();
            (cipher, nonce)
        };
        let (cipher, nonce) = nonce_for(genuine_last);
        let mut chunk = file[start..end].to_vec();
        let plain = cipher
            .key
            .open_in_place(nonce, Aad::from(&cipher.aad[..]), &mut chunk)
            .unwrap()
            .to_vec();
        let (cipher, nonce) = nonce_for(last);
        let mut resealed = plain;
        cipher
            .key
            .seal_in_place_append_tag(nonce, Aad::from(&cipher.aad[..]), &mut resealed)
            .unwrap();
        let mut out = file[..start].to_vec();
        out.extend(resealed);
        out.extend_from_slice(&file[end..]);
        out
    }

    #[test]
    fn the_last_chunk_flag_is_checked_against_the_position() {
        // 12 + 2000 plaintext bytes: a full chunk 0, then a last chunk 1 of 988 bytes.
        let file = backup(&[("a", &data(2000, 9))], SMALL_CHUNK);
        assert_eq!(file.len() - header_len(&file), 2012 + 2 * TAG_LEN);
        // The helper itself is faithful: resealing with the right flags changes nothing.
        assert_eq!(restore(&reseal(&file, 0, false)).unwrap().len(), 1);
        assert_eq!(restore(&reseal(&file, 1, true)).unwrap().len(), 1);

        assert!(matches!(
            restore(&reseal(&file, 1, false)),
            Err(KeystoreError::BackupDamaged { .. })
        ));
        assert!(matches!(
            restore(&reseal(&file, 0, true)),
            Err(KeystoreError::BackupWrongPassphrase)
        ));
    }

    #[test]
    fn header_fields_are_where_the_format_says() {
        let file = backup(&[], SMALL_CHUNK);
        assert_eq!(&file[..8], b"MDMBAK01");
        assert_eq!(file[8], BACKUP_FORMAT_VERSION);
        assert_eq!(file[9], KDF_ARGON2ID);
        assert_eq!(file[10..14], FAST.memory_kib.to_be_bytes());
        assert_eq!(file[14..18], 1u32.to_be_bytes());
        assert_eq!(file[18..22], 1u32.to_be_bytes());
        assert_eq!(file[45..49], (SMALL_CHUNK as u32).to_be_bytes());
        let meta = br#"{"schema":3}"#;
        assert_eq!(file[49..53], (meta.len() as u32).to_be_bytes());
        assert_eq!(&file[53..53 + meta.len()], meta);
        assert_eq!(FIXED_HEADER_LEN, 53);
        // Salt and prefix differ between two backups.
        let other = backup(&[], SMALL_CHUNK);
        assert_ne!(file[22..38], other[22..38]);
        assert_ne!(file[38..45], other[38..45]);
    }

    #[test]
    fn a_failing_source_aborts_the_writer() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let meta = serde_json::json!({});
        let mut w = BackupWriter::build(Vec::new(), PASS, &meta, FAST, SMALL_CHUNK).unwrap();
        let err = w.add_sized("a", 10, Failing).unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert!(matches!(
            w.add("b", Cursor::new(b"x")),
            Err(KeystoreError::BackupAborted)
        ));
        assert!(matches!(w.finish(), Err(KeystoreError::BackupAborted)));
    }

    #[test]
    fn a_source_of_another_length_is_refused() {
        let meta = serde_json::json!({});
        for (len, found) in [(20u64, "it ended sooner"), (5, "it is longer")] {
            let mut w = BackupWriter::build(Vec::new(), PASS, &meta, FAST, SMALL_CHUNK).unwrap();
            let err = w.add_sized("a", len, &[1u8; 10][..]).unwrap_err();
            assert!(
                matches!(&err, KeystoreError::BackupSourceChanged { expected, found: f, .. }
                    if *expected == len && *f == found),
                "{err}"
            );
        }
    }

    #[test]
    fn entry_names_are_checked() {
        let meta = serde_json::json!({});
        let mut w = BackupWriter::build(Vec::new(), PASS, &meta, FAST, SMALL_CHUNK).unwrap();
        for bad in [
            "",
            ".hidden",
            "../etc",
            "a/b",
            "sp ace",
            "é",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(
                    w.add(bad, Cursor::new(b"")),
                    Err(KeystoreError::BackupEntryName { .. })
                ),
                "{bad:?}"
            );
        }
        w.add("mdm.redb", Cursor::new(b"1")).unwrap();
        let err = w.add("mdm.redb", Cursor::new(b"2")).unwrap_err();
        assert!(err.to_string().contains("already"), "{err}");
        // A refused name changes nothing: the writer goes on.
        w.add("data-key_2", Cursor::new(b"3")).unwrap();
        let file = w.finish().unwrap();
        assert_eq!(restore(&file).unwrap().len(), 2);
    }

    #[test]
    fn read_entry_bounds_the_length() {
        let file = backup(
            &[("data-key", &[5u8; 32]), ("big", &[1u8; 33])],
            SMALL_CHUNK,
        );
        let mut r = BackupReader::open(&file[..]).unwrap().unlock(PASS).unwrap();
        r.next_entry().unwrap();
        assert_eq!(&r.read_entry(32).unwrap()[..], &[5u8; 32]);
        r.next_entry().unwrap();
        let err = r.read_entry(32).unwrap_err();
        assert!(
            matches!(&err, KeystoreError::BackupEntryTooLarge { name, len: 33, max: 32 } if name == "big"),
            "{err}"
        );
        assert!(matches!(r.next_entry(), Err(KeystoreError::BackupAborted)));
    }

    #[test]
    fn structural_header_errors() {
        let file = backup(&[], SMALL_CHUNK);
        let open = |bytes: &[u8]| BackupReader::open(bytes).map(|_| ()).unwrap_err();
        assert!(matches!(open(b""), KeystoreError::NotABackup));
        assert!(matches!(open(b"MDMBAK0"), KeystoreError::NotABackup));
        assert!(matches!(open(b"MDKS\x01\x01"), KeystoreError::NotABackup));
        assert!(matches!(
            open(&file[..8]),
            KeystoreError::BackupDamaged { .. }
        ));
        for cut in 9..header_len(&file) {
            assert!(
                matches!(open(&file[..cut]), KeystoreError::BackupDamaged { .. }),
                "cut at {cut}"
            );
        }
        let patched = |at: usize, bytes: &[u8]| {
            let mut f = file.clone();
            f[at..at + bytes.len()].copy_from_slice(bytes);
            f
        };
        assert!(matches!(
            open(&patched(8, &[2])),
            KeystoreError::BackupUnsupportedVersion {
                found: 2,
                supported: 1
            }
        ));
        // A future version is recognised even if its header is shorter.
        assert!(matches!(
            open(b"MDMBAK01\x07"),
            KeystoreError::BackupUnsupportedVersion { found: 7, .. }
        ));
        assert!(matches!(
            open(&patched(9, &[2])),
            KeystoreError::BackupUnsupportedKdf {
                found: 2,
                supported: 1
            }
        ));
        for (at, value) in [
            (10, KdfParams::MAX_MEMORY_KIB + 1),
            (10, KdfParams::MIN_MEMORY_KIB - 1),
            (10, u32::MAX),
            (14, 0),
            (14, KdfParams::MAX_PASSES + 1),
            (18, 0),
            (18, KdfParams::MAX_LANES + 1),
        ] {
            let err = open(&patched(at, &value.to_be_bytes()));
            assert!(
                matches!(err, KeystoreError::BackupKdfOutOfBounds { .. }),
                "{at}={value}: {err}"
            );
        }
        for size in [0u32, 1023, (16 << 20) + 1] {
            let err = open(&patched(45, &size.to_be_bytes()));
            assert!(err.to_string().contains("chunk size"), "{err}");
        }
        let err = open(&patched(49, &(64 * 1024 + 1u32).to_be_bytes()));
        assert!(err.to_string().contains("description"), "{err}");
        let err = open(&patched(53, b"}"));
        assert!(err.to_string().contains("not valid JSON"), "{err}");
    }

    #[test]
    fn kdf_matches_the_argon2id_reference() {
        // RFC 9106 has no vector without a secret and associated data; this one was computed
        // with Python's `cryptography` (OpenSSL's Argon2id), independently of this crate.
        let key = derive_key(
            "password",
            b"0123456789abcdef",
            KdfParams {
                memory_kib: 8192,
                passes: 1,
                lanes: 1,
            },
        )
        .unwrap();
        assert_eq!(
            crate::blob::hex(&key[..]),
            "fc96682477a0c5c8274a4a7217e2a32b5fd51511377b8ad5be879f728e725aa5"
        );
    }
}
