//! The figures a run produces, as JSON (`--json`) or as a readable block of one figure per
//! line. The last block sets the figures beside the targets from the issue; it compares, it
//! does not judge: benchmarks never fail on time.

use std::fmt::Write as _;

use serde::Serialize;

use crate::histogram::Histogram;

/// Bytes per MiB, for memory figures.
const MIB: f64 = 1024.0 * 1024.0;

/// The machine the run was made on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// CPU model name.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
}

/// The settings of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Devices enrolled through the protocol.
    pub devices: usize,
    /// Concurrent round-trip clients (all workers together).
    pub concurrency: usize,
    /// Worker processes.
    pub workers: usize,
    /// Commands queued per device per round.
    pub commands_per_round: usize,
    /// Round-trip rounds.
    pub rounds: usize,
    /// Devices enrolling at once.
    pub enroll_concurrency: usize,
    /// RSA keys shared by the devices.
    pub key_pool: usize,
    /// The command queued.
    pub request_type: String,
    /// Enrollments on file for phase 3, if it ran.
    pub rss_devices: Option<usize>,
    /// Devices of the push fan-out phase, if it ran.
    pub fanout: Option<usize>,
    /// Fan-out rounds.
    pub fanout_rounds: usize,
    /// Devices of the ABM phase, if it ran.
    pub abm_devices: Option<usize>,
    /// Devices changed before the ABM phase's incremental sync.
    pub abm_changes: usize,
    /// Devices of the lifecycle phase, if it ran.
    pub lifecycle_devices: Option<usize>,
    /// Rows per CSV file the lifecycle phase imports.
    pub lifecycle_file_rows: usize,
    /// Device list requests in the lifecycle phase's mix, at least.
    pub lifecycle_requests: usize,
    /// The phases `--only` kept (empty: every phase asked for ran, enrollment and round trips
    /// included).
    pub only: Vec<String>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl From<&Histogram> for Percentiles {
    fn from(h: &Histogram) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(h.percentile_micros(50.0)),
            p90: ms(h.percentile_micros(90.0)),
            p99: ms(h.percentile_micros(99.0)),
            max: ms(h.max_micros()),
            mean: h.mean_micros() / 1000.0,
        }
    }
}

/// Daemon memory in MiB.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemoryFigures {
    /// `VmRSS`.
    pub rss_mib: f64,
    /// `VmHWM`: the peak since the daemon started.
    pub peak_rss_mib: f64,
}

impl From<crate::procfs::Memory> for MemoryFigures {
    fn from(m: crate::procfs::Memory) -> Self {
        MemoryFigures {
            rss_mib: m.rss as f64 / MIB,
            peak_rss_mib: m.peak_rss as f64 / MIB,
        }
    }
}

/// How busy one kind of daemon thread was during a round.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadCpu {
    /// Thread name (as the kernel keeps it: at most 15 bytes).
    pub name: String,
    /// CPU time of all threads of that name divided by wall time.
    pub cores: f64,
}

/// Phase 1.
#[derive(Debug, Clone, Serialize)]
pub struct EnrollmentFigures {
    /// Devices enrolled.
    pub devices: usize,
    /// Wall time.
    pub wall_seconds: f64,
    /// Enrollment rate.
    pub devices_per_second: f64,
    /// Daemon CPU time divided by devices.
    pub server_cpu_ms_per_device: f64,
    /// This process's CPU time divided by devices.
    pub client_cpu_ms_per_device: f64,
    /// Daemon memory afterwards.
    pub server_memory: MemoryFigures,
}

/// One round of phase 2 (or phase 3's round).
#[derive(Debug, Clone, Serialize)]
pub struct RoundFigures {
    /// Round number, from 1.
    pub round: usize,
    /// Devices driven.
    pub devices: usize,
    /// Device sessions (connections) established.
    pub sessions: u64,
    /// Sessions that resumed an earlier TLS session.
    pub resumed_sessions: u64,
    /// Requests answered.
    pub requests: u64,
    /// Acknowledged reports answered with 200.
    pub acknowledged: u64,
    /// Sessions that failed.
    pub failed_sessions: u64,
    /// Sessions that got an unexpected number of commands.
    pub mismatched_sessions: u64,
    /// Deliveries the admin API shows as Acknowledged after the round.
    pub verified_acknowledged: u64,
    /// Deliveries queued for the round.
    pub queued_deliveries: u64,
    /// Wall time of the measured window.
    pub wall_seconds: f64,
    /// Requests per second.
    pub requests_per_second: f64,
    /// Request latency.
    pub latency_ms: Percentiles,
    /// Connection setup (TCP + TLS).
    pub connect_ms: Percentiles,
    /// Daemon CPU time divided by requests.
    pub server_cpu_ms_per_request: f64,
    /// Client CPU time (workers and coordinator) divided by requests.
    pub client_cpu_ms_per_request: f64,
    /// Daemon CPU time divided by wall time (cores kept busy).
    pub server_cores: f64,
    /// Client CPU time divided by wall time.
    pub client_cores: f64,
    /// Daemon CPU by thread name, busiest first.
    pub server_threads: Vec<ThreadCpu>,
    /// Daemon memory after the round.
    pub server_memory: MemoryFigures,
    /// Size of the daemon's database file after the round, MiB.
    pub database_mib: f64,
    /// The wait before the measured window for the daemon to finish what queueing the
    /// round's commands started (pushes); not part of the round's figures.
    pub settle: SettleFigures,
    /// A few failure messages, if any.
    pub error_samples: Vec<String>,
}

/// See [`RoundFigures::settle`].
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SettleFigures {
    /// Wall time of the wait.
    pub wall_seconds: f64,
    /// The daemon's CPU during it, ms.
    pub server_cpu_ms: f64,
    /// False if the daemon was still busy when the wait gave up.
    pub quiet: bool,
}

/// Phase 3.
#[derive(Debug, Clone, Serialize)]
pub struct LargeFigures {
    /// Enrollments on file.
    pub enrollments: usize,
    /// Of those, enrolled through the protocol (and driven by the round).
    pub enrolled_through_protocol: usize,
    /// Of those, seeded directly into the database.
    pub seeded: usize,
    /// Time to seed them.
    pub seed_seconds: f64,
    /// Daemon memory right after the restart, before any device traffic.
    pub memory_after_restart: MemoryFigures,
    /// The round run afterwards (memory after it is in there).
    pub round: RoundFigures,
}

/// Requests of one kind made alongside a phase, to see whether the daemon keeps answering.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeFigures {
    /// Requests answered as expected.
    pub requests: u64,
    /// Requests that failed (transport error, timeout, unexpected answer).
    pub failures: u64,
    /// Latency of the requests answered as expected.
    pub latency_ms: Percentiles,
    /// A few failure messages, if any.
    pub error_samples: Vec<String>,
}

