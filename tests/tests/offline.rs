//! Automatic unenrollment of offline devices end to end: a manually enrolled device and an
//! ADE device are pushed (through the APNs simulator) and never answer; one pass of the
//! offline policy, run as of a later day, unenrolls them with an invitation each, refuses
//! their identities from then on, and the manual device comes back once through its
//! one-time link, which is stored sealed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime};

use appliance_tests::{ade_device_builder, Appliance, TOPIC};
use mdm_sim::abm::{AbmSimConfig, AbmSimulator, ServerId};
use mdm_sim::apns::ApnsSimulator;
use mdm_sim::device::{DeviceKind, SimDevice};
use serde_json::{json, Value};

const SERVER: ServerId = ServerId(0);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// An appliance whose pusher talks to `apns`, with a push certificate "Apple" issued for the
/// appliance's CSR (the simulator only accepts those).
async fn appliance(apns: &ApnsSimulator, ca_dir: &tempfile::TempDir) -> Appliance {
    let ca_file = ca_dir.path().join("apns-ca.pem");
    std::fs::write(&ca_file, apns.server_ca_pem().unwrap()).unwrap();
    let url = apns.url();
    let app = Appliance::start_with(move |c| {
        c.apns.url = url.clone();
        c.apns.ca_file = Some(ca_file.clone());
    })
    .await;
    let (st, csr) = app
        .api_raw("POST", "/api/v1/push-cert/csr", Vec::new())
        .await;
    assert_eq!(st, 200, "{csr}");
    let cert = apns
        .issue_push_certificate(TOPIC, csr.as_str().unwrap().as_bytes())
        .unwrap();
    let pem = mdm_sim::x509::to_pem(&cert).unwrap();
    let (st, v) = app
        .api_raw("PUT", "/api/v1/push-cert", pem.into_bytes())
        .await;
    assert_eq!(st, 200, "{v}");
    app
}

