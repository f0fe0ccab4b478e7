//! `POST` and `GET /v1/patients/{id}/intake-forms`: a patient's intake forms.
//!
//! A form has a name (`form`, a slug such as `medical-history`, not a closed list, so a
//! clinic can add forms without a new release) and `answers`, a JSON object from question
//! ids to strings, numbers or booleans. The answers are sealed at rest under the patient
//! link's data key. Providers and the Storefront submit forms for any patient of their
//! tenant, and a patient account for itself. Providers list them, and a patient account
//! lists its own. Every write and read goes through an audited store method, which appends
//! `intake_form.submit` or `intake_form.list` in its transaction. A patient of another tenant
//! and a missing patient get the same 404 body, which names neither id.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Datelike, TimeDelta, Utc};
use medconnect_store::{IntakeForm, IntakeFormInfo, NewIntakeForm, Role, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::body::require_json_content_type;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::patient_path::{patient_in_path, reject_card_number, PATIENT_ID_DOC};
use crate::patients::{access_of, finish, tenant_of};
use crate::routes::AppState;

/// Largest request body of `POST /v1/patients/{id}/intake-forms`, in bytes, unless the
/// server's body limit is lower. It is above the 16 KiB that suits most JSON bodies because a
/// form carries up to [`MAX_ANSWERS`] free-text answers. A form whose every answer has the
/// maximum length does not fit and gets 413.
pub const INTAKE_FORM_BODY_LIMIT: usize = 64 * 1024;

/// Maximum number of answers in one form.
pub const MAX_ANSWERS: usize = 100;

/// Maximum characters of one text answer.
pub const MAX_ANSWER_CHARS: usize = 2_000;

/// Maximum characters of a number answer as sent.
pub const MAX_NUMBER_CHARS: usize = 32;

/// Maximum characters of a form name and of a question id.
pub const MAX_NAME_CHARS: usize = 64;

/// How far in the future `submitted_at` may be, to allow for clock skew between clients and
/// the server.
pub const MAX_CLOCK_SKEW: TimeDelta = TimeDelta::minutes(5);

/// The fields of the request body.
const FIELDS: [&str; 3] = ["form", "answers", "submitted_at"];

/// The body of `POST /v1/patients/{id}/intake-forms`. It contains PHI, so it has no `Debug`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IntakeFormRequest {
    /// The form's name: 1 to 64 lowercase letters, digits and hyphens, starting with a
    /// letter.
    pub form: String,
    /// Answers by question id: 1 to 100 entries whose keys are 1 to 64 lowercase letters,
    /// digits and underscores starting with a letter, and whose values are strings of at most
    /// 2000 characters, numbers or booleans.
    #[schema(value_type = Object)]
    pub answers: Map<String, Value>,
    /// When the patient completed the form, as RFC 3339 with an offset. The time of the
    /// request is used when it is absent.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub submitted_at: Option<String>,
}

/// The body of `GET /v1/patients/{id}/intake-forms`.
#[derive(Serialize, ToSchema)]
pub struct IntakeFormList {
    /// The patient's forms, newest `submitted_at` first.
    pub intake_forms: Vec<IntakeForm>,
}

/// Stores an intake form of a patient of the caller's tenant. Returns 201 with its id.
#[utoipa::path(
    post,
    path = "/v1/patients/{id}/intake-forms",
    operation_id = "submit_intake_form",
    tag = "patients",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = uuid::Uuid, Path, description = PATIENT_ID_DOC)),
    request_body = IntakeFormRequest,
    responses(
        (status = 201, description = "The form is stored; its answers are not repeated.",
            body = IntakeFormInfo),
        (status = 400, description = "The id is not a UUID, or the body is not JSON.",
            body = ErrorBody),
        (status = 403, description = "The caller is neither a provider, the Storefront nor the \
            patient itself, or has no tenant.", body = ErrorBody),
        (status = 404, description = "The caller's tenant has no patient with this id.",
            body = ErrorBody),
        (status = 415, description = "The body is not declared as application/json.",
            body = ErrorBody),
        (status = 422, description = "A field is missing, unknown or invalid, contains a card \
            number, or submitted_at is more than 5 minutes ahead. The message names the field.",
            body = ErrorBody),
        (status = 500, description = "The request could not be prepared for the audit log.",
            body = ErrorBody),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<IntakeFormInfo>), ApiError> {
    caller.require(&[Role::Provider, Role::Patient, Role::Storefront])?;
    let tenant = tenant_of(&caller)?;
    let patient = patient_in_path(&caller, &id, "submit intake forms")?;
    require_json_content_type(&headers)?;
    let form = parse_request(&body, state.clock.now()).inspect_err(|error| {
        tracing::info!(%tenant, %patient, code = error.code.as_str(), "intake form rejected");
    })?;
    let access = access_of(&caller)?;
    let stored = state
        .pool
        .run(move |store| -> Result<IntakeFormInfo, StoreError> {
            let tenant = store.tenant(tenant)?;
            store.submit_intake_form(&tenant, patient, &form, &access)
        })
        .await;
    let info = finish(stored).inspect_err(|error| {
        if error.code == ErrorCode::NotFound {
            tracing::info!(%tenant, %patient, "intake form for a patient not in the tenant");
        }
    })?;
    tracing::info!(%tenant, %patient, form_id = %info.id, "intake form stored");
    Ok((StatusCode::CREATED, Json(info)))
}

