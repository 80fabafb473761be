//! Ports of the Apple Business Manager integration: what it stores ([`AbmStore`]) and how it
//! reaches Apple ([`AbmConnector`], [`AbmClient`]; implemented by `mdm-abm`).

use std::future::Future;

use mdm_proto::abm::{
    Account, AssignResponse, DefineProfileResponse, Device, DeviceDetails, DevicePage, Profile,
    SerialOutcomes, ServerToken,
};
use serde::{Deserialize, Serialize};

use super::{StoreResult, Timestamp};

// ---------------------------------------------------------------------------------------------
// Reaching Apple

/// Where one ABM connection's API lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbmEndpoint {
    /// `https://mdmenrollment.apple.com` in production; a simulator in tests.
    pub base_url: String,
    /// PEM roots to trust for `base_url`; `None` trusts the system's roots.
    pub ca_pem: Option<String>,
}

/// A failed ABM call, after the client's own retries. [`AbmError::code`] is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbmError {
    /// 403 `T_C_NOT_SIGNED`: a person must accept the new terms in Apple Business Manager.
    #[error("Apple Business Manager terms and conditions have not been accepted: sign in to Apple Business Manager as an administrator and accept them")]
    TermsNotSigned,
    /// 401 at `/session`, or 403 `ACCESS_DENIED`: the server token is invalid, revoked,
    /// expired or was replaced by a newer download.
    #[error("Apple refused the server token ({detail}): download a new token in Apple Business Manager and upload it")]
    AccessDenied { detail: String },
    /// 400 `EXHAUSTED_CURSOR`: the fetch is complete; continue with sync.
    #[error("the device fetch cursor is exhausted")]
    CursorExhausted,
    /// 400 `EXPIRED_CURSOR`: the cursor is older than Apple keeps them; fetch everything again.
    #[error("the device cursor has expired")]
    CursorExpired,
    /// 400 `INVALID_CURSOR`: Apple does not know the cursor; fetch everything again.
    #[error("the device cursor is invalid")]
    CursorInvalid,
    /// 429 still returned after the client's retries.
    #[error("Apple is throttling requests{}", retry_hint(*.retry_after_seconds))]
    Throttled { retry_after_seconds: Option<u64> },
    /// Apple refused the request (4xx) with `code` (e.g. `CONFIG_URL_REQUIRED`).
    #[error("Apple refused the request with HTTP {status} {code}: {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// 5xx still returned after the client's retries.
    #[error("Apple's service answered HTTP {status} {code}")]
    Unavailable { status: u16, code: String },
    /// No usable answer: DNS, connection, TLS, proxy or timeout failures after retries.
    #[error("cannot reach Apple Business Manager: {message}")]
    Transport { message: String },
    /// An answer that does not follow Apple's documented format.
    #[error("unexpected reply from Apple Business Manager: {message}")]
    Protocol { message: String },
    /// The connection's settings are unusable (base URL, CA file).
    #[error("ABM connection settings are invalid: {message}")]
    Config { message: String },
}

fn retry_hint(secs: Option<u64>) -> String {
    secs.map(|s| format!(": retry after {s} s"))
        .unwrap_or_default()
}

impl AbmError {
    /// A stable code for operators, logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            AbmError::TermsNotSigned => "ABM_TERMS_NOT_SIGNED",
            AbmError::AccessDenied { .. } => "ABM_ACCESS_DENIED",
            AbmError::CursorExhausted => "ABM_CURSOR_EXHAUSTED",
            AbmError::CursorExpired => "ABM_CURSOR_EXPIRED",
            AbmError::CursorInvalid => "ABM_CURSOR_INVALID",
            AbmError::Throttled { .. } => "ABM_THROTTLED",
            AbmError::Rejected { .. } => "ABM_REJECTED",
            AbmError::Unavailable { .. } => "ABM_UNAVAILABLE",
            AbmError::Transport { .. } => "ABM_UNREACHABLE",
            AbmError::Protocol { .. } => "ABM_PROTOCOL",
            AbmError::Config { .. } => "ABM_CONFIG",
        }
    }
}

