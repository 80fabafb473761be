//! The admin API, version 1: JSON over the appliance's HTTPS listener, authenticated by
//! bearer API tokens with roles. Documented in `docs/reference/api.md`.
// Handlers return ready responses as their `Err` (`?` on a refusal ends the request). The
// size is that of an HTTP response built once per request; boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use base64::Engine as _;
use http::{header, Method, Request, StatusCode};
use hyper::body::Incoming;
use mdm_service::commands::{CommandSpec, CommandView};
use mdm_service::enroll::LinkRequest;
use mdm_service::ports::{
    AbmConnector, ApiTokenRecord, DeliveryRecord, EnrollmentRecord, LinkRecord, Role, Store,
    Timestamp,
};
use mdm_service::ServiceError;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::respond::{self, api_error, json, json_status, Resp};
use crate::routes::{body_or_error, query_get, query_pairs, App};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLink {
    #[serde(default)]
    label: String,
    ttl_seconds: Option<u64>,
    max_uses: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCommandReq {
    /// Enrollment ids.
    targets: Vec<String>,
    /// A typed command name (`DeviceInformation`, ...), or absent with `plist`.
    request_type: Option<String>,
    /// A raw command plist, base64.
    plist_base64: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    role: Role,
}

/// A link as the API shows it (no token hash).
#[derive(Serialize)]
struct LinkView<'a> {
    id: &'a str,
    label: &'a str,
    created_at: String,
    expires_at: String,
    revoked_at: Option<String>,
    uses: u64,
    max_uses: Option<u64>,
    created_by: &'a str,
}

fn link_view(l: &LinkRecord) -> LinkView<'_> {
    LinkView {
        id: &l.id,
        label: &l.label,
        created_at: l.created_at.to_rfc3339(),
        expires_at: l.expires_at.to_rfc3339(),
        revoked_at: l.revoked_at.map(|t| t.to_rfc3339()),
        uses: l.uses,
        max_uses: l.max_uses,
        created_by: &l.created_by,
    }
}

/// A delivery with its result plist as text (devices send XML plists).
pub(crate) fn delivery_json(d: &DeliveryRecord) -> serde_json::Value {
    let (text, b64) = match &d.result {
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(s) => (Some(s.to_string()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            ),
        },
        None => (None, None),
    };
    let error_chain = d
        .error_chain_json
        .as_deref()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok());
    json!({
        "command_uuid": d.command_uuid,
        "enrollment_id": d.enrollment_id,
        "request_type": d.request_type,
        "status": d.status,
        "queued_at": d.queued_at.to_rfc3339(),
        "updated_at": d.updated_at.to_rfc3339(),
        "result_plist": text,
        "result_base64": b64,
        "error_chain": error_chain,
    })
}

fn command_json(v: &CommandView) -> serde_json::Value {
    let mut counts = serde_json::Map::new();
    let mut total = 0;
    for (status, n) in &v.counts {
        counts.insert(json!(status).as_str().unwrap_or("?").to_owned(), json!(n));
        total += n;
    }
    json!({
        "command_uuid": v.command.uuid,
        "request_type": v.command.request_type,
        "created_at": v.command.created_at.to_rfc3339(),
        "created_by": v.command.created_by,
        "payload_plist": String::from_utf8_lossy(&v.command.payload),
        "total_deliveries": total,
        "delivery_counts": counts,
        "deliveries": v.deliveries.iter().map(delivery_json).collect::<Vec<_>>(),
        "next": v.next,
    })
}

/// An enrollment as the API shows it: no sealed blobs, no push secrets, RFC 3339 times.
pub(crate) fn enrollment_json(e: &EnrollmentRecord, queued: Option<u64>) -> serde_json::Value {
    let ts = |t: Option<Timestamp>| t.map(|t| t.to_rfc3339());
    let mut v = json!({
        "id": e.id,
        "device_id": e.device_id,
        "user_id": e.user_id,
        "user_short_name": e.user_short_name,
        "channel": e.channel,
        "state": e.state,
        "identity_sha256": e.identity_sha256,
        "topic": e.topic,
        "facts": e.facts,
        "source": e.source,
        "push_token_present": e.push.is_some(),
        "push_invalid": e.push_invalid,
        "last_push_at": ts(e.last_push_at),
        "unlock_token_present": e.unlock_token_sealed.is_some(),
        "bootstrap_token_present": e.bootstrap_token_sealed.is_some(),
        "awaiting_configuration": e.awaiting_configuration,
        "authenticated_at": e.authenticated_at.to_rfc3339(),
        "enrolled_at": ts(e.enrolled_at),
        "token_updated_at": ts(e.token_updated_at),
        "checked_out_at": ts(e.checked_out_at),
        "last_seen_at": e.last_seen_at.to_rfc3339(),
    });
    if let Some(q) = queued {
        v["queued_commands"] = json!(q);
    }
    v
}

