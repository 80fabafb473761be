//! Text for humans for `mdmctl abm ...`, made from the ABM part of the admin API.
//!
//! Like the other renderers these read the JSON loosely: a missing field shows as `-`.

use serde_json::Value;
use time::OffsetDateTime;

use super::{at, items, opt_str, text, time_text, timestamp, NONE};
use crate::table::{clean, key_values, Table};

/// Apple's and the API's snake-case words as text: `expiring_soon`, `NOT_ACCESSIBLE` ->
/// `expiring soon`, `not accessible`.
pub(super) fn snake_words(name: &str) -> String {
    name.replace('_', " ").to_lowercase()
}

pub(super) fn snake_text(v: &Value, path: &[&str]) -> String {
    match opt_str(v, path) {
        Some(s) => snake_words(s),
        None => text(v, path),
    }
}

pub(super) fn count(v: &Value, path: &[&str]) -> u64 {
    at(v, path).and_then(Value::as_u64).unwrap_or(0)
}

pub(super) fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// An object field, if present and not null.
pub(super) fn object<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    at(v, path).filter(|o| o.is_object())
}

/// Seconds in the largest unit that divides them: 900 -> `15 min`.
fn interval_text(seconds: u64) -> String {
    match seconds {
        s if s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s % 3_600 == 0 => format!("{} h", s / 3_600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// A token expiry with the days left at `now`, or `EXPIRED`.
fn expiry_text(v: &Value, path: &[&str], now: OffsetDateTime) -> String {
    let shown = time_text(v, path);
    match timestamp(at(v, path)) {
        Some(t) if t <= now => format!("{shown} (EXPIRED)"),
        Some(t) => format!(
            "{shown} ({} left)",
            plural(
                u64::try_from((t - now).whole_days()).unwrap_or(0),
                "day",
                "days"
            )
        ),
        None => shown,
    }
}

/// When a sync run ended (or started, if it never finished).
fn run_time(run: &Value) -> String {
    match at(run, &["finished_at"]) {
        Some(Value::String(_)) => time_text(run, &["finished_at"]),
        _ => time_text(run, &["started_at"]),
    }
}

fn run_kind(run: &Value) -> &'static str {
    if at(run, &["full"]).and_then(Value::as_bool) == Some(true) {
        "full fetch"
    } else {
        "incremental"
    }
}

fn run_error(run: &Value) -> String {
    match object(run, &["error"]) {
        Some(e) => format!("{}: {}", text(e, &["code"]), text(e, &["message"])),
        None => NONE.to_owned(),
    }
}

/// `abm show`: the last sync on one line.
fn last_sync_line(conn: &Value) -> String {
    let Some(run) = object(conn, &["last_sync"]) else {
        return "never".to_owned();
    };
    let pages = plural(count(run, &["pages"]), "page", "pages");
    if opt_str(run, &["result"]) == Some("ok") {
        format!(
            "ok at {}: {}, {pages}, {} added, {} modified, {} deleted",
            run_time(run),
            run_kind(run),
            count(run, &["added"]),
            count(run, &["modified"]),
            count(run, &["deleted"]),
        )
    } else {
        format!(
            "{} at {}: {} after {pages}: {}",
            text(run, &["result"]),
            run_time(run),
            run_kind(run),
            run_error(run)
        )
    }
}

/// `abm list`: the last sync in a table cell.
fn last_sync_cell(conn: &Value) -> String {
    if at(conn, &["sync_running"]).and_then(Value::as_bool) == Some(true) {
        return "running".to_owned();
    }
    match object(conn, &["last_sync"]) {
        Some(run) => format!("{} {}", text(run, &["result"]), run_time(run)),
        None => "never".to_owned(),
    }
}

/// `mdmctl abm list`.
pub fn connections(v: &Value) -> String {
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "ORG",
        "SERVER",
        "TOKEN EXPIRES",
        "DEVICES",
        "LAST SYNC",
    ]);
    for c in items(v) {
        t.push([
            text(c, &["name"]),
            snake_text(c, &["state"]),
            text(c, &["account", "org_name"]),
            text(c, &["account", "server_name"]),
            time_text(c, &["token", "expires_at"]),
            text(c, &["devices"]),
            last_sync_cell(c),
        ]);
    }
    t.render()
}