/// The probes of one window: `GET /healthz` (no store access) and a device's `Idle` report
/// over its mTLS connection (identity check and command queue lookup in the store).
#[derive(Debug, Clone, Serialize)]
pub struct Responsiveness {
    /// Wall time the probes ran.
    pub seconds: f64,
    /// `GET /healthz`.
    pub healthz: ProbeFigures,
    /// `PUT /mdm/connect` `Idle` from enrolled devices with nothing queued.
    pub idle: ProbeFigures,
}

impl Responsiveness {
    /// Whether any probe request failed.
    pub fn failed(&self) -> bool {
        self.healthz.failures > 0 || self.idle.failures > 0
    }
}

/// One fan-out round: one command queued for every device, pushed to each through the APNs
/// simulator.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutRound {
    /// Round number, from 1.
    pub round: usize,
    /// Devices the command was queued for.
    pub devices: usize,
    /// Admin API calls that queued it.
    pub enqueue_calls: usize,
    /// Time from the first queueing call to the answer of the last.
    pub enqueue_seconds: f64,
    /// Pushes the simulator accepted during the round.
    pub pushes_accepted: u64,
    /// Push requests the simulator answered with an error.
    pub pushes_refused: u64,
    /// Distinct devices (seeded push tokens) among the accepted pushes.
    pub devices_pushed: usize,
    /// Accepted pushes to a token that was not seeded, to another topic, or without push
    /// magic.
    pub unexpected_pushes: u64,
    /// Every device was pushed before the deadline.
    pub complete: bool,
    /// HTTP/2 connections that carried the round's pushes.
    pub push_connections: usize,
    /// Connections the daemon opened to the simulator during the round.
    pub connections_opened: u64,
    /// From the first queueing call to the first push received.
    pub first_push_ms: Option<f64>,
    /// From the first queueing call to the last push received: the fan-out time (only when
    /// every device was pushed).
    pub fanout_seconds: Option<f64>,
    /// From the first push received to the last.
    pub push_seconds: f64,
    /// Accepted pushes divided by [`FanoutRound::push_seconds`].
    pub pushes_per_second: f64,
    /// Daemon CPU time from the first queueing call until it went idle after the last push
    /// (queueing, pushing, recording outcomes), divided by devices.
    pub server_cpu_ms_per_device: f64,
    /// Daemon CPU time divided by wall time, first queueing call to last push.
    pub server_cores: f64,
    /// This process's CPU time (APNs simulator, admin client, probes) over the same window.
    pub bench_cores: f64,
    /// Daemon CPU by thread name over the same window, busiest first.
    pub server_threads: Vec<ThreadCpu>,
    /// Daemon memory once it went idle after the round.
    pub server_memory: MemoryFigures,
    /// Size of the daemon's database file after the round, MiB (queued commands accumulate:
    /// the seeded devices never fetch them).
    pub database_mib: f64,
    /// Probes while the round ran (first queueing call to last push).
    pub during: Responsiveness,
}

/// Phase 4: push fan-out.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutFigures {
    /// Devices seeded with push tokens.
    pub devices: usize,
    /// Time to seed them.
    pub seed_seconds: f64,
    /// Daemon memory right after the restart on the seeded database.
    pub memory_after_restart: MemoryFigures,
    /// Probes on the idle daemon before the first round.
    pub baseline: Responsiveness,
    /// The rounds.
    pub rounds: Vec<FanoutRound>,
}

impl FanoutFigures {
    /// Whether a round missed devices, pushed unexpected ones, or had probe failures.
    pub fn failed(&self) -> bool {
        self.baseline.failed()
            || self
                .rounds
                .iter()
                .any(|r| !r.complete || r.unexpected_pushes > 0 || r.during.failed())
    }

    /// RSS after the last round minus RSS after the first, MiB (0 with fewer than two
    /// rounds).
    pub fn rss_growth_mib(&self) -> f64 {
        match (self.rounds.first(), self.rounds.last()) {
            (Some(first), Some(last)) => last.server_memory.rss_mib - first.server_memory.rss_mib,
            _ => 0.0,
        }
    }
}

/// A stretch of one ABM sync call, cut at the simulator's answers (see
/// [`crate::abm::timeline`]), with the CPU and memory readings taken during it.
#[derive(Debug, Clone, Serialize)]
pub struct AbmPhase {
    /// What the daemon was doing.
    pub name: String,
    /// Start, seconds from the call.
    pub from_seconds: f64,
    /// Length.
    pub seconds: f64,
    /// Daemon CPU time divided by wall time (from the 50 ms samples nearest its ends).
    pub server_cores: f64,
    /// Daemon CPU by thread name, busiest first.
    pub server_threads: Vec<ThreadCpu>,
    /// This process's CPU (mostly the ABM simulator) divided by wall time.
    pub bench_cores: f64,
    /// Largest daemon `VmRSS` sampled during it, MiB.
    pub sampled_peak_rss_mib: f64,
}

/// One `POST /api/v1/abm/{name}/sync` call, timed end to end.
#[derive(Debug, Clone, Serialize)]
pub struct AbmSyncFigures {
    /// The daemon chose a full fetch.
    pub full: bool,
    /// Wall time of the call.
    pub wall_seconds: f64,
    /// Pages the daemon fetched (fetch and sync pages together).
    pub pages: u32,
    /// Devices the run counted as added.
    pub added: u64,
    /// Devices the run counted as modified.
    pub modified: u64,
    /// Devices the run counted as deleted.
    pub deleted: u64,
    /// (added + modified + deleted) divided by wall time.
    pub events_per_second: f64,
    /// Calls the simulator answered during the call, per endpoint (non-zero only).
    pub apple_requests: std::collections::BTreeMap<String, u64>,
    /// Assignment calls (`PUT /profile/devices`) among them.
    pub assign_calls: u64,
    /// Daemon CPU time used during the call, seconds.
    pub server_cpu_seconds: f64,
    /// Daemon CPU divided by wall time.
    pub server_cores: f64,
    /// Daemon CPU by thread name over the call, busiest first.
    pub server_threads: Vec<ThreadCpu>,
    /// This process's CPU (the ABM simulator, the admin client, the sampler) divided by wall
    /// time.
    pub bench_cores: f64,
    /// Daemon `VmRSS` before the call, MiB.
    pub rss_before_mib: f64,
    /// Daemon `VmRSS` after the call, MiB.
    pub rss_after_mib: f64,
    /// Daemon `VmHWM` after the call, MiB: the peak during the call when
    /// [`AbmSyncFigures::peak_reset`], else the peak since the daemon started.
    pub peak_rss_mib: f64,
    /// The peak was reset to the current RSS just before the call (`/proc/PID/clear_refs`).
    pub peak_reset: bool,
    /// Largest `VmRSS` polled every 50 ms during the call, MiB (a cross-check of the peak).
    pub sampled_peak_rss_mib: f64,
    /// Size of the daemon's database file after the call, MiB.
    pub database_mib: f64,
    /// The call cut into stretches at the simulator's answers.
    pub phases: Vec<AbmPhase>,
}

