//! Authentication of the `/v1` routes.
//!
//! Every `/v1` route but `POST /v1/login` passes through [`authenticate`]. It reads a token
//! from `Authorization: Bearer TOKEN` or, when that header is absent, from the session
//! cookie, looks up the SHA-256 of the token among login sessions and then among service
//! tokens, and puts the resulting [`Caller`] into the request extensions. Handlers take
//! `Caller` as an extractor, so a handler that needs a caller cannot run without one. The
//! tenant of a request comes only from its `Caller`, never from the path or the body.
//!
//! A storefront token is bound to a client certificate. It authenticates only over a TLS
//! connection whose verified client certificate ([`ClientCertificate`]) has the fingerprint
//! stored with the token. Otherwise it gets the same 401 as an unknown token, and the log
//! names the token id and the reason.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use medconnect_crypto::TokenHash;
use medconnect_domain::{PatientId, ServiceTokenId, SessionId, TenantId, UserId};
use medconnect_store::{
    CertificateFingerprint, CredentialState, Role, ServiceTokenInfo, Store, StoreError,
};

use crate::error::{ApiError, ErrorCode};
use crate::error_chain;
use crate::routes::AppState;
use crate::tls::ClientCertificate;

/// Name of the cookie that carries a session token.
pub const SESSION_COOKIE: &str = "medconnect_session";

/// Message of the 401 for a token that is malformed, unknown, expired, ended or revoked. It
/// is the same for each, so a client cannot probe which tokens once existed.
const INVALID_TOKEN: &str =
    "the token is invalid, expired or revoked: log in again at POST /v1/login or use another \
     service token";

/// The authenticated client of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The tenant the request acts in, or None for a platform operator.
    pub tenant_id: Option<TenantId>,
    pub role: Role,
    pub credential: Credential,
    /// The patient a patient account belongs to.
    pub patient: Option<PatientId>,
}

/// The credential a caller authenticated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A login session of a user account.
    Session { user_id: UserId, session_id: SessionId },
    /// A service token of a machine client.
    ServiceToken { token_id: ServiceTokenId },
}

impl Caller {
    /// Returns `Ok` when the caller has one of `roles`, else a 403 error that names them.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        let allowed: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "role {} may not use this route: it needs one of {}",
                self.role,
                allowed.join(", ")
            ),
        ))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    /// Takes the caller that [`authenticate`] stored. A route outside that layer has none and
    /// rejects the request with 401.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(unauthorized)
    }
}

/// Authenticates a `/v1` request before its handler runs, and rejects it with a JSON 401
/// when it carries no token, or one that does not resolve to an active session or service
/// token.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let hash = match presented_token(request.headers()) {
        Presented::None => return unauthorized().into_response(),
        Presented::Malformed => return invalid_token().into_response(),
        Presented::Token(token) => TokenHash::of_token(token),
    };
    let Some(hash) = hash else {
        return invalid_token().into_response();
    };
    let now = state.clock.now();
    let client_cert = ClientCertificate::of_request(request.extensions()).map(|cert| cert.sha256);
    let resolved = state.pool.run(move |store| resolve(store, &hash, now, client_cert)).await;
    let caller = match resolved {
        Ok(Ok(Some(caller))) => caller,
        Ok(Ok(None)) => return invalid_token().into_response(),
        Ok(Err(error)) => return store_failure(&error).into_response(),
        Err(error) => return store_failure(&error).into_response(),
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// A token as a request presents it.
enum Presented<'a> {
    None,
    /// An `Authorization` header that is not `Bearer TOKEN`.
    Malformed,
    Token(&'a str),
}

/// Returns the token of the `Authorization` header or, when that is absent, of the session
/// cookie.
fn presented_token(headers: &HeaderMap) -> Presented<'_> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let Ok(value) = value.to_str() else { return Presented::Malformed };
        let Some((scheme, token)) = value.split_once(' ') else { return Presented::Malformed };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Presented::Malformed;
        }
        return Presented::Token(token.trim());
    }
    let cookies = headers.get_all(header::COOKIE).iter().filter_map(|value| value.to_str().ok());
    let session = cookies
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE);
    match session {
        Some((_, token)) => Presented::Token(token),
        None => Presented::None,
    }
}

