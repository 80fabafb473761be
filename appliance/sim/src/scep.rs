//! SCEP client (RFC 8894) as an Apple device runs it for a `com.apple.security.scep`
//! payload: GetCACaps, GetCACert, then a PKCSReq (or RenewalReq) PKIOperation whose
//! CertRep is verified, matched to the request and decrypted.
//!
//! Not implemented: CertPoll after a PENDING answer (reported as [`ScepError::Pending`]),
//! GetCert/GetCRL, and signing with anything but SHA-256.

use base64::Engine;
use der::Encode;
use x509_cert::name::Name;
use x509_cert::request::CertReq;
use x509_cert::Certificate;

use crate::cms::{self, ContentCipher, SignedDataBuilder};
use crate::error::{CryptoError, FailInfo, ScepError};
use crate::http::{percent_encode, HttpClient};
use crate::keys::{DigestAlgorithm, PrivateKey};
use crate::oids;
use crate::x509::{self, CertificateParams, KeyUsageFlags};

/// SCEP `messageType` values the client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// PKCSReq (19): initial enrollment, signed by a throw-away self-signed certificate.
    PkcsReq,
    /// RenewalReq (17): signed with the identity being renewed.
    RenewalReq,
}

impl MessageType {
    fn code(self) -> &'static str {
        match self {
            Self::PkcsReq => "19",
            Self::RenewalReq => "17",
        }
    }
}

/// The capabilities a SCEP server advertises.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaCaps(Vec<String>);

impl CaCaps {
    /// Parses a GetCACaps body: one keyword per line, case-insensitive.
    pub fn parse(body: &[u8]) -> Self {
        Self(
            String::from_utf8_lossy(body)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    /// Whether `cap` was advertised.
    pub fn has(&self, cap: &str) -> bool {
        self.0.iter().any(|c| c.eq_ignore_ascii_case(cap))
    }

    /// The advertised keywords.
    pub fn keywords(&self) -> &[String] {
        &self.0
    }

    /// RFC 8894 `SCEPStandard` implies AES, POST, SHA-256 and more.
    fn standard(&self) -> bool {
        self.has("SCEPStandard")
    }

    /// The content cipher to use: AES-256-CBC when AES is advertised, DES-EDE3-CBC
    /// otherwise (the RFC's mandatory fallback).
    pub fn content_cipher(&self) -> ContentCipher {
        if self.has("AES") || self.standard() {
            ContentCipher::Aes256Cbc
        } else {
            ContentCipher::DesEde3Cbc
        }
    }

    /// Whether PKIOperation may be POSTed.
    pub fn post(&self) -> bool {
        self.has("POSTPKIOperation") || self.standard()
    }

    /// Whether RenewalReq is supported.
    pub fn renewal(&self) -> bool {
        self.has("Renewal") || self.standard()
    }
}

/// What GetCACert returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertificates {
    /// Every certificate returned (one for a plain CA, RA + CA for a certs-only answer).
    pub certificates: Vec<Certificate>,
}

impl CaCertificates {
    /// Parses a GetCACert body: a single DER certificate or a certs-only SignedData.
    pub fn parse(body: &[u8]) -> Result<Self, ScepError> {
        let certificates = match x509::certificate_from_der(body) {
            Ok(cert) => vec![cert],
            Err(_) => cms::certificates_in(body)?,
        };
        if certificates.is_empty() {
            return Err(ScepError::NoRecipientCertificate);
        }
        Ok(Self { certificates })
    }

