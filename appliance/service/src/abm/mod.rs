//! Automated Device Enrollment through Apple Business Manager: connections and their server
//! tokens, device sync, enrollment profiles and their assignment.
//!
//! - **Connections** ([`connections`]): each has its own RSA key pair (the private key held by
//!   the keystore: inside the TPM on a TPM keystore), server token (sealed) and state. A key
//!   pair is *staged* when its certificate is handed out and becomes *current* only once a
//!   token decrypts with it.
//! - **`com.apple.maid` tokens** ([`maid`]): the `GetToken` answer for Managed Apple Account
//!   sign-in, a JWT signed with the current key of the connection that lists the device.
//! - **Sync** ([`sync`]): a full fetch, then incremental syncs; every page's device rows and the
//!   cursor that follows them are committed in one transaction, so a crash resumes from the last
//!   page on disk and never skips an event.
//! - **Profiles and rules** ([`profiles`]): profiles are validated locally, defined with Apple
//!   per connection, and routed to devices by rules (explicit serials first, then attributes in
//!   priority order, then the connection's default).
//! - **Assignment** ([`assign`]): a job that assigns due devices in batches of at most 1000 and
//!   records Apple's per-serial outcome, retrying FAILED and THROTTLED serials after Apple's
//!   `retry_after_seconds` or a cool-down.
//! - **Scheduler** ([`scheduler`]): runs syncs at each connection's interval and assignment
//!   retries when they fall due; "sync now" goes through the same per-connection lock, so two
//!   syncs of one connection never overlap.

pub mod assign;
pub mod connections;
pub mod maid;
pub mod profiles;
pub mod scheduler;
pub mod sync;
pub mod token;
pub mod views;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mdm_proto::abm::ServerToken;
use tokio::sync::Notify;

use crate::error::{ServiceError, ServiceResult};
use crate::ports::{
    AbmBatch, AbmConnectionRecord, AbmConnector, AbmDeviceRecord, AbmEndpoint, AbmError, Store,
};
use crate::MdmService;

/// Apple's production ABM API.
pub const APPLE_ABM_URL: &str = "https://mdmenrollment.apple.com";

/// Keystore purposes of ABM secrets: the held token key, and the sealed OAuth credentials.
pub(crate) const KEY_PURPOSE: &str = "abm-key";
pub(crate) const TOKEN_PURPOSE: &str = "abm-token";

/// How the ABM integration behaves (from the daemon's `[abm]` configuration).
#[derive(Debug, Clone)]
pub struct AbmConfig {
    /// A token this close to expiry is shown as "expiring soon".
    pub expiry_warning: Duration,
    /// Sync interval given to new connections (seconds; 0 disables automatic sync).
    pub default_interval_seconds: u64,
    /// A full re-fetch runs when the last one is older than this (a safety net against missed
    /// events; Apple's cursors expire after 7 days).
    pub full_refetch_interval: Duration,
    /// Devices per fetch/sync page (Apple allows at most 1000).
    pub page_limit: u32,
    /// Cool-down after FAILED/THROTTLED without `retry_after_seconds` (Apple suggests a day).
    pub failure_cooldown: Duration,
    /// Retry delay after an assignment call failed at the transport level.
    pub transport_retry: Duration,
    /// Base URL new connections use unless given one.
    pub default_endpoint: AbmEndpoint,
}

impl Default for AbmConfig {
    fn default() -> Self {
        AbmConfig {
            expiry_warning: crate::authority::days(30),
            default_interval_seconds: 900,
            full_refetch_interval: crate::authority::days(6),
            page_limit: 1000,
            failure_cooldown: crate::authority::days(1),
            transport_retry: Duration::from_secs(600),
            default_endpoint: AbmEndpoint {
                base_url: APPLE_ABM_URL.to_string(),
                ca_pem: None,
            },
        }
    }
}

/// Per-connection run-time state: the lock that serialises its syncs and assignment jobs, and
/// the API client for its current token.
struct ConnRuntime<Cl> {
    busy: Arc<tokio::sync::Mutex<()>>,
    /// A sync is running or waiting for `busy` (a second "sync now" is refused, not queued).
    syncing: Arc<std::sync::atomic::AtomicBool>,
    /// (token generation, endpoint) the client was built for, and the client.
    client: Mutex<Option<(u32, AbmEndpoint, Arc<Cl>)>>,
}

impl<Cl> Default for ConnRuntime<Cl> {
    fn default() -> Self {
        ConnRuntime {
            busy: Arc::new(tokio::sync::Mutex::new(())),
            syncing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            client: Mutex::new(None),
        }
    }
}

