//! How the client reaches Apple and how hard it tries.

use std::time::Duration;

use mdm_net::ProxyConfig;

/// The `User-Agent` sent when none is configured: `mdm-appliance/<version>`. Apple answers
/// `400 USER_AGENT_INVALID` to an empty or unusual one, so it is a plain product token.
pub const DEFAULT_USER_AGENT: &str = concat!("mdm-appliance/", env!("CARGO_PKG_VERSION"));

/// Everything [`crate::AbmHttpConnector`] gives the clients it builds.
///
/// `Default` is the production configuration: no proxy, 30 s per request, the default
/// retry policy.
#[derive(Debug, Clone)]
pub struct AbmClientConfig {
    /// Sent on every request. Default [`DEFAULT_USER_AGENT`].
    pub user_agent: String,
    /// How long one attempt may take: connecting (TCP, proxy, TLS), sending the request and
    /// reading the whole answer. Default 30 s.
    pub timeout: Duration,
    /// An HTTP CONNECT proxy between the appliance and Apple, if the site has one.
    pub proxy: Option<ProxyConfig>,
    /// Retries of throttled and transient failures.
    pub retry: RetryPolicy,
}

impl Default for AbmClientConfig {
    fn default() -> Self {
        AbmClientConfig {
            user_agent: DEFAULT_USER_AGENT.to_string(),
            timeout: Duration::from_secs(30),
            proxy: None,
            retry: RetryPolicy::default(),
        }
    }
}

/// Retries of one call after 429, 5xx or a transport failure (connection, TLS, proxy,
/// timeout). Other answers are final.
///
/// The delay before retry `n` (1-based) is a random duration between zero and
/// `min(base_delay * 2^(n-1), max_delay)` ("full jitter"), so that the calls of many
/// connections that failed together do not come back together. A `Retry-After` from Apple
/// replaces that delay. The call gives up when `max_attempts` are used or when the next
/// delay would take the total waiting past `max_total_wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, including the first (at least 1). Default 5.
    pub max_attempts: u32,
    /// Upper bound of the first delay. Default 1 s.
    pub base_delay: Duration,
    /// Upper bound of any computed delay. Default 60 s.
    pub max_delay: Duration,
    /// Most time spent waiting between attempts of one call. Default 5 min: the sync and
    /// assignment jobs run again later anyway, and a call should not hold a connection's
    /// lock for longer.
    pub max_total_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            max_total_wait: Duration::from_secs(300),
        }
    }
}
