//! How the pusher reaches APNs and how hard it tries.

use std::time::Duration;

pub use mdm_net::{ProxyConfig, ProxyCredentials, SYSTEM_CA_BUNDLE};

/// APNs production. MDM push certificates only work here: there is no sandbox for MDM.
pub const APNS_PRODUCTION: &str = "https://api.push.apple.com";

/// Everything [`crate::ApnsPusher`] needs besides the push identity.
///
/// `Default` is the production configuration: Apple's endpoint, the system CA bundle, no
/// proxy, one connection.
#[derive(Debug, Clone)]
pub struct ApnsConfig {
    /// `https://host[:port]` of the push service, without a path. Default [`APNS_PRODUCTION`];
    /// tests point it at a local server.
    pub base_url: String,
    /// The certificates the push service's TLS certificate must chain to.
    pub roots: ApnsRoots,
    /// An HTTP CONNECT proxy between the appliance and Apple, if the site has one.
    pub proxy: Option<ProxyConfig>,
    /// How long one attempt (send the request, read the whole answer) may take. Default 10 s:
    /// APNs answers within milliseconds when healthy.
    pub request_timeout: Duration,
    /// How long opening a connection (TCP, proxy CONNECT, TLS, HTTP/2 preface) may take.
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// Most streams this client keeps open on one connection; the server's own
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` lowers it further. Default 1000, which is what APNs
    /// advertises to certificate-authenticated providers.
    pub max_concurrent_streams: usize,
    /// Connections kept open in parallel (at least 1). Default 1: one APNs connection carries
    /// thousands of pushes per second; more only help when one TLS stream is CPU-bound.
    pub connections: usize,
    /// HTTP/2 PING interval on idle and busy connections, so that a connection silently
    /// dropped by a NAT or proxy is noticed before a push needs it. Default 60 s; `None`
    /// disables pings.
    pub keepalive_interval: Option<Duration>,
    /// How long APNs should keep a push for a device that is offline (sent as
    /// `apns-expiration`). Default 7 days; zero asks APNs to try once and never store.
    ///
    /// Why not zero: an MDM push only says "check in", APNs keeps just the latest one per
    /// device, and a device that comes back online should check in as soon as it can rather
    /// than wait for the service's periodic re-push. Apple stores a push for at most 30 days.
    pub push_ttl: Duration,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// When to stop calling a failing service for a while.
    pub breaker: BreakerPolicy,
}

impl Default for ApnsConfig {
    fn default() -> Self {
        ApnsConfig {
            base_url: APNS_PRODUCTION.to_string(),
            roots: ApnsRoots::default(),
            proxy: None,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_concurrent_streams: 1000,
            connections: 1,
            keepalive_interval: Some(Duration::from_secs(60)),
            push_ttl: Duration::from_secs(7 * 24 * 3600),
            retry: RetryPolicy::default(),
            breaker: BreakerPolicy::default(),
        }
    }
}

/// Where the trusted root certificates for the push service come from (system bundle, PEM
/// file, PEM text or DER certificates).
pub type ApnsRoots = mdm_net::Roots;

/// Retries of one push after a transient failure (429, 5xx, connection errors, timeouts).
///
/// The delay before retry `n` (1-based) is `base_delay * 2^(n-1)`, capped at `max_delay`,
/// of which a random half is taken off so that thousands of failed pushes do not come back
/// in lockstep. APNs sends no `Retry-After`, so nothing from the answer changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per push, including the first (at least 1). Default 4.
    pub max_attempts: u32,
    /// Delay before the first retry. Default 200 ms.
    pub base_delay: Duration,
    /// Largest delay between attempts. Default 5 s.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

/// The circuit breaker.
///
/// Call-level failures (the service or the connection failed, or the certificate was
/// refused) in a row open it; per-device answers (a dead token, 429 for one device) neither
/// open nor close it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive call-level failures that open the circuit (at least 1). Default 5.
    pub failure_threshold: u32,
    /// How long the circuit stays open before one probe push is let through. Default 30 s.
    pub open_for: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}
