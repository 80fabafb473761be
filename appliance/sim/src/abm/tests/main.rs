//! The ABM simulator over real HTTPS: OAuth sessions, paging, sync, profiles,
//! assignment outcomes, scripted failures, server tokens (cross-checked with the
//! `openssl` CLI) and the `mdm-abm-sim` binary's control API.

// Helpers outside #[test] functions unwrap too: a failure must abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use mdm_sim::abm::{
    AbmSimConfig, AssignOutcome, ContentCipher, DeviceChange, Endpoint, Fault, ProfileStatus,
    ServerId, ServerSpec, TokenOptions,
};
use serde_json::{json, Value};
use support::{start, start_with, Client, RespExt};

#[tokio::test]
async fn oauth_signatures_timestamps_and_nonces_are_checked() {
    let sim = start().await;
    let client = Client::new(&sim);
    let creds = sim.credentials(ServerId(0)).unwrap();

    let ok = client
        .session_raw(&creds, support::unix_now(), "nonce-1")
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let token = ok.json()["auth_session_token"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());
    assert_eq!(ok.header("x-adm-auth-session"), Some(token.as_str()));

    // The same nonce again within the window is a replay.
    let replay = client
        .session_raw(&creds, support::unix_now(), "nonce-1")
        .await;
    assert_eq!(replay.status, 401);
    assert_eq!(replay.text(), "\"UNAUTHORIZED\"");

    let mut wrong = creds.clone();
    wrong.access_secret.push('x');
    assert_eq!(
        client
            .session_raw(&wrong, support::unix_now(), "n2")
            .await
            .status,
        401
    );
    let mut wrong = creds.clone();
    wrong.consumer_secret = "CS_other".into();
    assert_eq!(
        client
            .session_raw(&wrong, support::unix_now(), "n3")
            .await
            .status,
        401
    );
    let mut unknown = creds.clone();
    unknown.consumer_key = "CK_unknown".into();
    assert_eq!(
        client
            .session_raw(&unknown, support::unix_now(), "n4")
            .await
            .status,
        401
    );

    // Six minutes old, or six minutes ahead: outside the ±300 s window.
    assert_eq!(
        client
            .session_raw(&creds, support::unix_now() - 360, "n5")
            .await
            .status,
        401
    );
    assert_eq!(
        client
            .session_raw(&creds, support::unix_now() + 360, "n6")
            .await
            .status,
        401
    );
    // The simulated clock does not move the OAuth window.
    sim.advance(Duration::from_secs(3600));
    assert_eq!(
        client
            .session_raw(&creds, support::unix_now(), "n7")
            .await
            .status,
        200
    );

    // Malformed or unsupported parameters are 400, a foreign realm 401.
    let url = format!("{}/session", sim.base_url());
    let header = mdm_sim::abm::oauth::authorization_header(&url, &creds, support::unix_now(), "n8");
    let cases = [
        (
            header.replace("oauth_version=\"1.0\"", "oauth_version=\"2.0\""),
            400,
        ),
        (header.replace("HMAC-SHA1", "PLAINTEXT"), 400),
        (header.replace(", oauth_nonce=\"n8\"", ""), 400),
        (format!("{header}, oauth_callback=\"oob\""), 400),
        (header.replace("realm=\"ADM\"", "realm=\"Photos\""), 401),
        (
            header.replace("oauth_token=\"AT_", "oauth_token=\"AT_X"),
            401,
        ),
    ];
    for (value, status) in cases {
        let r = client.get_with_auth(&url, &value).await;
        assert_eq!(r.status, status, "{value}");
    }
    let no_header = client.get_with_auth(&url, "").await;
    assert_eq!(no_header.status, 401);

    sim.set_access_denied(ServerId(0), true).unwrap();
    let denied = client.session_raw(&creds, support::unix_now(), "n9").await;
    assert_eq!(
        (denied.status, denied.text().as_str()),
        (403, "\"ACCESS_DENIED\"")
    );
    sim.set_access_denied(ServerId(0), false).unwrap();

    sim.revoke_token(ServerId(0)).unwrap();
    assert_eq!(
        client
            .session_raw(&creds, support::unix_now(), "n10")
            .await
            .status,
        401
    );
    assert_eq!(sim.counters().sessions_issued, 2);
    assert_eq!(sim.counters().count(Endpoint::Session), 17);
}

