//! Where a device is on its way to being managed, and why: one status derived from the facts
//! the appliance holds about a serial number (pre-enrollment, ABM, enrollment, pushes).
//!
//! [`status`] is cheap (no allocation); [`schedule`] says how the status changes with time, so
//! the device list can keep it per device and derive every status of a request with one
//! comparison each; [`explain`] adds the sentences for the rows actually shown.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ports::{AbmAssignOutcome, EnrollmentState, PreenrollRecord, Timestamp};

/// A device's status. The order is the list's "sort by status" order: most in need of an
/// admin first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Assignment with Apple failed or was throttled.
    AssignmentFailed,
    /// Part of the way through: profile downloaded but never enrolled, enrolled without a
    /// TokenUpdate for too long, or a push token Apple rejects.
    PartiallyEnrolled,
    /// Enrolled, pushed, and silent for longer than the offline threshold.
    Offline,
    /// ABM lists it for another MDM server.
    Elsewhere,
    /// Held in Setup Assistant until released with DeviceConfigured.
    AwaitingConfiguration,
    /// Identity issued and Authenticate received; no TokenUpdate yet.
    Enrolling,
    /// ABM has our profile on it; waiting for the device to be set up.
    Assigned,
    /// ABM lists it for this server but no enrollment profile is assigned (yet).
    NotAssigned,
    /// Pre-enrolled and not seen anywhere yet.
    Expected,
    /// The device checked out (its MDM profile was removed).
    Unenrolled,
    /// ABM stopped listing it for this server (released from the organisation or moved).
    Released,
    /// Managed and answering.
    Enrolled,
}

impl DeviceStatus {
    /// Every status, in sort order.
    pub const ALL: [DeviceStatus; 12] = [
        DeviceStatus::AssignmentFailed,
        DeviceStatus::PartiallyEnrolled,
        DeviceStatus::Offline,
        DeviceStatus::Elsewhere,
        DeviceStatus::AwaitingConfiguration,
        DeviceStatus::Enrolling,
        DeviceStatus::Assigned,
        DeviceStatus::NotAssigned,
        DeviceStatus::Expected,
        DeviceStatus::Unenrolled,
        DeviceStatus::Released,
        DeviceStatus::Enrolled,
    ];

    /// The name used in the API, the CLI and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::AssignmentFailed => "assignment_failed",
            DeviceStatus::PartiallyEnrolled => "partially_enrolled",
            DeviceStatus::Offline => "offline",
            DeviceStatus::Elsewhere => "elsewhere",
            DeviceStatus::AwaitingConfiguration => "awaiting_configuration",
            DeviceStatus::Enrolling => "enrolling",
            DeviceStatus::Assigned => "assigned",
            DeviceStatus::NotAssigned => "not_assigned",
            DeviceStatus::Expected => "expected",
            DeviceStatus::Unenrolled => "unenrolled",
            DeviceStatus::Released => "released",
            DeviceStatus::Enrolled => "enrolled",
        }
    }

    /// Parses [`DeviceStatus::as_str`]'s names.
    pub fn parse(s: &str) -> Option<Self> {
        DeviceStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// The time limits statuses depend on (from the lifecycle settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// An enrolled device pushed but silent this long is offline.
    pub offline_after: Duration,
    /// How long enrolling may take (profile downloaded → Authenticate → TokenUpdate) before
    /// the device counts as partially enrolled.
    pub enrolling_grace: Duration,
    /// A device held in Setup Assistant longer than this is flagged as stuck.
    pub awaiting_stuck_after: Duration,
}

/// What the appliance knows of a device's ABM record (for the connection that lists it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbmFacts {
    pub connection: String,
    pub model: String,
    pub device_family: String,
    pub os: String,
    /// Apple's `profile_status`: `empty`, `assigned`, `pushed` or `removed`.
    pub profile_status: String,
    pub profile_uuid: String,
    /// When Apple says the device fetched its profile (`profile_push_time`).
    pub pushed_at: Option<Timestamp>,
    pub assignment: Option<AssignmentFacts>,
    pub next_assign_at: Option<Timestamp>,
    pub removed_at: Option<Timestamp>,
    pub first_seen_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The last assignment attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentFacts {
    pub profile: String,
    pub outcome: AbmAssignOutcome,
    pub at: Timestamp,
    pub reason: Option<String>,
    pub failures: u32,
}

