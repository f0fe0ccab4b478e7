//! Writing an import batch into one tenant, inside its application transaction.
//!
//! Row-level security hides the core profiles of other tenants' patients, so an existing
//! profile is found with `profile_by_source`, which returns only its id, and its fields
//! become readable once this tenant's link to it is written.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use medconnect_domain::model::{ImportBatch, ImportCounts, NewPatientProfile, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::format_instant;
use medconnect_domain::{ConsultationId, PatientId, ProviderId};
use postgres::{Statement, Transaction};
use uuid::Uuid;

use super::records::link_key;
use crate::keys::{seal_optional, seal_text, KeyScope, Keys, Place, SealingKey};
use crate::sqlite::values::parse_stored_id;
use crate::{Result, StoreError};

/// Core profile fields sealed under the profile key, in the order of the view. Unlike
/// SQLite, `sex` is sealed too.
pub(super) const PROFILE_COLUMNS: [&str; 12] = [
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
    "sex",
];

/// The tenant part of the associated data of core profile fields, which belong to no tenant.
pub(super) const CORE_TENANT: &str = "core";

fn profile_values(profile: &NewPatientProfile) -> [Option<&str>; 12] {
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
        Some(profile.sex.as_str()),
    ]
}

/// Writes an import batch inside an open tenant transaction, sealing every PHI field.
pub(super) fn write_import(
    tx: &mut Transaction<'_>,
    keys: &Keys,
    tenant: &Tenant,
    batch: &ImportBatch,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<ImportCounts> {
    let mut counts = ImportCounts::default();
    let tenant_id = tenant.id.to_string();
    let retention_until = format_instant(policy.phi_retention_until(&tenant.slug, now));
    let rows = PatientRows::prepare(tx, &tenant_id, now, &retention_until)?;

    let mut links: HashMap<&str, (i64, PatientId)> = HashMap::new();
    let mut link_keys: HashMap<i64, SealingKey> = HashMap::new();
    let mut already_linked = 0usize;
    let mut mismatched = 0usize;
    for profile in &batch.patients {
        let source_index = keys.source_index(&profile.source_system, &profile.source_id)?;
        let (patient, created) = match rows.find_profile(tx, profile, &source_index)? {
            Some(patient) => (patient, false),
            None => match rows.insert_profile(tx, keys, profile, &source_index)? {
                Some(patient) => (patient, true),
                // Another transaction created this person's profile after the lookup above
                // and has committed it, so the lookup now finds it.
                None => {
                    let found = rows.find_profile(tx, profile, &source_index)?;
                    let patient = found.ok_or_else(|| {
                        StoreError::Corrupt(
                            "a core profile exists for a source id but cannot be found".into(),
                        )
                    })?;
                    (patient, false)
                }
            },
        };
        // The link comes before the identity check, because only a link to this tenant
        // makes another tenant's profile readable. A mismatch fails the whole import, so the
        // link is rolled back with it.
        let linked_before = if created { None } else { link_key(tx, tenant.id, patient)? };
        let link = match linked_before {
            Some(_) => None,
            None => rows.insert_link(tx, patient)?,
        };
        if created {
            counts.profiles_created += 1;
        } else if !same_person(tx, keys, patient, profile)? {
            mismatched += 1;
            continue;
        } else {
            counts.profiles_linked += 1;
        }
        let Some(link) = link else {
            already_linked += 1;
            continue;
        };
        // A new link has no stored key yet, so there is none to look up.
        let key = keys.unstored_key(KeyScope::Link, &link.to_string(), now)?;
        link_keys.insert(link, key.sealing_key());
        key.store(&mut *tx)?;
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

    let providers = write_providers(tx, keys, tenant, batch, now, &mut counts)?;
    let link_of = |source: &str| -> Result<(i64, &SealingKey)> {
        let (link, _) = links.get(source).copied().ok_or_else(|| {
            StoreError::InconsistentBatch(
                "a row references a patient that is not in the batch".into(),
            )
        })?;
        let key = link_keys
            .get(&link)
            .ok_or_else(|| StoreError::InconsistentBatch("a link has no data key".into()))?;
        Ok((link, key))
    };

    let mut last_encounter: HashMap<i64, DateTime<Utc>> = HashMap::new();
    let mut consultations: HashMap<&str, String> = HashMap::new();
    let insert_consultation = tx.prepare(
        "INSERT INTO consultations (id, tenant_id, link_id, provider_id, status,
         encounter_class, reason, notes, started_at, ended_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )?;
    for consultation in &batch.consultations {
        let (link, key) = link_of(&consultation.patient_source_id)?;
        let provider = consultation.provider_source_id.as_deref().and_then(|p| providers.get(p));
        let id = ConsultationId::new().to_string();
        let place = Place { tenant: &tenant_id, table: "consultations", record: &id };
        // The source system's encounter id is not kept: it identifies the patient's visit.
        tx.execute(
            &insert_consultation,
            &[
                &id,
                &tenant_id,
                &link,
                &provider,
                &consultation.status,
                &consultation.encounter_class,
                &seal_text(key, place, "reason", &consultation.reason)?,
                &seal_text(key, place, "notes", &consultation.notes)?,
                &format_instant(consultation.started_at),
                &consultation.ended_at.map(format_instant),
            ],
        )?;
        let encounter_end = consultation.ended_at.unwrap_or(consultation.started_at);
        let latest = last_encounter.entry(link).or_insert(encounter_end);
        *latest = (*latest).max(encounter_end);
        consultations.insert(consultation.source_id.as_str(), id);
        counts.consultations += 1;
    }

    let insert_prescription = tx.prepare(
        "INSERT INTO prescriptions (id, tenant_id, link_id, consultation_id, code,
         description, dispenses, controlled, started_at, stopped_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )?;
    for prescription in &batch.prescriptions {
        let (link, key) = link_of(&prescription.patient_source_id)?;
        let consultation =
            prescription.consultation_source_id.as_deref().and_then(|c| consultations.get(c));
        let id = Uuid::new_v4().to_string();
        let place = Place { tenant: &tenant_id, table: "prescriptions", record: &id };
        tx.execute(
            &insert_prescription,
            &[
                &id,
                &tenant_id,
                &link,
                &consultation,
                &seal_text(key, place, "code", &prescription.code)?,
                &seal_text(key, place, "description", &prescription.description)?,
                &prescription.dispenses,
                &prescription.controlled,
                &format_instant(prescription.started_at),
                &prescription.stopped_at.map(format_instant),
            ],
        )?;
        counts.prescriptions += 1;
    }

    let insert_history = tx.prepare(
        "INSERT INTO medical_history (id, tenant_id, link_id, consultation_id, kind, code,
         description, started_at, stopped_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )?;
    for entry in &batch.history {
        let (link, key) = link_of(&entry.patient_source_id)?;
        let consultation =
            entry.consultation_source_id.as_deref().and_then(|c| consultations.get(c));
        let id = Uuid::new_v4().to_string();
        let place = Place { tenant: &tenant_id, table: "medical_history", record: &id };
        tx.execute(
            &insert_history,
            &[
                &id,
                &tenant_id,
                &link,
                &consultation,
                &entry.kind,
                &seal_text(key, place, "code", &entry.code)?,
                &seal_text(key, place, "description", &entry.description)?,
                &format_instant(entry.started_at),
                &entry.stopped_at.map(format_instant),
            ],
        )?;
        counts.history_entries += 1;
    }

    let set_retention = tx.prepare(
        "UPDATE patient_links SET last_medical_encounter_at = $1, phi_retention_until = $2
         WHERE id = $3",
    )?;
    for (link, last) in last_encounter {
        let until = policy.phi_retention_until(&tenant.slug, last);
        tx.execute(&set_retention, &[&format_instant(last), &format_instant(until), &link])?;
    }
    Ok(counts)
}

/// The statements that write one patient of an import, prepared once per import.
struct PatientRows<'a> {
    find_profile: Statement,
    insert_profile: Statement,
    insert_link: Statement,
    tenant_id: &'a str,
    now: DateTime<Utc>,
    /// Retention of a new link until it is set again once every consultation is known.
    retention_until: &'a str,
}

impl<'a> PatientRows<'a> {
    fn prepare(
        tx: &mut Transaction<'_>,
        tenant_id: &'a str,
        now: DateTime<Utc>,
        retention_until: &'a str,
    ) -> Result<Self> {
        // The profile insert's conflict clause names no target because, with a target,
        // PostgreSQL also checks the new row against the SELECT policy, which hides a profile
        // until a link to it exists. The only other unique column is the new random id.
        Ok(PatientRows {
            find_profile: tx.prepare("SELECT profile_by_source($1, $2)")?,
            insert_profile: tx.prepare(
                "INSERT INTO patient_profiles (id, source_system, source_index, given_name,
                 family_name, birth_date, death_date, ssn, phone, email, address_line, city,
                 state, postal_code, sex, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
                 ON CONFLICT DO NOTHING",
            )?,
            insert_link: tx.prepare(
                "INSERT INTO patient_links (tenant_id, patient_id, created_at,
                 phi_retention_until) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant_id, patient_id) DO NOTHING RETURNING id",
            )?,
            tenant_id,
            now,
            retention_until,
        })
    }

    /// Finds the core profile of a person in any tenant.
    fn find_profile(
        &self,
        tx: &mut Transaction<'_>,
        profile: &NewPatientProfile,
        source_index: &str,
    ) -> Result<Option<PatientId>> {
        let row = tx.query_one(&self.find_profile, &[&profile.source_system, &source_index])?;
        row.get::<_, Option<&str>>(0).map(parse_stored_id).transpose()
    }

    /// Inserts a core profile sealed under a new profile key. Returns None, writing nothing,
    /// when another transaction inserted a profile with the same source first. That insert
    /// makes this one wait until it commits or rolls back, so two imports of one person
    /// never create two profiles.
    fn insert_profile(
        &self,
        tx: &mut Transaction<'_>,
        keys: &Keys,
        profile: &NewPatientProfile,
        source_index: &str,
    ) -> Result<Option<PatientId>> {
        let id = PatientId::new();
        let id_text = id.to_string();
        let key = keys.unstored_key(KeyScope::Profile, &id_text, self.now)?;
        let sealing = key.sealing_key();
        let place = Place { tenant: CORE_TENANT, table: "patient_profiles", record: &id_text };
        let mut sealed: Vec<Option<Vec<u8>>> = Vec::with_capacity(PROFILE_COLUMNS.len());
        for (column, value) in PROFILE_COLUMNS.iter().zip(profile_values(profile)) {
            sealed.push(seal_optional(&sealing, place, column, value)?);
        }
        let inserted = tx.execute(
            &self.insert_profile,
            &[
                &id_text,
                &profile.source_system,
                &source_index,
                &sealed[0],
                &sealed[1],
                &sealed[2],
                &sealed[3],
                &sealed[4],
                &sealed[5],
                &sealed[6],
                &sealed[7],
                &sealed[8],
                &sealed[9],
                &sealed[10],
                &sealed[11],
                &format_instant(self.now),
            ],
        )?;
        if inserted == 0 {
            return Ok(None);
        }
        key.store(&mut *tx)?;
        Ok(Some(id))
    }

    /// Inserts the patient's link to the tenant and returns its key, or None when another
    /// transaction linked the patient to this tenant first.
    fn insert_link(&self, tx: &mut Transaction<'_>, patient: PatientId) -> Result<Option<i64>> {
        let row = tx.query_opt(
            &self.insert_link,
            &[
                &self.tenant_id,
                &patient.to_string(),
                &format_instant(self.now),
                &self.retention_until,
            ],
        )?;
        Ok(row.map(|row| row.get(0)))
    }
}

