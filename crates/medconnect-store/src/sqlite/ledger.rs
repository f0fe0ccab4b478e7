//! Re-applying disposal ledger entries to a store restored from a backup.
//!
//! The deletions reuse the disposal code of `lifecycle.rs`, so a re-applied entry removes
//! the same rows, files and data keys as the disposal it repeats. Unlike a disposal it checks
//! no retention or hold: the record was disposed of after the backup was taken, and must stay
//! gone.

use medconnect_domain::audit::Destroyed;
use medconnect_domain::model::Category;
use medconnect_domain::{PatientId, TenantId};
use rusqlite::{Connection, OptionalExtension};

use super::lifecycle::{shred_id_photo, shred_link, shred_session, shred_unlinked_profile};
use super::records::link_key;
use super::values::parse_stored_id;
use super::{SqliteStore, BLOB_DIR};
use crate::keys::{destroy_keys, KeyScope};
use crate::ledger::{LedgerEntry, ReapplyOutcome};
use crate::{Result, StoreError};

impl SqliteStore {
    pub(crate) fn reapply_disposal_impl(&mut self, entry: &LedgerEntry) -> Result<ReapplyOutcome> {
        let blob_root = self.data_dir.join(BLOB_DIR);
        let tx = self.write_tx()?;
        let mut destroyed = Destroyed::default();
        let mut keys_destroyed = Vec::new();
        let mut add = |part: Destroyed, keys: Vec<String>| {
            destroyed.rows += part.rows;
            destroyed.files += part.files;
            destroyed.bytes += part.bytes;
            keys_destroyed.extend(keys);
        };

        match entry.category {
            Category::PatientRecords => {
                let tenant = require_tenant(entry)?;
                let patient = parse_stored_id::<PatientId>(&entry.record_id)?;
                if let Some(key) = link_key(&tx, tenant, patient)? {
                    let link = shred_link(&tx, &blob_root, key)?;
                    add(link.destroyed, link.keys_destroyed);
                    if let Some(profile) = shred_unlinked_profile(&tx, patient)? {
                        add(profile.destroyed, profile.keys_destroyed);
                    }
                }
            }
            Category::PatientProfile => {
                let patient = parse_stored_id::<PatientId>(&entry.record_id)?;
                match shred_unlinked_profile(&tx, patient)? {
                    Some(profile) => add(profile.destroyed, profile.keys_destroyed),
                    None => {
                        // The profile was deleted with its last link, so a link left here
                        // is missing from the ledger. The row must stay for that link's
                        // foreign key, but destroying its keys leaves it unreadable.
                        let keys = destroy_keys(&*tx, KeyScope::Profile, &entry.record_id)?;
                        tracing::warn!(
                            seq = entry.seq,
                            patient = %entry.record_id,
                            keys = keys.len(),
                            "core profile kept for a remaining tenant link; its keys destroyed"
                        );
                        add(Destroyed::default(), keys);
                    }
                }
            }
            Category::IdPhoto => {
                let tenant = require_tenant(entry)?;
                if record_exists(&tx, "id_photos", &entry.record_id, tenant)? {
                    let photo = shred_id_photo(&tx, &blob_root, &entry.record_id)?;
                    add(photo.destroyed, photo.keys_destroyed);
                }
            }
            Category::Session => {
                let tenant = require_tenant(entry)?;
                if record_exists(&tx, "sessions", &entry.record_id, tenant)? {
                    let session = shred_session(&tx, &entry.record_id)?;
                    add(session.destroyed, session.keys_destroyed);
                }
            }
        }
        // The keys the receipt names, whatever scope they were stored under.
        let listed = destroy_key_ids(&tx, &entry.keys_destroyed)?;
        add(Destroyed::default(), listed);

        keys_destroyed.sort();
        keys_destroyed.dedup();
        let absent = destroyed == Destroyed::default() && keys_destroyed.is_empty();
        tx.commit()?;
        self.finish_file_deletions_impl()?;
        if absent {
            return Ok(ReapplyOutcome::Absent);
        }
        Ok(ReapplyOutcome::Applied { destroyed, keys_destroyed })
    }
}

fn require_tenant(entry: &LedgerEntry) -> Result<TenantId> {
    entry.tenant_id.ok_or_else(|| {
        StoreError::Corrupt(format!(
            "disposal ledger entry {} ({}) has no tenant id",
            entry.seq, entry.category
        ))
    })
}

/// Returns whether `table` contains the row `id` of `tenant`. `table` is a fixed name.
fn record_exists(tx: &Connection, table: &str, id: &str, tenant: TenantId) -> Result<bool> {
    let sql = format!("SELECT 1 FROM {table} WHERE id = ?1 AND tenant_id = ?2");
    let found: Option<i64> = tx
        .prepare_cached(&sql)?
        .query_row((id, tenant.to_string()), |row| row.get(0))
        .optional()?;
    Ok(found.is_some())
}

/// Deletes the data keys with these ids, every version of each, and returns the ids found.
fn destroy_key_ids(tx: &Connection, ids: &[String]) -> Result<Vec<String>> {
    let mut statement = tx.prepare_cached("DELETE FROM data_keys WHERE id = ?1 RETURNING id")?;
    let mut destroyed = Vec::new();
    for id in ids {
        let rows = statement.query_map([id], |row| row.get::<_, String>(0))?;
        for row in rows {
            destroyed.push(row?);
        }
    }
    Ok(destroyed)
}
