//! Running the device lifecycle commands (`devices`, `release`, `preenroll`, `activity`,
//! `settings`): local checks, the calls to `/api/v1/devices`, `/preenroll`, `/activity` and
//! `/settings`, and what is printed.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::abm::serials_of;
use super::{get, list_pages, read_named, required_str, segment, send, Output, Query};
use crate::cli::lifecycle::{
    ActivityArgs, DevicesCommand, DevicesList, OnDuplicateArg, PreenrollCommand, PreenrollImport,
    SettingsCommand, SettingsSet, SortArg,
};
use crate::client::{api_error, ApiClient, RequestBody, API_PREFIX, APPLE_TIMEOUT};
use crate::error::CliError;
use crate::render::lifecycle as render;
use crate::table::clean;

/// Limit for a whole-list export (devices or activity as CSV or JSON lines): the appliance
/// reads every match before it answers, which for a large site or a year of activity takes
/// longer than an ordinary request may.
const EXPORT_TIMEOUT: Duration = APPLE_TIMEOUT;

/// What a serial-number-or-enrollment-ID argument is called in messages.
const DEVICE_KEY: &str = "serial number or enrollment ID";

/// Runs a `devices` subcommand.
pub async fn devices(
    client: &mut ApiClient,
    command: &DevicesCommand,
    json: bool,
) -> Result<Output, CliError> {
    match command {
        DevicesCommand::List(args) => devices_list(client, args, json).await,
        DevicesCommand::Show { key } => {
            let v = get(client, &format!("/devices/{}", segment(key, DEVICE_KEY)?)).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::device(&v))
            })
        }
        DevicesCommand::Invitation { key } => {
            let v = get(
                client,
                &format!("/devices/{}/invitation", segment(key, DEVICE_KEY)?),
            )
            .await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::invitation(&v))
            })
        }
        DevicesCommand::Counts => {
            let v = get(client, "/devices/counts").await?;
            if json {
                return Ok(Output::json(&v));
            }
            let (table, total) = render::counts(&v);
            Ok(Output::text(table).note(format!(
                "{total} device{} in all",
                if total == 1 { "" } else { "s" }
            )))
        }
    }
}

/// The filters of `devices list` as the API's query, in a fixed order: `status`, `search`,
/// `connection`, `sort`, `order`.
fn device_filters(args: &DevicesList) -> Query {
    let mut statuses: Vec<&str> = Vec::new();
    for name in args.statuses.iter().map(|s| s.api_name()) {
        if !statuses.contains(&name) {
            statuses.push(name);
        }
    }
    let mut q = Query::default();
    q.list("status", &statuses)
        .opt(
            "search",
            args.search
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty()),
        )
        .opt("connection", args.connection.as_deref())
        .opt("sort", args.sort.map(SortArg::api_name));
    if args.desc {
        q.push("order", "desc");
    }
    q
}

async fn devices_list(
    client: &mut ApiClient,
    args: &DevicesList,
    json: bool,
) -> Result<Output, CliError> {
    let filters = device_filters(args);
    if args.csv {
        refuse_json_with("--csv", json)?;
        let mut q = filters;
        q.push("format", "csv");
        return export(client, &format!("/devices{}", q.text())).await;
    }
    let page = list_pages(
        client,
        "/devices",
        &filters,
        args.limit,
        args.after.as_deref(),
        args.all,
    )
    .await?;
    if json {
        return Ok(Output::json(&json!({
            "items": page.items, "next": page.next, "total": page.total,
        })));
    }
    let mut out = Output::text(render::devices(&page.items)).note(render::shown_of(
        page.items.len(),
        page.total,
        "devices",
    ));
    if let Some(next) = page.next {
        out = out.note(format!(
            "more devices follow: add --after {} (or --all)",
            clean(&next)
        ));
    }
    Ok(out)
}

/// `--csv`/`--jsonl` print the appliance's export as it is, which `--json` cannot wrap.
fn refuse_json_with(flag: &str, json: bool) -> Result<(), CliError> {
    if json {
        return Err(CliError::Usage(format!(
            "{flag} and --json cannot be combined: {flag} prints the appliance's export as it is"
        )));
    }
    Ok(())
}

