//! Audited writes and reads of encounters, consultations and prescriptions. Each runs with
//! its audit entry in one immediate SQLite transaction, through `audited_read`, so a failed
//! write leaves neither the rows nor the entry behind.

use chrono::{DateTime, Utc};
use medconnect_domain::model::Tenant;
use medconnect_domain::policy::Policy;
use medconnect_domain::time::format_instant;
use medconnect_domain::{ConsultationId, PatientId};
use rusqlite::{Connection, OptionalExtension};
use uuid::Uuid;

use super::records::link_key;
use super::values::{parse_optional_instant, parse_stored_id, parse_stored_instant};
use super::SqliteStore;
use crate::keys::{seal_text, KeyScope, Keys, Place};
use crate::{
    Access, ConsultationRecord, EncounterRecorded, NewEncounter, NewPrescriptionEntry,
    PrescriptionRecord, Result, StoreError,
};

/// Stores a consultation under the link's data key and moves the link's last encounter and
/// retention, inside the caller's transaction. The last encounter is the later of the stored
/// one and this consultation's end, so an older encounter never moves retention earlier.
pub(super) fn write_encounter(
    conn: &Connection,
    keys: &Keys,
    tenant: &Tenant,
    link: i64,
    encounter: &NewEncounter<'_>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<EncounterRecorded> {
    let previous: Option<String> = conn.query_row(
        "SELECT last_medical_encounter_at FROM patient_links WHERE id = ?1",
        [link],
        |row| row.get(0),
    )?;
    let basis = encounter.retention_basis();
    let last = parse_optional_instant(previous)?.map_or(basis, |previous| previous.max(basis));
    let until = policy.phi_retention_until(&tenant.slug, last);
    let id = ConsultationId::new();
    let id_text = id.to_string();
    let tenant_text = tenant.id.to_string();
    let place = Place { tenant: &tenant_text, table: "consultations", record: &id_text };
    let key = keys.data_key(conn, KeyScope::Link, &link.to_string(), now)?;
    conn.execute(
        "INSERT INTO consultations (id, tenant_id, link_id, status, encounter_class, reason,
         notes, started_at, ended_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        rusqlite::params![
            id_text,
            tenant_text,
            link,
            encounter.status,
            encounter.encounter_class,
            seal_text(&key, place, "reason", encounter.reason)?,
            seal_text(&key, place, "notes", encounter.notes)?,
            format_instant(encounter.started_at),
            encounter.ended_at.map(format_instant),
        ],
    )?;
    conn.execute(
        "UPDATE patient_links SET last_medical_encounter_at = ?1, phi_retention_until = ?2
         WHERE id = ?3",
        (format_instant(last), format_instant(until), link),
    )?;
    Ok(EncounterRecorded {
        consultation_id: id,
        last_medical_encounter_at: last,
        phi_retention_until: until,
    })
}

fn require_link(conn: &Connection, tenant: &Tenant, patient: PatientId) -> Result<i64> {
    link_key(conn, tenant.id, patient)?.ok_or_else(|| StoreError::PatientNotFound {
        tenant: tenant.slug.clone(),
        patient: patient.to_string(),
    })
}

impl SqliteStore {
    pub(crate) fn record_encounter_audited_impl(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        encounter: &NewEncounter<'_>,
        policy: &Policy,
        access: &Access,
        action: &str,
    ) -> Result<EncounterRecorded> {
        self.keys()?;
        let now = self.now();
        let event = access.event(tenant, action).subject(patient);
        self.audited_read(
            event,
            |store| {
                let link = require_link(&store.conn, tenant, patient)?;
                write_encounter(&store.conn, store.keys()?, tenant, link, encounter, policy, now)
            },
            |entry, recorded| {
                let detail = format!("{} policy={}", entry.detail, policy.version());
                entry.subject(recorded.consultation_id).detail(detail)
            },
        )
    }

    pub(crate) fn read_consultations_impl(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        access: &Access,
    ) -> Result<Vec<ConsultationRecord>> {
        self.keys()?;
        let event = access.event(tenant, "consultation.list").subject(patient);
        self.audited_read(
            event,
            |store| {
                let link = require_link(&store.conn, tenant, patient)?;
                store.consultations_of(tenant, link)
            },
            |entry, listed| {
                let detail = format!("{} count={}", entry.detail, listed.len());
                entry.detail(detail)
            },
        )
    }

