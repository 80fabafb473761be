//! OAuth 1.0a request signing (RFC 5849) with HMAC-SHA1: what ABM's `GET /session` wants.

use aws_lc_rs::hmac;
use base64::Engine as _;
use zeroize::Zeroizing;

/// The four credentials of a server token.
pub(crate) struct Credentials<'a> {
    pub(crate) consumer_key: &'a str,
    pub(crate) consumer_secret: &'a str,
    pub(crate) token: &'a str,
    pub(crate) token_secret: &'a str,
}

/// Percent-encodes per RFC 5849 §3.6: everything but `A-Z a-z 0-9 - . _ ~` becomes `%XX`
/// (upper-case hex) of its UTF-8 bytes.
pub(crate) fn encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// The signature base string (RFC 5849 §3.4.1): the method, the base string URI (scheme,
/// lower-case host, port when not the default, path) and the normalised parameters. `params`
/// are the decoded request parameters (query, form body) and protocol parameters, without
/// `realm` and `oauth_signature`.
pub(crate) fn base_string(method: &str, base_uri: &str, params: &[(&str, &str)]) -> String {
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .map(|(name, value)| (encode(name), encode(value)))
        .collect();
    // §3.4.1.3.2: by encoded name, then by encoded value, in byte order.
    encoded.sort();
    let normalised = encoded
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&");
    format!(
        "{}&{}&{}",
        method.to_ascii_uppercase(),
        encode(base_uri),
        encode(&normalised)
    )
}

/// HMAC-SHA1 signature of `base_string` (RFC 5849 §3.4.2), base64.
pub(crate) fn hmac_sha1(base_string: &str, consumer_secret: &str, token_secret: &str) -> String {
    let key = Zeroizing::new(format!(
        "{}&{}",
        encode(consumer_secret),
        encode(token_secret)
    ));
    // SHA-1 here is what the protocol mandates (RFC 5849 offers HMAC-SHA1, RSA-SHA1 and
    // PLAINTEXT; ABM takes HMAC-SHA1), and HMAC-SHA1 is not affected by SHA-1 collisions.
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key.as_bytes());
    let tag = hmac::sign(&key, base_string.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// The request being signed.
pub(crate) struct Request<'a> {
    pub(crate) method: &'a str,
    /// The base string URI (§3.4.1.2).
    pub(crate) base_uri: &'a str,
    /// The request's own decoded parameters (query string, form body).
    pub(crate) params: &'a [(&'a str, &'a str)],
}

/// The per-request protocol values besides the credentials.
pub(crate) struct Protocol<'a> {
    pub(crate) realm: &'a str,
    /// Seconds since the epoch.
    pub(crate) timestamp: &'a str,
    /// A fresh random string.
    pub(crate) nonce: &'a str,
    /// `oauth_version`: optional in RFC 5849, sent to ABM.
    pub(crate) version: Option<&'a str>,
}

