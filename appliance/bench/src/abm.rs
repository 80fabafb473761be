//! Phase 5 (`--abm-devices N`): Apple Business Manager device sync and profile assignment.
//!
//! The ABM simulator ([`AbmSimulator`]) runs in this process on 127.0.0.1 with N generated
//! devices in its first MDM server. A daemon of its own (fresh data directory, so that its
//! memory reflects only this phase) gets one ABM connection through the admin API: created
//! against the simulator's URL and CA with automatic sync off, a server token issued by the
//! simulator for the connection's public key, a profile defined with the simulator and made
//! the connection's default. Then three syncs, each one `POST /api/v1/abm/{name}/sync` timed
//! end to end (the call answers once the sync and the assignment that follows it are done):
//!
//! 1. **Full**: every device fetched, 1,000 per page, each page committed with its cursor,
//!    then every device assigned the default profile in calls of at most 1,000 serials.
//! 2. **Catch-up**: ABM reports each assigned device as `modified`, so the next sync reads N
//!    events back (and has nothing to assign). Measured, but no target applies to it.
//! 3. **Incremental**: after C devices were given a new colour in the simulator, the sync
//!    that reads those C `modified` events.
//!
//! For each call the daemon's CPU time and memory come from `/proc`: the peak (`VmHWM`) is
//! reset just before the call and read after it, and a sampler polls RSS and CPU every 50 ms.
//! The simulator's request log cuts the call into stretches (pages, assignment calls) that
//! the samples attribute CPU to, which shows where the time goes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mdm_sim::abm::{
    AbmSimConfig, AbmSimulator, ContentCipher, DeviceChange, Endpoint, ProfileStatus,
    RequestRecord, ServerId, TokenOptions,
};
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::daemon::{self, Daemon, PushService};
use crate::error::BenchError;
use crate::procfs::{self, ticks_to_duration};
use crate::report::{AbmFigures, AbmPhase, AbmSyncFigures};
use crate::{progress, thread_split, tls};

/// The connection's name in the appliance.
pub const CONNECTION: &str = "bench";
/// The profile's name in the appliance.
pub const PROFILE: &str = "staff";
/// The simulator's MDM server the devices belong to.
const SERVER: ServerId = ServerId(0);
/// How long one sync call may take: far beyond the target, but bounded.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(600);
/// How often RSS and CPU are read during a call.
const SAMPLE_PERIOD: Duration = Duration::from_millis(50);
/// Longest wait for a sync or assignment the daemon started by itself to end.
const IDLE_WAIT: Duration = Duration::from_secs(60);
/// The colour changed devices get (no generated device has it, so every change is real).
pub const NEW_COLOR: &str = "Bench Blue";
/// Most serials Apple takes in one assignment call.
const ASSIGN_LIMIT: usize = 1000;
/// Bytes per MiB.
const MIB: f64 = 1024.0 * 1024.0;

/// One reading of the daemon and of this process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// When, from the start of the call.
    pub at: Duration,
    /// Daemon `VmRSS`, bytes.
    pub rss: u64,
    /// Daemon CPU so far, clock ticks.
    pub server_ticks: u64,
    /// This process's CPU so far, clock ticks.
    pub bench_ticks: u64,
    /// Daemon CPU so far per thread name, clock ticks.
    pub threads: BTreeMap<String, u64>,
}

fn read_sample(pid: u32, started: Instant) -> Result<Sample, BenchError> {
    Ok(Sample {
        at: started.elapsed(),
        rss: procfs::memory(Some(pid))?.rss,
        server_ticks: procfs::cpu_ticks(Some(pid))?.own(),
        bench_ticks: procfs::cpu_ticks(None)?.own(),
        threads: procfs::thread_ticks(pid)?,
    })
}

/// Reads [`Sample`]s every [`SAMPLE_PERIOD`] on the runtime until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Result<Vec<Sample>, BenchError>>,
}

