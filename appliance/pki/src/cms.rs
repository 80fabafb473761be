//! CMS (RFC 5652) SignedData and EnvelopedData, as far as MDM, SCEP and ABM need them.
//!
//! Signing always uses SHA-256 and identifies the signer by issuer and serial number.
//! Verification accepts DER or BER, SHA-1/256/384/512, and signers named by issuer and
//! serial or by subject key identifier. Enveloping supports only RSA PKCS#1 v1.5 key
//! transport (KeyTransRecipientInfo), which is what SCEP and Apple Business Manager use;
//! key agreement, KEK, password and OAEP recipients are not implemented.

use std::time::SystemTime;

use aws_lc_rs::cipher::{
    DecryptionContext, EncryptionContext, PaddedBlockDecryptingKey, PaddedBlockEncryptingKey,
    UnboundCipherKey, AES_128, AES_192, AES_256,
};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{Pkcs1PublicEncryptingKey, PublicEncryptingKey};
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
use der::asn1::{OctetString, SetOfVec};
use der::{Any, Decode, Encode, Tag};
use spki::AlgorithmIdentifierOwned;
use x509_cert::attr::Attribute;
use zeroize::Zeroizing;

use crate::asn1;
use crate::ber::{ber_to_der, Node};
use crate::cert::{x509_time, Certificate};
use crate::error::PkiError;
use crate::key::{verify_signature, Hash, PrivateKey, PrivateKeyOps};
use crate::oid;

/// How [`sign`] builds its SignedData.
#[derive(Clone, Debug, Default)]
pub struct SignerOptions<'a> {
    /// Leave the content out (`eContent` absent), as for an `Mdm-Signature` header.
    pub detached: bool,
    /// Certificates to include besides the signer's (typically its issuing CA).
    pub extra_certs: &'a [Certificate],
    /// Signed attributes to add after contentType, messageDigest and signingTime.
    pub extra_signed_attributes: Vec<Attribute>,
}

/// ContentInfo(SignedData) DER, content type id-data, SHA-256, signed attributes contentType,
/// messageDigest, signingTime (+ extras), signer identified by issuerAndSerialNumber, signer
/// cert + extra certs included.
pub fn sign(
    content: &[u8],
    signer: &Certificate,
    key: &PrivateKey,
    opts: &SignerOptions,
) -> Result<Vec<u8>, PkiError> {
    if key.public_key_der() != signer.public_key_der() {
        return Err(PkiError::invalid(
            "signer",
            "the private key does not belong to the signer certificate",
        ));
    }
    let digest = Hash::Sha256.digest(content);
    let ctx = "signed attributes";
    let mut attrs = vec![
        attribute(oid::ATTR_CONTENT_TYPE, Any::encode_from(&oid::ID_DATA))?,
        attribute(
            oid::ATTR_SIGNING_TIME,
            Any::encode_from(&x509_time(SystemTime::now())?),
        )?,
        attribute(oid::ATTR_MESSAGE_DIGEST, Any::new(Tag::OctetString, digest))?,
    ];
    attrs.extend(opts.extra_signed_attributes.iter().cloned());
    let attrs = SetOfVec::try_from(attrs).map_err(PkiError::asn1(ctx))?;
    // RFC 5652 §5.4: the signature covers the DER of the attributes with a SET OF tag.
    let attrs_der = attrs.to_der().map_err(PkiError::asn1(ctx))?;
    let signature = key.sign_sha256(&attrs_der)?;

    let signer_info = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(issuer_and_serial(signer)),
        digest_alg: sha256_alg(),
        signed_attrs: Some(attrs),
        signature_algorithm: key.signature_algorithm(),
        signature: OctetString::new(signature).map_err(PkiError::asn1("signature"))?,
        unsigned_attrs: None,
    };

    let mut certs = vec![signer.clone()];
    for c in opts.extra_certs {
        if !certs.contains(c) {
            certs.push(c.clone());
        }
    }
    let econtent = if opts.detached {
        None
    } else {
        Some(
            Any::encode_from(&OctetString::new(content).map_err(PkiError::asn1("content"))?)
                .map_err(PkiError::asn1("content"))?,
        )
    };
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![sha256_alg()])
            .map_err(PkiError::asn1("SignedData"))?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: oid::ID_DATA,
            econtent,
        },
        certificates: Some(certificate_set(&certs)?),
        crls: None,
        signer_infos: SignerInfos::try_from(vec![signer_info])
            .map_err(PkiError::asn1("SignedData"))?,
    };
    wrap(oid::ID_SIGNED_DATA, &signed)
}

