//! The check-in and command protocol end to end: every check-in type, the command lifecycle,
//! NotNow, identity checks, and malformed input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use appliance_tests::Appliance;
use base64::Engine as _;
use mdm_sim::commands::CommandStatus;
use mdm_sim::device::{DeviceKind, IdentityFault, IdentityTransport, SimDevice, SimUser};
use plist::{Dictionary, Value};
use serde_json::json;

const CHECKIN: &str = "application/x-apple-aspen-mdm-checkin";

#[tokio::test]
async fn every_checkin_type() {
    let app = Appliance::start().await;
    let mut d = app.enroll_manual().await;

    // Bootstrap token: stored sealed, handed back on request.
    assert_eq!(d.get_bootstrap_token().await.unwrap(), None);
    d.set_bootstrap_token(b"bootstrap-secret-0123456789")
        .await
        .unwrap();
    assert_eq!(
        d.get_bootstrap_token().await.unwrap().as_deref(),
        Some(&b"bootstrap-secret-0123456789"[..])
    );
    assert_eq!(
        app.enrollment(&d.udid).await.1["bootstrap_token_present"],
        true
    );

    // Declarative management answers valid empty documents.
    let tokens: serde_json::Value =
        serde_json::from_slice(&d.declarative_management("tokens", None).await.unwrap()).unwrap();
    assert!(
        tokens["SyncTokens"]["DeclarationsToken"].is_string(),
        "{tokens}"
    );
    let items: serde_json::Value = serde_json::from_slice(
        &d.declarative_management("declaration-items", None)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(items["Declarations"]["Configurations"], json!([]));

    // GetToken for a service nobody provides: a clear error. (`com.apple.maid` is provided,
    // for ABM devices: tests/tests/maid.rs.)
    let err = d.get_token("com.example.unknown").await.unwrap_err();
    let st = err.status().unwrap();
    assert_eq!(st.status, 400);
    assert!(String::from_utf8_lossy(&st.body).contains("TOKEN_SERVICE_UNKNOWN"));

    // User channel: created by its TokenUpdate; UserAuthenticate is declined with 410.
    let user = SimUser::new("alice", "Alice Example").unwrap();
    assert_eq!(
        d.user_authenticate(&user, None).await.unwrap(),
        mdm_sim::checkin::UserAuthOutcome::Declined
    );
    d.user_token_update(&user).await.unwrap();
    let (s, v) = app
        .enrollment(&format!("{}:{}", d.udid, user.user_id))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["channel"], "User");
    assert_eq!(v["state"], "Enrolled");

    // CheckOut ends management: later requests are refused and commands cannot be queued.
    d.check_out().await.unwrap();
    assert_eq!(app.enrollment(&d.udid).await.1["state"], "CheckedOut");
    let err = d.run_until_idle().await.unwrap_err();
    assert_eq!(err.status().unwrap().status, 401);
    let (s, v) = app
        .api(
            "POST",
            "/api/v1/commands",
            Some(json!({"targets": [d.udid], "request_type": "ProfileList"})),
        )
        .await;
    assert_eq!(s, 404, "{v}");
}

