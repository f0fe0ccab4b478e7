//! Data keys and the sealing of fields and blobs, for every backend.
//!
//! Only this module and `medconnect-crypto` ever hold a plaintext data key. A data key is
//! created on first use, stored wrapped by the master key, and destroyed by deleting its row
//! in the same transaction that deletes the rows sealed under it. Each backend stores the
//! wrapped keys in its `data_keys` table and reaches them through [`KeyRows`].

use chrono::{DateTime, Utc};
use medconnect_crypto::{
    blind_index, derive_blind_index_key_from_data_key, open, parse_header,
    parse_wrapped_key_header, Aad, BlindIndexKey, CryptoError, DataKey, KeyId, MasterKey, Sealer,
    Zeroizing, BLIND_INDEX_LABEL,
};
use medconnect_domain::time::format_instant;

use crate::{Result, StoreError};

/// A row of `data_keys` as read back: the key id, its version and the wrapped key.
pub(crate) struct StoredKey {
    pub id: String,
    pub version: u32,
    pub wrapped: Vec<u8>,
}

/// A row of `data_keys` to insert.
pub(crate) struct NewKeyRow<'a> {
    pub id: &'a str,
    pub scope: KeyScope,
    /// Tenant id, patient id, the integer key of a patient link, or [`INDEX_KEY_OWNER`].
    pub owner: &'a str,
    pub version: u32,
    pub wrapped: &'a [u8],
    pub master_version: u32,
    pub created_at: &'a str,
}

/// The `data_keys` rows of one backend, read and written inside the caller's transaction.
///
/// Implemented for a SQLite connection (`&rusqlite::Connection`) and a PostgreSQL
/// transaction. The methods take `&mut self` because a PostgreSQL transaction needs it.
/// [`Keys`] takes its rows by value and `&mut T` is a `KeyRows` too, so PostgreSQL callers
/// pass `&mut *tx` and keep their transaction.
pub(crate) trait KeyRows {
    /// Returns the newest key of `(scope, owner)`, if any.
    fn newest_key_row(&mut self, scope: KeyScope, owner: &str) -> Result<Option<StoredKey>>;

    /// Returns the version and wrapped bytes of the key with this id, if it exists.
    fn key_row(&mut self, id: &str) -> Result<Option<(u32, Vec<u8>)>>;

    /// Inserts a key. Returns false, inserting nothing, when `(scope, owner, version)` is
    /// taken, which happens when another transaction created the same key first.
    fn insert_key_row(&mut self, row: &NewKeyRow<'_>) -> Result<bool>;

    /// Deletes every key of `(scope, owner)` and returns their ids.
    fn delete_key_rows(&mut self, scope: KeyScope, owner: &str) -> Result<Vec<String>>;

    /// Returns true when other tenants' keys are invisible here, so that a key missing from
    /// [`Self::key_row`] may exist for another tenant rather than be destroyed.
    fn hides_other_tenants(&self) -> bool {
        false
    }
}

impl<T: KeyRows + ?Sized> KeyRows for &mut T {
    fn newest_key_row(&mut self, scope: KeyScope, owner: &str) -> Result<Option<StoredKey>> {
        (**self).newest_key_row(scope, owner)
    }

    fn key_row(&mut self, id: &str) -> Result<Option<(u32, Vec<u8>)>> {
        (**self).key_row(id)
    }

    fn insert_key_row(&mut self, row: &NewKeyRow<'_>) -> Result<bool> {
        (**self).insert_key_row(row)
    }

    fn delete_key_rows(&mut self, scope: KeyScope, owner: &str) -> Result<Vec<String>> {
        (**self).delete_key_rows(scope, owner)
    }

