//! Command round trips on a redb store with 10,000 enrollments: one `record_result` followed
//! by one `next_command`, as a device connection does per command. Compares 64 concurrent
//! tasks (which group commit batches) with one task doing the same work in sequence.
//!
//! Run with `cargo bench -p mdm-store`; the database lives in a temporary directory (set
//! `TMPDIR` to measure a particular disk). Figures are printed, not asserted.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mdm_service::ports::{
    AuthenticateRecord, CommandQueue, CommandResult, DeliveryStatus, DeviceFacts, EnrollmentStore,
    NewCommand, PushTarget, Timestamp, TokenUpdateRecord,
};
use mdm_store::{RedbStore, StoreOptions, StoreStats};

const ENROLLMENTS: usize = 10_000;
const TASKS: usize = 64;
/// Commands queued per enrollment: enough that no task runs out during a run.
const COMMANDS: usize = 3;
const CONCURRENT_ROUND_TRIPS: usize = 6_000;
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

/// Acknowledges the current command of `id`, then fetches the next one.
async fn round_trip(store: &RedbStore, id: &str, skip: &HashSet<String>) -> Result<()> {
    let current = store
        .next_command(id, skip)?
        .with_context(|| format!("{id} has no command left"))?;
    store
        .record_result(
            id,
            CommandResult {
                uuid: current.uuid,
                status: DeliveryStatus::Acknowledged,
                raw: vec![b'r'; 300],
                error_chain_json: None,
                at: Timestamp::now(),
            },
        )
        .await?;
    store.next_command(id, skip)?;
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
                // they wrap around, after which the next queued command is acknowledged.
                let id = enrollment_id((first + t + n * tasks) % ENROLLMENTS);
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

fn report(label: &str, n: usize, elapsed: Duration, before: StoreStats, after: StoreStats) {
    let commits = after.commits - before.commits;
    let writes = after.writes - before.writes;
    let per_sec = n as f64 / elapsed.as_secs_f64();
    println!(
        "{label:<28} {n:>6} round trips in {:>8.3} s = {per_sec:>9.0}/s; \
         {writes} writes in {commits} commits (commits/writes = {:.3})",
        elapsed.as_secs_f64(),
        commits as f64 / writes.max(1) as f64,
    );
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

        let before = store.stats();
        let (n, elapsed) = run(&store, 1, SEQUENTIAL_ROUND_TRIPS, 0).await?;
        report("sequential (1 task)", n, elapsed, before, store.stats());

        let before = store.stats();
        let first = SEQUENTIAL_ROUND_TRIPS;
        let (n, elapsed) = run(&store, TASKS, CONCURRENT_ROUND_TRIPS, first).await?;
        let label = format!("concurrent ({TASKS} tasks)");
        report(&label, n, elapsed, before, store.stats());
        store.close()?;
        Ok(())
    })
}
