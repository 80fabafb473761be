// Test code: a failed unwrap is a failed test, and helpers outside #[test] functions too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ca, have_openssl, openssl, openssl_raw, pki, read, rsa_leaf, write, BACKDATE, DAY};
use der::{Any, Tag};
use mdm_pki::cms::{self, ContentCipher, SignerOptions};
use mdm_pki::{
    ber_to_der, issue, oid, CertificateParams, KeyAlgorithm, KeyUsages, Name, PkiError, PrivateKey,
};

const BODY: &[u8] = b"<?xml version=\"1.0\"?><plist><dict><key>MessageType</key>\
<string>Authenticate</string></dict></plist>\n";

#[test]
fn sign_attached_and_detached_verify_with_us() {
    let p = pki();
    let attached = cms::sign(BODY, &p.leaf, &p.leaf_key, &SignerOptions::default()).unwrap();
    let v = cms::verify(&attached, None).unwrap();
    assert_eq!(v.content, BODY);
    assert_eq!(v.signer, p.leaf);
    assert_eq!(v.digest_algorithm, oid::SHA256);
    assert_eq!(v.content_type, oid::ID_DATA);
    let t = v.signing_time().unwrap();
    assert!(t.elapsed().unwrap_or_default() < std::time::Duration::from_secs(120));
    // Same content given as "detached" too is fine; a different one is not.
    cms::verify(&attached, Some(BODY)).unwrap();
    assert!(cms::verify(&attached, Some(b"other")).is_err());

    let extra_attr = cms::make_attribute(
        oid::SCEP_TRANSACTION_ID,
        Any::new(Tag::PrintableString, b"tx-1".to_vec()).unwrap(),
    )
    .unwrap();
    let opts = SignerOptions {
        detached: true,
        extra_certs: std::slice::from_ref(&p.ca),
        extra_signed_attributes: vec![extra_attr],
    };
    let detached = cms::sign(BODY, &p.leaf, &p.leaf_key, &opts).unwrap();
    assert!(cms::verify(&detached, None).is_err());
    let v = cms::verify(&detached, Some(BODY)).unwrap();
    assert_eq!(v.certificates.len(), 2);
    assert_eq!(v.signer, p.leaf);
    let tx = cms::find_attribute(&v.signed_attributes, &oid::SCEP_TRANSACTION_ID).unwrap();
    assert_eq!(tx.value(), b"tx-1");

    let err = cms::verify(&detached, Some(b"tampered body")).unwrap_err();
    assert!(matches!(err, PkiError::ContentDigestMismatch), "{err}");

    // Flip the last byte: the end of the signature value.
    let mut bad = detached.clone();
    let n = bad.len();
    bad[n - 1] ^= 0x01;
    let err = cms::verify(&bad, Some(BODY)).unwrap_err();
    assert!(matches!(err, PkiError::BadSignature), "{err}");

    // A key that does not match the certificate is refused up front.
    let other = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    assert!(cms::sign(BODY, &p.leaf, &other, &SignerOptions::default()).is_err());
}

#[test]
fn ecdsa_signer_works_too() {
    let (ca_key, ca) = ca();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let mut params = CertificateParams::leaf(Name::new("ec signer"), DAY, BACKDATE);
    params.key_usage = KeyUsages::SIGN;
    let cert = issue(&params, &key.public_key_der(), &ca, &ca_key).unwrap();
    let signed = cms::sign(BODY, &cert, &key, &SignerOptions::default()).unwrap();
    assert_eq!(cms::verify(&signed, None).unwrap().content, BODY);

    if !have_openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "ca.pem", ca.to_pem());
    write(d, "signed.der", &signed);
    openssl(
        d,
        &[
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            "signed.der",
            "-CAfile",
            "ca.pem",
            "-out",
            "out",
        ],
    );
    assert_eq!(read(d, "out"), BODY);
}