    /// The certificate to encrypt requests to: the single certificate if there is one,
    /// else a certificate allowing keyEncipherment, preferring a non-CA (the RA).
    pub fn recipient(&self) -> Result<&Certificate, ScepError> {
        if let [only] = self.certificates.as_slice() {
            return Ok(only);
        }
        let encipher = |c: &&Certificate| x509::key_usage(c).is_none_or(|ku| ku.key_encipherment());
        self.certificates
            .iter()
            .filter(encipher)
            .find(|c| !x509::is_ca(c))
            .or_else(|| {
                self.certificates
                    .iter()
                    .find(|c| encipher(c) && x509::key_usage(c).is_some())
            })
            .ok_or(ScepError::NoRecipientCertificate)
    }
}

/// A built PKIMessage plus what is needed to check and open the CertRep.
#[derive(Debug, Clone)]
pub struct PkiRequest {
    /// The DER PKIMessage to send.
    pub message: Vec<u8>,
    /// `transactionID`: hex SHA-256 of the requested key's SubjectPublicKeyInfo.
    pub transaction_id: String,
    /// Our `senderNonce`.
    pub sender_nonce: [u8; 16],
    /// The certificate that signed the request (the CertRep is encrypted to it).
    pub signer: Certificate,
    signer_key: PrivateKey,
    requested_spki: Vec<u8>,
}

/// Maps a SCEP payload's `Key Usage` mask (1 signing, 4 encryption) to X.509 bits.
pub fn key_usage_from_mask(mask: u64) -> Vec<KeyUsageFlags> {
    let mut out = Vec::new();
    if mask & 1 != 0 {
        out.push(KeyUsageFlags::DigitalSignature);
    }
    if mask & 4 != 0 {
        out.push(KeyUsageFlags::KeyEncipherment);
    }
    out
}

/// Hex SHA-256 of a DER SubjectPublicKeyInfo: the transactionID RFC 8894 §3.2.1.1
/// suggests, stable across retries of the same key.
pub fn transaction_id(key: &PrivateKey) -> Result<String, CryptoError> {
    Ok(hex::encode_upper(
        DigestAlgorithm::Sha256.digest(&key.public_key_info_der()?),
    ))
}

/// Builds the throw-away self-signed certificate that signs a PKCSReq.
pub fn self_signed_signer(subject: &Name, key: &PrivateKey) -> Result<Certificate, CryptoError> {
    x509::self_signed(
        &CertificateParams::new(subject.clone())
            .valid_for_days(1)
            .key_usage(&[
                KeyUsageFlags::DigitalSignature,
                KeyUsageFlags::KeyEncipherment,
            ]),
        key,
    )
}

/// Builds a PKIMessage: `csr` enveloped to `recipient`, signed by `signer`/`signer_key`.
pub fn build_request(
    message_type: MessageType,
    csr: &CertReq,
    requested_key: &PrivateKey,
    signer: &Certificate,
    signer_key: &PrivateKey,
    recipient: &Certificate,
    cipher: ContentCipher,
) -> Result<PkiRequest, CryptoError> {
    let transaction_id = transaction_id(requested_key)?;
    let mut sender_nonce = [0u8; 16];
    aws_lc_rs::rand::fill(&mut sender_nonce).map_err(|_| CryptoError::KeyGeneration)?;
    let envelope = cms::envelope(&csr.to_der()?, recipient, cipher)?;
    let message = SignedDataBuilder::new(&envelope)
        .certificate(signer.clone())
        .attribute(cms::printable_attribute(
            oids::SCEP_MESSAGE_TYPE,
            message_type.code(),
        )?)
        .attribute(cms::printable_attribute(
            oids::SCEP_TRANSACTION_ID,
            &transaction_id,
        )?)
        .attribute(cms::octets_attribute(
            oids::SCEP_SENDER_NONCE,
            &sender_nonce,
        )?)
        .sign(signer, signer_key)?;
    Ok(PkiRequest {
        message,
        transaction_id,
        sender_nonce,
        signer: signer.clone(),
        signer_key: signer_key.clone(),
        requested_spki: requested_key.public_key_info_der()?,
    })
}

/// Checks a CertRep against `request` and returns the issued certificate.
///
/// The CertRep must be signed by one of `responders` (the GetCACert certificates),
/// carry messageType 3, our transactionID and our nonce as recipientNonce. On SUCCESS
/// its envelope is opened with the request signer's key and the certificate for the
/// requested key is returned.
pub fn parse_cert_rep(
    request: &PkiRequest,
    cert_rep: &[u8],
    responders: &[Certificate],
) -> Result<Certificate, ScepError> {
    let parsed = cms::parse_signed_data(cert_rep)?;
    // RFC 8894 §3.3.2: FAILURE and PENDING replies omit the content, so their signature covers
    // empty content.
    let no_content: Option<&[u8]> = if parsed.content.is_none() {
        Some(b"")
    } else {
        None
    };
    let signer = parsed.verify(no_content, responders)?;
    if !responders.contains(&signer.certificate) {
        return Err(ScepError::UnknownResponder);
    }
    let attrs = &signer.signed_attributes;
    let message_type = cms::string_attribute(attrs, &oids::SCEP_MESSAGE_TYPE)
        .ok_or(ScepError::BadAttribute("messageType"))?;
    if message_type.trim() != "3" {
        return Err(ScepError::NotCertRep(message_type));
    }
    let tid = cms::string_attribute(attrs, &oids::SCEP_TRANSACTION_ID)
        .ok_or(ScepError::BadAttribute("transactionID"))?;
    if tid != request.transaction_id {
        return Err(ScepError::TransactionIdMismatch);
    }
    let recipient_nonce = cms::octets_attribute_value(attrs, &oids::SCEP_RECIPIENT_NONCE)
        .ok_or(ScepError::BadAttribute("recipientNonce"))?;
    if recipient_nonce != request.sender_nonce {
        return Err(ScepError::NonceMismatch);
    }
    let status = cms::string_attribute(attrs, &oids::SCEP_PKI_STATUS)
        .ok_or(ScepError::BadAttribute("pkiStatus"))?;
    match status.trim() {
        "0" => {}
        "2" => {
            let fail = match cms::string_attribute(attrs, &oids::SCEP_FAIL_INFO) {
                None => FailInfo::Unspecified,
                Some(v) => match v.trim().parse::<u32>() {
                    Ok(0) => FailInfo::BadAlg,
                    Ok(1) => FailInfo::BadMessageCheck,
                    Ok(2) => FailInfo::BadRequest,
                    Ok(3) => FailInfo::BadTime,
                    Ok(4) => FailInfo::BadCertId,
                    Ok(n) => FailInfo::Other(n),
                    Err(_) => return Err(ScepError::BadAttribute("failInfo")),
                },
            };
            return Err(ScepError::Rejected(fail));
        }
        "3" => {
            return Err(ScepError::Pending {
                transaction_id: request.transaction_id.clone(),
            })
        }
        _ => return Err(ScepError::BadAttribute("pkiStatus")),
    }
    let enveloped = parsed
        .content
        .as_deref()
        .ok_or(ScepError::BadAttribute("pkcsPKIEnvelope"))?;
    let degenerate = cms::open_envelope(enveloped, &request.signer_key, Some(&request.signer))?;
    let certs = cms::certificates_in(&degenerate)?;
    certs
        .into_iter()
        .find(|c| {
            c.tbs_certificate
                .subject_public_key_info
                .to_der()
                .is_ok_and(|d| d == request.requested_spki)
        })
        .ok_or(ScepError::NoIssuedCertificate)
}

/// What to ask the SCEP server for.
#[derive(Debug, Clone)]
pub struct EnrollmentRequest {
    /// Subject of the CSR (and of the self-signed signer).
    pub subject: Name,
    /// `challengePassword`, if the payload has one.
    pub challenge: Option<String>,
    /// The key to certify (RSA-2048 per the payload; pre-generated keys may be injected).
    pub key: PrivateKey,
    /// keyUsage bits requested in the CSR.
    pub key_usage: Vec<KeyUsageFlags>,
}

impl EnrollmentRequest {
    /// The PKCS #10 request for this enrollment.
    pub fn csr(&self) -> Result<CertReq, CryptoError> {
        x509::certificate_request(
            &self.subject,
            &self.key,
            self.challenge.as_deref(),
            &self.key_usage,
        )
    }
}

/// The SCEP client bound to one server URL.
#[derive(Debug)]
pub struct ScepClient<'a> {
    http: &'a HttpClient,
    url: String,
    ca_ident: Option<String>,
}

