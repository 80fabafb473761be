//! The activity log: who did what, when, to which device, and how it ended.
//!
//! Admin actions are appended before the API answers (in the same transaction as the change
//! where the store offers one). Lifecycle steps the devices and Apple cause (enrollments,
//! check-outs, command results, assignment outcomes) are buffered and appended in batches by
//! [`run_activity_writer`], so a busy check-in path pays one vector push instead of a write
//! of its own; a crash can lose the last fraction of a second of those. So that an admin
//! action's entry never gets a sequence number ahead of what happened before it, an entry
//! written at once takes the buffered ones with it ([`MdmService::log_activity_now`]), and the
//! admin API writes the buffer before it applies a change ([`MdmService::flush_activity`]).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{watch, Notify};
use tracing::warn;

use crate::error::{ServiceError, ServiceResult};
use crate::ports::{ActivityOutcome, ActivityQuery, ActivityRecord, NewActivity, Store, Timestamp};
use crate::MdmService;

/// Entries buffered beyond this are flushed at once rather than at the next tick.
const FLUSH_AT: usize = 2000;
/// The most entries kept while the store refuses writes; older ones are dropped with a warning.
const MAX_BUFFERED: usize = 100_000;
/// How often buffered entries are written.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// The most entries one activity query looks at.
pub const SCAN_LIMIT: usize = 50_000;

/// Entries waiting to be appended.
#[derive(Debug, Default)]
pub struct ActivityBuffer {
    pending: Mutex<Vec<NewActivity>>,
    wake: Notify,
}

impl ActivityBuffer {
    /// Queues an entry for the next batch.
    pub fn push(&self, entry: NewActivity) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if p.len() >= MAX_BUFFERED {
            // The store has refused writes for a long while; keep the newest.
            p.remove(0);
        }
        p.push(entry);
        if p.len() >= FLUSH_AT {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> Vec<NewActivity> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn put_back(&self, mut entries: Vec<NewActivity>) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        entries.append(&mut p);
        let excess = entries.len().saturating_sub(MAX_BUFFERED);
        if excess > 0 {
            warn!(
                dropped = excess,
                "activity entries dropped: the store refuses writes"
            );
            entries.drain(..excess);
        }
        *p = entries;
    }
}

/// An activity entry for the API: the record with readable times.
#[derive(Debug, Clone, Serialize)]
pub struct ActivityView {
    pub seq: u64,
    pub at: String,
    pub actor: String,
    pub kind: String,
    pub targets: Vec<String>,
    pub outcome: &'static str,
    pub summary: String,
    pub detail: Option<serde_json::Value>,
}

impl From<ActivityRecord> for ActivityView {
    fn from(r: ActivityRecord) -> Self {
        ActivityView {
            seq: r.seq,
            at: r.entry.at.to_rfc3339(),
            actor: r.entry.actor,
            kind: r.entry.kind,
            targets: r.entry.targets,
            outcome: r.entry.outcome.as_str(),
            summary: r.entry.summary,
            detail: r.entry.detail,
        }
    }
}

/// A page of activity, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct ActivityPage {
    pub items: Vec<ActivityView>,
    /// Pass as `before` for the next (older) page; `None` when nothing older matches.
    pub next: Option<u64>,
}

/// Builds an entry stamped now.
pub fn entry(
    actor: &str,
    kind: &str,
    targets: Vec<String>,
    outcome: ActivityOutcome,
    summary: impl Into<String>,
    detail: Option<serde_json::Value>,
) -> NewActivity {
    NewActivity {
        at: Timestamp::now(),
        actor: actor.to_string(),
        kind: kind.to_string(),
        targets,
        outcome,
        summary: summary.into(),
        detail,
    }
}

impl<S: Store> MdmService<S> {
    /// Queues a lifecycle entry (written within a quarter of a second).
    pub fn log_activity(&self, entry: NewActivity) {
        self.inner.activity.push(entry);
    }

    /// Appends an admin action's entry and waits until it is durable.
    ///
    /// Entries still buffered go first, in the same write: the log's sequence numbers then
    /// follow the order things happened, so an action does not appear older than its own
    /// entry written a moment later.
    pub async fn log_activity_now(&self, entry: NewActivity) -> ServiceResult<()> {
        self.append_buffered(Some(entry)).await
    }

    /// Writes the buffered lifecycle entries now.
    pub async fn flush_activity(&self) -> ServiceResult<()> {
        self.append_buffered(None).await
    }

    /// Writes the buffered entries, then `then`, in one append. If the write fails the
    /// buffered entries go back to the buffer for the next try; `then` is the caller's to
    /// report.
    async fn append_buffered(&self, then: Option<NewActivity>) -> ServiceResult<()> {
        let mut batch = self.inner.activity.take();
        let buffered = batch.len();
        batch.extend(then);
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store().append_activity(batch.clone()).await {
            batch.truncate(buffered);
            self.inner.activity.put_back(batch);
            return Err(e.into());
        }
        Ok(())
    }

    /// Activity entries matching `q`, newest first. A query filtering on something rare in a
    /// big log stops after looking at [`SCAN_LIMIT`] entries and hands out `next` to go on.
    pub fn activity(&self, q: &ActivityQuery) -> ServiceResult<ActivityPage> {
        if q.limit == 0 || q.limit > 10_000 {
            return Err(ServiceError::bad_request(
                "INVALID_LIMIT",
                "`limit` must be between 1 and 10000",
            ));
        }
        let (items, next) = self.store().activity(q, SCAN_LIMIT)?;
        Ok(ActivityPage {
            items: items.into_iter().map(ActivityView::from).collect(),
            next,
        })
    }

    /// Deletes activity older than the retention period, in bounded batches.
    pub async fn prune_activity(&self) -> ServiceResult<u64> {
        let days = self.lifecycle_settings().activity_retention_days;
        let before = Timestamp::now().minus(Duration::from_secs(u64::from(days) * 86_400));
        let mut total = 0;
        loop {
            let n = self.store().prune_activity(before, 5000).await?;
            total += n;
            if n < 5000 {
                return Ok(total);
            }
        }
    }
}

/// Writes buffered activity every quarter second (or sooner when a lot is waiting) until
/// `stop`, then writes what is left.
pub async fn run_activity_writer<S: Store>(
    service: MdmService<S>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(FLUSH_EVERY) => false,
            _ = service.inner.activity.wake.notified() => false,
            r = stop.wait_for(|s| *s) => {
                // Stopping, or the daemon is gone: either way, write what is left and end.
                drop(r);
                true
            }
        };
        if let Err(e) = service.flush_activity().await {
            warn!(error = %e, "cannot write activity entries; keeping them for the next try");
        }
        if stopping {
            return;
        }
    }
}
