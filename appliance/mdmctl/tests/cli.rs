//! Runs the built `mdmctl` binary against a small local HTTPS server that imitates a few
//! admin API endpoints. Certificates are made with the `openssl` CLI; without it the tests
//! report that they were skipped and pass.

// Test helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};

const TOKEN: &str = "mdm_test-token-0123456789";

/// A request the fake appliance received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path_and_query: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

fn run_openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Test PKI in a temp dir: the appliance CA, a server certificate for 127.0.0.1 from it, and
/// an unrelated CA. `None` when `openssl` is not installed.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn create() -> Option<Pki> {
        if Command::new("openssl").arg("version").output().is_err() {
            eprintln!("openssl not found: skipping the HTTPS tests");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for name in ["ca", "other-ca"] {
            std::fs::write(
                d.join(format!("{name}.cnf")),
                format!(
                    "[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n\
                     [dn]\nCN = mdmctl test {name}\n\
                     [ext]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
                     subjectKeyIdentifier = hash\n"
                ),
            )
            .expect("write config");
            run_openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-new",
                    "-config",
                    &format!("{name}.cnf"),
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.pem"),
                    "-days",
                    "2",
                ],
            );
        }
        std::fs::write(
            d.join("leaf.ext"),
            "subjectAltName = IP:127.0.0.1\nbasicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n",
        )
        .expect("write ext");
        run_openssl(
            d,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        run_openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                "2",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
            ],
        );
        let mut token = std::fs::File::create(d.join("admin.token")).expect("token file");
        writeln!(token, "{TOKEN}").expect("write token");
        std::fs::write(d.join("wrong.token"), "mdm_not-the-token\n").expect("write token");
        Some(Pki { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn api_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

fn text_response(content_type: &'static str, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

const PUBLIC_KEY_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";
const DEVICES_CSV: &str = "serial_number,model,description\r\nC02X1,MacBook Air,\"13\"\", M2\"\r\n";

/// An ABM connection as the admin API shows it.
fn abm_connection(name: &str) -> Value {
    json!({"name": name, "created_at": "2024-04-01T08:00:00Z",
           "base_url": "https://mdmenrollment.apple.com", "custom_ca": false, "state": "active",
           "reason": "the server token is valid", "action": null, "key_staged": false,
           "token": {"consumer_key": "CK_1", "expires_at": "2099-01-01T00:00:00Z",
                     "uploaded_at": "2024-05-01T10:00:00Z", "generation": 1},
           "account": {"org_name": "Example School", "org_id": "1", "org_email": "it@example.org",
                       "server_name": "North appliance", "server_uuid": "U1", "admin_id": "a@example.org"},
           "problem": null, "last_ok_at": "2024-05-01T10:00:00Z", "interval_seconds": 900,
           "sync_phase": "incremental", "sync_running": false, "last_full_sync_at": null,
           "last_sync": null, "default_profile": null, "devices": 1, "devices_due": null})
}

/// The fake appliance's ABM endpoints.
fn abm_answer(seen: &Seen) -> Option<Response<Full<Bytes>>> {
    Some(match (seen.method.as_str(), seen.path_and_query.as_str()) {
        ("PUT", "/api/v1/abm/north/token?force=true") => {
            json_response(StatusCode::OK, &abm_connection("north"))
        }
        ("GET", "/api/v1/abm/north/public-key") => {
            text_response("application/x-pem-file", PUBLIC_KEY_PEM)
        }
        ("GET", "/api/v1/abm/north/devices?format=csv") => {
            text_response("text/csv; charset=utf-8", DEVICES_CSV)
        }
        ("POST", "/api/v1/abm/north/sync") => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ABM_UNREACHABLE",
            "ABM connection \"north\": Apple did not answer",
        ),
        ("POST", "/api/v1/abm/north/sync?full=true") => json_response(
            StatusCode::OK,
            &json!({"started_at": "2024-05-01T10:00:00Z", "finished_at": "2024-05-01T10:00:09Z",
                    "full": true, "pages": 2, "added": 150, "modified": 0, "deleted": 0,
                    "result": "ok", "error": null}),
        ),
        ("POST", "/api/v1/abm/north/profiles/staff/assign") => {
            let body: Value = serde_json::from_slice(&seen.body).expect("request JSON");
            let items: Vec<Value> = body["serials"]
                .as_array()
                .expect("serials")
                .iter()
                .map(|s| {
                    if s == "NOPE1" {
                        json!({"serial": s, "outcome": "NOT_FOUND", "reason": "not listed"})
                    } else {
                        json!({"serial": s, "outcome": "SUCCESS", "reason": null})
                    }
                })
                .collect();
            json_response(StatusCode::OK, &json!({ "items": items }))
        }
        ("POST", "/api/v1/abm/north/disown") => json_response(
            StatusCode::OK,
            &json!({"items": [{"serial": "C02X1", "outcome": "SUCCESS", "reason": null}]}),
        ),
        ("DELETE", "/api/v1/abm/north?confirm=north") => {
            json_response(StatusCode::OK, &json!({"deleted": "north"}))
        }
        _ => return None,
    })
}

const SAMPLE_CSV: &str = "name,email,ownership,serial_number,platform,mobile,device_name\r\n\
                          Ada Lovelace,ada@example.com,corporate,C02XK1ABJGH5,macOS,,\r\n";
const ACTIVITY_CSV: &str = "seq,at,actor,type,targets,outcome,summary\r\n\
                            7,2024-05-01T10:00:00.000Z,device,enrollment.enrolled,C02XK1ABJGH5 UDID-1,ok,enrolled\r\n";
/// The pre-enrollment file the import tests upload.
const PREENROLL_CSV: &str = "name,email,ownership,serial_number,platform,notes\r\n\
                             Ada Lovelace,ada@example.com,corporate,C02XK1ABJGH5,macOS,desk 4\r\n\
                             Grace Hopper,grace@,personal,F2LXR7QBHG7F,iOS,\r\n";

/// A device of the joined device list, as the admin API shows it.
fn device_summary(serial: &str, status: &str, stuck: bool) -> Value {
    json!({"serial": serial, "enrollment_id": "UDID-1", "status": status,
           "reason": "The device enrolled during Setup Assistant and is held there until it is released with DeviceConfigured.",
           "fix": "It is released automatically once its baseline is acknowledged; release it by hand with `mdmctl release SERIAL`.",
           "since": "2024-05-01T10:00:00.000Z", "stuck": stuck, "name": "Ada Lovelace",
           "email": "ada@example.com", "ownership": "corporate", "platform": "macOS",
           "model": "MacBook Air", "os_version": "14.4", "device_name": "Ada's Mac",
           "abm_connection": "north", "profile_status": "pushed", "preenrolled": true,
           "last_seen_at": "2024-05-01T10:05:00.000Z", "enrolled_at": "2024-05-01T10:00:00.000Z"})
}

/// An import report as the appliance answers it.
fn import_report(dry_run: bool, refused: bool) -> Value {
    let mut v = json!({"dry_run": dry_run, "written": false, "refused": null, "total_rows": 2,
                       "valid_rows": 2, "new": 2, "replaced": 0, "skipped": 0, "errors": [],
                       "duplicates": [], "ignored_columns": ["notes"]});
    if refused {
        let message =
            "1 row(s) have errors; nothing was written. Fix them, or import only the valid rows.";
        v["valid_rows"] = json!(1);
        v["new"] = json!(1);
        v["errors"] = json!([{"row": 3, "field": "email", "code": "INVALID",
                              "message": "\"grace@\" is not an email address"}]);
        v["refused"] = json!({"code": "PREENROLL_ROWS_INVALID", "message": message});
        v["error"] = json!({"code": "PREENROLL_ROWS_INVALID", "message": message});
    }
    v
}

const SETTINGS: &str = r#"{"preenrolled_only": false, "abm_as_preenrolled": false, "auto_release": true,
    "offline_after_hours": 72, "enrolling_grace_minutes": 30, "awaiting_stuck_after_minutes": 30,
    "activity_retention_days": 365}"#;

/// The fake appliance's device lifecycle endpoints.
fn lifecycle_answer(seen: &Seen) -> Option<Response<Full<Bytes>>> {
    let path = seen.path_and_query.as_str();
    // Relative times make this query depend on the clock: matched by what it starts with.
    if seen.method == "GET" && path.starts_with("/api/v1/activity?type=enrollment&since=") {
        return Some(json_response(
            StatusCode::OK,
            &json!({"items": [{"seq": 7, "at": "2024-05-01T10:00:00.000Z", "actor": "device",
                               "kind": "enrollment.enrolled", "targets": ["C02XK1ABJGH5", "UDID-1", "X"],
                               "outcome": "ok", "summary": "enrolled", "detail": null}],
                    "next": 6}),
        ));
    }
    Some(match (seen.method.as_str(), path) {
        (
            "GET",
            "/api/v1/devices?status=awaiting_configuration,offline&search=Ada%20L&connection=north\
             &sort=last_seen&order=desc&limit=2",
        ) => json_response(
            StatusCode::OK,
            &json!({"items": [device_summary("C02XK1ABJGH5", "awaiting_configuration", true),
                              device_summary("F2LXR7QBHG7F", "offline", false)],
                    "next": "WyJ4IiwiRjJMWCJd", "total": 7}),
        ),
        ("GET", "/api/v1/devices?status=offline&format=csv") => {
            text_response("text/csv; charset=utf-8", DEVICES_CSV)
        }
        ("GET", "/api/v1/devices/c02xk1abjgh5") => {
            let mut v = device_summary("C02XK1ABJGH5", "awaiting_configuration", true);
            v["preenroll"] = json!({"serial_number": "C02XK1ABJGH5"});
            v["abm"] = json!([]);
            v["enrollment"] = json!({"id": "UDID-1", "state": "Enrolled",
                                     "enrolled_at": "2024-05-01T10:00:00.000Z",
                                     "last_seen_at": "2024-05-01T10:05:00.000Z",
                                     "awaiting_configuration": true});
            v["queued_commands"] = json!(["DeviceConfigured"]);
            v["recent_commands"] = json!([]);
            v["waiting_for"] = json!(["DeviceConfigured to be fetched"]);
            v["profiles"] = json!({"groups": [{"id": "grp_1", "name": "carts"}],
                                   "assigned": [{"id": "prf_1", "name": "Wi-Fi",
                                                 "identifier": "com.example.wifi"}],
                                   "installs": [install("C02XK1ABJGH5", "failed", Some("declined by the user"))]});
            v["timeline"] = json!([{"seq": 7, "at": "2024-05-01T10:00:00.000Z", "actor": "device",
                                    "kind": "enrollment.enrolled", "targets": ["C02XK1ABJGH5"],
                                    "outcome": "ok", "summary": "enrolled through ADE", "detail": null}]);
            json_response(StatusCode::OK, &v)
        }
        ("POST", "/api/v1/devices/C02XK1ABJGH5/release") => json_response(
            StatusCode::ACCEPTED,
            &json!({"serial": "C02XK1ABJGH5", "enrollment_id": "UDID-1", "command_uuid": "CMD-1"}),
        ),
        ("POST", "/api/v1/devices/F2LXR7QBHG7F/release") => api_error(
            StatusCode::CONFLICT,
            "NOT_AWAITING_CONFIGURATION",
            "device F2LXR7QBHG7F is not waiting in Setup Assistant",
        ),
        ("POST", "/api/v1/preenroll/import?dry_run=true") => {
            json_response(StatusCode::OK, &import_report(true, false))
        }
        ("POST", "/api/v1/preenroll/import") => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &import_report(false, true),
        ),
        ("GET", "/api/v1/preenroll/sample") => text_response("text/csv; charset=utf-8", SAMPLE_CSV),
        ("GET", "/api/v1/activity?device=C02XK1ABJGH5&format=csv") => {
            text_response("text/csv; charset=utf-8", ACTIVITY_CSV)
        }
        ("PATCH", "/api/v1/settings") => {
            let mut settings: Value = serde_json::from_str(SETTINGS).expect("settings");
            let patch: Value = serde_json::from_slice(&seen.body).expect("request JSON");
            for (key, value) in patch.as_object().expect("object") {
                settings[key] = value.clone();
            }
            json_response(StatusCode::OK, &settings)
        }
        _ => return None,
    })
}