/// Returns true when a stored profile and an imported one name the same person: given name,
/// family name and birth date agree, and so does the SSN when both have one. The profile
/// must be linked to the transaction's tenant, or row-level security hides it.
fn same_person(
    tx: &mut Transaction<'_>,
    keys: &Keys,
    patient: PatientId,
    profile: &NewPatientProfile,
) -> Result<bool> {
    let id = patient.to_string();
    let place = Place { tenant: CORE_TENANT, table: "patient_profiles", record: &id };
    let row = tx.query_one(
        "SELECT given_name, family_name, birth_date, ssn FROM patient_profiles WHERE id = $1",
        &[&id],
    )?;
    let (given, family, birth): (Vec<u8>, Vec<u8>, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
    let ssn: Option<Vec<u8>> = row.get(3);
    let given = keys.open_text(&mut *tx, place, "given_name", &given)?;
    let family = keys.open_text(&mut *tx, place, "family_name", &family)?;
    let birth = keys.open_text(&mut *tx, place, "birth_date", &birth)?;
    let ssn = ssn.map(|sealed| keys.open_text(&mut *tx, place, "ssn", &sealed)).transpose()?;
    let ssn_differs = matches!((&ssn, &profile.ssn), (Some(a), Some(b)) if a != b);
    Ok(given == profile.given_name
        && family == profile.family_name
        && birth == profile.birth_date
        && !ssn_differs)
}

/// Writes the batch's providers sealed under the tenant key, keeping those the tenant has
/// already. Returns the stored provider id of each source id.
fn write_providers<'b>(
    tx: &mut Transaction<'_>,
    keys: &Keys,
    tenant: &Tenant,
    batch: &'b ImportBatch,
    now: DateTime<Utc>,
    counts: &mut ImportCounts,
) -> Result<HashMap<&'b str, String>> {
    let tenant_id = tenant.id.to_string();
    let tenant_key = keys.data_key(&mut *tx, KeyScope::Tenant, &tenant_id, now)?;
    let mut providers = HashMap::new();
    for provider in &batch.providers {
        let id = ProviderId::new().to_string();
        let place = Place { tenant: &tenant_id, table: "providers", record: &id };
        tx.execute(
            "INSERT INTO providers (id, tenant_id, source_id, name, specialty, organization,
             license_number, license_state, dea_number)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (tenant_id, source_id) DO NOTHING",
            &[
                &id,
                &tenant_id,
                &provider.source_id,
                &seal_text(&tenant_key, place, "name", &provider.name)?,
                &provider.specialty,
                &provider.organization,
                &seal_optional(
                    &tenant_key,
                    place,
                    "license_number",
                    provider.license_number.as_deref(),
                )?,
                &provider.license_state,
                &seal_optional(&tenant_key, place, "dea_number", provider.dea_number.as_deref())?,
            ],
        )?;
        let stored: String = tx
            .query_one(
                "SELECT id FROM providers WHERE tenant_id = $1 AND source_id = $2",
                &[&tenant_id, &provider.source_id],
            )?
            .get(0);
        if stored == id {
            counts.providers += 1;
        }
        providers.insert(provider.source_id.as_str(), stored);
    }
    Ok(providers)
}
