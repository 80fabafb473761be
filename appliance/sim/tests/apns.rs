//! The APNs simulator against a small HTTP/2 client (hyper + tokio-rustls) written here,
//! independent of the appliance's APNs client: validation, TLS client authentication,
//! fault injection, push certificates, waking a simulated device, and the binary.

// Helpers outside #[test] functions unwrap too: a failure must abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use der::Encode;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mdm_sim::apns::{
    self, ApnsAuthorities, ApnsConfig, ApnsError, ApnsSimulator, CertificateFault, Fault, Reason,
};
use mdm_sim::device::{DeviceKind, SimDevice};
use mdm_sim::http::HttpClient;
use mdm_sim::keys::PrivateKey;
use mdm_sim::x509::{self, CertificateParams};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use x509_cert::Certificate;

/// A push identity: what an MDM server holds after the portal round trip.
struct Identity {
    cert: Certificate,
    key: PrivateKey,
}

/// One HTTP/2 connection to the simulator.
struct Conn {
    base: String,
    sender: SendRequest<Full<Bytes>>,
    task: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

/// What came back for one request.
#[derive(Debug)]
struct Answer {
    status: u16,
    apns_id: Option<String>,
    content_type: Option<String>,
    reason: Option<String>,
    timestamp: Option<u64>,
    body: Bytes,
}

fn token() -> String {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    apns::token_hex(&bytes)
}

async fn start() -> ApnsSimulator {
    ApnsSimulator::start_default().await.unwrap()
}

fn identity(sim: &ApnsSimulator, topic: &str) -> Identity {
    let (cert, key) = sim.issue_push_identity(topic).unwrap();
    Identity { cert, key }
}

fn server_ca(sim: &ApnsSimulator) -> Certificate {
    sim.authorities().server_ca().certificate.clone()
}

async fn connect_with(
    sim: &ApnsSimulator,
    trust: &Certificate,
    identity: Option<&Identity>,
    alpn: &[&[u8]],
) -> Result<Conn, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(trust.to_der().unwrap()))
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(id.cert.to_der().unwrap())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.pkcs8_der().to_vec())),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(sim.addr())
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into()),
            tcp,
        )
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err("the server did not select h2".into());
    }
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let task = tokio::spawn(connection);
    Ok(Conn {
        base: sim.url(),
        sender,
        task,
    })
}

async fn connect(sim: &ApnsSimulator, id: &Identity) -> Conn {
    connect_with(sim, &server_ca(sim), Some(id), &[b"h2"])
        .await
        .unwrap()
}

fn mdm_headers(topic: &str) -> Vec<(&'static str, String)> {
    vec![
        ("apns-topic", topic.to_owned()),
        ("apns-push-type", "mdm".to_owned()),
        ("apns-priority", "10".to_owned()),
    ]
}

fn mdm_body(magic: &str) -> String {
    serde_json::json!({ "mdm": magic }).to_string()
}

impl Conn {
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&'static str, String)],
        body: impl Into<Bytes>,
    ) -> Result<Answer, hyper::Error> {
        send_on(
            self.sender.clone(),
            format!("{}{path}", self.base),
            method,
            headers.to_vec(),
            body.into(),
        )
        .await
    }

    async fn push(&mut self, token: &str, topic: &str, magic: &str) -> Answer {
        self.send(
            Method::POST,
            &format!("/3/device/{token}"),
            &mdm_headers(topic),
            mdm_body(magic),
        )
        .await
        .unwrap()
    }
}

/// Sends one request on `sender` (owned arguments, so it can be spawned).
async fn send_on(
    mut sender: SendRequest<Full<Bytes>>,
    url: String,
    method: Method,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
) -> Result<Answer, hyper::Error> {
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body))
        .unwrap();
    let map: &mut HeaderMap = req.headers_mut();
    for (name, value) in headers {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_str(&value).unwrap(),
        );
    }
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    Ok(Answer {
        status: parts.status.as_u16(),
        apns_id: header("apns-id"),
        content_type: header("content-type"),
        reason: json
            .as_ref()
            .and_then(|j| j.get("reason"))
            .and_then(|r| r.as_str())
            .map(str::to_owned),
        timestamp: json
            .as_ref()
            .and_then(|j| j.get("timestamp"))
            .and_then(serde_json::Value::as_u64),
        body,
    })
}

