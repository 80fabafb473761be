//! Bringing devices in line with their assigned profiles, and recording their answers.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tokio::sync::MutexGuard;
use tracing::{debug, info, warn};

use super::{Catalog, FILE_PURPOSE};
use crate::error::{ServiceError, ServiceResult};
use crate::lifecycle::activity::entry;
use crate::lifecycle::actor_for;
use crate::ports::{
    ActivityOutcome, DeliveryStatus, EnrollmentState, InstallRecord, InstallResult, InstallState,
    NewCommand, ProfileBatch, Store, Timestamp,
};
use crate::MdmService;

/// Devices looked at per transaction (and per hold of the profile lock in a sweep).
const CHUNK: usize = 500;
/// Activity entries name at most this many devices of a bulk command.
const SAMPLE: usize = 10;

/// What a reconcile queued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileStats {
    /// Enrolled devices looked at.
    pub devices: usize,
    /// InstallProfile deliveries queued.
    pub installs: usize,
    /// RemoveProfile deliveries queued.
    pub removals: usize,
}

impl ReconcileStats {
    fn add(&mut self, o: ReconcileStats) {
        self.devices += o.devices;
        self.installs += o.installs;
        self.removals += o.removals;
    }
}

/// A device to install on or remove from.
#[derive(Debug, Clone)]
struct Target {
    serial: String,
    enrollment_id: String,
}

impl Target {
    /// The install state of this device for a profile, waiting for a command.
    fn waiting(
        &self,
        profile_id: &str,
        identifier: &str,
        sha256: &str,
        state: InstallState,
        now: Timestamp,
    ) -> InstallRecord {
        InstallRecord {
            serial: self.serial.clone(),
            profile_id: profile_id.to_string(),
            identifier: identifier.to_string(),
            sha256: sha256.to_string(),
            enrollment_id: self.enrollment_id.clone(),
            state,
            updated_at: now,
        }
    }
}

/// The changes a set of devices needs.
#[derive(Debug, Default)]
struct Plan {
    /// (profile id, sha256) → devices that need that version.
    installs: BTreeMap<(String, String), Vec<Target>>,
    /// PayloadIdentifier → devices that must lose it, with the profile id and version their
    /// state records.
    removals: BTreeMap<String, Vec<(Target, String, String)>>,
    /// Install states to delete: failed installs of profiles no longer assigned, and states
    /// left from an earlier enrollment of the device.
    drop: Vec<(String, String)>,
    devices: usize,
}

/// One line from a device's ErrorChain JSON (see `checkin`): the descriptions with their
/// domain and code.
pub(crate) fn error_text(error_chain_json: Option<&str>, status: DeliveryStatus) -> String {
    let items: Vec<serde_json::Value> = error_chain_json
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    let parts: Vec<String> = items
        .iter()
        .map(|i| {
            let text = i["USEnglishDescription"]
                .as_str()
                .or_else(|| i["LocalizedDescription"].as_str())
                .unwrap_or("no description");
            format!(
                "{text} ({} {})",
                i["ErrorDomain"].as_str().unwrap_or("?"),
                i["ErrorCode"]
            )
        })
        .collect();
    if parts.is_empty() {
        format!("the device answered {status:?} without an error chain")
    } else {
        parts.join("; ")
    }
}

impl<S: Store> MdmService<S> {
    /// Reconciles devices, taking the profile lock.
    pub async fn reconcile_devices(
        &self,
        serials: impl IntoIterator<Item = String>,
        by: &str,
    ) -> ServiceResult<ReconcileStats> {
        let guard = self.inner.profile_lock.lock().await;
        self.reconcile_locked(&guard, serials, by).await
    }

    /// Every enrolled device, a chunk per hold of the lock so that enrollments are not kept
    /// waiting behind a long sweep. Catches rule-based groups whose facts changed.
    pub async fn reconcile_all(&self) -> ServiceResult<ReconcileStats> {
        let mut stats = ReconcileStats::default();
        // Without profiles nothing is desired, and deleting a profile queued its removals.
        if self.catalog().profiles.is_empty() {
            return Ok(stats);
        }
        let serials = self.devices().enrolled_serials();
        for chunk in serials.chunks(CHUNK) {
            let guard = self.inner.profile_lock.lock().await;
            stats.add(
                self.reconcile_locked(&guard, chunk.to_vec(), "system")
                    .await?,
            );
        }
        Ok(stats)
    }

