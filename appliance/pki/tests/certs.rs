// Test code: a failed unwrap is a failed test, and helpers outside #[test] functions too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;
use std::time::SystemTime;

use common::{ca, have_openssl, openssl, openssl_raw, pki, read, rsa_leaf, write, BACKDATE, DAY};
use mdm_pki::oid;
use mdm_pki::{
    issue, self_signed, verify_chain, Certificate, CertificateParams, CertificationRequest,
    ChainError, KeyAlgorithm, KeyUsages, Name, PkiError, PrivateKey,
};

fn now() -> SystemTime {
    SystemTime::now()
}

#[test]
fn ecdsa_ca_issues_rsa_leaf_with_expected_fields() {
    let p = pki();
    assert!(p.ca.is_ca());
    assert_eq!(p.ca.path_len_constraint(), Some(0));
    assert_eq!(p.ca.subject(), "CN=Test Appliance CA,O=Test Org");
    assert_eq!(p.ca.subject(), p.ca.issuer());
    assert!(!p.leaf.is_ca());
    assert_eq!(p.leaf.issuer(), p.ca.subject());
    assert_eq!(
        p.leaf.subject_common_name().as_deref(),
        Some("signer.example")
    );
    assert_eq!(p.leaf.public_key_der(), p.leaf_key.public_key_der());
    assert_eq!(p.leaf.key_usage(), Some(KeyUsages::SIGN_AND_ENCRYPT));
    assert_eq!(p.ca.key_usage(), Some(KeyUsages::CA));
    assert_eq!(
        p.leaf.authority_key_identifier(),
        p.ca.subject_key_identifier()
    );
    assert_eq!(p.leaf.serial_hex().len(), 32);
    assert_ne!(p.leaf.serial_hex(), p.ca.serial_hex());
    assert!(p.leaf.not_before() <= now() && now() <= p.leaf.not_after());

    verify_chain(&p.leaf, &[], std::slice::from_ref(&p.ca), now()).unwrap();
    verify_chain(&p.ca, &[], std::slice::from_ref(&p.ca), now()).unwrap();
}

#[test]
fn pem_der_roundtrip_and_fingerprint() {
    let p = pki();
    let pem = p.leaf.to_pem();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert!(pem.lines().all(|l| l.len() <= 64));
    let back = Certificate::from_pem(&pem).unwrap();
    assert_eq!(back, p.leaf);

    let bundle = format!(
        "junk before\n{}\n{}trailing",
        p.ca.to_pem(),
        p.leaf.to_pem()
    );
    let all = Certificate::all_from_pem(&bundle).unwrap();
    assert_eq!(all, vec![p.ca.clone(), p.leaf.clone()]);
    assert!(Certificate::from_pem("no certificate here").is_err());

    let fp = p.leaf.sha256();
    let expected = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, p.leaf.der());
    assert_eq!(&fp[..], expected.as_ref());
}

#[test]
fn name_uid_sans_and_eku() {
    let (ca_key, ca) = ca();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let mut params = CertificateParams::leaf(
        Name {
            common_name: "APSP:1234".into(),
            organization: Some("Org".into()),
            organizational_unit: Some("Unit".into()),
            uid: Some("com.apple.mgmt.External.1234".into()),
        },
        DAY,
        BACKDATE,
    );
    params.key_usage = KeyUsages::SIGN;
    params.extended_key_usage = vec![oid::KP_SERVER_AUTH, oid::KP_CLIENT_AUTH];
    params.dns_names = vec!["mdm.example.lan".into()];
    params.ip_addresses = vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
    params.serial = Some([0x80; 16]);
    let cert = issue(&params, &key.public_key_der(), &ca, &ca_key).unwrap();

    assert_eq!(
        cert.subject_uid().as_deref(),
        Some("com.apple.mgmt.External.1234")
    );
    assert_eq!(cert.subject_common_name().as_deref(), Some("APSP:1234"));
    assert_eq!(
        cert.subject(),
        "UID=com.apple.mgmt.External.1234,CN=APSP:1234,OU=Unit,O=Org"
    );
    assert_eq!(cert.dns_names(), vec!["mdm.example.lan".to_string()]);
    assert_eq!(
        cert.ip_addresses(),
        vec![
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            "fd00::1".parse().unwrap()
        ]
    );
    assert_eq!(
        cert.extended_key_usage(),
        vec![oid::KP_SERVER_AUTH, oid::KP_CLIENT_AUTH]
    );
    // A serial with the high bit set stays positive (sign octet added, not shown).
    assert_eq!(cert.serial_hex(), "80".repeat(16));
    verify_chain(&cert, &[], &[ca], now()).unwrap();
}

