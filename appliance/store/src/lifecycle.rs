//! Pre-enrollment records and the activity log.
//!
//! The activity log is append-only: entries are keyed by a sequence number from their own
//! counter, with two indexes: by target (a device's timeline) and by time (retention and time
//! filters). Nothing rewrites an entry; pruning deletes the oldest by age.

use mdm_service::ports::{
    ActivityQuery, ActivityRecord, NewActivity, PreenrollRecord, StoreError, StoreResult, Timestamp,
};
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};

use crate::codec::{decode, encode, BackendExt};
use crate::records::{get_json, page_json};
use crate::schema::{
    open, open_read, ACTIVITY, ACTIVITY_BY_TARGET, ACTIVITY_BY_TIME, META, PREENROLLED,
};

/// The `meta` key of the next activity sequence number.
const NEXT_ACTIVITY_SEQ: &str = "next_activity_seq";

/// How far back the wall clock may step between two appends without a `since` filter
/// missing entries.
const CLOCK_SLACK_MS: i64 = 5 * 60 * 1000;

/// Pre-enrollment records encoded on the caller's task.
#[derive(Debug, Default)]
pub(crate) struct EncodedPreenroll {
    put: Vec<(String, Vec<u8>)>,
    delete: Vec<String>,
}

impl EncodedPreenroll {
    pub(crate) fn encode(put: Vec<PreenrollRecord>, delete: Vec<String>) -> StoreResult<Self> {
        let mut out = Vec::with_capacity(put.len());
        for rec in put {
            let json = encode("preenrolled", &rec.serial, &rec)?;
            out.push((rec.serial, json));
        }
        // Key order keeps consecutive inserts on the same B-tree pages.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(EncodedPreenroll { put: out, delete })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.put.is_empty() && self.delete.is_empty()
    }
}

pub(crate) fn write_preenrolled(
    txn: &WriteTransaction,
    batch: &EncodedPreenroll,
) -> StoreResult<()> {
    let mut table = open(txn, PREENROLLED)?;
    for (serial, json) in &batch.put {
        table
            .insert(serial.as_str(), json.as_slice())
            .backend_with(|| format!("cannot write `preenrolled` record `{serial}`"))?;
    }
    for serial in &batch.delete {
        table
            .remove(serial.as_str())
            .backend_with(|| format!("cannot delete `preenrolled` record `{serial}`"))?;
    }
    Ok(())
}

pub(crate) fn preenrolled(
    rtx: &ReadTransaction,
    serial: &str,
) -> StoreResult<Option<PreenrollRecord>> {
    get_json(&open_read(rtx, PREENROLLED)?, serial)
}

