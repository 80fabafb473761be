//! The storage the MDM service needs, declared by the service and implemented elsewhere
//! (`mdm-store` implements every trait here on one redb file).
//!
//! Writes are `async` because an implementation batches concurrent writes into one durable
//! commit (group commit): a caller awaits until its write is on disk. Reads are synchronous and
//! see every write whose future has completed.

use std::collections::HashSet;
use std::future::Future;

use serde::{Deserialize, Serialize};

mod abm;
mod lifecycle;
mod profiles;
mod users;
pub use abm::*;
pub use lifecycle::*;
pub use profiles::*;
pub use users::*;

/// Cuts one page out of `limit + 1` records fetched after a key: the first `limit`, and the
/// key to continue after when the extra record shows that more follow.
pub fn keyset_page<T>(
    mut recs: Vec<T>,
    limit: usize,
    key: impl Fn(&T) -> &str,
) -> (Vec<T>, Option<String>) {
    let more = recs.len() > limit;
    recs.truncate(limit);
    let next = more
        .then(|| recs.last().map(|r| key(r).to_string()))
        .flatten();
    (recs, next)
}

/// Reads a keyset-paged listing to its end: `fetch(after)` returns the page after a key
/// (`None`: from the start), `key` names a record's key. Ends at the first empty page, or
/// after yielding the first error.
pub fn pages<'a, T: 'a>(
    mut fetch: impl FnMut(Option<&str>) -> StoreResult<Vec<T>> + 'a,
    key: impl Fn(&T) -> &str + 'a,
) -> impl Iterator<Item = StoreResult<Vec<T>>> + 'a {
    let mut after: Option<String> = None;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match fetch(after.as_deref()) {
            Ok(page) if page.is_empty() => None,
            Ok(page) => {
                after = page.last().map(|r| key(r).to_string());
                Some(Ok(page))
            }
            Err(e) => {
                done = true;
                Some(Err(e))
            }
        }
    })
}

/// Milliseconds since the Unix epoch (UTC). Stored as a plain integer: cheap to compare and
/// sort, and independent of any date library's serialisation format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp(ms)
    }

    /// This time plus `d` (saturating).
    pub fn plus(self, d: std::time::Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// This time minus `d` (saturating).
    pub fn minus(self, d: std::time::Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(ms))
    }

    /// Parses an RFC 3339 time (any offset).
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let t =
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .ok()
            .map(Timestamp)
    }

    /// RFC 3339 in UTC with millisecond precision, for APIs and logs.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| self.0.to_string())
    }
}

/// Which MDM channel an enrollment is: the device itself or a user on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Channel {
    /// The device channel (`UDID` or `EnrollmentID`).
    Device,
    /// A user channel (`UDID:UserID`), created by a user-channel TokenUpdate.
    User,
}

/// Where an enrollment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrollmentState {
    /// `Authenticate` received: the identity is bound, no push token yet.
    Authenticated,
    /// The first `TokenUpdate` arrived: the device is managed and can be pushed.
    Enrolled,
    /// `CheckOut` received (the MDM profile was removed).
    CheckedOut,
}

/// Facts a device reported about itself at `Authenticate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFacts {
    pub serial_number: Option<String>,
    pub model: Option<String>,
    pub model_name: Option<String>,
    pub product_name: Option<String>,
    pub os_version: Option<String>,
    pub build_version: Option<String>,
    pub device_name: Option<String>,
    pub imei: Option<String>,
    pub meid: Option<String>,
}

/// How a device came to hold its identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrollmentSource {
    /// An admin-created enrollment link.
    Link { link_id: String },
    /// Automated Device Enrollment (MachineInfo presented through Apple).
    Ade {
        udid: String,
        serial: String,
        /// The account that signed in during Setup Assistant, when its enrollment profile
        /// asked for user authentication.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
}

/// APNs addressing for an enrollment, from its latest `TokenUpdate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushTarget {
    /// Device token, hex.
    pub token_hex: String,
    pub push_magic: String,
    pub topic: String,
}