/// What the appliance knows of a device's MDM enrollment (its device channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentFacts {
    pub id: String,
    pub state: EnrollmentState,
    pub ade: bool,
    pub awaiting_configuration: bool,
    pub model: Option<String>,
    pub os_version: Option<String>,
    pub device_name: Option<String>,
    pub authenticated_at: Timestamp,
    pub enrolled_at: Option<Timestamp>,
    pub token_updated_at: Option<Timestamp>,
    pub checked_out_at: Option<Timestamp>,
    pub last_seen_at: Timestamp,
    pub last_push_at: Option<Timestamp>,
    /// Apple's reason and when, for a push token Apple called invalid.
    pub push_invalid: Option<(String, Timestamp)>,
}

/// Everything known about one serial number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    pub serial: String,
    /// Boxed, like `enrollment`: the directory keeps one `DeviceFacts` per device in one
    /// vector, and most devices lack one or the other, so inline they would cost every device
    /// a few hundred bytes (tens of MB at 100,000 devices).
    pub preenroll: Option<Box<PreenrollRecord>>,
    /// Every ABM connection that lists (or listed) the serial.
    pub abm: Vec<AbmFacts>,
    pub enrollment: Option<Box<EnrollmentFacts>>,
}

impl DeviceFacts {
    /// The ABM record that speaks for the device: one still listed, else the latest.
    pub fn current_abm(&self) -> Option<&AbmFacts> {
        self.abm
            .iter()
            .filter(|a| a.removed_at.is_none())
            .max_by_key(|a| a.updated_at)
            .or_else(|| self.abm.iter().max_by_key(|a| a.updated_at))
    }
}

fn older_than(t: Timestamp, now: Timestamp, d: Duration) -> bool {
    t < now.minus(d)
}

/// The threshold a status change waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// [`Thresholds::enrolling_grace`].
    EnrollingGrace,
    /// [`Thresholds::offline_after`].
    OfflineAfter,
}

impl Thresholds {
    /// The duration `clock` stands for.
    pub fn of(&self, clock: Clock) -> Duration {
        match clock {
            Clock::EnrollingGrace => self.enrolling_grace,
            Clock::OfflineAfter => self.offline_after,
        }
    }
}

/// How a device's status depends on the time, given its facts: `initial` until the `change`
/// (if any) happens, which is when its `since` becomes older than its threshold.
///
/// Every time-dependent status is one condition "this moment is older than that threshold"
/// on the branch the facts select, so the status changes at most once as time passes. The
/// device directory keeps the schedule per device (it changes only when the facts do), and a
/// list request then derives each status with one comparison, for any `now` and thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusSchedule {
    pub initial: DeviceStatus,
    pub change: Option<StatusChange>,
}

/// The one time-driven change of a [`StatusSchedule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusChange {
    /// The status from then on.
    pub to: DeviceStatus,
    /// The moment that ages (Authenticate, last contact, profile fetched).
    pub since: Timestamp,
    /// How old `since` must be.
    pub after: Clock,
}

impl StatusSchedule {
    fn fixed(s: DeviceStatus) -> Self {
        StatusSchedule {
            initial: s,
            change: None,
        }
    }

    fn until_older(
        initial: DeviceStatus,
        since: Timestamp,
        after: Clock,
        to: DeviceStatus,
    ) -> Self {
        StatusSchedule {
            initial,
            change: Some(StatusChange { to, since, after }),
        }
    }

    /// The status at `now`.
    pub fn at(&self, now: Timestamp, th: &Thresholds) -> DeviceStatus {
        match self.change {
            Some(c) if older_than(c.since, now, th.of(c.after)) => c.to,
            _ => self.initial,
        }
    }
}