    /// Queues the commands that bring `serials` in line. The caller holds the profile lock
    /// (the guard proves it), so two reconciles never plan from the same states.
    pub(crate) async fn reconcile_locked(
        &self,
        _guard: &MutexGuard<'_, ()>,
        serials: impl IntoIterator<Item = String>,
        by: &str,
    ) -> ServiceResult<ReconcileStats> {
        let serials: Vec<String> = serials.into_iter().collect();
        let mut stats = ReconcileStats::default();
        for chunk in serials.chunks(CHUNK) {
            let plan = {
                let catalog = self.catalog();
                self.plan(&catalog, chunk)?
            };
            stats.add(self.apply(plan, by).await?);
        }
        if stats.installs + stats.removals > 0 {
            info!(
                devices = stats.devices,
                installs = stats.installs,
                removals = stats.removals,
                by,
                "profile changes queued"
            );
        }
        Ok(stats)
    }

    fn plan(&self, catalog: &Catalog, serials: &[String]) -> ServiceResult<Plan> {
        let mut plan = Plan::default();
        for serial in serials {
            let Some(facts) = self.devices().get(serial) else {
                continue;
            };
            let Some(e) = facts
                .enrollment
                .as_ref()
                .filter(|e| e.state == EnrollmentState::Enrolled)
            else {
                continue;
            };
            plan.devices += 1;
            let target = Target {
                serial: facts.serial.clone(),
                enrollment_id: e.id.clone(),
            };
            let mut states: HashMap<String, InstallRecord> = HashMap::new();
            for r in self.store().device_installs(&facts.serial)? {
                // The enrollment id of a device channel is its UDID, the same after a
                // re-enrollment: a state older than the current Authenticate is from before.
                if r.enrollment_id == e.id && r.updated_at >= e.authenticated_at {
                    states.insert(r.profile_id.clone(), r);
                } else {
                    // From an earlier enrollment: the device lost those profiles with it.
                    plan.drop.push((r.serial, r.profile_id));
                }
            }
            for p in catalog.desired(&facts) {
                let needed = match states.remove(&p.id) {
                    None => true,
                    Some(r) => match r.state {
                        InstallState::Removing { .. } => true,
                        InstallState::Installing { .. }
                        | InstallState::Installed
                        | InstallState::Failed { .. } => r.sha256 != p.sha256,
                    },
                };
                if needed {
                    plan.installs
                        .entry((p.id.clone(), p.sha256.clone()))
                        .or_default()
                        .push(target.clone());
                }
            }
            // What is left is held but no longer assigned.
            for (_, r) in states {
                match r.state {
                    InstallState::Installing { .. } | InstallState::Installed => {
                        plan.removals
                            .entry(r.identifier.clone())
                            .or_default()
                            .push((target.clone(), r.profile_id, r.sha256));
                    }
                    InstallState::Failed { .. } => plan.drop.push((r.serial, r.profile_id)),
                    InstallState::Removing { .. } => {}
                }
            }
        }
        Ok(plan)
    }

