//! Group commit: one writer thread applies every waiting write in one durable transaction.
//!
//! redb allows one write transaction at a time and each durable commit costs an fsync, so
//! writers that each committed alone would queue behind each other's fsyncs. Instead callers
//! hand their operation to the writer thread and wait; the thread takes everything waiting (up
//! to `max_batch`), applies it in order in one transaction, commits once, and only then answers
//! each caller with its own result. An operation that fails makes the writer abort the batch
//! and replay its operations one transaction each, so a bad request never fails a neighbour;
//! operations are therefore closures that can run more than once.
//!
//! The writer also keeps [`BindingVersions`]: after each commit, and before it answers anyone,
//! it moves the version of every enrollment the transaction wrote.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mdm_service::ports::{StoreError, StoreResult};
use redb::{Database, Durability, WriteTransaction};
use tokio::sync::oneshot;

use crate::codec::BackendExt;
use crate::commands::QueueTables;
use crate::enrollments::EnrollmentsMut;

/// Write activity since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Durable commits (each one fsync).
    pub commits: u64,
    /// Write requests answered (successful or not).
    pub writes: u64,
    /// Batches that were aborted because one operation failed and then replayed one
    /// operation per transaction.
    pub replayed_batches: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    commits: AtomicU64,
    writes: AtomicU64,
    replayed_batches: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> StoreStats {
        StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            replayed_batches: self.replayed_batches.load(Ordering::Relaxed),
        }
    }
}

/// How many counters [`BindingVersions`] spreads enrollments over: 32 KiB, and two
/// enrollments written in the same second rarely share one.
const VERSION_STRIPES: usize = 4096;

/// Versions of enrollment records, for readers that keep an enrollment's binding from one
/// request to the next instead of reading it for each (a device sends several requests on
/// one connection, and every one is checked against its enrollment).
///
/// Each enrollment id falls on one of [`VERSION_STRIPES`] counters. The writer adds one to
/// the counter of every enrollment a transaction wrote, after the commit and before it answers
/// any caller. A reader takes the counter before it reads the record and may use what it read
/// for as long as the counter has not moved: the record has not been written since. Ids that
/// share a counter only cost each other a re-read. The hash is keyed per process, so nobody
/// can choose ids that share one.
pub(crate) struct BindingVersions {
    stripes: Box<[AtomicU64]>,
    hasher: RandomState,
}

impl BindingVersions {
    fn new() -> Self {
        BindingVersions {
            stripes: (0..VERSION_STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
        }
    }

    fn stripe(&self, id: &str) -> &AtomicU64 {
        // The remainder is below VERSION_STRIPES, so it fits a usize.
        let i = (self.hasher.hash_one(id) % VERSION_STRIPES as u64) as usize;
        &self.stripes[i]
    }

    /// The version of `id`'s record (see the type's documentation).
    pub(crate) fn get(&self, id: &str) -> u64 {
        self.stripe(id).load(Ordering::Acquire)
    }

    fn bump(&self, id: &str) {
        self.stripe(id).fetch_add(1, Ordering::Release);
    }

    /// Moves every version: for writes that do not name the enrollments they touch.
    pub(crate) fn bump_all(&self) {
        for stripe in &*self.stripes {
            stripe.fetch_add(1, Ordering::Release);
        }
    }
}

/// The transaction a batch's operations run in, with the queue tables kept open from one
/// command result to the next: opening a redb table costs a lookup and a type check, and
/// closing it writes its root back, and results are most of the writes a busy appliance makes.
pub(crate) struct Batch<'t> {
    txn: &'t WriteTransaction,
    queue: Option<QueueTables<'t>>,
    /// The enrollments written through [`Batch::enrollments`], for [`BindingVersions`].
    enrollments_written: Vec<String>,
}

impl<'t> Batch<'t> {
    pub(crate) fn new(txn: &'t WriteTransaction) -> Self {
        Batch {
            txn,
            queue: None,
            enrollments_written: Vec::new(),
        }
    }

    /// The `enrollments` table, for writing. Every write of an enrollment record goes
    /// through it, so that the writer knows whose binding version to move; the one exception,
    /// resealing (which rewrites only the sealed tokens inside records), moves every version.
    pub(crate) fn enrollments(&mut self) -> StoreResult<EnrollmentsMut<'_, 't>> {
        EnrollmentsMut::open(self.txn, &mut self.enrollments_written)
    }

