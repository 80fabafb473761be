//! Text for humans for `mdmctl groups ...` and `mdmctl profiles ...`.
//!
//! Rule conditions are printed in the syntax `--where` takes (`os_version version_at_least
//! 17.4`), so a rule shown by `groups show` can be pasted back into `groups update`. Like
//! the other renderers these read the JSON loosely: a missing field shows as `-`.

use serde_json::Value;

use super::abm::{count, object, plural};
use super::{at, items, opt_str, text, time_text, NONE};
use crate::table::{clean, key_values, Table};

/// Serial numbers `profiles show` lists before it counts the rest.
const LISTED_DEVICES: usize = 20;

fn array<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The `name` of each `{id, name}` reference in a list, joined; `-` for none.
fn names(v: &Value, path: &[&str]) -> String {
    let list: Vec<String> = array(v, path).iter().map(|r| text(r, &["name"])).collect();
    if list.is_empty() {
        NONE.to_owned()
    } else {
        list.join(", ")
    }
}

/// `{id, name}` references as indented `name (id)` lines, or `  none`.
fn named_lines(list: &[Value], none: &str) -> String {
    if list.is_empty() {
        return format!("  {none}\n");
    }
    list.iter()
        .map(|r| {
            format!(
                "  {} ({})\n",
                clean(&text(r, &["name"])),
                clean(&text(r, &["id"]))
            )
        })
        .collect()
}

/// Serial numbers, the first `max` listed and the rest counted.
fn serial_list(serials: &[Value], max: usize) -> String {
    let mut listed = serials
        .iter()
        .take(max)
        .map(|s| clean(s.as_str().unwrap_or(NONE)))
        .collect::<Vec<_>>()
        .join(", ");
    if serials.len() > max {
        listed.push_str(&format!(" and {} more", serials.len() - max));
    }
    listed
}

fn len_u64(list: &[Value]) -> u64 {
    u64::try_from(list.len()).unwrap_or(u64::MAX)
}

/// What a change queued: `queued 12 installs, 0 removals on 12 devices`. `v` is the API's
/// `reconcile` object.
pub fn reconcile(v: &Value) -> String {
    format!(
        "queued {}, {} on {}",
        plural(count(v, &["installs"]), "install", "installs"),
        plural(count(v, &["removals"]), "removal", "removals"),
        plural(count(v, &["devices"]), "device", "devices"),
    )
}

/// One rule condition in `--where` syntax.
pub fn condition(c: &Value) -> String {
    format!(
        "{} {} {}",
        text(c, &["field"]),
        text(c, &["op"]),
        text(c, &["value"])
    )
}

/// A group's rule: a heading saying how the conditions combine, then one condition a line.
fn rule_block(rule: &Value) -> String {
    let heading = match opt_str(rule, &["match"]) {
        Some("all") => "Rule: devices that match all of (--rule-match all)".to_owned(),
        Some("any") => "Rule: devices that match any of (--rule-match any)".to_owned(),
        _ => format!("Rule: match {}", clean(&text(rule, &["match"]))),
    };
    let mut out = format!("{heading}\n");
    let conditions = array(rule, &["conditions"]);
    if conditions.is_empty() {
        out.push_str("  no conditions\n");
    }
    for c in conditions {
        out.push_str(&format!("  {}\n", clean(&condition(c))));
    }
    out
}

/// `mdmctl groups list`.
pub fn groups(v: &Value) -> String {
    let mut t = Table::new(&["NAME", "KIND", "MEMBERS", "PROFILES", "UPDATED"]);
    for g in items(v) {
        t.push([
            text(g, &["name"]),
            text(g, &["kind"]),
            text(g, &["members"]),
            names(g, &["profiles"]),
            time_text(g, &["updated_at"]),
        ]);
    }
    t.render()
}

/// `mdmctl groups show` (and the answer of `create` and `update`).
pub fn group(v: &Value) -> String {
    let mut out = key_values(&[
        ("ID", text(v, &["id"])),
        ("Name", text(v, &["name"])),
        ("Description", text(v, &["description"])),
        ("Kind", text(v, &["kind"])),
        ("Members", text(v, &["members"])),
        ("Created", time_text(v, &["created_at"])),
        (
            "Updated",
            format!(
                "{} by {}",
                time_text(v, &["updated_at"]),
                text(v, &["updated_by"])
            ),
        ),
    ]);
    if let Some(rule) = object(v, &["rule"]) {
        out.push('\n');
        out.push_str(&rule_block(rule));
    }
    out.push_str("\nProfiles\n");
    out.push_str(&named_lines(
        array(v, &["profiles"]),
        "none: no profile is assigned to this group",
    ));
    out
}

