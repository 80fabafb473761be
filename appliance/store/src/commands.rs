//! The per-enrollment FIFO command queue, delivery history and pruning.
//!
//! A delivery (one command for one enrollment) gets a sequence number from one global counter
//! when it is queued. It lives in `enrollment_deliveries` under its enrollment: in the open
//! part (keyed by seq, so the part is the FIFO queue) until it is final, then in the final part
//! (keyed by `u64::MAX - seq`, newest first). `command_targets` finds it from its command;
//! once final it has a `finished_by_age` entry and, with a report, a `reports` entry, both
//! keyed by (finished at, seq). Every order the service needs is a plain range scan.
//!
//! Recording a result is the write devices make most, so it touches as few pages as it can:
//! each table a write touches costs at least one page in the group commit it shares, and
//! per-enrollment pages are scattered by the devices' random ids. A result moves its delivery
//! between the two parts, which neighbour each other in the enrollment's key range (the oldest
//! open delivery and the newest final one), so it usually rewrites one scattered page; its
//! report and its by-age entry are appended where the rest of the batch's are.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use mdm_service::ports::{
    CommandRecord, CommandResult, DeliveryRecord, DeliveryStatus, EnqueueOutcome, EnrollmentRecord,
    EnrollmentState, NewCommand, NextCommand, PruneStats, QueuedCommand, ResultOutcome,
    RetentionPolicy, StoreError, StoreResult, Timestamp,
};
use redb::{ReadTransaction, ReadableTable, Table, TableHandle, WriteTransaction};

use crate::codec::{colon_prefix_range, dangling, decode, prefix_page, successor, BackendExt};
use crate::command_cache::{CachedCommand, CommandCache};
use crate::enrollments::touch;
use crate::records::{
    decode_delivery, decode_v6_delivery, delivery_uuid, encode_delivery, get_json, put_json,
    StoredCommand, StoredDelivery,
};
use crate::schema::{
    open, open_read, CHALLENGES, CHALLENGE_EXPIRY, COMMANDS, COMMAND_PAYLOADS, COMMAND_TARGETS,
    DELIVERIES, DELIVERY_RESULTS, ENROLLMENTS, ENROLLMENT_DELIVERIES, FINAL, FINISHED_BY_AGE,
    HISTORY_COUNT, META, NEXT_SEQ, OPEN, REPORTS,
};
use crate::writer::Batch;

/// A key of `enrollment_deliveries`: (enrollment id, part, order).
type ItemKey<'a> = (&'a str, u8, u64);

/// Where a delivery that is not final is kept.
fn open_key(enrollment_id: &str, seq: u64) -> ItemKey<'_> {
    (enrollment_id, OPEN, seq)
}

/// Where a final delivery is kept: newest first.
fn final_key(enrollment_id: &str, seq: u64) -> ItemKey<'_> {
    (enrollment_id, FINAL, u64::MAX - seq)
}

/// The seq an `enrollment_deliveries` key stands for.
fn key_seq((_, part, order): ItemKey<'_>) -> u64 {
    if part == FINAL {
        u64::MAX - order
    } else {
        order
    }
}

/// The range of one part of an enrollment's deliveries.
fn part_range(enrollment_id: &str, part: u8) -> std::ops::RangeInclusive<ItemKey<'_>> {
    (enrollment_id, part, 0)..=(enrollment_id, part, u64::MAX)
}

/// Open deliveries [`QueueTables::scan_open`] reads at most.
const SCAN_LIMIT: usize = 64;

/// What [`QueueTables::scan_open`] found.
struct OpenScan {
    /// The delivery asked for.
    found: Option<StoredDelivery>,
    /// The UUID of the first open delivery not skipped: the command to send next.
    next: Option<String>,
    /// The scan read to the end of the open part, so what it did not find is not there.
    exhausted: bool,
}

/// The tables a delivery's state change touches, opened together once per operation.
pub(crate) struct QueueTables<'t> {
    items: Table<'t, (&'static str, u8, u64), &'static [u8]>,
    targets: Table<'t, (&'static str, &'static str), u64>,
    finished_by_age: Table<'t, (i64, u64), (&'static str, &'static str)>,
    reports: Table<'t, (i64, u64), &'static [u8]>,
}

