//! The admin API's OpenAPI document, served at `/api/v1/openapi.json`.

use http::StatusCode;

use crate::respond::{self, Resp};

/// Where the document is served.
pub const PATH: &str = "/api/v1/openapi.json";

/// The checked-in document, byte for byte.
pub const DOCUMENT: &str = include_str!("../../../docs/reference/openapi.json");

/// The document as an HTTP answer.
pub fn serve() -> Resp {
    respond::with_body(StatusCode::OK, "application/json", DOCUMENT)
}
