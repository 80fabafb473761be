//! X.509 certificates: parsing, inspection and issuance.

use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use const_oid::ObjectIdentifier;
use der::asn1::{BitString, GeneralizedTime, Ia5String, OctetString, SetOfVec, UtcTime};
use der::{Any, DateTime, Decode, Encode, Tag};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::certificate::{TbsCertificate, Version};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, SubjectAltName,
    SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::name::{RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use crate::asn1::{self, any_to_string};
use crate::error::PkiError;
use crate::key::PrivateKeyOps;
use crate::oid;

/// A parsed X.509 certificate together with the exact DER it was parsed from.
#[derive(Clone)]
pub struct Certificate {
    der: Vec<u8>,
    parsed: x509_cert::Certificate,
    ranges: Ranges,
}

/// Byte ranges inside `der` of the parts handed out verbatim: re-encoding a parsed value is
/// not guaranteed to reproduce the original bytes, and the TBSCertificate is what was signed.
#[derive(Clone, Debug)]
struct Ranges {
    tbs: Range<usize>,
    issuer: Range<usize>,
    subject: Range<usize>,
    spki: Range<usize>,
}

/// Offset of `inner` within `outer` (both slices of the same buffer).
fn range_in(outer: &[u8], inner: &[u8]) -> Range<usize> {
    let start = inner.as_ptr() as usize - outer.as_ptr() as usize;
    start..start + inner.len()
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for Certificate {}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.subject())
            .field("issuer", &self.issuer())
            .field("serial", &self.serial_hex())
            .field("not_after", &self.parsed.tbs_certificate.validity.not_after)
            .finish()
    }
}

