//! ABM connections: creation, the public key to upload to ABM, server-token upload and
//! renewal, settings, and the token state shown to admins.

use mdm_pki::{Certificate, PrivateKey};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::token::{decrypt_server_token, new_token_key_pair, TokenError};
use super::{abm_failure, validate_name, AbmService, KEY_PURPOSE, TOKEN_PURPOSE};
use crate::error::{ServiceError, ServiceResult};
use crate::ports::{
    AbmBatch, AbmClient, AbmConnectionRecord, AbmConnector, AbmEndpoint, AbmError, AbmKeyRecord,
    AbmProblem, AbmSyncState, AbmTokenRecord, Store, Timestamp,
};

/// What an admin gives to create a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewConnection {
    pub name: String,
    /// ABM API base URL; Apple's by default.
    #[serde(default)]
    pub base_url: Option<String>,
    /// PEM roots for `base_url`; the system's by default.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Seconds between automatic syncs (0 disables); the configured default otherwise.
    #[serde(default)]
    pub interval_seconds: Option<u64>,
}

/// Changes to a connection's settings; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPatch {
    #[serde(default)]
    pub base_url: Option<String>,
    /// `Some("")` returns to the system's roots.
    #[serde(default)]
    pub ca_pem: Option<String>,
    #[serde(default)]
    pub interval_seconds: Option<u64>,
    /// `Some("")` clears the default profile.
    #[serde(default)]
    pub default_profile: Option<String>,
}

/// A connection's token state, each shown with a reason and what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    /// No server token uploaded yet.
    NoToken,
    Active,
    /// Within the warning window of its expiry.
    ExpiringSoon,
    Expired,
    /// Apple answers `T_C_NOT_SIGNED`.
    TermsNotAccepted,
    /// Apple refuses the token (revoked, replaced by a newer download, or invalid).
    Invalid,
    /// The last calls could not reach Apple.
    Unreachable,
}

impl TokenState {
    /// Whether the state needs an admin's attention (warned in logs, shown loudly).
    pub fn needs_attention(self) -> bool {
        !matches!(self, TokenState::Active)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::NoToken => "no_token",
            TokenState::Active => "active",
            TokenState::ExpiringSoon => "expiring_soon",
            TokenState::Expired => "expired",
            TokenState::TermsNotAccepted => "terms_not_accepted",
            TokenState::Invalid => "invalid",
            TokenState::Unreachable => "unreachable",
        }
    }
}

/// A token state with its explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenStatus {
    pub state: TokenState,
    pub reason: String,
    /// What the admin should do; `None` when nothing is needed.
    pub action: Option<String>,
}

/// Works out a connection's token state at `now`.
pub fn token_status(
    rec: &AbmConnectionRecord,
    now: Timestamp,
    warning: std::time::Duration,
) -> TokenStatus {
    let name = &rec.name;
    let Some(token) = &rec.token else {
        let action = if rec.staged_key.is_some() {
            format!("in Apple Business Manager, create an MDM server with the public key from `mdmctl abm public-key {name}`, download its token and upload it with `mdmctl abm token upload {name} FILE.p7m`")
        } else {
            format!("download the public key with `mdmctl abm public-key {name}` and upload it to Apple Business Manager")
        };
        return TokenStatus {
            state: TokenState::NoToken,
            reason: "no server token has been uploaded".into(),
            action: Some(action),
        };
    };
    let renew = format!("in Apple Business Manager, open the MDM server, download a new token and upload it with `mdmctl abm token upload {name} FILE.p7m`");
    if token.expires_at <= now {
        return TokenStatus {
            state: TokenState::Expired,
            reason: format!(
                "the server token expired on {}; Apple refuses every call",
                token.expires_at.to_rfc3339()
            ),
            action: Some(renew),
        };
    }
    if let Some(problem) = &rec.problem {
        let since = problem.since.to_rfc3339();
        match problem.code.as_str() {
            "ABM_TERMS_NOT_SIGNED" => {
                return TokenStatus {
                    state: TokenState::TermsNotAccepted,
                    reason: format!("Apple has new terms and conditions that nobody accepted yet (since {since}); syncing and assignment are stopped"),
                    action: Some("an administrator with the right role must sign in to Apple Business Manager and accept the new terms; syncing resumes by itself".into()),
                }
            }
            "ABM_ACCESS_DENIED" => {
                return TokenStatus {
                    state: TokenState::Invalid,
                    reason: format!("Apple refuses the server token since {since}: it was revoked, replaced by a newer download, or the MDM server was deleted ({})", problem.message),
                    action: Some(renew),
                }
            }
            "ABM_UNREACHABLE" | "ABM_UNAVAILABLE" | "ABM_THROTTLED" => {
                return TokenStatus {
                    state: TokenState::Unreachable,
                    reason: format!("Apple Business Manager could not be reached since {since}: {}", problem.message),
                    action: Some("check the appliance's DNS, outbound HTTPS to mdmenrollment.apple.com (port 443) and the proxy settings; the appliance keeps retrying".into()),
                }
            }
            _ => {}
        }
    }
    let warn_from = token.expires_at.minus(warning);
    if now >= warn_from {
        let days = (token.expires_at.0 - now.0) / 86_400_000;
        return TokenStatus {
            state: TokenState::ExpiringSoon,
            reason: format!(
                "the server token expires on {} (in {days} days)",
                token.expires_at.to_rfc3339()
            ),
            action: Some(renew),
        };
    }
    TokenStatus {
        state: TokenState::Active,
        reason: format!(
            "the server token is valid until {}",
            token.expires_at.to_rfc3339()
        ),
        action: None,
    }
}

