//! The failure-pattern catalogue: which series each pattern watches, which
//! detector it runs, and its hysteresis. Declared in TOML under `models/` and
//! loaded at start, so patterns are added or tuned without recompiling.
//!
//! ```toml
//! [[pattern]]
//! name = "service_error_rate"      # unique
//! class = "error_spike"            # the failure class it reports
//! series = "service"               # service | operation | edge | metric | log | log_template
//! measure = "error_rate"           # the column of that series' table (metric: auto = by type)
//! consecutive = 2                  # hysteresis: windows in a row before it fires
//! cooldown = 30                    # debounce: quiet windows after an episode ends
//! [pattern.detector]
//! kind = "deviation"               # deviation | limit | growth | stall | new_template | univariate
//! direction = "up"
//! min_score = 0.9999
//! ```
//!
//! The detector kinds and their fields are [`Detector`]'s variants.

use std::path::Path;

use serde::Deserialize;

use super::anomaly::FailureClass;
use super::detectors::Detect;
pub use super::detectors::deviation::Deviation;
pub use super::detectors::growth::Growth;
pub use super::detectors::limit::Limit;
pub use super::detectors::new_template::NewTemplate;
pub use super::detectors::stall::Stall;
pub use super::detectors::univariate::UnivariateRule;

/// The catalogue shipped in the binary (`models/catalogue.toml` at build time).
pub const BUILT_IN: &str = include_str!("../../models/catalogue.toml");

/// The default `detect.catalogue`; when it does not exist the built-in copy is used.
pub const DEFAULT_PATH: &str = "models";

/// Which window table a pattern reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesKind {
    /// `service_stats`: one series per service and measure.
    Service,
    /// `operation_stats`: per service, operation and measure.
    Operation,
    /// `edge_stats`: per caller, callee and measure.
    Edge,
    /// `metric_stats`: per metric series.
    Metric,
    /// `log_stats`: per service and severity.
    Log,
    /// Mined log templates: per service and template.
    LogTemplate,
}

impl SeriesKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SeriesKind::Service => "service",
            SeriesKind::Operation => "operation",
            SeriesKind::Edge => "edge",
            SeriesKind::Metric => "metric",
            SeriesKind::Log => "log",
            SeriesKind::LogTemplate => "log_template",
        }
    }

    /// The measures a pattern on this series may name.
    pub fn measures(self) -> &'static [&'static str] {
        match self {
            SeriesKind::Service | SeriesKind::Operation => &[
                "requests",
                "errors",
                "error_rate",
                "p50_ms",
                "p95_ms",
                "p99_ms",
                "mean_ms",
                "max_ms",
            ],
            SeriesKind::Edge => &[
                "calls",
                "errors",
                "error_rate",
                "p50_ms",
                "p99_ms",
                "mean_ms",
                super::rows::CALLS_PER_REQUEST,
                crate::window::tables::LAST_CALLS,
                super::rows::LAST_CALL_SHARE,
            ],
            SeriesKind::Metric => &[
                "auto",
                "count",
                "last",
                "mean",
                "min",
                "max",
                "delta",
                "rate",
                "hist_count",
                "hist_sum",
                "hist_p99",
            ],
            SeriesKind::Log | SeriesKind::LogTemplate => &["count"],
        }
    }
}

/// Up, down or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Up,
    Down,
    Both,
}

/// A detector and its parameters (each documented in its file under
/// `detect/detectors/`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Detector {
    Deviation(Deviation),
    Limit(Limit),
    Growth(Growth),
    Stall(Stall),
    NewTemplate(NewTemplate),
    Univariate(UnivariateRule),
}

impl Detector {
    /// The detector behind the common interface.
    pub(crate) fn rule(&self) -> &dyn Detect {
        match self {
            Detector::Deviation(d) => d,
            Detector::Limit(d) => d,
            Detector::Growth(d) => d,
            Detector::Stall(d) => d,
            Detector::NewTemplate(d) => d,
            Detector::Univariate(d) => d,
        }
    }
}

