//! ABM connections: creation, the public key to upload to ABM, server-token upload and
//! renewal, settings, and the token state shown to admins.

use mdm_keystore::{KeyResidence, Sealer};
use mdm_pki::{Certificate, PkiError};
use mdm_proto::abm::ServerToken;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::token::{
    decrypt_server_token, new_token_key_pair, KeyPairError, KeystoreKey, TokenError,
};
use super::{
    abm_failure, key_failure, validate_name, AbmService, KeyFault, KEY_PURPOSE, TOKEN_PURPOSE,
};
use crate::error::{ErrorKind, ServiceError, ServiceResult};
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
        let staged_key = self.new_key(&req.name, now).await?;
        let rec = AbmConnectionRecord {
            staged_key: Some(staged_key),
            sync: AbmSyncState {
                interval_seconds: req
                    .interval_seconds
                    .unwrap_or(self.config().default_interval_seconds),
                ..AbmSyncState::default()
            },
            ..AbmConnectionRecord::new(req.name.clone(), endpoint, now)
        };
        self.write_connection(rec.clone()).await?;
        info!(connection = %rec.name, base_url = %rec.endpoint.base_url, "ABM connection created");
        Ok(rec)
    }

    /// A new key pair held by the keystore (made inside the TPM on a TPM keystore, which can
    /// take seconds: it runs off the async threads).
    async fn new_key(&self, name: &str, now: Timestamp) -> ServiceResult<AbmKeyRecord> {
        let sealer = self.mdm().shared_sealer();
        let connection = name.to_string();
        let made = tokio::task::spawn_blocking(move || {
            new_token_key_pair(sealer.as_ref(), KEY_PURPOSE, &connection)
        })
        .await
        .map_err(|e| {
            ServiceError::internal(
                "ABM_KEY_FAILED",
                format!("cannot create the ABM key pair: {e}"),
            )
        })?;
        let (cert, held) = made.map_err(|e| {
            let unavailable = match &e {
                KeyPairError::Keystore(k) => KeyFault::of(k) == KeyFault::Unavailable,
                KeyPairError::Certificate(PkiError::KeyUnavailable(_)) => true,
                KeyPairError::Certificate(_) => false,
            };
            if unavailable {
                ServiceError::new(
                    ErrorKind::Unavailable,
                    "ABM_KEY_UNAVAILABLE",
                    format!("cannot create the ABM key pair: {e}; the keystore must work again first (`mdmctl keystore status` shows it)"),
                )
            } else {
                ServiceError::internal(
                    "ABM_KEY_FAILED",
                    format!("cannot create the ABM key pair: {e}"),
                )
            }
        })?;
        info!(connection = %name, key_storage = held.residence.as_str(), "ABM key pair created");
        Ok(AbmKeyRecord {
            cert_der: cert.der().to_vec(),
            key_sealed: held.blob,
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
                let key = self.new_key(name, Timestamp::now()).await?;
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
        let keys: Vec<(bool, AbmKeyRecord)> = [(true, &rec.staged_key), (false, &rec.current_key)]
            .into_iter()
            .filter_map(|(staged, key)| key.clone().map(|k| (staged, k)))
            .collect();
        let sealer = self.mdm().shared_sealer();
        let connection = name.to_string();
        let file = p7m.to_vec();
        // The keystore decrypts (inside the TPM for a TPM-resident key): off the async threads.
        let (staged, token) = tokio::task::spawn_blocking(move || {
            open_token(sealer.as_ref(), &connection, &keys, &file)
        })
        .await
        .map_err(|e| ServiceError::internal("ABM_TOKEN_INVALID", e.to_string()))??;
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

/// Opens a token file with the first of `keys` (staged first) it was made for; `true` with
/// the token when that was the staged key.
///
/// A key the keystore cannot use for good (made under another TPM) is skipped, so that a
/// token for the other key still opens; when no key opens the token, that failure is the
/// answer, since the token was probably made for it. A keystore that does not answer stops
/// at once: nothing can be concluded about the token.
fn open_token(
    sealer: &dyn Sealer,
    connection: &str,
    keys: &[(bool, AbmKeyRecord)],
    p7m: &[u8],
) -> ServiceResult<(bool, ServerToken)> {
    let mut last_err = None;
    let mut unusable_key = None;
    for (staged, key) in keys {
        let cert = Certificate::from_der(&key.cert_der).map_err(|e| {
            ServiceError::internal("ABM_KEY_UNREADABLE", format!("stored certificate: {e}"))
        })?;
        let private = match KeystoreKey::open(sealer, KEY_PURPOSE, &key.key_sealed) {
            Ok(k) => k,
            Err(e) if KeyFault::of(&e) == KeyFault::Unusable => {
                warn!(connection = %connection, staged, error = %e, "the keystore cannot use this ABM key");
                unusable_key = Some(key_failure(connection, &e));
                continue;
            }
            Err(e) => return Err(key_failure(connection, &e)),
        };
        match decrypt_server_token(p7m, &cert, &private) {
            Ok(t) => return Ok((*staged, t)),
            Err(TokenError::KeyUnavailable(why)) => {
                return Err(ServiceError::new(
                    ErrorKind::Unavailable,
                    "ABM_KEY_UNAVAILABLE",
                    TokenError::KeyUnavailable(why).to_string(),
                ))
            }
            Err(e) => last_err = Some(e),
        }
    }
    match (last_err, unusable_key) {
        (Some(TokenError::WrongKey) | None, Some(unusable)) => Err(unusable),
        (Some(TokenError::WrongKey) | None, None) => Err(ServiceError::bad_request(
            "ABM_TOKEN_WRONG_KEY",
            format!("this token was not made for the public key of connection {connection:?}: upload the public key shown by `mdmctl abm public-key {connection}` to the MDM server in Apple Business Manager and download its token again"),
        )),
        (Some(e), _) => Err(ServiceError::bad_request("ABM_TOKEN_INVALID", e.to_string())),
    }
}

/// Where a stored key's private half lives (`tpm` or `sealed`), from its blob alone.
pub fn key_storage(key: &AbmKeyRecord) -> &'static str {
    KeyResidence::of_blob(&key.key_sealed).as_str()
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
    use std::time::Duration;

    fn rec() -> AbmConnectionRecord {
        crate::abm::test_connection("north")
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

    /// A software keystore in a temp dir, removed on drop.
    struct Keystore {
        dir: std::path::PathBuf,
        sealer: mdm_keystore::SoftSealer,
    }

    impl Keystore {
        fn new() -> Self {
            let mut rnd = [0u8; 8];
            aws_lc_rs::rand::fill(&mut rnd).unwrap();
            let dir = std::env::temp_dir().join(format!("abm-conn-{}", hex::encode(rnd)));
            std::fs::create_dir(&dir).unwrap();
            let sealer = mdm_keystore::SoftSealer::open_or_create(&dir.join("master.key")).unwrap();
            Keystore { dir, sealer }
        }

        fn key(&self, name: &str) -> (Certificate, AbmKeyRecord) {
            let (cert, held) = new_token_key_pair(&self.sealer, KEY_PURPOSE, name).unwrap();
            let rec = AbmKeyRecord {
                cert_der: cert.der().to_vec(),
                key_sealed: held.blob,
                created_at: Timestamp(0),
            };
            (cert, rec)
        }
    }

    impl Drop for Keystore {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn token_for(cert: &Certificate, consumer_key: &str) -> Vec<u8> {
        let json = format!(
            r#"{{"consumer_key":"{consumer_key}","consumer_secret":"CS_1","access_token":"AT_1","access_secret":"AS_1","access_token_expiry":"2030-01-01T00:00:00Z"}}"#
        );
        let msg = format!("-----BEGIN MESSAGE-----\n{json}\n-----END MESSAGE-----\n");
        mdm_pki::cms::envelope(msg.as_bytes(), cert, mdm_pki::cms::ContentCipher::Aes128Cbc)
            .unwrap()
    }

    #[test]
    fn tokens_open_with_the_key_they_were_made_for() {
        let ks = Keystore::new();
        let (staged_cert, staged) = ks.key("north");
        let (current_cert, current) = ks.key("north");
        let keys = [(true, staged), (false, current)];

        let (is_staged, t) = open_token(
            &ks.sealer,
            "north",
            &keys,
            &token_for(&current_cert, "CK_cur"),
        )
        .unwrap();
        assert!(!is_staged);
        assert_eq!(t.consumer_key, "CK_cur");
        let (is_staged, t) = open_token(
            &ks.sealer,
            "north",
            &keys,
            &token_for(&staged_cert, "CK_new"),
        )
        .unwrap();
        assert!(is_staged);
        assert_eq!(t.consumer_key, "CK_new");

        let (stranger, _) = ks.key("elsewhere");
        let err =
            open_token(&ks.sealer, "north", &keys, &token_for(&stranger, "CK_x")).unwrap_err();
        assert_eq!(err.code, "ABM_TOKEN_WRONG_KEY");
        let err = open_token(&ks.sealer, "north", &keys, b"not a token").unwrap_err();
        assert_eq!(err.code, "ABM_TOKEN_INVALID");
    }

    #[test]
    fn a_key_from_another_keystore_asks_for_a_new_key_pair() {
        // The current key was made by another keystore (data moved to new hardware); a new
        // key pair was staged here.
        let old = Keystore::new();
        let (old_cert, current) = old.key("north");
        let here = Keystore::new();
        let (staged_cert, staged) = here.key("north");
        let keys = [(true, staged), (false, current)];

        // The token for the staged key still opens.
        let (is_staged, _) =
            open_token(&here.sealer, "north", &keys, &token_for(&staged_cert, "CK")).unwrap();
        assert!(is_staged);
        // One for the old key says what to do.
        let err =
            open_token(&here.sealer, "north", &keys, &token_for(&old_cert, "CK")).unwrap_err();
        assert_eq!(err.code, "ABM_KEY_UNUSABLE");
        assert_eq!(err.kind, ErrorKind::Conflict);
        for step in [
            "mdmctl abm public-key north --new",
            "upload the new public key",
            "mdmctl abm token upload north",
        ] {
            assert!(err.message.contains(step), "{step}: {err}");
        }
    }

    /// A keystore whose TPM does not answer.
    struct Unreachable;

    fn unreachable() -> mdm_keystore::KeystoreError {
        mdm_keystore::KeystoreError::TpmUnavailable {
            tcti: "device:/dev/tpmrm0".into(),
            library: "libtss2-tcti-device0",
            detail: "Connection refused".into(),
        }
    }

    impl Sealer for Unreachable {
        fn backend(&self) -> mdm_keystore::Backend {
            mdm_keystore::Backend::Tpm
        }
        fn seal(
            &self,
            _purpose: &str,
            _plaintext: &[u8],
        ) -> Result<mdm_keystore::SealedBlob, mdm_keystore::KeystoreError> {
            Err(unreachable())
        }
        fn unseal(
            &self,
            _purpose: &str,
            _blob: &mdm_keystore::SealedBlob,
        ) -> Result<zeroize::Zeroizing<Vec<u8>>, mdm_keystore::KeystoreError> {
            Err(unreachable())
        }
    }

    #[test]
    fn an_unreachable_keystore_stops_the_upload_at_once() {
        let ks = Keystore::new();
        let (cert, key) = ks.key("north");
        let keys = [(false, key)];
        let err = open_token(&Unreachable, "north", &keys, &token_for(&cert, "CK")).unwrap_err();
        assert_eq!(err.code, "ABM_KEY_UNAVAILABLE");
        assert_eq!(err.kind, ErrorKind::Unavailable);
    }
}
