//! Groups and configuration profiles end to end through the admin API, with the ABM simulator
//! and simulated devices: static and rule-based groups, signed and unsigned uploads, the
//! baseline installed while the device waits in Setup Assistant and its automatic release,
//! a refused install holding a device with the reason shown, unassignment removing profiles,
//! a replaced file reinstalled, and profile files never stored in the clear.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use appliance_tests::{ade_device_builder, Appliance};
use mdm_sim::abm::{AbmSimConfig, AbmSimulator, DeviceChange, ServerId};
use mdm_sim::device::SimDevice;
use serde_json::{json, Value};

const SERVER: ServerId = ServerId(0);
const WIFI_SECRET: &str = "Corr3ct-Horse-Battery-Staple";

/// A fresh PayloadUUID.
fn new_uuid() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("6D0F1A2B-0000-4000-8000-{n:012X}")
}

fn profile(identifier: &str, display: &str, items: &str) -> Vec<u8> {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict>
<key>PayloadType</key><string>Configuration</string>
<key>PayloadVersion</key><integer>1</integer>
<key>PayloadIdentifier</key><string>{identifier}</string>
<key>PayloadUUID</key><string>{}</string>
<key>PayloadDisplayName</key><string>{display}</string>
<key>PayloadContent</key><array>{items}</array>
</dict></plist>"#,
        new_uuid()
    )
    .into_bytes()
}

fn wifi(identifier: &str, ssid: &str) -> Vec<u8> {
    profile(
        identifier,
        "Office Wi-Fi",
        &format!(
            r#"<dict>
<key>PayloadType</key><string>com.apple.wifi.managed</string>
<key>PayloadVersion</key><integer>1</integer>
<key>PayloadIdentifier</key><string>{identifier}.wifi</string>
<key>PayloadUUID</key><string>{}</string>
<key>SSID_STR</key><string>{ssid}</string>
<key>EncryptionType</key><string>WPA2</string>
<key>Password</key><string>{WIFI_SECRET}</string>
</dict>"#,
            new_uuid()
        ),
    )
}

fn restrictions(identifier: &str) -> Vec<u8> {
    profile(
        identifier,
        "Restrictions",
        &format!(
            r#"<dict>
<key>PayloadType</key><string>com.apple.applicationaccess</string>
<key>PayloadVersion</key><integer>1</integer>
<key>PayloadIdentifier</key><string>{identifier}.restrictions</string>
<key>PayloadUUID</key><string>{}</string>
<key>allowCamera</key><false/>
</dict>"#,
            new_uuid()
        ),
    )
}

/// A root certificate payload whose content is not a certificate: valid as a profile, refused
/// by the device when it installs it.
fn broken_root(identifier: &str) -> Vec<u8> {
    profile(
        identifier,
        "Broken root",
        &format!(
            r#"<dict>
<key>PayloadType</key><string>com.apple.security.root</string>
<key>PayloadVersion</key><integer>1</integer>
<key>PayloadIdentifier</key><string>{identifier}.root</string>
<key>PayloadUUID</key><string>{}</string>
<key>PayloadContent</key><data>bm90IGEgY2VydGlmaWNhdGU=</data>
</dict>"#,
            new_uuid()
        ),
    )
}

/// Signs a profile with the openssl CLI, as sites do with their own signing certificate.
fn openssl_sign(content: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("in.mobileconfig"), content).unwrap();
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .args(["-subj", "/CN=Profile Signing/O=Example Site"])
        .arg("-keyout")
        .arg(p("key.pem"))
        .arg("-out")
        .arg(p("cert.pem"))
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let ok = Command::new("openssl")
        .args(["cms", "-sign", "-nodetach", "-binary", "-outform", "DER"])
        .arg("-in")
        .arg(p("in.mobileconfig"))
        .arg("-signer")
        .arg(p("cert.pem"))
        .arg("-inkey")
        .arg(p("key.pem"))
        .arg("-out")
        .arg(p("out.der"))
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    std::fs::read(p("out.der")).unwrap()
}

/// ABM connection `north` with a default enrollment profile, synced and assigned.
async fn connect(app: &Appliance, sim: &AbmSimulator) {
    app.connect_abm(sim, "north", SERVER).await;
    app.default_staff_profile("north").await;
    let (st, v) = app.api("POST", "/api/v1/abm/north/sync", None).await;
    assert_eq!(st, 200, "{v}");
}

