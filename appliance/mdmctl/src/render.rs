//! Text for humans, made from the admin API's JSON.
//!
//! Renderers read the JSON loosely (a missing field shows as `-`) so that a daemon one
//! version ahead or behind still gives readable output; `--json` is the exact answer for
//! scripts.

pub mod abm;
pub mod lifecycle;
pub mod profiles;
pub mod users;

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::table::{clean, key_values, Table};

/// Shown for a field the answer does not have.
const NONE: &str = "-";
/// Days before expiry from which `push-cert show` warns (Apple's portal allows renewal
/// well before; a lapsed certificate silences every device).
const PUSH_CERT_WARN_DAYS: i64 = 30;

/// The value at `path` inside `v`.
fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.get(key))
}

/// A scalar field as text; `-` when absent or null.
fn text(v: &Value, path: &[&str]) -> String {
    match at(v, path) {
        None | Some(Value::Null) => NONE.to_owned(),
        Some(Value::String(s)) if s.is_empty() => NONE.to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.to_owned(),
        Some(other) => other.to_string(),
    }
}

/// A string field, if present and non-empty.
fn opt_str<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Parses a timestamp the API gives either as RFC 3339 text or as milliseconds since the
/// Unix epoch (how enrollment records carry theirs).
fn timestamp(v: Option<&Value>) -> Option<OffsetDateTime> {
    match v? {
        Value::String(s) => OffsetDateTime::parse(s, &Rfc3339).ok(),
        Value::Number(n) => {
            let ms = i128::from(n.as_i64()?);
            OffsetDateTime::from_unix_timestamp_nanos(ms.checked_mul(1_000_000)?).ok()
        }
        _ => None,
    }
}

/// A timestamp field as RFC 3339 in UTC to the second; `-` when absent; unreadable text is
/// shown as it came.
fn time_text(v: &Value, path: &[&str]) -> String {
    let field = at(v, path);
    match timestamp(field) {
        Some(t) => format_time(t),
        None => match field {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => NONE.to_owned(),
        },
    }
}

fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// `CheckedOut` -> `checked out`: the API's enum names, as words.
fn words(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.extend(c.to_lowercase());
    }
    out
}

fn enum_text(v: &Value, path: &[&str]) -> String {
    match opt_str(v, path) {
        Some(s) => words(s),
        None => text(v, path),
    }
}

fn items(v: &Value) -> &[Value] {
    v.get("items")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// `mdmctl status`.
pub fn status(v: &Value, origin: &str) -> String {
    let topic = match opt_str(v, &["push_topic"]) {
        Some(t) => t.to_owned(),
        None => "none (import one: mdmctl push-cert import FILE)".to_owned(),
    };
    let caller = format!(
        "{} ({})",
        text(v, &["caller", "name"]),
        enum_text(v, &["caller", "role"])
    );
    key_values(&[
        ("Appliance", origin.to_owned()),
        ("Version", text(v, &["version"])),
        ("Enrollments", text(v, &["enrollments"])),
        ("Push topic", topic),
        ("CA SHA-256", text(v, &["ca_sha256"])),
        ("Keystore", text(v, &["keystore"])),
        ("Signed in as", caller),
    ])
}

/// Where an enrollment link stands at `now`.
fn link_state(link: &Value, now: OffsetDateTime) -> &'static str {
    if !matches!(at(link, &["revoked_at"]), None | Some(Value::Null)) {
        return "revoked";
    }
    let uses = at(link, &["uses"]).and_then(Value::as_u64).unwrap_or(0);
    if at(link, &["max_uses"])
        .and_then(Value::as_u64)
        .is_some_and(|max| uses >= max)
    {
        return "used up";
    }
    match timestamp(at(link, &["expires_at"])) {
        Some(t) if t <= now => "expired",
        Some(_) => "active",
        None => NONE,
    }
}