/// `mdmctl groups members`. A static member the appliance has not heard of has no device.
pub fn members(list: &[Value]) -> String {
    let mut t = Table::new(&["SERIAL", "STATUS", "NAME", "MODEL", "OS", "LAST SEEN"]);
    for m in list {
        match object(m, &["device"]) {
            Some(d) => t.push([
                text(m, &["serial"]),
                text(d, &["status"]),
                text(d, &["name"]),
                text(d, &["model"]),
                text(d, &["os_version"]),
                time_text(d, &["last_seen_at"]),
            ]),
            None => t.push([
                text(m, &["serial"]),
                "not known".to_owned(),
                NONE.to_owned(),
                NONE.to_owned(),
                NONE.to_owned(),
                NONE.to_owned(),
            ]),
        }
    }
    t.render()
}

/// `groups add` and `groups remove`: what changed, then what it queued.
pub fn members_changed(v: &Value, group: &str, adding: bool) -> String {
    let group = clean(group);
    let changed = if adding {
        format!(
            "added {} to group {group}",
            plural(count(v, &["added"]), "device", "devices")
        )
    } else {
        format!(
            "removed {} from group {group}",
            plural(count(v, &["removed"]), "device", "devices")
        )
    };
    let unchanged = count(v, &["unchanged"]);
    let mut out = changed;
    if unchanged > 0 {
        out.push_str(&format!(
            " ({} {})",
            unchanged,
            if adding { "already in it" } else { "not in it" }
        ));
    }
    format!("{out}\n{}\n", reconcile(&v["reconcile"]))
}

/// Whether an answer's profile summary names a signer.
fn signed(p: &Value) -> bool {
    object(p, &["summary", "signer"]).is_some()
}

/// `mdmctl profiles list`.
pub fn profiles(v: &Value) -> String {
    let mut t = Table::new(&[
        "NAME",
        "IDENTIFIER",
        "PAYLOADS",
        "SIGNED",
        "WARNINGS",
        "GROUPS",
        "DEVICES",
        "UPDATED",
    ]);
    for p in items(v) {
        t.push([
            text(p, &["name"]),
            text(p, &["identifier"]),
            array(p, &["summary", "payloads"]).len().to_string(),
            if signed(p) { "yes" } else { "no" }.to_owned(),
            array(p, &["summary", "warnings"]).len().to_string(),
            names(p, &["groups"]),
            array(p, &["devices"]).len().to_string(),
            time_text(p, &["updated_at"]),
        ]);
    }
    t.render()
}

/// Whether the device user can remove the profile.
fn removal_text(p: &Value) -> String {
    let disallowed = at(p, &["summary", "removal_disallowed"]).and_then(Value::as_bool);
    let password = at(p, &["summary", "has_removal_password"]).and_then(Value::as_bool);
    match (disallowed, password) {
        (Some(true), _) => "disallowed (PayloadRemovalDisallowed)".to_owned(),
        (_, Some(true)) => "with a password (com.apple.profileRemovalPassword)".to_owned(),
        (Some(false), _) => "allowed".to_owned(),
        (None, _) => NONE.to_owned(),
    }
}

