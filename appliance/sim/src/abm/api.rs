//! The Apple-facing API: `/session` and the device assignment endpoints, with Apple's
//! status codes, error codes and error body shapes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT,
};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::cursor::{Cursor, CursorKind};
use super::oauth;
use super::profile;
use super::server::Shared;
use super::state::{
    random_hex, Page, Session, State, DEFAULT_LIMIT, MAX_DEVICES_PER_REQUEST, MAX_LIMIT,
};
use super::types::{rfc3339, AbmDevice, Endpoint, Fault, OpType};
use super::{AUTH_SESSION_HEADER, CURSOR_LIFETIME, PROTOCOL_VERSION_HEADER};

pub(crate) type HttpResponse = Response<Full<Bytes>>;

/// An error answer decided while reading a request, boxed to keep `Result`s small.
type Rejected = Box<HttpResponse>;

const JSON: &str = "application/json;charset=UTF8";
const TEXT: &str = "text/plain;charset=UTF8";

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON success body.
pub(crate) fn json_ok(body: Vec<u8>) -> HttpResponse {
    respond(StatusCode::OK, JSON, body)
}

/// An error as a bare word (`EXHAUSTED_CURSOR`): Apple's cursor errors and errors from
/// its front end (unknown path, wrong method, unavailable).
pub(crate) fn bare(status: StatusCode, code: &str) -> HttpResponse {
    respond(status, TEXT, code.to_owned())
}

/// An error as a JSON string (`"T_C_NOT_SIGNED"`): Apple's authorisation errors.
pub(crate) fn quoted(status: StatusCode, code: &str) -> HttpResponse {
    respond(status, JSON, format!("\"{code}\""))
}

/// An error as a JSON object (`{"code": ..., "message": ...}`): request validation.
pub(crate) fn object(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    let body = json!({ "code": code, "message": message }).to_string();
    respond(status, JSON, body)
}

fn internal(message: &str) -> HttpResponse {
    object(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", message)
}

pub(crate) fn fault_response(fault: Fault) -> HttpResponse {
    match fault {
        Fault::TooManyRequests { retry_after } => {
            let mut response = object(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_REQUESTS",
                "Too many requests; retry after the time in Retry-After.",
            );
            let secs = retry_after
                .as_secs()
                .max(u64::from(retry_after.subsec_nanos() > 0));
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
            response
        }
        Fault::ServiceUnavailable => bare(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
    }
}

/// One device as the API shows it.
#[derive(Serialize)]
pub(crate) struct DeviceOut<'a> {
    serial_number: &'a str,
    model: &'a str,
    description: &'a str,
    color: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    asset_tag: Option<&'a str>,
    os: &'a str,
    device_family: &'a str,
    profile_status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile_uuid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile_assign_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile_push_time: Option<String>,
    device_assigned_date: String,
    device_assigned_by: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    op_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    op_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_status: Option<&'static str>,
}

/// Formats dates for a page of devices, remembering the last second each field
/// formatted: devices added or assigned together share their dates, and formatting
/// dominates the cost of a 1000-device page otherwise.
#[derive(Default)]
pub(crate) struct DateCache {
    fields: [Option<(SystemTime, String)>; 4],
}

impl DateCache {
    fn format(&mut self, field: usize, t: SystemTime) -> String {
        match &self.fields[field] {
            Some((cached, text)) if *cached == t => text.clone(),
            _ => {
                let text = rfc3339(t);
                self.fields[field] = Some((t, text.clone()));
                text
            }
        }
    }
}

impl<'a> DeviceOut<'a> {
    pub(crate) fn new(
        d: &'a AbmDevice,
        op: Option<(OpType, SystemTime)>,
        dates: &mut DateCache,
    ) -> Self {
        Self {
            serial_number: &d.serial_number,
            model: &d.model,
            description: &d.description,
            color: &d.color,
            asset_tag: d.asset_tag.as_deref(),
            os: &d.os,
            device_family: &d.device_family,
            profile_status: d.profile_status.as_str(),
            profile_uuid: d.profile_uuid.as_deref(),
            profile_assign_time: d.profile_assign_time.map(|t| dates.format(0, t)),
            profile_push_time: d.profile_push_time.map(|t| dates.format(1, t)),
            device_assigned_date: dates.format(2, d.device_assigned_date),
            device_assigned_by: &d.device_assigned_by,
            op_type: op.map(|(o, _)| o.as_str()),
            op_date: op.map(|(_, t)| dates.format(3, t)),
            response_status: None,
        }
    }
}

#[derive(Serialize)]
struct DevicePage<'a> {
    cursor: String,
    devices: Vec<DeviceOut<'a>>,
    fetched_until: String,
    more_to_follow: bool,
}