impl<'a> ScepClient<'a> {
    /// A client for `url` (no query string). `ca_ident` is sent as GetCACert's `message`.
    pub fn new(http: &'a HttpClient, url: &str, ca_ident: Option<&str>) -> Self {
        Self {
            http,
            url: url.split('?').next().unwrap_or(url).to_owned(),
            ca_ident: ca_ident.map(str::to_owned),
        }
    }

    fn operation_url(&self, operation: &str, message: Option<&str>) -> String {
        match message {
            Some(m) => format!(
                "{}?operation={operation}&message={}",
                self.url,
                percent_encode(m)
            ),
            None => format!("{}?operation={operation}", self.url),
        }
    }

    /// GetCACaps.
    pub async fn get_ca_caps(&self) -> Result<CaCaps, ScepError> {
        let resp = self
            .http
            .get(&self.operation_url("GetCACaps", None), Default::default())
            .await?;
        if !resp.is_success() {
            return Err(ScepError::Status(resp.to_unexpected()));
        }
        Ok(CaCaps::parse(&resp.body))
    }

    /// GetCACert.
    pub async fn get_ca_certs(&self) -> Result<CaCertificates, ScepError> {
        let url = self.operation_url("GetCACert", self.ca_ident.as_deref());
        let resp = self.http.get(&url, Default::default()).await?;
        if !resp.is_success() {
            return Err(ScepError::Status(resp.to_unexpected()));
        }
        CaCertificates::parse(&resp.body)
    }