    fn hides_other_tenants(&self) -> bool {
        (**self).hides_other_tenants()
    }
}

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

/// A data key generated and wrapped but not stored yet.
///
/// Some inserts may turn out to be duplicates, such as a core profile that another
/// transaction creates at the same time. Such a row is sealed with an unstored key, and the
/// key is stored only once the row is in, so a duplicate leaves no key behind.
pub(crate) struct UnstoredKey {
    key: DataKey,
    id: String,
    scope: KeyScope,
    owner: String,
    version: u32,
    wrapped: Vec<u8>,
    master_version: u32,
    created_at: String,
}

impl UnstoredKey {
    pub(crate) fn sealing_key(&self) -> SealingKey {
        SealingKey::new(&self.key, self.version)
    }

    /// Stores the key. Fails when its owner already has a key of this version.
    pub(crate) fn store(self, mut rows: impl KeyRows) -> Result<()> {
        if rows.insert_key_row(&self.row())? {
            return Ok(());
        }
        Err(StoreError::Corrupt(format!(
            "{} {} already has a data key of version {}",
            self.scope.as_str(),
            self.owner,
            self.version
        )))
    }

    fn row(&self) -> NewKeyRow<'_> {
        NewKeyRow {
            id: &self.id,
            scope: self.scope,
            owner: &self.owner,
            version: self.version,
            wrapped: &self.wrapped,
            master_version: self.master_version,
            created_at: &self.created_at,
        }
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
pub(crate) const INDEX_KEY_OWNER: &str = "store";

impl Keys {
    /// Loads the keys, creating the stored root of the blind index key on first use.
    pub(crate) fn load(
        rows: impl KeyRows,
        master: MasterKey,
        next: Option<MasterKey>,
        now: DateTime<Utc>,
    ) -> Result<Self> {
        let mut keys = Keys::new(master, next);
        keys.load_blind_index_key(rows, now)?;
        Ok(keys)
    }

    /// Holds the master keys without the blind index key: call
    /// [`Self::load_blind_index_key`] before computing blind indexes.
    pub(crate) fn new(master: MasterKey, next: Option<MasterKey>) -> Self {
        Keys { master, next, blind: None }
    }

    /// Derives the blind index key, creating its stored root on first use. The blind index
    /// key derives from a stored data key, not from the master key, so that it survives
    /// master key rotation.
    pub(crate) fn load_blind_index_key(
        &mut self,
        rows: impl KeyRows,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let (root, _) = self.first_data_key(rows, KeyScope::Index, INDEX_KEY_OWNER, now)?;
        self.blind = Some(derive_blind_index_key_from_data_key(&root, BLIND_INDEX_LABEL));
        Ok(())
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
        rows: impl KeyRows,
        scope: KeyScope,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<SealingKey> {
        let (key, version) = self.first_data_key(rows, scope, owner, now)?;
        Ok(SealingKey::new(&key, version))
    }

    /// Stores a new version of the data key of `(scope, owner)`, one above the newest (or
    /// the first version when there is none), for new writes. Returns the new version.
    pub(crate) fn add_key_version(
        &self,
        mut rows: impl KeyRows,
        scope: KeyScope,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<u32> {
        loop {
            let newest = rows.newest_key_row(scope, owner)?.map(|row| row.version);
            let version = newest.map_or(FIRST_VERSION, |v| v + 1);
            if self.insert_data_key(&mut rows, scope, owner, version, now)?.is_some() {
                return Ok(version);
            }
            // Another transaction stored this version first, so try one above it. A version
            // that is taken but not visible here would make this loop forever.
            let seen = rows.newest_key_row(scope, owner)?.map(|row| row.version);
            if seen < Some(version) {
                return Err(StoreError::Corrupt(format!(
                    "data key version {version} of {} {owner} exists but cannot be read",
                    scope.as_str()
                )));
            }
        }
    }

    /// Returns the newest data key of `(scope, owner)` with its version, creating the first
    /// version when there is none. When another transaction creates it at the same time, both
    /// use the one stored first.
    fn first_data_key(
        &self,
        mut rows: impl KeyRows,
        scope: KeyScope,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<(DataKey, u32)> {
        if let Some(newest) = self.newest_data_key(&mut rows, scope, owner)? {
            return Ok(newest);
        }
        if let Some(key) = self.insert_data_key(&mut rows, scope, owner, FIRST_VERSION, now)? {
            return Ok((key, FIRST_VERSION));
        }
        self.newest_data_key(&mut rows, scope, owner)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the first data key of {} {owner} exists but cannot be read",
                scope.as_str()
            ))
        })
    }

