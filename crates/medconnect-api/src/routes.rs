//! The routes and their handlers.
//!
//! | route | response |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs; touches no store |
//! | `GET /readyz` | 200 when a store from the pool returns its `info()`, else 503 |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /v1/openapi.json` | the OpenAPI document of these routes; open to anyone |
//! | `POST /v1/login` | a new session token for a username and password; open to anyone |
//! | `POST /v1/logout` | 204 after ending the caller's session |
//! | `GET /v1/me` | the caller's role, tenant and ids |
//! | `GET /v1/policy` | the retention policy in force, as `medconnect policy show --json` prints it |
//! | `GET /v1/patients` | the patients linked to the caller's tenant, as [`crate::patients`] describes |
//! | `GET /v1/patients/{id}` | one patient of the caller's tenant: link, counts and profile |
//! | `POST /v1/patients/{id}/intake-forms` | 201 after storing an intake form, as [`crate::intake_forms`] describes |
//! | `GET /v1/patients/{id}/intake-forms` | the patient's intake forms with answers, newest first |
//! | `POST /v1/patients/{id}/id-photos` | 201 after storing a JPEG or PNG body, as [`crate::id_photos`] describes |
//! | `GET /v1/patients/{id}/id-photos` | metadata of the patient's ID photos, newest first |
//! | `GET /v1/patients/{id}/id-photos/{photo_id}` | the image of one of the patient's ID photos |
//! | `POST /v1/patients/{id}/encounters` | 201 after recording an encounter; the link's new retention |
//! | `GET /v1/patients/{id}/consultations` | the patient's consultations, newest first |
//! | `POST /v1/patients/{id}/consultations` | 201 after creating a consultation; the link's new retention |
//! | `GET /v1/patients/{id}/prescriptions` | the patient's prescriptions, newest first |
//! | `POST /v1/patients/{id}/prescriptions` | 201 with the new prescription |
//! | `GET /v1/holds` | legal holds of the caller's tenant, or of any tenant for an operator |
//! | `POST /v1/holds` | 201 and the legal hold placed, as [`crate::holds`] describes |
//! | `POST /v1/holds/{hold_id}/release` | the hold, released |
//! | `GET /v1/lifecycle/plan` | what the next lifecycle run would do, as `lifecycle plan --json` |
//! | `GET /v1/lifecycle/explain/{patient_id}` | why a patient's records are kept or due |
//! | `POST /v1/lifecycle/run` | one lifecycle run now and its report; 409 while one is under way |
//! | `GET /v1/audit` | audit entries after `after_seq`, at most `limit`; recorded as `audit.read` |
//! | `GET /v1/audit/verify` | the audit chain check, as `medconnect audit verify --json` prints it |
//!
//! Every `/v1` route but the login requires a caller, as [`crate::auth`] describes.
//! Paths that match no route get a JSON 404, known paths with another method a JSON 405.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{middleware, Json, Router};
use medconnect_domain::clock::Clock;
use medconnect_domain::policy::Policy;
use medconnect_domain::{PatientId, ServiceTokenId, SessionId, TenantId, UserId};
use medconnect_store::Role;
use serde::Serialize;
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::ToSchema;

use crate::auth::{self, Caller, Credential};
use crate::clinical::CLINICAL_BODY_LIMIT;
use crate::error::{self, ApiError, ErrorBody, ErrorCode};
use crate::id_photos::{self, ID_PHOTO_BODY_LIMIT};
use crate::intake_forms::{self, INTAKE_FORM_BODY_LIMIT};
use crate::limiter::LoginLimiter;
use crate::login::{self, LOGIN_BODY_LIMIT};
use crate::metrics::{self, Metrics};
use crate::pool::StorePool;
use crate::reads::PatientReads;
use crate::scheduler::LifecycleRunner;
use crate::{audit, holds, lifecycle, openapi, patients};
use crate::{consultations, encounters, prescriptions};
use crate::{error_chain, BoxError};

/// Loads the policy in force. Called on a blocking thread for each request that needs it, so
/// a policy file changed on disk takes effect without a restart, as it does for the CLI.
pub type PolicySource = dyn Fn() -> Result<PolicyInForce, BoxError> + Send + Sync;