/// One enrollment (device or user channel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentRecord {
    /// `UDID`, `EnrollmentID`, or `UDID:UserID` for a user channel.
    pub id: String,
    /// The device channel's id this enrollment belongs to (equal to `id` for the device).
    pub device_id: String,
    pub user_id: Option<String>,
    pub user_short_name: Option<String>,
    pub channel: Channel,
    pub state: EnrollmentState,
    /// SHA-256 (hex) of the identity certificate bound at `Authenticate`.
    pub identity_sha256: String,
    pub topic: Option<String>,
    pub facts: DeviceFacts,
    pub source: Option<EnrollmentSource>,
    pub push: Option<PushTarget>,
    /// Sealed (see `mdm-keystore`) UnlockToken; never stored in the clear.
    #[serde(default, with = "opt_bytes")]
    pub unlock_token_sealed: Option<Vec<u8>>,
    /// Sealed bootstrap token; never stored in the clear.
    #[serde(default, with = "opt_bytes")]
    pub bootstrap_token_sealed: Option<Vec<u8>>,
    pub awaiting_configuration: bool,
    pub authenticated_at: Timestamp,
    pub enrolled_at: Option<Timestamp>,
    pub token_updated_at: Option<Timestamp>,
    pub checked_out_at: Option<Timestamp>,
    pub last_seen_at: Timestamp,
    /// When the last push to this enrollment was accepted by the push service.
    #[serde(default)]
    pub last_push_at: Option<Timestamp>,
    /// Set when the push service called the token permanently invalid; cleared by the next
    /// TokenUpdate (which brings a new token).
    #[serde(default)]
    pub push_invalid: Option<PushFailure>,
}

/// The part of an enrollment record that every device request is checked against: whether it
/// may still speak, the certificate it is bound to, and what its command results set off.
/// Stores read it without the rest of the record (facts, push target, sealed tokens), which
/// no command round trip needs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EnrollmentBinding {
    pub id: String,
    pub device_id: String,
    pub channel: Channel,
    pub state: EnrollmentState,
    /// SHA-256 (hex) of the identity certificate bound at `Authenticate`.
    pub identity_sha256: String,
    pub awaiting_configuration: bool,
    pub last_seen_at: Timestamp,
}

impl From<&EnrollmentRecord> for EnrollmentBinding {
    fn from(rec: &EnrollmentRecord) -> Self {
        EnrollmentBinding {
            id: rec.id.clone(),
            device_id: rec.device_id.clone(),
            channel: rec.channel,
            state: rec.state,
            identity_sha256: rec.identity_sha256.clone(),
            awaiting_configuration: rec.awaiting_configuration,
            last_seen_at: rec.last_seen_at,
        }
    }
}

/// One page of a command's deliveries and its counts by status over all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPage {
    pub deliveries: Vec<DeliveryRecord>,
    pub counts: Vec<(DeliveryStatus, u64)>,
}

/// Why an enrollment cannot be pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushFailure {
    /// The push service's reason (`Unregistered`, `BadDeviceToken`, ...).
    pub reason: String,
    pub at: Timestamp,
}

/// What happened to a push, for the enrollment's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushRecord {
    /// Accepted by the push service.
    Sent { at: Timestamp },
    /// The token is permanently invalid.
    Invalid { reason: String, at: Timestamp },
}

/// What `Authenticate` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticateRecord {
    pub id: String,
    pub identity_sha256: String,
    pub topic: Option<String>,
    pub facts: DeviceFacts,
    pub source: Option<EnrollmentSource>,
    pub at: Timestamp,
}

/// What a `TokenUpdate` writes. For a user channel the enrollment may not exist yet: it is
/// created from the device channel's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUpdateRecord {
    pub id: String,
    pub device_id: String,
    pub user_id: Option<String>,
    pub user_short_name: Option<String>,
    pub identity_sha256: String,
    pub push: PushTarget,
    pub unlock_token_sealed: Option<Vec<u8>>,
    pub awaiting_configuration: bool,
    pub at: Timestamp,
}

/// The result of a `TokenUpdate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenUpdateOutcome {
    /// This TokenUpdate activated the enrollment (it was not `Enrolled` before).
    pub activated: bool,
}

