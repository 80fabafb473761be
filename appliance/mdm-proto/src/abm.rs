//! The Apple Business Manager device assignment API ("DEP"): the JSON bodies the appliance
//! sends and receives, protocol version 10.
//!
//! Apple's [Device Assignment](https://developer.apple.com/documentation/devicemanagement/device-assignment)
//! documentation is the authority. Unknown keys in replies are ignored (Apple adds some);
//! absent ones default, because Apple omits keys whose value is empty. Times stay the strings
//! Apple sent (RFC 3339 in practice); the service parses them where it needs to compare.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The OAuth credentials inside a decrypted server token (`.p7m`).
///
/// Its `Debug` shows only the consumer key (an account identifier, not a secret); the
/// secrets are wiped from memory when it is dropped.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct ServerToken {
    pub consumer_key: String,
    pub consumer_secret: String,
    pub access_token: String,
    pub access_secret: String,
    /// RFC 3339, e.g. `2027-11-21T10:00:00Z`.
    pub access_token_expiry: String,
}

impl std::fmt::Debug for ServerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerToken")
            .field("consumer_key", &self.consumer_key)
            .field("access_token_expiry", &self.access_token_expiry)
            .finish_non_exhaustive()
    }
}

/// `GET /account`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Account {
    pub server_name: String,
    pub server_uuid: String,
    pub admin_id: String,
    pub facilitator_id: Option<String>,
    pub org_name: String,
    pub org_email: String,
    pub org_phone: String,
    pub org_address: String,
    pub org_id: String,
    pub org_id_hash: Option<String>,
    pub org_type: String,
    pub org_version: String,
    pub urls: Vec<AccountUrl>,
}

/// One entry of [`Account::urls`]: an endpoint Apple lists for this server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountUrl {
    pub uri: String,
    pub http_method: Vec<String>,
    pub limit: Option<AccountLimit>,
}

/// Paging limits Apple announces for an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountLimit {
    pub default: u32,
    pub maximum: u32,
}

/// One device as ABM describes it (fetch, sync and `POST /devices` replies).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Device {
    pub serial_number: String,
    pub model: String,
    pub description: String,
    pub color: String,
    pub asset_tag: String,
    pub os: String,
    pub device_family: String,
    /// `empty`, `assigned`, `pushed` or `removed`.
    pub profile_status: String,
    pub profile_uuid: String,
    pub profile_assign_time: String,
    pub profile_push_time: String,
    pub device_assigned_date: String,
    pub device_assigned_by: String,
    /// `added`, `modified` or `deleted` in sync replies; empty in fetch replies.
    pub op_type: String,
    pub op_date: String,
    /// Only in `POST /devices` replies: `SUCCESS`, `NOT_ACCESSIBLE`, ...
    pub response_status: String,
}

/// `POST /server/devices` and `POST /devices/sync` request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePageRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A page of devices from `POST /server/devices` or `POST /devices/sync`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DevicePage {
    pub cursor: String,
    pub devices: Vec<Device>,
    pub fetched_until: String,
    pub more_to_follow: bool,
}

/// `POST /devices` request body: details of the listed serial numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialsRequest {
    pub devices: Vec<String>,
}

/// `POST /devices` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceDetails {
    pub devices: BTreeMap<String, Device>,
}

/// An ABM enrollment profile (`POST /profile`, `GET /profile`).
///
/// `is_mdm_removable` defaults to `true` at Apple; it may be `false` only when supervised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    pub profile_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configuration_web_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_supervised: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_pairing: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_mandatory: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_mdm_removable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_multi_user: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub await_device_configured: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_advance_setup: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_return_to_service: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_not_use_profile_from_backup: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_magic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub support_phone_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub support_email_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Base64 DER certificates the device trusts for the MDM URL during Setup Assistant.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub anchor_certs: Vec<String>,
    /// Base64 DER certificates of hosts allowed to pair with a supervised device.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub supervising_host_certs: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skip_setup_items: Vec<String>,
    /// Serial numbers to assign in the same call (the appliance assigns separately).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

/// `POST /profile` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DefineProfileResponse {
    pub profile_uuid: String,
    pub devices: BTreeMap<String, String>,
}

/// `PUT /profile/devices` request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignRequest {
    pub profile_uuid: String,
    pub devices: Vec<String>,
}

/// `PUT /profile/devices` reply: an outcome per serial, which can hold failures under an HTTP
/// 200.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AssignResponse {
    pub profile_uuid: String,
    /// Serial number → `SUCCESS`, `NOT_ACCESSIBLE`, `FAILED` or `THROTTLED`.
    pub devices: BTreeMap<String, String>,
    /// Protocol version 10: how long to wait before retrying FAILED/THROTTLED serials.
    pub retry_after_seconds: Option<u64>,
}

/// Replies of `DELETE /profile/devices` and `POST /devices/disown`: an outcome per serial.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SerialOutcomes {
    pub devices: BTreeMap<String, String>,
}

/// Per-serial outcome strings Apple uses in assignment replies.
pub mod outcome {
    pub const SUCCESS: &str = "SUCCESS";
    pub const NOT_ACCESSIBLE: &str = "NOT_ACCESSIBLE";
    pub const FAILED: &str = "FAILED";
    pub const THROTTLED: &str = "THROTTLED";
}

/// `profile_status` values.
pub mod profile_status {
    pub const EMPTY: &str = "empty";
    pub const ASSIGNED: &str = "assigned";
    pub const PUSHED: &str = "pushed";
    pub const REMOVED: &str = "removed";
}

/// `op_type` values in sync replies (fetch replies leave it empty).
pub mod op_type {
    pub const ADDED: &str = "added";
    pub const MODIFIED: &str = "modified";
    pub const DELETED: &str = "deleted";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_page_tolerates_missing_and_unknown_keys() {
        let page: DevicePage = serde_json::from_str(
            r#"{"cursor":"c1","more_to_follow":true,"devices":[
                {"serial_number":"C02X","model":"MacBook Pro","op_type":"added","new_key":1}
            ]}"#,
        )
        .unwrap();
        assert_eq!(page.cursor, "c1");
        assert!(page.more_to_follow);
        assert_eq!(page.devices[0].serial_number, "C02X");
        assert_eq!(page.devices[0].profile_status, "");
    }

    #[test]
    fn profile_serialises_only_what_is_set() {
        let p = Profile {
            profile_name: "Staff".into(),
            url: Some("https://mdm.lan/mdm/enroll".into()),
            await_device_configured: Some(true),
            ..Profile::default()
        };
        let v: serde_json::Value = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "profile_name": "Staff",
                "url": "https://mdm.lan/mdm/enroll",
                "await_device_configured": true
            })
        );
    }

    #[test]
    fn server_token_debug_hides_secrets() {
        let t = ServerToken {
            consumer_key: "CK_1".into(),
            consumer_secret: "CS_secret".into(),
            access_token: "AT_secret".into(),
            access_secret: "AS_secret".into(),
            access_token_expiry: "2027-01-01T00:00:00Z".into(),
        };
        let s = format!("{t:?}");
        assert!(s.contains("CK_1"));
        assert!(!s.contains("secret"));
    }
}
