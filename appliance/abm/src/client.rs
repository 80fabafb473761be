//! [`AbmHttpConnector`] and [`AbmHttpClient`]: the service's ABM ports over HTTPS.
//!
//! Every call retried here, after a throttle, a 5xx, a transport failure or a renewed
//! session, may reach Apple twice. That is safe for the endpoints this client calls: reads
//! (`/account`, fetch and sync pages) have no effect; assigning, removing and disowning act
//! per serial number and give the same per-serial outcome when repeated; defining a profile
//! twice leaves one unused profile definition at Apple, which the caller replaces on the next
//! definition anyway.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use mdm_net::{Endpoint, Proxy, Roots};
use mdm_proto::abm::{
    Account, AssignRequest, AssignResponse, DefineProfileResponse, DeviceDetails, DevicePage,
    DevicePageRequest, Profile, SerialOutcomes, SerialsRequest, ServerToken,
};
use mdm_service::ports::{AbmClient, AbmConnector, AbmEndpoint, AbmError};
use rustls::{ClientConfig, RootCertStore};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::debug;
use zeroize::Zeroizing;

use crate::answer::{classify, parse_retry_after, AppleError, Verdict};
use crate::config::{AbmClientConfig, RetryPolicy};
use crate::oauth;
use crate::retry::Backoff;
use crate::transport::{Outgoing, Reply, SendError, Transport};

/// The session header, sent on every call and possibly renewed in answers.
const X_ADM_AUTH_SESSION: HeaderName = HeaderName::from_static("x-adm-auth-session");
/// Which version of the API's answers we want; 10 brings `retry_after_seconds` in
/// assignment answers.
const X_SERVER_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("x-server-protocol-version");
const PROTOCOL_VERSION: &str = "10";
const JSON: &str = "application/json";
/// The exact spelling Apple's documentation uses.
const JSON_BODY: &str = "application/json;charset=UTF8";

/// Builds [`AbmHttpClient`]s with one configuration (User-Agent, timeout, proxy, retries).
#[derive(Debug)]
pub struct AbmHttpConnector {
    config: AbmClientConfig,
    /// The system bundle, read on first use and kept: every connection using the system
    /// roots shares it.
    system_roots: Mutex<Option<Arc<RootCertStore>>>,
}

impl AbmHttpConnector {
    /// A connector for `config`. Checks nothing yet: a bad proxy or User-Agent is reported
    /// by [`AbmConnector::connect`], where the service shows it on the connection.
    pub fn new(config: AbmClientConfig) -> AbmHttpConnector {
        AbmHttpConnector {
            config,
            system_roots: Mutex::new(None),
        }
    }

    fn roots(&self, endpoint: &AbmEndpoint) -> Result<Arc<RootCertStore>, mdm_net::ConfigError> {
        if let Some(pem) = &endpoint.ca_pem {
            return mdm_net::load_roots(&Roots::Pem(pem.clone()));
        }
        let mut cached = self
            .system_roots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(roots) = cached.as_ref() {
            return Ok(Arc::clone(roots));
        }
        let roots = mdm_net::load_roots(&Roots::System)?;
        *cached = Some(Arc::clone(&roots));
        Ok(roots)
    }
}

fn config_error(message: impl Into<String>) -> AbmError {
    AbmError::Config {
        message: message.into(),
    }
}

impl AbmConnector for AbmHttpConnector {
    type Client = AbmHttpClient;

