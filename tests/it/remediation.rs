//! The closed loop, over both transports of the action bus with one test body:
//! the shop topology (real OpenTelemetry SDK over OTLP/gRPC, paced live) gets
//! errors injected into `cart`; the engine must find it, send one command that
//! passed the governor (the playbook's first step for the class it found), the
//! executor must carry it out (its `exec` driver touches a marker file, which
//! ends the fault), report the outcome, and the engine must verify the
//! recovery and learn that the remedy worked. No command may target another
//! service.
//!
//! In process: the executor runs inside the engine. On Kafka (the test broker):
//! the executor is `homeostat executor` (the binary, a consumer group on the
//! action topic), and a consumer not written in Rust (Python confluent-kafka)
//! reads the commands and validates each against `schemas/command.schema.json`
//! and `schemas/asyncapi.json`.

use std::path::Path;
use std::time::Duration;

use crate::kafka::{Topics, broker};
use crate::rca::shop;
use crate::rca::topology::{self, Fault, Traffic};
use crate::support::{self, num, text};

const WINDOWS: &str = "[window]\nsize = \"1s\"\n[detect.baseline]\nwarmup = 20\n";
const SECONDS: u64 = 70;
const ONSET: u64 = 30;

/// The engine's (and the executor's) configuration: 1 s windows, remediation
/// on `topics` (actions, outcomes) when given, the `exec` driver touching a
/// marker file in `dir`, the executors' consumer `group` when given.
fn remediation(dir: &Path, topics: Option<(&str, &str)>, group: Option<&str>) -> String {
    let topics = topics.map_or(String::new(), |(a, o)| {
        format!("actions_topic = \"{a}\"\noutcomes_topic = \"{o}\"\n")
    });
    let group = group.map_or(String::new(), |g| format!("group = \"{g}\"\n"));
    // Every action that changes something ends the fault (touches the marker).
    let exec: String = [
        "restart",
        "rollback",
        "scale",
        "reroute",
        "clear_cache",
        "replay_jobs",
    ]
    .iter()
    .map(|a| format!("{a} = \"touch {}/healed-{{{{service}}}}\"\n", dir.display()))
    .collect();
    format!(
        "{WINDOWS}[remediation]\nsettle_windows = 1\nverify_windows = 15\ncooldown = \"1m\"\n{topics}[executor]\n{group}drivers = [\"exec\"]\n[executor.exec]\n{exec}"
    )
}

