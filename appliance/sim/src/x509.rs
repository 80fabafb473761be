//! Minimal X.509 issuing and checking: names, certificates (CA, device, TLS), PKCS #10
//! requests, chain verification. Built on the `x509-cert` types and signed with
//! [`crate::keys::PrivateKey`].

use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use const_oid::ObjectIdentifier;
use der::asn1::{
    BitString, GeneralizedTime, Ia5String, OctetString, PrintableString, SetOfVec, UtcTime,
    Utf8StringRef,
};
use der::{Any, DateTime, Decode, Encode, EncodePem, Tag, Tagged};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::attr::{Attribute, AttributeTypeAndValue};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::request::{CertReq, CertReqInfo};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

pub use x509_cert::ext::pkix::KeyUsages as KeyUsageFlags;

use crate::error::CryptoError;
use crate::keys::{self, PrivateKey};
use crate::oids;

/// Maps a short attribute name (`CN`, `O`, `OU`, `C`, ...) or a dotted OID to its OID.
pub fn attribute_oid(name: &str) -> Option<ObjectIdentifier> {
    let oid = match name.to_ascii_uppercase().as_str() {
        "CN" => oids::AT_COMMON_NAME,
        "C" => oids::AT_COUNTRY,
        "L" => oids::AT_LOCALITY,
        "ST" => oids::AT_STATE,
        "O" => oids::AT_ORGANIZATION,
        "OU" => oids::AT_ORG_UNIT,
        "SERIALNUMBER" => oids::AT_SERIAL_NUMBER,
        "E" | "EMAIL" | "EMAILADDRESS" => oids::AT_EMAIL,
        "DC" => oids::AT_DOMAIN_COMPONENT,
        "UID" => oids::AT_USER_ID,
        _ => return ObjectIdentifier::from_str(name).ok(),
    };
    Some(oid)
}

fn attribute_value(oid: ObjectIdentifier, value: &str) -> Result<Any, CryptoError> {
    let bad = |_| CryptoError::InvalidName(format!("{oid} = {value:?}"));
    // RFC 5280 fixes the string types of a few attributes; everything else is UTF8String.
    match oid {
        oids::AT_COUNTRY | oids::AT_SERIAL_NUMBER => Ok(Any::encode_from(
            &PrintableString::new(value).map_err(bad)?,
        )?),
        oids::AT_EMAIL | oids::AT_DOMAIN_COMPONENT => {
            Ok(Any::encode_from(&Ia5String::new(value).map_err(bad)?)?)
        }
        _ => Ok(Any::encode_from(&Utf8StringRef::new(value).map_err(bad)?)?),
    }
}

/// Builds a distinguished name with one attribute per RDN, in order
/// (`[("C","US"),("O","Apple Inc."),("CN","x")]`).
pub fn name(pairs: &[(&str, &str)]) -> Result<Name, CryptoError> {
    let rdns: Vec<Vec<(String, String)>> = pairs
        .iter()
        .map(|(k, v)| vec![((*k).to_owned(), (*v).to_owned())])
        .collect();
    name_from_rdns(&rdns)
}

/// Builds a distinguished name from RDNs that may each hold several attributes, the shape
/// of a SCEP payload's `Subject` (`[[["O","Org"]],[["CN","x"]]]`).
pub fn name_from_rdns(rdns: &[Vec<(String, String)>]) -> Result<Name, CryptoError> {
    let mut seq = Vec::with_capacity(rdns.len());
    for rdn in rdns {
        let mut set = SetOfVec::new();
        for (k, v) in rdn {
            let oid = attribute_oid(k)
                .ok_or_else(|| CryptoError::InvalidName(format!("unknown attribute {k:?}")))?;
            set.insert(AttributeTypeAndValue {
                oid,
                value: attribute_value(oid, v)?,
            })?;
        }
        seq.push(RelativeDistinguishedName(set));
    }
    Ok(RdnSequence(seq))
}

/// The first common name in `name`, if any.
pub fn common_name(name: &Name) -> Option<String> {
    name.0.iter().flat_map(|rdn| rdn.0.iter()).find_map(|atv| {
        if atv.oid != oids::AT_COMMON_NAME {
            return None;
        }
        directory_string(&atv.value)
    })
}