/// `mdmctl enroll-link list`.
pub fn links(v: &Value, now: OffsetDateTime) -> String {
    let mut t = Table::new(&["ID", "LABEL", "STATE", "USES", "EXPIRES", "CREATED BY"]);
    for link in items(v) {
        let uses = match at(link, &["max_uses"]).and_then(Value::as_u64) {
            Some(max) => format!("{}/{max}", text(link, &["uses"])),
            None => text(link, &["uses"]),
        };
        t.push([
            text(link, &["id"]),
            text(link, &["label"]),
            link_state(link, now).to_owned(),
            uses,
            time_text(link, &["expires_at"]),
            text(link, &["created_by"]),
        ]);
    }
    t.render()
}

/// The stderr note after `enroll-link create` (stdout holds only the URL).
pub fn link_created_note(v: &Value) -> String {
    let uses = match at(v, &["max_uses"]).and_then(Value::as_u64) {
        Some(1) => ", for 1 enrollment".to_owned(),
        Some(n) => format!(", for {n} enrollments"),
        None => String::new(),
    };
    format!(
        "enrollment link {} created; valid until {}{uses}",
        clean(&text(v, &["id"])),
        time_text(v, &["expires_at"])
    )
}

/// `mdmctl push-cert show` and `import`: the summary, and a warning when the certificate
/// has expired or expires soon.
pub fn push_cert(v: &Value) -> (String, Option<String>) {
    let days = at(v, &["days_left"]).and_then(Value::as_i64);
    let expired = at(v, &["expired"])
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let expiry = match days {
        _ if expired => format!("{} (EXPIRED)", text(v, &["not_after"])),
        Some(d) => format!("{} ({d} days left)", text(v, &["not_after"])),
        None => text(v, &["not_after"]),
    };
    let summary = key_values(&[
        ("Topic", text(v, &["topic"])),
        ("Subject", text(v, &["subject"])),
        ("Expires", expiry),
    ]);
    let renew = "renew it in Apple's push certificates portal with the same Apple Account, \
                 then `mdmctl push-cert import`; a new topic would orphan every enrolled device";
    let warning = match days {
        _ if expired => Some(format!(
            "warning: the push certificate has expired and devices cannot be woken; {renew}"
        )),
        Some(d) if d < PUSH_CERT_WARN_DAYS => Some(format!(
            "warning: the push certificate expires in {d} days; {renew}"
        )),
        _ => None,
    };
    (summary, warning)
}

/// The device model as admins know it: product name (`iPhone14,2`), else marketing name,
/// else the order number.
fn model(facts: &Value) -> String {
    opt_str(facts, &["product_name"])
        .or_else(|| opt_str(facts, &["model_name"]))
        .or_else(|| opt_str(facts, &["model"]))
        .unwrap_or(NONE)
        .to_owned()
}

/// `mdmctl enrollments list`.
pub fn enrollments(list: &[Value]) -> String {
    let mut t = Table::new(&["ID", "STATE", "SERIAL", "MODEL", "OS", "LAST SEEN"]);
    for e in list {
        let facts = at(e, &["facts"]).unwrap_or(&Value::Null);
        t.push([
            text(e, &["id"]),
            enum_text(e, &["state"]),
            text(facts, &["serial_number"]),
            model(facts),
            text(facts, &["os_version"]),
            time_text(e, &["last_seen_at"]),
        ]);
    }
    t.render()
}

fn source_text(source: Option<&Value>) -> String {
    match source {
        None | Some(Value::Null) => NONE.to_owned(),
        Some(s) => {
            if let Some(link) = at(s, &["Link", "link_id"]).and_then(Value::as_str) {
                format!("enrollment link {link}")
            } else if let Some(ade) = s.get("Ade") {
                format!(
                    "Automated Device Enrollment (serial {})",
                    text(ade, &["serial"])
                )
            } else {
                s.to_string()
            }
        }
    }
}

