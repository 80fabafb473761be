//! Device lifecycle: the devices a site expects (pre-enrollment), one joined record and
//! status per device ([`directory`], [`status`]), the "pre-enrolled devices only"
//! restriction, setup release (DeviceConfigured), and the activity log ([`activity`]).
//!
//! A device's baseline is its assigned configuration profiles (see [`crate::profiles`]) and
//! whatever admins queued since it authenticated.
//!
//! Not here yet: user authentication in the enrollment web view, and automatic unenrollment
//! of long-offline devices.

pub mod activity;
pub mod csv;
pub mod directory;
pub mod offline;
pub mod status;

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::activity::{entry, ActivityView};
use self::directory::{summary, DevicePage, DeviceQuery, DeviceSummary, StatusCounts};
use self::status::{DeviceFacts, Thresholds};
use crate::error::{ServiceError, ServiceResult};
use crate::ports::{
    AbmDeviceRecord, ActivityOutcome, ActivityQuery, DeliveryRecord, DeliveryStatus,
    EnrollmentState, PreenrollRecord, PreenrollSource, SettingsStore, Store, Timestamp,
};
use crate::MdmService;

/// Serialises [`Timestamp`]s as RFC 3339 strings, as the admin API shows every time.
pub(crate) mod rfc3339 {
    use serde::Serializer;

    use crate::ports::Timestamp;

    /// A time.
    pub fn ser<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339())
    }

    /// An optional time (`null` when absent).
    pub fn opt<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&t.to_rfc3339()),
            None => s.serialize_none(),
        }
    }
}

/// The settings key of [`LifecycleSettings`].
const SETTINGS_KEY: &str = "lifecycle/settings";

/// Site policy for the device lifecycle, changed through the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleSettings {
    /// Refuse ADE and manual enrollments from serial numbers that are not pre-enrolled.
    pub preenrolled_only: bool,
    /// Every serial an ABM connection lists becomes a pre-enrolled (expected) device.
    pub abm_as_preenrolled: bool,
    /// Release devices held in Setup Assistant once their baseline is acknowledged.
    pub auto_release: bool,
    /// An enrolled device that was pushed but has not been heard from for this long is offline.
    pub offline_after_hours: u32,
    /// How long enrolling may take before a device counts as partially enrolled.
    pub enrolling_grace_minutes: u32,
    /// A device held in Setup Assistant longer than this is flagged as stuck.
    pub awaiting_stuck_after_minutes: u32,
    /// How long activity entries are kept.
    pub activity_retention_days: u32,
    /// Unenroll devices offline (pushed but silent) longer than this many days, creating a
    /// re-enrollment invitation for each. 0 (the default) never does.
    pub auto_unenroll_after_days: u32,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        LifecycleSettings {
            preenrolled_only: false,
            abm_as_preenrolled: false,
            auto_release: true,
            offline_after_hours: 72,
            enrolling_grace_minutes: 30,
            awaiting_stuck_after_minutes: 30,
            activity_retention_days: 365,
            auto_unenroll_after_days: 0,
        }
    }
}

