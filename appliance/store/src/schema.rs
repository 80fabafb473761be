//! Table layout, schema version and migrations.
//!
//! Records are JSON (new optional fields deserialise as `None`, so adding one needs no
//! migration); keys are redb tuples shaped for the access paths. Large byte strings (command
//! payloads, device reports) live in their own tables as raw bytes rather than inside JSON.

use mdm_service::ports::{StoreError, StoreResult};
use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableDefinition, TableHandle,
    WriteTransaction,
};

use crate::codec::{context, BackendExt};

/// Small counters: [`SCHEMA_VERSION`] and [`NEXT_SEQ`].
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Key in [`META`]: the schema version the file is at.
pub(crate) const SCHEMA_VERSION: &str = "schema_version";
/// Key in [`META`]: the next delivery sequence number. One global counter orders every queue
/// and history entry, so FIFO order and "newest first" need no clock.
pub(crate) const NEXT_SEQ: &str = "next_seq";

/// Enrollment id → `EnrollmentRecord` (JSON). A user channel `UDID:user` sorts after `UDID`;
/// its device's user channels are the range `[UDID:, UDID;)`.
pub(crate) const ENROLLMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("enrollments");
/// Command uuid → `StoredCommand` (JSON).
pub(crate) const COMMANDS: TableDefinition<&str, &[u8]> = TableDefinition::new("commands");
/// Command uuid → the command plist as it will be sent.
pub(crate) const COMMAND_PAYLOADS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("command_payloads");
/// (enrollment id, part, order) → the command's UUID, a NUL byte and `StoredDelivery` (JSON)
/// (`records::encode_delivery`): every delivery of an enrollment, in two parts. Part
/// [`OPEN`] holds the deliveries that are not final, ordered by seq: the enrollment's FIFO
/// queue. Part [`FINAL`] holds the final ones, ordered by `u64::MAX - seq`: newest first. A
/// result moves its delivery from the front of the one part to the front of the other, which
/// are neighbours in the key order, so it usually rewrites one page of this table (schema
/// version 7).
pub(crate) const ENROLLMENT_DELIVERIES: TableDefinition<(&str, u8, u64), &[u8]> =
    TableDefinition::new("enrollment_deliveries");
/// The part of [`ENROLLMENT_DELIVERIES`] with the deliveries that are not final.
pub(crate) const OPEN: u8 = 0;
/// The part of [`ENROLLMENT_DELIVERIES`] with the final deliveries.
pub(crate) const FINAL: u8 = 1;
/// (command uuid, enrollment id) → seq: the deliveries of each command. Written when a
/// command is queued and when retention deletes, never when a result arrives (version 7).
pub(crate) const COMMAND_TARGETS: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("command_targets");
/// (finished at ms, seq) → the device's final report, exactly as sent. The key grows with
/// time, so the reports of one group commit share the table's last pages (version 7).
pub(crate) const REPORTS: TableDefinition<(i64, u64), &[u8]> = TableDefinition::new("reports");
/// Until schema version 6: (command uuid, enrollment id) → `StoredDelivery` (JSON), followed
/// once the delivery was final by a NUL byte and the device's report. Version 7 splits it into
/// [`ENROLLMENT_DELIVERIES`], [`COMMAND_TARGETS`] and [`REPORTS`].
pub(crate) const DELIVERIES: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("deliveries");
/// Until schema version 6: (command uuid, enrollment id) → a final report recorded before
/// version 6. Version 7 moves them to [`REPORTS`].
pub(crate) const DELIVERY_RESULTS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("delivery_results");
/// Until schema version 6: (enrollment id, seq) → command uuid, for deliveries that were not
/// final. Part [`OPEN`] of [`ENROLLMENT_DELIVERIES`] since version 7.
pub(crate) const QUEUE: TableDefinition<(&str, u64), &str> = TableDefinition::new("queue");
/// Until schema version 6: (enrollment id, seq) → command uuid, for every delivery.
/// [`ENROLLMENT_DELIVERIES`] lists an enrollment's deliveries since version 7.
pub(crate) const HISTORY: TableDefinition<(&str, u64), &str> = TableDefinition::new("history");
/// (finished at ms, seq) → (command uuid, enrollment id): finished deliveries by age.
pub(crate) const FINISHED_BY_AGE: TableDefinition<(i64, u64), (&str, &str)> =
    TableDefinition::new("finished_by_age");