    /// The transaction, for an operation that opens tables itself. The shared tables are
    /// closed first: redb refuses to open a table that is already open.
    pub(crate) fn txn(&mut self) -> &'t WriteTransaction {
        self.queue = None;
        self.txn
    }

    /// The transaction, for tables other than the queue tables, which stay open.
    pub(crate) fn txn_keeping_queue(&self) -> &'t WriteTransaction {
        self.txn
    }

    /// The queue tables, opened by the first operation that asks for them.
    pub(crate) fn queue_tables(&mut self) -> StoreResult<&mut QueueTables<'t>> {
        if self.queue.is_none() {
            self.queue = Some(QueueTables::open(self.txn)?);
        }
        self.queue
            .as_mut()
            .ok_or_else(|| StoreError::Backend("the queue tables did not open".into()))
    }
}

/// A write waiting for the writer thread, with its result type erased.
pub(crate) trait Pending: Send {
    /// Runs the operation in `batch`, keeping its result; false if it failed.
    fn apply(&mut self, batch: &mut Batch<'_>) -> bool;
    /// Answers the caller: with `failure` if given (the commit failed), else with the result
    /// `apply` kept.
    fn complete(self: Box<Self>, failure: Option<StoreError>);
}

/// An operation and where its caller waits.
pub(crate) struct Request<R, F> {
    op: F,
    outcome: Option<StoreResult<R>>,
    reply: oneshot::Sender<StoreResult<R>>,
}

impl<R, F> Request<R, F> {
    pub(crate) fn new(op: F, reply: oneshot::Sender<StoreResult<R>>) -> Self {
        Request {
            op,
            outcome: None,
            reply,
        }
    }
}

impl<R, F> Pending for Request<R, F>
where
    R: Send,
    F: FnMut(&mut Batch<'_>) -> StoreResult<R> + Send,
{
    fn apply(&mut self, batch: &mut Batch<'_>) -> bool {
        let outcome = (self.op)(batch);
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn complete(self: Box<Self>, failure: Option<StoreError>) {
        let answer = match failure {
            Some(e) => Err(e),
            None => self.outcome.unwrap_or_else(|| {
                Err(StoreError::Backend(
                    "the write was answered before it ran".into(),
                ))
            }),
        };
        // The caller may have stopped waiting (its future was dropped); the write stands.
        let _ = self.reply.send(answer);
    }
}

pub(crate) enum Message {
    Write(Box<dyn Pending>),
    /// Run with no write transaction open (after the writes queued before it), so the file
    /// holds exactly the last commit while it runs (for copying it).
    Exclusive(Box<dyn FnOnce() + Send>),
    /// Finish what was queued before this message, then exit.
    Shutdown,
}

/// The handle to the writer thread.
pub(crate) struct Writer {
    sender: Sender<Message>,
    thread: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
}

impl Writer {
    pub(crate) fn start(db: Arc<Database>, max_batch: usize) -> StoreResult<Writer> {
        let (sender, receiver) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared::new());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("mdm-store-writer".into())
            .spawn(move || run(&db, &receiver, max_batch.max(1), &thread_shared))
            .backend("cannot start the store writer thread")?;
        Ok(Writer {
            sender,
            thread: Mutex::new(Some(thread)),
            shared,
        })
    }

    /// The versions of enrollment records this writer moves.
    pub(crate) fn versions(&self) -> &BindingVersions {
        &self.shared.versions
    }

    pub(crate) fn submit(&self, pending: Box<dyn Pending>) -> StoreResult<()> {
        self.sender
            .send(Message::Write(pending))
            .map_err(|_| StoreError::Closed)
    }

    /// Runs `job` on the writer thread between transactions. See [`Message::Exclusive`].
    pub(crate) fn exclusive(&self, job: Box<dyn FnOnce() + Send>) -> StoreResult<()> {
        self.sender
            .send(Message::Exclusive(job))
            .map_err(|_| StoreError::Closed)
    }

    pub(crate) fn stats(&self) -> StoreStats {
        self.shared.counters.snapshot()
    }

    /// Lets the thread finish the writes already submitted, then waits for it to exit.
    /// Later submissions fail with [`StoreError::Closed`]. Idempotent.
    pub(crate) fn stop(&self) -> StoreResult<()> {
        let handle = match self.thread.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(handle) = handle else {
            return Ok(());
        };
        // Fails only if the thread is already gone, which `join` reports below.
        let _ = self.sender.send(Message::Shutdown);
        handle
            .join()
            .map_err(|_| StoreError::Backend("the store writer thread crashed".into()))
    }
}

/// What the writer thread reports to: its counters and the binding versions.
pub(crate) struct Shared {
    counters: Counters,
    versions: BindingVersions,
}

impl Shared {
    fn new() -> Self {
        Shared {
            counters: Counters::default(),
            versions: BindingVersions::new(),
        }
    }
}

fn run(db: &Database, receiver: &Receiver<Message>, max_batch: usize, shared: &Shared) {
    while let Ok(first) = receiver.recv() {
        let mut batch = Vec::new();
        let mut shutdown = false;
        let mut exclusive = None;
        match first {
            Message::Write(p) => batch.push(p),
            Message::Exclusive(job) => exclusive = Some(job),
            Message::Shutdown => shutdown = true,
        }
        while !shutdown && exclusive.is_none() && batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(Message::Write(p)) => batch.push(p),
                Ok(Message::Exclusive(job)) => exclusive = Some(job),
                Ok(Message::Shutdown) => shutdown = true,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if !batch.is_empty() {
            process(db, batch, shared);
        }
        if let Some(job) = exclusive {
            job();
        }
        if shutdown {
            break;
        }
    }
}

/// Applies a batch in one transaction, falling back to one transaction per operation if any
/// of them fails (or the shared commit does).
pub(crate) fn process(db: &Database, mut batch: Vec<Box<dyn Pending>>, shared: &Shared) {
    let counters = &shared.counters;
    let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
    if batch.len() > 1 {
        match apply_all(db, &mut batch, &shared.versions) {
            Ok(()) => {
                counters.commits.fetch_add(1, Ordering::Relaxed);
                counters.writes.fetch_add(n, Ordering::Relaxed);
                for p in batch {
                    p.complete(None);
                }
                return;
            }
            Err(why) => {
                counters.replayed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%why, size = batch.len(), "replaying a write batch one by one");
            }
        }
    }
    for p in batch {
        process_one(db, p, shared);
    }
}

fn begin(db: &Database) -> StoreResult<WriteTransaction> {
    let mut txn = db
        .begin_write()
        .backend("cannot begin a write transaction")?;
    txn.set_durability(Durability::Immediate)
        .backend("cannot make the write transaction durable")?;
    Ok(txn)
}

/// Why a batch could not commit as one transaction.
enum BatchFailure {
    /// The operation at this index returned an error.
    Operation(usize),
    /// Beginning or committing the transaction failed.
    Backend(StoreError),
}

impl std::fmt::Display for BatchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchFailure::Operation(i) => write!(f, "operation {i} of the batch failed"),
            BatchFailure::Backend(e) => write!(f, "{e}"),
        }
    }
}