/// Queues a command for a device that will not answer, and waits until the push for it
/// was sent (what makes a silent device `offline` rather than merely quiet). Returns the
/// command's UUID.
async fn push_unanswered(app: &Appliance, apns: &ApnsSimulator, d: &SimDevice) -> String {
    let uuid = app.send(&d.udid, "DeviceInformation").await;
    let token = hex::encode(&d.push_token);
    for _ in 0..200 {
        let (_, e) = app.enrollment(&d.udid).await;
        if e["last_push_at"].is_string() && !apns.pushes_for(&token).is_empty() {
            return uuid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{} was never pushed: {}",
        d.udid,
        app.enrollment(&d.udid).await.1
    );
}

async fn pass_at(app: &Appliance, later: Duration) -> usize {
    app.running()
        .run_offline_policy_at(SystemTime::now() + later)
        .await
        .unwrap()
}

async fn settings(app: &Appliance, body: Value) -> (u16, Value) {
    app.api("PATCH", "/api/v1/settings", Some(body)).await
}

/// An ABM device assigned this appliance's profile, enrolled through Setup Assistant and
/// released from it.
async fn ade_device(app: &Appliance, sim: &AbmSimulator) -> SimDevice {
    let serial = sim.add_devices(SERVER, 1).unwrap().remove(0);
    app.connect_abm(sim, "north", SERVER).await;
    let (st, v) = app.api("POST", "/api/v1/abm/north/sync", None).await;
    assert_eq!(st, 200, "{v}");
    app.assign_staff_profile("north").await;
    let mut d = ade_device_builder(sim, &serial).build();
    app.enroll_ade(&mut d).await;
    // Held in Setup Assistant until DeviceConfigured: answer it, so that the device counts
    // as enrolled before it falls silent.
    d.run_until_idle().await.unwrap();
    app.wait_device_status(&serial, "enrolled").await;
    d
}

fn status_of(err: &mdm_sim::error::DeviceError) -> u16 {
    err.status()
        .unwrap_or_else(|| panic!("not an HTTP refusal: {err:?}"))
        .status
}

#[tokio::test]
async fn offline_devices_are_unenrolled_and_invited_back() {
    let apns = ApnsSimulator::start_default().await.unwrap();
    let sim = AbmSimulator::start(AbmSimConfig::default()).await.unwrap();
    let ca_dir = tempfile::tempdir().unwrap();
    let mut app = appliance(&apns, &ca_dir).await;

    // Two devices go silent after a push each: a manual one and an ADE one.
    let mut manual = app.enroll_manual().await;
    let mut ade = ade_device(&app, &sim).await;
    let manual_cmd = push_unanswered(&app, &apns, &manual).await;
    let ade_cmd = push_unanswered(&app, &apns, &ade).await;

    // Off by default: not even two months of silence unenrolls anyone.
    let (_, s) = app.api("GET", "/api/v1/settings", None).await;
    assert_eq!(s["auto_unenroll_after_days"], 0, "{s}");
    assert_eq!(pass_at(&app, 60 * DAY).await, 0);

    // The policy must come after the offline threshold.
    let (st, e) = settings(
        &app,
        json!({"offline_after_hours": 24, "auto_unenroll_after_days": 1}),
    )
    .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (400, Some("INVALID_FIELD")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("auto_unenroll_after_days"),
        "{e}"
    );
    let (st, s) = settings(
        &app,
        json!({"offline_after_hours": 24, "auto_unenroll_after_days": 30}),
    )
    .await;
    assert_eq!(st, 200, "{s}");
    assert_eq!(
        (
            s["offline_after_hours"].as_u64(),
            s["auto_unenroll_after_days"].as_u64()
        ),
        (Some(24), Some(30)),
        "{s}"
    );

    // Offline for 29 days: not yet. For 31: both.
    assert_eq!(pass_at(&app, 29 * DAY).await, 0);
    for d in [&manual, &ade] {
        assert_eq!(app.device_view(&d.serial).await["status"], "enrolled");
    }
    assert_eq!(pass_at(&app, 31 * DAY).await, 2);
    // Nothing is left to do on the next pass.
    assert_eq!(pass_at(&app, 32 * DAY).await, 0);

    for (d, kind, cmd) in [
        (&manual, "link", &manual_cmd),
        (&ade, "setup_assistant", &ade_cmd),
    ] {
        let v = app.device_view(&d.serial).await;
        assert_eq!(v["status"], "unenrolled", "{v}");
        let reason = v["reason"].as_str().unwrap();
        assert!(
            reason.contains("unenrolled it automatically")
                && reason.contains("no check-in for more than 30 days"),
            "{v}"
        );
        let inv = &v["invitation"];
        assert_eq!(inv["kind"], kind, "{v}");
        assert_eq!(inv["enrollment_id"], d.udid.as_str(), "{v}");
        assert!(
            inv.get("url").is_none() && inv.get("url_sealed").is_none(),
            "{v}"
        );
        assert_eq!(v["enrollment"]["state"], "CheckedOut", "{v}");
        // The last check-in is still the real one, weeks before the unenrollment.
        let last_seen = v["last_seen_at"].as_str().unwrap();
        let checked_out = v["enrollment"]["checked_out_at"].as_str().unwrap();
        assert!(last_seen < checked_out, "{last_seen} vs {checked_out}");
        assert!(
            reason.contains(last_seen.trim_end_matches('Z')) || reason.contains(last_seen),
            "{v}"
        );
        assert!(v["queued_commands"].as_array().unwrap().is_empty(), "{v}");
        assert_eq!(
            app.command(cmd).await["deliveries"][0]["status"],
            "Canceled"
        );
        assert!(v["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "enrollment.auto_unenrolled"));
    }
    let v = app.device_view(&manual.serial).await;
    assert!(
        v["fix"].as_str().unwrap().contains("re-enrollment link"),
        "{v}"
    );
    assert!(v["invitation"]["link_id"].is_string(), "{v}");
    let v = app.device_view(&ade.serial).await;
    assert!(
        v["fix"].as_str().unwrap().contains("Erase the device"),
        "{v}"
    );
    assert!(v["invitation"]["link_id"].is_null(), "{v}");

    let (st, log) = app
        .api(
            "GET",
            "/api/v1/activity?type=enrollment.auto_unenrolled",
            None,
        )
        .await;
    assert_eq!(st, 200, "{log}");
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{log}");
    for (d, kind) in [(&manual, "link"), (&ade, "setup_assistant")] {
        let e = items
            .iter()
            .find(|e| e["targets"][0] == d.serial.as_str())
            .unwrap_or_else(|| panic!("no entry for {}: {log}", d.serial));
        assert_eq!(e["actor"], "system", "{e}");
        assert_eq!(e["detail"]["invitation"], kind, "{e}");
        assert_eq!(e["detail"]["days"], 30, "{e}");
    }

    // Their identities are refused from now on, and nothing more can be queued for them.
    for d in [&mut manual, &mut ade] {
        assert_eq!(status_of(&d.run_until_idle().await.unwrap_err()), 401);
        assert_eq!(status_of(&d.token_update().await.unwrap_err()), 401);
        // Nor can the old identity start a new enrollment by itself.
        assert_eq!(status_of(&d.authenticate().await.unwrap_err()), 401);
        let (st, v) = app
            .api(
                "POST",
                "/api/v1/commands",
                Some(json!({"targets": [d.udid], "request_type": "ProfileList"})),
            )
            .await;
        assert_eq!(st, 404, "{v}");
    }

    // The link is for operators and admins, not auditors.
    let auditor = app.new_token("audit", "Auditor").await;
    let invitation_path = format!("/api/v1/devices/{}/invitation", manual.serial);
    let (st, e) = app
        .api_as(&auditor, "GET", &invitation_path, Vec::new())
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (403, Some("ROLE_INSUFFICIENT")),
        "{e}"
    );
    let (st, inv) = app.api("GET", &invitation_path, None).await;
    assert_eq!(st, 200, "{inv}");
    assert_eq!(inv["kind"], "link", "{inv}");
    let url = inv["url"].as_str().unwrap().to_string();
    let prefix = format!("{}/enroll/", app.base_url);
    let token = url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{url} is not an enrollment link"))
        .to_string();
    assert!(token.len() >= 16, "{url}");
    // Nowhere else in the API: not in the auditor's device view.
    let (st, v) = app
        .api_as(
            &auditor,
            "GET",
            &format!("/api/v1/devices/{}", manual.serial),
            Vec::new(),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(!v.to_string().contains(&token), "{v}");
    let (st, inv) = app
        .api(
            "GET",
            &format!("/api/v1/devices/{}/invitation", ade.serial),
            None,
        )
        .await;
    assert_eq!(st, 200, "{inv}");
    assert_eq!(
        (inv["kind"].as_str(), inv["url"].is_null()),
        (Some("setup_assistant"), true),
        "{inv}"
    );

    // The device's user opens the link: the same device (serial and UDID), with a fresh key.
    let mut back = SimDevice::builder(DeviceKind::IPhone)
        .unwrap()
        .serial(&manual.serial)
        .udid(&manual.udid)
        .trust_ca_pem(&app.ca_pem)
        .unwrap()
        .build();
    let profile = back.manual_enroll(&app.admin, &url).await.unwrap();
    app.install_enrollment(&mut back, &profile).await;
    let v = app.wait_device_status(&manual.serial, "enrolled").await;
    assert!(v["invitation"].is_null(), "{v}");
    let (st, e) = app.api("GET", &invitation_path, None).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (404, Some("INVITATION_NOT_FOUND")),
        "{e}"
    );
    app.send(&back.udid, "ProfileList").await;
    assert_eq!(back.run_until_idle().await.unwrap().len(), 1);
    // The old identity stays refused.
    assert_eq!(status_of(&manual.run_until_idle().await.unwrap_err()), 401);

    // One use only.
    let other = app.device();
    let err = other.manual_enroll(&app.admin, &url).await.unwrap_err();
    assert_eq!(status_of(&err), 404, "{err:?}");
    let (_, links) = app.api("GET", "/api/v1/enroll-links", None).await;
    let link = links["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["label"] == format!("re-enrollment of {}", manual.serial).as_str())
        .unwrap_or_else(|| panic!("no re-enrollment link: {links}"));
    assert_eq!(
        (link["uses"].as_u64(), link["max_uses"].as_u64()),
        (Some(1), Some(1))
    );
    // Once the device is back, its invitation's link is revoked as well.
    assert!(link["revoked_at"].is_string(), "{link}");

    // The ADE device stays out until it is erased and set up again.
    assert_eq!(app.device_view(&ade.serial).await["status"], "unenrolled");

    // The link enrolls a device: it is kept sealed, never in the clear in the database.
    app.stop().await;
    let db = std::fs::read(app.data_dir().join(mdmd::DB_FILE)).unwrap();
    assert!(
        !db.windows(token.len()).any(|w| w == token.as_bytes()),
        "the re-enrollment link is stored in the clear"
    );
    sim.shutdown().await;
}
