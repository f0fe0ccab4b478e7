//! A check of a JSON body against a schema of the OpenAPI document, for the keywords that
//! utoipa emits: `$ref`, `allOf` (from `#[serde(flatten)]`), `oneOf`, `type`, `enum`,
//! `format` (`date-time` and `uuid`), `minimum`, `properties`, `required`,
//! `additionalProperties`, `propertyNames` and `items`. Other keywords are ignored.
//!
//! Stricter than JSON Schema in one way: an object whose schema names no properties and no
//! `additionalProperties` is reported, so a body documented as a free-form object fails, and
//! so does a property that the schema does not name.

use serde_json::{Map, Value};

/// Returns the schema of the `status` response of `method path`, as the document lists it.
pub fn response_schema<'a>(
    document: &'a Value,
    path: &str,
    method: &str,
    status: &str,
) -> &'a Value {
    let schema = &document["paths"][path][method]["responses"][status]["content"]
        ["application/json"]["schema"];
    assert!(!schema.is_null(), "the document lists no JSON body for {status} of {method} {path}");
    schema
}

/// Returns one line per place where `value` does not match `schema`, each starting with the
/// JSON path of that place (`$` is the root). An empty list means the value matches.
pub fn mismatches(document: &Value, schema: &Value, value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    check(document, schema, value, "$", &mut found);
    found
}

/// Follows `$ref`s to a schema of `#/components/schemas`.
fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    let Some(reference) = schema["$ref"].as_str() else {
        return schema;
    };
    let name = reference
        .strip_prefix("#/components/schemas/")
        .unwrap_or_else(|| panic!("reference {reference} is not to #/components/schemas"));
    let target = &document["components"]["schemas"][name];
    assert!(!target.is_null(), "reference {reference} names no schema of the document");
    resolve(document, target)
}

fn check(document: &Value, schema: &Value, value: &Value, at: &str, found: &mut Vec<String>) {
    let schema = resolve(document, schema);
    if let Some(branches) = schema["oneOf"].as_array() {
        let matched = branches.iter().any(|branch| mismatches(document, branch, value).is_empty());
        if !matched {
            found.push(format!("{at}: {value} matches no branch of oneOf {schema}"));
        }
        return;
    }
    if !type_matches(schema, value) {
        found.push(format!("{at}: {value} is not of type {}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            found.push(format!("{at}: {value} is not one of {}", schema["enum"]));
        }
    }
    check_format(schema, value, at, found);
    if let (Some(minimum), Some(number)) = (schema["minimum"].as_f64(), value.as_f64()) {
        if number < minimum {
            found.push(format!("{at}: {value} is below the minimum {minimum}"));
        }
    }
    match value {
        Value::Object(object) => check_object(document, schema, object, at, found),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    check(document, item_schema, item, &format!("{at}[{index}]"), found);
                }
            }
        }
        _ => {}
    }
}

/// Returns whether the JSON type of `value` is the schema's `type`, or one of its list. A
/// schema without `type` accepts any value.
fn type_matches(schema: &Value, value: &Value) -> bool {
    let types: Vec<&str> = match &schema["type"] {
        Value::String(name) => vec![name.as_str()],
        Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
        _ => return true,
    };
    types.iter().any(|name| match *name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    })
}

fn check_format(schema: &Value, value: &Value, at: &str, found: &mut Vec<String>) {
    let Some(text) = value.as_str() else {
        return;
    };
    let valid = match schema["format"].as_str() {
        Some("date-time") => chrono::DateTime::parse_from_rfc3339(text).is_ok(),
        Some("uuid") => uuid::Uuid::parse_str(text).is_ok(),
        _ => true,
    };
    if !valid {
        found.push(format!("{at}: {value} is not of format {}", schema["format"]));
    }
}

/// Checks an object against the properties and `required` of its schema, merged over the
/// parts of an `allOf`.
fn check_object(
    document: &Value,
    schema: &Value,
    object: &Map<String, Value>,
    at: &str,
    found: &mut Vec<String>,
) {
    let mut properties = Map::new();
    let mut required = Vec::new();
    collect_properties(document, schema, &mut properties, &mut required);
    let extra = schema.get("additionalProperties").filter(|extra| extra.is_object());
    if properties.is_empty() && extra.is_none() {
        found.push(format!("{at}: the schema names no properties of this object"));
        return;
    }
    for (key, item) in object {
        let item_at = format!("{at}.{key}");
        match (properties.get(key), extra) {
            (Some(property), _) => check(document, property, item, &item_at, found),
            (None, Some(extra)) => {
                if let Some(names) = schema.get("propertyNames") {
                    check(document, names, &Value::String(key.clone()), &item_at, found);
                }
                check(document, extra, item, &item_at, found);
            }
            (None, None) => found.push(format!("{item_at}: the schema names no such property")),
        }
    }
    for name in required {
        if !object.contains_key(&name) {
            found.push(format!("{at}: required property {name} is missing"));
        }
    }
}

fn collect_properties(
    document: &Value,
    schema: &Value,
    properties: &mut Map<String, Value>,
    required: &mut Vec<String>,
) {
    let schema = resolve(document, schema);
    if let Some(own) = schema["properties"].as_object() {
        properties.extend(own.clone());
    }
    if let Some(names) = schema["required"].as_array() {
        required.extend(names.iter().filter_map(Value::as_str).map(str::to_owned));
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        collect_properties(document, part, properties, required);
    }
}
