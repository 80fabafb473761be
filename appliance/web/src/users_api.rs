//! `/api/v1/users`: local user accounts, who sign in during Setup Assistant when an ABM
//! enrollment profile asks for user authentication (documented in `docs/reference/api.md`).
//!
//! Roles: reading needs Auditor; unlocking a locked account needs Operator (help-desk work);
//! creating, changing and deleting accounts need Admin.
#![allow(clippy::result_large_err)]

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use mdm_service::accounts::{NewUser, UserPatch};
use mdm_service::ports::{AbmConnector, ApiTokenRecord, Role, Store};
use serde_json::json;

use crate::api::{need, parse_json};
use crate::lifecycle_api::limit;
use crate::respond::{api_error, json, json_status, Resp};
use crate::routes::{body_or_error, query_get, App};

impl<S: Store, C: AbmConnector> App<S, C> {
    /// Whether a path (segments after `/api/v1`) belongs here.
    pub(crate) fn is_users_route(segs: &[&str]) -> bool {
        segs.first() == Some(&"users")
    }

    pub(crate) async fn users_api(
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
            (Method::GET, ["users"]) => {
                let after = query_get(pairs, "after");
                svc.users(after.as_deref(), limit(pairs, 100, 1000)?)
                    .map(|p| json(&p))
                    .map_err(err)
            }
            (Method::POST, ["users"]) => {
                need(Role::Admin, caller.role)?;
                let body = body_or_error(req.into_body(), self.limits.api_body).await?;
                let new: NewUser = parse_json(&body)?;
                let u = svc.create_user(new, by).await.map_err(err)?;
                Ok(json_status(StatusCode::CREATED, &u))
            }
            (Method::GET, ["users", name]) => svc.user(name).map(|u| json(&u)).map_err(err),
            (Method::PATCH, ["users", name]) => {
                need(Role::Admin, caller.role)?;
                let body = body_or_error(req.into_body(), self.limits.api_body).await?;
                let patch: UserPatch = parse_json(&body)?;
                svc.update_user(name, patch, by)
                    .await
                    .map(|u| json(&u))
                    .map_err(err)
            }
            (Method::DELETE, ["users", name]) => {
                need(Role::Admin, caller.role)?;
                svc.delete_user(name, by).await.map_err(err)?;
                Ok(json(&json!({"deleted": name.trim().to_ascii_lowercase()})))
            }
            (Method::POST, ["users", name, "unlock"]) => svc
                .unlock_user(name, by)
                .await
                .map(|u| json(&u))
                .map_err(err),
            _ => Err(crate::respond::simple(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such endpoint",
            )),
        }
    }
}