/// Until schema version 5: (enrollment id, seq) → (finished at ms, command uuid). Dropped by
/// version 6, which counts [`HISTORY`] entries instead ([`HISTORY_COUNT`]) so that a result
/// no longer writes two per-enrollment index entries.
pub(crate) const FINISHED_BY_ENROLLMENT: TableDefinition<(&str, u64), (i64, &str)> =
    TableDefinition::new("finished_by_enrollment");
/// Until schema version 5: enrollment id → its number of [`FINISHED_BY_ENROLLMENT`] entries.
pub(crate) const FINISHED_COUNT: TableDefinition<&str, u64> =
    TableDefinition::new("finished_count");
/// Enrollment id → how many deliveries it has, queued or final (until version 7, how many
/// [`HISTORY`] entries).
/// Written when commands are queued and when retention deletes, never when a result arrives;
/// lets pruning find the enrollments that may be over their limit without counting ranges.
pub(crate) const HISTORY_COUNT: TableDefinition<&str, u64> = TableDefinition::new("history_count");
/// Challenge SHA-256 → `ChallengeRecord` (JSON).
pub(crate) const CHALLENGES: TableDefinition<&str, &[u8]> = TableDefinition::new("challenges");
/// (expires at ms, challenge SHA-256) → (): challenges by expiry, for pruning.
pub(crate) const CHALLENGE_EXPIRY: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("challenge_expiry");
/// Certificate SHA-256 → `IssuedCertRecord` (JSON).
pub(crate) const ISSUED_CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("issued_certs");
/// Link id → `LinkRecord` (JSON).
pub(crate) const LINKS: TableDefinition<&str, &[u8]> = TableDefinition::new("links");
/// Link token SHA-256 → link id.
pub(crate) const LINK_TOKENS: TableDefinition<&str, &str> = TableDefinition::new("link_tokens");
/// API token id → `ApiTokenRecord` (JSON).
pub(crate) const API_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_tokens");
/// API token SHA-256 → API token id.
pub(crate) const API_TOKEN_HASHES: TableDefinition<&str, &str> =
    TableDefinition::new("api_token_hashes");
/// Setting key → value bytes.
pub(crate) const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");

// Schema version 2: enrollments by serial number, and Apple Business Manager data.

/// (serial number, enrollment id) → (): device-channel enrollments by the serial number they
/// reported at `Authenticate`.
pub(crate) const ENROLLMENT_SERIALS: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("enrollment_serials");
/// ABM connection name → `AbmConnectionRecord` (JSON).
pub(crate) const ABM_CONNECTIONS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("abm_connections");
/// (connection, serial number) → the device's slot in [`ABM_DEVICE_RECORDS`]: a connection's
/// devices by serial.
pub(crate) const ABM_DEVICES: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("abm_devices");
/// (connection, slot) → `AbmDeviceRecord` (JSON). A device keeps the slot it got when first
/// seen, and slots are handed out in arrival order, so a sync page of new devices and the
/// assignment job (which works through devices in the order they became due) write a few
/// neighbouring pages instead of one page per device scattered by serial number.
pub(crate) const ABM_DEVICE_RECORDS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("abm_device_records");
/// (serial number, connection) → (): the connections that list a serial number.
pub(crate) const ABM_DEVICE_SERIALS: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("abm_device_serials");
/// (connection, `next_assign_at` ms, slot) → (): devices the assignment job must look at,
/// earliest first. Devices without `next_assign_at` have no entry.
pub(crate) const ABM_DEVICES_DUE: TableDefinition<(&str, i64, u64), ()> =
    TableDefinition::new("abm_devices_due");
/// Connection → how many devices it has, so counting never scans.
pub(crate) const ABM_DEVICE_COUNT: TableDefinition<&str, u64> =
    TableDefinition::new("abm_device_count");
/// (connection, profile name) → `AbmProfileRecord` (JSON).
pub(crate) const ABM_PROFILES: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("abm_profiles");
/// (connection, rule name) → `AbmRuleRecord` (JSON).
pub(crate) const ABM_RULES: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("abm_rules");
/// Serial number → pre-enrollment record (JSON): the devices the site expects.
pub(crate) const PREENROLLED: TableDefinition<&str, &[u8]> = TableDefinition::new("preenrolled");
/// Sequence number → activity entry (JSON). Append-only.
pub(crate) const ACTIVITY: TableDefinition<u64, &[u8]> = TableDefinition::new("activity");
/// (target, sequence number): each entry under every target it names.
pub(crate) const ACTIVITY_BY_TARGET: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("activity_by_target");
/// (time in ms, sequence number): for retention by age.
pub(crate) const ACTIVITY_BY_TIME: TableDefinition<(i64, u64), ()> =
    TableDefinition::new("activity_by_time");
