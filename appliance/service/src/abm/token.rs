//! The ABM server token: the key pair whose certificate the admin uploads to Apple Business
//! Manager, and opening the `.p7m` token file ABM returns.
//!
//! The token file is S/MIME (`Content-Type: application/pkcs7-mime; smime-type=enveloped-data`,
//! base64 body) around CMS EnvelopedData addressed to the uploaded certificate with RSA
//! PKCS#1 v1.5 key transport. Apple does not document the content cipher, so whatever
//! [`mdm_pki::cms::open_envelope`] reads is accepted (DES-EDE3-CBC, AES-CBC), in DER or BER.
//! Decrypted, it is a small MIME text whose body frames the OAuth credentials as JSON between
//! `-----BEGIN MESSAGE-----` and `-----END MESSAGE-----`.
//!
//! Decrypted bytes stay in [`Zeroizing`] buffers and never reach an error message or a log.

use std::time::Duration;

use base64::Engine as _;
use mdm_pki::{
    self_signed, Certificate, CertificateParams, KeyAlgorithm, KeyUsages, Name, PkiError,
    PrivateKey,
};
use mdm_proto::abm::ServerToken;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Validity of the token certificate. Apple does not check it; a long one spares admins a
/// pointless re-upload, and a renewal can stage a new key pair at any time anyway.
const KEY_PAIR_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Backdating of the token certificate's notBefore, against clock skew.
const KEY_PAIR_BACKDATE: Duration = Duration::from_secs(3600);

const MESSAGE_BEGIN: &[u8] = b"-----BEGIN MESSAGE-----";
const MESSAGE_END: &[u8] = b"-----END MESSAGE-----";

/// Why a server token file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file is not an S/MIME or CMS enveloped message.
    #[error("this file is not an Apple Business Manager server token ({reason}): download the server token (.p7m) of the MDM server in Apple Business Manager and upload that file")]
    NotAToken {
        /// What is wrong with it (no content of the file).
        reason: String,
    },
    /// The token is addressed to another certificate.
    #[error("this token was not made for the public key of this connection: upload the public key shown by `mdmctl abm public-key NAME` to the MDM server in ABM and download its token again")]
    WrongKey,
    /// The token is addressed to this connection's certificate but does not decrypt.
    #[error("this token is addressed to this connection's public key but cannot be decrypted with its private key: the file is damaged; download the token again from Apple Business Manager")]
    Damaged,
    /// The token decrypted, but its content is not a complete set of credentials.
    #[error("the decrypted server token is malformed: {what}; download the token again from Apple Business Manager")]
    Malformed {
        /// What is missing or wrong (never a credential).
        what: String,
    },
    /// The connection's own key pair cannot open tokens (not RSA, or key and certificate
    /// do not belong together).
    #[error("the connection's key pair cannot open server tokens: {0}; create a new key pair with `mdmctl abm public-key NAME --rotate`")]
    KeyPair(#[source] PkiError),
}

/// A fresh key pair for a connection: RSA-2048 and a self-signed certificate with only a
/// common name (`<connection_name> ABM token`), keyEncipherment and digitalSignature. The
/// admin uploads the certificate to the MDM server in ABM; ABM encrypts the token to it, and
/// the same key later signs the `com.apple.maid` JWT, hence both usages.
pub fn new_token_key_pair(connection_name: &str) -> Result<(Certificate, PrivateKey), PkiError> {
    let key = PrivateKey::generate(KeyAlgorithm::Rsa2048)?;
    let mut params = CertificateParams::leaf(
        Name::new(format!("{connection_name} ABM token")),
        KEY_PAIR_LIFETIME,
        KEY_PAIR_BACKDATE,
    );
    params.key_usage = KeyUsages::SIGN_AND_ENCRYPT;
    let cert = self_signed(&params, &key)?;
    Ok((cert, key))
}

