//! The public vocabulary of the ABM simulator: servers, devices, outcomes, faults and
//! counters.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::AbmSimError;

/// One simulated MDM server (what ABM calls an "MDM server"), numbered from 0 in creation
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServerId(pub usize);

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What to create an MDM server with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// The server's name (`server_name` in `/account`).
    pub name: String,
    /// The organisation's name. Servers naming the same organisation share it, and with
    /// it the OAuth consumer key and the terms-and-conditions state.
    pub org: String,
}

impl ServerSpec {
    /// A server called `name` in the organisation `org`.
    pub fn new(name: impl Into<String>, org: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            org: org.into(),
        }
    }
}

/// A summary of one MDM server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerInfo {
    /// Its id.
    pub id: ServerId,
    /// `server_name`.
    pub name: String,
    /// `server_uuid`.
    pub uuid: String,
    /// `org_name` of its organisation.
    pub org_name: String,
    /// The organisation's current OAuth consumer key.
    pub consumer_key: String,
    /// How many devices are assigned to it.
    pub devices: usize,
    /// How many profiles were defined on it.
    pub profiles: usize,
}

/// ABM's `profile_status` of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileStatus {
    /// No profile assigned.
    Empty,
    /// A profile is assigned; the device has not fetched it yet.
    Assigned,
    /// The device fetched its profile during Setup Assistant.
    Pushed,
    /// The profile was removed (or the device came from another MDM server).
    Removed,
}

impl ProfileStatus {
    /// The JSON string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Assigned => "assigned",
            Self::Pushed => "pushed",
            Self::Removed => "removed",
        }
    }
}

/// The kinds of hardware the generator produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceFamily {
    /// iPhone (`os` "iOS").
    IPhone,
    /// iPad (`os` "iOS", as ABM reports iPads).
    IPad,
    /// Mac (`os` "OSX").
    Mac,
    /// Apple TV (`os` "tvOS").
    AppleTv,
}

impl DeviceFamily {
    /// ABM's `device_family` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IPhone => "iPhone",
            Self::IPad => "iPad",
            Self::Mac => "Mac",
            Self::AppleTv => "AppleTV",
        }
    }

    /// ABM's `os` value for this family.
    pub fn os(self) -> &'static str {
        match self {
            Self::IPhone | Self::IPad => "iOS",
            Self::Mac => "OSX",
            Self::AppleTv => "tvOS",
        }
    }
}

/// A device as ABM describes it to its MDM server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbmDevice {
    /// `serial_number`: 12 upper-case letters and digits for generated devices.
    pub serial_number: String,
    /// `model`, e.g. "iPhone 15".
    pub model: String,
    /// `description`, e.g. "IPHONE 15 BLACK 128GB-USA".
    pub description: String,
    /// `color`.
    pub color: String,
    /// `asset_tag`, when the organisation set one.
    pub asset_tag: Option<String>,
    /// `os`: "iOS", "OSX" or "tvOS".
    pub os: String,
    /// `device_family`: "iPhone", "iPad", "Mac" or "AppleTV".
    pub device_family: String,
    /// `profile_status`.
    pub profile_status: ProfileStatus,
    /// `profile_uuid` of the assigned profile.
    pub profile_uuid: Option<String>,
    /// `profile_assign_time`.
    pub profile_assign_time: Option<SystemTime>,
    /// `profile_push_time`.
    pub profile_push_time: Option<SystemTime>,
    /// `device_assigned_date`: when the device was assigned to its MDM server.
    pub device_assigned_date: SystemTime,
    /// `device_assigned_by`: who assigned it.
    pub device_assigned_by: String,
}

/// Fields to change on a device with [`super::AbmSimulator::modify_device`]; `None`
/// leaves a field as it is. An empty `asset_tag` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceChange {
    /// New `model`.
    pub model: Option<String>,
    /// New `description`.
    pub description: Option<String>,
    /// New `color`.
    pub color: Option<String>,
    /// New `asset_tag` (empty: none).
    pub asset_tag: Option<String>,
    /// New `os`.
    pub os: Option<String>,
    /// New `device_family`.
    pub device_family: Option<String>,
}

/// A device together with where it is in the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    /// The MDM server it is assigned to; `None` once released.
    pub server: Option<ServerId>,
    /// When its cool-down ends, if it is in one.
    pub cooldown_until: Option<SystemTime>,
    /// The device record.
    pub device: AbmDevice,
}

/// `op_type` of a sync event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpType {
    /// The device was assigned to the MDM server.
    Added,
    /// The device record changed (including arriving from another MDM server).
    Modified,
    /// The device was released from the MDM server.
    Deleted,
}

impl OpType {
    /// The JSON string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Modified => "modified",
            Self::Deleted => "deleted",
        }
    }
}

