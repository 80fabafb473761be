//! Command round trips on a redb store with 10,000 enrollments: one `record_result` followed
//! by one `next_command`, as a device connection does per command. Compares 64 concurrent
//! tasks (which group commit batches) with one task doing the same work in sequence.
//!
//! Then the store's share of an ABM sync and assignment of 100,000 devices: pages of 1000
//! device records written with their connection record (one `abm_write` each), then the
//! assignment job's loop (`abm_devices_due` 1000 at a time, write them back assigned).
//!
//! Run with `cargo bench -p mdm-store` (`-- --queue-only` skips the ABM part); the database lives in a temporary directory (set
//! `TMPDIR` to measure a particular disk). Figures are printed, not asserted.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mdm_service::ports::{
    AbmAssignOutcome, AbmAssignment, AbmBatch, AbmConnectionRecord, AbmDeviceRecord, AbmEndpoint,
    AbmStore, AbmSyncState, AuthenticateRecord, CommandQueue, CommandResult, DeliveryStatus,
    DeviceFacts, EnrollmentStore, NewCommand, NextCommand, PushTarget, ResultOutcome, Timestamp,
    TokenUpdateRecord,
};
use mdm_store::{RedbStore, StoreOptions, StoreStats};

const ENROLLMENTS: usize = 10_000;
const TASKS: usize = 64;
/// Commands queued per enrollment: enough that no task runs out during a run.
const COMMANDS: usize = 3;
const CONCURRENT_ROUND_TRIPS: usize = 20_000;
const SEQUENTIAL_ROUND_TRIPS: usize = 600;

fn enrollment_id(i: usize) -> String {
    format!("BENCH-{i:05}")
}

async fn populate(store: &RedbStore) -> Result<()> {
    let at = Timestamp::now();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            for i in (chunk..ENROLLMENTS).step_by(TASKS) {
                let id = enrollment_id(i);
                store
                    .authenticate(AuthenticateRecord {
                        id: id.clone(),
                        identity_sha256: format!("{i:064x}"),
                        topic: Some("com.apple.mgmt.External.bench".into()),
                        facts: DeviceFacts::default(),
                        source: None,
                        at,
                    })
                    .await?;
                store
                    .token_update(TokenUpdateRecord {
                        id: id.clone(),
                        device_id: id,
                        user_id: None,
                        user_short_name: None,
                        identity_sha256: format!("{i:064x}"),
                        push: PushTarget {
                            token_hex: format!("{i:064x}"),
                            push_magic: "magic".into(),
                            topic: "com.apple.mgmt.External.bench".into(),
                        },
                        unlock_token_sealed: None,
                        awaiting_configuration: false,
                        at,
                    })
                    .await?;
            }
            Ok::<(), mdm_service::ports::StoreError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let targets: Vec<String> = (0..ENROLLMENTS).map(enrollment_id).collect();
    for c in 0..COMMANDS {
        let outcome = store
            .enqueue(
                NewCommand {
                    uuid: format!("00000000-0000-4000-8000-{c:012}"),
                    request_type: "DeviceInformation".into(),
                    payload: vec![b'x'; 600],
                    sealed: false,
                    created_at: at,
                    created_by: "bench".into(),
                },
                targets.clone(),
            )
            .await?;
        if outcome.queued.len() != ENROLLMENTS {
            bail!("only {} targets accepted", outcome.queued.len());
        }
    }
    Ok(())
}

/// Acknowledges the current command of `id` and learns the next one, as the service does: the
/// result's write reports it, and the queue is read again only if it did not look.
async fn round_trip(store: &RedbStore, id: &str, skip: &HashSet<String>) -> Result<()> {
    let current = store
        .next_command(id, skip)?
        .with_context(|| format!("{id} has no command left"))?;
    let outcome = store
        .record_result(
            id,
            CommandResult {
                uuid: current.uuid,
                status: DeliveryStatus::Acknowledged,
                raw: vec![b'r'; 300],
                error_chain_json: None,
                at: Timestamp::now(),
                touch: false,
                skip_next: skip.clone(),
            },
        )
        .await?;
    if let ResultOutcome::Recorded {
        next: NextCommand::Unread,
        ..
    } = outcome
    {
        store.next_command(id, skip)?;
    }
    Ok(())
}

