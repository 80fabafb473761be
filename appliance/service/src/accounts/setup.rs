//! Signing in during Setup Assistant (ADE with `configuration_web_url`).
//!
//! The device opens the appliance's page in a web view and sends its signed MachineInfo
//! only with that first GET. When the device's ABM enrollment profile asks for user
//! authentication, the appliance verifies the MachineInfo, remembers it under a random
//! sign-in token for [`SESSION_TTL`], and answers the sign-in page, which posts the token back
//! with the username and password. A good sign-in answers the enrollment profile, issued for
//! that device and linked to the account. Tokens live in memory only: after a restart the
//! person starts again from the page Setup Assistant shows.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::info;

use super::{Password, SignInContext, SignInFailure};
use crate::error::{ErrorKind, ServiceError, ServiceResult};
use crate::ports::{EnrollmentAuth, EnrollmentSource, Store};
use crate::MdmService;

/// How long a sign-in page stays usable.
pub const SESSION_TTL: Duration = Duration::from_secs(15 * 60);
/// Wrong passwords one page accepts before the person must start again.
pub const SESSION_ATTEMPTS: u32 = 10;
/// Sign-in pages open at once; more are refused until some expire.
pub const MAX_SESSIONS: usize = 2000;

/// Shared state of the accounts feature, one per service.
pub struct Accounts {
    pub(crate) hashing: Semaphore,
    /// Serialises read-modify-write of account records.
    pub(crate) write_lock: tokio::sync::Mutex<()>,
    pub(crate) dummy_hash: OnceLock<String>,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            hashing: Semaphore::new(super::password::CONCURRENT),
            write_lock: tokio::sync::Mutex::new(()),
            dummy_hash: OnceLock::new(),
            sessions: Mutex::new(HashMap::new()),
        }
    }
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").finish_non_exhaustive()
    }
}

/// A verified device waiting for its user to sign in.
#[derive(Debug, Clone)]
struct Session {
    info: mdm_proto::MachineInfo,
    opened: Instant,
    failures: u32,
}

/// What the `configuration_web_url` GET answers.
#[derive(Debug)]
pub enum WebEnrollment {
    /// No sign-in needed: the enrollment profile.
    Profile(Vec<u8>),
    /// Show the sign-in page with this token.
    SignIn(SignInPage),
}

/// What the sign-in page shows.
#[derive(Debug, Clone)]
pub struct SignInPage {
    /// Posted back with the credentials; `None` when the person must start again.
    pub session: Option<String>,
    pub organization: String,
    pub serial: String,
    /// Why the last attempt failed, for the person at the device.
    pub message: Option<String>,
}

/// A refused sign-in: the page to show again, with the HTTP class of the answer.
#[derive(Debug)]
pub struct SignInRefusal {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub page: SignInPage,
}

impl Accounts {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open(&self, info: &mdm_proto::MachineInfo) -> ServiceResult<String> {
        let token = crate::random_token()?;
        let mut map = self.sessions();
        map.retain(|_, s| s.opened.elapsed() < SESSION_TTL);
        if map.len() >= MAX_SESSIONS {
            return Err(ServiceError::new(
                ErrorKind::Unavailable,
                "SIGN_IN_BUSY",
                "too many sign-ins are in progress; try again in a few minutes",
            ));
        }
        map.insert(
            token.clone(),
            Session {
                info: info.clone(),
                opened: Instant::now(),
                failures: 0,
            },
        );
        Ok(token)
    }

    fn get(&self, token: &str) -> Option<Session> {
        let map = self.sessions();
        map.get(token)
            .filter(|s| s.opened.elapsed() < SESSION_TTL && s.failures < SESSION_ATTEMPTS)
            .cloned()
    }

    /// Counts a failure; `false` once the page is used up (and forgotten).
    fn failed(&self, token: &str) -> bool {
        let mut map = self.sessions();
        let Some(s) = map.get_mut(token) else {
            return false;
        };
        s.failures += 1;
        if s.failures >= SESSION_ATTEMPTS {
            map.remove(token);
            return false;
        }
        true
    }