    async fn apply(&self, plan: Plan, by: &str) -> ServiceResult<ReconcileStats> {
        let mut stats = ReconcileStats {
            devices: plan.devices,
            ..ReconcileStats::default()
        };
        let now = Timestamp::now();
        let mut batch = ProfileBatch {
            delete_installs: plan.drop,
            ..ProfileBatch::default()
        };
        for ((profile_id, sha), targets) in plan.installs {
            let (name, identifier) = {
                let c = self.catalog();
                let p = c.profiles.get(&profile_id).ok_or_else(|| {
                    ServiceError::internal(
                        "PROFILE_VANISHED",
                        "a profile disappeared while its install was planned",
                    )
                })?;
                (p.name.clone(), p.identifier.clone())
            };
            let sealed_file = self.store().profile_file(&profile_id)?.ok_or_else(|| {
                ServiceError::internal(
                    "PROFILE_FILE_MISSING",
                    format!("the file of profile `{name}` is missing from the database"),
                )
            })?;
            let file = self.unseal(FILE_PURPOSE, &sealed_file)?;
            let cmd = self.profile_command(
                mdm_proto::Command::InstallProfile {
                    payload: file.to_vec(),
                },
                by,
                now,
            )?;
            let uuid = cmd.uuid.clone();
            for t in &targets {
                batch.put_installs.push(t.waiting(
                    &profile_id,
                    &identifier,
                    &sha,
                    InstallState::Installing {
                        command_uuid: uuid.clone(),
                    },
                    now,
                ));
            }
            batch.activity.push(entry(
                &actor_for(by),
                "profile.install_queued",
                std::iter::once(profile_id.clone())
                    .chain(targets.iter().take(SAMPLE).map(|t| t.serial.clone()))
                    .collect(),
                ActivityOutcome::Ok,
                format!("InstallProfile for `{name}` queued to {} devices", targets.len()),
                Some(serde_json::json!({"command_uuid": uuid, "devices": targets.len(), "sha256": sha})),
            ));
            batch
                .commands
                .push((cmd, targets.into_iter().map(|t| t.enrollment_id).collect()));
        }
        for (identifier, targets) in plan.removals {
            let cmd = self.profile_command(
                mdm_proto::Command::RemoveProfile {
                    identifier: identifier.clone(),
                },
                by,
                now,
            )?;
            let uuid = cmd.uuid.clone();
            for (t, profile_id, sha) in &targets {
                batch.put_installs.push(t.waiting(
                    profile_id,
                    &identifier,
                    sha,
                    InstallState::Removing {
                        command_uuid: uuid.clone(),
                    },
                    now,
                ));
            }
            batch.activity.push(entry(
                &actor_for(by),
                "profile.remove_queued",
                targets
                    .iter()
                    .take(SAMPLE)
                    .map(|(t, _, _)| t.serial.clone())
                    .collect(),
                ActivityOutcome::Ok,
                format!(
                    "RemoveProfile for `{identifier}` queued to {} devices",
                    targets.len()
                ),
                Some(serde_json::json!({"command_uuid": uuid, "devices": targets.len()})),
            ));
            batch.commands.push((
                cmd,
                targets
                    .into_iter()
                    .map(|(t, _, _)| t.enrollment_id)
                    .collect(),
            ));
        }
        if batch.is_empty() {
            return Ok(stats);
        }
        let request_types: Vec<String> = batch
            .commands
            .iter()
            .map(|(c, _)| c.request_type.clone())
            .collect();
        let outcomes = self.store().profile_write(batch).await?;
        let mut woken = Vec::new();
        for (rt, o) in request_types.iter().zip(outcomes) {
            if rt == "InstallProfile" {
                stats.installs += o.queued.len();
            } else {
                stats.removals += o.queued.len();
            }
            if !o.refused.is_empty() {
                debug!(
                    refused = o.refused.len(),
                    "profile command not queued to enrollments that left meanwhile"
                );
            }
            woken.extend(o.queued);
        }
        self.push_queue().mark(woken);
        Ok(stats)
    }

    /// A profile command ready to store: its payload sealed like every other command's.
    fn profile_command(
        &self,
        cmd: mdm_proto::Command,
        by: &str,
        now: Timestamp,
    ) -> ServiceResult<NewCommand> {
        let uuid = uuid::Uuid::new_v4().to_string().to_uppercase();
        let payload = cmd
            .to_payload(uuid.clone())
            .map_err(|e| ServiceError::internal("COMMAND_ENCODING_FAILED", e.to_string()))?;
        Ok(NewCommand {
            uuid,
            request_type: payload.request_type,
            payload: self.seal(crate::commands::COMMAND_PURPOSE, &payload.plist)?,
            sealed: true,
            created_at: now,
            created_by: by.to_string(),
        })
    }