/// Group id → `GroupRecord` (JSON).
pub(crate) const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
/// (group id, serial): static group members.
pub(crate) const GROUP_MEMBERS: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("group_members");
/// Profile id → `ProfileRecord` (JSON).
pub(crate) const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles");
/// Profile id → the uploaded file, sealed by the service.
pub(crate) const PROFILE_FILES: TableDefinition<&str, &[u8]> =
    TableDefinition::new("profile_files");
/// (serial, profile id) → `InstallRecord` (JSON).
pub(crate) const INSTALLS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("installs");
/// (profile id, serial): the same records listed per profile.
pub(crate) const INSTALLS_BY_PROFILE: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("installs_by_profile");

/// Username → `UserRecord` (JSON, password hash sealed).
pub(crate) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");

/// One schema step: brings a file from version `i` to `i + 1` (where `i` is its index in the
/// list). Runs inside the single transaction that also records the new version.
pub(crate) type Migration = fn(&WriteTransaction) -> StoreResult<()>;

/// Every migration this binary knows, in order. Index 0 creates the initial layout (version 1)
/// in an empty file. Never edit a released step: append a new one.
pub(crate) const MIGRATIONS: &[Migration] = &[
    create_v1, create_v2, create_v3, create_v4, create_v5, create_v6, create_v7,
];

/// The schema version this binary writes.
pub(crate) const CURRENT_VERSION: u64 = MIGRATIONS.len() as u64;

/// Version 1: every table of the initial layout.
fn create_v1(txn: &WriteTransaction) -> StoreResult<()> {
    fn create<K: redb::Key + 'static, V: redb::Value + 'static>(
        txn: &WriteTransaction,
        def: TableDefinition<K, V>,
    ) -> StoreResult<()> {
        open(txn, def).map(drop)
    }
    create(txn, META)?;
    create(txn, ENROLLMENTS)?;
    create(txn, COMMANDS)?;
    create(txn, COMMAND_PAYLOADS)?;
    create(txn, DELIVERIES)?;
    create(txn, DELIVERY_RESULTS)?;
    create(txn, QUEUE)?;
    create(txn, HISTORY)?;
    create(txn, FINISHED_BY_AGE)?;
    create(txn, FINISHED_BY_ENROLLMENT)?;
    create(txn, FINISHED_COUNT)?;
    create(txn, CHALLENGES)?;
    create(txn, CHALLENGE_EXPIRY)?;
    create(txn, ISSUED_CERTS)?;
    create(txn, LINKS)?;
    create(txn, LINK_TOKENS)?;
    create(txn, API_TOKENS)?;
    create(txn, API_TOKEN_HASHES)?;
    create(txn, SETTINGS)?;
    Ok(())
}

/// Version 2: the enrollment serial index (filled from the enrollments already stored) and the
/// ABM tables.
fn create_v2(txn: &WriteTransaction) -> StoreResult<()> {
    create_table(txn, ABM_CONNECTIONS)?;
    create_table(txn, ABM_DEVICES)?;
    create_table(txn, ABM_DEVICE_RECORDS)?;
    create_table(txn, ABM_DEVICE_SERIALS)?;
    create_table(txn, ABM_DEVICES_DUE)?;
    create_table(txn, ABM_DEVICE_COUNT)?;
    create_table(txn, ABM_PROFILES)?;
    create_table(txn, ABM_RULES)?;
    create_table(txn, ENROLLMENT_SERIALS)?;
    crate::enrollments::backfill_serial_index(txn)
}

/// Version 3: pre-enrollment records and the activity log.
fn create_v3(txn: &WriteTransaction) -> StoreResult<()> {
    create_table(txn, PREENROLLED)?;
    create_table(txn, ACTIVITY)?;
    create_table(txn, ACTIVITY_BY_TARGET)?;
    create_table(txn, ACTIVITY_BY_TIME)?;
    Ok(())
}

