//! `homeostat replay`: the univariate detector over `timestamp,value` CSV files.
//!
//! Each row is one window value, scored in file order with only the rows before it
//! (the detector never looks ahead). For each input file the output holds a CSV
//! at the same relative path with `timestamp,value,anomaly_score`, one row per
//! input row. A file that cannot be read or parsed is reported with its line and
//! leaves no output; the other files are still scored.

use std::fs;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::univariate::{Univariate, UnivariateParams};

/// Why one file could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The I/O error is part of the message, not its `source()`: a chain
    /// printer (`{:#}`) would print it twice.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}: no .csv files found")]
    NoInput(PathBuf),
    #[error("{0}: the output would overwrite the input")]
    Overwrite(PathBuf),
}

/// Maps an I/O error on `path` to [`ReplayError::Io`].
fn io_error(path: &Path) -> impl Fn(std::io::Error) -> ReplayError + '_ {
    move |error| ReplayError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Header names of the timestamp and value columns, when they are not one of
/// the usual names (`timestamp`, `time`, `date`, ...; `value`, ...).
#[derive(Clone, Debug, Default)]
pub struct ColumnNames {
    pub timestamp: Option<String>,
    pub value: Option<String>,
}

/// What the replay of one file did.
#[derive(Debug, Default)]
pub struct FileSummary {
    pub rows: usize,
    pub alerts: usize,
    /// The sampling interval: the median step between rising timestamps.
    pub interval_secs: Option<i64>,
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplaySummary {
    /// Each scored file (relative path) and what its replay did.
    pub scored: Vec<(PathBuf, FileSummary)>,
    /// Files that failed, with the reason; nothing was written for them.
    pub failed: Vec<ReplayError>,
}

impl ReplaySummary {
    /// Files scored and written.
    pub fn files(&self) -> usize {
        self.scored.len()
    }

    /// Rows scored.
    pub fn rows(&self) -> usize {
        self.scored.iter().map(|(_, f)| f.rows).sum()
    }

