//! `mdmctl` against the real daemon binary, and the promise that secrets never reach the
//! database file or the logs in the clear.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use appliance_tests::{free_port, sign_push_csr};
use mdm_sim::device::{DeviceKind, SimDevice};
use mdm_sim::http::HttpClient;

fn sibling_binary(name: &str) -> PathBuf {
    let bin = appliance_tests::mdmd_binary().with_file_name(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` first",
        bin.display()
    );
    bin
}

struct Cli {
    server: String,
    token_file: PathBuf,
    ca: PathBuf,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(sibling_binary("mdmctl"))
            .args(args)
            .env("MDMCTL_SERVER", &self.server)
            .env("MDMCTL_TOKEN_FILE", &self.token_file)
            .env("MDMCTL_CA", &self.ca)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "mdmctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn wait_for_file(p: &Path) {
    for _ in 0..200 {
        if p.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{} never appeared", p.display());
}

/// What [`start_daemon`] hands back: the temporary directory, the data directory, the
/// listen address, the log file, the daemon process and the CLI.
type StartedDaemon = (
    tempfile::TempDir,
    PathBuf,
    std::net::SocketAddr,
    PathBuf,
    std::process::Child,
    Cli,
);

/// The daemon as a process with its JSON debug log captured, and a CLI pinned to its CA.
fn start_daemon() -> StartedDaemon {
    start_daemon_in(tempfile::tempdir().unwrap())
}

/// [`start_daemon`] with its data directory (`DIR/data`) prepared by the caller.
fn start_daemon_in(dir: tempfile::TempDir) -> StartedDaemon {
    let data = dir.path().join("data");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log_path = dir.path().join("mdmd.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(appliance_tests::mdmd_binary())
        .args([
            "serve",
            "--dev",
            "--log-format",
            "json",
            "--apns-url",
            appliance_tests::NO_APNS,
            "--abm-url",
            appliance_tests::NO_APNS,
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--listen")
        .arg(addr.to_string())
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for_file(&data.join(mdmd::LISTEN_ADDR_FILE));

    // Trust on first use, as an admin would: fetch the CA, then pin it.
    let ca_path = dir.path().join("ca.pem");
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-showcerts"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let start = text.rfind("-----BEGIN CERTIFICATE-----").unwrap();
    let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start + 25;
    std::fs::write(&ca_path, &text[start..end]).unwrap();

    let cli = Cli {
        server: format!("https://{addr}"),
        token_file: data.join(mdmd::ADMIN_TOKEN_FILE),
        ca: ca_path,
    };
    (dir, data, addr, log_path, child, cli)
}

/// The whole daemon as a process with its log captured: enroll a device through the CLI's
/// link, exercise commands through the CLI, then search the database and the log for secrets.
#[tokio::test]
async fn cli_drives_the_daemon_and_no_secret_leaks() {
    let (dir, data, addr, log_path, mut child, cli) = start_daemon();
    let ca_path = cli.ca.clone();
    assert!(cli.ok(&["ca", "show"]).contains("BEGIN CERTIFICATE"));
    let status: serde_json::Value = serde_json::from_str(&cli.ok(&["--json", "status"])).unwrap();
    assert_eq!(status["enrollments"], 0);

    // The push certificate flow: CSR out, Apple signs it, certificate in.
    let csr_path = dir.path().join("push.csr");
    assert!(cli
        .ok(&["push-cert", "csr", "--out", csr_path.to_str().unwrap()])
        .contains("push.csr"));
    let csr = std::fs::read_to_string(&csr_path).unwrap();
    let push = dir.path().join("push.pem");
    std::fs::write(&push, sign_push_csr(&csr, appliance_tests::TOPIC)).unwrap();
    assert!(cli
        .ok(&["push-cert", "import", push.to_str().unwrap()])
        .contains(appliance_tests::TOPIC));

    let url = cli
        .ok(&["enroll-link", "create", "--label", "cli test"])
        .trim()
        .to_string();
    assert!(url.starts_with(&format!("https://{addr}/enroll/")), "{url}");
    let link_token = url.rsplit('/').next().unwrap().to_string();

    // A device enrolls through the link.
    let ca_pem = std::fs::read(&ca_path).unwrap();
    let client = HttpClient::from_ca_pem(&ca_pem).unwrap();
    let mut d = SimDevice::random(DeviceKind::IPhone).unwrap();
    d.trust_ca_pem(&ca_pem).unwrap();
    let profile = d.manual_enroll(&client, &url).await.unwrap();
    let challenge = {
        let cas = mdm_sim::x509::certificates_from_pem(&ca_pem).unwrap();
        let p = d.install_profile(&profile, Some(&cas)).unwrap();
        p.scep.as_ref().unwrap().challenge.clone().unwrap()
    };
    d.complete_enrollment().await.unwrap();
    let bootstrap = b"BOOTSTRAP-SECRET-5f1c9a7e3d2b".to_vec();
    d.set_bootstrap_token(&bootstrap).await.unwrap();

    let listed = cli.ok(&["enrollments", "list"]);
    assert!(
        listed.contains(&d.udid) && listed.to_lowercase().contains("enrolled"),
        "{listed}"
    );
    let devices = cli.ok(&["devices", "list"]);
    assert!(
        devices.contains(&d.serial) && devices.contains("enrolled"),
        "{devices}"
    );
    let uuid = cli
        .ok(&["command", "send", "--device", &d.udid, "DeviceInformation"])
        .trim()
        .to_string();
    assert_eq!(uuid.len(), 36, "{uuid}");
    assert_eq!(d.run_until_idle().await.unwrap().len(), 1);
    let shown: serde_json::Value =
        serde_json::from_str(&cli.ok(&["--json", "command", "show", &uuid])).unwrap();
    assert_eq!(shown["deliveries"][0]["status"], "Acknowledged");

    // Refusals: exit 1 with the code on stderr.
    let out = cli.run(&[
        "command",
        "send",
        "--device",
        "no-such-device",
        "ProfileList",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ENROLLMENT_NOT_FOUND"));

    // Stop the daemon (SIGKILL: whatever is on disk is what an attacker could copy).
    let _ = child.kill();
    let _ = child.wait();

    let admin_token = std::fs::read_to_string(data.join(mdmd::ADMIN_TOKEN_FILE))
        .unwrap()
        .trim()
        .to_string();
    let mut secrets: Vec<(&str, Vec<u8>)> = vec![
        ("bootstrap token", bootstrap),
        ("admin API token", admin_token.into_bytes()),
        ("enrollment link token", link_token.into_bytes()),
        ("SCEP challenge", challenge.into_bytes()),
    ];
    // The appliance's private keys: unseal them here (with the key file an attacker would
    // also need) to know what must not appear in the clear.
    {
        use mdm_keystore::Sealer as _;
        use mdm_service::ports::SettingsStore as _;
        let store =
            mdm_store::RedbStore::open(&data.join(mdmd::DB_FILE), Default::default()).unwrap();
        let sealer =
            mdm_keystore::SoftSealer::open_or_create(&data.join(mdmd::SOFT_KEY_FILE)).unwrap();
        for (role, label) in [
            ("ca", "CA key"),
            ("scep-ra", "SCEP RA key"),
            ("profile-signer", "signing key"),
            ("tls", "TLS key"),
        ] {
            let sealed = store
                .setting(&format!("pki/{role}.key.sealed"))
                .unwrap()
                .unwrap();
            let blob = mdm_keystore::SealedBlob::from_bytes(&sealed).unwrap();
            let pkcs8 = sealer.unseal(&format!("{role}-key"), &blob).unwrap();
            // Skip the PKCS#8 header (common to all keys of a type): take key material.
            secrets.push((label, pkcs8[pkcs8.len() / 2..pkcs8.len() / 2 + 32].to_vec()));
        }
        store.close().unwrap();
    }
    if let Some(unlock) = d.unlock_token.clone() {
        secrets.push(("unlock token", unlock));
    }
    let db = std::fs::read(data.join(mdmd::DB_FILE)).unwrap();
    let log = std::fs::read(&log_path).unwrap();
    assert!(log.len() > 1000, "the log captured the run");
    for (what, secret) in &secrets {
        let needle = &secret[..secret.len().min(24)];
        assert!(
            !contains(&db, needle),
            "{what} is in the database file in the clear"
        );
        assert!(!contains(&log, needle), "{what} is in the log");
        let b64 = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(secret)
        };
        assert!(
            !contains(&log, &b64.as_bytes()[..b64.len().min(24)]),
            "{what} (base64) is in the log"
        );
    }
}

/// A command sent to more devices than one page of the command view holds: the counts cover
/// every delivery, and `mdmctl command show` reads every page.
#[tokio::test]
async fn a_site_wide_command_is_shown_in_pages() {
    use mdm_service::ports::{
        AuthenticateRecord, DeviceFacts, EnrollmentStore as _, PushTarget, Timestamp,
        TokenUpdateRecord,
    };
    use std::os::unix::fs::DirBuilderExt as _;
    const DEVICES: usize = 1_050;

    // Enrollments written straight into the database before the first start, as the two
    // check-ins of each device would have left them.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&data)
        .unwrap();
    let ids: Vec<String> = (0..DEVICES)
        .map(|i| format!("00008120-PAGE{i:011}"))
        .collect();
    {
        let store =
            mdm_store::RedbStore::open(&data.join(mdmd::DB_FILE), Default::default()).unwrap();
        let at = Timestamp::now();
        for (i, id) in ids.iter().enumerate() {
            let identity_sha256 = format!("{i:064x}");
            store
                .authenticate(AuthenticateRecord {
                    id: id.clone(),
                    identity_sha256: identity_sha256.clone(),
                    topic: Some(appliance_tests::TOPIC.into()),
                    facts: DeviceFacts::default(),
                    source: None,
                    at,
                })
                .await
                .unwrap();
            store
                .token_update(TokenUpdateRecord {
                    id: id.clone(),
                    device_id: id.clone(),
                    user_id: None,
                    user_short_name: None,
                    identity_sha256,
                    push: PushTarget {
                        token_hex: format!("{i:064x}"),
                        push_magic: "magic".into(),
                        topic: appliance_tests::TOPIC.into(),
                    },
                    unlock_token_sealed: None,
                    awaiting_configuration: false,
                    at,
                })
                .await
                .unwrap();
        }
        store.close().unwrap();
    }
    let (_dir, _data, _addr, _log, mut child, cli) = start_daemon_in(dir);

    let mut args = vec!["command", "send"];
    for id in &ids {
        args.extend(["--device", id.as_str()]);
    }
    args.push("ProfileList");
    let uuid = cli.ok(&args).trim().to_string();

    let shown: serde_json::Value =
        serde_json::from_str(&cli.ok(&["--json", "command", "show", &uuid])).unwrap();
    assert_eq!(shown["total_deliveries"], DEVICES);
    assert_eq!(shown["delivery_counts"]["Queued"], DEVICES);
    let listed: Vec<&str> = shown["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["enrollment_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids, "every page, in enrollment-id order");
    assert!(shown["next"].is_null());
    let text = cli.ok(&["command", "show", &uuid]);
    assert!(
        text.contains(&format!("Deliveries  {DEVICES} ({DEVICES} queued)")),
        "{text}"
    );

    let _ = child.kill();
    let _ = child.wait();
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// ABM through `mdmctl` against the daemon process and the ABM simulator; then the token's
/// secrets must be nowhere in the database file or the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abm_through_the_cli_and_no_abm_secret_leaks() {
    use mdm_sim::abm::{AbmSimConfig, AbmSimulator, ContentCipher, ServerId, TokenOptions};
    let sim = AbmSimulator::start(AbmSimConfig::default()).await.unwrap();
    let serials = sim.add_devices(ServerId(0), 150).unwrap();
    let (dir, data, _addr, log_path, mut child, cli) = start_daemon();
    let sim_ca = dir.path().join("abm-ca.pem");
    std::fs::write(&sim_ca, sim.ca_pem()).unwrap();

    cli.ok(&[
        "abm",
        "add",
        "north",
        "--url",
        &sim.base_url(),
        "--abm-ca",
        sim_ca.to_str().unwrap(),
        "--interval",
        "0",
    ]);
    let listed = cli.ok(&["abm", "list"]);
    assert!(
        listed.contains("north") && listed.contains("no token"),
        "{listed}"
    );
    let pem_path = dir.path().join("north.pem");
    cli.ok(&[
        "abm",
        "public-key",
        "north",
        "--out",
        pem_path.to_str().unwrap(),
    ]);
    let pem = std::fs::read_to_string(&pem_path).unwrap();
    let cert = mdm_pki::Certificate::from_pem(&pem).unwrap();
    let p7m = sim
        .server_token(
            ServerId(0),
            cert.der(),
            &TokenOptions {
                cipher: ContentCipher::Aes128Cbc,
                ber: false,
                new_org: false,
            },
        )
        .unwrap();
    let token_path = dir.path().join("north_Token.p7m");
    std::fs::write(&token_path, &p7m).unwrap();
    cli.ok(&[
        "abm",
        "token",
        "upload",
        "north",
        token_path.to_str().unwrap(),
    ]);
    let shown = cli.ok(&["abm", "show", "north"]);
    assert!(
        shown.contains("Example Organization") && shown.contains("active"),
        "{shown}"
    );

    let profile = dir.path().join("staff.json");
    std::fs::write(&profile, r#"{"profile_name": "Staff", "department": "IT"}"#).unwrap();
    cli.ok(&[
        "abm",
        "profile",
        "define",
        "north",
        "staff",
        profile.to_str().unwrap(),
    ]);
    cli.ok(&["abm", "set", "north", "--default-profile", "staff"]);
    let synced = cli.ok(&["abm", "sync", "north"]);
    assert!(synced.contains("150"), "{synced}");
    let csv = cli.ok(&["abm", "devices", "north", "--csv"]);
    assert_eq!(csv.lines().count(), 151, "{csv}");
    let one: serde_json::Value =
        serde_json::from_str(&cli.ok(&["--json", "abm", "device", "north", &serials[0]])).unwrap();
    assert_eq!(one["last_assignment"]["outcome"], "SUCCESS", "{one}");

    // A wrong token file: exit 1 with the code.
    std::fs::write(&token_path, b"garbage").unwrap();
    let out = cli.run(&[
        "abm",
        "token",
        "upload",
        "north",
        token_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ABM_TOKEN_INVALID"));

    let _ = child.kill();
    let _ = child.wait();
    let creds = sim.credentials(ServerId(0)).unwrap();
    let db = std::fs::read(data.join(mdmd::DB_FILE)).unwrap();
    let log = std::fs::read(&log_path).unwrap();
    assert!(
        contains(&log, b"ABM sync finished"),
        "the log captured the sync"
    );
    for (what, secret) in [
        ("consumer secret", creds.consumer_secret.as_bytes()),
        ("access token", creds.access_token.as_bytes()),
        ("access secret", creds.access_secret.as_bytes()),
    ] {
        assert!(!contains(&db, secret), "ABM {what} is in the database file");
        assert!(!contains(&log, secret), "ABM {what} is in the log");
    }
    sim.shutdown().await;
}
