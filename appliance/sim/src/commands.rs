//! The command loop: report `Idle` to the ServerURL, answer each command the server
//! returns with a realistic report, until the server answers with an empty body.

use der::Encode;
use plist::{Dictionary, Value};

use crate::checkin::parse_dict;
use crate::device::{plist_xml, DeviceKind, SimDevice};
use crate::error::DeviceError;
use crate::profile;
use crate::x509;

/// Content type of command reports.
pub const REPORT_CONTENT_TYPE: &str = "application/x-apple-aspen-mdm";

/// The `Status` of a command report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandStatus {
    /// The command was carried out.
    Acknowledged,
    /// The command failed; the report has an `ErrorChain`.
    Error,
    /// The command could not be parsed.
    CommandFormatError,
    /// The device cannot do it now; the server should retry later.
    NotNow,
}

impl CommandStatus {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Acknowledged => "Acknowledged",
            Self::Error => "Error",
            Self::CommandFormatError => "CommandFormatError",
            Self::NotNow => "NotNow",
        }
    }
}

/// One command the device received and how it answered.
#[derive(Debug, Clone)]
pub struct ProcessedCommand {
    /// `CommandUUID` (empty if the server omitted it).
    pub command_uuid: String,
    /// `Command.RequestType` (empty if missing).
    pub request_type: String,
    /// The status reported.
    pub status: CommandStatus,
    /// The `Command` dictionary as received.
    pub command: Dictionary,
    /// The report sent back.
    pub report: Dictionary,
}

/// An `ErrorChain` entry as devices report them.
fn error_chain(code: i64, domain: &str, description: &str) -> Value {
    let mut e = Dictionary::new();
    e.insert("ErrorCode".into(), code.into());
    e.insert("ErrorDomain".into(), domain.into());
    e.insert("LocalizedDescription".into(), description.into());
    e.insert("USEnglishDescription".into(), description.into());
    Value::Array(vec![Value::Dictionary(e)])
}

// MCMDMErrorDomain codes from Apple's published MDM error-code tables.
const MDM_DOMAIN: &str = "MCMDMErrorDomain";
const INVALID_REQUEST_TYPE: i64 = 12021;
const PROFILE_NOT_INSTALLED: i64 = 12075;
const PROFILE_NOT_MANAGED: i64 = 12013;
const PROFILE_DOMAIN: &str = "MCProfileErrorDomain";
const MALFORMED_PROFILE: i64 = 1000;
// Apple does not publish the error for DeviceConfigured outside Setup Assistant; the
// project's protocol digest records 101, the domain name is the configuration
// subsystem's. Servers should key on Status=Error, not on these values.
const CLOUD_CONFIG_DOMAIN: &str = "MCCloudConfigErrorDomain";
const NOT_AWAITING_CONFIGURATION: i64 = 101;

enum Outcome {
    Ack(Dictionary),
    Error(Value),
}

impl SimDevice {
    /// The `Idle` report that opens a command session.
    pub fn idle_report(&self) -> Dictionary {
        let mut d = Dictionary::new();
        d.insert("UDID".into(), self.udid.clone().into());
        d.insert("Status".into(), "Idle".into());
        d
    }

    /// Decides how to answer one command envelope (`{CommandUUID, Command}`) and
    /// applies its effect on the device. No I/O.
    pub fn respond_to_command(&mut self, envelope: &Dictionary) -> ProcessedCommand {
        let command_uuid = envelope
            .get("CommandUUID")
            .and_then(Value::as_string)
            .unwrap_or_default()
            .to_owned();
        let command = envelope
            .get("Command")
            .and_then(Value::as_dictionary)
            .cloned()
            .unwrap_or_default();
        let request_type = command
            .get("RequestType")
            .and_then(Value::as_string)
            .unwrap_or_default()
            .to_owned();

        let mut report = Dictionary::new();
        report.insert("UDID".into(), self.udid.clone().into());
        report.insert("CommandUUID".into(), command_uuid.clone().into());

        let status = if command_uuid.is_empty() || request_type.is_empty() {
            CommandStatus::CommandFormatError
        } else if self.commands.not_now_next > 0 {
            self.commands.not_now_next -= 1;
            CommandStatus::NotNow
        } else if self.commands.not_now_request_types.contains(&request_type) {
            CommandStatus::NotNow
        } else {
            match self.execute(&request_type, &command) {
                Outcome::Ack(payload) => {
                    for (k, v) in payload {
                        report.insert(k, v);
                    }
                    CommandStatus::Acknowledged
                }
                Outcome::Error(chain) => {
                    report.insert("ErrorChain".into(), chain);
                    CommandStatus::Error
                }
            }
        };
        report.insert("Status".into(), status.as_str().into());
        ProcessedCommand {
            command_uuid,
            request_type,
            status,
            command,
            report,
        }
    }

