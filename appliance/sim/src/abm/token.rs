//! Server tokens as ABM's "Download Token" button produces them: an S/MIME message
//! (`smime.p7m`) holding CMS EnvelopedData, RSA PKCS #1 v1.5 key transport to the
//! certificate the MDM server uploaded, around a small MIME text part whose body frames
//! the OAuth credentials as JSON between `-----BEGIN MESSAGE-----` and
//! `-----END MESSAGE-----`.

use base64::Engine;
use der::Decode;
use x509_cert::Certificate;

use super::error::AbmSimError;
use super::types::OAuthCredentials;
use crate::cms::{self, ContentCipher};
use crate::keys::PrivateKey;
use crate::oids;

/// How to package a server token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenOptions {
    /// The content-encryption cipher. Apple does not document which one ABM uses;
    /// clients must take all three.
    pub cipher: ContentCipher,
    /// Encode the EnvelopedData in BER with indefinite lengths (and the encrypted
    /// content as a constructed OCTET STRING in chunks), as streaming CMS encoders emit
    /// and as real ABM downloads have been seen, instead of DER.
    pub ber: bool,
    /// Issue the token under a new organisation (a new consumer key), as when another
    /// ABM account takes over the MDM server.
    pub new_org: bool,
}

impl Default for TokenOptions {
    fn default() -> Self {
        Self {
            cipher: ContentCipher::Aes256Cbc,
            ber: false,
            new_org: false,
        }
    }
}

/// The decrypted token: a MIME text part around the framed JSON, CRLF line ends.
pub(crate) fn message(credentials: &OAuthCredentials) -> String {
    format!(
        "Content-Type: text/plain;charset=UTF-8\r\n\
         Content-Transfer-Encoding: 7bit\r\n\
         \r\n\
         -----BEGIN MESSAGE-----\r\n\
         {}\r\n\
         -----END MESSAGE-----\r\n",
        credentials.to_token_json()
    )
}

/// Reads the certificate a token is to be encrypted to: DER X.509 with an RSA key
/// (ABM accepts nothing else; it does not check the validity dates).
pub(crate) fn recipient(der: &[u8]) -> Result<Certificate, AbmSimError> {
    let cert = Certificate::from_der(der)
        .map_err(|e| AbmSimError::Recipient(format!("not a DER X.509 certificate: {e}")))?;
    let key = &cert.tbs_certificate.subject_public_key_info;
    if key.algorithm.oid != oids::RSA_ENCRYPTION {
        return Err(AbmSimError::Recipient(
            "its public key is not RSA, and ABM encrypts tokens with RSA key transport".into(),
        ));
    }
    Ok(cert)
}

/// The `.p7m` file for `credentials`, encrypted to `recipient` (see [`recipient()`]).
pub(crate) fn package(
    credentials: &OAuthCredentials,
    recipient: &Certificate,
    options: &TokenOptions,
) -> Result<Vec<u8>, AbmSimError> {
    let enveloped = cms::envelope(message(credentials).as_bytes(), recipient, options.cipher)?;
    let encoded = if options.ber {
        to_indefinite_ber(&enveloped)?
    } else {
        enveloped
    };
    Ok(smime(&encoded))
}

/// Wraps DER/BER bytes as an S/MIME `application/pkcs7-mime` entity, base64 in 64
/// character lines.
fn smime(cms: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(cms);
    let mut out = String::with_capacity(b64.len() + b64.len() / 32 + 300);
    out.push_str(
        "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=\"smime.p7m\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"smime.p7m\"\r\n\
         Content-Description: S/MIME Encrypted Message\r\n\
         \r\n",
    );
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push_str("\r\n");
    }
    out.into_bytes()
}

/// Reads a DER `.p7m` from [`super::AbmSimulator::server_token`] and decrypts it with the
/// recipient's key. (BER tokens need a BER-capable CMS reader such as OpenSSL.)
pub fn open_server_token(p7m: &[u8], key: &PrivateKey) -> Result<OAuthCredentials, AbmSimError> {
    let text = std::str::from_utf8(p7m)
        .map_err(|_| AbmSimError::TokenFormat("the .p7m is not text".into()))?;
    let body_start = text
        .find("\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| text.find("\n\n").map(|i| i + 2))
        .ok_or_else(|| AbmSimError::TokenFormat("no blank line after the MIME headers".into()))?;
    let compact: String = text[body_start..]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| AbmSimError::TokenFormat(format!("the body is not base64: {e}")))?;
    let plain = cms::open_envelope(&der, key, None)?;
    let plain = std::str::from_utf8(&plain)
        .map_err(|_| AbmSimError::TokenFormat("the decrypted token is not text".into()))?;
    OAuthCredentials::from_token_message(plain)
}