/// `mdmctl enrollments show`.
pub fn enrollment(v: &Value) -> String {
    let e = at(v, &["enrollment"]).unwrap_or(v);
    let facts = at(e, &["facts"]).unwrap_or(&Value::Null);
    let os = match opt_str(facts, &["build_version"]) {
        Some(build) => format!("{} ({build})", text(facts, &["os_version"])),
        None => text(facts, &["os_version"]),
    };
    let model = [&["model_name"][..], &["product_name"], &["model"]]
        .iter()
        .filter_map(|p| opt_str(facts, p))
        .collect::<Vec<_>>()
        .join(", ");
    let awaiting = at(e, &["awaiting_configuration"])
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut rows = vec![
        ("ID", text(e, &["id"])),
        ("Device ID", text(e, &["device_id"])),
        ("Channel", enum_text(e, &["channel"])),
        ("State", enum_text(e, &["state"])),
        ("Serial", text(facts, &["serial_number"])),
        (
            "Model",
            if model.is_empty() {
                NONE.to_owned()
            } else {
                model
            },
        ),
        ("OS", os),
        ("Device name", text(facts, &["device_name"])),
    ];
    if opt_str(e, &["user_id"]).is_some() {
        rows.push((
            "User",
            format!(
                "{} ({})",
                text(e, &["user_short_name"]),
                text(e, &["user_id"])
            ),
        ));
    }
    rows.extend([
        ("Enrolled via", source_text(at(e, &["source"]))),
        ("Push topic", text(e, &["topic"])),
        (
            "Push token",
            // `push_token_present` is how the API says it; `push` is kept for daemons that
            // sent the (secret-free) push object instead.
            if at(e, &["push_token_present"]).and_then(Value::as_bool) == Some(true)
                || at(e, &["push"]).is_some_and(|p| !p.is_null())
            {
                "registered"
            } else {
                "none"
            }
            .into(),
        ),
        (
            "Awaiting configuration",
            if awaiting {
                "yes: held in Setup Assistant until it receives DeviceConfigured".to_owned()
            } else {
                "no".to_owned()
            },
        ),
        ("Queued commands", text(v, &["queued_commands"])),
        ("Authenticated", time_text(e, &["authenticated_at"])),
        ("Enrolled", time_text(e, &["enrolled_at"])),
        ("Token updated", time_text(e, &["token_updated_at"])),
        ("Checked out", time_text(e, &["checked_out_at"])),
        ("Last seen", time_text(e, &["last_seen_at"])),
        ("Identity SHA-256", text(e, &["identity_sha256"])),
    ]);
    key_values(&rows)
}

/// `mdmctl enrollments commands`: an enrollment's deliveries.
pub fn deliveries(v: &Value) -> String {
    let mut t = Table::new(&["COMMAND", "TYPE", "STATUS", "QUEUED", "UPDATED"]);
    for d in items(v) {
        t.push([
            text(d, &["command_uuid"]),
            text(d, &["request_type"]),
            enum_text(d, &["status"]),
            time_text(d, &["queued_at"]),
            time_text(d, &["updated_at"]),
        ]);
    }
    t.render()
}

/// `mdmctl command send`: the stderr notes (stdout holds only the UUID).
pub fn command_queued_notes(v: &Value) -> Vec<String> {
    let names = |key: &str| -> Vec<String> {
        at(v, &[key])
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|x| clean(x.as_str().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let queued = names("queued");
    let refused = names("refused");
    let mut notes = vec![format!(
        "{} queued for {} enrollment{}",
        clean(&text(v, &["request_type"])),
        queued.len(),
        if queued.len() == 1 { "" } else { "s" }
    )];
    if !refused.is_empty() {
        notes.push(format!(
            "warning: not queued for {} (unknown or checked out)",
            refused.join(", ")
        ));
    }
    notes
}

/// `mdmctl command show`.
/// "5 (3 Acknowledged, 2 Queued)" from a command view's counts.
fn delivery_counts(v: &Value) -> String {
    let total = at(v, &["total_deliveries"])
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let parts: Vec<String> = at(v, &["delivery_counts"])
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(status, n)| format!("{} {}", n.as_u64().unwrap_or(0), words(status)))
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        total.to_string()
    } else {
        format!("{total} ({})", parts.join(", "))
    }
}

