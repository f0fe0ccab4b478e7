//! Appending to, verifying, signing, exporting and disposing of the hash-chained audit log.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use medconnect_crypto::AuditSigner;
use medconnect_domain::audit::{chain_hash, AuditEvent, StoredEntry, VerifyReport, GENESIS_HASH};
use medconnect_domain::checkpoint::{
    AuditPublicKey, Checkpoint, ExportHeader, ExportLine, LogVerifier, EXPORT_FORMAT,
    EXPORT_VERSION,
};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::format_instant;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::values::parse_stored_instant;
use super::{meta_value, SqliteStore};
use crate::access::audit_read_event;
use crate::{Access, AuditCut, AuditExported, AuditRecord, CheckpointSigned, Result, StoreError};

/// Columns of `audit_log` in the order [`entry_from_row`] reads them.
const ENTRY_COLUMNS: &str = "seq, at, tenant_id, action, body, prev_hash, hash";

/// Columns of `audit_checkpoints` in the order [`checkpoint_from_row`] reads them.
const CHECKPOINT_COLUMNS: &str = "seq, head_hash, at, entries, public_key, signature";

/// Appends entries inside one open transaction. It reads the chain head once, keeps it in
/// memory while entries are added, and writes the recorded head back in [`Self::finish`],
/// which must run before the transaction commits.
pub(crate) struct AuditAppender {
    seq: i64,
    hash: String,
    at: DateTime<Utc>,
    simulated: bool,
}

impl AuditAppender {
    pub(crate) fn begin(tx: &Connection, at: DateTime<Utc>, simulated: bool) -> Result<Self> {
        let head: Option<(i64, String)> = tx
            .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
            .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        // Retention may have removed every entry inside this transaction; the chain then goes
        // on from the recorded head, which the kept checkpoint covers.
        let head = match head {
            Some(head) => Some(head),
            None => meta_value(tx, "audit_head")?.as_deref().map(parse_head).transpose()?,
        };
        let (seq, hash) = head.unwrap_or((0, GENESIS_HASH.to_owned()));
        Ok(AuditAppender { seq, hash, at, simulated })
    }

    pub(crate) fn append(&mut self, tx: &Connection, event: AuditEvent) -> Result<i64> {
        let seq = self.seq + 1;
        let tenant = event.tenant_id.map(|id| id.to_string());
        let body = event.into_body(seq, self.at, self.simulated, &self.hash);
        let canonical = body.to_canonical_json();
        let hash = chain_hash(&self.hash, &canonical);
        let mut insert = tx.prepare_cached(
            "INSERT INTO audit_log (seq, at, action, tenant_id, body, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        insert.execute((
            seq,
            format_instant(self.at),
            &body.action,
            tenant,
            &canonical,
            &self.hash,
            &hash,
        ))?;
        self.seq = seq;
        self.hash = hash;
        Ok(seq)
    }

    /// Records the chain head in `store_meta`, which `audit verify` compares with the last
    /// entry to detect entries cut from the end. Someone who can write the database can
    /// rewrite this head too; signed checkpoints and exports held by auditors anchor it.
    pub(crate) fn finish(self, tx: &Connection) -> Result<()> {
        tx.prepare_cached(
            "INSERT INTO store_meta (key, value) VALUES ('audit_head', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )?
        .execute([format!("{}:{}", self.seq, self.hash)])?;
        Ok(())
    }
}

impl SqliteStore {
    pub(crate) fn append_audit_impl(&mut self, event: AuditEvent) -> Result<i64> {
        let at = self.now();
        let simulated = self.simulated();
        let tx = self.write_tx()?;
        let mut appender = AuditAppender::begin(&tx, at, simulated)?;
        let seq = appender.append(&tx, event)?;
        appender.finish(&tx)?;
        tx.commit()?;
        Ok(seq)
    }

