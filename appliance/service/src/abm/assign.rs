//! Profile assignment jobs, explicit assignment, profile removal and disowning.
//!
//! Apple can answer HTTP 200 and still fail some serials, so every serial's outcome is stored
//! with its time and reason. FAILED and THROTTLED serials are retried after Apple's
//! `retry_after_seconds` (protocol version 10) or a cool-down; a call that fails at the
//! transport level counts as FAILED for every serial in it. Before a retry, the device is
//! looked up with `POST /devices`: Apple may have applied the assignment after all, and devices
//! in its cool-down can be missing from sync.

use std::collections::BTreeMap;
use std::time::Duration;

use mdm_proto::abm::{outcome, profile_status};
use serde::Serialize;
use tracing::{info, warn};

use super::connections::note_problem_if_token;
use super::profiles::needs_assignment;
use super::{abm_failure, AbmService};
use crate::error::{ServiceError, ServiceResult};
use crate::ports::{
    AbmAssignOutcome, AbmAssignment, AbmBatch, AbmClient, AbmConnector, AbmDeviceRecord, AbmError,
    AbmRuleMatch, AbmRuleRecord, Store, Timestamp,
};

/// Most serials Apple takes in one assignment call.
pub const ASSIGN_BATCH: usize = 1000;

/// Priority of the `assign-PROFILE` rules explicit assignment writes: before attribute rules.
const EXPLICIT_PRIORITY: i32 = -1000;

/// What an assignment job did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AssignReport {
    pub calls: u32,
    pub succeeded: u64,
    pub not_accessible: u64,
    pub failed: u64,
    pub throttled: u64,
}

/// Per-serial outcome of an admin's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SerialResult {
    pub serial: String,
    /// Apple's word (`SUCCESS`, `NOT_ACCESSIBLE`, `FAILED`, `THROTTLED`, ...), or `NOT_FOUND` when
    /// the connection does not list the serial.
    pub outcome: String,
    pub reason: Option<String>,
}

fn reason_for(outcome: AbmAssignOutcome, retry_at: Option<Timestamp>) -> Option<String> {
    let when = retry_at
        .map(|t| format!("; retrying after {}", t.to_rfc3339()))
        .unwrap_or_default();
    match outcome {
        AbmAssignOutcome::Success | AbmAssignOutcome::Removed => None,
        AbmAssignOutcome::NotAccessible => Some("Apple says this device is not accessible to this MDM server: it was released, or assigned to another MDM server in Apple Business Manager. Assign it to this MDM server in ABM; it is retried when ABM reports a change".into()),
        AbmAssignOutcome::Failed => Some(format!("Apple could not assign the profile (FAILED){when}")),
        AbmAssignOutcome::Throttled => Some(format!("Apple is throttling assignments for this device (THROTTLED){when}")),
    }
}

impl<S: Store, C: AbmConnector> AbmService<S, C> {
    /// Assigns every device of the connection that is due, now.
    pub async fn assign_due(&self, name: &str) -> ServiceResult<AssignReport> {
        let busy = self.lock(name).await;
        let report = self.assign_due_locked(name).await;
        drop(busy);
        self.wake_scheduler();
        report
    }