/// A group as the admin API shows it.
fn group_json(name: &str, rule: Value, members: u64) -> Value {
    let kind = if rule.is_null() { "static" } else { "rule" };
    json!({"id": "grp_1", "name": name, "description": null, "kind": kind, "rule": rule,
           "members": members, "profiles": [{"id": "prf_1", "name": "Wi-Fi"}],
           "created_at": "2024-05-01T10:00:00.000Z", "updated_at": "2024-05-01T10:00:00.000Z",
           "updated_by": "admin"})
}

/// A profile as the admin API shows it.
fn profile_json(name: &str, groups: Value, devices: Value) -> Value {
    json!({"id": "prf_1", "name": name, "identifier": "com.example.wifi", "sha256": "ab12",
           "size": PROFILE_FILE.len(),
           "summary": {"identifier": "com.example.wifi", "uuid": "U-1", "display_name": name,
                       "description": null, "organization": "Example School", "scope": "system",
                       "removal_disallowed": false, "has_removal_password": false,
                       "payloads": [{"payload_type": "com.apple.wifi.managed",
                                     "identifier": "com.example.wifi.1", "uuid": "U-2",
                                     "display_name": "Wi-Fi"}],
                       "signer": null,
                       "warnings": ["the Wi-Fi password is in the file in clear text"]},
           "groups": groups, "devices": devices,
           "created_at": "2024-05-01T10:00:00Z", "updated_at": "2024-05-01T10:00:00Z",
           "updated_by": "admin"})
}

/// A profile file as a device would get it: any bytes do for the fake, including ones that
/// are not text (a signed profile is DER).
const PROFILE_FILE: &[u8] =
    b"0\x82\x01\x00<?xml version=\"1.0\"?><plist version=\"1.0\"><dict/></plist>\n";

fn install(serial: &str, state: &str, error: Option<&str>) -> Value {
    json!({"serial": serial, "profile_id": "prf_1", "profile_name": "Wi-Fi",
           "identifier": "com.example.wifi", "state": state, "current": true, "error": error,
           "command_uuid": null, "enrollment_id": format!("UDID-{serial}"),
           "updated_at": "2024-05-01T10:00:00.000Z"})
}

/// The fake appliance's group and profile endpoints.
fn profiles_answer(seen: &Seen) -> Option<Response<Full<Bytes>>> {
    let body = || -> Value { serde_json::from_slice(&seen.body).expect("request JSON") };
    let reconcile = json!({"devices": 2, "installs": 2, "removals": 0});
    Some(match (seen.method.as_str(), seen.path_and_query.as_str()) {
        ("POST", "/api/v1/groups") => {
            let b = body();
            let name = b["name"].as_str().expect("name").to_owned();
            json_response(
                StatusCode::CREATED,
                &group_json(&name, b["rule"].clone(), 0),
            )
        }
        ("GET", "/api/v1/groups/New%20iPads") => json_response(
            StatusCode::OK,
            &group_json(
                "New iPads",
                json!({"match": "any", "conditions": [
                    {"field": "platform", "op": "is", "value": "ipados"}]}),
                3,
            ),
        ),
        ("PATCH", "/api/v1/groups/New%20iPads") => {
            let b = body();
            json_response(
                StatusCode::OK,
                &group_json("New iPads", b["rule"].clone(), 3),
            )
        }
        ("DELETE", "/api/v1/groups/carts") => api_error(
            StatusCode::CONFLICT,
            "GROUP_IN_USE",
            "group `carts` is assigned to profiles Wi-Fi; unassign it from them first",
        ),
        ("GET", "/api/v1/groups/carts/members?limit=1") => json_response(
            StatusCode::OK,
            &json!({"items": [{"serial": "C02XK1ABJGH5",
                               "device": device_summary("C02XK1ABJGH5", "enrolled", false)}],
                    "next": "C02XK1ABJGH5", "total": 2}),
        ),
        ("GET", "/api/v1/groups/carts/members?limit=1&after=C02XK1ABJGH5") => json_response(
            StatusCode::OK,
            &json!({"items": [{"serial": "F2LXR7QBHG7F", "device": null}], "next": null,
                    "total": 2}),
        ),
        ("POST", "/api/v1/groups/carts/members") => {
            let b = body();
            let n = b["add"].as_array().map_or(0, Vec::len);
            json_response(
                StatusCode::OK,
                &json!({"added": n - 1, "removed": 0, "unchanged": 1, "reconcile": reconcile}),
            )
        }
        ("POST", "/api/v1/profiles?name=School%20Wi-Fi") => json_response(
            StatusCode::CREATED,
            &profile_json("School Wi-Fi", json!([]), json!([])),
        ),
        ("POST", "/api/v1/profiles") => api_error(
            StatusCode::BAD_REQUEST,
            "PROFILE_INVALID",
            "PayloadContent[0].PayloadType: missing",
        ),
        ("GET", "/api/v1/profiles/wifi") => json_response(
            StatusCode::OK,
            &profile_json(
                "Wi-Fi",
                json!([{"id": "grp_1", "name": "carts"}]),
                json!([]),
            ),
        ),
        ("GET", "/api/v1/profiles/fonts") => {
            json_response(StatusCode::OK, &profile_json("Fonts", json!([]), json!([])))
        }
        ("DELETE", "/api/v1/profiles/wifi" | "/api/v1/profiles/fonts") => json_response(
            StatusCode::OK,
            &json!({"deleted": "x", "reconcile": {"devices": 2, "installs": 0, "removals": 2}}),
        ),
        ("GET", "/api/v1/profiles/wifi/file") => {
            let mut resp = Response::new(Full::new(Bytes::from_static(PROFILE_FILE)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/x-apple-aspen-config"),
            );
            resp
        }
        ("POST", "/api/v1/profiles/wifi/assign") => {
            let b = body();
            json_response(
                StatusCode::OK,
                &json!({"profile": profile_json("Wi-Fi",
                                                json!([{"id": "grp_1", "name": "carts"}]),
                                                b["devices"].clone()),
                        "reconcile": reconcile}),
            )
        }
        ("GET", "/api/v1/profiles/wifi/installs") => json_response(
            StatusCode::OK,
            &json!({"items": [install("C02X1", "installed", None),
                              install("DMPX2", "failed", Some("MDM error 4001: the profile is already installed"))],
                    "next": "DMPX2"}),
        ),
        ("GET", "/api/v1/profiles/wifi/installs?after=DMPX2") => json_response(
            StatusCode::OK,
            &json!({"items": [install("F2LX3", "failed", Some("declined by the user"))],
                    "next": null}),
        ),
        ("POST", "/api/v1/profiles/wifi/retry") => {
            json_response(StatusCode::OK, &json!({"reconcile": reconcile}))
        }
        _ => return None,
    })
}

/// A local user account as the admin API shows it.
fn user_json(username: &str, full_name: &str, email: Option<&str>) -> Value {
    json!({"username": username, "full_name": full_name, "email": email, "source": "local",
           "disabled": false, "locked": false, "locked_until": null, "failed_sign_ins": 0,
           "last_sign_in_at": null, "created_at": "2024-04-01T08:00:00.000Z",
           "updated_at": "2024-04-01T08:00:00.000Z", "created_by": "admin"})
}

/// The fake appliance's user account endpoints. A POST answers with the account the body
/// describes, or the refusals the real API gives for a taken name and a short password.
fn users_answer(seen: &Seen) -> Option<Response<Full<Bytes>>> {
    let body = || -> Value { serde_json::from_slice(&seen.body).expect("request JSON") };
    let mut locked = user_json("bob", "Bob Byte", None);
    locked["locked"] = json!(true);
    locked["locked_until"] = json!("2024-05-01T10:15:00.000Z");
    locked["failed_sign_ins"] = json!(5);
    Some(match (seen.method.as_str(), seen.path_and_query.as_str()) {
        ("GET", "/api/v1/users?limit=1") => {
            let mut ada = user_json("ada", "Ada Lovelace", Some("ada@example.org"));
            ada["last_sign_in_at"] = json!("2024-05-01T09:00:00.000Z");
            json_response(
                StatusCode::OK,
                &json!({"items": [ada], "next": "ada", "total": 2}),
            )
        }
        ("GET", "/api/v1/users?limit=1&after=ada") => json_response(
            StatusCode::OK,
            &json!({"items": [locked], "next": null, "total": 2}),
        ),
        ("GET", "/api/v1/users/bob") => json_response(StatusCode::OK, &locked),
        ("GET" | "DELETE" | "PATCH", "/api/v1/users/nobody%20here") => api_error(
            StatusCode::NOT_FOUND,
            "USER_NOT_FOUND",
            "no user account `nobody here`",
        ),
        ("POST", "/api/v1/users") => {
            let b = body();
            let username = b["username"].as_str().expect("username").to_lowercase();
            if username == "taken" {
                return Some(api_error(
                    StatusCode::CONFLICT,
                    "USER_EXISTS",
                    "a user account `taken` exists",
                ));
            }
            if b["password"].as_str().expect("password").chars().count() < 10 {
                return Some(api_error(
                    StatusCode::BAD_REQUEST,
                    "PASSWORD_POLICY",
                    "password: must be at least 10 characters",
                ));
            }
            json_response(
                StatusCode::CREATED,
                &user_json(
                    &username,
                    b["full_name"].as_str().expect("full_name"),
                    b["email"].as_str(),
                ),
            )
        }
        ("PATCH", "/api/v1/users/ada") => {
            let b = body();
            let mut u = user_json("ada", "Ada Lovelace", Some("ada@example.org"));
            if let Some(name) = b.get("full_name") {
                u["full_name"] = name.clone();
            }
            match b.get("email").and_then(Value::as_str) {
                Some("") => u["email"] = Value::Null,
                Some(e) => u["email"] = json!(e),
                None => {}
            }
            if let Some(d) = b.get("disabled") {
                u["disabled"] = d.clone();
            }
            json_response(StatusCode::OK, &u)
        }
        ("DELETE", "/api/v1/users/ada") => {
            json_response(StatusCode::OK, &json!({"deleted": "ada"}))
        }
        ("POST", "/api/v1/users/bob/unlock") => {
            json_response(StatusCode::OK, &user_json("bob", "Bob Byte", None))
        }
        _ => return None,
    })
}

/// The passphrase for which the fake appliance fails to make a backup.
const BACKUP_FAILS: &str = "the disk is full, sorry";
/// The passphrase for which it answers JSON instead of a backup.
const BACKUP_JSON: &str = "answer with JSON instead";
/// The passphrase for which it takes longer than any test waits.
const BACKUP_SLOW: &str = "take your time, please";

/// The bytes the fake appliance sends as a backup: several MB of noise, so that they arrive in
/// many pieces and a lost or repeated piece shows.
fn backup_bytes() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let mut x: u32 = 0x2545_f491;
        (0..3 * 1024 * 1024 + 17)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x.to_be_bytes()[0]
            })
            .collect()
    })
}

