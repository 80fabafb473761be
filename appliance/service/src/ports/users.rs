//! Storage for the appliance's local user accounts (people who sign in during Setup
//! Assistant when an enrollment profile asks for user authentication).

use std::future::Future;

use serde::{Deserialize, Serialize};

use super::{NewActivity, StoreResult, Timestamp};

/// Where an account's credentials are checked. Only local accounts exist today; directory
/// (LDAP) and single sign-on (OIDC) accounts would add variants, with their own record of the
/// remote identity instead of a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountSource {
    /// Password checked against the Argon2id hash held by the appliance.
    #[default]
    Local,
}

/// A user account. The password hash is sealed by the keystore (`password_sealed`), so the
/// redb file alone does not give an attacker hashes to crack offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Lowercase sign-in name (`[a-z0-9._@-]`, 1–64 characters); the key.
    pub username: String,
    pub full_name: String,
    pub email: Option<String>,
    #[serde(default)]
    pub source: AccountSource,
    /// The Argon2id PHC string, sealed (purpose `user-password`).
    #[serde(with = "super::opt_bytes", default)]
    pub password_sealed: Option<Vec<u8>>,
    pub disabled: bool,
    /// Failed sign-ins since the last successful one (or unlock).
    pub failed_sign_ins: u32,
    /// Sign-ins are refused until then (too many failures in a row).
    pub locked_until: Option<Timestamp>,
    pub last_sign_in_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub created_by: String,
}

/// One change to the accounts table.
#[derive(Debug, Clone)]
pub enum UserChange {
    /// Insert or replace.
    Put(UserRecord),
    /// Remove; nothing happens if it does not exist.
    Delete(String),
}

/// Local user accounts.
pub trait UserStore: Send + Sync + 'static {
    fn user(&self, username: &str) -> StoreResult<Option<UserRecord>>;
    /// Accounts in username order, after `after` (exclusive), at most `limit`.
    fn list_users(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<UserRecord>>;
    fn count_users(&self) -> StoreResult<u64>;
    /// Applies the change and appends the activity entries in one transaction.
    fn write_user(
        &self,
        change: UserChange,
        activity: Vec<NewActivity>,
    ) -> impl Future<Output = StoreResult<()>> + Send;
}
