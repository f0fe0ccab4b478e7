//! `GET /v1/lifecycle/plan`, `GET /v1/lifecycle/explain/{patient_id}` and
//! `POST /v1/lifecycle/run`: the lifecycle jobs of `medconnect lifecycle`, for platform
//! operators only.
//!
//! Plan and explain read the store under the policy in force, as of the server clock's now,
//! and return the JSON that `lifecycle plan --json` and `lifecycle explain --json` print. A
//! run goes through the [`crate::scheduler::LifecycleRunner`] the scheduler uses, so it
//! disposes of records exactly as a scheduled run does, with its audit entries naming the
//! caller. A run already under way on this node gets 409.

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use medconnect_domain::audit::Outcome;
use medconnect_domain::PatientId;
use medconnect_lifecycle::{Explanation, LifecycleError, Plan, RunReport};
use medconnect_store::{Role, Store, StoreError};

use crate::auth::{store_failure, Caller};
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::error_chain;
use crate::patients::access_of;
use crate::query::QueryParams;
use crate::routes::{AppState, PolicyInForce};
use crate::scheduler::RunError;

/// Returns what the next lifecycle run would dispose of and keep, and why. Changes nothing.
#[utoipa::path(
    get,
    path = "/v1/lifecycle/plan",
    operation_id = "lifecycle_plan",
    tag = "lifecycle",
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "The plan as of now under the policy in force.",
            body = Plan),
        (status = 400, description = "The request has a query parameter.", body = ErrorBody),
        (status = 403, description = "The caller is not a platform_operator.", body = ErrorBody),
        (status = 500, description = "The policy in force could not be loaded.", body = ErrorBody),
    )
)]
pub async fn plan(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Plan>, ApiError> {
    caller.require(&[Role::PlatformOperator])?;
    QueryParams::parse(query.as_deref(), &[])?;
    let as_of = state.clock.now();
    let policy = load_policy(&state).await?;
    let planned = state
        .pool
        .run(move |store| medconnect_lifecycle::plan(&*store, &policy.policy, as_of))
        .await;
    match planned {
        Ok(Ok(plan)) => Ok(Json(plan)),
        Ok(Err(LifecycleError::Store(error))) => Err(store_failure(&error)),
        Err(error) => Err(store_failure(&error)),
    }
}

/// The audit action of an explanation, which reads a patient's retention dates.
const EXPLAIN_ACTION: &str = "lifecycle.explain";

/// A failure to explain a patient's records.
enum ExplainFailure {
    Store(StoreError),
    /// The patient is linked to several tenants and the request named none.
    Ambiguous(Vec<String>),
    /// The request named no tenant and the patient is linked to none.
    NotLinked,
}

impl From<StoreError> for ExplainFailure {
    fn from(error: StoreError) -> Self {
        ExplainFailure::Store(error)
    }
}

impl From<LifecycleError> for ExplainFailure {
    fn from(error: LifecycleError) -> Self {
        match error {
            LifecycleError::Store(error) => ExplainFailure::Store(error),
        }
    }
}

/// Explains why one patient's records in one tenant are kept, and until when, or that the
/// next run purges them. The tenant is `?tenant=SLUG`, or may be left out when the patient
/// is linked to one tenant only.
#[utoipa::path(
    get,
    path = "/v1/lifecycle/explain/{patient_id}",
    operation_id = "lifecycle_explain",
    tag = "lifecycle",
    security(("bearer" = []), ("session_cookie" = [])),
    params(
        ("patient_id" = uuid::Uuid, Path, description = "The patient id."),
        ("tenant" = Option<String>, Query, description = "The tenant's slug; needed when the \
            patient is linked to several tenants."),
    ),
    responses(
        (status = 200, description = "Why the records are kept or due.",
            body = Explanation),
        (status = 400, description = "The patient id is not a UUID, a query parameter is \
            unknown, the tenant does not exist, or the patient is linked to several tenants.",
            body = ErrorBody),
        (status = 403, description = "The caller is not a platform_operator.", body = ErrorBody),
        (status = 404, description = "The patient is not linked to the tenant, or to any.",
            body = ErrorBody),
        (status = 500, description = "The policy in force could not be loaded.", body = ErrorBody),
    )
)]
pub async fn explain(
    State(state): State<AppState>,
    caller: Caller,
    Path(patient_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Explanation>, ApiError> {
    caller.require(&[Role::PlatformOperator])?;
    let params = QueryParams::parse(query.as_deref(), &["tenant"])?;
    let slug = params.get("tenant").map(str::to_owned);
    // The path value is never echoed.
    let patient = PatientId::parse(&patient_id).map_err(|_| {
        ApiError::new(
            ErrorCode::BadRequest,
            "path parameter patient_id is not a patient id: use a patient_id from \
             GET /v1/lifecycle/plan",
        )
    })?;
    let as_of = state.clock.now();
    let policy = load_policy(&state).await?;
    let access = access_of(&caller)?;
    let explained = state
        .pool
        .run(move |store| -> Result<Explanation, ExplainFailure> {
            let tenant = match slug {
                Some(slug) => store.tenant_by_slug(&slug)?,
                None => match only_tenant_of(store, patient) {
                    Err(ExplainFailure::NotLinked) => {
                        let event = access.platform_event(EXPLAIN_ACTION);
                        store.append_audit(event.subject(patient).outcome(Outcome::NotFound))?;
                        return Err(ExplainFailure::NotLinked);
                    }
                    other => other?,
                },
            };
            let explained =
                medconnect_lifecycle::explain(&*store, &policy.policy, &tenant, patient, as_of);
            let event = access.event(&tenant, EXPLAIN_ACTION).subject(patient);
            match explained {
                Ok(explanation) => {
                    store.append_audit(event)?;
                    Ok(explanation)
                }
                Err(LifecycleError::Store(error @ StoreError::PatientNotFound { .. })) => {
                    store.append_audit(event.outcome(Outcome::NotFound))?;
                    Err(ExplainFailure::Store(error))
                }
                Err(error) => Err(error.into()),
            }
        })
        .await;
    let failure = match explained {
        Ok(Ok(explanation)) => return Ok(Json(explanation)),
        Ok(Err(failure)) => failure,
        Err(error) => return Err(store_failure(&error)),
    };
    match failure {
        ExplainFailure::Ambiguous(slugs) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "this patient is linked to several tenants: pass ?tenant=SLUG with one of {}",
                slugs.join(", ")
            ),
        )),
        ExplainFailure::Store(StoreError::TenantNotFound(_)) => Err(ApiError::new(
            ErrorCode::BadRequest,
            "query parameter tenant names no tenant: use a slug from `medconnect tenant list`",
        )),
        // TODO: a purged patient gets this 404; `medconnect lifecycle explain` lists its
        // disposal receipts instead.
        ExplainFailure::NotLinked | ExplainFailure::Store(StoreError::PatientNotFound { .. }) => {
            Err(ApiError::new(
                ErrorCode::NotFound,
                "no patient with this id is linked to the tenant: if its records were purged, \
             GET /v1/audit lists the lifecycle.dispose entries naming it",
            ))
        }
        ExplainFailure::Store(error) => Err(store_failure(&error)),
    }
}

