//! `GetToken` for `com.apple.maid` end to end: an ADE device of an ABM connection asks for the
//! token a Managed Apple Account sign-in needs, and gets a JWT that names the MDM server and
//! verifies with the public key the admin uploaded to ABM, checked here with aws-lc-rs
//! directly (not the appliance's PKI code). On a TPM keystore the key is made, the `.p7m`
//! decrypted and the JWT signed inside the TPM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../appliance/keystore/tests/support/swtpm.rs"]
mod swtpm;

use std::time::{SystemTime, UNIX_EPOCH};

use appliance_tests::{ade_device_builder, on_tpm, Appliance, NO_APNS};
use aws_lc_rs::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use base64::Engine as _;
use mdm_keystore::Zeroizing;
use mdm_sim::abm::{AbmSimConfig, AbmSimulator, ContentCipher, ServerId, TokenOptions};
use mdm_sim::device::SimDevice;
use mdmd::config::KeystoreBackend;
use mdmd::restore::RestoreOptions;
use serde_json::{json, Value};

const SERVER: ServerId = ServerId(0);
const PASSPHRASE: &str = "correct horse battery staple";

/// One DER element at the start of `input`: (tag, contents, rest).
fn der_element(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (len, header) = match input[1] {
        n if n < 0x80 => (usize::from(n), 2),
        n => {
            let count = usize::from(n & 0x7f);
            let len = input[2..2 + count]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + count)
        }
    };
    (tag, &input[header..header + len], &input[header + len..])
}

/// The RSAPublicKey (PKCS #1) of a DER X.509 certificate, read field by field (RFC 5280
/// §4.1): Certificate -> TBSCertificate -> subjectPublicKeyInfo -> subjectPublicKey.
fn rsa_public_key_of(cert_der: &[u8]) -> Vec<u8> {
    let (tag, certificate, _) = der_element(cert_der);
    assert_eq!(tag, 0x30);
    let (tag, tbs, _) = der_element(certificate);
    assert_eq!(tag, 0x30);
    let mut rest = tbs;
    let (tag, _, after) = der_element(rest);
    if tag == 0xa0 {
        // [0] EXPLICIT version
        rest = after;
    }
    // serialNumber, signature, issuer, validity, subject
    for _ in 0..5 {
        rest = der_element(rest).2;
    }
    let (tag, spki, _) = der_element(rest);
    assert_eq!(tag, 0x30);
    let (tag, algorithm, after) = der_element(spki);
    assert_eq!(tag, 0x30);
    // rsaEncryption, 1.2.840.113549.1.1.1
    assert!(
        algorithm.starts_with(&[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01])
    );
    let (tag, bits, _) = der_element(after);
    assert_eq!(tag, 0x03);
    assert_eq!(bits[0], 0, "no unused bits");
    bits[1..].to_vec()
}

fn b64url(part: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap_or_else(|e| panic!("{part:?} is not base64url: {e}"))
}

/// A random (version 4) UUID in its 8-4-4-4-12 text form.
fn is_uuid_v4(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
        && groups[2].starts_with('4')
}

/// Checks a `com.apple.maid` token as Apple documents it and returns its `jti`.
fn check_maid_jwt(token: &[u8], server_uuid: &str, rsa_public_key: &[u8]) -> String {
    let jwt = std::str::from_utf8(token).unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");

    let header: Value = serde_json::from_slice(&b64url(parts[0])).unwrap();
    assert_eq!(header["alg"], "RS256", "{header}");
    assert_eq!(header["typ"], "JWT", "{header}");

    let claims: Value = serde_json::from_slice(&b64url(parts[1])).unwrap();
    assert_eq!(claims["iss"], server_uuid, "{claims}");
    assert_eq!(claims["service_type"], "com.apple.maid", "{claims}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat = claims["iat"].as_u64().unwrap();
    assert!(now.abs_diff(iat) <= 60, "iat {iat}, now {now}");
    let jti = claims["jti"].as_str().unwrap().to_string();
    assert!(is_uuid_v4(&jti), "{jti}");

    let signing_input = format!("{}.{}", parts[0], parts[1]);
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, rsa_public_key)
        .verify(signing_input.as_bytes(), &b64url(parts[2]))
        .unwrap_or_else(|_| panic!("the JWT signature does not verify: {jwt}"));
    jti
}

