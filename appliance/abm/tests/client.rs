//! The ABM client against a scripted local HTTPS server: session handling, headers, error
//! mapping, retries, timeouts and the proxy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use mdm_abm::{
    AbmClientConfig, AbmHttpClient, AbmHttpConnector, ProxyConfig, ProxyCredentials, RetryPolicy,
};
use mdm_proto::abm::Profile;
use mdm_service::ports::{AbmClient, AbmConnector, AbmEndpoint, AbmError};
use serde_json::json;
use support::{token, AbmServer, Answer, ConnectProxy, Pki};
use zeroize::Zeroizing;

/// Fast retries, a short timeout: the tests wait for nothing longer than they must.
fn config() -> AbmClientConfig {
    AbmClientConfig {
        timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            max_total_wait: Duration::from_secs(10),
        },
        ..AbmClientConfig::default()
    }
}

fn endpoint(server: &AbmServer, pki: &Pki) -> AbmEndpoint {
    AbmEndpoint {
        base_url: server.url(),
        ca_pem: Some(pki.ca_pem.clone()),
    }
}

fn client_with(server: &AbmServer, pki: &Pki, config: AbmClientConfig) -> AbmHttpClient {
    AbmHttpConnector::new(config)
        .connect(&endpoint(server, pki), &token())
        .unwrap()
}

async fn setup() -> (Pki, AbmServer, AbmHttpClient) {
    let pki = Pki::new();
    let server = AbmServer::start(&pki, "").await;
    let client = client_with(&server, &pki, config());
    (pki, server, client)
}

fn account_json() -> serde_json::Value {
    json!({
        "server_name": "Appliance", "server_uuid": "677cd8b2-1d4f-4e1b-8a3e-2b3c4d5e6f70",
        "admin_id": "admin@example.org", "org_name": "Example School",
        "org_email": "it@example.org", "org_phone": "+1 555 0100",
        "org_address": "1 Main St", "org_id": "1234", "org_type": "edu",
        "org_version": "v2", "urls": [{"uri": "/server/devices", "http_method": ["POST"],
        "limit": {"default": 100, "maximum": 1000}}]
    })
}

fn page_json(cursor: &str) -> serde_json::Value {
    json!({
        "cursor": cursor, "more_to_follow": false, "fetched_until": "2026-01-01T00:00:00Z",
        "devices": [{"serial_number": "C02ABC", "model": "MacBook Air", "os": "OSX",
                      "device_family": "Mac", "profile_status": "empty", "new_field": 1}]
    })
}

fn assert_oauth_ok(server: &AbmServer) {
    let sessions = server.calls("/session");
    assert!(!sessions.is_empty());
    for s in sessions {
        assert_eq!(s.oauth_error, None);
        assert_eq!(s.method, "GET");
    }
}

#[tokio::test]
async fn calls_carry_the_session_and_documented_headers() {
    let (_pki, server, client) = setup().await;
    server.script("/account", [Answer::json(200, account_json())]);
    server.script("/server/devices", [Answer::json(200, page_json("c1"))]);

    let account = client.account().await.unwrap();
    assert_eq!(account.org_name, "Example School");
    assert_eq!(account.urls[0].limit.as_ref().unwrap().maximum, 1000);
    let page = client.fetch_devices(None, 100).await.unwrap();
    assert_eq!(page.cursor, "c1");
    assert_eq!(page.devices[0].serial_number, "C02ABC");

    assert_oauth_ok(&server);
    let seen = server.seen();
    let paths: Vec<_> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("GET", "/session"),
            ("GET", "/account"),
            ("POST", "/server/devices")
        ]
    );
    for s in &seen {
        assert_eq!(s.header("x-server-protocol-version"), Some("10"));
        assert_eq!(s.header("accept"), Some("application/json"));
        assert_eq!(s.header("user-agent"), Some(mdm_abm::DEFAULT_USER_AGENT));
        assert!(s
            .header("user-agent")
            .unwrap()
            .starts_with("mdm-appliance/"));
    }
    assert_eq!(seen[0].header("x-adm-auth-session"), None);
    assert_eq!(seen[1].header("x-adm-auth-session"), Some("session-1"));
    assert_eq!(
        seen[1].header("content-type"),
        None,
        "no body, no content type"
    );
    assert_eq!(
        seen[1].header("authorization"),
        None,
        "OAuth only at /session"
    );
    assert_eq!(seen[2].header("x-adm-auth-session"), Some("session-1"));
    assert_eq!(
        seen[2].header("content-type"),
        Some("application/json;charset=UTF8")
    );
    assert_eq!(seen[2].json(), json!({"limit": 100}));
    // One kept-alive connection carried all three.
    assert_eq!(server.connections(), 1);
    assert!(seen.iter().all(|s| s.conn == 1));
}

