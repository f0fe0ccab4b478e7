//! `POST /v1/login` and `POST /v1/logout`: server-side sessions for user accounts.
//!
//! A login checks the password against the account's argon2id hash on a blocking thread. On
//! success it stores a session under the SHA-256 of a new 32-byte token and returns the token
//! once, in the body and in a `Secure; HttpOnly; SameSite=Strict` cookie. Every failure
//! (unknown tenant, unknown user, wrong password, disabled account) gets the same 401 after
//! the same argon2 work, so neither the body nor the timing reveals which it was. Repeated
//! failures lock the account and the client address, as [`crate::limiter`] describes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use medconnect_crypto::{verify_password, verify_password_dummy, SecretToken, TokenHash};
use medconnect_domain::model::Tenant;
use medconnect_domain::{SessionId, UserId};
use medconnect_store::{Role, Store, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{store_failure, Caller, Credential, SESSION_COOKIE};
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::limiter::LoginAttempt;
use crate::routes::AppState;

/// Largest login request body, in bytes: room for the longest username and a long password.
pub const LOGIN_BODY_LIMIT: usize = 4 * 1024;

/// Default lifetime of a session.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// The one message of every failed login.
const LOGIN_FAILED: &str = "login failed: the tenant, username or password is wrong, or the \
                            account is disabled";

/// The address of the client of a connection, which the listener adds to each request.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The body of `POST /v1/login`. It contains the password, so it has no `Debug`.
#[derive(Deserialize, ToSchema)]
#[schema(description = "The credentials of an account.")]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The tenant's slug, or absent for a platform operator.
    #[serde(default)]
    #[schema(example = "northwind")]
    tenant: Option<String>,
    #[schema(example = "admin@northwind.test")]
    username: String,
    #[schema(format = Password)]
    password: String,
}

/// The body of a successful login.
#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    /// The session token: send it as `Authorization: Bearer TOKEN`. The `Set-Cookie` header
    /// carries it too.
    pub token: String,
    /// When the session expires.
    pub expires_at: DateTime<Utc>,
    pub role: Role,
    /// The tenant's slug, or null for a platform operator.
    pub tenant: Option<String>,
}

/// The result of the store step of a login.
enum LoginOutcome {
    Accepted {
        user_id: UserId,
        session_id: SessionId,
        role: Role,
        tenant: Option<Tenant>,
    },
    /// The account, when it exists, whose failure was recorded.
    Rejected {
        user_id: Option<UserId>,
    },
}

/// Checks a login and, on success, starts a session.
#[utoipa::path(
    post,
    path = "/v1/login",
    operation_id = "login",
    tag = "session",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "The login succeeded and a session started.",
            body = LoginResponse,
            headers(
                ("Set-Cookie" = String, description = "The session token as the \
                    `medconnect_session` cookie: Secure, HttpOnly, SameSite=Strict."),
                ("Cache-Control" = String, description = "`no-store`."),
            )),
        (status = 400, description = "The body is not valid JSON.", body = ErrorBody),
        (status = 401, description = "The tenant, username or password is wrong, or the account \
            is disabled. The message is the same for each.", body = ErrorBody),
        (status = 415, description = "The request has no `Content-Type: application/json`.",
            body = ErrorBody),
        (status = 422, description = "The JSON lacks a field, has an unknown field or a value of \
            the wrong type; the message names the field.", body = ErrorBody),
        (status = 429, description = "Too many failed logins for the account or the client \
            address.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before the next try."))),
        (status = 500, description = "A session token could not be generated.", body = ErrorBody),
        (status = 503, description = "The store is not available.", body = ErrorBody),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    Json(request): Json<LoginRequest>,
) -> Result<Response, ApiError> {
    let attempt = LoginAttempt::new(request.tenant.as_deref(), &request.username, client.ip());
    if let Some(wait) = state.limiter.locked_for(&attempt, Instant::now()) {
        tracing::info!(client = %client.ip(), "login rejected: locked after failed logins");
        return Ok(too_many_requests(wait));
    }
    let token = SecretToken::generate().map_err(|error| {
        tracing::error!(%error, "generating a session token failed");
        ApiError::from_code(ErrorCode::Internal)
    })?;
    let hash = token.hash();
    let started_at = state.clock.now();
    let ttl = chrono::TimeDelta::from_std(state.session_ttl).map_err(|_| {
        tracing::error!(ttl_s = state.session_ttl.as_secs(), "the session lifetime is too long");
        ApiError::from_code(ErrorCode::Internal)
    })?;
    let expires_at = started_at + ttl;
    let outcome = state
        .pool
        .run(move |store| check_login(store, &request, &hash, started_at, expires_at))
        .await;
    let outcome = match outcome {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => return Err(store_failure(&error)),
        Err(error) => return Err(store_failure(&error)),
    };

    match outcome {
        LoginOutcome::Rejected { user_id } => {
            let lockout = state.limiter.record_failure(&attempt, Instant::now());
            let user_id = user_id.map(|id| id.to_string());
            tracing::info!(user_id, client = %client.ip(), locked = lockout.is_some(), "login failed");
            Err(ApiError::new(ErrorCode::Unauthorized, LOGIN_FAILED))
        }
        LoginOutcome::Accepted { user_id, session_id, role, tenant } => {
            state.limiter.record_success(&attempt);
            tracing::info!(%user_id, %session_id, client = %client.ip(), "login succeeded");
            let body = LoginResponse {
                token: token.expose().to_owned(),
                expires_at,
                role,
                tenant: tenant.map(|tenant| tenant.slug),
            };
            let cookie = session_cookie(token.expose(), state.session_ttl);
            Ok(with_session_headers(Json(body).into_response(), cookie))
        }
    }
}

