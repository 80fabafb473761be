//! `mdmctl`: the MDM appliance's admin command line.
//!
//! It talks to the daemon's admin API (`/api/v1`, JSON over HTTPS) and never opens the
//! database itself: redb allows one process per database file, and that process is the
//! daemon. The connection trusts only the appliance CA given with `--ca`, and authenticates
//! with a bearer token read from `--token-file`. Human output is aligned text; `--json`
//! prints the API's own answer. Exit codes: 0 success, 1 the API refused (or Apple refused
//! some of the devices of a per-device ABM request, or a pre-enrollment import wrote nothing
//! because of row errors or duplicates), 2 usage (including unreadable local
//! files and unconfirmed destructive commands), 3 the appliance could not be reached or TLS
//! failed. The full reference is `docs/reference/cli.md`.
//!
//! `mdmctl abm ...` covers Apple Business Manager: connections and their server tokens,
//! device sync, enrollment profiles, assignment rules and per-device outcomes. Requests the
//! appliance answers only after talking to Apple (a sync, an assignment) get ten minutes
//! instead of two.
//!
//! The device lifecycle: `devices` lists the joined record of each serial number with its
//! status and the reason for it, `release` sends DeviceConfigured to a device held in Setup
//! Assistant, `preenroll` imports the devices a site expects from CSV, `activity` reads the
//! audit log (relative `--since 2h` is turned into an RFC 3339 time here), and `settings`
//! changes the lifecycle policy. `enrollments` shows the enrollment records themselves, by
//! enrollment ID. Whole-list exports (`--csv`, `--jsonl`) also get ten minutes.
//!
//! Configuration profiles: `groups` manages device groups (static lists of serial numbers,
//! or rules written as `--where "FIELD OP VALUE"`), `profiles` uploads `.mobileconfig` files,
//! assigns them to groups and devices, and shows where each device's install stands. Changes
//! print what the appliance queued (installs and removals).
//!
//! Local user accounts: `users` manages the people who sign in during Setup Assistant on
//! devices whose ABM enrollment profile has `"authentication": "local"`. Passwords are never
//! arguments (shell history, `ps`): they are typed twice on the terminal with echo off, or
//! read from the first line of standard input when that is a pipe or a file.
//!
//! Backups: `backup create` has the appliance make an encrypted backup of itself under a
//! passphrase (typed twice on the terminal, or the first line of `--passphrase-file` or of
//! standard input with `--passphrase-stdin`; at least 12 characters, checked here first) and
//! writes it to `FILE.partial` (mode 0600) as it arrives, then flushes and renames it, so FILE
//! is never half a backup. It gets thirty minutes. Restoring is `mdmd restore`, on the
//! appliance, with the daemon stopped.
//!
//! What it cannot do yet: it speaks HTTP/1.1 only, trusts no system roots (an appliance
//! behind a publicly-trusted reverse proxy still needs that proxy's CA in `--ca`), does not
//! use an HTTP proxy, shows no progress during a long ABM sync or a large pre-enrollment
//! import, has no command to pre-enroll one device without a file, and has no commands for
//! building typed commands with arguments (`Settings`): those go through `command send
//! --plist`. `profiles status --state` filters the pages it fetched, not on the appliance.
//! The password and passphrase prompts need a Unix terminal; elsewhere passwords come
//! through `--password-stdin` and passphrases through `--passphrase-file` or
//! `--passphrase-stdin`. `backup create` shows no progress (the appliance builds the whole
//! backup before it sends the first byte), and the backup file is not made private on
//! systems other than Unix.

mod cli;
mod client;
mod commands;
mod error;
mod password;
mod render;
mod table;
mod token;
mod ttl;
mod when;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::Cli;
use crate::client::{tls_config, ApiClient, Endpoint};
use crate::commands::Output;
use crate::error::CliError;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout (exit 0) and usage errors to stderr (2).
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(error::EXIT_USAGE));
        }
    };
    match run(&cli) {
        Ok(output) => print(&output),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{}", e.stderr_line());
            ExitCode::from(e.exit_code())
        }
    }
}

/// Checks the local configuration, then runs the command on a single-threaded runtime: one
/// command makes a few sequential requests, so more threads would only cost start-up time.
fn run(cli: &Cli) -> Result<Output, CliError> {
    let server = cli.server.as_deref().ok_or(CliError::NoServer)?;
    let endpoint = Endpoint::parse(server)?;
    let token_file = cli.token_file.as_deref().ok_or(CliError::NoTokenFile)?;
    let token = token::read_token(token_file)?;
    let tls = tls_config(cli.ca.as_deref(), endpoint.origin())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let mut client = ApiClient::new(endpoint, tls, token);
    runtime.block_on(commands::execute(&mut client, &cli.command, cli.json))
}

/// Writes the result. A closed stdout (`mdmctl devices list | head`) is not an error.
fn print(output: &Output) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(output.stdout.as_bytes())
        .and_then(|()| stdout.write_all(&output.binary))
        .and_then(|()| stdout.flush())
    {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = writeln!(std::io::stderr(), "error: cannot write the output: {e}");
            return ExitCode::from(error::EXIT_USAGE);
        }
    }
    let mut stderr = std::io::stderr().lock();
    for note in &output.notes {
        let _ = writeln!(stderr, "{note}");
    }
    match &output.error {
        Some(e) => {
            let _ = writeln!(stderr, "{}", e.stderr_line());
            ExitCode::from(e.exit_code())
        }
        None => ExitCode::SUCCESS,
    }
}