impl<'t> QueueTables<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction) -> StoreResult<Self> {
        Ok(QueueTables {
            items: open(txn, ENROLLMENT_DELIVERIES)?,
            targets: open(txn, COMMAND_TARGETS)?,
            finished_by_age: open(txn, FINISHED_BY_AGE)?,
            reports: open(txn, REPORTS)?,
        })
    }

    /// Reads `enrollment_id`'s open deliveries in queue order, for the one of `uuid` and the
    /// first one not in `skip` (which is `uuid`'s own only if it `stays_open`), stopping when
    /// it has both or after [`SCAN_LIMIT`]. The delivery a device answers is nearly always
    /// the first (after any it answered NotNow), and the next one its neighbour: one read of
    /// one page finds both, where looking the delivery up through `command_targets` costs two
    /// lookups and finds no next command.
    fn scan_open(
        &self,
        enrollment_id: &str,
        uuid: &str,
        stays_open: bool,
        skip: &HashSet<String>,
    ) -> StoreResult<OpenScan> {
        let what = "cannot read the command queue";
        let mut scan = OpenScan {
            found: None,
            next: None,
            exhausted: true,
        };
        let range = self
            .items
            .range(part_range(enrollment_id, OPEN))
            .backend(what)?;
        for (i, entry) in range.enumerate() {
            if i == SCAN_LIMIT {
                scan.exhausted = false;
                break;
            }
            let (k, v) = entry.backend(what)?;
            let shown = ItemKeyDisplay(k.value());
            let (stored_uuid, json) = delivery_uuid(&shown, v.value())?;
            let candidate = scan.next.is_none() && !skip.contains(stored_uuid);
            if stored_uuid == uuid {
                scan.found = Some(decode("enrollment_deliveries", &shown, json)?);
                if candidate && stays_open {
                    scan.next = Some(stored_uuid.to_owned());
                }
            } else if candidate {
                scan.next = Some(stored_uuid.to_owned());
            }
            if scan.found.is_some() && scan.next.is_some() {
                scan.exhausted = false;
                break;
            }
        }
        Ok(scan)
    }

    /// The open delivery of `uuid` for `enrollment_id`; `None` when there is none or it is
    /// final.
    fn open_delivery(
        &self,
        uuid: &str,
        enrollment_id: &str,
    ) -> StoreResult<Option<StoredDelivery>> {
        let what = "cannot read a delivery";
        let Some(seq) = self
            .targets
            .get((uuid, enrollment_id))
            .backend(what)?
            .map(|g| g.value())
        else {
            return Ok(None);
        };
        let key = open_key(enrollment_id, seq);
        let Some(guard) = self.items.get(key).backend(what)? else {
            return Ok(None);
        };
        let shown = ItemKeyDisplay(key);
        let (stored_uuid, delivery) = decode_delivery(&shown, guard.value())?;
        if stored_uuid != uuid {
            return Err(StoreError::Corrupt(format!(
                "table `enrollment_deliveries`, key `{shown}`: holds command {stored_uuid}, \
                 but `command_targets` points command {uuid} at it"
            )));
        }
        Ok(Some(delivery))
    }

    /// Writes a delivery under `key`.
    fn put(&mut self, key: ItemKey<'_>, uuid: &str, delivery: &StoredDelivery) -> StoreResult<()> {
        let bytes = encode_delivery(&ItemKeyDisplay(key), uuid, delivery)?;
        self.items
            .insert(key, bytes.as_slice())
            .backend("cannot write a delivery")?;
        Ok(())
    }

    /// Writes a delivery that is not final.
    fn put_open(
        &mut self,
        enrollment_id: &str,
        uuid: &str,
        delivery: &StoredDelivery,
    ) -> StoreResult<()> {
        self.put(open_key(enrollment_id, delivery.seq), uuid, delivery)
    }

    /// Keeps the report of a final delivery under its by-age key.
    fn put_report(&mut self, delivery: &StoredDelivery, report: &[u8]) -> StoreResult<()> {
        self.reports
            .insert((delivery.updated_at.0, delivery.seq), report)
            .backend("cannot write a command result")?;
        Ok(())
    }

    /// Moves a delivery that just became final (at `delivery.updated_at`) from the open part
    /// to the final part, indexes it by age and keeps its report. The by-age and report keys
    /// grow with time, so the entries of one commit share those tables' last pages.
    fn finish(
        &mut self,
        enrollment_id: &str,
        uuid: &str,
        delivery: &StoredDelivery,
        report: Option<&[u8]>,
    ) -> StoreResult<()> {
        let seq = delivery.seq;
        let was_open = self
            .items
            .remove(open_key(enrollment_id, seq))
            .backend("cannot dequeue a command")?
            .is_some();
        if !was_open {
            return Err(dangling(
                "command_targets",
                &DeliveryKey(uuid, enrollment_id),
                "open delivery",
            ));
        }
        self.put(final_key(enrollment_id, seq), uuid, delivery)?;
        self.finished_by_age
            .insert((delivery.updated_at.0, seq), (uuid, enrollment_id))
            .backend("cannot index a finished delivery")?;
        if let Some(report) = report {
            self.put_report(delivery, report)?;
        }
        Ok(())
    }

    /// Cancels everything queued for `id` and, with `user_channels`, for every `id:...`.
    pub(crate) fn cancel_queued(
        &mut self,
        id: &str,
        user_channels: bool,
        at: Timestamp,
    ) -> StoreResult<()> {
        let what = "cannot read the command queue";
        let mut entries: Vec<(String, String, StoredDelivery)> = Vec::new();
        let mut collect = |range: redb::Range<'_, (&'static str, u8, u64), &'static [u8]>| {
            for entry in range {
                let (k, v) = entry.backend(what)?;
                let key = k.value();
                if key.1 != OPEN {
                    continue;
                }
                let (uuid, delivery) = decode_delivery(&ItemKeyDisplay(key), v.value())?;
                entries.push((key.0.to_owned(), uuid.to_owned(), delivery));
            }
            Ok::<(), StoreError>(())
        };
        collect(self.items.range(part_range(id, OPEN)).backend(what)?)?;
        if user_channels {
            let (start, end) = colon_prefix_range(id);
            collect(
                self.items
                    .range((start.as_str(), OPEN, 0)..(end.as_str(), OPEN, 0))
                    .backend(what)?,
            )?;
        }
        for (enrollment_id, uuid, mut delivery) in entries {
            delivery.status = DeliveryStatus::Canceled;
            delivery.updated_at = at;
            self.finish(&enrollment_id, &uuid, &delivery, None)?;
        }
        Ok(())
    }
}