fn page_response(cursor: String, page: &Page, fetched_until: SystemTime) -> HttpResponse {
    let mut dates = DateCache::default();
    let body = DevicePage {
        cursor,
        devices: page
            .devices
            .iter()
            .map(|(d, op)| DeviceOut::new(d, *op, &mut dates))
            .collect(),
        fetched_until: rfc3339(fetched_until),
        more_to_follow: page.more_to_follow,
    };
    match serde_json::to_vec(&body) {
        Ok(bytes) => json_ok(bytes),
        Err(_) => internal("the page could not be serialised"),
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn header(headers: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The protocol version the client speaks; without the header, version 1.
pub(crate) fn protocol_version(headers: &HeaderMap) -> u32 {
    header(headers, PROTOCOL_VERSION_HEADER)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1)
}

/// Library defaults that identify no product: ABM wants to know which MDM server calls.
const LIBRARY_AGENTS: &[&str] = &[
    "hyper",
    "reqwest",
    "go-http-client",
    "curl",
    "wget",
    "python-requests",
    "python-urllib",
    "okhttp",
    "java",
    "axios",
    "node-fetch",
    "libwww-perl",
    "apache-httpclient",
    "ureq",
    "isahc",
    "surf",
];

/// Apple's User-Agent rule: `USER_AGENT_MISSING` when absent or empty,
/// `USER_AGENT_INVALID` when it is not text or is nothing but an HTTP library's default.
pub(crate) fn user_agent_problem(headers: &HeaderMap) -> Option<&'static str> {
    let Some(value) = headers.get(USER_AGENT) else {
        return Some("USER_AGENT_MISSING");
    };
    let Ok(value) = value.to_str() else {
        return Some("USER_AGENT_INVALID");
    };
    let value = value.trim();
    if value.is_empty() {
        return Some("USER_AGENT_MISSING");
    }
    let single_token = !value.contains(char::is_whitespace);
    let product = value
        .split('/')
        .next()
        .unwrap_or(value)
        .to_ascii_lowercase();
    if single_token && LIBRARY_AGENTS.contains(&product.as_str()) {
        return Some("USER_AGENT_INVALID");
    }
    None
}

/// Whether a request body is declared as JSON (`application/json`, any parameters).
fn is_json(headers: &HeaderMap) -> bool {
    header(headers, CONTENT_TYPE).is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    })
}

