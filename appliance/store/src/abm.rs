//! Apple Business Manager connections, their devices, enrollment profiles and rules.
//!
//! A device record lives in `abm_device_records` under `(connection, slot)`, where its slot is
//! handed out in arrival order when the device is first seen; `abm_devices`
//! `(connection, serial) → slot` finds it by serial number. Apple lists devices in no
//! particular serial order, so keying the records themselves by serial would make every
//! 1000-device sync page (and every assignment pass) rewrite about a thousand B-tree pages
//! scattered over the whole table; by slot they land on a few neighbouring pages, and only the
//! small serial-keyed entries scatter. Also kept in the same transaction as every device write:
//! - `abm_device_serials` `(serial, connection)`: the same serial number across connections;
//! - `abm_devices_due` `(connection, next_assign_at ms, slot)`: the assignment job's work
//!   list, earliest first (a device without `next_assign_at` has no entry);
//! - `abm_device_count`: devices per connection, so counting never scans.
//!
//! [`EncodedBatch::encode`] turns a batch's records into JSON on the caller's task, so the
//! writer thread every write shares only does B-tree work, and a batch the writer replays (see
//! `writer`) is not encoded twice. Of a replaced device only `next_assign_at` is decoded.
//!
//! A batch applies `delete_connection` first (so one batch can replace a connection
//! wholesale), then the rest in field order: connection, devices, profiles, profile deletions,
//! rules, rule deletions, pre-enrollment records. Records are not checked against their
//! connection's existence.

use mdm_service::ports::{
    AbmBatch, AbmConnectionRecord, AbmDeviceRecord, AbmProfileRecord, AbmRuleRecord, StoreError,
    StoreResult, Timestamp,
};
use redb::{
    ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableDefinition, TableHandle,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::codec::{dangling, decode, encode, prefix_page, successor, BackendExt, PairKey};
use crate::records::all_json;
use crate::schema::{
    open, open_read, ABM_CONNECTIONS, ABM_DEVICES, ABM_DEVICES_DUE, ABM_DEVICE_COUNT,
    ABM_DEVICE_RECORDS, ABM_DEVICE_SERIALS, ABM_PROFILES, ABM_RULES,
};

/// A record ready to be written under a `(connection, name)` key.
#[derive(Debug)]
struct Encoded {
    connection: String,
    name: String,
    json: Vec<u8>,
}

/// A device record ready to be written, with what its index entries need.
#[derive(Debug)]
struct EncodedDevice {
    connection: String,
    serial: String,
    next_assign_at: Option<i64>,
    json: Vec<u8>,
}

/// An [`AbmBatch`] with every record already encoded.
#[derive(Debug)]
pub(crate) struct EncodedBatch {
    delete_connection: Option<String>,
    connection: Option<(String, Vec<u8>)>,
    devices: Vec<EncodedDevice>,
    profiles: Vec<Encoded>,
    delete_profiles: Vec<(String, String)>,
    rules: Vec<Encoded>,
    delete_rules: Vec<(String, String)>,
    preenrolled: crate::lifecycle::EncodedPreenroll,
}

impl EncodedBatch {
    /// Encodes the records of `batch`, taking its keys over rather than copying them.
    pub(crate) fn encode(batch: AbmBatch) -> StoreResult<EncodedBatch> {
        let connection = batch
            .connection
            .map(|c| {
                let json = encode("abm_connections", &c.name, &c)?;
                Ok::<_, StoreError>((c.name, json))
            })
            .transpose()?;
        let mut devices = Vec::with_capacity(batch.devices.len());
        for d in batch.devices {
            let json = encode("abm_device_records", &PairKey(&d.connection, &d.serial), &d)?;
            devices.push(EncodedDevice {
                next_assign_at: d.next_assign_at.map(|t| t.0),
                connection: d.connection,
                serial: d.serial,
                json,
            });
        }
        // In key order, consecutive index writes land on the same B-tree pages. The sort is
        // stable: of a serial listed twice (Apple's pages can), the later record still wins.
        devices.sort_by(|a, b| (&a.connection, &a.serial).cmp(&(&b.connection, &b.serial)));
        let mut profiles = Vec::with_capacity(batch.profiles.len());
        for p in batch.profiles {
            let json = encode("abm_profiles", &PairKey(&p.connection, &p.name), &p)?;
            profiles.push(Encoded {
                connection: p.connection,
                name: p.name,
                json,
            });
        }
        let mut rules = Vec::with_capacity(batch.rules.len());
        for r in batch.rules {
            let json = encode("abm_rules", &PairKey(&r.connection, &r.name), &r)?;
            rules.push(Encoded {
                connection: r.connection,
                name: r.name,
                json,
            });
        }
        Ok(EncodedBatch {
            delete_connection: batch.delete_connection,
            connection,
            devices,
            profiles,
            delete_profiles: batch.delete_profiles,
            rules,
            delete_rules: batch.delete_rules,
            preenrolled: crate::lifecycle::EncodedPreenroll::encode(batch.preenrolled, Vec::new())?,
        })
    }
}

/// Applies a whole batch in `txn`.
pub(crate) fn write(txn: &WriteTransaction, batch: &EncodedBatch) -> StoreResult<()> {
    if let Some(name) = &batch.delete_connection {
        delete_connection(txn, name)?;
    }
    if let Some((name, json)) = &batch.connection {
        let what = format!("cannot write `abm_connections` record `{name}`");
        open(txn, ABM_CONNECTIONS)?
            .insert(name.as_str(), json.as_slice())
            .backend(&what)?;
    }
    if !batch.devices.is_empty() {
        put_devices(txn, &batch.devices)?;
    }
    put_and_delete(txn, ABM_PROFILES, &batch.profiles, &batch.delete_profiles)?;
    put_and_delete(txn, ABM_RULES, &batch.rules, &batch.delete_rules)?;
    if !batch.preenrolled.is_empty() {
        crate::lifecycle::write_preenrolled(txn, &batch.preenrolled)?;
    }
    Ok(())
}

/// What a device write needs of the record it replaces.
#[derive(Deserialize)]
struct DueView {
    next_assign_at: Option<Timestamp>,
}

/// Slot allocation and new-device count of one connection during a batch.
struct NewDevices<'b> {
    connection: &'b str,
    next_slot: u64,
    added: u64,
}

