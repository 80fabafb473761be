//! A stand-in for Apple Business Manager's device assignment service
//! (`mdmenrollment.apple.com`), protocol version 10, built from Apple's "Device
//! Assignment" documentation so that an ABM client can be tested against it strictly.
//!
//! [`AbmSimulator::start`] serves HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with a CA of its
//! own ([`AbmSimulator::ca_pem`]). It holds, in memory, several organisations and MDM
//! servers, their devices, per-server event logs and profiles, and answers:
//!
//! | call | what the simulator checks and does |
//! |---|---|
//! | `GET /session` | OAuth 1.0a (RFC 5849), HMAC-SHA1, realm `ADM`, parameters in the `Authorization` header: known consumer key and current access token, signature over method, base URI and all parameters, `oauth_timestamp` within ±300 s of the **real** clock, nonce not replayed within that window, `oauth_version` 1.0 if present. 400 for malformed or unsupported parameters, 401 otherwise (also for a revoked, rotated or expired token), 403 `ACCESS_DENIED` when access is denied. Answers `{"auth_session_token"}` and the same token in `X-ADM-Auth-Session`. |
//! | every other call | `X-ADM-Auth-Session` (401 `UNAUTHORIZED` when missing, unknown or expired after [`AbmSimConfig::session_lifetime`] of simulated time; 403 `FORBIDDEN` once for a session the server invalidated), then 403 `ACCESS_DENIED`, 403 `T_C_NOT_SIGNED`, then a product `User-Agent` (400 `USER_AGENT_MISSING` when absent or empty, `USER_AGENT_INVALID` when it is a bare library default such as `reqwest/0.12`), then `Content-Type: application/json` on bodies (415). `X-Server-Protocol-Version` missing counts as 1. Every [`AbmSimConfig::rotate_session_after`] calls a session is replaced: the answer carries a new `X-ADM-Auth-Session` and the old token stops working after [`AbmSimConfig::rotation_grace_calls`] more calls. |
//! | `GET /account` | server and organisation fields, `urls`. |
//! | `POST /server/devices` | the current device list in serial-number order, `limit` 100 by default, clamped to 1000; `cursor`, `more_to_follow`, `fetched_until`. The cursor of the last page is exhausted: fetching with it answers 400 `EXHAUSTED_CURSOR`. |
//! | `POST /devices/sync` | events (`op_type` added / modified / deleted, `op_date`) after the cursor's position, the same serial possibly several times; 400 `CURSOR_REQUIRED`, `INVALID_CURSOR`, `EXPIRED_CURSOR` (older than 7 days of simulated time). A fetch cursor syncs from where its fetch began. |
//! | `POST /devices` | per serial: the device with `response_status` `SUCCESS`, or `NOT_ACCESSIBLE`. |
//! | `POST /profile` | validation with Apple's codes (`CONFIG_NAME_REQUIRED`, `CONFIG_NAME_INVALID`, `CONFIG_URL_REQUIRED`, `CONFIG_URL_INVALID`, `DEPARTMENT_INVALID`, `MAGIC_INVALID`, `SUPPORT_PHONE_INVALID`, `SUPPORT_EMAIL_INVALID`, `FLAGS_INVALID`, `LOCALE_INVALID`); a new `profile_uuid` for every define, and assignment of its `devices`. |
//! | `GET /profile?profile_uuid=` | the profile as defined; 400 `PROFILE_UUID_REQUIRED`, 404 `NOT_FOUND`. |
//! | `PUT`/`POST /profile/devices` | assignment, at most 1000 serials (400 `DEVICE_LIMIT_EXCEEDED` beyond, a code of the simulator's own as Apple documents only the limit); per serial `SUCCESS`, `NOT_ACCESSIBLE` or a scripted `FAILED` / `THROTTLED`, with `retry_after_seconds` under protocol version 10. 400 `PROFILE_UUID_REQUIRED`, `DEVICE_ID_REQUIRED`, 404 `NOT_FOUND`. |
//! | `DELETE /profile/devices` | profile removal (`profile_status` `removed`). |
//! | `POST /devices/disown` | permanent removal (`deleted`, then the device is gone). |
//!
//! Error bodies come in the three shapes Apple uses, so clients must read all of them:
//! cursor errors and front-end errors (unknown path, wrong method, 503) are a bare word
//! (`EXHAUSTED_CURSOR`, `text/plain`); authorisation errors are a JSON string
//! (`"UNAUTHORIZED"`, `"FORBIDDEN"`, `"ACCESS_DENIED"`, `"T_C_NOT_SIGNED"`); request
//! validation errors and 429 are an object (`{"code": "CONFIG_URL_REQUIRED",
//! "message": "..."}`).
//!
//! The rest of ABM is played by control methods on [`AbmSimulator`], all synchronous
//! (they lock the state briefly and may be called from async code): devices are added
//! ([`AbmSimulator::add_devices`] generates a realistic mix of iPhone, iPad, Mac and
//! Apple TV), changed, released, moved between servers (`deleted` on the old server,
//! `modified` with `profile_status` `removed` on the new one) or put into a cool-down
//! that hides them from fetch and sync until it ends. Setup Assistant's question "which
//! profile do I get?" is [`AbmSimulator::activation`]. Server tokens are issued as ABM's
//! `.p7m` download ([`AbmSimulator::server_token`]); failures are scripted with
//! [`AbmSimulator::inject_fault`], [`AbmSimulator::script_assign_outcome`],
//! [`AbmSimulator::set_terms_signed`] and friends; the clock moves with
//! [`AbmSimulator::advance`] (simulated time is the real clock plus every advance).
//!
//! # Control API
//!
//! With [`AbmSimConfig::control_token`] set (the `mdm-abm-sim` binary always sets one),
//! the same listener serves a JSON control API under `/_sim/`, authenticated by
//! `Authorization: Bearer <token>`. Servers are named by index, UUID or name. Errors are
//! `{"error": "..."}` with 400 or 404.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /_sim/state` | | `{now, servers: [{id, name, uuid, org_name, consumer_key, devices, profiles}]}` |
//! | `GET /_sim/counters` | | `{requests: {endpoint: n}, largest_assign_batch, sessions_issued, sessions_rotated}` |
//! | `GET /_sim/requests` | | `[{method, path, status, endpoint}]` |
//! | `POST /_sim/clock/advance` | `{seconds}` | `{now}` |
//! | `POST /_sim/delay` | `{millis}` | delay before every API answer |
//! | `POST /_sim/faults` | `{fault: "too_many_requests" \| "service_unavailable", count, endpoint?, retry_after_seconds?}` | the next `count` matching calls fail |
//! | `DELETE /_sim/faults` | | clears faults, scripted outcomes and the delay |
//! | `POST /_sim/servers` | `{name, org}` | the new server |
//! | `GET /_sim/servers/{s}/credentials` | | the token JSON (does not rotate) |
//! | `POST /_sim/servers/{s}/devices` | `{count}` | `{serials}` |
//! | `POST /_sim/servers/{s}/token` | `{certificate_pem, cipher?: "aes128" \| "aes256" \| "des-ede3", ber?, new_org?}` | the `.p7m` (`application/pkcs7-mime`); rotates the access token |
//! | `POST /_sim/servers/{s}/terms` | `{signed}` | |
//! | `POST /_sim/servers/{s}/access` | `{denied}` | |
//! | `POST /_sim/servers/{s}/revoke` | | |
//! | `POST /_sim/servers/{s}/invalidate-sessions` | | `{sessions}` |
//! | `GET /_sim/servers/{s}/profiles` | | `{profile_uuid: profile}` |
//! | `GET /_sim/devices/{serial}` | | the device plus `server`, `cooldown_until` |
//! | `POST /_sim/devices/{serial}/modify` | `{model?, description?, color?, asset_tag?, os?, device_family?}` | |
//! | `POST /_sim/devices/{serial}/delete` | | released from its server |
//! | `POST /_sim/devices/{serial}/move` | `{server}` | |
//! | `POST /_sim/devices/{serial}/cooldown` | `{seconds}` | `{until}` |
//! | `POST /_sim/devices/{serial}/outcome` | `{outcome: "FAILED" \| "THROTTLED" \| "NOT_ACCESSIBLE", times?, retry_after_seconds?}` | |
//! | `POST /_sim/devices/{serial}/activation` | | the profile the device gets (404 if none) |
//!
//! Deliberate choices where Apple is silent: `T_C_NOT_SIGNED` is answered on every call
//! except `/session` (the session is granted; the work is refused); a realm other than
//! `ADM` is refused with 401; fetch results carry no `op_type`; profile removal clears
//! `profile_uuid`; malformed JSON and wrongly typed fields answer 400
//! `MALFORMED_REQUEST_BODY`; a sync cursor's position survives cool-downs, so events of
//! a hidden device that a cursor passes are never shown to it (the device reappears as
//! `modified` when its cool-down ends).
//!
//! Not implemented yet: Apple School Manager roster endpoints, account-driven enrollment
//! service discovery, the activation-lock endpoints, persistence across restarts. The
//! Setup Assistant side is a method ([`AbmSimulator::activation`]), not Apple's
//! device-facing protocol.

