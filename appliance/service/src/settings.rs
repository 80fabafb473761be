//! Appliance-wide state an admin manages: the push certificate (and so the push topic) and
//! the admin API tokens.

use serde::Serialize;
use tracing::{info, warn};

use crate::error::{ServiceError, ServiceResult};
use crate::ports::{ApiTokenRecord, Role, SettingsStore, Store, Timestamp};
use crate::{random_token, sha256_hex, MdmService};

pub(crate) const PUSH_CERT_KEY: &str = "push/cert";
const PUSH_TOPIC_KEY: &str = "push/topic";
/// Apple's MDM push topics all start with this.
const TOPIC_PREFIX: &str = "com.apple.mgmt.";

/// What `push-cert show` reports.
#[derive(Debug, Clone, Serialize)]
pub struct PushCertInfo {
    pub topic: String,
    pub subject: String,
    pub not_after: String,
    pub expired: bool,
    pub days_left: i64,
    pub seconds_left: i64,
    /// `valid`, `expiring_soon` (30 days or less) or `expired`.
    pub state: &'static str,
}

/// A newly created API token: the secret is shown once.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedToken {
    pub record: ApiTokenRecord,
    pub token: String,
}

pub(crate) fn load_topic<S: SettingsStore>(store: &S) -> ServiceResult<Option<String>> {
    Ok(store
        .setting(PUSH_TOPIC_KEY)?
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|t| !t.is_empty()))
}

fn parse_cert(bytes: &[u8]) -> ServiceResult<mdm_pki::Certificate> {
    let text = std::str::from_utf8(bytes)
        .ok()
        .filter(|t| t.contains("-----BEGIN"));
    let parsed = match text {
        Some(pem) => mdm_pki::Certificate::from_pem(pem),
        None => mdm_pki::Certificate::from_der(bytes),
    };
    parsed.map_err(|e| {
        ServiceError::bad_request(
            "PUSH_CERT_INVALID",
            format!("not a PEM or DER certificate: {e}"),
        )
    })
}

impl<S: Store> MdmService<S> {
    /// Import the MDM push certificate. Its subject UID is the push topic. Replacing a
    /// certificate whose topic differs is refused unless `force`: every enrolled device listens
    /// on the old topic and would never be reachable again.
    pub async fn import_push_cert(&self, bytes: &[u8], force: bool) -> ServiceResult<PushCertInfo> {
        let cert = parse_cert(bytes)?;
        self.check_push_cert_key(&cert)?;
        let topic = cert.subject_uid().ok_or_else(|| {
            ServiceError::bad_request(
                "PUSH_CERT_INVALID",
                "the certificate's subject has no UID; an MDM push certificate from Apple carries the topic there",
            )
        })?;
        if !topic.starts_with(TOPIC_PREFIX) {
            return Err(ServiceError::bad_request(
                "PUSH_CERT_INVALID",
                format!("topic {topic} is not an MDM push topic (expected {TOPIC_PREFIX}...)"),
            ));
        }
        if let Some(current) = self.topic() {
            if current != topic && !force {
                return Err(ServiceError::conflict(
                    "PUSH_TOPIC_CHANGED",
                    format!(
                        "the new certificate's topic {topic} differs from the current {current}: every enrolled device \
                         would be orphaned and need re-enrollment. Renew the certificate in the same Apple account \
                         instead, or pass --force if that is really intended"
                    ),
                ));
            }
            if current != topic {
                warn!(old = %current, new = %topic, "push topic changed by force: enrolled devices are orphaned");
            }
        }
        self.store()
            .put_settings(vec![
                (PUSH_CERT_KEY.to_string(), cert.der().to_vec()),
                (PUSH_TOPIC_KEY.to_string(), topic.clone().into_bytes()),
            ])
            .await?;
        if let Ok(mut t) = self.inner.topic.write() {
            *t = Some(topic.clone());
        }
        self.push_identity_changed();
        let info = push_info(&cert, topic);
        info!(topic = %info.topic, expires = %info.not_after, "push certificate imported");
        Ok(info)
    }