/// Handles `GET /session`: verifies the OAuth 1.0a signature and issues a session token.
pub(crate) fn session(shared: &Shared, parts: &Parts) -> HttpResponse {
    let unauthorized = || quoted(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let bad_request = |why: &str| {
        tracing::debug!("ABM simulator /session: {why}");
        quoted(StatusCode::BAD_REQUEST, "BAD_REQUEST")
    };
    let Some(value) = header(&parts.headers, AUTHORIZATION) else {
        return unauthorized();
    };
    let parsed = match oauth::parse_authorization(value) {
        Ok(p) => p,
        Err(why) => return bad_request(&why),
    };
    for required in [
        "oauth_consumer_key",
        "oauth_token",
        "oauth_signature_method",
        "oauth_signature",
        "oauth_timestamp",
        "oauth_nonce",
    ] {
        if parsed.get(required).is_none() {
            return bad_request(&format!("{required} is missing"));
        }
    }
    if parsed.get("oauth_signature_method") != Some("HMAC-SHA1") {
        return bad_request("only HMAC-SHA1 signatures are supported");
    }
    if parsed.get("oauth_version").is_some_and(|v| v != "1.0") {
        return bad_request("oauth_version must be 1.0");
    }
    let Ok(timestamp) = parsed.get("oauth_timestamp").unwrap_or("").parse::<i64>() else {
        return bad_request("oauth_timestamp is not a number");
    };
    if parsed.realm.as_deref() != Some(oauth::REALM) {
        return unauthorized();
    }
    // The timestamp window follows the real clock: Apple's servers do not know about
    // the simulated one, and a client's clock skew is what this check is about.
    let real_now = i64::try_from(unix_secs(SystemTime::now())).unwrap_or(i64::MAX);
    let window = i64::try_from(shared.settings.oauth_window.as_secs()).unwrap_or(i64::MAX);
    if (timestamp - real_now).abs() > window {
        return unauthorized();
    }
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| header(&parts.headers, HOST).map(str::to_owned))
        .unwrap_or_default();
    let mut params = parsed.params.clone();
    params.extend(oauth::query_pairs(parts.uri.query().unwrap_or("")));
    let base = oauth::signature_base_string(
        parts.method.as_str(),
        &oauth::base_uri(&authority, parts.uri.path()),
        &params,
    );
    let consumer_key = parsed.get("oauth_consumer_key").unwrap_or("");
    let token = parsed.get("oauth_token").unwrap_or("");
    let nonce = parsed.get("oauth_nonce").unwrap_or("");
    let signature = parsed.get("oauth_signature").unwrap_or("");

    let mut state = shared.state();
    let now = state.now();
    state.settle(now);
    let Some(org) = state
        .orgs
        .iter()
        .position(|o| o.consumer_key == consumer_key)
    else {
        return unauthorized();
    };
    let Some(&server) = state.tokens.get(token) else {
        return unauthorized();
    };
    let s = &state.servers[server];
    if s.org != org || s.revoked || s.token_expiry <= now {
        return unauthorized();
    }
    if !oauth::verify_signature(
        &base,
        &state.orgs[org].consumer_secret,
        &s.access_secret,
        signature,
    ) {
        return unauthorized();
    }
    let access_denied = s.access_denied;
    state
        .nonces
        .retain(|_, seen| (*seen - real_now).abs() <= window);
    let nonce_key = format!("{consumer_key}\0{token}\0{nonce}");
    if state.nonces.insert(nonce_key, timestamp).is_some() {
        return unauthorized();
    }
    if access_denied {
        return quoted(StatusCode::FORBIDDEN, "ACCESS_DENIED");
    }
    state.sessions.retain(|_, s| s.expires > now);
    let Ok(session_token) = new_session(&mut state, server, now, shared.settings.session_lifetime)
    else {
        return internal("no session token could be minted");
    };
    state.counters.sessions_issued += 1;
    let body = json!({ "auth_session_token": session_token }).to_string();
    let mut response = json_ok(body.into_bytes());
    if let Ok(v) = HeaderValue::from_str(&session_token) {
        response.headers_mut().insert(AUTH_SESSION_HEADER, v);
    }
    response
}

fn new_session(
    state: &mut State,
    server: usize,
    now: SystemTime,
    lifetime: Duration,
) -> Result<String, super::AbmSimError> {
    let token = random_hex(48)?;
    state.sessions.insert(
        token.clone(),
        Session {
            server,
            expires: now + lifetime,
            calls: 0,
            grace_left: None,
            forbidden: false,
        },
    );
    Ok(token)
}

