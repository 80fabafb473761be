//! The SCEP server (RFC 8894): capabilities, the CA/RA certificates, and PKIOperation.
//!
//! PKCSReq must carry a challenge the appliance issued in a profile (one-time, unexpired), or
//! the configured static challenge. RenewalReq must be signed by a current identity this CA
//! issued. Failures are answered with a signed CertRep FAILURE whenever the request could be
//! read far enough to address one; garbage gets a plain error.

use std::time::SystemTime;

use mdm_pki::scep::{self, FailInfo, MessageType, PkiRequest};
use mdm_pki::{Certificate, CertificateParams, KeyUsages};
use tracing::{info, warn};

use crate::authority::BACKDATE;
use crate::error::{ServiceError, ServiceResult};
use crate::ports::{
    ChallengeOutcome, ChallengeRecord, EnrollmentSource, IssuedCertRecord, Store, Timestamp,
};
use crate::{sha256_hex, MdmService};

/// `GetCACert` content type when an RA certificate accompanies the CA.
pub const CA_RA_CONTENT_TYPE: &str = "application/x-x509-ca-ra-cert";
/// PKIOperation reply content type.
pub const PKI_MESSAGE_CONTENT_TYPE: &str = "application/x-pki-message";

/// Why a request was refused, for the log and the CertRep failInfo.
struct Refusal {
    fail: FailInfo,
    reason: String,
}

fn refuse(fail: FailInfo, reason: impl Into<String>) -> Refusal {
    Refusal {
        fail,
        reason: reason.into(),
    }
}

fn to_timestamp(t: SystemTime) -> Timestamp {
    let ms = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    };
    Timestamp(ms)
}

