//! Extractors whose rejections speak the API's error format instead of axum's
//! plain-text defaults.

use super::error::ApiError;
use crate::routes::contract::{Contract, Refusal};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use std::sync::LazyLock;
use utoipa::ToSchema;

/// JSON body: malformed -> 400, not what the `/v1` document says the body
/// is (a wrong type, a bound, an unknown field) -> 422, not JSON -> 415,
/// over the limit -> 413.
pub struct Json<T>(pub T);

/// The `/v1` document's request bodies, the rule each body is checked by.
static CONTRACT: LazyLock<Contract> = LazyLock::new(|| Contract::new(&super::openapi()));

impl<S: Send + Sync, T: DeserializeOwned + ToSchema> FromRequest<S> for Json<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state).await.map_err(json_rejection)?;
        CONTRACT.decode(value).map(Self).map_err(|refusal| match refusal {
            Refusal::Shape(why) => ApiError::Unprocessable("invalid_body", format!("invalid request body: {why}")),
            Refusal::Rule { why, .. } => ApiError::Unprocessable("validation_failed", why),
        })
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType("expected Content-Type: application/json".into()),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable("invalid_body", r.body_text()),
        _ => ApiError::BadRequest("malformed_json", r.body_text()),
    }
}

/// Query string: anything unparsable -> 400.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|r: QueryRejection| ApiError::BadRequest("invalid_query", r.body_text()))
    }
}

/// Path parameters: anything undecodable -> 400.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|r: PathRejection| ApiError::BadRequest("invalid_path", r.body_text()))
    }
}

/// A typed id in the path: unparsable -> 400 `invalid_id`.
pub struct PathId<T>(pub T);

impl<S: Send + Sync, T: std::str::FromStr<Err = vmplane_domain::ids::IdError>> FromRequestParts<S> for PathId<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        raw.parse().map(Self).map_err(|e| ApiError::BadRequest("invalid_id", format!("`{raw}`: {e}")))
    }
}
