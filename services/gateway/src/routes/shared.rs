//! What every dialect's HTTP layer does the same way, whatever its shapes:
//! the bearer security scheme its OpenAPI document declares, and relaying a
//! terminal session over a WebSocket. Not a dialect: dialects import this,
//! never each other.

use crate::app::terminal::Terminal;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use vmplane_domain::subjects::WindowSize;

/// Declares `Authorization: Bearer <API key secret or admin token>` as the
/// security scheme `bearer` (`modifiers(&BearerAuth)`).
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut OpenApi) {
        add_bearer_scheme(doc, "bearer");
    }
}

/// Declare the bearer scheme under `name` (a dialect whose original
/// document names it otherwise keeps that name).
pub fn add_bearer_scheme(doc: &mut OpenApi, name: &str) {
    let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("A vmplane API key secret or the admin token.")).build();
    doc.components.get_or_insert_with(Default::default).add_security_scheme(name, SecurityScheme::Http(scheme));
}

/// A view that flattens a type refusing unknown fields (`#[serde(flatten)]`
/// of a `deny_unknown_fields` request struct) is documented as an `allOf`
/// whose part forbids the view's other fields, which no answer could
/// satisfy. Merge such `allOf`s of objects into one object, so the document
/// describes what is sent (the request types keep their strictness).
pub fn merge_flattened(doc: OpenApi) -> OpenApi {
    let mut v = serde_json::to_value(&doc).expect("an OpenAPI document is JSON");
    let named = v.pointer("/components/schemas").cloned().unwrap_or_default();
    merge_all_of(&mut v, &named);
    serde_json::from_value(v).expect("the merged document is an OpenAPI document")
}

/// Add JSON Schema keywords that utoipa's derive cannot write (`if`,
/// `then`, `else`: rules between a type's fields) to the named schema of
/// `doc`. They are kept as the schema's extensions, which serialize flat
/// beside its other keywords in no set order: give one keyword (wrap
/// several in an `allOf`) so the document is the same on every build.
pub fn add_keywords(doc: &mut OpenApi, schema: &str, keywords: serde_json::Value) {
    use utoipa::openapi::{RefOr, Schema};
    let found = doc.components.as_mut().and_then(|c| c.schemas.get_mut(schema));
    let Some(RefOr::T(Schema::Object(object))) = found else { panic!("{schema} is an object schema of the document") };
    let serde_json::Value::Object(keywords) = keywords else { panic!("keywords are an object") };
    assert!(keywords.len() == 1, "one keyword, for a stable order");
    object.extensions.get_or_insert_with(Default::default).extend(keywords);
}

/// OpenAPI links from each create to what can be done with what it made:
/// the 2xx answers of `POST <collection>` (whose body carries the new
/// resource's `id`) link to every operation on `<collection>/{param}` and
/// below that takes no other path parameter, passing that `id`. Generated
/// clients and stateful fuzzers learn from them where an id comes from.
pub fn link_created_ids(doc: &mut OpenApi) {
    use utoipa::openapi::link::LinkBuilder;
    use utoipa::openapi::{PathItem, RefOr};
    let operations = |item: &PathItem| [&item.get, &item.put, &item.post, &item.delete, &item.patch].into_iter().flatten().cloned().collect::<Vec<_>>();
    let mut links: Vec<(String, String, String)> = Vec::new(); // (collection, operation id, parameter)
    for (path, item) in &doc.paths.paths {
        let Some((collection, rest)) = path.split_once("/{") else { continue };
        let Some((param, _)) = rest.split_once('}') else { continue };
        // The resource's own parameter only: `{id}`, not also a `{volume_id}`.
        if rest.contains('{') {
            continue;
        }
        for op in operations(item) {
            if let Some(id) = op.operation_id {
                links.push((collection.to_owned(), id, param.to_owned()));
            }
        }
    }
    for (collection, operation_id, param) in links {
        let Some(create) = doc.paths.paths.get_mut(&collection).and_then(|item| item.post.as_mut()) else { continue };
        for (status, response) in create.responses.responses.iter_mut() {
            if let (true, RefOr::T(response)) = (status.starts_with('2'), response) {
                // utoipa 5 writes its `operation_id` field as `operation_id`,
                // not OpenAPI's `operationId`: the name goes in as an
                // extension, which serializes flat (the builder's would be `x-`).
                let name = [("operationId", operation_id.clone())].into_iter().collect();
                let link = LinkBuilder::new().parameter(&param, "$response.body#/id").extensions(Some(name)).build();
                response.links.insert(operation_id.clone(), RefOr::T(link));
            }
        }
    }
}