/// The fake appliance's backup endpoint, with the refusals of the real one.
fn backup_answer(seen: &Seen) -> Option<Response<Full<Bytes>>> {
    if (seen.method.as_str(), seen.path_and_query.as_str()) != ("POST", "/api/v1/backup") {
        return None;
    }
    let body: Value = serde_json::from_slice(&seen.body).expect("request JSON");
    let passphrase = body["passphrase"].as_str().expect("passphrase").to_owned();
    Some(match passphrase.as_str() {
        p if p.chars().count() < 12 => api_error(
            StatusCode::BAD_REQUEST,
            "BACKUP_PASSPHRASE_POLICY",
            "passphrase: must be at least 12 characters",
        ),
        BACKUP_FAILS => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "BACKUP_FAILED",
            "the backup could not be made: No space left on device",
        ),
        BACKUP_JSON => json_response(StatusCode::OK, &json!({"bytes": 1})),
        BACKUP_SLOW => {
            // Blocks only this test's fake appliance; the client gives up long before.
            std::thread::sleep(std::time::Duration::from_secs(60));
            api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "BACKUP_UNAVAILABLE",
                "too slow",
            )
        }
        _ => {
            let mut resp = Response::new(Full::new(Bytes::from_static(backup_bytes())));
            let headers = resp.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(
                header::CONTENT_DISPOSITION,
                header::HeaderValue::from_static(
                    "attachment; filename=\"appliance-20250301T100000.mdmbackup\"",
                ),
            );
            resp
        }
    })
}

/// The fake appliance: the shapes of the real admin API for a few endpoints.
fn answer(seen: &Seen) -> Response<Full<Bytes>> {
    if seen.authorization.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "API_TOKEN_INVALID",
            "this API token is not known or was revoked",
        );
    }
    let device = |id: &str, serial: &str| {
        json!({"id": id, "device_id": id, "channel": "Device", "state": "Enrolled",
               "last_seen_at": 1_714_557_600_000_i64,
               "facts": {"serial_number": serial, "product_name": "iPhone14,2", "os_version": "17.4"}})
    };
    match (seen.method.as_str(), seen.path_and_query.as_str()) {
        ("GET", "/api/v1/status") => json_response(
            StatusCode::OK,
            &json!({"version": "9.9.9", "enrollments": 2, "push_topic": "com.apple.mgmt.External.test",
                    "ca_sha256": "00ff", "keystore": "soft", "caller": {"name": "admin", "role": "Admin"}}),
        ),
        ("POST", "/api/v1/enroll-links") => json_response(
            StatusCode::CREATED,
            &json!({"id": "L1", "label": "Bob", "created_at": "2024-05-01T10:00:00.000Z",
                    "expires_at": "2024-05-08T10:00:00.000Z", "revoked_at": null, "uses": 0,
                    "max_uses": null, "created_by": "admin",
                    "url": "https://mdm.example.lan:8443/enroll/secret-token"}),
        ),
        ("GET", "/api/v1/enrollments?limit=1") => json_response(
            StatusCode::OK,
            &json!({"items": [device("UDID-A", "SERIAL-A")], "next": "UDID-A"}),
        ),
        ("GET", "/api/v1/enrollments?limit=1&after=UDID-A") => json_response(
            StatusCode::OK,
            &json!({"items": [device("UDID-B", "SERIAL-B")], "next": null}),
        ),
        ("POST", "/api/v1/enrollments/UDID-A/push") => json_response(
            StatusCode::OK,
            &json!({"enrollment_id": "UDID-A", "result": "sent", "apns_id": "APNS-1"}),
        ),
        ("PUT", "/api/v1/push-cert?force=true") => json_response(
            StatusCode::OK,
            &json!({"topic": "com.apple.mgmt.External.test", "subject": "CN=APSP:test",
                    "not_after": "2030-01-01T00:00:00Z", "expired": false, "days_left": 2000}),
        ),
        _ => abm_answer(seen)
            .or_else(|| lifecycle_answer(seen))
            .or_else(|| profiles_answer(seen))
            .or_else(|| users_answer(seen))
            .or_else(|| backup_answer(seen))
            .unwrap_or_else(|| {
                api_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such API endpoint")
            }),
    }
}