/// Lists a patient's intake forms with their answers, newest `submitted_at` first.
#[utoipa::path(
    get,
    path = "/v1/patients/{id}/intake-forms",
    operation_id = "list_intake_forms",
    tag = "patients",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = uuid::Uuid, Path, description = PATIENT_ID_DOC)),
    responses(
        (status = 200, description = "The patient's intake forms with decrypted answers.",
            body = IntakeFormList),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The caller is neither a provider nor the patient itself, \
            or has no tenant.", body = ErrorBody),
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
) -> Result<Json<IntakeFormList>, ApiError> {
    caller.require(&[Role::Provider, Role::Patient])?;
    let tenant = tenant_of(&caller)?;
    let patient = patient_in_path(&caller, &id, "read intake forms")?;
    let access = access_of(&caller)?;
    let read = state
        .pool
        .run(move |store| -> Result<Vec<IntakeForm>, StoreError> {
            let tenant = store.tenant(tenant)?;
            store.read_intake_forms(&tenant, patient, &access)
        })
        .await;
    let forms = finish(read).inspect_err(|error| {
        if error.code == ErrorCode::NotFound {
            tracing::info!(%tenant, %patient, "intake forms of a patient not in the tenant");
        }
    })?;
    Ok(Json(IntakeFormList { intake_forms: forms }))
}

fn unprocessable(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::UnprocessableEntity, message)
}

/// Parses and checks a request body. Card numbers are looked for in every string before any
/// other check of the values, so a card number is reported as such wherever it is. No error
/// quotes a value of the body.
pub fn parse_request(body: &[u8], now: DateTime<Utc>) -> Result<NewIntakeForm, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        ApiError::new(
            ErrorCode::BadRequest,
            "the request body is not valid JSON: send an object with form and answers",
        )
    })?;
    let Value::Object(fields) = &value else {
        return Err(unprocessable("the request body must be a JSON object with form and answers"));
    };
    if fields.keys().any(|name| !FIELDS.contains(&name.as_str())) {
        return Err(unprocessable(
            "the request body has a field this route does not accept: send only form, answers \
             and submitted_at",
        ));
    }
    for (name, field) in fields {
        if let Value::String(text) = field {
            reject_card_number(name, text)?;
        }
    }
    match fields.get("form") {
        Some(Value::String(_)) => {}
        Some(_) => return Err(unprocessable("form must be a string such as medical-history")),
        None => return Err(unprocessable("form is missing: name the form, such as intake")),
    }
    match fields.get("answers") {
        Some(Value::Object(answers)) => check_answers(answers)?,
        Some(_) => return Err(unprocessable("answers must be a JSON object of question ids")),
        None => return Err(unprocessable("answers is missing: send the form's answers")),
    }
    if !matches!(fields.get("submitted_at"), None | Some(Value::String(_))) {
        return Err(unprocessable("submitted_at must be a string such as 2026-03-01T09:30:00Z"));
    }

    let request: IntakeFormRequest = serde_json::from_value(value).map_err(|_| {
        // The error text of serde can quote a value, so it is not logged.
        tracing::warn!("an intake form that passed the field checks did not deserialize");
        unprocessable("the request body is not a valid intake form")
    })?;
    if !is_name(&request.form, b'-') {
        return Err(unprocessable(
            "form must be 1 to 64 lowercase letters, digits and hyphens, starting with a letter, \
             such as medical-history",
        ));
    }
    let submitted_at = match &request.submitted_at {
        None => now,
        Some(text) => parse_submitted_at(text, now)?,
    };
    Ok(NewIntakeForm { form: request.form, answers: request.answers, submitted_at })
}