/// A text export (`path` without the API prefix), printed as it came.
async fn export(client: &mut ApiClient, path: &str) -> Result<Output, CliError> {
    let full = format!("{API_PREFIX}{path}");
    let body = client
        .call_within(Method::GET, &full, RequestBody::Empty, EXPORT_TIMEOUT)
        .await?;
    Ok(Output::text(text_body(client, &full, body)?))
}

fn text_body(client: &ApiClient, full_path: &str, body: Bytes) -> Result<String, CliError> {
    String::from_utf8(body.to_vec()).map_err(|_| CliError::BadResponse {
        url: format!("{}{full_path}", client.origin()),
        reason: "the answer is not UTF-8 text".into(),
    })
}

/// `mdmctl release KEY`.
pub async fn release(client: &mut ApiClient, key: &str, json: bool) -> Result<Output, CliError> {
    let path = format!("/devices/{}/release", segment(key, DEVICE_KEY)?);
    let v = send(client, Method::POST, &path, RequestBody::Empty).await?;
    if json {
        return Ok(Output::json(&v));
    }
    let serial = clean(required_str(&v, "serial", client, &path)?);
    let uuid = clean(required_str(&v, "command_uuid", client, &path)?);
    Ok(
        Output::line(&format!("release of {serial} queued (command {uuid})")).note(
            "the device leaves Setup Assistant when it fetches DeviceConfigured; \
             `mdmctl devices show` follows it",
        ),
    )
}

/// Runs a `preenroll` subcommand.
pub async fn preenroll(
    client: &mut ApiClient,
    command: &PreenrollCommand,
    json: bool,
) -> Result<Output, CliError> {
    match command {
        PreenrollCommand::Import(args) => import(client, args, json).await,
        PreenrollCommand::Sample => {
            let path = format!("{API_PREFIX}/preenroll/sample");
            let body = client.call(Method::GET, &path, RequestBody::Empty).await?;
            let csv = text_body(client, &path, body)?;
            Ok(if json {
                Output::json(&json!({ "csv": csv }))
            } else {
                Output::text(csv)
            })
        }
        PreenrollCommand::List { limit, after, all } => {
            let page = list_pages(
                client,
                "/preenroll",
                &Query::default(),
                *limit,
                after.as_deref(),
                *all,
            )
            .await?;
            if json {
                return Ok(Output::json(&json!({
                    "items": page.items, "next": page.next, "total": page.total,
                })));
            }
            let mut out = Output::text(render::preenrolled(&page.items)).note(render::shown_of(
                page.items.len(),
                page.total,
                "pre-enrolled devices",
            ));
            if let Some(next) = page.next {
                out = out.note(format!(
                    "more pre-enrolled devices follow: add --after {} (or --all)",
                    clean(&next)
                ));
            }
            Ok(out)
        }
        PreenrollCommand::Delete { serials } => {
            let list = serials_of(serials)?;
            let v = send(
                client,
                Method::POST,
                "/preenroll/delete",
                RequestBody::Json(json!({ "serials": list })),
            )
            .await?;
            if json {
                return Ok(Output::json(&v));
            }
            let names = |key: &str| -> Vec<String> {
                v.get(key)
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).map(clean).collect())
                    .unwrap_or_default()
            };
            let (deleted, missing) = (names("deleted"), names("not_found"));
            // One serial per line, so a script can use what was actually forgotten.
            let mut out =
                Output::text(deleted.iter().map(|s| format!("{s}\n")).collect()).note(format!(
                    "{} pre-enrolled device{} forgotten",
                    deleted.len(),
                    if deleted.len() == 1 { "" } else { "s" }
                ));
            if !missing.is_empty() {
                out = out.note(format!(
                    "warning: not pre-enrolled, nothing to forget: {}",
                    missing.join(", ")
                ));
            }
            Ok(out)
        }
    }
}

/// The query of `POST /preenroll/import`: only the options given.
fn import_query(args: &PreenrollImport) -> Query {
    let mut q = Query::default();
    if args.dry_run {
        q.push("dry_run", "true");
    }
    q.opt(
        "on_duplicate",
        args.on_duplicate.map(OnDuplicateArg::api_name),
    );
    if args.valid_only {
        q.push("valid_only", "true");
    }
    q
}