/// A fake appliance on 127.0.0.1 with an ephemeral port, serving until the test process ends.
struct FakeAppliance {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeAppliance {
    fn start(pki: &Pki) -> FakeAppliance {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(pki.path("server.pem"))
                .expect("server.pem")
                .collect::<Result<_, _>>()
                .expect("certificates");
        let key = PrivateKeyDer::from_pem_file(pki.path("server.key")).expect("server.key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_by_server = Arc::clone(&seen);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let seen = Arc::clone(&seen_by_server);
                    tokio::spawn(async move {
                        // Failed handshakes (the untrusted-CA test) simply end the connection.
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let seen = Arc::clone(&seen);
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await?.to_bytes().to_vec();
                                let record = Seen {
                                    method: parts.method.to_string(),
                                    path_and_query: parts
                                        .uri
                                        .path_and_query()
                                        .map(|p| p.to_string())
                                        .unwrap_or_default(),
                                    authorization: parts
                                        .headers
                                        .get(header::AUTHORIZATION)
                                        .and_then(|v| v.to_str().ok())
                                        .map(str::to_owned),
                                    content_type: parts
                                        .headers
                                        .get(header::CONTENT_TYPE)
                                        .and_then(|v| v.to_str().ok())
                                        .map(str::to_owned),
                                    body,
                                };
                                let resp = answer(&record);
                                seen.lock().expect("lock").push(record);
                                Ok::<_, hyper::Error>(resp)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        FakeAppliance { addr, seen }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

/// `mdmctl` with a clean environment (no MDMCTL_* from the developer's shell).
fn mdmctl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mdmctl"));
    for var in ["MDMCTL_SERVER", "MDMCTL_TOKEN_FILE", "MDMCTL_CA"] {
        cmd.env_remove(var);
    }
    cmd
}

fn run(server: &str, pki: &Pki, token: &str, ca: &str, args: &[&str]) -> Output {
    mdmctl()
        .arg("--server")
        .arg(server)
        .arg("--token-file")
        .arg(pki.path(token))
        .arg("--ca")
        .arg(pki.path(ca))
        .args(args)
        .output()
        .expect("run mdmctl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("utf-8 stderr")
}

#[test]
fn status_prints_a_summary_or_the_json() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(&app.url(), &pki, "admin.token", "ca.pem", &["status"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("Version       9.9.9\n"), "{text}");
    assert!(
        text.contains("Push topic    com.apple.mgmt.External.test\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Appliance     {}\n", app.url())),
        "{text}"
    );

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["status", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("json output");
    assert_eq!(v["version"], "9.9.9");
    assert_eq!(v["caller"]["role"], "Admin");
    assert!(
        stdout(&out).contains("\n  \"version\""),
        "not pretty-printed"
    );

    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|s| s.method == "GET" && s.path_and_query == "/api/v1/status"));
    assert!(seen
        .iter()
        .all(|s| s.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))));
}

#[test]
fn enroll_link_create_prints_the_url_alone() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["enroll-link", "create", "--label", "Bob", "--ttl", "7d"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "https://mdm.example.lan:8443/enroll/secret-token\n"
    );
    assert!(
        stderr(&out).contains("enrollment link L1 created"),
        "{}",
        stderr(&out)
    );
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    let body: Value = serde_json::from_slice(&seen[0].body).expect("request JSON");
    assert_eq!(body, json!({"label": "Bob", "ttl_seconds": 604_800}));
}

#[test]
fn enrollments_list_all_follows_the_cursor_on_the_new_path() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["enrollments", "list", "--limit", "1", "--all"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "ID      STATE     SERIAL    MODEL       OS    LAST SEEN\n\
         UDID-A  enrolled  SERIAL-A  iPhone14,2  17.4  2024-05-01T10:00:00Z\n\
         UDID-B  enrolled  SERIAL-B  iPhone14,2  17.4  2024-05-01T10:00:00Z\n"
    );
    let paths: Vec<String> = app.seen().into_iter().map(|s| s.path_and_query).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/enrollments?limit=1",
            "/api/v1/enrollments?limit=1&after=UDID-A"
        ]
    );

    // One page: the cursor is offered on stderr, stdout stays a clean table.
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["enrollments", "list", "--limit", "1"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 2);
    assert!(stderr(&out).contains("--after UDID-A"), "{}", stderr(&out));

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["push", "UDID-A"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "UDID-A: sent APNS-1\n");
    let last = app.seen().pop().expect("push request");
    assert_eq!(
        (last.method.as_str(), last.path_and_query.as_str()),
        ("POST", "/api/v1/enrollments/UDID-A/push")
    );
}

#[test]
fn push_cert_import_uploads_the_file_bytes() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    // Any bytes do for the fake; the real appliance parses them.
    let cert = std::fs::read(pki.path("server.pem")).expect("read");
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &[
            "push-cert",
            "import",
            pki.path("server.pem").to_str().expect("path"),
            "--force",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).contains("Topic    com.apple.mgmt.External.test\n"),
        "{}",
        stdout(&out)
    );
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path_and_query.as_str()),
        ("PUT", "/api/v1/push-cert?force=true")
    );
    assert_eq!(seen[0].body, cert);
}

#[test]
fn api_refusals_exit_1_with_the_code() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(&app.url(), &pki, "wrong.token", "ca.pem", &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error API_TOKEN_INVALID: this API token is not known or was revoked\n"
    );
    assert!(out.stdout.is_empty());

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["tokens", "list"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "error NOT_FOUND: no such API endpoint\n");
}

#[test]
fn an_untrusted_certificate_exits_3_and_sends_nothing() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(&app.url(), &pki, "admin.token", "other-ca.pem", &["status"]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&app.url()), "{err}");
    assert!(err.contains("not trusted") && err.contains("--ca"), "{err}");
    assert!(
        app.seen().is_empty(),
        "a request went out over an untrusted connection"
    );

    // The right CA, but a name the certificate does not carry.
    let by_name = format!("https://localhost:{}", app.addr.port());
    let out = run(&by_name, &pki, "admin.token", "ca.pem", &["status"]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("not valid for \"localhost\""),
        "{}",
        stderr(&out)
    );

    // No CA at all.
    let out = mdmctl()
        .args(["--server", &app.url(), "--token-file"])
        .arg(pki.path("admin.token"))
        .arg("status")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("pass --ca"), "{}", stderr(&out));
}

#[test]
fn an_unreachable_appliance_exits_3() {
    let Some(pki) = Pki::create() else { return };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("https://127.0.0.1:{port}");
    let out = run(&url, &pki, "admin.token", "ca.pem", &["status"]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("error: cannot reach {url}: ")),
        "{err}"
    );
}

#[test]
fn local_problems_exit_2_before_any_connection() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(&app.url(), &pki, "missing.token", "ca.pem", &["status"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("cannot read the token file") && err.contains("missing.token"),
        "{err}"
    );

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["enroll-link", "create", "--ttl", "5x"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--ttl"), "{}", stderr(&out));

    let out = run(
        "http://127.0.0.1:1",
        &pki,
        "admin.token",
        "ca.pem",
        &["status"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("https://"), "{}", stderr(&out));

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["command", "send", "--device", "A", "EraseDevice"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));

    let out = mdmctl().arg("status").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--server"), "{}", stderr(&out));
    assert!(app.seen().is_empty());
}

#[test]
fn settings_come_from_the_environment_too() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = mdmctl()
        .env("MDMCTL_SERVER", app.url())
        .env("MDMCTL_TOKEN_FILE", pki.path("admin.token"))
        .env("MDMCTL_CA", pki.path("ca.pem"))
        .args(["status", "--json"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(v["enrollments"], 2);
}

#[test]
fn abm_token_upload_sends_the_file_as_pkcs7() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let token = pki.path("North_Token_smime.p7m");
    let bytes =
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\r\nMIAGCSqGSIb3\r\n";
    std::fs::write(&token, bytes).expect("write token");
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &[
            "abm",
            "token",
            "upload",
            "north",
            token.to_str().expect("path"),
            "--force",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).contains("Connection       north\n"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out)
            .contains("server token uploaded to north: Example School, MDM server North appliance"),
        "{}",
        stderr(&out)
    );
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].content_type.as_deref(),
        Some("application/pkcs7-mime")
    );
    assert_eq!(seen[0].body, bytes);
}

#[test]
fn abm_sync_prints_the_run_or_fails_with_the_api_code() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["abm", "sync", "north", "--full"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with("Sync      full fetch, 2 pages\nAdded     150\n"),
        "{}",
        stdout(&out)
    );

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["abm", "sync", "north"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error ABM_UNREACHABLE: ABM connection \"north\": Apple did not answer\n"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn abm_profile_assign_prints_every_outcome_and_exits_1_on_a_failure() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let list = pki.path("serials.txt");
    std::fs::write(&list, "# carts\nc02x1\nNOPE1\n").expect("write");
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &[
            "abm",
            "profile",
            "assign",
            "north",
            "staff",
            "DMPX2",
            "--file",
            list.to_str().expect("path"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "SERIAL  OUTCOME    REASON\n\
         DMPX2   success    -\n\
         C02X1   success    -\n\
         NOPE1   not found  not listed\n"
    );
    assert_eq!(
        stderr(&out),
        "error ABM_DEVICES_FAILED: 1 of 3 devices not assigned: NOPE1 NOT_FOUND\n"
    );
    let seen = app.seen();
    let body: Value = serde_json::from_slice(&seen[0].body).expect("JSON");
    assert_eq!(body, json!({"serials": ["DMPX2", "C02X1", "NOPE1"]}));
}

#[test]
fn abm_destructive_commands_need_their_flag() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["abm", "disown", "north", "c02x1"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("add --yes-disown to confirm"),
        "{}",
        stderr(&out)
    );
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["abm", "delete", "north"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("add --yes to confirm"),
        "{}",
        stderr(&out)
    );
    assert!(
        app.seen().is_empty(),
        "a request went out without confirmation"
    );

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["abm", "disown", "north", "c02x1", "C02X1", "--yes-disown"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["abm", "delete", "north", "--yes"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let seen = app.seen();
    let body: Value = serde_json::from_slice(&seen[0].body).expect("JSON");
    assert_eq!(
        body,
        json!({"serials": ["C02X1"], "confirm": "disown 1 devices"})
    );
    assert_eq!(seen[1].path_and_query, "/api/v1/abm/north?confirm=north");
}

#[test]
fn abm_csv_and_public_key_come_out_as_served() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["abm", "devices", "north", "--csv"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), DEVICES_CSV);

    let pem = pki.path("north.pem");
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &[
            "abm",
            "public-key",
            "north",
            "--out",
            pem.to_str().expect("path"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&pem).expect("read"), PUBLIC_KEY_PEM);
    assert!(
        stderr(&out).contains("mdmctl abm token upload north FILE.p7m"),
        "{}",
        stderr(&out)
    );
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["abm", "public-key", "north"],
    );
    assert_eq!(stdout(&out), PUBLIC_KEY_PEM);
}

