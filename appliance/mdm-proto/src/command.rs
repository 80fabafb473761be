//! Commands: what the server answers to a report, `{CommandUUID, Command: {RequestType, ...}}`.
//! See Apple's
//! [Commands and queries](https://developer.apple.com/documentation/devicemanagement/commands-and-queries).

use std::fmt;
use std::str::FromStr;

use plist::{Dictionary, Value};

use crate::fields::{kind_of, parse_dict, to_xml};
use crate::ProtoError;

/// A command ready to queue: the `CommandUUID` and the full command plist bytes (XML) of
/// `{CommandUUID, Command: {RequestType, ...}}`.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandPayload {
    /// `CommandUUID`; the device echoes it in its report.
    pub uuid: String,
    /// `Command.RequestType`.
    pub request_type: String,
    /// The XML plist to send as the response body.
    pub plist: Vec<u8>,
}

impl fmt::Debug for CommandPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Commands can carry PINs and profiles; never print the body.
        f.debug_struct("CommandPayload")
            .field("uuid", &self.uuid)
            .field("request_type", &self.request_type)
            .field("plist_len", &self.plist.len())
            .finish()
    }
}

/// A sensible default `Queries` list for [`Command::DeviceInformation`]: identity, OS and
/// hardware keys Apple documents for
/// [DeviceInformation](https://developer.apple.com/documentation/devicemanagement/deviceinformationcommand).
/// Keys a platform does not support are simply left out of the device's answer.
pub const DEFAULT_DEVICE_INFORMATION_QUERIES: &[&str] = &[
    "UDID",
    "DeviceName",
    "OSVersion",
    "BuildVersion",
    "ModelName",
    "Model",
    "ProductName",
    "SerialNumber",
    "IMEI",
    "MEID",
    "DeviceCapacity",
    "AvailableDeviceCapacity",
    "BatteryLevel",
    "WiFiMAC",
    "BluetoothMAC",
    "IsSupervised",
    "IsMultiUser",
    "IsActivationLockEnabled",
    "IsDeviceLocatorServiceEnabled",
    "IsCloudBackupEnabled",
    "AwaitingConfiguration",
];

/// Typed builders for the commands the appliance sends, each producing Apple's `Command`
/// dictionary. Anything else can be sent as a raw plist through [`payload_from_raw`].
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// [DeviceInformation](https://developer.apple.com/documentation/devicemanagement/deviceinformationcommand):
    /// `Queries`.
    DeviceInformation {
        /// The query keys; see [`DEFAULT_DEVICE_INFORMATION_QUERIES`].
        queries: Vec<String>,
    },
    /// [SecurityInfo](https://developer.apple.com/documentation/devicemanagement/securityinfocommand).
    SecurityInfo,
    /// [ProfileList](https://developer.apple.com/documentation/devicemanagement/profilelistcommand).
    ProfileList,
    /// [InstalledApplicationList](https://developer.apple.com/documentation/devicemanagement/installedapplicationlistcommand).
    InstalledApplicationList {
        /// `ManagedAppsOnly`.
        managed_apps_only: bool,
        /// `Identifiers`: limit the answer to these bundle ids (empty: all apps).
        identifiers: Vec<String>,
    },
    /// [CertificateList](https://developer.apple.com/documentation/devicemanagement/certificatelistcommand).
    CertificateList {
        /// `ManagedOnly`.
        managed_only: bool,
    },
    /// [InstallProfile](https://developer.apple.com/documentation/devicemanagement/installprofilecommand).
    InstallProfile {
        /// `Payload`: the (signed or unsigned) `.mobileconfig` bytes.
        payload: Vec<u8>,
    },
    /// [RemoveProfile](https://developer.apple.com/documentation/devicemanagement/removeprofilecommand).
    RemoveProfile {
        /// `Identifier`: the profile's `PayloadIdentifier`.
        identifier: String,
    },
    /// [DeviceConfigured](https://developer.apple.com/documentation/devicemanagement/deviceconfiguredcommand):
    /// releases a device waiting in Setup Assistant.
    DeviceConfigured,
    /// [DeviceLock](https://developer.apple.com/documentation/devicemanagement/devicelockcommand).
    DeviceLock {
        /// `PIN` (macOS Find My PIN).
        pin: Option<String>,
        /// `Message` for the Lock Screen.
        message: Option<String>,
        /// `PhoneNumber` for the Lock Screen.
        phone_number: Option<String>,
    },
    /// [EraseDevice](https://developer.apple.com/documentation/devicemanagement/erasedevicecommand).
    /// WARNING: irreversibly wipes the device.
    EraseDevice {
        /// `PIN` (macOS Find My PIN).
        pin: Option<String>,
        /// `PreserveDataPlan` (eSIM).
        preserve_data_plan: bool,
        /// `DisallowProximitySetup`.
        disallow_proximity_setup: bool,
    },
    /// [RestartDevice](https://developer.apple.com/documentation/devicemanagement/restartdevicecommand).
    RestartDevice {
        /// `NotifyUser` (macOS): ask the user instead of restarting at once.
        notify_user: bool,
    },
    /// [ShutDownDevice](https://developer.apple.com/documentation/devicemanagement/shutdowndevicecommand).
    ShutDownDevice,
    /// [Settings](https://developer.apple.com/documentation/devicemanagement/settingscommand):
    /// `Settings`, one dictionary (with an `Item` key) per setting.
    Settings {
        /// The setting dictionaries.
        settings: Vec<Dictionary>,
    },
}