    pub(crate) fn verify_audit_impl(&self, key: Option<&AuditPublicKey>) -> Result<VerifyReport> {
        // One read transaction, so a writer that commits meanwhile cannot mix two states.
        let tx = self.conn.unchecked_transaction()?;
        let recorded_head = match meta_value(&tx, "audit_head")? {
            Some(value) => Some(parse_head(&value)?),
            None => None,
        };
        let mut verifier = LogVerifier::new(read_checkpoints(&tx)?, key.copied());
        let mut statement =
            tx.prepare(&format!("SELECT {ENTRY_COLUMNS} FROM audit_log ORDER BY seq"))?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            verifier.push(&entry_from_row(row)?);
        }
        Ok(verifier.finish(Some(recorded_head), false))
    }

    pub(crate) fn audit_checkpoints_impl(&self) -> Result<Vec<Checkpoint>> {
        read_checkpoints(&self.conn)
    }

    pub(crate) fn sign_audit_checkpoint_impl(
        &mut self,
        signer: &dyn AuditSigner,
    ) -> Result<CheckpointSigned> {
        let at = self.now();
        let tx = self.write_tx()?;
        let (seq, hash): (i64, String) = tx
            .query_row("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?
            .ok_or(StoreError::AuditEmpty)?;
        let signed = sign_at(&tx, signer, seq, &hash, at)?;
        tx.commit()?;
        if signed.created {
            tracing::info!(seq, "audit checkpoint signed");
        }
        Ok(signed)
    }

    pub(crate) fn export_audit_impl(
        &self,
        public_key: Option<&AuditPublicKey>,
        write: &mut dyn FnMut(&ExportLine) -> Result<()>,
    ) -> Result<AuditExported> {
        let tx = self.conn.unchecked_transaction()?;
        let (entries, first_seq, head_seq): (u64, Option<i64>, Option<i64>) =
            tx.query_row("SELECT count(*), min(seq), max(seq) FROM audit_log", [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?;
        let checkpoints = read_checkpoints(&tx)?;
        let created = meta_value(&tx, "created_at")?
            .ok_or_else(|| StoreError::Corrupt("store_meta has no created_at".into()))?;
        write(&ExportLine::Header(ExportHeader {
            format: EXPORT_FORMAT.to_owned(),
            version: EXPORT_VERSION,
            store_created_at: created,
            public_key: public_key.map(AuditPublicKey::to_hex),
            entries,
            checkpoints: checkpoints.len() as u64,
        }))?;
        let mut statement =
            tx.prepare(&format!("SELECT {ENTRY_COLUMNS} FROM audit_log ORDER BY seq"))?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            write(&ExportLine::Entry(entry_from_row(row)?))?;
        }
        let signed_seq = checkpoints.last().map(|c| c.seq);
        let count = checkpoints.len() as u64;
        for checkpoint in checkpoints {
            write(&ExportLine::Checkpoint(checkpoint))?;
        }
        Ok(AuditExported { entries, checkpoints: count, first_seq, head_seq, signed_seq })
    }

    pub(crate) fn audit_disposal_due_impl(
        &self,
        policy: &Policy,
        as_of: DateTime<Utc>,
    ) -> Result<AuditCut> {
        due_prefix(&self.conn, policy, as_of)
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
        let tx = self.write_tx()?;
        let cut = due_prefix(&tx, policy, as_of)?;
        let Some(through) = cut.through_seq else {
            return Ok(cut);
        };
        let hash: String =
            tx.query_row("SELECT hash FROM audit_log WHERE seq = ?1", [through], |row| row.get(0))?;
        // The checkpoint at the cut is what verification starts from once the entries before
        // it are gone, so it is signed (after checking the chain up to it) in the same
        // transaction that deletes them.
        sign_at(&tx, signer, through, &hash, at)?;
        tx.execute("DELETE FROM audit_log WHERE seq <= ?1", [through])?;
        tx.execute("DELETE FROM audit_checkpoints WHERE seq < ?1", [through])?;
        let mut appender = AuditAppender::begin(&tx, at, simulated)?;
        let detail = format!(
            "disposed of {} audit entries up to seq {through}, past audit_log_years; the signed \
             checkpoint at seq {through} is kept",
            cut.entries
        );
        appender.append(
            &tx,
            AuditEvent::new(actor, "audit.dispose")
                .subject("audit_log")
                .subject(medconnect_domain::checkpoint::cut_subject(through))
                .detail(detail),
        )?;
        appender.finish(&tx)?;
        tx.commit()?;
        tracing::info!(entries = cut.entries, through_seq = through, "audit entries disposed");
        Ok(cut)
    }

    pub(crate) fn audit_entries_impl(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        let mut statement = self.conn.prepare(
            "SELECT seq, hash, body FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = statement.query((after_seq, limit))?;
        audit_records(rows)
    }
}

impl SqliteStore {
    pub(crate) fn read_audit_entries_impl(
        &mut self,
        after_seq: i64,
        limit: u32,
        access: &Access,
    ) -> Result<Vec<AuditRecord>> {
        let (now, simulated) = (self.now(), self.simulated());
        // Immediate, because the entry it appends needs the write lock anyway. The read runs
        // on a shared borrow of the connection inside the transaction.
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let records = self.audit_entries_impl(after_seq, limit)?;
        let event = audit_read_event(access, after_seq, limit, records.len());
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        audit.append(&tx, event)?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(records)
    }

    pub(crate) fn receipts_for_impl(&self, record_id: &str) -> Result<Vec<AuditRecord>> {
        // Receipts are inside the hashed JSON body, so this scans disposal entries. It serves
        // operators asking about one record, not a hot path.
        let needle = format!("%\"record_id\":\"{record_id}\"%");
        let mut statement = self.conn.prepare(
            "SELECT seq, hash, body FROM audit_log
             WHERE action = 'lifecycle.dispose' AND body LIKE ?1 ORDER BY seq",
        )?;
        let rows = statement.query([needle])?;
        audit_records(rows)
    }

    pub(crate) fn audit_tail_start_impl(&self, count: u32) -> Result<i64> {
        let head: i64 =
            self.conn
                .query_row("SELECT coalesce(max(seq), 0) FROM audit_log", [], |row| row.get(0))?;
        Ok((head - i64::from(count)).max(0))
    }
}

/// Returns the longest run of entries from the start of the log that are all past their
/// retention under `policy` at `as_of`.
fn due_prefix(conn: &Connection, policy: &Policy, as_of: DateTime<Utc>) -> Result<AuditCut> {
    let mut slugs: HashMap<String, String> = HashMap::new();
    let mut statement = conn.prepare("SELECT id, slug FROM tenants")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        slugs.insert(row.get(0)?, row.get(1)?);
    }
    let mut cut = AuditCut::default();
    let mut statement = conn.prepare("SELECT seq, at, tenant_id FROM audit_log ORDER BY seq")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let (seq, at, tenant): (i64, String, Option<String>) =
            (row.get(0)?, row.get(1)?, row.get(2)?);
        let slug = tenant.as_ref().and_then(|id| slugs.get(id)).map(String::as_str);
        if policy.audit_entry_until(slug, parse_stored_instant(&at)?) > as_of {
            break;
        }
        cut.entries += 1;
        cut.through_seq = Some(seq);
    }
    Ok(cut)
}