#[tokio::test]
async fn a_connection_the_server_closed_is_not_reused() {
    let (_pki, server, client) = setup().await;
    server.script(
        "/account",
        [
            Answer::json(200, account_json()).header("Connection", "close"),
            Answer::json(200, account_json()),
        ],
    );
    client.account().await.unwrap();
    // Give the closing connection a moment to be noticed; the call must work either way.
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.account().await.unwrap();
    let calls = server.calls("/account");
    assert_eq!(calls.len(), 2);
    assert_ne!(calls[0].conn, calls[1].conn);
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn every_endpoint_sends_what_apple_documents() {
    let (_pki, server, client) = setup().await;
    server.script("/devices/sync", [Answer::json(200, page_json("c2"))]);
    server.script(
        "/devices",
        [Answer::json(
            200,
            json!({"devices": {"C02ABC": {"serial_number": "C02ABC", "response_status": "SUCCESS"}}}),
        )],
    );
    server.script(
        "/profile",
        [Answer::json(
            200,
            json!({"profile_uuid": "P1", "devices": {}}),
        )],
    );
    server.script(
        "/profile/devices",
        [
            Answer::json(
                200,
                json!({"profile_uuid": "P1", "devices": {"A": "SUCCESS", "B": "THROTTLED"},
                       "retry_after_seconds": 3600}),
            ),
            Answer::json(200, json!({"devices": {"A": "SUCCESS"}})),
        ],
    );
    server.script(
        "/devices/disown",
        [Answer::json(200, json!({"devices": {"A": "SUCCESS"}}))],
    );

    let page = client.sync_devices("c1".into(), 500).await.unwrap();
    assert_eq!(page.cursor, "c2");
    let details = client.device_details(vec!["C02ABC".into()]).await.unwrap();
    assert_eq!(details.devices["C02ABC"].response_status, "SUCCESS");
    let defined = client
        .define_profile(Profile {
            profile_name: "Staff".into(),
            url: Some("https://mdm.lan/mdm/enroll".into()),
            ..Profile::default()
        })
        .await
        .unwrap();
    assert_eq!(defined.profile_uuid, "P1");
    let assigned = client
        .assign_profile("P1".into(), vec!["A".into(), "B".into()])
        .await
        .unwrap();
    assert_eq!(assigned.devices["B"], "THROTTLED");
    assert_eq!(assigned.retry_after_seconds, Some(3600));
    let removed = client.remove_profile(vec!["A".into()]).await.unwrap();
    assert_eq!(removed.devices["A"], "SUCCESS");
    let disowned = client.disown_devices(vec!["A".into()]).await.unwrap();
    assert_eq!(disowned.devices["A"], "SUCCESS");

    let seen = server.seen();
    let calls: Vec<_> = seen
        .iter()
        .skip(1)
        .map(|s| (s.method.clone(), s.path.clone(), s.json()))
        .collect();
    assert_eq!(
        calls,
        [
            (
                "POST".into(),
                "/devices/sync".into(),
                json!({"cursor": "c1", "limit": 500})
            ),
            (
                "POST".into(),
                "/devices".into(),
                json!({"devices": ["C02ABC"]})
            ),
            (
                "POST".into(),
                "/profile".into(),
                json!({"profile_name": "Staff", "url": "https://mdm.lan/mdm/enroll"})
            ),
            (
                "PUT".into(),
                "/profile/devices".into(),
                json!({"profile_uuid": "P1", "devices": ["A", "B"]})
            ),
            (
                "DELETE".into(),
                "/profile/devices".into(),
                json!({"devices": ["A"]})
            ),
            (
                "POST".into(),
                "/devices/disown".into(),
                json!({"devices": ["A"]})
            ),
        ]
    );
}

#[tokio::test]
async fn a_session_in_an_answer_replaces_the_old_one() {
    let (_pki, server, client) = setup().await;
    server.script(
        "/account",
        [
            Answer::json(200, account_json()).header("X-ADM-Auth-Session", "rotated-7"),
            Answer::json(200, account_json()),
        ],
    );
    client.account().await.unwrap();
    client.account().await.unwrap();
    let calls = server.calls("/account");
    assert_eq!(calls[0].header("x-adm-auth-session"), Some("session-1"));
    assert_eq!(calls[1].header("x-adm-auth-session"), Some("rotated-7"));
    assert_eq!(server.calls("/session").len(), 1);
}

#[tokio::test]
async fn a_refused_session_is_renewed_once_and_the_call_replayed() {
    for refusal in [
        Answer::text(401, "UNAUTHORIZED"),
        Answer::text(403, "FORBIDDEN"),
        Answer::json(
            403,
            json!({"code": "FORBIDDEN", "message": "session expired"}),
        ),
    ] {
        let (_pki, server, client) = setup().await;
        server.script(
            "/devices/sync",
            [refusal.clone(), Answer::json(200, page_json("c9"))],
        );
        let page = client.sync_devices("c8".into(), 10).await.unwrap();
        assert_eq!(page.cursor, "c9", "{refusal:?}");

        assert_oauth_ok(&server);
        assert_eq!(server.calls("/session").len(), 2, "{refusal:?}");
        let calls = server.calls("/devices/sync");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].header("x-adm-auth-session"), Some("session-1"));
        assert_eq!(calls[1].header("x-adm-auth-session"), Some("session-2"));
        assert_eq!(calls[0].body, calls[1].body, "the same request is replayed");
    }
}

