//! Nothing accepted is lost or stuck: commands the worker cannot carry out
//! fail their operations through events; queued commands are kept alive;
//! operations whose command was lost are resumed at start; a host never has
//! two workers; and kill -9 of the worker and the gateway at random moments
//! during 100 provisionings loses nothing and repeats nothing.

#[path = "common/mod.rs"]
mod common;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmplane_bus::async_nats::{self, HeaderMap, jetstream};
use vmplane_domain::spec::VmSpec;
use vmplane_domain::tenancy::TenancyCommand;
use vmplane_domain::vm::VmCommand;
use vmplane_domain::{Command, CommandEnvelope, HostId, OpId, OrgId, ProjectId, VmId, subjects};

/// The event history of a VM provisioned once, without a fault showing.
const PROVISIONED: [&str; 7] = ["created", "provisioning_started", "network_allocated", "disk_prepared", "booted", "ready", "operation_finished"];

async fn host_id(stack: &Stack) -> HostId {
    str_of(&stack.wait_host_online().await["id"]).parse().expect("a host id")
}

fn msg_id(op: OpId) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, op.to_string().as_str());
    headers
}

/// Publish a command straight to the command stream, as a gateway would.
async fn publish(js: &jetstream::Context, subject: String, op: OpId, payload: Vec<u8>) {
    js.publish_with_headers(subject, msg_id(op), payload.into()).await.expect("publishing").await.expect("stored by JetStream");
}