impl AbmSyncFigures {
    /// Devices or events the run counted.
    pub fn events(&self) -> u64 {
        self.added + self.modified + self.deleted
    }
}

/// Phase 5: Apple Business Manager sync and assignment against the ABM simulator.
#[derive(Debug, Clone, Serialize)]
pub struct AbmFigures {
    /// Devices in the simulator's MDM server.
    pub devices: usize,
    /// Devices changed in the simulator before the incremental sync.
    pub changes: usize,
    /// Time to create the devices in the simulator (not part of any figure below).
    pub sim_setup_seconds: f64,
    /// Time to set up the connection through the admin API (create, public key, token
    /// upload, profile, default profile).
    pub setup_seconds: f64,
    /// Daemon `VmRSS` right after it started, MiB.
    pub rss_at_start_mib: f64,
    /// The first sync: full fetch, then assignment of every device.
    pub full: AbmSyncFigures,
    /// The next sync, which reads back the events the assignment itself caused in ABM
    /// (every assigned device is reported `modified`).
    pub catch_up: AbmSyncFigures,
    /// The sync after `changes` devices were changed in the simulator.
    pub incremental: AbmSyncFigures,
    /// `devices` of the connection after the full sync (admin API).
    pub devices_listed: u64,
    /// Devices the simulator shows with the benchmark's profile assigned after the full sync.
    pub devices_assigned: usize,
    /// The largest number of serials in one assignment call the simulator received.
    pub largest_assign_batch: usize,
    /// Checks that failed (empty when every check passed).
    pub problems: Vec<String>,
}

impl AbmFigures {
    /// Whether a check failed: the figures are then not to be trusted.
    pub fn failed(&self) -> bool {
        !self.problems.is_empty()
    }
}

/// One timed `POST /api/v1/preenroll/import`.
#[derive(Debug, Clone, Serialize)]
pub struct ImportCallFigures {
    /// File number, from 1.
    pub file: usize,
    /// A dry run (`dry_run=true`: parsed and checked, nothing written).
    pub dry_run: bool,
    /// Data rows in the file.
    pub rows: usize,
    /// Size of the file, bytes.
    pub bytes: usize,
    /// From sending the request to reading the whole answer.
    pub wall_seconds: f64,
    /// Rows divided by wall time.
    pub rows_per_second: f64,
    /// Daemon CPU time during the call, seconds.
    pub server_cpu_seconds: f64,
    /// Daemon CPU divided by wall time.
    pub server_cores: f64,
    /// Daemon CPU by thread name over the call, busiest first.
    pub server_threads: Vec<ThreadCpu>,
    /// This process's CPU (sending the file, reading the answer) divided by wall time.
    pub bench_cores: f64,
    /// Daemon `VmRSS` before the call, MiB.
    pub rss_before_mib: f64,
    /// Daemon `VmRSS` after the call, MiB.
    pub rss_after_mib: f64,
    /// Daemon `VmHWM` after the call, MiB: the peak during the call when
    /// [`ImportCallFigures::peak_reset`], else since the daemon started.
    pub peak_rss_mib: f64,
    /// The peak was reset just before the call.
    pub peak_reset: bool,
    /// `new` in the answer.
    pub new: u64,
    /// `valid_rows` in the answer.
    pub valid_rows: u64,
}

/// One kind of device list request in the mix.
#[derive(Debug, Clone, Serialize)]
pub struct ListKindFigures {
    /// Short key (`first_page`, `next_page`, `status`, `search`, `deep_cursor`).
    pub kind: String,
    /// What the requests were.
    pub description: String,
    /// Requests made.
    pub requests: u64,
    /// Rows they returned.
    pub rows: u64,
    /// Latency, request sent to body read.
    pub latency_ms: Percentiles,
    /// Daemon CPU read around each request, divided by requests (10 ms ticks: an average).
    pub server_cpu_ms_per_request: f64,
}

/// The measured mix of device list requests.
#[derive(Debug, Clone, Serialize)]
pub struct ListFigures {
    /// Requests made (one at a time).
    pub requests: u64,
    /// Rounds of the mix.
    pub rounds: u64,
    /// Rows returned.
    pub rows: u64,
    /// Wall time of the mix.
    pub wall_seconds: f64,
    /// Latency of every request of the mix.
    pub latency_ms: Percentiles,
    /// Daemon CPU time over the mix divided by requests.
    pub server_cpu_ms_per_request: f64,
    /// Daemon CPU time over the mix divided by its wall time.
    pub server_cores: f64,
    /// The same by kind of request.
    pub kinds: Vec<ListKindFigures>,
    /// The same by sort key (`kind` is the key), whatever the kind of request.
    pub by_sort: Vec<ListKindFigures>,
    /// Daemon `VmRSS` after the mix, MiB.
    pub rss_after_mib: f64,
}

/// One query followed through `next` to its end.
#[derive(Debug, Clone, Serialize)]
pub struct WalkFigures {
    /// The query (first page's path).
    pub query: String,
    /// Pages read.
    pub pages: u64,
    /// Rows read over all pages.
    pub rows: u64,
    /// Distinct serial numbers among them.
    pub distinct: u64,
    /// `total` of the last page.
    pub total: u64,
    /// Rows that repeated a serial number already read.
    pub duplicates: u64,
    /// Wall time of the walk.
    pub wall_seconds: f64,
    /// Latency per page.
    pub latency_ms: Percentiles,
    /// Daemon CPU per page.
    pub server_cpu_ms_per_request: f64,
}

/// `GET /api/v1/devices?format=csv` of the whole list.
#[derive(Debug, Clone, Serialize)]
pub struct ExportFigures {
    /// From sending the request to reading the whole answer.
    pub wall_seconds: f64,
    /// Size of the answer.
    pub bytes: u64,
    /// Data rows in it.
    pub rows: u64,
    /// Daemon CPU time during the call.
    pub server_cpu_seconds: f64,
    /// Daemon `VmRSS` before the call, MiB.
    pub rss_before_mib: f64,
    /// Daemon `VmHWM` after the call, MiB (the peak during it when `peak_reset`).
    pub peak_rss_mib: f64,
    /// The peak was reset just before the call.
    pub peak_reset: bool,
}

/// Phase 6: the pre-enrollment import and the device list.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleFigures {
    /// Devices generated, imported and listed.
    pub devices: usize,
    /// Rows per CSV file.
    pub rows_per_file: usize,
    /// Time to generate the devices and their files (not part of any figure below).
    pub generate_seconds: f64,
    /// The dry run of the first file.
    pub dry_run: ImportCallFigures,
    /// Each file's import, in order (the later ones land on a fuller store).
    pub imports: Vec<ImportCallFigures>,
    /// Daemon `VmRSS` after the imports, MiB.
    pub rss_after_imports_mib: f64,
    /// Database file after the imports, MiB.
    pub database_mib_after_imports: f64,
    /// Enrollments written straight into the database after the imports.
    pub seeded_enrollments: usize,
    /// Time to write them.
    pub seed_seconds: f64,
    /// From starting the daemon again to it listening (includes loading the directory).
    pub restart_seconds: f64,
    /// Daemon `VmRSS` right after the restart, MiB.
    pub rss_after_restart_mib: f64,
    /// Database file at the end, MiB.
    pub database_mib: f64,
    /// Devices per status after the restart (`GET /api/v1/devices/counts`, non-zero only).
    pub status_counts: std::collections::BTreeMap<String, usize>,
    /// The mix's search term.
    pub search: String,
    /// Devices it matches.
    pub search_matches: usize,
    /// The walk of one query.
    pub walk: WalkFigures,
    /// The mix.
    pub list: ListFigures,
    /// The CSV export.
    pub export: ExportFigures,
    /// Checks that failed (empty when every check passed).
    pub problems: Vec<String>,
}

