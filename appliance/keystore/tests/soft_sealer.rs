//! The software sealer against real files in temporary directories.

// This whole file is test code, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};

use mdm_keystore::{Backend, KeystoreError, SealedBlob, Sealer, SoftSealer};

fn key_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("master.key")
}

fn new_sealer() -> (tempfile::TempDir, SoftSealer) {
    let dir = tempfile::tempdir().unwrap();
    let sealer = SoftSealer::open_or_create(&key_path(&dir)).unwrap();
    (dir, sealer)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn round_trips_secrets_of_any_size() {
    let (_dir, sealer) = new_sealer();
    assert_eq!(sealer.backend(), Backend::Software);
    for len in [0usize, 1, 15, 16, 17, 1218, 64 * 1024] {
        let secret: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let blob = sealer.seal("ca-key", &secret).unwrap();
        assert_eq!(blob.backend(), Backend::Software);
        assert_eq!(blob.purpose(), "ca-key");
        assert_eq!(blob.key_id(), sealer.key_id());
        assert_eq!(blob.ciphertext().len(), len + 16, "GCM tag");
        if len >= 16 {
            assert!(
                !blob.to_bytes().windows(16).any(|w| w == &secret[..16]),
                "plaintext visible in blob"
            );
        }
        let stored = blob.to_bytes();
        let back = SealedBlob::from_bytes(&stored).unwrap();
        assert_eq!(*sealer.unseal("ca-key", &back).unwrap(), secret);
    }
}

#[test]
fn sealing_twice_gives_different_blobs() {
    let (_dir, sealer) = new_sealer();
    let a = sealer.seal("tls-key", b"same secret").unwrap();
    let b = sealer.seal("tls-key", b"same secret").unwrap();
    assert_ne!(a.nonce(), b.nonce());
    assert_ne!(a.ciphertext(), b.ciphertext());
}

#[test]
fn purpose_is_bound() {
    let (_dir, sealer) = new_sealer();
    let blob = sealer
        .seal("ca-key", b"-----BEGIN PRIVATE KEY-----")
        .unwrap();
    let err = sealer.unseal("tls-key", &blob).unwrap_err();
    assert!(
        matches!(&err, KeystoreError::WrongPurpose { expected, found }
            if expected == "tls-key" && found == "ca-key"),
        "{err}"
    );

    // Relabelling the blob does not help: the purpose is authenticated, not just stored.
    let relabelled = SealedBlob::new(
        Backend::Software,
        "tls-key",
        blob.key_id().to_vec(),
        blob.nonce().to_vec(),
        blob.ciphertext().to_vec(),
    )
    .unwrap();
    let err = sealer.unseal("tls-key", &relabelled).unwrap_err();
    assert!(matches!(err, KeystoreError::Unauthentic { .. }), "{err}");
}

#[test]
fn any_modified_byte_is_detected() {
    let (_dir, sealer) = new_sealer();
    let bytes = sealer
        .seal("scep-ra-key", b"secret material 1234")
        .unwrap()
        .to_bytes();
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80] {
            let mut tampered = bytes.clone();
            tampered[i] ^= flip;
            let result = SealedBlob::from_bytes(&tampered)
                .and_then(|blob| sealer.unseal("scep-ra-key", &blob));
            assert!(
                result.is_err(),
                "byte {i} flipped by {flip:#x} went unnoticed"
            );
        }
    }
    // Appending or dropping bytes of the ciphertext is caught as well.
    let mut longer = bytes.clone();
    longer.push(0);
    let blob = SealedBlob::from_bytes(&longer).unwrap();
    assert!(matches!(
        sealer.unseal("scep-ra-key", &blob),
        Err(KeystoreError::Unauthentic { .. })
    ));
    let blob = SealedBlob::from_bytes(&bytes[..bytes.len() - 1]).unwrap();
    assert!(sealer.unseal("scep-ra-key", &blob).is_err());
}

#[test]
fn key_file_is_created_private_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    let first = SoftSealer::open_or_create(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(fs::metadata(&path).unwrap().len(), 40);
    assert_eq!(first.path(), path);
    let blob = first
        .seal("abm-token", b"AT_0123456789")
        .unwrap()
        .to_bytes();
    drop(first);

    let second = SoftSealer::open_or_create(&path).unwrap();
    let back = second
        .unseal("abm-token", &SealedBlob::from_bytes(&blob).unwrap())
        .unwrap();
    assert_eq!(&back[..], b"AT_0123456789");

    // Only the key file is left behind: no staging files.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("master.key")]);
}

