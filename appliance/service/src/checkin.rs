//! The check-in and command protocol: device identity on every request, check-in messages,
//! command reports and handing out the next queued command.

use std::collections::HashSet;
use std::time::SystemTime;

use base64::Engine as _;
use mdm_pki::Certificate;
use mdm_proto::{CheckinMessage, CommandReport, CommandStatus, DeviceMessage};
use tracing::{debug, info, warn};

use crate::error::{ErrorKind, ServiceError, ServiceResult};
use crate::lifecycle::activity::entry;
use crate::ports::ActivityOutcome;
use crate::ports::{
    AuthenticateRecord, CommandResult, DeliveryStatus, DeviceFacts, EnrollmentBinding,
    EnrollmentState, NextCommand, PushTarget, QueuedCommand, ResultOutcome, Store, Timestamp,
    TokenUpdateRecord,
};
use crate::{sha256_hex, MdmService};

/// How stale `last_seen_at` may get before an Idle or a command report writes it again.
const LAST_SEEN_GRANULARITY_MS: i64 = 60_000;

/// Whether a request at `now` should write the enrollment's last-seen time: only when the
/// stored one is at least [`LAST_SEEN_GRANULARITY_MS`] old. Last-seen times are for humans,
/// and each write is a page in a group commit shared with others.
fn last_seen_is_stale(rec: &EnrollmentBinding, now: Timestamp) -> bool {
    now.0.saturating_sub(rec.last_seen_at.0) >= LAST_SEEN_GRANULARITY_MS
}

/// A TLS client certificate with the hash identities are bound by, made once per connection
/// (a device sends several requests on one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    der: Vec<u8>,
    sha256: String,
}

impl PeerCertificate {
    pub fn new(der: Vec<u8>) -> Self {
        let sha256 = sha256_hex(&der);
        PeerCertificate { der, sha256 }
    }

    /// The leaf certificate, DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// SHA-256 of the DER, hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// One request from a device, as the web layer received it.
#[derive(Debug, Clone, Copy)]
pub struct DeviceRequest<'a> {
    pub body: &'a [u8],
    /// The `Mdm-Signature` header, if any.
    pub mdm_signature: Option<&'a str>,
    /// The TLS client certificate, if the device presented one. The TLS layer has already
    /// verified that it chains to the appliance CA.
    pub tls_certificate: Option<&'a PeerCertificate>,
}

/// A successful answer to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceReply {
    /// 200 with an empty body.
    Empty,
    /// 200 with a plist body.
    Plist(Vec<u8>),
    /// 200 with a JSON body (declarative management).
    Json(Vec<u8>),
}

/// Per-connection memory: which commands a device answered NotNow to on this connection
/// (the protocol skips them until it reconnects), and the bindings its requests were checked
/// against, so that the next request need not read its enrollment again.
pub trait ConnectionScratch {
    fn not_now(&self, enrollment_id: &str) -> HashSet<String>;
    fn add_not_now(&self, enrollment_id: &str, command_uuid: &str);
    /// The binding kept for `enrollment_id`, if it was kept at `version` (see
    /// [`crate::ports::EnrollmentStore::binding_version`]).
    fn kept_binding(&self, enrollment_id: &str, version: u64) -> Option<EnrollmentBinding>;
    /// Keeps `binding`, read at `version`, for the connection's later requests.
    fn keep_binding(&self, binding: &EnrollmentBinding, version: u64);
}

/// The identity a request proved. The certificate is parsed only when a new binding needs it
/// (Authenticate, renewal): the hash is all an established enrollment is checked against.
struct Identity<'a> {
    sha256: String,
    cert: CertSource<'a>,
}

enum CertSource<'a> {
    Parsed(Box<Certificate>),
    /// The TLS client certificate, borrowed from the connection.
    Der(&'a [u8]),
}

impl Identity<'_> {
    fn certificate(&self) -> Option<Certificate> {
        match &self.cert {
            CertSource::Parsed(c) => Some(c.as_ref().clone()),
            CertSource::Der(der) => Certificate::from_der(der).ok(),
        }
    }
}

fn unauthorized(code: &'static str, msg: impl Into<String>) -> ServiceError {
    ServiceError::unauthorized(code, msg)
}

