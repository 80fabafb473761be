//! Held RSA keys ("create, public key, decrypt, sign") against a real software TPM (swtpm),
//! aws-lc and the `openssl` CLI, in temporary directories.
//!
//! Each TPM test starts its own swtpm on free loopback ports and is skipped (with a message)
//! only when swtpm is not installed; the `openssl` and tpm2-tools cross-checks are skipped
//! only when those tools are missing.

// This whole file is test code, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/swtpm.rs"]
mod swtpm;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{KeyPair, KeySize, Pkcs1PublicEncryptingKey, PublicEncryptingKey};
use aws_lc_rs::signature::{KeyPair as _, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use mdm_keystore::{KeyResidence, KeystoreError, Sealer, SoftSealer, TpmSealer};
use swtpm::Swtpm;

const PURPOSE: &str = "abm-token-key";

/// A temporary data directory with its own TPM.
struct Fixture {
    dir: tempfile::TempDir,
    tpm: Swtpm,
}

/// Taken by every TPM test for its whole run.
///
/// libtss2's swtpm TCTI opens its sockets without close-on-exec, so an swtpm started by one
/// test while another test is talking to its own TPM inherits that connection and keeps it
/// open after the TCTI has closed it. swtpm serves one connection at a time: the other
/// test's next connection would wait forever. (Observed: the wire-recording test hung.)
fn one_tpm_test_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Fixture {
    fn new() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let tpm = Swtpm::start(&dir.path().join("tpm-state"))?;
        Some(Self { dir, tpm })
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("keystore-tpm.key")
    }

    fn open(&self) -> TpmSealer {
        TpmSealer::open_or_create(&self.tpm.tcti(), &self.key_path()).unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    SystemRandom::new().fill(&mut out).unwrap();
    out
}

/// RSAES-PKCS1-v1_5 encryption to a DER SubjectPublicKeyInfo, with aws-lc.
fn encrypt_aws_lc(spki: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let key = Pkcs1PublicEncryptingKey::new(PublicEncryptingKey::from_der(spki).unwrap()).unwrap();
    let mut out = vec![0u8; key.ciphertext_size()];
    let len = key.encrypt(plaintext, &mut out).unwrap().len();
    out.truncate(len);
    out
}

fn verifies_aws_lc(spki: &[u8], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, spki)
        .verify(message, signature)
        .is_ok()
}

fn have(tool: &str, version_arg: &str) -> bool {
    let found = Command::new(tool).arg(version_arg).output().is_ok();
    if !found {
        eprintln!("{tool} is not installed (scripts/install-test-deps installs it); skipping");
    }
    found
}

