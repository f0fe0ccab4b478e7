//! `POST /v1/patients/{id}/encounters`: records a medical encounter of a patient of the
//! caller's tenant and recomputes the link's PHI retention under the policy in force.
//!
//! Only providers record encounters. The store writes the encounter as a completed
//! consultation with no reason or notes, moves `last_medical_encounter_at` to the later of its
//! current value and `at`, and appends `encounter.record` in the same transaction. A patient
//! under legal hold still records encounters, because a hold only blocks disposal.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use medconnect_store::{EncounterRecorded, NewEncounter, Role, ENCOUNTER_CLASSES};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::clinical::{self, Field};
use crate::error::{ApiError, ErrorBody};
use crate::patient_path::PATIENT_ID_DOC;
use crate::routes::AppState;

/// The body of `POST /v1/patients/{id}/encounters`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EncounterRequest {
    /// When the encounter happened: RFC 3339 with an offset, at most 5 minutes in the future.
    #[schema(format = DateTime, example = "2024-02-29T12:00:00+02:00")]
    at: String,
    /// One of ambulatory, emergency, home, hospice, inpatient, outpatient, snf, urgentcare,
    /// virtual and wellness.
    #[schema(example = "ambulatory")]
    encounter_class: String,
}

const FIELDS: &[Field] = &[
    Field { name: "at", expected: "an RFC 3339 timestamp string such as 2024-06-01T09:30:00Z" },
    Field { name: "encounter_class", expected: "a string such as \"ambulatory\"" },
];

/// Records an encounter and returns the consultation id and the link's new retention.
#[utoipa::path(
    post,
    path = "/v1/patients/{id}/encounters",
    operation_id = "record_encounter",
    tag = "clinical",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = uuid::Uuid, Path, description = PATIENT_ID_DOC)),
    request_body = EncounterRequest,
    responses(
        (status = 201, description = "The encounter was stored and retention recomputed.",
            body = EncounterRecorded),
        (status = 400, description = "The id is not a UUID, or the body is not JSON.",
            body = ErrorBody),
        (status = 403, description = "The caller is not a provider of a tenant.",
            body = ErrorBody),
        (status = 404, description = "The caller's tenant has no patient with this id.",
            body = ErrorBody),
        (status = 415, description = "The body is not application/json.", body = ErrorBody),
        (status = 422, description = "A field is missing, unknown or invalid. The message \
            names the field.", body = ErrorBody),
        (status = 500, description = "The policy in force could not be loaded, or the request \
            could not be prepared for the audit log.", body = ErrorBody),
    )
)]
pub async fn record(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<EncounterRecorded>), ApiError> {
    caller.require(&[Role::Provider])?;
    let patient = clinical::patient_in_path(&caller, &id)?;
    let request: EncounterRequest = clinical::parse_body(&headers, &body, FIELDS)?;
    let at = clinical::timestamp("at", &request.at, state.clock.now())?;
    clinical::one_of("encounter_class", &request.encounter_class, &ENCOUNTER_CLASSES)?;
    let policy = clinical::policy_in_force(&state).await?;
    let recorded = clinical::run_audited(&state, &caller, move |store, tenant, access| {
        let encounter = NewEncounter::at(at, &request.encounter_class);
        store.record_encounter_audited(
            tenant,
            patient,
            &encounter,
            &policy,
            access,
            "encounter.record",
        )
    })
    .await?;
    tracing::info!(
        %patient,
        consultation = %recorded.consultation_id,
        "encounter recorded"
    );
    Ok((StatusCode::CREATED, Json(recorded)))
}