/// A warning for a connection that needs an admin (any state but `active`): a lapsed token
/// or unaccepted terms stops all assignment without anything else showing it.
pub fn attention_note(c: &Value) -> Option<String> {
    if opt_str(c, &["state"]).is_none_or(|s| s == "active") {
        return None;
    }
    let mut note = format!(
        "warning: ABM connection {} is {}: {}",
        clean(&text(c, &["name"])),
        snake_text(c, &["state"]),
        clean(&text(c, &["reason"]))
    );
    if let Some(action) = opt_str(c, &["action"]) {
        note.push_str("; ");
        note.push_str(&clean(action));
    }
    Some(note)
}

/// [`attention_note`] for each connection of `abm list`.
pub fn attention_notes(v: &Value) -> Vec<String> {
    items(v).iter().filter_map(attention_note).collect()
}

/// `mdmctl abm show` (and the answer of `add`, `set` and `token upload`).
pub fn connection(v: &Value, now: OffsetDateTime) -> String {
    let roots = if at(v, &["custom_ca"]).and_then(Value::as_bool) == Some(true) {
        "custom CA"
    } else {
        "system roots"
    };
    let has_token = object(v, &["token"]).is_some();
    let account = object(v, &["account"]);
    let (org, server, admin) = match account {
        Some(a) => (
            format!(
                "{} (org ID {}, {})",
                text(a, &["org_name"]),
                text(a, &["org_id"]),
                text(a, &["org_email"])
            ),
            format!(
                "{} ({})",
                text(a, &["server_name"]),
                text(a, &["server_uuid"])
            ),
            text(a, &["admin_id"]),
        ),
        None => (NONE.to_owned(), NONE.to_owned(), NONE.to_owned()),
    };
    let token = match object(v, &["token"]) {
        Some(t) => format!(
            "{}, generation {}, uploaded {}",
            text(t, &["consumer_key"]),
            text(t, &["generation"]),
            time_text(t, &["uploaded_at"])
        ),
        None => "none".to_owned(),
    };
    let staged = at(v, &["key_staged"]).and_then(Value::as_bool) == Some(true);
    let key = match (staged, has_token) {
        (true, true) => "new key pair staged: upload a token made for its public key \
                         (the current token keeps working until then)"
            .to_owned(),
        (true, false) => "staged: upload a token made for its public key".to_owned(),
        (false, true) => "the current token's".to_owned(),
        (false, false) => NONE.to_owned(),
    };
    // Where the private keys live; a `sealed` current key on a TPM appliance was made before
    // keys could live in the TPM, and `--new` moves the connection to one that does.
    let storage: Vec<String> = [("key_storage", "current"), ("staged_key_storage", "staged")]
        .into_iter()
        .filter_map(|(field, which)| {
            opt_str(v, &[field]).map(|s| {
                let place = match s {
                    "tpm" => "in the TPM".to_owned(),
                    "sealed" => "sealed by the keystore".to_owned(),
                    other => clean(other),
                };
                format!("{place} ({which})")
            })
        })
        .collect();
    let storage = if storage.is_empty() {
        NONE.to_owned()
    } else {
        storage.join(", ")
    };
    let problem = match object(v, &["problem"]) {
        Some(p) => format!(
            "{}: {} (since {}, last {})",
            text(p, &["code"]),
            text(p, &["message"]),
            time_text(p, &["since"]),
            time_text(p, &["last_at"])
        ),
        None => "none".to_owned(),
    };
    let interval = match at(v, &["interval_seconds"]).and_then(Value::as_u64) {
        Some(0) => format!("off: sync with `mdmctl abm sync {}`", text(v, &["name"])),
        Some(s) => format!("every {}", interval_text(s)),
        None => NONE.to_owned(),
    };
    let mut phase = snake_text(v, &["sync_phase"]);
    if at(v, &["sync_running"]).and_then(Value::as_bool) == Some(true) {
        phase.push_str(", running now");
    }
    let default_profile = match opt_str(v, &["default_profile"]) {
        Some(p) => p.to_owned(),
        None => "none (devices no rule covers get no profile)".to_owned(),
    };
    let due = match opt_str(v, &["devices_due"]) {
        Some(_) => time_text(v, &["devices_due"]),
        None => "none due".to_owned(),
    };
    key_values(&[
        ("Connection", text(v, &["name"])),
        ("State", snake_text(v, &["state"])),
        ("Reason", text(v, &["reason"])),
        (
            "Action",
            opt_str(v, &["action"]).unwrap_or("none needed").to_owned(),
        ),
        ("ABM URL", format!("{} ({roots})", text(v, &["base_url"]))),
        ("Organisation", org),
        ("MDM server", server),
        ("ABM admin", admin),
        ("Token", token),
        (
            "Token expires",
            expiry_text(v, &["token", "expires_at"], now),
        ),
        ("Key pair", key),
        ("Key storage", storage),
        ("Problem", problem),
        ("Last OK", time_text(v, &["last_ok_at"])),
        ("Sync", interval),
        ("Sync phase", phase),
        ("Last full sync", time_text(v, &["last_full_sync_at"])),
        ("Last sync", last_sync_line(v)),
        ("Default profile", default_profile),
        ("Devices", text(v, &["devices"])),
        ("Next assignment", due),
        ("Created", time_text(v, &["created_at"])),
    ])
}

