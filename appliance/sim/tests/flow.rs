//! The simulated device against a small fake of the device endpoints over real TLS:
//! enrollment, SCEP, check-ins with each identity presentation, the command loop.

// Helpers outside #[test] functions unwrap too: a failure must abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine;
use der::Encode;
use mdm_sim::checkin::UserAuthOutcome;
use mdm_sim::cms;
use mdm_sim::commands::CommandStatus;
use mdm_sim::device::{DeviceKind, IdentityFault, IdentityTransport, SimDevice, SimUser};
use mdm_sim::error::{DeviceError, FailInfo, ScepError};
use mdm_sim::http::HttpClient;
use mdm_sim::x509;

fn signature_of(seen: &support::Seen) -> Option<Vec<u8>> {
    let h = seen.headers.get("mdm-signature")?.to_str().ok()?;
    base64::engine::general_purpose::STANDARD.decode(h).ok()
}

/// Cross-check of the `Mdm-Signature` format with the openssl CLI, when installed.
fn openssl_verifies_detached(sig: &[u8], body: &[u8], ca_pem: &str) {
    if !std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("openssl not found: skipping Mdm-Signature cross-check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sig.der"), sig).unwrap();
    std::fs::write(dir.path().join("body"), body).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
    let out = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            "sig.der",
            "-content",
            "body",
            "-binary",
            "-CAfile",
            "ca.pem",
            "-purpose",
            "any",
            "-out",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn enrolled(fake: &support::Fake, kind: DeviceKind) -> SimDevice {
    let client = HttpClient::from_ca_pem(fake.ca_pem().as_bytes()).unwrap();
    let mut device = SimDevice::random(kind).unwrap();
    let profile = device
        .manual_enroll(&client, &format!("{}/enroll/abc", fake.base()))
        .await
        .unwrap();
    device
        .install_profile(&profile, Some(std::slice::from_ref(&fake.ca)))
        .unwrap();
    device.complete_enrollment().await.unwrap();
    device
}

#[tokio::test]
async fn manual_enrollment_scep_checkins_and_commands() {
    let fake = support::start().await;
    let mut device = enrolled(&fake, DeviceKind::IPhone).await;

    let identity = device.identity().unwrap().clone();
    x509::verify_issued_by(&identity.certificate, &fake.ca).unwrap();

    let auth = fake
        .seen()
        .into_iter()
        .find(|s| s.path == "/mdm/checkin")
        .unwrap();
    assert_eq!(
        auth.headers.get("content-type").unwrap(),
        "application/x-apple-aspen-mdm-checkin"
    );
    assert!(
        auth.client_cert.is_none(),
        "SignMessage=true: no TLS client certificate"
    );
    let sig = signature_of(&auth).unwrap();
    let parsed = cms::parse_signed_data(&sig).unwrap();
    assert!(parsed.content.is_none(), "detached");
    let signer = parsed.verify(Some(&auth.body), &[]).unwrap();
    assert_eq!(signer.certificate, identity.certificate);
    openssl_verifies_detached(&sig, &auth.body, &fake.ca_pem());

    fake.queue("11111111-0000-0000-0000-000000000001", "DeviceInformation");
    fake.queue("11111111-0000-0000-0000-000000000002", "NoSuchCommand");
    let done = device.run_until_idle().await.unwrap();
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].status, CommandStatus::Acknowledged);
    assert_eq!(done[1].status, CommandStatus::Error);
    let reports: Vec<_> = fake
        .seen()
        .into_iter()
        .filter(|s| s.path == "/mdm/connect")
        .collect();
    assert_eq!(reports.len(), 3);
    let idle: plist::Dictionary = plist::from_bytes(&reports[0].body).unwrap();
    assert_eq!(idle["Status"].as_string(), Some("Idle"));
    let ack: plist::Dictionary = plist::from_bytes(&reports[1].body).unwrap();
    assert_eq!(
        ack["CommandUUID"].as_string(),
        Some("11111111-0000-0000-0000-000000000001")
    );
    for r in &reports {
        assert!(signature_of(r).is_some());
    }
    // SCEP, check-ins and command reports all went over one kept-alive connection.
    assert_eq!(device.connections_opened(), 1);

    device.set_bootstrap_token(b"bootstrap").await.unwrap();
    assert_eq!(
        device.get_bootstrap_token().await.unwrap().as_deref(),
        Some(&b"bootstrap"[..])
    );
    let user = SimUser::new("alice", "Alice").unwrap();
    assert_eq!(
        device.user_authenticate(&user, None).await.unwrap(),
        UserAuthOutcome::Declined
    );
    assert_eq!(
        device.declarative_management("tokens", None).await.unwrap(),
        br#"{"SyncTokens":{}}"#
    );

    let old = identity.certificate.clone();
    device.renew_identity().await.unwrap();
    let renewed = device.identity().unwrap().certificate.clone();
    assert_ne!(renewed, old);
    x509::verify_issued_by(&renewed, &fake.ca).unwrap();
    device.check_out().await.unwrap();
}