#[tokio::test]
async fn command_lifecycle_with_results() {
    let app = Appliance::start().await;
    let mut d = app.enroll_manual().await;
    let info = app.send(&d.udid, "DeviceInformation").await;
    let profiles = app.send(&d.udid, "ProfileList").await;
    let (_, v) = app.enrollment(&d.udid).await;
    assert_eq!(v["queued_commands"], 2);

    let done = d.run_until_idle().await.unwrap();
    assert_eq!(
        done.iter()
            .map(|c| c.command_uuid.clone())
            .collect::<Vec<_>>(),
        vec![info.clone(), profiles.clone()],
        "FIFO"
    );
    assert!(done.iter().all(|c| c.status == CommandStatus::Acknowledged));

    let c = app.command(&info).await;
    let delivery = &c["deliveries"][0];
    assert_eq!(delivery["status"], "Acknowledged");
    let result = delivery["result_plist"].as_str().unwrap();
    assert!(
        result.contains("QueryResponses") && result.contains(&d.serial),
        "{result}"
    );
    assert_eq!(app.enrollment(&d.udid).await.1["queued_commands"], 0);

    // Nothing more to do: an empty answer.
    assert!(d.run_until_idle().await.unwrap().is_empty());
    let (_, hist) = app
        .api(
            "GET",
            &format!("/api/v1/enrollments/{}/commands", d.udid),
            None,
        )
        .await;
    assert_eq!(hist["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn errors_are_stored_with_their_error_chain() {
    let app = Appliance::start().await;
    let mut d = app.enroll_manual().await;
    // DeviceConfigured to a device that is not awaiting configuration is refused before it
    // reaches the device.
    let (st, v) = app
        .api(
            "POST",
            "/api/v1/commands",
            Some(serde_json::json!({"targets": [d.udid], "request_type": "DeviceConfigured"})),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    // A request type the device does not know fails on the device, with an error chain.
    let mut command = plist::Dictionary::new();
    command.insert("RequestType".into(), "NoSuchRequestType".into());
    let mut envelope = plist::Dictionary::new();
    envelope.insert("Command".into(), plist::Value::Dictionary(command));
    let mut xml = Vec::new();
    plist::to_writer_xml(&mut xml, &envelope).unwrap();
    let (st, v) = app
        .api(
            "POST",
            "/api/v1/commands",
            Some(serde_json::json!({
                "targets": [d.udid],
                "plist_base64": base64::engine::general_purpose::STANDARD.encode(&xml),
            })),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let uuid = v["command_uuid"].as_str().unwrap().to_string();
    let done = d.run_until_idle().await.unwrap();
    assert_eq!(done[0].status, CommandStatus::Error);
    let c = app.command(&uuid).await;
    assert_eq!(c["deliveries"][0]["status"], "Error");
    assert!(
        c["deliveries"][0]["error_chain"][0]["ErrorCode"].is_number(),
        "{c}"
    );
}

#[tokio::test]
async fn not_now_keeps_the_command_for_the_next_connection() {
    let app = Appliance::start().await;
    let mut d = app.enroll_manual().await;
    d.commands
        .not_now_request_types
        .insert("SecurityInfo".into());
    let first = app.send(&d.udid, "SecurityInfo").await;
    let second = app.send(&d.udid, "ProfileList").await;

    let done = d.run_until_idle().await.unwrap();
    // NotNow skips the command for the rest of this connection; the next one is delivered.
    assert_eq!(done.len(), 2);
    assert_eq!(
        (done[0].command_uuid.as_str(), done[0].status),
        (first.as_str(), CommandStatus::NotNow)
    );
    assert_eq!(
        (done[1].command_uuid.as_str(), done[1].status),
        (second.as_str(), CommandStatus::Acknowledged)
    );
    assert_eq!(
        app.command(&first).await["deliveries"][0]["status"],
        "NotNow"
    );
    assert_eq!(app.enrollment(&d.udid).await.1["queued_commands"], 1);

    // Same connection: still skipped.
    assert!(d.run_until_idle().await.unwrap().is_empty());

    // A new connection: delivered again; now the device can do it.
    d.disconnect().await;
    d.commands.not_now_request_types.clear();
    let done = d.run_until_idle().await.unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].command_uuid.as_str(), done[0].status),
        (first.as_str(), CommandStatus::Acknowledged)
    );
    assert_eq!(
        app.command(&first).await["deliveries"][0]["status"],
        "Acknowledged"
    );
}

#[tokio::test]
async fn raw_command_plists_and_typed_builders() {
    let app = Appliance::start().await;
    let mut d = app.enroll_manual().await;
    let mut cmd = Dictionary::new();
    cmd.insert("RequestType".into(), "InstalledApplicationList".into());
    let mut top = Dictionary::new();
    top.insert("Command".into(), Value::Dictionary(cmd));
    let mut raw = Vec::new();
    Value::Dictionary(top).to_writer_xml(&mut raw).unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
    let (s, v) = app
        .api(
            "POST",
            "/api/v1/commands",
            Some(json!({"targets": [d.udid], "plist_base64": b64})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let done = d.run_until_idle().await.unwrap();
    assert_eq!(done[0].request_type, "InstalledApplicationList");
    assert_eq!(done[0].command_uuid, v["command_uuid"].as_str().unwrap());

    for t in [
        "SecurityInfo",
        "CertificateList",
        "RestartDevice",
        "ShutDownDevice",
        "DeviceLock",
    ] {
        app.send(&d.udid, t).await;
    }
    let done = d.run_until_idle().await.unwrap();
    assert_eq!(done.len(), 5);
    assert!(
        done.iter().all(|c| c.status == CommandStatus::Acknowledged),
        "{done:?}"
    );

    // Invalid requests are refused with a code naming the problem.
    for (body, code) in [
        (
            json!({"targets": [d.udid], "request_type": "Frobnicate"}),
            "COMMAND_UNKNOWN",
        ),
        (
            json!({"targets": [d.udid], "plist_base64": "AAAA"}),
            "COMMAND_INVALID",
        ),
        (
            json!({"targets": [], "request_type": "ProfileList"}),
            "INVALID_FIELD",
        ),
        (
            json!({"targets": ["nobody"], "request_type": "ProfileList"}),
            "ENROLLMENT_NOT_FOUND",
        ),
        (
            json!({"targets": [d.udid], "request_type": "ProfileList", "extra": 1}),
            "INVALID_JSON",
        ),
    ] {
        let (s, v) = app.api("POST", "/api/v1/commands", Some(body)).await;
        assert!(s == 400 || s == 404, "{s} {v}");
        assert_eq!(v["error"]["code"], code, "{v}");
    }
}

/// A connection keeps the binding its requests were checked against (see
/// `MdmService::kept_enrollment`); a change to the enrollment made meanwhile, on this
/// connection or another, applies to its next request all the same.
#[tokio::test]
async fn a_connection_s_kept_binding_gives_way_to_a_check_out_or_a_new_enrollment() {
    let app = Appliance::start().await;

    // CheckOut on the same connection.
    let mut d = app.enroll_manual().await;
    d.disconnect().await;
    app.send(&d.udid, "ProfileList").await;
    assert_eq!(d.run_until_idle().await.unwrap().len(), 1);
    d.check_out().await.unwrap();
    let err = d.run_until_idle().await.unwrap_err();
    let st = err.status().unwrap();
    assert_eq!(st.status, 401, "{err}");
    assert!(
        String::from_utf8_lossy(&st.body).contains("ENROLLMENT_CHECKED_OUT"),
        "{err}"
    );
    assert_eq!(d.connections_opened(), 1, "all on one connection");

    // The same device enrolls again (a new identity) while the old connection is open.
    let mut old = app.enroll_manual().await;
    old.disconnect().await;
    app.send(&old.udid, "ProfileList").await;
    assert_eq!(old.run_until_idle().await.unwrap().len(), 1);
    let mut new = SimDevice::builder(DeviceKind::IPhone)
        .unwrap()
        .udid(&old.udid)
        .build();
    new.trust_ca_pem(&app.ca_pem).unwrap();
    app.enroll_manual_device(&mut new).await;
    let queued = app.send(&old.udid, "SecurityInfo").await;
    let err = old.run_until_idle().await.unwrap_err();
    assert_eq!(err.status().map(|s| s.status), Some(401), "{err}");
    assert_eq!(old.connections_opened(), 1, "all on one connection");
    // The command waits for the device's new identity.
    let done = new.run_until_idle().await.unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].command_uuid, queued);
}

#[tokio::test]
async fn tls_client_certificate_identity_works() {
    let app = Appliance::start().await;
    let mut d = app.device();
    d.identity_transport = IdentityTransport::TlsClientCertificate;
    app.enroll_manual_device(&mut d).await;
    app.send(&d.udid, "ProfileList").await;
    assert_eq!(d.run_until_idle().await.unwrap().len(), 1);
    // Both at once, the same certificate: fine.
    d.identity_transport = IdentityTransport::Both;
    d.disconnect().await;
    assert!(d.run_until_idle().await.unwrap().is_empty());
}

#[tokio::test]
async fn identity_faults_are_refused() {
    let app = Appliance::start().await;
    let mut d = app.enroll_manual().await;
    let other = app.enroll_manual().await;
    app.send(&d.udid, "ProfileList").await;

    for fault in [
        IdentityFault::Omit,
        IdentityFault::CorruptSignature,
        IdentityFault::ForeignCertificate,
        IdentityFault::Impersonate(Box::new(other.identity().unwrap().clone())),
    ] {
        d.identity_fault = fault.clone();
        let err = d.run_until_idle().await.unwrap_err();
        assert_eq!(
            err.status().map(|s| s.status),
            Some(401),
            "{fault:?}: {err}"
        );
    }
    // Nothing was delivered to an impostor.
    assert_eq!(app.enrollment(&d.udid).await.1["queued_commands"], 1);
    d.identity_fault = IdentityFault::None;
    assert_eq!(d.run_until_idle().await.unwrap().len(), 1);

    // A certificate the appliance never issued cannot even complete the TLS handshake.
    d.identity_transport = IdentityTransport::TlsClientCertificate;
    d.identity_fault = IdentityFault::ForeignCertificate;
    d.disconnect().await;
    assert!(d.run_until_idle().await.is_err());
}

#[tokio::test]
async fn unknown_enrollment_and_authenticate_binding() {
    let app = Appliance::start().await;
    let d = app.enroll_manual().await;
    // The same valid identity speaking for another UDID: unknown enrollment.
    let mut msg = Dictionary::new();
    msg.insert("MessageType".into(), "TokenUpdate".into());
    msg.insert("UDID".into(), "00008030-0000000000000000".into());
    msg.insert("Topic".into(), appliance_tests::TOPIC.into());
    msg.insert("Token".into(), Value::Data(vec![1; 32]));
    msg.insert("PushMagic".into(), "magic".into());
    let mut d = d;
    let r = d.checkin(&msg).await.unwrap();
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn malformed_unknown_and_oversized_bodies() {
    let app = Appliance::start_with(|c| c.limits.device_body_bytes = 64 * 1024).await;
    let mut d = app.enroll_manual().await;
    let checkin = format!("{}/mdm/checkin", app.base_url);
    let connect = format!("{}/mdm/connect", app.base_url);

    let r = d
        .send_mdm(&checkin, CHECKIN, b"<plist><dict><key>MessageType".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status, 400, "truncated plist");
    let r = d
        .send_mdm(&connect, CHECKIN, b"{\"json\": true}".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status, 400, "not a plist");

    let mut msg = Dictionary::new();
    msg.insert("MessageType".into(), "Frobnicate".into());
    msg.insert("UDID".into(), d.udid.clone().into());
    let r = d.checkin(&msg).await.unwrap();
    assert_eq!(r.status, 400, "unknown message type");
    assert!(String::from_utf8_lossy(&r.body).contains("CHECKIN_INVALID"));

    let mut report = Dictionary::new();
    report.insert("Status".into(), "Acknowledged".into());
    report.insert("UDID".into(), d.udid.clone().into());
    let mut body = Vec::new();
    Value::Dictionary(report).to_writer_xml(&mut body).unwrap();
    let r = d.send_mdm(&connect, CHECKIN, body).await.unwrap();
    assert_eq!(r.status, 400, "Acknowledged without CommandUUID");

    let big = vec![b'a'; 65 * 1024];
    let r = d.send_mdm(&connect, CHECKIN, big).await.unwrap();
    assert_eq!(r.status, 413);

    // The device is unharmed by all of this.
    app.send(&d.udid, "ProfileList").await;
    assert_eq!(d.run_until_idle().await.unwrap().len(), 1);
}

#[tokio::test]
async fn admin_api_roles_and_push_topic_guard() {
    let app = Appliance::start().await;
    let auditor = app.new_token("audit", "Auditor").await;
    let (s, _) = app
        .api_as(&auditor, "GET", "/api/v1/enrollments", Vec::new())
        .await;
    assert_eq!(s, 200);
    let body = serde_json::to_vec(&json!({"label": "x"})).unwrap();
    let (s, v) = app
        .api_as(&auditor, "POST", "/api/v1/enroll-links", body)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("ROLE_INSUFFICIENT"))
    );
    let (s, v) = app
        .api_as("mdm_wrong", "GET", "/api/v1/status", Vec::new())
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("API_TOKEN_INVALID"))
    );

    // A push certificate with another topic would orphan every device: refused unless forced.
    // A certificate for another key than the appliance's push key is refused outright.
    let foreign = appliance_tests::push_cert_pem(appliance_tests::TOPIC);
    let (s, v) = app
        .api_raw("PUT", "/api/v1/push-cert", foreign.into_bytes())
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("PUSH_CERT_KEY_MISMATCH"))
    );
    // Renewal with the same topic is accepted.
    app.install_push_cert(appliance_tests::TOPIC).await;
    let other = app
        .push_cert_for_csr("com.apple.mgmt.External.00000000-0000-4000-8000-00000000beef")
        .await;
    let (s, v) = app
        .api_raw("PUT", "/api/v1/push-cert", other.clone().into_bytes())
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("PUSH_TOPIC_CHANGED"))
    );
    let (s, v) = app
        .api_raw("PUT", "/api/v1/push-cert?force=true", other.into_bytes())
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = app
        .api_raw("PUT", "/api/v1/push-cert", b"not a cert".to_vec())
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("PUSH_CERT_INVALID"))
    );
}