/// A per-device result to script for the next assignment attempts of a serial number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AssignOutcome {
    /// `FAILED` (HTTP 200 all the same).
    Failed,
    /// `THROTTLED`, with `retry_after_seconds` in the reply under protocol version 10 or
    /// later. Under versions before 9, which predate throttling, it is reported as
    /// `FAILED`.
    Throttled,
    /// `NOT_ACCESSIBLE`.
    NotAccessible,
}

impl AssignOutcome {
    /// The JSON string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "FAILED",
            Self::Throttled => "THROTTLED",
            Self::NotAccessible => "NOT_ACCESSIBLE",
        }
    }
}

/// A fault answered instead of handling a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 429 `TOO_MANY_REQUESTS` with a `Retry-After` header of this many whole seconds.
    TooManyRequests {
        /// The `Retry-After` value.
        retry_after: Duration,
    },
    /// 503 Service Unavailable.
    ServiceUnavailable,
}

/// The Apple API endpoints the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// `GET /session`.
    Session,
    /// `GET /account`.
    Account,
    /// `POST /server/devices`.
    FetchDevices,
    /// `POST /devices/sync`.
    SyncDevices,
    /// `POST /devices`.
    DeviceDetails,
    /// `POST /profile`.
    DefineProfile,
    /// `GET /profile`.
    GetProfile,
    /// `PUT` or `POST /profile/devices`.
    AssignProfile,
    /// `DELETE /profile/devices`.
    RemoveProfile,
    /// `POST /devices/disown`.
    Disown,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Self; 10] = [
        Self::Session,
        Self::Account,
        Self::FetchDevices,
        Self::SyncDevices,
        Self::DeviceDetails,
        Self::DefineProfile,
        Self::GetProfile,
        Self::AssignProfile,
        Self::RemoveProfile,
        Self::Disown,
    ];

    /// A short name, used by the control API and in counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Account => "account",
            Self::FetchDevices => "fetch_devices",
            Self::SyncDevices => "sync_devices",
            Self::DeviceDetails => "device_details",
            Self::DefineProfile => "define_profile",
            Self::GetProfile => "get_profile",
            Self::AssignProfile => "assign_profile",
            Self::RemoveProfile => "remove_profile",
            Self::Disown => "disown",
        }
    }

    /// The endpoint with this short name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }

    /// Which endpoint a method and path address: `None` for an unknown path,
    /// `Some(Err(()))` for a known path with the wrong method.
    pub(crate) fn route(method: &http::Method, path: &str) -> Option<Result<Self, ()>> {
        use http::Method;
        let m = method;
        let endpoint = match path {
            "/session" => (m == Method::GET).then_some(Self::Session),
            "/account" => (m == Method::GET).then_some(Self::Account),
            "/server/devices" => (m == Method::POST).then_some(Self::FetchDevices),
            "/devices/sync" => (m == Method::POST).then_some(Self::SyncDevices),
            "/devices" => (m == Method::POST).then_some(Self::DeviceDetails),
            "/devices/disown" => (m == Method::POST).then_some(Self::Disown),
            "/profile" if m == Method::POST => Some(Self::DefineProfile),
            "/profile" if m == Method::GET => Some(Self::GetProfile),
            "/profile" => None,
            "/profile/devices" if m == Method::PUT || m == Method::POST => {
                Some(Self::AssignProfile)
            }
            "/profile/devices" if m == Method::DELETE => Some(Self::RemoveProfile),
            "/profile/devices" => None,
            _ => return None,
        };
        Some(endpoint.ok_or(()))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of the simulator's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests per endpoint, whatever the answer.
    pub requests: BTreeMap<Endpoint, u64>,
    /// The largest number of serial numbers in one assignment request.
    pub largest_assign_batch: usize,
    /// Session tokens issued by `/session`.
    pub sessions_issued: u64,
    /// Session tokens rotated through the `X-ADM-Auth-Session` response header.
    pub sessions_rotated: u64,
}

impl Counters {
    /// Requests to `endpoint` so far.
    pub fn count(&self, endpoint: Endpoint) -> u64 {
        self.requests.get(&endpoint).copied().unwrap_or(0)
    }
}

/// One request the simulator answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The HTTP method.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// The endpoint, when the path and method name one.
    pub endpoint: Option<Endpoint>,
    /// When it was answered (real wall clock).
    pub at: SystemTime,
}

/// The OAuth 1.0a credentials of one MDM server, as a server token carries them.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthCredentials {
    /// `consumer_key` (`CK_...`), one per organisation.
    pub consumer_key: String,
    /// `consumer_secret` (`CS_...`).
    pub consumer_secret: String,
    /// `access_token` (`AT_...`), one per MDM server and token download.
    pub access_token: String,
    /// `access_secret` (`AS_...`).
    pub access_secret: String,
    /// `access_token_expiry`.
    pub access_token_expiry: SystemTime,
}

