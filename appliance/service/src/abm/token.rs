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
//! The key pair's private key is a keystore *held key* ([`mdm_keystore::HeldKey`], purpose
//! `abm-key`): created inside the TPM on a TPM keystore, a sealed PKCS#8 key on the software
//! keystore (and for connections made before the keystore could hold keys). The service never
//! sees it: [`KeystoreKey`] hands the keystore's decrypt and sign operations to `mdm-pki`, so
//! the certificate is signed and the token's content key decrypted where the key lives.
//!
//! Decrypted bytes stay in [`Zeroizing`] buffers and never reach an error message or a log.

use std::time::Duration;

use base64::Engine as _;
use mdm_keystore::{HeldKey, KeystoreError, Sealer};
use mdm_pki::{
    self_signed, Certificate, CertificateParams, KeyUsages, Name, PkiError, PrivateKeyOps,
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
    #[error("the connection's key pair cannot open server tokens: {0}; create a new key pair with `mdmctl abm public-key NAME --new`")]
    KeyPair(#[source] PkiError),
    /// The keystore holding the connection's private key failed or could not be reached
    /// while decrypting (the TPM did not answer, for instance): nothing is known about the
    /// token.
    #[error("the connection's private key could not be used, so the token was not checked: {0}; fix the keystore (see `mdmctl keystore status`) and upload the token again")]
    KeyUnavailable(String),
}

/// A private key the keystore holds ([`Sealer::create_rsa_key`]), used through
/// [`PrivateKeyOps`]: signing and decryption happen in the keystore (inside the TPM for a
/// TPM-resident key), the caller only holds the opaque blob and the public key.
///
/// Keystore errors become [`PkiError`]s: [`KeystoreError::RsaDecryption`] is
/// [`PkiError::Decryption`] (so CMS keeps its padding-oracle defence), anything else
/// [`PkiError::KeyUnavailable`] with the keystore's sentence.
pub struct KeystoreKey<'a> {
    sealer: &'a dyn Sealer,
    purpose: &'a str,
    blob: &'a [u8],
    public_key_der: Vec<u8>,
}

impl<'a> KeystoreKey<'a> {
    /// A held key whose public key the caller already has (from [`HeldKey::public_key_der`]).
    pub fn new(
        sealer: &'a dyn Sealer,
        purpose: &'a str,
        blob: &'a [u8],
        public_key_der: Vec<u8>,
    ) -> Self {
        KeystoreKey {
            sealer,
            purpose,
            blob,
            public_key_der,
        }
    }

    /// A stored held key, its public key read from the keystore. This is where a blob the
    /// keystore cannot use (another TPM's, another purpose's, damaged) is refused.
    pub fn open(
        sealer: &'a dyn Sealer,
        purpose: &'a str,
        blob: &'a [u8],
    ) -> Result<Self, KeystoreError> {
        let public_key_der = sealer.rsa_public_key(purpose, blob)?;
        Ok(Self::new(sealer, purpose, blob, public_key_der))
    }
}

impl std::fmt::Debug for KeystoreKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeystoreKey")
            .field("purpose", &self.purpose)
            .field("residence", &mdm_keystore::KeyResidence::of_blob(self.blob))
            .finish_non_exhaustive()
    }
}

/// A keystore error as `mdm-pki` reports key failures.
pub fn pki_error(e: KeystoreError) -> PkiError {
    match e {
        KeystoreError::RsaDecryption => PkiError::Decryption,
        other => PkiError::KeyUnavailable(other.to_string()),
    }
}

impl PrivateKeyOps for KeystoreKey<'_> {
    fn public_key_der(&self) -> Vec<u8> {
        self.public_key_der.clone()
    }

    fn sign_sha256(&self, msg: &[u8]) -> Result<Vec<u8>, PkiError> {
        self.sealer
            .rsa_sign_sha256(self.purpose, self.blob, msg)
            .map_err(pki_error)
    }

    fn rsa_decrypt_pkcs1(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, PkiError> {
        self.sealer
            .rsa_decrypt(self.purpose, self.blob, ciphertext)
            .map_err(pki_error)
    }
}