/// `mdmctl abm sync`: the run.
pub fn sync_run(run: &Value) -> String {
    let mut rows = vec![
        (
            "Sync",
            format!(
                "{}, {}",
                run_kind(run),
                plural(count(run, &["pages"]), "page", "pages")
            ),
        ),
        ("Added", text(run, &["added"])),
        ("Modified", text(run, &["modified"])),
        ("Deleted", text(run, &["deleted"])),
        ("Result", text(run, &["result"])),
    ];
    if object(run, &["error"]).is_some() {
        rows.push(("Error", run_error(run)));
    }
    rows.extend([
        ("Started", time_text(run, &["started_at"])),
        ("Finished", time_text(run, &["finished_at"])),
    ]);
    key_values(&rows)
}

/// `mdmctl abm assign-now`: the counts, and a warning when some devices were not assigned.
pub fn assign_report(v: &Value, connection: &str) -> (String, Option<String>) {
    let summary = key_values(&[
        ("Calls", text(v, &["calls"])),
        ("Succeeded", text(v, &["succeeded"])),
        ("Not accessible", text(v, &["not_accessible"])),
        ("Failed", text(v, &["failed"])),
        ("Throttled", text(v, &["throttled"])),
    ]);
    let missed = count(v, &["not_accessible"]) + count(v, &["failed"]) + count(v, &["throttled"]);
    let warning = (missed > 0).then(|| {
        format!(
            "warning: {} not assigned; they are retried after a cool-down, and \
             `mdmctl abm devices {}` shows each one's reason",
            plural(missed, "device was", "devices were"),
            clean(connection)
        )
    });
    (summary, warning)
}

fn yes_no(v: &Value, path: &[&str]) -> String {
    match at(v, path).and_then(Value::as_bool) {
        Some(true) => "yes".to_owned(),
        Some(false) => "no".to_owned(),
        None => NONE.to_owned(),
    }
}

/// `mdmctl abm devices`.
pub fn devices(list: &[Value]) -> String {
    let mut t = Table::new(&[
        "SERIAL",
        "MODEL",
        "OS",
        "PROFILE STATUS",
        "TARGET PROFILE",
        "LAST ASSIGNMENT",
        "ENROLLED",
    ]);
    for d in list {
        let status = if opt_str(d, &["removed_at"]).is_some() {
            "gone from ABM".to_owned()
        } else {
            snake_text(d, &["profile_status"])
        };
        t.push([
            text(d, &["serial_number"]),
            text(d, &["model"]),
            text(d, &["os"]),
            status,
            text(d, &["target_profile"]),
            snake_text(d, &["last_assignment", "outcome"]),
            yes_no(d, &["enrolled"]),
        ]);
    }
    t.render()
}

