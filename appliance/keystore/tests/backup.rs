//! Passphrase-encrypted backups through the public API, with real files in temporary
//! directories, and moving a software keystore's data key through one.

// This whole file is test code, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Cursor, Write};
use std::path::Path;
use std::process::Command;

use mdm_keystore::{
    BackupEntry, BackupReader, BackupWriter, KdfParams, KeystoreError, SealedBlob, Sealer,
    SoftSealer, DATA_KEY_LEN, MIN_PASSPHRASE_CHARS,
};

const PASS: &str = "correct horse battery staple";
/// The cheapest parameters accepted, for tests that derive many keys.
const FAST: KdfParams = KdfParams {
    memory_kib: KdfParams::MIN_MEMORY_KIB,
    passes: 1,
    lanes: 1,
};
/// What the format says about chunks of the backups this build writes.
const CHUNK: usize = 1 << 20;
const TAG: usize = 16;
const FIXED_HEADER: usize = 53;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn meta() -> serde_json::Value {
    serde_json::json!({"created_at": "2025-03-01T10:00:00Z", "version": "0.1.0", "schema": 4})
}

fn make(entries: &[(&str, &[u8])], params: KdfParams) -> Vec<u8> {
    let mut w = BackupWriter::with_kdf_params(Vec::new(), PASS, &meta(), params).unwrap();
    for (name, bytes) in entries {
        assert_eq!(w.add(name, Cursor::new(bytes)).unwrap(), bytes.len() as u64);
    }
    w.finish().unwrap()
}

/// Reads every entry into memory, as a restore would into temporary files.
fn read_all(file: &[u8], pass: &str) -> Result<Vec<(String, Vec<u8>)>, KeystoreError> {
    let mut b = BackupReader::open(file)?.unlock(pass)?;
    let mut out = Vec::new();
    while let Some(BackupEntry { name, len }) = b.next_entry()? {
        let mut bytes = Vec::new();
        assert_eq!(b.copy_entry_to(&mut bytes)?, len);
        out.push((name, bytes));
    }
    Ok(out)
}

fn header_len(file: &[u8]) -> usize {
    let meta_len = u32::from_be_bytes(file[FIXED_HEADER - 4..FIXED_HEADER].try_into().unwrap());
    FIXED_HEADER + meta_len as usize
}

#[test]
fn round_trip_through_files_with_a_multi_chunk_entry() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("mdm.redb");
    let database = data(CHUNK * 2 + CHUNK / 2 + 3, 1);
    fs::write(&db_path, &database).unwrap();
    let key = [0x42u8; 32];
    let notes = b"restored by the test".to_vec();

    let backup_path = dir.path().join("appliance.mdmbak");
    let out = BufWriter::new(File::create(&backup_path).unwrap());
    let mut w = BackupWriter::new(out, PASS, &meta()).unwrap();
    assert_eq!(w.add("data-key", Cursor::new(&key[..])).unwrap(), 32);
    assert_eq!(
        w.add("mdm.redb", File::open(&db_path).unwrap()).unwrap(),
        database.len() as u64
    );
    w.add_sized("notes", notes.len() as u64, &notes[..])
        .unwrap();
    w.add("empty", Cursor::new(&[][..])).unwrap();
    w.finish()
        .unwrap()
        .into_inner()
        .unwrap()
        .sync_all()
        .unwrap();

    let file = fs::read(&backup_path).unwrap();
    // Three entries of plaintext in 1 MiB chunks, the last one short: no plaintext visible.
    assert!(!file.windows(64).any(|w| w == &database[4096..4160]));
    // Per entry 10 bytes of framing and the name; 1 byte of end record.
    let plain = database.len() + 32 + notes.len() + 4 * 10 + "data-keymdm.redbnotesempty".len() + 1;
    assert_eq!(
        file.len() - header_len(&file),
        plain + (plain / CHUNK + 1) * TAG
    );

    let reader = BackupReader::open(BufReader::new(File::open(&backup_path).unwrap())).unwrap();
    assert_eq!(reader.meta(), &meta(), "shown before the passphrase");
    assert_eq!(reader.kdf_params(), KdfParams::RECOMMENDED);
    assert_eq!(
        KdfParams::RECOMMENDED,
        KdfParams {
            memory_kib: 65536,
            passes: 3,
            lanes: 1
        }
    );
    let mut b = reader.unlock(PASS).unwrap();
    assert_eq!(b.meta(), &meta());
    let entry = b.next_entry().unwrap().unwrap();
    assert_eq!(
        entry,
        BackupEntry {
            name: "data-key".into(),
            len: 32
        }
    );
    assert_eq!(&b.read_entry(DATA_KEY_LEN).unwrap()[..], &key);

    // Streamed to a temporary file, as the restore does.
    let entry = b.next_entry().unwrap().unwrap();
    assert_eq!(entry.name, "mdm.redb");
    let restored_tmp = dir.path().join("mdm.redb.restoring");
    let copied = b
        .copy_entry_to(BufWriter::new(File::create(&restored_tmp).unwrap()))
        .unwrap();
    assert_eq!(copied, database.len() as u64);
    assert_eq!(b.copy_entry_to(std::io::sink()).unwrap(), 0, "already read");

    let entry = b.next_entry().unwrap().unwrap();
    assert_eq!(entry.name, "notes");
    let mut got = Vec::new();
    b.copy_entry_to(&mut got).unwrap();
    assert_eq!(got, notes);
    assert_eq!(b.next_entry().unwrap().unwrap().len, 0);
    assert_eq!(b.next_entry().unwrap(), None, "verified to the end");
    assert_eq!(fs::read(&restored_tmp).unwrap(), database);
}

