//! Reading Apple's plists key by key.
//!
//! Messages are read from a [`plist::Dictionary`] with these helpers rather than through
//! `#[derive(Deserialize)]` so that every failure names the Apple key it concerns
//! ([`ProtoError::MissingField`] / [`ProtoError::InvalidField`]) and so that keys this crate
//! does not know are ignored by construction.

use std::io::Cursor;

use plist::{Dictionary, Value};

use crate::ProtoError;

const BINARY_PLIST_MAGIC: &[u8] = b"bplist00";

/// Parses an XML or binary property list whose top level must be a dictionary.
///
/// The `plist` crate would also fall back to the old ASCII (OpenStep) format; devices never
/// send it, and accepting it would let arbitrary text parse as a string, so it is refused.
pub(crate) fn parse_dict(body: &[u8]) -> Result<Dictionary, ProtoError> {
    let value = if body.starts_with(BINARY_PLIST_MAGIC) {
        Value::from_reader(Cursor::new(body))
    } else {
        Value::from_reader_xml(body)
    }
    .map_err(ProtoError::NotAPlist)?;
    match value {
        Value::Dictionary(dict) => Ok(dict),
        other => Err(ProtoError::NotADictionary {
            found: kind_of(&other),
        }),
    }
}

/// Deserializes an XML or binary property list into `T`, with the same choice of format as
/// [`parse_dict`]. For a `T` that names a few keys, the values of all other keys are read
/// past without being built.
pub(crate) fn parse_keys<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, plist::Error> {
    if body.starts_with(BINARY_PLIST_MAGIC) {
        plist::from_bytes(body)
    } else {
        plist::from_reader_xml(body)
    }
}

/// Writes a value as an XML property list.
pub(crate) fn to_xml(value: &Value) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::new();
    value.to_writer_xml(&mut out).map_err(ProtoError::Encode)?;
    Ok(out)
}

/// A human word for the type of a plist value, used in error messages.
pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Array(_) => "array",
        Value::Dictionary(_) => "dictionary",
        Value::Boolean(_) => "boolean",
        Value::Data(_) => "data",
        Value::Date(_) => "date",
        Value::Real(_) => "real",
        Value::Integer(_) => "integer",
        Value::String(_) => "string",
        Value::Uid(_) => "UID",
        // `plist::Value` is non-exhaustive.
        _ => "unknown value",
    }
}

fn wrong_type(field: &'static str, expected: &str, found: &Value) -> ProtoError {
    ProtoError::InvalidField {
        field,
        reason: format!("expected {expected}, found {}", kind_of(found)),
    }
}

/// Typed, key-naming accessors over one dictionary.
pub(crate) struct Fields<'a> {
    dict: &'a Dictionary,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(dict: &'a Dictionary) -> Self {
        Self { dict }
    }

    pub(crate) fn opt_string(&self, key: &'static str) -> Result<Option<String>, ProtoError> {
        self.opt_string_as(key, key)
    }

    /// Like [`Fields::opt_string`], reporting errors under `field` (for nested keys).
    pub(crate) fn opt_string_as(
        &self,
        key: &str,
        field: &'static str,
    ) -> Result<Option<String>, ProtoError> {
        match self.dict.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(wrong_type(field, "a string", other)),
        }
    }

    pub(crate) fn string(&self, key: &'static str) -> Result<String, ProtoError> {
        self.opt_string(key)?.ok_or(ProtoError::MissingField(key))
    }

    /// A required string that must also be non-empty (identifiers, names of things).
    pub(crate) fn non_empty_string(&self, key: &'static str) -> Result<String, ProtoError> {
        let value = self.string(key)?;
        if value.is_empty() {
            return Err(ProtoError::InvalidField {
                field: key,
                reason: "is empty".to_owned(),
            });
        }
        Ok(value)
    }

    pub(crate) fn opt_bool(&self, key: &'static str) -> Result<Option<bool>, ProtoError> {
        match self.dict.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(other) => Err(wrong_type(key, "a boolean", other)),
        }
    }

    /// A boolean Apple documents with a default of `false`.
    pub(crate) fn bool_or_false(&self, key: &'static str) -> Result<bool, ProtoError> {
        Ok(self.opt_bool(key)?.unwrap_or(false))
    }

    pub(crate) fn opt_data(&self, key: &'static str) -> Result<Option<Vec<u8>>, ProtoError> {
        match self.dict.get(key) {
            None => Ok(None),
            Some(Value::Data(d)) => Ok(Some(d.clone())),
            Some(other) => Err(wrong_type(key, "data", other)),
        }
    }

    /// An integer, reporting errors under `field` (for nested keys).
    pub(crate) fn opt_integer_as(
        &self,
        key: &str,
        field: &'static str,
    ) -> Result<Option<i64>, ProtoError> {
        match self.dict.get(key) {
            None => Ok(None),
            Some(Value::Integer(i)) => {
                i.as_signed()
                    .map(Some)
                    .ok_or_else(|| ProtoError::InvalidField {
                        field,
                        reason: format!("the integer {i} does not fit in 64 signed bits"),
                    })
            }
            Some(other) => Err(wrong_type(field, "an integer", other)),
        }
    }

    pub(crate) fn opt_dict(&self, key: &'static str) -> Result<Option<&'a Dictionary>, ProtoError> {
        match self.dict.get(key) {
            None => Ok(None),
            Some(Value::Dictionary(d)) => Ok(Some(d)),
            Some(other) => Err(wrong_type(key, "a dictionary", other)),
        }
    }

    pub(crate) fn opt_array(&self, key: &'static str) -> Result<Option<&'a [Value]>, ProtoError> {
        match self.dict.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(other) => Err(wrong_type(key, "an array", other)),
        }
    }
}

/// Serde helper for `Vec<u8>` fields that are `<data>` in a plist.
///
/// `Vec<u8>` on its own would be written as an array of integers and would refuse `<data>`
/// when read; use `#[serde(with = "mdm_proto::plist_data")]` on such fields.
pub mod plist_data {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the bytes as a plist `<data>` element.
    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    /// Reads a plist `<data>` element.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        plist::Data::deserialize(deserializer).map(Vec::from)
    }
}
