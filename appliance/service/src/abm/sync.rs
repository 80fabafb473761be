//! Device sync: a full fetch, then incremental syncs from Apple's cursor.
//!
//! Each page's device rows and the cursor that follows them are written in one transaction, so
//! a crash at any point resumes from the last page on disk: nothing is skipped, and a page seen
//! twice is harmless because applying it is idempotent. Apple's oddities handled here:
//! fetch results have an empty `op_type` (treated as added); a device moved between MDM
//! servers arrives as `modified`, often with `profile_status` `removed` (it is assigned like a
//! new one); one serial can appear several times in a page (the last event wins); `deleted`
//! marks the device as released; and a device Apple keeps in its assignment cool-down may be
//! missing from a full fetch, so missing devices are checked with `POST /devices` before they
//! are marked as gone.

use std::collections::HashMap;

use mdm_proto::abm::{op_type, Device, DevicePage};
use tracing::{info, warn};

use super::connections::note_problem_if_token;
use super::profiles::{needs_assignment, Router};
use super::{abm_failure, AbmService};
use crate::error::{ServiceError, ServiceResult};
use crate::ports::{
    AbmBatch, AbmClient, AbmConnectionRecord, AbmConnector, AbmDeviceRecord, AbmError,
    AbmProfileRecord, AbmSyncRun, Store, Timestamp,
};

/// Most serials per `POST /devices` call.
const DETAILS_BATCH: usize = 1000;

/// Decides when a device should next be looked at by the assignment job.
pub(crate) struct Planner {
    router: Router,
    uuids: HashMap<String, String>,
}

impl Planner {
    pub(crate) fn new(router: Router, profiles: &[AbmProfileRecord]) -> Self {
        let uuids = profiles
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.apple_uuid.clone()?)))
            .collect();
        Planner { router, uuids }
    }

    /// The profile (name, Apple uuid) the device should have, if any.
    pub(crate) fn target(&self, d: &Device) -> Option<(&str, &str)> {
        let name = self.router.profile_for(d)?;
        let uuid = self.uuids.get(name)?;
        Some((name, uuid))
    }

    /// `next_assign_at` for a device as it stands: due now if it lacks its profile, unchanged
    /// while in a cool-down, `None` when nothing is owed.
    pub(crate) fn next_assign_at(
        &self,
        rec: &AbmDeviceRecord,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let (_, uuid) = self.target(&rec.device)?;
        if !needs_assignment(rec, uuid) {
            return None;
        }
        match rec.next_assign_at {
            Some(t) if t > now => Some(t),
            _ => Some(now),
        }
    }
}

/// Copies Apple's fields over the stored ones; an empty field in the event keeps the stored
/// value (deleted events carry little more than the serial number).
fn merge_device(stored: &mut Device, incoming: &Device) {
    let pairs: [(&mut String, &String); 15] = [
        (&mut stored.serial_number, &incoming.serial_number),
        (&mut stored.model, &incoming.model),
        (&mut stored.description, &incoming.description),
        (&mut stored.color, &incoming.color),
        (&mut stored.asset_tag, &incoming.asset_tag),
        (&mut stored.os, &incoming.os),
        (&mut stored.device_family, &incoming.device_family),
        (&mut stored.profile_status, &incoming.profile_status),
        (&mut stored.profile_uuid, &incoming.profile_uuid),
        (
            &mut stored.profile_assign_time,
            &incoming.profile_assign_time,
        ),
        (&mut stored.profile_push_time, &incoming.profile_push_time),
        (
            &mut stored.device_assigned_date,
            &incoming.device_assigned_date,
        ),
        (&mut stored.device_assigned_by, &incoming.device_assigned_by),
        (&mut stored.op_type, &incoming.op_type),
        (&mut stored.op_date, &incoming.op_date),
    ];
    for (dst, src) in pairs {
        if !src.is_empty() {
            dst.clone_from(src);
        }
    }
    // A status of "removed" comes with an empty uuid: the old uuid no longer applies.
    if incoming.profile_status == mdm_proto::abm::profile_status::REMOVED
        || incoming.profile_status == mdm_proto::abm::profile_status::EMPTY
    {
        stored.profile_uuid.clone_from(&incoming.profile_uuid);
    }
    stored.response_status.clear();
}

