//! The JSON control API under `/_sim/`, for tests and benchmarks that drive the
//! simulator from another process. The routes are listed in the module documentation
//! of [`super`].

use std::time::Duration;

use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use super::api::HttpResponse;
use super::error::AbmSimError;
use super::server::{read_body, Shared};
use super::token::TokenOptions;
use super::types::{rfc3339, AssignOutcome, DeviceChange, Endpoint, Fault, ServerId, ServerSpec};
use crate::cms::ContentCipher;

/// Largest control request body (a PEM certificate is a few kilobytes).
const MAX_CONTROL_BODY: usize = 1024 * 1024;

type Failure = (StatusCode, String);

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_reply(status: StatusCode, value: &Value) -> HttpResponse {
    reply(status, "application/json", value.to_string().into_bytes())
}

fn failure(status: StatusCode, message: impl Into<String>) -> Failure {
    (status, message.into())
}

fn from_sim_error(e: AbmSimError) -> Failure {
    let status = match e {
        AbmSimError::UnknownServer(_) | AbmSimError::UnknownDevice(_) => StatusCode::NOT_FOUND,
        AbmSimError::Recipient(_) | AbmSimError::TokenFormat(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, e.to_string())
}

/// Handles one `/_sim/...` request.
pub(crate) async fn handle(shared: &Shared, req: Request<Incoming>) -> HttpResponse {
    let Some(expected) = shared.control_token.as_deref() else {
        return json_reply(
            StatusCode::NOT_FOUND,
            &json!({ "error": "the control API is disabled" }),
        );
    };
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_bytes(), expected.as_bytes())
        .is_err()
    {
        return json_reply(
            StatusCode::UNAUTHORIZED,
            &json!({ "error": "send the control token as Authorization: Bearer <token>" }),
        );
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let body = match read_body(req.into_body(), MAX_CONTROL_BODY).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return json_reply(
                    StatusCode::BAD_REQUEST,
                    &json!({ "error": format!("the body is not JSON: {e}") }),
                )
            }
        }
    };
    let segments: Vec<&str> = path
        .trim_start_matches("/_sim")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match route(shared, &method, &segments, &body) {
        Ok(response) => response,
        Err((status, message)) => json_reply(status, &json!({ "error": message })),
    }
}

fn u64_field(body: &Value, name: &str) -> Result<u64, Failure> {
    body.get(name).and_then(Value::as_u64).ok_or_else(|| {
        failure(
            StatusCode::BAD_REQUEST,
            format!("{name} must be a non-negative integer"),
        )
    })
}

fn bool_field(body: &Value, name: &str) -> Result<bool, Failure> {
    body.get(name).and_then(Value::as_bool).ok_or_else(|| {
        failure(
            StatusCode::BAD_REQUEST,
            format!("{name} must be true or false"),
        )
    })
}

fn str_field<'a>(body: &'a Value, name: &str) -> Result<&'a str, Failure> {
    body.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| failure(StatusCode::BAD_REQUEST, format!("{name} must be a string")))
}

fn ok() -> Result<HttpResponse, Failure> {
    Ok(json_reply(StatusCode::OK, &json!({ "ok": true })))
}

