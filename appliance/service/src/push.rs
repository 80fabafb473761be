//! Waking devices: the push certificate's key and CSR, and the push queue.
//!
//! Devices fetch commands only after a push. The service marks enrollments that are owed a
//! push (a command was queued, an admin asked); a pusher task ([`run_pusher`]) takes them from
//! the [`PushQueue`] in batches and hands them to a [`PushProvider`] (APNs). Nothing about
//! pending pushes is kept only in memory: "owed a push" is "has a queued command", so after a
//! restart the pusher derives the set from the store, and it re-pushes devices that still have
//! commands every `repush_interval`, because APNs keeps only the latest push per offline device.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use mdm_keystore::SealedBlob;
use mdm_pki::{CertificationRequest, KeyAlgorithm, Name, PrivateKey};
use tokio::sync::{oneshot, watch, Notify};
use tracing::{debug, info, warn};

use crate::error::{ServiceError, ServiceResult};
use crate::ports::{
    EnrollmentState, PushIdentity, PushMessage, PushOutcome, PushProvider, PushProviderStatus,
    PushRecord, Store, Timestamp,
};
use crate::MdmService;

pub(crate) const PUSH_KEY: &str = "push/key.sealed";
const PUSH_KEY_PURPOSE: &str = "push-key";
/// Warnings about the push certificate start this long before it expires.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

type Waiter = (Vec<String>, oneshot::Sender<Vec<(String, PushOutcome)>>);

#[derive(Default)]
struct QueueState {
    /// Enrollments owed a push, coalesced: a thousand commands for one device is one push.
    dirty: BTreeSet<String>,
    /// Admin requests waiting for their outcome.
    waiters: Vec<Waiter>,
    /// Bumped when the push certificate changes, so the pusher reloads its identity.
    identity_version: u64,
    status: Option<PushProviderStatus>,
}

/// Enrollments owed a push, shared between the service (which marks) and the pusher task
/// (which drains).
#[derive(Default)]
pub struct PushQueue {
    state: Mutex<QueueState>,
    notify: Notify,
}

impl std::fmt::Debug for PushQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushQueue").finish_non_exhaustive()
    }
}

impl PushQueue {
    /// Owe these enrollments a push.
    pub fn mark<I: IntoIterator<Item = String>>(&self, ids: I) {
        if let Ok(mut s) = self.state.lock() {
            s.dirty.extend(ids);
        }
        self.notify.notify_one();
    }

    /// Push these now and report what happened.
    pub fn request(&self, ids: Vec<String>) -> oneshot::Receiver<Vec<(String, PushOutcome)>> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut s) = self.state.lock() {
            s.waiters.push((ids, tx));
        }
        self.notify.notify_one();
        rx
    }

    fn identity_changed(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.identity_version += 1;
        }
        self.notify.notify_one();
    }

    /// The pusher's last reported status (`None` until a pusher runs).
    pub fn provider_status(&self) -> Option<PushProviderStatus> {
        self.state.lock().ok().and_then(|s| s.status.clone())
    }

    fn take(&self) -> (Vec<String>, Vec<Waiter>, u64) {
        match self.state.lock() {
            Ok(mut s) => {
                let dirty = std::mem::take(&mut s.dirty).into_iter().collect();
                (dirty, std::mem::take(&mut s.waiters), s.identity_version)
            }
            Err(_) => (Vec::new(), Vec::new(), 0),
        }
    }

    fn set_status(&self, status: PushProviderStatus) {
        if let Ok(mut s) = self.state.lock() {
            s.status = Some(status);
        }
    }
}