/// One ABM connection's authenticated API. Implementations keep the session (fetching,
/// rotating and renewing it as Apple asks) and retry throttling and transient failures
/// themselves; an error here is final for this call.
pub trait AbmClient: Send + Sync + 'static {
    /// `GET /account`.
    fn account(&self) -> impl Future<Output = Result<Account, AbmError>> + Send;
    /// `POST /server/devices`: one page of the full device list.
    fn fetch_devices(
        &self,
        cursor: Option<String>,
        limit: u32,
    ) -> impl Future<Output = Result<DevicePage, AbmError>> + Send;
    /// `POST /devices/sync`: changes since `cursor`.
    fn sync_devices(
        &self,
        cursor: String,
        limit: u32,
    ) -> impl Future<Output = Result<DevicePage, AbmError>> + Send;
    /// `POST /devices`: current details of up to 1000 serial numbers.
    fn device_details(
        &self,
        serials: Vec<String>,
    ) -> impl Future<Output = Result<DeviceDetails, AbmError>> + Send;
    /// `POST /profile`: define a profile; Apple answers a new `profile_uuid` every time.
    fn define_profile(
        &self,
        profile: Profile,
    ) -> impl Future<Output = Result<DefineProfileResponse, AbmError>> + Send;
    /// `PUT /profile/devices`: assign a profile to up to 1000 serial numbers.
    fn assign_profile(
        &self,
        profile_uuid: String,
        serials: Vec<String>,
    ) -> impl Future<Output = Result<AssignResponse, AbmError>> + Send;
    /// `DELETE /profile/devices`: remove the profile from up to 1000 serial numbers.
    fn remove_profile(
        &self,
        serials: Vec<String>,
    ) -> impl Future<Output = Result<SerialOutcomes, AbmError>> + Send;
    /// `POST /devices/disown`: give devices up for good (they leave the organisation in ABM).
    fn disown_devices(
        &self,
        serials: Vec<String>,
    ) -> impl Future<Output = Result<SerialOutcomes, AbmError>> + Send;
}

/// Builds [`AbmClient`]s. Implemented by `mdm-abm` (proxy, timeouts and User-Agent come from
/// the daemon's configuration).
pub trait AbmConnector: Send + Sync + 'static {
    type Client: AbmClient;
    /// A client for one connection. Does no I/O: the session is fetched on first use.
    fn connect(
        &self,
        endpoint: &AbmEndpoint,
        token: &ServerToken,
    ) -> Result<Self::Client, AbmError>;
}

// ---------------------------------------------------------------------------------------------
// Stored state

/// An RSA key pair of a connection: the certificate the admin uploads to ABM and the private
/// key, held by the keystore, that decrypts server tokens and signs `com.apple.maid` tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbmKeyRecord {
    /// The self-signed certificate, DER.
    #[serde(with = "bytes_b64")]
    pub cert_der: Vec<u8>,
    /// The keystore's blob of the private key (`mdm_keystore::HeldKey::blob`, purpose
    /// `abm-key`): a TPM-resident key's wrapping, or a sealed PKCS#8 key (the software
    /// keystore's form, and that of every key made before keys could live in the TPM; the
    /// keystore accepts both, `mdm_keystore::KeyResidence::of_blob` tells them apart). No
    /// usable key material outside this appliance's keystore.
    #[serde(with = "bytes_b64")]
    pub key_sealed: Vec<u8>,
    pub created_at: Timestamp,
}

/// The server token in force for a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbmTokenRecord {
    /// Identifies the ABM account (not a secret); a renewal must match it unless forced.
    pub consumer_key: String,
    /// The whole [`ServerToken`] as JSON, sealed (purpose `abm-token`).
    #[serde(with = "bytes_b64")]
    pub credentials_sealed: Vec<u8>,
    pub expires_at: Timestamp,
    pub uploaded_at: Timestamp,
    /// How many tokens this connection has had (1 for the first upload).
    pub generation: u32,
}

/// The last failure of a connection's calls to Apple, kept until a call succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbmProblem {
    /// [`AbmError::code`].
    pub code: String,
    pub message: String,
    pub since: Timestamp,
    pub last_at: Timestamp,
}

/// Where a connection's device sync stands. Updated in the same transaction as the device rows
/// a page brought.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbmSyncState {
    /// Seconds between automatic syncs; 0 disables them.
    pub interval_seconds: u64,
    /// The cursor to continue from; `None` starts a full fetch.
    pub cursor: Option<String>,
    /// `true` while a full fetch is under way (the cursor is a fetch cursor); `false` once it
    /// completed (the cursor is a sync cursor).
    pub fetching: bool,
    /// Number of the full fetch under way or last completed; devices seen by it carry it.
    pub generation: u64,
    pub last_full_at: Option<Timestamp>,
    pub last_run: Option<AbmSyncRun>,
}

