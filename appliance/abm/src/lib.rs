//! The Apple Business Manager (ABM) device assignment API client: what the service's
//! [`mdm_service::ports::AbmConnector`] and [`mdm_service::ports::AbmClient`] ports need,
//! over HTTPS with the wire types of `mdm_proto::abm`.
//!
//! [`AbmHttpConnector`] builds one [`AbmHttpClient`] per ABM connection (base URL, trusted
//! roots, server token) with the daemon's User-Agent, timeout, proxy and retry policy. A
//! client:
//! - opens a session with `GET /session`, signed with OAuth 1.0a (RFC 5849, HMAC-SHA1, realm
//!   `ADM`) from the token's consumer key/secret and access token/secret, and sends it as
//!   `X-ADM-Auth-Session` on every call, replacing it when an answer carries a new one and
//!   fetching a new one, once per call, when Apple answers 401 or 403 `FORBIDDEN`;
//! - sends `X-Server-Protocol-Version: 10`, a product `User-Agent`, `Accept:
//!   application/json` and, with a body, `Content-Type: application/json;charset=UTF8`;
//! - reads Apple's error bodies in their three shapes (bare text, JSON string, `{"code",
//!   "message"}`) and maps them to [`mdm_service::ports::AbmError`]: terms not signed,
//!   access denied, the three cursor states, rejections with Apple's code;
//! - retries 429, 5xx and transport failures (connect, TLS, proxy, timeout) with exponential
//!   backoff and full jitter, honouring `Retry-After`, within a number of attempts and a total
//!   waiting time; other answers are final;
//! - speaks HTTP/1.1 with keep-alive over TLS 1.2+ (rustls, aws-lc-rs), directly or through
//!   an HTTP CONNECT proxy (`mdm-net`), keeping a couple of idle connections.
//!
//! Calls are logged at debug level with method, path, status and duration; headers, bodies,
//! the session and the token's secrets never are.
//!
//! What it cannot do yet:
//! - the endpoints the service does not use: `GET /profile`, `GET /devices/{serial}` history,
//!   activation lock (`POST /device/activationlock`), the account-driven enrollment ones;
//! - share a session between processes or keep it across restarts: a restart costs one
//!   `/session` call per connection;
//! - HTTP/2 (ABM speaks HTTP/1.1 well, and calls are sequential);
//! - a circuit breaker: the service's schedules already space calls of a failing connection.

mod answer;
mod client;
mod config;
mod oauth;
mod retry;
mod transport;

pub use client::{AbmHttpClient, AbmHttpConnector};
pub use config::{AbmClientConfig, RetryPolicy, DEFAULT_USER_AGENT};
pub use mdm_net::{ProxyConfig, ProxyCredentials};