impl<S: Store> MdmService<S> {
    /// Establish which certificate signed (or carried) this request.
    fn identify<'r>(&self, req: &DeviceRequest<'r>) -> ServiceResult<Identity<'r>> {
        let tls = req.tls_certificate.map(PeerCertificate::sha256);
        match req.mdm_signature {
            Some(sig) => {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(sig.trim())
                    .map_err(|_| {
                        unauthorized("SIGNATURE_INVALID", "Mdm-Signature is not base64")
                    })?;
                let verified = mdm_pki::cms::verify(&der, Some(req.body)).map_err(|e| {
                    unauthorized(
                        "SIGNATURE_INVALID",
                        format!("Mdm-Signature does not verify: {e}"),
                    )
                })?;
                let sha = sha256_hex(verified.signer.der());
                if let Some(tls) = tls {
                    if tls != sha {
                        return Err(unauthorized(
                            "IDENTITY_MISMATCH",
                            "the TLS client certificate and the Mdm-Signature signer differ",
                        ));
                    }
                }
                Ok(Identity {
                    sha256: sha,
                    cert: CertSource::Parsed(Box::new(verified.signer)),
                })
            }
            None => match (tls, req.tls_certificate) {
                (Some(sha), Some(cert)) => Ok(Identity {
                    sha256: sha.to_owned(),
                    cert: CertSource::Der(cert.der()),
                }),
                _ => Err(unauthorized(
                    "IDENTITY_MISSING",
                    "the request carries neither an Mdm-Signature nor a TLS client certificate",
                )),
            },
        }
    }

    /// Check that a certificate presented for a new binding was issued by this appliance.
    fn check_issued_here(
        &self,
        id: &Identity<'_>,
    ) -> ServiceResult<crate::ports::IssuedCertRecord> {
        let cert = id.certificate().ok_or_else(|| {
            unauthorized(
                "IDENTITY_INVALID",
                "the client certificate could not be parsed",
            )
        })?;
        mdm_pki::verify_chain(
            &cert,
            &[],
            std::slice::from_ref(&self.authority().ca.cert),
            SystemTime::now(),
        )
        .map_err(|e| {
            unauthorized(
                "IDENTITY_UNTRUSTED",
                format!("identity not issued by this appliance: {e}"),
            )
        })?;
        self.store().issued(&id.sha256)?.ok_or_else(|| {
            unauthorized(
                "IDENTITY_UNKNOWN",
                "identity certificate is not in this appliance's issuance records",
            )
        })
    }

    /// [`Self::bound_enrollment`] for a request on a connection that may have checked the
    /// same enrollment and identity before: the binding it kept is used while the enrollment's
    /// record has not been written since. Devices send their reports this way, several on
    /// one connection.
    async fn kept_enrollment(
        &self,
        enrollment_id: &str,
        id: &Identity<'_>,
        scratch: &(dyn ConnectionScratch + Sync),
    ) -> ServiceResult<EnrollmentBinding> {
        // Taken before the read: a write that lands in between moves it, and the binding read
        // here is then read again by the next request instead of being trusted.
        let version = self.store().binding_version(enrollment_id);
        if let Some(kept) = scratch.kept_binding(enrollment_id, version) {
            // Only a binding that passed `bound_enrollment`'s checks is kept, and the record has not
            // changed since; the identity may have (`Mdm-Signature` is per request).
            if kept.identity_sha256 == id.sha256 {
                return Ok(kept);
            }
        }
        let rec = self.bound_enrollment(enrollment_id, id).await?;
        scratch.keep_binding(&rec, version);
        Ok(rec)
    }

    /// The enrollment a request belongs to, if its identity matches the bound one. A device
    /// whose identity was renewed by SCEP (RenewalReq signed with the bound certificate) is
    /// moved to the new certificate on its first request with it.
    async fn bound_enrollment(
        &self,
        enrollment_id: &str,
        id: &Identity<'_>,
    ) -> ServiceResult<EnrollmentBinding> {
        let mut rec = self
            .store()
            .enrollment_binding(enrollment_id)?
            .ok_or_else(|| {
                unauthorized(
                    "ENROLLMENT_UNKNOWN",
                    format!("no enrollment {enrollment_id}; the device must enroll again"),
                )
            })?;
        if rec.state == EnrollmentState::CheckedOut {
            return Err(unauthorized(
                "ENROLLMENT_CHECKED_OUT",
                format!("enrollment {enrollment_id} checked out; the device must enroll again"),
            ));
        }
        if rec.identity_sha256 == id.sha256 {
            return Ok(rec);
        }
        let renewed_from = self
            .store()
            .issued(&id.sha256)?
            .and_then(|r| r.renewed_from);
        if renewed_from.as_deref() == Some(rec.identity_sha256.as_str()) {
            self.check_issued_here(id)?;
            // Compare-and-swap: a concurrent rebind or re-enrollment wins.
            if self
                .store()
                .rebind_identity(
                    enrollment_id,
                    &rec.identity_sha256,
                    &id.sha256,
                    Timestamp::now(),
                )
                .await?
            {
                info!(
                    enrollment = enrollment_id,
                    "identity renewed: enrollment moved to the new certificate"
                );
                rec.identity_sha256.clone_from(&id.sha256);
                return Ok(rec);
            }
        }
        warn!(
            enrollment = enrollment_id,
            "request presented a certificate other than the bound one"
        );
        Err(unauthorized(
            "IDENTITY_MISMATCH",
            format!("enrollment {enrollment_id} is bound to another certificate"),
        ))
    }

    /// A message to the check-in URL.
    pub async fn checkin(&self, req: DeviceRequest<'_>) -> ServiceResult<DeviceReply> {
        let identity = self.identify(&req)?;
        let msg = mdm_proto::parse_checkin(req.body)
            .map_err(|e| ServiceError::bad_request("CHECKIN_INVALID", e.to_string()))?;
        self.handle_checkin(identity, msg).await
    }

    /// A message to the server URL: normally a command report; check-ins are accepted here too
    /// (devices send them there when a profile has no CheckInURL).
    pub async fn connect(
        &self,
        req: DeviceRequest<'_>,
        scratch: &(dyn ConnectionScratch + Sync),
    ) -> ServiceResult<DeviceReply> {
        let identity = self.identify(&req)?;
        let msg = mdm_proto::parse_device_message(req.body)
            .map_err(|e| ServiceError::bad_request("REPORT_INVALID", e.to_string()))?;
        match msg {
            DeviceMessage::Checkin(c) => self.handle_checkin(identity, c).await,
            DeviceMessage::Report(r) => self.handle_report(identity, r, scratch).await,
        }
    }

    async fn handle_checkin(
        &self,
        identity: Identity<'_>,
        msg: CheckinMessage,
    ) -> ServiceResult<DeviceReply> {
        let now = Timestamp::now();
        let eref = msg.enrollment_ref();
        let id = eref.id();
        match msg {
            CheckinMessage::Authenticate(a) => {
                if eref.user_id.is_some() {
                    return Err(ServiceError::bad_request(
                        "CHECKIN_INVALID",
                        "Authenticate is only valid on the device channel",
                    ));
                }
                let issued = self.check_issued_here(&identity)?;
                // An identity whose enrollment ended (the device checked out, or the appliance
                // unenrolled it) cannot start a new one: a device that really enrolls again
                // installs a new profile and gets a new identity through SCEP.
                if let Some(prev) = self.store().enrollment(&id)? {
                    if prev.state == crate::ports::EnrollmentState::CheckedOut
                        && prev.identity_sha256 == identity.sha256
                    {
                        warn!(enrollment = %id, "Authenticate with the identity of an ended enrollment refused");
                        return Err(unauthorized(
                            "IDENTITY_RETIRED",
                            "this identity belongs to an enrollment that ended (checked out, or unenrolled by the appliance); enroll the device again",
                        ));
                    }
                }
                let how = match &issued.source {
                    Some(crate::ports::EnrollmentSource::Ade { .. }) => "ADE",
                    _ => "manual",
                };
                self.check_enrollment_allowed(a.serial_number.as_deref(), how)?;
                if let Some(crate::ports::EnrollmentSource::Ade { udid, .. }) = &issued.source {
                    if a.enrollment.udid().is_some_and(|u| u != udid) {
                        warn!(enrollment = %id, expected = %udid, "identity issued for another device");
                        return Err(ServiceError::forbidden(
                            "IDENTITY_FOR_OTHER_DEVICE",
                            "this identity was issued for another device's enrollment",
                        ));
                    }
                }
                self.store()
                    .authenticate(AuthenticateRecord {
                        id: id.clone(),
                        identity_sha256: identity.sha256,
                        topic: a.enrollment.topic().map(str::to_owned),
                        facts: DeviceFacts {
                            serial_number: a.serial_number.clone(),
                            model: a.model.clone(),
                            model_name: a.model_name.clone(),
                            product_name: a.product_name.clone(),
                            os_version: a.os_version.clone(),
                            build_version: a.build_version.clone(),
                            device_name: a.device_name.clone(),
                            imei: a.imei.clone(),
                            meid: a.meid.clone(),
                        },
                        source: issued.source,
                        at: now,
                    })
                    .await?;
                if let (Some(device), Some(ours)) = (a.enrollment.topic(), self.topic()) {
                    if device != ours {
                        // Pushes go to our topic; a device enrolled under another one never
                        // wakes up. Usually a profile from before a forced push-cert change.
                        warn!(enrollment = %id, device_topic = device, current_topic = %ours, "device enrolled with another push topic: it cannot be woken; re-enroll it");
                    }
                }
                info!(enrollment = %id, serial = ?a.serial_number, "Authenticate");
                let targets = self.refresh_device(&id)?;
                self.forget_installs(&id).await?;
                if let Some(serial) = targets.first() {
                    self.retire_invitation(serial).await;
                }
                self.log_activity(entry(
                    "device",
                    "enrollment.authenticated",
                    targets,
                    ActivityOutcome::Ok,
                    format!("{how} enrollment started: identity issued and Authenticate received"),
                    None,
                ));
                Ok(DeviceReply::Empty)
            }
            CheckinMessage::TokenUpdate(t) => {
                // A user channel's first TokenUpdate is its first message: it is authorised by
                // the device channel's identity.
                self.bound_enrollment(&eref.device_id, &identity).await?;
                let unlock = match t.unlock_token.as_deref() {
                    Some(u) if !u.is_empty() => Some(self.seal("unlock-token", u)?),
                    _ => None,
                };
                let outcome = self
                    .store()
                    .token_update(TokenUpdateRecord {
                        id: id.clone(),
                        device_id: eref.device_id.clone(),
                        user_id: eref.user_id.clone(),
                        user_short_name: eref.user_short_name.clone(),
                        identity_sha256: identity.sha256,
                        push: PushTarget {
                            token_hex: hex::encode(&t.token),
                            push_magic: t.push_magic.clone(),
                            topic: t.enrollment.topic().unwrap_or_default().to_string(),
                        },
                        unlock_token_sealed: unlock,
                        awaiting_configuration: t.awaiting_configuration,
                        at: now,
                    })
                    .await?
                    .ok_or_else(|| {
                        unauthorized(
                            "ENROLLMENT_UNKNOWN",
                            format!("no enrollment {}", eref.device_id),
                        )
                    })?;
                let targets = self.refresh_device(&id)?;
                if outcome.activated {
                    info!(enrollment = %id, awaiting_configuration = t.awaiting_configuration, "enrolled (first TokenUpdate)");
                    self.log_activity(entry(
                        "device",
                        "enrollment.enrolled",
                        targets,
                        ActivityOutcome::Ok,
                        if t.awaiting_configuration {
                            "enrolled (first TokenUpdate); held in Setup Assistant until released"
                        } else {
                            "enrolled (first TokenUpdate)"
                        },
                        None,
                    ));
                } else {
                    debug!(enrollment = %id, "TokenUpdate");
                }
                if eref.user_id.is_none() {
                    // The device's profiles are part of its baseline: queue them before
                    // deciding whether it can be released. Cheap when nothing is missing, and
                    // every TokenUpdate retries a reconcile that failed.
                    if let Some(serial) = self.devices().key_of(&id) {
                        self.reconcile_devices([serial], "system").await?;
                    }
                    if t.awaiting_configuration {
                        self.maybe_auto_release(&id).await?;
                    }
                }
                Ok(DeviceReply::Empty)
            }
            CheckinMessage::CheckOut(_) => {
                self.bound_enrollment(&id, &identity).await?;
                self.touch(&id, &eref.device_id, now).await?;
                self.store().check_out(&id, now).await?;
                info!(enrollment = %id, "CheckOut: device left management");
                let targets = self.refresh_device(&id)?;
                if eref.user_id.is_none() {
                    self.forget_installs(&id).await?;
                }
                self.log_activity(entry(
                    "device",
                    "enrollment.checked_out",
                    targets,
                    ActivityOutcome::Ok,
                    "CheckOut: the MDM profile was removed from the device",
                    None,
                ));
                Ok(DeviceReply::Empty)
            }
            CheckinMessage::UserAuthenticate(_) => {
                self.bound_enrollment(&eref.device_id, &identity).await?;
                debug!(enrollment = %id, "UserAuthenticate declined (user channels need no extra authentication here)");
                Err(ServiceError::new(
                    ErrorKind::Gone,
                    "USER_AUTH_DECLINED",
                    "user authentication is not offered by this server",
                ))
            }
            CheckinMessage::SetBootstrapToken(b) => {
                self.bound_enrollment(&id, &identity).await?;
                let sealed = match b.bootstrap_token.as_deref() {
                    Some(t) if !t.is_empty() => Some(self.seal("bootstrap-token", t)?),
                    _ => None,
                };
                self.store().set_bootstrap_token(&id, sealed, now).await?;
                info!(enrollment = %id, "bootstrap token stored (sealed)");
                Ok(DeviceReply::Empty)
            }
            CheckinMessage::GetBootstrapToken(_) => {
                self.bound_enrollment(&id, &identity).await?;
                self.touch(&id, &eref.device_id, now).await?;
                let sealed = self
                    .store()
                    .enrollment(&id)?
                    .and_then(|rec| rec.bootstrap_token_sealed);
                let token = match sealed {
                    Some(sealed) => Some(self.unseal("bootstrap-token", &sealed)?),
                    None => None,
                };
                info!(enrollment = %id, present = token.is_some(), "bootstrap token requested");
                let body = mdm_proto::BootstrapTokenResponse {
                    bootstrap_token: token.map(|t| t.to_vec()).unwrap_or_default(),
                }
                .to_plist()
                .map_err(|e| ServiceError::internal("PLIST_ENCODING_FAILED", e.to_string()))?;
                Ok(DeviceReply::Plist(body))
            }
            CheckinMessage::DeclarativeManagement(d) => {
                self.bound_enrollment(&id, &identity).await?;
                self.touch(&id, &eref.device_id, now).await?;
                declarative_reply(&d.endpoint)
            }
            CheckinMessage::GetToken(g) => {
                self.bound_enrollment(&id, &identity).await?;
                let service = g.token_service_type.clone();
                let provider = self.inner.token_providers.get(&service).ok_or_else(|| {
                    ServiceError::bad_request(
                        "TOKEN_SERVICE_UNKNOWN",
                        format!("no token provider for TokenServiceType {service}"),
                    )
                })?;
                let data = provider.token(&id, g.token_parameters.as_ref()).await?;
                let body = mdm_proto::GetTokenResponse { token_data: data }
                    .to_plist()
                    .map_err(|e| ServiceError::internal("PLIST_ENCODING_FAILED", e.to_string()))?;
                Ok(DeviceReply::Plist(body))
            }
        }
    }

    async fn handle_report(
        &self,
        identity: Identity<'_>,
        mut report: CommandReport,
        scratch: &(dyn ConnectionScratch + Sync),
    ) -> ServiceResult<DeviceReply> {
        let id = report.enrollment.id();
        let rec = self.kept_enrollment(&id, &identity, scratch).await?;
        let now = Timestamp::now();
        let status = match report.status {
            CommandStatus::Idle => None,
            CommandStatus::Acknowledged => Some(DeliveryStatus::Acknowledged),
            CommandStatus::Error => Some(DeliveryStatus::Error),
            CommandStatus::CommandFormatError => Some(DeliveryStatus::CommandFormatError),
            CommandStatus::NotNow => Some(DeliveryStatus::NotNow),
        };
        // The last-seen time moves at most once a minute, in the store and in the directory
        // alike (see `last_seen_is_stale`).
        let stale = last_seen_is_stale(&rec, now);
        match (status, report.command_uuid.as_deref()) {
            (None, _) if !stale => {}
            (None, _) => self.touch(&id, &rec.device_id, now).await?,
            (Some(_), None) => {
                return Err(ServiceError::bad_request(
                    "REPORT_INVALID",
                    "a report with a status other than Idle needs a CommandUUID",
                ))
            }
            (Some(status), Some(uuid)) => {
                let error_chain_json = if report.error_chain.is_empty() {
                    None
                } else {
                    let items: Vec<serde_json::Value> = report
                        .error_chain
                        .iter()
                        .map(|i| {
                            serde_json::json!({
                                "ErrorCode": i.error_code,
                                "ErrorDomain": i.error_domain,
                                "LocalizedDescription": i.localized_description,
                                "USEnglishDescription": i.us_english_description,
                            })
                        })
                        .collect();
                    serde_json::to_string(&items).ok()
                };
                let mut skip_next = scratch.not_now(&id);
                if status == DeliveryStatus::NotNow {
                    skip_next.insert(uuid.to_owned());
                }
                let outcome = self
                    .store()
                    .record_result(
                        &id,
                        CommandResult {
                            uuid: uuid.to_string(),
                            status,
                            raw: std::mem::take(&mut report.raw),
                            error_chain_json: error_chain_json.clone(),
                            at: now,
                            touch: stale,
                            skip_next,
                        },
                    )
                    .await?;
                match outcome {
                    ResultOutcome::UnknownCommand => {
                        warn!(enrollment = %id, command = uuid, "report for a command that is not queued for this device; ignored");
                    }
                    ResultOutcome::Recorded { request_type, next } => {
                        debug!(enrollment = %id, command = uuid, ?status, "command report");
                        if stale {
                            self.devices().touch(&rec.device_id, now);
                        }
                        if status == DeliveryStatus::NotNow {
                            scratch.add_not_now(&id, uuid);
                        }
                        let queue_changed = self
                            .after_result(
                                &rec,
                                uuid,
                                &request_type,
                                status,
                                error_chain_json.as_deref(),
                            )
                            .await?;
                        // What the result's write saw is still the answer unless the
                        // follow-up queued or cancelled something since.
                        match next {
                            NextCommand::Queued(cmd) if !queue_changed => {
                                return self.send_command(&id, cmd);
                            }
                            NextCommand::Empty if !queue_changed => {
                                return Ok(DeviceReply::Empty);
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        let skip = scratch.not_now(&id);
        match self.store().next_command(&id, &skip)? {
            Some(cmd) => self.send_command(&id, cmd),
            None => Ok(DeviceReply::Empty),
        }
    }

    /// The reply that sends `cmd` to enrollment `id`.
    fn send_command(&self, id: &str, cmd: QueuedCommand) -> ServiceResult<DeviceReply> {
        debug!(enrollment = %id, command = %cmd.uuid, request_type = %cmd.request_type, "sending command");
        if cmd.sealed {
            let plain = self.unseal(crate::commands::COMMAND_PURPOSE, &cmd.payload)?;
            Ok(DeviceReply::Plist(plain.to_vec()))
        } else {
            Ok(DeviceReply::Plist(cmd.payload))
        }
    }

    /// The enrollment was heard from: its stored last-seen time, then the directory's.
    async fn touch(&self, id: &str, device_id: &str, now: Timestamp) -> ServiceResult<()> {
        self.store().touch(id, now).await?;
        self.devices().touch(device_id, now);
        Ok(())
    }

    /// Hands the directory an enrollment's record after a write; returns the activity
    /// targets for it (serial number and enrollment id).
    fn refresh_device(&self, id: &str) -> ServiceResult<Vec<String>> {
        if let Some(rec) = self.store().enrollment(id)? {
            self.devices().put_enrollment(&rec);
        }
        Ok(self.activity_targets(id))
    }

    /// The serial number (when known) and the id of an enrollment, for activity entries.
    pub(crate) fn activity_targets(&self, id: &str) -> Vec<String> {
        let mut out: Vec<String> = self.devices().key_of(id).into_iter().collect();
        if !out.iter().any(|k| k == id) {
            out.push(id.to_string());
        }
        out
    }

    /// Lifecycle steps after a command result: failures go to the activity log; a device
    /// held in Setup Assistant may be released (or has been). Returns whether the queue may
    /// have changed since the result's write: the next command the write found is then read
    /// again.
    async fn after_result(
        &self,
        rec: &EnrollmentBinding,
        uuid: &str,
        request_type: &str,
        status: DeliveryStatus,
        error_chain_json: Option<&str>,
    ) -> ServiceResult<bool> {
        // Only the profile commands the appliance queued itself move an install state; other
        // results need not read the device's installs.
        let profile_command = matches!(request_type, "InstallProfile" | "RemoveProfile");
        let mut queue_changed = false;
        if rec.channel == crate::ports::Channel::Device && profile_command {
            self.profile_result(&rec.id, uuid, status, error_chain_json)
                .await?;
            queue_changed = true;
        }
        let failed = matches!(
            status,
            DeliveryStatus::Error | DeliveryStatus::CommandFormatError
        );
        if !failed && !rec.awaiting_configuration {
            return Ok(queue_changed);
        }
        if failed {
            self.log_activity(entry(
                "device",
                "command.failed",
                self.activity_targets(&rec.id),
                ActivityOutcome::Failed,
                format!("{request_type} ({uuid}) answered {status:?}"),
                Some(serde_json::json!({"command_uuid": uuid, "request_type": request_type})),
            ));
        }
        if rec.channel != crate::ports::Channel::Device || !rec.awaiting_configuration {
            return Ok(queue_changed);
        }
        // A device in Setup Assistant may be released (DeviceConfigured queued) by this result.
        if request_type == "DeviceConfigured" && status == DeliveryStatus::Acknowledged {
            self.device_configured(&rec.id).await?;
        } else if status.is_final() {
            self.maybe_auto_release(&rec.id).await?;
        }
        Ok(true)
    }

    pub(crate) fn seal(&self, purpose: &str, data: &[u8]) -> ServiceResult<Vec<u8>> {
        self.sealer()
            .seal(purpose, data)
            .map(|b| b.to_bytes())
            .map_err(|e| ServiceError::internal("KEY_SEAL_FAILED", e.to_string()))
    }

    pub(crate) fn unseal(
        &self,
        purpose: &str,
        sealed: &[u8],
    ) -> ServiceResult<mdm_keystore::Zeroizing<Vec<u8>>> {
        let blob = mdm_keystore::SealedBlob::from_bytes(sealed)
            .map_err(|e| ServiceError::internal("KEY_UNSEAL_FAILED", e.to_string()))?;
        self.sealer()
            .unseal(purpose, &blob)
            .map_err(|e| ServiceError::internal("KEY_UNSEAL_FAILED", e.to_string()))
    }
}

/// Declarative management answers while the appliance defines no declarations: valid, empty
/// documents so the device's declarative agent settles instead of retrying.
fn declarative_reply(endpoint: &str) -> ServiceResult<DeviceReply> {
    const TOKEN: &str = "appliance-empty-v1";
    let body = match endpoint {
        "tokens" => serde_json::json!({
            "SyncTokens": {"DeclarationsToken": TOKEN, "Timestamp": "2024-01-01T00:00:00Z"}
        }),
        "declaration-items" => serde_json::json!({
            "Declarations": {"Activations": [], "Assets": [], "Configurations": [], "Management": []},
            "DeclarationsToken": TOKEN
        }),
        "status" => return Ok(DeviceReply::Empty),
        other => {
            return Err(ServiceError::not_found(
                "DECLARATION_NOT_FOUND",
                format!("no declarative management document at {other}"),
            ))
        }
    };
    Ok(DeviceReply::Json(body.to_string().into_bytes()))
}