/// Version 4: groups, configuration profiles and their per-device install states.
fn create_v4(txn: &WriteTransaction) -> StoreResult<()> {
    create_table(txn, GROUPS)?;
    create_table(txn, GROUP_MEMBERS)?;
    create_table(txn, PROFILES)?;
    create_table(txn, PROFILE_FILES)?;
    create_table(txn, INSTALLS)?;
    create_table(txn, INSTALLS_BY_PROFILE)?;
    Ok(())
}

/// Version 5: local user accounts.
fn create_v5(txn: &WriteTransaction) -> StoreResult<()> {
    create_table(txn, USERS)
}

/// Version 6: per-enrollment history counts replace the finished-by-enrollment index and its
/// counts (reports recorded from now on are kept in the delivery's own value; older ones stay
/// in `delivery_results`).
fn create_v6(txn: &WriteTransaction) -> StoreResult<()> {
    crate::commands::backfill_history_count(txn)?;
    drop_table(txn, FINISHED_BY_ENROLLMENT)?;
    drop_table(txn, FINISHED_COUNT)
}

/// Version 7: an enrollment's deliveries, queued and final, in one table; the deliveries of a
/// command in an index written only when they are queued and deleted; reports in a table of
/// their own ordered by when they arrived. The queue, history and delivery tables go.
fn create_v7(txn: &WriteTransaction) -> StoreResult<()> {
    crate::commands::split_deliveries(txn)?;
    drop_table(txn, DELIVERIES)?;
    drop_table(txn, DELIVERY_RESULTS)?;
    drop_table(txn, QUEUE)?;
    drop_table(txn, HISTORY)
}

/// Deletes a table a migration has emptied or replaced.
fn drop_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> StoreResult<()> {
    txn.delete_table(def)
        .backend_with(|| format!("cannot drop table `{}`", def.name()))?;
    Ok(())
}

/// Creates a table (if missing) without keeping it open.
fn create_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> StoreResult<()> {
    open(txn, def).map(drop)
}

/// Opens (creating if needed) a table in a write transaction.
pub(crate) fn open<'t, K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &'t WriteTransaction,
    def: TableDefinition<K, V>,
) -> StoreResult<Table<'t, K, V>> {
    txn.open_table(def)
        .backend_with(|| format!("cannot open table `{}`", def.name()))
}

/// Opens a table in a read transaction. Opening a file migrates it to the current schema, so
/// every table exists and a missing one is a backend failure, not an empty result.
pub(crate) fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    rtx: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> StoreResult<ReadOnlyTable<K, V>> {
    rtx.open_table(def)
        .backend_with(|| format!("cannot open table `{}`", def.name()))
}

/// Brings the file to the version `migrations` lead to, or refuses a file from a newer
/// binary. All pending steps and the version bump commit together, so a failed step leaves
/// the file exactly as it was. Returns the version the file is at afterwards.
pub(crate) fn prepare(db: &Database, migrations: &[Migration]) -> StoreResult<u64> {
    let supported = migrations.len() as u64;
    let txn = db
        .begin_write()
        .backend("cannot start the schema check transaction")?;
    let found = {
        let meta = open(&txn, META)?;
        let version = meta
            .get(SCHEMA_VERSION)
            .backend("cannot read the schema version")?;
        version.map_or(0, |g| g.value())
    };
    if found >= supported {
        // Nothing to write: abort rather than commit an empty transaction (an fsync per open).
        txn.abort()
            .backend("cannot end the schema check transaction")?;
        if found > supported {
            return Err(StoreError::Corrupt(format!(
                "the database was written by a newer appliance version (schema version {found}); \
                 this version understands up to schema version {supported}"
            )));
        }
        return Ok(found);
    }
    let first = usize::try_from(found).unwrap_or(usize::MAX);
    for (index, step) in migrations.iter().enumerate().skip(first) {
        step(&txn).map_err(|e| {
            context(
                e,
                &format!("migration to schema version {} failed", index + 1),
            )
        })?;
    }
    {
        let mut meta = open(&txn, META)?;
        meta.insert(SCHEMA_VERSION, supported)
            .backend("cannot record the schema version")?;
    }
    txn.commit().backend("cannot commit the schema migration")?;
    if found == 0 {
        tracing::info!(version = supported, "created database schema");
    } else {
        tracing::info!(from = found, to = supported, "migrated database schema");
    }
    Ok(supported)
}

