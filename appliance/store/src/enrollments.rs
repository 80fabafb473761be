//! Enrollment records: check-in writes and enrollment reads.
//!
//! Device channels are also indexed by the serial number they reported at `Authenticate`
//! (`enrollment_serials`); that is the only write that sets a device channel's facts, so it is
//! the only one that maintains the index.
//!
//! Records are written only through [`EnrollmentsMut`], which a write batch hands out
//! ([`Batch::enrollments`]), so that every write moves the enrollment's binding version
//! (resealing, which rewrites sealed tokens in place, moves them all instead).

use mdm_service::ports::{
    AuthenticateRecord, Channel, EnrollmentBinding, EnrollmentRecord, EnrollmentState, PushFailure,
    PushRecord, StoreResult, Timestamp, TokenUpdateOutcome, TokenUpdateRecord,
};
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, Table, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::codec::{colon_prefix_range, dangling, decode, encode, successor, BackendExt, PairKey};
use crate::commands::QueueTables;
use crate::records::{get_json, page_json, put_json};
use crate::schema::{open, open_read, ENROLLMENTS, ENROLLMENT_SERIALS};
use crate::writer::Batch;

/// The `enrollments` table opened by a write batch. Reads go through `Deref`; writes go
/// through its methods, which name each record written to the batch (see
/// [`crate::writer::BindingVersions`]).
pub(crate) struct EnrollmentsMut<'b, 't> {
    table: Table<'t, &'static str, &'static [u8]>,
    written: &'b mut Vec<String>,
}

impl<'b, 't> EnrollmentsMut<'b, 't> {
    pub(crate) fn open(
        txn: &'t WriteTransaction,
        written: &'b mut Vec<String>,
    ) -> StoreResult<Self> {
        Ok(EnrollmentsMut {
            table: open(txn, ENROLLMENTS)?,
            written,
        })
    }

    fn put<T: Serialize>(&mut self, id: &str, record: &T) -> StoreResult<()> {
        self.written.push(id.to_owned());
        put_json(&mut self.table, id, record)
    }

    /// Writes `bytes` as `id`'s record and returns the record it replaced, if any.
    fn replace(&mut self, id: &str, bytes: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        self.written.push(id.to_owned());
        let old = self
            .table
            .insert(id, bytes)
            .backend_with(|| format!("cannot write `enrollments` record `{id}`"))?;
        Ok(old.map(|g| g.value().to_vec()))
    }
}

impl<'t> std::ops::Deref for EnrollmentsMut<'_, 't> {
    type Target = Table<'t, &'static str, &'static [u8]>;

    fn deref(&self) -> &Self::Target {
        &self.table
    }
}

/// The part of a stored enrollment the serial index depends on: decoding only this skips the
/// rest of the record (push addressing, sealed tokens) instead of building it.
#[derive(Deserialize)]
struct SerialView {
    channel: Channel,
    facts: FactsSerialView,
}

#[derive(Deserialize)]
struct FactsSerialView {
    serial_number: Option<String>,
}

impl SerialView {
    /// The serial number this enrollment is indexed under, if any: device channels that
    /// reported a non-empty one.
    fn indexed_serial(self) -> Option<String> {
        match self.channel {
            Channel::Device => self.facts.serial_number.filter(|s| !s.is_empty()),
            Channel::User => None,
        }
    }
}

/// The serial number a device channel with these facts is indexed under.
fn indexed_serial(serial_number: Option<&str>) -> Option<&str> {
    serial_number.filter(|s| !s.is_empty())
}

