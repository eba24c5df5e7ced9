//! Server-Sent Events from the gateway (`reqwest-eventsource`): the event
//! feed, a VM's events and its console log. A dropped connection is
//! reconnected with `Last-Event-ID` (by the crate); anything seen already
//! (ids are stream sequences, increasing) is skipped; a refusal ends the
//! stream with the API's error.

use crate::client::Api;
use crate::error::{Error, Result};
use futures::StreamExt;
use reqwest::Method;
use reqwest_eventsource::retry::ExponentialBackoff;
use reqwest_eventsource::{Event, EventSource};
use std::time::Duration;

/// Reconnects in a row before the stream gives up.
const MAX_RETRIES: usize = 8;

/// One message of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The SSE `id:`, a stream sequence.
    pub id: Option<u64>,
    /// The SSE `event:` (the event type, or `log`).
    pub event: String,
    pub data: String,
}

/// An open stream.
pub struct Stream {
    source: EventSource,
    base: String,
    last: Option<u64>,
    /// The last transport error, reported if the retries run out.
    broken: Option<String>,
}

impl Stream {
    /// Open `GET path` as an event stream.
    pub fn open(api: &Api, path: &str) -> Result<Self> {
        let rb = api.request_untimed(Method::GET, path).header("accept", "text/event-stream");
        let mut source = EventSource::new(rb).map_err(|e| Error::Invalid(format!("building the event stream request: {e}")))?;
        source.set_retry_policy(Box::new(ExponentialBackoff::new(Duration::from_millis(250), 2.0, Some(Duration::from_secs(5)), Some(MAX_RETRIES))));
        Ok(Self { source, base: api.base().to_owned(), last: None, broken: None })
    }

    /// The next message; `Ok(None)` when the server ended the stream for good.
    pub async fn next(&mut self) -> Result<Option<Message>> {
        loop {
            let Some(item) = self.source.next().await else {
                return match self.broken.take() {
                    Some(detail) => Err(Error::Unreachable { url: self.base.clone(), detail }),
                    None => Ok(None),
                };
            };
            match item {
                Ok(Event::Open) => self.broken = None,
                Ok(Event::Message(m)) => {
                    let id = m.id.trim().parse::<u64>().ok();
                    if let (Some(id), Some(last)) = (id, self.last)
                        && id <= last
                    {
                        continue; // replayed after a reconnect
                    }
                    self.last = id.or(self.last);
                    return Ok(Some(Message { id, event: m.event, data: m.data }));
                }
                Err(reqwest_eventsource::Error::InvalidStatusCode(status, resp)) => {
                    self.source.close();
                    let body = resp.bytes().await.unwrap_or_default();
                    return Err(Error::from_answer(status.as_u16(), &body));
                }
                Err(reqwest_eventsource::Error::InvalidContentType(ct, _)) => {
                    self.source.close();
                    return Err(Error::BadResponse(format!("expected an event stream, got content type {ct:?}")));
                }
                Err(reqwest_eventsource::Error::Transport(e)) => {
                    if let Error::Unreachable { detail, .. } = Error::transport(&self.base, &e) {
                        self.broken = Some(detail);
                    }
                }
                // The server closed the stream: reconnect (with Last-Event-ID) unless retries ran out.
                Err(reqwest_eventsource::Error::StreamEnded) => {}
                Err(e) => {
                    self.source.close();
                    return Err(Error::BadResponse(format!("event stream: {e}")));
                }
            }
        }
    }
}
