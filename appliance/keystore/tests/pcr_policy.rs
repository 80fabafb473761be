//! Binding the TPM-sealed data key to platform state (a PCR policy) on swtpm: the key opens
//! while the PCRs hold the values it was sealed under, is refused with a clear error (and the
//! key file left alone) once one is extended, and comes back through the recovery path: the
//! data key from a backup sealed again under the current state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/pcr.rs"]
mod pcr;
#[path = "support/swtpm.rs"]
mod swtpm;

use std::fs;

use mdm_keystore::{KeystoreError, SealedBlob, Sealer, TpmSealer};
use pcr::extend_pcr7;

#[test]
fn a_pcr_bound_key_opens_until_the_pcr_changes_and_is_recovered_from_its_backup_copy() {
    swtpm::quiet_tss();
    let dir = tempfile::tempdir().unwrap();
    let Some(tpm) = swtpm::Swtpm::start(&dir.path().join("tpm")) else {
        return;
    };
    let tcti = tpm.tcti();
    let path = dir.path().join("keystore-tpm.key");

    // Created unbound, then bound to PCR 7 on the next open: the file is sealed again.
    let sealer = TpmSealer::open_or_create(&tcti, &path).unwrap();
    let blob = sealer.seal("ca-key", b"bound secret").unwrap().to_bytes();
    assert!(sealer.pcrs().is_empty());
    let unbound_file = fs::read(&path).unwrap();
    assert!(unbound_file.starts_with(b"MDMTKEY1"));
    drop(sealer);
    let sealer = TpmSealer::open_with_pcrs(&tcti, &path, Some(&[7])).unwrap();
    assert_eq!(sealer.pcrs(), &[7]);
    assert_eq!(sealer.describe().tpm.unwrap().policy_pcrs, vec![7]);
    let bound_file = fs::read(&path).unwrap();
    assert!(bound_file.starts_with(b"MDMTKEY2"));
    let backup_copy = sealer.export_data_key();
    let key_id = sealer.key_id();
    drop(sealer);

    // Opening without asking for a policy keeps the file's; the secret opens.
    let sealer = TpmSealer::open_or_create(&tcti, &path).unwrap();
    assert_eq!(sealer.pcrs(), &[7]);
    let opened = sealer
        .unseal("ca-key", &SealedBlob::from_bytes(&blob).unwrap())
        .unwrap();
    assert_eq!(&opened[..], b"bound secret");
    drop(sealer);
    assert_eq!(fs::read(&path).unwrap(), bound_file, "not rewritten");

    // The platform state changes: the TPM refuses, the error says what happened and how to
    // recover, and the key file is left exactly as it was.
    extend_pcr7(&tcti);
    for pcrs in [None, Some(&[7u8][..]), Some(&[][..])] {
        match TpmSealer::open_with_pcrs(&tcti, &path, pcrs) {
            Err(e @ KeystoreError::TpmPolicyMismatch { .. }) => {
                let text = e.to_string();
                assert!(text.contains("PCR 7"), "{text}");
                assert!(text.contains("mdmd restore --key-only"), "{text}");
            }
            other => panic!("{pcrs:?}: {other:?}"),
        }
        assert_eq!(fs::read(&path).unwrap(), bound_file);
    }

    // Recovery: the data key from the backup, sealed again (replacing the refused file) under
    // the current state, opens the old secret.
    let recovered_path = dir.path().join("recovered.key");
    let recovered = TpmSealer::create_with_data_key(&tcti, &recovered_path, backup_copy).unwrap();
    assert_eq!(recovered.key_id(), key_id);
    drop(recovered);
    fs::rename(&recovered_path, &path).unwrap();
    let sealer = TpmSealer::open_with_pcrs(&tcti, &path, Some(&[7])).unwrap();
    let opened = sealer
        .unseal("ca-key", &SealedBlob::from_bytes(&blob).unwrap())
        .unwrap();
    assert_eq!(&opened[..], b"bound secret");

    // A rotation keeps the binding.
    sealer.begin_rotation().unwrap();
    sealer.finish_rotation().unwrap();
    drop(sealer);
    assert!(fs::read(&path).unwrap().starts_with(b"MDMTKEY2"));
    extend_pcr7(&tcti);
    assert!(matches!(
        TpmSealer::open_or_create(&tcti, &path),
        Err(KeystoreError::TpmPolicyMismatch { .. })
    ));
}

#[test]
fn the_binding_is_removed_on_a_matching_platform_and_bad_pcrs_are_refused() {
    swtpm::quiet_tss();
    let dir = tempfile::tempdir().unwrap();
    let Some(tpm) = swtpm::Swtpm::start(&dir.path().join("tpm")) else {
        return;
    };
    let tcti = tpm.tcti();
    let path = dir.path().join("keystore-tpm.key");
    let sealer = TpmSealer::open_with_pcrs(&tcti, &path, Some(&[0, 7])).unwrap();
    assert_eq!(sealer.pcrs(), &[0, 7]);
    drop(sealer);
    // Unbinding needs the PCRs to match (the key is unsealed under its policy first); on a
    // matching platform, an empty list seals it again without a policy.
    let sealer = TpmSealer::open_with_pcrs(&tcti, &path, Some(&[])).unwrap();
    assert!(sealer.pcrs().is_empty());
    drop(sealer);
    assert!(fs::read(&path).unwrap().starts_with(b"MDMTKEY1"));
    match TpmSealer::open_with_pcrs(&tcti, &path, Some(&[24])) {
        Err(KeystoreError::PcrPolicyInvalid { reason }) => assert!(reason.contains("24")),
        other => panic!("{other:?}"),
    }
}
