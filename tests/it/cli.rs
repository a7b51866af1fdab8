//! The `homeostat` binary: `run` with an invalid config, `sql` against a running
//! engine, and graceful shutdown on SIGTERM.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support;

fn homeostat() -> Command {
    Command::new(env!("CARGO_BIN_EXE_homeostat"))
}

#[test]
fn invalid_config_lists_every_problem_and_fails() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[window]\nsize = \"0s\"\n[pipeline]\nqueue_capacity = 0\n[nonsense]\nx = 1\n",
    )
    .expect("write");
    let output = homeostat()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "window.size",
        "pipeline.queue_capacity",
        "unknown key `nonsense`",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in {stderr}");
    }
    let output = homeostat()
        .arg("run")
        .env("HOMEOSTAT__API__ADDR", "not-an-address")
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid socket address"));
}

/// Starts `homeostat run` on fresh ports with `env` and its stderr to
/// `stderr()`, and waits until it is ready: the child and its API address.
/// A free port may be taken by a concurrent test before the engine binds it:
/// an engine that exits at start (its reason on stderr) is started again on
/// other ports, at most three times.
async fn start_engine(
    env: &[(&str, &std::ffi::OsStr)],
    stderr: impl Fn() -> Stdio,
) -> (Child, String) {
    for _ in 0..3 {
        let api = format!("127.0.0.1:{}", support::free_port());
        let mut child = homeostat()
            .arg("run")
            .env("HOMEOSTAT__OTLP__GRPC_ADDR", "127.0.0.1:0")
            .env(
                "HOMEOSTAT__OTLP__HTTP_ADDR",
                format!("127.0.0.1:{}", support::free_port()),
            )
            .env("HOMEOSTAT__API__ADDR", &api)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr())
            .spawn()
            .expect("start engine");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = reqwest::get(format!("http://{api}/readyz"))
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return (child, api);
            }
            if let Some(status) = child.try_wait().expect("engine status") {
                eprintln!("engine exited at start ({status}); starting it again");
                break;
            }
            assert!(Instant::now() < deadline, "engine never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("engine exited at start three times");
}

/// Sends SIGTERM and waits (30 s at most) for the engine to exit: its
/// status and how long it took.
fn terminate(child: &mut Child) -> (ExitStatus, Duration) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let sent = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (status, sent.elapsed());
        }
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "engine did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_command_and_sigterm() {
    let store = tempfile::tempdir().expect("store");
    let (mut child, api) = start_engine(
        &[
            ("HOMEOSTAT__STORE__PATH", store.path().as_os_str()),
            ("RUST_LOG", "warn".as_ref()),
        ],
        Stdio::inherit,
    )
    .await;
    let json = homeostat()
        .args([
            "sql",
            "--api",
            &api,
            "--format",
            "json",
            "SELECT 1 + 1 AS two, COUNT(*) AS n FROM service_stats",
        ])
        .output()
        .expect("sql");
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json array");
    assert_eq!(rows, serde_json::json!([{"two": 2, "n": 0}]));
    let table = homeostat()
        .args(["sql", "--api", &api, "SELECT 'x' AS label"])
        .output()
        .expect("sql");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("| label |") && text.contains("| x     |"),
        "{text}"
    );
    let bad = homeostat()
        .args(["sql", "--api", &api, "SELEC nonsense"])
        .output()
        .expect("sql");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("query failed"));

    let (status, _) = terminate(&mut child);
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    let unreachable = homeostat()
        .args(["sql", "--api", &api, "SELECT 1"])
        .output()
        .expect("sql");
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach"));
    // The gRPC commands name the cause once (tonic's chain repeats links).
    let incidents = homeostat()
        .args(["incidents", "--api", &api])
        .output()
        .expect("incidents");
    assert!(!incidents.status.success());
    let stderr = String::from_utf8_lossy(&incidents.stderr);
    assert!(stderr.contains("cannot reach the engine API"), "{stderr}");
    assert!(!stderr.contains("tcp connect error"), "{stderr}");
}

#[test]
fn a_missing_replay_input_is_named_with_its_cause_once() {
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("missing");
    let output = homeostat()
        .args(["replay", "--input"])
        .arg(&missing)
        .arg("--output")
        .arg(dir.path().join("out"))
        .output()
        .expect("replay");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");
}

/// A Kafka broker that is down: the engine serves OTLP and answers `/readyz`
/// meanwhile (tested in `kafka`), logs the outage without flooding its log
/// (librdkafka reports it several times a second, and hundreds of times while
/// its clients close: 736 lines in 16 s before), and stops promptly (its
/// retry backoff, up to 5 s, held the stop up: 8.6 s before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_is_down_is_logged_briefly_and_does_not_hold_up_the_stop() {
    let store = tempfile::tempdir().expect("store");
    let log = store.path().join("stderr.log");
    // Nothing listens there (the port was free a moment ago).
    let brokers = format!("127.0.0.1:{}", support::free_port());
    let (mut child, _api) = start_engine(
        &[
            ("HOMEOSTAT__STORE__PATH", store.path().as_os_str()),
            ("HOMEOSTAT__KAFKA__BROKERS", brokers.as_ref()),
            ("RUST_LOG", "info".as_ref()),
        ],
        || Stdio::from(std::fs::File::create(&log).expect("log file")),
    )
    .await;
    // Long enough for the receive backoff to reach its 5 s cap.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (status, took) = terminate(&mut child);
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    let text = std::fs::read_to_string(&log).expect("log");
    let lines = text.lines().count();
    assert!(text.contains("kafka"), "the outage is logged: {text}");
    assert!(lines <= 60, "{lines} lines logged: {text}");
    assert!(
        took < Duration::from_secs(4),
        "the stop took {took:?}: {text}"
    );
}
