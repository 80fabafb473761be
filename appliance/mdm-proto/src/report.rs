//! Command reports: what devices PUT to the `ServerURL` to ask for work and to answer
//! commands. See Apple's
//! [Commands and queries](https://developer.apple.com/documentation/devicemanagement/commands-and-queries).

use std::fmt;
use std::str::FromStr;

use plist::{Dictionary, Value};
use serde::Deserialize;

use crate::checkin::CheckinMessage;
use crate::enrollment::{Enrollment, EnrollmentRef};
use crate::fields::{kind_of, parse_dict, parse_keys, Fields};
use crate::ProtoError;

/// The `Status` of a command report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandStatus {
    /// `Idle`: the device has no result to report and asks for the next command.
    Idle,
    /// `Acknowledged`: the command succeeded; the rest of the report is its result.
    Acknowledged,
    /// `Error`: the command failed; see the `ErrorChain`.
    Error,
    /// `CommandFormatError`: the device could not understand the command.
    CommandFormatError,
    /// `NotNow`: the device cannot run it now (locked, busy); it stays queued and the device
    /// will check in again later.
    NotNow,
}

impl CommandStatus {
    /// Apple's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "Idle",
            Self::Acknowledged => "Acknowledged",
            Self::Error => "Error",
            Self::CommandFormatError => "CommandFormatError",
            Self::NotNow => "NotNow",
        }
    }

    /// True for the statuses that end a command's life in the queue (`NotNow` and `Idle`
    /// do not).
    pub fn completes_command(self) -> bool {
        matches!(
            self,
            Self::Acknowledged | Self::Error | Self::CommandFormatError
        )
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CommandStatus {
    type Err = ProtoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "Idle" => Self::Idle,
            "Acknowledged" => Self::Acknowledged,
            "Error" => Self::Error,
            "CommandFormatError" => Self::CommandFormatError,
            "NotNow" => Self::NotNow,
            other => {
                return Err(ProtoError::InvalidField {
                    field: "Status",
                    reason: format!(
                    "{other:?} is not one of Idle, Acknowledged, Error, CommandFormatError, NotNow"
                ),
                })
            }
        })
    }
}

/// One entry of a report's `ErrorChain`, outermost error first. See e.g.
/// [DeviceLockResponse.ErrorChainItem](https://developer.apple.com/documentation/devicemanagement/devicelockresponse/errorchainitem).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorChainItem {
    /// `ErrorCode`.
    pub error_code: i64,
    /// `ErrorDomain`, e.g. `MCMDMErrorDomain`.
    pub error_domain: String,
    /// `LocalizedDescription`, in the device's language.
    pub localized_description: Option<String>,
    /// `USEnglishDescription`.
    pub us_english_description: Option<String>,
}

impl ErrorChainItem {
    fn from_value(value: &Value) -> Result<Self, ProtoError> {
        let Value::Dictionary(d) = value else {
            return Err(ProtoError::InvalidField {
                field: "ErrorChain",
                reason: format!("items must be dictionaries, found {}", kind_of(value)),
            });
        };
        let f = Fields::new(d);
        Ok(Self {
            error_code: f
                .opt_integer_as("ErrorCode", "ErrorChain.ErrorCode")?
                .ok_or(ProtoError::MissingField("ErrorChain.ErrorCode"))?,
            error_domain: f
                .opt_string_as("ErrorDomain", "ErrorChain.ErrorDomain")?
                .ok_or(ProtoError::MissingField("ErrorChain.ErrorDomain"))?,
            localized_description: f
                .opt_string_as("LocalizedDescription", "ErrorChain.LocalizedDescription")?,
            us_english_description: f
                .opt_string_as("USEnglishDescription", "ErrorChain.USEnglishDescription")?,
        })
    }
}

impl fmt::Display for ErrorChainItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.error_domain, self.error_code)?;
        if let Some(text) = self
            .us_english_description
            .as_ref()
            .or(self.localized_description.as_ref())
        {
            write!(f, ": {text}")?;
        }
        Ok(())
    }
}

