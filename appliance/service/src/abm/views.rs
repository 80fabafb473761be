//! What the admin API shows of ABM connections and devices (no secrets: no sealed bytes, no
//! credentials), and the CSV export of a connection's devices.

use serde::Serialize;

use super::connections::{key_storage, TokenState, TokenStatus};
use super::sync::Planner;
use super::AbmService;
use crate::error::{ServiceError, ServiceResult};
use crate::ports::{
    AbmConnectionRecord, AbmConnector, AbmDeviceRecord, AbmProblem, AbmSyncRun, Store, Timestamp,
};

fn ts(t: Timestamp) -> String {
    t.to_rfc3339()
}

#[derive(Debug, Clone, Serialize)]
pub struct ProblemView {
    pub code: String,
    pub message: String,
    pub since: String,
    pub last_at: String,
}

impl From<&AbmProblem> for ProblemView {
    fn from(p: &AbmProblem) -> Self {
        ProblemView {
            code: p.code.clone(),
            message: p.message.clone(),
            since: ts(p.since),
            last_at: ts(p.last_at),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncRunView {
    pub started_at: String,
    pub finished_at: Option<String>,
    pub full: bool,
    pub pages: u32,
    pub added: u64,
    pub modified: u64,
    pub deleted: u64,
    /// `ok` or `failed`.
    pub result: &'static str,
    pub error: Option<ProblemView>,
}

impl From<&AbmSyncRun> for SyncRunView {
    fn from(r: &AbmSyncRun) -> Self {
        SyncRunView {
            started_at: ts(r.started_at),
            finished_at: r.finished_at.map(ts),
            full: r.full,
            pages: r.pages,
            added: r.added,
            modified: r.modified,
            deleted: r.deleted,
            result: if r.error.is_some() { "failed" } else { "ok" },
            error: r.error.as_ref().map(ProblemView::from),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenView {
    pub consumer_key: String,
    pub expires_at: String,
    pub uploaded_at: String,
    pub generation: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccountView {
    pub org_name: String,
    pub org_id: String,
    pub org_email: String,
    pub server_name: String,
    pub server_uuid: String,
    pub admin_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionView {
    pub name: String,
    pub created_at: String,
    pub base_url: String,
    pub custom_ca: bool,
    pub state: TokenState,
    pub reason: String,
    pub action: Option<String>,
    /// A key pair whose certificate was handed out and awaits its token.
    pub key_staged: bool,
    /// Where the current key pair's private key lives: `tpm` (made inside the TPM, never
    /// leaves it) or `sealed` (sealed by the keystore, unsealed into memory for each use);
    /// `None` before the first token.
    pub key_storage: Option<&'static str>,
    /// The same for the staged key pair; `None` when none is staged.
    pub staged_key_storage: Option<&'static str>,
    pub token: Option<TokenView>,
    pub account: Option<AccountView>,
    pub problem: Option<ProblemView>,
    pub last_ok_at: Option<String>,
    pub interval_seconds: u64,
    /// `not_started`, `full_fetch` or `incremental`.
    pub sync_phase: &'static str,
    pub sync_running: bool,
    pub last_full_sync_at: Option<String>,
    pub last_sync: Option<SyncRunView>,
    pub default_profile: Option<String>,
    pub devices: u64,
    pub devices_due: Option<String>,
}

/// One ABM device with our view of it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    pub connection: String,
    pub serial_number: String,
    pub model: String,
    pub description: String,
    pub color: String,
    pub asset_tag: String,
    pub os: String,
    pub device_family: String,
    /// Apple's words: `empty`, `assigned`, `pushed`, `removed`.
    pub profile_status: String,
    pub profile_uuid: String,
    pub profile_assign_time: String,
    pub profile_push_time: String,
    pub device_assigned_date: String,
    pub device_assigned_by: String,
    /// The profile our rules give this device.
    pub target_profile: Option<String>,
    pub last_assignment: Option<AssignmentView>,
    pub next_assignment_at: Option<String>,
    pub removed_at: Option<String>,
    pub first_seen_at: String,
    pub updated_at: String,
    pub enrolled: bool,
    pub enrollment_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssignmentView {
    pub profile: String,
    pub profile_uuid: String,
    /// `SUCCESS`, `NOT_ACCESSIBLE`, `FAILED`, `THROTTLED` or `REMOVED`.
    pub outcome: &'static str,
    pub at: String,
    pub reason: Option<String>,
    pub failures: u32,
}

/// CSV columns of the device export, in order.
pub const CSV_COLUMNS: &[&str] = &[
    "serial_number",
    "model",
    "description",
    "color",
    "asset_tag",
    "os",
    "device_family",
    "profile_status",
    "profile_uuid",
    "device_assigned_date",
    "device_assigned_by",
    "target_profile",
    "last_assignment_result",
    "last_assignment_at",
    "last_assignment_reason",
    "removed_at",
    "enrolled",
    "enrollment_id",
];

impl DeviceView {
    fn csv_row(&self) -> Vec<String> {
        let a = self.last_assignment.as_ref();
        vec![
            self.serial_number.clone(),
            self.model.clone(),
            self.description.clone(),
            self.color.clone(),
            self.asset_tag.clone(),
            self.os.clone(),
            self.device_family.clone(),
            self.profile_status.clone(),
            self.profile_uuid.clone(),
            self.device_assigned_date.clone(),
            self.device_assigned_by.clone(),
            self.target_profile.clone().unwrap_or_default(),
            a.map(|a| a.outcome.to_string()).unwrap_or_default(),
            a.map(|a| a.at.clone()).unwrap_or_default(),
            a.and_then(|a| a.reason.clone()).unwrap_or_default(),
            self.removed_at.clone().unwrap_or_default(),
            if self.enrolled { "yes" } else { "no" }.to_string(),
            self.enrollment_id.clone().unwrap_or_default(),
        ]
    }
}

impl<S: Store, C: AbmConnector> AbmService<S, C> {
    pub fn connection_view(&self, rec: &AbmConnectionRecord) -> ServiceResult<ConnectionView> {
        let TokenStatus {
            state,
            reason,
            action,
        } = self.status_of(rec);
        Ok(ConnectionView {
            name: rec.name.clone(),
            created_at: ts(rec.created_at),
            base_url: rec.endpoint.base_url.clone(),
            custom_ca: rec.endpoint.ca_pem.is_some(),
            state,
            reason,
            action,
            key_staged: rec.staged_key.is_some(),
            key_storage: rec.current_key.as_ref().map(key_storage),
            staged_key_storage: rec.staged_key.as_ref().map(key_storage),
            token: rec.token.as_ref().map(|t| TokenView {
                consumer_key: t.consumer_key.clone(),
                expires_at: ts(t.expires_at),
                uploaded_at: ts(t.uploaded_at),
                generation: t.generation,
            }),
            account: rec.account.as_ref().map(|a| AccountView {
                org_name: a.org_name.clone(),
                org_id: a.org_id.clone(),
                org_email: a.org_email.clone(),
                server_name: a.server_name.clone(),
                server_uuid: a.server_uuid.clone(),
                admin_id: a.admin_id.clone(),
            }),
            problem: rec.problem.as_ref().map(ProblemView::from),
            last_ok_at: rec.last_ok_at.map(ts),
            interval_seconds: rec.sync.interval_seconds,
            sync_phase: match (&rec.sync.cursor, rec.sync.fetching) {
                (_, true) => "full_fetch",
                (Some(_), false) => "incremental",
                (None, false) => "not_started",
            },
            sync_running: self.is_syncing(&rec.name),
            last_full_sync_at: rec.sync.last_full_at.map(ts),
            last_sync: rec.sync.last_run.as_ref().map(SyncRunView::from),
            default_profile: rec.default_profile.clone(),
            devices: self.store().abm_device_count(&rec.name)?,
            devices_due: self.store().abm_next_due(&rec.name)?.map(ts),
        })
    }

    pub fn connection_views(&self) -> ServiceResult<Vec<ConnectionView>> {
        self.connections()?
            .iter()
            .map(|r| self.connection_view(r))
            .collect()
    }

    fn device_view(&self, planner: &Planner, rec: AbmDeviceRecord) -> ServiceResult<DeviceView> {
        let enrollment = self
            .store()
            .enrollments_by_serial(&rec.serial)?
            .into_iter()
            .max_by_key(|e| e.authenticated_at);
        let enrolled = enrollment
            .as_ref()
            .is_some_and(|e| e.state == crate::ports::EnrollmentState::Enrolled);
        let target_profile = planner.target(&rec.device).map(|(n, _)| n.to_string());
        let d = rec.device;
        Ok(DeviceView {
            connection: rec.connection,
            serial_number: rec.serial,
            model: d.model,
            description: d.description,
            color: d.color,
            asset_tag: d.asset_tag,
            os: d.os,
            device_family: d.device_family,
            profile_status: d.profile_status,
            profile_uuid: d.profile_uuid,
            profile_assign_time: d.profile_assign_time,
            profile_push_time: d.profile_push_time,
            device_assigned_date: d.device_assigned_date,
            device_assigned_by: d.device_assigned_by,
            target_profile,
            last_assignment: rec.assignment.map(|a| AssignmentView {
                profile: a.profile_id,
                profile_uuid: a.profile_uuid,
                outcome: a.outcome.as_apple(),
                at: ts(a.at),
                reason: a.reason,
                failures: a.failures,
            }),
            next_assignment_at: rec.next_assign_at.map(ts),
            removed_at: rec.removed_at.map(ts),
            first_seen_at: ts(rec.first_seen_at),
            updated_at: ts(rec.updated_at),
            enrolled,
            enrollment_id: enrollment.map(|e| e.id),
        })
    }

    /// A page of a connection's devices by serial number, after `after`.
    pub fn device_views(
        &self,
        connection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> ServiceResult<Vec<DeviceView>> {
        let planner = self.planner(connection)?;
        self.store()
            .abm_devices(connection, after, limit.clamp(1, 1000))?
            .into_iter()
            .map(|r| self.device_view(&planner, r))
            .collect()
    }

    /// One device of a connection.
    pub fn device_view_of(&self, connection: &str, serial: &str) -> ServiceResult<DeviceView> {
        let planner = self.planner(connection)?;
        let rec = self
            .store()
            .abm_device(connection, serial)?
            .ok_or_else(|| {
                ServiceError::not_found(
                    "ABM_DEVICE_NOT_FOUND",
                    format!(
                        "connection {connection:?} lists no device with serial number {serial:?}"
                    ),
                )
            })?;
        self.device_view(&planner, rec)
    }

    /// Every device of a connection as CSV (header row first).
    pub fn devices_csv(&self, connection: &str) -> ServiceResult<String> {
        self.connection_record(connection)?;
        let planner = self.planner(connection)?;
        let mut out = String::new();
        let header: Vec<String> = CSV_COLUMNS.iter().map(|c| c.to_string()).collect();
        crate::export::csv_line(&mut out, &header);
        for page in self.device_pages(connection, 1000) {
            for rec in page? {
                let view = self.device_view(&planner, rec)?;
                crate::export::csv_line(&mut out, &view.csv_row());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_columns() {
        assert_eq!(CSV_COLUMNS.len(), 18);
    }
}