    /// The assignment job; the caller holds the connection's lock.
    pub(crate) async fn assign_due_locked(&self, name: &str) -> ServiceResult<AssignReport> {
        let mut conn = self.connection_record(name)?;
        if conn.token.is_none() {
            return Ok(AssignReport::default());
        }
        let client = self.client(&conn)?;
        let planner = self.planner(name)?;
        let mut report = AssignReport::default();
        loop {
            let now = Timestamp::now();
            // A few calls' worth at a time: enough to fill whole batches per profile, small
            // enough that 100,000 due devices never sit in memory at once.
            let due = self.store().abm_devices_due(name, now, 2 * ASSIGN_BATCH)?;
            if due.is_empty() {
                break;
            }
            let mut groups: BTreeMap<String, Vec<AbmDeviceRecord>> = BTreeMap::new();
            let mut settled = Vec::new();
            for mut rec in due {
                match planner.target(&rec.device) {
                    Some((_, uuid)) if needs_assignment(&rec, uuid) => {
                        groups.entry(uuid.to_string()).or_default().push(rec);
                    }
                    _ => {
                        rec.next_assign_at = None;
                        settled.push(rec);
                    }
                }
            }
            self.write_devices(settled).await?;
            for (uuid, recs) in groups {
                let profile_name = planner
                    .target(&recs[0].device)
                    .map(|(n, _)| n.to_string())
                    .unwrap_or_default();
                for chunk in recs.chunks(ASSIGN_BATCH) {
                    let chunk = self.refresh_retried(&client, chunk, &uuid).await;
                    let (todo, done): (Vec<_>, Vec<_>) =
                        chunk.into_iter().partition(|r| needs_assignment(r, &uuid));
                    let mut out: Vec<AbmDeviceRecord> = done
                        .into_iter()
                        .map(|mut r| {
                            r.next_assign_at = None;
                            r
                        })
                        .collect();
                    if !todo.is_empty() {
                        report.calls += 1;
                        let serials = todo.iter().map(|r| r.serial.clone()).collect();
                        let reply = client.assign_profile(uuid.clone(), serials).await;
                        if let Err(e @ (AbmError::TermsNotSigned | AbmError::AccessDenied { .. })) =
                            &reply
                        {
                            // Nothing can be assigned until an admin acts: keep them due.
                            note_problem_if_token(&mut conn, e, Timestamp::now());
                            self.commit(AbmBatch {
                                connection: Some(conn),
                                devices: out,
                                ..AbmBatch::default()
                            })
                            .await?;
                            return Err(abm_failure(name, e));
                        }
                        out.extend(self.record_outcomes(
                            todo,
                            &profile_name,
                            &uuid,
                            reply,
                            &mut report,
                        ));
                    }
                    let serials: Vec<String> = out.iter().map(|d| d.serial.clone()).collect();
                    let not_ok = out
                        .iter()
                        .filter(|d| {
                            d.assignment
                                .as_ref()
                                .is_some_and(|a| a.outcome != AbmAssignOutcome::Success)
                        })
                        .count();
                    self.write_devices(out).await?;
                    self.mdm().log_activity(crate::lifecycle::activity::entry(
                        &format!("abm:{name}"),
                        "abm.assign",
                        serials.clone(),
                        if not_ok == 0 {
                            crate::ports::ActivityOutcome::Ok
                        } else {
                            crate::ports::ActivityOutcome::Failed
                        },
                        format!(
                            "profile {profile_name} assigned to {} device(s); {not_ok} not successful",
                            serials.len()
                        ),
                        Some(serde_json::json!({"profile": profile_name, "profile_uuid": uuid})),
                    ));
                }
            }
        }
        if report.calls > 0 {
            info!(
                connection = %name,
                calls = report.calls,
                succeeded = report.succeeded,
                not_accessible = report.not_accessible,
                failed = report.failed,
                throttled = report.throttled,
                "ABM assignment job finished"
            );
        }
        Ok(report)
    }