fn run_ok(dir: &Path, program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("TSS2_LOG", "all+none")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The fields of a TPM key blob, read by the documented layout (not by the crate):
/// `"MDRK" | version | purpose len | purpose | TPM2B name | TPM2B public | TPM2B private`.
/// Returns the purpose and, for each TPM2B, its range including the length prefix.
fn blob_fields(blob: &[u8]) -> (String, [std::ops::Range<usize>; 3]) {
    assert_eq!(&blob[..4], b"MDRK");
    assert_eq!(blob[4], 1, "version");
    let purpose_len = usize::from(blob[5]);
    let purpose = String::from_utf8(blob[6..6 + purpose_len].to_vec()).unwrap();
    let mut at = 6 + purpose_len;
    let mut ranges = Vec::new();
    for _ in 0..3 {
        let len = usize::from(u16::from_be_bytes([blob[at], blob[at + 1]]));
        ranges.push(at..at + 2 + len);
        at += 2 + len;
    }
    assert_eq!(at, blob.len(), "nothing after the private area");
    (purpose, ranges.try_into().unwrap())
}

#[test]
fn a_tpm_key_decrypts_and_signs_for_aws_lc_and_openssl() {
    let _serial = one_tpm_test_at_a_time();
    let Some(fx) = Fixture::new() else { return };
    let sealer = fx.open();
    let key = sealer.create_rsa_key(PURPOSE).unwrap();
    assert_eq!(key.residence, KeyResidence::Tpm);
    assert!(key.blob.starts_with(b"MDRK"));
    assert_eq!(KeyResidence::of_blob(&key.blob), KeyResidence::Tpm);
    let (purpose, [name, _, _]) = blob_fields(&key.blob);
    assert_eq!(purpose, PURPOSE);
    assert_eq!(
        &key.blob[name.start + 2..name.end],
        sealer.storage_key_name()
    );
    assert!(!format!("{key:?}").contains(&hex(&key.blob[..16])));

    // The public key: the same from the blob later, and exactly what aws-lc writes for it.
    let spki = key.public_key_der.clone();
    assert_eq!(sealer.rsa_public_key(PURPOSE, &key.blob).unwrap(), spki);
    let parsed = PublicEncryptingKey::from_der(&spki).unwrap();
    assert_eq!(parsed.key_size_bits(), 2048);
    let reencoded: PublicKeyX509Der<'static> = parsed.as_der().unwrap();
    assert_eq!(reencoded.as_ref(), &spki[..]);

    // Key transport (a CMS encryptedKey): a 32-byte content-encryption key from aws-lc.
    let cek = random_bytes::<32>();
    let block = encrypt_aws_lc(&spki, &cek);
    assert_eq!(block.len(), 256);
    let plain = sealer.rsa_decrypt(PURPOSE, &key.blob, &block).unwrap();
    assert_eq!(&plain[..], &cek[..]);
    assert!(
        !key.blob.windows(16).any(|w| w == &cek[..16]),
        "decrypted data in the blob"
    );

    // Damaged blocks say nothing about why.
    let mut damaged = block.clone();
    damaged[100] ^= 0x01;
    let err = sealer
        .rsa_decrypt(PURPOSE, &key.blob, &damaged)
        .unwrap_err();
    assert!(matches!(err, KeystoreError::RsaDecryption), "{err}");
    for short in [&block[..255], &[][..], &[0u8; 257][..]] {
        let err = sealer.rsa_decrypt(PURPOSE, &key.blob, short).unwrap_err();
        assert!(matches!(err, KeystoreError::RsaDecryption), "{err}");
    }
    // A block for another key, of the right size.
    let other = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let other_spki: PublicKeyX509Der<'static> = other.public_key().as_der().unwrap();
    let foreign = encrypt_aws_lc(other_spki.as_ref(), &cek);
    let err = sealer
        .rsa_decrypt(PURPOSE, &key.blob, &foreign)
        .unwrap_err();
    assert!(matches!(err, KeystoreError::RsaDecryption), "{err}");

    // A JWT-like message, signed with RSASSA-PKCS1-v1_5 / SHA-256.
    let message = b"eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJtZG0ifQ";
    let signature = sealer.rsa_sign_sha256(PURPOSE, &key.blob, message).unwrap();
    assert_eq!(signature.len(), 256);
    assert!(verifies_aws_lc(&spki, message, &signature));
    assert!(!verifies_aws_lc(&spki, b"another message", &signature));
    assert!(!verifies_aws_lc(other_spki.as_ref(), message, &signature));
    // PKCS#1 v1.5 signatures are deterministic: the TPM signed exactly this digest.
    assert_eq!(
        sealer.rsa_sign_sha256(PURPOSE, &key.blob, message).unwrap(),
        signature
    );

    if !have("openssl", "version") {
        return;
    }
    let dir = fx.dir.path();
    fs::write(fx.path("pub.der"), &spki).unwrap();
    let text = run_ok(
        dir,
        "openssl",
        &[
            "pkey", "-pubin", "-inform", "DER", "-in", "pub.der", "-noout", "-text",
        ],
    );
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    assert!(text.contains("Exponent: 65537 (0x10001)"), "{text}");
    run_ok(
        dir,
        "openssl",
        &[
            "pkey",
            "-pubin",
            "-inform",
            "DER",
            "-in",
            "pub.der",
            "-outform",
            "DER",
            "-out",
            "pub-openssl.der",
        ],
    );
    assert_eq!(fs::read(fx.path("pub-openssl.der")).unwrap(), spki);
    run_ok(
        dir,
        "openssl",
        &[
            "pkey", "-pubin", "-inform", "DER", "-in", "pub.der", "-out", "pub.pem",
        ],
    );

    let cek = random_bytes::<24>();
    fs::write(fx.path("cek.bin"), cek).unwrap();
    run_ok(
        dir,
        "openssl",
        &[
            "pkeyutl", "-encrypt", "-pubin", "-inkey", "pub.pem", "-in", "cek.bin", "-out",
            "cek.enc",
        ],
    );
    let block = fs::read(fx.path("cek.enc")).unwrap();
    assert_eq!(
        &sealer.rsa_decrypt(PURPOSE, &key.blob, &block).unwrap()[..],
        &cek[..]
    );

    fs::write(fx.path("msg.bin"), message).unwrap();
    fs::write(fx.path("sig.bin"), &signature).unwrap();
    let verified = run_ok(
        dir,
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "sig.bin",
            "msg.bin",
        ],
    );
    assert!(String::from_utf8_lossy(&verified.stdout).contains("Verified OK"));
    fs::write(fx.path("msg.bin"), b"another message").unwrap();
    let refused = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify", "pub.pem"])
        .args(["-signature", "sig.bin", "msg.bin"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "openssl verified a wrong message"
    );
}

#[test]
fn wrong_purposes_and_damaged_blobs_are_refused() {
    let _serial = one_tpm_test_at_a_time();
    let Some(fx) = Fixture::new() else { return };
    let sealer = fx.open();
    let key = sealer.create_rsa_key(PURPOSE).unwrap();
    let block = encrypt_aws_lc(&key.public_key_der, b"content key");

    let wrong_purpose = |err: KeystoreError| {
        assert!(
            matches!(&err, KeystoreError::WrongPurpose { expected, found }
                if expected == "tls-key" && found == PURPOSE),
            "{err}"
        );
    };
    wrong_purpose(sealer.rsa_public_key("tls-key", &key.blob).unwrap_err());
    wrong_purpose(
        sealer
            .rsa_decrypt("tls-key", &key.blob, &block)
            .unwrap_err(),
    );
    wrong_purpose(
        sealer
            .rsa_sign_sha256("tls-key", &key.blob, b"m")
            .unwrap_err(),
    );
    assert!(matches!(
        sealer.create_rsa_key("has space"),
        Err(KeystoreError::InvalidPurpose { .. })
    ));
    assert!(matches!(
        sealer.rsa_sign_sha256("", &key.blob, b"m"),
        Err(KeystoreError::InvalidPurpose { .. })
    ));

    // Every truncation is a clear error, found before the TPM is asked.
    for cut in 0..key.blob.len() {
        let err = sealer
            .rsa_sign_sha256(PURPOSE, &key.blob[..cut], b"m")
            .unwrap_err();
        assert!(
            matches!(
                err,
                KeystoreError::CorruptBlob { .. } | KeystoreError::NotASealedBlob
            ),
            "cut at {cut}: {err}"
        );
    }
    let mut longer = key.blob.clone();
    longer.push(0);
    assert!(matches!(
        sealer.rsa_decrypt(PURPOSE, &longer, &block),
        Err(KeystoreError::CorruptBlob { .. })
    ));
    let mut newer = key.blob.clone();
    newer[4] = 2;
    assert!(matches!(
        sealer.rsa_public_key(PURPOSE, &newer),
        Err(KeystoreError::UnsupportedVersion {
            found: 2,
            supported: 1
        })
    ));

    // Altered TPM areas: the TPM's integrity check (or its parsing) refuses them.
    let (_, [name, public, private]) = blob_fields(&key.blob);
    for (what, at) in [
        ("private area", private.start + 2 + 40),
        ("private area end", private.end - 1),
        ("modulus", public.end - 10),
        ("object attributes", public.start + 2 + 6),
    ] {
        let mut altered = key.blob.clone();
        altered[at] ^= 0x04;
        let err = sealer.rsa_decrypt(PURPOSE, &altered, &block).unwrap_err();
        assert!(
            matches!(err, KeystoreError::CorruptBlob { .. }),
            "{what}: {err}"
        );
        let err = sealer.rsa_sign_sha256(PURPOSE, &altered, b"m").unwrap_err();
        assert!(
            matches!(err, KeystoreError::CorruptBlob { .. }),
            "{what}: {err}"
        );
    }
    // An altered storage key name reads as another TPM's key (it is checked first).
    let mut altered = key.blob.clone();
    altered[name.end - 1] ^= 0x01;
    assert!(matches!(
        sealer.rsa_sign_sha256(PURPOSE, &altered, b"m"),
        Err(KeystoreError::HeldKeyFromOtherTpm { .. })
    ));

    // The untouched blob still works after all that.
    assert_eq!(
        &sealer.rsa_decrypt(PURPOSE, &key.blob, &block).unwrap()[..],
        b"content key"
    );
}

#[test]
fn a_key_from_another_tpm_is_reported_as_such() {
    let _serial = one_tpm_test_at_a_time();
    let Some(a) = Fixture::new() else { return };
    let Some(b) = Fixture::new() else { return };
    let sealer_a = a.open();
    let sealer_b = b.open();
    let key = sealer_a.create_rsa_key(PURPOSE).unwrap();
    let block = encrypt_aws_lc(&key.public_key_der, b"cek");

    let check = |err: KeystoreError| {
        let text = err.to_string();
        assert!(
            matches!(&err, KeystoreError::HeldKeyFromOtherTpm { purpose, key_storage_key, tpm_storage_key }
                if purpose == PURPOSE
                    && *key_storage_key == hex(sealer_a.storage_key_name())
                    && *tpm_storage_key == hex(sealer_b.storage_key_name())),
            "{text}"
        );
        assert!(text.contains("another TPM"), "{text}");
        assert!(text.contains("mdmctl abm public-key"), "{text}");
        assert!(text.contains("--new"), "{text}");
    };
    check(sealer_b.rsa_public_key(PURPOSE, &key.blob).unwrap_err());
    check(
        sealer_b
            .rsa_decrypt(PURPOSE, &key.blob, &block)
            .unwrap_err(),
    );
    check(
        sealer_b
            .rsa_sign_sha256(PURPOSE, &key.blob, b"m")
            .unwrap_err(),
    );

    // The same blob relabelled with B's storage key name: B's TPM refuses to load it (its
    // storage key cannot open A's wrapping), which reads as a damaged blob.
    let (_, [name, _, _]) = blob_fields(&key.blob);
    let mut relabelled = key.blob.clone();
    relabelled[name.start + 2..name.end].copy_from_slice(sealer_b.storage_key_name());
    let err = sealer_b
        .rsa_decrypt(PURPOSE, &relabelled, &block)
        .unwrap_err();
    assert!(matches!(err, KeystoreError::CorruptBlob { .. }), "{err}");

    // A still uses it.
    assert_eq!(
        &sealer_a.rsa_decrypt(PURPOSE, &key.blob, &block).unwrap()[..],
        b"cek"
    );
}

#[test]
fn a_key_survives_a_tpm_restart_and_a_new_process() {
    let _serial = one_tpm_test_at_a_time();
    let Some(fx) = Fixture::new() else { return };
    let sealer = fx.open();
    let key = sealer.create_rsa_key(PURPOSE).unwrap();
    drop(sealer);

    let Fixture { dir, tpm } = fx;
    let tpm = tpm.restart();
    let fx = Fixture { dir, tpm };
    let sealer = fx.open();
    let cek = random_bytes::<32>();
    let block = encrypt_aws_lc(&key.public_key_der, &cek);
    assert_eq!(
        &sealer.rsa_decrypt(PURPOSE, &key.blob, &block).unwrap()[..],
        &cek[..]
    );
    let signature = sealer
        .rsa_sign_sha256(PURPOSE, &key.blob, b"after")
        .unwrap();
    assert!(verifies_aws_lc(&key.public_key_der, b"after", &signature));

    // With the TPM gone, the failure is the TPM's, not the block's.
    let Fixture { dir, tpm } = fx;
    tpm.stop();
    let err = sealer.rsa_decrypt(PURPOSE, &key.blob, &block).unwrap_err();
    assert!(matches!(err, KeystoreError::TpmUnavailable { .. }), "{err}");
    let err = sealer
        .rsa_sign_sha256(PURPOSE, &key.blob, b"m")
        .unwrap_err();
    assert!(matches!(err, KeystoreError::TpmUnavailable { .. }), "{err}");
    // The public key needs no TPM.
    assert_eq!(
        sealer.rsa_public_key(PURPOSE, &key.blob).unwrap(),
        key.public_key_der
    );
    drop(dir);
}

/// A key sealed-and-loaded before the TPM backend could hold keys (a PKCS#8 in a sealed blob)
/// keeps working through the same calls.
#[test]
fn a_sealed_key_keeps_working_under_the_tpm_sealer() {
    let _serial = one_tpm_test_at_a_time();
    let Some(fx) = Fixture::new() else { return };
    let sealer = fx.open();
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let pkcs8: Pkcs8V1Der<'static> = pair.as_der().unwrap();
    let spki: PublicKeyX509Der<'static> = pair.public_key().as_der().unwrap();
    let blob = sealer.seal(PURPOSE, pkcs8.as_ref()).unwrap().to_bytes();
    assert_eq!(KeyResidence::of_blob(&blob), KeyResidence::Sealed);
    assert!(blob.starts_with(b"MDKS"));

    assert_eq!(
        sealer.rsa_public_key(PURPOSE, &blob).unwrap(),
        spki.as_ref()
    );
    let block = encrypt_aws_lc(spki.as_ref(), b"legacy cek");
    assert_eq!(
        &sealer.rsa_decrypt(PURPOSE, &blob, &block).unwrap()[..],
        b"legacy cek"
    );
    let signature = sealer.rsa_sign_sha256(PURPOSE, &blob, b"legacy").unwrap();
    assert!(verifies_aws_lc(spki.as_ref(), b"legacy", &signature));
    let mut damaged = block.clone();
    damaged[7] ^= 0x80;
    assert!(matches!(
        sealer.rsa_decrypt(PURPOSE, &blob, &damaged),
        Err(KeystoreError::RsaDecryption)
    ));
    assert!(matches!(
        sealer.rsa_sign_sha256("tls-key", &blob, b"m"),
        Err(KeystoreError::WrongPurpose { .. })
    ));
}

#[test]
fn the_soft_sealer_holds_sealed_keys() {
    let dir = tempfile::tempdir().unwrap();
    let sealer = SoftSealer::open_or_create(&dir.path().join("keystore.key")).unwrap();
    let key = sealer.create_rsa_key(PURPOSE).unwrap();
    assert_eq!(key.residence, KeyResidence::Sealed);
    assert_eq!(KeyResidence::of_blob(&key.blob), KeyResidence::Sealed);
    assert_eq!(
        sealer.rsa_public_key(PURPOSE, &key.blob).unwrap(),
        key.public_key_der
    );
    let cek = random_bytes::<32>();
    let block = encrypt_aws_lc(&key.public_key_der, &cek);
    assert_eq!(
        &sealer.rsa_decrypt(PURPOSE, &key.blob, &block).unwrap()[..],
        &cek[..]
    );
    let mut damaged = block.clone();
    damaged[200] ^= 0x10;
    assert!(matches!(
        sealer.rsa_decrypt(PURPOSE, &key.blob, &damaged),
        Err(KeystoreError::RsaDecryption)
    ));
    let signature = sealer.rsa_sign_sha256(PURPOSE, &key.blob, b"soft").unwrap();
    assert!(verifies_aws_lc(&key.public_key_der, b"soft", &signature));
    assert!(matches!(
        sealer.rsa_decrypt("tls-key", &key.blob, &block),
        Err(KeystoreError::WrongPurpose { .. })
    ));
    // A TPM key blob means nothing to a software keystore.
    let mut fake = b"MDRK".to_vec();
    fake.extend_from_slice(&key.blob[4..]);
    assert!(sealer.rsa_sign_sha256(PURPOSE, &fake, b"m").is_err());
}

/// tpm2-tools, not this crate, load the blob's public and private areas under the documented
/// storage key and use the key: the blob is the TPM's standard wrapping, and the key has the
/// documented attributes.
#[test]
fn tpm2_tools_load_and_use_the_key() {
    let _serial = one_tpm_test_at_a_time();
    let Some(fx) = Fixture::new() else { return };
    if !have("tpm2_load", "--version") {
        return;
    }
    let sealer = fx.open();
    let key = sealer.create_rsa_key(PURPOSE).unwrap();
    let (_, [_, public, private]) = blob_fields(&key.blob);
    fs::write(fx.path("key.pub"), &key.blob[public.clone()]).unwrap();
    fs::write(fx.path("key.priv"), &key.blob[private]).unwrap();

    let tpm2 = |tool: &str, args: &[&str]| fx.tpm.tool_ok(fx.dir.path(), tool, args);
    tpm2("tpm2_createprimary", swtpm::STORAGE_PRIMARY);
    tpm2(
        "tpm2_load",
        &[
            "-C",
            "primary.ctx",
            "-u",
            "key.pub",
            "-r",
            "key.priv",
            "-c",
            "key.ctx",
        ],
    );
    let shown = tpm2("tpm2_readpublic", &["-c", "key.ctx"]);
    // A TPM name is the name algorithm (SHA-256) and the digest of the TPMT_PUBLIC.
    let tpmt_public = &key.blob[public.start + 2..public.end];
    let name = [&[0x00, 0x0b][..], digest(&SHA256, tpmt_public).as_ref()].concat();
    assert!(
        shown.lines().any(|l| l == format!("name: {}", hex(&name))),
        "{shown}"
    );
    assert!(shown.contains("type:\n  value: rsa"), "{shown}");
    assert!(shown.contains("bits: 2048"), "{shown}");
    let attributes = shown
        .lines()
        .skip_while(|l| !l.starts_with("attributes:"))
        .nth(1)
        .unwrap();
    assert_eq!(
        attributes.trim(),
        "value: fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|decrypt|sign",
        "{shown}"
    );
    assert!(!shown.contains("authorization policy"), "{shown}");

    // The TPM decrypts for tpm2-tools what aws-lc encrypted to our SPKI.
    let cek = random_bytes::<32>();
    fs::write(
        fx.path("cek.enc"),
        encrypt_aws_lc(&key.public_key_der, &cek),
    )
    .unwrap();
    tpm2(
        "tpm2_rsadecrypt",
        &["-c", "key.ctx", "-s", "rsaes", "-o", "cek.bin", "cek.enc"],
    );
    assert_eq!(fs::read(fx.path("cek.bin")).unwrap(), cek);
}

/// Whatever listens on the TPM's bus (here: the swtpm socket) does not see what the key
/// decrypts: the session encrypts the response.
#[test]
fn a_decrypted_key_never_crosses_the_wire_in_clear() {
    let _serial = one_tpm_test_at_a_time();
    let Some(fx) = Fixture::new() else { return };
    let tcti = fx.tpm.tcti();
    let upstream: u16 = tcti.rsplit_once("port=").unwrap().1.parse().unwrap();
    let (port, seen) = swtpm::recording_proxy(upstream);
    let via_proxy = format!("swtpm:host=127.0.0.1,port={port}");
    let sealer = TpmSealer::open_or_create(&via_proxy, &fx.key_path()).unwrap();
    let key = sealer.create_rsa_key(PURPOSE).unwrap();
    let cek = random_bytes::<32>();
    let block = encrypt_aws_lc(&key.public_key_der, &cek);
    assert_eq!(
        &sealer.rsa_decrypt(PURPOSE, &key.blob, &block).unwrap()[..],
        &cek[..]
    );
    let signature = sealer.rsa_sign_sha256(PURPOSE, &key.blob, b"jwt").unwrap();

    let seen = seen.lock().unwrap();
    // The recording works: the signature comes back in clear (it is no secret, and a
    // signature is not a parameter a session can encrypt), and so does the public area.
    assert!(seen.windows(256).any(|w| w == &signature[..]));
    let (_, [_, public, _]) = blob_fields(&key.blob);
    let public = &key.blob[public.start + 2..public.end];
    assert!(seen.windows(public.len()).any(|w| w == public));
    for chunk in cek.windows(8) {
        assert!(
            !seen.windows(8).any(|w| w == chunk),
            "8 bytes of the decrypted key crossed the wire in clear"
        );
    }
    // The block itself travels encrypted too (the session encrypts the command's first
    // parameter).
    assert!(!seen.windows(32).any(|w| w == &block[..32]));
}

/// Usable as the daemon holds it: a trait object shared across threads, each operation on its
/// own TPM connection.
#[test]
fn concurrent_operations_each_get_the_tpm() {
    let _serial = one_tpm_test_at_a_time();
    let Some(fx) = Fixture::new() else { return };
    let sealer: Arc<dyn Sealer> = Arc::new(fx.open());
    let key = sealer.create_rsa_key(PURPOSE).unwrap();
    let threads: Vec<_> = (0..3u8)
        .map(|i| {
            let sealer = Arc::clone(&sealer);
            let key = key.clone();
            std::thread::spawn(move || {
                for j in 0..3u8 {
                    let message = [i, j];
                    let signature = sealer
                        .rsa_sign_sha256(PURPOSE, &key.blob, &message)
                        .unwrap();
                    assert!(verifies_aws_lc(&key.public_key_der, &message, &signature));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}
