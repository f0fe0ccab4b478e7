//! The `data_keys` rows of a PostgreSQL store, for [`crate::keys::Keys`].
//!
//! Unlike SQLite, each row names the tenant that owns it (tenant and link keys), so that
//! row-level security shows an application transaction only its own tenant's keys.

use postgres::Transaction;

use crate::keys::{KeyRows, KeyScope, NewKeyRow, StoredKey};
use crate::{Result, StoreError};

impl KeyRows for Transaction<'_> {
    fn newest_key_row(&mut self, scope: KeyScope, owner: &str) -> Result<Option<StoredKey>> {
        let row = self.query_opt(
            "SELECT id, version, wrapped FROM data_keys WHERE scope = $1 AND owner = $2
             ORDER BY version DESC LIMIT 1",
            &[&scope.as_str(), &owner],
        )?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(StoredKey {
            id: row.get(0),
            version: key_version(row.get(1))?,
            wrapped: row.get(2),
        }))
    }

    fn key_row(&mut self, id: &str) -> Result<Option<(u32, Vec<u8>)>> {
        let row = self.query_opt("SELECT version, wrapped FROM data_keys WHERE id = $1", &[&id])?;
        row.map(|row| Ok((key_version(row.get(0))?, row.get(1)))).transpose()
    }

    fn insert_key_row(&mut self, row: &NewKeyRow<'_>) -> Result<bool> {
        let (tenant, link) = match row.scope {
            KeyScope::Tenant => (Some(row.owner), None),
            KeyScope::Link => (None, Some(link_id(row.owner)?)),
            KeyScope::Profile | KeyScope::Index => (None, None),
        };
        // A link key takes the tenant of its link. A missing link leaves tenant_id NULL,
        // which the table's CHECK constraint rejects.
        //
        // The conflict clause names no target because, with a target, PostgreSQL also checks
        // the new row against the SELECT policy, which hides a profile key until a link to
        // its profile exists. The only other unique column is the new random id.
        let inserted = self.execute(
            "INSERT INTO data_keys (id, scope, owner, tenant_id, version, wrapped,
             master_version, created_at)
             SELECT $1, $2, $3, coalesce($4, (SELECT tenant_id FROM patient_links WHERE id = $5)),
                    $6, $7, $8, $9
             ON CONFLICT DO NOTHING",
            &[
                &row.id,
                &row.scope.as_str(),
                &row.owner,
                &tenant,
                &link,
                &i64::from(row.version),
                &row.wrapped,
                &i64::from(row.master_version),
                &row.created_at,
            ],
        )?;
        Ok(inserted == 1)
    }

    fn delete_key_rows(&mut self, scope: KeyScope, owner: &str) -> Result<Vec<String>> {
        let rows = self.query(
            "DELETE FROM data_keys WHERE scope = $1 AND owner = $2 RETURNING id",
            &[&scope.as_str(), &owner],
        )?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Row-level security shows an application transaction only its own tenant's keys.
    fn hides_other_tenants(&self) -> bool {
        true
    }
}

fn link_id(owner: &str) -> Result<i64> {
    owner
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("link data key owner {owner:?} is not a link id")))
}

fn key_version(stored: i64) -> Result<u32> {
    u32::try_from(stored)
        .map_err(|_| StoreError::Corrupt(format!("invalid stored data key version {stored}")))
}
