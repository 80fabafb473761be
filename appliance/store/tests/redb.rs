//! What only the redb store has to prove: durability across close, reopen and a crash, group
//! commit, schema version checks, and reporting bad data instead of panicking.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mdm_service::ports::{
    AuthenticateRecord, ChallengeOutcome, ChallengeRecord, ChallengeStore, CommandQueue,
    DeviceFacts, EnrollmentSource, EnrollmentState, EnrollmentStore, LinkRecord, LinkStore,
    NewCommand, PushTarget, SettingsStore, StoreError, Timestamp, TokenUpdateRecord,
};
use mdm_store::{RedbStore, StoreOptions, SCHEMA_VERSION};
use redb::{Database, ReadableDatabase, TableDefinition};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ENROLLMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("enrollments");

fn open(path: &Path) -> RedbStore {
    RedbStore::open(path, StoreOptions::default()).unwrap()
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("mdm.redb")
}

fn auth(id: &str) -> AuthenticateRecord {
    AuthenticateRecord {
        id: id.to_owned(),
        identity_sha256: format!("identity-{id}"),
        topic: Some("com.apple.mgmt.External.test".into()),
        facts: DeviceFacts {
            serial_number: Some(format!("SERIAL-{id}")),
            ..DeviceFacts::default()
        },
        source: None,
        at: Timestamp(1_000),
    }
}

fn token(id: &str) -> TokenUpdateRecord {
    TokenUpdateRecord {
        id: id.to_owned(),
        device_id: id.to_owned(),
        user_id: None,
        user_short_name: None,
        identity_sha256: format!("identity-{id}"),
        push: PushTarget {
            token_hex: "ab".repeat(32),
            push_magic: "magic".into(),
            topic: "com.apple.mgmt.External.test".into(),
        },
        unlock_token_sealed: None,
        awaiting_configuration: false,
        at: Timestamp(2_000),
    }
}

fn cmd(uuid: &str) -> NewCommand {
    NewCommand {
        uuid: uuid.to_owned(),
        request_type: "DeviceInformation".into(),
        payload: format!("payload of {uuid}").into_bytes(),
        created_at: Timestamp(3_000),
        created_by: "test".into(),
    }
}

async fn enrolled(store: &RedbStore, id: &str) {
    store.authenticate(auth(id)).await.unwrap();
    store.token_update(token(id)).await.unwrap().unwrap();
}

fn set_schema_version(path: &Path, version: u64) {
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert("schema_version", version)
        .unwrap();
    txn.commit().unwrap();
}

fn schema_version(path: &Path) -> Option<u64> {
    let db = Database::create(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let meta = rtx.open_table(META).unwrap();
    let v = meta.get("schema_version").unwrap().map(|g| g.value());
    v
}

#[tokio::test]
async fn writes_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        let store = open(&path);
        enrolled(&store, "UDID-1").await;
        store
            .enqueue(cmd("c1"), vec!["UDID-1".into()])
            .await
            .unwrap();
        store.put_setting("topic", b"t".to_vec()).await.unwrap();
        store.close().unwrap();
    }
    {
        // Dropped without close: the writer is stopped and the file closed by Drop.
        let store = open(&path);
        let e = store.enrollment("UDID-1").unwrap().unwrap();
        assert_eq!(e.state, EnrollmentState::Enrolled);
        assert_eq!(
            store.setting("topic").unwrap().as_deref(),
            Some(b"t".as_slice())
        );
        let next = store
            .next_command("UDID-1", &HashSet::new())
            .unwrap()
            .unwrap();
        assert_eq!(next.payload, b"payload of c1");
        store
            .enqueue(cmd("c2"), vec!["UDID-1".into()])
            .await
            .unwrap();
    }
    let store = open(&path);
    assert_eq!(store.queued_count("UDID-1").unwrap(), 2);
    assert!(store.command("c2").unwrap().is_some());
    store.close().unwrap();
    assert_eq!(
        schema_version(&path),
        Some(SCHEMA_VERSION),
        "reopening is idempotent"
    );
}

#[tokio::test]
async fn group_commit_batches_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));
    let before = store.stats();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .put_setting(&format!("key-{i:03}"), i.to_string().into_bytes())
                .await
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let after = store.stats();
    let writes = after.writes - before.writes;
    let commits = after.commits - before.commits;
    assert_eq!(writes, 200);
    assert!(
        commits * 4 <= writes,
        "200 concurrent writes took {commits} commits: not batched"
    );
    for i in 0..200 {
        assert_eq!(
            store.setting(&format!("key-{i:03}")).unwrap(),
            Some(i.to_string().into_bytes())
        );
    }
}