impl LifecycleFigures {
    /// Whether a check failed: the figures are then not to be trusted.
    pub fn failed(&self) -> bool {
        !self.problems.is_empty()
    }

    /// The slowest import of a file holding `rows_per_file` rows (the last file may be
    /// smaller), else the slowest of all.
    pub fn slowest_full_import(&self) -> Option<&ImportCallFigures> {
        slowest_import(&self.imports, self.rows_per_file)
    }
}

/// The slowest of `imports` holding `rows` rows, else the slowest of all.
pub fn slowest_import(imports: &[ImportCallFigures], rows: usize) -> Option<&ImportCallFigures> {
    let slowest =
        |a: &&ImportCallFigures, b: &&ImportCallFigures| a.wall_seconds.total_cmp(&b.wall_seconds);
    imports
        .iter()
        .filter(|i| i.rows == rows)
        .max_by(slowest)
        .or_else(|| imports.iter().max_by(slowest))
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the run finished (RFC 3339, UTC).
    pub date: String,
    /// Where.
    pub machine: Machine,
    /// With what settings.
    pub settings: Settings,
    /// Phase 1 (absent with `--only`).
    pub enrollment: Option<EnrollmentFigures>,
    /// Phase 2.
    pub rounds: Vec<RoundFigures>,
    /// Phase 3, if requested.
    pub large: Option<LargeFigures>,
    /// Phase 4, if requested.
    pub fanout: Option<FanoutFigures>,
    /// Phase 5, if requested.
    pub abm: Option<AbmFigures>,
    /// Phase 6, if requested.
    pub lifecycle: Option<LifecycleFigures>,
}

fn line(out: &mut String, label: &str, value: String) {
    let _ = writeln!(out, "  {label:<34}{value}");
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 1.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.3} ms")
    }
}

fn mib(m: &MemoryFigures) -> String {
    format!("{:.1} MiB (peak {:.1} MiB)", m.rss_mib, m.peak_rss_mib)
}

fn round_block(out: &mut String, r: &RoundFigures) {
    line(
        out,
        "requests",
        format!(
            "{} ({} device sessions, {} failed, {} with unexpected command count)",
            r.requests, r.sessions, r.failed_sessions, r.mismatched_sessions
        ),
    );
    line(
        out,
        "TLS sessions resumed",
        format!("{} of {}", r.resumed_sessions, r.sessions),
    );
    line(
        out,
        "results recorded (admin API)",
        format!(
            "{} of {} deliveries Acknowledged",
            r.verified_acknowledged, r.queued_deliveries
        ),
    );
    line(
        out,
        "before it (not counted)",
        format!(
            "{:.2} s for the daemon to settle after queueing ({:.0} ms of server CPU){}",
            r.settle.wall_seconds,
            r.settle.server_cpu_ms,
            if r.settle.quiet { "" } else { ", still busy" }
        ),
    );
    line(out, "wall time", format!("{:.2} s", r.wall_seconds));
    line(
        out,
        "throughput",
        format!("{:.0} requests/s", r.requests_per_second),
    );
    line(out, "latency p50", ms(r.latency_ms.p50));
    line(out, "latency p90", ms(r.latency_ms.p90));
    line(out, "latency p99", ms(r.latency_ms.p99));
    line(out, "latency max", ms(r.latency_ms.max));
    line(out, "connect (TCP+TLS) p50", ms(r.connect_ms.p50));
    line(out, "connect (TCP+TLS) p99", ms(r.connect_ms.p99));
    line(
        out,
        "server CPU per request",
        format!(
            "{} ({:.2} cores busy)",
            ms(r.server_cpu_ms_per_request),
            r.server_cores
        ),
    );
    line(
        out,
        "client CPU per request",
        format!(
            "{} ({:.2} cores busy)",
            ms(r.client_cpu_ms_per_request),
            r.client_cores
        ),
    );
    if !r.server_threads.is_empty() {
        let threads: Vec<String> = r
            .server_threads
            .iter()
            .map(|t| format!("{} {:.2}", t.name, t.cores))
            .collect();
        line(out, "server cores by thread", threads.join(", "));
    }
    line(out, "server RSS after", mib(&r.server_memory));
    line(out, "database file", format!("{:.0} MiB", r.database_mib));
    for e in &r.error_samples {
        let _ = writeln!(out, "    ! {e}");
    }
}

fn probe_text(p: &ProbeFigures) -> String {
    format!(
        "p50 {} p99 {} max {} ({} requests, {} failed)",
        ms(p.latency_ms.p50),
        ms(p.latency_ms.p99),
        ms(p.latency_ms.max),
        p.requests,
        p.failures
    )
}

fn probes_block(out: &mut String, label: &str, r: &Responsiveness) {
    line(
        out,
        &format!("GET /healthz {label}"),
        probe_text(&r.healthz),
    );
    line(out, &format!("device Idle {label}"), probe_text(&r.idle));
    for e in r.healthz.error_samples.iter().chain(&r.idle.error_samples) {
        let _ = writeln!(out, "    ! {e}");
    }
}

fn fanout_round_block(out: &mut String, r: &FanoutRound) {
    line(
        out,
        "queued",
        format!("{} calls in {:.2} s", r.enqueue_calls, r.enqueue_seconds),
    );
    line(
        out,
        "pushes",
        format!(
            "{} accepted, {} refused; {} of {} devices pushed, {} unexpected",
            r.pushes_accepted, r.pushes_refused, r.devices_pushed, r.devices, r.unexpected_pushes
        ),
    );
    line(
        out,
        "push connections",
        format!(
            "{} ({} opened this round)",
            r.push_connections, r.connections_opened
        ),
    );
    if let Some(first) = r.first_push_ms {
        line(out, "first push after", ms(first));
    }
    line(
        out,
        "fan-out time",
        match r.fanout_seconds {
            Some(t) => format!("{t:.2} s (first queueing call to last push)"),
            None => format!(
                "INCOMPLETE: {} of {} devices pushed before the deadline",
                r.devices_pushed, r.devices
            ),
        },
    );
    line(
        out,
        "push rate",
        format!(
            "{:.0} pushes/s (first to last push, {:.2} s)",
            r.pushes_per_second, r.push_seconds
        ),
    );
    line(
        out,
        "server CPU per device",
        format!(
            "{} ({:.2} cores busy)",
            ms(r.server_cpu_ms_per_device),
            r.server_cores
        ),
    );
    line(
        out,
        "bench CPU (simulator, probes)",
        format!("{:.2} cores busy", r.bench_cores),
    );
    if !r.server_threads.is_empty() {
        let threads: Vec<String> = r
            .server_threads
            .iter()
            .map(|t| format!("{} {:.2}", t.name, t.cores))
            .collect();
        line(out, "server cores by thread", threads.join(", "));
    }
    line(out, "server RSS after", mib(&r.server_memory));
    line(out, "database file", format!("{:.0} MiB", r.database_mib));
    probes_block(out, "during fan-out", &r.during);
}

