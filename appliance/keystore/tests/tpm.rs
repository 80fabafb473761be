//! The TPM sealer against a real software TPM (swtpm) and real files in temporary directories.
//!
//! Each test starts its own swtpm on free loopback ports; they are skipped (with a message)
//! only when swtpm is not installed. Where tpm2-tools are installed, they check the key file
//! independently of this crate.

// This whole file is test code, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/swtpm.rs"]
mod swtpm;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::digest::{digest, SHA256};
use mdm_keystore::{Backend, KeystoreError, SealedBlob, Sealer, SoftSealer, TpmSealer};
use swtpm::{quiet_tss, Swtpm};

/// A temporary data directory with its own TPM.
struct Fixture {
    dir: tempfile::TempDir,
    tpm: Swtpm,
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

    fn open(&self) -> Result<TpmSealer, KeystoreError> {
        TpmSealer::open_or_create(&self.tpm.tcti(), &self.key_path())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn have_tpm2_tools() -> bool {
    let found = Command::new("tpm2_createprimary")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        eprintln!("tpm2-tools not installed (scripts/install-test-deps installs them); skipping");
    }
    found
}

/// Runs a tpm2-tools command against the fixture's TPM.
fn tpm2(fx: &Fixture, tool: &str, args: &[&str]) -> Output {
    fx.tpm.tool(fx.dir.path(), tool, args)
}

fn tpm2_ok(fx: &Fixture, tool: &str, args: &[&str]) -> String {
    fx.tpm.tool_ok(fx.dir.path(), tool, args)
}

#[test]
fn seals_and_unseals_secrets_of_any_size() {
    let Some(fx) = Fixture::new() else { return };
    let sealer = fx.open().unwrap();
    assert_eq!(sealer.backend(), Backend::Tpm);
    assert_eq!(sealer.path(), fx.key_path());
    assert_eq!(sealer.tcti(), fx.tpm.tcti());
    assert_eq!(sealer.storage_key_name().len(), 34, "SHA-256 name");
    assert_eq!(&sealer.storage_key_name()[..2], &[0x00, 0x0b]);
    for len in [0usize, 1, 16, 1218, 64 * 1024] {
        let secret: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let blob = sealer.seal("ca-key", &secret).unwrap();
        assert_eq!(blob.backend(), Backend::Tpm);
        assert_eq!(blob.key_id(), sealer.key_id());
        assert_eq!(blob.nonce().len(), 12);
        assert_eq!(blob.ciphertext().len(), len + 16, "GCM tag");
        if len >= 16 {
            assert!(
                !blob.to_bytes().windows(16).any(|w| w == &secret[..16]),
                "plaintext visible in blob"
            );
        }
        let back = SealedBlob::from_bytes(&blob.to_bytes()).unwrap();
        assert_eq!(*sealer.unseal("ca-key", &back).unwrap(), secret);
    }

    // The key file is private and alone: no staging files left behind.
    assert_eq!(mode(&fx.key_path()), 0o600);
    let names = file_names(fx.dir.path());
    assert!(
        names.contains(&"keystore-tpm.key".to_owned())
            && !names.iter().any(|n| n.ends_with(".tmp")),
        "{names:?}"
    );

    // Usable as the daemon holds it: a trait object shared across threads.
    let shared: Arc<dyn Sealer> = Arc::new(sealer);
    let blob = shared.seal("bootstrap-token", b"tok").unwrap();
    let other = Arc::clone(&shared);
    let back = std::thread::spawn(move || other.unseal("bootstrap-token", &blob).unwrap().to_vec())
        .join()
        .unwrap();
    assert_eq!(back, b"tok");
}

#[test]
fn purpose_is_bound() {
    let Some(fx) = Fixture::new() else { return };
    let sealer = fx.open().unwrap();
    let blob = sealer
        .seal("ca-key", b"-----BEGIN PRIVATE KEY-----")
        .unwrap();
    let err = sealer.unseal("tls-key", &blob).unwrap_err();
    assert!(
        matches!(&err, KeystoreError::WrongPurpose { expected, found }
            if expected == "tls-key" && found == "ca-key"),
        "{err}"
    );
    // Relabelling does not help: the purpose is authenticated, not just stored.
    let relabelled = SealedBlob::new(
        Backend::Tpm,
        "tls-key",
        blob.key_id().to_vec(),
        blob.nonce().to_vec(),
        blob.ciphertext().to_vec(),
    )
    .unwrap();
    assert!(matches!(
        sealer.unseal("tls-key", &relabelled),
        Err(KeystoreError::Unauthentic { .. })
    ));
}

#[test]
fn a_new_instance_unseals_old_blobs_and_leaves_the_key_file_alone() {
    let Some(fx) = Fixture::new() else { return };
    let first = fx.open().unwrap();
    let blob = first
        .seal("abm-token", b"AT_0123456789")
        .unwrap()
        .to_bytes();
    let (key_id, storage) = (first.key_id().to_vec(), first.storage_key_name().to_vec());
    drop(first);
    let file = fs::read(fx.key_path()).unwrap();

    for _ in 0..2 {
        let again = fx.open().unwrap();
        assert_eq!(again.key_id(), key_id);
        assert_eq!(again.storage_key_name(), storage);
        let back = again
            .unseal("abm-token", &SealedBlob::from_bytes(&blob).unwrap())
            .unwrap();
        assert_eq!(&back[..], b"AT_0123456789");
    }
    assert_eq!(
        fs::read(fx.key_path()).unwrap(),
        file,
        "reopening rewrote the key file"
    );
}

#[test]
fn the_same_tpm_after_a_restart_still_unseals() {
    let Some(mut fx) = Fixture::new() else { return };
    let sealer = fx.open().unwrap();
    let blob = sealer.seal("push-key", b"push secret").unwrap();
    let storage = sealer.storage_key_name().to_vec();
    drop(sealer);

    let dir = fx.dir;
    let tpm = fx.tpm.restart();
    fx = Fixture { dir, tpm };
    let reopened = fx.open().unwrap();
    assert_eq!(
        reopened.storage_key_name(),
        storage,
        "the storage key is derived again, identical, from the persistent owner seed"
    );
    assert_eq!(
        &reopened.unseal("push-key", &blob).unwrap()[..],
        b"push secret"
    );
}

#[test]
fn another_tpm_cannot_open_the_key_file() {
    let Some(a) = Fixture::new() else { return };
    let Some(b) = Fixture::new() else { return };
    let sealer_a = a.open().unwrap();
    let blob_a = sealer_a.seal("ca-key", b"appliance A").unwrap();

    // A's data directory copied to an appliance with another TPM.
    fs::copy(a.key_path(), b.key_path()).unwrap();
    let copied = fs::read(b.key_path()).unwrap();
    let err = b.open().unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, KeystoreError::TpmKeyFileFromOtherTpm { path, file_storage_key, tpm_storage_key }
            if path == &b.key_path()
                && *file_storage_key == hex(sealer_a.storage_key_name())
                && file_storage_key != tpm_storage_key),
        "{text}"
    );
    assert!(text.contains("another TPM"), "{text}");
    assert!(text.contains("left untouched"), "{text}");
    assert_eq!(
        fs::read(b.key_path()).unwrap(),
        copied,
        "the file was modified"
    );

    // B, with its own key file, makes its own key, which cannot open A's blobs.
    fs::remove_file(b.key_path()).unwrap();
    let sealer_b = b.open().unwrap();
    assert_ne!(sealer_b.storage_key_name(), sealer_a.storage_key_name());
    assert_ne!(sealer_b.key_id(), sealer_a.key_id());
    assert!(matches!(
        sealer_b.unseal("ca-key", &blob_a),
        Err(KeystoreError::WrongKey { .. })
    ));
}

