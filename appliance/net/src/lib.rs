//! Outbound HTTPS building blocks shared by the appliance's clients of Apple services (APNs,
//! Apple Business Manager): parsing a service's base URL ([`Endpoint`]), reaching it directly
//! or through an HTTP CONNECT proxy with Basic credentials ([`ProxyConfig`], [`Proxy`],
//! [`dial`]), and loading the root certificates its TLS certificate must chain to
//! ([`Roots`], [`load_roots`]). It also builds the one TLS identity check every side uses, the
//! appliance's HTTPS listener included ([`certified_key`]).
//!
//! It stops at a connected TCP stream and a root store: TLS, HTTP and retries belong to each
//! client, whose needs differ (HTTP/2 with a client certificate for APNs, HTTP/1.1 for ABM).
//!
//! What it cannot do yet:
//! - HTTPS proxies (TLS to the proxy itself) and proxy authentication other than Basic;
//! - proxy auto-configuration, `NO_PROXY` lists or the `HTTPS_PROXY` environment variable:
//!   the proxy is whatever the daemon's configuration says;
//! - a timeout of its own: callers bound [`dial`] with theirs.

mod dial;
mod endpoint;
mod error;
mod identity;
mod proxy;
mod roots;

pub use dial::dial;
pub use endpoint::Endpoint;
pub use error::{ConfigError, ConnectError};
pub use identity::{certified_key, IdentityError};
pub use proxy::{Proxy, ProxyConfig, ProxyCredentials};
pub use roots::{crypto_provider, load_roots, Roots, SYSTEM_CA_BUNDLE};

/// `host:port`, with IPv6 hosts in brackets.
pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