/// Opens a server token file with the connection's key pair.
///
/// `p7m` may be the S/MIME message ABM hands out (CRLF or LF line breaks), bare base64 of
/// the CMS message (optionally PEM-armoured), or the DER/BER CMS message itself.
pub fn decrypt_server_token(
    p7m: &[u8],
    cert: &Certificate,
    key: &PrivateKey,
) -> Result<ServerToken, TokenError> {
    let cms = cms_message(p7m)?;
    let (plain, _cipher): (Zeroizing<Vec<u8>>, _) = mdm_pki::cms::open_envelope(&cms, cert, key)
        .map_err(|e| match e {
            PkiError::NoMatchingRecipient => TokenError::WrongKey,
            PkiError::Decryption => TokenError::Damaged,
            PkiError::NotRsa(_) => TokenError::KeyPair(e),
            PkiError::Invalid {
                context: "recipient",
                ..
            } => TokenError::KeyPair(e),
            other => TokenError::NotAToken {
                reason: other.to_string(),
            },
        })?;
    parse_message(&plain)
}

/// The CMS message inside whatever form the file has.
fn cms_message(input: &[u8]) -> Result<Vec<u8>, TokenError> {
    let not_a_token = |reason: &str| TokenError::NotAToken {
        reason: reason.to_string(),
    };
    let start = input
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .ok_or_else(|| not_a_token("the file is empty"))?;
    let input = &input[start..];
    // A DER or BER SEQUENCE: the ContentInfo itself.
    if input.first() == Some(&0x30) {
        return Ok(input.to_vec());
    }
    let text = std::str::from_utf8(input)
        .map_err(|_| not_a_token("it is neither a CMS message nor text"))?;
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    let body_lines = if looks_like_header(lines.first().copied().unwrap_or_default()) {
        let (headers, body) = split_headers(&lines);
        check_mime_headers(&headers)?;
        body
    } else {
        &lines[..]
    };
    let body_lines = strip_armour(body_lines);
    let base64_text: String = body_lines
        .iter()
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    if base64_text.is_empty() {
        return Err(not_a_token("the message body is empty"));
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(base64_text.as_bytes())
        .map_err(|_| not_a_token("the message body is not base64"))?;
    if der.first() != Some(&0x30) {
        return Err(not_a_token("the message body is not a CMS message"));
    }
    Ok(der)
}

/// `Name: value`. Base64 never contains `:`, and PEM armour starts with `-`.
fn looks_like_header(line: &str) -> bool {
    match line.split_once(':') {
        Some((name, _)) => {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }
        None => false,
    }
}

/// Splits RFC 5322 headers (unfolded, names lower-cased) from the body at the first empty
/// line.
fn split_headers<'a, 'b>(lines: &'b [&'a str]) -> (Vec<(String, String)>, &'b [&'a str]) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut end = lines.len();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            end = i + 1;
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    (headers, lines.get(end..).unwrap_or_default())
}

fn check_mime_headers(headers: &[(String, String)]) -> Result<(), TokenError> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let content_type = header("content-type").ok_or_else(|| TokenError::NotAToken {
        reason: "the message has no Content-Type".to_string(),
    })?;
    let mut params = content_type.split(';').map(str::trim);
    let media_type = params.next().unwrap_or_default().to_ascii_lowercase();
    // `x-pkcs7-mime` is the older spelling (RFC 2311) that OpenSSL still writes.
    if media_type != "application/pkcs7-mime" && media_type != "application/x-pkcs7-mime" {
        return Err(TokenError::NotAToken {
            reason: format!("its Content-Type is {media_type:?}, not application/pkcs7-mime"),
        });
    }
    let smime_type = params.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("smime-type")
            .then(|| value.trim().trim_matches('"').to_ascii_lowercase())
    });
    if let Some(smime_type) = smime_type.filter(|t| t != "enveloped-data") {
        return Err(TokenError::NotAToken {
            reason: format!("it is S/MIME {smime_type:?}, not enveloped-data"),
        });
    }
    if let Some(encoding) = header("content-transfer-encoding") {
        if !encoding.eq_ignore_ascii_case("base64") {
            return Err(TokenError::NotAToken {
                reason: format!("its Content-Transfer-Encoding is {encoding:?}, not base64"),
            });
        }
    }
    Ok(())
}

