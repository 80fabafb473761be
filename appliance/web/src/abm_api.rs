//! `/api/v1/abm/...`: Apple Business Manager connections, tokens, sync, devices, profiles and
//! rules (documented in `docs/reference/api.md`). Reading needs any role; changing settings,
//! tokens, profiles and rules needs admin; sync and (re)assignment need operator.
#![allow(clippy::result_large_err)]

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use mdm_service::abm::connections::{ConnectionPatch, NewConnection};
use mdm_service::abm::profiles::RuleSpec;
use mdm_service::ports::{
    AbmConnector, AbmProfileRecord, AbmRuleRecord, ApiTokenRecord, Role, Store,
};
use serde::Deserialize;
use serde_json::json;

use crate::api::{need, parse_json};
use crate::respond::{self, api_error, json, json_status, Resp};
use crate::routes::{body_or_error, query_get, App};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Serials {
    serials: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Disown {
    serials: Vec<String>,
    #[serde(default)]
    confirm: String,
}

/// A rule as posted to `PUT .../rules/{name}` (the name comes from the path).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleBody {
    #[serde(default)]
    priority: i32,
    profile: String,
    #[serde(default)]
    serials: Vec<String>,
    #[serde(default)]
    device_family: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    os: Option<String>,
}

fn profile_json(p: &AbmProfileRecord) -> serde_json::Value {
    json!({
        "name": p.name,
        "connection": p.connection,
        "profile": p.profile,
        "profile_uuid": p.apple_uuid,
        "authentication": p.authentication.as_str(),
        "defined_at": p.defined_at.map(|t| t.to_rfc3339()),
        "updated_at": p.updated_at.to_rfc3339(),
    })
}

fn rule_json(r: &AbmRuleRecord) -> serde_json::Value {
    json!({
        "name": r.name,
        "priority": r.priority,
        "profile": r.profile,
        "serials": r.matcher.serials,
        "device_family": r.matcher.device_family,
        "model": r.matcher.model,
        "os": r.matcher.os,
        "created_at": r.created_at.to_rfc3339(),
    })
}

fn flag(pairs: &[(String, String)], key: &str) -> bool {
    matches!(query_get(pairs, key).as_deref(), Some("true" | "1" | "yes"))
}

