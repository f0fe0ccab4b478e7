//! `GET` and `POST /v1/patients/{id}/prescriptions`: a patient's prescriptions.
//!
//! Providers list and create prescriptions of their tenant's patients, and a patient account
//! lists its own. Code and description are sealed at rest and returned decrypted. A
//! prescription may name a consultation, which must be one of the same patient in the same
//! tenant. The store appends `prescription.list` or `prescription.create` in the transaction
//! of the read or write.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use medconnect_domain::ConsultationId;
use medconnect_store::{NewPrescriptionEntry, PrescriptionRecord, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::clinical::{self, Field};
use crate::error::{ApiError, ErrorBody};
use crate::patient_path::PATIENT_ID_DOC;
use crate::routes::AppState;

/// Max characters of a prescription's code, such as an RxNorm code.
const MAX_CODE_CHARS: usize = 64;

/// Max characters of a prescription's description.
const MAX_DESCRIPTION_CHARS: usize = 500;

/// Allowed number of dispenses of one prescription.
const DISPENSES: std::ops::RangeInclusive<i64> = 1..=99;

/// The body of `POST /v1/patients/{id}/prescriptions`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrescriptionRequest {
    /// 1 to 64 characters, stored encrypted.
    #[schema(example = "308182")]
    code: String,
    /// 1 to 500 characters, stored encrypted.
    #[schema(example = "Amoxicillin 250 MG Oral Capsule")]
    description: String,
    /// 1 to 99.
    #[schema(minimum = 1, maximum = 99)]
    dispenses: i64,
    /// Whether the drug is a controlled substance.
    controlled: bool,
    /// RFC 3339 with an offset, at most 5 minutes in the future.
    #[schema(format = DateTime)]
    started_at: String,
    /// RFC 3339 with an offset, not before `started_at`.
    #[serde(default)]
    #[schema(format = DateTime)]
    stopped_at: Option<String>,
    /// A consultation of the same patient, from `GET /v1/patients/{id}/consultations`.
    #[serde(default)]
    #[schema(format = Uuid)]
    consultation_id: Option<String>,
}

/// The body of `GET /v1/patients/{id}/prescriptions`.
#[derive(Serialize, ToSchema)]
pub struct PrescriptionList {
    /// The patient's prescriptions, newest start first.
    pub prescriptions: Vec<PrescriptionRecord>,
}

const FIELDS: &[Field] = &[
    Field { name: "code", expected: "a string" },
    Field { name: "description", expected: "a string" },
    Field { name: "dispenses", expected: "a whole number from 1 to 99" },
    Field { name: "controlled", expected: "true or false" },
    Field { name: "started_at", expected: "an RFC 3339 timestamp string" },
    Field { name: "stopped_at", expected: "an RFC 3339 timestamp string or null" },
    Field { name: "consultation_id", expected: "a consultation id string or null" },
];

/// Lists a patient's prescriptions, newest start first.
#[utoipa::path(
    get,
    path = "/v1/patients/{id}/prescriptions",
    operation_id = "list_prescriptions",
    tag = "clinical",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = uuid::Uuid, Path, description = PATIENT_ID_DOC)),
    responses(
        (status = 200, description = "The patient's prescriptions.", body = PrescriptionList),
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
) -> Result<Json<PrescriptionList>, ApiError> {
    caller.require(&[Role::Provider, Role::Patient])?;
    let patient = clinical::patient_in_path(&caller, &id)?;
    let prescriptions: Vec<PrescriptionRecord> =
        clinical::run_audited(&state, &caller, move |store, tenant, access| {
            store.read_prescriptions(tenant, patient, access)
        })
        .await?;
    Ok(Json(PrescriptionList { prescriptions }))
}

/// Creates a prescription and returns it as the list shows it.
#[utoipa::path(
    post,
    path = "/v1/patients/{id}/prescriptions",
    operation_id = "create_prescription",
    tag = "clinical",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = uuid::Uuid, Path, description = PATIENT_ID_DOC)),
    request_body = PrescriptionRequest,
    responses(
        (status = 201, description = "The stored prescription.", body = PrescriptionRecord),
        (status = 400, description = "The id is not a UUID, or the body is not JSON.",
            body = ErrorBody),
        (status = 403, description = "The caller is not a provider of a tenant.",
            body = ErrorBody),
        (status = 404, description = "The caller's tenant has no patient with this id.",
            body = ErrorBody),
        (status = 415, description = "The body is not application/json.", body = ErrorBody),
        (status = 422, description = "A field is missing, unknown or invalid, contains a \
            payment card number, or names a consultation that is not the patient's. The \
            message names the field.", body = ErrorBody),
        (status = 500, description = "The request could not be prepared for the audit log.",
            body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<PrescriptionRecord>), ApiError> {
    caller.require(&[Role::Provider])?;
    let patient = clinical::patient_in_path(&caller, &id)?;
    let request: PrescriptionRequest = clinical::parse_body(&headers, &body, FIELDS)?;

    let now = state.clock.now();
    clinical::text("code", &request.code, 1, MAX_CODE_CHARS)?;
    clinical::text("description", &request.description, 1, MAX_DESCRIPTION_CHARS)?;
    if !DISPENSES.contains(&request.dispenses) {
        return Err(clinical::unprocessable("dispenses", "must be a whole number from 1 to 99"));
    }
    let started_at = clinical::timestamp("started_at", &request.started_at, now)?;
    let stopped_at = match &request.stopped_at {
        Some(value) => Some(clinical::timestamp("stopped_at", value, now)?),
        None => None,
    };
    if stopped_at.is_some_and(|stop| stop < started_at) {
        return Err(clinical::unprocessable(
            "stopped_at",
            "is before started_at: send a later time",
        ));
    }

    let consultation_id = match &request.consultation_id {
        Some(value) => Some(ConsultationId::parse(value).map_err(|_| {
            clinical::unprocessable(
                "consultation_id",
                "is not a consultation id: use an id from GET /v1/patients/{id}/consultations",
            )
        })?),
        None => None,
    };

    let stored = clinical::run_audited(&state, &caller, move |store, tenant, access| {
        let prescription = NewPrescriptionEntry {
            code: &request.code,
            description: &request.description,
            dispenses: request.dispenses,
            controlled: request.controlled,
            started_at,
            stopped_at,
            consultation_id,
        };
        store.create_prescription(tenant, patient, &prescription, access)
    })
    .await?;
    tracing::info!(%patient, prescription = %stored.id, "prescription created");
    Ok((StatusCode::CREATED, Json(stored)))
}
