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
use serde::Deserialize;
use serde_json::json;

use crate::auth::Caller;
use crate::clinical::{self, Field};
use crate::error::ApiError;
use crate::routes::AppState;

/// Max characters of a prescription's code, such as an RxNorm code.
const MAX_CODE_CHARS: usize = 64;

/// Max characters of a prescription's description.
const MAX_DESCRIPTION_CHARS: usize = 500;

/// Allowed number of dispenses of one prescription.
const DISPENSES: std::ops::RangeInclusive<i64> = 1..=99;

/// The body of `POST /v1/patients/{id}/prescriptions`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrescriptionRequest {
    code: String,
    description: String,
    dispenses: i64,
    controlled: bool,
    started_at: String,
    #[serde(default)]
    stopped_at: Option<String>,
    #[serde(default)]
    consultation_id: Option<String>,
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
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(&[Role::Provider, Role::Patient])?;
    let patient = clinical::patient_in_path(&caller, &id)?;
    let prescriptions: Vec<PrescriptionRecord> =
        clinical::run_audited(&state, &caller, move |store, tenant, access| {
            store.read_prescriptions(tenant, patient, access)
        })
        .await?;
    Ok(Json(json!({ "prescriptions": prescriptions })))
}

/// Creates a prescription and returns it as the list shows it.
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
