//! The CMS (RFC 5652) subset the device protocols need: SignedData (attached, detached,
//! certs-only) and EnvelopedData with RSA key transport and AES/3DES-CBC content
//! encryption. Only DER is read; BER indefinite lengths are rejected.

use std::time::SystemTime;

use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::{
    EncryptedContentInfo, EnvelopedData, KeyTransRecipientInfo, RecipientIdentifier, RecipientInfo,
    RecipientInfos,
};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use const_oid::ObjectIdentifier;
use der::asn1::{OctetString, PrintableString, SetOfVec};
use der::{Any, Decode, Encode, Tag, Tagged};
use x509_cert::attr::Attribute;
use x509_cert::Certificate;
use zeroize::Zeroizing;

use crate::error::CryptoError;
use crate::keys::{self, DigestAlgorithm, PrivateKey};
use crate::oids;
use crate::x509;

/// Builds a CMS `SignedData` wrapped in a `ContentInfo`.
///
/// Signed attributes always include contentType, signingTime and messageDigest; callers
/// add protocol attributes (SCEP's messageType, nonces, ...) with [`Self::attribute`].
#[derive(Debug, Clone)]
pub struct SignedDataBuilder<'a> {
    content: &'a [u8],
    content_type: ObjectIdentifier,
    detached: bool,
    certificates: Vec<Certificate>,
    attributes: Vec<Attribute>,
    tamper_signature: bool,
}

impl<'a> SignedDataBuilder<'a> {
    /// Signs `content` as `id-data`, attached.
    pub fn new(content: &'a [u8]) -> Self {
        Self {
            content,
            content_type: oids::ID_DATA,
            detached: false,
            certificates: Vec::new(),
            attributes: Vec::new(),
            tamper_signature: false,
        }
    }

    /// Leaves the content out of the message (a detached signature).
    pub fn detached(mut self) -> Self {
        self.detached = true;
        self
    }

    /// Adds a certificate to `certificates` (add the signer's own one explicitly).
    pub fn certificate(mut self, cert: Certificate) -> Self {
        self.certificates.push(cert);
        self
    }

    /// Adds a signed attribute.
    pub fn attribute(mut self, attr: Attribute) -> Self {
        self.attributes.push(attr);
        self
    }

    /// Flips a bit in the signature after signing, for negative tests.
    pub fn tamper_signature(mut self) -> Self {
        self.tamper_signature = true;
        self
    }

    /// Signs with `key`, identifying the signer by `signer`'s issuer and serial number.
    /// Returns the DER `ContentInfo`.
    pub fn sign(self, signer: &Certificate, key: &PrivateKey) -> Result<Vec<u8>, CryptoError> {
        let digest = DigestAlgorithm::Sha256;
        let mut signed_attrs: SetOfVec<Attribute> = SetOfVec::new();
        signed_attrs.insert(attribute(
            oids::ATTR_CONTENT_TYPE,
            Any::encode_from(&self.content_type)?,
        )?)?;
        signed_attrs.insert(attribute(
            oids::ATTR_SIGNING_TIME,
            Any::encode_from(&x509::x509_time(SystemTime::now())?)?,
        )?)?;
        signed_attrs.insert(attribute(
            oids::ATTR_MESSAGE_DIGEST,
            Any::encode_from(&OctetString::new(digest.digest(self.content))?)?,
        )?)?;
        for attr in self.attributes {
            signed_attrs.insert(attr)?;
        }
        // The signature covers the attributes encoded as a SET OF (tag 0x31), not with the
        // [0] IMPLICIT tag they carry inside SignerInfo (RFC 5652 §5.4).
        let mut signature = key.sign_sha256(&signed_attrs.to_der()?)?;
        if self.tamper_signature {
            let middle = signature.len() / 2;
            if let Some(b) = signature.get_mut(middle) {
                *b ^= 0x01;
            }
        }

        let signer_info = SignerInfo {
            version: CmsVersion::V1,
            sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer: signer.tbs_certificate.issuer.clone(),
                serial_number: signer.tbs_certificate.serial_number.clone(),
            }),
            digest_alg: digest.algorithm_identifier(),
            signed_attrs: Some(signed_attrs),
            signature_algorithm: key.cms_signature_algorithm(),
            signature: OctetString::new(signature)?,
            unsigned_attrs: None,
        };
        let certificates = if self.certificates.is_empty() {
            None
        } else {
            let mut set = SetOfVec::new();
            for c in self.certificates {
                set.insert(CertificateChoices::Certificate(c))?;
            }
            Some(CertificateSet(set))
        };
        let signed_data = SignedData {
            version: CmsVersion::V1,
            digest_algorithms: SetOfVec::try_from(vec![digest.algorithm_identifier()])?,
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: self.content_type,
                econtent: if self.detached {
                    None
                } else {
                    Some(Any::new(Tag::OctetString, self.content)?)
                },
            },
            certificates,
            crls: None,
            signer_infos: SignerInfos(SetOfVec::try_from(vec![signer_info])?),
        };
        wrap(oids::ID_SIGNED_DATA, &signed_data)
    }
}

