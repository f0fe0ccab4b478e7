//! Tenants, imports, encounters, ID photos, sessions, links and legal holds.

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
    pub(crate) fn create_tenant_impl(
        &mut self,
        slug: &str,
        name: &str,
        actor: &str,
    ) -> Result<Tenant> {
        unimplemented!("PostgreSQL create_tenant")
    }

    pub(crate) fn tenant_by_slug_impl(&self, slug: &str) -> Result<Tenant> {
        unimplemented!("PostgreSQL tenant_by_slug")
    }

    pub(crate) fn tenant_impl(&self, id: TenantId) -> Result<Tenant> {
        unimplemented!("PostgreSQL tenant")
    }

    pub(crate) fn tenants_impl(&self) -> Result<Vec<Tenant>> {
        unimplemented!("PostgreSQL tenants")
    }

    pub(crate) fn import_impl(
        &mut self,
        tenant: &Tenant,
        batch: &ImportBatch,
        policy: &Policy,
        actor: &str,
    ) -> Result<ImportCounts> {
        unimplemented!("PostgreSQL import")
    }

    pub(crate) fn record_encounter_impl(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        at: DateTime<Utc>,
        policy: &Policy,
        actor: &str,
    ) -> Result<DateTime<Utc>> {
        unimplemented!("PostgreSQL record_encounter")
    }

    pub(crate) fn add_id_photo_impl(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        bytes: &[u8],
        uploaded_at: DateTime<Utc>,
        actor: &str,
    ) -> Result<PhotoId> {
        unimplemented!("PostgreSQL add_id_photo")
    }

    pub(crate) fn add_session_impl(
        &mut self,
        tenant: &Tenant,
        patient: Option<PatientId>,
        times: SessionTimes,
    ) -> Result<SessionId> {
        unimplemented!("PostgreSQL add_session")
    }

    pub(crate) fn patient_links_impl(&self, tenant: &Tenant) -> Result<Vec<LinkSummary>> {
        unimplemented!("PostgreSQL patient_links")
    }

    pub(crate) fn find_patient_impl(
        &self,
        tenant: &Tenant,
        source_system: &str,
        source_id: &str,
    ) -> Result<Option<PatientId>> {
        unimplemented!("PostgreSQL find_patient")
    }

    pub(crate) fn patient_profile_impl(
        &self,
        tenant: &Tenant,
        patient: PatientId,
    ) -> Result<PatientProfileView> {
        unimplemented!("PostgreSQL patient_profile")
    }

    pub(crate) fn read_id_photo_impl(&self, tenant: &Tenant, photo: PhotoId) -> Result<Vec<u8>> {
        unimplemented!("PostgreSQL read_id_photo")
    }

    pub(crate) fn providers_impl(&self, tenant: &Tenant) -> Result<Vec<ProviderView>> {
        unimplemented!("PostgreSQL providers")
    }

    pub(crate) fn links_of_patient_impl(&self, patient: PatientId) -> Result<Vec<LinkSummary>> {
        unimplemented!("PostgreSQL links_of_patient")
    }

    pub(crate) fn patient_link_impl(
        &self,
        tenant: &Tenant,
        patient: PatientId,
    ) -> Result<LinkDetail> {
        unimplemented!("PostgreSQL patient_link")
    }

    pub(crate) fn place_hold_impl(
        &mut self,
        tenant: &Tenant,
        scope: HoldScope,
        matter: &str,
        reason: &str,
        actor: &str,
    ) -> Result<LegalHold> {
        unimplemented!("PostgreSQL place_hold")
    }

    pub(crate) fn release_hold_impl(&mut self, id: HoldId, actor: &str) -> Result<LegalHold> {
        unimplemented!("PostgreSQL release_hold")
    }

    pub(crate) fn holds_impl(
        &self,
        tenant: Option<TenantId>,
        include_released: bool,
    ) -> Result<Vec<LegalHold>> {
        unimplemented!("PostgreSQL holds")
    }
}