/// The lines between `-----BEGIN ...-----` and `-----END ...-----` when the body is
/// PEM-armoured; all lines otherwise.
fn strip_armour<'a, 'b>(lines: &'b [&'a str]) -> &'b [&'a str] {
    let Some(begin) = lines.iter().position(|l| l.starts_with("-----BEGIN ")) else {
        return lines;
    };
    let rest = lines.get(begin + 1..).unwrap_or_default();
    let end = rest
        .iter()
        .position(|l| l.starts_with("-----END "))
        .unwrap_or(rest.len());
    rest.get(..end).unwrap_or_default()
}

/// The credentials as they appear in the JSON. Everything optional so that a missing field
/// is reported by name rather than by serde's message; wiped on drop.
#[derive(Default, Deserialize, Zeroize, ZeroizeOnDrop)]
struct RawToken {
    consumer_key: Option<String>,
    consumer_secret: Option<String>,
    access_token: Option<String>,
    access_secret: Option<String>,
    access_token_expiry: Option<String>,
}

fn parse_message(plain: &[u8]) -> Result<ServerToken, TokenError> {
    let malformed = |what: &str| TokenError::Malformed {
        what: what.to_string(),
    };
    let begin = find(plain, MESSAGE_BEGIN)
        .ok_or_else(|| malformed("the -----BEGIN MESSAGE----- line is missing"))?
        + MESSAGE_BEGIN.len();
    let json = plain.get(begin..).unwrap_or_default();
    let end = find(json, MESSAGE_END)
        .ok_or_else(|| malformed("the -----END MESSAGE----- line is missing"))?;
    let json = json.get(..end).unwrap_or_default();

    // serde_json's messages can quote the offending value, which may be a secret: report
    // only the kind of error and where it is.
    let mut raw: RawToken = serde_json::from_slice(json).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Data => "does not have the expected fields",
            serde_json::error::Category::Eof => "ends early",
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                "is not valid JSON"
            }
        };
        TokenError::Malformed {
            what: format!(
                "the JSON between the MESSAGE lines {kind} (line {}, column {})",
                e.line(),
                e.column()
            ),
        }
    })?;

    let missing: Vec<&str> = [
        ("consumer_key", &raw.consumer_key),
        ("consumer_secret", &raw.consumer_secret),
        ("access_token", &raw.access_token),
        ("access_secret", &raw.access_secret),
        ("access_token_expiry", &raw.access_token_expiry),
    ]
    .into_iter()
    .filter(|(_, v)| v.as_deref().is_none_or(|s| s.trim().is_empty()))
    .map(|(name, _)| name)
    .collect();
    if !missing.is_empty() {
        return Err(TokenError::Malformed {
            what: format!("missing or empty: {}", missing.join(", ")),
        });
    }
    let expiry = raw.access_token_expiry.take().unwrap_or_default();
    // The expiry is not a secret: naming it helps the admin.
    if time::OffsetDateTime::parse(&expiry, &Rfc3339).is_err() {
        return Err(TokenError::Malformed {
            what: format!("access_token_expiry {expiry:?} is not an RFC 3339 time"),
        });
    }
    Ok(ServerToken {
        consumer_key: raw.consumer_key.take().unwrap_or_default(),
        consumer_secret: raw.consumer_secret.take().unwrap_or_default(),
        access_token: raw.access_token.take().unwrap_or_default(),
        access_secret: raw.access_secret.take().unwrap_or_default(),
        access_token_expiry: expiry,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::SystemTime;

    use mdm_pki::cms::ContentCipher;

    use super::*;

    const TOKEN_JSON: &str = r#"{"consumer_key":"CK_3a1b2c","consumer_secret":"CS_secret-consumer","access_token":"AT_O1234567890","access_secret":"AS_secret-access","access_token_expiry":"2027-11-21T10:00:00Z"}"#;

    /// The decrypted content as ABM frames it.
    fn message(json: &str) -> String {
        format!(
            "Content-Type: text/plain;charset=UTF-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n-----BEGIN MESSAGE-----\r\n{json}\r\n-----END MESSAGE-----\r\n"
        )
    }

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let mut rnd = [0u8; 8];
            aws_lc_rs::rand::fill(&mut rnd).unwrap();
            let path = std::env::temp_dir().join(format!("abm-token-{}", hex::encode(rnd)));
            std::fs::create_dir(&path).unwrap();
            TempDir(path)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn have_openssl() -> bool {
        let found = Command::new("openssl").arg("version").output().is_ok();
        if !found {
            eprintln!("openssl not found: skipping the test");
        }
        found
    }

    fn openssl(args: &[&str]) {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path_str(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    /// Writes `cert` and the message, and returns the paths.
    fn inputs(dir: &TempDir, cert: &Certificate, msg: &str) -> (PathBuf, PathBuf) {
        let cert_path = dir.path("cert.pem");
        std::fs::write(&cert_path, cert.to_pem()).unwrap();
        let msg_path = dir.path("message.txt");
        std::fs::write(&msg_path, msg).unwrap();
        (cert_path, msg_path)
    }

    /// `openssl smime -encrypt` output: an S/MIME message.
    fn smime_token(cert: &Certificate, msg: &str, cipher: &str) -> Vec<u8> {
        let dir = TempDir::new();
        let (cert_path, msg_path) = inputs(&dir, cert, msg);
        let out = dir.path("token.p7m");
        openssl(&[
            "smime",
            "-encrypt",
            cipher,
            "-in",
            path_str(&msg_path),
            "-out",
            path_str(&out),
            path_str(&cert_path),
        ]);
        std::fs::read(out).unwrap()
    }

    /// `openssl cms -encrypt -stream -outform DER`: BER with indefinite lengths.
    fn ber_token(cert: &Certificate, msg: &str) -> Vec<u8> {
        let dir = TempDir::new();
        let (cert_path, msg_path) = inputs(&dir, cert, msg);
        let out = dir.path("token.ber");
        openssl(&[
            "cms",
            "-encrypt",
            "-stream",
            "-binary",
            "-aes256",
            "-outform",
            "DER",
            "-in",
            path_str(&msg_path),
            "-out",
            path_str(&out),
            path_str(&cert_path),
        ]);
        std::fs::read(out).unwrap()
    }

    fn assert_expected(token: &ServerToken) {
        assert_eq!(token.consumer_key, "CK_3a1b2c");
        assert_eq!(token.consumer_secret, "CS_secret-consumer");
        assert_eq!(token.access_token, "AT_O1234567890");
        assert_eq!(token.access_secret, "AS_secret-access");
        assert_eq!(token.access_token_expiry, "2027-11-21T10:00:00Z");
    }

    #[test]
    fn the_key_pair_is_what_abm_expects() {
        let (cert, key) = new_token_key_pair("district-1").unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::Rsa2048);
        assert_eq!(cert.public_key_der(), key.public_key_der());
        assert_eq!(cert.subject(), "CN=district-1 ABM token");
        assert_eq!(cert.subject(), cert.issuer());
        let usage = cert.key_usage().unwrap();
        assert!(usage.key_encipherment && usage.digital_signature);
        assert!(!usage.key_cert_sign);
        assert!(!cert.is_ca());
        let years = cert
            .not_after()
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs()
            / (365 * 24 * 3600);
        assert!(years >= 4, "valid for {years} years");
        // Two pairs are distinct.
        let (other, _) = new_token_key_pair("district-1").unwrap();
        assert_ne!(cert.public_key_der(), other.public_key_der());

        if have_openssl() {
            let dir = TempDir::new();
            let path = dir.path("cert.pem");
            std::fs::write(&path, cert.to_pem()).unwrap();
            let out = Command::new("openssl")
                .args(["x509", "-noout", "-text", "-in", path_str(&path)])
                .output()
                .unwrap();
            assert!(out.status.success());
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
            assert!(
                text.contains("Digital Signature, Key Encipherment"),
                "{text}"
            );
        }
    }

    #[test]
    fn smime_tokens_from_openssl_open_with_every_cipher() {
        if !have_openssl() {
            return;
        }
        let (cert, key) = new_token_key_pair("c1").unwrap();
        for cipher in ["-des3", "-aes128", "-aes256"] {
            let p7m = smime_token(&cert, &message(TOKEN_JSON), cipher);
            let text = String::from_utf8(p7m.clone()).unwrap();
            assert!(
                text.contains("smime-type=enveloped-data"),
                "{cipher}: {text}"
            );
            assert_expected(&decrypt_server_token(&p7m, &cert, &key).unwrap());

            // Apple's spelling of the media type, with CRLF line breaks.
            let apple = text
                .replace("application/x-pkcs7-mime", "application/pkcs7-mime")
                .replace("\r\n", "\n")
                .replace('\n', "\r\n");
            assert_expected(&decrypt_server_token(apple.as_bytes(), &cert, &key).unwrap());
        }
    }

    #[test]
    fn ber_der_and_bare_base64_open() {
        if !have_openssl() {
            return;
        }
        let (cert, key) = new_token_key_pair("c1").unwrap();
        let ber = ber_token(&cert, &message(TOKEN_JSON));
        // Indefinite-length outer SEQUENCE: really BER, not DER.
        assert_eq!(&ber[..2], &[0x30, 0x80]);
        assert_expected(&decrypt_server_token(&ber, &cert, &key).unwrap());

        let b64 = base64::engine::general_purpose::STANDARD.encode(&ber);
        let wrapped: String = b64
            .as_bytes()
            .chunks(64)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        assert_expected(&decrypt_server_token(wrapped.as_bytes(), &cert, &key).unwrap());
        let armoured = format!("-----BEGIN CMS-----\n{wrapped}-----END CMS-----\n");
        assert_expected(&decrypt_server_token(armoured.as_bytes(), &cert, &key).unwrap());

        // DER made by our own encoder, triple DES.
        let der = mdm_pki::cms::envelope(
            message(TOKEN_JSON).as_bytes(),
            &cert,
            ContentCipher::DesEde3Cbc,
        )
        .unwrap();
        assert_expected(&decrypt_server_token(&der, &cert, &key).unwrap());
    }

    #[test]
    fn a_token_for_another_key_is_refused() {
        if !have_openssl() {
            return;
        }
        let (cert, key) = new_token_key_pair("c1").unwrap();
        let (other_cert, _) = new_token_key_pair("c1").unwrap();
        let p7m = smime_token(&other_cert, &message(TOKEN_JSON), "-aes256");
        let err = decrypt_server_token(&p7m, &cert, &key).unwrap_err();
        assert!(matches!(err, TokenError::WrongKey), "{err}");
        assert!(err.to_string().contains("mdmctl abm public-key"), "{err}");

        // A key that is not the certificate's is a key-pair problem, not the token's.
        let (_, other_key) = new_token_key_pair("c1").unwrap();
        let p7m = smime_token(&cert, &message(TOKEN_JSON), "-aes256");
        let err = decrypt_server_token(&p7m, &cert, &other_key).unwrap_err();
        assert!(matches!(err, TokenError::KeyPair(_)), "{err}");
    }

    #[test]
    fn a_damaged_token_is_named() {
        let (cert, key) = new_token_key_pair("c1").unwrap();
        // A flipped bit in the last ciphertext block breaks its padding, except in the rare
        // case (about 1 in 256) where the garbled block happens to end in valid padding: then
        // the frame is garbled instead. Several envelopes make a `Damaged` certain.
        let mut damaged = 0;
        for _ in 0..8 {
            let mut der = mdm_pki::cms::envelope(
                message(TOKEN_JSON).as_bytes(),
                &cert,
                ContentCipher::Aes256Cbc,
            )
            .unwrap();
            let last = der.len() - 1;
            der[last] ^= 0x55;
            match decrypt_server_token(&der, &cert, &key).unwrap_err() {
                TokenError::Damaged => damaged += 1,
                TokenError::Malformed { .. } => {}
                other => panic!("unexpected error: {other}"),
            }
        }
        assert!(damaged > 0);
    }

    #[test]
    fn garbage_is_not_a_token() {
        let (cert, key) = new_token_key_pair("c1").unwrap();
        let cases: [&[u8]; 8] = [
            b"",
            b"   \n",
            b"hello, this is a text file\n",
            b"\xff\xfe\x00binary",
            b"0\x03abc",
            b"Content-Type: text/plain\n\naGVsbG8=\n",
            b"Content-Type: application/pkcs7-mime; smime-type=signed-data\n\nMAA=\n",
            b"Content-Type: application/pkcs7-mime\nContent-Transfer-Encoding: 7bit\n\nMAA=\n",
        ];
        for input in cases {
            let err = decrypt_server_token(input, &cert, &key).unwrap_err();
            assert!(
                matches!(err, TokenError::NotAToken { .. }),
                "{:?}: {err}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn malformed_content_names_what_is_missing_and_no_secret() {
        let (cert, key) = new_token_key_pair("c1").unwrap();
        let open = |content: &str| {
            let der = mdm_pki::cms::envelope(content.as_bytes(), &cert, ContentCipher::Aes128Cbc)
                .unwrap();
            decrypt_server_token(&der, &cert, &key)
        };
        let no_secret = |err: &TokenError| {
            let text = err.to_string();
            assert!(
                !text.contains("CS_") && !text.contains("AS_") && !text.contains("AT_"),
                "{text}"
            );
        };

        let err = open(&message(
            r#"{"consumer_key":"CK_1","consumer_secret":"CS_x","access_token":"AT_y","access_token_expiry":"2027-01-01T00:00:00Z"}"#,
        ))
        .unwrap_err();
        assert!(
            matches!(&err, TokenError::Malformed { what } if what == "missing or empty: access_secret"),
            "{err}"
        );
        no_secret(&err);

        let err = open(&message(
            r#"{"consumer_key":"","consumer_secret":"CS_x","access_token":"AT_y","access_secret":"AS_z"}"#,
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("missing or empty: consumer_key, access_token_expiry"),
            "{err}"
        );
        no_secret(&err);

        let err = open(&message(
            r#"{"consumer_key":"CK_1","consumer_secret":"CS_x","access_token":"AT_y","access_secret":"AS_z","access_token_expiry":"next year"}"#,
        ))
        .unwrap_err();
        assert!(err.to_string().contains("\"next year\""), "{err}");
        no_secret(&err);

        // A secret in a field of the wrong type must not be quoted back.
        let err = open(&message(
            r#"{"consumer_key":"CK_1","consumer_secret":["CS_x"],"access_token":"AT_y"}"#,
        ))
        .unwrap_err();
        assert!(matches!(err, TokenError::Malformed { .. }), "{err}");
        no_secret(&err);

        let err = open(&message(r#"{"consumer_key": "CK_1", "#)).unwrap_err();
        assert!(matches!(err, TokenError::Malformed { .. }), "{err}");

        let err = open(TOKEN_JSON).unwrap_err();
        assert!(err.to_string().contains("BEGIN MESSAGE"), "{err}");
        no_secret(&err);
        let err = open(&format!("-----BEGIN MESSAGE-----\n{TOKEN_JSON}\n")).unwrap_err();
        assert!(err.to_string().contains("END MESSAGE"), "{err}");
        no_secret(&err);
    }
}
