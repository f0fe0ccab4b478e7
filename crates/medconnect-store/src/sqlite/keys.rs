//! Data keys and the sealing of fields and blobs.
//!
//! Only this module and `medconnect-crypto` ever hold a plaintext data key. A data key is
//! created on first use, stored wrapped by the master key, and destroyed by deleting its row
//! in the same transaction that deletes the rows sealed under it.

use chrono::{DateTime, Utc};
use medconnect_crypto::{
    blind_index, derive_blind_index_key_from_data_key, open, parse_header,
    parse_wrapped_key_header, Aad, BlindIndexKey, CryptoError, DataKey, KeyId, MasterKey, Sealer,
    Zeroizing, BLIND_INDEX_LABEL,
};
use medconnect_domain::time::format_instant;
use rusqlite::{Connection, OptionalExtension};

use crate::{Result, StoreError};

/// The version of a data key when it is first created. Rotating a tenant key adds versions.
const FIRST_VERSION: u32 = 1;

/// A data key with its version, expanded once and ready to seal many values.
pub(crate) struct SealingKey {
    sealer: Sealer,
}

impl SealingKey {
    fn new(key: &DataKey, version: u32) -> Self {
        SealingKey { sealer: Sealer::new(key, version) }
    }
}

/// Scope of a data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyScope {
    /// Tenant-level data such as provider credentials.
    Tenant,
    /// A patient core profile, shared by the tenants the patient is linked to.
    Profile,
    /// Everything one tenant holds for one patient.
    Link,
    /// The root of the blind index key.
    Index,
}

impl KeyScope {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeyScope::Tenant => "tenant",
            KeyScope::Profile => "profile",
            KeyScope::Link => "link",
            KeyScope::Index => "index",
        }
    }
}

/// The master key, the next master key while a rotation is under way, and the blind index
/// key. Blind indexes always derive from the first master key the store used, recorded as
/// version 1, so that rotation does not change them.
pub(crate) struct Keys {
    master: MasterKey,
    next: Option<MasterKey>,
    blind: Option<BlindIndexKey>,
}

/// Owner of the data key that blind indexes derive from.
const INDEX_KEY_OWNER: &str = "store";

impl Keys {
    /// Loads the keys, creating the stored root of the blind index key on first use. The
    /// blind index key derives from a stored data key, not from the master key, so that it
    /// survives master key rotation.
    pub(crate) fn load(
        conn: &Connection,
        master: MasterKey,
        next: Option<MasterKey>,
        now: DateTime<Utc>,
    ) -> Result<Self> {
        let mut keys = Keys { master, next, blind: None };
        let root = match keys.newest_data_key(conn, KeyScope::Index, INDEX_KEY_OWNER)? {
            Some((root, _)) => root,
            None => {
                keys.create_data_key(conn, KeyScope::Index, INDEX_KEY_OWNER, FIRST_VERSION, now)?
            }
        };
        keys.blind = Some(derive_blind_index_key_from_data_key(&root, BLIND_INDEX_LABEL));
        Ok(keys)
    }

    /// Returns the master key that wraps new data keys: the next one during a rotation.
    fn wrapping_master(&self) -> &MasterKey {
        self.next.as_ref().unwrap_or(&self.master)
    }

    /// Unwraps a data key with whichever master key version wrapped it.
    fn unwrap(&self, wrapped: &[u8], id: KeyId, version: u32) -> Result<DataKey> {
        let header = parse_wrapped_key_header(wrapped)?;
        let master = match &self.next {
            Some(next) if header.master_key_version == next.version() => next,
            _ => &self.master,
        };
        Ok(master.unwrap_key(wrapped, id, version)?)
    }

    /// Returns the blind index of a patient's id in a source system.
    pub(crate) fn source_index(&self, source_system: &str, source_id: &str) -> Result<String> {
        let blind = self.blind.as_ref().ok_or(StoreError::MasterKeyRequired)?;
        Ok(blind_index(blind, &format!("patient-source:{source_system}"), source_id))
    }

    /// Re-wraps one stored data key under the next master key.
    pub(crate) fn rewrap(&self, wrapped: &[u8], id: KeyId, version: u32) -> Result<Vec<u8>> {
        let next = self.next.as_ref().ok_or(StoreError::NoRotation)?;
        let key = self.master.unwrap_key(wrapped, id, version)?;
        Ok(next.wrap_key(&key, version)?)
    }

    pub(crate) fn next_version(&self) -> Option<u32> {
        self.next.as_ref().map(MasterKey::version)
    }