#[tokio::test]
async fn each_caller_gets_its_own_result_and_bad_writes_stay_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));
    enrolled(&store, "D").await;
    store.enqueue(cmd("taken"), vec!["D".into()]).await.unwrap();
    for i in 0..20 {
        store
            .put_challenge(ChallengeRecord {
                challenge_sha256: format!("ch-{i}"),
                profile_uuid: "p".into(),
                source: EnrollmentSource::Link {
                    link_id: "l".into(),
                },
                created_at: Timestamp(0),
                expires_at: Timestamp(i64::MAX),
                used_at: None,
            })
            .await
            .unwrap();
    }

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.spawn(async move {
            let outcome = store
                .consume_challenge(&format!("ch-{i}"), Timestamp(10), None)
                .await
                .unwrap();
            (i, format!("{outcome:?}"))
        });
    }
    for i in 0..30 {
        let store = store.clone();
        tasks.spawn(async move {
            // Command 0 reuses a taken UUID and must fail; its batch neighbours must not.
            let uuid = if i == 0 {
                "taken".to_owned()
            } else {
                format!("new-{i}")
            };
            let result = store.enqueue(cmd(&uuid), vec!["D".into()]).await;
            (100 + i, format!("{result:?}"))
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (i, outcome) = done.unwrap();
        match i {
            0..20 => assert!(outcome.starts_with("Accepted("), "challenge {i}: {outcome}"),
            20..40 => assert_eq!(outcome, "NotFound", "challenge {i}"),
            100 => assert!(outcome.starts_with("Err(Conflict("), "{outcome}"),
            _ => assert!(outcome.starts_with("Ok("), "enqueue {i}: {outcome}"),
        }
    }
    assert_eq!(store.queued_count("D").unwrap(), 30);
    assert_eq!(store.deliveries("taken").unwrap().len(), 1);
    for i in 0..20 {
        assert!(matches!(
            store
                .consume_challenge(&format!("ch-{i}"), Timestamp(11), None)
                .await
                .unwrap(),
            ChallengeOutcome::AlreadyUsed(_)
        ));
    }
}

#[tokio::test]
async fn close_stops_writes_through_every_clone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));
    let clone = store.clone();
    store.put_setting("a", b"1".to_vec()).await.unwrap();
    store.close().unwrap();
    assert!(matches!(
        clone.put_setting("b", b"2".to_vec()).await,
        Err(StoreError::Closed)
    ));
    assert_eq!(
        clone.setting("a").unwrap().as_deref(),
        Some(b"1".as_slice())
    );
    assert_eq!(clone.setting("b").unwrap(), None);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    open(&path).close().unwrap();
    set_schema_version(&path, SCHEMA_VERSION + 6);
    let err = RedbStore::open(&path, StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "the database was written by a newer appliance version (schema version {})",
            SCHEMA_VERSION + 6
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "understands up to schema version {SCHEMA_VERSION}"
        )),
        "{msg}"
    );
    assert_eq!(
        schema_version(&path),
        Some(SCHEMA_VERSION + 6),
        "left untouched"
    );
}

#[tokio::test]
async fn a_version_0_file_is_brought_to_the_current_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    // A redb file with nothing in it (what a crash during first start could leave), then one
    // whose meta table exists but records no version.
    drop(Database::create(&path).unwrap());
    let store = open(&path);
    store.put_setting("k", b"v".to_vec()).await.unwrap();
    store.close().unwrap();
    assert_eq!(schema_version(&path), Some(SCHEMA_VERSION));

    let other = dir.path().join("meta-only.redb");
    set_schema_version(&other, 0);
    let store = open(&other);
    enrolled(&store, "D").await;
    store.close().unwrap();
    assert_eq!(schema_version(&other), Some(SCHEMA_VERSION));
}

#[test]
fn a_file_that_is_not_a_database_is_a_backend_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let err = RedbStore::open(&path, StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(
        err.to_string().contains("cannot open the database"),
        "{err}"
    );
}

#[test]
fn a_table_with_unexpected_types_is_refused_with_redbs_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let wrong: TableDefinition<u64, u64> = TableDefinition::new("settings");
        txn.open_table(wrong).unwrap().insert(1, 1).unwrap();
        txn.commit().unwrap();
    }
    let err = RedbStore::open(&path, StoreOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Backend(_)), "{msg}");
    assert!(
        msg.contains("migration to schema version 1 failed"),
        "{msg}"
    );
    assert!(msg.contains("settings"), "{msg}");
}