    fn execute(&mut self, request_type: &str, command: &Dictionary) -> Outcome {
        let mut payload = Dictionary::new();
        match request_type {
            "DeviceInformation" => {
                let all = self.device_information();
                let responses = match command.get("Queries").and_then(Value::as_array) {
                    Some(queries) => {
                        let mut d = Dictionary::new();
                        for q in queries.iter().filter_map(Value::as_string) {
                            if let Some(v) = all.get(q) {
                                d.insert(q.to_owned(), v.clone());
                            }
                        }
                        d
                    }
                    None => all,
                };
                payload.insert("QueryResponses".into(), Value::Dictionary(responses));
            }
            "SecurityInfo" => {
                payload.insert(
                    "SecurityInfo".into(),
                    Value::Dictionary(self.security_info()),
                );
            }
            "ProfileList" => {
                payload.insert("ProfileList".into(), Value::Array(self.profile_list()));
            }
            "InstalledApplicationList" => {
                let wanted: Option<Vec<&str>> = command
                    .get("Identifiers")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_string).collect());
                let managed_only = command
                    .get("ManagedAppsOnly")
                    .and_then(Value::as_boolean)
                    .unwrap_or(false);
                let apps = if managed_only {
                    Vec::new()
                } else {
                    installed_apps(self.kind)
                        .into_iter()
                        .filter(|app| {
                            wanted.as_ref().is_none_or(|w| {
                                app.get("Identifier")
                                    .and_then(Value::as_string)
                                    .is_some_and(|id| w.contains(&id))
                            })
                        })
                        .map(Value::Dictionary)
                        .collect()
                };
                payload.insert("InstalledApplicationList".into(), Value::Array(apps));
            }
            "CertificateList" => {
                payload.insert(
                    "CertificateList".into(),
                    Value::Array(self.certificate_list()),
                );
            }
            "ProvisioningProfileList" => {
                payload.insert("ProvisioningProfileList".into(), Value::Array(Vec::new()));
            }
            "AvailableOSUpdates" => {
                payload.insert("AvailableOSUpdates".into(), Value::Array(Vec::new()));
            }
            "InstallProfile" => {
                let Some(bytes) = command.get("Payload").and_then(Value::as_data) else {
                    return Outcome::Error(error_chain(
                        MALFORMED_PROFILE,
                        PROFILE_DOMAIN,
                        "The profile is missing.",
                    ));
                };
                match profile::parse_profile(bytes, None, false) {
                    Ok(p) => {
                        self.installed_profiles
                            .retain(|q| q.identifier != p.identifier);
                        self.installed_profiles.push(p);
                    }
                    Err(e) => {
                        return Outcome::Error(error_chain(
                            MALFORMED_PROFILE,
                            PROFILE_DOMAIN,
                            &format!("The profile could not be installed: {e}"),
                        ))
                    }
                }
            }
            "RemoveProfile" => {
                let id = command
                    .get("Identifier")
                    .and_then(Value::as_string)
                    .unwrap_or_default();
                let enrollment_id = self.enrollment.as_ref().map(|p| p.identifier.as_str());
                if enrollment_id == Some(id) {
                    return Outcome::Error(error_chain(
                        PROFILE_NOT_MANAGED,
                        MDM_DOMAIN,
                        "The MDM enrollment profile cannot be removed with RemoveProfile.",
                    ));
                }
                let before = self.installed_profiles.len();
                self.installed_profiles.retain(|p| p.identifier != id);
                if self.installed_profiles.len() == before {
                    return Outcome::Error(error_chain(
                        PROFILE_NOT_INSTALLED,
                        MDM_DOMAIN,
                        &format!("The profile “{id}” is not installed."),
                    ));
                }
            }
            "DeviceConfigured" => {
                if !self.awaiting_configuration {
                    return Outcome::Error(error_chain(
                        NOT_AWAITING_CONFIGURATION,
                        CLOUD_CONFIG_DOMAIN,
                        "The device is not awaiting configuration.",
                    ));
                }
                self.awaiting_configuration = false;
            }
            "Settings" => {
                let results: Vec<Value> = command
                    .get("Settings")
                    .and_then(Value::as_array)
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(Value::as_dictionary)
                            .map(|item| {
                                let mut r = Dictionary::new();
                                if let Some(name) = item.get("Item") {
                                    r.insert("Item".into(), name.clone());
                                }
                                r.insert("Status".into(), "Acknowledged".into());
                                Value::Dictionary(r)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                payload.insert("Settings".into(), Value::Array(results));
            }
            "DeviceLock"
            | "EraseDevice"
            | "RestartDevice"
            | "ShutDownDevice"
            | "DeclarativeManagement" => {}
            _ => {
                return Outcome::Error(error_chain(
                    INVALID_REQUEST_TYPE,
                    MDM_DOMAIN,
                    &format!("The request type “{request_type}” is invalid."),
                ))
            }
        }
        Outcome::Ack(payload)
    }