/// One sync run, as shown to admins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbmSyncRun {
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// `true` when the run fetched everything, `false` for an incremental sync.
    pub full: bool,
    pub pages: u32,
    pub added: u64,
    pub modified: u64,
    pub deleted: u64,
    /// `None` on success; the stable code and message of the failure otherwise.
    pub error: Option<AbmProblem>,
}

/// One ABM connection ("MDM server" in ABM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbmConnectionRecord {
    /// Admin-chosen name, the key (`[A-Za-z0-9._-]{1,64}`).
    pub name: String,
    pub created_at: Timestamp,
    pub endpoint: AbmEndpoint,
    /// The key pair whose certificate was last handed out and has not decrypted a token yet.
    pub staged_key: Option<AbmKeyRecord>,
    /// The key pair that decrypted the token in force.
    pub current_key: Option<AbmKeyRecord>,
    pub token: Option<AbmTokenRecord>,
    /// From `GET /account`, refreshed on token upload and each sync.
    pub account: Option<Account>,
    pub problem: Option<AbmProblem>,
    pub last_ok_at: Option<Timestamp>,
    pub sync: AbmSyncState,
    /// The profile (id) devices get when no rule matches.
    pub default_profile: Option<String>,
}

impl AbmConnectionRecord {
    /// A connection as it is created: no key pair, token, account or sync yet.
    pub fn new(name: impl Into<String>, endpoint: AbmEndpoint, created_at: Timestamp) -> Self {
        AbmConnectionRecord {
            name: name.into(),
            created_at,
            endpoint,
            staged_key: None,
            current_key: None,
            token: None,
            account: None,
            problem: None,
            last_ok_at: None,
            sync: AbmSyncState::default(),
            default_profile: None,
        }
    }
}

/// Our last assignment attempt for a device, with Apple's per-serial answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbmAssignOutcome {
    Success,
    NotAccessible,
    Failed,
    Throttled,
    /// The profile was removed from the device at an admin's request.
    Removed,
}

impl AbmAssignOutcome {
    /// Apple's word for it.
    pub fn as_apple(self) -> &'static str {
        match self {
            AbmAssignOutcome::Success => "SUCCESS",
            AbmAssignOutcome::NotAccessible => "NOT_ACCESSIBLE",
            AbmAssignOutcome::Failed => "FAILED",
            AbmAssignOutcome::Throttled => "THROTTLED",
            AbmAssignOutcome::Removed => "REMOVED",
        }
    }
}

/// The last assignment attempt for a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbmAssignment {
    /// Our profile id and the Apple `profile_uuid` it was defined as.
    pub profile_id: String,
    pub profile_uuid: String,
    pub outcome: AbmAssignOutcome,
    pub at: Timestamp,
    /// Why it failed, in words an admin can act on.
    pub reason: Option<String>,
    /// Consecutive failed attempts.
    pub failures: u32,
}

/// A device ABM lists for a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbmDeviceRecord {
    pub connection: String,
    pub serial: String,
    /// The latest description from Apple (fetch, sync or `POST /devices`).
    pub device: Device,
    pub first_seen_at: Timestamp,
    pub updated_at: Timestamp,
    /// Set when ABM reported the device deleted (released, or moved to another organisation).
    pub removed_at: Option<Timestamp>,
    /// The full fetch that last listed the device ([`AbmSyncState::generation`]).
    pub seen_generation: u64,
    pub assignment: Option<AbmAssignment>,
    /// When the assignment job should look at this device again; indexed.
    pub next_assign_at: Option<Timestamp>,
}

/// An enrollment profile as the appliance defines it with Apple for one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbmProfileRecord {
    /// Admin-chosen name, unique per connection (`[A-Za-z0-9._-]{1,64}`).
    pub name: String,
    pub connection: String,
    /// What the admin asked for, with the appliance's defaults filled in.
    pub profile: Profile,
    /// Apple's uuid for the current definition; `None` until defined.
    pub apple_uuid: Option<String>,
    pub defined_at: Option<Timestamp>,
    pub updated_at: Timestamp,
    /// Whether someone signs in during Setup Assistant (the appliance's own option, not sent
    /// to Apple).
    #[serde(default)]
    pub authentication: EnrollmentAuth,
}

