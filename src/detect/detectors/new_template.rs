//! `kind = "new_template"`: a log template never seen before.

use serde::Deserialize;

use super::{Candidate, Detect, Eval, Scope};
use crate::detect::catalogue::SeriesKind;

/// A log template never seen before, once the miner has warmed up on the
/// service's logs, at `min_severity` or above.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTemplate {
    pub min_severity: String,
}

impl Detect for NewTemplate {
    fn problems(&self, series: SeriesKind) -> Vec<String> {
        if series == SeriesKind::LogTemplate {
            Vec::new()
        } else {
            vec!["kind `new_template` needs series = \"log_template\"".to_string()]
        }
    }

    fn evaluate(&self, eval: &Eval<'_>, _scope: &mut Scope<'_>) -> Option<Candidate> {
        let row = eval.row;
        if !(eval.logs_warm)(&row.service) {
            return None;
        }
        let id: u32 = row.attributes.strip_prefix("template=")?.parse().ok()?;
        let (_, _, severity) = eval
            .new_templates
            .iter()
            .find(|(s, i, _)| *i == id && *s == row.service)?;
        if severity_rank(severity) < severity_rank(&self.min_severity) {
            return None;
        }
        Some(Candidate {
            observed: eval.value,
            expected: 0.0,
            score: 1.0,
            onset: None,
            detail: format!("new {severity} log template: {}", row.tag),
            decisive: false,
        })
    }
}

fn severity_rank(severity: &str) -> u8 {
    match severity.to_ascii_uppercase().as_str() {
        "TRACE" => 1,
        "DEBUG" => 2,
        "INFO" => 3,
        "WARN" | "WARNING" => 4,
        "ERROR" => 5,
        "FATAL" | "CRITICAL" => 6,
        _ => 0,
    }
}