/// A command as accepted for queueing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewCommand {
    pub uuid: String,
    pub request_type: String,
    /// The full command plist (`{CommandUUID, Command}`) exactly as it will be sent, or, when
    /// `sealed`, that plist sealed by the service (commands can carry profiles with secrets).
    pub payload: Vec<u8>,
    pub sealed: bool,
    pub created_at: Timestamp,
    /// Who asked for it (admin token name, or `system`).
    pub created_by: String,
}

/// The result of an enqueue: which targets got the command and which were refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnqueueOutcome {
    pub queued: Vec<String>,
    /// Unknown or checked-out enrollments; nothing was queued for them.
    pub refused: Vec<String>,
}

/// The next command for an enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedCommand {
    pub uuid: String,
    pub request_type: String,
    /// As enqueued: sealed when `sealed`.
    pub payload: Vec<u8>,
    pub sealed: bool,
}

/// Where one command is for one enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryStatus {
    /// Waiting to be sent (or sent and not answered yet).
    Queued,
    /// The device answered NotNow; it stays queued.
    NotNow,
    Acknowledged,
    Error,
    CommandFormatError,
    /// Dropped without an answer: the enrollment re-authenticated or checked out.
    Canceled,
}

impl DeliveryStatus {
    /// Whether the command is finished for this enrollment.
    pub fn is_final(self) -> bool {
        !matches!(self, DeliveryStatus::Queued | DeliveryStatus::NotNow)
    }
}

/// A device's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandResult {
    pub uuid: String,
    pub status: DeliveryStatus,
    /// The report plist exactly as the device sent it.
    pub raw: Vec<u8>,
    /// ErrorChain items as JSON (empty when none), kept parsed for display.
    pub error_chain_json: Option<String>,
    pub at: Timestamp,
    /// Also move the enrollment's `last_seen_at` to `at`. The service leaves it out when the
    /// device was heard from within the last minute: rewriting the enrollment record with
    /// every report would double the pages each result commits, for a time kept for humans.
    pub touch: bool,
    /// Commands not to offer next, as for [`CommandQueue::next_command`]: those the device
    /// answered NotNow on this connection, this one included when it is NotNow.
    pub skip_next: HashSet<String>,
}

/// What happened when a result was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultOutcome {
    /// Stored (and, for a final status, removed from the queue). The command's type tells
    /// the service which follow-up a result may need without reading the command.
    Recorded {
        request_type: String,
        /// The command to send next, as the result's own write saw the queue: the device's
        /// next request is answered without reading the queue again.
        next: NextCommand,
    },
    /// This enrollment has no such command queued: nothing was written.
    UnknownCommand,
}

/// The command to send after a result, as [`CommandQueue::next_command`] would answer just
/// after the result's write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextCommand {
    Queued(QueuedCommand),
    /// Nothing else is queued (outside `skip_next`).
    Empty,
    /// The store did not look (the queue ahead of the result was long); read it.
    Unread,
}

/// A command and when it was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub uuid: String,
    pub request_type: String,
    /// As enqueued: sealed when `sealed`.
    pub payload: Vec<u8>,
    pub sealed: bool,
    pub created_at: Timestamp,
    pub created_by: String,
}

/// One command's state for one enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub command_uuid: String,
    pub enrollment_id: String,
    pub request_type: String,
    pub status: DeliveryStatus,
    pub queued_at: Timestamp,
    pub updated_at: Timestamp,
    /// The device's report plist, when it answered with a final status.
    pub result: Option<Vec<u8>>,
    pub error_chain_json: Option<String>,
}

/// Bounds on command history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Finished deliveries older than this are deleted.
    pub max_age: std::time::Duration,
    /// At most this many finished deliveries are kept per enrollment (oldest go first).
    pub max_finished_per_enrollment: usize,
    /// Work done per call, so that pruning never holds the write lock for long.
    pub batch_limit: usize,
}

/// What a prune pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneStats {
    pub deliveries_removed: u64,
    pub commands_removed: u64,
    pub challenges_removed: u64,
    /// More remains to prune: call again.
    pub more: bool,
}

/// A SCEP challenge issued inside one enrollment profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeRecord {
    /// SHA-256 (hex) of the challenge string; the string itself is not stored.
    pub challenge_sha256: String,
    /// The PayloadUUID of the profile the challenge was put in.
    pub profile_uuid: String,
    pub source: EnrollmentSource,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub used_at: Option<Timestamp>,
}