/// `Authenticate`: a fresh enrollment replaces whatever was stored under the id, and nothing
/// queued for the old one (or its user channels) may reach the new one.
pub(crate) fn authenticate(batch: &mut Batch<'_>, rec: &AuthenticateRecord) -> StoreResult<()> {
    let txn = batch.txn();
    let record = EnrollmentRecord {
        id: rec.id.clone(),
        device_id: rec.id.clone(),
        user_id: None,
        user_short_name: None,
        channel: Channel::Device,
        state: EnrollmentState::Authenticated,
        identity_sha256: rec.identity_sha256.clone(),
        topic: rec.topic.clone(),
        facts: rec.facts.clone(),
        source: rec.source.clone(),
        push: None,
        unlock_token_sealed: None,
        bootstrap_token_sealed: None,
        awaiting_configuration: false,
        authenticated_at: rec.at,
        enrolled_at: None,
        token_updated_at: None,
        checked_out_at: None,
        last_seen_at: rec.at,
        last_push_at: None,
        push_invalid: None,
    };
    let bytes = encode("enrollments", &rec.id, &record)?;
    let old_serial = {
        let old = batch.enrollments()?.replace(&rec.id, &bytes)?;
        match old.map(|old| decode::<SerialView>("enrollments", &rec.id, &old)) {
            None => None,
            Some(Ok(view)) => view.indexed_serial(),
            // The record is replaced whole, so it need not be readable. Its index entry (if it
            // had one) stays behind; reads check each entry against the record it names.
            Some(Err(e)) => {
                tracing::warn!(error = %e, "authenticate replaced an unreadable enrollment");
                None
            }
        }
    };
    let new_serial = indexed_serial(rec.facts.serial_number.as_deref());
    if old_serial.as_deref() != new_serial {
        let mut serials = open(txn, ENROLLMENT_SERIALS)?;
        let what = "cannot index an enrollment by serial number";
        if let Some(old) = &old_serial {
            serials
                .remove((old.as_str(), rec.id.as_str()))
                .backend(what)?;
        }
        if let Some(new) = new_serial {
            serials.insert((new, rec.id.as_str()), ()).backend(what)?;
        }
    }
    QueueTables::open(txn)?.cancel_queued(&rec.id, true, rec.at)?;
    Ok(())
}

/// Fills `enrollment_serials` from the stored enrollments (schema version 2). An enrollment
/// that cannot be decoded is left out with a warning rather than failing the migration, which
/// would keep the appliance from starting; reading it reports the damage.
pub(crate) fn backfill_serial_index(txn: &WriteTransaction) -> StoreResult<()> {
    let enrollments = open(txn, ENROLLMENTS)?;
    let mut serials = open(txn, ENROLLMENT_SERIALS)?;
    let what = "cannot index enrollments by serial number";
    let mut indexed = 0u64;
    for entry in enrollments.iter().backend(what)? {
        let (k, v) = entry.backend(what)?;
        let id = k.value();
        match decode::<SerialView>("enrollments", &id, v.value()) {
            Ok(view) => {
                if let Some(serial) = view.indexed_serial() {
                    serials.insert((serial.as_str(), id), ()).backend(what)?;
                    indexed += 1;
                }
            }
            Err(e) => tracing::warn!(error = %e, "enrollment left out of the serial index"),
        }
    }
    tracing::info!(indexed, "indexed enrollments by serial number");
    Ok(())
}

/// `TokenUpdate`: stores push addressing and activates the enrollment, creating a user channel
/// from its device channel on first sight.
pub(crate) fn token_update(
    batch: &mut Batch<'_>,
    rec: &TokenUpdateRecord,
) -> StoreResult<Option<TokenUpdateOutcome>> {
    let mut table = batch.enrollments()?;
    let Some(device) = get_json::<EnrollmentRecord>(&*table, &rec.device_id)? else {
        return Ok(None);
    };
    let mut enrollment = if rec.id == rec.device_id {
        device
    } else {
        match get_json::<EnrollmentRecord>(&*table, &rec.id)? {
            Some(existing) => existing,
            None => new_user_channel(&device, rec),
        }
    };
    let activated = enrollment.state != EnrollmentState::Enrolled;
    enrollment.identity_sha256.clone_from(&rec.identity_sha256);
    enrollment.push = Some(rec.push.clone());
    // A TokenUpdate brings a fresh token: whatever the push service said of the old one no
    // longer applies.
    enrollment.push_invalid = None;
    // Devices send UnlockToken only in some TokenUpdates; a later one without it does not
    // revoke the one we hold.
    if let Some(unlock) = &rec.unlock_token_sealed {
        enrollment.unlock_token_sealed = Some(unlock.clone());
    }
    if rec.user_id.is_some() {
        enrollment.user_id.clone_from(&rec.user_id);
    }
    if rec.user_short_name.is_some() {
        enrollment.user_short_name.clone_from(&rec.user_short_name);
    }
    enrollment.awaiting_configuration = rec.awaiting_configuration;
    enrollment.token_updated_at = Some(rec.at);
    enrollment.last_seen_at = enrollment.last_seen_at.max(rec.at);
    if activated {
        enrollment.state = EnrollmentState::Enrolled;
        enrollment.enrolled_at = Some(rec.at);
        enrollment.checked_out_at = None;
    }
    table.put(&rec.id, &enrollment)?;
    Ok(Some(TokenUpdateOutcome { activated }))
}

