//! Disposal candidates, disposals claimed row by row, policy application and runs.

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
    pub(crate) fn phi_candidates_impl(
        &self,
        active_before: DateTime<Utc>,
    ) -> Result<Vec<PhiCandidate>> {
        unimplemented!("PostgreSQL phi_candidates")
    }

    pub(crate) fn id_photo_candidates_impl(
        &self,
        uploaded_before: DateTime<Utc>,
    ) -> Result<Vec<RecordCandidate>> {
        unimplemented!("PostgreSQL id_photo_candidates")
    }

    pub(crate) fn session_candidates_impl(
        &self,
        ended_before: DateTime<Utc>,
    ) -> Result<Vec<RecordCandidate>> {
        unimplemented!("PostgreSQL session_candidates")
    }

    pub(crate) fn dispose_impl(
        &mut self,
        disposals: &[Disposal],
        context: &DisposalContext<'_>,
    ) -> Result<Vec<DisposalOutcome>> {
        unimplemented!("PostgreSQL dispose")
    }

    pub(crate) fn finish_file_deletions_impl(&mut self) -> Result<u64> {
        unimplemented!("PostgreSQL finish_file_deletions")
    }

    pub(crate) fn applied_policy_version_impl(&self) -> Result<Option<String>> {
        unimplemented!("PostgreSQL applied_policy_version")
    }

    pub(crate) fn apply_policy_impl(
        &mut self,
        policy: &Policy,
        actor: &str,
        allow_shorter: bool,
    ) -> Result<PolicyApplied> {
        unimplemented!("PostgreSQL apply_policy")
    }

    pub(crate) fn start_run_impl(&mut self, as_of: DateTime<Utc>) -> Result<String> {
        unimplemented!("PostgreSQL start_run")
    }

    pub(crate) fn finish_run_impl(
        &mut self,
        run_id: &str,
        status: &str,
        summary: &str,
    ) -> Result<()> {
        unimplemented!("PostgreSQL finish_run")
    }

    pub(crate) fn runs_impl(&self, limit: u32) -> Result<Vec<RunRecord>> {
        unimplemented!("PostgreSQL runs")
    }
}
