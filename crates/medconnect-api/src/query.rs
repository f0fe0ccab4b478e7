//! Query strings of the `/v1` routes. Each route names the parameters it accepts. Any other
//! parameter, a repeated one or one that does not parse gets a 400 whose message names the
//! parameter and the expected form, never the value sent.

use percent_encoding::percent_decode_str;

use crate::error::{ApiError, ErrorCode};

/// The parameters of one request, as name and value pairs in the order sent.
pub struct QueryParams {
    pairs: Vec<(String, String)>,
}

impl QueryParams {
    /// Decodes the query string of a request (`application/x-www-form-urlencoded`), rejecting
    /// any parameter not in `accepted`, and any parameter sent twice.
    pub fn parse(query: Option<&str>, accepted: &[&str]) -> Result<Self, ApiError> {
        let malformed =
            || bad_query(format!("the query string is malformed: {}", expected(accepted)));
        let mut pairs = Vec::new();
        for pair in query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name).ok_or_else(malformed)?;
            let value = decode(value).ok_or_else(malformed)?;
            pairs.push((name, value));
        }
        for (index, (name, _)) in pairs.iter().enumerate() {
            if !accepted.contains(&name.as_str()) {
                return Err(bad_query(format!(
                    "the query string has an unknown parameter: {}",
                    expected(accepted)
                )));
            }
            if pairs[..index].iter().any(|(earlier, _)| earlier == name) {
                return Err(bad_query(format!("query parameter {name} is given more than once")));
            }
        }
        Ok(QueryParams { pairs })
    }

    /// Returns the value of `name`, if sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// Parses the value of `name` with `parse`, or returns a 400 that names the parameter and
    /// `form`, the expected form.
    pub fn parsed<T>(
        &self,
        name: &str,
        form: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, ApiError> {
        let Some(value) = self.get(name) else { return Ok(None) };
        parse(value)
            .map(Some)
            .ok_or_else(|| bad_query(format!("query parameter {name} is invalid: use {form}")))
    }
}

/// Decodes one name or value: `+` is a space, and `%XX` escapes must form UTF-8.
fn decode(text: &str) -> Option<String> {
    let spaced = text.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8().ok().map(|decoded| decoded.into_owned())
}

fn expected(accepted: &[&str]) -> String {
    if accepted.is_empty() {
        "this route accepts no query parameters".to_owned()
    } else {
        format!("this route accepts {}", accepted.join(", "))
    }
}

fn bad_query(message: String) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}