    /// Sends a PKIOperation (POST when advertised, else the base64 GET form) and returns
    /// the raw CertRep.
    pub async fn pki_operation(&self, caps: &CaCaps, message: &[u8]) -> Result<Vec<u8>, ScepError> {
        let resp = if caps.post() {
            self.http
                .post(
                    &self.operation_url("PKIOperation", None),
                    "application/x-pki-message",
                    message.to_vec(),
                )
                .await?
        } else {
            let b64 = base64::engine::general_purpose::STANDARD.encode(message);
            self.http
                .get(
                    &self.operation_url("PKIOperation", Some(&b64)),
                    Default::default(),
                )
                .await?
        };
        if !resp.is_success() {
            return Err(ScepError::Status(resp.to_unexpected()));
        }
        Ok(resp.body.to_vec())
    }

    /// Full PKCSReq enrollment: caps, CA certs, request, CertRep. Returns the issued
    /// certificate for `request.key`.
    pub async fn enroll(&self, request: &EnrollmentRequest) -> Result<Certificate, ScepError> {
        let caps = self.get_ca_caps().await?;
        let ca = self.get_ca_certs().await?;
        let signer = self_signed_signer(&request.subject, &request.key)?;
        let pki = build_request(
            MessageType::PkcsReq,
            &request.csr()?,
            &request.key,
            &signer,
            &request.key,
            ca.recipient()?,
            caps.content_cipher(),
        )?;
        tracing::debug!(transaction_id = %pki.transaction_id, "SCEP PKCSReq");
        let rep = self.pki_operation(&caps, &pki.message).await?;
        parse_cert_rep(&pki, &rep, &ca.certificates)
    }