#[test]
fn soft_and_tpm_blobs_are_refused_by_each_other() {
    let Some(fx) = Fixture::new() else { return };
    let tpm = fx.open().unwrap();
    let soft = SoftSealer::open_or_create(&fx.dir.path().join("keystore-soft.key")).unwrap();

    let soft_blob = soft.seal("ca-key", b"soft secret").unwrap();
    let err = tpm.unseal("ca-key", &soft_blob).unwrap_err();
    assert!(
        matches!(
            err,
            KeystoreError::WrongBackend {
                blob: Backend::Software,
                sealer: Backend::Tpm
            }
        ),
        "{err}"
    );
    let tpm_blob = tpm.seal("ca-key", b"tpm secret").unwrap();
    let err = soft.unseal("ca-key", &tpm_blob).unwrap_err();
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

    // The key files are not interchangeable either, and a refused file is left alone.
    let soft_file = fs::read(fx.dir.path().join("keystore-soft.key")).unwrap();
    let err = TpmSealer::open_or_create(&fx.tpm.tcti(), &fx.dir.path().join("keystore-soft.key"))
        .unwrap_err();
    assert!(
        matches!(err, KeystoreError::KeyFileCorrupt { .. }) && err.to_string().contains("marker"),
        "{err}"
    );
    assert_eq!(
        fs::read(fx.dir.path().join("keystore-soft.key")).unwrap(),
        soft_file
    );
    let err = SoftSealer::open_or_create(&fx.key_path()).unwrap_err();
    assert!(matches!(err, KeystoreError::KeyFileCorrupt { .. }), "{err}");
}

