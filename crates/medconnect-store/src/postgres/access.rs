//! Audited reads of patient data: each read and its audit entry run in one tenant
//! transaction, so the entry commits exactly when the read returns data or finds nothing.

use medconnect_domain::audit::AuditEvent;
use medconnect_domain::model::Tenant;
use medconnect_domain::{PatientId, PhotoId};
use postgres::Transaction;

use super::records::{link_detail, open_id_photo, open_profile, tenant_links};
use super::{PgAudit, PgStore};
use crate::access::{read_event, Access, PatientRecord};
use crate::{LinkSummary, Result};

impl PgStore {
    /// Runs `read` in a transaction of `tenant` and appends the entry that `read_event` makes of
    /// its result, with `describe` adding what a successful read returned. The clinical writes
    /// run through it too, so a write and its entry commit together. A not-found result
    /// commits with its entry; any other error rolls back, writing none.
    pub(super) fn audited_read<T>(
        &self,
        tenant: &Tenant,
        event: AuditEvent,
        mut read: impl FnMut(&mut Transaction<'_>) -> Result<T>,
        describe: impl Fn(AuditEvent, &T) -> AuditEvent,
    ) -> Result<T> {
        let (now, simulated) = (self.now(), self.simulated());
        self.tenant_tx(tenant.id, |tx| {
            let result = read(tx);
            let Some(mut entry) = read_event(event.clone(), &result) else {
                return result.map(Ok);
            };
            if let Ok(value) = &result {
                entry = describe(entry, value);
            }
            // The head is taken last, after the read, as every writer does.
            let mut audit = PgAudit::begin(tx, now, simulated)?;
            audit.append(tx, entry)?;
            audit.finish(tx)?;
            Ok(result)
        })?
    }

    pub(crate) fn read_patient_links_impl(
        &self,
        tenant: &Tenant,
        access: &Access,
    ) -> Result<Vec<LinkSummary>> {
        let event = access.event(tenant, "patient.list");
        self.audited_read(
            tenant,
            event,
            |tx| tenant_links(tx, tenant),
            |entry, links| {
                let detail = format!("{} count={}", entry.detail, links.len());
                entry.detail(detail)
            },
        )
    }

    pub(crate) fn read_patient_impl(
        &self,
        tenant: &Tenant,
        patient: PatientId,
        access: &Access,
    ) -> Result<PatientRecord> {
        let keys = self.keys()?;
        let event = access.event(tenant, "patient.read").subject(patient);
        self.audited_read(
            tenant,
            event,
            |tx| {
                let link = link_detail(tx, tenant, patient)?;
                let profile = open_profile(tx, keys, patient)?;
                Ok(PatientRecord { link, profile })
            },
            |entry, _| entry,
        )
    }

    pub(crate) fn read_id_photo_audited_impl(
        &self,
        tenant: &Tenant,
        photo: PhotoId,
        access: &Access,
    ) -> Result<Vec<u8>> {
        let keys = self.keys()?;
        let event = access.event(tenant, "id_photo.read").subject(photo);
        self.audited_read(
            tenant,
            event,
            |tx| open_id_photo(tx, keys, tenant, photo),
            |entry, _| entry,
        )
    }
}