/// The `RequestType`s [`Command::from_str`] understands, in documentation order.
pub const KNOWN_COMMANDS: &[&str] = &[
    "DeviceInformation",
    "SecurityInfo",
    "ProfileList",
    "InstalledApplicationList",
    "CertificateList",
    "InstallProfile",
    "RemoveProfile",
    "DeviceConfigured",
    "DeviceLock",
    "EraseDevice",
    "RestartDevice",
    "ShutDownDevice",
    "Settings",
];

fn string_array(items: &[String]) -> Value {
    Value::Array(items.iter().cloned().map(Value::String).collect())
}

impl Command {
    /// Apple's `RequestType`.
    pub fn request_type(&self) -> &'static str {
        match self {
            Self::DeviceInformation { .. } => "DeviceInformation",
            Self::SecurityInfo => "SecurityInfo",
            Self::ProfileList => "ProfileList",
            Self::InstalledApplicationList { .. } => "InstalledApplicationList",
            Self::CertificateList { .. } => "CertificateList",
            Self::InstallProfile { .. } => "InstallProfile",
            Self::RemoveProfile { .. } => "RemoveProfile",
            Self::DeviceConfigured => "DeviceConfigured",
            Self::DeviceLock { .. } => "DeviceLock",
            Self::EraseDevice { .. } => "EraseDevice",
            Self::RestartDevice { .. } => "RestartDevice",
            Self::ShutDownDevice => "ShutDownDevice",
            Self::Settings { .. } => "Settings",
        }
    }

    /// The `Command` dictionary, with Apple's key names.
    pub fn to_dictionary(&self) -> Dictionary {
        let mut d = Dictionary::new();
        let mut put = |k: &str, v: Value| {
            d.insert(k.to_owned(), v);
        };
        put("RequestType", Value::String(self.request_type().to_owned()));
        match self {
            Self::DeviceInformation { queries } => put("Queries", string_array(queries)),
            Self::InstalledApplicationList {
                managed_apps_only,
                identifiers,
            } => {
                put("ManagedAppsOnly", Value::Boolean(*managed_apps_only));
                // An empty list would ask for no apps at all on some OS versions; leaving the
                // key out asks for every app, which is what "no filter" means.
                if !identifiers.is_empty() {
                    put("Identifiers", string_array(identifiers));
                }
            }
            Self::CertificateList { managed_only } => {
                put("ManagedOnly", Value::Boolean(*managed_only));
            }
            Self::InstallProfile { payload } => put("Payload", Value::Data(payload.clone())),
            Self::RemoveProfile { identifier } => {
                put("Identifier", Value::String(identifier.clone()));
            }
            Self::DeviceLock {
                pin,
                message,
                phone_number,
            } => {
                for (key, value) in [
                    ("PIN", pin),
                    ("Message", message),
                    ("PhoneNumber", phone_number),
                ] {
                    if let Some(v) = value {
                        put(key, Value::String(v.clone()));
                    }
                }
            }
            Self::EraseDevice {
                pin,
                preserve_data_plan,
                disallow_proximity_setup,
            } => {
                if let Some(pin) = pin {
                    put("PIN", Value::String(pin.clone()));
                }
                // Only sent when true: before iOS 14, DisallowProximitySetup must not be
                // combined with any other option, so a `false` must not appear either.
                if *preserve_data_plan {
                    put("PreserveDataPlan", Value::Boolean(true));
                }
                if *disallow_proximity_setup {
                    put("DisallowProximitySetup", Value::Boolean(true));
                }
            }
            Self::RestartDevice { notify_user } => {
                // NotifyUser exists only on macOS 11.3+; omitting it keeps older systems and
                // iOS on their documented default.
                if *notify_user {
                    put("NotifyUser", Value::Boolean(true));
                }
            }
            Self::Settings { settings } => put(
                "Settings",
                Value::Array(settings.iter().cloned().map(Value::Dictionary).collect()),
            ),
            Self::SecurityInfo
            | Self::ProfileList
            | Self::DeviceConfigured
            | Self::ShutDownDevice => {}
        }
        d
    }

    /// The full command plist for `uuid`.
    ///
    /// Fails only if the plist cannot be written as XML, which can happen for a
    /// [`Command::Settings`] holding a binary-only `UID` value, or if `uuid` is empty.
    pub fn to_payload(&self, uuid: String) -> Result<CommandPayload, ProtoError> {
        envelope(
            uuid,
            self.request_type().to_owned(),
            self.to_dictionary(),
            Dictionary::new(),
        )
    }
}