impl Certificate {
    /// Parses a DER certificate. The input must be exactly one certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let parsed =
            x509_cert::Certificate::from_der(der).map_err(PkiError::asn1("certificate"))?;
        let outer = asn1::read_single(der)?;
        let (tbs, _) = asn1::read_tlv(outer.value)?;
        let mut fields = asn1::children(tbs.value)?;
        // The version field is optional ([0] EXPLICIT); the rest is positional.
        if fields.first().is_some_and(|f| f.tag == 0xa0) {
            fields.remove(0);
        }
        let (Some(issuer), Some(subject), Some(spki)) =
            (fields.get(2), fields.get(4), fields.get(5))
        else {
            return Err(PkiError::invalid(
                "certificate",
                "TBSCertificate is truncated",
            ));
        };
        let ranges = Ranges {
            tbs: range_in(der, tbs.raw),
            issuer: range_in(der, issuer.raw),
            subject: range_in(der, subject.raw),
            spki: range_in(der, spki.raw),
        };
        Ok(Certificate {
            der: der.to_vec(),
            parsed,
            ranges,
        })
    }

    /// Parses the first `CERTIFICATE` block of a PEM text.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        Self::all_from_pem(pem)?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::Pem("no CERTIFICATE block found".into()))
    }

    /// Parses every `CERTIFICATE` block of a PEM text (a bundle of roots, a chain file).
    /// Text outside the blocks is ignored.
    pub fn all_from_pem(pem: &str) -> Result<Vec<Self>, PkiError> {
        const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
        const END: &str = "-----END CERTIFICATE-----";
        let mut out = Vec::new();
        let mut rest = pem;
        while let Some(start) = rest.find(BEGIN) {
            let after = &rest[start..];
            let end = after
                .find(END)
                .ok_or_else(|| PkiError::Pem("a CERTIFICATE block is not terminated".into()))?;
            let block = &after[..end + END.len()];
            let (label, der) =
                der::pem::decode_vec(block.as_bytes()).map_err(|e| PkiError::Pem(e.to_string()))?;
            if label != "CERTIFICATE" {
                return Err(PkiError::Pem(format!("unexpected PEM label {label}")));
            }
            out.push(Self::from_der(&der)?);
            rest = &after[end + END.len()..];
        }
        Ok(out)
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The certificate as a PEM `CERTIFICATE` block (LF line endings).
    pub fn to_pem(&self) -> String {
        crate::pem_encode("CERTIFICATE", &self.der)
    }

    /// SHA-256 of the DER encoding (the fingerprint bound to an enrollment).
    pub fn sha256(&self) -> [u8; 32] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    /// The serial number as lowercase hex, without the sign-padding zero octet.
    pub fn serial_hex(&self) -> String {
        let bytes = self.parsed.tbs_certificate.serial_number.as_bytes();
        let trimmed = match bytes {
            [0, rest @ ..] if !rest.is_empty() => rest,
            other => other,
        };
        hex::encode(trimmed)
    }

    /// The subject in RFC 4514 form (most specific RDN first, e.g. `CN=x,O=y`).
    pub fn subject(&self) -> String {
        self.parsed.tbs_certificate.subject.to_string()
    }

    /// The issuer in RFC 4514 form.
    pub fn issuer(&self) -> String {
        self.parsed.tbs_certificate.issuer.to_string()
    }

    /// DER of the subject Name.
    pub fn subject_der(&self) -> Vec<u8> {
        self.der[self.ranges.subject.clone()].to_vec()
    }

    /// DER of the issuer Name.
    pub fn issuer_der(&self) -> Vec<u8> {
        self.der[self.ranges.issuer.clone()].to_vec()
    }

    /// The first commonName of the subject.
    pub fn subject_common_name(&self) -> Option<String> {
        name_attribute(&self.parsed.tbs_certificate.subject, &oid::AT_COMMON_NAME)
    }

    /// The subject's userId (0.9.2342.19200300.100.1.1); Apple puts the APNs topic of a push
    /// certificate here.
    pub fn subject_uid(&self) -> Option<String> {
        name_attribute(&self.parsed.tbs_certificate.subject, &oid::AT_UID)
    }

    /// Start of the validity period.
    pub fn not_before(&self) -> SystemTime {
        self.parsed
            .tbs_certificate
            .validity
            .not_before
            .to_system_time()
    }

    /// End of the validity period.
    pub fn not_after(&self) -> SystemTime {
        self.parsed
            .tbs_certificate
            .validity
            .not_after
            .to_system_time()
    }

    /// Whether `at` lies within the validity period (both ends inclusive, as RFC 5280 says).
    pub fn is_valid_at(&self, at: SystemTime) -> bool {
        self.not_before() <= at && at <= self.not_after()
    }

    /// The subject public key as a DER `SubjectPublicKeyInfo`.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.der[self.ranges.spki.clone()].to_vec()
    }

    /// Whether basicConstraints says cA = TRUE.
    pub fn is_ca(&self) -> bool {
        self.basic_constraints().is_some_and(|bc| bc.ca)
    }

    /// The pathLenConstraint of a CA certificate, if any.
    pub fn path_len_constraint(&self) -> Option<u8> {
        self.basic_constraints()
            .filter(|bc| bc.ca)
            .and_then(|bc| bc.path_len_constraint)
    }

    /// The keyUsage extension, or `None` when the certificate has none.
    pub fn key_usage(&self) -> Option<KeyUsages> {
        let ext = self.extension(&oid::EXT_KEY_USAGE)?;
        let bits = BitString::from_der(ext.extn_value.as_bytes()).ok()?;
        Some(KeyUsages::from_bit_string(&bits))
    }

    /// The extKeyUsage purposes (empty when the extension is absent).
    pub fn extended_key_usage(&self) -> Vec<ObjectIdentifier> {
        self.extension(&oid::EXT_EXTENDED_KEY_USAGE)
            .and_then(|ext| ExtendedKeyUsage::from_der(ext.extn_value.as_bytes()).ok())
            .map(|eku| eku.0)
            .unwrap_or_default()
    }

    /// The DNS names of the subjectAltName extension.
    pub fn dns_names(&self) -> Vec<String> {
        self.subject_alt_names()
            .into_iter()
            .filter_map(|n| match n {
                GeneralName::DnsName(s) => Some(s.to_string()),
                _ => None,
            })
            .collect()
    }

    /// The IP addresses of the subjectAltName extension.
    pub fn ip_addresses(&self) -> Vec<IpAddr> {
        self.subject_alt_names()
            .into_iter()
            .filter_map(|n| match n {
                GeneralName::IpAddress(o) => match o.as_bytes().len() {
                    4 => <[u8; 4]>::try_from(o.as_bytes()).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(o.as_bytes()).ok().map(IpAddr::from),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// The subjectKeyIdentifier extension value.
    pub fn subject_key_identifier(&self) -> Option<Vec<u8>> {
        let ext = self.extension(&oid::EXT_SUBJECT_KEY_ID)?;
        SubjectKeyIdentifier::from_der(ext.extn_value.as_bytes())
            .ok()
            .map(|ski| ski.0.as_bytes().to_vec())
    }

    /// The keyIdentifier of the authorityKeyIdentifier extension.
    pub fn authority_key_identifier(&self) -> Option<Vec<u8>> {
        let ext = self.extension(&oid::EXT_AUTHORITY_KEY_ID)?;
        AuthorityKeyIdentifier::from_der(ext.extn_value.as_bytes())
            .ok()
            .and_then(|aki| aki.key_identifier)
            .map(|k| k.as_bytes().to_vec())
    }

    /// The parsed structure, for anything not exposed above.
    pub fn inner(&self) -> &x509_cert::Certificate {
        &self.parsed
    }

    /// The exact signed bytes (TBSCertificate).
    pub(crate) fn tbs_der(&self) -> &[u8] {
        &self.der[self.ranges.tbs.clone()]
    }

    /// SHA-1 over the subjectPublicKey bits: RFC 5280 §4.2.1.2 method (1), used both for
    /// new SKIs and to match identifiers when a certificate lacks the extension.
    pub(crate) fn computed_key_id(&self) -> Vec<u8> {
        key_id(&self.parsed.tbs_certificate.subject_public_key_info)
    }

    /// Whether `id` identifies this certificate's key (SKI extension or computed).
    pub(crate) fn matches_key_id(&self, id: &[u8]) -> bool {
        self.subject_key_identifier().as_deref() == Some(id) || self.computed_key_id() == id
    }

    /// Whether this certificate is the one named by issuer and serial number.
    pub(crate) fn matches_issuer_serial(
        &self,
        issuer: &x509_cert::name::Name,
        serial: &SerialNumber,
    ) -> bool {
        let tbs = &self.parsed.tbs_certificate;
        &tbs.serial_number == serial && &tbs.issuer == issuer
    }

    pub(crate) fn extension(&self, id: &ObjectIdentifier) -> Option<&Extension> {
        self.parsed
            .tbs_certificate
            .extensions
            .as_ref()?
            .iter()
            .find(|e| &e.extn_id == id)
    }

    fn basic_constraints(&self) -> Option<BasicConstraints> {
        let ext = self.extension(&oid::EXT_BASIC_CONSTRAINTS)?;
        BasicConstraints::from_der(ext.extn_value.as_bytes()).ok()
    }

    fn subject_alt_names(&self) -> Vec<GeneralName> {
        self.extension(&oid::EXT_SUBJECT_ALT_NAME)
            .and_then(|ext| SubjectAltName::from_der(ext.extn_value.as_bytes()).ok())
            .map(|san| san.0)
            .unwrap_or_default()
    }
}

fn key_id(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        spki.subject_public_key.raw_bytes(),
    )
    .as_ref()
    .to_vec()
}

fn name_attribute(name: &x509_cert::name::Name, id: &ObjectIdentifier) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| &atv.oid == id)
        .and_then(|atv| any_to_string(&atv.value))
}