#[test]
fn chain_rejects_wrong_root_expiry_and_tampering() {
    let p = pki();
    let (_, other_ca) = ca();

    let err = verify_chain(&p.leaf, &[], std::slice::from_ref(&other_ca), now()).unwrap_err();
    assert!(
        matches!(err, PkiError::Chain(ChainError::UnknownIssuer { .. })),
        "{err}"
    );

    // Same CA name, different key: the name matches but the signature cannot.
    let impostor_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let impostor = self_signed(
        &CertificateParams::ca(
            Name {
                common_name: "Test Appliance CA".into(),
                organization: Some("Test Org".into()),
                ..Name::default()
            },
            Some(0),
            DAY,
            BACKDATE,
        ),
        &impostor_key,
    )
    .unwrap();
    // Its key identifier differs from the leaf's AKI, so it is not even a candidate.
    let err = verify_chain(&p.leaf, &[], &[impostor], now()).unwrap_err();
    assert!(matches!(err, PkiError::Chain(_)), "{err}");

    let later = now() + 400 * DAY;
    let err = verify_chain(&p.leaf, &[], std::slice::from_ref(&p.ca), later).unwrap_err();
    assert!(
        matches!(err, PkiError::Chain(ChainError::OutsideValidity { .. })),
        "{err}"
    );
    let earlier = now() - DAY;
    assert!(verify_chain(&p.leaf, &[], std::slice::from_ref(&p.ca), earlier).is_err());

    // An already expired leaf.
    let mut params = CertificateParams::leaf(Name::new("old"), DAY, BACKDATE);
    params.not_before = now() - 10 * DAY;
    params.not_after = now() - 5 * DAY;
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let expired = issue(&params, &key.public_key_der(), &p.ca, &p.ca_key).unwrap();
    assert!(verify_chain(&expired, &[], std::slice::from_ref(&p.ca), now()).is_err());

    // Tamper with the subject CN inside the signed TBSCertificate.
    let mut der = p.leaf.der().to_vec();
    let needle = b"signer.example";
    let pos = der.windows(needle.len()).position(|w| w == needle).unwrap();
    der[pos] = b'S';
    let tampered = Certificate::from_der(&der).unwrap();
    let err = verify_chain(&tampered, &[], std::slice::from_ref(&p.ca), now()).unwrap_err();
    assert!(
        matches!(err, PkiError::Chain(ChainError::BadSignature { .. })),
        "{err}"
    );

    // Tamper with the signature itself.
    let mut der = p.leaf.der().to_vec();
    let n = der.len();
    der[n - 5] ^= 0x01;
    let tampered = Certificate::from_der(&der).unwrap();
    assert!(verify_chain(&tampered, &[], std::slice::from_ref(&p.ca), now()).is_err());
}

