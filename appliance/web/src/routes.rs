//! Request routing and the device-facing endpoints (see `docs/design/endpoints.md`).
// Handlers return ready responses as their `Err` (`?` on a refusal ends the request). The
// size is that of an HTTP response built once per request; boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use hyper::body::Incoming;
use mdm_service::abm::AbmService;
use mdm_service::accounts::setup::WebEnrollment;
use mdm_service::ports::{AbmConnector, EnrollmentBinding, Store};
use mdm_service::{ConnectionScratch, DeviceReply, DeviceRequest, MdmService};

use crate::respond::{self, device_error, with_body, Resp};
use crate::server::{read_body, BodyError, ConnectionInfo, Handler};
use crate::sign_in;

/// Request size limits, per kind of endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Check-ins and command reports (a Mac's InstalledApplicationList can be megabytes).
    pub device_body: usize,
    /// SCEP messages and MachineInfo.
    pub enrollment_body: usize,
    /// Admin API requests (profiles to install can be large).
    pub api_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            device_body: 8 * 1024 * 1024,
            enrollment_body: 256 * 1024,
            api_body: 8 * 1024 * 1024,
        }
    }
}

/// The appliance's HTTP application: device endpoints, enrollment, and the admin API.
pub struct App<S, C: AbmConnector> {
    pub(crate) service: MdmService<S>,
    pub(crate) abm: AbmService<S, C>,
    pub(crate) limits: Limits,
}

impl<S: Store, C: AbmConnector> App<S, C> {
    /// The application over `service` and `abm`.
    pub fn new(service: MdmService<S>, abm: AbmService<S, C>, limits: Limits) -> Self {
        App {
            service,
            abm,
            limits,
        }
    }
}

struct Scratch<'a>(&'a ConnectionInfo);

impl ConnectionScratch for Scratch<'_> {
    fn not_now(&self, enrollment_id: &str) -> HashSet<String> {
        self.0
            .state
            .lock()
            .map(|s| s.not_now.get(enrollment_id).cloned().unwrap_or_default())
            .unwrap_or_default()
    }
    fn add_not_now(&self, enrollment_id: &str, command_uuid: &str) {
        if let Ok(mut s) = self.0.state.lock() {
            s.not_now
                .entry(enrollment_id.to_string())
                .or_default()
                .insert(command_uuid.to_string());
        }
    }
    fn kept_binding(&self, enrollment_id: &str, version: u64) -> Option<EnrollmentBinding> {
        self.0
            .state
            .lock()
            .ok()
            .and_then(|s| s.kept_binding(enrollment_id, version).cloned())
    }
    fn keep_binding(&self, binding: &EnrollmentBinding, version: u64) {
        if let Ok(mut s) = self.0.state.lock() {
            s.keep_binding(binding, version);
        }
    }
}