/// `mdmctl abm device`.
pub fn device(d: &Value) -> String {
    let last = match object(d, &["last_assignment"]) {
        Some(a) => {
            let mut s = format!(
                "{}: profile {} ({}) at {}",
                snake_text(a, &["outcome"]),
                text(a, &["profile"]),
                text(a, &["profile_uuid"]),
                time_text(a, &["at"])
            );
            let failures = count(a, &["failures"]);
            if failures > 0 {
                s.push_str(&format!(
                    ", {} in a row",
                    plural(failures, "failure", "failures")
                ));
            }
            s
        }
        None => "none yet".to_owned(),
    };
    let target = match opt_str(d, &["target_profile"]) {
        Some(p) => p.to_owned(),
        None => "none (no rule covers it and the connection has no default profile)".to_owned(),
    };
    let removed = match opt_str(d, &["removed_at"]) {
        Some(_) => format!(
            "{} (ABM no longer lists it for this MDM server)",
            time_text(d, &["removed_at"])
        ),
        None => NONE.to_owned(),
    };
    let enrolled = match (
        at(d, &["enrolled"]).and_then(Value::as_bool),
        opt_str(d, &["enrollment_id"]),
    ) {
        (Some(true), Some(id)) => format!("yes ({id})"),
        (Some(true), None) => "yes".to_owned(),
        (_, Some(id)) => format!("no (last enrollment {id})"),
        (Some(false), None) => "no".to_owned(),
        (None, None) => NONE.to_owned(),
    };
    let assigned = match opt_str(d, &["device_assigned_by"]) {
        Some(by) => format!("{} by {by}", time_text(d, &["device_assigned_date"])),
        None => time_text(d, &["device_assigned_date"]),
    };
    key_values(&[
        ("Serial", text(d, &["serial_number"])),
        ("Connection", text(d, &["connection"])),
        ("Model", text(d, &["model"])),
        ("Description", text(d, &["description"])),
        ("Color", text(d, &["color"])),
        ("Asset tag", text(d, &["asset_tag"])),
        ("OS", text(d, &["os"])),
        ("Family", text(d, &["device_family"])),
        ("Added to server", assigned),
        ("Profile status", snake_text(d, &["profile_status"])),
        ("Profile UUID", text(d, &["profile_uuid"])),
        ("Profile assigned", time_text(d, &["profile_assign_time"])),
        ("Profile pushed", time_text(d, &["profile_push_time"])),
        ("Target profile", target),
        ("Last assignment", last),
        ("Reason", text(d, &["last_assignment", "reason"])),
        ("Next assignment", time_text(d, &["next_assignment_at"])),
        ("Removed", removed),
        ("Enrolled", enrolled),
        ("First seen", time_text(d, &["first_seen_at"])),
        ("Updated", time_text(d, &["updated_at"])),
    ])
}

/// Per-serial outcomes of `profile assign`, `profile remove` and `disown`.
pub fn serial_results(v: &Value) -> String {
    let mut t = Table::new(&["SERIAL", "OUTCOME", "REASON"]);
    for r in items(v) {
        t.push([
            text(r, &["serial"]),
            snake_text(r, &["outcome"]),
            text(r, &["reason"]),
        ]);
    }
    t.render()
}

/// The serials of a per-serial answer whose outcome is not one of `fine`, with their outcome.
pub fn unsuccessful(v: &Value, fine: &[&str]) -> Vec<(String, String)> {
    items(v)
        .iter()
        .filter_map(|r| {
            let outcome = opt_str(r, &["outcome"]).unwrap_or(NONE);
            (!fine.contains(&outcome)).then(|| (clean(&text(r, &["serial"])), clean(outcome)))
        })
        .collect()
}

/// `mdmctl abm profile list`.
pub fn profiles(v: &Value) -> String {
    let mut t = Table::new(&[
        "NAME",
        "PROFILE NAME",
        "SUPERVISED",
        "PROFILE UUID",
        "DEFINED",
    ]);
    for p in items(v) {
        t.push([
            text(p, &["name"]),
            text(p, &["profile", "profile_name"]),
            yes_no(p, &["profile", "is_supervised"]),
            text(p, &["profile_uuid"]),
            time_text(p, &["defined_at"]),
        ]);
    }
    t.render()
}

/// One field of an ABM profile as Apple spells it: certificates are counted, lists joined.
fn profile_field(key: &str, value: &Value) -> String {
    match value {
        Value::Array(list) if key.ends_with("_certs") => {
            plural(list.len() as u64, "certificate", "certificates")
        }
        Value::Array(list) => list
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Value::String(s) => s.clone(),
        Value::Null => NONE.to_owned(),
        other => other.to_string(),
    }
}

/// The appliance's `authentication` option in words.
fn sign_in(v: &Value) -> String {
    match at(v, &["authentication"]).and_then(Value::as_str) {
        Some("local") => "local account (on the configuration_web_url page)".to_owned(),
        Some("none") | None => "none (staging)".to_owned(),
        Some(other) => other.to_owned(),
    }
}

/// `mdmctl abm profile show` (and the answer of `profile define`): the appliance's record,
/// then every field of the profile with Apple's names.
pub fn profile(v: &Value) -> String {
    let mut out = key_values(&[
        ("Name", text(v, &["name"])),
        ("Connection", text(v, &["connection"])),
        ("Profile UUID", text(v, &["profile_uuid"])),
        ("User sign-in", sign_in(v)),
        ("Defined", time_text(v, &["defined_at"])),
        ("Updated", time_text(v, &["updated_at"])),
    ]);
    if let Some(fields) = at(v, &["profile"]).and_then(Value::as_object) {
        let rows: Vec<(String, String)> = fields
            .iter()
            .map(|(k, x)| (clean(k), profile_field(k, x)))
            .collect();
        let rows: Vec<(&str, String)> = rows.iter().map(|(k, x)| (k.as_str(), x.clone())).collect();
        out.push('\n');
        out.push_str(&key_values(&rows));
    }
    out
}

