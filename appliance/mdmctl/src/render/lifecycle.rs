//! Text for humans for the device lifecycle commands: devices, pre-enrollment, activity and
//! settings.
//!
//! Status names are printed as the API spells them (`awaiting_configuration`), so what a
//! table shows can be pasted into `devices list --status`. Like the other renderers these
//! read the JSON loosely: a missing field shows as `-`.

use serde_json::Value;

use super::abm::{count, object, plural, snake_text};
use super::{at, enum_text, opt_str, text, time_text, NONE};
use crate::cli::lifecycle::StatusArg;
use crate::table::{clean, key_values, Table};

/// Longest reason the device table shows; `devices show` has the whole sentence.
const REASON_CHARS: usize = 60;
/// Row errors an import report lists before it counts the rest.
const LISTED_ROW_ERRORS: usize = 50;
/// Already pre-enrolled serials an import report lists before it counts the rest.
const LISTED_DUPLICATES: usize = 10;
/// Targets an activity table cell lists before it counts the rest.
const LISTED_TARGETS: usize = 2;
/// The lifecycle settings, in the order `settings show` prints them.
const SETTINGS_KEYS: [&str; 8] = [
    "preenrolled_only",
    "abm_as_preenrolled",
    "auto_release",
    "offline_after_hours",
    "enrolling_grace_minutes",
    "awaiting_stuck_after_minutes",
    "activity_retention_days",
    "auto_unenroll_after_days",
];

/// `text` cut to `max` characters, the cut marked with `...`.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(max.saturating_sub(3)).collect();
    short.push_str("...");
    short
}

/// The strings of an array field (other elements skipped), cleaned.
fn strings(v: &Value, path: &[&str]) -> Vec<String> {
    at(v, path)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(clean).collect())
        .unwrap_or_default()
}

fn array<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn is_true(v: &Value, path: &[&str]) -> bool {
    at(v, path).and_then(Value::as_bool) == Some(true)
}

/// Every line of `block` indented by two spaces, to show it belongs to the heading above.
fn indent(block: &str) -> String {
    block.lines().map(|l| format!("  {l}\n")).collect()
}

/// A device's status, marked when it has waited longer than it should.
fn status_cell(d: &Value) -> String {
    let mut s = text(d, &["status"]);
    if is_true(d, &["stuck"]) {
        s.push_str(" (stuck)");
    }
    s
}

/// `mdmctl devices list`.
pub fn devices(list: &[Value]) -> String {
    let mut t = Table::new(&["SERIAL", "STATUS", "NAME", "MODEL", "LAST SEEN", "REASON"]);
    for d in list {
        t.push([
            text(d, &["serial"]),
            status_cell(d),
            text(d, &["name"]),
            text(d, &["model"]),
            time_text(d, &["last_seen_at"]),
            // Cleaned first so that the cut counts the characters the terminal shows.
            shorten(&clean(&text(d, &["reason"])), REASON_CHARS),
        ]);
    }
    t.render()
}

/// The stderr line under a list: `3 of 120 devices`.
pub fn shown_of(shown: usize, total: Option<u64>, what: &str) -> String {
    match total {
        Some(total) => format!("{shown} of {total} {what}"),
        None => format!("{shown} {what}"),
    }
}

/// One ABM record of `devices show`.
fn abm_record(a: &Value) -> String {
    let mut rows = vec![
        ("Model", text(a, &["model"])),
        ("OS", text(a, &["os"])),
        ("Profile status", snake_text(a, &["profile_status"])),
        ("Profile pushed", time_text(a, &["pushed_at"])),
    ];
    match object(a, &["last_assignment"]) {
        Some(last) => {
            let mut s = format!(
                "{}: profile {} at {}",
                snake_text(last, &["outcome"]),
                text(last, &["profile"]),
                time_text(last, &["at"])
            );
            let failures = count(last, &["failures"]);
            if failures > 0 {
                s.push_str(&format!(
                    ", {} in a row",
                    plural(failures, "failure", "failures")
                ));
            }
            rows.push(("Last assignment", s));
            if opt_str(last, &["reason"]).is_some() {
                rows.push(("Reason", text(last, &["reason"])));
            }
        }
        None => rows.push(("Last assignment", "none yet".to_owned())),
    }
    rows.push(("Next assignment", time_text(a, &["next_assignment_at"])));
    if opt_str(a, &["removed_at"]).is_some() {
        rows.push((
            "Removed",
            format!(
                "{} (ABM no longer lists it for this MDM server)",
                time_text(a, &["removed_at"])
            ),
        ));
    }
    key_values(&rows)
}