/// Builds a degenerate, certs-only `SignedData` (no signers, no content).
pub fn certs_only(certs: &[Certificate]) -> Result<Vec<u8>, CryptoError> {
    let mut set = SetOfVec::new();
    for c in certs {
        set.insert(CertificateChoices::Certificate(c.clone()))?;
    }
    let signed_data = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: oids::ID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet(set)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    wrap(oids::ID_SIGNED_DATA, &signed_data)
}

fn wrap<T: Encode>(content_type: ObjectIdentifier, inner: &T) -> Result<Vec<u8>, CryptoError> {
    Ok(ContentInfo {
        content_type,
        content: Any::from_der(&inner.to_der()?)?,
    }
    .to_der()?)
}

/// Builds a single-valued attribute.
pub fn attribute(oid: ObjectIdentifier, value: Any) -> Result<Attribute, CryptoError> {
    Ok(Attribute {
        oid,
        values: SetOfVec::try_from(vec![value])?,
    })
}

/// Builds a PrintableString attribute (SCEP messageType, pkiStatus, transactionID, ...).
pub fn printable_attribute(oid: ObjectIdentifier, value: &str) -> Result<Attribute, CryptoError> {
    let s = PrintableString::new(value).map_err(|_| CryptoError::InvalidName(value.to_owned()))?;
    attribute(oid, Any::encode_from(&s)?)
}

/// Builds an OCTET STRING attribute (SCEP nonces).
pub fn octets_attribute(oid: ObjectIdentifier, value: &[u8]) -> Result<Attribute, CryptoError> {
    attribute(oid, Any::encode_from(&OctetString::new(value)?)?)
}

/// The first value of attribute `oid`.
pub fn find_attribute<'a>(attrs: &'a [Attribute], oid: &ObjectIdentifier) -> Option<&'a Any> {
    attrs.iter().find(|a| &a.oid == oid)?.values.iter().next()
}

/// A string-valued attribute (PrintableString, UTF8String or IA5String).
pub fn string_attribute(attrs: &[Attribute], oid: &ObjectIdentifier) -> Option<String> {
    let any = find_attribute(attrs, oid)?;
    match any.tag() {
        Tag::PrintableString | Tag::Utf8String | Tag::Ia5String => {
            String::from_utf8(any.value().to_vec()).ok()
        }
        _ => None,
    }
}

/// An OCTET STRING-valued attribute.
pub fn octets_attribute_value(attrs: &[Attribute], oid: &ObjectIdentifier) -> Option<Vec<u8>> {
    let any = find_attribute(attrs, oid)?;
    (any.tag() == Tag::OctetString).then(|| any.value().to_vec())
}

/// A parsed (not yet verified) `SignedData`.
#[derive(Debug, Clone)]
pub struct ParsedSignedData {
    /// `eContentType`.
    pub content_type: ObjectIdentifier,
    /// The encapsulated content, `None` when detached.
    pub content: Option<Vec<u8>>,
    /// Certificates carried in the message.
    pub certificates: Vec<Certificate>,
    signers: Vec<RawSigner>,
}

