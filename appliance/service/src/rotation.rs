//! Rotation of the keystore's data key: every stored secret re-sealed under a new key, the old
//! key removed from the key file.
//!
//! Three steps, each safe to be cut short by a crash or a power cut:
//! 1. the keystore writes its key file with a new current key and keeps the old one in it
//!    (`Sealer::begin_rotation`); new secrets are sealed under the new key from then on;
//! 2. the store passes every sealed blob in the database through `Sealer::reseal_blob`, in
//!    batches of ordinary writes (`BackupStore::reseal_all`), twice: the second pass catches a
//!    blob a request sealed under the old key just before the switch and wrote just after the
//!    first pass went by it;
//! 3. once a pass finds nothing left to re-seal, the key file is rewritten with the new key
//!    only (`Sealer::finish_rotation`).
//!
//! A rotation cut short leaves the key file with both keys: the daemon resumes it at its next
//! start ([`MdmService::resume_rotation`]). Backups wait while a rotation runs and are refused
//! while one is unfinished: a backup carries one data key. Backups made before a rotation
//! still restore (they carry the old key and a database sealed under it), so nothing forces an
//! operator to throw them away, but a backup is the old key's last copy: rotating because a
//! key may have leaked means making a new backup and destroying the old ones.

use std::sync::Arc;
use std::time::Instant;

use mdm_keystore::{KeystoreError, Sealer};
use serde::Serialize;
use tracing::{info, warn};

use crate::error::{ErrorKind, ServiceError, ServiceResult};
use crate::lifecycle::activity::entry;
use crate::ports::{ActivityOutcome, ResealReport, Rewrap, Store};
use crate::MdmService;

/// Re-seal passes before giving up on reaching one that finds nothing left (each pass after
/// the first only meets blobs sealed during the previous one, which stopped at the switch).
const MAX_PASSES: usize = 4;

/// What a rotation did.
#[derive(Debug, Clone, Serialize)]
pub struct RotationReport {
    /// The data key before (hex id, as blobs record it).
    pub previous_key_id: Option<String>,
    /// The data key now.
    pub key_id: Option<String>,
    /// `true` when this finished a rotation an earlier run had begun.
    pub resumed: bool,
    /// Records read, blobs found and re-sealed over all passes.
    pub records: u64,
    pub blobs: u64,
    pub resealed: u64,
    /// Passes over the database.
    pub passes: usize,
    pub elapsed_ms: u64,
}

fn keystore_failure(step: &str, e: KeystoreError) -> ServiceError {
    match e {
        KeystoreError::RotationUnsupported => ServiceError::new(
            ErrorKind::Unavailable,
            "KEYSTORE_ROTATION_UNSUPPORTED",
            "this keystore cannot rotate its data key",
        ),
        other => ServiceError::new(
            ErrorKind::Unavailable,
            "KEYSTORE_ROTATION_FAILED",
            format!(
                "the data key rotation stopped while it tried to {step}: {other}; nothing is \
                 lost (the key file keeps every key still needed), and the rotation resumes \
                 when it is started again or at the next start of the appliance"
            ),
        ),
    }
}

impl<S: Store> MdmService<S> {
    /// Rotates the keystore's data key (see the module documentation), or finishes a rotation
    /// an earlier run began. `by` is the admin token's name (or `system` at start-up).
    pub async fn rotate_data_key(&self, by: &str) -> ServiceResult<RotationReport> {
        let _maintenance = self.inner.maintenance.lock().await;
        let started = Instant::now();
        let sealer = Arc::clone(&self.inner.sealer);
        let before = sealer.describe();
        let resumed = !before.previous_key_ids.is_empty();
        let previous_key_id = if resumed {
            before.previous_key_ids.first().cloned()
        } else {
            before.key_id.clone()
        };

        let result = self.rotate_locked(&sealer).await;
        let after = sealer.describe();
        let actor = crate::lifecycle::actor_for(by);
        match result {
            Ok((total, passes)) => {
                let report = RotationReport {
                    previous_key_id,
                    key_id: after.key_id,
                    resumed,
                    records: total.records,
                    blobs: total.blobs,
                    resealed: total.resealed,
                    passes,
                    elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                };
                info!(
                    by,
                    previous_key_id = report.previous_key_id.as_deref().unwrap_or("-"),
                    key_id = report.key_id.as_deref().unwrap_or("-"),
                    resumed,
                    records = report.records,
                    blobs = report.blobs,
                    resealed = report.resealed,
                    passes,
                    elapsed_ms = report.elapsed_ms,
                    "data key rotated"
                );
                self.log_activity_now(entry(
                    &actor,
                    "keystore.rotated",
                    Vec::new(),
                    ActivityOutcome::Ok,
                    format!(
                        "data key rotated: {} secrets re-sealed under key {}",
                        report.resealed,
                        report.key_id.as_deref().unwrap_or("-")
                    ),
                    serde_json::to_value(&report).ok(),
                ))
                .await?;
                Ok(report)
            }
            Err(e) => {
                warn!(by, code = e.code, error = %e.message, "data key rotation failed");
                self.log_activity(entry(
                    &actor,
                    "keystore.rotated",
                    Vec::new(),
                    ActivityOutcome::Failed,
                    format!("data key rotation failed: {}", e.message),
                    None,
                ));
                Err(e)
            }
        }
    }

