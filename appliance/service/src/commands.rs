//! Queueing commands for enrollments and reading back their results.

use serde::Serialize;
use tracing::info;

use crate::error::{ServiceError, ServiceResult};
use crate::ports::{
    CommandRecord, DeliveryPage, DeliveryRecord, DeliveryStatus, EnrollmentRecord, NewCommand,
    PruneStats, Store, Timestamp,
};
use crate::MdmService;

/// A command plist as the admin API shows it: any embedded data (an InstallProfile's profile,
/// which can hold Wi-Fi passwords and private keys; certificates; tokens) is replaced by a
/// note of its size. Devices get the plist as queued; readers of the API, auditors included,
/// get what it does without what it carries.
fn redacted_for_display(plist_bytes: &[u8]) -> Vec<u8> {
    fn redact(value: &mut plist::Value) {
        match value {
            plist::Value::Data(data) => {
                *value = plist::Value::String(format!("({} bytes of data, not shown)", data.len()));
            }
            plist::Value::Dictionary(dict) => dict.values_mut().for_each(redact),
            plist::Value::Array(items) => items.iter_mut().for_each(redact),
            _ => {}
        }
    }
    match plist::Value::from_reader(std::io::Cursor::new(plist_bytes)) {
        Ok(mut value) => {
            redact(&mut value);
            let mut out = Vec::new();
            match value.to_writer_xml(&mut out) {
                Ok(()) => out,
                Err(_) => b"(the command could not be shown)".to_vec(),
            }
        }
        // Every queued payload was built or checked as a plist; should one not parse, its
        // bytes are still not shown (they may hold a secret).
        Err(_) => b"(the command could not be shown)".to_vec(),
    }
}

/// Most targets one enqueue call may name; larger fan-outs are split by the caller.
pub const MAX_TARGETS: usize = 10_000;
/// The keystore purpose of stored command payloads. Every payload is sealed: an InstallProfile
/// can carry Wi-Fi passwords and private keys, and the queue should not be where they leak.
pub(crate) const COMMAND_PURPOSE: &str = "command-payload";

/// Largest raw command plist accepted (InstallProfile payloads included).
pub const MAX_COMMAND_BYTES: usize = 4 * 1024 * 1024;

/// What to send.
#[derive(Debug, Clone)]
pub enum CommandSpec {
    /// A typed command built by `mdm-proto`.
    Typed(mdm_proto::Command),
    /// An admin-supplied plist `{Command: {RequestType, ...}}`; its CommandUUID is replaced.
    Raw(Vec<u8>),
}

/// The result of queueing a command.
#[derive(Debug, Clone, Serialize)]
pub struct Enqueued {
    pub command_uuid: String,
    pub request_type: String,
    pub queued: Vec<String>,
    /// Unknown or checked-out enrollments.
    pub refused: Vec<String>,
}

/// A command with one page of its per-enrollment state and counts over all of it.
#[derive(Debug, Clone, Serialize)]
pub struct CommandView {
    pub command: CommandRecord,
    /// Deliveries in enrollment-id order, at most the page size asked for.
    pub deliveries: Vec<DeliveryRecord>,
    /// How many deliveries are in each status, over every page.
    pub counts: Vec<(DeliveryStatus, u64)>,
    /// The enrollment id to continue after, when the page was full.
    pub next: Option<String>,
}

/// The largest page of deliveries a command view holds: a command sent to every device of a
/// large site has that many deliveries, each with the device's whole report.
pub const MAX_DELIVERIES_PER_PAGE: usize = 1000;

/// An enrollment with what waits for it.
#[derive(Debug, Clone, Serialize)]
pub struct EnrollmentView {
    pub enrollment: EnrollmentRecord,
    pub queued_commands: u64,
}