#[test]
fn wrong_passphrase_is_reported_as_such_or_damage() {
    let file = make(&[("a", b"secret")], FAST);
    for wrong in [
        "correct horse battery stapl",
        "Correct horse battery staple",
        "",
    ] {
        let err = read_all(&file, wrong).unwrap_err();
        assert!(matches!(err, KeystoreError::BackupWrongPassphrase), "{err}");
        let text = err.to_string();
        assert!(text.contains("passphrase is wrong"), "{text}");
        assert!(text.contains("damaged"), "{text}");
    }
    assert_eq!(read_all(&file, PASS).unwrap()[0].1, b"secret");
}

#[test]
fn short_passphrases_are_refused_on_creation() {
    let short = "x".repeat(MIN_PASSPHRASE_CHARS - 1);
    let err = BackupWriter::new(Vec::new(), &short, &meta()).unwrap_err();
    assert!(
        matches!(
            err,
            KeystoreError::BackupPassphraseTooShort { min: 12, found: 11 }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("at least 12"), "{err}");
    // Characters, not bytes: 11 two-byte characters are still too short, 12 are enough.
    let accents = "é".repeat(11);
    assert!(matches!(
        BackupWriter::with_kdf_params(Vec::new(), &accents, &meta(), FAST),
        Err(KeystoreError::BackupPassphraseTooShort { found: 11, .. })
    ));
    let twelve = "é".repeat(12);
    let mut w = BackupWriter::with_kdf_params(Vec::new(), &twelve, &meta(), FAST).unwrap();
    w.add("a", Cursor::new(b"x")).unwrap();
    let file = w.finish().unwrap();
    assert_eq!(read_all(&file, &twelve).unwrap().len(), 1);
}

#[test]
fn every_header_byte_flipped_is_detected() {
    let file = make(
        &[("data-key", &[9u8; 32]), ("mdm.redb", &data(5000, 3))],
        FAST,
    );
    let h = header_len(&file);
    assert!(h > FIXED_HEADER + 20);
    for i in 0..h {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = file.clone();
            bad[i] ^= mask;
            let Err(err) = read_all(&bad, PASS) else {
                panic!("byte {i} ^ {mask:#04x} went unnoticed");
            };
            assert!(
                matches!(
                    err,
                    KeystoreError::NotABackup
                        | KeystoreError::BackupUnsupportedVersion { .. }
                        | KeystoreError::BackupUnsupportedKdf { .. }
                        | KeystoreError::BackupKdfOutOfBounds { .. }
                        | KeystoreError::BackupDamaged { .. }
                        | KeystoreError::BackupWrongPassphrase
                ),
                "byte {i} ^ {mask:#04x}: {err}"
            );
        }
    }
}