/// tpm2-tools, not this crate, derive the storage key from the documented template, load the
/// key file's sealed object under it and unseal it: the result is the data key (its id
/// matches), it appears nowhere in the key file, and it decrypts a blob laid out as
/// documented.
#[test]
fn the_key_file_holds_the_data_key_only_sealed() {
    let Some(fx) = Fixture::new() else { return };
    if !have_tpm2_tools() {
        return;
    }
    let sealer = fx.open().unwrap();
    let blob = sealer.seal("scep-ra-key", b"cross-checked secret").unwrap();
    let file = fs::read(fx.key_path()).unwrap();

    // MDMTKEY1 | TPM2B_NAME | TPM2B_PUBLIC | TPM2B_PRIVATE
    assert_eq!(&file[..8], b"MDMTKEY1");
    let mut at = 8;
    let mut fields = Vec::new();
    for _ in 0..3 {
        let len = usize::from(u16::from_be_bytes([file[at], file[at + 1]]));
        fields.push(&file[at..at + 2 + len]);
        at += 2 + len;
    }
    assert_eq!(at, file.len());
    assert_eq!(&fields[0][2..], sealer.storage_key_name());
    fs::write(fx.dir.path().join("sealed.pub"), fields[1]).unwrap();
    fs::write(fx.dir.path().join("sealed.priv"), fields[2]).unwrap();

    tpm2_ok(&fx, "tpm2_createprimary", swtpm::STORAGE_PRIMARY);
    let public = tpm2_ok(&fx, "tpm2_readpublic", &["-c", "primary.ctx"]);
    assert!(
        public
            .lines()
            .any(|l| l == format!("name: {}", hex(sealer.storage_key_name()))),
        "tpm2-tools derived another storage key than {}:\n{public}",
        hex(sealer.storage_key_name())
    );
    tpm2_ok(
        &fx,
        "tpm2_load",
        &[
            "-C",
            "primary.ctx",
            "-u",
            "sealed.pub",
            "-r",
            "sealed.priv",
            "-c",
            "sealed.ctx",
        ],
    );
    tpm2_ok(&fx, "tpm2_unseal", &["-c", "sealed.ctx", "-o", "dek.bin"]);
    let dek = fs::read(fx.dir.path().join("dek.bin")).unwrap();
    assert_eq!(dek.len(), 32);

    let mut id_input = b"mdm-keystore tpm key id v1\0".to_vec();
    id_input.extend_from_slice(&dek);
    assert_eq!(&digest(&SHA256, &id_input).as_ref()[..8], sealer.key_id());

    for window in [4usize, 8, 32] {
        for chunk in dek.windows(window) {
            assert!(
                !file.windows(window).any(|w| w == chunk),
                "{window} bytes of the data key are in the key file in clear"
            );
        }
    }

    // "MDKS" | version | backend | purpose | key id (the AAD), then nonce | ciphertext.
    let bytes = blob.to_bytes();
    assert_eq!(&bytes[..6], b"MDKS\x01\x02");
    let mut i = 6;
    i += 1 + usize::from(bytes[i]);
    i += 1 + usize::from(bytes[i]);
    let aad = bytes[..i].to_vec();
    let nonce = &bytes[i + 1..i + 1 + usize::from(bytes[i])];
    let mut ciphertext = bytes[i + 1 + nonce.len()..].to_vec();
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &dek).unwrap());
    let plain = key
        .open_in_place(
            Nonce::try_assume_unique_for_key(nonce).unwrap(),
            Aad::from(aad),
            &mut ciphertext,
        )
        .unwrap();
    assert_eq!(plain, b"cross-checked secret");
}