/// The slot after the highest one `connection` uses. Devices leave only together with their
/// connection, so this is also its device count, but the records themselves are the authority:
/// a slot handed out twice would overwrite another device.
fn next_free_slot(
    records: &Table<'_, (&'static str, u64), &'static [u8]>,
    connection: &str,
) -> StoreResult<u64> {
    let what = "cannot allocate an ABM device slot";
    let last = records
        .range((connection, 0)..=(connection, u64::MAX))
        .backend(what)?
        .next_back();
    match last {
        None => Ok(0),
        Some(entry) => {
            let (k, _) = entry.backend(what)?;
            Ok(k.value().1.saturating_add(1))
        }
    }
}

/// Hands out the next slot of `connection` and counts the new device.
fn allocate_slot<'b>(
    new: &mut Vec<NewDevices<'b>>,
    records: &Table<'_, (&'static str, u64), &'static [u8]>,
    connection: &'b str,
) -> StoreResult<u64> {
    if let Some(n) = new.iter_mut().find(|n| n.connection == connection) {
        let slot = n.next_slot;
        n.next_slot = slot.saturating_add(1);
        n.added += 1;
        return Ok(slot);
    }
    let slot = next_free_slot(records, connection)?;
    new.push(NewDevices {
        connection,
        next_slot: slot.saturating_add(1),
        added: 1,
    });
    Ok(slot)
}