#[test]
fn truncation_at_and_between_chunk_boundaries_is_detected() {
    let file = make(&[("mdm.redb", &data(2 * CHUNK + 1000, 5))], FAST);
    let h = header_len(&file);
    let full = CHUNK + TAG;
    // 18 bytes of framing, 1 of end record: two full chunks and a last one of 1019 bytes.
    assert_eq!(file.len(), h + 2 * full + 1019 + TAG);
    let mut cuts = vec![
        0,
        7,
        20,
        h - 1,
        h,
        h + 1,
        h + 16,
        h + CHUNK / 2,
        file.len() - 1,
    ];
    for k in 1..=2 {
        let boundary = h + k * full;
        cuts.extend([
            boundary - 17,
            boundary - 1,
            boundary,
            boundary + 1,
            boundary + 16,
        ]);
        cuts.push(boundary + CHUNK / 3);
    }
    for cut in cuts.into_iter().filter(|&c| c < file.len()) {
        let err = read_all(&file[..cut], PASS).unwrap_err();
        let ok = match cut {
            c if c < 8 => matches!(err, KeystoreError::NotABackup),
            c if c < h => matches!(err, KeystoreError::BackupDamaged { .. }),
            // Inside the first chunk a cut cannot be told from a wrong passphrase.
            c if c < h + full && c >= h + TAG => {
                matches!(err, KeystoreError::BackupWrongPassphrase)
            }
            _ => matches!(err, KeystoreError::BackupDamaged { .. }),
        };
        assert!(ok, "cut at {cut} (header {h}): {err}");
    }
}

#[test]
fn the_restore_learns_of_a_cut_before_it_would_rename() {
    // What a restore sees when the backup is cut inside an entry's data: the chunks before
    // the cut are handed out (each verified), and the failure arrives before next_entry
    // could report the end.
    let file = make(
        &[("mdm.redb", &data(2 * CHUNK, 5)), ("data-key", &[1u8; 32])],
        FAST,
    );
    let cut = &file[..header_len(&file) + 2 * (CHUNK + TAG)];
    let mut b = BackupReader::open(cut).unwrap().unlock(PASS).unwrap();
    b.next_entry().unwrap().unwrap();
    let mut written = Vec::new();
    let err = b.copy_entry_to(&mut written).unwrap_err();
    assert!(matches!(err, KeystoreError::BackupDamaged { .. }), "{err}");
    assert!(written.len() < 2 * CHUNK);
    assert!(matches!(b.next_entry(), Err(KeystoreError::BackupAborted)));
}

#[test]
fn chunks_swapped_between_backups_with_the_same_passphrase_are_detected() {
    let a = make(&[("mdm.redb", &data(3 * CHUNK, 1))], FAST);
    let b = make(&[("mdm.redb", &data(3 * CHUNK, 2))], FAST);
    let (h, full) = (header_len(&a), CHUNK + TAG);
    assert_eq!(h, header_len(&b));
    assert_eq!(a.len(), b.len());
    let swap = |target: &[u8], source: &[u8], index: usize| {
        let range = h + index * full..(h + (index + 1) * full).min(target.len());
        let mut out = target.to_vec();
        out[range.clone()].copy_from_slice(&source[range]);
        out
    };
    assert!(matches!(
        read_all(&swap(&a, &b, 0), PASS),
        Err(KeystoreError::BackupWrongPassphrase)
    ));
    for index in 1..=3 {
        let err = read_all(&swap(&a, &b, index), PASS).unwrap_err();
        assert!(
            matches!(err, KeystoreError::BackupDamaged { .. }),
            "chunk {index}: {err}"
        );
    }
    // A's header on B's chunks: same passphrase, another salt, so another key.
    let mut spliced = a[..h].to_vec();
    spliced.extend_from_slice(&b[h..]);
    assert!(matches!(
        read_all(&spliced, PASS),
        Err(KeystoreError::BackupWrongPassphrase)
    ));
    // Reordered chunks of the same file.
    let mut reordered = a.clone();
    reordered[h..h + full].copy_from_slice(&a[h + full..h + 2 * full]);
    reordered[h + full..h + 2 * full].copy_from_slice(&a[h..h + full]);
    assert!(read_all(&reordered, PASS).is_err());
    assert_eq!(read_all(&a, PASS).unwrap()[0].1, data(3 * CHUNK, 1));
}

