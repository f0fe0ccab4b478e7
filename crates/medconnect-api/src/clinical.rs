//! Parts shared by the clinical routes under `/v1/patients/{id}/...`: the patient in the path,
//! the audited store call, and checks of JSON request bodies.
//!
//! A body is read as bytes and checked in this order: media type (415), JSON syntax (400), and
//! a JSON object with only the route's fields (422). Then no string may contain a payment card
//! number, and each field must have its type (422 naming the field). No error message quotes a
//! value or an unknown field name that the client sent, because a client may paste PHI
//! anywhere. Handlers then check ranges and timestamps with the helpers here.

use axum::http::HeaderMap;
use chrono::{DateTime, TimeDelta, Utc};
use medconnect_domain::model::Tenant;
use medconnect_domain::policy::Policy;
use medconnect_domain::sanitize::input_contains_card_number;
use medconnect_domain::time::parse_instant_rounding_up;
use medconnect_domain::PatientId;
use medconnect_store::{Access, Role, Store, StoreError};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::Caller;
use crate::body::require_json_content_type;
use crate::error::{ApiError, ErrorCode};
use crate::error_chain;
use crate::patients::{access_of, finish, tenant_of};
use crate::routes::AppState;

/// Body limit of the clinical JSON routes, in bytes: room for the longest notes field.
pub const CLINICAL_BODY_LIMIT: usize = 16 * 1024;

/// How far in the future a timestamp may lie, for clocks that run a little ahead.
const MAX_CLOCK_SKEW: TimeDelta = TimeDelta::minutes(5);

/// The earliest timestamp a clinical record may carry: 1900-01-01T00:00:00Z.
const EARLIEST_TIMESTAMP: i64 = -2_208_988_800;

/// One field a route accepts, and what a valid value is, for error messages.
pub struct Field {
    pub name: &'static str,
    pub expected: &'static str,
}

/// Returns the patient named by the path, or 400 when it is no patient id. A patient
/// account gets 403 for any id but its own, before any store call, so the response reveals
/// nothing about that id.
pub fn patient_in_path(caller: &Caller, id: &str) -> Result<PatientId, ApiError> {
    // The path value is never echoed: a client may paste PHI where an id belongs.
    let patient = PatientId::parse(id).map_err(|_| {
        ApiError::new(
            ErrorCode::BadRequest,
            "path parameter id is not a patient id: use a UUID such as \
             3f6fd0bb-1c2d-4e5f-8a9b-0123456789ab from GET /v1/patients",
        )
    })?;
    if caller.role == Role::Patient && caller.patient != Some(patient) {
        tracing::info!(%patient, "a patient account requested another patient's records: 403");
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a patient account may read only its own records: use the patient_id of GET /v1/me",
        ));
    }
    Ok(patient)
}

/// Runs `call` on a store of the pool with the caller's tenant and an [`Access`] for the
/// caller. A patient the tenant does not have becomes 404, and a `consultation_id` that is
/// not one of the patient's becomes 422.
pub async fn run_audited<T, F>(state: &AppState, caller: &Caller, call: F) -> Result<T, ApiError>
where
    F: FnOnce(&mut dyn Store, &Tenant, &Access) -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    let tenant_id = tenant_of(caller)?;
    let access = access_of(caller)?;
    let result = state
        .pool
        .run(move |store| {
            let tenant = store.tenant(tenant_id)?;
            call(store, &tenant, &access)
        })
        .await;
    if let Ok(Err(StoreError::ConsultationNotFound { consultation, .. })) = &result {
        tracing::info!(tenant = %tenant_id, %consultation, "consultation_id is not the patient's: 422");
        return Err(unprocessable(
            "consultation_id",
            "is not a consultation of this patient: use an id from \
             GET /v1/patients/{id}/consultations",
        ));
    }
    finish(result).inspect_err(|error| {
        if error.code == ErrorCode::NotFound {
            tracing::info!(tenant = %tenant_id, "patient not found in the caller's tenant");
        }
    })
}

