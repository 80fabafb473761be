//! Errors of this crate.

use std::path::PathBuf;

/// A base URL, proxy setting or root certificate source that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The service URL is not `https://host[:port]` (plus a path prefix where one is allowed).
    #[error("the service URL {url:?} is not usable: {reason}")]
    BaseUrl {
        /// The configured URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The proxy URL is not `http://host:port`.
    #[error("the proxy URL {url:?} is not usable: {reason}")]
    ProxyUrl {
        /// The configured URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The proxy user name cannot be sent in a Basic `Proxy-Authorization` header.
    #[error("the proxy credentials contain characters that cannot be sent (user name must not contain ':')")]
    ProxyCredentials,
    /// The trusted roots file could not be read.
    #[error("cannot read the trusted roots file {path}: {reason}")]
    RootsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// PEM text given in the configuration could not be decoded.
    #[error("the configured trusted root certificates are not valid PEM: {reason}")]
    RootsPem {
        /// The decoder's diagnosis.
        reason: String,
    },
    /// No usable root certificate was found.
    #[error("no usable trusted root certificate in {source_name}: the service's TLS certificate could not be verified")]
    NoRoots {
        /// Where the roots were looked for.
        source_name: String,
    },
}

/// Why a TCP connection to a service (directly or through a proxy tunnel) could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed.
    #[error("cannot connect to {target}: {source}")]
    Tcp {
        /// `host:port` that was dialled.
        target: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The proxy did not answer like an HTTP proxy.
    #[error("the proxy at {proxy} answered CONNECT with something that is not HTTP: {reason}")]
    ProxyProtocol {
        /// The proxy's `host:port`.
        proxy: String,
        /// What was wrong.
        reason: String,
    },
    /// The proxy refused to open the tunnel.
    #[error("the proxy at {proxy} refused CONNECT {target} with {status_line:?}{hint}")]
    ProxyRefused {
        /// The proxy's `host:port`.
        proxy: String,
        /// The tunnel target.
        target: String,
        /// The proxy's status line.
        status_line: String,
        /// What to check (starting with `": "`), or empty.
        hint: String,
    },
}