/// Displays a `(command uuid, enrollment id)` key in error messages.
struct DeliveryKey<'a>(&'a str, &'a str);

impl std::fmt::Display for DeliveryKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} / {}", self.0, self.1)
    }
}

/// Displays an `enrollment_deliveries` key in error messages: the enrollment and the seq.
struct ItemKeyDisplay<'a>(ItemKey<'a>);

impl std::fmt::Display for ItemKeyDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let part = if self.0 .1 == FINAL { "final" } else { "open" };
        write!(f, "{} {part} #{}", self.0 .0, key_seq(self.0))
    }
}

/// Reserves `n` consecutive sequence numbers and returns the first.
fn allocate_seq(txn: &WriteTransaction, n: u64) -> StoreResult<u64> {
    let mut meta = open(txn, META)?;
    let what = "cannot allocate a sequence number";
    let first = meta.get(NEXT_SEQ).backend(what)?.map_or(1, |g| g.value());
    let next = first.checked_add(n).ok_or_else(|| {
        StoreError::Corrupt("table `meta`, key `next_seq`: the counter is exhausted".into())
    })?;
    meta.insert(NEXT_SEQ, next).backend(what)?;
    Ok(first)
}

pub(crate) fn enqueue(
    txn: &WriteTransaction,
    cache: &CommandCache,
    cmd: &NewCommand,
    targets: &[String],
) -> StoreResult<EnqueueOutcome> {
    let mut outcome = EnqueueOutcome::default();
    {
        let enrollments = open(txn, ENROLLMENTS)?;
        let mut seen = HashSet::new();
        for target in targets {
            if !seen.insert(target.as_str()) {
                continue;
            }
            match get_json::<EnrollmentRecord>(&enrollments, target)? {
                Some(e) if e.state != EnrollmentState::CheckedOut => {
                    outcome.queued.push(target.clone());
                }
                _ => outcome.refused.push(target.clone()),
            }
        }
    }
    if outcome.queued.is_empty() {
        return Ok(outcome);
    }
    {
        let mut commands = open(txn, COMMANDS)?;
        if commands
            .get(cmd.uuid.as_str())
            .backend("cannot read a command")?
            .is_some()
        {
            return Err(StoreError::Conflict(format!(
                "a command with UUID {} already exists; every command needs a new UUID",
                cmd.uuid
            )));
        }
        let stored = StoredCommand {
            request_type: cmd.request_type.clone(),
            created_at: cmd.created_at,
            created_by: cmd.created_by.clone(),
            sealed: cmd.sealed,
        };
        put_json(&mut commands, &cmd.uuid, &stored)?;
        open(txn, COMMAND_PAYLOADS)?
            .insert(cmd.uuid.as_str(), cmd.payload.as_slice())
            .backend("cannot write a command payload")?;
        cache.put(
            &cmd.uuid,
            Arc::new(CachedCommand {
                request_type: cmd.request_type.clone(),
                payload: cmd.payload.clone(),
                sealed: cmd.sealed,
            }),
        );
    }
    let n = u64::try_from(outcome.queued.len()).unwrap_or(u64::MAX);
    let first = allocate_seq(txn, n)?;
    let mut tables = QueueTables::open(txn)?;
    let mut history_count = open(txn, HISTORY_COUNT)?;
    for (seq, target) in (first..).zip(&outcome.queued) {
        tables
            .targets
            .insert((cmd.uuid.as_str(), target.as_str()), seq)
            .backend("cannot queue a command")?;
        add_history_count(&mut history_count, target, 1)?;
        let delivery = StoredDelivery {
            request_type: cmd.request_type.clone(),
            status: DeliveryStatus::Queued,
            seq,
            queued_at: cmd.created_at,
            updated_at: cmd.created_at,
            error_chain_json: None,
        };
        tables.put_open(target, &cmd.uuid, &delivery)?;
    }
    Ok(outcome)
}