/// Loads the public key that audit checkpoints must be signed with, or None when the server
/// has none. Called on a blocking thread for each `GET /v1/audit/verify`.
pub type AuditKeySource = dyn Fn() -> Result<Option<medconnect_domain::checkpoint::AuditPublicKey>, BoxError>
    + Send
    + Sync;

/// The retention policy in force and the file it was read from.
pub struct PolicyInForce {
    pub file: PathBuf,
    pub policy: Policy,
}

/// State shared by the handlers.
#[derive(Clone)]
pub struct AppState {
    pub pool: StorePool,
    pub metrics: Metrics,
    pub policy: Arc<PolicySource>,
    /// How long `/readyz` waits for a store before it returns 503.
    pub readiness_timeout: Duration,
    /// The clock that dates sessions and decides whether a token has expired.
    pub clock: Arc<dyn Clock>,
    /// Lifetime of a new session.
    pub session_ttl: Duration,
    pub limiter: Arc<LoginLimiter>,
    /// The queue that runs `GET /v1/patients/{id}` reads in batches.
    pub reads: PatientReads,
    /// Runs the lifecycle on this node, or None where another process runs it.
    pub lifecycle: Option<Arc<LifecycleRunner>>,
    pub audit_public_key: Option<Arc<AuditKeySource>>,
}

/// Builds the router. Every route accepts request bodies of at most `body_limit` bytes, the
/// login at most [`LOGIN_BODY_LIMIT`], and the ID photo upload [`ID_PHOTO_BODY_LIMIT`]
/// whatever `body_limit` is.
pub fn router(state: AppState, body_limit: usize) -> Router {
    let metrics = state.metrics.clone();
    let authenticated = Router::new()
        .route("/v1/policy", limited(get(policy), body_limit))
        .route("/v1/me", limited(get(me), body_limit))
        .route("/v1/logout", limited(post(login::logout), body_limit))
        .route("/v1/patients", limited(get(patients::list), body_limit))
        .route("/v1/patients/{id}", limited(get(patients::read), body_limit))
        .merge(intake_and_photo_routes(body_limit))
        .merge(clinical_routes(body_limit))
        .merge(operator_routes(body_limit))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate));
    let login_limit = LOGIN_BODY_LIMIT.min(body_limit);
    Router::new()
        .route("/healthz", limited(get(healthz), body_limit))
        .route("/readyz", limited(get(readyz), body_limit))
        .route("/metrics", limited(get(render_metrics), body_limit))
        .route("/v1/openapi.json", limited(get(openapi::serve), body_limit))
        .route("/v1/login", limited(post(login::login), login_limit))
        .merge(authenticated)
        .fallback(error::not_found)
        .layer(middleware::from_fn(error::json_errors))
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn_with_state(metrics, metrics::track_requests))
        .with_state(state)
}

/// Adds to every response the headers that keep PHI out of caches and browsers on plain HTTP:
/// `Cache-Control: no-store` (unless the handler set its own), `Strict-Transport-Security`
/// for a year, and `X-Content-Type-Options: nosniff`.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// Builds the routes of legal holds, the lifecycle and the audit log. Only `POST /v1/holds`
/// reads a body, so the others accept none.
fn operator_routes(body_limit: usize) -> Router<AppState> {
    let hold_limit = holds::HOLD_BODY_LIMIT.min(body_limit);
    let empty = 0;
    Router::new()
        .route("/v1/holds", limited(get(holds::list).post(holds::place), hold_limit))
        .route("/v1/holds/{hold_id}/release", limited(post(holds::release), empty))
        .route("/v1/lifecycle/plan", limited(get(lifecycle::plan), empty))
        .route("/v1/lifecycle/explain/{patient_id}", limited(get(lifecycle::explain), empty))
        .route("/v1/lifecycle/run", limited(post(lifecycle::run), empty))
        .route("/v1/audit", limited(get(audit::list), empty))
        .route("/v1/audit/verify", limited(get(audit::verify), empty))
}

