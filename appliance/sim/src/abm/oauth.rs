//! OAuth 1.0a (RFC 5849) as ABM's `GET /session` uses it: HMAC-SHA1 signatures with the
//! protocol parameters in the `Authorization` header, realm `ADM`.
//!
//! The server side ([`parse_authorization`], [`signature_base_string`],
//! [`verify_signature`]) is what the simulator checks requests with. The client side
//! ([`authorization_header`]) exists for tests and tools that drive the simulator; the
//! appliance has its own implementation, which these tests must not replace.

use base64::Engine;

use super::types::OAuthCredentials;

/// The realm ABM expects.
pub const REALM: &str = "ADM";

/// Protocol parameters that may appear in the header; anything else is refused
/// (Apple: "unsupported OAuth parameters").
const KNOWN: &[&str] = &[
    "oauth_consumer_key",
    "oauth_token",
    "oauth_signature_method",
    "oauth_signature",
    "oauth_timestamp",
    "oauth_nonce",
    "oauth_version",
];

/// A parsed `Authorization: OAuth ...` header: the realm and the decoded protocol
/// parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationHeader {
    /// `realm`, if present.
    pub realm: Option<String>,
    /// The `oauth_*` parameters, percent-decoded, in header order.
    pub params: Vec<(String, String)>,
}

impl AuthorizationHeader {
    /// A protocol parameter's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Percent-encodes per RFC 5849 §3.6: RFC 3986 unreserved characters stay, every other
/// byte of the UTF-8 encoding becomes `%XX` with upper-case hex.
pub fn encode(value: &str) -> String {
    crate::http::percent_encode(value)
}

/// Decodes `%XX` escapes; `None` for a malformed escape or invalid UTF-8. With
/// `plus_as_space`, `+` means a space (form encoding, used for query strings).
pub fn decode(value: &str, plus_as_space: bool) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Parses an `Authorization` header value of scheme `OAuth` (RFC 5849 §3.5.1). Errors
/// are the reasons a server answers 400 Bad Request: wrong scheme, malformed syntax, a
/// duplicated or unsupported parameter.
pub fn parse_authorization(value: &str) -> Result<AuthorizationHeader, String> {
    let value = value.trim();
    let (scheme, rest) = value.split_at(value.find(' ').unwrap_or(value.len()));
    if !scheme.eq_ignore_ascii_case("OAuth") {
        return Err("the Authorization header does not use the OAuth scheme".into());
    }
    let mut realm = None;
    let mut params: Vec<(String, String)> = Vec::new();
    let mut rest = rest.trim_start();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("parameter without a value near {rest:?}"))?;
        let name = rest[..eq].trim();
        let after = rest[eq + 1..].trim_start();
        let quoted = after
            .strip_prefix('"')
            .ok_or_else(|| format!("the value of {name} is not quoted"))?;
        let close = quoted
            .find('"')
            .ok_or_else(|| format!("the value of {name} is not terminated"))?;
        let raw = &quoted[..close];
        let decoded =
            decode(raw, false).ok_or_else(|| format!("the value of {name} is badly encoded"))?;
        if name == "realm" {
            if realm.is_some() {
                return Err("realm appears twice".into());
            }
            realm = Some(decoded);
        } else if KNOWN.contains(&name) {
            if params.iter().any(|(n, _)| n == name) {
                return Err(format!("{name} appears twice"));
            }
            params.push((name.to_owned(), decoded));
        } else {
            return Err(format!("unsupported OAuth parameter {name:?}"));
        }
        rest = quoted[close + 1..].trim_start();
        if let Some(next) = rest.strip_prefix(',') {
            rest = next.trim_start();
        } else if !rest.is_empty() {
            return Err("parameters are not separated by commas".into());
        }
    }
    Ok(AuthorizationHeader { realm, params })
}

/// Builds the signature base string (RFC 5849 §3.4.1) from the request method, the base
/// string URI (`https://host[:port]/path`, lower-case scheme and host, default port
/// left out) and every parameter: the query's and the protocol parameters except
/// `oauth_signature` (the caller leaves out `realm`).
pub fn signature_base_string(method: &str, base_uri: &str, params: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .filter(|(n, _)| n != "oauth_signature")
        .map(|(n, v)| (encode(n), encode(v)))
        .collect();
    encoded.sort();
    let normalized = encoded
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!(
        "{}&{}&{}",
        method.to_ascii_uppercase(),
        encode(base_uri),
        encode(&normalized)
    )
}

/// The HMAC-SHA1 signature (base64) of `base` with the client's shared secrets.
pub fn hmac_sha1_signature(base: &str, consumer_secret: &str, token_secret: &str) -> String {
    let key = format!("{}&{}", encode(consumer_secret), encode(token_secret));
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        key.as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(aws_lc_rs::hmac::sign(&key, base.as_bytes()))
}

/// Whether `signature` (base64, already percent-decoded) is the HMAC-SHA1 of `base`
/// under the secrets. The comparison is constant-time.
pub fn verify_signature(
    base: &str,
    consumer_secret: &str,
    token_secret: &str,
    signature: &str,
) -> bool {
    let Ok(tag) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let key = format!("{}&{}", encode(consumer_secret), encode(token_secret));
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        key.as_bytes(),
    );
    aws_lc_rs::hmac::verify(&key, base.as_bytes(), &tag).is_ok()
}

/// The base string URI for a request to `authority` (`host[:port]`, as in the `Host`
/// header) and `path` over HTTPS.
pub fn base_uri(authority: &str, path: &str) -> String {
    let authority = authority.to_ascii_lowercase();
    let authority = authority.strip_suffix(":443").unwrap_or(&authority);
    let path = if path.is_empty() { "/" } else { path };
    format!("https://{authority}{path}")
}

