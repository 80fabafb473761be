//! Enrollment profiles: manual enrollment links, ADE MachineInfo checks, and the signed
//! `.mobileconfig` both hand out.
//!
//! Every served profile carries its own one-time SCEP challenge, recorded (as a hash) with
//! what the profile was served for; SCEP later binds the issued certificate to that source.

use std::time::Duration;

use mdm_pki::cms::SignerOptions;
use mdm_proto::MachineInfo;
use plist::{Dictionary, Value};
use tracing::{info, warn};

use crate::error::{ErrorKind, ServiceError, ServiceResult};
use crate::ports::{ChallengeRecord, EnrollmentSource, LinkRecord, Store, Timestamp};
use crate::{random_token, sha256_hex, MdmService};

/// Stable identifier of the enrollment profile: installing a newer one replaces the old.
pub const PROFILE_IDENTIFIER: &str = "appliance.mdm.enrollment";
/// MIME type of a configuration profile.
pub const PROFILE_CONTENT_TYPE: &str = "application/x-apple-aspen-config";

/// A created enrollment link: the record and the URL to give to the device's user. The URL
/// holds the only copy of the token; it cannot be shown again.
#[derive(Debug, Clone)]
pub struct CreatedLink {
    pub link: LinkRecord,
    pub url: String,
}

/// What an admin asks for when creating a link.
#[derive(Debug, Clone, Default)]
pub struct LinkRequest {
    pub label: String,
    /// `None`: the configured default.
    pub ttl: Option<Duration>,
    pub max_uses: Option<u64>,
}

fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string().to_uppercase()
}

impl<S: Store> MdmService<S> {
    /// Create an enrollment link.
    pub async fn create_link(
        &self,
        req: LinkRequest,
        created_by: &str,
    ) -> ServiceResult<CreatedLink> {
        let label = req.label.trim().to_string();
        if label.chars().count() > 200 {
            return Err(ServiceError::bad_request(
                "INVALID_FIELD",
                "label: at most 200 characters",
            ));
        }
        if req.max_uses == Some(0) {
            return Err(ServiceError::bad_request(
                "INVALID_FIELD",
                "max_uses: must be at least 1",
            ));
        }
        let ttl = req.ttl.unwrap_or(self.config().link_ttl);
        if ttl.is_zero() || ttl > crate::authority::days(365) {
            return Err(ServiceError::bad_request(
                "INVALID_FIELD",
                "ttl: must be between 1 second and 365 days",
            ));
        }
        let token = random_token()?;
        let now = Timestamp::now();
        let link = LinkRecord {
            id: uuid::Uuid::new_v4().to_string(),
            token_sha256: sha256_hex(token.as_bytes()),
            label,
            created_at: now,
            expires_at: now.plus(ttl),
            revoked_at: None,
            uses: 0,
            max_uses: req.max_uses,
            created_by: created_by.to_string(),
        };
        self.store().put_link(link.clone()).await?;
        info!(link = %link.id, by = created_by, "enrollment link created");
        let url = format!("{}/enroll/{}", self.config().base_url, token);
        Ok(CreatedLink { link, url })
    }

    /// Revoke an enrollment link.
    pub async fn revoke_link(&self, id: &str) -> ServiceResult<()> {
        if self.store().revoke_link(id, Timestamp::now()).await? {
            info!(link = id, "enrollment link revoked");
            Ok(())
        } else {
            Err(ServiceError::not_found(
                "LINK_NOT_FOUND",
                format!("no enrollment link {id}"),
            ))
        }
    }

