//! `mdm-bench`: end-to-end benchmark of the MDM appliance daemon. See the library
//! documentation and `docs/benchmarks.md`; `scripts/bench` builds and runs it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mdm_bench::worker::{self, WorkerOptions};
use mdm_bench::Options;

#[derive(Parser)]
#[command(
    name = "mdm-bench",
    version,
    about = "Benchmark mdmd: enroll simulated devices, drive check-in and command round trips, optionally fan pushes out, sync ABM devices, and import and list pre-enrolled devices",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: Options,
}

#[derive(Subcommand)]
enum Sub {
    /// A round-trip worker process (started by mdm-bench itself).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        identities: PathBuf,
        #[arg(long)]
        index: usize,
        #[arg(long)]
        workers: usize,
        #[arg(long)]
        concurrency: usize,
        #[arg(long)]
        commands: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Sub::Worker {
            identities,
            index,
            workers,
            concurrency,
            commands,
        }) => {
            let opts = WorkerOptions {
                identities,
                index,
                workers,
                concurrency,
                commands,
            };
            match worker::main(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mdm-bench worker {index}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => match mdm_bench::run(&cli.run) {
            Ok(report) => {
                if cli.run.json {
                    match serde_json::to_string_pretty(&report) {
                        Ok(json) => println!("{json}"),
                        Err(e) => {
                            eprintln!("mdm-bench: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                } else {
                    print!("{}", report.to_text());
                }
                // Figures from a run where requests failed are printed, but the exit status
                // says they are not to be trusted.
                let failed = report
                    .rounds
                    .iter()
                    .chain(report.large.as_ref().map(|l| &l.round))
                    .any(|r| {
                        r.failed_sessions > 0
                            || r.mismatched_sessions > 0
                            || r.verified_acknowledged != r.queued_deliveries
                    });
                let failed = failed
                    || report.fanout.as_ref().is_some_and(|f| f.failed())
                    || report.abm.as_ref().is_some_and(|a| a.failed())
                    || report.lifecycle.as_ref().is_some_and(|l| l.failed());
                if failed {
                    eprintln!("mdm-bench: some requests failed; see the figures above");
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("mdm-bench: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