#[test]
fn kdf_parameters_out_of_bounds_are_refused() {
    for params in [
        KdfParams {
            memory_kib: KdfParams::MIN_MEMORY_KIB - 1,
            ..FAST
        },
        KdfParams {
            memory_kib: KdfParams::MAX_MEMORY_KIB + 1,
            ..FAST
        },
        KdfParams { passes: 0, ..FAST },
        KdfParams {
            passes: KdfParams::MAX_PASSES + 1,
            ..FAST
        },
        KdfParams { lanes: 0, ..FAST },
        KdfParams {
            lanes: KdfParams::MAX_LANES + 1,
            ..FAST
        },
    ] {
        let err = BackupWriter::with_kdf_params(Vec::new(), PASS, &meta(), params).unwrap_err();
        assert!(
            matches!(err, KeystoreError::BackupKdfOutOfBounds { .. }),
            "{params:?}: {err}"
        );
        assert!(params.check().is_err());
    }

    // A crafted file asking for 4 GiB and a million passes is refused when opened, before
    // any memory is spent on it.
    let mut file = make(&[("a", b"x")], FAST);
    file[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
    let err = BackupReader::open(&file[..]).unwrap_err();
    assert!(err.to_string().contains("memory 4294967295 KiB"), "{err}");
    file[10..14].copy_from_slice(&FAST.memory_kib.to_be_bytes());
    file[14..18].copy_from_slice(&1_000_000u32.to_be_bytes());
    let err = BackupReader::open(&file[..]).unwrap_err();
    assert!(err.to_string().contains("1000000 passes"), "{err}");

    // Within bounds, parameters other than the recommended ones are read back and used.
    let raised = KdfParams {
        memory_kib: 16 * 1024,
        passes: 2,
        lanes: 2,
    };
    let file = make(&[("a", b"x")], raised);
    assert_eq!(BackupReader::open(&file[..]).unwrap().kdf_params(), raised);
    assert_eq!(read_all(&file, PASS).unwrap()[0].1, b"x");
}

#[test]
fn other_files_are_not_backups() {
    let dir = tempfile::tempdir().unwrap();
    let sealer = SoftSealer::open_or_create(&dir.path().join("k")).unwrap();
    let blob = sealer.seal("ca-key", b"x").unwrap().to_bytes();
    let sqlite = b"SQLite format 3\0........................................................";
    for other in [&b""[..], b"MDMBAK", &blob, &sqlite[..], &[0u8; 100]] {
        assert!(matches!(
            BackupReader::open(other),
            Err(KeystoreError::NotABackup)
        ));
    }
}

#[test]
fn meta_is_limited_and_authenticated() {
    let big = serde_json::json!({"x": "y".repeat(64 * 1024)});
    let err = BackupWriter::with_kdf_params(Vec::new(), PASS, &big, FAST).unwrap_err();
    assert!(matches!(err, KeystoreError::BackupMeta { .. }), "{err}");

    // An edit that keeps the JSON valid is shown by `meta()` but fails the unlock.
    let file = make(&[("a", b"x")], FAST);
    let at = file.windows(6).position(|w| w == b"0.1.0\"").unwrap();
    let mut edited = file.clone();
    edited[at] = b'9';
    let reader = BackupReader::open(&edited[..]).unwrap();
    assert_eq!(reader.meta()["version"], "9.1.0");
    assert!(matches!(
        reader.unlock(PASS),
        Err(KeystoreError::BackupWrongPassphrase)
    ));
}

/// An independent reading of the documented format, with Python's `cryptography` (OpenSSL's
/// Argon2id and AES-GCM), so the format in the docs and the code cannot drift apart.
#[test]
fn python_cryptography_decodes_the_documented_format() {
    let python = Command::new("python3")
        .args([
            "-c",
            "from cryptography.hazmat.primitives.kdf.argon2 import Argon2id",
        ])
        .output();
    if !python.is_ok_and(|o| o.status.success()) {
        eprintln!("python3 with cryptography >= 44 (Argon2id) not installed; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let entries: [(&str, Vec<u8>); 3] = [
        ("data-key", vec![0x5a; 32]),
        ("mdm.redb", data(CHUNK + 77, 4)),
        ("empty", vec![]),
    ];
    let refs: Vec<(&str, &[u8])> = entries.iter().map(|(n, d)| (*n, &d[..])).collect();
    let path = dir.path().join("b.mdmbak");
    fs::write(&path, make(&refs, FAST)).unwrap();
    let script = r#"
import hashlib, json, struct, sys
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
f = open(sys.argv[1], "rb").read()
assert f[:8] == b"MDMBAK01" and f[8] == 1 and f[9] == 1
m, t, p = struct.unpack(">III", f[10:22])
salt, prefix = f[22:38], f[38:45]
chunk, meta_len = struct.unpack(">II", f[45:53])
header = f[:53 + meta_len]
key = Argon2id(salt=salt, length=32, iterations=t, lanes=p, memory_cost=m).derive(sys.argv[2].encode())
aad = hashlib.sha256(header).digest()
aead = AESGCM(key)
body, plain, i = f[len(header):], b"", 0
while True:
    piece = body[:chunk + 16]
    body = body[chunk + 16:]
    last = len(piece) < chunk + 16
    plain += aead.decrypt(prefix + struct.pack(">IB", i, last), piece, aad)
    i += 1
    if last:
        break
assert body == b""
out = {"meta": json.loads(header[53:]), "entries": []}
while plain[0] == 1:
    n = plain[1]
    name = plain[2:2 + n].decode()
    (length,) = struct.unpack(">Q", plain[2 + n:10 + n])
    out["entries"].append([name, hashlib.sha256(plain[10 + n:10 + n + length]).hexdigest()])
    plain = plain[10 + n + length:]
assert plain == b"\x00"
print(json.dumps(out))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .arg(PASS)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoded: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decoded["meta"], meta());
    let expected: Vec<serde_json::Value> = entries
        .iter()
        .map(|(name, bytes)| serde_json::json!([name, sha256_hex(bytes)]))
        .collect();
    assert_eq!(decoded["entries"], serde_json::Value::Array(expected));
}

fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn soft_data_key_moves_to_a_new_key_file() {
    let old = tempfile::tempdir().unwrap();
    let new = tempfile::tempdir().unwrap();
    let a = SoftSealer::open_or_create(&old.path().join("keystore-soft.key")).unwrap();
    let blob = a.seal("ca-key", b"the CA key").unwrap().to_bytes();

    let key = a.export_data_key();
    assert_eq!(key.len(), DATA_KEY_LEN);
    let path = new.path().join("keystore-soft.key");
    let b = SoftSealer::create_with_data_key(&path, key).unwrap();
    assert_eq!(b.key_id(), a.key_id());
    assert_eq!(mode(&path), 0o600);
    let blob = SealedBlob::from_bytes(&blob).unwrap();
    assert_eq!(&b.unseal("ca-key", &blob).unwrap()[..], b"the CA key");
    // And the other way round, and after reopening the new file.
    let back = b.seal("tls-key", b"tls").unwrap();
    assert_eq!(&a.unseal("tls-key", &back).unwrap()[..], b"tls");
    drop(b);
    let reopened = SoftSealer::open_or_create(&path).unwrap();
    assert_eq!(reopened.key_id(), a.key_id());

    // An existing file is never replaced, whatever it holds.
    let before = fs::read(&path).unwrap();
    let err = SoftSealer::create_with_data_key(&path, a.export_data_key()).unwrap_err();
    assert!(
        matches!(&err, KeystoreError::KeyFileExists { path: p } if *p == path),
        "{err}"
    );
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), before);
    let other = SoftSealer::open_or_create(&new.path().join("other.key")).unwrap();
    assert!(matches!(
        SoftSealer::create_with_data_key(&new.path().join("other.key"), a.export_data_key()),
        Err(KeystoreError::KeyFileExists { .. })
    ));
    assert_ne!(other.key_id(), a.key_id());
    assert!(matches!(
        SoftSealer::create_with_data_key(&new.path().join("missing/dir.key"), a.export_data_key()),
        Err(KeystoreError::ParentMissing { .. })
    ));
}

