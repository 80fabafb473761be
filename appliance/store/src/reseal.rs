//! Re-sealing every sealed blob in the file under the keystore's current data key: step 2 of
//! a data-key rotation (see `mdm_keystore::Sealer::begin_rotation`).
//!
//! The store does not know which record fields are sealed, and does not need to: a sealed blob
//! is self-describing (it starts with the marker `MDKS`, then records its purpose and key id).
//! The pass visits every value of every table that holds bytes and finds blobs where the
//! service puts them:
//! - a value that is itself a blob (sealed keys in `settings`, profile files, command
//!   payloads);
//! - inside a JSON record, a string that is the base64 of a blob (how record types serialize
//!   their `*_sealed` fields), or an array of byte numbers that is one (older records).
//!
//! Whatever the rewrap function re-seals is written back in the same shape. A new table or a
//! new sealed field is covered without a change here; [`tests::every_table_is_classified`]
//! fails until a new table is listed below as holding bytes or not.
//!
//! Each batch of up to [`BATCH`] records is one ordinary (group-committed) write, so devices
//! and admins are not held up while a large file is re-sealed; the keystore keeps the older
//! key until the pass is complete, so records not yet visited still open.

use std::ops::Bound;
use std::sync::Arc;

use base64::Engine as _;
use mdm_service::ports::{ResealReport, Rewrap, StoreError, StoreResult};
use redb::{Key, ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde_json::Value;

use crate::schema::{self, open};
use crate::RedbStore;

/// Records read per write transaction.
const BATCH: usize = 500;

/// The sealed-blob marker (`mdm_keystore`'s blob format).
const MAGIC: &[u8; 4] = b"MDKS";
/// Base64 of any blob starts with this: the encoding of `MDK` and the top six bits of `S`.
const MAGIC_B64: &str = "TURLU";

/// What one batch did.
struct Batch {
    /// The last key read, raw, when the table may have more.
    next: Option<Vec<u8>>,
    records: u64,
    blobs: u64,
    resealed: u64,
}

impl RedbStore {
    /// Visits every byte-valued table (see the module documentation).
    pub(crate) async fn reseal_all(&self, rewrap: Rewrap) -> StoreResult<ResealReport> {
        let mut report = ResealReport::default();
        self.reseal_table(schema::ENROLLMENTS, &rewrap, &mut report)
            .await?;
        // Resealing rewrites the sealed tokens inside enrollment records, none of which is in
        // a binding, so kept bindings are still right; the versions move anyway, so that
        // "every write moves them" holds without exceptions.
        self.inner.writer.versions().bump_all();
        self.reseal_table(schema::COMMANDS, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::COMMAND_PAYLOADS, &rewrap, &mut report)
            .await?;
        // Cached payloads are sealed with the key being retired. They would still open (the
        // keystore keeps retired keys in memory), but nothing should be sent from them once
        // every stored copy is rewrapped. The writer fills the cache only from the state it
        // commits, and every write that read a payload before the last rewrap has run by now,
        // so nothing older comes back.
        self.inner.commands.clear();
        self.reseal_table(schema::ENROLLMENT_DELIVERIES, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::REPORTS, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::CHALLENGES, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::ISSUED_CERTS, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::LINKS, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::API_TOKENS, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::SETTINGS, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::ABM_CONNECTIONS, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::ABM_DEVICE_RECORDS, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::ABM_PROFILES, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::ABM_RULES, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::PREENROLLED, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::ACTIVITY, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::GROUPS, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::PROFILES, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::PROFILE_FILES, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::INSTALLS, &rewrap, &mut report)
            .await?;
        self.reseal_table(schema::USERS, &rewrap, &mut report)
            .await?;
        Ok(report)
    }

    async fn reseal_table<K: Key + Send + Sync + 'static>(
        &self,
        def: TableDefinition<'static, K, &'static [u8]>,
        rewrap: &Rewrap,
        report: &mut ResealReport,
    ) -> StoreResult<()> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let rewrap = Arc::clone(rewrap);
            let from = after.clone();
            let batch = self
                .write(move |txn| reseal_batch(txn, def, from.as_deref(), &rewrap))
                .await?;
            report.records += batch.records;
            report.blobs += batch.blobs;
            report.resealed += batch.resealed;
            match batch.next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }
}