impl<S: Store, C: AbmConnector> App<S, C> {
    pub(crate) async fn abm_api(
        &self,
        method: Method,
        segs: &[&str],
        req: Request<Incoming>,
        caller: &ApiTokenRecord,
        pairs: &[(String, String)],
    ) -> Result<Resp, Resp> {
        let abm = &self.abm;
        let err = |e: mdm_service::ServiceError| api_error(&e);
        let max = self.limits.api_body;
        match (method, segs) {
            (Method::GET, []) => Ok(json(&json!({
                "items": abm.connection_views().map_err(err)?
            }))),
            (Method::POST, []) => {
                need(Role::Admin, caller.role)?;
                let body = body_or_error(req.into_body(), max).await?;
                let nc: NewConnection = parse_json(&body)?;
                let rec = abm.add_connection(nc).await.map_err(err)?;
                Ok(json_status(
                    StatusCode::CREATED,
                    &abm.connection_view(&rec).map_err(err)?,
                ))
            }
            (Method::GET, [name]) => {
                let rec = abm.connection_record(name).map_err(err)?;
                Ok(json(&abm.connection_view(&rec).map_err(err)?))
            }
            (Method::PATCH, [name]) => {
                need(Role::Admin, caller.role)?;
                let body = body_or_error(req.into_body(), max).await?;
                let patch: ConnectionPatch = parse_json(&body)?;
                let rec = abm.update_connection(name, patch).await.map_err(err)?;
                Ok(json(&abm.connection_view(&rec).map_err(err)?))
            }
            (Method::DELETE, [name]) => {
                need(Role::Admin, caller.role)?;
                if query_get(pairs, "confirm").as_deref() != Some(*name) {
                    return Err(api_error(&mdm_service::ServiceError::bad_request(
                        "ABM_DELETE_UNCONFIRMED",
                        format!("deleting a connection forgets its token and device list (devices stay assigned in ABM); repeat with ?confirm={name}"),
                    )));
                }
                abm.delete_connection(name).await.map_err(err)?;
                Ok(json(&json!({"deleted": name})))
            }
            (Method::GET, [name, "public-key"]) => {
                need(Role::Admin, caller.role)?;
                let pem = abm.public_key_pem(name, false).await.map_err(err)?;
                Ok(respond::with_body(
                    StatusCode::OK,
                    "application/x-pem-file",
                    pem,
                ))
            }
            (Method::POST, [name, "public-key"]) => {
                need(Role::Admin, caller.role)?;
                let pem = abm.public_key_pem(name, true).await.map_err(err)?;
                Ok(respond::with_body(
                    StatusCode::OK,
                    "application/x-pem-file",
                    pem,
                ))
            }
            (Method::PUT, [name, "token"]) => {
                need(Role::Admin, caller.role)?;
                let body = body_or_error(req.into_body(), 1024 * 1024).await?;
                let rec = abm
                    .upload_token(name, &body, flag(pairs, "force"))
                    .await
                    .map_err(err)?;
                Ok(json(&abm.connection_view(&rec).map_err(err)?))
            }
            (Method::POST, [name, "sync"]) => {
                let run = abm.sync_now(name, flag(pairs, "full")).await.map_err(err)?;
                Ok(json(&mdm_service::abm::views::SyncRunView::from(&run)))
            }
            (Method::POST, [name, "assign"]) => Ok(json(&abm.assign_due(name).await.map_err(err)?)),
            (Method::GET, [name, "devices"]) => {
                if query_get(pairs, "format").as_deref() == Some("csv") {
                    let csv = abm.devices_csv(name).map_err(err)?;
                    let mut resp =
                        respond::with_body(StatusCode::OK, "text/csv; charset=utf-8", csv);
                    if let Ok(v) = http::HeaderValue::from_str(&format!(
                        "attachment; filename=\"abm-{name}-devices.csv\""
                    )) {
                        resp.headers_mut()
                            .insert(http::header::CONTENT_DISPOSITION, v);
                    }
                    return Ok(resp);
                }
                let limit = query_get(pairs, "limit")
                    .and_then(|l| l.parse::<usize>().ok())
                    .unwrap_or(100)
                    .clamp(1, 1000);
                let after = query_get(pairs, "after");
                let items = abm
                    .device_views(name, after.as_deref(), limit)
                    .map_err(err)?;
                let next = if items.len() >= limit {
                    items.last().map(|d| d.serial_number.clone())
                } else {
                    None
                };
                Ok(json(&json!({"items": items, "next": next})))
            }
            (Method::GET, [name, "devices", serial]) => {
                Ok(json(&abm.device_view_of(name, serial).map_err(err)?))
            }
            (Method::POST, [name, "remove-profile"]) => {
                let body = body_or_error(req.into_body(), max).await?;
                let s: Serials = parse_json(&body)?;
                let results = abm.remove_profile(name, &s.serials).await.map_err(err)?;
                Ok(json(&json!({"items": results})))
            }
            (Method::POST, [name, "disown"]) => {
                need(Role::Admin, caller.role)?;
                let body = body_or_error(req.into_body(), max).await?;
                let d: Disown = parse_json(&body)?;
                let results = abm
                    .disown(name, &d.serials, &d.confirm)
                    .await
                    .map_err(err)?;
                Ok(json(&json!({"items": results})))
            }
            (Method::GET, [name, "profiles"]) => {
                let items: Vec<_> = abm
                    .profiles(name)
                    .map_err(err)?
                    .iter()
                    .map(profile_json)
                    .collect();
                Ok(json(&json!({"items": items})))
            }
            (Method::GET, [name, "profiles", profile]) => Ok(json(&profile_json(
                &abm.profile(name, profile).map_err(err)?,
            ))),
            (Method::PUT, [name, "profiles", profile]) => {
                need(Role::Admin, caller.role)?;
                let body = body_or_error(req.into_body(), max).await?;
                let value: serde_json::Value = parse_json(&body)?;
                let rec = abm.put_profile(name, profile, &value).await.map_err(err)?;
                Ok(json(&profile_json(&rec)))
            }
            (Method::DELETE, [name, "profiles", profile]) => {
                need(Role::Admin, caller.role)?;
                abm.delete_profile(name, profile).await.map_err(err)?;
                Ok(json(&json!({"deleted": profile})))
            }
            (Method::POST, [name, "profiles", profile, "assign"]) => {
                let body = body_or_error(req.into_body(), max).await?;
                let s: Serials = parse_json(&body)?;
                let results = abm
                    .assign_serials(name, profile, &s.serials)
                    .await
                    .map_err(err)?;
                Ok(json(&json!({"items": results})))
            }
            (Method::GET, [name, "rules"]) => {
                let items: Vec<_> = abm
                    .rules(name)
                    .map_err(err)?
                    .iter()
                    .map(rule_json)
                    .collect();
                Ok(json(&json!({"items": items})))
            }
            (Method::PUT, [name, "rules", rule]) => {
                need(Role::Admin, caller.role)?;
                let body = body_or_error(req.into_body(), max).await?;
                let b: RuleBody = parse_json(&body)?;
                let rec = abm
                    .put_rule(
                        name,
                        RuleSpec {
                            name: rule.to_string(),
                            priority: b.priority,
                            profile: b.profile,
                            serials: b.serials,
                            device_family: b.device_family,
                            model: b.model,
                            os: b.os,
                        },
                    )
                    .await
                    .map_err(err)?;
                Ok(json(&rule_json(&rec)))
            }
            (Method::DELETE, [name, "rules", rule]) => {
                need(Role::Admin, caller.role)?;
                abm.delete_rule(name, rule).await.map_err(err)?;
                Ok(json(&json!({"deleted": rule})))
            }
            _ => Err(respond::simple(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such ABM endpoint",
            )),
        }
    }
}
