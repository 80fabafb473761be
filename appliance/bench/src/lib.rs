//! `mdm-bench`: an end-to-end benchmark of the MDM appliance daemon (`mdmd`), run against a
//! release build on this machine's loopback interface. It prints figures; it never asserts on
//! time. `docs/benchmarks.md` explains how to run it and what each figure means.
//!
//! A run has up to six phases (`--only` runs just some of the last three). The first three
//! run against one `mdmd serve --dev` child process in a temporary data directory (so its CPU
//! time and memory, read from `/proc`, are its own), which pushes to a closed loopback port:
//!
//! 1. **Enrollment** ([`enroll`]): N simulated iPhones (`mdm-sim`) enroll through the real
//!    protocol (enrollment link, signed profile, SCEP, Authenticate, TokenUpdate), several at
//!    a time. Devices share a pool of pre-generated RSA keys.
//! 2. **Round trips** ([`worker`], [`pool`]): K commands are queued per device through the admin
//!    API; then C concurrent clients, split over W worker processes, drive every device's
//!    command session (Idle, K × (command, Acknowledged report), empty answer) over a
//!    kept-alive TLS 1.3 connection authenticated with the device's certificate. Repeated
//!    rounds show first contact (full handshakes) and reconnection (resumed TLS sessions).
//!    After each round the admin API confirms every result was recorded.
//! 3. **Large database** (optional, [`seed`]): the daemon is stopped, enrollment rows are
//!    seeded straight into its database up to a total, it is restarted, one more round is
//!    driven, and its memory is measured.
//! 4. **Push fan-out** (optional, [`fanout`]): a second daemon, pushing to an APNs simulator
//!    in this process, gets N seeded devices with push tokens; each round queues one command
//!    for all of them and measures pushes/s, the time until every device was pushed, the
//!    latency of probe requests meanwhile, and the daemon's memory after the round.
//! 5. **ABM** (optional, [`abm`]): another daemon gets an Apple Business Manager connection to
//!    an ABM simulator in this process holding N devices; a full sync with the assignment of
//!    every device, and an incremental sync of changed devices, are timed, with the daemon's
//!    CPU time and peak memory during each.
//! 6. **Device lifecycle** (optional, [`lifecycle`]): another daemon imports N generated
//!    pre-enrollment rows from CSV files through the admin API (timed, with CPU and peak
//!    memory); then, restarted on a database where part of those devices got seeded
//!    enrollments in various states, it answers a mix of device list queries (filters, search,
//!    every sort, cursor pages) whose latency, sort order and totals are checked, one query
//!    walked to its end, and a CSV export of the whole list.
//!
//! What it cannot do yet: drive devices with `Mdm-Signature` instead of TLS client
//! certificates, mix command types or answer with realistic result payloads (reports are
//! minimal `Acknowledged` plists), exercise ABM with more than one connection, profile or
//! rule, or with Apple's failures (throttling, cool-downs), give the lifecycle phase's devices
//! ABM records (its statuses come from pre-enrollment and enrollments only), have pushed
//! devices connect (the fan-out's devices are seeded rows that never connect), vary the daemon's number of APNs connections
//! (`cargo bench -p mdm-apns` compares one and four against the push client alone), or run
//! against a remote appliance (CPU and memory are read from the local `/proc`). Server CPU
//! figures include the daemon's logging to a file; the client shares the machine's cores with
//! the server.

pub mod abm;
pub mod admin;
pub mod daemon;
pub mod enroll;
pub mod error;
pub mod fanout;
pub mod histogram;
pub mod identities;
pub mod lifecycle;
pub mod pool;
pub mod procfs;
pub mod report;
pub mod seed;
pub mod tls;
pub mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::admin::{Admin, MAX_TARGETS_PER_CALL};
use crate::daemon::{Daemon, PushService};
pub use crate::error::BenchError;
use crate::identities::IdentityFile;
use crate::pool::WorkerPool;
use crate::procfs::ticks_to_duration;
use crate::report::{
    EnrollmentFigures, LargeFigures, Machine, MemoryFigures, Percentiles, Report, RoundFigures,
    Settings, SettleFigures, ThreadCpu,
};
use crate::worker::RoundResult;