fn fanout_section(out: &mut String, f: &FanoutFigures, rounds: usize) {
    let _ = writeln!(
        out,
        "\npush fan-out: {} devices SEEDED with push tokens (they never connect); per round one \
         ProfileList queued for all of them through the admin API; APNs simulator in this \
         process on 127.0.0.1 (HTTP/2, TLS client certificate)",
        f.devices
    );
    line(out, "seeding time", format!("{:.1} s", f.seed_seconds));
    line(
        out,
        "server RSS after restart",
        mib(&f.memory_after_restart),
    );
    probes_block(
        out,
        &format!("before (idle, {:.0} s)", f.baseline.seconds),
        &f.baseline,
    );
    for r in &f.rounds {
        let _ = writeln!(out, "\nfan-out round {} of {rounds}", r.round);
        fanout_round_block(out, r);
    }
}

fn fanout_targets(out: &mut String, f: &FanoutFigures) {
    let Some(last) = f.rounds.last() else {
        return;
    };
    let _ = writeln!(out, "  (push figures from fan-out round {})", last.round);
    line(
        out,
        "pushes/s",
        format!(
            "{:<23} target >= 20000 on 2 cores",
            format!("{:.0}", last.pushes_per_second)
        ),
    );
    line(
        out,
        &format!("fan-out to {} devices", f.devices),
        format!(
            "{:<23} target < 5 s at 50k",
            last.fanout_seconds
                .map_or_else(|| "incomplete".to_owned(), |t| format!("{t:.2} s"))
        ),
    );
    let rss: Vec<String> = f
        .rounds
        .iter()
        .map(|r| format!("{:.1}", r.server_memory.rss_mib))
        .collect();
    line(
        out,
        "server RSS after each fan-out",
        format!(
            "{:<23} target: no growth ({:+.1} MiB first to last)",
            format!("{} MiB", rss.join(" / ")),
            f.rss_growth_mib()
        ),
    );
    line(
        out,
        "p99 during fan-out (healthz/Idle)",
        format!(
            "{:<23} target: request handling not blocked (idle: {} / {})",
            format!(
                "{} / {}",
                ms(last.during.healthz.latency_ms.p99),
                ms(last.during.idle.latency_ms.p99)
            ),
            ms(f.baseline.healthz.latency_ms.p99),
            ms(f.baseline.idle.latency_ms.p99)
        ),
    );
}

fn threads_text(threads: &[ThreadCpu]) -> String {
    threads
        .iter()
        .map(|t| format!("{} {:.2}", t.name, t.cores))
        .collect::<Vec<_>>()
        .join(", ")
}

fn abm_sync_block(out: &mut String, s: &AbmSyncFigures) {
    line(out, "wall time", format!("{:.2} s", s.wall_seconds));
    line(
        out,
        "pages",
        format!(
            "{} ({} added, {} modified, {} deleted)",
            s.pages, s.added, s.modified, s.deleted
        ),
    );
    line(
        out,
        "rate",
        format!("{:.0} devices or events/s", s.events_per_second),
    );
    let calls: Vec<String> = s
        .apple_requests
        .iter()
        .map(|(endpoint, n)| format!("{endpoint} {n}"))
        .collect();
    line(out, "calls answered by ABM", calls.join(", "));
    line(
        out,
        "server CPU",
        format!(
            "{:.2} s ({:.2} cores busy)",
            s.server_cpu_seconds, s.server_cores
        ),
    );
    if !s.server_threads.is_empty() {
        line(
            out,
            "server cores by thread",
            threads_text(&s.server_threads),
        );
    }
    line(
        out,
        "bench CPU (ABM simulator)",
        format!("{:.2} cores busy", s.bench_cores),
    );
    line(
        out,
        "server RSS before / after",
        format!("{:.1} / {:.1} MiB", s.rss_before_mib, s.rss_after_mib),
    );
    line(
        out,
        "server peak RSS",
        format!(
            "{:.1} MiB ({}; {:.1} MiB polled every 50 ms)",
            s.peak_rss_mib,
            if s.peak_reset {
                "VmHWM, reset just before the call"
            } else {
                "VmHWM since the daemon started: the reset failed"
            },
            s.sampled_peak_rss_mib
        ),
    );
    line(out, "database file", format!("{:.0} MiB", s.database_mib));
    for p in &s.phases {
        let mut text = format!(
            "{:.2} s from {:.2} s: server {:.2} cores",
            p.seconds, p.from_seconds, p.server_cores
        );
        if !p.server_threads.is_empty() {
            let _ = write!(text, " ({})", threads_text(&p.server_threads));
        }
        let _ = write!(
            text,
            ", bench {:.2} cores, RSS up to {:.1} MiB",
            p.bench_cores, p.sampled_peak_rss_mib
        );
        line(out, &format!("  {}", p.name), text);
    }
}

pub(crate) fn abm_section(out: &mut String, a: &AbmFigures) {
    let _ = writeln!(
        out,
        "\nABM: {} devices in the ABM simulator (in this process, HTTPS on 127.0.0.1), one \
         connection, one default profile, automatic sync off; each sync is one admin API call",
        a.devices
    );
    line(
        out,
        "simulator setup (untimed)",
        format!("{:.1} s", a.sim_setup_seconds),
    );
    line(
        out,
        "connection setup (admin API)",
        format!("{:.2} s", a.setup_seconds),
    );
    line(
        out,
        "server RSS at start",
        format!("{:.1} MiB", a.rss_at_start_mib),
    );
    let _ = writeln!(
        out,
        "\nABM full sync and assignment of {} devices",
        a.devices
    );
    abm_sync_block(out, &a.full);
    line(
        out,
        "checks",
        format!(
            "{} of {} devices listed by the connection, {} assigned in ABM, largest \
             assignment call {} serials",
            a.devices_listed, a.devices, a.devices_assigned, a.largest_assign_batch
        ),
    );
    let _ = writeln!(
        out,
        "\nABM catch-up sync (the assignment's own {} modified events)",
        a.full.added
    );
    abm_sync_block(out, &a.catch_up);
    let _ = writeln!(
        out,
        "\nABM incremental sync after {} devices were changed in ABM",
        a.changes
    );
    abm_sync_block(out, &a.incremental);
    for p in &a.problems {
        let _ = writeln!(out, "    ! {p}");
    }
}

