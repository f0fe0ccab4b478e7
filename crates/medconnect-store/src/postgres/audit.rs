//! Appending to, verifying, signing, exporting and disposing of the hash-chained audit log.
//!
//! Everything here runs on the operator connection. Verification and export read one
//! snapshot, so entries that other nodes append meanwhile never mix into the result. Signing
//! checkpoints and retention cuts take a table lock on `audit_checkpoints`, which serializes
//! them across nodes while appends go on.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use medconnect_crypto::AuditSigner;
use medconnect_domain::audit::{AuditEvent, StoredEntry, VerifyReport};
use medconnect_domain::checkpoint::{
    cut_subject, AuditPublicKey, Checkpoint, ExportHeader, ExportLine, LogVerifier, EXPORT_FORMAT,
    EXPORT_VERSION,
};
use medconnect_domain::policy::Policy;
use postgres::types::ToSql;
use postgres::{Row, Transaction};

use super::{PgAudit, PgStore};
use crate::access::audit_read_event;
use crate::sqlite::values::parse_stored_instant;
use crate::{Access, AuditCut, AuditExported, AuditRecord, CheckpointSigned, Result, StoreError};

/// Columns of `audit_log` in the order [`entry_from_row`] reads them.
const ENTRY_COLUMNS: &str = "seq, at, tenant_id, action, body, prev_hash, hash";

/// Columns of `audit_checkpoints` in the order [`checkpoint_from_row`] reads them.
const CHECKPOINT_COLUMNS: &str = "seq, head_hash, at, entries, public_key, signature";

/// Rows fetched per round trip when a scan of the log reads through a portal.
const BATCH_ROWS: i32 = 1000;

impl PgStore {
    pub(crate) fn append_audit_impl(&mut self, event: AuditEvent) -> Result<i64> {
        let at = self.now();
        let simulated = self.simulated();
        self.operator_tx(|tx| {
            let mut audit = PgAudit::begin(tx, at, simulated)?;
            let seq = audit.append(tx, event.clone())?;
            audit.finish(tx)?;
            Ok(seq)
        })
    }

    pub(crate) fn verify_audit_impl(&self, key: Option<&AuditPublicKey>) -> Result<VerifyReport> {
        self.operator_snapshot(|tx| {
            let recorded_head = tx
                .query_opt("SELECT seq, hash FROM audit_head", &[])?
                .map(|row| -> Result<(i64, String)> { Ok((row.try_get(0)?, row.try_get(1)?)) })
                .transpose()?;
            let mut verifier = LogVerifier::new(read_checkpoints(tx)?, key.copied());
            let query = format!("SELECT {ENTRY_COLUMNS} FROM audit_log ORDER BY seq");
            for_each_row(tx, &query, &[], |row| {
                verifier.push(&entry_from_row(row)?);
                Ok(true)
            })?;
            Ok(verifier.finish(Some(recorded_head), false))
        })
    }

    pub(crate) fn audit_checkpoints_impl(&self) -> Result<Vec<Checkpoint>> {
        self.operator_tx(read_checkpoints)
    }

    pub(crate) fn sign_audit_checkpoint_impl(
        &mut self,
        signer: &dyn AuditSigner,
    ) -> Result<CheckpointSigned> {
        let at = self.now();
        let signed = self.operator_tx(|tx| {
            lock_checkpoints(tx)?;
            let (seq, hash): (i64, String) = tx
                .query_opt("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1", &[])?
                .map(|row| -> Result<_> { Ok((row.try_get(0)?, row.try_get(1)?)) })
                .transpose()?
                .ok_or(StoreError::AuditEmpty)?;
            sign_at(tx, signer, seq, &hash, at)
        })?;
        if signed.created {
            tracing::info!(seq = signed.checkpoint.seq, "audit checkpoint signed");
        }
        Ok(signed)
    }

