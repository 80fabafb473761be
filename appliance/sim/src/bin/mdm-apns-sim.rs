//! `mdm-apns-sim`: a stand-in for Apple Push Notification service, for running the MDM
//! appliance against on a development machine.
//!
//! `mdm-apns-sim --dir D [--listen 127.0.0.1:PORT]` keeps its stand-in Apple CAs in D,
//! prints the URL to configure as the APNs endpoint and the CA files, then prints one
//! JSON line per accepted push until interrupted. `mdm-apns-sim issue --dir D --csr FILE
//! --topic T --out cert.pem` plays Apple's push certificates portal.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mdm_sim::apns::{self, ApnsAuthorities, ApnsConfig, ApnsSimulator};
use mdm_sim::x509;

#[derive(Parser)]
#[command(
    version,
    about = "APNs simulator: accepts MDM pushes over HTTP/2 with client certificates",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Directory holding the stand-in CAs (created and filled on first use).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Extra DNS name or IP address for the TLS certificate (repeatable).
    #[arg(long = "server-name")]
    server_names: Vec<String>,
    /// Send GOAWAY on each connection after this many streams.
    #[arg(long)]
    goaway_after: Option<u64>,
    /// Answer 410 Unregistered for this device token (hex, repeatable).
    #[arg(long = "unregistered")]
    unregistered: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Issue a push certificate as Apple's push certificates portal would.
    Issue {
        /// Directory holding the stand-in CAs (created and filled on first use).
        #[arg(long)]
        dir: PathBuf,
        /// The request: a CSR or public key (DER or PEM), or a vendor-signed portal
        /// request (base64 plist).
        #[arg(long)]
        csr: PathBuf,
        /// Topic (certificate UID); a new com.apple.mgmt.External.<uuid> if omitted.
        #[arg(long)]
        topic: Option<String>,
        /// Where to write the PEM certificate.
        #[arg(long)]
        out: PathBuf,
    },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Issue {
            dir,
            csr,
            topic,
            out,
        }) => issue(&dir, &csr, topic, &out),
        None => serve(cli.serve).await,
    }
}

fn issue(
    dir: &std::path::Path,
    csr: &std::path::Path,
    topic: Option<String>,
    out: &std::path::Path,
) -> Result<()> {
    let authorities = ApnsAuthorities::load_or_generate(dir)
        .with_context(|| format!("loading the stand-in CAs in {}", dir.display()))?;
    let request = std::fs::read(csr).with_context(|| format!("reading {}", csr.display()))?;
    let topic = topic.unwrap_or_else(apns::new_mdm_topic);
    let cert = authorities.issue_push_certificate(&topic, &request)?;
    std::fs::write(out, x509::to_pem(&cert)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("topic: {topic}");
    println!("certificate: {}", out.display());
    println!("SHA-256: {}", x509::fingerprint_sha256(&cert)?);
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    let dir = args
        .dir
        .context("--dir is required to serve (the CA files go there)")?;
    let authorities = ApnsAuthorities::load_or_generate(&dir)
        .with_context(|| format!("loading the stand-in CAs in {}", dir.display()))?;
    let mut config = ApnsConfig {
        listen: args.listen,
        authorities: Some(authorities),
        ..ApnsConfig::default()
    };
    config.server_names.extend(args.server_names);
    let sim = ApnsSimulator::start(config).await?;
    sim.set_goaway_after_streams(args.goaway_after);
    for token in &args.unregistered {
        sim.mark_unregistered(token);
    }
    let mut pushes = sim.subscribe_all();
    // The first line is the URL, so scripts can read it and go.
    println!("{}", sim.url());
    println!(
        "server CA: {}",
        ApnsAuthorities::server_ca_path(&dir).display()
    );
    println!("push CA: {}", ApnsAuthorities::push_ca_path(&dir).display());
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let Some(push) = push else { break };
                let line = serde_json::json!({
                    "event": "push",
                    "token": push.token,
                    "topic": push.topic,
                    "mdm": push.push_magic,
                    "apns_id": push.apns_id,
                    "connection": push.connection_id,
                });
                println!("{line}");
            }
            signal = tokio::signal::ctrl_c() => {
                signal.context("waiting for Ctrl-C")?;
                break;
            }
        }
    }
    let counters = sim.counters();
    eprintln!(
        "connections {}, streams {}, pushes accepted {}",
        counters.connections_opened, counters.streams_served, counters.pushes_accepted
    );
    sim.shutdown().await;
    Ok(())
}