#[test]
fn openssl_verifies_our_signatures() {
    if !have_openssl() {
        return;
    }
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "ca.pem", p.ca.to_pem());
    write(d, "body", BODY);

    let attached = cms::sign(BODY, &p.leaf, &p.leaf_key, &SignerOptions::default()).unwrap();
    write(d, "attached.der", &attached);
    openssl(
        d,
        &[
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            "attached.der",
            "-CAfile",
            "ca.pem",
            "-out",
            "out",
        ],
    );
    assert_eq!(read(d, "out"), BODY);

    let opts = SignerOptions {
        detached: true,
        extra_certs: std::slice::from_ref(&p.ca),
        ..SignerOptions::default()
    };
    let detached = cms::sign(BODY, &p.leaf, &p.leaf_key, &opts).unwrap();
    write(d, "detached.der", &detached);
    openssl(
        d,
        &[
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            "detached.der",
            "-content",
            "body",
            "-binary",
            "-CAfile",
            "ca.pem",
            "-out",
            "/dev/null",
        ],
    );

    // openssl rejects what we reject.
    write(d, "other", b"tampered body");
    let out = openssl_raw(
        d,
        &[
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            "detached.der",
            "-content",
            "other",
            "-binary",
            "-CAfile",
            "ca.pem",
            "-out",
            "/dev/null",
        ],
    );
    assert!(!out.status.success());

    // The structure openssl sees: signer identified by issuer+serial, the attributes we claim.
    let printed = String::from_utf8(openssl(
        d,
        &[
            "cms",
            "-cmsout",
            "-print",
            "-inform",
            "DER",
            "-in",
            "attached.der",
        ],
    ))
    .unwrap();
    for needle in [
        "d.issuerAndSerialNumber",
        "contentType",
        "messageDigest",
        "signingTime",
        "sha256",
        "sha256WithRSAEncryption",
    ] {
        assert!(printed.contains(needle), "missing {needle} in\n{printed}");
    }
}

/// Writes the signer key/cert and returns the directory.
fn openssl_signer(p: &common::Pki) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "signer.pem", p.leaf.to_pem());
    write(
        d,
        "signer.key",
        p.leaf_key.to_pkcs8_pem().unwrap().as_bytes(),
    );
    write(d, "ca.pem", p.ca.to_pem());
    write(d, "body", BODY);
    dir
}