/// A user channel inherits what the device reported about itself; it has its own push
/// addressing and life cycle.
fn new_user_channel(device: &EnrollmentRecord, rec: &TokenUpdateRecord) -> EnrollmentRecord {
    EnrollmentRecord {
        id: rec.id.clone(),
        device_id: device.id.clone(),
        user_id: rec.user_id.clone(),
        user_short_name: rec.user_short_name.clone(),
        channel: Channel::User,
        state: EnrollmentState::Authenticated,
        identity_sha256: rec.identity_sha256.clone(),
        topic: device.topic.clone(),
        facts: device.facts.clone(),
        source: device.source.clone(),
        push: None,
        unlock_token_sealed: None,
        bootstrap_token_sealed: None,
        awaiting_configuration: false,
        authenticated_at: rec.at,
        enrolled_at: None,
        token_updated_at: None,
        checked_out_at: None,
        last_seen_at: rec.at,
        last_push_at: None,
        push_invalid: None,
    }
}

/// `CheckOut`: the enrollment (and, for a device, its user channels) is checked out and
/// everything queued for them is canceled.
pub(crate) fn check_out(batch: &mut Batch<'_>, id: &str, at: Timestamp) -> StoreResult<bool> {
    let txn = batch.txn();
    let is_device = {
        let mut table = batch.enrollments()?;
        let Some(mut enrollment) = get_json::<EnrollmentRecord>(&*table, id)? else {
            return Ok(false);
        };
        let is_device = enrollment.channel == Channel::Device;
        let mut changed = vec![mark_checked_out(&mut enrollment, at)];
        if is_device {
            let (start, end) = colon_prefix_range(id);
            let what = "cannot read user channels";
            for entry in table
                .range::<&str>(start.as_str()..end.as_str())
                .backend(what)?
            {
                let (k, v) = entry.backend(what)?;
                let mut user: EnrollmentRecord = decode("enrollments", &k.value(), v.value())?;
                mark_checked_out(&mut user, at);
                changed.push(user);
            }
        }
        for enrollment in &changed {
            table.put(&enrollment.id, enrollment)?;
        }
        is_device
    };
    QueueTables::open(txn)?.cancel_queued(id, is_device, at)?;
    Ok(true)
}

fn mark_checked_out(enrollment: &mut EnrollmentRecord, at: Timestamp) -> EnrollmentRecord {
    if enrollment.state != EnrollmentState::CheckedOut {
        enrollment.state = EnrollmentState::CheckedOut;
        enrollment.checked_out_at = Some(at);
    }
    // `last_seen_at` stays: the appliance also closes enrollments of devices silent for weeks,
    // and a device's own CheckOut is recorded as a check-in by the service.
    enrollment.clone()
}

pub(crate) fn set_bootstrap_token(
    batch: &mut Batch<'_>,
    id: &str,
    sealed: Option<Vec<u8>>,
    at: Timestamp,
) -> StoreResult<bool> {
    let mut table = batch.enrollments()?;
    let Some(mut enrollment) = get_json::<EnrollmentRecord>(&*table, id)? else {
        return Ok(false);
    };
    enrollment.bootstrap_token_sealed = sealed;
    enrollment.last_seen_at = enrollment.last_seen_at.max(at);
    table.put(id, &enrollment)?;
    Ok(true)
}

/// The device acknowledged DeviceConfigured: it has left Setup Assistant.
pub(crate) fn set_configured(batch: &mut Batch<'_>, id: &str, at: Timestamp) -> StoreResult<bool> {
    let mut table = batch.enrollments()?;
    let Some(mut enrollment) = get_json::<EnrollmentRecord>(&*table, id)? else {
        return Ok(false);
    };
    enrollment.awaiting_configuration = false;
    enrollment.last_seen_at = enrollment.last_seen_at.max(at);
    table.put(id, &enrollment)?;
    Ok(true)
}

