//! Building responses, and the one place service errors become HTTP statuses.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use mdm_service::{ErrorKind, ServiceError};
use serde::Serialize;
use tracing::{info, warn};

/// The response type every handler returns.
pub type Resp = Response<Full<Bytes>>;

/// The status code for a service error kind.
pub fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden | ErrorKind::SoftwareUpdateRequired => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Gone => StatusCode::GONE,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A response with a body and content type.
pub fn with_body(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// The answer to a HEAD request: the GET answer's status and headers, and the length of its
/// body (RFC 9110, section 9.3.2) without the body itself, which HTTP/2 would otherwise send.
pub fn head_of(resp: Resp) -> Resp {
    use hyper::body::Body as _;
    let (mut parts, body) = resp.into_parts();
    if let Some(len) = body.size_hint().exact() {
        parts
            .headers
            .entry(header::CONTENT_LENGTH)
            .or_insert_with(|| header::HeaderValue::from(len));
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}

/// 200 with an empty body.
pub fn empty() -> Resp {
    Response::new(Full::new(Bytes::new()))
}

/// 200 with JSON.
pub fn json<T: Serialize>(value: &T) -> Resp {
    json_status(StatusCode::OK, value)
}

/// JSON with a status.
pub fn json_status<T: Serialize>(status: StatusCode, value: &T) -> Resp {
    match serde_json::to_vec(value) {
        Ok(body) => with_body(status, "application/json", body),
        Err(e) => plain_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ENCODING_FAILED",
            &e.to_string(),
        ),
    }
}

fn plain_error(status: StatusCode, code: &str, message: &str) -> Resp {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    with_body(status, "application/json", body.to_string())
}

/// An error answer in the admin API's JSON shape: `{"error": {"code", "message"}}`.
pub fn api_error(e: &ServiceError) -> Resp {
    let status = status_for(e.kind);
    log_error(status, e);
    plain_error(status, e.code, &e.message)
}

/// An error answer to a device. Devices only look at the status; the body explains the
/// refusal to whoever reads a capture. The software-update demand has its own JSON body.
pub fn device_error(e: &ServiceError) -> Resp {
    let status = status_for(e.kind);
    log_error(status, e);
    match &e.body {
        Some(body) => with_body(status, "application/json", body.clone()),
        None => with_body(
            status,
            "text/plain; charset=utf-8",
            format!("{}: {}\n", e.code, e.message),
        ),
    }
}

/// A protocol-level error that does not come from the service (routing, body limits).
pub fn simple(status: StatusCode, code: &str, message: &str) -> Resp {
    plain_error(status, code, message)
}

fn log_error(status: StatusCode, e: &ServiceError) {
    if status.is_server_error() {
        warn!(code = e.code, status = status.as_u16(), "{}", e.message);
    } else {
        info!(
            code = e.code,
            status = status.as_u16(),
            "refused: {}",
            e.message
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Body as _;

    /// Whatever the protocol, the HEAD answer carries no body (HTTP/2 would send one as DATA
    /// frames) but says how long the GET answer's is, and keeps its other headers.
    #[test]
    fn a_head_answer_has_the_length_and_no_body() {
        let get = with_body(StatusCode::OK, "application/json", "{\"items\":[]}");
        let head = head_of(get);
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(head.headers()[header::CONTENT_LENGTH], "12");
        assert_eq!(head.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(head.body().size_hint().exact(), Some(0));

        // A length the handler set itself is kept.
        let mut get = with_body(StatusCode::OK, "text/plain", "ok\n");
        get.headers_mut()
            .insert(header::CONTENT_LENGTH, header::HeaderValue::from(3u64));
        assert_eq!(head_of(get).headers()[header::CONTENT_LENGTH], "3");
    }
}