fn push_outcome_json(id: &str, o: &mdm_service::ports::PushOutcome) -> serde_json::Value {
    use mdm_service::ports::PushOutcome as O;
    match o {
        O::Sent { apns_id } => json!({"enrollment_id": id, "result": "sent", "apns_id": apns_id}),
        O::InvalidToken { status, reason } => {
            json!({"enrollment_id": id, "result": "invalid_token", "status": status, "reason": reason})
        }
        O::CertificateRejected { status, reason } => {
            json!({"enrollment_id": id, "result": "certificate_rejected", "status": status, "reason": reason})
        }
        O::Failed { reason } => json!({"enrollment_id": id, "result": "failed", "reason": reason}),
    }
}

fn token_view(t: &ApiTokenRecord) -> serde_json::Value {
    json!({
        "id": t.id, "name": t.name, "role": t.role,
        "created_at": t.created_at.to_rfc3339(),
        "revoked_at": t.revoked_at.map(|r| r.to_rfc3339()),
    })
}

pub(crate) fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Resp> {
    serde_json::from_slice(body).map_err(|e| {
        respond::simple(
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
            &format!("request body: {e}"),
        )
    })
}

pub(crate) fn need(role: Role, have: Role) -> Result<(), Resp> {
    let ok = match role {
        Role::Auditor => true,
        Role::Operator => matches!(have, Role::Operator | Role::Admin),
        Role::Admin => have == Role::Admin,
    };
    if ok {
        Ok(())
    } else {
        Err(api_error(&ServiceError::forbidden(
            "ROLE_INSUFFICIENT",
            format!("this needs the {role:?} role; the token has {have:?}"),
        )))
    }
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let rest = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?;
    Some(rest.trim().to_string())
}

impl<S: Store, C: AbmConnector> App<S, C> {
    /// Prometheus text exposition of the figures an operator alerts on. Needs any API token
    /// (auditor is enough): scrape with `bearer_token_file`.
    pub(crate) async fn metrics(&self, req: Request<Incoming>) -> Resp {
        let Some(token) = bearer(&req) else {
            return api_error(&ServiceError::unauthorized(
                "API_TOKEN_MISSING",
                "metrics need an API token",
            ));
        };
        if let Err(e) = self.service.authenticate_api_token(&token) {
            return api_error(&e);
        }
        let svc = &self.service;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        if let Ok(n) = svc.store().count_enrollments() {
            metric(
                "mdm_enrollments",
                "gauge",
                "Enrollments known to the appliance.",
                n.to_string(),
            );
        }
        match svc.push_cert() {
            Ok(Some(info)) => {
                metric(
                    "mdm_push_certificate_expiry_seconds",
                    "gauge",
                    "Seconds until the push certificate expires (negative: expired).",
                    info.seconds_left.to_string(),
                );
                metric(
                    "mdm_push_certificate_expiring",
                    "gauge",
                    "1 when the push certificate expires within 30 days or has expired.",
                    u8::from(info.state != "valid").to_string(),
                );
            }
            Ok(None) => metric(
                "mdm_push_certificate_present",
                "gauge",
                "0: no push certificate is imported.",
                "0".into(),
            ),
            Err(_) => {}
        }
        if let Some(st) = svc.push_queue().provider_status() {
            metric(
                "mdm_push_sent_total",
                "counter",
                "Pushes accepted by APNs.",
                st.sent.to_string(),
            );
            metric(
                "mdm_push_failed_total",
                "counter",
                "Pushes that failed after retries.",
                st.failed.to_string(),
            );
            metric(
                "mdm_push_invalid_tokens_total",
                "counter",
                "Pushes refused for a permanently invalid device token.",
                st.invalid_tokens.to_string(),
            );
            let open = !matches!(st.circuit, mdm_service::ports::CircuitState::Closed);
            metric(
                "mdm_push_circuit_open",
                "gauge",
                "1 while the APNs circuit breaker is open or probing.",
                u8::from(open).to_string(),
            );
        }
        if let Ok(conns) = self.abm.connections() {
            if !conns.is_empty() {
                out.push_str(&abm_metrics(&self.abm, &conns));
            }
        }
        respond::with_body(StatusCode::OK, "text/plain; version=0.0.4", out)
    }