/// Loads the policy in force on a blocking thread.
pub async fn policy_in_force(state: &AppState) -> Result<Policy, ApiError> {
    let source = std::sync::Arc::clone(&state.policy);
    let failure = match tokio::task::spawn_blocking(move || source()).await {
        Ok(Ok(loaded)) => return Ok(loaded.policy),
        Ok(Err(error)) => error_chain(&*error),
        Err(_) => "loading the policy panicked".to_owned(),
    };
    tracing::error!(cause = %failure, "loading the policy in force failed");
    Err(ApiError::new(
        ErrorCode::Internal,
        "the policy in force could not be loaded: the server log names the cause",
    ))
}

/// Returns a 422 error naming `field`.
pub fn unprocessable(field: &str, problem: &str) -> ApiError {
    ApiError::new(ErrorCode::UnprocessableEntity, format!("field `{field}` {problem}"))
}

/// Parses a JSON object body with only the `fields` given, as the module documentation
/// describes.
pub fn parse_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    fields: &[Field],
) -> Result<T, ApiError> {
    require_json_content_type(headers)?;
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        ApiError::new(ErrorCode::BadRequest, "the request body is not valid JSON: send one object")
    })?;
    let names: Vec<&str> = fields.iter().map(|field| field.name).collect();
    let Value::Object(object) = &value else {
        return Err(ApiError::new(
            ErrorCode::UnprocessableEntity,
            format!("the request body must be a JSON object with the fields {}", names.join(", ")),
        ));
    };
    if object.keys().any(|key| !names.contains(&key.as_str())) {
        return Err(ApiError::new(
            ErrorCode::UnprocessableEntity,
            format!(
                "the request body has a field this route does not accept: the fields are {}",
                names.join(", ")
            ),
        ));
    }
    for (key, field_value) in object {
        if contains_card_in(field_value) {
            return Err(unprocessable(
                key,
                "contains a payment card number: remove it, because card numbers are never \
                 stored with clinical records",
            ));
        }
    }
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner().to_string();
        // serde names a missing field with the struct's own field name, never client input.
        if inner.starts_with("missing field") {
            return ApiError::new(ErrorCode::UnprocessableEntity, inner);
        }
        match fields.iter().find(|field| field.name == path) {
            Some(field) => {
                unprocessable(field.name, &format!("is invalid: send {}", field.expected))
            }
            None => ApiError::from_code(ErrorCode::UnprocessableEntity),
        }
    })
}

fn contains_card_in(value: &Value) -> bool {
    match value {
        Value::String(text) => input_contains_card_number(text),
        Value::Array(items) => items.iter().any(contains_card_in),
        Value::Object(object) => object
            .iter()
            .any(|(key, value)| input_contains_card_number(key) || contains_card_in(value)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Parses an RFC 3339 timestamp with an offset into UTC, rounding a fractional second up so
/// that retention counted from it never ends early. It must lie between 1900 and 5 minutes
/// after `now`.
pub fn timestamp(field: &str, value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    let invalid = || {
        unprocessable(
            field,
            "is not an RFC 3339 timestamp with an offset: send a value such as \
             2024-06-01T09:30:00Z or 2024-06-01T11:30:00+02:00",
        )
    };
    // RFC 3339 requires the offset, so the bare dates that parse_instant also takes are
    // rejected here.
    DateTime::parse_from_rfc3339(value).map_err(|_| invalid())?;
    let instant = parse_instant_rounding_up(value).map_err(|_| invalid())?;
    if instant.timestamp() < EARLIEST_TIMESTAMP {
        return Err(unprocessable(field, "is before 1900-01-01: send the real time"));
    }
    if instant > now + MAX_CLOCK_SKEW {
        return Err(unprocessable(
            field,
            "is more than 5 minutes in the future: send a time that has passed",
        ));
    }
    Ok(instant)
}

/// Checks that a text field has `min..=max` characters and no control characters other
/// than line breaks and tabs.
pub fn text(field: &str, value: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let count = value.chars().count();
    if count < min || count > max {
        return Err(unprocessable(field, &format!("must have {min} to {max} characters")));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t') {
        return Err(unprocessable(field, "contains control characters: send plain text"));
    }
    Ok(())
}

/// Checks that a field's value is one of `allowed`.
pub fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<(), ApiError> {
    if allowed.contains(&value) {
        return Ok(());
    }
    Err(unprocessable(field, &format!("is not allowed: use one of {}", allowed.join(", "))))
}