pub fn command(v: &Value) -> String {
    let mut out = key_values(&[
        ("Command", text(v, &["command_uuid"])),
        ("Type", text(v, &["request_type"])),
        (
            "Created",
            format!(
                "{} by {}",
                time_text(v, &["created_at"]),
                text(v, &["created_by"])
            ),
        ),
        ("Deliveries", delivery_counts(v)),
    ]);
    let deliveries = at(v, &["deliveries"])
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut t = Table::new(&["ENROLLMENT", "STATUS", "UPDATED"]);
    for d in deliveries {
        t.push([
            text(d, &["enrollment_id"]),
            enum_text(d, &["status"]),
            time_text(d, &["updated_at"]),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render());
    for d in deliveries {
        let Some(result) = result_plist(d) else {
            continue;
        };
        out.push_str(&format!(
            "\nResult from {} ({}):\n",
            clean(&text(d, &["enrollment_id"])),
            enum_text(d, &["status"])
        ));
        out.push_str(&result);
    }
    out
}

/// A delivery's result plist as an indented outline, if it has one. Devices send XML; a
/// binary plist arrives base64-encoded.
fn result_plist(delivery: &Value) -> Option<String> {
    use base64::Engine as _;
    let bytes = match (
        opt_str(delivery, &["result_plist"]),
        opt_str(delivery, &["result_base64"]),
    ) {
        (Some(text), _) => text.as_bytes().to_vec(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?,
        (None, None) => return None,
    };
    Some(
        match plist::Value::from_reader(std::io::Cursor::new(&bytes)) {
            Ok(plist::Value::Dictionary(dict)) => {
                let mut out = String::new();
                // Already in the header and the table above.
                let shown = ["CommandUUID", "Status"];
                for (key, value) in dict.iter().filter(|(k, _)| !shown.contains(&k.as_str())) {
                    plist_entry(&mut out, 1, Some(key), value);
                }
                out
            }
            Ok(other) => {
                let mut out = String::new();
                plist_entry(&mut out, 1, None, &other);
                out
            }
            Err(e) => format!("  (not a readable plist: {e}; use --json for the raw text)\n"),
        },
    )
}

/// One plist value, indented two spaces per level; containers open a nested block.
fn plist_entry(out: &mut String, depth: usize, key: Option<&str>, value: &plist::Value) {
    let pad = "  ".repeat(depth);
    let label = match key {
        Some(k) => format!("{pad}{}:", clean(k)),
        None => format!("{pad}-"),
    };
    match value {
        plist::Value::Dictionary(d) if !d.is_empty() => {
            out.push_str(&label);
            out.push('\n');
            for (k, v) in d {
                plist_entry(out, depth + 1, Some(k), v);
            }
        }
        plist::Value::Array(a) if !a.is_empty() => {
            out.push_str(&label);
            out.push('\n');
            for v in a {
                plist_entry(out, depth + 1, None, v);
            }
        }
        scalar => {
            out.push_str(&label);
            out.push(' ');
            out.push_str(&plist_scalar(scalar));
            out.push('\n');
        }
    }
}

fn plist_scalar(value: &plist::Value) -> String {
    match value {
        plist::Value::String(s) => clean(s),
        plist::Value::Boolean(b) => b.to_string(),
        plist::Value::Integer(i) => i.to_string(),
        plist::Value::Real(r) => r.to_string(),
        plist::Value::Date(d) => d.to_xml_format(),
        plist::Value::Data(bytes) => format!("<{} bytes of data>", bytes.len()),
        plist::Value::Uid(u) => format!("uid {}", u.get()),
        plist::Value::Dictionary(_) => "{}".to_owned(),
        plist::Value::Array(_) => "[]".to_owned(),
        _ => "(unknown plist value)".to_owned(),
    }
}

/// `mdmctl tokens list`.
pub fn tokens(v: &Value) -> String {
    let mut t = Table::new(&["ID", "NAME", "ROLE", "CREATED", "REVOKED"]);
    for tok in items(v) {
        t.push([
            text(tok, &["id"]),
            text(tok, &["name"]),
            enum_text(tok, &["role"]),
            time_text(tok, &["created_at"]),
            time_text(tok, &["revoked_at"]),
        ]);
    }
    t.render()
}

/// `mdmctl keystore status`.
pub fn keystore(v: &Value) -> String {
    let backend = match opt_str(v, &["backend"]) {
        Some("tpm") => "TPM".to_owned(),
        Some("software") => "software (NOT hardware-backed; development only)".to_owned(),
        _ => text(v, &["backend"]),
    };
    let mut rows = vec![
        ("Backend", backend),
        ("Key ID", text(v, &["key_id"])),
        ("Key file", text(v, &["key_file"])),
    ];
    let previous: Vec<&str> = at(v, &["previous_key_ids"])
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !previous.is_empty() {
        rows.push((
            "Rotation",
            format!(
                "UNFINISHED: older key(s) {} still in the key file; run `mdmctl keystore rotate`",
                previous.join(", ")
            ),
        ));
    }
    if at(v, &["tpm"]).is_some_and(Value::is_object) {
        let firmware = match at(v, &["tpm", "firmware_version_raw"]).and_then(Value::as_array) {
            Some(raw) => {
                let raw: Vec<String> = raw
                    .iter()
                    .map(|n| match n.as_u64() {
                        Some(n) => format!("{n:#010x}"),
                        None => n.to_string(),
                    })
                    .collect();
                format!(
                    "{} ({})",
                    text(v, &["tpm", "firmware_version"]),
                    raw.join(" ")
                )
            }
            None => text(v, &["tpm", "firmware_version"]),
        };
        rows.extend([
            ("TPM interface", text(v, &["tpm", "tcti"])),
            ("Manufacturer", text(v, &["tpm", "manufacturer"])),
            ("Vendor string", text(v, &["tpm", "vendor"])),
            ("Firmware", firmware),
            ("Storage key", text(v, &["tpm", "storage_key_name"])),
            ("PCR policy", pcr_policy(v)),
        ]);
    }
    key_values(&rows)
}

/// The PCRs a TPM keystore's data key is bound to, or `none`.
fn pcr_policy(v: &Value) -> String {
    let pcrs: Vec<String> = at(v, &["tpm", "policy_pcrs"])
        .and_then(Value::as_array)
        .map(|p| p.iter().map(Value::to_string).collect())
        .unwrap_or_default();
    if pcrs.is_empty() {
        "none".to_owned()
    } else {
        pcrs.join(", ")
    }
}

/// The answer of `POST /keystore/rotate`.
pub fn rotation(v: &Value) -> String {
    let mut out = key_values(&[
        ("Previous key", text(v, &["previous_key_id"])),
        ("Key ID", text(v, &["key_id"])),
        ("Resumed", text(v, &["resumed"])),
        ("Records read", text(v, &["records"])),
        ("Secrets found", text(v, &["blobs"])),
        ("Re-sealed", text(v, &["resealed"])),
        ("Passes", text(v, &["passes"])),
        ("Took (ms)", text(v, &["elapsed_ms"])),
    ]);
    out.push_str(
        "\nThe old key is gone from the key file. Backups made before now still carry it: make \
         a new backup (`mdmctl backup create`) and destroy the older ones if the old key may \
         have leaked.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    #[test]
    fn timestamps_read_as_text_or_milliseconds() {
        let v = json!({
            "a": "2024-05-01T10:00:00.123Z",
            "b": 1_714_557_600_123_i64,
            "c": "2024-05-01T12:00:00+02:00",
            "d": null,
            "e": "yesterday",
        });
        assert_eq!(time_text(&v, &["a"]), "2024-05-01T10:00:00Z");
        assert_eq!(time_text(&v, &["b"]), "2024-05-01T10:00:00Z");
        assert_eq!(time_text(&v, &["c"]), "2024-05-01T10:00:00Z");
        assert_eq!(time_text(&v, &["d"]), "-");
        assert_eq!(time_text(&v, &["missing"]), "-");
        assert_eq!(time_text(&v, &["e"]), "yesterday");
    }

    #[test]
    fn enum_names_become_words() {
        assert_eq!(words("CheckedOut"), "checked out");
        assert_eq!(words("CommandFormatError"), "command format error");
        assert_eq!(words("Admin"), "admin");
    }

    #[test]
    fn status_shows_every_field_and_a_hint_without_topic() {
        let v = json!({
            "version": "0.1.0", "enrollments": 3, "push_topic": null,
            "ca_sha256": "ab12", "keystore": "soft",
            "caller": {"name": "admin", "role": "Admin"},
        });
        let out = status(&v, "https://mdm.lan:8443");
        assert!(
            out.contains("Appliance     https://mdm.lan:8443\n"),
            "{out}"
        );
        assert!(out.contains("Enrollments   3\n"), "{out}");
        assert!(out.contains("Push topic    none (import one"), "{out}");
        assert!(out.contains("Signed in as  admin (admin)\n"), "{out}");
    }

    #[test]
    fn keystore_shows_the_tpm_or_warns_about_software() {
        let v = json!({
            "backend": "tpm", "key_id": "4bcbf512f81dbde7",
            "key_file": "/var/lib/mdm/keystore-tpm.key",
            "tpm": {"tcti": "device:/dev/tpmrm0", "manufacturer": "IFX", "vendor": "SLB9670",
                    "firmware_version": "7.85.4555.0", "firmware_version_raw": [458837, 298516480],
                    "storage_key_name": "000b12", "policy_pcrs": [7]},
            "previous_key_ids": ["0011223344556677"],
        });
        let out = keystore(&v);
        assert!(out.contains("PCR policy     7\n"), "{out}");
        assert!(out.contains("UNFINISHED"), "{out}");
        assert!(out.contains("0011223344556677"), "{out}");
        assert!(out.contains("Backend        TPM\n"), "{out}");
        assert!(out.contains("Key ID         4bcbf512f81dbde7\n"), "{out}");
        assert!(out.contains("Manufacturer   IFX\n"), "{out}");
        assert!(
            out.contains("Firmware       7.85.4555.0 (0x00070055 0x11cb0000)\n"),
            "{out}"
        );
        assert!(out.contains("TPM interface  device:/dev/tpmrm0\n"), "{out}");

        let v = json!({"backend": "software", "key_id": "ab", "key_file": "/d/k", "tpm": null});
        let out = keystore(&v);
        assert!(out.contains("NOT hardware-backed"), "{out}");
        assert!(out.contains("Key file  /d/k\n"), "{out}");
        assert!(!out.contains("Manufacturer"), "{out}");
    }

    #[test]
    fn link_states_follow_revocation_uses_and_expiry() {
        let now = datetime!(2024-05-01 10:00 UTC);
        let v = json!({"items": [
            {"id": "L1", "label": "Bob", "expires_at": "2024-05-08T10:00:00Z", "revoked_at": null,
             "uses": 0, "max_uses": null, "created_by": "admin"},
            {"id": "L2", "label": "", "expires_at": "2024-04-30T10:00:00Z", "revoked_at": null,
             "uses": 1, "max_uses": 5, "created_by": "admin"},
            {"id": "L3", "label": "x", "expires_at": "2024-05-08T10:00:00Z", "revoked_at": null,
             "uses": 2, "max_uses": 2, "created_by": "ops"},
            {"id": "L4", "label": "y", "expires_at": "2024-05-08T10:00:00Z",
             "revoked_at": "2024-05-01T09:00:00Z", "uses": 0, "max_uses": 1, "created_by": "ops"},
        ]});
        assert_eq!(
            links(&v, now),
            "ID  LABEL  STATE    USES  EXPIRES               CREATED BY\n\
             L1  Bob    active   0     2024-05-08T10:00:00Z  admin\n\
             L2  -      expired  1/5   2024-04-30T10:00:00Z  admin\n\
             L3  x      used up  2/2   2024-05-08T10:00:00Z  ops\n\
             L4  y      revoked  0/1   2024-05-08T10:00:00Z  ops\n"
        );
        let note = link_created_note(&v["items"][1]);
        assert_eq!(
            note,
            "enrollment link L2 created; valid until 2024-04-30T10:00:00Z, for 5 enrollments"
        );
    }

    #[test]
    fn enrollments_table_takes_the_enrollment_record_shape() {
        let list = vec![
            json!({"id": "00008030-0001", "state": "Enrolled", "last_seen_at": 1_714_557_600_000_i64,
                   "facts": {"serial_number": "F2LXYZ", "product_name": "iPhone14,2",
                             "model_name": "iPhone", "os_version": "17.4"}}),
            json!({"id": "00008030-0001:USER", "state": "CheckedOut", "last_seen_at": 0,
                   "facts": {}}),
        ];
        assert_eq!(
            enrollments(&list),
            "ID                  STATE        SERIAL  MODEL       OS    LAST SEEN\n\
             00008030-0001       enrolled     F2LXYZ  iPhone14,2  17.4  2024-05-01T10:00:00Z\n\
             00008030-0001:USER  checked out  -       -           -     1970-01-01T00:00:00Z\n"
        );
    }

    #[test]
    fn enrollment_detail_explains_setup_assistant_holds() {
        let v = json!({"queued_commands": 2, "enrollment": {
            "id": "U1", "device_id": "U1", "channel": "Device", "state": "Enrolled",
            "identity_sha256": "ff00", "topic": "com.apple.mgmt.External.1",
            "facts": {"serial_number": "S1", "model_name": "iPad", "product_name": "iPad13,1",
                      "os_version": "17.4", "build_version": "21E219", "device_name": "Lab\u{1b}[2J iPad"},
            "source": {"Ade": {"udid": "U1", "serial": "S1"}},
            "push": {"token_hex": "00", "push_magic": "m", "topic": "t"},
            "awaiting_configuration": true, "authenticated_at": 1_714_557_600_000_i64,
            "enrolled_at": null, "last_seen_at": 1_714_557_600_000_i64}});
        let out = enrollment(&v);
        assert!(
            out.contains("Model                   iPad, iPad13,1\n"),
            "{out}"
        );
        assert!(
            out.contains("OS                      17.4 (21E219)\n"),
            "{out}"
        );
        assert!(
            out.contains("Device name             Lab\u{FFFD}[2J iPad\n"),
            "{out}"
        );
        assert!(
            out.contains("Enrolled via            Automated Device Enrollment (serial S1)\n"),
            "{out}"
        );
        assert!(
            out.contains("Push token              registered\n"),
            "{out}"
        );
        assert!(out.contains("until it receives DeviceConfigured"), "{out}");
        assert!(out.contains("Queued commands         2\n"), "{out}");
        assert!(out.contains("Enrolled                -\n"), "{out}");
        assert!(!out.contains("User "), "{out}");
        let link = json!({"enrollment": {"source": {"Link": {"link_id": "L9"}}, "user_id": "UID",
                                          "user_short_name": "bob", "push_token_present": false}});
        let out = enrollment(&link);
        assert!(out.contains("Push token              none\n"), "{out}");
        let api_shape = json!({"id": "U2", "push_token_present": true, "queued_commands": 0});
        assert!(
            enrollment(&api_shape).contains("Push token              registered\n"),
            "{}",
            enrollment(&api_shape)
        );
        assert!(
            out.contains("Enrolled via            enrollment link L9\n"),
            "{out}"
        );
        assert!(out.contains("User                    bob (UID)\n"), "{out}");
    }

    #[test]
    fn push_cert_warns_before_and_after_expiry() {
        let ok = json!({"topic": "com.apple.mgmt.External.1", "subject": "CN=APSP:1",
                        "not_after": "2025-05-01T00:00:00Z", "expired": false, "days_left": 200});
        let (text, warning) = push_cert(&ok);
        assert!(
            text.contains("Expires  2025-05-01T00:00:00Z (200 days left)\n"),
            "{text}"
        );
        assert!(warning.is_none());
        let soon = json!({"not_after": "x", "expired": false, "days_left": 12});
        assert!(push_cert(&soon)
            .1
            .expect("warning")
            .contains("expires in 12 days"));
        let gone = json!({"not_after": "x", "expired": true, "days_left": -3});
        let (text, warning) = push_cert(&gone);
        assert!(text.contains("(EXPIRED)"), "{text}");
        assert!(warning.expect("warning").contains("has expired"));
    }

    #[test]
    fn command_show_outlines_results() {
        let result = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict>
<key>CommandUUID</key><string>C1</string>
<key>QueryResponses</key><dict>
  <key>DeviceName</key><string>Zoë's iPhone</string>
  <key>IsSupervised</key><true/>
  <key>BatteryLevel</key><real>0.5</real>
</dict>
<key>Status</key><string>Acknowledged</string>
<key>UDID</key><string>U1</string>
</dict></plist>"#;
        let v = json!({
        "command_uuid": "C1", "request_type": "DeviceInformation",
        "created_at": "2024-05-01T10:00:00.000Z", "created_by": "admin",
        "total_deliveries": 2, "delivery_counts": {"Acknowledged": 1, "NotNow": 1},
        "deliveries": [
            {"enrollment_id": "U1", "status": "Acknowledged", "updated_at": "2024-05-01T10:00:05Z",
             "result_plist": result, "result_base64": null},
            {"enrollment_id": "U2", "status": "NotNow", "updated_at": "2024-05-01T10:00:06Z",
             "result_plist": null, "result_base64": null},
        ]});
        assert_eq!(
            command(&v),
            "Command     C1\n\
             Type        DeviceInformation\n\
             Created     2024-05-01T10:00:00Z by admin\n\
             Deliveries  2 (1 acknowledged, 1 not now)\n\
             \n\
             ENROLLMENT  STATUS        UPDATED\n\
             U1          acknowledged  2024-05-01T10:00:05Z\n\
             U2          not now       2024-05-01T10:00:06Z\n\
             \n\
             Result from U1 (acknowledged):\n  \
               QueryResponses:\n    \
                 DeviceName: Zoë's iPhone\n    \
                 IsSupervised: true\n    \
                 BatteryLevel: 0.5\n  \
               UDID: U1\n"
        );
    }

    #[test]
    fn binary_results_and_error_chains_are_outlined() {
        use base64::Engine as _;
        let mut dict = plist::Dictionary::new();
        let mut item = plist::Dictionary::new();
        item.insert("ErrorCode".into(), plist::Value::Integer(12021.into()));
        item.insert(
            "LocalizedDescription".into(),
            plist::Value::String("Profile not found".into()),
        );
        dict.insert(
            "ErrorChain".into(),
            plist::Value::Array(vec![plist::Value::Dictionary(item)]),
        );
        dict.insert("Blob".into(), plist::Value::Data(vec![1, 2, 3]));
        let mut bin = Vec::new();
        plist::Value::Dictionary(dict)
            .to_writer_binary(&mut bin)
            .expect("binary plist");
        let d = json!({"enrollment_id": "U1", "status": "Error",
                       "result_base64": base64::engine::general_purpose::STANDARD.encode(&bin)});
        assert_eq!(
            result_plist(&d).expect("result"),
            "  ErrorChain:\n    -\n      ErrorCode: 12021\n      LocalizedDescription: Profile not found\n  Blob: <3 bytes of data>\n"
        );
        let broken = json!({"result_plist": "<plist><dict><key>x"});
        assert!(result_plist(&broken)
            .expect("text")
            .contains("not a readable plist"));
        assert!(result_plist(&json!({"result_plist": null})).is_none());
    }

    #[test]
    fn tokens_and_deliveries_tables() {
        let v = json!({"items": [{"id": "T1", "name": "ci", "role": "Operator",
                                  "created_at": "2024-05-01T10:00:00.000Z", "revoked_at": null}]});
        assert_eq!(
            tokens(&v),
            "ID  NAME  ROLE      CREATED               REVOKED\n\
             T1  ci    operator  2024-05-01T10:00:00Z  -\n"
        );
        let d = json!({"items": [{"command_uuid": "C1", "request_type": "ProfileList",
                                  "status": "CommandFormatError", "queued_at": "2024-05-01T10:00:00Z",
                                  "updated_at": "2024-05-01T10:01:00Z"}]});
        assert_eq!(
            deliveries(&d),
            "COMMAND  TYPE         STATUS                QUEUED                UPDATED\n\
             C1       ProfileList  command format error  2024-05-01T10:00:00Z  2024-05-01T10:01:00Z\n"
        );
    }

    #[test]
    fn queued_notes_mention_refusals() {
        let v = json!({"command_uuid": "C1", "request_type": "ProfileList",
                       "queued": ["A"], "refused": ["B", "C"]});
        assert_eq!(
            command_queued_notes(&v),
            [
                "ProfileList queued for 1 enrollment",
                "warning: not queued for B, C (unknown or checked out)"
            ]
        );
    }
}
