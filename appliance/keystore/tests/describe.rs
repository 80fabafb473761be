//! `Sealer::describe` on both backends: the software one in a temporary directory, the TPM one
//! on a real software TPM (swtpm; skipped with a message only when swtpm is not installed).
//! Where tpm2-tools are installed, the TPM's properties are checked against `tpm2_getcap`.

// This whole file is test code, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/swtpm.rs"]
mod swtpm;

use std::process::Command;
use std::sync::Arc;

use mdm_keystore::{Backend, Sealer, SoftSealer, TpmSealer};
use swtpm::Swtpm;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn software_sealer_describes_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("soft.key");
    let sealer = SoftSealer::open_or_create(&path).unwrap();
    // Through the trait object, as the daemon holds it.
    let dynamic: Arc<dyn Sealer> = Arc::new(SoftSealer::open_or_create(&path).unwrap());
    let info = dynamic.describe();
    assert_eq!(info.backend, Backend::Software);
    assert_eq!(info.key_id.as_deref(), Some(hex(&sealer.key_id()).as_str()));
    assert_eq!(
        info.key_id.as_ref().unwrap().len(),
        sealer.key_id().len() * 2
    );
    assert_eq!(info.key_file.as_deref(), Some(path.as_path()));
    assert!(info.tpm.is_none());
    assert_eq!(info.label(), "software (development)");
}

/// The value of `property` in `tpm2_getcap properties-fixed` output (`  raw: 0x...`).
fn getcap_raw(text: &str, property: &str) -> Option<u32> {
    let start = text.find(&format!("{property}:"))?;
    let raw = text[start..].lines().skip(1).find_map(|l| {
        l.trim()
            .strip_prefix("raw: 0x")
            .or_else(|| l.trim().strip_prefix("value: 0x"))
    })?;
    u32::from_str_radix(raw.trim(), 16).ok()
}

#[test]
fn tpm_sealer_describes_the_tpm() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tpm) = Swtpm::start(&dir.path().join("tpm-state")) else {
        return;
    };
    let key_file = dir.path().join("tpm.key");
    let sealer = TpmSealer::open_or_create(&tpm.tcti(), &key_file).unwrap();
    let key_id = hex(&sealer.key_id());
    let dynamic: Arc<dyn Sealer> = Arc::new(sealer);
    let info = dynamic.describe();
    assert_eq!(info.backend, Backend::Tpm);
    assert_eq!(info.key_file.as_deref(), Some(key_file.as_path()));
    assert_eq!(info.key_id.as_deref(), Some(key_id.as_str()));
    let t = info.tpm.clone().expect("TPM details");
    assert_eq!(t.tcti, tpm.tcti());
    // swtpm is built on IBM's reference implementation and says so: "IBM\0" in the TCG
    // vendor registry's NUL padding.
    assert_eq!(t.manufacturer, "IBM", "{t:?}");
    assert!(!t.vendor.is_empty(), "{t:?}");
    assert!(!t.firmware_version.is_empty(), "{t:?}");
    assert_ne!(t.firmware_version_raw, [0, 0], "{t:?}");
    assert_eq!(t.storage_key_name.len(), 68, "SHA-256 name: {t:?}");
    assert_eq!(info.label(), format!("tpm ({})", tpm.tcti()));

    // Reopening the same TPM and key file describes the same thing.
    let again = TpmSealer::open_or_create(&tpm.tcti(), &key_file).unwrap();
    assert_eq!(again.describe(), info);

    // tpm2-tools read the same properties independently of tss-esapi's parsing here.
    let out = match Command::new("tpm2_getcap")
        .args(["-T", &tpm.tcti(), "properties-fixed"])
        .output()
    {
        Ok(out) => out,
        Err(_) => {
            eprintln!("tpm2-tools not installed; skipping the tpm2_getcap cross-check");
            return;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        getcap_raw(&text, "TPM2_PT_MANUFACTURER"),
        Some(u32::from_be_bytes(*b"IBM\0")),
        "{text}"
    );
    assert_eq!(
        getcap_raw(&text, "TPM2_PT_FIRMWARE_VERSION_1"),
        Some(t.firmware_version_raw[0]),
        "{text}"
    );
    assert_eq!(
        getcap_raw(&text, "TPM2_PT_FIRMWARE_VERSION_2"),
        Some(t.firmware_version_raw[1]),
        "{text}"
    );
}
