//! The per-enrollment FIFO command queue, delivery history and pruning.
//!
//! A delivery (one command for one enrollment) gets a sequence number from one global counter
//! when it is queued. While it is not final it has a `queue` entry; it always has a `history`
//! entry (counted per enrollment in `history_count`); once final it has a `finished_by_age`
//! entry and its report is kept in its own value. All of these are keyed by that sequence
//! number, so FIFO order, newest-first listing and "oldest first" pruning are plain range
//! scans.
//!
//! Recording a result is the write devices make most, so it touches as few records as it can:
//! the delivery (with the report), its queue entry, and one entry appended to the by-age index.
//! Each table a write touches costs at least one page in the group commit it shares, and the
//! per-enrollment pages are scattered by the devices' random ids.

use std::collections::{BTreeSet, HashMap, HashSet};

use mdm_service::ports::{
    CommandRecord, CommandResult, DeliveryRecord, DeliveryStatus, EnqueueOutcome, EnrollmentRecord,
    EnrollmentState, NewCommand, PruneStats, QueuedCommand, ResultOutcome, RetentionPolicy,
    StoreError, StoreResult, Timestamp,
};
use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};

use crate::codec::{colon_prefix_range, dangling, prefix_page, successor, BackendExt};
use crate::enrollments::touch;
use crate::records::{
    decode_delivery, encode_delivery, get_json, put_json, StoredCommand, StoredDelivery,
};
use crate::schema::{
    open, open_read, CHALLENGES, CHALLENGE_EXPIRY, COMMANDS, COMMAND_PAYLOADS, DELIVERIES,
    DELIVERY_RESULTS, ENROLLMENTS, FINISHED_BY_AGE, HISTORY, HISTORY_COUNT, META, NEXT_SEQ, QUEUE,
};
use crate::writer::Batch;

type StrU64Table<'t, V> = Table<'t, (&'static str, u64), V>;

/// The tables a delivery's state change touches, opened together once per operation.
pub(crate) struct QueueTables<'t> {
    queue: StrU64Table<'t, &'static str>,
    deliveries: Table<'t, (&'static str, &'static str), &'static [u8]>,
    finished_by_age: Table<'t, (i64, u64), (&'static str, &'static str)>,
}

impl<'t> QueueTables<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction) -> StoreResult<Self> {
        Ok(QueueTables {
            queue: open(txn, QUEUE)?,
            deliveries: open(txn, DELIVERIES)?,
            finished_by_age: open(txn, FINISHED_BY_AGE)?,
        })
    }

    /// The delivery's record, without its report.
    fn delivery(&self, uuid: &str, enrollment_id: &str) -> StoreResult<Option<StoredDelivery>> {
        let guard = self
            .deliveries
            .get((uuid, enrollment_id))
            .backend("cannot read a delivery")?;
        guard
            .map(|g| decode_delivery(&DeliveryKey(uuid, enrollment_id), g.value()).map(|(d, _)| d))
            .transpose()
    }

    /// Writes a delivery's record, with the device's report once it is final.
    fn put_delivery(
        &mut self,
        uuid: &str,
        enrollment_id: &str,
        delivery: &StoredDelivery,
        report: Option<&[u8]>,
    ) -> StoreResult<()> {
        let key = DeliveryKey(uuid, enrollment_id);
        let bytes = encode_delivery(&key, delivery, report)?;
        self.deliveries
            .insert((uuid, enrollment_id), bytes.as_slice())
            .backend("cannot write a delivery")?;
        Ok(())
    }

    /// Indexes a delivery that just became final at `at`. The key grows with time, so the
    /// entries of one commit share the index's last pages.
    fn index_finished(
        &mut self,
        enrollment_id: &str,
        uuid: &str,
        seq: u64,
        at: Timestamp,
    ) -> StoreResult<()> {
        self.finished_by_age
            .insert((at.0, seq), (uuid, enrollment_id))
            .backend("cannot index a finished delivery")?;
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
        let mut entries: Vec<(String, u64, String)> = Vec::new();
        let mut collect = |range: redb::Range<'_, (&'static str, u64), &'static str>| {
            for entry in range {
                let (k, v) = entry.backend(what)?;
                let (enrollment_id, seq) = k.value();
                entries.push((enrollment_id.to_owned(), seq, v.value().to_owned()));
            }
            Ok::<(), StoreError>(())
        };
        collect(self.queue.range((id, 0)..=(id, u64::MAX)).backend(what)?)?;
        if user_channels {
            let (start, end) = colon_prefix_range(id);
            collect(
                self.queue
                    .range((start.as_str(), 0)..(end.as_str(), 0))
                    .backend(what)?,
            )?;
        }
        for (enrollment_id, seq, uuid) in entries {
            self.queue
                .remove((enrollment_id.as_str(), seq))
                .backend("cannot dequeue a command")?;
            let mut delivery = self
                .delivery(&uuid, &enrollment_id)?
                .ok_or_else(|| dangling("queue", &QueueKey(&enrollment_id, seq), "delivery"))?;
            delivery.status = DeliveryStatus::Canceled;
            delivery.updated_at = at;
            self.put_delivery(&uuid, &enrollment_id, &delivery, None)?;
            self.index_finished(&enrollment_id, &uuid, seq, at)?;
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

/// Displays an `(enrollment id, seq)` key in error messages.
struct QueueKey<'a>(&'a str, u64);

