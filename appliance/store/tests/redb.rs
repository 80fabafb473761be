//! What only the redb store has to prove: durability across close, reopen and a crash, group
//! commit, schema version checks, index upkeep across reopens, and reporting bad data instead
//! of panicking.

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
    AbmBatch, AbmConnectionRecord, AbmDeviceRecord, AbmEndpoint, AbmProfileRecord, AbmRuleMatch,
    AbmRuleRecord, AbmStore, AbmSyncState, AuthenticateRecord, ChallengeOutcome, ChallengeRecord,
    ChallengeStore, CommandQueue, DeviceFacts, EnrollmentSource, EnrollmentState, EnrollmentStore,
    LinkRecord, LinkStore, NewCommand, PushTarget, SettingsStore, StoreError, Timestamp,
    TokenUpdateRecord,
};
use mdm_store::{RedbStore, StoreOptions, SCHEMA_VERSION};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ENROLLMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("enrollments");
const ENROLLMENT_SERIALS: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("enrollment_serials");
const ABM_DEVICES: TableDefinition<(&str, &str), u64> = TableDefinition::new("abm_devices");
const ABM_DEVICE_RECORDS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("abm_device_records");
const ABM_DEVICES_DUE: TableDefinition<(&str, i64, u64), ()> =
    TableDefinition::new("abm_devices_due");
const ABM_DEVICE_COUNT: TableDefinition<&str, u64> = TableDefinition::new("abm_device_count");

const ABM_CONNECTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("abm_connections");
const ABM_DEVICE_SERIALS: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("abm_device_serials");
const ABM_PROFILES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("abm_profiles");
const ABM_RULES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("abm_rules");

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
        sealed: false,
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
    assert_eq!(
        store.deliveries("taken", None, usize::MAX).unwrap().len(),
        1
    );
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

fn abm_connection(name: &str, cursor: &str) -> AbmConnectionRecord {
    let endpoint = AbmEndpoint {
        base_url: "https://abm.example.test".into(),
        ca_pem: None,
    };
    AbmConnectionRecord {
        sync: AbmSyncState {
            cursor: Some(cursor.to_owned()),
            ..AbmSyncState::default()
        },
        default_profile: Some("default".into()),
        ..AbmConnectionRecord::new(name, endpoint, Timestamp(1))
    }
}

fn abm_device(connection: &str, serial: &str, due: Option<i64>) -> AbmDeviceRecord {
    let mut device = AbmDeviceRecord {
        connection: connection.to_owned(),
        serial: serial.to_owned(),
        device: Default::default(),
        first_seen_at: Timestamp(1),
        updated_at: Timestamp(1),
        removed_at: None,
        seen_generation: 1,
        assignment: None,
        next_assign_at: due.map(Timestamp),
    };
    device.device.serial_number = serial.to_owned();
    device.device.device_family = "iPhone".into();
    device
}

fn abm_profile(connection: &str, name: &str) -> AbmProfileRecord {
    let mut profile = AbmProfileRecord {
        name: name.to_owned(),
        connection: connection.to_owned(),
        profile: Default::default(),
        apple_uuid: Some(format!("uuid-{name}")),
        defined_at: Some(Timestamp(2)),
        updated_at: Timestamp(2),
        authentication: Default::default(),
    };
    profile.profile.profile_name = format!("Profile {name}");
    profile
}

fn abm_rule(connection: &str, name: &str, priority: i32) -> AbmRuleRecord {
    AbmRuleRecord {
        connection: connection.to_owned(),
        name: name.to_owned(),
        priority,
        matcher: AbmRuleMatch {
            device_family: Some("iPhone".into()),
            ..AbmRuleMatch::default()
        },
        profile: "default".into(),
        created_at: Timestamp(3),
    }
}

fn due_serials(store: &RedbStore, connection: &str) -> Vec<String> {
    store
        .abm_devices_due(connection, Timestamp(i64::MAX), 100)
        .unwrap()
        .into_iter()
        .map(|d| d.serial)
        .collect()
}

