//! Reading configuration profiles the way a device installs them: verify the CMS
//! signature (with the signer certificate the profile carries, and optionally against
//! a trusted CA), decode the plist and pick out the payloads enrollment needs.

use plist::{Dictionary, Value};
use x509_cert::Certificate;

use crate::cms;
use crate::error::ProfileError;
use crate::x509;

/// `PayloadType` of a SCEP identity payload.
pub const SCEP_PAYLOAD: &str = "com.apple.security.scep";
/// `PayloadType` of the MDM payload.
pub const MDM_PAYLOAD: &str = "com.apple.mdm";
/// `PayloadType` of a trusted root certificate payload.
pub const ROOT_PAYLOAD: &str = "com.apple.security.root";

/// The `com.apple.security.scep` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScepPayload {
    /// `PayloadUUID` (what `IdentityCertificateUUID` points at).
    pub payload_uuid: String,
    /// `URL`, without query string.
    pub url: String,
    /// `Name`: the CA identifier sent as GetCACert's `message`.
    pub name: Option<String>,
    /// `Subject` as RDNs of (type, value) pairs.
    pub subject: Vec<Vec<(String, String)>>,
    /// `Challenge`.
    pub challenge: Option<String>,
    /// `Keysize` (2048 when absent).
    pub key_size: u64,
    /// `Key Type` ("RSA" when absent).
    pub key_type: String,
    /// `Key Usage` bit mask: 1 signing, 4 encryption (0 when absent).
    pub key_usage: u64,
    /// `Retries`.
    pub retries: Option<u64>,
    /// `RetryDelay` in seconds.
    pub retry_delay: Option<u64>,
}

/// The `com.apple.mdm` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdmPayload {
    /// `ServerURL` (command reports).
    pub server_url: String,
    /// `CheckInURL`; check-ins go to `ServerURL` when absent.
    pub check_in_url: Option<String>,
    /// `Topic`: the push topic.
    pub topic: String,
    /// `IdentityCertificateUUID`.
    pub identity_certificate_uuid: String,
    /// `AccessRights` bit mask.
    pub access_rights: u64,
    /// `CheckOutWhenRemoved`.
    pub check_out_when_removed: bool,
    /// `SignMessage`: send `Mdm-Signature` headers instead of relying on TLS client auth.
    pub sign_message: bool,
    /// `ServerCapabilities`.
    pub server_capabilities: Vec<String>,
}

impl MdmPayload {
    /// Where check-in messages go.
    pub fn check_in_url(&self) -> &str {
        self.check_in_url.as_deref().unwrap_or(&self.server_url)
    }
}

/// One entry of `PayloadContent`, as reported by the ProfileList command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadSummary {
    /// `PayloadType`.
    pub payload_type: String,
    /// `PayloadIdentifier`.
    pub identifier: String,
    /// `PayloadUUID`.
    pub uuid: String,
    /// `PayloadVersion`.
    pub version: i64,
    /// `PayloadDisplayName`.
    pub display_name: Option<String>,
}

/// A parsed (and, when signed, verified) profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Top-level `PayloadIdentifier`.
    pub identifier: String,
    /// Top-level `PayloadUUID`.
    pub uuid: String,
    /// Top-level `PayloadDisplayName`.
    pub display_name: Option<String>,
    /// Top-level `PayloadVersion`.
    pub version: i64,
    /// `PayloadRemovalDisallowed`.
    pub removal_disallowed: bool,
    /// Every payload in `PayloadContent`.
    pub payloads: Vec<PayloadSummary>,
    /// The SCEP payload, if any.
    pub scep: Option<ScepPayload>,
    /// The MDM payload, if any.
    pub mdm: Option<MdmPayload>,
    /// Certificates from `com.apple.security.root` payloads.
    pub roots: Vec<Certificate>,
    /// The signer certificate when the profile was signed.
    pub signer: Option<Certificate>,
    /// The other certificates the signature carried.
    pub signer_chain: Vec<Certificate>,
    /// The whole plist.
    pub plist: Dictionary,
}