fn reseal_batch<K: Key + Send + Sync + 'static>(
    txn: &WriteTransaction,
    def: TableDefinition<'static, K, &'static [u8]>,
    after: Option<&[u8]>,
    rewrap: &Rewrap,
) -> StoreResult<Batch> {
    let mut table = open(txn, def)?;
    let mut changes: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut batch = Batch {
        next: None,
        records: 0,
        blobs: 0,
        resealed: 0,
    };
    {
        let start = match after {
            Some(raw) => Bound::Excluded(K::from_bytes(raw)),
            None => Bound::Unbounded,
        };
        let iter = table
            .range::<K::SelfType<'_>>((start, Bound::Unbounded))
            .map_err(|e| StoreError::Backend(format!("cannot read table `{}`: {e}", def.name())))?;
        for entry in iter {
            let (key, value) = entry.map_err(|e| {
                StoreError::Backend(format!("cannot read table `{}`: {e}", def.name()))
            })?;
            let key_value = key.value();
            let raw_key = K::as_bytes(&key_value).as_ref().to_vec();
            let mut found = Found::default();
            let new = transform(value.value(), rewrap, &mut found).map_err(|e| {
                StoreError::Corrupt(format!(
                    "table `{}`, key `{key_value:?}`: a sealed value could not be re-sealed: {e}",
                    def.name()
                ))
            })?;
            batch.records += 1;
            batch.blobs += found.blobs;
            batch.resealed += found.resealed;
            if let Some(new) = new {
                changes.push((raw_key.clone(), new));
            }
            if batch.records == BATCH as u64 {
                batch.next = Some(raw_key);
                break;
            }
        }
    }
    for (raw_key, value) in &changes {
        table
            .insert(K::from_bytes(raw_key), value.as_slice())
            .map_err(|e| {
                StoreError::Backend(format!("cannot write table `{}`: {e}", def.name()))
            })?;
    }
    Ok(batch)
}

#[derive(Default)]
struct Found {
    blobs: u64,
    resealed: u64,
}

/// The value with every blob in it re-sealed, or `None` when nothing changed.
fn transform(value: &[u8], rewrap: &Rewrap, found: &mut Found) -> Result<Option<Vec<u8>>, String> {
    if value.starts_with(MAGIC) {
        found.blobs += 1;
        let new = rewrap(value)?;
        found.resealed += u64::from(new.is_some());
        return Ok(new);
    }
    let Some(first) = value.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Ok(None);
    };
    if *first != b'{' && *first != b'[' {
        return Ok(None);
    }
    // Not every value starting with a brace is JSON (an uploaded file could be anything); such
    // a value holds no record fields and is left alone.
    let Ok(mut json) = serde_json::from_slice::<Value>(value) else {
        return Ok(None);
    };
    if !walk(&mut json, rewrap, found)? {
        return Ok(None);
    }
    serde_json::to_vec(&json)
        .map(Some)
        .map_err(|e| format!("cannot encode the record again: {e}"))
}

/// Re-seals the blobs inside a JSON value in place; `true` when something changed.
fn walk(value: &mut Value, rewrap: &Rewrap, found: &mut Found) -> Result<bool, String> {
    match value {
        Value::String(text) if text.starts_with(MAGIC_B64) => {
            let b64 = base64::engine::general_purpose::STANDARD;
            let Ok(bytes) = b64.decode(text.as_bytes()) else {
                return Ok(false);
            };
            if !bytes.starts_with(MAGIC) {
                return Ok(false);
            }
            found.blobs += 1;
            match rewrap(&bytes)? {
                Some(new) => {
                    found.resealed += 1;
                    *text = b64.encode(new);
                    Ok(true)
                }
                None => Ok(false),
            }
        }
        Value::Array(items) => {
            if let Some(bytes) = byte_array(items) {
                found.blobs += 1;
                return match rewrap(&bytes)? {
                    Some(new) => {
                        found.resealed += 1;
                        *items = new.into_iter().map(Value::from).collect();
                        Ok(true)
                    }
                    None => Ok(false),
                };
            }
            let mut changed = false;
            for item in items {
                changed |= walk(item, rewrap, found)?;
            }
            Ok(changed)
        }
        Value::Object(fields) => {
            let mut changed = false;
            for field in fields.values_mut() {
                changed |= walk(field, rewrap, found)?;
            }
            Ok(changed)
        }
        _ => Ok(false),
    }
}

