//! Tenants, encounters, ID photos, sessions, links and legal holds.
//!
//! Work on one tenant's rows runs in [`PgStore::tenant_tx`], so row-level security confines
//! it to that tenant even where a query omits its own `tenant_id` condition. Tenant
//! administration, the cross-tenant link listing and hold release run as the operator.

use chrono::{DateTime, Utc};
use medconnect_domain::audit::AuditEvent;
use medconnect_domain::model::{
    validate_slug, HoldScope, ImportBatch, ImportCounts, LegalHold, Tenant,
};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::format_instant;
use medconnect_domain::{HoldId, PatientId, PhotoId, SessionId, TenantId};
use postgres::{Row, Transaction};
use sha2::{Digest, Sha256};

use super::clinical::write_encounter;
use super::import::{write_import, CORE_TENANT, PROFILE_COLUMNS};
use super::{PgAudit, PgStore};
use crate::keys::{seal_bytes, KeyScope, Keys, Place};
use crate::sqlite::values::{parse_optional_instant, parse_stored_id, parse_stored_instant};
use crate::{
    LinkCounts, LinkDetail, LinkSummary, NewEncounter, PatientProfileView, ProviderView,
    RecordCandidate, Result, SessionTimes, StoreError,
};

pub(super) const LINK_COLUMNS: &str =
    "t.id, t.slug, l.patient_id, l.last_medical_encounter_at, l.phi_retention_until, l.created_at";

pub(super) fn link_from_row(row: &Row) -> Result<LinkSummary> {
    Ok(LinkSummary {
        tenant_id: parse_stored_id(row.get(0))?,
        tenant_slug: row.get(1),
        patient_id: parse_stored_id(row.get(2))?,
        last_medical_encounter_at: parse_optional_instant(row.get(3))?,
        phi_retention_until: parse_stored_instant(row.get(4))?,
        created_at: parse_stored_instant(row.get(5))?,
    })
}

const TENANT_COLUMNS: &str = "id, slug, name, created_at";

fn tenant_from_row(row: &Row) -> Result<Tenant> {
    Ok(Tenant {
        id: parse_stored_id(row.get(0))?,
        slug: row.get(1),
        name: row.get(2),
        created_at: parse_stored_instant(row.get(3))?,
    })
}

const HOLD_COLUMNS: &str =
    "id, tenant_id, patient_id, matter, reason, placed_at, placed_by, released_at, released_by";

fn hold_from_row(row: &Row) -> Result<LegalHold> {
    let scope = match row.get::<_, Option<&str>>(2) {
        Some(id) => HoldScope::Patient(parse_stored_id(id)?),
        None => HoldScope::WholeTenant,
    };
    Ok(LegalHold {
        id: parse_stored_id(row.get(0))?,
        tenant_id: parse_stored_id(row.get(1))?,
        scope,
        matter: row.get(3),
        reason: row.get(4),
        placed_at: parse_stored_instant(row.get(5))?,
        placed_by: row.get(6),
        released_at: parse_optional_instant(row.get(7))?,
        released_by: row.get(8),
    })
}

/// Returns the integer key of a patient's link to a tenant.
pub(super) fn link_key(
    tx: &mut Transaction<'_>,
    tenant: TenantId,
    patient: PatientId,
) -> Result<Option<i64>> {
    let row = tx.query_opt(
        "SELECT id FROM patient_links WHERE tenant_id = $1 AND patient_id = $2",
        &[&tenant.to_string(), &patient.to_string()],
    )?;
    Ok(row.map(|row| row.get(0)))
}

fn patient_not_found(tenant: &Tenant, patient: PatientId) -> StoreError {
    StoreError::PatientNotFound { tenant: tenant.slug.clone(), patient: patient.to_string() }
}

pub(super) fn require_link(
    tx: &mut Transaction<'_>,
    tenant: &Tenant,
    patient: PatientId,
) -> Result<i64> {
    link_key(tx, tenant.id, patient)?.ok_or_else(|| patient_not_found(tenant, patient))
}