    pub(crate) fn export_audit_impl(
        &self,
        public_key: Option<&AuditPublicKey>,
        write: &mut dyn FnMut(&ExportLine) -> Result<()>,
    ) -> Result<AuditExported> {
        // Once written, export lines cannot be taken back, so a failed export is not retried.
        self.operator_snapshot_once(|tx| {
            let row = tx.query_one("SELECT count(*), min(seq), max(seq) FROM audit_log", &[])?;
            let entries: i64 = row.try_get(0)?;
            let (first_seq, head_seq): (Option<i64>, Option<i64>) =
                (row.try_get(1)?, row.try_get(2)?);
            let checkpoints = read_checkpoints(tx)?;
            let created: String = tx
                .query_opt("SELECT value FROM store_meta WHERE key = 'created_at'", &[])?
                .ok_or_else(|| StoreError::Corrupt("store_meta has no created_at".into()))?
                .try_get(0)?;
            write(&ExportLine::Header(ExportHeader {
                format: EXPORT_FORMAT.to_owned(),
                version: EXPORT_VERSION,
                store_created_at: created,
                public_key: public_key.map(AuditPublicKey::to_hex),
                entries: entries as u64,
                checkpoints: checkpoints.len() as u64,
            }))?;
            let query = format!("SELECT {ENTRY_COLUMNS} FROM audit_log ORDER BY seq");
            for_each_row(tx, &query, &[], |row| {
                write(&ExportLine::Entry(entry_from_row(row)?))?;
                Ok(true)
            })?;
            let signed_seq = checkpoints.last().map(|c| c.seq);
            let count = checkpoints.len() as u64;
            for checkpoint in checkpoints {
                write(&ExportLine::Checkpoint(checkpoint))?;
            }
            Ok(AuditExported {
                entries: entries as u64,
                checkpoints: count,
                first_seq,
                head_seq,
                signed_seq,
            })
        })
    }

    pub(crate) fn audit_disposal_due_impl(
        &self,
        policy: &Policy,
        as_of: DateTime<Utc>,
    ) -> Result<AuditCut> {
        self.operator_snapshot(|tx| due_prefix(tx, policy, as_of))
    }

    pub(crate) fn dispose_audit_impl(
        &mut self,
        policy: &Policy,
        as_of: DateTime<Utc>,
        signer: &dyn AuditSigner,
        actor: &str,
    ) -> Result<AuditCut> {
        let at = self.now();
        let simulated = self.simulated();
        let cut = self.operator_tx(|tx| {
            // Another node's cut waits here and then finds the entries this one removed gone.
            lock_checkpoints(tx)?;
            let cut = due_prefix(tx, policy, as_of)?;
            let Some(through) = cut.through_seq else {
                return Ok(cut);
            };
            let hash: String = tx
                .query_one("SELECT hash FROM audit_log WHERE seq = $1", &[&through])?
                .try_get(0)?;
            // The checkpoint at the cut is what verification starts from once the entries
            // before it are gone, so it is signed (after checking the chain up to it) in the
            // same transaction that deletes them.
            sign_at(tx, signer, through, &hash, at)?;
            tx.execute("DELETE FROM audit_log WHERE seq <= $1", &[&through])?;
            tx.execute("DELETE FROM audit_checkpoints WHERE seq < $1", &[&through])?;
            let mut audit = PgAudit::begin(tx, at, simulated)?;
            let detail = format!(
                "disposed of {} audit entries up to seq {through}, past audit_log_years; the \
                 signed checkpoint at seq {through} is kept",
                cut.entries
            );
            let event = AuditEvent::new(actor, "audit.dispose")
                .subject("audit_log")
                .subject(cut_subject(through))
                .detail(detail);
            audit.append(tx, event)?;
            audit.finish(tx)?;
            Ok(cut)
        })?;
        if let Some(through) = cut.through_seq {
            tracing::info!(entries = cut.entries, through_seq = through, "audit entries disposed");
        }
        Ok(cut)
    }

    pub(crate) fn audit_entries_impl(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        self.operator_tx(|tx| {
            let rows = tx.query(
                "SELECT seq, hash, body FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after_seq, &i64::from(limit)],
            )?;
            audit_records(&rows)
        })
    }

    pub(crate) fn read_audit_entries_impl(
        &self,
        after_seq: i64,
        limit: u32,
        access: &Access,
    ) -> Result<Vec<AuditRecord>> {
        let (now, simulated) = (self.now(), self.simulated());
        self.operator_tx(|tx| {
            let rows = tx.query(
                "SELECT seq, hash, body FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after_seq, &i64::from(limit)],
            )?;
            let records = audit_records(&rows)?;
            // The head is taken after the read, as every writer does.
            let mut audit = PgAudit::begin(tx, now, simulated)?;
            audit.append(tx, audit_read_event(access, after_seq, limit, records.len()))?;
            audit.finish(tx)?;
            Ok(records)
        })
    }