    /// Re-reads devices that failed before: Apple may have applied the assignment after all.
    async fn refresh_retried(
        &self,
        client: &C::Client,
        chunk: &[AbmDeviceRecord],
        uuid: &str,
    ) -> Vec<AbmDeviceRecord> {
        let retried: Vec<String> = chunk
            .iter()
            .filter(|r| r.assignment.as_ref().is_some_and(|a| a.failures > 0))
            .map(|r| r.serial.clone())
            .collect();
        let mut chunk = chunk.to_vec();
        if retried.is_empty() {
            return chunk;
        }
        match client.device_details(retried).await {
            Ok(details) => {
                let now = Timestamp::now();
                for rec in &mut chunk {
                    if let Some(d) = details.devices.get(&rec.serial) {
                        if d.profile_uuid == uuid
                            && matches!(
                                d.profile_status.as_str(),
                                profile_status::ASSIGNED | profile_status::PUSHED
                            )
                        {
                            rec.device.profile_uuid.clone_from(&d.profile_uuid);
                            rec.device.profile_status.clone_from(&d.profile_status);
                            rec.updated_at = now;
                            if let Some(a) = &mut rec.assignment {
                                a.outcome = AbmAssignOutcome::Success;
                                a.failures = 0;
                                a.reason = None;
                                a.at = now;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                warn!(code = e.code(), error = %e, "cannot re-read devices before retrying their assignment")
            }
        }
        chunk
    }

    fn record_outcomes(
        &self,
        todo: Vec<AbmDeviceRecord>,
        profile_name: &str,
        uuid: &str,
        reply: Result<mdm_proto::abm::AssignResponse, AbmError>,
        report: &mut AssignReport,
    ) -> Vec<AbmDeviceRecord> {
        let now = Timestamp::now();
        let cooldown = |secs: Option<u64>| {
            secs.map(Duration::from_secs)
                .unwrap_or(self.config().failure_cooldown)
        };
        let (outcomes, retry_after, call_error) = match reply {
            Ok(r) => (r.devices, r.retry_after_seconds, None),
            Err(e) => {
                let retry = match &e {
                    AbmError::Throttled {
                        retry_after_seconds,
                    } => {
                        Some(retry_after_seconds.unwrap_or(self.config().transport_retry.as_secs()))
                    }
                    _ => Some(self.config().transport_retry.as_secs()),
                };
                (BTreeMap::new(), retry, Some(e))
            }
        };
        todo.into_iter()
            .map(|mut rec| {
                let word = outcomes.get(&rec.serial).map(String::as_str);
                let result = match word {
                    Some(outcome::SUCCESS) => AbmAssignOutcome::Success,
                    Some(outcome::NOT_ACCESSIBLE) => AbmAssignOutcome::NotAccessible,
                    Some(outcome::THROTTLED) => AbmAssignOutcome::Throttled,
                    _ => AbmAssignOutcome::Failed,
                };
                let failures = match result {
                    AbmAssignOutcome::Failed | AbmAssignOutcome::Throttled => {
                        rec.assignment.as_ref().map_or(0, |a| a.failures) + 1
                    }
                    _ => 0,
                };
                let retry_at = matches!(
                    result,
                    AbmAssignOutcome::Failed | AbmAssignOutcome::Throttled
                )
                .then(|| now.plus(cooldown(retry_after)));
                let mut reason = reason_for(result, retry_at);
                if let Some(e) = &call_error {
                    reason = Some(format!(
                        "the assignment call failed ({}: {e}); retrying after {}",
                        e.code(),
                        retry_at.unwrap_or(now).to_rfc3339()
                    ));
                } else if word.is_none() {
                    reason = Some(format!(
                        "Apple's answer did not mention this device; retrying after {}",
                        retry_at.unwrap_or(now).to_rfc3339()
                    ));
                }
                match result {
                    AbmAssignOutcome::Success => {
                        report.succeeded += 1;
                        rec.device.profile_uuid = uuid.to_string();
                        rec.device.profile_status = profile_status::ASSIGNED.to_string();
                        rec.device.profile_assign_time = now.to_rfc3339();
                    }
                    AbmAssignOutcome::NotAccessible => report.not_accessible += 1,
                    AbmAssignOutcome::Throttled => report.throttled += 1,
                    _ => report.failed += 1,
                }
                rec.assignment = Some(AbmAssignment {
                    profile_id: profile_name.to_string(),
                    profile_uuid: uuid.to_string(),
                    outcome: result,
                    at: now,
                    reason,
                    failures,
                });
                rec.next_assign_at = retry_at;
                rec.updated_at = now;
                rec
            })
            .collect()
    }

    /// Assigns `profile` to the listed serials of the connection now: the serials go into the
    /// rule `assign-<profile>` (and out of every other rule's serial list), so the assignment
    /// also holds for later syncs.
    pub async fn assign_serials(
        &self,
        connection: &str,
        profile: &str,
        serials: &[String],
    ) -> ServiceResult<Vec<SerialResult>> {
        let serials = clean_serials(serials)?;
        self.profile(connection, profile)?;
        let rule_name = format!("assign-{profile}");
        {
            // The rule changes and the devices' fresh start are one write, under the lock.
            let _busy = self.lock(connection).await;
            self.connection_record(connection)?;
            let now = Timestamp::now();
            let mut batch = AbmBatch::default();
            let mut mine = None;
            for mut rule in self.store().abm_rules(connection)? {
                if rule.name == rule_name {
                    mine = Some(rule);
                    continue;
                }
                if !rule.matcher.serials.iter().any(|s| serials.contains(s)) {
                    continue;
                }
                rule.matcher.serials.retain(|s| !serials.contains(s));
                let m = &rule.matcher;
                if m.serials.is_empty()
                    && m.device_family.is_none()
                    && m.model.is_none()
                    && m.os.is_none()
                {
                    batch.delete_rules.push((connection.to_string(), rule.name));
                } else {
                    batch.rules.push(rule);
                }
            }
            let mut mine = mine.unwrap_or_else(|| AbmRuleRecord {
                connection: connection.to_string(),
                name: rule_name,
                priority: EXPLICIT_PRIORITY,
                matcher: AbmRuleMatch::default(),
                profile: profile.to_string(),
                created_at: now,
            });
            mine.priority = EXPLICIT_PRIORITY;
            for s in &serials {
                if !mine.matcher.serials.contains(s) {
                    mine.matcher.serials.push(s.clone());
                }
            }
            batch.rules.push(mine);
            for s in &serials {
                let Some(mut rec) = self.store().abm_device(connection, s)? else {
                    continue;
                };
                // Clear "removed by an admin", and retry now even during a cool-down of ours:
                // an admin asked for it explicitly.
                let removed = rec
                    .assignment
                    .as_ref()
                    .is_some_and(|a| a.outcome == AbmAssignOutcome::Removed);
                let waiting = rec.next_assign_at.is_some_and(|t| t > now);
                if removed {
                    rec.assignment = None;
                }
                if waiting {
                    rec.next_assign_at = Some(now);
                }
                if removed || waiting {
                    batch.devices.push(rec);
                }
            }
            self.commit(batch).await?;
        }
        self.mark_all_due(connection).await?;
        self.assign_due(connection).await?;
        serials
            .iter()
            .map(|s| {
                Ok(match self.store().abm_device(connection, s)? {
                    None => SerialResult {
                        serial: s.clone(),
                        outcome: "NOT_FOUND".into(),
                        reason: Some("this connection's device list has no such serial number: check it is assigned to this MDM server in ABM, then sync".into()),
                    },
                    Some(rec) => match &rec.assignment {
                        Some(a) if a.profile_id == profile => SerialResult {
                            serial: s.clone(),
                            outcome: a.outcome.as_apple().to_string(),
                            reason: a.reason.clone(),
                        },
                        _ => SerialResult {
                            serial: s.clone(),
                            outcome: "PENDING".into(),
                            reason: Some("queued for assignment".into()),
                        },
                    },
                })
            })
            .collect()
    }

    /// Removes the ABM profile from devices (`DELETE /profile/devices`). They are not assigned
    /// again automatically until an admin assigns them.
    pub async fn remove_profile(
        &self,
        connection: &str,
        serials: &[String],
    ) -> ServiceResult<Vec<SerialResult>> {
        let serials = clean_serials(serials)?;
        let _busy = self.lock(connection).await;
        let mut conn = self.connection_record(connection)?;
        let client = self.client(&conn)?;
        let mut results = Vec::new();
        for chunk in serials.chunks(ASSIGN_BATCH) {
            let reply = match client.remove_profile(chunk.to_vec()).await {
                Ok(r) => r,
                Err(e) => {
                    note_problem_if_token(&mut conn, &e, Timestamp::now());
                    self.write_connection(conn).await?;
                    return Err(abm_failure(connection, &e));
                }
            };
            let now = Timestamp::now();
            results.extend(
                self.apply_serial_outcomes(connection, chunk, &reply, |rec| {
                    rec.device.profile_status = profile_status::REMOVED.to_string();
                    rec.device.profile_uuid.clear();
                    rec.next_assign_at = None;
                    let previous = rec.assignment.take();
                    rec.assignment = Some(AbmAssignment {
                        profile_id: previous
                            .as_ref()
                            .map(|a| a.profile_id.clone())
                            .unwrap_or_default(),
                        profile_uuid: previous.map(|a| a.profile_uuid).unwrap_or_default(),
                        outcome: AbmAssignOutcome::Removed,
                        at: now,
                        reason: Some(
                            "an admin removed the profile; assign one to enroll this device again"
                                .into(),
                        ),
                        failures: 0,
                    });
                })
                .await?,
            );
        }
        Ok(results)
    }

    /// Gives devices up in ABM for good (`POST /devices/disown`). `confirm` must be the number
    /// of serials, so a script cannot disown by accident.
    pub async fn disown(
        &self,
        connection: &str,
        serials: &[String],
        confirm: &str,
    ) -> ServiceResult<Vec<SerialResult>> {
        let serials = clean_serials(serials)?;
        if confirm != format!("disown {} devices", serials.len()) {
            return Err(ServiceError::bad_request(
                "ABM_DISOWN_UNCONFIRMED",
                format!("confirm: disowning removes devices from your organisation in Apple Business Manager for good; to proceed send confirm \"disown {} devices\"", serials.len()),
            ));
        }
        let _busy = self.lock(connection).await;
        let conn = self.connection_record(connection)?;
        let client = self.client(&conn)?;
        let mut results = Vec::new();
        for chunk in serials.chunks(ASSIGN_BATCH) {
            let reply = client
                .disown_devices(chunk.to_vec())
                .await
                .map_err(|e| abm_failure(connection, &e))?;
            let now = Timestamp::now();
            results.extend(
                self.apply_serial_outcomes(connection, chunk, &reply, |rec| {
                    rec.removed_at = Some(now);
                    rec.next_assign_at = None;
                })
                .await?,
            );
            info!(connection, devices = chunk.len(), "devices disowned in ABM");
        }
        Ok(results)
    }
}

impl<S: Store, C: AbmConnector> AbmService<S, C> {
    /// Records Apple's per-serial answer to a removal or disown call: `change` is applied to
    /// the stored devices Apple reports `SUCCESS` for, all in one write. A serial missing from
    /// the answer counts as FAILED.
    async fn apply_serial_outcomes(
        &self,
        connection: &str,
        serials: &[String],
        reply: &mdm_proto::abm::SerialOutcomes,
        change: impl Fn(&mut AbmDeviceRecord),
    ) -> ServiceResult<Vec<SerialResult>> {
        let now = Timestamp::now();
        let mut out = Vec::new();
        let mut results = Vec::with_capacity(serials.len());
        for s in serials {
            let word = reply
                .devices
                .get(s)
                .cloned()
                .unwrap_or_else(|| outcome::FAILED.into());
            if word == outcome::SUCCESS {
                if let Some(mut rec) = self.store().abm_device(connection, s)? {
                    change(&mut rec);
                    rec.updated_at = now;
                    out.push(rec);
                }
            }
            results.push(SerialResult {
                serial: s.clone(),
                outcome: word,
                reason: None,
            });
        }
        self.write_devices(out).await?;
        Ok(results)
    }
}

fn clean_serials(serials: &[String]) -> ServiceResult<Vec<String>> {
    if serials.is_empty() {
        return Err(ServiceError::bad_request(
            "ABM_SERIALS_REQUIRED",
            "serials: list at least one serial number",
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(serials.len());
    for (i, s) in serials.iter().enumerate() {
        let c = s.trim().to_ascii_uppercase();
        if c.is_empty() || c.len() > 64 || !c.chars().all(|ch| ch.is_ascii_alphanumeric()) {
            return Err(ServiceError::bad_request(
                "ABM_SERIAL_INVALID",
                format!("serials[{i}]: {s:?} is not a serial number"),
            ));
        }
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}
