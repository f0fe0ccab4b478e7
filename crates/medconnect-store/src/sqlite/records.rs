//! Tenants, imports, encounters, ID photos, sessions, links and legal holds.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use medconnect_domain::audit::AuditEvent;
use medconnect_domain::model::{
    validate_slug, HoldScope, ImportBatch, ImportCounts, LegalHold, NewPatientProfile, Tenant,
};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::format_instant;
use medconnect_domain::{
    ConsultationId, HoldId, PatientId, PhotoId, ProviderId, SessionId, TenantId,
};
use rusqlite::{Connection, OptionalExtension, Row};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::audit::AuditAppender;
use super::clinical::write_encounter;
use super::values::{parse_optional_instant, parse_stored_id, parse_stored_instant};
use super::SqliteStore;
use crate::keys::{seal_bytes, seal_optional, seal_text, KeyScope, Keys, Place, SealingKey};
use crate::{
    LinkCounts, LinkDetail, LinkSummary, NewEncounter, PatientProfileView, ProviderView,
    RecordCandidate, Result, SessionTimes, StoreError,
};

const LINK_COLUMNS: &str =
    "t.id, t.slug, l.patient_id, l.last_medical_encounter_at, l.phi_retention_until, l.created_at";

pub(crate) fn link_from_row(row: &Row<'_>) -> Result<LinkSummary> {
    Ok(LinkSummary {
        tenant_id: parse_stored_id(&row.get::<_, String>(0)?)?,
        tenant_slug: row.get(1)?,
        patient_id: parse_stored_id(&row.get::<_, String>(2)?)?,
        last_medical_encounter_at: parse_optional_instant(row.get(3)?)?,
        phi_retention_until: parse_stored_instant(&row.get::<_, String>(4)?)?,
        created_at: parse_stored_instant(&row.get::<_, String>(5)?)?,
    })
}

fn tenant_from_row(row: &Row<'_>) -> Result<Tenant> {
    Ok(Tenant {
        id: parse_stored_id(&row.get::<_, String>(0)?)?,
        slug: row.get(1)?,
        name: row.get(2)?,
        created_at: parse_stored_instant(&row.get::<_, String>(3)?)?,
    })
}

fn hold_from_row(row: &Row<'_>) -> Result<LegalHold> {
    let patient: Option<String> = row.get(2)?;
    let scope = match patient {
        Some(id) => HoldScope::Patient(parse_stored_id(&id)?),
        None => HoldScope::WholeTenant,
    };
    Ok(LegalHold {
        id: parse_stored_id(&row.get::<_, String>(0)?)?,
        tenant_id: parse_stored_id(&row.get::<_, String>(1)?)?,
        scope,
        matter: row.get(3)?,
        reason: row.get(4)?,
        placed_at: parse_stored_instant(&row.get::<_, String>(5)?)?,
        placed_by: row.get(6)?,
        released_at: parse_optional_instant(row.get(7)?)?,
        released_by: row.get(8)?,
    })
}

const HOLD_COLUMNS: &str =
    "id, tenant_id, patient_id, matter, reason, placed_at, placed_by, released_at, released_by";

/// Returns the integer key of a patient's link to a tenant.
pub(crate) fn link_key(
    conn: &Connection,
    tenant: TenantId,
    patient: PatientId,
) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT id FROM patient_links WHERE tenant_id = ?1 AND patient_id = ?2")?
        .query_row((tenant.to_string(), patient.to_string()), |row| row.get(0))
        .optional()?)
}

impl SqliteStore {
    pub(super) fn require_link(&self, tenant: &Tenant, patient: PatientId) -> Result<i64> {
        link_key(&self.conn, tenant.id, patient)?.ok_or_else(|| StoreError::PatientNotFound {
            tenant: tenant.slug.clone(),
            patient: patient.to_string(),
        })
    }

