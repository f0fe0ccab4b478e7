//! `POST` and `GET /v1/patients/{id}/id-photos` and `GET /v1/patients/{id}/id-photos/{photo_id}`:
//! a patient's ID verification photos.
//!
//! An upload is the raw image as the request body, `image/jpeg` or `image/png`, whose first
//! bytes must match the declared type (415 otherwise), of at most [`ID_PHOTO_BODY_LIMIT`]
//! bytes (413 above). It is sealed at rest as the store seals every ID photo. Providers and
//! the Storefront upload for any patient of their tenant, and a patient account for itself.
//! Only providers list a patient's photos. Providers read a photo, and a patient account
//! reads its own. A photo is found only under its own patient's path, so another patient's
//! photo id gets 404. Every call goes through an audited store method, which appends
//! `id_photo.upload`, `id_photo.list` or `id_photo.read` in its transaction.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use medconnect_domain::PhotoId;
use medconnect_store::{
    IdPhotoContent, IdPhotoInfo, InvalidIdPhoto, NewIdPhoto, Role, StoreError,
    UNKNOWN_PHOTO_CONTENT_TYPE,
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::patient_path::{patient_in_path, PATIENT_ID_DOC};
use crate::patients::{access_of, finish, tenant_of};
use crate::pool::PoolError;
use crate::routes::AppState;

/// Largest ID photo upload, in bytes (5 MiB). This route accepts it whatever the server's
/// body limit for other routes is.
pub const ID_PHOTO_BODY_LIMIT: usize = 5 * 1024 * 1024;

/// The message of every 404 for a photo that the patient in the path does not have.
const PHOTO_NOT_FOUND: &str = "no ID photo with this id for this patient: list the patient's \
                               photos at GET /v1/patients/{id}/id-photos";

/// The body of `GET /v1/patients/{id}/id-photos`.
#[derive(Serialize, ToSchema)]
pub struct IdPhotoList {
    /// The patient's photos, newest first.
    pub id_photos: Vec<IdPhotoInfo>,
}

/// Stores the request body as an ID photo of a patient of the caller's tenant. Returns 201
/// with the photo's metadata.
#[utoipa::path(
    post,
    path = "/v1/patients/{id}/id-photos",
    operation_id = "upload_id_photo",
    tag = "patients",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = uuid::Uuid, Path, description = PATIENT_ID_DOC)),
    request_body(
        description = "The raw image, at most 5 MiB, whose first bytes match its media type.",
        content(("image/jpeg"), ("image/png")),
    ),
    responses(
        (status = 201, description = "The photo is stored.", body = IdPhotoInfo),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The caller is neither a provider, the Storefront nor the \
            patient itself, or has no tenant.", body = ErrorBody),
        (status = 404, description = "The caller's tenant has no patient with this id.",
            body = ErrorBody),
        (status = 415, description = "The body is not a JPEG or PNG image of its declared \
            Content-Type.", body = ErrorBody),
        (status = 500, description = "The request could not be prepared for the audit log.",
            body = ErrorBody),
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<IdPhotoInfo>), ApiError> {
    caller.require(&[Role::Provider, Role::Patient, Role::Storefront])?;
    let tenant = tenant_of(&caller)?;
    let patient = patient_in_path(&caller, &id, "upload ID photos")?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
    let photo =
        NewIdPhoto::new(body.into(), content_type.unwrap_or_default()).map_err(|error| {
            tracing::info!(%tenant, %patient, %error, "ID photo rejected");
            unsupported(error)
        })?;
    let access = access_of(&caller)?;
    let stored = state
        .pool
        .run(move |store| -> Result<IdPhotoInfo, StoreError> {
            let tenant = store.tenant(tenant)?;
            store.upload_id_photo(&tenant, patient, &photo, &access)
        })
        .await;
    let info = finish_photo(stored).inspect_err(|error| {
        if error.code == ErrorCode::NotFound {
            tracing::info!(%tenant, %patient, "ID photo for a patient not in the tenant");
        }
    })?;
    tracing::info!(%tenant, %patient, photo = %info.id, "ID photo stored");
    Ok((StatusCode::CREATED, Json(info)))
}