    /// RenewalReq: certifies `request.key`, signing the request with the current
    /// identity. The CertRep is encrypted to the current identity.
    pub async fn renew(
        &self,
        request: &EnrollmentRequest,
        current: &Certificate,
        current_key: &PrivateKey,
    ) -> Result<Certificate, ScepError> {
        let caps = self.get_ca_caps().await?;
        let ca = self.get_ca_certs().await?;
        let pki = build_request(
            MessageType::RenewalReq,
            &request.csr()?,
            &request.key,
            current,
            current_key,
            ca.recipient()?,
            caps.content_cipher(),
        )?;
        tracing::debug!(transaction_id = %pki.transaction_id, "SCEP RenewalReq");
        let rep = self.pki_operation(&caps, &pki.message).await?;
        parse_cert_rep(&pki, &rep, &ca.certificates)
    }
}

/// Builds a CertRep the way RFC 8894 §3.3.2 describes: the answer a SCEP server gives
/// to a [`ReceivedRequest`]. Used by tests of the client side and by fakes; fields are
/// public so negative tests can bend them (wrong nonce, wrong transactionID).
#[derive(Debug, Clone)]
pub struct CertRepBuilder {
    /// `transactionID` to echo.
    pub transaction_id: String,
    /// `recipientNonce`: the request's senderNonce.
    pub recipient_nonce: Vec<u8>,
    /// The request signer, to whom the issued certificates are encrypted.
    pub recipient: Certificate,
    /// pkiStatus: 0 SUCCESS, 2 FAILURE, 3 PENDING.
    pub status: u8,
    /// failInfo for FAILURE.
    pub fail_info: Option<u8>,
    /// The issued certificate and any chain to include, for SUCCESS.
    pub certificates: Vec<Certificate>,
}

impl CertRepBuilder {
    fn answering(request: &ReceivedRequest, status: u8) -> Self {
        Self {
            transaction_id: request.transaction_id.clone(),
            recipient_nonce: request.sender_nonce.clone(),
            recipient: request.signer.clone(),
            status,
            fail_info: None,
            certificates: Vec::new(),
        }
    }

    /// SUCCESS carrying `certificates` (the issued one first).
    pub fn success(request: &ReceivedRequest, certificates: Vec<Certificate>) -> Self {
        Self {
            certificates,
            ..Self::answering(request, 0)
        }
    }

    /// FAILURE with `fail_info`.
    pub fn failure(request: &ReceivedRequest, fail_info: u8) -> Self {
        Self {
            fail_info: Some(fail_info),
            ..Self::answering(request, 2)
        }
    }

    /// PENDING.
    pub fn pending(request: &ReceivedRequest) -> Self {
        Self::answering(request, 3)
    }

    /// Signs the CertRep as `responder`.
    pub fn sign(
        &self,
        responder: &Certificate,
        responder_key: &PrivateKey,
    ) -> Result<Vec<u8>, CryptoError> {
        let mut responder_nonce = [0u8; 16];
        aws_lc_rs::rand::fill(&mut responder_nonce).map_err(|_| CryptoError::KeyGeneration)?;
        let content = if self.status == 0 {
            let degenerate = cms::certs_only(&self.certificates)?;
            cms::envelope(&degenerate, &self.recipient, ContentCipher::Aes256Cbc)?
        } else {
            Vec::new()
        };
        let mut builder = SignedDataBuilder::new(&content)
            .certificate(responder.clone())
            .attribute(cms::printable_attribute(oids::SCEP_MESSAGE_TYPE, "3")?)
            .attribute(cms::printable_attribute(
                oids::SCEP_PKI_STATUS,
                &self.status.to_string(),
            )?)
            .attribute(cms::printable_attribute(
                oids::SCEP_TRANSACTION_ID,
                &self.transaction_id,
            )?)
            .attribute(cms::octets_attribute(
                oids::SCEP_RECIPIENT_NONCE,
                &self.recipient_nonce,
            )?)
            .attribute(cms::octets_attribute(
                oids::SCEP_SENDER_NONCE,
                &responder_nonce,
            )?);
        if let Some(fail) = self.fail_info {
            builder = builder.attribute(cms::printable_attribute(
                oids::SCEP_FAIL_INFO,
                &fail.to_string(),
            )?);
        }
        builder.sign(responder, responder_key)
    }
}