#[derive(Debug, Clone)]
struct RawSigner {
    info: SignerInfo,
    /// The signed attributes exactly as received, re-tagged as SET OF, because the
    /// signature covers the sender's encoding, not our re-encoding of it.
    signed_attrs_der: Option<Vec<u8>>,
}

/// A signer whose signature verified.
#[derive(Debug, Clone)]
pub struct VerifiedSigner {
    /// The signer's certificate.
    pub certificate: Certificate,
    /// Its signed attributes.
    pub signed_attributes: Vec<Attribute>,
}

/// Parses a DER `ContentInfo` holding a `SignedData`.
pub fn parse_signed_data(der: &[u8]) -> Result<ParsedSignedData, CryptoError> {
    let ci = ContentInfo::from_der(der)?;
    if ci.content_type != oids::ID_SIGNED_DATA {
        return Err(CryptoError::MalformedCms("ContentInfo is not signedData"));
    }
    let sd: SignedData = ci.content.decode_as()?;
    let content = match &sd.encap_content_info.econtent {
        None => None,
        Some(any) if any.tag() == Tag::OctetString => Some(any.value().to_vec()),
        Some(_) => return Err(CryptoError::MalformedCms("eContent is not an OCTET STRING")),
    };
    let certificates = sd
        .certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .filter_map(|choice| match choice {
            CertificateChoices::Certificate(c) => Some(c.clone()),
            CertificateChoices::Other(_) => None,
        })
        .collect();
    let signers = raw_signer_infos(der)?
        .into_iter()
        .map(|raw| {
            let info = SignerInfo::from_der(raw)?;
            let signed_attrs_der = signed_attrs_bytes(raw)?;
            Ok(RawSigner {
                info,
                signed_attrs_der,
            })
        })
        .collect::<Result<Vec<_>, CryptoError>>()?;
    Ok(ParsedSignedData {
        content_type: sd.encap_content_info.econtent_type,
        content,
        certificates,
        signers,
    })
}

impl ParsedSignedData {
    /// Whether the message has any `SignerInfo`.
    pub fn is_signed(&self) -> bool {
        !self.signers.is_empty()
    }

    /// Verifies the first signer. The signer certificate is looked up in the message's
    /// own certificates and in `extra_certs`. `detached` supplies the content of a
    /// detached signature. Chain trust is the caller's business.
    pub fn verify(
        &self,
        detached: Option<&[u8]>,
        extra_certs: &[Certificate],
    ) -> Result<VerifiedSigner, CryptoError> {
        let signer = self
            .signers
            .first()
            .ok_or(CryptoError::MalformedCms("no SignerInfo"))?;
        let content = match (&self.content, detached) {
            (Some(c), _) => c.as_slice(),
            (None, Some(d)) => d,
            (None, None) => return Err(CryptoError::MalformedCms("detached content not supplied")),
        };
        let certificate = self
            .certificates
            .iter()
            .chain(extra_certs)
            .find(|c| signer_matches(&signer.info.sid, c))
            .cloned()
            .ok_or(CryptoError::SignerCertificateMissing)?;
        let digest_alg = DigestAlgorithm::from_oid(&signer.info.digest_alg.oid)?;
        let sig_digest = keys::digest_for_signature_algorithm(
            &signer.info.signature_algorithm.oid,
            Some(digest_alg),
        )?;
        let spki = &certificate.tbs_certificate.subject_public_key_info;
        let signature = signer.info.signature.as_bytes();

        let signed_attributes: Vec<Attribute> =
            match (&signer.info.signed_attrs, &signer.signed_attrs_der) {
                (Some(attrs), Some(raw)) => {
                    let ct = find_attribute(attrs.as_slice(), &oids::ATTR_CONTENT_TYPE)
                        .ok_or(CryptoError::MalformedCms("contentType attribute missing"))?
                        .decode_as::<ObjectIdentifier>()?;
                    if ct != self.content_type {
                        return Err(CryptoError::MalformedCms("contentType attribute mismatch"));
                    }
                    let md = octets_attribute_value(attrs.as_slice(), &oids::ATTR_MESSAGE_DIGEST)
                        .ok_or(CryptoError::MalformedCms("messageDigest attribute missing"))?;
                    if md != digest_alg.digest(content) {
                        return Err(CryptoError::DigestMismatch);
                    }
                    keys::verify_signature(spki, sig_digest, raw, signature)?;
                    attrs.iter().cloned().collect()
                }
                _ => {
                    keys::verify_signature(spki, sig_digest, content, signature)?;
                    Vec::new()
                }
            };
        Ok(VerifiedSigner {
            certificate,
            signed_attributes,
        })
    }
}