/// Returns the key of a patient's link and locks the link row against deletion until the
/// transaction ends. A disposal on another node that claimed the link first makes this wait
/// and then find no link. A disposal that comes later skips the locked row.
pub(super) fn lock_link(
    tx: &mut Transaction<'_>,
    tenant: &Tenant,
    patient: PatientId,
) -> Result<i64> {
    let row = tx.query_opt(
        "SELECT id FROM patient_links WHERE tenant_id = $1 AND patient_id = $2 FOR KEY SHARE",
        &[&tenant.id.to_string(), &patient.to_string()],
    )?;
    row.map(|row| row.get(0)).ok_or_else(|| patient_not_found(tenant, patient))
}

impl PgStore {
    pub(crate) fn create_tenant_impl(
        &mut self,
        slug: &str,
        name: &str,
        actor: &str,
    ) -> Result<Tenant> {
        validate_slug(slug)?;
        let tenant = Tenant {
            id: TenantId::new(),
            slug: slug.to_owned(),
            name: name.to_owned(),
            created_at: self.now(),
        };
        let (at, simulated) = (self.now(), self.simulated());
        self.operator_tx(|tx| {
            // Two nodes creating the same slug at once: the second waits for the first and
            // then inserts nothing.
            let inserted = tx.execute(
                "INSERT INTO tenants (id, slug, name, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (slug) DO NOTHING",
                &[&tenant.id.to_string(), &slug, &name, &format_instant(tenant.created_at)],
            )?;
            if inserted == 0 {
                return Err(StoreError::TenantExists(slug.to_owned()));
            }
            let mut audit = PgAudit::begin(tx, at, simulated)?;
            let event =
                AuditEvent::new(actor, "tenant.create").tenant(tenant.id).subject(tenant.id);
            audit.append(tx, event)?;
            audit.finish(tx)
        })?;
        Ok(tenant)
    }

