// Test code: a failed unwrap is a failed test, and helpers outside #[test] functions too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{have_openssl, openssl, read, write};
use mdm_pki::{verify_signature, KeyAlgorithm, PkiError, PrivateKey};

#[test]
fn generate_roundtrip_sign_verify_both_algorithms() {
    for alg in [KeyAlgorithm::Rsa2048, KeyAlgorithm::EcdsaP256] {
        let key = PrivateKey::generate(alg).unwrap();
        assert_eq!(key.algorithm(), alg);

        let again = PrivateKey::from_pkcs8_der(&key.to_pkcs8_der()).unwrap();
        assert_eq!(again.algorithm(), alg);
        assert_eq!(again.public_key_der(), key.public_key_der());

        let pem = key.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let from_pem = PrivateKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(from_pem.public_key_der(), key.public_key_der());

        let msg = b"check-in body";
        let sig = again.sign_sha256(msg).unwrap();
        let alg_id = key.signature_algorithm();
        verify_signature(&key.public_key_der(), &alg_id, None, msg, &sig).unwrap();

        let err = verify_signature(&key.public_key_der(), &alg_id, None, b"other body", &sig);
        assert!(matches!(err, Err(PkiError::BadSignature)), "{err:?}");
        let mut bad = sig.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(verify_signature(&key.public_key_der(), &alg_id, None, msg, &bad).is_err());

        let other = PrivateKey::generate(alg).unwrap();
        assert!(verify_signature(&other.public_key_der(), &alg_id, None, msg, &sig).is_err());
    }
}

#[test]
fn debug_does_not_print_key_material() {
    for alg in [KeyAlgorithm::Rsa2048, KeyAlgorithm::EcdsaP256] {
        let key = PrivateKey::generate(alg).unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains("PrivateKey"), "{debug}");
        let pkcs8 = key.to_pkcs8_der();
        let hex_key = hex::encode(&*pkcs8);
        // No 8-byte window of the PKCS#8 encoding may show up, in hex or as raw bytes.
        for window in pkcs8.windows(8).step_by(4) {
            let h = hex::encode(window);
            assert!(!debug.to_lowercase().contains(&h), "{debug}");
        }
        assert!(!debug.contains(&hex_key[hex_key.len() - 32..]));
        assert!(debug.len() < 200, "{debug}");
    }
}

#[test]
fn garbage_and_unsupported_keys_are_rejected() {
    assert!(PrivateKey::from_pkcs8_der(&[]).is_err());
    assert!(PrivateKey::from_pkcs8_der(&[0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
    assert!(PrivateKey::from_pkcs8_pem("not pem").is_err());
    let key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    let mut der = key.to_pkcs8_der().to_vec();
    der.truncate(der.len() / 2);
    assert!(PrivateKey::from_pkcs8_der(&der).is_err());
}

#[test]
fn openssl_keys_load_and_signatures_cross_verify() {
    if !have_openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.pem",
        ],
    );
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ec.pem",
        ],
    );
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            "p384.pem",
        ],
    );
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:3072",
            "-out",
            "rsa3072.pem",
        ],
    );

    for (file, alg) in [
        ("rsa.pem", KeyAlgorithm::Rsa2048),
        ("ec.pem", KeyAlgorithm::EcdsaP256),
    ] {
        let pem = String::from_utf8(read(d, file)).unwrap();
        let key = PrivateKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(key.algorithm(), alg);

        // Our signature, openssl's verification.
        write(d, "msg", b"signed by aws-lc");
        write(d, "sig", key.sign_sha256(b"signed by aws-lc").unwrap());
        openssl(d, &["pkey", "-in", file, "-pubout", "-out", "pub.pem"]);
        let out = openssl(
            d,
            &[
                "dgst",
                "-sha256",
                "-verify",
                "pub.pem",
                "-signature",
                "sig",
                "msg",
            ],
        );
        assert!(String::from_utf8_lossy(&out).contains("Verified OK"));

        // openssl's public key encoding is the one we compute.
        openssl(
            d,
            &[
                "pkey", "-in", file, "-pubout", "-outform", "DER", "-out", "pub.der",
            ],
        );
        assert_eq!(read(d, "pub.der"), key.public_key_der());

        // openssl's signature, our verification.
        openssl(
            d,
            &["dgst", "-sha256", "-sign", file, "-out", "osig", "msg"],
        );
        verify_signature(
            &key.public_key_der(),
            &key.signature_algorithm(),
            None,
            b"signed by aws-lc",
            &read(d, "osig"),
        )
        .unwrap();
    }

    for unsupported in ["p384.pem", "rsa3072.pem"] {
        let pem = String::from_utf8(read(d, unsupported)).unwrap();
        let err = PrivateKey::from_pkcs8_pem(&pem).unwrap_err();
        assert!(matches!(err, PkiError::InvalidPrivateKey(_)), "{err}");
    }
}

#[test]
fn rsa_decrypts_what_openssl_encrypted() {
    if !have_openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    write(d, "key.pem", key.to_pkcs8_pem().unwrap().as_bytes());
    openssl(d, &["pkey", "-in", "key.pem", "-pubout", "-out", "pub.pem"]);
    write(d, "cek", [7u8; 32]);
    openssl(
        d,
        &[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            "pub.pem",
            "-pkeyopt",
            "rsa_padding_mode:pkcs1",
            "-in",
            "cek",
            "-out",
            "ct",
        ],
    );
    let plain = key.rsa_decrypt_pkcs1(&read(d, "ct")).unwrap();
    assert_eq!(plain.as_slice(), &[7u8; 32]);

    let mut bad = read(d, "ct");
    bad[10] ^= 0xff;
    assert!(matches!(
        key.rsa_decrypt_pkcs1(&bad),
        Err(PkiError::Decryption)
    ));
}