/// The device of `serial` enrolled through Setup Assistant with the profile ABM assigned it.
async fn ade_device(app: &Appliance, sim: &AbmSimulator, serial: &str) -> SimDevice {
    let (st, v) = app.api("POST", "/api/v1/abm/north/sync", None).await;
    assert_eq!(st, 200, "{v}");
    app.assign_staff_profile("north").await;
    let mut d = ade_device_builder(sim, serial).build();
    app.enroll_ade(&mut d).await;
    d.run_until_idle().await.unwrap();
    d
}

fn refusal(err: &mdm_sim::error::DeviceError) -> (u16, String) {
    let st = err
        .status()
        .unwrap_or_else(|| panic!("not an HTTP refusal: {err:?}"));
    (st.status, String::from_utf8_lossy(&st.body).into_owned())
}

/// Creates connection `north` for `SERVER` of `sim` and uploads its token; returns the
/// RSAPublicKey of the certificate the admin uploaded to ABM.
async fn connect_north(app: &Appliance, sim: &AbmSimulator, key_storage: &str) -> Vec<u8> {
    let (st, v) = app
        .api(
            "POST",
            "/api/v1/abm",
            Some(
                json!({"name": "north", "base_url": sim.base_url(), "ca_pem": sim.ca_pem(),
                        "interval_seconds": 0}),
            ),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["key_storage"], Value::Null, "{v}");
    assert_eq!(v["staged_key_storage"], key_storage, "{v}");
    upload_token(app, sim, key_storage).await
}

/// Uploads a token the simulator makes for the connection's public key (the staged one, else
/// the current one), which makes that key current; returns its RSAPublicKey.
async fn upload_token(app: &Appliance, sim: &AbmSimulator, key_storage: &str) -> Vec<u8> {
    // The public key the admin uploads to ABM: what the JWT must verify with.
    let (st, pem) = app.api("GET", "/api/v1/abm/north/public-key", None).await;
    assert_eq!(st, 200, "{pem}");
    let (label, cert_der) = der::pem::decode_vec(pem.as_str().unwrap().as_bytes()).unwrap();
    assert_eq!(label, "CERTIFICATE");

    // ABM's token file, encrypted to that certificate, is opened by the held key.
    let p7m = sim
        .server_token(
            SERVER,
            &cert_der,
            &TokenOptions {
                cipher: ContentCipher::Aes256Cbc,
                ber: false,
                new_org: false,
            },
        )
        .unwrap();
    let (st, v) = app.api_raw("PUT", "/api/v1/abm/north/token", p7m).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "active", "{v}");
    assert_eq!(v["key_storage"], key_storage, "{v}");
    assert_eq!(v["staged_key_storage"], Value::Null, "{v}");
    assert_eq!(
        v["account"]["server_uuid"],
        sim.servers()[0].uuid.as_str(),
        "{v}"
    );
    rsa_public_key_of(&cert_der)
}

/// The whole path on one appliance, whose keystore keeps the ABM key as `key_storage`.
async fn maid_tokens(app: &Appliance, key_storage: &str) {
    let sim = AbmSimulator::start(AbmSimConfig::default()).await.unwrap();
    let serial = sim.add_devices(SERVER, 1).unwrap().remove(0);
    let public_key = connect_north(app, &sim, key_storage).await;
    let server_uuid = sim.servers()[0].uuid.clone();

    let mut d = ade_device(app, &sim, &serial).await;
    let token = d.get_token("com.apple.maid").await.unwrap();
    let first = check_maid_jwt(&token, &server_uuid, &public_key);
    let token = d.get_token("com.apple.maid").await.unwrap();
    let second = check_maid_jwt(&token, &server_uuid, &public_key);
    assert_ne!(first, second, "every token has its own jti");

    // A service nobody provides is still refused as unknown.
    let err = d.get_token("com.example.unknown").await.unwrap_err();
    let (status, body) = refusal(&err);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("TOKEN_SERVICE_UNKNOWN"), "{body}");

    // A device ABM does not list (enrolled by hand) gets no token, and the reason.
    let mut manual = app.enroll_manual().await;
    let err = manual.get_token("com.apple.maid").await.unwrap_err();
    let (status, body) = refusal(&err);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("MAID_DEVICE_NOT_IN_ABM"), "{body}");

    // A rotated key pair is staged where new keys are made; the current key keeps signing
    // until a token for the new one is uploaded, which then signs.
    let (st, _) = app.api("POST", "/api/v1/abm/north/public-key", None).await;
    assert_eq!(st, 200);
    let (_, v) = app.api("GET", "/api/v1/abm/north", None).await;
    assert_eq!(v["key_storage"], key_storage, "{v}");
    assert_eq!(v["staged_key_storage"], key_storage, "{v}");
    let token = d.get_token("com.apple.maid").await.unwrap();
    check_maid_jwt(&token, &server_uuid, &public_key);
    let rotated = upload_token(app, &sim, key_storage).await;
    assert_ne!(rotated, public_key);
    let token = d.get_token("com.apple.maid").await.unwrap();
    check_maid_jwt(&token, &server_uuid, &rotated);
}