/// A phase that starts a daemon of its own, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Phase 4, push fan-out (`--fanout`).
    Fanout,
    /// Phase 5, ABM sync (`--abm-devices`).
    Abm,
    /// Phase 6, device list and pre-enrollment import (`--lifecycle-devices`).
    Lifecycle,
}

impl Phase {
    /// The name `--only` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Fanout => "fanout",
            Phase::Abm => "abm",
            Phase::Lifecycle => "lifecycle",
        }
    }
}

/// Options of a benchmark run.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Devices to enroll through the protocol [default: 10000; 1000 with --quick].
    #[arg(long)]
    pub devices: Option<usize>,
    /// Concurrent round-trip clients, all worker processes together.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Worker processes the round-trip clients are split over.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Commands queued per device per round [default: 4; 2 with --quick].
    #[arg(long)]
    pub commands: Option<usize>,
    /// Round-trip rounds: the first connects every device afresh, later ones resume TLS
    /// sessions.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Devices enrolling at the same time.
    #[arg(long, default_value_t = 16)]
    pub enroll_concurrency: usize,
    /// Pre-generated RSA keys the devices share.
    #[arg(long, default_value_t = 16)]
    pub key_pool: usize,
    /// The command queued (any type the admin API accepts by name without arguments).
    #[arg(long, default_value = "ProfileList")]
    pub request_type: String,
    /// Afterwards, seed enrollment rows up to this total and measure the daemon's memory
    /// (e.g. 100000).
    #[arg(long)]
    pub rss_devices: Option<usize>,
    /// Afterwards, fan one command out to this many devices seeded with push tokens, through
    /// an APNs simulator in this process, and measure pushes/s, fan-out time, responsiveness
    /// and memory (e.g. 50000).
    #[arg(long)]
    pub fanout: Option<usize>,
    /// Fan-out rounds (each queues one more command for every device and pushes them all).
    #[arg(long, default_value_t = 3)]
    pub fanout_rounds: usize,
    /// Afterwards, sync this many devices from an ABM simulator in this process and assign
    /// them a profile, then sync changes, and measure time, CPU and memory (e.g. 100000).
    #[arg(long)]
    pub abm_devices: Option<usize>,
    /// Devices changed in the ABM simulator before the timed incremental sync.
    #[arg(long, default_value_t = 1000)]
    pub abm_changes: usize,
    /// Afterwards, import this many pre-enrollment rows from CSV files into another daemon,
    /// give part of them seeded enrollments, and measure the device list and its CSV export
    /// (e.g. 100000).
    #[arg(long)]
    pub lifecycle_devices: Option<usize>,
    /// Rows per CSV file the lifecycle phase imports.
    #[arg(long, default_value_t = lifecycle::ROWS_PER_FILE)]
    pub lifecycle_file_rows: usize,
    /// Device list requests in the lifecycle phase's measured mix (at least this many).
    #[arg(long, default_value_t = lifecycle::MIN_REQUESTS)]
    pub lifecycle_requests: usize,
    /// Run only these of the phases that start a daemon of their own (comma-separated), and
    /// skip enrollment and round trips (phases 1 to 3). Each phase named still needs its own
    /// option (`--fanout`, `--abm-devices`, `--lifecycle-devices`).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Phase>,
    /// A smaller, faster run (1,000 devices, 2 commands per round).
    #[arg(long)]
    pub quick: bool,
    /// Print the figures as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// The daemon binary [default: `mdmd` next to this executable].
    #[arg(long)]
    pub mdmd: Option<PathBuf>,
    /// Keep the temporary directory (daemon data, log, identities) and print its path.
    #[arg(long)]
    pub keep: bool,
}

impl Options {
    /// Devices to enroll, after `--quick`.
    pub fn device_count(&self) -> usize {
        self.devices
            .unwrap_or(if self.quick { 1_000 } else { 10_000 })
    }