/// A PKIMessage as a SCEP server sees it, for fakes and tests that answer requests.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// `messageType` ("19" PKCSReq, "17" RenewalReq, ...).
    pub message_type: String,
    /// `transactionID`.
    pub transaction_id: String,
    /// `senderNonce`.
    pub sender_nonce: Vec<u8>,
    /// The certificate that signed the request.
    pub signer: Certificate,
    /// The decrypted PKCS #10 request (DER).
    pub csr: Vec<u8>,
}

/// Verifies and opens a client's PKIMessage with the RA/CA certificate and key it was
/// encrypted to.
pub fn open_request(
    message: &[u8],
    recipient: &Certificate,
    recipient_key: &PrivateKey,
) -> Result<ReceivedRequest, ScepError> {
    let parsed = cms::parse_signed_data(message)?;
    let signer = parsed.verify(None, &[])?;
    let attrs = &signer.signed_attributes;
    let message_type = cms::string_attribute(attrs, &oids::SCEP_MESSAGE_TYPE)
        .ok_or(ScepError::BadAttribute("messageType"))?;
    let transaction_id = cms::string_attribute(attrs, &oids::SCEP_TRANSACTION_ID)
        .ok_or(ScepError::BadAttribute("transactionID"))?;
    let sender_nonce = cms::octets_attribute_value(attrs, &oids::SCEP_SENDER_NONCE)
        .ok_or(ScepError::BadAttribute("senderNonce"))?;
    let enveloped = parsed
        .content
        .as_deref()
        .ok_or(ScepError::BadAttribute("pkcsPKIEnvelope"))?;
    let csr = cms::open_envelope(enveloped, recipient_key, Some(recipient))?;
    Ok(ReceivedRequest {
        message_type,
        transaction_id,
        sender_nonce,
        signer: signer.certificate,
        csr: csr.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Decode;

    struct Ra {
        ca: Certificate,
        ca_key: PrivateKey,
        ra: Certificate,
        ra_key: PrivateKey,
    }

    fn ra() -> Ra {
        let ca_key = PrivateKey::generate_rsa2048().unwrap();
        let ca = x509::self_signed(
            &CertificateParams::new(x509::name(&[("CN", "SCEP CA")]).unwrap()).ca(None),
            &ca_key,
        )
        .unwrap();
        let ra_key = PrivateKey::generate_rsa2048().unwrap();
        let ra = x509::issue(
            &CertificateParams::new(x509::name(&[("CN", "SCEP RA")]).unwrap()).key_usage(&[
                KeyUsageFlags::DigitalSignature,
                KeyUsageFlags::KeyEncipherment,
            ]),
            &ra_key.public_key_info().unwrap(),
            Some(&ca),
            &ca_key,
        )
        .unwrap();
        Ra {
            ca,
            ca_key,
            ra,
            ra_key,
        }
    }

    fn request(ra: &Ra, cipher: ContentCipher) -> (PkiRequest, PrivateKey) {
        let key = PrivateKey::generate_rsa2048().unwrap();
        let req = EnrollmentRequest {
            subject: x509::name(&[("O", "Example"), ("CN", "device")]).unwrap(),
            challenge: Some("secret".into()),
            key: key.clone(),
            key_usage: key_usage_from_mask(5),
        };
        let signer = self_signed_signer(&req.subject, &key).unwrap();
        let pki = build_request(
            MessageType::PkcsReq,
            &req.csr().unwrap(),
            &key,
            &signer,
            &key,
            &ra.ra,
            cipher,
        )
        .unwrap();
        (pki, key)
    }

    fn issue_for(ra: &Ra, csr_der: &[u8]) -> Certificate {
        let csr = CertReq::from_der(csr_der).unwrap();
        x509::issue(
            &CertificateParams::new(csr.info.subject.clone()),
            &csr.info.public_key,
            Some(&ra.ca),
            &ra.ca_key,
        )
        .unwrap()
    }

    #[test]
    fn caps_and_recipient_selection() {
        let caps = CaCaps::parse(b"POSTPKIOperation\r\nSHA-256\nAES\nRenewal\n");
        assert!(caps.post() && caps.renewal());
        assert_eq!(caps.content_cipher(), ContentCipher::Aes256Cbc);
        let legacy = CaCaps::parse(b"SHA-1\n");
        assert_eq!(legacy.content_cipher(), ContentCipher::DesEde3Cbc);
        assert!(!legacy.post());
        assert!(CaCaps::parse(b"SCEPStandard").post());

        let ra = ra();
        let both =
            CaCertificates::parse(&cms::certs_only(&[ra.ca.clone(), ra.ra.clone()]).unwrap())
                .unwrap();
        assert_eq!(both.recipient().unwrap(), &ra.ra);
        let single = CaCertificates::parse(&ra.ca.to_der().unwrap()).unwrap();
        assert_eq!(single.recipient().unwrap(), &ra.ca);
    }

    #[test]
    fn cert_rep_success_and_failures() {
        let ra = ra();
        let responders = vec![ra.ra.clone(), ra.ca.clone()];
        for cipher in [ContentCipher::Aes256Cbc, ContentCipher::DesEde3Cbc] {
            let (pki, key) = request(&ra, cipher);
            let got = open_request(&pki.message, &ra.ra, &ra.ra_key).unwrap();
            assert_eq!(got.message_type, "19");
            assert_eq!(got.transaction_id, pki.transaction_id);
            assert_eq!(got.sender_nonce, pki.sender_nonce);
            assert_eq!(got.signer, pki.signer);
            let issued = issue_for(&ra, &got.csr);
            let ok = CertRepBuilder::success(&got, vec![issued.clone(), ra.ca.clone()]);
            let rep = ok.sign(&ra.ra, &ra.ra_key).unwrap();
            let cert = parse_cert_rep(&pki, &rep, &responders).unwrap();
            assert_eq!(cert, issued);
            assert_eq!(
                cert.tbs_certificate.subject_public_key_info,
                key.public_key_info().unwrap()
            );

            let replay = CertRepBuilder {
                recipient_nonce: vec![7; 16],
                ..ok.clone()
            }
            .sign(&ra.ra, &ra.ra_key)
            .unwrap();
            assert!(matches!(
                parse_cert_rep(&pki, &replay, &responders),
                Err(ScepError::NonceMismatch)
            ));
            let other_tid = CertRepBuilder {
                transaction_id: "X".into(),
                ..ok.clone()
            }
            .sign(&ra.ra, &ra.ra_key)
            .unwrap();
            assert!(matches!(
                parse_cert_rep(&pki, &other_tid, &responders),
                Err(ScepError::TransactionIdMismatch)
            ));
            let failed = CertRepBuilder::failure(&got, 2)
                .sign(&ra.ra, &ra.ra_key)
                .unwrap();
            assert!(matches!(
                parse_cert_rep(&pki, &failed, &responders),
                Err(ScepError::Rejected(FailInfo::BadRequest))
            ));
            let pending = CertRepBuilder::pending(&got)
                .sign(&ra.ra, &ra.ra_key)
                .unwrap();
            assert!(matches!(
                parse_cert_rep(&pki, &pending, &responders),
                Err(ScepError::Pending { .. })
            ));
            // Signed by someone GetCACert did not return.
            let rogue_key = PrivateKey::generate_rsa2048().unwrap();
            let rogue =
                self_signed_signer(&x509::name(&[("CN", "rogue")]).unwrap(), &rogue_key).unwrap();
            let forged = ok.sign(&rogue, &rogue_key).unwrap();
            assert!(matches!(
                parse_cert_rep(&pki, &forged, &responders),
                Err(ScepError::UnknownResponder)
            ));
        }
    }
}