/// ADE enrollment through Setup Assistant: enrolled, held, nothing run yet.
async fn ade_enroll(app: &Appliance, sim: &AbmSimulator, serial: &str) -> SimDevice {
    let mut d = ade_device_builder(sim, serial)
        .os("17.5", "21F79")
        .awaiting_configuration(true)
        .build();
    app.enroll_ade(&mut d).await;
    d
}

fn installs(v: &Value) -> Vec<(String, String, bool)> {
    let mut out: Vec<(String, String, bool)> = v["profiles"]["installs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["identifier"].as_str().unwrap().to_string(),
                i["state"].as_str().unwrap().to_string(),
                i["current"].as_bool().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn held(d: &SimDevice) -> Vec<String> {
    let mut ids: Vec<String> = d
        .installed_profiles()
        .iter()
        .map(|p| p.identifier.clone())
        .filter(|i| i.starts_with("org.example."))
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn groups_profiles_baseline_release_and_sync() {
    let sim = AbmSimulator::start(AbmSimConfig::default()).await.unwrap();
    let serials = sim.add_devices(SERVER, 3).unwrap();
    for (serial, family) in serials.iter().zip(["iPad", "iPad", "Mac"]) {
        let change = DeviceChange {
            device_family: Some(family.to_string()),
            ..DeviceChange::default()
        };
        sim.modify_device(serial, &change).unwrap();
    }
    let mut app = Appliance::start().await;
    connect(&app, &sim).await;

    // Groups: a static pilot group and a rule-based one for current iPads.
    let (st, pilot) = app
        .api(
            "POST",
            "/api/v1/groups",
            Some(json!({"name": "Pilot", "members": [serials[0].to_lowercase()]})),
        )
        .await;
    assert_eq!(st, 201, "{pilot}");
    assert_eq!(
        (pilot["kind"].as_str(), pilot["members"].as_u64()),
        (Some("static"), Some(1))
    );
    let rule = json!({"match": "all", "conditions": [
        {"field": "platform", "op": "is", "value": "iPad"},
        {"field": "abm_connection", "op": "is", "value": "north"}
    ]});
    let (st, ipads) = app
        .api(
            "POST",
            "/api/v1/groups",
            Some(json!({"name": "iPads", "rule": rule})),
        )
        .await;
    assert_eq!(st, 201, "{ipads}");
    assert_eq!(
        ipads["members"], 2,
        "ABM lists two iPads and a Mac: {ipads}"
    );
    let (st, e) = app
        .api("POST", "/api/v1/groups", Some(json!({"name": "pilot"})))
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (409, Some("GROUP_NAME_TAKEN")),
        "{e}"
    );
    let (st, e) = app
        .api(
            "POST",
            "/api/v1/groups",
            Some(
                json!({"name": "Bad", "rule": {"match": "all", "conditions": [
                {"field": "model", "op": "version_at_least", "value": "17"}]}}),
            ),
        )
        .await;
    assert_eq!(st, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("rule.conditions[0].op"),
        "{e}"
    );

    // Uploads: validated, with the field named; one identifier per profile.
    let (st, e) = app
        .api_raw(
            "POST",
            "/api/v1/profiles",
            profile("org.example.empty", "Empty", ""),
        )
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (400, Some("PROFILE_INVALID")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("PayloadContent"),
        "{e}"
    );
    let (st, wifi_p) = app
        .api_raw(
            "POST",
            "/api/v1/profiles?name=Office%20Wi-Fi",
            wifi("org.example.wifi", "Office"),
        )
        .await;
    assert_eq!(st, 201, "{wifi_p}");
    assert_eq!(wifi_p["identifier"], "org.example.wifi");
    let (st, e) = app
        .api_raw(
            "POST",
            "/api/v1/profiles?name=Other",
            wifi("org.example.wifi", "Other"),
        )
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (409, Some("PROFILE_IDENTIFIER_TAKEN")),
        "{e}"
    );
    let signed = openssl_sign(&restrictions("org.example.restrictions"));
    let (st, restr) = app
        .api_raw("POST", "/api/v1/profiles", signed.clone())
        .await;
    assert_eq!(st, 201, "{restr}");
    assert!(
        restr["summary"]["signer"]["subject"]
            .as_str()
            .unwrap()
            .contains("Profile Signing"),
        "{restr}"
    );
    let mut tampered = signed.clone();
    let at = tampered
        .windows(b"allowCamera".len())
        .position(|w| w == b"allowCamera")
        .unwrap();
    tampered[at] = b'A';
    let (st, e) = app
        .api_raw("POST", "/api/v1/profiles?name=Tampered", tampered)
        .await;
    assert_eq!(
        st, 400,
        "a signed profile altered after signing is refused: {e}"
    );
    let (st, broken) = app
        .api_raw("POST", "/api/v1/profiles", broken_root("org.example.root"))
        .await;
    assert_eq!(st, 201, "{broken}");

    // Assignments: Wi-Fi to every iPad, restrictions to the pilot group, the broken root
    // directly to the second device.
    let assign = |p: &str, body: Value| {
        let path = format!("/api/v1/profiles/{p}/assign");
        let app = &app;
        async move { app.api("POST", &path, Some(body)).await }
    };
    let (st, v) = assign("Office%20Wi-Fi", json!({"groups": ["iPads"]})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["reconcile"]["installs"], 0, "nothing enrolled yet: {v}");
    let (st, v) = assign("org.example.restrictions", json!({"groups": [pilot["id"]]})).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = assign(
        broken["id"].as_str().unwrap(),
        json!({"devices": [serials[1]]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (st, e) = assign("org.example.wifi", json!({"groups": ["Nope"]})).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (404, Some("GROUP_NOT_FOUND")),
        "{e}"
    );
    let (st, e) = app.api("DELETE", "/api/v1/groups/Pilot", None).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (409, Some("GROUP_IN_USE")),
        "{e}"
    );

    // The first device enrolls and waits in Setup Assistant: its baseline is queued and its
    // release waits for it.
    let mut d0 = ade_enroll(&app, &sim, &serials[0]).await;
    let v = app.device_view(&serials[0]).await;
    assert_eq!(v["status"], "awaiting_configuration", "{v}");
    assert_eq!(
        v["queued_commands"],
        json!(["InstallProfile", "InstallProfile"]),
        "{v}"
    );
    let mut groups: Vec<&str> = v["profiles"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    groups.sort_unstable();
    assert_eq!(groups, ["Pilot", "iPads"], "{v}");
    assert!(
        installs(&v).iter().all(|(_, s, _)| s == "installing"),
        "{v}"
    );
    // The device installs both, then DeviceConfigured follows by itself.
    d0.run_until_idle().await.unwrap();
    let v = app.wait_device_status(&serials[0], "enrolled").await;
    assert_eq!(
        installs(&v),
        [
            (
                "org.example.restrictions".to_string(),
                "installed".to_string(),
                true
            ),
            (
                "org.example.wifi".to_string(),
                "installed".to_string(),
                true
            ),
        ],
        "{v}"
    );
    assert_eq!(held(&d0), ["org.example.restrictions", "org.example.wifi"]);

    // The second device: its broken profile is refused, so it stays held, and says why.
    let mut d1 = ade_enroll(&app, &sim, &serials[1]).await;
    d1.run_until_idle().await.unwrap();
    let v = app.device_view(&serials[1]).await;
    assert_eq!(v["status"], "awaiting_configuration", "{v}");
    let states = installs(&v);
    assert!(
        states.contains(&("org.example.root".into(), "failed".into(), true)),
        "{v}"
    );
    assert!(
        states.contains(&("org.example.wifi".into(), "installed".into(), true)),
        "{v}"
    );
    let failure = v["profiles"]["installs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["state"] == "failed")
        .unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(failure.contains("could not be installed"), "{failure}");
    assert!(
        v["waiting_for"].to_string().contains("InstallProfile"),
        "the release waits for the failed install: {v}"
    );
    let (_, page) = app
        .api("GET", "/api/v1/profiles/org.example.root/installs", None)
        .await;
    assert_eq!(page["items"][0]["state"], "failed", "{page}");
    let (_, log) = app
        .api("GET", "/api/v1/activity?type=profile.install_failed", None)
        .await;
    assert_eq!(log["items"].as_array().unwrap().len(), 1, "{log}");
    // The admin takes the broken profile away and releases the device by hand.
    let (st, v) = app
        .api(
            "POST",
            "/api/v1/profiles/org.example.root/unassign",
            Some(json!({"devices": [serials[1]]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["reconcile"]["removals"], 0,
        "a failed install needs no removal: {v}"
    );
    let (st, v) = app
        .api(
            "POST",
            &format!("/api/v1/devices/{}/release", serials[1]),
            None,
        )
        .await;
    assert_eq!(st, 202, "{v}");
    d1.run_until_idle().await.unwrap();
    let v = app.wait_device_status(&serials[1], "enrolled").await;
    assert_eq!(
        installs(&v),
        [("org.example.wifi".into(), "installed".into(), true)],
        "{v}"
    );

    // Kept in sync: joining the pilot group installs, leaving it removes.
    let (st, v) = app
        .api(
            "POST",
            "/api/v1/groups/Pilot/members",
            Some(json!({"add": [serials[1]], "remove": [serials[0]]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["added"].as_u64(), v["removed"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    assert_eq!(
        (
            v["reconcile"]["installs"].as_u64(),
            v["reconcile"]["removals"].as_u64()
        ),
        (Some(1), Some(1)),
        "{v}"
    );
    d0.run_until_idle().await.unwrap();
    d1.run_until_idle().await.unwrap();
    assert_eq!(held(&d0), ["org.example.wifi"]);
    assert_eq!(held(&d1), ["org.example.restrictions", "org.example.wifi"]);
    let v = app.device_view(&serials[0]).await;
    assert_eq!(
        installs(&v),
        [("org.example.wifi".into(), "installed".into(), true)],
        "{v}"
    );

    // A new file for the Wi-Fi profile goes to every device holding it.
    let (st, v) = app
        .api_raw(
            "PUT",
            "/api/v1/profiles/org.example.wifi",
            wifi("org.example.wifi", "Office-5G"),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let v = app.device_view(&serials[0]).await;
    assert_eq!(
        installs(&v),
        [("org.example.wifi".into(), "installing".into(), true)],
        "{v}"
    );
    d0.run_until_idle().await.unwrap();
    let v = app.device_view(&serials[0]).await;
    assert_eq!(
        installs(&v),
        [("org.example.wifi".into(), "installed".into(), true)],
        "{v}"
    );
    let (st, e) = app
        .api_raw(
            "PUT",
            "/api/v1/profiles/org.example.wifi",
            wifi("org.example.other", "Office"),
        )
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (409, Some("PROFILE_IDENTIFIER_CHANGED")),
        "{e}"
    );

    // Deleting a profile removes it from every device.
    let (st, v) = app
        .api("DELETE", "/api/v1/profiles/org.example.restrictions", None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["reconcile"]["removals"], 1, "{v}");
    d1.run_until_idle().await.unwrap();
    assert_eq!(held(&d1), ["org.example.wifi"]);
    let v = app.device_view(&serials[1]).await;
    assert_eq!(
        installs(&v),
        [("org.example.wifi".into(), "installed".into(), true)],
        "{v}"
    );

    // Roles: an operator assigns but cannot upload or read files back.
    let op = app.new_token("ops", "Operator").await;
    let op = op.as_str();
    let (st, _) = app
        .api_as(
            op,
            "GET",
            "/api/v1/profiles/org.example.wifi/file",
            Vec::new(),
        )
        .await;
    assert_eq!(st, 403);
    let (st, _) = app
        .api_as(op, "POST", "/api/v1/profiles", wifi("org.example.ops", "x"))
        .await;
    assert_eq!(st, 403);
    let (st, v) = app
        .api_as(
            op,
            "POST",
            "/api/v1/groups/Pilot/members",
            serde_json::to_vec(&json!({"remove": [serials[1]]})).unwrap(),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, file) = app
        .api("GET", "/api/v1/profiles/org.example.wifi/file", None)
        .await;
    assert_eq!(st, 200);
    assert!(file.as_str().unwrap().contains("Office-5G"));

    // Automatic unenrollment of offline devices is off until set, and must come after the
    // offline threshold.
    let (_, settings) = app.api("GET", "/api/v1/settings", None).await;
    assert_eq!(settings["auto_unenroll_after_days"], 0, "{settings}");
    let (st, e) = app
        .api(
            "PATCH",
            "/api/v1/settings",
            Some(json!({"auto_unenroll_after_days": 2})),
        )
        .await;
    assert_eq!(st, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("auto_unenroll_after_days"),
        "{e}"
    );
    let (st, s) = app
        .api(
            "PATCH",
            "/api/v1/settings",
            Some(json!({"auto_unenroll_after_days": 30})),
        )
        .await;
    assert_eq!(
        (st, s["auto_unenroll_after_days"].as_u64()),
        (200, Some(30)),
        "{s}"
    );
    let (st, e) = app
        .api(
            "GET",
            &format!("/api/v1/devices/{}/invitation", serials[0]),
            None,
        )
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (404, Some("INVITATION_NOT_FOUND")),
        "{e}"
    );

    // The profile's secret is in the device's hands and nowhere in the database.
    app.stop().await;
    let db = std::fs::read(app.data_dir().join("mdm.redb")).unwrap();
    assert!(
        !db.windows(WIFI_SECRET.len())
            .any(|w| w == WIFI_SECRET.as_bytes()),
        "a profile secret is stored in the clear"
    );
}