fn directory_string(value: &Any) -> Option<String> {
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::TeletexString => {
            String::from_utf8(value.value().to_vec()).ok()
        }
        _ => None,
    }
}

/// Converts a system time to an X.509 `Time`: UTCTime through 2049, GeneralizedTime
/// after, as RFC 5280 §4.1.2.5 requires.
pub fn x509_time(t: SystemTime) -> Result<Time, CryptoError> {
    let dt = DateTime::from_system_time(t).map_err(|_| CryptoError::Time)?;
    if dt.year() < 2050 {
        Ok(Time::UtcTime(UtcTime::from_date_time(dt)?))
    } else {
        Ok(Time::GeneralTime(GeneralizedTime::from_date_time(dt)))
    }
}

/// Random positive 16-byte serial number.
pub fn random_serial() -> Result<SerialNumber, CryptoError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CryptoError::KeyGeneration)?;
    // Positive and without a leading zero octet, so the encoding is exactly 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::new(&bytes)?)
}

/// RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits.
pub fn key_identifier(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    keys::DigestAlgorithm::Sha1.digest(spki.subject_public_key.raw_bytes())
}

/// What a certificate should say. Defaults: a one-year end-entity certificate valid
/// from an hour ago (to tolerate clock skew), no extensions beyond the key identifiers.
#[derive(Debug, Clone)]
pub struct CertificateParams {
    /// Subject name.
    pub subject: Name,
    /// Validity start.
    pub not_before: SystemTime,
    /// Validity end.
    pub not_after: SystemTime,
    /// `basicConstraints cA`; `Some(n)` also sets pathLenConstraint n.
    pub ca: Option<Option<u8>>,
    /// keyUsage bits (extension omitted when empty).
    pub key_usage: Vec<KeyUsages>,
    /// extKeyUsage purposes (extension omitted when empty).
    pub extended_key_usage: Vec<ObjectIdentifier>,
    /// DNS subjectAltNames.
    pub dns_names: Vec<String>,
    /// IP subjectAltNames.
    pub ip_addresses: Vec<IpAddr>,
}

