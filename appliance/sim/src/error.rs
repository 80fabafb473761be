//! Error types, one per concern. None of them knows about the server's internals: they
//! describe what a device would observe.

use const_oid::ObjectIdentifier;

/// Failures of key handling, ASN.1 encoding, CMS and X.509 processing.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Key generation failed in aws-lc.
    #[error("generating a key pair failed")]
    KeyGeneration,
    /// aws-lc refused a key.
    #[error("the private or public key was rejected: {0}")]
    KeyRejected(String),
    /// A PEM block had another label than the one expected.
    #[error("unexpected PEM label {0:?}")]
    UnexpectedPemLabel(String),
    /// An operation needs an RSA key but got something else.
    #[error("this operation needs an RSA key")]
    NotAnRsaKey,
    /// The key type or curve is not one the simulator handles.
    #[error("unsupported key: {0}")]
    UnsupportedKey(&'static str),
    /// An algorithm OID the simulator does not implement.
    #[error("unsupported algorithm {0}")]
    UnsupportedAlgorithm(ObjectIdentifier),
    /// Signing failed in aws-lc.
    #[error("signing failed")]
    Signing,
    /// A signature did not verify.
    #[error("the signature does not verify")]
    BadSignature,
    /// RSA key transport or symmetric decryption failed.
    #[error("decryption failed")]
    Decryption,
    /// RSA key transport or symmetric encryption failed.
    #[error("encryption failed")]
    Encryption,
    /// DER encoding or decoding failed.
    #[error("ASN.1 DER error: {0}")]
    Der(#[from] der::Error),
    /// A CMS structure was well-formed DER but not what the protocol requires.
    #[error("malformed CMS message: {0}")]
    MalformedCms(&'static str),
    /// A CMS `messageDigest` attribute does not match the content.
    #[error("the CMS messageDigest attribute does not match the signed content")]
    DigestMismatch,
    /// The signer named by a `SignerInfo` is not among the certificates available.
    #[error("the signer certificate is not present")]
    SignerCertificateMissing,
    /// A certificate chain could not be built or verified up to a trusted certificate.
    #[error("the certificate chain does not lead to a trusted certificate: {0}")]
    UntrustedChain(&'static str),
    /// A certificate is outside its validity period.
    #[error("a certificate in the chain is expired or not yet valid")]
    CertificateExpired,
    /// No `KeyTransRecipientInfo` in an envelope was addressed to our key.
    #[error("the envelope is not addressed to this key")]
    NotARecipient,
    /// An invalid attribute or name component.
    #[error("invalid name or attribute: {0}")]
    InvalidName(String),
    /// System clock before 1970 or beyond what X.509 can represent.
    #[error("the system time cannot be represented in a certificate")]
    Time,
}

/// Failures of the small HTTPS client.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL could not be parsed or uses an unsupported scheme.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The offending URL.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No trust anchor was configured for an https URL.
    #[error("no CA certificate is configured to verify the server's TLS certificate")]
    NoTrustAnchors,
    /// A TLS configuration could not be built (bad CA or client identity).
    #[error("TLS configuration failed: {0}")]
    TlsConfig(#[from] rustls::Error),
    /// A CA certificate could not be added to the trust store.
    #[error("a CA certificate could not be used as a trust anchor")]
    BadTrustAnchor,
    /// Connecting or the TLS handshake failed.
    #[error("connecting to {authority} failed: {error}")]
    Connect {
        /// host:port.
        authority: String,
        /// The I/O error (TLS alerts surface here too).
        error: std::io::Error,
    },
    /// The HTTP exchange failed (connection reset, malformed response, ...).
    #[error("HTTP exchange failed: {0}")]
    Hyper(#[from] hyper::Error),
    /// A request could not be built (bad header value and similar).
    #[error("building the HTTP request failed: {0}")]
    Request(#[from] http::Error),
    /// The response body exceeded the size limit.
    #[error("the response body is larger than {0} bytes")]
    BodyTooLarge(usize),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// An HTTP answer with a status the device did not expect, kept whole so tests can look
/// at it (for example the 403 `com.apple.softwareupdate.required` JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnexpectedStatus {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The response body.
    pub body: Vec<u8>,
}

impl UnexpectedStatus {
    /// The body as (lossy) UTF-8, for messages.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// If this is Apple's documented 403 demanding an OS update
    /// (`{"code":"com.apple.softwareupdate.required","details":{"OSVersion":..}}`), the
    /// OS version demanded (empty when the details omit it).
    pub fn software_update_required(&self) -> Option<String> {
        if self.status != 403 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        if json.get("code")?.as_str()? != "com.apple.softwareupdate.required" {
            return None;
        }
        Some(
            json.get("details")
                .and_then(|d| d.get("OSVersion"))
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
        )
    }
}

impl std::fmt::Display for UnexpectedStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.body_text();
        let shown: String = text.chars().take(200).collect();
        write!(f, "HTTP {} ({shown})", self.status)
    }
}

/// Failures while installing an enrollment (or any configuration) profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The signed profile failed CMS parsing or signature verification.
    #[error("the profile signature is invalid: {0}")]
    Signature(#[source] CryptoError),
    /// The profile was not signed but a signature is required.
    #[error("the profile is not signed")]
    Unsigned,
    /// The payload is not a property list.
    #[error("the profile is not a valid property list: {0}")]
    Plist(#[from] plist::Error),
    /// A required key is missing or has the wrong type.
    #[error("profile key {key} is missing or has the wrong type")]
    MissingKey {
        /// The key path, e.g. `com.apple.mdm/ServerURL`.
        key: String,
    },
    /// A certificate payload could not be decoded.
    #[error("the certificate in payload {0} is not valid DER")]
    BadCertificate(String),
    /// The profile has no `com.apple.mdm` payload.
    #[error("the profile has no com.apple.mdm payload")]
    NoMdmPayload,
    /// The MDM payload's `IdentityCertificateUUID` names no SCEP payload in the profile.
    #[error("IdentityCertificateUUID {0} does not name a SCEP payload in the profile")]
    IdentityNotFound(String),
}

/// Failures of the SCEP client.
#[derive(Debug, thiserror::Error)]
pub enum ScepError {
    /// Transport-level failure.
    #[error("SCEP transport failed: {0}")]
    Http(#[from] HttpError),
    /// The server answered with an unexpected HTTP status.
    #[error("SCEP server answered {0}")]
    Status(UnexpectedStatus),
    /// Crypto or ASN.1 failure while building or reading a message.
    #[error("SCEP message processing failed: {0}")]
    Crypto(#[from] CryptoError),
    /// GetCACert returned no certificate we can encrypt to.
    #[error("GetCACert returned no certificate usable for key encipherment")]
    NoRecipientCertificate,
    /// The CertRep was signed by a certificate that GetCACert did not return.
    #[error("the CertRep is not signed by the SCEP CA or RA")]
    UnknownResponder,
    /// A required SCEP attribute is missing or malformed.
    #[error("the CertRep attribute {0} is missing or malformed")]
    BadAttribute(&'static str),
    /// The CertRep's messageType is not CertRep (3).
    #[error("expected a CertRep (messageType 3), got messageType {0}")]
    NotCertRep(String),
    /// The CertRep's transactionID differs from ours.
    #[error("the CertRep transactionID does not match the request")]
    TransactionIdMismatch,
    /// The CertRep's recipientNonce differs from our senderNonce: a replay or a mix-up.
    #[error("the CertRep recipientNonce does not match our senderNonce")]
    NonceMismatch,
    /// pkiStatus FAILURE with its failInfo.
    #[error("the SCEP server rejected the request: {0}")]
    Rejected(FailInfo),
    /// pkiStatus PENDING: manual approval needed. Polling is not implemented.
    #[error("the SCEP request is pending manual approval (transactionID {transaction_id})")]
    Pending {
        /// The transaction to poll for.
        transaction_id: String,
    },
    /// The success CertRep did not contain a certificate for our key.
    #[error("the CertRep does not contain a certificate for the requested key")]
    NoIssuedCertificate,
}

/// SCEP `failInfo` values (RFC 8894 §3.2.1.4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailInfo {
    /// 0: unrecognized or unsupported algorithm.
    BadAlg,
    /// 1: integrity check (signature verification) failed.
    BadMessageCheck,
    /// 2: transaction not permitted or supported (for example a wrong challenge).
    BadRequest,
    /// 3: messageTime not close enough to the system time.
    BadTime,
    /// 4: no certificate could be identified matching the criteria.
    BadCertId,
    /// A value outside the RFC's list, kept verbatim.
    Other(u32),
    /// FAILURE without a failInfo attribute.
    Unspecified,
}

impl std::fmt::Display for FailInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadAlg => f.write_str("badAlg (unsupported algorithm)"),
            Self::BadMessageCheck => f.write_str("badMessageCheck (signature check failed)"),
            Self::BadRequest => f.write_str("badRequest (request not permitted)"),
            Self::BadTime => f.write_str("badTime (clock skew)"),
            Self::BadCertId => f.write_str("badCertId (no matching certificate)"),
            Self::Other(v) => write!(f, "failInfo {v}"),
            Self::Unspecified => f.write_str("no failInfo given"),
        }
    }
}

/// Failures of the Apple stand-in CA.
#[derive(Debug, thiserror::Error)]
pub enum AppleError {
    /// Crypto failure.
    #[error("Apple stand-in CA: {0}")]
    Crypto(#[from] CryptoError),
    /// Reading or writing the PEM files failed.
    #[error("Apple stand-in CA file {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Failures of the simulated device's protocol flows.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Transport-level failure.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The server answered with an HTTP status the device treats as failure.
    #[error("server answered {0}")]
    Status(UnexpectedStatus),
    /// Crypto failure.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The Apple stand-in failed to issue the device identity.
    #[error(transparent)]
    Apple(#[from] AppleError),
    /// Profile installation failed.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// SCEP enrollment failed.
    #[error(transparent)]
    Scep(#[from] ScepError),
    /// A plist could not be written or read.
    #[error("property list error: {0}")]
    Plist(#[from] plist::Error),
    /// The operation needs an installed enrollment profile.
    #[error("no enrollment profile is installed")]
    NotEnrolled,
    /// The page has no form to submit.
    #[error("the page shown has no form")]
    NoForm,
    /// The operation needs the SCEP-issued MDM identity.
    #[error("the device has no MDM identity yet (run SCEP first)")]
    NoIdentity,
    /// The server's answer was not the plist or JSON the protocol specifies.
    #[error("the server's answer is malformed: {0}")]
    MalformedResponse(String),
    /// The command loop hit its safety limit (a server re-sending the same command?).
    #[error("the server sent more than {0} commands in one session")]
    TooManyCommands(usize),
    /// The device was erased by an EraseDevice command and has no enrollment left.
    #[error("the device has been erased")]
    Erased,
}

impl DeviceError {
    /// The unexpected HTTP answer behind this error, if that is what it is.
    pub fn status(&self) -> Option<&UnexpectedStatus> {
        match self {
            Self::Status(s) | Self::Scep(ScepError::Status(s)) => Some(s),
            _ => None,
        }
    }
}