/// Checks the count, the question ids and the values of the answers.
fn check_answers(answers: &Map<String, Value>) -> Result<(), ApiError> {
    if answers.is_empty() {
        return Err(unprocessable("answers is empty: send at least one answer"));
    }
    if answers.len() > MAX_ANSWERS {
        return Err(unprocessable(format!(
            "answers has {} entries: send at most {MAX_ANSWERS}",
            answers.len()
        )));
    }
    for (key, answer) in answers {
        // A key is checked before an error names it, so no message quotes free text.
        reject_card_number("a question id of answers", key)?;
        if !is_name(key, b'_') {
            return Err(unprocessable(
                "answers has a key that is not a question id: use 1 to 64 lowercase letters, \
                 digits and underscores, starting with a letter",
            ));
        }
        let field = format!("answers.{key}");
        match answer {
            Value::String(text) => {
                reject_card_number(&field, text)?;
                if text.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
                    return Err(unprocessable(format!(
                        "{field} contains control characters: send plain text"
                    )));
                }
                if text.chars().count() > MAX_ANSWER_CHARS {
                    return Err(unprocessable(format!(
                        "{field} is longer than {MAX_ANSWER_CHARS} characters: shorten it"
                    )));
                }
            }
            Value::Number(number) => {
                let text = number.to_string();
                reject_card_number(&field, &text)?;
                if text.len() > MAX_NUMBER_CHARS {
                    return Err(unprocessable(format!(
                        "{field} is a number of more than {MAX_NUMBER_CHARS} characters: send \
                         it as text if it is not a quantity"
                    )));
                }
            }
            Value::Bool(_) => {}
            Value::Null | Value::Array(_) | Value::Object(_) => {
                return Err(unprocessable(format!(
                    "{field} must be a string, number or boolean: leave out unanswered questions"
                )));
            }
        }
    }
    Ok(())
}

/// Returns whether `text` is 1 to [`MAX_NAME_CHARS`] lowercase ASCII letters, digits and
/// `separator`, starting with a letter.
fn is_name(text: &str, separator: u8) -> bool {
    let bytes = text.as_bytes();
    (1..=MAX_NAME_CHARS).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == separator)
}

