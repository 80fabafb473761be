//! Phase 4 (`--fanout N`): one command fanned out to N devices through the APNs simulator.
//!
//! A daemon of its own (fresh data directory, so its memory reflects only this phase) is
//! started with its push service pointed at an [`ApnsSimulator`] running in this process on
//! 127.0.0.1. The push certificate imported for the appliance's CSR is issued by that
//! simulator's stand-in push CA, so the simulator accepts the daemon's TLS client
//! certificate. Two devices are enrolled through the protocol to serve as `Idle` probes; then
//! the daemon is stopped, N enrolled devices with distinct push tokens are seeded into its
//! database, and it is restarted.
//!
//! Each round queues one `ProfileList` for all N seeded devices through the admin API (10,000
//! targets per call) and waits until the simulator has accepted N pushes. Meanwhile a few
//! probes (`GET /healthz`, and `Idle` reports from the probe devices, which have nothing
//! queued) measure whether the daemon keeps answering requests while it pushes. The seeded
//! devices never connect, so their commands stay queued: a later round queues one more
//! command each and pushes every device again (queueing marks a device for a push whatever
//! it already has queued; the periodic re-push of devices with pending commands comes only
//! every four hours by default, so it does not add pushes here).

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use mdm_sim::apns::{ApnsConfig, ApnsSimulator, Push};
use mdm_sim::device::SimDevice;
use mdm_sim::http::HttpClient;
use mdm_sim::keys::PrivateKey;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::admin::{self, Admin, MAX_TARGETS_PER_CALL};
use crate::daemon::{self, Daemon, PushService};
use crate::error::BenchError;
use crate::histogram::Histogram;
use crate::procfs::{self, ticks_to_duration};
use crate::report::{FanoutFigures, FanoutRound, Percentiles, ProbeFigures, Responsiveness};
use crate::{enroll, progress, seed, thread_split, tls};

/// Devices enrolled through the protocol to send `Idle` probes.
const IDLE_PROBERS: usize = 2;
/// Concurrent `GET /healthz` probes.
const HEALTH_PROBERS: usize = 2;
/// Pause between two requests of one probe: four probes then send at most about 400
/// requests/s, little next to what the daemon serves, so they observe rather than load it.
const PROBE_PAUSE: Duration = Duration::from_millis(10);
/// A probe request that takes longer counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the probes run on the idle daemon before the first round, for comparison.
const BASELINE: Duration = Duration::from_secs(2);
/// How often the simulator's counters are read while waiting for the pushes (atomics only).
const POLL: Duration = Duration::from_millis(2);
/// The daemon counts as idle once its CPU time grows by at most one clock tick over this.
const SETTLE_SAMPLE: Duration = Duration::from_millis(200);
/// Longest wait for the daemon to go idle after a round.
const SETTLE_MAX: Duration = Duration::from_secs(15);
/// Failure messages kept per probe kind.
const MAX_ERROR_SAMPLES: usize = 5;
/// The command fanned out.
const REQUEST_TYPE: &str = "ProfileList";

/// How long a round may take before it is given up: generous (a hundred times slower than
/// the target) but bounded, so that a daemon that never pushes cannot hang the benchmark.
pub fn round_deadline(devices: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(u64::try_from(devices).unwrap_or(u64::MAX))
}

/// One kind of probe request.
enum Prober {
    /// `GET /healthz` on a kept-alive connection without a client certificate.
    Health { client: HttpClient, url: String },
    /// An enrolled device sending `Idle` over its kept-alive mTLS connection.
    Device(Box<SimDevice>),
}

impl Prober {
    fn is_health(&self) -> bool {
        matches!(self, Prober::Health { .. })
    }

    /// One request; `Err` says what went wrong.
    async fn once(&mut self) -> Result<(), String> {
        match self {
            Prober::Health { client, url } => {
                let resp = client
                    .get(url, HeaderMap::new())
                    .await
                    .map_err(|e| format!("GET /healthz: {e}"))?;
                if resp.status == 200 {
                    Ok(())
                } else {
                    Err(format!("GET /healthz answered HTTP {}", resp.status))
                }
            }
            Prober::Device(device) => {
                let udid = device.udid.clone();
                let commands = tokio::time::timeout(PROBE_TIMEOUT, device.run_until_idle())
                    .await
                    .map_err(|_| format!("device {udid}: Idle took longer than {PROBE_TIMEOUT:?}"))?
                    .map_err(|e| format!("device {udid}: {e}"))?;
                if commands.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "device {udid} was sent {} commands although none were queued for it",
                        commands.len()
                    ))
                }
            }
        }
    }
}