/// Builds `{CommandUUID, Command, ...extra}`; `extra` never overrides the first two.
fn envelope(
    uuid: String,
    request_type: String,
    command: Dictionary,
    extra: Dictionary,
) -> Result<CommandPayload, ProtoError> {
    if uuid.is_empty() {
        return Err(ProtoError::InvalidField {
            field: "CommandUUID",
            reason: "is empty".to_owned(),
        });
    }
    let mut top = Dictionary::new();
    top.insert("CommandUUID".to_owned(), Value::String(uuid.clone()));
    top.insert("Command".to_owned(), Value::Dictionary(command));
    for (k, v) in extra {
        if k != "CommandUUID" && k != "Command" {
            top.insert(k, v);
        }
    }
    Ok(CommandPayload {
        plist: to_xml(&Value::Dictionary(top))?,
        uuid,
        request_type,
    })
}

impl FromStr for Command {
    type Err = ProtoError;

    /// Parses a command type name (as typed on the CLI, case-insensitive) into a command with
    /// default arguments. Commands that cannot have defaults (`InstallProfile`,
    /// `RemoveProfile`, `Settings`) are refused with [`ProtoError::CommandNeedsArguments`].
    ///
    /// WARNING: `EraseDevice` parses like any other name; the caller must confirm with the
    /// admin before queueing it.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let Some(canonical) = KNOWN_COMMANDS
            .iter()
            .find(|known| known.eq_ignore_ascii_case(name.trim()))
        else {
            return Err(ProtoError::UnknownCommand {
                name: name.to_owned(),
                known: KNOWN_COMMANDS.join(", "),
            });
        };
        let needs = |command, needs| Err(ProtoError::CommandNeedsArguments { command, needs });
        Ok(match *canonical {
            "DeviceInformation" => Self::DeviceInformation {
                queries: DEFAULT_DEVICE_INFORMATION_QUERIES
                    .iter()
                    .map(|q| (*q).to_owned())
                    .collect(),
            },
            "SecurityInfo" => Self::SecurityInfo,
            "ProfileList" => Self::ProfileList,
            "InstalledApplicationList" => Self::InstalledApplicationList {
                managed_apps_only: false,
                identifiers: Vec::new(),
            },
            "CertificateList" => Self::CertificateList {
                managed_only: false,
            },
            "InstallProfile" => return needs("InstallProfile", "a profile payload"),
            "RemoveProfile" => return needs("RemoveProfile", "a profile identifier"),
            "DeviceConfigured" => Self::DeviceConfigured,
            "DeviceLock" => Self::DeviceLock {
                pin: None,
                message: None,
                phone_number: None,
            },
            "EraseDevice" => Self::EraseDevice {
                pin: None,
                preserve_data_plan: false,
                disallow_proximity_setup: false,
            },
            "RestartDevice" => Self::RestartDevice { notify_user: false },
            "ShutDownDevice" => Self::ShutDownDevice,
            "Settings" => return needs("Settings", "a list of setting dictionaries"),
            other => {
                // KNOWN_COMMANDS and this match are kept in step by the `every_known_name`
                // test; reaching this means they drifted.
                return Err(ProtoError::UnknownCommand {
                    name: other.to_owned(),
                    known: KNOWN_COMMANDS.join(", "),
                });
            }
        })
    }
}

