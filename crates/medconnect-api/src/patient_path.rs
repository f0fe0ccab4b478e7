//! Steps shared by the routes under `/v1/patients/{id}/...`: the patient id of the path and
//! the rule that a patient account acts only on its own record.

use medconnect_domain::sanitize::input_contains_card_number;
use medconnect_domain::PatientId;
use medconnect_store::Role;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};

/// The OpenAPI description of the `{id}` path parameter of every patient route.
pub(crate) const PATIENT_ID_DOC: &str = "The patient id, from `GET /v1/patients`.";

/// Parses the patient id of the path. A patient account gets 403 for any id but its own,
/// before any store call and whether that patient exists or not, so the response reveals
/// nothing. `what` names the action in the 403 message, such as "submit intake forms".
pub(crate) fn patient_in_path(
    caller: &Caller,
    id: &str,
    what: &str,
) -> Result<PatientId, ApiError> {
    // The path value is never echoed: a client may paste PHI where an id belongs.
    let patient = PatientId::parse(id).map_err(|_| {
        ApiError::new(
            ErrorCode::BadRequest,
            "path parameter id is not a patient id: use a UUID such as \
             3f6fd0bb-1c2d-4e5f-8a9b-0123456789ab from GET /v1/patients",
        )
    })?;
    if caller.role == Role::Patient && caller.patient != Some(patient) {
        let tenant = caller.tenant_id.map(|id| id.to_string()).unwrap_or_default();
        tracing::info!(%tenant, %patient, "a patient account named another patient: 403");
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "a patient account may {what} only for its own record: use the patient_id of \
                 GET /v1/me"
            ),
        ));
    }
    Ok(patient)
}

/// Returns the 422 for a request field that contains a payment card number. It names the
/// field and never the value.
pub(crate) fn card_number_error(field: &str) -> ApiError {
    tracing::info!(field, "request rejected: a field contains a payment card number");
    ApiError::new(
        ErrorCode::UnprocessableEntity,
        format!(
            "{field} contains a payment card number: remove it and send the request again, \
             because MedConnect never stores card numbers"
        ),
    )
}

/// Returns [`card_number_error`] when `value` contains a payment card number.
pub(crate) fn reject_card_number(field: &str, value: &str) -> Result<(), ApiError> {
    if input_contains_card_number(value) {
        return Err(card_number_error(field));
    }
    Ok(())
}