/// Splits one DER TLV: (tag, header length, total length). Only single-byte tags,
/// which is all CMS uses.
fn tlv(input: &[u8]) -> Result<(u8, usize, usize), AbmSimError> {
    let bad = || AbmSimError::TokenFormat("the EnvelopedData is not valid DER".into());
    let tag = *input.first().ok_or_else(bad)?;
    let first = *input.get(1).ok_or_else(bad)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err(bad());
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*input.get(2 + i).ok_or_else(bad)?);
        }
        (len, 2 + n)
    };
    let total = header.checked_add(len).ok_or_else(bad)?;
    if total > input.len() {
        return Err(bad());
    }
    Ok((tag, header, total))
}

fn push_definite_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(u8::try_from(len).unwrap_or(0));
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | u8::try_from(bytes.len() - skip).unwrap_or(0));
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// DER encoding of the `id-data` OID, which starts an EncryptedContentInfo here.
const ID_DATA_TLV: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01,
];

/// Size of the OCTET STRING chunks of the BER encrypted content.
const CHUNK: usize = 1024;

/// The TLVs inside a constructed DER value's contents.
fn children(content: &[u8]) -> Result<Vec<&[u8]>, AbmSimError> {
    let mut rest = content;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (_, _, total) = tlv(rest)?;
        out.push(&rest[..total]);
        rest = &rest[total..];
    }
    Ok(out)
}