mod api;
mod control;
mod cursor;
mod error;
pub mod oauth;
mod profile;
mod server;
mod state;
mod token;
mod types;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;
use x509_cert::Certificate;

pub use error::AbmSimError;
pub use token::{open_server_token, TokenOptions};
pub use types::{
    rfc3339, AbmDevice, AssignOutcome, Counters, DeviceChange, DeviceFamily, DeviceView, Endpoint,
    Fault, OAuthCredentials, OpType, ProfileStatus, RequestRecord, ServerId, ServerInfo,
    ServerSpec,
};

pub use crate::cms::ContentCipher;

use server::{Settings, Shared};
use state::State;

/// Header carrying the session token, both ways.
pub const AUTH_SESSION_HEADER: &str = "X-ADM-Auth-Session";
/// Header carrying the client's protocol version.
pub const PROTOCOL_VERSION_HEADER: &str = "X-Server-Protocol-Version";
/// How old a sync cursor may be (simulated time) before `EXPIRED_CURSOR`.
pub const CURSOR_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// How to run the simulator.
#[derive(Debug, Clone)]
pub struct AbmSimConfig {
    /// Address to listen on; port 0 picks a free one. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// DNS names and IP addresses for the TLS certificate. Default `localhost`,
    /// `127.0.0.1` and `mdmenrollment.apple.com`; a specific listen address is added.
    pub server_names: Vec<String>,
    /// The MDM servers to create. Default: one, "MDM Server 1" of "Example Organization".
    pub servers: Vec<ServerSpec>,
    /// How long a session token lasts, in simulated time. Default 3 minutes.
    pub session_lifetime: Duration,
    /// Replace a session after this many authenticated calls (`None`: never). Default 25.
    pub rotate_session_after: Option<u32>,
    /// How many more calls a replaced session may make. Default 0.
    pub rotation_grace_calls: u32,
    /// Accepted distance between `oauth_timestamp` and the real clock. Default 300 s.
    pub oauth_window: Duration,
    /// Lifetime of access tokens, in simulated time. Default 365 days.
    pub token_lifetime: Duration,
    /// Bearer token of the `/_sim/` control API; `None` disables it. Default `None`.
    pub control_token: Option<String>,
    /// Largest request body accepted. Default 16 MiB.
    pub max_body: usize,
}

