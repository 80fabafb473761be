//! The daemon's configuration file: TOML, versioned, strict (an unknown key is an error that
//! names it). Every key is documented in `docs/reference/config.md`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// The configuration format this daemon reads.
pub const CONFIG_VERSION: u32 = 1;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version; must be 1.
    pub version: u32,
    /// Development mode: the software keystore is allowed. Never on a production appliance.
    #[serde(default)]
    pub development: bool,
    pub server: Server,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub keystore: Keystore,
    #[serde(default)]
    pub enrollment: Enrollment,
    #[serde(default)]
    pub ade: Ade,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub apns: Apns,
    #[serde(default)]
    pub abm: Abm,
}

/// `[abm]`: Apple Business Manager connections (created with `mdmctl abm add`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Abm {
    /// The ABM API new connections use unless given one (Apple's production service).
    #[serde(default = "default_abm_url")]
    pub url: String,
    /// PEM file of the roots for `url` (default: the system CA bundle).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// An HTTP CONNECT proxy, `http://host:port`, for calls to ABM.
    #[serde(default)]
    pub proxy: Option<String>,
    #[serde(default)]
    pub proxy_username: Option<String>,
    /// File holding the proxy password.
    #[serde(default)]
    pub proxy_password_file: Option<PathBuf>,
    /// Sync interval of new connections, seconds (0: only on request).
    #[serde(default = "default_abm_interval")]
    pub sync_interval_seconds: u64,
    /// A full re-fetch runs when the last one is older than this many days.
    #[serde(default = "default_abm_refetch")]
    pub full_refetch_days: u64,
    /// Tokens this close to expiry are reported as expiring soon.
    #[serde(default = "default_abm_warning")]
    pub token_warning_days: u64,
    /// Cool-down before FAILED/THROTTLED assignments are retried when Apple gives no
    /// `retry_after_seconds`, seconds.
    #[serde(default = "default_abm_cooldown")]
    pub assignment_cooldown_seconds: u64,
    /// Timeout of one call to ABM, seconds.
    #[serde(default = "default_abm_timeout")]
    pub request_timeout_seconds: u64,
}

impl Default for Abm {
    fn default() -> Self {
        Abm {
            url: default_abm_url(),
            ca_file: None,
            proxy: None,
            proxy_username: None,
            proxy_password_file: None,
            sync_interval_seconds: default_abm_interval(),
            full_refetch_days: default_abm_refetch(),
            token_warning_days: default_abm_warning(),
            assignment_cooldown_seconds: default_abm_cooldown(),
            request_timeout_seconds: default_abm_timeout(),
        }
    }
}

fn default_abm_url() -> String {
    "https://mdmenrollment.apple.com".into()
}
fn default_abm_interval() -> u64 {
    900
}
fn default_abm_refetch() -> u64 {
    6
}
fn default_abm_warning() -> u64 {
    30
}
fn default_abm_cooldown() -> u64 {
    24 * 3600
}
fn default_abm_timeout() -> u64 {
    30
}

/// `[apns]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apns {
    /// The push service. Apple's production endpoint unless testing against a simulator.
    #[serde(default = "default_apns_url")]
    pub url: String,
    /// PEM file of the roots the push service's certificate must chain to (default: the
    /// system CA bundle).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// An HTTP CONNECT proxy, `http://host:port`, for sites that route Apple traffic through one.
    #[serde(default)]
    pub proxy: Option<String>,
    #[serde(default)]
    pub proxy_username: Option<String>,
    /// File holding the proxy password (kept out of the configuration file).
    #[serde(default)]
    pub proxy_password_file: Option<PathBuf>,
    /// Devices with queued commands are pushed again this often (APNs keeps only the latest
    /// push for an offline device).
    #[serde(default = "default_repush")]
    pub repush_interval_seconds: u64,
    /// Parallel connections to APNs.
    #[serde(default = "default_apns_connections")]
    pub connections: usize,
}

impl Default for Apns {
    fn default() -> Self {
        Apns {
            url: default_apns_url(),
            ca_file: None,
            proxy: None,
            proxy_username: None,
            proxy_password_file: None,
            repush_interval_seconds: default_repush(),
            connections: default_apns_connections(),
        }
    }
}

