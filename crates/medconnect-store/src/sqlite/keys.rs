//! The `data_keys` rows of a SQLite store, for [`crate::keys::Keys`].

use rusqlite::{Connection, OptionalExtension};

use crate::keys::{KeyRows, KeyScope, NewKeyRow, StoredKey};
use crate::Result;

impl KeyRows for &Connection {
    fn newest_key_row(&mut self, scope: KeyScope, owner: &str) -> Result<Option<StoredKey>> {
        Ok(self
            .prepare_cached(
                "SELECT id, version, wrapped FROM data_keys WHERE scope = ?1 AND owner = ?2
                 ORDER BY version DESC LIMIT 1",
            )?
            .query_row((scope.as_str(), owner), |row| {
                Ok(StoredKey { id: row.get(0)?, version: row.get(1)?, wrapped: row.get(2)? })
            })
            .optional()?)
    }

    fn key_row(&mut self, id: &str) -> Result<Option<(u32, Vec<u8>)>> {
        Ok(self
            .prepare_cached("SELECT version, wrapped FROM data_keys WHERE id = ?1")?
            .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?)
    }

    fn insert_key_row(&mut self, row: &NewKeyRow<'_>) -> Result<bool> {
        let inserted = self
            .prepare_cached(
                "INSERT INTO data_keys (id, scope, owner, version, wrapped, master_version,
                 created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (scope, owner, version) DO NOTHING",
            )?
            .execute((
                row.id,
                row.scope.as_str(),
                row.owner,
                row.version,
                row.wrapped,
                row.master_version,
                row.created_at,
            ))?;
        Ok(inserted == 1)
    }

    fn delete_key_rows(&mut self, scope: KeyScope, owner: &str) -> Result<Vec<String>> {
        let mut statement = self
            .prepare_cached("DELETE FROM data_keys WHERE scope = ?1 AND owner = ?2 RETURNING id")?;
        let ids = statement.query_map((scope.as_str(), owner), |row| row.get(0))?;
        Ok(ids.collect::<rusqlite::Result<Vec<String>>>()?)
    }
}
