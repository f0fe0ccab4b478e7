//! The OpenAPI 3.1 document of the API, generated at compile time by utoipa from the
//! handlers' `#[utoipa::path]` annotations and the `ToSchema` types they name.
//! `GET /v1/openapi.json` serves it, `medconnect openapi` prints it, and the test
//! `tests/openapi.rs` fails when `docs/openapi.json` differs from it.
//!
//! To add a handler to the document:
//! 1. Return a type that derives `Serialize` and `ToSchema` rather than a `serde_json::json!`
//!    value, so the schema describes the type that is serialized. Store types derive
//!    `ToSchema` behind the store's `openapi` feature. Take a request body as
//!    [`crate::body::JsonBody`] of a type with `Deserialize`, `ToSchema` and
//!    `#[serde(deny_unknown_fields)]`, and list its 400, 415 and 422.
//! 2. Annotate the handler with `#[utoipa::path(...)]`: method, `path`, a unique
//!    `operation_id`, `tag`, `request_body`, `params` for path parameters, and `responses`
//!    with the success body and every error status the handler itself returns, each with
//!    `body = ErrorBody`. A route behind [`crate::auth::authenticate`] adds
//!    `security(("bearer" = []), ("session_cookie" = []))`. The handlers in
//!    [`crate::patients`] are the pattern.
//! 3. Add the handler to `paths(...)` of [`ApiDoc`].
//! 4. Rewrite the checked-in copy:
//!    `MEDCONNECT_UPDATE_OPENAPI=1 cargo test -p medconnect-api --test openapi`.
//!
//! Handlers do not list the statuses that layers return: [`LayerResponses`] adds 413 (the
//! body limit) to every operation, and 401 and 503 (the authentication) to every operation
//! with a security requirement.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi};

use crate::auth::SESSION_COOKIE;
use crate::{
    audit, consultations, encounters, holds, id_photos, intake_forms, lifecycle, login, patients,
    prescriptions, routes,
};

/// The document. The info version is the version of this crate.
// TODO: a route added to the router but not to `paths` goes unnoticed by the tests, which
// check only that each documented operation is routed. utoipa-axum's `OpenApiRouter` would
// build both from one list.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "MedConnect API",
        description = "The HTTPS API of MedConnect. Every error response has the body \
            `{\"error\": {\"code\", \"message\"}}` of the `ErrorBody` schema."
    ),
    paths(
        routes::healthz,
        routes::readyz,
        routes::render_metrics,
        serve,
        login::login,
        login::logout,
        routes::me,
        routes::policy,
        patients::list,
        patients::read,
        holds::list,
        holds::place,
        holds::release,
        lifecycle::plan,
        lifecycle::explain,
        lifecycle::run,
        audit::list,
        audit::verify,
        intake_forms::submit,
        intake_forms::list,
        id_photos::upload,
        id_photos::list,
        id_photos::read,
        encounters::record,
        consultations::list,
        consultations::create,
        prescriptions::list,
        prescriptions::create,
    ),
    modifiers(&SecuritySchemes, &LayerResponses),
    tags(
        (name = "health", description = "Liveness, readiness and metrics, without authentication."),
        (name = "meta", description = "This document."),
        (name = "session", description = "Login, logout and the caller."),
        (name = "policy", description = "The retention policy in force."),
        (name = "patients", description = "A tenant's patients; every read is audited."),
        (name = "clinical", description = "A patient's encounters, consultations and \
            prescriptions; every read and write is audited."),
        (name = "holds", description = "Legal holds; placing and releasing are audited."),
        (name = "lifecycle", description = "Retention plans, explanations and runs, for \
            platform operators."),
        (name = "audit", description = "The audit log and its chain check, for platform \
            operators; every listing is audited."),
    )
)]
pub struct ApiDoc;

/// Name of the bearer token security scheme.
pub const BEARER: &str = "bearer";

/// Name of the session cookie security scheme.
pub const SESSION_COOKIE_SCHEME: &str = "session_cookie";

/// Returns the document as pretty-printed JSON with a trailing newline, as `docs/openapi.json`
/// stores it.
pub fn document_json() -> String {
    let mut text = ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

/// Serves the OpenAPI document of this API. It contains no data, so it needs no
/// authentication.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document.", content_type = "application/json"))
)]
pub(crate) async fn serve() -> impl IntoResponse {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let body = DOCUMENT.get_or_init(document_json).as_str();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// Adds the two ways to present a token: `Authorization: Bearer TOKEN`, and the session
/// cookie that `POST /v1/login` sets.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A session token from POST /v1/login or a service token, as \
                 `Authorization: Bearer TOKEN`.",
            ))
            .build();
        components.add_security_scheme(BEARER, SecurityScheme::Http(bearer));
        let cookie = ApiKeyValue::with_description(
            SESSION_COOKIE,
            "The session token that POST /v1/login sets as a cookie. The Authorization header, \
             when present, takes precedence.",
        );
        components.add_security_scheme(
            SESSION_COOKIE_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Cookie(cookie)),
        );
    }
}

/// Adds the error responses that layers below the handlers return: 413 from the body limit on
/// every route, and 401 and 503 from [`crate::auth::authenticate`] on every route that
/// requires a caller. A response the handler's annotation lists already is kept.
struct LayerResponses;

impl Modify for LayerResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                add_layer_responses(operation);
            }
        }
    }
}

fn add_layer_responses(operation: &mut Operation) {
    let mut add = |status: &str, description: &str| {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(description));
    };
    add("413", "The request body is larger than this route accepts.");
    let authenticated = operation.security.as_ref().is_some_and(|list| !list.is_empty());
    if authenticated {
        add("401", "The request has no token, or its token is invalid, expired or revoked.");
        add("503", "The store is not available.");
    }
}

/// Returns a response with the JSON error body.
fn error_response(description: &str) -> RefOr<Response> {
    let mut response = Response::new(description);
    let schema = Ref::from_schema_name("ErrorBody");
    response.content.insert("application/json".to_owned(), Content::new(Some(schema)));
    RefOr::T(response)
}
