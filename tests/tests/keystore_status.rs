//! The keystore as the admin sees it, on a TPM keystore (swtpm): `GET /api/v1/keystore` and
//! `mdmctl keystore status` against the daemon. Also prints (asserts nothing about) how long
//! `mdmd::start` takes with the TPM, first start and restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../appliance/keystore/tests/support/swtpm.rs"]
mod swtpm;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use appliance_tests::{body_json, free_port, NO_APNS};
use mdm_sim::http::{headers, HttpClient};
use mdmd::config::KeystoreBackend;
use serde_json::{json, Value};

/// The `mdmctl` binary built next to this test executable (`cargo build --bins` builds it).
fn mdmctl_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("mdmctl");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` first",
        bin.display()
    );
    bin
}

fn tpm_config(data: &Path, addr: SocketAddr, tcti: &str) -> mdmd::Config {
    let mut cfg = mdmd::Config::development(addr, data.to_owned());
    cfg.keystore.backend = KeystoreBackend::Tpm;
    cfg.keystore.tcti = tcti.to_owned();
    cfg.apns.url = NO_APNS.to_string();
    cfg.limits.drain_timeout_seconds = 5;
    cfg
}

/// `mdmd::start` timed from the call until it returns ready (listening, keys unsealed).
async fn timed_start(cfg: mdmd::Config, what: &str) -> mdmd::Running {
    let started = Instant::now();
    let running = mdmd::start(cfg).await.unwrap();
    eprintln!(
        "mdmd::start on swtpm, {what}: ready after {} ms",
        started.elapsed().as_millis()
    );
    running
}

async fn get(client: &HttpClient, base: &str, token: &str, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let resp = client
        .get(
            &format!("{base}{path}"),
            headers(&[("authorization", &auth)]).unwrap(),
        )
        .await
        .unwrap();
    (resp.status, body_json(&resp))
}

/// Runs mdmctl off the runtime's thread: the daemon answering it runs on that runtime.
async fn mdmctl(base: &str, token_file: &Path, ca: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(mdmctl_binary());
    cmd.args(args)
        .env("MDMCTL_SERVER", base)
        .env("MDMCTL_TOKEN_FILE", token_file)
        .env("MDMCTL_CA", ca)
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn stdout_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "mdmctl {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test]
async fn keystore_status_shows_the_tpm() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tpm) = swtpm::Swtpm::start(&dir.path().join("tpm")) else {
        return;
    };
    let tcti = tpm.tcti();
    let data = dir.path().join("data");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let base = format!("https://{addr}");

    // First start: seals a new data key and generates and seals every appliance key.
    let running = timed_start(tpm_config(&data, addr, &tcti), "first start").await;
    running.stop().await.unwrap();
    // Restart: unseals the data key with the TPM, then the appliance keys with it.
    let running = timed_start(tpm_config(&data, addr, &tcti), "restart").await;

    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &running.ca_pem).unwrap();
    let token_file = data.join(mdmd::ADMIN_TOKEN_FILE);
    let admin_token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    let client = HttpClient::from_ca_pem(running.ca_pem.as_bytes()).unwrap();

    let (status, ks) = get(&client, &base, &admin_token, "/api/v1/keystore").await;
    assert_eq!(status, 200, "{ks}");
    assert_eq!(ks["backend"], "tpm", "{ks}");
    let key_id = ks["key_id"].as_str().unwrap();
    assert!(
        !key_id.is_empty() && key_id.chars().all(|c| c.is_ascii_hexdigit()),
        "{ks}"
    );
    assert_eq!(
        ks["key_file"].as_str().unwrap(),
        data.join(mdmd::TPM_KEY_FILE).to_str().unwrap()
    );
    assert_eq!(ks["tpm"]["tcti"], tcti.as_str(), "{ks}");
    assert_eq!(ks["tpm"]["manufacturer"], "IBM", "{ks}");
    assert!(!ks["tpm"]["vendor"].as_str().unwrap().is_empty(), "{ks}");
    assert!(
        !ks["tpm"]["firmware_version"].as_str().unwrap().is_empty(),
        "{ks}"
    );

    // The status page keeps a one-line label.
    let (_, st) = get(&client, &base, &admin_token, "/api/v1/status").await;
    assert_eq!(st["keystore"], format!("tpm ({tcti})"), "{st}");

    // Read-only: an auditor may look.
    let auth = format!("Bearer {admin_token}");
    let resp = client
        .request(
            "POST".parse().unwrap(),
            &format!("{base}/api/v1/tokens"),
            headers(&[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ])
            .unwrap(),
            serde_json::to_vec(&json!({"name": "audit", "role": "Auditor"})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 201, "{}", body_json(&resp));
    let auditor = body_json(&resp)["token"].as_str().unwrap().to_string();
    let (status, as_auditor) = get(&client, &base, &auditor, "/api/v1/keystore").await;
    assert_eq!(status, 200, "{as_auditor}");
    assert_eq!(as_auditor, ks);

    // The CLI shows the same thing: the API's JSON with --json, a table without.
    let out = mdmctl(&base, &token_file, &ca, &["--json", "keystore", "status"]).await;
    let cli_json: Value = serde_json::from_str(&stdout_ok(&out, "--json keystore status")).unwrap();
    assert_eq!(cli_json, ks);
    let out = mdmctl(&base, &token_file, &ca, &["keystore", "status"]).await;
    let table = stdout_ok(&out, "keystore status");
    assert!(table.contains("Backend        TPM\n"), "{table}");
    assert!(table.contains("Manufacturer   IBM\n"), "{table}");
    assert!(table.contains(key_id), "{table}");
    assert!(table.contains(&tcti), "{table}");

    running.stop().await.unwrap();
    drop(tpm);
}