/// certs-only "degenerate" SignedData (SCEP GetCACert with RA, and the innermost layer of a
/// SCEP CertRep).
pub fn certs_only(certs: &[Certificate]) -> Result<Vec<u8>, PkiError> {
    if certs.is_empty() {
        return Err(PkiError::invalid(
            "certs-only SignedData",
            "at least one certificate is needed",
        ));
    }
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: oid::ID_DATA,
            econtent: None,
        },
        certificates: Some(certificate_set(certs)?),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    wrap(oid::ID_SIGNED_DATA, &signed)
}

/// The certificates carried by a SignedData (DER or BER), signed or certs-only. Nothing is
/// verified; entries that are not parseable X.509 certificates are skipped.
pub fn certificates(signed_data: &[u8]) -> Result<Vec<Certificate>, PkiError> {
    Ok(ParsedSignedData::parse(signed_data)?.certificates)
}

/// The first value of the attribute `id` in `attrs`.
pub fn find_attribute<'a>(attrs: &'a [Attribute], id: &ObjectIdentifier) -> Option<&'a Any> {
    attrs
        .iter()
        .find(|a| &a.oid == id)
        .and_then(|a| a.values.iter().next())
}

/// What [`verify`] proved.
#[derive(Clone, Debug)]
pub struct VerifiedSignedData {
    /// The signed content (embedded, or the detached content given).
    pub content: Vec<u8>,
    /// eContentType of the SignedData (id-data for everything the appliance handles).
    pub content_type: ObjectIdentifier,
    /// The certificate whose key verified the signature.
    pub signer: Certificate,
    /// Every parseable certificate the SignedData carried (signer included).
    pub certificates: Vec<Certificate>,
    /// The signer's signed attributes (empty when it signed the content directly).
    pub signed_attributes: Vec<Attribute>,
    /// The signer's digest algorithm.
    pub digest_algorithm: ObjectIdentifier,
}

impl VerifiedSignedData {
    /// The signingTime attribute, if present.
    pub fn signing_time(&self) -> Option<SystemTime> {
        find_attribute(&self.signed_attributes, &oid::ATTR_SIGNING_TIME)
            .and_then(|v| v.to_der().ok())
            .and_then(|der| x509_cert::time::Time::from_der(&der).ok())
            .map(|t| t.to_system_time())
    }
}

/// Accepts DER or BER (indefinite lengths, constructed OCTET STRINGs: see
/// [`crate::ber_to_der`]). Verifies the (first) SignerInfo: finds its cert among
/// `certificates` (issuerAndSerial or subjectKeyIdentifier), checks messageDigest over content
/// and the signature over the DER SET OF signed attributes (or over content when there are
/// none). No chain check here.
///
/// `detached_content` is required when the SignedData carries no content; when both are
/// present they must be equal.
pub fn verify(
    signed_data: &[u8],
    detached_content: Option<&[u8]>,
) -> Result<VerifiedSignedData, PkiError> {
    ParsedSignedData::parse(signed_data)?.verify(detached_content)
}

/// A decoded but not yet verified SignedData. Crate-internal so that SCEP can read the
/// transaction attributes of a request whose signature fails, to address its error reply.
pub(crate) struct ParsedSignedData {
    pub econtent_type: ObjectIdentifier,
    pub content: Option<Vec<u8>>,
    pub certificates: Vec<Certificate>,
    pub signer: Option<ParsedSigner>,
}

pub(crate) struct ParsedSigner {
    pub info: SignerInfo,
    /// The signed attributes exactly as encoded, re-tagged as SET OF.
    signed_attrs_raw: Option<Vec<u8>>,
}

