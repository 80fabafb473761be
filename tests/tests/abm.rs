//! Apple Business Manager end to end: the real daemon against the ABM simulator, and a
//! simulated device doing Automated Device Enrollment with the profile it was assigned.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use appliance_tests::Appliance;
use base64::Engine as _;
use mdm_sim::abm::{
    AbmSimConfig, AbmSimulator, AssignOutcome, ContentCipher, DeviceChange, Endpoint, Fault,
    ServerId, ServerSpec, TokenOptions,
};
use mdm_sim::device::{DeviceKind, SimDevice};
use serde_json::{json, Value};

const SERVER: ServerId = ServerId(0);

fn token_options() -> TokenOptions {
    TokenOptions {
        cipher: ContentCipher::Aes256Cbc,
        ber: false,
        new_org: false,
    }
}

/// Creates connection `name` against the simulator and uploads a token for `server`.
async fn connect(app: &Appliance, sim: &AbmSimulator, name: &str, server: ServerId) -> Value {
    let (st, v) = app
        .api(
            "POST",
            "/api/v1/abm",
            Some(json!({
                "name": name,
                "base_url": sim.base_url(),
                "ca_pem": sim.ca_pem(),
                "interval_seconds": 0
            })),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["state"], "no_token");
    assert_eq!(v["key_staged"], true);
    let p7m = token_for(app, sim, name, server, token_options()).await;
    let (st, v) = app
        .api_raw("PUT", &format!("/api/v1/abm/{name}/token"), p7m)
        .await;
    assert_eq!(st, 200, "{v}");
    v
}

/// A `.p7m` from the simulator for the connection's public key.
async fn token_for(
    app: &Appliance,
    sim: &AbmSimulator,
    name: &str,
    server: ServerId,
    opts: TokenOptions,
) -> Vec<u8> {
    let (st, pem) = app
        .api("GET", &format!("/api/v1/abm/{name}/public-key"), None)
        .await;
    assert_eq!(st, 200, "{pem}");
    let cert = mdm_pki::Certificate::from_pem(pem.as_str().unwrap()).unwrap();
    sim.server_token(server, cert.der(), &opts).unwrap()
}

