//! Automatic unenrollment of devices that have been offline too long (off by default), each
//! with a re-enrollment invitation.
//!
//! A device counts when it is `offline` (pushed, yet silent past the offline threshold) and
//! its last check-in is older than `auto_unenroll_after_days`. Unenrolling it here is the
//! server's side only: the device cannot be reached to remove its MDM profile, so the
//! enrollment is closed (queued commands cancelled, pushes stop, its identity no longer
//! accepted) and it shows as `unenrolled`. The invitation says how it comes back: a one-time
//! enrollment link for a manually enrolled device, Setup Assistant (after an erase) for an
//! ADE device.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::activity::entry;
use super::status::{status, DeviceFacts, DeviceStatus, Thresholds};
use crate::enroll::LinkRequest;
use crate::error::{ServiceError, ServiceResult};
use crate::ports::{ActivityOutcome, Store, Timestamp};
use crate::MdmService;

/// Settings key prefix of invitations (`reenroll/SERIAL`).
const KEY_PREFIX: &str = "reenroll/";
/// The keystore purpose of a sealed invitation link.
const URL_PURPOSE: &str = "reenroll-link";
/// How long an invitation link stays valid.
const LINK_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most devices unenrolled per pass (a pass runs every retention interval).
const MAX_PER_PASS: usize = 1000;

/// How a device is invited back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvitationKind {
    /// Open the one-time enrollment link on the device.
    Link,
    /// Erase the device; Setup Assistant enrolls it through ABM.
    SetupAssistant,
}

/// A re-enrollment invitation, stored per serial number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    pub serial: String,
    pub enrollment_id: String,
    pub kind: InvitationKind,
    #[serde(serialize_with = "super::rfc3339::ser")]
    pub created_at: Timestamp,
    /// Why the device was unenrolled.
    pub reason: String,
    /// The enrollment link (for [`InvitationKind::Link`]).
    pub link_id: Option<String>,
    #[serde(serialize_with = "super::rfc3339::opt")]
    pub expires_at: Option<Timestamp>,
    /// The link's URL, sealed: it enrolls a device, so it is a secret.
    #[serde(skip_serializing, default)]
    pub url_sealed: Option<Vec<u8>>,
}

// Timestamps are stored as numbers; the API form above is for display.
#[derive(Serialize, Deserialize)]
struct Stored {
    serial: String,
    enrollment_id: String,
    kind: InvitationKind,
    created_at: Timestamp,
    reason: String,
    link_id: Option<String>,
    expires_at: Option<Timestamp>,
    url_sealed: Option<Vec<u8>>,
}

impl From<Stored> for Invitation {
    fn from(s: Stored) -> Self {
        Invitation {
            serial: s.serial,
            enrollment_id: s.enrollment_id,
            kind: s.kind,
            created_at: s.created_at,
            reason: s.reason,
            link_id: s.link_id,
            expires_at: s.expires_at,
            url_sealed: s.url_sealed,
        }
    }
}

/// Whether the offline policy unenrolls this device now: it is `offline` (pushed, silent past
/// the offline threshold) and its last check-in is more than `days` days old.
pub fn due_for_unenroll(f: &DeviceFacts, now: Timestamp, th: &Thresholds, days: u32) -> bool {
    if days == 0 {
        return false;
    }
    let cutoff = now.minus(Duration::from_secs(u64::from(days) * 86_400));
    status(f, now, th) == DeviceStatus::Offline
        && f.enrollment
            .as_ref()
            .is_some_and(|e| e.last_seen_at < cutoff)
}