impl<S: Store, C: AbmConnector> AbmService<S, C> {
    /// Creates a connection with a staged key pair whose certificate the admin uploads to ABM.
    pub async fn add_connection(&self, req: NewConnection) -> ServiceResult<AbmConnectionRecord> {
        validate_name("name", &req.name)?;
        if self.store().abm_connection(&req.name)?.is_some() {
            return Err(ServiceError::conflict(
                "ABM_CONNECTION_EXISTS",
                format!("an ABM connection named {:?} already exists", req.name),
            ));
        }
        let defaults = &self.config().default_endpoint;
        let endpoint = AbmEndpoint {
            base_url: match req.base_url {
                Some(u) => validate_base_url(&u)?,
                None => defaults.base_url.clone(),
            },
            ca_pem: match req.ca_pem {
                Some(pem) => Some(validate_ca_pem(&pem)?),
                None => defaults.ca_pem.clone(),
            },
        };
        let now = Timestamp::now();
        let rec = AbmConnectionRecord {
            name: req.name.clone(),
            created_at: now,
            endpoint,
            staged_key: Some(self.new_key(&req.name, now)?),
            current_key: None,
            token: None,
            account: None,
            problem: None,
            last_ok_at: None,
            sync: AbmSyncState {
                interval_seconds: req
                    .interval_seconds
                    .unwrap_or(self.config().default_interval_seconds),
                ..AbmSyncState::default()
            },
            default_profile: None,
        };
        self.write_connection(rec.clone()).await?;
        info!(connection = %rec.name, base_url = %rec.endpoint.base_url, "ABM connection created");
        Ok(rec)
    }

    fn new_key(&self, name: &str, now: Timestamp) -> ServiceResult<AbmKeyRecord> {
        let (cert, key) = new_token_key_pair(name).map_err(|e| {
            ServiceError::internal(
                "ABM_KEY_FAILED",
                format!("cannot create the ABM key pair: {e}"),
            )
        })?;
        let key_sealed = self.mdm().seal(KEY_PURPOSE, &key.to_pkcs8_der())?;
        Ok(AbmKeyRecord {
            cert_der: cert.der().to_vec(),
            key_sealed,
            created_at: now,
        })
    }

    /// The certificate (PEM) to upload to ABM: the staged one, else the current one. `rotate`
    /// stages a new key pair first (the current token keeps working until a token for the new
    /// key is uploaded).
    pub async fn public_key_pem(&self, name: &str, rotate: bool) -> ServiceResult<String> {
        let _busy = self.lock(name).await;
        let mut rec = self.connection_record(name)?;
        let key = match (&rec.staged_key, &rec.current_key, rotate) {
            (Some(staged), _, false) => staged.clone(),
            (None, Some(current), false) => current.clone(),
            _ => {
                let key = self.new_key(name, Timestamp::now())?;
                rec.staged_key = Some(key.clone());
                self.write_connection(rec).await?;
                info!(connection = %name, "ABM key pair staged");
                key
            }
        };
        let cert = Certificate::from_der(&key.cert_der).map_err(|e| {
            ServiceError::internal("ABM_KEY_UNREADABLE", format!("stored certificate: {e}"))
        })?;
        Ok(cert.to_pem())
    }