    pub(crate) fn create_tenant_impl(
        &mut self,
        slug: &str,
        name: &str,
        actor: &str,
    ) -> Result<Tenant> {
        validate_slug(slug)?;
        if self.tenant_by_slug_impl(slug).is_ok() {
            return Err(StoreError::TenantExists(slug.to_owned()));
        }
        let tenant = Tenant {
            id: TenantId::new(),
            slug: slug.to_owned(),
            name: name.to_owned(),
            created_at: self.now(),
        };
        let (at, simulated) = (self.now(), self.simulated());
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO tenants (id, slug, name, created_at) VALUES (?1, ?2, ?3, ?4)",
            (tenant.id.to_string(), slug, name, format_instant(tenant.created_at)),
        )?;
        let mut audit = AuditAppender::begin(&tx, at, simulated)?;
        audit.append(
            &tx,
            AuditEvent::new(actor, "tenant.create").tenant(tenant.id).subject(tenant.id),
        )?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(tenant)
    }

    pub(crate) fn tenant_by_slug_impl(&self, slug: &str) -> Result<Tenant> {
        let row = self
            .conn
            .query_row(
                "SELECT id, slug, name, created_at FROM tenants WHERE slug = ?1",
                [slug],
                |row| Ok(tenant_from_row(row)),
            )
            .optional()?;
        row.ok_or_else(|| StoreError::TenantNotFound(slug.to_owned()))?
    }

    pub(crate) fn tenant_impl(&self, id: TenantId) -> Result<Tenant> {
        let row = self
            .conn
            .prepare_cached("SELECT id, slug, name, created_at FROM tenants WHERE id = ?1")?
            .query_row([id.to_string()], |row| Ok(tenant_from_row(row)))
            .optional()?;
        row.ok_or_else(|| StoreError::TenantNotFound(id.to_string()))?
    }

    pub(crate) fn tenants_impl(&self) -> Result<Vec<Tenant>> {
        let mut statement =
            self.conn.prepare("SELECT id, slug, name, created_at FROM tenants ORDER BY slug")?;
        let mut rows = statement.query([])?;
        let mut tenants = Vec::new();
        while let Some(row) = rows.next()? {
            tenants.push(tenant_from_row(row)?);
        }
        Ok(tenants)
    }

    pub(crate) fn import_impl(
        &mut self,
        tenant: &Tenant,
        batch: &ImportBatch,
        policy: &Policy,
        actor: &str,
    ) -> Result<ImportCounts> {
        let (now, simulated) = (self.now(), self.simulated());
        let keys = self.keys.as_ref().ok_or(StoreError::MasterKeyRequired)?;
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let counts = write_import(&tx, keys, tenant, batch, policy, now)?;
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        let detail = format!(
            "source {}: {} profiles created, {} linked, {} consultations, {} prescriptions, {} history entries",
            batch.source_system, counts.profiles_created, counts.profiles_linked, counts.consultations,
            counts.prescriptions, counts.history_entries
        );
        audit.append(&tx, AuditEvent::new(actor, "import").tenant(tenant.id).detail(detail))?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(counts)
    }

    pub(crate) fn record_encounter_impl(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        at: DateTime<Utc>,
        policy: &Policy,
        actor: &str,
    ) -> Result<DateTime<Utc>> {
        let link = self.require_link(tenant, patient)?;
        let (now, simulated) = (self.now(), self.simulated());
        let keys = self.keys.as_ref().ok_or(StoreError::MasterKeyRequired)?;
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // An encounter recorded outside the API is a completed virtual visit with no reason
        // or notes.
        let encounter = NewEncounter::at(at, "virtual");
        let recorded = write_encounter(&tx, keys, tenant, link, &encounter, policy, now)?;
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        audit.append(
            &tx,
            AuditEvent::new(actor, "encounter.record")
                .tenant(tenant.id)
                .subject(patient)
                .detail(format!("policy {}", policy.version())),
        )?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(recorded.phi_retention_until)
    }

    pub(crate) fn add_id_photo_impl(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        bytes: &[u8],
        uploaded_at: DateTime<Utc>,
        actor: &str,
    ) -> Result<PhotoId> {
        let link = self.require_link(tenant, patient)?;
        let file = self.write_photo_file(tenant, link, bytes)?;
        let (now, simulated) = (self.now(), self.simulated());
        let result = (|| -> Result<()> {
            let tx = self.write_tx()?;
            insert_photo_row(&tx, tenant, link, &file, None, uploaded_at)?;
            let mut audit = AuditAppender::begin(&tx, now, simulated)?;
            audit.append(
                &tx,
                AuditEvent::new(actor, "id_photo.upload")
                    .tenant(tenant.id)
                    .subject(patient)
                    .subject(file.id),
            )?;
            audit.finish(&tx)?;
            tx.commit()?;
            Ok(())
        })();
        if let Err(err) = result {
            file.remove();
            return Err(err);
        }
        Ok(file.id)
    }

    /// Seals an ID photo under the link's data key and writes it to a new file, whose row
    /// the caller inserts with [`insert_photo_row`]. The path is queued for deletion before
    /// the file exists and dequeued in the transaction that writes its row, so a crash in
    /// between never leaves an untracked file: the next lifecycle run deletes it.
    pub(super) fn write_photo_file(
        &self,
        tenant: &Tenant,
        link: i64,
        bytes: &[u8],
    ) -> Result<PhotoFile> {
        let id = PhotoId::new();
        let relative = format!("id-photos/{}/{id}.bin", tenant.id);
        let path = self.blob_path(&relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
        }
        self.conn.execute(
            "INSERT OR IGNORE INTO pending_file_deletions (path) VALUES (?1)",
            [&relative],
        )?;
        let link_owner = link.to_string();
        let id_text = id.to_string();
        let tenant_text = tenant.id.to_string();
        let place = Place { tenant: &tenant_text, table: "id_photos", record: &id_text };
        let key = self.keys()?.data_key(&self.conn, KeyScope::Link, &link_owner, self.now())?;
        let sealed = seal_bytes(&key, place, "file", bytes)?;
        fs::write(&path, &sealed).map_err(|e| StoreError::io(&path, e))?;
        // The digest is of the sealed file, so it reveals nothing about the photo.
        let sha256 = hex::encode(Sha256::digest(&sealed));
        Ok(PhotoFile { id, relative, path, bytes: sealed.len() as u64, sha256 })
    }

    pub(crate) fn add_session_impl(
        &mut self,
        tenant: &Tenant,
        patient: Option<PatientId>,
        times: SessionTimes,
    ) -> Result<SessionId> {
        let link = patient.map(|p| self.require_link(tenant, p)).transpose()?;
        let id = SessionId::new();
        self.conn.execute(
            "INSERT INTO sessions (id, tenant_id, link_id, started_at, expires_at, ended_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            (
                id.to_string(),
                tenant.id.to_string(),
                link,
                format_instant(times.started_at),
                format_instant(times.expires_at),
                times.ended_at.map(format_instant),
            ),
        )?;
        Ok(id)
    }

    pub(crate) fn patient_links_impl(&self, tenant: &Tenant) -> Result<Vec<LinkSummary>> {
        let sql = format!(
            "SELECT {LINK_COLUMNS} FROM patient_links l JOIN tenants t ON t.id = l.tenant_id
             WHERE l.tenant_id = ?1 ORDER BY l.patient_id"
        );
        let mut statement = self.conn.prepare(&sql)?;
        let mut rows = statement.query([tenant.id.to_string()])?;
        let mut links = Vec::new();
        while let Some(row) = rows.next()? {
            links.push(link_from_row(row)?);
        }
        Ok(links)
    }

    pub(crate) fn find_patient_impl(
        &self,
        tenant: &Tenant,
        source_system: &str,
        source_id: &str,
    ) -> Result<Option<PatientId>> {
        let source_index = self.keys()?.source_index(source_system, source_id)?;
        let found: Option<String> = self
            .conn
            .query_row(
                "SELECT p.id FROM patient_profiles p
                 JOIN patient_links l ON l.patient_id = p.id AND l.tenant_id = ?1
                 WHERE p.source_system = ?2 AND p.source_index = ?3",
                (tenant.id.to_string(), source_system, source_index),
                |row| row.get(0),
            )
            .optional()?;
        found.as_deref().map(parse_stored_id).transpose()
    }

    pub(crate) fn patient_profile_impl(
        &self,
        tenant: &Tenant,
        patient: PatientId,
    ) -> Result<PatientProfileView> {
        self.require_link(tenant, patient)?;
        let keys = self.keys()?;
        let id = patient.to_string();
        let place = Place { tenant: CORE_TENANT, table: "patient_profiles", record: &id };
        let sql = format!(
            "SELECT {}, sex FROM patient_profiles WHERE id = ?1",
            PROFILE_COLUMNS.join(", ")
        );
        let (sealed, sex): (Vec<Option<Vec<u8>>>, String) =
            self.conn.prepare_cached(&sql)?.query_row([&id], |row| {
                let sealed = (0..PROFILE_COLUMNS.len())
                    .map(|i| row.get(i))
                    .collect::<rusqlite::Result<_>>()?;
                Ok((sealed, row.get(PROFILE_COLUMNS.len())?))
            })?;
        let mut opened: Vec<Option<String>> = Vec::with_capacity(sealed.len());
        for (column, value) in PROFILE_COLUMNS.iter().zip(sealed) {
            opened.push(
                value.map(|bytes| keys.open_text(&self.conn, place, column, &bytes)).transpose()?,
            );
        }
        let mut field = opened.into_iter();
        let mut next = || field.next().flatten();
        Ok(PatientProfileView {
            patient_id: patient,
            given_name: next().unwrap_or_default(),
            family_name: next().unwrap_or_default(),
            birth_date: next().unwrap_or_default(),
            death_date: next(),
            ssn: next(),
            phone: next(),
            email: next(),
            address_line: next().unwrap_or_default(),
            city: next().unwrap_or_default(),
            state: next().unwrap_or_default(),
            postal_code: next().unwrap_or_default(),
            sex,
        })
    }

    pub(crate) fn read_id_photo_impl(&self, tenant: &Tenant, photo: PhotoId) -> Result<Vec<u8>> {
        let id = photo.to_string();
        let found: Option<String> = self
            .conn
            .query_row(
                "SELECT file_name FROM id_photos WHERE id = ?1 AND tenant_id = ?2",
                (&id, tenant.id.to_string()),
                |row| row.get(0),
            )
            .optional()?;
        let Some(relative) = found else {
            return Err(StoreError::PhotoNotFound { tenant: tenant.slug.clone(), photo: id });
        };
        let path = self.blob_path(&relative);
        let sealed = fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
        let tenant_text = tenant.id.to_string();
        let place = Place { tenant: &tenant_text, table: "id_photos", record: &id };
        let plain = self.keys()?.open_bytes(&self.conn, place, "file", &sealed)?;
        Ok(plain.to_vec())
    }

    pub(crate) fn providers_impl(&self, tenant: &Tenant) -> Result<Vec<ProviderView>> {
        let keys = self.keys()?;
        let tenant_text = tenant.id.to_string();
        let mut statement = self.conn.prepare(
            "SELECT id, name, specialty, license_state FROM providers WHERE tenant_id = ?1 ORDER BY id",
        )?;
        let mut rows = statement.query([&tenant_text])?;
        let mut providers = Vec::new();
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            let sealed: Vec<u8> = row.get(1)?;
            let place = Place { tenant: &tenant_text, table: "providers", record: &id };
            let name = keys.open_text(&self.conn, place, "name", &sealed)?;
            providers.push(ProviderView {
                name,
                specialty: row.get(2)?,
                license_state: row.get(3)?,
                id,
            });
        }
        Ok(providers)
    }

    pub(crate) fn links_of_patient_impl(&self, patient: PatientId) -> Result<Vec<LinkSummary>> {
        let sql = format!(
            "SELECT {LINK_COLUMNS} FROM patient_links l JOIN tenants t ON t.id = l.tenant_id
             WHERE l.patient_id = ?1 ORDER BY t.slug"
        );
        let mut statement = self.conn.prepare_cached(&sql)?;
        let mut rows = statement.query([patient.to_string()])?;
        let mut links = Vec::new();
        while let Some(row) = rows.next()? {
            links.push(link_from_row(row)?);
        }
        Ok(links)
    }

    pub(crate) fn patient_link_impl(
        &self,
        tenant: &Tenant,
        patient: PatientId,
    ) -> Result<LinkDetail> {
        let key = self.require_link(tenant, patient)?;
        let sql = format!("SELECT {LINK_COLUMNS} FROM patient_links l JOIN tenants t ON t.id = l.tenant_id WHERE l.id = ?1");
        let link =
            self.conn.prepare_cached(&sql)?.query_row([key], |row| Ok(link_from_row(row)))??;
        let count = |table: &str| -> Result<u64> {
            let sql = format!("SELECT count(*) FROM {table} WHERE link_id = ?1");
            let mut statement = self.conn.prepare_cached(&sql)?;
            Ok(statement.query_row([key], |row| row.get::<_, i64>(0))? as u64)
        };
        let counts = LinkCounts {
            consultations: count("consultations")?,
            prescriptions: count("prescriptions")?,
            history_entries: count("medical_history")?,
            intake_forms: count("intake_forms")?,
            id_photos: count("id_photos")?,
            sessions: count("sessions")?,
        };
        let id_photos = self.link_records(
            "SELECT id, uploaded_at FROM id_photos WHERE link_id = ?1 ORDER BY uploaded_at",
            key,
            &link,
        )?;
        let sessions = self.link_records(
            "SELECT id, ends_at FROM sessions WHERE link_id = ?1 ORDER BY ends_at",
            key,
            &link,
        )?;
        Ok(LinkDetail { link, counts, id_photos, sessions })
    }

    fn link_records(
        &self,
        sql: &str,
        key: i64,
        link: &LinkSummary,
    ) -> Result<Vec<RecordCandidate>> {
        let mut statement = self.conn.prepare_cached(sql)?;
        let mut rows = statement.query([key])?;
        let mut records = Vec::new();
        while let Some(row) = rows.next()? {
            records.push(RecordCandidate {
                id: row.get(0)?,
                tenant_id: link.tenant_id,
                tenant_slug: link.tenant_slug.clone(),
                patient_id: Some(link.patient_id),
                since: parse_stored_instant(&row.get::<_, String>(1)?)?,
            });
        }
        Ok(records)
    }

    pub(crate) fn place_hold_impl(
        &mut self,
        tenant: &Tenant,
        scope: HoldScope,
        matter: &str,
        reason: &str,
        actor: &str,
    ) -> Result<LegalHold> {
        let hold = LegalHold {
            id: HoldId::new(),
            tenant_id: tenant.id,
            scope,
            matter: matter.to_owned(),
            reason: reason.to_owned(),
            placed_at: self.now(),
            placed_by: actor.to_owned(),
            released_at: None,
            released_by: None,
        };
        let patient = match scope {
            HoldScope::Patient(patient) => Some(patient.to_string()),
            HoldScope::WholeTenant => None,
        };
        let simulated = self.simulated();
        let tx = self.write_tx()?;
        // Checked inside the transaction, so a run that purges the patient concurrently
        // either finishes first (and the hold is rejected) or finds the hold in its own check.
        if let HoldScope::Patient(patient) = scope {
            if link_key(&tx, tenant.id, patient)?.is_none() {
                return Err(StoreError::PatientNotFound {
                    tenant: tenant.slug.clone(),
                    patient: patient.to_string(),
                });
            }
        }
        tx.execute(
            "INSERT INTO legal_holds (id, tenant_id, patient_id, matter, reason, placed_at, placed_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            (hold.id.to_string(), tenant.id.to_string(), &patient, matter, reason, format_instant(hold.placed_at), actor),
        )?;
        let mut audit = AuditAppender::begin(&tx, hold.placed_at, simulated)?;
        let mut event = AuditEvent::new(actor, "hold.place")
            .tenant(tenant.id)
            .subject(hold.id)
            .detail(if patient.is_some() { "scope patient" } else { "scope tenant" });
        if let Some(patient) = &patient {
            event = event.subject(patient);
        }
        audit.append(&tx, event)?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(hold)
    }

    pub(crate) fn release_hold_impl(
        &mut self,
        tenant: Option<TenantId>,
        id: HoldId,
        actor: &str,
    ) -> Result<LegalHold> {
        let (now, simulated) = (self.now(), self.simulated());
        let tx = self.write_tx()?;
        let sql = format!("SELECT {HOLD_COLUMNS} FROM legal_holds WHERE id = ?1");
        let hold = tx
            .query_row(&sql, [id.to_string()], |row| Ok(hold_from_row(row)))
            .optional()?
            .transpose()?
            .filter(|hold| tenant.is_none_or(|tenant| hold.tenant_id == tenant))
            .ok_or_else(|| StoreError::HoldNotFound(id.to_string()))?;
        if !hold.is_active() {
            return Err(StoreError::HoldAlreadyReleased(id.to_string()));
        }
        tx.execute(
            "UPDATE legal_holds SET released_at = ?1, released_by = ?2 WHERE id = ?3",
            (format_instant(now), actor, id.to_string()),
        )?;
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        audit.append(
            &tx,
            AuditEvent::new(actor, "hold.release").tenant(hold.tenant_id).subject(id),
        )?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(LegalHold { released_at: Some(now), released_by: Some(actor.to_owned()), ..hold })
    }

    pub(crate) fn holds_impl(
        &self,
        tenant: Option<TenantId>,
        include_released: bool,
    ) -> Result<Vec<LegalHold>> {
        let sql = format!(
            "SELECT {HOLD_COLUMNS} FROM legal_holds
             WHERE (?1 IS NULL OR tenant_id = ?1) AND (?2 OR released_at IS NULL)
             ORDER BY placed_at, id"
        );
        let mut statement = self.conn.prepare_cached(&sql)?;
        let mut rows = statement.query((tenant.map(|t| t.to_string()), include_released))?;
        let mut holds = Vec::new();
        while let Some(row) = rows.next()? {
            holds.push(hold_from_row(row)?);
        }
        Ok(holds)
    }
}