/// What the probes of one kind saw in one window.
#[derive(Debug, Default)]
struct Tally {
    latency: Histogram,
    failures: u64,
    errors: Vec<String>,
}

impl Tally {
    fn fail(&mut self, error: String) {
        self.failures += 1;
        if self.errors.len() < MAX_ERROR_SAMPLES {
            self.errors.push(error);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency.merge(&other.latency);
        self.failures += other.failures;
        for e in other.errors {
            if self.errors.len() < MAX_ERROR_SAMPLES {
                self.errors.push(e);
            }
        }
    }

    fn figures(&self) -> ProbeFigures {
        ProbeFigures {
            requests: self.latency.count(),
            failures: self.failures,
            latency_ms: Percentiles::from(&self.latency),
            error_samples: self.errors.clone(),
        }
    }
}

/// Probes running on the runtime's worker threads until [`ProbeWindow::close`].
struct ProbeWindow {
    stop: Arc<AtomicBool>,
    started: Instant,
    tasks: Vec<JoinHandle<(Prober, Tally)>>,
}

impl ProbeWindow {
    fn open(rt: &Runtime, probers: Vec<Prober>) -> ProbeWindow {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = probers
            .into_iter()
            .map(|mut prober| {
                let stop = Arc::clone(&stop);
                rt.spawn(async move {
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        match prober.once().await {
                            Ok(()) => tally.latency.record(sent.elapsed()),
                            Err(e) => tally.fail(e),
                        }
                        tokio::time::sleep(PROBE_PAUSE).await;
                    }
                    (prober, tally)
                })
            })
            .collect();
        ProbeWindow {
            stop,
            started: Instant::now(),
            tasks,
        }
    }

    /// Stops the probes and returns them with what they saw.
    fn close(mut self, rt: &Runtime) -> Result<(Vec<Prober>, Responsiveness), BenchError> {
        self.stop.store(true, Ordering::Relaxed);
        let seconds = self.started.elapsed().as_secs_f64();
        let tasks = std::mem::take(&mut self.tasks);
        let mut probers = Vec::with_capacity(tasks.len());
        let (mut health, mut idle) = (Tally::default(), Tally::default());
        for task in tasks {
            let (prober, tally) = rt.block_on(task)?;
            if prober.is_health() {
                health.merge(tally);
            } else {
                idle.merge(tally);
            }
            probers.push(prober);
        }
        Ok((
            probers,
            Responsiveness {
                seconds,
                healthz: health.figures(),
                idle: idle.figures(),
            },
        ))
    }
}

impl Drop for ProbeWindow {
    fn drop(&mut self) {
        // A round that fails midway drops its window unclosed: stop the probes all the same.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the simulator's records say about one round's pushes.
#[derive(Debug, Clone, PartialEq)]
pub struct PushTally {
    /// Distinct seeded devices (row numbers below the device count) pushed.
    pub devices_pushed: usize,
    /// Pushes to other tokens, to another topic, or without push magic.
    pub unexpected: u64,
    /// Distinct connections that carried the pushes.
    pub connections: usize,
    /// Offset of the first push from `started_at`, if any push arrived.
    pub first: Option<Duration>,
    /// Offset of the last push from `started_at`, if any push arrived.
    pub last: Option<Duration>,
}

impl PushTally {
    /// Tallies `pushes` received since `started_at` for `devices` seeded devices on `topic`.
    pub fn new(pushes: &[Push], started_at: SystemTime, devices: usize, topic: &str) -> Self {
        let mut pushed = HashSet::new();
        let mut connections = HashSet::new();
        let mut unexpected = 0;
        let (mut first, mut last): (Option<Duration>, Option<Duration>) = (None, None);
        for push in pushes {
            connections.insert(push.connection_id);
            let index = seed::seeded_index(&push.token).filter(|i| *i < devices);
            match index {
                Some(i) if push.topic == topic && push.push_magic.is_some() => {
                    pushed.insert(i);
                }
                _ => unexpected += 1,
            }
            // A push stamped before the round started (clock stepped back) counts as at 0.
            let at = push
                .received_at
                .duration_since(started_at)
                .unwrap_or_default();
            first = Some(first.map_or(at, |f| f.min(at)));
            last = Some(last.map_or(at, |l| l.max(at)));
        }
        PushTally {
            devices_pushed: pushed.len(),
            unexpected,
            connections: connections.len(),
            first,
            last,
        }
    }
}

/// Everything the rounds share.
struct Fanout<'a> {
    rt: &'a Runtime,
    sim: ApnsSimulator,
    daemon: Daemon,
    admin: Admin,
    udids: Vec<String>,
    probers: Vec<Prober>,
    ticks_per_second: u64,
}

impl Fanout<'_> {
    fn seconds(&self, ticks: u64) -> f64 {
        ticks_to_duration(ticks, self.ticks_per_second).as_secs_f64()
    }

