//! `/api/v1/groups` and `/api/v1/profiles`: device groups, configuration profiles, their
//! assignment and per-device install states (documented in `docs/reference/api.md`).
//!
//! Roles: reading needs Auditor; groups, membership and assignment need Operator (day-to-day
//! device work); uploading, replacing, deleting and downloading profile files need Admin (a
//! profile can carry certificates, passwords and VPN settings).
#![allow(clippy::result_large_err)]

use http::{header, HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
use mdm_service::ports::{AbmConnector, ApiTokenRecord, Role, Store};
use mdm_service::profiles::{AssignmentChange, GroupPatch, NewGroup, MAX_PROFILE_BYTES};
use serde::Deserialize;
use serde_json::json;

use crate::api::{need, parse_json};
use crate::lifecycle_api::limit;
use crate::respond::{self, api_error, json, json_status, Resp};
use crate::routes::{body_or_error, query_get, App};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberChange {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

impl<S: Store, C: AbmConnector> App<S, C> {
    /// Whether a path (segments after `/api/v1`) belongs here.
    pub(crate) fn is_profiles_route(segs: &[&str]) -> bool {
        matches!(segs.first(), Some(&("groups" | "profiles")))
    }

    pub(crate) async fn profiles_api(
        &self,
        method: Method,
        segs: &[&str],
        req: Request<Incoming>,
        caller: &ApiTokenRecord,
        pairs: &[(String, String)],
    ) -> Result<Resp, Resp> {
        let svc = &self.service;
        let by = caller.name.as_str();
        let err = |e: mdm_service::ServiceError| api_error(&e);
        match (method, segs) {
            (Method::GET, ["groups"]) => Ok(json(&json!({"items": svc.list_groups()}))),
            (Method::POST, ["groups"]) => {
                let body = body_or_error(req.into_body(), self.limits.api_body).await?;
                let new: NewGroup = parse_json(&body)?;
                let g = svc.create_group(new, by).await.map_err(err)?;
                Ok(json_status(StatusCode::CREATED, &g))
            }
            (Method::GET, ["groups", key]) => svc.group(key).map(|g| json(&g)).map_err(err),
            (Method::PATCH, ["groups", key]) => {
                let body = body_or_error(req.into_body(), self.limits.api_body).await?;
                let patch: GroupPatch = parse_json(&body)?;
                svc.update_group(key, patch, by)
                    .await
                    .map(|g| json(&g))
                    .map_err(err)
            }
            (Method::DELETE, ["groups", key]) => {
                svc.delete_group(key, by).await.map_err(err)?;
                Ok(json(&json!({"deleted": key})))
            }
            (Method::GET, ["groups", key, "members"]) => {
                let after = query_get(pairs, "after");
                svc.group_members(key, after.as_deref(), limit(pairs, 100, 1000)?)
                    .map(|p| json(&p))
                    .map_err(err)
            }
            (Method::POST, ["groups", key, "members"]) => {
                let body = body_or_error(req.into_body(), self.limits.api_body).await?;
                let change: MemberChange = parse_json(&body)?;
                svc.change_group_members(key, &change.add, &change.remove, by)
                    .await
                    .map(|c| json(&c))
                    .map_err(err)
            }
            (Method::GET, ["profiles"]) => Ok(json(&json!({"items": svc.list_profiles()}))),
            (Method::POST, ["profiles"]) => {
                need(Role::Admin, caller.role)?;
                let body = body_or_error(req.into_body(), MAX_PROFILE_BYTES).await?;
                let name = query_get(pairs, "name");
                let p = svc
                    .upload_profile(name.as_deref(), &body, by)
                    .await
                    .map_err(err)?;
                Ok(json_status(StatusCode::CREATED, &p))
            }
            (Method::GET, ["profiles", key]) => svc.profile(key).map(|p| json(&p)).map_err(err),
            (Method::PUT, ["profiles", key]) => {
                need(Role::Admin, caller.role)?;
                let body = body_or_error(req.into_body(), MAX_PROFILE_BYTES).await?;
                svc.replace_profile(key, &body, by)
                    .await
                    .map(|p| json(&p))
                    .map_err(err)
            }
            (Method::DELETE, ["profiles", key]) => {
                need(Role::Admin, caller.role)?;
                let stats = svc.delete_profile(key, by).await.map_err(err)?;
                Ok(json(&json!({"deleted": key, "reconcile": stats})))
            }
            (Method::GET, ["profiles", key, "file"]) => {
                // The file may hold secrets: only admins read it back.
                need(Role::Admin, caller.role)?;
                let (file, name) = svc.profile_file(key).map_err(err)?;
                let mut resp = respond::with_body(
                    StatusCode::OK,
                    mdm_service::enroll::PROFILE_CONTENT_TYPE,
                    file,
                );
                if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
                    resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
                }
                Ok(resp)
            }
            (Method::POST, ["profiles", key, "assign"]) => {
                self.assignments(key, req, by, true).await
            }
            (Method::POST, ["profiles", key, "unassign"]) => {
                self.assignments(key, req, by, false).await
            }
            (Method::GET, ["profiles", key, "installs"]) => {
                let after = query_get(pairs, "after");
                svc.profile_installs(key, after.as_deref(), limit(pairs, 100, 1000)?)
                    .map(|p| json(&p))
                    .map_err(err)
            }
            (Method::POST, ["profiles", key, "retry"]) => {
                let stats = svc.retry_profile(key, by).await.map_err(err)?;
                Ok(json(&json!({"reconcile": stats})))
            }
            _ => Err(respond::simple(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such API endpoint",
            )),
        }
    }

    async fn assignments(
        &self,
        key: &str,
        req: Request<Incoming>,
        by: &str,
        assign: bool,
    ) -> Result<Resp, Resp> {
        let body = body_or_error(req.into_body(), self.limits.api_body).await?;
        let change: AssignmentChange = parse_json(&body)?;
        let (p, stats) = self
            .service
            .change_assignments(key, &change, assign, by)
            .await
            .map_err(|e| api_error(&e))?;
        Ok(json(&json!({"profile": p, "reconcile": stats})))
    }
}