    pub(crate) fn tenant_by_slug_impl(&self, slug: &str) -> Result<Tenant> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE slug = $1");
        let row = self.operator_tx(|tx| Ok(tx.query_opt(&sql, &[&slug])?))?;
        let row = row.ok_or_else(|| StoreError::TenantNotFound(slug.to_owned()))?;
        tenant_from_row(&row)
    }

    pub(crate) fn tenant_impl(&self, id: TenantId) -> Result<Tenant> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1");
        let row = self.operator_tx(|tx| Ok(tx.query_opt(&sql, &[&id.to_string()])?))?;
        let row = row.ok_or_else(|| StoreError::TenantNotFound(id.to_string()))?;
        tenant_from_row(&row)
    }

    pub(crate) fn tenants_impl(&self) -> Result<Vec<Tenant>> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY slug");
        let rows = self.operator_tx(|tx| Ok(tx.query(&sql, &[])?))?;
        rows.iter().map(tenant_from_row).collect()
    }

    pub(crate) fn import_impl(
        &mut self,
        tenant: &Tenant,
        batch: &ImportBatch,
        policy: &Policy,
        actor: &str,
    ) -> Result<ImportCounts> {
        let (now, simulated) = (self.now(), self.simulated());
        let keys = self.keys()?;
        self.tenant_tx(tenant.id, |tx| {
            let counts = write_import(tx, keys, tenant, batch, policy, now)?;
            let mut audit = PgAudit::begin(tx, now, simulated)?;
            let detail = format!(
                "source {}: {} profiles created, {} linked, {} consultations, {} prescriptions, \
                 {} history entries",
                batch.source_system,
                counts.profiles_created,
                counts.profiles_linked,
                counts.consultations,
                counts.prescriptions,
                counts.history_entries
            );
            let event = AuditEvent::new(actor, "import").tenant(tenant.id).detail(detail);
            audit.append(tx, event)?;
            audit.finish(tx)?;
            Ok(counts)
        })
    }

    pub(crate) fn record_encounter_impl(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        at: DateTime<Utc>,
        policy: &Policy,
        actor: &str,
    ) -> Result<DateTime<Utc>> {
        let (now, simulated) = (self.now(), self.simulated());
        self.tenant_tx(tenant.id, |tx| {
            let keys = self.keys()?;
            // An encounter recorded outside the API is a completed virtual visit with no
            // reason or notes.
            let encounter = NewEncounter::at(at, "virtual");
            let recorded = write_encounter(tx, keys, tenant, patient, &encounter, policy, now)?;
            let mut audit = PgAudit::begin(tx, now, simulated)?;
            let event = AuditEvent::new(actor, "encounter.record")
                .tenant(tenant.id)
                .subject(patient)
                .detail(format!("policy {}", policy.version()));
            audit.append(tx, event)?;
            audit.finish(tx)?;
            Ok(recorded.phi_retention_until)
        })
    }

    /// Stores an ID photo sealed under the link key. The sealed bytes live in the row,
    /// because nodes share no file system.
    pub(crate) fn add_id_photo_impl(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        bytes: &[u8],
        uploaded_at: DateTime<Utc>,
        actor: &str,
    ) -> Result<PhotoId> {
        let (now, simulated) = (self.now(), self.simulated());
        let id = PhotoId::new();
        self.tenant_tx(tenant.id, |tx| {
            let link = lock_link(tx, tenant, patient)?;
            let photo = NewPhotoRow { id, bytes, content_type: None, uploaded_at };
            insert_photo(tx, self.keys()?, tenant, link, &photo, now)?;
            let mut audit = PgAudit::begin(tx, now, simulated)?;
            let event = AuditEvent::new(actor, "id_photo.upload")
                .tenant(tenant.id)
                .subject(patient)
                .subject(id);
            audit.append(tx, event)?;
            audit.finish(tx)
        })?;
        Ok(id)
    }

    pub(crate) fn add_session_impl(
        &mut self,
        tenant: &Tenant,
        patient: Option<PatientId>,
        times: SessionTimes,
    ) -> Result<SessionId> {
        let id = SessionId::new();
        self.tenant_tx(tenant.id, |tx| {
            let link = patient.map(|p| lock_link(tx, tenant, p)).transpose()?;
            tx.execute(
                "INSERT INTO sessions (id, tenant_id, link_id, started_at, expires_at, ended_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &id.to_string(),
                    &tenant.id.to_string(),
                    &link,
                    &format_instant(times.started_at),
                    &format_instant(times.expires_at),
                    &times.ended_at.map(format_instant),
                ],
            )?;
            Ok(())
        })?;
        Ok(id)
    }

    pub(crate) fn patient_links_impl(&self, tenant: &Tenant) -> Result<Vec<LinkSummary>> {
        self.tenant_tx(tenant.id, |tx| tenant_links(tx, tenant))
    }

    pub(crate) fn find_patient_impl(
        &self,
        tenant: &Tenant,
        source_system: &str,
        source_id: &str,
    ) -> Result<Option<PatientId>> {
        let source_index = self.keys()?.source_index(source_system, source_id)?;
        let found = self.tenant_tx(tenant.id, |tx| {
            let row = tx.query_opt(
                "SELECT p.id FROM patient_profiles p
                 JOIN patient_links l ON l.patient_id = p.id AND l.tenant_id = $1
                 WHERE p.source_system = $2 AND p.source_index = $3",
                &[&tenant.id.to_string(), &source_system, &source_index],
            )?;
            Ok(row.map(|row| row.get::<_, String>(0)))
        })?;
        found.as_deref().map(parse_stored_id).transpose()
    }

    pub(crate) fn patient_profile_impl(
        &self,
        tenant: &Tenant,
        patient: PatientId,
    ) -> Result<PatientProfileView> {
        self.tenant_tx(tenant.id, |tx| {
            require_link(tx, tenant, patient)?;
            open_profile(tx, self.keys()?, patient)
        })
    }

    pub(crate) fn read_id_photo_impl(&self, tenant: &Tenant, photo: PhotoId) -> Result<Vec<u8>> {
        self.tenant_tx(tenant.id, |tx| open_id_photo(tx, self.keys()?, tenant, photo))
    }
    pub(crate) fn providers_impl(&self, tenant: &Tenant) -> Result<Vec<ProviderView>> {
        let keys = self.keys()?;
        let tenant_text = tenant.id.to_string();
        self.tenant_tx(tenant.id, |tx| {
            let rows = tx.query(
                "SELECT id, name, specialty, license_state FROM providers WHERE tenant_id = $1
                 ORDER BY id",
                &[&tenant_text],
            )?;
            let mut providers = Vec::with_capacity(rows.len());
            for row in rows {
                let id: String = row.get(0);
                let sealed: Vec<u8> = row.get(1);
                let place = Place { tenant: &tenant_text, table: "providers", record: &id };
                let name = keys.open_text(&mut *tx, place, "name", &sealed)?;
                providers.push(ProviderView {
                    name,
                    specialty: row.get(2),
                    license_state: row.get(3),
                    id,
                });
            }
            Ok(providers)
        })
    }

    pub(crate) fn links_of_patient_impl(&self, patient: PatientId) -> Result<Vec<LinkSummary>> {
        let sql = format!(
            "SELECT {LINK_COLUMNS} FROM patient_links l JOIN tenants t ON t.id = l.tenant_id
             WHERE l.patient_id = $1 ORDER BY t.slug"
        );
        let rows = self.operator_tx(|tx| Ok(tx.query(&sql, &[&patient.to_string()])?))?;
        rows.iter().map(link_from_row).collect()
    }

    pub(crate) fn patient_link_impl(
        &self,
        tenant: &Tenant,
        patient: PatientId,
    ) -> Result<LinkDetail> {
        self.tenant_tx(tenant.id, |tx| link_detail(tx, tenant, patient))
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
        self.tenant_tx(tenant.id, |tx| {
            // Checked inside the transaction with the link locked, so a run that purges the
            // patient concurrently either finishes first (and the hold is rejected) or skips
            // the link until the hold is in.
            // Waits for the tenant's disposals under way to commit; the ones that start after
            // this commits see the hold. A patient's photos and sessions are disposed of
            // without their link, so a patient hold takes this lock too.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('medconnect-hold:' || $1, 0))",
                &[&tenant.id.to_string()],
            )?;
            if let HoldScope::Patient(patient) = scope {
                lock_link(tx, tenant, patient)?;
            }
            tx.execute(
                "INSERT INTO legal_holds (id, tenant_id, patient_id, matter, reason, placed_at,
                 placed_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &hold.id.to_string(),
                    &tenant.id.to_string(),
                    &patient,
                    &matter,
                    &reason,
                    &format_instant(hold.placed_at),
                    &actor,
                ],
            )?;
            let mut audit = PgAudit::begin(tx, hold.placed_at, simulated)?;
            let mut event = AuditEvent::new(actor, "hold.place")
                .tenant(tenant.id)
                .subject(hold.id)
                .detail(if patient.is_some() { "scope patient" } else { "scope tenant" });
            if let Some(patient) = &patient {
                event = event.subject(patient);
            }
            audit.append(tx, event)?;
            audit.finish(tx)
        })?;
        Ok(hold)
    }

    pub(crate) fn release_hold_impl(
        &mut self,
        tenant: Option<TenantId>,
        id: HoldId,
        actor: &str,
    ) -> Result<LegalHold> {
        let (now, simulated) = (self.now(), self.simulated());
        let sql = format!("SELECT {HOLD_COLUMNS} FROM legal_holds WHERE id = $1 FOR UPDATE");
        // The application role may not update holds, so a tenant's release also runs on the
        // operator connection, and the tenant is checked here instead of by row-level security.
        self.operator_tx(|tx| {
            // The row lock makes a second release of the same hold wait, then see it released.
            let row = tx.query_opt(&sql, &[&id.to_string()])?;
            let hold = row
                .as_ref()
                .map(hold_from_row)
                .transpose()?
                .filter(|hold| tenant.is_none_or(|tenant| hold.tenant_id == tenant))
                .ok_or_else(|| StoreError::HoldNotFound(id.to_string()))?;
            if !hold.is_active() {
                return Err(StoreError::HoldAlreadyReleased(id.to_string()));
            }
            tx.execute(
                "UPDATE legal_holds SET released_at = $1, released_by = $2 WHERE id = $3",
                &[&format_instant(now), &actor, &id.to_string()],
            )?;
            let mut audit = PgAudit::begin(tx, now, simulated)?;
            let event = AuditEvent::new(actor, "hold.release").tenant(hold.tenant_id).subject(id);
            audit.append(tx, event)?;
            audit.finish(tx)?;
            Ok(LegalHold { released_at: Some(now), released_by: Some(actor.to_owned()), ..hold })
        })
    }

    pub(crate) fn holds_impl(
        &self,
        tenant: Option<TenantId>,
        include_released: bool,
    ) -> Result<Vec<LegalHold>> {
        let sql = format!(
            "SELECT {HOLD_COLUMNS} FROM legal_holds
             WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2 OR released_at IS NULL)
             ORDER BY placed_at, id"
        );
        let tenant = tenant.map(|t| t.to_string());
        let rows = self.operator_tx(|tx| Ok(tx.query(&sql, &[&tenant, &include_released])?))?;
        rows.iter().map(hold_from_row).collect()
    }
}