/// A signed `Authorization` header value for `GET url` with `credentials`, as an ABM
/// client sends it to `/session`: realm `ADM`, HMAC-SHA1, `oauth_version` 1.0.
/// `timestamp` is seconds since the Unix epoch; `nonce` must be fresh for each call.
/// The URL must be `https://host[:port]/path[?query]`.
pub fn authorization_header(
    url: &str,
    credentials: &OAuthCredentials,
    timestamp: i64,
    nonce: &str,
) -> String {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    let (authority, path_query) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (path, query) = match path_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_query, None),
    };
    let oauth: Vec<(String, String)> = vec![
        (
            "oauth_consumer_key".into(),
            credentials.consumer_key.clone(),
        ),
        ("oauth_token".into(), credentials.access_token.clone()),
        ("oauth_signature_method".into(), "HMAC-SHA1".into()),
        ("oauth_timestamp".into(), timestamp.to_string()),
        ("oauth_nonce".into(), nonce.to_owned()),
        ("oauth_version".into(), "1.0".into()),
    ];
    let mut all = oauth.clone();
    all.extend(query_pairs(query.unwrap_or("")));
    let base = signature_base_string("GET", &base_uri(authority, path), &all);
    let signature = hmac_sha1_signature(
        &base,
        &credentials.consumer_secret,
        &credentials.access_secret,
    );
    let mut header = format!("OAuth realm=\"{REALM}\"");
    for (name, value) in oauth
        .iter()
        .chain(std::iter::once(&("oauth_signature".to_owned(), signature)))
    {
        header.push_str(&format!(", {name}=\"{}\"", encode(value)));
    }
    header
}

/// The decoded `name=value` pairs of a query string (form encoding); undecodable pairs
/// are kept raw.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                decode(n, true).unwrap_or_else(|| n.to_owned()),
                decode(v, true).unwrap_or_else(|| v.to_owned()),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5849_section_1_2_example_verifies() {
        // RFC 5849 §1.2: the printer's request for a protected photo, over plain HTTP.
        let header = r#"OAuth realm="Photos",
            oauth_consumer_key="dpf43f3p2l4k3l03",
            oauth_token="nnch734d00sl2jdk",
            oauth_signature_method="HMAC-SHA1",
            oauth_timestamp="137131202",
            oauth_nonce="chapoH",
            oauth_signature="MdpQcU8iPSUjWoN%2FUDMsK2sui9I%3D""#;
        let parsed = parse_authorization(&header.replace('\n', "")).unwrap();
        assert_eq!(parsed.realm.as_deref(), Some("Photos"));
        let signature = parsed.get("oauth_signature").unwrap().to_owned();
        assert_eq!(signature, "MdpQcU8iPSUjWoN/UDMsK2sui9I=");
        let mut params = parsed.params.clone();
        params.extend(query_pairs("file=vacation.jpg&size=original"));
        let base = signature_base_string("GET", "http://photos.example.net/photos", &params);
        assert_eq!(
            base,
            "GET&http%3A%2F%2Fphotos.example.net%2Fphotos&file%3Dvacation.jpg%26\
             oauth_consumer_key%3Ddpf43f3p2l4k3l03%26oauth_nonce%3DchapoH%26\
             oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D137131202%26\
             oauth_token%3Dnnch734d00sl2jdk%26size%3Doriginal"
        );
        assert!(verify_signature(
            &base,
            "kd94hf93k423kf44",
            "pfkkdhi9sl3r4s00",
            &signature
        ));
        assert!(!verify_signature(
            &base,
            "kd94hf93k423kf45",
            "pfkkdhi9sl3r4s00",
            &signature
        ));
        assert_eq!(
            hmac_sha1_signature(&base, "kd94hf93k423kf44", "pfkkdhi9sl3r4s00"),
            signature
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        assert!(parse_authorization("Basic abc").is_err());
        assert!(parse_authorization(r#"OAuth oauth_nonce="a", oauth_nonce="b""#).is_err());
        assert!(parse_authorization(r#"OAuth oauth_callback="x""#).is_err());
        assert!(parse_authorization(r#"OAuth oauth_nonce=abc"#).is_err());
        assert!(parse_authorization(r#"OAuth oauth_nonce="a%zz""#).is_err());
        assert!(parse_authorization(r#"OAuth oauth_nonce="a" oauth_token="b""#).is_err());
        let ok = parse_authorization(r#"oauth realm="ADM",oauth_nonce="a%20b""#).unwrap();
        assert_eq!(ok.get("oauth_nonce"), Some("a b"));
    }

    #[test]
    fn client_header_verifies_against_the_server_side() {
        let creds = OAuthCredentials {
            consumer_key: "CK_x".into(),
            consumer_secret: "CS_y&z".into(),
            access_token: "AT_t".into(),
            access_secret: "AS_s".into(),
            access_token_expiry: std::time::SystemTime::UNIX_EPOCH,
        };
        let header = authorization_header("https://Host.Example:443/session", &creds, 1, "n o");
        let parsed = parse_authorization(&header).unwrap();
        assert_eq!(parsed.realm.as_deref(), Some(REALM));
        let base =
            signature_base_string("GET", &base_uri("host.example", "/session"), &parsed.params);
        assert!(verify_signature(
            &base,
            "CS_y&z",
            "AS_s",
            parsed.get("oauth_signature").unwrap()
        ));
    }
}