#[test]
fn devices_list_sends_the_filters_and_prints_the_table() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &[
            "devices",
            "list",
            "--status",
            "awaiting_configuration,offline",
            "--search",
            "Ada L",
            "--connection",
            "north",
            "--sort",
            "last_seen",
            "--desc",
            "--limit",
            "2",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "SERIAL        STATUS                          NAME          MODEL        LAST SEEN             REASON\n\
         C02XK1ABJGH5  awaiting_configuration (stuck)  Ada Lovelace  MacBook Air  2024-05-01T10:05:00Z  The device enrolled during Setup Assistant and is held th...\n\
         F2LXR7QBHG7F  offline                         Ada Lovelace  MacBook Air  2024-05-01T10:05:00Z  The device enrolled during Setup Assistant and is held th...\n"
    );
    assert_eq!(
        stderr(&out),
        "2 of 7 devices\nmore devices follow: add --after WyJ4IiwiRjJMWCJd (or --all)\n"
    );
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["devices", "list", "--csv", "--status", "offline"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), DEVICES_CSV);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));

    // Contradictory output choices are refused before anything is sent.
    let before = app.seen().len();
    for args in [
        &["devices", "list", "--csv", "--json"][..],
        &["devices", "list", "--csv", "--all"],
        &["devices", "list", "--status", "enroled"],
    ] {
        let out = run(&app.url(), &pki, "admin.token", "ca.pem", args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(app.seen().len(), before, "a refused command sent a request");
}

#[test]
fn devices_show_renders_the_joined_record() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["devices", "show", "c02xk1abjgh5"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "Serial       C02XK1ABJGH5\n",
        "Status       awaiting_configuration (stuck)\n",
        "Since        2024-05-01T10:00:00Z\n",
        "Fix          It is released automatically once its baseline is acknowledged; release it by hand with `mdmctl release SERIAL`.\n",
        "Stuck        yes\n",
        "Waiting for  DeviceConfigured to be fetched\n",
        "Name         Ada Lovelace\n",
        "\nABM\n  none: no ABM connection lists this serial number\n",
        "\nEnrollment\n  ID                      UDID-1\n  State                   enrolled\n",
        "Queued commands  DeviceConfigured\n",
        "\nProfiles\n  Groups  carts\n  Wi-Fi   failed: declined by the user\n\nQueued commands",
        "\nTIMELINE\nAT                    ACTOR   TYPE                 OUTCOME  SUMMARY\n\
         2024-05-01T10:00:00Z  device  enrollment.enrolled  ok       enrolled through ADE\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert_eq!(app.seen()[0].path_and_query, "/api/v1/devices/c02xk1abjgh5");
}

#[test]
fn release_prints_the_command_or_the_refusal() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["release", "C02XK1ABJGH5"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "release of C02XK1ABJGH5 queued (command CMD-1)\n"
    );
    let seen = app.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path_and_query.as_str()),
        ("POST", "/api/v1/devices/C02XK1ABJGH5/release")
    );
    assert!(seen[0].body.is_empty());

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["release", "F2LXR7QBHG7F"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error NOT_AWAITING_CONFIGURATION: device F2LXR7QBHG7F is not waiting in Setup Assistant\n"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn preenroll_import_sends_the_file_and_exits_by_the_report() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let file = pki.path("people.csv");
    std::fs::write(&file, PREENROLL_CSV).expect("write csv");
    let path = file.to_str().expect("path");

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["preenroll", "import", path, "--dry-run"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("Rows      2\nValid     2\nNew       2\n"),
        "{text}"
    );
    assert!(text.contains("\nignored columns: notes\n"), "{text}");
    assert!(
        text.ends_with(
            "nothing written: dry run; without --dry-run 2 new and 0 replaced would be written\n"
        ),
        "{text}"
    );
    assert!(out.stderr.is_empty(), "{}", stderr(&out));

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["preenroll", "import", path],
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("\nrow 3, email: \"grace@\" is not an email address\n"),
        "{text}"
    );
    assert!(
        text.ends_with("nothing written: 1 row(s) have errors; nothing was written. Fix them, or import only the valid rows.\n"),
        "{text}"
    );
    assert_eq!(
        stderr(&out),
        "error PREENROLL_ROWS_INVALID: 1 row(s) have errors; nothing was written. Fix them, or \
         import only the valid rows.\n"
    );

    // The same refusal with --json: the report as the API gave it, and the same exit code.
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["preenroll", "import", path, "--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(v["errors"][0]["row"], 3);

    let seen = app.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[0].path_and_query,
        "/api/v1/preenroll/import?dry_run=true"
    );
    assert_eq!(seen[1].path_and_query, "/api/v1/preenroll/import");
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert_eq!(s.content_type.as_deref(), Some("text/csv"));
        assert_eq!(s.body, PREENROLL_CSV.as_bytes());
    }
}

#[test]
fn preenroll_import_reads_standard_input() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let mut child = mdmctl()
        .arg("--server")
        .arg(app.url())
        .arg("--token-file")
        .arg(pki.path("admin.token"))
        .arg("--ca")
        .arg(pki.path("ca.pem"))
        .args(["preenroll", "import", "-", "--dry-run"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(PREENROLL_CSV.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(app.seen()[0].body, PREENROLL_CSV.as_bytes());
}

#[test]
fn preenroll_sample_prints_the_csv() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["preenroll", "sample"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), SAMPLE_CSV);
}

/// The value of `key` in a query string, percent-decoded (enough for RFC 3339 times).
fn query_value(path_and_query: &str, key: &str) -> Option<String> {
    let query = path_and_query.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.replace("%3A", ":"))
    })
}

#[test]
fn activity_turns_a_relative_since_into_an_rfc3339_time() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let before = time::OffsetDateTime::now_utc();
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["activity", "--type", "enrollment", "--since", "2h"],
    );
    let after = time::OffsetDateTime::now_utc();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "AT                    ACTOR   TYPE                 OUTCOME  TARGETS                  SUMMARY\n\
         2024-05-01T10:00:00Z  device  enrollment.enrolled  ok       C02XK1ABJGH5, UDID-1 +1  enrolled\n"
    );
    assert_eq!(
        stderr(&out),
        "older entries follow: add --before 6 (or --all)\n"
    );
    let seen = app.seen();
    let since = query_value(&seen[0].path_and_query, "since").expect("since in the query");
    let t = time::OffsetDateTime::parse(&since, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{since:?} is not RFC 3339: {e}"));
    assert!(since.ends_with('Z'), "{since}");
    let two_hours = time::Duration::hours(2);
    assert!(
        t >= (before - two_hours).replace_nanosecond(0).expect("ns") && t <= after - two_hours,
        "{since} is not two hours before the run"
    );
    assert_eq!(query_value(&seen[0].path_and_query, "limit"), None);
}

#[test]
fn activity_csv_comes_out_as_served() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["activity", "--device", "C02XK1ABJGH5", "--csv"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), ACTIVITY_CSV);
    assert_eq!(
        app.seen()[0].path_and_query,
        "/api/v1/activity?device=C02XK1ABJGH5&format=csv"
    );
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["activity", "--csv", "--jsonl"],
    );
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert_eq!(app.seen().len(), 1);
}

#[test]
fn settings_set_patches_only_the_given_fields() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &[
            "settings",
            "set",
            "--preenrolled-only",
            "true",
            "--offline-after-hours",
            "48",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "preenrolled_only: true\n\
         abm_as_preenrolled: false\n\
         auto_release: true\n\
         offline_after_hours: 48\n\
         enrolling_grace_minutes: 30\n\
         awaiting_stuck_after_minutes: 30\n\
         activity_retention_days: 365\n"
    );
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path_and_query.as_str()),
        ("PATCH", "/api/v1/settings")
    );
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
    let body: Value = serde_json::from_slice(&seen[0].body).expect("JSON");
    assert_eq!(
        body,
        json!({"preenrolled_only": true, "offline_after_hours": 48})
    );

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["settings", "set"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(app.seen().len(), 1);
}

#[test]
fn groups_create_sends_the_rule_and_refuses_a_bad_where_locally() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &[
            "groups",
            "create",
            "New iPads",
            "--where",
            "os_version version_at_least 17.4",
            "--where",
            "model is iPad Air",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("ID           grp_1\nName         New iPads\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "Rule: devices that match all of (--rule-match all)\n  \
             os_version version_at_least 17.4\n  model is iPad Air\n"
        ),
        "{text}"
    );
    assert_eq!(stderr(&out), "group New iPads created\n");
    let seen = app.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path_and_query.as_str()),
        ("POST", "/api/v1/groups")
    );
    let body: Value = serde_json::from_slice(&seen[0].body).expect("JSON");
    assert_eq!(
        body,
        json!({"name": "New iPads", "rule": {"match": "all", "conditions": [
            {"field": "os_version", "op": "version_at_least", "value": "17.4"},
            {"field": "model", "op": "is", "value": "iPad Air"}]}})
    );

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["groups", "create", "old", "--where", "os_version >= 17"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("'--where <FIELD OP VALUE>'") && err.contains("\">=\" is not an operator"),
        "{err}"
    );
    assert_eq!(app.seen().len(), 1, "a refused command sent a request");
}

#[test]
fn groups_update_with_only_the_match_mode_keeps_the_conditions() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &[
            "groups",
            "update",
            "New iPads",
            "--rule-match",
            "all",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("JSON output");
    assert_eq!(v["rule"]["match"], "all");
    let seen = app.seen();
    let calls: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path_and_query.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("GET", "/api/v1/groups/New%20iPads"),
            ("PATCH", "/api/v1/groups/New%20iPads")
        ]
    );
    let body: Value = serde_json::from_slice(&seen[1].body).expect("JSON");
    assert_eq!(
        body,
        json!({"rule": {"match": "all", "conditions": [
            {"field": "platform", "op": "is", "value": "ipados"}]}})
    );
}

#[test]
fn groups_members_all_follows_next_and_delete_reports_the_conflict() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["groups", "members", "carts", "--all", "--limit", "1"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "SERIAL        STATUS     NAME          MODEL        OS    LAST SEEN\n\
         C02XK1ABJGH5  enrolled   Ada Lovelace  MacBook Air  14.4  2024-05-01T10:05:00Z\n\
         F2LXR7QBHG7F  not known  -             -            -     -\n"
    );
    assert_eq!(stderr(&out), "2 of 2 members\n");
    assert_eq!(app.seen().len(), 2);

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["groups", "delete", "carts"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error GROUP_IN_USE: group `carts` is assigned to profiles Wi-Fi; unassign it from them first\n"
    );
}