impl Default for AbmSimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            server_names: vec![
                "localhost".into(),
                "127.0.0.1".into(),
                "mdmenrollment.apple.com".into(),
            ],
            servers: vec![ServerSpec::new("MDM Server 1", "Example Organization")],
            session_lifetime: Duration::from_secs(180),
            rotate_session_after: Some(25),
            rotation_grace_calls: 0,
            oauth_window: Duration::from_secs(300),
            token_lifetime: Duration::from_secs(365 * 24 * 3600),
            control_token: None,
            max_body: 16 * 1024 * 1024,
        }
    }
}

/// The running simulator. Dropping it stops the listener; [`Self::shutdown`] also
/// waits for it.
pub struct AbmSimulator {
    addr: SocketAddr,
    ca: Certificate,
    ca_pem: String,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl fmt::Debug for AbmSimulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbmSimulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Issues a token for `id` (rotating its access token) and packages it for `recipient`.
pub(crate) fn issue_server_token(
    shared: &Shared,
    id: ServerId,
    recipient_der: &[u8],
    options: &TokenOptions,
) -> Result<Vec<u8>, AbmSimError> {
    // Check the certificate before rotating, so a bad upload leaves the old token valid.
    let recipient = token::recipient(recipient_der)?;
    let credentials =
        shared
            .state()
            .rotate_token(id, options.new_org, shared.settings.token_lifetime)?;
    token::package(&credentials, &recipient, options)
}

impl AbmSimulator {
    /// Starts the simulator. Must run inside a tokio runtime: the listener and every
    /// connection are spawned tasks. Generates the CA and TLS keys (two RSA keys).
    pub async fn start(config: AbmSimConfig) -> Result<Self, AbmSimError> {
        let mut seed = [0u8; 8];
        aws_lc_rs::rand::fill(&mut seed).map_err(|_| AbmSimError::Random)?;
        let mut state = State::new(u64::from_le_bytes(seed));
        for spec in &config.servers {
            state.add_server(spec, config.token_lifetime)?;
        }
        let settings = Settings {
            session_lifetime: config.session_lifetime,
            rotate_after: config.rotate_session_after,
            rotation_grace_calls: config.rotation_grace_calls,
            oauth_window: config.oauth_window,
            token_lifetime: config.token_lifetime,
            max_body: config.max_body,
        };
        let shared = Arc::new(Shared::new(state, settings, config.control_token.clone())?);

        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| AbmSimError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| AbmSimError::Bind {
            addr: config.listen,
            source,
        })?;
        let mut names = config.server_names.clone();
        if !addr.ip().is_unspecified() {
            names.push(addr.ip().to_string());
        }
        let tls = server::tls(&names)?;
        let ca_pem = crate::x509::to_pem(&tls.ca)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(server::accept_loop(
            listener,
            tokio_rustls::TlsAcceptor::from(Arc::new(tls.config)),
            shared.clone(),
            shutdown_rx,
        ));
        Ok(Self {
            addr,
            ca: tls.ca,
            ca_pem,
            shared,
            shutdown,
            task: Some(task),
        })
    }

    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to configure instead of `https://mdmenrollment.apple.com`, e.g.
    /// `https://127.0.0.1:40123` (no trailing slash).
    pub fn base_url(&self) -> String {
        server::base_url(self.addr)
    }

