//! Outside event subscribers on NATS: `vmplane subscribers create --org`
//! writes credentials whose user reads that org's events through its own
//! durable consumer (resuming after a reconnect, nothing acked repeats) and
//! is refused another org's subjects, consumer creation and the command and
//! KV subjects.

#[path = "common/mod.rs"]
mod common;

use async_nats::jetstream::{self, consumer::pull};
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmplane_domain::event::Envelope;
use vmplane_domain::subjects;

const WAIT: Duration = Duration::from_secs(20);

struct Sub {
    client: async_nats::Client,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    /// What nats-server told this connection (permission violations).
    errors: Arc<Mutex<Vec<String>>>,
}

/// Connect with the subscriber's seed and inbox prefix; the server may still
/// be reloading its users, so retry for a while.
async fn connect(summary: &Value) -> Sub {
    let seed = std::fs::read_to_string(str_of(&summary["credentials"])).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let errs = errors.clone();
        let opts = async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
            .custom_inbox_prefix(str_of(&summary["inbox_prefix"]))
            .event_callback(move |ev| {
                let errs = errs.clone();
                async move { errs.lock().unwrap().push(ev.to_string()) }
            })
            .connection_timeout(Duration::from_secs(2));
        match opts.connect(str_of(&summary["url"])).await {
            Ok(client) => {
                let js = jetstream::new(client.clone());
                let consumer =
                    js.get_consumer_from_stream(str_of(&summary["durable"]), str_of(&summary["stream"])).await.expect("binding to its durable consumer");
                return Sub { client, consumer, errors };
            }
            Err(e) => assert!(Instant::now() < deadline, "the subscriber cannot connect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fetch and ack events (stream sequence, envelope) until `done` holds.
async fn read_until(sub: &Sub, mut done: impl FnMut(&[(u64, Envelope)]) -> bool) -> Vec<(u64, Envelope)> {
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    while !done(&out) {
        assert!(Instant::now() < deadline, "condition not met; got {:?}", out.iter().map(|(s, e)| (s, e.event.type_name())).collect::<Vec<_>>());
        let mut batch = sub.consumer.fetch().max_messages(50).expires(Duration::from_millis(300)).messages().await.expect("fetching");
        use futures::StreamExt;
        while let Some(m) = batch.next().await {
            let m = m.expect("a message");
            let seq = m.info().unwrap().stream_sequence;
            out.push((seq, Envelope::decode(&m.payload).expect("an envelope")));
            m.ack().await.expect("acking");
        }
    }
    sub.client.flush().await.unwrap();
    out
}

async fn violation(sub: &Sub, needle: &str) {
    let deadline = Instant::now() + WAIT;
    while !sub.errors.lock().unwrap().iter().any(|e| e.contains("Permissions Violation") && e.contains(needle)) {
        assert!(Instant::now() < deadline, "no violation for {needle}: {:?}", sub.errors.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_subscriber_reads_its_org_through_a_durable_consumer_and_nothing_else() {
    let stack = Stack::start().await;
    let admin = &stack.admin;
    let org_a = admin.create_org("alpha").await;
    let org_b = admin.create_org("beta").await;
    let ka = stack.client(&admin.create_key(&org_a, "a").await);
    let kb = stack.client(&admin.create_key(&org_b, "b").await);
    let vm_a = str_of(&ka.create_running_vm("va").await["id"]).to_owned();
    let vm_b = str_of(&kb.create_running_vm("vb").await["id"]).to_owned();

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alpha.nk");
    let run = std::process::Command::new(BIN)
        .args(["subscribers", "create", "--org", &org_a, "--nats-dir"])
        .arg(&stack.nats.dir)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // Logs go to stderr: stdout is the JSON summary alone.
    let summary: Value = serde_json::from_slice(&run.stdout).expect("a JSON summary");
    assert_eq!(summary["reloaded"], true, "{summary}");
    assert_eq!(summary["credentials"], out.display().to_string());
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    let nkey = vmplane_bus::auth::public_key(&std::fs::read_to_string(&out).unwrap()).unwrap();
    stack.expect_violations_of(&nkey);
    // Creating it again makes another user; an unknown org id is refused.
    let bad = std::process::Command::new(BIN).args(["subscribers", "create", "--org", "acme", "--nats-dir"]).arg(&stack.nats.dir).output().unwrap();
    assert!(!bad.status.success());

    // Org A's events, from the beginning, through the durable consumer: all of them, only A's.
    let history: Vec<u64> = ka.vm_events(&vm_a).await.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let sub = connect(&summary).await;
    let first = read_until(&sub, |got| history.iter().all(|s| got.iter().any(|(g, _)| g == s))).await;
    assert!(first.iter().all(|(_, e)| e.org.to_string() == org_a), "only org A's events");
    assert!(first.iter().any(|(_, e)| e.event.aggregate_type() == "tenancy"), "the org's own events too");
    assert!(!first.iter().any(|(_, e)| e.aggregate == vm_b));
    assert!(first.windows(2).all(|w| w[0].0 < w[1].0), "in stream order, once");
    let last = first.last().unwrap().0;
    sub.client.drain().await.unwrap();

    // Meanwhile, more happens in both orgs; the durable consumer resumes
    // right after what was acked.
    ka.act_and_wait(&vm_a, "stop", "stopped").await;
    kb.act_and_wait(&vm_b, "stop", "stopped").await;
    let sub = connect(&summary).await;
    let resumed = read_until(&sub, |got| got.iter().any(|(_, e)| e.aggregate == vm_a && e.event.type_name() == "stopped")).await;
    assert!(resumed.iter().all(|(s, e)| *s > last && e.org.to_string() == org_a), "nothing acked repeats, nothing foreign");
    let seen: BTreeSet<u64> = first.iter().chain(&resumed).map(|(s, _)| *s).collect();
    assert_eq!(seen.len(), first.len() + resumed.len(), "each event once");

    // Refused: another org's subjects, the command and KV subjects, making a consumer.
    let _foreign = sub.client.subscribe(subjects::org_events(org_b.parse().unwrap())).await.unwrap();
    violation(&sub, &format!("vmplane.evt.{org_b}.>")).await;
    sub.client.publish("vmplane.cmd.tenancy.x", "x".into()).await.unwrap();
    violation(&sub, "vmplane.cmd.tenancy.x").await;
    let _cmds = sub.client.subscribe(subjects::COMMANDS_ALL).await.unwrap();
    violation(&sub, "Subscription to \"vmplane.cmd.>\"").await;
    let kv = format!("$JS.API.DIRECT.GET.KV_{}", subjects::IDEMPOTENCY_BUCKET);
    sub.client.publish(kv.clone(), "{}".into()).await.unwrap();
    violation(&sub, &kv).await;
    let js = jetstream::new(sub.client.clone());
    let evil = pull::Config { durable_name: Some("evil".into()), filter_subject: subjects::org_events(org_b.parse().unwrap()), ..Default::default() };
    assert!(js.create_consumer_on_stream(evil, subjects::EVENT_STREAM).await.is_err(), "a subscriber makes no consumer");
    violation(&sub, "CONSUMER").await;
}
