//! Passwords: the policy, and Argon2id hashing off the async threads.
//!
//! Argon2id with 19 MiB of memory, 2 passes and 1 lane (OWASP's baseline) costs tens of
//! milliseconds of one core per hash. Hashes run on the blocking pool, at most
//! [`CONCURRENT`] at a time, so a burst of sign-ins queues instead of starving the device
//! protocol of CPU and memory.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::setup::Accounts;
use crate::error::{ServiceError, ServiceResult};

/// Hashes computed at the same time.
pub const CONCURRENT: usize = 2;
/// Shortest password accepted, in characters.
pub const MIN_CHARS: usize = 10;
/// Longest password accepted, in characters (hashing cost does not depend on it, but a
/// sentence-sized bound keeps requests small).
pub const MAX_CHARS: usize = 256;

const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;

/// A password in memory: wiped when dropped, never printed.
#[derive(Clone, Deserialize)]
#[serde(from = "String")]
pub struct Password(Zeroizing<String>);

impl From<String> for Password {
    fn from(s: String) -> Self {
        Password(Zeroizing::new(s))
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(redacted)")
    }
}

impl Password {
    pub fn new(s: impl Into<String>) -> Self {
        Password(Zeroizing::new(s.into()))
    }

    /// Whether an admin may set this password for `username`.
    pub fn check_policy(&self, username: &str) -> ServiceResult<()> {
        let invalid =
            |why: &str| ServiceError::bad_request("PASSWORD_POLICY", format!("password: {why}"));
        let n = self.0.chars().count();
        if n < MIN_CHARS {
            return Err(invalid(&format!("must be at least {MIN_CHARS} characters")));
        }
        if n > MAX_CHARS {
            return Err(invalid(&format!("must be at most {MAX_CHARS} characters")));
        }
        if self.0.chars().any(char::is_control) {
            return Err(invalid("must not contain control characters"));
        }
        if self.0.trim().eq_ignore_ascii_case(username) {
            return Err(invalid("must not be the username"));
        }
        Ok(())
    }

    /// The password itself, for handing to a key derivation. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

fn argon2() -> ServiceResult<Argon2<'static>> {
    let params = Params::new(MEMORY_KIB, PASSES, LANES, None)
        .map_err(|e| ServiceError::internal("PASSWORD_HASH_FAILED", e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_now(p: &Password) -> ServiceResult<Zeroizing<String>> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt)
        .map_err(|_| ServiceError::internal("RANDOM_FAILED", "the system random source failed"))?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| ServiceError::internal("PASSWORD_HASH_FAILED", e.to_string()))?;
    let hash = argon2()?
        .hash_password(p.bytes(), &salt)
        .map_err(|e| ServiceError::internal("PASSWORD_HASH_FAILED", e.to_string()))?;
    Ok(Zeroizing::new(hash.to_string()))
}

/// Whether `p` matches the PHC string. The parameters come from the string, so hashes made
/// with other parameters still verify.
fn verify_now(p: &Password, phc: &str) -> ServiceResult<bool> {
    let parsed = PasswordHash::new(phc).map_err(|e| {
        ServiceError::internal(
            "PASSWORD_HASH_UNREADABLE",
            format!("a stored password hash is unreadable: {e}"),
        )
    })?;
    Ok(argon2()?.verify_password(p.bytes(), &parsed).is_ok())
}

async fn blocking<T: Send + 'static>(
    accounts: &Accounts,
    f: impl FnOnce() -> ServiceResult<T> + Send + 'static,
) -> ServiceResult<T> {
    let _permit = accounts
        .hashing
        .acquire()
        .await
        .map_err(|_| super::hashing_unavailable())?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::internal("PASSWORD_HASH_FAILED", e.to_string()))?
}

/// Hashes a password (Argon2id, random salt) into a PHC string.
pub async fn hash(accounts: &Accounts, p: Password) -> ServiceResult<Zeroizing<String>> {
    blocking(accounts, move || hash_now(&p)).await
}

/// Checks a password against a PHC string.
pub async fn verify(
    accounts: &Accounts,
    p: Password,
    phc: Zeroizing<String>,
) -> ServiceResult<bool> {
    blocking(accounts, move || verify_now(&p, &phc)).await
}

/// Does the work of a verification against a hash nobody knows the password of.
pub async fn verify_dummy(accounts: &Accounts, p: Password) -> ServiceResult<()> {
    let dummy = match accounts.dummy_hash.get() {
        Some(h) => h.clone(),
        None => {
            let random = crate::random_token()?;
            let h = hash(accounts, Password::new(random)).await?;
            let _ = accounts.dummy_hash.set(h.to_string());
            h.to_string()
        }
    };
    blocking(accounts, move || verify_now(&p, &dummy).map(drop)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_per_salt() {
        let p = Password::new("correct horse battery");
        let a = hash_now(&p).unwrap();
        let b = hash_now(&p).unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{}", *a);
        assert_ne!(*a, *b);
        assert!(verify_now(&p, &a).unwrap());
        assert!(!verify_now(&Password::new("correct horse battery!"), &a).unwrap());
        assert!(verify_now(&p, "not a hash").is_err());
    }

    #[test]
    fn policy_names_the_problem() {
        let msg = |p: &str| Password::new(p).check_policy("alice").unwrap_err().message;
        assert!(msg("short").contains("at least 10"));
        assert!(msg(&"x".repeat(257)).contains("at most 256"));
        assert!(msg("ALICE").contains("at least"));
        assert!(msg("tab\there-long").contains("control"));
        assert!(Password::new("0123456789").check_policy("alice").is_ok());
        assert!(Password::new("alice12345")
            .check_policy("alice12345")
            .is_err());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let p = Password::new("hunter2-hunter2");
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