    fn consultations_of(&self, tenant: &Tenant, link: i64) -> Result<Vec<ConsultationRecord>> {
        let keys = self.keys()?;
        let tenant_text = tenant.id.to_string();
        let mut statement = self.conn.prepare(
            "SELECT id, provider_id, status, encounter_class, reason, notes, started_at, ended_at
             FROM consultations WHERE link_id = ?1 ORDER BY started_at DESC, id",
        )?;
        let mut rows = statement.query([link])?;
        let mut consultations = Vec::new();
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            let place = Place { tenant: &tenant_text, table: "consultations", record: &id };
            let reason: Vec<u8> = row.get(4)?;
            let notes: Vec<u8> = row.get(5)?;
            consultations.push(ConsultationRecord {
                id: parse_stored_id(&id)?,
                provider_id: row.get(1)?,
                status: row.get(2)?,
                encounter_class: row.get(3)?,
                reason: keys.open_text(&self.conn, place, "reason", &reason)?,
                notes: keys.open_text(&self.conn, place, "notes", &notes)?,
                started_at: parse_stored_instant(&row.get::<_, String>(6)?)?,
                ended_at: parse_optional_instant(row.get(7)?)?,
            });
        }
        Ok(consultations)
    }

    pub(crate) fn create_prescription_impl(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        prescription: &NewPrescriptionEntry<'_>,
        access: &Access,
    ) -> Result<PrescriptionRecord> {
        self.keys()?;
        let now = self.now();
        let event = access.event(tenant, "prescription.create").subject(patient);
        self.audited_read(
            event,
            |store| {
                let link = require_link(&store.conn, tenant, patient)?;
                write_prescription(&store.conn, store.keys()?, tenant, link, prescription, now)
            },
            |entry, stored| entry.subject(&stored.id),
        )
    }

    pub(crate) fn read_prescriptions_impl(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        access: &Access,
    ) -> Result<Vec<PrescriptionRecord>> {
        self.keys()?;
        let event = access.event(tenant, "prescription.list").subject(patient);
        self.audited_read(
            event,
            |store| {
                let link = require_link(&store.conn, tenant, patient)?;
                store.prescriptions_of(tenant, link)
            },
            |entry, listed| {
                let detail = format!("{} count={}", entry.detail, listed.len());
                entry.detail(detail)
            },
        )
    }

    fn prescriptions_of(&self, tenant: &Tenant, link: i64) -> Result<Vec<PrescriptionRecord>> {
        let keys = self.keys()?;
        let tenant_text = tenant.id.to_string();
        let mut statement = self.conn.prepare(
            "SELECT id, consultation_id, code, description, dispenses, controlled, started_at,
             stopped_at
             FROM prescriptions WHERE link_id = ?1 ORDER BY started_at DESC, id",
        )?;
        let mut rows = statement.query([link])?;
        let mut prescriptions = Vec::new();
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            let place = Place { tenant: &tenant_text, table: "prescriptions", record: &id };
            let code: Vec<u8> = row.get(2)?;
            let description: Vec<u8> = row.get(3)?;
            prescriptions.push(PrescriptionRecord {
                consultation_id: row.get(1)?,
                code: keys.open_text(&self.conn, place, "code", &code)?,
                description: keys.open_text(&self.conn, place, "description", &description)?,
                dispenses: row.get(4)?,
                controlled: row.get(5)?,
                started_at: parse_stored_instant(&row.get::<_, String>(6)?)?,
                stopped_at: parse_optional_instant(row.get(7)?)?,
                id,
            });
        }
        Ok(prescriptions)
    }
}

/// Stores a prescription under the link's data key inside the caller's transaction, after
/// checking that its consultation, if it names one, belongs to the same link.
fn write_prescription(
    conn: &Connection,
    keys: &Keys,
    tenant: &Tenant,
    link: i64,
    prescription: &NewPrescriptionEntry<'_>,
    now: DateTime<Utc>,
) -> Result<PrescriptionRecord> {
    let tenant_text = tenant.id.to_string();
    let consultation = prescription.consultation_id.map(|id| id.to_string());
    if let Some(consultation) = &consultation {
        let found: Option<i64> = conn
            .query_row(
                "SELECT 1 FROM consultations WHERE id = ?1 AND tenant_id = ?2 AND link_id = ?3",
                (consultation, &tenant_text, link),
                |row| row.get(0),
            )
            .optional()?;
        if found.is_none() {
            return Err(StoreError::ConsultationNotFound {
                tenant: tenant.slug.clone(),
                consultation: consultation.clone(),
            });
        }
    }
    let id = Uuid::new_v4().to_string();
    let place = Place { tenant: &tenant_text, table: "prescriptions", record: &id };
    let key = keys.data_key(conn, KeyScope::Link, &link.to_string(), now)?;
    conn.execute(
        "INSERT INTO prescriptions (id, tenant_id, link_id, consultation_id, code, description,
         dispenses, controlled, started_at, stopped_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        rusqlite::params![
            id,
            tenant_text,
            link,
            consultation,
            seal_text(&key, place, "code", prescription.code)?,
            seal_text(&key, place, "description", prescription.description)?,
            prescription.dispenses,
            prescription.controlled,
            format_instant(prescription.started_at),
            prescription.stopped_at.map(format_instant),
        ],
    )?;
    Ok(PrescriptionRecord {
        id,
        consultation_id: consultation,
        code: prescription.code.to_owned(),
        description: prescription.description.to_owned(),
        dispenses: prescription.dispenses,
        controlled: prescription.controlled,
        started_at: prescription.started_at,
        stopped_at: prescription.stopped_at,
    })
}