/// Why a new token key pair could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyPairError {
    /// The keystore could not create the key (the TPM did not answer, for instance).
    #[error("the keystore could not create the ABM token key: {0}")]
    Keystore(#[source] KeystoreError),
    /// The certificate could not be made (or signed by the new key).
    #[error("the ABM token certificate could not be made: {0}")]
    Certificate(#[source] PkiError),
}

/// A fresh key pair for a connection: an RSA-2048 key held by `sealer` for `purpose`
/// (inside the TPM on a TPM keystore) and a self-signed certificate, signed by that key where
/// it lives, with only a common name (`<connection_name> ABM token`), keyEncipherment and
/// digitalSignature. The admin uploads the certificate to the MDM server in ABM; ABM encrypts
/// the token to it, and the same key later signs the `com.apple.maid` JWT, hence both usages.
pub fn new_token_key_pair(
    sealer: &dyn Sealer,
    purpose: &str,
    connection_name: &str,
) -> Result<(Certificate, HeldKey), KeyPairError> {
    let held = sealer
        .create_rsa_key(purpose)
        .map_err(KeyPairError::Keystore)?;
    let key = KeystoreKey::new(sealer, purpose, &held.blob, held.public_key_der.clone());
    let mut params = CertificateParams::leaf(
        Name::new(format!("{connection_name} ABM token")),
        KEY_PAIR_LIFETIME,
        KEY_PAIR_BACKDATE,
    );
    params.key_usage = KeyUsages::SIGN_AND_ENCRYPT;
    let cert = self_signed(&params, &key).map_err(KeyPairError::Certificate)?;
    Ok((cert, held))
}

/// Opens a server token file with the connection's key pair: `cert` and its private key
/// (a [`KeystoreKey`], or any [`PrivateKeyOps`]).
///
/// `p7m` may be the S/MIME message ABM hands out (CRLF or LF line breaks), bare base64 of
/// the CMS message (optionally PEM-armoured), or the DER/BER CMS message itself.
pub fn decrypt_server_token(
    p7m: &[u8],
    cert: &Certificate,
    key: &dyn PrivateKeyOps,
) -> Result<ServerToken, TokenError> {
    let cms = cms_message(p7m)?;
    let (plain, _cipher): (Zeroizing<Vec<u8>>, _) = mdm_pki::cms::open_envelope(&cms, cert, key)
        .map_err(|e| match e {
            PkiError::NoMatchingRecipient => TokenError::WrongKey,
            PkiError::Decryption => TokenError::Damaged,
            PkiError::KeyUnavailable(why) => TokenError::KeyUnavailable(why),
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

    use mdm_keystore::{KeyResidence, SoftSealer};
    use mdm_pki::cms::ContentCipher;

    use super::*;
    use crate::abm::KEY_PURPOSE;

    const TOKEN_JSON: &str = r#"{"consumer_key":"CK_3a1b2c","consumer_secret":"CS_secret-consumer","access_token":"AT_O1234567890","access_secret":"AS_secret-access","access_token_expiry":"2027-11-21T10:00:00Z"}"#;

    /// The decrypted content as ABM frames it.
    fn message(json: &str) -> String {
        format!(
            "Content-Type: text/plain;charset=UTF-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n-----BEGIN MESSAGE-----\r\n{json}\r\n-----END MESSAGE-----\r\n"
        )
    }

    /// The test token, framed as ABM frames it and enveloped for `cert` with `cipher` (DER).
    fn token_envelope(cert: &Certificate, cipher: ContentCipher) -> Vec<u8> {
        mdm_pki::cms::envelope(message(TOKEN_JSON).as_bytes(), cert, cipher).unwrap()
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

    /// A software keystore (the development backend) in a temp dir.
    struct Keystore {
        _dir: TempDir,
        sealer: SoftSealer,
    }

    impl Keystore {
        fn new() -> Self {
            let dir = TempDir::new();
            let sealer = SoftSealer::open_or_create(&dir.path("master.key")).unwrap();
            Keystore { _dir: dir, sealer }
        }

        fn pair(&self, name: &str) -> (Certificate, HeldKey) {
            new_token_key_pair(&self.sealer, KEY_PURPOSE, name).unwrap()
        }

        fn key<'a>(&'a self, held: &'a HeldKey) -> KeystoreKey<'a> {
            KeystoreKey::open(&self.sealer, KEY_PURPOSE, &held.blob).unwrap()
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
        let ks = Keystore::new();
        let (cert, held) = ks.pair("district-1");
        assert_eq!(held.residence, KeyResidence::Sealed);
        assert_eq!(KeyResidence::of_blob(&held.blob), KeyResidence::Sealed);
        assert_eq!(cert.public_key_der(), held.public_key_der);
        assert_eq!(cert.public_key_der(), ks.key(&held).public_key_der());
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
        let (other, _) = ks.pair("district-1");
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
            // The self-signature, made by the held key through the keystore, verifies.
            let out = Command::new("openssl")
                .args(["verify", "-check_ss_sig", "-partial_chain", "-CAfile"])
                .args([path_str(&path), path_str(&path)])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn smime_tokens_from_openssl_open_with_every_cipher() {
        if !have_openssl() {
            return;
        }
        let ks = Keystore::new();
        let (cert, held) = ks.pair("c1");
        let key = ks.key(&held);
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
        let ks = Keystore::new();
        let (cert, held) = ks.pair("c1");
        let key = ks.key(&held);
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
        let der = token_envelope(&cert, ContentCipher::DesEde3Cbc);
        assert_expected(&decrypt_server_token(&der, &cert, &key).unwrap());
    }

    #[test]
    fn a_token_for_another_key_is_refused() {
        if !have_openssl() {
            return;
        }
        let ks = Keystore::new();
        let (cert, held) = ks.pair("c1");
        let key = ks.key(&held);
        let (other_cert, _) = ks.pair("c1");
        let p7m = smime_token(&other_cert, &message(TOKEN_JSON), "-aes256");
        let err = decrypt_server_token(&p7m, &cert, &key).unwrap_err();
        assert!(matches!(err, TokenError::WrongKey), "{err}");
        assert!(err.to_string().contains("mdmctl abm public-key"), "{err}");

        // A key that is not the certificate's is a key-pair problem, not the token's.
        let (_, other_held) = ks.pair("c1");
        let other_key = ks.key(&other_held);
        let p7m = smime_token(&cert, &message(TOKEN_JSON), "-aes256");
        let err = decrypt_server_token(&p7m, &cert, &other_key).unwrap_err();
        assert!(matches!(err, TokenError::KeyPair(_)), "{err}");
    }

    #[test]
    fn a_damaged_token_is_named() {
        let ks = Keystore::new();
        let (cert, held) = ks.pair("c1");
        let key = ks.key(&held);
        // The ciphertext ends the envelope. Flipping the last byte of the block before the
        // last flips the same byte of the last plaintext block, which is the padding length:
        // 0x55 away from any valid length (1 to 16), so the padding check fails every time.
        // (Flipping a byte of the last block itself garbles that whole block, whose padding is
        // then valid about once in 256 tries.)
        for _ in 0..8 {
            let mut der = token_envelope(&cert, ContentCipher::Aes256Cbc);
            let in_the_block_before_the_last = der.len() - 1 - 16;
            der[in_the_block_before_the_last] ^= 0x55;
            match decrypt_server_token(&der, &cert, &key) {
                Err(TokenError::Damaged) => {}
                other => panic!("expected Damaged, got {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_is_not_a_token() {
        let ks = Keystore::new();
        let (cert, held) = ks.pair("c1");
        let key = ks.key(&held);
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
        let ks = Keystore::new();
        let (cert, held) = ks.pair("c1");
        let key = ks.key(&held);
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

    /// A keystore whose TPM stops answering for decryption (public keys still come back).
    struct TpmGone(SoftSealer);

    fn tpm_gone() -> KeystoreError {
        KeystoreError::TpmUnavailable {
            tcti: "device:/dev/tpmrm0".into(),
            library: "libtss2-tcti-device0",
            detail: "Connection refused".into(),
        }
    }

    impl Sealer for TpmGone {
        fn backend(&self) -> mdm_keystore::Backend {
            self.0.backend()
        }
        fn seal(
            &self,
            purpose: &str,
            plaintext: &[u8],
        ) -> Result<mdm_keystore::SealedBlob, KeystoreError> {
            self.0.seal(purpose, plaintext)
        }
        fn unseal(
            &self,
            purpose: &str,
            blob: &mdm_keystore::SealedBlob,
        ) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
            self.0.unseal(purpose, blob)
        }
        fn rsa_decrypt(
            &self,
            _purpose: &str,
            _key_blob: &[u8],
            _ciphertext: &[u8],
        ) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
            Err(tpm_gone())
        }
        fn rsa_sign_sha256(
            &self,
            _purpose: &str,
            _key_blob: &[u8],
            _message: &[u8],
        ) -> Result<Vec<u8>, KeystoreError> {
            Err(tpm_gone())
        }
    }

    #[test]
    fn keystore_errors_map_to_pki_errors() {
        assert!(matches!(
            pki_error(KeystoreError::RsaDecryption),
            PkiError::Decryption
        ));
        match pki_error(tpm_gone()) {
            PkiError::KeyUnavailable(why) => {
                assert!(why.contains("could not reach the TPM"), "{why}")
            }
            other => panic!("expected KeyUnavailable, got {other}"),
        }
    }

    #[test]
    fn an_unreachable_keystore_is_not_a_damaged_token() {
        let ks = Keystore::new();
        let (cert, held) = ks.pair("c1");
        let der = token_envelope(&cert, ContentCipher::Aes256Cbc);
        let gone = TpmGone(ks.sealer);
        let key = KeystoreKey::open(&gone, KEY_PURPOSE, &held.blob).unwrap();
        let err = decrypt_server_token(&der, &cert, &key).unwrap_err();
        assert!(matches!(err, TokenError::KeyUnavailable(_)), "{err}");
        assert!(err.to_string().contains("could not reach the TPM"), "{err}");
        // Nor can it make a key pair: the certificate would need a signature.
        match new_token_key_pair(&gone, KEY_PURPOSE, "c2") {
            Err(KeyPairError::Certificate(PkiError::KeyUnavailable(_))) => {}
            other => panic!("expected an unavailable key, got {other:?}"),
        }
    }

    #[test]
    fn a_key_sealed_before_keys_were_held_still_opens_tokens() {
        // What connections made before the keystore held keys stored: a PKCS#8 key sealed
        // under `abm-key`, and a certificate signed in memory.
        let ks = Keystore::new();
        let legacy = mdm_pki::PrivateKey::generate(mdm_pki::KeyAlgorithm::Rsa2048).unwrap();
        let mut params = CertificateParams::leaf(
            Name::new("old ABM token"),
            KEY_PAIR_LIFETIME,
            KEY_PAIR_BACKDATE,
        );
        params.key_usage = KeyUsages::SIGN_AND_ENCRYPT;
        let cert = self_signed(&params, &legacy).unwrap();
        let blob = ks
            .sealer
            .seal(KEY_PURPOSE, &legacy.to_pkcs8_der())
            .unwrap()
            .to_bytes();
        assert_eq!(KeyResidence::of_blob(&blob), KeyResidence::Sealed);
        let key = KeystoreKey::open(&ks.sealer, KEY_PURPOSE, &blob).unwrap();
        assert_eq!(key.public_key_der(), legacy.public_key_der());
        let der = token_envelope(&cert, ContentCipher::DesEde3Cbc);
        assert_expected(&decrypt_server_token(&der, &cert, &key).unwrap());

        // Another keystore (another appliance's data key) cannot use it.
        let elsewhere = Keystore::new();
        let err = KeystoreKey::open(&elsewhere.sealer, KEY_PURPOSE, &blob).unwrap_err();
        assert!(matches!(err, KeystoreError::WrongKey { .. }), "{err}");
        // Nor is it usable under another purpose.
        let err = KeystoreKey::open(&ks.sealer, "tls-key", &blob).unwrap_err();
        assert!(matches!(err, KeystoreError::WrongPurpose { .. }), "{err}");
    }
}