    pub(crate) async fn api(&self, req: Request<Incoming>) -> Resp {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        // The API's description is public: clients generate code from it before they hold a
        // token, and it says nothing the repository does not.
        if method == Method::GET && path == crate::openapi::PATH {
            return crate::openapi::serve();
        }
        let caller = bearer(&req).and_then(|t| self.service.authenticate_api_token(&t).ok());
        if caller.is_some() && method != Method::GET {
            // Lifecycle entries wait in a buffer for up to a quarter of a second; a change
            // may write its own entry in its own transaction, which must not overtake what
            // happened before it.
            if let Err(err) = self.service.flush_activity().await {
                tracing::warn!(error = %err, "cannot write buffered activity before an admin change");
            }
        }
        let resp = match self.api_inner(req).await {
            Ok(r) => r,
            Err(r) => r,
        };
        self.audit(&method, &path, caller.as_ref(), resp.status())
            .await;
        resp
    }

    /// Every change made through the API, and every refused credential, goes to the activity
    /// log: who, what, and how it ended. A change is recorded before its answer leaves.
    async fn audit(
        &self,
        method: &Method,
        path: &str,
        caller: Option<&ApiTokenRecord>,
        status: StatusCode,
    ) {
        use mdm_service::lifecycle::activity::entry;
        use mdm_service::ports::ActivityOutcome;
        let Some(caller) = caller else {
            if status == StatusCode::UNAUTHORIZED {
                self.service.log_activity(entry(
                    "anonymous",
                    "auth.refused",
                    Vec::new(),
                    ActivityOutcome::Refused,
                    format!("{method} {path}: missing or unknown API token"),
                    None,
                ));
            }
            return;
        };
        if *method == Method::GET && status != StatusCode::FORBIDDEN {
            return;
        }
        let outcome = if status.is_success() {
            ActivityOutcome::Ok
        } else if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
            ActivityOutcome::Refused
        } else {
            ActivityOutcome::Failed
        };
        let e = entry(
            &mdm_service::lifecycle::actor_of(&caller.name),
            "api.request",
            Vec::new(),
            outcome,
            format!("{method} {path} -> {}", status.as_u16()),
            Some(
                json!({"method": method.as_str(), "path": path, "status": status.as_u16(), "role": caller.role}),
            ),
        );
        if let Err(err) = self.service.log_activity_now(e).await {
            tracing::warn!(error = %err, "cannot record an API request in the activity log");
        }
    }

    async fn api_inner(&self, req: Request<Incoming>) -> Result<Resp, Resp> {
        let Some(token) = bearer(&req) else {
            return Err(api_error(&ServiceError::unauthorized(
                "API_TOKEN_MISSING",
                "send an API token as `Authorization: Bearer <token>` (the first one is in the data directory's admin.token)",
            )));
        };
        let caller = self
            .service
            .authenticate_api_token(&token)
            .map_err(|e| api_error(&e))?;
        let method = req.method().clone();
        let path = req.uri().path().trim_end_matches('/').to_string();
        // Path segments are percent-decoded: enrollment ids are opaque to the API.
        let decoded: Vec<String> = match path
            .trim_start_matches("/api/v1")
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|c| c.into_owned())
            })
            .collect::<Result<_, _>>()
        {
            Ok(d) => d,
            Err(_) => {
                return Err(respond::simple(
                    StatusCode::BAD_REQUEST,
                    "INVALID_PATH",
                    "a path segment is not valid percent-encoded UTF-8",
                ))
            }
        };
        let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
        let pairs = query_pairs(&req);
        let svc = &self.service;
        let ok = |r: mdm_service::ServiceResult<Resp>| r.map_err(|e| api_error(&e));

        if !path.starts_with("/api/v1") {
            return Err(respond::simple(
                StatusCode::NOT_FOUND,
                "API_VERSION_UNKNOWN",
                "this appliance serves /api/v1",
            ));
        }
        if let Some(resp) = crate::openapi::method_not_allowed(&method, &segs) {
            return Err(resp);
        }
        if method != Method::GET {
            need(Role::Operator, caller.role)?;
        }
        if let ["abm", rest @ ..] = segs.as_slice() {
            return self.abm_api(method, rest, req, &caller, &pairs).await;
        }
        if Self::is_users_route(&segs) {
            return self.users_api(method, &segs, req, &caller, &pairs).await;
        }
        if Self::is_profiles_route(&segs) {
            return self.profiles_api(method, &segs, req, &caller, &pairs).await;
        }
        if Self::is_lifecycle_route(&segs) {
            return self
                .lifecycle_api(method, &segs, req, &caller, &pairs)
                .await;
        }
        match (method, segs.as_slice()) {
            (Method::GET, ["status"]) => {
                let count = svc
                    .store()
                    .count_enrollments()
                    .map_err(|e| api_error(&e.into()))?;
                let push_cert = svc.push_cert().map_err(|e| api_error(&e))?;
                Ok(json(&json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "enrollments": count,
                    "push_topic": svc.topic(),
                    "push_certificate": push_cert,
                    "push": svc.push_queue().provider_status(),
                    "ca_sha256": hex::encode(svc.authority().ca.cert.sha256()),
                    "keystore": svc.keystore().label(),
                    "abm": self.abm.connections().unwrap_or_default().iter().map(|c| {
                        let st = self.abm.status_of(c);
                        json!({"name": c.name, "state": st.state, "reason": st.reason, "action": st.action})
                    }).collect::<Vec<_>>(),
                    "caller": {"name": caller.name, "role": caller.role},
                })))
            }
            (Method::GET, ["keystore"]) => Ok(json(&svc.keystore())),
            (Method::POST, ["keystore", "rotate"]) => {
                need(Role::Admin, caller.role)?;
                /// The call takes no options; an empty body or `{}`.
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct EmptyRequest {}
                let body = body_or_error(req.into_body(), self.limits.api_body).await?;
                if !body.iter().all(u8::is_ascii_whitespace) {
                    let _: EmptyRequest = parse_json(&body)?;
                }
                // A task of its own: a caller that stops waiting does not cut the rotation short.
                let rotating = svc.clone();
                let by = caller.name.clone();
                let report = tokio::spawn(async move { rotating.rotate_data_key(&by).await })
                    .await
                    .map_err(|e| {
                        api_error(&mdm_service::ServiceError::internal(
                            "KEYSTORE_ROTATION_FAILED",
                            format!("the rotation task failed: {e}"),
                        ))
                    })?
                    .map_err(|e| api_error(&e))?;
                Ok(json(&report))
            }
            (Method::POST, ["backup"]) => {
                need(Role::Admin, caller.role)?;
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct BackupRequest {
                    passphrase: mdm_service::accounts::Password,
                }
                let body = body_or_error(req.into_body(), self.limits.api_body).await?;
                let r: BackupRequest = parse_json(&body)?;
                let backup = svc
                    .create_backup(r.passphrase, &caller.name)
                    .await
                    .map_err(|e| api_error(&e))?;
                let mut resp =
                    respond::with_body(StatusCode::OK, "application/octet-stream", backup.bytes);
                if let Ok(v) = http::HeaderValue::from_str(&format!(
                    "attachment; filename=\"{}\"",
                    backup.file_name
                )) {
                    resp.headers_mut()
                        .insert(http::header::CONTENT_DISPOSITION, v);
                }
                resp.headers_mut().insert(
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_static("no-store"),
                );
                Ok(resp)
            }
            (Method::GET, ["ca"]) => Ok(respond::with_body(
                StatusCode::OK,
                "application/x-pem-file",
                svc.authority().ca_pem(),
            )),
            (Method::GET, ["enroll-links"]) => {
                let links = svc.store().list_links().map_err(|e| api_error(&e.into()))?;
                Ok(json(
                    &json!({"items": links.iter().map(link_view).collect::<Vec<_>>()}),
                ))
            }
            (Method::POST, ["enroll-links"]) => {
                let body = body_or_error(req.into_body(), self.limits.api_body).await?;
                let nl: NewLink = parse_json(&body)?;
                let created = svc
                    .create_link(
                        LinkRequest {
                            label: nl.label,
                            ttl: nl.ttl_seconds.map(std::time::Duration::from_secs),
                            max_uses: nl.max_uses,
                        },
                        &caller.name,
                    )
                    .await
                    .map_err(|e| api_error(&e))?;
                let mut v = serde_json::to_value(link_view(&created.link)).unwrap_or_default();
                v["url"] = json!(created.url);
                Ok(json_status(StatusCode::CREATED, &v))
            }
            (Method::DELETE, ["enroll-links", id]) => ok(svc
                .revoke_link(id)
                .await
                .map(|()| json(&json!({"revoked": id})))),
            (Method::POST, ["push-cert", "csr"]) => {
                need(Role::Admin, caller.role)?;
                ok(svc
                    .push_csr()
                    .await
                    .map(|pem| respond::with_body(StatusCode::OK, "application/pkcs10", pem)))
            }
            (Method::POST, ["enrollments", id, "push"]) => {
                let rx = svc.request_push(vec![id.to_string()]);
                let outcome = tokio::time::timeout(std::time::Duration::from_secs(60), rx).await;
                match outcome {
                    Ok(Ok(mut results)) => {
                        let (_, outcome) = results.pop().unwrap_or((
                            id.to_string(),
                            mdm_service::ports::PushOutcome::Failed { reason: "no outcome".into() },
                        ));
                        Ok(json(&push_outcome_json(id, &outcome)))
                    }
                    Ok(Err(_)) | Err(_) => Err(api_error(&ServiceError::new(
                        mdm_service::ErrorKind::Unavailable,
                        "PUSH_UNAVAILABLE",
                        "the pusher did not answer; check the push certificate and the daemon's log",
                    ))),
                }
            }
            (Method::GET, ["push-cert"]) => match svc.push_cert().map_err(|e| api_error(&e))? {
                Some(info) => Ok(json(&info)),
                None => Err(api_error(&ServiceError::not_found(
                    "PUSH_CERT_MISSING",
                    "no push certificate is imported; use `mdmctl push-cert import`",
                ))),
            },
            (Method::PUT, ["push-cert"]) => {
                need(Role::Admin, caller.role)?;
                let force = matches!(query_get(&pairs, "force").as_deref(), Some("true" | "1"));
                let body = body_or_error(req.into_body(), self.limits.api_body).await?;
                ok(svc.import_push_cert(&body, force).await.map(|i| json(&i)))
            }
            (Method::GET, ["enrollments"]) => {
                let limit = query_get(&pairs, "limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(100);
                let after = query_get(&pairs, "after");
                let items = svc
                    .list_enrollments(after.as_deref(), limit)
                    .map_err(|e| api_error(&e))?;
                let next = if items.len() >= limit.clamp(1, 1000) {
                    items.last().map(|e| e.id.clone())
                } else {
                    None
                };
                let items: Vec<_> = items.iter().map(|e| enrollment_json(e, None)).collect();
                Ok(json(&json!({"items": items, "next": next})))
            }
            (Method::GET, ["enrollments", id]) => ok(svc
                .enrollment_view(id)
                .map(|v| json(&enrollment_json(&v.enrollment, Some(v.queued_commands))))),
            (Method::GET, ["enrollments", id, "commands"]) => {
                let limit = query_get(&pairs, "limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(50);
                ok(svc.enrollment_commands(id, limit).map(|d| {
                    json(&json!({"items": d.iter().map(delivery_json).collect::<Vec<_>>()}))
                }))
            }
            (Method::POST, ["commands"]) => {
                let body = body_or_error(req.into_body(), self.limits.api_body).await?;
                let nc: NewCommandReq = parse_json(&body)?;
                let spec = match (nc.request_type, nc.plist_base64) {
                    (Some(rt), None) => {
                        CommandSpec::Typed(rt.parse().map_err(|e: mdm_proto::ProtoError| {
                            api_error(&ServiceError::bad_request("COMMAND_UNKNOWN", e.to_string()))
                        })?)
                    }
                    (None, Some(b64)) => CommandSpec::Raw(
                        base64::engine::general_purpose::STANDARD
                            .decode(b64.trim())
                            .map_err(|_| {
                                api_error(&ServiceError::bad_request(
                                    "INVALID_FIELD",
                                    "plist_base64: not valid base64",
                                ))
                            })?,
                    ),
                    _ => {
                        return Err(api_error(&ServiceError::bad_request(
                            "INVALID_FIELD",
                            "give exactly one of request_type and plist_base64",
                        )))
                    }
                };
                ok(svc
                    .enqueue(spec, nc.targets, &caller.name)
                    .await
                    .map(|q| json_status(StatusCode::CREATED, &q)))
            }
            (Method::GET, ["commands", uuid]) => {
                let limit = query_get(&pairs, "limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(100);
                let after = query_get(&pairs, "after");
                ok(svc
                    .command_view(uuid, after.as_deref(), limit)
                    .map(|v| json(&command_json(&v))))
            }
            (Method::GET, ["tokens"]) => {
                need(Role::Admin, caller.role)?;
                let items = svc
                    .store()
                    .list_api_tokens()
                    .map_err(|e| api_error(&e.into()))?;
                Ok(json(
                    &json!({"items": items.iter().map(token_view).collect::<Vec<_>>()}),
                ))
            }
            (Method::DELETE, ["tokens", id]) => {
                need(Role::Admin, caller.role)?;
                ok(svc
                    .revoke_api_token(id)
                    .await
                    .map(|t| json(&token_view(&t))))
            }
            (Method::POST, ["tokens"]) => {
                need(Role::Admin, caller.role)?;
                let body = body_or_error(req.into_body(), self.limits.api_body).await?;
                let nt: NewToken = parse_json(&body)?;
                let created = svc
                    .create_api_token(&nt.name, nt.role)
                    .await
                    .map_err(|e| api_error(&e))?;
                let mut v = token_view(&created.record);
                v["token"] = json!(created.token);
                Ok(json_status(StatusCode::CREATED, &v))
            }
            _ => Err(respond::simple(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such API endpoint",
            )),
        }
    }
}