fn signer_matches(sid: &SignerIdentifier, cert: &Certificate) -> bool {
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(ias) => {
            ias.issuer == cert.tbs_certificate.issuer
                && ias.serial_number == cert.tbs_certificate.serial_number
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => {
            ski.0.as_bytes() == x509::key_identifier(&cert.tbs_certificate.subject_public_key_info)
        }
    }
}

/// One DER TLV: (tag byte, header length, total length). Definite lengths only.
fn tlv(input: &[u8]) -> Result<(u8, usize, usize), CryptoError> {
    let bad = CryptoError::MalformedCms("truncated or non-DER length");
    let tag = *input
        .first()
        .ok_or(CryptoError::MalformedCms("truncated"))?;
    let first = *input.get(1).ok_or(CryptoError::MalformedCms("truncated"))?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err(bad);
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8)
                | usize::from(
                    *input
                        .get(2 + i)
                        .ok_or(CryptoError::MalformedCms("truncated"))?,
                );
        }
        (len, 2 + n)
    };
    let total = header
        .checked_add(len)
        .ok_or(CryptoError::MalformedCms("length overflow"))?;
    if total > input.len() {
        return Err(bad);
    }
    Ok((tag, header, total))
}

/// The children of a constructed TLV.
fn children(input: &[u8]) -> Result<Vec<&[u8]>, CryptoError> {
    let (_, header, total) = tlv(input)?;
    let mut rest = &input[header..total];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (_, _, len) = tlv(rest)?;
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    Ok(out)
}

/// The raw `SignerInfo` encodings of a DER ContentInfo(SignedData), in wire order.
fn raw_signer_infos(der: &[u8]) -> Result<Vec<&[u8]>, CryptoError> {
    let ci = children(der)?;
    let explicit = ci
        .get(1)
        .ok_or(CryptoError::MalformedCms("ContentInfo without content"))?;
    let sd = children(explicit)?;
    let sd = sd
        .first()
        .ok_or(CryptoError::MalformedCms("empty [0] content"))?;
    let fields = children(sd)?;
    let signer_infos = fields
        .last()
        .ok_or(CryptoError::MalformedCms("empty SignedData"))?;
    if signer_infos.first() != Some(&0x31) {
        return Err(CryptoError::MalformedCms(
            "SignedData does not end with signerInfos",
        ));
    }
    children(signer_infos)
}

/// The signed attributes of a raw SignerInfo, re-tagged from `[0]` to `SET OF`.
fn signed_attrs_bytes(signer_info: &[u8]) -> Result<Option<Vec<u8>>, CryptoError> {
    for field in children(signer_info)? {
        if field.first() == Some(&0xa0) {
            let mut raw = field.to_vec();
            raw[0] = 0x31;
            return Ok(Some(raw));
        }
    }
    Ok(None)
}

/// The certificates in a certs-only (or any) `SignedData`.
pub fn certificates_in(der: &[u8]) -> Result<Vec<Certificate>, CryptoError> {
    Ok(parse_signed_data(der)?.certificates)
}

/// Content-encryption algorithms for EnvelopedData.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentCipher {
    /// AES-128-CBC.
    Aes128Cbc,
    /// AES-256-CBC: what the simulator uses when the SCEP server advertises AES.
    Aes256Cbc,
    /// DES-EDE3-CBC: the SCEP fallback when AES is not advertised.
    DesEde3Cbc,
}