    /// PEM of the CA that issued the simulator's TLS certificate: what clients trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate.
    pub fn ca_certificate(&self) -> &Certificate {
        &self.ca
    }

    /// The control API's bearer token, when the control API is enabled.
    pub fn control_token(&self) -> Option<&str> {
        self.shared.control_token.as_deref()
    }

    /// Writes `ca.pem`, `base-url` and (mode 0600) `control-token` into `dir`, creating
    /// it if needed: what another process needs to talk to this simulator.
    pub fn write_state_dir(&self, dir: &Path) -> Result<(), AbmSimError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AbmSimError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let ca = dir.join("ca.pem");
        crate::apple::write_sim_file(&ca, self.ca_pem.as_bytes(), false).map_err(io(&ca))?;
        let url = dir.join("base-url");
        crate::apple::write_sim_file(&url, format!("{}\n", self.base_url()).as_bytes(), false)
            .map_err(io(&url))?;
        if let Some(token) = self.control_token() {
            let path = dir.join("control-token");
            crate::apple::write_sim_file(&path, format!("{token}\n").as_bytes(), true)
                .map_err(io(&path))?;
        }
        Ok(())
    }

    /// Stops accepting connections, lets open ones finish, and waits for the listener.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!("ABM simulator listener ended abnormally: {e}");
            }
        }
    }

    // Servers and tokens.

    /// The MDM servers.
    pub fn servers(&self) -> Vec<ServerInfo> {
        self.shared.state().server_infos()
    }

    /// Creates an MDM server (in an existing organisation if `spec.org` names one).
    pub fn add_server(&self, spec: &ServerSpec) -> Result<ServerId, AbmSimError> {
        self.shared
            .state()
            .add_server(spec, self.shared.settings.token_lifetime)
    }

    /// The server's current OAuth credentials, without issuing a new token.
    pub fn credentials(&self, server: ServerId) -> Result<OAuthCredentials, AbmSimError> {
        self.shared.state().credentials(server)
    }

    /// Downloads a server token as ABM does: rotates the server's access token and
    /// secret (the old token gets 401 at `/session` from now on) and returns the `.p7m`
    /// encrypted to `recipient_cert_der`, the certificate the MDM server uploaded.
    pub fn server_token(
        &self,
        server: ServerId,
        recipient_cert_der: &[u8],
        options: &TokenOptions,
    ) -> Result<Vec<u8>, AbmSimError> {
        issue_server_token(&self.shared, server, recipient_cert_der, options)
    }

    /// Revokes the server's token: `/session` answers 401 and its sessions end.
    pub fn revoke_token(&self, server: ServerId) -> Result<(), AbmSimError> {
        self.shared.state().revoke_token(server)
    }

    /// Marks every current session of the server invalid: each one's next use gets 403
    /// `FORBIDDEN` (a client should fetch a new session once and replay). Returns how
    /// many sessions were affected.
    pub fn invalidate_sessions(&self, server: ServerId) -> Result<usize, AbmSimError> {
        self.shared.state().invalidate_sessions(server)
    }

    /// Whether the server's organisation has accepted the current terms and conditions;
    /// while not, every call but `/session` answers 403 `T_C_NOT_SIGNED`.
    pub fn set_terms_signed(&self, server: ServerId, signed: bool) -> Result<(), AbmSimError> {
        self.shared.state().set_terms_signed(server, signed)
    }

    /// Whether the server's token is denied access: 403 `ACCESS_DENIED` at `/session`
    /// and on every call.
    pub fn set_access_denied(&self, server: ServerId, denied: bool) -> Result<(), AbmSimError> {
        self.shared.state().set_access_denied(server, denied)
    }

    /// The profiles defined on a server, by `profile_uuid`.
    pub fn profiles(
        &self,
        server: ServerId,
    ) -> Result<std::collections::BTreeMap<String, serde_json::Value>, AbmSimError> {
        let state = self.shared.state();
        let index = state.server_index(server)?;
        Ok(state
            .server_profiles(index)
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::Object(v)))
            .collect())
    }

    // Devices.

    /// Adds `n` generated devices to a server (each logs `added`); returns their serial
    /// numbers.
    pub fn add_devices(&self, server: ServerId, n: usize) -> Result<Vec<String>, AbmSimError> {
        self.shared.state().add_devices(server, n)
    }

    /// A device and where it is.
    pub fn device(&self, serial: &str) -> Option<DeviceView> {
        self.shared.state().device_view(serial)
    }

    /// Changes a device's fields (`modified` on its server).
    pub fn modify_device(&self, serial: &str, change: &DeviceChange) -> Result<(), AbmSimError> {
        self.shared.state().modify_device(serial, change)
    }

    /// Releases a device from its MDM server (`deleted` there).
    pub fn delete_device(&self, serial: &str) -> Result<(), AbmSimError> {
        self.shared.state().delete_device(serial)
    }

    /// Moves a device to another MDM server.
    pub fn move_device(&self, serial: &str, to: ServerId) -> Result<(), AbmSimError> {
        self.shared.state().move_device(serial, to)
    }

    /// Hides a device from fetch and sync for `duration` of simulated time; it still
    /// answers `POST /devices`. Returns when the cool-down ends.
    pub fn set_cooldown(
        &self,
        serial: &str,
        duration: Duration,
    ) -> Result<SystemTime, AbmSimError> {
        self.shared.state().set_cooldown(serial, duration)
    }

    /// What Setup Assistant gets for `serial`: the full profile as defined (with its
    /// `profile_uuid`) when the device's profile is assigned or pushed, which marks it
    /// `pushed` (with `profile_push_time`, logging `modified`). `None` when the device
    /// is unknown, released or has no profile.
    pub fn activation(&self, serial: &str) -> Option<serde_json::Value> {
        self.shared.state().activation(serial)
    }

    // Failures.

    /// Answers the next `count` calls to `endpoint` (any endpoint, `/session`
    /// included, when `None`) with `fault`, after the faults queued before.
    pub fn inject_fault(&self, fault: Fault, count: usize, endpoint: Option<Endpoint>) {
        self.shared.state().inject_fault(fault, count, endpoint);
    }

    /// Delays every API answer by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.state().delay = delay;
    }

    /// Clears queued faults, scripted outcomes and the delay.
    pub fn clear_faults(&self) {
        self.shared.state().clear_faults();
    }

    /// Makes the next `times` assignment attempts of `serial` end with `outcome`;
    /// `retry_after` is what a `THROTTLED` reply announces.
    pub fn script_assign_outcome(
        &self,
        serial: &str,
        outcome: AssignOutcome,
        times: u32,
        retry_after: Duration,
    ) {
        self.shared
            .state()
            .script_outcome(serial, outcome, times, retry_after);
    }

    // Clock and records.

    /// Moves the simulated clock forward (sessions, cursors, tokens and cool-downs
    /// follow it; OAuth timestamps are checked against the real clock).
    pub fn advance(&self, by: Duration) {
        self.shared.state().advance(by);
    }

    /// The simulated time.
    pub fn now(&self) -> SystemTime {
        self.shared.state().now()
    }

    /// Request counters.
    pub fn counters(&self) -> Counters {
        self.shared.state().counters.clone()
    }

    /// The API requests answered so far (the last 100,000), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.state().requests()
    }

    /// Forgets the recorded requests (counters keep counting).
    pub fn clear_requests(&self) {
        self.shared.state().clear_requests();
    }
}

impl Drop for AbmSimulator {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}