/// A tagged enum's newtype variant (`Variant(Struct)`) is documented as an
/// inline `allOf` of the struct and its tag inside the enum's `oneOf`,
/// which client generators take apart in the wrong order (openapi-python-
/// client 0.29 drops the whole enum). Each such member becomes a named
/// schema, `<Enum><Tag in CamelCase>`, referred to from the `oneOf`.
pub fn name_tagged_variants(doc: OpenApi) -> OpenApi {
    use serde_json::Value;
    let mut v = serde_json::to_value(&doc).expect("an OpenAPI document is JSON");
    let Some(schemas) = v.pointer_mut("/components/schemas").and_then(Value::as_object_mut) else { return doc };
    let mut named = Vec::new();
    for (name, schema) in schemas.iter_mut() {
        for member in schema.get_mut("oneOf").and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(parts) = member.get("allOf").and_then(Value::as_array) else { continue };
            let tag = parts.iter().find_map(|p| p.pointer("/properties/type/enum/0").and_then(Value::as_str));
            let (Some(tag), true) = (tag, parts.iter().any(|p| p.get("$ref").is_some())) else { continue };
            let camel: String = tag
                .split('_')
                .map(|w| {
                    let mut c = w.chars();
                    c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
                })
                .collect();
            let variant = format!("{name}{camel}");
            named.push((variant.clone(), std::mem::replace(member, serde_json::json!({"$ref": format!("#/components/schemas/{variant}")}))));
        }
    }
    schemas.extend(named);
    serde_json::from_value(v).expect("the document with named variants is an OpenAPI document")
}

/// [`merge_flattened`] on every schema within `node` (a generic page's
/// items are inlined, not named).
fn merge_all_of(node: &mut serde_json::Value, named: &serde_json::Value) {
    use serde_json::{Map, Value};
    match node {
        Value::Array(items) => items.iter_mut().for_each(|i| merge_all_of(i, named)),
        Value::Object(map) => {
            map.values_mut().for_each(|v| merge_all_of(v, named));
            let Some(parts) = map.get("allOf").and_then(Value::as_array) else { return };
            let resolve = |part: &Value| match part.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/components/schemas/")) {
                Some(name) => named.get(name).cloned().unwrap_or_default(),
                None => part.clone(),
            };
            let parts: Vec<Value> = parts.iter().map(resolve).collect();
            if !parts.iter().any(|p| p["additionalProperties"] == Value::Bool(false)) || !parts.iter().all(|p| p["type"] == "object") {
                return;
            }
            let (mut properties, mut required) = (Map::new(), Vec::new());
            for part in parts {
                properties.extend(part["properties"].as_object().cloned().unwrap_or_default());
                required.extend(part["required"].as_array().cloned().unwrap_or_default());
            }
            map.remove("allOf");
            map.insert("type".into(), "object".into());
            map.insert("properties".into(), Value::Object(properties));
            map.insert("required".into(), Value::Array(required));
        }
        _ => {}
    }
}

/// Largest WebSocket message (and frame) a terminal client may send:
/// keystrokes and pastes, not bulk data; a larger one closes the session.
pub const MAX_TERMINAL_MESSAGE_BYTES: usize = 64 << 10;

