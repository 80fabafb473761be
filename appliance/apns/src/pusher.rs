//! [`ApnsPusher`]: the [`PushProvider`] that talks to APNs.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use mdm_net::{Endpoint, Proxy};
use mdm_service::ports::{
    PushIdentity, PushMessage, PushOutcome, PushProvider, PushProviderStatus,
};
use rustls::RootCertStore;
use serde::Serialize;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::breaker::Breaker;
use crate::classify::{classify, Verdict};
use crate::config::{ApnsConfig, RetryPolicy};
use crate::connect::ConnectSettings;
use crate::error::{ApnsError, ConnectError};
use crate::pool::{Conn, Pool, TlsIdentity};
use crate::tls;

/// Error bodies are a small JSON object; anything longer is not APNs.
const MAX_ANSWER_BODY: usize = 16 * 1024;
/// Immediate re-sends of a request that never left (its connection closed first). They
/// cost APNs nothing, but a connection that dies at once every time must not loop forever.
const MAX_UNSENT_RESENDS: u32 = 3;

/// Pushes MDM wake-ups to APNs over long-lived HTTP/2 connections.
///
/// Cheap to clone: clones share the connections, the circuit breaker and the counters.
#[derive(Clone)]
pub struct ApnsPusher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ApnsPusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsPusher")
            .field("endpoint", &self.inner.endpoint.authority())
            .field("configured", &self.inner.identity().is_some())
            .finish_non_exhaustive()
    }
}

struct Active {
    tls: TlsIdentity,
    topic: String,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    invalid_tokens: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

struct Inner {
    endpoint: Endpoint,
    roots: Arc<RootCertStore>,
    request_timeout: Duration,
    push_ttl: Duration,
    retry: RetryPolicy,
    /// Most pushes of one batch in flight at once.
    batch_parallelism: usize,
    pool: Pool,
    identity: RwLock<Option<Arc<Active>>>,
    generation: AtomicU64,
    breaker: Breaker,
    counters: Counters,
}

#[derive(Serialize)]
struct MdmPayload<'a> {
    mdm: &'a str,
}

/// How one attempt ended.
enum Attempt {
    /// APNs answered.
    Answer(Verdict),
    /// The request never left: its connection closed before it could be sent.
    Unsent(String),
    /// No connection could be opened.
    NoConnection(String),
    /// The server refused the push certificate in the TLS handshake.
    CertificateRefused(String),
    /// The connection failed while the request was on it.
    Lost(String),
    /// No answer in time.
    TimedOut(String),
    /// Any other transient failure.
    Failed(String),
}

/// What a transport error says about the request and its connection.
enum TransportFailure {
    /// The server refused our certificate.
    Certificate(String),
    /// `RST_STREAM(REFUSED_STREAM)`: not processed, safe to resend at once.
    Refused(String),
    /// Another reset of this stream alone; the connection is fine.
    Stream(String),
    /// The connection is gone or going (GOAWAY, reset, I/O error).
    Connection(String),
}

fn transport_failure(error: &hyper::Error) -> TransportFailure {
    if let Some(reason) = tls::certificate_refusal(error) {
        return TransportFailure::Certificate(reason);
    }
    let text = error_chain(error);
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            if h2.is_reset() && !h2.is_go_away() {
                return if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                    TransportFailure::Refused(text)
                } else {
                    TransportFailure::Stream(text)
                };
            }
            break;
        }
        source = e.source();
    }
    TransportFailure::Connection(text)
}

