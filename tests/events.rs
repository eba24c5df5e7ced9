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

/// An SSE stream of `path`, resuming after `last` when given.
async fn sse_at(c: &Client, path: &str, last: Option<u64>) -> SseStream {
    let mut rb = c.request_untimed(Method::GET, path).header("accept", "text/event-stream");
    if let Some(id) = last {
        rb = rb.header("last-event-id", id.to_string());
    }
    SseStream::open(rb).await
}

/// The SSE events of `path` up to and including stream sequence `max`.
async fn feed_until(c: &Client, path: &str, max: u64) -> Vec<SseEvent> {
    sse_at(c, path, None).await.read_until(READ, |e| e.id >= max).await
}

fn seqs(events: &[SseEvent]) -> Vec<u64> {
    events.iter().map(|e| e.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_filters_by_type_patterns_and_by_vm() {
    let stack = Stack::start().await;
    let admin = &stack.admin;
    let org = admin.create_org("acme").await;
    let k = stack.client(&admin.create_key(&org, "feed").await);
    let a = str_of(&k.create_running_vm("fa").await["id"]).to_owned();
    let b = str_of(&k.create_running_vm("fb").await["id"]).to_owned();
    k.act_and_wait(&a, "stop", "stopped").await;
    let ha = k.vm_events(&a).await;
    let hb = k.vm_events(&b).await;
    let all: Vec<&serde_json::Value> = ha.iter().chain(&hb).collect();
    let seq = |e: &serde_json::Value| e["seq"].as_u64().unwrap();
    let max = all.iter().map(|e| seq(e)).max().unwrap();
    let expect = |keep: &dyn Fn(&serde_json::Value) -> bool| -> Vec<u64> {
        let mut v: Vec<u64> = all.iter().filter(|e| keep(e)).map(|e| seq(e)).collect();
        v.sort();
        v
    };

    // Unfiltered, the org's feed also carries its tenancy events (the key's creation).
    let unfiltered = feed_until(&k, "/v1/events", max).await;
    assert!(unfiltered.iter().any(|e| e.data["event"]["aggregate_type"] == "tenancy"), "{unfiltered:?}");

    // `vm.*`: every VM event and nothing else; matched against `<aggregate_type>.<type>`.
    let vm_only = feed_until(&k, "/v1/events?type=vm.*", max).await;
    assert!(vm_only.iter().all(|e| e.data["event"]["aggregate_type"] == "vm"), "{vm_only:?}");
    assert_eq!(seqs(&vm_only), expect(&|_| true));

    // A bare pattern matches the type: `*_requested` (the stop), and a list is any of them.
    let want = expect(&|e| str_of(&e["type"]).ends_with("_requested"));
    let requested = feed_until(&k, "/v1/events?type=*_requested", *want.last().unwrap()).await;
    assert!(requested.iter().all(|e| e.event.ends_with("_requested")), "{requested:?}");
    assert_eq!(seqs(&requested), want);
    let want = expect(&|e| e["type"] == "created" || e["type"] == "stopped");
    let two = feed_until(&k, "/v1/events?type=created,vm.stopped", *want.last().unwrap()).await;
    assert_eq!(seqs(&two), want);
    assert_eq!(two.iter().filter(|e| e.event == "created").count(), 2, "{two:?}");

    // `vm_id`: one VM's events only, combinable with `type`.
    let last_a = ha.iter().map(seq).max().unwrap();
    let only_a = feed_until(&k, &format!("/v1/events?vm_id={a}"), last_a).await;
    assert_eq!(seqs(&only_a), ha.iter().map(seq).collect::<Vec<_>>());
    let stopped_at = ha.iter().filter(|e| e["type"] == "stopped").map(seq).max().unwrap();
    let a_stopped = feed_until(&k, &format!("/v1/events?vm_id={a}&type=stopped"), stopped_at).await;
    assert_eq!(a_stopped.iter().map(|e| (e.event.as_str(), str_of(&e.data["aggregate_id"]))).collect::<Vec<_>>(), [("stopped", a.as_str())]);
    // Live, filtered: b's stop arrives on a `stopped` feed of b, after nothing else.
    let mut live = sse_at(&k, &format!("/v1/events?vm_id={b}&type=stopped"), Some(max)).await;
    k.act(&b, "stop").await;
    let got = live.next_event(READ).await.expect("b's stopped, live");
    assert_eq!((got.event.as_str(), &got.data["aggregate_id"]), ("stopped", &json!(b)));
    // The admin acting in no org sees any org's VM by id.
    let by_admin = feed_until(admin, &format!("/v1/events?vm_id={a}"), last_a).await;
    assert_eq!(seqs(&by_admin), seqs(&only_a));

    // Another org's VM is not found; bad filters are 400s.
    let foreign = admin.create_vm(json!({ "name": "foreign" })).await;
    let r = k.send(k.request(Method::GET, &format!("/v1/events?vm_id={}", str_of(&foreign["id"])))).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert!(r.body["code"].is_string() && r.body["message"].is_string(), "{:?}", r.body);
    for (query, code) in [
        ("type=VM.*", "bad_filter"),
        ("type=vm.created.x", "bad_filter"),
        ("type=vm.", "bad_filter"),
        ("type=", "bad_filter"),
        ("type=vm.%3E", "bad_filter"),
        ("vm_id=nope", "invalid_query"),
        ("colour=red", "invalid_query"),
    ] {
        let r = k.send(k.request(Method::GET, &format!("/v1/events?{query}"))).await;
        assert_eq!((r.status, r.body["code"].as_str()), (400, Some(code)), "{query}: {:?}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_event_stream_follows_its_history_then_live() {
    let stack = Stack::start().await;
    let admin = &stack.admin;
    let org = admin.create_org("acme").await;
    let k = stack.client(&admin.create_key(&org, "follow").await);
    let vm = str_of(&k.create_running_vm("f1").await["id"]).to_owned();
    let other = str_of(&k.create_running_vm("f2").await["id"]).to_owned();
    let history = k.vm_events(&vm).await;
    let hseqs: Vec<u64> = history.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let last = *hseqs.last().unwrap();

    // Without `follow`: the history as JSON, as before; `type` filters it.
    let (s, only_created) = k.get(&format!("/v1/vms/{vm}/events?type=created")).await;
    assert_eq!(s, 200, "{only_created}");
    assert_eq!(only_created.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect::<Vec<_>>(), ["created"]);

    // With `follow=true`: SSE, the same history first, then live events of this VM only.
    let path = format!("/v1/vms/{vm}/events?follow=true");
    let mut feed = sse_at(&k, &path, None).await;
    let head = feed.read_until(READ, |e| e.id >= last).await;
    head.iter().for_each(check_format);
    assert_eq!(seqs(&head), hseqs);
    assert_eq!(head.iter().map(|e| e.data.clone()).collect::<Vec<_>>(), history, "the same documents as the JSON history");
    k.act_and_wait(&other, "stop", "stopped").await;
    k.act(&vm, "stop").await;
    let live = feed.read_until(READ, |e| e.event == "stopped").await;
    assert!(live.iter().all(|e| e.id > last && e.data["aggregate_id"] == vm.as_str()), "{live:?}");
    assert!(live.iter().any(|e| e.event == "stop_requested"), "{live:?}");

    // Resuming with Last-Event-ID skips what was seen.
    let stopped = live.last().unwrap().id;
    let resumed = sse_at(&k, &path, Some(last)).await.read_until(READ, |e| e.id >= stopped).await;
    assert_eq!(seqs(&resumed), seqs(&live));

    // Another org's VM is not found, followed or not; a bad filter is a 400.
    let foreign = admin.create_vm(json!({ "name": "foreign" })).await;
    for q in ["", "?follow=true"] {
        let r = k.send(k.request(Method::GET, &format!("/v1/vms/{}/events{q}", str_of(&foreign["id"])))).await;
        assert_eq!(r.status, 404, "{q}: {:?}", r.body);
    }
    let r = k.send(k.request(Method::GET, &format!("{path}&type=a.b.c"))).await;
    assert_eq!((r.status, r.body["code"].as_str()), (400, Some("bad_filter")), "{:?}", r.body);
    let r = k.send(k.request(Method::GET, &format!("/v1/vms/{vm}/events?follow=maybe"))).await;
    assert_eq!((r.status, r.body["code"].as_str()), (400, Some("invalid_query")), "{:?}", r.body);
}