#[tokio::test]
async fn sessions_are_required_expire_and_rotate() {
    let sim = start_with(AbmSimConfig {
        rotate_session_after: Some(3),
        ..AbmSimConfig::default()
    })
    .await;
    let mut client = Client::new(&sim);
    let none = client.call("GET", "/account", None).await;
    assert_eq!(
        (none.status, none.text().as_str()),
        (401, "\"UNAUTHORIZED\"")
    );
    client.session = Some("bogus".into());
    assert_eq!(client.call("GET", "/account", None).await.status, 401);

    client.login(&sim, ServerId(0)).await;
    let first = client.session.clone().unwrap();
    let a = client.call("GET", "/account", None).await;
    assert_eq!(a.status, 200);
    let account = a.json();
    assert_eq!(account["server_name"], "MDM Server 1");
    assert_eq!(account["org_name"], "Example Organization");
    assert!(account["urls"].as_array().unwrap().len() >= 7);
    assert!(a.header("x-adm-auth-session").is_none());
    assert_eq!(client.call("GET", "/account", None).await.status, 200);
    let third = client.call("GET", "/account", None).await;
    assert_eq!(third.status, 200);
    let rotated = third.header("x-adm-auth-session").unwrap().to_owned();
    assert_ne!(rotated, first);
    assert_eq!(client.session.as_deref(), Some(rotated.as_str()));
    // The replaced session is dead at once (no grace by default).
    let mut stale = client.clone_with_session(&first);
    assert_eq!(stale.call("GET", "/account", None).await.status, 401);
    assert_eq!(client.call("GET", "/account", None).await.status, 200);
    assert_eq!(sim.counters().sessions_rotated, 1);

    // A session the server invalidates answers FORBIDDEN once, then is gone.
    assert_eq!(sim.invalidate_sessions(ServerId(0)).unwrap(), 1);
    let forbidden = client.call("GET", "/account", None).await;
    assert_eq!(
        (forbidden.status, forbidden.text().as_str()),
        (403, "\"FORBIDDEN\"")
    );
    assert_eq!(client.call("GET", "/account", None).await.status, 401);

    // Sessions expire in simulated time.
    client.login(&sim, ServerId(0)).await;
    assert_eq!(client.call("GET", "/account", None).await.status, 200);
    sim.advance(Duration::from_secs(181));
    assert_eq!(client.call("GET", "/account", None).await.status, 401);

    // A product User-Agent and JSON bodies are required.
    client.login(&sim, ServerId(0)).await;
    for (agent, code) in [
        ("", "USER_AGENT_MISSING"),
        ("reqwest/0.12.4", "USER_AGENT_INVALID"),
        ("Go-http-client/2.0", "USER_AGENT_INVALID"),
    ] {
        let r = client
            .call_with(
                "POST",
                "/server/devices",
                Some(b"{}".to_vec()),
                &[("user-agent", agent)],
            )
            .await;
        assert_eq!(r.status, 400, "{agent:?}");
        assert_eq!(r.json()["code"], code);
    }
    let r = client
        .call_with(
            "POST",
            "/server/devices",
            Some(b"{}".to_vec()),
            &[("content-type", "text/plain")],
        )
        .await;
    assert_eq!(r.status, 415);
    let r = client
        .call_with("POST", "/server/devices", Some(b"[1,2]".to_vec()), &[])
        .await;
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("MALFORMED_REQUEST_BODY"))
    );
    assert_eq!(
        client.call("GET", "/nowhere", None).await.text(),
        "NOT_FOUND"
    );
    assert_eq!(client.call("GET", "/devices/sync", None).await.status, 405);
}