    /// Generates a data key and stores it wrapped. Returns None, storing nothing, when
    /// `(scope, owner, version)` is taken.
    fn insert_data_key(
        &self,
        mut rows: impl KeyRows,
        scope: KeyScope,
        owner: &str,
        version: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<DataKey>> {
        let new = self.wrap_new_key(scope, owner, version, now)?;
        let inserted = rows.insert_key_row(&new.row())?;
        Ok(inserted.then_some(new.key))
    }

    /// Generates the first data key of a new owner without storing it; see [`UnstoredKey`].
    pub(crate) fn unstored_key(
        &self,
        scope: KeyScope,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<UnstoredKey> {
        self.wrap_new_key(scope, owner, FIRST_VERSION, now)
    }

    fn wrap_new_key(
        &self,
        scope: KeyScope,
        owner: &str,
        version: u32,
        now: DateTime<Utc>,
    ) -> Result<UnstoredKey> {
        let key = DataKey::generate(KeyId::new())?;
        let master = self.wrapping_master();
        Ok(UnstoredKey {
            wrapped: master.wrap_key(&key, version)?,
            id: key.id().to_string(),
            key,
            scope,
            owner: owner.to_owned(),
            version,
            master_version: master.version(),
            created_at: format_instant(now),
        })
    }

    fn newest_data_key(
        &self,
        mut rows: impl KeyRows,
        scope: KeyScope,
        owner: &str,
    ) -> Result<Option<(DataKey, u32)>> {
        let Some(row) = rows.newest_key_row(scope, owner)? else {
            return Ok(None);
        };
        let key = self.unwrap(&row.wrapped, KeyId::parse(&row.id)?, row.version)?;
        Ok(Some((key, row.version)))
    }

    /// Returns the data key a ciphertext names in its header, or `None` when that key was
    /// destroyed or, on a backend that hides other tenants' keys, is not visible.
    fn key_for(&self, mut rows: impl KeyRows, sealed: &[u8]) -> Result<Option<DataKey>> {
        let header = parse_header(sealed)?;
        let Some((version, wrapped)) = rows.key_row(&header.key_id.to_string())? else {
            return Ok(None);
        };
        Ok(Some(self.unwrap(&wrapped, header.key_id, version)?))
    }

    /// Opens a sealed value with the key its header names. A ciphertext moved from another
    /// row, column or tenant, or whose key was destroyed, fails here.
    pub(crate) fn open_bytes(
        &self,
        rows: impl KeyRows,
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
        let hides_other_tenants = rows.hides_other_tenants();
        let key = match self.key_for(rows, sealed) {
            Ok(Some(key)) => key,
            Ok(None) if hides_other_tenants => {
                return Err(StoreError::KeyUnavailable {
                    table: place.table.to_owned(),
                    column: column.to_owned(),
                    record: place.record.to_owned(),
                })
            }
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
        rows: impl KeyRows,
        place: Place<'_>,
        column: &str,
        sealed: &[u8],
    ) -> Result<String> {
        let plain = self.open_bytes(rows, place, column, sealed)?;
        String::from_utf8(plain.to_vec()).map_err(|_| {
            StoreError::Corrupt(format!(
                "{}.{} of {} is not UTF-8",
                place.table, column, place.record
            ))
        })
    }
}

/// Deletes every data key of `(scope, owner)` and returns their ids, for the receipt.
pub(crate) fn destroy_keys(
    mut rows: impl KeyRows,
    scope: KeyScope,
    owner: &str,
) -> Result<Vec<String>> {
    rows.delete_key_rows(scope, owner)
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
