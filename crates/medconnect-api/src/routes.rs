//! The routes and their handlers.
//!
//! | route | response |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs; touches no store |
//! | `GET /readyz` | 200 when a store from the pool returns its `info()`, else 503 |
//! | `GET /metrics` | Prometheus text format |
//! | `POST /v1/login` | a new session token for a username and password; open to anyone |
//! | `POST /v1/logout` | 204 after ending the caller's session |
//! | `GET /v1/me` | the caller's role, tenant and ids |
//! | `GET /v1/policy` | the retention policy in force, as `medconnect policy show --json` prints it |
//! | `GET /v1/patients` | the patients linked to the caller's tenant, as [`crate::patients`] describes |
//! | `GET /v1/patients/{id}` | one patient of the caller's tenant: link, counts and profile |
//! | `POST /v1/patients/{id}/encounters` | 201 after recording an encounter; the link's new retention |
//! | `GET /v1/patients/{id}/consultations` | the patient's consultations, newest first |
//! | `POST /v1/patients/{id}/consultations` | 201 after creating a consultation; the link's new retention |
//! | `GET /v1/patients/{id}/prescriptions` | the patient's prescriptions, newest first |
//! | `POST /v1/patients/{id}/prescriptions` | 201 with the new prescription |
//!
//! Every `/v1` route but the login requires a caller, as [`crate::auth`] describes.
//! Paths that match no route get a JSON 404, known paths with another method a JSON 405.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post, MethodRouter};
use axum::{middleware, Json, Router};
use medconnect_domain::clock::Clock;
use medconnect_domain::policy::Policy;
use serde_json::json;
use tower_http::limit::RequestBodyLimitLayer;

use crate::auth::{self, Caller, Credential};
use crate::clinical::CLINICAL_BODY_LIMIT;
use crate::error::{self, ApiError, ErrorCode};
use crate::limiter::LoginLimiter;
use crate::login::{self, LOGIN_BODY_LIMIT};
use crate::metrics::{self, Metrics};
use crate::patients;
use crate::pool::StorePool;
use crate::{consultations, encounters, prescriptions};
use crate::{error_chain, BoxError};

/// Loads the policy in force. Called on a blocking thread for each request that needs it, so
/// a policy file changed on disk takes effect without a restart, as it does for the CLI.
pub type PolicySource = dyn Fn() -> Result<PolicyInForce, BoxError> + Send + Sync;

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
}

/// Builds the router. Every route accepts request bodies of at most `body_limit` bytes, and
/// the login at most [`LOGIN_BODY_LIMIT`].
pub fn router(state: AppState, body_limit: usize) -> Router {
    let metrics = state.metrics.clone();
    let authenticated = Router::new()
        .route("/v1/policy", limited(get(policy), body_limit))
        .route("/v1/me", limited(get(me), body_limit))
        .route("/v1/logout", limited(post(login::logout), body_limit))
        .route("/v1/patients", limited(get(patients::list), body_limit))
        .route("/v1/patients/{id}", limited(get(patients::read), body_limit))
        .merge(clinical_routes(body_limit))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate));
    let login_limit = LOGIN_BODY_LIMIT.min(body_limit);
    Router::new()
        .route("/healthz", limited(get(healthz), body_limit))
        .route("/readyz", limited(get(readyz), body_limit))
        .route("/metrics", limited(get(render_metrics), body_limit))
        .route("/v1/login", limited(post(login::login), login_limit))
        .merge(authenticated)
        .fallback(error::not_found)
        .layer(middleware::from_fn(error::json_errors))
        .layer(middleware::from_fn_with_state(metrics, metrics::track_requests))
        .with_state(state)
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

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let check = state.pool.run(|store| store.info().map(|info| info.backend));
    let failure = match tokio::time::timeout(state.readiness_timeout, check).await {
        Ok(Ok(Ok(backend))) => return Ok(Json(json!({ "status": "ready", "backend": backend }))),
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

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

/// Returns who the caller is: role, tenant and ids, and never a token or hash.
async fn me(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant = match caller.tenant_id {
        None => None,
        Some(id) => match state.pool.run(move |store| store.tenant(id)).await {
            Ok(Ok(tenant)) => Some(tenant),
            Ok(Err(error)) => return Err(auth::store_failure(&error)),
            Err(error) => return Err(auth::store_failure(&error)),
        },
    };
    let (credential, user_id, session_id, token_id) = match caller.credential {
        Credential::Session { user_id, session_id } => {
            ("session", Some(user_id), Some(session_id), None)
        }
        Credential::ServiceToken { token_id } => ("service_token", None, None, Some(token_id)),
    };
    Ok(Json(json!({
        "role": caller.role,
        "tenant": tenant.map(|tenant| json!({ "id": tenant.id, "slug": tenant.slug })),
        "credential": credential,
        "user_id": user_id,
        "session_id": session_id,
        "service_token_id": token_id,
        "patient_id": caller.patient,
    })))
}

async fn policy(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let source = Arc::clone(&state.policy);
    let loaded = tokio::task::spawn_blocking(move || source()).await;
    let failure = match loaded {
        Ok(Ok(loaded)) => {
            return Ok(Json(json!({
                "file": loaded.file,
                "version": loaded.policy.version(),
                "policy": loaded.policy,
            })));
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
