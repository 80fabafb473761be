//! Stored shapes that differ from the port types, and the JSON helpers for `&str`-keyed tables.
//!
//! Commands are stored without their byte payloads (those sit raw in their own table: JSON would
//! spell each byte as a decimal number). A delivery carries the sequence number that locates
//! its queue, history and finished-index entries, and once final its report follows the JSON
//! raw (see [`encode_delivery`]).

use std::ops::Bound;

use mdm_service::ports::{DeliveryRecord, DeliveryStatus, StoreResult, Timestamp};
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

/// One command's state for one enrollment; a final report follows it in the same value (or,
/// for reports recorded before schema version 6, is in `delivery_results`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredDelivery {
    pub request_type: String,
    pub status: DeliveryStatus,
    /// Allocated at enqueue from the global counter; keys the queue, history and finished
    /// index entries of this delivery.
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

/// Separates a delivery's JSON from the report that follows it. JSON text never contains a NUL
/// byte (serde_json escapes control characters), so the first NUL ends the record.
const REPORT_SEPARATOR: u8 = 0;

/// A delivery's stored value: its JSON, then for a final delivery a NUL byte and the device's
/// report exactly as sent. Keeping the report in the delivery's own value means recording a
/// result rewrites one record instead of two in different tables, which halves the pages a
/// result dirties in the commit it shares with its neighbours.
pub(crate) fn encode_delivery(
    key: &dyn std::fmt::Display,
    delivery: &StoredDelivery,
    report: Option<&[u8]>,
) -> StoreResult<Vec<u8>> {
    let mut bytes = encode("deliveries", key, delivery)?;
    if let Some(report) = report {
        bytes.reserve(1 + report.len());
        bytes.push(REPORT_SEPARATOR);
        bytes.extend_from_slice(report);
    }
    Ok(bytes)
}

/// Splits a stored delivery value into its record and the report kept with it, if any.
pub(crate) fn decode_delivery<'v>(
    key: &dyn std::fmt::Display,
    bytes: &'v [u8],
) -> StoreResult<(StoredDelivery, Option<&'v [u8]>)> {
    let (json, report) = match bytes.iter().position(|b| *b == REPORT_SEPARATOR) {
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