/// Lists a link's ID photos or sessions, as `sql` selects them: id, then retention basis.
fn link_records(
    tx: &mut Transaction<'_>,
    sql: &str,
    key: i64,
    link: &LinkSummary,
) -> Result<Vec<RecordCandidate>> {
    let rows = tx.query(sql, &[&key])?;
    rows.iter()
        .map(|row| {
            Ok(RecordCandidate {
                id: row.get(0),
                tenant_id: link.tenant_id,
                tenant_slug: link.tenant_slug.clone(),
                patient_id: Some(link.patient_id),
                since: parse_stored_instant(row.get(1))?,
            })
        })
        .collect()
}

/// Lists a tenant's patient links, ordered by patient id.
pub(super) fn tenant_links(tx: &mut Transaction<'_>, tenant: &Tenant) -> Result<Vec<LinkSummary>> {
    let sql = format!(
        "SELECT {LINK_COLUMNS} FROM patient_links l JOIN tenants t ON t.id = l.tenant_id
         WHERE l.tenant_id = $1 ORDER BY l.patient_id"
    );
    let rows = tx.query(&sql, &[&tenant.id.to_string()])?;
    rows.iter().map(link_from_row).collect()
}

/// Returns one patient's link to a tenant with its counts, ID photos and sessions.
pub(super) fn link_detail(
    tx: &mut Transaction<'_>,
    tenant: &Tenant,
    patient: PatientId,
) -> Result<LinkDetail> {
    let key = require_link(tx, tenant, patient)?;
    let sql = format!(
        "SELECT {LINK_COLUMNS} FROM patient_links l JOIN tenants t ON t.id = l.tenant_id
         WHERE l.id = $1"
    );
    let link = link_from_row(&tx.query_one(&sql, &[&key])?)?;
    let counts = tx.query_one(
        "SELECT (SELECT count(*) FROM consultations WHERE link_id = $1),
                (SELECT count(*) FROM prescriptions WHERE link_id = $1),
                (SELECT count(*) FROM medical_history WHERE link_id = $1),
                (SELECT count(*) FROM intake_forms WHERE link_id = $1),
                (SELECT count(*) FROM id_photos WHERE link_id = $1),
                (SELECT count(*) FROM sessions WHERE link_id = $1)",
        &[&key],
    )?;
    let count = |index: usize| counts.get::<_, i64>(index) as u64;
    let counts = LinkCounts {
        consultations: count(0),
        prescriptions: count(1),
        history_entries: count(2),
        intake_forms: count(3),
        id_photos: count(4),
        sessions: count(5),
    };
    let id_photos = link_records(
        tx,
        "SELECT id, uploaded_at FROM id_photos WHERE link_id = $1 ORDER BY uploaded_at",
        key,
        &link,
    )?;
    let sessions = link_records(
        tx,
        "SELECT id, ends_at FROM sessions WHERE link_id = $1 ORDER BY ends_at",
        key,
        &link,
    )?;
    Ok(LinkDetail { link, counts, id_photos, sessions })
}