async fn import(
    client: &mut ApiClient,
    args: &PreenrollImport,
    json: bool,
) -> Result<Output, CliError> {
    let bytes = read_named(&args.file)?;
    let path = format!("{API_PREFIX}/preenroll/import{}", import_query(args).text());
    // Sent as read: the appliance reports problems by the row numbers a spreadsheet shows,
    // which any local rewriting would shift.
    let body = RequestBody::Raw {
        content_type: "text/csv",
        bytes: Bytes::from(bytes),
    };
    let (status, answer) = client.answer(Method::POST, &path, body).await?;
    let report = match serde_json::from_slice::<Value>(&answer) {
        // A refused file (409 duplicates, 422 invalid rows) still carries the whole report.
        Ok(v)
            if is_import_report(&v)
                && (status.is_success()
                    || status == StatusCode::CONFLICT
                    || status == StatusCode::UNPROCESSABLE_ENTITY) =>
        {
            v
        }
        _ if status.is_success() => {
            return Err(CliError::BadResponse {
                url: format!("{}{path}", client.origin()),
                reason: "the answer is not an import report".into(),
            })
        }
        _ => return Err(api_error(status, &answer)),
    };
    let out = if json {
        Output::json(&report)
    } else {
        Output::text(render::import_report(
            &report,
            args.on_duplicate.map(OnDuplicateArg::api_name),
        ))
    };
    Ok(out.failing(import_failure(status, &report)))
}

fn is_import_report(v: &Value) -> bool {
    v.get("total_rows").is_some_and(Value::is_u64)
        && v.get("written").is_some_and(Value::is_boolean)
}

/// The failure an import answer ends the command with: the appliance's refusal (invalid
/// rows, serials already pre-enrolled), or a file in which no row is valid. A dry run with
/// no refusal is a success: it is what the admin asked for.
fn import_failure(status: StatusCode, report: &Value) -> Option<CliError> {
    let refusal = report
        .get("error")
        .filter(|e| e.is_object())
        .or_else(|| report.get("refused").filter(|r| r.is_object()));
    if let Some(r) = refusal {
        let field = |key: &str| r.get(key).and_then(Value::as_str).map(clean);
        return Some(CliError::Api {
            status: status.as_u16(),
            code: field("code").unwrap_or_else(|| "PREENROLL_REFUSED".into()),
            message: field("message")
                .unwrap_or_else(|| "the appliance refused the file; nothing was written".into()),
        });
    }
    let written = report.get("written").and_then(Value::as_bool) == Some(true);
    let valid = report
        .get("valid_rows")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let errors = report
        .get("errors")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if !written && valid == 0 && errors > 0 {
        return Some(CliError::Api {
            status: status.as_u16(),
            code: "PREENROLL_ROWS_INVALID".into(),
            message: format!(
                "none of the file's rows is valid ({errors} errors); nothing was written"
            ),
        });
    }
    None
}

/// The query of `GET /activity` without its paging, in the API's order.
fn activity_filters(args: &ActivityArgs, now: OffsetDateTime) -> Result<Query, CliError> {
    let since = args
        .since
        .map(|w| w.instant(now))
        .transpose()
        .map_err(|e| CliError::Usage(format!("--since: {e}")))?;
    let until = args
        .until
        .map(|w| w.instant(now))
        .transpose()
        .map_err(|e| CliError::Usage(format!("--until: {e}")))?;
    if let (Some(s), Some(u)) = (since, until) {
        if s >= u {
            return Err(CliError::Usage(format!(
                "--since ({}) is not before --until ({}): no entry can match",
                rfc3339(s)?,
                rfc3339(u)?
            )));
        }
    }
    let trimmed = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let mut q = Query::default();
    q.opt("device", trimmed(&args.device))
        .opt("actor", trimmed(&args.actor))
        .opt("type", trimmed(&args.kind))
        .opt("since", since.map(rfc3339).transpose()?)
        .opt("until", until.map(rfc3339).transpose()?);
    Ok(q)
}

fn rfc3339(t: OffsetDateTime) -> Result<String, CliError> {
    t.format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| CliError::Usage(format!("the time cannot be written as RFC 3339: {e}")))
}

