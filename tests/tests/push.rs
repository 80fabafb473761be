//! Pushes end to end: the appliance's pusher talks HTTP/2 to the APNs simulator with the push
//! certificate "Apple" issued for the appliance's CSR; simulated devices wake on their push and
//! fetch their commands.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use appliance_tests::{Appliance, TOPIC};
use mdm_sim::apns::{wake_on_push, ApnsSimulator, Fault};
use mdm_sim::commands::CommandStatus;

struct Site {
    app: Appliance,
    apns: ApnsSimulator,
    _ca_dir: tempfile::TempDir,
}

async fn site() -> Site {
    let apns = ApnsSimulator::start_default().await.unwrap();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("apns-ca.pem");
    std::fs::write(&ca_file, apns.server_ca_pem().unwrap()).unwrap();
    let url = apns.url();
    let app = Appliance::start_with(move |c| {
        c.apns.url = url.clone();
        c.apns.ca_file = Some(ca_file.clone());
    })
    .await;
    // Renew the push certificate through "Apple": same topic, issued for the appliance's CSR.
    let (status, csr) = app
        .api_raw("POST", "/api/v1/push-cert/csr", Vec::new())
        .await;
    assert_eq!(status, 200, "{csr}");
    let cert = apns
        .issue_push_certificate(TOPIC, csr.as_str().unwrap().as_bytes())
        .unwrap();
    let pem = mdm_sim::x509::to_pem(&cert).unwrap();
    let (status, v) = app
        .api_raw("PUT", "/api/v1/push-cert", pem.into_bytes())
        .await;
    assert_eq!(status, 200, "{v}");
    Site {
        app,
        apns,
        _ca_dir: ca_dir,
    }
}

/// The appliance's Prometheus text.
async fn metrics(app: &Appliance) -> String {
    let auth = format!("Bearer {}", app.token);
    let headers = mdm_sim::http::headers(&[("authorization", &auth)]).unwrap();
    let resp = app
        .admin
        .get(&format!("{}/metrics", app.base_url), headers)
        .await
        .unwrap();
    String::from_utf8_lossy(&resp.body).to_string()
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test]
async fn enqueue_push_fetch_result() {
    let s = site().await;
    let mut d = s.app.enroll_manual().await;
    let mut pushes = s.apns.subscribe(&hex::encode(&d.push_token));
    let uuid = s.app.send(&d.udid, "DeviceInformation").await;

    let done = within("push and wake", wake_on_push(&mut pushes, &mut d))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].command_uuid.as_str(), done[0].status),
        (uuid.as_str(), CommandStatus::Acknowledged)
    );
    assert_eq!(
        s.app.command(&uuid).await["deliveries"][0]["status"],
        "Acknowledged"
    );

    // What APNs received is exactly Apple's MDM push.
    let push = &s.apns.pushes_for(&hex::encode(&d.push_token))[0];
    assert_eq!(push.topic, TOPIC);
    assert_eq!(push.push_magic.as_deref(), Some(d.push_magic.as_str()));
    assert_eq!(
        push.headers
            .get("apns-push-type")
            .and_then(|v| v.to_str().ok()),
        Some("mdm")
    );
    let (_, v) = s.app.enrollment(&d.udid).await;
    assert!(v["last_push_at"].is_string(), "{v}");
}