impl CertificateParams {
    /// End-entity defaults for `subject`.
    pub fn new(subject: Name) -> Self {
        let now = SystemTime::now();
        Self {
            subject,
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(365 * 24 * 3600),
            ca: None,
            key_usage: Vec::new(),
            extended_key_usage: Vec::new(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
        }
    }

    /// Sets the validity to `days` days from an hour ago.
    pub fn valid_for_days(mut self, days: u64) -> Self {
        let now = SystemTime::now();
        self.not_before = now - Duration::from_secs(3600);
        self.not_after = now + Duration::from_secs(days * 24 * 3600);
        self
    }

    /// Makes this a CA certificate (keyCertSign + cRLSign unless key usages are set).
    pub fn ca(mut self, path_len: Option<u8>) -> Self {
        self.ca = Some(path_len);
        if self.key_usage.is_empty() {
            self.key_usage = vec![KeyUsages::KeyCertSign, KeyUsages::CRLSign];
        }
        self
    }

    /// Sets the key usage bits.
    pub fn key_usage(mut self, usages: &[KeyUsages]) -> Self {
        self.key_usage = usages.to_vec();
        self
    }

    /// Sets the extended key usage purposes.
    pub fn extended_key_usage(mut self, purposes: &[ObjectIdentifier]) -> Self {
        self.extended_key_usage = purposes.to_vec();
        self
    }

    /// Adds subjectAltNames.
    pub fn subject_alt_names(mut self, dns: &[&str], ips: &[IpAddr]) -> Self {
        self.dns_names = dns.iter().map(|s| (*s).to_owned()).collect();
        self.ip_addresses = ips.to_vec();
        self
    }
}

fn extension<T: Encode>(
    oid: ObjectIdentifier,
    critical: bool,
    value: &T,
) -> Result<Extension, CryptoError> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

/// Issues a certificate for `subject_key` signed by `issuer_key`. `issuer` is `None` for
/// a self-signed certificate (then `issuer_key` must be the subject's own key).
pub fn issue(
    params: &CertificateParams,
    subject_key: &SubjectPublicKeyInfoOwned,
    issuer: Option<&Certificate>,
    issuer_key: &PrivateKey,
) -> Result<Certificate, CryptoError> {
    let (issuer_name, issuer_key_id) = match issuer {
        Some(cert) => (
            cert.tbs_certificate.subject.clone(),
            key_identifier(&cert.tbs_certificate.subject_public_key_info),
        ),
        None => (params.subject.clone(), key_identifier(subject_key)),
    };

    let mut extensions = Vec::new();
    if let Some(path_len) = params.ca {
        extensions.push(extension(
            oids::EXT_BASIC_CONSTRAINTS,
            true,
            &BasicConstraints {
                ca: true,
                path_len_constraint: path_len,
            },
        )?);
    } else {
        extensions.push(extension(
            oids::EXT_BASIC_CONSTRAINTS,
            true,
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
        )?);
    }
    if !params.key_usage.is_empty() {
        let mut flags = der::flagset::FlagSet::<KeyUsages>::default();
        for u in &params.key_usage {
            flags |= *u;
        }
        extensions.push(extension(oids::EXT_KEY_USAGE, true, &KeyUsage(flags))?);
    }
    if !params.extended_key_usage.is_empty() {
        extensions.push(extension(
            oids::EXT_EXTENDED_KEY_USAGE,
            false,
            &ExtendedKeyUsage(params.extended_key_usage.clone()),
        )?);
    }
    if !params.dns_names.is_empty() || !params.ip_addresses.is_empty() {
        let mut names = Vec::new();
        for dns in &params.dns_names {
            names.push(GeneralName::DnsName(
                Ia5String::new(dns).map_err(|_| CryptoError::InvalidName(dns.clone()))?,
            ));
        }
        for ip in &params.ip_addresses {
            let bytes = match ip {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            };
            names.push(GeneralName::IpAddress(OctetString::new(bytes)?));
        }
        extensions.push(extension(
            oids::EXT_SUBJECT_ALT_NAME,
            false,
            &SubjectAltName(names),
        )?);
    }
    extensions.push(extension(
        oids::EXT_SUBJECT_KEY_ID,
        false,
        &SubjectKeyIdentifier(OctetString::new(key_identifier(subject_key))?),
    )?);
    if issuer.is_some() {
        extensions.push(extension(
            oids::EXT_AUTHORITY_KEY_ID,
            false,
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(issuer_key_id)?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
        )?);
    }

    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: random_serial()?,
        signature: issuer_key.x509_signature_algorithm(),
        issuer: issuer_name,
        validity: Validity {
            not_before: x509_time(params.not_before)?,
            not_after: x509_time(params.not_after)?,
        },
        subject: params.subject.clone(),
        subject_public_key_info: subject_key.clone(),
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let signature = issuer_key.sign_sha256(&tbs.to_der()?)?;
    Ok(Certificate {
        tbs_certificate: tbs,
        signature_algorithm: issuer_key.x509_signature_algorithm(),
        signature: BitString::from_bytes(&signature)?,
    })
}

/// Issues a self-signed certificate for `key`.
pub fn self_signed(
    params: &CertificateParams,
    key: &PrivateKey,
) -> Result<Certificate, CryptoError> {
    issue(params, &key.public_key_info()?, None, key)
}

/// Checks that `cert`'s signature was made by `issuer`'s key and that the names chain.
pub fn verify_issued_by(cert: &Certificate, issuer: &Certificate) -> Result<(), CryptoError> {
    if cert.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return Err(CryptoError::UntrustedChain("issuer name does not match"));
    }
    let digest = keys::digest_for_signature_algorithm(&cert.signature_algorithm.oid, None)?;
    let signature = cert.signature.as_bytes().ok_or(CryptoError::MalformedCms(
        "certificate signature has unused bits",
    ))?;
    keys::verify_signature(
        &issuer.tbs_certificate.subject_public_key_info,
        digest,
        &cert.tbs_certificate.to_der()?,
        signature,
    )
}