/// Runs the loop on an engine configured by `config` and checks it closed;
/// returns the governor's decisions (the engine is shut down).
/// `pace`: wall time per second of traffic (event time runs that much faster
/// than the wall clock; Kafka's consumer groups need a slower pace).
async fn closed_loop(
    config: &str,
    dir: &Path,
    pace: Duration,
    operator: Option<&str>,
) -> Vec<serde_json::Value> {
    let engine = support::engine(config).await;
    // A human approves held commands through the CLI, with `operator` as token.
    let approver = operator
        .map(|token| tokio::spawn(approve_through_the_cli(engine.api_addr, token.to_string())));
    let grpc = format!("http://{}", engine.grpc_addr);
    let marker = dir.join("healed-cart");
    let sent = tokio::task::spawn_blocking(move || {
        let topology = shop();
        let healed = || marker.exists();
        let traffic = Traffic {
            topology: &topology,
            base: topology::past(SECONDS + 5),
            seconds: SECONDS,
            per_second: 8,
            fault: Some((Fault::Errors("cart", 0.5), ONSET)),
            healed: Some(&healed),
            pace: Some(pace),
        };
        topology::send(&traffic, &grpc, 7);
    });
    sent.await.expect("the SDK sent");
    if let Some(approver) = approver {
        approver.await.expect("the approver approved");
    }
    engine.flush().await;
    let api = engine.api_addr;
    let states = support::sql_until(
        api,
        "SELECT state, service, attempts FROM remediations",
        Duration::from_secs(30),
        |rows| rows.iter().any(|r| text(r, "state") == "recovered"),
    )
    .await;
    let decisions = support::sql(
        api,
        "SELECT command, service, action, verdict, reason FROM remediation_decisions ORDER BY seq",
    )
    .await;
    let outcomes = support::sql(
        api,
        "SELECT command, status, detail FROM remediation_outcomes ORDER BY seq",
    )
    .await;
    let stats = support::sql(
        api,
        "SELECT class, service, action, attempts, successes FROM remediation_stats",
    )
    .await;
    if let Some(token) = operator {
        mark_false_positive(api, token).await;
    }
    engine.shutdown().await;
    assert!(
        states
            .iter()
            .any(|r| text(r, "state") == "recovered" && text(r, "service") == "cart"),
        "no recovered remediation of cart: {states:?}\ndecisions: {decisions:?}\noutcomes: {outcomes:?}"
    );
    let sent: Vec<&serde_json::Value> = decisions
        .iter()
        .filter(|d| text(d, "verdict") == "allow")
        .collect();
    assert!(
        sent.iter().all(|d| text(d, "service") == "cart"),
        "a command against a healthy service: {decisions:?}"
    );
    // One command healed it: the first the playbook offers for the class found.
    assert_eq!(sent.len(), 1, "{decisions:?}");
    let (remedy, action) = (text(sent[0], "command"), text(sent[0], "action"));
    let statuses: Vec<&str> = outcomes
        .iter()
        .filter(|o| text(o, "command") == remedy)
        .map(|o| text(o, "status"))
        .collect();
    assert_eq!(
        statuses,
        ["accepted", "started", "succeeded"],
        "{outcomes:?}"
    );
    assert!(
        stats.iter().any(|s| text(s, "action") == action
            && text(s, "service") == "cart"
            && num(s, "attempts") == 1.0
            && num(s, "successes") == 1.0),
        "{stats:?}"
    );
    decisions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_closes_in_process() {
    let dir = tempfile::tempdir().expect("dir");
    let config = remediation(dir.path(), None, None);
    closed_loop(&config, dir.path(), Duration::from_millis(250), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_command_goes_out_once_a_human_approves_it_with_the_token() {
    let dir = tempfile::tempdir().expect("dir");
    // Every root cause scores under min_score: every command waits for a human.
    let config = remediation(dir.path(), None, None).replace(
        "[remediation]\n",
        "[api]\ncontrol_token = \"s3cret\"\n[remediation]\nmin_score = 1.0\n",
    );
    let decisions = closed_loop(
        &config,
        dir.path(),
        Duration::from_millis(250),
        Some("s3cret"),
    )
    .await;
    let verdicts: Vec<&str> = decisions.iter().map(|d| text(d, "verdict")).collect();
    assert_eq!(verdicts[..2], ["approval", "allow"], "{decisions:?}");
    assert!(
        text(&decisions[1], "reason").contains("approved by a human"),
        "{decisions:?}"
    );
}

/// A human marks the incident a false positive: its series become less
/// sensitive, its remediation stops, and the verdict is kept.
async fn mark_false_positive(api: std::net::SocketAddr, token: &str) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["remediation", "--api", &api.to_string(), "--token", token])
        .args(["mark", "1", "false_positive", "--comment", "load test"])
        .output()
        .await
        .expect("cli");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("series made less sensitive"), "{stdout}");
    let feedback = support::sql(
        api,
        "SELECT incident, verdict, ranked, comment FROM remediation_feedback",
    )
    .await;
    assert_eq!(feedback.len(), 1, "{feedback:?}");
    assert_eq!(text(&feedback[0], "verdict"), "false_positive");
    assert_eq!(text(&feedback[0], "ranked"), "cart");
    let states = support::sql(api, "SELECT state FROM remediations").await;
    assert_eq!(text(&states[0], "state"), "stopped", "{states:?}");
}

