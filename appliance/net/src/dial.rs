//! Opening the TCP stream a TLS session to a service runs over.

use tokio::net::TcpStream;

use crate::endpoint::Endpoint;
use crate::error::ConnectError;
use crate::proxy::{tunnel, Proxy};

/// Connects to `endpoint`, directly or through a tunnel `proxy` opens to it.
///
/// The stream has `TCP_NODELAY` set: the clients send small requests and wait for the
/// answer, where Nagle's algorithm only adds latency. Not bounded in time: wrap the call in
/// the caller's connect timeout.
pub async fn dial(endpoint: &Endpoint, proxy: Option<&Proxy>) -> Result<TcpStream, ConnectError> {
    match proxy {
        None => tcp(endpoint.authority()).await,
        Some(proxy) => {
            let mut stream = tcp(proxy.addr()).await?;
            tunnel(&mut stream, proxy, endpoint.authority()).await?;
            Ok(stream)
        }
    }
}

async fn tcp(target: &str) -> Result<TcpStream, ConnectError> {
    let failed = |source| ConnectError::Tcp {
        target: target.to_string(),
        source,
    };
    let stream = TcpStream::connect(target).await.map_err(failed)?;
    stream.set_nodelay(true).map_err(failed)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use zeroize::Zeroizing;

    use super::*;
    use crate::proxy::{ProxyConfig, ProxyCredentials};

    /// A server that answers every connection with `hello` and closes.
    async fn hello_server() -> (Endpoint, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(b"hello").await;
            }
        });
        let endpoint = Endpoint::parse(&format!("https://127.0.0.1:{port}")).unwrap();
        (endpoint, task)
    }

    /// A proxy that answers every request head with `answer`, then, when `tunnel` is set,
    /// relays bytes to the target named in the head. Records the heads.
    async fn start_proxy(
        answer: &'static str,
        tunnel: bool,
        creds: Option<ProxyCredentials>,
    ) -> (Proxy, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    match client.read_u8().await {
                        Ok(b) => head.push(b),
                        Err(_) => break,
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                seen.lock().unwrap().push(head.clone());
                let _ = client.write_all(answer.as_bytes()).await;
                if tunnel {
                    let target = head.split(' ').nth(1).unwrap_or_default().to_string();
                    if let Ok(mut upstream) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                }
            }
        });
        let proxy = Proxy::parse(&ProxyConfig {
            url: format!("http://127.0.0.1:{port}"),
            basic_auth: creds,
        })
        .unwrap();
        (proxy, heads, task)
    }

    async fn read_all(mut s: TcpStream) -> String {
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn dials_directly() {
        let (endpoint, _server) = hello_server().await;
        let stream = dial(&endpoint, None).await.unwrap();
        assert!(stream.nodelay().unwrap());
        assert_eq!(read_all(stream).await, "hello");
    }

    #[tokio::test]
    async fn tunnels_through_a_proxy_with_credentials() {
        let (endpoint, _server) = hello_server().await;
        let creds = ProxyCredentials {
            username: "mdm".into(),
            password: Zeroizing::new("pw".into()),
        };
        let (proxy, heads, _task) = start_proxy(
            "HTTP/1.1 200 Connection established\r\n\r\n",
            true,
            Some(creds),
        )
        .await;
        let stream = dial(&endpoint, Some(&proxy)).await.unwrap();
        // What follows the proxy's head is the target's first byte, not lost in a buffer.
        assert_eq!(read_all(stream).await, "hello");
        let heads = heads.lock().unwrap().clone();
        let target = endpoint.authority();
        // base64("mdm:pw")
        assert_eq!(
            heads,
            vec![format!(
                "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic bWRtOnB3\r\n\r\n"
            )]
        );
    }

    #[tokio::test]
    async fn refusals_say_what_to_check() {
        let (endpoint, _server) = hello_server().await;
        let cases = [
            (
                "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
                "wants credentials",
            ),
            (
                "HTTP/1.0 403 Forbidden\r\nX: y\r\n\r\n",
                "does not allow this destination; allow 127.0.0.1:",
            ),
            (
                "HTTP/1.1 502 Bad Gateway\r\n\r\n",
                "\"HTTP/1.1 502 Bad Gateway\"",
            ),
        ];
        for (answer, expected) in cases {
            let (proxy, _heads, _task) = start_proxy(answer, false, None).await;
            let err = dial(&endpoint, Some(&proxy)).await.unwrap_err();
            assert!(
                matches!(err, ConnectError::ProxyRefused { .. }),
                "{answer}: {err}"
            );
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[tokio::test]
    async fn a_proxy_that_is_not_http_is_named() {
        let (endpoint, _server) = hello_server().await;
        let (proxy, _heads, _task) = start_proxy("SSH-2.0-OpenSSH_9.2\r\n\r\n", false, None).await;
        let err = dial(&endpoint, Some(&proxy)).await.unwrap_err();
        assert!(matches!(err, ConnectError::ProxyProtocol { .. }), "{err}");
        // A proxy that closes before a full head.
        let (proxy, _heads, _task) = start_proxy("HTTP/1.1 200", false, None).await;
        let err = dial(&endpoint, Some(&proxy)).await.unwrap_err();
        assert!(err.to_string().contains("ended before"), "{err}");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_tcp_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let endpoint = Endpoint::parse(&format!("https://127.0.0.1:{port}")).unwrap();
        let err = dial(&endpoint, None).await.unwrap_err();
        assert!(matches!(err, ConnectError::Tcp { .. }), "{err}");
        assert!(err.to_string().contains(&format!("127.0.0.1:{port}")));
    }
}