/// The `Authorization` header value for `request` signed with `credentials`.
pub(crate) fn authorization(
    credentials: &Credentials<'_>,
    request: &Request<'_>,
    protocol: &Protocol<'_>,
) -> Zeroizing<String> {
    let (realm, timestamp, nonce, version) = (
        protocol.realm,
        protocol.timestamp,
        protocol.nonce,
        protocol.version,
    );
    let mut protocol: Vec<(&str, &str)> = vec![
        ("oauth_consumer_key", credentials.consumer_key),
        ("oauth_token", credentials.token),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", timestamp),
        ("oauth_nonce", nonce),
    ];
    if let Some(version) = version {
        protocol.push(("oauth_version", version));
    }
    let mut all = protocol.clone();
    all.extend_from_slice(request.params);
    let base = base_string(request.method, request.base_uri, &all);
    let signature = hmac_sha1(&base, credentials.consumer_secret, credentials.token_secret);
    // §3.5.1: `realm` first, then every protocol parameter, values percent-encoded and quoted.
    let mut header = Zeroizing::new(format!("OAuth realm=\"{realm}\""));
    for (name, value) in protocol
        .iter()
        .copied()
        .chain(std::iter::once(("oauth_signature", signature.as_str())))
    {
        header.push_str(", ");
        header.push_str(name);
        header.push_str("=\"");
        header.push_str(&encode(value));
        header.push('"');
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_follows_section_3_6() {
        assert_eq!(encode("AZaz09-._~"), "AZaz09-._~");
        assert_eq!(encode("a b&c=d/e+f%"), "a%20b%26c%3Dd%2Fe%2Bf%25");
        assert_eq!(encode("!*'()"), "%21%2A%27%28%29");
        // UTF-8 bytes, upper-case hex.
        assert_eq!(encode("é☃"), "%C3%A9%E2%98%83");
        assert_eq!(encode(""), "");
    }

    /// RFC 5849 §3.4.1.1: the example request's base string, and (§3.4.2, with the
    /// example's client and token secrets, as corrected by erratum 2550) its signature.
    #[test]
    fn the_rfc_base_string_example() {
        let params = [
            ("b5", "=%3D"),
            ("a3", "a"),
            ("c@", ""),
            ("a2", "r b"),
            ("oauth_consumer_key", "9djdj82h48djs9d2"),
            ("oauth_token", "kkk9d7dh3k39sjv7"),
            ("oauth_signature_method", "HMAC-SHA1"),
            ("oauth_timestamp", "137131201"),
            ("oauth_nonce", "7d8f3e4a"),
            ("c2", ""),
            ("a3", "2 q"),
        ];
        let base = base_string("POST", "http://example.com/request", &params);
        assert_eq!(
            base,
            "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3D2%2520q%26a3%3Da%26\
             b5%3D%253D%25253D%26c%2540%3D%26c2%3D%26oauth_consumer_key%3D9djdj82h48djs9d2%26\
             oauth_nonce%3D7d8f3e4a%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D\
             137131201%26oauth_token%3Dkkk9d7dh3k39sjv7"
        );
        assert_eq!(
            hmac_sha1(&base, "j49sk3j29djd", "dh893hdasih9"),
            "r6/TJjbCOr97/+UU0NsvSne7s5g="
        );
    }

    /// RFC 5849 §1.2: the photo request's `Authorization` header, signature included.
    #[test]
    fn the_rfc_worked_example() {
        let credentials = Credentials {
            consumer_key: "dpf43f3p2l4k3l03",
            consumer_secret: "kd94hf93k423kf44",
            token: "nnch734d00sl2jdk",
            token_secret: "pfkkdhi9sl3r4s00",
        };
        let header = authorization(
            &credentials,
            &Request {
                method: "GET",
                base_uri: "http://photos.example.net/photos",
                params: &[("file", "vacation.jpg"), ("size", "original")],
            },
            &Protocol {
                realm: "Photos",
                timestamp: "137131202",
                nonce: "chapoH",
                version: None,
            },
        );
        assert_eq!(
            header.as_str(),
            "OAuth realm=\"Photos\", oauth_consumer_key=\"dpf43f3p2l4k3l03\", \
             oauth_token=\"nnch734d00sl2jdk\", oauth_signature_method=\"HMAC-SHA1\", \
             oauth_timestamp=\"137131202\", oauth_nonce=\"chapoH\", \
             oauth_signature=\"MdpQcU8iPSUjWoN%2FUDMsK2sui9I%3D\""
        );
    }

    #[test]
    fn the_version_is_signed_when_sent() {
        let credentials = Credentials {
            consumer_key: "CK_1",
            consumer_secret: "CS_1",
            token: "AT_1",
            token_secret: "AS_1",
        };
        let request = Request {
            method: "GET",
            base_uri: "https://mdmenrollment.apple.com/session",
            params: &[],
        };
        let protocol = |version| Protocol {
            realm: "ADM",
            timestamp: "1700000000",
            nonce: "n",
            version,
        };
        let with = authorization(&credentials, &request, &protocol(Some("1.0")));
        let without = authorization(&credentials, &request, &protocol(None));
        assert!(with.contains("oauth_version=\"1.0\""));
        let signature = |h: &str| h.rsplit("oauth_signature=").next().map(str::to_string);
        assert_ne!(signature(&with), signature(&without));
    }
}