impl ParsedSigner {
    pub(crate) fn signed_attributes(&self) -> Vec<Attribute> {
        self.info
            .signed_attrs
            .as_ref()
            .map(|a| a.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn cms_err(msg: impl Into<String>) -> PkiError {
    PkiError::Cms(msg.into())
}

impl ParsedSignedData {
    pub(crate) fn parse(input: &[u8]) -> Result<Self, PkiError> {
        let der = ber_to_der(input)?;
        let content_der = unwrap_content_info(&der, oid::ID_SIGNED_DATA, "SignedData")?;
        let sd = asn1::read_single(content_der)?;
        if sd.tag != 0x30 {
            return Err(cms_err("SignedData is not a SEQUENCE"));
        }
        let fields = asn1::children(sd.value)?;
        // version, digestAlgorithms, encapContentInfo, [0] certificates?, [1] crls?, signerInfos
        let encap = fields
            .get(2)
            .ok_or_else(|| cms_err("SignedData is truncated"))?;
        let encap = EncapsulatedContentInfo::from_der(encap.raw)
            .map_err(PkiError::asn1("EncapsulatedContentInfo"))?;
        let content = encap.econtent.as_ref().map(|any| any.value().to_vec());

        let mut rest = fields.get(3..).unwrap_or_default();
        let mut certificates = Vec::new();
        if let Some((first, tail)) = rest.split_first() {
            if first.tag == 0xa0 {
                for choice in asn1::children(first.value)? {
                    // Other CertificateChoices (attribute certificates, ...) are of no use
                    // here, and an unparseable certificate next to the signer's should not
                    // make the whole message unreadable.
                    if choice.tag == 0x30 {
                        if let Ok(cert) = Certificate::from_der(choice.raw) {
                            certificates.push(cert);
                        }
                    }
                }
                rest = tail;
            }
        }
        if rest.first().is_some_and(|f| f.tag == 0xa1) {
            rest = &rest[1..];
        }
        let signer_infos = match rest {
            [infos] if infos.tag == 0x31 => infos,
            _ => return Err(cms_err("SignedData has no signerInfos SET at its end")),
        };
        let signer = match asn1::children(signer_infos.value)?.first() {
            None => None,
            Some(raw) => {
                let info = SignerInfo::from_der(raw.raw).map_err(PkiError::asn1("SignerInfo"))?;
                let signed_attrs_raw = asn1::children(raw.value)?
                    .iter()
                    .find(|f| f.tag == 0xa0)
                    .map(|f| {
                        let mut v = f.raw.to_vec();
                        v[0] = 0x31;
                        v
                    });
                Some(ParsedSigner {
                    info,
                    signed_attrs_raw,
                })
            }
        };
        Ok(ParsedSignedData {
            econtent_type: encap.econtent_type,
            content,
            certificates,
            signer,
        })
    }

    pub(crate) fn verify(
        self,
        detached_content: Option<&[u8]>,
    ) -> Result<VerifiedSignedData, PkiError> {
        let signer = self
            .signer
            .as_ref()
            .ok_or_else(|| cms_err("the SignedData has no SignerInfo"))?;
        let content =
            match (self.content.as_deref(), detached_content) {
                (Some(embedded), Some(given)) if embedded != given => return Err(cms_err(
                    "the SignedData carries content that differs from the detached content given",
                )),
                (Some(embedded), _) => embedded.to_vec(),
                (None, Some(given)) => given.to_vec(),
                (None, None) => {
                    return Err(cms_err(
                        "the SignedData is detached and no content was supplied",
                    ))
                }
            };

        let info = &signer.info;
        let cert = self
            .certificates
            .iter()
            .find(|c| match &info.sid {
                SignerIdentifier::IssuerAndSerialNumber(ias) => {
                    c.matches_issuer_serial(&ias.issuer, &ias.serial_number)
                }
                SignerIdentifier::SubjectKeyIdentifier(ski) => c.matches_key_id(ski.0.as_bytes()),
            })
            .ok_or_else(|| cms_err("the signer's certificate is not included"))?
            .clone();

        let hash =
            Hash::from_oid(&info.digest_alg.oid).ok_or_else(|| PkiError::UnsupportedAlgorithm {
                oid: info.digest_alg.oid.to_string(),
                purpose: "CMS message digests",
            })?;
        let signature = info.signature.as_bytes();
        let attributes = signer.signed_attributes();

        match &signer.signed_attrs_raw {
            None => verify_signature(
                &cert.public_key_der(),
                &info.signature_algorithm,
                Some(&info.digest_alg),
                &content,
                signature,
            )?,
            Some(raw) => {
                let digest = find_attribute(&attributes, &oid::ATTR_MESSAGE_DIGEST)
                    .ok_or_else(|| cms_err("signed attributes lack messageDigest"))?
                    .decode_as::<OctetString>()
                    .map_err(PkiError::asn1("messageDigest"))?;
                let content_type = find_attribute(&attributes, &oid::ATTR_CONTENT_TYPE)
                    .ok_or_else(|| cms_err("signed attributes lack contentType"))?
                    .decode_as::<ObjectIdentifier>()
                    .map_err(PkiError::asn1("contentType"))?;
                if content_type != self.econtent_type {
                    return Err(cms_err(
                        "the contentType attribute differs from the encapsulated content type",
                    ));
                }
                if digest.as_bytes() != hash.digest(&content).as_slice() {
                    return Err(PkiError::ContentDigestMismatch);
                }
                let verify_over = |msg: &[u8]| {
                    verify_signature(
                        &cert.public_key_der(),
                        &info.signature_algorithm,
                        Some(&info.digest_alg),
                        msg,
                        signature,
                    )
                };
                // RFC 5652 requires the DER encoding; some old signers signed their attributes
                // in the order they wrote them. The bytes as sent are tried first, then the
                // canonical DER (which differs only if the sender did not sort).
                if let Err(e) = verify_over(raw) {
                    let canonical = info
                        .signed_attrs
                        .as_ref()
                        .map(|a| a.to_der())
                        .transpose()
                        .map_err(PkiError::asn1("signed attributes"))?;
                    match canonical {
                        Some(c) if &c != raw => verify_over(&c)?,
                        _ => return Err(e),
                    }
                }
            }
        }

        Ok(VerifiedSignedData {
            content,
            content_type: self.econtent_type,
            signer: cert,
            certificates: self.certificates,
            signed_attributes: attributes,
            digest_algorithm: info.digest_alg.oid,
        })
    }
}

/// Content-encryption algorithms for [`envelope`] and [`open_envelope`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContentCipher {
    /// AES-128 in CBC mode.
    Aes128Cbc,
    /// AES-192 in CBC mode (rare; accepted, and mirrored in SCEP replies).
    Aes192Cbc,
    /// AES-256 in CBC mode.
    Aes256Cbc,
    /// Triple DES (EDE, three keys) in CBC mode: legacy SCEP clients and old ABM tokens.
    DesEde3Cbc,
}

impl ContentCipher {
    /// The algorithm's OID.
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            ContentCipher::Aes128Cbc => oid::AES128_CBC,
            ContentCipher::Aes192Cbc => oid::AES192_CBC,
            ContentCipher::Aes256Cbc => oid::AES256_CBC,
            ContentCipher::DesEde3Cbc => oid::DES_EDE3_CBC,
        }
    }

