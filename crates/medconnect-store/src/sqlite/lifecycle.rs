//! Candidate queries and disposals for the lifecycle jobs.

use std::fs;
use std::io;
use std::path::Path;

use chrono::{DateTime, Utc};
use medconnect_domain::audit::{AuditEvent, Destroyed, DisposalReceipt};
use medconnect_domain::model::Category;
use medconnect_domain::policy::Policy;
use medconnect_domain::time::format_instant;
use medconnect_domain::{PatientId, TenantId};
use rusqlite::{Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::audit::AuditAppender;
use super::records::{link_from_row, link_key};
use super::values::{hash_row, parse_optional_instant, parse_stored_id, parse_stored_instant};
use super::SqliteStore;
use super::{meta_value, BLOB_DIR};
use crate::keys::{destroy_keys, KeyScope};
use crate::{
    rule_for, Disposal, DisposalContext, DisposalOutcome, PhiCandidate, PolicyApplied,
    RecordCandidate, Result, RunRecord, SkipReason, StoreError,
};

/// Tables that hang off a patient link, deleted in this order before the link itself.
const LINK_CHILD_TABLES: [&str; 6] = [
    "consultations",
    "prescriptions",
    "medical_history",
    "intake_forms",
    "sessions",
    // A patient's account, after its sessions, which reference it.
    "user_accounts",
];

/// Running totals of what one disposal destroyed.
pub(super) struct Shredder {
    hasher: Sha256,
    pub(super) destroyed: Destroyed,
    pub(super) keys_destroyed: Vec<String>,
}

impl Shredder {
    fn new() -> Self {
        Shredder {
            hasher: Sha256::new(),
            destroyed: Destroyed::default(),
            keys_destroyed: Vec::new(),
        }
    }

    /// Runs a `DELETE … RETURNING *` and folds every returned row into the digest.
    fn delete_rows(
        &mut self,
        tx: &Connection,
        sql: &str,
        key: &dyn rusqlite::ToSql,
    ) -> Result<Vec<Vec<String>>> {
        let mut statement = tx.prepare_cached(sql)?;
        let columns = statement.column_count();
        let mut rows = statement.query([key])?;
        let mut kept = Vec::new();
        while let Some(row) = rows.next()? {
            self.destroyed.rows += 1;
            self.destroyed.bytes += hash_row(&mut self.hasher, row, columns)?;
            // The first column of every table is its id; id_photos also return the file name.
            kept.push(vec![row.get::<_, rusqlite::types::Value>(0).map(value_text)?]);
        }
        Ok(kept)
    }

    /// Folds a blob file's bytes into the digest and queues it for unlinking after commit.
    fn delete_file(&mut self, tx: &Connection, blob_root: &Path, relative: &str) -> Result<()> {
        let path = blob_root.join(relative);
        match fs::File::open(&path) {
            Ok(mut file) => {
                let size =
                    io::copy(&mut file, &mut self.hasher).map_err(|e| StoreError::io(&path, e))?;
                self.destroyed.files += 1;
                self.destroyed.bytes += size;
            }
            // A file already gone has nothing left to destroy; the row still goes.
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(StoreError::io(&path, err)),
        }
        tx.prepare_cached("INSERT OR IGNORE INTO pending_file_deletions (path) VALUES (?1)")?
            .execute([relative])?;
        Ok(())
    }

    fn receipt(
        self,
        category: Category,
        record_id: String,
        retention_until: DateTime<Utc>,
        policy: &Policy,
    ) -> DisposalReceipt {
        DisposalReceipt {
            category,
            record_id,
            rule: rule_for(category),
            retention_until,
            policy_version: policy.version(),
            destroyed: self.destroyed,
            digest: hex::encode(self.hasher.finalize()),
            keys_destroyed: self.keys_destroyed,
        }
    }
}

fn value_text(value: rusqlite::types::Value) -> String {
    match value {
        rusqlite::types::Value::Text(text) => text,
        rusqlite::types::Value::Integer(number) => number.to_string(),
        _ => String::new(),
    }
}

fn active_hold(
    tx: &Connection,
    tenant: TenantId,
    patient: Option<PatientId>,
) -> Result<Option<String>> {
    Ok(tx
        .prepare_cached(
            "SELECT id FROM legal_holds
             WHERE released_at IS NULL AND tenant_id = ?1 AND (patient_id IS NULL OR patient_id = ?2)
             ORDER BY placed_at LIMIT 1",
        )?
        .query_row((tenant.to_string(), patient.map(|p| p.to_string())), |row| row.get(0))
        .optional()?)
}

fn skip_for_hold(
    tx: &Connection,
    tenant: TenantId,
    patient: Option<PatientId>,
) -> Result<Option<DisposalOutcome>> {
    match active_hold(tx, tenant, patient)? {
        Some(hold) => Ok(Some(DisposalOutcome::Skipped(SkipReason::LegalHold {
            hold_id: parse_stored_id(&hold)?,
        }))),
        None => Ok(None),
    }
}

impl SqliteStore {
    pub(crate) fn phi_candidates_impl(
        &self,
        active_before: DateTime<Utc>,
    ) -> Result<Vec<PhiCandidate>> {
        let mut statement = self.conn.prepare(
            "SELECT t.id, t.slug, l.patient_id, l.last_medical_encounter_at, l.phi_retention_until,
                    l.created_at,
                    (SELECT count(*) FROM patient_links o WHERE o.patient_id = l.patient_id) - 1
             FROM patient_links l JOIN tenants t ON t.id = l.tenant_id
             WHERE coalesce(l.last_medical_encounter_at, l.created_at) <= ?1
             ORDER BY coalesce(l.last_medical_encounter_at, l.created_at), l.id",
        )?;
        let mut rows = statement.query([format_instant(active_before)])?;
        let mut candidates = Vec::new();
        while let Some(row) = rows.next()? {
            candidates.push(PhiCandidate { link: link_from_row(row)?, other_links: row.get(6)? });
        }
        Ok(candidates)
    }

    fn record_candidates(&self, sql: &str, before: DateTime<Utc>) -> Result<Vec<RecordCandidate>> {
        let mut statement = self.conn.prepare(sql)?;
        let mut rows = statement.query([format_instant(before)])?;
        let mut candidates = Vec::new();
        while let Some(row) = rows.next()? {
            let patient: Option<String> = row.get(3)?;
            candidates.push(RecordCandidate {
                id: row.get(0)?,
                tenant_id: parse_stored_id(&row.get::<_, String>(1)?)?,
                tenant_slug: row.get(2)?,
                patient_id: patient.as_deref().map(parse_stored_id).transpose()?,
                since: parse_stored_instant(&row.get::<_, String>(4)?)?,
            });
        }
        Ok(candidates)
    }

    pub(crate) fn id_photo_candidates_impl(
        &self,
        uploaded_before: DateTime<Utc>,
    ) -> Result<Vec<RecordCandidate>> {
        self.record_candidates(
            "SELECT p.id, t.id, t.slug, l.patient_id, p.uploaded_at
             FROM id_photos p JOIN tenants t ON t.id = p.tenant_id JOIN patient_links l ON l.id = p.link_id
             WHERE p.uploaded_at <= ?1 ORDER BY p.uploaded_at, p.id",
            uploaded_before,
        )
    }

    // Sessions of platform operators have no tenant, which disposals and receipts need, so the
    // join leaves them out. Store::purge_platform_sessions deletes them.
    pub(crate) fn session_candidates_impl(
        &self,
        ended_before: DateTime<Utc>,
    ) -> Result<Vec<RecordCandidate>> {
        self.record_candidates(
            "SELECT s.id, t.id, t.slug, l.patient_id, s.ends_at
             FROM sessions s JOIN tenants t ON t.id = s.tenant_id LEFT JOIN patient_links l ON l.id = s.link_id
             WHERE s.ends_at <= ?1 ORDER BY s.ends_at, s.id",
            ended_before,
        )
    }

    pub(crate) fn dispose_impl(
        &mut self,
        disposals: &[Disposal],
        context: &DisposalContext<'_>,
    ) -> Result<Vec<DisposalOutcome>> {
        let (now, simulated) = (self.now(), self.simulated());
        let blob_root = self.data_dir.join(BLOB_DIR);
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        let mut outcomes = Vec::with_capacity(disposals.len());
        for disposal in disposals {
            let outcome = match disposal.category {
                Category::PatientRecords => {
                    dispose_patient_records(&tx, &blob_root, disposal, context)?
                }
                Category::IdPhoto => dispose_id_photo(&tx, &blob_root, disposal, context)?,
                Category::Session => dispose_session(&tx, disposal, context)?,
                Category::PatientProfile => {
                    return Err(StoreError::InconsistentBatch(
                        "core profiles are disposed of only together with their last link".into(),
                    ))
                }
            };
            if let DisposalOutcome::Disposed { receipts } = &outcome {
                for receipt in receipts {
                    let mut event = AuditEvent::new(context.actor, "lifecycle.dispose")
                        .tenant(disposal.tenant_id)
                        .subject(&receipt.record_id)
                        .detail(format!("run {}", context.run_id))
                        .receipt(receipt.clone());
                    if receipt.category == Category::PatientProfile {
                        // A core profile belongs to no single tenant.
                        event.tenant_id = None;
                    }
                    audit.append(&tx, event)?;
                }
            }
            outcomes.push(outcome);
        }
        audit.finish(&tx)?;
        tx.commit()?;
        self.finish_file_deletions_impl()?;
        Ok(outcomes)
    }

    pub(crate) fn finish_file_deletions_impl(&mut self) -> Result<u64> {
        let pending: Vec<String> = {
            let mut statement = self.conn.prepare("SELECT path FROM pending_file_deletions")?;
            let rows = statement.query_map([], |row| row.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut removed = 0;
        for relative in pending {
            let path = self.blob_path(&relative);
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(StoreError::io(&path, err)),
            }
            self.conn.execute("DELETE FROM pending_file_deletions WHERE path = ?1", [&relative])?;
        }
        Ok(removed)
    }

    pub(crate) fn applied_policy_version_impl(&self) -> Result<Option<String>> {
        meta_value(&self.conn, "policy_version")
    }

    pub(crate) fn apply_policy_impl(
        &mut self,
        policy: &Policy,
        actor: &str,
        allow_shorter: bool,
    ) -> Result<PolicyApplied> {
        let version = policy.version();
        let applied_before = meta_value(&self.conn, "policy_version")?;
        if applied_before.as_deref() == Some(version.as_str()) {
            return Ok(PolicyApplied::default());
        }
        let tenants: Vec<String> = self.tenants_impl()?.into_iter().map(|t| t.slug).collect();
        if let Some(unknown) = policy.tenants.keys().find(|slug| !tenants.contains(slug)) {
            return Err(StoreError::PolicyUnknownTenant(unknown.clone()));
        }
        let (now, simulated) = (self.now(), self.simulated());
        let tx = self.write_tx()?;
        let mut applied = PolicyApplied::default();
        let mut changes: Vec<(i64, String)> = Vec::new();
        {
            let mut statement = tx.prepare(
                "SELECT l.id, t.slug, coalesce(l.last_medical_encounter_at, l.created_at),
                        l.phi_retention_until
                 FROM patient_links l JOIN tenants t ON t.id = l.tenant_id",
            )?;
            let mut rows = statement.query([])?;
            while let Some(row) = rows.next()? {
                let slug: String = row.get(1)?;
                let basis = parse_stored_instant(&row.get::<_, String>(2)?)?;
                let until = format_instant(policy.phi_retention_until(&slug, basis));
                let stored: String = row.get(3)?;
                if until == stored {
                    continue;
                }
                // The fixed-width stored form orders like time, so comparing strings is exact.
                if until < stored {
                    applied.shortened += 1;
                } else {
                    applied.lengthened += 1;
                }
                changes.push((row.get(0)?, until));
            }
        }
        if applied.shortened > 0 && !allow_shorter {
            return Err(StoreError::PolicyShortens {
                count: applied.shortened,
                version,
                applied: applied_before.unwrap_or_else(|| "(none)".to_owned()),
            });
        }
        for (link, until) in &changes {
            tx.prepare_cached("UPDATE patient_links SET phi_retention_until = ?1 WHERE id = ?2")?
                .execute((until, link))?;
        }
        tx.execute(
            "INSERT INTO store_meta (key, value) VALUES ('policy_version', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [&version],
        )?;
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        let detail = format!(
            "policy {version} applied: retention of {} links lengthened, {} shortened",
            applied.lengthened, applied.shortened
        );
        audit.append(&tx, AuditEvent::new(actor, "policy.apply").detail(detail))?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(applied)
    }

    pub(crate) fn start_run_impl(&mut self, as_of: DateTime<Utc>) -> Result<String> {
        let id = Uuid::new_v4().to_string();
        self.conn.execute(
            "INSERT INTO lifecycle_runs (id, as_of, started_at, status) VALUES (?1, ?2, ?3, 'running')",
            (&id, format_instant(as_of), format_instant(self.now())),
        )?;
        Ok(id)
    }

    pub(crate) fn finish_run_impl(
        &mut self,
        run_id: &str,
        status: &str,
        summary: &str,
    ) -> Result<()> {
        // Copies of purged pages in the write-ahead log go with its truncation.
        self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        self.conn.execute(
            "UPDATE lifecycle_runs SET finished_at = ?1, status = ?2, summary = ?3 WHERE id = ?4",
            (format_instant(self.now()), status, summary, run_id),
        )?;
        Ok(())
    }

    pub(crate) fn runs_impl(&self, limit: u32) -> Result<Vec<RunRecord>> {
        let mut statement = self.conn.prepare(
            "SELECT id, as_of, started_at, finished_at, status, summary FROM lifecycle_runs
             ORDER BY started_at DESC, rowid DESC LIMIT ?1",
        )?;
        let mut rows = statement.query([limit])?;
        let mut runs = Vec::new();
        while let Some(row) = rows.next()? {
            let summary: Option<String> = row.get(5)?;
            runs.push(RunRecord {
                id: row.get(0)?,
                as_of: parse_stored_instant(&row.get::<_, String>(1)?)?,
                started_at: parse_stored_instant(&row.get::<_, String>(2)?)?,
                finished_at: parse_optional_instant(row.get(3)?)?,
                status: row.get(4)?,
                summary: summary.and_then(|s| serde_json::from_str(&s).ok()),
                node: None,
            });
        }
        Ok(runs)
    }
}

fn dispose_session(
    tx: &Connection,
    disposal: &Disposal,
    context: &DisposalContext<'_>,
) -> Result<DisposalOutcome> {
    let found: Option<(String, String, Option<String>)> = tx
        .prepare_cached(
            "SELECT s.ends_at, t.slug, l.patient_id
             FROM sessions s JOIN tenants t ON t.id = s.tenant_id LEFT JOIN patient_links l ON l.id = s.link_id
             WHERE s.id = ?1 AND s.tenant_id = ?2",
        )?
        .query_row((&disposal.record_id, disposal.tenant_id.to_string()), |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let Some((ended, slug, patient)) = found else {
        return Ok(DisposalOutcome::Skipped(SkipReason::AlreadyGone));
    };
    let until = context.policy.session_until(&slug, parse_stored_instant(&ended)?);
    if until > context.as_of {
        return Ok(DisposalOutcome::Skipped(SkipReason::NotExpired { retention_until: until }));
    }
    let patient = patient.as_deref().map(parse_stored_id).transpose()?;
    if let Some(skip) = skip_for_hold(tx, disposal.tenant_id, patient)? {
        return Ok(skip);
    }
    let shredder = shred_session(tx, &disposal.record_id)?;
    let receipt =
        shredder.receipt(Category::Session, disposal.record_id.clone(), until, context.policy);
    Ok(DisposalOutcome::Disposed { receipts: vec![receipt] })
}

/// Deletes one session row.
pub(super) fn shred_session(tx: &Connection, id: &str) -> Result<Shredder> {
    let mut shredder = Shredder::new();
    shredder.delete_rows(tx, "DELETE FROM sessions WHERE id = ?1 RETURNING *", &id)?;
    Ok(shredder)
}

fn dispose_patient_records(
    tx: &Connection,
    blob_root: &Path,
    disposal: &Disposal,
    context: &DisposalContext<'_>,
) -> Result<DisposalOutcome> {
    let patient = parse_stored_id::<PatientId>(&disposal.record_id)?;
    let Some(key) = link_key(tx, disposal.tenant_id, patient)? else {
        return Ok(DisposalOutcome::Skipped(SkipReason::AlreadyGone));
    };
    let until: String = tx
        .prepare_cached("SELECT phi_retention_until FROM patient_links WHERE id = ?1")?
        .query_row([key], |row| row.get(0))?;
    let until = parse_stored_instant(&until)?;
    if until > context.as_of {
        return Ok(DisposalOutcome::Skipped(SkipReason::NotExpired { retention_until: until }));
    }
    if let Some(skip) = skip_for_hold(tx, disposal.tenant_id, Some(patient))? {
        return Ok(skip);
    }

    let shredder = shred_link(tx, blob_root, key)?;
    let mut receipts = vec![shredder.receipt(
        Category::PatientRecords,
        patient.to_string(),
        until,
        context.policy,
    )];

    if let Some(profile) = shred_unlinked_profile(tx, patient)? {
        receipts.push(profile.receipt(
            Category::PatientProfile,
            patient.to_string(),
            until,
            context.policy,
        ));
    }
    Ok(DisposalOutcome::Disposed { receipts })
}

/// Deletes a patient link (by its integer key), everything under it, its ID photo files
/// (queued for unlinking after commit) and the link's data keys.
pub(super) fn shred_link(tx: &Connection, blob_root: &Path, key: i64) -> Result<Shredder> {
    let mut shredder = Shredder::new();
    for table in LINK_CHILD_TABLES {
        shredder.delete_rows(
            tx,
            &format!("DELETE FROM {table} WHERE link_id = ?1 RETURNING *"),
            &key,
        )?;
    }
    let photos = shredder.delete_rows(
        tx,
        "DELETE FROM id_photos WHERE link_id = ?1 RETURNING file_name, *",
        &key,
    )?;
    for photo in photos {
        shredder.delete_file(tx, blob_root, &photo[0])?;
    }
    shredder.delete_rows(tx, "DELETE FROM patient_links WHERE id = ?1 RETURNING *", &key)?;
    // Destroying the link's data key in this transaction leaves any other copy of its
    // ciphertexts (a stray page, an old backup) unreadable.
    shredder.keys_destroyed = destroy_keys(tx, KeyScope::Link, &key.to_string())?;
    Ok(shredder)
}

/// Deletes a patient's core profile and its data keys when no tenant link to it remains.
/// Returns None, deleting nothing, while a link remains.
pub(super) fn shred_unlinked_profile(
    tx: &Connection,
    patient: PatientId,
) -> Result<Option<Shredder>> {
    let remaining: i64 = tx
        .prepare_cached("SELECT count(*) FROM patient_links WHERE patient_id = ?1")?
        .query_row([patient.to_string()], |row| row.get(0))?;
    if remaining > 0 {
        return Ok(None);
    }
    let mut profile = Shredder::new();
    profile.delete_rows(
        tx,
        "DELETE FROM patient_profiles WHERE id = ?1 RETURNING *",
        &patient.to_string(),
    )?;
    profile.keys_destroyed = destroy_keys(tx, KeyScope::Profile, &patient.to_string())?;
    Ok(Some(profile))
}

fn dispose_id_photo(
    tx: &Connection,
    blob_root: &Path,
    disposal: &Disposal,
    context: &DisposalContext<'_>,
) -> Result<DisposalOutcome> {
    let found: Option<(String, String, String)> = tx
        .prepare_cached(
            "SELECT p.uploaded_at, t.slug, l.patient_id
             FROM id_photos p JOIN tenants t ON t.id = p.tenant_id JOIN patient_links l ON l.id = p.link_id
             WHERE p.id = ?1 AND p.tenant_id = ?2",
        )?
        .query_row((&disposal.record_id, disposal.tenant_id.to_string()), |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let Some((uploaded, slug, patient)) = found else {
        return Ok(DisposalOutcome::Skipped(SkipReason::AlreadyGone));
    };
    let until = context.policy.id_photo_until(&slug, parse_stored_instant(&uploaded)?);
    if until > context.as_of {
        return Ok(DisposalOutcome::Skipped(SkipReason::NotExpired { retention_until: until }));
    }
    if let Some(skip) = skip_for_hold(tx, disposal.tenant_id, Some(parse_stored_id(&patient)?))? {
        return Ok(skip);
    }
    let shredder = shred_id_photo(tx, blob_root, &disposal.record_id)?;
    let receipt =
        shredder.receipt(Category::IdPhoto, disposal.record_id.clone(), until, context.policy);
    Ok(DisposalOutcome::Disposed { receipts: vec![receipt] })
}

/// Deletes one ID photo row and queues its file for unlinking after commit.
pub(super) fn shred_id_photo(tx: &Connection, blob_root: &Path, id: &str) -> Result<Shredder> {
    let mut shredder = Shredder::new();
    let photos = shredder.delete_rows(
        tx,
        "DELETE FROM id_photos WHERE id = ?1 RETURNING file_name, *",
        &id,
    )?;
    for photo in photos {
        shredder.delete_file(tx, blob_root, &photo[0])?;
    }
    Ok(shredder)
}
