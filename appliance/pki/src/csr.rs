//! PKCS#10 certification requests.

use der::asn1::{BitString, PrintableString, SetOfVec};
use der::{Any, Decode, Encode, Tag};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::attr::Attribute;
use x509_cert::request::{CertReq, CertReqInfo, Version};

use crate::asn1::{self, any_to_string};
use crate::cert::Name;
use crate::error::PkiError;
use crate::key::{verify_signature, PrivateKey};
use crate::oid;

/// A parsed PKCS#10 request whose self-signature has been verified (proof that the requester
/// holds the private key).
///
/// `Debug` leaves out the challengePassword, a one-time secret.
#[derive(Clone)]
pub struct CertificationRequest {
    der: Vec<u8>,
    parsed: CertReq,
    subject_der: Vec<u8>,
    public_key_der: Vec<u8>,
}

impl std::fmt::Debug for CertificationRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificationRequest")
            .field("subject", &self.subject())
            .field(
                "has_challenge_password",
                &self.challenge_password().is_some(),
            )
            .finish_non_exhaustive()
    }
}

impl CertificationRequest {
    /// Parses a DER request and verifies its signature.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let parsed = CertReq::from_der(der).map_err(PkiError::asn1("certification request"))?;
        let outer = asn1::read_single(der)?;
        let (info, _) = asn1::read_tlv(outer.value)?;
        let fields = asn1::children(info.value)?;
        let (Some(subject), Some(spki)) = (fields.get(1), fields.get(2)) else {
            return Err(PkiError::invalid(
                "certification request",
                "CertificationRequestInfo is truncated",
            ));
        };
        let sig = parsed.signature.as_bytes().ok_or_else(|| {
            PkiError::invalid("certification request", "signature has unused bits")
        })?;
        verify_signature(spki.raw, &parsed.algorithm, None, info.raw, sig)?;
        Ok(CertificationRequest {
            der: der.to_vec(),
            subject_der: subject.raw.to_vec(),
            public_key_der: spki.raw.to_vec(),
            parsed,
        })
    }

    /// Builds and signs a request for `key` (SHA-256), optionally with a challengePassword.
    ///
    /// The appliance itself has no use for CSRs to other CAs beyond tests and the APNs vendor
    /// flow; the password is encoded as a PrintableString when it fits, else a UTF8String.
    pub fn build(
        subject: &Name,
        key: &PrivateKey,
        challenge_password: Option<&str>,
    ) -> Result<Self, PkiError> {
        let mut attributes = Vec::new();
        if let Some(pw) = challenge_password {
            let value = match PrintableString::new(pw) {
                Ok(p) => Any::encode_from(&p),
                Err(_) => Any::new(Tag::Utf8String, pw.as_bytes().to_vec()),
            }
            .map_err(PkiError::asn1("challengePassword"))?;
            attributes.push(Attribute {
                oid: oid::ATTR_CHALLENGE_PASSWORD,
                values: SetOfVec::try_from(vec![value])
                    .map_err(PkiError::asn1("challengePassword"))?,
            });
        }
        let info = CertReqInfo {
            version: Version::V1,
            subject: subject.to_x509()?,
            public_key: SubjectPublicKeyInfoOwned::from_der(&key.public_key_der())
                .map_err(PkiError::asn1("public key"))?,
            attributes: SetOfVec::try_from(attributes)
                .map_err(PkiError::asn1("request attributes"))?,
        };
        let info_der = info
            .to_der()
            .map_err(PkiError::asn1("CertificationRequestInfo"))?;
        let sig = key.sign_sha256(&info_der)?;
        let req = CertReq {
            info,
            algorithm: key.signature_algorithm(),
            signature: BitString::from_bytes(&sig).map_err(PkiError::asn1("signature"))?,
        };
        let der = req
            .to_der()
            .map_err(PkiError::asn1("certification request"))?;
        Self::from_der(&der)
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// DER of the requested subject Name, byte for byte as the requester wrote it.
    pub fn subject_der(&self) -> Vec<u8> {
        self.subject_der.clone()
    }

    /// The requested subject in RFC 4514 form.
    pub fn subject(&self) -> String {
        self.parsed.info.subject.to_string()
    }

    /// The requester's public key as a DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.public_key_der.clone()
    }

    /// The PKCS#9 challengePassword, whichever string type the client chose.
    pub fn challenge_password(&self) -> Option<String> {
        self.parsed
            .info
            .attributes
            .iter()
            .find(|a| a.oid == oid::ATTR_CHALLENGE_PASSWORD)
            .and_then(|a| a.values.iter().next())
            .and_then(any_to_string)
    }

    /// The parsed structure, for anything not exposed above (requested extensions, ...).
    pub fn inner(&self) -> &CertReq {
        &self.parsed
    }
}