#[tokio::test]
async fn fetch_pages_2500_devices_and_exhausts_its_cursor() {
    let sim = start().await;
    let added: BTreeSet<String> = sim
        .add_devices(ServerId(0), 2500)
        .unwrap()
        .into_iter()
        .collect();
    let mut client = Client::new(&sim);
    client.login(&sim, ServerId(0)).await;

    let default_page = client
        .call("POST", "/server/devices", Some(json!({})))
        .await
        .json();
    assert_eq!(default_page["devices"].as_array().unwrap().len(), 100);
    let clamped = client
        .call("POST", "/server/devices", Some(json!({"limit": 5000})))
        .await
        .json();
    assert_eq!(clamped["devices"].as_array().unwrap().len(), 1000);

    let mut seen = BTreeSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let mut body = json!({"limit": 1000});
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let r = client.call("POST", "/server/devices", Some(body)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        let devices = page["devices"].as_array().unwrap();
        pages.push((devices.len(), page["more_to_follow"].as_bool().unwrap()));
        for d in devices {
            assert!(d.get("op_type").is_none());
            assert_eq!(d["profile_status"], "empty");
            assert!(["iOS", "OSX", "tvOS"].contains(&d["os"].as_str().unwrap()));
            assert!(seen.insert(d["serial_number"].as_str().unwrap().to_owned()));
        }
        assert!(page["fetched_until"].as_str().unwrap().ends_with('Z'));
        cursor = Some(page["cursor"].as_str().unwrap().to_owned());
        if !page["more_to_follow"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(pages, vec![(1000, true), (1000, true), (500, false)]);
    assert_eq!(seen, added);

    let again = client
        .call(
            "POST",
            "/server/devices",
            Some(json!({"cursor": cursor.clone().unwrap()})),
        )
        .await;
    assert_eq!(again.status, 400);
    assert_eq!(again.text(), "EXHAUSTED_CURSOR");
    assert!(again
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));

    // The exhausted fetch cursor is where sync starts: nothing happened since.
    let sync = client
        .call(
            "POST",
            "/devices/sync",
            Some(json!({"cursor": cursor.unwrap()})),
        )
        .await
        .json();
    assert_eq!(sync["devices"].as_array().unwrap().len(), 0);
    assert_eq!(sync["more_to_follow"], false);
    assert_eq!(sim.counters().count(Endpoint::FetchDevices), 6);
}

/// Fetches everything on the client's server; returns the serials and the last cursor.
async fn fetch_all(client: &mut Client) -> (Vec<String>, String) {
    let mut serials = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut body = json!({"limit": 1000});
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let page = client
            .call("POST", "/server/devices", Some(body))
            .await
            .json();
        for d in page["devices"].as_array().unwrap() {
            serials.push(d["serial_number"].as_str().unwrap().to_owned());
        }
        cursor = Some(page["cursor"].as_str().unwrap().to_owned());
        if page["more_to_follow"] == false {
            return (serials, cursor.unwrap());
        }
    }
}

