//! The pusher against a local APNs stand-in over real TLS and HTTP/2 on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mdm_apns::{
    ApnsConfig, ApnsError, ApnsPusher, ApnsRoots, BreakerPolicy, ProxyConfig, ProxyCredentials,
    RetryPolicy,
};
use mdm_service::ports::{CircuitState, PushOutcome, PushProvider};
use support::{message, ApnsServer, ConnectProxy, Pki, ProxyMode, Reply, Seen};
use zeroize::Zeroizing;

const TOPIC: &str = "com.apple.mgmt.External.6f1a9a5c-0000-4000-8000-000000000001";

/// Every test is bounded: a hang fails instead of blocking the suite.
const LIMIT: Duration = Duration::from_secs(60);

fn config(server: &ApnsServer, pki: &Pki) -> ApnsConfig {
    ApnsConfig {
        base_url: server.base_url(),
        roots: ApnsRoots::PemFile(pki.roots_pem()),
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
        // Out of the way unless a test is about it.
        breaker: BreakerPolicy {
            failure_threshold: 10_000,
            open_for: Duration::from_secs(1),
        },
        ..ApnsConfig::default()
    }
}

async fn pusher(server: &ApnsServer, pki: &Pki) -> ApnsPusher {
    let pusher = ApnsPusher::new(config(server, pki)).unwrap();
    pusher.set_identity(Some(pki.identity(TOPIC))).unwrap();
    pusher
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test took too long")
}