/// Adds `delta` (which may be negative) to an enrollment's history count; a count that
/// reaches zero is removed.
fn add_history_count(
    counts: &mut Table<'_, &'static str, u64>,
    enrollment_id: &str,
    delta: i64,
) -> StoreResult<()> {
    let what = "cannot count command history";
    let count = counts
        .get(enrollment_id)
        .backend(what)?
        .map_or(0, |g| g.value());
    let new = count.saturating_add_signed(delta);
    if new == 0 {
        counts.remove(enrollment_id).backend(what)?;
    } else {
        counts.insert(enrollment_id, new).backend(what)?;
    }
    Ok(())
}

/// Fills `history_count` from `history` (schema version 6).
pub(crate) fn backfill_history_count(txn: &WriteTransaction) -> StoreResult<()> {
    let what = "cannot count command history";
    let mut counts: Vec<(String, u64)> = Vec::new();
    {
        let history = open(txn, crate::schema::HISTORY)?;
        for entry in history.iter().backend(what)? {
            let (k, _) = entry.backend(what)?;
            let (enrollment_id, _) = k.value();
            match counts.last_mut() {
                Some((last, n)) if last.as_str() == enrollment_id => *n += 1,
                _ => counts.push((enrollment_id.to_owned(), 1)),
            }
        }
    }
    let mut table = open(txn, HISTORY_COUNT)?;
    for (enrollment_id, n) in &counts {
        table.insert(enrollment_id.as_str(), *n).backend(what)?;
    }
    Ok(())
}

/// Moves every delivery of `deliveries` (schema version 6) to `enrollment_deliveries` and
/// `command_targets`, and every report (kept in the delivery's value, or before version 6 in
/// `delivery_results`) to `reports` (schema version 7). The queue and history entries are
/// implied by each delivery's status and seq; `finished_by_age` and `history_count` keep.
pub(crate) fn split_deliveries(txn: &WriteTransaction) -> StoreResult<()> {
    let what = "cannot read deliveries";
    let deliveries = open(txn, DELIVERIES)?;
    let legacy = open(txn, DELIVERY_RESULTS)?;
    let mut tables = QueueTables::open(txn)?;
    for entry in deliveries.iter().backend(what)? {
        let (k, v) = entry.backend(what)?;
        let (uuid, enrollment_id) = k.value();
        let (delivery, report) = decode_v6_delivery(&DeliveryKey(uuid, enrollment_id), v.value())?;
        tables
            .targets
            .insert((uuid, enrollment_id), delivery.seq)
            .backend("cannot index a delivery")?;
        if !delivery.status.is_final() {
            tables.put_open(enrollment_id, uuid, &delivery)?;
            continue;
        }
        tables.put(final_key(enrollment_id, delivery.seq), uuid, &delivery)?;
        if let Some(report) = report {
            tables.put_report(&delivery, report)?;
        } else if let Some(report) = legacy
            .get((uuid, enrollment_id))
            .backend("cannot read a command result")?
        {
            tables.put_report(&delivery, report.value())?;
        }
    }
    Ok(())
}

