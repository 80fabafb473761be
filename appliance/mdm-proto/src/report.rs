//! Command reports: what devices PUT to the `ServerURL` to ask for work and to answer
//! commands. See Apple's
//! [Commands and queries](https://developer.apple.com/documentation/devicemanagement/commands-and-queries).

use std::fmt;
use std::str::FromStr;

use plist::{Dictionary, Value};

use crate::checkin::CheckinMessage;
use crate::enrollment::{Enrollment, EnrollmentRef};
use crate::fields::{kind_of, parse_dict, Fields};
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

/// Parses a command report (XML or binary plist).
pub fn parse_report(body: &[u8]) -> Result<CommandReport, ProtoError> {
    CommandReport::from_dict(&parse_dict(body)?, body)
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