impl ContentCipher {
    fn key_len(self) -> usize {
        match self {
            Self::Aes128Cbc => 16,
            Self::DesEde3Cbc => 24,
            Self::Aes256Cbc => 32,
        }
    }

    fn iv_len(self) -> usize {
        match self {
            Self::Aes128Cbc | Self::Aes256Cbc => 16,
            Self::DesEde3Cbc => 8,
        }
    }

    fn oid(self) -> ObjectIdentifier {
        match self {
            Self::Aes128Cbc => oids::AES128_CBC,
            Self::Aes256Cbc => oids::AES256_CBC,
            Self::DesEde3Cbc => oids::DES_EDE3_CBC,
        }
    }

    fn from_oid(oid: &ObjectIdentifier) -> Result<Self, CryptoError> {
        match *oid {
            oids::AES128_CBC => Ok(Self::Aes128Cbc),
            oids::AES256_CBC => Ok(Self::Aes256Cbc),
            oids::DES_EDE3_CBC => Ok(Self::DesEde3Cbc),
            other => Err(CryptoError::UnsupportedAlgorithm(other)),
        }
    }

    fn encrypt(self, key: &[u8], iv: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        use aws_lc_rs::cipher::{
            EncryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey, AES_128, AES_256,
        };
        match self {
            Self::Aes128Cbc | Self::Aes256Cbc => {
                let alg = if self == Self::Aes128Cbc {
                    &AES_128
                } else {
                    &AES_256
                };
                let key = UnboundCipherKey::new(alg, key).map_err(|_| CryptoError::Encryption)?;
                let key = PaddedBlockEncryptingKey::cbc_pkcs7(key)
                    .map_err(|_| CryptoError::Encryption)?;
                let iv: [u8; 16] = iv.try_into().map_err(|_| CryptoError::Encryption)?;
                let mut buf = plaintext.to_vec();
                key.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(iv.into()))
                    .map_err(|_| CryptoError::Encryption)?;
                Ok(buf)
            }
            Self::DesEde3Cbc => {
                let enc = cbc::Encryptor::<des::TdesEde3>::new_from_slices(key, iv)
                    .map_err(|_| CryptoError::Encryption)?;
                Ok(enc.encrypt_padded_vec_mut::<Pkcs7>(plaintext))
            }
        }
    }

    fn decrypt(
        self,
        key: &[u8],
        iv: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        use aws_lc_rs::cipher::{
            DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey, AES_128, AES_256,
        };
        match self {
            Self::Aes128Cbc | Self::Aes256Cbc => {
                let alg = if self == Self::Aes128Cbc {
                    &AES_128
                } else {
                    &AES_256
                };
                let key = UnboundCipherKey::new(alg, key).map_err(|_| CryptoError::Decryption)?;
                let key = PaddedBlockDecryptingKey::cbc_pkcs7(key)
                    .map_err(|_| CryptoError::Decryption)?;
                let iv: [u8; 16] = iv.try_into().map_err(|_| CryptoError::Decryption)?;
                let mut buf = Zeroizing::new(ciphertext.to_vec());
                let len = key
                    .decrypt(&mut buf, DecryptionContext::Iv128(iv.into()))
                    .map_err(|_| CryptoError::Decryption)?
                    .len();
                buf.truncate(len);
                Ok(buf)
            }
            Self::DesEde3Cbc => {
                let dec = cbc::Decryptor::<des::TdesEde3>::new_from_slices(key, iv)
                    .map_err(|_| CryptoError::Decryption)?;
                Ok(Zeroizing::new(
                    dec.decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
                        .map_err(|_| CryptoError::Decryption)?,
                ))
            }
        }
    }
}

fn random_bytes(len: usize) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut buf = Zeroizing::new(vec![0u8; len]);
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| CryptoError::Encryption)?;
    Ok(buf)
}