#[test]
fn intermediates_and_path_length() {
    let root_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let root = self_signed(
        &CertificateParams::ca(Name::new("Root"), Some(1), 10 * DAY, BACKDATE),
        &root_key,
    )
    .unwrap();
    let int_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let int = issue(
        &CertificateParams::ca(Name::new("Intermediate"), Some(0), 5 * DAY, BACKDATE),
        &int_key.public_key_der(),
        &root,
        &root_key,
    )
    .unwrap();
    let (_, leaf) = rsa_leaf(&int, &int_key, "leaf");

    verify_chain(
        &leaf,
        std::slice::from_ref(&int),
        std::slice::from_ref(&root),
        now(),
    )
    .unwrap();
    // Unrelated extra intermediates are ignored.
    let (_, stray) = ca();
    verify_chain(
        &leaf,
        &[stray, int.clone()],
        std::slice::from_ref(&root),
        now(),
    )
    .unwrap();
    // Missing intermediate.
    assert!(verify_chain(&leaf, &[], std::slice::from_ref(&root), now()).is_err());

    // A second intermediate below one with pathLen 0 breaks the constraint.
    let int2_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let int2 = issue(
        &CertificateParams::ca(Name::new("Intermediate 2"), None, 5 * DAY, BACKDATE),
        &int2_key.public_key_der(),
        &int,
        &int_key,
    )
    .unwrap();
    let (_, deep_leaf) = rsa_leaf(&int2, &int2_key, "deep");
    let err = verify_chain(&deep_leaf, &[int.clone(), int2], &[root], now()).unwrap_err();
    assert!(
        matches!(err, PkiError::Chain(ChainError::PathLength { .. })),
        "{err}"
    );

    // A leaf cannot issue.
    let (leaf_key, leaf) = rsa_leaf(&int, &int_key, "not a ca");
    let err = issue(
        &CertificateParams::leaf(Name::new("x"), DAY, BACKDATE),
        &leaf_key.public_key_der(),
        &leaf,
        &leaf_key,
    )
    .unwrap_err();
    assert!(matches!(err, PkiError::Invalid { .. }), "{err}");
    // Nor can a CA sign with somebody else's key.
    assert!(issue(
        &CertificateParams::leaf(Name::new("x"), DAY, BACKDATE),
        &leaf_key.public_key_der(),
        &int,
        &root_key,
    )
    .is_err());
}

#[test]
fn non_ca_issuer_is_refused_by_the_chain_check() {
    if !have_openssl() {
        return;
    }
    // Build "leaf issued by a non-CA" with openssl, since `issue` refuses to.
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
            "fake.key",
            "-out",
            "fake.pem",
            "-subj",
            "/CN=fake issuer",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "keyUsage=critical,digitalSignature,keyCertSign",
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
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=victim",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "fake.pem",
            "-CAkey",
            "fake.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            "leaf.pem",
        ],
    );
    let fake = Certificate::from_pem(&String::from_utf8(read(d, "fake.pem")).unwrap()).unwrap();
    let leaf = Certificate::from_pem(&String::from_utf8(read(d, "leaf.pem")).unwrap()).unwrap();
    let err = verify_chain(&leaf, &[], &[fake], now()).unwrap_err();
    assert!(
        matches!(err, PkiError::Chain(ChainError::NotCa { .. })),
        "{err}"
    );
}

#[test]
fn openssl_accepts_issued_leaf_and_shows_extensions() {
    if !have_openssl() {
        return;
    }
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "ca.pem", p.ca.to_pem());
    write(d, "leaf.pem", p.leaf.to_pem());
    let out = openssl(d, &["verify", "-CAfile", "ca.pem", "leaf.pem"]);
    assert!(String::from_utf8_lossy(&out).contains("leaf.pem: OK"));

    // A TLS server certificate with SANs and EKU, checked for its purpose as well.
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let mut params = CertificateParams::leaf(Name::new("mdm.example.lan"), DAY, BACKDATE);
    params.key_usage = KeyUsages::SIGN;
    params.extended_key_usage = vec![oid::KP_SERVER_AUTH];
    params.dns_names = vec!["mdm.example.lan".into()];
    params.ip_addresses = vec!["10.0.0.1".parse().unwrap()];
    let tls = issue(&params, &key.public_key_der(), &p.ca, &p.ca_key).unwrap();
    write(d, "tls.pem", tls.to_pem());
    openssl(
        d,
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-purpose",
            "sslserver",
            "-verify_hostname",
            "mdm.example.lan",
            "tls.pem",
        ],
    );

    let text =
        String::from_utf8(openssl(d, &["x509", "-in", "tls.pem", "-noout", "-text"])).unwrap();
    for needle in [
        "Version: 3",
        "Signature Algorithm: ecdsa-with-SHA256",
        "X509v3 Basic Constraints: critical",
        "CA:FALSE",
        "X509v3 Key Usage: critical",
        "Digital Signature",
        "X509v3 Extended Key Usage",
        "TLS Web Server Authentication",
        "X509v3 Subject Alternative Name",
        "DNS:mdm.example.lan",
        "IP Address:10.0.0.1",
        "X509v3 Subject Key Identifier",
        "X509v3 Authority Key Identifier",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }

    let ca_text =
        String::from_utf8(openssl(d, &["x509", "-in", "ca.pem", "-noout", "-text"])).unwrap();
    for needle in [
        "CA:TRUE, pathlen:0",
        "Certificate Sign, CRL Sign",
        "ASN1 OID: prime256v1",
    ] {
        assert!(ca_text.contains(needle), "missing {needle:?} in\n{ca_text}");
    }
    let leaf_text =
        String::from_utf8(openssl(d, &["x509", "-in", "leaf.pem", "-noout", "-text"])).unwrap();
    assert!(
        leaf_text.contains("Digital Signature, Key Encipherment"),
        "{leaf_text}"
    );
    assert!(leaf_text.contains("Public-Key: (2048 bit)"), "{leaf_text}");

    // Serial and fingerprint agree with openssl's.
    let serial = String::from_utf8(openssl(
        d,
        &["x509", "-in", "leaf.pem", "-noout", "-serial"],
    ))
    .unwrap();
    assert_eq!(
        serial.trim().to_lowercase(),
        format!("serial={}", p.leaf.serial_hex())
    );
    let fp = String::from_utf8(openssl(
        d,
        &[
            "x509",
            "-in",
            "leaf.pem",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    ))
    .unwrap();
    let fp_hex: String = fp
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(fp_hex, hex::encode(p.leaf.sha256()));

    // openssl refuses the leaf against another CA, as we do.
    let (_, other) = ca();
    write(d, "other.pem", other.to_pem());
    assert!(
        !openssl_raw(d, &["verify", "-CAfile", "other.pem", "leaf.pem"])
            .status
            .success()
    );
}

