//! Encrypted backups of the whole appliance, for restoring onto other hardware.
//!
//! A backup holds the database file as of one commit and the keystore's data key, encrypted
//! together under a key derived from an admin's passphrase (`mdm_keystore::BackupWriter`:
//! Argon2id, AES-256-GCM chunks). The sealed blobs inside the database stay as they are; a
//! restore (`mdmd restore`) seals the same data key under the new machine's keystore, so every
//! secret opens there and nowhere else. The passphrase is the only thing between a stolen
//! backup and every secret: it is never stored, logged or shown.

use std::path::PathBuf;

use serde::Serialize;
use tracing::{info, warn};

use crate::accounts::Password;
use crate::error::{ErrorKind, ServiceError, ServiceResult};
use crate::lifecycle::activity::entry;
use crate::ports::{ActivityOutcome, Store, Timestamp};
use crate::MdmService;

/// The entry holding the keystore's data key.
pub const DATA_KEY_ENTRY: &str = "data-key";
/// The entry holding the database file.
pub const DATABASE_ENTRY: &str = "mdm.redb";
/// What the plaintext description of a backup says it is.
pub const FORMAT: &str = "mdm-appliance-backup";

/// A finished backup, in memory.
#[derive(Debug)]
pub struct Backup {
    pub bytes: Vec<u8>,
    pub file_name: String,
    pub database_bytes: u64,
}

/// The backup's plaintext description (readable without the passphrase, authenticated by it).
#[derive(Debug, Serialize)]
struct Meta<'a> {
    format: &'static str,
    created_at: String,
    created_by: &'a str,
    appliance_version: &'static str,
    organization: &'a str,
    base_url: &'a str,
    keystore_key_id: Option<String>,
}

fn failed(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::internal(
        "BACKUP_FAILED",
        format!("the backup could not be made: {e}"),
    )
}

fn keystore_error(e: mdm_keystore::KeystoreError) -> ServiceError {
    match e {
        mdm_keystore::KeystoreError::BackupPassphraseTooShort { .. } => {
            ServiceError::bad_request("BACKUP_PASSPHRASE_POLICY", format!("passphrase: {e}"))
        }
        other => failed(other),
    }
}

impl<S: Store> MdmService<S> {
    /// Makes an encrypted backup of the whole appliance. Writes wait while the database file
    /// is copied (a consistent copy as of the last commit); the encryption runs afterwards, off
    /// the async threads.
    pub async fn create_backup(&self, passphrase: Password, by: &str) -> ServiceResult<Backup> {
        let Some(dir) = self.config().state_dir.clone() else {
            return Err(ServiceError::new(
                ErrorKind::Unavailable,
                "BACKUP_UNAVAILABLE",
                "this appliance has no state directory configured for backups",
            ));
        };
        // A rotation re-seals the database under a new key: a backup waits for it, and one
        // left unfinished must be finished first (a backup carries a single data key).
        let _maintenance = self.maintenance().await;
        self.refuse_during_rotation("a backup")?;
        let key = self.sealer().export_data_key().ok_or_else(|| {
            ServiceError::new(
                ErrorKind::Unavailable,
                "BACKUP_UNAVAILABLE",
                "this keystore cannot hand out its data key for a backup",
            )
        })?;
        let now = Timestamp::now();
        let meta = serde_json::to_value(Meta {
            format: FORMAT,
            created_at: now.to_rfc3339(),
            created_by: by,
            appliance_version: env!("CARGO_PKG_VERSION"),
            organization: &self.config().organization,
            base_url: &self.config().base_url,
            keystore_key_id: self.sealer().describe().key_id,
        })
        .map_err(failed)?;
        let tmp: PathBuf = dir.join(format!(".backup-{}.redb", uuid::Uuid::new_v4()));
        let made = async {
            let database_bytes = self.store().copy_to(&tmp).await?;
            let path = tmp.clone();
            let bytes = tokio::task::spawn_blocking(move || {
                let pass = passphrase.expose();
                let mut w = mdm_keystore::BackupWriter::new(Vec::new(), pass, &meta)
                    .map_err(keystore_error)?;
                w.add_sized(DATA_KEY_ENTRY, key.len() as u64, &key[..])
                    .map_err(keystore_error)?;
                let file = std::fs::File::open(&path).map_err(failed)?;
                w.add(DATABASE_ENTRY, file).map_err(keystore_error)?;
                w.finish().map_err(keystore_error)
            })
            .await
            .map_err(failed)??;
            Ok::<_, ServiceError>((bytes, database_bytes))
        }
        .await;
        if let Err(e) = std::fs::remove_file(&tmp) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(path = %tmp.display(), error = %e, "cannot remove the backup's temporary copy of the database");
            }
        }
        let (bytes, database_bytes) = match made {
            Ok(x) => x,
            Err(e) => {
                // An admin action: recorded before the refusal answers, like its success.
                let logged = self
                    .log_activity_now(entry(
                        &crate::lifecycle::actor_for(by),
                        "backup.created",
                        Vec::new(),
                        ActivityOutcome::Failed,
                        format!("backup failed: {}", e.message),
                        None,
                    ))
                    .await;
                if let Err(le) = logged {
                    warn!(error = %le, "cannot record a failed backup in the activity log");
                }
                return Err(e);
            }
        };
        let stamp = now.to_rfc3339().replace([':', '-'], "");
        let file_name = format!("appliance-{}.mdmbackup", &stamp[..stamp.len().min(15)]);
        info!(
            by,
            database_bytes,
            backup_bytes = bytes.len(),
            "backup created"
        );
        self.log_activity_now(entry(
            &crate::lifecycle::actor_for(by),
            "backup.created",
            Vec::new(),
            ActivityOutcome::Ok,
            format!(
                "encrypted backup created ({} bytes, database {database_bytes} bytes)",
                bytes.len()
            ),
            Some(serde_json::json!({"bytes": bytes.len(), "database_bytes": database_bytes})),
        ))
        .await?;
        Ok(Backup {
            bytes,
            file_name,
            database_bytes,
        })
    }
}