/// Checks the session of an authenticated call and counts the call; rotates the session
/// when its call budget is spent. Returns the server and the replacement token, or the
/// error answer.
fn check_session(
    shared: &Shared,
    state: &mut State,
    token: &str,
    now: SystemTime,
) -> Result<(usize, Option<String>), Rejected> {
    let unauthorized = || quoted(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let Some(session) = state.sessions.get_mut(token) else {
        return Err(Box::new(unauthorized()));
    };
    if session.expires <= now {
        state.sessions.remove(token);
        return Err(Box::new(unauthorized()));
    }
    if session.forbidden {
        state.sessions.remove(token);
        return Err(Box::new(quoted(StatusCode::FORBIDDEN, "FORBIDDEN")));
    }
    match session.grace_left {
        Some(0) => {
            state.sessions.remove(token);
            return Err(Box::new(unauthorized()));
        }
        Some(n) => session.grace_left = Some(n - 1),
        None => {}
    }
    session.calls += 1;
    let server = session.server;
    let due = shared
        .settings
        .rotate_after
        .is_some_and(|n| n > 0 && session.grace_left.is_none() && session.calls % n == 0);
    if !due {
        return Ok((server, None));
    }
    session.grace_left = Some(shared.settings.rotation_grace_calls);
    let replacement = new_session(state, server, now, shared.settings.session_lifetime)
        .map_err(|_| Box::new(internal("no session token could be minted")))?;
    state.counters.sessions_rotated += 1;
    Ok((server, Some(replacement)))
}

/// Handles every endpoint but `/session`.
pub(crate) fn authenticated(
    shared: &Shared,
    endpoint: Endpoint,
    parts: &Parts,
    body: &[u8],
) -> HttpResponse {
    let Some(token) = header(&parts.headers, AUTH_SESSION_HEADER) else {
        return quoted(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    };
    let mut state = shared.state();
    let now = state.now();
    state.settle(now);
    let (server, rotated) = match check_session(shared, &mut state, token, now) {
        Ok(r) => r,
        Err(response) => return *response,
    };
    let mut response = dispatch(shared, &mut state, endpoint, server, parts, body, now);
    drop(state);
    if let Some(v) = rotated.and_then(|t| HeaderValue::from_str(&t).ok()) {
        response.headers_mut().insert(AUTH_SESSION_HEADER, v);
    }
    response
}

fn dispatch(
    shared: &Shared,
    state: &mut State,
    endpoint: Endpoint,
    server: usize,
    parts: &Parts,
    body: &[u8],
    now: SystemTime,
) -> HttpResponse {
    let s = &state.servers[server];
    if s.revoked {
        return quoted(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    if s.access_denied {
        return quoted(StatusCode::FORBIDDEN, "ACCESS_DENIED");
    }
    if !state.orgs[s.org].terms_signed {
        return quoted(StatusCode::FORBIDDEN, "T_C_NOT_SIGNED");
    }
    if let Some(code) = user_agent_problem(&parts.headers) {
        let message = if code == "USER_AGENT_MISSING" {
            "The User-Agent header is missing or has no assigned value."
        } else {
            "The User-Agent header is invalid: name the MDM product."
        };
        return object(StatusCode::BAD_REQUEST, code, message);
    }
    if !body.is_empty() && !is_json(&parts.headers) {
        return object(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "Request bodies must be sent as Content-Type: application/json.",
        );
    }
    let json = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => map,
            _ => {
                return object(
                    StatusCode::BAD_REQUEST,
                    "MALFORMED_REQUEST_BODY",
                    "The request body is not a JSON object.",
                )
            }
        }
    };
    let protocol = protocol_version(&parts.headers);
    match endpoint {
        Endpoint::Account => account(state, server),
        Endpoint::FetchDevices => fetch(shared, state, server, &json, now),
        Endpoint::SyncDevices => sync(shared, state, server, &json, now),
        Endpoint::DeviceDetails => details(state, server, &json),
        Endpoint::DefineProfile => define(state, server, json, protocol),
        Endpoint::GetProfile => get_profile(state, server, parts),
        Endpoint::AssignProfile => assign(state, server, &json, protocol),
        Endpoint::RemoveProfile => serials_op(state, server, &json, State::remove_profile),
        Endpoint::Disown => serials_op(state, server, &json, State::disown),
        // Routed to `session` before authentication.
        Endpoint::Session => internal("/session is not an authenticated endpoint"),
    }
}

fn account(state: &State, server: usize) -> HttpResponse {
    let s = &state.servers[server];
    let org = &state.orgs[s.org];
    let limits = json!({ "default": DEFAULT_LIMIT, "maximum": MAX_LIMIT });
    let url = |uri: &str, methods: &[&str]| json!({ "uri": uri, "http_method": methods, "limit": limits });
    let body = json!({
        "server_name": s.name,
        "server_uuid": s.uuid,
        "admin_id": s.admin_id,
        "org_name": org.name,
        "org_email": org.email,
        "org_phone": org.phone,
        "org_address": org.address,
        "org_id": org.org_id,
        "org_id_hash": hex::encode(crate::keys::DigestAlgorithm::Sha256.digest(org.org_id.as_bytes())),
        "org_type": "org",
        "org_version": "v2",
        "urls": [
            url("/account", &["GET"]),
            url("/server/devices", &["POST"]),
            url("/devices/sync", &["POST"]),
            url("/devices", &["POST"]),
            url("/profile", &["GET", "POST"]),
            url("/profile/devices", &["POST", "PUT", "DELETE"]),
            url("/devices/disown", &["POST"]),
        ],
    });
    json_ok(body.to_string().into_bytes())
}

fn malformed(message: &str) -> HttpResponse {
    object(StatusCode::BAD_REQUEST, "MALFORMED_REQUEST_BODY", message)
}

/// `limit` as Apple reads it: default 100, at most 1000 (larger values are clamped).
fn read_limit(json: &Map<String, Value>) -> Result<usize, Rejected> {
    match json.get("limit") {
        None | Some(Value::Null) => Ok(DEFAULT_LIMIT),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 1 => Ok(usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT)),
            Some(_) => Ok(DEFAULT_LIMIT),
            None => Err(Box::new(malformed("limit must be an integer"))),
        },
    }
}