    /// The cipher named by `oid`, if supported.
    pub fn from_oid(id: &ObjectIdentifier) -> Option<Self> {
        match *id {
            oid::AES128_CBC => Some(ContentCipher::Aes128Cbc),
            oid::AES192_CBC => Some(ContentCipher::Aes192Cbc),
            oid::AES256_CBC => Some(ContentCipher::Aes256Cbc),
            oid::DES_EDE3_CBC => Some(ContentCipher::DesEde3Cbc),
            _ => None,
        }
    }

    fn key_len(self) -> usize {
        match self {
            ContentCipher::Aes128Cbc => 16,
            ContentCipher::Aes192Cbc | ContentCipher::DesEde3Cbc => 24,
            ContentCipher::Aes256Cbc => 32,
        }
    }

    fn iv_len(self) -> usize {
        match self {
            ContentCipher::DesEde3Cbc => 8,
            _ => 16,
        }
    }

    fn random_key(self) -> Result<Zeroizing<Vec<u8>>, PkiError> {
        let mut key = Zeroizing::new(vec![0u8; self.key_len()]);
        aws_lc_rs::rand::fill(&mut key).map_err(|_| PkiError::Random)?;
        if self == ContentCipher::DesEde3Cbc {
            // DES keys carry odd parity in each octet's low bit; some decoders check it.
            for b in key.iter_mut() {
                *b = (*b & 0xfe) | u8::from((*b >> 1).count_ones() % 2 == 0);
            }
        }
        Ok(key)
    }