/// Publish `command` on `subject` as the admin's, in the default org and
/// project, as a gateway that accepted it would; returns its operation.
async fn publish_command(js: &jetstream::Context, subject: String, command: Command) -> OpId {
    let op = OpId::new();
    let env =
        CommandEnvelope { op, org: OrgId::DEFAULT, project: ProjectId::DEFAULT, actor: "admin".into(), issued_at: time::OffsetDateTime::now_utc(), command };
    publish(js, subject, op, vmplane_domain::event::encode(&env).unwrap()).await;
    op
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_past_its_delivery_limit_fails_its_operation_and_leaves_the_vm_usable() {
    let mut stack = Stack::start().await;
    stack.respawn_worker_with(&["--max-deliveries", "2"]);
    let c = stack.admin.clone();
    // Booting this VM aborts the worker, every time: a supervisor restarts it.
    let b = c.create_vm(json!({ "name": "doomed", "labels": { "sim.crash": "boot" } })).await;
    let (id, op) = (str_of(&b["id"]).to_owned(), str_of(&b["operation"]["id"]).to_owned());
    let mut crashes = 0;
    let worker = &mut stack.worker;
    let done = wait_for("the operation to end", Duration::from_secs(90), async || {
        if let Some(status) = worker.exited() {
            assert!(!status.success(), "the worker exits only by crashing here: {status}");
            crashes += 1;
            worker.respawn();
        }
        let (s, o) = c.get(&format!("/v1/operations/{op}")).await;
        match o["status"].as_str() {
            Some("succeeded" | "failed") => Ok(o),
            _ => Err(format!("{s} {o}")),
        }
    })
    .await;
    assert!(crashes >= 1, "the command crashed the worker");
    assert!(stack.worker.log_mentions("injected crash"));
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "delivery_limit", "{done}");
    assert!(str_of(&done["error"]["message"]).contains("gave up"), "{done}");

    // The VM is not left busy: it failed, and it can be deleted.
    let vm = c.vm(&id).await;
    assert_eq!(vm["status"], "failed", "{vm}");
    let types = c.event_types(&id).await;
    assert_eq!(types.iter().filter(|t| *t == "operation_finished").count(), 1, "{types:?}");
    c.act_and_wait(&id, "delete", "deleted").await;
    // And the worker goes on serving other VMs.
    c.create_running_vm("fine").await;
    assert!(stack.worker.exited().is_none(), "{}", stack.worker.log_tail(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_command_fails_its_operation() {
    let stack = Stack::start().await;
    let c = stack.admin.clone();
    let host = host_id(&stack).await;
    let js = jetstream::new(stack.nats_client().await);
    // Bytes that are no command, for a VM of this host.
    let (op, vm) = (OpId::new(), VmId::new());
    publish(&js, subjects::vm_command(host, vm), op, b"\xc1 not a command".to_vec()).await;
    let o = c.wait_op(&op.to_string()).await;
    assert_eq!(o["status"], "failed", "{o}");
    assert_eq!(o["error"]["code"], "undecodable_command", "{o}");
    assert_eq!(o["target_id"], vm.to_string().as_str(), "{o}");
    // The worker goes on serving.
    c.create_running_vm("after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenancy_command_the_domain_refuses_fails_its_operation() {
    let stack = Stack::start().await;
    let c = stack.admin.clone();
    let js = jetstream::new(stack.nats_client().await);
    // A project in an org that does not exist (the gateway refuses that
    // early; a command racing the org's creation, or another client of the
    // command stream, reaches the worker).
    let (org, project) = (OrgId::new(), ProjectId::new());
    let command = Command::Tenancy { command: TenancyCommand::CreateProject { id: project, org, name: "web".into() } };
    let op = publish_command(&js, subjects::tenancy_command(org), command).await;
    let o = c.wait_op(&op.to_string()).await;
    assert_eq!(o["status"], "failed", "{o}");
    assert_eq!(o["error"]["code"], "not_found", "{o}");
    assert_eq!(o["target_id"], project.to_string().as_str(), "{o}");
    assert_eq!(c.get(&format!("/v1/orgs/{org}/projects")).await.0, 404, "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_queued_behind_a_slow_one_is_kept_alive_not_redelivered() {
    // Booting takes well over the harness's AckWait (2 s).
    let stack = Stack::start_with(StackOpts { sim_boot_delay_ms: 7000, ..Default::default() }).await;
    let c = stack.admin.clone();
    let host = host_id(&stack).await;
    let b = c.create_vm(json!({ "name": "slow" })).await;
    let (id, create_op) = (str_of(&b["id"]).to_owned(), str_of(&b["operation"]["id"]).to_owned());
    // Delete is accepted while the create runs; the worker queues it behind the create.
    let (s, del) = c.delete(&format!("/v1/vms/{id}")).await;
    assert_eq!(s, 202, "{del}");
    let delete_op = str_of(&del["operation"]["id"]).to_owned();

    let js = jetstream::new(stack.nats_client().await);
    let stream = js.get_stream(subjects::COMMAND_STREAM).await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer = stream.get_consumer(&format!("host-{host}")).await.unwrap();
    let mut both_held = false;
    wait_for("the create to finish", WAIT, async || {
        let info = consumer.info().await.expect("consumer info");
        assert_eq!(info.num_redelivered, 0, "a command was redelivered while the worker held it: {info:?}");
        both_held |= info.num_ack_pending == 2;
        let (_, o) = c.get(&format!("/v1/operations/{create_op}")).await;
        if o["status"] == "succeeded" { Ok(()) } else { Err(o.to_string()) }
    })
    .await;
    assert!(both_held, "the delete waited behind the create, both unacknowledged");
    c.wait_op_succeeded(&delete_op).await;
    assert_eq!(c.vm(&id).await["status"], "deleted");
    let types = c.event_types(&id).await;
    assert_eq!(types.iter().filter(|t| *t == "delete_requested").count(), 1, "{types:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_whose_command_was_lost_is_resumed_when_the_worker_starts() {
    let mut stack = Stack::start_with(StackOpts { sim_boot_delay_ms: 3000, ..Default::default() }).await;
    let c = stack.admin.clone();
    let host = host_id(&stack).await;
    let b = c.create_vm(json!({ "name": "orphaned" })).await;
    let (id, op) = (str_of(&b["id"]).to_owned(), str_of(&b["operation"]["id"]).to_owned());
    wait_for("the VM to reach its boot step", WAIT, async || {
        let types = c.event_types(&id).await;
        assert!(!types.iter().any(|t| t == "booted"), "booted before the worker could be killed: {types:?}");
        if types.iter().any(|t| t == "disk_prepared") { Ok(()) } else { Err(format!("{types:?}")) }
    })
    .await;
    stack.worker.kill9();

    // The operation is half-way and its command is gone from the stream.
    let js = jetstream::new(stack.nats_client().await);
    let stream = js.get_stream(subjects::COMMAND_STREAM).await.unwrap();
    let vm: VmId = id.parse().unwrap();
    let cmd = stream.get_last_raw_message_by_subject(&subjects::vm_command(host, vm)).await.expect("the create is still in the stream");
    assert_eq!(cmd.headers.get(async_nats::header::NATS_MESSAGE_ID).map(|v| v.as_str().to_owned()), Some(op.clone()));
    assert!(stream.delete_message(cmd.sequence).await.unwrap());

    stack.worker.respawn();
    c.wait_op_succeeded(&op).await;
    assert_eq!(c.vm(&id).await["status"], "running");
    assert_eq!(stack.sim_guest(&id).unwrap()["boots"], 1);
    assert_eq!(c.event_types(&id).await, PROVISIONED);
    assert!(stack.worker.log_mentions("its command is gone; resuming it"), "{}", stack.worker.log_tail(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_naming_a_vm_that_exists_changes_nothing() {
    let mut stack = Stack::start().await;
    let c = stack.admin.clone();
    let host = host_id(&stack).await;
    let vm = c.create_running_vm("first").await;
    let id: VmId = str_of(&vm["id"]).parse().unwrap();
    c.act_and_wait(&id.to_string(), "delete", "deleted").await;
    // A worker that never held the VM (deleted, it has no guest to check at
    // start): it presumes a create's VM new, and the append's expected
    // sequence tells it otherwise.
    stack.worker.kill9();
    stack.worker.respawn();
    stack.wait_host_online().await;
    let js = jetstream::new(stack.nats_client().await);
    let command = VmCommand::Create { spec: Box::new(VmSpec::named("second")), host };
    let op = publish_command(&js, subjects::vm_command(host, id), Command::Vm { vm: id, command }).await;
    let o = c.wait_op(&op.to_string()).await;
    assert_eq!((o["status"].as_str(), o["error"]["code"].as_str()), (Some("failed"), Some("conflict")), "{o}");
    let types = c.event_types(&id.to_string()).await;
    assert_eq!(types.iter().filter(|t| *t == "created").count(), 1, "{types:?}");
    assert_eq!(types.last().map(String::as_str), Some("operation_finished"), "nothing but the refusal after the delete: {types:?}");
    let after = c.vm(&id.to_string()).await;
    assert_eq!((after["name"].as_str(), after["status"].as_str()), (Some("first"), Some("deleted")), "{after}");
    assert!(stack.worker.log_mentions("append conflict; reloading"), "the presumption was not put to the test: {}", stack.worker.log_tail(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_for_the_same_data_dir_or_host_refuses_to_start() {
    let mut stack = Stack::start().await;
    let c = stack.admin.clone();
    let vm = c.create_running_vm("first").await;
    let args = stack.worker_args();

    // The same data dir.
    let mut second = Proc::start("worker-2", BIN, args.clone(), vec![], stack.root().join("worker-2.log"));
    let status = wait_for("the second worker to exit", WAIT, async || second.exited().ok_or_else(|| "still running".to_owned())).await;
    assert!(!status.success(), "{status}");
    assert!(second.log_mentions("is using the data dir"), "{}", second.log_tail(20));

    // A copy of the data dir elsewhere: the same host id, another directory.
    let copy = stack.root().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    let cp = std::process::Command::new("cp").arg("-a").arg(stack.data_dir().join("worker")).arg(&copy).status().unwrap();
    assert!(cp.success());
    let data = stack.data_dir().to_string_lossy().into_owned();
    let copied: Vec<String> = args.iter().map(|a| if *a == data { copy.to_string_lossy().into_owned() } else { a.clone() }).collect();
    assert_ne!(copied, args, "the copy runs on another --data-dir");
    let mut third = Proc::start("worker-3", BIN, copied, vec![], stack.root().join("worker-3.log"));
    let status = wait_for("the worker on the copy to exit", WAIT, async || third.exited().ok_or_else(|| "still running".to_owned())).await;
    assert!(!status.success(), "{status}");
    assert!(third.log_mentions("is held by another worker"), "{}", third.log_tail(20));

    // The first worker was not disturbed; killed -9 and restarted on its own
    // data dir, it takes its own lease back and goes on.
    c.act_and_wait(str_of(&vm["id"]), "stop", "stopped").await;
    stack.worker.kill9();
    stack.worker.respawn();
    c.create_running_vm("after-restart").await;
    assert!(stack.worker.log_mentions("took back this data dir's own lease"), "{}", stack.worker.log_tail(20));
    assert!(stack.worker.exited().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_worker_and_gateway_during_100_provisionings_loses_and_repeats_nothing() {
    const VMS: usize = 100;
    // Provisioning takes a while, so that kills land in the middle of it.
    let mut stack = Stack::start_with(StackOpts { sim_boot_delay_ms: 200, sim_ready_delay_ms: 200, ..Default::default() }).await;
    let seed: u64 = std::env::var("VMPLANE_FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("faults seed: {seed} (set VMPLANE_FAULTS_SEED to replay the same kills)");
    let mut rng = StdRng::seed_from_u64(seed);

    // Two clients create VMs, with random pauses, until 100 are accepted
    // (202); every other answer a killed gateway gives (none, 503) is retried
    // with a new VM.
    let accepted: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let names = Arc::new(AtomicUsize::new(0));
    let creators: Vec<_> = (0..2)
        .map(|i| {
            let (c, accepted, names) = (stack.admin.with_timeout(Duration::from_secs(10)), accepted.clone(), names.clone());
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(i + 1));
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(300);
                while accepted.lock().unwrap().len() < VMS {
                    assert!(Instant::now() < deadline, "fewer than {VMS} creates accepted in 300 s");
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
                    let name = format!("f{}", names.fetch_add(1, Ordering::Relaxed));
                    match c.try_send(c.request(Method::POST, "/v1/vms").json(&json!({ "name": name }))).await {
                        Ok(r) if r.status == 202 => {
                            accepted.lock().unwrap().push((str_of(&r.body["id"]).to_owned(), str_of(&r.body["operation"]["id"]).to_owned()));
                        }
                        Ok(r) => {
                            assert_eq!(r.status, 503, "{}", r.body);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        })
        .collect();

    // Meanwhile, kill -9 the worker or the gateway at random moments and start it again.
    let (mut worker_kills, mut gateway_kills) = (0, 0);
    while !creators.iter().all(|h| h.is_finished()) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1200))).await;
        if rng.random_bool(0.5) {
            stack.worker.kill9();
            stack.worker.respawn();
            worker_kills += 1;
        } else {
            stack.gateway.kill9();
            stack.gateway.respawn();
            gateway_kills += 1;
        }
    }
    for h in creators {
        h.await.expect("a creator failed");
    }
    eprintln!("killed the worker {worker_kills} and the gateway {gateway_kills} times");
    assert!(worker_kills > 0 && gateway_kills > 0, "both were killed at least once");
    stack.wait_ready().await;
    stack.wait_host_online().await;
    let c = stack.admin.clone();

    // Every accepted command finishes, and succeeds.
    let accepted = accepted.lock().unwrap().clone();
    assert!(accepted.len() >= VMS);
    let ops = wait_for("every accepted operation to finish", Duration::from_secs(180), async || {
        let mut ops = Vec::new();
        for (_, op) in &accepted {
            let (s, o) = c.get(&format!("/v1/operations/{op}")).await;
            if !matches!(o["status"].as_str(), Some("succeeded" | "failed")) {
                return Err(format!("{op}: {s} {o}"));
            }
            ops.push(o);
        }
        Ok(ops)
    })
    .await;
    for o in &ops {
        assert_eq!(o["status"], "succeeded", "{o}");
    }

    // Every VM, those whose 202 a killed gateway never sent included: running,
    // booted exactly once, its operation finished exactly once.
    let mut all = BTreeSet::new();
    for page in 1.. {
        let (s, b) = c.get(&format!("/v1/vms?limit=100&page={page}")).await;
        assert_eq!(s, 200, "{b}");
        let data = b["data"].as_array().unwrap();
        if data.is_empty() {
            break;
        }
        all.extend(data.iter().map(|v| str_of(&v["id"]).to_owned()));
    }
    for (vm, _) in &accepted {
        assert!(all.contains(vm), "accepted VM {vm} is listed");
    }
    // (Those never answered with a 202 were not awaited above.)
    wait_for("every VM to be running", Duration::from_secs(180), async || {
        for id in &all {
            let vm = c.vm(id).await;
            if vm["status"] != "running" {
                return Err(vm.to_string());
            }
        }
        Ok(())
    })
    .await;
    for id in &all {
        let guest = stack.sim_guest(id).unwrap_or_else(|| panic!("{id} has a guest"));
        assert_eq!((&guest["boots"], &guest["running"]), (&Value::from(1), &Value::from(true)), "{id}: {guest}");
        assert_eq!(c.event_types(id).await, PROVISIONED, "{id}");
    }

    // No process left behind: nats-server, the gateway and the worker only.
    let expected: BTreeSet<u32> = [stack.nats.proc.pid(), stack.gateway.pid(), stack.worker.pid()].into_iter().flatten().collect();
    assert_eq!(expected.len(), 3);
    let running: BTreeSet<u32> = stack.processes_in_root().into_iter().collect();
    assert_eq!(running, expected, "processes running from the test's directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_left_by_an_older_worker_is_brought_up_to_date() {
    // Older workers let JetStream stop redelivering after 20 deliveries,
    // which left operations pending for good.
    let mut stack = Stack::start().await;
    let host = host_id(&stack).await;
    stack.worker.kill9();
    let js = jetstream::new(stack.nats_client().await);
    let stream = js.get_stream(subjects::COMMAND_STREAM).await.unwrap();
    let name = format!("host-{host}");
    let mut current: jetstream::consumer::PullConsumer = stream.get_consumer(&name).await.unwrap();
    let mut config = pull_config(current.info().await.unwrap().config.clone());
    config.max_deliver = 20;
    let old = stream.create_consumer(config).await.unwrap();
    assert_eq!(old.cached_info().config.max_deliver, 20);

    stack.worker.respawn();
    wait_for("the worker to lift the delivery limit", WAIT, async || {
        let mut c: jetstream::consumer::PullConsumer = stream.get_consumer(&name).await.map_err(|e| e.to_string())?;
        let max = c.info().await.map_err(|e| e.to_string())?.config.max_deliver;
        if max == -1 { Ok(()) } else { Err(format!("max_deliver {max}")) }
    })
    .await;
    stack.admin.create_running_vm("after").await;
}

/// A pull consumer's settings from its info.
fn pull_config(c: jetstream::consumer::Config) -> jetstream::consumer::pull::Config {
    jetstream::consumer::pull::Config {
        durable_name: c.durable_name,
        filter_subject: c.filter_subject,
        ack_policy: c.ack_policy,
        ack_wait: c.ack_wait,
        max_deliver: c.max_deliver,
        max_ack_pending: c.max_ack_pending,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_a_fork_of_three_makes_exactly_three_clones_after_its_restart() {
    // The harness's worker has a short ack wait: a crashed worker's commands come back soon.
    let mut stack = Stack::start().await;
    let c = stack.admin.clone();
    let vm = c.create_vm(json!({ "name": "src", "labels": { "sim.crash-once": "take_snapshot" } })).await;
    let id = str_of(&vm["id"]).to_owned();
    c.wait_op_succeeded(str_of(&vm["operation"]["id"])).await;
    let (s, b) = c.post(&format!("/v1/vms/{id}/fork"), &json!({ "name": "f", "count": 3 })).await;
    assert_eq!(s, 202, "{b}");
    let snap = str_of(&b["snapshot"]["id"]).to_owned();
    let mut ops: Vec<String> = vec![str_of(&b["operation"]["id"]).to_owned()];
    ops.extend(b["vms"].as_array().unwrap().iter().map(|v| str_of(&v["operation"]["id"]).to_owned()));
    let mut crashes = 0;
    let worker = &mut stack.worker;
    let done = wait_for("the fork to end", Duration::from_secs(120), async || {
        if let Some(status) = worker.exited() {
            assert!(!status.success(), "the worker exits only by crashing here: {status}");
            crashes += 1;
            worker.respawn();
        }
        let mut ended = Vec::new();
        for op in &ops {
            let (s, o) = c.get(&format!("/v1/operations/{op}")).await;
            match o["status"].as_str() {
                Some("succeeded" | "failed") => ended.push(o),
                _ => return Err(format!("{op}: {s} {o}")),
            }
        }
        Ok(ended)
    })
    .await;
    assert_eq!(crashes, 1, "the injected crash happened once");
    assert!(done.iter().all(|o| o["status"] == "succeeded"), "{done:?}");
    assert_eq!(c.get(&format!("/v1/snapshots/{snap}")).await.1["status"], "ready");
    let types = c.event_types(&id).await;
    for t in ["snapshot_requested", "snapshot_taken"] {
        assert_eq!(types.iter().filter(|x| *x == t).count(), 1, "one {t}: {types:?}");
    }
    assert_eq!(c.vm(&id).await["status"], "running");
    // Exactly three clones, each resumed once from the snapshot.
    let (_, all) = c.get("/v1/vms?limit=100").await;
    let clones: Vec<&Value> = all["data"].as_array().unwrap().iter().filter(|v| v["from_snapshot"] == snap.as_str()).collect();
    assert_eq!(clones.len(), 3, "{all}");
    for clone in clones {
        let guest = stack.sim_guest(str_of(&clone["id"])).expect("sim guest");
        assert_eq!(
            (clone["status"].as_str(), guest["boots"].as_u64(), guest["resumed_from"].as_str()),
            (Some("running"), Some(1), Some(snap.as_str())),
            "{clone}"
        );
    }
}