/// What a client's text frames carry on a terminal socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFrames {
    /// Keystrokes, as binary frames do.
    Keystrokes,
    /// [`Control`] messages, one JSON object per frame; keystrokes come as
    /// binary frames only.
    Control,
}

/// A control message from a terminal client.
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// The client's window is `cols` x `rows` character cells (each 1 to
    /// [`WindowSize::MAX`]); the guest's console takes that size.
    Resize { cols: u16, rows: u16 },
}

impl Control {
    /// A control frame's meaning, or why it has none.
    fn parse(text: &str) -> Result<WindowSize, String> {
        match serde_json::from_str::<Control>(text) {
            Ok(Control::Resize { cols, rows }) => WindowSize::new(cols, rows).ok_or_else(|| format!("resize: cols and rows must be 1 to {}", WindowSize::MAX)),
            Err(e) => Err(format!("not a control message ({e})")),
        }
    }
}

/// Finish a terminal upgrade: relay `term` over the socket.
pub fn terminal_upgrade(ws: WebSocketUpgrade, term: Terminal, text: TextFrames) -> Response {
    ws.max_message_size(MAX_TERMINAL_MESSAGE_BYTES).max_frame_size(MAX_TERMINAL_MESSAGE_BYTES).on_upgrade(move |socket| relay(socket, term, text))
}

/// Relay until either side ends: binary frames in are keystrokes, text
/// frames are keystrokes or control messages (`text`), console output goes
/// out as binary frames. A control message that does not parse closes the
/// socket with code 1007 and the reason. Then the session is ended at the
/// worker (the console is free for the next one when the socket closes) and
/// its place is freed with `term`.
async fn relay(socket: WebSocket, term: Terminal, text: TextFrames) {
    let Terminal { input, mut output } = term;
    let (mut ws_tx, mut ws_rx) = socket.split();
    let mut close = None;
    loop {
        tokio::select! {
            out = output.next() => match out {
                Some(bytes) => {
                    if ws_tx.send(Message::Binary(bytes)).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            frame = ws_rx.next() => match frame {
                Some(Ok(Message::Binary(b))) => input.send(b).await,
                Some(Ok(Message::Text(t))) if text == TextFrames::Keystrokes => input.send(bytes::Bytes::from(t.as_str().to_owned())).await,
                Some(Ok(Message::Text(t))) => match Control::parse(t.as_str()) {
                    Ok(size) => input.resize(size).await,
                    Err(why) => {
                        close = Some(CloseFrame { code: close_code::INVALID, reason: truncate(why, 120).into() });
                        break;
                    }
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                _ => break,
            },
        }
    }
    input.close().await;
    output.ended().await;
    let _ = ws_tx.send(Message::Close(close)).await;
}

/// At most `max` bytes of `s`, cut at a character boundary (a close
/// frame's reason has room for 123).
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let cut = (0..=max).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_parse_or_say_why() {
        assert_eq!(Control::parse(r#"{"type":"resize","cols":132,"rows":43}"#), Ok(WindowSize { cols: 132, rows: 43 }));
        for bad in [r#"{"type":"resize","cols":0,"rows":43}"#, r#"{"type":"resize","cols":80,"rows":1001}"#] {
            assert!(Control::parse(bad).unwrap_err().starts_with("resize: cols and rows must be"), "{bad}");
        }
        for bad in [
            "ls -l",
            r#"{"type":"resize","cols":-1,"rows":4}"#,
            r#"{"type":"paste"}"#,
            r#"{"type":"resize","cols":80}"#,
            r#"{"type":"resize","cols":80,"rows":24,"x":1}"#,
            "{}",
        ] {
            assert!(Control::parse(bad).unwrap_err().starts_with("not a control message"), "{bad}");
        }
        assert_eq!(truncate("é".repeat(100), 120).len(), 120);
        assert_eq!(truncate("aé".into(), 2), "a");
    }
}