#[test]
fn groups_add_reads_a_file_and_prints_the_reconcile_counts() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let file = pki.path("carts.txt");
    std::fs::write(&file, "# cart 1\nc02xk1abjgh5\n\nDMPX2\n").expect("write");
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &[
            "groups",
            "add",
            "carts",
            "F2LXR7QBHG7F",
            "--file",
            file.to_str().expect("path"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "added 2 devices to group carts (1 already in it)\n\
         queued 2 installs, 0 removals on 2 devices\n"
    );
    let seen = app.seen();
    assert_eq!(seen[0].path_and_query, "/api/v1/groups/carts/members");
    let body: Value = serde_json::from_slice(&seen[0].body).expect("JSON");
    assert_eq!(
        body,
        json!({"add": ["F2LXR7QBHG7F", "C02XK1ABJGH5", "DMPX2"]})
    );

    std::fs::write(&file, "C02X1\nnot a serial\n").expect("write");
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &[
            "groups",
            "remove",
            "carts",
            "--file",
            file.to_str().expect("path"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("carts.txt line 2"),
        "{}",
        stderr(&out)
    );
    assert_eq!(app.seen().len(), 1);
}

#[test]
fn profiles_upload_sends_the_file_as_is_and_shows_its_warnings() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let file = pki.path("wifi.mobileconfig");
    std::fs::write(&file, PROFILE_FILE).expect("write");
    let path = file.to_str().expect("path");
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["profiles", "upload", path, "--name", "School Wi-Fi"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("Name             School Wi-Fi\n"), "{text}");
    assert!(
        text.contains("com.apple.wifi.managed  com.example.wifi.1  Wi-Fi         U-2\n"),
        "{text}"
    );
    assert_eq!(
        stderr(&out),
        "profile School Wi-Fi uploaded; assign it with \
         `mdmctl profiles assign 'School Wi-Fi' --group GROUP`\n\
         warning: the Wi-Fi password is in the file in clear text\n"
    );
    let seen = app.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path_and_query.as_str()),
        ("POST", "/api/v1/profiles?name=School%20Wi-Fi")
    );
    assert_eq!(
        seen[0].content_type.as_deref(),
        Some("application/x-apple-aspen-config")
    );
    assert_eq!(seen[0].body, PROFILE_FILE);

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["profiles", "upload", path],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error PROFILE_INVALID: PayloadContent[0].PayloadType: missing\n"
    );
}

#[test]
fn profiles_download_writes_the_bytes_unchanged() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["profiles", "download", "wifi"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(out.stdout, PROFILE_FILE);

    let file = pki.path("copy.mobileconfig");
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &[
            "profiles",
            "download",
            "wifi",
            "-o",
            file.to_str().expect("path"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(std::fs::read(&file).expect("read"), PROFILE_FILE);
    assert!(
        stdout(&out).starts_with("profile written to ") && stdout(&out).contains(" bytes)\n"),
        "{}",
        stdout(&out)
    );
    assert!(app
        .seen()
        .iter()
        .all(|s| s.path_and_query == "/api/v1/profiles/wifi/file"));
}

#[test]
fn profiles_delete_needs_yes_while_assigned() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["profiles", "delete", "wifi"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: profile Wi-Fi is assigned to 1 group and 0 devices; deleting it removes it \
         from every device that has it; add --yes to confirm\n"
    );
    assert!(app.seen().iter().all(|s| s.method == "GET"));

    for args in [
        &["profiles", "delete", "wifi", "--yes"][..],
        &["profiles", "delete", "fonts"],
    ] {
        let out = run(&app.url(), &pki, "admin.token", "ca.pem", args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(
            stdout(&out),
            format!(
                "deleted profile {}\nqueued 0 installs, 2 removals on 2 devices\n",
                args[2]
            )
        );
    }
    let deletes = app
        .seen()
        .into_iter()
        .filter(|s| s.method == "DELETE")
        .count();
    assert_eq!(deletes, 2);
}

#[test]
fn profiles_assign_status_and_retry() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &[
            "profiles", "assign", "wifi", "--group", "carts", "--device", "c02x1", "--device",
            "DMPX2",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "profile Wi-Fi is assigned to\n  \
         Groups   carts\n  \
         Devices  2: C02X1, DMPX2\n\
         queued 2 installs, 0 removals on 2 devices\n"
    );
    let body: Value = serde_json::from_slice(&app.seen()[0].body).expect("JSON");
    assert_eq!(
        body,
        json!({"groups": ["carts"], "devices": ["C02X1", "DMPX2"]})
    );

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["profiles", "status", "wifi", "--all", "--state", "failed"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "SERIAL  STATE   UPDATED               ENROLLMENT  DETAIL\n\
         DMPX2   failed  2024-05-01T10:00:00Z  UDID-DMPX2  MDM error 4001: the profile is already installed\n\
         F2LX3   failed  2024-05-01T10:00:00Z  UDID-F2LX3  declined by the user\n"
    );
    assert_eq!(stderr(&out), "2 of 3 installs fetched\n");

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["profiles", "status", "wifi", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["next"], "DMPX2");

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["profiles", "retry", "wifi"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "queued 2 installs, 0 removals on 2 devices\n");

    let before = app.seen().len();
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["profiles", "unassign", "wifi", "--device", "C02-X1"],
    );
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert_eq!(app.seen().len(), before);
}

/// Runs `mdmctl` with `input` on a piped standard input.
fn run_with_stdin(server: &str, pki: &Pki, args: &[&str], input: &[u8]) -> Output {
    run_with_stdin_as(server, pki, "admin.token", args, input)
}

/// [`run_with_stdin`] with the token in the file `token`.
fn run_with_stdin_as(server: &str, pki: &Pki, token: &str, args: &[&str], input: &[u8]) -> Output {
    let mut child = mdmctl()
        .arg("--server")
        .arg(server)
        .arg("--token-file")
        .arg(pki.path(token))
        .arg("--ca")
        .arg(pki.path("ca.pem"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // A command refused before it reads its input may exit before this is written.
    match child.stdin.take().expect("stdin").write_all(input) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        written => written.expect("write stdin"),
    }
    child.wait_with_output().expect("wait")
}

/// The JSON bodies of the requests the fake appliance received.
fn bodies(app: &FakeAppliance) -> Vec<Value> {
    app.seen()
        .iter()
        .map(|s| serde_json::from_slice(&s.body).expect("request JSON"))
        .collect()
}

#[test]
fn users_list_pages_and_shows_why_an_account_cannot_sign_in() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["users", "list", "--limit", "1"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "USERNAME  NAME          EMAIL            STATE   LAST SIGN-IN\n\
         ada       Ada Lovelace  ada@example.org  active  2024-05-01T09:00:00Z\n"
    );
    assert_eq!(
        stderr(&out),
        "1 of 2 user accounts\nmore user accounts follow: add --after ada (or --all)\n"
    );

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["users", "list", "--limit", "1", "--all"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "USERNAME  NAME          EMAIL            STATE                              LAST SIGN-IN\n\
         ada       Ada Lovelace  ada@example.org  active                             2024-05-01T09:00:00Z\n\
         bob       Bob Byte      -                locked until 2024-05-01T10:15:00Z  -\n"
    );
    assert_eq!(stderr(&out), "2 of 2 user accounts\n");

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["users", "list", "--limit", "1", "--all", "--json"],
    );
    let v: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        (v["next"].clone(), v["total"].clone()),
        (Value::Null, json!(2))
    );

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["users", "show", "BOB"],
    );
    // Usernames go as typed: matching them without case is the appliance's business.
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        app.seen().last().map(|s| s.path_and_query.clone()),
        Some("/api/v1/users/BOB".to_owned())
    );
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["users", "show", "bob"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("State            locked until 2024-05-01T10:15:00Z\n"),
        "{text}"
    );
    assert!(text.contains("Failed sign-ins  5\n"), "{text}");
    assert!(
        stderr(&out).contains("`mdmctl users unlock bob` lifts it now"),
        "{}",
        stderr(&out)
    );

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["users", "show", "nobody here"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error USER_NOT_FOUND: no user account `nobody here`\n"
    );
}

