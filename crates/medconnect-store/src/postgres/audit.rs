//! Appending to, verifying, signing, exporting and disposing of the audit log.

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
    pub(crate) fn append_audit_impl(&mut self, event: AuditEvent) -> Result<i64> {
        unimplemented!("PostgreSQL append_audit")
    }

    pub(crate) fn verify_audit_impl(&self, key: Option<&AuditPublicKey>) -> Result<VerifyReport> {
        unimplemented!("PostgreSQL verify_audit")
    }

    pub(crate) fn audit_checkpoints_impl(&self) -> Result<Vec<Checkpoint>> {
        unimplemented!("PostgreSQL audit_checkpoints")
    }

    pub(crate) fn sign_audit_checkpoint_impl(
        &mut self,
        signer: &dyn AuditSigner,
    ) -> Result<CheckpointSigned> {
        unimplemented!("PostgreSQL sign_audit_checkpoint")
    }

    pub(crate) fn export_audit_impl(
        &self,
        public_key: Option<&AuditPublicKey>,
        write: &mut dyn FnMut(&ExportLine) -> Result<()>,
    ) -> Result<AuditExported> {
        unimplemented!("PostgreSQL export_audit")
    }

    pub(crate) fn audit_disposal_due_impl(
        &self,
        policy: &Policy,
        as_of: DateTime<Utc>,
    ) -> Result<AuditCut> {
        unimplemented!("PostgreSQL audit_disposal_due")
    }

    pub(crate) fn dispose_audit_impl(
        &mut self,
        policy: &Policy,
        as_of: DateTime<Utc>,
        signer: &dyn AuditSigner,
        actor: &str,
    ) -> Result<AuditCut> {
        unimplemented!("PostgreSQL dispose_audit")
    }

    pub(crate) fn audit_entries_impl(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        unimplemented!("PostgreSQL audit_entries")
    }

    pub(crate) fn receipts_for_impl(&self, record_id: &str) -> Result<Vec<AuditRecord>> {
        unimplemented!("PostgreSQL receipts_for")
    }

    pub(crate) fn audit_tail_start_impl(&self, count: u32) -> Result<i64> {
        unimplemented!("PostgreSQL audit_tail_start")
    }
}
