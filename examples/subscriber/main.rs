//! An outside event subscriber: reads one org's events from vmplane's NATS
//! through the durable consumer `vmplane subscribers create` made for it,
//! prints each event once as a JSON line, and acks it after printing, so a
//! restart resumes right after the last event it printed.
//!
//! ```sh
//! vmplane subscribers create --org org_... --out alpha.nk > alpha.json
//! cargo run -p vmplane --example subscriber -- alpha.json
//! ```
//!
//! The argument is the JSON summary the command printed (`url`,
//! `credentials`, `stream`, `durable`, `inbox_prefix`). Messages are
//! MessagePack; decoded with any decoder they are the envelope's JSON
//! document (`schemas/subscribers.md`), so this program needs nothing of
//! vmplane's own code.

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let path = std::env::args().nth(1).ok_or("usage: subscriber <summary.json> (the output of `vmplane subscribers create`)")?;
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let field = |k: &str| summary[k].as_str().map(str::to_owned).ok_or(format!("{path}: no `{k}`"));
    let seed = std::fs::read_to_string(field("credentials")?)?;

    let client = async_nats::ConnectOptions::with_nkey(seed.trim().to_owned()).custom_inbox_prefix(field("inbox_prefix")?).connect(field("url")?).await?;
    let js = jetstream::new(client);
    // Bind to the existing durable consumer; the subscriber may not create one.
    let consumer: jetstream::consumer::Consumer<pull::Config> = js.get_consumer_from_stream(field("durable")?, field("stream")?).await?;
    loop {
        let mut batch = consumer.fetch().max_messages(100).expires(Duration::from_secs(5)).messages().await?;
        while let Some(msg) = batch.next().await {
            let msg = msg?;
            let seq = msg.info()?.stream_sequence;
            match rmp_serde::from_slice::<serde_json::Value>(&msg.payload) {
                Ok(mut event) => {
                    event["seq"] = seq.into();
                    println!("{event}");
                }
                Err(e) => eprintln!("event at {seq} is not MessagePack: {e}"),
            }
            // After printing: a crash before this line prints it again, never loses it.
            msg.ack().await?;
        }
    }
}
