//! Data keys and the sealing of fields and blobs.
//!
//! Only this module and `medconnect-crypto` ever hold a plaintext data key. A data key is
//! created on first use, stored wrapped by the master key, and destroyed by deleting its row
//! in the same transaction that deletes the rows sealed under it.

use chrono::{DateTime, Utc};
use medconnect_crypto::{
    blind_index, derive_blind_index_key, open, seal, Aad, BlindIndexKey, DataKey, KeyId, MasterKey,
    BLIND_INDEX_LABEL,
};
use medconnect_domain::time::format_instant;
use rusqlite::{Connection, OptionalExtension};

use crate::{Result, StoreError};

/// The version of every data key. Key rotation will add versions.
const DATA_KEY_VERSION: u32 = 1;

/// Scope of a data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyScope {
    /// Tenant-level data such as provider credentials.
    Tenant,
    /// A patient core profile, shared by the tenants the patient is linked to.
    Profile,
    /// Everything one tenant holds for one patient.
    Link,
}

impl KeyScope {
    fn as_str(self) -> &'static str {
        match self {
            KeyScope::Tenant => "tenant",
            KeyScope::Profile => "profile",
            KeyScope::Link => "link",
        }
    }
}

/// The master key and the blind index key derived from it.
pub(crate) struct Keys {
    master: MasterKey,
    blind: BlindIndexKey,
}

impl Keys {
    pub(crate) fn new(master: MasterKey) -> Self {
        let blind = derive_blind_index_key(&master, BLIND_INDEX_LABEL);
        Keys { master, blind }
    }

    /// Returns the blind index of a patient's id in a source system.
    pub(crate) fn source_index(&self, source_system: &str, source_id: &str) -> String {
        blind_index(&self.blind, &format!("patient-source:{source_system}"), source_id)
    }

    /// Returns the data key of `(scope, owner)`, creating and storing it when absent.
    pub(crate) fn data_key(
        &self,
        tx: &Connection,
        scope: KeyScope,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<DataKey> {
        if let Some(key) = self.existing_key(tx, scope, owner)? {
            return Ok(key);
        }
        let key = DataKey::generate(KeyId::new())?;
        let wrapped = self.master.wrap_key(&key, DATA_KEY_VERSION)?;
        tx.prepare_cached(
            "INSERT INTO data_keys (id, scope, owner, version, wrapped, master_version, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute((
            key.id().to_string(),
            scope.as_str(),
            owner,
            DATA_KEY_VERSION,
            wrapped,
            self.master.version(),
            format_instant(now),
        ))?;
        Ok(key)
    }

    /// Returns the data key of `(scope, owner)`, or [`StoreError::KeyDestroyed`].
    pub(crate) fn existing_key(
        &self,
        conn: &Connection,
        scope: KeyScope,
        owner: &str,
    ) -> Result<Option<DataKey>> {
        let row: Option<(String, u32, Vec<u8>)> = conn
            .prepare_cached(
                "SELECT id, version, wrapped FROM data_keys WHERE scope = ?1 AND owner = ?2
                 ORDER BY version DESC LIMIT 1",
            )?
            .query_row((scope.as_str(), owner), |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .optional()?;
        let Some((id, version, wrapped)) = row else {
            return Ok(None);
        };
        let id = KeyId::parse(&id)?;
        Ok(Some(self.master.unwrap_key(&wrapped, id, version)?))
    }
}

/// Deletes every data key of `(scope, owner)` and returns their ids, for the receipt.
pub(crate) fn destroy_keys(tx: &Connection, scope: KeyScope, owner: &str) -> Result<Vec<String>> {
    let mut statement =
        tx.prepare_cached("DELETE FROM data_keys WHERE scope = ?1 AND owner = ?2 RETURNING id")?;
    let ids = statement.query_map((scope.as_str(), owner), |row| row.get(0))?;
    Ok(ids.collect::<rusqlite::Result<Vec<String>>>()?)
}

/// Names the row a ciphertext belongs to; it becomes the associated data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place<'a> {
    pub tenant: &'a str,
    pub table: &'a str,
    pub record: &'a str,
}

impl Place<'_> {
    fn aad<'a>(&'a self, column: &'a str) -> Aad<'a> {
        Aad { tenant: self.tenant, table: self.table, column, record: self.record }
    }
}

/// Seals one text field.
pub(crate) fn seal_text(
    key: &DataKey,
    place: Place<'_>,
    column: &str,
    value: &str,
) -> Result<Vec<u8>> {
    Ok(seal(key, DATA_KEY_VERSION, &place.aad(column), value.as_bytes())?)
}

/// Seals an optional text field; `None` stays NULL.
pub(crate) fn seal_optional(
    key: &DataKey,
    place: Place<'_>,
    column: &str,
    value: Option<&str>,
) -> Result<Option<Vec<u8>>> {
    value.map(|v| seal_text(key, place, column, v)).transpose()
}

/// Seals a blob.
pub(crate) fn seal_bytes(
    key: &DataKey,
    place: Place<'_>,
    column: &str,
    value: &[u8],
) -> Result<Vec<u8>> {
    Ok(seal(key, DATA_KEY_VERSION, &place.aad(column), value)?)
}

/// Opens one text field. A ciphertext moved from another row, column or tenant fails here.
pub(crate) fn open_text(
    key: &DataKey,
    place: Place<'_>,
    column: &str,
    sealed: &[u8],
) -> Result<String> {
    let plain = open(key, &place.aad(column), sealed).map_err(|source| StoreError::Unreadable {
        table: place.table.to_owned(),
        column: column.to_owned(),
        record: place.record.to_owned(),
        source: Box::new(source),
    })?;
    String::from_utf8(plain.to_vec()).map_err(|_| {
        StoreError::Corrupt(format!("{}.{} of {} is not UTF-8", place.table, column, place.record))
    })
}
