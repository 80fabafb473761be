//! `mdm-simdevice`: enrolls simulated Apple devices into an MDM server and runs one
//! command session for each, printing what happened.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use mdm_sim::apple::AppleStandIn;
use mdm_sim::device::{DeviceKind, SimDevice};
use mdm_sim::http::HttpClient;
use mdm_sim::x509;

#[derive(Parser)]
#[command(version, about = "Simulated Apple devices for testing an MDM server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the stand-in Apple device CA.
    AppleCa {
        #[command(subcommand)]
        action: AppleCaAction,
    },
    /// Enroll devices, then run one command session for each.
    Enroll(EnrollArgs),
}

#[derive(Subcommand)]
enum AppleCaAction {
    /// Create the stand-in root and intermediate in DIR (kept if already there).
    Init {
        /// Directory for the PEM files.
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Iphone,
    Ipad,
    Mac,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["ade", "web", "link"])))]
struct EnrollArgs {
    /// ADE: POST signed MachineInfo to this URL (the DEP profile `url`).
    #[arg(long)]
    ade: Option<String>,
    /// ADE web enrollment: GET this `configuration_web_url` with x-apple-aspen-deviceinfo.
    #[arg(long)]
    web: Option<String>,
    /// Manual enrollment: GET this enrollment-link URL.
    #[arg(long)]
    link: Option<String>,
    /// CA certificate(s) (PEM) the server's TLS certificate and profile signer chain to.
    #[arg(long)]
    ca: PathBuf,
    /// Stand-in Apple CA directory (from `apple-ca init`); needed for --ade and --web.
    #[arg(long)]
    apple_dir: Option<PathBuf>,
    /// UDID for the device (only with --count 1).
    #[arg(long)]
    udid: Option<String>,
    /// How many devices to enroll.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Device type.
    #[arg(long, value_enum, default_value_t = Kind::Iphone)]
    kind: Kind,
    /// Report AwaitingConfiguration in TokenUpdate (stay in Setup Assistant).
    #[arg(long)]
    awaiting_configuration: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::AppleCa {
            action: AppleCaAction::Init { dir },
        } => {
            let ca = AppleStandIn::load_or_generate(&dir)?;
            println!(
                "Apple stand-in root: {}",
                AppleStandIn::root_path(&dir).display()
            );
            println!(
                "root SHA-256: {}",
                x509::fingerprint_sha256(ca.root()).context("fingerprint")?
            );
            Ok(())
        }
        Command::Enroll(args) => enroll(args).await,
    }
}

async fn enroll(args: EnrollArgs) -> Result<()> {
    if args.udid.is_some() && args.count != 1 {
        bail!("--udid can only be used with --count 1");
    }
    let apple = match (&args.apple_dir, args.ade.is_some() || args.web.is_some()) {
        (Some(dir), _) => Some(AppleStandIn::load(dir).context("loading the Apple stand-in CA")?),
        (None, true) => bail!("--ade and --web need --apple-dir"),
        (None, false) => None,
    };
    let ca_pem =
        std::fs::read(&args.ca).with_context(|| format!("reading {}", args.ca.display()))?;
    let ca_certs = x509::certificates_from_pem(&ca_pem).context("parsing the CA PEM")?;
    if ca_certs.is_empty() {
        bail!("{} holds no CERTIFICATE block", args.ca.display());
    }
    let client = HttpClient::new(&ca_certs, None)?;
    let kind = match args.kind {
        Kind::Iphone => DeviceKind::IPhone,
        Kind::Ipad => DeviceKind::IPad,
        Kind::Mac => DeviceKind::Mac,
    };
    let mut failures = 0usize;
    for n in 0..args.count {
        let mut device = SimDevice::random(kind)?;
        if let Some(udid) = &args.udid {
            device.udid = udid.clone();
        }
        device.awaiting_configuration = args.awaiting_configuration;
        for cert in &ca_certs {
            device.trust_ca(cert.clone());
        }
        match run_device(&mut device, &client, &args, apple.as_ref(), &ca_certs).await {
            Ok(()) => {}
            Err(e) => {
                failures += 1;
                println!("[{n}] {} FAILED: {e}", device.udid);
            }
        }
    }
    if failures > 0 {
        bail!("{failures} of {} devices failed", args.count);
    }
    Ok(())
}

async fn run_device(
    device: &mut SimDevice,
    client: &HttpClient,
    args: &EnrollArgs,
    apple: Option<&AppleStandIn>,
    ca: &[x509_cert::Certificate],
) -> Result<()> {
    let profile = match (&args.ade, &args.web, &args.link, apple) {
        (Some(url), _, _, Some(apple)) => device.ade_enroll(client, url, apple).await?,
        (_, Some(url), _, Some(apple)) => device.ade_web_enroll(client, url, apple).await?,
        (_, _, Some(url), _) => device.manual_enroll(client, url).await?,
        _ => bail!("no enrollment source"),
    };
    let installed = device.install_profile(&profile, Some(ca))?;
    let topic = installed
        .mdm
        .as_ref()
        .map(|m| m.topic.clone())
        .unwrap_or_default();
    let identifier = installed.identifier.clone();
    println!(
        "{} {} profile {identifier} (topic {topic})",
        device.udid, device.serial
    );
    device.scep_enroll().await?;
    let cn = device
        .identity()
        .and_then(|id| x509::common_name(&id.certificate.tbs_certificate.subject))
        .unwrap_or_default();
    println!("{} SCEP identity issued (CN {cn})", device.udid);
    device.authenticate().await?;
    device.token_update().await?;
    println!("{} Authenticate and TokenUpdate accepted", device.udid);
    let commands = device.run_until_idle().await?;
    for c in &commands {
        println!(
            "{} {} {} -> {}",
            device.udid,
            c.command_uuid,
            c.request_type,
            c.status.as_str()
        );
    }
    println!("{} idle after {} command(s)", device.udid, commands.len());
    Ok(())
}
