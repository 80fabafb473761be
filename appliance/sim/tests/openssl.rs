//! Cross-checks of the simulator's wire formats against the `openssl` CLI, an
//! independent CMS/PKCS #10 implementation. Each test is skipped (with a note on stderr)
//! when the binary is missing.

// Helpers outside #[test] functions unwrap too: a failure must abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use der::Encode;
use mdm_sim::apple::AppleStandIn;
use mdm_sim::cms::{self, ContentCipher};
use mdm_sim::device::{DeviceKind, SimDevice};
use mdm_sim::keys::{KeyAlgorithm, PrivateKey};
use mdm_sim::profile;
use mdm_sim::scep::{self, EnrollmentRequest, MessageType};
use mdm_sim::x509::{self, CertificateParams, KeyUsageFlags};

fn openssl_available() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("openssl not found: skipping cross-check");
    }
    ok
}

fn openssl(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn openssl_fails(dir: &Path, args: &[&str]) -> bool {
    !Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn machine_info_verifies_with_openssl_cms() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let apple = AppleStandIn::generate().unwrap();
    std::fs::write(dir.path().join("root.pem"), apple.root_pem().unwrap()).unwrap();
    for alg in [KeyAlgorithm::Rsa2048, KeyAlgorithm::EcdsaP256] {
        let mut device = SimDevice::builder(DeviceKind::IPhone)
            .unwrap()
            .apple_key_algorithm(alg)
            .build();
        let signed = device.signed_machine_info(&apple).unwrap();
        std::fs::write(dir.path().join("mi.der"), &signed).unwrap();
        // Only the root is given: the intermediate must come from the message itself.
        openssl(
            dir.path(),
            &[
                "cms", "-verify", "-CAfile", "root.pem", "-inform", "DER", "-in", "mi.der",
                "-binary", "-out", "mi.xml",
            ],
        );
        let content = std::fs::read(dir.path().join("mi.xml")).unwrap();
        let info: plist::Dictionary = plist::from_bytes(&content).unwrap();
        assert_eq!(info["UDID"].as_string(), Some(device.udid.as_str()));
        assert_eq!(info["SERIAL"].as_string(), Some(device.serial.as_str()));
    }
    // Another stand-in's root must not verify it.
    let other = AppleStandIn::generate().unwrap();
    std::fs::write(dir.path().join("other.pem"), other.root_pem().unwrap()).unwrap();
    assert!(openssl_fails(
        dir.path(),
        &[
            "cms",
            "-verify",
            "-CAfile",
            "other.pem",
            "-inform",
            "DER",
            "-in",
            "mi.der",
            "-binary",
            "-out",
            "x"
        ],
    ));
}

#[test]
fn csr_verifies_with_openssl_req() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = PrivateKey::generate_rsa2048().unwrap();
    let subject = x509::name_from_rdns(&[
        vec![("O".into(), "Example Org".into())],
        vec![("CN".into(), "mdm identity".into())],
    ])
    .unwrap();
    let csr = x509::certificate_request(
        &subject,
        &key,
        Some("s3cret-Challenge"),
        &scep::key_usage_from_mask(5),
    )
    .unwrap();
    std::fs::write(dir.path().join("csr.der"), csr.to_der().unwrap()).unwrap();
    let out = openssl(
        dir.path(),
        &[
            "req", "-verify", "-inform", "DER", "-in", "csr.der", "-noout", "-text",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("s3cret-Challenge"), "{text}");
    assert!(
        text.contains("CN = mdm identity") || text.contains("CN=mdm identity"),
        "{text}"
    );
    assert!(
        text.contains("Digital Signature, Key Encipherment"),
        "{text}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("verify OK") || text.contains("verify OK"),
        "{err}"
    );
}

#[test]
fn pkcs_req_parses_and_decrypts_with_openssl() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    openssl(
        dir.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ra.key",
            "-out",
            "ra.pem",
            "-subj",
            "/CN=Throwaway SCEP RA",
            "-days",
            "1",
        ],
    );
    let ra = x509::certificates_from_pem(&std::fs::read(dir.path().join("ra.pem")).unwrap())
        .unwrap()
        .remove(0);
    for (cipher, name) in [
        (ContentCipher::Aes256Cbc, "AES-256-CBC"),
        (ContentCipher::DesEde3Cbc, "DES-EDE3-CBC"),
    ] {
        let key = PrivateKey::generate_rsa2048().unwrap();
        let request = EnrollmentRequest {
            subject: x509::name(&[("CN", "device")]).unwrap(),
            challenge: Some("challenge".into()),
            key: key.clone(),
            key_usage: vec![KeyUsageFlags::DigitalSignature],
        };
        let signer = scep::self_signed_signer(&request.subject, &key).unwrap();
        let pki = scep::build_request(
            MessageType::PkcsReq,
            &request.csr().unwrap(),
            &key,
            &signer,
            &key,
            &ra,
            cipher,
        )
        .unwrap();
        std::fs::write(dir.path().join("req.der"), &pki.message).unwrap();

        let printed = openssl(
            dir.path(),
            &[
                "cms", "-cmsout", "-print", "-inform", "DER", "-in", "req.der",
            ],
        );
        let text = String::from_utf8_lossy(&printed.stdout);
        assert!(
            text.contains("2.16.840.1.113733.1.9.2"),
            "messageType attribute missing:\n{text}"
        );
        assert!(text.contains(&pki.transaction_id), "transactionID missing");

        // The signature verifies with the signer certificate the message carries.
        openssl(
            dir.path(),
            &[
                "cms",
                "-verify",
                "-noverify",
                "-inform",
                "DER",
                "-in",
                "req.der",
                "-binary",
                "-out",
                "env.der",
            ],
        );
        let env_text = String::from_utf8_lossy(
            &openssl(
                dir.path(),
                &[
                    "cms", "-cmsout", "-print", "-inform", "DER", "-in", "env.der",
                ],
            )
            .stdout,
        )
        .to_lowercase();
        let expected = if cipher == ContentCipher::Aes256Cbc {
            "aes-256-cbc"
        } else {
            "des-ede3-cbc"
        };
        assert!(env_text.contains(expected), "{name} not used:\n{env_text}");
        openssl(
            dir.path(),
            &[
                "cms", "-decrypt", "-inform", "DER", "-in", "env.der", "-recip", "ra.pem",
                "-inkey", "ra.key", "-binary", "-out", "csr.der",
            ],
        );
        openssl(
            dir.path(),
            &[
                "req", "-verify", "-inform", "DER", "-in", "csr.der", "-noout",
            ],
        );
        // What openssl decrypted is the CSR for our key.
        let csr = std::fs::read(dir.path().join("csr.der")).unwrap();
        let csr = <x509_cert::request::CertReq as der::Decode>::from_der(&csr).unwrap();
        assert_eq!(csr.info.public_key, key.public_key_info().unwrap());
    }
}

