//! Errors of the MDM service. They know nothing of HTTP: the web layer maps [`ErrorKind`] to a
//! status code in one place. Every error carries a stable [`code`](ServiceError::code) that
//! operators can look up in `docs/reference/errors.md`, and a sentence saying what happened.

use crate::ports::StoreError;

/// The class of a failure, which decides how it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names something invalid.
    BadRequest,
    /// The caller did not prove who it is.
    Unauthorized,
    /// The caller is known but not allowed to do this.
    Forbidden,
    NotFound,
    /// The request conflicts with the current state (e.g. a push topic change).
    Conflict,
    /// The request is refused for good (a declined user channel).
    Gone,
    /// The body is larger than the endpoint accepts.
    TooLarge,
    /// The device must update its OS before it may enroll.
    SoftwareUpdateRequired,
    /// A dependency (storage) is unavailable; retrying later may succeed.
    Unavailable,
    /// A bug or an unexpected state on the appliance.
    Internal,
}

/// A service failure with a stable code and an operator-facing sentence.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    pub kind: ErrorKind,
    /// Stable identifier, e.g. `IDENTITY_MISMATCH`.
    pub code: &'static str,
    pub message: String,
    /// A machine-readable body to send instead of the message (the software update demand).
    pub body: Option<String>,
}

impl ServiceError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        ServiceError {
            kind,
            code,
            message: message.into(),
            body: None,
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, code, message)
    }
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, code, message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, message)
    }
    pub fn internal(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, code, message)
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => ServiceError::new(
                ErrorKind::Unavailable,
                "STORE_CLOSED",
                "the appliance is shutting down; retry shortly",
            ),
            StoreError::Conflict(m) => ServiceError::conflict("STORE_CONFLICT", m),
            StoreError::Corrupt(m) => ServiceError::internal(
                "STORE_CORRUPT",
                format!("{m}; restore the database from a backup or contact support"),
            ),
            StoreError::Backend(m) => ServiceError::new(
                ErrorKind::Unavailable,
                "STORE_UNAVAILABLE",
                format!(
                    "the database could not be used: {m}; check disk space and the data directory"
                ),
            ),
        }
    }
}

/// Result alias for the service.
pub type ServiceResult<T> = Result<T, ServiceError>;
