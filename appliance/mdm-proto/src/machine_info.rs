//! Automated Device Enrollment: the device's `MachineInfo` and the "update first" reply.

use std::cmp::Ordering;
use std::fmt;

use crate::fields::{parse_dict, Fields};
use crate::ProtoError;

/// The plist a device POSTs (inside a CMS signature checked elsewhere) to the enrollment URL
/// during Setup Assistant, or sends base64 in `x-apple-aspen-deviceinfo` to a
/// `configuration_web_url`. See Apple's
/// [MachineInfo](https://developer.apple.com/documentation/devicemanagement/machineinfo).
#[derive(Clone, PartialEq, Eq)]
pub struct MachineInfo {
    /// `UDID`.
    pub udid: String,
    /// `SERIAL`.
    pub serial: String,
    /// `PRODUCT`, e.g. `iPhone15,2`.
    pub product: String,
    /// `VERSION`: the build version, e.g. `21E236`.
    pub version: String,
    /// `OS_VERSION`, e.g. `17.4.1`; only sent by iOS 17 / macOS 14 and later.
    pub os_version: Option<String>,
    /// `SUPPLEMENTAL_BUILD_VERSION` (Rapid Security Response builds).
    pub supplemental_build_version: Option<String>,
    /// `SUPPLEMENTAL_OS_VERSION_EXTRA`, e.g. `(a)`.
    pub supplemental_os_version_extra: Option<String>,
    /// `LANGUAGE`, e.g. `en`.
    pub language: Option<String>,
    /// `IMEI`.
    pub imei: Option<String>,
    /// `MEID`.
    pub meid: Option<String>,
    /// `MDM_CAN_REQUEST_SOFTWARE_UPDATE`: the device understands
    /// [`software_update_required_json`].
    pub mdm_can_request_software_update: bool,
    /// `MDM_CAN_REQUEST_PSSO_CONFIG` (macOS 26+).
    pub mdm_can_request_psso_config: bool,
    /// `SOFTWARE_UPDATE_DEVICE_ID`: the model id to look up updates for.
    pub software_update_device_id: Option<String>,
    /// `PAIRING_TOKEN` (watchOS enrollment through a paired iPhone).
    pub pairing_token: Option<Vec<u8>>,
}

impl fmt::Debug for MachineInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MachineInfo")
            .field("udid", &self.udid)
            .field("serial", &self.serial)
            .field("product", &self.product)
            .field("version", &self.version)
            .field("os_version", &self.os_version)
            .field(
                "supplemental_build_version",
                &self.supplemental_build_version,
            )
            .field(
                "supplemental_os_version_extra",
                &self.supplemental_os_version_extra,
            )
            .field("language", &self.language)
            .field("imei", &self.imei)
            .field("meid", &self.meid)
            .field(
                "mdm_can_request_software_update",
                &self.mdm_can_request_software_update,
            )
            .field(
                "mdm_can_request_psso_config",
                &self.mdm_can_request_psso_config,
            )
            .field("software_update_device_id", &self.software_update_device_id)
            .field(
                "pairing_token_len",
                &self.pairing_token.as_ref().map(Vec::len),
            )
            .finish()
    }
}

/// Parses the (already signature-checked) MachineInfo plist, XML or binary.
pub fn parse_machine_info(plist: &[u8]) -> Result<MachineInfo, ProtoError> {
    let dict = parse_dict(plist)?;
    let f = Fields::new(&dict);
    Ok(MachineInfo {
        udid: f.non_empty_string("UDID")?,
        serial: f.non_empty_string("SERIAL")?,
        product: f.non_empty_string("PRODUCT")?,
        version: f.non_empty_string("VERSION")?,
        os_version: f.opt_string("OS_VERSION")?,
        supplemental_build_version: f.opt_string("SUPPLEMENTAL_BUILD_VERSION")?,
        supplemental_os_version_extra: f.opt_string("SUPPLEMENTAL_OS_VERSION_EXTRA")?,
        language: f.opt_string("LANGUAGE")?,
        imei: f.opt_string("IMEI")?,
        meid: f.opt_string("MEID")?,
        mdm_can_request_software_update: f.bool_or_false("MDM_CAN_REQUEST_SOFTWARE_UPDATE")?,
        mdm_can_request_psso_config: f.bool_or_false("MDM_CAN_REQUEST_PSSO_CONFIG")?,
        software_update_device_id: f.opt_string("SOFTWARE_UPDATE_DEVICE_ID")?,
        pairing_token: f.opt_data("PAIRING_TOKEN")?,
    })
}

/// The JSON body of the `403` reply that makes a device in Setup Assistant update its OS
/// before enrolling:
/// `{"code":"com.apple.softwareupdate.required","details":{"OSVersion":..,"BuildVersion":..}}`.
/// Send it with `Content-Type: application/json`, and only to devices whose MachineInfo has
/// [`MachineInfo::mdm_can_request_software_update`]. See Apple's
/// [ErrorCodeSoftwareUpdateRequired](https://developer.apple.com/documentation/devicemanagement/errorcodesoftwareupdaterequired).
pub fn software_update_required_json(os_version: &str, build_version: Option<&str>) -> String {
    let mut details = serde_json::Map::new();
    details.insert("OSVersion".to_owned(), os_version.into());
    if let Some(build) = build_version {
        details.insert("BuildVersion".to_owned(), build.into());
    }
    serde_json::json!({
        "code": "com.apple.softwareupdate.required",
        "details": details,
    })
    .to_string()
}

/// The numeric value of one dotted component: its leading digits (`"4b"` is 4), 0 if none.
fn component(part: &str) -> u64 {
    part.trim()
        .bytes()
        .take_while(u8::is_ascii_digit)
        .fold(0u64, |acc, d| {
            acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        })
}

/// Compares dotted OS versions numerically (`"17.10"` > `"17.9"`); missing components count
/// as zero (`"17"` == `"17.0"`).
pub fn compare_os_versions(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (l, r) => {
                let order = component(l.unwrap_or("0")).cmp(&component(r.unwrap_or("0")));
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// Compare dotted OS versions numerically: true if `a` is older than `b` (`"17.9"` <
/// `"17.10"`).
pub fn os_version_less_than(a: &str, b: &str) -> bool {
    compare_os_versions(a, b) == Ordering::Less
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(os_version_less_than("17.9", "17.10"));
        assert!(!os_version_less_than("17.10", "17.9"));
        assert!(os_version_less_than("16.7.8", "17.0"));
        assert!(!os_version_less_than("17", "17.0"));
        assert!(!os_version_less_than("17.0", "17"));
        assert!(os_version_less_than("17", "17.0.1"));
        assert!(!os_version_less_than("17.4", "17.4"));
        assert!(os_version_less_than("9.3.5", "10.0"));
        assert_eq!(compare_os_versions("18.0", "18"), Ordering::Equal);
        assert!(os_version_less_than("", "1"));
    }

    #[test]
    fn update_required_body_is_apple_shaped_json() {
        let body = software_update_required_json("17.4.1", Some("21E236"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["code"], "com.apple.softwareupdate.required");
        assert_eq!(v["details"]["OSVersion"], "17.4.1");
        assert_eq!(v["details"]["BuildVersion"], "21E236");

        let v: serde_json::Value =
            serde_json::from_str(&software_update_required_json("18.\"1", None)).unwrap();
        assert_eq!(v["details"]["OSVersion"], "18.\"1");
        assert!(v["details"].get("BuildVersion").is_none());
    }
}