/// The result of consuming a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengeOutcome {
    /// Valid; it is now marked used.
    Accepted(ChallengeRecord),
    NotFound,
    AlreadyUsed(ChallengeRecord),
    Expired(ChallengeRecord),
}

/// A certificate the appliance CA issued to a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCertRecord {
    /// SHA-256 (hex) of the certificate DER.
    pub sha256: String,
    pub serial_hex: String,
    pub subject: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub issued_at: Timestamp,
    /// For a SCEP renewal: the certificate that signed the renewal request.
    pub renewed_from: Option<String>,
    /// What the challenge that authorised it was issued for.
    pub source: Option<EnrollmentSource>,
}

/// An admin-created enrollment link. Only a hash of its token is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub id: String,
    pub token_sha256: String,
    pub label: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    /// How many profiles were served through it.
    pub uses: u64,
    /// `None` = unlimited within its lifetime.
    pub max_uses: Option<u64>,
    pub created_by: String,
}

/// Roles of admin API tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Everything.
    Admin,
    /// Day-to-day device work: commands, links; no settings or tokens.
    Operator,
    /// Read-only.
    Auditor,
}

/// An admin API token. Only a hash of the secret is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub token_sha256: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// A failure of the storage backend. Messages are for operators; they never include secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be read or written (I/O, disk full, corruption).
    #[error("storage failure: {0}")]
    Backend(String),
    /// A record could not be decoded: the database holds data this version does not understand.
    #[error("stored record is unreadable: {0}")]
    Corrupt(String),
    /// The write conflicts with existing data.
    #[error("{0}")]
    Conflict(String),
    /// The store is shutting down and accepts no more writes.
    #[error("the store is closed")]
    Closed,
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// Enrollments and their identities.
pub trait EnrollmentStore: Send + Sync + 'static {
    /// Insert or replace the enrollment as `Authenticated` and cancel everything queued for it
    /// (and for its user channels): a device that authenticates again is a new enrollment.
    fn authenticate(&self, rec: AuthenticateRecord)
        -> impl Future<Output = StoreResult<()>> + Send;
    /// Store push addressing and activate the enrollment. `Ok(None)` if the device channel
    /// (`rec.device_id`) is not known.
    fn token_update(
        &self,
        rec: TokenUpdateRecord,
    ) -> impl Future<Output = StoreResult<Option<TokenUpdateOutcome>>> + Send;
    /// Mark checked out (and its user channels too, for a device channel) and cancel queued
    /// commands. Returns false if unknown.
    fn check_out(&self, id: &str, at: Timestamp) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Replace the sealed bootstrap token. Returns false if unknown.
    fn set_bootstrap_token(
        &self,
        id: &str,
        sealed: Option<Vec<u8>>,
        at: Timestamp,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Move the enrollment (and its user channels) to a renewed identity certificate, if it is
    /// still bound to `from_sha256`. Returns false (nothing written) otherwise.
    fn rebind_identity(
        &self,
        id: &str,
        from_sha256: &str,
        to_sha256: &str,
        at: Timestamp,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Record that the enrollment was heard from.
    fn touch(&self, id: &str, at: Timestamp) -> impl Future<Output = StoreResult<()>> + Send;
    /// Clears `awaiting_configuration` (the device acknowledged DeviceConfigured). `false`
    /// if there is no such enrollment.
    fn set_configured(
        &self,
        id: &str,
        at: Timestamp,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    fn enrollment(&self, id: &str) -> StoreResult<Option<EnrollmentRecord>>;
    /// The binding fields of an enrollment, as `enrollment` would return them.
    fn enrollment_binding(&self, id: &str) -> StoreResult<Option<EnrollmentBinding>>;
    /// A number that moves, once the write is committed and before the writer is answered,
    /// whenever enrollment `id`'s record is written. A binding read after this returned `v`
    /// is current for as long as it still returns `v`. It may also move when nothing changed.
    fn binding_version(&self, id: &str) -> u64;
    /// Enrollments in id order after `after`, at most `limit`.
    fn list_enrollments(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<EnrollmentRecord>>;
    fn count_enrollments(&self) -> StoreResult<u64>;
    /// The device-channel enrollments whose reported serial number is `serial` (usually one;
    /// more when a device was wiped and enrolled again under a new id), by id.
    fn enrollments_by_serial(&self, serial: &str) -> StoreResult<Vec<EnrollmentRecord>>;
    /// Record push results, all in one transaction. Unknown ids are skipped.
    fn record_pushes(
        &self,
        records: Vec<(String, PushRecord)>,
    ) -> impl Future<Output = StoreResult<()>> + Send;
}

/// The per-enrollment FIFO command queue and command results.
pub trait CommandQueue: Send + Sync + 'static {
    /// Store the command and queue it for each known, not checked-out target, in one
    /// transaction.
    fn enqueue(
        &self,
        cmd: NewCommand,
        targets: Vec<String>,
    ) -> impl Future<Output = StoreResult<EnqueueOutcome>> + Send;
    /// The oldest queued command for `enrollment_id` whose uuid is not in `skip`.
    fn next_command(
        &self,
        enrollment_id: &str,
        skip: &HashSet<String>,
    ) -> StoreResult<Option<QueuedCommand>>;
    /// Record a device's answer (and, with [`CommandResult::touch`], `touch` the enrollment,
    /// whether or not the command was queued for it). A final status removes the command from
    /// the queue; NotNow keeps it.
    fn record_result(
        &self,
        enrollment_id: &str,
        result: CommandResult,
    ) -> impl Future<Output = StoreResult<ResultOutcome>> + Send;
    fn command(&self, uuid: &str) -> StoreResult<Option<CommandRecord>>;
    /// One command's deliveries in enrollment-id order: those after `after`, at most `limit`.
    fn deliveries(
        &self,
        uuid: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryRecord>>;
    /// One page of a command's deliveries, as `deliveries` returns it, with how many
    /// deliveries the command has in each status (statuses with none left out), both read
    /// from the same snapshot so that the page and the counts agree.
    fn delivery_page(
        &self,
        uuid: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<DeliveryPage>;
    /// An enrollment's deliveries, newest first, at most `limit`.
    fn enrollment_deliveries(
        &self,
        enrollment_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryRecord>>;
    /// How many commands wait for this enrollment.
    fn queued_count(&self, enrollment_id: &str) -> StoreResult<u64>;
    /// Enrollments with at least one queued command, in id order after `after`, at most
    /// `limit`: the pushes still owed, derivable after a restart.
    fn enrollments_with_queued(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>>;
    /// Delete old finished deliveries, commands with none left, and expired challenges.
    fn prune(
        &self,
        policy: RetentionPolicy,
        now: Timestamp,
    ) -> impl Future<Output = StoreResult<PruneStats>> + Send;
}

/// One-time SCEP challenges.
pub trait ChallengeStore: Send + Sync + 'static {
    fn put_challenge(&self, rec: ChallengeRecord) -> impl Future<Output = StoreResult<()>> + Send;
    fn challenge(&self, challenge_sha256: &str) -> StoreResult<Option<ChallengeRecord>>;
    /// Atomically check and mark used; when accepted, record `issued` (the certificate the
    /// challenge paid for) in the same transaction.
    fn consume_challenge(
        &self,
        challenge_sha256: &str,
        now: Timestamp,
        issued: Option<IssuedCertRecord>,
    ) -> impl Future<Output = StoreResult<ChallengeOutcome>> + Send;
}

/// Certificates the appliance CA issued.
pub trait IssuedCertStore: Send + Sync + 'static {
    fn record_issued(&self, rec: IssuedCertRecord) -> impl Future<Output = StoreResult<()>> + Send;
    fn issued(&self, sha256_hex: &str) -> StoreResult<Option<IssuedCertRecord>>;
}

/// Admin-created enrollment links.
pub trait LinkStore: Send + Sync + 'static {
    fn put_link(&self, rec: LinkRecord) -> impl Future<Output = StoreResult<()>> + Send;
    fn link_by_token(&self, token_sha256: &str) -> StoreResult<Option<LinkRecord>>;
    fn link(&self, id: &str) -> StoreResult<Option<LinkRecord>>;
    fn list_links(&self) -> StoreResult<Vec<LinkRecord>>;
    /// Count one use if the link is usable at `now` (not revoked, not expired, under max_uses)
    /// and, in the same transaction, store the challenge of the profile served for it.
    /// Returns the updated record, or `None` (nothing written) if unusable or unknown.
    fn use_link(
        &self,
        token_sha256: &str,
        now: Timestamp,
        challenge: Option<ChallengeRecord>,
    ) -> impl Future<Output = StoreResult<Option<LinkRecord>>> + Send;
    /// Returns false if unknown.
    fn revoke_link(
        &self,
        id: &str,
        at: Timestamp,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
}

/// Admin API tokens.
pub trait ApiTokenStore: Send + Sync + 'static {
    fn put_api_token(&self, rec: ApiTokenRecord) -> impl Future<Output = StoreResult<()>> + Send;
    fn api_token_by_hash(&self, token_sha256: &str) -> StoreResult<Option<ApiTokenRecord>>;
    fn list_api_tokens(&self) -> StoreResult<Vec<ApiTokenRecord>>;
}

/// Small named values: appliance certificates, sealed keys, the push topic, settings.
pub trait SettingsStore: Send + Sync + 'static {
    fn setting(&self, key: &str) -> StoreResult<Option<Vec<u8>>>;
    fn put_setting(
        &self,
        key: &str,
        value: Vec<u8>,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Write several settings atomically (e.g. a certificate and its sealed key).
    fn put_settings(
        &self,
        values: Vec<(String, Vec<u8>)>,
    ) -> impl Future<Output = StoreResult<()>> + Send;
}

/// Whole-file maintenance: a consistent copy for backups, and re-sealing every stored secret
/// for a data-key rotation.
pub trait BackupStore: Send + Sync + 'static {
    /// Writes the store's file as of the last commit to `dest` (which must not exist).
    /// Returns the bytes written.
    fn copy_to(&self, dest: &std::path::Path) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Data-key rotation: passes every sealed blob stored anywhere in the file to `rewrap` and
    /// writes back what it re-seals, in batches of ordinary writes. A failure of `rewrap`
    /// stops the pass with [`StoreError::Corrupt`] naming the table and key; what was written
    /// before stays written (the keystore still opens both).
    fn reseal_all(&self, rewrap: Rewrap) -> impl Future<Output = StoreResult<ResealReport>> + Send;
}

/// Re-seals one stored blob (its bytes) under the keystore's current data key; `Ok(None)` when
/// it already is. The error is a sentence for the operator.
pub type Rewrap =
    std::sync::Arc<dyn Fn(&[u8]) -> Result<Option<Vec<u8>>, String> + Send + Sync + 'static>;

/// What a [`BackupStore::reseal_all`] pass found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResealReport {
    /// Records read.
    pub records: u64,
    /// Sealed blobs found in them.
    pub blobs: u64,
    /// Blobs re-sealed (the others already were under the current key).
    pub resealed: u64,
}

/// Everything the MDM service needs from storage.
pub trait Store:
    EnrollmentStore
    + CommandQueue
    + ChallengeStore
    + IssuedCertStore
    + LinkStore
    + ApiTokenStore
    + SettingsStore
    + AbmStore
    + LifecycleStore
    + ProfileStore
    + UserStore
    + BackupStore
{
}

impl<T> Store for T where
    T: EnrollmentStore
        + CommandQueue
        + ChallengeStore
        + IssuedCertStore
        + LinkStore
        + ApiTokenStore
        + SettingsStore
        + AbmStore
        + LifecycleStore
        + ProfileStore
        + UserStore
        + BackupStore
{
}

/// One MDM push: wake the device (or user channel) behind this enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMessage {
    pub enrollment_id: String,
    /// Device token, hex (as stored from TokenUpdate).
    pub token_hex: String,
    pub push_magic: String,
    /// The topic the device registered with (the push certificate's UID).
    pub topic: String,
}