async fn device(app: &Appliance, conn: &str, serial: &str) -> Value {
    let (st, v) = app
        .api("GET", &format!("/api/v1/abm/{conn}/devices/{serial}"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    v
}

async fn sync(app: &Appliance, conn: &str, full: bool) -> Value {
    let q = if full { "?full=true" } else { "" };
    let (st, v) = app
        .api("POST", &format!("/api/v1/abm/{conn}/sync{q}"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    v
}

/// Starts `POST .../sync` on its own connection, so the test can act while it runs.
fn spawn_sync(app: &Appliance, conn: &str) -> tokio::task::JoinHandle<mdm_sim::http::HttpResponse> {
    let url = format!("{}/api/v1/abm/{conn}/sync", app.base_url);
    let auth = format!("Bearer {}", app.token);
    let admin = mdm_sim::http::HttpClient::from_ca_pem(&app.ca_pem).unwrap();
    tokio::spawn(async move {
        let h = mdm_sim::http::headers(&[("authorization", &auth)]).unwrap();
        admin
            .request(http::Method::POST, &url, h, Vec::new())
            .await
            .unwrap()
    })
}

/// Every device of a connection through the paged API.
async fn all_devices(app: &Appliance, conn: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = match &after {
            Some(a) => format!("?limit=1000&after={a}"),
            None => "?limit=1000".into(),
        };
        let (st, v) = app
            .api("GET", &format!("/api/v1/abm/{conn}/devices{q}"), None)
            .await;
        assert_eq!(st, 200, "{v}");
        out.extend(v["items"].as_array().unwrap().iter().cloned());
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_sync_assign_and_ade_enrollment_of_10000_devices() {
    let sim = AbmSimulator::start(AbmSimConfig::default()).await.unwrap();
    let serials = sim.add_devices(SERVER, 10_000).unwrap();
    let app = Appliance::start().await;

    let v = connect(&app, &sim, "north", SERVER).await;
    assert_eq!(v["state"], "active", "{v}");
    assert_eq!(v["key_staged"], false);
    assert_eq!(v["account"]["org_name"], "Example Organization");
    assert_eq!(v["account"]["server_name"], "MDM Server 1");
    assert!(v["token"]["consumer_key"]
        .as_str()
        .unwrap()
        .starts_with("CK_"));
    // No secret of the token anywhere in what the API shows.
    let creds = sim.credentials(SERVER).unwrap();
    let text = v.to_string();
    assert!(!text.contains(&creds.consumer_secret) && !text.contains(&creds.access_secret));

    // A profile with the appliance's defaults, as the connection's default.
    let (st, p) = app
        .api(
            "PUT",
            "/api/v1/abm/north/profiles/staff",
            Some(
                json!({"profile_name": "Staff devices", "is_supervised": true,
                        "department": "IT", "skip_setup_items": ["Location", "Siri"]}),
            ),
        )
        .await;
    assert_eq!(st, 200, "{p}");
    let enroll_url = format!("{}/mdm/enroll", app.base_url);
    assert_eq!(p["profile"]["url"], enroll_url.as_str());
    assert_eq!(p["profile"]["await_device_configured"], true);
    let uuid = p["profile_uuid"].as_str().unwrap().to_string();
    let (st, v) = app
        .api(
            "PATCH",
            "/api/v1/abm/north",
            Some(json!({"default_profile": "staff"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");

    // Full fetch of 10,000 devices, then auto-assignment of all of them.
    let run = sync(&app, "north", false).await;
    assert_eq!(run["full"], true, "{run}");
    assert_eq!(run["result"], "ok", "{run}");
    assert_eq!(run["added"], 10_000, "{run}");
    assert!(sim.counters().largest_assign_batch <= 1000);
    let devices = all_devices(&app, "north").await;
    assert_eq!(devices.len(), 10_000);
    for d in &devices {
        assert_eq!(d["last_assignment"]["outcome"], "SUCCESS", "{d}");
        assert_eq!(d["profile_uuid"], uuid.as_str(), "{d}");
        assert_eq!(d["target_profile"], "staff");
    }
    // Apple agrees.
    let on_apple = sim.device(&serials[1234]).unwrap();
    assert_eq!(on_apple.device.profile_uuid.as_deref(), Some(uuid.as_str()));

    // Setup Assistant: the device asks Apple for its profile, trusts its anchor certificates,
    // and enrolls at the URL in it.
    let serial = serials
        .iter()
        .find(|s| sim.device(s).unwrap().device.device_family == "iPhone")
        .unwrap()
        .clone();
    let activation = sim.activation(&serial).unwrap();
    assert_eq!(activation["url"], enroll_url.as_str());
    let anchor = activation["anchor_certs"][0].as_str().unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(anchor)
        .unwrap();
    let anchor_pem = mdm_pki::Certificate::from_der(&der).unwrap().to_pem();
    assert_eq!(
        anchor_pem.trim(),
        String::from_utf8_lossy(&app.ca_pem).trim()
    );
    let mut d = SimDevice::builder(DeviceKind::IPhone)
        .unwrap()
        .serial(&serial)
        .awaiting_configuration(activation["await_device_configured"] == true)
        .trust_ca_pem(anchor_pem.as_bytes())
        .unwrap()
        .build();
    let profile = d
        .ade_enroll(&app.admin, activation["url"].as_str().unwrap(), &app.apple)
        .await
        .unwrap();
    app.install_enrollment(&mut d, &profile).await;

    let v = device(&app, "north", &serial).await;
    assert_eq!(v["enrolled"], true, "{v}");
    assert_eq!(v["enrollment_id"], d.udid.as_str());
    let (_, e) = app.enrollment(&d.udid).await;
    assert_eq!(e["awaiting_configuration"], true, "{e}");

    // CSV export with a header and one row per device.
    let resp = app
        .admin
        .get(
            &format!("{}/api/v1/abm/north/devices?format=csv", app.base_url),
            mdm_sim::http::headers(&[("authorization", &format!("Bearer {}", app.token))]).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let csv = String::from_utf8(resp.body.to_vec()).unwrap();
    let mut lines = csv.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("serial_number,model,description,color"));
    assert_eq!(lines.count(), 10_000);
    assert!(csv.contains(&format!("{serial},")));
    assert!(csv
        .lines()
        .any(|l| l.starts_with(&serial) && l.contains(",yes,")));

    // Incremental sync: new devices, a change, a release, and a device moved in from another
    // MDM server (it arrives as `modified` with profile_status `removed` and must be assigned).
    let other = sim
        .add_server(&ServerSpec::new("MDM Server 2", "Example Organization"))
        .unwrap();
    let moved = sim.add_devices(other, 1).unwrap().remove(0);
    sim.move_device(&moved, SERVER).unwrap();
    let fresh = sim.add_devices(SERVER, 3).unwrap();
    sim.modify_device(
        &serials[7],
        &DeviceChange {
            color: Some("Midnight".into()),
            ..DeviceChange::default()
        },
    )
    .unwrap();
    sim.delete_device(&serials[8]).unwrap();
    let run = sync(&app, "north", false).await;
    assert_eq!(run["full"], false, "{run}");
    assert_eq!(run["deleted"], 1, "{run}");
    assert_eq!(
        device(&app, "north", &serials[7]).await["color"],
        "Midnight"
    );
    assert!(device(&app, "north", &serials[8]).await["removed_at"].is_string());
    for s in fresh.iter().chain([&moved]) {
        let v = device(&app, "north", s).await;
        assert_eq!(v["last_assignment"]["outcome"], "SUCCESS", "{v}");
        assert_eq!(v["profile_status"], "assigned", "{v}");
    }
    let (_, v) = app.api("GET", "/api/v1/abm/north", None).await;
    assert_eq!(v["devices"], 10_004, "{v}");
    assert_eq!(v["sync_phase"], "incremental");
    assert_eq!(v["last_sync"]["result"], "ok");
    sim.shutdown().await;
}

#[tokio::test]
async fn token_refusals_and_states() {
    let sim = AbmSimulator::start(AbmSimConfig::default()).await.unwrap();
    let app = Appliance::start().await;
    let (st, _) = app
        .api(
            "POST",
            "/api/v1/abm",
            Some(
                json!({"name": "north", "base_url": sim.base_url(), "ca_pem": sim.ca_pem(),
                        "interval_seconds": 0}),
            ),
        )
        .await;
    assert_eq!(st, 201);

    // A token made for another key.
    let keys = tempfile::tempdir().unwrap();
    let sealer = mdm_keystore::SoftSealer::open_or_create(&keys.path().join("key")).unwrap();
    let other = mdm_service::abm::token::new_token_key_pair(&sealer, "abm-key", "x")
        .unwrap()
        .0;
    let p7m = sim
        .server_token(SERVER, other.der(), &token_options())
        .unwrap();
    let (st, v) = app.api_raw("PUT", "/api/v1/abm/north/token", p7m).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("ABM_TOKEN_WRONG_KEY")),
        "{v}"
    );
    // Garbage.
    let (st, v) = app
        .api_raw("PUT", "/api/v1/abm/north/token", b"not a token".to_vec())
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("ABM_TOKEN_INVALID")),
        "{v}"
    );

    // BER with 3DES, as older ABM downloads: accepted.
    let p7m = token_for(
        &app,
        &sim,
        "north",
        SERVER,
        TokenOptions {
            cipher: ContentCipher::DesEde3Cbc,
            ber: true,
            new_org: false,
        },
    )
    .await;
    let (st, v) = app.api_raw("PUT", "/api/v1/abm/north/token", p7m).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["token"]["generation"], 1);

    // Renewal (a new download for the same server: same key, same account) keeps working and
    // the old token is dead at Apple.
    let p7m = token_for(&app, &sim, "north", SERVER, token_options()).await;
    let (st, v) = app.api_raw("PUT", "/api/v1/abm/north/token", p7m).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["token"]["generation"], 2);
    assert_eq!(sync(&app, "north", false).await["result"], "ok");

    // Another ABM account: refused unless forced.
    let p7m = token_for(
        &app,
        &sim,
        "north",
        SERVER,
        TokenOptions {
            new_org: true,
            ..token_options()
        },
    )
    .await;
    let (st, v) = app
        .api_raw("PUT", "/api/v1/abm/north/token", p7m.clone())
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("ABM_TOKEN_OTHER_ACCOUNT")),
        "{v}"
    );
    let (st, v) = app
        .api_raw("PUT", "/api/v1/abm/north/token?force=true", p7m)
        .await;
    assert_eq!(st, 200, "{v}");

    // Terms not accepted: a persistent state with a reason and an action, and a metric.
    sim.set_terms_signed(SERVER, false).unwrap();
    let (st, v) = app.api("POST", "/api/v1/abm/north/sync", None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("ABM_TERMS_NOT_SIGNED")),
        "{v}"
    );
    let (_, v) = app.api("GET", "/api/v1/abm/north", None).await;
    assert_eq!(v["state"], "terms_not_accepted", "{v}");
    assert!(v["action"].as_str().unwrap().contains("accept"));
    assert_eq!(v["last_sync"]["result"], "failed");
    let (_, status) = app.api("GET", "/api/v1/status", None).await;
    assert_eq!(status["abm"][0]["state"], "terms_not_accepted", "{status}");
    let metrics = app
        .admin
        .get(
            &format!("{}/metrics", app.base_url),
            mdm_sim::http::headers(&[("authorization", &format!("Bearer {}", app.token))]).unwrap(),
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        text.contains(
            "mdm_abm_needs_attention{connection=\"north\",state=\"terms_not_accepted\"} 1"
        ),
        "{text}"
    );
    sim.set_terms_signed(SERVER, true).unwrap();
    assert_eq!(sync(&app, "north", false).await["result"], "ok");
    let (_, v) = app.api("GET", "/api/v1/abm/north", None).await;
    assert_eq!(v["state"], "active", "{v}");

    // A revoked token.
    sim.revoke_token(SERVER).unwrap();
    sim.invalidate_sessions(SERVER).unwrap();
    let (st, v) = app.api("POST", "/api/v1/abm/north/sync", None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("ABM_ACCESS_DENIED")),
        "{v}"
    );
    let (_, v) = app.api("GET", "/api/v1/abm/north", None).await;
    assert_eq!(v["state"], "invalid", "{v}");
    sim.shutdown().await;
}