/// Who a device enrolling through an ABM profile is enrolled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentAuth {
    /// Staging: the device enrolls without a user.
    #[default]
    None,
    /// A local account signs in on the `configuration_web_url` page; the enrollment is
    /// linked to it. (Directory and single sign-on providers would be further variants.)
    Local,
}

impl EnrollmentAuth {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollmentAuth::None => "none",
            EnrollmentAuth::Local => "local",
        }
    }
}

/// Which devices a rule covers. Every field set must match; serial lists match on their own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbmRuleMatch {
    /// Explicit serial numbers (checked before any attribute rule).
    #[serde(default)]
    pub serials: Vec<String>,
    /// ABM `device_family` (`iPhone`, `iPad`, `Mac`, `AppleTV`, ...), case-insensitive.
    pub device_family: Option<String>,
    /// A case-insensitive substring of ABM `model` (e.g. `iPad Air`).
    pub model: Option<String>,
    /// ABM `os` (`iOS`, `OSX`, `tvOS`, ...), case-insensitive.
    pub os: Option<String>,
}

/// A rule routing devices of a connection to a profile. Lower `priority` is checked first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbmRuleRecord {
    pub connection: String,
    /// Admin-chosen name, unique per connection.
    pub name: String,
    pub priority: i32,
    pub matcher: AbmRuleMatch,
    /// The profile (name) matching devices get.
    pub profile: String,
    pub created_at: Timestamp,
}

/// Writes committed together in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AbmBatch {
    /// Insert or replace.
    pub connection: Option<AbmConnectionRecord>,
    /// Removes a connection with all its devices, profiles and rules.
    pub delete_connection: Option<String>,
    /// Insert or replace (keyed by connection and serial); the due index follows
    /// `next_assign_at`.
    pub devices: Vec<AbmDeviceRecord>,
    pub profiles: Vec<AbmProfileRecord>,
    /// (connection, profile name).
    pub delete_profiles: Vec<(String, String)>,
    pub rules: Vec<AbmRuleRecord>,
    /// (connection, rule name).
    pub delete_rules: Vec<(String, String)>,
    /// Pre-enrollment records created for synced serials ("add ABM devices as pre-enrolled"),
    /// committed with the devices that caused them. Insert or replace.
    pub preenrolled: Vec<super::PreenrollRecord>,
}

/// ABM connections, their devices, profiles and rules.
pub trait AbmStore: Send + Sync + 'static {
    /// Commits everything in `batch` in one durable transaction, or nothing.
    fn abm_write(&self, batch: AbmBatch) -> impl Future<Output = StoreResult<()>> + Send;
    fn abm_connection(&self, name: &str) -> StoreResult<Option<AbmConnectionRecord>>;
    /// Every connection, by name.
    fn abm_connections(&self) -> StoreResult<Vec<AbmConnectionRecord>>;
    fn abm_device(&self, connection: &str, serial: &str) -> StoreResult<Option<AbmDeviceRecord>>;
    /// Up to `limit` devices of a connection with serial numbers after `after`, by serial.
    fn abm_devices(
        &self,
        connection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<AbmDeviceRecord>>;
    fn abm_device_count(&self, connection: &str) -> StoreResult<u64>;
    /// The records of `serial` in every connection.
    fn abm_devices_by_serial(&self, serial: &str) -> StoreResult<Vec<AbmDeviceRecord>>;
    /// Up to `limit` devices of a connection whose `next_assign_at` is at or before `now`,
    /// earliest first.
    fn abm_devices_due(
        &self,
        connection: &str,
        now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<AbmDeviceRecord>>;
    /// The earliest `next_assign_at` of a connection's devices.
    fn abm_next_due(&self, connection: &str) -> StoreResult<Option<Timestamp>>;
    fn abm_profile(&self, connection: &str, name: &str) -> StoreResult<Option<AbmProfileRecord>>;
    /// A connection's profiles, by name.
    fn abm_profiles(&self, connection: &str) -> StoreResult<Vec<AbmProfileRecord>>;
    /// A connection's rules, by priority then name.
    fn abm_rules(&self, connection: &str) -> StoreResult<Vec<AbmRuleRecord>>;
}

/// Serde for required byte strings inside JSON records: base64 text.
mod bytes_b64 {
    use base64::Engine as _;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        super::super::opt_bytes::deserialize(d)?
            .ok_or_else(|| serde::de::Error::custom("expected base64 text, found null"))
    }
}