/// A distinguished name built from the few attributes the appliance uses.
///
/// Encoded most general first (O, OU, CN, UID), so that the RFC 4514 string reads
/// `UID=..,CN=..,OU=..,O=..` like Apple's own certificates. Every value is a UTF8String.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Name {
    /// commonName; omitted from the encoding when empty.
    pub common_name: String,
    /// organizationName.
    pub organization: Option<String>,
    /// organizationalUnitName.
    pub organizational_unit: Option<String>,
    /// userId.
    pub uid: Option<String>,
}

impl Name {
    /// A name with only a commonName.
    pub fn new(common_name: impl Into<String>) -> Self {
        Name {
            common_name: common_name.into(),
            ..Name::default()
        }
    }

    /// The x509-cert representation.
    pub fn to_x509(&self) -> Result<x509_cert::name::Name, PkiError> {
        let mut rdns = Vec::new();
        let parts = [
            (oid::AT_ORGANIZATION, self.organization.as_deref()),
            (
                oid::AT_ORGANIZATIONAL_UNIT,
                self.organizational_unit.as_deref(),
            ),
            (
                oid::AT_COMMON_NAME,
                Some(self.common_name.as_str()).filter(|s| !s.is_empty()),
            ),
            (oid::AT_UID, self.uid.as_deref()),
        ];
        for (id, value) in parts {
            let Some(value) = value else { continue };
            let value = Any::new(Tag::Utf8String, value.as_bytes().to_vec())
                .map_err(PkiError::asn1("name attribute"))?;
            let atv = AttributeTypeAndValue { oid: id, value };
            let set = SetOfVec::try_from(vec![atv]).map_err(PkiError::asn1("name attribute"))?;
            rdns.push(RelativeDistinguishedName(set));
        }
        Ok(RdnSequence(rdns))
    }

