//! `homeostat replay`: the univariate detector over `timestamp,value` CSV files.
//!
//! Each row is one window value, scored in file order with only the rows before it
//! (the detector never looks ahead). For each input file the output holds a CSV
//! at the same relative path with `timestamp,value,anomaly_score`, one row per
//! input row. A file that cannot be read or parsed is reported with its line and
//! leaves no output; the other files are still scored.

use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::univariate::{Univariate, UnivariateParams};

/// Why one file could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplaySummary {
    /// Files scored and written.
    pub files: usize,
    /// Rows scored.
    pub rows: usize,
    /// Rows whose score reached the alert threshold (`fire`).
    pub alerts: usize,
    /// Files that failed, with the reason; nothing was written for them.
    pub failed: Vec<ReplayError>,
}

/// Scores every `.csv` under `input` (or the file `input`) into `output`.
/// Errs only when there is nothing to do; per-file failures are in the summary.
pub fn replay(
    input: &Path,
    output: &Path,
    params: &UnivariateParams,
) -> Result<ReplaySummary, ReplayError> {
    let files = input_files(input)?;
    let mut summary = ReplaySummary::default();
    for (path, relative) in files {
        let target = output.join(&relative);
        match replay_file(&path, &target, params) {
            Ok((rows, alerts)) => {
                summary.files += 1;
                summary.rows += rows;
                summary.alerts += alerts;
            }
            Err(error) => summary.failed.push(error),
        }
    }
    Ok(summary)
}

/// The CSV files to replay and their paths relative to `input`, sorted.
fn input_files(input: &Path) -> Result<Vec<(PathBuf, PathBuf)>, ReplayError> {
    let io = |source| ReplayError::Io {
        path: input.to_path_buf(),
        source,
    };
    let meta = fs::metadata(input).map_err(io)?;
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
        let entries = fs::read_dir(&dir).map_err(|source| ReplayError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| ReplayError::Io {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|source| ReplayError::Io {
                path: path.clone(),
                source,
            })?;
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
) -> Result<(usize, usize), ReplayError> {
    if let (Ok(a), Ok(b)) = (fs::canonicalize(path), fs::canonicalize(target))
        && a == b
    {
        return Err(ReplayError::Overwrite(path.to_path_buf()));
    }
    let io_at = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ReplayError::Io { path: p, source }
    };
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io_at(parent))?;
    }
    let partial = target.with_extension("csv.partial");
    let result = (|| {
        let reader = BufReader::new(fs::File::open(path).map_err(io_at(path))?);
        let mut writer = BufWriter::new(fs::File::create(&partial).map_err(io_at(&partial))?);
        let counts = score_rows(path, reader, &mut writer, params)?;
        writer.flush().map_err(io_at(&partial))?;
        drop(writer);
        fs::rename(&partial, target).map_err(io_at(target))?;
        Ok(counts)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

/// Columns of the input: by header name when there is a header, else 0 and 1.
struct Columns {
    timestamp: usize,
    value: usize,
}

fn score_rows(
    path: &Path,
    reader: impl BufRead,
    out: &mut impl Write,
    params: &UnivariateParams,
) -> Result<(usize, usize), ReplayError> {
    let parse_error = |line: usize, message: String| ReplayError::Parse {
        path: path.to_path_buf(),
        line,
        message,
    };
    let write_error = |source| ReplayError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut detector = Univariate::new(params.clone());
    let mut columns: Option<Columns> = None;
    let (mut rows, mut alerts) = (0, 0);
    writeln!(out, "timestamp,value,anomaly_score").map_err(write_error)?;
    for (index, line) in reader.lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(|e| parse_error(number, format!("cannot read: {e}")))?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let cols = match &columns {
            Some(c) => c,
            None => {
                let (found, is_header) = header_columns(&fields);
                columns = Some(found);
                if is_header {
                    continue;
                }
                columns
                    .as_ref()
                    .ok_or_else(|| parse_error(number, "no columns".into()))?
            }
        };
        let (Some(ts), Some(value)) = (fields.get(cols.timestamp), fields.get(cols.value)) else {
            return Err(parse_error(
                number,
                format!(
                    "expected at least {} fields",
                    cols.timestamp.max(cols.value) + 1
                ),
            ));
        };
        let secs = parse_timestamp(ts)
            .ok_or_else(|| parse_error(number, format!("unreadable timestamp {ts:?}")))?;
        let v: f64 = value
            .parse()
            .map_err(|_| parse_error(number, format!("unreadable value {value:?}")))?;
        let score = detector.observe(secs, v);
        if score >= params.fire {
            alerts += 1;
        }
        rows += 1;
        writeln!(out, "{ts},{value},{score}").map_err(write_error)?;
    }
    Ok((rows, alerts))
}

/// Finds `timestamp` and `value` by name when the first row is a header (its
/// second field is not a number); otherwise the first two columns.
fn header_columns(fields: &[&str]) -> (Columns, bool) {
    let is_header = fields.get(1).is_none_or(|f| f.parse::<f64>().is_err());
    if !is_header {
        return (
            Columns {
                timestamp: 0,
                value: 1,
            },
            false,
        );
    }
    let find = |name: &str| {
        fields
            .iter()
            .position(|f| f.trim_matches('"').eq_ignore_ascii_case(name))
    };
    let timestamp = find("timestamp").unwrap_or(0);
    let value = find("value").unwrap_or(if timestamp == 1 { 0 } else { 1 });
    (Columns { timestamp, value }, true)
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

    #[test]
    fn header_by_name_or_positional() {
        let (c, header) = header_columns(&["value", "timestamp"]);
        assert!(header);
        assert_eq!((c.timestamp, c.value), (1, 0));
        let (c, header) = header_columns(&["2014-04-01 00:00:00", "3.5"]);
        assert!(!header);
        assert_eq!((c.timestamp, c.value), (0, 1));
    }
}