/// An activity table: `devices show`'s timeline and `activity`.
fn activity_table(list: &[Value], with_targets: bool) -> String {
    let mut headers = vec!["AT", "ACTOR", "TYPE", "OUTCOME"];
    if with_targets {
        headers.push("TARGETS");
    }
    headers.push("SUMMARY");
    let mut t = Table::new(&headers);
    for a in list {
        let mut row = vec![
            time_text(a, &["at"]),
            text(a, &["actor"]),
            text(a, &["kind"]),
            text(a, &["outcome"]),
        ];
        if with_targets {
            row.push(targets_cell(a));
        }
        row.push(text(a, &["summary"]));
        t.push(row);
    }
    t.render()
}

/// The first targets of an entry, then how many more: `C02X1, UDID-1 +3`.
fn targets_cell(a: &Value) -> String {
    let targets = strings(a, &["targets"]);
    if targets.is_empty() {
        return NONE.to_owned();
    }
    let mut cell = targets
        .iter()
        .take(LISTED_TARGETS)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if targets.len() > LISTED_TARGETS {
        cell.push_str(&format!(" +{}", targets.len() - LISTED_TARGETS));
    }
    cell
}

/// `mdmctl devices show`.
pub fn device(v: &Value) -> String {
    let mut rows = vec![
        ("Serial", text(v, &["serial"])),
        ("Status", status_cell(v)),
        ("Since", time_text(v, &["since"])),
        ("Reason", text(v, &["reason"])),
    ];
    if opt_str(v, &["fix"]).is_some() {
        rows.push(("Fix", text(v, &["fix"])));
    }
    rows.push((
        "Stuck",
        if is_true(v, &["stuck"]) { "yes" } else { "no" }.to_owned(),
    ));
    let waiting = strings(v, &["waiting_for"]);
    if !waiting.is_empty() {
        rows.push(("Waiting for", waiting.join("; ")));
    }
    rows.extend([
        ("Model", text(v, &["model"])),
        ("OS", text(v, &["os_version"])),
        ("Device name", text(v, &["device_name"])),
    ]);
    if is_true(v, &["preenrolled"]) {
        rows.extend([
            ("Name", text(v, &["name"])),
            ("Email", text(v, &["email"])),
            ("Ownership", text(v, &["ownership"])),
            ("Platform", text(v, &["platform"])),
        ]);
    } else {
        rows.push(("Pre-enrolled", "no".to_owned()));
    }
    let mut out = key_values(&rows);

    let records = array(v, &["abm"]);
    if records.is_empty() {
        out.push_str("\nABM\n  none: no ABM connection lists this serial number\n");
    }
    for a in records {
        out.push_str(&format!("\nABM {}\n", clean(&text(a, &["connection"]))));
        out.push_str(&indent(&abm_record(a)));
    }

    out.push_str("\nEnrollment\n");
    match object(v, &["enrollment"]) {
        Some(e) => {
            let awaiting = if is_true(e, &["awaiting_configuration"]) {
                "yes: held in Setup Assistant until it receives DeviceConfigured"
            } else {
                "no"
            };
            out.push_str(&indent(&key_values(&[
                ("ID", text(e, &["id"])),
                ("State", enum_text(e, &["state"])),
                ("Enrolled", time_text(e, &["enrolled_at"])),
                ("Last seen", time_text(e, &["last_seen_at"])),
                ("Awaiting configuration", awaiting.to_owned()),
            ])));
        }
        None => out.push_str("  none: the device has not enrolled with this appliance\n"),
    }

    if let Some(inv) = object(v, &["invitation"]) {
        out.push_str("\nRe-enrollment invitation\n");
        out.push_str(&indent(&invitation_rows(inv)));
    }

    if let Some(block) = super::profiles::device_block(v) {
        out.push('\n');
        out.push_str(&block);
    }

    let queued = strings(v, &["queued_commands"]);
    out.push('\n');
    out.push_str(&key_values(&[(
        "Queued commands",
        if queued.is_empty() {
            "none".to_owned()
        } else {
            queued.join(", ")
        },
    )]));

    out.push_str("\nTIMELINE\n");
    out.push_str(&activity_table(array(v, &["timeline"]), false));
    out
}