/// What a rule matches, on one line.
fn rule_matches(r: &Value) -> String {
    /// Up to this many serial numbers are listed; more are counted.
    const LISTED_SERIALS: usize = 3;
    let mut parts = Vec::new();
    let serials: Vec<&str> = at(r, &["serials"])
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match serials.len() {
        0 => {}
        n if n <= LISTED_SERIALS => parts.push(format!("serials {}", serials.join(", "))),
        n => parts.push(format!("{n} serials")),
    }
    if let Some(f) = opt_str(r, &["device_family"]) {
        parts.push(format!("family {f}"));
    }
    if let Some(m) = opt_str(r, &["model"]) {
        parts.push(format!("model contains {m:?}"));
    }
    if let Some(os) = opt_str(r, &["os"]) {
        parts.push(format!("os {os}"));
    }
    if parts.is_empty() {
        NONE.to_owned()
    } else {
        parts.join("; ")
    }
}

/// `mdmctl abm rules list`.
pub fn rules(v: &Value) -> String {
    let mut t = Table::new(&["NAME", "PRIORITY", "PROFILE", "MATCHES", "CREATED"]);
    for r in items(v) {
        t.push([
            text(r, &["name"]),
            text(r, &["priority"]),
            text(r, &["profile"]),
            rule_matches(r),
            time_text(r, &["created_at"]),
        ]);
    }
    t.render()
}