/// Routes the intake forms and ID photos of a patient. The form upload accepts at most
/// [`INTAKE_FORM_BODY_LIMIT`] bytes (or `body_limit` when lower), the photo upload
/// [`ID_PHOTO_BODY_LIMIT`] whatever `body_limit` is, and the reads `body_limit`.
fn intake_and_photo_routes(body_limit: usize) -> Router<AppState> {
    let form_limit = INTAKE_FORM_BODY_LIMIT.min(body_limit);
    Router::new()
        .route(
            "/v1/patients/{id}/intake-forms",
            limited(post(intake_forms::submit), form_limit)
                .merge(limited(get(intake_forms::list), body_limit)),
        )
        .route(
            "/v1/patients/{id}/id-photos",
            limited(post(id_photos::upload), ID_PHOTO_BODY_LIMIT)
                .merge(limited(get(id_photos::list), body_limit)),
        )
        .route("/v1/patients/{id}/id-photos/{photo_id}", limited(get(id_photos::read), body_limit))
}

/// Builds the encounter, consultation and prescription routes of one patient. Their JSON
/// bodies get at most [`CLINICAL_BODY_LIMIT`] bytes, or `body_limit` when that is smaller.
fn clinical_routes(body_limit: usize) -> Router<AppState> {
    let limit = CLINICAL_BODY_LIMIT.min(body_limit);
    Router::new()
        .route("/v1/patients/{id}/encounters", limited(post(encounters::record), limit))
        .route(
            "/v1/patients/{id}/consultations",
            limited(get(consultations::list).post(consultations::create), limit),
        )
        .route(
            "/v1/patients/{id}/prescriptions",
            limited(get(prescriptions::list).post(prescriptions::create), limit),
        )
}

/// Limits the request body of one route to `limit` bytes. A declared `Content-Length` above
/// the limit gets a 413 response before the handler runs, whatever the method. A chunked
/// body fails with 413 once the handler reads past the limit, and a handler that reads no
/// body ignores it.
pub fn limited(route: MethodRouter<AppState>, limit: usize) -> MethodRouter<AppState> {
    route
        .layer::<_, Infallible>(DefaultBodyLimit::max(limit))
        .layer::<_, Infallible>(RequestBodyLimitLayer::new(limit))
}

/// The body of `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// The body of `GET /readyz` when a store responded.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// Always `ready`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// The store backend: `sqlite` or `postgres`.
    #[schema(example = "sqlite")]
    pub backend: &'static str,
}

/// Reports that the process runs. It touches no store.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    responses((status = 200, description = "The process runs.", body = Health))
)]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Reports whether a store from the pool responds within the readiness timeout.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    responses(
        (status = 200, description = "A store responded.", body = Readiness),
        (status = 503, description = "No store responded in time; the server log names the \
            cause.", body = ErrorBody),
    )
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    let check = state.pool.run(|store| store.info().map(|info| info.backend));
    let failure = match tokio::time::timeout(state.readiness_timeout, check).await {
        Ok(Ok(Ok(backend))) => return Ok(Json(Readiness { status: "ready", backend })),
        Ok(Ok(Err(error))) => error_chain(&error),
        Ok(Err(error)) => error_chain(&error),
        Err(_) => format!("no answer within {} s", state.readiness_timeout.as_secs()),
    };
    tracing::warn!(cause = %failure, "readiness check failed: the store is not available");
    Err(ApiError::new(
        ErrorCode::StoreUnavailable,
        "the store is not available: the server log names the cause",
    ))
}

/// Renders the server's metrics in the Prometheus text format, version 0.0.4.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "health",
    responses((
        status = 200,
        description = "Request counts and latencies by route template, and lifecycle runs.",
        body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8",
    ))
)]
pub(crate) async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

/// The body of `GET /v1/me`: who the caller is. It never contains a token or a hash.
#[derive(Serialize, ToSchema)]
pub struct Me {
    pub role: Role,
    /// The caller's tenant, or null for a platform operator.
    pub tenant: Option<TenantRef>,
    pub credential: CredentialKind,
    /// The account of a session, or null for a service token.
    pub user_id: Option<UserId>,
    /// The session, or null for a service token.
    pub session_id: Option<SessionId>,
    /// The service token, or null for a session.
    pub service_token_id: Option<ServiceTokenId>,
    /// The patient a patient account belongs to, else null.
    pub patient_id: Option<PatientId>,
}