impl fmt::Debug for OAuthCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets stay out of logs and assertion messages.
        f.debug_struct("OAuthCredentials")
            .field("consumer_key", &self.consumer_key)
            .field("access_token", &self.access_token)
            .field("access_token_expiry", &rfc3339(self.access_token_expiry))
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct TokenJson {
    consumer_key: String,
    consumer_secret: String,
    access_token: String,
    access_secret: String,
    access_token_expiry: String,
}

impl OAuthCredentials {
    /// The JSON object a server token frames between `-----BEGIN MESSAGE-----` and
    /// `-----END MESSAGE-----`, keys in ABM's order.
    pub fn to_token_json(&self) -> String {
        let json = TokenJson {
            consumer_key: self.consumer_key.clone(),
            consumer_secret: self.consumer_secret.clone(),
            access_token: self.access_token.clone(),
            access_secret: self.access_secret.clone(),
            access_token_expiry: rfc3339(self.access_token_expiry),
        };
        // Serialising a struct of strings cannot fail.
        serde_json::to_string(&json).unwrap_or_default()
    }

    /// Reads the JSON object of a decrypted server token.
    pub fn from_token_json(json: &str) -> Result<Self, AbmSimError> {
        let parsed: TokenJson = serde_json::from_str(json.trim())
            .map_err(|e| AbmSimError::TokenFormat(format!("token JSON: {e}")))?;
        let expiry = OffsetDateTime::parse(&parsed.access_token_expiry, &Rfc3339)
            .map_err(|e| AbmSimError::TokenFormat(format!("access_token_expiry: {e}")))?;
        Ok(Self {
            consumer_key: parsed.consumer_key,
            consumer_secret: parsed.consumer_secret,
            access_token: parsed.access_token,
            access_secret: parsed.access_secret,
            access_token_expiry: expiry.into(),
        })
    }

    /// Reads the decrypted MIME text of a server token (headers, blank line, the JSON
    /// framed by the `MESSAGE` markers).
    pub fn from_token_message(text: &str) -> Result<Self, AbmSimError> {
        const BEGIN: &str = "-----BEGIN MESSAGE-----";
        const END: &str = "-----END MESSAGE-----";
        let start = text
            .find(BEGIN)
            .ok_or_else(|| AbmSimError::TokenFormat("no BEGIN MESSAGE line".into()))?;
        let body = &text[start + BEGIN.len()..];
        let end = body
            .find(END)
            .ok_or_else(|| AbmSimError::TokenFormat("no END MESSAGE line".into()))?;
        Self::from_token_json(&body[..end])
    }
}

/// Formats a time as ABM does: RFC 3339, UTC, whole seconds (`2024-05-01T08:30:00Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let dt = OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_names() {
        use http::Method;
        assert_eq!(
            Endpoint::route(&Method::PUT, "/profile/devices"),
            Some(Ok(Endpoint::AssignProfile))
        );
        assert_eq!(
            Endpoint::route(&Method::DELETE, "/profile/devices"),
            Some(Ok(Endpoint::RemoveProfile))
        );
        assert_eq!(
            Endpoint::route(&Method::GET, "/profile"),
            Some(Ok(Endpoint::GetProfile))
        );
        assert_eq!(Endpoint::route(&Method::GET, "/devices"), Some(Err(())));
        assert_eq!(Endpoint::route(&Method::GET, "/nothing"), None);
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::from_name(e.as_str()), Some(e));
        }
    }

    #[test]
    fn token_json_round_trips_in_abm_order() {
        let creds = OAuthCredentials {
            consumer_key: "CK_1".into(),
            consumer_secret: "CS_2".into(),
            access_token: "AT_3".into(),
            access_secret: "AS_4".into(),
            access_token_expiry: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        let json = creds.to_token_json();
        assert!(json.starts_with("{\"consumer_key\":\"CK_1\",\"consumer_secret\""));
        assert!(json.contains("\"access_token_expiry\":\"2023-11-14T22:13:20Z\""));
        assert_eq!(OAuthCredentials::from_token_json(&json).unwrap(), creds);
        let message =
            format!("X: y\r\n\r\n-----BEGIN MESSAGE-----\r\n{json}\r\n-----END MESSAGE-----\r\n");
        assert_eq!(
            OAuthCredentials::from_token_message(&message).unwrap(),
            creds
        );
        assert!(OAuthCredentials::from_token_message("nothing").is_err());
        assert!(!format!("{creds:?}").contains("CS_2"));
    }
}
