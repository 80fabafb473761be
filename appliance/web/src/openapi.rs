//! The admin API's OpenAPI document, served at `/api/v1/openapi.json`.

use std::sync::OnceLock;

use http::header::{self, HeaderValue};
use http::{Method, StatusCode};

use crate::respond::{self, Resp};

/// Where the document is served.
pub const PATH: &str = "/api/v1/openapi.json";

/// The checked-in document, byte for byte.
pub const DOCUMENT: &str = include_str!("../../../docs/reference/openapi.json");

/// The document as an HTTP answer.
pub fn serve() -> Resp {
    respond::with_body(StatusCode::OK, "application/json", DOCUMENT)
}

/// One documented path under `/api/v1`: its segments (`None` for a `{parameter}`) and the
/// methods the document gives it.
struct Route {
    segments: Vec<Option<String>>,
    methods: Vec<Method>,
}

/// The document's paths, read once. The document is the route table's contract (the test
/// suite checks that it and the routers list the same routes), so it can say which methods a
/// path has.
fn routes() -> &'static [Route] {
    static ROUTES: OnceLock<Vec<Route>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap_or_default();
        let Some(paths) = doc.get("paths").and_then(serde_json::Value::as_object) else {
            return Vec::new();
        };
        paths
            .iter()
            .filter_map(|(path, item)| {
                let rest = path.strip_prefix("/api/v1/")?;
                let segments = rest
                    .split('/')
                    .map(|s| {
                        let param = s.starts_with('{') && s.ends_with('}');
                        (!param).then(|| s.to_owned())
                    })
                    .collect();
                let methods = item
                    .as_object()?
                    .keys()
                    .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                    .filter(|m| {
                        [
                            Method::GET,
                            Method::POST,
                            Method::PUT,
                            Method::PATCH,
                            Method::DELETE,
                        ]
                        .contains(m)
                    })
                    .collect();
                Some(Route { segments, methods })
            })
            .collect()
    })
}

/// The methods documented for an API path (given as its segments after `/api/v1`), or `None`
/// when the document has no such path. A path that fits several templates takes the most
/// literal one (`preenroll/delete` before `preenroll/{serial}`).
pub fn allowed_methods(segs: &[&str]) -> Option<Vec<Method>> {
    let mut best: Option<(usize, Vec<Method>)> = None;
    for route in routes() {
        let matches = route.segments.len() == segs.len()
            && route
                .segments
                .iter()
                .zip(segs)
                .all(|(want, got)| want.as_deref().is_none_or(|w| w == *got));
        if !matches {
            continue;
        }
        let literal = route.segments.iter().filter(|s| s.is_some()).count();
        match &mut best {
            Some((n, methods)) if *n == literal => {
                for m in &route.methods {
                    if !methods.contains(m) {
                        methods.push(m.clone());
                    }
                }
            }
            Some((n, _)) if *n > literal => {}
            _ => best = Some((literal, route.methods.clone())),
        }
    }
    best.map(|(_, methods)| methods)
}

/// `405 METHOD_NOT_ALLOWED` with an `Allow` header, for a documented path asked with a method
/// it does not have; `None` when the method is fine or the path is not documented (the routers
/// answer those).
pub fn method_not_allowed(method: &Method, segs: &[&str]) -> Option<Resp> {
    let mut allowed = allowed_methods(segs)?;
    if allowed.is_empty() || allowed.contains(method) {
        return None;
    }
    // HEAD is answered wherever GET is (see `routes`).
    if allowed.contains(&Method::GET) {
        allowed.push(Method::HEAD);
    }
    let list = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut resp = respond::simple(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        &format!("this endpoint answers {list}, not {method}"),
    );
    if let Ok(v) = HeaderValue::from_str(&list) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_paths_give_their_methods() {
        let methods = allowed_methods(&["commands", "ABC"]).expect("documented");
        assert!(methods.contains(&Method::GET));
        assert!(!methods.contains(&Method::DELETE));
        assert_eq!(allowed_methods(&["no-such-thing"]), None);
        assert_eq!(allowed_methods(&["commands", "ABC", "extra", "more"]), None);
        // A literal segment wins over a parameter.
        assert_eq!(
            allowed_methods(&["preenroll", "delete"]),
            Some(vec![Method::POST])
        );

        let resp = method_not_allowed(&Method::DELETE, &["commands", "ABC"]).expect("405");
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        let allow = resp.headers()[header::ALLOW].to_str().unwrap().to_owned();
        assert!(allow.split(", ").any(|m| m == "GET"), "{allow}");
        assert!(method_not_allowed(&Method::GET, &["commands", "ABC"]).is_none());
        assert!(method_not_allowed(&Method::GET, &["no-such-thing"]).is_none());
    }
}
