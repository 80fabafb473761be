//! Runs every sample under `testdata/` through the parsers.
//!
//! Good samples are named `<MessageType or Status>-<description>.plist`; bad samples are
//! named `<ErrorVariant>[.<Field>]--<description>.plist` and must fail with exactly that.

// This whole file is test code, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use mdm_proto::*;
use plist::{Dictionary, Value};

fn testdata(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(sub)
}

fn samples(sub: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(testdata(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "plist"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(out.len() >= 3, "too few samples in testdata/{sub}");
    out
}

fn sample(sub: &str, name: &str) -> Vec<u8> {
    fs::read(testdata(sub).join(name)).unwrap()
}

fn label(e: &ProtoError) -> String {
    match e {
        ProtoError::NotAPlist(_) => "NotAPlist".into(),
        ProtoError::NotADictionary { .. } => "NotADictionary".into(),
        ProtoError::MissingField(f) => format!("MissingField.{f}"),
        ProtoError::InvalidField { field, .. } => format!("InvalidField.{field}"),
        ProtoError::UnknownMessageType(_) => "UnknownMessageType".into(),
        ProtoError::NotADeviceMessage => "NotADeviceMessage".into(),
        ProtoError::UnknownCommand { .. } => "UnknownCommand".into(),
        ProtoError::CommandNeedsArguments { .. } => "CommandNeedsArguments".into(),
        ProtoError::Encode(_) => "Encode".into(),
    }
}

#[test]
fn every_checkin_sample_parses_as_its_message_type() {
    for (name, body) in samples("checkin") {
        let expected = name.split('-').next().unwrap();
        let msg = parse_checkin(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(msg.message_type(), expected, "{name}");
        assert!(!msg.enrollment_ref().id().is_empty(), "{name}");
        match parse_device_message(&body).unwrap_or_else(|e| panic!("{name}: {e}")) {
            DeviceMessage::Checkin(again) => assert_eq!(again, msg, "{name}"),
            DeviceMessage::Report(r) => panic!("{name} parsed as a report: {r:?}"),
        }
        // A check-in is not a report.
        assert!(
            matches!(parse_report(&body), Err(ProtoError::MissingField("Status"))),
            "{name}"
        );
    }
}

#[test]
fn binary_samples_parse_like_their_xml_twins() {
    let mut twins = 0;
    for (name, body) in samples("checkin") {
        let Some(stem) = name.strip_suffix(".binary.plist") else {
            continue;
        };
        assert!(body.starts_with(b"bplist00"), "{name} is not binary");
        let xml = sample("checkin", &format!("{stem}.plist"));
        assert_eq!(
            parse_checkin(&body).unwrap(),
            parse_checkin(&xml).unwrap(),
            "{name}"
        );
        twins += 1;
    }
    assert!(twins >= 1);
}

fn checkin(name: &str) -> CheckinMessage {
    parse_checkin(&sample("checkin", name)).unwrap()
}

#[test]
fn authenticate_samples_carry_device_facts() {
    let CheckinMessage::Authenticate(a) = checkin("Authenticate-ios.plist") else {
        panic!("not Authenticate")
    };
    assert_eq!(a.enrollment.udid(), Some("00008110-001A2B3C4D5E801E"));
    assert_eq!(a.serial_number.as_deref(), Some("F2LXK0QWPLJN"));
    assert_eq!(a.product_name.as_deref(), Some("iPhone15,2"));
    assert_eq!(a.os_version.as_deref(), Some("17.4.1"));
    assert_eq!(a.build_version.as_deref(), Some("21E236"));
    assert_eq!(a.imei.as_deref(), Some("35 391808 146738 2"));
    assert_eq!(
        a.enrollment.topic(),
        Some("com.apple.mgmt.External.2f6c1f9e-5a8b-4a53-9d55-0c2d1b7e3a41")
    );
    assert_eq!(a.enrollment_ref().id(), "00008110-001A2B3C4D5E801E");

    let CheckinMessage::Authenticate(ue) = checkin("Authenticate-user-enrollment.plist") else {
        panic!("not Authenticate")
    };
    let r = ue.enrollment_ref();
    assert!(r.user_enrollment);
    assert_eq!(r.id(), "A4C3F1D2-77E0-4B8A-9C61-0D5E2F3A4B5C");
    assert_eq!(ue.serial_number, None);

    // Keys Apple adds later are ignored, known ones still read.
    let CheckinMessage::Authenticate(f) = checkin("Authenticate-future-keys.plist") else {
        panic!("not Authenticate")
    };
    assert_eq!(f.os_version.as_deref(), Some("27.0"));
}

#[test]
fn token_update_samples_resolve_their_channel() {
    let CheckinMessage::TokenUpdate(t) = checkin("TokenUpdate-ios-awaiting.plist") else {
        panic!("not TokenUpdate")
    };
    assert_eq!(t.token.len(), 32);
    assert_eq!(t.unlock_token.as_ref().map(Vec::len), Some(1024));
    assert!(t.awaiting_configuration);
    assert!(!t.not_on_console);
    assert_eq!(t.push_magic, "5B0E7C1A-9D4F-4E62-8A3B-1C2D3E4F5A6B");
    assert!(!t.enrollment_ref().is_user_channel());

    let CheckinMessage::TokenUpdate(u) = checkin("TokenUpdate-macos-user.plist") else {
        panic!("not TokenUpdate")
    };
    let r = u.enrollment_ref();
    assert_eq!(
        r.id(),
        "8C4D2E7A-51B3-5F0E-9A6D-3B2C1E0F4A77:1E6A7F3C-2B9D-4A81-B5C4-D3E2F1A0B9C8"
    );
    assert_eq!(r.user_short_name.as_deref(), Some("ann"));
    assert_eq!(r.user_long_name.as_deref(), Some("Ann Example"));
    assert_eq!(u.unlock_token, None);

    let shared = checkin("TokenUpdate-shared-ipad-user.plist").enrollment_ref();
    assert_eq!(
        shared.id(),
        "00008027-000C19A83C02002E:student42@school.example.org"
    );

    let ue = checkin("TokenUpdate-user-enrollment.plist").enrollment_ref();
    assert!(ue.user_enrollment);
    assert_eq!(
        ue.id(),
        "B7D6E5F4-0A1B-4C2D-8E3F-405162738495:E1F2A3B4-C5D6-4E7F-8091-A2B3C4D5E6F7"
    );
}

#[test]
fn other_checkin_samples_carry_their_fields() {
    let CheckinMessage::SetBootstrapToken(s) = checkin("SetBootstrapToken-macos.plist") else {
        panic!()
    };
    assert_eq!(s.bootstrap_token.as_ref().map(Vec::len), Some(48));
    let CheckinMessage::SetBootstrapToken(c) = checkin("SetBootstrapToken-clear.plist") else {
        panic!()
    };
    assert_eq!(c.bootstrap_token, None, "an empty token means: delete it");
    let CheckinMessage::GetBootstrapToken(g) = checkin("GetBootstrapToken-macos.plist") else {
        panic!()
    };
    assert!(g.awaiting_configuration);

    let CheckinMessage::DeclarativeManagement(d) = checkin("DeclarativeManagement-status.plist")
    else {
        panic!()
    };
    assert_eq!(d.endpoint_kind(), DeclarativeEndpoint::Status);
    let report: serde_json::Value = serde_json::from_slice(d.data.as_deref().unwrap()).unwrap();
    assert_eq!(
        report["StatusItems"]["device"]["operating-system"]["version"],
        "17.4.1"
    );
    let CheckinMessage::DeclarativeManagement(d) =
        checkin("DeclarativeManagement-declaration.plist")
    else {
        panic!()
    };
    assert!(matches!(
        d.endpoint_kind(),
        DeclarativeEndpoint::Declaration {
            declaration_type: "configuration",
            ..
        }
    ));

    let CheckinMessage::GetToken(t) = checkin("GetToken-watch-pairing.plist") else {
        panic!()
    };
    assert_eq!(t.token_service_type, "com.apple.watch.pairing");
    let params = t.token_parameters.as_ref().unwrap();
    assert_eq!(
        params.get("PhoneUDID").and_then(Value::as_string),
        Some("00008110-001A2B3C4D5E801E")
    );
    assert!(
        !format!("{t:?}").contains("c2VjdXJpdHk"),
        "SecurityToken leaked"
    );
    let CheckinMessage::GetToken(m) = checkin("GetToken-maid.plist") else {
        panic!()
    };
    assert_eq!(m.token_service_type, "com.apple.maid");
    assert!(m.token_parameters.is_none());

    let CheckinMessage::UserAuthenticate(first) = checkin("UserAuthenticate-first.plist") else {
        panic!()
    };
    assert!(first.digest_response.is_none());
    assert!(first.enrollment_ref().is_user_channel());
    let CheckinMessage::UserAuthenticate(second) = checkin("UserAuthenticate-digest.plist") else {
        panic!()
    };
    assert!(second.digest_response.is_some());
    assert!(matches!(
        checkin("CheckOut-ios.plist"),
        CheckinMessage::CheckOut(_)
    ));
}

#[test]
fn every_report_sample_parses_with_its_status() {
    for (name, body) in samples("report") {
        let expected = name.split('-').next().unwrap();
        let r = parse_report(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.status.as_str(), expected, "{name}");
        assert_eq!(r.raw, body, "{name}: raw must be the bytes received");
        assert_eq!(
            r.command_uuid.is_none(),
            r.status == CommandStatus::Idle,
            "{name}"
        );
        if matches!(
            r.status,
            CommandStatus::Error | CommandStatus::CommandFormatError
        ) {
            assert!(!r.error_chain.is_empty(), "{name}");
        }
        match parse_device_message(&body).unwrap() {
            DeviceMessage::Report(again) => assert_eq!(again, r, "{name}"),
            DeviceMessage::Checkin(c) => panic!("{name} parsed as check-in {c:?}"),
        }
        assert!(
            matches!(
                parse_checkin(&body),
                Err(ProtoError::MissingField("MessageType"))
            ),
            "{name}"
        );
    }
}

#[test]
fn report_samples_carry_error_chains_and_results() {
    let r = parse_report(&sample("report", "Error-installprofile.plist")).unwrap();
    assert_eq!(
        r.command_uuid.as_deref(),
        Some("9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")
    );
    assert_eq!(r.error_chain.len(), 2);
    assert_eq!(r.error_chain[0].error_code, 4001);
    assert_eq!(r.error_chain[0].error_domain, "MCInstallationErrorDomain");
    assert_eq!(
        r.error_chain[1].us_english_description.as_deref(),
        Some("The payload is invalid.")
    );
    assert!(r.error_chain[0]
        .localized_description
        .as_deref()
        .unwrap()
        .contains("„Wi-Fi“"));

    let r = parse_report(&sample("report", "Acknowledged-deviceinformation.plist")).unwrap();
    let body = r.body().unwrap();
    let q = body
        .get("QueryResponses")
        .and_then(Value::as_dictionary)
        .unwrap();
    assert_eq!(
        q.get("OSVersion").and_then(Value::as_string),
        Some("17.4.1")
    );

    let r = parse_report(&sample("report", "Acknowledged-macos-user.plist")).unwrap();
    assert!(r.enrollment.is_user_channel());
    assert_eq!(
        r.enrollment.device_channel().id(),
        "8C4D2E7A-51B3-5F0E-9A6D-3B2C1E0F4A77"
    );

    let r = parse_report(&sample("report", "Acknowledged-user-enrollment.plist")).unwrap();
    assert!(r.enrollment.user_enrollment);
    assert!(
        format!("{r:?}").contains("raw_len"),
        "Debug must not dump the raw body"
    );
}

#[test]
fn machine_info_samples_parse() {
    for (name, body) in samples("machineinfo") {
        let m = parse_machine_info(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!m.udid.is_empty() && !m.serial.is_empty(), "{name}");
    }
    let m = parse_machine_info(&sample("machineinfo", "ios17.plist")).unwrap();
    assert_eq!(m.serial, "F2LXK0QWPLJN");
    assert_eq!(m.product, "iPhone15,2");
    assert_eq!(m.version, "21E236");
    assert_eq!(m.os_version.as_deref(), Some("17.4.1"));
    assert_eq!(m.language.as_deref(), Some("de"));
    assert!(m.mdm_can_request_software_update);
    assert_eq!(m.software_update_device_id.as_deref(), Some("D74AP"));
    let old = parse_machine_info(&sample("machineinfo", "ios16.plist")).unwrap();
    assert_eq!(old.os_version, None, "iOS 16 does not send OS_VERSION");
    assert!(!old.mdm_can_request_software_update);
    let mac = parse_machine_info(&sample("machineinfo", "macos14.plist")).unwrap();
    assert!(os_version_less_than(
        mac.os_version.as_deref().unwrap(),
        "14.10"
    ));
}

#[test]
fn raw_command_samples_get_the_new_uuid_and_keep_the_rest() {
    for (name, body) in samples("command") {
        let original = parse_any(&body);
        let payload =
            payload_from_raw(&body, "NEW-UUID-1".into()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(payload.uuid, "NEW-UUID-1");
        assert!(
            payload.plist.starts_with(b"<?xml"),
            "{name}: payload must be XML"
        );
        let out = parse_any(&payload.plist);
        assert_eq!(
            out.get("CommandUUID").and_then(Value::as_string),
            Some("NEW-UUID-1"),
            "{name}"
        );
        assert_eq!(out.get("Command"), original.get("Command"), "{name}");
        let command = out.get("Command").and_then(Value::as_dictionary).unwrap();
        assert_eq!(
            command.get("RequestType").and_then(Value::as_string),
            Some(payload.request_type.as_str())
        );
    }
}

fn parse_any(bytes: &[u8]) -> Dictionary {
    Value::from_reader(std::io::Cursor::new(bytes))
        .unwrap()
        .into_dictionary()
        .unwrap()
}

#[test]
fn every_bad_sample_fails_with_the_named_error() {
    type Parser = fn(&[u8]) -> Result<(), ProtoError>;
    let parsers: [(&str, Parser); 5] = [
        ("bad/checkin", |b| parse_checkin(b).map(drop)),
        ("bad/report", |b| parse_report(b).map(drop)),
        ("bad/device", |b| parse_device_message(b).map(drop)),
        ("bad/machineinfo", |b| parse_machine_info(b).map(drop)),
        ("bad/command", |b| payload_from_raw(b, "U".into()).map(drop)),
    ];
    let mut seen = 0;
    for (dir, parse) in parsers {
        for (name, body) in samples(dir) {
            let expected = name.split("--").next().unwrap();
            let err = parse(&body).expect_err(&name);
            assert_eq!(label(&err), expected, "{dir}/{name}: {err}");
            // Error messages are sentences an operator can act on.
            assert!(err.to_string().len() > 20, "{name}: {err}");
            seen += 1;
        }
    }
    assert!(seen >= 30, "only {seen} bad samples");
}

fn all_typed_commands() -> Vec<Command> {
    let mut setting = Dictionary::new();
    setting.insert("Item".into(), Value::String("DeviceName".into()));
    setting.insert("DeviceName".into(), Value::String("Kiosk 3".into()));
    let mut cmds: Vec<Command> = KNOWN_COMMANDS
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    cmds.extend([
        Command::InstallProfile {
            payload: b"<?xml version=\"1.0\"?><plist><dict/></plist>\x00\xff".to_vec(),
        },
        Command::RemoveProfile {
            identifier: "com.example.wifi".into(),
        },
        Command::Settings {
            settings: vec![setting],
        },
        Command::DeviceLock {
            pin: Some("123456".into()),
            message: Some("Return to IT <desk 4> & call".into()),
            phone_number: Some("+49 30 1234567".into()),
        },
        Command::InstalledApplicationList {
            managed_apps_only: true,
            identifiers: vec!["com.example.app".into()],
        },
        Command::RestartDevice { notify_user: true },
    ]);
    cmds
}

#[test]
fn typed_commands_write_apple_keys() {
    for (i, cmd) in all_typed_commands().into_iter().enumerate() {
        let uuid = format!("uuid-{i}");
        let payload = cmd.to_payload(uuid.clone()).unwrap();
        assert_eq!(payload.request_type, cmd.request_type());
        let top = parse_any(&payload.plist);
        assert_eq!(
            top.get("CommandUUID").and_then(Value::as_string),
            Some(uuid.as_str())
        );
        let c = top.get("Command").and_then(Value::as_dictionary).unwrap();
        assert_eq!(c, &cmd.to_dictionary());
        assert_eq!(
            c.get("RequestType").and_then(Value::as_string),
            Some(cmd.request_type())
        );
        match &cmd {
            Command::InstallProfile { payload: p } => {
                assert_eq!(c.get("Payload").and_then(Value::as_data), Some(&p[..]));
            }
            Command::DeviceInformation { queries } => {
                assert_eq!(queries.len(), DEFAULT_DEVICE_INFORMATION_QUERIES.len());
                let q = c.get("Queries").and_then(Value::as_array).unwrap();
                assert!(q.contains(&Value::String("SerialNumber".into())));
            }
            Command::DeviceLock { pin: Some(_), .. } => {
                assert_eq!(
                    c.get("Message").and_then(Value::as_string),
                    Some("Return to IT <desk 4> & call")
                );
                assert_eq!(c.get("PIN").and_then(Value::as_string), Some("123456"));
            }
            Command::Settings { .. } => {
                let s = c.get("Settings").and_then(Value::as_array).unwrap();
                assert_eq!(s.len(), 1);
            }
            Command::RemoveProfile { .. } => {
                assert_eq!(
                    c.get("Identifier").and_then(Value::as_string),
                    Some("com.example.wifi")
                );
            }
            _ => {}
        }
        // Nothing PIN-like in Debug output.
        assert!(!format!("{payload:?}").contains("123456"));
    }
}

/// Cross-check with an independent plist implementation (Python's `plistlib`), skipped if
/// `python3` is not installed.
#[test]
fn typed_commands_are_readable_by_plistlib() {
    let Ok(status) = Process::new("python3").arg("-c").arg("pass").status() else {
        eprintln!("python3 not found; skipping plistlib cross-check");
        return;
    };
    assert!(status.success());
    for cmd in all_typed_commands() {
        let payload = cmd.to_payload("CROSS-CHECK".into()).unwrap();
        let mut child = Process::new("python3")
            .arg("-c")
            .arg(
                "import plistlib,sys\n\
                 d=plistlib.loads(sys.stdin.buffer.read())\n\
                 print(d['CommandUUID'], d['Command']['RequestType'], len(d['Command']))",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&payload.plist)
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", cmd.request_type());
        let expected = format!(
            "CROSS-CHECK {} {}\n",
            cmd.request_type(),
            cmd.to_dictionary().len()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    }
}
