//! The crate's error type.

use std::time::SystemTime;

/// Everything that can go wrong in this crate.
///
/// Messages name the object and the reason; they never carry key material, plaintext or
/// decrypted content keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Key generation in aws-lc failed.
    #[error("the crypto library could not generate a new {0} key")]
    KeyGeneration(&'static str),

    /// A private key could not be parsed or is of an unsupported kind.
    #[error("the private key was rejected: {0}")]
    InvalidPrivateKey(String),

    /// A public key (SubjectPublicKeyInfo) could not be parsed or is unsupported.
    #[error("the public key was rejected: {0}")]
    InvalidPublicKey(String),

    /// The operation needs an RSA key and was given another kind.
    #[error("this operation needs an RSA key, the key given is {0}")]
    NotRsa(&'static str),

    /// Signing failed inside the crypto library.
    #[error("the crypto library failed to produce a signature")]
    Signing,

    /// A signature did not verify.
    #[error("the signature does not verify against the signer's public key")]
    BadSignature,

    /// An algorithm identifier names something this crate does not implement.
    #[error("algorithm {oid} is not supported for {purpose}")]
    UnsupportedAlgorithm {
        /// Dotted OID of the algorithm.
        oid: String,
        /// What the algorithm was meant to be used for.
        purpose: &'static str,
    },

    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,

    /// Strict DER decoding or encoding failed.
    #[error("malformed ASN.1 in {context}: {source}")]
    Asn1 {
        /// The structure being decoded or encoded.
        context: &'static str,
        /// The decoder's diagnosis.
        source: der::Error,
    },

    /// The BER normaliser could not make sense of its input.
    #[error("malformed BER at byte {offset}: {reason}")]
    Ber {
        /// Offset of the offending element in the input.
        offset: usize,
        /// What is wrong there.
        reason: &'static str,
    },

    /// A structure decoded but its content violates what the crate requires.
    #[error("invalid {context}: {reason}")]
    Invalid {
        /// The structure concerned.
        context: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// PEM text could not be decoded.
    #[error("the PEM text could not be decoded: {0}")]
    Pem(String),

    /// A time could not be represented in a certificate.
    #[error("the time {0:?} cannot be encoded in a certificate (before 1970 or after 9999)")]
    TimeOutOfRange(SystemTime),

    /// Chain verification failed.
    #[error("certificate chain rejected: {0}")]
    Chain(#[from] ChainError),

    /// A CMS message is well-formed but cannot be accepted.
    #[error("CMS message rejected: {0}")]
    Cms(String),

    /// The messageDigest signed attribute does not match the content.
    #[error("the content does not match the messageDigest the signer signed")]
    ContentDigestMismatch,

    /// No RecipientInfo in an EnvelopedData is addressed to the given certificate.
    #[error("the enveloped data is not addressed to the given recipient certificate")]
    NoMatchingRecipient,

    /// Key transport or content decryption failed. Deliberately vague: telling padding errors
    /// apart would turn the RSA PKCS#1 v1.5 key transport into a decryption oracle.
    #[error("the enveloped data could not be decrypted (wrong key or corrupted message)")]
    Decryption,

    /// The private key could not be used at all: the keystore or TPM holding it failed or
    /// cannot be reached, or its key blob is unusable there. Unlike [`PkiError::Decryption`]
    /// this says nothing about the data, so it is reported as it is.
    #[error("the private key could not be used: {0}")]
    KeyUnavailable(String),

    /// Encryption failed inside the crypto library.
    #[error("the crypto library failed to encrypt")]
    Encryption,
}

/// Why [`crate::verify_chain`] rejected a chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// No root or intermediate issued and signed the certificate.
    #[error("no trusted issuer found for \"{subject}\" (issuer \"{issuer}\")")]
    UnknownIssuer {
        /// Subject of the certificate whose issuer is missing.
        subject: String,
        /// The issuer name it claims.
        issuer: String,
    },
    /// A candidate issuer has the right name but its key does not verify the signature: the
    /// certificate was altered or forged.
    #[error("the signature on \"{subject}\" does not verify with its issuer's key")]
    BadSignature {
        /// Subject of the certificate whose signature failed.
        subject: String,
    },
    /// The certificate is not valid at the verification time.
    #[error(
        "\"{subject}\" is not valid at the verification time (valid {not_before} to {not_after})"
    )]
    OutsideValidity {
        /// Subject of the certificate.
        subject: String,
        /// Its notBefore, RFC 3339-ish.
        not_before: String,
        /// Its notAfter, RFC 3339-ish.
        not_after: String,
    },
    /// An issuing certificate is not a CA (basicConstraints cA missing or false, or keyUsage
    /// without keyCertSign).
    #[error("\"{subject}\" issued a certificate but is not allowed to act as a CA")]
    NotCa {
        /// Subject of the issuer.
        subject: String,
    },
    /// A CA's pathLenConstraint is exceeded.
    #[error("\"{subject}\" allows {allowed} intermediate CA(s) below it, the chain has {found}")]
    PathLength {
        /// Subject of the constraining CA.
        subject: String,
        /// Its pathLenConstraint.
        allowed: u8,
        /// Intermediates actually below it.
        found: usize,
    },
    /// A certificate carries a critical extension this verifier does not process.
    #[error("\"{subject}\" carries unsupported critical extension {oid}")]
    UnsupportedCriticalExtension {
        /// Subject of the certificate.
        subject: String,
        /// Dotted OID of the extension.
        oid: String,
    },
    /// The chain is longer than the verifier allows.
    #[error("the chain is longer than {0} certificates")]
    TooLong(usize),
}

impl PkiError {
    pub(crate) fn asn1(context: &'static str) -> impl FnOnce(der::Error) -> PkiError {
        move |source| PkiError::Asn1 { context, source }
    }

    pub(crate) fn invalid(context: &'static str, reason: impl Into<String>) -> PkiError {
        PkiError::Invalid {
            context,
            reason: reason.into(),
        }
    }
}