/// Returns the one tenant a patient is linked to, or the failure for a patient linked to none
/// or to several.
fn only_tenant_of(
    store: &mut dyn Store,
    patient: PatientId,
) -> Result<medconnect_domain::model::Tenant, ExplainFailure> {
    let links = store.links_of_patient(patient)?;
    match links.as_slice() {
        [] => Err(ExplainFailure::NotLinked),
        [link] => Ok(store.tenant(link.tenant_id)?),
        several => Err(ExplainFailure::Ambiguous(
            several.iter().map(|link| link.tenant_slug.clone()).collect(),
        )),
    }
}

/// Runs the lifecycle once now, as the scheduler does, and returns the run's report, the
/// JSON that `medconnect lifecycle run --json` prints.
#[utoipa::path(
    post,
    path = "/v1/lifecycle/run",
    operation_id = "lifecycle_run",
    tag = "lifecycle",
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "The run's report.", body = RunReport),
        (status = 400, description = "The request has a query parameter.", body = ErrorBody),
        (status = 403, description = "The caller is not a platform_operator.", body = ErrorBody),
        (status = 409, description = "A lifecycle run is under way on this node.",
            body = ErrorBody),
        (status = 500, description = "The run failed; the server log names the cause.",
            body = ErrorBody),
        (status = 503, description = "This server does not run the lifecycle.", body = ErrorBody),
    )
)]
pub async fn run(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<RunReport>, ApiError> {
    caller.require(&[Role::PlatformOperator])?;
    QueryParams::parse(query.as_deref(), &[])?;
    let Some(runner) = state.lifecycle.clone() else {
        return Err(ApiError::new(
            ErrorCode::ServiceUnavailable,
            "this server does not run the lifecycle: run `medconnect lifecycle run` where the \
             lifecycle runs",
        ));
    };
    let access = access_of(&caller)?;
    tracing::info!(actor = access.actor(), "lifecycle run requested through the API");
    match runner.run(Some(access.actor().to_owned())).await {
        Ok(report) => {
            tracing::info!(
                run_id = %report.run_id,
                purged = report.tally.purged_total(),
                receipts = report.tally.receipts,
                platform_sessions_purged = report.platform_sessions_purged,
                "lifecycle run requested through the API finished"
            );
            Ok(Json(report))
        }
        Err(RunError::Busy) => Err(ApiError::new(
            ErrorCode::Conflict,
            "a lifecycle run is already under way on this node: wait for it to end, then \
             GET /v1/lifecycle/plan shows what is left",
        )),
        Err(error) => {
            tracing::error!(cause = %error, "lifecycle run requested through the API failed");
            Err(ApiError::new(
                ErrorCode::Internal,
                "the lifecycle run failed: the server log names the cause; what it disposed of \
                 before failing stays disposed, and the next run resumes the rest",
            ))
        }
    }
}

/// Loads the policy in force on a blocking thread.
async fn load_policy(state: &AppState) -> Result<PolicyInForce, ApiError> {
    let source = std::sync::Arc::clone(&state.policy);
    let failure = match tokio::task::spawn_blocking(move || source()).await {
        Ok(Ok(policy)) => return Ok(policy),
        Ok(Err(error)) => error_chain(&*error),
        Err(_) => "loading the policy panicked".to_owned(),
    };
    tracing::error!(cause = %failure, "loading the policy in force failed");
    Err(ApiError::new(
        ErrorCode::Internal,
        "the policy in force could not be loaded: the server log names the cause",
    ))
}