/// Core profile fields sealed under the profile key, in column order.
const PROFILE_COLUMNS: [&str; 11] = [
    "given_name",
    "family_name",
    "birth_date",
    "death_date",
    "ssn",
    "phone",
    "email",
    "address_line",
    "city",
    "state",
    "postal_code",
];

/// The tenant part of the associated data of core profile fields, which belong to no tenant.
const CORE_TENANT: &str = "core";

fn profile_values(profile: &NewPatientProfile) -> [Option<&str>; 11] {
    [
        Some(profile.given_name.as_str()),
        Some(profile.family_name.as_str()),
        Some(profile.birth_date.as_str()),
        profile.death_date.as_deref(),
        profile.ssn.as_deref(),
        profile.phone.as_deref(),
        profile.email.as_deref(),
        Some(profile.address_line.as_str()),
        Some(profile.city.as_str()),
        Some(profile.state.as_str()),
        Some(profile.postal_code.as_str()),
    ]
}

/// Returns true when a stored profile and an imported one name the same person: given name,
/// family name and birth date agree, and so does the SSN when both have one.
fn same_person(
    tx: &Connection,
    keys: &Keys,
    patient: &str,
    profile: &NewPatientProfile,
) -> Result<bool> {
    let place = Place { tenant: CORE_TENANT, table: "patient_profiles", record: patient };
    let row: (Vec<u8>, Vec<u8>, Vec<u8>, Option<Vec<u8>>) = tx
        .prepare_cached(
            "SELECT given_name, family_name, birth_date, ssn FROM patient_profiles WHERE id = ?1",
        )?
        .query_row([patient], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))?;
    let given = keys.open_text(tx, place, "given_name", &row.0)?;
    let family = keys.open_text(tx, place, "family_name", &row.1)?;
    let birth = keys.open_text(tx, place, "birth_date", &row.2)?;
    let ssn = row.3.map(|sealed| keys.open_text(tx, place, "ssn", &sealed)).transpose()?;
    let ssn_differs = matches!((&ssn, &profile.ssn), (Some(a), Some(b)) if a != b);
    Ok(given == profile.given_name
        && family == profile.family_name
        && birth == profile.birth_date
        && !ssn_differs)
}