    /// Commands per device per round, after `--quick`.
    pub fn command_count(&self) -> usize {
        self.commands.unwrap_or(if self.quick { 2 } else { 4 })
    }

    fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::Options(m.to_owned()));
        if self.device_count() == 0 {
            return bad("--devices must be at least 1");
        }
        if self.workers == 0 || self.concurrency < self.workers {
            return bad("--workers must be at least 1 and --concurrency at least --workers");
        }
        if self.rounds == 0 || self.enroll_concurrency == 0 || self.key_pool == 0 {
            return bad("--rounds, --enroll-concurrency and --key-pool must be at least 1");
        }
        if self.rss_devices.is_some_and(|n| n <= self.device_count()) {
            return bad("--rss-devices must be larger than --devices (it is a total)");
        }
        if self.fanout == Some(0) || self.fanout_rounds == 0 {
            return bad("--fanout and --fanout-rounds must be at least 1");
        }
        if self.lifecycle_devices == Some(0) || self.lifecycle_requests == 0 {
            return bad("--lifecycle-devices and --lifecycle-requests must be at least 1");
        }
        if !(1..=lifecycle::MAX_FILE_ROWS).contains(&self.lifecycle_file_rows) {
            return Err(BenchError::Options(format!(
                "--lifecycle-file-rows must be from 1 to {} (the import's limit per file)",
                lifecycle::MAX_FILE_ROWS
            )));
        }
        if self
            .lifecycle_devices
            .is_some_and(|n| n > lifecycle::MAX_DEVICES)
        {
            return Err(BenchError::Options(format!(
                "--lifecycle-devices must be at most {}",
                lifecycle::MAX_DEVICES
            )));
        }
        if !self.only.is_empty() {
            for (phase, enabled, option) in [
                (Phase::Fanout, self.fanout.is_some(), "--fanout"),
                (Phase::Abm, self.abm_devices.is_some(), "--abm-devices"),
                (
                    Phase::Lifecycle,
                    self.lifecycle_devices.is_some(),
                    "--lifecycle-devices",
                ),
            ] {
                let listed = self.only.contains(&phase);
                if listed && !enabled {
                    return Err(BenchError::Options(format!(
                        "--only {} needs {option}",
                        phase.as_str()
                    )));
                }
                if enabled && !listed {
                    return Err(BenchError::Options(format!(
                        "{option} is given but --only leaves out {}",
                        phase.as_str()
                    )));
                }
            }
            if self.rss_devices.is_some() {
                return bad("--rss-devices is part of the phases --only skips");
            }
        }
        if let Some(n) = self.abm_devices {
            if n == 0 || self.abm_changes == 0 || self.abm_changes > n {
                return bad(
                    "--abm-devices and --abm-changes must be at least 1, and --abm-changes at \
                     most --abm-devices",
                );
            }
        }
        Ok(())
    }
}

/// Progress goes to stderr, in text and JSON mode alike, so that stdout holds only the report.
pub(crate) fn progress(message: &str) {
    eprintln!("mdm-bench: {message}");
}

/// Everything the phases share.
struct Run<'a> {
    opts: &'a Options,
    rt: &'a tokio::runtime::Runtime,
    ticks_per_second: u64,
    daemon: Daemon,
    admin: Admin,
    udids: Vec<String>,
}

