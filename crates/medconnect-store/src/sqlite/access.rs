//! Audited reads of patient data: each read and its audit entry run in one SQLite
//! transaction, so the entry commits exactly when the read returns data or finds nothing.

use medconnect_domain::audit::AuditEvent;
use medconnect_domain::model::Tenant;
use medconnect_domain::{PatientId, PhotoId};
use rusqlite::{Transaction, TransactionBehavior};

use super::audit::AuditAppender;
use super::SqliteStore;
use crate::access::{read_event, Access, PatientRead, PatientRecord};
use crate::{LinkSummary, Result};

impl SqliteStore {
    /// Runs `read` inside an immediate transaction and appends the entry that `read_event` makes of
    /// its result, with `describe` adding what a successful read returned. The clinical writes
    /// run through it too, so a write and its entry commit together. A not-found result
    /// commits with its entry; any other error rolls back, writing none.
    pub(super) fn audited_read<T>(
        &mut self,
        event: AuditEvent,
        read: impl FnOnce(&Self) -> Result<T>,
        describe: impl FnOnce(AuditEvent, &T) -> AuditEvent,
    ) -> Result<T> {
        let (now, simulated) = (self.now(), self.simulated());
        // The transaction is opened on a shared borrow of the connection, so the existing
        // read methods, which take `&self`, run inside it. It is taken immediately, because
        // the entry it appends needs the write lock anyway.
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let result = read(self);
        let Some(mut entry) = read_event(event, &result) else {
            return result;
        };
        if let Ok(value) = &result {
            entry = describe(entry, value);
        }
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        audit.append(&tx, entry)?;
        audit.finish(&tx)?;
        tx.commit()?;
        result
    }

    pub(crate) fn read_patient_links_impl(
        &mut self,
        tenant: &Tenant,
        access: &Access,
    ) -> Result<Vec<LinkSummary>> {
        let event = access.event(tenant, "patient.list");
        self.audited_read(
            event,
            |store| store.patient_links_impl(tenant),
            |entry, links| {
                let detail = format!("{} count={}", entry.detail, links.len());
                entry.detail(detail)
            },
        )
    }

    pub(crate) fn read_patient_impl(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        access: &Access,
    ) -> Result<PatientRecord> {
        self.keys()?;
        let event = access.event(tenant, "patient.read").subject(patient);
        self.audited_read(event, |store| store.patient_record(tenant, patient), |entry, _| entry)
    }

    /// Runs every read and appends its entry in one immediate transaction, so that one commit,
    /// and with `synchronous = FULL` one sync of the write-ahead log, covers all of them. A
    /// read that fails for a reason other than not-found writes no entry, as a single read
    /// does, and the others go on. A failure to append or commit fails the whole batch.
    pub(crate) fn read_patients_impl(
        &mut self,
        reads: &[PatientRead],
    ) -> Result<Vec<Result<PatientRecord>>> {
        self.keys()?;
        if reads.is_empty() {
            return Ok(Vec::new());
        }
        let (now, simulated) = (self.now(), self.simulated());
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        let mut results = Vec::with_capacity(reads.len());
        for read in reads {
            let (tenant, patient) = (&read.tenant, read.patient);
            let result = self.patient_record(tenant, patient);
            let event = read.access.event(tenant, "patient.read").subject(patient);
            if let Some(entry) = read_event(event, &result) {
                audit.append(&tx, entry)?;
            }
            results.push(result);
        }
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(results)
    }

    fn patient_record(&self, tenant: &Tenant, patient: PatientId) -> Result<PatientRecord> {
        let link = self.patient_link_impl(tenant, patient)?;
        let profile = self.patient_profile_impl(tenant, patient)?;
        Ok(PatientRecord { link, profile })
    }

    pub(crate) fn read_id_photo_audited_impl(
        &mut self,
        tenant: &Tenant,
        photo: PhotoId,
        access: &Access,
    ) -> Result<Vec<u8>> {
        self.keys()?;
        let event = access.event(tenant, "id_photo.read").subject(photo);
        self.audited_read(event, |store| store.read_id_photo_impl(tenant, photo), |entry, _| entry)
    }
}