#[tokio::test]
async fn a_session_refused_twice_is_access_denied() {
    let (_pki, server, client) = setup().await;
    server.script(
        "/account",
        [
            Answer::text(401, "UNAUTHORIZED"),
            Answer::text(401, "UNAUTHORIZED"),
        ],
    );
    let err = client.account().await.unwrap_err();
    assert!(matches!(err, AbmError::AccessDenied { .. }), "{err}");
    assert_eq!(server.calls("/session").len(), 2, "renewed once only");
    assert_eq!(server.calls("/account").len(), 2);
}

#[tokio::test]
async fn credentials_refused_at_session_are_access_denied() {
    let (_pki, server, client) = setup().await;
    server.script("/session", [Answer::text(401, "UNAUTHORIZED")]);
    let err = client.account().await.unwrap_err();
    assert!(matches!(err, AbmError::AccessDenied { .. }), "{err}");
    assert_eq!(err.code(), "ABM_ACCESS_DENIED");
    assert!(server.calls("/account").is_empty());

    // The next call tries again with a fresh signature (and nonce).
    server.script("/account", [Answer::json(200, account_json())]);
    client.account().await.unwrap();
    assert_oauth_ok(&server);
    assert_eq!(server.calls("/session").len(), 2);

    // Terms not accepted already show at /session.
    let (_pki, server, client) = setup().await;
    server.script("/session", [Answer::json(403, json!("T_C_NOT_SIGNED"))]);
    let err = client.account().await.unwrap_err();
    assert_eq!(err, AbmError::TermsNotSigned);
}

#[tokio::test]
async fn a_token_apple_does_not_know_fails_the_signature_check() {
    let (pki, server, _client) = setup().await;
    let mut wrong = token();
    wrong.access_secret = "AS_not-the-right-one".into();
    let client = AbmHttpConnector::new(config())
        .connect(&endpoint(&server, &pki), &wrong)
        .unwrap();
    let err = client.account().await.unwrap_err();
    assert!(matches!(err, AbmError::AccessDenied { .. }), "{err}");
    let session = &server.calls("/session")[0];
    assert!(
        session
            .oauth_error
            .as_deref()
            .unwrap()
            .contains("does not verify"),
        "{session:?}"
    );
}