impl ApnsPusher {
    /// A pusher for `config`, without an identity yet (every push fails fast until
    /// [`ApnsPusher::set_push_identity`]). Opens no connection: the first push does.
    pub fn new(config: ApnsConfig) -> Result<Self, ApnsError> {
        let endpoint = Endpoint::parse(&config.base_url)?;
        let proxy = config.proxy.as_ref().map(Proxy::parse).transpose()?;
        let roots = tls::load_roots(&config.roots)?;
        let connections = config.connections.max(1);
        let stream_cap = config.max_concurrent_streams.max(1);
        let settings = ConnectSettings {
            endpoint: endpoint.clone(),
            proxy,
            connect_timeout: config.connect_timeout,
            keepalive_interval: config.keepalive_interval,
        };
        let retry = RetryPolicy {
            max_attempts: config.retry.max_attempts.max(1),
            base_delay: config.retry.base_delay,
            max_delay: config.retry.max_delay.max(config.retry.base_delay),
        };
        Ok(ApnsPusher {
            inner: Arc::new(Inner {
                endpoint,
                roots,
                request_timeout: config.request_timeout,
                push_ttl: config.push_ttl,
                retry,
                batch_parallelism: connections.saturating_mul(stream_cap),
                pool: Pool::new(settings, connections, stream_cap),
                identity: RwLock::new(None),
                generation: AtomicU64::new(0),
                breaker: Breaker::new(config.breaker),
                counters: Counters::default(),
            }),
        })
    }

    /// Uses `identity` (or none) from now on.
    ///
    /// Open connections are retired (pushes already on them finish there) and the circuit
    /// breaker closes: a new certificate deserves a fresh start. On error the previous
    /// identity stays in use.
    pub fn set_push_identity(&self, identity: Option<PushIdentity>) -> Result<(), ApnsError> {
        let inner = &self.inner;
        let active = match identity {
            None => None,
            Some(identity) => {
                let config = tls::client_config(&inner.roots, &identity)?;
                let generation = inner.generation.fetch_add(1, Ordering::AcqRel) + 1;
                Some(Arc::new(Active {
                    tls: TlsIdentity { generation, config },
                    topic: identity.topic,
                }))
            }
        };
        match &active {
            Some(a) => info!(topic = %a.topic, "push identity set"),
            None => info!("push identity removed: pushes fail until a certificate is set"),
        }
        *inner
            .identity
            .write()
            .unwrap_or_else(PoisonError::into_inner) = active;
        inner.pool.clear();
        inner.breaker.reset();
        Ok(())
    }