#[tokio::test]
async fn pushes_are_coalesced_per_device() {
    let s = site().await;
    let d = s.app.enroll_manual().await;
    let token = hex::encode(&d.push_token);
    // Hold the first push at APNs so the next commands queue up behind it.
    s.apns.inject_next(1, Fault::Delay(Duration::from_secs(3)));
    s.app.send(&d.udid, "ProfileList").await;
    for _ in 0..20 {
        s.app.send(&d.udid, "SecurityInfo").await;
    }
    within("both pushes", async {
        while s.apns.pushes_for(&token).len() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.apns.pushes_for(&token).len(),
        2,
        "21 commands, two pushes"
    );
}

#[tokio::test]
async fn permanently_invalid_tokens_are_marked_and_not_pushed_again() {
    let s = site().await;
    let mut d = s.app.enroll_manual().await;
    let token = hex::encode(&d.push_token);
    s.apns.mark_unregistered(&token);

    let (status, v) = s
        .app
        .api(
            "POST",
            &format!("/api/v1/enrollments/{}/push", d.udid),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"], "invalid_token", "{v}");
    assert_eq!(v["reason"], "Unregistered");
    let (_, e) = s.app.enrollment(&d.udid).await;
    assert_eq!(e["push_invalid"]["reason"], "Unregistered", "{e}");

    // No more pushes to that token: the device is reported as not pushable.
    let seen = s.apns.exchanges().len();
    let (_, v) = s
        .app
        .api(
            "POST",
            &format!("/api/v1/enrollments/{}/push", d.udid),
            None,
        )
        .await;
    assert_eq!(v["result"], "failed");
    assert_eq!(s.apns.exchanges().len(), seen, "nothing was sent to APNs");

    // The device's next TokenUpdate (a new token) makes it pushable again.
    d.push_token = vec![0x5a; 32];
    s.apns.mark_registered(&hex::encode(&d.push_token));
    d.token_update().await.unwrap();
    assert!(s.app.enrollment(&d.udid).await.1["push_invalid"].is_null());
    let (_, v) = s
        .app
        .api(
            "POST",
            &format!("/api/v1/enrollments/{}/push", d.udid),
            None,
        )
        .await;
    assert_eq!(v["result"], "sent", "{v}");
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let s = site().await;
    let mut d = s.app.enroll_manual().await;
    let mut pushes = s.apns.subscribe(&hex::encode(&d.push_token));
    s.apns.inject_next(
        1,
        Fault::Respond(mdm_sim::apns::Reason::InternalServerError),
    );
    s.app.send(&d.udid, "ProfileList").await;
    let done = within("retried push", wake_on_push(&mut pushes, &mut d))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.len(), 1);
    let statuses: Vec<Option<u16>> = s.apns.exchanges().iter().map(|e| e.status).collect();
    assert_eq!(statuses, [Some(500), Some(200)]);
}

#[tokio::test]
async fn pushes_owed_before_a_restart_are_sent_after_it() {
    let mut s = site().await;
    let d = s.app.enroll_manual().await;
    let token = hex::encode(&d.push_token);
    // APNs refuses everything for now: the command stays queued, the push is owed.
    s.apns.inject_for_token(
        &token,
        Fault::Respond(mdm_sim::apns::Reason::ServiceUnavailable),
        None,
    );
    s.app.send(&d.udid, "ProfileList").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.app.stop().await;
    s.apns.clear_faults();
    let before = s.apns.pushes_for(&token).len();
    assert_eq!(before, 0);
    s.app.restart().await;
    within("push after restart", async {
        while s.apns.pushes_for(&token).is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn push_certificate_lifecycle() {
    let s = site().await;
    let (_, v) = s.app.api("GET", "/api/v1/push-cert", None).await;
    assert_eq!(v["state"], "valid");
    assert_eq!(v["topic"], TOPIC);

    // Expiring within 30 days: a loud state, in the status API and the metrics.
    let (_, csr) = s
        .app
        .api_raw("POST", "/api/v1/push-cert/csr", Vec::new())
        .await;
    let now = std::time::SystemTime::now();
    let soon = s
        .apns
        .authorities()
        .issue_push_certificate_with_validity(
            TOPIC,
            csr.as_str().unwrap().as_bytes(),
            now - Duration::from_secs(3600),
            now + Duration::from_secs(10 * 24 * 3600),
        )
        .unwrap();
    let pem = mdm_sim::x509::to_pem(&soon).unwrap();
    let (status, v) = s
        .app
        .api_raw("PUT", "/api/v1/push-cert", pem.into_bytes())
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "expiring_soon");
    let (_, st) = s.app.api("GET", "/api/v1/status", None).await;
    assert_eq!(st["push_certificate"]["state"], "expiring_soon");
    let text = metrics(&s.app).await;
    assert!(text.contains("mdm_push_certificate_expiring 1"), "{text}");

    // Expired.
    let expired = s
        .apns
        .authorities()
        .issue_push_certificate_with_validity(
            TOPIC,
            csr.as_str().unwrap().as_bytes(),
            now - Duration::from_secs(40 * 24 * 3600),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    let pem = mdm_sim::x509::to_pem(&expired).unwrap();
    let (_, v) = s
        .app
        .api_raw("PUT", "/api/v1/push-cert", pem.into_bytes())
        .await;
    assert_eq!(
        (v["state"].as_str(), v["expired"].as_bool()),
        (Some("expired"), Some(true))
    );

    // Another topic: refused unless forced.
    let other = s
        .apns
        .issue_push_certificate(
            "com.apple.mgmt.External.0b8c7d6e-1111-4222-8333-444455556666",
            csr.as_str().unwrap().as_bytes(),
        )
        .unwrap();
    let pem = mdm_sim::x509::to_pem(&other).unwrap();
    let (status, v) = s
        .app
        .api_raw("PUT", "/api/v1/push-cert", pem.into_bytes())
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("PUSH_TOPIC_CHANGED"))
    );
}

#[tokio::test]
async fn status_shows_the_pusher() {
    let s = site().await;
    let d = s.app.enroll_manual().await;
    let (_, v) = s
        .app
        .api(
            "POST",
            &format!("/api/v1/enrollments/{}/push", d.udid),
            None,
        )
        .await;
    assert_eq!(v["result"], "sent", "{v}");
    let (_, st) = s.app.api("GET", "/api/v1/status", None).await;
    assert_eq!(st["push"]["configured"], true, "{st}");
    assert_eq!(st["push"]["circuit"], "Closed", "{st}");
    assert!(st["push"]["sent"].as_u64().unwrap() >= 1, "{st}");
}

#[tokio::test]
async fn repeated_failures_open_the_circuit_visibly() {
    let s = site().await;
    let d = s.app.enroll_manual().await;
    s.apns.inject_next(
        100,
        Fault::Respond(mdm_sim::apns::Reason::InternalServerError),
    );
    // Each push is retried before it counts as a failure; after the breaker's threshold (5 by
    // default) of consecutive failures, pushes fail fast without reaching APNs.
    let mut failures = 0;
    loop {
        let (_, v) = s
            .app
            .api(
                "POST",
                &format!("/api/v1/enrollments/{}/push", d.udid),
                None,
            )
            .await;
        assert_eq!(v["result"], "failed", "{v}");
        if v["reason"].as_str().unwrap_or_default().contains("circuit") {
            break;
        }
        failures += 1;
        assert!(failures <= 5, "the breaker never opened");
    }
    let seen = s.apns.exchanges().len();
    let (_, v) = s
        .app
        .api(
            "POST",
            &format!("/api/v1/enrollments/{}/push", d.udid),
            None,
        )
        .await;
    assert!(
        v["reason"].as_str().unwrap_or_default().contains("circuit"),
        "{v}"
    );
    assert_eq!(s.apns.exchanges().len(), seen, "open: nothing sent");
    let (_, st) = s.app.api("GET", "/api/v1/status", None).await;
    assert!(st["push"]["circuit"]["Open"].is_object(), "{st}");
    let text = metrics(&s.app).await;
    assert!(text.contains("mdm_push_circuit_open 1"), "{text}");
}