    /// Rows whose score reached the alert threshold (`fire`).
    pub fn alerts(&self) -> usize {
        self.scored.iter().map(|(_, f)| f.alerts).sum()
    }
}

/// Scores every `.csv` under `input` (or the file `input`) into `output`.
/// Errs only when there is nothing to do; per-file failures are in the summary.
pub fn replay(
    input: &Path,
    output: &Path,
    params: &UnivariateParams,
    columns: &ColumnNames,
) -> Result<ReplaySummary, ReplayError> {
    let files = input_files(input)?;
    let mut summary = ReplaySummary::default();
    for (path, relative) in files {
        let target = output.join(&relative);
        match replay_file(&path, &target, params, columns) {
            Ok(file) => {
                summary.scored.push((relative, file));
            }
            Err(error) => summary.failed.push(error),
        }
    }
    Ok(summary)
}

/// The CSV files to replay and their paths relative to `input`, sorted.
fn input_files(input: &Path) -> Result<Vec<(PathBuf, PathBuf)>, ReplayError> {
    let meta = fs::metadata(input).map_err(io_error(input))?;
    if meta.is_file() {
        let name = input
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("input.csv"));
        return Ok(vec![(input.to_path_buf(), name)]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![input.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = fs::read_dir(&dir).map_err(io_error(&dir))?;
        for entry in entries {
            let entry = entry.map_err(io_error(&dir))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io_error(&path))?;
            if kind.is_dir() {
                dirs.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
                && let Ok(relative) = path.strip_prefix(input)
            {
                out.push((path.clone(), relative.to_path_buf()));
            }
        }
    }
    if out.is_empty() {
        return Err(ReplayError::NoInput(input.to_path_buf()));
    }
    out.sort();
    Ok(out)
}

/// Scores one file into `target` (written whole or not at all).
fn replay_file(
    path: &Path,
    target: &Path,
    params: &UnivariateParams,
    columns: &ColumnNames,
) -> Result<FileSummary, ReplayError> {
    if let (Ok(a), Ok(b)) = (fs::canonicalize(path), fs::canonicalize(target))
        && a == b
    {
        return Err(ReplayError::Overwrite(path.to_path_buf()));
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    let partial = target.with_extension("csv.partial");
    let result = (|| {
        let reader = BufReader::new(fs::File::open(path).map_err(io_error(path))?);
        let mut writer = BufWriter::new(fs::File::create(&partial).map_err(io_error(&partial))?);
        let counts = score_rows(path, reader, &mut writer, params, columns)?;
        writer.flush().map_err(io_error(&partial))?;
        drop(writer);
        fs::rename(&partial, target).map_err(io_error(target))?;
        Ok(counts)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

/// Names a header may give the timestamp and value columns (any case), in the
/// order they are preferred.
const TIMESTAMP_NAMES: &[&str] = &["timestamp", "time", "ts", "datetime", "date", "@timestamp"];
const VALUE_NAMES: &[&str] = &["value", "y", "val"];

/// Where the timestamp and value are in each record.
struct Columns {
    timestamp: usize,
    value: usize,
}

/// Reads spreadsheet CSV (quoted fields, CRLF, a header in any column order or
/// none) and scores each row in file order. Errors name the file and line.
fn score_rows(
    path: &Path,
    input: impl Read,
    out: impl Write,
    params: &UnivariateParams,
    columns: &ColumnNames,
) -> Result<FileSummary, ReplayError> {
    let parse_error = |line: u64, message: String| ReplayError::Parse {
        path: path.to_path_buf(),
        line: line as usize,
        message,
    };
    let write_error = |e: csv::Error| io_error(path)(std::io::Error::other(e));
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        // Lines end at '\n' (a '\r' before it is trimmed): with the default
        // CRLF terminator the reader counts a CRLF line only when it reads the
        // next record, so errors would name the line before.
        .terminator(csv::Terminator::Any(b'\n'))
        .from_reader(input);
    let mut writer = csv::Writer::from_writer(out);
    writer
        .write_record(["timestamp", "value", "anomaly_score"])
        .map_err(write_error)?;
    let mut detector = Univariate::new(params.clone());
    let mut found: Option<Columns> = None;
    let mut summary = FileSummary::default();
    let mut steps = Vec::new();
    let mut previous: Option<i64> = None;
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(parse_error(line, format!("cannot read: {e}"))),
        }
        if record.iter().all(str::is_empty) {
            continue;
        }
        let cols = match &found {
            Some(c) => c,
            None => {
                let (c, is_header) =
                    header_columns(&record, columns).map_err(|m| parse_error(line, m))?;
                let cols = found.insert(c);
                if is_header {
                    continue;
                }
                cols
            }
        };
        let (Some(ts), Some(value)) = (record.get(cols.timestamp), record.get(cols.value)) else {
            let need = cols.timestamp.max(cols.value) + 1;
            return Err(parse_error(
                line,
                format!("expected at least {need} fields"),
            ));
        };
        let secs = parse_timestamp(ts)
            .ok_or_else(|| parse_error(line, format!("unreadable timestamp {ts:?}")))?;
        let v: f64 = value
            .parse()
            .map_err(|_| parse_error(line, format!("unreadable value {value:?}")))?;
        if let Some(p) = previous.replace(secs)
            && secs > p
        {
            steps.push(secs - p);
        }
        let score = detector.observe(secs, v);
        summary.alerts += usize::from(score >= params.fire);
        summary.rows += 1;
        writer
            .write_record([ts, value, &score.to_string()])
            .map_err(write_error)?;
    }
    writer.flush().map_err(io_error(path))?;
    summary.interval_secs = median(&mut steps);
    Ok(summary)
}

/// The median of the steps between timestamps: the sampling interval.
fn median(steps: &mut [i64]) -> Option<i64> {
    if steps.is_empty() {
        return None;
    }
    let mid = steps.len() / 2;
    Some(*steps.select_nth_unstable(mid).1)
}

/// The columns of a file, from its first record. A record with no numeric
/// field is a header: the columns are found by name (`columns`, else the usual
/// names); otherwise the first two columns are timestamp and value.
fn header_columns(
    first: &csv::StringRecord,
    names: &ColumnNames,
) -> Result<(Columns, bool), String> {
    let is_header = !first.iter().any(|f| f.parse::<f64>().is_ok());
    if !is_header {
        if names.timestamp.is_some() || names.value.is_some() {
            return Err("no header row, so columns cannot be chosen by name".into());
        }
        return Ok((
            Columns {
                timestamp: 0,
                value: 1,
            },
            false,
        ));
    }
    let find = |chosen: &Option<String>, usual: &[&str], what: &str| {
        let wanted: Vec<&str> = match chosen {
            Some(name) => vec![name.as_str()],
            None => usual.to_vec(),
        };
        wanted
            .iter()
            .find_map(|w| first.iter().position(|f| f.eq_ignore_ascii_case(w)))
            .ok_or_else(|| {
                let header: Vec<&str> = first.iter().collect();
                format!("no {what} column among {header:?} (looked for {wanted:?})")
            })
    };
    let timestamp = find(&names.timestamp, TIMESTAMP_NAMES, "timestamp")?;
    let value = find(&names.value, VALUE_NAMES, "value")?;
    Ok((Columns { timestamp, value }, true))
}

/// Unix seconds from an RFC 3339 / ISO 8601 date-time (UTC when no offset is
/// given), or from a number of seconds, milliseconds or nanoseconds since the epoch.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let text = text.trim().trim_matches('"');
    if let Ok(number) = text.parse::<f64>() {
        if !number.is_finite() {
            return None;
        }
        let secs = match number.abs() {
            n if n >= 1e17 => number / 1e9,
            n if n >= 1e14 => number / 1e6,
            n if n >= 1e11 => number / 1e3,
            _ => number,
        };
        return Some(secs.floor() as i64);
    }
    let nanos = arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(text).ok()?;
    Some(nanos.div_euclid(1_000_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_the_common_forms() {
        assert_eq!(parse_timestamp("1970-01-02 00:00:00"), Some(86_400));
        assert_eq!(parse_timestamp("1970-01-02T00:00:01Z"), Some(86_401));
        assert_eq!(parse_timestamp("1970-01-02T01:00:00+01:00"), Some(86_400));
        assert_eq!(
            parse_timestamp("2014-04-01 00:00:00.000000"),
            Some(1_396_310_400)
        );
        assert_eq!(parse_timestamp("1396310400"), Some(1_396_310_400));
        assert_eq!(parse_timestamp("1396310400000"), Some(1_396_310_400));
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp("inf"), None);
    }

    fn record(fields: &[&str]) -> csv::StringRecord {
        csv::StringRecord::from(fields.to_vec())
    }

    #[test]
    fn header_by_name_or_positional() {
        let usual = ColumnNames::default();
        let (c, header) = header_columns(&record(&["host", "Value", "Time"]), &usual).expect("ok");
        assert!(header);
        assert_eq!((c.timestamp, c.value), (2, 1));
        let (c, header) =
            header_columns(&record(&["2014-04-01 00:00:00", "3.5"]), &usual).expect("ok");
        assert!(!header);
        assert_eq!((c.timestamp, c.value), (0, 1));
        let named = ColumnNames {
            timestamp: Some("when".into()),
            value: Some("crashes".into()),
        };
        let (c, _) = header_columns(&record(&["crashes", "when"]), &named).expect("ok");
        assert_eq!((c.timestamp, c.value), (1, 0));
        let missing = header_columns(&record(&["when", "crashes"]), &usual);
        assert!(missing.is_err_and(|m| m.contains("no timestamp column")));
    }

    #[test]
    fn spreadsheet_csv_is_read_and_the_interval_found() {
        let text = "\"Value\",\"Time\"\r\n\"1,5\",\"2024-01-01T00:00:00Z\"\r\n";
        let bad = score_rows(
            Path::new("x.csv"),
            text.as_bytes(),
            Vec::new(),
            &UnivariateParams::default(),
            &ColumnNames::default(),
        );
        // A quoted comma is one field; "1,5" is not a number, and the error says where.
        let message = bad.map(|s| s.rows).map_err(|e| e.to_string());
        assert_eq!(
            message,
            Err("x.csv:2: unreadable value \"1,5\"".to_string())
        );
        let mut text = String::from("\"Value\",\"Time\"\r\n");
        for i in 0..10 {
            text.push_str(&format!("\"{i}.5\",{}\r\n", 1_700_000_000 + i * 3600));
        }
        let mut out = Vec::new();
        let summary = score_rows(
            Path::new("x.csv"),
            text.as_bytes(),
            &mut out,
            &UnivariateParams::default(),
            &ColumnNames::default(),
        )
        .expect("scored");
        assert_eq!((summary.rows, summary.interval_secs), (10, Some(3600)));
        let out = String::from_utf8(out).expect("utf8");
        assert!(
            out.starts_with("timestamp,value,anomaly_score\n1700000000,0.5,0\n"),
            "{out}"
        );
    }
}