impl Run<'_> {
    fn seconds(&self, ticks: u64) -> f64 {
        ticks_to_duration(ticks, self.ticks_per_second).as_secs_f64()
    }

    /// Queues the round's commands, drives one round in the workers, checks the results
    /// through the admin API and turns it all into figures.
    fn round(&mut self, pool: &mut WorkerPool, round: usize) -> Result<RoundFigures, BenchError> {
        let commands = self.opts.command_count();
        let mut uuids = Vec::new();
        for _ in 0..commands {
            for chunk in self.udids.chunks(MAX_TARGETS_PER_CALL) {
                uuids.push(
                    self.rt
                        .block_on(self.admin.queue(chunk, &self.opts.request_type))?,
                );
            }
        }

        // Queueing pushes every target in the background; that is the fan-out's work
        // (phase 4 measures it), not the protocol requests', so the round waits it out.
        let settled = self.daemon.settle()?;

        let server_before = self.daemon.cpu()?;
        let threads_before = procfs::thread_ticks(self.daemon.pid)?;
        let self_before = procfs::cpu_ticks(None)?;
        let started = Instant::now();
        let results = pool.round()?;
        let wall = started.elapsed();
        let server_ticks = self.daemon.cpu()?.own().saturating_sub(server_before.own());
        let threads_after = procfs::thread_ticks(self.daemon.pid)?;
        let self_ticks = procfs::cpu_ticks(None)?
            .own()
            .saturating_sub(self_before.own());
        self.daemon.check_alive()?;

        let mut total = RoundResult::default();
        for r in &results {
            total.merge(r);
        }
        let mut verified = 0;
        let mut queued = 0;
        for uuid in &uuids {
            let (acked, deliveries) = self.rt.block_on(self.admin.acknowledged(uuid))?;
            verified += acked;
            queued += deliveries;
        }
        let mut figures = round_figures(
            round,
            self.udids.len(),
            &total,
            wall,
            self.seconds(server_ticks),
            self.seconds(total.cpu_ticks + self_ticks),
            (verified, queued),
        );
        figures.server_memory = self.daemon.memory()?.into();
        figures.database_mib = self.daemon.database_mib()?;
        figures.settle = SettleFigures {
            wall_seconds: settled.wall.as_secs_f64(),
            server_cpu_ms: self.seconds(settled.server_ticks) * 1000.0,
            quiet: settled.quiet,
        };
        figures.server_threads = thread_split(
            &threads_before,
            &threads_after,
            self.ticks_per_second,
            wall.as_secs_f64(),
        );
        Ok(figures)
    }
}

/// Per thread name, the CPU time between two [`procfs::thread_ticks`] readings divided by the
/// wall time between them, busiest first; names below 0.01 core are left out.
pub(crate) fn thread_split(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    ticks_per_second: u64,
    wall_seconds: f64,
) -> Vec<ThreadCpu> {
    let wall_seconds = wall_seconds.max(1e-9);
    let mut threads: Vec<ThreadCpu> = after
        .iter()
        .map(|(name, ticks)| {
            let earlier = before.get(name).copied().unwrap_or(0);
            ThreadCpu {
                name: name.clone(),
                cores: ticks_to_duration(ticks.saturating_sub(earlier), ticks_per_second)
                    .as_secs_f64()
                    / wall_seconds,
            }
        })
        .filter(|t| t.cores >= 0.01)
        .collect();
    threads.sort_by(|a, b| b.cores.total_cmp(&a.cores));
    threads
}

/// The figures of a round that follow from the workers' results and the CPU times; memory,
/// database size and the per-thread split are filled in by the caller.
fn round_figures(
    round: usize,
    devices: usize,
    total: &RoundResult,
    wall: Duration,
    server_cpu: f64,
    client_cpu: f64,
    (verified, queued): (u64, u64),
) -> RoundFigures {
    let requests = total.requests.max(1) as f64;
    let wall_s = wall.as_secs_f64().max(1e-9);
    RoundFigures {
        round,
        devices,
        sessions: total.sessions,
        resumed_sessions: total.resumed_sessions,
        requests: total.requests,
        acknowledged: total.acknowledged,
        failed_sessions: total.failed_sessions,
        mismatched_sessions: total.mismatched_sessions,
        verified_acknowledged: verified,
        queued_deliveries: queued,
        wall_seconds: wall_s,
        requests_per_second: total.requests as f64 / wall_s,
        latency_ms: Percentiles::from(&total.latency),
        connect_ms: Percentiles::from(&total.connect),
        server_cpu_ms_per_request: server_cpu * 1000.0 / requests,
        client_cpu_ms_per_request: client_cpu * 1000.0 / requests,
        server_cores: server_cpu / wall_s,
        client_cores: client_cpu / wall_s,
        server_threads: Vec::new(),
        server_memory: MemoryFigures {
            rss_mib: 0.0,
            peak_rss_mib: 0.0,
        },
        database_mib: 0.0,
        settle: SettleFigures::default(),
        error_samples: total.error_samples.clone(),
    }
}