/// Prometheus series of ABM connections, one label set per connection.
fn abm_metrics<S: Store, C: AbmConnector>(
    abm: &mdm_service::abm::AbmService<S, C>,
    conns: &[mdm_service::ports::AbmConnectionRecord],
) -> String {
    use std::fmt::Write as _;
    // Label values are connection names ([A-Za-z0-9._-]): nothing to escape.
    let now = Timestamp::now();
    let mut attention = String::new();
    let mut expiry = String::new();
    let mut devices = String::new();
    let mut sync_ok = String::new();
    for c in conns {
        let status = abm.status_of(c);
        let _ = writeln!(
            attention,
            "mdm_abm_needs_attention{{connection=\"{}\",state=\"{}\"}} {}",
            c.name,
            status.state.as_str(),
            u8::from(status.state.needs_attention())
        );
        if let Some(t) = &c.token {
            let _ = writeln!(
                expiry,
                "mdm_abm_token_expiry_seconds{{connection=\"{}\"}} {}",
                c.name,
                (t.expires_at.0 - now.0) / 1000
            );
        }
        if let Ok(n) = abm.store().abm_device_count(&c.name) {
            let _ = writeln!(devices, "mdm_abm_devices{{connection=\"{}\"}} {n}", c.name);
        }
        if let Some(run) = &c.sync.last_run {
            let _ = writeln!(
                sync_ok,
                "mdm_abm_last_sync_ok{{connection=\"{}\"}} {}",
                c.name,
                u8::from(run.error.is_none())
            );
        }
    }
    format!(
        "# HELP mdm_abm_needs_attention 1 when an ABM connection's token state needs an admin (label state).\n# TYPE mdm_abm_needs_attention gauge\n{attention}\
         # HELP mdm_abm_token_expiry_seconds Seconds until the ABM server token expires.\n# TYPE mdm_abm_token_expiry_seconds gauge\n{expiry}\
         # HELP mdm_abm_devices Devices ABM lists for the connection.\n# TYPE mdm_abm_devices gauge\n{devices}\
         # HELP mdm_abm_last_sync_ok 1 when the last sync succeeded.\n# TYPE mdm_abm_last_sync_ok gauge\n{sync_ok}"
    )
}
