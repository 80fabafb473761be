//! Enrollment end to end: manual links, ADE (POST and web view), SCEP challenges, profiles
//! checked by OpenSSL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use appliance_tests::{Appliance, TOPIC};
use mdm_sim::error::FailInfo;
use mdm_sim::error::{DeviceError, ScepError};
use serde_json::json;

#[tokio::test]
async fn manual_enrollment_end_to_end() {
    let app = Appliance::start().await;
    let d = app.enroll_manual().await;

    let (status, v) = app.enrollment(&d.udid).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "Enrolled");
    assert_eq!(v["topic"], TOPIC);
    assert_eq!(v["push_token_present"], true);
    assert_eq!(v["facts"]["serial_number"], d.serial.as_str());
    assert!(v["source"]["Link"].is_object(), "{v}");
    // The issued identity is the one bound, and it chains to the appliance CA.
    let identity = d.identity().unwrap();
    let der = der::Encode::to_der(&identity.certificate).unwrap();
    let sha = mdm_pki::Certificate::from_der(&der).unwrap().sha256();
    assert_eq!(v["identity_sha256"], hex::encode(sha));

    let (_, list) = app.api("GET", "/api/v1/enrollments", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    // Secrets never leave the appliance through the API.
    let text = list.to_string();
    assert!(
        !text.contains("unlock_token_sealed") && !text.contains("push_magic"),
        "{text}"
    );
}

