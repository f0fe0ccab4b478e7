//! `GET /v1/holds`, `POST /v1/holds` and `POST /v1/holds/{hold_id}/release`: legal holds.
//!
//! A tenant administrator manages the holds of its own tenant, which comes from its
//! credentials, and a platform operator those of any tenant. Other roles get 403. A hold of
//! another tenant and a missing hold get the same 404 body for a tenant administrator, which
//! names neither id. Placing and releasing go through the store's `place_hold` and
//! `release_hold`, which append `hold.place` or `hold.release` with the caller's actor
//! (`user:<id>` or `token:<id>`) in the transaction of the change. The JSON of a hold is the
//! one `medconnect hold list --json` prints.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use medconnect_domain::model::{HoldScope, LegalHold, Tenant};
use medconnect_domain::sanitize::input_contains_card_number;
use medconnect_domain::{HoldId, PatientId, TenantId};
use medconnect_store::{Role, StoreError};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::{store_failure, Caller};
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::patients::access_of;
use crate::pool::PoolError;
use crate::query::QueryParams;
use crate::routes::AppState;

/// Largest body of `POST /v1/holds`, in bytes: the longest matter and reason with room for
/// JSON escapes.
pub const HOLD_BODY_LIMIT: usize = 16 * 1024;

/// Maximum characters of a hold's matter, such as a case number or a short case name.
pub const MAX_MATTER_CHARS: usize = 200;

/// Maximum characters of a hold's reason.
pub const MAX_REASON_CHARS: usize = 2000;

const HOLD_ROLES: [Role; 2] = [Role::TenantAdmin, Role::PlatformOperator];

/// The message of every 404 for a hold id. It is the same for a missing hold and another
/// tenant's, and names no id.
const HOLD_NOT_FOUND: &str =
    "no legal hold with this id in the caller's scope: list the holds at GET /v1/holds?all=true";

/// The message of the 404 for a patient that the hold's tenant does not have. It names no id.
const PATIENT_NOT_FOUND: &str = "field patient_id names no patient of the hold's tenant: list \
                                 the tenant's patients at GET /v1/patients";

/// The body of `POST /v1/holds`. Fields are checked in [`NewHold::validate`], so each error
/// names its field.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// `tenant` for every record of the tenant, or `patient` for one patient's.
    #[schema(example = "patient")]
    scope: Option<String>,
    /// The patient of a `patient` hold, from `GET /v1/patients`.
    #[schema(value_type = Option<uuid::Uuid>)]
    patient_id: Option<String>,
    /// The legal matter, such as a case number: one line of at most 200 characters.
    #[schema(example = "case 2026-cv-0042")]
    matter: Option<String>,
    /// Why the records are held: one line of at most 2000 characters.
    reason: Option<String>,
    /// The tenant's slug. A platform operator must send it, and any other caller must not.
    tenant: Option<String>,
}

/// A validated `POST /v1/holds` request.
struct NewHold {
    target: TenantTarget,
    scope: HoldScope,
    matter: String,
    reason: String,
}

/// The tenant a hold is placed on.
enum TenantTarget {
    /// The caller's own tenant.
    Own(TenantId),
    /// A tenant an operator named by slug.
    Slug(String),
}

/// The part of a request that carried a value: a body field (422 when invalid) or a query
/// parameter (400 when invalid).
#[derive(Clone, Copy)]
enum Sent {
    Field,
    Query,
}

impl Sent {
    fn code(self) -> ErrorCode {
        match self {
            Sent::Field => ErrorCode::UnprocessableEntity,
            Sent::Query => ErrorCode::BadRequest,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Sent::Field => "field",
            Sent::Query => "query parameter",
        }
    }
}