/// Signs a checkpoint at entry `seq`, or returns the one by the same key already there.
///
/// Before signing, the chain from the latest earlier checkpoint (or from the start) up to
/// `seq` is verified, so a signature never vouches for a log that was altered since the last
/// one was signed.
fn sign_at(
    tx: &Connection,
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
        tx.query_row("SELECT count(*) FROM audit_log WHERE seq <= ?1", [seq], |row| row.get(0))?;
    let message = Checkpoint::message_for(seq, hash, at, entries);
    let signature = signer.sign(&message).map_err(|err| StoreError::Signing(Box::new(err)))?;
    let checkpoint = Checkpoint::new(seq, hash, at, entries, &key, &signature);
    tx.execute(
        "INSERT INTO audit_checkpoints (seq, head_hash, at, entries, public_key, signature)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (seq) DO UPDATE SET head_hash = excluded.head_hash, at = excluded.at,
           entries = excluded.entries, public_key = excluded.public_key,
           signature = excluded.signature",
        (
            checkpoint.seq,
            &checkpoint.head_hash,
            &checkpoint.at,
            checkpoint.entries,
            &checkpoint.public_key,
            &checkpoint.signature,
        ),
    )?;
    Ok(CheckpointSigned { checkpoint, created: true })
}

/// Verifies the entries after the latest checkpoint before `seq`, up to `seq`. That
/// checkpoint's signature is checked too when `key` signed it.
fn check_chain_up_to(tx: &Connection, key: &AuditPublicKey, seq: i64) -> Result<()> {
    let previous = checkpoint_before(tx, seq)?;
    let from = previous.as_ref().map_or(0, |c| c.seq);
    let same_key = previous.as_ref().is_some_and(|c| c.public_key == key.to_hex());
    let mut verifier = LogVerifier::new(previous.into_iter().collect(), same_key.then_some(*key))
        .trusting_anchor();
    let mut statement = tx.prepare(&format!(
        "SELECT {ENTRY_COLUMNS} FROM audit_log WHERE seq > ?1 AND seq <= ?2 ORDER BY seq"
    ))?;
    let mut rows = statement.query((from, seq))?;
    while let Some(row) = rows.next()? {
        verifier.push(&entry_from_row(row)?);
    }
    let report = verifier.finish(None, false);
    if report.ok {
        Ok(())
    } else {
        Err(StoreError::AuditBroken { seq, reason: report.message })
    }
}