/// Whether `bytes` look like a CMS message rather than a plist (DER starts with SEQUENCE).
fn is_cms(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x30)
}

/// Parses a profile. A signed profile's signature must verify with the certificate it
/// carries; with `trust`, that certificate must also chain to one of those CAs. With
/// `require_signature`, unsigned profiles are refused.
pub fn parse_profile(
    bytes: &[u8],
    trust: Option<&[Certificate]>,
    require_signature: bool,
) -> Result<Profile, ProfileError> {
    let (plist_bytes, signer, signer_chain) = if is_cms(bytes) {
        let parsed = cms::parse_signed_data(bytes).map_err(ProfileError::Signature)?;
        let verified = parsed.verify(None, &[]).map_err(ProfileError::Signature)?;
        if let Some(anchors) = trust {
            cms::verify_signer_chain(&parsed, &verified, anchors)
                .map_err(ProfileError::Signature)?;
        }
        let content = parsed.content.clone().unwrap_or_default();
        let chain = parsed
            .certificates
            .iter()
            .filter(|c| **c != verified.certificate)
            .cloned()
            .collect();
        (content, Some(verified.certificate), chain)
    } else {
        if require_signature {
            return Err(ProfileError::Unsigned);
        }
        (bytes.to_vec(), None, Vec::new())
    };
    let value = Value::from_reader(std::io::Cursor::new(plist_bytes))?;
    let plist = value
        .into_dictionary()
        .ok_or_else(|| missing("(top level dictionary)"))?;
    let mut profile = interpret(&plist)?;
    profile.signer = signer;
    profile.signer_chain = signer_chain;
    Ok(profile)
}

fn missing(key: &str) -> ProfileError {
    ProfileError::MissingKey {
        key: key.to_owned(),
    }
}

fn string(dict: &Dictionary, key: &str, ctx: &str) -> Result<String, ProfileError> {
    dict.get(key)
        .and_then(Value::as_string)
        .map(str::to_owned)
        .ok_or_else(|| missing(&format!("{ctx}/{key}")))
}

fn opt_string(dict: &Dictionary, key: &str) -> Option<String> {
    dict.get(key).and_then(Value::as_string).map(str::to_owned)
}

fn opt_uint(dict: &Dictionary, key: &str) -> Option<u64> {
    dict.get(key).and_then(|v| {
        v.as_unsigned_integer()
            .or_else(|| v.as_string().and_then(|s| s.parse().ok()))
    })
}

fn opt_bool(dict: &Dictionary, key: &str) -> Option<bool> {
    dict.get(key).and_then(Value::as_boolean)
}

