//! Disposal candidates, disposals claimed row by row, policy application and runs.
//!
//! Several nodes may dispose of records at once. Each disposal locks its record's row with
//! `FOR UPDATE SKIP LOCKED`, so a row that another node holds comes back at once as
//! [`SkipReason::Claimed`] instead of being waited for, and the run retries it later. A
//! node that dies mid-disposal releases its rows when the server ends its connection.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use medconnect_domain::audit::{AuditEvent, Destroyed, DisposalReceipt};
use medconnect_domain::model::Category;
use medconnect_domain::policy::Policy;
use medconnect_domain::time::format_instant;
use medconnect_domain::{HoldId, PatientId, TenantId};
use postgres::types::{ToSql, Type};
use postgres::{Row, Transaction};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{PgAudit, PgStore};
use crate::sqlite::values::{parse_optional_instant, parse_stored_id, parse_stored_instant};
use crate::{
    rule_for, Disposal, DisposalContext, DisposalOutcome, LinkSummary, PhiCandidate, PolicyApplied,
    RecordCandidate, Result, RunRecord, SkipReason, StoreError,
};

type Params<'a> = [&'a (dyn ToSql + Sync)];

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

    /// Folds one deleted row into the digest.
    fn fold_row(&mut self, row: &Row) -> Result<()> {
        self.destroyed.rows += 1;
        self.destroyed.bytes += hash_row(&mut self.hasher, row)?;
        Ok(())
    }

    /// Runs a statement that returns the deleted rows and folds each into the digest.
    /// Returns how many rows it deleted.
    fn delete_rows(&mut self, tx: &mut Transaction<'_>, sql: &str, params: &Params) -> Result<u64> {
        let rows = tx.query(sql, params)?;
        for row in &rows {
            self.destroyed.rows += 1;
            self.destroyed.bytes += hash_row(&mut self.hasher, row)?;
        }
        Ok(rows.len() as u64)
    }

    /// Deletes every ID photo that `filter` (a condition on `$1`) selects. PostgreSQL keeps a
    /// photo's sealed bytes in its row, so each row counts as one destroyed file too, as the
    /// photo's file does in the embedded store.
    fn delete_photos(
        &mut self,
        tx: &mut Transaction<'_>,
        filter: &str,
        params: &Params,
    ) -> Result<()> {
        let sql = format!(
            "WITH gone AS (DELETE FROM id_photos WHERE {filter} RETURNING *)
             SELECT * FROM gone ORDER BY id COLLATE \"C\""
        );
        self.destroyed.files += self.delete_rows(tx, &sql, params)?;
        Ok(())
    }

    /// Deletes the data keys of one owner, every version, and records their ids.
    fn destroy_keys(&mut self, tx: &mut Transaction<'_>, scope: &str, owner: &str) -> Result<()> {
        let rows = tx.query(
            "DELETE FROM data_keys WHERE scope = $1 AND owner = $2 RETURNING id",
            &[&scope, &owner],
        )?;
        let mut ids: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
        ids.sort();
        self.keys_destroyed.extend(ids);
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

/// Feeds one row's values into a hasher in a self-delimiting form and returns their size in
/// bytes. Values are tagged as in the embedded store: 0 NULL, 1 integer (booleans as 0 or
/// 1, little-endian i64), 3 text, 4 bytes.
fn hash_row(hasher: &mut Sha256, row: &Row) -> Result<u64> {
    let mut bytes = 0u64;
    for (index, column) in row.columns().iter().enumerate() {
        let kind = column.type_();
        let value: Option<(u8, Vec<u8>)> = if *kind == Type::TEXT || *kind == Type::VARCHAR {
            row.try_get::<_, Option<String>>(index)?.map(|v| (3, v.into_bytes()))
        } else if *kind == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(index)?.map(|v| (4, v))
        } else if *kind == Type::INT8 {
            row.try_get::<_, Option<i64>>(index)?.map(|v| (1, v.to_le_bytes().to_vec()))
        } else if *kind == Type::INT4 {
            row.try_get::<_, Option<i32>>(index)?.map(|v| (1, i64::from(v).to_le_bytes().to_vec()))
        } else if *kind == Type::BOOL {
            row.try_get::<_, Option<bool>>(index)?.map(|v| (1, i64::from(v).to_le_bytes().to_vec()))
        } else {
            return Err(StoreError::Corrupt(format!(
                "column {} has type {kind}, which disposal digests do not cover: \
                 store it as TEXT, BYTEA, BIGINT or BOOLEAN",
                column.name()
            )));
        };
        let (tag, data) = value.unwrap_or((0, Vec::new()));
        hasher.update([tag]);
        hasher.update((data.len() as u64).to_le_bytes());
        hasher.update(&data);
        bytes += data.len() as u64;
    }
    Ok(bytes)
}

