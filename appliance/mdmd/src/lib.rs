//! The appliance daemon: reads the configuration, opens the store and keystore, loads or
//! creates the appliance's certificates, wires the MDM service into the HTTPS front and runs
//! until told to stop. All wiring happens here, in one place.

pub mod config;
pub mod logging;
pub mod restore;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use config::KeystoreBackend;
use mdm_keystore::{Sealer, SoftSealer, TpmSealer};
use mdm_service::ports::{ApiTokenStore, RetentionPolicy, Role};
use mdm_service::{Authority, MdmService, ServiceConfig, TlsNames};
use mdm_store::{RedbStore, StoreOptions};
use mdm_web::server::ServeOptions;
use mdm_web::tls::{ReloadableTls, TlsIdentity};
use tokio::sync::watch;
use tracing::{info, warn};

pub use config::Config;

/// File in the data directory holding the first admin API token (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// File in the data directory listing the addresses the daemon listens on, one per line,
/// written once it is ready (tools and tests use it to find a daemon started on port 0).
pub const LISTEN_ADDR_FILE: &str = "listen.addr";
/// The database file in the data directory.
pub const DB_FILE: &str = "mdm.redb";
/// The software keystore's key file in the data directory.
pub const SOFT_KEY_FILE: &str = "keystore-soft.key";
/// The TPM keystore's sealed data key in the data directory (useless without that TPM).
pub const TPM_KEY_FILE: &str = "keystore-tpm.key";

/// A running daemon, for callers that embed it (tests) and for `main`.
pub struct Running {
    pub local_addrs: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    /// The appliance CA certificate (PEM), as served at `/ca.pem`.
    pub ca_pem: String,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The daemon's service, for [`Running::run_offline_policy_at`]. Dropped before waiting
    /// for the daemon task, which can close the database only once it holds the last handle.
    service: MdmService<RedbStore>,
}

impl Running {
    /// Ask the daemon to stop (as SIGTERM does) and wait until it has drained and closed.
    pub async fn stop(self) -> anyhow::Result<()> {
        drop(self.service);
        let _ = self.shutdown.send(true);
        self.task.await.context("daemon task failed")?
    }

    /// Wait for the daemon to end by itself (it ends on a shutdown request).
    pub async fn wait(self) -> anyhow::Result<()> {
        drop(self.service);
        self.task.await.context("daemon task failed")?
    }

    /// Runs one pass of the offline policy (`auto_unenroll_after_days`) as of `at`: the pass
    /// the retention loop runs with the wall clock, here with a clock the caller chooses, so
    /// that tests can see what happens days later. Returns how many devices it unenrolled.
    pub async fn run_offline_policy_at(&self, at: std::time::SystemTime) -> anyhow::Result<usize> {
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .context("the offline policy's time is before 1970")?
            .as_millis();
        let now = mdm_service::ports::Timestamp(
            i64::try_from(ms).context("the offline policy's time is out of range")?,
        );
        self.service
            .auto_unenroll_offline_at(now)
            .await
            .map_err(|e| anyhow::anyhow!("offline policy pass: {e}"))
    }

    /// A handle that triggers shutdown.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    }
    let meta =
        std::fs::metadata(dir).with_context(|| format!("data directory {}", dir.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("data directory {} is not a directory", dir.display());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        warn!(dir = %dir.display(), "data directory is accessible to other users; tightening to 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict permissions of {}", dir.display()))?;
    }
    Ok(())
}

fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn service_config(cfg: &Config) -> anyhow::Result<ServiceConfig> {
    let mut sc = ServiceConfig::new(&cfg.server.base_url, &cfg.server.organization);
    sc.challenge_ttl = Duration::from_secs(cfg.enrollment.challenge_ttl_seconds);
    sc.static_challenge = cfg.enrollment.static_challenge.clone();
    sc.device_cert_lifetime = Duration::from_secs(cfg.enrollment.device_cert_days * 24 * 3600);
    sc.sign_message = cfg.enrollment.sign_message;
    sc.link_ttl = Duration::from_secs(cfg.enrollment.link_ttl_seconds);
    sc.state_dir = Some(cfg.server.data_dir.clone());
    sc.retention = RetentionPolicy {
        max_age: Duration::from_secs(cfg.retention.max_age_days * 24 * 3600),
        max_finished_per_enrollment: cfg.retention.max_results_per_enrollment,
        batch_limit: 1000,
    };
    for path in &cfg.ade.device_ca_roots {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("ade.device_ca_roots: cannot read {}", path.display()))?;
        let cert = mdm_pki::Certificate::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("ade.device_ca_roots: {}: {e}", path.display()))?;
        sc.ade.device_ca_roots.push(cert);
    }
    sc.ade.min_os_version = cfg.ade.min_os_version.clone();
    sc.ade.min_os_build = cfg.ade.min_os_build.clone();
    if sc.static_challenge.is_some() {
        warn!("WARNING: a static SCEP challenge is configured: anyone who learns it can obtain device certificates");
    }
    Ok(sc)
}

/// An HTTP CONNECT proxy from a configuration section's `proxy`, `proxy_username` and
/// `proxy_password_file` (`section` names them in errors).
fn proxy_config(
    section: &str,
    url: &Option<String>,
    username: &Option<String>,
    password_file: &Option<PathBuf>,
) -> anyhow::Result<Option<mdm_net::ProxyConfig>> {
    let Some(url) = url else { return Ok(None) };
    let basic_auth = match (username, password_file) {
        (Some(user), file) => {
            let password = match file {
                Some(f) => std::fs::read_to_string(f)
                    .with_context(|| {
                        format!("{section}.proxy_password_file: cannot read {}", f.display())
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
                None => String::new(),
            };
            Some(mdm_net::ProxyCredentials {
                username: user.clone(),
                password: zeroize::Zeroizing::new(password),
            })
        }
        (None, _) => None,
    };
    Ok(Some(mdm_net::ProxyConfig {
        url: url.clone(),
        basic_auth,
    }))
}

fn apns_config(cfg: &Config) -> anyhow::Result<mdm_apns::ApnsConfig> {
    let a = &cfg.apns;
    Ok(mdm_apns::ApnsConfig {
        base_url: a.url.trim_end_matches('/').to_string(),
        roots: match &a.ca_file {
            Some(f) => mdm_apns::ApnsRoots::PemFile(f.clone()),
            None => mdm_apns::ApnsRoots::System,
        },
        proxy: proxy_config("apns", &a.proxy, &a.proxy_username, &a.proxy_password_file)?,
        connections: a.connections,
        ..mdm_apns::ApnsConfig::default()
    })
}

fn abm_settings(
    cfg: &Config,
) -> anyhow::Result<(mdm_abm::AbmClientConfig, mdm_service::abm::AbmConfig)> {
    let a = &cfg.abm;
    let client = mdm_abm::AbmClientConfig {
        timeout: Duration::from_secs(a.request_timeout_seconds),
        proxy: proxy_config("abm", &a.proxy, &a.proxy_username, &a.proxy_password_file)?,
        ..mdm_abm::AbmClientConfig::default()
    };
    let ca_pem = match &a.ca_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("abm.ca_file: cannot read {}", f.display()))?,
        ),
        None => None,
    };
    let service = mdm_service::abm::AbmConfig {
        expiry_warning: mdm_service::authority::days(a.token_warning_days),
        default_interval_seconds: a.sync_interval_seconds,
        full_refetch_interval: mdm_service::authority::days(a.full_refetch_days),
        failure_cooldown: Duration::from_secs(a.assignment_cooldown_seconds),
        default_endpoint: mdm_service::ports::AbmEndpoint {
            base_url: a.url.trim_end_matches('/').to_string(),
            ca_pem,
        },
        ..mdm_service::abm::AbmConfig::default()
    };
    Ok((client, service))
}

fn tls_names(cfg: &Config) -> TlsNames {
    let mut names = TlsNames::default();
    let host = cfg.base_host();
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => names.ips.push(ip),
        Err(_) if !host.is_empty() => names.dns.push(host),
        Err(_) => {}
    }
    for d in &cfg.server.tls_dns_names {
        if !names.dns.contains(d) {
            names.dns.push(d.clone());
        }
    }
    for ip in &cfg.server.tls_ip_addresses {
        if !names.ips.contains(ip) {
            names.ips.push(*ip);
        }
    }
    names
}

