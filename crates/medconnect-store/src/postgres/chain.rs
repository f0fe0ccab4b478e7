//! Appending to the hash-chained audit log inside an open PostgreSQL transaction.

use chrono::{DateTime, Utc};
use medconnect_domain::audit::{chain_hash, AuditEvent};
use medconnect_domain::time::format_instant;
use postgres::Transaction;

use crate::{Result, StoreError};

/// Appends entries inside one open transaction.
///
/// [`Self::begin`] locks the single row of `audit_head`, so appends from every node and
/// connection form one chain: a second writer waits there until the first commits. Take the
/// head last in a transaction, after the rows it changes are locked, so that two writers
/// never wait on each other in opposite order. [`Self::finish`] writes the new head and must
/// run before the transaction commits.
pub(crate) struct PgAudit {
    seq: i64,
    hash: String,
    at: DateTime<Utc>,
    simulated: bool,
}

impl PgAudit {
    pub(crate) fn begin(
        tx: &mut Transaction<'_>,
        at: DateTime<Utc>,
        simulated: bool,
    ) -> Result<Self> {
        let row = tx
            .query_opt("SELECT seq, hash FROM audit_head FOR UPDATE", &[])?
            .ok_or_else(|| StoreError::Corrupt("audit_head has no row".into()))?;
        Ok(PgAudit { seq: row.get(0), hash: row.get(1), at, simulated })
    }

    pub(crate) fn append(&mut self, tx: &mut Transaction<'_>, event: AuditEvent) -> Result<i64> {
        let seq = self.seq + 1;
        let tenant = event.tenant_id.map(|id| id.to_string());
        let body = event.into_body(seq, self.at, self.simulated, &self.hash);
        let canonical = body.to_canonical_json();
        let hash = chain_hash(&self.hash, &canonical);
        tx.execute(
            "INSERT INTO audit_log (seq, at, action, tenant_id, body, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&seq, &format_instant(self.at), &body.action, &tenant, &canonical, &self.hash, &hash],
        )?;
        self.seq = seq;
        self.hash = hash;
        Ok(seq)
    }

    /// Appends many entries with one statement. The chain is the same as appending them one
    /// by one.
    pub(crate) fn append_all(
        &mut self,
        tx: &mut Transaction<'_>,
        events: Vec<AuditEvent>,
    ) -> Result<()> {
        let count = events.len();
        let (mut seqs, mut ats, mut actions, mut tenants, mut bodies, mut prevs, mut hashes) = (
            Vec::with_capacity(count),
            Vec::with_capacity(count),
            Vec::with_capacity(count),
            Vec::with_capacity(count),
            Vec::with_capacity(count),
            Vec::with_capacity(count),
            Vec::with_capacity(count),
        );
        let at = format_instant(self.at);
        for event in events {
            let seq = self.seq + 1;
            tenants.push(event.tenant_id.map(|id| id.to_string()));
            let body = event.into_body(seq, self.at, self.simulated, &self.hash);
            let canonical = body.to_canonical_json();
            let hash = chain_hash(&self.hash, &canonical);
            seqs.push(seq);
            ats.push(at.clone());
            actions.push(body.action);
            bodies.push(canonical);
            prevs.push(std::mem::replace(&mut self.hash, hash.clone()));
            hashes.push(hash);
            self.seq = seq;
        }
        if count > 0 {
            tx.execute(
                "INSERT INTO audit_log (seq, at, action, tenant_id, body, prev_hash, hash)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
                                      $5::text[], $6::text[], $7::text[])",
                &[&seqs, &ats, &actions, &tenants, &bodies, &prevs, &hashes],
            )?;
        }
        Ok(())
    }

    pub(crate) fn finish(self, tx: &mut Transaction<'_>) -> Result<()> {
        tx.execute("UPDATE audit_head SET seq = $1, hash = $2", &[&self.seq, &self.hash])?;
        Ok(())
    }
}
