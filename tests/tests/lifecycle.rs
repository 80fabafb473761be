//! Device lifecycle end to end through the admin API, with the ABM simulator and simulated
//! devices: pre-enrollment by CSV, sync and assignment, ADE enrollment held in Setup
//! Assistant and released automatically, the "pre-enrolled devices only" restriction, and the
//! stuck states, each produced on purpose and explained.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use appliance_tests::{ade_device_builder, Appliance};
use mdm_sim::abm::{AbmSimConfig, AbmSimulator, AssignOutcome, ServerId};
use mdm_sim::device::{DeviceKind, SimDevice};
use serde_json::{json, Value};

const SERVER: ServerId = ServerId(0);

async fn sync(app: &Appliance) {
    let (st, v) = app.api("POST", "/api/v1/abm/north/sync", None).await;
    assert_eq!(st, 200, "{v}");
}

/// Waits until the device's timeline holds an entry of `kind`.
async fn wait_timeline(app: &Appliance, key: &str, kind: &str) -> Value {
    for _ in 0..100 {
        let v = app.device_view(key).await;
        if v["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == kind)
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{key}'s timeline never got {kind}: {}",
        app.device_view(key).await
    );
}

fn csv_for(rows: &[(&str, &str)]) -> Vec<u8> {
    let mut out = String::from("Serial Number;Name;Email;Ownership;Platform\r\n");
    for (serial, name) in rows {
        out.push_str(&format!(
            "{serial};{name};{}@example.org;corporate;iPadOS\r\n",
            name.to_lowercase()
        ));
    }
    out.into_bytes()
}

#[tokio::test]
async fn preenroll_sync_assign_enroll_release_and_the_restriction() {
    let sim = AbmSimulator::start(AbmSimConfig::default()).await.unwrap();
    let serials = sim.add_devices(SERVER, 6).unwrap();
    let app = Appliance::start().await;

    // Pre-enroll three ABM devices and one the appliance will never see elsewhere. A dry run
    // first: a full report, nothing written.
    let csv = csv_for(&[
        (&serials[0], "Alice"),
        (&serials[1], "Bob"),
        (&serials[2], "Carol"),
        ("F00DFACE01", "Dave"),
    ]);
    let (st, r) = app
        .api_raw("POST", "/api/v1/preenroll/import?dry_run=true", csv.clone())
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (r["new"].as_u64(), r["written"].as_bool()),
        (Some(4), Some(false)),
        "{r}"
    );
    let (st, v) = app.api("GET", "/api/v1/devices/F00DFACE01", None).await;
    assert_eq!(st, 404, "{v}");
    assert_eq!(v["error"]["code"], "DEVICE_NOT_FOUND");

    // A file with a bad row writes nothing, and says which row and field.
    let mut bad = csv.clone();
    bad.extend_from_slice(b"ZZ;Eve;not-an-email;corporate;iPadOS\r\n");
    let (st, r) = app.api_raw("POST", "/api/v1/preenroll/import", bad).await;
    assert_eq!(st, 422, "{r}");
    assert_eq!(r["error"]["code"], "PREENROLL_ROWS_INVALID");
    let fields: Vec<(u64, &str)> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["row"].as_u64().unwrap(), e["field"].as_str().unwrap()))
        .collect();
    assert!(fields.contains(&(6, "serial_number")), "{r}");
    assert!(fields.contains(&(6, "email")), "{r}");
    let (_, list) = app.api("GET", "/api/v1/preenroll", None).await;
    assert_eq!(list["total"], 0, "{list}");

    let (st, r) = app
        .api_raw("POST", "/api/v1/preenroll/import", csv.clone())
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["written"], true);
    // Importing again needs a decision about the duplicates.
    let (st, r) = app
        .api_raw("POST", "/api/v1/preenroll/import", csv.clone())
        .await;
    assert_eq!(st, 409, "{r}");
    assert_eq!(r["error"]["code"], "PREENROLL_DUPLICATES");
    assert_eq!(r["duplicates"].as_array().unwrap().len(), 4);
    let (st, r) = app
        .api_raw("POST", "/api/v1/preenroll/import?on_duplicate=skip", csv)
        .await;
    assert_eq!((st, r["skipped"].as_u64()), (200, Some(4)), "{r}");

    let v = app.device_view("F00DFACE01").await;
    assert_eq!(v["status"], "expected", "{v}");
    assert_eq!(v["name"], "Dave");
    assert!(v["fix"]
        .as_str()
        .unwrap()
        .contains("Apple Business Manager"));

    // Only expected devices may enroll from now on.
    let (st, s) = app
        .api(
            "PATCH",
            "/api/v1/settings",
            Some(json!({"preenrolled_only": true})),
        )
        .await;
    assert_eq!(st, 200, "{s}");
    assert_eq!(s["preenrolled_only"], true);
    let (st, e) = app
        .api(
            "PATCH",
            "/api/v1/settings",
            Some(json!({"offline_after_hours": 0})),
        )
        .await;
    assert_eq!(st, 400, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("offline_after_hours"));

    // ABM: synced without a profile, the devices are listed but not assigned.
    app.connect_abm(&sim, "north", SERVER).await;
    sync(&app).await;
    let v = app.device_view(&serials[3]).await;
    assert_eq!(v["status"], "not_assigned", "{v}");
    assert!(v["reason"]
        .as_str()
        .unwrap()
        .contains("no enrollment profile covers it"));
    assert_eq!(v["abm_connection"], "north");

    // A profile as the default: assignment, with Apple's outcomes scripted for two devices.
    sim.script_assign_outcome(
        &serials[4],
        AssignOutcome::Failed,
        5,
        Duration::from_secs(1),
    );
    sim.script_assign_outcome(
        &serials[5],
        AssignOutcome::NotAccessible,
        5,
        Duration::from_secs(1),
    );
    app.assign_staff_profile("north").await;
    let v = app.device_view(&serials[0]).await;
    assert_eq!(v["status"], "assigned", "{v}");
    let v = app.device_view(&serials[4]).await;
    assert_eq!(v["status"], "assignment_failed", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("FAILED"), "{v}");
    let v = app.device_view(&serials[5]).await;
    assert_eq!(v["status"], "elsewhere", "{v}");

    // The list: filtered by status, sorted, paged with a cursor; and counts.
    let (st, page) = app
        .api(
            "GET",
            "/api/v1/devices?status=assigned,expected&sort=name&limit=2",
            None,
        )
        .await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(page["total"], 5, "{page}");
    let names: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap_or(""))
        .collect();
    // Devices without a name sort first (ABM devices not pre-enrolled): serials[3].
    assert_eq!(names.len(), 2);
    let next = page["next"].as_str().unwrap();
    let (_, page2) = app
        .api(
            "GET",
            &format!("/api/v1/devices?status=assigned,expected&sort=name&limit=10&after={next}"),
            None,
        )
        .await;
    assert_eq!(page2["items"].as_array().unwrap().len(), 3, "{page2}");
    assert!(page2["next"].is_null());
    let (st, e) = app.api("GET", "/api/v1/devices?status=pending", None).await;
    assert_eq!(st, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("expected"));
    let (_, counts) = app.api("GET", "/api/v1/devices/counts", None).await;
    assert_eq!(counts["assigned"], 4, "{counts}");
    assert_eq!(counts["expected"], 1, "{counts}");

    // A device ABM lists but nobody pre-enrolled is refused at ADE, with a message for the
    // person holding it and an entry for the admin.
    let mut stranger = ade_device_builder(&sim, &serials[3]).build();
    let refused = app.ade_profile(&mut stranger).await.unwrap_err();
    let text = format!("{refused:?}");
    assert!(text.contains("403") || text.contains("Forbidden"), "{text}");
    wait_timeline(&app, &serials[3], "enrollment.refused").await;

    // The expected device enrolls, is held in Setup Assistant, and is released by itself
    // once its (empty) baseline is done.
    let mut d = ade_device_builder(&sim, &serials[0]).build();
    app.enroll_ade(&mut d).await;
    let v = app.device_view(&serials[0]).await;
    assert_eq!(v["status"], "awaiting_configuration", "{v}");
    assert_eq!(v["queued_commands"], json!(["DeviceConfigured"]), "{v}");
    assert_eq!(v["waiting_for"][0], "DeviceConfigured to be acknowledged");
    let done = d.run_until_idle().await.unwrap();
    assert_eq!(done.len(), 1);
    let v = app.wait_device_status(&serials[0], "enrolled").await;
    assert_eq!(v["enrollment"]["awaiting_configuration"], false, "{v}");
    // A manual release of a device that is not waiting is refused.
    let (st, e) = app
        .api(
            "POST",
            &format!("/api/v1/devices/{}/release", serials[0]),
            None,
        )
        .await;
    assert_eq!(st, 409, "{e}");
    assert_eq!(e["error"]["code"], "NOT_AWAITING_CONFIGURATION");
    let v = wait_timeline(&app, &serials[0], "setup.released").await;
    let kinds: Vec<&str> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "preenroll.import",
        "abm.assign",
        "enrollment.profile_served",
        "enrollment.authenticated",
        "enrollment.enrolled",
        "setup.release_queued",
        "command.queued",
        "setup.released",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }

    // Checked out: unenrolled, with the reason.
    d.check_out().await.unwrap();
    let v = app.wait_device_status(&serials[0], "unenrolled").await;
    assert!(v["reason"].as_str().unwrap().contains("checked out"), "{v}");

    // Released from ABM.
    sim.delete_device(&serials[2]).unwrap();
    sync(&app).await;
    let v = app.device_view(&serials[2]).await;
    assert_eq!(v["status"], "released", "{v}");

    // The activity log: filters, export, and who may read it.
    let (st, a) = app
        .api("GET", "/api/v1/activity?type=settings&limit=5", None)
        .await;
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["items"][0]["kind"], "settings.changed");
    assert!(a["items"][0]["actor"]
        .as_str()
        .unwrap()
        .starts_with("token:"));
    let (st, a) = app
        .api("GET", "/api/v1/activity?type=api.request&limit=100", None)
        .await;
    assert_eq!(st, 200);
    assert!(a["items"].as_array().unwrap().iter().any(|e| e["summary"]
        .as_str()
        .unwrap()
        .starts_with("PATCH /api/v1/settings -> 400")));
    let op = app.new_token("ops", "Operator").await;
    let (st, e) = app.api_as(&op, "GET", "/api/v1/activity", Vec::new()).await;
    assert_eq!(st, 403, "{e}");
    let resp = app
        .admin
        .get(
            &format!(
                "{}/api/v1/activity?device={}&format=csv",
                app.base_url, serials[0]
            ),
            mdm_sim::http::headers(&[("authorization", &format!("Bearer {}", app.token))]).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let csv = String::from_utf8(resp.body.to_vec()).unwrap();
    assert!(
        csv.starts_with("seq,at,actor,type,targets,outcome,summary\r\n"),
        "{csv}"
    );
    assert!(csv.contains("setup.released"), "{csv}");
    sim.shutdown().await;
}