impl Sampler {
    fn start(rt: &Runtime, pid: u32, started: Instant) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = rt.spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(SAMPLE_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // The flag is read before the sample, so the last sample follows the call.
                let last = flag.load(Ordering::Relaxed);
                samples.push(read_sample(pid, started)?);
                if last {
                    return Ok(samples);
                }
                tick.tick().await;
            }
        });
        Sampler { stop, task }
    }

    fn finish(self, rt: &Runtime) -> Result<Vec<Sample>, BenchError> {
        self.stop.store(true, Ordering::Relaxed);
        rt.block_on(self.task)?
    }
}

/// A stretch of one sync call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// What the daemon was doing.
    pub name: &'static str,
    /// Start, from the start of the call.
    pub from: Duration,
    /// End, from the start of the call.
    pub to: Duration,
}

/// Cuts a call that started at `started` and took `wall` into stretches, at the times the
/// simulator answered its last fetch or sync page and its first and last assignment call:
///
/// - `pages fetched and stored`: from the call to the last page's answer (the session and
///   account calls, every page and the commit of all but the last);
/// - `to the first assignment`: the last page's commit, the search for devices due, and the
///   first assignment call;
/// - `assignment calls`: the other assignment calls, each followed by its commit;
/// - `rest of the call`: what follows the last answer from the simulator (the last commits,
///   the answer to the admin call).
///
/// Records answered outside the call are clamped to it.
pub fn timeline(records: &[RequestRecord], started: SystemTime, wall: Duration) -> Vec<Span> {
    let offset = |r: &RequestRecord| r.at.duration_since(started).unwrap_or_default().min(wall);
    let last_page = records
        .iter()
        .filter(|r| {
            matches!(
                r.endpoint,
                Some(Endpoint::FetchDevices | Endpoint::SyncDevices)
            )
        })
        .map(offset)
        .max();
    let assigns: Vec<Duration> = records
        .iter()
        .filter(|r| r.endpoint == Some(Endpoint::AssignProfile))
        .map(offset)
        .collect();
    let mut spans = Vec::new();
    let mut at = Duration::ZERO;
    if let Some(end) = last_page {
        spans.push(Span {
            name: "pages fetched and stored",
            from: at,
            to: end,
        });
        at = end;
    }
    if let (Some(first), Some(last)) = (assigns.iter().min(), assigns.iter().max()) {
        let (first, last) = ((*first).max(at), (*last).max(at));
        spans.push(Span {
            name: "to the first assignment",
            from: at,
            to: first,
        });
        spans.push(Span {
            name: "assignment calls",
            from: first,
            to: last,
        });
        at = last;
    }
    spans.push(Span {
        name: "rest of the call",
        from: at,
        to: wall,
    });
    spans
}

/// The index of the sample taken nearest to `at`.
fn nearest(samples: &[Sample], at: Duration) -> usize {
    let mut best = 0;
    for (i, s) in samples.iter().enumerate() {
        let d = s.at.abs_diff(at);
        if d < samples[best].at.abs_diff(at) {
            best = i;
        }
    }
    best
}

/// CPU and memory during `span`, from the samples taken nearest to its ends. A span shorter
/// than the sampling period can fall between two samples and show no CPU at all.
pub fn phase(samples: &[Sample], span: &Span, ticks_per_second: u64) -> AbmPhase {
    let mut phase = AbmPhase {
        name: span.name.to_owned(),
        from_seconds: span.from.as_secs_f64(),
        seconds: span.to.saturating_sub(span.from).as_secs_f64(),
        server_cores: 0.0,
        server_threads: Vec::new(),
        bench_cores: 0.0,
        sampled_peak_rss_mib: 0.0,
    };
    if samples.is_empty() {
        return phase;
    }
    let (i, j) = (nearest(samples, span.from), nearest(samples, span.to));
    let rss = samples[i.min(j)..=j.max(i)]
        .iter()
        .map(|s| s.rss)
        .max()
        .unwrap_or(0);
    phase.sampled_peak_rss_mib = rss as f64 / MIB;
    if j <= i {
        return phase;
    }
    let (a, b) = (&samples[i], &samples[j]);
    let wall = b.at.saturating_sub(a.at).as_secs_f64().max(1e-9);
    let cores = |ticks: u64| ticks_to_duration(ticks, ticks_per_second).as_secs_f64() / wall;
    phase.server_cores = cores(b.server_ticks.saturating_sub(a.server_ticks));
    phase.bench_cores = cores(b.bench_ticks.saturating_sub(a.bench_ticks));
    phase.server_threads = thread_split(&a.threads, &b.threads, ticks_per_second, wall);
    phase
}