    /// Waits until the daemon's CPU time stops growing: after the last push it still records
    /// the outcomes in the store.
    fn settle(&self) -> Result<(), BenchError> {
        let started = Instant::now();
        let mut last = self.daemon.cpu()?.own();
        while started.elapsed() < SETTLE_MAX {
            std::thread::sleep(SETTLE_SAMPLE);
            let now = self.daemon.cpu()?.own();
            if now.saturating_sub(last) <= 1 {
                break;
            }
            last = now;
        }
        Ok(())
    }

    fn round(&mut self, round: usize) -> Result<FanoutRound, BenchError> {
        let devices = self.udids.len();
        let rt = self.rt;
        self.sim.clear_records();
        let sim_before = self.sim.counters();
        let server_before = self.daemon.cpu()?.own();
        let threads_before = procfs::thread_ticks(self.daemon.pid)?;
        let self_before = procfs::cpu_ticks(None)?.own();
        let window = ProbeWindow::open(rt, std::mem::take(&mut self.probers));

        let started_at = SystemTime::now();
        let started = Instant::now();
        let mut enqueue_calls = 0;
        for chunk in self.udids.chunks(MAX_TARGETS_PER_CALL) {
            rt.block_on(self.admin.queue(chunk, REQUEST_TYPE))?;
            enqueue_calls += 1;
        }
        let enqueue_seconds = started.elapsed().as_secs_f64();

        let deadline = started + round_deadline(devices);
        let target = u64::try_from(devices).unwrap_or(u64::MAX);
        while self
            .sim
            .counters()
            .pushes_accepted
            .saturating_sub(sim_before.pushes_accepted)
            < target
            && Instant::now() < deadline
        {
            self.daemon.check_alive()?;
            std::thread::sleep(POLL);
        }
        let wall = started.elapsed().as_secs_f64().max(1e-9);
        let server_at_done = self.daemon.cpu()?.own();
        let threads_after = procfs::thread_ticks(self.daemon.pid)?;
        let self_at_done = procfs::cpu_ticks(None)?.own();
        let (probers, during) = window.close(rt)?;
        self.probers = probers;

        self.settle()?;
        let server_total = self.daemon.cpu()?.own().saturating_sub(server_before);
        let sim_after = self.sim.counters();
        let accepted = sim_after
            .pushes_accepted
            .saturating_sub(sim_before.pushes_accepted);
        let served = sim_after
            .streams_served
            .saturating_sub(sim_before.streams_served);
        let tally = PushTally::new(&self.sim.pushes(), started_at, devices, admin::TOPIC);
        // The records of 50,000 pushes hold their headers and bodies: drop them now.
        self.sim.clear_records();

        let complete = tally.devices_pushed == devices;
        let push_seconds = match (tally.first, tally.last) {
            (Some(first), Some(last)) => last.saturating_sub(first).as_secs_f64(),
            _ => 0.0,
        };
        Ok(FanoutRound {
            round,
            devices,
            enqueue_calls,
            enqueue_seconds,
            pushes_accepted: accepted,
            pushes_refused: served.saturating_sub(accepted),
            devices_pushed: tally.devices_pushed,
            unexpected_pushes: tally.unexpected,
            complete,
            push_connections: tally.connections,
            connections_opened: sim_after
                .connections_opened
                .saturating_sub(sim_before.connections_opened),
            first_push_ms: tally.first.map(|d| d.as_secs_f64() * 1000.0),
            fanout_seconds: tally.last.filter(|_| complete).map(|d| d.as_secs_f64()),
            push_seconds,
            pushes_per_second: accepted as f64 / push_seconds.max(1e-9),
            server_cpu_ms_per_device: self.seconds(server_total) * 1000.0 / devices.max(1) as f64,
            server_cores: self.seconds(server_at_done.saturating_sub(server_before)) / wall,
            bench_cores: self.seconds(self_at_done.saturating_sub(self_before)) / wall,
            server_threads: thread_split(
                &threads_before,
                &threads_after,
                self.ticks_per_second,
                wall,
            ),
            server_memory: self.daemon.memory()?.into(),
            database_mib: self.daemon.database_mib()?,
            during,
        })
    }
}