/// One pattern of the catalogue.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pattern {
    /// Unique name.
    pub name: String,
    /// Failure class reported.
    pub class: FailureClass,
    /// The series it watches.
    pub series: SeriesKind,
    /// The measure (see [`SeriesKind::measures`]).
    #[serde(default = "default_measure")]
    pub measure: String,
    /// Metric series only: metric-name globs (`*` any run, `?` one character);
    /// empty matches every metric.
    #[serde(default)]
    pub metrics: Vec<String>,
    /// Metric series only: names matching these globs are skipped.
    #[serde(default)]
    pub exclude_metrics: Vec<String>,
    /// Edge series only: callee kinds (`service`, `database`, `messaging`,
    /// `external`, ...); empty matches all.
    #[serde(default)]
    pub callee_kinds: Vec<String>,
    /// Log series only: severities; empty matches all.
    #[serde(default)]
    pub severities: Vec<String>,
    /// Applies only to series that no non-fallback pattern of the same series
    /// kind watches (the generic detector).
    #[serde(default)]
    pub fallback: bool,
    /// Windows in a row the condition must hold before the pattern fires.
    #[serde(default = "one")]
    pub consecutive: u32,
    /// Windows after an episode ends before the same series can fire again.
    #[serde(default)]
    pub cooldown: u32,
    /// The detector.
    pub detector: Detector,
}

fn default_measure() -> String {
    "auto".to_string()
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, rename = "pattern")]
    patterns: Vec<Pattern>,
}

/// The loaded catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalogue {
    pub patterns: Vec<Pattern>,
    /// Where it came from (for logs).
    pub source: String,
}

/// A catalogue that could not be loaded; lists every problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid failure-pattern catalogue ({source_name}):\n  - {}", problems.join("\n  - "))]
pub struct CatalogueError {
    pub source_name: String,
    pub problems: Vec<String>,
}

impl Catalogue {
    /// The built-in catalogue.
    pub fn built_in() -> Result<Self, CatalogueError> {
        Self::from_documents(&[(
            "built-in models/catalogue.toml".to_string(),
            BUILT_IN.to_string(),
        )])
    }

    /// Loads `path`: a TOML file, or a directory whose `*.toml` files are read in
    /// name order. An empty path, or the default path when it does not exist, gives
    /// the built-in catalogue.
    pub fn load(path: &Path) -> Result<Self, CatalogueError> {
        let documents =
            crate::models::read_toml_documents(path, DEFAULT_PATH).map_err(|problem| {
                CatalogueError {
                    source_name: path.display().to_string(),
                    problems: vec![problem],
                }
            })?;
        let Some(documents) = documents else {
            return Self::built_in();
        };
        let mut loaded = Self::from_documents(&documents)?;
        loaded.source = path.display().to_string();
        Ok(loaded)
    }

    /// Parses and validates TOML documents `(name, text)`, reporting every problem.
    pub fn from_documents(documents: &[(String, String)]) -> Result<Self, CatalogueError> {
        let (patterns, problems, source_name) = crate::models::parse_documents(
            documents,
            |file: File| file.patterns,
            |p: &Pattern| p.name.as_str(),
            validate,
            "pattern",
        );
        if problems.is_empty() {
            Ok(Catalogue {
                patterns,
                source: source_name,
            })
        } else {
            Err(CatalogueError {
                source_name,
                problems,
            })
        }
    }
}

