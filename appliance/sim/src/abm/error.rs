//! The ABM simulator's error type.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::error::CryptoError;

/// Failures of the ABM simulator and of its control methods.
#[derive(Debug, thiserror::Error)]
pub enum AbmSimError {
    /// A control method named an MDM server the simulator does not have.
    #[error("the ABM simulator has no MDM server {0}; list them with servers()")]
    UnknownServer(String),
    /// A control method named a serial number the simulator does not know.
    #[error("the ABM simulator knows no device with serial number {0:?}")]
    UnknownDevice(String),
    /// The certificate offered for a server token cannot receive one.
    #[error("the certificate cannot receive a server token: {0}; upload the RSA public key certificate the MDM server generated")]
    Recipient(String),
    /// A server token file could not be read back.
    #[error("the server token is not in the expected format: {0}")]
    TokenFormat(String),
    /// Key, certificate or CMS processing failed.
    #[error("ABM simulator: {0}")]
    Crypto(#[from] CryptoError),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed; the simulator cannot mint secrets")]
    Random,
    /// The listening socket could not be opened.
    #[error("the ABM simulator cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// rustls refused the TLS server configuration.
    #[error("the ABM simulator's TLS configuration is invalid: {0}")]
    Tls(#[from] rustls::Error),
    /// Writing a state file failed.
    #[error("the ABM simulator cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}