fn read_cursor(json: &Map<String, Value>) -> Result<Option<&str>, Rejected> {
    match json.get("cursor") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Box::new(malformed("cursor must be a string"))),
    }
}

fn fetch(
    shared: &Shared,
    state: &State,
    server: usize,
    json: &Map<String, Value>,
    now: SystemTime,
) -> HttpResponse {
    let limit = match read_limit(json) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let previous = match read_cursor(json) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let (seq, after) = match previous {
        None => (state.servers[server].next_seq(), None),
        Some(text) => {
            let Some(cursor) = Cursor::decode(text, &shared.cursor_key)
                .filter(|c| usize::try_from(c.server).ok() == Some(server))
            else {
                return bare(StatusCode::BAD_REQUEST, "INVALID_CURSOR");
            };
            if cursor.kind == CursorKind::Sync || cursor.done {
                return bare(StatusCode::BAD_REQUEST, "EXHAUSTED_CURSOR");
            }
            (cursor.seq, cursor.last_serial)
        }
    };
    let page = state.fetch_page(server, after.as_deref(), limit, now);
    let last_serial = page
        .devices
        .last()
        .map(|(d, _)| d.serial_number.clone())
        .or(after);
    let cursor = Cursor {
        kind: CursorKind::Fetch,
        server: u32::try_from(server).unwrap_or(u32::MAX),
        created: unix_secs(now),
        seq,
        last_serial,
        done: !page.more_to_follow,
    };
    page_response(cursor.encode(&shared.cursor_key), &page, now)
}

