//! `mdm-store`: the MDM service's storage ports ([`mdm_service::ports`]) implemented on one
//! [redb](https://docs.rs/redb) file in the daemon's state directory.
//!
//! - **Writes** go through one writer thread that commits every waiting write in one durable
//!   transaction (group commit, see [`StoreStats`]); a write's future completes only after
//!   its commit is on disk, with that write's own result.
//! - **Reads** open a redb read transaction on the caller's thread: they see every write whose
//!   future has completed and are never blocked by the writer.
//! - **Schema**: the file records its schema version; opening runs pending migrations in one
//!   transaction and refuses a file written by a newer version.
//! - **Bad data** never panics: an undecodable record is [`StoreError::Corrupt`] naming its
//!   table and key; redb failures are [`StoreError::Backend`] carrying redb's message.
//!
//! What it stores: enrollments (indexed by id and, for device channels, by serial number), the
//! per-enrollment command queue and history, SCEP challenges, issued certificates, enrollment
//! links, admin API tokens, settings, and Apple Business Manager connections with their
//! devices (indexed by serial number and by when they are due for assignment), profiles and
//! rules. An ABM sync page and its cursor commit together in one [`AbmStore::abm_write`].
//!
//! What it cannot do yet: online backup or compaction, deleting enrollments, or sharing the
//! file with another process (redb locks it; `mdmctl` talks to the daemon instead). Pruning by
//! per-enrollment count reads one small counter per enrollment on each call. ABM devices are
//! removed only with their connection (a device ABM deleted stays, marked `removed_at`).

mod abm;
mod codec;
mod command_cache;
mod commands;
mod enrollments;
mod lifecycle;
mod misc;
mod profiles;
mod records;
mod reseal;
mod schema;
mod users;
mod writer;

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use mdm_service::ports::{
    AbmBatch, AbmConnectionRecord, AbmDeviceRecord, AbmProfileRecord, AbmRuleRecord, AbmStore,
    ActivityQuery, ActivityRecord, ApiTokenRecord, ApiTokenStore, AuthenticateRecord, BackupStore,
    ChallengeOutcome, ChallengeRecord, ChallengeStore, CommandQueue, CommandRecord, CommandResult,
    DeliveryPage, DeliveryRecord, EnqueueOutcome, EnrollmentBinding, EnrollmentRecord,
    EnrollmentStore, GroupRecord, InstallRecord, InstallResult, IssuedCertRecord, IssuedCertStore,
    LifecycleStore, LinkRecord, LinkStore, NewActivity, NewCommand, PreenrollRecord, ProfileBatch,
    ProfileRecord, ProfileStore, PruneStats, PushRecord, QueuedCommand, ResealReport,
    ResultOutcome, RetentionPolicy, Rewrap, SettingsStore, StoreError, StoreResult, Timestamp,
    TokenUpdateOutcome, TokenUpdateRecord, UserChange, UserRecord, UserStore,
};
use redb::{Database, ReadTransaction, ReadableDatabase, WriteTransaction};
use tokio::sync::oneshot;

use crate::codec::BackendExt;
use crate::command_cache::CommandCache;
pub use crate::writer::StoreStats;
use crate::writer::{Batch, Request, Writer};

/// The schema version this build writes (and the newest it can open).
pub const SCHEMA_VERSION: u64 = schema::CURRENT_VERSION;

/// How to open a [`RedbStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// The most writes committed together in one transaction. Larger batches mean fewer
    /// fsyncs under load; a batch never waits to fill up. Values below 1 count as 1.
    pub max_batch: usize,
    /// redb's page cache limit in bytes; `None` keeps redb's default.
    pub cache_size: Option<usize>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_batch: 256,
            cache_size: None,
        }
    }
}

/// Every storage port on one redb file. Cheap to clone: clones share the database and the
/// writer thread, which stops when the last clone is dropped or [`RedbStore::close`]d.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct Inner {
    db: Arc<Database>,
    writer: Writer,
    path: std::path::PathBuf,
    commands: Arc<CommandCache>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.writer.stop() {
            tracing::error!(error = %e, "the store writer did not stop cleanly");
        }
    }
}