/// Lists the active legal holds (with `?all=true` also the released ones) of the caller's
/// tenant. A platform operator gets those of every tenant, or of one with `?tenant=SLUG`.
#[utoipa::path(
    get,
    path = "/v1/holds",
    operation_id = "list_holds",
    tag = "holds",
    security(("bearer" = []), ("session_cookie" = [])),
    params(
        ("all" = Option<bool>, Query, description = "Also list released holds."),
        ("tenant" = Option<String>, Query, description = "A tenant's slug; platform operators \
            only."),
    ),
    responses(
        (status = 200, description = "The holds, as `medconnect hold list --json` prints them.",
            body = Vec<LegalHold>),
        (status = 400, description = "A query parameter is unknown or invalid, names no tenant, \
            or names a tenant although the caller has one.", body = ErrorBody),
        (status = 403, description = "The caller is neither tenant_admin nor platform_operator.",
            body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<LegalHold>>, ApiError> {
    caller.require(&HOLD_ROLES)?;
    let params = QueryParams::parse(query.as_deref(), &["tenant", "all"])?;
    let include_released =
        params.parsed("all", "true or false", |value| value.parse::<bool>().ok())?;
    let include_released = include_released.unwrap_or(false);
    let slug = params.get("tenant").map(str::to_owned);
    let target = match (caller.tenant_id, slug) {
        (Some(_), Some(_)) => return Err(tenant_not_accepted(Sent::Query)),
        (Some(own), None) => Some(TenantTarget::Own(own)),
        (None, slug) => slug.map(TenantTarget::Slug),
    };
    let listed = state
        .pool
        .run(move |store| -> Result<Vec<LegalHold>, StoreError> {
            let tenant = target.map(|target| resolve(store, target)).transpose()?;
            store.holds(tenant.map(|tenant| tenant.id), include_released)
        })
        .await;
    Ok(Json(finish(listed, Sent::Query, HOLD_NOT_FOUND)?))
}

/// Places a legal hold and returns it with 201.
#[utoipa::path(
    post,
    path = "/v1/holds",
    operation_id = "place_hold",
    tag = "holds",
    security(("bearer" = []), ("session_cookie" = [])),
    request_body = HoldRequest,
    responses(
        (status = 201, description = "The hold placed.", body = LegalHold),
        (status = 400, description = "The body is not valid JSON.", body = ErrorBody),
        (status = 403, description = "The caller is neither tenant_admin nor platform_operator.",
            body = ErrorBody),
        (status = 404, description = "The hold's tenant has no patient with this patient_id.",
            body = ErrorBody),
        (status = 415, description = "The body is not application/json.", body = ErrorBody),
        (status = 422, description = "A field is missing, unknown or invalid, or contains a \
            card number.", body = ErrorBody),
        (status = 500, description = "The request could not be prepared for the audit log.",
            body = ErrorBody),
    )
)]
pub async fn place(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<HoldRequest>,
) -> Result<(StatusCode, Json<LegalHold>), ApiError> {
    caller.require(&HOLD_ROLES)?;
    let hold = NewHold::validate(request, &caller)?;
    let access = access_of(&caller)?;
    let placed = state
        .pool
        .run(move |store| -> Result<LegalHold, StoreError> {
            let tenant = resolve(store, hold.target)?;
            store.place_hold(&tenant, hold.scope, &hold.matter, &hold.reason, access.actor())
        })
        .await;
    let hold = finish(placed, Sent::Field, PATIENT_NOT_FOUND)?;
    tracing::info!(hold_id = %hold.id, tenant_id = %hold.tenant_id, "legal hold placed");
    Ok((StatusCode::CREATED, Json(hold)))
}

/// Releases an active legal hold and returns it. A released hold gets 409.
#[utoipa::path(
    post,
    path = "/v1/holds/{hold_id}/release",
    operation_id = "release_hold",
    tag = "holds",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("hold_id" = uuid::Uuid, Path, description = "The hold id, from `GET /v1/holds`.")),
    responses(
        (status = 200, description = "The hold, released.", body = LegalHold),
        (status = 400, description = "The hold id is not a UUID.", body = ErrorBody),
        (status = 403, description = "The caller is neither tenant_admin nor platform_operator.",
            body = ErrorBody),
        (status = 404, description = "No hold with this id in the caller's tenant (any tenant \
            for an operator).", body = ErrorBody),
        (status = 409, description = "The hold is already released.", body = ErrorBody),
        (status = 500, description = "The request could not be prepared for the audit log.",
            body = ErrorBody),
    )
)]
pub async fn release(
    State(state): State<AppState>,
    caller: Caller,
    Path(hold_id): Path<String>,
) -> Result<Json<LegalHold>, ApiError> {
    caller.require(&HOLD_ROLES)?;
    // The path value is never echoed.
    let id = HoldId::parse(&hold_id).map_err(|_| {
        ApiError::new(
            ErrorCode::BadRequest,
            "path parameter hold_id is not a hold id: use the UUID of a hold from GET /v1/holds",
        )
    })?;
    let access = access_of(&caller)?;
    let tenant = caller.tenant_id;
    let released =
        state.pool.run(move |store| store.release_hold(tenant, id, access.actor())).await;
    let hold = finish(released, Sent::Query, HOLD_NOT_FOUND).inspect_err(|error| {
        if error.code == ErrorCode::NotFound {
            tracing::info!(hold_id = %id, "legal hold not found in the caller's scope");
        }
    })?;
    tracing::info!(hold_id = %hold.id, tenant_id = %hold.tenant_id, "legal hold released");
    Ok(Json(hold))
}