/// A command report: the device's answer to the previous command (or `Idle`).
///
/// Only the keys every report has are parsed; the command-specific result (e.g.
/// `QueryResponses`) stays in [`CommandReport::raw`] for whoever understands that command.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandReport {
    /// `Status`.
    pub status: CommandStatus,
    /// `CommandUUID` of the command this answers; `None` only for `Idle`.
    pub command_uuid: Option<String>,
    /// The channel it came from.
    pub enrollment: EnrollmentRef,
    /// `ErrorChain`, empty unless the status is `Error` or `CommandFormatError`.
    pub error_chain: Vec<ErrorChainItem>,
    /// The report exactly as received.
    pub raw: Vec<u8>,
}

impl CommandReport {
    fn from_dict(dict: &Dictionary, raw: &[u8]) -> Result<Self, ProtoError> {
        let f = Fields::new(dict);
        let status: CommandStatus = f.non_empty_string("Status")?.parse()?;
        let command_uuid = f.opt_string("CommandUUID")?.filter(|u| !u.is_empty());
        if status != CommandStatus::Idle && command_uuid.is_none() {
            return Err(ProtoError::MissingField("CommandUUID"));
        }
        let error_chain = f
            .opt_array("ErrorChain")?
            .unwrap_or_default()
            .iter()
            .map(ErrorChainItem::from_value)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            status,
            command_uuid,
            enrollment: Enrollment::from_fields(&f)?.enrollment_ref(),
            error_chain,
            raw: raw.to_vec(),
        })
    }

    /// The parsed report dictionary, for reading command-specific result keys.
    pub fn body(&self) -> Result<Dictionary, ProtoError> {
        parse_dict(&self.raw)
    }
}

impl fmt::Debug for CommandReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Results can be large (application lists) and hold personal data; show the size only.
        f.debug_struct("CommandReport")
            .field("status", &self.status)
            .field("command_uuid", &self.command_uuid)
            .field("enrollment", &self.enrollment)
            .field("error_chain", &self.error_chain)
            .field("raw_len", &self.raw.len())
            .finish()
    }
}

/// The top-level keys a report is read from ([`CommandReport::from_dict`] and
/// [`Enrollment::from_fields`]), and `MessageType`, which marks a check-in instead.
///
/// Reading a report through this builds the values of these keys only. The command's result
/// (a profile or application list, say) is most of a report and is kept as received in
/// [`CommandReport::raw`], so building it as a tree on every request would be wasted work.
#[derive(Deserialize)]
struct ReportKeys {
    #[serde(rename = "MessageType")]
    message_type: Option<Value>,
    #[serde(rename = "Status")]
    status: Option<Value>,
    #[serde(rename = "CommandUUID")]
    command_uuid: Option<Value>,
    #[serde(rename = "ErrorChain")]
    error_chain: Option<Value>,
    #[serde(rename = "UDID")]
    udid: Option<Value>,
    #[serde(rename = "EnrollmentID")]
    enrollment_id: Option<Value>,
    #[serde(rename = "EnrollmentUserID")]
    enrollment_user_id: Option<Value>,
    #[serde(rename = "UserID")]
    user_id: Option<Value>,
    #[serde(rename = "UserShortName")]
    user_short_name: Option<Value>,
    #[serde(rename = "UserLongName")]
    user_long_name: Option<Value>,
    #[serde(rename = "Topic")]
    topic: Option<Value>,
}

impl ReportKeys {
    /// The keys of a report, if `body` reads as one: a dictionary with `Status` and without
    /// `MessageType`, each key once. Anything else, including a malformed body, is `None`,
    /// and the caller parses the whole body, which names what is wrong with it.
    fn read(body: &[u8]) -> Option<Dictionary> {
        let keys: ReportKeys = parse_keys(body).ok()?;
        if keys.message_type.is_some() || keys.status.is_none() {
            return None;
        }
        let mut dict = Dictionary::new();
        for (key, value) in [
            ("Status", keys.status),
            ("CommandUUID", keys.command_uuid),
            ("ErrorChain", keys.error_chain),
            ("UDID", keys.udid),
            ("EnrollmentID", keys.enrollment_id),
            ("EnrollmentUserID", keys.enrollment_user_id),
            ("UserID", keys.user_id),
            ("UserShortName", keys.user_short_name),
            ("UserLongName", keys.user_long_name),
            ("Topic", keys.topic),
        ] {
            if let Some(value) = value {
                dict.insert(key.to_owned(), value);
            }
        }
        Some(dict)
    }
}

