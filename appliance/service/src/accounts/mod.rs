//! Local user accounts: the people who sign in during Setup Assistant when an ABM enrollment
//! profile asks for user authentication, so that the enrolled device is linked to them.
//!
//! Passwords are hashed with Argon2id ([`password`]) and the hash is sealed by the keystore
//! before it is stored. Five failed sign-ins in a row lock an account for 15 minutes; an admin
//! can unlock it sooner. Sign-ins of unknown accounts cost the same hashing work as real ones,
//! so their timing does not tell which names exist.
//!
//! Only local accounts exist. A directory (LDAP) or single sign-on (OIDC) source would be
//! another [`AccountSource`] checked in [`MdmService::sign_in`] and another
//! [`EnrollmentAuth`](crate::ports::EnrollmentAuth) variant (see `docs/design/user-auth.md`).

pub mod password;
pub mod setup;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{ErrorKind, ServiceError, ServiceResult};
use crate::lifecycle::activity::entry;
use crate::ports::{
    AccountSource, ActivityOutcome, NewActivity, Store, Timestamp, UserChange, UserRecord,
};
use crate::MdmService;

pub use password::Password;

/// The keystore purpose of sealed password hashes.
const PASSWORD_PURPOSE: &str = "user-password";
/// Failed sign-ins in a row that lock an account.
pub const MAX_FAILURES: u32 = 5;
/// How long a locked account refuses sign-ins.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Most accounts one list page returns.
pub const MAX_PAGE: usize = 1000;

/// What the API shows of an account (never the password hash).
#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    pub username: String,
    pub full_name: String,
    pub email: Option<String>,
    pub source: AccountSource,
    pub disabled: bool,
    /// Whether sign-ins are refused right now after too many failures.
    pub locked: bool,
    #[serde(serialize_with = "crate::lifecycle::rfc3339::opt")]
    pub locked_until: Option<Timestamp>,
    pub failed_sign_ins: u32,
    #[serde(serialize_with = "crate::lifecycle::rfc3339::opt")]
    pub last_sign_in_at: Option<Timestamp>,
    #[serde(serialize_with = "crate::lifecycle::rfc3339::ser")]
    pub created_at: Timestamp,
    #[serde(serialize_with = "crate::lifecycle::rfc3339::ser")]
    pub updated_at: Timestamp,
    pub created_by: String,
}

impl UserView {
    fn new(r: &UserRecord, now: Timestamp) -> Self {
        let locked_until = r.locked_until.filter(|t| *t > now);
        UserView {
            username: r.username.clone(),
            full_name: r.full_name.clone(),
            email: r.email.clone(),
            source: r.source,
            disabled: r.disabled,
            locked: locked_until.is_some(),
            locked_until,
            failed_sign_ins: r.failed_sign_ins,
            last_sign_in_at: r.last_sign_in_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
            created_by: r.created_by.clone(),
        }
    }
}

/// A page of accounts.
#[derive(Debug, Clone, Serialize)]
pub struct UserPage {
    pub items: Vec<UserView>,
    /// Pass as `after` for the next page; `None` on the last.
    pub next: Option<String>,
    pub total: u64,
}

/// A new account, as an admin sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub username: String,
    pub full_name: String,
    #[serde(default)]
    pub email: Option<String>,
    pub password: Password,
}

/// Changes to an account; absent fields stay as they are. An empty `email` removes it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    #[serde(default)]
    pub full_name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub password: Option<Password>,
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// Where a sign-in comes from, for the activity log.
#[derive(Debug, Clone, Default)]
pub struct SignInContext {
    /// What the user is signing in for, e.g. `Setup Assistant`.
    pub purpose: &'static str,
    /// The device's serial number and UDID, when signing in on a device.
    pub device: Vec<String>,
}

/// Why a sign-in did not succeed. Deliberately coarse: the page must not tell a guesser
/// whether a name exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInFailure {
    /// Unknown account or wrong password.
    Invalid,
    /// Too many failures: refused until then.
    Locked { until: Timestamp },
    /// The password was right, but an admin disabled the account.
    Disabled,
}

/// Canonical form of a username: trimmed, lowercase. Returns `None` if it cannot be one.
pub fn normalize_username(s: &str) -> Option<String> {
    let name = s.trim().to_ascii_lowercase();
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    ok.then_some(name)
}

fn invalid(field: &str, why: impl std::fmt::Display) -> ServiceError {
    ServiceError::bad_request("USER_INVALID", format!("{field}: {why}"))
}