impl<S: Store> MdmService<S> {
    /// The re-enrollment invitation of a device, if it has one.
    pub fn invitation(&self, serial: &str) -> ServiceResult<Option<Invitation>> {
        let Some(bytes) = self.store().setting(&format!("{KEY_PREFIX}{serial}"))? else {
            return Ok(None);
        };
        let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| {
            ServiceError::internal(
                "INVITATION_UNREADABLE",
                format!("the re-enrollment invitation of {serial} is unreadable: {e}"),
            )
        })?;
        Ok(Some(stored.into()))
    }

    /// The invitation that still applies to a device: the one made when its current
    /// enrollment was closed by the offline policy. Once the device enrolls again (or was
    /// never unenrolled by the policy) there is none. An unreadable record is logged and
    /// treated as none, so that it cannot break the device's page.
    pub fn current_invitation(&self, f: &DeviceFacts) -> Option<Invitation> {
        let inv = match self.invitation(&f.serial) {
            Ok(inv) => inv?,
            Err(e) => {
                warn!(serial = %f.serial, error = %e, "re-enrollment invitation unreadable; ignored");
                return None;
            }
        };
        let e = f.enrollment.as_ref()?;
        let applies = e.state == crate::ports::EnrollmentState::CheckedOut
            && inv.enrollment_id == e.id
            && e.checked_out_at.is_some_and(|t| t >= inv.created_at);
        applies.then_some(inv)
    }

    /// Revokes the link of a device's invitation once it no longer applies (the device
    /// enrolled again, by whatever way, or a newer invitation replaces it), so that a link sent
    /// out weeks ago cannot enroll some other device. Failures are logged: the link expires
    /// by itself after 30 days.
    pub(crate) async fn retire_invitation(&self, serial: &str) {
        let inv = match self.invitation(serial) {
            Ok(Some(inv)) => inv,
            Ok(None) => return,
            Err(e) => {
                warn!(serial, error = %e, "re-enrollment invitation unreadable; its link is left to expire");
                return;
            }
        };
        let Some(link_id) = inv.link_id.as_deref() else {
            return;
        };
        match self.store().link(link_id) {
            Ok(Some(link)) if link.revoked_at.is_none() => {
                if let Err(e) = self.store().revoke_link(link_id, Timestamp::now()).await {
                    warn!(serial, link = link_id, error = %e, "cannot revoke a re-enrollment link that no longer applies");
                } else {
                    info!(
                        serial,
                        link = link_id,
                        "re-enrollment link revoked: it no longer applies"
                    );
                }
            }
            Ok(_) => {}
            Err(e) => warn!(serial, link = link_id, error = %e, "cannot read a re-enrollment link"),
        }
    }

    /// A device's invitation with its link URL (for the admin to send to the device's user).
    pub fn invitation_url(&self, key: &str) -> ServiceResult<(Invitation, Option<String>)> {
        let key = key.trim();
        let inv = self
            .devices()
            .get(key)
            .and_then(|f| self.current_invitation(&f))
            .ok_or_else(|| {
                ServiceError::not_found(
                    "INVITATION_NOT_FOUND",
                    format!(
                        "device {key} has no re-enrollment invitation (only devices unenrolled by the offline policy, and not enrolled since, have one)"
                    ),
                )
            })?;
        let url = match &inv.url_sealed {
            Some(sealed) => {
                let plain = self.unseal(URL_PURPOSE, sealed)?;
                Some(String::from_utf8_lossy(&plain).into_owned())
            }
            None => None,
        };
        Ok((inv, url))
    }

    /// Unenrolls the devices offline longer than `auto_unenroll_after_days`, if that is set.
    /// Returns how many were unenrolled.
    pub async fn auto_unenroll_offline(&self) -> ServiceResult<usize> {
        self.auto_unenroll_offline_at(Timestamp::now()).await
    }

    /// One pass of the offline policy as of `now`: what [`Self::auto_unenroll_offline`] does,
    /// with `now` deciding which devices are due and stamping the check-out and the
    /// invitation. The daemon passes the wall clock; tests pass a later time, since the
    /// policy counts in days. Returns how many devices were unenrolled.
    pub async fn auto_unenroll_offline_at(&self, now: Timestamp) -> ServiceResult<usize> {
        let settings = self.lifecycle_settings();
        let days = settings.auto_unenroll_after_days;
        if days == 0 {
            return Ok(0);
        }
        let th = settings.thresholds();
        let due = self
            .devices()
            .keys_matching(|f| due_for_unenroll(f, now, &th, days));
        let mut done = 0;
        for serial in due.into_iter().take(MAX_PER_PASS) {
            match self.unenroll_offline(&serial, &th, days, now).await {
                Ok(true) => done += 1,
                Ok(false) => {}
                Err(e) => {
                    warn!(serial, error = %e, "automatic unenrollment failed; retrying at the next pass")
                }
            }
        }
        if done > 0 {
            info!(devices = done, "offline devices unenrolled automatically");
        }
        Ok(done)
    }

    async fn unenroll_offline(
        &self,
        serial: &str,
        th: &Thresholds,
        days: u32,
        now: Timestamp,
    ) -> ServiceResult<bool> {
        let Some(f) = self.devices().get(serial) else {
            return Ok(false);
        };
        // Decided again on fresh facts: the device may have checked in (or enrolled anew)
        // since the pass listed it, and must then be left alone.
        if !due_for_unenroll(&f, now, th, days) {
            return Ok(false);
        }
        let Some(e) = f.enrollment.clone() else {
            return Ok(false);
        };
        let reason = format!(
            "no check-in for more than {days} days (last seen {})",
            e.last_seen_at.to_rfc3339()
        );
        // A link from an earlier invitation would stay valid beside the new one.
        self.retire_invitation(serial).await;
        // The invitation first: should the daemon stop in between, the device stays enrolled
        // and the next pass tries again, rather than being unenrolled with no way back shown.
        let (kind, link_id, expires_at, url_sealed) = if e.ade {
            (InvitationKind::SetupAssistant, None, None, None)
        } else {
            let created = self
                .create_link(
                    LinkRequest {
                        label: format!("re-enrollment of {serial}"),
                        ttl: Some(LINK_TTL),
                        max_uses: Some(1),
                    },
                    "system",
                )
                .await?;
            (
                InvitationKind::Link,
                Some(created.link.id.clone()),
                Some(created.link.expires_at),
                Some(self.seal(URL_PURPOSE, created.url.as_bytes())?),
            )
        };
        let stored = Stored {
            serial: serial.to_string(),
            enrollment_id: e.id.clone(),
            kind,
            created_at: now,
            reason: reason.clone(),
            link_id,
            expires_at,
            url_sealed,
        };
        let json = serde_json::to_vec(&stored)
            .map_err(|err| ServiceError::internal("INVITATION_ENCODING", err.to_string()))?;
        self.store()
            .put_setting(&format!("{KEY_PREFIX}{serial}"), json)
            .await?;
        if !self.store().check_out(&e.id, now).await? {
            return Ok(false);
        }
        if let Some(rec) = self.store().enrollment(&e.id)? {
            self.devices().put_enrollment(&rec);
        }
        self.forget_installs(&e.id).await?;
        let how = match kind {
            InvitationKind::Link => "a one-time enrollment link was created to invite it back",
            InvitationKind::SetupAssistant => "erase it to enroll it again through Setup Assistant",
        };
        self.log_activity_now(entry(
            "system",
            "enrollment.auto_unenrolled",
            vec![serial.to_string(), e.id.clone()],
            ActivityOutcome::Ok,
            format!("unenrolled automatically: {reason}; {how}"),
            Some(serde_json::json!({"invitation": kind, "days": days})),
        ))
        .await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::status::EnrollmentFacts;
    use crate::ports::EnrollmentState;

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;

    fn device(last_seen: i64, last_push: Option<i64>, state: EnrollmentState) -> DeviceFacts {
        DeviceFacts {
            serial: "C02OFFLINE1".into(),
            enrollment: Some(Box::new(EnrollmentFacts {
                id: "E".into(),
                state,
                ade: false,
                awaiting_configuration: false,
                model: None,
                os_version: None,
                device_name: None,
                authenticated_at: Timestamp(0),
                enrolled_at: Some(Timestamp(0)),
                token_updated_at: Some(Timestamp(0)),
                checked_out_at: None,
                last_seen_at: Timestamp(last_seen),
                last_push_at: last_push.map(Timestamp),
                push_invalid: None,
            })),
            ..DeviceFacts::default()
        }
    }

    #[test]
    fn only_offline_devices_silent_past_the_second_threshold() {
        let th = crate::lifecycle::LifecycleSettings::default().thresholds();
        let now = Timestamp(100 * DAY);
        // Silent 31 days although pushed: due at 30, not at 40, never when off.
        let silent = device(
            now.0 - 31 * DAY,
            Some(now.0 - HOUR),
            EnrollmentState::Enrolled,
        );
        assert!(due_for_unenroll(&silent, now, &th, 30));
        assert!(!due_for_unenroll(&silent, now, &th, 40));
        assert!(!due_for_unenroll(&silent, now, &th, 0));
        // Never pushed: not offline (nothing asked it to check in), so never unenrolled.
        let unpushed = device(now.0 - 31 * DAY, None, EnrollmentState::Enrolled);
        assert!(!due_for_unenroll(&unpushed, now, &th, 30));
        // Already checked out: nothing to do.
        let gone = device(
            now.0 - 31 * DAY,
            Some(now.0 - HOUR),
            EnrollmentState::CheckedOut,
        );
        assert!(!due_for_unenroll(&gone, now, &th, 30));
        // Seen recently: fine.
        let fresh = device(now.0 - HOUR, Some(now.0 - HOUR), EnrollmentState::Enrolled);
        assert!(!due_for_unenroll(&fresh, now, &th, 1));
    }
}
