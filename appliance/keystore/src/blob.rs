//! The sealed-blob wire format.

use std::fmt;

use crate::{Backend, KeystoreError};

/// Marks the start of every sealed blob, so that a plaintext secret stored by mistake (or the
/// wrong file) is recognised as such instead of as "corrupted".
const MAGIC: &[u8; 4] = b"MDKS";

/// The only format version this build writes and reads.
pub const BLOB_VERSION: u8 = 1;

/// Versioned, self-describing sealed blob.
///
/// Layout (all lengths are one byte):
///
/// ```text
/// "MDKS" | version | backend id | purpose len | purpose | key id len | key id
///        | nonce len | nonce | ciphertext (with the AEAD tag, to the end)
/// ```
///
/// Everything before the nonce is the AEAD associated data, so the purpose, key id, backend
/// and version cannot be changed without the blob failing to unseal. The purpose is also
/// stored in clear so that a blob opened for the wrong purpose gives a clear
/// [`KeystoreError::WrongPurpose`] rather than a bare integrity failure.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBlob {
    version: u8,
    backend: Backend,
    purpose: String,
    key_id: Vec<u8>,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

/// Checks that a purpose is 1 to 255 printable ASCII characters without spaces.
pub fn validate_purpose(purpose: &str) -> Result<(), KeystoreError> {
    let reason = if purpose.is_empty() {
        "it is empty"
    } else if purpose.len() > usize::from(u8::MAX) {
        "it is longer than 255 bytes"
    } else if !purpose.bytes().all(|b| b.is_ascii_graphic()) {
        "it may only contain printable ASCII characters without spaces"
    } else {
        return Ok(());
    };
    Err(KeystoreError::InvalidPurpose {
        purpose: purpose.to_owned(),
        reason,
    })
}

/// Appends `len(bytes) | bytes`.
fn push_short(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every purpose, key id and nonce is checked to be at most 255 bytes where it enters
    // the crate (`validate_purpose`, `SealedBlob::new`, `from_bytes`), so the saturation
    // is never reached; it only keeps this function total.
    out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(bytes);
}

/// The associated data a backend must authenticate for a blob with these header fields.
///
/// Built from the purpose the caller *asks for* when unsealing, not from the blob, so the
/// binding holds even if the stored header were edited.
pub(crate) fn associated_data(
    version: u8,
    backend: Backend,
    purpose: &str,
    key_id: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + purpose.len() + key_id.len());
    out.extend_from_slice(MAGIC);
    out.push(version);
    out.push(backend.id());
    push_short(&mut out, purpose.as_bytes());
    push_short(&mut out, key_id);
    out
}

fn corrupt(reason: impl Into<String>) -> KeystoreError {
    KeystoreError::CorruptBlob {
        reason: reason.into(),
    }
}

/// Reads the fields of a blob front to back.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], KeystoreError> {
        if self.rest.len() < n {
            return Err(corrupt(format!("truncated in the {what}")));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn byte(&mut self, what: &str) -> Result<u8, KeystoreError> {
        Ok(self.take(1, what)?[0])
    }

    fn short(&mut self, what: &str) -> Result<&'a [u8], KeystoreError> {
        let len = self.byte(what)?;
        self.take(usize::from(len), what)
    }
}

impl SealedBlob {
    /// Assembles a blob from the parts a backend produced, in the current format version.
    ///
    /// `key_id` (1 to 255 bytes) names the key that sealed it; `nonce` (0 to 255 bytes) is
    /// whatever per-blob value the backend needs besides the ciphertext.
    pub fn new(
        backend: Backend,
        purpose: &str,
        key_id: Vec<u8>,
        nonce: Vec<u8>,
        ciphertext: Vec<u8>,
    ) -> Result<Self, KeystoreError> {
        validate_purpose(purpose)?;
        if key_id.is_empty() || key_id.len() > usize::from(u8::MAX) {
            return Err(corrupt(format!(
                "key id of {} bytes (must be 1 to 255)",
                key_id.len()
            )));
        }
        if nonce.len() > usize::from(u8::MAX) {
            return Err(corrupt(format!(
                "nonce of {} bytes (must be at most 255)",
                nonce.len()
            )));
        }
        if ciphertext.is_empty() {
            return Err(corrupt("empty ciphertext"));
        }
        Ok(Self {
            version: BLOB_VERSION,
            backend,
            purpose: purpose.to_owned(),
            key_id,
            nonce,
            ciphertext,
        })
    }

    /// The format version.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The backend that sealed it.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The purpose it was sealed for.
    pub fn purpose(&self) -> &str {
        &self.purpose
    }

    /// The id of the key that sealed it (backend-specific).
    pub fn key_id(&self) -> &[u8] {
        &self.key_id
    }

    /// The per-blob nonce.
    pub fn nonce(&self) -> &[u8] {
        &self.nonce
    }

    /// The ciphertext, including the authentication tag.
    pub fn ciphertext(&self) -> &[u8] {
        &self.ciphertext
    }