/// The bytes of an array of numbers 0..=255 that starts like a blob.
fn byte_array(items: &[Value]) -> Option<Vec<u8>> {
    if items.len() < MAGIC.len() {
        return None;
    }
    let head = items.iter().take(MAGIC.len()).map(Value::as_u64);
    if !head.eq(MAGIC.iter().map(|b| Some(u64::from(*b)))) {
        return None;
    }
    items
        .iter()
        .map(|v| v.as_u64().and_then(|n| u8::try_from(n).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Every table of a fresh file, by name: those the pass visits and those that hold no
    /// bytes (indexes, counters, queues). A new table must be added to one of the lists.
    #[test]
    fn every_table_is_classified() {
        const VISITED: &[&str] = &[
            "enrollments",
            "commands",
            "command_payloads",
            "enrollment_deliveries",
            "reports",
            "challenges",
            "issued_certs",
            "links",
            "api_tokens",
            "settings",
            "abm_connections",
            "abm_device_records",
            "abm_profiles",
            "abm_rules",
            "preenrolled",
            "activity",
            "groups",
            "profiles",
            "profile_files",
            "installs",
            "users",
        ];
        const NO_BYTES: &[&str] = &[
            "meta",
            "command_targets",
            "finished_by_age",
            "history_count",
            "challenge_expiry",
            "link_tokens",
            "api_token_hashes",
            "enrollment_serials",
            "abm_devices",
            "abm_device_serials",
            "abm_devices_due",
            "abm_device_count",
            "activity_by_target",
            "activity_by_time",
            "group_members",
            "installs_by_profile",
        ];
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db.redb"), Default::default()).unwrap();
        let names = store.table_names().unwrap();
        for name in &names {
            assert!(
                VISITED.contains(&name.as_str()) != NO_BYTES.contains(&name.as_str()),
                "table `{name}` must be listed in exactly one of VISITED and NO_BYTES (and \
                 visited by `reseal_all` if it holds bytes)"
            );
        }
        for name in VISITED.iter().chain(NO_BYTES) {
            assert!(names.iter().any(|n| n == name), "no table `{name}`");
        }
    }

    fn marker_rewrap() -> Rewrap {
        // Re-seals `MDKS...old` into `MDKS...new`, leaves `MDKS...new` alone, fails on `bad`.
        Arc::new(|blob: &[u8]| {
            if blob.ends_with(b"old") {
                let mut new = blob[..blob.len() - 3].to_vec();
                new.extend_from_slice(b"new");
                Ok(Some(new))
            } else if blob.ends_with(b"bad") {
                Err("unauthentic".to_owned())
            } else {
                Ok(None)
            }
        })
    }

    #[test]
    fn blobs_are_found_raw_in_base64_and_as_byte_arrays() {
        let rewrap = marker_rewrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut found = Found::default();
        assert_eq!(
            transform(b"MDKS-x-old", &rewrap, &mut found).unwrap(),
            Some(b"MDKS-x-new".to_vec())
        );
        let record = serde_json::json!({
            "name": "TURLU is not base64 of a blob",
            "key_sealed": b64.encode(b"MDKS-k-old"),
            "nested": [{"token_sealed": b64.encode(b"MDKS-t-new")}],
            "legacy_sealed": b"MDKS-l-old".to_vec(),
            "numbers": [77, 68, 75],
        });
        let out = transform(&serde_json::to_vec(&record).unwrap(), &rewrap, &mut found)
            .unwrap()
            .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["key_sealed"], b64.encode(b"MDKS-k-new"));
        assert_eq!(out["nested"][0]["token_sealed"], b64.encode(b"MDKS-t-new"));
        assert_eq!(
            out["legacy_sealed"],
            serde_json::json!(b"MDKS-l-new".to_vec())
        );
        assert_eq!(out["numbers"], serde_json::json!([77, 68, 75]));
        assert_eq!(out["name"], record["name"]);
        assert_eq!(found.blobs, 4);
        assert_eq!(found.resealed, 3);

        // Nothing to do: no rewrite at all.
        let plain = serde_json::json!({"k": b64.encode(b"MDKS-z-new"), "n": 1});
        let mut found = Found::default();
        let plain = serde_json::to_vec(&plain).unwrap();
        assert_eq!(transform(&plain, &rewrap, &mut found).unwrap(), None);
        assert_eq!((found.blobs, found.resealed), (1, 0));
        assert_eq!(transform(b"{not json", &rewrap, &mut found).unwrap(), None);
        assert_eq!(transform(b"<plist/>", &rewrap, &mut found).unwrap(), None);
        assert!(transform(b"MDKS-q-bad", &rewrap, &mut found).is_err());
    }

    #[tokio::test]
    async fn a_pass_over_several_batches_reseals_every_value_and_stops_on_a_failure() {
        use mdm_service::ports::SettingsStore as _;
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db.redb"), Default::default()).unwrap();
        let n = BATCH * 2 + 7;
        let settings: Vec<(String, Vec<u8>)> = (0..n)
            .map(|i| (format!("k/{i:05}"), format!("MDKS-{i}-old").into_bytes()))
            .collect();
        store.put_settings(settings).await.unwrap();
        let report = store.reseal_all(marker_rewrap()).await.unwrap();
        assert_eq!(report.blobs, n as u64);
        assert_eq!(report.resealed, n as u64);
        for i in [0, BATCH - 1, BATCH, n - 1] {
            let v = store.setting(&format!("k/{i:05}")).unwrap().unwrap();
            assert_eq!(v, format!("MDKS-{i}-new").into_bytes());
        }
        // A second pass finds them all under the current key.
        let again = store.reseal_all(marker_rewrap()).await.unwrap();
        assert_eq!((again.blobs, again.resealed), (n as u64, 0));

        // A blob that cannot be re-sealed stops the pass with its table and key named.
        store
            .put_setting("k/zz-bad", b"MDKS-bad".to_vec())
            .await
            .unwrap();
        let err = store.reseal_all(marker_rewrap()).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("settings") && text.contains("k/zz-bad"),
            "{text}"
        );
        store.close().unwrap();
    }
}