impl NewHold {
    /// Checks every field of a request. An error names the field and what to send, never
    /// the value sent.
    fn validate(request: HoldRequest, caller: &Caller) -> Result<Self, ApiError> {
        let target = match (caller.tenant_id, request.tenant) {
            (Some(_), Some(_)) => return Err(tenant_not_accepted(Sent::Field)),
            (Some(own), None) => TenantTarget::Own(own),
            (None, Some(slug)) => TenantTarget::Slug(slug),
            (None, None) => {
                return Err(invalid(
                    "field tenant is missing: a platform operator names the tenant of the \
                     hold by its slug",
                ))
            }
        };
        let patient = match request.patient_id.as_deref() {
            None => None,
            Some(value) => Some(PatientId::parse(value).map_err(|_| {
                invalid("field patient_id is not a patient id: use a UUID from GET /v1/patients")
            })?),
        };
        let scope = match (request.scope.as_deref(), patient) {
            (Some("tenant"), None) => HoldScope::WholeTenant,
            (Some("patient"), Some(patient)) => HoldScope::Patient(patient),
            (Some("tenant"), Some(_)) => {
                return Err(invalid(
                    "field patient_id is not accepted with scope tenant: remove it, or use \
                     scope patient",
                ))
            }
            (Some("patient"), None) => {
                return Err(invalid("field patient_id is missing: scope patient needs it"))
            }
            _ => return Err(invalid("field scope is missing or invalid: use tenant or patient")),
        };
        let matter = text_field("matter", request.matter, MAX_MATTER_CHARS)?;
        let reason = text_field("reason", request.reason, MAX_REASON_CHARS)?;
        Ok(NewHold { target, scope, matter, reason })
    }
}

/// Checks a free-text field: present, not blank, at most `max_chars` characters, without
/// control characters or a card number. Returns it trimmed.
fn text_field(name: &str, value: Option<String>, max_chars: usize) -> Result<String, ApiError> {
    let Some(value) = value else {
        return Err(invalid(format!("field {name} is missing: an auditor needs it")));
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(invalid(format!("field {name} is blank: an auditor needs it")));
    }
    if value.chars().count() > max_chars {
        return Err(invalid(format!("field {name} is longer than {max_chars} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(format!(
            "field {name} contains control characters: send one line of plain text"
        )));
    }
    if input_contains_card_number(value) {
        return Err(invalid(format!(
            "field {name} contains a payment card number: remove it, because a hold's text is \
             not the place for card data"
        )));
    }
    Ok(value.to_owned())
}

/// Returns the tenant of a request: the caller's own, or the one an operator named.
fn resolve(
    store: &mut dyn medconnect_store::Store,
    target: TenantTarget,
) -> Result<Tenant, StoreError> {
    match target {
        TenantTarget::Own(id) => store.tenant(id),
        TenantTarget::Slug(slug) => store.tenant_by_slug(&slug),
    }
}

/// Turns the result of a store call into the value or the error for the client. A tenant
/// slug that names no tenant gets 422, or 400 when `slug` was a query parameter. A missing
/// patient or hold gets 404 with `not_found`, a hold released before gets 409, and anything
/// else gets 503, with the cause in the log.
fn finish<T>(
    result: Result<Result<T, StoreError>, PoolError>,
    slug: Sent,
    not_found: &str,
) -> Result<T, ApiError> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(StoreError::TenantNotFound(_))) => Err(ApiError::new(
            slug.code(),
            format!(
                "{} tenant names no tenant: use a slug from `medconnect tenant list`",
                slug.name()
            ),
        )),
        Ok(Err(StoreError::PatientNotFound { .. } | StoreError::HoldNotFound(_))) => {
            Err(ApiError::new(ErrorCode::NotFound, not_found))
        }
        Ok(Err(StoreError::HoldAlreadyReleased(_))) => Err(ApiError::new(
            ErrorCode::Conflict,
            "this legal hold is already released: GET /v1/holds?all=true shows when and by whom",
        )),
        Ok(Err(error)) => Err(store_failure(&error)),
        Err(error) => Err(store_failure(&error)),
    }
}

/// Returns the error for a tenant sent by a caller that has one: its tenant comes from its
/// credentials, never from the request.
fn tenant_not_accepted(sent: Sent) -> ApiError {
    ApiError::new(
        sent.code(),
        format!(
            "{} tenant is not accepted from this caller: its tenant comes from its \
             credentials, so remove it",
            sent.name()
        ),
    )
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::UnprocessableEntity, message)
}