/// Encrypts `content` to `recipient` (RSA PKCS #1 v1.5 key transport, identified by
/// issuer and serial number). Returns the DER `ContentInfo(EnvelopedData)`.
pub fn envelope(
    content: &[u8],
    recipient: &Certificate,
    cipher: ContentCipher,
) -> Result<Vec<u8>, CryptoError> {
    let cek = random_bytes(cipher.key_len())?;
    let iv = random_bytes(cipher.iv_len())?;
    let encrypted = cipher.encrypt(&cek, &iv, content)?;
    let enc_key =
        keys::rsa_encrypt_pkcs1(&recipient.tbs_certificate.subject_public_key_info, &cek)?;
    let ktri = KeyTransRecipientInfo {
        version: CmsVersion::V0,
        rid: RecipientIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: recipient.tbs_certificate.issuer.clone(),
            serial_number: recipient.tbs_certificate.serial_number.clone(),
        }),
        key_enc_alg: spki::AlgorithmIdentifierOwned {
            oid: oids::RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        },
        enc_key: OctetString::new(enc_key)?,
    };
    let ed = EnvelopedData {
        version: CmsVersion::V0,
        originator_info: None,
        recip_infos: RecipientInfos(SetOfVec::try_from(vec![RecipientInfo::Ktri(ktri)])?),
        encrypted_content: EncryptedContentInfo {
            content_type: oids::ID_DATA,
            content_enc_alg: spki::AlgorithmIdentifierOwned {
                oid: cipher.oid(),
                parameters: Some(Any::encode_from(&OctetString::new(iv.to_vec())?)?),
            },
            encrypted_content: Some(OctetString::new(encrypted)?),
        },
        unprotected_attrs: None,
    };
    wrap(oids::ID_ENVELOPED_DATA, &ed)
}

/// Decrypts a DER `ContentInfo(EnvelopedData)` with `key`. When `recipient` is given,
/// only the `KeyTransRecipientInfo` naming that certificate is tried; otherwise each
/// key-transport recipient is tried in turn.
pub fn open_envelope(
    der: &[u8],
    key: &PrivateKey,
    recipient: Option<&Certificate>,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let ci = ContentInfo::from_der(der)?;
    if ci.content_type != oids::ID_ENVELOPED_DATA {
        return Err(CryptoError::MalformedCms(
            "ContentInfo is not envelopedData",
        ));
    }
    let ed: EnvelopedData = ci.content.decode_as()?;
    let eci = &ed.encrypted_content;
    let cipher = ContentCipher::from_oid(&eci.content_enc_alg.oid)?;
    let iv: OctetString = eci
        .content_enc_alg
        .parameters
        .as_ref()
        .ok_or(CryptoError::MalformedCms("content cipher without IV"))?
        .decode_as()?;
    let ciphertext = eci
        .encrypted_content
        .as_ref()
        .ok_or(CryptoError::MalformedCms("no encryptedContent"))?;

    let mut addressed = false;
    for ri in ed.recip_infos.0.iter() {
        let RecipientInfo::Ktri(ktri) = ri else {
            continue;
        };
        if let Some(cert) = recipient {
            let matches = match &ktri.rid {
                RecipientIdentifier::IssuerAndSerialNumber(ias) => {
                    ias.issuer == cert.tbs_certificate.issuer
                        && ias.serial_number == cert.tbs_certificate.serial_number
                }
                RecipientIdentifier::SubjectKeyIdentifier(ski) => {
                    ski.0.as_bytes()
                        == x509::key_identifier(&cert.tbs_certificate.subject_public_key_info)
                }
            };
            if !matches {
                continue;
            }
        }
        addressed = true;
        let Ok(cek) = key.rsa_decrypt_pkcs1(ktri.enc_key.as_bytes()) else {
            continue;
        };
        if cek.len() != cipher.key_len() {
            continue;
        }
        return cipher.decrypt(&cek, iv.as_bytes(), ciphertext.as_bytes());
    }
    Err(if addressed {
        CryptoError::Decryption
    } else {
        CryptoError::NotARecipient
    })
}

/// Verifies that `signer` was made by a key whose certificate chains to `anchors`.
pub fn verify_signer_chain(
    parsed: &ParsedSignedData,
    signer: &VerifiedSigner,
    anchors: &[Certificate],
) -> Result<(), CryptoError> {
    x509::verify_chain(&signer.certificate, &parsed.certificates, anchors)
}