struct Inner<S, C: AbmConnector> {
    mdm: MdmService<S>,
    connector: C,
    config: AbmConfig,
    runtimes: Mutex<HashMap<String, Arc<ConnRuntime<C::Client>>>>,
    /// Wakes the scheduler after a change (token upload, settings, a new connection).
    wake: Notify,
}

/// The ABM integration. Cheap to clone.
pub struct AbmService<S, C: AbmConnector> {
    inner: Arc<Inner<S, C>>,
}

impl<S, C: AbmConnector> Clone for AbmService<S, C> {
    fn clone(&self) -> Self {
        AbmService {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: Store, C: AbmConnector> AbmService<S, C> {
    pub fn new(mdm: MdmService<S>, connector: C, config: AbmConfig) -> Self {
        AbmService {
            inner: Arc::new(Inner {
                mdm,
                connector,
                config,
                runtimes: Mutex::new(HashMap::new()),
                wake: Notify::new(),
            }),
        }
    }

    pub fn config(&self) -> &AbmConfig {
        &self.inner.config
    }

    fn mdm(&self) -> &MdmService<S> {
        &self.inner.mdm
    }

    pub fn store(&self) -> &S {
        self.inner.mdm.store()
    }

    fn runtime(&self, name: &str) -> Arc<ConnRuntime<C::Client>> {
        let mut map = locked(&self.inner.runtimes);
        Arc::clone(map.entry(name.to_string()).or_default())
    }

    /// Waits for and takes the connection's lock (syncs, assignment jobs, changes).
    async fn lock(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        Arc::clone(&self.runtime(name).busy).lock_owned().await
    }

    /// Marks a sync of the connection as started; `None` if one is already running or
    /// waiting. The mark is cleared when the returned guard is dropped.
    fn start_sync(&self, name: &str) -> Option<SyncMark> {
        let flag = Arc::clone(&self.runtime(name).syncing);
        if flag.swap(true, std::sync::atomic::Ordering::AcqRel) {
            None
        } else {
            Some(SyncMark(flag))
        }
    }

    /// The stored connection, or `ABM_CONNECTION_NOT_FOUND`.
    pub fn connection_record(&self, name: &str) -> ServiceResult<AbmConnectionRecord> {
        self.store().abm_connection(name)?.ok_or_else(|| {
            ServiceError::not_found(
                "ABM_CONNECTION_NOT_FOUND",
                format!("there is no ABM connection named {name:?}; `mdmctl abm list` shows them"),
            )
        })
    }

    /// The API client for a connection's current token, built once per token.
    fn client(&self, rec: &AbmConnectionRecord) -> ServiceResult<Arc<C::Client>> {
        let Some(token) = &rec.token else {
            return Err(ServiceError::conflict(
                "ABM_NO_TOKEN",
                format!(
                    "ABM connection {:?} has no server token yet: upload one with `mdmctl abm token upload {} FILE.p7m`",
                    rec.name, rec.name
                ),
            ));
        };
        let rt = self.runtime(&rec.name);
        let mut slot = locked(&rt.client);
        if let Some((generation, endpoint, client)) = slot.as_ref() {
            if *generation == token.generation && *endpoint == rec.endpoint {
                return Ok(Arc::clone(client));
            }
        }
        let credentials = self.unseal_token(rec)?;
        let client = Arc::new(
            self.inner
                .connector
                .connect(&rec.endpoint, &credentials)
                .map_err(|e| abm_failure(&rec.name, &e))?,
        );
        *slot = Some((token.generation, rec.endpoint.clone(), Arc::clone(&client)));
        Ok(client)
    }

    fn forget_client(&self, name: &str) {
        let rt = self.runtime(name);
        let mut slot = locked(&rt.client);
        *slot = None;
    }

    fn unseal_token(&self, rec: &AbmConnectionRecord) -> ServiceResult<ServerToken> {
        let Some(token) = &rec.token else {
            return Err(ServiceError::internal(
                "ABM_NO_TOKEN",
                "the connection has no token",
            ));
        };
        let json = self
            .mdm()
            .unseal(TOKEN_PURPOSE, &token.credentials_sealed)?;
        serde_json::from_slice(&json).map_err(|_| {
            ServiceError::internal(
                "ABM_TOKEN_UNREADABLE",
                format!(
                    "the stored server token of {:?} cannot be read; upload the token again",
                    rec.name
                ),
            )
        })
    }

    /// Commits a batch and hands its device records to the device directory; with "add ABM
    /// devices as pre-enrolled" on, the pre-enrollment records for new serials commit with it.
    /// Every ABM write goes through here.
    pub(crate) async fn commit(&self, mut batch: AbmBatch) -> ServiceResult<()> {
        batch
            .preenrolled
            .extend(self.mdm().abm_preenroll_records(&batch.devices));
        let update = crate::lifecycle::directory::AbmUpdate::of(&batch.devices);
        let preenrolled = batch.preenrolled.clone();
        let deleted = batch.delete_connection.clone();
        self.store().abm_write(batch).await?;
        let dir = self.mdm().devices();
        if let Some(name) = deleted {
            dir.remove_abm_connection(&name);
        }
        dir.apply_abm(update);
        if !preenrolled.is_empty() {
            dir.put_preenrolled(preenrolled);
        }
        Ok(())
    }

    /// Stores device records in one transaction; nothing to do for none.
    pub(crate) async fn write_devices(&self, devices: Vec<AbmDeviceRecord>) -> ServiceResult<()> {
        if devices.is_empty() {
            return Ok(());
        }
        self.commit(AbmBatch {
            devices,
            ..AbmBatch::default()
        })
        .await?;
        Ok(())
    }

    /// Stores a connection record.
    pub(crate) async fn write_connection(&self, rec: AbmConnectionRecord) -> ServiceResult<()> {
        self.commit(AbmBatch {
            connection: Some(rec),
            ..AbmBatch::default()
        })
        .await?;
        Ok(())
    }

    /// Which profile each device of the connection should have, from its rules, default and
    /// defined profiles as stored now.
    pub(crate) fn planner(&self, connection: &str) -> ServiceResult<sync::Planner> {
        Ok(sync::Planner::new(
            self.router(connection)?,
            &self.store().abm_profiles(connection)?,
        ))
    }

    /// Every device of a connection, `size` records at a time, by serial number.
    pub(crate) fn device_pages<'a>(
        &'a self,
        connection: &'a str,
        size: usize,
    ) -> impl Iterator<Item = ServiceResult<Vec<AbmDeviceRecord>>> + 'a {
        crate::ports::pages(
            move |after| self.store().abm_devices(connection, after, size),
            |r: &AbmDeviceRecord| r.serial.as_str(),
        )
        .map(|page| page.map_err(Into::into))
    }

    /// Wakes the scheduler so it re-reads connections and due times.
    pub fn wake_scheduler(&self) {
        self.inner.wake.notify_one();
    }
}

/// Clears a connection's "sync running" mark when dropped.
struct SyncMark(Arc<std::sync::atomic::AtomicBool>);

impl Drop for SyncMark {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Takes a lock even if a thread panicked while holding it: the maps it guards hold only
/// caches that stay consistent (each update is a single assignment).
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Checks an admin-chosen name (connections, profiles, rules).
pub(crate) fn validate_name(field: &'static str, name: &str) -> ServiceResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::bad_request(
            "ABM_NAME_INVALID",
            format!("{field} must be 1 to 64 letters, digits, '.', '_' or '-' (got {name:?})"),
        ))
    }
}