/// Syncs from `cursor` until no more follow; returns (serial, op_type, profile_status)
/// in order and the new cursor.
async fn sync_all(
    client: &mut Client,
    cursor: &str,
    limit: usize,
) -> (Vec<(String, String, String)>, String) {
    let mut events = Vec::new();
    let mut cursor = cursor.to_owned();
    loop {
        let r = client
            .call(
                "POST",
                "/devices/sync",
                Some(json!({"cursor": cursor, "limit": limit})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        for d in page["devices"].as_array().unwrap() {
            assert!(d["op_date"].as_str().unwrap().ends_with('Z'));
            events.push((
                d["serial_number"].as_str().unwrap().to_owned(),
                d["op_type"].as_str().unwrap().to_owned(),
                d["profile_status"].as_str().unwrap().to_owned(),
            ));
        }
        cursor = page["cursor"].as_str().unwrap().to_owned();
        if page["more_to_follow"] == false {
            return (events, cursor);
        }
    }
}

#[tokio::test]
async fn sync_reports_changes_and_checks_cursors() {
    let sim = start_with(AbmSimConfig {
        servers: vec![
            ServerSpec::new("Main", "Org A"),
            ServerSpec::new("Other", "Org A"),
        ],
        ..AbmSimConfig::default()
    })
    .await;
    sim.add_devices(ServerId(0), 5).unwrap();
    sim.add_devices(ServerId(1), 1).unwrap();
    let mut main = Client::new(&sim);
    main.login(&sim, ServerId(0)).await;
    let mut other = Client::new(&sim);
    other.login(&sim, ServerId(1)).await;
    let (serials, main_cursor) = fetch_all(&mut main).await;
    let (_, other_cursor) = fetch_all(&mut other).await;
    assert_eq!(serials.len(), 5);

    let change = DeviceChange {
        color: Some("RED".into()),
        ..DeviceChange::default()
    };
    sim.modify_device(&serials[0], &change).unwrap();
    sim.modify_device(
        &serials[0],
        &DeviceChange {
            asset_tag: Some("TAG-1".into()),
            ..DeviceChange::default()
        },
    )
    .unwrap();
    sim.delete_device(&serials[1]).unwrap();
    sim.move_device(&serials[2], ServerId(1)).unwrap();
    let new = sim.add_devices(ServerId(0), 2).unwrap();

    let (events, next) = sync_all(&mut main, &main_cursor, 2).await;
    let expected = vec![
        (
            serials[0].clone(),
            "modified".to_owned(),
            "empty".to_owned(),
        ),
        (
            serials[0].clone(),
            "modified".to_owned(),
            "empty".to_owned(),
        ),
        (serials[1].clone(), "deleted".to_owned(), "empty".to_owned()),
        (serials[2].clone(), "deleted".to_owned(), "empty".to_owned()),
        (new[0].clone(), "added".to_owned(), "empty".to_owned()),
        (new[1].clone(), "added".to_owned(), "empty".to_owned()),
    ];
    assert_eq!(events, expected);
    let (none, _) = sync_all(&mut main, &next, 100).await;
    assert!(none.is_empty());
    // The moved device arrives on the other server as modified, profile removed.
    let (arrived, _) = sync_all(&mut other, &other_cursor, 100).await;
    assert_eq!(
        arrived,
        vec![(
            serials[2].clone(),
            "modified".to_owned(),
            "removed".to_owned()
        )]
    );

    let required = main.call("POST", "/devices/sync", Some(json!({}))).await;
    assert_eq!(
        (required.status, required.text().as_str()),
        (400, "CURSOR_REQUIRED")
    );
    let garbled = main
        .call(
            "POST",
            "/devices/sync",
            Some(json!({"cursor": "MTIzNDU2Nzg5"})),
        )
        .await;
    assert_eq!(
        (garbled.status, garbled.text().as_str()),
        (400, "INVALID_CURSOR")
    );
    let foreign = other
        .call(
            "POST",
            "/devices/sync",
            Some(json!({"cursor": next.clone()})),
        )
        .await;
    assert_eq!(foreign.text(), "INVALID_CURSOR");
    let fetch_with_sync_cursor = main
        .call(
            "POST",
            "/server/devices",
            Some(json!({"cursor": next.clone()})),
        )
        .await;
    assert_eq!(fetch_with_sync_cursor.text(), "EXHAUSTED_CURSOR");

    sim.advance(Duration::from_secs(8 * 24 * 3600));
    main.login(&sim, ServerId(0)).await;
    let expired = main
        .call("POST", "/devices/sync", Some(json!({"cursor": next})))
        .await;
    assert_eq!(
        (expired.status, expired.text().as_str()),
        (400, "EXPIRED_CURSOR")
    );
}

fn anchor_cert_b64() -> String {
    use base64::Engine;
    use der::Encode;
    let key = mdm_sim::keys::PrivateKey::generate_rsa2048().unwrap();
    let cert = mdm_sim::x509::self_signed(
        &mdm_sim::x509::CertificateParams::new(
            mdm_sim::x509::name(&[("CN", "Appliance CA")]).unwrap(),
        )
        .ca(Some(0)),
        &key,
    )
    .unwrap();
    base64::engine::general_purpose::STANDARD.encode(cert.to_der().unwrap())
}

#[tokio::test]
async fn profiles_validate_and_assignments_report_per_device() {
    let sim = start().await;
    let serials = sim.add_devices(ServerId(0), 4).unwrap();
    let mut client = Client::new(&sim);
    client.login(&sim, ServerId(0)).await;

    for (profile, code) in [
        (
            json!({"url": "https://mdm.example.lan/mdm/enroll"}),
            "CONFIG_NAME_REQUIRED",
        ),
        (json!({"profile_name": "P"}), "CONFIG_URL_REQUIRED"),
        (
            json!({"profile_name": "P", "url": "not a url"}),
            "CONFIG_URL_INVALID",
        ),
        (
            json!({"profile_name": "P", "url": "https://m.example/e", "is_mdm_removable": false}),
            "FLAGS_INVALID",
        ),
        (
            json!({"profile_name": "P", "url": "https://m.example/e", "support_email_address": "x"}),
            "SUPPORT_EMAIL_INVALID",
        ),
    ] {
        let r = client.call("POST", "/profile", Some(profile)).await;
        assert_eq!(r.status, 400);
        let body = r.json();
        assert_eq!(body["code"], code);
        assert!(!body["message"].as_str().unwrap().is_empty());
    }

    let anchor = anchor_cert_b64();
    let profile = json!({
        "profile_name": "Staff",
        "url": "https://mdm.example.lan:8443/mdm/enroll",
        "configuration_web_url": "https://mdm.example.lan:8443/mdm/enroll",
        "is_supervised": true,
        "is_mdm_removable": false,
        "await_device_configured": true,
        "anchor_certs": [anchor],
        "skip_setup_items": ["Location", "Siri"],
        "devices": [serials[0]],
    });
    let defined = client.call("POST", "/profile", Some(profile.clone())).await;
    assert_eq!(defined.status, 200, "{}", defined.text());
    let defined = defined.json();
    let uuid = defined["profile_uuid"].as_str().unwrap().to_owned();
    assert_eq!(defined["devices"][&serials[0]], "SUCCESS");
    let again = client.call("POST", "/profile", Some(profile)).await.json();
    assert_ne!(again["profile_uuid"].as_str().unwrap(), uuid);

    let fetched = client
        .call("GET", &format!("/profile?profile_uuid={uuid}"), None)
        .await
        .json();
    assert_eq!(fetched["profile_name"], "Staff");
    assert_eq!(fetched["anchor_certs"][0], anchor.as_str());
    assert_eq!(fetched["profile_uuid"], uuid.as_str());
    assert_eq!(
        client
            .call("GET", "/profile?profile_uuid=NOPE", None)
            .await
            .status,
        404
    );
    let missing = client.call("GET", "/profile", None).await;
    assert_eq!(
        (missing.status, missing.json()["code"].as_str()),
        (400, Some("PROFILE_UUID_REQUIRED"))
    );

    sim.script_assign_outcome(
        &serials[1],
        AssignOutcome::Throttled,
        2,
        Duration::from_secs(120),
    );
    sim.script_assign_outcome(&serials[2], AssignOutcome::Failed, 1, Duration::ZERO);
    let body = json!({"profile_uuid": uuid, "devices": [serials[1], serials[2], serials[3], "C02NOTMINE00"]});
    let r = client
        .call("PUT", "/profile/devices", Some(body.clone()))
        .await;
    assert_eq!(r.status, 200);
    let result = r.json();
    assert_eq!(result["profile_uuid"], uuid.as_str());
    assert_eq!(result["devices"][&serials[1]], "THROTTLED");
    assert_eq!(result["devices"][&serials[2]], "FAILED");
    assert_eq!(result["devices"][&serials[3]], "SUCCESS");
    assert_eq!(result["devices"]["C02NOTMINE00"], "NOT_ACCESSIBLE");
    assert_eq!(result["retry_after_seconds"], 120);
    // Protocol 9 throttles without saying for how long.
    let r9 = client
        .call_with(
            "POST",
            "/profile/devices",
            Some(body.to_string().into_bytes()),
            &[("x-server-protocol-version", "9")],
        )
        .await
        .json();
    assert_eq!(r9["devices"][&serials[1]], "THROTTLED");
    assert!(r9.get("retry_after_seconds").is_none());
    assert_eq!(r9["devices"][&serials[2]], "SUCCESS");

    let too_many: Vec<String> = (0..1001).map(|i| format!("S{i:011}")).collect();
    let r = client
        .call(
            "PUT",
            "/profile/devices",
            Some(json!({"profile_uuid": uuid, "devices": too_many})),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("DEVICE_LIMIT_EXCEEDED"))
    );
    assert_eq!(sim.counters().largest_assign_batch, 1001);
    let r = client
        .call(
            "PUT",
            "/profile/devices",
            Some(json!({"profile_uuid": uuid})),
        )
        .await;
    assert_eq!(r.json()["code"], "DEVICE_ID_REQUIRED");
    let r = client
        .call(
            "PUT",
            "/profile/devices",
            Some(json!({"devices": [serials[0]]})),
        )
        .await;
    assert_eq!(r.json()["code"], "PROFILE_UUID_REQUIRED");
    let r = client
        .call(
            "PUT",
            "/profile/devices",
            Some(json!({"profile_uuid": "UNKNOWN", "devices": [serials[0]]})),
        )
        .await;
    assert_eq!(r.status, 404);

    let details = client
        .call(
            "POST",
            "/devices",
            Some(json!({"devices": [serials[3], "C02NOTMINE00"]})),
        )
        .await
        .json();
    assert_eq!(
        details["devices"][&serials[3]]["response_status"],
        "SUCCESS"
    );
    assert_eq!(
        details["devices"][&serials[3]]["profile_status"],
        "assigned"
    );
    assert_eq!(
        details["devices"][&serials[3]]["profile_uuid"],
        uuid.as_str()
    );
    assert!(details["devices"][&serials[3]]["profile_assign_time"].is_string());
    assert_eq!(
        details["devices"]["C02NOTMINE00"]["response_status"],
        "NOT_ACCESSIBLE"
    );

    // Setup Assistant fetches the profile: pushed.
    let activation = sim.activation(&serials[3]).unwrap();
    assert_eq!(activation["url"], "https://mdm.example.lan:8443/mdm/enroll");
    assert_eq!(activation["await_device_configured"], true);
    assert_eq!(activation["anchor_certs"][0], anchor.as_str());
    let device = sim.device(&serials[3]).unwrap().device;
    assert_eq!(device.profile_status, ProfileStatus::Pushed);
    assert!(device.profile_push_time.is_some());
    assert!(sim.activation("C02NOTMINE00").is_none());

    let removed = client
        .call(
            "DELETE",
            "/profile/devices",
            Some(json!({"devices": [serials[3], "C02NOTMINE00"]})),
        )
        .await
        .json();
    assert_eq!(removed["devices"][&serials[3]], "SUCCESS");
    assert_eq!(removed["devices"]["C02NOTMINE00"], "NOT_ACCESSIBLE");
    assert_eq!(
        sim.device(&serials[3]).unwrap().device.profile_status,
        ProfileStatus::Removed
    );
    assert!(sim.activation(&serials[3]).is_none());

    let disowned = client
        .call(
            "POST",
            "/devices/disown",
            Some(json!({"devices": [serials[0]]})),
        )
        .await
        .json();
    assert_eq!(disowned["devices"][&serials[0]], "SUCCESS");
    assert!(sim.device(&serials[0]).is_none());
    assert_eq!(sim.profiles(ServerId(0)).unwrap().len(), 2);
}

#[tokio::test]
async fn terms_throttling_and_unavailability() {
    let sim = start().await;
    sim.add_devices(ServerId(0), 3).unwrap();
    let mut client = Client::new(&sim);

    sim.set_terms_signed(ServerId(0), false).unwrap();
    client.login(&sim, ServerId(0)).await;
    let r = client.call("GET", "/account", None).await;
    assert_eq!((r.status, r.text().as_str()), (403, "\"T_C_NOT_SIGNED\""));
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    sim.set_terms_signed(ServerId(0), true).unwrap();
    assert_eq!(client.call("GET", "/account", None).await.status, 200);

    sim.inject_fault(
        Fault::TooManyRequests {
            retry_after: Duration::from_secs(7),
        },
        2,
        Some(Endpoint::FetchDevices),
    );
    // Other endpoints are not affected by a fault scoped to fetch.
    assert_eq!(client.call("GET", "/account", None).await.status, 200);
    for _ in 0..2 {
        let r = client
            .call("POST", "/server/devices", Some(json!({})))
            .await;
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("7"));
        assert_eq!(r.json()["code"], "TOO_MANY_REQUESTS");
    }
    assert_eq!(
        client
            .call("POST", "/server/devices", Some(json!({})))
            .await
            .status,
        200
    );

    sim.inject_fault(Fault::ServiceUnavailable, 1, None);
    let r = client.call("GET", "/account", None).await;
    assert_eq!((r.status, r.text().as_str()), (503, "SERVICE_UNAVAILABLE"));
    assert_eq!(client.call("GET", "/account", None).await.status, 200);

    sim.set_delay(Duration::from_millis(150));
    let started = std::time::Instant::now();
    assert_eq!(client.call("GET", "/account", None).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    sim.clear_faults();
}

#[tokio::test]
async fn cooldown_hides_devices_from_fetch_and_sync_until_it_ends() {
    let sim = start().await;
    let serials = sim.add_devices(ServerId(0), 3).unwrap();
    let mut client = Client::new(&sim);
    client.login(&sim, ServerId(0)).await;
    let (_, cursor) = fetch_all(&mut client).await;

    sim.set_cooldown(&serials[0], Duration::from_secs(3600))
        .unwrap();
    sim.modify_device(
        &serials[0],
        &DeviceChange {
            description: Some("HIDDEN".into()),
            ..DeviceChange::default()
        },
    )
    .unwrap();
    let (visible, _) = {
        let mut fresh = Client::new(&sim);
        fresh.login(&sim, ServerId(0)).await;
        fetch_all(&mut fresh).await
    };
    assert_eq!(visible.len(), 2);
    assert!(!visible.contains(&serials[0]));
    let (events, cursor) = sync_all(&mut client, &cursor, 100).await;
    assert!(events.is_empty(), "{events:?}");
    // Still answers device details.
    let details = client
        .call("POST", "/devices", Some(json!({"devices": [serials[0]]})))
        .await
        .json();
    assert_eq!(
        details["devices"][&serials[0]]["response_status"],
        "SUCCESS"
    );
    assert_eq!(details["devices"][&serials[0]]["description"], "HIDDEN");

    sim.advance(Duration::from_secs(2 * 3600));
    client.login(&sim, ServerId(0)).await;
    let (events, _) = sync_all(&mut client, &cursor, 100).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, serials[0]);
    assert_eq!(events[0].1, "modified");
}