#[tokio::test]
async fn assignment_outcomes_rules_and_retries() {
    let sim = AbmSimulator::start(AbmSimConfig::default()).await.unwrap();
    let serials = sim.add_devices(SERVER, 40).unwrap();
    let app = Appliance::start().await;
    connect(&app, &sim, "north", SERVER).await;
    for (name, body) in [
        ("staff", json!({"profile_name": "Staff"})),
        (
            "ipads",
            json!({"profile_name": "iPads", "is_supervised": true}),
        ),
    ] {
        let (st, v) = app
            .api(
                "PUT",
                &format!("/api/v1/abm/north/profiles/{name}"),
                Some(body),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }
    // Local validation names the field before anything reaches Apple.
    let (st, v) = app
        .api(
            "PUT",
            "/api/v1/abm/north/profiles/bad",
            Some(json!({"profile_name": "x", "support_email_address": "nobody"})),
        )
        .await;
    assert_eq!(st, 400);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("support_email_address:"));
    let (st, _) = app
        .api(
            "PUT",
            "/api/v1/abm/north/rules/ipads",
            Some(json!({"profile": "ipads", "device_family": "iPad"})),
        )
        .await;
    assert_eq!(st, 200);
    app.api(
        "PATCH",
        "/api/v1/abm/north",
        Some(json!({"default_profile": "staff"})),
    )
    .await;

    // Scripted outcomes for the first assignment call (HTTP 200 with failures inside).
    // Two devices that get the same profile, so they are in the same assignment call and
    // Apple's retry_after_seconds applies to both.
    let staff: Vec<&String> = serials
        .iter()
        .filter(|s| sim.device(s).unwrap().device.device_family != "iPad")
        .take(3)
        .collect();
    let (throttled, failed, refused) = (staff[0], staff[1], staff[2]);
    let retry = Duration::from_secs(2);
    sim.script_assign_outcome(throttled, AssignOutcome::Throttled, 1, retry);
    sim.script_assign_outcome(failed, AssignOutcome::Failed, 1, retry);
    sim.script_assign_outcome(refused, AssignOutcome::NotAccessible, 1, retry);
    sync(&app, "north", false).await;

    let v = device(&app, "north", throttled).await;
    assert_eq!(v["last_assignment"]["outcome"], "THROTTLED", "{v}");
    assert!(v["last_assignment"]["reason"]
        .as_str()
        .unwrap()
        .contains("THROTTLED"));
    assert!(v["next_assignment_at"].is_string());
    let v = device(&app, "north", failed).await;
    assert_eq!(v["last_assignment"]["outcome"], "FAILED", "{v}");
    assert_eq!(v["last_assignment"]["failures"], 1, "{v}");
    let v = device(&app, "north", refused).await;
    assert_eq!(v["last_assignment"]["outcome"], "NOT_ACCESSIBLE", "{v}");
    assert!(v["next_assignment_at"].is_null());
    assert!(v["last_assignment"]["reason"]
        .as_str()
        .unwrap()
        .contains("another MDM server"));

    // Rules: iPads got the iPad profile, everything else the default.
    for s in serials.iter().filter(|s| !staff.contains(s)) {
        let v = device(&app, "north", s).await;
        let want = if v["device_family"] == "iPad" {
            "ipads"
        } else {
            "staff"
        };
        assert_eq!(v["target_profile"], want, "{v}");
        assert_eq!(v["last_assignment"]["profile"], want, "{v}");
        assert_eq!(v["last_assignment"]["outcome"], "SUCCESS", "{v}");
    }

    // After Apple's retry_after_seconds the scheduler retries both by itself.
    let (_, report) = app.api("POST", "/api/v1/abm/north/assign", None).await;
    assert_eq!(report["calls"], 0, "not due yet: {report}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for s in [throttled, failed] {
        loop {
            let v = device(&app, "north", s).await;
            if v["last_assignment"]["outcome"] == "SUCCESS" {
                assert!(v["next_assignment_at"].is_null(), "{v}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "not retried: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Explicit assignment overrides rules at once. A FAILED without retry_after_seconds
    // waits for the configured cool-down (a day).
    let target = serials
        .iter()
        .find(|s| !staff.contains(s) && sim.device(s).unwrap().device.device_family != "iPad")
        .unwrap();
    sim.script_assign_outcome(target, AssignOutcome::Failed, 1, Duration::ZERO);
    let (st, v) = app
        .api(
            "POST",
            "/api/v1/abm/north/profiles/ipads/assign",
            Some(json!({"serials": [target, "NOSUCHSERIAL1"]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["items"][0]["outcome"], "FAILED", "{v}");
    assert_eq!(v["items"][1]["outcome"], "NOT_FOUND", "{v}");
    let v = device(&app, "north", target).await;
    assert_eq!(v["target_profile"], "ipads", "{v}");
    let next = time::OffsetDateTime::parse(
        v["next_assignment_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        next > time::OffsetDateTime::now_utc() + time::Duration::hours(23),
        "{v}"
    );

    // Removal sticks until assigned again.
    let (st, v) = app
        .api(
            "POST",
            "/api/v1/abm/north/remove-profile",
            Some(json!({"serials": [staff[0]]})),
        )
        .await;
    assert_eq!(
        (st, v["items"][0]["outcome"].as_str()),
        (200, Some("SUCCESS")),
        "{v}"
    );
    sync(&app, "north", false).await;
    let v = device(&app, "north", staff[0]).await;
    assert_eq!(v["last_assignment"]["outcome"], "REMOVED", "{v}");
    assert_eq!(v["profile_status"], "removed", "{v}");

    // Disown needs the exact confirmation.
    let (st, v) = app
        .api(
            "POST",
            "/api/v1/abm/north/disown",
            Some(json!({"serials": [staff[1]], "confirm": "yes"})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("ABM_DISOWN_UNCONFIRMED"))
    );
    let (st, v) = app
        .api(
            "POST",
            "/api/v1/abm/north/disown",
            Some(json!({"serials": [staff[1]], "confirm": "disown 1 devices"})),
        )
        .await;
    assert_eq!(
        (st, v["items"][0]["outcome"].as_str()),
        (200, Some("SUCCESS")),
        "{v}"
    );
    assert!(sim.device(staff[1]).is_none_or(|d| d.server.is_none()));
    assert!(device(&app, "north", staff[1]).await["removed_at"].is_string());
    sim.shutdown().await;
}

#[tokio::test]
async fn cursors_expire_and_sync_resumes_after_failures() {
    let sim = AbmSimulator::start(AbmSimConfig::default()).await.unwrap();
    sim.add_devices(SERVER, 2500).unwrap();
    let app = Appliance::start().await;
    connect(&app, &sim, "north", SERVER).await;

    // The third fetch page keeps failing: the run fails after storing two pages with their
    // cursor, and the next run continues from there instead of starting over.
    sim.set_delay(Duration::from_millis(300));
    let first = spawn_sync(&app, "north");
    while sim.counters().count(Endpoint::FetchDevices) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sim.inject_fault(
        Fault::ServiceUnavailable,
        1000,
        Some(Endpoint::FetchDevices),
    );
    let resp = first.await.unwrap();
    assert_eq!(resp.status, 503, "{}", String::from_utf8_lossy(&resp.body));
    sim.clear_faults();
    let (_, v) = app.api("GET", "/api/v1/abm/north", None).await;
    assert_eq!(v["devices"], 2000, "{v}");
    assert_eq!(v["sync_phase"], "full_fetch", "{v}");
    assert_eq!(v["state"], "unreachable", "{v}");
    assert_eq!(v["last_sync"]["result"], "failed", "{v}");
    let fetches_before = sim.counters().count(Endpoint::FetchDevices);
    let run = sync(&app, "north", false).await;
    assert_eq!(run["added"], 500, "{run}");
    assert_eq!(
        sim.counters().count(Endpoint::FetchDevices),
        fetches_before + 1,
        "the fetch resumed from its stored cursor"
    );
    let (_, v) = app.api("GET", "/api/v1/abm/north", None).await;
    assert_eq!(v["devices"], 2500, "{v}");
    assert_eq!(v["state"], "active", "{v}");

    // A week later (simulated), Apple has forgotten the cursor: a full fetch again, and
    // nothing is lost or duplicated.
    sim.advance(Duration::from_secs(8 * 24 * 3600));
    let run = sync(&app, "north", false).await;
    assert_eq!(run["full"], true, "{run}");
    let (_, v) = app.api("GET", "/api/v1/abm/north", None).await;
    assert_eq!(v["devices"], 2500, "{v}");
    assert_eq!(v["state"], "active", "{v}");

    // A device in Apple's cool-down vanishes from a full fetch but is still there.
    let hidden = sim.add_devices(SERVER, 1).unwrap().remove(0);
    sync(&app, "north", false).await;
    sim.set_cooldown(&hidden, Duration::from_secs(3600))
        .unwrap();
    sync(&app, "north", true).await;
    let v = device(&app, "north", &hidden).await;
    assert!(v["removed_at"].is_null(), "{v}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_full_fetch_loses_no_device_and_skips_no_event() {
    let sim = AbmSimulator::start(AbmSimConfig::default()).await.unwrap();
    let mut serials = sim.add_devices(SERVER, 6000).unwrap();
    // Fetch pages go in serial-number order: the first serials are stored before the kill.
    serials.sort();
    let mut app = Appliance::start().await;
    connect(&app, &sim, "north", SERVER).await;
    app.default_staff_profile("north").await;
    app.stop().await;

    // The daemon as a process, killed with SIGKILL in the middle of the full fetch.
    let daemon =
        appliance_tests::DaemonProcess::start(&app.data_dir(), app.addr, &app.apple_root());
    app.reconnect_admin();
    sim.set_delay(Duration::from_millis(150));
    let syncing = spawn_sync(&app, "north");
    while sim.counters().count(Endpoint::FetchDevices) < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    daemon.kill9();
    syncing.abort();
    sim.set_delay(Duration::ZERO);

    // Apple changes things while the appliance is down.
    sim.modify_device(
        &serials[0],
        &DeviceChange {
            color: Some("Starlight".into()),
            ..DeviceChange::default()
        },
    )
    .unwrap();
    sim.delete_device(&serials[1]).unwrap();

    let _daemon =
        appliance_tests::DaemonProcess::start(&app.data_dir(), app.addr, &app.apple_root());
    app.reconnect_admin();
    let (_, v) = app.api("GET", "/api/v1/abm/north", None).await;
    let stored = v["devices"].as_u64().unwrap();
    assert!(
        (1000..6000).contains(&stored),
        "pages committed before the kill: {v}"
    );
    assert_eq!(v["sync_phase"], "full_fetch", "{v}");

    let fetches_before = sim.counters().count(Endpoint::FetchDevices);
    let run = sync(&app, "north", false).await;
    assert_eq!(run["result"], "ok", "{run}");
    let fetched = sim.counters().count(Endpoint::FetchDevices) - fetches_before;
    assert!(
        fetched <= (6000 - stored) / 1000 + 1,
        "resumed from the stored cursor: {fetched} fetch calls for {} devices",
        6000 - stored
    );
    let devices = all_devices(&app, "north").await;
    assert_eq!(devices.len(), 6000);
    let by_serial = |s: &str| devices.iter().find(|d| d["serial_number"] == s).unwrap();
    assert_eq!(by_serial(&serials[0])["color"], "Starlight");
    assert!(by_serial(&serials[1])["removed_at"].is_string());
    for d in devices.iter().filter(|d| d["removed_at"].is_null()) {
        assert_eq!(d["last_assignment"]["outcome"], "SUCCESS", "{d}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn the_scheduler_syncs_at_the_interval_and_syncs_never_overlap() {
    let sim = AbmSimulator::start(AbmSimConfig::default()).await.unwrap();
    sim.add_devices(SERVER, 20).unwrap();
    let app = Appliance::start().await;
    connect(&app, &sim, "north", SERVER).await;
    // Automatic sync every second: no "sync now" from anyone.
    let (st, v) = app
        .api(
            "PATCH",
            "/api/v1/abm/north",
            Some(json!({"interval_seconds": 1})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, v) = app.api("GET", "/api/v1/abm/north", None).await;
        if v["devices"] == 20 && v["last_sync"]["result"] == "ok" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no automatic sync: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A change at Apple arrives by itself.
    let added = sim.add_devices(SERVER, 1).unwrap().remove(0);
    loop {
        let (st, _) = app
            .api("GET", &format!("/api/v1/abm/north/devices/{added}"), None)
            .await;
        if st == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new device never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Two syncs of one connection never overlap: asking while one runs is refused.
    sim.set_delay(Duration::from_millis(300));
    app.api(
        "PATCH",
        "/api/v1/abm/north",
        Some(json!({"interval_seconds": 0})),
    )
    .await;
    let first = spawn_sync(&app, "north");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (st, v) = app.api("POST", "/api/v1/abm/north/sync", None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("ABM_SYNC_RUNNING")),
        "{v}"
    );
    assert_eq!(first.await.unwrap().status, 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn changing_a_profile_reassigns_and_transport_failures_count_as_failed() {
    let sim = AbmSimulator::start(AbmSimConfig::default()).await.unwrap();
    let serials = sim.add_devices(SERVER, 30).unwrap();
    let app = Appliance::start().await;
    connect(&app, &sim, "north", SERVER).await;
    let put = |body: Value| {
        let app = &app;
        async move {
            let (st, v) = app
                .api("PUT", "/api/v1/abm/north/profiles/staff", Some(body))
                .await;
            assert_eq!(st, 200, "{v}");
            v["profile_uuid"].as_str().unwrap().to_string()
        }
    };
    let first = put(json!({"profile_name": "Staff"})).await;
    app.api(
        "PATCH",
        "/api/v1/abm/north",
        Some(json!({"default_profile": "staff"})),
    )
    .await;
    sync(&app, "north", false).await;
    assert_eq!(
        device(&app, "north", &serials[0]).await["profile_uuid"],
        first.as_str()
    );

    // Apple cannot be reached for assignment: every serial of the call is FAILED, with why.
    sim.inject_fault(
        Fault::ServiceUnavailable,
        1000,
        Some(Endpoint::AssignProfile),
    );
    let second = put(json!({"profile_name": "Staff", "department": "Sales"})).await;
    assert_ne!(
        first, second,
        "Apple answers a new uuid for every definition"
    );
    // The scheduler runs the job as soon as the devices fall due (or this call does).
    app.api("POST", "/api/v1/abm/north/assign", None).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let v = loop {
        let v = device(&app, "north", &serials[0]).await;
        if v["last_assignment"]["outcome"] == "FAILED" {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for s in &serials {
        let v = device(&app, "north", s).await;
        assert_eq!(v["last_assignment"]["outcome"], "FAILED", "{v}");
    }
    assert!(
        v["last_assignment"]["reason"]
            .as_str()
            .unwrap()
            .contains("ABM_UNAVAILABLE"),
        "{v}"
    );
    assert_eq!(
        v["profile_uuid"],
        first.as_str(),
        "Apple still has the old one: {v}"
    );

    // Once Apple answers again, an explicit retry re-assigns them all to the new definition.
    sim.clear_faults();
    let (st, v) = app
        .api(
            "POST",
            "/api/v1/abm/north/profiles/staff/assign",
            Some(json!({"serials": serials})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    for s in &serials {
        let v = device(&app, "north", s).await;
        assert_eq!(v["profile_uuid"], second.as_str(), "{v}");
        assert_eq!(v["last_assignment"]["outcome"], "SUCCESS", "{v}");
    }
    sim.shutdown().await;
}
