//! Re-applying disposal ledger entries to a store restored from a backup.
//!
//! The deletions reuse the disposal code of `lifecycle.rs`, so a re-applied entry removes
//! the same rows and data keys as the disposal it repeats. Unlike a disposal it checks no
//! retention or hold: the record was disposed of after the backup was taken, and must stay
//! gone. It waits for rows that another transaction holds instead of skipping them.

use medconnect_domain::audit::Destroyed;
use medconnect_domain::model::Category;
use medconnect_domain::{PatientId, TenantId};
use postgres::Transaction;

use super::lifecycle::{
    shred_id_photo, shred_link, shred_session, shred_unlinked_profile, ProfileShred, Shredder,
};
use super::PgStore;
use crate::ledger::{LedgerEntry, ReapplyOutcome};
use crate::sqlite::values::parse_stored_id;
use crate::{Result, StoreError};

/// Totals of what one re-applied entry destroyed so far.
#[derive(Default)]
struct Reapplied {
    destroyed: Destroyed,
    keys_destroyed: Vec<String>,
    /// Profile keys destroyed although a link kept the profile's row.
    kept_profile_keys: Option<usize>,
}

impl Reapplied {
    fn add(&mut self, part: Shredder) {
        self.add_parts(part.destroyed, part.keys_destroyed);
    }

    fn add_parts(&mut self, part: Destroyed, keys: Vec<String>) {
        self.destroyed.rows += part.rows;
        self.destroyed.files += part.files;
        self.destroyed.bytes += part.bytes;
        self.keys_destroyed.extend(keys);
    }
}

impl PgStore {
    pub(crate) fn reapply_disposal_impl(&mut self, entry: &LedgerEntry) -> Result<ReapplyOutcome> {
        let mut done = self.operator_tx(|tx| reapply(tx, entry))?;
        if let Some(keys) = done.kept_profile_keys {
            tracing::warn!(
                seq = entry.seq,
                patient = %entry.record_id,
                keys,
                "core profile kept for a remaining tenant link; its keys destroyed"
            );
        }
        done.keys_destroyed.sort();
        done.keys_destroyed.dedup();
        if done.destroyed == Destroyed::default() && done.keys_destroyed.is_empty() {
            return Ok(ReapplyOutcome::Absent);
        }
        Ok(ReapplyOutcome::Applied {
            destroyed: done.destroyed,
            keys_destroyed: done.keys_destroyed,
        })
    }
}

fn reapply(tx: &mut Transaction<'_>, entry: &LedgerEntry) -> Result<Reapplied> {
    let mut done = Reapplied::default();
    match entry.category {
        Category::PatientRecords => {
            let tenant = require_tenant(entry)?;
            let patient = parse_stored_id::<PatientId>(&entry.record_id)?;
            let link = tx.query_opt(
                "SELECT id FROM patient_links WHERE tenant_id = $1 AND patient_id = $2
                 FOR UPDATE",
                &[&tenant.to_string(), &patient.to_string()],
            )?;
            if let Some(link) = link {
                done.add(shred_link(tx, link.get(0))?);
                if let ProfileShred::Deleted(profile) = shred_unlinked_profile(tx, patient)? {
                    done.add(profile);
                }
            }
        }
        Category::PatientProfile => {
            let patient = parse_stored_id::<PatientId>(&entry.record_id)?;
            match shred_unlinked_profile(tx, patient)? {
                ProfileShred::Deleted(profile) => done.add(profile),
                ProfileShred::AlreadyGone => {}
                ProfileShred::StillLinked => {
                    // The profile was deleted with its last link, so a link left here is
                    // missing from the ledger. The row must stay for that link's foreign
                    // key, but destroying its keys leaves it unreadable.
                    let keys = destroy_owner_keys(tx, "profile", &entry.record_id)?;
                    done.kept_profile_keys = Some(keys.len());
                    done.add_parts(Destroyed::default(), keys);
                }
            }
        }
        Category::IdPhoto => {
            let tenant = require_tenant(entry)?;
            if lock_record(tx, "id_photos", &entry.record_id, tenant)? {
                done.add(shred_id_photo(tx, &entry.record_id)?);
            }
        }
        Category::Session => {
            let tenant = require_tenant(entry)?;
            if lock_record(tx, "sessions", &entry.record_id, tenant)? {
                done.add(shred_session(tx, &entry.record_id)?);
            }
        }
    }
    // The keys the receipt names, whatever scope they were stored under.
    let listed = destroy_key_ids(tx, &entry.keys_destroyed)?;
    done.add_parts(Destroyed::default(), listed);
    Ok(done)
}

fn require_tenant(entry: &LedgerEntry) -> Result<TenantId> {
    entry.tenant_id.ok_or_else(|| {
        StoreError::Corrupt(format!(
            "disposal ledger entry {} ({}) has no tenant id",
            entry.seq, entry.category
        ))
    })
}

/// Locks the row `id` of `tenant` in `table`, a fixed name, and returns whether it exists.
fn lock_record(tx: &mut Transaction<'_>, table: &str, id: &str, tenant: TenantId) -> Result<bool> {
    let sql = format!("SELECT 1 FROM {table} WHERE id = $1 AND tenant_id = $2 FOR UPDATE");
    Ok(tx.query_opt(&sql, &[&id, &tenant.to_string()])?.is_some())
}

/// Deletes the data keys of one owner and returns their ids.
fn destroy_owner_keys(tx: &mut Transaction<'_>, scope: &str, owner: &str) -> Result<Vec<String>> {
    let rows = tx.query(
        "DELETE FROM data_keys WHERE scope = $1 AND owner = $2 RETURNING id",
        &[&scope, &owner],
    )?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Deletes the data keys with these ids and returns the ids found.
fn destroy_key_ids(tx: &mut Transaction<'_>, ids: &[String]) -> Result<Vec<String>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows =
        tx.query("DELETE FROM data_keys WHERE id = ANY($1) RETURNING id", &[&ids.to_vec()])?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