/// Validates an admin-supplied raw command plist (XML or binary): it must be a dictionary
/// whose `Command` is a dictionary with a non-empty string `RequestType`. `CommandUUID` is
/// set (or overwritten) to `uuid`; every other key is kept as given.
pub fn payload_from_raw(raw: &[u8], uuid: String) -> Result<CommandPayload, ProtoError> {
    let mut top = parse_dict(raw)?;
    let command = match top.remove("Command") {
        Some(Value::Dictionary(d)) => d,
        Some(other) => {
            return Err(ProtoError::InvalidField {
                field: "Command",
                reason: format!("expected a dictionary, found {}", kind_of(&other)),
            })
        }
        None => return Err(ProtoError::MissingField("Command")),
    };
    let request_type = match command.get("RequestType") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(ProtoError::InvalidField {
                field: "Command.RequestType",
                reason: "is empty".to_owned(),
            })
        }
        Some(other) => {
            return Err(ProtoError::InvalidField {
                field: "Command.RequestType",
                reason: format!("expected a string, found {}", kind_of(other)),
            })
        }
        None => return Err(ProtoError::MissingField("Command.RequestType")),
    };
    // Extra top-level keys the admin wrote are kept: Apple defines none today, but the
    // protocol does not forbid them and a raw command is the admin's escape hatch.
    envelope(uuid, request_type, command, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_name_parses_or_needs_arguments() {
        for name in KNOWN_COMMANDS {
            match name.parse::<Command>() {
                Ok(cmd) => assert_eq!(cmd.request_type(), *name),
                Err(ProtoError::CommandNeedsArguments { command, .. }) => {
                    assert_eq!(command, *name)
                }
                Err(e) => panic!("{name}: {e}"),
            }
        }
        assert_eq!(
            "deviceinformation"
                .parse::<Command>()
                .unwrap()
                .request_type(),
            "DeviceInformation"
        );
    }

    #[test]
    fn unknown_name_lists_known_ones() {
        let err = "Reboot".parse::<Command>().unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ProtoError::UnknownCommand { .. }));
        assert!(
            text.contains("RestartDevice") && text.contains("DeviceLock"),
            "{text}"
        );
    }

    #[test]
    fn erase_device_sends_only_true_options() {
        let d = Command::EraseDevice {
            pin: None,
            preserve_data_plan: false,
            disallow_proximity_setup: true,
        }
        .to_dictionary();
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d.get("DisallowProximitySetup"), Some(&Value::Boolean(true)));
        assert!(d.get("PreserveDataPlan").is_none());
    }

    #[test]
    fn settings_with_uid_cannot_be_written_as_xml() {
        let mut item = Dictionary::new();
        item.insert("Item".into(), Value::String("DeviceName".into()));
        item.insert("Bogus".into(), Value::Uid(plist::Uid::new(1)));
        let err = Command::Settings {
            settings: vec![item],
        }
        .to_payload("U".into())
        .unwrap_err();
        assert!(matches!(err, ProtoError::Encode(_)), "{err}");
    }

    #[test]
    fn empty_uuid_is_refused() {
        assert!(matches!(
            Command::ProfileList.to_payload(String::new()),
            Err(ProtoError::InvalidField {
                field: "CommandUUID",
                ..
            })
        ));
    }
}
