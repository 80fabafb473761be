//! `mdm-abm-sim`: a stand-in for Apple Business Manager's device assignment service, for
//! running the MDM appliance (or its tests and benchmarks) against.
//!
//! `mdm-abm-sim [--listen 127.0.0.1:0] [--servers N] [--devices N] [--state-dir DIR]`
//! starts the simulator with N MDM servers of one organisation, each with N generated
//! devices, prints its base URL as the first line on stdout once it is ready, writes
//! `ca.pem`, `base-url` and `control-token` into the state directory, and serves until
//! interrupted (Ctrl-C or SIGTERM). It is driven through the JSON control API under
//! `/_sim/` documented in `mdm_sim::abm`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use mdm_sim::abm::{AbmSimConfig, AbmSimulator, ServerId, ServerSpec};

#[derive(Parser)]
#[command(
    version,
    about = "Apple Business Manager (device assignment API) simulator with a JSON control API"
)]
struct Cli {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// How many MDM servers to create (all in one organisation).
    #[arg(long, default_value_t = 1)]
    servers: usize,
    /// How many generated devices each MDM server starts with.
    #[arg(long, default_value_t = 0)]
    devices: usize,
    /// Directory for ca.pem, base-url and control-token (created if missing).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Organisation name.
    #[arg(long, default_value = "Example Organization")]
    org: String,
    /// Extra DNS name or IP address for the TLS certificate (repeatable).
    #[arg(long = "server-name")]
    server_names: Vec<String>,
    /// Replace sessions after this many calls (0: never).
    #[arg(long, default_value_t = 25)]
    rotate_session_after: u32,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut token = [0u8; 24];
    aws_lc_rs::rand::fill(&mut token).context("generating the control token")?;
    let mut config = AbmSimConfig {
        listen: cli.listen,
        servers: (1..=cli.servers.max(1))
            .map(|i| ServerSpec::new(format!("MDM Server {i}"), cli.org.clone()))
            .collect(),
        rotate_session_after: (cli.rotate_session_after > 0).then_some(cli.rotate_session_after),
        control_token: Some(hex::encode(token)),
        ..AbmSimConfig::default()
    };
    config.server_names.extend(cli.server_names);
    let sim = AbmSimulator::start(config)
        .await
        .context("starting the ABM simulator")?;
    for server in 0..cli.servers.max(1) {
        sim.add_devices(ServerId(server), cli.devices)?;
    }
    if let Some(dir) = &cli.state_dir {
        sim.write_state_dir(dir)
            .with_context(|| format!("writing the state files into {}", dir.display()))?;
    }
    // The first line is the URL, so scripts can read it and go.
    println!("{}", sim.base_url());
    if let Some(dir) = &cli.state_dir {
        println!("state: {}", dir.display());
    }

    wait_for_signal().await?;
    let counters = sim.counters();
    let total: u64 = counters.requests.values().sum();
    eprintln!(
        "requests {total}, sessions issued {}, largest assignment batch {}",
        counters.sessions_issued, counters.largest_assign_batch
    );
    sim.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            signal = tokio::signal::ctrl_c() => signal.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