    fn connect(
        &self,
        endpoint: &AbmEndpoint,
        token: &ServerToken,
    ) -> Result<AbmHttpClient, AbmError> {
        let parsed = Endpoint::parse_with_prefix(&endpoint.base_url)
            .map_err(|e| config_error(e.to_string()))?;
        let proxy = self
            .config
            .proxy
            .as_ref()
            .map(Proxy::parse)
            .transpose()
            .map_err(|e| config_error(e.to_string()))?;
        let roots = self
            .roots(endpoint)
            .map_err(|e| config_error(e.to_string()))?;
        let user_agent = HeaderValue::from_str(self.config.user_agent.trim())
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                config_error(format!(
                    "the User-Agent {:?} cannot be sent: give a product name such as {:?}",
                    self.config.user_agent,
                    crate::DEFAULT_USER_AGENT
                ))
            })?;
        let missing: Vec<&str> = [
            ("consumer_key", &token.consumer_key),
            ("consumer_secret", &token.consumer_secret),
            ("access_token", &token.access_token),
            ("access_secret", &token.access_secret),
        ]
        .into_iter()
        .filter(|(_, v)| v.is_empty())
        .map(|(name, _)| name)
        .collect();
        if !missing.is_empty() {
            return Err(config_error(format!(
                "the server token lacks {}: upload the token again",
                missing.join(", ")
            )));
        }

        // TLS 1.2 and 1.3 only; no client certificate: ABM authenticates with OAuth.
        let mut tls = ClientConfig::builder_with_provider(mdm_net::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(format!("TLS configuration refused: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let transport = Transport::new(parsed, proxy, Arc::new(tls))
            .map_err(|_| config_error("the host cannot be sent in a Host header"))?;
        Ok(AbmHttpClient {
            inner: Arc::new(Inner {
                base_url: endpoint.base_url.clone(),
                transport,
                token: token.clone(),
                user_agent,
                timeout: self.config.timeout,
                retry: self.config.retry,
                session: tokio::sync::Mutex::new(None),
            }),
        })
    }
}

/// One ABM connection's API client. Cheap to clone: clones share the session and the
/// kept-alive connections.
#[derive(Clone)]
pub struct AbmHttpClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AbmHttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbmHttpClient")
            .field("base_url", &self.inner.base_url)
            .field("consumer_key", &self.inner.token.consumer_key)
            .finish_non_exhaustive()
    }
}

struct Inner {
    base_url: String,
    transport: Transport,
    token: ServerToken,
    user_agent: HeaderValue,
    timeout: Duration,
    retry: RetryPolicy,
    /// The session in use. Held across a `/session` call, so concurrent calls that all need
    /// a session wait for one instead of each fetching their own.
    session: tokio::sync::Mutex<Option<Zeroizing<String>>>,
}

#[derive(Deserialize)]
struct SessionAnswer {
    auth_session_token: Option<String>,
}

impl Drop for SessionAnswer {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.auth_session_token.zeroize();
    }
}

/// How one attempt of a call ended.
enum Step {
    Done(Bytes),
    Verdict(Verdict),
}

impl Inner {
    fn endpoint(&self) -> &Endpoint {
        self.transport.endpoint()
    }