fn route(
    shared: &Shared,
    method: &Method,
    segments: &[&str],
    body: &Value,
) -> Result<HttpResponse, Failure> {
    let get = method == Method::GET;
    let post = method == Method::POST;
    match segments {
        ["state"] if get => {
            let state = shared.state();
            let servers = serde_json::to_value(state.server_infos()).unwrap_or(Value::Null);
            Ok(json_reply(
                StatusCode::OK,
                &json!({ "now": rfc3339(state.now()), "servers": servers }),
            ))
        }
        ["counters"] if get => {
            let counters = shared.state().counters.clone();
            let requests: Map<String, Value> = Endpoint::ALL
                .iter()
                .map(|e| (e.as_str().to_owned(), json!(counters.count(*e))))
                .collect();
            Ok(json_reply(
                StatusCode::OK,
                &json!({
                    "requests": requests,
                    "largest_assign_batch": counters.largest_assign_batch,
                    "sessions_issued": counters.sessions_issued,
                    "sessions_rotated": counters.sessions_rotated,
                }),
            ))
        }
        ["requests"] if get => {
            let records: Vec<Value> = shared
                .state()
                .requests()
                .into_iter()
                .map(|r| {
                    json!({
                        "method": r.method,
                        "path": r.path,
                        "status": r.status,
                        "endpoint": r.endpoint.map(Endpoint::as_str),
                    })
                })
                .collect();
            Ok(json_reply(StatusCode::OK, &Value::Array(records)))
        }
        ["clock", "advance"] if post => {
            let seconds = u64_field(body, "seconds")?;
            let mut state = shared.state();
            state.advance(Duration::from_secs(seconds));
            Ok(json_reply(
                StatusCode::OK,
                &json!({ "now": rfc3339(state.now()) }),
            ))
        }
        ["delay"] if post => {
            shared.state().delay = Duration::from_millis(u64_field(body, "millis")?);
            ok()
        }
        ["faults"] if post => {
            let count = usize::try_from(u64_field(body, "count")?).unwrap_or(usize::MAX);
            let fault = match str_field(body, "fault")? {
                "too_many_requests" => Fault::TooManyRequests {
                    retry_after: Duration::from_secs(
                        body.get("retry_after_seconds")
                            .and_then(Value::as_u64)
                            .unwrap_or(60),
                    ),
                },
                "service_unavailable" => Fault::ServiceUnavailable,
                other => {
                    return Err(failure(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "unknown fault {other:?}: use too_many_requests or service_unavailable"
                        ),
                    ))
                }
            };
            let endpoint = match body.get("endpoint").and_then(Value::as_str) {
                None => None,
                Some(name) => Some(Endpoint::from_name(name).ok_or_else(|| {
                    failure(
                        StatusCode::BAD_REQUEST,
                        format!("unknown endpoint {name:?}"),
                    )
                })?),
            };
            shared.state().inject_fault(fault, count, endpoint);
            ok()
        }
        ["faults"] if method == Method::DELETE => {
            shared.state().clear_faults();
            ok()
        }
        ["servers"] if post => {
            let spec = ServerSpec::new(str_field(body, "name")?, str_field(body, "org")?);
            let mut state = shared.state();
            let id = state
                .add_server(&spec, shared.settings.token_lifetime)
                .map_err(from_sim_error)?;
            let info = state.server_infos().into_iter().nth(id.0);
            Ok(json_reply(
                StatusCode::OK,
                &serde_json::to_value(info).unwrap_or(Value::Null),
            ))
        }
        ["servers", server, rest @ ..] => server_route(shared, method, server, rest, body),
        ["devices", serial] if get => {
            let view = shared
                .state()
                .device_view(serial)
                .ok_or_else(|| failure(StatusCode::NOT_FOUND, format!("no device {serial:?}")))?;
            let mut device = serde_json::to_value(super::api::DeviceOut::new(
                &view.device,
                None,
                &mut super::api::DateCache::default(),
            ))
            .unwrap_or(Value::Null);
            device["server"] = json!(view.server.map(|s| s.0));
            device["cooldown_until"] = json!(view.cooldown_until.map(rfc3339));
            Ok(json_reply(StatusCode::OK, &device))
        }
        ["devices", serial, action] if post => device_route(shared, serial, action, body),
        _ => Err(failure(
            StatusCode::NOT_FOUND,
            format!("no control route {method} /_sim/{}", segments.join("/")),
        )),
    }
}