#[test]
fn a_soft_appliance_is_restored_from_its_backup() {
    let old = tempfile::tempdir().unwrap();
    let sealer = SoftSealer::open_or_create(&old.path().join("keystore-soft.key")).unwrap();
    // A stand-in database: sealed blobs, stored as they are.
    let database: Vec<u8> = ["ca-key", "push-key", "abm-token"]
        .iter()
        .flat_map(|p| {
            let blob = sealer.seal(p, p.as_bytes()).unwrap().to_bytes();
            let mut rec = (blob.len() as u32).to_be_bytes().to_vec();
            rec.extend(blob);
            rec
        })
        .collect();
    let mut w = BackupWriter::with_kdf_params(Vec::new(), PASS, &meta(), FAST).unwrap();
    w.add("data-key", Cursor::new(&sealer.export_data_key()[..]))
        .unwrap();
    w.add("mdm.redb", Cursor::new(&database)).unwrap();
    let file = w.finish().unwrap();
    drop(sealer);

    let new = tempfile::tempdir().unwrap();
    let mut b = BackupReader::open(&file[..]).unwrap().unlock(PASS).unwrap();
    let mut key = None;
    let tmp = new.path().join("mdm.redb.tmp");
    while let Some(entry) = b.next_entry().unwrap() {
        match entry.name.as_str() {
            "data-key" => {
                let bytes = b.read_entry(DATA_KEY_LEN).unwrap();
                let mut k = mdm_keystore::Zeroizing::new([0u8; DATA_KEY_LEN]);
                k.copy_from_slice(&bytes);
                key = Some(k);
            }
            "mdm.redb" => {
                let mut f = File::create(&tmp).unwrap();
                b.copy_entry_to(&mut f).unwrap();
                f.flush().unwrap();
            }
            other => panic!("unexpected entry {other}"),
        }
    }
    let db = new.path().join("mdm.redb");
    fs::rename(&tmp, &db).unwrap();
    let restored =
        SoftSealer::create_with_data_key(&new.path().join("keystore-soft.key"), key.unwrap())
            .unwrap();
    let mut rest = &fs::read(&db).unwrap()[..];
    for purpose in ["ca-key", "push-key", "abm-token"] {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let blob = SealedBlob::from_bytes(&rest[4..4 + len]).unwrap();
        rest = &rest[4 + len..];
        assert_eq!(
            &restored.unseal(purpose, &blob).unwrap()[..],
            purpose.as_bytes()
        );
    }
}

#[test]
fn the_data_key_is_exported_through_the_trait_too() {
    struct Fake;
    impl Sealer for Fake {
        fn backend(&self) -> mdm_keystore::Backend {
            mdm_keystore::Backend::Software
        }
        fn seal(&self, _: &str, _: &[u8]) -> Result<SealedBlob, KeystoreError> {
            unreachable!()
        }
        fn unseal(
            &self,
            _: &str,
            _: &SealedBlob,
        ) -> Result<mdm_keystore::Zeroizing<Vec<u8>>, KeystoreError> {
            unreachable!()
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let soft = SoftSealer::open_or_create(&dir.path().join("k")).unwrap();
    let shared: std::sync::Arc<dyn Sealer> = std::sync::Arc::new(soft);
    let via_trait = shared.export_data_key().unwrap();
    let copy = SoftSealer::create_with_data_key(&dir.path().join("k2"), via_trait).unwrap();
    let hex: String = copy.key_id().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(shared.describe().key_id, Some(hex), "the same data key");
    let fake: Box<dyn Sealer> = Box::new(Fake);
    assert!(fake.export_data_key().is_none());
}
