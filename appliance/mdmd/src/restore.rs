//! `mdmd restore`: puts an encrypted backup (`POST /api/v1/backup`, `mdmctl backup create`)
//! into a data directory, sealing its data key under this machine's keystore.
//!
//! Nothing in the data directory changes until the whole backup has been decrypted and
//! verified, the database opens, and the new key file works: the database and key file are
//! written under temporary names and renamed into place last. With `force`, what the
//! directory held is moved aside (`*.before-restore-TIME`), never deleted.
//!
//! With `key_only` (the recovery path of a TPM key file that no longer opens, e.g. after the
//! PCRs it was bound to changed), only the backup's data key is used: it is sealed again under
//! this machine's keystore, checked against the database already in the directory (which
//! stays as it is), and the old key file is moved aside.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use mdm_keystore::{BackupReader, Sealer, SoftSealer, TpmSealer, Zeroizing, DATA_KEY_LEN};

use crate::config::KeystoreBackend;
use crate::{DB_FILE, SOFT_KEY_FILE, TPM_KEY_FILE};

/// The entries a backup holds (as `mdm_service::backup` writes them).
const DATA_KEY_ENTRY: &str = mdm_service::backup::DATA_KEY_ENTRY;
const DATABASE_ENTRY: &str = mdm_service::backup::DATABASE_ENTRY;

/// What to restore, and where.
#[derive(Debug)]
pub struct RestoreOptions {
    pub data_dir: PathBuf,
    pub from: PathBuf,
    pub passphrase: Zeroizing<String>,
    pub keystore: KeystoreBackend,
    /// The TPM interface, for the TPM keystore.
    pub tcti: String,
    /// Replace an appliance already in `data_dir` (moved aside, not deleted).
    pub force: bool,
    /// Recover only the key file of the appliance in `data_dir`, keeping its database.
    pub key_only: bool,
}

/// What a restore did.
#[derive(Debug)]
pub struct RestoreReport {
    /// The backup's description (when and where it was made).
    pub meta: serde_json::Value,
    pub database_bytes: u64,
    pub key_file: PathBuf,
    /// Files of the previous appliance, moved aside.
    pub moved_aside: Vec<PathBuf>,
}

type Reader = BackupReader<std::io::BufReader<fs::File>>;

/// Opens a backup and reads its header (nothing is decrypted yet).
fn open_backup(from: &Path) -> anyhow::Result<Reader> {
    let file = fs::File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    BackupReader::open(std::io::BufReader::new(file)).with_context(|| format!("{}", from.display()))
}

/// The backup's plaintext description, without the passphrase.
pub fn describe(from: &Path) -> anyhow::Result<serde_json::Value> {
    Ok(open_backup(from)?.meta().clone())
}

/// Temporary files removed unless kept.
struct Staged(Vec<PathBuf>);

impl Drop for Staged {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

fn key_file_name(backend: KeystoreBackend) -> &'static str {
    match backend {
        KeystoreBackend::Software => SOFT_KEY_FILE,
        KeystoreBackend::Tpm => TPM_KEY_FILE,
    }
}