/// Looks up the account, checks the password, records the outcome and, on success, stores
/// the session. Runs on a blocking thread, because an argon2 check is slow by design.
fn check_login(
    store: &mut dyn Store,
    request: &LoginRequest,
    hash: &TokenHash,
    started_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<LoginOutcome, StoreError> {
    let user = store.user_for_login(request.tenant.as_deref(), &request.username)?;
    let Some(user) = user else {
        verify_password_dummy(&request.password);
        return Ok(LoginOutcome::Rejected { user_id: None });
    };
    let password_matches = match verify_password(&request.password, &user.password_hash) {
        Ok(matches) => matches,
        Err(error) => {
            tracing::warn!(user_id = %user.id, %error, "the stored password hash is invalid");
            false
        }
    };
    if !password_matches || user.disabled {
        store.record_login_failure(user.user_ref())?;
        return Ok(LoginOutcome::Rejected { user_id: Some(user.id) });
    }
    store.record_login_success(user.user_ref())?;
    let session_id = store.create_session(user.user_ref(), hash, started_at, expires_at)?;
    let tenant = user.tenant_id.map(|id| store.tenant(id)).transpose()?;
    Ok(LoginOutcome::Accepted { user_id: user.id, session_id, role: user.role, tenant })
}

/// Ends the caller's session and clears the session cookie. A service token has no session,
/// so it gets 400.
#[utoipa::path(
    post,
    path = "/v1/logout",
    operation_id = "logout",
    tag = "session",
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 204, description = "The session ended.",
            headers(("Set-Cookie" = String, description = "Clears the session cookie."))),
        (status = 400, description = "The caller used a service token, which has no session.",
            body = ErrorBody),
    )
)]
pub async fn logout(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let Credential::Session { session_id, .. } = caller.credential else {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "a service token has no session to end: only a session token from POST /v1/login \
             can log out",
        ));
    };
    let tenant = caller.tenant_id;
    let ended = state.pool.run(move |store| store.end_session(tenant, session_id)).await;
    match ended {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => return Err(store_failure(&error)),
        Err(error) => return Err(store_failure(&error)),
    }
    tracing::info!(%session_id, "logout");
    let cookie = format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict");
    Ok(with_session_headers(StatusCode::NO_CONTENT.into_response(), cookie))
}

/// Formats the cookie that carries a new session token.
fn session_cookie(token: &str, ttl: Duration) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        ttl.as_secs()
    )
}

/// Adds the cookie and forbids caching a response that carries or clears a token.
fn with_session_headers(mut response: Response, cookie: String) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match HeaderValue::from_str(&cookie) {
        Ok(value) => {
            headers.insert(header::SET_COOKIE, value);
        }
        // A token is hex digits, which are valid in a header. Should that change, the body
        // still carries the token.
        Err(_) => tracing::error!("the session cookie is not a valid header value"),
    }
    response
}

/// Returns the 429 of a locked login, with `Retry-After` in whole seconds, rounded up.
fn too_many_requests(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = ApiError::from_code(ErrorCode::TooManyRequests).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}