#[tokio::test]
async fn maid_tokens_on_the_software_keystore() {
    let app = Appliance::start().await;
    maid_tokens(&app, "sealed").await;
}

#[tokio::test]
async fn maid_tokens_on_a_tpm_keystore() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tpm) = swtpm::Swtpm::start(&dir.path().join("tpm")) else {
        return;
    };
    let app = Appliance::start_with(on_tpm(tpm.tcti())).await;
    maid_tokens(&app, "tpm").await;
    drop(app);
    drop(tpm);
}

/// A backup restored onto another TPM: the ABM key stayed inside the first TPM, so the
/// device's token is refused with the steps to take, and after them it is signed again.
#[tokio::test]
async fn a_key_left_in_another_tpm_asks_for_a_new_key_pair() {
    let dir = tempfile::tempdir().unwrap();
    let Some(first_tpm) = swtpm::Swtpm::start(&dir.path().join("tpm-a")) else {
        return;
    };
    let Some(second_tpm) = swtpm::Swtpm::start(&dir.path().join("tpm-b")) else {
        return;
    };
    let mut app = Appliance::start_with(on_tpm(first_tpm.tcti())).await;
    let sim = AbmSimulator::start(AbmSimConfig::default()).await.unwrap();
    let serial = sim.add_devices(SERVER, 1).unwrap().remove(0);
    let public_key = connect_north(&app, &sim, "tpm").await;
    let server_uuid = sim.servers()[0].uuid.clone();
    let mut d = ade_device(&app, &sim, &serial).await;
    let token = d.get_token("com.apple.maid").await.unwrap();
    check_maid_jwt(&token, &server_uuid, &public_key);

    let resp = app.backup(PASSPHRASE).await;
    assert_eq!(resp.status, 200);
    let backup = dir.path().join("appliance.mdmbackup");
    std::fs::write(&backup, &resp.body).unwrap();
    app.stop().await;

    // The same appliance (address, CA, database) on new hardware: the second TPM.
    let restored = dir.path().join("restored");
    mdmd::restore::restore(&RestoreOptions {
        data_dir: restored.clone(),
        from: backup,
        passphrase: Zeroizing::new(PASSPHRASE.to_owned()),
        keystore: KeystoreBackend::Tpm,
        tcti: second_tpm.tcti(),
        force: false,
        key_only: false,
    })
    .unwrap();
    let mut cfg = mdmd::Config::development(app.addr, restored);
    cfg.development = false;
    cfg.keystore.backend = KeystoreBackend::Tpm;
    cfg.keystore.tcti = second_tpm.tcti();
    cfg.apns.url = NO_APNS.to_string();
    cfg.abm.url = NO_APNS.to_string();
    cfg.ade.device_ca_roots = vec![app.apple_root()];
    let running = mdmd::start(cfg).await.unwrap();
    app.reconnect_admin();
    d.disconnect().await;

    let err = d.get_token("com.apple.maid").await.unwrap_err();
    let (status, body) = refusal(&err);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("ABM_KEY_UNUSABLE"), "{body}");
    assert!(body.contains("inside another TPM"), "{body}");
    for step in [
        "mdmctl abm public-key north --new",
        "upload the new public key",
        "mdmctl abm token upload north",
    ] {
        assert!(body.contains(step), "{step:?} missing: {body}");
    }

    // The steps: a new key pair (inside this TPM), its public key to ABM, the new token.
    let (st, _) = app.api("POST", "/api/v1/abm/north/public-key", None).await;
    assert_eq!(st, 200);
    let new_key = upload_token(&app, &sim, "tpm").await;
    assert_ne!(new_key, public_key);
    let token = d.get_token("com.apple.maid").await.unwrap();
    check_maid_jwt(&token, &server_uuid, &new_key);
    running.stop().await.unwrap();
}