fn not_found(name: &str) -> ServiceError {
    ServiceError::not_found("USER_NOT_FOUND", format!("no user account named {name:?}"))
}

fn check_full_name(s: &str) -> ServiceResult<String> {
    let s = s.trim();
    if s.is_empty() {
        return Err(invalid("full_name", "is required"));
    }
    if s.chars().count() > 128 || s.chars().any(char::is_control) {
        return Err(invalid(
            "full_name",
            "must be at most 128 characters, without control characters",
        ));
    }
    Ok(s.to_string())
}

fn check_email(s: &str) -> ServiceResult<Option<String>> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let ok = s.len() <= 254
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && s.split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
    if !ok {
        return Err(invalid(
            "email",
            format!("{s:?} is not an email address (name@example.org)"),
        ));
    }
    Ok(Some(s.to_string()))
}

fn user_activity(
    by: &str,
    kind: &str,
    username: &str,
    outcome: ActivityOutcome,
    summary: String,
    detail: Option<serde_json::Value>,
) -> NewActivity {
    entry(
        &crate::lifecycle::actor_for(by),
        kind,
        vec![format!("user:{username}")],
        outcome,
        summary,
        detail,
    )
}

impl<S: Store> MdmService<S> {
    /// One account.
    pub fn user(&self, username: &str) -> ServiceResult<UserView> {
        let name = normalize_username(username).ok_or_else(|| not_found(username.trim()))?;
        let rec = self.store().user(&name)?.ok_or_else(|| not_found(&name))?;
        Ok(UserView::new(&rec, Timestamp::now()))
    }

    /// Accounts in username order.
    pub fn users(&self, after: Option<&str>, limit: usize) -> ServiceResult<UserPage> {
        let limit = limit.clamp(1, MAX_PAGE);
        let after = after.map(|a| a.trim().to_ascii_lowercase());
        let (recs, next) = crate::ports::keyset_page(
            self.store().list_users(after.as_deref(), limit + 1)?,
            limit,
            |r| &r.username,
        );
        let now = Timestamp::now();
        Ok(UserPage {
            items: recs.iter().map(|r| UserView::new(r, now)).collect(),
            next,
            total: self.store().count_users()?,
        })
    }

    /// Creates a local account.
    pub async fn create_user(&self, new: NewUser, by: &str) -> ServiceResult<UserView> {
        let username = normalize_username(&new.username).ok_or_else(|| {
            invalid(
                "username",
                "must be 1 to 64 characters: letters, digits and . _ @ -, starting with a letter or digit",
            )
        })?;
        let full_name = check_full_name(&new.full_name)?;
        let email = match &new.email {
            Some(e) => check_email(e)?,
            None => None,
        };
        new.password.check_policy(&username)?;
        let phc = password::hash(self.accounts(), new.password).await?;
        let sealed = self.seal(PASSWORD_PURPOSE, phc.as_bytes())?;
        let _guard = self.accounts().write_lock.lock().await;
        if self.store().user(&username)?.is_some() {
            return Err(ServiceError::conflict(
                "USER_EXISTS",
                format!("a user account named {username:?} already exists"),
            ));
        }
        let now = Timestamp::now();
        let rec = UserRecord {
            username: username.clone(),
            full_name,
            email,
            source: AccountSource::Local,
            password_sealed: Some(sealed),
            disabled: false,
            failed_sign_ins: 0,
            locked_until: None,
            last_sign_in_at: None,
            created_at: now,
            updated_at: now,
            created_by: by.to_string(),
        };
        let view = UserView::new(&rec, now);
        let log = user_activity(
            by,
            "user.created",
            &username,
            ActivityOutcome::Ok,
            format!("user account {username} created"),
            None,
        );
        self.store()
            .write_user(UserChange::Put(rec), vec![log])
            .await?;
        info!(username, by, "user account created");
        Ok(view)
    }