/// The answer of `mdmctl abm rules set`.
pub fn rule(r: &Value) -> String {
    let serials = at(r, &["serials"])
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| NONE.to_owned());
    key_values(&[
        ("Rule", text(r, &["name"])),
        ("Priority", text(r, &["priority"])),
        ("Profile", text(r, &["profile"])),
        ("Serials", serials),
        ("Family", text(r, &["device_family"])),
        ("Model contains", text(r, &["model"])),
        ("OS", text(r, &["os"])),
        ("Created", time_text(r, &["created_at"])),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn north() -> Value {
        json!({
            "name": "north", "created_at": "2024-04-01T08:00:00Z",
            "base_url": "https://mdmenrollment.apple.com", "custom_ca": false,
            "state": "expiring_soon",
            "reason": "the server token expires on 2024-05-20T00:00:00Z",
            "action": "in Apple Business Manager, open the MDM server, download a new token",
            "key_staged": false, "key_storage": "tpm", "staged_key_storage": null,
            "token": {"consumer_key": "CK_1", "expires_at": "2024-05-20T00:00:00Z",
                      "uploaded_at": "2023-05-20T00:00:00Z", "generation": 2},
            "account": {"org_name": "Example School", "org_id": "1234", "org_email": "it@example.org",
                        "server_name": "North appliance", "server_uuid": "UUID-1",
                        "admin_id": "admin@example.org"},
            "problem": null, "last_ok_at": "2024-05-01T09:59:00Z", "interval_seconds": 900,
            "sync_phase": "incremental", "sync_running": false,
            "last_full_sync_at": "2024-04-01T08:01:00Z",
            "last_sync": {"started_at": "2024-05-01T09:58:00Z", "finished_at": "2024-05-01T09:59:00Z",
                          "full": false, "pages": 1, "added": 3, "modified": 1, "deleted": 0,
                          "result": "ok", "error": null},
            "default_profile": "staff", "devices": 120, "devices_due": null,
        })
    }

    #[test]
    fn the_connection_list_shows_state_and_last_sync() {
        let mut south = north();
        south["name"] = json!("south");
        south["state"] = json!("no_token");
        south["reason"] = json!("no server token has been uploaded");
        south["action"] = json!("download the public key");
        south["token"] = Value::Null;
        south["account"] = Value::Null;
        south["last_sync"] = Value::Null;
        south["devices"] = json!(0);
        let mut east = north();
        east["name"] = json!("east");
        east["state"] = json!("active");
        east["sync_running"] = json!(true);
        let v = json!({"items": [north(), south, east]});
        assert_eq!(
            connections(&v),
            "NAME   STATE          ORG             SERVER           TOKEN EXPIRES         DEVICES  LAST SYNC\n\
             north  expiring soon  Example School  North appliance  2024-05-20T00:00:00Z  120      ok 2024-05-01T09:59:00Z\n\
             south  no token       -               -                -                     0        never\n\
             east   active         Example School  North appliance  2024-05-20T00:00:00Z  120      running\n"
        );
        assert_eq!(
            attention_notes(&v),
            [
                "warning: ABM connection north is expiring soon: the server token expires on \
                 2024-05-20T00:00:00Z; in Apple Business Manager, open the MDM server, download a new token",
                "warning: ABM connection south is no token: no server token has been uploaded; \
                 download the public key",
            ]
        );
    }

    #[test]
    fn connection_detail_has_every_part() {
        let now = datetime!(2024-05-01 10:00 UTC);
        let out = connection(&north(), now);
        for line in [
            "Connection       north\n",
            "State            expiring soon\n",
            "Reason           the server token expires on 2024-05-20T00:00:00Z\n",
            "Action           in Apple Business Manager, open the MDM server, download a new token\n",
            "ABM URL          https://mdmenrollment.apple.com (system roots)\n",
            "Organisation     Example School (org ID 1234, it@example.org)\n",
            "MDM server       North appliance (UUID-1)\n",
            "Token            CK_1, generation 2, uploaded 2023-05-20T00:00:00Z\n",
            "Token expires    2024-05-20T00:00:00Z (18 days left)\n",
            "Key pair         the current token's\n",
            "Key storage      in the TPM (current)\n",
            "Problem          none\n",
            "Sync             every 15 min\n",
            "Sync phase       incremental\n",
            "Last sync        ok at 2024-05-01T09:59:00Z: incremental, 1 page, 3 added, 1 modified, 0 deleted\n",
            "Default profile  staff\n",
            "Devices          120\n",
            "Next assignment  none due\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }

        let mut failing = north();
        failing["state"] = json!("terms_not_accepted");
        failing["interval_seconds"] = json!(0);
        failing["key_staged"] = json!(true);
        failing["key_storage"] = json!("sealed");
        failing["staged_key_storage"] = json!("tpm");
        failing["default_profile"] = Value::Null;
        failing["sync_running"] = json!(true);
        failing["devices_due"] = json!("2024-05-02T00:00:00Z");
        failing["token"]["expires_at"] = json!("2024-04-30T00:00:00Z");
        failing["problem"] = json!({"code": "ABM_TERMS_NOT_SIGNED", "message": "accept the terms",
                                    "since": "2024-05-01T09:00:00Z", "last_at": "2024-05-01T09:30:00Z"});
        failing["last_sync"] = json!({"started_at": "2024-05-01T09:30:00Z", "finished_at": "2024-05-01T09:30:01Z",
                                      "full": true, "pages": 0, "added": 0, "modified": 0, "deleted": 0,
                                      "result": "failed",
                                      "error": {"code": "ABM_TERMS_NOT_SIGNED", "message": "accept the terms"}});
        let out = connection(&failing, now);
        for line in [
            "State            terms not accepted\n",
            "Token expires    2024-04-30T00:00:00Z (EXPIRED)\n",
            "Key pair         new key pair staged: upload a token made for its public key",
            "Key storage      sealed by the keystore (current), in the TPM (staged)\n",
            "Problem          ABM_TERMS_NOT_SIGNED: accept the terms (since 2024-05-01T09:00:00Z, last 2024-05-01T09:30:00Z)\n",
            "Sync             off: sync with `mdmctl abm sync north`\n",
            "Sync phase       incremental, running now\n",
            "Last sync        failed at 2024-05-01T09:30:01Z: full fetch after 0 pages: ABM_TERMS_NOT_SIGNED: accept the terms\n",
            "Default profile  none (devices no rule covers get no profile)\n",
            "Next assignment  2024-05-02T00:00:00Z\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }

        let bare = json!({"name": "new", "state": "no_token", "custom_ca": true,
                          "base_url": "https://abm.lan:9443", "key_staged": true,
                          "token": null, "account": null, "last_sync": null, "action": null});
        let out = connection(&bare, now);
        assert!(
            out.contains("ABM URL          https://abm.lan:9443 (custom CA)\n"),
            "{out}"
        );
        assert!(out.contains("Token            none\n"), "{out}");
        assert!(out.contains("Key storage      -\n"), "{out}");
        assert!(out.contains("Token expires    -\n"), "{out}");
        assert!(out.contains("Action           none needed\n"), "{out}");
        assert!(
            out.contains("Key pair         staged: upload a token"),
            "{out}"
        );
        assert!(out.contains("Last sync        never\n"), "{out}");
    }

    #[test]
    fn intervals_use_the_largest_unit() {
        assert_eq!(interval_text(900), "15 min");
        assert_eq!(interval_text(7200), "2 h");
        assert_eq!(interval_text(86_400), "1 d");
        assert_eq!(interval_text(90), "90 s");
    }

    #[test]
    fn sync_runs_and_assignment_reports() {
        let run = json!({"started_at": "2024-05-01T10:00:00Z", "finished_at": "2024-05-01T10:00:42Z",
                         "full": true, "pages": 3, "added": 250, "modified": 0, "deleted": 0,
                         "result": "ok", "error": null});
        assert_eq!(
            sync_run(&run),
            "Sync      full fetch, 3 pages\n\
             Added     250\n\
             Modified  0\n\
             Deleted   0\n\
             Result    ok\n\
             Started   2024-05-01T10:00:00Z\n\
             Finished  2024-05-01T10:00:42Z\n"
        );
        let failed = json!({"started_at": "2024-05-01T10:00:00Z", "full": false, "pages": 1,
                            "added": 0, "modified": 0, "deleted": 0, "result": "failed",
                            "error": {"code": "ABM_UNREACHABLE", "message": "timed out"}});
        let out = sync_run(&failed);
        assert!(out.contains("Sync      incremental, 1 page\n"), "{out}");
        assert!(
            out.contains("Error     ABM_UNREACHABLE: timed out\n"),
            "{out}"
        );
        assert!(out.contains("Finished  -\n"), "{out}");

        let (text, warning) = assign_report(
            &json!({"calls": 1, "succeeded": 9, "not_accessible": 0, "failed": 1, "throttled": 0}),
            "north",
        );
        assert!(
            text.starts_with("Calls           1\nSucceeded       9\n"),
            "{text}"
        );
        let warning = warning.expect("warning");
        assert!(
            warning.starts_with("warning: 1 device was not assigned"),
            "{warning}"
        );
        assert!(warning.contains("mdmctl abm devices north"), "{warning}");
        let (_, none) = assign_report(
            &json!({"calls": 0, "succeeded": 0, "not_accessible": 0, "failed": 0, "throttled": 0}),
            "north",
        );
        assert!(none.is_none());
    }

    fn ipad() -> Value {
        json!({"connection": "north", "serial_number": "DMPX1", "model": "iPad Air",
               "description": "IPAD AIR WI-FI 64GB", "color": "SPACE GRAY", "asset_tag": "",
               "os": "iOS", "device_family": "iPad", "profile_status": "assigned",
               "profile_uuid": "P-UUID", "profile_assign_time": "2024-05-01T10:00:00Z",
               "profile_push_time": "", "device_assigned_date": "2024-04-30T08:00:00Z",
               "device_assigned_by": "buyer@example.org", "target_profile": "staff",
               "last_assignment": {"profile": "staff", "profile_uuid": "P-UUID",
                                   "outcome": "NOT_ACCESSIBLE", "at": "2024-05-01T10:00:00Z",
                                   "reason": "Apple cannot reach this device's record yet", "failures": 2},
               "next_assignment_at": "2024-05-02T10:00:00Z", "removed_at": null,
               "first_seen_at": "2024-04-30T09:00:00Z", "updated_at": "2024-05-01T10:00:00Z",
               "enrolled": false, "enrollment_id": null})
    }

    #[test]
    fn device_table_and_detail() {
        let mut gone = ipad();
        gone["serial_number"] = json!("C02X2");
        gone["model"] = json!("MacBook Air");
        gone["os"] = json!("OSX");
        gone["removed_at"] = json!("2024-05-01T11:00:00Z");
        gone["last_assignment"] = Value::Null;
        gone["target_profile"] = Value::Null;
        gone["enrolled"] = json!(true);
        assert_eq!(
            devices(&[ipad(), gone.clone()]),
            "SERIAL  MODEL        OS   PROFILE STATUS  TARGET PROFILE  LAST ASSIGNMENT  ENROLLED\n\
             DMPX1   iPad Air     iOS  assigned        staff           not accessible   no\n\
             C02X2   MacBook Air  OSX  gone from ABM   -               -                yes\n"
        );
        let out = device(&ipad());
        for line in [
            "Serial            DMPX1\n",
            "Added to server   2024-04-30T08:00:00Z by buyer@example.org\n",
            "Profile status    assigned\n",
            "Profile pushed    -\n",
            "Asset tag         -\n",
            "Last assignment   not accessible: profile staff (P-UUID) at 2024-05-01T10:00:00Z, 2 failures in a row\n",
            "Reason            Apple cannot reach this device's record yet\n",
            "Next assignment   2024-05-02T10:00:00Z\n",
            "Removed           -\n",
            "Enrolled          no\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        gone["enrollment_id"] = json!("UDID-9");
        let out = device(&gone);
        assert!(
            out.contains("Target profile    none (no rule covers it"),
            "{out}"
        );
        assert!(out.contains("Last assignment   none yet\n"), "{out}");
        assert!(
            out.contains("Removed           2024-05-01T11:00:00Z (ABM no longer lists it"),
            "{out}"
        );
        assert!(out.contains("Enrolled          yes (UDID-9)\n"), "{out}");
    }

    #[test]
    fn serial_outcomes_table_and_failures() {
        let v = json!({"items": [
            {"serial": "A1", "outcome": "SUCCESS", "reason": null},
            {"serial": "B2", "outcome": "NOT_FOUND", "reason": "not listed\nhere"},
            {"serial": "C3", "outcome": "PENDING", "reason": "queued for assignment"},
        ]});
        assert_eq!(
            serial_results(&v),
            "SERIAL  OUTCOME    REASON\n\
             A1      success    -\n\
             B2      not found  not listed here\n\
             C3      pending    queued for assignment\n"
        );
        assert_eq!(
            unsuccessful(&v, &["SUCCESS", "PENDING"]),
            [("B2".to_owned(), "NOT_FOUND".to_owned())]
        );
        assert_eq!(unsuccessful(&v, &["SUCCESS"]).len(), 2);
    }

    #[test]
    fn profiles_and_rules() {
        let p = json!({"name": "staff", "connection": "north", "profile_uuid": "P-UUID",
                       "defined_at": "2024-05-01T10:00:00Z", "updated_at": "2024-05-01T10:00:00Z",
                       "profile": {"profile_name": "Staff devices", "is_supervised": true,
                                   "url": "https://mdm.lan:8443/mdm/enroll",
                                   "anchor_certs": ["MIIB..."],
                                   "skip_setup_items": ["Location", "Restore"]}});
        assert_eq!(
            profiles(&json!({"items": [p.clone()]})),
            "NAME   PROFILE NAME   SUPERVISED  PROFILE UUID  DEFINED\n\
             staff  Staff devices  yes         P-UUID        2024-05-01T10:00:00Z\n"
        );
        assert_eq!(
            profile(&p),
            "Name          staff\n\
             Connection    north\n\
             Profile UUID  P-UUID\n\
             User sign-in  none (staging)\n\
             Defined       2024-05-01T10:00:00Z\n\
             Updated       2024-05-01T10:00:00Z\n\
             \n\
             anchor_certs      1 certificate\n\
             is_supervised     true\n\
             profile_name      Staff devices\n\
             skip_setup_items  Location, Restore\n\
             url               https://mdm.lan:8443/mdm/enroll\n"
        );

        let v = json!({"items": [
            {"name": "assign-staff", "priority": -1000, "profile": "staff", "serials": ["A1", "B2"],
             "device_family": null, "model": null, "os": null, "created_at": "2024-05-01T10:00:00Z"},
            {"name": "ipads", "priority": 10, "profile": "carts", "serials": [],
             "device_family": "iPad", "model": "iPad Air", "os": "iOS",
             "created_at": "2024-05-01T10:00:00Z"},
            {"name": "many", "priority": 20, "profile": "lab", "serials": ["A", "B", "C", "D"],
             "created_at": "2024-05-01T10:00:00Z"},
        ]});
        assert_eq!(
            rules(&v),
            "NAME          PRIORITY  PROFILE  MATCHES                                         CREATED\n\
             assign-staff  -1000     staff    serials A1, B2                                  2024-05-01T10:00:00Z\n\
             ipads         10        carts    family iPad; model contains \"iPad Air\"; os iOS  2024-05-01T10:00:00Z\n\
             many          20        lab      4 serials                                       2024-05-01T10:00:00Z\n"
        );
        let out = rule(&v["items"][1]);
        assert!(out.contains("Serials         -\n"), "{out}");
        assert!(out.contains("Model contains  iPad Air\n"), "{out}");
        let out = rule(&v["items"][0]);
        assert!(out.contains("Serials         A1, B2\n"), "{out}");
    }
}
