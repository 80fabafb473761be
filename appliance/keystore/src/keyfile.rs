//! Reading and creating the small key files the backends keep next to the database.
//!
//! Both backends follow the same rules: a key file is created complete or not at all, an
//! existing one is never replaced by a creation (data sealed under it would be lost), and one
//! that group or others may access is refused. Only a data-key rotation rewrites one
//! ([`replace`]), atomically and always with the keys its blobs need.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::aead::random;
use crate::blob::hex;
use crate::KeystoreError;

pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> KeystoreError + 'a {
    move |source| KeystoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> KeystoreError {
    KeystoreError::KeyFileCorrupt {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Reads a whole key file of at most `max_len` bytes; `Ok(None)` if there is no file.
pub(crate) fn read_existing(
    path: &Path,
    max_len: u64,
) -> Result<Option<Zeroizing<Vec<u8>>>, KeystoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open the master key file", path)(e)),
    };
    // Checked on the open descriptor, so the file cannot be swapped between check and read.
    let meta = file
        .metadata()
        .map_err(io_err("inspect the master key file", path))?;
    if !meta.is_file() {
        return Err(corrupt(path, "it is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeystoreError::KeyFilePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > max_len {
        return Err(corrupt(
            path,
            format!(
                "it is {} bytes long, at most {max_len} expected",
                meta.len()
            ),
        ));
    }
    // Sized from the metadata and read through `take`, so the buffer never reallocates
    // (which would leave copies of the key in freed memory) even if the file grew meanwhile.
    let capacity = usize::try_from(max_len)
        .unwrap_or(usize::MAX)
        .min(64 * 1024);
    let mut contents = Zeroizing::new(Vec::with_capacity(capacity));
    file.take(max_len)
        .read_to_end(&mut contents)
        .map_err(io_err("read the master key file", path))?;
    Ok(Some(contents))
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `contents` to a new file (mode 0600) beside `path` under a random temporary name
/// and syncs it, for the caller to publish by link or rename. A failed write removes the
/// temporary file and fails with `action`.
fn write_temporary(
    path: &Path,
    contents: &[u8],
    action: &'static str,
) -> Result<PathBuf, KeystoreError> {
    let file_name = path
        .file_name()
        .ok_or_else(|| corrupt(path, "the path has no file name"))?
        .to_string_lossy()
        .into_owned();
    let suffix: Zeroizing<[u8; 8]> = random("name a temporary file")?;
    let tmp = parent_of(path).join(format!(".{file_name}.{}.tmp", hex(&suffix[..])));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()
    })();
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(io_err(action, path)(e))
        }
    }
}

/// What [`publish_new`] found.
pub(crate) enum Published {
    /// The file now exists with the given contents.
    Created,
    /// Another process created the file first; it was left alone and must be read instead.
    AlreadyExisted,
}

/// Creates `path` (mode 0600) holding `contents`, without ever replacing an existing file.
///
/// The parent directory must exist; it is not created, because its ownership and mode are
/// the service's business (systemd's `StateDirectory`).
pub(crate) fn publish_new(path: &Path, contents: &[u8]) -> Result<Published, KeystoreError> {
    let parent = parent_of(path);
    if !parent.is_dir() {
        return Err(KeystoreError::ParentMissing {
            path: path.to_owned(),
        });
    }
    // Write the whole file under a temporary name, then publish it with link(2), which
    // (unlike rename) fails if the target exists: a crash never leaves a half-written key
    // file, and a concurrent creator's key is never overwritten.
    let tmp = write_temporary(path, contents, "write a new master key file next to")?;
    let linked = fs::hard_link(&tmp, path);
    // The temporary name is only a staging step; failing to remove it leaves a 0600 file
    // that is not used.
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Published::AlreadyExisted),
        Err(e) => return Err(io_err("create the master key file", path)(e)),
    }
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync the directory of", path))?;
    Ok(Published::Created)
}

/// Replaces the key file at `path` (which must exist) with `contents`, atomically: the new
/// file is written and synced under a temporary name (mode 0600) and renamed over the old
/// one, and the directory is synced, so a crash leaves either the old file or the new one.
///
/// Only data-key rotation rewrites a key file, and only with contents that still open every
/// blob the old file opened (rotation adds a key before it removes one).
pub(crate) fn replace(path: &Path, contents: &[u8]) -> Result<(), KeystoreError> {
    let parent = parent_of(path);
    let tmp = write_temporary(path, contents, "replace the master key file")?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("replace the master key file", path)(e));
    }
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync the directory of", path))
}