    /// A device answered a command: if it was one of ours, move the install state on.
    pub(crate) async fn profile_result(
        &self,
        enrollment_id: &str,
        uuid: &str,
        status: DeliveryStatus,
        error_chain_json: Option<&str>,
    ) -> ServiceResult<()> {
        let final_status = match status {
            DeliveryStatus::Acknowledged => true,
            DeliveryStatus::Error | DeliveryStatus::CommandFormatError => false,
            _ => return Ok(()),
        };
        let Some(serial) = self.devices().key_of(enrollment_id) else {
            return Ok(());
        };
        let Some(rec) = self
            .store()
            .device_installs(&serial)?
            .into_iter()
            .find(|r| r.state.command_uuid() == Some(uuid))
        else {
            return Ok(());
        };
        let now = Timestamp::now();
        let name = self
            .catalog()
            .profiles
            .get(&rec.profile_id)
            .map_or_else(|| rec.identifier.clone(), |p| p.name.clone());
        let targets = vec![
            serial.clone(),
            enrollment_id.to_string(),
            rec.profile_id.clone(),
        ];
        let (next, activity) = match (&rec.state, final_status) {
            (InstallState::Installing { .. }, true) => (
                Some(InstallState::Installed),
                entry(
                    "device",
                    "profile.installed",
                    targets,
                    ActivityOutcome::Ok,
                    format!("profile `{name}` installed"),
                    Some(serde_json::json!({"command_uuid": uuid, "sha256": rec.sha256})),
                ),
            ),
            (InstallState::Installing { .. }, false) => {
                let error = error_text(error_chain_json, status);
                (
                    Some(InstallState::Failed {
                        error: error.clone(),
                    }),
                    entry(
                        "device",
                        "profile.install_failed",
                        targets,
                        ActivityOutcome::Failed,
                        format!("profile `{name}` was not installed: {error}"),
                        Some(serde_json::json!({"command_uuid": uuid, "sha256": rec.sha256})),
                    ),
                )
            }
            (InstallState::Removing { .. }, ok) => (
                None,
                entry(
                    "device",
                    "profile.removed",
                    targets,
                    if ok {
                        ActivityOutcome::Ok
                    } else {
                        ActivityOutcome::Failed
                    },
                    if ok {
                        format!("profile `{name}` removed")
                    } else {
                        // Usually the profile was already gone (removed by the user, or never
                        // installed): either way the device does not hold it from us.
                        format!(
                            "RemoveProfile for `{name}` failed: {}",
                            error_text(error_chain_json, status)
                        )
                    },
                    Some(serde_json::json!({"command_uuid": uuid})),
                ),
            ),
            (InstallState::Installed | InstallState::Failed { .. }, _) => return Ok(()),
        };
        let applied = self
            .store()
            .install_result(InstallResult {
                serial: serial.clone(),
                profile_id: rec.profile_id.clone(),
                command_uuid: uuid.to_string(),
                next: next.map(|state| InstallRecord {
                    state,
                    updated_at: now,
                    ..rec.clone()
                }),
                activity: vec![activity],
            })
            .await?;
        if !applied {
            debug!(
                serial,
                command = uuid,
                "profile answer for a state that moved on; ignored"
            );
        }
        Ok(())
    }

    /// A device (re-)authenticated or checked out: profiles installed under its previous
    /// enrollment went with it, so their states go too.
    pub(crate) async fn forget_installs(&self, enrollment_id: &str) -> ServiceResult<()> {
        let Some(serial) = self.devices().key_of(enrollment_id) else {
            return Ok(());
        };
        let states = self.store().device_installs(&serial)?;
        if states.is_empty() {
            return Ok(());
        }
        let batch = ProfileBatch {
            delete_installs: states
                .into_iter()
                .map(|r| (r.serial, r.profile_id))
                .collect(),
            ..ProfileBatch::default()
        };
        if let Err(e) = self.store().profile_write(batch).await {
            // Harmless if it stays: reconcile ignores states of an earlier enrollment.
            warn!(serial, error = %e, "cannot clear the profile states of a re-enrolled device");
        }
        Ok(())
    }
}

/// How often every enrolled device is reconciled.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// Reconciles every enrolled device shortly after start (catching anything a crash cut short)
/// and then every [`SWEEP_EVERY`], until `stop` turns true.
pub async fn run_sweeper<S: Store>(
    service: MdmService<S>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut wait = std::time::Duration::from_secs(30);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        wait = SWEEP_EVERY;
        match service.reconcile_all().await {
            Ok(s) if s.installs + s.removals > 0 => {
                info!(
                    devices = s.devices,
                    installs = s.installs,
                    removals = s.removals,
                    "profile sweep queued changes"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "profile sweep failed; retrying at the next one"),
        }
    }
}