#[test]
fn envelopes_from_openssl_open_with_our_key() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = PrivateKey::generate_rsa2048().unwrap();
    let cert = x509::self_signed(
        &CertificateParams::new(x509::name(&[("CN", "recipient")]).unwrap())
            .key_usage(&[KeyUsageFlags::KeyEncipherment]),
        &key,
    )
    .unwrap();
    std::fs::write(dir.path().join("r.pem"), x509::to_pem(&cert).unwrap()).unwrap();
    std::fs::write(dir.path().join("plain"), b"issued certificate bytes").unwrap();
    for cipher in ["-aes256", "-aes128", "-des3"] {
        openssl(
            dir.path(),
            &[
                "cms", "-encrypt", cipher, "-binary", "-outform", "DER", "-in", "plain", "-out",
                "env.der", "r.pem",
            ],
        );
        let der = std::fs::read(dir.path().join("env.der")).unwrap();
        let plain = cms::open_envelope(&der, &key, Some(&cert)).unwrap();
        assert_eq!(&plain[..], b"issued certificate bytes");
    }
}

#[test]
fn profiles_signed_by_openssl_install() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=Test CA",
            "-days",
            "2",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "s.key",
            "-out",
            "s.csr",
            "-subj",
            "/CN=Profile signer",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "s.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "s.pem",
            "-days",
            "1",
        ],
    );
    let ca = x509::certificates_from_pem(&std::fs::read(d.join("ca.pem")).unwrap())
        .unwrap()
        .remove(0);

    let mut mdm = plist::Dictionary::new();
    mdm.insert("PayloadType".into(), "com.apple.mdm".into());
    mdm.insert(
        "PayloadUUID".into(),
        "B0000000-0000-0000-0000-000000000001".into(),
    );
    mdm.insert(
        "ServerURL".into(),
        "https://mdm.example.lan/mdm/connect".into(),
    );
    mdm.insert("Topic".into(), "com.apple.mgmt.External.x".into());
    mdm.insert(
        "IdentityCertificateUUID".into(),
        "B0000000-0000-0000-0000-000000000002".into(),
    );
    mdm.insert("AccessRights".into(), 8191.into());
    let mut scep_inner = plist::Dictionary::new();
    scep_inner.insert("URL".into(), "https://mdm.example.lan/scep".into());
    let mut scep_payload = plist::Dictionary::new();
    scep_payload.insert("PayloadType".into(), "com.apple.security.scep".into());
    scep_payload.insert(
        "PayloadUUID".into(),
        "B0000000-0000-0000-0000-000000000002".into(),
    );
    scep_payload.insert(
        "PayloadContent".into(),
        plist::Value::Dictionary(scep_inner),
    );
    let mut top = plist::Dictionary::new();
    top.insert("PayloadType".into(), "Configuration".into());
    top.insert("PayloadIdentifier".into(), "openssl.signed".into());
    top.insert(
        "PayloadUUID".into(),
        "B0000000-0000-0000-0000-000000000000".into(),
    );
    top.insert(
        "PayloadContent".into(),
        plist::Value::Array(vec![
            plist::Value::Dictionary(scep_payload),
            plist::Value::Dictionary(mdm),
        ]),
    );
    let mut xml = Vec::new();
    plist::Value::Dictionary(top)
        .to_writer_xml(&mut xml)
        .unwrap();
    std::fs::write(d.join("p.xml"), &xml).unwrap();
    openssl(
        d,
        &[
            "cms",
            "-sign",
            "-nodetach",
            "-binary",
            "-outform",
            "DER",
            "-signer",
            "s.pem",
            "-inkey",
            "s.key",
            "-certfile",
            "ca.pem",
            "-in",
            "p.xml",
            "-out",
            "p.der",
        ],
    );
    let signed = std::fs::read(d.join("p.der")).unwrap();
    let p = profile::parse_profile(&signed, Some(std::slice::from_ref(&ca)), true).unwrap();
    assert_eq!(p.identifier, "openssl.signed");
    assert_eq!(
        p.mdm.unwrap().server_url,
        "https://mdm.example.lan/mdm/connect"
    );

    let mut device = SimDevice::random(DeviceKind::IPhone).unwrap();
    device.install_profile(&signed, Some(&[ca])).unwrap();
}