fn sync(
    shared: &Shared,
    state: &State,
    server: usize,
    json: &Map<String, Value>,
    now: SystemTime,
) -> HttpResponse {
    let limit = match read_limit(json) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let text = match read_cursor(json) {
        Ok(Some(t)) => t,
        Ok(None) => return bare(StatusCode::BAD_REQUEST, "CURSOR_REQUIRED"),
        Err(r) => return *r,
    };
    let Some(cursor) = Cursor::decode(text, &shared.cursor_key)
        .filter(|c| usize::try_from(c.server).ok() == Some(server))
    else {
        return bare(StatusCode::BAD_REQUEST, "INVALID_CURSOR");
    };
    if unix_secs(now).saturating_sub(cursor.created) > CURSOR_LIFETIME.as_secs() {
        return bare(StatusCode::BAD_REQUEST, "EXPIRED_CURSOR");
    }
    let (page, position) = state.sync_page(server, cursor.seq, limit, now);
    let fetched_until = if page.more_to_follow {
        page.devices
            .last()
            .and_then(|(_, op)| op.map(|(_, t)| t))
            .unwrap_or(now)
    } else {
        now
    };
    let next = Cursor {
        kind: CursorKind::Sync,
        server: cursor.server,
        created: unix_secs(now),
        seq: position,
        last_serial: None,
        done: false,
    };
    page_response(next.encode(&shared.cursor_key), &page, fetched_until)
}

/// The `devices` array of a request: `Ok(None)` when absent or empty.
fn read_serials(json: &Map<String, Value>) -> Result<Option<Vec<String>>, Rejected> {
    match json.get("devices") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => {
            let serials = items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| Box::new(malformed("devices must be an array of serial numbers")))?;
            Ok((!serials.is_empty()).then_some(serials))
        }
        Some(_) => Err(Box::new(malformed(
            "devices must be an array of serial numbers",
        ))),
    }
}

fn device_id_required() -> HttpResponse {
    object(
        StatusCode::BAD_REQUEST,
        "DEVICE_ID_REQUIRED",
        "The request did not contain any device IDs.",
    )
}

fn too_many_devices() -> HttpResponse {
    object(
        StatusCode::BAD_REQUEST,
        "DEVICE_LIMIT_EXCEEDED",
        "Send at most 1000 serial numbers per request.",
    )
}

fn details(state: &State, server: usize, json: &Map<String, Value>) -> HttpResponse {
    let serials = match read_serials(json) {
        Ok(Some(s)) => s,
        Ok(None) => return device_id_required(),
        Err(r) => return *r,
    };
    let mut out = Map::new();
    let mut dates = DateCache::default();
    for (serial, device) in state.device_details(server, &serials) {
        let value = match device {
            Some(d) => {
                let mut view = DeviceOut::new(&d, None, &mut dates);
                view.response_status = Some("SUCCESS");
                serde_json::to_value(view).unwrap_or(Value::Null)
            }
            None => json!({ "response_status": "NOT_ACCESSIBLE" }),
        };
        out.insert(serial, value);
    }
    json_ok(json!({ "devices": out }).to_string().into_bytes())
}

fn define(
    state: &mut State,
    server: usize,
    json: Map<String, Value>,
    protocol: u32,
) -> HttpResponse {
    if let Err(rejection) = profile::validate(&json) {
        return object(StatusCode::BAD_REQUEST, rejection.code, &rejection.message);
    }
    let serials = match read_serials(&json) {
        Ok(s) => s.unwrap_or_default(),
        Err(r) => return *r,
    };
    state.largest_batch(serials.len());
    if serials.len() > MAX_DEVICES_PER_REQUEST {
        return too_many_devices();
    }
    let Ok(uuid) = state.define_profile(server, json) else {
        return internal("no profile UUID could be minted");
    };
    let result = state.assign(server, &uuid, &serials, protocol);
    let body = json!({ "profile_uuid": uuid, "devices": result.devices });
    json_ok(body.to_string().into_bytes())
}