/// What phases 1 to 3 measured, and the key pool phase 4 reuses.
struct ProtocolFigures {
    enrollment: EnrollmentFigures,
    rounds: Vec<RoundFigures>,
    large: Option<LargeFigures>,
    keys: Vec<mdm_sim::keys::PrivateKey>,
}

/// Runs the benchmark and returns its figures. Fails if the daemon cannot be started, a
/// device cannot enroll or a worker dies; failures of individual round-trip requests are
/// counted in the figures instead.
pub fn run(opts: &Options) -> Result<Report, BenchError> {
    opts.validate()?;
    let (cpus, cpu_model, kernel) = procfs::machine();
    // Private: it holds the daemon's keys and the devices' private keys.
    let dir = tempfile::Builder::new()
        .prefix("mdm-bench-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map_err(BenchError::io("create a temporary directory"))?;
    let binary = match &opts.mdmd {
        Some(path) => path.clone(),
        None => daemon::binary_next_to_self()?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("start the async runtime"))?;

    let protocol = if opts.only.is_empty() {
        Some(protocol_phases(opts, &rt, &binary, dir.path())?)
    } else {
        progress(&format!(
            "--only {}: skipping enrollment and round trips",
            opts.only
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ));
        None
    };
    let fanout = match opts.fanout {
        Some(n) => {
            let keys = match &protocol {
                Some(p) => p.keys.clone(),
                None => {
                    progress(&format!(
                        "generating {} RSA-2048 device keys",
                        opts.key_pool
                    ));
                    rt.block_on(enroll::key_pool(opts.key_pool))?
                }
            };
            Some(fanout::run(
                &rt,
                n,
                opts.fanout_rounds,
                &binary,
                dir.path(),
                &keys,
            )?)
        }
        None => None,
    };
    let abm = match opts.abm_devices {
        Some(n) => Some(abm::run(&rt, n, opts.abm_changes, &binary, dir.path())?),
        None => None,
    };
    let lifecycle = match opts.lifecycle_devices {
        Some(n) => Some(lifecycle::run(
            &rt,
            &lifecycle::Plan {
                devices: n,
                rows_per_file: opts.lifecycle_file_rows,
                min_requests: opts.lifecycle_requests,
            },
            &binary,
            dir.path(),
        )?),
        None => None,
    };
    if opts.keep {
        let kept = dir.keep();
        progress(&format!("kept {}", kept.display()));
    }
    let (enrollment, rounds, large) = match protocol {
        Some(p) => (Some(p.enrollment), p.rounds, p.large),
        None => (None, Vec::new(), None),
    };
    Ok(Report {
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        machine: Machine {
            cpus,
            cpu_model,
            kernel,
        },
        settings: Settings {
            devices: opts.device_count(),
            concurrency: opts.concurrency,
            workers: opts.workers,
            commands_per_round: opts.command_count(),
            rounds: opts.rounds,
            enroll_concurrency: opts.enroll_concurrency,
            key_pool: opts.key_pool,
            request_type: opts.request_type.clone(),
            rss_devices: opts.rss_devices,
            fanout: opts.fanout,
            fanout_rounds: opts.fanout_rounds,
            abm_devices: opts.abm_devices,
            abm_changes: opts.abm_changes,
            lifecycle_devices: opts.lifecycle_devices,
            lifecycle_file_rows: opts.lifecycle_file_rows,
            lifecycle_requests: opts.lifecycle_requests,
            only: opts.only.iter().map(|p| p.as_str().to_owned()).collect(),
        },
        enrollment,
        rounds,
        large,
        fanout,
        abm,
        lifecycle,
    })
}

/// Phases 1 to 3 against one daemon, which is stopped afterwards.
fn protocol_phases(
    opts: &Options,
    rt: &tokio::runtime::Runtime,
    binary: &std::path::Path,
    dir: &std::path::Path,
) -> Result<ProtocolFigures, BenchError> {
    let devices = opts.device_count();
    let data_dir = dir.join("data");
    let log = dir.join("mdmd.log");
    let addr = daemon::free_loopback_addr()?;
    progress(&format!("starting {} on {addr}", binary.display()));
    let daemon = Daemon::start(binary, &data_dir, addr, &log, &PushService::Unreachable)?;
    let ca_pem = rt.block_on(tls::fetch_ca_pem(addr))?;
    let admin = Admin::new(&ca_pem, &daemon.base_url(), &daemon.admin_token()?)?;
    // Phases 1 to 3 push nowhere; the certificate only has to exist (it sets the topic that
    // goes into profiles), so throwaway authorities issue it.
    let apple = mdm_sim::apns::ApnsAuthorities::generate().map_err(BenchError::Apns)?;
    rt.block_on(admin.import_push_cert(&apple))?;
    let (link_id, link_url) = rt.block_on(admin.create_link())?;
    progress(&format!(
        "generating {} RSA-2048 device keys",
        opts.key_pool
    ));
    let keys = rt.block_on(enroll::key_pool(opts.key_pool))?;

    progress(&format!(
        "phase 1: enrolling {devices} devices, {} at a time",
        opts.enroll_concurrency
    ));
    let server_before = daemon.cpu()?;
    let self_before = procfs::cpu_ticks(None)?;
    let started = Instant::now();
    let enrolled = rt.block_on(enroll::enroll(
        devices,
        opts.enroll_concurrency,
        &link_url,
        &ca_pem,
        keys.clone(),
        true,
    ))?;
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    let server_ticks = daemon.cpu()?.own().saturating_sub(server_before.own());
    let self_ticks = procfs::cpu_ticks(None)?
        .own()
        .saturating_sub(self_before.own());
    let ticks_per_second = procfs::clock_ticks_per_second();
    let per_device = |ticks: u64| {
        ticks_to_duration(ticks, ticks_per_second).as_secs_f64() * 1000.0 / devices as f64
    };
    let enrollment = EnrollmentFigures {
        devices: enrolled.len(),
        wall_seconds: wall,
        devices_per_second: enrolled.len() as f64 / wall,
        server_cpu_ms_per_device: per_device(server_ticks),
        client_cpu_ms_per_device: per_device(self_ticks),
        server_memory: daemon.memory()?.into(),
    };

    let identities = dir.join("identities.json");
    let key_ders: Vec<&[u8]> = keys.iter().map(|k| k.pkcs8_der()).collect();
    IdentityFile::new(addr, &ca_pem, &key_ders, &enrolled).write(&identities)?;
    let udids: Vec<String> = enrolled.into_iter().map(|d| d.udid).collect();

    let mut run = Run {
        opts,
        rt,
        ticks_per_second,
        daemon,
        admin,
        udids,
    };
    progress(&format!(
        "phase 2: {} rounds, {} clients in {} worker processes",
        opts.rounds, opts.concurrency, opts.workers
    ));
    let mut pool = WorkerPool::start(
        &identities,
        opts.workers,
        opts.concurrency,
        opts.command_count(),
    )?;
    let mut rounds = Vec::new();
    for round in 1..=opts.rounds {
        progress(&format!("  round {round}"));
        rounds.push(run.round(&mut pool, round)?);
    }
    pool.stop()?;

    let large = match opts.rss_devices {
        Some(total) => Some(large_database(&mut run, total, &link_id, &identities)?),
        None => None,
    };
    run.daemon.stop()?;
    Ok(ProtocolFigures {
        enrollment,
        rounds,
        large,
        keys,
    })
}

/// Phase 3: stop the daemon, seed rows up to `total`, restart, drive one round with the
/// devices enrolled through the protocol, measure memory.
fn large_database(
    run: &mut Run<'_>,
    total: usize,
    link_id: &str,
    identities: &std::path::Path,
) -> Result<LargeFigures, BenchError> {
    let seeded = total - run.udids.len();
    progress(&format!(
        "phase 3: stopping the daemon and seeding {seeded} enrollment rows"
    ));
    let binary = run
        .opts
        .mdmd
        .clone()
        .map_or_else(daemon::binary_next_to_self, Ok)?;
    let data_dir = run.daemon.data_dir.clone();
    // The daemon must be gone before its database can be opened here (redb locks the file).
    run.daemon.stop()?;
    let started = Instant::now();
    run.rt.block_on(seed::seed(
        &data_dir.join(mdmd::DB_FILE),
        seeded,
        link_id,
        admin::TOPIC,
    ))?;
    let seed_seconds = started.elapsed().as_secs_f64();
    progress("  restarting the daemon");
    run.daemon.restart(&binary)?;
    let memory_after_restart = run.daemon.memory()?.into();
    let ca_pem = run.rt.block_on(tls::fetch_ca_pem(run.daemon.addr))?;
    run.admin = Admin::new(&ca_pem, &run.daemon.base_url(), &run.daemon.admin_token()?)?;
    let mut pool = WorkerPool::start(
        identities,
        run.opts.workers,
        run.opts.concurrency,
        run.opts.command_count(),
    )?;
    progress("  round with the large database");
    let round = run.round(&mut pool, 1)?;
    pool.stop()?;
    Ok(LargeFigures {
        enrollments: total,
        enrolled_through_protocol: run.udids.len(),
        seeded,
        seed_seconds,
        memory_after_restart,
        round,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: Options,
    }

    fn options(args: &[&str]) -> Options {
        Cli::try_parse_from(std::iter::once("mdm-bench").chain(args.iter().copied()))
            .unwrap()
            .opts
    }

    fn refused(args: &[&str]) -> String {
        match options(args).validate() {
            Err(BenchError::Options(m)) => m,
            other => panic!("{args:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn only_runs_the_phases_it_names_and_each_needs_its_option() {
        let o = options(&["--only", "lifecycle", "--lifecycle-devices", "100000"]);
        assert_eq!(o.only, [Phase::Lifecycle]);
        assert!(o.validate().is_ok());
        assert_eq!(o.lifecycle_file_rows, lifecycle::ROWS_PER_FILE);
        assert_eq!(o.lifecycle_requests, lifecycle::MIN_REQUESTS);
        let o = options(&[
            "--only",
            "abm,lifecycle",
            "--abm-devices",
            "5000",
            "--lifecycle-devices",
            "10",
        ]);
        assert_eq!(o.only, [Phase::Abm, Phase::Lifecycle]);
        assert!(o.validate().is_ok());
        // Without --only, the phase is added to a full run.
        assert!(options(&["--quick", "--lifecycle-devices", "5"])
            .validate()
            .is_ok());

        assert_eq!(
            refused(&["--only", "lifecycle"]),
            "--only lifecycle needs --lifecycle-devices"
        );
        assert_eq!(
            refused(&[
                "--only",
                "abm",
                "--abm-devices",
                "5",
                "--lifecycle-devices",
                "5"
            ]),
            "--lifecycle-devices is given but --only leaves out lifecycle"
        );
        assert!(refused(&[
            "--only",
            "lifecycle",
            "--lifecycle-devices",
            "5",
            "--rss-devices",
            "20000"
        ])
        .contains("--rss-devices"));
        assert!(refused(&["--lifecycle-devices", "0"]).contains("at least 1"));
        assert!(refused(&[
            "--lifecycle-devices",
            "5",
            "--lifecycle-file-rows",
            "200001"
        ])
        .contains("200000"));
        assert!(refused(&["--lifecycle-devices", "20000000"]).contains("at most"));
        assert!(Cli::try_parse_from(["mdm-bench", "--only", "enrollment"]).is_err());
    }
}
