//! `/api/v1/devices`, `/api/v1/preenroll`, `/api/v1/activity` and `/api/v1/settings`: the
//! joined device records with their status, pre-enrollment, setup release, the activity log
//! and lifecycle settings (documented in `docs/reference/api.md`).
#![allow(clippy::result_large_err)]

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use mdm_service::lifecycle::activity::ActivityView;
use mdm_service::lifecycle::directory::{DeviceQuery, SortKey};
use mdm_service::lifecycle::status::DeviceStatus;
use mdm_service::lifecycle::{DeviceDetail, ImportOptions, OnDuplicate, SettingsPatch};
use mdm_service::ports::{
    AbmConnector, ActivityQuery, ApiTokenRecord, PreenrollRecord, Role, Store, Timestamp,
};
use mdm_service::ServiceError;
use serde::Deserialize;
use serde_json::json;

use crate::api::{delivery_json, enrollment_json, need, parse_json};
use crate::respond::{self, api_error, json, json_status, Resp};
use crate::routes::{body_or_error, query_get, App};

/// Pre-enrollment files may be larger than other API bodies (50,000 rows are ~5 MB).
const IMPORT_BODY_LIMIT: usize = 64 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Serials {
    serials: Vec<String>,
}

fn bad(code: &'static str, msg: impl Into<String>) -> Resp {
    api_error(&ServiceError::bad_request(code, msg))
}

fn flag(pairs: &[(String, String)], key: &str) -> Result<bool, Resp> {
    match query_get(pairs, key).as_deref() {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1" | "") => Ok(true),
        Some(other) => Err(bad(
            "INVALID_QUERY",
            format!("{key}: expected true or false, got {other:?}"),
        )),
    }
}

/// `limit` from the query: `default` when absent, an error naming it when not 1 to `max`.
pub(crate) fn limit(pairs: &[(String, String)], default: usize, max: usize) -> Result<usize, Resp> {
    match query_get(pairs, "limit") {
        None => Ok(default),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(bad(
                "INVALID_QUERY",
                format!("limit: expected a number from 1 to {max}, got {l:?}"),
            )),
        },
    }
}

fn time_param(pairs: &[(String, String)], key: &str) -> Result<Option<Timestamp>, Resp> {
    let Some(v) = query_get(pairs, key) else {
        return Ok(None);
    };
    Timestamp::parse_rfc3339(&v).map(Some).ok_or_else(|| {
        bad(
            "INVALID_QUERY",
            format!("{key}: expected an RFC 3339 time such as 2026-11-01T00:00:00Z, got {v:?}"),
        )
    })
}

/// The device list query from `status`, `search`, `connection`, `sort`, `order`, `limit` and
/// `after`.
fn device_query(pairs: &[(String, String)]) -> Result<DeviceQuery, Resp> {
    let mut q = DeviceQuery {
        limit: limit(pairs, 50, 1000)?,
        ..DeviceQuery::default()
    };
    if let Some(s) = query_get(pairs, "status") {
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let st = DeviceStatus::parse(name).ok_or_else(|| {
                bad(
                    "INVALID_QUERY",
                    format!(
                        "status: unknown status {name:?}; one of {}",
                        DeviceStatus::ALL.map(DeviceStatus::as_str).join(", ")
                    ),
                )
            })?;
            q.statuses.push(st);
        }
    }
    q.search = query_get(pairs, "search").filter(|s| !s.trim().is_empty());
    q.connection = query_get(pairs, "connection");
    if let Some(s) = query_get(pairs, "sort") {
        q.sort = SortKey::parse(&s).ok_or_else(|| {
            bad(
                "INVALID_QUERY",
                format!("sort: expected serial, status, last_seen, name or model, got {s:?}"),
            )
        })?;
    }
    q.descending = match query_get(pairs, "order").as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(o) => {
            return Err(bad(
                "INVALID_QUERY",
                format!("order: expected asc or desc, got {o:?}"),
            ))
        }
    };
    q.after = query_get(pairs, "after");
    Ok(q)
}

fn preenroll_json(p: &PreenrollRecord) -> serde_json::Value {
    json!({
        "serial_number": p.serial,
        "name": p.name,
        "email": p.email,
        "ownership": p.ownership.as_ref().map(|o| o.as_str()),
        "platform": p.platform.as_ref().map(|o| o.as_str()),
        "mobile": p.mobile,
        "device_name": p.device_name,
        "source": p.source,
        "created_at": p.created_at.to_rfc3339(),
        "updated_at": p.updated_at.to_rfc3339(),
        "updated_by": p.updated_by,
    })
}

fn detail_json(d: &DeviceDetail) -> serde_json::Value {
    let mut v = serde_json::to_value(d).unwrap_or_default();
    v["preenroll"] = d.preenroll.as_ref().map_or(json!(null), preenroll_json);
    v["enrollment"] = d
        .enrollment
        .as_ref()
        .map_or(json!(null), |e| enrollment_json(e, None));
    v["recent_commands"] = json!(d
        .recent_commands
        .iter()
        .map(delivery_json)
        .collect::<Vec<_>>());
    v
}