fn server_route(
    shared: &Shared,
    method: &Method,
    server: &str,
    rest: &[&str],
    body: &Value,
) -> Result<HttpResponse, Failure> {
    let id: ServerId = shared.state().find_server(server).map_err(from_sim_error)?;
    let get = method == Method::GET;
    let post = method == Method::POST;
    match rest {
        ["credentials"] if get => {
            let creds = shared.state().credentials(id).map_err(from_sim_error)?;
            Ok(reply(
                StatusCode::OK,
                "application/json",
                creds.to_token_json().into_bytes(),
            ))
        }
        ["devices"] if post => {
            let count = usize::try_from(u64_field(body, "count")?).unwrap_or(usize::MAX);
            let serials = shared
                .state()
                .add_devices(id, count)
                .map_err(from_sim_error)?;
            Ok(json_reply(StatusCode::OK, &json!({ "serials": serials })))
        }
        ["token"] if post => {
            let pem = str_field(body, "certificate_pem")?;
            let cert = crate::x509::certificates_from_pem(pem.as_bytes())
                .ok()
                .and_then(|certs| certs.into_iter().next())
                .ok_or_else(|| {
                    failure(
                        StatusCode::BAD_REQUEST,
                        "certificate_pem holds no certificate",
                    )
                })?;
            let der = der::Encode::to_der(&cert)
                .map_err(|e| failure(StatusCode::BAD_REQUEST, e.to_string()))?;
            let cipher = match body
                .get("cipher")
                .and_then(Value::as_str)
                .unwrap_or("aes256")
            {
                "aes128" => ContentCipher::Aes128Cbc,
                "aes256" => ContentCipher::Aes256Cbc,
                "des-ede3" | "3des" => ContentCipher::DesEde3Cbc,
                other => {
                    return Err(failure(
                        StatusCode::BAD_REQUEST,
                        format!("unknown cipher {other:?}: use aes128, aes256 or des-ede3"),
                    ))
                }
            };
            let options = TokenOptions {
                cipher,
                ber: body.get("ber").and_then(Value::as_bool).unwrap_or(false),
                new_org: body
                    .get("new_org")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            };
            let p7m =
                super::issue_server_token(shared, id, &der, &options).map_err(from_sim_error)?;
            Ok(reply(StatusCode::OK, "application/pkcs7-mime", p7m))
        }
        ["terms"] if post => {
            shared
                .state()
                .set_terms_signed(id, bool_field(body, "signed")?)
                .map_err(from_sim_error)?;
            ok()
        }
        ["access"] if post => {
            shared
                .state()
                .set_access_denied(id, bool_field(body, "denied")?)
                .map_err(from_sim_error)?;
            ok()
        }
        ["revoke"] if post => {
            shared.state().revoke_token(id).map_err(from_sim_error)?;
            ok()
        }
        ["invalidate-sessions"] if post => {
            let n = shared
                .state()
                .invalidate_sessions(id)
                .map_err(from_sim_error)?;
            Ok(json_reply(StatusCode::OK, &json!({ "sessions": n })))
        }
        ["profiles"] if get => {
            let state = shared.state();
            let index = state.server_index(id).map_err(from_sim_error)?;
            let profiles: Map<String, Value> = state
                .server_profiles(index)
                .into_iter()
                .map(|(k, v)| (k, Value::Object(v)))
                .collect();
            Ok(json_reply(StatusCode::OK, &Value::Object(profiles)))
        }
        _ => Err(failure(
            StatusCode::NOT_FOUND,
            format!(
                "no control route {method} /_sim/servers/{server}/{}",
                rest.join("/")
            ),
        )),
    }
}

fn device_route(
    shared: &Shared,
    serial: &str,
    action: &str,
    body: &Value,
) -> Result<HttpResponse, Failure> {
    match action {
        "modify" => {
            let change: DeviceChange = serde_json::from_value(body.clone())
                .map_err(|e| failure(StatusCode::BAD_REQUEST, format!("bad change: {e}")))?;
            shared
                .state()
                .modify_device(serial, &change)
                .map_err(from_sim_error)?;
            ok()
        }
        "delete" => {
            shared
                .state()
                .delete_device(serial)
                .map_err(from_sim_error)?;
            ok()
        }
        "move" => {
            let mut state = shared.state();
            let to = match body.get("server") {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                _ => {
                    return Err(failure(
                        StatusCode::BAD_REQUEST,
                        "server must name an MDM server",
                    ))
                }
            };
            let to = state.find_server(&to).map_err(from_sim_error)?;
            state.move_device(serial, to).map_err(from_sim_error)?;
            ok()
        }
        "cooldown" => {
            let seconds = u64_field(body, "seconds")?;
            let until = shared
                .state()
                .set_cooldown(serial, Duration::from_secs(seconds))
                .map_err(from_sim_error)?;
            Ok(json_reply(
                StatusCode::OK,
                &json!({ "until": rfc3339(until) }),
            ))
        }
        "outcome" => {
            let outcome: AssignOutcome =
                serde_json::from_value(body.get("outcome").cloned().unwrap_or(Value::Null))
                    .map_err(|_| {
                        failure(
                            StatusCode::BAD_REQUEST,
                            "outcome must be FAILED, THROTTLED or NOT_ACCESSIBLE",
                        )
                    })?;
            let times = body.get("times").and_then(Value::as_u64).unwrap_or(1);
            let retry_after = body
                .get("retry_after_seconds")
                .and_then(Value::as_u64)
                .unwrap_or(3600);
            shared.state().script_outcome(
                serial,
                outcome,
                u32::try_from(times).unwrap_or(u32::MAX),
                Duration::from_secs(retry_after),
            );
            ok()
        }
        "activation" => match shared.state().activation(serial) {
            Some(profile) => Ok(json_reply(StatusCode::OK, &profile)),
            None => Err(failure(
                StatusCode::NOT_FOUND,
                format!("device {serial:?} has no profile to fetch"),
            )),
        },
        other => Err(failure(
            StatusCode::NOT_FOUND,
            format!("no device action {other:?}"),
        )),
    }
}