/// The outcome of one push after the provider's own retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Accepted by the push service (`apns-id` when it gave one).
    Sent { apns_id: Option<String> },
    /// The token will never work again (Unregistered, BadDeviceToken, DeviceTokenNotForTopic,
    /// ...): stop pushing it until the device sends a new TokenUpdate.
    InvalidToken { status: u16, reason: String },
    /// The push certificate or topic is refused (BadCertificate, BadTopic, TopicDisallowed,
    /// Forbidden, ExpiredProviderToken): nothing can be pushed until an admin acts.
    CertificateRejected { status: u16, reason: String },
    /// Still failing after retries (429, 5xx, connection errors) or refused fast while the
    /// circuit breaker is open: try again later.
    Failed { reason: String },
}

/// The certificate and key a push provider authenticates with.
pub struct PushIdentity {
    /// The push certificate (DER), then any chain.
    pub cert_chain_der: Vec<Vec<u8>>,
    /// PKCS#8 private key.
    pub key_pkcs8_der: zeroize::Zeroizing<Vec<u8>>,
    /// The topic (the certificate's subject UID).
    pub topic: String,
}

impl std::fmt::Debug for PushIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushIdentity")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// State of a push provider's circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum CircuitState {
    /// Pushing normally.
    Closed,
    /// Too many consecutive call-level failures: pushes fail fast until `retry_at`.
    Open {
        since: Timestamp,
        retry_at: Timestamp,
        last_error: String,
    },
    /// Trying again with a probe after being open.
    HalfOpen,
}