    fn device_information(&self) -> Dictionary {
        let mut d = Dictionary::new();
        let mut s = |k: &str, v: &str| {
            d.insert(k.to_owned(), v.into());
        };
        s("UDID", &self.udid);
        s("DeviceName", &self.device_name);
        s("OSVersion", &self.os_version);
        s("BuildVersion", &self.build_version);
        s("ModelName", &self.model_name);
        s("Model", &self.model);
        s("ProductName", &self.product);
        s("SerialNumber", &self.serial);
        s("WiFiMAC", &self.wifi_mac);
        s("BluetoothMAC", &self.bluetooth_mac);
        if let Some(imei) = &self.imei {
            d.insert("IMEI".into(), imei.clone().into());
        }
        if let Some(meid) = &self.meid {
            d.insert("MEID".into(), meid.clone().into());
        }
        let (capacity, available) = match self.kind {
            DeviceKind::IPhone => (128.0, 87.25),
            DeviceKind::IPad => (64.0, 31.5),
            DeviceKind::Mac => (256.0, 171.75),
        };
        d.insert("DeviceCapacity".into(), Value::Real(capacity));
        d.insert("AvailableDeviceCapacity".into(), Value::Real(available));
        d.insert("IsSupervised".into(), self.supervised.into());
        d.insert("IsActivationLockEnabled".into(), false.into());
        d.insert("IsDeviceLocatorServiceEnabled".into(), false.into());
        d.insert(
            "AwaitingConfiguration".into(),
            self.awaiting_configuration.into(),
        );
        if self.kind == DeviceKind::Mac {
            d.insert("IsAppleSilicon".into(), true.into());
            d.insert("SystemIntegrityProtectionEnabled".into(), true.into());
        } else {
            d.insert("BatteryLevel".into(), Value::Real(0.87));
            d.insert("IsCloudBackupEnabled".into(), false.into());
            d.insert("IsMDMLostModeEnabled".into(), false.into());
        }
        d
    }

    fn security_info(&self) -> Dictionary {
        let mut d = Dictionary::new();
        let mut status = Dictionary::new();
        status.insert("EnrolledViaDEP".into(), self.enrolled_via_ade.into());
        status.insert("IsUserEnrollment".into(), false.into());
        status.insert("UserApprovedEnrollment".into(), true.into());
        d.insert("ManagementStatus".into(), Value::Dictionary(status));
        if self.kind == DeviceKind::Mac {
            d.insert("FDE_Enabled".into(), false.into());
            d.insert("SystemIntegrityProtectionEnabled".into(), true.into());
            let mut fw = Dictionary::new();
            fw.insert("FirewallEnabled".into(), false.into());
            fw.insert("BlockAllIncoming".into(), false.into());
            fw.insert("StealthMode".into(), false.into());
            d.insert("FirewallSettings".into(), Value::Dictionary(fw));
        } else {
            d.insert("HardwareEncryptionCaps".into(), 3.into());
            d.insert("PasscodePresent".into(), false.into());
            d.insert("PasscodeCompliant".into(), true.into());
            d.insert("PasscodeCompliantWithProfiles".into(), true.into());
        }
        d
    }