/// Returns the caller whose session or service token has this hash and is active at `now`. A
/// storefront token also needs `client_cert`, the fingerprint of the connection's verified
/// client certificate, to equal the one it is bound to.
fn resolve(
    store: &mut dyn Store,
    hash: &TokenHash,
    now: DateTime<Utc>,
    client_cert: Option<CertificateFingerprint>,
) -> Result<Option<Caller>, StoreError> {
    if let Some(session) = store.session_by_token_hash(hash)? {
        let active = session.state(now) == CredentialState::Active;
        return Ok(active.then_some(Caller {
            tenant_id: session.tenant_id,
            role: session.role,
            credential: Credential::Session { user_id: session.user_id, session_id: session.id },
            patient: session.patient,
        }));
    }
    let Some(token) = store.service_token_by_hash(hash)? else { return Ok(None) };
    if token.state(now) != CredentialState::Active {
        return Ok(None);
    }
    if token.role == Role::Storefront && !bound_certificate_presented(&token, client_cert) {
        return Ok(None);
    }
    Ok(Some(Caller {
        tenant_id: Some(token.tenant_id),
        role: token.role,
        credential: Credential::ServiceToken { token_id: token.id },
        patient: None,
    }))
}

/// Returns whether the connection presented the client certificate a storefront token is
/// bound to, and logs why when it did not. The log names the token by its id, never by the
/// token itself.
fn bound_certificate_presented(
    token: &ServiceTokenInfo,
    presented: Option<CertificateFingerprint>,
) -> bool {
    let reason = match (token.client_cert, presented) {
        (Some(bound), Some(presented)) if bound == presented => return true,
        (None, _) => {
            "the token is bound to no client certificate: replace it with a token created with \
             `medconnect token create --client-cert FILE`"
        }
        (Some(_), None) => {
            "the connection presented no client certificate: the client must offer the \
             certificate the token is bound to, and the server needs --client-ca"
        }
        (Some(_), Some(_)) => {
            "the connection presented a client certificate other than the one the token is \
             bound to"
        }
    };
    tracing::warn!(
        token_id = %token.id,
        bound_sha256 = %fingerprint_or_none(token.client_cert),
        presented_sha256 = %fingerprint_or_none(presented),
        "storefront token rejected: {reason}"
    );
    false
}

fn fingerprint_or_none(fingerprint: Option<CertificateFingerprint>) -> String {
    fingerprint.map_or_else(|| "none".to_owned(), |fingerprint| fingerprint.to_string())
}

fn unauthorized() -> ApiError {
    ApiError::from_code(ErrorCode::Unauthorized)
}

fn invalid_token() -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, INVALID_TOKEN)
}

/// Logs why the store could not check a token and returns the 503 for the client.
pub(crate) fn store_failure(error: &(dyn std::error::Error + 'static)) -> ApiError {
    tracing::warn!(cause = %error_chain(error), "a store call failed");
    ApiError::new(
        ErrorCode::StoreUnavailable,
        "the store is not available: try again later; the server log names the cause",
    )
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    fn token_of(headers: &HeaderMap) -> Option<&str> {
        match presented_token(headers) {
            Presented::Token(token) => Some(token),
            Presented::None | Presented::Malformed => None,
        }
    }

    #[test]
    fn bearer_scheme_any_case() {
        for value in ["Bearer abc", "bearer abc", "BEARER  abc"] {
            let map = headers(&[(header::AUTHORIZATION, value)]);
            assert_eq!(token_of(&map), Some("abc"), "{value}");
        }
    }

    #[test]
    fn other_schemes_malformed() {
        for value in ["Basic abc", "Bearer", "abc"] {
            let map = headers(&[(header::AUTHORIZATION, value)]);
            assert!(matches!(presented_token(&map), Presented::Malformed), "{value}");
        }
    }

    #[test]
    fn session_cookie_found_among_others() {
        let map = headers(&[
            (header::COOKIE, "theme=dark"),
            (header::COOKIE, "a=1; medconnect_session=abc; b=2"),
        ]);
        assert_eq!(token_of(&map), Some("abc"));
    }

    #[test]
    fn header_wins_over_cookie() {
        let map = headers(&[
            (header::AUTHORIZATION, "Bearer fromheader"),
            (header::COOKIE, "medconnect_session=fromcookie"),
        ]);
        assert_eq!(token_of(&map), Some("fromheader"));
    }

    #[test]
    fn no_credentials_is_none() {
        let map = headers(&[(header::COOKIE, "medconnect_sessionx=abc")]);
        assert!(matches!(presented_token(&map), Presented::None));
    }

    #[test]
    fn require_names_allowed_roles() {
        let caller = Caller {
            tenant_id: None,
            role: Role::Provider,
            credential: Credential::ServiceToken { token_id: ServiceTokenId::new() },
            patient: None,
        };
        assert!(caller.require(&[Role::Provider, Role::TenantAdmin]).is_ok());
        let error = caller.require(&[Role::TenantAdmin]).expect_err("provider rejected");
        assert_eq!(error.code, ErrorCode::Forbidden);
        assert!(error.message.contains("tenant_admin"), "{}", error.message);
    }
}