    /// Changes an account's name, email, password or disabled flag.
    pub async fn update_user(
        &self,
        username: &str,
        patch: UserPatch,
        by: &str,
    ) -> ServiceResult<UserView> {
        let name = normalize_username(username).ok_or_else(|| not_found(username.trim()))?;
        let full_name = patch
            .full_name
            .as_deref()
            .map(check_full_name)
            .transpose()?;
        let email = patch.email.as_deref().map(check_email).transpose()?;
        let sealed = match patch.password {
            Some(p) => {
                p.check_policy(&name)?;
                let phc = password::hash(self.accounts(), p).await?;
                Some(self.seal(PASSWORD_PURPOSE, phc.as_bytes())?)
            }
            None => None,
        };
        let _guard = self.accounts().write_lock.lock().await;
        let mut rec = self.store().user(&name)?.ok_or_else(|| not_found(&name))?;
        let mut changed = Vec::new();
        if let Some(f) = full_name {
            rec.full_name = f;
            changed.push("full_name");
        }
        if let Some(e) = email {
            rec.email = e;
            changed.push("email");
        }
        if let Some(s) = sealed {
            rec.password_sealed = Some(s);
            // A new password is a fresh start.
            rec.failed_sign_ins = 0;
            rec.locked_until = None;
            changed.push("password");
        }
        if let Some(d) = patch.disabled {
            rec.disabled = d;
            changed.push("disabled");
        }
        let now = Timestamp::now();
        rec.updated_at = now;
        let view = UserView::new(&rec, now);
        let log = user_activity(
            by,
            "user.updated",
            &name,
            ActivityOutcome::Ok,
            format!("user account {name} changed ({})", changed.join(", ")),
            Some(serde_json::json!({ "changed": changed })),
        );
        self.store()
            .write_user(UserChange::Put(rec), vec![log])
            .await?;
        info!(username = name, by, ?changed, "user account changed");
        Ok(view)
    }

    /// Deletes an account. Enrollments linked to it keep the name they were enrolled for.
    pub async fn delete_user(&self, username: &str, by: &str) -> ServiceResult<()> {
        let name = normalize_username(username).ok_or_else(|| not_found(username.trim()))?;
        let _guard = self.accounts().write_lock.lock().await;
        self.store().user(&name)?.ok_or_else(|| not_found(&name))?;
        let log = user_activity(
            by,
            "user.deleted",
            &name,
            ActivityOutcome::Ok,
            format!("user account {name} deleted"),
            None,
        );
        self.store()
            .write_user(UserChange::Delete(name.clone()), vec![log])
            .await?;
        info!(username = name, by, "user account deleted");
        Ok(())
    }

    /// Lifts a lockout and clears the failure count.
    pub async fn unlock_user(&self, username: &str, by: &str) -> ServiceResult<UserView> {
        let name = normalize_username(username).ok_or_else(|| not_found(username.trim()))?;
        let _guard = self.accounts().write_lock.lock().await;
        let mut rec = self.store().user(&name)?.ok_or_else(|| not_found(&name))?;
        let now = Timestamp::now();
        rec.failed_sign_ins = 0;
        rec.locked_until = None;
        rec.updated_at = now;
        let view = UserView::new(&rec, now);
        let log = user_activity(
            by,
            "user.unlocked",
            &name,
            ActivityOutcome::Ok,
            format!("user account {name} unlocked"),
            None,
        );
        self.store()
            .write_user(UserChange::Put(rec), vec![log])
            .await?;
        info!(username = name, by, "user account unlocked");
        Ok(view)
    }