/// The device's status now.
pub fn status(f: &DeviceFacts, now: Timestamp, th: &Thresholds) -> DeviceStatus {
    schedule(f).at(now, th)
}

/// How the device's status changes with time (see [`StatusSchedule`]); [`status`] is this
/// schedule read at a time.
pub fn schedule(f: &DeviceFacts) -> StatusSchedule {
    use DeviceStatus as S;
    if let Some(e) = &f.enrollment {
        return match e.state {
            EnrollmentState::CheckedOut => StatusSchedule::fixed(S::Unenrolled),
            EnrollmentState::Authenticated => StatusSchedule::until_older(
                S::Enrolling,
                e.authenticated_at,
                Clock::EnrollingGrace,
                S::PartiallyEnrolled,
            ),
            EnrollmentState::Enrolled if e.push_invalid.is_some() => {
                StatusSchedule::fixed(S::PartiallyEnrolled)
            }
            EnrollmentState::Enrolled if e.awaiting_configuration => {
                StatusSchedule::fixed(S::AwaitingConfiguration)
            }
            // Offline needs pushes the device left unanswered, and silence past the threshold.
            EnrollmentState::Enrolled if e.last_push_at.is_some_and(|p| p > e.last_seen_at) => {
                StatusSchedule::until_older(
                    S::Enrolled,
                    e.last_seen_at,
                    Clock::OfflineAfter,
                    S::Offline,
                )
            }
            EnrollmentState::Enrolled => StatusSchedule::fixed(S::Enrolled),
        };
    }
    match f.current_abm() {
        Some(a) => abm_schedule(a),
        None => StatusSchedule::fixed(S::Expected),
    }
}

fn abm_schedule(a: &AbmFacts) -> StatusSchedule {
    use DeviceStatus as S;
    if a.removed_at.is_some() {
        return StatusSchedule::fixed(S::Released);
    }
    if let Some(asg) = &a.assignment {
        match asg.outcome {
            AbmAssignOutcome::NotAccessible => return StatusSchedule::fixed(S::Elsewhere),
            AbmAssignOutcome::Failed | AbmAssignOutcome::Throttled => {
                return StatusSchedule::fixed(S::AssignmentFailed)
            }
            AbmAssignOutcome::Success | AbmAssignOutcome::Removed => {}
        }
    }
    match (a.profile_status.as_str(), a.pushed_at) {
        // Fetched from Apple but never enrolled within the grace period.
        (mdm_proto::abm::profile_status::PUSHED, Some(p)) => {
            StatusSchedule::until_older(S::Assigned, p, Clock::EnrollingGrace, S::PartiallyEnrolled)
        }
        (mdm_proto::abm::profile_status::ASSIGNED | mdm_proto::abm::profile_status::PUSHED, _) => {
            StatusSchedule::fixed(S::Assigned)
        }
        _ => StatusSchedule::fixed(S::NotAssigned),
    }
}

/// A status with the words around it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub status: DeviceStatus,
    /// Why, from the facts, in one or two sentences.
    pub reason: String,
    /// What an admin can do, when something can be done.
    pub fix: Option<String>,
    /// Since when the device has been in this status (as far as the appliance knows).
    #[serde(serialize_with = "super::rfc3339::opt")]
    pub since: Option<Timestamp>,
    /// Set when the device has been waiting longer than it should (held in Setup Assistant
    /// past the threshold).
    pub stuck: bool,
}

fn at(t: Timestamp) -> String {
    t.to_rfc3339()
}