    /// DER encoding of the name.
    pub fn to_der(&self) -> Result<Vec<u8>, PkiError> {
        self.to_x509()?.to_der().map_err(PkiError::asn1("name"))
    }
}

/// The keyUsage bits (RFC 5280 §4.2.1.3). All false means "omit the extension".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyUsages {
    /// digitalSignature (0).
    pub digital_signature: bool,
    /// nonRepudiation / contentCommitment (1).
    pub non_repudiation: bool,
    /// keyEncipherment (2).
    pub key_encipherment: bool,
    /// dataEncipherment (3).
    pub data_encipherment: bool,
    /// keyAgreement (4).
    pub key_agreement: bool,
    /// keyCertSign (5).
    pub key_cert_sign: bool,
    /// cRLSign (6).
    pub crl_sign: bool,
    /// encipherOnly (7).
    pub encipher_only: bool,
    /// decipherOnly (8).
    pub decipher_only: bool,
}

impl KeyUsages {
    /// No usage: the extension is omitted.
    pub const NONE: KeyUsages = KeyUsages {
        digital_signature: false,
        non_repudiation: false,
        key_encipherment: false,
        data_encipherment: false,
        key_agreement: false,
        key_cert_sign: false,
        crl_sign: false,
        encipher_only: false,
        decipher_only: false,
    };

    /// digitalSignature + keyEncipherment: an RSA identity that signs and receives keys
    /// (Apple's SCEP "Key Usage 5", the SCEP RA, the ABM token key).
    pub const SIGN_AND_ENCRYPT: KeyUsages = KeyUsages {
        digital_signature: true,
        key_encipherment: true,
        ..KeyUsages::NONE
    };

    /// digitalSignature only (ECDSA TLS servers, profile signing).
    pub const SIGN: KeyUsages = KeyUsages {
        digital_signature: true,
        ..KeyUsages::NONE
    };

    /// keyCertSign + cRLSign + digitalSignature: a CA.
    pub const CA: KeyUsages = KeyUsages {
        digital_signature: true,
        key_cert_sign: true,
        crl_sign: true,
        ..KeyUsages::NONE
    };

    fn bits(&self) -> [bool; 9] {
        [
            self.digital_signature,
            self.non_repudiation,
            self.key_encipherment,
            self.data_encipherment,
            self.key_agreement,
            self.key_cert_sign,
            self.crl_sign,
            self.encipher_only,
            self.decipher_only,
        ]
    }

    /// Whether no bit is set.
    pub fn is_empty(&self) -> bool {
        self.bits().iter().all(|b| !b)
    }

    /// DER named-bit-list encoding: trailing zero bits dropped (X.690 §11.2.2).
    fn to_bit_string(self) -> Result<BitString, PkiError> {
        let bits = self.bits();
        let Some(last) = bits.iter().rposition(|b| *b) else {
            return BitString::new(0, Vec::new()).map_err(PkiError::asn1("keyUsage"));
        };
        let mut bytes = vec![0u8; last / 8 + 1];
        for (i, set) in bits.iter().enumerate() {
            if *set {
                bytes[i / 8] |= 0x80 >> (i % 8);
            }
        }
        let unused = (7 - (last % 8)) as u8;
        BitString::new(unused, bytes).map_err(PkiError::asn1("keyUsage"))
    }

    fn from_bit_string(bits: &BitString) -> KeyUsages {
        let bytes = bits.raw_bytes();
        let get = |i: usize| bytes.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0);
        KeyUsages {
            digital_signature: get(0),
            non_repudiation: get(1),
            key_encipherment: get(2),
            data_encipherment: get(3),
            key_agreement: get(4),
            key_cert_sign: get(5),
            crl_sign: get(6),
            encipher_only: get(7),
            decipher_only: get(8),
        }
    }
}

