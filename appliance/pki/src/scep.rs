//! SCEP (RFC 8894), server side: reading PKIOperation requests and building CertRep replies.
//!
//! A request is a SignedData (signed by the client: a throw-away self-signed certificate for
//! PKCSReq, its current identity for RenewalReq) whose content is an EnvelopedData addressed to
//! the RA certificate, whose content is a PKCS#10 CSR. A successful reply mirrors that: a
//! SignedData by the RA over an EnvelopedData addressed to the request's signer, over a
//! certs-only SignedData holding the issued certificate.
//!
//! This module decides nothing about *whether* to issue (challenge checks, renewal binding,
//! subject policy): that is the caller's. It does not implement GetNextCACert or answer
//! CertPoll/GetCert/GetCRL beyond parsing them.

use std::fmt;

use const_oid::ObjectIdentifier;
use der::asn1::{OctetString, PrintableString};
use der::{Any, Tag};
use x509_cert::attr::Attribute;

use crate::asn1::any_to_string;
use crate::cert::Certificate;
use crate::cms::{
    self, find_attribute, make_attribute, ContentCipher, ParsedSignedData, SignerOptions,
};
use crate::csr::CertificationRequest;
use crate::error::PkiError;
use crate::key::PrivateKey;
use crate::oid;

/// The GetCACaps answer. One capability per line:
///
/// - `POSTPKIOperation`: clients POST the binary PKIMessage instead of squeezing it into a
///   base64 query string (Apple's client posts whenever this is present).
/// - `SHA-256`: the digest our replies use and clients should use.
/// - `SHA-1`: requests signed with SHA-1 by older clients are still verified; replies always
///   use SHA-256.
/// - `AES`: AES-CBC content encryption (any key size is accepted, the reply mirrors it).
/// - `DES3`: triple-DES for legacy clients; accepted and mirrored, never chosen by us.
/// - `SCEPStandard`: the server follows RFC 8894 (which implies AES, POSTPKIOperation and
///   SHA-256).
/// - `Renewal`: RenewalReq, signed by the identity being renewed, is supported.
pub const CA_CAPS: &str = "POSTPKIOperation\nSHA-256\nSHA-1\nAES\nDES3\nSCEPStandard\nRenewal\n";

/// SCEP messageType values (RFC 8894 §3.2.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Response to any request.
    CertRep = 3,
    /// Renewal of an existing certificate, signed with it.
    RenewalReq = 17,
    /// Initial enrolment.
    PkcsReq = 19,
    /// Poll for a pending request.
    CertPoll = 20,
    /// Fetch a certificate by issuer and serial.
    GetCert = 21,
    /// Fetch a CRL.
    GetCrl = 22,
}

impl MessageType {
    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The message type for a numeric code.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            3 => MessageType::CertRep,
            17 => MessageType::RenewalReq,
            19 => MessageType::PkcsReq,
            20 => MessageType::CertPoll,
            21 => MessageType::GetCert,
            22 => MessageType::GetCrl,
            _ => return None,
        })
    }
}

/// SCEP failInfo values (RFC 8894 §3.2.1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FailInfo {
    /// Unrecognised or unsupported algorithm.
    BadAlg = 0,
    /// Integrity check (signature verification) failed.
    BadMessageCheck = 1,
    /// Transaction not permitted or supported.
    BadRequest = 2,
    /// The message time was not close enough to the system time.
    BadTime = 3,
    /// No certificate matches the criteria given.
    BadCertId = 4,
}

impl FailInfo {
    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for FailInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailInfo::BadAlg => "badAlg",
            FailInfo::BadMessageCheck => "badMessageCheck",
            FailInfo::BadRequest => "badRequest",
            FailInfo::BadTime => "badTime",
            FailInfo::BadCertId => "badCertId",
        })
    }
}

/// SCEP pkiStatus values (RFC 8894 §3.2.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PkiStatus {
    /// The request was granted.
    Success = 0,
    /// The request was rejected.
    Failure = 2,
    /// The request awaits manual approval.
    Pending = 3,
}

/// A verified, decrypted PKIOperation request.
#[derive(Clone, Debug)]
pub struct PkiRequest {
    /// What the client asks for.
    pub message_type: MessageType,
    /// The client's transactionID (echoed in the reply).
    pub transaction_id: String,
    /// The client's senderNonce (becomes the reply's recipientNonce).
    pub sender_nonce: Vec<u8>,
    /// The certificate that signed the request: self-signed for PKCSReq, the identity being
    /// renewed for RenewalReq. Its signature over the request has been verified, nothing else.
    pub signer: Certificate,
    /// For PKCSReq/RenewalReq: the CSR (decrypted from the envelope, self-signature verified).
    pub csr: Option<CertificationRequest>,
    /// The decrypted pkcsPKIEnvelope content: the CSR DER for requests, IssuerAndSubject for
    /// CertPoll, IssuerAndSerialNumber for GetCert and GetCRL.
    pub message_data: Vec<u8>,
    /// The digest algorithm the client signed with.
    pub digest_algorithm: ObjectIdentifier,
    /// The cipher the client encrypted with (the reply uses the same).
    pub content_cipher: Option<ContentCipher>,
}

