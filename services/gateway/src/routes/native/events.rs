//! The event feed over Server-Sent Events, and the JSON shape of an event.
//!
//! Each SSE `id:` is the event's stream sequence; reconnecting with
//! `Last-Event-ID: N` resumes at N+1, so nothing is lost and nothing repeats
//! (see `app::events`).

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::Query;
use crate::AppState;
use crate::app::Principal;
use crate::app::events::{self, FeedFilter};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use std::convert::Infallible;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::event::Envelope;
pub use vmplane_domain::event::EventView;
use vmplane_domain::event_filter::TypeFilter;
use vmplane_domain::ids::VmId;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(event_feed))
}

/// Where to resume the feed, and which events it carries.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Same as the `Last-Event-ID` header, for clients that cannot set headers.
    pub last_event_id: Option<u64>,
    /// Only events of these types: comma-separated patterns, each matched
    /// against the type (`created`, `*_requested`) or, when it has a `.`,
    /// against `<aggregate_type>.<type>` (`vm.*`, `host.host_registered`);
    /// `*` is any run of characters within one part. See the README.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = vmplane_domain::event_filter::TypeFilterText, required = false)]
    pub types: Option<String>,
    /// Only the events of this VM (404 when the caller cannot see it).
    pub vm_id: Option<VmId>,
}

/// Parse a `type` filter; a bad one is a 400 `bad_filter`.
pub(crate) fn type_filter(list: Option<&str>) -> ApiResult<Option<TypeFilter>> {
    list.map(|l| TypeFilter::parse(l).map_err(|e| ApiError::BadRequest("bad_filter", e.to_string()))).transpose()
}

/// The largest stream sequence a client may name: what the documents'
/// `int64` allows (a stream never gets near it).
pub const MAX_SEQUENCE: u64 = i64::MAX as u64;

/// Where to resume: `Last-Event-ID`, else the query's `last_event_id`, else
/// 0; each at most [`MAX_SEQUENCE`].
pub(crate) fn resume_after(headers: &HeaderMap, query: Option<u64>) -> ApiResult<u64> {
    let from_header = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|s| *s <= MAX_SEQUENCE)
                .ok_or_else(|| ApiError::BadRequest("bad_header", "Last-Event-ID must be a stream sequence number".into()))
        })
        .transpose()?;
    if query.is_some_and(|q| q > MAX_SEQUENCE) {
        return Err(ApiError::BadRequest("invalid_query", format!("last_event_id must be at most {MAX_SEQUENCE}")));
    }
    Ok(from_header.or(query).unwrap_or(0))
}

/// Events as SSE: `id` = stream sequence, `event` = type, `data` = [`EventView`].
pub(crate) fn sse(events: BoxStream<'static, (u64, Envelope)>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = events.filter_map(|(seq, env)| async move {
        let kind = env.event.type_name();
        let data = serde_json::to_string(&EventView::new(seq, env)).ok()?;
        Some(Ok(SseEvent::default().id(seq.to_string()).event(kind).data(data)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The OpenAPI schema of one Server-Sent Event: OpenAPI 3.1 has the
/// `schema` of a `text/event-stream` answer describe each message, as its
/// `id`, `event` and `data` fields. `event` is the event's type, or the one
/// name `only` when given; `data` is `data` described.
fn sse_message(only: Option<&str>, data: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::ObjectBuilder;
    use utoipa::openapi::schema::Type;
    let text = |description: &str| ObjectBuilder::new().schema_type(Type::String).description(Some(description));
    let event = match only {
        Some(name) => text("The message's name.").enum_values(Some([name])),
        None => text("The event's type."),
    };
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("id", text("The stream sequence; send it back as `Last-Event-ID` to resume after it.").pattern(Some("^[0-9]+$")))
        .property("event", event)
        .property("data", text(data))
        .required("id")
        .required("event")
        .required("data")
        .into()
}

/// One message of an event stream: `data` is an [`EventView`] as JSON.
pub struct EventMessage;

impl utoipa::PartialSchema for EventMessage {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        sse_message(None, "The event, as JSON: an `EventView`.")
    }
}

impl utoipa::ToSchema for EventMessage {}

/// One message of a console log stream: `data` is one line.
pub struct LogMessage;

impl utoipa::PartialSchema for LogMessage {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        sse_message(Some("log"), "One line of the console, without its line break.")
    }
}

impl utoipa::ToSchema for LogMessage {}

/// Every event the caller may see, from the beginning or after `Last-Event-ID`, then live;
/// optionally only some types, or one VM's.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(FeedQuery,
        ("Last-Event-ID" = Option<u64>, Header, nullable = false, description = "Resume right after this stream sequence")),
    responses((status = 200, content_type = "text/event-stream", body = EventMessage, description = "SSE: `id` = stream sequence, `event` = type, `data` = EventView JSON"),
        (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn event_feed(
    State(state): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    Query(q): Query<FeedQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let after = resume_after(&headers, q.last_event_id)?;
    let types = type_filter(q.types.as_deref())?;
    let events = events::feed(&state.app, &who, FeedFilter { after, types, vm: q.vm_id }).await?;
    Ok(sse(events))
}