/// Re-encodes a DER `ContentInfo(EnvelopedData)` the way streaming CMS encoders
/// (OpenSSL's `-stream`, and by the look of real downloads ABM's) write it: the
/// ContentInfo, its `[0]`, the EnvelopedData and the EncryptedContentInfo with
/// indefinite lengths, the encrypted content as a constructed `[0]` of definite-length
/// OCTET STRING chunks, and everything else (RecipientInfos, algorithm identifiers)
/// left in DER.
pub(crate) fn to_indefinite_ber(der: &[u8]) -> Result<Vec<u8>, AbmSimError> {
    let bad =
        |what: &str| AbmSimError::TokenFormat(format!("unexpected EnvelopedData layout: {what}"));
    let mut out = Vec::with_capacity(der.len() + 64);
    let (tag, header, total) = tlv(der)?;
    if tag != 0x30 || total != der.len() {
        return Err(bad("ContentInfo is not one SEQUENCE"));
    }
    out.extend_from_slice(&[0x30, 0x80]);
    for field in children(&der[header..total])? {
        let (tag, header, total) = tlv(field)?;
        if tag != 0xa0 {
            out.extend_from_slice(field);
            continue;
        }
        out.extend_from_slice(&[0xa0, 0x80]);
        let inner = children(&field[header..total])?;
        let [enveloped] = inner.as_slice() else {
            return Err(bad("[0] does not hold exactly one value"));
        };
        let (tag, header, total) = tlv(enveloped)?;
        if tag != 0x30 {
            return Err(bad("EnvelopedData is not a SEQUENCE"));
        }
        out.extend_from_slice(&[0x30, 0x80]);
        for part in children(&enveloped[header..total])? {
            let (tag, header, total) = tlv(part)?;
            let content = &part[header..total];
            if tag == 0x30 && content.starts_with(ID_DATA_TLV) {
                encrypted_content_info(content, &mut out)?;
            } else {
                out.extend_from_slice(part);
            }
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
    }
    out.extend_from_slice(&[0, 0]);
    Ok(out)
}

fn encrypted_content_info(content: &[u8], out: &mut Vec<u8>) -> Result<(), AbmSimError> {
    out.extend_from_slice(&[0x30, 0x80]);
    for field in children(content)? {
        let (tag, header, total) = tlv(field)?;
        if tag == 0x80 {
            out.extend_from_slice(&[0xa0, 0x80]);
            for chunk in field[header..total].chunks(CHUNK) {
                out.push(0x04);
                push_definite_length(out, chunk.len());
                out.extend_from_slice(chunk);
            }
            out.extend_from_slice(&[0, 0]);
        } else {
            out.extend_from_slice(field);
        }
    }
    out.extend_from_slice(&[0, 0]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::{name, self_signed, CertificateParams};
    use der::Encode;
    use std::time::{Duration, SystemTime};

    fn credentials() -> OAuthCredentials {
        OAuthCredentials {
            consumer_key: "CK_abc".into(),
            consumer_secret: "CS_def".into(),
            access_token: "AT_ghi".into(),
            access_secret: "AS_jkl".into(),
            access_token_expiry: SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000),
        }
    }

    #[test]
    fn der_tokens_open_with_the_recipient_key() {
        let key = PrivateKey::generate_rsa2048().unwrap();
        let cert = self_signed(
            &CertificateParams::new(name(&[("CN", "mdm")]).unwrap()),
            &key,
        )
        .unwrap();
        for cipher in [
            ContentCipher::DesEde3Cbc,
            ContentCipher::Aes128Cbc,
            ContentCipher::Aes256Cbc,
        ] {
            let options = TokenOptions {
                cipher,
                ..TokenOptions::default()
            };
            let to = recipient(&cert.to_der().unwrap()).unwrap();
            let p7m = package(&credentials(), &to, &options).unwrap();
            let text = String::from_utf8(p7m.clone()).unwrap();
            assert!(text.starts_with(
                "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=\"smime.p7m\"\r\n"
            ));
            let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
            assert!(body.lines().all(|l| l.trim_end().len() <= 64));
            assert_eq!(open_server_token(&p7m, &key).unwrap(), credentials());
        }
        assert!(matches!(recipient(b"junk"), Err(AbmSimError::Recipient(_))));
        let ec = PrivateKey::generate(crate::keys::KeyAlgorithm::EcdsaP256).unwrap();
        let ec_cert =
            self_signed(&CertificateParams::new(name(&[("CN", "ec")]).unwrap()), &ec).unwrap();
        assert!(matches!(
            recipient(&ec_cert.to_der().unwrap()),
            Err(AbmSimError::Recipient(_))
        ));
    }

    /// DER TLV with a definite length.
    fn tlv_of(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        push_definite_length(&mut out, content.len());
        out.extend_from_slice(content);
        out
    }

    #[test]
    fn ber_conversion_streams_the_outer_layers_only() {
        let alg = tlv_of(0x30, &[0x05, 0x00]);
        let mut eci = ID_DATA_TLV.to_vec();
        eci.extend_from_slice(&alg);
        eci.extend(tlv_of(0x80, &[0xab; 2000]));
        let recipients = tlv_of(0x31, &tlv_of(0x30, &[0x02, 0x01, 0x00]));
        let mut enveloped = vec![0x02, 0x01, 0x00];
        enveloped.extend_from_slice(&recipients);
        enveloped.extend(tlv_of(0x30, &eci));
        let oid = [
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03,
        ];
        let mut content_info = oid.to_vec();
        content_info.extend(tlv_of(0xa0, &tlv_of(0x30, &enveloped)));
        let der = tlv_of(0x30, &content_info);

        let ber = to_indefinite_ber(&der).unwrap();
        let mut expected = vec![0x30, 0x80];
        expected.extend_from_slice(&oid);
        expected.extend_from_slice(&[0xa0, 0x80, 0x30, 0x80, 0x02, 0x01, 0x00]);
        expected.extend_from_slice(&recipients);
        expected.extend_from_slice(&[0x30, 0x80]);
        expected.extend_from_slice(ID_DATA_TLV);
        expected.extend_from_slice(&alg);
        expected.extend_from_slice(&[0xa0, 0x80, 0x04, 0x82, 0x04, 0x00]);
        expected.extend_from_slice(&[0xab; 1024]);
        expected.extend_from_slice(&[0x04, 0x82, 0x03, 0xd0]);
        expected.extend_from_slice(&[0xab; 976]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(ber, expected);
        assert!(to_indefinite_ber(&[0x30, 0x05, 0x01]).is_err());
        assert!(to_indefinite_ber(&tlv_of(0x31, &[])).is_err());
    }
}