#[tokio::test]
async fn api_tokens_can_be_revoked_but_not_the_last_admin() {
    let app = Appliance::start().await;
    let (_, list) = app.api("GET", "/api/v1/tokens", None).await;
    let first_admin = list["items"][0]["id"].as_str().unwrap().to_string();
    // Alone, the first admin token cannot be revoked.
    let (s, v) = app
        .api("DELETE", &format!("/api/v1/tokens/{first_admin}"), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("LAST_ADMIN_TOKEN"))
    );

    let (_, op) = app
        .api(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "helpdesk", "role": "Operator"})),
        )
        .await;
    let (op_id, op_token) = (
        op["id"].as_str().unwrap().to_string(),
        op["token"].as_str().unwrap().to_string(),
    );
    let (s, _) = app
        .api_as(&op_token, "GET", "/api/v1/status", Vec::new())
        .await;
    assert_eq!(s, 200);
    let (s, v) = app
        .api("DELETE", &format!("/api/v1/tokens/{op_id}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["revoked_at"].is_string());
    let (s, v) = app
        .api_as(&op_token, "GET", "/api/v1/status", Vec::new())
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("API_TOKEN_INVALID"))
    );
    let (s, v) = app
        .api("DELETE", "/api/v1/tokens/no-such-token", None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("API_TOKEN_NOT_FOUND"))
    );

    // Path segments are percent-decoded: a user channel's id with its ':' encoded.
    let d = app.enroll_manual().await;
    let (s, v) = app.enrollment(&d.udid.replace('-', "%2D")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], d.udid.as_str());
    let (s, v) = app.api("GET", "/api/v1/enrollments/%FF", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("INVALID_PATH"))
    );
}