pub(crate) fn abm_targets(out: &mut String, a: &AbmFigures) {
    line(
        out,
        &format!("ABM full sync + assign, {}", a.devices),
        format!(
            "{:<23} target < 15 s at 100k",
            format!("{:.2} s", a.full.wall_seconds)
        ),
    );
    line(
        out,
        "ABM peak RSS during it",
        format!(
            "{:<23} target < 200 MB at 100k",
            format!("{:.1} MiB", a.full.peak_rss_mib)
        ),
    );
    line(
        out,
        &format!("ABM incremental, {} changes", a.changes),
        format!(
            "{:<23} target < 1 s for 1,000",
            format!("{:.3} s", a.incremental.wall_seconds)
        ),
    );
}

fn import_block(out: &mut String, i: &ImportCallFigures) {
    line(
        out,
        "wall time",
        format!(
            "{:.2} s ({:.0} rows/s; {} rows, {:.1} MiB)",
            i.wall_seconds,
            i.rows_per_second,
            i.rows,
            i.bytes as f64 / MIB
        ),
    );
    line(
        out,
        "answer",
        format!("{} valid, {} new", i.valid_rows, i.new),
    );
    let threads: Vec<String> = i
        .server_threads
        .iter()
        .map(|t| format!("{} {:.2}", t.name, t.cores))
        .collect();
    line(
        out,
        "server CPU",
        format!(
            "{:.2} s ({:.2} cores{}{})",
            i.server_cpu_seconds,
            i.server_cores,
            if threads.is_empty() { "" } else { ": " },
            threads.join(", ")
        ),
    );
    line(out, "bench CPU", format!("{:.2} cores", i.bench_cores));
    line(
        out,
        "server RSS before / after",
        format!("{:.1} / {:.1} MiB", i.rss_before_mib, i.rss_after_mib),
    );
    line(
        out,
        "server peak RSS during the call",
        format!(
            "{:.1} MiB{}",
            i.peak_rss_mib,
            if i.peak_reset {
                ""
            } else {
                " (since start: could not reset)"
            }
        ),
    );
}

fn percentiles_text(p: &Percentiles) -> String {
    format!(
        "p50 {} p90 {} p99 {} max {}",
        ms(p.p50),
        ms(p.p90),
        ms(p.p99),
        ms(p.max)
    )
}

pub(crate) fn lifecycle_section(out: &mut String, l: &LifecycleFigures) {
    let _ = writeln!(
        out,
        "\ndevice lifecycle: {} devices imported from {} CSV files of at most {} rows",
        l.devices,
        l.imports.len(),
        l.rows_per_file
    );
    let _ = writeln!(out, "  dry run of file {}", l.dry_run.file);
    import_block(out, &l.dry_run);
    for i in &l.imports {
        let _ = writeln!(out, "  import of file {}", i.file);
        import_block(out, i);
    }
    line(
        out,
        "after the imports",
        format!(
            "RSS {:.1} MiB, database file {:.0} MiB",
            l.rss_after_imports_mib, l.database_mib_after_imports
        ),
    );
    let _ = writeln!(
        out,
        "\ndevice list: {} enrollments SEEDED into the database for part of those devices, then a restart",
        l.seeded_enrollments
    );
    line(out, "seeding time", format!("{:.1} s", l.seed_seconds));
    line(
        out,
        "restart (directory load)",
        format!(
            "{:.2} s, RSS after {:.1} MiB",
            l.restart_seconds, l.rss_after_restart_mib
        ),
    );
    let counts: Vec<String> = l
        .status_counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    line(out, "devices by status", counts.join(", "));
    line(
        out,
        "search term",
        format!(
            "{:?}, matches {} devices ({:.1} %)",
            l.search,
            l.search_matches,
            l.search_matches as f64 * 100.0 / l.devices.max(1) as f64
        ),
    );
    let w = &l.walk;
    let _ = writeln!(out, "  walk of {} to its end", w.query);
    line(
        out,
        "pages, rows",
        format!(
            "{} pages, {} rows, {} distinct, {} duplicates, total {}",
            w.pages, w.rows, w.distinct, w.duplicates, w.total
        ),
    );
    line(
        out,
        "wall time",
        format!(
            "{:.1} s (server CPU {} per page)",
            w.wall_seconds,
            ms(w.server_cpu_ms_per_request)
        ),
    );
    line(out, "latency per page", percentiles_text(&w.latency_ms));
    let m = &l.list;
    let _ = writeln!(
        out,
        "  mix: {} requests in {} rounds, one at a time, {} rows per page at most",
        m.requests,
        m.rounds,
        crate::lifecycle::PAGE
    );
    line(
        out,
        "latency, all requests",
        percentiles_text(&m.latency_ms),
    );
    for k in &m.kinds {
        line(
            out,
            &format!("  {} ({})", k.kind, k.requests),
            format!(
                "{}, server CPU {}",
                percentiles_text(&k.latency_ms),
                ms(k.server_cpu_ms_per_request)
            ),
        );
    }
    for k in &m.by_sort {
        line(
            out,
            &format!("  sort={} ({})", k.kind, k.requests),
            format!(
                "{}, server CPU {}",
                percentiles_text(&k.latency_ms),
                ms(k.server_cpu_ms_per_request)
            ),
        );
    }
    line(
        out,
        "server CPU per request",
        format!(
            "{} ({:.2} cores busy over {:.1} s)",
            ms(m.server_cpu_ms_per_request),
            m.server_cores,
            m.wall_seconds
        ),
    );
    line(
        out,
        "server RSS after",
        format!("{:.1} MiB", m.rss_after_mib),
    );
    let e = &l.export;
    let _ = writeln!(out, "  CSV export of every device (format=csv)");
    line(
        out,
        "wall time",
        format!(
            "{:.2} s, {} rows, {:.1} MiB",
            e.wall_seconds,
            e.rows,
            e.bytes as f64 / MIB
        ),
    );
    line(
        out,
        "server CPU, peak RSS",
        format!(
            "{:.2} s, {:.1} MiB (from {:.1} MiB before){}",
            e.server_cpu_seconds,
            e.peak_rss_mib,
            e.rss_before_mib,
            if e.peak_reset {
                ""
            } else {
                " (peak since start)"
            }
        ),
    );
    line(out, "database file", format!("{:.0} MiB", l.database_mib));
    for p in &l.problems {
        let _ = writeln!(out, "    ! {p}");
    }
}

/// "met" or "missed", and a note when the run's size differs from the target's.
fn verdict(met: bool, same_size: bool) -> &'static str {
    match (met, same_size) {
        (true, true) => "met",
        (false, true) => "MISSED",
        (true, false) => "met at this size (the target is for another)",
        (false, false) => "MISSED at this size (the target is for another)",
    }
}