fn validate(p: &Pattern) -> Vec<String> {
    let mut out = Vec::new();
    let at = |m: &str| format!("pattern `{}`: {m}", p.name);
    if p.name.trim().is_empty() {
        out.push("a pattern has an empty name".to_string());
    }
    let known = p.series.measures().contains(&p.measure.as_str());
    if !known && p.measure != "auto" {
        out.push(at(&format!(
            "measure `{}` is not one of {} for series `{}`",
            p.measure,
            p.series.measures().join(", "),
            p.series.as_str()
        )));
    }
    if p.measure == "auto"
        && !matches!(
            p.series,
            SeriesKind::Metric | SeriesKind::Log | SeriesKind::LogTemplate
        )
    {
        out.push(at(&format!(
            "series `{}` needs an explicit measure",
            p.series.as_str()
        )));
    }
    if p.consecutive == 0 {
        out.push(at("consecutive must be at least 1"));
    }
    for problem in p.detector.rule().problems(p.series) {
        out.push(at(&problem));
    }
    out
}

/// `*` matches any run of characters, `?` any one byte; case-sensitive.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_catalogue_loads_and_covers_every_class() {
        let catalogue = Catalogue::built_in().expect("built-in catalogue");
        for class in [
            FailureClass::ErrorSpike,
            FailureClass::LatencyDegradation,
            FailureClass::Saturation,
            FailureClass::MemoryLeak,
            FailureClass::DependencyFailure,
            FailureClass::TrafficAnomaly,
            FailureClass::QueueBacklog,
            FailureClass::Deadlock,
            FailureClass::LogPattern,
            FailureClass::Generic,
        ] {
            assert!(
                catalogue.patterns.iter().any(|p| p.class == class),
                "no pattern for {class}"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
[[pattern]]
name = "a"
class = "error_spike"
series = "service"
measure = "nonsense"
consecutive = 0
[pattern.detector]
kind = "deviation"
direction = "up"
min_score = 2.0

[[pattern]]
name = "a"
class = "memory_leak"
series = "service"
measure = "requests"
[pattern.detector]
kind = "limit"
threshold = 0.9
forecast_from = 0.5
horizon = "10m"
trend_windows = 1
"#;
        let error =
            Catalogue::from_documents(&[("t.toml".into(), text.into())]).expect_err("invalid");
        let all = error.problems.join("\n");
        for needle in [
            "measure `nonsense`",
            "consecutive",
            "min_score",
            "used twice",
            "trend_windows",
            "series = \"metric\"",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in\n{all}");
        }
        let unknown = "[[pattern]]\nname = \"x\"\nclass = \"error_spike\"\nseries = \"service\"\nmeasure = \"requests\"\ncolour = 1\n[pattern.detector]\nkind = \"univariate\"\n";
        let error = Catalogue::from_documents(&[("u.toml".into(), unknown.into())])
            .expect_err("unknown field");
        assert!(error.problems.join("\n").contains("colour"), "{error}");
        // Inside a detector too (each detector's own struct refuses unknown keys).
        let unknown = "[[pattern]]\nname = \"x\"\nclass = \"memory_leak\"\nseries = \"metric\"\n[pattern.detector]\nkind = \"growth\"\nwindows = 3\nmin_z = 8.0\nmin_growth = 0.03\nslow_horizn = \"1h\"\n";
        let error = Catalogue::from_documents(&[("g.toml".into(), unknown.into())])
            .expect_err("unknown detector field");
        assert!(error.problems.join("\n").contains("slow_horizn"), "{error}");
    }

    #[test]
    fn a_directory_of_files_is_one_catalogue() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("b.toml"), BUILT_IN).expect("write");
        std::fs::write(
            dir.path().join("a.toml"),
            "[[pattern]]\nname = \"custom\"\nclass = \"generic\"\nseries = \"metric\"\nmetrics = [\"shop.*\"]\n[pattern.detector]\nkind = \"univariate\"\n",
        )
        .expect("write");
        let catalogue = Catalogue::load(dir.path()).expect("load");
        assert_eq!(catalogue.patterns[0].name, "custom");
        assert!(catalogue.patterns.len() > 5);
        assert!(Catalogue::load(Path::new("/nonexistent/models.toml")).is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match("*memory*", "process.memory.usage"));
        assert!(glob_match("jvm.*.used", "jvm.memory.used"));
        assert!(!glob_match("jvm.*.used", "jvm.memory.limit"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a", ""));
    }
}