/// Returns a skip when an active hold covers the tenant's records of `patient`. Holds are
/// read without a row lock: placing a patient hold locks the patient's link row, so a link
/// disposal either holds that row first (and the hold then finds the patient gone) or skips
/// it as claimed and finds the hold when it retries. A whole-tenant hold waits on the
/// tenant's advisory lock that [`PgStore::dispose_impl`] holds shared.
fn skip_for_hold(
    tx: &mut Transaction<'_>,
    tenant: TenantId,
    patient: Option<PatientId>,
) -> Result<Option<DisposalOutcome>> {
    let hold = tx.query_opt(
        "SELECT id FROM legal_holds
         WHERE released_at IS NULL AND tenant_id = $1 AND (patient_id IS NULL OR patient_id = $2)
         ORDER BY placed_at, id LIMIT 1",
        &[&tenant.to_string(), &patient.map(|p| p.to_string())],
    )?;
    match hold {
        Some(row) => Ok(Some(DisposalOutcome::Skipped(SkipReason::LegalHold {
            hold_id: parse_stored_id(&row.get::<_, String>(0))?,
        }))),
        None => Ok(None),
    }
}

/// Distinguishes a row that another transaction has locked from one that is gone, once
/// `FOR UPDATE SKIP LOCKED` returned nothing. `exists_sql` selects one boolean, and as a plain
/// read it waits for no lock.
fn claimed_or_gone(
    tx: &mut Transaction<'_>,
    exists_sql: &str,
    params: &Params,
) -> Result<DisposalOutcome> {
    let exists: bool = tx.query_one(exists_sql, params)?.get(0);
    let reason = if exists { SkipReason::Claimed } else { SkipReason::AlreadyGone };
    Ok(DisposalOutcome::Skipped(reason))
}

fn link_from_row(row: &Row) -> Result<LinkSummary> {
    Ok(LinkSummary {
        tenant_id: parse_stored_id(&row.get::<_, String>(0))?,
        tenant_slug: row.get(1),
        patient_id: parse_stored_id(&row.get::<_, String>(2))?,
        last_medical_encounter_at: parse_optional_instant(row.get(3))?,
        phi_retention_until: parse_stored_instant(&row.get::<_, String>(4))?,
        created_at: parse_stored_instant(&row.get::<_, String>(5))?,
    })
}

fn record_from_row(row: &Row) -> Result<RecordCandidate> {
    let patient: Option<String> = row.get(3);
    Ok(RecordCandidate {
        id: row.get(0),
        tenant_id: parse_stored_id(&row.get::<_, String>(1))?,
        tenant_slug: row.get(2),
        patient_id: patient.as_deref().map(parse_stored_id).transpose()?,
        since: parse_stored_instant(&row.get::<_, String>(4))?,
    })
}

fn receipt_event(
    disposal: &Disposal,
    receipt: &DisposalReceipt,
    context: &DisposalContext<'_>,
) -> AuditEvent {
    let mut event = AuditEvent::new(context.actor, "lifecycle.dispose")
        .tenant(disposal.tenant_id)
        .subject(&receipt.record_id)
        .detail(format!("run {}", context.run_id))
        .receipt(receipt.clone());
    if receipt.category == Category::PatientProfile {
        // A core profile belongs to no single tenant.
        event.tenant_id = None;
    }
    event
}

impl PgStore {
    pub(crate) fn phi_candidates_impl(
        &self,
        active_before: DateTime<Utc>,
    ) -> Result<Vec<PhiCandidate>> {
        let rows = self.operator_tx(|tx| {
            Ok(tx.query(
                "SELECT t.id, t.slug, l.patient_id, l.last_medical_encounter_at,
                        l.phi_retention_until, l.created_at,
                        (SELECT count(*) FROM patient_links o WHERE o.patient_id = l.patient_id) - 1
                 FROM patient_links l JOIN tenants t ON t.id = l.tenant_id
                 WHERE coalesce(l.last_medical_encounter_at, l.created_at) <= $1
                 ORDER BY coalesce(l.last_medical_encounter_at, l.created_at), l.id",
                &[&format_instant(active_before)],
            )?)
        })?;
        rows.iter()
            .map(|row| {
                let others: i64 = row.get(6);
                let other_links = u32::try_from(others).map_err(|_| {
                    StoreError::Corrupt(format!("patient has {others} other tenant links"))
                })?;
                Ok(PhiCandidate { link: link_from_row(row)?, other_links })
            })
            .collect()
    }

