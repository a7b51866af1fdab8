//! `homeostat replay` as a user runs it: a directory of `timestamp,value` CSV
//! files in, one scored CSV per file out, same relative paths, same rows.

use std::path::Path;
use std::process::{Command, Output};

fn replay(input: &Path, output: &Path) -> Output {
    replay_with(input, output, &[])
}

fn replay_with(input: &Path, output: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .arg("replay")
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .output()
        .expect("run homeostat replay")
}

/// Five-minute rows of a daily cycle with deterministic noise; `spike_at` adds a
/// spike of 50 at that row.
fn write_series(path: &Path, rows: usize, spike_at: Option<usize>) {
    let mut text = String::from("timestamp,value\n");
    let mut rng = homeostat::loadgen::fleet::Rng::new(7);
    for i in 0..rows {
        let noise = rng.unit() - 0.5;
        let secs = i as u64 * 300;
        let (day, rest) = (secs / 86_400, secs % 86_400);
        let phase = rest as f64 / 86_400.0 * std::f64::consts::TAU;
        let mut value = 50.0 + 20.0 * phase.sin() + 4.0 * noise;
        if spike_at == Some(i) {
            value += 50.0;
        }
        text.push_str(&format!(
            "2024-03-{:02} {:02}:{:02}:00,{value:.3}\n",
            1 + day,
            rest / 3600,
            rest % 3600 / 60
        ));
    }
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    std::fs::write(path, text).expect("write");
}

fn read_scores(path: &Path) -> (String, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).expect("output exists");
    let mut lines = text.lines();
    let header = lines.next().expect("header").to_string();
    let rows = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    (header, rows)
}

#[test]
fn replays_a_directory_row_for_row_and_scores_the_spike() {
    let input = tempfile::tempdir().expect("input");
    let output = tempfile::tempdir().expect("output");
    write_series(&input.path().join("a/steady.csv"), 2500, None);
    write_series(&input.path().join("b/spike.csv"), 2500, Some(2000));
    let run = replay(input.path(), output.path());
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("files=2 rows=5000"), "{stdout}");

    for (name, spike) in [("a/steady.csv", None), ("b/spike.csv", Some(2000usize))] {
        let source = std::fs::read_to_string(input.path().join(name)).expect("input");
        let (header, rows) = read_scores(&output.path().join(name));
        assert_eq!(header, "timestamp,value,anomaly_score");
        assert_eq!(
            rows.len(),
            source.lines().count() - 1,
            "{name}: one row per input row"
        );
        for (row, line) in rows.iter().zip(source.lines().skip(1)) {
            assert_eq!(
                format!("{},{}", row[0], row[1]),
                line,
                "{name}: input echoed"
            );
            let score: f64 = row[2].parse().expect("score");
            assert!((0.0..=1.0).contains(&score), "{name}: score {score}");
        }
        let alerts: Vec<usize> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r[2].parse::<f64>().unwrap_or(0.0) >= 0.998)
            .map(|(i, _)| i)
            .collect();
        match spike {
            None => assert!(alerts.len() <= 3, "{name}: {alerts:?}"),
            Some(at) => assert!(
                alerts.contains(&at),
                "{name}: spike at {at} not among {alerts:?}"
            ),
        }
    }
}

#[test]
fn a_bad_file_is_named_with_its_line_and_the_others_are_still_scored() {
    let input = tempfile::tempdir().expect("input");
    let output = tempfile::tempdir().expect("output");
    write_series(&input.path().join("good.csv"), 300, None);
    std::fs::write(
        input.path().join("bad.csv"),
        "timestamp,value\n2024-01-01 00:00:00,1\n2024-01-01 00:05:00,abc\n",
    )
    .expect("write");
    let run = replay(input.path(), output.path());
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("bad.csv:3: unreadable value \"abc\""),
        "{stderr}"
    );
    assert!(output.path().join("good.csv").exists());
    assert!(
        !output.path().join("bad.csv").exists(),
        "no partial output for a failed file"
    );
    assert!(std::fs::read_dir(output.path()).expect("dir").all(|e| {
        !e.expect("entry")
            .path()
            .to_string_lossy()
            .ends_with(".partial")
    }));

    let missing = replay(Path::new("/nonexistent/dir"), output.path());
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/dir"));
}

/// What a spreadsheet exports: quoted fields, CRLF, the columns in another order
/// among others, epoch seconds; and a header with names of the user's own.
#[test]
fn replays_spreadsheet_csv_and_reports_the_interval() {
    let input = tempfile::tempdir().expect("input");
    let output = tempfile::tempdir().expect("output");
    let mut text = String::from("\"host\",\"Value\",\"Time\"\r\n");
    let mut named = String::from("crashes,when\n");
    for i in 0..200u64 {
        let t = 1_700_000_000 + i * 3600;
        text.push_str(&format!("\"web-1\",\"{}.5\",\"{t}\"\r\n", i % 7));
        named.push_str(&format!("{},{t}\n", i % 3));
    }
    std::fs::write(input.path().join("sheet.csv"), text).expect("write");
    let run = replay_with(input.path(), output.path(), &["--verbose"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("sheet.csv: rows=200 every=1h"), "{stdout}");
    let (header, rows) = read_scores(&output.path().join("sheet.csv"));
    assert_eq!(header, "timestamp,value,anomaly_score");
    assert_eq!(rows.len(), 200);
    assert_eq!(rows[0][..2], ["1700000000".to_string(), "0.5".to_string()]);

    let own = tempfile::tempdir().expect("input");
    std::fs::write(own.path().join("named.csv"), named).expect("write");
    let out = tempfile::tempdir().expect("output");
    let unnamed = replay(own.path(), out.path());
    assert!(!unnamed.status.success());
    let stderr = String::from_utf8_lossy(&unnamed.stderr);
    assert!(
        stderr.contains("named.csv:1: no timestamp column"),
        "{stderr}"
    );
    let run = replay_with(
        own.path(),
        out.path(),
        &["--timestamp-column", "when", "--value-column", "crashes"],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("files=1 rows=200"));
}
