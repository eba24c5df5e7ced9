//! Who calls, and what they pass: the bearer token, and a procedure's input
//! (the query string of a GET, the JSON body of a POST or DELETE), with every
//! rejection in the tRPC error shape.

use super::error::{Code, VisorError, VisorResult};
use crate::AppState;
use crate::app::caller::{authenticate, scope};
use crate::app::{Actor, Principal};
use crate::routes::contract::Contract;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::sync::LazyLock;
use utoipa::ToSchema;
use vmplane_domain::OrgId;

/// The authenticated caller (`Authorization: Bearer <token>`, the same
/// tokens as `/v1`). The org it acts in comes with the input, so it is
/// scoped by [`Caller::scope`] once the input is read.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Actor);

impl FromRequestParts<AppState> for Caller {
    type Rejection = VisorError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> VisorResult<Self> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| VisorError::new(Code::Unauthorized, "missing or invalid bearer token"))?;
        Ok(Self(authenticate(&state.app, token)?))
    }
}

impl Caller {
    /// Act in `org` (an API key only in its own: FORBIDDEN otherwise; the
    /// admin in any that exists), or without one in the key's org (the
    /// admin's: `default`). Charges the key one request of its rate.
    pub fn scope(self, state: &AppState, org: Option<&str>) -> VisorResult<Principal> {
        let org = org.map(|o| parse_id::<OrgId>("organizationId", o)).transpose()?;
        Ok(scope(&state.app, self.0, org, None)?)
    }
}

/// A typed id in field `field`: unparsable -> BAD_REQUEST.
pub fn parse_id<T: std::str::FromStr<Err = vmplane_domain::ids::IdError>>(field: &str, raw: &str) -> VisorResult<T> {
    raw.parse().map_err(|e| VisorError::bad_request(format!("{field}: `{raw}` is not a valid id: {e}")))
}

/// A required field: absent or empty -> BAD_REQUEST.
pub fn required<'a>(field: &str, value: &'a Option<String>) -> VisorResult<&'a str> {
    value.as_deref().filter(|v| !v.is_empty()).ok_or_else(|| VisorError::bad_request(format!("{field} is required")))
}

/// A procedure's input. GET: the query string's parameters (`?vmId=...`),
/// or tRPC's own `?input=<JSON>`. POST and DELETE: a JSON object body (an
/// empty body reads as `{}`). Not JSON -> PARSE_ERROR; not the input's
/// shape (wrong types, unknown fields) -> BAD_REQUEST; a body that is not
/// `application/json` -> UNSUPPORTED_MEDIA_TYPE; over 1 MiB -> PAYLOAD_TOO_LARGE.
pub struct Input<T>(pub T);

/// Visor's document's inputs, the rule each input is checked by.
static CONTRACT: LazyLock<Contract> = LazyLock::new(|| Contract::new(&super::api().split_for_parts().1));

impl<S: Send + Sync, T: DeserializeOwned + ToSchema> FromRequest<S> for Input<T> {
    type Rejection = VisorError;

    async fn from_request(req: Request, state: &S) -> VisorResult<Self> {
        let value = if req.method() == Method::GET { query_input(req.uri().query().unwrap_or_default())? } else { body_input(req, state).await? };
        if !value.is_object() {
            return Err(VisorError::bad_request("the input must be a JSON object"));
        }
        // tRPC has one code for both: a wrong shape and a broken rule are BAD_REQUEST.
        CONTRACT.decode(value).map(Self).map_err(|refusal| VisorError::bad_request(format!("invalid input: {refusal}")))
    }
}

fn query_input(query: &str) -> VisorResult<Value> {
    let uri: axum::http::Uri = format!("/?{query}").parse().map_err(|_| VisorError::bad_request("invalid query string"))?;
    let axum::extract::Query(pairs) = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map_err(|e| VisorError::bad_request(format!("invalid query string: {}", e.body_text())))?;
    if let Some((_, input)) = pairs.iter().find(|(k, _)| k == "input") {
        if pairs.len() > 1 {
            return Err(VisorError::bad_request("give the input either as `input` or as parameters, not both"));
        }
        return serde_json::from_str(input).map_err(|e| VisorError::new(Code::ParseError, format!("`input` is not JSON: {e}")));
    }
    Ok(Value::Object(pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect::<Map<_, _>>()))
}

async fn body_input<S: Send + Sync>(req: Request, state: &S) -> VisorResult<Value> {
    let json_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .map(|m| m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")));
    let body = Bytes::from_request(req, state).await.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => VisorError::new(Code::PayloadTooLarge, "the request body is larger than 1 MiB"),
        _ => VisorError::bad_request(r.body_text()),
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    if json_type != Some(true) {
        return Err(VisorError::new(Code::UnsupportedMediaType, "expected Content-Type: application/json"));
    }
    serde_json::from_slice(&body).map_err(|e| VisorError::new(Code::ParseError, format!("the body is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_or_trpc_input() {
        assert_eq!(query_input("vmId=vm_1").unwrap(), serde_json::json!({"vmId": "vm_1"}));
        assert_eq!(query_input("input=%7B%22vmId%22%3A%22vm_1%22%7D").unwrap(), serde_json::json!({"vmId": "vm_1"}));
        assert_eq!(query_input("").unwrap(), serde_json::json!({}));
        assert_eq!(query_input("input=nope").unwrap_err().code, Code::ParseError);
        assert_eq!(query_input("input=%7B%7D&vmId=x").unwrap_err().code, Code::BadRequest);
    }
}