/// A validation case: name, method, path, headers, body, expected status and reason.
type Case = (
    &'static str,
    Method,
    String,
    Vec<(&'static str, String)>,
    String,
    u16,
    &'static str,
);

/// Waits (up to 10 s) for a condition that another task makes true.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

#[tokio::test]
async fn valid_push_is_recorded_and_notifies_the_subscriber() {
    let sim = start().await;
    let topic = apns::new_mdm_topic();
    let id = identity(&sim, &topic);
    let tok = token();
    let mut rx = sim.subscribe(&tok.to_uppercase());
    let mut conn = connect(&sim, &id).await;

    let mut headers = mdm_headers(&topic);
    headers.push(("apns-id", "123e4567-e89b-12d3-a456-4266554400a0".to_owned()));
    let answer = conn
        .send(
            Method::POST,
            &format!("/3/device/{tok}"),
            &headers,
            mdm_body("MAGIC-1"),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.apns_id.as_deref(),
        Some("123e4567-e89b-12d3-a456-4266554400a0")
    );
    assert!(answer.body.is_empty());

    let push = rx.recv().await.unwrap();
    assert_eq!(push.token, tok);
    assert_eq!(push.topic, topic);
    assert_eq!(push.push_magic.as_deref(), Some("MAGIC-1"));
    assert_eq!(push.apns_id, "123e4567-e89b-12d3-a456-4266554400a0");
    assert_eq!(push.header("apns-priority"), Some("10"));
    assert_eq!(&push.body[..], mdm_body("MAGIC-1").as_bytes());

    // Without apns-topic the certificate's UID is the topic; without apns-id APNs makes
    // one up.
    let answer = conn
        .send(
            Method::POST,
            &format!("/3/device/{}", tok.to_uppercase()),
            &[("apns-push-type", "mdm".to_owned())],
            mdm_body("MAGIC-2"),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    let generated = answer.apns_id.unwrap();
    assert!(is_uuid(&generated), "{generated}");
    let second = rx.recv().await.unwrap();
    assert_eq!(second.topic, topic);
    assert_eq!(second.apns_id, generated);
    assert_eq!(second.connection_id, push.connection_id);

    // A payload of exactly 4096 bytes is still accepted.
    let overhead = serde_json::json!({"mdm": "M", "pad": ""}).to_string().len();
    let body = serde_json::json!({"mdm": "M", "pad": "x".repeat(4096 - overhead)}).to_string();
    assert_eq!(body.len(), 4096);
    let answer = conn
        .send(
            Method::POST,
            &format!("/3/device/{tok}"),
            &mdm_headers(&topic),
            body,
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");

    assert_eq!(sim.pushes_for(&tok).len(), 3);
    assert!(sim.pushes_for(&token()).is_empty());
    let counters = sim.counters();
    assert_eq!(counters.connections_opened, 1);
    assert_eq!(counters.streams_served, 3);
    assert_eq!(counters.pushes_accepted, 3);
    assert!(sim
        .exchanges()
        .iter()
        .all(|e| e.status == Some(200) && e.reason.is_none()));
}

#[tokio::test]
async fn every_validation_error_has_apples_status_and_reason() {
    let sim = start().await;
    let topic = apns::new_mdm_topic();
    let id = identity(&sim, &topic);
    let mut conn = connect(&sim, &id).await;
    let tok = token();
    let bound = token();
    sim.bind_token_topic(&bound, "com.apple.mgmt.External.someone-else");
    let path = format!("/3/device/{tok}");
    let with = |extra: &[(&'static str, &str)]| {
        let mut h = mdm_headers(&topic);
        for (name, value) in extra {
            h.retain(|(n, _)| n != name);
            h.push((name, (*value).to_owned()));
        }
        h
    };
    let without = |name: &str| {
        let mut h = mdm_headers(&topic);
        h.retain(|(n, _)| *n != name);
        h
    };
    let mut duplicated = mdm_headers(&topic);
    duplicated.push(("apns-topic", topic.clone()));
    let magic = mdm_body("M");

    let cases: Vec<Case> = vec![
        (
            "GET",
            Method::GET,
            path.clone(),
            mdm_headers(&topic),
            String::new(),
            405,
            "MethodNotAllowed",
        ),
        (
            "wrong path",
            Method::POST,
            format!("/3/devices/{tok}"),
            mdm_headers(&topic),
            magic.clone(),
            404,
            "BadPath",
        ),
        (
            "path too deep",
            Method::POST,
            format!("{path}/x"),
            mdm_headers(&topic),
            magic.clone(),
            404,
            "BadPath",
        ),
        (
            "no token",
            Method::POST,
            "/3/device/".into(),
            mdm_headers(&topic),
            magic.clone(),
            400,
            "MissingDeviceToken",
        ),
        (
            "short token",
            Method::POST,
            format!("/3/device/{}", &tok[..62]),
            mdm_headers(&topic),
            magic.clone(),
            400,
            "BadDeviceToken",
        ),
        (
            "odd-length token",
            Method::POST,
            format!("/3/device/{tok}a"),
            mdm_headers(&topic),
            magic.clone(),
            400,
            "BadDeviceToken",
        ),
        (
            "non-hex token",
            Method::POST,
            format!("/3/device/{}", "g".repeat(64)),
            mdm_headers(&topic),
            magic.clone(),
            400,
            "BadDeviceToken",
        ),
        (
            "alert push type",
            Method::POST,
            path.clone(),
            with(&[("apns-push-type", "alert")]),
            magic.clone(),
            400,
            "InvalidPushType",
        ),
        (
            "no push type",
            Method::POST,
            path.clone(),
            without("apns-push-type"),
            magic.clone(),
            400,
            "InvalidPushType",
        ),
        (
            "other topic",
            Method::POST,
            path.clone(),
            with(&[("apns-topic", "com.apple.mgmt.External.other")]),
            magic.clone(),
            400,
            "TopicDisallowed",
        ),
        (
            "blank topic",
            Method::POST,
            path.clone(),
            with(&[("apns-topic", "")]),
            magic.clone(),
            400,
            "BadTopic",
        ),
        (
            "duplicate topic",
            Method::POST,
            path.clone(),
            duplicated,
            magic.clone(),
            400,
            "DuplicateHeaders",
        ),
        (
            "bad apns-id",
            Method::POST,
            path.clone(),
            with(&[("apns-id", "not-a-uuid")]),
            magic.clone(),
            400,
            "BadMessageId",
        ),
        (
            "bad priority",
            Method::POST,
            path.clone(),
            with(&[("apns-priority", "7")]),
            magic.clone(),
            400,
            "BadPriority",
        ),
        (
            "bad expiration",
            Method::POST,
            path.clone(),
            with(&[("apns-expiration", "soon")]),
            magic.clone(),
            400,
            "BadExpirationDate",
        ),
        (
            "long collapse id",
            Method::POST,
            path.clone(),
            with(&[("apns-collapse-id", &"c".repeat(65))]),
            magic.clone(),
            400,
            "BadCollapseId",
        ),
        (
            "empty body",
            Method::POST,
            path.clone(),
            mdm_headers(&topic),
            String::new(),
            400,
            "PayloadEmpty",
        ),
        (
            "not JSON",
            Method::POST,
            path.clone(),
            mdm_headers(&topic),
            "mdm=M".into(),
            400,
            "PayloadEmpty",
        ),
        (
            "JSON array",
            Method::POST,
            path.clone(),
            mdm_headers(&topic),
            "[]".into(),
            400,
            "PayloadEmpty",
        ),
        (
            "no mdm key",
            Method::POST,
            path.clone(),
            mdm_headers(&topic),
            r#"{"aps":{}}"#.into(),
            400,
            "PayloadEmpty",
        ),
        (
            "mdm not a string",
            Method::POST,
            path.clone(),
            mdm_headers(&topic),
            r#"{"mdm":1}"#.into(),
            400,
            "PayloadEmpty",
        ),
        (
            "too large",
            Method::POST,
            path.clone(),
            mdm_headers(&topic),
            serde_json::json!({"mdm": "x".repeat(4100)}).to_string(),
            413,
            "PayloadTooLarge",
        ),
        (
            "token of another topic",
            Method::POST,
            format!("/3/device/{bound}"),
            mdm_headers(&topic),
            magic.clone(),
            400,
            "DeviceTokenNotForTopic",
        ),
    ];
    let count = cases.len();
    for (name, method, path, headers, body, status, reason) in cases {
        let answer = conn.send(method, &path, &headers, body).await.unwrap();
        assert_eq!(answer.status, status, "{name}: {answer:?}");
        assert_eq!(answer.reason.as_deref(), Some(reason), "{name}: {answer:?}");
        assert!(
            answer.apns_id.as_deref().is_some_and(is_uuid),
            "{name}: {answer:?}"
        );
        assert!(
            answer
                .content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/json")),
            "{name}: {answer:?}"
        );
        assert_eq!(answer.timestamp, None, "{name}");
        assert!(Reason::from_name(reason).is_some_and(|r| r.status().as_u16() == status));
    }
    assert!(sim.pushes().is_empty());
    let exchanges = sim.exchanges();
    assert_eq!(exchanges.len(), count);
    assert!(exchanges
        .iter()
        .all(|e| e.status.is_some_and(|s| s >= 400) && e.reason.is_some()));
    assert_eq!(sim.counters().pushes_accepted, 0);
    assert_eq!(sim.counters().connections_opened, 1);
}

#[tokio::test]
async fn tls_refuses_missing_foreign_and_expired_certificates() {
    let sim = start().await;
    let topic = apns::new_mdm_topic();
    let trust = server_ca(&sim);

    // Without a client certificate.
    let refused =
        async |id: Option<&Identity>, alpn: &[&[u8]]| match connect_with(&sim, &trust, id, alpn)
            .await
        {
            Err(_) => {}
            Ok(mut conn) => {
                let tok = token();
                let result = conn
                    .send(
                        Method::POST,
                        &format!("/3/device/{tok}"),
                        &mdm_headers(&topic),
                        mdm_body("M"),
                    )
                    .await;
                assert!(result.is_err(), "the request went through: {result:?}");
            }
        };
    refused(None, &[b"h2"]).await;

    // With a certificate from a CA that copies the push CA's name but not its key.
    let impostor = ApnsAuthorities::generate().unwrap();
    let (cert, key) = impostor.issue_push_identity(&topic).unwrap();
    refused(Some(&Identity { cert, key }), &[b"h2"]).await;

    // With a genuine but expired push certificate.
    let key = PrivateKey::generate_rsa2048().unwrap();
    let now = SystemTime::now();
    let cert = sim
        .authorities()
        .issue_push_certificate_with_validity(
            &topic,
            &key.public_key_info_der().unwrap(),
            now - Duration::from_secs(400 * 24 * 3600),
            now - Duration::from_secs(24 * 3600),
        )
        .unwrap();
    refused(Some(&Identity { cert, key }), &[b"h2"]).await;

    // A valid certificate but a client that only speaks HTTP/1.1: APNs is HTTP/2 only.
    let good = identity(&sim, &topic);
    assert!(connect_with(&sim, &trust, Some(&good), &[b"http/1.1"])
        .await
        .is_err());

    eventually("four failed handshakes", || {
        sim.counters().handshakes_failed == 4
    })
    .await;
    assert_eq!(sim.counters().connections_opened, 0);
    assert_eq!(sim.counters().streams_served, 0);

    // The simulator's own certificate chains to the server CA only.
    let other_ca = ApnsAuthorities::generate().unwrap();
    assert!(connect_with(
        &sim,
        &other_ca.server_ca().certificate,
        Some(&good),
        &[b"h2"]
    )
    .await
    .is_err());

    let mut conn = connect(&sim, &good).await;
    assert_eq!(conn.push(&token(), &topic, "M").await.status, 200);
}

#[tokio::test]
async fn certificate_faults_refuse_handshakes_and_requests() {
    let sim = start().await;
    let topic = apns::new_mdm_topic();
    let id = identity(&sim, &topic);
    let trust = server_ca(&sim);
    let tok = token();

    let mut open = connect(&sim, &id).await;
    assert_eq!(open.push(&tok, &topic, "M").await.status, 200);

    // Whether a new connection with `id` fails (in the handshake, or at the first
    // request when TLS 1.3 reports the client certificate's rejection late).
    let new_connection_refused =
        async || match connect_with(&sim, &trust, Some(&id), &[b"h2"]).await {
            Err(_) => true,
            Ok(mut c) => c
                .send(
                    Method::POST,
                    &format!("/3/device/{tok}"),
                    &mdm_headers(&topic),
                    mdm_body("M"),
                )
                .await
                .is_err(),
        };
    assert!(!new_connection_refused().await);

    // RefuseHandshake: new connections fail, the open one keeps working.
    sim.set_certificate_fault(&id.cert, Some(CertificateFault::RefuseHandshake))
        .unwrap();
    assert!(new_connection_refused().await);
    assert_eq!(open.push(&tok, &topic, "M").await.status, 200);

    // Revoked and Expired: new connections fail, 403 BadCertificate on the open one.
    for fault in [CertificateFault::Revoked, CertificateFault::Expired] {
        sim.set_certificate_fault(&id.cert, Some(fault)).unwrap();
        assert!(new_connection_refused().await, "{fault:?}");
        let answer = open.push(&tok, &topic, "M").await;
        assert_eq!(answer.status, 403, "{fault:?}");
        assert_eq!(answer.reason.as_deref(), Some("BadCertificate"));
    }

    // Rejected: the handshake succeeds, every request is refused.
    sim.set_certificate_fault(&id.cert, Some(CertificateFault::Rejected))
        .unwrap();
    let mut fresh = connect(&sim, &id).await;
    let answer = fresh.push(&tok, &topic, "M").await;
    assert_eq!(
        (answer.status, answer.reason.as_deref()),
        (403, Some("BadCertificate"))
    );

    // Another certificate of the same topic is unaffected.
    let other = identity(&sim, &topic);
    let mut conn = connect(&sim, &other).await;
    assert_eq!(conn.push(&tok, &topic, "M").await.status, 200);

    sim.set_certificate_fault(&id.cert, None).unwrap();
    assert_eq!(fresh.push(&tok, &topic, "M").await.status, 200);
    assert_eq!(open.push(&tok, &topic, "M").await.status, 200);
    eventually("the three refused handshakes are counted", || {
        sim.counters().handshakes_failed == 3
    })
    .await;
}

#[tokio::test]
async fn unregistered_and_expired_tokens_get_410() {
    let sim = start().await;
    let topic = apns::new_mdm_topic();
    let id = identity(&sim, &topic);
    let mut conn = connect(&sim, &id).await;
    let tok = token();

    let since = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    sim.mark_unregistered_at(&tok, since);
    let answer = conn.push(&tok, &topic, "M").await;
    assert_eq!(answer.status, 410);
    assert_eq!(answer.reason.as_deref(), Some("Unregistered"));
    assert_eq!(answer.timestamp, Some(1_700_000_000_123));

    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    sim.mark_unregistered(&tok.to_uppercase());
    let answer = conn.push(&tok, &topic, "M").await;
    assert_eq!(answer.reason.as_deref(), Some("Unregistered"));
    assert!(u128::from(answer.timestamp.unwrap()) >= before);

    sim.mark_expired(&tok);
    let answer = conn.push(&tok, &topic, "M").await;
    assert_eq!(
        (answer.status, answer.reason.as_deref(), answer.timestamp),
        (410, Some("ExpiredToken"), None)
    );

    sim.mark_registered(&tok);
    assert_eq!(conn.push(&tok, &topic, "M").await.status, 200);
    // Other tokens were never affected.
    assert_eq!(conn.push(&token(), &topic, "M").await.status, 200);
    assert_eq!(sim.pushes().len(), 2);
}

#[tokio::test]
async fn scripted_status_faults_apply_in_order() {
    let sim = start().await;
    let topic = apns::new_mdm_topic();
    let id = identity(&sim, &topic);
    let mut conn = connect(&sim, &id).await;
    let a = token();
    let b = token();

    sim.inject_next(1, Fault::too_many_requests());
    sim.inject_next(1, Fault::internal_server_error());
    sim.inject_next(2, Fault::service_unavailable());
    sim.inject_next(1, Fault::shutdown());
    let mut seen = Vec::new();
    for _ in 0..6 {
        let answer = conn.push(&a, &topic, "M").await;
        seen.push((answer.status, answer.reason));
    }
    let expected: Vec<(u16, Option<String>)> = vec![
        (429, Some("TooManyRequests".into())),
        (500, Some("InternalServerError".into())),
        (503, Some("ServiceUnavailable".into())),
        (503, Some("ServiceUnavailable".into())),
        (503, Some("Shutdown".into())),
        (200, None),
    ];
    assert_eq!(seen, expected);

    // Queued faults hit the next requests whatever they are, even invalid ones.
    sim.inject_next(1, Fault::internal_server_error());
    let answer = conn
        .send(Method::GET, "/nowhere", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(answer.status, 500);

    // Token faults: only that token, for as many requests as asked.
    sim.inject_for_token(&a, Fault::too_many_requests(), Some(2));
    assert_eq!(conn.push(&a, &topic, "M").await.status, 429);
    assert_eq!(conn.push(&b, &topic, "M").await.status, 200);
    assert_eq!(conn.push(&a, &topic, "M").await.status, 429);
    assert_eq!(conn.push(&a, &topic, "M").await.status, 200);

    // Without a count the fault stays until cleared.
    sim.inject_for_token(&b, Fault::Respond(Reason::InternalServerError), None);
    for _ in 0..3 {
        assert_eq!(conn.push(&b, &topic, "M").await.status, 500);
    }
    sim.clear_faults();
    assert_eq!(conn.push(&b, &topic, "M").await.status, 200);

    // Token faults come after validation: an invalid request is refused as such.
    sim.inject_for_token(&b, Fault::too_many_requests(), Some(1));
    let answer = conn
        .send(
            Method::POST,
            &format!("/3/device/{b}"),
            &mdm_headers(&topic),
            "",
        )
        .await
        .unwrap();
    assert_eq!(answer.reason.as_deref(), Some("PayloadEmpty"));
    assert_eq!(conn.push(&b, &topic, "M").await.status, 429);

    assert_eq!(sim.pushes().len(), 4);
}

#[tokio::test]
async fn a_delayed_stream_does_not_hold_up_the_others() {
    let sim = start().await;
    let topic = apns::new_mdm_topic();
    let id = identity(&sim, &topic);
    let conn = connect(&sim, &id).await;
    let slow = token();
    let fast = token();
    sim.inject_for_token(&slow, Fault::Delay(Duration::from_millis(1500)), Some(1));

    let request = |tok: &str| {
        send_on(
            conn.sender.clone(),
            format!("{}/3/device/{tok}", conn.base),
            Method::POST,
            mdm_headers(&topic),
            Bytes::from(mdm_body("M")),
        )
    };
    let slow_task = tokio::spawn(request(&slow));
    // Make sure the slow request reached the simulator first.
    eventually("the slow stream is in", || {
        sim.counters().streams_served == 1
    })
    .await;
    let answer = request(&fast).await.unwrap();
    assert_eq!(answer.status, 200);
    assert!(
        !slow_task.is_finished(),
        "the delayed answer came before the prompt one"
    );
    let answer = slow_task.await.unwrap().unwrap();
    assert_eq!(answer.status, 200);
    let pushes = sim.pushes();
    assert_eq!(pushes[0].token, fast);
    assert_eq!(pushes[1].token, slow);
}

#[tokio::test]
async fn goaway_makes_the_client_reconnect() {
    let sim = start().await;
    let topic = apns::new_mdm_topic();
    let id = identity(&sim, &topic);
    let tok = token();

    sim.set_goaway_after_streams(Some(2));
    let mut conn = connect(&sim, &id).await;
    assert_eq!(conn.push(&tok, &topic, "M").await.status, 200);
    assert_eq!(conn.push(&tok, &topic, "M").await.status, 200);
    // Both streams were answered; then the connection ends.
    let _ = tokio::time::timeout(Duration::from_secs(10), &mut conn.task)
        .await
        .expect("the connection was not closed after GOAWAY")
        .unwrap();
    assert!(conn
        .send(
            Method::POST,
            &format!("/3/device/{tok}"),
            &mdm_headers(&topic),
            mdm_body("M")
        )
        .await
        .is_err());

    sim.set_goaway_after_streams(None);
    let mut again = connect(&sim, &id).await;
    assert_eq!(again.push(&tok, &topic, "M").await.status, 200);

    // The GoAway fault: this request is answered, then the connection closes.
    sim.inject_next(1, Fault::GoAway);
    assert_eq!(again.push(&tok, &topic, "M").await.status, 200);
    let _ = tokio::time::timeout(Duration::from_secs(10), &mut again.task)
        .await
        .expect("the connection was not closed after the GoAway fault")
        .unwrap();

    let counters = sim.counters();
    assert_eq!(counters.connections_opened, 2);
    assert_eq!(counters.goaways_sent, 2);
    assert_eq!(counters.pushes_accepted, 4);
    let connections: Vec<u64> = sim.pushes().iter().map(|p| p.connection_id).collect();
    assert_eq!(connections, vec![1, 1, 2, 2]);
}

#[tokio::test]
async fn dropped_connection_gives_no_answer() {
    let sim = start().await;
    let topic = apns::new_mdm_topic();
    let id = identity(&sim, &topic);
    let tok = token();
    let mut conn = connect(&sim, &id).await;
    assert_eq!(conn.push(&tok, &topic, "M").await.status, 200);

    sim.inject_next(1, Fault::DropConnection);
    let result = conn
        .send(
            Method::POST,
            &format!("/3/device/{tok}"),
            &mdm_headers(&topic),
            mdm_body("M"),
        )
        .await;
    assert!(result.is_err(), "{result:?}");
    // hyper may see the close as an error or as an EOF; either way it is over.
    let _ = tokio::time::timeout(Duration::from_secs(10), &mut conn.task)
        .await
        .expect("the connection did not end")
        .unwrap();
    assert!(conn.sender.is_closed());

    let last = sim.exchanges().pop().unwrap();
    assert_eq!((last.status, last.reason), (None, None));
    assert_eq!(sim.counters().connections_dropped, 1);
    assert_eq!(sim.counters().goaways_sent, 0);
    assert_eq!(sim.pushes().len(), 1);

    let mut again = connect(&sim, &id).await;
    assert_eq!(again.push(&tok, &topic, "M").await.status, 200);
    assert_eq!(sim.counters().connections_opened, 2);
}

#[tokio::test]
async fn many_concurrent_streams_share_one_connection() {
    let sim = start().await;
    let topic = apns::new_mdm_topic();
    let id = identity(&sim, &topic);
    let conn = connect(&sim, &id).await;
    let tokens: Vec<String> = (0..200).map(|_| token()).collect();
    let mut tasks = Vec::new();
    for (i, tok) in tokens.iter().enumerate() {
        tasks.push(tokio::spawn(send_on(
            conn.sender.clone(),
            format!("{}/3/device/{tok}", conn.base),
            Method::POST,
            mdm_headers(&topic),
            Bytes::from(mdm_body(&format!("M{i}"))),
        )));
    }
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let answer = task.await.unwrap().unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        ids.insert(answer.apns_id.unwrap());
    }
    assert_eq!(ids.len(), 200);
    let counters = sim.counters();
    assert_eq!(counters.connections_opened, 1);
    assert_eq!(counters.streams_served, 200);
    assert_eq!(counters.pushes_accepted, 200);
    let pushes = sim.pushes();
    assert!(pushes.iter().all(|p| p.connection_id == 1));
    for (i, tok) in tokens.iter().enumerate() {
        let for_token = sim.pushes_for(tok);
        assert_eq!(for_token.len(), 1);
        assert_eq!(
            for_token[0].push_magic.as_deref(),
            Some(format!("M{i}").as_str())
        );
    }
}

fn openssl_available() -> bool {
    std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn openssl(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn push_certificates_have_apples_shape_and_work_for_tls() {
    let sim = start().await;
    let topic = apns::new_mdm_topic();
    let uuid = topic.strip_prefix("com.apple.mgmt.External.").unwrap();

    // The appliance's side of the portal round trip: a key and a CSR.
    let key = PrivateKey::generate_rsa2048().unwrap();
    let csr = x509::certificate_request(
        &x509::name(&[("CN", "MDM appliance push")]).unwrap(),
        &key,
        None,
        &[],
    )
    .unwrap();
    let csr_der = csr.to_der().unwrap();
    let csr_pem =
        der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::LF, &csr_der).unwrap();
    for request in [csr_der.clone(), csr_pem.clone().into_bytes()] {
        let cert = sim.issue_push_certificate(&topic, &request).unwrap();
        assert_eq!(
            apns::certificate_topic(&cert).as_deref(),
            Some(topic.as_str())
        );
        assert_eq!(
            x509::common_name(&cert.tbs_certificate.subject),
            Some(format!("APSP:{uuid}"))
        );
        assert_eq!(
            cert.tbs_certificate.subject_public_key_info,
            key.public_key_info().unwrap()
        );
        x509::verify_chain(
            &cert,
            &[],
            std::slice::from_ref(&sim.authorities().push_ca().certificate),
        )
        .unwrap();
    }

    // The portal's real upload: a vendor-signed request (base64 of a plist).
    let vendor_key = PrivateKey::generate_rsa2048().unwrap();
    let vendor_cert = x509::self_signed(
        &CertificateParams::new(x509::name(&[("CN", "MDM Vendor: Example")]).unwrap()),
        &vendor_key,
    )
    .unwrap();
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let signed = |signature: Vec<u8>| {
        let mut dict = plist::Dictionary::new();
        dict.insert("PushCertRequestCSR".into(), b64(&csr_der).into());
        dict.insert(
            "PushCertCertificateChain".into(),
            x509::to_pem(&vendor_cert).unwrap().into(),
        );
        dict.insert("PushCertSignature".into(), b64(&signature).into());
        let mut xml = Vec::new();
        plist::Value::Dictionary(dict)
            .to_writer_xml(&mut xml)
            .unwrap();
        b64(&xml).into_bytes()
    };
    let good_signature = vendor_key.sign_sha256(&csr_der).unwrap();
    let cert = sim
        .issue_push_certificate(&topic, &signed(good_signature.clone()))
        .unwrap();
    assert_eq!(
        apns::certificate_topic(&cert).as_deref(),
        Some(topic.as_str())
    );
    let mut bad_signature = good_signature;
    bad_signature[10] ^= 0x40;
    assert!(matches!(
        sim.issue_push_certificate(&topic, &signed(bad_signature)),
        Err(ApnsError::VendorSignature)
    ));

    // The appliance imports the certificate next to its key and pushes with it.
    let mut conn = connect(
        &sim,
        &Identity {
            cert: cert.clone(),
            key,
        },
    )
    .await;
    let answer = conn.push(&token(), &topic, "M").await;
    assert_eq!(answer.status, 200, "{answer:?}");

    if !openssl_available() {
        eprintln!("openssl not found: skipping the push certificate cross-check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("push.pem"), x509::to_pem(&cert).unwrap()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), sim.push_ca_pem().unwrap()).unwrap();
    let subject = openssl(
        dir.path(),
        &[
            "x509", "-in", "push.pem", "-noout", "-subject", "-nameopt", "RFC2253",
        ],
    );
    assert!(
        subject.contains(&format!("UID={topic}")) && subject.contains(&format!("CN=APSP:{uuid}")),
        "{subject}"
    );
    let purpose = openssl(
        dir.path(),
        &["x509", "-in", "push.pem", "-noout", "-purpose"],
    );
    assert!(purpose.contains("SSL client : Yes"), "{purpose}");
    let verified = openssl(
        dir.path(),
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-purpose",
            "sslclient",
            "push.pem",
        ],
    );
    assert!(verified.contains("OK"), "{verified}");

    // A CSR made by OpenSSL (PEM, then DER), with the key OpenSSL generated.
    openssl(
        dir.path(),
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=openssl push",
            "-keyout",
            "key.pem",
            "-out",
            "req.pem",
        ],
    );
    openssl(
        dir.path(),
        &[
            "req", "-in", "req.pem", "-outform", "DER", "-out", "req.der",
        ],
    );
    let key_pem = std::fs::read_to_string(dir.path().join("key.pem")).unwrap();
    let openssl_key = PrivateKey::from_pkcs8_pem(&key_pem).unwrap();
    for file in ["req.pem", "req.der"] {
        let request = std::fs::read(dir.path().join(file)).unwrap();
        let cert = sim.issue_push_certificate(&topic, &request).unwrap();
        assert_eq!(
            cert.tbs_certificate.subject_public_key_info,
            openssl_key.public_key_info().unwrap()
        );
    }
}

#[tokio::test]
async fn a_push_wakes_the_simulated_device() {
    let fake = support::start().await;
    let client = HttpClient::from_ca_pem(fake.ca_pem().as_bytes()).unwrap();
    let mut device = SimDevice::random(DeviceKind::IPhone).unwrap();
    let profile = device
        .manual_enroll(&client, &format!("{}/enroll/abc", fake.base()))
        .await
        .unwrap();
    device
        .install_profile(&profile, Some(std::slice::from_ref(&fake.ca)))
        .unwrap();
    device.complete_enrollment().await.unwrap();
    let device_token = apns::token_hex(&device.push_token);
    let magic = device.push_magic.clone();

    // A push with another enrollment's magic does not wake the device; when the
    // simulator goes away the wait ends empty-handed.
    let sim = start().await;
    let topic = apns::new_mdm_topic();
    let id = identity(&sim, &topic);
    let mut rx = sim.subscribe(&device_token);
    fake.queue("CMD-IGNORED", "DeviceInformation");
    let pusher = async {
        let mut conn = connect(&sim, &id).await;
        assert_eq!(
            conn.push(&device_token, &topic, "OTHER-MAGIC").await.status,
            200
        );
        drop(conn);
        drop(sim);
    };
    let (woken, ()) = tokio::join!(apns::wake_on_push(&mut rx, &mut device), pusher);
    assert!(woken.unwrap().is_none());

    // The right magic: the device runs its command session.
    let sim = start().await;
    let id = identity(&sim, &topic);
    let mut rx = sim.subscribe(&device_token);
    let pusher = async {
        let mut conn = connect(&sim, &id).await;
        assert_eq!(conn.push(&device_token, &topic, &magic).await.status, 200);
    };
    let (woken, ()) = tokio::join!(apns::wake_on_push(&mut rx, &mut device), pusher);
    let processed = woken.unwrap().expect("the device was not woken");
    assert_eq!(processed.len(), 1);
    assert_eq!(processed[0].command_uuid, "CMD-IGNORED");
    assert_eq!(processed[0].request_type, "DeviceInformation");
    assert_eq!(sim.pushes_for(&device_token).len(), 1);
}

#[tokio::test]
async fn configured_push_ca_and_extra_client_cas() {
    // A push CA shared between two simulators, and a third-party CA trusted as well.
    let shared = ApnsAuthorities::generate().unwrap();
    let elsewhere = ApnsAuthorities::generate().unwrap();
    let sim = ApnsSimulator::start(ApnsConfig {
        authorities: Some(shared.clone()),
        extra_client_cas: vec![elsewhere.push_ca().certificate.clone()],
        ..ApnsConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(
        sim.authorities().push_ca().certificate,
        shared.push_ca().certificate
    );
    let topic = apns::new_mdm_topic();
    let (cert, key) = shared.issue_push_identity(&topic).unwrap();
    let mut conn = connect(&sim, &Identity { cert, key }).await;
    assert_eq!(conn.push(&token(), &topic, "M").await.status, 200);

    let (cert, key) = elsewhere.issue_push_identity(&topic).unwrap();
    let mut conn = connect(&sim, &Identity { cert, key }).await;
    assert_eq!(conn.push(&token(), &topic, "M").await.status, 200);

    // A certificate without a UID must name its topic.
    let key = PrivateKey::generate_rsa2048().unwrap();
    let cert = x509::issue(
        &CertificateParams::new(x509::name(&[("CN", "no topic")]).unwrap())
            .extended_key_usage(&[mdm_sim::oids::KP_CLIENT_AUTH]),
        &key.public_key_info().unwrap(),
        Some(&elsewhere.push_ca().certificate),
        &elsewhere.push_ca().key,
    )
    .unwrap();
    let mut conn = connect(&sim, &Identity { cert, key }).await;
    let answer = conn
        .send(
            Method::POST,
            &format!("/3/device/{}", token()),
            &[("apns-push-type", "mdm".to_owned())],
            mdm_body("M"),
        )
        .await
        .unwrap();
    assert_eq!(
        (answer.status, answer.reason.as_deref()),
        (400, Some("MissingTopic"))
    );
    assert_eq!(conn.push(&token(), &topic, "M").await.status, 200);
}

/// Reads the child's stdout lines on a thread, so the async test can wait for them.
fn line_reader(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

async fn next_line(
    rx: std::sync::mpsc::Receiver<String>,
) -> (String, std::sync::mpsc::Receiver<String>) {
    tokio::task::spawn_blocking(move || {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the simulator printed nothing");
        (line, rx)
    })
    .await
    .unwrap()
}

/// Kills the child on the way out, even when an assertion fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_issues_certificates_and_serves_pushes() {
    let exe = env!("CARGO_BIN_EXE_mdm-apns-sim");
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let key = PrivateKey::generate_rsa2048().unwrap();
    let csr = x509::certificate_request(
        &x509::name(&[("CN", "appliance")]).unwrap(),
        &key,
        None,
        &[],
    )
    .unwrap();
    let csr_path = dir.path().join("push.csr");
    std::fs::write(
        &csr_path,
        der::pem::encode_string(
            "CERTIFICATE REQUEST",
            der::pem::LineEnding::LF,
            &csr.to_der().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let cert_path = dir.path().join("push.pem");
    let topic = apns::new_mdm_topic();
    let out = std::process::Command::new(exe)
        .args(["issue", "--dir"])
        .arg(&ca_dir)
        .arg("--csr")
        .arg(&csr_path)
        .args(["--topic", &topic, "--out"])
        .arg(&cert_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&topic));
    let cert = x509::certificates_from_pem(&std::fs::read(&cert_path).unwrap())
        .unwrap()
        .remove(0);
    assert_eq!(
        apns::certificate_topic(&cert).as_deref(),
        Some(topic.as_str())
    );
    let authorities = ApnsAuthorities::load(&ca_dir).unwrap();
    x509::verify_issued_by(&cert, &authorities.push_ca().certificate).unwrap();

    // A request that is not one refuses cleanly.
    std::fs::write(dir.path().join("junk.csr"), "not a request").unwrap();
    let out = std::process::Command::new(exe)
        .args(["issue", "--dir"])
        .arg(&ca_dir)
        .arg("--csr")
        .arg(dir.path().join("junk.csr"))
        .arg("--out")
        .arg(dir.path().join("junk.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not usable"));

    // Serving with the same directory: the issued certificate is accepted.
    let mut child = KillOnDrop(
        std::process::Command::new(exe)
            .arg("--dir")
            .arg(&ca_dir)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lines = line_reader(child.0.stdout.take().unwrap());
    let (url, lines) = next_line(lines).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();

    let server_ca_pem = std::fs::read(ApnsAuthorities::server_ca_path(&ca_dir)).unwrap();
    let server_ca = x509::certificates_from_pem(&server_ca_pem)
        .unwrap()
        .remove(0);
    assert_eq!(server_ca, authorities.server_ca().certificate);
    // A simulator object only to reuse the client above against the child's port would
    // be a second server; connect by hand instead.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(server_ca.to_der().unwrap()))
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from(cert.to_der().unwrap())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec())),
    )
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into()),
            tcp,
        )
        .await
        .unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let tok = token();
    let answer = send_on(
        sender,
        format!("{url}/3/device/{tok}"),
        Method::POST,
        mdm_headers(&topic),
        Bytes::from(mdm_body("BIN-MAGIC")),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");

    let mut lines = lines;
    let event = loop {
        let (line, rest) = next_line(lines).await;
        lines = rest;
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
            break json;
        }
    };
    assert_eq!(event["event"], "push");
    assert_eq!(event["token"], tok.as_str());
    assert_eq!(event["topic"], topic.as_str());
    assert_eq!(event["mdm"], "BIN-MAGIC");
    assert_eq!(event["apns_id"], answer.apns_id.unwrap().as_str());
    drop(child);
}