/// Restores `opts.from` into `opts.data_dir`. See the module documentation.
pub fn restore(opts: &RestoreOptions) -> anyhow::Result<RestoreReport> {
    let dir = &opts.data_dir;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let existing: Vec<PathBuf> = [DB_FILE, SOFT_KEY_FILE, TPM_KEY_FILE]
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.exists())
        .collect();
    if opts.key_only && !dir.join(DB_FILE).exists() {
        bail!(
            "{} holds no database: --key-only recovers the key file of an existing appliance; \
             to restore the whole backup, leave --key-only out",
            dir.display()
        );
    }
    if !existing.is_empty() && !opts.force && !opts.key_only {
        bail!(
            "{} already holds an appliance ({}); restore into an empty directory, or pass --force to replace it (its files are moved aside, not deleted)",
            dir.display(),
            existing
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let mut backup = open_backup(&opts.from)?
        .unlock(&opts.passphrase)
        .with_context(|| format!("{}", opts.from.display()))?;
    let meta = backup.meta().clone();

    let tag = uuid::Uuid::new_v4().simple().to_string();
    let tmp_db = dir.join(format!(".restore-{tag}.redb"));
    let tmp_key = dir.join(format!(".restore-{tag}.key"));
    let mut staged = Staged(vec![tmp_db.clone(), tmp_key.clone()]);

    let mut key = None;
    let mut database_bytes = None;
    while let Some(entry) = backup.next_entry()? {
        match entry.name.as_str() {
            DATA_KEY_ENTRY => key = Some(backup.read_entry(DATA_KEY_LEN)?),
            DATABASE_ENTRY if opts.key_only => {
                // Read to the end all the same: the whole backup must verify.
                database_bytes = Some(backup.copy_entry_to(&mut std::io::sink())?);
            }
            DATABASE_ENTRY => {
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp_db)
                    .with_context(|| format!("cannot create {}", tmp_db.display()))?;
                let n = backup.copy_entry_to(&mut out)?;
                out.sync_all()
                    .context("cannot write the restored database")?;
                database_bytes = Some(n);
            }
            // Entries added by later versions are skipped (still verified).
            other => tracing::warn!(
                entry = other,
                "backup entry not known to this version; skipped"
            ),
        }
    }
    // `next_entry` returned `None`: the whole backup verified.
    let key = key.context("the backup holds no data key; it is not a complete appliance backup")?;
    let database_bytes = database_bytes
        .context("the backup holds no database; it is not a complete appliance backup")?;
    let key: Zeroizing<[u8; DATA_KEY_LEN]> = {
        let mut k = Zeroizing::new([0u8; DATA_KEY_LEN]);
        if key.len() != k.len() {
            bail!(
                "the backup's data key has {} bytes, expected {DATA_KEY_LEN}",
                key.len()
            );
        }
        k.copy_from_slice(&key);
        k
    };

    // The database must open with this version (schema, recovery after the live copy).
    if !opts.key_only {
        let store = mdm_store::RedbStore::open(&tmp_db, mdm_store::StoreOptions::default())
            .map_err(|e| anyhow::anyhow!("the restored database does not open: {e}"))?;
        store
            .close()
            .map_err(|e| anyhow::anyhow!("the restored database does not close: {e}"))?;
    }

    // Seal the data key under this machine's keystore, and prove it opens what it sealed.
    let sealer: Box<dyn Sealer> = match opts.keystore {
        KeystoreBackend::Software => Box::new(
            SoftSealer::create_with_data_key(&tmp_key, key)
                .context("cannot write the software keystore's key file")?,
        ),
        KeystoreBackend::Tpm => Box::new(
            TpmSealer::create_with_data_key(&opts.tcti, &tmp_key, key).with_context(|| {
                format!("cannot seal the data key with the TPM ({})", opts.tcti)
            })?,
        ),
    };
    let probe = sealer
        .seal("restore-check", b"restore")
        .context("the new keystore cannot seal")?;
    let back = sealer
        .unseal("restore-check", &probe)
        .context("the new keystore cannot unseal")?;
    if back.as_slice() != b"restore" {
        bail!("the new keystore does not give back what it sealed");
    }
    if opts.key_only {
        check_key_opens_database(sealer.as_ref(), &dir.join(DB_FILE))?;
        drop(sealer);
        return put_key_file_in_place(opts, &tmp_key, meta, database_bytes, &mut staged);
    }
    drop(sealer);

    let moved_aside = move_aside(&existing, "before-restore")?;
    let key_file = place_key_file(opts, &tmp_key)?;
    fs::rename(&tmp_db, dir.join(DB_FILE))
        .with_context(|| format!("cannot put {} in place", DB_FILE))?;
    settle(dir, &mut staged)?;
    Ok(RestoreReport {
        meta,
        database_bytes,
        key_file,
        moved_aside,
    })
}

/// Proves that `sealer` holds the data key the database at `db` is sealed under, by opening
/// the CA key (the database must not be in use: the daemon is stopped).
fn check_key_opens_database(sealer: &dyn Sealer, db: &Path) -> anyhow::Result<()> {
    let store =
        mdm_store::RedbStore::open(db, mdm_store::StoreOptions::default()).map_err(|e| {
            anyhow::anyhow!(
                "the database {} does not open (stop the appliance first): {e}",
                db.display()
            )
        })?;
    let opened = mdm_service::authority::sealer_opens_store(&store, sealer);
    store
        .close()
        .map_err(|e| anyhow::anyhow!("the database does not close: {e}"))?;
    opened.map_err(|e| {
        anyhow::anyhow!(
            "the backup's data key does not open this database ({}); use a backup made after \
             the database's last data-key rotation",
            e.message
        )
    })
}

/// `--key-only`: the checked key file replaces the one in the directory (moved aside).
fn put_key_file_in_place(
    opts: &RestoreOptions,
    tmp_key: &Path,
    meta: serde_json::Value,
    database_bytes: u64,
    staged: &mut Staged,
) -> anyhow::Result<RestoreReport> {
    let dir = &opts.data_dir;
    let old_keys: Vec<PathBuf> = [SOFT_KEY_FILE, TPM_KEY_FILE]
        .iter()
        .map(|name| dir.join(name))
        .filter(|p| p.exists())
        .collect();
    let moved_aside = move_aside(&old_keys, "before-recover")?;
    let key_file = place_key_file(opts, tmp_key)?;
    settle(dir, staged)?;
    Ok(RestoreReport {
        meta,
        database_bytes,
        key_file,
        moved_aside,
    })
}

/// Renames each of `paths` to `<name>.<label>-<time>` beside it, so that nothing an earlier
/// appliance wrote is deleted; returns where they went.
fn move_aside(paths: &[PathBuf], label: &str) -> anyhow::Result<Vec<PathBuf>> {
    let stamp = mdm_service::ports::Timestamp::now()
        .to_rfc3339()
        .replace([':', '-'], "");
    let mut moved = Vec::new();
    for old in paths {
        let name = old
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let aside = old.with_file_name(format!("{name}.{label}-{stamp}"));
        fs::rename(old, &aside).with_context(|| format!("cannot move {} aside", old.display()))?;
        moved.push(aside);
    }
    Ok(moved)
}

/// Moves the checked key file to the name its keystore backend opens.
fn place_key_file(opts: &RestoreOptions, tmp_key: &Path) -> anyhow::Result<PathBuf> {
    let key_file = opts.data_dir.join(key_file_name(opts.keystore));
    fs::rename(tmp_key, &key_file)
        .with_context(|| format!("cannot put {} in place", key_file.display()))?;
    Ok(key_file)
}

/// Once every file is in place: nothing staged is left to remove, and the directory is
/// synced so that the renames survive a power cut.
fn settle(dir: &Path, staged: &mut Staged) -> anyhow::Result<()> {
    staged.0.clear();
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}