fn interpret(plist: &Dictionary) -> Result<Profile, ProfileError> {
    let content = plist
        .get("PayloadContent")
        .and_then(Value::as_array)
        .ok_or_else(|| missing("PayloadContent"))?;
    let mut payloads = Vec::new();
    let mut scep_payloads = Vec::new();
    let mut mdm = None;
    let mut roots = Vec::new();
    for item in content {
        let dict = item
            .as_dictionary()
            .ok_or_else(|| missing("PayloadContent[]"))?;
        let payload_type = string(dict, "PayloadType", "PayloadContent[]")?;
        let uuid = string(dict, "PayloadUUID", &payload_type)?;
        payloads.push(PayloadSummary {
            payload_type: payload_type.clone(),
            identifier: opt_string(dict, "PayloadIdentifier").unwrap_or_default(),
            uuid: uuid.clone(),
            version: dict
                .get("PayloadVersion")
                .and_then(Value::as_signed_integer)
                .unwrap_or(1),
            display_name: opt_string(dict, "PayloadDisplayName"),
        });
        match payload_type.as_str() {
            SCEP_PAYLOAD => scep_payloads.push(scep(dict, uuid)?),
            MDM_PAYLOAD => mdm = Some(mdm_payload(dict)?),
            ROOT_PAYLOAD => {
                let der = dict
                    .get("PayloadContent")
                    .and_then(Value::as_data)
                    .ok_or_else(|| missing(&format!("{ROOT_PAYLOAD}/PayloadContent")))?;
                // Root payloads may hold DER or PEM; devices accept both.
                let cert = x509::certificate_from_der(der)
                    .ok()
                    .or_else(|| {
                        x509::certificates_from_pem(der)
                            .ok()
                            .and_then(|v| v.into_iter().next())
                    })
                    .ok_or_else(|| ProfileError::BadCertificate(uuid.clone()))?;
                roots.push(cert);
            }
            _ => {}
        }
    }
    let scep = match &mdm {
        Some(m) => {
            let found = scep_payloads
                .into_iter()
                .find(|s| s.payload_uuid == m.identity_certificate_uuid);
            if found.is_none() {
                return Err(ProfileError::IdentityNotFound(
                    m.identity_certificate_uuid.clone(),
                ));
            }
            found
        }
        None => scep_payloads.into_iter().next(),
    };
    Ok(Profile {
        identifier: string(plist, "PayloadIdentifier", "")?,
        uuid: string(plist, "PayloadUUID", "")?,
        display_name: opt_string(plist, "PayloadDisplayName"),
        version: plist
            .get("PayloadVersion")
            .and_then(Value::as_signed_integer)
            .unwrap_or(1),
        removal_disallowed: opt_bool(plist, "PayloadRemovalDisallowed").unwrap_or(false),
        payloads,
        scep,
        mdm,
        roots,
        signer: None,
        signer_chain: Vec::new(),
        plist: plist.clone(),
    })
}

fn scep(dict: &Dictionary, payload_uuid: String) -> Result<ScepPayload, ProfileError> {
    let inner = dict
        .get("PayloadContent")
        .and_then(Value::as_dictionary)
        .ok_or_else(|| missing(&format!("{SCEP_PAYLOAD}/PayloadContent")))?;
    let ctx = SCEP_PAYLOAD;
    let mut subject = Vec::new();
    if let Some(rdns) = inner.get("Subject") {
        let rdns = rdns
            .as_array()
            .ok_or_else(|| missing(&format!("{ctx}/Subject")))?;
        for rdn in rdns {
            let mut pairs = Vec::new();
            let atvs = rdn
                .as_array()
                .ok_or_else(|| missing(&format!("{ctx}/Subject[]")))?;
            for atv in atvs {
                let pair = atv
                    .as_array()
                    .ok_or_else(|| missing(&format!("{ctx}/Subject[][]")))?;
                match pair.as_slice() {
                    [Value::String(k), Value::String(v)] => pairs.push((k.clone(), v.clone())),
                    _ => return Err(missing(&format!("{ctx}/Subject[][] pair"))),
                }
            }
            subject.push(pairs);
        }
    }
    let url = string(inner, "URL", ctx)?;
    Ok(ScepPayload {
        payload_uuid,
        url,
        name: opt_string(inner, "Name"),
        subject,
        challenge: opt_string(inner, "Challenge"),
        key_size: opt_uint(inner, "Keysize").unwrap_or(2048),
        key_type: opt_string(inner, "Key Type").unwrap_or_else(|| "RSA".to_owned()),
        key_usage: opt_uint(inner, "Key Usage").unwrap_or(0),
        retries: opt_uint(inner, "Retries"),
        retry_delay: opt_uint(inner, "RetryDelay"),
    })
}

