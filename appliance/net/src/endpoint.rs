//! [`Endpoint`]: where an HTTPS service lives, parsed once from its base URL.

use rustls_pki_types::ServerName;

use crate::error::ConfigError;
use crate::join_host_port;

/// An HTTPS service's address, parsed from a base URL such as `https://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    host: String,
    port: u16,
    authority: String,
    request_authority: String,
    path_prefix: String,
    server_name: ServerName<'static>,
}

impl Endpoint {
    /// Parses `https://host[:port]` (a trailing `/` is accepted). A path, a query or user
    /// information is refused: for services whose paths are fixed (APNs).
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let endpoint = Self::parse_inner(url)?;
        if !endpoint.path_prefix.is_empty() {
            return Err(bad_url(
                url,
                "a path or query is not allowed; give only https://host[:port]",
            ));
        }
        Ok(endpoint)
    }

    /// Parses `https://host[:port][/prefix]`: like [`Endpoint::parse`], but a path prefix
    /// is kept and put in front of every request path (for services reached through a
    /// gateway or a simulator mounted below a path). Trailing slashes are dropped.
    pub fn parse_with_prefix(url: &str) -> Result<Self, ConfigError> {
        Self::parse_inner(url)
    }

    fn parse_inner(url: &str) -> Result<Self, ConfigError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad_url(url, &e.to_string()))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad_url(url, "the scheme must be https"));
        }
        let authority = uri.authority().ok_or_else(|| bad_url(url, "no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad_url(url, "user information is not allowed"));
        }
        if uri.query().is_some() {
            return Err(bad_url(url, "a query is not allowed"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad_url(url, "no host"));
        }
        let port = authority.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| bad_url(url, "the host is not a valid name"))?;
        // The Host header carries the port only when it is not the scheme's default.
        let request_authority = if port == 443 {
            authority.host().to_string()
        } else {
            join_host_port(&host, port)
        };
        Ok(Endpoint {
            authority: join_host_port(&host, port),
            request_authority,
            path_prefix: uri.path().trim_end_matches('/').to_string(),
            host,
            port,
            server_name,
        })
    }

    /// Host name or IP address, without IPv6 brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port (443 unless the URL names another).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` as it goes into a TCP dial and a proxy's `CONNECT`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The `Host` header (HTTP/1.1) or `:authority` (HTTP/2): the host, with the port only
    /// when it is not 443.
    pub fn request_authority(&self) -> &str {
        &self.request_authority
    }

    /// The path prefix without a trailing slash: empty, or starting with `/`.
    pub fn path_prefix(&self) -> &str {
        &self.path_prefix
    }

    /// The name the server's TLS certificate must carry.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// The request target for `path` (which starts with `/`): the prefix followed by it.
    pub fn path(&self, path: &str) -> String {
        format!("{}{path}", self.path_prefix)
    }
}

fn bad_url(url: &str, reason: &str) -> ConfigError {
    ConfigError::BaseUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let e = Endpoint::parse("https://api.push.apple.com").unwrap();
        assert_eq!(e.authority(), "api.push.apple.com:443");
        assert_eq!(e.request_authority(), "api.push.apple.com");
        assert_eq!(e.host(), "api.push.apple.com");
        assert_eq!(e.port(), 443);
        assert_eq!(e.path("/3/device/ab"), "/3/device/ab");
        let e = Endpoint::parse("https://127.0.0.1:8443/").unwrap();
        assert_eq!(e.authority(), "127.0.0.1:8443");
        assert_eq!(e.request_authority(), "127.0.0.1:8443");
        assert!(matches!(e.server_name(), ServerName::IpAddress(_)));
        let e = Endpoint::parse("https://[::1]:9").unwrap();
        assert_eq!(e.authority(), "[::1]:9");
        assert_eq!(e.request_authority(), "[::1]:9");
        let e = Endpoint::parse("https://[::1]").unwrap();
        assert_eq!(e.request_authority(), "[::1]");
        assert_eq!(e.host(), "::1");
        for bad in [
            "http://api.push.apple.com",
            "https://api.push.apple.com/3/device",
            "https://u:p@api.push.apple.com",
            "https://api.push.apple.com?x=1",
            "api.push.apple.com",
            "",
        ] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(matches!(err, ConfigError::BaseUrl { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn prefixes() {
        let e = Endpoint::parse_with_prefix("https://mdmenrollment.apple.com").unwrap();
        assert_eq!(e.path_prefix(), "");
        assert_eq!(e.path("/session"), "/session");
        let e = Endpoint::parse_with_prefix("https://sim.lan:9443/abm/v1/").unwrap();
        assert_eq!(e.path_prefix(), "/abm/v1");
        assert_eq!(e.path("/session"), "/abm/v1/session");
        assert_eq!(e.authority(), "sim.lan:9443");
        for bad in [
            "http://sim.lan/abm",
            "https://sim.lan/abm?x=1",
            "https://u@sim.lan/abm",
        ] {
            assert!(Endpoint::parse_with_prefix(bad).is_err(), "{bad}");
        }
    }
}