/// Commits `txn` and then moves the versions of the enrollments it wrote. They move even if
/// the commit failed: a reader then reads the record again, which is only wasted work.
fn commit(
    txn: WriteTransaction,
    written: &[String],
    versions: &BindingVersions,
) -> StoreResult<()> {
    let committed = txn.commit().backend("cannot commit");
    for id in written {
        versions.bump(id);
    }
    committed
}

fn apply_all(
    db: &Database,
    batch: &mut [Box<dyn Pending>],
    versions: &BindingVersions,
) -> Result<(), BatchFailure> {
    let txn = begin(db).map_err(BatchFailure::Backend)?;
    let (failed, written) = {
        let mut shared = Batch::new(&txn);
        let failed = batch.iter_mut().position(|p| !p.apply(&mut shared));
        (failed, std::mem::take(&mut shared.enrollments_written))
        // The shared tables close here, before the commit or abort.
    };
    if let Some(i) = failed {
        abort(txn);
        return Err(BatchFailure::Operation(i));
    }
    commit(txn, &written, versions).map_err(BatchFailure::Backend)
}

fn process_one(db: &Database, mut p: Box<dyn Pending>, shared: &Shared) {
    let failure = match begin(db) {
        Err(e) => Some(e),
        Ok(txn) => {
            let (applied, written) = {
                let mut batch = Batch::new(&txn);
                let applied = p.apply(&mut batch);
                (applied, std::mem::take(&mut batch.enrollments_written))
            };
            if applied {
                match commit(txn, &written, &shared.versions) {
                    Ok(()) => {
                        shared.counters.commits.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    Err(e) => Some(e),
                }
            } else {
                // The operation's own error is the answer; none of its writes may stay.
                abort(txn);
                None
            }
        }
    };
    shared.counters.writes.fetch_add(1, Ordering::Relaxed);
    p.complete(failure);
}

fn abort(txn: WriteTransaction) {
    if let Err(e) = txn.abort() {
        tracing::warn!(error = %e, "aborting a write transaction failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

    const T: TableDefinition<&str, u64> = TableDefinition::new("t");

    fn op(
        key: &'static str,
        fail: bool,
    ) -> (Box<dyn Pending>, oneshot::Receiver<StoreResult<u64>>) {
        let (tx, rx) = oneshot::channel();
        let f = move |batch: &mut Batch<'_>| -> StoreResult<u64> {
            let mut t = batch.txn().open_table(T).backend("open")?;
            t.insert(key, 1).backend("insert")?;
            if fail {
                return Err(StoreError::Conflict(format!("{key} refused")));
            }
            t.len().backend("len")
        };
        (Box::new(Request::new(f, tx)), rx)
    }

    fn keys(db: &Database) -> Vec<String> {
        let rtx = db.begin_read().unwrap();
        let t = rtx.open_table(T).unwrap();
        t.iter()
            .unwrap()
            .map(|e| e.unwrap().0.value().to_owned())
            .collect()
    }

    #[test]
    fn a_clean_batch_commits_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("w.redb")).unwrap();
        let shared = Shared::new();
        let (ops, rxs): (Vec<_>, Vec<_>) = ["a", "b", "c"].iter().map(|k| op(k, false)).unzip();
        process(&db, ops, &shared);
        let results: Vec<u64> = rxs
            .into_iter()
            .map(|mut rx| rx.try_recv().unwrap().unwrap())
            .collect();
        // Each operation saw the writes of those before it in the same transaction.
        assert_eq!(results, vec![1, 2, 3]);
        assert_eq!(
            shared.counters.snapshot(),
            StoreStats {
                commits: 1,
                writes: 3,
                replayed_batches: 0
            }
        );
        assert_eq!(keys(&db), vec!["a", "b", "c"]);
    }

    #[test]
    fn a_failing_operation_does_not_fail_its_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("w.redb")).unwrap();
        let shared = Shared::new();
        let (ops, rxs): (Vec<_>, Vec<_>) = [("a", false), ("bad", true), ("c", false)]
            .iter()
            .map(|(k, fail)| op(k, *fail))
            .unzip();
        process(&db, ops, &shared);
        let results: Vec<StoreResult<u64>> = rxs
            .into_iter()
            .map(|mut rx| rx.try_recv().unwrap())
            .collect();
        assert_eq!(results[0].as_ref().unwrap(), &1);
        assert!(
            matches!(&results[1], Err(StoreError::Conflict(m)) if m == "bad refused"),
            "{:?}",
            results[1]
        );
        // Replayed after the failure: "c" no longer sees "bad"'s discarded insert.
        assert_eq!(results[2].as_ref().unwrap(), &2);
        assert_eq!(keys(&db), vec!["a", "c"]);
        assert_eq!(
            shared.counters.snapshot(),
            StoreStats {
                commits: 2,
                writes: 3,
                replayed_batches: 1
            }
        );
    }

    #[test]
    fn shared_tables_close_before_an_operation_opens_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("w.redb")).unwrap();
        let state = Shared::new();
        let shared = || {
            let (tx, rx) = oneshot::channel();
            let f = |batch: &mut Batch<'_>| batch.queue_tables().map(drop);
            (Box::new(Request::new(f, tx)) as Box<dyn Pending>, rx)
        };
        let own = || {
            let (tx, rx) = oneshot::channel();
            let f = |batch: &mut Batch<'_>| {
                let mut history_count = batch
                    .txn()
                    .open_table(crate::schema::HISTORY_COUNT)
                    .backend("open")?;
                history_count.insert("E", 1).backend("insert").map(drop)
            };
            (Box::new(Request::new(f, tx)) as Box<dyn Pending>, rx)
        };
        let (ops, rxs): (Vec<_>, Vec<_>) = vec![shared(), own(), shared(), shared(), own()]
            .into_iter()
            .unzip();
        process(&db, ops, &state);
        for mut rx in rxs {
            rx.try_recv().unwrap().unwrap();
        }
        assert_eq!(
            state.counters.snapshot().commits,
            1,
            "one transaction, no replay"
        );
        assert_eq!(state.counters.snapshot().replayed_batches, 0);
    }

    #[tokio::test]
    async fn stop_finishes_submitted_writes_then_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("w.redb")).unwrap());
        let writer = Writer::start(Arc::clone(&db), 16).unwrap();
        let (a, rx) = op("a", false);
        writer.submit(a).unwrap();
        writer.stop().unwrap();
        assert_eq!(rx.await.unwrap().unwrap(), 1);
        let (b, rx) = op("b", false);
        assert!(matches!(writer.submit(b), Err(StoreError::Closed)));
        assert!(rx.await.is_err());
        writer.stop().unwrap();
        assert_eq!(keys(&db), vec!["a"]);
    }
}