#[tokio::test]
async fn terms_not_signed_is_final() {
    let (_pki, server, client) = setup().await;
    server.script("/account", [Answer::json(403, json!("T_C_NOT_SIGNED"))]);
    let err = client.account().await.unwrap_err();
    assert_eq!(err, AbmError::TermsNotSigned);
    assert_eq!(
        server.calls("/account").len(),
        1,
        "neither retried nor renewed"
    );
    assert_eq!(server.calls("/session").len(), 1);
}

#[tokio::test]
async fn error_bodies_in_every_shape_map_to_errors() {
    let (_pki, server, client) = setup().await;
    let cases = [
        (
            Answer::text(400, "EXHAUSTED_CURSOR"),
            AbmError::CursorExhausted,
        ),
        (
            Answer::json(400, json!("EXPIRED_CURSOR")),
            AbmError::CursorExpired,
        ),
        (
            Answer::json(
                400,
                json!({"code": "INVALID_CURSOR", "message": "unknown cursor"}),
            ),
            AbmError::CursorInvalid,
        ),
        (
            Answer::json(
                400,
                json!({"code": "CONFIG_URL_REQUIRED", "message": "url is required"}),
            ),
            AbmError::Rejected {
                status: 400,
                code: "CONFIG_URL_REQUIRED".into(),
                message: "url is required".into(),
            },
        ),
        (
            Answer::text(403, "ACCESS_DENIED"),
            AbmError::AccessDenied {
                detail: "HTTP 403 ACCESS_DENIED".into(),
            },
        ),
        (
            Answer::json(404, json!("DEVICE_ID_NOT_FOUND")),
            AbmError::Rejected {
                status: 404,
                code: "DEVICE_ID_NOT_FOUND".into(),
                message: String::new(),
            },
        ),
        (
            Answer::text(400, "The request could not be understood."),
            AbmError::Rejected {
                status: 400,
                code: String::new(),
                message: "The request could not be understood.".into(),
            },
        ),
    ];
    let count = cases.len();
    for (answer, expected) in cases {
        server.script("/server/devices", [answer.clone()]);
        let err = client
            .fetch_devices(Some("c1".into()), 100)
            .await
            .unwrap_err();
        assert_eq!(err, expected, "{answer:?}");
    }
    assert_eq!(
        server.calls("/server/devices").len(),
        count,
        "4xx answers are never retried"
    );
    assert_eq!(server.calls("/session").len(), 1);
}

#[tokio::test]
async fn throttling_waits_for_retry_after_then_succeeds() {
    let (_pki, server, client) = setup().await;
    server.script(
        "/account",
        [
            Answer::text(429, "TOO_MANY_REQUESTS").header("Retry-After", "1"),
            Answer::json(200, account_json()),
        ],
    );
    let started = Instant::now();
    client.account().await.unwrap();
    // A lower bound only: the client may not come back before Apple said it could.
    assert!(started.elapsed() >= Duration::from_millis(950));
    assert_eq!(server.calls("/account").len(), 2);
}

