//! Data-key rotation end to end: an appliance with secrets of every kind (device tokens, an
//! ABM connection's key and OAuth credentials, a user's password hash, command payloads, the
//! appliance's own keys) rotates its keystore's data key through the admin API, keeps working,
//! and still works after a restart, when the old key is gone from the key file. A rotation a
//! crash cut short is finished at the next start. Both on the software keystore and on a TPM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../appliance/keystore/tests/support/swtpm.rs"]
mod swtpm;

use std::time::Duration;

use appliance_tests::{on_tpm, Appliance};
use mdm_keystore::Sealer as _;
use mdm_sim::abm::{AbmSimConfig, AbmSimulator, ServerId};
use serde_json::{json, Value};

const SERVER: ServerId = ServerId(0);

async fn keystore(app: &Appliance) -> Value {
    let (st, v) = app.api("GET", "/api/v1/keystore", None).await;
    assert_eq!(st, 200, "{v}");
    v
}

async fn sync(app: &Appliance) -> Value {
    let (st, v) = app.api("POST", "/api/v1/abm/north/sync", None).await;
    assert_eq!(st, 200, "{v}");
    v
}

async fn rotate_everything(tpm: Option<String>) {
    let sim = AbmSimulator::start(AbmSimConfig::default()).await.unwrap();
    sim.add_devices(SERVER, 3).unwrap();
    let mut app = match tpm.clone() {
        Some(tcti) => Appliance::start_with(on_tpm(tcti)).await,
        None => Appliance::start().await,
    };
    let mut d = app.enroll_manual().await;
    d.set_bootstrap_token(b"bootstrap-before-rotation")
        .await
        .unwrap();
    app.connect_abm(&sim, "north", SERVER).await;
    assert_eq!(sync(&app).await["result"], "ok");
    app.new_user("alice", "Alice", "Alice-Password-1").await;
    // A command queued (its payload sealed) and not fetched yet.
    let queued = app.send(&d.udid, "DeviceInformation").await;

    let before = keystore(&app).await;
    let old_id = before["key_id"].as_str().unwrap().to_owned();
    assert_eq!(before["previous_key_ids"], json!([]));

    // Only an admin may rotate.
    let op = app.new_token("ops", "Operator").await;
    let (st, _) = app
        .api_as(&op, "POST", "/api/v1/keystore/rotate", Vec::new())
        .await;
    assert_eq!(st, 403);
    let (st, e) = app
        .api(
            "POST",
            "/api/v1/keystore/rotate",
            Some(json!({"force": true})),
        )
        .await;
    assert_eq!(st, 400, "unknown options are refused: {e}");

    let (st, report) = app.api("POST", "/api/v1/keystore/rotate", None).await;
    assert_eq!(st, 200, "{report}");
    assert_eq!(report["previous_key_id"], old_id.as_str());
    let new_id = report["key_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, old_id);
    assert_eq!(report["resumed"], false);
    assert!(report["passes"].as_u64().unwrap() >= 2, "{report}");
    // At least: the CA, RA, signer and TLS keys, the bootstrap and unlock tokens, the ABM
    // credentials, the password hash and the command payload (the ABM key too when it is
    // sealed rather than held by the TPM). The second pass meets them again, re-sealed.
    let resealed = report["resealed"].as_u64().unwrap();
    assert!(resealed >= 9, "{report}");
    assert_eq!(report["blobs"].as_u64().unwrap(), 2 * resealed, "{report}");
    let now = keystore(&app).await;
    assert_eq!(now["key_id"], new_id.as_str());
    assert_eq!(now["previous_key_ids"], json!([]));
    let (_, log) = app
        .api("GET", "/api/v1/activity?type=keystore.rotated", None)
        .await;
    assert_eq!(log["items"][0]["outcome"], "ok", "{log}");

    // Delivered by this process, which kept the command in memory since it was queued: what
    // it kept was sealed under the retired key.
    let results = d.run_until_idle().await.unwrap();
    assert!(
        results
            .iter()
            .any(|r| r.request_type == "DeviceInformation"),
        "the command queued before the rotation is delivered: {results:?}"
    );
    let cmd = app.command(&queued).await;
    assert_eq!(cmd["deliveries"][0]["status"], "Acknowledged", "{cmd}");
    // The admin API shows the command as queued (unsealed), not its sealed bytes.
    let shown = cmd["payload_plist"].as_str().unwrap();
    assert!(
        shown.contains("<string>DeviceInformation</string>"),
        "{shown}"
    );

    // Everything still opens, in this process and after a restart (the old key is gone from
    // the key file, so a secret left under it would fail now).
    for round in 0..2 {
        if round == 1 {
            app.restart().await;
            d.disconnect().await;
            assert_eq!(keystore(&app).await["key_id"], new_id.as_str());
        }
        assert_eq!(
            d.get_bootstrap_token().await.unwrap().as_deref(),
            Some(&b"bootstrap-before-rotation"[..]),
            "round {round}"
        );
        assert_eq!(sync(&app).await["result"], "ok", "round {round}");
        let (st, v) = app.api("GET", "/api/v1/users/alice", None).await;
        assert_eq!(st, 200, "{v}");
    }
    // A rotation cut short (the key file lists a new key and the old one, as a crash right
    // after step 1 leaves it) is finished at the next start.
    app.stop().await;
    let data = app.data_dir();
    let interrupted_old = match tpm.clone() {
        Some(tcti) => {
            let s = mdm_keystore::TpmSealer::open_or_create(&tcti, &data.join(mdmd::TPM_KEY_FILE))
                .unwrap();
            s.begin_rotation().unwrap();
            s.describe().previous_key_ids
        }
        None => {
            let s =
                mdm_keystore::SoftSealer::open_or_create(&data.join(mdmd::SOFT_KEY_FILE)).unwrap();
            s.begin_rotation().unwrap();
            s.describe().previous_key_ids
        }
    };
    assert_eq!(interrupted_old, vec![new_id.clone()]);
    app.restart().await;
    let mut finished = None;
    for _ in 0..200 {
        let k = keystore(&app).await;
        if k["previous_key_ids"] == json!([]) {
            finished = Some(k);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let finished = finished.expect("the interrupted rotation is finished after the start");
    assert_ne!(finished["key_id"], new_id.as_str());
    // Its activity entry is written right after the key file is.
    let mut log = Value::Null;
    for _ in 0..100 {
        log = app
            .api("GET", "/api/v1/activity?type=keystore.rotated", None)
            .await
            .1;
        if log["items"][0]["actor"] == "system" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(log["items"][0]["actor"], "system", "{log}");
    assert_eq!(log["items"][0]["detail"]["resumed"], true, "{log}");
    d.disconnect().await;
    assert_eq!(
        d.get_bootstrap_token().await.unwrap().as_deref(),
        Some(&b"bootstrap-before-rotation"[..])
    );
    app.restart().await;
    assert_eq!(sync(&app).await["result"], "ok");
    app.stop().await;
}

#[tokio::test]
async fn the_software_data_key_rotates() {
    rotate_everything(None).await;
}

#[tokio::test]
async fn the_tpm_data_key_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tpm) = swtpm::Swtpm::start(&dir.path().join("tpm")) else {
        return;
    };
    rotate_everything(Some(tpm.tcti())).await;
}