    fn record_candidates(&self, sql: &str, before: DateTime<Utc>) -> Result<Vec<RecordCandidate>> {
        let rows = self.operator_tx(|tx| Ok(tx.query(sql, &[&format_instant(before)])?))?;
        rows.iter().map(record_from_row).collect()
    }

    pub(crate) fn id_photo_candidates_impl(
        &self,
        uploaded_before: DateTime<Utc>,
    ) -> Result<Vec<RecordCandidate>> {
        self.record_candidates(
            "SELECT p.id, t.id, t.slug, l.patient_id, p.uploaded_at
             FROM id_photos p JOIN tenants t ON t.id = p.tenant_id
                  JOIN patient_links l ON l.id = p.link_id
             WHERE p.uploaded_at <= $1 ORDER BY p.uploaded_at, p.id",
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
             FROM sessions s JOIN tenants t ON t.id = s.tenant_id
                  LEFT JOIN patient_links l ON l.id = s.link_id
             WHERE s.ends_at <= $1 ORDER BY s.ends_at, s.id",
            ended_before,
        )
    }

    pub(crate) fn dispose_impl(
        &mut self,
        disposals: &[Disposal],
        context: &DisposalContext<'_>,
    ) -> Result<Vec<DisposalOutcome>> {
        let (now, simulated) = (self.now(), self.simulated());
        let mut tenants: Vec<String> = disposals.iter().map(|d| d.tenant_id.to_string()).collect();
        tenants.sort_unstable();
        tenants.dedup();
        self.operator_tx(|tx| {
            // Placing a whole-tenant hold takes this lock exclusively, so it waits for the
            // disposals under way in the tenant, and the hold checks below, each a statement
            // of its own, see any hold committed before the lock was granted.
            tx.execute(
                "SELECT pg_advisory_xact_lock_shared(hashtextextended('medconnect-hold:' || t, 0))
                 FROM unnest($1::text[]) AS t",
                &[&tenants],
            )?;
            let mut outcomes: Vec<Option<DisposalOutcome>> = vec![None; disposals.len()];
            dispose_patient_records(tx, disposals, context, &mut outcomes)?;
            for (disposal, outcome) in disposals.iter().zip(outcomes.iter_mut()) {
                let disposed = match disposal.category {
                    Category::PatientRecords => continue,
                    Category::IdPhoto => dispose_id_photo(tx, disposal, context)?,
                    Category::Session => dispose_session(tx, disposal, context)?,
                    Category::PatientProfile => {
                        return Err(StoreError::InconsistentBatch(
                            "core profiles are disposed of only together with their last link"
                                .into(),
                        ))
                    }
                };
                *outcome = Some(disposed);
            }
            let outcomes: Vec<DisposalOutcome> = outcomes
                .into_iter()
                .map(|outcome| {
                    outcome.ok_or_else(|| {
                        StoreError::Corrupt("a disposal of the batch got no outcome".into())
                    })
                })
                .collect::<Result<_>>()?;
            let mut events = Vec::new();
            for (disposal, outcome) in disposals.iter().zip(&outcomes) {
                if let DisposalOutcome::Disposed { receipts } = outcome {
                    events.extend(receipts.iter().map(|r| receipt_event(disposal, r, context)));
                }
            }
            // The head comes last, after every row above is locked, so that no node waits
            // for rows while it holds the head that all the others wait for.
            if !events.is_empty() {
                let mut audit = PgAudit::begin(tx, now, simulated)?;
                audit.append_all(tx, events)?;
                audit.finish(tx)?;
            }
            Ok(outcomes)
        })
    }

    pub(crate) fn finish_file_deletions_impl(&mut self) -> Result<u64> {
        // ID photos live in their rows, so a committed disposal leaves no file behind.
        Ok(0)
    }

