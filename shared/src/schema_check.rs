//! For tests: whether a string schema (pattern, length bounds) accepts a
//! value, so each rule's test can check that its documented schema and its
//! code agree.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;

/// Whether `value` matches the schema's `pattern` and its `minLength` /
/// `maxLength` (counted in characters, as JSON Schema counts them).
pub fn accepts(schema: RefOr<Schema>, value: &str) -> bool {
    let schema = serde_json::to_value(schema).expect("a schema is JSON");
    let pattern = schema["pattern"].as_str().map(|p| regex::Regex::new(p).expect("the pattern compiles"));
    let chars = value.chars().count() as u64;
    pattern.is_none_or(|p| p.is_match(value))
        && schema["minLength"].as_u64().is_none_or(|min| chars >= min)
        && schema["maxLength"].as_u64().is_none_or(|max| chars <= max)
}