/// `mdmctl profiles show` (and the answer of `upload` and `replace`).
pub fn profile(v: &Value) -> String {
    let mut out = key_values(&[
        ("ID", text(v, &["id"])),
        ("Name", text(v, &["name"])),
        ("Identifier", text(v, &["identifier"])),
        ("Display name", text(v, &["summary", "display_name"])),
        ("Description", text(v, &["summary", "description"])),
        ("Organization", text(v, &["summary", "organization"])),
        ("UUID", text(v, &["summary", "uuid"])),
        ("Scope", text(v, &["summary", "scope"])),
        ("Removal by user", removal_text(v)),
        ("SHA-256", text(v, &["sha256"])),
        ("Size", format!("{} bytes", text(v, &["size"]))),
        ("Created", time_text(v, &["created_at"])),
        (
            "Updated",
            format!(
                "{} by {}",
                time_text(v, &["updated_at"]),
                text(v, &["updated_by"])
            ),
        ),
    ]);

    out.push_str("\nPAYLOADS\n");
    let mut t = Table::new(&["TYPE", "IDENTIFIER", "DISPLAY NAME", "UUID"]);
    for p in array(v, &["summary", "payloads"]) {
        t.push([
            text(p, &["payload_type"]),
            text(p, &["identifier"]),
            text(p, &["display_name"]),
            text(p, &["uuid"]),
        ]);
    }
    out.push_str(&t.render());

    out.push_str("\nSigner\n");
    match object(v, &["summary", "signer"]) {
        Some(s) => {
            let rows = key_values(&[
                ("Subject", text(s, &["subject"])),
                ("Issuer", text(s, &["issuer"])),
                ("Valid until", time_text(s, &["not_after"])),
                ("Certificate SHA-256", text(s, &["certificate_sha256"])),
            ]);
            out.extend(rows.lines().map(|l| format!("  {l}\n")));
        }
        None => out.push_str("  none: the file is not signed\n"),
    }

    let warnings = array(v, &["summary", "warnings"]);
    out.push_str("\nWarnings\n");
    if warnings.is_empty() {
        out.push_str("  none\n");
    }
    for w in warnings {
        out.push_str(&format!("  - {}\n", clean(w.as_str().unwrap_or(NONE))));
    }

    out.push_str("\nAssigned to\n");
    out.push_str(&assignment_rows(v));
    out
}

/// A profile's groups and devices as two indented rows.
fn assignment_rows(p: &Value) -> String {
    let devices = array(p, &["devices"]);
    let devices = if devices.is_empty() {
        NONE.to_owned()
    } else {
        format!(
            "{}: {}",
            len_u64(devices),
            serial_list(devices, LISTED_DEVICES)
        )
    };
    key_values(&[("Groups", names(p, &["groups"])), ("Devices", devices)])
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect()
}

/// `profiles assign` and `unassign`: where the profile is assigned now, then what the
/// change queued. `v` is `{"profile": Profile, "reconcile": {...}}`.
pub fn assignment_change(v: &Value) -> String {
    let p = &v["profile"];
    format!(
        "profile {} is assigned to\n{}{}\n",
        clean(&text(p, &["name"])),
        assignment_rows(p),
        reconcile(&v["reconcile"])
    )
}

/// The profile's warnings, for stderr after an upload or replace.
pub fn warning_notes(p: &Value) -> Vec<String> {
    array(p, &["summary", "warnings"])
        .iter()
        .map(|w| format!("warning: {}", clean(w.as_str().unwrap_or(NONE))))
        .collect()
}

/// An install's state, marked when the device holds an older version of the profile.
fn state_cell(i: &Value) -> String {
    let state = text(i, &["state"]);
    let current = at(i, &["current"]).and_then(Value::as_bool);
    if current == Some(false) && matches!(state.as_str(), "installed" | "installing") {
        format!("{state} (older version)")
    } else {
        state
    }
}

/// Where an install stands, in words: `installed`, `installed (older version)`,
/// `failed: <error>`.
pub fn install_state(i: &Value) -> String {
    let state = state_cell(i);
    match opt_str(i, &["error"]) {
        Some(e) if state == "failed" => format!("failed: {e}"),
        _ => state,
    }
}

/// `mdmctl profiles status`.
pub fn installs(list: &[Value]) -> String {
    let mut t = Table::new(&["SERIAL", "STATE", "UPDATED", "ENROLLMENT", "DETAIL"]);
    for i in list {
        let detail = match (opt_str(i, &["error"]), opt_str(i, &["command_uuid"])) {
            (Some(e), _) => e.to_owned(),
            (None, Some(u)) => format!("command {u}"),
            (None, None) => NONE.to_owned(),
        };
        t.push([
            text(i, &["serial"]),
            state_cell(i),
            time_text(i, &["updated_at"]),
            text(i, &["enrollment_id"]),
            detail,
        ]);
    }
    t.render()
}

/// The stderr line under `profiles status`: how many installs are shown, and of how many
/// fetched when `--state` filtered them.
pub fn installs_shown(shown: usize, fetched: usize, filtered: bool) -> String {
    let what = |n: usize| if n == 1 { "install" } else { "installs" };
    if filtered {
        format!("{shown} of {fetched} {} fetched", what(fetched))
    } else {
        format!("{shown} {}", what(shown))
    }
}