/// Polls `homeostat remediation pending` until a command is held, checks that
/// approving it without the token is refused, then approves it with the token.
async fn approve_through_the_cli(api: std::net::SocketAddr, token: String) {
    let cli = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_homeostat"));
        command
            .arg("remediation")
            .args(args)
            .args(["--api", &api.to_string()])
            .env_remove("HOMEOSTAT_CONTROL_TOKEN");
        command
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no command was ever held"
        );
        let out = cli(&["pending", "--format", "json"])
            .output()
            .await
            .expect("cli");
        assert!(out.status.success(), "{out:?}");
        let pending: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
        if let Some(held) = pending.first() {
            let id = held["id"].as_str().expect("id").to_string();
            // Meanwhile the query API tells the incident as being mitigated.
            let listed = tokio::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
                .args(["incidents", "--api", &api.to_string(), "--format", "json"])
                .output()
                .await
                .expect("cli");
            let incidents: Vec<serde_json::Value> =
                serde_json::from_slice(&listed.stdout).expect("incidents json");
            let mine = incidents
                .iter()
                .find(|i| i["id"] == held["incident"])
                .expect("the held command's incident is listed");
            assert_eq!(mine["state"], "mitigating", "{mine}");
            let refused = cli(&["approve", &id]).output().await.expect("cli");
            assert!(
                !refused.status.success(),
                "approved without a token: {refused:?}"
            );
            let stderr = String::from_utf8_lossy(&refused.stderr);
            assert!(
                stderr.contains("Unauthenticated") || stderr.contains("unauthenticated"),
                "{stderr}"
            );
            let approved = cli(&["approve", &id, "--token", &token])
                .output()
                .await
                .expect("cli");
            assert!(approved.status.success(), "{approved:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_closes_over_kafka_with_the_executor_binary() {
    let brokers = broker();
    let dir = tempfile::tempdir().expect("dir");
    let id = Topics::new("remediation")
        .spans
        .trim_end_matches("-spans")
        .to_string();
    let (actions, outcomes) = (format!("{id}-actions"), format!("{id}-outcomes"));
    // The bus on Kafka; telemetry still over OTLP/gRPC (no Kafka ingestion).
    let config = remediation(
        dir.path(),
        Some((&actions, &outcomes)),
        Some(&format!("{id}-executors")),
    )
    .replace(
        "[remediation]\n",
        &format!("[remediation]\nbrokers = \"{brokers}\"\n"),
    )
    .replace(
        "[executor]\n",
        &format!("[kafka]\ngroup_id = \"{id}-engine\"\nsession_timeout = \"6s\"\n[executor]\n"),
    );
    let config_file = dir.path().join("homeostat.toml");
    std::fs::write(&config_file, &config).expect("config file");
    let mut executor = tokio::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .arg("executor")
        .arg("--config")
        .arg(&config_file)
        .stderr(std::fs::File::create(dir.path().join("executor.log")).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("homeostat executor");
    let decisions = closed_loop(&config, dir.path(), Duration::from_millis(500), None).await;
    let _ = executor.kill().await;
    let sent = decisions
        .iter()
        .filter(|d| text(d, "verdict") == "allow")
        .count();
    validate_with_python(&brokers, &actions, sent).await;
}

/// The commands on the topic, read and validated by Python confluent-kafka.
async fn validate_with_python(brokers: &str, topic: &str, count: usize) {
    let python = std::env::var("HOMEOSTAT_TEST_PYTHON").expect(
        "HOMEOSTAT_TEST_PYTHON is not set: run the suite with scripts/test.sh, which installs confluent-kafka",
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/command_consumer.py"
    );
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");
    let output = tokio::process::Command::new(python)
        .args([script, brokers, topic, schemas, &count.to_string(), "60"])
        .output()
        .await
        .expect("run python");
    assert!(output.status.success(), "{output:?}");
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let commands = seen["commands"].as_array().expect("commands");
    assert_eq!(commands.len(), count, "{seen}");
    assert!(
        commands
            .iter()
            .all(|c| c["subject"] == "cart" && c["key"] == "cart"),
        "{seen}"
    );
    let kind = commands[0]["type"].as_str().unwrap_or_default();
    assert!(kind.starts_with("dev.homeostat.remediation."), "{seen}");
}

/// The engine binary is SIGKILLed after its governor allowed a command but
/// before the command could be published (the bus's broker is unreachable);
/// started again on the same store with the broker reachable, it publishes
/// that command, once, under the id it was decided with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_decided_before_a_crash_is_published_once_after_it() {
    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};

    let brokers = broker();
    let dir = tempfile::tempdir().expect("dir");
    let id = Topics::new("outbox")
        .spans
        .trim_end_matches("-spans")
        .to_string();
    let (actions, outcomes) = (format!("{id}-actions"), format!("{id}-outcomes"));
    let ports: Vec<u16> = (0..3).map(|_| support::free_port()).collect();
    let config = |bus: &str| {
        format!(
            "[otlp]\ngrpc_addr = \"127.0.0.1:{}\"\nhttp_addr = \"127.0.0.1:{}\"\n[api]\naddr = \"127.0.0.1:{}\"\n[store]\npath = \"{}\"\n[window]\nsize = \"1s\"\nidle_timeout = \"2s\"\n[detect.baseline]\nwarmup = 20\n[kafka]\ngroup_id = \"{id}-engine\"\nsession_timeout = \"6s\"\n[remediation]\nbrokers = \"{bus}\"\nactions_topic = \"{actions}\"\noutcomes_topic = \"{outcomes}\"\nsettle_windows = 1\nexecutor = false\n",
            ports[0],
            ports[1],
            ports[2],
            dir.path().join("store").display()
        )
    };
    let file = dir.path().join("homeostat.toml");
    // Nothing listens on port 1: every publish fails and the command is held.
    std::fs::write(&file, config("127.0.0.1:1")).expect("config");
    let engine = crate::kafka::EngineProcess::start(&file, &[]);
    let api: std::net::SocketAddr = format!("127.0.0.1:{}", ports[2]).parse().expect("addr");
    let grpc = format!("http://127.0.0.1:{}", ports[0]);
    wait_ready(api).await;
    tokio::task::spawn_blocking(move || {
        let topology = shop();
        let traffic = Traffic {
            topology: &topology,
            base: topology::past(60),
            seconds: 55,
            per_second: 8,
            fault: Some((Fault::Errors("cart", 0.5), ONSET)),
            healed: None,
            pace: Some(Duration::from_millis(50)),
        };
        topology::send(&traffic, &grpc, 11);
    })
    .await
    .expect("the SDK sent");
    let decided = support::sql_until(
        api,
        "SELECT command FROM remediation_decisions WHERE verdict = 'allow'",
        Duration::from_secs(60),
        |rows| !rows.is_empty(),
    )
    .await;
    assert!(!decided.is_empty(), "no command was allowed");
    let command = text(&decided[0], "command").to_string();
    // Give the state file its write (it precedes the publish attempt), then crash.
    tokio::time::sleep(Duration::from_millis(500)).await;
    engine.kill();

    std::fs::write(&file, config(&brokers)).expect("config");
    let engine = crate::kafka::EngineProcess::start(&file, &[]);
    wait_ready(api).await;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{id}-reader"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&actions]).expect("subscribe");
    let mut ids = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // Read until a command arrived and 5 s passed without another.
    loop {
        let wait = if ids.is_empty() {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        } else {
            Duration::from_secs(5)
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(m)) => {
                let event: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap_or_default()).expect("json");
                ids.push(event["id"].as_str().unwrap_or_default().to_string());
            }
            Ok(Err(error)) => panic!("kafka: {error}"),
            Err(_) => break,
        }
    }
    engine.kill();
    assert_eq!(
        ids,
        [command],
        "published once, under the id it was decided with"
    );
}

async fn wait_ready(api: std::net::SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if reqwest::get(format!("http://{api}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the engine at {api} never became ready");
}