    pub(crate) fn receipts_for_impl(&self, record_id: &str) -> Result<Vec<AuditRecord>> {
        // Receipts are inside the hashed JSON body, so this scans disposal entries. It serves
        // operators asking about one record, not a hot path. strpos matches the text as it
        // is, so a `%` or `_` in `record_id` is no wildcard.
        let needle = format!("\"record_id\":\"{record_id}\"");
        self.operator_tx(|tx| {
            let rows = tx.query(
                "SELECT seq, hash, body FROM audit_log
                 WHERE action = 'lifecycle.dispose' AND strpos(body, $1) > 0 ORDER BY seq",
                &[&needle],
            )?;
            audit_records(&rows)
        })
    }

    pub(crate) fn audit_tail_start_impl(&self, count: u32) -> Result<i64> {
        let head: i64 = self.operator_tx(|tx| {
            Ok(tx.query_one("SELECT coalesce(max(seq), 0) FROM audit_log", &[])?.try_get(0)?)
        })?;
        Ok((head - i64::from(count)).max(0))
    }
}

/// Serializes checkpoint signing and retention cuts across nodes until the transaction
/// ends. The mode conflicts with itself and with writes, but not with reads, so
/// verification and export go on. Appends never touch this table.
fn lock_checkpoints(tx: &mut Transaction<'_>) -> Result<()> {
    tx.batch_execute("LOCK TABLE audit_checkpoints IN SHARE ROW EXCLUSIVE MODE")?;
    Ok(())
}

/// Calls `visit` on each row of `query` in order, and stops early when it returns false.
/// Rows arrive through a portal, [`BATCH_ROWS`] at a time, so a large log never sits in
/// memory whole and an early stop leaves the rest on the server.
fn for_each_row(
    tx: &mut Transaction<'_>,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
    mut visit: impl FnMut(&Row) -> Result<bool>,
) -> Result<()> {
    let portal = tx.bind(query, params)?;
    loop {
        let rows = tx.query_portal(&portal, BATCH_ROWS)?;
        for row in &rows {
            if !visit(row)? {
                return Ok(());
            }
        }
        if rows.len() < BATCH_ROWS as usize {
            return Ok(());
        }
    }
}

/// Returns the longest run of entries from the start of the log that are all past their
/// retention under `policy` at `as_of`.
fn due_prefix(tx: &mut Transaction<'_>, policy: &Policy, as_of: DateTime<Utc>) -> Result<AuditCut> {
    let mut slugs: HashMap<String, String> = HashMap::new();
    for row in tx.query("SELECT id, slug FROM tenants", &[])? {
        slugs.insert(row.try_get(0)?, row.try_get(1)?);
    }
    let mut cut = AuditCut::default();
    let query = "SELECT seq, at, tenant_id FROM audit_log ORDER BY seq";
    for_each_row(tx, query, &[], |row| {
        let (seq, at, tenant): (i64, String, Option<String>) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let slug = tenant.as_ref().and_then(|id| slugs.get(id)).map(String::as_str);
        if policy.audit_entry_until(slug, parse_stored_instant(&at)?) > as_of {
            return Ok(false);
        }
        cut.entries += 1;
        cut.through_seq = Some(seq);
        Ok(true)
    })?;
    Ok(cut)
}

/// Signs a checkpoint at entry `seq`, or returns the one by the same key already there.
///
/// Before signing, the chain from the latest earlier checkpoint (or from the start) up to
/// `seq` is verified, so a signature never vouches for a log that was altered since the last
/// one was signed. The caller must have taken [`lock_checkpoints`].
fn sign_at(
    tx: &mut Transaction<'_>,
    signer: &dyn AuditSigner,
    seq: i64,
    hash: &str,
    at: DateTime<Utc>,
) -> Result<CheckpointSigned> {
    let key = AuditPublicKey::from_bytes(signer.public_key());
    if let Some(existing) = checkpoint_at(tx, seq)? {
        if existing.head_hash != hash {
            let reason = format!("checkpoint {seq} does not match entry {seq}");
            return Err(StoreError::AuditBroken { seq, reason });
        }
        if existing.public_key == key.to_hex() {
            return Ok(CheckpointSigned { checkpoint: existing, created: false });
        }
        // TODO: key rotation. This replaces a checkpoint by an earlier key, so the log verifies
        // with the current public key from here on. Earlier checkpoints still need the old key.
        tracing::warn!(seq, "replacing an audit checkpoint signed by another key");
    }
    check_chain_up_to(tx, &key, seq)?;
    let entries: i64 =
        tx.query_one("SELECT count(*) FROM audit_log WHERE seq <= $1", &[&seq])?.try_get(0)?;
    let message = Checkpoint::message_for(seq, hash, at, entries);
    let signature = signer.sign(&message).map_err(|err| StoreError::Signing(Box::new(err)))?;
    let checkpoint = Checkpoint::new(seq, hash, at, entries, &key, &signature);
    tx.execute(
        "INSERT INTO audit_checkpoints (seq, head_hash, at, entries, public_key, signature)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (seq) DO UPDATE SET head_hash = excluded.head_hash, at = excluded.at,
           entries = excluded.entries, public_key = excluded.public_key,
           signature = excluded.signature",
        &[
            &checkpoint.seq,
            &checkpoint.head_hash,
            &checkpoint.at,
            &checkpoint.entries,
            &checkpoint.public_key,
            &checkpoint.signature,
        ],
    )?;
    Ok(CheckpointSigned { checkpoint, created: true })
}