    /// Pushes every message; one outcome per message, in the same order.
    ///
    /// Messages go out concurrently, as many at once as the connections' stream limits
    /// allow, from a fixed set of worker tasks; memory stays proportional to the batch
    /// plus the streams in flight, not to anything APNs does.
    pub async fn push_all(&self, messages: Vec<PushMessage>) -> Vec<PushOutcome> {
        let total = messages.len();
        if total == 0 {
            return Vec::new();
        }
        if self.inner.identity().is_none() {
            let reason = ConnectError::NoIdentity.to_string();
            return messages
                .iter()
                .map(|_| {
                    self.inner.count(PushOutcome::Failed {
                        reason: reason.clone(),
                    })
                })
                .collect();
        }
        let messages = Arc::new(messages);
        let next = Arc::new(AtomicUsize::new(0));
        let workers = total.min(self.inner.batch_parallelism);
        let mut set = JoinSet::new();
        for _ in 0..workers {
            let inner = Arc::clone(&self.inner);
            let messages = Arc::clone(&messages);
            let next = Arc::clone(&next);
            set.spawn(async move {
                let mut done = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(message) = messages.get(index) else {
                        break;
                    };
                    let outcome = inner.push_one(message).await;
                    done.push((index, inner.count(outcome)));
                }
                done
            });
        }
        let mut outcomes: Vec<Option<PushOutcome>> = vec![None; total];
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(done) => {
                    for (index, outcome) in done {
                        if let Some(slot) = outcomes.get_mut(index) {
                            *slot = Some(outcome);
                        }
                    }
                }
                Err(e) => warn!(error = %e, "a push worker stopped unexpectedly"),
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| PushOutcome::Failed {
                    reason: "the push worker handling this message stopped unexpectedly".into(),
                })
            })
            .collect()
    }

    /// What the provider reports about itself.
    pub fn provider_status(&self) -> PushProviderStatus {
        let c = &self.inner.counters;
        PushProviderStatus {
            configured: self.inner.identity().is_some(),
            circuit: self.inner.breaker.circuit(),
            sent: c.sent.load(Ordering::Relaxed),
            invalid_tokens: c.invalid_tokens.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            last_error: c
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Connections opened since this pusher was created (reconnects included).
    pub fn connections_opened(&self) -> u64 {
        self.inner.pool.opened()
    }
}

impl PushProvider for ApnsPusher {
    fn set_identity(&self, identity: Option<PushIdentity>) -> Result<(), String> {
        self.set_push_identity(identity).map_err(|e| e.to_string())
    }

    fn push(
        &self,
        messages: Vec<PushMessage>,
    ) -> impl std::future::Future<Output = Vec<PushOutcome>> + Send {
        let this = self.clone();
        async move { this.push_all(messages).await }
    }

    fn status(&self) -> PushProviderStatus {
        self.provider_status()
    }
}

/// The first characters of a token: enough to find it in the store, too little to use.
fn token_prefix(token: &str) -> &str {
    token.get(..8).unwrap_or(token)
}

fn is_hex_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= 512 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

impl Inner {
    fn identity(&self) -> Option<Arc<Active>> {
        self.identity
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn count(&self, outcome: PushOutcome) -> PushOutcome {
        let c = &self.counters;
        let error = match &outcome {
            PushOutcome::Sent { .. } => {
                c.sent.fetch_add(1, Ordering::Relaxed);
                None
            }
            PushOutcome::InvalidToken { .. } => {
                c.invalid_tokens.fetch_add(1, Ordering::Relaxed);
                None
            }
            PushOutcome::CertificateRejected { status, reason } => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                Some(format!("certificate rejected ({status} {reason})"))
            }
            PushOutcome::Failed { reason } => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                Some(reason.clone())
            }
        };
        if let Some(error) = error {
            *c.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
        }
        outcome
    }

    /// One push with its retries.
    async fn push_one(&self, message: &PushMessage) -> PushOutcome {
        let token = token_prefix(&message.token_hex);
        if !is_hex_token(&message.token_hex) {
            // Status 0: refused here, never sent.
            return PushOutcome::InvalidToken {
                status: 0,
                reason: "the device token is not hexadecimal; it was not sent".into(),
            };
        }
        let topic = if message.topic.is_empty() {
            // APNs then uses the certificate's own topic.
            None
        } else {
            match HeaderValue::from_str(&message.topic) {
                Ok(v) => Some(v),
                Err(_) => {
                    return PushOutcome::Failed {
                        reason: "the push topic cannot be sent in an HTTP header".into(),
                    }
                }
            }
        };
        let body = match serde_json::to_vec(&MdmPayload {
            mdm: &message.push_magic,
        }) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                return PushOutcome::Failed {
                    reason: format!("cannot encode the push payload: {e}"),
                }
            }
        };
        let ticket = match self.breaker.admit() {
            Ok(t) => t,
            Err(reason) => return PushOutcome::Failed { reason },
        };

        let mut attempt: u32 = 1;
        let mut unsent_resends = 0;
        let mut resent_at_once = false;
        loop {
            let Some(active) = self.identity() else {
                ticket.neutral();
                return PushOutcome::Failed {
                    reason: ConnectError::NoIdentity.to_string(),
                };
            };
            let (reason, service_failure, at_once) = match self
                .attempt(&active, message, topic.as_ref(), &body)
                .await
            {
                Attempt::Answer(Verdict::Sent { apns_id }) => {
                    ticket.success();
                    debug!(token, attempt, "push sent");
                    return PushOutcome::Sent { apns_id };
                }
                Attempt::Answer(Verdict::InvalidToken { status, reason }) => {
                    // APNs answered: the service is healthy even if this device is gone.
                    ticket.success();
                    debug!(token, status, reason, "push token is no longer valid");
                    return PushOutcome::InvalidToken { status, reason };
                }
                Attempt::Answer(Verdict::CertificateRejected { status, reason }) => {
                    ticket.failure(&format!("{status} {reason}"));
                    // The caller warns per enrollment, and an open circuit is logged once.
                    debug!(status, reason, topic = %message.topic, "APNs refused the push certificate or topic");
                    return PushOutcome::CertificateRejected { status, reason };
                }
                Attempt::CertificateRefused(reason) => {
                    ticket.failure(&reason);
                    debug!(reason, "APNs refused the push certificate");
                    return PushOutcome::CertificateRejected { status: 0, reason };
                }
                Attempt::Answer(Verdict::Bug { status, reason }) => {
                    ticket.neutral();
                    warn!(
                        token,
                        status,
                        reason,
                        "APNs refused a request this client built: this is a bug in the appliance"
                    );
                    return PushOutcome::Failed {
                        reason: format!(
                            "APNs refused the request ({status} {reason}); this is a bug in the appliance, not retried"
                        ),
                    };
                }
                Attempt::Answer(Verdict::Transient {
                    reason,
                    service_failure,
                    connection_closing,
                }) => {
                    // `attempt` retired the closing connection; a new one is likely fine.
                    let at_once = connection_closing && !resent_at_once;
                    resent_at_once |= connection_closing;
                    (reason, service_failure, at_once)
                }
                Attempt::Unsent(reason) if unsent_resends < MAX_UNSENT_RESENDS => {
                    unsent_resends += 1;
                    debug!(
                        token,
                        reason, "request not sent before its connection closed; resending"
                    );
                    continue;
                }
                Attempt::Unsent(reason) | Attempt::NoConnection(reason) => (reason, true, false),
                Attempt::Lost(reason) => {
                    // The connection died (GOAWAY, reset, dropped): a fresh one is likely
                    // fine, so the first such retry does not wait.
                    let at_once = !resent_at_once;
                    resent_at_once = true;
                    (reason, true, at_once)
                }
                Attempt::TimedOut(reason) | Attempt::Failed(reason) => (reason, true, false),
            };
            if attempt >= self.retry.max_attempts {
                if service_failure {
                    ticket.failure(&reason);
                } else {
                    ticket.neutral();
                }
                debug!(token, attempt, reason, "push failed");
                return PushOutcome::Failed {
                    reason: format!("{reason} (gave up after {attempt} attempts)"),
                };
            }
            if let Some(why) = self.breaker.blocks_retry(&ticket) {
                ticket.neutral();
                return PushOutcome::Failed {
                    reason: format!("{why}; this push's last error: {reason}"),
                };
            }
            let delay = if at_once {
                Duration::ZERO
            } else {
                backoff(&self.retry, attempt)
            };
            debug!(
                token,
                attempt,
                reason,
                delay_ms = delay.as_millis() as u64,
                "push failed; retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One request on one connection.
    async fn attempt(
        &self,
        active: &Active,
        message: &PushMessage,
        topic: Option<&HeaderValue>,
        body: &Bytes,
    ) -> Attempt {
        let lease = match self.pool.get(&active.tls).await {
            Ok(lease) => lease,
            Err(failure) => {
                return match failure.certificate_refused {
                    Some(reason) => Attempt::CertificateRefused(reason),
                    None => Attempt::NoConnection(failure.message),
                }
            }
        };
        let conn = &lease.conn;
        let Some(_permit) = conn.shared.gate.acquire().await else {
            return self.connection_gone(
                conn,
                "the connection closed while the push waited for a stream".into(),
            );
        };
        let request = match self.request(message, topic, body) {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Answer(Verdict::Bug {
                    status: 0,
                    reason: format!("cannot build the request: {e}"),
                })
            }
        };
        let mut sender = conn.sender();
        let exchange = async move {
            let response = sender.try_send_request(request).await?;
            let status = response.status().as_u16();
            let apns_id = response
                .headers()
                .get("apns-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = Limited::new(response.into_body(), MAX_ANSWER_BODY)
                .collect()
                .await
                .map(|b| b.to_bytes());
            Ok::<_, hyper::client::conn::TrySendError<Request<Full<Bytes>>>>((
                status, apns_id, body,
            ))
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Err(_) => {
                // A connection that does not answer in time is suspect; in-flight streams
                // finish on it, new ones go to a fresh one.
                self.pool.retire(conn);
                Attempt::TimedOut(format!(
                    "APNs did not answer within {} ms",
                    self.request_timeout.as_millis()
                ))
            }
            Ok(Err(e)) => {
                if e.message().is_some() {
                    return self.connection_gone(conn, error_chain(e.error()));
                }
                let error = e.into_error();
                match transport_failure(&error) {
                    TransportFailure::Certificate(reason) => {
                        self.pool.retire(conn);
                        Attempt::CertificateRefused(reason)
                    }
                    // The server did not take the stream (it raced a lower stream limit):
                    // the connection is fine and the request unprocessed.
                    TransportFailure::Refused(text) => Attempt::Unsent(text),
                    TransportFailure::Stream(text) => {
                        Attempt::Failed(format!("APNs reset the request: {text}"))
                    }
                    TransportFailure::Connection(text) => {
                        self.pool.retire(conn);
                        match conn.shared.certificate_refusal() {
                            Some(reason) => Attempt::CertificateRefused(reason.to_string()),
                            None => Attempt::Lost(format!("connection to APNs failed: {text}")),
                        }
                    }
                }
            }
            Ok(Ok((status, apns_id, body))) => {
                let body = match body {
                    Ok(b) => b,
                    // The status already says it all for a success.
                    Err(_) if status == 200 => Bytes::new(),
                    Err(e) => {
                        self.pool.retire(conn);
                        return Attempt::Lost(format!(
                            "reading APNs' answer ({status}) failed: {}",
                            error_chain(e.as_ref())
                        ));
                    }
                };
                let verdict = classify(status, apns_id, &body);
                if let Verdict::Transient {
                    connection_closing: true,
                    ..
                } = verdict
                {
                    self.pool.retire(conn);
                }
                Attempt::Answer(verdict)
            }
        }
    }

    /// The request never left because its connection closed: resend, unless the server
    /// closed it for refusing our certificate.
    fn connection_gone(&self, conn: &Conn, text: String) -> Attempt {
        self.pool.retire(conn);
        match conn.shared.certificate_refusal() {
            Some(reason) => Attempt::CertificateRefused(reason.to_string()),
            None => Attempt::Unsent(text),
        }
    }

    fn request(
        &self,
        message: &PushMessage,
        topic: Option<&HeaderValue>,
        body: &Bytes,
    ) -> Result<Request<Full<Bytes>>, http::Error> {
        let expiration = if self.push_ttl.is_zero() {
            0
        } else {
            SystemTime::now()
                .checked_add(self.push_ttl)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs())
        };
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(format!(
                "https://{}/3/device/{}",
                self.endpoint.request_authority(),
                message.token_hex
            ))
            .header("apns-push-type", "mdm")
            .header("apns-priority", "10")
            .header("apns-expiration", expiration)
            .header(CONTENT_TYPE, "application/json");
        if let Some(topic) = topic {
            builder = builder.header("apns-topic", topic.clone());
        }
        builder.body(Full::new(body.clone()))
    }
}

