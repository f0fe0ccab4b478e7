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
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::clinical::{self, Field};
use crate::error::{ApiError, ErrorBody};
use crate::patient_path::PATIENT_ID_DOC;
use crate::routes::AppState;

/// Max characters of a consultation's reason.
const MAX_REASON_CHARS: usize = 2_000;

/// Max characters of a consultation's notes. At up to 4 bytes a character, notes of this
/// length may still exceed the body limit.
const MAX_NOTES_CHARS: usize = 8_000;

/// The body of `POST /v1/patients/{id}/consultations`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsultationRequest {
    /// One of planned, in-progress, completed and cancelled.
    #[schema(example = "completed")]
    status: String,
    /// One of ambulatory, emergency, home, hospice, inpatient, outpatient, snf, urgentcare,
    /// virtual and wellness.
    #[schema(example = "virtual")]
    encounter_class: String,
    /// 1 to 2000 characters, stored encrypted.
    reason: String,
    /// Up to 8000 characters, stored encrypted. Absent notes are stored empty.
    #[serde(default)]
    notes: String,
    /// RFC 3339 with an offset, at most 5 minutes in the future.
    #[schema(format = DateTime)]
    started_at: String,
    /// RFC 3339 with an offset, not before `started_at`. Retention counts from it, or from
    /// `started_at` when it is absent.
    #[serde(default)]
    #[schema(format = DateTime)]
    ended_at: Option<String>,
}

/// The body of `GET /v1/patients/{id}/consultations`.
#[derive(Serialize, ToSchema)]
pub struct ConsultationList {
    /// The patient's consultations, newest start first.
    pub consultations: Vec<ConsultationRecord>,
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
#[utoipa::path(
    get,
    path = "/v1/patients/{id}/consultations",
    operation_id = "list_consultations",
    tag = "clinical",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = uuid::Uuid, Path, description = PATIENT_ID_DOC)),
    responses(
        (status = 200, description = "The patient's consultations.", body = ConsultationList),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The caller is neither a provider of a tenant nor the \
            patient itself.", body = ErrorBody),
        (status = 404, description = "The caller's tenant has no patient with this id.",
            body = ErrorBody),
        (status = 500, description = "The request could not be prepared for the audit log.",
            body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ConsultationList>, ApiError> {
    caller.require(&[Role::Provider, Role::Patient])?;
    let patient = clinical::patient_in_path(&caller, &id)?;
    let consultations: Vec<ConsultationRecord> =
        clinical::run_audited(&state, &caller, move |store, tenant, access| {
            store.read_consultations(tenant, patient, access)
        })
        .await?;
    Ok(Json(ConsultationList { consultations }))
}

/// Creates a consultation and returns its id and the link's new retention.
#[utoipa::path(
    post,
    path = "/v1/patients/{id}/consultations",
    operation_id = "create_consultation",
    tag = "clinical",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = uuid::Uuid, Path, description = PATIENT_ID_DOC)),
    request_body = ConsultationRequest,
    responses(
        (status = 201, description = "The consultation was stored and retention recomputed.",
            body = EncounterRecorded),
        (status = 400, description = "The id is not a UUID, or the body is not JSON.",
            body = ErrorBody),
        (status = 403, description = "The caller is not a provider of a tenant.",
            body = ErrorBody),
        (status = 404, description = "The caller's tenant has no patient with this id.",
            body = ErrorBody),
        (status = 415, description = "The body is not application/json.", body = ErrorBody),
        (status = 422, description = "A field is missing, unknown or invalid, or contains a \
            payment card number. The message names the field.", body = ErrorBody),
        (status = 500, description = "The policy in force could not be loaded, or the request \
            could not be prepared for the audit log.", body = ErrorBody),
    )
)]
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
