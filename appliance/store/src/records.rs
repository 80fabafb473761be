//! Stored shapes that differ from the port types, and the JSON helpers for `&str`-keyed tables.
//!
//! Commands are stored without their byte payloads (those sit raw in their own table: JSON would
//! spell each byte as a decimal number). A delivery carries the sequence number that keys it
//! and its finished-index entry, behind its command's UUID (see [`encode_delivery`]); a final
//! report sits raw in `reports`.

use std::ops::Bound;

use mdm_service::ports::{DeliveryRecord, DeliveryStatus, StoreError, StoreResult, Timestamp};
use redb::{ReadableTable, Table, TableHandle};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode, BackendExt};

/// A command's metadata; its payload is in `command_payloads`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredCommand {
    pub request_type: String,
    pub created_at: Timestamp,
    pub created_by: String,
    /// The payload is sealed by the service (records written before sealing existed are not).
    #[serde(default)]
    pub sealed: bool,
}

/// One command's state for one enrollment. Its final report, if any, is in `reports` under the
/// same key as its finished-index entry: (`updated_at`, `seq`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredDelivery {
    pub request_type: String,
    pub status: DeliveryStatus,
    /// Allocated at enqueue from the global counter; keys this delivery in
    /// `enrollment_deliveries`, `command_targets`, `finished_by_age` and `reports`.
    pub seq: u64,
    pub queued_at: Timestamp,
    /// For a final status: when it became final (the finished-by-age index key).
    pub updated_at: Timestamp,
    #[serde(default)]
    pub error_chain_json: Option<String>,
}

impl StoredDelivery {
    pub(crate) fn into_record(
        self,
        command_uuid: &str,
        enrollment_id: &str,
        result: Option<Vec<u8>>,
    ) -> DeliveryRecord {
        DeliveryRecord {
            command_uuid: command_uuid.to_owned(),
            enrollment_id: enrollment_id.to_owned(),
            request_type: self.request_type,
            status: self.status,
            queued_at: self.queued_at,
            updated_at: self.updated_at,
            result,
            error_chain_json: self.error_chain_json,
        }
    }
}

/// Ends the command UUID at the start of a stored delivery, and (schema version 6) a
/// delivery's JSON before its report. Neither a UUID nor JSON text contains a NUL byte
/// (serde_json escapes control characters), so the first NUL is the separator.
const SEPARATOR: u8 = 0;

/// A delivery's value in `enrollment_deliveries`: its command's UUID, a NUL byte, then its
/// JSON. The UUID comes first and raw so that walking an enrollment's queue reads which
/// command each entry is without decoding the JSON.
pub(crate) fn encode_delivery(
    key: &dyn std::fmt::Display,
    uuid: &str,
    delivery: &StoredDelivery,
) -> StoreResult<Vec<u8>> {
    let json = encode("enrollment_deliveries", key, delivery)?;
    let mut bytes = Vec::with_capacity(uuid.len() + 1 + json.len());
    bytes.extend_from_slice(uuid.as_bytes());
    bytes.push(SEPARATOR);
    bytes.extend_from_slice(&json);
    Ok(bytes)
}

/// The command UUID at the start of a stored delivery, and the JSON after it.
pub(crate) fn delivery_uuid<'v>(
    key: &dyn std::fmt::Display,
    bytes: &'v [u8],
) -> StoreResult<(&'v str, &'v [u8])> {
    let at = bytes
        .iter()
        .position(|b| *b == SEPARATOR)
        .ok_or_else(|| corrupt_delivery(key, "no command UUID"))?;
    let uuid = std::str::from_utf8(&bytes[..at])
        .map_err(|_| corrupt_delivery(key, "a command UUID that is not UTF-8"))?;
    Ok((uuid, &bytes[at + 1..]))
}

/// Decodes a stored delivery into its command UUID and record.
pub(crate) fn decode_delivery<'v>(
    key: &dyn std::fmt::Display,
    bytes: &'v [u8],
) -> StoreResult<(&'v str, StoredDelivery)> {
    let (uuid, json) = delivery_uuid(key, bytes)?;
    Ok((uuid, decode("enrollment_deliveries", key, json)?))
}

fn corrupt_delivery(key: &dyn std::fmt::Display, what: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "table `enrollment_deliveries`, key `{key}`: the value has {what}"
    ))
}

/// Splits a delivery value of schema version 6 (`deliveries`: JSON, then for a final delivery
/// a NUL byte and the device's report) into its record and report. Read by the migration to
/// version 7 only.
pub(crate) fn decode_v6_delivery<'v>(
    key: &dyn std::fmt::Display,
    bytes: &'v [u8],
) -> StoreResult<(StoredDelivery, Option<&'v [u8]>)> {
    let (json, report) = match bytes.iter().position(|b| *b == SEPARATOR) {
        Some(at) => (&bytes[..at], Some(&bytes[at + 1..])),
        None => (bytes, None),
    };
    Ok((decode("deliveries", key, json)?, report))
}

/// Reads and decodes a JSON record from a `&str → bytes` table (read or write side).
pub(crate) fn get_json<T: DeserializeOwned>(
    table: &(impl ReadableTable<&'static str, &'static [u8]> + TableHandle),
    key: &str,
) -> StoreResult<Option<T>> {
    let guard = table
        .get(key)
        .backend_with(|| format!("cannot read `{}` record `{key}`", table.name()))?;
    guard
        .map(|g| decode(table.name(), &key, g.value()))
        .transpose()
}

/// Encodes and writes a JSON record into a `&str → bytes` table.
pub(crate) fn put_json<T: Serialize>(
    table: &mut Table<'_, &'static str, &'static [u8]>,
    key: &str,
    value: &T,
) -> StoreResult<()> {
    let bytes = encode(table.name(), &key, value)?;
    let written = table.insert(key, bytes.as_slice()).map(drop);
    written.backend_with(|| format!("cannot write `{}` record `{key}`", table.name()))?;
    Ok(())
}

/// Decodes the records of a `&str → bytes` table whose keys follow `after`, at most `limit`,
/// in key order: one page of a listing.
pub(crate) fn page_json<T: DeserializeOwned>(
    table: &(impl ReadableTable<&'static str, &'static [u8]> + TableHandle),
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<T>> {
    let what = format!("cannot read table `{}`", table.name());
    let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut out = Vec::new();
    for entry in table
        .range::<&str>((lower, Bound::Unbounded))
        .backend(&what)?
        .take(limit)
    {
        let (k, v) = entry.backend(&what)?;
        out.push(decode(table.name(), &k.value(), v.value())?);
    }
    Ok(out)
}

/// Decodes every record of a `&str → bytes` table in key order.
pub(crate) fn all_json<T: DeserializeOwned>(
    table: &(impl ReadableTable<&'static str, &'static [u8]> + TableHandle),
) -> StoreResult<Vec<T>> {
    let what = format!("cannot read table `{}`", table.name());
    let mut out = Vec::new();
    for entry in table.iter().backend(&what)? {
        let (k, v) = entry.backend(&what)?;
        out.push(decode(table.name(), &k.value(), v.value())?);
    }
    Ok(out)
}