pub(crate) fn lifecycle_targets(out: &mut String, l: &LifecycleFigures) {
    let p99 = l.list.latency_ms.p99;
    line(
        out,
        &format!("device list p99, {} devices", l.devices),
        format!(
            "{:<23} target < 20 ms at 100k: {}",
            ms(p99),
            verdict(p99 < 20.0, l.devices == 100_000)
        ),
    );
    if let Some(i) = l.slowest_full_import() {
        lifecycle_verdict_line(out, i);
    }
}

/// The import's line of the targets block.
pub(crate) fn lifecycle_verdict_line(out: &mut String, i: &ImportCallFigures) {
    line(
        out,
        &format!("CSV import, {} rows (slowest)", i.rows),
        format!(
            "{:<23} target < 10 s for 50,000: {}",
            format!("{:.2} s", i.wall_seconds),
            verdict(i.wall_seconds < 10.0, i.rows == 50_000)
        ),
    );
}

impl Report {
    /// The readable form.
    pub fn to_text(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "mdm-bench {}: {} CPUs ({}), Linux {}",
            self.date, self.machine.cpus, self.machine.cpu_model, self.machine.kernel
        );
        let _ = writeln!(
            out,
            "mdmd release build, --dev (software keystore), durable writes (redb group commit)\n"
        );

        if let Some(e) = &self.enrollment {
            let _ = writeln!(
                out,
                "enrollment: link -> profile -> SCEP -> Authenticate -> TokenUpdate, {} devices at a time",
                s.enroll_concurrency
            );
            line(&mut out, "devices enrolled", e.devices.to_string());
            line(&mut out, "wall time", format!("{:.1} s", e.wall_seconds));
            line(
                &mut out,
                "rate",
                format!("{:.1} devices/s", e.devices_per_second),
            );
            line(
                &mut out,
                "server CPU per enrollment",
                ms(e.server_cpu_ms_per_device),
            );
            line(
                &mut out,
                "client CPU per enrollment",
                ms(e.client_cpu_ms_per_device),
            );
            line(&mut out, "server RSS after", mib(&e.server_memory));
        } else {
            let _ = writeln!(
                out,
                "--only {}: enrollment and round trips not run",
                s.only.join(",")
            );
        }

        for r in &self.rounds {
            let _ = writeln!(
                out,
                "\nround {} of {}: {} devices x (Idle + {} {} + Acknowledged), {} clients in {} processes, mTLS",
                r.round, s.rounds, r.devices, s.commands_per_round, s.request_type, s.concurrency, s.workers
            );
            round_block(&mut out, r);
        }

        if let Some(l) = &self.large {
            let _ = writeln!(
                out,
                "\nlarge database: {} enrollments on file ({} enrolled through the protocol, {} rows SEEDED \
                 directly into mdm.redb with fake identity hashes; only the former connect)",
                l.enrollments, l.enrolled_through_protocol, l.seeded
            );
            line(&mut out, "seeding time", format!("{:.1} s", l.seed_seconds));
            line(
                &mut out,
                "server RSS after restart",
                mib(&l.memory_after_restart),
            );
            round_block(&mut out, &l.round);
        }

        if let Some(f) = &self.fanout {
            fanout_section(&mut out, f, s.fanout_rounds);
        }
        if let Some(a) = &self.abm {
            abm_section(&mut out, a);
        }
        if let Some(l) = &self.lifecycle {
            lifecycle_section(&mut out, l);
        }