    fn profile_list(&self) -> Vec<Value> {
        self.installed_profiles
            .iter()
            .map(|p| {
                let mut d = Dictionary::new();
                d.insert("PayloadIdentifier".into(), p.identifier.clone().into());
                d.insert("PayloadUUID".into(), p.uuid.clone().into());
                if let Some(name) = &p.display_name {
                    d.insert("PayloadDisplayName".into(), name.clone().into());
                }
                d.insert("PayloadVersion".into(), p.version.into());
                d.insert(
                    "PayloadRemovalDisallowed".into(),
                    p.removal_disallowed.into(),
                );
                d.insert("IsEncrypted".into(), false.into());
                d.insert("IsManaged".into(), true.into());
                let content = p
                    .payloads
                    .iter()
                    .map(|s| {
                        let mut e = Dictionary::new();
                        e.insert("PayloadType".into(), s.payload_type.clone().into());
                        e.insert("PayloadIdentifier".into(), s.identifier.clone().into());
                        e.insert("PayloadUUID".into(), s.uuid.clone().into());
                        e.insert("PayloadVersion".into(), s.version.into());
                        if let Some(name) = &s.display_name {
                            e.insert("PayloadDisplayName".into(), name.clone().into());
                        }
                        Value::Dictionary(e)
                    })
                    .collect();
                d.insert("PayloadContent".into(), Value::Array(content));
                if let Some(signer) = &p.signer {
                    if let Ok(der) = signer.to_der() {
                        d.insert(
                            "SignerCertificates".into(),
                            Value::Array(vec![Value::Data(der)]),
                        );
                    }
                }
                Value::Dictionary(d)
            })
            .collect()
    }

    fn certificate_list(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut push = |cert: &x509_cert::Certificate, is_identity: bool| {
            if let Ok(der) = cert.to_der() {
                let mut d = Dictionary::new();
                d.insert(
                    "CommonName".into(),
                    x509::common_name(&cert.tbs_certificate.subject)
                        .unwrap_or_default()
                        .into(),
                );
                d.insert("Data".into(), Value::Data(der));
                d.insert("IsIdentity".into(), is_identity.into());
                out.push(Value::Dictionary(d));
            }
        };
        if let Some(id) = &self.identity {
            push(&id.certificate, true);
        }
        for p in &self.installed_profiles {
            for root in &p.roots {
                push(root, false);
            }
        }
        out
    }

    /// Runs one command session: Idle, then answer commands until the server returns an
    /// empty body. Returns the commands processed, in order. An EraseDevice that is
    /// acknowledged ends the session and leaves the device erased.
    pub async fn run_until_idle(&mut self) -> Result<Vec<ProcessedCommand>, DeviceError> {
        let url = self.mdm_payload()?.server_url.clone();
        let mut report = self.idle_report();
        let mut processed = Vec::new();
        loop {
            let resp = self
                .send_mdm(&url, REPORT_CONTENT_TYPE, plist_xml(&report)?)
                .await?;
            if !resp.is_success() {
                return Err(DeviceError::Status(resp.to_unexpected()));
            }
            if resp.body.iter().all(u8::is_ascii_whitespace) {
                break;
            }
            if processed.len() >= self.commands.max_commands {
                return Err(DeviceError::TooManyCommands(self.commands.max_commands));
            }
            let envelope = parse_dict(&resp.body)?;
            let done = self.respond_to_command(&envelope);
            tracing::debug!(
                request_type = %done.request_type,
                status = done.status.as_str(),
                "answered command"
            );
            report = done.report.clone();
            let erase =
                done.request_type == "EraseDevice" && done.status == CommandStatus::Acknowledged;
            processed.push(done);
            if erase {
                // The device acknowledges, then wipes itself: the server's reply to the
                // acknowledgement is never acted upon.
                let _ = self
                    .send_mdm(&url, REPORT_CONTENT_TYPE, plist_xml(&report)?)
                    .await?;
                self.erased = true;
                self.identity = None;
                self.enrollment = None;
                self.installed_profiles.clear();
                break;
            }
        }
        Ok(processed)
    }
}