/// Decodes the `signingTime` attribute, if present.
pub fn signing_time(attrs: &[Attribute]) -> Option<SystemTime> {
    let any = find_attribute(attrs, &oids::ATTR_SIGNING_TIME)?;
    let time = x509_cert::time::Time::from_der(&any.to_der().ok()?).ok()?;
    Some(time.to_system_time())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::{name, self_signed, CertificateParams};

    fn identity() -> (Certificate, PrivateKey) {
        let key = PrivateKey::generate_rsa2048().unwrap();
        let cert =
            self_signed(&CertificateParams::new(name(&[("CN", "t")]).unwrap()), &key).unwrap();
        (cert, key)
    }

    #[test]
    fn signed_data_round_trips_and_detects_tampering() {
        let (cert, key) = identity();
        let attached = SignedDataBuilder::new(b"payload")
            .certificate(cert.clone())
            .attribute(printable_attribute(oids::SCEP_MESSAGE_TYPE, "19").unwrap())
            .sign(&cert, &key)
            .unwrap();
        let parsed = parse_signed_data(&attached).unwrap();
        assert_eq!(parsed.content.as_deref(), Some(&b"payload"[..]));
        let signer = parsed.verify(None, &[]).unwrap();
        assert_eq!(signer.certificate, cert);
        assert_eq!(
            string_attribute(&signer.signed_attributes, &oids::SCEP_MESSAGE_TYPE).as_deref(),
            Some("19")
        );
        assert!(signing_time(&signer.signed_attributes).is_some());

        let detached = SignedDataBuilder::new(b"body")
            .detached()
            .certificate(cert.clone())
            .sign(&cert, &key)
            .unwrap();
        let parsed = parse_signed_data(&detached).unwrap();
        assert!(parsed.content.is_none());
        parsed.verify(Some(b"body"), &[]).unwrap();
        assert!(matches!(
            parsed.verify(Some(b"bodY"), &[]),
            Err(CryptoError::DigestMismatch)
        ));

        let bad = SignedDataBuilder::new(b"body")
            .detached()
            .certificate(cert.clone())
            .tamper_signature()
            .sign(&cert, &key)
            .unwrap();
        assert!(matches!(
            parse_signed_data(&bad).unwrap().verify(Some(b"body"), &[]),
            Err(CryptoError::BadSignature)
        ));

        let no_cert = SignedDataBuilder::new(b"x").sign(&cert, &key).unwrap();
        let parsed = parse_signed_data(&no_cert).unwrap();
        assert!(matches!(
            parsed.verify(None, &[]),
            Err(CryptoError::SignerCertificateMissing)
        ));
        parsed.verify(None, std::slice::from_ref(&cert)).unwrap();
    }

    #[test]
    fn envelopes_round_trip_with_each_cipher() {
        let (cert, key) = identity();
        let (other_cert, other_key) = identity();
        for cipher in [
            ContentCipher::Aes128Cbc,
            ContentCipher::Aes256Cbc,
            ContentCipher::DesEde3Cbc,
        ] {
            let env = envelope(b"secret content", &cert, cipher).unwrap();
            assert_eq!(
                &open_envelope(&env, &key, Some(&cert)).unwrap()[..],
                b"secret content"
            );
            assert_eq!(
                &open_envelope(&env, &key, None).unwrap()[..],
                b"secret content"
            );
            assert!(matches!(
                open_envelope(&env, &other_key, Some(&other_cert)),
                Err(CryptoError::NotARecipient)
            ));
        }
    }

    #[test]
    fn certs_only_lists_certificates() {
        let (a, _) = identity();
        let (b, _) = identity();
        let der = certs_only(&[a.clone(), b.clone()]).unwrap();
        let certs = certificates_in(&der).unwrap();
        assert_eq!(certs.len(), 2);
        assert!(certs.contains(&a) && certs.contains(&b));
        assert!(!parse_signed_data(&der).unwrap().is_signed());
    }
}