/// A CSV record as the appliance's other exports write it.
fn csv_row(fields: &[String]) -> String {
    let mut line = String::new();
    mdm_service::export::csv_line(&mut line, fields);
    line
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

impl<S: Store, C: AbmConnector> App<S, C> {
    /// Whether a path (segments after `/api/v1`) belongs here.
    pub(crate) fn is_lifecycle_route(segs: &[&str]) -> bool {
        matches!(
            segs.first(),
            Some(&("devices" | "preenroll" | "activity" | "settings"))
        )
    }

    pub(crate) async fn lifecycle_api(
        &self,
        method: Method,
        segs: &[&str],
        req: Request<Incoming>,
        caller: &ApiTokenRecord,
        pairs: &[(String, String)],
    ) -> Result<Resp, Resp> {
        let svc = &self.service;
        let ok = |r: mdm_service::ServiceResult<Resp>| r.map_err(|e| api_error(&e));
        match (method, segs) {
            (Method::GET, ["devices"]) => {
                let q = device_query(pairs)?;
                if query_get(pairs, "format").as_deref() == Some("csv") {
                    return self.devices_csv(q);
                }
                ok(svc.list_devices(&q).map(|p| json(&p)))
            }
            (Method::GET, ["devices", "counts"]) => Ok(json(&svc.device_counts())),
            (Method::GET, ["devices", key]) => {
                ok(svc.device_detail(key).map(|d| json(&detail_json(&d))))
            }
            (Method::GET, ["devices", key, "invitation"]) => {
                // The link enrolls a device: not for auditors.
                need(Role::Operator, caller.role)?;
                let (inv, url) = svc.invitation_url(key).map_err(|e| api_error(&e))?;
                let mut v = serde_json::to_value(&inv).unwrap_or_default();
                v["url"] = json!(url);
                Ok(json(&v))
            }
            (Method::POST, ["devices", key, "release"]) => ok(svc
                .release_device(key, &caller.name)
                .await
                .map(|r| json_status(StatusCode::ACCEPTED, &r))),
            (Method::GET, ["preenroll"]) => {
                let n = limit(pairs, 100, 10_000)?;
                let after = query_get(pairs, "after");
                let items = svc
                    .list_preenrolled(after.as_deref(), n)
                    .map_err(|e| api_error(&e))?;
                let next = if items.len() >= n {
                    items.last().map(|p| p.serial.clone())
                } else {
                    None
                };
                let total = svc
                    .store()
                    .count_preenrolled()
                    .map_err(|e| api_error(&e.into()))?;
                Ok(json(&json!({
                    "items": items.iter().map(preenroll_json).collect::<Vec<_>>(),
                    "next": next,
                    "total": total,
                })))
            }
            (Method::GET, ["preenroll", "sample"]) => Ok(respond::with_body(
                StatusCode::OK,
                "text/csv; charset=utf-8",
                mdm_service::lifecycle::csv::sample(),
            )),
            (Method::POST, ["preenroll", "import"]) => {
                let opts = ImportOptions {
                    dry_run: flag(pairs, "dry_run")?,
                    valid_only: flag(pairs, "valid_only")?,
                    on_duplicate: match query_get(pairs, "on_duplicate").as_deref() {
                        None => None,
                        Some("replace") => Some(OnDuplicate::Replace),
                        Some("skip") => Some(OnDuplicate::Skip),
                        Some(o) => {
                            return Err(bad(
                                "INVALID_QUERY",
                                format!("on_duplicate: expected replace or skip, got {o:?}"),
                            ))
                        }
                    },
                };
                let body = body_or_error(req.into_body(), IMPORT_BODY_LIMIT).await?;
                let report = svc
                    .import_preenroll(&body, opts, &caller.name)
                    .await
                    .map_err(|e| api_error(&e))?;
                let status = match report.refused.as_ref().map(|r| r.code) {
                    Some("PREENROLL_DUPLICATES") => StatusCode::CONFLICT,
                    Some(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    None => StatusCode::OK,
                };
                let mut v = serde_json::to_value(&report).unwrap_or_default();
                if let Some(r) = &report.refused {
                    v["error"] = json!({"code": r.code, "message": r.message});
                }
                Ok(json_status(status, &v))
            }
            (Method::POST, ["preenroll", "delete"]) => {
                let body = body_or_error(req.into_body(), self.limits.api_body).await?;
                let s: Serials = parse_json(&body)?;
                let (deleted, missing) = svc
                    .delete_preenrolled(s.serials, &caller.name)
                    .await
                    .map_err(|e| api_error(&e))?;
                Ok(json(&json!({"deleted": deleted, "not_found": missing})))
            }
            (Method::DELETE, ["preenroll", serial]) => {
                let (deleted, _) = svc
                    .delete_preenrolled(vec![serial.to_string()], &caller.name)
                    .await
                    .map_err(|e| api_error(&e))?;
                if deleted.is_empty() {
                    return Err(api_error(&ServiceError::not_found(
                        "PREENROLL_NOT_FOUND",
                        format!("serial number {serial} is not pre-enrolled"),
                    )));
                }
                Ok(json(&json!({"deleted": deleted})))
            }
            (Method::GET, ["activity"]) => {
                // The audit trail: admins and auditors, not operators.
                if caller.role == Role::Operator {
                    return Err(api_error(&ServiceError::forbidden(
                        "ROLE_INSUFFICIENT",
                        "the activity log is readable by the Admin and Auditor roles only",
                    )));
                }
                self.activity(pairs)
            }
            (Method::GET, ["settings"]) => Ok(json(&svc.lifecycle_settings())),
            (Method::PATCH, ["settings"]) => {
                need(Role::Admin, caller.role)?;
                let body = body_or_error(req.into_body(), self.limits.api_body).await?;
                let patch: SettingsPatch = parse_json(&body)?;
                ok(svc
                    .update_lifecycle_settings(patch, &caller.name)
                    .await
                    .map(|s| json(&s)))
            }
            _ => Err(respond::simple(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such API endpoint",
            )),
        }
    }

    /// Every matching device as CSV, in one pass over the directory (which builds the rows a
    /// chunk at a time under its lock).
    fn devices_csv(&self, mut q: DeviceQuery) -> Result<Resp, Resp> {
        let mut out = csv_row(
            &[
                "serial_number",
                "status",
                "reason",
                "since",
                "name",
                "email",
                "ownership",
                "platform",
                "model",
                "os_version",
                "device_name",
                "abm_connection",
                "profile_status",
                "enrollment_id",
                "last_seen_at",
                "enrolled_at",
            ]
            .map(String::from),
        );
        q.after = None;
        let rows = self
            .service
            .devices()
            .export(&q, Timestamp::now(), &self.service.thresholds())
            .map_err(|e| api_error(&e))?;
        let ts = |t: Option<Timestamp>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
        for d in rows {
            out.push_str(&csv_row(&[
                d.serial.clone(),
                d.explanation.status.as_str().to_string(),
                d.explanation.reason.clone(),
                ts(d.explanation.since),
                opt(&d.name),
                opt(&d.email),
                d.ownership.unwrap_or_default().to_string(),
                d.platform.unwrap_or_default().to_string(),
                opt(&d.model),
                opt(&d.os_version),
                opt(&d.device_name),
                opt(&d.abm_connection),
                opt(&d.profile_status),
                opt(&d.enrollment_id),
                ts(d.last_seen_at),
                ts(d.enrolled_at),
            ]));
        }
        Ok(respond::with_body(
            StatusCode::OK,
            "text/csv; charset=utf-8",
            out,
        ))
    }

    /// `GET /api/v1/activity`: JSON pages, or every match as CSV or JSON lines.
    fn activity(&self, pairs: &[(String, String)]) -> Result<Resp, Resp> {
        let before_seq = match query_get(pairs, "before") {
            None => None,
            Some(b) => Some(b.parse::<u64>().map_err(|_| {
                bad(
                    "INVALID_QUERY",
                    format!("before: expected the `next` number of a previous page, got {b:?}"),
                )
            })?),
        };
        let device = query_get(pairs, "device").map(|d| {
            // A serial number or an enrollment id; serials are stored upper-case.
            self.service.devices().resolve(&d).unwrap_or(d)
        });
        let mut q = ActivityQuery {
            target: device.or_else(|| query_get(pairs, "target")),
            actor: query_get(pairs, "actor"),
            kind: query_get(pairs, "type"),
            since: time_param(pairs, "since")?,
            until: time_param(pairs, "until")?,
            before_seq,
            limit: limit(pairs, 100, 10_000)?,
        };
        let format = query_get(pairs, "format");
        match format.as_deref() {
            None | Some("json") => {
                let page = self.service.activity(&q).map_err(|e| api_error(&e))?;
                Ok(json(&page))
            }
            Some(f @ ("csv" | "jsonl")) => {
                let csv = f == "csv";
                let mut out = if csv {
                    csv_row(
                        &[
                            "seq", "at", "actor", "type", "targets", "outcome", "summary",
                        ]
                        .map(String::from),
                    )
                } else {
                    String::new()
                };
                q.limit = 10_000;
                loop {
                    let page = self.service.activity(&q).map_err(|e| api_error(&e))?;
                    for a in &page.items {
                        if csv {
                            out.push_str(&csv_row(&activity_fields(a)));
                        } else {
                            out.push_str(&serde_json::to_string(a).unwrap_or_default());
                            out.push('\n');
                        }
                    }
                    match page.next {
                        Some(n) => q.before_seq = Some(n),
                        None => break,
                    }
                }
                let ct = if csv {
                    "text/csv; charset=utf-8"
                } else {
                    "application/x-ndjson"
                };
                Ok(respond::with_body(StatusCode::OK, ct, out))
            }
            Some(other) => Err(bad(
                "INVALID_QUERY",
                format!("format: expected json, csv or jsonl, got {other:?}"),
            )),
        }
    }
}

fn activity_fields(a: &ActivityView) -> Vec<String> {
    vec![
        a.seq.to_string(),
        a.at.clone(),
        a.actor.clone(),
        a.kind.clone(),
        a.targets.join(" "),
        a.outcome.to_string(),
        a.summary.clone(),
    ]
}
