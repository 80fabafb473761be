//! Record encoding and error mapping shared by every table.

use std::fmt::Display;
use std::ops::Bound;

use mdm_service::ports::{StoreError, StoreResult};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Turns any redb (or I/O) error into [`StoreError::Backend`], keeping redb's own text and
/// saying what the store was doing when it happened.
pub(crate) trait BackendExt<T> {
    fn backend(self, what: &str) -> StoreResult<T>;
    /// Like `backend`, for a message that names the record: it is only formatted on failure,
    /// because these calls sit on every request's path.
    fn backend_with(self, what: impl FnOnce() -> String) -> StoreResult<T>;
}

impl<T, E: Display> BackendExt<T> for Result<T, E> {
    fn backend(self, what: &str) -> StoreResult<T> {
        self.map_err(|e| StoreError::Backend(format!("{what}: {e}")))
    }

    fn backend_with(self, what: impl FnOnce() -> String) -> StoreResult<T> {
        self.map_err(|e| StoreError::Backend(format!("{}: {e}", what())))
    }
}

/// Encodes a record as JSON. Our record types hold only strings, integers, byte vectors and
/// enums, so this cannot fail in practice; should it ever, the write is refused rather than
/// storing something half-encoded.
pub(crate) fn encode<T: Serialize>(
    table: &str,
    key: &dyn Display,
    value: &T,
) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| StoreError::Backend(format!("cannot encode {table} record `{key}`: {e}")))
}

/// Decodes a JSON record; a failure names the table and key so an operator can find it.
pub(crate) fn decode<T: DeserializeOwned>(
    table: &str,
    key: &dyn Display,
    bytes: &[u8],
) -> StoreResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("table `{table}`, key `{key}`: {e}")))
}

/// Reports an index entry that points at a record that is not there.
pub(crate) fn dangling(table: &str, key: &dyn Display, missing: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "table `{table}`, key `{key}` refers to a missing {missing}"
    ))
}

/// Prefixes an error's message with context, keeping its kind.
pub(crate) fn context(err: StoreError, what: &str) -> StoreError {
    match err {
        StoreError::Backend(m) => StoreError::Backend(format!("{what}: {m}")),
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("{what}: {m}")),
        StoreError::Conflict(m) => StoreError::Conflict(format!("{what}: {m}")),
        StoreError::Closed => StoreError::Closed,
    }
}

/// The key range `[start, end)` holding exactly the ids that start with `{id}:`, i.e. a device's
/// user channels: `;` is the byte after `:`, so every such id sorts at or after `{id}:` and
/// before `{id};`, and no other id does.
pub(crate) fn colon_prefix_range(id: &str) -> (String, String) {
    (format!("{id}:"), format!("{id};"))
}

/// The smallest string that sorts after `s`: the exclusive end of a range over tuple keys whose
/// first element is `s`.
pub(crate) fn successor(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    out.push_str(s);
    out.push('\0');
    out
}

/// A range over two-part keys.
pub(crate) type PairBounds<'a> = (Bound<(&'a str, &'a str)>, Bound<(&'a str, &'a str)>);

/// The bounds of one page of `(prefix, id)` keys: those after `(prefix, after)` (from the
/// first, without `after`) and before the next prefix. `end` is [`successor`]`(prefix)`, which
/// the caller owns because the bounds borrow it.
pub(crate) fn prefix_page<'a>(
    prefix: &'a str,
    after: Option<&'a str>,
    end: &'a str,
) -> PairBounds<'a> {
    let start = match after {
        Some(id) => Bound::Excluded((prefix, id)),
        None => Bound::Included((prefix, "")),
    };
    (start, Bound::Excluded((end, "")))
}

/// Displays a two-part key (`(connection, serial)`, `(serial, enrollment id)`, ...) in error
/// messages.
pub(crate) struct PairKey<'a>(pub &'a str, pub &'a str);

impl Display for PairKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} / {}", self.0, self.1)
    }
}