#[tokio::test]
async fn server_tokens_decrypt_with_openssl_and_rotate_credentials() {
    use der::Encode;
    let sim = start().await;
    let key = mdm_sim::keys::PrivateKey::generate_rsa2048().unwrap();
    let cert = mdm_sim::x509::self_signed(
        &mdm_sim::x509::CertificateParams::new(
            mdm_sim::x509::name(&[("CN", "mdm-appliance")]).unwrap(),
        )
        .key_usage(&[
            mdm_sim::x509::KeyUsageFlags::KeyEncipherment,
            mdm_sim::x509::KeyUsageFlags::DigitalSignature,
        ]),
        &key,
    )
    .unwrap();
    let cert_der = cert.to_der().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key.pem");
    std::fs::write(&key_path, key.to_pkcs8_pem().unwrap().as_bytes()).unwrap();
    let openssl = support::openssl_available();
    if !openssl {
        eprintln!("openssl not found: checking DER tokens in-process only");
    }

    let mut client = Client::new(&sim);
    let before = sim.credentials(ServerId(0)).unwrap();
    for (i, (cipher, ber)) in [
        (ContentCipher::DesEde3Cbc, false),
        (ContentCipher::Aes128Cbc, true),
        (ContentCipher::Aes256Cbc, false),
        (ContentCipher::Aes256Cbc, true),
        (ContentCipher::DesEde3Cbc, true),
    ]
    .into_iter()
    .enumerate()
    {
        let options = TokenOptions {
            cipher,
            ber,
            new_org: false,
        };
        let p7m = sim.server_token(ServerId(0), &cert_der, &options).unwrap();
        let current = sim.credentials(ServerId(0)).unwrap();
        assert_ne!(current.access_token, before.access_token);
        assert_eq!(current.consumer_key, before.consumer_key);
        let text = String::from_utf8(p7m.clone()).unwrap();
        assert!(text.starts_with(
            "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=\"smime.p7m\""
        ));
        assert!(text.contains("Content-Transfer-Encoding: base64"));
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        // Streamed BER: ContentInfo, [0] and EnvelopedData with indefinite lengths,
        // then version 0 and a definite-length RecipientInfos SET.
        assert_eq!(body.starts_with("MIAGCSqGSIb3DQEHA6CAMIACAQAx"), ber);
        if !ber {
            assert_eq!(
                mdm_sim::abm::open_server_token(&p7m, &key).unwrap(),
                current
            );
        }
        if openssl {
            let path = dir.path().join(format!("token{i}.p7m"));
            std::fs::write(&path, &p7m).unwrap();
            let plain = support::openssl_smime_decrypt(&path, &key_path);
            assert!(
                plain.contains("Content-Type: text/plain;charset=UTF-8"),
                "{plain}"
            );
            assert!(plain.contains("Content-Transfer-Encoding: 7bit"));
            let parsed = mdm_sim::abm::OAuthCredentials::from_token_message(&plain).unwrap();
            assert_eq!(parsed, current, "{cipher:?} ber={ber}");
            assert!(parsed.consumer_key.starts_with("CK_"));
            assert!(parsed.consumer_secret.starts_with("CS_"));
            assert!(parsed.access_token.starts_with("AT_"));
            assert!(parsed.access_secret.starts_with("AS_"));
        }
    }
    // The token in hand works; the one before it no longer does.
    let current = sim.credentials(ServerId(0)).unwrap();
    assert_eq!(
        client
            .session_raw(&before, support::unix_now(), "old")
            .await
            .status,
        401
    );
    assert_eq!(
        client
            .session_raw(&current, support::unix_now(), "new")
            .await
            .status,
        200
    );

    // Renewed by another ABM account: a new consumer key.
    let moved = sim
        .server_token(
            ServerId(0),
            &cert_der,
            &TokenOptions {
                new_org: true,
                ..TokenOptions::default()
            },
        )
        .unwrap();
    let renewed = mdm_sim::abm::open_server_token(&moved, &key).unwrap();
    assert_ne!(renewed.consumer_key, current.consumer_key);
    client.login(&sim, ServerId(0)).await;
    assert_eq!(
        client.call("GET", "/account", None).await.json()["org_name"],
        "Example Organization (new account)"
    );

    // A certificate that is not one changes nothing.
    assert!(sim
        .server_token(ServerId(0), b"nonsense", &TokenOptions::default())
        .is_err());
    assert_eq!(sim.credentials(ServerId(0)).unwrap(), renewed);
}