fn default_apns_url() -> String {
    "https://api.push.apple.com".into()
}
fn default_repush() -> u64 {
    4 * 3600
}
fn default_apns_connections() -> usize {
    1
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Public base URL devices use, e.g. `https://mdm.example.lan` (goes into profiles).
    pub base_url: String,
    /// Addresses to listen on when not socket-activated.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// State directory: database, sealed keys, admin token.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Organisation name shown in profiles and certificates.
    #[serde(default = "default_org")]
    pub organization: String,
    /// Extra DNS names for the TLS certificate (the base URL's host is always included).
    #[serde(default)]
    pub tls_dns_names: Vec<String>,
    /// IP addresses for the TLS certificate.
    #[serde(default)]
    pub tls_ip_addresses: Vec<IpAddr>,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// `auto` (journald when running under systemd with a journal, else text), `journald`,
    /// `json`, `text`.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,mdm_service=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Journald,
    Json,
    Text,
}

/// `[keystore]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keystore {
    /// `software` (development only) or `tpm`.
    #[serde(default = "default_backend")]
    pub backend: KeystoreBackend,
    /// How to reach the TPM (a tpm2-tss TCTI string).
    #[serde(default = "default_tcti")]
    pub tcti: String,
    /// PCRs (SHA-256 bank, 0-23) the TPM-sealed data key is bound to; empty (the default)
    /// for no binding. `[7]` (the Secure Boot state) survives kernel updates; see the
    /// operator guide for the recovery path before turning it on.
    #[serde(default)]
    pub pcrs: Vec<u8>,
}

impl Default for Keystore {
    fn default() -> Self {
        Keystore {
            backend: default_backend(),
            tcti: default_tcti(),
            pcrs: Vec::new(),
        }
    }
}

fn default_tcti() -> String {
    mdm_keystore::DEFAULT_TCTI.to_string()
}

/// Keystore backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KeystoreBackend {
    Software,
    Tpm,
}

/// `[enrollment]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    #[serde(default = "default_challenge_ttl")]
    pub challenge_ttl_seconds: u64,
    /// WARNING: a static SCEP challenge lets anyone who learns it get device certificates.
    #[serde(default)]
    pub static_challenge: Option<String>,
    #[serde(default = "default_device_cert_days")]
    pub device_cert_days: u64,
    #[serde(default = "default_true")]
    pub sign_message: bool,
    #[serde(default = "default_link_ttl")]
    pub link_ttl_seconds: u64,
}

impl Default for Enrollment {
    fn default() -> Self {
        Enrollment {
            challenge_ttl_seconds: default_challenge_ttl(),
            static_challenge: None,
            device_cert_days: default_device_cert_days(),
            sign_message: true,
            link_ttl_seconds: default_link_ttl(),
        }
    }
}

/// `[ade]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ade {
    /// PEM files with the roots MachineInfo signatures must chain to.
    #[serde(default)]
    pub device_ca_roots: Vec<PathBuf>,
    #[serde(default)]
    pub min_os_version: Option<String>,
    #[serde(default)]
    pub min_os_build: Option<String>,
}