    /// Finishes a rotation a crash or failure left under way (the key file lists older keys);
    /// `None` when there is none. Called by the daemon at start.
    pub async fn resume_rotation(&self) -> ServiceResult<Option<RotationReport>> {
        if self.inner.sealer.describe().previous_key_ids.is_empty() {
            return Ok(None);
        }
        warn!("a data key rotation was left unfinished; resuming it");
        self.rotate_data_key("system").await.map(Some)
    }

    /// Fails with `KEYSTORE_ROTATION_IN_PROGRESS` while a rotation is unfinished.
    pub(crate) fn refuse_during_rotation(&self, what: &str) -> ServiceResult<()> {
        if self.inner.sealer.describe().previous_key_ids.is_empty() {
            return Ok(());
        }
        Err(ServiceError::conflict(
            "KEYSTORE_ROTATION_IN_PROGRESS",
            format!(
                "{what} is not possible while a data key rotation is unfinished: run `mdmctl \
                 keystore rotate` (or restart the appliance) to finish it, then try again"
            ),
        ))
    }

    /// Holds the maintenance lock for a backup.
    pub(crate) async fn maintenance(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.maintenance.lock().await
    }

    async fn rotate_locked(
        &self,
        sealer: &Arc<dyn Sealer>,
    ) -> ServiceResult<(ResealReport, usize)> {
        let begin = Arc::clone(sealer);
        tokio::task::spawn_blocking(move || begin.begin_rotation())
            .await
            .map_err(|e| ServiceError::internal("KEYSTORE_ROTATION_FAILED", e.to_string()))?
            .map_err(|e| keystore_failure("write a new data key", e))?;

        let reseal = Arc::clone(sealer);
        let rewrap: Rewrap =
            Arc::new(move |blob: &[u8]| reseal.reseal_blob(blob).map_err(|e| e.to_string()));
        let mut total = ResealReport::default();
        let mut passes = 0;
        loop {
            passes += 1;
            let pass = self
                .store()
                .reseal_all(Arc::clone(&rewrap))
                .await
                .map_err(|e| {
                    ServiceError::new(
                        ErrorKind::Unavailable,
                        "KEYSTORE_ROTATION_FAILED",
                        format!(
                            "the data key rotation stopped while re-sealing stored secrets: {e}; \
                             nothing is lost (the key file keeps the old key), and the rotation \
                             resumes when it is started again or at the next start"
                        ),
                    )
                })?;
            total.records += pass.records;
            total.blobs += pass.blobs;
            total.resealed += pass.resealed;
            // The first pass always needs a second to catch blobs sealed before the switch and
            // written after the pass went by; one that re-sealed nothing proves none is left.
            if passes > 1 && pass.resealed == 0 {
                break;
            }
            if passes == MAX_PASSES {
                return Err(ServiceError::new(
                    ErrorKind::Unavailable,
                    "KEYSTORE_ROTATION_FAILED",
                    format!(
                        "the data key rotation made {MAX_PASSES} passes and still found secrets \
                         under the old key; the old key stays in the key file; start the \
                         rotation again"
                    ),
                ));
            }
        }

        let finish = Arc::clone(sealer);
        tokio::task::spawn_blocking(move || finish.finish_rotation())
            .await
            .map_err(|e| ServiceError::internal("KEYSTORE_ROTATION_FAILED", e.to_string()))?
            .map_err(|e| keystore_failure("remove the old key from the key file", e))?;
        Ok((total, passes))
    }
}