#[test]
fn we_verify_openssl_signed_data_der_and_ber() {
    if !have_openssl() {
        return;
    }
    let p = pki();
    let dir = openssl_signer(&p);
    let d = dir.path();
    let base = [
        "cms",
        "-sign",
        "-binary",
        "-in",
        "body",
        "-signer",
        "signer.pem",
        "-inkey",
        "signer.key",
        "-md",
        "sha256",
        "-outform",
        "DER",
    ];

    let cases: [(&str, &[&str], bool); 6] = [
        ("attached DER", &["-nodetach"], false),
        ("attached BER (-stream)", &["-nodetach", "-stream"], false),
        ("detached DER", &[], true),
        // openssl streams the content inline even without -nodetach.
        ("streamed without -nodetach", &["-stream"], false),
        ("no signed attributes", &["-nodetach", "-noattr"], false),
        (
            "signer by key identifier",
            &["-nodetach", "-keyid", "-stream"],
            false,
        ),
    ];
    for (name, extra, detached) in cases {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-out", "signed.der"]);
        openssl(d, &args);
        let signed = read(d, "signed.der");
        if extra.contains(&"-stream") {
            // Make sure the case really exercises BER: ContentInfo with an indefinite length.
            assert_eq!(signed[1], 0x80, "{name}: openssl did not stream");
        }
        let v = if detached {
            assert!(cms::verify(&signed, None).is_err(), "{name}");
            cms::verify(&signed, Some(BODY)).unwrap_or_else(|e| panic!("{name}: {e}"))
        } else {
            cms::verify(&signed, None).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        assert_eq!(v.content, BODY, "{name}");
        assert_eq!(v.signer, p.leaf, "{name}");
        // Supplying the same content again is accepted either way.
        cms::verify(&signed, Some(BODY)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(v.digest_algorithm, oid::SHA256, "{name}");
        if extra.contains(&"-noattr") {
            assert!(v.signed_attributes.is_empty());
        }
        let tampered = if detached {
            cms::verify(&signed, Some(b"not the body"))
        } else {
            let mut bad = signed.clone();
            let pos = bad.windows(12).position(|w| w == b"Authenticate").unwrap();
            bad[pos] = b'a';
            cms::verify(&bad, None)
        };
        assert!(tampered.is_err(), "{name}: tampering not detected");
    }

    // A detached signature in BER: openssl's detached DER with its two outer wrappers
    // rewritten to indefinite lengths (openssl itself only streams attached content).
    openssl(
        d,
        &[
            "cms",
            "-sign",
            "-binary",
            "-in",
            "body",
            "-signer",
            "signer.pem",
            "-inkey",
            "signer.key",
            "-outform",
            "DER",
            "-out",
            "detached.der",
        ],
    );
    let ber = indefinite_wrappers(&read(d, "detached.der"));
    assert!(cms::verify(&ber, None).is_err());
    assert_eq!(cms::verify(&ber, Some(BODY)).unwrap().content, BODY);
    assert!(cms::verify(&ber, Some(b"something else")).is_err());

    // SHA-1 and SHA-512 digests from openssl.
    for md in ["sha1", "sha512"] {
        openssl(
            d,
            &[
                "cms",
                "-sign",
                "-binary",
                "-nodetach",
                "-in",
                "body",
                "-signer",
                "signer.pem",
                "-inkey",
                "signer.key",
                "-md",
                md,
                "-outform",
                "DER",
                "-out",
                "md.der",
            ],
        );
        let v = cms::verify(&read(d, "md.der"), None).unwrap();
        assert_eq!(v.content, BODY);
    }
}

/// Re-encodes `SEQUENCE { OID, [0] { SignedData } }` with indefinite lengths on the
/// SEQUENCE, the [0] and the SignedData SEQUENCE.
fn indefinite_wrappers(der: &[u8]) -> Vec<u8> {
    fn split(der: &[u8]) -> (u8, &[u8]) {
        let (len, hl) = match der[1] {
            l if l < 0x80 => (usize::from(l), 2),
            0x81 => (usize::from(der[2]), 3),
            0x82 => (usize::from(der[2]) << 8 | usize::from(der[3]), 4),
            other => panic!("unexpected length octet {other:#x}"),
        };
        assert_eq!(hl + len, der.len());
        (der[0], &der[hl..])
    }
    let (t0, ci) = split(der);
    let oid_len = 2 + usize::from(ci[1]);
    let (oid, rest) = ci.split_at(oid_len);
    let (t1, explicit) = split(rest);
    let (t2, sd) = split(explicit);
    let mut out = vec![t0, 0x80];
    out.extend_from_slice(oid);
    out.extend_from_slice(&[t1, 0x80, t2, 0x80]);
    out.extend_from_slice(sd);
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    out
}

#[test]
fn ber_normalisation_matches_openssl_der() {
    if !have_openssl() {
        return;
    }
    let p = pki();
    let dir = openssl_signer(&p);
    let d = dir.path();
    openssl(
        d,
        &[
            "cms",
            "-sign",
            "-binary",
            "-nodetach",
            "-stream",
            "-in",
            "body",
            "-signer",
            "signer.pem",
            "-inkey",
            "signer.key",
            "-outform",
            "DER",
            "-out",
            "ber.der",
        ],
    );
    // openssl re-encodes what it parsed as DER.
    openssl(
        d,
        &[
            "cms", "-cmsout", "-inform", "DER", "-in", "ber.der", "-outform", "DER", "-out",
            "der.der",
        ],
    );
    let ber = read(d, "ber.der");
    let der = read(d, "der.der");
    assert_ne!(ber, der);
    assert_eq!(ber_to_der(&ber).unwrap(), der);
    assert_eq!(ber_to_der(&der).unwrap(), der);
}

#[test]
fn certs_only_is_readable_by_openssl_and_us() {
    let p = pki();
    let degenerate = cms::certs_only(&[p.leaf.clone(), p.ca.clone()]).unwrap();
    let mut certs = cms::certificates(&degenerate).unwrap();
    certs.sort_by(|a, b| a.der().cmp(b.der()));
    let mut expected = vec![p.leaf.clone(), p.ca.clone()];
    expected.sort_by(|a, b| a.der().cmp(b.der()));
    assert_eq!(certs, expected);
    // No signer: verification must fail, not succeed vacuously.
    assert!(cms::verify(&degenerate, Some(b"")).is_err());
    assert!(cms::certs_only(&[]).is_err());

    if !have_openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "p7.der", &degenerate);
    let out = String::from_utf8(openssl(
        d,
        &[
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            "p7.der",
            "-print_certs",
            "-noout",
        ],
    ))
    .unwrap();
    assert!(out.contains("subject=CN = signer.example"), "{out}");
    assert!(
        out.contains("subject=O = Test Org, CN = Test Appliance CA"),
        "{out}"
    );
}

#[test]
fn envelope_roundtrip_all_ciphers() {
    let p = pki();
    let content = vec![0x5a; 1000];
    for cipher in [
        ContentCipher::Aes128Cbc,
        ContentCipher::Aes256Cbc,
        ContentCipher::DesEde3Cbc,
    ] {
        let env = cms::envelope(&content, &p.leaf, cipher).unwrap();
        let (plain, used) = cms::open_envelope(&env, &p.leaf, &p.leaf_key).unwrap();
        assert_eq!(plain.as_slice(), content.as_slice());
        assert_eq!(used, cipher);
        // Empty content pads to one block and comes back empty.
        let env = cms::envelope(b"", &p.leaf, cipher).unwrap();
        let (plain, _) = cms::open_envelope(&env, &p.leaf, &p.leaf_key).unwrap();
        assert!(plain.is_empty());
    }

    // Not addressed to another certificate.
    let (other_key, other) = rsa_leaf(&p.ca, &p.ca_key, "someone else");
    let env = cms::envelope(&content, &p.leaf, ContentCipher::Aes256Cbc).unwrap();
    let err = cms::open_envelope(&env, &other, &other_key).unwrap_err();
    assert!(matches!(err, PkiError::NoMatchingRecipient), "{err}");
    // The right certificate with the wrong key.
    assert!(cms::open_envelope(&env, &p.leaf, &other_key).is_err());
    // An EC certificate cannot receive.
    assert!(cms::envelope(&content, &p.ca, ContentCipher::Aes256Cbc).is_err());

    // Corrupting the encrypted key gives the generic decryption error.
    let mut bad = env.clone();
    let enc_key_pos = find_encrypted_key(&bad);
    bad[enc_key_pos + 40] ^= 0xff;
    let err = cms::open_envelope(&bad, &p.leaf, &p.leaf_key).unwrap_err();
    assert!(matches!(err, PkiError::Decryption), "{err}");
    // Corrupting the last ciphertext block breaks the padding (or, rarely, not; then the
    // content differs), and never panics.
    let mut bad = env.clone();
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    match cms::open_envelope(&bad, &p.leaf, &p.leaf_key) {
        Err(PkiError::Decryption) => {}
        Ok((plain, _)) => assert_ne!(plain.as_slice(), content.as_slice()),
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// Offset of the 256-byte RSA encryptedKey value (an OCTET STRING with length 0x0100).
fn find_encrypted_key(der: &[u8]) -> usize {
    der.windows(4)
        .position(|w| w == [0x04, 0x82, 0x01, 0x00])
        .map(|p| p + 4)
        .expect("encryptedKey")
}

#[test]
fn openssl_decrypts_our_envelopes() {
    if !have_openssl() {
        return;
    }
    let p = pki();
    let dir = openssl_signer(&p);
    let d = dir.path();
    for cipher in [
        ContentCipher::Aes128Cbc,
        ContentCipher::Aes256Cbc,
        ContentCipher::DesEde3Cbc,
    ] {
        let env = cms::envelope(BODY, &p.leaf, cipher).unwrap();
        write(d, "env.der", &env);
        openssl(
            d,
            &[
                "cms",
                "-decrypt",
                "-inform",
                "DER",
                "-in",
                "env.der",
                "-recip",
                "signer.pem",
                "-inkey",
                "signer.key",
                "-out",
                "plain",
            ],
        );
        assert_eq!(read(d, "plain"), BODY, "{cipher:?}");
    }
}

#[test]
fn we_open_openssl_envelopes_der_and_ber() {
    if !have_openssl() {
        return;
    }
    let p = pki();
    let dir = openssl_signer(&p);
    let d = dir.path();
    let big: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    write(d, "big", &big);
    for (flag, cipher) in [
        ("-aes256", ContentCipher::Aes256Cbc),
        ("-aes128", ContentCipher::Aes128Cbc),
        ("-aes192", ContentCipher::Aes192Cbc),
        ("-des3", ContentCipher::DesEde3Cbc),
    ] {
        for stream in [false, true] {
            for keyid in [false, true] {
                let mut args = vec![
                    "cms", "-encrypt", "-binary", flag, "-in", "big", "-outform", "DER", "-out",
                    "env.der",
                ];
                if stream {
                    args.push("-stream");
                }
                if keyid {
                    args.push("-keyid");
                }
                args.push("signer.pem");
                openssl(d, &args);
                let env = read(d, "env.der");
                if stream {
                    assert_eq!(env[1], 0x80, "openssl did not stream");
                }
                let (plain, used) = cms::open_envelope(&env, &p.leaf, &p.leaf_key)
                    .unwrap_or_else(|e| panic!("{flag} stream={stream} keyid={keyid}: {e}"));
                assert_eq!(plain.as_slice(), big.as_slice());
                assert_eq!(used, cipher);
            }
        }
    }

    // Addressed to someone else: a clean error.
    let (other_key, other) = rsa_leaf(&p.ca, &p.ca_key, "someone else");
    openssl(
        d,
        &[
            "cms",
            "-encrypt",
            "-binary",
            "-aes256",
            "-in",
            "big",
            "-outform",
            "DER",
            "-out",
            "env.der",
            "-stream",
            "signer.pem",
        ],
    );
    let err = cms::open_envelope(&read(d, "env.der"), &other, &other_key).unwrap_err();
    assert!(matches!(err, PkiError::NoMatchingRecipient), "{err}");
}

#[test]
fn garbage_never_panics() {
    let p = pki();
    let signed = cms::sign(BODY, &p.leaf, &p.leaf_key, &SignerOptions::default()).unwrap();
    let env = cms::envelope(BODY, &p.leaf, ContentCipher::Aes256Cbc).unwrap();
    for input in [&signed, &env] {
        for cut in (0..input.len()).step_by(3) {
            let _ = cms::verify(&input[..cut], None);
            let _ = cms::open_envelope(&input[..cut], &p.leaf, &p.leaf_key);
        }
        for pos in (0..input.len()).step_by(5) {
            let mut bad = input.clone();
            bad[pos] ^= 0x5a;
            let _ = cms::verify(&bad, Some(BODY));
            let _ = cms::open_envelope(&bad, &p.leaf, &p.leaf_key);
            let _ = cms::certificates(&bad);
        }
    }
    assert!(cms::verify(b"", None).is_err());
    assert!(cms::verify(&env, None).is_err());
    assert!(cms::open_envelope(&signed, &p.leaf, &p.leaf_key).is_err());
}