#[test]
fn refuses_key_files_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    let sealer = SoftSealer::open_or_create(&path).unwrap();
    let blob = sealer.seal("p", b"x").unwrap();
    drop(sealer);
    for bad in [0o644, 0o640, 0o604, 0o660, 0o602] {
        fs::set_permissions(&path, fs::Permissions::from_mode(bad)).unwrap();
        let err = SoftSealer::open_or_create(&path).unwrap_err();
        assert!(
            matches!(err, KeystoreError::KeyFilePermissions { mode, .. } if mode == bad),
            "{bad:o}: {err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    // The refusal did not replace the key: fixing the mode brings the same key back.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    let sealer = SoftSealer::open_or_create(&path).unwrap();
    assert_eq!(&sealer.unseal("p", &blob).unwrap()[..], b"x");
}

#[test]
fn blobs_from_one_key_fail_on_another() {
    let (_a_dir, a) = new_sealer();
    let (_b_dir, b) = new_sealer();
    assert_ne!(a.key_id(), b.key_id());
    let blob = a.seal("ca-key", b"secret").unwrap();
    let err = b.unseal("ca-key", &blob).unwrap_err();
    assert!(matches!(err, KeystoreError::WrongKey { .. }), "{err}");

    // Even when the blob claims the other key's id, the other key cannot open it.
    let forged = SealedBlob::new(
        Backend::Software,
        "ca-key",
        b.key_id().to_vec(),
        blob.nonce().to_vec(),
        blob.ciphertext().to_vec(),
    )
    .unwrap();
    assert!(matches!(
        b.unseal("ca-key", &forged),
        Err(KeystoreError::Unauthentic { .. })
    ));
}

#[test]
fn tpm_blobs_are_refused_by_the_soft_sealer() {
    let (_dir, sealer) = new_sealer();
    let blob = SealedBlob::new(
        Backend::Tpm,
        "ca-key",
        vec![0x81, 0, 0, 1],
        vec![],
        vec![1; 64],
    )
    .unwrap();
    let err = sealer.unseal("ca-key", &blob).unwrap_err();
    assert!(
        matches!(
            err,
            KeystoreError::WrongBackend {
                blob: Backend::Tpm,
                sealer: Backend::Software
            }
        ),
        "{err}"
    );
}

#[test]
fn invalid_purposes_are_refused() {
    let (_dir, sealer) = new_sealer();
    assert!(matches!(
        sealer.seal("", b"x"),
        Err(KeystoreError::InvalidPurpose { .. })
    ));
    assert!(matches!(
        sealer.seal("two words", b"x"),
        Err(KeystoreError::InvalidPurpose { .. })
    ));
}

#[test]
fn missing_parent_directory_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("master.key");
    let err = SoftSealer::open_or_create(&path).unwrap_err();
    assert!(matches!(err, KeystoreError::ParentMissing { .. }), "{err}");
    assert!(
        !path.parent().unwrap().exists(),
        "must not create directories"
    );
}

#[test]
fn corrupt_key_files_are_reported_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    let write = |bytes: &[u8]| {
        fs::write(&path, bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    };
    write(b"short");
    assert!(matches!(
        SoftSealer::open_or_create(&path),
        Err(KeystoreError::KeyFileCorrupt { .. })
    ));
    write(&[0u8; 40]);
    let err = SoftSealer::open_or_create(&path).unwrap_err();
    assert!(err.to_string().contains("marker"), "{err}");
    assert_eq!(
        fs::read(&path).unwrap(),
        vec![0u8; 40],
        "file must be left alone"
    );

    let dir2 = tempfile::tempdir().unwrap();
    let as_dir = key_path(&dir2);
    fs::create_dir(&as_dir).unwrap();
    fs::set_permissions(&as_dir, fs::Permissions::from_mode(0o700)).unwrap();
    assert!(matches!(
        SoftSealer::open_or_create(&as_dir),
        Err(KeystoreError::KeyFileCorrupt { .. })
    ));
}

#[test]
fn concurrent_creators_agree_on_one_key() {
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(key_path(&dir));
        let barrier = Arc::new(Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let path = Arc::clone(&path);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    SoftSealer::open_or_create(&path).unwrap().key_id().to_vec()
                })
            })
            .collect();
        let ids: Vec<Vec<u8>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

#[test]
fn debug_output_holds_no_key_material() {
    let (dir, sealer) = new_sealer();
    let file = fs::read(key_path(&dir)).unwrap();
    let key = &file[8..];
    let text = format!("{sealer:?}");
    let key_hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!text.contains(&key_hex[..16]), "{text}");
    assert!(!text.contains(&format!("{key:?}")), "{text}");
    assert!(text.contains("key_id"), "{text}");
}

#[test]
fn usable_as_a_trait_object_across_threads() {
    let (_dir, sealer) = new_sealer();
    let shared: Arc<dyn Sealer> = Arc::new(sealer);
    let blob = shared.seal("bootstrap-token", b"tok").unwrap();
    let other = Arc::clone(&shared);
    let back = std::thread::spawn(move || other.unseal("bootstrap-token", &blob).unwrap().to_vec())
        .join()
        .unwrap();
    assert_eq!(back, b"tok");
}

/// Decrypts a blob with an independent AES-GCM implementation (Python's `cryptography`),
/// reading the header exactly as the format documentation describes it. Skipped when python3
/// or the module is missing.
#[test]
fn blob_format_matches_its_documentation() {
    let probe = Command::new("python3")
        .args(["-c", "import cryptography.hazmat.primitives.ciphers.aead"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("python3 with `cryptography` not found; skipping the cross-check");
        return;
    }
    let (dir, sealer) = new_sealer();
    let blob_path = dir.path().join("blob.bin");
    fs::write(
        &blob_path,
        sealer
            .seal("push-key", b"cross-checked secret")
            .unwrap()
            .to_bytes(),
    )
    .unwrap();
    let script = r#"
import sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key_file = open(sys.argv[1], "rb").read()
assert key_file[:8] == b"MDMSKEY1" and len(key_file) == 40
blob = open(sys.argv[2], "rb").read()
assert blob[:4] == b"MDKS" and blob[4] == 1 and blob[5] == 1
i = 6
purpose = blob[i + 1 : i + 1 + blob[i]]; i += 1 + blob[i]
key_id = blob[i + 1 : i + 1 + blob[i]]; i += 1 + blob[i]
aad = blob[:i]
nonce = blob[i + 1 : i + 1 + blob[i]]; i += 1 + blob[i]
plain = AESGCM(key_file[8:]).decrypt(nonce, blob[i:], aad)
sys.stdout.write(purpose.decode() + "|" + key_id.hex() + "|" + plain.decode())
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(key_path(&dir))
        .arg(&blob_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_id: String = sealer.key_id().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("push-key|{key_id}|cross-checked secret")
    );
}
