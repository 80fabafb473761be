//! What a keystore is, for diagnostics: [`KeystoreInfo`] from [`Sealer::describe`].
//!
//! [`Sealer::describe`]: crate::Sealer::describe

use std::path::PathBuf;

use serde::{Serialize, Serializer};

use crate::Backend;

/// A keystore as an operator sees it: which backend, which data key, where its file is and,
/// for the TPM backend, which TPM. Holds nothing secret (the key id is derived from the key
/// and reveals nothing about it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeystoreInfo {
    /// The backend, serialized as `"software"` or `"tpm"`.
    pub backend: Backend,
    /// The data key's id in lower-case hex, as recorded in every blob; `None` for a sealer
    /// that does not say.
    pub key_id: Option<String>,
    /// Ids of older data keys still in the key file: non-empty only while a data-key rotation
    /// is under way (some blobs may still be sealed under them).
    pub previous_key_ids: Vec<String>,
    /// The file the key is kept in; `None` for a sealer that does not say. Serialized as
    /// text (bytes that are not UTF-8 replaced), so that an odd path cannot fail a report.
    #[serde(serialize_with = "lossy_path")]
    pub key_file: Option<PathBuf>,
    /// The TPM, for the TPM backend.
    pub tpm: Option<TpmInfo>,
}

impl KeystoreInfo {
    /// Only what every sealer knows: its backend.
    pub fn bare(backend: Backend) -> Self {
        Self {
            backend,
            key_id: None,
            previous_key_ids: Vec::new(),
            key_file: None,
            tpm: None,
        }
    }

    /// A one-line label (`software (development)`, `tpm (device:/dev/tpmrm0)`), as
    /// `/api/v1/status` shows it.
    pub fn label(&self) -> String {
        match (&self.backend, &self.tpm) {
            (Backend::Software, _) => "software (development)".to_owned(),
            (Backend::Tpm, Some(tpm)) => format!("tpm ({})", tpm.tcti),
            (Backend::Tpm, None) => "tpm".to_owned(),
        }
    }
}

/// The TPM a [`TpmSealer`](crate::TpmSealer) was opened on, as it describes itself through
/// TPM2_GetCapability(TPM_CAP_TPM_PROPERTIES) when the keystore is opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TpmInfo {
    /// The TPM interface (TCTI) it was opened through.
    pub tcti: String,
    /// TPM2_PT_MANUFACTURER: the 4-character vendor id of the TCG registry (`"IFX"`,
    /// `"INTC"`, `"MSFT"`, `"IBM"` for swtpm...). Trailing NULs are dropped, trailing spaces
    /// kept; bytes that are not printable ASCII are shown as `.`.
    pub manufacturer: String,
    /// TPM2_PT_VENDOR_STRING_1 to _4 joined: the vendor's free-form model string, trailing
    /// NULs and spaces dropped; empty if the TPM reports none.
    pub vendor: String,
    /// TPM2_PT_FIRMWARE_VERSION_1 and _2 as four 16-bit numbers, `a.b.c.d` (the most
    /// significant half first, as fwupd shows TPM firmware). Vendors use the fields
    /// differently: compare it only with versions of the same manufacturer.
    pub firmware_version: String,
    /// The two firmware version properties as the TPM reported them.
    pub firmware_version_raw: [u32; 2],
    /// The TPM name of the storage key the data key is sealed under, hex: it identifies the
    /// TPM's owner hierarchy (another TPM, or the same one after it was cleared, has another).
    pub storage_key_name: String,
    /// The PCRs (SHA-256 bank) the data key is bound to by a PCR policy; empty when it is not
    /// bound to platform state.
    pub policy_pcrs: Vec<u8>,
}

impl TpmInfo {
    /// Formats what the TPM reported. `vendor_strings` are TPM2_PT_VENDOR_STRING_1.. in order
    /// (the TPM may report fewer than four).
    pub(crate) fn from_properties(
        tcti: &str,
        manufacturer: u32,
        vendor_strings: &[u32],
        firmware: [u32; 2],
        storage_key_name: String,
    ) -> Self {
        let manufacturer = manufacturer.to_be_bytes();
        let vendor: Vec<u8> = vendor_strings
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let [fw1, fw2] = firmware;
        Self {
            tcti: tcti.to_owned(),
            manufacturer: printable(trim_end(&manufacturer, &[0])),
            vendor: printable(trim_end(&vendor, &[0, b' '])),
            firmware_version: format!(
                "{}.{}.{}.{}",
                fw1 >> 16,
                fw1 & 0xffff,
                fw2 >> 16,
                fw2 & 0xffff
            ),
            firmware_version_raw: firmware,
            storage_key_name,
            policy_pcrs: Vec::new(),
        }
    }
}

