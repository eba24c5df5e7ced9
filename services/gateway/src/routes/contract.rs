//! A dialect's request bodies are checked against its own OpenAPI document
//! before they are decoded. The document is the rule: what it allows the
//! server accepts and what it forbids the server refuses, so a client
//! generated from it sends nothing the server rejects for its shape. serde
//! alone disagrees with a JSON Schema at the edges (it takes `[1, 2]` for a
//! struct, and refuses `64.0` for an integer); this closes both gaps. Rules
//! that need more than a schema (a state, another resource) stay in `app`.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use utoipa::ToSchema;
use utoipa::openapi::OpenApi;

/// At most this many of a body's schema violations are reported.
const MAX_REPORTED: usize = 4;
/// A violation's description is cut at this many bytes (it quotes the
/// offending value, which may be large).
const MAX_REPORT_BYTES: usize = 240;

/// The request body schemas of one OpenAPI document, compiled on first use.
pub struct Contract {
    /// `{"components": ...}` of the document, the root its `$ref`s resolve in.
    root: Map<String, Value>,
    checks: RwLock<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl Contract {
    /// The contract of `doc` (a dialect's document as it is served).
    pub fn new(doc: &OpenApi) -> Self {
        let doc = serde_json::to_value(doc).expect("an OpenAPI document is JSON");
        let mut root = Map::new();
        root.insert("components".into(), doc.get("components").cloned().unwrap_or_else(|| json!({})));
        Self { root, checks: RwLock::default() }
    }

    /// `value` decoded as `T` once it satisfies `T`'s schema in the
    /// document; otherwise what is wrong with it, by JSON pointer.
    pub fn decode<T: DeserializeOwned + ToSchema>(&self, mut value: Value) -> Result<T, Refusal> {
        let check = self.check::<T>();
        // The common case first: a valid body costs one pass, without reports.
        let violations: Vec<(String, String)> = if check.is_valid(&value) {
            Vec::new()
        } else {
            check
                .iter_errors(&value)
                .take(MAX_REPORTED)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    let why = describe(&at, &e.to_string());
                    (at, why)
                })
                .collect()
        };
        let report = || violations.iter().map(|(_, why)| why.as_str()).collect::<Vec<_>>().join("; ");
        integral_floats_as_integers(&mut value);
        let decoded = serde_json::from_value::<T>(value);
        match (violations.first(), decoded) {
            (None, Ok(v)) => Ok(v),
            (None, Err(e)) => Err(Refusal::Shape(e.to_string())),
            // A body the types take but the document refuses breaks a rule
            // (a bound, a length, a pattern); one they cannot take has the
            // wrong shape.
            (Some((at, _)), Ok(_)) => Err(Refusal::Rule { at: at.clone(), why: report() }),
            (Some(_), Err(_)) => Err(Refusal::Shape(report())),
        }
    }

    fn check<T: ToSchema>(&self) -> Arc<jsonschema::Validator> {
        let name = T::name();
        if let Some(check) = self.checks.read().unwrap_or_else(|e| e.into_inner()).get(name.as_ref()) {
            return check.clone();
        }
        let own = || serde_json::to_value(T::schema()).expect("a schema is JSON");
        // The document's schemas compile (a test builds every one), so this
        // cannot fail for a body type the document names.
        let check = Arc::new(self.compile(&name, own).unwrap_or_else(|e| panic!("the schema of {name} compiles: {e}")));
        self.checks.write().unwrap_or_else(|e| e.into_inner()).insert(name.into_owned(), check.clone());
        check
    }

    /// The validator of the document's schema `name`, or of `own` (a type
    /// the document does not name) with the document's schemas to refer to.
    fn compile(&self, name: &str, own: impl FnOnce() -> Value) -> Result<jsonschema::Validator, jsonschema::ValidationError<'static>> {
        let named = self.root["components"].pointer(&format!("/schemas/{}", name.replace('~', "~0").replace('/', "~1"))).is_some();
        let mut schema = self.root.clone();
        if named {
            schema.insert("$ref".into(), format!("#/components/schemas/{name}").into());
        } else {
            schema.insert("allOf".into(), json!([own()]));
        }
        jsonschema::options().with_draft(jsonschema::Draft::Draft202012).build(&Value::Object(schema))
    }
}