/// An ABM call failure as a service error: the operator sees Apple's meaning and what to do.
pub(crate) fn abm_failure(connection: &str, e: &AbmError) -> ServiceError {
    use crate::error::ErrorKind;
    let kind = match e {
        AbmError::Rejected { .. } | AbmError::Config { .. } => ErrorKind::BadRequest,
        AbmError::TermsNotSigned | AbmError::AccessDenied { .. } => ErrorKind::Conflict,
        _ => ErrorKind::Unavailable,
    };
    ServiceError::new(
        kind,
        e.code(),
        format!("ABM connection {connection:?}: {e}"),
    )
}

/// Whether a keystore failure with a connection's key is the key's (the blob cannot be used
/// by this keystore, for good) or the keystore's (it may work again once the TPM does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyFault {
    /// The blob was made by another TPM or keystore, for another purpose, or is damaged: only
    /// a new key pair helps.
    Unusable,
    /// The keystore failed or could not be reached (TPM missing, locked out, busy).
    Unavailable,
}

impl KeyFault {
    pub(crate) fn of(e: &mdm_keystore::KeystoreError) -> KeyFault {
        use mdm_keystore::KeystoreError as K;
        match e {
            K::WrongPurpose { .. }
            | K::NotASealedBlob
            | K::CorruptBlob { .. }
            | K::Unauthentic { .. }
            | K::WrongKey { .. }
            | K::WrongBackend { .. }
            | K::UnsupportedVersion { .. }
            | K::HeldKeyFromOtherTpm { .. } => KeyFault::Unusable,
            _ => KeyFault::Unavailable,
        }
    }
}