/// Where the connection lives and how to reach it.
pub struct Target<'a> {
    /// An admin session with a timeout of at least [`SYNC_TIMEOUT`].
    pub admin: &'a Admin,
    /// The process serving it (the daemon, or this process for an embedded one).
    pub pid: u32,
    /// Its database file, for the size figure.
    pub database: PathBuf,
}

fn answer(path: &str, reason: impl Into<String>) -> BenchError {
    BenchError::ApiAnswer {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn file_mib(path: &Path) -> Result<f64, BenchError> {
    let meta =
        std::fs::metadata(path).map_err(BenchError::io(format!("stat {}", path.display())))?;
    Ok(meta.len() as f64 / MIB)
}

/// Waits until the connection has no sync or assignment running (the daemon may start an
/// assignment job by itself when the default profile changes).
fn wait_idle(rt: &Runtime, admin: &Admin) -> Result<Value, BenchError> {
    let deadline = Instant::now() + IDLE_WAIT;
    loop {
        let conn = rt.block_on(admin.abm_connection(CONNECTION))?;
        if conn["sync_running"] != Value::Bool(true) || Instant::now() > deadline {
            return Ok(conn);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One timed `POST /api/v1/abm/{name}/sync`.
fn timed_sync(
    rt: &Runtime,
    sim: &AbmSimulator,
    target: &Target<'_>,
) -> Result<AbmSyncFigures, BenchError> {
    let pid = target.pid;
    let ticks_per_second = procfs::clock_ticks_per_second();
    wait_idle(rt, target.admin)?;
    sim.clear_requests();
    let counters_before = sim.counters();
    let rss_before = procfs::memory(Some(pid))?.rss;
    let peak_reset = match procfs::reset_peak_rss(Some(pid)) {
        Ok(()) => true,
        Err(e) => {
            progress(&format!(
                "  cannot reset the daemon's peak RSS ({e}); the peak shown is since it started"
            ));
            false
        }
    };
    let server_before = procfs::cpu_ticks(Some(pid))?.own();
    let threads_before = procfs::thread_ticks(pid)?;
    let bench_before = procfs::cpu_ticks(None)?.own();
    let started_at = SystemTime::now();
    let started = Instant::now();
    let sampler = Sampler::start(rt, pid, started);

    let run = rt.block_on(target.admin.abm_sync(CONNECTION));
    let wall = started.elapsed();
    let samples = sampler.finish(rt)?;
    let run = run?;
    let server_ticks = procfs::cpu_ticks(Some(pid))?
        .own()
        .saturating_sub(server_before);
    let threads_after = procfs::thread_ticks(pid)?;
    let bench_ticks = procfs::cpu_ticks(None)?.own().saturating_sub(bench_before);
    let memory = procfs::memory(Some(pid))?;
    let counters = sim.counters();
    let records = sim.requests();

    let path = format!("/api/v1/abm/{CONNECTION}/sync");
    if run["result"] != "ok" {
        return Err(answer(&path, format!("the sync run failed: {run}")));
    }
    let count = |field: &str| {
        run[field]
            .as_u64()
            .ok_or_else(|| answer(&path, format!("no {field} in the sync run {run}")))
    };
    let (added, modified, deleted) = (count("added")?, count("modified")?, count("deleted")?);
    let pages = u32::try_from(count("pages")?).unwrap_or(u32::MAX);
    let apple_requests: BTreeMap<String, u64> = Endpoint::ALL
        .iter()
        .map(|e| {
            let n = counters.count(*e).saturating_sub(counters_before.count(*e));
            (e.as_str().to_owned(), n)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let assign_calls = counters
        .count(Endpoint::AssignProfile)
        .saturating_sub(counters_before.count(Endpoint::AssignProfile));
    let wall_s = wall.as_secs_f64().max(1e-9);
    let seconds = |ticks: u64| ticks_to_duration(ticks, ticks_per_second).as_secs_f64();
    Ok(AbmSyncFigures {
        full: run["full"] == Value::Bool(true),
        wall_seconds: wall_s,
        pages,
        added,
        modified,
        deleted,
        events_per_second: (added + modified + deleted) as f64 / wall_s,
        apple_requests,
        assign_calls,
        server_cpu_seconds: seconds(server_ticks),
        server_cores: seconds(server_ticks) / wall_s,
        server_threads: thread_split(&threads_before, &threads_after, ticks_per_second, wall_s),
        bench_cores: seconds(bench_ticks) / wall_s,
        rss_before_mib: rss_before as f64 / MIB,
        rss_after_mib: memory.rss as f64 / MIB,
        peak_rss_mib: memory.peak_rss as f64 / MIB,
        peak_reset,
        sampled_peak_rss_mib: samples.iter().map(|s| s.rss).max().unwrap_or(0) as f64 / MIB,
        database_mib: file_mib(&target.database)?,
        phases: timeline(&records, started_at, wall)
            .iter()
            .map(|span| phase(&samples, span, ticks_per_second))
            .collect(),
    })
}

/// Creates the connection, uploads a token from the simulator, defines the profile and makes
/// it the default. Returns the profile's uuid with Apple.
fn set_up(rt: &Runtime, sim: &AbmSimulator, admin: &Admin) -> Result<String, BenchError> {
    rt.block_on(admin.abm_create(CONNECTION, &sim.base_url(), sim.ca_pem()))?;
    let pem = rt.block_on(admin.abm_public_key(CONNECTION))?;
    let key_path = format!("/api/v1/abm/{CONNECTION}/public-key");
    let cert = mdm_sim::x509::certificates_from_pem(pem.as_bytes())?
        .into_iter()
        .next()
        .ok_or_else(|| answer(&key_path, "no certificate in the PEM"))?;
    let der = der::Encode::to_der(&cert)?;
    let p7m = sim
        .server_token(
            SERVER,
            &der,
            &TokenOptions {
                cipher: ContentCipher::Aes256Cbc,
                ber: false,
                new_org: false,
            },
        )
        .map_err(BenchError::AbmSim)?;
    let conn = rt.block_on(admin.abm_upload_token(CONNECTION, p7m))?;
    if conn["state"] != "active" {
        return Err(answer(
            &format!("/api/v1/abm/{CONNECTION}/token"),
            format!("the connection is {} after the token upload", conn["state"]),
        ));
    }
    let profile =
        rt.block_on(admin.abm_put_profile(CONNECTION, PROFILE, &json!({"profile_name": "Staff"})))?;
    let uuid = profile["profile_uuid"]
        .as_str()
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            answer(
                &format!("/api/v1/abm/{CONNECTION}/profiles/{PROFILE}"),
                format!("no profile_uuid in {profile}"),
            )
        })?;
    let conn = rt.block_on(admin.abm_patch(CONNECTION, &json!({"default_profile": PROFILE})))?;
    if conn["default_profile"] != PROFILE {
        return Err(answer(
            &format!("/api/v1/abm/{CONNECTION}"),
            format!("default_profile is {} after PATCH", conn["default_profile"]),
        ));
    }
    Ok(uuid)
}

/// `count` of `serials`, spread evenly over them.
pub fn spread(serials: &[String], count: usize) -> Vec<String> {
    if count == 0 || serials.is_empty() {
        return Vec::new();
    }
    let step = (serials.len() / count).max(1);
    serials.iter().step_by(step).take(count).cloned().collect()
}

/// Runs the phase against a daemon already serving `target`: adds `devices` devices to the
/// simulator, sets up the connection, then times the full, catch-up and incremental syncs
/// (the last after `changes` devices were changed). Checks that fail are listed in
/// [`AbmFigures::problems`]; a refused API call ends the phase with an error.
pub fn measure(
    rt: &Runtime,
    sim: &AbmSimulator,
    target: &Target<'_>,
    devices: usize,
    changes: usize,
) -> Result<AbmFigures, BenchError> {
    let rss_at_start_mib = procfs::memory(Some(target.pid))?.rss as f64 / MIB;
    progress(&format!("  adding {devices} devices to the ABM simulator"));
    let started = Instant::now();
    let serials = sim
        .add_devices(SERVER, devices)
        .map_err(BenchError::AbmSim)?;
    let sim_setup_seconds = started.elapsed().as_secs_f64();

    progress("  connection, server token, profile and default profile through the admin API");
    let started = Instant::now();
    let uuid = set_up(rt, sim, target.admin)?;
    let setup_seconds = started.elapsed().as_secs_f64();
    let mut problems = Vec::new();

    progress(&format!(
        "  full sync and assignment of {devices} devices (timed)"
    ));
    let full = timed_sync(rt, sim, target)?;
    let conn = wait_idle(rt, target.admin)?;
    let devices_listed = conn["devices"].as_u64().unwrap_or(0);
    if devices_listed != devices as u64 {
        problems.push(format!(
            "the connection lists {devices_listed} devices after the full sync, not {devices}"
        ));
    }
    if !full.full || full.added != devices as u64 {
        problems.push(format!(
            "the first sync was {} and added {} devices; expected a full fetch of {devices}",
            if full.full { "full" } else { "incremental" },
            full.added
        ));
    }
    if !conn["devices_due"].is_null() {
        problems.push(format!(
            "devices are still due for assignment after the full sync ({})",
            conn["devices_due"]
        ));
    }
    let devices_assigned = serials
        .iter()
        .filter(|s| {
            sim.device(s).is_some_and(|v| {
                v.device.profile_status == ProfileStatus::Assigned
                    && v.device.profile_uuid.as_deref() == Some(uuid.as_str())
            })
        })
        .count();
    if devices_assigned != devices {
        problems.push(format!(
            "ABM shows {devices_assigned} of {devices} devices with the profile assigned"
        ));
    }
    let largest_assign_batch = sim.counters().largest_assign_batch;
    if largest_assign_batch > ASSIGN_LIMIT {
        problems.push(format!(
            "an assignment call carried {largest_assign_batch} serials; Apple takes at most {ASSIGN_LIMIT}"
        ));
    }
    let fewest_calls = devices.div_ceil(ASSIGN_LIMIT) as u64;
    if full.assign_calls < fewest_calls {
        problems.push(format!(
            "{} assignment calls cannot have assigned {devices} devices",
            full.assign_calls
        ));
    }

    progress("  catch-up sync: the events the assignment caused in ABM");
    let catch_up = timed_sync(rt, sim, target)?;

    let changed = spread(&serials, changes);
    progress(&format!(
        "  changing {} devices in the simulator, then an incremental sync (timed)",
        changed.len()
    ));
    let change = DeviceChange {
        color: Some(NEW_COLOR.to_owned()),
        ..DeviceChange::default()
    };
    for serial in &changed {
        sim.modify_device(serial, &change)
            .map_err(BenchError::AbmSim)?;
    }
    let incremental = timed_sync(rt, sim, target)?;
    if incremental.full || incremental.events() != changed.len() as u64 {
        problems.push(format!(
            "the incremental sync was {} and counted {} events for {} changed devices",
            if incremental.full {
                "full"
            } else {
                "incremental"
            },
            incremental.events(),
            changed.len()
        ));
    }
    // The first, middle and last changed device, read back as the appliance stored them.
    let mut picks = vec![0, changed.len() / 2, changed.len().saturating_sub(1)];
    picks.dedup();
    for serial in picks.into_iter().filter_map(|i| changed.get(i)) {
        let device = rt.block_on(target.admin.abm_device(CONNECTION, serial))?;
        if device["color"] != NEW_COLOR {
            problems.push(format!(
                "device {serial} has colour {} in the appliance after the incremental sync, not {NEW_COLOR:?}",
                device["color"]
            ));
        }
    }
    Ok(AbmFigures {
        devices,
        changes: changed.len(),
        sim_setup_seconds,
        setup_seconds,
        rss_at_start_mib,
        full,
        catch_up,
        incremental,
        devices_listed,
        devices_assigned,
        largest_assign_batch,
        problems,
    })
}

/// Runs phase 5: starts the simulator and a daemon of its own (`binary`, data in `dir`), then
/// [`measure`]s.
pub fn run(
    rt: &Runtime,
    devices: usize,
    changes: usize,
    binary: &Path,
    dir: &Path,
) -> Result<AbmFigures, BenchError> {
    let sim = rt
        .block_on(AbmSimulator::start(AbmSimConfig::default()))
        .map_err(BenchError::AbmSim)?;
    let data_dir = dir.join("abm-data");
    let log = dir.join("abm-mdmd.log");
    let addr = daemon::free_loopback_addr()?;
    progress(&format!(
        "phase 5: ABM; starting another daemon on {addr}, ABM simulator at {}",
        sim.base_url()
    ));
    let mut daemon = Daemon::start(binary, &data_dir, addr, &log, &PushService::Unreachable)?;
    let ca_pem = rt.block_on(tls::fetch_ca_pem(addr))?;
    let admin =
        Admin::new(&ca_pem, &daemon.base_url(), &daemon.admin_token()?)?.with_timeout(SYNC_TIMEOUT);
    let target = Target {
        admin: &admin,
        pid: daemon.pid,
        database: data_dir.join(mdmd::DB_FILE),
    };
    let figures = measure(rt, &sim, &target, devices, changes);
    daemon.check_alive()?;
    daemon.stop()?;
    rt.block_on(sim.shutdown());
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(endpoint: Option<Endpoint>, at: SystemTime) -> RequestRecord {
        RequestRecord {
            method: "POST".into(),
            path: "/x".into(),
            status: 200,
            endpoint,
            at,
        }
    }

    #[test]
    fn the_call_is_cut_at_the_last_page_and_the_assignment_calls() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let records = vec![
            record(Some(Endpoint::Session), ms(5)),
            record(Some(Endpoint::Account), ms(10)),
            record(Some(Endpoint::FetchDevices), ms(100)),
            record(Some(Endpoint::FetchDevices), ms(200)),
            record(Some(Endpoint::SyncDevices), ms(250)),
            record(Some(Endpoint::AssignProfile), ms(400)),
            record(Some(Endpoint::AssignProfile), ms(900)),
            record(None, ms(950)),
        ];
        let d = Duration::from_millis;
        let spans = timeline(&records, t0, d(1000));
        let got: Vec<(&str, Duration, Duration)> =
            spans.iter().map(|s| (s.name, s.from, s.to)).collect();
        assert_eq!(
            got,
            [
                ("pages fetched and stored", d(0), d(250)),
                ("to the first assignment", d(250), d(400)),
                ("assignment calls", d(400), d(900)),
                ("rest of the call", d(900), d(1000)),
            ]
        );

        // An incremental sync that assigns nothing; a record stamped before the call (clock
        // stepped back) counts as at its start, one after it as at its end.
        let records = vec![
            record(Some(Endpoint::Session), t0 - Duration::from_secs(1)),
            record(Some(Endpoint::SyncDevices), ms(30)),
            record(Some(Endpoint::SyncDevices), ms(5000)),
        ];
        let spans = timeline(&records, t0, d(80));
        assert_eq!(spans.len(), 2);
        assert_eq!((spans[0].from, spans[0].to), (d(0), d(80)));
        assert_eq!(spans[1].name, "rest of the call");
        assert_eq!((spans[1].from, spans[1].to), (d(80), d(80)));

        // Nothing reached the simulator: one stretch.
        let spans = timeline(&[], t0, d(80));
        assert_eq!(
            spans,
            [Span {
                name: "rest of the call",
                from: d(0),
                to: d(80)
            }]
        );
    }

    fn sample(ms: u64, rss_mib: u64, server: u64, bench: u64, writer: u64) -> Sample {
        Sample {
            at: Duration::from_millis(ms),
            rss: rss_mib << 20,
            server_ticks: server,
            bench_ticks: bench,
            threads: [
                ("mdm-store-write".to_owned(), writer),
                ("tokio-rt-worker".to_owned(), server - writer),
            ]
            .into(),
        }
    }

    #[test]
    fn a_phase_takes_cpu_and_memory_from_the_samples_nearest_its_ends() {
        let samples = vec![
            sample(0, 20, 0, 0, 0),
            sample(50, 30, 5, 1, 2),
            sample(100, 90, 10, 2, 4),
            sample(150, 60, 15, 3, 6),
            sample(200, 40, 20, 4, 8),
            sample(1200, 40, 20, 4, 8),
        ];
        let span = Span {
            name: "assignment calls",
            from: Duration::from_millis(48),
            to: Duration::from_millis(160),
        };
        // Samples at 50 and 150 ms: 10 ticks of 10 ms in 0.1 s is one core.
        let p = phase(&samples, &span, 100);
        assert_eq!(p.name, "assignment calls");
        assert!((p.seconds - 0.112).abs() < 1e-9, "{p:?}");
        assert!((p.server_cores - 1.0).abs() < 1e-9, "{p:?}");
        assert!((p.bench_cores - 0.2).abs() < 1e-9, "{p:?}");
        assert!((p.sampled_peak_rss_mib - 90.0).abs() < 1e-9, "{p:?}");
        let names: Vec<&str> = p.server_threads.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["tokio-rt-worker", "mdm-store-write"]);
        assert!((p.server_threads[1].cores - 0.4).abs() < 1e-9, "{p:?}");

        // An idle stretch, and one that falls between two samples.
        let idle = phase(
            &samples,
            &Span {
                name: "rest of the call",
                from: Duration::from_millis(300),
                to: Duration::from_millis(1200),
            },
            100,
        );
        assert_eq!(idle.server_cores, 0.0);
        let short = phase(
            &samples,
            &Span {
                name: "to the first assignment",
                from: Duration::from_millis(101),
                to: Duration::from_millis(104),
            },
            100,
        );
        assert_eq!(
            (short.server_cores, short.sampled_peak_rss_mib),
            (0.0, 90.0)
        );
        assert_eq!(phase(&[], &span, 100).server_cores, 0.0);
    }

    /// The whole phase against an embedded daemon and a small simulator: every count the
    /// phase checks, and the figures it derives from them.
    #[test]
    fn the_phase_syncs_assigns_and_reads_changes_back() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let addr = daemon::free_loopback_addr().unwrap();
        let data = dir.path().join("data");
        let mut cfg = mdmd::Config::development(addr, data.clone());
        // Never Apple's services from a test.
        cfg.apns.url = "https://127.0.0.1:9".into();
        cfg.abm.url = "https://127.0.0.1:9".into();
        let running = rt.block_on(mdmd::start(cfg)).unwrap();
        let token = std::fs::read_to_string(data.join(mdmd::ADMIN_TOKEN_FILE)).unwrap();
        let admin = Admin::new(&running.ca_pem, &format!("https://{addr}"), token.trim())
            .unwrap()
            // Seconds here; a hung sync should fail the test long before the benchmark's limit.
            .with_timeout(Duration::from_secs(120));
        let sim = rt
            .block_on(async { AbmSimulator::start(AbmSimConfig::default()).await })
            .unwrap();
        let target = Target {
            admin: &admin,
            pid: std::process::id(),
            database: data.join(mdmd::DB_FILE),
        };

        let f = measure(&rt, &sim, &target, 2_500, 300).unwrap();
        assert!(f.problems.is_empty(), "{:?}", f.problems);
        assert!(!f.failed());
        assert_eq!((f.devices, f.changes), (2_500, 300));
        assert_eq!(f.devices_listed, 2_500);
        assert_eq!(f.devices_assigned, 2_500);
        assert_eq!(f.largest_assign_batch, 1000);

        // Three fetch pages of at most 1,000, then one sync page (nothing changed meanwhile);
        // three assignment calls of 1,000, 1,000 and 500.
        let full = &f.full;
        assert!(full.full);
        assert_eq!((full.added, full.modified, full.deleted), (2_500, 0, 0));
        assert_eq!(full.apple_requests["fetch_devices"], 3);
        assert_eq!(full.apple_requests["sync_devices"], 1);
        assert_eq!(full.pages, 4);
        assert_eq!(full.assign_calls, 3);
        assert_eq!(full.apple_requests["assign_profile"], 3);
        assert!(full.peak_reset);
        assert!(full.peak_rss_mib > 0.0 && full.sampled_peak_rss_mib > 0.0);
        assert!(full.database_mib > 0.0);
        let names: Vec<&str> = full.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "pages fetched and stored",
                "to the first assignment",
                "assignment calls",
                "rest of the call"
            ]
        );
        let covered: f64 = full.phases.iter().map(|p| p.seconds).sum();
        assert!((covered - full.wall_seconds).abs() < 1e-6, "{full:?}");
        assert!((full.events_per_second * full.wall_seconds - 2_500.0).abs() < 1e-6);

        // ABM reports every assignment back as a modification; nothing is left to assign.
        let catch_up = &f.catch_up;
        assert!(!catch_up.full);
        assert_eq!(catch_up.modified, 2_500);
        assert_eq!(catch_up.assign_calls, 0);
        assert!(!catch_up.apple_requests.contains_key("fetch_devices"));

        let inc = &f.incremental;
        assert!(!inc.full);
        assert_eq!((inc.added, inc.modified, inc.deleted), (0, 300, 0));
        assert_eq!(inc.pages, 1);
        assert_eq!(inc.assign_calls, 0);
        assert_eq!(inc.phases.len(), 2);

        // The report shows the figures beside their targets.
        let mut text = String::new();
        crate::report::abm_section(&mut text, &f);
        crate::report::abm_targets(&mut text, &f);
        for needle in [
            "ABM full sync and assignment of 2500 devices",
            "4 (2500 added, 0 modified, 0 deleted)",
            "fetch_devices 3",
            "assign_profile 3",
            "2500 of 2500 devices listed by the connection, 2500 assigned in ABM, largest assignment call 1000 serials",
            "ABM incremental sync after 300 devices were changed in ABM",
            "(0 added, 300 modified, 0 deleted)",
            "assignment calls",
            "target < 15 s at 100k",
            "target < 1 s for 1,000",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }

        rt.block_on(sim.shutdown());
        rt.block_on(running.stop()).unwrap();
    }

    #[test]
    fn changes_are_spread_over_the_devices() {
        let serials: Vec<String> = (0..10).map(|i| format!("S{i}")).collect();
        assert_eq!(spread(&serials, 3), ["S0", "S3", "S6"]);
        assert_eq!(spread(&serials, 10).len(), 10);
        assert_eq!(spread(&serials, 20).len(), 10);
        assert!(spread(&serials, 0).is_empty());
        assert!(spread(&[], 5).is_empty());
    }
}
