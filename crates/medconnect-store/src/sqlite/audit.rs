//! Appending to and verifying the hash-chained audit log.

use chrono::{DateTime, Utc};
use medconnect_domain::audit::{
    chain_hash, AuditEvent, ChainVerifier, StoredEntry, VerifyReport, GENESIS_HASH,
};
use medconnect_domain::time::format_instant;
use rusqlite::{Connection, OptionalExtension};

use super::{meta_value, SqliteStore};
use crate::{AuditRecord, Result, StoreError};

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
            .query_row("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
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
    /// entry to detect entries cut from the end.
    // TODO: an attacker who can write the database can also rewrite this head; signed
    // checkpoints kept outside the database would anchor it.
    pub(crate) fn finish(self, tx: &Connection) -> Result<()> {
        tx.execute(
            "INSERT INTO store_meta (key, value) VALUES ('audit_head', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [format!("{}:{}", self.seq, self.hash)],
        )?;
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

    pub(crate) fn verify_audit_impl(&self) -> Result<VerifyReport> {
        let recorded_head = match meta_value(&self.conn, "audit_head")? {
            Some(value) => Some(parse_head(&value)?),
            None => None,
        };
        let mut verifier = ChainVerifier::default();
        let mut statement = self.conn.prepare(
            "SELECT seq, at, tenant_id, action, body, prev_hash, hash FROM audit_log ORDER BY seq",
        )?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            verifier.push(&StoredEntry {
                seq: row.get(0)?,
                at: row.get(1)?,
                tenant_id: row.get(2)?,
                action: row.get(3)?,
                body: row.get(4)?,
                prev_hash: row.get(5)?,
                hash: row.get(6)?,
            });
        }
        Ok(verifier.finish(recorded_head))
    }

    pub(crate) fn audit_entries_impl(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        let mut statement = self.conn.prepare(
            "SELECT seq, hash, body FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = statement.query_map((after_seq, limit), |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?))
        })?;
        let mut records = Vec::new();
        for row in rows {
            let (seq, hash, body) = row?;
            let body = serde_json::from_str(&body).map_err(|_| {
                StoreError::Corrupt(format!("audit entry {seq} has an invalid body"))
            })?;
            records.push(AuditRecord { seq, hash, body });
        }
        Ok(records)
    }
}

impl SqliteStore {
    pub(crate) fn receipts_for_impl(&self, record_id: &str) -> Result<Vec<AuditRecord>> {
        // Receipts are inside the hashed JSON body, so this scans disposal entries. It serves
        // operators asking about one record, not a hot path.
        let needle = format!("%\"record_id\":\"{record_id}\"%");
        let mut statement = self.conn.prepare(
            "SELECT seq, hash, body FROM audit_log
             WHERE action = 'lifecycle.dispose' AND body LIKE ?1 ORDER BY seq",
        )?;
        let rows = statement.query_map([needle], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?))
        })?;
        let mut records = Vec::new();
        for row in rows {
            let (seq, hash, body) = row?;
            let body = serde_json::from_str(&body).map_err(|_| {
                StoreError::Corrupt(format!("audit entry {seq} has an invalid body"))
            })?;
            records.push(AuditRecord { seq, hash, body });
        }
        Ok(records)
    }

    pub(crate) fn audit_tail_start_impl(&self, count: u32) -> Result<i64> {
        let head: i64 =
            self.conn
                .query_row("SELECT coalesce(max(seq), 0) FROM audit_log", [], |row| row.get(0))?;
        Ok((head - i64::from(count)).max(0))
    }
}

fn parse_head(value: &str) -> Result<(i64, String)> {
    let corrupt = || StoreError::Corrupt(format!("invalid recorded audit head {value:?}"));
    let (seq, hash) = value.split_once(':').ok_or_else(corrupt)?;
    Ok((seq.parse().map_err(|_| corrupt())?, hash.to_owned()))
}