    fn close(&self, token: &str) {
        self.sessions().remove(token);
    }
}

impl<S: Store> MdmService<S> {
    /// How a device enrolling through ABM is authenticated: from the appliance's record of
    /// the ABM profile the device is assigned. A device ABM has not told us about enrolls
    /// without a user (and is subject to the "pre-enrolled devices only" restriction).
    pub fn enrollment_auth_for(&self, serial: &str) -> ServiceResult<EnrollmentAuth> {
        let key = crate::lifecycle::normalize_serial(serial);
        let Some(f) = self.devices().get(&key) else {
            return Ok(EnrollmentAuth::None);
        };
        let Some(abm) = f.current_abm() else {
            return Ok(EnrollmentAuth::None);
        };
        if abm.profile_uuid.is_empty() {
            return Ok(EnrollmentAuth::None);
        }
        Ok(self
            .store()
            .abm_profiles(&abm.connection)?
            .into_iter()
            .find(|p| p.apple_uuid.as_deref() == Some(abm.profile_uuid.as_str()))
            .map_or(EnrollmentAuth::None, |p| p.authentication))
    }

    /// The `configuration_web_url` GET: the MachineInfo arrives base64 in the
    /// `x-apple-aspen-deviceinfo` header. Answers the profile, or the sign-in page when the
    /// device's enrollment profile asks for user authentication.
    pub async fn ade_web_start(&self, header_value: &str) -> ServiceResult<WebEnrollment> {
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(header_value.trim())
            .map_err(|_| {
                ServiceError::bad_request(
                    "MACHINEINFO_INVALID",
                    "x-apple-aspen-deviceinfo is not valid base64",
                )
            })?;
        let info = self.admit_ade(&der)?;
        match self.enrollment_auth_for(&info.serial)? {
            EnrollmentAuth::None => Ok(WebEnrollment::Profile(
                self.serve_ade_profile(&info, None).await?,
            )),
            EnrollmentAuth::Local => {
                let session = self.accounts().open(&info)?;
                info!(udid = %info.udid, serial = %info.serial, "ADE sign-in page served");
                Ok(WebEnrollment::SignIn(SignInPage {
                    session: Some(session),
                    organization: self.config().organization.clone(),
                    serial: info.serial,
                    message: None,
                }))
            }
        }
    }

    /// The sign-in page's POST. A good sign-in answers the enrollment profile linked to the
    /// account.
    pub async fn ade_web_sign_in(
        &self,
        session: &str,
        username: &str,
        password: Password,
    ) -> Result<Vec<u8>, SignInRefusal> {
        let organization = self.config().organization.clone();
        let refuse =
            |kind, code, serial: &str, session: Option<&str>, message: String| SignInRefusal {
                kind,
                code,
                page: SignInPage {
                    session: session.map(str::to_owned),
                    organization: organization.clone(),
                    serial: serial.to_string(),
                    message: Some(message),
                },
            };
        let failed = |e: ServiceError| {
            refuse(
                e.kind,
                e.code,
                "",
                None,
                format!("Enrollment could not continue: {} Start again.", e.message),
            )
        };
        let Some(s) = self.accounts().get(session) else {
            return Err(refuse(
                ErrorKind::Gone,
                "SIGN_IN_EXPIRED",
                "",
                None,
                "This sign-in page has expired or was used up. Go back and start the enrollment again.".into(),
            ));
        };
        let ctx = SignInContext {
            purpose: "Setup Assistant enrollment",
            device: vec![
                crate::lifecycle::normalize_serial(&s.info.serial),
                s.info.udid.clone(),
            ],
        };
        let result = self
            .sign_in(username, password, &ctx)
            .await
            .map_err(failed)?;
        let user = match result {
            Ok(user) => user,
            Err(why) => {
                let usable = self.accounts().failed(session);
                let keep = usable.then_some(session);
                let (kind, code, message) = match why {
                    SignInFailure::Invalid => (
                        ErrorKind::Unauthorized,
                        "SIGN_IN_FAILED",
                        "The username or password is not correct.".to_string(),
                    ),
                    SignInFailure::Locked { until } => (
                        ErrorKind::Forbidden,
                        "ACCOUNT_LOCKED",
                        format!(
                            "This account is locked after too many failed sign-ins. Try again after {} (UTC), or ask your IT administrator to unlock it.",
                            until.to_rfc3339()
                        ),
                    ),
                    SignInFailure::Disabled => (
                        ErrorKind::Forbidden,
                        "ACCOUNT_DISABLED",
                        "This account is disabled. Ask your IT administrator.".to_string(),
                    ),
                };
                let message = if usable {
                    message
                } else {
                    format!("{message} Too many attempts on this page: go back and start the enrollment again.")
                };
                return Err(refuse(kind, code, &s.info.serial, keep, message));
            }
        };
        self.accounts().close(session);
        let profile = self
            .serve_ade_profile(&s.info, Some(user.username.clone()))
            .await
            .map_err(failed)?;
        info!(udid = %s.info.udid, serial = %s.info.serial, username = user.username, "ADE enrollment profile served after sign-in");
        Ok(profile)
    }