fn put_devices(txn: &WriteTransaction, batch: &[EncodedDevice]) -> StoreResult<()> {
    let mut slots = open(txn, ABM_DEVICES)?;
    let mut records = open(txn, ABM_DEVICE_RECORDS)?;
    let mut serials = open(txn, ABM_DEVICE_SERIALS)?;
    let mut due = open(txn, ABM_DEVICES_DUE)?;
    let what = "cannot write an ABM device";
    // A batch almost always holds one connection.
    let mut new: Vec<NewDevices<'_>> = Vec::new();
    for d in batch {
        let (connection, serial) = (d.connection.as_str(), d.serial.as_str());
        let key = PairKey(connection, serial);
        let existing = slots
            .get((connection, serial))
            .backend(what)?
            .map(|g| g.value());
        let (slot, old_due) = match existing {
            Some(slot) => {
                let old = records
                    .insert((connection, slot), d.json.as_slice())
                    .backend(what)?
                    .map(|g| decode::<DueView>("abm_device_records", &key, g.value()));
                match old {
                    Some(Ok(view)) => (slot, view.next_assign_at.map(|t| t.0)),
                    // Only damage makes the old record unreadable (or missing): its due entry
                    // is unknown, so drop whatever entry the slot has. This scans the
                    // connection's due list.
                    damaged => {
                        if let Some(Err(e)) = damaged {
                            tracing::warn!(error = %e, "replaced an unreadable ABM device record");
                        }
                        due.retain_in(
                            (connection, i64::MIN, 0)..=(connection, i64::MAX, u64::MAX),
                            |(_, _, s), ()| s != slot,
                        )
                        .backend(what)?;
                        (slot, None)
                    }
                }
            }
            None => {
                let slot = allocate_slot(&mut new, &records, connection)?;
                slots.insert((connection, serial), slot).backend(what)?;
                serials.insert((serial, connection), ()).backend(what)?;
                records
                    .insert((connection, slot), d.json.as_slice())
                    .backend(what)?;
                (slot, None)
            }
        };
        if old_due != d.next_assign_at {
            if let Some(at) = old_due {
                due.remove((connection, at, slot)).backend(what)?;
            }
            if let Some(at) = d.next_assign_at {
                due.insert((connection, at, slot), ()).backend(what)?;
            }
        }
    }
    if !new.is_empty() {
        let mut counts = open(txn, ABM_DEVICE_COUNT)?;
        for n in new {
            let count = counts
                .get(n.connection)
                .backend(what)?
                .map_or(0, |g| g.value());
            counts
                .insert(n.connection, count.saturating_add(n.added))
                .backend(what)?;
        }
    }
    Ok(())
}

/// Writes `(connection, name)`-keyed records, then removes the `deletes`.
fn put_and_delete(
    txn: &WriteTransaction,
    def: TableDefinition<(&'static str, &'static str), &'static [u8]>,
    puts: &[Encoded],
    deletes: &[(String, String)],
) -> StoreResult<()> {
    if puts.is_empty() && deletes.is_empty() {
        return Ok(());
    }
    let mut table = open(txn, def)?;
    let what = format!("cannot write table `{}`", def.name());
    for p in puts {
        table
            .insert((p.connection.as_str(), p.name.as_str()), p.json.as_slice())
            .backend(&what)?;
    }
    for (connection, name) in deletes {
        table
            .remove((connection.as_str(), name.as_str()))
            .backend(&what)?;
    }
    Ok(())
}

/// Removes a connection with its devices (and their index entries and counter), profiles and
/// rules.
fn delete_connection(txn: &WriteTransaction, name: &str) -> StoreResult<()> {
    let what = format!("cannot delete ABM connection `{name}`");
    let end = successor(name);
    open(txn, ABM_CONNECTIONS)?.remove(name).backend(&what)?;
    let mut gone: Vec<String> = Vec::new();
    open(txn, ABM_DEVICES)?
        .retain_in((name, "")..(end.as_str(), ""), |(_, serial), _| {
            gone.push(serial.to_owned());
            false
        })
        .backend(&what)?;
    {
        let mut serials = open(txn, ABM_DEVICE_SERIALS)?;
        for serial in &gone {
            serials.remove((serial.as_str(), name)).backend(&what)?;
        }
    }
    open(txn, ABM_DEVICE_RECORDS)?
        .retain_in((name, 0)..=(name, u64::MAX), |_, _| false)
        .backend(&what)?;
    open(txn, ABM_DEVICES_DUE)?
        .retain_in((name, i64::MIN, 0)..=(name, i64::MAX, u64::MAX), |_, ()| {
            false
        })
        .backend(&what)?;
    open(txn, ABM_DEVICE_COUNT)?.remove(name).backend(&what)?;
    for def in [ABM_PROFILES, ABM_RULES] {
        open(txn, def)?
            .retain_in((name, "")..(end.as_str(), ""), |_, _| false)
            .backend(&what)?;
    }
    Ok(())
}