/// Requests per token, from the server's record.
fn per_token(seen: &[Seen]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for s in seen {
        *counts.entry(s.token().to_string()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_an_mdm_push_with_apples_headers_and_keeps_the_apns_id() {
    let pki = Pki::new();
    let server = ApnsServer::start(&pki, 100, true).await;
    let pusher = pusher(&server, &pki).await;
    let mut msg = message(1, TOPIC);
    msg.push_magic = "magic \"quoted\" \\ and\nnewline".into();

    let outcomes = bounded(pusher.push(vec![msg.clone()])).await;
    let PushOutcome::Sent { apns_id: Some(id) } = &outcomes[0] else {
        panic!("expected Sent with an apns-id, got {outcomes:?}");
    };
    assert_eq!(id, "00000000-0000-4000-8000-000000000001");

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.path, format!("/3/device/{}", msg.token_hex));
    assert_eq!(
        s.authority.as_deref(),
        Some(&*format!("127.0.0.1:{}", server.addr.port()))
    );
    assert_eq!(s.header("apns-push-type"), Some("mdm"));
    assert_eq!(s.header("apns-topic"), Some(TOPIC));
    assert_eq!(s.header("apns-priority"), Some("10"));
    assert_eq!(s.header("content-type"), Some("application/json"));
    let expiration: u64 = s.header("apns-expiration").unwrap().parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let week = 7 * 24 * 3600;
    assert!(
        expiration > now + week - 120 && expiration <= now + week + 5,
        "{expiration}"
    );
    let body: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(body, serde_json::json!({ "mdm": msg.push_magic }));
    assert_eq!(s.client_cn.as_deref(), Some(&*format!("APSP:{TOPIC}")));

    let status = pusher.status();
    assert!(status.configured);
    assert_eq!(status.circuit, CircuitState::Closed);
    assert_eq!(
        (status.sent, status.invalid_tokens, status.failed),
        (1, 0, 0)
    );
    assert_eq!(status.last_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_class_is_classified_and_only_transient_ones_are_retried() {
    let pki = Pki::new();
    let server = ApnsServer::start(&pki, 100, true).await;
    let pusher = pusher(&server, &pki).await;
    let cases: Vec<(u16, &'static str)> = vec![
        (400, "BadDeviceToken"),
        (400, "DeviceTokenNotForTopic"),
        (410, "Unregistered"),
        (410, "ExpiredToken"),
        (403, "BadCertificate"),
        (403, "BadCertificateEnvironment"),
        (403, "Forbidden"),
        (400, "BadTopic"),
        (400, "TopicDisallowed"),
        (429, "TooManyRequests"),
        (500, "InternalServerError"),
        (503, "ServiceUnavailable"),
        (400, "PayloadEmpty"),
        (400, "BadMessageId"),
        (413, "PayloadTooLarge"),
    ];
    let replies: HashMap<String, (u16, &'static str)> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| (message(i, TOPIC).token_hex, *c))
        .collect();
    server.behave(move |s| {
        let (status, reason) = replies[s.token()];
        Reply::Error(status, reason)
    });
    let messages: Vec<_> = (0..cases.len()).map(|i| message(i, TOPIC)).collect();
    let outcomes = bounded(pusher.push(messages.clone())).await;
    let counts = per_token(&server.seen());

    for (i, ((status, reason), outcome)) in cases.iter().zip(&outcomes).enumerate() {
        let attempts = counts[&messages[i].token_hex];
        match (*status, *reason) {
            (400, "BadDeviceToken" | "DeviceTokenNotForTopic") | (410, _) => {
                assert_eq!(
                    outcome,
                    &PushOutcome::InvalidToken {
                        status: *status,
                        reason: reason.to_string()
                    }
                );
                assert_eq!(attempts, 1, "{reason} must not be retried");
            }
            (403, _) | (400, "BadTopic" | "TopicDisallowed") => {
                assert_eq!(
                    outcome,
                    &PushOutcome::CertificateRejected {
                        status: *status,
                        reason: reason.to_string()
                    }
                );
                assert_eq!(attempts, 1, "{reason} must not be retried");
            }
            (429 | 500 | 503, _) => {
                let PushOutcome::Failed { reason: why } = outcome else {
                    panic!("{reason}: expected Failed, got {outcome:?}");
                };
                assert!(why.contains(reason) && why.contains("3 attempts"), "{why}");
                assert_eq!(attempts, 3, "{reason} must be retried up to max_attempts");
            }
            _ => {
                let PushOutcome::Failed { reason: why } = outcome else {
                    panic!("{reason}: expected Failed, got {outcome:?}");
                };
                assert!(why.contains(reason) && why.contains("bug"), "{why}");
                assert_eq!(attempts, 1, "{reason} must not be retried");
            }
        }
    }
    let status = pusher.status();
    assert_eq!(status.invalid_tokens, 4);
    assert_eq!(status.failed, 11);
    assert!(status.last_error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_answers_are_retried_until_success() {
    let pki = Pki::new();
    let server = ApnsServer::start(&pki, 100, true).await;
    let pusher = pusher(&server, &pki).await;
    let tries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let t = Arc::clone(&tries);
    server.behave(move |s| {
        let mut tries = t.lock().unwrap();
        let n = tries.entry(s.token().to_string()).or_default();
        *n += 1;
        match *n {
            1 => Reply::Error(500, "InternalServerError"),
            2 => Reply::Error(429, "TooManyRequests"),
            _ => Reply::Ok,
        }
    });
    let outcomes = bounded(pusher.push((0..10).map(|i| message(i, TOPIC)).collect())).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, PushOutcome::Sent { .. })),
        "{outcomes:?}"
    );
    assert!(per_token(&server.seen()).values().all(|n| *n == 3));
    assert_eq!(
        server.connections(),
        1,
        "answers with errors keep the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_in_the_middle_of_a_batch_reconnects_and_everything_is_delivered() {
    let pki = Pki::new();
    let server = ApnsServer::start(&pki, 100, true).await;
    let pusher = pusher(&server, &pki).await;
    // Like an APNs node going down: GOAWAY, and 503 Shutdown for what is still arriving.
    server.behave(|s| match (s.conn, s.nth_on_conn) {
        (1, 5) => Reply::GoAway,
        (1, n) if n > 5 => Reply::Error(503, "Shutdown"),
        _ => Reply::Ok,
    });
    let outcomes = bounded(pusher.push((0..50).map(|i| message(i, TOPIC)).collect())).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, PushOutcome::Sent { .. })),
        "{outcomes:?}"
    );
    assert_eq!(server.connections(), 2);
    assert_eq!(pusher.connections_opened(), 2);
    // Later pushes use the new connection.
    let again = bounded(pusher.push(vec![message(99, TOPIC)])).await;
    assert!(matches!(again[0], PushOutcome::Sent { .. }));
    assert_eq!(server.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_by_goaway_is_not_used_again() {
    let pki = Pki::new();
    let server = ApnsServer::start(&pki, 100, true).await;
    let pusher = pusher(&server, &pki).await;
    server.behave(|s| match (s.conn, s.nth_on_conn) {
        (1, 3) => Reply::GoAwayOk,
        _ => Reply::Ok,
    });
    let first = bounded(pusher.push((0..3).map(|i| message(i, TOPIC)).collect())).await;
    assert!(
        first.iter().all(|o| matches!(o, PushOutcome::Sent { .. })),
        "{first:?}"
    );
    // The server closes the connection once its streams are done (a PING round trip).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = bounded(pusher.push((3..13).map(|i| message(i, TOPIC)).collect())).await;
    assert!(
        second.iter().all(|o| matches!(o, PushOutcome::Sent { .. })),
        "{second:?}"
    );
    assert_eq!(server.connections(), 2);
    assert!(server.seen().iter().skip(3).all(|s| s.conn == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_reopened_and_in_flight_pushes_retried() {
    let pki = Pki::new();
    let server = ApnsServer::start(&pki, 100, true).await;
    let pusher = pusher(&server, &pki).await;
    server.behave(|s| {
        if s.conn == 1 && s.nth_on_conn == 3 {
            Reply::Drop
        } else if s.conn == 1 {
            Reply::After(Duration::from_millis(100), Box::new(Reply::Ok))
        } else {
            Reply::Ok
        }
    });
    let outcomes = bounded(pusher.push((0..20).map(|i| message(i, TOPIC)).collect())).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, PushOutcome::Sent { .. })),
        "{outcomes:?}"
    );
    assert_eq!(server.connections(), 2);

    // The service disappearing altogether is a connection error, retried, then reported.
    let port = server.addr.port();
    drop(server);
    // Give the aborted accept loop a moment to release the port.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = bounded(pusher.push(vec![message(1, TOPIC)])).await;
    let PushOutcome::Failed { reason } = &after[0] else {
        panic!("expected Failed, got {after:?}");
    };
    assert!(
        reason.contains("connection") || reason.contains(&port.to_string()),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_times_out_and_is_retried() {
    let pki = Pki::new();
    let server = ApnsServer::start(&pki, 100, true).await;
    let pusher = ApnsPusher::new(ApnsConfig {
        request_timeout: Duration::from_millis(300),
        ..config(&server, &pki)
    })
    .unwrap();
    pusher.set_identity(Some(pki.identity(TOPIC))).unwrap();
    server.behave(|s| {
        if s.conn == 1 && s.nth_on_conn == 1 {
            Reply::After(Duration::from_secs(3), Box::new(Reply::Ok))
        } else {
            Reply::Ok
        }
    });
    let outcomes = bounded(pusher.push(vec![message(1, TOPIC)])).await;
    assert!(
        matches!(outcomes[0], PushOutcome::Sent { .. }),
        "{outcomes:?}"
    );
    assert_eq!(server.requests(), 2);

    server.behave(|_| Reply::After(Duration::from_secs(3), Box::new(Reply::Ok)));
    let outcomes = bounded(pusher.push(vec![message(2, TOPIC)])).await;
    let PushOutcome::Failed { reason } = &outcomes[0] else {
        panic!("expected Failed, got {outcomes:?}");
    };
    assert!(reason.contains("did not answer within 300 ms"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_fails_fast_half_opens_and_closes() {
    let pki = Pki::new();
    let server = ApnsServer::start(&pki, 100, true).await;
    let pusher = ApnsPusher::new(ApnsConfig {
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        breaker: BreakerPolicy {
            failure_threshold: 3,
            open_for: Duration::from_millis(400),
        },
        ..config(&server, &pki)
    })
    .unwrap();
    pusher.set_identity(Some(pki.identity(TOPIC))).unwrap();

    // Dead tokens are per-device news: they never open the circuit.
    server.behave(|_| Reply::Error(410, "Unregistered"));
    for i in 0..5 {
        bounded(pusher.push(vec![message(i, TOPIC)])).await;
    }
    assert_eq!(pusher.status().circuit, CircuitState::Closed);

    server.behave(|_| Reply::Error(500, "InternalServerError"));
    for i in 0..3 {
        let o = bounded(pusher.push(vec![message(i, TOPIC)])).await;
        assert!(
            matches!(&o[0], PushOutcome::Failed { reason } if reason.contains("500")),
            "{o:?}"
        );
    }
    let CircuitState::Open {
        last_error,
        since,
        retry_at,
    } = pusher.status().circuit
    else {
        panic!(
            "expected an open circuit, got {:?}",
            pusher.status().circuit
        );
    };
    assert!(last_error.contains("500"), "{last_error}");
    assert!(retry_at.0 - since.0 >= 400);

    // Open: refused without touching the network.
    let before = server.requests();
    let o = bounded(pusher.push((10..20).map(|i| message(i, TOPIC)).collect())).await;
    assert!(
        o.iter().all(
            |o| matches!(o, PushOutcome::Failed { reason } if reason.contains("circuit open"))
        ),
        "{o:?}"
    );
    assert_eq!(server.requests(), before);

    // After open_for: one probe; it fails and the circuit opens again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let o = bounded(pusher.push(vec![message(30, TOPIC)])).await;
    assert!(
        matches!(&o[0], PushOutcome::Failed { reason } if reason.contains("500")),
        "{o:?}"
    );
    assert_eq!(server.requests(), before + 1);
    assert!(matches!(pusher.status().circuit, CircuitState::Open { .. }));

    // After open_for again: a batch lets exactly the probe through; it succeeds and closes.
    server.behave(|_| Reply::Ok);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let before = server.requests();
    let o = bounded(pusher.push((40..50).map(|i| message(i, TOPIC)).collect())).await;
    let sent = o
        .iter()
        .filter(|o| matches!(o, PushOutcome::Sent { .. }))
        .count();
    assert!(sent >= 1, "{o:?}");
    assert!(
        o.iter().all(|o| match o {
            PushOutcome::Sent { .. } => true,
            PushOutcome::Failed { reason } => reason.contains("half-open"),
            _ => false,
        }),
        "{o:?}"
    );
    assert_eq!(server.requests() - before, sent);
    assert_eq!(pusher.status().circuit, CircuitState::Closed);
    let o = bounded(pusher.push((50..60).map(|i| message(i, TOPIC)).collect())).await;
    assert!(
        o.iter().all(|o| matches!(o, PushOutcome::Sent { .. })),
        "{o:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_certificate_opens_the_breaker_and_a_new_identity_closes_it() {
    let pki = Pki::new();
    let server = ApnsServer::start(&pki, 100, true).await;
    let pusher = ApnsPusher::new(ApnsConfig {
        breaker: BreakerPolicy {
            failure_threshold: 2,
            open_for: Duration::from_secs(3600),
        },
        ..config(&server, &pki)
    })
    .unwrap();
    pusher.set_identity(Some(pki.identity(TOPIC))).unwrap();
    server.behave(|_| Reply::Error(403, "BadCertificate"));
    for i in 0..2 {
        let o = bounded(pusher.push(vec![message(i, TOPIC)])).await;
        assert!(
            matches!(o[0], PushOutcome::CertificateRejected { status: 403, .. }),
            "{o:?}"
        );
    }
    assert!(matches!(pusher.status().circuit, CircuitState::Open { .. }));
    server.behave(|_| Reply::Ok);
    pusher.set_identity(Some(pki.identity(TOPIC))).unwrap();
    assert_eq!(pusher.status().circuit, CircuitState::Closed);
    let o = bounded(pusher.push(vec![message(5, TOPIC)])).await;
    assert!(matches!(o[0], PushOutcome::Sent { .. }), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_go_through_an_http_connect_proxy_with_basic_auth() {
    let pki = Pki::new();
    let server = ApnsServer::start(&pki, 100, true).await;
    // base64("mdm:pr0xy pass")
    let proxy = ConnectProxy::start(ProxyMode::Tunnel {
        authorization: Some("Basic bWRtOnByMHh5IHBhc3M=".into()),
    })
    .await;
    let pusher = ApnsPusher::new(ApnsConfig {
        proxy: Some(ProxyConfig {
            url: proxy.url(),
            basic_auth: Some(ProxyCredentials {
                username: "mdm".into(),
                password: Zeroizing::new("pr0xy pass".into()),
            }),
        }),
        ..config(&server, &pki)
    })
    .unwrap();
    pusher.set_identity(Some(pki.identity(TOPIC))).unwrap();
    let o = bounded(pusher.push((0..20).map(|i| message(i, TOPIC)).collect())).await;
    assert!(
        o.iter().all(|o| matches!(o, PushOutcome::Sent { .. })),
        "{o:?}"
    );
    let heads = proxy.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "one tunnel carries every push: {heads:?}");
    let target = format!("127.0.0.1:{}", server.addr.port());
    assert!(
        heads[0].starts_with(&format!("CONNECT {target} HTTP/1.1\r\n")),
        "{}",
        heads[0]
    );
    assert!(heads[0].contains(&format!("Host: {target}\r\n")));
    assert_eq!(server.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_refuses_gives_a_clear_error() {
    let pki = Pki::new();
    let server = ApnsServer::start(&pki, 100, true).await;
    for (mode, expected) in [
        (ProxyMode::Refuse(403), "403"),
        (
            ProxyMode::Tunnel {
                authorization: Some("Basic c29tZTpvbmU=".into()),
            },
            "wants credentials",
        ),
    ] {
        let proxy = ConnectProxy::start(mode).await;
        let pusher = ApnsPusher::new(ApnsConfig {
            proxy: Some(ProxyConfig {
                url: proxy.url(),
                basic_auth: None,
            }),
            ..config(&server, &pki)
        })
        .unwrap();
        pusher.set_identity(Some(pki.identity(TOPIC))).unwrap();
        let o = bounded(pusher.push(vec![message(1, TOPIC)])).await;
        let PushOutcome::Failed { reason } = &o[0] else {
            panic!("expected Failed, got {o:?}");
        };
        assert!(
            reason.contains("refused CONNECT") && reason.contains(expected),
            "{reason}"
        );
    }
    assert_eq!(server.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_identity_swaps_the_client_certificate() {
    let pki = Pki::new();
    let server = ApnsServer::start(&pki, 100, true).await;
    let pusher = ApnsPusher::new(config(&server, &pki)).unwrap();
    pusher.set_identity(Some(pki.identity("topic.a"))).unwrap();
    let o = bounded(pusher.push(vec![message(1, "topic.a")])).await;
    assert!(matches!(o[0], PushOutcome::Sent { .. }));
    pusher.set_identity(Some(pki.identity("topic.b"))).unwrap();
    let o = bounded(pusher.push(vec![message(2, "topic.b")])).await;
    assert!(matches!(o[0], PushOutcome::Sent { .. }));
    let cns: Vec<_> = server
        .seen()
        .into_iter()
        .map(|s| s.client_cn.unwrap())
        .collect();
    assert_eq!(cns, ["APSP:topic.a", "APSP:topic.b"]);
    assert_eq!(server.connections(), 2);

    // A certificate the server does not accept is a refused certificate, not a transient
    // error; swapping in a good one fixes it.
    pusher
        .set_identity(Some(support::foreign_identity("topic.c")))
        .unwrap();
    let o = bounded(pusher.push(vec![message(3, "topic.c")])).await;
    let PushOutcome::CertificateRejected { status: 0, reason } = &o[0] else {
        panic!("expected CertificateRejected, got {o:?}");
    };
    assert!(reason.contains("refused the push certificate"), "{reason}");
    assert!(server.tls_failures() >= 1);
    pusher.set_identity(Some(pki.identity("topic.a"))).unwrap();
    let o = bounded(pusher.push(vec![message(4, "topic.a")])).await;
    assert!(matches!(o[0], PushOutcome::Sent { .. }), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_push_certificate_pushes_fail_fast() {
    let pki = Pki::new();
    let server = ApnsServer::start(&pki, 100, true).await;
    let pusher = ApnsPusher::new(config(&server, &pki)).unwrap();
    assert!(!pusher.status().configured);
    let o = bounded(pusher.push((0..3).map(|i| message(i, TOPIC)).collect())).await;
    assert_eq!(o.len(), 3);
    for outcome in &o {
        let PushOutcome::Failed { reason } = outcome else {
            panic!("expected Failed, got {outcome:?}");
        };
        assert!(reason.contains("no push certificate"), "{reason}");
    }
    assert_eq!(server.connections(), 0);

    pusher.set_identity(Some(pki.identity(TOPIC))).unwrap();
    let o = bounded(pusher.push(vec![message(1, TOPIC)])).await;
    assert!(matches!(o[0], PushOutcome::Sent { .. }));
    pusher.set_identity(None).unwrap();
    let o = bounded(pusher.push(vec![message(1, TOPIC)])).await;
    assert!(
        matches!(&o[0], PushOutcome::Failed { reason } if reason.contains("no push certificate"))
    );
    let status = pusher.status();
    assert!(!status.configured);
    assert_eq!((status.sent, status.failed), (1, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    let server = ApnsServer::start(&pki, 100, true).await;
    let pusher = ApnsPusher::new(ApnsConfig {
        roots: ApnsRoots::PemFile(other.roots_pem()),
        ..config(&server, &pki)
    })
    .unwrap();
    pusher.set_identity(Some(pki.identity(TOPIC))).unwrap();
    let o = bounded(pusher.push(vec![message(1, TOPIC)])).await;
    let PushOutcome::Failed { reason } = &o[0] else {
        panic!("expected Failed, got {o:?}");
    };
    assert!(reason.contains("TLS handshake"), "{reason}");
    assert_eq!(server.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_pushes_share_one_connection_within_the_servers_stream_limit() {
    let pki = Pki::new();
    let server = ApnsServer::start(&pki, 100, false).await;
    let pusher = pusher(&server, &pki).await;
    let o = bounded(pusher.push((0..2000).map(|i| message(i, TOPIC)).collect())).await;
    assert_eq!(o.len(), 2000);
    assert!(o
        .iter()
        .all(|o| matches!(o, PushOutcome::Sent { apns_id: Some(_) })));
    let ids: std::collections::HashSet<_> = o
        .iter()
        .map(|o| match o {
            PushOutcome::Sent { apns_id } => apns_id.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2000);
    assert_eq!(server.connections(), 1);
    assert_eq!(server.requests(), 2000);
    let peak = server.max_in_flight();
    assert!(
        peak > 1 && peak <= 100,
        "streams in flight peaked at {peak}"
    );
    assert_eq!(pusher.status().sent, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_come_back_in_input_order() {
    let pki = Pki::new();
    let server = ApnsServer::start(&pki, 50, false).await;
    let pusher = pusher(&server, &pki).await;
    server.behave(|s| {
        let n = usize::from_str_radix(s.token(), 16).unwrap();
        if n % 7 == 0 {
            Reply::Error(410, "Unregistered")
        } else if n % 5 == 0 {
            // Slower answers so that completion order differs from input order.
            Reply::After(Duration::from_millis(20), Box::new(Reply::Ok))
        } else {
            Reply::Ok
        }
    });
    let o = bounded(pusher.push((0..500).map(|i| message(i, TOPIC)).collect())).await;
    for (i, outcome) in o.iter().enumerate() {
        if i % 7 == 0 {
            assert!(
                matches!(outcome, PushOutcome::InvalidToken { status: 410, .. }),
                "{i}: {outcome:?}"
            );
        } else {
            assert!(
                matches!(outcome, PushOutcome::Sent { .. }),
                "{i}: {outcome:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_token_is_not_sent() {
    let pki = Pki::new();
    let server = ApnsServer::start(&pki, 100, true).await;
    let pusher = pusher(&server, &pki).await;
    let mut m = message(1, TOPIC);
    m.token_hex = "../../admin".into();
    let o = bounded(pusher.push(vec![m])).await;
    assert!(
        matches!(o[0], PushOutcome::InvalidToken { status: 0, .. }),
        "{o:?}"
    );
    assert_eq!(server.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_connections_share_the_load() {
    let pki = Pki::new();
    let server = ApnsServer::start(&pki, 10, true).await;
    server.behave(|_| Reply::After(Duration::from_millis(5), Box::new(Reply::Ok)));
    let pusher = ApnsPusher::new(ApnsConfig {
        connections: 4,
        ..config(&server, &pki)
    })
    .unwrap();
    pusher.set_identity(Some(pki.identity(TOPIC))).unwrap();
    let o = bounded(pusher.push((0..400).map(|i| message(i, TOPIC)).collect())).await;
    assert!(o.iter().all(|o| matches!(o, PushOutcome::Sent { .. })));
    assert_eq!(server.connections(), 4);
    let mut per_conn = HashMap::<usize, usize>::new();
    for s in server.seen() {
        *per_conn.entry(s.conn).or_default() += 1;
    }
    assert!(per_conn.values().all(|n| *n >= 20), "{per_conn:?}");
}

#[test]
fn roots_must_exist_and_hold_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let err = ApnsPusher::new(ApnsConfig {
        roots: ApnsRoots::PemFile(missing),
        ..ApnsConfig::default()
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            ApnsError::Config(mdm_net::ConfigError::RootsFile { .. })
        ),
        "{err}"
    );

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificates here\n").unwrap();
    let err = ApnsPusher::new(ApnsConfig {
        roots: ApnsRoots::PemFile(empty),
        ..ApnsConfig::default()
    })
    .unwrap_err();
    assert!(
        matches!(err, ApnsError::Config(mdm_net::ConfigError::NoRoots { .. })),
        "{err}"
    );

    let err = ApnsPusher::new(ApnsConfig {
        base_url: "http://api.push.apple.com".into(),
        ..ApnsConfig::default()
    })
    .unwrap_err();
    assert!(
        matches!(err, ApnsError::Config(mdm_net::ConfigError::BaseUrl { .. })),
        "{err}"
    );

    // The production default reads Debian's bundle, where the image has it.
    if std::path::Path::new(mdm_apns::SYSTEM_CA_BUNDLE).exists() {
        ApnsPusher::new(ApnsConfig::default()).unwrap();
    }
}

#[test]
fn identities_are_checked_when_set() {
    let pki = Pki::new();
    let pusher = ApnsPusher::new(ApnsConfig {
        roots: ApnsRoots::PemFile(pki.roots_pem()),
        ..ApnsConfig::default()
    })
    .unwrap();
    let good = pki.identity(TOPIC);
    let other = pki.identity(TOPIC);
    let mismatched = mdm_service::ports::PushIdentity {
        cert_chain_der: good.cert_chain_der.clone(),
        key_pkcs8_der: other.key_pkcs8_der.clone(),
        topic: TOPIC.into(),
    };
    let err = pusher.set_push_identity(Some(mismatched)).unwrap_err();
    assert!(matches!(err, ApnsError::KeyMismatch), "{err}");
    let empty = mdm_service::ports::PushIdentity {
        cert_chain_der: vec![],
        key_pkcs8_der: good.key_pkcs8_der.clone(),
        topic: TOPIC.into(),
    };
    assert!(matches!(
        pusher.set_push_identity(Some(empty)),
        Err(ApnsError::EmptyChain)
    ));
    assert!(
        !pusher.status().configured,
        "a refused identity is not installed"
    );
    pusher.set_push_identity(Some(good)).unwrap();
    assert!(pusher.status().configured);
}
