//! Storage for device groups, configuration profiles and each device's install state.

use std::future::Future;

use serde::{Deserialize, Serialize};

use super::{EnqueueOutcome, NewActivity, NewCommand, StoreResult, Timestamp};

/// How a group decides its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GroupKind {
    /// Members are serial numbers added and removed by admins (`group_members`).
    Static,
    /// Members are the devices whose facts match the rule, evaluated whenever it is needed.
    Rule { rule: GroupRule },
}

/// Whether every condition must hold or any one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchMode {
    All,
    Any,
}

/// The device fact a condition looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleField {
    /// The model the device reported (product name such as `iPad13,18`), else ABM's model.
    Model,
    /// The OS version the device reported (`17.4.1`).
    OsVersion,
    /// `ios`, `ipados`, `macos`, `tvos`, `visionos`: from pre-enrollment, else ABM.
    Platform,
    /// `personal`, `corporate` or `selectuser`, from pre-enrollment.
    Ownership,
    /// The name of an ABM connection that lists the device.
    AbmConnection,
    /// The serial number.
    Serial,
}

/// How a condition compares. Text comparisons ignore ASCII case; version comparisons compare
/// dotted numbers (`17.10` is after `17.9`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleOp {
    Is,
    IsNot,
    StartsWith,
    Contains,
    VersionAtLeast,
    VersionBelow,
}

/// One test on one fact. A device without the fact fails every operator except `is_not`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleCondition {
    pub field: RuleField,
    pub op: RuleOp,
    pub value: String,
}

/// The rule of a rule-based group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    #[serde(rename = "match")]
    pub mode: MatchMode,
    pub conditions: Vec<RuleCondition>,
}

/// A device group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: String,
    /// Unique (ignoring case), shown everywhere.
    pub name: String,
    pub description: Option<String>,
    pub kind: GroupKind,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub updated_by: String,
}

/// Where a profile is assigned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignments {
    /// Group ids.
    pub groups: Vec<String>,
    /// Serial numbers assigned directly.
    pub devices: Vec<String>,
}

impl Assignments {
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.devices.is_empty()
    }
}

/// An uploaded configuration profile. The file itself is stored sealed, apart from this
/// record (it may carry Wi-Fi passwords or private keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRecord {
    pub id: String,
    /// The admin's name for it; unique (ignoring case).
    pub name: String,
    /// The top-level `PayloadIdentifier`: what `RemoveProfile` names. Unique.
    pub identifier: String,
    /// Hex SHA-256 of the uploaded file: the version a device has installed.
    pub sha256: String,
    pub size: u64,
    /// What validation found (`profiles::payload::ParsedProfile`), kept for display.
    pub summary: serde_json::Value,
    pub assignments: Assignments,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub updated_by: String,
}

/// Where one profile is on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum InstallState {
    /// `InstallProfile` is queued (or sent and not answered).
    Installing { command_uuid: String },
    /// The device acknowledged the install of `sha256`.
    Installed,
    /// The device refused the install; not retried until the profile changes or an admin
    /// asks for a retry.
    Failed { error: String },
    /// `RemoveProfile` is queued.
    Removing { command_uuid: String },
}

impl InstallState {
    /// The command this state waits for.
    pub fn command_uuid(&self) -> Option<&str> {
        match self {
            InstallState::Installing { command_uuid } | InstallState::Removing { command_uuid } => {
                Some(command_uuid)
            }
            InstallState::Installed | InstallState::Failed { .. } => None,
        }
    }

    /// The name used in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            InstallState::Installing { .. } => "installing",
            InstallState::Installed => "installed",
            InstallState::Failed { .. } => "failed",
            InstallState::Removing { .. } => "removing",
        }
    }
}

/// One profile's state on one device, keyed by (serial, profile id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    pub serial: String,
    pub profile_id: String,
    /// Kept so that the profile can be removed after its record was deleted.
    pub identifier: String,
    /// The version (file SHA-256) being installed or installed.
    pub sha256: String,
    /// The device-channel enrollment the command went to.
    pub enrollment_id: String,
    #[serde(flatten)]
    pub state: InstallState,
    pub updated_at: Timestamp,
}

/// Everything one profile or group change writes, applied in one transaction: records,
/// the commands that bring devices in line and their install states, and the activity.
#[derive(Debug, Default)]
pub struct ProfileBatch {
    pub put_groups: Vec<GroupRecord>,
    pub delete_groups: Vec<String>,
    /// (group id, serial).
    pub add_members: Vec<(String, String)>,
    pub remove_members: Vec<(String, String)>,
    /// A record, with the sealed file when it changed.
    pub put_profiles: Vec<(ProfileRecord, Option<Vec<u8>>)>,
    pub delete_profiles: Vec<String>,
    /// Commands to queue, each to its enrollment ids.
    pub commands: Vec<(NewCommand, Vec<String>)>,
    /// Install states to write. A state waiting for a command whose target was refused at
    /// enqueue (checked out meanwhile) is not written.
    pub put_installs: Vec<InstallRecord>,
    /// (serial, profile id).
    pub delete_installs: Vec<(String, String)>,
    pub activity: Vec<NewActivity>,
}

impl ProfileBatch {
    pub fn is_empty(&self) -> bool {
        self.put_groups.is_empty()
            && self.delete_groups.is_empty()
            && self.add_members.is_empty()
            && self.remove_members.is_empty()
            && self.put_profiles.is_empty()
            && self.delete_profiles.is_empty()
            && self.commands.is_empty()
            && self.put_installs.is_empty()
            && self.delete_installs.is_empty()
            && self.activity.is_empty()
    }
}

/// A device's answer to a profile command, applied only if the install state still waits
/// for that command (a later change may have replaced it).
#[derive(Debug, Clone)]
pub struct InstallResult {
    pub serial: String,
    pub profile_id: String,
    pub command_uuid: String,
    /// The new state; `None` deletes the record (a removal finished).
    pub next: Option<InstallRecord>,
    pub activity: Vec<NewActivity>,
}

/// Groups, profiles and install states.
pub trait ProfileStore: Send + Sync + 'static {
    /// Every group, by id.
    fn groups(&self) -> StoreResult<Vec<GroupRecord>>;
    /// Static members (group id, serial) after `after`, at most `limit`, in key order.
    fn group_members(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> StoreResult<Vec<(String, String)>>;
    /// Every profile record, by id.
    fn profiles(&self) -> StoreResult<Vec<ProfileRecord>>;
    /// A profile's sealed file.
    fn profile_file(&self, id: &str) -> StoreResult<Option<Vec<u8>>>;
    /// A device's install states.
    fn device_installs(&self, serial: &str) -> StoreResult<Vec<InstallRecord>>;
    /// A profile's install states by serial after `after`, at most `limit`.
    fn profile_installs(
        &self,
        profile_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<InstallRecord>>;
    /// Applies the batch in one transaction; answers each command's enqueue outcome.
    fn profile_write(
        &self,
        batch: ProfileBatch,
    ) -> impl Future<Output = StoreResult<Vec<EnqueueOutcome>>> + Send;
    /// Applies a device's answer; false if the state no longer waited for that command
    /// (nothing written then, activity included).
    fn install_result(
        &self,
        result: InstallResult,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
}