impl PkiRequest {
    /// Whether the signer certificate carries the CSR's public key (the norm for PKCSReq:
    /// the client signs with a self-signed certificate for the key it wants certified).
    pub fn signer_matches_csr_key(&self) -> bool {
        self.csr
            .as_ref()
            .is_some_and(|csr| csr.public_key_der() == self.signer.public_key_der())
    }
}

/// What could be read of a rejected request: enough to address a CertRep failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialRequest {
    /// The client's transactionID.
    pub transaction_id: String,
    /// The client's senderNonce.
    pub sender_nonce: Vec<u8>,
    /// The messageType, when it was readable.
    pub message_type: Option<MessageType>,
}

/// A request [`parse_request`] refused.
///
/// When `partial` is present the caller should answer [`cert_rep_failure`] with `fail_info`;
/// otherwise the input was not recognisably SCEP and a plain HTTP error is the only answer.
#[derive(Debug, thiserror::Error)]
#[error("SCEP request refused ({fail_info}): {source}")]
pub struct PkiRequestError {
    /// The failInfo to answer with.
    pub fail_info: FailInfo,
    /// The addressing data read from the request (unverified).
    pub partial: Option<Box<PartialRequest>>,
    /// Why the request was refused.
    #[source]
    pub source: PkiError,
}

fn refuse(
    fail_info: FailInfo,
    partial: &Option<Box<PartialRequest>>,
    source: PkiError,
) -> PkiRequestError {
    PkiRequestError {
        fail_info,
        partial: partial.clone(),
        source,
    }
}

fn scep_err(msg: &str) -> PkiError {
    PkiError::Cms(msg.to_owned())
}

/// Parse + verify the outer SignedData (signature by the included signer cert), read
/// messageType/transactionID/senderNonce signed attributes, decrypt the inner EnvelopedData
/// with the RA key, parse the CSR.
///
/// Errors distinguish "not a SCEP message" (BadRequest, usually without a
/// [`PartialRequest`]) from signature failures (BadMessageCheck) and unsupported algorithms
/// (BadAlg).
pub fn parse_request(
    der: &[u8],
    ra_cert: &Certificate,
    ra_key: &PrivateKey,
) -> Result<PkiRequest, PkiRequestError> {
    let parsed =
        ParsedSignedData::parse(der).map_err(|e| refuse(FailInfo::BadRequest, &None, e))?;
    let attrs = parsed
        .signer
        .as_ref()
        .map(|s| s.signed_attributes())
        .unwrap_or_default();

    let transaction_id = find_attribute(&attrs, &oid::SCEP_TRANSACTION_ID).and_then(any_to_string);
    let sender_nonce = find_attribute(&attrs, &oid::SCEP_SENDER_NONCE)
        .and_then(|v| v.decode_as::<OctetString>().ok())
        .map(|o| o.as_bytes().to_vec())
        .filter(|n| !n.is_empty());
    let message_type = find_attribute(&attrs, &oid::SCEP_MESSAGE_TYPE)
        .and_then(any_to_string)
        .and_then(|s| s.trim().parse::<u8>().ok())
        .and_then(MessageType::from_code);
    let (Some(transaction_id), Some(sender_nonce)) = (transaction_id, sender_nonce) else {
        return Err(refuse(
            FailInfo::BadRequest,
            &None,
            scep_err("not a SCEP message: transactionID or senderNonce is missing"),
        ));
    };
    let partial = Some(Box::new(PartialRequest {
        transaction_id: transaction_id.clone(),
        sender_nonce: sender_nonce.clone(),
        message_type,
    }));
    let message_type = match message_type {
        Some(MessageType::CertRep) | None => {
            return Err(refuse(
                FailInfo::BadRequest,
                &partial,
                scep_err("the messageType is missing or is not a request type"),
            ))
        }
        Some(t) => t,
    };

    let verified = parsed.verify(None).map_err(|e| {
        let fail = match e {
            PkiError::UnsupportedAlgorithm { .. } => FailInfo::BadAlg,
            _ => FailInfo::BadMessageCheck,
        };
        refuse(fail, &partial, e)
    })?;

    let (message_data, cipher) =
        cms::open_envelope(&verified.content, ra_cert, ra_key).map_err(|e| {
            let fail = match e {
                PkiError::UnsupportedAlgorithm { .. } => FailInfo::BadAlg,
                _ => FailInfo::BadRequest,
            };
            refuse(fail, &partial, e)
        })?;

    let csr = match message_type {
        MessageType::PkcsReq | MessageType::RenewalReq => {
            Some(CertificationRequest::from_der(&message_data).map_err(|e| {
                let fail = match e {
                    PkiError::BadSignature => FailInfo::BadMessageCheck,
                    PkiError::UnsupportedAlgorithm { .. } => FailInfo::BadAlg,
                    _ => FailInfo::BadRequest,
                };
                refuse(fail, &partial, e)
            })?)
        }
        _ => None,
    };

    Ok(PkiRequest {
        message_type,
        transaction_id,
        sender_nonce,
        signer: verified.signer,
        csr,
        message_data: message_data.to_vec(),
        digest_algorithm: verified.digest_algorithm,
        content_cipher: Some(cipher),
    })
}