    /// The signed profile for a manual enrollment link. Counts one use.
    pub async fn link_profile(&self, token: &str) -> ServiceResult<Vec<u8>> {
        let hash = sha256_hex(token.as_bytes());
        let invalid = || {
            warn!("enrollment link refused: unknown, expired, revoked or used up");
            ServiceError::not_found(
                "LINK_INVALID",
                "this enrollment link is unknown, expired, revoked or used up; ask your administrator for a new one",
            )
        };
        let link = self.store().link_by_token(&hash)?.ok_or_else(invalid)?;
        let source = EnrollmentSource::Link {
            link_id: link.id.clone(),
        };
        let (challenge, record) = self.new_challenge(&source)?;
        // The use and the challenge it pays for are one write.
        let link = self
            .store()
            .use_link(&hash, Timestamp::now(), record.clone())
            .await?
            .ok_or_else(invalid)?;
        let profile = self.signed_profile(&challenge, record.as_ref(), &source)?;
        info!(link = %link.id, uses = link.uses, "enrollment profile served for a link");
        Ok(profile)
    }

    /// ADE: the device POSTed its CMS-signed MachineInfo (an ABM profile without
    /// `configuration_web_url`). Refused when the device's profile asks for user
    /// authentication: that happens only on the `configuration_web_url` page.
    pub async fn ade_profile(&self, signed_machine_info: &[u8]) -> ServiceResult<Vec<u8>> {
        let info = self.admit_ade(signed_machine_info)?;
        if self.enrollment_auth_for(&info.serial)? != crate::ports::EnrollmentAuth::None {
            warn!(udid = %info.udid, serial = %info.serial, "ADE enrollment without sign-in refused: the profile asks for user authentication");
            return Err(ServiceError::forbidden(
                "USER_AUTH_REQUIRED",
                "this device's enrollment profile asks for user authentication, which happens on its configuration_web_url page; give the ABM profile a configuration_web_url",
            ));
        }
        let profile = self.serve_ade_profile(&info, None).await?;
        info!(udid = %info.udid, serial = %info.serial, "ADE enrollment profile served");
        Ok(profile)
    }

    /// Checks an ADE request: the MachineInfo's signature and chain, the minimum OS, and the
    /// "pre-enrolled devices only" restriction.
    pub(crate) fn admit_ade(&self, signed_machine_info: &[u8]) -> ServiceResult<MachineInfo> {
        let info = self.verify_machine_info(signed_machine_info)?;
        self.check_min_os(&info)?;
        self.check_enrollment_allowed(Some(&info.serial), "ADE")?;
        Ok(info)
    }

    /// Verify a signed MachineInfo: the CMS signature, and the signer's chain to the
    /// configured Apple device CA roots (the intermediate travels inside the message; macOS
    /// sends only that, not the root).
    pub fn verify_machine_info(&self, signed: &[u8]) -> ServiceResult<MachineInfo> {
        let invalid = |why: String| ServiceError::bad_request("MACHINEINFO_INVALID", why);
        let verified = mdm_pki::cms::verify(signed, None)
            .map_err(|e| invalid(format!("MachineInfo signature is not valid: {e}")))?;
        let roots = &self.config().ade.device_ca_roots;
        if roots.is_empty() {
            return Err(ServiceError::new(
                ErrorKind::Unavailable,
                "ADE_NOT_CONFIGURED",
                "ADE enrollment needs Apple's device CA roots: set ade.device_ca_roots in the configuration",
            ));
        }
        mdm_pki::verify_chain(
            &verified.signer,
            &verified.certificates,
            roots,
            std::time::SystemTime::now(),
        )
        .map_err(|e| {
            ServiceError::forbidden(
                "MACHINEINFO_UNTRUSTED",
                format!("MachineInfo is not signed by an Apple device identity: {e}"),
            )
        })?;
        mdm_proto::parse_machine_info(&verified.content)
            .map_err(|e| invalid(format!("MachineInfo plist: {e}")))
    }

