//! Error responses. Every error leaves the server as JSON of one shape,
//! `{"error": {"code": "...", "message": "..."}}`, with a stable code per kind of error. The
//! message for the client never contains a stack trace, PHI, a secret or any part of the
//! request body. The cause, when there is one, goes to the log instead.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Stable error codes, one per kind of failure. Clients match on these, so a code is never
/// renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed.
    BadRequest,
    /// The request carries no valid credentials, or a login failed.
    Unauthorized,
    /// The caller's role may not use this route.
    Forbidden,
    /// No route matches the path.
    NotFound,
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// The request body is larger than the route accepts.
    PayloadTooLarge,
    /// The request body has a media type the route does not accept.
    UnsupportedMediaType,
    /// The body is well-formed but its content is invalid.
    UnprocessableEntity,
    /// Too many failed logins: the response's `Retry-After` header gives the seconds to wait.
    TooManyRequests,
    /// No store could be opened or the store did not respond.
    StoreUnavailable,
    /// The server is shutting down or cannot take the request now.
    ServiceUnavailable,
    /// Anything else that failed on the server side.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::UnprocessableEntity,
        ErrorCode::TooManyRequests,
        ErrorCode::StoreUnavailable,
        ErrorCode::ServiceUnavailable,
        ErrorCode::Internal,
    ];

    /// Returns the code as it appears in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::UnprocessableEntity => "unprocessable_entity",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::ServiceUnavailable => "service_unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// Returns the HTTP status of responses with this code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnprocessableEntity => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::StoreUnavailable | ErrorCode::ServiceUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Returns the code for an error status that a layer below the handlers produced, such
    /// as axum's method router or the body limit.
    fn for_status(status: StatusCode) -> ErrorCode {
        match status {
            StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
            StatusCode::FORBIDDEN => ErrorCode::Forbidden,
            StatusCode::NOT_FOUND => ErrorCode::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
            StatusCode::UNPROCESSABLE_ENTITY => ErrorCode::UnprocessableEntity,
            StatusCode::TOO_MANY_REQUESTS => ErrorCode::TooManyRequests,
            StatusCode::SERVICE_UNAVAILABLE => ErrorCode::ServiceUnavailable,
            status if status.is_client_error() => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        }
    }

    /// Returns the message sent for an error that a layer below the handlers produced.
    fn default_message(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "the request is malformed",
            ErrorCode::Unauthorized => {
                "this route requires authentication: send `Authorization: Bearer TOKEN` with a \
                 token from POST /v1/login or a service token"
            }
            ErrorCode::Forbidden => "the caller's role may not use this route",
            ErrorCode::NotFound => "no resource at this path: check the path against the API",
            ErrorCode::MethodNotAllowed => {
                "this path does not accept this method: the Allow header lists the ones it does"
            }
            ErrorCode::PayloadTooLarge => {
                "the request body is larger than this route accepts: send a smaller body"
            }
            ErrorCode::UnsupportedMediaType => {
                "the request body has an unsupported media type: send application/json"
            }
            ErrorCode::UnprocessableEntity => "the request body is not valid for this route",
            ErrorCode::TooManyRequests => {
                "too many failed logins: wait the seconds in the Retry-After header, then try again"
            }
            ErrorCode::StoreUnavailable => "the store is not available: try again later",
            ErrorCode::ServiceUnavailable => "the server cannot take the request now: try again",
            ErrorCode::Internal => "the server failed to handle the request: try again later",
        }
    }
}

/// An error a handler returns. The message goes to the client, so it names only values that
/// are neither PHI nor secrets; causes are logged where the error is made.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into() }
    }

    /// Creates an error with the default message of its code.
    pub fn from_code(code: ErrorCode) -> Self {
        ApiError::new(code, code.default_message())
    }
}

/// The JSON body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The error of a response: a stable code to match on and a message for people.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// A sentence on what failed and what to do next, which never quotes the request.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message } };
        let mut response = axum::Json(body).into_response();
        *response.status_mut() = self.code.status();
        response
    }
}

/// Replaces the body of every error response that is not already JSON with the JSON error
/// shape. Layers below the handlers (the method router's 405, the body limit's 413, axum's
/// extractor rejections) respond in plain text, and a rejection's text can quote part of the
/// request body, so none of their text reaches the client. Headers such as `Allow` are kept.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let code = ErrorCode::for_status(status);
    let (mut parts, _body) = response.into_parts();
    let json = ApiError::from_code(code).into_response();
    let (json_parts, json_body) = json.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Some(content_type) = json_parts.headers.get(header::CONTENT_TYPE) {
        parts.headers.insert(header::CONTENT_TYPE, content_type.clone());
    }
    Response::from_parts(parts, Body::new(json_body))
}

fn is_json(response: &Response) -> bool {
    response.headers().get(header::CONTENT_TYPE)
        == Some(&HeaderValue::from_static("application/json"))
}

/// Returns the JSON 404 for paths that no route matches.
pub async fn not_found() -> ApiError {
    ApiError::from_code(ErrorCode::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_code_matches_as_str() {
        for code in ErrorCode::ALL {
            let serialized = serde_json::to_value(code).expect("serialize");
            assert_eq!(serialized, serde_json::Value::from(code.as_str()), "{code:?}");
        }
    }
}