/// Counts of one page, added to the run.
#[derive(Default)]
struct PageCounts {
    added: u64,
    modified: u64,
    deleted: u64,
}

impl<S: Store, C: AbmConnector> AbmService<S, C> {
    /// Syncs a connection now (a full fetch when `full`, when no sync has completed yet, or when
    /// the last full fetch is older than the configured interval), then assigns the devices that
    /// need it. Refused with `ABM_SYNC_RUNNING` while another sync of the connection runs or
    /// waits; waits for a running assignment job.
    pub async fn sync_now(&self, name: &str, full: bool) -> ServiceResult<AbmSyncRun> {
        let _mark = self.start_sync(name).ok_or_else(|| {
            ServiceError::conflict(
                "ABM_SYNC_RUNNING",
                format!(
                    "a sync of connection {name:?} is running; it will pick up the latest changes"
                ),
            )
        })?;
        // An assignment job or a settings change may hold the lock: wait for it.
        let busy = self.lock(name).await;
        let run = self.sync_locked(name, full).await;
        let assigned = match &run {
            Ok(_) => self.assign_due_locked(name).await.map(|_| ()),
            Err(_) => Ok(()),
        };
        drop(busy);
        // Assignment retries may have fallen due at new times.
        self.wake_scheduler();
        let run = run?;
        if let Err(e) = assigned {
            warn!(connection = %name, error = %e, "assignment after sync failed");
        }
        Ok(run)
    }

    /// The sync itself; the caller holds the connection's lock.
    pub(crate) async fn sync_locked(&self, name: &str, full: bool) -> ServiceResult<AbmSyncRun> {
        let mut conn = self.connection_record(name)?;
        let client = self.client(&conn)?;
        let started_at = Timestamp::now();
        let mut run = AbmSyncRun {
            started_at,
            finished_at: None,
            full: false,
            pages: 0,
            added: 0,
            modified: 0,
            deleted: 0,
            error: None,
        };
        match client.account().await {
            Ok(account) => conn.account = Some(account),
            Err(e) => return self.fail_run(conn, run, e).await,
        }
        let refetch_due = conn.sync.last_full_at.is_none_or(|t| {
            started_at.0.saturating_sub(t.0)
                >= i64::try_from(self.config().full_refetch_interval.as_millis())
                    .unwrap_or(i64::MAX)
        });
        if !conn.sync.fetching && (full || conn.sync.cursor.is_none() || refetch_due) {
            start_full(&mut conn);
        }
        run.full = conn.sync.fetching;
        let planner = self.planner(name)?;
        let limit = self.config().page_limit.clamp(1, 1000);
        let mut restarted = false;
        loop {
            let reply = if conn.sync.fetching {
                client.fetch_devices(conn.sync.cursor.clone(), limit).await
            } else {
                let Some(cursor) = conn.sync.cursor.clone() else {
                    start_full(&mut conn);
                    run.full = true;
                    continue;
                };
                client.sync_devices(cursor, limit).await
            };
            let page = match reply {
                Ok(page) => page,
                Err(AbmError::CursorExhausted) if conn.sync.fetching => {
                    // The fetch already ended (e.g. its last page was stored just before a
                    // crash): its cursor now serves incremental sync.
                    self.finish_full(&mut conn, &client, &planner, &mut run)
                        .await?;
                    continue;
                }
                Err(e @ (AbmError::CursorExpired | AbmError::CursorInvalid)) if !restarted => {
                    info!(connection = %name, code = e.code(), "cursor refused by Apple; fetching every device again");
                    restarted = true;
                    start_full(&mut conn);
                    run.full = true;
                    continue;
                }
                Err(e) => return self.fail_run(conn, run, e).await,
            };
            run.pages += 1;
            let more = page.more_to_follow;
            let was_fetching = conn.sync.fetching;
            let counts = self.apply_page(&mut conn, page, &planner).await?;
            run.added += counts.added;
            run.modified += counts.modified;
            run.deleted += counts.deleted;
            if !more {
                if was_fetching {
                    self.finish_full(&mut conn, &client, &planner, &mut run)
                        .await?;
                    // Catch up on what changed while the fetch ran.
                    continue;
                }
                break;
            }
        }
        let now = Timestamp::now();
        run.finished_at = Some(now);
        conn.problem = None;
        conn.last_ok_at = Some(now);
        conn.sync.last_run = Some(run.clone());
        self.write_connection(conn).await?;
        info!(
            connection = %name,
            full = run.full,
            pages = run.pages,
            added = run.added,
            modified = run.modified,
            deleted = run.deleted,
            ms = now.0 - started_at.0,
            "ABM sync finished"
        );
        self.mdm().log_activity(crate::lifecycle::activity::entry(
            &format!("abm:{name}"),
            "abm.sync",
            vec![name.to_string()],
            crate::ports::ActivityOutcome::Ok,
            format!(
                "{} sync: {} added, {} modified, {} deleted",
                if run.full { "full" } else { "incremental" },
                run.added,
                run.modified,
                run.deleted
            ),
            None,
        ));
        Ok(run)
    }