    fn check_min_os(&self, info: &MachineInfo) -> ServiceResult<()> {
        let Some(min) = self.config().ade.min_os_version.as_deref() else {
            return Ok(());
        };
        // Devices that do not report OS_VERSION (before iOS 17) cannot be asked to update.
        let Some(os) = info.os_version.as_deref() else {
            return Ok(());
        };
        if info.mdm_can_request_software_update && mdm_proto::os_version_less_than(os, min) {
            info!(udid = %info.udid, os, min, "ADE enrollment asks the device to update its OS first");
            let body = mdm_proto::software_update_required_json(
                min,
                self.config().ade.min_os_build.as_deref(),
            );
            let mut e = ServiceError::new(
                ErrorKind::SoftwareUpdateRequired,
                "SOFTWARE_UPDATE_REQUIRED",
                format!("OS {os} is below the required {min}"),
            );
            e.body = Some(body);
            return Err(e);
        }
        Ok(())
    }

    /// Build, record the challenge for, and sign an enrollment profile.
    pub async fn enrollment_profile(&self, source: EnrollmentSource) -> ServiceResult<Vec<u8>> {
        let (challenge, record) = self.new_challenge(&source)?;
        if let Some(rec) = &record {
            self.store().put_challenge(rec.clone()).await?;
        }
        self.signed_profile(&challenge, record.as_ref(), &source)
    }

    /// A challenge for a new profile and, unless the static challenge is configured, the
    /// record to store for it.
    fn new_challenge(
        &self,
        source: &EnrollmentSource,
    ) -> ServiceResult<(String, Option<ChallengeRecord>)> {
        if let Some(c) = &self.config().static_challenge {
            return Ok((c.clone(), None));
        }
        let c = random_token()?;
        let now = Timestamp::now();
        let record = ChallengeRecord {
            challenge_sha256: sha256_hex(c.as_bytes()),
            profile_uuid: new_uuid(),
            source: source.clone(),
            created_at: now,
            expires_at: now.plus(self.config().challenge_ttl),
            used_at: None,
        };
        Ok((c, Some(record)))
    }

    fn signed_profile(
        &self,
        challenge: &str,
        record: Option<&ChallengeRecord>,
        source: &EnrollmentSource,
    ) -> ServiceResult<Vec<u8>> {
        let topic = self.topic().ok_or_else(|| {
            ServiceError::new(
                ErrorKind::Unavailable,
                "PUSH_CERT_MISSING",
                "no push certificate is imported, so profiles have no push topic; import one with `mdmctl push-cert import`",
            )
        })?;
        let profile_uuid = record.map_or_else(new_uuid, |r| r.profile_uuid.clone());
        let plist = self.profile_plist(&profile_uuid, challenge, &topic, source)?;
        let auth = self.authority();
        mdm_pki::cms::sign(
            &plist,
            &auth.profile_signer.cert,
            &auth.profile_signer.key,
            &SignerOptions {
                detached: false,
                extra_certs: std::slice::from_ref(&auth.ca.cert),
                extra_signed_attributes: Vec::new(),
            },
        )
        .map_err(|e| ServiceError::internal("PROFILE_SIGNING_FAILED", e.to_string()))
    }

