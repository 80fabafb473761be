//! The appliance on a TPM keystore (swtpm): keys sealed under the TPM survive restarts, and a
//! data directory cannot be opened with another TPM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../appliance/keystore/tests/support/pcr.rs"]
mod pcr;
#[path = "../../appliance/keystore/tests/support/swtpm.rs"]
mod swtpm;

use appliance_tests::{on_tpm, Appliance};
use mdmd::config::KeystoreBackend;

#[tokio::test]
async fn the_appliance_runs_on_a_tpm_keystore() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tpm) = swtpm::Swtpm::start(&dir.path().join("tpm")) else {
        return;
    };
    let mut app = Appliance::start_with(on_tpm(tpm.tcti())).await;
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

    // What an attacker copying the disk gets: no key or token in the clear. The plaintexts to
    // look for are unsealed here with the same TPM.
    {
        use mdm_keystore::Sealer as _;
        use mdm_service::ports::SettingsStore as _;
        let data = app.data_dir();
        let store =
            mdm_store::RedbStore::open(&data.join(mdmd::DB_FILE), Default::default()).unwrap();
        let sealer =
            mdm_keystore::TpmSealer::open_or_create(&tpm.tcti(), &data.join(mdmd::TPM_KEY_FILE))
                .unwrap();
        let mut secrets: Vec<(String, Vec<u8>)> = vec![(
            "bootstrap token".into(),
            b"bootstrap-under-the-tpm".to_vec(),
        )];
        for role in ["ca", "scep-ra", "profile-signer", "tls"] {
            let sealed = store
                .setting(&format!("pki/{role}.key.sealed"))
                .unwrap()
                .unwrap();
            let blob = mdm_keystore::SealedBlob::from_bytes(&sealed).unwrap();
            let pkcs8 = sealer.unseal(&format!("{role}-key"), &blob).unwrap();
            secrets.push((
                format!("{role} key"),
                pkcs8[pkcs8.len() / 2..pkcs8.len() / 2 + 32].to_vec(),
            ));
        }
        store.close().unwrap();
        let mut files = vec![data.join(mdmd::DB_FILE), data.join(mdmd::TPM_KEY_FILE)];
        files.retain(|f| f.exists());
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            for (what, secret) in &secrets {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
                    "{what} is in {} in the clear",
                    file.display()
                );
            }
        }
    }

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

/// `keystore.pcrs = [7]`: the appliance runs and restarts while PCR 7 holds its value; once it
/// changes the daemon refuses to start with the reason and the recovery command, and
/// `mdmd restore --key-only` with an encrypted backup brings the same appliance back (database
/// kept, key bound to the new PCR 7 value at the next start).
#[tokio::test]
async fn a_pcr_bound_appliance_refuses_a_changed_platform_and_recovers_from_its_backup() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tpm) = swtpm::Swtpm::start(&dir.path().join("tpm")) else {
        return;
    };
    let tcti = tpm.tcti();
    let tweak_tcti = tcti.clone();
    let mut app = Appliance::start_with(move |c| {
        c.keystore.backend = KeystoreBackend::Tpm;
        c.keystore.tcti = tweak_tcti.clone();
        c.keystore.pcrs = vec![7];
    })
    .await;
    let (_, ks) = app.api("GET", "/api/v1/keystore", None).await;
    assert_eq!(ks["tpm"]["policy_pcrs"], serde_json::json!([7]), "{ks}");
    let mut d = app.enroll_manual().await;
    d.set_bootstrap_token(b"bootstrap-bound-to-pcr7")
        .await
        .unwrap();
    app.restart().await;

    // The admin's encrypted backup: the recovery path.
    let resp = app.backup("correct horse battery staple").await;
    assert_eq!(resp.status, 200);
    let backup = dir.path().join("appliance.mdmbackup");
    std::fs::write(&backup, &resp.body).unwrap();

    app.stop().await;
    let key_file = app.data_dir().join(mdmd::TPM_KEY_FILE);
    let key_before = std::fs::read(&key_file).unwrap();
    pcr::extend_pcr7(&tcti);
    let err = app.try_restart().await.unwrap_err();
    assert!(err.contains("PCR 7"), "{err}");
    assert!(err.contains("restore --key-only"), "{err}");
    assert_eq!(std::fs::read(&key_file).unwrap(), key_before, "left alone");

    // The data key from the backup, sealed again under the current platform state.
    let restore = |from: &std::path::Path| mdmd::restore::RestoreOptions {
        data_dir: app.data_dir(),
        from: from.to_owned(),
        passphrase: mdm_keystore::Zeroizing::new("correct horse battery staple".to_owned()),
        keystore: KeystoreBackend::Tpm,
        tcti: tcti.clone(),
        force: false,
        key_only: true,
    };
    use std::os::unix::fs::MetadataExt as _;
    let db_inode = || {
        std::fs::metadata(app.data_dir().join(mdmd::DB_FILE))
            .unwrap()
            .ino()
    };
    let db_before = db_inode();
    let report = mdmd::restore::restore(&restore(&backup)).unwrap();
    assert_eq!(report.key_file, key_file);
    assert_eq!(report.moved_aside.len(), 1, "{:?}", report.moved_aside);
    assert_eq!(db_inode(), db_before, "the database is kept, not replaced");

    app.restart().await;
    let (_, ks) = app.api("GET", "/api/v1/keystore", None).await;
    assert_eq!(
        ks["tpm"]["policy_pcrs"],
        serde_json::json!([7]),
        "bound again: {ks}"
    );
    d.disconnect().await;
    assert_eq!(
        d.get_bootstrap_token().await.unwrap().as_deref(),
        Some(&b"bootstrap-bound-to-pcr7"[..])
    );
    app.stop().await;
    drop(tpm);
}