    /// Serialises the blob for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = associated_data(self.version, self.backend, &self.purpose, &self.key_id);
        push_short(&mut out, &self.nonce);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Parses a stored blob. Checks structure only; authenticity is checked by
    /// [`Sealer::unseal`](crate::Sealer::unseal).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeystoreError> {
        let mut r = Reader { rest: bytes };
        if r.take(MAGIC.len(), "header").ok() != Some(&MAGIC[..]) {
            return Err(KeystoreError::NotASealedBlob);
        }
        let version = r.byte("version")?;
        if version != BLOB_VERSION {
            return Err(KeystoreError::UnsupportedVersion {
                found: version,
                supported: BLOB_VERSION,
            });
        }
        let backend_id = r.byte("backend id")?;
        let backend = Backend::from_id(backend_id)
            .ok_or_else(|| corrupt(format!("unknown backend id {backend_id}")))?;
        let purpose = r.short("purpose")?;
        let purpose = std::str::from_utf8(purpose)
            .ok()
            .filter(|p| validate_purpose(p).is_ok())
            .ok_or_else(|| corrupt("the purpose is not printable ASCII"))?;
        let key_id = r.short("key id")?;
        if key_id.is_empty() {
            return Err(corrupt("empty key id"));
        }
        let nonce = r.short("nonce")?;
        let ciphertext = r.rest;
        if ciphertext.is_empty() {
            return Err(corrupt("truncated before the ciphertext"));
        }
        Ok(Self {
            version,
            backend,
            purpose: purpose.to_owned(),
            key_id: key_id.to_vec(),
            nonce: nonce.to_vec(),
            ciphertext: ciphertext.to_vec(),
        })
    }
}

/// Lower-case hex, for key ids in messages.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Debug for SealedBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedBlob")
            .field("version", &self.version)
            .field("backend", &self.backend)
            .field("purpose", &self.purpose)
            .field("key_id", &hex(&self.key_id))
            .field("nonce_len", &self.nonce.len())
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SealedBlob {
        SealedBlob::new(
            Backend::Software,
            "ca-key",
            vec![1, 2, 3, 4, 5, 6, 7, 8],
            vec![9; 12],
            vec![0xAB; 40],
        )
        .unwrap()
    }

    #[test]
    fn bytes_round_trip() {
        let blob = sample();
        let bytes = blob.to_bytes();
        assert!(bytes.starts_with(b"MDKS\x01\x01\x06ca-key\x08"));
        assert_eq!(SealedBlob::from_bytes(&bytes).unwrap(), blob);
        let tpm = SealedBlob::new(
            Backend::Tpm,
            "tls-key",
            vec![0x81, 0, 0, 1],
            vec![],
            vec![7; 300],
        )
        .unwrap();
        assert_eq!(SealedBlob::from_bytes(&tpm.to_bytes()).unwrap(), tpm);
    }

    #[test]
    fn every_truncation_of_the_header_is_detected() {
        // Cuts inside the ciphertext are structurally invisible; the AEAD tag catches them.
        let bytes = sample().to_bytes();
        let header_len = bytes.len() - sample().ciphertext().len();
        for cut in 0..=header_len {
            let err = SealedBlob::from_bytes(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(
                    err,
                    KeystoreError::NotASealedBlob | KeystoreError::CorruptBlob { .. }
                ),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn header_problems_have_their_own_errors() {
        let mut bytes = sample().to_bytes();
        assert!(matches!(
            SealedBlob::from_bytes(b"-----BEGIN PRIVATE KEY-----"),
            Err(KeystoreError::NotASealedBlob)
        ));
        bytes[4] = 2;
        assert!(matches!(
            SealedBlob::from_bytes(&bytes),
            Err(KeystoreError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        ));
        bytes[4] = 1;
        bytes[5] = 9;
        let err = SealedBlob::from_bytes(&bytes).unwrap_err();
        assert!(err.to_string().contains("unknown backend id 9"), "{err}");
        bytes[5] = 1;
        bytes[7] = b' ';
        assert!(matches!(
            SealedBlob::from_bytes(&bytes),
            Err(KeystoreError::CorruptBlob { .. })
        ));
    }

    #[test]
    fn purposes_are_validated() {
        for bad in ["", "has space", "tab\t", "ümlaut", &"x".repeat(256)] {
            assert!(
                matches!(
                    validate_purpose(bad),
                    Err(KeystoreError::InvalidPurpose { .. })
                ),
                "{bad:?}"
            );
        }
        for good in [
            "ca-key",
            "pki/scep-ra.key",
            "unlock-token:00008110-001A",
            &"x".repeat(255),
        ] {
            validate_purpose(good).unwrap();
        }
    }

    #[test]
    fn new_rejects_impossible_parts() {
        assert!(SealedBlob::new(Backend::Software, "p", vec![], vec![], vec![1]).is_err());
        assert!(SealedBlob::new(Backend::Software, "p", vec![1; 256], vec![], vec![1]).is_err());
        assert!(SealedBlob::new(Backend::Software, "p", vec![1], vec![0; 256], vec![1]).is_err());
        assert!(SealedBlob::new(Backend::Software, "p", vec![1], vec![], vec![]).is_err());
    }

    #[test]
    fn debug_shows_shape_not_content() {
        let text = format!("{:?}", sample());
        assert!(text.contains("ciphertext_len: 40"), "{text}");
        assert!(!text.contains("171"), "{text}"); // 0xAB
    }
}