fn serial_index(path: &Path) -> Vec<(String, String)> {
    let db = Database::create(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let table = rtx.open_table(ENROLLMENT_SERIALS).unwrap();
    let entries = table
        .iter()
        .unwrap()
        .map(|e| {
            let (k, _) = e.unwrap();
            let (serial, id) = k.value();
            (serial.to_owned(), id.to_owned())
        })
        .collect();
    entries
}

/// The ABM tables holding an entry of `connection`, read straight from the file.
fn abm_tables_holding(path: &Path, connection: &str) -> Vec<&'static str> {
    fn any<K: redb::Key + 'static, V: redb::Value + 'static>(
        rtx: &redb::ReadTransaction,
        def: TableDefinition<K, V>,
        holds: impl Fn(K::SelfType<'_>) -> bool,
    ) -> bool {
        let table = rtx.open_table(def).unwrap();
        let found = table.iter().unwrap().any(|e| holds(e.unwrap().0.value()));
        found
    }
    let db = Database::create(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let c = connection;
    let checks = [
        ("abm_connections", any(&rtx, ABM_CONNECTIONS, |k| k == c)),
        ("abm_devices", any(&rtx, ABM_DEVICES, |k| k.0 == c)),
        (
            "abm_device_records",
            any(&rtx, ABM_DEVICE_RECORDS, |k| k.0 == c),
        ),
        (
            "abm_device_serials",
            any(&rtx, ABM_DEVICE_SERIALS, |k| k.1 == c),
        ),
        ("abm_devices_due", any(&rtx, ABM_DEVICES_DUE, |k| k.0 == c)),
        ("abm_device_count", any(&rtx, ABM_DEVICE_COUNT, |k| k == c)),
        ("abm_profiles", any(&rtx, ABM_PROFILES, |k| k.0 == c)),
        ("abm_rules", any(&rtx, ABM_RULES, |k| k.0 == c)),
    ];
    checks
        .into_iter()
        .filter_map(|(name, held)| held.then_some(name))
        .collect()
}

/// ABM records, their indexes and counters, and the enrollment serial index are all on disk:
/// a reopened store (closed cleanly, or only dropped) answers exactly as before.
#[tokio::test]
async fn abm_data_and_serial_indexes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let page: Vec<AbmDeviceRecord> = (0..250)
        .map(|i| abm_device("school", &format!("SER{i:04}"), (i % 3 == 0).then_some(i)))
        .collect();
    {
        let store = open(&path);
        store
            .abm_write(AbmBatch {
                connection: Some(abm_connection("school", "c-1")),
                devices: page.clone(),
                profiles: vec![abm_profile("school", "default")],
                rules: vec![abm_rule("school", "b", 2), abm_rule("school", "a", 2)],
                ..AbmBatch::default()
            })
            .await
            .unwrap();
        store
            .abm_write(AbmBatch {
                connection: Some(abm_connection("office", "o-1")),
                devices: vec![abm_device("office", "SER0001", Some(5))],
                ..AbmBatch::default()
            })
            .await
            .unwrap();
        store.authenticate(auth("UDID-1")).await.unwrap();
        store.authenticate(auth("UDID-2")).await.unwrap();
        store.close().unwrap();
    }
    {
        let store = open(&path);
        assert_eq!(
            store.abm_connection("school").unwrap(),
            Some(abm_connection("school", "c-1"))
        );
        assert_eq!(store.abm_connections().unwrap().len(), 2);
        assert_eq!(store.abm_device_count("school").unwrap(), 250);
        assert_eq!(store.abm_devices("school", None, 1000).unwrap(), page);
        assert_eq!(store.abm_next_due("school").unwrap(), Some(Timestamp(0)));
        assert_eq!(due_serials(&store, "school").len(), 84);
        assert_eq!(store.abm_devices_by_serial("SER0001").unwrap().len(), 2);
        assert_eq!(store.abm_profiles("school").unwrap().len(), 1);
        let rules: Vec<String> = store
            .abm_rules("school")
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(rules, ["a", "b"]);
        assert_eq!(
            store.enrollments_by_serial("SERIAL-UDID-1").unwrap()[0].id,
            "UDID-1"
        );

        // Writes after a reopen keep the indexes exact; this store is dropped, not closed.
        store
            .abm_write(AbmBatch {
                connection: Some(abm_connection("school", "c-2")),
                devices: vec![
                    abm_device("school", "SER0000", None),
                    abm_device("school", "SER0001", Some(-7)),
                    abm_device("school", "SER9999", Some(1)),
                ],
                ..AbmBatch::default()
            })
            .await
            .unwrap();
        store
            .abm_write(AbmBatch {
                delete_connection: Some("office".into()),
                ..AbmBatch::default()
            })
            .await
            .unwrap();
        let mut moved = auth("UDID-2");
        moved.facts.serial_number = Some("SERIAL-NEW".into());
        store.authenticate(moved).await.unwrap();
    }
    let store = open(&path);
    assert_eq!(
        store
            .abm_connection("school")
            .unwrap()
            .unwrap()
            .sync
            .cursor
            .as_deref(),
        Some("c-2")
    );
    assert!(store.abm_connection("office").unwrap().is_none());
    assert_eq!(store.abm_device_count("school").unwrap(), 251);
    assert_eq!(store.abm_device_count("office").unwrap(), 0);
    assert_eq!(store.abm_next_due("school").unwrap(), Some(Timestamp(-7)));
    let due = due_serials(&store, "school");
    assert_eq!(due.len(), 85, "SER0000 left, SER0001 and SER9999 joined");
    assert_eq!(&due[..3], ["SER0001", "SER9999", "SER0003"]);
    assert_eq!(store.abm_devices_by_serial("SER0001").unwrap().len(), 1);
    assert!(store
        .enrollments_by_serial("SERIAL-UDID-2")
        .unwrap()
        .is_empty());
    assert_eq!(
        store.enrollments_by_serial("SERIAL-NEW").unwrap()[0].id,
        "UDID-2"
    );
    store.close().unwrap();
    assert_eq!(
        serial_index(&path),
        [
            ("SERIAL-NEW".to_owned(), "UDID-2".to_owned()),
            ("SERIAL-UDID-1".to_owned(), "UDID-1".to_owned()),
        ],
        "no entry is left behind by the move"
    );
    assert!(
        abm_tables_holding(&path, "office").is_empty(),
        "the deleted connection left entries in {:?}",
        abm_tables_holding(&path, "office")
    );
    assert_eq!(
        abm_tables_holding(&path, "school").len(),
        8,
        "the check sees entries"
    );
    assert_eq!(schema_version(&path), Some(SCHEMA_VERSION));
}

/// A damaged device or enrollment record is reported when read, and a write that replaces it
/// whole succeeds and leaves the indexes exact.
#[tokio::test]
async fn damaged_records_are_reported_and_can_be_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        let store = open(&path);
        store
            .abm_write(AbmBatch {
                devices: vec![
                    abm_device("school", "GOOD", Some(20)),
                    abm_device("school", "BAD", Some(10)),
                ],
                ..AbmBatch::default()
            })
            .await
            .unwrap();
        store.authenticate(auth("UDID-BAD")).await.unwrap();
        store.close().unwrap();
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let slot = txn
            .open_table(ABM_DEVICES)
            .unwrap()
            .get(("school", "BAD"))
            .unwrap()
            .unwrap()
            .value();
        txn.open_table(ABM_DEVICE_RECORDS)
            .unwrap()
            .insert(("school", slot), b"{\"connection\": 4".as_slice())
            .unwrap();
        txn.open_table(ENROLLMENTS)
            .unwrap()
            .insert("UDID-BAD", b"[]".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = open(&path);
    let err = store.abm_device("school", "BAD").unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("table `abm_device_records`, key `school / BAD`"),
        "{err}"
    );
    assert!(matches!(
        store.abm_devices_due("school", Timestamp(15), 10),
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.enrollments_by_serial("SERIAL-UDID-BAD"),
        Err(StoreError::Corrupt(_))
    ));

    store
        .abm_write(AbmBatch {
            devices: vec![abm_device("school", "BAD", None)],
            ..AbmBatch::default()
        })
        .await
        .unwrap();
    assert_eq!(
        due_serials(&store, "school"),
        ["GOOD"],
        "the old due entry went"
    );
    assert_eq!(store.abm_next_due("school").unwrap(), Some(Timestamp(20)));
    assert_eq!(store.abm_device_count("school").unwrap(), 2);
    assert_eq!(
        store.abm_device("school", "BAD").unwrap(),
        Some(abm_device("school", "BAD", None))
    );

    let mut fresh = auth("UDID-BAD");
    fresh.facts.serial_number = Some("SERIAL-FRESH".into());
    store.authenticate(fresh).await.unwrap();
    assert_eq!(
        store.enrollments_by_serial("SERIAL-FRESH").unwrap()[0].id,
        "UDID-BAD"
    );
    // The damaged record's serial could not be read, so its entry stayed; the record it
    // names reports another serial now, and the read skips it.
    assert!(store
        .enrollments_by_serial("SERIAL-UDID-BAD")
        .unwrap()
        .is_empty());
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
                assert_eq!(
                    store.deliveries(uuid, None, usize::MAX).unwrap().len(),
                    1,
                    "{uuid}"
                );
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

#[tokio::test]
async fn a_copy_holds_every_acknowledged_write_and_opens_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));
    // Writes racing with the copy: each acknowledged before it is either in the copy or
    // after it, never half in.
    let writers: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .put_setting(&format!("k{i:03}"), vec![i as u8; 512])
                    .await
                    .unwrap();
            })
        })
        .collect();
    tokio::task::yield_now().await;
    let copy = dir.path().join("copy.redb");
    let bytes = store.copy_to(&copy).await.unwrap();
    assert_eq!(bytes, std::fs::metadata(&copy).unwrap().len());
    for w in writers {
        w.await.unwrap();
    }
    store.put_setting("after", b"x".to_vec()).await.unwrap();
    // An existing destination is never overwritten.
    assert!(store.copy_to(&copy).await.is_err());
    drop(store);

    let copied = open(&copy);
    assert_eq!(copied.setting("after").unwrap(), None);
    let present: Vec<usize> = (0..200)
        .filter(|i| copied.setting(&format!("k{i:03}")).unwrap().is_some())
        .collect();
    for i in &present {
        assert_eq!(
            copied.setting(&format!("k{i:03}")).unwrap().unwrap(),
            vec![*i as u8; 512]
        );
    }
    // The copy is a store of its own: it takes writes.
    copied.put_setting("later", b"y".to_vec()).await.unwrap();
    assert_eq!(copied.setting("later").unwrap().unwrap(), b"y");
}