fn mdm_payload(dict: &Dictionary) -> Result<MdmPayload, ProfileError> {
    let ctx = MDM_PAYLOAD;
    Ok(MdmPayload {
        server_url: string(dict, "ServerURL", ctx)?,
        check_in_url: opt_string(dict, "CheckInURL"),
        topic: string(dict, "Topic", ctx)?,
        identity_certificate_uuid: string(dict, "IdentityCertificateUUID", ctx)?,
        access_rights: opt_uint(dict, "AccessRights")
            .ok_or_else(|| missing(&format!("{ctx}/AccessRights")))?,
        check_out_when_removed: opt_bool(dict, "CheckOutWhenRemoved").unwrap_or(false),
        sign_message: opt_bool(dict, "SignMessage").unwrap_or(false),
        server_capabilities: dict
            .get("ServerCapabilities")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_string)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use crate::x509::CertificateParams;
    use der::Encode;

    /// An enrollment profile shaped like docs/design/endpoints.md describes.
    pub(crate) fn sample_profile(ca: &Certificate) -> Dictionary {
        let mut root = Dictionary::new();
        root.insert("PayloadType".into(), "com.apple.security.root".into());
        root.insert(
            "PayloadUUID".into(),
            "11111111-1111-1111-1111-111111111111".into(),
        );
        root.insert("PayloadIdentifier".into(), "lan.example.mdm.ca".into());
        root.insert("PayloadVersion".into(), 1.into());
        root.insert("PayloadContent".into(), Value::Data(ca.to_der().unwrap()));

        let mut scep_inner = Dictionary::new();
        scep_inner.insert("URL".into(), "https://127.0.0.1:8443/scep".into());
        scep_inner.insert("Name".into(), "mdm-ca".into());
        scep_inner.insert(
            "Subject".into(),
            Value::Array(vec![
                Value::Array(vec![Value::Array(vec!["O".into(), "Example".into()])]),
                Value::Array(vec![Value::Array(vec!["CN".into(), "mdm-identity".into()])]),
            ]),
        );
        scep_inner.insert("Challenge".into(), "one-time-secret".into());
        scep_inner.insert("Keysize".into(), 2048.into());
        scep_inner.insert("Key Type".into(), "RSA".into());
        scep_inner.insert("Key Usage".into(), 5.into());
        let mut scep = Dictionary::new();
        scep.insert("PayloadType".into(), SCEP_PAYLOAD.into());
        scep.insert(
            "PayloadUUID".into(),
            "22222222-2222-2222-2222-222222222222".into(),
        );
        scep.insert("PayloadIdentifier".into(), "lan.example.mdm.scep".into());
        scep.insert("PayloadVersion".into(), 1.into());
        scep.insert("PayloadContent".into(), Value::Dictionary(scep_inner));

        let mut mdm = Dictionary::new();
        mdm.insert("PayloadType".into(), MDM_PAYLOAD.into());
        mdm.insert(
            "PayloadUUID".into(),
            "33333333-3333-3333-3333-333333333333".into(),
        );
        mdm.insert("PayloadIdentifier".into(), "lan.example.mdm.mdm".into());
        mdm.insert("PayloadVersion".into(), 1.into());
        mdm.insert(
            "ServerURL".into(),
            "https://127.0.0.1:8443/mdm/connect".into(),
        );
        mdm.insert(
            "CheckInURL".into(),
            "https://127.0.0.1:8443/mdm/checkin".into(),
        );
        mdm.insert("Topic".into(), "com.apple.mgmt.External.0b7c9a2e".into());
        mdm.insert(
            "IdentityCertificateUUID".into(),
            "22222222-2222-2222-2222-222222222222".into(),
        );
        mdm.insert("AccessRights".into(), 8191.into());
        mdm.insert("CheckOutWhenRemoved".into(), true.into());
        mdm.insert("SignMessage".into(), true.into());
        mdm.insert(
            "ServerCapabilities".into(),
            Value::Array(vec!["com.apple.mdm.per-user-connections".into()]),
        );

        let mut top = Dictionary::new();
        top.insert("PayloadType".into(), "Configuration".into());
        top.insert(
            "PayloadUUID".into(),
            "44444444-4444-4444-4444-444444444444".into(),
        );
        top.insert("PayloadIdentifier".into(), "lan.example.mdm.enroll".into());
        top.insert("PayloadDisplayName".into(), "Enrollment".into());
        top.insert("PayloadVersion".into(), 1.into());
        top.insert(
            "PayloadContent".into(),
            Value::Array(vec![
                Value::Dictionary(root),
                Value::Dictionary(scep),
                Value::Dictionary(mdm),
            ]),
        );
        top
    }

    pub(crate) fn ca_and_signer() -> (Certificate, Certificate, PrivateKey) {
        let ca_key = PrivateKey::generate_rsa2048().unwrap();
        let ca = x509::self_signed(
            &CertificateParams::new(x509::name(&[("CN", "Appliance CA")]).unwrap()).ca(None),
            &ca_key,
        )
        .unwrap();
        let signer_key = PrivateKey::generate_rsa2048().unwrap();
        let signer = x509::issue(
            &CertificateParams::new(x509::name(&[("CN", "Profile signing")]).unwrap()),
            &signer_key.public_key_info().unwrap(),
            Some(&ca),
            &ca_key,
        )
        .unwrap();
        (ca, signer, signer_key)
    }

    pub(crate) fn signed(
        plist: &Dictionary,
        signer: &Certificate,
        key: &PrivateKey,
        ca: &Certificate,
    ) -> Vec<u8> {
        let mut xml = Vec::new();
        Value::Dictionary(plist.clone())
            .to_writer_xml(&mut xml)
            .unwrap();
        cms::SignedDataBuilder::new(&xml)
            .certificate(signer.clone())
            .certificate(ca.clone())
            .sign(signer, key)
            .unwrap()
    }

    #[test]
    fn parses_a_signed_enrollment_profile() {
        let (ca, signer, key) = ca_and_signer();
        let bytes = signed(&sample_profile(&ca), &signer, &key, &ca);
        let p = parse_profile(&bytes, Some(std::slice::from_ref(&ca)), true).unwrap();
        let mdm = p.mdm.unwrap();
        assert_eq!(mdm.check_in_url(), "https://127.0.0.1:8443/mdm/checkin");
        assert!(mdm.sign_message);
        assert_eq!(mdm.access_rights, 8191);
        let scep = p.scep.unwrap();
        assert_eq!(scep.challenge.as_deref(), Some("one-time-secret"));
        assert_eq!(scep.key_usage, 5);
        assert_eq!(scep.subject.len(), 2);
        assert_eq!(p.roots, vec![ca.clone()]);
        assert_eq!(p.signer, Some(signer));
        assert_eq!(p.payloads.len(), 3);

        let (other_ca, _, _) = ca_and_signer();
        assert!(matches!(
            parse_profile(&bytes, Some(&[other_ca]), true),
            Err(ProfileError::Signature(_))
        ));
        let mut tampered = bytes.clone();
        let pos = tampered.windows(7).position(|w| w == b"8191</i").unwrap();
        tampered[pos] = b'9';
        assert!(matches!(
            parse_profile(&tampered, None, true),
            Err(ProfileError::Signature(_))
        ));
    }

    #[test]
    fn unsigned_and_inconsistent_profiles() {
        let (ca, _, _) = ca_and_signer();
        let mut xml = Vec::new();
        Value::Dictionary(sample_profile(&ca))
            .to_writer_xml(&mut xml)
            .unwrap();
        assert!(matches!(
            parse_profile(&xml, None, true),
            Err(ProfileError::Unsigned)
        ));
        assert!(parse_profile(&xml, None, false).unwrap().signer.is_none());

        let mut broken = sample_profile(&ca);
        if let Some(Value::Array(items)) = broken.get_mut("PayloadContent") {
            items.remove(1);
        }
        let mut xml = Vec::new();
        Value::Dictionary(broken).to_writer_xml(&mut xml).unwrap();
        assert!(matches!(
            parse_profile(&xml, None, false),
            Err(ProfileError::IdentityNotFound(_))
        ));
    }
}
