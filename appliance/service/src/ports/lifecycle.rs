//! Storage for the device lifecycle: the devices a site expects (pre-enrollment), appliance
//! users, and the append-only activity log.

use std::future::Future;

use serde::{Deserialize, Serialize};

use super::{StoreResult, Timestamp};
use crate::lifecycle::csv::{Ownership, Platform};

/// Where a pre-enrollment record came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PreenrollSource {
    /// A CSV import (its activity entry names the file and the admin).
    Csv,
    /// Added because an ABM connection listed the serial and "add ABM devices as pre-enrolled"
    /// was on.
    Abm { connection: String },
    /// Created one by one through the API.
    Api,
}

/// A device the site expects, keyed by serial number. The person fields are optional because
/// ABM-sourced records start without them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreenrollRecord {
    /// Upper-case serial number.
    pub serial: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub ownership: Option<Ownership>,
    pub platform: Option<Platform>,
    pub mobile: Option<String>,
    pub device_name: Option<String>,
    pub source: PreenrollSource,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The API token name (or `system`) that created or last replaced it.
    pub updated_by: String,
}

/// How an activity ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivityOutcome {
    Ok,
    Failed,
    /// Refused by policy (a restriction, a missing role).
    Refused,
}

impl ActivityOutcome {
    /// The name used in the API and in exports.
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityOutcome::Ok => "ok",
            ActivityOutcome::Failed => "failed",
            ActivityOutcome::Refused => "refused",
        }
    }
}

/// An activity entry to append; the store assigns its sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewActivity {
    pub at: Timestamp,
    /// Who: `token:NAME` for an admin API token, `device`, `system`, `abm:CONNECTION`.
    pub actor: String,
    /// What, as a dotted type (`preenroll.import`, `enrollment.authenticated`, ...).
    pub kind: String,
    /// What it was about: serial numbers and enrollment ids (each indexed for the device
    /// timeline), or another object's name.
    pub targets: Vec<String>,
    pub outcome: ActivityOutcome,
    /// One sentence for people.
    pub summary: String,
    /// Structured details (counts, outcomes); never secrets.
    #[serde(default)]
    pub detail: Option<serde_json::Value>,
}

/// A stored activity entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityRecord {
    /// Strictly increasing in append order.
    pub seq: u64,
    #[serde(flatten)]
    pub entry: NewActivity,
}

/// Which activity entries to read, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivityQuery {
    /// Only entries with this target (served from the target index).
    pub target: Option<String>,
    /// Only entries by this actor.
    pub actor: Option<String>,
    /// Only entries whose kind is this or starts with `this.`.
    pub kind: Option<String>,
    /// Only entries at or after this time.
    pub since: Option<Timestamp>,
    /// Only entries before this time.
    pub until: Option<Timestamp>,
    /// Only entries with a smaller sequence number (the page cursor).
    pub before_seq: Option<u64>,
    pub limit: usize,
}

impl ActivityQuery {
    /// Whether `rec` passes every filter except `target` and `before_seq` (which pick the
    /// range scanned).
    pub fn matches(&self, rec: &NewActivity) -> bool {
        if let Some(actor) = &self.actor {
            if &rec.actor != actor {
                return false;
            }
        }
        if let Some(kind) = &self.kind {
            let exact = &rec.kind == kind;
            let under = rec.kind.len() > kind.len()
                && rec.kind.starts_with(kind.as_str())
                && rec.kind.as_bytes().get(kind.len()) == Some(&b'.');
            if !exact && !under {
                return false;
            }
        }
        if self.since.is_some_and(|s| rec.at < s) {
            return false;
        }
        if self.until.is_some_and(|u| rec.at >= u) {
            return false;
        }
        true
    }
}

/// Pre-enrollment records and the activity log.
pub trait LifecycleStore: Send + Sync + 'static {
    fn preenrolled(&self, serial: &str) -> StoreResult<Option<PreenrollRecord>>;
    /// Records by serial number after `after`, at most `limit`.
    fn list_preenrolled(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<PreenrollRecord>>;
    fn count_preenrolled(&self) -> StoreResult<u64>;
    /// Inserts or replaces every record in one transaction, and deletes `delete` (serials),
    /// with the activity entries: all of it or nothing.
    fn write_preenrolled(
        &self,
        put: Vec<PreenrollRecord>,
        delete: Vec<String>,
        activity: Vec<NewActivity>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Appends entries in one transaction.
    fn append_activity(
        &self,
        entries: Vec<NewActivity>,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Entries matching `query`, newest first. `scan_limit` bounds how many entries are
    /// looked at (so a filter matching nothing in a huge log still answers quickly); the
    /// second value is the `before_seq` to continue from when the scan stopped early.
    fn activity(
        &self,
        query: &ActivityQuery,
        scan_limit: usize,
    ) -> StoreResult<(Vec<ActivityRecord>, Option<u64>)>;
    /// Deletes entries older than `before`, at most `limit`; returns how many went.
    fn prune_activity(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> impl Future<Output = StoreResult<u64>> + Send;
}
