//! Conversions between stored TEXT values and domain types.

use chrono::{DateTime, Utc};
use medconnect_domain::time::parse_instant;

use crate::{Result, StoreError};

/// Parses an instant as stored. A value that does not parse means the file was edited or
/// corrupted, so it is reported as such rather than as bad user input.
pub(crate) fn parse_stored_instant(value: &str) -> Result<DateTime<Utc>> {
    parse_instant(value)
        .map_err(|_| StoreError::Corrupt(format!("invalid stored instant {value:?}")))
}

pub(crate) fn parse_optional_instant(value: Option<String>) -> Result<Option<DateTime<Utc>>> {
    value.as_deref().map(parse_stored_instant).transpose()
}

/// Parses a stored id of type `T`.
pub(crate) fn parse_stored_id<T: std::str::FromStr>(value: &str) -> Result<T> {
    value.parse().map_err(|_| StoreError::Corrupt(format!("invalid stored id {value:?}")))
}

/// Feeds one row's values into a hasher in a self-delimiting form and returns their size
/// in bytes, for disposal digests.
pub(crate) fn hash_row(
    hasher: &mut sha2::Sha256,
    row: &rusqlite::Row<'_>,
    columns: usize,
) -> Result<u64> {
    use rusqlite::types::ValueRef;
    use sha2::Digest;

    let mut bytes = 0u64;
    for index in 0..columns {
        let (tag, data): (u8, Vec<u8>) = match row.get_ref(index)? {
            ValueRef::Null => (0, Vec::new()),
            ValueRef::Integer(v) => (1, v.to_le_bytes().to_vec()),
            ValueRef::Real(v) => (2, v.to_le_bytes().to_vec()),
            ValueRef::Text(v) => (3, v.to_vec()),
            ValueRef::Blob(v) => (4, v.to_vec()),
        };
        hasher.update([tag]);
        hasher.update((data.len() as u64).to_le_bytes());
        hasher.update(&data);
        bytes += data.len() as u64;
    }
    Ok(bytes)
}