/// What to put in a new certificate.
#[derive(Clone, Debug)]
pub struct CertificateParams {
    /// Subject name (ignored when `subject_der` is set).
    pub subject: Name,
    /// A DER-encoded X.501 Name used verbatim as the subject, e.g. the subject of a CSR.
    pub subject_der: Option<Vec<u8>>,
    /// Serial number (big-endian, read as unsigned); random positive 128-bit when `None`.
    pub serial: Option<[u8; 16]>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// basicConstraints cA.
    pub is_ca: bool,
    /// basicConstraints pathLenConstraint (only meaningful with `is_ca`).
    pub path_len: Option<u8>,
    /// keyUsage bits; the extension is omitted when none is set.
    pub key_usage: KeyUsages,
    /// extKeyUsage purposes; empty = extension omitted.
    pub extended_key_usage: Vec<ObjectIdentifier>,
    /// subjectAltName DNS names.
    pub dns_names: Vec<String>,
    /// subjectAltName IP addresses.
    pub ip_addresses: Vec<IpAddr>,
}

/// 9999-12-31T23:59:59Z, RFC 5280's "no well-defined expiration date" and the latest time a
/// certificate can express; lifetimes reaching past it are clamped to it.
fn no_expiry() -> SystemTime {
    let secs = Duration::from_secs(253_402_300_799);
    SystemTime::UNIX_EPOCH
        .checked_add(secs)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl CertificateParams {
    /// An end-entity certificate valid from `now - backdate` to `now + lifetime`, with
    /// digitalSignature + keyEncipherment (adjust `key_usage` for EC keys, which cannot
    /// encipher keys).
    ///
    /// The backdate absorbs clock skew between the appliance and devices: a certificate
    /// whose notBefore is a few seconds in a device's future is rejected by it.
    pub fn leaf(subject: Name, lifetime: Duration, backdate: Duration) -> Self {
        let now = SystemTime::now();
        CertificateParams {
            subject,
            subject_der: None,
            serial: None,
            not_before: now.checked_sub(backdate).unwrap_or(now),
            not_after: now
                .checked_add(lifetime)
                .map_or_else(no_expiry, |t| t.min(no_expiry())),
            is_ca: false,
            path_len: None,
            key_usage: KeyUsages::SIGN_AND_ENCRYPT,
            extended_key_usage: Vec::new(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
        }
    }

    /// A CA certificate (keyCertSign, cRLSign, digitalSignature) with the given path length
    /// constraint, valid from `now - backdate` to `now + lifetime`.
    pub fn ca(subject: Name, path_len: Option<u8>, lifetime: Duration, backdate: Duration) -> Self {
        CertificateParams {
            is_ca: true,
            path_len,
            key_usage: KeyUsages::CA,
            ..Self::leaf(subject, lifetime, backdate)
        }
    }
}

/// Creates a self-signed certificate for `key` (a [`crate::PrivateKey`], or a key a keystore
/// holds: the signature is made by `key.sign_sha256`).
pub fn self_signed(
    params: &CertificateParams,
    key: &dyn PrivateKeyOps,
) -> Result<Certificate, PkiError> {
    let spki = SubjectPublicKeyInfoOwned::from_der(&key.public_key_der())
        .map_err(PkiError::asn1("public key"))?;
    let subject = subject_name(params)?;
    let own_id = key_id(&spki);
    build(params, spki, subject.clone(), subject, own_id, key)
}

/// Issues a certificate for `subject_public_key_der` (a DER SubjectPublicKeyInfo) signed by
/// `issuer_key`, which must belong to `issuer`, a CA certificate.
///
/// The result is v3 with subjectKeyIdentifier and authorityKeyIdentifier, a critical
/// basicConstraints, a critical keyUsage (when any bit is set), extKeyUsage when purposes are
/// given and subjectAltName when names are given.
pub fn issue(
    params: &CertificateParams,
    subject_public_key_der: &[u8],
    issuer: &Certificate,
    issuer_key: &dyn PrivateKeyOps,
) -> Result<Certificate, PkiError> {
    if issuer_key.public_key_der() != issuer.public_key_der() {
        return Err(PkiError::invalid(
            "issuer",
            "the issuer key does not belong to the issuer certificate",
        ));
    }
    if !issuer.is_ca() {
        return Err(PkiError::invalid(
            "issuer",
            format!("\"{}\" is not a CA certificate", issuer.subject()),
        ));
    }
    let spki = SubjectPublicKeyInfoOwned::from_der(subject_public_key_der)
        .map_err(PkiError::asn1("subject public key"))?;
    if spki.algorithm.oid != oid::RSA_ENCRYPTION && spki.algorithm.oid != oid::EC_PUBLIC_KEY {
        return Err(PkiError::InvalidPublicKey(format!(
            "unsupported subject key algorithm {}",
            spki.algorithm.oid
        )));
    }
    let issuer_id = issuer
        .subject_key_identifier()
        .unwrap_or_else(|| issuer.computed_key_id());
    let subject = subject_name(params)?;
    build(
        params,
        spki,
        subject,
        issuer.parsed.tbs_certificate.subject.clone(),
        issuer_id,
        issuer_key,
    )
}

fn subject_name(params: &CertificateParams) -> Result<x509_cert::name::Name, PkiError> {
    match &params.subject_der {
        Some(der) => x509_cert::name::Name::from_der(der).map_err(PkiError::asn1("subject name")),
        None => params.subject.to_x509(),
    }
}

/// RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
pub(crate) fn x509_time(t: SystemTime) -> Result<Time, PkiError> {
    let dt = DateTime::from_system_time(t).map_err(|_| PkiError::TimeOutOfRange(t))?;
    if dt.year() < 2050 {
        UtcTime::from_date_time(dt)
            .map(Time::UtcTime)
            .map_err(|_| PkiError::TimeOutOfRange(t))
    } else {
        Ok(Time::GeneralTime(GeneralizedTime::from_date_time(dt)))
    }
}

fn serial(params: &CertificateParams) -> Result<SerialNumber, PkiError> {
    let bytes = match params.serial {
        Some(s) => s,
        None => {
            let mut s = [0u8; 16];
            aws_lc_rs::rand::fill(&mut s).map_err(|_| PkiError::Random)?;
            // Positive and exactly 16 octets long, so serials sort and print uniformly.
            s[0] = (s[0] & 0x7f) | 0x40;
            s
        }
    };
    if bytes.iter().all(|b| *b == 0) {
        return Err(PkiError::invalid("serial number", "it must be positive"));
    }
    SerialNumber::new(&bytes).map_err(PkiError::asn1("serial number"))
}

fn extension(
    id: ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
) -> Result<Extension, PkiError> {
    let der = value.to_der().map_err(PkiError::asn1("extension"))?;
    Ok(Extension {
        extn_id: id,
        critical,
        extn_value: OctetString::new(der).map_err(PkiError::asn1("extension"))?,
    })
}

fn build(
    params: &CertificateParams,
    spki: SubjectPublicKeyInfoOwned,
    subject: x509_cert::name::Name,
    issuer: x509_cert::name::Name,
    issuer_key_id: Vec<u8>,
    signer: &dyn PrivateKeyOps,
) -> Result<Certificate, PkiError> {
    if params.not_after < params.not_before {
        return Err(PkiError::invalid(
            "certificate parameters",
            "notAfter is before notBefore",
        ));
    }
    let mut extensions = vec![extension(
        oid::EXT_BASIC_CONSTRAINTS,
        true,
        &BasicConstraints {
            ca: params.is_ca,
            path_len_constraint: if params.is_ca { params.path_len } else { None },
        },
    )?];
    if !params.key_usage.is_empty() {
        extensions.push(extension(
            oid::EXT_KEY_USAGE,
            true,
            &params.key_usage.to_bit_string()?,
        )?);
    }
    if !params.extended_key_usage.is_empty() {
        extensions.push(extension(
            oid::EXT_EXTENDED_KEY_USAGE,
            false,
            &ExtendedKeyUsage(params.extended_key_usage.clone()),
        )?);
    }
    if !params.dns_names.is_empty() || !params.ip_addresses.is_empty() {
        let mut names = Vec::new();
        for dns in &params.dns_names {
            names.push(GeneralName::DnsName(
                Ia5String::new(dns).map_err(PkiError::asn1("DNS name"))?,
            ));
        }
        for ip in &params.ip_addresses {
            names.push(GeneralName::from(*ip));
        }
        // RFC 5280 §4.2.1.6: critical when the subject is empty.
        let critical = subject.0.is_empty();
        extensions.push(extension(
            oid::EXT_SUBJECT_ALT_NAME,
            critical,
            &SubjectAltName(names),
        )?);
    }
    let ski = OctetString::new(key_id(&spki)).map_err(PkiError::asn1("key identifier"))?;
    extensions.push(extension(
        oid::EXT_SUBJECT_KEY_ID,
        false,
        &SubjectKeyIdentifier(ski),
    )?);
    extensions.push(extension(
        oid::EXT_AUTHORITY_KEY_ID,
        false,
        &AuthorityKeyIdentifier {
            key_identifier: Some(
                OctetString::new(issuer_key_id).map_err(PkiError::asn1("key identifier"))?,
            ),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        },
    )?);

    let signature_algorithm = signer.signature_algorithm()?;
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: serial(params)?,
        signature: signature_algorithm.clone(),
        issuer,
        validity: Validity {
            not_before: x509_time(params.not_before)?,
            not_after: x509_time(params.not_after)?,
        },
        subject,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs.to_der().map_err(PkiError::asn1("TBSCertificate"))?;
    let signature = signer.sign_sha256(&tbs_der)?;
    // A key held elsewhere (keystore, TPM) could sign with another key than the public key it
    // reports; a certificate nobody can verify must not leave here.
    crate::key::verify_signature(
        &signer.public_key_der(),
        &signature_algorithm,
        None,
        &tbs_der,
        &signature,
    )
    .map_err(|_| {
        PkiError::invalid(
            "signer",
            "the key's signature does not verify with the public key it reports",
        )
    })?;
    let cert = x509_cert::Certificate {
        tbs_certificate: tbs,
        signature_algorithm,
        signature: BitString::from_bytes(&signature).map_err(PkiError::asn1("signature"))?,
    };
    let der = cert.to_der().map_err(PkiError::asn1("certificate"))?;
    Certificate::from_der(&der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_usage_bits_roundtrip_and_trim() {
        let ku = KeyUsages::SIGN_AND_ENCRYPT;
        let bits = ku.to_bit_string().unwrap();
        // digitalSignature(0) + keyEncipherment(2): 0b1010_0000 with 5 unused bits.
        assert_eq!(bits.raw_bytes(), &[0xa0]);
        assert_eq!(bits.unused_bits(), 5);
        assert_eq!(KeyUsages::from_bit_string(&bits), ku);

        let decipher = KeyUsages {
            decipher_only: true,
            ..KeyUsages::NONE
        };
        let bits = decipher.to_bit_string().unwrap();
        assert_eq!(bits.raw_bytes(), &[0x00, 0x80]);
        assert_eq!(bits.unused_bits(), 7);
        assert_eq!(KeyUsages::from_bit_string(&bits), decipher);
    }

    #[test]
    fn times_switch_to_generalized_in_2050() {
        let y2049 = SystemTime::UNIX_EPOCH + Duration::from_secs(2_524_607_999);
        let y2050 = SystemTime::UNIX_EPOCH + Duration::from_secs(2_524_608_000);
        assert!(matches!(x509_time(y2049).unwrap(), Time::UtcTime(_)));
        assert!(matches!(x509_time(y2050).unwrap(), Time::GeneralTime(_)));
    }

    #[test]
    fn absurd_lifetimes_clamp_to_the_last_expressible_second() {
        let params = CertificateParams::leaf(Name::new("forever"), Duration::MAX, Duration::MAX);
        assert_eq!(params.not_after, no_expiry());
        let key = crate::PrivateKey::generate(crate::KeyAlgorithm::EcdsaP256).unwrap();
        let cert = self_signed(&params, &key).unwrap();
        assert_eq!(cert.not_after(), no_expiry());
        assert!(matches!(
            cert.inner().tbs_certificate.validity.not_after,
            Time::GeneralTime(_)
        ));
    }

    #[test]
    fn name_encodes_in_documented_order() {
        let name = Name {
            common_name: "dev".into(),
            organization: Some("Org".into()),
            organizational_unit: None,
            uid: Some("topic".into()),
        };
        assert_eq!(
            name.to_x509().unwrap().to_string(),
            "UID=topic,CN=dev,O=Org"
        );
    }
}