fn trim_end<'a>(bytes: &'a [u8], padding: &[u8]) -> &'a [u8] {
    let len = bytes
        .iter()
        .rposition(|b| !padding.contains(b))
        .map_or(0, |i| i + 1);
    &bytes[..len]
}

/// TPM property strings are vendor-supplied bytes; they end up in terminals and JSON, so
/// anything but printable ASCII is masked.
fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if (0x20..=0x7e).contains(&b) {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect()
}

fn lossy_path<S: Serializer>(path: &Option<PathBuf>, serializer: S) -> Result<S::Ok, S::Error> {
    match path {
        Some(path) => serializer.serialize_some(&path.to_string_lossy()),
        None => serializer.serialize_none(),
    }
}

impl Serialize for Backend {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(match self {
            Self::Software => "software",
            Self::Tpm => "tpm",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpm_properties_become_text() {
        let info = TpmInfo::from_properties(
            "swtpm:port=2321",
            u32::from_be_bytes(*b"IBM "),
            &[
                u32::from_be_bytes(*b"SW  "),
                u32::from_be_bytes(*b" TPM"),
                0,
                0,
            ],
            [0x2019_1023, 0x0016_3636],
            "000b".to_owned(),
        );
        assert_eq!(info.manufacturer, "IBM ");
        assert_eq!(info.vendor, "SW   TPM");
        assert_eq!(info.firmware_version, "8217.4131.22.13878");
        assert_eq!(info.firmware_version_raw, [0x2019_1023, 0x0016_3636]);

        let nul_padded = TpmInfo::from_properties(
            "t",
            u32::from_be_bytes(*b"IFX\0"),
            &[
                u32::from_be_bytes(*b"SLB9"),
                u32::from_be_bytes(*b"670\x07"),
            ],
            [0x0007_0055, 0],
            String::new(),
        );
        assert_eq!(nul_padded.manufacturer, "IFX");
        assert_eq!(nul_padded.vendor, "SLB9670.");
        assert_eq!(nul_padded.firmware_version, "7.85.0.0");

        let none = TpmInfo::from_properties("t", 0, &[], [0, 0], String::new());
        assert_eq!(none.manufacturer, "");
        assert_eq!(none.vendor, "");
    }

    #[test]
    fn labels_and_json() {
        let soft = KeystoreInfo {
            key_id: Some("ab".to_owned()),
            key_file: Some(PathBuf::from("/var/lib/mdm/keystore-soft.key")),
            ..KeystoreInfo::bare(Backend::Software)
        };
        assert_eq!(soft.label(), "software (development)");
        let tpm = KeystoreInfo {
            tpm: Some(TpmInfo::from_properties(
                "device:/dev/tpmrm0",
                u32::from_be_bytes(*b"INTC"),
                &[],
                [1 << 16 | 2, 3 << 16 | 4],
                "000bff".to_owned(),
            )),
            ..KeystoreInfo::bare(Backend::Tpm)
        };
        assert_eq!(tpm.label(), "tpm (device:/dev/tpmrm0)");
        assert_eq!(KeystoreInfo::bare(Backend::Tpm).label(), "tpm");

        let json = serde_json::to_value(&tpm).unwrap();
        assert_eq!(json["backend"], "tpm");
        assert_eq!(json["key_id"], serde_json::Value::Null);
        assert_eq!(json["tpm"]["manufacturer"], "INTC");
        assert_eq!(json["tpm"]["firmware_version"], "1.2.3.4");
        assert_eq!(
            json["tpm"]["firmware_version_raw"],
            serde_json::json!([65538, 196612])
        );
        let json = serde_json::to_value(&soft).unwrap();
        assert_eq!(json["backend"], "software");
        assert_eq!(json["key_file"], "/var/lib/mdm/keystore-soft.key");
        assert_eq!(json["tpm"], serde_json::Value::Null);
    }
}