/// The status with its reason, fix and since-when.
pub fn explain(f: &DeviceFacts, now: Timestamp, th: &Thresholds) -> Explanation {
    let st = status(f, now, th);
    let mut stuck = false;
    let (reason, fix, since) = match st {
        DeviceStatus::Unenrolled => {
            let e = f.enrollment.as_ref();
            let t = e.and_then(|e| e.checked_out_at);
            (
                format!(
                    "The device checked out{}: its MDM profile was removed, so the appliance can no longer manage it.",
                    t.map(|t| format!(" at {}", at(t))).unwrap_or_default()
                ),
                Some("Enroll it again (Setup Assistant after an erase for ADE, or an enrollment link).".into()),
                t,
            )
        }
        DeviceStatus::Enrolling => {
            let t = f.enrollment.as_ref().map(|e| e.authenticated_at);
            (
                "The device has its identity certificate and sent Authenticate; the appliance is waiting for its first TokenUpdate.".into(),
                None,
                t,
            )
        }
        DeviceStatus::PartiallyEnrolled => partial(f, th),
        DeviceStatus::AwaitingConfiguration => {
            let e = f.enrollment.as_ref();
            let t = e.and_then(|e| e.enrolled_at.or(e.token_updated_at));
            stuck = t.is_some_and(|t| older_than(t, now, th.awaiting_stuck_after));
            let reason = if stuck {
                format!(
                    "The device is held in Setup Assistant (AwaitingConfiguration) for more than {} minutes: it is waiting for its baseline to be acknowledged and for DeviceConfigured.",
                    th.awaiting_stuck_after.as_secs() / 60
                )
            } else {
                "The device enrolled during Setup Assistant and is held there until it is released with DeviceConfigured.".into()
            };
            (
                reason,
                Some("It is released automatically once its baseline is acknowledged; release it by hand with `mdmctl release SERIAL`.".into()),
                t,
            )
        }
        DeviceStatus::Offline => {
            let e = f.enrollment.as_ref();
            let seen = e.map(|e| e.last_seen_at);
            (
                format!(
                    "No contact since {} although pushes were sent (last at {}).",
                    seen.map(at).unwrap_or_default(),
                    e.and_then(|e| e.last_push_at).map(at).unwrap_or_default()
                ),
                Some("Check that the device is powered on and has network access to the appliance and to Apple's push service (TCP 5223 or 443 to *.push.apple.com).".into()),
                seen,
            )
        }
        DeviceStatus::Enrolled => {
            let e = f.enrollment.as_ref();
            (
                "Enrolled and managed.".into(),
                None,
                e.and_then(|e| e.enrolled_at),
            )
        }
        DeviceStatus::Released => {
            let a = f.current_abm();
            let t = a.and_then(|a| a.removed_at);
            (
                format!(
                    "ABM stopped listing it for connection {}{}: it was released from the organisation or assigned to another MDM server.",
                    a.map(|a| a.connection.as_str()).unwrap_or_default(),
                    t.map(|t| format!(" at {}", at(t))).unwrap_or_default()
                ),
                Some("If it should be managed here, assign it to this MDM server in Apple Business Manager; the next sync picks it up.".into()),
                t,
            )
        }
        DeviceStatus::Elsewhere => {
            let a = f.current_abm();
            let asg = a.and_then(|a| a.assignment.as_ref());
            (
                format!(
                    "Apple answered NOT_ACCESSIBLE when profile {} was assigned: the device is assigned to another MDM server in ABM.",
                    asg.map(|s| s.profile.as_str()).unwrap_or_default()
                ),
                Some("In Apple Business Manager, assign the device to this appliance's MDM server, then sync.".into()),
                asg.map(|s| s.at),
            )
        }
        DeviceStatus::AssignmentFailed => {
            let a = f.current_abm();
            let asg = a.and_then(|a| a.assignment.as_ref());
            let outcome = asg.map(|s| s.outcome.as_apple()).unwrap_or_default();
            let retry = a
                .and_then(|a| a.next_assign_at)
                .map(|t| format!(" Next attempt at {}.", at(t)))
                .unwrap_or_default();
            (
                format!(
                    "Assigning profile {} failed with {outcome}{} ({} attempt{}).{retry}",
                    asg.map(|s| s.profile.as_str()).unwrap_or_default(),
                    asg.and_then(|s| s.reason.as_deref())
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default(),
                    asg.map_or(0, |s| s.failures),
                    if asg.map_or(0, |s| s.failures) == 1 { "" } else { "s" },
                ),
                Some("The appliance retries by itself; if it keeps failing, check the connection's state with `mdmctl abm show` and the profile's definition.".into()),
                asg.map(|s| s.at),
            )
        }
        DeviceStatus::Assigned => {
            let a = f.current_abm();
            let pushed = a.and_then(|a| a.pushed_at);
            let reason = match pushed {
                Some(t) => format!(
                    "The device fetched its enrollment profile from Apple at {}; waiting for it to enroll.",
                    at(t)
                ),
                None => "ABM has this appliance's enrollment profile on the device; waiting for the device to be set up (or erased and set up again).".into(),
            };
            (
                reason,
                Some("Turn the device on and go through Setup Assistant; a device already set up must be erased first.".into()),
                pushed.or(a.and_then(|a| a.assignment.as_ref().map(|s| s.at))),
            )
        }
        DeviceStatus::NotAssigned => {
            let a = f.current_abm();
            let (reason, fix) = match a.and_then(|a| a.next_assign_at) {
                Some(t) => (
                    format!(
                        "ABM lists it for connection {}; assignment of its enrollment profile is queued for {}.",
                        a.map(|a| a.connection.as_str()).unwrap_or_default(),
                        at(t)
                    ),
                    None,
                ),
                None => (
                    format!(
                        "ABM lists it for connection {}, but no enrollment profile covers it.",
                        a.map(|a| a.connection.as_str()).unwrap_or_default()
                    ),
                    Some("Set a default profile for the connection or add a rule that covers it (`mdmctl abm rules`).".into()),
                ),
            };
            (reason, fix, a.map(|a| a.first_seen_at))
        }
        DeviceStatus::Expected => (
            "Pre-enrolled; the appliance has not seen it in ABM or enrolling yet.".into(),
            Some("Make sure the device is assigned to this MDM server in Apple Business Manager, or enroll it with an enrollment link.".into()),
            f.preenroll.as_ref().map(|p| p.created_at),
        ),
    };
    Explanation {
        status: st,
        reason,
        fix,
        since,
        stuck,
    }
}