/// Whether `cert` is within its validity period at `now`.
pub fn is_valid_at(cert: &Certificate, now: SystemTime) -> bool {
    let v = &cert.tbs_certificate.validity;
    v.not_before.to_system_time() <= now && now <= v.not_after.to_system_time()
}

/// Verifies that `leaf` chains to one of `anchors` through `intermediates` (signatures,
/// issuer names and validity periods; no revocation, no policy processing).
pub fn verify_chain(
    leaf: &Certificate,
    intermediates: &[Certificate],
    anchors: &[Certificate],
) -> Result<(), CryptoError> {
    let now = SystemTime::now();
    let mut current = leaf.clone();
    // Four hops is more than any chain in this protocol (leaf, RA/intermediate, root).
    for _ in 0..4 {
        if !is_valid_at(&current, now) {
            return Err(CryptoError::CertificateExpired);
        }
        if anchors.iter().any(|a| a == &current) {
            return Ok(());
        }
        if let Some(anchor) = anchors
            .iter()
            .find(|a| verify_issued_by(&current, a).is_ok())
        {
            if !is_valid_at(anchor, now) {
                return Err(CryptoError::CertificateExpired);
            }
            return Ok(());
        }
        let Some(next) = intermediates
            .iter()
            .find(|c| *c != &current && verify_issued_by(&current, c).is_ok())
        else {
            return Err(CryptoError::UntrustedChain("no issuer found"));
        };
        current = next.clone();
    }
    Err(CryptoError::UntrustedChain("chain too long"))
}

/// Reads the keyUsage extension, if present.
pub fn key_usage(cert: &Certificate) -> Option<KeyUsage> {
    cert.tbs_certificate
        .get::<KeyUsage>()
        .ok()
        .flatten()
        .map(|(_, ku)| ku)
}

/// Reads basicConstraints cA (false when absent).
pub fn is_ca(cert: &Certificate) -> bool {
    cert.tbs_certificate
        .get::<BasicConstraints>()
        .ok()
        .flatten()
        .is_some_and(|(_, bc)| bc.ca)
}

/// PEM-encodes a certificate.
pub fn to_pem(cert: &Certificate) -> Result<String, CryptoError> {
    Ok(cert.to_pem(der::pem::LineEnding::LF)?)
}

/// Reads every `CERTIFICATE` block in `pem`, ignoring text between blocks and blocks
/// with other labels. Empty input gives an empty list.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<Certificate>, CryptoError> {
    // Parsed block by block rather than with `Certificate::load_pem_chain`, which
    // mishandles empty input.
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    let text =
        std::str::from_utf8(pem).map_err(|_| CryptoError::MalformedCms("PEM is not UTF-8"))?;
    let mut certs = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let block = &rest[start..];
        let end_marker = block
            .find(END)
            .ok_or(CryptoError::MalformedCms("PEM block without END line"))?;
        let after_end = &block[end_marker..];
        let line_end = after_end.find('\n').map_or(after_end.len(), |i| i + 1);
        let whole = &block[..end_marker + line_end];
        let (label, der) = der::pem::decode_vec(whole.as_bytes()).map_err(der::Error::from)?;
        if label == "CERTIFICATE" {
            certs.push(Certificate::from_der(&der)?);
        }
        rest = &block[end_marker + line_end..];
    }
    Ok(certs)
}

/// Decodes a DER certificate.
pub fn certificate_from_der(der: &[u8]) -> Result<Certificate, CryptoError> {
    Ok(Certificate::from_der(der)?)
}

/// SHA-256 fingerprint of the DER certificate, lowercase hex.
pub fn fingerprint_sha256(cert: &Certificate) -> Result<String, CryptoError> {
    Ok(hex::encode(
        keys::DigestAlgorithm::Sha256.digest(&cert.to_der()?),
    ))
}