#[test]
fn csr_build_parse_and_openssl_interop() {
    let key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    let csr = CertificationRequest::build(
        &Name {
            common_name: "device".into(),
            organization: Some("Org".into()),
            ..Name::default()
        },
        &key,
        Some("one-time-challenge"),
    )
    .unwrap();
    assert_eq!(
        csr.challenge_password().as_deref(),
        Some("one-time-challenge")
    );
    assert_eq!(csr.subject(), "CN=device,O=Org");
    assert_eq!(csr.public_key_der(), key.public_key_der());
    let again = CertificationRequest::from_der(csr.der()).unwrap();
    assert_eq!(again.subject_der(), csr.subject_der());
    assert!(!format!("{csr:?}").contains("one-time-challenge"));

    // Non-printable passwords survive as UTF8String.
    let csr2 = CertificationRequest::build(&Name::new("d"), &key, Some("pässword_1")).unwrap();
    assert_eq!(csr2.challenge_password().as_deref(), Some("pässword_1"));

    // Tampering with the signed part breaks the self-signature.
    let mut der = csr.der().to_vec();
    let pos = der.windows(6).position(|w| w == b"device").unwrap();
    der[pos] = b'D';
    let err = CertificationRequest::from_der(&der).unwrap_err();
    assert!(matches!(err, PkiError::BadSignature), "{err}");
    assert!(CertificationRequest::from_der(&der[..der.len() - 3]).is_err());

    // A leaf issued with the CSR's subject keeps its bytes.
    let (ca_key, ca) = ca();
    let mut params = CertificateParams::leaf(Name::default(), DAY, BACKDATE);
    params.subject_der = Some(csr.subject_der());
    let cert = issue(&params, &csr.public_key_der(), &ca, &ca_key).unwrap();
    assert_eq!(cert.subject_der(), csr.subject_der());

    if !have_openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "ours.der", csr.der());
    let out = openssl_raw(
        d,
        &[
            "req", "-inform", "DER", "-in", "ours.der", "-noout", "-verify", "-text",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("challengePassword"), "{text}");
    assert!(text.contains("one-time-challenge"), "{text}");

    write(
        d,
        "req.cnf",
        "[req]\nprompt = no\ndistinguished_name = dn\nattributes = attrs\n\
         [dn]\nO = Acme\nCN = ipad\n[attrs]\nchallengePassword = s3cret\n",
    );
    openssl(
        d,
        &[
            "req",
            "-new",
            "-config",
            "req.cnf",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "k.pem",
            "-outform",
            "DER",
            "-out",
            "theirs.der",
        ],
    );
    let theirs = CertificationRequest::from_der(&read(d, "theirs.der")).unwrap();
    assert_eq!(theirs.challenge_password().as_deref(), Some("s3cret"));
    assert_eq!(theirs.subject(), "CN=ipad,O=Acme");
}
