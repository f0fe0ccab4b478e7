//! [`JsonBody`], the extractor of JSON request bodies. It replaces axum's `Json` extractor,
//! whose rejection text quotes values from the body, with a JSON error that names the field
//! and the expected type but never repeats what the client sent.
//!
//! | request | status | code |
//! |---|---|---|
//! | no `Content-Type: application/json` (or `application/*+json`) | 415 | `unsupported_media_type` |
//! | body larger than the route's limit | 413 | `payload_too_large` |
//! | not JSON, empty, or text after the JSON value | 400 | `bad_request` |
//! | valid JSON with a missing field, an unknown field or a value of the wrong type | 422 | `unprocessable_entity` |
//!
//! Request types should carry `#[serde(deny_unknown_fields)]`, so that a misspelt field is
//! an error instead of being ignored.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use crate::error::{ApiError, ErrorCode};

/// A request body deserialized from JSON, or a 4xx [`ApiError`] that names the field at
/// fault.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        require_json_content_type(request.headers())?;
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            // 413 when the body exceeds the route's limit, else 400 for a body that could
            // not be read.
            ApiError::from_code(ErrorCode::for_status(rejection.status()))
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Returns the 415 of a request whose body is not declared as JSON. Every route that reads a
/// JSON body calls it, so they all accept the same content types.
pub(crate) fn require_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    if has_json_content_type(headers) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::UnsupportedMediaType,
        "the request body must be JSON: send the header `Content-Type: application/json`",
    ))
}

/// Returns whether the `Content-Type` is `application/json` or `application/*+json`, with any
/// parameters, as axum's `Json` accepts.
fn has_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else { return false };
    let Ok(value) = value.to_str() else { return false };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let Some(subtype) = essence.strip_prefix("application/") else { return false };
    subtype == "json" || (subtype.ends_with("+json") && !subtype.contains('/'))
}

/// Deserializes one JSON object that fills the whole body. Every request body of the API is
/// an object, so valid JSON of another kind gets 422 before serde could read an array into a
/// struct's fields by position.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|byte| !byte.is_ascii_whitespace());
    if first.is_some_and(|byte| *byte != b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    {
        return Err(ApiError::new(
            ErrorCode::UnprocessableEntity,
            "the request body is JSON but not an object: send one JSON object with the \
             route's fields",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let segments: Vec<&Segment> = error.path().iter().collect();
        rejection(error.inner(), &segments)
    })?;
    deserializer.end().map_err(|error| rejection(&error, &[]))?;
    Ok(value)
}

/// Returns the path of the field at fault, such as `password` or `items[2].name`, or None at
/// the top level. Map keys that are not plain identifiers could be client data, so a path
/// containing one is reported as `a field`.
fn field_path(segments: &[&Segment]) -> Option<String> {
    let mut text = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => text.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !is_identifier(key) {
                    return Some("a field".to_owned());
                }
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Segment::Unknown => return Some("a field".to_owned()),
        }
    }
    (!text.is_empty()).then_some(text)
}

fn is_identifier(key: &str) -> bool {
    (1..=64).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Builds the error for a body that serde_json rejected. serde's messages quote the value
/// (`invalid type: string "…"`) or an unknown key, so only the parts that come from the
/// request type are kept: a missing field's name, and the text after `expected`.
fn rejection(error: &serde_json::Error, segments: &[&Segment]) -> ApiError {
    use serde_json::error::Category;

    let position = format!("line {}, column {}", error.line(), error.column());
    match error.classify() {
        Category::Eof => ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "the request body is empty or its JSON ends early (at {position}): send one \
                 complete JSON object"
            ),
        ),
        Category::Syntax | Category::Io => ApiError::new(
            ErrorCode::BadRequest,
            format!("the request body is not valid JSON (at {position}): send one JSON object"),
        ),
        Category::Data => {
            ApiError::new(ErrorCode::UnprocessableEntity, data_message(error, segments))
        }
    }
}

/// Returns the message for JSON that does not fit the request type.
fn data_message(error: &serde_json::Error, segments: &[&Segment]) -> String {
    let text = error.to_string();
    if text.starts_with("unknown field `") {
        // The last segment is the unknown key itself, which the client sent.
        let parent = field_path(segments.split_last().map_or(&[], |(_, parent)| parent));
        let in_object = parent.map(|path| format!(" in `{path}`")).unwrap_or_default();
        return match expected_part(&text, error) {
            Some(expected) => {
                format!(
                    "unknown field{in_object} in the request body: remove it (expected {expected})"
                )
            }
            None => format!("unknown field{in_object} in the request body: remove it"),
        };
    }
    let path = field_path(segments);
    let in_object = path.as_deref().map(|path| format!(" in `{path}`")).unwrap_or_default();
    if let Some(rest) = text.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        return format!("missing field `{field}`{in_object} in the request body: add it");
    }
    let subject = match path {
        Some(path) => format!("invalid value for field `{path}`"),
        None => "the request body has the wrong shape".to_owned(),
    };
    match expected_part(&text, error) {
        Some(expected) => format!("{subject}: expected {expected}"),
        None => format!("{subject}: check it against the API's OpenAPI document"),
    }
}