#[tokio::test]
async fn identity_presentation_modes_and_faults() {
    let fake = support::start().await;
    let mut device = enrolled(&fake, DeviceKind::Mac).await;
    let mine = device.identity().unwrap().certificate.to_der().unwrap();

    device.identity_transport = IdentityTransport::TlsClientCertificate;
    device.authenticate().await.unwrap();
    let seen = fake.last("/mdm/checkin");
    assert_eq!(seen.client_cert.as_deref(), Some(mine.as_slice()));
    assert!(seen.headers.get("mdm-signature").is_none());

    device.identity_transport = IdentityTransport::SignatureHeader;
    device.identity_fault = IdentityFault::Omit;
    device.authenticate().await.unwrap();
    let seen = fake.last("/mdm/checkin");
    assert!(seen.headers.get("mdm-signature").is_none() && seen.client_cert.is_none());

    device.identity_fault = IdentityFault::CorruptSignature;
    device.authenticate().await.unwrap();
    let seen = fake.last("/mdm/checkin");
    let parsed = cms::parse_signed_data(&signature_of(&seen).unwrap()).unwrap();
    assert!(parsed.verify(Some(&seen.body), &[]).is_err());

    device.identity_fault = IdentityFault::ForeignCertificate;
    device.authenticate().await.unwrap();
    let seen = fake.last("/mdm/checkin");
    let parsed = cms::parse_signed_data(&signature_of(&seen).unwrap()).unwrap();
    let signer = parsed.verify(Some(&seen.body), &[]).unwrap();
    assert!(x509::verify_issued_by(&signer.certificate, &fake.ca).is_err());

    let other = enrolled(&fake, DeviceKind::IPhone).await;
    device.identity_fault = IdentityFault::Impersonate(Box::new(other.identity().unwrap().clone()));
    device.authenticate().await.unwrap();
    let seen = fake.last("/mdm/checkin");
    let parsed = cms::parse_signed_data(&signature_of(&seen).unwrap()).unwrap();
    let signer = parsed.verify(Some(&seen.body), &[]).unwrap();
    assert_eq!(signer.certificate, other.identity().unwrap().certificate);
    let body: plist::Dictionary = plist::from_bytes(&seen.body).unwrap();
    assert_eq!(body["UDID"].as_string(), Some(device.udid.as_str()));
}

#[tokio::test]
async fn ade_enrollment_and_software_update_demand() {
    let fake = support::start().await;
    let client = HttpClient::from_ca_pem(fake.ca_pem().as_bytes()).unwrap();
    let mut old = SimDevice::builder(DeviceKind::IPhone)
        .unwrap()
        .os("16.7", "20H19")
        .build();
    let err = old
        .ade_enroll(&client, &format!("{}/mdm/enroll", fake.base()), &fake.apple)
        .await
        .unwrap_err();
    let status = err.status().unwrap();
    assert_eq!(status.status, 403);
    assert_eq!(status.software_update_required().as_deref(), Some("17.0"));
    let seen = fake.last("/mdm/enroll");
    assert_eq!(
        seen.headers.get("content-type").unwrap(),
        "application/pkcs7-signature"
    );

    let mut device = SimDevice::random(DeviceKind::IPad).unwrap();
    let profile = device
        .ade_enroll(&client, &fake.base(), &fake.apple)
        .await
        .unwrap();
    device
        .install_profile(&profile, Some(std::slice::from_ref(&fake.ca)))
        .unwrap();

    let mut web = SimDevice::random(DeviceKind::IPad).unwrap();
    let profile = web
        .ade_web_enroll(&client, &format!("{}/mdm/enroll", fake.base()), &fake.apple)
        .await
        .unwrap();
    assert!(web.install_profile(&profile, None).is_ok());
    assert!(fake
        .last("/mdm/enroll")
        .headers
        .contains_key("x-apple-aspen-deviceinfo"));

    // A stand-in the server does not trust is refused.
    let rogue = mdm_sim::apple::AppleStandIn::generate().unwrap();
    let err = device
        .ade_enroll(&client, &format!("{}/mdm/enroll", fake.base()), &rogue)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.status), Some(403));
}

#[tokio::test]
async fn scep_rejection_and_erase() {
    let fake = support::start().await;
    let client = HttpClient::from_ca_pem(fake.ca_pem().as_bytes()).unwrap();
    let mut device = SimDevice::random(DeviceKind::IPhone).unwrap();
    let profile = device
        .manual_enroll(&client, &format!("{}/enroll/x", fake.base()))
        .await
        .unwrap();
    device.install_profile(&profile, None).unwrap();
    fake.state.lock().unwrap().challenge = "changed".into();
    let err = device.scep_enroll().await.unwrap_err();
    assert!(
        matches!(
            err,
            DeviceError::Scep(ScepError::Rejected(FailInfo::BadRequest))
        ),
        "{err}"
    );

    fake.state.lock().unwrap().challenge = "one-time-challenge".into();
    let mut device = enrolled(&fake, DeviceKind::IPhone).await;
    fake.queue("e1", "EraseDevice");
    fake.queue("e2", "DeviceInformation");
    let done = device.run_until_idle().await.unwrap();
    assert_eq!(done.len(), 1);
    assert!(device.is_erased());
    assert!(matches!(
        device.authenticate().await,
        Err(DeviceError::NotEnrolled | DeviceError::Erased)
    ));

    // Unknown host names and untrusted servers fail as transport errors, without panics.
    let untrusting = HttpClient::new(
        &[x509::self_signed(
            &x509::CertificateParams::new(x509::name(&[("CN", "other")]).unwrap()),
            &mdm_sim::keys::PrivateKey::generate_rsa2048().unwrap(),
        )
        .unwrap()],
        None,
    )
    .unwrap();
    assert!(untrusting
        .get(&format!("{}/enroll/x", fake.base()), Default::default())
        .await
        .is_err());
}