/// Runs phase 4 with `devices` seeded devices and `rounds` rounds. `binary` is the daemon,
/// `dir` the run's private directory, `keys` the key pool the probe devices take theirs from.
pub fn run(
    rt: &Runtime,
    devices: usize,
    rounds: usize,
    binary: &Path,
    dir: &Path,
    keys: &[PrivateKey],
) -> Result<FanoutFigures, BenchError> {
    let sim = rt
        .block_on(ApnsSimulator::start(ApnsConfig::default()))
        .map_err(BenchError::Apns)?;
    let ca_file = dir.join("apns-server-ca.pem");
    let ca = sim.server_ca_pem().map_err(BenchError::Apns)?;
    std::fs::write(&ca_file, ca).map_err(BenchError::io(format!("write {}", ca_file.display())))?;
    let push = PushService::Simulator {
        url: sim.url(),
        ca_file,
    };
    let data_dir = dir.join("fanout-data");
    let log = dir.join("fanout-mdmd.log");
    let addr = daemon::free_loopback_addr()?;
    progress(&format!(
        "phase 4: push fan-out; starting another daemon on {addr}, pushing to the APNs simulator at {}",
        sim.url()
    ));
    let mut daemon = Daemon::start(binary, &data_dir, addr, &log, &push)?;
    let ca_pem = rt.block_on(tls::fetch_ca_pem(addr))?;
    let admin = Admin::new(&ca_pem, &daemon.base_url(), &daemon.admin_token()?)?;
    rt.block_on(admin.import_push_cert(sim.authorities()))?;
    let (link_id, link_url) = rt.block_on(admin.create_link())?;

    let ca_certs = mdm_sim::x509::certificates_from_pem(ca_pem.as_bytes())?;
    let client = HttpClient::from_ca_pem(ca_pem.as_bytes())?;
    let mut probers = Vec::new();
    for i in 0..IDLE_PROBERS {
        let key = keys.get(i % keys.len().max(1)).cloned();
        let device = rt.block_on(enroll::enroll_device(
            &client, &link_url, &ca_pem, &ca_certs, key,
        ))?;
        probers.push(Prober::Device(Box::new(device)));
    }

    progress(&format!(
        "  stopping it and seeding {devices} enrolled devices with push tokens"
    ));
    daemon.stop()?;
    let started = Instant::now();
    rt.block_on(seed::seed(
        &data_dir.join(mdmd::DB_FILE),
        devices,
        &link_id,
        admin::TOPIC,
    ))?;
    let seed_seconds = started.elapsed().as_secs_f64();
    daemon.restart(binary)?;
    let memory_after_restart = daemon.memory()?.into();
    let admin = Admin::new(&ca_pem, &daemon.base_url(), &daemon.admin_token()?)?;
    for _ in 0..HEALTH_PROBERS {
        probers.push(Prober::Health {
            client: HttpClient::from_ca_pem(ca_pem.as_bytes())?.with_timeout(PROBE_TIMEOUT),
            url: format!("{}/healthz", daemon.base_url()),
        });
    }
    // Opens every probe's connection (the devices' died with the restart), so that the
    // measured requests run on established connections.
    for prober in &mut probers {
        rt.block_on(prober.once()).map_err(BenchError::Probe)?;
    }
    let window = ProbeWindow::open(rt, probers);
    std::thread::sleep(BASELINE);
    let (probers, baseline) = window.close(rt)?;

    let mut fanout = Fanout {
        rt,
        sim,
        daemon,
        admin,
        udids: (0..devices).map(seed::seeded_udid).collect(),
        probers,
        ticks_per_second: procfs::clock_ticks_per_second(),
    };
    let mut figures = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        progress(&format!(
            "  fan-out round {round}: one {REQUEST_TYPE} for {devices} devices"
        ));
        let r = fanout.round(round)?;
        if !r.complete {
            progress(&format!(
                "  only {} of {devices} devices were pushed within {:?}; see {}",
                r.devices_pushed,
                round_deadline(devices),
                fanout.daemon.log.display()
            ));
        }
        figures.push(r);
    }
    fanout.daemon.stop()?;
    rt.block_on(fanout.sim.shutdown());
    Ok(FanoutFigures {
        devices,
        seed_seconds,
        memory_after_restart,
        baseline,
        rounds: figures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Encode;
    use mdm_service::ports::{PushIdentity, PushMessage, PushOutcome, PushProvider};

    #[test]
    fn rounds_are_bounded_in_time() {
        assert_eq!(round_deadline(0), Duration::from_secs(30));
        assert_eq!(round_deadline(50_000), Duration::from_secs(80));
    }

    /// Pushes sent by the daemon's own push client through the simulator, tallied the way a
    /// round tallies them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pushes_through_the_simulator_are_tallied_per_seeded_device() {
        let sim = ApnsSimulator::start(ApnsConfig::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let roots = dir.path().join("apns-ca.pem");
        std::fs::write(&roots, sim.server_ca_pem().unwrap()).unwrap();
        let pusher = mdm_apns::ApnsPusher::new(mdm_apns::ApnsConfig {
            base_url: sim.url(),
            roots: mdm_apns::ApnsRoots::PemFile(roots),
            ..mdm_apns::ApnsConfig::default()
        })
        .unwrap();
        let (cert, key) = sim.issue_push_identity(admin::TOPIC).unwrap();
        pusher
            .set_identity(Some(PushIdentity {
                cert_chain_der: vec![cert.to_der().unwrap()],
                key_pkcs8_der: zeroize::Zeroizing::new(key.pkcs8_der().to_vec()),
                topic: admin::TOPIC.into(),
            }))
            .unwrap();
        let message = |i: usize| PushMessage {
            enrollment_id: seed::seeded_udid(i),
            token_hex: seed::seeded_token(i),
            push_magic: format!("MAGIC-{i}"),
            topic: admin::TOPIC.into(),
        };
        // A fan-out to 250 devices that also reached 50 rows beyond them, and one device twice.
        let mut batch: Vec<PushMessage> = (0..300).map(message).collect();
        batch.push(message(7));
        let started_at = SystemTime::now();
        let outcomes = pusher.push(batch).await;
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, PushOutcome::Sent { .. })),
            "{outcomes:?}"
        );
        let elapsed = started_at.elapsed().unwrap();
        assert_eq!(sim.counters().pushes_accepted, 301);

        let pushes = sim.pushes();
        let tally = PushTally::new(&pushes, started_at, 250, admin::TOPIC);
        assert_eq!(tally.devices_pushed, 250);
        assert_eq!(tally.unexpected, 50);
        assert_eq!(tally.connections, 1);
        let (first, last) = (tally.first.unwrap(), tally.last.unwrap());
        assert!(
            first <= last && last <= elapsed,
            "{first:?} {last:?} {elapsed:?}"
        );

        // Pushes to another topic are not the fan-out's.
        let other = PushTally::new(&pushes, started_at, 250, "com.apple.mgmt.External.other");
        assert_eq!((other.devices_pushed, other.unexpected), (0, 301));
        // After the records are cleared, a round starts from nothing.
        sim.clear_records();
        assert_eq!(
            PushTally::new(&sim.pushes(), started_at, 250, admin::TOPIC),
            PushTally {
                devices_pushed: 0,
                unexpected: 0,
                connections: 0,
                first: None,
                last: None,
            }
        );
        sim.shutdown().await;
    }
}