        out.push_str("\ntargets (from the issue; the figures are compared, not asserted)\n");
        if let Some(last) = self.rounds.last() {
            let _ = writeln!(
                out,
                "  (round figures from round {}: {} of {} TLS sessions resumed)",
                last.round, last.resumed_sessions, last.sessions
            );
            line(
                &mut out,
                "server CPU per protocol request",
                format!(
                    "{:<23} target <= 0.1 ms",
                    ms(last.server_cpu_ms_per_request)
                ),
            );
            line(
                &mut out,
                &format!("requests/s with {} devices", s.devices),
                format!(
                    "{:<23} target >= 5000 (10k devices)",
                    format!("{:.0}", last.requests_per_second)
                ),
            );
            line(
                &mut out,
                "p99 latency",
                format!(
                    "{:<23} target < 25 ms at 5000 requests/s",
                    ms(last.latency_ms.p99)
                ),
            );
            line(
                &mut out,
                &format!("server RSS at {} devices", s.devices),
                format!(
                    "{:<23} target < 150 MB at 10k",
                    format!("{:.1} MiB", last.server_memory.rss_mib)
                ),
            );
        }
        match &self.large {
            Some(l) => line(
                &mut out,
                &format!("server RSS at {} enrollments", l.enrollments),
                format!(
                    "{:<23} target < 250 MB at 100k",
                    format!("{:.1} MiB", l.round.server_memory.rss_mib)
                ),
            ),
            None => line(
                &mut out,
                "server RSS at 100k enrollments",
                format!("{:<23} target < 250 MB", "not run (--rss-devices)"),
            ),
        }
        if let Some(e) = &self.enrollment {
            line(
                &mut out,
                "enrollment server CPU per device",
                format!("{:<23} target < 5 ms", ms(e.server_cpu_ms_per_device)),
            );
        }
        match &self.fanout {
            Some(f) => fanout_targets(&mut out, f),
            None => line(
                &mut out,
                "push fan-out to 50k devices",
                format!(
                    "{:<23} target < 5 s, >= 20000 pushes/s",
                    "not run (--fanout)"
                ),
            ),
        }
        match &self.abm {
            Some(a) => abm_targets(&mut out, a),
            None => line(
                &mut out,
                "ABM sync of 100k devices",
                format!(
                    "{:<23} target < 15 s, < 200 MB; 1,000 changes < 1 s",
                    "not run (--abm-devices)"
                ),
            ),
        }
        match &self.lifecycle {
            Some(l) => lifecycle_targets(&mut out, l),
            None => line(
                &mut out,
                "device list and CSV import",
                format!(
                    "{:<23} target p99 < 20 ms at 100k; 50,000 rows < 10 s",
                    "not run (--lifecycle-devices)"
                ),
            ),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round() -> RoundFigures {
        let mut h = Histogram::new();
        for v in 1..=1000 {
            h.record_micros(v * 10);
        }
        RoundFigures {
            round: 1,
            devices: 100,
            sessions: 100,
            resumed_sessions: 0,
            requests: 500,
            acknowledged: 400,
            failed_sessions: 0,
            mismatched_sessions: 0,
            verified_acknowledged: 400,
            queued_deliveries: 400,
            wall_seconds: 0.5,
            requests_per_second: 1000.0,
            latency_ms: Percentiles::from(&h),
            connect_ms: Percentiles::from(&Histogram::new()),
            server_cpu_ms_per_request: 0.25,
            client_cpu_ms_per_request: 0.5,
            server_cores: 0.25,
            client_cores: 0.5,
            server_threads: vec![ThreadCpu {
                name: "mdm-store-write".into(),
                cores: 0.5,
            }],
            server_memory: MemoryFigures {
                rss_mib: 40.0,
                peak_rss_mib: 41.0,
            },
            database_mib: 12.0,
            settle: SettleFigures {
                wall_seconds: 0.4,
                server_cpu_ms: 180.0,
                quiet: true,
            },
            error_samples: vec!["device X: boom".into()],
        }
    }

    #[test]
    fn percentiles_in_milliseconds() {
        let p = round().latency_ms;
        assert!((p.p50 - 5.0).abs() < 0.1, "{p:?}");
        assert!((p.p99 - 9.9).abs() < 0.2, "{p:?}");
        assert!((p.max - 10.0).abs() < 1e-9);
    }

    #[test]
    fn text_has_one_figure_per_line_and_the_targets() {
        let report = Report {
            date: "2025-01-01T00:00:00Z".into(),
            machine: Machine {
                cpus: 2,
                cpu_model: "Test CPU".into(),
                kernel: "6.1".into(),
            },
            settings: Settings {
                devices: 100,
                concurrency: 8,
                workers: 2,
                commands_per_round: 4,
                rounds: 1,
                enroll_concurrency: 4,
                key_pool: 4,
                request_type: "ProfileList".into(),
                rss_devices: None,
                fanout: None,
                fanout_rounds: 3,
                abm_devices: None,
                abm_changes: 1000,
                lifecycle_devices: None,
                lifecycle_file_rows: 50_000,
                lifecycle_requests: 500,
                only: Vec::new(),
            },
            enrollment: Some(EnrollmentFigures {
                devices: 100,
                wall_seconds: 2.0,
                devices_per_second: 50.0,
                server_cpu_ms_per_device: 3.5,
                client_cpu_ms_per_device: 6.0,
                server_memory: MemoryFigures {
                    rss_mib: 30.0,
                    peak_rss_mib: 31.0,
                },
            }),
            rounds: vec![round()],
            large: None,
            fanout: None,
            abm: None,
            lifecycle: None,
        };
        let text = report.to_text();
        for needle in [
            "throughput                        1000 requests/s",
            "server CPU per request            0.250 ms (0.25 cores busy)",
            "server CPU per enrollment         3.50 ms",
            "400 of 400 deliveries Acknowledged",
            "target <= 0.1 ms",
            "target < 250 MB",
            "! device X: boom",
            "server cores by thread            mdm-store-write 0.50",
            "not run (--fanout)",
            "not run (--abm-devices)",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["rounds"][0]["requests"], 500);
        assert_eq!(json["enrollment"]["server_cpu_ms_per_device"], 3.5);
        assert!(json["large"].is_null());
    }

    fn probes(p99_micros: u64, failures: u64) -> Responsiveness {
        let mut h = Histogram::new();
        for _ in 0..99 {
            h.record_micros(200);
        }
        h.record_micros(p99_micros);
        h.record_micros(p99_micros);
        let figures = ProbeFigures {
            requests: h.count(),
            failures,
            latency_ms: Percentiles::from(&h),
            error_samples: (0..failures).map(|i| format!("probe {i} failed")).collect(),
        };
        Responsiveness {
            seconds: 2.0,
            healthz: figures.clone(),
            idle: figures,
        }
    }

    fn fanout_round(round: usize, rss_mib: f64, complete: bool) -> FanoutRound {
        FanoutRound {
            round,
            devices: 50_000,
            enqueue_calls: 5,
            enqueue_seconds: 1.5,
            pushes_accepted: if complete { 50_000 } else { 40_000 },
            pushes_refused: 0,
            devices_pushed: if complete { 50_000 } else { 40_000 },
            unexpected_pushes: 0,
            complete,
            push_connections: 1,
            connections_opened: u64::from(round == 1),
            first_push_ms: Some(80.0),
            fanout_seconds: complete.then_some(2.5),
            push_seconds: 2.0,
            pushes_per_second: 25_000.0,
            server_cpu_ms_per_device: 0.04,
            server_cores: 1.2,
            bench_cores: 0.7,
            server_threads: Vec::new(),
            server_memory: MemoryFigures {
                rss_mib,
                peak_rss_mib: rss_mib + 10.0,
            },
            database_mib: 90.0 * round as f64,
            during: probes(4_000, 0),
        }
    }

    #[test]
    fn fanout_figures_beside_their_targets() {
        let fanout = FanoutFigures {
            devices: 50_000,
            seed_seconds: 3.0,
            memory_after_restart: MemoryFigures {
                rss_mib: 10.0,
                peak_rss_mib: 10.0,
            },
            baseline: probes(300, 0),
            rounds: vec![
                fanout_round(1, 60.0, true),
                fanout_round(2, 62.0, true),
                fanout_round(3, 61.5, true),
            ],
        };
        assert!(!fanout.failed());
        assert!((fanout.rss_growth_mib() - 1.5).abs() < 1e-9);
        let mut out = String::new();
        fanout_section(&mut out, &fanout, 3);
        fanout_targets(&mut out, &fanout);
        for needle in [
            "push fan-out: 50000 devices SEEDED",
            "fan-out round 3 of 3",
            "5 calls in 1.50 s",
            "50000 accepted, 0 refused; 50000 of 50000 devices pushed, 0 unexpected",
            "fan-out time                      2.50 s",
            "25000 pushes/s (first to last push, 2.00 s)",
            "first push after                  80.00 ms",
            "GET /healthz before (idle, 2 s)   p50 0.201 ms p99 0.300 ms",
            "device Idle during fan-out        p50 0.201 ms p99 4.00 ms max 4.00 ms (101 requests, 0 failed)",
            "target >= 20000 on 2 cores",
            "60.0 / 62.0 / 61.5 MiB",
            "(+1.5 MiB first to last)",
            "target < 5 s at 50k",
            "4.00 ms / 4.00 ms",
            "database file                     270 MiB",
        ] {
            assert!(out.contains(needle), "missing {needle:?} in\n{out}");
        }

        // A round that missed devices, or a failed probe, makes the run a failure.
        let mut incomplete = fanout.clone();
        incomplete.rounds[1] = fanout_round(2, 62.0, false);
        assert!(incomplete.failed());
        let mut text = String::new();
        fanout_round_block(&mut text, &incomplete.rounds[1]);
        assert!(
            text.contains("INCOMPLETE: 40000 of 50000 devices pushed"),
            "{text}"
        );
        let mut probe_failed = fanout.clone();
        probe_failed.rounds[2].during = probes(4_000, 1);
        assert!(probe_failed.failed());
        let mut text = String::new();
        fanout_round_block(&mut text, &probe_failed.rounds[2]);
        assert!(text.contains("! probe 0 failed"), "{text}");

        let json = serde_json::to_value(&fanout).unwrap();
        assert_eq!(json["rounds"][2]["pushes_per_second"], 25_000.0);
        assert!(json["rounds"][0]["during"]["idle"]["latency_ms"]["p99"].is_number());
    }
}
