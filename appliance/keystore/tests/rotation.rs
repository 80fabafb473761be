//! Data-key rotation on both backends, against real key files (and swtpm for the TPM one).
//!
//! The rotation protocol: `begin_rotation` adds a new current key to the key file (the old one
//! stays to open older blobs), the caller re-seals every stored blob with `reseal_blob`, and
//! `finish_rotation` leaves only the new key in the file. Each step is checked as a new
//! process would see it (a fresh sealer over the same key file), which is what a crash
//! between the steps leaves behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/swtpm.rs"]
mod swtpm;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mdm_keystore::{KeystoreError, SealedBlob, Sealer, SoftSealer, TpmSealer};

/// Runs the whole protocol on sealers opened by `open` over one key file.
fn rotate_and_check<S: Sealer>(key_file: &Path, open: impl Fn() -> S) {
    let sealer = open();
    let old_id = sealer.describe().key_id.unwrap();
    assert!(sealer.describe().previous_key_ids.is_empty());
    let old_blob = sealer.seal("ca-key", b"sealed before").unwrap().to_bytes();
    let old_file = fs::read(key_file).unwrap();

    // Step 1: a new current key; the old one stays in the file.
    sealer.begin_rotation().unwrap();
    let info = sealer.describe();
    let new_id = info.key_id.clone().unwrap();
    assert_ne!(new_id, old_id);
    assert_eq!(info.previous_key_ids, vec![old_id.clone()]);
    let new_blob = sealer.seal("tls-key", b"sealed during").unwrap();
    assert_eq!(hex(new_blob.key_id()), new_id);
    assert_ne!(
        fs::read(key_file).unwrap(),
        old_file,
        "the key file lists both keys"
    );
    assert_eq!(mode(key_file), 0o600);

    // A crash now: a new process opens both kinds of blob and sees the rotation under way.
    {
        let reopened = open();
        assert_eq!(reopened.describe().key_id.unwrap(), new_id);
        assert_eq!(reopened.describe().previous_key_ids, vec![old_id.clone()]);
        let old = SealedBlob::from_bytes(&old_blob).unwrap();
        assert_eq!(
            &reopened.unseal("ca-key", &old).unwrap()[..],
            b"sealed before"
        );
        assert_eq!(
            &reopened.unseal("tls-key", &new_blob).unwrap()[..],
            b"sealed during"
        );
        // Beginning again resumes: no third key.
        reopened.begin_rotation().unwrap();
        assert_eq!(reopened.describe().key_id.unwrap(), new_id);
        assert_eq!(reopened.describe().previous_key_ids.len(), 1);
    }

    // Step 2: re-seal. A blob under the current key is left as it is; the purpose is kept.
    let resealed = sealer.reseal_blob(&old_blob).unwrap().expect("re-sealed");
    let resealed = SealedBlob::from_bytes(&resealed).unwrap();
    assert_eq!(resealed.purpose(), "ca-key");
    assert_eq!(hex(resealed.key_id()), new_id);
    assert!(sealer.reseal_blob(&new_blob.to_bytes()).unwrap().is_none());
    // Not a blob at all, or a damaged one: an error, never a silent pass.
    assert!(matches!(
        sealer.reseal_blob(b"plain text"),
        Err(KeystoreError::NotASealedBlob)
    ));
    let mut damaged = old_blob.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    assert!(matches!(
        sealer.reseal_blob(&damaged),
        Err(KeystoreError::Unauthentic { .. })
    ));

    // Step 3: only the new key remains on disk; this process still opens the old blob.
    sealer.finish_rotation().unwrap();
    assert!(sealer.describe().previous_key_ids.is_empty());
    let old = SealedBlob::from_bytes(&old_blob).unwrap();
    assert_eq!(
        &sealer.unseal("ca-key", &old).unwrap()[..],
        b"sealed before"
    );
    sealer.finish_rotation().unwrap();

    let after = open();
    assert_eq!(after.describe().key_id.unwrap(), new_id);
    assert!(after.describe().previous_key_ids.is_empty());
    assert_eq!(
        &after.unseal("ca-key", &resealed).unwrap()[..],
        b"sealed before"
    );
    assert_eq!(
        &after.unseal("tls-key", &new_blob).unwrap()[..],
        b"sealed during"
    );
    match after.unseal("ca-key", &old) {
        Err(KeystoreError::WrongKey { blob_key_id, .. }) => assert_eq!(blob_key_id, old_id),
        other => panic!("a blob left under the removed key must not open: {other:?}"),
    }
    assert_eq!(mode(key_file), 0o600);
    let dir = key_file.parent().unwrap();
    let leftovers: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn the_software_key_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    rotate_and_check(&path, || SoftSealer::open_or_create(&path).unwrap());
    // Back to the one-key layout of a fresh file.
    assert_eq!(fs::read(&path).unwrap().len(), 8 + 32);
}

#[test]
fn a_damaged_ring_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let sealer = SoftSealer::open_or_create(&path).unwrap();
    sealer.begin_rotation().unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes.pop();
    fs::write(&path, &bytes).unwrap();
    match SoftSealer::open_or_create(&path) {
        Err(KeystoreError::KeyFileCorrupt { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_tpm_key_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tpm) = swtpm::Swtpm::start(&dir.path().join("tpm")) else {
        return;
    };
    let path = dir.path().join("keystore-tpm.key");
    let tcti = tpm.tcti();
    rotate_and_check(&path, || TpmSealer::open_or_create(&tcti, &path).unwrap());
}

#[test]
fn a_tpm_rotation_needs_the_tpm_and_changes_nothing_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tpm) = swtpm::Swtpm::start(&dir.path().join("tpm")) else {
        return;
    };
    let path = dir.path().join("keystore-tpm.key");
    let sealer = TpmSealer::open_or_create(&tpm.tcti(), &path).unwrap();
    let before = fs::read(&path).unwrap();
    let id = sealer.describe().key_id;
    tpm.stop();
    match sealer.begin_rotation() {
        Err(KeystoreError::TpmUnavailable { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read(&path).unwrap(), before, "key file untouched");
    assert_eq!(
        sealer.describe().key_id,
        id,
        "still sealing under the old key"
    );
    assert!(sealer.describe().previous_key_ids.is_empty());
}