/// `mdmctl activity`.
pub async fn activity(
    client: &mut ApiClient,
    args: &ActivityArgs,
    json: bool,
) -> Result<Output, CliError> {
    let base = activity_filters(args, OffsetDateTime::now_utc())?;
    if args.csv || args.jsonl {
        let (flag, format) = if args.csv {
            ("--csv", "csv")
        } else {
            ("--jsonl", "jsonl")
        };
        refuse_json_with(flag, json)?;
        let mut q = base;
        q.push("format", format);
        return export(client, &format!("/activity{}", q.text())).await;
    }
    // Activity pages by sequence number (`before`), newest first, not by a text cursor.
    let mut items = Vec::new();
    let mut before = args.before;
    let next = loop {
        let mut q = base.clone();
        q.opt("before", before).opt("limit", args.limit);
        let path = format!("/activity{}", q.text());
        let page = get(client, &path).await?;
        let page_items =
            page.get("items")
                .and_then(Value::as_array)
                .ok_or_else(|| CliError::BadResponse {
                    url: format!("{}{API_PREFIX}{path}", client.origin()),
                    reason: "the answer has no \"items\" list".into(),
                })?;
        items.extend(page_items.iter().cloned());
        let next = page.get("next").and_then(Value::as_u64);
        if !args.all || next.is_none() {
            break next;
        }
        if next == before || page_items.is_empty() {
            return Err(CliError::BadResponse {
                url: format!("{}{API_PREFIX}{path}", client.origin()),
                reason: "paging did not advance".into(),
            });
        }
        before = next;
    };
    if json {
        return Ok(Output::json(&json!({ "items": items, "next": next })));
    }
    let mut out = Output::text(render::activity(&items));
    if let Some(next) = next {
        out = out.note(format!(
            "older entries follow: add --before {next} (or --all)"
        ));
    }
    Ok(out)
}

/// The body of `PATCH /settings`: only the settings given, so the others stay as they are.
fn settings_patch(set: &SettingsSet) -> Value {
    let mut body = Map::new();
    let flags = [
        ("preenrolled_only", set.preenrolled_only),
        ("abm_as_preenrolled", set.abm_as_preenrolled),
        ("auto_release", set.auto_release),
    ];
    for (key, value) in flags {
        if let Some(v) = value {
            body.insert(key.into(), json!(v));
        }
    }
    let numbers = [
        ("offline_after_hours", set.offline_after_hours),
        ("enrolling_grace_minutes", set.enrolling_grace_minutes),
        (
            "awaiting_stuck_after_minutes",
            set.awaiting_stuck_after_minutes,
        ),
        ("activity_retention_days", set.activity_retention_days),
        ("auto_unenroll_after_days", set.auto_unenroll_after_days),
    ];
    for (key, value) in numbers {
        if let Some(v) = value {
            body.insert(key.into(), json!(v));
        }
    }
    Value::Object(body)
}

