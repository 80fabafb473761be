//! `mdmd`: the MDM appliance daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mdmd::config::{Config, LogFormat};
use tracing::{error, info};

/// jemalloc rather than glibc malloc (docs/design/dependencies.md): device requests allocate
/// on every tokio worker and the store writer, and jemalloc's thread caches spend less CPU
/// on that at the same memory. Only the daemon's binary sets it; libraries leave the choice
/// to their binaries.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "mdmd",
    version,
    about = "On-premises Apple MDM appliance daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance.
    Serve(Box<ServeArgs>),
    /// Restore an encrypted backup into a data directory (the daemon must not be running),
    /// sealing its data key under this machine's keystore.
    Restore(RestoreArgs),
    /// Read and validate a configuration file, then exit.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML).
    #[arg(long, short, env = "MDMD_CONFIG")]
    config: Option<PathBuf>,
    /// Development mode: software keystore, embedded defaults when no config file is given.
    #[arg(long)]
    dev: bool,
    /// State directory (overrides server.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address (overrides server.listen; repeatable).
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Public base URL (overrides server.base_url).
    #[arg(long)]
    base_url: Option<String>,
    /// PEM file of a root MachineInfo signatures must chain to (adds to ade.device_ca_roots).
    #[arg(long)]
    ade_root: Vec<PathBuf>,
    /// Keystore backend (overrides keystore.backend; `--dev` implies software).
    #[arg(long, value_enum)]
    keystore: Option<mdmd::config::KeystoreBackend>,
    /// TPM interface, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`
    /// (overrides keystore.tcti).
    #[arg(long)]
    tcti: Option<String>,
    /// Push service URL (overrides apns.url; development and tests point it at a simulator).
    #[arg(long)]
    apns_url: Option<String>,
    /// PEM roots for the push service's TLS certificate (overrides apns.ca_file).
    #[arg(long)]
    apns_ca: Option<PathBuf>,
    /// ABM API URL new connections use (overrides abm.url; tests point it at a simulator).
    #[arg(long)]
    abm_url: Option<String>,
    /// PEM roots for the ABM API's TLS certificate (overrides abm.ca_file).
    #[arg(long)]
    abm_ca: Option<PathBuf>,
    /// Log format (overrides log.format).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// The data directory to restore into (created if missing).
    #[arg(long, required_unless_present = "show")]
    data_dir: Option<PathBuf>,
    /// The backup file (`mdmctl backup create`).
    #[arg(long)]
    from: PathBuf,
    /// A file holding the passphrase (its first line), or `-` for standard input.
    #[arg(long, required_unless_present = "show")]
    passphrase_file: Option<PathBuf>,
    /// Keystore backend that seals the data key on this machine.
    #[arg(long, value_enum, default_value = "tpm")]
    keystore: mdmd::config::KeystoreBackend,
    /// TPM interface for the TPM keystore.
    #[arg(long, default_value = mdm_keystore::DEFAULT_TCTI)]
    tcti: String,
    /// Replace an appliance already in the data directory (its files are moved aside).
    #[arg(long)]
    force: bool,
    /// Recover only the key file of the appliance in the data directory (for example when
    /// its TPM PCR policy no longer matches): the backup's data key is sealed again under this
    /// machine's keystore and the database is kept. The old key file is moved aside.
    #[arg(long, conflicts_with = "force")]
    key_only: bool,
    /// Only print what the backup says about itself (no passphrase needed), then exit.
    #[arg(long)]
    show: bool,
}

/// The passphrase: the first line of a file or of standard input, without its line end.
fn read_passphrase(path: &std::path::Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    use std::io::BufRead as _;
    let mut line = zeroize::Zeroizing::new(String::new());
    if path == std::path::Path::new("-") {
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the passphrase from standard input")?;
    } else {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open the passphrase file {}", path.display()))?;
        std::io::BufReader::new(file)
            .read_line(&mut line)
            .with_context(|| format!("cannot read the passphrase file {}", path.display()))?;
    }
    let end = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(end);
    if line.is_empty() {
        anyhow::bail!("the passphrase is empty");
    }
    Ok(line)
}

fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    if args.show {
        let meta = mdmd::restore::describe(&args.from)?;
        println!("{}", serde_json::to_string_pretty(&meta)?);
        return Ok(());
    }
    let Some(data_dir) = args.data_dir.clone() else {
        anyhow::bail!("give the data directory to restore into with --data-dir DIR");
    };
    let Some(pass_file) = &args.passphrase_file else {
        anyhow::bail!("give the passphrase with --passphrase-file FILE (or - for standard input)");
    };
    let report = mdmd::restore::restore(&mdmd::restore::RestoreOptions {
        data_dir: data_dir.clone(),
        from: args.from.clone(),
        passphrase: read_passphrase(pass_file)?,
        keystore: args.keystore,
        tcti: args.tcti.clone(),
        force: args.force,
        key_only: args.key_only,
    })?;
    for old in &report.moved_aside {
        println!("moved aside: {}", old.display());
    }
    if args.key_only {
        println!(
            "recovered the key file {} from the backup made {} by {}; the database in {} was kept",
            report.key_file.display(),
            report.meta["created_at"].as_str().unwrap_or("?"),
            report.meta["created_by"].as_str().unwrap_or("?"),
            data_dir.display(),
        );
        return Ok(());
    }
    println!(
        "restored into {}: database {} bytes, key file {} (backup made {} by {})",
        data_dir.display(),
        report.database_bytes,
        report.key_file.display(),
        report.meta["created_at"].as_str().unwrap_or("?"),
        report.meta["created_by"].as_str().unwrap_or("?"),
    );
    Ok(())
}

fn build_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut cfg = match (&args.config, args.dev) {
        (Some(path), _) => Config::load(path)?,
        (None, true) => {
            let listen = args.listen.first().copied().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8443)));
            let dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from("./mdmd-dev-data"));
            Config::development(listen, dir)
        }
        (None, false) => anyhow::bail!(
            "give a configuration file with --config (see docs/reference/config.md), or --dev for a local development instance"
        ),
    };
    if args.dev {
        cfg.development = true;
        cfg.keystore.backend = mdmd::config::KeystoreBackend::Software;
    }
    if let Some(backend) = args.keystore {
        cfg.keystore.backend = backend;
    }
    if let Some(tcti) = &args.tcti {
        cfg.keystore.tcti = tcti.clone();
    }
    if let Some(dir) = &args.data_dir {
        cfg.server.data_dir = dir.clone();
    }
    if !args.listen.is_empty() {
        cfg.server.listen = args.listen.clone();
    }
    if let Some(url) = &args.base_url {
        cfg.server.base_url = url.clone();
    }
    cfg.ade
        .device_ca_roots
        .extend(args.ade_root.iter().cloned());
    if let Some(url) = &args.apns_url {
        cfg.apns.url = url.clone();
    }
    if let Some(ca) = &args.apns_ca {
        cfg.apns.ca_file = Some(ca.clone());
    }
    if let Some(url) = &args.abm_url {
        cfg.abm.url = url.clone();
    }
    if let Some(ca) = &args.abm_ca {
        cfg.abm.ca_file = Some(ca.clone());
    }
    if let Some(f) = args.log_format {
        cfg.log.format = f;
    }
    cfg.validate()?;
    Ok(cfg)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = build_config(&args)?;
    mdmd::logging::init(cfg.log.format, &cfg.log.level)?;
    // Handlers go in before start-up and before READY=1: systemd may send SIGTERM the moment
    // it sees READY, and a signal arriving before the handler exists would kill the daemon
    // with the default action instead of a clean stop.
    let signals = StopSignals::install();
    // The daemon holds the unsealed data key and the appliance's private keys in memory: no
    // core dump may write them to disk, and no process of the same user may ptrace it. (Swap
    // is kept out by the unit's MemorySwapMax=0; mlockall would make the whole daemon's memory
    // count against RLIMIT_MEMLOCK and fail allocations beyond it.)
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!(error = %e, "cannot mark the daemon non-dumpable; a core dump could hold its keys");
    }
    let running = match mdmd::start(cfg).await {
        Ok(r) => r,
        Err(e) => {
            error!("start-up failed: {e:#}");
            return Err(e);
        }
    };
    let stop = running.shutdown_handle();
    tokio::spawn(async move {
        signals.wait().await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let _ = stop.send(true);
    });
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);
    info!("ready");
    running.wait().await
}

/// SIGTERM and SIGINT, registered with the runtime as soon as the daemon starts.
struct StopSignals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl StopSignals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Self(Some((term, int))),
            _ => {
                error!("cannot install signal handlers; stop the daemon with SIGKILL");
                Self(None)
            }
        }
    }

    async fn wait(self) {
        let Some((mut term, mut int)) = self.0 else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { config } => {
            Config::load(&config).map(|_| println!("{}: ok", config.display()))
        }
        Command::Restore(args) => restore(args),
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(serve(*args))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mdmd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
