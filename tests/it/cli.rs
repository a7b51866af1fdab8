//! The `homeostat` binary: `run` with an invalid config, `sql` against a running
//! engine, and graceful shutdown on SIGTERM.

use std::process::{Command, Stdio};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_command_and_sigterm() {
    let store = tempfile::tempdir().expect("store");
    // A free port may be taken by a concurrent test before the engine binds it:
    // an engine that exits at start (its reason on stderr) is started again on
    // other ports, at most three times.
    let (mut child, api) = 'started: {
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
                .env("HOMEOSTAT__STORE__PATH", store.path())
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start engine");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let ready = reqwest::get(format!("http://{api}/readyz"))
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ready {
                    break 'started (child, api);
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
    };
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

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "graceful shutdown exits 0, got {status}");
            break;
        }
        assert!(Instant::now() < deadline, "engine did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
    let unreachable = homeostat()
        .args(["sql", "--api", &api, "SELECT 1"])
        .output()
        .expect("sql");
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach"));
}
