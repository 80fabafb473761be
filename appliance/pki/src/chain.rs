//! Certificate chain verification.

use std::time::SystemTime;

use crate::cert::Certificate;
use crate::error::{ChainError, PkiError};
use crate::key::verify_signature;
use crate::oid;

/// Extensions this verifier understands well enough to accept when marked critical.
/// Anything else critical (name constraints, policy constraints, ...) makes the certificate
/// unacceptable, as RFC 5280 §4.2 requires of a verifier that does not process it.
const UNDERSTOOD_CRITICAL: [const_oid::ObjectIdentifier; 6] = [
    oid::EXT_BASIC_CONSTRAINTS,
    oid::EXT_KEY_USAGE,
    oid::EXT_EXTENDED_KEY_USAGE,
    oid::EXT_SUBJECT_ALT_NAME,
    oid::EXT_SUBJECT_KEY_ID,
    oid::EXT_AUTHORITY_KEY_ID,
];

/// Chain check: leaf -> (intermediates...) -> one of roots; signatures, validity at `at`,
/// CA basicConstraints on issuers. Not a full RFC 5280 path builder.
///
/// What is checked: every certificate on the path (root included) is valid at `at`; each
/// issuer's subject equals the issued certificate's issuer name and its key verifies the
/// signature; every issuer has basicConstraints cA = TRUE, keyCertSign if it has a keyUsage
/// extension, and a pathLenConstraint not exceeded by the intermediates below it; no
/// certificate carries a critical extension other than basicConstraints, keyUsage,
/// extKeyUsage, subjectAltName and the key identifiers. A leaf that is itself one of the
/// roots is accepted.
///
/// What is not: revocation (no CRL or OCSP), certificate policies, name constraints (a
/// certificate marking them critical is refused), the leaf's extKeyUsage (the caller knows
/// the purpose), and backtracking: when several candidates could issue a certificate, the
/// first whose signature verifies is taken. Roots must be v3 CA certificates.
pub fn verify_chain(
    leaf: &Certificate,
    intermediates: &[Certificate],
    roots: &[Certificate],
    at: SystemTime,
) -> Result<(), PkiError> {
    check_validity(leaf, at)?;
    check_critical_extensions(leaf)?;
    if roots.iter().any(|r| r == leaf) {
        return Ok(());
    }

    let mut used = vec![false; intermediates.len()];
    let mut current = leaf;
    // Intermediate CAs between the current issuer candidate and the leaf.
    let mut cas_below = 0usize;

    for _ in 0..=intermediates.len() {
        let mut signature_failure = false;

        for root in roots {
            match issued_by(current, root) {
                Issued::Yes => {
                    check_issuer(root, cas_below, at)?;
                    return Ok(());
                }
                Issued::BadSignature => signature_failure = true,
                Issued::No => {}
            }
        }

        let mut next = None;
        for (i, candidate) in intermediates.iter().enumerate() {
            if used[i] {
                continue;
            }
            match issued_by(current, candidate) {
                Issued::Yes => {
                    next = Some(i);
                    break;
                }
                Issued::BadSignature => signature_failure = true,
                Issued::No => {}
            }
        }
        let Some(i) = next else {
            if signature_failure {
                return Err(ChainError::BadSignature {
                    subject: current.subject(),
                }
                .into());
            }
            return Err(ChainError::UnknownIssuer {
                subject: current.subject(),
                issuer: current.issuer(),
            }
            .into());
        };
        used[i] = true;
        let issuer = &intermediates[i];
        check_issuer(issuer, cas_below, at)?;
        current = issuer;
        cas_below += 1;
    }
    Err(ChainError::TooLong(intermediates.len() + 2).into())
}

enum Issued {
    Yes,
    No,
    BadSignature,
}

fn issued_by(child: &Certificate, issuer: &Certificate) -> Issued {
    if child.inner().tbs_certificate.issuer != issuer.inner().tbs_certificate.subject {
        return Issued::No;
    }
    // Key identifiers only rule candidates out; their absence proves nothing.
    if let (Some(aki), Some(ski)) = (
        child.authority_key_identifier(),
        issuer.subject_key_identifier(),
    ) {
        if aki != ski {
            return Issued::No;
        }
    }
    let outer_alg = &child.inner().signature_algorithm;
    if outer_alg != &child.inner().tbs_certificate.signature {
        return Issued::BadSignature;
    }
    let Some(sig) = child.inner().signature.as_bytes() else {
        return Issued::BadSignature;
    };
    match verify_signature(
        &issuer.public_key_der(),
        outer_alg,
        None,
        child.tbs_der(),
        sig,
    ) {
        Ok(()) => Issued::Yes,
        Err(_) => Issued::BadSignature,
    }
}

fn check_issuer(issuer: &Certificate, cas_below: usize, at: SystemTime) -> Result<(), PkiError> {
    check_validity(issuer, at)?;
    check_critical_extensions(issuer)?;
    let may_sign_certs = issuer.key_usage().is_none_or(|ku| ku.key_cert_sign);
    if !issuer.is_ca() || !may_sign_certs {
        return Err(ChainError::NotCa {
            subject: issuer.subject(),
        }
        .into());
    }
    if let Some(allowed) = issuer.path_len_constraint() {
        if cas_below > usize::from(allowed) {
            return Err(ChainError::PathLength {
                subject: issuer.subject(),
                allowed,
                found: cas_below,
            }
            .into());
        }
    }
    Ok(())
}

fn check_validity(cert: &Certificate, at: SystemTime) -> Result<(), PkiError> {
    if cert.is_valid_at(at) {
        return Ok(());
    }
    let validity = &cert.inner().tbs_certificate.validity;
    Err(ChainError::OutsideValidity {
        subject: cert.subject(),
        not_before: validity.not_before.to_string(),
        not_after: validity.not_after.to_string(),
    }
    .into())
}

fn check_critical_extensions(cert: &Certificate) -> Result<(), PkiError> {
    let extensions = cert.inner().tbs_certificate.extensions.iter().flatten();
    for ext in extensions {
        if ext.critical && !UNDERSTOOD_CRITICAL.contains(&ext.extn_id) {
            return Err(ChainError::UnsupportedCriticalExtension {
                subject: cert.subject(),
                oid: ext.extn_id.to_string(),
            }
            .into());
        }
    }
    Ok(())
}