pub(crate) fn record_result(
    batch: &mut Batch<'_>,
    cache: &CommandCache,
    enrollment_id: &str,
    result: &CommandResult,
) -> StoreResult<ResultOutcome> {
    if result.touch {
        touch(batch, enrollment_id, result.at)?;
    }
    let tables = batch.queue_tables()?;
    let uuid = result.uuid.as_str();
    let stays_open = !result.status.is_final();
    let scan = tables.scan_open(enrollment_id, uuid, stays_open, &result.skip_next)?;
    let found = match scan.found {
        Some(found) => Some(found),
        None if scan.exhausted => None,
        None => tables.open_delivery(uuid, enrollment_id)?,
    };
    // A delivery that is final (or gone) has no open entry: a second report is unknown.
    let Some(mut delivery) = found else {
        return Ok(ResultOutcome::UnknownCommand);
    };
    delivery.status = result.status;
    delivery.updated_at = result.at;
    if result.status.is_final() {
        delivery
            .error_chain_json
            .clone_from(&result.error_chain_json);
        tables.finish(enrollment_id, uuid, &delivery, Some(result.raw.as_slice()))?;
    } else {
        tables.put_open(enrollment_id, uuid, &delivery)?;
    }
    let next = match scan.next {
        Some(next) => NextCommand::Queued(cached_command(batch.txn_keeping_queue(), cache, &next)?),
        None if scan.exhausted => NextCommand::Empty,
        None => NextCommand::Unread,
    };
    Ok(ResultOutcome::Recorded {
        request_type: delivery.request_type,
        next,
    })
}

/// `uuid`'s command through the cache, filling it from the write transaction on a miss.
fn cached_command(
    txn: &WriteTransaction,
    cache: &CommandCache,
    uuid: &str,
) -> StoreResult<QueuedCommand> {
    if let Some(cached) = cache.get(uuid) {
        return Ok(cached.queued(uuid));
    }
    let (stored, payload) =
        read_command(&open(txn, COMMANDS)?, &open(txn, COMMAND_PAYLOADS)?, uuid)?
            .ok_or_else(|| dangling("enrollment_deliveries", &uuid, "command"))?;
    let cached = Arc::new(CachedCommand {
        request_type: stored.request_type,
        payload,
        sealed: stored.sealed,
    });
    let queued = cached.queued(uuid);
    cache.put(uuid, cached);
    Ok(queued)
}

pub(crate) fn next_command(
    rtx: &ReadTransaction,
    cache: &CommandCache,
    enrollment_id: &str,
    skip: &HashSet<String>,
) -> StoreResult<Option<QueuedCommand>> {
    let items = open_read(rtx, ENROLLMENT_DELIVERIES)?;
    let what = "cannot read the command queue";
    let mut found = None;
    for entry in items.range(part_range(enrollment_id, OPEN)).backend(what)? {
        let (k, v) = entry.backend(what)?;
        let (uuid, _) = delivery_uuid(&ItemKeyDisplay(k.value()), v.value())?;
        if !skip.contains(uuid) {
            found = Some(uuid.to_owned());
            break;
        }
    }
    let Some(uuid) = found else {
        return Ok(None);
    };
    // Looked up only: see `command_cache` for why readers do not fill it.
    if let Some(cached) = cache.get(&uuid) {
        return Ok(Some(cached.queued(&uuid)));
    }
    let record =
        command(rtx, &uuid)?.ok_or_else(|| dangling("enrollment_deliveries", &uuid, "command"))?;
    Ok(Some(QueuedCommand {
        uuid: record.uuid,
        request_type: record.request_type,
        payload: record.payload,
        sealed: record.sealed,
    }))
}

/// A command's record and payload, from a read or a write transaction's tables.
fn read_command(
    commands: &(impl ReadableTable<&'static str, &'static [u8]> + TableHandle),
    payloads: &impl ReadableTable<&'static str, &'static [u8]>,
    uuid: &str,
) -> StoreResult<Option<(StoredCommand, Vec<u8>)>> {
    let Some(stored) = get_json::<StoredCommand>(commands, uuid)? else {
        return Ok(None);
    };
    let payload = payloads
        .get(uuid)
        .backend("cannot read a command payload")?
        .map(|g| g.value().to_vec())
        .ok_or_else(|| dangling("commands", &uuid, "payload"))?;
    Ok(Some((stored, payload)))
}

pub(crate) fn command(rtx: &ReadTransaction, uuid: &str) -> StoreResult<Option<CommandRecord>> {
    let Some((stored, payload)) = read_command(
        &open_read(rtx, COMMANDS)?,
        &open_read(rtx, COMMAND_PAYLOADS)?,
        uuid,
    )?
    else {
        return Ok(None);
    };
    Ok(Some(CommandRecord {
        uuid: uuid.to_owned(),
        request_type: stored.request_type,
        payload,
        sealed: stored.sealed,
        created_at: stored.created_at,
        created_by: stored.created_by,
    }))
}