    /// Returns the newest data key of `(scope, owner)`, creating and storing it when absent.
    pub(crate) fn data_key(
        &self,
        tx: &Connection,
        scope: KeyScope,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<SealingKey> {
        if let Some(key) = self.newest_key(tx, scope, owner)? {
            return Ok(key);
        }
        self.create_key(tx, scope, owner, FIRST_VERSION, now)
    }

    /// Creates and stores a data key of `(scope, owner)` with the given version.
    pub(crate) fn create_key(
        &self,
        tx: &Connection,
        scope: KeyScope,
        owner: &str,
        version: u32,
        now: DateTime<Utc>,
    ) -> Result<SealingKey> {
        let key = self.create_data_key(tx, scope, owner, version, now)?;
        Ok(SealingKey::new(&key, version))
    }

    fn create_data_key(
        &self,
        tx: &Connection,
        scope: KeyScope,
        owner: &str,
        version: u32,
        now: DateTime<Utc>,
    ) -> Result<DataKey> {
        let key = DataKey::generate(KeyId::new())?;
        let master = self.wrapping_master();
        let wrapped = master.wrap_key(&key, version)?;
        tx.prepare_cached(
            "INSERT INTO data_keys (id, scope, owner, version, wrapped, master_version, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute((
            key.id().to_string(),
            scope.as_str(),
            owner,
            version,
            wrapped,
            master.version(),
            format_instant(now),
        ))?;
        Ok(key)
    }

    /// Returns the newest data key of `(scope, owner)`, if any.
    pub(crate) fn newest_key(
        &self,
        conn: &Connection,
        scope: KeyScope,
        owner: &str,
    ) -> Result<Option<SealingKey>> {
        let newest = self.newest_data_key(conn, scope, owner)?;
        Ok(newest.map(|(key, version)| SealingKey::new(&key, version)))
    }

    fn newest_data_key(
        &self,
        conn: &Connection,
        scope: KeyScope,
        owner: &str,
    ) -> Result<Option<(DataKey, u32)>> {
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
        let key = self.unwrap(&wrapped, KeyId::parse(&id)?, version)?;
        Ok(Some((key, version)))
    }

    /// Returns the data key a ciphertext names in its header, or `None` when that key was
    /// destroyed.
    fn key_for(&self, conn: &Connection, sealed: &[u8]) -> Result<Option<DataKey>> {
        let header = parse_header(sealed)?;
        let row: Option<(u32, Vec<u8>)> = conn
            .prepare_cached("SELECT version, wrapped FROM data_keys WHERE id = ?1")?
            .query_row([header.key_id.to_string()], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let Some((version, wrapped)) = row else {
            return Ok(None);
        };
        Ok(Some(self.unwrap(&wrapped, header.key_id, version)?))
    }

    /// Opens a sealed value with the key its header names. A ciphertext moved from another
    /// row, column or tenant, or whose key was destroyed, fails here.
    pub(crate) fn open_bytes(
        &self,
        conn: &Connection,
        place: Place<'_>,
        column: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let unreadable = |source: CryptoError| StoreError::Unreadable {
            table: place.table.to_owned(),
            column: column.to_owned(),
            record: place.record.to_owned(),
            source: Box::new(source),
        };
        let key = match self.key_for(conn, sealed) {
            Ok(Some(key)) => key,
            Ok(None) => {
                return Err(StoreError::KeyDestroyed {
                    table: place.table.to_owned(),
                    column: column.to_owned(),
                    record: place.record.to_owned(),
                })
            }
            Err(StoreError::Crypto(source)) => return Err(unreadable(source)),
            Err(other) => return Err(other),
        };
        open(&key, &place.aad(column), sealed).map_err(unreadable)
    }

    /// Opens one sealed text field.
    pub(crate) fn open_text(
        &self,
        conn: &Connection,
        place: Place<'_>,
        column: &str,
        sealed: &[u8],
    ) -> Result<String> {
        let plain = self.open_bytes(conn, place, column, sealed)?;
        String::from_utf8(plain.to_vec()).map_err(|_| {
            StoreError::Corrupt(format!(
                "{}.{} of {} is not UTF-8",
                place.table, column, place.record
            ))
        })
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
    key: &SealingKey,
    place: Place<'_>,
    column: &str,
    value: &str,
) -> Result<Vec<u8>> {
    seal_bytes(key, place, column, value.as_bytes())
}

/// Seals an optional text field; `None` stays NULL.
pub(crate) fn seal_optional(
    key: &SealingKey,
    place: Place<'_>,
    column: &str,
    value: Option<&str>,
) -> Result<Option<Vec<u8>>> {
    value.map(|v| seal_text(key, place, column, v)).transpose()
}

/// Seals a blob.
pub(crate) fn seal_bytes(
    key: &SealingKey,
    place: Place<'_>,
    column: &str,
    value: &[u8],
) -> Result<Vec<u8>> {
    Ok(key.sealer.seal(&place.aad(column), value)?)
}