/// Why a body was refused. Dialects that tell the two apart (`/v1`:
/// `invalid_body` and `validation_failed`) map each to its own code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not the body's shape: what the request type cannot hold (a wrong
    /// type, a missing or unknown field, a value outside an enumeration).
    #[error("{0}")]
    Shape(String),
    /// The right shape, but a value breaks a rule of the document: a bound,
    /// a length, a pattern. `at` is the JSON pointer of the first value that
    /// does (`""`: the body itself), for dialects whose codes name the field.
    #[error("{why}")]
    Rule { at: String, why: String },
}

/// One violation: where, and what, cut to a readable length.
fn describe(pointer: &str, what: &str) -> String {
    let mut what = what.to_owned();
    if what.len() > MAX_REPORT_BYTES {
        let cut = (0..=MAX_REPORT_BYTES).rev().find(|i| what.is_char_boundary(*i)).unwrap_or(0);
        what.truncate(cut);
        what.push('…');
    }
    if pointer.is_empty() { what } else { format!("{pointer}: {what}") }
}

/// JSON Schema counts `64.0` as an integer; serde does not. Once the schema
/// has accepted a body, its whole-valued numbers are written as integers so
/// the two agree (a float field takes an integer as well).
fn integral_floats_as_integers(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Whole and exactly representable: 2^53 and below.
            if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 {
                *value = if f < 0.0 { json!(f as i64) } else { json!(f as u64) };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use utoipa::OpenApi;

    #[derive(Debug, Deserialize, ToSchema, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sized {
        #[schema(minimum = 1, maximum = 8)]
        vcpus: u32,
        where_to: Option<Where>,
    }

    #[derive(Debug, Deserialize, ToSchema, PartialEq)]
    struct Where {
        host: Option<String>,
    }

    #[derive(OpenApi)]
    #[openapi(components(schemas(Sized, Where)))]
    struct Doc;

    #[test]
    fn the_document_decides_what_a_body_may_be() {
        let contract = Contract::new(&Doc::openapi());
        assert_eq!(contract.decode::<Sized>(json!({"vcpus": 4.0})), Ok(Sized { vcpus: 4, where_to: None }));
        assert!(matches!(contract.decode::<Sized>(json!({"vcpus": 0})), Err(Refusal::Rule { at, .. }) if at == "/vcpus"), "the first violation's pointer");
        assert!(matches!(contract.decode::<Sized>(json!({"vcpus": 0, "x": 1})), Err(Refusal::Shape(_))));
        assert_eq!(contract.decode::<Sized>(json!({"vcpus": 2, "where_to": {"host": "h"}})).unwrap().where_to, Some(Where { host: Some("h".into()) }));
        // serde alone would take a sequence for a struct, and ignore the bounds.
        let refused = [
            (json!({"vcpus": 1, "where_to": [null]}), "/where_to: "),
            (json!({"vcpus": 9}), "/vcpus: 9 is greater than the maximum of 8"),
            (json!({"vcpus": 2.5}), "/vcpus: 2.5 is not of type \"integer\""),
            (json!({"vcpus": 1, "other": 1}), "Additional properties are not allowed"),
            (json!([1, null]), "is not of type \"object\""),
        ];
        for (body, why) in refused {
            let err = contract.decode::<Sized>(body.clone()).unwrap_err().to_string();
            assert!(err.contains(why), "{body}: {err}");
        }
    }

    #[test]
    fn a_long_value_is_not_echoed_whole() {
        let contract = Contract::new(&Doc::openapi());
        let err = contract.decode::<Sized>(json!({"vcpus": "x".repeat(10_000)})).unwrap_err().to_string();
        assert!(err.len() < 2 * MAX_REPORT_BYTES, "{}", err.len());
    }

    #[test]
    fn every_schema_of_the_v1_document_compiles() {
        let contract = Contract::new(&crate::routes::native::openapi());
        let names: Vec<String> = contract.root["components"]["schemas"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        assert!(names.len() > 50, "{}", names.len());
        for name in names {
            if let Err(e) = contract.compile(&name, || Value::Null) {
                panic!("{name}: {e}");
            }
        }
    }

    #[test]
    fn only_whole_numbers_become_integers() {
        let mut v = json!({"a": [1.0, -2.0, 2.5, 1e300], "b": 3});
        integral_floats_as_integers(&mut v);
        assert_eq!(v, json!({"a": [1, -2, 2.5, 1e300], "b": 3}));
    }
}
