//! The APNs push client: wakes enrolled devices so they check in for their commands.
//!
//! [`ApnsPusher`] implements the service's [`mdm_service::ports::PushProvider`]. It keeps
//! long-lived HTTP/2 connections to APNs (`POST /3/device/<token>`, `apns-push-type: mdm`,
//! body `{"mdm": PushMagic}`), authenticated with the MDM push certificate as TLS client
//! certificate, optionally through an HTTP CONNECT proxy. Many pushes share one connection
//! as concurrent streams, up to the server's `SETTINGS_MAX_CONCURRENT_STREAMS`; a batch of
//! tens of thousands runs on a fixed set of workers. Base URL parsing, the proxy tunnel and
//! the trusted roots come from `mdm-net`, shared with the ABM client.
//!
//! Each answer is classified (see Apple's "Handling notification responses from APNs"):
//! dead tokens, a refused certificate or topic, transient failures (429, 5xx, connection
//! loss, GOAWAY, timeouts: retried with jittered exponential backoff on a fresh connection
//! when needed) and answers that reveal a bug here (not retried). A circuit breaker stops
//! calling a failing service for a while and lets one probe through before closing again.
//!
//! Nothing secret is logged: neither the push magic nor the key, and device tokens only as
//! an 8-character prefix.
//!
//! What it cannot do yet:
//! - token-based (JWT, `.p8`) authentication: MDM pushes require the certificate anyway;
//! - HTTPS proxies (TLS to the proxy itself) and proxy authentication other than Basic;
//! - acting on the `reason` APNs puts in a GOAWAY frame: the HTTP/2 library only shows it
//!   inside the error text, so every GOAWAY is handled as a lost connection (retired,
//!   pushes retried at once on a new one) and the reason only reaches the logs;
//! - per-device throttling: a 429 is retried like other transient failures.

mod breaker;
mod classify;
mod config;
mod connect;
mod error;
mod gate;
mod pool;
mod pusher;
mod tls;

pub use config::{
    ApnsConfig, ApnsRoots, BreakerPolicy, ProxyConfig, ProxyCredentials, RetryPolicy,
    APNS_PRODUCTION, SYSTEM_CA_BUNDLE,
};
pub use error::{ApnsError, ConnectError};
pub use pusher::ApnsPusher;