/// Returns what serde expected, from the text after the last ", expected " of its message and
/// without the ` at line L column C` that serde_json appends. The last occurrence is taken
/// because a quoted value before it could itself contain those words.
/// NOTE: serde's derived and built-in types put no value after "expected", but a hand-written
/// `Deserialize` whose custom message does would have that value echoed.
fn expected_part<'a>(text: &'a str, error: &serde_json::Error) -> Option<&'a str> {
    let start = text.rfind(", expected ")? + ", expected ".len();
    let rest = &text[start..];
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    Some(rest.strip_suffix(&suffix).unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only deserialized")]
    struct Request {
        name: String,
        count: u32,
        #[serde(default)]
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only deserialized")]
    struct Item {
        label: String,
    }

    fn rejected(body: &str) -> ApiError {
        parse::<Request>(body.as_bytes()).expect_err("body rejected")
    }

    #[test]
    fn json_that_is_not_an_object_rejected() {
        for body in [r#"["a", 2]"#, r#""text""#, "42", "null", " [] "] {
            let error = rejected(body);
            assert_eq!(error.code, ErrorCode::UnprocessableEntity, "{body}");
            assert!(error.message.contains("not an object"), "{body}: {}", error.message);
        }
        assert_eq!(rejected("[").code, ErrorCode::BadRequest);
    }

    #[test]
    fn valid_body_parses() {
        let request: Request = parse(br#"{"name": "a", "count": 2}"#).expect("valid body");
        assert_eq!(request.count, 2);
    }

    #[test]
    fn missing_field_named() {
        let error = rejected(r#"{"name": "a"}"#);
        assert_eq!(error.code, ErrorCode::UnprocessableEntity);
        assert!(error.message.contains("missing field `count`"), "{}", error.message);
    }

    #[test]
    fn unknown_field_not_echoed() {
        let error = rejected(r#"{"name": "a", "count": 1, "secret_key_123": 1}"#);
        assert_eq!(error.code, ErrorCode::UnprocessableEntity);
        assert!(!error.message.contains("secret_key_123"), "{}", error.message);
        assert!(error.message.contains("one of `name`, `count`, `items`"), "{}", error.message);
    }

    #[test]
    fn wrong_type_names_field_not_value() {
        let error = rejected(r#"{"name": "a", "count": "Jane Doe 1970-01-01"}"#);
        assert_eq!(error.code, ErrorCode::UnprocessableEntity);
        assert!(error.message.contains("`count`"), "{}", error.message);
        assert!(!error.message.contains("Jane"), "{}", error.message);
        assert!(error.message.contains("expected u32"), "{}", error.message);
    }

    #[test]
    fn nested_field_path_named() {
        let error = rejected(r#"{"name": "a", "count": 1, "items": [{"label": 5}]}"#);
        assert!(error.message.contains("`items[0].label`"), "{}", error.message);
        assert!(!error.message.contains('5'), "{}", error.message);
    }

    #[test]
    fn wrong_top_level_type() {
        let error = rejected(r#"["Jane Doe"]"#);
        assert_eq!(error.code, ErrorCode::UnprocessableEntity);
        assert!(!error.message.contains("Jane"), "{}", error.message);
    }

    #[test]
    fn syntax_errors_are_bad_request() {
        for body in ["", "{", r#"{"name": "Jane Doe""#, r#"{"name": "a", "count": 1} x"#, "nul"] {
            let error = rejected(body);
            assert_eq!(error.code, ErrorCode::BadRequest, "{body:?}: {}", error.message);
            assert!(!error.message.contains("Jane"), "{}", error.message);
        }
    }

    #[test]
    fn json_content_types_accepted() {
        let accepted =
            ["application/json", "Application/JSON; charset=utf-8", "application/x+json"];
        for value in accepted {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert!(has_json_content_type(&headers), "{value}");
        }
        for value in ["text/json", "text/plain", "application/jsonx", "multipart/form-data"] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert!(!has_json_content_type(&headers), "{value}");
        }
        assert!(!has_json_content_type(&HeaderMap::new()));
    }
}