/// Runs `round_trips` (rounded down to a multiple of `tasks`) on `tasks` tasks; returns how
/// many ran and how long they took.
async fn run(
    store: &RedbStore,
    tasks: usize,
    round_trips: usize,
    first: usize,
) -> Result<(usize, Duration)> {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let per_task = round_trips / tasks;
    for t in 0..tasks {
        let store = store.clone();
        set.spawn(async move {
            let skip = HashSet::new();
            for n in 0..per_task {
                // Spread over all enrollments; each (task, n) pair hits a distinct one until
                // they wrap around, after which the next queued command is acknowledged. The
                // multiplier (a prime that does not divide ENROLLMENTS) scatters neighbours over
                // the key space, as devices' random UDIDs do.
                let id = enrollment_id((first + t + n * tasks) * 7919 % ENROLLMENTS);
                round_trip(&store, &id, &skip).await?;
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    Ok((per_task * tasks, start.elapsed()))
}

/// This process's CPU time (user + system, all threads) and bytes handed to `write`-family
/// calls, from `/proc/self/stat` and `/proc/self/io`.
#[derive(Debug, Clone, Copy)]
struct Usage {
    cpu: Duration,
    written: u64,
}

impl Usage {
    fn now() -> Result<Usage> {
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("/proc/self/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        let io = std::fs::read_to_string("/proc/self/io")?;
        let written = io
            .lines()
            .find_map(|l| l.strip_prefix("wchar:"))
            .context("/proc/self/io has no wchar")?
            .trim()
            .parse()?;
        // USER_HZ is 100 on every Linux this runs on.
        Ok(Usage {
            cpu: Duration::from_millis(ticks * 10),
            written,
        })
    }
}

fn report(
    label: &str,
    n: usize,
    elapsed: Duration,
    before: (StoreStats, Usage),
    after: (StoreStats, Usage),
) {
    let commits = after.0.commits - before.0.commits;
    let writes = after.0.writes - before.0.writes;
    let per_sec = n as f64 / elapsed.as_secs_f64();
    let cpu = (after.1.cpu - before.1.cpu).as_secs_f64();
    let written = after.1.written - before.1.written;
    println!(
        "{label:<28} {n:>6} round trips in {:>8.3} s = {per_sec:>9.0}/s; \
         {writes} writes in {commits} commits (commits/writes = {:.3}); \
         CPU {:.1} µs per round trip; {:.0} KiB written per commit",
        elapsed.as_secs_f64(),
        commits as f64 / writes.max(1) as f64,
        cpu * 1e6 / n.max(1) as f64,
        written as f64 / 1024.0 / commits.max(1) as f64,
    );
}

const ABM_DEVICES: usize = 100_000;
const ABM_PAGE: usize = 1_000;

fn abm_connection(cursor: usize) -> AbmConnectionRecord {
    let endpoint = AbmEndpoint {
        base_url: "https://mdmenrollment.apple.com".into(),
        ca_pem: None,
    };
    AbmConnectionRecord {
        sync: AbmSyncState {
            interval_seconds: 3600,
            cursor: Some(format!("MTU2NjI0MjYxNjAwMDs{cursor:032}")),
            fetching: true,
            generation: 1,
            ..AbmSyncState::default()
        },
        default_profile: Some("default".into()),
        ..AbmConnectionRecord::new("bench", endpoint, Timestamp(0))
    }
}

/// A device as a fetch page brings it, due for assignment at once. Apple lists devices in no
/// particular serial order, so consecutive devices get scattered serial numbers (`i` times an
/// odd constant is a bijection on `u64`: no two collide).
fn abm_device(i: usize, now: Timestamp) -> AbmDeviceRecord {
    let scattered = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let serial = format!("{:012X}", scattered >> 16);
    let mut rec = AbmDeviceRecord {
        connection: "bench".into(),
        serial: serial.clone(),
        device: Default::default(),
        first_seen_at: now,
        updated_at: now,
        removed_at: None,
        seen_generation: 1,
        assignment: None,
        next_assign_at: Some(now),
    };
    let d = &mut rec.device;
    d.serial_number = serial;
    d.model = "iPad Air (5th generation)".into();
    d.description = "IPAD AIR WI-FI 64GB BLUE-ZML".into();
    d.color = "BLUE".into();
    d.os = "iOS".into();
    d.device_family = "iPad".into();
    d.profile_status = "empty".into();
    d.device_assigned_date = "2024-05-01T10:00:00Z".into();
    d.device_assigned_by = "purchasing@example.com".into();
    rec
}

fn summary(label: &str, times: &mut [Duration]) {
    times.sort();
    let total: Duration = times.iter().sum();
    let n = times.len().max(1);
    println!(
        "{label:<28} {:>6} writes in {:>8.3} s; per write: median {:>6.2} ms, max {:>6.2} ms",
        times.len(),
        total.as_secs_f64(),
        times[n / 2].as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

/// Writes `ABM_DEVICES` devices page by page, then assigns them all through the due index.
async fn abm(store: &RedbStore) -> Result<()> {
    let now = Timestamp::now();
    let mut times = Vec::new();
    let start = Instant::now();
    for (page, first) in (0..ABM_DEVICES).step_by(ABM_PAGE).enumerate() {
        // Each page is processed at its own time, as the sync job does.
        let page_at = Timestamp(now.0 - (ABM_DEVICES / ABM_PAGE - page) as i64);
        let devices = (first..(first + ABM_PAGE).min(ABM_DEVICES))
            .map(|i| abm_device(i, page_at))
            .collect();
        let batch = AbmBatch {
            connection: Some(abm_connection(page)),
            devices,
            ..AbmBatch::default()
        };
        let t = Instant::now();
        store.abm_write(batch).await?;
        times.push(t.elapsed());
    }
    let sync = start.elapsed();
    summary("abm sync pages (1000)", &mut times);
    if store.abm_device_count("bench")? != ABM_DEVICES as u64 {
        bail!("the device count is off");
    }

    let mut reads = Vec::new();
    let mut writes = Vec::new();
    let start = Instant::now();
    loop {
        let t = Instant::now();
        let due = store.abm_devices_due("bench", now, ABM_PAGE)?;
        reads.push(t.elapsed());
        if due.is_empty() {
            break;
        }
        let devices = due
            .into_iter()
            .map(|mut d| {
                d.assignment = Some(AbmAssignment {
                    profile_id: "default".into(),
                    profile_uuid: "9A7C1B2D3E4F5A6B7C8D9E0F1A2B3C4D".into(),
                    outcome: AbmAssignOutcome::Success,
                    at: now,
                    reason: None,
                    failures: 0,
                });
                d.next_assign_at = None;
                d
            })
            .collect();
        let t = Instant::now();
        store
            .abm_write(AbmBatch {
                devices,
                ..AbmBatch::default()
            })
            .await?;
        writes.push(t.elapsed());
    }
    let assign = start.elapsed();
    summary("abm due reads (1000)", &mut reads);
    summary("abm assigned writes (1000)", &mut writes);
    if store.abm_next_due("bench")?.is_some() {
        bail!("devices are still due after the assignment pass");
    }
    println!(
        "abm total: {ABM_DEVICES} devices synced in {:.2} s, assigned in {:.2} s",
        sync.as_secs_f64(),
        assign.as_secs_f64()
    );
    Ok(())
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bench.redb");
        let store = RedbStore::open(&path, StoreOptions::default())?;
        let setup = Instant::now();
        populate(&store).await?;
        println!(
            "setup: {ENROLLMENTS} enrollments, {} deliveries in {:.1} s ({:?})",
            ENROLLMENTS * COMMANDS,
            setup.elapsed().as_secs_f64(),
            store.stats()
        );

        let before = (store.stats(), Usage::now()?);
        let (n, elapsed) = run(&store, 1, SEQUENTIAL_ROUND_TRIPS, 0).await?;
        report(
            "sequential (1 task)",
            n,
            elapsed,
            before,
            (store.stats(), Usage::now()?),
        );

        let before = (store.stats(), Usage::now()?);
        let first = SEQUENTIAL_ROUND_TRIPS;
        let (n, elapsed) = run(&store, TASKS, CONCURRENT_ROUND_TRIPS, first).await?;
        let label = format!("concurrent ({TASKS} tasks)");
        report(&label, n, elapsed, before, (store.stats(), Usage::now()?));
        store.close()?;
        if std::env::args().any(|a| a == "--queue-only") {
            return Ok(());
        }

        let store = RedbStore::open(&dir.path().join("abm.redb"), StoreOptions::default())?;
        abm(&store).await?;
        store.close()?;
        Ok(())
    })
}