/// Whatever listens on the TPM's bus (here: the swtpm socket) sees the data key neither when
/// it is sealed nor when it is unsealed: the session encrypts it.
#[test]
fn the_data_key_never_crosses_the_wire_in_clear() {
    let Some(fx) = Fixture::new() else { return };
    if !have_tpm2_tools() {
        return;
    }
    let tcti = fx.tpm.tcti();
    let upstream: u16 = tcti.rsplit_once("port=").unwrap().1.parse().unwrap();
    let (port, seen) = swtpm::recording_proxy(upstream);
    let via_proxy = format!("swtpm:host=127.0.0.1,port={port}");
    let created = TpmSealer::open_or_create(&via_proxy, &fx.key_path()).unwrap();
    drop(created);
    let reopened = TpmSealer::open_or_create(&via_proxy, &fx.key_path()).unwrap();
    drop(reopened);

    // The data key, unsealed independently (tpm2-tools, straight to the TPM).
    let file = fs::read(fx.key_path()).unwrap();
    let name_len = usize::from(u16::from_be_bytes([file[8], file[9]]));
    let at = 10 + name_len;
    let pub_len = usize::from(u16::from_be_bytes([file[at], file[at + 1]]));
    let (public, private) = file[at..].split_at(2 + pub_len);
    fs::write(fx.dir.path().join("sealed.pub"), public).unwrap();
    fs::write(fx.dir.path().join("sealed.priv"), private).unwrap();
    tpm2_ok(&fx, "tpm2_createprimary", swtpm::STORAGE_PRIMARY);
    tpm2_ok(
        &fx,
        "tpm2_load",
        &[
            "-C",
            "primary.ctx",
            "-u",
            "sealed.pub",
            "-r",
            "sealed.priv",
            "-c",
            "sealed.ctx",
        ],
    );
    tpm2_ok(&fx, "tpm2_unseal", &["-c", "sealed.ctx", "-o", "dek.bin"]);
    let dek = fs::read(fx.dir.path().join("dek.bin")).unwrap();
    assert_eq!(dek.len(), 32);

    let seen = seen.lock().unwrap();
    // The recording works: the sealed object's public area crossed it in clear (Create's
    // response, both Loads). Its private area, though encrypted by the TPM anyway, did not:
    // the session encrypts the first parameter of every command and response.
    assert!(
        seen.windows(public.len() - 2).any(|w| w == &public[2..]),
        "the proxy saw {} bytes but not the sealed object",
        seen.len()
    );
    for chunk in dek.windows(8) {
        assert!(
            !seen.windows(8).any(|w| w == chunk),
            "8 bytes of the data key crossed the wire in clear"
        );
    }
    assert!(!seen.windows(private.len() - 2).any(|w| w == &private[2..]));
}

#[test]
fn a_modified_or_misplaced_key_file_is_reported_and_left_alone() {
    let Some(fx) = Fixture::new() else { return };
    drop(fx.open().unwrap());
    let good = fs::read(fx.key_path()).unwrap();
    let write = |bytes: &[u8]| {
        fs::write(fx.key_path(), bytes).unwrap();
        fs::set_permissions(fx.key_path(), fs::Permissions::from_mode(0o600)).unwrap();
    };

    // One bit of the sealed private area (the last field) flipped: the TPM's integrity check.
    let mut flipped = good.clone();
    let last = flipped.len() - 5;
    flipped[last] ^= 0x01;
    write(&flipped);
    let err = fx.open().unwrap_err();
    assert!(
        matches!(err, KeystoreError::KeyFileCorrupt { .. })
            && err.to_string().contains("TPM_RC_INTEGRITY"),
        "{err}"
    );
    assert_eq!(fs::read(fx.key_path()).unwrap(), flipped);

    write(&good[..good.len() - 1]);
    let err = fx.open().unwrap_err();
    assert!(
        matches!(err, KeystoreError::KeyFileCorrupt { .. })
            && err.to_string().contains("truncated"),
        "{err}"
    );

    write(&good);
    fs::set_permissions(fx.key_path(), fs::Permissions::from_mode(0o644)).unwrap();
    let err = fx.open().unwrap_err();
    assert!(
        matches!(err, KeystoreError::KeyFilePermissions { mode: 0o644, .. }),
        "{err}"
    );
    fs::set_permissions(fx.key_path(), fs::Permissions::from_mode(0o600)).unwrap();
    fx.open().unwrap();
    assert_eq!(fs::read(fx.key_path()).unwrap(), good);
}