fn insert_profile(
    tx: &Connection,
    keys: &Keys,
    profile: &NewPatientProfile,
    source_index: &str,
    now: DateTime<Utc>,
) -> Result<PatientId> {
    let id = PatientId::new();
    let id_text = id.to_string();
    let key = keys.data_key(tx, KeyScope::Profile, &id_text, now)?;
    let place = Place { tenant: CORE_TENANT, table: "patient_profiles", record: &id_text };
    let mut sealed: Vec<Option<Vec<u8>>> = Vec::with_capacity(PROFILE_COLUMNS.len());
    for (column, value) in PROFILE_COLUMNS.iter().zip(profile_values(profile)) {
        sealed.push(seal_optional(&key, place, column, value)?);
    }
    tx.prepare_cached(
        "INSERT INTO patient_profiles (id, source_system, source_index, given_name, family_name,
         birth_date, death_date, ssn, phone, email, address_line, city, state, postal_code, sex,
         created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(rusqlite::params![
        id_text,
        profile.source_system,
        source_index,
        sealed[0],
        sealed[1],
        sealed[2],
        sealed[3],
        sealed[4],
        sealed[5],
        sealed[6],
        sealed[7],
        sealed[8],
        sealed[9],
        sealed[10],
        profile.sex,
        format_instant(now),
    ])?;
    Ok(id)
}

/// Writes an import batch inside an open transaction, sealing every PHI field.
fn write_import(
    tx: &Connection,
    keys: &Keys,
    tenant: &Tenant,
    batch: &ImportBatch,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<ImportCounts> {
    let mut counts = ImportCounts::default();
    let now_text = format_instant(now);
    let tenant_id = tenant.id.to_string();

    let mut links: HashMap<&str, (i64, PatientId)> = HashMap::new();
    let mut link_keys: HashMap<i64, SealingKey> = HashMap::new();
    let mut already_linked = 0usize;
    let mut mismatched = 0usize;
    for profile in &batch.patients {
        let source_index = keys.source_index(&profile.source_system, &profile.source_id)?;
        let existing: Option<String> = tx
            .prepare_cached(
                "SELECT id FROM patient_profiles WHERE source_system = ?1 AND source_index = ?2",
            )?
            .query_row((&profile.source_system, &source_index), |row| row.get(0))
            .optional()?;
        let patient = match existing {
            // One source id must mean one person: a profile is shared only when the
            // identifying fields agree, so a tenant cannot attach itself to another tenant's
            // patient by reusing an id.
            Some(id) if !same_person(tx, keys, &id, profile)? => {
                mismatched += 1;
                continue;
            }
            Some(id) => {
                counts.profiles_linked += 1;
                parse_stored_id::<PatientId>(&id)?
            }
            None => {
                counts.profiles_created += 1;
                insert_profile(tx, keys, profile, &source_index, now)?
            }
        };
        if link_key(tx, tenant.id, patient)?.is_some() {
            already_linked += 1;
            continue;
        }
        // Retention is set once every consultation is known, below.
        tx.prepare_cached(
            "INSERT INTO patient_links (tenant_id, patient_id, created_at, phi_retention_until) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute((&tenant_id, patient.to_string(), &now_text, format_instant(policy.phi_retention_until(&tenant.slug, now))))?;
        let link = tx.last_insert_rowid();
        link_keys.insert(link, keys.data_key(tx, KeyScope::Link, &link.to_string(), now)?);
        links.insert(profile.source_id.as_str(), (link, patient));
        counts.links_created += 1;
    }
    if already_linked > 0 {
        return Err(StoreError::AlreadyImported {
            tenant: tenant.slug.clone(),
            count: already_linked,
        });
    }
    if mismatched > 0 {
        return Err(StoreError::ProfileMismatch { count: mismatched });
    }

    let tenant_key = keys.data_key(tx, KeyScope::Tenant, &tenant_id, now)?;
    let mut providers: HashMap<&str, String> = HashMap::new();
    for provider in &batch.providers {
        let id = ProviderId::new().to_string();
        let place = Place { tenant: &tenant_id, table: "providers", record: &id };
        tx.prepare_cached(
            "INSERT INTO providers (id, tenant_id, source_id, name, specialty, organization, license_number, license_state, dea_number)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (tenant_id, source_id) DO NOTHING",
        )?
        .execute(rusqlite::params![
            id, tenant_id, provider.source_id,
            seal_text(&tenant_key, place, "name", &provider.name)?,
            provider.specialty, provider.organization,
            seal_optional(&tenant_key, place, "license_number", provider.license_number.as_deref())?,
            provider.license_state,
            seal_optional(&tenant_key, place, "dea_number", provider.dea_number.as_deref())?,
        ])?;
        let stored: String = tx
            .prepare_cached("SELECT id FROM providers WHERE tenant_id = ?1 AND source_id = ?2")?
            .query_row((&tenant_id, &provider.source_id), |row| row.get(0))?;
        if stored == id {
            counts.providers += 1;
        }
        providers.insert(provider.source_id.as_str(), stored);
    }

    let link_of = |source: &str| -> Result<(i64, PatientId)> {
        links.get(source).copied().ok_or_else(|| {
            StoreError::InconsistentBatch(
                "a row references a patient that is not in the batch".into(),
            )
        })
    };
    let key_of = |link: i64| -> Result<&SealingKey> {
        link_keys
            .get(&link)
            .ok_or_else(|| StoreError::InconsistentBatch("a link has no data key".into()))
    };
    let mut last_encounter: HashMap<i64, DateTime<Utc>> = HashMap::new();
    let mut consultations: HashMap<&str, String> = HashMap::new();
    for consultation in &batch.consultations {
        let (link, _) = link_of(&consultation.patient_source_id)?;
        let key = key_of(link)?;
        let provider = consultation.provider_source_id.as_deref().and_then(|p| providers.get(p));
        let id = ConsultationId::new().to_string();
        let place = Place { tenant: &tenant_id, table: "consultations", record: &id };
        // The source system's encounter id is not kept: it identifies the patient's visit.
        tx.prepare_cached(
            "INSERT INTO consultations (id, tenant_id, link_id, provider_id, status, encounter_class, reason, notes, started_at, ended_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(rusqlite::params![
            id, tenant_id, link, provider, consultation.status, consultation.encounter_class,
            seal_text(key, place, "reason", &consultation.reason)?,
            seal_text(key, place, "notes", &consultation.notes)?,
            format_instant(consultation.started_at), consultation.ended_at.map(format_instant),
        ])?;
        let encounter_end = consultation.ended_at.unwrap_or(consultation.started_at);
        let latest = last_encounter.entry(link).or_insert(encounter_end);
        *latest = (*latest).max(encounter_end);
        consultations.insert(consultation.source_id.as_str(), id);
        counts.consultations += 1;
    }

    for prescription in &batch.prescriptions {
        let (link, _) = link_of(&prescription.patient_source_id)?;
        let key = key_of(link)?;
        let consultation =
            prescription.consultation_source_id.as_deref().and_then(|c| consultations.get(c));
        let id = Uuid::new_v4().to_string();
        let place = Place { tenant: &tenant_id, table: "prescriptions", record: &id };
        tx.prepare_cached(
            "INSERT INTO prescriptions (id, tenant_id, link_id, consultation_id, code, description, dispenses, controlled, started_at, stopped_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(rusqlite::params![
            id, tenant_id, link, consultation,
            seal_text(key, place, "code", &prescription.code)?,
            seal_text(key, place, "description", &prescription.description)?,
            prescription.dispenses, prescription.controlled,
            format_instant(prescription.started_at), prescription.stopped_at.map(format_instant),
        ])?;
        counts.prescriptions += 1;
    }

    for entry in &batch.history {
        let (link, _) = link_of(&entry.patient_source_id)?;
        let key = key_of(link)?;
        let consultation =
            entry.consultation_source_id.as_deref().and_then(|c| consultations.get(c));
        let id = Uuid::new_v4().to_string();
        let place = Place { tenant: &tenant_id, table: "medical_history", record: &id };
        tx.prepare_cached(
            "INSERT INTO medical_history (id, tenant_id, link_id, consultation_id, kind, code, description, started_at, stopped_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(rusqlite::params![
            id, tenant_id, link, consultation, entry.kind,
            seal_text(key, place, "code", &entry.code)?,
            seal_text(key, place, "description", &entry.description)?,
            format_instant(entry.started_at), entry.stopped_at.map(format_instant),
        ])?;
        counts.history_entries += 1;
    }

    for (link, last) in last_encounter {
        tx.prepare_cached(
            "UPDATE patient_links SET last_medical_encounter_at = ?1, phi_retention_until = ?2 WHERE id = ?3",
        )?
        .execute((format_instant(last), format_instant(policy.phi_retention_until(&tenant.slug, last)), link))?;
    }
    Ok(counts)
}