pub(crate) fn connection(
    rtx: &ReadTransaction,
    name: &str,
) -> StoreResult<Option<AbmConnectionRecord>> {
    crate::records::get_json(&open_read(rtx, ABM_CONNECTIONS)?, name)
}

pub(crate) fn connections(rtx: &ReadTransaction) -> StoreResult<Vec<AbmConnectionRecord>> {
    all_json(&open_read(rtx, ABM_CONNECTIONS)?)
}

/// Reads and decodes a record from a `(connection, name)`-keyed table.
fn get_pair<T: DeserializeOwned>(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    table_name: &str,
    connection: &str,
    name: &str,
) -> StoreResult<Option<T>> {
    let key = PairKey(connection, name);
    let guard = table
        .get((connection, name))
        .backend_with(|| format!("cannot read `{table_name}` record `{key}`"))?;
    guard
        .map(|g| decode(table_name, &key, g.value()))
        .transpose()
}

/// Decodes every record of one connection in a `(connection, name)`-keyed table, by name.
fn list_pairs<T: DeserializeOwned>(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    table_name: &str,
    connection: &str,
) -> StoreResult<Vec<T>> {
    let end = successor(connection);
    let what = format!("cannot read table `{table_name}`");
    let mut out = Vec::new();
    for entry in table
        .range((connection, "")..(end.as_str(), ""))
        .backend(&what)?
    {
        let (k, v) = entry.backend(&what)?;
        let (c, name) = k.value();
        out.push(decode(table_name, &PairKey(c, name), v.value())?);
    }
    Ok(out)
}

/// The tables a device read goes through.
struct DeviceTables {
    slots: ReadOnlyTable<(&'static str, &'static str), u64>,
    records: ReadOnlyTable<(&'static str, u64), &'static [u8]>,
}

impl DeviceTables {
    fn open(rtx: &ReadTransaction) -> StoreResult<Self> {
        Ok(DeviceTables {
            slots: open_read(rtx, ABM_DEVICES)?,
            records: open_read(rtx, ABM_DEVICE_RECORDS)?,
        })
    }

    /// The record in `slot`; an index entry (`index`, `key`) pointing at an empty slot is
    /// damage.
    fn record(
        &self,
        connection: &str,
        slot: u64,
        index: &str,
        key: &dyn std::fmt::Display,
    ) -> StoreResult<AbmDeviceRecord> {
        let guard = self
            .records
            .get((connection, slot))
            .backend("cannot read an ABM device")?
            .ok_or_else(|| dangling(index, key, "ABM device record"))?;
        decode("abm_device_records", key, guard.value())
    }