impl RedbStore {
    /// Opens (creating if missing) the database at `path`, bringing its schema up to
    /// [`SCHEMA_VERSION`], and starts the writer thread.
    ///
    /// Fails with [`StoreError::Corrupt`] if the file was written by a newer version, and with
    /// [`StoreError::Backend`] if it cannot be opened (not a redb file, locked by another
    /// process, I/O error).
    pub fn open(path: &Path, opts: StoreOptions) -> Result<RedbStore, StoreError> {
        let mut builder = Database::builder();
        if let Some(bytes) = opts.cache_size {
            builder.set_cache_size(bytes);
        }
        let db = builder
            .create(path)
            .backend_with(|| format!("cannot open the database {}", path.display()))?;
        schema::prepare(&db, schema::MIGRATIONS)?;
        let db = Arc::new(db);
        let writer = Writer::start(Arc::clone(&db), opts.max_batch)?;
        Ok(RedbStore {
            inner: Arc::new(Inner {
                db,
                writer,
                path: path.to_owned(),
                commands: Arc::default(),
            }),
        })
    }

    /// Copies the database file to `dest` (created; fsynced) as of the last commit: the copy
    /// runs on the writer thread between transactions, so writes wait while it runs (about a
    /// second per few hundred MB). Opening the copy runs redb's recovery, as after a power cut.
    pub async fn copy_to(&self, dest: &Path) -> StoreResult<u64> {
        let (reply, answer) = oneshot::channel();
        let src = self.inner.path.clone();
        let dest = dest.to_owned();
        self.inner.writer.exclusive(Box::new(move || {
            let result = copy_file(&src, &dest);
            let _ = reply.send(result);
        }))?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Write activity so far: compare `commits` with `writes` to see the batching.
    pub fn stats(&self) -> StoreStats {
        self.inner.writer.stats()
    }

    /// Finishes the writes already submitted and stops the writer; later writes through any
    /// clone fail with [`StoreError::Closed`]. If this is the last clone the file is closed
    /// too (otherwise when the last clone is dropped). Every acknowledged write is already
    /// durable; closing cleanly spares the next open a recovery pass.
    pub fn close(self) -> Result<(), StoreError> {
        self.inner.writer.stop()?;
        let Ok(inner) = Arc::try_unwrap(self.inner) else {
            return Ok(());
        };
        let db = Arc::clone(&inner.db);
        drop(inner);
        match Arc::try_unwrap(db) {
            Ok(db) => db.close().backend("cannot close the database"),
            Err(_) => Ok(()),
        }
    }

    /// The names of the tables in the file.
    #[cfg(test)]
    pub(crate) fn table_names(&self) -> StoreResult<Vec<String>> {
        use redb::TableHandle as _;
        Ok(self
            .read()?
            .list_tables()
            .backend("cannot list tables")?
            .map(|t| t.name().to_owned())
            .collect())
    }

    fn read(&self) -> StoreResult<ReadTransaction> {
        self.inner
            .db
            .begin_read()
            .backend("cannot begin a read transaction")
    }

    /// Runs `op` on the writer thread and waits until it is durably committed. `op` may run
    /// twice (see [`writer`]), so it must only read what it captured.
    async fn write<R, F>(&self, mut op: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnMut(&WriteTransaction) -> StoreResult<R> + Send + 'static,
    {
        self.write_in_batch(move |batch| op(batch.txn())).await
    }

    /// Like `write`, for an operation that uses the tables a batch keeps open.
    async fn write_in_batch<R, F>(&self, op: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnMut(&mut Batch<'_>) -> StoreResult<R> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .submit(Box::new(Request::new(op, reply)))?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

impl EnrollmentStore for RedbStore {
    fn authenticate(
        &self,
        rec: AuthenticateRecord,
    ) -> impl Future<Output = StoreResult<()>> + Send {
        self.write_in_batch(move |batch| enrollments::authenticate(batch, &rec))
    }

    fn token_update(
        &self,
        rec: TokenUpdateRecord,
    ) -> impl Future<Output = StoreResult<Option<TokenUpdateOutcome>>> + Send {
        self.write_in_batch(move |batch| enrollments::token_update(batch, &rec))
    }

    fn check_out(&self, id: &str, at: Timestamp) -> impl Future<Output = StoreResult<bool>> + Send {
        let id = id.to_owned();
        self.write_in_batch(move |batch| enrollments::check_out(batch, &id, at))
    }

    fn set_bootstrap_token(
        &self,
        id: &str,
        sealed: Option<Vec<u8>>,
        at: Timestamp,
    ) -> impl Future<Output = StoreResult<bool>> + Send {
        let id = id.to_owned();
        self.write_in_batch(move |batch| {
            enrollments::set_bootstrap_token(batch, &id, sealed.clone(), at)
        })
    }

    fn set_configured(
        &self,
        id: &str,
        at: Timestamp,
    ) -> impl Future<Output = StoreResult<bool>> + Send {
        let id = id.to_owned();
        self.write_in_batch(move |batch| enrollments::set_configured(batch, &id, at))
    }

    fn rebind_identity(
        &self,
        id: &str,
        from_sha256: &str,
        to_sha256: &str,
        at: Timestamp,
    ) -> impl Future<Output = StoreResult<bool>> + Send {
        let (id, from, to) = (id.to_owned(), from_sha256.to_owned(), to_sha256.to_owned());
        self.write_in_batch(move |batch| enrollments::rebind_identity(batch, &id, &from, &to, at))
    }

    fn record_pushes(
        &self,
        records: Vec<(String, PushRecord)>,
    ) -> impl Future<Output = StoreResult<()>> + Send {
        self.write_in_batch(move |batch| enrollments::record_pushes(batch, &records))
    }

    fn touch(&self, id: &str, at: Timestamp) -> impl Future<Output = StoreResult<()>> + Send {
        let id = id.to_owned();
        self.write_in_batch(move |batch| enrollments::touch(batch, &id, at))
    }

    fn enrollment(&self, id: &str) -> StoreResult<Option<EnrollmentRecord>> {
        enrollments::enrollment(&self.read()?, id)
    }

    fn enrollment_binding(&self, id: &str) -> StoreResult<Option<EnrollmentBinding>> {
        enrollments::enrollment_binding(&self.read()?, id)
    }

    fn binding_version(&self, id: &str) -> u64 {
        self.inner.writer.versions().get(id)
    }

    fn list_enrollments(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<EnrollmentRecord>> {
        enrollments::list_enrollments(&self.read()?, after, limit)
    }

    fn count_enrollments(&self) -> StoreResult<u64> {
        enrollments::count_enrollments(&self.read()?)
    }

    fn enrollments_by_serial(&self, serial: &str) -> StoreResult<Vec<EnrollmentRecord>> {
        enrollments::enrollments_by_serial(&self.read()?, serial)
    }
}

impl CommandQueue for RedbStore {
    fn enqueue(
        &self,
        cmd: NewCommand,
        targets: Vec<String>,
    ) -> impl Future<Output = StoreResult<EnqueueOutcome>> + Send {
        let cache = Arc::clone(&self.inner.commands);
        self.write(move |txn| commands::enqueue(txn, &cache, &cmd, &targets))
    }

    fn next_command(
        &self,
        enrollment_id: &str,
        skip: &HashSet<String>,
    ) -> StoreResult<Option<QueuedCommand>> {
        commands::next_command(&self.read()?, &self.inner.commands, enrollment_id, skip)
    }

    fn record_result(
        &self,
        enrollment_id: &str,
        result: CommandResult,
    ) -> impl Future<Output = StoreResult<ResultOutcome>> + Send {
        let enrollment_id = enrollment_id.to_owned();
        let cache = Arc::clone(&self.inner.commands);
        self.write_in_batch(move |batch| {
            commands::record_result(batch, &cache, &enrollment_id, &result)
        })
    }

    fn command(&self, uuid: &str) -> StoreResult<Option<CommandRecord>> {
        commands::command(&self.read()?, uuid)
    }

    fn deliveries(
        &self,
        uuid: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryRecord>> {
        commands::deliveries(&self.read()?, uuid, after, limit)
    }

    fn delivery_page(
        &self,
        uuid: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<DeliveryPage> {
        let rtx = self.read()?;
        Ok(DeliveryPage {
            deliveries: commands::deliveries(&rtx, uuid, after, limit)?,
            counts: commands::delivery_counts(&rtx, uuid)?,
        })
    }

    fn enrollment_deliveries(
        &self,
        enrollment_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryRecord>> {
        commands::enrollment_deliveries(&self.read()?, enrollment_id, limit)
    }

    fn queued_count(&self, enrollment_id: &str) -> StoreResult<u64> {
        commands::queued_count(&self.read()?, enrollment_id)
    }

    fn enrollments_with_queued(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        commands::enrollments_with_queued(&self.read()?, after, limit)
    }

    /// Chooses what to delete from a read snapshot (so the scan never holds up other writes),
    /// then deletes it in one write that re-checks each candidate.
    async fn prune(&self, policy: RetentionPolicy, now: Timestamp) -> StoreResult<PruneStats> {
        let plan = commands::plan_prune(&self.read()?, &policy, now)?;
        let cache = Arc::clone(&self.inner.commands);
        self.write(move |txn| commands::apply_prune(txn, &cache, &plan, now))
            .await
    }
}

impl ChallengeStore for RedbStore {
    fn put_challenge(&self, rec: ChallengeRecord) -> impl Future<Output = StoreResult<()>> + Send {
        self.write(move |txn| misc::put_challenge(txn, &rec))
    }

    fn challenge(&self, challenge_sha256: &str) -> StoreResult<Option<ChallengeRecord>> {
        misc::challenge(&self.read()?, challenge_sha256)
    }

    fn consume_challenge(
        &self,
        challenge_sha256: &str,
        now: Timestamp,
        issued: Option<IssuedCertRecord>,
    ) -> impl Future<Output = StoreResult<ChallengeOutcome>> + Send {
        let sha = challenge_sha256.to_owned();
        self.write(move |txn| misc::consume_challenge(txn, &sha, now, issued.as_ref()))
    }
}

impl IssuedCertStore for RedbStore {
    fn record_issued(&self, rec: IssuedCertRecord) -> impl Future<Output = StoreResult<()>> + Send {
        self.write(move |txn| misc::record_issued(txn, &rec))
    }

    fn issued(&self, sha256_hex: &str) -> StoreResult<Option<IssuedCertRecord>> {
        misc::issued(&self.read()?, sha256_hex)
    }
}

impl LinkStore for RedbStore {
    fn put_link(&self, rec: LinkRecord) -> impl Future<Output = StoreResult<()>> + Send {
        self.write(move |txn| misc::put_link(txn, &rec))
    }

    fn link_by_token(&self, token_sha256: &str) -> StoreResult<Option<LinkRecord>> {
        misc::link_by_token(&self.read()?, token_sha256)
    }

    fn link(&self, id: &str) -> StoreResult<Option<LinkRecord>> {
        misc::link(&self.read()?, id)
    }

    fn list_links(&self) -> StoreResult<Vec<LinkRecord>> {
        misc::list_links(&self.read()?)
    }

    fn use_link(
        &self,
        token_sha256: &str,
        now: Timestamp,
        challenge: Option<ChallengeRecord>,
    ) -> impl Future<Output = StoreResult<Option<LinkRecord>>> + Send {
        let sha = token_sha256.to_owned();
        self.write(move |txn| misc::use_link(txn, &sha, now, challenge.as_ref()))
    }

    fn revoke_link(
        &self,
        id: &str,
        at: Timestamp,
    ) -> impl Future<Output = StoreResult<bool>> + Send {
        let id = id.to_owned();
        self.write(move |txn| misc::revoke_link(txn, &id, at))
    }
}

impl ApiTokenStore for RedbStore {
    fn put_api_token(&self, rec: ApiTokenRecord) -> impl Future<Output = StoreResult<()>> + Send {
        self.write(move |txn| misc::put_api_token(txn, &rec))
    }

    fn api_token_by_hash(&self, token_sha256: &str) -> StoreResult<Option<ApiTokenRecord>> {
        misc::api_token_by_hash(&self.read()?, token_sha256)
    }

    fn list_api_tokens(&self) -> StoreResult<Vec<ApiTokenRecord>> {
        misc::list_api_tokens(&self.read()?)
    }
}

impl SettingsStore for RedbStore {
    fn setting(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        misc::setting(&self.read()?, key)
    }

    fn put_setting(
        &self,
        key: &str,
        value: Vec<u8>,
    ) -> impl Future<Output = StoreResult<()>> + Send {
        let values = vec![(key.to_owned(), value)];
        self.write(move |txn| misc::put_settings(txn, &values))
    }

    fn put_settings(
        &self,
        values: Vec<(String, Vec<u8>)>,
    ) -> impl Future<Output = StoreResult<()>> + Send {
        self.write(move |txn| misc::put_settings(txn, &values))
    }
}

impl LifecycleStore for RedbStore {
    fn preenrolled(&self, serial: &str) -> StoreResult<Option<PreenrollRecord>> {
        lifecycle::preenrolled(&self.read()?, serial)
    }

    fn list_preenrolled(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<PreenrollRecord>> {
        lifecycle::list_preenrolled(&self.read()?, after, limit)
    }

    fn count_preenrolled(&self) -> StoreResult<u64> {
        lifecycle::count_preenrolled(&self.read()?)
    }

    /// Encodes on the caller's task, then commits records and activity as one write.
    async fn write_preenrolled(
        &self,
        put: Vec<PreenrollRecord>,
        delete: Vec<String>,
        activity: Vec<NewActivity>,
    ) -> StoreResult<()> {
        let records = lifecycle::EncodedPreenroll::encode(put, delete)?;
        let activity = lifecycle::EncodedActivity::new(activity);
        self.write(move |txn| {
            lifecycle::write_preenrolled(txn, &records)?;
            lifecycle::append_activity(txn, &activity)
        })
        .await
    }

    async fn append_activity(&self, entries: Vec<NewActivity>) -> StoreResult<()> {
        let activity = lifecycle::EncodedActivity::new(entries);
        if activity.is_empty() {
            return Ok(());
        }
        self.write(move |txn| lifecycle::append_activity(txn, &activity))
            .await
    }

    fn activity(
        &self,
        query: &ActivityQuery,
        scan_limit: usize,
    ) -> StoreResult<(Vec<ActivityRecord>, Option<u64>)> {
        lifecycle::activity(&self.read()?, query, scan_limit)
    }

    async fn prune_activity(&self, before: Timestamp, limit: usize) -> StoreResult<u64> {
        self.write(move |txn| lifecycle::prune_activity(txn, before, limit))
            .await
    }
}

fn copy_file(src: &Path, dest: &Path) -> StoreResult<u64> {
    use std::io::Write as _;
    let what = format!("cannot copy the database to {}", dest.display());
    let mut from = std::fs::File::open(src).backend(&what)?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .backend(&what)?;
    let n = std::io::copy(&mut from, &mut to).backend(&what)?;
    to.flush().backend(&what)?;
    to.sync_all().backend(&what)?;
    Ok(n)
}

impl BackupStore for RedbStore {
    fn copy_to(&self, dest: &Path) -> impl Future<Output = StoreResult<u64>> + Send {
        RedbStore::copy_to(self, dest)
    }

    fn reseal_all(&self, rewrap: Rewrap) -> impl Future<Output = StoreResult<ResealReport>> + Send {
        RedbStore::reseal_all(self, rewrap)
    }
}

impl UserStore for RedbStore {
    fn user(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        users::user(&self.read()?, username)
    }

    fn list_users(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<UserRecord>> {
        users::list_users(&self.read()?, after, limit)
    }

    fn count_users(&self) -> StoreResult<u64> {
        users::count_users(&self.read()?)
    }

    async fn write_user(&self, change: UserChange, activity: Vec<NewActivity>) -> StoreResult<()> {
        let activity = lifecycle::EncodedActivity::new(activity);
        self.write(move |txn| users::write_user(txn, &change, &activity))
            .await
    }
}

impl ProfileStore for RedbStore {
    fn groups(&self) -> StoreResult<Vec<GroupRecord>> {
        profiles::groups(&self.read()?)
    }

    fn group_members(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> StoreResult<Vec<(String, String)>> {
        profiles::group_members(&self.read()?, after, limit)
    }

    fn profiles(&self) -> StoreResult<Vec<ProfileRecord>> {
        profiles::profiles(&self.read()?)
    }

    fn profile_file(&self, id: &str) -> StoreResult<Option<Vec<u8>>> {
        profiles::profile_file(&self.read()?, id)
    }

    fn device_installs(&self, serial: &str) -> StoreResult<Vec<InstallRecord>> {
        profiles::device_installs(&self.read()?, serial)
    }

    fn profile_installs(
        &self,
        profile_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<InstallRecord>> {
        profiles::profile_installs(&self.read()?, profile_id, after, limit)
    }

    /// Encodes on the caller's task, then commits the whole batch as one write.
    async fn profile_write(&self, batch: ProfileBatch) -> StoreResult<Vec<EnqueueOutcome>> {
        let encoded = profiles::EncodedBatch::encode(batch)?;
        let cache = Arc::clone(&self.inner.commands);
        self.write(move |txn| profiles::write(txn, &cache, &encoded))
            .await
    }

    async fn install_result(&self, result: InstallResult) -> StoreResult<bool> {
        let encoded = profiles::EncodedResult::encode(result)?;
        self.write(move |txn| profiles::install_result(txn, &encoded))
            .await
    }
}

impl AbmStore for RedbStore {
    /// Encodes the batch on the caller's task, then commits it as one write.
    async fn abm_write(&self, batch: AbmBatch) -> StoreResult<()> {
        let encoded = abm::EncodedBatch::encode(batch)?;
        self.write(move |txn| abm::write(txn, &encoded)).await
    }

    fn abm_connection(&self, name: &str) -> StoreResult<Option<AbmConnectionRecord>> {
        abm::connection(&self.read()?, name)
    }

    fn abm_connections(&self) -> StoreResult<Vec<AbmConnectionRecord>> {
        abm::connections(&self.read()?)
    }

    fn abm_device(&self, connection: &str, serial: &str) -> StoreResult<Option<AbmDeviceRecord>> {
        abm::device(&self.read()?, connection, serial)
    }

    fn abm_devices(
        &self,
        connection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<AbmDeviceRecord>> {
        abm::devices(&self.read()?, connection, after, limit)
    }

    fn abm_device_count(&self, connection: &str) -> StoreResult<u64> {
        abm::device_count(&self.read()?, connection)
    }

    fn abm_devices_by_serial(&self, serial: &str) -> StoreResult<Vec<AbmDeviceRecord>> {
        abm::devices_by_serial(&self.read()?, serial)
    }

    fn abm_devices_due(
        &self,
        connection: &str,
        now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<AbmDeviceRecord>> {
        abm::devices_due(&self.read()?, connection, now, limit)
    }

    fn abm_next_due(&self, connection: &str) -> StoreResult<Option<Timestamp>> {
        abm::next_due(&self.read()?, connection)
    }

    fn abm_profile(&self, connection: &str, name: &str) -> StoreResult<Option<AbmProfileRecord>> {
        abm::profile(&self.read()?, connection, name)
    }

    fn abm_profiles(&self, connection: &str) -> StoreResult<Vec<AbmProfileRecord>> {
        abm::profiles(&self.read()?, connection)
    }

    fn abm_rules(&self, connection: &str) -> StoreResult<Vec<AbmRuleRecord>> {
        abm::rules(&self.read()?, connection)
    }
}