/// The "Profiles" block of `devices show`: the device's groups, then one line per profile
/// with where its install stands. `None` when the answer has no `profiles` (an appliance
/// older than groups and profiles).
pub fn device_block(v: &Value) -> Option<String> {
    let p = object(v, &["profiles"])?;
    let mut rows = vec![("Groups", names(p, &["groups"]))];
    let installs = array(p, &["installs"]);
    let mut lines: Vec<(String, String)> = installs
        .iter()
        .map(|i| {
            let name = opt_str(i, &["profile_name"])
                .map(str::to_owned)
                .unwrap_or_else(|| text(i, &["identifier"]));
            (name, install_state(i))
        })
        .collect();
    // An assigned profile without an install state has not been queued for the device yet
    // (it is not enrolled, or the change is still being applied).
    for a in array(p, &["assigned"]) {
        let id = opt_str(a, &["id"]);
        let queued = installs
            .iter()
            .any(|i| id.is_some() && opt_str(i, &["profile_id"]) == id);
        if !queued {
            lines.push((text(a, &["name"]), "assigned, not queued yet".to_owned()));
        }
    }
    if lines.is_empty() {
        lines.push(("Assigned".to_owned(), "none".to_owned()));
    }
    let cleaned: Vec<String> = lines.iter().map(|(k, _)| clean(k)).collect();
    rows.extend(
        cleaned
            .iter()
            .zip(&lines)
            .map(|(k, (_, state))| (k.as_str(), state.clone())),
    );
    let body: String = key_values(&rows)
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    Some(format!("Profiles\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn group_json() -> Value {
        json!({"id": "grp_1", "name": "New iPads", "description": null, "kind": "rule",
               "rule": {"match": "all", "conditions": [
                   {"field": "os_version", "op": "version_at_least", "value": "17.4"},
                   {"field": "model", "op": "is", "value": "iPad Air\u{1b}[2J"}]},
               "members": 12, "profiles": [{"id": "prf_1", "name": "Wi-Fi"}],
               "created_at": "2024-05-01T10:00:00.000Z", "updated_at": "2024-05-02T10:00:00Z",
               "updated_by": "admin"})
    }

    fn profile_json() -> Value {
        json!({"id": "prf_1", "name": "Wi-Fi", "identifier": "com.example.wifi",
               "sha256": "ab12", "size": 2048,
               "summary": {"identifier": "com.example.wifi", "uuid": "U-1",
                           "display_name": "School Wi-Fi", "description": null,
                           "organization": "Example School", "scope": "system",
                           "removal_disallowed": false, "has_removal_password": true,
                           "payloads": [{"payload_type": "com.apple.wifi.managed",
                                         "identifier": "com.example.wifi.1", "uuid": "U-2",
                                         "display_name": null}],
                           "signer": {"subject": "CN=Signer", "issuer": "CN=Example CA",
                                      "not_after": "2030-01-01T00:00:00Z",
                                      "certificate_sha256": "cd34"},
                           "warnings": ["the Wi-Fi password is stored in clear text"]},
               "groups": [{"id": "grp_1", "name": "New iPads"}, {"id": "grp_2", "name": "Staff"}],
               "devices": ["C02X1", "DMPX2"],
               "created_at": "2024-05-01T10:00:00Z", "updated_at": "2024-05-02T10:00:00Z",
               "updated_by": "admin"})
    }

    #[test]
    fn reconcile_counts_read_as_a_sentence() {
        assert_eq!(
            reconcile(&json!({"devices": 12, "installs": 12, "removals": 0})),
            "queued 12 installs, 0 removals on 12 devices"
        );
        assert_eq!(
            reconcile(&json!({"devices": 1, "installs": 1, "removals": 1})),
            "queued 1 install, 1 removal on 1 device"
        );
        assert_eq!(
            reconcile(&Value::Null),
            "queued 0 installs, 0 removals on 0 devices"
        );
    }

    #[test]
    fn a_rule_group_shows_its_conditions_as_where_arguments() {
        assert_eq!(
            group(&group_json()),
            "ID           grp_1\n\
             Name         New iPads\n\
             Description  -\n\
             Kind         rule\n\
             Members      12\n\
             Created      2024-05-01T10:00:00Z\n\
             Updated      2024-05-02T10:00:00Z by admin\n\
             \n\
             Rule: devices that match all of (--rule-match all)\n  \
               os_version version_at_least 17.4\n  \
               model is iPad Air\u{FFFD}[2J\n\
             \n\
             Profiles\n  \
               Wi-Fi (prf_1)\n"
        );
        let mut v = group_json();
        v["kind"] = json!("static");
        v["rule"] = Value::Null;
        v["profiles"] = json!([]);
        let out = group(&v);
        assert!(!out.contains("Rule"), "{out}");
        assert!(
            out.ends_with("Profiles\n  none: no profile is assigned to this group\n"),
            "{out}"
        );
        v["rule"] = json!({"match": "any", "conditions": []});
        let out = group(&v);
        assert!(
            out.contains("Rule: devices that match any of (--rule-match any)\n  no conditions\n"),
            "{out}"
        );
    }

    #[test]
    fn group_and_member_tables() {
        let mut other = group_json();
        other["name"] = json!("Carts");
        other["kind"] = json!("static");
        other["members"] = json!(0);
        other["profiles"] = json!([]);
        assert_eq!(
            groups(&json!({"items": [group_json(), other]})),
            "NAME       KIND    MEMBERS  PROFILES  UPDATED\n\
             New iPads  rule    12       Wi-Fi     2024-05-02T10:00:00Z\n\
             Carts      static  0        -         2024-05-02T10:00:00Z\n"
        );
        let list = [
            json!({"serial": "C02X1", "device": {"serial": "C02X1", "status": "enrolled",
                   "name": "Ada Lovelace", "model": "iPad Air", "os_version": "17.5",
                   "last_seen_at": "2024-05-01T10:05:00.000Z"}}),
            json!({"serial": "DMPX2", "device": null}),
        ];
        assert_eq!(
            members(&list),
            "SERIAL  STATUS     NAME          MODEL     OS    LAST SEEN\n\
             C02X1   enrolled   Ada Lovelace  iPad Air  17.5  2024-05-01T10:05:00Z\n\
             DMPX2   not known  -             -         -     -\n"
        );
    }

    #[test]
    fn member_changes_say_what_was_left_alone() {
        let v = json!({"added": 3, "removed": 0, "unchanged": 1,
                       "reconcile": {"devices": 3, "installs": 6, "removals": 0}});
        assert_eq!(
            members_changed(&v, "carts", true),
            "added 3 devices to group carts (1 already in it)\n\
             queued 6 installs, 0 removals on 3 devices\n"
        );
        let v = json!({"added": 0, "removed": 1, "unchanged": 0,
                       "reconcile": {"devices": 1, "installs": 0, "removals": 2}});
        assert_eq!(
            members_changed(&v, "carts", false),
            "removed 1 device from group carts\nqueued 0 installs, 2 removals on 1 device\n"
        );
    }

    #[test]
    fn profile_detail_lists_payloads_signer_warnings_and_assignments() {
        assert_eq!(
            profile(&profile_json()),
            "ID               prf_1\n\
             Name             Wi-Fi\n\
             Identifier       com.example.wifi\n\
             Display name     School Wi-Fi\n\
             Description      -\n\
             Organization     Example School\n\
             UUID             U-1\n\
             Scope            system\n\
             Removal by user  with a password (com.apple.profileRemovalPassword)\n\
             SHA-256          ab12\n\
             Size             2048 bytes\n\
             Created          2024-05-01T10:00:00Z\n\
             Updated          2024-05-02T10:00:00Z by admin\n\
             \n\
             PAYLOADS\n\
             TYPE                    IDENTIFIER          DISPLAY NAME  UUID\n\
             com.apple.wifi.managed  com.example.wifi.1  -             U-2\n\
             \n\
             Signer\n  \
               Subject              CN=Signer\n  \
               Issuer               CN=Example CA\n  \
               Valid until          2030-01-01T00:00:00Z\n  \
               Certificate SHA-256  cd34\n\
             \n\
             Warnings\n  \
               - the Wi-Fi password is stored in clear text\n\
             \n\
             Assigned to\n  \
               Groups   New iPads, Staff\n  \
               Devices  2: C02X1, DMPX2\n"
        );
        let mut v = profile_json();
        v["summary"]["signer"] = Value::Null;
        v["summary"]["warnings"] = json!([]);
        v["summary"]["has_removal_password"] = json!(false);
        v["groups"] = json!([]);
        let many: Vec<String> = (0..25).map(|i| format!("S{i:02}")).collect();
        v["devices"] = json!(many);
        let out = profile(&v);
        assert!(out.contains("Removal by user  allowed\n"), "{out}");
        assert!(
            out.contains("\nSigner\n  none: the file is not signed\n"),
            "{out}"
        );
        assert!(out.contains("\nWarnings\n  none\n"), "{out}");
        assert!(out.contains("  Groups   -\n"), "{out}");
        assert!(out.contains("Devices  25: S00, S01, "), "{out}");
        assert!(out.ends_with("S19 and 5 more\n"), "{out}");
    }

    #[test]
    fn profile_table_and_assignment_answers() {
        let mut plain = profile_json();
        plain["name"] = json!("Fonts");
        plain["summary"] = json!({});
        plain["groups"] = json!([]);
        plain["devices"] = json!([]);
        assert_eq!(
            profiles(&json!({"items": [profile_json(), plain]})),
            "NAME   IDENTIFIER        PAYLOADS  SIGNED  WARNINGS  GROUPS            DEVICES  UPDATED\n\
             Wi-Fi  com.example.wifi  1         yes     1         New iPads, Staff  2        2024-05-02T10:00:00Z\n\
             Fonts  com.example.wifi  0         no      0         -                 0        2024-05-02T10:00:00Z\n"
        );
        let v = json!({"profile": profile_json(),
                       "reconcile": {"devices": 2, "installs": 2, "removals": 0}});
        assert_eq!(
            assignment_change(&v),
            "profile Wi-Fi is assigned to\n  \
               Groups   New iPads, Staff\n  \
               Devices  2: C02X1, DMPX2\n\
             queued 2 installs, 0 removals on 2 devices\n"
        );
        assert_eq!(
            warning_notes(&profile_json()),
            ["warning: the Wi-Fi password is stored in clear text"]
        );
    }

    #[test]
    fn install_tables_mark_old_versions_and_show_errors() {
        let list = [
            json!({"serial": "C02X1", "state": "installed", "current": true, "error": null,
                   "command_uuid": "CMD-1", "enrollment_id": "UDID-1",
                   "updated_at": "2024-05-01T10:00:00.000Z"}),
            json!({"serial": "DMPX2", "state": "installed", "current": false, "error": null,
                   "command_uuid": null, "enrollment_id": "UDID-2",
                   "updated_at": "2024-05-01T10:00:00Z"}),
            json!({"serial": "F2LX3", "state": "failed", "current": true,
                   "error": "MCInstallationErrorDomain 4001: profile already installed by the user",
                   "command_uuid": null, "enrollment_id": "UDID-3",
                   "updated_at": "2024-05-01T10:00:00Z"}),
        ];
        assert_eq!(
            installs(&list),
            "SERIAL  STATE                      UPDATED               ENROLLMENT  DETAIL\n\
             C02X1   installed                  2024-05-01T10:00:00Z  UDID-1      command CMD-1\n\
             DMPX2   installed (older version)  2024-05-01T10:00:00Z  UDID-2      -\n\
             F2LX3   failed                     2024-05-01T10:00:00Z  UDID-3      MCInstallationErrorDomain 4001: profile already installed by the user\n"
        );
        assert_eq!(installs_shown(3, 3, false), "3 installs");
        assert_eq!(installs_shown(1, 40, true), "1 of 40 installs fetched");
        assert_eq!(
            install_state(&list[2]),
            "failed: MCInstallationErrorDomain 4001: profile already installed by the user"
        );
        assert_eq!(install_state(&list[1]), "installed (older version)");
        assert_eq!(
            install_state(&json!({"state": "removing", "current": false})),
            "removing"
        );
    }

    #[test]
    fn the_device_block_lists_groups_installs_and_what_is_not_queued() {
        assert!(device_block(&json!({"serial": "X"})).is_none());
        let v = json!({"profiles": {
            "groups": [{"id": "grp_1", "name": "New iPads"}],
            "assigned": [{"id": "prf_1", "name": "Wi-Fi", "identifier": "com.example.wifi"},
                         {"id": "prf_2", "name": "Fonts", "identifier": "com.example.fonts"}],
            "installs": [
                {"serial": "C02X1", "profile_id": "prf_1", "profile_name": "Wi-Fi",
                 "identifier": "com.example.wifi", "state": "installed", "current": true},
                {"serial": "C02X1", "profile_id": "prf_9", "profile_name": null,
                 "identifier": "com.example.old", "state": "removing", "current": false}]}});
        assert_eq!(
            device_block(&v).expect("block"),
            "Profiles\n  \
               Groups           New iPads\n  \
               Wi-Fi            installed\n  \
               com.example.old  removing\n  \
               Fonts            assigned, not queued yet\n"
        );
        let none = json!({"profiles": {"groups": [], "assigned": [], "installs": []}});
        assert_eq!(
            device_block(&none).expect("block"),
            "Profiles\n  Groups    -\n  Assigned  none\n"
        );
    }
}