/// CertRep SUCCESS: SignedData (by RA key, SHA-256, attrs messageType=3, pkiStatus=0,
/// transactionID, senderNonce (fresh), recipientNonce=request senderNonce) whose content is
/// EnvelopedData to the request's signer cert (same cipher the request used, default AES-256)
/// wrapping a certs-only SignedData holding the issued cert (+ chain).
pub fn cert_rep_success(
    req: &PkiRequest,
    issued: &Certificate,
    chain: &[Certificate],
    ra_cert: &Certificate,
    ra_key: &PrivateKey,
) -> Result<Vec<u8>, PkiError> {
    let mut certs = vec![issued.clone()];
    certs.extend(chain.iter().filter(|c| *c != issued).cloned());
    let degenerate = cms::certs_only(&certs)?;
    let cipher = req.content_cipher.unwrap_or(ContentCipher::Aes256Cbc);
    let enveloped = cms::envelope(&degenerate, &req.signer, cipher)?;
    cert_rep(
        &req.transaction_id,
        &req.sender_nonce,
        PkiStatus::Success,
        None,
        Some(&enveloped),
        ra_cert,
        ra_key,
    )
}

/// CertRep FAILURE (pkiStatus=2, failInfo) with no content.
pub fn cert_rep_failure(
    transaction_id: &str,
    recipient_nonce: &[u8],
    fail: FailInfo,
    ra_cert: &Certificate,
    ra_key: &PrivateKey,
) -> Result<Vec<u8>, PkiError> {
    cert_rep(
        transaction_id,
        recipient_nonce,
        PkiStatus::Failure,
        Some(fail),
        None,
        ra_cert,
        ra_key,
    )
}

/// CertRep PENDING (pkiStatus=3) with no content: the client polls again later with the same
/// transactionID.
pub fn cert_rep_pending(
    transaction_id: &str,
    recipient_nonce: &[u8],
    ra_cert: &Certificate,
    ra_key: &PrivateKey,
) -> Result<Vec<u8>, PkiError> {
    cert_rep(
        transaction_id,
        recipient_nonce,
        PkiStatus::Pending,
        None,
        None,
        ra_cert,
        ra_key,
    )
}

/// The GetCACert answer when an RA is used: a certs-only SignedData with the RA certificate
/// and the CA (`application/x-x509-ca-ra-cert`).
pub fn ca_ra_certs(ra_cert: &Certificate, ca_cert: &Certificate) -> Result<Vec<u8>, PkiError> {
    cms::certs_only(&[ra_cert.clone(), ca_cert.clone()])
}

fn printable(value: &str) -> Result<Any, PkiError> {
    // RFC 8894 wants PrintableString; a transactionID outside its alphabet (one containing
    // '_' or '@', say) is echoed as a UTF8String rather than refused.
    match PrintableString::new(value) {
        Ok(p) => Any::encode_from(&p),
        Err(_) => Any::new(Tag::Utf8String, value.as_bytes().to_vec()),
    }
    .map_err(PkiError::asn1("SCEP attribute"))
}

fn octets(value: &[u8]) -> Result<Any, PkiError> {
    Any::new(Tag::OctetString, value.to_vec()).map_err(PkiError::asn1("SCEP attribute"))
}

fn cert_rep(
    transaction_id: &str,
    recipient_nonce: &[u8],
    status: PkiStatus,
    fail: Option<FailInfo>,
    content: Option<&[u8]>,
    ra_cert: &Certificate,
    ra_key: &PrivateKey,
) -> Result<Vec<u8>, PkiError> {
    let mut nonce = [0u8; 16];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| PkiError::Random)?;
    let mut attrs: Vec<Attribute> = vec![
        make_attribute(
            oid::SCEP_MESSAGE_TYPE,
            printable(&MessageType::CertRep.code().to_string())?,
        )?,
        make_attribute(
            oid::SCEP_PKI_STATUS,
            printable(&(status as u8).to_string())?,
        )?,
        make_attribute(oid::SCEP_TRANSACTION_ID, printable(transaction_id)?)?,
        make_attribute(oid::SCEP_SENDER_NONCE, octets(&nonce)?)?,
        make_attribute(oid::SCEP_RECIPIENT_NONCE, octets(recipient_nonce)?)?,
    ];
    if let Some(fail) = fail {
        attrs.push(make_attribute(
            oid::SCEP_FAIL_INFO,
            printable(&fail.code().to_string())?,
        )?);
    }
    let opts = SignerOptions {
        // FAILURE and PENDING carry no pkcsPKIEnvelope: the content is absent.
        detached: content.is_none(),
        extra_certs: &[],
        extra_signed_attributes: attrs,
    };
    cms::sign(content.unwrap_or_default(), ra_cert, ra_key, &opts)
}