/// Opens a patient's core profile. The caller checks that the patient is linked to the
/// tenant of the transaction.
pub(super) fn open_profile(
    tx: &mut Transaction<'_>,
    keys: &Keys,
    patient: PatientId,
) -> Result<PatientProfileView> {
    let id = patient.to_string();
    let place = Place { tenant: CORE_TENANT, table: "patient_profiles", record: &id };
    let sql = format!("SELECT {} FROM patient_profiles WHERE id = $1", PROFILE_COLUMNS.join(", "));
    let row = tx.query_one(&sql, &[&id])?;
    let mut opened: Vec<Option<String>> = Vec::with_capacity(PROFILE_COLUMNS.len());
    for (index, column) in PROFILE_COLUMNS.iter().enumerate() {
        let sealed: Option<Vec<u8>> = row.get(index);
        let value =
            sealed.map(|bytes| keys.open_text(&mut *tx, place, column, &bytes)).transpose()?;
        opened.push(value);
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
        sex: next().unwrap_or_default(),
    })
}

/// Returns the decrypted bytes of one of a tenant's ID photos.
pub(super) fn open_id_photo(
    tx: &mut Transaction<'_>,
    keys: &Keys,
    tenant: &Tenant,
    photo: PhotoId,
) -> Result<Vec<u8>> {
    let id = photo.to_string();
    let tenant_text = tenant.id.to_string();
    let row = tx.query_opt(
        "SELECT content FROM id_photos WHERE id = $1 AND tenant_id = $2",
        &[&id, &tenant_text],
    )?;
    let Some(row) = row else {
        return Err(StoreError::PhotoNotFound { tenant: tenant.slug.clone(), photo: id });
    };
    let sealed: Vec<u8> = row.get(0);
    let place = Place { tenant: &tenant_text, table: "id_photos", record: &id };
    let plain = keys.open_bytes(&mut *tx, place, "file", &sealed)?;
    Ok(plain.to_vec())
}