    fn encrypt(self, key: &[u8], iv: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, PkiError> {
        match self {
            ContentCipher::DesEde3Cbc => {
                let enc = cbc::Encryptor::<des::TdesEde3>::new_from_slices(key, iv)
                    .map_err(|_| PkiError::Encryption)?;
                Ok(enc.encrypt_padded_vec_mut::<Pkcs7>(plaintext))
            }
            _ => {
                let iv: [u8; 16] = iv.try_into().map_err(|_| PkiError::Encryption)?;
                let key = UnboundCipherKey::new(self.aes_algorithm(), key)
                    .map_err(|_| PkiError::Encryption)?;
                let enc =
                    PaddedBlockEncryptingKey::cbc_pkcs7(key).map_err(|_| PkiError::Encryption)?;
                let mut buf = plaintext.to_vec();
                enc.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(FixedLength::from(iv)))
                    .map_err(|_| PkiError::Encryption)?;
                Ok(buf)
            }
        }
    }

    fn decrypt(
        self,
        key: &[u8],
        iv: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, PkiError> {
        match self {
            ContentCipher::DesEde3Cbc => {
                let dec = cbc::Decryptor::<des::TdesEde3>::new_from_slices(key, iv)
                    .map_err(|_| PkiError::Decryption)?;
                dec.decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
                    .map(Zeroizing::new)
                    .map_err(|_| PkiError::Decryption)
            }
            _ => {
                let iv: [u8; 16] = iv.try_into().map_err(|_| PkiError::Decryption)?;
                let key = UnboundCipherKey::new(self.aes_algorithm(), key)
                    .map_err(|_| PkiError::Decryption)?;
                let dec =
                    PaddedBlockDecryptingKey::cbc_pkcs7(key).map_err(|_| PkiError::Decryption)?;
                let mut buf = Zeroizing::new(ciphertext.to_vec());
                let len = dec
                    .decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(iv)))
                    .map_err(|_| PkiError::Decryption)?
                    .len();
                buf.truncate(len);
                Ok(buf)
            }
        }
    }

    fn aes_algorithm(self) -> &'static aws_lc_rs::cipher::Algorithm {
        match self {
            ContentCipher::Aes128Cbc => &AES_128,
            ContentCipher::Aes192Cbc => &AES_192,
            _ => &AES_256,
        }
    }
}

/// EnvelopedData with KeyTransRecipientInfo (RSA PKCS#1 v1.5) to an RSA recipient cert.
pub fn envelope(
    content: &[u8],
    recipient: &Certificate,
    cipher: ContentCipher,
) -> Result<Vec<u8>, PkiError> {
    let public = PublicEncryptingKey::from_der(&recipient.public_key_der())
        .map_err(|_| PkiError::NotRsa("a non-RSA key"))?;
    let public = Pkcs1PublicEncryptingKey::new(public).map_err(|_| PkiError::Encryption)?;

    let cek = cipher.random_key()?;
    let mut iv = vec![0u8; cipher.iv_len()];
    aws_lc_rs::rand::fill(&mut iv).map_err(|_| PkiError::Random)?;
    let encrypted_content = cipher.encrypt(&cek, &iv, content)?;

    let mut encrypted_key = vec![0u8; public.ciphertext_size()];
    let len = public
        .encrypt(&cek, &mut encrypted_key)
        .map_err(|_| PkiError::Encryption)?
        .len();
    encrypted_key.truncate(len);

    let ktri = KeyTransRecipientInfo {
        version: CmsVersion::V0,
        rid: RecipientIdentifier::IssuerAndSerialNumber(issuer_and_serial(recipient)),
        key_enc_alg: AlgorithmIdentifierOwned {
            oid: oid::RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        },
        enc_key: OctetString::new(encrypted_key).map_err(PkiError::asn1("encryptedKey"))?,
    };
    let ctx = "EnvelopedData";
    let enveloped = EnvelopedData {
        version: CmsVersion::V0,
        originator_info: None,
        recip_infos: RecipientInfos::try_from(vec![RecipientInfo::Ktri(ktri)])
            .map_err(PkiError::asn1(ctx))?,
        encrypted_content: EncryptedContentInfo {
            content_type: oid::ID_DATA,
            content_enc_alg: AlgorithmIdentifierOwned {
                oid: cipher.oid(),
                parameters: Some(
                    Any::encode_from(&OctetString::new(iv).map_err(PkiError::asn1(ctx))?)
                        .map_err(PkiError::asn1(ctx))?,
                ),
            },
            encrypted_content: Some(
                OctetString::new(encrypted_content).map_err(PkiError::asn1(ctx))?,
            ),
        },
        unprotected_attrs: None,
    };
    wrap(oid::ID_ENVELOPED_DATA, &enveloped)
}