/// A keystore failure with the private key of `connection` as the admin sees it: a key this
/// appliance cannot use (made under another TPM, say after moving the data to new hardware)
/// needs a new key pair registered with ABM; a keystore that does not answer needs fixing.
pub(crate) fn key_failure(connection: &str, e: &mdm_keystore::KeystoreError) -> ServiceError {
    use crate::error::ErrorKind;
    let why = match e {
        // The keystore's own sentence names the steps with a placeholder: say them for this
        // connection instead.
        mdm_keystore::KeystoreError::HeldKeyFromOtherTpm {
            key_storage_key,
            tpm_storage_key,
            ..
        } => format!(
            "it was created inside another TPM (storage key {key_storage_key}, this TPM's is \
             {tpm_storage_key}): the appliance was restored onto new hardware or this TPM was \
             cleared, and a key made inside a TPM never leaves it"
        ),
        other => format!("{other}; it was made under another TPM or keystore"),
    };
    match KeyFault::of(e) {
        KeyFault::Unusable => ServiceError::conflict(
            "ABM_KEY_UNUSABLE",
            format!(
                "the private key of ABM connection {connection:?} cannot be used by this \
                 appliance's keystore: {why}. Run `mdmctl abm public-key {connection} \
                 --new`, upload the new public key to the MDM server in Apple Business \
                 Manager, then download the server's new token and upload it with `mdmctl abm \
                 token upload {connection} FILE.p7m`"
            ),
        ),
        KeyFault::Unavailable => ServiceError::new(
            ErrorKind::Unavailable,
            "ABM_KEY_UNAVAILABLE",
            format!(
                "the private key of ABM connection {connection:?} could not be used: {e}; the \
                 keystore must work again first (`mdmctl keystore status` shows it)"
            ),
        ),
    }
}

/// A connection as created, with a test endpoint, for unit tests.
#[cfg(test)]
pub(crate) fn test_connection(name: &str) -> AbmConnectionRecord {
    AbmConnectionRecord::new(
        name,
        crate::ports::AbmEndpoint {
            base_url: "https://abm.test".into(),
            ca_pem: None,
        },
        crate::ports::Timestamp(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Timestamp;

    #[test]
    fn key_failures_say_what_to_do() {
        use mdm_keystore::KeystoreError as K;
        let other = K::WrongBackend {
            blob: mdm_keystore::Backend::Software,
            sealer: mdm_keystore::Backend::Tpm,
        };
        let e = key_failure("north", &other);
        assert_eq!(e.code, "ABM_KEY_UNUSABLE");
        assert_eq!(e.kind, crate::error::ErrorKind::Conflict);
        assert!(
            e.message.contains("mdmctl abm public-key north --new"),
            "{e}"
        );
        assert!(e.message.contains("mdmctl abm token upload north"), "{e}");

        let moved = K::HeldKeyFromOtherTpm {
            purpose: KEY_PURPOSE.into(),
            key_storage_key: "000b1111".into(),
            tpm_storage_key: "000b2222".into(),
        };
        let e = key_failure("north", &moved);
        assert_eq!(e.code, "ABM_KEY_UNUSABLE");
        assert!(e.message.contains("inside another TPM"), "{e}");
        assert!(e.message.contains("000b1111"), "{e}");
        assert!(
            e.message.contains("mdmctl abm public-key north --new"),
            "{e}"
        );
        assert!(!e.message.contains("NAME"), "{e}");
        assert!(!e.message.contains("  "), "{e}");

        let down = K::TpmUnavailable {
            tcti: "device:/dev/tpmrm0".into(),
            library: "libtss2-tcti-device0",
            detail: "No such file or directory".into(),
        };
        let e = key_failure("north", &down);
        assert_eq!(e.code, "ABM_KEY_UNAVAILABLE");
        assert_eq!(e.kind, crate::error::ErrorKind::Unavailable);
        assert!(e.message.contains("could not reach the TPM"), "{e}");
        assert!(!e.message.contains("--new"), "{e}");
    }

    #[test]
    fn names() {
        assert!(validate_name("name", "district-1.north_2").is_ok());
        assert!(validate_name("name", "").is_err());
        assert!(validate_name("name", "a b").is_err());
        assert!(validate_name("name", &"x".repeat(65)).is_err());
    }

    #[test]
    fn apple_times() {
        let parse = Timestamp::parse_rfc3339;
        assert_eq!(parse("1970-01-01T00:00:01Z"), Some(Timestamp(1000)));
        assert_eq!(
            parse("2027-01-01T00:00:00+01:00").map(|t| t.0),
            Some(1_798_758_000_000)
        );
        assert_eq!(parse("yesterday"), None);
        assert_eq!(parse(""), None);
    }
}