/// The delay before retry number `attempt` (1-based): exponential, capped, and randomly
/// shortened by up to half.
fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let full = policy
        .base_delay
        .checked_mul(factor)
        .unwrap_or(policy.max_delay)
        .min(policy.max_delay);
    let half = full / 2;
    let mut bytes = [0u8; 8];
    // Without randomness the delay is just not jittered; that is no reason to fail a push.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return full;
    }
    let fraction = u64::from_le_bytes(bytes) as f64 / u64::MAX as f64;
    half + half.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        for _ in 0..200 {
            let d1 = backoff(&policy, 1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = backoff(&policy, 3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d9 = backoff(&policy, 9);
            assert!(d9 >= Duration::from_millis(500) && d9 <= Duration::from_millis(1000));
            let huge = backoff(&policy, 200);
            assert!(huge <= Duration::from_millis(1000));
        }
        // Jitter actually varies.
        let samples: std::collections::HashSet<_> = (0..50).map(|_| backoff(&policy, 4)).collect();
        assert!(samples.len() > 1);
    }

    #[test]
    fn tokens_are_logged_only_as_a_prefix() {
        assert_eq!(token_prefix("0123456789abcdef"), "01234567");
        assert_eq!(token_prefix("abc"), "abc");
        assert!(is_hex_token("00ffAA"));
        assert!(!is_hex_token(""));
        assert!(!is_hex_token("00/../x"));
    }

    #[test]
    fn the_payload_is_escaped_json() {
        let body = serde_json::to_vec(&MdmPayload { mdm: "a\"b\\c\n" }).unwrap();
        assert_eq!(body, br#"{"mdm":"a\"b\\c\n"}"#);
    }
}