fn installed_apps(kind: DeviceKind) -> Vec<Dictionary> {
    let apps: &[(&str, &str, &str, &str, i64)] = match kind {
        DeviceKind::Mac => &[
            (
                "com.microsoft.VSCode",
                "Visual Studio Code",
                "1.87.2",
                "1.87.2",
                512_000_000,
            ),
            (
                "org.mozilla.firefox",
                "Firefox",
                "124.0.1",
                "12424.3.22",
                380_000_000,
            ),
        ],
        _ => &[
            (
                "com.example.fieldnotes",
                "Field Notes",
                "2.3.1",
                "231",
                48_200_000,
            ),
            (
                "com.example.timesheet",
                "Timesheet",
                "5.0",
                "5000",
                22_900_000,
            ),
        ],
    };
    apps.iter()
        .map(|(id, name, short, version, size)| {
            let mut d = Dictionary::new();
            d.insert("Identifier".into(), (*id).into());
            d.insert("Name".into(), (*name).into());
            d.insert("ShortVersion".into(), (*short).into());
            d.insert("Version".into(), (*version).into());
            d.insert("BundleSize".into(), (*size).into());
            d.insert("DynamicSize".into(), (size / 10).into());
            d.insert("IsValidated".into(), true.into());
            d.insert("Installing".into(), false.into());
            d
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::tests::{ca_and_signer, sample_profile, signed};

    fn device() -> SimDevice {
        let (ca, signer, key) = ca_and_signer();
        let mut d = SimDevice::random(DeviceKind::IPhone).unwrap();
        d.install_profile(
            &signed(&sample_profile(&ca), &signer, &key, &ca),
            Some(&[ca]),
        )
        .unwrap();
        d
    }

    fn envelope(uuid: &str, request_type: &str, extra: &[(&str, Value)]) -> Dictionary {
        let mut cmd = Dictionary::new();
        cmd.insert("RequestType".into(), request_type.into());
        for (k, v) in extra {
            cmd.insert((*k).into(), v.clone());
        }
        let mut e = Dictionary::new();
        e.insert("CommandUUID".into(), uuid.into());
        e.insert("Command".into(), Value::Dictionary(cmd));
        e
    }

    fn chain_code(report: &Dictionary) -> (i64, String) {
        let entry = report["ErrorChain"].as_array().unwrap()[0]
            .as_dictionary()
            .unwrap();
        for key in ["LocalizedDescription", "USEnglishDescription"] {
            assert!(entry.get(key).and_then(Value::as_string).is_some());
        }
        (
            entry["ErrorCode"].as_signed_integer().unwrap(),
            entry["ErrorDomain"].as_string().unwrap().to_owned(),
        )
    }

    #[test]
    fn device_information_answers_known_queries_only() {
        let mut d = device();
        let p = d.respond_to_command(&envelope(
            "c1",
            "DeviceInformation",
            &[(
                "Queries",
                Value::Array(vec![
                    "SerialNumber".into(),
                    "OSVersion".into(),
                    "NoSuchKey".into(),
                ]),
            )],
        ));
        assert_eq!(p.status, CommandStatus::Acknowledged);
        let q = p.report["QueryResponses"].as_dictionary().unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q["SerialNumber"].as_string(), Some(d.serial.as_str()));
        assert_eq!(p.report["CommandUUID"].as_string(), Some("c1"));
        assert_eq!(p.report["UDID"].as_string(), Some(d.udid.as_str()));
        // Round-trips as an XML plist.
        let xml = plist_xml(&p.report).unwrap();
        let back: Dictionary = plist::from_bytes(&xml).unwrap();
        assert_eq!(back["Status"].as_string(), Some("Acknowledged"));
    }

    #[test]
    fn inventory_commands() {
        let mut d = device();
        let pl = d.respond_to_command(&envelope("a", "ProfileList", &[]));
        let list = pl.report["ProfileList"].as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            list[0].as_dictionary().unwrap()["PayloadIdentifier"].as_string(),
            Some("lan.example.mdm.enroll")
        );
        let si = d.respond_to_command(&envelope("b", "SecurityInfo", &[]));
        assert!(si.report["SecurityInfo"]
            .as_dictionary()
            .unwrap()
            .contains_key("HardwareEncryptionCaps"));
        let apps = d.respond_to_command(&envelope(
            "c",
            "InstalledApplicationList",
            &[(
                "Identifiers",
                Value::Array(vec!["com.example.timesheet".into()]),
            )],
        ));
        assert_eq!(
            apps.report["InstalledApplicationList"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let certs = d.respond_to_command(&envelope("d", "CertificateList", &[]));
        assert_eq!(certs.report["CertificateList"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn profile_install_and_removal() {
        let mut d = device();
        let (ca, signer, key) = ca_and_signer();
        let mut extra = sample_profile(&ca);
        extra.insert("PayloadIdentifier".into(), "lan.example.wifi".into());
        let bytes = signed(&extra, &signer, &key, &ca);
        let ok = d.respond_to_command(&envelope(
            "i",
            "InstallProfile",
            &[("Payload", Value::Data(bytes))],
        ));
        assert_eq!(ok.status, CommandStatus::Acknowledged);
        assert_eq!(d.installed_profiles().len(), 2);
        let bad = d.respond_to_command(&envelope(
            "j",
            "InstallProfile",
            &[("Payload", Value::Data(b"junk".to_vec()))],
        ));
        assert_eq!(bad.status, CommandStatus::Error);
        assert_eq!(
            chain_code(&bad.report),
            (1000, "MCProfileErrorDomain".into())
        );
        let rm = d.respond_to_command(&envelope(
            "k",
            "RemoveProfile",
            &[("Identifier", "lan.example.wifi".into())],
        ));
        assert_eq!(rm.status, CommandStatus::Acknowledged);
        let again = d.respond_to_command(&envelope(
            "l",
            "RemoveProfile",
            &[("Identifier", "lan.example.wifi".into())],
        ));
        assert_eq!(chain_code(&again.report).0, 12075);
        let mdm = d.respond_to_command(&envelope(
            "m",
            "RemoveProfile",
            &[("Identifier", "lan.example.mdm.enroll".into())],
        ));
        assert_eq!(mdm.status, CommandStatus::Error);
    }

    #[test]
    fn device_configured_unknown_and_not_now() {
        let mut d = device();
        let not_waiting = d.respond_to_command(&envelope("a", "DeviceConfigured", &[]));
        assert_eq!(not_waiting.status, CommandStatus::Error);
        assert_eq!(chain_code(&not_waiting.report).0, 101);
        d.awaiting_configuration = true;
        let released = d.respond_to_command(&envelope("b", "DeviceConfigured", &[]));
        assert_eq!(released.status, CommandStatus::Acknowledged);
        assert!(!d.awaiting_configuration);

        let unknown = d.respond_to_command(&envelope("c", "MakeCoffee", &[]));
        assert_eq!(unknown.status, CommandStatus::Error);
        assert_eq!(
            chain_code(&unknown.report),
            (12021, "MCMDMErrorDomain".into())
        );

        let mut e = envelope("d", "DeviceLock", &[]);
        e.remove("CommandUUID");
        assert_eq!(
            d.respond_to_command(&e).status,
            CommandStatus::CommandFormatError
        );

        d.commands.not_now_next = 1;
        d.commands
            .not_now_request_types
            .insert("SecurityInfo".into());
        assert_eq!(
            d.respond_to_command(&envelope("e", "DeviceLock", &[]))
                .status,
            CommandStatus::NotNow
        );
        assert_eq!(
            d.respond_to_command(&envelope("f", "DeviceLock", &[]))
                .status,
            CommandStatus::Acknowledged
        );
        assert_eq!(
            d.respond_to_command(&envelope("g", "SecurityInfo", &[]))
                .status,
            CommandStatus::NotNow
        );

        let mut item = Dictionary::new();
        item.insert("Item".into(), "DeviceName".into());
        item.insert("DeviceName".into(), "X".into());
        let s = d.respond_to_command(&envelope(
            "h",
            "Settings",
            &[("Settings", Value::Array(vec![Value::Dictionary(item)]))],
        ));
        assert_eq!(s.report["Settings"].as_array().unwrap().len(), 1);
    }
}