/// Runs a `settings` subcommand.
pub async fn settings(
    client: &mut ApiClient,
    command: &SettingsCommand,
    json: bool,
) -> Result<Output, CliError> {
    match command {
        SettingsCommand::Show => {
            let v = get(client, "/settings").await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::settings(&v))
            })
        }
        SettingsCommand::Set(set) => {
            let body = settings_patch(set);
            let v = send(client, Method::PATCH, "/settings", RequestBody::Json(body)).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::settings(&v)).note("lifecycle settings changed")
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::lifecycle::StatusArg;
    use crate::when::When;
    use time::macros::datetime;

    fn list_args() -> DevicesList {
        DevicesList {
            statuses: Vec::new(),
            search: None,
            connection: None,
            sort: None,
            desc: false,
            limit: None,
            after: None,
            all: false,
            csv: false,
        }
    }

    #[test]
    fn device_filters_are_sent_in_order_and_encoded() {
        assert_eq!(device_filters(&list_args()).text(), "");
        let args = DevicesList {
            statuses: vec![
                StatusArg::Offline,
                StatusArg::AwaitingConfiguration,
                StatusArg::Offline,
            ],
            search: Some(" Ada L ".into()),
            connection: Some("north".into()),
            sort: Some(SortArg::LastSeen),
            desc: true,
            ..list_args()
        };
        assert_eq!(
            device_filters(&args).text(),
            "?status=offline,awaiting_configuration&search=Ada%20L&connection=north\
             &sort=last_seen&order=desc"
        );
        let blank = DevicesList {
            search: Some("   ".into()),
            ..list_args()
        };
        assert_eq!(device_filters(&blank).text(), "");
    }

    fn activity_args() -> ActivityArgs {
        ActivityArgs {
            device: None,
            actor: None,
            kind: None,
            since: None,
            until: None,
            limit: None,
            before: None,
            all: false,
            csv: false,
            jsonl: false,
        }
    }

    #[test]
    fn activity_times_are_resolved_against_now() {
        let now = datetime!(2024-05-08 10:00:30.75 UTC);
        let args = ActivityArgs {
            device: Some(" c02x1 ".into()),
            actor: Some("token:admin".into()),
            kind: Some("enrollment".into()),
            since: Some(When::Ago(7 * 86_400)),
            until: Some(When::At(datetime!(2024-05-08 12:00 +02:00))),
            ..activity_args()
        };
        assert_eq!(
            activity_filters(&args, now).expect("query").text(),
            "?device=c02x1&actor=token%3Aadmin&type=enrollment&since=2024-05-01T10%3A00%3A30Z\
             &until=2024-05-08T10%3A00%3A00Z"
        );
        let backwards = ActivityArgs {
            since: Some(When::Ago(60)),
            until: Some(When::Ago(3_600)),
            ..activity_args()
        };
        let err = activity_filters(&backwards, now).expect_err("since after until");
        assert!(matches!(err, CliError::Usage(_)), "{err:?}");
        assert!(err.to_string().contains("no entry can match"), "{err}");
        let absurd = ActivityArgs {
            since: Some(When::Ago(u64::MAX)),
            ..activity_args()
        };
        assert_eq!(
            activity_filters(&absurd, now)
                .expect_err("too far back")
                .exit_code(),
            2
        );
    }

    #[test]
    fn settings_patches_hold_only_what_was_given() {
        let set = SettingsSet {
            preenrolled_only: Some(false),
            abm_as_preenrolled: None,
            auto_release: None,
            offline_after_hours: Some(48),
            enrolling_grace_minutes: None,
            awaiting_stuck_after_minutes: None,
            activity_retention_days: Some(90),
            auto_unenroll_after_days: Some(0),
        };
        assert_eq!(
            settings_patch(&set),
            json!({"preenrolled_only": false, "offline_after_hours": 48,
                   "activity_retention_days": 90, "auto_unenroll_after_days": 0})
        );
    }

    #[test]
    fn import_queries_and_failures() {
        let args = PreenrollImport {
            file: "-".into(),
            dry_run: true,
            on_duplicate: Some(OnDuplicateArg::Replace),
            valid_only: true,
        };
        assert_eq!(
            import_query(&args).text(),
            "?dry_run=true&on_duplicate=replace&valid_only=true"
        );

        let clean_dry_run = json!({"dry_run": true, "written": false, "refused": null,
                                   "total_rows": 3, "valid_rows": 3, "errors": []});
        assert!(is_import_report(&clean_dry_run));
        assert!(import_failure(StatusCode::OK, &clean_dry_run).is_none());
        let written = json!({"dry_run": false, "written": true, "refused": null,
                             "total_rows": 3, "valid_rows": 2, "errors": [{"row": 3}]});
        assert!(import_failure(StatusCode::OK, &written).is_none());

        let refused = json!({"dry_run": false, "written": false, "total_rows": 3,
                             "refused": {"code": "PREENROLL_DUPLICATES", "message": "2 already"},
                             "error": {"code": "PREENROLL_DUPLICATES", "message": "2 already"}});
        let err = import_failure(StatusCode::CONFLICT, &refused).expect("refused");
        assert_eq!(err.stderr_line(), "error PREENROLL_DUPLICATES: 2 already");
        assert_eq!(err.exit_code(), 1);

        let none_valid = json!({"dry_run": false, "written": false, "refused": null,
                                "total_rows": 2, "valid_rows": 0, "errors": [{"row": 2}, {"row": 3}]});
        let err = import_failure(StatusCode::OK, &none_valid).expect("nothing valid");
        assert!(
            err.stderr_line()
                .starts_with("error PREENROLL_ROWS_INVALID: none of the file's rows is valid"),
            "{}",
            err.stderr_line()
        );
        assert!(!is_import_report(
            &json!({"error": {"code": "X", "message": "y"}})
        ));
    }

    #[test]
    fn exports_and_json_do_not_mix() {
        assert!(refuse_json_with("--csv", false).is_ok());
        let err = refuse_json_with("--jsonl", true).expect_err("both");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().starts_with("--jsonl and --json"), "{err}");
    }
}