#[tokio::test]
async fn corrupt_records_are_errors_naming_table_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        let store = open(&path);
        enrolled(&store, "GOOD").await;
        store.close().unwrap();
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(ENROLLMENTS)
            .unwrap()
            .insert("BAD", b"{\"id\": 12".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = open(&path);
    let err = store.enrollment("BAD").unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(
        err.to_string().contains("table `enrollments`, key `BAD`"),
        "{err}"
    );
    assert!(matches!(
        store.list_enrollments(None, 10),
        Err(StoreError::Corrupt(_))
    ));
    // Writes that read the bad record fail alone; the good enrollment stays writable.
    let write = store.token_update(token("BAD")).await.unwrap_err();
    assert!(matches!(write, StoreError::Corrupt(_)), "{write:?}");
    let queued = store
        .enqueue(cmd("c1"), vec!["GOOD".into(), "BAD".into()])
        .await;
    assert!(matches!(queued, Err(StoreError::Corrupt(_))), "{queued:?}");
    assert!(
        store.command("c1").unwrap().is_none(),
        "the failed enqueue left nothing"
    );
    store.touch("GOOD", Timestamp(9_000)).await.unwrap();
    assert_eq!(
        store.enrollment("GOOD").unwrap().unwrap().last_seen_at,
        Timestamp(9_000)
    );
}

#[tokio::test]
async fn links_refuse_a_token_hash_owned_by_another_link() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));
    let link = |id: &str, hash: &str| LinkRecord {
        id: id.into(),
        token_sha256: hash.into(),
        label: id.into(),
        created_at: Timestamp(0),
        expires_at: Timestamp(i64::MAX),
        revoked_at: None,
        uses: 0,
        max_uses: None,
        created_by: "t".into(),
    };
    store.put_link(link("L1", "h1")).await.unwrap();
    let err = store.put_link(link("L2", "h1")).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(store.link("L2").unwrap().is_none());
    // Re-keying L1 frees its old hash.
    store.put_link(link("L1", "h2")).await.unwrap();
    assert!(store.link_by_token("h1").unwrap().is_none());
    assert_eq!(store.link_by_token("h2").unwrap().unwrap().id, "L1");
    store.put_link(link("L2", "h1")).await.unwrap();
}

const CRASH_DB: &str = "MDM_STORE_CRASH_TEST_DB";
const CRASH_AFTER: usize = 300;

/// Run in a child process by `acknowledged_writes_survive_a_crash`: writes concurrently,
/// prints each write once acknowledged, and aborts mid-stream.
#[test]
#[ignore = "helper for acknowledged_writes_survive_a_crash; does nothing on its own"]
fn crash_child() {
    let Ok(path) = std::env::var(CRASH_DB) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = open(Path::new(&path));
        enrolled(&store, "D").await;
        let acked = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..16 {
            let store = store.clone();
            let acked = Arc::clone(&acked);
            tasks.spawn(async move {
                for i in 0.. {
                    let line = if i % 2 == 0 {
                        let key = format!("k-{task}-{i}");
                        store
                            .put_setting(&key, key.clone().into_bytes())
                            .await
                            .unwrap();
                        format!("ACK setting {key}\n")
                    } else {
                        let uuid = format!("c-{task}-{i}");
                        store.enqueue(cmd(&uuid), vec!["D".into()]).await.unwrap();
                        format!("ACK command {uuid}\n")
                    };
                    {
                        let mut out = std::io::stdout().lock();
                        out.write_all(line.as_bytes()).unwrap();
                        out.flush().unwrap();
                    }
                    if acked.fetch_add(1, Ordering::SeqCst) + 1 >= CRASH_AFTER {
                        // Other tasks' writes are in flight in the writer right now.
                        std::process::abort();
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
}

#[tokio::test]
async fn acknowledged_writes_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DB, &path)
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "the child should have aborted: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(
            output.status.signal(),
            Some(6),
            "SIGABRT expected: {:?}",
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Only complete lines (the abort may cut another task's line short), and the first one
    // shares its line with libtest's "test crash_child ... ".
    let acked: Vec<&str> = stdout
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .filter_map(|l| l.find("ACK ").map(|at| &l[at + 4..]))
        .collect();
    assert!(
        acked.len() >= CRASH_AFTER,
        "only {} acknowledged",
        acked.len()
    );

    let store = open(&path);
    let mut commands = 0;
    for ack in &acked {
        match ack.split_once(' ') {
            Some(("setting", key)) => assert_eq!(
                store.setting(key).unwrap().as_deref(),
                Some(key.as_bytes()),
                "acknowledged setting {key} lost"
            ),
            Some(("command", uuid)) => {
                commands += 1;
                assert!(
                    store.command(uuid).unwrap().is_some(),
                    "command {uuid} lost"
                );
                assert_eq!(store.deliveries(uuid).unwrap().len(), 1, "{uuid}");
            }
            _ => panic!("unexpected line {ack:?}"),
        }
    }
    assert!(store.queued_count("D").unwrap() >= commands);
    // The recovered file takes new writes.
    store
        .put_setting("after-crash", b"ok".to_vec())
        .await
        .unwrap();
    store.close().unwrap();
    assert_eq!(schema_version(&path), Some(SCHEMA_VERSION));
}
