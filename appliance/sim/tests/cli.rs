//! The `mdm-simdevice` binary's offline behaviour.

// Helpers outside #[test] functions unwrap too: a failure must abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn apple_ca_init_is_idempotent_and_loadable() {
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_mdm-simdevice");
    let run = || {
        let out = Command::new(exe)
            .args(["apple-ca", "init", "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    let second = run();
    assert!(first.contains("root SHA-256"));
    assert_eq!(first, second, "init must keep an existing CA");
    let ca = mdm_sim::AppleStandIn::load(dir.path()).unwrap();
    assert!(first.contains(&mdm_sim::x509::fingerprint_sha256(ca.root()).unwrap()));
}

#[test]
fn enroll_refuses_inconsistent_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "").unwrap();
    let exe = env!("CARGO_BIN_EXE_mdm-simdevice");
    let out = Command::new(exe)
        .args(["enroll", "--ade", "https://127.0.0.1:1/mdm/enroll", "--ca"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--apple-dir"));
    let out = Command::new(exe)
        .args([
            "enroll",
            "--link",
            "https://127.0.0.1:1/enroll/x",
            "--count",
            "2",
            "--udid",
            "X",
            "--ca",
        ])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--udid"));
}