/// The read side of the delivery tables, for listings.
struct DeliveryReader {
    items: redb::ReadOnlyTable<(&'static str, u8, u64), &'static [u8]>,
    reports: redb::ReadOnlyTable<(i64, u64), &'static [u8]>,
}

impl DeliveryReader {
    fn open(rtx: &ReadTransaction) -> StoreResult<Self> {
        Ok(DeliveryReader {
            items: open_read(rtx, ENROLLMENT_DELIVERIES)?,
            reports: open_read(rtx, REPORTS)?,
        })
    }

    /// The delivery of command `uuid` with this seq, open or final.
    fn get(&self, uuid: &str, enrollment_id: &str, seq: u64) -> StoreResult<StoredDelivery> {
        let what = "cannot read a delivery";
        for key in [open_key(enrollment_id, seq), final_key(enrollment_id, seq)] {
            if let Some(guard) = self.items.get(key).backend(what)? {
                let (_, delivery) = decode_delivery(&ItemKeyDisplay(key), guard.value())?;
                return Ok(delivery);
            }
        }
        Err(dangling(
            "command_targets",
            &DeliveryKey(uuid, enrollment_id),
            "delivery",
        ))
    }

    /// The port record of a stored delivery, with its report once final.
    fn record(
        &self,
        uuid: &str,
        enrollment_id: &str,
        delivery: StoredDelivery,
    ) -> StoreResult<DeliveryRecord> {
        let result = if delivery.status.is_final() {
            self.reports
                .get((delivery.updated_at.0, delivery.seq))
                .backend("cannot read a command result")?
                .map(|g| g.value().to_vec())
        } else {
            None
        };
        Ok(delivery.into_record(uuid, enrollment_id, result))
    }
}

pub(crate) fn deliveries(
    rtx: &ReadTransaction,
    uuid: &str,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<DeliveryRecord>> {
    let targets = open_read(rtx, COMMAND_TARGETS)?;
    let reader = DeliveryReader::open(rtx)?;
    let end = successor(uuid);
    let what = "cannot read deliveries";
    let mut out = Vec::new();
    for entry in targets
        .range::<(&str, &str)>(prefix_page(uuid, after, &end))
        .backend(what)?
        .take(limit)
    {
        let (k, v) = entry.backend(what)?;
        let (_, enrollment_id) = k.value();
        let delivery = reader.get(uuid, enrollment_id, v.value())?;
        out.push(reader.record(uuid, enrollment_id, delivery)?);
    }
    Ok(out)
}

/// How many deliveries of `uuid` are in each status. Reads only the records, never a report.
pub(crate) fn delivery_counts(
    rtx: &ReadTransaction,
    uuid: &str,
) -> StoreResult<Vec<(DeliveryStatus, u64)>> {
    let targets = open_read(rtx, COMMAND_TARGETS)?;
    let reader = DeliveryReader::open(rtx)?;
    let end = successor(uuid);
    let what = "cannot count deliveries";
    let mut counts: Vec<(DeliveryStatus, u64)> = Vec::new();
    for entry in targets
        .range((uuid, "")..(end.as_str(), ""))
        .backend(what)?
    {
        let (k, v) = entry.backend(what)?;
        let (_, enrollment_id) = k.value();
        let delivery = reader.get(uuid, enrollment_id, v.value())?;
        match counts.iter_mut().find(|(s, _)| *s == delivery.status) {
            Some((_, n)) => *n += 1,
            None => counts.push((delivery.status, 1)),
        }
    }
    Ok(counts)
}

/// An enrollment's deliveries, newest first: its open ones (newest last in their part) and
/// its final ones (newest first in theirs), merged by seq.
pub(crate) fn enrollment_deliveries(
    rtx: &ReadTransaction,
    enrollment_id: &str,
    limit: usize,
) -> StoreResult<Vec<DeliveryRecord>> {
    let reader = DeliveryReader::open(rtx)?;
    let what = "cannot read command history";
    let decode = |entry: Result<
        (
            redb::AccessGuard<'_, ItemKey<'static>>,
            redb::AccessGuard<'_, &'static [u8]>,
        ),
        redb::StorageError,
    >| {
        let (k, v) = entry.backend(what)?;
        let key = k.value();
        let (uuid, delivery) = decode_delivery(&ItemKeyDisplay(key), v.value())?;
        Ok::<_, StoreError>((uuid.to_owned(), delivery))
    };
    let mut open_part = reader
        .items
        .range(part_range(enrollment_id, OPEN))
        .backend(what)?
        .rev()
        .map(decode)
        .peekable();
    let mut final_part = reader
        .items
        .range(part_range(enrollment_id, FINAL))
        .backend(what)?
        .map(decode)
        .peekable();
    let mut out = Vec::new();
    while out.len() < limit {
        let take_open = match (open_part.peek(), final_part.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(Ok((_, o))), Some(Ok((_, f)))) => o.seq > f.seq,
            (Some(Err(_)), _) => true,
            (_, Some(Err(_))) => false,
        };
        let next = if take_open {
            open_part.next()
        } else {
            final_part.next()
        };
        let Some(next) = next else { break };
        let (uuid, delivery) = next?;
        out.push(reader.record(&uuid, enrollment_id, delivery)?);
    }
    Ok(out)
}

/// Distinct enrollment ids with a delivery that is not final, skipping over each enrollment's
/// deliveries.
pub(crate) fn enrollments_with_queued(
    rtx: &ReadTransaction,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<String>> {
    let items = open_read(rtx, ENROLLMENT_DELIVERIES)?;
    let what = "cannot read the command queue";
    let mut out = Vec::new();
    // The smallest key after every entry of `after`.
    let mut from = after.map(successor);
    while out.len() < limit {
        let next = match &from {
            Some(start) => items
                .range((start.as_str(), OPEN, 0)..)
                .backend(what)?
                .next(),
            None => items.iter().backend(what)?.next(),
        };
        let Some(entry) = next else { break };
        let (k, _) = entry.backend(what)?;
        let (id, part, _) = k.value();
        let id = id.to_owned();
        from = Some(successor(&id));
        // An enrollment's open part comes first: a first entry in the final part means
        // nothing is queued.
        if part == OPEN {
            out.push(id);
        }
    }
    Ok(out)
}

pub(crate) fn queued_count(rtx: &ReadTransaction, enrollment_id: &str) -> StoreResult<u64> {
    let items = open_read(rtx, ENROLLMENT_DELIVERIES)?;
    let what = "cannot read the command queue";
    let mut n = 0u64;
    for entry in items.range(part_range(enrollment_id, OPEN)).backend(what)? {
        entry.backend(what)?;
        n += 1;
    }
    Ok(n)
}

/// What one prune pass will delete, chosen from a read snapshot so that the writer only
/// spends time on deletions. The write side re-checks every candidate.
#[derive(Debug, Clone, Default)]
pub(crate) struct PrunePlan {
    /// (command uuid, enrollment id, seq) of finished deliveries.
    deliveries: Vec<(String, String, u64)>,
    /// (expires at ms, challenge SHA-256).
    challenges: Vec<(i64, String)>,
    /// Candidates were left over because the plan is full.
    more: bool,
}

impl PrunePlan {
    fn full(&self, limit: usize) -> bool {
        self.deliveries.len() + self.challenges.len() >= limit
    }
}

/// Picks at most `policy.batch_limit` deliveries and challenges to delete: finished deliveries
/// older than `max_age`, then the oldest finished deliveries of enrollments over
/// `max_finished_per_enrollment`, then expired challenges.
pub(crate) fn plan_prune(
    rtx: &ReadTransaction,
    policy: &RetentionPolicy,
    now: Timestamp,
) -> StoreResult<PrunePlan> {
    let limit = policy.batch_limit;
    let mut plan = PrunePlan::default();
    let mut chosen: HashSet<u64> = HashSet::new();
    let mut chosen_per_enrollment: HashMap<String, u64> = HashMap::new();

    let what = "cannot scan finished deliveries";
    let cutoff = now.minus(policy.max_age).0;
    let by_age = open_read(rtx, FINISHED_BY_AGE)?;
    for entry in by_age.range(..(cutoff, 0)).backend(what)? {
        let (k, v) = entry.backend(what)?;
        if plan.full(limit) {
            plan.more = true;
            return Ok(plan);
        }
        let (_, seq) = k.value();
        let (uuid, enrollment_id) = v.value();
        chosen.insert(seq);
        *chosen_per_enrollment
            .entry(enrollment_id.to_owned())
            .or_default() += 1;
        plan.deliveries
            .push((uuid.to_owned(), enrollment_id.to_owned(), seq));
    }

    // An enrollment has more finished deliveries than it may keep only if its history (queued
    // and finished) is longer than that; for those, finished = history - queued, and the
    // oldest finished ones are the last of its final part.
    let max_kept = u64::try_from(policy.max_finished_per_enrollment).unwrap_or(u64::MAX);
    let counts = open_read(rtx, HISTORY_COUNT)?;
    let items = open_read(rtx, ENROLLMENT_DELIVERIES)?;
    for entry in counts.iter().backend(what)? {
        let (k, v) = entry.backend(what)?;
        let enrollment_id = k.value();
        if v.value() <= max_kept {
            continue;
        }
        let already = chosen_per_enrollment
            .get(enrollment_id)
            .copied()
            .unwrap_or(0);
        let queued = queued_count(rtx, enrollment_id)?;
        let mut excess = v
            .value()
            .saturating_sub(queued)
            .saturating_sub(max_kept)
            .saturating_sub(already);
        for kept in items
            .range(part_range(enrollment_id, FINAL))
            .backend(what)?
            .rev()
        {
            if excess == 0 {
                break;
            }
            let (ik, iv) = kept.backend(what)?;
            let key = ik.value();
            let seq = key_seq(key);
            if chosen.contains(&seq) {
                continue;
            }
            if plan.full(limit) {
                plan.more = true;
                return Ok(plan);
            }
            let (uuid, _) = delivery_uuid(&ItemKeyDisplay(key), iv.value())?;
            plan.deliveries
                .push((uuid.to_owned(), enrollment_id.to_owned(), seq));
            excess -= 1;
        }
    }

    let what = "cannot scan challenges";
    let expiry = open_read(rtx, CHALLENGE_EXPIRY)?;
    // A challenge is expired once `now` reaches its expiry (see `consume_challenge`).
    let range = match now.0.checked_add(1) {
        Some(end) => expiry.range(..(end, "")),
        None => expiry.range::<(i64, &str)>(..),
    };
    for entry in range.backend(what)? {
        let (k, _) = entry.backend(what)?;
        if plan.full(limit) {
            plan.more = true;
            return Ok(plan);
        }
        let (expires_at, sha) = k.value();
        plan.challenges.push((expires_at, sha.to_owned()));
    }
    Ok(plan)
}

/// Deletes what `plan` chose, skipping anything that changed since it was read, and then
/// every touched command that has no delivery left.
pub(crate) fn apply_prune(
    txn: &WriteTransaction,
    cache: &CommandCache,
    plan: &PrunePlan,
    now: Timestamp,
) -> StoreResult<PruneStats> {
    let mut stats = PruneStats {
        more: plan.more,
        ..PruneStats::default()
    };
    let mut touched_commands = BTreeSet::new();
    {
        let mut tables = QueueTables::open(txn)?;
        let mut history_count = open(txn, HISTORY_COUNT)?;
        let what = "cannot delete a finished delivery";
        for (uuid, enrollment_id, seq) in &plan.deliveries {
            let key = final_key(enrollment_id, *seq);
            let delivery = {
                let Some(guard) = tables.items.get(key).backend(what)? else {
                    continue;
                };
                let (stored_uuid, delivery) = decode_delivery(&ItemKeyDisplay(key), guard.value())?;
                if stored_uuid != uuid {
                    continue;
                }
                delivery
            };
            tables.items.remove(key).backend(what)?;
            tables
                .targets
                .remove((uuid.as_str(), enrollment_id.as_str()))
                .backend(what)?;
            add_history_count(&mut history_count, enrollment_id, -1)?;
            let at = (delivery.updated_at.0, *seq);
            tables.finished_by_age.remove(at).backend(what)?;
            tables.reports.remove(at).backend(what)?;
            stats.deliveries_removed += 1;
            touched_commands.insert(uuid.as_str());
        }
        let what = "cannot delete a command";
        let mut commands = open(txn, COMMANDS)?;
        let mut payloads = open(txn, COMMAND_PAYLOADS)?;
        for uuid in touched_commands {
            let end = successor(uuid);
            let remaining = tables
                .targets
                .range((uuid, "")..(end.as_str(), ""))
                .backend(what)?
                .next()
                .is_some();
            if !remaining {
                commands.remove(uuid).backend(what)?;
                payloads.remove(uuid).backend(what)?;
                cache.forget(uuid);
                stats.commands_removed += 1;
            }
        }
    }
    let mut challenges = open(txn, CHALLENGES)?;
    let mut expiry = open(txn, CHALLENGE_EXPIRY)?;
    let what = "cannot delete a challenge";
    for (expires_at, sha) in &plan.challenges {
        if *expires_at > now.0 {
            continue;
        }
        let indexed = expiry
            .remove((*expires_at, sha.as_str()))
            .backend(what)?
            .is_some();
        if indexed {
            challenges.remove(sha.as_str()).backend(what)?;
            stats.challenges_removed += 1;
        }
    }
    Ok(stats)
}
