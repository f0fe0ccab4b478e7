//! `POST /v1/login` and `POST /v1/logout`: server-side sessions for user accounts.
//!
//! A login checks the password against the account's argon2id hash on a blocking thread of
//! its own, outside the store pool, once a password check slot is free. On
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
use medconnect_store::{LoginUser, Role, Store, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{store_failure, Caller, Credential, SESSION_COOKIE};
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::limiter::{LoginAttempt, PasswordCheckError, PENDING_RETRY};
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

/// A login that the store accepted.
struct LoginOutcome {
    user_id: UserId,
    session_id: SessionId,
    role: Role,
    tenant: Option<Tenant>,
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
        (status = 400, description = "The body is empty or not valid JSON.", body = ErrorBody),
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
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<Response, ApiError> {
    let attempt = LoginAttempt::new(request.tenant.as_deref(), &request.username, client.ip());
    let permit = match state.limiter.admit(&attempt, Instant::now()) {
        Ok(permit) => permit,
        Err(wait) => {
            tracing::info!(client = %client.ip(), "login rejected: locked after failed logins");
            return Ok(too_many_requests(wait));
        }
    };
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

    let LoginRequest { tenant, username, password } = request;
    let found = state.pool.run(move |store| store.user_for_login(tenant.as_deref(), &username));
    let user = finish(found.await)?;
    let stored_hash = user.as_ref().map(|user| user.password_hash.clone());
    let checked = state
        .limiter
        .check_password(move || match stored_hash {
            Some(stored_hash) => verify_password(&password, &stored_hash).unwrap_or_else(|error| {
                tracing::warn!(%error, "a stored password hash is invalid");
                false
            }),
            None => {
                verify_password_dummy(&password);
                false
            }
        })
        .await;
    let password_matches = match checked {
        Ok(matches) => matches,
        Err(PasswordCheckError::Busy) => {
            tracing::warn!(client = %client.ip(), "login rejected: every password check slot busy");
            return Ok(too_many_requests(PENDING_RETRY));
        }
        Err(error) => {
            tracing::error!(%error, "a password check failed");
            return Err(ApiError::from_code(ErrorCode::Internal));
        }
    };

    let user = match user {
        Some(user) if password_matches && !user.disabled => user,
        rejected => {
            let lockout = permit.failed(Instant::now());
            let user_ref = rejected.map(|user| user.user_ref());
            if let Some(user_ref) = user_ref {
                let counted = state.pool.run(move |store| store.record_login_failure(user_ref));
                finish(counted.await)?;
            }
            let user_id = user_ref.map(|user| user.id.to_string());
            tracing::info!(user_id, client = %client.ip(), locked = lockout.is_some(), "login failed");
            return Err(ApiError::new(ErrorCode::Unauthorized, LOGIN_FAILED));
        }
    };
    let recorded =
        state.pool.run(move |store| accept(store, &user, &hash, started_at, expires_at)).await;
    let LoginOutcome { user_id, session_id, role, tenant } = finish(recorded)?;
    permit.succeeded();
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

/// Records a successful login of `user` and stores its session. Runs on a blocking thread.
fn accept(
    store: &mut dyn Store,
    user: &LoginUser,
    hash: &TokenHash,
    started_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<LoginOutcome, StoreError> {
    store.record_login_success(user.user_ref())?;
    let session_id = store.create_session(user.user_ref(), hash, started_at, expires_at)?;
    let tenant = user.tenant_id.map(|id| store.tenant(id)).transpose()?;
    Ok(LoginOutcome { user_id: user.id, session_id, role: user.role, tenant })
}

/// Returns the value of a store call, or the error for the client with the cause in the log.
fn finish<T, E>(result: Result<Result<T, StoreError>, E>) -> Result<T, ApiError>
where
    E: std::error::Error + 'static,
{
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(store_failure(&error)),
        Err(error) => Err(store_failure(&error)),
    }
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