impl LifecycleSettings {
    /// The status thresholds these settings define.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            offline_after: Duration::from_secs(u64::from(self.offline_after_hours) * 3600),
            enrolling_grace: Duration::from_secs(u64::from(self.enrolling_grace_minutes) * 60),
            awaiting_stuck_after: Duration::from_secs(
                u64::from(self.awaiting_stuck_after_minutes) * 60,
            ),
        }
    }

    fn validate(&self) -> ServiceResult<()> {
        let range = |field: &str, v: u32, lo: u32, hi: u32| {
            if v < lo || v > hi {
                Err(ServiceError::bad_request(
                    "INVALID_FIELD",
                    format!("{field}: must be between {lo} and {hi} (got {v})"),
                ))
            } else {
                Ok(())
            }
        };
        range("offline_after_hours", self.offline_after_hours, 1, 24 * 365)?;
        range(
            "enrolling_grace_minutes",
            self.enrolling_grace_minutes,
            1,
            7 * 24 * 60,
        )?;
        range(
            "awaiting_stuck_after_minutes",
            self.awaiting_stuck_after_minutes,
            1,
            7 * 24 * 60,
        )?;
        range(
            "activity_retention_days",
            self.activity_retention_days,
            1,
            3650,
        )?;
        if self.auto_unenroll_after_days != 0 {
            range(
                "auto_unenroll_after_days",
                self.auto_unenroll_after_days,
                1,
                3650,
            )?;
            if u64::from(self.auto_unenroll_after_days) * 24 <= u64::from(self.offline_after_hours)
            {
                return Err(ServiceError::bad_request(
                    "INVALID_FIELD",
                    format!(
                        "auto_unenroll_after_days: must be longer than offline_after_hours ({} hours), so that a device is shown offline before it is unenrolled",
                        self.offline_after_hours
                    ),
                ));
            }
        }
        Ok(())
    }
}

pub(crate) fn load_settings<S: SettingsStore>(store: &S) -> ServiceResult<LifecycleSettings> {
    match store.setting(SETTINGS_KEY)? {
        None => Ok(LifecycleSettings::default()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            ServiceError::internal(
                "SETTINGS_UNREADABLE",
                format!("the stored lifecycle settings cannot be read ({e}); set them again"),
            )
        }),
    }
}

/// What to do with serial numbers that are already pre-enrolled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDuplicate {
    Replace,
    Skip,
}

/// How to import a pre-enrollment file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Check and report; write nothing.
    pub dry_run: bool,
    /// Required when the file names serials that are already pre-enrolled.
    pub on_duplicate: Option<OnDuplicate>,
    /// Write the valid rows even when others have errors (otherwise nothing is written).
    pub valid_only: bool,
}

/// A serial in the file that is already pre-enrolled.
#[derive(Debug, Clone, Serialize)]
pub struct ExistingSerial {
    pub row: usize,
    pub serial_number: String,
}

/// What an import did (or, for a dry run or a refused file, would do).
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub dry_run: bool,
    /// Whether anything was written.
    pub written: bool,
    /// Why nothing was written, when nothing was.
    pub refused: Option<ImportRefusal>,
    pub total_rows: usize,
    pub valid_rows: usize,
    /// Rows that add a new device.
    pub new: usize,
    /// Rows that replace an existing pre-enrollment record.
    pub replaced: usize,
    /// Rows skipped because the serial is already pre-enrolled (`on_duplicate = skip`).
    pub skipped: usize,
    pub errors: Vec<csv::RowError>,
    /// Serials already pre-enrolled.
    pub duplicates: Vec<ExistingSerial>,
    pub ignored_columns: Vec<String>,
}

/// Why an import wrote nothing.
#[derive(Debug, Clone, Serialize)]
pub struct ImportRefusal {
    /// `PREENROLL_ROWS_INVALID` or `PREENROLL_DUPLICATES`.
    pub code: &'static str,
    pub message: String,
}

/// One device with everything known about it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub summary: DeviceSummary,
    /// Rendered by the web layer (its own time and privacy rules).
    #[serde(skip)]
    pub preenroll: Option<PreenrollRecord>,
    pub abm: Vec<AbmView>,
    /// Rendered by the web layer (no sealed blobs or push secrets).
    #[serde(skip)]
    pub enrollment: Option<crate::ports::EnrollmentRecord>,
    /// Commands waiting for the device (request types, oldest first).
    pub queued_commands: Vec<String>,
    /// The device's recent commands with their results, newest first (rendered by the web
    /// layer).
    #[serde(skip)]
    pub recent_commands: Vec<DeliveryRecord>,
    /// For a device held in Setup Assistant: what its release waits for.
    pub waiting_for: Vec<String>,
    /// The device's activity, newest first.
    pub timeline: Vec<ActivityView>,
    /// Its groups, the profiles assigned to it and where each install is.
    pub profiles: serde_json::Value,
    /// Its re-enrollment invitation, after an automatic unenrollment (the link is not shown
    /// here: see `invitation_url`).
    pub invitation: Option<offline::Invitation>,
    /// The account its current enrollment is for (signed in during Setup Assistant); `None`
    /// for an enrollment without a user.
    pub user: Option<EnrolledUser>,
}

