//! Errors of this crate.
//!
//! [`ApnsError`] is what a caller sees when building a pusher or loading an identity.
//! [`ConnectError`] says why a connection to the push service could not be opened; it only
//! reaches callers as text inside a `PushOutcome::Failed`.

/// A configuration or identity the pusher cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ApnsError {
    /// The base URL, proxy or trusted roots are unusable (shared with every outbound client).
    #[error("push service configuration: {0}")]
    Config(#[from] mdm_net::ConfigError),
    /// The TLS library refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Tls(#[source] rustls::Error),
    /// The push identity has no certificate.
    #[error("the push identity has no certificate")]
    EmptyChain,
    /// The push identity's key cannot be used for TLS.
    #[error("the push certificate's private key cannot be used for TLS: {0}")]
    Key(#[source] rustls::Error),
    /// The push identity's key is not the certificate's.
    #[error("the push certificate's private key does not belong to the certificate")]
    KeyMismatch,
}

/// Why a connection to the push service could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No push certificate is configured.
    #[error("no push certificate is configured: upload the push certificate before devices can be woken")]
    NoIdentity,
    /// TCP connect or the proxy tunnel failed.
    #[error(transparent)]
    Net(#[from] mdm_net::ConnectError),
    /// The TLS handshake failed.
    #[error("TLS handshake with {host} failed: {source}")]
    Tls {
        /// The push service host.
        host: String,
        /// The TLS error.
        source: std::io::Error,
    },
    /// The server did not select HTTP/2.
    #[error("{host} did not agree to HTTP/2 (ALPN h2); the push service only speaks HTTP/2 (is a TLS-inspecting proxy in the way?)")]
    NoHttp2 {
        /// The push service host.
        host: String,
    },
    /// The HTTP/2 preface exchange failed.
    #[error("HTTP/2 handshake with {host} failed: {source}")]
    Http2 {
        /// The push service host.
        host: String,
        /// The HTTP/2 error.
        source: hyper::Error,
    },
    /// The whole connection setup took longer than the connect timeout.
    #[error("connecting to {target} took longer than {timeout_ms} ms")]
    Timeout {
        /// What was being connected to.
        target: String,
        /// The configured limit.
        timeout_ms: u128,
    },
}