#[test]
fn users_add_takes_the_password_from_a_pipe_and_never_prints_it() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let secret = "correct horse battery staple";
    let out = run_with_stdin(
        &app.url(),
        &pki,
        &[
            "users",
            "add",
            "Ada",
            "--name",
            "Ada Lovelace",
            "--email",
            "ada@example.org",
            "--password-stdin",
        ],
        format!("{secret}\nignored second line\n").as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with("Username         ada\n"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("user account ada created"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        bodies(&app),
        [json!({"username": "Ada", "full_name": "Ada Lovelace",
                "email": "ada@example.org", "password": secret})]
    );
    assert_eq!(app.seen()[0].path_and_query, "/api/v1/users");

    // Without --password-stdin, standard input that is not a terminal is read the same way;
    // a Windows line ending is not part of the password.
    let out = run_with_stdin(
        &app.url(),
        &pki,
        &["users", "add", "grace", "--name", "Grace Hopper", "--json"],
        format!("{secret}\r\n").as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(v["username"], "grace");
    assert_eq!(bodies(&app)[1]["password"], secret);

    // The appliance's refusals come back with their code; the password is not in them.
    let out = run_with_stdin(
        &app.url(),
        &pki,
        &["users", "add", "taken", "--name", "T", "--password-stdin"],
        format!("{secret}\n").as_bytes(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error USER_EXISTS: a user account `taken` exists\n"
    );
    let out = run_with_stdin(
        &app.url(),
        &pki,
        &["users", "add", "short", "--name", "S", "--password-stdin"],
        b"tiny\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error PASSWORD_POLICY: password: must be at least 10 characters\n"
    );
    assert!(!stdout(&out).contains("tiny") && !stderr(&out).contains("tiny"));
}

#[test]
fn users_passwords_are_never_arguments_and_nothing_is_sent_without_one() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    for args in [
        &["users", "set", "ada", "--password", "hunter2-secret"][..],
        &[
            "users",
            "set",
            "ada",
            "--password=hunter2-secret",
            "--disable",
        ],
        &[
            "users",
            "add",
            "ada",
            "--name",
            "Ada",
            "--password",
            "hunter2-secret",
        ],
    ] {
        let out = run(&app.url(), &pki, "admin.token", "ca.pem", args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.starts_with("error: --password takes no value"), "{err}");
        assert!(
            !err.contains("hunter2") && !stdout(&out).contains("hunter2"),
            "{err}"
        );
    }
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &[
            "users",
            "set",
            "ada",
            "--password",
            "hunter2-secret",
            "--password-stdin",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));

    // `run` gives no standard input: an empty line is no password.
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["users", "add", "ada", "--name", "Ada"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: no password on standard input: the line is empty\n"
    );
    let out = run_with_stdin(
        &app.url(),
        &pki,
        &["users", "set", "ada", "--password-stdin"],
        b"\n",
    );
    assert_eq!(out.status.code(), Some(2));
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["users", "add", "ada", "--name", " ", "--password-stdin"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--name needs"), "{}", stderr(&out));
    assert!(app.seen().is_empty(), "{:?}", app.seen());
}

#[test]
fn users_set_sends_only_the_changes_and_remove_and_unlock_report() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &[
            "users",
            "set",
            "ada",
            "--name",
            "Ada King",
            "--no-email",
            "--disable",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("Name             Ada King\n"), "{text}");
    assert!(text.contains("Email            -\n"), "{text}");
    assert!(text.contains("State            disabled\n"), "{text}");
    assert_eq!(stderr(&out), "user account ada changed\n");
    assert_eq!(app.seen()[0].method, "PATCH");
    assert_eq!(
        bodies(&app)[0],
        json!({"full_name": "Ada King", "email": "", "disabled": true})
    );

    let out = run_with_stdin(
        &app.url(),
        &pki,
        &["users", "set", "ada", "--password-stdin", "--enable"],
        b"a new password, 2024\n",
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        bodies(&app)[1],
        json!({"password": "a new password, 2024", "disabled": false})
    );
    assert!(
        stderr(&out).contains("its password was replaced"),
        "{}",
        stderr(&out)
    );

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["users", "remove", "ada"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "deleted user account ada\n");
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["users", "remove", "nobody here"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error USER_NOT_FOUND"),
        "{}",
        stderr(&out)
    );

    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &["users", "unlock", "bob"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "unlocked user account bob; its failed sign-ins are cleared\n"
    );
    let seen: Vec<(String, String)> = app
        .seen()
        .into_iter()
        .map(|s| (s.method, s.path_and_query))
        .collect();
    assert_eq!(
        seen[2..],
        [
            ("DELETE".to_owned(), "/api/v1/users/ada".to_owned()),
            (
                "DELETE".to_owned(),
                "/api/v1/users/nobody%20here".to_owned()
            ),
            ("POST".to_owned(), "/api/v1/users/bob/unlock".to_owned()),
        ]
    );
}

/// A pseudo-terminal for the password prompt: `mdmctl` gets the terminal end as standard
/// input; the test types into the other end and reads what the terminal echoes there.
#[cfg(unix)]
struct Pty {
    master: std::fs::File,
    terminal: std::fs::File,
    echoed: Arc<Mutex<Vec<u8>>>,
}

#[cfg(unix)]
impl Pty {
    fn open() -> Pty {
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        use std::os::unix::fs::OpenOptionsExt as _;
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let terminal = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(i32::try_from(rustix::fs::OFlags::NOCTTY.bits()).expect("flag fits"))
            .open(name.to_str().expect("UTF-8 name"))
            .expect("open the terminal end");
        let master = std::fs::File::from(master);
        let echoed = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("clone");
        let sink = Arc::clone(&echoed);
        // Blocks until the test process ends once every terminal end is closed; that is fine
        // for a reader whose only job is to record.
        std::thread::spawn(move || {
            let mut buf = [0_u8; 256];
            while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            master,
            terminal,
            echoed,
        }
    }

    fn echoed(&self) -> String {
        String::from_utf8_lossy(&self.echoed.lock().expect("lock")).into_owned()
    }

    fn local_modes(&self) -> rustix::termios::LocalModes {
        rustix::termios::tcgetattr(&self.terminal)
            .expect("tcgetattr")
            .local_modes
    }

    fn type_bytes(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("type");
    }
}

/// `mdmctl` with the pseudo-terminal as standard input and stderr captured as it comes.
#[cfg(unix)]
struct Prompted {
    child: std::process::Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

#[cfg(unix)]
impl Prompted {
    fn spawn(app: &FakeAppliance, pki: &Pki, pty: &Pty, args: &[&str]) -> Prompted {
        let mut child = mdmctl()
            .arg("--server")
            .arg(app.url())
            .arg("--token-file")
            .arg(pki.path("admin.token"))
            .arg("--ca")
            .arg(pki.path("ca.pem"))
            .args(args)
            .stdin(pty.terminal.try_clone().expect("clone"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut pipe = child.stderr.take().expect("stderr");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            let mut buf = [0_u8; 256];
            while let Ok(n) = std::io::Read::read(&mut pipe, &mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        });
        Prompted {
            child,
            stderr,
            reader,
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("lock")).into_owned()
    }

    /// Waits until stderr ends with `prompt`: only then is echo off, so typing earlier
    /// would show on the terminal (and be flushed away).
    fn wait_for(&self, prompt: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !self.stderr().ends_with(prompt) {
            assert!(
                std::time::Instant::now() < deadline,
                "no prompt {prompt:?}; stderr so far: {:?}",
                self.stderr()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn finish(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().expect("wait");
        self.reader.join().expect("stderr reader");
        let stderr = String::from_utf8_lossy(&self.stderr.lock().expect("lock")).into_owned();
        (status.code(), stderr)
    }
}

#[cfg(unix)]
#[test]
fn users_add_asks_twice_on_a_terminal_with_echo_off() {
    use rustix::termios::LocalModes;
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let mut pty = Pty::open();
    assert!(pty
        .local_modes()
        .contains(LocalModes::ECHO | LocalModes::ICANON));
    let p = Prompted::spawn(&app, &pki, &pty, &["users", "add", "ada", "--name", "Ada"]);
    p.wait_for("Password for ada: ");
    assert!(!pty.local_modes().contains(LocalModes::ECHO), "echo is off");
    // A typo, erased; then Enter as a terminal sends it (CR).
    pty.type_bytes(b"correct horse 4X\x7f2\r");
    p.wait_for("Type it again: ");
    pty.type_bytes("correct horse 42\r".as_bytes());
    let (code, err) = p.finish();
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(bodies(&app)[0]["password"], "correct horse 42");
    assert!(!err.contains("correct"), "{err}");
    // Nothing typed was echoed by the terminal.
    assert!(
        !pty.echoed().contains("horse"),
        "echoed: {:?}",
        pty.echoed()
    );
    // The terminal's settings are back.
    assert!(pty
        .local_modes()
        .contains(LocalModes::ECHO | LocalModes::ICANON | LocalModes::ISIG));
}

#[cfg(unix)]
#[test]
fn users_prompts_refuse_a_mismatch_and_restore_the_terminal_on_ctrl_c() {
    use rustix::termios::LocalModes;
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let mut pty = Pty::open();

    let p = Prompted::spawn(&app, &pki, &pty, &["users", "set", "ada", "--password"]);
    p.wait_for("Password for ada: ");
    pty.type_bytes(b"first-password-1\r");
    p.wait_for("Type it again: ");
    pty.type_bytes(b"first-password-2\r");
    let (code, err) = p.finish();
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(
        err.ends_with("error: the two passwords typed differ; nothing was changed\n"),
        "{err}"
    );

    let p = Prompted::spawn(&app, &pki, &pty, &["users", "add", "ada", "--name", "Ada"]);
    p.wait_for("Password for ada: ");
    pty.type_bytes(b"half-typed\x03");
    let (code, err) = p.finish();
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(
        err.ends_with("error: interrupted at the password prompt; nothing was changed\n"),
        "{err}"
    );
    assert!(pty
        .local_modes()
        .contains(LocalModes::ECHO | LocalModes::ICANON | LocalModes::ISIG));

    // --password-stdin is for pipes: on a terminal it would show the password.
    let p = Prompted::spawn(
        &app,
        &pki,
        &pty,
        &["users", "set", "ada", "--password-stdin"],
    );
    let (code, err) = p.finish();
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(err.contains("standard input is a terminal"), "{err}");
    assert!(app.seen().is_empty(), "{:?}", app.seen());
    assert!(
        !pty.echoed().contains("password"),
        "echoed: {:?}",
        pty.echoed()
    );
}

/// The backup file and its partial file in the PKI's temp dir.
fn backup_paths(pki: &Pki, name: &str) -> (PathBuf, PathBuf) {
    let out = pki.path(name);
    let partial = pki.path(&format!("{name}.partial"));
    (out, partial)
}

/// `backup create --out OUT` and `extra`.
fn backup_create<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["backup", "create", "--out", out];
    args.extend_from_slice(extra);
    args
}

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn backup_create_writes_the_answer_and_never_prints_the_passphrase() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let (out_path, partial) = backup_paths(&pki, "a.mdmbackup");
    let out_arg = out_path.to_str().expect("path");
    let secret = "correct horse battery staple";
    let out = run_with_stdin(
        &app.url(),
        &pki,
        &["backup", "create", "--out", out_arg, "--passphrase-stdin"],
        format!("{secret}\nsecond line\n").as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let n = backup_bytes().len();
    assert_eq!(
        stdout(&out),
        format!("backup written to {out_arg} ({n} bytes)\n")
    );
    assert!(
        stderr(&out).contains(
            "the passphrase is needed to restore this backup (mdmd restore --data-dir DIR \
             --from FILE --passphrase-file F) and is not stored anywhere"
        ),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::read(&out_path).expect("backup") == backup_bytes());
    assert!(!partial.exists());
    #[cfg(unix)]
    assert_eq!(mode_of(&out_path), 0o600);
    let seen = app.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path_and_query.as_str()),
        ("POST", "/api/v1/backup")
    );
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(bodies(&app), [json!({ "passphrase": secret })]);

    // --force replaces the file (a readable old one included) with one only its owner reads;
    // --json prints the file and its size.
    std::fs::write(&out_path, b"an older backup").expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&out_path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let pass_file = pki.path("backup-pass.txt");
    std::fs::write(&pass_file, format!("{secret}\r\n")).expect("write");
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &[
            "backup",
            "create",
            "--out",
            out_arg,
            "--passphrase-file",
            pass_file.to_str().expect("path"),
            "--force",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(v, json!({"file": out_arg, "bytes": n}));
    assert!(std::fs::read(&out_path).expect("backup") == backup_bytes());
    #[cfg(unix)]
    assert_eq!(mode_of(&out_path), 0o600);
    assert!(!partial.exists());
    assert_eq!(bodies(&app)[1], json!({ "passphrase": secret }));
    for o in [&stdout(&out), &stderr(&out)] {
        assert!(!o.contains("horse"), "{o}");
    }
}

#[test]
fn backup_create_refuses_locally_before_anything_is_sent() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let (out_path, partial) = backup_paths(&pki, "b.mdmbackup");
    let out_arg = out_path.to_str().expect("path");

    // Eleven characters: one too few.
    let out = run_with_stdin(
        &app.url(),
        &pki,
        &backup_create(out_arg, &["--passphrase-stdin"]),
        b"only eleven\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: the passphrase on standard input has fewer than 12 characters, the fewest \
         accepted; no backup was made\n"
    );
    let pass_file = pki.path("short-pass.txt");
    std::fs::write(&pass_file, "short one\n").expect("write");
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &backup_create(
            out_arg,
            &["--passphrase-file", pass_file.to_str().expect("path")],
        ),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("fewer than 12 characters"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("short one"), "{}", stderr(&out));

    // Not on a terminal, and no flag: nothing to ask on, and a pipe is not read unasked.
    let out = run_with_stdin(
        &app.url(),
        &pki,
        &backup_create(out_arg, &[]),
        b"correct horse battery staple\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("standard input is not a terminal"),
        "{}",
        stderr(&out)
    );

    // A passphrase argument is not an option at all, and is not repeated.
    let out = run(
        &app.url(),
        &pki,
        "admin.token",
        "ca.pem",
        &backup_create(out_arg, &["--passphrase=correct-horse-battery"]),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!stderr(&out).contains("horse"), "{}", stderr(&out));

    assert!(!out_path.exists() && !partial.exists());

    // An existing file is refused without --force, and left as it was.
    std::fs::write(&out_path, b"an older backup").expect("write");
    let out = run_with_stdin(
        &app.url(),
        &pki,
        &backup_create(out_arg, &["--passphrase-stdin"]),
        b"correct horse battery staple\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!("error: {out_arg} exists and would be replaced; add --force to confirm\n")
    );
    assert_eq!(std::fs::read(&out_path).expect("read"), b"an older backup");

    // A partial file left by an interrupted run is not taken over, even with --force.
    std::fs::write(&partial, b"half").expect("write");
    let out = run_with_stdin(
        &app.url(),
        &pki,
        &backup_create(out_arg, &["--passphrase-stdin", "--force"]),
        b"correct horse battery staple\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(".partial exists: an earlier run was interrupted"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&partial).expect("read"), b"half");
    assert!(app.seen().is_empty(), "{:?}", app.seen());
}

#[test]
fn backup_create_removes_the_partial_file_when_the_appliance_fails() {
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let (out_path, partial) = backup_paths(&pki, "c.mdmbackup");
    let out_arg = out_path.to_str().expect("path");
    let args = ["backup", "create", "--out", out_arg, "--passphrase-stdin"];

    let out = run_with_stdin(
        &app.url(),
        &pki,
        &args,
        format!("{BACKUP_FAILS}\n").as_bytes(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error BACKUP_FAILED: the backup could not be made: No space left on device\n"
    );
    assert_eq!(stdout(&out), "");
    assert!(!out_path.exists() && !partial.exists());

    // A success answer that is not a backup is not kept as one.
    let out = run_with_stdin(
        &app.url(),
        &pki,
        &args,
        format!("{BACKUP_JSON}\n").as_bytes(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the answer is application/json, not application/octet-stream"),
        "{}",
        stderr(&out)
    );
    assert!(!out_path.exists() && !partial.exists());

    // A refused token: nothing written either.
    let out = run_with_stdin_as(
        &app.url(),
        &pki,
        "wrong.token",
        &args,
        b"correct horse battery staple\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error API_TOKEN_INVALID:"),
        "{}",
        stderr(&out)
    );
    assert!(!out_path.exists() && !partial.exists());
    assert_eq!(app.seen().len(), 3);
    for o in [stdout(&out), stderr(&out)] {
        assert!(!o.contains("horse"), "{o}");
    }
}

#[cfg(unix)]
#[test]
fn backup_create_interrupted_leaves_no_partial_file() {
    use rustix::process::{kill_process, Pid, Signal};
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let (out_path, partial) = backup_paths(&pki, "d.mdmbackup");
    let pass_file = pki.path("slow-pass.txt");
    std::fs::write(&pass_file, format!("{BACKUP_SLOW}\n")).expect("write");
    let child = mdmctl()
        .arg("--server")
        .arg(app.url())
        .arg("--token-file")
        .arg(pki.path("admin.token"))
        .arg("--ca")
        .arg(pki.path("ca.pem"))
        .args(["backup", "create", "--out"])
        .arg(&out_path)
        .arg("--passphrase-file")
        .arg(&pass_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // The partial file is created once interruptions are listened for.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !partial.exists() {
        assert!(std::time::Instant::now() < deadline, "no partial file");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid")).expect("pid");
    kill_process(pid, Signal::INT).expect("SIGINT");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("interrupted; no backup was written"),
        "{}",
        stderr(&out)
    );
    assert!(!partial.exists() && !out_path.exists());
}

#[cfg(unix)]
#[test]
fn backup_create_asks_for_the_passphrase_twice_on_a_terminal() {
    use rustix::termios::LocalModes;
    let Some(pki) = Pki::create() else { return };
    let app = FakeAppliance::start(&pki);
    let mut pty = Pty::open();
    let (out_path, partial) = backup_paths(&pki, "e.mdmbackup");
    let out_arg = out_path.to_str().expect("path");
    let create = ["backup", "create", "--out", out_arg];

    // Too short: refused at once, without asking again.
    let p = Prompted::spawn(&app, &pki, &pty, &create);
    p.wait_for("Passphrase for the backup: ");
    pty.type_bytes(b"too short\r");
    let (code, err) = p.finish();
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(
        err.ends_with(
            "error: the passphrase typed has fewer than 12 characters, the fewest accepted; \
             no backup was made\n"
        ),
        "{err}"
    );
    assert!(!err.contains("Type it again"), "{err}");

    // Two different entries.
    let p = Prompted::spawn(&app, &pki, &pty, &create);
    p.wait_for("Passphrase for the backup: ");
    pty.type_bytes(b"correct horse battery 1\r");
    p.wait_for("Type it again: ");
    pty.type_bytes(b"correct horse battery 2\r");
    let (code, err) = p.finish();
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(
        err.ends_with("error: the two passphrases typed differ; no backup was made\n"),
        "{err}"
    );

    // --passphrase-stdin is for pipes.
    let mut on_terminal = create.to_vec();
    on_terminal.push("--passphrase-stdin");
    let p = Prompted::spawn(&app, &pki, &pty, &on_terminal);
    let (code, err) = p.finish();
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(
        err.contains("--passphrase-stdin reads the passphrase from a pipe or a file"),
        "{err}"
    );
    assert!(app.seen().is_empty(), "{:?}", app.seen());
    assert!(!out_path.exists() && !partial.exists());

    // Typed twice the same: the backup is made.
    let p = Prompted::spawn(&app, &pki, &pty, &create);
    p.wait_for("Passphrase for the backup: ");
    assert!(!pty.local_modes().contains(LocalModes::ECHO), "echo is off");
    pty.type_bytes(b"correct horse battery 3\r");
    p.wait_for("Type it again: ");
    pty.type_bytes(b"correct horse battery 3\r");
    let (code, err) = p.finish();
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(
        bodies(&app),
        [json!({"passphrase": "correct horse battery 3"})]
    );
    assert!(std::fs::read(&out_path).expect("backup") == backup_bytes());
    assert!(!err.contains("horse"), "{err}");
    assert!(
        !pty.echoed().contains("horse"),
        "echoed: {:?}",
        pty.echoed()
    );
    assert!(pty
        .local_modes()
        .contains(LocalModes::ECHO | LocalModes::ICANON | LocalModes::ISIG));
}
