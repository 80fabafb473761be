//! The appliance's PKI toolkit: keys, certificates, CSRs, CMS SignedData/EnvelopedData and
//! the server side of SCEP (RFC 8894).
//!
//! It is pure: no I/O, no async, no clock other than `SystemTime::now()` for signing times and
//! default validity. Callers persist keys (sealed) and certificates themselves.
//!
//! # Design
//!
//! - The toolkit issues from RSA-2048 or ECDSA P-256 keys; the appliance uses an **RSA-2048**
//!   CA (`docs/design/pki.md`): SCEP clients encrypt the CSR with RSA PKCS#1 v1.5 key
//!   transport, and some encrypt to *every* certificate `GetCACert` returns, so the CA and the
//!   SCEP RA must both be RSA. TLS server keys can be P-256 (cheap handshakes).
//! - Device keys are **RSA-2048**: that is what Apple's SCEP client generates.
//! - One crypto backend, aws-lc-rs, signs, verifies, generates keys and does RSA and AES;
//!   3DES (only ever needed to *read* legacy messages or answer legacy SCEP clients) comes
//!   from RustCrypto's `des` + `cbc`. ASN.1 structures are RustCrypto's `der`, `x509-cert`,
//!   `cms` and `spki` types, encoded and decoded here; their builders are not used.
//! - Signed bytes are never re-encoded before verification: TBSCertificate, CSR info and
//!   CMS signed attributes are cut out of the input as received.
//! - BER from streaming encoders is normalised to DER first ([`ber_to_der`]).
//! - Certificates are signed and enveloped data opened through [`PrivateKeyOps`], so a key
//!   that never leaves a keystore or TPM serves as well as a [`PrivateKey`] in memory.
//!
//! # Not (yet) supported
//!
//! - RSA keys other than 2048 bits and EC curves other than P-256 as *private* keys
//!   (verification also accepts larger RSA keys and P-384).
//! - RSA-PSS, OAEP key transport, key-agreement/KEK/password recipients, authenticated
//!   enveloped data, CRLs and OCSP.
//! - [`verify_chain`] is a straightforward chain walk, not an RFC 5280 path builder: no
//!   revocation, policies or name constraints (see its documentation).
//! - CMS signing ([`cms::sign`]) and the SCEP responder still take a [`PrivateKey`] in
//!   memory, not any [`PrivateKeyOps`].
//! - SCEP GetNextCACert; CertPoll, GetCert and GetCRL are parsed but answering them beyond
//!   PENDING/FAILURE is left to the caller.

mod asn1;
mod ber;
mod cert;
mod chain;
pub mod cms;
mod csr;
mod error;
mod key;
pub mod oid;
pub mod scep;

pub use ber::ber_to_der;
pub use cert::{issue, self_signed, Certificate, CertificateParams, KeyUsages, Name};
pub use chain::verify_chain;
pub use csr::CertificationRequest;
pub use error::{ChainError, PkiError};
pub use key::{verify_signature, KeyAlgorithm, PrivateKey, PrivateKeyOps};

/// PEM armour (RFC 7468) with 64-character lines and LF line endings.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