/// Push results, one transaction for the whole batch.
pub(crate) fn record_pushes(
    batch: &mut Batch<'_>,
    records: &[(String, PushRecord)],
) -> StoreResult<()> {
    let mut table = batch.enrollments()?;
    for (id, record) in records {
        let Some(mut enrollment) = get_json::<EnrollmentRecord>(&*table, id)? else {
            continue;
        };
        match record {
            PushRecord::Sent { at } => enrollment.last_push_at = Some(*at),
            PushRecord::Invalid { reason, at } => {
                enrollment.push_invalid = Some(PushFailure {
                    reason: reason.clone(),
                    at: *at,
                });
            }
        }
        table.put(id, &enrollment)?;
    }
    Ok(())
}

/// Compare-and-swap of the bound identity, for the device channel and its user channels
/// (which share the device's certificate).
pub(crate) fn rebind_identity(
    batch: &mut Batch<'_>,
    id: &str,
    from: &str,
    to: &str,
    at: Timestamp,
) -> StoreResult<bool> {
    let mut table = batch.enrollments()?;
    let Some(device) = get_json::<EnrollmentRecord>(&*table, id)? else {
        return Ok(false);
    };
    if device.identity_sha256 != from {
        return Ok(false);
    }
    let mut ids = vec![id.to_string()];
    {
        let (start, end) = colon_prefix_range(id);
        let what = "cannot read user channels";
        for entry in table
            .range::<&str>(start.as_str()..end.as_str())
            .backend(what)?
        {
            let (k, _) = entry.backend(what)?;
            ids.push(k.value().to_string());
        }
    }
    for key in ids {
        if let Some(mut rec) = get_json::<EnrollmentRecord>(&*table, &key)? {
            if rec.identity_sha256 == from {
                rec.identity_sha256 = to.to_string();
                rec.last_seen_at = rec.last_seen_at.max(at);
                table.put(&key, &rec)?;
            }
        }
    }
    Ok(true)
}

/// Moves `last_seen_at` forward (never back: reports may be recorded out of order). Unknown
/// ids are ignored: there is nothing to mark.
pub(crate) fn touch(batch: &mut Batch<'_>, id: &str, at: Timestamp) -> StoreResult<()> {
    let mut table = batch.enrollments()?;
    if let Some(mut enrollment) = get_json::<EnrollmentRecord>(&*table, id)? {
        if enrollment.last_seen_at < at {
            enrollment.last_seen_at = at;
            table.put(id, &enrollment)?;
        }
    }
    Ok(())
}

pub(crate) fn enrollment(rtx: &ReadTransaction, id: &str) -> StoreResult<Option<EnrollmentRecord>> {
    get_json(&open_read(rtx, ENROLLMENTS)?, id)
}

/// The binding fields alone: the record is decoded into the smaller type, so the facts,
/// push target and sealed tokens are skipped over rather than built.
pub(crate) fn enrollment_binding(
    rtx: &ReadTransaction,
    id: &str,
) -> StoreResult<Option<EnrollmentBinding>> {
    get_json(&open_read(rtx, ENROLLMENTS)?, id)
}

pub(crate) fn list_enrollments(
    rtx: &ReadTransaction,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<EnrollmentRecord>> {
    page_json(&open_read(rtx, ENROLLMENTS)?, after, limit)
}

pub(crate) fn count_enrollments(rtx: &ReadTransaction) -> StoreResult<u64> {
    open_read(rtx, ENROLLMENTS)?
        .len()
        .backend("cannot count enrollments")
}

/// Device channels indexed under `serial`, by id. An entry whose record no longer reports that
/// serial (possible only after a damaged record was replaced) is skipped.
pub(crate) fn enrollments_by_serial(
    rtx: &ReadTransaction,
    serial: &str,
) -> StoreResult<Vec<EnrollmentRecord>> {
    let index = open_read(rtx, ENROLLMENT_SERIALS)?;
    let table = open_read(rtx, ENROLLMENTS)?;
    let end = successor(serial);
    let what = "cannot read enrollments by serial number";
    let mut out = Vec::new();
    for entry in index
        .range((serial, "")..(end.as_str(), ""))
        .backend(what)?
    {
        let (k, _) = entry.backend(what)?;
        let (_, id) = k.value();
        let record = get_json::<EnrollmentRecord>(&table, id)?
            .ok_or_else(|| dangling("enrollment_serials", &PairKey(serial, id), "enrollment"))?;
        if record.channel == Channel::Device
            && record.facts.serial_number.as_deref() == Some(serial)
        {
            out.push(record);
        }
    }
    Ok(out)
}