    /// Checks a username and password. Every outcome is in the activity log as
    /// `auth.sign_in` (a lockout also as `auth.locked`); the typed name of an unknown account
    /// is not recorded (people type passwords into name fields).
    pub async fn sign_in(
        &self,
        username: &str,
        pass: Password,
        ctx: &SignInContext,
    ) -> ServiceResult<Result<UserRecord, SignInFailure>> {
        let now = Timestamp::now();
        let found = match normalize_username(username) {
            Some(name) => self.store().user(&name)?,
            None => None,
        };
        let Some(rec) = found else {
            // Same work as a real check, so timing does not reveal which names exist.
            password::verify_dummy(self.accounts(), pass).await?;
            self.log_sign_in(ctx, None, ActivityOutcome::Failed, "unknown account", None)
                .await?;
            return Ok(Err(SignInFailure::Invalid));
        };
        if let Some(until) = rec.locked_until.filter(|t| *t > now) {
            self.log_sign_in(
                ctx,
                Some(&rec.username),
                ActivityOutcome::Refused,
                "account locked",
                None,
            )
            .await?;
            return Ok(Err(SignInFailure::Locked { until }));
        }
        let phc = match &rec.password_sealed {
            Some(sealed) => Some(self.unseal(PASSWORD_PURPOSE, sealed)?),
            None => None,
        };
        let good = match phc {
            Some(phc) => {
                let phc = String::from_utf8_lossy(&phc).into_owned();
                password::verify(self.accounts(), pass, zeroize::Zeroizing::new(phc)).await?
            }
            None => {
                password::verify_dummy(self.accounts(), pass).await?;
                false
            }
        };
        let _guard = self.accounts().write_lock.lock().await;
        // Re-read under the lock: another sign-in or an admin may have changed it meanwhile.
        let Some(mut rec) = self.store().user(&rec.username)? else {
            self.log_sign_in(ctx, None, ActivityOutcome::Failed, "unknown account", None)
                .await?;
            return Ok(Err(SignInFailure::Invalid));
        };
        let now = Timestamp::now();
        let mut log = Vec::new();
        let answer = if good && rec.disabled {
            log.push(self.sign_in_entry(
                ctx,
                Some(&rec.username),
                ActivityOutcome::Refused,
                "account disabled",
                None,
            ));
            Err(SignInFailure::Disabled)
        } else if good {
            rec.failed_sign_ins = 0;
            rec.locked_until = None;
            rec.last_sign_in_at = Some(now);
            log.push(self.sign_in_entry(
                ctx,
                Some(&rec.username),
                ActivityOutcome::Ok,
                "signed in",
                None,
            ));
            Ok(rec.clone())
        } else {
            rec.failed_sign_ins = rec.failed_sign_ins.saturating_add(1);
            log.push(self.sign_in_entry(
                ctx,
                Some(&rec.username),
                ActivityOutcome::Failed,
                "wrong password",
                Some(serde_json::json!({ "failed_in_a_row": rec.failed_sign_ins })),
            ));
            if rec.failed_sign_ins >= MAX_FAILURES {
                let until = now.plus(LOCKOUT);
                rec.locked_until = Some(until);
                rec.failed_sign_ins = 0;
                warn!(
                    username = rec.username,
                    "user account locked after failed sign-ins"
                );
                log.push(user_activity(
                    "system",
                    "auth.locked",
                    &rec.username,
                    ActivityOutcome::Refused,
                    format!(
                        "user account {} locked until {} after {MAX_FAILURES} failed sign-ins",
                        rec.username,
                        until.to_rfc3339()
                    ),
                    None,
                ));
                Err(SignInFailure::Locked { until })
            } else {
                Err(SignInFailure::Invalid)
            }
        };
        rec.updated_at = rec.updated_at.max(now);
        self.store().write_user(UserChange::Put(rec), log).await?;
        Ok(answer)
    }

    fn sign_in_entry(
        &self,
        ctx: &SignInContext,
        username: Option<&str>,
        outcome: ActivityOutcome,
        why: &str,
        detail: Option<serde_json::Value>,
    ) -> NewActivity {
        let mut targets = ctx.device.clone();
        if let Some(u) = username {
            targets.push(format!("user:{u}"));
        }
        let who = username.unwrap_or("(unknown account)");
        entry(
            &username.map_or_else(|| "user".to_string(), |u| format!("user:{u}")),
            "auth.sign_in",
            targets,
            outcome,
            format!("sign-in of {who} for {}: {why}", ctx.purpose),
            detail,
        )
    }

    async fn log_sign_in(
        &self,
        ctx: &SignInContext,
        username: Option<&str>,
        outcome: ActivityOutcome,
        why: &str,
        detail: Option<serde_json::Value>,
    ) -> ServiceResult<()> {
        self.log_activity_now(self.sign_in_entry(ctx, username, outcome, why, detail))
            .await
    }

    pub(crate) fn accounts(&self) -> &setup::Accounts {
        &self.inner.accounts
    }
}

/// Maps the hashing pool being closed to an error (it never is while the service runs).
fn hashing_unavailable() -> ServiceError {
    ServiceError::new(
        ErrorKind::Unavailable,
        "HASHING_UNAVAILABLE",
        "password hashing is not available; try again",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_lowercase_and_restricted() {
        assert_eq!(
            normalize_username("  Alice.Smith@Example.org "),
            Some("alice.smith@example.org".into())
        );
        assert_eq!(normalize_username("bob-2_x"), Some("bob-2_x".into()));
        assert_eq!(normalize_username(""), None);
        assert_eq!(normalize_username(".hidden"), None);
        assert_eq!(normalize_username("a b"), None);
        assert_eq!(normalize_username("é"), None);
        assert_eq!(normalize_username(&"a".repeat(65)), None);
    }

    #[test]
    fn emails_and_names_are_checked() {
        assert_eq!(check_email("").ok(), Some(None));
        assert!(check_email("alice@example.org").is_ok());
        assert!(check_email("alice").is_err());
        assert!(check_email("a b@example.org").is_err());
        assert!(check_full_name("  ").is_err());
        assert_eq!(check_full_name(" Alice ").ok(), Some("Alice".into()));
        assert!(check_full_name("x\ny").is_err());
    }
}