    fn headers(&self, has_body: bool) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, self.user_agent.clone());
        headers.insert(ACCEPT, HeaderValue::from_static(JSON));
        headers.insert(
            X_SERVER_PROTOCOL_VERSION,
            HeaderValue::from_static(PROTOCOL_VERSION),
        );
        if has_body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON_BODY));
        }
        headers
    }

    /// One attempt, bounded by the per-request timeout, logged without headers or bodies.
    async fn attempt(
        &self,
        method: &Method,
        path: &str,
        headers: HeaderMap,
        body: &Bytes,
    ) -> Result<Reply, SendError> {
        let request = Outgoing {
            method: method.clone(),
            path: self.endpoint().path(path),
            headers,
            body: body.clone(),
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.transport.send(&request)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout {
                host: self.endpoint().host().to_string(),
                timeout_ms: self.timeout.as_millis(),
            }),
        };
        let duration_ms = started.elapsed().as_millis();
        match &result {
            Ok(reply) => debug!(
                method = %method,
                path,
                status = reply.status.as_u16(),
                duration_ms,
                "ABM call"
            ),
            Err(e) => debug!(method = %method, path, duration_ms, error = %e, "ABM call failed"),
        }
        result
    }

    /// `GET /session`: a new session token, with the call's own retries.
    async fn fetch_session(&self) -> Result<Zeroizing<String>, AbmError> {
        let path = "/session";
        let mut backoff = Backoff::new(self.retry);
        loop {
            let mut headers = self.headers(false);
            // A fresh timestamp and nonce for every attempt: a resent nonce may be refused as
            // a replay.
            let authorization = self.authorization(path)?;
            let mut value = HeaderValue::from_str(&authorization).map_err(|_| {
                config_error("the server token contains characters that cannot be sent")
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);

            let verdict = match self
                .attempt(&Method::GET, path, headers, &Bytes::new())
                .await
            {
                Err(e) => transport_verdict(e),
                Ok(reply) if reply.status.is_success() => {
                    let parsed = serde_json::from_slice::<SessionAnswer>(&reply.body);
                    wipe(reply.body);
                    let answer = parsed.map_err(|e| protocol_error(&Method::GET, path, &e))?;
                    return match answer.auth_session_token.as_deref() {
                        Some(token) if !token.is_empty() => Ok(Zeroizing::new(token.to_string())),
                        _ => Err(AbmError::Protocol {
                            message: "the answer to GET /session has no auth_session_token"
                                .to_string(),
                        }),
                    };
                }
                Ok(reply) => {
                    let status = reply.status.as_u16();
                    let apple = AppleError::parse(&reply.body);
                    match (status, apple.code.as_str()) {
                        (403, "T_C_NOT_SIGNED") => Verdict::Final(AbmError::TermsNotSigned),
                        // The OAuth credentials themselves were refused.
                        (401 | 403, _) => Verdict::Final(AbmError::AccessDenied {
                            detail: format!("{} at /session", apple.describe(status)),
                        }),
                        _ => classify(status, apple, retry_after(&reply.headers)),
                    }
                }
            };
            match verdict {
                Verdict::Final(error) => return Err(error),
                Verdict::Retry { error, retry_after } => backoff.pause(error, retry_after).await?,
            }
        }
    }

    fn authorization(&self, path: &str) -> Result<Zeroizing<String>, AbmError> {
        let endpoint = self.endpoint();
        let base_uri = format!(
            "https://{}{}",
            endpoint.request_authority().to_ascii_lowercase(),
            endpoint.path(path)
        );
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| config_error("the system clock is before 1970"))?
            .as_secs()
            .to_string();
        let mut nonce = [0u8; 16];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| config_error("the system random number generator failed"))?;
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let token = &self.token;
        Ok(oauth::authorization(
            &oauth::Credentials {
                consumer_key: &token.consumer_key,
                consumer_secret: &token.consumer_secret,
                token: &token.access_token,
                token_secret: &token.access_secret,
            },
            &oauth::Request {
                method: "GET",
                base_uri: &base_uri,
                params: &[],
            },
            &oauth::Protocol {
                realm: "ADM",
                timestamp: &timestamp,
                nonce: &nonce,
                version: Some("1.0"),
            },
        ))
    }

    /// The session in use, fetched when there is none.
    async fn session(&self) -> Result<Zeroizing<String>, AbmError> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref() {
            return Ok(session.clone());
        }
        let fresh = self.fetch_session().await?;
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    /// A new session in place of `stale`, unless another call already replaced it.
    async fn renew_session(&self, stale: &str) -> Result<Zeroizing<String>, AbmError> {
        let mut slot = self.session.lock().await;
        if let Some(current) = slot.as_ref().filter(|s| s.as_str() != stale) {
            return Ok(current.clone());
        }
        *slot = None;
        let fresh = self.fetch_session().await?;
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    /// A call with the session: renews it once when Apple refuses it, retries throttling and
    /// transient failures, and returns the body of the successful answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Bytes, AbmError> {
        let has_body = body.is_some();
        let body = body.unwrap_or_default();
        let mut session = self.session().await?;
        let mut renewed = false;
        let mut backoff = Backoff::new(self.retry);
        loop {
            let mut headers = self.headers(has_body);
            let mut value = HeaderValue::from_str(&session).map_err(|_| AbmError::Protocol {
                message: "the session token Apple sent cannot be sent back in a header".to_string(),
            })?;
            value.set_sensitive(true);
            headers.insert(X_ADM_AUTH_SESSION, value);

            let step = match self.attempt(&method, path, headers, &body).await {
                Err(e) => Step::Verdict(transport_verdict(e)),
                Ok(reply) => {
                    if let Some(rotated) = reply
                        .headers
                        .get(&X_ADM_AUTH_SESSION)
                        .and_then(|v| v.to_str().ok())
                        .filter(|v| !v.is_empty() && *v != session.as_str())
                    {
                        let rotated = Zeroizing::new(rotated.to_string());
                        *self.session.lock().await = Some(rotated.clone());
                        session = rotated;
                    }
                    if reply.status.is_success() {
                        Step::Done(reply.body)
                    } else {
                        let status = reply.status.as_u16();
                        let apple = AppleError::parse(&reply.body);
                        // Apple's sign that the session expired or was dropped: get a new one
                        // and send the call again, once.
                        let session_refused =
                            status == 401 || (status == 403 && apple.code == "FORBIDDEN");
                        if session_refused && !renewed {
                            renewed = true;
                            debug!(method = %method, path, status, "ABM refused the session; fetching a new one");
                            session = self.renew_session(&session).await?;
                            continue;
                        }
                        Step::Verdict(classify(status, apple, retry_after(&reply.headers)))
                    }
                }
            };
            match step {
                Step::Done(body) => return Ok(body),
                Step::Verdict(Verdict::Final(error)) => return Err(error),
                Step::Verdict(Verdict::Retry { error, retry_after }) => {
                    backoff.pause(error, retry_after).await?;
                }
            }
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, AbmError> {
        let body = body
            .map(|b| {
                serde_json::to_vec(b)
                    .map(Bytes::from)
                    .map_err(|e| AbmError::Protocol {
                        message: format!("cannot encode the {method} {path} request: {e}"),
                    })
            })
            .transpose()?;
        let answer = self.call(method.clone(), path, body).await?;
        serde_json::from_slice(&answer).map_err(|e| protocol_error(&method, path, &e))
    }
}

/// Overwrites a body that held a secret (the session token), when no other reference to
/// its buffer remains.
fn wipe(body: Bytes) {
    use zeroize::Zeroize as _;
    if let Ok(mut owned) = body.try_into_mut() {
        owned.as_mut().zeroize();
    }
}

fn transport_verdict(error: SendError) -> Verdict {
    match error {
        SendError::TooLarge => Verdict::Final(AbmError::Protocol {
            message: error.to_string(),
        }),
        other => Verdict::Retry {
            error: AbmError::Transport {
                message: other.to_string(),
            },
            retry_after: None,
        },
    }
}

/// An undecodable answer. Only the kind and place of the error are kept: serde's own message
/// can quote values from the answer.
fn protocol_error(method: &Method, path: &str, e: &serde_json::Error) -> AbmError {
    use serde_json::error::Category;
    let kind = match e.classify() {
        Category::Data => "does not have the documented fields",
        Category::Eof => "ends early",
        Category::Syntax | Category::Io => "is not JSON",
    };
    AbmError::Protocol {
        message: format!(
            "the answer to {method} {path} {kind} (line {}, column {})",
            e.line(),
            e.column()
        ),
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()))
}