/// Parse a query string into (key, value) pairs, percent-decoded.
pub(crate) fn query_pairs(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

pub(crate) fn query_get(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

pub(crate) async fn body_or_error(body: Incoming, max: usize) -> Result<Bytes, Resp> {
    read_body(body, max).await.map_err(|e| match e {
        BodyError::TooLarge { .. } => respond::simple(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            &format!("request bodies here are limited to {max} bytes"),
        ),
        other => respond::simple(
            StatusCode::BAD_REQUEST,
            "BODY_UNREADABLE",
            &other.to_string(),
        ),
    })
}

fn reply(r: mdm_service::ServiceResult<DeviceReply>) -> Resp {
    match r {
        Ok(DeviceReply::Empty) => respond::empty(),
        Ok(DeviceReply::Plist(b)) => with_body(StatusCode::OK, "application/xml; charset=utf-8", b),
        Ok(DeviceReply::Json(b)) => with_body(StatusCode::OK, "application/json", b),
        Err(e) => device_error(&e),
    }
}

fn method_not_allowed() -> Resp {
    respond::simple(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "method not allowed here",
    )
}

impl<S: Store, C: AbmConnector> App<S, C> {
    async fn device(
        &self,
        req: Request<Incoming>,
        conn: &ConnectionInfo,
        checkin_only: bool,
    ) -> Resp {
        if !matches!(*req.method(), Method::PUT | Method::POST) {
            return method_not_allowed();
        }
        let signature = req
            .headers()
            .get("mdm-signature")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match body_or_error(req.into_body(), self.limits.device_body).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let dreq = DeviceRequest {
            body: &body,
            mdm_signature: signature.as_deref(),
            tls_certificate: conn.peer_certificate.as_ref(),
        };
        if checkin_only {
            reply(self.service.checkin(dreq).await)
        } else {
            reply(self.service.connect(dreq, &Scratch(conn)).await)
        }
    }

    async fn scep(&self, req: Request<Incoming>) -> Resp {
        let pairs = query_pairs(&req);
        let op = query_get(&pairs, "operation").unwrap_or_default();
        match (req.method().clone(), op.as_str()) {
            (Method::GET, "GetCACaps") => {
                with_body(StatusCode::OK, "text/plain", self.service.scep_ca_caps())
            }
            (Method::GET, "GetCACert") => match self.service.scep_ca_cert() {
                Ok(der) => with_body(StatusCode::OK, mdm_service::scep::CA_RA_CONTENT_TYPE, der),
                Err(e) => device_error(&e),
            },
            (Method::POST, "PKIOperation") => {
                match body_or_error(req.into_body(), self.limits.enrollment_body).await {
                    Ok(body) => self.pki_operation(&body).await,
                    Err(resp) => resp,
                }
            }
            (Method::GET, "PKIOperation") => {
                let Some(msg) = query_get(&pairs, "message") else {
                    return respond::simple(
                        StatusCode::BAD_REQUEST,
                        "SCEP_MALFORMED",
                        "message parameter missing",
                    );
                };
                match base64::engine::general_purpose::STANDARD.decode(msg.trim()) {
                    Ok(der) if der.len() <= self.limits.enrollment_body => {
                        self.pki_operation(&der).await
                    }
                    Ok(_) => respond::simple(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "BODY_TOO_LARGE",
                        "message too large",
                    ),
                    Err(_) => respond::simple(
                        StatusCode::BAD_REQUEST,
                        "SCEP_MALFORMED",
                        "message is not base64",
                    ),
                }
            }
            (_, "") => respond::simple(
                StatusCode::BAD_REQUEST,
                "SCEP_MALFORMED",
                "operation parameter missing",
            ),
            (_, other) => respond::simple(
                StatusCode::BAD_REQUEST,
                "SCEP_UNSUPPORTED",
                &format!("SCEP operation {other} is not supported with this method"),
            ),
        }
    }

    async fn pki_operation(&self, der: &[u8]) -> Resp {
        match self.service.scep_pki_operation(der).await {
            Ok(rep) => with_body(
                StatusCode::OK,
                mdm_service::scep::PKI_MESSAGE_CONTENT_TYPE,
                rep,
            ),
            Err(e) => device_error(&e),
        }
    }

    async fn ade(&self, req: Request<Incoming>) -> Resp {
        match *req.method() {
            Method::POST => {
                match body_or_error(req.into_body(), self.limits.enrollment_body).await {
                    Ok(body) => profile_reply(self.service.ade_profile(&body).await),
                    Err(resp) => resp,
                }
            }
            Method::GET => {
                let Some(info) = req
                    .headers()
                    .get("x-apple-aspen-deviceinfo")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                else {
                    return respond::simple(
                        StatusCode::BAD_REQUEST,
                        "MACHINEINFO_MISSING",
                        "open this page from the device's Setup Assistant (x-apple-aspen-deviceinfo header missing)",
                    );
                };
                match self.service.ade_web_start(&info).await {
                    Ok(WebEnrollment::Profile(p)) => profile_reply(Ok(p)),
                    Ok(WebEnrollment::SignIn(page)) => sign_in::respond(StatusCode::OK, &page),
                    Err(e) => device_error(&e),
                }
            }
            _ => method_not_allowed(),
        }
    }

    /// The Setup Assistant sign-in form.
    async fn ade_sign_in(&self, req: Request<Incoming>) -> Resp {
        if *req.method() != Method::POST {
            return method_not_allowed();
        }
        let body = match body_or_error(req.into_body(), sign_in::MAX_FORM).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let Some(form) = sign_in::parse_form(&body) else {
            return respond::simple(
                StatusCode::BAD_REQUEST,
                "SIGN_IN_FORM_INVALID",
                "the sign-in form needs session, username and password, each once",
            );
        };
        match self
            .service
            .ade_web_sign_in(&form.session, &form.username, form.password)
            .await
        {
            Ok(profile) => profile_reply(Ok(profile)),
            Err(refusal) => sign_in::refusal(&refusal),
        }
    }
}

fn profile_reply(r: mdm_service::ServiceResult<Vec<u8>>) -> Resp {
    match r {
        Ok(profile) => {
            let mut resp = with_body(
                StatusCode::OK,
                mdm_service::enroll::PROFILE_CONTENT_TYPE,
                profile,
            );
            resp.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                header::HeaderValue::from_static("attachment; filename=\"enroll.mobileconfig\""),
            );
            resp
        }
        Err(e) => device_error(&e),
    }
}

/// Whether a GET of `path` only reads, so that HEAD may be answered as GET without the body.
/// Enrollment links and SCEP are not: a GET there can use up a link or issue a certificate,
/// which a HEAD (sent by link checkers and monitoring) must never do.
fn get_only_reads(path: &str) -> bool {
    matches!(path, "/healthz" | "/ca.pem" | "/ca.crt" | "/metrics") || path.starts_with("/api/")
}

impl<S: Store, C: AbmConnector> Handler for App<S, C> {
    async fn handle(&self, mut req: Request<Incoming>, conn: Arc<ConnectionInfo>) -> Resp {
        let path = req.uri().path().to_string();
        let head = *req.method() == Method::HEAD && get_only_reads(&path);
        if head {
            *req.method_mut() = Method::GET;
        }
        let resp = self.route(req, &conn, &path).await;
        if head {
            respond::head_of(resp)
        } else {
            resp
        }
    }
}

impl<S: Store, C: AbmConnector> App<S, C> {
    async fn route(&self, req: Request<Incoming>, conn: &ConnectionInfo, path: &str) -> Resp {
        match path {
            "/mdm/checkin" => self.device(req, conn, true).await,
            "/mdm/connect" => self.device(req, conn, false).await,
            "/scep" => self.scep(req).await,
            "/mdm/enroll" => self.ade(req).await,
            sign_in::FORM_PATH => self.ade_sign_in(req).await,
            "/healthz" => with_body(StatusCode::OK, "text/plain", "ok\n"),
            "/ca.pem" => with_body(
                StatusCode::OK,
                "application/x-pem-file",
                self.service.authority().ca_pem(),
            ),
            "/ca.crt" => with_body(
                StatusCode::OK,
                "application/x-x509-ca-cert",
                self.service.authority().ca.cert.der().to_vec(),
            ),
            p if p.starts_with("/enroll/") => {
                if *req.method() != Method::GET {
                    return method_not_allowed();
                }
                let token = &p["/enroll/".len()..];
                profile_reply(self.service.link_profile(token).await)
            }
            "/metrics" => self.metrics(req).await,
            p if p.starts_with("/api/") => self.api(req).await,
            _ => respond::simple(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint"),
        }
    }
}