/// How the pusher behaves.
#[derive(Debug, Clone, Copy)]
pub struct PushSettings {
    /// Devices that still have queued commands are pushed again this often.
    pub repush_interval: Duration,
    /// Most pushes handed to the provider at once.
    pub batch: usize,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            repush_interval: Duration::from_secs(4 * 3600),
            batch: 10_000,
        }
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl<S: Store> MdmService<S> {
    /// The queue of owed pushes.
    pub fn push_queue(&self) -> &PushQueue {
        &self.inner.pushes
    }

    fn push_key(&self) -> ServiceResult<Option<PrivateKey>> {
        let Some(sealed) = self.store().setting(PUSH_KEY)? else {
            return Ok(None);
        };
        let blob = SealedBlob::from_bytes(&sealed)
            .map_err(|e| ServiceError::internal("KEY_UNSEAL_FAILED", format!("push key: {e}")))?;
        let pkcs8 = self
            .sealer()
            .unseal(PUSH_KEY_PURPOSE, &blob)
            .map_err(|e| ServiceError::internal("KEY_UNSEAL_FAILED", format!("push key: {e}")))?;
        PrivateKey::from_pkcs8_der(&pkcs8)
            .map(Some)
            .map_err(|e| ServiceError::internal("PKI_FAILURE", format!("push key: {e}")))
    }

    /// A certificate signing request for the MDM push certificate (PEM). The key is created on
    /// first use, sealed, and kept: renewals in Apple's portal reuse it, so the topic and the
    /// key stay with the appliance.
    pub async fn push_csr(&self) -> ServiceResult<String> {
        let key = match self.push_key()? {
            Some(k) => k,
            None => {
                let key = PrivateKey::generate(KeyAlgorithm::Rsa2048)
                    .map_err(|e| ServiceError::internal("PKI_FAILURE", format!("push key: {e}")))?;
                let blob = self
                    .sealer()
                    .seal(PUSH_KEY_PURPOSE, &key.to_pkcs8_der())
                    .map_err(|e| {
                        ServiceError::internal("KEY_SEAL_FAILED", format!("push key: {e}"))
                    })?;
                self.store().put_setting(PUSH_KEY, blob.to_bytes()).await?;
                info!("push key created (sealed)");
                key
            }
        };
        let org = &self.config().organization;
        let name = Name {
            common_name: format!("{org} MDM Push"),
            organization: Some(org.clone()),
            organizational_unit: None,
            uid: None,
        };
        let csr = CertificationRequest::build(&name, &key, None)
            .map_err(|e| ServiceError::internal("PKI_FAILURE", format!("push CSR: {e}")))?;
        Ok(pem("CERTIFICATE REQUEST", csr.der()))
    }

    /// Checks an imported push certificate against the appliance's push key.
    pub(crate) fn check_push_cert_key(&self, cert: &mdm_pki::Certificate) -> ServiceResult<()> {
        let key = self.push_key()?.ok_or_else(|| {
            ServiceError::conflict(
                "PUSH_KEY_MISSING",
                "the appliance has no push key yet: create a CSR with `mdmctl push-cert csr`, have it signed and uploaded to Apple, then import the certificate Apple returns",
            )
        })?;
        if cert.public_key_der() != key.public_key_der() {
            return Err(ServiceError::bad_request(
                "PUSH_CERT_KEY_MISMATCH",
                "this certificate was not issued for the appliance's push key; upload the CSR from `mdmctl push-cert csr` to Apple and import the certificate it returns",
            ));
        }
        Ok(())
    }

    pub(crate) fn push_identity_changed(&self) {
        self.push_queue().identity_changed();
    }

    /// The identity a push provider should use, if a certificate and its key are present.
    pub fn push_identity(&self) -> ServiceResult<Option<PushIdentity>> {
        let (Some(cert_der), Some(topic), Some(key)) = (
            self.store().setting(crate::settings::PUSH_CERT_KEY)?,
            self.topic(),
            self.push_key()?,
        ) else {
            return Ok(None);
        };
        Ok(Some(PushIdentity {
            cert_chain_der: vec![cert_der],
            key_pkcs8_der: key.to_pkcs8_der(),
            topic,
        }))
    }

    /// Ask for an immediate push to these enrollments (admin "push now").
    pub fn request_push(&self, ids: Vec<String>) -> oneshot::Receiver<Vec<(String, PushOutcome)>> {
        self.push_queue().request(ids)
    }

    fn push_message(&self, id: &str) -> ServiceResult<Result<PushMessage, &'static str>> {
        let Some(rec) = self.store().enrollment(id)? else {
            return Ok(Err("unknown enrollment"));
        };
        if rec.state != EnrollmentState::Enrolled {
            return Ok(Err("not enrolled"));
        }
        if rec.push_invalid.is_some() {
            return Ok(Err("push token invalid"));
        }
        let Some(push) = rec.push else {
            return Ok(Err("no push token"));
        };
        Ok(Ok(PushMessage {
            enrollment_id: rec.id,
            token_hex: push.token_hex,
            push_magic: push.push_magic,
            topic: push.topic,
        }))
    }

    /// Push to these enrollments through `provider` and record the outcomes.
    pub async fn push_to<P: PushProvider>(
        &self,
        provider: &P,
        ids: &[String],
    ) -> ServiceResult<Vec<(String, PushOutcome)>> {
        let mut out: Vec<(String, Option<PushOutcome>)> = Vec::with_capacity(ids.len());
        let mut messages = Vec::new();
        for id in ids {
            match self.push_message(id)? {
                Ok(m) => {
                    messages.push(m);
                    out.push((id.clone(), None));
                }
                Err(why) => out.push((
                    id.clone(),
                    Some(PushOutcome::Failed {
                        reason: why.to_string(),
                    }),
                )),
            }
        }
        let outcomes = provider.push(messages).await;
        let now = Timestamp::now();
        let mut records = Vec::new();
        let mut results = outcomes.into_iter();
        for (id, slot) in &mut out {
            if slot.is_some() {
                continue;
            }
            let outcome = results.next().unwrap_or(PushOutcome::Failed {
                reason: "no outcome".into(),
            });
            match &outcome {
                PushOutcome::Sent { .. } => {
                    records.push((id.clone(), PushRecord::Sent { at: now }))
                }
                PushOutcome::InvalidToken { reason, .. } => {
                    warn!(enrollment = %id, reason, "push token is permanently invalid: the device will not be pushed until it sends a new token");
                    records.push((
                        id.clone(),
                        PushRecord::Invalid {
                            reason: reason.clone(),
                            at: now,
                        },
                    ));
                }
                PushOutcome::CertificateRejected { reason, .. } => {
                    warn!(enrollment = %id, reason, "the push service refused the push certificate or topic");
                }
                PushOutcome::Failed { reason } => debug!(enrollment = %id, reason, "push failed"),
            }
            *slot = Some(outcome);
        }
        if !records.is_empty() {
            self.store().record_pushes(records).await?;
            self.devices().pushes_recorded(&out, now);
        }
        Ok(out
            .into_iter()
            .map(|(id, o)| {
                (
                    id,
                    o.unwrap_or(PushOutcome::Failed {
                        reason: "no outcome".into(),
                    }),
                )
            })
            .collect())
    }

    /// Every enrollment that has queued commands (the pushes owed after a restart).
    fn owed_pushes(&self, stale_before: Option<Timestamp>) -> ServiceResult<Vec<String>> {
        let mut out = Vec::new();
        let queued = crate::ports::pages(
            |after| self.store().enrollments_with_queued(after, 1000),
            |id: &String| id.as_str(),
        );
        for page in queued {
            for id in page? {
                let due = match stale_before {
                    None => true,
                    Some(limit) => self
                        .store()
                        .enrollment(&id)?
                        .is_some_and(|e| e.last_push_at.is_none_or(|t| t < limit)),
                };
                if due {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }
}

/// The pusher task: drains the push queue into `provider`, re-pushes devices with pending
/// commands, reloads the push identity when it changes, and ends when `stop` turns true.
pub async fn run_pusher<S: Store, P: PushProvider>(
    service: MdmService<S>,
    provider: P,
    settings: PushSettings,
    mut stop: watch::Receiver<bool>,
) {
    let mut loaded_version = u64::MAX;
    // After a restart: every device with queued commands is owed a push.
    match service.owed_pushes(None) {
        Ok(ids) if !ids.is_empty() => {
            info!(
                devices = ids.len(),
                "pushing devices with commands queued before the restart"
            );
            service.push_queue().mark(ids);
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot list devices owed a push"),
    }
    let mut repush = tokio::time::interval(settings.repush_interval.max(Duration::from_secs(60)));
    repush.tick().await;
    loop {
        let (dirty, waiters, version) = service.push_queue().take();
        if version != loaded_version {
            loaded_version = version;
            let identity = service.push_identity().unwrap_or_else(|e| {
                warn!(error = %e, "cannot load the push identity");
                None
            });
            let has = identity.is_some();
            match provider.set_identity(identity) {
                Ok(()) if has => info!("push identity loaded"),
                Ok(()) => info!("no push certificate: pushes are off until one is imported"),
                Err(e) => warn!(error = %e, "the push provider refused the push identity"),
            }
        }
        for (ids, reply) in waiters {
            let outcomes = service.push_to(&provider, &ids).await.unwrap_or_else(|e| {
                ids.iter()
                    .map(|id| {
                        (
                            id.clone(),
                            PushOutcome::Failed {
                                reason: e.to_string(),
                            },
                        )
                    })
                    .collect()
            });
            let _ = reply.send(outcomes);
        }
        for chunk in dirty.chunks(settings.batch.max(1)) {
            match service.push_to(&provider, chunk).await {
                Ok(outcomes) => {
                    let sent = outcomes
                        .iter()
                        .filter(|(_, o)| matches!(o, PushOutcome::Sent { .. }))
                        .count();
                    debug!(pushed = chunk.len(), sent, "push batch");
                }
                Err(e) => warn!(error = %e, "push batch failed"),
            }
        }
        service.push_queue().set_status(provider.status());
        tokio::select! {
            _ = service.push_queue().notify.notified() => {}
            _ = repush.tick() => {
                service.warn_push_cert_expiry();
                let stale = Timestamp::now().minus(settings.repush_interval);
                match service.owed_pushes(Some(stale)) {
                    Ok(ids) if !ids.is_empty() => {
                        debug!(devices = ids.len(), "re-pushing devices that still have commands");
                        service.push_queue().mark(ids);
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "cannot list devices owed a push"),
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