#[tokio::test]
async fn http2_clients_are_served() {
    let sim = start().await;
    let creds = sim.credentials(ServerId(0)).unwrap();
    let (status, body) = support::http2_session(&sim, &creds).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("auth_session_token"));
}

#[tokio::test]
async fn binary_serves_the_control_api() {
    let dir = tempfile::tempdir().unwrap();
    let child = support::Binary::spawn(dir.path(), &["--servers", "2", "--devices", "30"]);
    let base = child.base_url().to_owned();
    let token = std::fs::read_to_string(dir.path().join("control-token")).unwrap();
    let token = token.trim();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("base-url"))
            .unwrap()
            .trim(),
        base
    );
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let http = mdm_sim::HttpClient::from_ca_pem(&ca).unwrap();
    let control = |method: &'static str, path: String, body: Option<Value>| {
        let http = &http;
        let base = base.clone();
        async move {
            let headers = mdm_sim::http::headers(&[
                ("authorization", &format!("Bearer {token}")),
                ("content-type", "application/json"),
            ])
            .unwrap();
            http.request(
                method.parse().unwrap(),
                &format!("{base}{path}"),
                headers,
                body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
            )
            .await
            .unwrap()
        }
    };

    let unauthorized = http
        .get(&format!("{base}/_sim/state"), http::HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(unauthorized.status, 401);
    let state = control("GET", "/_sim/state".into(), None).await;
    assert_eq!(state.status, 200);
    let state: Value = serde_json::from_slice(&state.body).unwrap();
    assert_eq!(state["servers"].as_array().unwrap().len(), 2);
    assert_eq!(state["servers"][0]["devices"], 30);

    let added = control(
        "POST",
        "/_sim/servers/0/devices".into(),
        Some(json!({"count": 5})),
    )
    .await;
    let added: Value = serde_json::from_slice(&added.body).unwrap();
    let new_serial = added["serials"][0].as_str().unwrap().to_owned();
    let creds = control("GET", "/_sim/servers/0/credentials".into(), None).await;
    let creds =
        mdm_sim::abm::OAuthCredentials::from_token_json(std::str::from_utf8(&creds.body).unwrap())
            .unwrap();

    let mut client = Client::from_parts(&base, &ca);
    client.login_with(&creds).await;
    let (serials, _) = fetch_all(&mut client).await;
    assert_eq!(serials.len(), 35);
    assert!(serials.contains(&new_serial));

    let r = control(
        "POST",
        format!("/_sim/devices/{new_serial}/cooldown"),
        Some(json!({"seconds": 60})),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = control("POST", "/_sim/faults".into(), Some(json!({"fault": "too_many_requests", "count": 1, "endpoint": "account", "retry_after_seconds": 3}))).await;
    assert_eq!(r.status, 200);
    let limited = client.call("GET", "/account", None).await;
    assert_eq!(
        (limited.status, limited.header("retry-after")),
        (429, Some("3"))
    );
    let r = control(
        "POST",
        "/_sim/clock/advance".into(),
        Some(json!({"seconds": 30})),
    )
    .await;
    assert_eq!(r.status, 200);
    let device = control("GET", format!("/_sim/devices/{new_serial}"), None).await;
    let device: Value = serde_json::from_slice(&device.body).unwrap();
    assert_eq!(device["server"], 0);
    assert!(device["cooldown_until"].is_string());

    let key = mdm_sim::keys::PrivateKey::generate_rsa2048().unwrap();
    let cert = mdm_sim::x509::self_signed(
        &mdm_sim::x509::CertificateParams::new(mdm_sim::x509::name(&[("CN", "bench")]).unwrap()),
        &key,
    )
    .unwrap();
    let pem = mdm_sim::x509::to_pem(&cert).unwrap();
    let p7m = control(
        "POST",
        "/_sim/servers/1/token".into(),
        Some(json!({"certificate_pem": pem, "cipher": "des-ede3"})),
    )
    .await;
    assert_eq!(p7m.status, 200);
    assert_eq!(p7m.header("content-type"), Some("application/pkcs7-mime"));
    let issued = mdm_sim::abm::open_server_token(&p7m.body, &key).unwrap();
    let mut second = Client::from_parts(&base, &ca);
    second.login_with(&issued).await;
    assert_eq!(
        second.call("GET", "/account", None).await.json()["server_name"],
        "MDM Server 2"
    );

    let counters = control("GET", "/_sim/counters".into(), None).await;
    let counters: Value = serde_json::from_slice(&counters.body).unwrap();
    assert_eq!(counters["requests"]["session"], 2);
    assert!(counters["requests"]["fetch_devices"].as_u64().unwrap() >= 1);
    let missing = control("POST", "/_sim/devices/NOPE/delete".into(), None).await;
    assert_eq!(missing.status, 404);
    child.stop();
}