    fn open_key(&self, key: &AbmKeyRecord) -> ServiceResult<(Certificate, PrivateKey)> {
        let cert = Certificate::from_der(&key.cert_der).map_err(|e| {
            ServiceError::internal("ABM_KEY_UNREADABLE", format!("stored certificate: {e}"))
        })?;
        let pkcs8 = self.mdm().unseal(KEY_PURPOSE, &key.key_sealed)?;
        let private = PrivateKey::from_pkcs8_der(&pkcs8).map_err(|e| {
            ServiceError::internal("ABM_KEY_UNREADABLE", format!("stored key: {e}"))
        })?;
        Ok((cert, private))
    }

    /// Uploads a server token (`.p7m`). It must decrypt with the staged or the current key;
    /// a token from another ABM account (another consumer key) is refused unless `force`.
    /// Renewal keeps the devices, history and cursor. Apple is asked for the account details
    /// straight away so a wrong or revoked token shows at once.
    pub async fn upload_token(
        &self,
        name: &str,
        p7m: &[u8],
        force: bool,
    ) -> ServiceResult<AbmConnectionRecord> {
        let _busy = self.lock(name).await;
        let mut rec = self.connection_record(name)?;
        let mut opened = None;
        let mut last_err = None;
        for (staged, key) in [(true, &rec.staged_key), (false, &rec.current_key)] {
            let Some(key) = key else { continue };
            let (cert, private) = self.open_key(key)?;
            match decrypt_server_token(p7m, &cert, &private) {
                Ok(t) => {
                    opened = Some((staged, t));
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let (staged, token) = match (opened, last_err) {
            (Some(o), _) => o,
            (None, Some(TokenError::WrongKey)) | (None, None) => {
                return Err(ServiceError::bad_request(
                    "ABM_TOKEN_WRONG_KEY",
                    format!("this token was not made for the public key of connection {name:?}: upload the public key shown by `mdmctl abm public-key {name}` to the MDM server in Apple Business Manager and download its token again"),
                ))
            }
            (None, Some(e)) => {
                return Err(ServiceError::bad_request("ABM_TOKEN_INVALID", e.to_string()))
            }
        };
        let expires_at = Timestamp::parse_rfc3339(&token.access_token_expiry).ok_or_else(|| {
            ServiceError::bad_request(
                "ABM_TOKEN_INVALID",
                "the token's access_token_expiry is not an RFC 3339 time",
            )
        })?;
        let now = Timestamp::now();
        let previous = rec.token.clone();
        if let Some(prev) = &previous {
            if prev.consumer_key != token.consumer_key && !force {
                return Err(ServiceError::conflict(
                    "ABM_TOKEN_OTHER_ACCOUNT",
                    format!("this token belongs to another Apple Business Manager account (consumer key {} instead of {}); uploading it would replace the devices this connection manages. Check you downloaded it from the right MDM server, or repeat with --force", token.consumer_key, prev.consumer_key),
                ));
            }
        }
        if expires_at <= now {
            return Err(ServiceError::bad_request(
                "ABM_TOKEN_EXPIRED",
                format!(
                    "this token expired on {}: download a new one from Apple Business Manager",
                    expires_at.to_rfc3339()
                ),
            ));
        }
        // Ask Apple before storing anything: a revoked or superseded token is refused here.
        let client = self
            .inner
            .connector
            .connect(&rec.endpoint, &token)
            .map_err(|e| abm_failure(name, &e))?;
        let account = match client.account().await {
            Ok(a) => {
                rec.problem = None;
                rec.last_ok_at = Some(now);
                Some(a)
            }
            Err(e @ AbmError::AccessDenied { .. }) => return Err(abm_failure(name, &e)),
            Err(e) => {
                // Terms not signed, Apple unreachable: the token is still the right one.
                warn!(connection = %name, code = e.code(), error = %e, "token stored, but Apple could not confirm it");
                note_problem(&mut rec, &e, now);
                rec.account.clone()
            }
        };
        let sealed = self.mdm().seal(
            TOKEN_PURPOSE,
            &zeroize::Zeroizing::new(
                serde_json::to_vec(&token)
                    .map_err(|e| ServiceError::internal("ABM_TOKEN_INVALID", e.to_string()))?,
            ),
        )?;
        let other_account = previous
            .as_ref()
            .is_some_and(|p| p.consumer_key != token.consumer_key);
        rec.token = Some(AbmTokenRecord {
            consumer_key: token.consumer_key.clone(),
            credentials_sealed: sealed,
            expires_at,
            uploaded_at: now,
            generation: previous.as_ref().map_or(1, |p| p.generation + 1),
        });
        rec.account = account;
        if staged {
            rec.current_key = rec.staged_key.take();
        }
        if other_account {
            // Another account's cursor means nothing to this one: start with a full fetch.
            rec.sync.cursor = None;
            rec.sync.fetching = false;
        }
        self.write_connection(rec.clone()).await?;
        self.forget_client(name);
        info!(
            connection = %name,
            renewal = previous.is_some(),
            expires_at = %expires_at.to_rfc3339(),
            "ABM server token uploaded"
        );
        self.mdm().log_activity(crate::lifecycle::activity::entry(
            "admin",
            if previous.is_some() {
                "abm.token_renewed"
            } else {
                "abm.token_uploaded"
            },
            vec![name.to_string()],
            crate::ports::ActivityOutcome::Ok,
            format!("server token uploaded; expires {}", expires_at.to_rfc3339()),
            None,
        ));
        self.wake_scheduler();
        Ok(rec)
    }

    /// Changes a connection's settings.
    pub async fn update_connection(
        &self,
        name: &str,
        patch: ConnectionPatch,
    ) -> ServiceResult<AbmConnectionRecord> {
        let _busy = self.lock(name).await;
        let mut rec = self.connection_record(name)?;
        if let Some(u) = patch.base_url {
            rec.endpoint.base_url = validate_base_url(&u)?;
        }
        if let Some(pem) = patch.ca_pem {
            rec.endpoint.ca_pem = if pem.trim().is_empty() {
                None
            } else {
                Some(validate_ca_pem(&pem)?)
            };
        }
        if let Some(i) = patch.interval_seconds {
            rec.sync.interval_seconds = i;
        }
        let mut reassign = false;
        if let Some(p) = patch.default_profile {
            if p.is_empty() {
                rec.default_profile = None;
            } else {
                if self.store().abm_profile(name, &p)?.is_none() {
                    return Err(ServiceError::bad_request(
                        "ABM_PROFILE_NOT_FOUND",
                        format!("default_profile: connection {name:?} has no profile {p:?}"),
                    ));
                }
                rec.default_profile = Some(p);
            }
            reassign = true;
        }
        self.write_connection(rec.clone()).await?;
        if reassign {
            drop(_busy);
            self.mark_all_due(name).await?;
        }
        self.wake_scheduler();
        Ok(rec)
    }

    /// Removes a connection and everything stored for it (not the enrollments of its devices).
    /// Nothing is sent to Apple.
    pub async fn delete_connection(&self, name: &str) -> ServiceResult<()> {
        let _busy = self.lock(name).await;
        self.connection_record(name)?;
        self.commit(AbmBatch {
            delete_connection: Some(name.to_string()),
            ..AbmBatch::default()
        })
        .await?;
        self.forget_client(name);
        info!(connection = %name, "ABM connection deleted");
        Ok(())
    }

    /// Every connection, by name.
    pub fn connections(&self) -> ServiceResult<Vec<AbmConnectionRecord>> {
        Ok(self.store().abm_connections()?)
    }

    /// Whether a sync or assignment job of the connection is running now.
    pub fn is_busy(&self, name: &str) -> bool {
        self.runtime(name).busy.try_lock().is_err()
    }

    /// Whether a sync of the connection is running or waiting to run.
    pub fn is_syncing(&self, name: &str) -> bool {
        self.runtime(name)
            .syncing
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The token state of a connection now.
    pub fn status_of(&self, rec: &AbmConnectionRecord) -> TokenStatus {
        token_status(rec, Timestamp::now(), self.config().expiry_warning)
    }
}

/// Records a failed call on the connection (kept until a call succeeds).
pub(crate) fn note_problem(rec: &mut AbmConnectionRecord, e: &AbmError, now: Timestamp) {
    let code = e.code().to_string();
    let since = match &rec.problem {
        Some(p) if p.code == code => p.since,
        _ => now,
    };
    rec.problem = Some(AbmProblem {
        code,
        message: e.to_string(),
        since,
        last_at: now,
    });
}

/// Records a failure that says something about the token or Apple's reachability; a refused
/// request (a profile Apple rejects) does not change the connection's state.
pub(crate) fn note_problem_if_token(rec: &mut AbmConnectionRecord, e: &AbmError, now: Timestamp) {
    if !matches!(
        e,
        AbmError::Rejected { .. }
            | AbmError::CursorExhausted
            | AbmError::CursorExpired
            | AbmError::CursorInvalid
    ) {
        note_problem(rec, e, now);
    }
}

fn validate_base_url(url: &str) -> ServiceResult<String> {
    let trimmed = url.trim().trim_end_matches('/');
    let bad =
        |why: &str| ServiceError::bad_request("ABM_URL_INVALID", format!("base_url {url:?} {why}"));
    let rest = trimmed
        .strip_prefix("https://")
        .ok_or_else(|| bad("must start with https://"))?;
    if rest.is_empty() || rest.contains(['?', '#', '@', ' ']) {
        return Err(bad(
            "must be https://HOST[:PORT][/PATH] without query or credentials",
        ));
    }
    Ok(trimmed.to_string())
}

fn validate_ca_pem(pem: &str) -> ServiceResult<String> {
    let certs = Certificate::all_from_pem(pem)
        .map_err(|e| ServiceError::bad_request("ABM_CA_INVALID", format!("ca_pem: {e}")))?;
    if certs.is_empty() {
        return Err(ServiceError::bad_request(
            "ABM_CA_INVALID",
            "ca_pem holds no PEM certificate",
        ));
    }
    Ok(pem.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::AbmSyncState;
    use std::time::Duration;

    fn rec() -> AbmConnectionRecord {
        AbmConnectionRecord {
            name: "north".into(),
            created_at: Timestamp(0),
            endpoint: AbmEndpoint {
                base_url: "https://abm.test".into(),
                ca_pem: None,
            },
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

    const DAY: i64 = 86_400_000;

    #[test]
    fn token_states() {
        let warn = Duration::from_secs(30 * 86_400);
        let mut r = rec();
        assert_eq!(
            token_status(&r, Timestamp(0), warn).state,
            TokenState::NoToken
        );
        r.token = Some(AbmTokenRecord {
            consumer_key: "CK".into(),
            credentials_sealed: vec![],
            expires_at: Timestamp(100 * DAY),
            uploaded_at: Timestamp(0),
            generation: 1,
        });
        let s = token_status(&r, Timestamp(DAY), warn);
        assert_eq!(s.state, TokenState::Active);
        assert!(s.action.is_none());
        assert_eq!(
            token_status(&r, Timestamp(80 * DAY), warn).state,
            TokenState::ExpiringSoon
        );
        assert_eq!(
            token_status(&r, Timestamp(100 * DAY), warn).state,
            TokenState::Expired
        );
        note_problem(&mut r, &AbmError::TermsNotSigned, Timestamp(DAY));
        let s = token_status(&r, Timestamp(2 * DAY), warn);
        assert_eq!(s.state, TokenState::TermsNotAccepted);
        assert!(s.action.unwrap_or_default().contains("accept"));
        note_problem(
            &mut r,
            &AbmError::Transport {
                message: "connection refused".into(),
            },
            Timestamp(2 * DAY),
        );
        assert_eq!(
            token_status(&r, Timestamp(2 * DAY), warn).state,
            TokenState::Unreachable
        );
    }

    #[test]
    fn problem_keeps_its_start() {
        let mut r = rec();
        note_problem(&mut r, &AbmError::TermsNotSigned, Timestamp(5));
        note_problem(&mut r, &AbmError::TermsNotSigned, Timestamp(9));
        let p = r.problem.unwrap_or_else(|| unreachable!());
        assert_eq!((p.since, p.last_at), (Timestamp(5), Timestamp(9)));
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            validate_base_url("https://abm.lan:8443/x/").ok().as_deref(),
            Some("https://abm.lan:8443/x")
        );
        assert!(validate_base_url("http://abm.lan").is_err());
        assert!(validate_base_url("https://u:p@abm.lan").is_err());
    }
}