pub(crate) fn list_preenrolled(
    rtx: &ReadTransaction,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<PreenrollRecord>> {
    page_json(&open_read(rtx, PREENROLLED)?, after, limit)
}

pub(crate) fn count_preenrolled(rtx: &ReadTransaction) -> StoreResult<u64> {
    open_read(rtx, PREENROLLED)?
        .len()
        .backend("cannot count table `preenrolled`")
}

/// Activity entries encoded on the caller's task.
#[derive(Debug, Default)]
pub(crate) struct EncodedActivity {
    entries: Vec<(i64, Vec<String>, NewActivity)>,
}

impl EncodedActivity {
    pub(crate) fn new(entries: Vec<NewActivity>) -> Self {
        EncodedActivity {
            entries: entries
                .into_iter()
                .map(|e| (e.at.0, e.targets.clone(), e))
                .collect(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Appends entries, numbering them from the activity counter. The sequence number is part of
/// the stored record, so encoding happens here (after allocation) rather than on the caller.
pub(crate) fn append_activity(txn: &WriteTransaction, batch: &EncodedActivity) -> StoreResult<()> {
    if batch.entries.is_empty() {
        return Ok(());
    }
    let n = batch.entries.len() as u64;
    let first = {
        let mut meta = open(txn, META)?;
        let what = "cannot allocate an activity sequence number";
        let first = meta
            .get(NEXT_ACTIVITY_SEQ)
            .backend(what)?
            .map_or(1, |g| g.value());
        let next = first.checked_add(n).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "table `meta`, key `{NEXT_ACTIVITY_SEQ}`: the counter is exhausted"
            ))
        })?;
        meta.insert(NEXT_ACTIVITY_SEQ, next).backend(what)?;
        first
    };
    let mut log = open(txn, ACTIVITY)?;
    let mut by_target = open(txn, ACTIVITY_BY_TARGET)?;
    let mut by_time = open(txn, ACTIVITY_BY_TIME)?;
    let what = "cannot append to the activity log";
    for (seq, (at, targets, entry)) in (first..).zip(&batch.entries) {
        let rec = ActivityRecord {
            seq,
            entry: entry.clone(),
        };
        let json = encode("activity", &seq, &rec)?;
        log.insert(seq, json.as_slice()).backend(what)?;
        by_time.insert((*at, seq), ()).backend(what)?;
        for t in targets {
            by_target.insert((t.as_str(), seq), ()).backend(what)?;
        }
    }
    Ok(())
}

/// Entries matching `q`, newest first, looking at no more than `scan_limit` entries.
pub(crate) fn activity(
    rtx: &ReadTransaction,
    q: &ActivityQuery,
    scan_limit: usize,
) -> StoreResult<(Vec<ActivityRecord>, Option<u64>)> {
    let log = open_read(rtx, ACTIVITY)?;
    let what = "cannot read the activity log";
    let upper = q.before_seq.unwrap_or(u64::MAX);
    let mut out = Vec::new();
    let mut scanned = 0usize;
    let mut last_seq = None;
    let mut visit = |seq: u64| -> StoreResult<bool> {
        if out.len() >= q.limit {
            return Ok(false);
        }
        if scanned >= scan_limit {
            return Ok(false);
        }
        scanned += 1;
        last_seq = Some(seq);
        let Some(guard) = log.get(seq).backend(what)? else {
            // An index entry of an entry pruned in the same instant; nothing to show.
            return Ok(true);
        };
        let rec: ActivityRecord = decode("activity", &seq, guard.value())?;
        // Entries are appended in time order, so newest first, once an entry is well before
        // `since` nothing older can match. "Well": the wall clock may step back a little.
        if let Some(since) = q.since {
            if rec.entry.at.0 < since.0.saturating_sub(CLOCK_SLACK_MS) {
                return Ok(false);
            }
        }
        if q.matches(&rec.entry) {
            out.push(rec);
        }
        Ok(true)
    };
    match &q.target {
        Some(target) => {
            let index = open_read(rtx, ACTIVITY_BY_TARGET)?;
            let range = index
                .range((target.as_str(), 0u64)..(target.as_str(), upper))
                .backend(what)?;
            for entry in range.rev() {
                let (k, _) = entry.backend(what)?;
                if !visit(k.value().1)? {
                    break;
                }
            }
        }
        None => {
            for entry in log.range(..upper).backend(what)?.rev() {
                let (k, _) = entry.backend(what)?;
                if !visit(k.value())? {
                    break;
                }
            }
        }
    }
    let exhausted_scan = scanned >= scan_limit && out.len() < q.limit;
    let resume = if out.len() >= q.limit {
        out.last().map(|r| r.seq)
    } else if exhausted_scan {
        last_seq
    } else {
        None
    };
    Ok((out, resume))
}

/// Deletes up to `limit` entries older than `before`, oldest first.
pub(crate) fn prune_activity(
    txn: &WriteTransaction,
    before: Timestamp,
    limit: usize,
) -> StoreResult<u64> {
    let mut by_time = open(txn, ACTIVITY_BY_TIME)?;
    let mut log = open(txn, ACTIVITY)?;
    let mut by_target = open(txn, ACTIVITY_BY_TARGET)?;
    let what = "cannot prune the activity log";
    let victims: Vec<(i64, u64)> = {
        let mut v = Vec::new();
        for entry in by_time.range(..(before.0, 0u64)).backend(what)? {
            if v.len() >= limit {
                break;
            }
            let (k, _) = entry.backend(what)?;
            v.push(k.value());
        }
        v
    };
    for (at, seq) in &victims {
        by_time.remove((*at, *seq)).backend(what)?;
        let Some(guard) = log.remove(*seq).backend(what)? else {
            continue;
        };
        let rec: ActivityRecord = decode("activity", seq, guard.value())?;
        drop(guard);
        for t in &rec.entry.targets {
            by_target.remove((t.as_str(), *seq)).backend(what)?;
        }
    }
    Ok(victims.len() as u64)
}