    pub(crate) fn applied_policy_version_impl(&self) -> Result<Option<String>> {
        self.operator_tx(|tx| {
            let row =
                tx.query_opt("SELECT value FROM store_meta WHERE key = 'policy_version'", &[])?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    pub(crate) fn apply_policy_impl(
        &mut self,
        policy: &Policy,
        actor: &str,
        allow_shorter: bool,
    ) -> Result<PolicyApplied> {
        let version = policy.version();
        let (now, simulated) = (self.now(), self.simulated());
        self.operator_tx(|tx| {
            let applied_before = lock_applied_policy(tx)?;
            if applied_before == version {
                return Ok(PolicyApplied::default());
            }
            let slugs: Vec<String> =
                tx.query("SELECT slug FROM tenants", &[])?.iter().map(|row| row.get(0)).collect();
            if let Some(unknown) = policy.tenants.keys().find(|slug| !slugs.contains(slug)) {
                return Err(StoreError::PolicyUnknownTenant(unknown.clone()));
            }

            let (applied, ids, instants) = retention_changes(tx, policy)?;
            if applied.shortened > 0 && !allow_shorter {
                return Err(StoreError::PolicyShortens {
                    count: applied.shortened,
                    version: version.clone(),
                    applied: if applied_before.is_empty() {
                        "(none)".to_owned()
                    } else {
                        applied_before.clone()
                    },
                });
            }
            if !ids.is_empty() {
                tx.execute(
                    "UPDATE patient_links l SET phi_retention_until = c.until
                     FROM unnest($1::bigint[], $2::text[]) AS c (id, until)
                     WHERE l.id = c.id",
                    &[&ids, &instants],
                )?;
            }
            tx.execute(
                "UPDATE store_meta SET value = $1 WHERE key = 'policy_version'",
                &[&version],
            )?;

            let mut audit = PgAudit::begin(tx, now, simulated)?;
            let detail = format!(
                "policy {version} applied: retention of {} links lengthened, {} shortened",
                applied.lengthened, applied.shortened
            );
            audit.append(tx, AuditEvent::new(actor, "policy.apply").detail(detail))?;
            audit.finish(tx)?;
            Ok(applied)
        })
    }

    pub(crate) fn start_run_impl(&mut self, as_of: DateTime<Utc>) -> Result<String> {
        let id = Uuid::new_v4().to_string();
        let started = format_instant(self.now());
        let node = self.config().node.clone();
        self.operator_tx(|tx| {
            tx.execute(
                "INSERT INTO lifecycle_runs (id, as_of, started_at, status, node)
                 VALUES ($1, $2, $3, 'running', $4)",
                &[&id, &format_instant(as_of), &started, &node],
            )?;
            Ok(())
        })?;
        Ok(id)
    }

    pub(crate) fn finish_run_impl(
        &mut self,
        run_id: &str,
        status: &str,
        summary: &str,
    ) -> Result<()> {
        let finished = format_instant(self.now());
        let node = self.config().node.clone();
        self.operator_tx(|tx| {
            tx.execute(
                "UPDATE lifecycle_runs SET finished_at = $1, status = $2, summary = $3, node = $4
                 WHERE id = $5",
                &[&finished, &status, &summary, &node, &run_id],
            )?;
            Ok(())
        })
    }

    pub(crate) fn runs_impl(&self, limit: u32) -> Result<Vec<RunRecord>> {
        // NOTE: instants have whole seconds, and run ids are random, so runs that started in
        // the same second are listed the unfinished one first, then by finishing time.
        let rows = self.operator_tx(|tx| {
            Ok(tx.query(
                "SELECT id, as_of, started_at, finished_at, status, summary, node FROM lifecycle_runs
                 ORDER BY started_at DESC, finished_at DESC NULLS FIRST, id DESC LIMIT $1",
                &[&i64::from(limit)],
            )?)
        })?;
        rows.iter()
            .map(|row| {
                let summary: Option<String> = row.get(5);
                Ok(RunRecord {
                    id: row.get(0),
                    as_of: parse_stored_instant(&row.get::<_, String>(1))?,
                    started_at: parse_stored_instant(&row.get::<_, String>(2))?,
                    finished_at: parse_optional_instant(row.get(3))?,
                    status: row.get(4),
                    summary: summary.and_then(|s| serde_json::from_str(&s).ok()),
                    node: Some(row.get(6)),
                })
            })
            .collect()
    }
}

/// Locks the row of the applied policy version and returns the version, empty when none was
/// applied yet. Nodes that start runs at once all apply the policy: the lock makes them take
/// turns, and each after the first finds the version already applied.
fn lock_applied_policy(tx: &mut Transaction<'_>) -> Result<String> {
    // A row inserted here is never committed empty: either the version is written into it
    // or the transaction fails and rolls back.
    tx.execute(
        "INSERT INTO store_meta (key, value) VALUES ('policy_version', '')
         ON CONFLICT (key) DO NOTHING",
        &[],
    )?;
    let row =
        tx.query_one("SELECT value FROM store_meta WHERE key = 'policy_version' FOR UPDATE", &[])?;
    Ok(row.get(0))
}

/// Computes every link's retention instant under `policy` and returns the counts of changes
/// with the ids and new instants of the links that change.
fn retention_changes(
    tx: &mut Transaction<'_>,
    policy: &Policy,
) -> Result<(PolicyApplied, Vec<i64>, Vec<String>)> {
    let rows = tx.query(
        "SELECT l.id, t.slug, coalesce(l.last_medical_encounter_at, l.created_at),
                l.phi_retention_until
         FROM patient_links l JOIN tenants t ON t.id = l.tenant_id",
        &[],
    )?;
    let mut applied = PolicyApplied::default();
    let (mut ids, mut instants) = (Vec::new(), Vec::new());
    for row in &rows {
        let slug: String = row.get(1);
        let basis = parse_stored_instant(&row.get::<_, String>(2))?;
        let until = format_instant(policy.phi_retention_until(&slug, basis));
        let stored: String = row.get(3);
        if until == stored {
            continue;
        }
        // The fixed-width stored form orders like time, so comparing strings is exact.
        if until < stored {
            applied.shortened += 1;
        } else {
            applied.lengthened += 1;
        }
        ids.push(row.get::<_, i64>(0));
        instants.push(until);
    }
    Ok((applied, ids, instants))
}

/// A link claimed for disposal, due and not held.
struct DueLink {
    index: usize,
    link: i64,
    patient: PatientId,
    until: DateTime<Utc>,
}

/// Disposes of every patient-records disposal of the batch with a fixed number of
/// statements, whatever the batch size: the links are claimed with one `FOR UPDATE SKIP
/// LOCKED`, checked in memory against their stored retention and the active holds, and
/// deleted table by table with `= ANY`. Each link's deleted rows still go into its own digest,
/// table by table in id order, as a disposal of that link alone would. Fills the outcome of
/// each patient-records disposal in `outcomes`.
fn dispose_patient_records(
    tx: &mut Transaction<'_>,
    disposals: &[Disposal],
    context: &DisposalContext<'_>,
    outcomes: &mut [Option<DisposalOutcome>],
) -> Result<()> {
    let mut indexes = Vec::new();
    let (mut tenants, mut patients) = (Vec::new(), Vec::new());
    for (index, disposal) in disposals.iter().enumerate() {
        if disposal.category == Category::PatientRecords {
            let patient = parse_stored_id::<PatientId>(&disposal.record_id)?;
            indexes.push(index);
            tenants.push(disposal.tenant_id.to_string());
            patients.push(patient.to_string());
        }
    }
    if indexes.is_empty() {
        return Ok(());
    }
    let claimed_rows = tx.query(
        "SELECT l.id, l.tenant_id, l.patient_id, l.phi_retention_until
         FROM patient_links l
         JOIN unnest($1::text[], $2::text[]) AS d (tenant_id, patient_id)
           ON l.tenant_id = d.tenant_id AND l.patient_id = d.patient_id
         ORDER BY l.id
         FOR UPDATE OF l SKIP LOCKED",
        &[&tenants, &patients],
    )?;
    let mut claimed: HashMap<(String, String), (i64, String)> = HashMap::new();
    for row in &claimed_rows {
        claimed.insert((row.get(1), row.get(2)), (row.get(0), row.get(3)));
    }
    if claimed.len() < indexes.len() {
        // A plain read waits for no lock: what it finds is held by another transaction.
        let present = tx.query(
            "SELECT l.tenant_id, l.patient_id FROM patient_links l
             JOIN unnest($1::text[], $2::text[]) AS d (tenant_id, patient_id)
               ON l.tenant_id = d.tenant_id AND l.patient_id = d.patient_id",
            &[&tenants, &patients],
        )?;
        let present: HashSet<(String, String)> =
            present.iter().map(|row| (row.get(0), row.get(1))).collect();
        for (position, &index) in indexes.iter().enumerate() {
            let key = (tenants[position].clone(), patients[position].clone());
            if !claimed.contains_key(&key) {
                let reason = if present.contains(&key) {
                    SkipReason::Claimed
                } else {
                    SkipReason::AlreadyGone
                };
                outcomes[index] = Some(DisposalOutcome::Skipped(reason));
            }
        }
    }

    let mut held_tenants = tenants.clone();
    held_tenants.sort_unstable();
    held_tenants.dedup();
    let holds = active_holds(tx, &held_tenants)?;
    let mut due = Vec::new();
    for (position, &index) in indexes.iter().enumerate() {
        let key = (tenants[position].clone(), patients[position].clone());
        let Some((link, until)) = claimed.get(&key) else { continue };
        let until = parse_stored_instant(until)?;
        let patient: PatientId = parse_stored_id(&key.1)?;
        let tenant = disposals[index].tenant_id;
        if until > context.as_of {
            outcomes[index] =
                Some(DisposalOutcome::Skipped(SkipReason::NotExpired { retention_until: until }));
        } else if let Some(hold_id) = holding(&holds, tenant, Some(patient)) {
            outcomes[index] = Some(DisposalOutcome::Skipped(SkipReason::LegalHold { hold_id }));
        } else {
            due.push(DueLink { index, link: *link, patient, until });
        }
    }
    if due.is_empty() {
        return Ok(());
    }

    let links: Vec<i64> = due.iter().map(|d| d.link).collect();
    let mut shredders: HashMap<i64, Shredder> =
        links.iter().map(|&link| (link, Shredder::new())).collect();
    for table in LINK_CHILD_TABLES {
        delete_by_link(tx, table, &links, &mut shredders)?;
    }
    let photos = delete_by_link(tx, "id_photos", &links, &mut shredders)?;
    for (link, files) in photos {
        if let Some(shredder) = shredders.get_mut(&link) {
            shredder.destroyed.files += files;
        }
    }
    let gone = tx.query("DELETE FROM patient_links WHERE id = ANY($1) RETURNING *", &[&links])?;
    for row in &gone {
        let link: i64 = row.try_get("id")?;
        if let Some(shredder) = shredders.get_mut(&link) {
            shredder.fold_row(row)?;
        }
    }
    // Destroying the links' data keys in this transaction leaves any other copy of their
    // ciphertexts (a replica, an old backup) unreadable.
    let owners: Vec<String> = links.iter().map(ToString::to_string).collect();
    for (owner, ids) in destroy_keys_of(tx, "link", &owners)? {
        if let Some(shredder) = owner.parse().ok().and_then(|link: i64| shredders.get_mut(&link)) {
            shredder.keys_destroyed.extend(ids);
        }
    }

    let mut profiles = shred_unlinked_profiles(tx, &due)?;
    for (position, item) in due.iter().enumerate() {
        let shredder = shredders.remove(&item.link).ok_or_else(|| {
            StoreError::Corrupt(format!("patient link {} has no digest", item.link))
        })?;
        let patient_id = item.patient.to_string();
        let mut receipts = vec![shredder.receipt(
            Category::PatientRecords,
            patient_id.clone(),
            item.until,
            context.policy,
        )];
        // When two links of one profile go in the same batch, the receipt of the profile
        // goes with the last of them, which is the one that left the profile unlinked.
        let later_link_of_same = due[position + 1..].iter().any(|d| d.patient == item.patient);
        if !later_link_of_same {
            if let Some(profile) = profiles.remove(&item.patient) {
                receipts.push(profile.receipt(
                    Category::PatientProfile,
                    patient_id,
                    item.until,
                    context.policy,
                ));
            }
        }
        outcomes[item.index] = Some(DisposalOutcome::Disposed { receipts });
    }
    Ok(())
}

/// An active legal hold, as the disposal checks need it.
struct ActiveHold {
    id: HoldId,
    tenant: TenantId,
    patient: Option<PatientId>,
}

/// Lists the active holds of `tenants`, oldest first.
fn active_holds(tx: &mut Transaction<'_>, tenants: &[String]) -> Result<Vec<ActiveHold>> {
    let rows = tx.query(
        "SELECT id, tenant_id, patient_id FROM legal_holds
         WHERE released_at IS NULL AND tenant_id = ANY($1)
         ORDER BY placed_at, id",
        &[&tenants],
    )?;
    rows.iter()
        .map(|row| {
            let patient: Option<String> = row.get(2);
            Ok(ActiveHold {
                id: parse_stored_id(&row.get::<_, String>(0))?,
                tenant: parse_stored_id(&row.get::<_, String>(1))?,
                patient: patient.as_deref().map(parse_stored_id).transpose()?,
            })
        })
        .collect()
}

/// Returns the oldest active hold that covers the tenant's records of `patient`.
fn holding(holds: &[ActiveHold], tenant: TenantId, patient: Option<PatientId>) -> Option<HoldId> {
    holds
        .iter()
        .find(|hold| hold.tenant == tenant && (hold.patient.is_none() || hold.patient == patient))
        .map(|hold| hold.id)
}

/// Deletes the rows of `table` under `links` and folds each into its link's digest, in id
/// order within the table. Returns how many rows each link lost.
fn delete_by_link(
    tx: &mut Transaction<'_>,
    table: &str,
    links: &[i64],
    shredders: &mut HashMap<i64, Shredder>,
) -> Result<HashMap<i64, u64>> {
    let rows =
        tx.query(&format!("DELETE FROM {table} WHERE link_id = ANY($1) RETURNING *"), &[&links])?;
    let mut keyed = Vec::with_capacity(rows.len());
    for row in &rows {
        let link: i64 = row.try_get("link_id")?;
        let id: String = row.try_get("id")?;
        keyed.push((link, id, row));
    }
    // Byte order of the ids, as ORDER BY id COLLATE "C" gives.
    keyed.sort_by(|a, b| (a.0, a.1.as_bytes()).cmp(&(b.0, b.1.as_bytes())));
    let mut counts: HashMap<i64, u64> = HashMap::new();
    for (link, _, row) in keyed {
        if let Some(shredder) = shredders.get_mut(&link) {
            shredder.fold_row(row)?;
        }
        *counts.entry(link).or_default() += 1;
    }
    Ok(counts)
}

/// Deletes every data key of the `owners` in `scope` and returns their ids by owner, sorted.
fn destroy_keys_of(
    tx: &mut Transaction<'_>,
    scope: &str,
    owners: &[String],
) -> Result<HashMap<String, Vec<String>>> {
    let rows = tx.query(
        "DELETE FROM data_keys WHERE scope = $1 AND owner = ANY($2) RETURNING owner, id",
        &[&scope, &owners],
    )?;
    let mut keys: HashMap<String, Vec<String>> = HashMap::new();
    for row in &rows {
        keys.entry(row.get(0)).or_default().push(row.get(1));
    }
    for ids in keys.values_mut() {
        ids.sort();
    }
    Ok(keys)
}

/// Deletes the core profiles of the disposed links that no link references any more, with
/// their data keys. The profile rows are locked in id order first, so two nodes that each
/// delete one link of a profile take turns, and the second counts the links only once the
/// first has committed: exactly one of them finds no link left.
fn shred_unlinked_profiles(
    tx: &mut Transaction<'_>,
    due: &[DueLink],
) -> Result<HashMap<PatientId, Shredder>> {
    let mut ids: Vec<String> = due.iter().map(|d| d.patient.to_string()).collect();
    ids.sort_unstable();
    ids.dedup();
    let locked = tx.query(
        "SELECT id FROM patient_profiles WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        &[&ids],
    )?;
    let linked = tx.query(
        "SELECT DISTINCT patient_id FROM patient_links WHERE patient_id = ANY($1)",
        &[&ids],
    )?;
    let linked: HashSet<String> = linked.iter().map(|row| row.get(0)).collect();
    let unlinked: Vec<String> = locked
        .iter()
        .map(|row| row.get::<_, String>(0))
        .filter(|id| !linked.contains(id))
        .collect();
    if unlinked.is_empty() {
        return Ok(HashMap::new());
    }
    let mut shredders: HashMap<String, Shredder> = HashMap::new();
    let gone =
        tx.query("DELETE FROM patient_profiles WHERE id = ANY($1) RETURNING *", &[&unlinked])?;
    for row in &gone {
        let id: String = row.try_get("id")?;
        let mut shredder = Shredder::new();
        shredder.fold_row(row)?;
        shredders.insert(id, shredder);
    }
    let mut keys = destroy_keys_of(tx, "profile", &unlinked)?;
    shredders
        .into_iter()
        .map(|(id, mut shredder)| {
            shredder.keys_destroyed.extend(keys.remove(&id).unwrap_or_default());
            Ok((parse_stored_id(&id)?, shredder))
        })
        .collect()
}

/// Deletes a patient link (by its integer key), everything under it and the link's data
/// keys. The caller holds the link's row.
pub(super) fn shred_link(tx: &mut Transaction<'_>, key: i64) -> Result<Shredder> {
    let mut shredder = Shredder::new();
    for table in LINK_CHILD_TABLES {
        // Rows go into the digest in id order, so the digest depends on their values only.
        let sql = format!(
            "WITH gone AS (DELETE FROM {table} WHERE link_id = $1 RETURNING *)
             SELECT * FROM gone ORDER BY id COLLATE \"C\""
        );
        shredder.delete_rows(tx, &sql, &[&key])?;
    }
    shredder.delete_photos(tx, "link_id = $1", &[&key])?;
    shredder.delete_rows(tx, "DELETE FROM patient_links WHERE id = $1 RETURNING *", &[&key])?;
    // Destroying the link's data key in this transaction leaves any other copy of its
    // ciphertexts (a replica, an old backup) unreadable.
    shredder.destroy_keys(tx, "link", &key.to_string())?;
    Ok(shredder)
}

/// Fate of a core profile after one of its links was deleted.
pub(super) enum ProfileShred {
    /// No link was left, so the profile and its data keys were deleted.
    Deleted(Shredder),
    /// Another tenant's link still references the profile, so it stays.
    StillLinked,
    /// The profile was deleted before.
    AlreadyGone,
}

/// Deletes a patient's core profile and its data keys when no tenant link to it remains.
pub(super) fn shred_unlinked_profile(
    tx: &mut Transaction<'_>,
    patient: PatientId,
) -> Result<ProfileShred> {
    let id = patient.to_string();
    // Two transactions that each delete one link of this profile take turns on its row, and
    // the second counts the links only once the first has committed. So exactly one of them
    // counts no link left and deletes the profile.
    let locked = tx.query_opt("SELECT 1 FROM patient_profiles WHERE id = $1 FOR UPDATE", &[&id])?;
    if locked.is_none() {
        return Ok(ProfileShred::AlreadyGone);
    }
    let remaining: i64 =
        tx.query_one("SELECT count(*) FROM patient_links WHERE patient_id = $1", &[&id])?.get(0);
    if remaining > 0 {
        return Ok(ProfileShred::StillLinked);
    }
    let mut profile = Shredder::new();
    profile.delete_rows(tx, "DELETE FROM patient_profiles WHERE id = $1 RETURNING *", &[&id])?;
    profile.destroy_keys(tx, "profile", &id)?;
    Ok(ProfileShred::Deleted(profile))
}

fn dispose_id_photo(
    tx: &mut Transaction<'_>,
    disposal: &Disposal,
    context: &DisposalContext<'_>,
) -> Result<DisposalOutcome> {
    let tenant_id = disposal.tenant_id.to_string();
    let claimed = tx.query_opt(
        "SELECT p.uploaded_at, t.slug, l.patient_id
         FROM id_photos p JOIN tenants t ON t.id = p.tenant_id
              JOIN patient_links l ON l.id = p.link_id
         WHERE p.id = $1 AND p.tenant_id = $2
         FOR UPDATE OF p SKIP LOCKED",
        &[&disposal.record_id, &tenant_id],
    )?;
    let Some(photo) = claimed else {
        return claimed_or_gone(
            tx,
            "SELECT EXISTS (SELECT 1 FROM id_photos WHERE id = $1 AND tenant_id = $2)",
            &[&disposal.record_id, &tenant_id],
        );
    };
    let uploaded = parse_stored_instant(&photo.get::<_, String>(0))?;
    let until = context.policy.id_photo_until(photo.get(1), uploaded);
    if until > context.as_of {
        return Ok(DisposalOutcome::Skipped(SkipReason::NotExpired { retention_until: until }));
    }
    let patient = parse_stored_id(&photo.get::<_, String>(2))?;
    if let Some(skip) = skip_for_hold(tx, disposal.tenant_id, Some(patient))? {
        return Ok(skip);
    }
    let shredder = shred_id_photo(tx, &disposal.record_id)?;
    let receipt =
        shredder.receipt(Category::IdPhoto, disposal.record_id.clone(), until, context.policy);
    Ok(DisposalOutcome::Disposed { receipts: vec![receipt] })
}

/// Deletes one ID photo row, which contains the photo's sealed bytes.
pub(super) fn shred_id_photo(tx: &mut Transaction<'_>, id: &str) -> Result<Shredder> {
    let mut shredder = Shredder::new();
    shredder.delete_photos(tx, "id = $1", &[&id])?;
    Ok(shredder)
}

fn dispose_session(
    tx: &mut Transaction<'_>,
    disposal: &Disposal,
    context: &DisposalContext<'_>,
) -> Result<DisposalOutcome> {
    let tenant_id = disposal.tenant_id.to_string();
    let claimed = tx.query_opt(
        "SELECT s.ends_at, t.slug, l.patient_id
         FROM sessions s JOIN tenants t ON t.id = s.tenant_id
              LEFT JOIN patient_links l ON l.id = s.link_id
         WHERE s.id = $1 AND s.tenant_id = $2
         FOR UPDATE OF s SKIP LOCKED",
        &[&disposal.record_id, &tenant_id],
    )?;
    let Some(session) = claimed else {
        return claimed_or_gone(
            tx,
            "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1 AND tenant_id = $2)",
            &[&disposal.record_id, &tenant_id],
        );
    };
    let ended = parse_stored_instant(&session.get::<_, String>(0))?;
    let until = context.policy.session_until(session.get(1), ended);
    if until > context.as_of {
        return Ok(DisposalOutcome::Skipped(SkipReason::NotExpired { retention_until: until }));
    }
    let patient: Option<String> = session.get(2);
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
pub(super) fn shred_session(tx: &mut Transaction<'_>, id: &str) -> Result<Shredder> {
    let mut shredder = Shredder::new();
    shredder.delete_rows(tx, "DELETE FROM sessions WHERE id = $1 RETURNING *", &[&id])?;
    Ok(shredder)
}