/// What a push provider reports about itself (status API, metrics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushProviderStatus {
    pub configured: bool,
    pub circuit: CircuitState,
    pub sent: u64,
    pub invalid_tokens: u64,
    pub failed: u64,
    pub last_error: Option<String>,
}

/// Delivers MDM pushes (APNs in production). Implemented by `mdm-apns`.
pub trait PushProvider: Send + Sync + 'static {
    /// Use this identity from now on (`None`: no certificate, every push fails fast).
    fn set_identity(&self, identity: Option<PushIdentity>) -> Result<(), String>;
    /// Push every message, concurrently where the transport allows; one outcome per message,
    /// in the same order.
    fn push(&self, messages: Vec<PushMessage>) -> impl Future<Output = Vec<PushOutcome>> + Send;
    fn status(&self) -> PushProviderStatus;
}

/// Byte fields of records as base64 strings. Serde's default, an array of numbers, costs a
/// number parse per byte every time an enrollment is read (on every device request). Reading
/// also accepts the array form, which earlier records used.
pub(crate) mod opt_bytes {
    use base64::Engine as _;
    use serde::de::{self, Deserializer, SeqAccess, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => {
                s.serialize_some(&base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            None => s.serialize_none(),
        }
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Option<Vec<u8>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("base64 text, an array of bytes, or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(BytesVisitor)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .map(Some)
                .map_err(E::custom)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(Some(out))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        d.deserialize_option(BytesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> EnrollmentRecord {
        EnrollmentRecord {
            id: "U".into(),
            device_id: "U".into(),
            user_id: None,
            user_short_name: None,
            channel: Channel::Device,
            state: EnrollmentState::Enrolled,
            identity_sha256: "h".into(),
            topic: None,
            facts: DeviceFacts::default(),
            source: None,
            push: None,
            unlock_token_sealed: Some(vec![0, 1, 2, 250, 255]),
            bootstrap_token_sealed: None,
            awaiting_configuration: false,
            authenticated_at: Timestamp(1),
            enrolled_at: None,
            token_updated_at: None,
            checked_out_at: None,
            last_seen_at: Timestamp(1),
            last_push_at: None,
            push_invalid: None,
        }
    }

    #[test]
    fn sealed_bytes_are_base64_and_old_arrays_still_read() {
        let json = serde_json::to_value(record()).unwrap();
        assert_eq!(json["unlock_token_sealed"], "AAEC+v8=");
        assert!(json["bootstrap_token_sealed"].is_null());
        let back: EnrollmentRecord = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, record());

        let mut old = json;
        old["unlock_token_sealed"] = serde_json::json!([0, 1, 2, 250, 255]);
        old.as_object_mut()
            .unwrap()
            .remove("bootstrap_token_sealed");
        let back: EnrollmentRecord = serde_json::from_value(old).unwrap();
        assert_eq!(back, record());

        let mut bad = serde_json::to_value(record()).unwrap();
        bad["unlock_token_sealed"] = serde_json::json!("not base64!");
        assert!(serde_json::from_value::<EnrollmentRecord>(bad).is_err());
    }
}