/// Lists the metadata of a patient's ID photos, newest first.
#[utoipa::path(
    get,
    path = "/v1/patients/{id}/id-photos",
    operation_id = "list_id_photos",
    tag = "patients",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = uuid::Uuid, Path, description = PATIENT_ID_DOC)),
    responses(
        (status = 200, description = "The metadata of the patient's ID photos.",
            body = IdPhotoList),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The caller is not a provider, or has no tenant.",
            body = ErrorBody),
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
) -> Result<Json<IdPhotoList>, ApiError> {
    caller.require(&[Role::Provider])?;
    let tenant = tenant_of(&caller)?;
    let patient = patient_in_path(&caller, &id, "list ID photos")?;
    let access = access_of(&caller)?;
    let read = state
        .pool
        .run(move |store| -> Result<Vec<IdPhotoInfo>, StoreError> {
            let tenant = store.tenant(tenant)?;
            store.read_id_photos(&tenant, patient, &access)
        })
        .await;
    let photos = finish_photo(read).inspect_err(|error| {
        if error.code == ErrorCode::NotFound {
            tracing::info!(%tenant, %patient, "ID photos of a patient not in the tenant");
        }
    })?;
    Ok(Json(IdPhotoList { id_photos: photos }))
}

/// Returns the image of one ID photo with its stored media type and `Cache-Control:
/// no-store`, so no cache between the client and the server keeps a copy.
#[utoipa::path(
    get,
    path = "/v1/patients/{id}/id-photos/{photo_id}",
    operation_id = "read_id_photo",
    tag = "patients",
    security(("bearer" = []), ("session_cookie" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = PATIENT_ID_DOC),
        ("photo_id" = uuid::Uuid, Path,
            description = "The photo id, from `GET /v1/patients/{id}/id-photos`."),
    ),
    responses(
        (status = 200, description = "The image, with the media type it was uploaded with and \
            `Cache-Control: no-store`.",
            content(("image/jpeg"), ("image/png"), ("application/octet-stream"))),
        (status = 400, description = "An id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The caller is neither a provider nor the patient itself, \
            or has no tenant.", body = ErrorBody),
        (status = 404, description = "The caller's tenant has no patient with this id, or the \
            patient has no photo with this id.", body = ErrorBody),
        (status = 500, description = "The request could not be prepared for the audit log.",
            body = ErrorBody),
    )
)]
pub async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, photo_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Provider, Role::Patient])?;
    let tenant = tenant_of(&caller)?;
    let patient = patient_in_path(&caller, &id, "read ID photos")?;
    // The path value is never echoed, as for the patient id.
    let photo = PhotoId::parse(&photo_id).map_err(|_| {
        ApiError::new(
            ErrorCode::BadRequest,
            "path parameter photo_id is not a photo id: use an id from \
             GET /v1/patients/{id}/id-photos",
        )
    })?;
    let access = access_of(&caller)?;
    let read = state
        .pool
        .run(move |store| -> Result<IdPhotoContent, StoreError> {
            let tenant = store.tenant(tenant)?;
            store.read_patient_id_photo(&tenant, patient, photo, &access)
        })
        .await;
    let content = finish_photo(read).inspect_err(|error| {
        if error.code == ErrorCode::NotFound {
            tracing::info!(%tenant, %patient, %photo, "ID photo not found for the patient");
        }
    })?;
    let content_type = HeaderValue::from_str(&content.content_type).unwrap_or_else(|_| {
        tracing::warn!(%tenant, %photo, "a stored photo media type is not a header value");
        HeaderValue::from_static(UNKNOWN_PHOTO_CONTENT_TYPE)
    });
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
    ];
    Ok((headers, content.bytes).into_response())
}

/// Returns the 415 for an upload that is not a JPEG or PNG image of its declared type.
fn unsupported(error: InvalidIdPhoto) -> ApiError {
    let message = match error {
        InvalidIdPhoto::UnsupportedType => {
            "an ID photo must be sent as the raw image with Content-Type image/jpeg or image/png"
                .to_owned()
        }
        InvalidIdPhoto::ContentMismatch(content_type) => format!(
            "the request body is not a {content_type} image: send the photo file itself, with \
             the Content-Type of its format"
        ),
    };
    ApiError::new(ErrorCode::UnsupportedMediaType, message)
}

/// Turns the result of a store call into the value or the error, as
/// [`crate::patients::finish`] does, with 404 for a photo the patient does not have.
fn finish_photo<T>(result: Result<Result<T, StoreError>, PoolError>) -> Result<T, ApiError> {
    match result {
        Ok(Err(StoreError::PhotoNotFound { .. })) => {
            Err(ApiError::new(ErrorCode::NotFound, PHOTO_NOT_FOUND))
        }
        other => finish(other),
    }
}
