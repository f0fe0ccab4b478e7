//! Records of the Platform data model, as the store accepts and returns them.
//!
//! Structs that carry PHI do not derive `Debug`, so they cannot be logged by accident.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{HoldId, PatientId, TenantId};

/// A tenant: one clinic or telehealth brand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub id: TenantId,
    /// Short lowercase name used on the command line, such as `northwind`.
    pub slug: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// Error returned for a tenant slug that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid tenant slug {0:?}: use 2 to 40 characters of lowercase letters, digits and \
     hyphens, starting with a letter"
)]
pub struct InvalidSlug(pub String);

/// Checks a tenant slug: lowercase letters, digits and hyphens, starting with a letter.
pub fn validate_slug(slug: &str) -> Result<(), InvalidSlug> {
    let valid_chars =
        slug.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let starts_with_letter = slug.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    if valid_chars && starts_with_letter && (2..=40).contains(&slug.len()) {
        Ok(())
    } else {
        Err(InvalidSlug(slug.to_owned()))
    }
}

/// The data categories that lifecycle jobs dispose of. Names are stable: they appear in
/// receipts and JSON output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// All PHI one tenant holds for one patient: the link, consultations, prescriptions,
    /// medical history, intake forms, and that patient's ID photos and sessions there.
    PatientRecords,
    /// The core profile shared by the tenants a patient is linked to.
    PatientProfile,
    /// One ID verification photo (file and metadata row).
    IdPhoto,
    /// One login session.
    Session,
}

impl Category {
    pub const ALL: [Category; 4] =
        [Category::PatientRecords, Category::PatientProfile, Category::IdPhoto, Category::Session];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::PatientRecords => "patient_records",
            Category::PatientProfile => "patient_profile",
            Category::IdPhoto => "id_photo",
            Category::Session => "session",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Scope of a legal hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "scope", content = "patient_id", rename_all = "snake_case")]
pub enum HoldScope {
    /// Every record of the tenant.
    WholeTenant,
    /// Every record the tenant holds for one patient.
    Patient(PatientId),
}

/// A legal hold. The matter and reason are operator text, not patient text, but they are
/// still passed through the sanitizer before they reach the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LegalHold {
    pub id: HoldId,
    pub tenant_id: TenantId,
    pub scope: HoldScope,
    pub matter: String,
    pub reason: String,
    pub placed_at: DateTime<Utc>,
    pub placed_by: String,
    pub released_at: Option<DateTime<Utc>>,
    pub released_by: Option<String>,
}

impl LegalHold {
    pub fn is_active(&self) -> bool {
        self.released_at.is_none()
    }

    /// Returns true when this active hold covers the given patient of its tenant. A patient of
    /// `None` means a record that belongs to no patient, such as a staff session.
    pub fn covers(&self, tenant_id: TenantId, patient_id: Option<PatientId>) -> bool {
        if !self.is_active() || self.tenant_id != tenant_id {
            return false;
        }
        match self.scope {
            HoldScope::WholeTenant => true,
            HoldScope::Patient(held) => patient_id == Some(held),
        }
    }
}

/// A patient core profile as imported. Holds PHI, so it has no `Debug`.
#[derive(Clone, Default)]
pub struct NewPatientProfile {
    /// The system the source id comes from, such as `synthea`.
    pub source_system: String,
    /// The patient's id in the source system; used to link one person across tenants.
    pub source_id: String,
    pub given_name: String,
    pub family_name: String,
    pub birth_date: String,
    pub death_date: Option<String>,
    pub sex: String,
    pub ssn: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub address_line: String,
    pub city: String,
    pub state: String,
    pub postal_code: String,
}

/// A provider of one tenant. License and DEA numbers are PII, so it has no `Debug`.
#[derive(Clone, Default)]
pub struct NewProvider {
    pub source_id: String,
    pub name: String,
    pub specialty: String,
    pub organization: String,
    pub license_number: Option<String>,
    pub license_state: String,
    pub dea_number: Option<String>,
}

/// A consultation (one encounter) as imported.
#[derive(Clone)]
pub struct NewConsultation {
    pub source_id: String,
    /// Source id of the patient, resolved by the store within the batch.
    pub patient_source_id: String,
    pub provider_source_id: Option<String>,
    pub status: String,
    pub encounter_class: String,
    pub reason: String,
    pub notes: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// A prescription as imported.
#[derive(Clone)]
pub struct NewPrescription {
    pub patient_source_id: String,
    pub consultation_source_id: Option<String>,
    pub code: String,
    pub description: String,
    pub dispenses: i64,
    pub controlled: bool,
    pub started_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
}

/// One medical-history entry: a condition, allergy, immunization, procedure or care plan.
#[derive(Clone)]
pub struct NewHistoryEntry {
    pub patient_source_id: String,
    pub consultation_source_id: Option<String>,
    pub kind: &'static str,
    pub code: String,
    pub description: String,
    pub started_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
}

/// Everything one import writes, applied by the store in a single transaction.
#[derive(Default)]
pub struct ImportBatch {
    pub source_system: String,
    pub patients: Vec<NewPatientProfile>,
    pub providers: Vec<NewProvider>,
    pub consultations: Vec<NewConsultation>,
    pub prescriptions: Vec<NewPrescription>,
    pub history: Vec<NewHistoryEntry>,
}

/// Counts of what an import wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ImportCounts {
    pub profiles_created: u64,
    pub profiles_linked: u64,
    pub links_created: u64,
    pub providers: u64,
    pub consultations: u64,
    pub prescriptions: u64,
    pub history_entries: u64,
}