/// Reads the schema version of an open database (0 if it has none yet).
#[cfg(test)]
pub(crate) fn version(db: &Database) -> StoreResult<u64> {
    use redb::ReadableDatabase;
    let rtx = db.begin_read().backend("cannot begin a read")?;
    match rtx.open_table(META) {
        Ok(meta) => Ok(meta
            .get(SCHEMA_VERSION)
            .backend("cannot read the schema version")?
            .map_or(0, |g| g.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(StoreError::Backend(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use crate::{RedbStore, StoreOptions};
    use mdm_service::ports::{
        Channel, DeviceFacts, EnrollmentRecord, EnrollmentState, EnrollmentStore, StoreError,
        Timestamp,
    };
    use redb::{ReadableDatabase, ReadableTableMetadata};
    use serde::{Deserialize, Serialize};
    use std::collections::HashSet;

    /// What a v2 of this store could look like: every setting gains a companion
    /// `<key>.len` entry. Real future migrations follow the same shape.
    fn test_v2(txn: &WriteTransaction) -> StoreResult<()> {
        let mut settings = txn.open_table(SETTINGS).backend("open settings")?;
        let mut lens = Vec::new();
        for entry in settings.iter().backend("iterate settings")? {
            let (k, v) = entry.backend("read setting")?;
            lens.push((format!("{}.len", k.value()), v.value().len().to_string()));
        }
        for (k, v) in lens {
            settings.insert(k.as_str(), v.as_bytes()).backend("write")?;
        }
        Ok(())
    }

    fn failing_v2(txn: &WriteTransaction) -> StoreResult<()> {
        let mut settings = txn.open_table(SETTINGS).backend("open settings")?;
        settings
            .insert("half-done", b"x".as_slice())
            .backend("write")?;
        Err(StoreError::Corrupt(
            "a record this step cannot convert".into(),
        ))
    }

    /// What a binary that only knew schema version 1 did to a new file.
    const V1_ONLY: &[Migration] = &[create_v1];

    fn v1_file_with_a_setting(path: &std::path::Path) {
        let db = Database::create(path).unwrap();
        assert_eq!(prepare(&db, V1_ONLY).unwrap(), 1);
        let txn = db.begin_write().unwrap();
        txn.open_table(SETTINGS)
            .unwrap()
            .insert("greeting", b"hello".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn empty_file_gets_current_layout() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("s.redb")).unwrap();
        assert_eq!(version(&db).unwrap(), 0);
        assert_eq!(prepare(&db, MIGRATIONS).unwrap(), CURRENT_VERSION);
        assert_eq!(version(&db).unwrap(), CURRENT_VERSION);
        let rtx = db.begin_read().unwrap();
        assert!(rtx.open_table(ENROLLMENTS).is_ok());
        assert!(rtx.open_table(SETTINGS).is_ok());
        assert!(rtx.open_table(FINISHED_BY_AGE).is_ok());
        assert!(rtx.open_table(ENROLLMENT_SERIALS).is_ok());
        assert!(rtx.open_table(ABM_DEVICES_DUE).is_ok());
        assert!(rtx.open_table(ABM_RULES).is_ok());
    }

    fn enrollment(id: &str, channel: Channel, serial: Option<&str>) -> EnrollmentRecord {
        EnrollmentRecord {
            id: id.into(),
            device_id: id.split(':').next().unwrap().into(),
            user_id: None,
            user_short_name: None,
            channel,
            state: EnrollmentState::Enrolled,
            identity_sha256: format!("identity-{id}"),
            topic: None,
            facts: DeviceFacts {
                serial_number: serial.map(str::to_owned),
                ..DeviceFacts::default()
            },
            source: None,
            push: None,
            unlock_token_sealed: Some(vec![1, 2, 3]),
            bootstrap_token_sealed: None,
            awaiting_configuration: false,
            authenticated_at: Timestamp(1),
            enrolled_at: Some(Timestamp(2)),
            token_updated_at: Some(Timestamp(2)),
            checked_out_at: None,
            last_seen_at: Timestamp(3),
            last_push_at: None,
            push_invalid: None,
        }
    }

    /// A file from the version-1 appliance, with enrollments, opened by this one: the serial
    /// index is filled from what was stored, and the file is at version 2.
    #[test]
    fn v1_file_gets_the_serial_index_backfilled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let records = [
            enrollment("UDID-A", Channel::Device, Some("SER-1")),
            enrollment("UDID-A:user", Channel::User, Some("SER-1")),
            enrollment("UDID-B", Channel::Device, Some("SER-1")),
            enrollment("UDID-C", Channel::Device, Some("SER-2")),
            enrollment("UDID-D", Channel::Device, None),
            enrollment("UDID-E", Channel::Device, Some("")),
        ];
        {
            let db = Database::create(&path).unwrap();
            assert_eq!(prepare(&db, V1_ONLY).unwrap(), 1);
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(ENROLLMENTS).unwrap();
                for r in &records {
                    let bytes = encode("enrollments", &r.id, r).unwrap();
                    table.insert(r.id.as_str(), bytes.as_slice()).unwrap();
                }
                // Damage the migration must step over rather than refuse to start on.
                table.insert("UDID-BAD", b"{\"id\": 1".as_slice()).unwrap();
            }
            txn.commit().unwrap();
            assert!(
                txn_has_no_table(&db, ENROLLMENT_SERIALS),
                "a real version-1 file has no serial index"
            );
        }

        let store = RedbStore::open(&path, StoreOptions::default()).unwrap();
        let ids = |serial: &str| -> Vec<String> {
            store
                .enrollments_by_serial(serial)
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect()
        };
        assert_eq!(ids("SER-1"), ["UDID-A", "UDID-B"]);
        assert_eq!(ids("SER-2"), ["UDID-C"]);
        assert!(ids("").is_empty());
        assert_eq!(
            store.enrollments_by_serial("SER-1").unwrap()[0],
            records[0],
            "records come back whole"
        );
        assert_eq!(
            store.count_enrollments().unwrap(),
            7,
            "nothing else changed"
        );
        store.close().unwrap();

        let db = Database::create(&path).unwrap();
        assert_eq!(version(&db).unwrap(), CURRENT_VERSION);
        let rtx = db.begin_read().unwrap();
        let index = rtx.open_table(ENROLLMENT_SERIALS).unwrap();
        assert_eq!(
            index.len().unwrap(),
            3,
            "device channels with a serial only"
        );
    }

    fn txn_has_no_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        db: &Database,
        def: TableDefinition<K, V>,
    ) -> bool {
        let rtx = db.begin_read().unwrap();
        matches!(
            rtx.open_table(def),
            Err(redb::TableError::TableDoesNotExist(_))
        )
    }

    /// A version-5 file, whose reports sit in `delivery_results` and whose finished deliveries
    /// are indexed per enrollment, taken to version 6 (which gains a delivery with its report
    /// in its own value, as version 6 wrote them) and then opened by this binary: every report
    /// still reads, the queued delivery is still queued and takes its result, retention by
    /// count deletes the oldest finished deliveries with their reports, and the tables of
    /// versions 5 and 6 are gone.
    #[tokio::test]
    async fn v5_and_v6_deliveries_move_to_the_version_7_layout() {
        use crate::records::{StoredCommand, StoredDelivery};
        use mdm_service::ports::{
            CommandQueue, CommandResult, DeliveryStatus, ResultOutcome, RetentionPolicy,
        };

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let command = |txn: &WriteTransaction, uuid: &str| {
            let command = StoredCommand {
                request_type: "ProfileList".into(),
                created_at: Timestamp(10),
                created_by: "admin".into(),
                sealed: false,
            };
            let bytes = encode("commands", &uuid, &command).unwrap();
            txn.open_table(COMMANDS)
                .unwrap()
                .insert(uuid, bytes.as_slice())
                .unwrap();
            txn.open_table(COMMAND_PAYLOADS)
                .unwrap()
                .insert(uuid, b"<plist/>".as_slice())
                .unwrap();
        };
        let delivery = |seq: u64, done: bool| StoredDelivery {
            request_type: "ProfileList".into(),
            status: if done {
                DeliveryStatus::Acknowledged
            } else {
                DeliveryStatus::Queued
            },
            seq,
            queued_at: Timestamp(10),
            updated_at: Timestamp(if done {
                100 + i64::try_from(seq).unwrap()
            } else {
                10
            }),
            error_chain_json: None,
        };
        {
            let db = Database::create(&path).unwrap();
            assert_eq!(prepare(&db, &MIGRATIONS[..5]).unwrap(), 5);
            let txn = db.begin_write().unwrap();
            {
                let d = enrollment("D", Channel::Device, Some("SER-D"));
                let bytes = encode("enrollments", &"D", &d).unwrap();
                txn.open_table(ENROLLMENTS)
                    .unwrap()
                    .insert("D", bytes.as_slice())
                    .unwrap();
                for (seq, uuid, done) in [(1u64, "c1", true), (2, "c2", true), (3, "c3", false)] {
                    command(&txn, uuid);
                    let delivery = delivery(seq, done);
                    let bytes = encode("deliveries", &uuid, &delivery).unwrap();
                    txn.open_table(DELIVERIES)
                        .unwrap()
                        .insert((uuid, "D"), bytes.as_slice())
                        .unwrap();
                    txn.open_table(HISTORY)
                        .unwrap()
                        .insert(("D", seq), uuid)
                        .unwrap();
                    if done {
                        let report = format!("report {uuid}");
                        let at = delivery.updated_at.0;
                        txn.open_table(DELIVERY_RESULTS)
                            .unwrap()
                            .insert((uuid, "D"), report.as_bytes())
                            .unwrap();
                        txn.open_table(FINISHED_BY_AGE)
                            .unwrap()
                            .insert((at, seq), (uuid, "D"))
                            .unwrap();
                        txn.open_table(FINISHED_BY_ENROLLMENT)
                            .unwrap()
                            .insert(("D", seq), (at, uuid))
                            .unwrap();
                    } else {
                        txn.open_table(QUEUE)
                            .unwrap()
                            .insert(("D", seq), uuid)
                            .unwrap();
                    }
                }
                txn.open_table(FINISHED_COUNT)
                    .unwrap()
                    .insert("D", 2)
                    .unwrap();
            }
            txn.commit().unwrap();

            // Version 6: c4 is final, its report after a NUL in the delivery's own value.
            assert_eq!(prepare(&db, &MIGRATIONS[..6]).unwrap(), 6);
            let txn = db.begin_write().unwrap();
            command(&txn, "c4");
            let c4 = delivery(4, true);
            let mut bytes = encode("deliveries", &"c4", &c4).unwrap();
            bytes.push(0);
            bytes.extend_from_slice(b"report c4");
            txn.open_table(DELIVERIES)
                .unwrap()
                .insert(("c4", "D"), bytes.as_slice())
                .unwrap();
            txn.open_table(HISTORY)
                .unwrap()
                .insert(("D", 4), "c4")
                .unwrap();
            txn.open_table(HISTORY_COUNT)
                .unwrap()
                .insert("D", 4)
                .unwrap();
            txn.open_table(FINISHED_BY_AGE)
                .unwrap()
                .insert((c4.updated_at.0, 4), ("c4", "D"))
                .unwrap();
            txn.commit().unwrap();
        }

        let store = RedbStore::open(&path, StoreOptions::default()).unwrap();
        let result = |uuid: &str| store.deliveries(uuid, None, 10).unwrap()[0].result.clone();
        assert_eq!(result("c1").as_deref(), Some(b"report c1".as_slice()));
        assert_eq!(result("c4").as_deref(), Some(b"report c4".as_slice()));
        let uuids = |store: &RedbStore| -> Vec<String> {
            store
                .enrollment_deliveries("D", 10)
                .unwrap()
                .into_iter()
                .map(|d| d.command_uuid)
                .collect()
        };
        assert_eq!(uuids(&store), ["c4", "c3", "c2", "c1"]);
        assert_eq!(result("c3"), None, "c3 is still queued");
        let next = store.next_command("D", &HashSet::new()).unwrap().unwrap();
        assert_eq!(next.uuid, "c3");

        // Keep one finished delivery per enrollment: c1 and c2 go, c4 (the newest) and c3
        // (queued) stay.
        let policy = RetentionPolicy {
            max_age: std::time::Duration::from_secs(3_650 * 24 * 3600),
            max_finished_per_enrollment: 1,
            batch_limit: 100,
        };
        let stats = store.prune(policy, Timestamp(1_000)).await.unwrap();
        assert_eq!(stats.deliveries_removed, 2, "{stats:?}");
        assert_eq!(stats.commands_removed, 2, "{stats:?}");
        assert!(store.deliveries("c1", None, 10).unwrap().is_empty());
        assert_eq!(uuids(&store), ["c4", "c3"]);
        let stats = store.prune(policy, Timestamp(1_000)).await.unwrap();
        assert_eq!(
            stats.deliveries_removed, 0,
            "nothing more is over the limit"
        );

        let outcome = store
            .record_result(
                "D",
                CommandResult {
                    uuid: "c3".into(),
                    status: DeliveryStatus::Acknowledged,
                    raw: b"report c3".to_vec(),
                    error_chain_json: None,
                    at: Timestamp(200),
                    touch: false,
                    skip_next: Default::default(),
                },
            )
            .await
            .unwrap();
        assert!(
            matches!(outcome, ResultOutcome::Recorded { .. }),
            "{outcome:?}"
        );
        assert_eq!(result("c3").as_deref(), Some(b"report c3".as_slice()));
        assert!(store.next_command("D", &HashSet::new()).unwrap().is_none());
        store.close().unwrap();

        let db = Database::create(&path).unwrap();
        assert_eq!(version(&db).unwrap(), CURRENT_VERSION);
        assert!(txn_has_no_table(&db, FINISHED_BY_ENROLLMENT));
        assert!(txn_has_no_table(&db, FINISHED_COUNT));
        assert!(txn_has_no_table(&db, DELIVERIES));
        assert!(txn_has_no_table(&db, DELIVERY_RESULTS));
        assert!(txn_has_no_table(&db, QUEUE));
        assert!(txn_has_no_table(&db, HISTORY));
        let rtx = db.begin_read().unwrap();
        let counts = rtx.open_table(HISTORY_COUNT).unwrap();
        assert_eq!(counts.get("D").unwrap().unwrap().value(), 2);
        let reports = rtx.open_table(REPORTS).unwrap();
        assert!(reports.get((101, 1)).unwrap().is_none(), "pruned with c1");
        assert!(reports.get((104, 4)).unwrap().is_some());
        assert_eq!(reports.len().unwrap(), 2, "c3's and c4's");
    }

    #[test]
    fn v1_migrates_to_v2_in_order_and_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        v1_file_with_a_setting(&path);
        let db = Database::create(&path).unwrap();
        let steps: &[Migration] = &[create_v1, test_v2];
        assert_eq!(prepare(&db, steps).unwrap(), 2);
        let rtx = db.begin_read().unwrap();
        let settings = rtx.open_table(SETTINGS).unwrap();
        assert_eq!(settings.get("greeting").unwrap().unwrap().value(), b"hello");
        assert_eq!(settings.get("greeting.len").unwrap().unwrap().value(), b"5");
        drop(settings);
        drop(rtx);
        // Idempotent: a second open runs nothing.
        assert_eq!(prepare(&db, steps).unwrap(), 2);
        let rtx = db.begin_read().unwrap();
        assert_eq!(rtx.open_table(SETTINGS).unwrap().len().unwrap(), 2);
        drop(rtx);
        // And the binary that only knows v1 now refuses the file.
        let err = prepare(&db, V1_ONLY).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("newer appliance version (schema version 2)"),
            "{msg}"
        );
        assert!(msg.contains("up to schema version 1"), "{msg}");
    }

    #[test]
    fn failed_migration_leaves_the_file_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        v1_file_with_a_setting(&path);
        let db = Database::create(&path).unwrap();
        let err = prepare(&db, &[create_v1, failing_v2]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("migration to schema version 2 failed"),
            "{msg}"
        );
        assert_eq!(version(&db).unwrap(), 1);
        let rtx = db.begin_read().unwrap();
        let settings = rtx.open_table(SETTINGS).unwrap();
        assert!(settings.get("half-done").unwrap().is_none());
        assert_eq!(settings.len().unwrap(), 1);
    }

    #[test]
    fn records_tolerate_new_optional_fields() {
        #[derive(Serialize)]
        struct Old {
            a: u32,
        }
        #[derive(Deserialize, Debug)]
        struct New {
            a: u32,
            b: Option<String>,
        }
        let bytes = encode("t", &"k", &Old { a: 7 }).unwrap();
        let new: New = decode("t", &"k", &bytes).unwrap();
        assert_eq!((new.a, new.b), (7, None));
        let err = decode::<New>("enrollments", &"UDID-1", b"{not json").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)));
        assert!(err
            .to_string()
            .contains("table `enrollments`, key `UDID-1`"));
    }
}
