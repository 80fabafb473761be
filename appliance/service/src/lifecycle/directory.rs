//! The device directory: every device the appliance knows of, keyed by serial number, joining
//! its pre-enrollment record, ABM records and enrollment in memory.
//!
//! The store holds the facts; the directory is built from it at start-up and kept current by
//! the service's write paths, which hand it each record after its write committed. It exists
//! so that the device list can filter on a derived, time-dependent status and sort on any
//! column at 100,000 devices without a table scan per request: a page is one pass over compact
//! in-memory facts.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use base64::Engine as _;
use serde::Serialize;

use super::status::{
    explain, status, AbmFacts, AssignmentFacts, DeviceFacts, DeviceStatus, EnrollmentFacts,
    Explanation, Thresholds,
};
use crate::error::{ServiceError, ServiceResult};
use crate::ports::{
    pages, AbmDeviceRecord, Channel, EnrollmentRecord, EnrollmentSource, PreenrollRecord,
    PushOutcome, Store, Timestamp,
};

/// How many records the start-up load reads per store call.
const LOAD_PAGE: usize = 2000;

#[derive(Default)]
struct State {
    /// Serial number (or, for a device that reported none, its enrollment id) → facts.
    devices: BTreeMap<String, DeviceFacts>,
    /// Device-channel enrollment id → key in `devices`.
    by_enrollment: HashMap<String, String>,
}

impl State {
    /// See [`DeviceDirectory::resolve`].
    fn resolve(&self, key: &str) -> Option<String> {
        if self.devices.contains_key(key) {
            return Some(key.to_string());
        }
        let upper = key.to_ascii_uppercase();
        if self.devices.contains_key(&upper) {
            return Some(upper);
        }
        self.by_enrollment.get(key).cloned()
    }

    /// The facts of a device-channel enrollment, if it still speaks for its device.
    fn enrollment_mut(&mut self, enrollment_id: &str) -> Option<&mut EnrollmentFacts> {
        let key = self.by_enrollment.get(enrollment_id)?;
        self.devices
            .get_mut(key)
            .and_then(|d| d.enrollment.as_mut())
            .filter(|e| e.id == enrollment_id)
    }
}

/// See the module documentation. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct DeviceDirectory {
    state: RwLock<State>,
}

impl std::fmt::Debug for DeviceDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceDirectory")
            .field("devices", &self.read().devices.len())
            .finish()
    }
}

/// ABM facts taken from records about to be written, applied once the write committed (so the
/// records themselves can move into the write without a copy).
#[derive(Debug, Default)]
pub struct AbmUpdate(Vec<(String, AbmFacts)>);

impl AbmUpdate {
    /// The facts of `recs`.
    pub fn of(recs: &[AbmDeviceRecord]) -> Self {
        AbmUpdate(
            recs.iter()
                .map(|r| (r.serial.clone(), abm_facts(r)))
                .collect(),
        )
    }
}

/// Which column the list is sorted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    #[default]
    Serial,
    /// Most in need of an admin first (see [`DeviceStatus`]).
    Status,
    LastSeen,
    Name,
    Model,
}

impl SortKey {
    /// Parses the API's names: `serial`, `status`, `last_seen`, `name`, `model`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "serial" => SortKey::Serial,
            "status" => SortKey::Status,
            "last_seen" => SortKey::LastSeen,
            "name" => SortKey::Name,
            "model" => SortKey::Model,
            _ => return None,
        })
    }
}

/// A device list request.
#[derive(Debug, Clone, Default)]
pub struct DeviceQuery {
    /// Any of these statuses (empty: all).
    pub statuses: Vec<DeviceStatus>,
    /// Case-insensitive substring of serial, name, email, device name, model or enrollment id.
    pub search: Option<String>,
    /// Only devices an ABM connection of this name lists.
    pub connection: Option<String>,
    pub sort: SortKey,
    pub descending: bool,
    /// The previous page's `next`.
    pub after: Option<String>,
    pub limit: usize,
}