#[tokio::test]
async fn profile_verifies_with_openssl_against_the_appliance_ca() {
    let app = Appliance::start().await;
    let url = app.link().await;
    let d = app.device();
    let profile = d.manual_enroll(&app.admin, &url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.der"), &profile).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &app.ca_pem).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "cms", "-verify", "-inform", "DER", "-in", "p.der", "-CAfile", "ca.pem", "-out",
            "p.xml",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl cms -verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let xml = std::fs::read_to_string(dir.path().join("p.xml")).unwrap();
    for needle in [
        "com.apple.security.scep",
        "com.apple.mdm",
        "<key>AccessRights</key>",
        "<integer>8191</integer>",
        "com.apple.mdm.per-user-connections",
        TOPIC,
        &format!("{}/scep</string>", app.base_url),
        &format!("{}/mdm/checkin", app.base_url),
    ] {
        assert!(xml.contains(needle), "profile lacks {needle}");
    }
    assert!(
        !xml.contains("/scep?"),
        "the SCEP URL must not carry a query string"
    );
}

#[tokio::test]
async fn links_expire_are_revocable_and_count_uses() {
    let app = Appliance::start().await;
    let (s, v) = app
        .api(
            "POST",
            "/api/v1/enroll-links",
            Some(json!({"label": "cart", "max_uses": 1})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let url = v["url"].as_str().unwrap().to_string();
    let d = app.device();
    d.manual_enroll(&app.admin, &url).await.unwrap();
    let err = d.manual_enroll(&app.admin, &url).await.unwrap_err();
    assert_eq!(err.status().unwrap().status, 404, "used up");

    let (_, v) = app
        .api("POST", "/api/v1/enroll-links", Some(json!({"label": "x"})))
        .await;
    let (url, id) = (
        v["url"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    );
    let (s, _) = app
        .api("DELETE", &format!("/api/v1/enroll-links/{id}"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        d.manual_enroll(&app.admin, &url)
            .await
            .unwrap_err()
            .status()
            .unwrap()
            .status,
        404
    );

    let (_, v) = app
        .api(
            "POST",
            "/api/v1/enroll-links",
            Some(json!({"ttl_seconds": 1})),
        )
        .await;
    let url = v["url"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        d.manual_enroll(&app.admin, &url)
            .await
            .unwrap_err()
            .status()
            .unwrap()
            .status,
        404
    );

    let bad = format!("{}/enroll/not-a-token", app.base_url);
    assert_eq!(
        d.manual_enroll(&app.admin, &bad)
            .await
            .unwrap_err()
            .status()
            .unwrap()
            .status,
        404
    );
}

#[tokio::test]
async fn ade_enrollment_with_signed_machine_info() {
    let app = Appliance::start().await;
    let mut d = app.device();
    app.enroll_ade(&mut d).await;
    let (_, v) = app.enrollment(&d.udid).await;
    assert_eq!(v["state"], "Enrolled");
    assert_eq!(v["source"]["Ade"]["udid"], d.udid.as_str());
    assert_eq!(v["source"]["Ade"]["serial"], d.serial.as_str());

    // The configuration_web_url flavour.
    let mut d2 = app.device();
    let profile = d2
        .ade_web_enroll(
            &app.admin,
            &format!("{}/mdm/enroll", app.base_url),
            &app.apple,
        )
        .await
        .unwrap();
    app.install_enrollment(&mut d2, &profile).await;
    assert_eq!(app.enrollment(&d2.udid).await.1["state"], "Enrolled");
}

#[tokio::test]
async fn ade_refuses_machine_info_not_from_apple() {
    let app = Appliance::start().await;
    let rogue = mdm_sim::apple::AppleStandIn::generate().unwrap();
    let mut d = app.device();
    let err = d
        .ade_enroll(&app.admin, &format!("{}/mdm/enroll", app.base_url), &rogue)
        .await
        .unwrap_err();
    let st = err.status().unwrap();
    assert_eq!(st.status, 403);
    assert!(String::from_utf8_lossy(&st.body).contains("MACHINEINFO_UNTRUSTED"));

    // Garbage and a missing header are clear 400s.
    let r = app
        .admin
        .post(
            &format!("{}/mdm/enroll", app.base_url),
            "application/pkcs7-signature",
            b"nope".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let r = app
        .admin
        .get(&format!("{}/mdm/enroll", app.base_url), Default::default())
        .await
        .unwrap();
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn ade_asks_outdated_devices_to_update() {
    let app = Appliance::start_with(|c| c.ade.min_os_version = Some("17.4".into())).await;
    let mut old = mdm_sim::device::SimDevice::builder(mdm_sim::device::DeviceKind::IPhone)
        .unwrap()
        .os("16.7", "20H19")
        .build();
    old.can_request_software_update = true;
    let err = app.ade_profile(&mut old).await.unwrap_err();
    let st = err.status().unwrap();
    assert_eq!(st.status, 403);
    let v: serde_json::Value = serde_json::from_slice(&st.body).unwrap();
    assert_eq!(v["code"], "com.apple.softwareupdate.required");
    assert_eq!(v["details"]["OSVersion"], "17.4");

    let mut new = mdm_sim::device::SimDevice::builder(mdm_sim::device::DeviceKind::IPhone)
        .unwrap()
        .os("17.10", "21H1")
        .build();
    new.can_request_software_update = true;
    app.ade_profile(&mut new).await.unwrap();
}

fn rejected(err: &DeviceError) -> Option<FailInfo> {
    match err {
        DeviceError::Scep(ScepError::Rejected(f)) => Some(*f),
        _ => None,
    }
}

#[tokio::test]
async fn scep_challenges_are_one_time() {
    let app = Appliance::start().await;
    let url = app.link().await;
    let mut d = app.device();
    let profile = d.manual_enroll(&app.admin, &url).await.unwrap();
    app.install_profile(&mut d, &profile);
    d.scep_enroll().await.unwrap();

    // A second device replaying the same profile (same challenge) is refused.
    let mut thief = app.device();
    app.install_profile(&mut thief, &profile);
    let err = thief.scep_enroll().await.unwrap_err();
    assert_eq!(rejected(&err), Some(FailInfo::BadRequest), "{err}");
}

#[tokio::test]
async fn scep_challenges_expire() {
    let app = Appliance::start_with(|c| c.enrollment.challenge_ttl_seconds = 1).await;
    let url = app.link().await;
    let mut d = app.device();
    let profile = d.manual_enroll(&app.admin, &url).await.unwrap();
    app.install_profile(&mut d, &profile);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let err = d.scep_enroll().await.unwrap_err();
    assert_eq!(rejected(&err), Some(FailInfo::BadRequest), "{err}");
}

#[tokio::test]
async fn scep_garbage_is_a_clear_error() {
    let app = Appliance::start().await;
    let url = format!("{}/scep?operation=PKIOperation", app.base_url);
    let r = app
        .admin
        .post(
            &url,
            "application/x-pki-message",
            vec![0x30, 0x03, 0x02, 0x01, 0x01],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let r = app
        .admin
        .get(
            &format!("{}/scep?operation=Bogus", app.base_url),
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let caps = app
        .admin
        .get(
            &format!("{}/scep?operation=GetCACaps", app.base_url),
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(caps.status, 200);
    let caps = String::from_utf8_lossy(&caps.body).to_string();
    for cap in [
        "POSTPKIOperation",
        "SHA-256",
        "AES",
        "SCEPStandard",
        "Renewal",
    ] {
        assert!(caps.contains(cap), "{caps}");
    }
}

#[tokio::test]
async fn renewed_identity_moves_the_enrollment() {
    let app = Appliance::start().await;
    let mut d = app.enroll_manual().await;
    let before = app.enrollment(&d.udid).await.1["identity_sha256"].clone();
    d.renew_identity().await.unwrap();
    // The first request with the renewed certificate moves the binding.
    assert!(d.run_until_idle().await.unwrap().is_empty());
    let after = app.enrollment(&d.udid).await.1["identity_sha256"].clone();
    assert_ne!(before, after);
}
