//! The appliance on a TPM keystore (swtpm): keys sealed under the TPM survive restarts, and a
//! data directory cannot be opened with another TPM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../appliance/keystore/tests/support/swtpm.rs"]
mod swtpm;

use appliance_tests::Appliance;
use mdmd::config::KeystoreBackend;

#[tokio::test]
async fn the_appliance_runs_on_a_tpm_keystore() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tpm) = swtpm::Swtpm::start(&dir.path().join("tpm")) else {
        return;
    };
    let tcti = tpm.tcti();
    let mut app = Appliance::start_with(move |c| {
        c.keystore.backend = KeystoreBackend::Tpm;
        c.keystore.tcti = tcti.clone();
    })
    .await;
    let (_, st) = app.api("GET", "/api/v1/status", None).await;
    assert!(st["keystore"].as_str().unwrap().starts_with("tpm"), "{st}");
    assert!(app.data_dir().join(mdmd::TPM_KEY_FILE).exists());
    assert!(
        !app.data_dir().join(mdmd::SOFT_KEY_FILE).exists(),
        "no software key file at all"
    );

    let mut d = app.enroll_manual().await;
    d.set_bootstrap_token(b"bootstrap-under-the-tpm")
        .await
        .unwrap();

    // A restart unseals the CA, TLS, RA, signer and push keys with the TPM again.
    app.restart().await;
    d.disconnect().await;
    assert_eq!(
        d.get_bootstrap_token().await.unwrap().as_deref(),
        Some(&b"bootstrap-under-the-tpm"[..])
    );
    app.send(&d.udid, "ProfileList").await;
    assert_eq!(d.run_until_idle().await.unwrap().len(), 1);
    app.stop().await;

    // The same data directory with another TPM: refused, and nothing is overwritten.
    let key_before = std::fs::read(app.data_dir().join(mdmd::TPM_KEY_FILE)).unwrap();
    let Some(other) = swtpm::Swtpm::start(&dir.path().join("other-tpm")) else {
        return;
    };
    let mut cfg = mdmd::Config::development("127.0.0.1:0".parse().unwrap(), app.data_dir());
    cfg.keystore.backend = KeystoreBackend::Tpm;
    cfg.keystore.tcti = other.tcti();
    cfg.apns.url = appliance_tests::NO_APNS.to_string();
    let err = match mdmd::start(cfg).await {
        Ok(_) => panic!("another TPM must not open this appliance's keys"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("TPM"), "{err}");
    assert_eq!(
        std::fs::read(app.data_dir().join(mdmd::TPM_KEY_FILE)).unwrap(),
        key_before
    );
    drop(tpm);
}