/// Builds a signed PKCS #10 request with an optional `challengePassword` and a
/// keyUsage extension request.
pub fn certificate_request(
    subject: &Name,
    key: &PrivateKey,
    challenge: Option<&str>,
    key_usage: &[KeyUsages],
) -> Result<CertReq, CryptoError> {
    let mut attributes = SetOfVec::new();
    if let Some(challenge) = challenge {
        // PrintableString when the challenge fits its alphabet (what most clients send),
        // UTF8String otherwise; both are valid DirectoryString choices.
        let value = match PrintableString::new(challenge) {
            Ok(p) => Any::encode_from(&p)?,
            Err(_) => Any::encode_from(&Utf8StringRef::new(challenge)?)?,
        };
        attributes.insert(Attribute {
            oid: oids::ATTR_CHALLENGE_PASSWORD,
            values: SetOfVec::try_from(vec![value])?,
        })?;
    }
    if !key_usage.is_empty() {
        let mut flags = der::flagset::FlagSet::<KeyUsages>::default();
        for u in key_usage {
            flags |= *u;
        }
        let ext_req = vec![extension(oids::EXT_KEY_USAGE, true, &KeyUsage(flags))?];
        attributes.insert(Attribute {
            oid: oids::ATTR_EXTENSION_REQUEST,
            values: SetOfVec::try_from(vec![Any::encode_from(&ext_req)?])?,
        })?;
    }
    let info = CertReqInfo {
        version: x509_cert::request::Version::V1,
        subject: subject.clone(),
        public_key: key.public_key_info()?,
        attributes,
    };
    let signature = key.sign_sha256(&info.to_der()?)?;
    Ok(CertReq {
        info,
        algorithm: key.x509_signature_algorithm(),
        signature: BitString::from_bytes(&signature)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_verification() {
        let root_key = PrivateKey::generate_rsa2048().unwrap();
        let root = self_signed(
            &CertificateParams::new(name(&[("CN", "Root")]).unwrap()).ca(None),
            &root_key,
        )
        .unwrap();
        let int_key = PrivateKey::generate(keys::KeyAlgorithm::EcdsaP256).unwrap();
        let int = issue(
            &CertificateParams::new(name(&[("CN", "Int")]).unwrap()).ca(Some(0)),
            &int_key.public_key_info().unwrap(),
            Some(&root),
            &root_key,
        )
        .unwrap();
        let leaf_key = PrivateKey::generate_rsa2048().unwrap();
        let leaf = issue(
            &CertificateParams::new(name(&[("CN", "Leaf")]).unwrap()),
            &leaf_key.public_key_info().unwrap(),
            Some(&int),
            &int_key,
        )
        .unwrap();
        verify_chain(
            &leaf,
            std::slice::from_ref(&int),
            std::slice::from_ref(&root),
        )
        .unwrap();
        assert!(verify_chain(&leaf, &[], std::slice::from_ref(&root)).is_err());
        assert!(verify_issued_by(&leaf, &root).is_err());
        assert!(is_ca(&int) && !is_ca(&leaf));
        assert_eq!(
            common_name(&leaf.tbs_certificate.subject).as_deref(),
            Some("Leaf")
        );
        let pem = format!(
            "junk\n{}{}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            to_pem(&leaf).unwrap(),
            to_pem(&root).unwrap()
        );
        assert_eq!(
            certificates_from_pem(pem.as_bytes()).unwrap(),
            vec![leaf, root]
        );
        assert!(certificates_from_pem(b"").unwrap().is_empty());
        assert!(certificates_from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA").is_err());
    }

    #[test]
    fn subject_from_payload_shape() {
        let n = name_from_rdns(&[
            vec![("C".into(), "US".into())],
            vec![("O".into(), "Example".into()), ("OU".into(), "IT".into())],
            vec![("2.5.4.3".into(), "device".into())],
        ])
        .unwrap();
        // RFC 4514 strings list RDNs last-first; attributes inside an RDN follow DER order.
        assert_eq!(n.to_string(), "CN=device,OU=IT+O=Example,C=US");
        assert_eq!(n.0.len(), 3);
        assert!(name(&[("XYZ", "a")]).is_err());
        assert!(name(&[("C", "Ü")]).is_err());
    }
}