    async fn fail_run<T>(
        &self,
        mut conn: AbmConnectionRecord,
        mut run: AbmSyncRun,
        e: AbmError,
    ) -> ServiceResult<T> {
        let now = Timestamp::now();
        note_problem_if_token(&mut conn, &e, now);
        run.finished_at = Some(now);
        run.error = Some(crate::ports::AbmProblem {
            code: e.code().to_string(),
            message: e.to_string(),
            since: now,
            last_at: now,
        });
        conn.sync.last_run = Some(run);
        let name = conn.name.clone();
        warn!(connection = %name, code = e.code(), error = %e, "ABM sync failed");
        self.mdm().log_activity(crate::lifecycle::activity::entry(
            &format!("abm:{name}"),
            "abm.sync",
            vec![name.clone()],
            crate::ports::ActivityOutcome::Failed,
            format!("sync failed: {e}"),
            Some(serde_json::json!({"code": e.code()})),
        ));
        self.write_connection(conn).await?;
        Err(abm_failure(&name, &e))
    }

    /// Applies one page and stores it with the cursor that follows it, in one transaction.
    async fn apply_page(
        &self,
        conn: &mut AbmConnectionRecord,
        page: DevicePage,
        planner: &Planner,
    ) -> ServiceResult<PageCounts> {
        let now = Timestamp::now();
        let fetching = conn.sync.fetching;
        let generation = conn.sync.generation;
        let mut counts = PageCounts::default();
        let mut touched: HashMap<String, AbmDeviceRecord> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        for dev in page.devices {
            let serial = dev.serial_number.trim().to_string();
            if serial.is_empty() {
                continue;
            }
            let existing = match touched.remove(&serial) {
                Some(r) => Some(r),
                None => {
                    order.push(serial.clone());
                    self.store().abm_device(&conn.name, &serial)?
                }
            };
            let is_new = existing.is_none();
            let mut rec = existing.unwrap_or_else(|| AbmDeviceRecord {
                connection: conn.name.clone(),
                serial: serial.clone(),
                device: Device::default(),
                first_seen_at: now,
                updated_at: now,
                removed_at: None,
                seen_generation: generation,
                assignment: None,
                next_assign_at: None,
            });
            merge_device(&mut rec.device, &dev);
            rec.device.serial_number.clone_from(&serial);
            rec.updated_at = now;
            if fetching {
                rec.seen_generation = generation;
            }
            if dev.op_type == op_type::DELETED {
                rec.removed_at = Some(now);
                rec.next_assign_at = None;
                counts.deleted += 1;
            } else {
                let was_removed = rec.removed_at.take().is_some();
                rec.next_assign_at = planner.next_assign_at(&rec, now);
                if is_new || was_removed || dev.op_type == op_type::ADDED || dev.op_type.is_empty()
                {
                    counts.added += 1;
                } else {
                    counts.modified += 1;
                }
            }
            touched.insert(serial, rec);
        }
        if !page.cursor.is_empty() {
            conn.sync.cursor = Some(page.cursor);
        }
        if fetching && !page.more_to_follow {
            // The fetch's last page: its cursor continues as the sync cursor.
            conn.sync.fetching = false;
            conn.sync.last_full_at = Some(now);
        }
        let devices = order
            .into_iter()
            .filter_map(|s| touched.remove(&s))
            .collect();
        self.commit(AbmBatch {
            connection: Some(conn.clone()),
            devices,
            ..AbmBatch::default()
        })
        .await?;
        Ok(counts)
    }