/// Open everything and start serving. Returns once the daemon is ready (listening, keys
/// loaded); it then runs until [`Running::stop`] or a shutdown request.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    cfg.validate()?;
    let data_dir = cfg.server.data_dir.clone();
    create_private_dir(&data_dir)?;

    let sealer: Arc<dyn Sealer> = match cfg.keystore.backend {
        KeystoreBackend::Software => {
            warn!("keystore: SOFTWARE backend (development only): keys are NOT protected by a TPM");
            let s = SoftSealer::open_or_create(&data_dir.join(SOFT_KEY_FILE))
                .context("software keystore")?;
            Arc::new(s)
        }
        KeystoreBackend::Tpm => {
            let tcti = &cfg.keystore.tcti;
            let pcrs = &cfg.keystore.pcrs;
            let s = TpmSealer::open_with_pcrs(tcti, &data_dir.join(TPM_KEY_FILE), Some(pcrs))
                .map_err(|e| anyhow::anyhow!("TPM keystore ({tcti}): {e}"))?;
            info!(tcti = %tcti, pcrs = ?pcrs, "keystore: TPM backend, data key sealed by the TPM");
            Arc::new(s)
        }
    };

    let store_opts = StoreOptions {
        cache_size: Some(cfg.limits.db_cache_bytes),
        ..StoreOptions::default()
    };
    let store = RedbStore::open(&data_dir.join(DB_FILE), store_opts)
        .map_err(|e| anyhow::anyhow!("database {}: {e}", data_dir.join(DB_FILE).display()))?;

    let authority = Authority::load_or_create(
        &store,
        sealer.as_ref(),
        &cfg.server.organization,
        &tls_names(&cfg),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    info!(ca_sha256 = %hex::encode(authority.ca.cert.sha256()), "appliance CA loaded");

    // GetToken answers, by TokenServiceType: `com.apple.maid` is signed with the key of the
    // ABM connection that lists the device.
    let mut token_providers: HashMap<String, Arc<dyn mdm_service::TokenProvider>> = HashMap::new();
    token_providers.insert(
        mdm_service::abm::maid::MAID_SERVICE_TYPE.to_string(),
        Arc::new(mdm_service::abm::maid::MaidTokenProvider::new(
            store.clone(),
            Arc::clone(&sealer),
        )),
    );
    let service = MdmService::new(
        store.clone(),
        Arc::clone(&sealer),
        authority.clone(),
        service_config(&cfg)?,
        token_providers,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;

    // A data-key rotation a crash cut short is finished in the background: until then the
    // key file keeps both keys, so every secret opens while it runs.
    if !service.keystore().previous_key_ids.is_empty() {
        let resuming = service.clone();
        tokio::spawn(async move {
            if let Err(e) = resuming.resume_rotation().await {
                tracing::error!(code = e.code, error = %e.message, "cannot finish the data key rotation");
            }
        });
    }

    // First start: an admin token for the CLI, readable only by the daemon's user.
    if store
        .list_api_tokens()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .is_empty()
    {
        let created = service
            .create_api_token("admin", Role::Admin)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        write_private_file(
            &data_dir.join(ADMIN_TOKEN_FILE),
            format!("{}\n", created.token).as_bytes(),
        )?;
        info!(file = %data_dir.join(ADMIN_TOKEN_FILE).display(), "first start: admin API token written");
    }

    let tls = ReloadableTls::from_identity(
        &TlsIdentity {
            cert_chain_der: vec![
                authority.tls.cert.der().to_vec(),
                authority.ca.cert.der().to_vec(),
            ],
            key_pkcs8_der: authority.tls.key.to_pkcs8_der(),
        },
        &[authority.ca.cert.der().to_vec()],
    )
    .map_err(|e| anyhow::anyhow!("TLS configuration: {e}"))?;

    let (listeners, source) =
        mdm_web::listen::take_listeners(&cfg.server.listen).context("cannot listen")?;
    let local_addrs: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    info!(addrs = ?local_addrs, %source, "listening");
    let addr_text: String = local_addrs.iter().map(|a| format!("{a}\n")).collect();
    write_private_file(&data_dir.join(LISTEN_ADDR_FILE), addr_text.as_bytes())?;

    let (abm_client, abm_config) = abm_settings(&cfg)?;
    let abm = mdm_service::abm::AbmService::new(
        service.clone(),
        mdm_abm::AbmHttpConnector::new(abm_client),
        abm_config,
    );
    let app = Arc::new(mdm_web::App::new(
        service.clone(),
        abm.clone(),
        mdm_web::Limits {
            device_body: cfg.limits.device_body_bytes,
            enrollment_body: cfg.limits.enrollment_body_bytes,
            api_body: cfg.limits.api_body_bytes,
        },
    ));
    let opts = ServeOptions {
        max_connections: cfg.limits.max_connections,
        drain_timeout: Duration::from_secs(cfg.limits.drain_timeout_seconds),
        ..ServeOptions::default()
    };

    let pusher = mdm_apns::ApnsPusher::new(apns_config(&cfg)?)
        .map_err(|e| anyhow::anyhow!("APNs client: {e}"))?;
    let push_settings = mdm_service::push::PushSettings {
        repush_interval: Duration::from_secs(cfg.apns.repush_interval_seconds),
        ..mdm_service::push::PushSettings::default()
    };
    service.warn_push_cert_expiry();
    let ca_pem = authority.ca_pem();
    let (tx, rx) = watch::channel(false);
    let retention_every = Duration::from_secs(cfg.retention.interval_seconds.max(60));
    let handle = service.clone();
    let task = tokio::spawn(async move {
        let pruner = tokio::spawn(retention_loop(service.clone(), retention_every, rx.clone()));
        let pushing = tokio::spawn(mdm_service::push::run_pusher(
            service.clone(),
            pusher,
            push_settings,
            rx.clone(),
        ));
        let activity = tokio::spawn(mdm_service::lifecycle::activity::run_activity_writer(
            service.clone(),
            rx.clone(),
        ));
        let sweeper = tokio::spawn(mdm_service::profiles::reconcile::run_sweeper(
            service.clone(),
            rx.clone(),
        ));
        let abm_scheduler = tokio::spawn(mdm_service::abm::scheduler::run_abm_scheduler(
            abm.clone(),
            rx.clone(),
        ));
        let mut rx_serve = rx.clone();
        let shutdown = async move {
            let _ = rx_serve.wait_for(|stop| *stop).await;
            info!("shutting down: draining in-flight requests");
        };
        let served = mdm_web::server::serve(listeners, Arc::new(tls), app, opts, shutdown).await;
        pruner.abort();
        pushing.abort();
        abm_scheduler.abort();
        sweeper.abort();
        // The writer saw the stop signal: let it write the last buffered entries.
        if tokio::time::timeout(Duration::from_secs(10), activity)
            .await
            .is_err()
        {
            warn!("the activity writer did not finish in time; the last entries may be lost");
        }
        drop(abm);
        drop(service);
        store
            .close()
            .map_err(|e| anyhow::anyhow!("closing the database: {e}"))?;
        info!("stopped");
        served.context("server")
    });
    Ok(Running {
        local_addrs,
        data_dir,
        ca_pem,
        shutdown: tx,
        task,
        service: handle,
    })
}

async fn retention_loop<S: mdm_service::ports::Store>(
    service: MdmService<S>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        loop {
            match service.prune().await {
                Ok(stats) if stats.more => continue,
                Ok(_) => break,
                Err(e) => {
                    warn!(error = %e, "retention pass failed");
                    break;
                }
            }
        }
        match service.auto_unenroll_offline().await {
            Ok(_) => {}
            Err(e) => warn!(error = %e, "automatic unenrollment pass failed"),
        }
        match service.prune_activity().await {
            Ok(0) => {}
            Ok(n) => info!(entries = n, "activity entries past retention deleted"),
            Err(e) => warn!(error = %e, "activity retention pass failed"),
        }
    }
}