#[test]
fn an_owner_password_is_reported_and_nothing_is_created() {
    let Some(fx) = Fixture::new() else { return };
    if !have_tpm2_tools() {
        return;
    }
    tpm2_ok(&fx, "tpm2_changeauth", &["-c", "owner", "owner-secret"]);
    let err = fx.open().unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            KeystoreError::TpmAuthorization {
                code_name: "TPM_RC_BAD_AUTH",
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("tpm2_changeauth"), "{text}");
    assert!(!fx.key_path().exists());

    // With the password removed as the message says, the keystore opens.
    tpm2_ok(
        &fx,
        "tpm2_changeauth",
        &["-c", "owner", "-p", "owner-secret"],
    );
    fx.open().unwrap();
}

/// Someone else's wrong passwords put the TPM into dictionary-attack lockout; the keystore's
/// objects (empty password, noDA) keep working.
#[test]
fn a_lockout_caused_by_others_does_not_stop_the_keystore() {
    let Some(fx) = Fixture::new() else { return };
    if !have_tpm2_tools() {
        return;
    }
    let existing = fx.open().unwrap();
    let blob = existing.seal("ca-key", b"still here").unwrap();
    drop(existing);

    tpm2_ok(
        &fx,
        "tpm2_dictionarylockout",
        &["-s", "-n", "1", "-t", "600", "-l", "600"],
    );
    tpm2_ok(
        &fx,
        "tpm2_createprimary",
        &[
            "-C",
            "o",
            "-G",
            "ecc256:aes128cfb",
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt",
            "-p",
            "right",
            "-c",
            "da.ctx",
        ],
    );
    fs::write(fx.dir.path().join("data"), b"x").unwrap();
    for _ in 0..2 {
        let out = tpm2(
            &fx,
            "tpm2_create",
            &[
                "-C", "da.ctx", "-P", "wrong", "-i", "data", "-u", "x.pub", "-r", "x.priv",
            ],
        );
        assert!(!out.status.success());
    }
    // Now even the right password is refused: the TPM is in lockout.
    let out = tpm2(
        &fx,
        "tpm2_create",
        &[
            "-C", "da.ctx", "-P", "right", "-i", "data", "-u", "x.pub", "-r", "x.priv",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("0x921"),
        "{stderr}"
    );

    let reopened = fx.open().unwrap();
    assert_eq!(
        &reopened.unseal("ca-key", &blob).unwrap()[..],
        b"still here"
    );
    fs::remove_file(fx.key_path()).unwrap();
    fx.open().unwrap();
}

#[test]
fn unreachable_tpms_are_reported_with_their_tcti_library() {
    quiet_tss();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("keystore-tpm.key");

    let err = TpmSealer::open_or_create("carrier-pigeon:host=loft", &key).unwrap_err();
    assert!(
        matches!(err, KeystoreError::TpmInterfaceInvalid { .. })
            && err.to_string().contains("device:/dev/tpmrm0"),
        "{err}"
    );

    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err =
        TpmSealer::open_or_create(&format!("swtpm:host=127.0.0.1,port={port}"), &key).unwrap_err();
    assert!(
        matches!(err, KeystoreError::TpmUnavailable { .. })
            && err.to_string().contains("libtss2-tcti-swtpm.so.0"),
        "{err}"
    );

    // A TCTI whose library is not installed (tpm2-abrmd is not part of the appliance), when
    // the dynamic linker's cache can tell.
    let libraries = ["ldconfig", "/sbin/ldconfig"].iter().find_map(|cmd| {
        let out = Command::new(cmd).arg("-p").output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    if libraries.is_some_and(|l| !l.contains("libtss2-tcti-tabrmd.so.0")) {
        let err = TpmSealer::open_or_create("tabrmd:", &key).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, KeystoreError::TpmUnavailable { .. })
                && text.contains("could not be loaded")
                && text.contains("libtss2-tcti-tabrmd.so.0"),
            "{text}"
        );
    }

    let missing = dir.path().join("tpmrm0");
    let err =
        TpmSealer::open_or_create(&format!("device:{}", missing.display()), &key).unwrap_err();
    assert!(
        matches!(err, KeystoreError::TpmUnavailable { .. })
            && err.to_string().contains("libtss2-tcti-device.so.0"),
        "{err}"
    );
    assert!(!key.exists(), "no key file without a TPM");
}

/// Cheapest backup KDF parameters accepted: these tests are about the TPM, not Argon2.
const FAST_KDF: mdm_keystore::KdfParams = mdm_keystore::KdfParams {
    memory_kib: mdm_keystore::KdfParams::MIN_MEMORY_KIB,
    passes: 1,
    lanes: 1,
};

#[test]
fn the_data_key_moves_to_another_tpm() {
    let Some(a) = Fixture::new() else { return };
    let Some(b) = Fixture::new() else { return };
    let sealer_a = a.open().unwrap();
    let blob_a = sealer_a.seal("ca-key", b"appliance A").unwrap();

    let sealer_b =
        TpmSealer::create_with_data_key(&b.tpm.tcti(), &b.key_path(), sealer_a.export_data_key())
            .unwrap();
    assert_eq!(sealer_b.key_id(), sealer_a.key_id(), "the same data key");
    assert_ne!(sealer_b.storage_key_name(), sealer_a.storage_key_name());
    assert_eq!(sealer_b.path(), b.key_path());
    assert_eq!(mode(&b.key_path()), 0o600);
    assert_eq!(
        &sealer_b.unseal("ca-key", &blob_a).unwrap()[..],
        b"appliance A"
    );
    let blob_b = sealer_b.seal("tls-key", b"sealed on B").unwrap();
    assert_eq!(
        &sealer_a.unseal("tls-key", &blob_b).unwrap()[..],
        b"sealed on B"
    );

    // B's key file holds the key only sealed, by B's TPM, and B opens it again.
    let key = sealer_a.export_data_key();
    let file_b = fs::read(b.key_path()).unwrap();
    assert!(file_b.starts_with(b"MDMTKEY1"));
    assert!(!key.windows(8).any(|k| file_b.windows(8).any(|f| f == k)));
    drop(sealer_b);
    let reopened = b.open().unwrap();
    assert_eq!(reopened.key_id(), sealer_a.key_id());
    assert_eq!(
        &reopened.unseal("ca-key", &blob_a).unwrap()[..],
        b"appliance A"
    );

    // Key files still belong to their TPM: A's is refused on B and B's on A.
    let a_on_b = b.dir.path().join("from-a.key");
    fs::copy(a.key_path(), &a_on_b).unwrap();
    assert!(matches!(
        TpmSealer::open_or_create(&b.tpm.tcti(), &a_on_b),
        Err(KeystoreError::TpmKeyFileFromOtherTpm { .. })
    ));
    let b_on_a = a.dir.path().join("from-b.key");
    fs::copy(b.key_path(), &b_on_a).unwrap();
    assert!(matches!(
        TpmSealer::open_or_create(&a.tpm.tcti(), &b_on_a),
        Err(KeystoreError::TpmKeyFileFromOtherTpm { .. })
    ));

    // An existing file is never replaced, whatever it holds: B's own, or A's copy.
    for existing in [b.key_path(), a_on_b] {
        let before = fs::read(&existing).unwrap();
        let err =
            TpmSealer::create_with_data_key(&b.tpm.tcti(), &existing, sealer_a.export_data_key())
                .unwrap_err();
        assert!(
            matches!(&err, KeystoreError::KeyFileExists { path } if *path == existing),
            "{err}"
        );
        assert_eq!(fs::read(&existing).unwrap(), before);
    }
    let names = file_names(b.dir.path());
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn a_tpm_appliance_is_restored_onto_another_tpm_from_its_backup() {
    let Some(a) = Fixture::new() else { return };
    let Some(b) = Fixture::new() else { return };
    let sealer_a = a.open().unwrap();
    // A stand-in database: length-prefixed sealed blobs, stored as they are.
    let database: Vec<u8> = ["ca-key", "push-key"]
        .iter()
        .flat_map(|p| {
            let blob = sealer_a.seal(p, p.as_bytes()).unwrap().to_bytes();
            let mut record = (blob.len() as u32).to_be_bytes().to_vec();
            record.extend(blob);
            record
        })
        .collect();

    let meta = serde_json::json!({"created_at": "2025-03-01T10:00:00Z"});
    let pass = "restore me onto new hardware";
    let mut w =
        mdm_keystore::BackupWriter::with_kdf_params(Vec::new(), pass, &meta, FAST_KDF).unwrap();
    w.add(
        "data-key",
        std::io::Cursor::new(&sealer_a.export_data_key()[..]),
    )
    .unwrap();
    w.add("mdm.redb", std::io::Cursor::new(&database)).unwrap();
    let backup = w.finish().unwrap();
    drop(sealer_a);
    // A is gone (replaced mainboard): only the backup and the passphrase are left.
    drop(a);

    let mut r = mdm_keystore::BackupReader::open(&backup[..])
        .unwrap()
        .unlock(pass)
        .unwrap();
    assert_eq!(r.next_entry().unwrap().unwrap().name, "data-key");
    let bytes = r.read_entry(mdm_keystore::DATA_KEY_LEN).unwrap();
    let mut key = mdm_keystore::Zeroizing::new([0u8; mdm_keystore::DATA_KEY_LEN]);
    key.copy_from_slice(&bytes);
    assert_eq!(r.next_entry().unwrap().unwrap().name, "mdm.redb");
    let mut restored_db = Vec::new();
    r.copy_entry_to(&mut restored_db).unwrap();
    assert_eq!(r.next_entry().unwrap(), None);

    let sealer_b = TpmSealer::create_with_data_key(&b.tpm.tcti(), &b.key_path(), key).unwrap();
    let mut rest = &restored_db[..];
    for purpose in ["ca-key", "push-key"] {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let blob = SealedBlob::from_bytes(&rest[4..4 + len]).unwrap();
        rest = &rest[4 + len..];
        assert_eq!(
            &sealer_b.unseal(purpose, &blob).unwrap()[..],
            purpose.as_bytes()
        );
    }
    assert!(rest.is_empty());
}

#[test]
fn a_restored_key_needs_a_reachable_tpm_and_leaves_nothing_behind() {
    quiet_tss();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("keystore-tpm.key");
    let soft = SoftSealer::open_or_create(&dir.path().join("soft.key")).unwrap();
    let err = TpmSealer::create_with_data_key("carrier-pigeon:", &key_path, soft.export_data_key())
        .unwrap_err();
    assert!(
        matches!(err, KeystoreError::TpmInterfaceInvalid { .. }),
        "{err}"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = TpmSealer::create_with_data_key(
        &format!("swtpm:host=127.0.0.1,port={port}"),
        &key_path,
        soft.export_data_key(),
    )
    .unwrap_err();
    assert!(matches!(err, KeystoreError::TpmUnavailable { .. }), "{err}");
    assert_eq!(file_names(dir.path()), ["soft.key"]);
}

#[test]
fn a_software_key_sealed_under_a_tpm_does_not_open_software_blobs() {
    // Blobs record their backend: moving a data key between backends does not carry the
    // blobs along (documented), and the refusal says why.
    let Some(fx) = Fixture::new() else { return };
    let soft = SoftSealer::open_or_create(&fx.dir.path().join("soft.key")).unwrap();
    let blob = soft.seal("ca-key", b"x").unwrap();
    let tpm =
        TpmSealer::create_with_data_key(&fx.tpm.tcti(), &fx.key_path(), soft.export_data_key())
            .unwrap();
    assert!(matches!(
        tpm.unseal("ca-key", &blob),
        Err(KeystoreError::WrongBackend { .. })
    ));
}