    /// The enrollment profile for a verified ADE device, optionally linked to an account.
    pub(crate) async fn serve_ade_profile(
        &self,
        info: &mdm_proto::MachineInfo,
        user: Option<String>,
    ) -> ServiceResult<Vec<u8>> {
        let profile = self
            .enrollment_profile(EnrollmentSource::Ade {
                udid: info.udid.clone(),
                serial: info.serial.clone(),
                user: user.clone(),
            })
            .await?;
        let mut detail = serde_json::json!({"model": info.product, "os_version": info.os_version});
        let mut summary = "ADE enrollment profile served (MachineInfo verified)".to_string();
        if let Some(u) = &user {
            detail["user"] = serde_json::json!(u);
            summary = format!("ADE enrollment profile served for user {u} (signed in)");
        }
        self.log_activity(crate::lifecycle::activity::entry(
            user.as_deref()
                .map_or_else(|| "device".to_string(), |u| format!("user:{u}"))
                .as_str(),
            "enrollment.profile_served",
            vec![
                crate::lifecycle::normalize_serial(&info.serial),
                info.udid.clone(),
            ],
            crate::ports::ActivityOutcome::Ok,
            summary,
            Some(detail),
        ));
        Ok(profile)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> mdm_proto::MachineInfo {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict><key>UDID</key><string>U1</string><key>SERIAL</key><string>C02S</string>
<key>PRODUCT</key><string>iPad13,18</string><key>VERSION</key><string>21E236</string></dict></plist>"#;
        mdm_proto::parse_machine_info(xml).unwrap()
    }

    #[test]
    fn sessions_are_random_bounded_in_attempts_and_closed_once_used() {
        let a = Accounts::default();
        let t1 = a.open(&info()).unwrap();
        let t2 = a.open(&info()).unwrap();
        assert_ne!(t1, t2);
        assert!(t1.len() >= 43);
        assert_eq!(a.get(&t1).unwrap().info.serial, "C02S");
        for _ in 1..SESSION_ATTEMPTS {
            assert!(a.failed(&t1));
        }
        assert!(!a.failed(&t1), "the last attempt uses the page up");
        assert!(a.get(&t1).is_none());
        assert!(!a.failed("unknown"));
        a.close(&t2);
        assert!(a.get(&t2).is_none());
    }

    #[test]
    fn too_many_open_pages_are_refused() {
        let a = Accounts::default();
        for _ in 0..MAX_SESSIONS {
            a.open(&info()).unwrap();
        }
        assert_eq!(a.open(&info()).unwrap_err().code, "SIGN_IN_BUSY");
    }
}
