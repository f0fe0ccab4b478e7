//! `GET /v1/patients` and `GET /v1/patients/{id}`: a tenant's linked patients.
//!
//! Both routes read through the store's audited reads, which write `patient.list` or
//! `patient.read` in the caller's tenant in the transaction of the read. Reads of one patient
//! queue in [`crate::reads`], which commits concurrent reads together. The tenant always
//! comes from the [`Caller`]; a platform operator has none and gets 403. Tenant admins and
//! providers read every patient of their tenant. A patient account reads only its own
//! record: any other id gets 403 before any store call, whether that patient exists or not,
//! so the response reveals nothing. A patient of another tenant and a missing patient get
//! the same 404 body, which names neither id.

use axum::extract::{Path, State};
use axum::Json;
use medconnect_domain::{PatientId, TenantId};
use medconnect_store::{Access, LinkSummary, PatientRecord, Role, StoreError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{store_failure, Caller, Credential};
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::patient_path::PATIENT_ID_DOC;
use crate::routes::AppState;

/// The message of every 404 of `GET /v1/patients/{id}`. It is the same for a missing patient
/// and another tenant's, and names no id.
const PATIENT_NOT_FOUND: &str =
    "no patient with this id in the caller's tenant: list the tenant's patients at \
     GET /v1/patients";

/// The body of `GET /v1/patients`.
#[derive(Serialize, ToSchema)]
pub struct PatientList {
    /// The tenant's links, one per patient.
    pub patients: Vec<LinkSummary>,
}

/// Lists the patients linked to the caller's tenant.
#[utoipa::path(
    get,
    path = "/v1/patients",
    operation_id = "list_patients",
    tag = "patients",
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "The tenant's patients.", body = PatientList),
        (status = 403, description = "The caller's role is neither tenant_admin nor provider, or \
            the caller has no tenant.", body = ErrorBody),
        (status = 500, description = "The request could not be prepared for the audit log.",
            body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<PatientList>, ApiError> {
    caller.require(&[Role::TenantAdmin, Role::Provider])?;
    let tenant = tenant_of(&caller)?;
    let access = access_of(&caller)?;
    let listed = state
        .pool
        .run(move |store| -> Result<Vec<LinkSummary>, StoreError> {
            let tenant = store.tenant(tenant)?;
            store.read_patient_links(&tenant, &access)
        })
        .await;
    let links = finish(listed)?;
    Ok(Json(PatientList { patients: links }))
}

/// Returns one patient of the caller's tenant: the link with its counts and the profile.
#[utoipa::path(
    get,
    path = "/v1/patients/{id}",
    operation_id = "read_patient",
    tag = "patients",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = uuid::Uuid, Path, description = PATIENT_ID_DOC)),
    responses(
        (status = 200, description = "The patient's link, counts and profile.",
            body = PatientRecord),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The caller's role may not read patients, the caller has no \
            tenant, or a patient account asked for another patient.", body = ErrorBody),
        (status = 404, description = "The caller's tenant has no patient with this id.",
            body = ErrorBody),
        (status = 500, description = "The request could not be prepared for the audit log.",
            body = ErrorBody),
    )
)]
pub async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<PatientRecord>, ApiError> {
    caller.require(&[Role::TenantAdmin, Role::Provider, Role::Patient])?;
    let tenant = tenant_of(&caller)?;
    // The path value is never echoed: a client may paste PHI where an id belongs.
    let patient = PatientId::parse(&id).map_err(|_| {
        ApiError::new(
            ErrorCode::BadRequest,
            "path parameter id is not a patient id: use a UUID such as \
             3f6fd0bb-1c2d-4e5f-8a9b-0123456789ab from GET /v1/patients",
        )
    })?;
    if caller.role == Role::Patient && caller.patient != Some(patient) {
        tracing::info!(%tenant, %patient, "a patient account requested another patient: 403");
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a patient account may read only its own record: use the patient_id of GET /v1/me",
        ));
    }
    let access = access_of(&caller)?;
    let read = state.reads.read(tenant, patient, access).await;
    let record = finish(read).inspect_err(|error| {
        if error.code == ErrorCode::NotFound {
            tracing::info!(%tenant, %patient, "patient not found in the caller's tenant");
        }
    })?;
    Ok(Json(record))
}

/// Returns the caller's tenant, or the 403 of a caller without one.
pub(crate) fn tenant_of(caller: &Caller) -> Result<TenantId, ApiError> {
    caller.tenant_id.ok_or_else(|| {
        ApiError::new(
            ErrorCode::Forbidden,
            "patient data belongs to a tenant and this caller has none: log in as a user of \
             the tenant",
        )
    })
}

/// Returns the [`Access`] that the audit entries of this request name: the caller's account
/// or service token, its role and a new request id.
pub(crate) fn access_of(caller: &Caller) -> Result<Access, ApiError> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let access = match caller.credential {
        Credential::Session { user_id, .. } => Access::user(user_id, caller.role, &request_id),
        Credential::ServiceToken { token_id } => Access::token(token_id, caller.role, &request_id),
    };
    access.map_err(|error| {
        tracing::error!(%error, "a generated request id was rejected");
        ApiError::from_code(ErrorCode::Internal)
    })
}

/// Turns the result of a store call into the value or the error for the client: 404 for a
/// patient the tenant does not have, 503 for anything else, with the cause in the log.
pub(crate) fn finish<T, E>(result: Result<Result<T, StoreError>, E>) -> Result<T, ApiError>
where
    E: std::error::Error + 'static,
{
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(StoreError::PatientNotFound { .. })) => {
            Err(ApiError::new(ErrorCode::NotFound, PATIENT_NOT_FOUND))
        }
        Ok(Err(error)) => Err(store_failure(&error)),
        Err(error) => Err(store_failure(&error)),
    }
}