/// Parses `submitted_at`: RFC 3339 with an offset, converted to UTC, at most
/// [`MAX_CLOCK_SKEW`] after `now`.
fn parse_submitted_at(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    let parsed = DateTime::parse_from_rfc3339(text).map_err(|_| {
        unprocessable(
            "submitted_at is not an RFC 3339 timestamp with an offset: use a form such as \
             2026-03-01T09:30:00+01:00 or 2026-03-01T08:30:00Z",
        )
    })?;
    let utc = parsed.with_timezone(&Utc);
    if utc.year() < 1900 {
        return Err(unprocessable(
            "submitted_at is before 1900: send the time the form was completed",
        ));
    }
    if utc > now + MAX_CLOCK_SKEW {
        return Err(unprocessable(
            "submitted_at is more than 5 minutes in the future: send the time the form was \
             completed, with its offset",
        ));
    }
    Ok(utc)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z").expect("instant").to_utc()
    }

    fn parse(body: Value) -> Result<NewIntakeForm, ApiError> {
        parse_request(body.to_string().as_bytes(), now())
    }

    fn message_of(body: Value) -> String {
        match parse(body) {
            Ok(_) => panic!("the body was accepted"),
            Err(error) => {
                assert_eq!(error.code, ErrorCode::UnprocessableEntity, "{}", error.message);
                error.message
            }
        }
    }

    #[test]
    fn valid_form_parses() {
        let body = json!({
            "form": "medical-history",
            "answers": { "symptoms": "headache", "age": 41, "smoker": false },
            "submitted_at": "2026-03-01T13:30:00+02:00",
        });
        let form = parse(body).expect("valid");
        assert_eq!(form.form, "medical-history");
        assert_eq!(form.answers.len(), 3);
        assert_eq!(form.submitted_at.to_rfc3339(), "2026-03-01T11:30:00+00:00");
        let without_time = parse(json!({ "form": "consent", "answers": { "agreed": true } }));
        assert_eq!(without_time.expect("valid").submitted_at, now());
    }

    #[test]
    fn card_numbers_are_named_not_echoed() {
        let cases = [
            (
                json!({ "form": "intake", "answers": { "notes": "card 4111 1111 1111 1111" } }),
                "answers.notes",
            ),
            (json!({ "form": "intake", "answers": { "pay": 4111111111111111u64 } }), "answers.pay"),
            (json!({ "form": "a-4111111111111111", "answers": { "a": 1 } }), "form"),
            (json!({ "form": "f4111111111111111", "answers": { "a": 1 } }), "form"),
            (
                json!({ "form": "intake", "answers": { "q4111111111111111": "x" } }),
                "a question id of answers",
            ),
            (
                json!({ "form": "intake", "answers": { "a": "4111\t1111\u{a0}1111\n1111" } }),
                "answers.a",
            ),
            (
                json!({
                    "form": "intake", "answers": { "a": 1 }, "submitted_at": "4111111111111111"
                }),
                "submitted_at",
            ),
        ];
        for (body, field) in cases {
            let message = message_of(body);
            assert!(message.starts_with(&format!("{field} contains a payment card number")));
            assert!(!message.contains("4111"), "{message}");
        }
    }

    #[test]
    fn submitted_before_1900_rejected() {
        let body = json!({
            "form": "intake", "answers": { "a": 1 }, "submitted_at": "0001-01-01T00:00:00-23:59"
        });
        assert!(message_of(body).starts_with("submitted_at is before 1900"));
    }

    #[test]
    fn control_characters_rejected() {
        let body = json!({ "form": "intake", "answers": { "a": "a\u{0}b\u{1b}[31m" } });
        let message = message_of(body);
        assert!(message.starts_with("answers.a contains control characters"), "{message}");
        let lines = json!({ "form": "intake", "answers": { "a": "line one\nline two\tend" } });
        assert!(parse(lines).is_ok(), "line breaks and tabs are plain text");
    }

    #[test]
    fn invalid_bodies_are_rejected() {
        let long = "x".repeat(MAX_ANSWER_CHARS + 1);
        let many: Map<String, Value> =
            (0..=MAX_ANSWERS).map(|i| (format!("q{i}"), Value::Bool(true))).collect();
        let cases = [
            (
                json!({ "form": "intake", "answers": { "a": 1 }, "extra": "Jane Doe" }),
                "field this route",
            ),
            (json!({ "answers": { "a": 1 } }), "form is missing"),
            (json!({ "form": "intake" }), "answers is missing"),
            (json!({ "form": 3, "answers": { "a": 1 } }), "form must be a string"),
            (json!({ "form": "Intake Form", "answers": { "a": 1 } }), "form must be 1 to 64"),
            (json!({ "form": "intake", "answers": [1] }), "answers must be a JSON object"),
            (json!({ "form": "intake", "answers": {} }), "answers is empty"),
            (json!({ "form": "intake", "answers": many }), "answers has 101 entries"),
            (json!({ "form": "intake", "answers": { "Jane Doe": 1 } }), "answers has a key"),
            (json!({ "form": "intake", "answers": { "a": null } }), "answers.a must be"),
            (json!({ "form": "intake", "answers": { "a": { "b": 1 } } }), "answers.a must be"),
            (json!({ "form": "intake", "answers": { "a": long } }), "answers.a is longer"),
            (
                json!({ "form": "intake", "answers": { "a": 1 }, "submitted_at": "2026-03-01" }),
                "with an offset",
            ),
            (
                json!({
                    "form": "intake", "answers": { "a": 1 }, "submitted_at": "2026-03-01T12:05:01Z"
                }),
                "in the future",
            ),
            (
                json!({ "form": "intake", "answers": { "a": 1 }, "submitted_at": 5 }),
                "submitted_at must be",
            ),
        ];
        for (body, expected) in cases {
            let message = message_of(body);
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
            assert!(!message.contains("Jane"), "{message}");
        }
        let within_skew = json!({
            "form": "intake", "answers": { "a": 1 }, "submitted_at": "2026-03-01T12:05:00Z"
        });
        assert!(parse(within_skew).is_ok());
        let not_json = parse_request(b"{\"form\":", now()).err().expect("rejected");
        assert_eq!(not_json.code, ErrorCode::BadRequest);
    }
}