fn partial(f: &DeviceFacts, th: &Thresholds) -> (String, Option<String>, Option<Timestamp>) {
    let grace = th.enrolling_grace.as_secs() / 60;
    if let Some(e) = &f.enrollment {
        if let Some((reason, t)) = &e.push_invalid {
            return (
                format!(
                    "Apple's push service rejects the device's push token ({reason}) since {}: commands wait until the device checks in by itself.",
                    at(*t)
                ),
                Some("The device clears this with its next TokenUpdate; if it never comes, the device was likely erased or its MDM profile removed: re-enroll it.".into()),
                Some(*t),
            );
        }
        return (
            format!(
                "The device received its identity and sent Authenticate at {}, but no TokenUpdate came within {grace} minutes: the enrollment profile may have been refused on the device.",
                at(e.authenticated_at)
            ),
            Some("Check the device's profile installation error; then retry the enrollment.".into()),
            Some(e.authenticated_at),
        );
    }
    let pushed = f.current_abm().and_then(|a| a.pushed_at);
    (
        format!(
            "The device fetched its enrollment profile from Apple at {} but has not enrolled with the appliance within {grace} minutes.",
            pushed.map(at).unwrap_or_default()
        ),
        Some("Check that the device reaches the appliance's URL during Setup Assistant (network, DNS, firewall) and look at the activity log for refused enrollments.".into()),
        pushed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TH: Thresholds = Thresholds {
        offline_after: Duration::from_secs(3600),
        enrolling_grace: Duration::from_secs(900),
        awaiting_stuck_after: Duration::from_secs(1800),
    };
    const NOW: Timestamp = Timestamp(10_000_000_000);

    fn abm(status: &str) -> AbmFacts {
        AbmFacts {
            connection: "north".into(),
            model: "iPad Air".into(),
            device_family: "iPad".into(),
            os: "iOS".into(),
            profile_status: status.into(),
            profile_uuid: String::new(),
            pushed_at: None,
            assignment: None,
            next_assign_at: None,
            removed_at: None,
            first_seen_at: Timestamp(1),
            updated_at: Timestamp(1),
        }
    }

    fn enrolled() -> EnrollmentFacts {
        EnrollmentFacts {
            id: "UDID".into(),
            state: EnrollmentState::Enrolled,
            ade: true,
            awaiting_configuration: false,
            model: None,
            os_version: None,
            device_name: None,
            authenticated_at: NOW.minus(Duration::from_secs(60)),
            enrolled_at: Some(NOW.minus(Duration::from_secs(50))),
            token_updated_at: Some(NOW.minus(Duration::from_secs(50))),
            checked_out_at: None,
            last_seen_at: NOW.minus(Duration::from_secs(10)),
            last_push_at: None,
            push_invalid: None,
        }
    }

    fn facts(abm_: Option<AbmFacts>, enr: Option<EnrollmentFacts>) -> DeviceFacts {
        DeviceFacts {
            serial: "C02X".into(),
            preenroll: None,
            abm: abm_.into_iter().collect(),
            enrollment: enr.map(Box::new),
        }
    }

    #[test]
    fn abm_states() {
        let f = facts(Some(abm("empty")), None);
        assert_eq!(status(&f, NOW, &TH), DeviceStatus::NotAssigned);
        let f = facts(Some(abm("assigned")), None);
        assert_eq!(status(&f, NOW, &TH), DeviceStatus::Assigned);
        let mut a = abm("pushed");
        a.pushed_at = Some(NOW.minus(Duration::from_secs(60)));
        assert_eq!(
            status(&facts(Some(a.clone()), None), NOW, &TH),
            DeviceStatus::Assigned
        );
        a.pushed_at = Some(NOW.minus(Duration::from_secs(3600)));
        let f = facts(Some(a), None);
        assert_eq!(status(&f, NOW, &TH), DeviceStatus::PartiallyEnrolled);
        assert!(explain(&f, NOW, &TH)
            .reason
            .contains("fetched its enrollment profile"));
        let mut a = abm("empty");
        a.assignment = Some(AssignmentFacts {
            profile: "staff".into(),
            outcome: AbmAssignOutcome::NotAccessible,
            at: NOW,
            reason: None,
            failures: 1,
        });
        assert_eq!(
            status(&facts(Some(a.clone()), None), NOW, &TH),
            DeviceStatus::Elsewhere
        );
        if let Some(s) = a.assignment.as_mut() {
            s.outcome = AbmAssignOutcome::Throttled;
        }
        a.next_assign_at = Some(NOW.plus(Duration::from_secs(60)));
        let f = facts(Some(a.clone()), None);
        assert_eq!(status(&f, NOW, &TH), DeviceStatus::AssignmentFailed);
        let e = explain(&f, NOW, &TH);
        assert!(
            e.reason.contains("THROTTLED") && e.reason.contains("Next attempt"),
            "{}",
            e.reason
        );
        a.removed_at = Some(NOW);
        assert_eq!(
            status(&facts(Some(a), None), NOW, &TH),
            DeviceStatus::Released
        );
        assert_eq!(status(&facts(None, None), NOW, &TH), DeviceStatus::Expected);
    }

    #[test]
    fn a_listed_record_speaks_over_a_removed_one() {
        let mut old = abm("assigned");
        old.removed_at = Some(Timestamp(5));
        old.updated_at = Timestamp(5);
        old.connection = "old".into();
        let new = abm("empty");
        let mut f = facts(Some(old), None);
        f.abm.push(new);
        assert_eq!(
            f.current_abm().map(|a| a.connection.as_str()),
            Some("north")
        );
        assert_eq!(status(&f, NOW, &TH), DeviceStatus::NotAssigned);
    }

    #[test]
    fn enrollment_states() {
        let f = facts(Some(abm("pushed")), Some(enrolled()));
        assert_eq!(status(&f, NOW, &TH), DeviceStatus::Enrolled);

        let mut e = enrolled();
        e.awaiting_configuration = true;
        let f = facts(None, Some(e.clone()));
        assert_eq!(status(&f, NOW, &TH), DeviceStatus::AwaitingConfiguration);
        assert!(!explain(&f, NOW, &TH).stuck);
        e.enrolled_at = Some(NOW.minus(Duration::from_secs(7200)));
        assert!(explain(&facts(None, Some(e)), NOW, &TH).stuck);

        let mut e = enrolled();
        e.state = EnrollmentState::Authenticated;
        assert_eq!(
            status(&facts(None, Some(e.clone())), NOW, &TH),
            DeviceStatus::Enrolling
        );
        e.authenticated_at = NOW.minus(Duration::from_secs(3600));
        assert_eq!(
            status(&facts(None, Some(e)), NOW, &TH),
            DeviceStatus::PartiallyEnrolled
        );

        let mut e = enrolled();
        e.push_invalid = Some(("Unregistered".into(), NOW));
        let f = facts(None, Some(e));
        assert_eq!(status(&f, NOW, &TH), DeviceStatus::PartiallyEnrolled);
        assert!(explain(&f, NOW, &TH).reason.contains("Unregistered"));

        let mut e = enrolled();
        e.state = EnrollmentState::CheckedOut;
        e.checked_out_at = Some(NOW);
        assert_eq!(
            status(&facts(None, Some(e)), NOW, &TH),
            DeviceStatus::Unenrolled
        );
    }

    #[test]
    fn offline_needs_unanswered_pushes() {
        let mut e = enrolled();
        e.last_seen_at = NOW.minus(Duration::from_secs(7200));
        // Silent but never pushed: idle, not offline.
        assert_eq!(
            status(&facts(None, Some(e.clone())), NOW, &TH),
            DeviceStatus::Enrolled
        );
        e.last_push_at = Some(NOW.minus(Duration::from_secs(3000)));
        assert_eq!(
            status(&facts(None, Some(e.clone())), NOW, &TH),
            DeviceStatus::Offline
        );
        // Pushed, but the last contact is recent.
        e.last_seen_at = NOW.minus(Duration::from_secs(60));
        e.last_push_at = Some(NOW.minus(Duration::from_secs(30)));
        assert_eq!(
            status(&facts(None, Some(e)), NOW, &TH),
            DeviceStatus::Enrolled
        );
    }

    /// The status as it was derived before schedules: straight from the facts and `now`.
    fn derived(f: &DeviceFacts, now: Timestamp, th: &Thresholds) -> DeviceStatus {
        if let Some(e) = &f.enrollment {
            return match e.state {
                EnrollmentState::CheckedOut => DeviceStatus::Unenrolled,
                EnrollmentState::Authenticated
                    if older_than(e.authenticated_at, now, th.enrolling_grace) =>
                {
                    DeviceStatus::PartiallyEnrolled
                }
                EnrollmentState::Authenticated => DeviceStatus::Enrolling,
                EnrollmentState::Enrolled if e.push_invalid.is_some() => {
                    DeviceStatus::PartiallyEnrolled
                }
                EnrollmentState::Enrolled if e.awaiting_configuration => {
                    DeviceStatus::AwaitingConfiguration
                }
                EnrollmentState::Enrolled
                    if e.last_push_at.is_some_and(|p| p > e.last_seen_at)
                        && older_than(e.last_seen_at, now, th.offline_after) =>
                {
                    DeviceStatus::Offline
                }
                EnrollmentState::Enrolled => DeviceStatus::Enrolled,
            };
        }
        let Some(a) = f.current_abm() else {
            return DeviceStatus::Expected;
        };
        if a.removed_at.is_some() {
            return DeviceStatus::Released;
        }
        match a.assignment.as_ref().map(|s| s.outcome) {
            Some(AbmAssignOutcome::NotAccessible) => return DeviceStatus::Elsewhere,
            Some(AbmAssignOutcome::Failed | AbmAssignOutcome::Throttled) => {
                return DeviceStatus::AssignmentFailed
            }
            _ => {}
        }
        match a.profile_status.as_str() {
            "pushed"
                if a.pushed_at
                    .is_some_and(|p| older_than(p, now, th.enrolling_grace)) =>
            {
                DeviceStatus::PartiallyEnrolled
            }
            "assigned" | "pushed" => DeviceStatus::Assigned,
            _ => DeviceStatus::NotAssigned,
        }
    }

    /// The schedule gives the derived status at every moment around its change, for facts
    /// of every kind, including the millisecond either side of a threshold and thresholds
    /// far beyond the clock's range.
    #[test]
    fn schedules_agree_with_the_derivation_at_every_time() {
        let mut facts_all = Vec::new();
        for state in [
            EnrollmentState::Authenticated,
            EnrollmentState::Enrolled,
            EnrollmentState::CheckedOut,
        ] {
            for (invalid, awaiting, push) in [
                (false, false, None),
                (false, false, Some(-5)),
                (false, false, Some(5)),
                (true, false, Some(5)),
                (false, true, Some(5)),
            ] {
                let mut e = enrolled();
                e.state = state;
                e.push_invalid = invalid.then(|| ("Unregistered".into(), NOW));
                e.awaiting_configuration = awaiting;
                e.last_push_at = push.map(|d| Timestamp(e.last_seen_at.0 + d));
                facts_all.push(facts(Some(abm("pushed")), Some(e)));
            }
        }
        for status in ["empty", "assigned", "pushed", "removed"] {
            for pushed in [None, Some(NOW.minus(Duration::from_secs(60)))] {
                let mut a = abm(status);
                a.pushed_at = pushed;
                facts_all.push(facts(Some(a.clone()), None));
                for outcome in [
                    AbmAssignOutcome::Success,
                    AbmAssignOutcome::NotAccessible,
                    AbmAssignOutcome::Failed,
                    AbmAssignOutcome::Throttled,
                    AbmAssignOutcome::Removed,
                ] {
                    a.assignment = Some(AssignmentFacts {
                        profile: "p".into(),
                        outcome,
                        at: NOW,
                        reason: None,
                        failures: 1,
                    });
                    facts_all.push(facts(Some(a.clone()), None));
                }
                a.removed_at = Some(NOW);
                facts_all.push(facts(Some(a), None));
            }
        }
        facts_all.push(facts(None, None));
        let huge = Thresholds {
            offline_after: Duration::from_secs(u64::MAX / 4),
            enrolling_grace: Duration::from_secs(u64::MAX / 4),
            awaiting_stuck_after: TH.awaiting_stuck_after,
        };
        let mut changing = 0;
        for f in &facts_all {
            let sched = schedule(f);
            let mut times = vec![Timestamp(i64::MIN), Timestamp(i64::MAX), NOW];
            for th in [TH, huge] {
                if let Some(c) = sched.change {
                    let edge = c.since.plus(th.of(c.after));
                    times.extend([-1, 0, 1, 2].map(|d| Timestamp(edge.0.saturating_add(d))));
                }
            }
            for th in [TH, huge] {
                let seen: std::collections::HashSet<_> = times
                    .iter()
                    .map(|now| {
                        assert_eq!(
                            sched.at(*now, &th),
                            derived(f, *now, &th),
                            "{f:?} at {now:?}"
                        );
                        assert_eq!(status(f, *now, &th), derived(f, *now, &th));
                        derived(f, *now, &th)
                    })
                    .collect();
                changing += usize::from(seen.len() > 1);
                // A status without a change never changes.
                if sched.change.is_none() {
                    assert_eq!(seen.len(), 1, "{f:?}");
                }
            }
        }
        assert!(changing >= 4, "the cases cross thresholds: {changing}");
    }

    #[test]
    fn names_round_trip() {
        for s in DeviceStatus::ALL {
            assert_eq!(DeviceStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeviceStatus::parse("pending"), None);
    }
}
