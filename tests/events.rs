//! The SSE event feed: format (`id:` = stream sequence, `event:` = type,
//! `data:` = JSON with `seq`) and resumption with `Last-Event-ID` after a
//! dropped connection: nothing repeats, nothing is lost.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const READ: Duration = Duration::from_secs(20);

/// The stream sequences of the VMs' events, from their histories.
async fn history_seqs(c: &Client, vms: &[String]) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for vm in vms {
        out.extend(c.vm_events(vm).await.iter().map(|e| e["seq"].as_u64().expect("seq")));
    }
    out
}

fn check_format(e: &SseEvent) {
    assert_eq!(e.data["seq"].as_u64(), Some(e.id), "data.seq is the SSE id: {e:?}");
    assert_eq!(e.data["type"].as_str(), Some(e.event.as_str()), "event: is the type: {e:?}");
    assert!(str_of(&e.data["id"]).starts_with("evt_"), "{e:?}");
    assert!(e.data["time"].is_string() && e.data["aggregate_id"].is_string(), "{e:?}");
    // `type` is unique across aggregates (`host_registered`); the inner tag is per aggregate.
    if e.data["event"]["aggregate_type"] == "vm" {
        assert_eq!(e.data["event"]["data"]["type"], e.data["type"], "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_feed_resumes_after_last_event_id_without_loss_or_repeats() {
    let stack = Stack::start().await;
    let admin = &stack.admin;
    let org = admin.create_org("acme").await;
    let k = stack.client(&admin.create_key(&org, "feed").await);

    let mut vms = Vec::new();
    for name in ["a1", "a2"] {
        vms.push(str_of(&k.create_running_vm(name).await["id"]).to_owned());
    }

    // Read a few events from the start, then drop the connection.
    let mut feed = k.sse(None).await;
    let first: Vec<SseEvent> = {
        let mut n = 0;
        feed.read_until(READ, |_| {
            n += 1;
            n == 4
        })
        .await
    };
    drop(feed);
    first.iter().for_each(check_format);
    assert!(first.windows(2).all(|w| w[0].id < w[1].id), "{first:?}");
    let last = first.last().unwrap().id;

    // Meanwhile: more work in this org, interleaved with another org's
    // events (the admin's default org), so this org's feed has gaps.
    let other = admin.create_running_vm("other-1").await;
    vms.push(str_of(&k.create_running_vm("a3").await["id"]).to_owned());
    admin.act_and_wait(str_of(&other["id"]), "stop", "stopped").await;
    k.act_and_wait(&vms[0], "stop", "stopped").await;
    vms.push(str_of(&k.create_running_vm("a4").await["id"]).to_owned());
    let expected: BTreeSet<u64> = history_seqs(&k, &vms).await.into_iter().filter(|s| *s > last).collect();
    let max = *expected.last().unwrap();

    let mut feed = k.sse(Some(last)).await;
    let resumed = feed.read_until(READ, |e| e.id >= max).await;
    let mut prev = last;
    for e in &resumed {
        check_format(e);
        assert!(e.id > prev, "ids strictly increase past Last-Event-ID {last}: {} after {prev}", e.id);
        prev = e.id;
        assert_eq!(e.data["org_id"], org.as_str(), "{e:?}");
    }
    let got: BTreeSet<u64> = resumed.iter().filter(|e| e.data["aggregate_id"].as_str().is_some_and(|a| a.starts_with("vm_"))).map(|e| e.id).collect();
    assert_eq!(got, expected, "every VM event appended after {last} arrived, and only those");
    assert!(!resumed.iter().any(|e| e.data["aggregate_id"] == other["id"]), "another org's VM leaked in");

    // The query parameter works like the header.
    let mut rb = k.request_untimed(Method::GET, &format!("/v1/events?last_event_id={last}"));
    rb = rb.header("accept", "text/event-stream");
    let mut by_query = SseStream::open(rb).await;
    let again = by_query.read_until(READ, |e| e.id >= max).await;
    assert_eq!(again.iter().map(|e| e.id).collect::<Vec<_>>(), resumed.iter().map(|e| e.id).collect::<Vec<_>>());

    // Live: an event appended while connected arrives on the open stream.
    k.act(&vms[1], "stop").await;
    let live = feed.read_until(READ, |e| e.event == "stopped").await;
    assert!(live.iter().all(|e| e.id > max), "{live:?}");
    assert_eq!(live.last().unwrap().data["aggregate_id"], vms[1].as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unfiltered_admin_feed_resumes_at_exactly_the_next_sequence() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    for name in ["x1", "x2"] {
        c.create_running_vm(name).await;
    }
    let mut feed = c.sse(None).await;
    let head = feed.read_until(READ, |e| e.id >= 5).await;
    drop(feed);
    // The admin without an org reads the whole stream: no gaps from 1.
    assert_eq!(head.iter().map(|e| e.id).collect::<Vec<_>>(), (1..=head.last().unwrap().id).collect::<Vec<_>>());
    head.iter().for_each(check_format);
    let last = head.last().unwrap().id;

    let vm = c.create_vm(json!({ "name": "x3" })).await;
    c.wait_op_succeeded(str_of(&vm["operation"]["id"])).await;
    let max = *history_seqs(c, &[str_of(&vm["id"]).to_owned()]).await.last().unwrap();

    let mut feed = c.sse(Some(last)).await;
    let resumed = feed.read_until(READ, |e| e.id >= max).await;
    assert_eq!(resumed[0].id, last + 1, "resumes right after Last-Event-ID");
    assert_eq!(resumed.iter().map(|e| e.id).collect::<Vec<_>>(), (last + 1..=max).collect::<Vec<_>>());

    // Resuming at the end waits for new events instead of repeating old ones.
    let mut tail = c.sse(Some(max)).await;
    assert!(tail.next_event(Duration::from_millis(500)).await.is_none(), "nothing new yet");
    let vm = c.create_vm(json!({ "name": "x4" })).await;
    let next = tail.next_event(READ).await.expect("the new VM's first event");
    assert_eq!(next.id, max + 1);
    assert_eq!(next.event, "created");
    assert_eq!(next.data["aggregate_id"], vm["id"]);

    // A Last-Event-ID that is not a sequence is refused.
    let r = c.send(c.request(Method::GET, "/v1/events").header("last-event-id", "abc")).await;
    assert_eq!((r.status, r.body["code"].as_str()), (400, Some("bad_header")), "{:?}", r.body);
}