/// `mdmctl devices counts`: the table, and how many devices there are in all.
fn invitation_rows(v: &Value) -> String {
    let how = match opt_str(v, &["kind"]) {
        Some("link") => "open the one-time enrollment link on the device",
        Some("setup_assistant") => "erase the device; Setup Assistant enrolls it again",
        _ => "-",
    };
    let mut rows = vec![
        ("Created", time_text(v, &["created_at"])),
        ("Reason", text(v, &["reason"])),
        ("How", how.to_owned()),
    ];
    if opt_str(v, &["expires_at"]).is_some() {
        rows.push(("Link expires", time_text(v, &["expires_at"])));
    }
    if opt_str(v, &["url"]).is_some() {
        rows.push(("Link", text(v, &["url"])));
    }
    key_values(&rows)
}

/// `devices invitation`: the invitation with its link.
pub fn invitation(v: &Value) -> String {
    invitation_rows(v)
}

pub fn counts(v: &Value) -> (String, u64) {
    let mut t = Table::new(&["STATUS", "DEVICES"]);
    let mut total = 0_u64;
    let known: Vec<&str> = StatusArg::ALL.iter().map(|s| s.api_name()).collect();
    let mut push = |name: &str, n: &Value| {
        total += n.as_u64().unwrap_or(0);
        t.push([name.to_owned(), n.to_string()]);
    };
    for name in &known {
        if let Some(n) = v.get(*name) {
            push(name, n);
        }
    }
    // A newer appliance may know statuses this CLI does not: shown after the known ones.
    if let Some(map) = v.as_object() {
        for (name, n) in map.iter().filter(|(k, _)| !known.contains(&k.as_str())) {
            push(name, n);
        }
    }
    (t.render(), total)
}

