//! HTTP CONNECT proxies: configuration, parsing, and opening a tunnel.

use std::fmt;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use crate::error::{ConfigError, ConnectError};
use crate::join_host_port;

/// Longest proxy answer head accepted; real ones are a few hundred bytes.
const MAX_PROXY_HEAD: usize = 8 * 1024;

/// An HTTP proxy reached with `CONNECT`, as configured.
#[derive(Clone)]
pub struct ProxyConfig {
    /// `http://host:port` (a trailing `/` is accepted). TLS to the proxy itself is not
    /// supported: the tunnel carries TLS to Apple end to end anyway.
    pub url: String,
    /// Sent as `Proxy-Authorization: Basic ...` when set.
    pub basic_auth: Option<ProxyCredentials>,
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("url", &self.url)
            .field("basic_auth", &self.basic_auth)
            .finish()
    }
}

/// Proxy user name and password.
#[derive(Clone)]
pub struct ProxyCredentials {
    /// The user name.
    pub username: String,
    /// The password, wiped from memory when dropped.
    pub password: Zeroizing<String>,
}

impl fmt::Debug for ProxyCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A parsed [`ProxyConfig`], ready for [`crate::dial`].
///
/// `Debug` shows the address and whether credentials are set, never the credentials.
#[derive(Clone)]
pub struct Proxy {
    addr: String,
    /// The full `Proxy-Authorization` value.
    authorization: Option<Zeroizing<String>>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("authenticated", &self.authorization.is_some())
            .finish()
    }
}

impl Proxy {
    /// Checks `config` and prepares its `Proxy-Authorization` value.
    pub fn parse(config: &ProxyConfig) -> Result<Self, ConfigError> {
        let bad = |reason: &str| ConfigError::ProxyUrl {
            url: config.url.clone(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = config
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad(
                "the scheme must be http (the tunnel itself carries TLS)",
            ));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("put credentials in basic_auth, not in the URL"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad(
                "a path or query is not allowed; give only http://host:port",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = authority.port_u16().unwrap_or(80);
        let authorization = match &config.basic_auth {
            None => None,
            Some(creds) => {
                // RFC 7617: the user-id cannot contain a colon, the first one separates it
                // from the password.
                if creds.username.contains(':') {
                    return Err(ConfigError::ProxyCredentials);
                }
                let joined = Zeroizing::new(format!("{}:{}", creds.username, *creds.password));
                let encoded = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(joined.as_bytes()),
                );
                Some(Zeroizing::new(format!("Basic {}", *encoded)))
            }
        };
        Ok(Proxy {
            addr: join_host_port(host, port),
            authorization,
        })
    }

    /// `host:port` of the proxy.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether Basic credentials are sent.
    pub fn has_credentials(&self) -> bool {
        self.authorization.is_some()
    }
}

/// Asks the proxy on `tcp` for a tunnel to `target` (`host:port`) and reads its answer head,
/// leaving the stream positioned at the first byte of the tunnel.
pub(crate) async fn tunnel(
    tcp: &mut TcpStream,
    proxy: &Proxy,
    target: &str,
) -> Result<(), ConnectError> {
    let protocol = |reason: String| ConnectError::ProxyProtocol {
        proxy: proxy.addr.clone(),
        reason,
    };
    let mut request = Zeroizing::new(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"));
    if let Some(auth) = &proxy.authorization {
        request.push_str("Proxy-Authorization: ");
        request.push_str(auth);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| protocol(format!("cannot send CONNECT: {e}")))?;

    // Byte by byte: whatever follows the head belongs to the TLS stream and must stay in
    // the socket. This happens once per connection, so the cost does not matter.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_PROXY_HEAD {
            return Err(protocol(format!(
                "the answer head is longer than {MAX_PROXY_HEAD} bytes"
            )));
        }
        let byte = tcp.read_u8().await.map_err(|e| {
            protocol(format!(
                "the connection ended before the answer was complete ({e})"
            ))
        })?;
        head.push(byte);
    }
    let status_line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_string())
        .unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().and_then(|c| c.parse::<u16>().ok());
    let Some(code) = code.filter(|_| version.starts_with("HTTP/1.")) else {
        return Err(protocol(format!("unexpected status line {status_line:?}")));
    };
    if (200..300).contains(&code) {
        return Ok(());
    }
    let hint = match (code, proxy.authorization.is_some()) {
        (407, false) => {
            ": the proxy wants credentials; configure the proxy user name and password".to_string()
        }
        (407, true) => ": the proxy did not accept the configured credentials".to_string(),
        (403, _) => format!(": the proxy does not allow this destination; allow {target}"),
        _ => String::new(),
    };
    Err(ConnectError::ProxyRefused {
        proxy: proxy.addr.clone(),
        target: target.to_string(),
        status_line,
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_and_credentials() {
        let p = Proxy::parse(&ProxyConfig {
            url: "http://proxy.lan:3128/".into(),
            basic_auth: Some(ProxyCredentials {
                username: "mdm".into(),
                password: Zeroizing::new("s3cret".into()),
            }),
        })
        .unwrap();
        assert_eq!(p.addr(), "proxy.lan:3128");
        assert!(p.has_credentials());
        // base64("mdm:s3cret")
        assert_eq!(
            p.authorization.as_deref().map(String::as_str),
            Some("Basic bWRtOnMzY3JldA==")
        );
        assert!(!format!("{p:?}").contains("bWRt"));
        let cfg = ProxyConfig {
            url: "http://[::1]".into(),
            basic_auth: None,
        };
        assert!(!format!("{cfg:?}").is_empty());
        let p = Proxy::parse(&cfg).unwrap();
        assert_eq!(p.addr(), "[::1]:80");
        assert!(!p.has_credentials());

        let bad_user = ProxyConfig {
            url: "http://proxy.lan:3128".into(),
            basic_auth: Some(ProxyCredentials {
                username: "a:b".into(),
                password: Zeroizing::new(String::new()),
            }),
        };
        assert_eq!(
            Proxy::parse(&bad_user).unwrap_err(),
            ConfigError::ProxyCredentials
        );
        let creds = ProxyCredentials {
            username: "u".into(),
            password: Zeroizing::new("hunter2".into()),
        };
        assert!(!format!("{creds:?}").contains("hunter2"));
        for bad in [
            "https://proxy.lan:3128",
            "http://u:p@proxy.lan:1",
            "http://proxy.lan:1/x",
            "http://proxy.lan:1?x",
        ] {
            let cfg = ProxyConfig {
                url: bad.into(),
                basic_auth: None,
            };
            let err = Proxy::parse(&cfg).unwrap_err();
            assert!(matches!(err, ConfigError::ProxyUrl { .. }), "{bad}: {err}");
        }
    }
}
