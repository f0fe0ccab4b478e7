//! Re-applying disposal ledger entries to a restored store.

// Stub imports: the implementation narrows them.
#![allow(unused_imports)]

use chrono::{DateTime, Utc};
use medconnect_crypto::AuditSigner;
use medconnect_domain::audit::{AuditEvent, VerifyReport};
use medconnect_domain::checkpoint::{AuditPublicKey, Checkpoint, ExportLine};
use medconnect_domain::model::{HoldScope, ImportBatch, ImportCounts, LegalHold, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::{HoldId, PatientId, PhotoId, SessionId, TenantId};

use super::PgStore;
use crate::*;

#[allow(unused_variables)]
impl PgStore {
    pub(crate) fn reapply_disposal_impl(&mut self, entry: &LedgerEntry) -> Result<ReapplyOutcome> {
        unimplemented!("PostgreSQL reapply_disposal")
    }
}