/// Decrypt EnvelopedData (DER or BER) addressed to `recipient` (match by issuerAndSerial or
/// SKI; if no RecipientInfo matches, error). AES-128/192/256-CBC and DES-EDE3-CBC.
///
/// `key` is the recipient's private key: a [`PrivateKey`] in memory or a key a keystore holds
/// ([`PrivateKeyOps`]).
///
/// A failed key-transport decryption ([`PkiError::Decryption`] from the key, or a content key
/// of the wrong length) is not reported as such: a random content key is used instead and the
/// content decryption then fails with the same [`PkiError::Decryption`], so that the reply
/// does not tell an attacker whether the PKCS#1 padding was valid. Any other error of the key
/// (not RSA, [`PkiError::KeyUnavailable`]) says nothing about the message and is returned as
/// it is, so that an unreachable key is not mistaken for a damaged message.
pub fn open_envelope(
    enveloped: &[u8],
    recipient: &Certificate,
    key: &dyn PrivateKeyOps,
) -> Result<(Zeroizing<Vec<u8>>, ContentCipher), PkiError> {
    if key.public_key_der() != recipient.public_key_der() {
        return Err(PkiError::invalid(
            "recipient",
            "the private key does not belong to the recipient certificate",
        ));
    }
    let der = normalise_enveloped(enveloped)?;
    let content_der = unwrap_content_info(&der, oid::ID_ENVELOPED_DATA, "EnvelopedData")?;
    let env = EnvelopedData::from_der(content_der).map_err(PkiError::asn1("EnvelopedData"))?;

    let ktri = env
        .recip_infos
        .0
        .iter()
        .find_map(|ri| match ri {
            RecipientInfo::Ktri(k) => {
                let matches = match &k.rid {
                    RecipientIdentifier::IssuerAndSerialNumber(ias) => {
                        recipient.matches_issuer_serial(&ias.issuer, &ias.serial_number)
                    }
                    RecipientIdentifier::SubjectKeyIdentifier(ski) => {
                        recipient.matches_key_id(ski.0.as_bytes())
                    }
                };
                matches.then_some(k)
            }
            _ => None,
        })
        .ok_or(PkiError::NoMatchingRecipient)?;
    if ktri.key_enc_alg.oid != oid::RSA_ENCRYPTION {
        return Err(PkiError::UnsupportedAlgorithm {
            oid: ktri.key_enc_alg.oid.to_string(),
            purpose: "key transport",
        });
    }

    let eci = &env.encrypted_content;
    let cipher = ContentCipher::from_oid(&eci.content_enc_alg.oid).ok_or_else(|| {
        PkiError::UnsupportedAlgorithm {
            oid: eci.content_enc_alg.oid.to_string(),
            purpose: "content encryption",
        }
    })?;
    let iv = eci
        .content_enc_alg
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<OctetString>().ok())
        .filter(|iv| iv.as_bytes().len() == cipher.iv_len())
        .ok_or_else(|| cms_err("the content-encryption IV is missing or has the wrong size"))?;
    let ciphertext = eci
        .encrypted_content
        .as_ref()
        .ok_or_else(|| cms_err("the encrypted content is absent (detached)"))?;

    let (cek, key_ok) = match key.rsa_decrypt_pkcs1(ktri.enc_key.as_bytes()) {
        Ok(k) if k.len() == cipher.key_len() => (k, true),
        Ok(_) | Err(PkiError::Decryption) => (cipher.random_key()?, false),
        Err(other) => return Err(other),
    };
    let plaintext = cipher.decrypt(&cek, iv.as_bytes(), ciphertext.as_bytes());
    match plaintext {
        Ok(p) if key_ok => Ok((p, cipher)),
        _ => Err(PkiError::Decryption),
    }
}