/// One row of the device list.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceSummary {
    pub serial: String,
    pub enrollment_id: Option<String>,
    #[serde(flatten)]
    pub explanation: Explanation,
    pub name: Option<String>,
    pub email: Option<String>,
    pub ownership: Option<&'static str>,
    pub platform: Option<&'static str>,
    pub model: Option<String>,
    pub os_version: Option<String>,
    pub device_name: Option<String>,
    pub abm_connection: Option<String>,
    pub profile_status: Option<String>,
    pub preenrolled: bool,
    #[serde(serialize_with = "super::rfc3339::opt")]
    pub last_seen_at: Option<Timestamp>,
    #[serde(serialize_with = "super::rfc3339::opt")]
    pub enrolled_at: Option<Timestamp>,
}

/// A page of the device list.
#[derive(Debug, Clone, Serialize)]
pub struct DevicePage {
    pub items: Vec<DeviceSummary>,
    /// Pass as `after` for the next page; `None` on the last.
    pub next: Option<String>,
    /// How many devices match the filters (all pages).
    pub total: usize,
}

/// Counts by status, for dashboards.
pub type StatusCounts = BTreeMap<&'static str, usize>;

/// A sort value: what the list orders by before the serial number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum SortVal {
    Int(i64),
    Text(String),
}

fn sort_val(key: SortKey, f: &DeviceFacts, st: DeviceStatus) -> SortVal {
    match key {
        SortKey::Serial => SortVal::Int(0),
        SortKey::Status => SortVal::Int(
            DeviceStatus::ALL
                .iter()
                .position(|s| *s == st)
                .map_or(0, |p| p as i64),
        ),
        SortKey::LastSeen => {
            SortVal::Int(f.enrollment.as_ref().map_or(i64::MIN, |e| e.last_seen_at.0))
        }
        SortKey::Name => SortVal::Text(
            f.preenroll
                .as_ref()
                .and_then(|p| p.name.as_deref())
                .unwrap_or_default()
                .to_lowercase(),
        ),
        SortKey::Model => SortVal::Text(model(f).unwrap_or_default().to_lowercase()),
    }
}

fn model(f: &DeviceFacts) -> Option<String> {
    f.enrollment
        .as_ref()
        .and_then(|e| e.model.clone())
        .or_else(|| f.current_abm().map(|a| a.model.clone()))
        .filter(|m| !m.is_empty())
}