/// Constant-time comparison, for the static challenge.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<S: Store> MdmService<S> {
    /// `GetCACaps`.
    pub fn scep_ca_caps(&self) -> &'static str {
        scep::CA_CAPS
    }

    /// `GetCACert`: a certs-only SignedData with the RA and the CA.
    pub fn scep_ca_cert(&self) -> ServiceResult<Vec<u8>> {
        let auth = self.authority();
        mdm_pki::cms::certs_only(&[auth.scep_ra.cert.clone(), auth.ca.cert.clone()])
            .map_err(|e| ServiceError::internal("PKI_FAILURE", e.to_string()))
    }

    /// `PKIOperation`: the DER PKIMessage in, a CertRep out.
    pub async fn scep_pki_operation(&self, message: &[u8]) -> ServiceResult<Vec<u8>> {
        let ra = &self.authority().scep_ra;
        let req = match scep::parse_request(message, &ra.cert, &ra.key) {
            Ok(req) => req,
            Err(e) => {
                warn!(error = %e, "SCEP request refused");
                return match e.partial.as_deref() {
                    Some(p) => scep::cert_rep_failure(
                        &p.transaction_id,
                        &p.sender_nonce,
                        e.fail_info,
                        &ra.cert,
                        &ra.key,
                    )
                    .map_err(|e| ServiceError::internal("PKI_FAILURE", e.to_string())),
                    None => Err(ServiceError::bad_request(
                        "SCEP_MALFORMED",
                        format!("not a SCEP PKIMessage this server can read: {e}"),
                    )),
                };
            }
        };
        let outcome = match req.message_type {
            MessageType::PkcsReq => self.scep_enroll(&req).await,
            MessageType::RenewalReq => self.scep_renew(&req).await,
            other => Err(refuse(
                FailInfo::BadRequest,
                format!("message type {other:?} is not supported (no pending requests are kept)"),
            )),
        };
        match outcome {
            Ok((issued, _)) => scep::cert_rep_success(
                &req,
                &issued,
                &[self.authority().ca.cert.clone()],
                &ra.cert,
                &ra.key,
            )
            .map_err(|e| ServiceError::internal("PKI_FAILURE", e.to_string())),
            Err(r) => {
                warn!(transaction = %req.transaction_id, reason = %r.reason, "SCEP request refused");
                scep::cert_rep_failure(
                    &req.transaction_id,
                    &req.sender_nonce,
                    r.fail,
                    &ra.cert,
                    &ra.key,
                )
                .map_err(|e| ServiceError::internal("PKI_FAILURE", e.to_string()))
            }
        }
    }

    async fn scep_enroll(&self, req: &PkiRequest) -> Result<(Certificate, ()), Refusal> {
        let csr = req
            .csr
            .as_ref()
            .ok_or_else(|| refuse(FailInfo::BadRequest, "no CSR"))?;
        let challenge = csr
            .challenge_password()
            .ok_or_else(|| refuse(FailInfo::BadRequest, "the CSR has no challengePassword"))?;
        let storage =
            |e: crate::ports::StoreError| refuse(FailInfo::BadRequest, format!("storage: {e}"));
        if let Some(fixed) = &self.config().static_challenge {
            if !ct_eq(fixed.as_bytes(), challenge.as_bytes()) {
                return Err(refuse(FailInfo::BadRequest, "wrong static challenge"));
            }
            let (cert, rec) = self.sign_device_cert(req, None, None)?;
            self.store().record_issued(rec).await.map_err(storage)?;
            return Ok((cert, ()));
        }
        let hash = sha256_hex(challenge.as_bytes());
        let now = Timestamp::now();
        // Check first so that a bad challenge costs no CA signature; the consume below
        // re-checks atomically (two devices racing with one challenge: one wins).
        let rec = match classify(self.store().challenge(&hash).map_err(storage)?, now) {
            ChallengeOutcome::Accepted(rec) => rec,
            other => return Err(refusal(&other)),
        };
        let (cert, issued) = self.sign_device_cert(req, Some(rec.source), None)?;
        match self
            .store()
            .consume_challenge(&hash, now, Some(issued))
            .await
            .map_err(storage)?
        {
            ChallengeOutcome::Accepted(_) => Ok((cert, ())),
            other => Err(refusal(&other)),
        }
    }

    async fn scep_renew(&self, req: &PkiRequest) -> Result<(Certificate, ()), Refusal> {
        let now = SystemTime::now();
        mdm_pki::verify_chain(
            &req.signer,
            &[],
            std::slice::from_ref(&self.authority().ca.cert),
            now,
        )
        .map_err(|e| {
            refuse(
                FailInfo::BadMessageCheck,
                format!("renewal signer not valid: {e}"),
            )
        })?;
        let old = sha256_hex(req.signer.der());
        let prior = self
            .store()
            .issued(&old)
            .map_err(|e| refuse(FailInfo::BadRequest, format!("storage: {e}")))?
            .ok_or_else(|| {
                refuse(
                    FailInfo::BadCertId,
                    "renewal signer was not issued by this appliance",
                )
            })?;
        let (cert, rec) = self.sign_device_cert(req, prior.source, Some(old))?;
        self.store()
            .record_issued(rec)
            .await
            .map_err(|e| refuse(FailInfo::BadRequest, format!("storage: {e}")))?;
        Ok((cert, ()))
    }

    /// Sign a device certificate for the request's CSR; the caller stores the record.
    fn sign_device_cert(
        &self,
        req: &PkiRequest,
        source: Option<EnrollmentSource>,
        renewed_from: Option<String>,
    ) -> Result<(Certificate, IssuedCertRecord), Refusal> {
        let csr = req
            .csr
            .as_ref()
            .ok_or_else(|| refuse(FailInfo::BadRequest, "no CSR"))?;
        let now = SystemTime::now();
        let mut params = CertificateParams {
            subject: mdm_pki::Name {
                common_name: String::new(),
                organization: None,
                organizational_unit: None,
                uid: None,
            },
            subject_der: Some(csr.subject_der()),
            serial: None,
            not_before: now - BACKDATE,
            not_after: now + self.config().device_cert_lifetime,
            is_ca: false,
            path_len: None,
            key_usage: KeyUsages {
                digital_signature: true,
                key_encipherment: true,
                ..Default::default()
            },
            extended_key_usage: vec![const_oid::db::rfc5280::ID_KP_CLIENT_AUTH],
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
        };
        if params.subject_der.as_deref().is_some_and(|d| d.len() <= 2) {
            // An empty subject is legal in a CSR but makes the certificate unreadable in logs.
            params.subject_der = None;
            params.subject.common_name = format!(
                "mdm-device-{}",
                &req.transaction_id.chars().take(16).collect::<String>()
            );
        }
        let ca = &self.authority().ca;
        let cert =
            mdm_pki::issue(&params, &csr.public_key_der(), &ca.cert, &ca.key).map_err(|e| {
                refuse(
                    FailInfo::BadRequest,
                    format!("cannot issue for this CSR: {e}"),
                )
            })?;
        let rec = IssuedCertRecord {
            sha256: sha256_hex(cert.der()),
            serial_hex: cert.serial_hex(),
            subject: cert.subject(),
            not_before: to_timestamp(cert.not_before()),
            not_after: to_timestamp(cert.not_after()),
            issued_at: Timestamp::now(),
            renewed_from,
            source,
        };
        info!(serial = %cert.serial_hex(), subject = %cert.subject(), "device identity issued");
        Ok((cert, rec))
    }
}

/// What a consume at `now` would answer for this stored challenge (without consuming it).
fn classify(rec: Option<ChallengeRecord>, now: Timestamp) -> ChallengeOutcome {
    match rec {
        None => ChallengeOutcome::NotFound,
        Some(r) if r.used_at.is_some() => ChallengeOutcome::AlreadyUsed(r),
        Some(r) if now >= r.expires_at => ChallengeOutcome::Expired(r),
        Some(r) => ChallengeOutcome::Accepted(r),
    }
}

/// The SCEP refusal for a challenge that cannot be redeemed.
fn refusal(outcome: &ChallengeOutcome) -> Refusal {
    match outcome {
        ChallengeOutcome::NotFound => refuse(FailInfo::BadRequest, "unknown challenge"),
        ChallengeOutcome::AlreadyUsed(r) => refuse(
            FailInfo::BadRequest,
            format!("challenge of profile {} was already used", r.profile_uuid),
        ),
        ChallengeOutcome::Expired(r) => refuse(
            FailInfo::BadRequest,
            format!("challenge of profile {} expired", r.profile_uuid),
        ),
        ChallengeOutcome::Accepted(_) => {
            refuse(FailInfo::BadRequest, "challenge could not be redeemed")
        }
    }
}