/// A sealed ID photo written to its file under the data directory, whose row is not stored
/// yet.
pub(super) struct PhotoFile {
    pub id: PhotoId,
    /// The path under the blob folder, as the row and the deletion queue name it.
    pub relative: String,
    pub path: PathBuf,
    /// Size of the sealed file.
    pub bytes: u64,
    /// SHA-256 of the sealed file, in hex.
    pub sha256: String,
}

impl PhotoFile {
    /// Deletes the file of a photo whose row was not written. Should the removal fail, the
    /// path stays queued and the next lifecycle run deletes the file.
    pub(super) fn remove(&self) {
        if let Err(error) = fs::remove_file(&self.path) {
            let photo = self.id;
            tracing::warn!(%photo, %error, "removing the file of an unstored ID photo failed");
        }
    }
}

/// Inserts the row of a written photo file and dequeues its path from the pending
/// deletions, inside the caller's transaction.
pub(super) fn insert_photo_row(
    conn: &Connection,
    tenant: &Tenant,
    link: i64,
    file: &PhotoFile,
    content_type: Option<&str>,
    uploaded_at: DateTime<Utc>,
) -> Result<()> {
    conn.execute(
        "INSERT INTO id_photos (id, tenant_id, link_id, file_name, bytes, sha256, uploaded_at,
         content_type) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        rusqlite::params![
            file.id.to_string(),
            tenant.id.to_string(),
            link,
            &file.relative,
            file.bytes as i64,
            &file.sha256,
            format_instant(uploaded_at),
            content_type,
        ],
    )?;
    conn.execute("DELETE FROM pending_file_deletions WHERE path = ?1", [&file.relative])?;
    Ok(())
}
