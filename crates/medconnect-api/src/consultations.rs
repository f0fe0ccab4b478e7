//! `GET` and `POST /v1/patients/{id}/consultations`: a patient's consultations.
//!
//! Providers list and create consultations of their tenant's patients, and a patient account
//! lists its own. Reason and notes are sealed at rest and returned decrypted. A consultation
//! is a medical encounter, so creating one recomputes the link's PHI retention as
//! `POST /v1/patients/{id}/encounters` does. The store appends `consultation.list` or
//! `consultation.create` in the transaction of the read or write.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use medconnect_store::{
    ConsultationRecord, EncounterRecorded, NewEncounter, Role, CONSULTATION_STATUSES,
    ENCOUNTER_CLASSES,
};
use serde::Deserialize;
use serde_json::json;

use crate::auth::Caller;
use crate::clinical::{self, Field};
use crate::error::ApiError;
use crate::routes::AppState;

/// Max characters of a consultation's reason.
const MAX_REASON_CHARS: usize = 2_000;

/// Max characters of a consultation's notes. At up to 4 bytes a character, notes of this
/// length may still exceed the body limit.
const MAX_NOTES_CHARS: usize = 8_000;

/// The body of `POST /v1/patients/{id}/consultations`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsultationRequest {
    status: String,
    encounter_class: String,
    reason: String,
    #[serde(default)]
    notes: String,
    started_at: String,
    #[serde(default)]
    ended_at: Option<String>,
}

const FIELDS: &[Field] = &[
    Field { name: "status", expected: "a string such as \"completed\"" },
    Field { name: "encounter_class", expected: "a string such as \"ambulatory\"" },
    Field { name: "reason", expected: "a string" },
    Field { name: "notes", expected: "a string" },
    Field { name: "started_at", expected: "an RFC 3339 timestamp string" },
    Field { name: "ended_at", expected: "an RFC 3339 timestamp string or null" },
];

/// Lists a patient's consultations, newest start first.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(&[Role::Provider, Role::Patient])?;
    let patient = clinical::patient_in_path(&caller, &id)?;
    let consultations: Vec<ConsultationRecord> =
        clinical::run_audited(&state, &caller, move |store, tenant, access| {
            store.read_consultations(tenant, patient, access)
        })
        .await?;
    Ok(Json(json!({ "consultations": consultations })))
}

/// Creates a consultation and returns its id and the link's new retention.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<EncounterRecorded>), ApiError> {
    caller.require(&[Role::Provider])?;
    let patient = clinical::patient_in_path(&caller, &id)?;
    let request: ConsultationRequest = clinical::parse_body(&headers, &body, FIELDS)?;

    let now = state.clock.now();
    clinical::one_of("status", &request.status, &CONSULTATION_STATUSES)?;
    clinical::one_of("encounter_class", &request.encounter_class, &ENCOUNTER_CLASSES)?;
    clinical::text("reason", &request.reason, 1, MAX_REASON_CHARS)?;
    clinical::text("notes", &request.notes, 0, MAX_NOTES_CHARS)?;
    let started_at = clinical::timestamp("started_at", &request.started_at, now)?;
    let ended_at = match &request.ended_at {
        Some(value) => Some(clinical::timestamp("ended_at", value, now)?),
        None => None,
    };
    if ended_at.is_some_and(|end| end < started_at) {
        return Err(clinical::unprocessable("ended_at", "is before started_at: send a later time"));
    }

    let policy = clinical::policy_in_force(&state).await?;
    let recorded = clinical::run_audited(&state, &caller, move |store, tenant, access| {
        let consultation = NewEncounter {
            status: &request.status,
            encounter_class: &request.encounter_class,
            reason: &request.reason,
            notes: &request.notes,
            started_at,
            ended_at,
        };
        store.record_encounter_audited(
            tenant,
            patient,
            &consultation,
            &policy,
            access,
            "consultation.create",
        )
    })
    .await?;
    tracing::info!(%patient, consultation = %recorded.consultation_id, "consultation created");
    Ok((StatusCode::CREATED, Json(recorded)))
}
