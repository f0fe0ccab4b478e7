//! Encounters, consultations and prescriptions that the API writes and reads one patient at a
//! time, through the audited methods of [`crate::Store`].
//!
//! Every consultation is a medical encounter. Writing one moves the link's
//! `last_medical_encounter_at` to the later of its current value and the consultation's end
//! (its start when it has no end). It then recomputes `phi_retention_until` from that instant
//! under the policy in force, so an encounter older than the last one never moves retention
//! earlier. A legal hold does not stop encounters from being recorded, because a
//! hold only blocks disposal.

use chrono::{DateTime, Utc};
use medconnect_domain::ConsultationId;
use serde::Serialize;

/// Encounter classes a new consultation may have: the values of the `ENCOUNTERCLASS` column
/// of Synthea's `encounters.csv`, which the import stores unchanged.
pub const ENCOUNTER_CLASSES: [&str; 10] = [
    "ambulatory",
    "emergency",
    "home",
    "hospice",
    "inpatient",
    "outpatient",
    "snf",
    "urgentcare",
    "virtual",
    "wellness",
];

/// Statuses a new consultation may have. The import stores `completed` for every encounter.
pub const CONSULTATION_STATUSES: [&str; 4] = ["planned", "in-progress", "completed", "cancelled"];

/// A consultation to store for a linked patient. Reason and notes are PHI, so it has no
/// `Debug`.
#[derive(Clone, Copy)]
pub struct NewEncounter<'a> {
    pub status: &'a str,
    pub encounter_class: &'a str,
    pub reason: &'a str,
    pub notes: &'a str,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

impl<'a> NewEncounter<'a> {
    /// Returns a completed encounter of `encounter_class` that starts and ends at `at`, with an
    /// empty reason and empty notes.
    pub fn at(at: DateTime<Utc>, encounter_class: &'a str) -> Self {
        NewEncounter {
            status: "completed",
            encounter_class,
            reason: "",
            notes: "",
            started_at: at,
            ended_at: Some(at),
        }
    }

    /// Returns the instant PHI retention counts from: the end, or the start when the
    /// consultation has no end, as the import counts it.
    pub fn retention_basis(&self) -> DateTime<Utc> {
        self.ended_at.unwrap_or(self.started_at)
    }
}

/// The result of storing an encounter: the consultation row and the link's new retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(description = "The stored encounter and the patient link's new PHI retention.")
)]
pub struct EncounterRecorded {
    pub consultation_id: ConsultationId,
    /// The later of the previous last encounter and this one.
    pub last_medical_encounter_at: DateTime<Utc>,
    pub phi_retention_until: DateTime<Utc>,
}

/// A stored consultation with its reason and notes decrypted. It contains PHI, so it has no
/// `Debug`.
#[derive(Clone, Serialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(description = "A consultation with its reason and notes decrypted.")
)]
pub struct ConsultationRecord {
    pub id: ConsultationId,
    /// The tenant's provider record, for imported consultations that name one.
    pub provider_id: Option<String>,
    pub status: String,
    pub encounter_class: String,
    pub reason: String,
    pub notes: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// A prescription to store for a linked patient. Code and description are PHI, so it has no
/// `Debug`.
#[derive(Clone, Copy)]
pub struct NewPrescriptionEntry<'a> {
    pub code: &'a str,
    pub description: &'a str,
    pub dispenses: i64,
    pub controlled: bool,
    pub started_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
    /// A consultation of the same patient in the same tenant, or None.
    pub consultation_id: Option<ConsultationId>,
}

/// A stored prescription with its code and description decrypted. It contains PHI, so it has
/// no `Debug`.
#[derive(Clone, Serialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(description = "A prescription with its code and description decrypted.")
)]
pub struct PrescriptionRecord {
    pub id: String,
    pub consultation_id: Option<String>,
    pub code: String,
    pub description: String,
    pub dispenses: i64,
    pub controlled: bool,
    pub started_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
}
