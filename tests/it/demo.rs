//! `homeostat demo`, the binary, end to end: the simulated shop's SDKs export
//! over OTLP/gRPC, six faults are injected, and every one must be healed by a
//! command the engine sent, with no command against a healthy service. Run at
//! `--speed 2` (2.5 s windows) to keep the suite short; the README's figures
//! come from the default speed.

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_heals_every_fault_it_injects() {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["demo", "--speed", "2", "--api", "127.0.0.1:0"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the demo ends within 5 minutes")
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("healed: 6 of 6 faults (met)"), "{stdout}");
    assert!(
        stdout.contains("commands against a healthy service: 0 of"),
        "{stdout}"
    );
    // The table names each fault and where it went.
    for fault in [
        "latency degradation",
        "faulty deployment",
        "memory leak",
        "dependency outage",
        "CPU saturation",
        "queue backlog",
    ] {
        assert!(stdout.contains(fault), "{fault} missing:\n{stdout}");
    }
}
