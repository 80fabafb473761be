//! Encrypted backups end to end: made through the admin API while the appliance runs,
//! restored with `mdmd restore` into a new data directory (onto another TPM for the TPM
//! keystore), and the restored appliance carries on: the same CA and TLS identity, API tokens,
//! user accounts and enrolled devices, whose check-ins it accepts. A wrong passphrase or a
//! damaged file changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../appliance/keystore/tests/support/swtpm.rs"]
mod swtpm;

use std::path::Path;

use appliance_tests::{Appliance, NO_APNS};
use mdm_keystore::Zeroizing;
use mdmd::config::{Config, KeystoreBackend};
use mdmd::restore::{restore, RestoreOptions};
use serde_json::json;

const PASSPHRASE: &str = "correct horse battery staple";

fn options(
    dir: &Path,
    from: &Path,
    pass: &str,
    keystore: KeystoreBackend,
    tcti: &str,
) -> RestoreOptions {
    RestoreOptions {
        data_dir: dir.to_owned(),
        from: from.to_owned(),
        passphrase: Zeroizing::new(pass.to_owned()),
        keystore,
        tcti: tcti.to_owned(),
        force: false,
        key_only: false,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Backs up a running appliance with an enrolled device and a user, restores it into a new
/// directory with `keystore` (on `restore_tcti` for a TPM) and checks the restored one.
async fn backup_and_restore(
    source_keystore: Option<(KeystoreBackend, String)>,
    restore_keystore: KeystoreBackend,
    restore_tcti: String,
) {
    let mut app = match source_keystore.clone() {
        Some((backend, tcti)) => {
            Appliance::start_with(move |c| {
                c.keystore.backend = backend;
                c.keystore.tcti = tcti.clone();
            })
            .await
        }
        None => Appliance::start().await,
    };
    let mut d = app.enroll_manual().await;
    d.set_bootstrap_token(b"bootstrap-in-the-backup")
        .await
        .unwrap();
    app.new_user("alice", "Alice", "Alice-Password-1").await;

    // Refusals: a short passphrase, a non-admin token.
    let (st, e) = app
        .api(
            "POST",
            "/api/v1/backup",
            Some(json!({"passphrase": "short"})),
        )
        .await;
    assert_eq!(st, 400, "{e}");
    assert_eq!(e["error"]["code"], "BACKUP_PASSPHRASE_POLICY");
    let op = app.new_token("ops", "Operator").await;
    let (st, _) = app
        .api_as(
            &op,
            "POST",
            "/api/v1/backup",
            json!({"passphrase": PASSPHRASE}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(st, 403);

    // The backup, as the admin downloads it.
    let resp = app.backup(PASSPHRASE).await;
    assert_eq!(resp.status, 200);
    assert!(resp.headers["content-disposition"]
        .to_str()
        .unwrap()
        .contains(".mdmbackup"));
    let bytes = resp.body.to_vec();
    // Nothing readable inside: not the device, the token, or the database's own marker.
    for needle in [d.udid.as_bytes(), app.token.as_bytes(), b"alice", b"redb"] {
        assert!(
            !contains(&bytes, needle),
            "{} readable in the backup",
            String::from_utf8_lossy(needle)
        );
    }
    let (_, log) = app
        .api("GET", "/api/v1/activity?type=backup.created", None)
        .await;
    assert_eq!(log["items"][0]["outcome"], "ok", "{log}");
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("appliance.mdmbackup");
    std::fs::write(&file, &bytes).unwrap();
    let addr = app.addr;
    app.stop().await;

    // What it says about itself needs no passphrase.
    let meta = mdmd::restore::describe(&file).unwrap();
    assert_eq!(meta["format"], "mdm-appliance-backup");
    assert!(meta["created_by"].is_string(), "{meta}");

    // The same through the `mdmd` command, as an operator runs it.
    let shown = std::process::Command::new(appliance_tests::mdmd_binary())
        .args(["restore", "--show", "--from"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(shown.status.success(), "{shown:?}");
    assert!(String::from_utf8_lossy(&shown.stdout).contains("mdm-appliance-backup"));
    if restore_keystore == KeystoreBackend::Software {
        use std::io::Write as _;
        let by_cli = work.path().join("by-cli");
        let mut child = std::process::Command::new(appliance_tests::mdmd_binary())
            .args([
                "restore",
                "--keystore",
                "software",
                "--passphrase-file",
                "-",
                "--data-dir",
            ])
            .arg(&by_cli)
            .arg("--from")
            .arg(&file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{PASSPHRASE}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("restored into"),
            "{out:?}"
        );
        assert!(by_cli.join(mdmd::DB_FILE).exists() && by_cli.join(mdmd::SOFT_KEY_FILE).exists());
    }

    // A wrong passphrase, and a damaged file, write nothing at all.
    let target = work.path().join("restored");
    let err = restore(&options(
        &target,
        &file,
        "wrong horse battery staple",
        restore_keystore,
        &restore_tcti,
    ))
    .unwrap_err();
    assert!(format!("{err:#}").contains("passphrase"), "{err:#}");
    let mut damaged = bytes.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 1;
    let bad = work.path().join("damaged.mdmbackup");
    std::fs::write(&bad, &damaged).unwrap();
    let err = restore(&options(
        &target,
        &bad,
        PASSPHRASE,
        restore_keystore,
        &restore_tcti,
    ))
    .unwrap_err();
    assert!(format!("{err:#}").contains("damaged"), "{err:#}");
    let left: Vec<_> = std::fs::read_dir(&target)
        .map(|r| r.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "files left behind: {left:?}");

    // The real restore; then a second one is refused without --force.
    let report = restore(&options(
        &target,
        &file,
        PASSPHRASE,
        restore_keystore,
        &restore_tcti,
    ))
    .unwrap();
    assert!(report.database_bytes > 0);
    let err = restore(&options(
        &target,
        &file,
        PASSPHRASE,
        restore_keystore,
        &restore_tcti,
    ))
    .unwrap_err();
    assert!(format!("{err:#}").contains("--force"), "{err:#}");
    let mut forced = options(&target, &file, PASSPHRASE, restore_keystore, &restore_tcti);
    forced.force = true;
    let report = restore(&forced).unwrap();
    assert_eq!(report.moved_aside.len(), 2, "{:?}", report.moved_aside);

    // The restored appliance, on the same address, as the devices know it.
    let mut cfg = Config::development(addr, target.clone());
    cfg.keystore.backend = restore_keystore;
    cfg.keystore.tcti = restore_tcti.clone();
    cfg.development = restore_keystore == KeystoreBackend::Software;
    cfg.apns.url = NO_APNS.to_string();
    cfg.abm.url = NO_APNS.to_string();
    cfg.ade.device_ca_roots = vec![mdm_sim::apple::AppleStandIn::root_path(
        &app.dir.path().join("apple"),
    )];
    let running = mdmd::start(cfg).await.unwrap();
    assert_eq!(running.ca_pem.as_bytes(), &app.ca_pem[..], "the same CA");
    let client = mdm_sim::http::HttpClient::from_ca_pem(&app.ca_pem).unwrap();
    app.admin = client;
    let (st, v) = app.api("GET", "/api/v1/users/alice", None).await;
    assert_eq!(st, 200, "the old token works, the account is there: {v}");
    d.disconnect().await;
    assert_eq!(
        d.get_bootstrap_token().await.unwrap().as_deref(),
        Some(&b"bootstrap-in-the-backup"[..]),
        "the device's identity is accepted and its sealed token opens"
    );
    app.send(&d.udid, "ProfileList").await;
    assert_eq!(d.run_until_idle().await.unwrap().len(), 1);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_backup_restores_into_a_new_directory() {
    backup_and_restore(None, KeystoreBackend::Software, String::new()).await;
}

#[tokio::test]
async fn a_backup_moves_to_another_tpm() {
    let dir = tempfile::tempdir().unwrap();
    let Some(a) = swtpm::Swtpm::start(&dir.path().join("tpm-a")) else {
        return;
    };
    let Some(b) = swtpm::Swtpm::start(&dir.path().join("tpm-b")) else {
        return;
    };
    backup_and_restore(
        Some((KeystoreBackend::Tpm, a.tcti())),
        KeystoreBackend::Tpm,
        b.tcti(),
    )
    .await;
}
