//! A replicated NATS cluster: three nats-server nodes (separate stores,
//! routes on loopback, the same users as one node), every stream and bucket
//! at 3 replicas (`--stream-replicas 3`), two gateways, three sim workers and
//! a webhook deliverer given every node's URL. Creates keep being acknowledged while a NATS node
//! and a gateway are killed (-9) and restarted, and nothing is lost or done
//! twice.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmplane_domain::subjects;

const CREATES: usize = 300;
const CLIENTS: usize = 10;
/// Creates from this index on start only after the killed node and gateway are back.
const AFTER_RESTART: usize = 200;
/// How long one create may keep retrying: a gateway killed mid-request
/// leaves its Idempotency-Key in progress for the record's lease (60 s).
const CREATE_RETRY_FOR: Duration = Duration::from_secs(100);

/// What the clients share: the acknowledged creates (index → VM id) and how
/// many answers told them to retry, by reason.
#[derive(Default)]
struct Tally {
    acked: Mutex<BTreeMap<usize, String>>,
    retries: Mutex<BTreeMap<String, usize>>,
}

impl Tally {
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn retried(&self, why: String) {
        *self.retries.lock().unwrap().entry(why).or_default() += 1;
    }
}

/// Create VM `c<i>` under Idempotency-Key `cluster-<i>` until a gateway
/// acknowledges it (202), switching gateways on every retry. Retried: a
/// connection error (a killed gateway), 503 (NATS unavailable: it must carry
/// `{"code","message"}`) and 409 `idempotency_in_progress` (an attempt
/// through a killed gateway holds the key until its lease ends). Anything
/// else is an error.
async fn create(gateways: &[Client; 2], i: usize, tally: &Tally) -> Result<(), String> {
    let deadline = Instant::now() + CREATE_RETRY_FOR;
    let body = json!({ "name": format!("c{i}") });
    let key = format!("cluster-{i}");
    for attempt in 0.. {
        let c = gateways[(i + attempt) % 2].with_header("Idempotency-Key", &key);
        match c.try_send(c.request(Method::POST, "/v1/vms").json(&body)).await {
            Ok(r) if r.status == 202 => {
                let id = r.body["id"].as_str().ok_or_else(|| format!("c{i}: 202 without an id: {}", r.body))?.to_owned();
                tally.acked.lock().unwrap().insert(i, id);
                return Ok(());
            }
            Ok(r) if r.status == 503 => {
                if !(r.body["code"].is_string() && r.body["message"].is_string()) {
                    return Err(format!("c{i}: a 503 without code and message: {}", r.body));
                }
                tally.retried(format!("503 {}", r.body["code"]));
            }
            Ok(r) if r.status == 409 && r.body["code"] == "idempotency_in_progress" => tally.retried("409 idempotency_in_progress".into()),
            Ok(r) => return Err(format!("c{i} through {}: {} {}", c.base, r.status, r.body)),
            Err(e) => tally.retried(if e.is_connect() { "connection refused".into() } else { format!("transport: {e}") }),
        }
        if Instant::now() >= deadline {
            return Err(format!("c{i}: not acknowledged within {CREATE_RETRY_FOR:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!()
}

/// Every VM a gateway lists, by name: (id, status) of each VM of that name.
async fn vms_by_name(c: &Client) -> Result<BTreeMap<String, Vec<(String, String)>>, String> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for page in 1.. {
        let (status, body) = c.try_get(&format!("/v1/vms?limit=100&page={page}")).await.ok_or_else(|| format!("{} unreachable", c.base))?;
        if status != 200 {
            return Err(format!("{status} {body}"));
        }
        let items = body["data"].as_array().or_else(|| body["items"].as_array()).ok_or_else(|| format!("no items: {body}"))?;
        for vm in items {
            out.entry(str_of(&vm["name"]).to_owned()).or_default().push((str_of(&vm["id"]).to_owned(), str_of(&vm["status"]).to_owned()));
        }
        if items.len() < 100 {
            break;
        }
    }
    Ok(out)
}

#[tokio::test]
async fn creates_survive_the_loss_of_a_nats_node_and_a_gateway() {
    // Kept when the test fails (the processes' logs are in it).
    let root = tempfile::Builder::new().prefix("vmplane-cluster-").tempdir().unwrap().keep();
    let mut nats = NatsCluster::start_in(&root, 3).await;
    let workers: Vec<Proc> = (0..3).map(|i| start_sim_worker_in(&root, &format!("worker-{i}"), nats.args("worker"), &[])).collect();
    let (mut gw_a, a) = start_gateway_in(&root, "gateway-a", nats.args("gateway")).await;
    let (gw_b, b) = start_gateway_in(&root, "gateway-b", nats.args("gateway")).await;
    let mut deliverer = {
        let mut args = vec!["webhooks".to_owned()];
        args.extend(nats.args("webhooks"));
        args.extend(["--data-dir".to_owned(), root.join("webhooks").display().to_string()]);
        Proc::start("webhooks", BIN, args, vec![], root.join("webhooks.log"))
    };
    wait_for("three hosts online", WAIT, async || match a.try_get("/v1/hosts").await {
        Some((200, hosts)) if hosts.as_array().is_some_and(|h| h.iter().filter(|h| h["status"] == "online").count() == 3) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;

    // Every stream and bucket the processes created holds 3 copies.
    let admin = nats.admin().await;
    let names = admin.request("$JS.API.STREAM.NAMES", "".into()).await.expect("listing streams");
    let names: Value = serde_json::from_slice(&names.payload).unwrap();
    let names: Vec<String> = names["streams"].as_array().expect("stream names").iter().map(|s| str_of(s).to_owned()).collect();
    for want in [subjects::EVENT_STREAM, subjects::COMMAND_STREAM, subjects::LOG_STREAM, &format!("KV_{}", subjects::IDEMPOTENCY_BUCKET)] {
        assert!(names.iter().any(|n| n == want), "stream {want} among {names:?}");
    }
    for name in &names {
        let info = nats.stream_info(&admin, name).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info["config"]["num_replicas"], 3, "{name} is replicated three times: {}", info["config"]);
    }

    // 300 creates from 10 clients through both gateways.
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicUsize::new(0));
    let restarted = Arc::new(tokio::sync::Notify::new());
    let back = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (gateways, tally, next, restarted, back) = ([a.clone(), b.clone()], tally.clone(), next.clone(), restarted.clone(), back.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= CREATES {
                        return Ok::<(), String>(());
                    }
                    if i >= AFTER_RESTART {
                        let waiting = restarted.notified();
                        if !back.load(Ordering::SeqCst) {
                            waiting.await;
                        }
                    }
                    create(&gateways, i, &tally).await?;
                }
            })
        })
        .collect();

    // While they run: kill -9 the node leading the event stream and gateway A.
    let t = tally.clone();
    wait_for("50 acknowledged creates", WAIT, async || if t.acked() >= 50 { Ok(()) } else { Err(format!("{}", t.acked())) }).await;
    let leader = nats.stream_info(&admin, subjects::EVENT_STREAM).await.expect("event stream info")["cluster"]["leader"].as_str().map(str::to_owned);
    let victim: usize = leader.and_then(|l| l.strip_prefix("vmplane-test-")?.parse().ok()).unwrap_or(0);
    nats.nodes[victim].proc.kill9();
    gw_a.kill9();
    let acked_at_kill = tally.acked();
    // Creates go on through gateway B and the two remaining nodes. A client
    // whose create was in flight on gateway A waits out the key's lease
    // (60 s), so the window is longer than that.
    wait_for("creates acknowledged with a node and a gateway down", Duration::from_secs(90), async || {
        if t.acked() >= acked_at_kill + 50 || t.acked() >= AFTER_RESTART {
            Ok(())
        } else {
            Err(format!("{} acknowledged ({acked_at_kill} at the kill); retries {:?}", t.acked(), t.retries.lock().unwrap()))
        }
    })
    .await;
    nats.nodes[victim].start().await;
    gw_a.respawn();
    wait_for("gateway A ready again", WAIT, async || match a.try_get("/readyz").await {
        Some((200, _)) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    back.store(true, Ordering::SeqCst);
    restarted.notify_waiters();

    for c in clients {
        if let Err(e) = c.await.expect("a client task") {
            let mut logs: Vec<String> = nats.nodes.iter().map(|n| n.proc.log_tail(15)).collect();
            logs.extend(workers.iter().chain([&gw_a, &gw_b]).map(|p| p.log_tail(30)));
            panic!("{e}\n{}\n----- files kept in {}", logs.join("\n"), root.display());
        }
    }
    let acked = tally.acked.lock().unwrap().clone();
    assert_eq!(acked.len(), CREATES, "every create acknowledged");
    eprintln!("retries: {:?}", tally.retries.lock().unwrap());

    // Every acknowledged create is exactly one running VM, and both gateways agree.
    let want: BTreeMap<String, Vec<(String, String)>> = acked.iter().map(|(i, id)| (format!("c{i}"), vec![(id.clone(), "running".to_owned())])).collect();
    let (via_a, via_b) = wait_for("both gateways to list every VM running", Duration::from_secs(60), async || {
        let (via_a, via_b) = (vms_by_name(&a).await?, vms_by_name(&b).await?);
        if via_a == want && via_b == want {
            return Ok((via_a, via_b));
        }
        let off: Vec<_> = want.iter().filter(|(name, v)| via_a.get(*name) != Some(v) || via_b.get(*name) != Some(v)).take(5).collect();
        Err(format!(
            "{} via A, {} via B; first differing: {off:?}; A {:?}; B {:?}",
            via_a.len(),
            via_b.len(),
            off.first().and_then(|(n, _)| via_a.get(*n)),
            off.first().and_then(|(n, _)| via_b.get(*n))
        ))
    })
    .await;
    assert_eq!(via_a, via_b);

    // The event stream lost nothing: its sequence is contiguous, every copy is
    // current (the restarted node caught up), and every VM has its events.
    let info = wait_for("every replica of the event stream current", WAIT, async || {
        let info = nats.stream_info(&admin, subjects::EVENT_STREAM).await?;
        let replicas = info["cluster"]["replicas"].as_array().cloned().unwrap_or_default();
        if replicas.len() == 2 && replicas.iter().all(|r| r["current"] == true && r["offline"] != true) { Ok(info) } else { Err(info["cluster"].to_string()) }
    })
    .await;
    let state = &info["state"];
    let (first, last, messages) = (state["first_seq"].as_u64().unwrap(), state["last_seq"].as_u64().unwrap(), state["messages"].as_u64().unwrap());
    assert_eq!((first, messages), (1, last), "events 1..={last} all present: {state}");
    assert!(state["num_deleted"].as_u64().unwrap_or(0) == 0, "{state}");
    eprintln!("event stream: {last} events for {CREATES} creates and three hosts");
    for (i, id) in &acked {
        for c in [&a, &b] {
            let types = c.event_types(id).await;
            assert_eq!(types.first().map(String::as_str), Some("created"), "c{i} ({id}) through {}: {types:?}", c.base);
            assert!(types.iter().any(|t| t == "running" || t == "started" || t == "booted"), "c{i} ({id}) through {}: {types:?}", c.base);
        }
    }
    // The deliverer rode over the node's loss too.
    assert!(deliverer.exited().is_none(), "the webhook deliverer exited\n{}", deliverer.log_tail(30));
    let violations = nats.violations();
    assert!(violations.is_empty(), "NATS denied a vmplane process something it needed: {violations:?}");
    drop((workers, gw_a, gw_b, deliverer, nats));
    let _ = std::fs::remove_dir_all(&root);
}

/// Streams found with another replica count than `--stream-replicas`: a
/// gateway (which may create streams but not change them) keeps them and
/// says so in its log; `vmplane nats streams` with the admin's credentials
/// rescales them in place, which nats-server 2.9 does on a cluster.
#[tokio::test]
async fn streams_of_another_replica_count_are_reported_or_rescaled() {
    let dir = tempfile::Builder::new().prefix("vmplane-cluster-").tempdir().unwrap();
    let nats = NatsCluster::start_in(dir.path(), 3).await;
    let streams = |replicas: &str| {
        let out = std::process::Command::new(BIN)
            .args(["nats", "streams", "--stream-replicas", replicas])
            .args(nats_args(&nats.dir, &nats.urls(), "admin"))
            .env_remove("NATS_URL")
            .env_remove("VMPLANE_STREAM_REPLICAS")
            .output()
            .expect("running vmplane nats streams");
        assert!(out.status.success(), "vmplane nats streams: {}", String::from_utf8_lossy(&out.stderr));
    };
    streams("1");
    let client = nats.admin().await;
    assert_eq!(nats.stream_info(&client, subjects::EVENT_STREAM).await.unwrap()["config"]["num_replicas"], 1);

    let (mut gw, c) = start_gateway_in(dir.path(), "gateway", nats.args("gateway")).await;
    assert_eq!(c.get("/readyz").await.0, 200);
    wait_for("the gateway to report the replica count", WAIT, async || {
        if gw.log_mentions("another replica count than --stream-replicas") { Ok(()) } else { Err(gw.log_tail(10)) }
    })
    .await;
    assert_eq!(nats.stream_info(&client, subjects::EVENT_STREAM).await.unwrap()["config"]["num_replicas"], 1, "the gateway changed nothing");
    gw.terminate().await;

    streams("3");
    for stream in [subjects::EVENT_STREAM, subjects::COMMAND_STREAM, &format!("KV_{}", subjects::IDEMPOTENCY_BUCKET)] {
        let info = nats.stream_info(&client, stream).await.unwrap();
        assert_eq!(info["config"]["num_replicas"], 3, "{stream}: {}", info["config"]);
    }
    assert!(nats.violations().is_empty(), "{:?}", nats.violations());
}

/// deploy/nats/node-{1,2,3}.conf, with `vmplane nats init`'s nats.conf
/// beside them and only their addresses and paths moved onto this machine,
/// form one JetStream cluster that admits the vmplane users: a gateway with
/// `--stream-replicas 3` on it is ready and its streams hold three copies.
#[tokio::test]
async fn the_deploy_sample_configs_form_a_cluster() {
    let dir = tempfile::Builder::new().prefix("vmplane-deploy-").tempdir().unwrap();
    let root = dir.path();
    let seeds = root.join("nats");
    nats_init(&seeds, "127.0.0.1:4222");
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats");
    let ports: Vec<(u16, u16)> = (1..=3).map(|_| (free_port(), free_port())).collect();
    let mut configs = Vec::new();
    for (i, (port, route)) in ports.iter().enumerate() {
        let n = i + 1;
        let mut text = std::fs::read_to_string(samples.join(format!("node-{n}.conf"))).expect("reading a sample node config");
        for (j, (_, other_route)) in ports.iter().enumerate() {
            text = text.replace(&format!("10.0.0.1{}:6222", j + 1), &format!("127.0.0.1:{other_route}"));
        }
        let node_dir = root.join(format!("node-{n}"));
        std::fs::create_dir_all(&node_dir).unwrap();
        text = text
            .replace("0.0.0.0:4222", &format!("127.0.0.1:{port}"))
            .replace("0.0.0.0:6222", &format!("127.0.0.1:{route}"))
            .replace("/run/vmplane-nats/nats.pid", &node_dir.join("nats.pid").display().to_string())
            .replace("/var/lib/vmplane-nats", &node_dir.join("store").display().to_string());
        // The include names nats.conf beside the node's config (nats-server resolves it there).
        std::fs::copy(seeds.join("nats.conf"), node_dir.join("nats.conf")).unwrap();
        let settings: String = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
        assert!(!settings.contains("10.0.0.") && !settings.contains("0.0.0.0"), "every address moved: {text}");
        let conf = node_dir.join("node.conf");
        std::fs::write(&conf, text).unwrap();
        configs.push((*port, conf));
    }
    let nats = NatsCluster::start_configs(root, &seeds, configs).await;
    let (_gw, c) = start_gateway_in(root, "gateway", nats.args("gateway")).await;
    assert_eq!(c.get("/readyz").await.0, 200);
    let client = nats.admin().await;
    let info = wait_for("the event stream", WAIT, async || nats.stream_info(&client, subjects::EVENT_STREAM).await).await;
    assert_eq!(info["config"]["num_replicas"], 3, "{}", info["config"]);
    assert_eq!(info["cluster"]["name"], "vmplane", "{}", info["cluster"]);
    assert!(nats.violations().is_empty(), "{:?}", nats.violations());
}