/// Verifies the entries after the latest checkpoint before `seq`, up to `seq`. That
/// checkpoint's signature is checked too when `key` signed it.
fn check_chain_up_to(tx: &mut Transaction<'_>, key: &AuditPublicKey, seq: i64) -> Result<()> {
    let previous = checkpoint_before(tx, seq)?;
    let from = previous.as_ref().map_or(0, |c| c.seq);
    let same_key = previous.as_ref().is_some_and(|c| c.public_key == key.to_hex());
    let mut verifier = LogVerifier::new(previous.into_iter().collect(), same_key.then_some(*key))
        .trusting_anchor();
    let query =
        format!("SELECT {ENTRY_COLUMNS} FROM audit_log WHERE seq > $1 AND seq <= $2 ORDER BY seq");
    for_each_row(tx, &query, &[&from, &seq], |row| {
        verifier.push(&entry_from_row(row)?);
        Ok(true)
    })?;
    let report = verifier.finish(None, false);
    if report.ok {
        Ok(())
    } else {
        Err(StoreError::AuditBroken { seq, reason: report.message })
    }
}

/// Reads every checkpoint, in sequence order.
fn read_checkpoints(tx: &mut Transaction<'_>) -> Result<Vec<Checkpoint>> {
    let query = format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq");
    tx.query(&query, &[])?.iter().map(checkpoint_from_row).collect()
}

/// Reads the checkpoint at entry `seq`, if any.
fn checkpoint_at(tx: &mut Transaction<'_>, seq: i64) -> Result<Option<Checkpoint>> {
    let query = format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE seq = $1");
    tx.query_opt(&query, &[&seq])?.as_ref().map(checkpoint_from_row).transpose()
}

/// Reads the latest checkpoint before entry `seq`, if any.
fn checkpoint_before(tx: &mut Transaction<'_>, seq: i64) -> Result<Option<Checkpoint>> {
    let query = format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE seq < $1
         ORDER BY seq DESC LIMIT 1"
    );
    tx.query_opt(&query, &[&seq])?.as_ref().map(checkpoint_from_row).transpose()
}

fn checkpoint_from_row(row: &Row) -> Result<Checkpoint> {
    Ok(Checkpoint {
        seq: row.try_get(0)?,
        head_hash: row.try_get(1)?,
        at: row.try_get(2)?,
        entries: row.try_get(3)?,
        public_key: row.try_get(4)?,
        signature: row.try_get(5)?,
    })
}

fn entry_from_row(row: &Row) -> Result<StoredEntry> {
    Ok(StoredEntry {
        seq: row.try_get(0)?,
        at: row.try_get(1)?,
        tenant_id: row.try_get(2)?,
        action: row.try_get(3)?,
        body: row.try_get(4)?,
        prev_hash: row.try_get(5)?,
        hash: row.try_get(6)?,
    })
}

/// Reads `seq, hash, body` rows into audit records, parsing each body.
fn audit_records(rows: &[Row]) -> Result<Vec<AuditRecord>> {
    let mut records = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: i64 = row.try_get(0)?;
        let body: String = row.try_get(2)?;
        let body = serde_json::from_str(&body)
            .map_err(|_| StoreError::Corrupt(format!("audit entry {seq} has an invalid body")))?;
        records.push(AuditRecord { seq, hash: row.try_get(1)?, body });
    }
    Ok(records)
}