/// `mdmctl preenroll import`: the report. `on_duplicate` is the choice given (if any), so
/// the hint about already pre-enrolled serials appears only when one is needed.
pub fn import_report(v: &Value, on_duplicate: Option<&str>) -> String {
    let mut out = key_values(&[
        ("Rows", text(v, &["total_rows"])),
        ("Valid", text(v, &["valid_rows"])),
        ("New", text(v, &["new"])),
        ("Replaced", text(v, &["replaced"])),
        ("Skipped", text(v, &["skipped"])),
    ]);
    let errors = array(v, &["errors"]);
    if !errors.is_empty() {
        out.push('\n');
        for e in errors.iter().take(LISTED_ROW_ERRORS) {
            let place = match opt_str(e, &["field"]) {
                Some(field) => format!("row {}, {}", text(e, &["row"]), clean(field)),
                None => format!("row {}", text(e, &["row"])),
            };
            out.push_str(&format!("{place}: {}\n", clean(&text(e, &["message"]))));
        }
        if errors.len() > LISTED_ROW_ERRORS {
            out.push_str(&format!(
                "... and {} more\n",
                errors.len() - LISTED_ROW_ERRORS
            ));
        }
    }
    let duplicates = array(v, &["duplicates"]);
    if !duplicates.is_empty() {
        let mut listed = duplicates
            .iter()
            .take(LISTED_DUPLICATES)
            .map(|d| {
                format!(
                    "{} (row {})",
                    clean(&text(d, &["serial_number"])),
                    text(d, &["row"])
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        if duplicates.len() > LISTED_DUPLICATES {
            listed.push_str(&format!(
                " and {} more",
                duplicates.len() - LISTED_DUPLICATES
            ));
        }
        let n = u64::try_from(duplicates.len()).unwrap_or(u64::MAX);
        out.push_str(&format!(
            "\n{} already pre-enrolled: {listed}\n",
            plural(n, "serial number is", "serial numbers are")
        ));
        match on_duplicate {
            Some(choice) => {
                out.push_str(&format!("they were handled with --on-duplicate {choice}\n"))
            }
            None => out.push_str(
                "add --on-duplicate replace to overwrite them with the file's rows, or \
                 --on-duplicate skip to keep them as they are\n",
            ),
        }
    }
    let ignored = strings(v, &["ignored_columns"]);
    if !ignored.is_empty() {
        out.push_str(&format!("\nignored columns: {}\n", ignored.join(", ")));
    }
    out.push('\n');
    out.push_str(&import_outcome(v));
    out.push('\n');
    out
}

/// The last line of an import report: what was written, or why nothing was.
fn import_outcome(v: &Value) -> String {
    if is_true(v, &["written"]) {
        return format!(
            "written: {} new, {} replaced, {} skipped",
            count(v, &["new"]),
            count(v, &["replaced"]),
            count(v, &["skipped"])
        );
    }
    if let Some(refused) = object(v, &["refused"]) {
        return format!("nothing written: {}", clean(&text(refused, &["message"])));
    }
    if is_true(v, &["dry_run"]) {
        return format!(
            "nothing written: dry run; without --dry-run {} new and {} replaced would be written",
            count(v, &["new"]),
            count(v, &["replaced"])
        );
    }
    if !array(v, &["errors"]).is_empty() {
        return "nothing written: no row is valid".to_owned();
    }
    "nothing written: no row to write".to_owned()
}

/// Where a pre-enrollment record came from: `csv`, `api`, `abm north`.
fn source_cell(p: &Value) -> String {
    match opt_str(p, &["source", "connection"]) {
        Some(conn) => format!("{} {conn}", text(p, &["source", "kind"])),
        None => text(p, &["source", "kind"]),
    }
}

/// `mdmctl preenroll list`.
pub fn preenrolled(list: &[Value]) -> String {
    let mut t = Table::new(&[
        "SERIAL",
        "NAME",
        "EMAIL",
        "OWNERSHIP",
        "PLATFORM",
        "DEVICE NAME",
        "SOURCE",
        "UPDATED",
    ]);
    for p in list {
        t.push([
            text(p, &["serial_number"]),
            text(p, &["name"]),
            text(p, &["email"]),
            text(p, &["ownership"]),
            text(p, &["platform"]),
            text(p, &["device_name"]),
            source_cell(p),
            time_text(p, &["updated_at"]),
        ]);
    }
    t.render()
}

/// `mdmctl activity`.
pub fn activity(list: &[Value]) -> String {
    activity_table(list, true)
}

/// `mdmctl settings show` and `set`: `key: value` lines in a fixed order, then any setting
/// this CLI does not know yet.
pub fn settings(v: &Value) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: &Value| {
        let shown = match value {
            Value::String(s) => clean(s),
            other => other.to_string(),
        };
        out.push_str(&format!("{}: {shown}\n", clean(key)));
    };
    for key in SETTINGS_KEYS {
        if let Some(value) = v.get(key) {
            line(key, value);
        }
    }
    if let Some(map) = v.as_object() {
        for (key, value) in map
            .iter()
            .filter(|(k, _)| !SETTINGS_KEYS.contains(&k.as_str()))
        {
            line(key, value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary(serial: &str, status: &str) -> Value {
        json!({"serial": serial, "enrollment_id": null, "status": status,
               "reason": "The device is pre-enrolled and has not been seen yet.", "fix": null,
               "since": null, "stuck": false, "name": "Ada Lovelace", "email": "ada@example.com",
               "ownership": "corporate", "platform": "macOS", "model": null, "os_version": null,
               "device_name": null, "abm_connection": null, "profile_status": null,
               "preenrolled": true, "last_seen_at": null, "enrolled_at": null})
    }

    #[test]
    fn the_device_table_marks_stuck_devices_and_cuts_long_reasons() {
        let mut held = summary("F2LXR7QBHG7F", "awaiting_configuration");
        held["stuck"] = json!(true);
        held["name"] = Value::Null;
        held["model"] = json!("iPhone 15");
        held["last_seen_at"] = json!("2024-05-01T10:00:00.123Z");
        held["reason"] = json!(
            "The device is held in Setup Assistant (AwaitingConfiguration) for more than 30 \
             minutes: it is waiting for its baseline to be acknowledged and for DeviceConfigured."
        );
        assert_eq!(
            devices(&[summary("C02XK1ABJGH5", "expected"), held]),
            "SERIAL        STATUS                          NAME          MODEL      LAST SEEN             REASON\n\
             C02XK1ABJGH5  expected                        Ada Lovelace  -          -                     The device is pre-enrolled and has not been seen yet.\n\
             F2LXR7QBHG7F  awaiting_configuration (stuck)  -             iPhone 15  2024-05-01T10:00:00Z  The device is held in Setup Assistant (AwaitingConfigurat...\n"
        );
        assert_eq!(shorten("abcdef", 6), "abcdef");
        assert_eq!(shorten("abcdefg", 6), "abc...");
        assert_eq!(shorten("ééééééé", 6), "ééé...");
        assert_eq!(shown_of(2, Some(120), "devices"), "2 of 120 devices");
        assert_eq!(shown_of(2, None, "devices"), "2 devices");
    }

    fn detail() -> Value {
        let mut v = summary("C02XK1ABJGH5", "awaiting_configuration");
        v["enrollment_id"] = json!("UDID-1");
        v["since"] = json!("2024-05-01T10:00:00Z");
        v["stuck"] = json!(true);
        v["fix"] = json!("release it by hand with `mdmctl release SERIAL`.");
        v["model"] = json!("MacBook Air");
        v["os_version"] = json!("14.4");
        v["waiting_for"] = json!(["ready: baseline acknowledged", "DeviceConfigured"]);
        v["preenroll"] = json!({"serial_number": "C02XK1ABJGH5"});
        v["abm"] = json!([{"connection": "north", "model": "MacBook Air", "device_family": "Mac",
            "os": "OSX", "profile_status": "pushed", "profile_uuid": "P1",
            "pushed_at": "2024-05-01T09:50:00Z",
            "last_assignment": {"profile": "staff", "outcome": "NOT_ACCESSIBLE",
                                "at": "2024-05-01T09:00:00Z", "reason": "Apple cannot reach it yet",
                                "failures": 2},
            "next_assignment_at": null, "removed_at": "2024-05-02T00:00:00Z",
            "first_seen_at": "2024-04-30T00:00:00Z"}]);
        v["enrollment"] = json!({"id": "UDID-1", "state": "Enrolled",
            "enrolled_at": "2024-05-01T10:00:00Z", "last_seen_at": "2024-05-01T10:05:00Z",
            "awaiting_configuration": true});
        v["queued_commands"] = json!(["DeviceConfigured", "ProfileList"]);
        v["recent_commands"] = json!([]);
        v["timeline"] = json!([
            {"seq": 9, "at": "2024-05-01T10:00:00.000Z", "actor": "device",
             "kind": "enrollment.enrolled", "targets": ["C02XK1ABJGH5", "UDID-1"],
             "outcome": "ok", "summary": "enrolled\u{1b}[2J", "detail": null}]);
        v
    }

    #[test]
    fn device_detail_has_every_block() {
        let out = device(&detail());
        assert_eq!(
            out,
            "Serial       C02XK1ABJGH5\n\
             Status       awaiting_configuration (stuck)\n\
             Since        2024-05-01T10:00:00Z\n\
             Reason       The device is pre-enrolled and has not been seen yet.\n\
             Fix          release it by hand with `mdmctl release SERIAL`.\n\
             Stuck        yes\n\
             Waiting for  ready: baseline acknowledged; DeviceConfigured\n\
             Model        MacBook Air\n\
             OS           14.4\n\
             Device name  -\n\
             Name         Ada Lovelace\n\
             Email        ada@example.com\n\
             Ownership    corporate\n\
             Platform     macOS\n\
             \n\
             ABM north\n  \
               Model            MacBook Air\n  \
               OS               OSX\n  \
               Profile status   pushed\n  \
               Profile pushed   2024-05-01T09:50:00Z\n  \
               Last assignment  not accessible: profile staff at 2024-05-01T09:00:00Z, 2 failures in a row\n  \
               Reason           Apple cannot reach it yet\n  \
               Next assignment  -\n  \
               Removed          2024-05-02T00:00:00Z (ABM no longer lists it for this MDM server)\n\
             \n\
             Enrollment\n  \
               ID                      UDID-1\n  \
               State                   enrolled\n  \
               Enrolled                2024-05-01T10:00:00Z\n  \
               Last seen               2024-05-01T10:05:00Z\n  \
               Awaiting configuration  yes: held in Setup Assistant until it receives DeviceConfigured\n\
             \n\
             Queued commands  DeviceConfigured, ProfileList\n\
             \n\
             TIMELINE\n\
             AT                    ACTOR   TYPE                 OUTCOME  SUMMARY\n\
             2024-05-01T10:00:00Z  device  enrollment.enrolled  ok       enrolled\u{FFFD}[2J\n"
        );
    }

    #[test]
    fn a_device_seen_only_by_abm_says_what_it_lacks() {
        let mut v = detail();
        v["preenrolled"] = json!(false);
        v["fix"] = Value::Null;
        v["stuck"] = json!(false);
        v["waiting_for"] = json!([]);
        v["abm"] = json!([]);
        v["enrollment"] = Value::Null;
        v["queued_commands"] = json!([]);
        v["timeline"] = json!([]);
        let out = device(&v);
        assert!(out.contains("Stuck         no\n"), "{out}");
        assert!(out.contains("Pre-enrolled  no\n"), "{out}");
        assert!(!out.contains("Fix "), "{out}");
        assert!(!out.contains("Waiting for"), "{out}");
        assert!(!out.contains("Email"), "{out}");
        assert!(
            out.contains("\nABM\n  none: no ABM connection lists this serial number\n"),
            "{out}"
        );
        assert!(
            out.contains("\nEnrollment\n  none: the device has not enrolled"),
            "{out}"
        );
        assert!(out.contains("Queued commands  none\n"), "{out}");
        assert!(
            out.ends_with("TIMELINE\nAT  ACTOR  TYPE  OUTCOME  SUMMARY\n"),
            "{out}"
        );
    }

    #[test]
    fn counts_follow_the_status_order_and_add_up() {
        let v = json!({"enrolled": 7, "assignment_failed": 1, "expected": 0, "future_status": 2});
        let (table, total) = counts(&v);
        assert_eq!(
            table,
            "STATUS             DEVICES\n\
             assignment_failed  1\n\
             expected           0\n\
             enrolled           7\n\
             future_status      2\n"
        );
        assert_eq!(total, 10);
    }

    fn report() -> Value {
        json!({"dry_run": false, "written": false,
               "refused": {"code": "PREENROLL_ROWS_INVALID",
                           "message": "2 row(s) have errors; nothing was written. Fix them, or import only the valid rows."},
               "total_rows": 4, "valid_rows": 2, "new": 2, "replaced": 0, "skipped": 0,
               "errors": [
                   {"row": 3, "field": "email", "code": "INVALID", "message": "\"ada@\" is not an email address"},
                   {"row": 5, "field": null, "code": "FIELD_COUNT", "message": "the row has 9 fields; the header has 7"}],
               "duplicates": [], "ignored_columns": ["notes", "department"],
               "error": {"code": "PREENROLL_ROWS_INVALID", "message": "2 row(s) have errors"}})
    }

    #[test]
    fn import_reports_list_errors_and_say_why_nothing_was_written() {
        assert_eq!(
            import_report(&report(), None),
            "Rows      4\n\
             Valid     2\n\
             New       2\n\
             Replaced  0\n\
             Skipped   0\n\
             \n\
             row 3, email: \"ada@\" is not an email address\n\
             row 5: the row has 9 fields; the header has 7\n\
             \n\
             ignored columns: notes, department\n\
             \n\
             nothing written: 2 row(s) have errors; nothing was written. Fix them, or import only the valid rows.\n"
        );
    }

    #[test]
    fn long_error_lists_are_cut_and_duplicates_get_a_hint() {
        let mut v = report();
        let errors: Vec<Value> = (0..60)
            .map(|i| json!({"row": i + 2, "field": "serial_number", "code": "INVALID", "message": "bad"}))
            .collect();
        v["errors"] = json!(errors);
        let out = import_report(&v, None);
        assert!(out.contains("row 51, serial_number: bad\n"), "{out}");
        assert!(!out.contains("row 52,"), "{out}");
        assert!(out.contains("... and 10 more\n"), "{out}");

        let dups: Vec<Value> = (0..12)
            .map(|i| json!({"row": i + 2, "serial_number": format!("SERIAL{i:02}")}))
            .collect();
        let dry = json!({"dry_run": true, "written": false, "refused": null, "total_rows": 12,
                         "valid_rows": 12, "new": 0, "replaced": 12, "skipped": 0, "errors": [],
                         "duplicates": dups, "ignored_columns": []});
        let out = import_report(&dry, None);
        assert!(
            out.contains("12 serial numbers are already pre-enrolled: SERIAL00 (row 2), "),
            "{out}"
        );
        assert!(out.contains("SERIAL09 (row 11) and 2 more\n"), "{out}");
        assert!(out.contains("add --on-duplicate replace"), "{out}");
        assert!(out.ends_with(
            "nothing written: dry run; without --dry-run 0 new and 12 replaced would be written\n"
        ), "{out}");
        let out = import_report(&dry, Some("replace"));
        assert!(
            out.contains("handled with --on-duplicate replace\n"),
            "{out}"
        );
        assert!(!out.contains("add --on-duplicate"), "{out}");
    }

    #[test]
    fn import_outcomes() {
        let written = json!({"written": true, "new": 3, "replaced": 1, "skipped": 2});
        assert_eq!(
            import_outcome(&written),
            "written: 3 new, 1 replaced, 2 skipped"
        );
        let all_invalid = json!({"written": false, "dry_run": false, "refused": null,
                                 "errors": [{"row": 2}]});
        assert_eq!(
            import_outcome(&all_invalid),
            "nothing written: no row is valid"
        );
        let all_skipped =
            json!({"written": false, "dry_run": false, "refused": null, "errors": []});
        assert_eq!(
            import_outcome(&all_skipped),
            "nothing written: no row to write"
        );
    }

    #[test]
    fn preenrolled_and_activity_tables() {
        let list = [
            json!({"serial_number": "C02XK1ABJGH5", "name": "Ada Lovelace", "email": "ada@example.com",
                   "ownership": "corporate", "platform": "macOS", "mobile": null,
                   "device_name": "Ada's Mac", "source": {"kind": "csv"},
                   "created_at": "2024-05-01T10:00:00.000Z", "updated_at": "2024-05-01T10:00:00.000Z",
                   "updated_by": "admin"}),
            json!({"serial_number": "DMPX1", "name": null, "email": null, "ownership": null,
                   "platform": null, "device_name": null,
                   "source": {"kind": "abm", "connection": "north"},
                   "updated_at": "2024-05-02T10:00:00Z"}),
        ];
        assert_eq!(
            preenrolled(&list),
            "SERIAL        NAME          EMAIL            OWNERSHIP  PLATFORM  DEVICE NAME  SOURCE     UPDATED\n\
             C02XK1ABJGH5  Ada Lovelace  ada@example.com  corporate  macOS     Ada's Mac    csv        2024-05-01T10:00:00Z\n\
             DMPX1         -             -                -          -         -            abm north  2024-05-02T10:00:00Z\n"
        );
        let entries = [
            json!({"seq": 12, "at": "2024-05-01T10:00:00.000Z", "actor": "token:admin",
                   "kind": "preenroll.import", "targets": ["A1", "B2", "C3", "D4"], "outcome": "ok",
                   "summary": "pre-enrolled 4 device(s)", "detail": null}),
            json!({"seq": 11, "at": "2024-05-01T09:00:00.000Z", "actor": "anonymous",
                   "kind": "auth.refused", "targets": [], "outcome": "refused",
                   "summary": "GET /api/v1/status: missing or unknown API token", "detail": null}),
            json!({"seq": 10, "at": "2024-05-01T08:00:00.000Z", "actor": "device",
                   "kind": "checkin.checkout", "targets": ["U1"], "outcome": "ok",
                   "summary": "checked out", "detail": null}),
        ];
        assert_eq!(
            activity(&entries),
            "AT                    ACTOR        TYPE              OUTCOME  TARGETS    SUMMARY\n\
             2024-05-01T10:00:00Z  token:admin  preenroll.import  ok       A1, B2 +2  pre-enrolled 4 device(s)\n\
             2024-05-01T09:00:00Z  anonymous    auth.refused      refused  -          GET /api/v1/status: missing or unknown API token\n\
             2024-05-01T08:00:00Z  device       checkin.checkout  ok       U1         checked out\n"
        );
    }

    #[test]
    fn settings_are_key_value_lines_in_a_fixed_order() {
        let v = json!({"activity_retention_days": 365, "auto_release": true,
                       "awaiting_stuck_after_minutes": 30, "abm_as_preenrolled": false,
                       "enrolling_grace_minutes": 30, "offline_after_hours": 72,
                       "preenrolled_only": false, "zz_new": "x\u{7}"});
        assert_eq!(
            settings(&v),
            "preenrolled_only: false\n\
             abm_as_preenrolled: false\n\
             auto_release: true\n\
             offline_after_hours: 72\n\
             enrolling_grace_minutes: 30\n\
             awaiting_stuck_after_minutes: 30\n\
             activity_retention_days: 365\n\
             zz_new: x\u{FFFD}\n"
        );
    }
}