/// A tenant by id and slug.
#[derive(Serialize, ToSchema)]
pub struct TenantRef {
    pub id: TenantId,
    #[schema(example = "northwind")]
    pub slug: String,
}

/// The kind of credential a caller authenticated with.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A login session from `POST /v1/login`.
    Session,
    /// A service token of a machine client.
    ServiceToken,
}

/// Returns who the caller is: role, tenant and ids, and never a token or hash.
#[utoipa::path(
    get,
    path = "/v1/me",
    operation_id = "me",
    tag = "session",
    security(("bearer" = []), ("session_cookie" = [])),
    responses((status = 200, description = "The caller.", body = Me))
)]
pub(crate) async fn me(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Me>, ApiError> {
    let tenant = match caller.tenant_id {
        None => None,
        Some(id) => match state.pool.run(move |store| store.tenant(id)).await {
            Ok(Ok(tenant)) => Some(tenant),
            Ok(Err(error)) => return Err(auth::store_failure(&error)),
            Err(error) => return Err(auth::store_failure(&error)),
        },
    };
    let (credential, user_id, session_id, service_token_id) = match caller.credential {
        Credential::Session { user_id, session_id } => {
            (CredentialKind::Session, Some(user_id), Some(session_id), None)
        }
        Credential::ServiceToken { token_id } => {
            (CredentialKind::ServiceToken, None, None, Some(token_id))
        }
    };
    Ok(Json(Me {
        role: caller.role,
        tenant: tenant.map(|tenant| TenantRef { id: tenant.id, slug: tenant.slug }),
        credential,
        user_id,
        session_id,
        service_token_id,
        patient_id: caller.patient,
    }))
}

/// The body of `GET /v1/policy`: the retention policy in force, as
/// `medconnect policy show --json` prints it.
#[derive(Serialize, ToSchema)]
pub struct PolicyView {
    /// The policy file on the server. Only platform operators get it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub file: Option<PathBuf>,
    /// The version every retention decision records: the file's label, `+`, and the first 12
    /// hex digits of the SHA-256 of the file.
    #[schema(example = "2026.04+0123456789ab")]
    pub version: String,
    pub policy: Policy,
}

/// Returns the retention policy in force, read from its file for each request. A platform
/// operator gets all of it with the file's path. Any other caller gets the defaults and its
/// own tenant's overrides, so that no tenant learns another's.
#[utoipa::path(
    get,
    path = "/v1/policy",
    operation_id = "policy",
    tag = "policy",
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "The policy in force.", body = PolicyView),
        (status = 500, description = "The policy file could not be loaded; the server log names \
            the cause.", body = ErrorBody),
    )
)]
pub(crate) async fn policy(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<PolicyView>, ApiError> {
    let source = Arc::clone(&state.policy);
    let loaded = tokio::task::spawn_blocking(move || source()).await;
    let failure = match loaded {
        Ok(Ok(loaded)) => {
            let version = loaded.policy.version();
            let Some(tenant_id) = caller.tenant_id else {
                let policy = loaded.policy;
                return Ok(Json(PolicyView { file: Some(loaded.file), version, policy }));
            };
            // A tenant's caller sees the defaults and its own tenant's overrides only.
            let tenant = state.pool.run(move |store| store.tenant(tenant_id)).await;
            let tenant = match tenant {
                Ok(Ok(tenant)) => tenant,
                Ok(Err(error)) => return Err(auth::store_failure(&error)),
                Err(error) => return Err(auth::store_failure(&error)),
            };
            let mut policy = loaded.policy;
            policy.tenants.retain(|slug, _| *slug == tenant.slug);
            return Ok(Json(PolicyView { file: None, version, policy }));
        }
        Ok(Err(error)) => error_chain(&*error),
        Err(_) => "loading the policy panicked".to_owned(),
    };
    tracing::error!(cause = %failure, "loading the policy in force failed");
    Err(ApiError::new(
        ErrorCode::Internal,
        "the policy in force could not be loaded: the server log names the cause",
    ))
}