fn encode_cursor(val: &SortVal, serial: &str) -> String {
    let json = serde_json::json!([val, serial]).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_cursor(s: &str) -> ServiceResult<(SortVal, String)> {
    let bad = || {
        ServiceError::bad_request(
            "INVALID_CURSOR",
            "`after` is not a cursor this list handed out; start again from the first page",
        )
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| bad())?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

fn matches_search(f: &DeviceFacts, needle: &str) -> bool {
    let hit = |s: &str| contains_ci(s, needle);
    if hit(&f.serial) {
        return true;
    }
    if let Some(p) = &f.preenroll {
        if [&p.name, &p.email, &p.device_name]
            .into_iter()
            .flatten()
            .any(|s| hit(s))
        {
            return true;
        }
    }
    if let Some(e) = &f.enrollment {
        if hit(&e.id)
            || [&e.device_name, &e.model]
                .into_iter()
                .flatten()
                .any(|s| hit(s))
        {
            return true;
        }
    }
    f.abm.iter().any(|a| hit(&a.model))
}

/// ASCII case-insensitive substring test without allocating; `needle` is lower-case.
fn contains_ci(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    if n.is_empty() {
        return true;
    }
    h.windows(n.len())
        .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
}

impl DeviceDirectory {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves facts that are each whole (every update is
        // one assignment), so the data stays usable.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Builds the directory from everything stored.
    pub fn load<S: Store>(store: &S) -> ServiceResult<Self> {
        let dir = DeviceDirectory::default();
        let preenrolled = pages(
            |after| store.list_preenrolled(after, LOAD_PAGE),
            |r: &PreenrollRecord| r.serial.as_str(),
        );
        for page in preenrolled {
            dir.put_preenrolled(page?);
        }
        for conn in store.abm_connections()? {
            let devices = pages(
                |after| store.abm_devices(&conn.name, after, LOAD_PAGE),
                |r: &AbmDeviceRecord| r.serial.as_str(),
            );
            for page in devices {
                dir.put_abm(&page?);
            }
        }
        let enrollments = pages(
            |after| store.list_enrollments(after, LOAD_PAGE),
            |r: &EnrollmentRecord| r.id.as_str(),
        );
        for page in enrollments {
            for rec in &page? {
                dir.put_enrollment(rec);
            }
        }
        Ok(dir)
    }

    /// How many devices the directory holds.
    pub fn len(&self) -> usize {
        self.read().devices.len()
    }

    /// Whether the directory holds no device.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records (or replaces) pre-enrollment records.
    pub fn put_preenrolled(&self, recs: Vec<PreenrollRecord>) {
        let mut st = self.write();
        for rec in recs {
            let entry = st.devices.entry(rec.serial.clone()).or_default();
            entry.serial.clone_from(&rec.serial);
            entry.preenroll = Some(rec);
        }
    }

    /// Forgets pre-enrollment records (the device stays if something else knows it).
    pub fn remove_preenrolled(&self, serials: &[String]) {
        let mut st = self.write();
        for s in serials {
            let empty = match st.devices.get_mut(s) {
                Some(f) => {
                    f.preenroll = None;
                    f.abm.is_empty() && f.enrollment.is_none()
                }
                None => false,
            };
            if empty {
                st.devices.remove(s);
            }
        }
    }

    /// Records ABM device records after their write committed.
    pub fn put_abm(&self, recs: &[AbmDeviceRecord]) {
        self.apply_abm(AbmUpdate::of(recs));
    }

    /// Applies an [`AbmUpdate`] prepared before its records were written.
    pub fn apply_abm(&self, update: AbmUpdate) {
        let mut st = self.write();
        for (serial, facts) in update.0 {
            let entry = st.devices.entry(serial.clone()).or_default();
            entry.serial = serial;
            match entry
                .abm
                .iter_mut()
                .find(|a| a.connection == facts.connection)
            {
                Some(slot) => *slot = facts,
                None => entry.abm.push(facts),
            }
        }
    }

    /// Forgets every ABM record of a deleted connection.
    pub fn remove_abm_connection(&self, connection: &str) {
        let mut st = self.write();
        st.devices.retain(|_, f| {
            f.abm.retain(|a| a.connection != connection);
            !(f.abm.is_empty() && f.enrollment.is_none() && f.preenroll.is_none())
        });
    }

    /// Records a device-channel enrollment after its write committed (user channels are
    /// ignored: they belong to their device's record).
    pub fn put_enrollment(&self, rec: &EnrollmentRecord) {
        if rec.channel != Channel::Device {
            return;
        }
        let key = enrollment_key(rec);
        let facts = enrollment_facts(rec);
        let mut st = self.write();
        let entry = st.devices.entry(key.clone()).or_default();
        entry.serial.clone_from(&key);
        // Of two enrollments for one serial (a device re-enrolled under another id), the
        // newer speaks for it.
        let replace = entry
            .enrollment
            .as_ref()
            .is_none_or(|old| old.id == facts.id || old.authenticated_at <= facts.authenticated_at);
        if replace {
            entry.enrollment = Some(facts);
        }
        st.by_enrollment.insert(rec.id.clone(), key);
    }

    /// The device was heard from.
    pub fn touch(&self, enrollment_id: &str, at: Timestamp) {
        if let Some(e) = self.write().enrollment_mut(enrollment_id) {
            if at > e.last_seen_at {
                e.last_seen_at = at;
            }
        }
    }

    /// Push outcomes after their write committed (one lock for a whole fan-out): accepted
    /// pushes set `last_push_at`, tokens Apple called invalid set `push_invalid`.
    pub fn pushes_recorded(&self, outcomes: &[(String, Option<PushOutcome>)], at: Timestamp) {
        let mut st = self.write();
        for (id, outcome) in outcomes {
            let Some(e) = st.enrollment_mut(id) else {
                continue;
            };
            match outcome {
                Some(PushOutcome::Sent { .. }) => e.last_push_at = Some(at),
                Some(PushOutcome::InvalidToken { reason, .. }) => {
                    e.push_invalid = Some((reason.clone(), at));
                }
                _ => {}
            }
        }
    }

    /// The serial number (directory key) of an enrollment's device.
    pub fn key_of(&self, enrollment_id: &str) -> Option<String> {
        let device_id = enrollment_id.split(':').next().unwrap_or(enrollment_id);
        self.read().by_enrollment.get(device_id).cloned()
    }

    /// Whether the serial number has a pre-enrollment record.
    pub fn is_preenrolled(&self, serial: &str) -> bool {
        self.read()
            .devices
            .get(serial)
            .is_some_and(|f| f.preenroll.is_some())
    }

    /// (serial, connection) of every device an ABM connection still lists that has no
    /// pre-enrollment record.
    pub fn abm_without_preenroll(&self) -> Vec<(String, String)> {
        self.read()
            .devices
            .values()
            .filter(|f| f.preenroll.is_none())
            .filter_map(|f| {
                let a = f.current_abm().filter(|a| a.removed_at.is_none())?;
                Some((f.serial.clone(), a.connection.clone()))
            })
            .collect()
    }

    /// One device's facts, by serial number or enrollment id.
    pub fn get(&self, key: &str) -> Option<DeviceFacts> {
        let st = self.read();
        let key = st.resolve(key)?;
        st.devices.get(&key).cloned()
    }

    /// The directory key (serial number) of a serial number in any case or an enrollment id.
    pub fn resolve(&self, key: &str) -> Option<String> {
        self.read().resolve(key)
    }

    /// How many devices are in each status now.
    pub fn counts(&self, now: Timestamp, th: &Thresholds) -> StatusCounts {
        let st = self.read();
        let mut out: StatusCounts = DeviceStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for f in st.devices.values() {
            *out.entry(status(f, now, th).as_str()).or_default() += 1;
        }
        out
    }

    /// Keys of the devices whose facts pass `pred`, in key order.
    pub fn keys_matching(&self, pred: impl Fn(&DeviceFacts) -> bool) -> Vec<String> {
        self.read()
            .devices
            .iter()
            .filter(|(_, f)| pred(f))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Keys of the devices with an enrolled device channel, in key order.
    pub fn enrolled_serials(&self) -> Vec<String> {
        self.keys_matching(|f| {
            f.enrollment
                .as_ref()
                .is_some_and(|e| e.state == crate::ports::EnrollmentState::Enrolled)
        })
    }

    /// A page of the device list.
    pub fn list(
        &self,
        q: &DeviceQuery,
        now: Timestamp,
        th: &Thresholds,
    ) -> ServiceResult<DevicePage> {
        let limit = q.limit.clamp(1, 1000);
        let after = q.after.as_deref().map(decode_cursor).transpose()?;
        let needle = q.search.as_ref().map(|s| s.trim().to_ascii_lowercase());
        let st = self.read();
        let passes = |f: &DeviceFacts| -> Option<DeviceStatus> {
            if let Some(c) = &q.connection {
                if !f.abm.iter().any(|a| &a.connection == c) {
                    return None;
                }
            }
            if let Some(n) = &needle {
                if !matches_search(f, n) {
                    return None;
                }
            }
            let s = status(f, now, th);
            (q.statuses.is_empty() || q.statuses.contains(&s)).then_some(s)
        };
        let order = |a: &(SortVal, &str), b: &(SortVal, &str)| -> Ordering {
            let o = a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1));
            if q.descending {
                o.reverse()
            } else {
                o
            }
        };
        let mut total = 0usize;
        let mut picked: Vec<(SortVal, &str)> = Vec::new();
        let cursor = after.as_ref().map(|(v, s)| (v.clone(), s.as_str()));
        for (key, f) in &st.devices {
            let Some(s) = passes(f) else { continue };
            total += 1;
            let item = (sort_val(q.sort, f, s), key.as_str());
            if let Some(c) = &cursor {
                if order(&item, c) != Ordering::Greater {
                    continue;
                }
            }
            picked.push(item);
            // Keep the buffer bounded: trim to the best `limit + 1` now and then.
            if picked.len() >= 4 * (limit + 1) + 1024 {
                picked.sort_by(&order);
                picked.truncate(limit + 1);
            }
        }
        picked.sort_by(&order);
        let more = picked.len() > limit;
        picked.truncate(limit);
        let next = if more {
            picked.last().map(|(v, s)| encode_cursor(v, s))
        } else {
            None
        };
        let items = picked
            .iter()
            .filter_map(|(_, key)| st.devices.get(*key))
            .map(|f| summary(f, now, th))
            .collect();
        Ok(DevicePage { items, next, total })
    }
}

/// The list row for a device.
pub fn summary(f: &DeviceFacts, now: Timestamp, th: &Thresholds) -> DeviceSummary {
    let p = f.preenroll.as_ref();
    let e = f.enrollment.as_ref();
    let a = f.current_abm();
    DeviceSummary {
        serial: f.serial.clone(),
        enrollment_id: e.map(|e| e.id.clone()),
        explanation: explain(f, now, th),
        name: p.and_then(|p| p.name.clone()),
        email: p.and_then(|p| p.email.clone()),
        ownership: p.and_then(|p| p.ownership.as_ref()).map(|o| o.as_str()),
        platform: p.and_then(|p| p.platform.as_ref()).map(|o| o.as_str()),
        model: model(f),
        os_version: e.and_then(|e| e.os_version.clone()),
        device_name: e
            .and_then(|e| e.device_name.clone())
            .or_else(|| p.and_then(|p| p.device_name.clone())),
        abm_connection: a.map(|a| a.connection.clone()),
        profile_status: a.map(|a| a.profile_status.clone()),
        preenrolled: p.is_some(),
        last_seen_at: e.map(|e| e.last_seen_at),
        enrolled_at: e.and_then(|e| e.enrolled_at),
    }
}

/// The directory key of an enrollment: its serial number, or its id when it reported none.
fn enrollment_key(rec: &EnrollmentRecord) -> String {
    let serial = match &rec.source {
        Some(EnrollmentSource::Ade { serial, .. }) if !serial.is_empty() => Some(serial.as_str()),
        _ => rec.facts.serial_number.as_deref().filter(|s| !s.is_empty()),
    };
    serial.map_or_else(|| rec.device_id.clone(), str::to_ascii_uppercase)
}

fn enrollment_facts(rec: &EnrollmentRecord) -> EnrollmentFacts {
    EnrollmentFacts {
        id: rec.id.clone(),
        state: rec.state,
        ade: matches!(rec.source, Some(EnrollmentSource::Ade { .. })),
        awaiting_configuration: rec.awaiting_configuration,
        model: rec
            .facts
            .model_name
            .clone()
            .or_else(|| rec.facts.product_name.clone())
            .or_else(|| rec.facts.model.clone()),
        os_version: rec.facts.os_version.clone(),
        device_name: rec.facts.device_name.clone(),
        authenticated_at: rec.authenticated_at,
        enrolled_at: rec.enrolled_at,
        token_updated_at: rec.token_updated_at,
        checked_out_at: rec.checked_out_at,
        last_seen_at: rec.last_seen_at,
        last_push_at: rec.last_push_at,
        push_invalid: rec.push_invalid.as_ref().map(|p| (p.reason.clone(), p.at)),
    }
}

fn abm_facts(rec: &AbmDeviceRecord) -> AbmFacts {
    AbmFacts {
        connection: rec.connection.clone(),
        model: rec.device.model.clone(),
        device_family: rec.device.device_family.clone(),
        os: rec.device.os.clone(),
        profile_status: rec.device.profile_status.clone(),
        profile_uuid: rec.device.profile_uuid.clone(),
        // Empty (never pushed) and unparsable both mean "not known".
        pushed_at: Timestamp::parse_rfc3339(&rec.device.profile_push_time),
        assignment: rec.assignment.as_ref().map(|a| AssignmentFacts {
            profile: a.profile_id.clone(),
            outcome: a.outcome,
            at: a.at,
            reason: a.reason.clone(),
            failures: a.failures,
        }),
        next_assign_at: rec.next_assign_at,
        removed_at: rec.removed_at,
        first_seen_at: rec.first_seen_at,
        updated_at: rec.updated_at,
    }
}