/// `[retention]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default = "default_max_age_days")]
    pub max_age_days: u64,
    #[serde(default = "default_max_results")]
    pub max_results_per_enrollment: usize,
    #[serde(default = "default_prune_interval")]
    pub interval_seconds: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age_days: default_max_age_days(),
            max_results_per_enrollment: default_max_results(),
            interval_seconds: default_prune_interval(),
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_device_body")]
    pub device_body_bytes: usize,
    #[serde(default = "default_enrollment_body")]
    pub enrollment_body_bytes: usize,
    #[serde(default = "default_api_body")]
    pub api_body_bytes: usize,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_drain")]
    pub drain_timeout_seconds: u64,
    /// Database page cache; bounds the daemon's memory however much history is stored.
    #[serde(default = "default_db_cache")]
    pub db_cache_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            device_body_bytes: default_device_body(),
            enrollment_body_bytes: default_enrollment_body(),
            api_body_bytes: default_api_body(),
            max_connections: default_max_connections(),
            drain_timeout_seconds: default_drain(),
            db_cache_bytes: default_db_cache(),
        }
    }
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 443))]
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/mdmd")
}
fn default_org() -> String {
    "MDM Appliance".into()
}
fn default_log_format() -> LogFormat {
    LogFormat::Auto
}
fn default_log_level() -> String {
    "info".into()
}
fn default_backend() -> KeystoreBackend {
    KeystoreBackend::Tpm
}
fn default_challenge_ttl() -> u64 {
    3600
}
fn default_device_cert_days() -> u64 {
    365
}
fn default_true() -> bool {
    true
}
fn default_link_ttl() -> u64 {
    7 * 24 * 3600
}
fn default_max_age_days() -> u64 {
    30
}
fn default_max_results() -> usize {
    500
}
fn default_prune_interval() -> u64 {
    3600
}
fn default_device_body() -> usize {
    8 * 1024 * 1024
}
fn default_enrollment_body() -> usize {
    256 * 1024
}
fn default_api_body() -> usize {
    8 * 1024 * 1024
}
fn default_max_connections() -> usize {
    20_000
}
fn default_drain() -> u64 {
    20
}
fn default_db_cache() -> usize {
    48 * 1024 * 1024
}

impl Config {
    /// Parse and validate a configuration file's text.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration file {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("configuration file {}", path.display()))
    }

    /// The configuration `--dev` uses when no file is given.
    pub fn development(listen: SocketAddr, data_dir: PathBuf) -> Config {
        let host = if listen.ip().is_unspecified() {
            "localhost".to_string()
        } else {
            host_for(listen.ip())
        };
        Config {
            version: CONFIG_VERSION,
            development: true,
            server: Server {
                base_url: format!("https://{host}:{}", listen.port()),
                listen: vec![listen],
                data_dir,
                organization: "Development".into(),
                tls_dns_names: vec!["localhost".into()],
                tls_ip_addresses: vec![IpAddr::from([127, 0, 0, 1])],
            },
            log: Log::default(),
            keystore: Keystore {
                backend: KeystoreBackend::Software,
                tcti: default_tcti(),
                pcrs: Vec::new(),
            },
            enrollment: Enrollment::default(),
            ade: Ade::default(),
            retention: Retention::default(),
            limits: Limits::default(),
            apns: Apns::default(),
            abm: Abm::default(),
        }
    }

    /// Cross-field checks serde cannot express.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.version != CONFIG_VERSION {
            bail!(
                "version: this daemon reads configuration version {CONFIG_VERSION}, the file says {}",
                self.version
            );
        }
        let url = self.server.base_url.trim_end_matches('/');
        let Some(rest) = url.strip_prefix("https://") else {
            bail!("server.base_url: must start with https:// (devices only talk to MDM over TLS)");
        };
        if rest.is_empty() || rest.contains('/') || rest.contains('?') {
            bail!("server.base_url: give scheme, host and optional port only, e.g. https://mdm.example.lan:8443");
        }
        if self.server.listen.is_empty() {
            bail!("server.listen: give at least one address");
        }
        if let Some(bad) = self.keystore.pcrs.iter().find(|p| **p > 23) {
            bail!("keystore.pcrs: PCR {bad} does not exist (a TPM has PCRs 0 to 23)");
        }
        if !self.keystore.pcrs.is_empty() && self.keystore.backend != KeystoreBackend::Tpm {
            bail!(
                "keystore.pcrs: a PCR policy needs the TPM keystore (keystore.backend = \"tpm\")"
            );
        }
        if self.keystore.backend == KeystoreBackend::Software && !self.development {
            bail!(
                "keystore.backend: the software keystore keeps keys in a file anyone with disk access can read; \
                 it is allowed only with `development = true` (or `mdmd serve --dev`)"
            );
        }
        if self
            .enrollment
            .static_challenge
            .as_deref()
            .is_some_and(|c| c.len() < 16)
        {
            bail!("enrollment.static_challenge: at least 16 characters (better: leave it unset for one-time challenges)");
        }
        if self.enrollment.challenge_ttl_seconds == 0 || self.enrollment.device_cert_days == 0 {
            bail!("enrollment: challenge_ttl_seconds and device_cert_days must be positive");
        }
        if !self.apns.url.starts_with("https://") {
            bail!("apns.url: must start with https://");
        }
        if self
            .apns
            .proxy
            .as_deref()
            .is_some_and(|p| !p.starts_with("http://"))
        {
            bail!(
                "apns.proxy: give it as http://host:port (the tunnel carries TLS to Apple itself)"
            );
        }
        if self.apns.proxy_password_file.is_some() && self.apns.proxy_username.is_none() {
            bail!("apns.proxy_password_file: set apns.proxy_username too");
        }
        if self.apns.repush_interval_seconds < 60 || self.apns.connections == 0 {
            bail!("apns: repush_interval_seconds must be at least 60 and connections at least 1");
        }
        if !self.abm.url.starts_with("https://") {
            bail!("abm.url: must start with https://");
        }
        if self
            .abm
            .proxy
            .as_deref()
            .is_some_and(|p| !p.starts_with("http://"))
        {
            bail!(
                "abm.proxy: give it as http://host:port (the tunnel carries TLS to Apple itself)"
            );
        }
        if self.abm.proxy_password_file.is_some() && self.abm.proxy_username.is_none() {
            bail!("abm.proxy_password_file: set abm.proxy_username too");
        }
        if self.abm.full_refetch_days == 0 || self.abm.full_refetch_days > 7 {
            bail!("abm.full_refetch_days: between 1 and 7 (Apple's cursors expire after 7 days)");
        }
        if self.abm.request_timeout_seconds == 0 || self.abm.assignment_cooldown_seconds < 60 {
            bail!("abm: request_timeout_seconds must be positive and assignment_cooldown_seconds at least 60");
        }
        if self.limits.max_connections == 0 {
            bail!("limits.max_connections: must be positive");
        }
        Ok(())
    }

    /// The host part of the base URL.
    pub fn base_host(&self) -> String {
        let rest = self.server.base_url.trim_start_matches("https://");
        let rest = rest.trim_end_matches('/');
        if let Some(v6) = rest.strip_prefix('[') {
            return v6.split(']').next().unwrap_or_default().to_string();
        }
        rest.split(':').next().unwrap_or_default().to_string()
    }
}