#[tokio::test]
async fn enrolling_and_manual_release_when_automatic_release_is_off() {
    let app = Appliance::start().await;
    let (st, _) = app
        .api(
            "PATCH",
            "/api/v1/settings",
            Some(json!({"auto_release": false})),
        )
        .await;
    assert_eq!(st, 200);

    // Enrolling: identity and Authenticate, no TokenUpdate yet.
    let mut d = SimDevice::builder(DeviceKind::IPhone)
        .unwrap()
        .awaiting_configuration(true)
        .build();
    let profile = app.ade_profile(&mut d).await.unwrap();
    app.install_profile(&mut d, &profile);
    d.scep_enroll().await.unwrap();
    d.authenticate().await.unwrap();
    let v = app.device_view(&d.serial).await;
    assert_eq!(v["status"], "enrolling", "{v}");
    assert_eq!(v["enrollment_id"], d.udid.as_str());

    // Held in Setup Assistant, and kept there: automatic release is off.
    d.token_update().await.unwrap();
    let v = app.device_view(&d.serial).await;
    assert_eq!(v["status"], "awaiting_configuration", "{v}");
    assert!(
        v["waiting_for"][0]
            .as_str()
            .unwrap()
            .contains("automatic release is off"),
        "{v}"
    );
    assert!(d.run_until_idle().await.unwrap().is_empty());

    // DeviceConfigured through the generic command API is refused for a device that is not
    // waiting, and the admin's release works for one that is.
    let mut other = app.enroll_manual().await;
    let (st, e) = app
        .api(
            "POST",
            "/api/v1/commands",
            Some(json!({"targets": [other.udid], "request_type": "DeviceConfigured"})),
        )
        .await;
    assert_eq!(st, 409, "{e}");
    assert_eq!(e["error"]["code"], "NOT_AWAITING_CONFIGURATION");
    assert!(other.run_until_idle().await.unwrap().is_empty());

    let (st, r) = app
        .api(
            "POST",
            &format!("/api/v1/devices/{}/release", d.serial),
            None,
        )
        .await;
    assert_eq!(st, 202, "{r}");
    assert_eq!(r["enrollment_id"], d.udid.as_str());
    let done = d.run_until_idle().await.unwrap();
    assert_eq!(done.len(), 1);
    let v = app.wait_device_status(&d.serial, "enrolled").await;
    assert!(v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "setup.release_requested"));

    // After a restart the directory is rebuilt from the store: same statuses.
    let mut app = app;
    app.restart().await;
    assert_eq!(app.device_view(&d.serial).await["status"], "enrolled");
    assert_eq!(app.device_view(&other.udid).await["status"], "enrolled");
}