impl<S: Store> MdmService<S> {
    /// Queue a command for each target, in one transaction.
    pub async fn enqueue(
        &self,
        spec: CommandSpec,
        targets: Vec<String>,
        created_by: &str,
    ) -> ServiceResult<Enqueued> {
        let mut targets = targets;
        targets.sort();
        targets.dedup();
        targets.retain(|t| !t.trim().is_empty());
        if targets.is_empty() {
            return Err(ServiceError::bad_request(
                "INVALID_FIELD",
                "targets: name at least one enrollment",
            ));
        }
        if targets.len() > MAX_TARGETS {
            return Err(ServiceError::bad_request(
                "INVALID_FIELD",
                format!("targets: at most {MAX_TARGETS} per request"),
            ));
        }
        let uuid = uuid::Uuid::new_v4().to_string().to_uppercase();
        let payload = match spec {
            CommandSpec::Typed(cmd) => cmd
                .to_payload(uuid.clone())
                .map_err(|e| ServiceError::bad_request("COMMAND_INVALID", e.to_string()))?,
            CommandSpec::Raw(raw) => {
                if raw.len() > MAX_COMMAND_BYTES {
                    return Err(ServiceError::new(
                        crate::ErrorKind::TooLarge,
                        "COMMAND_TOO_LARGE",
                        format!("command plists are limited to {MAX_COMMAND_BYTES} bytes"),
                    ));
                }
                mdm_proto::payload_from_raw(&raw, uuid.clone())
                    .map_err(|e| ServiceError::bad_request("COMMAND_INVALID", e.to_string()))?
            }
        };
        // DeviceConfigured releases a device from Setup Assistant; sent to a device that is
        // not waiting there it means nothing good, so such targets are refused here.
        let mut held_back = Vec::new();
        if payload.request_type == "DeviceConfigured" {
            let mut keep = Vec::with_capacity(targets.len());
            for t in targets {
                let waiting = self.store().enrollment(&t)?.is_some_and(|r| {
                    r.state == crate::ports::EnrollmentState::Enrolled && r.awaiting_configuration
                });
                if waiting {
                    keep.push(t);
                } else {
                    held_back.push(t);
                }
            }
            targets = keep;
            if targets.is_empty() {
                return Err(ServiceError::conflict(
                    "NOT_AWAITING_CONFIGURATION",
                    format!(
                        "DeviceConfigured is only sent to devices waiting in Setup Assistant; none of these is: {}",
                        held_back.join(", ")
                    ),
                ));
            }
        }
        let mut outcome = self
            .store()
            .enqueue(
                NewCommand {
                    uuid: payload.uuid.clone(),
                    request_type: payload.request_type.clone(),
                    payload: self.seal(COMMAND_PURPOSE, &payload.plist)?,
                    sealed: true,
                    created_at: Timestamp::now(),
                    created_by: created_by.to_string(),
                },
                targets,
            )
            .await?;
        outcome.refused.extend(held_back);
        // Wake them: the pusher coalesces, so a burst of commands is one push per device.
        self.push_queue().mark(outcome.queued.iter().cloned());
        if outcome.queued.is_empty() {
            return Err(ServiceError::not_found(
                "ENROLLMENT_NOT_FOUND",
                format!(
                    "none of the targets is an active enrollment: {}",
                    outcome.refused.join(", ")
                ),
            ));
        }
        info!(
            command = %payload.uuid,
            request_type = %payload.request_type,
            queued = outcome.queued.len(),
            refused = outcome.refused.len(),
            by = created_by,
            "command queued"
        );
        let mut activity_targets = Vec::with_capacity(outcome.queued.len() * 2);
        for id in &outcome.queued {
            activity_targets.extend(self.activity_targets(id));
        }
        let actor = crate::lifecycle::actor_for(created_by);
        self.log_activity(crate::lifecycle::activity::entry(
            &actor,
            "command.queued",
            activity_targets,
            crate::ports::ActivityOutcome::Ok,
            format!(
                "{} queued for {} enrollment(s)",
                payload.request_type,
                outcome.queued.len()
            ),
            Some(serde_json::json!({
                "command_uuid": payload.uuid,
                "request_type": payload.request_type,
                "refused": outcome.refused,
            })),
        ));
        Ok(Enqueued {
            command_uuid: payload.uuid,
            request_type: payload.request_type,
            queued: outcome.queued,
            refused: outcome.refused,
        })
    }

    /// A command, the deliveries after enrollment `after` (at most `limit`, capped at
    /// [`MAX_DELIVERIES_PER_PAGE`]) and the counts of all its deliveries by status.
    pub fn command_view(
        &self,
        uuid: &str,
        after: Option<&str>,
        limit: usize,
    ) -> ServiceResult<CommandView> {
        let command = self.store().command(uuid)?.ok_or_else(|| {
            ServiceError::not_found("COMMAND_NOT_FOUND", format!("no command {uuid}"))
        })?;
        let limit = limit.clamp(1, MAX_DELIVERIES_PER_PAGE);
        let DeliveryPage { deliveries, counts } = self.store().delivery_page(uuid, after, limit)?;
        let next = (deliveries.len() == limit)
            .then(|| deliveries.last().map(|d| d.enrollment_id.clone()))
            .flatten();
        let mut command = command;
        if command.sealed {
            let plain = self.unseal(COMMAND_PURPOSE, &command.payload)?;
            command.payload = redacted_for_display(&plain);
            command.sealed = false;
        }
        Ok(CommandView {
            command,
            deliveries,
            counts,
            next,
        })
    }

    /// One enrollment.
    pub fn enrollment_view(&self, id: &str) -> ServiceResult<EnrollmentView> {
        let enrollment = self.store().enrollment(id)?.ok_or_else(|| {
            ServiceError::not_found("ENROLLMENT_NOT_FOUND", format!("no enrollment {id}"))
        })?;
        let queued_commands = self.store().queued_count(id)?;
        Ok(EnrollmentView {
            enrollment,
            queued_commands,
        })
    }

    /// Enrollments in id order, paged by the last id seen.
    pub fn list_enrollments(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> ServiceResult<Vec<EnrollmentRecord>> {
        Ok(self.store().list_enrollments(after, limit.clamp(1, 1000))?)
    }

    /// An enrollment's command history, newest first.
    pub fn enrollment_commands(
        &self,
        id: &str,
        limit: usize,
    ) -> ServiceResult<Vec<DeliveryRecord>> {
        if self.store().enrollment(id)?.is_none() {
            return Err(ServiceError::not_found(
                "ENROLLMENT_NOT_FOUND",
                format!("no enrollment {id}"),
            ));
        }
        Ok(self
            .store()
            .enrollment_deliveries(id, limit.clamp(1, 1000))?)
    }

    /// One retention pass; run periodically by the daemon until `more` is false.
    pub async fn prune(&self) -> ServiceResult<PruneStats> {
        let stats = self
            .store()
            .prune(self.config().retention, Timestamp::now())
            .await?;
        if stats.deliveries_removed + stats.commands_removed + stats.challenges_removed > 0 {
            info!(
                deliveries = stats.deliveries_removed,
                commands = stats.commands_removed,
                challenges = stats.challenges_removed,
                "retention pruned history"
            );
        }
        Ok(stats)
    }
}