impl std::fmt::Display for QueueKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} #{}", self.0, self.1)
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
    }
    let n = u64::try_from(outcome.queued.len()).unwrap_or(u64::MAX);
    let first = allocate_seq(txn, n)?;
    let mut tables = QueueTables::open(txn)?;
    let mut history = open(txn, HISTORY)?;
    let mut history_count = open(txn, HISTORY_COUNT)?;
    for (seq, target) in (first..).zip(&outcome.queued) {
        let key = (target.as_str(), seq);
        tables
            .queue
            .insert(key, cmd.uuid.as_str())
            .backend("cannot queue a command")?;
        history
            .insert(key, cmd.uuid.as_str())
            .backend("cannot write command history")?;
        add_history_count(&mut history_count, target, 1)?;
        let delivery = StoredDelivery {
            request_type: cmd.request_type.clone(),
            status: DeliveryStatus::Queued,
            seq,
            queued_at: cmd.created_at,
            updated_at: cmd.created_at,
            error_chain_json: None,
        };
        tables.put_delivery(&cmd.uuid, target, &delivery, None)?;
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
        let history = open(txn, HISTORY)?;
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

pub(crate) fn record_result(
    batch: &mut Batch<'_>,
    enrollment_id: &str,
    result: &CommandResult,
) -> StoreResult<ResultOutcome> {
    if result.touch {
        touch(batch, enrollment_id, result.at)?;
    }
    let tables = batch.queue_tables()?;
    let uuid = result.uuid.as_str();
    let Some(mut delivery) = tables.delivery(uuid, enrollment_id)? else {
        return Ok(ResultOutcome::UnknownCommand);
    };
    if delivery.status.is_final() {
        return Ok(ResultOutcome::UnknownCommand);
    }
    delivery.status = result.status;
    delivery.updated_at = result.at;
    if result.status.is_final() {
        let was_queued = tables
            .queue
            .remove((enrollment_id, delivery.seq))
            .backend("cannot dequeue a command")?
            .is_some();
        if !was_queued {
            return Err(dangling(
                "deliveries",
                &DeliveryKey(uuid, enrollment_id),
                "queue entry",
            ));
        }
        delivery
            .error_chain_json
            .clone_from(&result.error_chain_json);
        tables.index_finished(enrollment_id, uuid, delivery.seq, result.at)?;
    }
    let report = result.status.is_final().then_some(result.raw.as_slice());
    tables.put_delivery(uuid, enrollment_id, &delivery, report)?;
    Ok(ResultOutcome::Recorded {
        request_type: delivery.request_type,
    })
}

pub(crate) fn next_command(
    rtx: &ReadTransaction,
    enrollment_id: &str,
    skip: &HashSet<String>,
) -> StoreResult<Option<QueuedCommand>> {
    let queue = open_read(rtx, QUEUE)?;
    let what = "cannot read the command queue";
    let mut found = None;
    for entry in queue
        .range((enrollment_id, 0)..=(enrollment_id, u64::MAX))
        .backend(what)?
    {
        let (_, v) = entry.backend(what)?;
        if !skip.contains(v.value()) {
            found = Some(v.value().to_owned());
            break;
        }
    }
    let Some(uuid) = found else {
        return Ok(None);
    };
    let record = command(rtx, &uuid)?.ok_or_else(|| dangling("queue", &uuid, "command"))?;
    Ok(Some(QueuedCommand {
        uuid: record.uuid,
        request_type: record.request_type,
        payload: record.payload,
        sealed: record.sealed,
    }))
}

pub(crate) fn command(rtx: &ReadTransaction, uuid: &str) -> StoreResult<Option<CommandRecord>> {
    let Some(stored) = get_json::<StoredCommand>(&open_read(rtx, COMMANDS)?, uuid)? else {
        return Ok(None);
    };
    let payload = open_read(rtx, COMMAND_PAYLOADS)?
        .get(uuid)
        .backend("cannot read a command payload")?
        .map(|g| g.value().to_vec())
        .ok_or_else(|| dangling("commands", &uuid, "payload"))?;
    Ok(Some(CommandRecord {
        uuid: uuid.to_owned(),
        request_type: stored.request_type,
        payload,
        sealed: stored.sealed,
        created_at: stored.created_at,
        created_by: stored.created_by,
    }))
}

/// Turns a stored delivery value into the port record with its final report, if any: the one
/// kept in the value, else (recorded before schema version 6) the one in `delivery_results`.
fn delivery_record(
    results: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    uuid: &str,
    enrollment_id: &str,
    value: &[u8],
) -> StoreResult<DeliveryRecord> {
    let (stored, report) = decode_delivery(&DeliveryKey(uuid, enrollment_id), value)?;
    let result = match report {
        Some(report) => Some(report.to_vec()),
        None if stored.status.is_final() => results
            .get((uuid, enrollment_id))
            .backend("cannot read a command result")?
            .map(|g| g.value().to_vec()),
        None => None,
    };
    Ok(stored.into_record(uuid, enrollment_id, result))
}

pub(crate) fn deliveries(
    rtx: &ReadTransaction,
    uuid: &str,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<DeliveryRecord>> {
    let table = open_read(rtx, DELIVERIES)?;
    let results = open_read(rtx, DELIVERY_RESULTS)?;
    let end = successor(uuid);
    let what = "cannot read deliveries";
    let mut out = Vec::new();
    for entry in table
        .range::<(&str, &str)>(prefix_page(uuid, after, &end))
        .backend(what)?
        .take(limit)
    {
        let (k, v) = entry.backend(what)?;
        let (_, enrollment_id) = k.value();
        out.push(delivery_record(&results, uuid, enrollment_id, v.value())?);
    }
    Ok(out)
}

/// How many deliveries of `uuid` are in each status. Reads only the records, never a report.
pub(crate) fn delivery_counts(
    rtx: &ReadTransaction,
    uuid: &str,
) -> StoreResult<Vec<(DeliveryStatus, u64)>> {
    let table = open_read(rtx, DELIVERIES)?;
    let end = successor(uuid);
    let what = "cannot count deliveries";
    let mut counts: Vec<(DeliveryStatus, u64)> = Vec::new();
    for entry in table.range((uuid, "")..(end.as_str(), "")).backend(what)? {
        let (k, v) = entry.backend(what)?;
        let (_, enrollment_id) = k.value();
        let (delivery, _) = decode_delivery(&DeliveryKey(uuid, enrollment_id), v.value())?;
        match counts.iter_mut().find(|(s, _)| *s == delivery.status) {
            Some((_, n)) => *n += 1,
            None => counts.push((delivery.status, 1)),
        }
    }
    Ok(counts)
}

pub(crate) fn enrollment_deliveries(
    rtx: &ReadTransaction,
    enrollment_id: &str,
    limit: usize,
) -> StoreResult<Vec<DeliveryRecord>> {
    let history = open_read(rtx, HISTORY)?;
    let table = open_read(rtx, DELIVERIES)?;
    let results = open_read(rtx, DELIVERY_RESULTS)?;
    let what = "cannot read command history";
    let mut out = Vec::new();
    for entry in history
        .range((enrollment_id, 0)..=(enrollment_id, u64::MAX))
        .backend(what)?
        .rev()
        .take(limit)
    {
        let (k, v) = entry.backend(what)?;
        let uuid = v.value();
        let guard = table
            .get((uuid, enrollment_id))
            .backend(what)?
            .ok_or_else(|| {
                dangling("history", &QueueKey(enrollment_id, k.value().1), "delivery")
            })?;
        out.push(delivery_record(
            &results,
            uuid,
            enrollment_id,
            guard.value(),
        )?);
    }
    Ok(out)
}

/// Distinct enrollment ids in the queue, skipping over each one's entries.
pub(crate) fn enrollments_with_queued(
    rtx: &ReadTransaction,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<String>> {
    let queue = open_read(rtx, QUEUE)?;
    let what = "cannot read the command queue";
    let mut out = Vec::new();
    // The smallest key after every entry of `after`.
    let mut from = after.map(successor);
    while out.len() < limit {
        let next = match &from {
            Some(start) => queue.range((start.as_str(), 0)..).backend(what)?.next(),
            None => queue.iter().backend(what)?.next(),
        };
        let Some(entry) = next else { break };
        let (k, _) = entry.backend(what)?;
        let id = k.value().0.to_owned();
        from = Some(successor(&id));
        out.push(id);
    }
    Ok(out)
}

pub(crate) fn queued_count(rtx: &ReadTransaction, enrollment_id: &str) -> StoreResult<u64> {
    let queue = open_read(rtx, QUEUE)?;
    let what = "cannot read the command queue";
    let mut n = 0u64;
    for entry in queue
        .range((enrollment_id, 0)..=(enrollment_id, u64::MAX))
        .backend(what)?
    {
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
    // oldest finished ones are found by walking the history from its start.
    let max_kept = u64::try_from(policy.max_finished_per_enrollment).unwrap_or(u64::MAX);
    let counts = open_read(rtx, HISTORY_COUNT)?;
    let history = open_read(rtx, HISTORY)?;
    let deliveries = open_read(rtx, DELIVERIES)?;
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
        for kept in history
            .range((enrollment_id, 0)..=(enrollment_id, u64::MAX))
            .backend(what)?
        {
            if excess == 0 {
                break;
            }
            let (hk, hv) = kept.backend(what)?;
            let (_, seq) = hk.value();
            if chosen.contains(&seq) {
                continue;
            }
            let uuid = hv.value();
            let Some(value) = deliveries.get((uuid, enrollment_id)).backend(what)? else {
                continue;
            };
            let (delivery, _) = decode_delivery(&DeliveryKey(uuid, enrollment_id), value.value())?;
            if !delivery.status.is_final() {
                continue;
            }
            if plan.full(limit) {
                plan.more = true;
                return Ok(plan);
            }
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
        let mut results = open(txn, DELIVERY_RESULTS)?;
        let mut history = open(txn, HISTORY)?;
        let mut history_count = open(txn, HISTORY_COUNT)?;
        let what = "cannot delete a finished delivery";
        for (uuid, enrollment_id, seq) in &plan.deliveries {
            let Some(delivery) = tables.delivery(uuid, enrollment_id)? else {
                continue;
            };
            if delivery.seq != *seq || !delivery.status.is_final() {
                continue;
            }
            let key = (uuid.as_str(), enrollment_id.as_str());
            let index_key = (enrollment_id.as_str(), *seq);
            tables.deliveries.remove(key).backend(what)?;
            results.remove(key).backend(what)?;
            if history.remove(index_key).backend(what)?.is_some() {
                add_history_count(&mut history_count, enrollment_id, -1)?;
            }
            tables
                .finished_by_age
                .remove((delivery.updated_at.0, *seq))
                .backend(what)?;
            stats.deliveries_removed += 1;
            touched_commands.insert(uuid.as_str());
        }
        let what = "cannot delete a command";
        let mut commands = open(txn, COMMANDS)?;
        let mut payloads = open(txn, COMMAND_PAYLOADS)?;
        for uuid in touched_commands {
            let end = successor(uuid);
            let remaining = tables
                .deliveries
                .range((uuid, "")..(end.as_str(), ""))
                .backend(what)?
                .next()
                .is_some();
            if !remaining {
                commands.remove(uuid).backend(what)?;
                payloads.remove(uuid).backend(what)?;
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