/// An ID photo to insert with [`insert_photo`].
pub(super) struct NewPhotoRow<'a> {
    pub id: PhotoId,
    pub bytes: &'a [u8],
    pub content_type: Option<&'a str>,
    pub uploaded_at: DateTime<Utc>,
}

/// Seals an ID photo under the link's data key and inserts its row inside the caller's
/// transaction. Returns the size and the SHA-256 (hex) of the sealed bytes.
pub(super) fn insert_photo(
    tx: &mut Transaction<'_>,
    keys: &Keys,
    tenant: &Tenant,
    link: i64,
    photo: &NewPhotoRow<'_>,
    now: DateTime<Utc>,
) -> Result<(u64, String)> {
    let id_text = photo.id.to_string();
    let tenant_text = tenant.id.to_string();
    let key = keys.data_key(&mut *tx, KeyScope::Link, &link.to_string(), now)?;
    // The column in the associated data is "file", as on SQLite, so a photo seals the same
    // way on both backends.
    let place = Place { tenant: &tenant_text, table: "id_photos", record: &id_text };
    let sealed = seal_bytes(&key, place, "file", photo.bytes)?;
    // The digest is of the sealed bytes, so it reveals nothing about the photo.
    let digest = hex::encode(Sha256::digest(&sealed));
    let size = sealed.len() as i64;
    tx.execute(
        "INSERT INTO id_photos (id, tenant_id, link_id, content, bytes, sha256, uploaded_at,
         content_type) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &id_text,
            &tenant_text,
            &link,
            &sealed,
            &size,
            &digest,
            &format_instant(photo.uploaded_at),
            &photo.content_type,
        ],
    )?;
    Ok((size as u64, digest))
}