/// The user a device was enrolled for.
#[derive(Debug, Clone, Serialize)]
pub struct EnrolledUser {
    pub username: String,
    /// From the account, while it exists.
    pub full_name: Option<String>,
    pub email: Option<String>,
    /// `false` once an admin deleted the account (the enrollment keeps the name).
    pub account_exists: bool,
}

/// A device's ABM record as the detail view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AbmView {
    pub connection: String,
    pub model: String,
    pub device_family: String,
    pub os: String,
    pub profile_status: String,
    pub profile_uuid: String,
    #[serde(serialize_with = "rfc3339::opt")]
    pub pushed_at: Option<Timestamp>,
    pub last_assignment: Option<serde_json::Value>,
    #[serde(serialize_with = "rfc3339::opt")]
    pub next_assignment_at: Option<Timestamp>,
    #[serde(serialize_with = "rfc3339::opt")]
    pub removed_at: Option<Timestamp>,
    #[serde(serialize_with = "rfc3339::ser")]
    pub first_seen_at: Timestamp,
}

/// The result of a release.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseOutcome {
    pub serial: String,
    pub enrollment_id: String,
    pub command_uuid: String,
}

/// A partial settings change: every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    pub preenrolled_only: Option<bool>,
    pub abm_as_preenrolled: Option<bool>,
    pub auto_release: Option<bool>,
    pub offline_after_hours: Option<u32>,
    pub enrolling_grace_minutes: Option<u32>,
    pub awaiting_stuck_after_minutes: Option<u32>,
    pub activity_retention_days: Option<u32>,
    pub auto_unenroll_after_days: Option<u32>,
}

/// The activity actor for an admin API token.
pub fn actor_of(token_name: &str) -> String {
    format!("token:{token_name}")
}

/// The activity actor for work done on behalf of `by`: the appliance itself (`system`) or
/// an admin API token.
pub fn actor_for(by: &str) -> String {
    if by == "system" {
        "system".to_string()
    } else {
        actor_of(by)
    }
}

/// Upper-case, trimmed serial.
pub fn normalize_serial(s: &str) -> String {
    s.trim().to_ascii_uppercase()
}