/// Lifecycle entries are buffered for a moment; an admin action written at once must not
/// overtake them, or the log would show the action before what happened just ahead of it.
#[tokio::test]
async fn the_activity_log_keeps_the_order_things_happened() {
    let app = Appliance::start().await;
    for round in 0..3 {
        // A refused credential: buffered, like the entries devices cause.
        let (st, _) = app
            .api_as("not-a-token", "GET", "/api/v1/devices", Vec::new())
            .await;
        assert_eq!(st, 401);
        // Then at once an admin change, recorded before its answer leaves.
        let (st, e) = app
            .api(
                "PATCH",
                "/api/v1/settings",
                Some(json!({"no_such_setting": round})),
            )
            .await;
        assert_eq!(st, 400, "{e}");
    }
    // A change that writes its entry in its own transaction keeps the order too.
    let (st, _) = app
        .api_as("not-a-token", "GET", "/api/v1/devices", Vec::new())
        .await;
    assert_eq!(st, 401);
    app.new_user("alice", "Alice", "Alice-Password-1").await;
    let (st, log) = app.api("GET", "/api/v1/activity?limit=9", None).await;
    assert_eq!(st, 200, "{log}");
    let kinds: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    // Newest first.
    assert_eq!(
        kinds,
        [
            "api.request",
            "user.created",
            "auth.refused",
            "api.request",
            "auth.refused",
            "api.request",
            "auth.refused",
            "api.request",
            "auth.refused"
        ],
        "{log}"
    );
}