/// Reads every checkpoint, in sequence order.
fn read_checkpoints(conn: &Connection) -> Result<Vec<Checkpoint>> {
    let mut statement =
        conn.prepare(&format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq"))?;
    let rows = statement.query_map([], checkpoint_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Reads the checkpoint at entry `seq`, if any.
fn checkpoint_at(conn: &Connection, seq: i64) -> Result<Option<Checkpoint>> {
    let sql = format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE seq = ?1");
    Ok(conn.query_row(&sql, [seq], checkpoint_from_row).optional()?)
}

/// Reads the latest checkpoint before entry `seq`, if any.
fn checkpoint_before(conn: &Connection, seq: i64) -> Result<Option<Checkpoint>> {
    let sql = format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE seq < ?1
         ORDER BY seq DESC LIMIT 1"
    );
    Ok(conn.query_row(&sql, [seq], checkpoint_from_row).optional()?)
}

fn checkpoint_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Checkpoint> {
    Ok(Checkpoint {
        seq: row.get(0)?,
        head_hash: row.get(1)?,
        at: row.get(2)?,
        entries: row.get(3)?,
        public_key: row.get(4)?,
        signature: row.get(5)?,
    })
}

fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEntry> {
    Ok(StoredEntry {
        seq: row.get(0)?,
        at: row.get(1)?,
        tenant_id: row.get(2)?,
        action: row.get(3)?,
        body: row.get(4)?,
        prev_hash: row.get(5)?,
        hash: row.get(6)?,
    })
}

fn parse_head(value: &str) -> Result<(i64, String)> {
    let corrupt = || StoreError::Corrupt(format!("invalid recorded audit head {value:?}"));
    let (seq, hash) = value.split_once(':').ok_or_else(corrupt)?;
    Ok((seq.parse().map_err(|_| corrupt())?, hash.to_owned()))
}

/// Reads `seq, hash, body` rows into audit records, parsing each body.
fn audit_records(mut rows: rusqlite::Rows<'_>) -> Result<Vec<AuditRecord>> {
    let mut records = Vec::new();
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let body: String = row.get(2)?;
        let body = serde_json::from_str(&body)
            .map_err(|_| StoreError::Corrupt(format!("audit entry {seq} has an invalid body")))?;
        records.push(AuditRecord { seq, hash: row.get(1)?, body });
    }
    Ok(records)
}
