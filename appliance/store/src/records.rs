//! Stored shapes that differ from the port types, and the JSON helpers for `&str`-keyed tables.
//!
//! Commands and deliveries are stored without their byte payloads (those sit raw in their own
//! tables: JSON would spell each byte as a decimal number), and a delivery carries the
//! sequence number that locates its queue, history and finished-index entries.

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

/// One command's state for one enrollment; a final report is in `delivery_results`.
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

/// Reads and decodes a JSON record from a `&str → bytes` table (read or write side).
pub(crate) fn get_json<T: DeserializeOwned>(
    table: &(impl ReadableTable<&'static str, &'static [u8]> + TableHandle),
    key: &str,
) -> StoreResult<Option<T>> {
    let guard = table
        .get(key)
        .backend(&format!("cannot read `{}` record `{key}`", table.name()))?;
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
    let what = format!("cannot write `{}` record `{key}`", table.name());
    table.insert(key, bytes.as_slice()).backend(&what)?;
    Ok(())
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