    fn profile_plist(
        &self,
        profile_uuid: &str,
        challenge: &str,
        topic: &str,
        source: &EnrollmentSource,
    ) -> ServiceResult<Vec<u8>> {
        let cfg = self.config();
        let org = &cfg.organization;
        let identity_uuid = new_uuid();
        let subject_cn = match source {
            EnrollmentSource::Ade { udid, .. } => udid.clone(),
            EnrollmentSource::Link { .. } => format!("mdm-device-{}", &identity_uuid[..8]),
        };

        let mut ca = Dictionary::new();
        ca.insert("PayloadType".into(), "com.apple.security.root".into());
        ca.insert("PayloadVersion".into(), 1.into());
        ca.insert(
            "PayloadIdentifier".into(),
            format!("{PROFILE_IDENTIFIER}.ca").into(),
        );
        ca.insert("PayloadUUID".into(), new_uuid().into());
        ca.insert("PayloadDisplayName".into(), format!("{org} MDM CA").into());
        ca.insert(
            "PayloadContent".into(),
            Value::Data(self.authority().ca.cert.der().to_vec()),
        );

        let rdn = |oid: &str, value: &str| {
            Value::Array(vec![Value::Array(vec![oid.into(), value.into()])])
        };
        let mut scep_content = Dictionary::new();
        scep_content.insert("URL".into(), format!("{}/scep", cfg.base_url).into());
        scep_content.insert("Name".into(), format!("{org} MDM").into());
        scep_content.insert(
            "Subject".into(),
            Value::Array(vec![rdn("O", org), rdn("CN", &subject_cn)]),
        );
        scep_content.insert("Challenge".into(), challenge.into());
        scep_content.insert("Keysize".into(), 2048.into());
        scep_content.insert("Key Type".into(), "RSA".into());
        // 1 = signing, 4 = encryption: the identity both signs messages and does TLS.
        scep_content.insert("Key Usage".into(), 5.into());
        scep_content.insert("Retries".into(), 3.into());
        scep_content.insert("RetryDelay".into(), 10.into());
        let mut scep = Dictionary::new();
        scep.insert("PayloadType".into(), "com.apple.security.scep".into());
        scep.insert("PayloadVersion".into(), 1.into());
        scep.insert(
            "PayloadIdentifier".into(),
            format!("{PROFILE_IDENTIFIER}.scep").into(),
        );
        scep.insert("PayloadUUID".into(), identity_uuid.clone().into());
        scep.insert("PayloadDisplayName".into(), "Device identity".into());
        scep.insert("PayloadContent".into(), Value::Dictionary(scep_content));

        let mut mdm = Dictionary::new();
        mdm.insert("PayloadType".into(), "com.apple.mdm".into());
        mdm.insert("PayloadVersion".into(), 1.into());
        mdm.insert(
            "PayloadIdentifier".into(),
            format!("{PROFILE_IDENTIFIER}.mdm").into(),
        );
        mdm.insert("PayloadUUID".into(), new_uuid().into());
        mdm.insert("PayloadDisplayName".into(), "Device management".into());
        mdm.insert(
            "ServerURL".into(),
            format!("{}/mdm/connect", cfg.base_url).into(),
        );
        mdm.insert(
            "CheckInURL".into(),
            format!("{}/mdm/checkin", cfg.base_url).into(),
        );
        mdm.insert("Topic".into(), topic.into());
        mdm.insert("IdentityCertificateUUID".into(), identity_uuid.into());
        mdm.insert("AccessRights".into(), 8191.into());
        mdm.insert("CheckOutWhenRemoved".into(), true.into());
        mdm.insert("SignMessage".into(), cfg.sign_message.into());
        mdm.insert(
            "ServerCapabilities".into(),
            Value::Array(vec![
                "com.apple.mdm.per-user-connections".into(),
                "com.apple.mdm.bootstraptoken".into(),
                "com.apple.mdm.token".into(),
            ]),
        );

        let mut top = Dictionary::new();
        top.insert("PayloadType".into(), "Configuration".into());
        top.insert("PayloadVersion".into(), 1.into());
        top.insert("PayloadIdentifier".into(), PROFILE_IDENTIFIER.into());
        top.insert("PayloadUUID".into(), profile_uuid.into());
        top.insert(
            "PayloadDisplayName".into(),
            format!("{org} device management").into(),
        );
        top.insert("PayloadOrganization".into(), org.clone().into());
        top.insert(
            "PayloadDescription".into(),
            "Enrolls this device in the organisation's management server.".into(),
        );
        top.insert(
            "PayloadContent".into(),
            Value::Array(vec![
                Value::Dictionary(ca),
                Value::Dictionary(scep),
                Value::Dictionary(mdm),
            ]),
        );
        let mut out = Vec::new();
        Value::Dictionary(top)
            .to_writer_xml(&mut out)
            .map_err(|e| ServiceError::internal("PROFILE_ENCODING_FAILED", e.to_string()))?;
        Ok(out)
    }
}