impl<S: Store> MdmService<S> {
    /// The lifecycle settings in force.
    pub fn lifecycle_settings(&self) -> LifecycleSettings {
        self.inner
            .lifecycle
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The status thresholds in force.
    pub fn thresholds(&self) -> Thresholds {
        self.lifecycle_settings().thresholds()
    }

    /// Changes lifecycle settings; records who did it.
    pub async fn update_lifecycle_settings(
        &self,
        patch: SettingsPatch,
        by: &str,
    ) -> ServiceResult<LifecycleSettings> {
        let old = self.lifecycle_settings();
        let mut new = old.clone();
        macro_rules! apply {
            ($($f:ident),*) => { $( if let Some(v) = patch.$f { new.$f = v; } )* };
        }
        apply!(
            preenrolled_only,
            abm_as_preenrolled,
            auto_release,
            offline_after_hours,
            enrolling_grace_minutes,
            awaiting_stuck_after_minutes,
            activity_retention_days,
            auto_unenroll_after_days
        );
        new.validate()?;
        let json = serde_json::to_vec(&new)
            .map_err(|e| ServiceError::internal("SETTINGS_ENCODING", e.to_string()))?;
        self.store().put_setting(SETTINGS_KEY, json).await?;
        if let Ok(mut s) = self.inner.lifecycle.write() {
            *s = new.clone();
        }
        let changes = serde_json::json!({"before": old, "after": new});
        self.log_activity_now(entry(
            &actor_of(by),
            "settings.changed",
            vec![],
            ActivityOutcome::Ok,
            "lifecycle settings changed",
            Some(changes),
        ))
        .await?;
        info!(by, ?new, "lifecycle settings changed");
        if new.abm_as_preenrolled && !old.abm_as_preenrolled {
            self.preenroll_abm_devices().await?;
        }
        Ok(new)
    }

    /// A page of the device list.
    pub fn list_devices(&self, q: &DeviceQuery) -> ServiceResult<DevicePage> {
        self.devices().list(q, Timestamp::now(), &self.thresholds())
    }

    /// How many devices are in each status.
    pub fn device_counts(&self) -> StatusCounts {
        self.devices().counts(Timestamp::now(), &self.thresholds())
    }

    fn device_facts(&self, key: &str) -> ServiceResult<DeviceFacts> {
        self.devices().get(key.trim()).ok_or_else(|| {
            ServiceError::not_found(
                "DEVICE_NOT_FOUND",
                format!(
                    "no device with serial number or enrollment id {}: it is not pre-enrolled, listed by ABM or enrolled",
                    key.trim()
                ),
            )
        })
    }

    /// One device: status, reason, fix, facts, commands and timeline.
    pub fn device_detail(&self, key: &str) -> ServiceResult<DeviceDetail> {
        let f = self.device_facts(key)?;
        let now = Timestamp::now();
        let th = self.thresholds();
        let mut summary = summary(&f, now, &th);
        let invitation = self.current_invitation(&f);
        if let Some(inv) = &invitation {
            // Unenrolled by the offline policy rather than by the device: say so.
            if summary.explanation.status == status::DeviceStatus::Unenrolled {
                summary.explanation.reason =
                    format!("The appliance unenrolled it automatically: {}.", inv.reason);
                summary.explanation.fix = Some(match inv.kind {
                    offline::InvitationKind::Link => "Send its user the re-enrollment link (`mdmctl devices invitation SERIAL`); it works once, for 30 days.".into(),
                    offline::InvitationKind::SetupAssistant => "Erase the device; Setup Assistant enrolls it again through Apple Business Manager.".into(),
                });
            }
        }
        let enrollment_rec = match &f.enrollment {
            Some(e) => self.store().enrollment(&e.id)?,
            None => None,
        };
        let (queued_commands, recent_commands) = match &f.enrollment {
            Some(e) => {
                let recent = self.store().enrollment_deliveries(&e.id, 50)?;
                let mut queued: Vec<&DeliveryRecord> =
                    recent.iter().filter(|d| !d.status.is_final()).collect();
                queued.sort_by_key(|d| d.queued_at);
                (
                    queued.iter().map(|d| d.request_type.clone()).collect(),
                    recent,
                )
            }
            None => (Vec::new(), Vec::new()),
        };
        let waiting_for = if f
            .enrollment
            .as_ref()
            .is_some_and(|e| e.awaiting_configuration)
        {
            waiting_for(&recent_commands, self.lifecycle_settings().auto_release)
        } else {
            Vec::new()
        };
        let mut timeline = Vec::new();
        let mut targets = vec![f.serial.clone()];
        if let Some(e) = &f.enrollment {
            if e.id != f.serial {
                targets.push(e.id.clone());
            }
        }
        let mut seen = HashSet::new();
        for t in targets {
            let q = ActivityQuery {
                target: Some(t),
                limit: 200,
                ..ActivityQuery::default()
            };
            for r in self.store().activity(&q, 200)?.0 {
                if seen.insert(r.seq) {
                    let mut v = ActivityView::from(r);
                    // An assignment or import entry names up to thousands of devices; the
                    // timeline is about this one.
                    if v.targets.len() > TIMELINE_TARGETS {
                        let more = v.targets.len() - TIMELINE_TARGETS;
                        v.targets.truncate(TIMELINE_TARGETS);
                        v.targets.push(format!("(+{more} more)"));
                    }
                    timeline.push(v);
                }
            }
        }
        timeline.sort_by_key(|a| std::cmp::Reverse(a.seq));
        timeline.truncate(200);
        let abm = f
            .abm
            .iter()
            .map(|a| AbmView {
                connection: a.connection.clone(),
                model: a.model.clone(),
                device_family: a.device_family.clone(),
                os: a.os.clone(),
                profile_status: a.profile_status.clone(),
                profile_uuid: a.profile_uuid.clone(),
                pushed_at: a.pushed_at,
                last_assignment: a.assignment.as_ref().map(|s| {
                    serde_json::json!({
                        "profile": s.profile,
                        "outcome": s.outcome.as_apple(),
                        "at": s.at.to_rfc3339(),
                        "reason": s.reason,
                        "failures": s.failures,
                    })
                }),
                next_assignment_at: a.next_assign_at,
                removed_at: a.removed_at,
                first_seen_at: a.first_seen_at,
            })
            .collect();
        let user = match enrollment_rec.as_ref().and_then(|e| e.source.as_ref()) {
            Some(crate::ports::EnrollmentSource::Ade {
                user: Some(name), ..
            }) => {
                let account = self.store().user(name)?;
                Some(EnrolledUser {
                    username: name.clone(),
                    full_name: account.as_ref().map(|a| a.full_name.clone()),
                    email: account.as_ref().and_then(|a| a.email.clone()),
                    account_exists: account.is_some(),
                })
            }
            _ => None,
        };
        Ok(DeviceDetail {
            summary,
            preenroll: f.preenroll.as_deref().cloned(),
            abm,
            enrollment: enrollment_rec,
            queued_commands,
            recent_commands,
            waiting_for,
            timeline,
            profiles: self.device_profiles(&f)?,
            invitation,
            user,
        })
    }

    /// Imports expected devices from a CSV file; see [`ImportOptions`]. Everything written
    /// goes in one transaction with its activity entry.
    pub async fn import_preenroll(
        &self,
        bytes: &[u8],
        opts: ImportOptions,
        by: &str,
    ) -> ServiceResult<ImportReport> {
        let parsed =
            csv::parse(bytes).map_err(|e| ServiceError::bad_request(e.code(), e.to_string()))?;
        let mut report = ImportReport {
            dry_run: opts.dry_run,
            written: false,
            refused: None,
            total_rows: parsed.total_rows,
            valid_rows: parsed.rows.len(),
            new: 0,
            replaced: 0,
            skipped: 0,
            errors: parsed.errors,
            duplicates: Vec::new(),
            ignored_columns: parsed.ignored_columns,
        };
        let now = Timestamp::now();
        let mut put = Vec::with_capacity(parsed.rows.len());
        for row in parsed.rows {
            let existing = self.store().preenrolled(&row.serial_number)?;
            if existing.is_some() {
                report.duplicates.push(ExistingSerial {
                    row: row.row,
                    serial_number: row.serial_number.clone(),
                });
                match opts.on_duplicate {
                    Some(OnDuplicate::Skip) => {
                        report.skipped += 1;
                        continue;
                    }
                    Some(OnDuplicate::Replace) | None => report.replaced += 1,
                }
            } else {
                report.new += 1;
            }
            put.push(PreenrollRecord {
                serial: row.serial_number,
                name: Some(row.name),
                email: Some(row.email),
                ownership: Some(row.ownership),
                platform: Some(row.platform),
                mobile: row.mobile,
                device_name: row.device_name,
                source: PreenrollSource::Csv,
                created_at: existing.as_ref().map_or(now, |o| o.created_at),
                updated_at: now,
                updated_by: by.to_string(),
            });
        }
        if !report.errors.is_empty() && !opts.valid_only {
            report.refused = Some(ImportRefusal {
                code: "PREENROLL_ROWS_INVALID",
                message: format!(
                    "{} row(s) have errors; nothing was written. Fix them, or import only the valid rows.",
                    report.errors.len()
                ),
            });
        } else if !report.duplicates.is_empty() && opts.on_duplicate.is_none() {
            report.refused = Some(ImportRefusal {
                code: "PREENROLL_DUPLICATES",
                message: format!(
                    "{} serial number(s) are already pre-enrolled; nothing was written. Choose to replace or skip them.",
                    report.duplicates.len()
                ),
            });
        }
        if opts.dry_run || report.refused.is_some() || put.is_empty() {
            return Ok(report);
        }
        let serials: Vec<String> = put.iter().map(|r| r.serial.clone()).collect();
        let activity = entry(
            &actor_of(by),
            "preenroll.import",
            serials,
            ActivityOutcome::Ok,
            format!(
                "pre-enrolled {} device(s) from CSV ({} new, {} replaced, {} skipped, {} invalid row(s) left out)",
                put.len(),
                report.new,
                report.replaced,
                report.skipped,
                report.errors.len()
            ),
            Some(serde_json::json!({
                "new": report.new, "replaced": report.replaced, "skipped": report.skipped,
                "invalid_rows": report.errors.len(),
            })),
        );
        self.store()
            .write_preenrolled(put.clone(), Vec::new(), vec![activity])
            .await?;
        self.devices().put_preenrolled(put);
        report.written = true;
        info!(
            by,
            new = report.new,
            replaced = report.replaced,
            skipped = report.skipped,
            "pre-enrollment import"
        );
        Ok(report)
    }

    /// Pre-enrollment records by serial number.
    pub fn list_preenrolled(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> ServiceResult<Vec<PreenrollRecord>> {
        Ok(self
            .store()
            .list_preenrolled(after, limit.clamp(1, 10_000))?)
    }

    /// Forgets pre-enrollment records. Unknown serials are reported, not an error.
    pub async fn delete_preenrolled(
        &self,
        serials: Vec<String>,
        by: &str,
    ) -> ServiceResult<(Vec<String>, Vec<String>)> {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for s in serials {
            let s = normalize_serial(&s);
            if self.store().preenrolled(&s)?.is_some() {
                found.push(s);
            } else {
                missing.push(s);
            }
        }
        if found.is_empty() {
            return Ok((found, missing));
        }
        let activity = entry(
            &actor_of(by),
            "preenroll.delete",
            found.clone(),
            ActivityOutcome::Ok,
            format!("removed {} pre-enrollment record(s)", found.len()),
            None,
        );
        self.store()
            .write_preenrolled(Vec::new(), found.clone(), vec![activity])
            .await?;
        self.devices().remove_preenrolled(&found);
        Ok((found, missing))
    }

    /// Whether enrolling `serial` is allowed under "pre-enrolled devices only". A refusal is
    /// logged for the admin and carries a message for the person holding the device.
    pub(crate) fn check_enrollment_allowed(
        &self,
        serial: Option<&str>,
        how: &str,
    ) -> ServiceResult<()> {
        if !self.lifecycle_settings().preenrolled_only {
            return Ok(());
        }
        let serial = serial.map(normalize_serial).filter(|s| !s.is_empty());
        let expected = match &serial {
            Some(s) => self.store().preenrolled(s)?.is_some(),
            None => false,
        };
        if expected {
            return Ok(());
        }
        let shown = serial.clone().unwrap_or_else(|| "(none reported)".into());
        warn!(serial = %shown, how, "enrollment refused: the device is not pre-enrolled");
        self.log_activity(entry(
            "device",
            "enrollment.refused",
            serial.into_iter().collect(),
            ActivityOutcome::Refused,
            format!("{how} enrollment of serial {shown} refused: not pre-enrolled"),
            None,
        ));
        Err(ServiceError::forbidden(
            "ENROLLMENT_RESTRICTED",
            format!(
                "This device (serial number {shown}) is not on {}'s list of expected devices. Ask your IT administrator to pre-enroll it, then try again.",
                self.config().organization
            ),
        ))
    }

    /// Sends DeviceConfigured to a device held in Setup Assistant, at an admin's request.
    pub async fn release_device(&self, key: &str, by: &str) -> ServiceResult<ReleaseOutcome> {
        let f = self.device_facts(key)?;
        let e = f
            .enrollment
            .as_ref()
            .filter(|e| e.state == EnrollmentState::Enrolled && e.awaiting_configuration)
            .ok_or_else(|| {
                ServiceError::conflict(
                    "NOT_AWAITING_CONFIGURATION",
                    format!(
                        "device {} is not waiting in Setup Assistant; DeviceConfigured is only sent to a device that is",
                        f.serial
                    ),
                )
            })?;
        let out = self
            .enqueue(
                crate::commands::CommandSpec::Typed(mdm_proto::Command::DeviceConfigured),
                vec![e.id.clone()],
                by,
            )
            .await?;
        self.log_activity_now(entry(
            &actor_of(by),
            "setup.release_requested",
            vec![f.serial.clone(), e.id.clone()],
            ActivityOutcome::Ok,
            format!("release of {} from Setup Assistant requested", f.serial),
            Some(serde_json::json!({"command_uuid": out.command_uuid})),
        ))
        .await?;
        Ok(ReleaseOutcome {
            serial: f.serial,
            enrollment_id: e.id.clone(),
            command_uuid: out.command_uuid,
        })
    }

    /// After a device-channel enrollment changed or one of its commands finished: if it is
    /// held in Setup Assistant, automatic release is on, and its baseline is done without
    /// errors, queue DeviceConfigured (once).
    pub(crate) async fn maybe_auto_release(&self, enrollment_id: &str) -> ServiceResult<()> {
        if !self.lifecycle_settings().auto_release {
            return Ok(());
        }
        let Some(rec) = self.store().enrollment(enrollment_id)? else {
            return Ok(());
        };
        if rec.state != EnrollmentState::Enrolled || !rec.awaiting_configuration {
            return Ok(());
        }
        // Only this enrollment's deliveries count: a re-enrolled device starts over.
        let mut recent = self.store().enrollment_deliveries(enrollment_id, 200)?;
        recent.retain(|d| d.queued_at >= rec.authenticated_at);
        // DeviceConfigured goes once per enrollment: after a failed one, an admin decides.
        if recent.iter().any(|d| d.request_type == "DeviceConfigured") {
            return Ok(());
        }
        if !release_blockers(&recent).is_empty() {
            return Ok(());
        }
        let out = self
            .enqueue(
                crate::commands::CommandSpec::Typed(mdm_proto::Command::DeviceConfigured),
                vec![enrollment_id.to_string()],
                "system",
            )
            .await?;
        let serial = self.devices().key_of(enrollment_id);
        self.log_activity(entry(
            "system",
            "setup.release_queued",
            serial.into_iter().chain([enrollment_id.to_string()]).collect(),
            ActivityOutcome::Ok,
            "baseline acknowledged: DeviceConfigured queued to release the device from Setup Assistant",
            Some(serde_json::json!({"command_uuid": out.command_uuid})),
        ));
        Ok(())
    }

    /// The device acknowledged DeviceConfigured.
    pub(crate) async fn device_configured(&self, enrollment_id: &str) -> ServiceResult<()> {
        let now = Timestamp::now();
        if self.store().set_configured(enrollment_id, now).await? {
            if let Some(rec) = self.store().enrollment(enrollment_id)? {
                self.devices().put_enrollment(&rec);
            }
            let serial = self.devices().key_of(enrollment_id);
            self.log_activity(entry(
                "device",
                "setup.released",
                serial
                    .into_iter()
                    .chain([enrollment_id.to_string()])
                    .collect(),
                ActivityOutcome::Ok,
                "DeviceConfigured acknowledged: the device left Setup Assistant",
                None,
            ));
        }
        Ok(())
    }

    /// With "add ABM devices as pre-enrolled" on: pre-enrollment records for the serials of
    /// `devices` that have none, to commit with them.
    pub(crate) fn abm_preenroll_records(
        &self,
        devices: &[AbmDeviceRecord],
    ) -> Vec<PreenrollRecord> {
        if !self.lifecycle_settings().abm_as_preenrolled {
            return Vec::new();
        }
        let now = Timestamp::now();
        let dir = self.devices();
        devices
            .iter()
            .filter(|d| d.removed_at.is_none() && !dir.is_preenrolled(&d.serial))
            .map(|d| abm_preenroll_record(&d.serial, &d.connection, now))
            .collect()
    }

    /// Pre-enrolls every serial ABM already lists (when the option is switched on).
    async fn preenroll_abm_devices(&self) -> ServiceResult<()> {
        let now = Timestamp::now();
        let batch: Vec<PreenrollRecord> = self
            .devices()
            .abm_without_preenroll()
            .iter()
            .map(|(serial, connection)| abm_preenroll_record(serial, connection, now))
            .collect();
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len();
        for chunk in batch.chunks(5000) {
            self.store()
                .write_preenrolled(chunk.to_vec(), Vec::new(), Vec::new())
                .await?;
            self.devices().put_preenrolled(chunk.to_vec());
        }
        self.log_activity_now(entry(
            "system",
            "preenroll.abm",
            Vec::new(),
            ActivityOutcome::Ok,
            format!("{n} device(s) listed by ABM pre-enrolled"),
            None,
        ))
        .await?;
        Ok(())
    }
}

/// The pre-enrollment record of a serial an ABM connection lists.
fn abm_preenroll_record(serial: &str, connection: &str, now: Timestamp) -> PreenrollRecord {
    PreenrollRecord {
        serial: serial.to_string(),
        name: None,
        email: None,
        ownership: None,
        platform: None,
        mobile: None,
        device_name: None,
        source: PreenrollSource::Abm {
            connection: connection.to_string(),
        },
        created_at: now,
        updated_at: now,
        updated_by: "system".into(),
    }
}

/// How many targets of an activity entry a device's timeline shows.
const TIMELINE_TARGETS: usize = 10;

/// What stands between a device held in Setup Assistant and its release, from its recent
/// deliveries (newest first): empty when nothing does.
fn release_blockers(recent: &[DeliveryRecord]) -> Vec<String> {
    let configured_pending = recent
        .iter()
        .any(|d| d.request_type == "DeviceConfigured" && !d.status.is_final());
    if configured_pending {
        return vec!["DeviceConfigured to be acknowledged".into()];
    }
    recent
        .iter()
        .filter(|d| d.request_type != "DeviceConfigured")
        .filter_map(|d| match d.status {
            DeliveryStatus::Queued | DeliveryStatus::NotNow => Some(format!(
                "{} ({}) to be acknowledged",
                d.request_type, d.command_uuid
            )),
            DeliveryStatus::Error | DeliveryStatus::CommandFormatError => Some(format!(
                "{} ({}) failed on the device: release by hand once it is dealt with",
                d.request_type, d.command_uuid
            )),
            DeliveryStatus::Acknowledged | DeliveryStatus::Canceled => None,
        })
        .collect()
}

/// What a device held in Setup Assistant waits for, as the detail view shows it: the
/// blockers, or one line saying what happens next.
fn waiting_for(recent: &[DeliveryRecord], auto_release: bool) -> Vec<String> {
    let blockers = release_blockers(recent);
    if !blockers.is_empty() {
        return blockers;
    }
    vec![if auto_release {
        "nothing: the baseline is done; DeviceConfigured is queued next".into()
    } else {
        "nothing but an admin: automatic release is off (`mdmctl release SERIAL`)".into()
    }]
}