/// Parses a command report (XML or binary plist).
pub fn parse_report(body: &[u8]) -> Result<CommandReport, ProtoError> {
    match ReportKeys::read(body) {
        Some(keys) => CommandReport::from_dict(&keys, body),
        None => CommandReport::from_dict(&parse_dict(body)?, body),
    }
}

/// Anything a device sends to the `ServerURL`.
// One value per request, consumed at once and never stored in bulk: boxing the larger
// variant would only cost callers a deref.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceMessage {
    /// A check-in message (has `MessageType`).
    Checkin(CheckinMessage),
    /// A command report (has `Status`).
    Report(CommandReport),
}

/// Tells a check-in (has `MessageType`) from a report (has `Status`), since devices send
/// check-ins to the `ServerURL` when the profile has no `CheckInURL`.
pub fn parse_device_message(body: &[u8]) -> Result<DeviceMessage, ProtoError> {
    // Reports are nearly every request a device makes.
    if let Some(keys) = ReportKeys::read(body) {
        return CommandReport::from_dict(&keys, body).map(DeviceMessage::Report);
    }
    let dict = parse_dict(body)?;
    if dict.contains_key("MessageType") {
        CheckinMessage::from_dict(&dict).map(DeviceMessage::Checkin)
    } else if dict.contains_key("Status") {
        CommandReport::from_dict(&dict, body).map(DeviceMessage::Report)
    } else {
        Err(ProtoError::NotADeviceMessage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for s in [
            CommandStatus::Idle,
            CommandStatus::Acknowledged,
            CommandStatus::Error,
            CommandStatus::CommandFormatError,
            CommandStatus::NotNow,
        ] {
            assert_eq!(s.as_str().parse::<CommandStatus>().unwrap(), s);
        }
        assert!("idle".parse::<CommandStatus>().is_err());
        assert!(CommandStatus::Error.completes_command());
        assert!(!CommandStatus::NotNow.completes_command());
        assert!(!CommandStatus::Idle.completes_command());
    }

    /// A report with every key a report is read from, a user channel's ids among them, and
    /// a result far larger than the rest.
    fn full_report(status: &str) -> Dictionary {
        let mut d = Dictionary::new();
        for (k, v) in [
            ("Status", status),
            ("CommandUUID", "0C4C1F3A-6F38-4D44-9E6C-0D2E5A4B7A11"),
            ("UDID", "00008030-000A1B2C3D4E5F60"),
            ("EnrollmentUserID", "AB12"),
            ("UserID", "A1B2C3D4-0000-1111-2222-333344445555"),
            ("UserShortName", "jdoe"),
            ("UserLongName", "Jane Doe"),
            ("Topic", "com.apple.mgmt.External.test"),
        ] {
            d.insert(k.into(), Value::String(v.into()));
        }
        let mut item = Dictionary::new();
        item.insert("ErrorCode".into(), Value::Integer(12021.into()));
        item.insert(
            "ErrorDomain".into(),
            Value::String("MCMDMErrorDomain".into()),
        );
        item.insert(
            "USEnglishDescription".into(),
            Value::String("Unknown command".into()),
        );
        d.insert(
            "ErrorChain".into(),
            Value::Array(vec![Value::Dictionary(item)]),
        );
        let profiles = (0..200)
            .map(|i| {
                let mut p = Dictionary::new();
                p.insert(
                    "PayloadIdentifier".into(),
                    Value::String(format!("com.example.{i}")),
                );
                p.insert("PayloadContent".into(), Value::Data(vec![7; 64]));
                p.insert("IsManaged".into(), Value::Boolean(true));
                Value::Dictionary(p)
            })
            .collect();
        d.insert("ProfileList".into(), Value::Array(profiles));
        d
    }

    fn xml(d: &Dictionary) -> Vec<u8> {
        crate::fields::to_xml(&Value::Dictionary(d.clone())).unwrap()
    }

    fn binary(d: &Dictionary) -> Vec<u8> {
        let mut out = Vec::new();
        Value::Dictionary(d.clone())
            .to_writer_binary(&mut out)
            .unwrap();
        out
    }

    /// The whole-tree parse, which the report keys must agree with.
    fn parsed_whole(body: &[u8]) -> Result<CommandReport, ProtoError> {
        CommandReport::from_dict(&parse_dict(body)?, body)
    }

    #[test]
    fn reading_the_report_keys_agrees_with_the_whole_parse() {
        for status in ["Acknowledged", "Error", "NotNow", "Idle"] {
            let mut reports = vec![full_report(status)];
            // A device channel, and a User Enrollment (EnrollmentID instead of UDID).
            let mut device = full_report(status);
            for k in [
                "EnrollmentUserID",
                "UserID",
                "UserShortName",
                "UserLongName",
            ] {
                device.remove(k);
            }
            let mut byod = device.clone();
            byod.remove("UDID");
            byod.insert("EnrollmentID".into(), Value::String("ENR-1".into()));
            reports.extend([device, byod]);
            for d in &reports {
                for body in [xml(d), binary(d)] {
                    assert!(ReportKeys::read(&body).is_some(), "{status}");
                    let whole = parsed_whole(&body).unwrap();
                    assert_eq!(parse_report(&body).unwrap(), whole);
                    assert_eq!(
                        parse_device_message(&body).unwrap(),
                        DeviceMessage::Report(whole)
                    );
                }
            }
        }
    }

    #[test]
    fn a_bad_report_key_is_named_as_by_the_whole_parse() {
        let date = plist::Date::from(std::time::UNIX_EPOCH);
        let cases: [(&str, Value); 6] = [
            ("UDID", Value::Integer(5.into())),
            ("UserID", Value::Date(date)),
            ("EnrollmentID", Value::Real(1.5)),
            ("Status", Value::String("Finished".into())),
            ("ErrorChain", Value::Array(vec![Value::Boolean(true)])),
            ("CommandUUID", Value::Data(vec![1])),
        ];
        for (key, value) in cases {
            let mut d = full_report("Error");
            d.insert(key.into(), value);
            for body in [xml(&d), binary(&d)] {
                let fast = parse_report(&body).unwrap_err().to_string();
                assert_eq!(fast, parsed_whole(&body).unwrap_err().to_string(), "{key}");
                assert!(fast.contains(key), "{key}: {fast}");
            }
        }
    }

    #[test]
    fn what_the_report_keys_cannot_read_goes_to_the_whole_parse() {
        // A key given twice: serde refuses it, the whole parse keeps the last.
        let twice = br#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict>
<key>Status</key><string>Error</string>
<key>Status</key><string>Idle</string>
<key>UDID</key><string>U1</string>
</dict></plist>"#;
        assert!(ReportKeys::read(twice).is_none());
        assert_eq!(parse_report(twice).unwrap(), parsed_whole(twice).unwrap());
        // A check-in sent to the ServerURL.
        let checkin = br#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict>
<key>MessageType</key><string>Authenticate</string>
<key>Status</key><string>Idle</string>
<key>UDID</key><string>U1</string>
<key>Topic</key><string>com.apple.mgmt.External.test</string>
</dict></plist>"#;
        assert!(ReportKeys::read(checkin).is_none());
        assert!(matches!(
            parse_device_message(checkin),
            Ok(DeviceMessage::Checkin(_))
        ));
        // Not a dictionary, and not a plist.
        let array = br#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><array><string>Idle</string></array></plist>"#;
        assert!(matches!(
            parse_report(array),
            Err(ProtoError::NotADictionary { found: "array" })
        ));
        let truncated = &xml(&full_report("Idle"))[..300];
        assert!(matches!(
            parse_report(truncated),
            Err(ProtoError::NotAPlist(_))
        ));
    }

    #[test]
    fn error_chain_item_displays_english_text() {
        let item = ErrorChainItem {
            error_code: 12021,
            error_domain: "MCMDMErrorDomain".into(),
            localized_description: Some("Fehler".into()),
            us_english_description: Some("Unknown command".into()),
        };
        assert_eq!(item.to_string(), "MCMDMErrorDomain 12021: Unknown command");
    }
}