fn get_profile(state: &State, server: usize, parts: &Parts) -> HttpResponse {
    let uuid = oauth::query_pairs(parts.uri.query().unwrap_or(""))
        .into_iter()
        .find(|(n, _)| n == "profile_uuid")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty());
    let Some(uuid) = uuid else {
        return object(
            StatusCode::BAD_REQUEST,
            "PROFILE_UUID_REQUIRED",
            "The request did not contain a profile ID.",
        );
    };
    match state.profile_json(server, &uuid) {
        Some(profile) => json_ok(Value::Object(profile).to_string().into_bytes()),
        None => object(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The profile with the specified UUID could not be found.",
        ),
    }
}

fn assign(
    state: &mut State,
    server: usize,
    json: &Map<String, Value>,
    protocol: u32,
) -> HttpResponse {
    let uuid = match json.get("profile_uuid") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return object(
                StatusCode::BAD_REQUEST,
                "PROFILE_UUID_REQUIRED",
                "The request did not contain a profile ID.",
            )
        }
        Some(_) => return malformed("profile_uuid must be a string"),
    };
    let serials = match read_serials(json) {
        Ok(Some(s)) => s,
        Ok(None) => return device_id_required(),
        Err(r) => return *r,
    };
    state.largest_batch(serials.len());
    if serials.len() > MAX_DEVICES_PER_REQUEST {
        return too_many_devices();
    }
    if !state.servers[server].profiles.contains_key(&uuid) {
        return object(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The profile with the specified UUID could not be found.",
        );
    }
    let result = state.assign(server, &uuid, &serials, protocol);
    let mut body = json!({ "profile_uuid": uuid, "devices": result.devices });
    if let Some(after) = result.retry_after.filter(|_| protocol >= 10) {
        body["retry_after_seconds"] = json!(after.as_secs());
    }
    json_ok(body.to_string().into_bytes())
}

fn serials_op(
    state: &mut State,
    server: usize,
    json: &Map<String, Value>,
    op: fn(&mut State, usize, &[String]) -> Map<String, Value>,
) -> HttpResponse {
    let serials = match read_serials(json) {
        Ok(Some(s)) => s,
        Ok(None) => return device_id_required(),
        Err(r) => return *r,
    };
    if serials.len() > MAX_DEVICES_PER_REQUEST {
        return too_many_devices();
    }
    let devices = op(state, server, &serials);
    json_ok(json!({ "devices": devices }).to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ua(value: Option<&str>) -> Option<&'static str> {
        let mut headers = HeaderMap::new();
        if let Some(v) = value {
            headers.insert(USER_AGENT, HeaderValue::from_str(v).unwrap());
        }
        user_agent_problem(&headers)
    }

    #[test]
    fn user_agent_rules() {
        assert_eq!(ua(None), Some("USER_AGENT_MISSING"));
        assert_eq!(ua(Some("  ")), Some("USER_AGENT_MISSING"));
        assert_eq!(ua(Some("reqwest/0.12.4")), Some("USER_AGENT_INVALID"));
        assert_eq!(ua(Some("Go-http-client/2.0")), Some("USER_AGENT_INVALID"));
        assert_eq!(ua(Some("curl/8.5.0")), Some("USER_AGENT_INVALID"));
        assert_eq!(ua(Some("hyper")), Some("USER_AGENT_INVALID"));
        assert_eq!(ua(Some("mdmd/0.1.0")), None);
        assert_eq!(ua(Some("mdmd/0.1.0 reqwest/0.12")), None);
    }

    #[test]
    fn protocol_version_defaults_to_one() {
        let mut headers = HeaderMap::new();
        assert_eq!(protocol_version(&headers), 1);
        headers.insert(PROTOCOL_VERSION_HEADER, HeaderValue::from_static("10"));
        assert_eq!(protocol_version(&headers), 10);
        headers.insert(PROTOCOL_VERSION_HEADER, HeaderValue::from_static("ten"));
        assert_eq!(protocol_version(&headers), 1);
    }
}