fn serials(serials: Vec<String>) -> SerialsRequest {
    SerialsRequest { devices: serials }
}

impl AbmClient for AbmHttpClient {
    async fn account(&self) -> Result<Account, AbmError> {
        self.inner.json(Method::GET, "/account", None::<&()>).await
    }

    async fn fetch_devices(
        &self,
        cursor: Option<String>,
        limit: u32,
    ) -> Result<DevicePage, AbmError> {
        let body = DevicePageRequest {
            cursor,
            limit: (limit > 0).then_some(limit),
        };
        self.inner
            .json(Method::POST, "/server/devices", Some(&body))
            .await
    }

    async fn sync_devices(&self, cursor: String, limit: u32) -> Result<DevicePage, AbmError> {
        let body = DevicePageRequest {
            cursor: Some(cursor),
            limit: (limit > 0).then_some(limit),
        };
        self.inner
            .json(Method::POST, "/devices/sync", Some(&body))
            .await
    }

    async fn device_details(&self, serials_: Vec<String>) -> Result<DeviceDetails, AbmError> {
        self.inner
            .json(Method::POST, "/devices", Some(&serials(serials_)))
            .await
    }

    async fn define_profile(&self, profile: Profile) -> Result<DefineProfileResponse, AbmError> {
        self.inner
            .json(Method::POST, "/profile", Some(&profile))
            .await
    }

    async fn assign_profile(
        &self,
        profile_uuid: String,
        serials: Vec<String>,
    ) -> Result<AssignResponse, AbmError> {
        let body = AssignRequest {
            profile_uuid,
            devices: serials,
        };
        self.inner
            .json(Method::PUT, "/profile/devices", Some(&body))
            .await
    }

    async fn remove_profile(&self, serials_: Vec<String>) -> Result<SerialOutcomes, AbmError> {
        self.inner
            .json(Method::DELETE, "/profile/devices", Some(&serials(serials_)))
            .await
    }

    async fn disown_devices(&self, serials_: Vec<String>) -> Result<SerialOutcomes, AbmError> {
        self.inner
            .json(Method::POST, "/devices/disown", Some(&serials(serials_)))
            .await
    }
}