#[tokio::test]
async fn throttling_beyond_the_waiting_budget_is_reported_at_once() {
    let (_pki, server, client) = setup().await;
    server.script(
        "/account",
        [Answer::text(429, "TOO_MANY_REQUESTS").header("Retry-After", "3600")],
    );
    let started = Instant::now();
    let err = client.account().await.unwrap_err();
    assert_eq!(
        err,
        AbmError::Throttled {
            retry_after_seconds: Some(3600)
        }
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(server.calls("/account").len(), 1);

    // Throttled on every attempt, without a Retry-After.
    server.script(
        "/account",
        (0..4).map(|_| Answer::text(429, "TOO_MANY_REQUESTS")),
    );
    let err = client.account().await.unwrap_err();
    assert_eq!(
        err,
        AbmError::Throttled {
            retry_after_seconds: None
        }
    );
    assert_eq!(server.calls("/account").len(), 1 + 4);
}

#[tokio::test]
async fn unavailable_is_retried_then_succeeds_or_reported() {
    let (_pki, server, client) = setup().await;
    server.script(
        "/devices/sync",
        [
            Answer::text(503, "Service Unavailable"),
            Answer::json(500, json!({"code": "INTERNAL_ERROR"})),
            Answer::text(503, "Service Unavailable"),
            Answer::json(200, page_json("c5")),
        ],
    );
    let page = client.sync_devices("c4".into(), 100).await.unwrap();
    assert_eq!(page.cursor, "c5");
    let calls = server.calls("/devices/sync");
    assert_eq!(calls.len(), 4);
    assert!(calls.iter().all(|c| c.body == calls[0].body));

    server.script(
        "/devices/sync",
        (0..4).map(|_| Answer::json(503, json!("SERVICE_UNAVAILABLE"))),
    );
    let err = client.sync_devices("c5".into(), 100).await.unwrap_err();
    assert_eq!(
        err,
        AbmError::Unavailable {
            status: 503,
            code: "SERVICE_UNAVAILABLE".into()
        }
    );
    assert_eq!(server.calls("/devices/sync").len(), 4 + 4, "max_attempts");
}

#[tokio::test]
async fn a_hung_answer_times_out_and_is_retried_on_a_new_connection() {
    let pki = Pki::new();
    let server = AbmServer::start(&pki, "").await;
    let client = client_with(
        &server,
        &pki,
        AbmClientConfig {
            timeout: Duration::from_millis(300),
            ..config()
        },
    );
    server.script(
        "/account",
        [Answer::hang(), Answer::json(200, account_json())],
    );
    client.account().await.unwrap();
    let calls = server.calls("/account");
    assert_eq!(calls.len(), 2);
    assert_ne!(
        calls[0].conn, calls[1].conn,
        "the hung connection is abandoned"
    );

    server.script("/account", (0..4).map(|_| Answer::hang()));
    let err = client.account().await.unwrap_err();
    assert!(
        matches!(&err, AbmError::Transport { message } if message.contains("300 ms")),
        "{err}"
    );
    assert_eq!(server.calls("/account").len(), 2 + 4);
}

#[tokio::test]
async fn an_undecodable_success_is_a_protocol_error() {
    let (_pki, server, client) = setup().await;
    server.script(
        "/account",
        [
            Answer::text(200, "<html>maintenance</html>"),
            Answer::json(200, json!({"org_name": 5})),
        ],
    );
    let err = client.account().await.unwrap_err();
    assert!(
        matches!(&err, AbmError::Protocol { message } if message.contains("GET /account")),
        "{err}"
    );
    let err = client.account().await.unwrap_err();
    assert!(matches!(err, AbmError::Protocol { .. }), "{err}");
    assert_eq!(server.calls("/account").len(), 2, "not retried");

    let (_pki, server, client) = setup().await;
    server.script("/session", [Answer::json(200, json!({}))]);
    let err = client.account().await.unwrap_err();
    assert!(
        matches!(&err, AbmError::Protocol { message } if message.contains("auth_session_token")),
        "{err}"
    );
}

#[tokio::test]
async fn concurrent_calls_share_one_session() {
    let (_pki, server, client) = setup().await;
    server.script(
        "/account",
        (0..8).map(|_| Answer::json(200, account_json())),
    );
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.account().await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(server.calls("/session").len(), 1);
    assert_eq!(server.calls("/account").len(), 8);
}

#[tokio::test]
async fn calls_go_through_an_http_connect_proxy() {
    let pki = Pki::new();
    let server = AbmServer::start(&pki, "").await;
    // base64("mdm:pr0xy pass")
    let proxy = ConnectProxy::start(Some("Basic bWRtOnByMHh5IHBhc3M=".into())).await;
    let client = client_with(
        &server,
        &pki,
        AbmClientConfig {
            proxy: Some(ProxyConfig {
                url: proxy.url(),
                basic_auth: Some(ProxyCredentials {
                    username: "mdm".into(),
                    password: Zeroizing::new("pr0xy pass".into()),
                }),
            }),
            ..config()
        },
    );
    server.script("/account", [Answer::json(200, account_json())]);
    client.account().await.unwrap();
    assert_oauth_ok(&server);
    let heads = proxy.heads.lock().unwrap().clone();
    let target = format!("127.0.0.1:{}", server.addr.port());
    assert_eq!(heads.len(), 1, "one tunnel for both calls: {heads:?}");
    assert!(
        heads[0].starts_with(&format!("CONNECT {target} HTTP/1.1\r\n")),
        "{}",
        heads[0]
    );

    // Wrong credentials: the proxy refuses, which is a transport failure naming it.
    let refusing = ConnectProxy::start(Some("Basic c29tZTpvbmU=".into())).await;
    let client = client_with(
        &server,
        &pki,
        AbmClientConfig {
            proxy: Some(ProxyConfig {
                url: refusing.url(),
                basic_auth: None,
            }),
            ..config()
        },
    );
    let err = client.account().await.unwrap_err();
    assert!(
        matches!(&err, AbmError::Transport { message } if message.contains("refused CONNECT") && message.contains("wants credentials")),
        "{err}"
    );
}

#[tokio::test]
async fn a_path_prefix_is_kept_and_signed() {
    let pki = Pki::new();
    let server = AbmServer::start(&pki, "/abm/v1").await;
    let client = client_with(&server, &pki, config());
    server.script("/account", [Answer::json(200, account_json())]);
    client.account().await.unwrap();
    // The server verified the signature over https://127.0.0.1:PORT/abm/v1/session.
    assert_oauth_ok(&server);
    assert_eq!(server.calls("/account").len(), 1);
}

#[tokio::test]
async fn unreachable_or_untrusted_servers_are_transport_errors() {
    let pki = Pki::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let client = AbmHttpConnector::new(config())
        .connect(
            &AbmEndpoint {
                base_url: format!("https://127.0.0.1:{port}"),
                ca_pem: Some(pki.ca_pem.clone()),
            },
            &token(),
        )
        .unwrap();
    let err = client.account().await.unwrap_err();
    assert!(
        matches!(&err, AbmError::Transport { message } if message.contains("cannot connect")),
        "{err}"
    );
    assert_eq!(err.code(), "ABM_UNREACHABLE");

    // A server whose certificate does not chain to the configured roots.
    let server = AbmServer::start(&pki, "").await;
    let other = Pki::new();
    let client = AbmHttpConnector::new(config())
        .connect(&endpoint(&server, &other), &token())
        .unwrap();
    let err = client.account().await.unwrap_err();
    assert!(
        matches!(&err, AbmError::Transport { message } if message.contains("TLS handshake")),
        "{err}"
    );
    assert!(server.seen().is_empty());
}

#[test]
fn connect_checks_the_settings() {
    let pki = Pki::new();
    let connector = AbmHttpConnector::new(config());
    let ok = AbmEndpoint {
        base_url: "https://mdmenrollment.apple.com".into(),
        ca_pem: Some(pki.ca_pem.clone()),
    };
    assert!(connector.connect(&ok, &token()).is_ok());

    let bad = |endpoint: AbmEndpoint, config: AbmClientConfig, expected: &str| {
        let err = AbmHttpConnector::new(config)
            .connect(&endpoint, &token())
            .unwrap_err();
        assert!(
            matches!(&err, AbmError::Config { message } if message.contains(expected)),
            "{err}"
        );
        assert_eq!(err.code(), "ABM_CONFIG");
    };
    bad(
        AbmEndpoint {
            base_url: "http://mdmenrollment.apple.com".into(),
            ..ok.clone()
        },
        config(),
        "https",
    );
    bad(
        AbmEndpoint {
            ca_pem: Some("not a certificate".into()),
            ..ok.clone()
        },
        config(),
        "no usable trusted root",
    );
    bad(
        ok.clone(),
        AbmClientConfig {
            user_agent: " ".into(),
            ..config()
        },
        "User-Agent",
    );
    bad(
        ok.clone(),
        AbmClientConfig {
            proxy: Some(ProxyConfig {
                url: "https://proxy.lan:3128".into(),
                basic_auth: None,
            }),
            ..config()
        },
        "proxy URL",
    );
    let mut incomplete = token();
    incomplete.access_secret.clear();
    let err = connector.connect(&ok, &incomplete).unwrap_err();
    assert!(
        matches!(&err, AbmError::Config { message } if message.contains("access_secret")),
        "{err}"
    );
    // The client's Debug shows no secret.
    let client = connector.connect(&ok, &token()).unwrap();
    let debug = format!("{client:?}");
    assert!(!debug.contains("CS_") && !debug.contains("AS_") && !debug.contains("AT_"));
}