    /// The imported push certificate, if any.
    pub fn push_cert(&self) -> ServiceResult<Option<PushCertInfo>> {
        let Some(der) = self.store().setting(PUSH_CERT_KEY)? else {
            return Ok(None);
        };
        let cert = parse_cert(&der)?;
        let topic = self.topic().unwrap_or_default();
        Ok(Some(push_info(&cert, topic)))
    }

    /// Log loudly when the push certificate is about to expire or has expired (called at
    /// start and periodically).
    pub fn warn_push_cert_expiry(&self) {
        match self.push_cert() {
            Ok(Some(info)) if info.expired => tracing::error!(
                topic = %info.topic, expired = %info.not_after,
                "the push certificate has EXPIRED: no device can be woken; renew it in Apple's portal (same account) and import it"
            ),
            Ok(Some(info)) if info.state == "expiring_soon" => warn!(
                topic = %info.topic, days_left = info.days_left,
                "the push certificate expires soon: renew it in Apple's portal with the same account and import it"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read the push certificate"),
        }
    }

    /// Create an API token. Returns the secret once; only its hash is stored.
    pub async fn create_api_token(&self, name: &str, role: Role) -> ServiceResult<CreatedToken> {
        let name = name.trim();
        if name.is_empty() || name.len() > 100 {
            return Err(ServiceError::bad_request(
                "INVALID_FIELD",
                "name: 1 to 100 characters",
            ));
        }
        let token = format!("mdm_{}", random_token()?);
        let record = ApiTokenRecord {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            role,
            token_sha256: sha256_hex(token.as_bytes()),
            created_at: Timestamp::now(),
            revoked_at: None,
        };
        self.store().put_api_token(record.clone()).await?;
        info!(name, ?role, "API token created");
        Ok(CreatedToken { record, token })
    }

    /// Revoke an API token. The last active admin token cannot be revoked: that would leave
    /// nobody able to manage the appliance.
    pub async fn revoke_api_token(&self, id: &str) -> ServiceResult<ApiTokenRecord> {
        let tokens = self.store().list_api_tokens()?;
        let mut rec = tokens.iter().find(|t| t.id == id).cloned().ok_or_else(|| {
            ServiceError::not_found("API_TOKEN_NOT_FOUND", format!("no API token {id}"))
        })?;
        if rec.revoked_at.is_some() {
            return Ok(rec);
        }
        let other_admins = tokens
            .iter()
            .filter(|t| t.id != id && t.role == Role::Admin && t.revoked_at.is_none())
            .count();
        if rec.role == Role::Admin && other_admins == 0 {
            return Err(ServiceError::conflict(
                "LAST_ADMIN_TOKEN",
                "this is the last active admin token; create another admin token first",
            ));
        }
        rec.revoked_at = Some(Timestamp::now());
        self.store().put_api_token(rec.clone()).await?;
        info!(token = %rec.name, "API token revoked");
        Ok(rec)
    }

    /// Resolve a bearer token to its record; unknown or revoked tokens are refused.
    pub fn authenticate_api_token(&self, token: &str) -> ServiceResult<ApiTokenRecord> {
        let rec = self
            .store()
            .api_token_by_hash(&sha256_hex(token.as_bytes()))?
            .filter(|r| r.revoked_at.is_none())
            .ok_or_else(|| {
                ServiceError::unauthorized(
                    "API_TOKEN_INVALID",
                    "the API token is unknown or revoked",
                )
            })?;
        Ok(rec)
    }
}

fn push_info(cert: &mdm_pki::Certificate, topic: String) -> PushCertInfo {
    let now = std::time::SystemTime::now();
    let not_after = cert.not_after();
    let secs = match not_after.duration_since(now) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    let ms = not_after
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let warn_secs = i64::try_from(crate::push::EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX);
    let state = if secs < 0 {
        "expired"
    } else if secs <= warn_secs {
        "expiring_soon"
    } else {
        "valid"
    };
    PushCertInfo {
        topic,
        subject: cert.subject(),
        not_after: Timestamp(ms).to_rfc3339(),
        expired: secs < 0,
        days_left: secs.div_euclid(86_400),
        seconds_left: secs,
        state,
    }
}