    /// After a full fetch: devices it did not list are asked about one by one (`POST /devices`)
    /// before being marked as gone, because Apple hides devices in an assignment cool-down.
    async fn finish_full(
        &self,
        conn: &mut AbmConnectionRecord,
        client: &C::Client,
        planner: &Planner,
        run: &mut AbmSyncRun,
    ) -> ServiceResult<()> {
        if conn.sync.fetching {
            conn.sync.fetching = false;
            conn.sync.last_full_at = Some(Timestamp::now());
            self.write_connection(conn.clone()).await?;
        }
        let generation = conn.sync.generation;
        let mut missing = Vec::new();
        for page in self.device_pages(&conn.name, 5000) {
            missing.extend(
                page?
                    .into_iter()
                    .filter(|r| r.removed_at.is_none() && r.seen_generation < generation),
            );
        }
        if missing.is_empty() {
            return Ok(());
        }
        info!(connection = %conn.name, devices = missing.len(), "devices missing from the full fetch; asking Apple about each");
        for chunk in missing.chunks(DETAILS_BATCH) {
            let serials: Vec<String> = chunk.iter().map(|r| r.serial.clone()).collect();
            let details = match client.device_details(serials).await {
                Ok(d) => d,
                Err(e) => {
                    // Not fatal: the devices stay as they are and the next full fetch asks again.
                    warn!(connection = %conn.name, code = e.code(), error = %e, "cannot check devices missing from the full fetch");
                    return Ok(());
                }
            };
            let now = Timestamp::now();
            let mut out = Vec::with_capacity(chunk.len());
            for rec in chunk {
                let mut rec = rec.clone();
                match details.devices.get(&rec.serial) {
                    Some(d)
                        if d.response_status.is_empty()
                            || d.response_status.eq_ignore_ascii_case("SUCCESS") =>
                    {
                        merge_device(&mut rec.device, d);
                        rec.seen_generation = generation;
                        rec.next_assign_at = planner.next_assign_at(&rec, now);
                    }
                    _ => {
                        rec.removed_at = Some(now);
                        rec.next_assign_at = None;
                        run.deleted += 1;
                    }
                }
                rec.updated_at = now;
                out.push(rec);
            }
            self.write_devices(out).await?;
        }
        Ok(())
    }
}

fn start_full(conn: &mut AbmConnectionRecord) {
    conn.sync.fetching = true;
    conn.sync.cursor = None;
    conn.sync.generation += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_what_events_leave_out() {
        let mut stored = Device {
            serial_number: "S1".into(),
            model: "iPad Air".into(),
            profile_status: "assigned".into(),
            profile_uuid: "U1".into(),
            ..Device::default()
        };
        merge_device(
            &mut stored,
            &Device {
                serial_number: "S1".into(),
                op_type: "deleted".into(),
                ..Device::default()
            },
        );
        assert_eq!(stored.model, "iPad Air");
        assert_eq!(stored.op_type, "deleted");
        assert_eq!(stored.profile_uuid, "U1");
        merge_device(
            &mut stored,
            &Device {
                serial_number: "S1".into(),
                op_type: "modified".into(),
                profile_status: "removed".into(),
                ..Device::default()
            },
        );
        assert_eq!(stored.profile_status, "removed");
        assert_eq!(stored.profile_uuid, "");
    }
}