    fn by_serial(&self, connection: &str, serial: &str) -> StoreResult<Option<AbmDeviceRecord>> {
        let key = PairKey(connection, serial);
        let slot = self
            .slots
            .get((connection, serial))
            .backend("cannot read an ABM device")?
            .map(|g| g.value());
        slot.map(|slot| self.record(connection, slot, "abm_devices", &key))
            .transpose()
    }
}

pub(crate) fn device(
    rtx: &ReadTransaction,
    connection: &str,
    serial: &str,
) -> StoreResult<Option<AbmDeviceRecord>> {
    DeviceTables::open(rtx)?.by_serial(connection, serial)
}

pub(crate) fn devices(
    rtx: &ReadTransaction,
    connection: &str,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<AbmDeviceRecord>> {
    let tables = DeviceTables::open(rtx)?;
    let end = successor(connection);
    let what = "cannot list ABM devices";
    let mut out = Vec::new();
    for entry in tables
        .slots
        .range::<(&str, &str)>(prefix_page(connection, after, &end))
        .backend(what)?
        .take(limit)
    {
        let (k, v) = entry.backend(what)?;
        let (_, serial) = k.value();
        let key = PairKey(connection, serial);
        out.push(tables.record(connection, v.value(), "abm_devices", &key)?);
    }
    Ok(out)
}

pub(crate) fn device_count(rtx: &ReadTransaction, connection: &str) -> StoreResult<u64> {
    Ok(open_read(rtx, ABM_DEVICE_COUNT)?
        .get(connection)
        .backend("cannot read the ABM device count")?
        .map_or(0, |g| g.value()))
}

pub(crate) fn devices_by_serial(
    rtx: &ReadTransaction,
    serial: &str,
) -> StoreResult<Vec<AbmDeviceRecord>> {
    let index = open_read(rtx, ABM_DEVICE_SERIALS)?;
    let tables = DeviceTables::open(rtx)?;
    let end = successor(serial);
    let what = "cannot read ABM devices by serial number";
    let mut out = Vec::new();
    for entry in index
        .range((serial, "")..(end.as_str(), ""))
        .backend(what)?
    {
        let (k, _) = entry.backend(what)?;
        let (_, connection) = k.value();
        let device = tables.by_serial(connection, serial)?.ok_or_else(|| {
            dangling(
                "abm_device_serials",
                &PairKey(serial, connection),
                "ABM device",
            )
        })?;
        out.push(device);
    }
    Ok(out)
}

pub(crate) fn devices_due(
    rtx: &ReadTransaction,
    connection: &str,
    now: Timestamp,
    limit: usize,
) -> StoreResult<Vec<AbmDeviceRecord>> {
    let due = open_read(rtx, ABM_DEVICES_DUE)?;
    let tables = DeviceTables::open(rtx)?;
    let what = "cannot read the ABM assignment schedule";
    let mut out = Vec::new();
    for entry in due
        .range((connection, i64::MIN, 0)..=(connection, now.0, u64::MAX))
        .backend(what)?
        .take(limit)
    {
        let (k, _) = entry.backend(what)?;
        let (_, at, slot) = k.value();
        let key = DueKey(connection, at, slot);
        out.push(tables.record(connection, slot, "abm_devices_due", &key)?);
    }
    Ok(out)
}

/// Displays an `abm_devices_due` key in error messages.
struct DueKey<'a>(&'a str, i64, u64);

impl std::fmt::Display for DueKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} / {} / #{}", self.0, self.1, self.2)
    }
}

pub(crate) fn next_due(rtx: &ReadTransaction, connection: &str) -> StoreResult<Option<Timestamp>> {
    let due = open_read(rtx, ABM_DEVICES_DUE)?;
    let what = "cannot read the ABM assignment schedule";
    let first = due
        .range((connection, i64::MIN, 0)..=(connection, i64::MAX, u64::MAX))
        .backend(what)?
        .next();
    match first {
        None => Ok(None),
        Some(entry) => {
            let (k, _) = entry.backend(what)?;
            Ok(Some(Timestamp(k.value().1)))
        }
    }
}

pub(crate) fn profile(
    rtx: &ReadTransaction,
    connection: &str,
    name: &str,
) -> StoreResult<Option<AbmProfileRecord>> {
    get_pair(
        &open_read(rtx, ABM_PROFILES)?,
        "abm_profiles",
        connection,
        name,
    )
}

pub(crate) fn profiles(
    rtx: &ReadTransaction,
    connection: &str,
) -> StoreResult<Vec<AbmProfileRecord>> {
    list_pairs(&open_read(rtx, ABM_PROFILES)?, "abm_profiles", connection)
}

/// A connection's rules by priority, then name: an admin has few rules, so they are sorted
/// here rather than kept in a priority index.
pub(crate) fn rules(rtx: &ReadTransaction, connection: &str) -> StoreResult<Vec<AbmRuleRecord>> {
    let mut rules: Vec<AbmRuleRecord> =
        list_pairs(&open_read(rtx, ABM_RULES)?, "abm_rules", connection)?;
    // Stable, and the scan is already in name order.
    rules.sort_by_key(|r| r.priority);
    Ok(rules)
}