fn host_for(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
version = 1
development = true
[server]
base_url = "https://mdm.example.lan:8443"
[keystore]
backend = "software"
"#;

    #[test]
    fn minimal_file_parses_with_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.server.listen, default_listen());
        assert_eq!(c.enrollment.challenge_ttl_seconds, 3600);
        assert_eq!(c.base_host(), "mdm.example.lan");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = MINIMAL.replace("[keystore]", "[keystore]\nbackned = 1");
        let err = format!("{:#}", Config::parse(&text).unwrap_err());
        assert!(err.contains("backned"), "{err}");
    }

    #[test]
    fn unknown_section_is_named() {
        let text = format!("{MINIMAL}\n[pushes]\nx = 1\n");
        let err = format!("{:#}", Config::parse(&text).unwrap_err());
        assert!(err.contains("pushes"), "{err}");
    }

    #[test]
    fn wrong_version_refused() {
        let err = Config::parse(&MINIMAL.replace("version = 1", "version = 2")).unwrap_err();
        assert!(err.to_string().contains("version"));
    }

    #[test]
    fn software_keystore_needs_development() {
        let err = Config::parse(&MINIMAL.replace("development = true", "")).unwrap_err();
        assert!(err.to_string().contains("software keystore"));
    }

    #[test]
    fn base_url_must_be_https_origin() {
        for bad in ["http://x", "https://x/path", "https://"] {
            let text = MINIMAL.replace("https://mdm.example.lan:8443", bad);
            assert!(Config::parse(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn dev_config_validates() {
        let c = Config::development("127.0.0.1:8443".parse().unwrap(), "/tmp/x".into());
        c.validate().unwrap();
        assert_eq!(c.server.base_url, "https://127.0.0.1:8443");
    }
}