/// BER-normalises an EnvelopedData, including its IMPLICIT `[0]` encryptedContent, which a
/// streaming encoder chunks into a constructed string that the generic pass cannot recognise.
fn normalise_enveloped(input: &[u8]) -> Result<Vec<u8>, PkiError> {
    let mut root = Node::parse(input)?;
    let shape = || cms_err("EnvelopedData does not have the expected structure");
    // ContentInfo -> [0] -> EnvelopedData -> EncryptedContentInfo -> [0]
    let explicit = root
        .children_mut()
        .and_then(|c| c.get_mut(1))
        .ok_or_else(shape)?;
    let env = explicit
        .children_mut()
        .and_then(|c| c.first_mut())
        .ok_or_else(shape)?;
    let fields = env.children_mut().ok_or_else(shape)?;
    let recipients = fields
        .iter()
        .position(|f| f.tag_byte() == 0x31)
        .ok_or_else(shape)?;
    let eci = fields.get_mut(recipients + 1).ok_or_else(shape)?;
    if let Some(content) = eci
        .children_mut()
        .and_then(|c| c.get_mut(2))
        .filter(|c| c.tag_byte() & 0xdf == 0x80)
    {
        content.flatten_implicit_octets()?;
    }
    Ok(root.to_der())
}

/// Checks a ContentInfo's type and returns the DER of its content.
fn unwrap_content_info<'a>(
    der: &'a [u8],
    expected: ObjectIdentifier,
    what: &str,
) -> Result<&'a [u8], PkiError> {
    let ci = asn1::read_single(der)?;
    let fields = asn1::children(ci.value)?;
    let (Some(ct), Some(explicit)) = (fields.first(), fields.get(1)) else {
        return Err(cms_err("not a CMS ContentInfo"));
    };
    if ci.tag != 0x30 || explicit.tag != 0xa0 {
        return Err(cms_err("not a CMS ContentInfo"));
    }
    let ct = ObjectIdentifier::from_der(ct.raw).map_err(PkiError::asn1("contentType"))?;
    if ct != expected {
        return Err(cms_err(format!("expected {what}, found content type {ct}")));
    }
    Ok(explicit.value)
}

fn wrap(content_type: ObjectIdentifier, content: &impl Encode) -> Result<Vec<u8>, PkiError> {
    let content_der = content.to_der().map_err(PkiError::asn1("ContentInfo"))?;
    let ci = ContentInfo {
        content_type,
        content: Any::from_der(&content_der).map_err(PkiError::asn1("ContentInfo"))?,
    };
    ci.to_der().map_err(PkiError::asn1("ContentInfo"))
}

fn attribute(id: ObjectIdentifier, value: der::Result<Any>) -> Result<Attribute, PkiError> {
    let value = value.map_err(PkiError::asn1("attribute"))?;
    Ok(Attribute {
        oid: id,
        values: SetOfVec::try_from(vec![value]).map_err(PkiError::asn1("attribute"))?,
    })
}

/// A single-valued attribute, for [`SignerOptions::extra_signed_attributes`].
pub fn make_attribute(id: ObjectIdentifier, value: Any) -> Result<Attribute, PkiError> {
    attribute(id, Ok(value))
}

fn sha256_alg() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: oid::SHA256,
        parameters: None,
    }
}

fn issuer_and_serial(cert: &Certificate) -> IssuerAndSerialNumber {
    let tbs = &cert.inner().tbs_certificate;
    IssuerAndSerialNumber {
        issuer: tbs.issuer.clone(),
        serial_number: tbs.serial_number.clone(),
    }
}

fn certificate_set(certs: &[Certificate]) -> Result<CertificateSet, PkiError> {
    let choices = certs
        .iter()
        .map(|c| CertificateChoices::Certificate(c.inner().clone()))
        .collect::<Vec<_>>();
    CertificateSet::try_from(choices).map_err(PkiError::asn1("certificate set"))
}
