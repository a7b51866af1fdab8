//! Playbooks: which actions answer which failure, declared in TOML under
//! `models/playbooks/` (see `models/playbooks/default.toml` for the format).
//!
//! A playbook names a failure class (or `*`), optional globs on the root cause's
//! service, namespace and environment, and ordered actions with string
//! parameters. Parameters are templates: `{{service}}` and the other names of
//! [`VARIABLES`] are filled from the incident when a command is made; a name
//! outside that list is refused when the playbooks load, so a typo cannot reach
//! an executor. Every problem in every file is reported at once.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::detect::FailureClass;

/// The playbooks shipped in the binary (`models/playbooks/default.toml`).
pub const BUILT_IN: &str = include_str!("../../models/playbooks/default.toml");

/// The default `remediation.playbooks`; when it does not exist the built-in
/// copy is used.
pub const DEFAULT_PATH: &str = "models/playbooks";

/// Names a parameter template may use.
pub const VARIABLES: [&str; 9] = [
    "service",
    "namespace",
    "environment",
    "class",
    "incident",
    "score",
    "version",
    "previous_version",
    "callers",
];

/// What an executor is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Restart,
    Rollback,
    Scale,
    Reroute,
    ClearCache,
    ReplayJobs,
    Notify,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 7] = [
        Action::Restart,
        Action::Rollback,
        Action::Scale,
        Action::Reroute,
        Action::ClearCache,
        Action::ReplayJobs,
        Action::Notify,
    ];

    /// The snake_case name (CloudEvents type suffix, SQL, config).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Restart => "restart",
            Action::Rollback => "rollback",
            Action::Scale => "scale",
            Action::Reroute => "reroute",
            Action::ClearCache => "clear_cache",
            Action::ReplayJobs => "replay_jobs",
            Action::Notify => "notify",
        }
    }

    /// The action named `name`.
    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Whether it changes the system (everything but `notify`).
    pub fn acts(self) -> bool {
        self != Action::Notify
    }
}

/// Globs on the root cause's identity; an absent one matches anything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matchers {
    pub service: Option<String>,
    pub namespace: Option<String>,
    pub environment: Option<String>,
}

/// One step of a playbook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub action: Action,
    /// Templated string parameters.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Always wait for a human's approval.
    #[serde(default)]
    pub approval: bool,
}

/// One playbook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    pub name: String,
    /// A failure class's snake_case name, or `*` for any.
    pub class: String,
    #[serde(default, rename = "match")]
    pub matchers: Matchers,
    pub actions: Vec<Step>,
}

/// What a playbook is matched against and templated from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Context {
    pub service: String,
    pub namespace: String,
    pub environment: String,
    pub class: String,
    pub incident: u64,
    pub score: f64,
    pub version: String,
    pub previous_version: String,
    /// The services that call the root cause, comma-separated.
    pub callers: String,
}

impl Context {
    /// The root cause's node identity ([`crate::incident::node`]).
    pub fn node(&self) -> String {
        crate::incident::node::id(&self.namespace, &self.service, &self.environment)
    }

    fn value(&self, name: &str) -> String {
        match name {
            "service" => self.service.clone(),
            "namespace" => self.namespace.clone(),
            "environment" => self.environment.clone(),
            "class" => self.class.clone(),
            "incident" => self.incident.to_string(),
            "score" => format!("{:.2}", self.score),
            "version" => self.version.clone(),
            "previous_version" => self.previous_version.clone(),
            "callers" => self.callers.clone(),
            _ => String::new(),
        }
    }
}

/// Fills `{{name}}` placeholders of `template` from `context`.
pub fn render(template: &str, context: &Context) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        match after.find("}}") {
            Some(close) => {
                out.push_str(&context.value(after[..close].trim()));
                rest = &after[close + 2..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The `{{name}}`s of `template` that are not in [`VARIABLES`], and whether a
/// `{{` is left unclosed.
fn unknown_variables(template: &str) -> (Vec<String>, bool) {
    let mut unknown = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return (unknown, true);
        };
        let name = after[..close].trim();
        if !VARIABLES.contains(&name) {
            unknown.push(name.to_string());
        }
        rest = &after[close + 2..];
    }
    (unknown, false)
}

fn glob_matches(pattern: &Option<String>, value: &str) -> bool {
    pattern.as_ref().is_none_or(|p| {
        glob::Pattern::new(p)
            .map(|p| p.matches(value))
            .unwrap_or(false)
    })
}

impl Playbook {
    /// Whether it answers `context`'s class and identity.
    pub fn fits(&self, context: &Context) -> bool {
        (self.class == "*" || self.class == context.class)
            && glob_matches(&self.matchers.service, &context.service)
            && glob_matches(&self.matchers.namespace, &context.namespace)
            && glob_matches(&self.matchers.environment, &context.environment)
    }

    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let at = |m: String| format!("playbook `{}`: {m}", self.name);
        if self.name.trim().is_empty() {
            out.push("a playbook has an empty name".to_string());
        }
        let known_class = self.class == "*"
            || serde_json::from_value::<FailureClass>(serde_json::Value::String(
                self.class.clone(),
            ))
            .is_ok();
        if !known_class {
            out.push(at(format!("unknown class `{}`", self.class)));
        }
        for (key, glob) in [
            ("service", &self.matchers.service),
            ("namespace", &self.matchers.namespace),
            ("environment", &self.matchers.environment),
        ] {
            if let Some(g) = glob
                && let Err(e) = glob::Pattern::new(g)
            {
                out.push(at(format!("match.{key} `{g}` is not a glob: {e}")));
            }
        }
        if self.actions.is_empty() {
            out.push(at("has no actions".to_string()));
        }
        for (i, step) in self.actions.iter().enumerate() {
            for (key, template) in &step.params {
                let (unknown, unclosed) = unknown_variables(template);
                for name in unknown {
                    out.push(at(format!(
                        "action {} ({}) parameter `{key}` uses unknown `{{{{{name}}}}}` (known: {})",
                        i + 1,
                        step.action.as_str(),
                        VARIABLES.join(", ")
                    )));
                }
                if unclosed {
                    out.push(at(format!(
                        "action {} parameter `{key}` has an unclosed `{{{{`",
                        i + 1
                    )));
                }
            }
            if step.action == Action::Scale {
                out.extend(scale_problems(&step.params).into_iter().map(&at));
            }
        }
        out
    }
}

/// `scale` needs `direction` (`out` or `in`) and `by` (a count, or a share like `50%`).
fn scale_problems(params: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    match params.get("direction").map(String::as_str) {
        Some("out" | "in") => {}
        other => out.push(format!(
            "scale needs direction = \"out\" or \"in\", not {other:?}"
        )),
    }
    let by = params.get("by").map(String::as_str).unwrap_or("");
    let number = by.strip_suffix('%').unwrap_or(by);
    if number.parse::<u32>().map_or(true, |n| n == 0) {
        out.push(format!(
            "scale needs by = a positive count or percentage, not {by:?}"
        ));
    }
    out
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    playbook: Vec<Playbook>,
}

/// Playbooks that could not be loaded; lists every problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid playbooks ({source_name}):\n  - {}", problems.join("\n  - "))]
pub struct PlaybookError {
    pub source_name: String,
    pub problems: Vec<String>,
}

/// The loaded playbooks, in file order.
#[derive(Debug, Clone)]
pub struct Playbooks {
    pub playbooks: Vec<Playbook>,
    /// Where they came from.
    pub source: String,
}

impl Playbooks {
    /// The built-in playbooks.
    pub fn built_in() -> Result<Self, PlaybookError> {
        let mut p = Self::from_documents(&[("built-in".to_string(), BUILT_IN.to_string())])?;
        p.source = "built-in models/playbooks/default.toml".to_string();
        Ok(p)
    }

    /// Loads `path`: a TOML file, or a directory whose `*.toml` files are read in
    /// name order. An empty path, or the default path when it does not exist,
    /// gives the built-in playbooks.
    pub fn load(path: &Path) -> Result<Self, PlaybookError> {
        let documents =
            crate::models::read_toml_documents(path, DEFAULT_PATH).map_err(|problem| {
                PlaybookError {
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
    pub fn from_documents(documents: &[(String, String)]) -> Result<Self, PlaybookError> {
        let (playbooks, problems, source) = crate::models::parse_documents(
            documents,
            |file: File| file.playbook,
            |p: &Playbook| p.name.as_str(),
            Playbook::problems,
            "playbook",
        );
        if problems.is_empty() {
            Ok(Playbooks { playbooks, source })
        } else {
            Err(PlaybookError {
                source_name: source,
                problems,
            })
        }
    }

    /// The first playbook that fits `context`.
    pub fn find(&self, context: &Context) -> Option<&Playbook> {
        self.playbooks.iter().find(|p| p.fits(context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(class: &str, service: &str) -> Context {
        Context {
            service: service.into(),
            namespace: "shop".into(),
            environment: "prod".into(),
            class: class.into(),
            incident: 7,
            score: 0.8123,
            version: "1.4".into(),
            previous_version: "1.3".into(),
            callers: "web,api".into(),
        }
    }

    #[test]
    fn the_built_in_playbooks_load_and_follow_the_classic_mapping() {
        let p = Playbooks::built_in().expect("built-in");
        let first = |class: &str| p.find(&context(class, "cart")).expect(class).actions[0].action;
        assert_eq!(first("memory_leak"), Action::Restart);
        assert_eq!(first("faulty_deployment"), Action::Rollback);
        assert_eq!(first("queue_backlog"), Action::Scale);
        assert_eq!(first("saturation"), Action::Scale);
        assert_eq!(first("dependency_failure"), Action::Reroute);
        assert_eq!(first("log_pattern"), Action::Notify, "the fallback");
    }

    #[test]
    fn templates_fill_from_the_incident() {
        let c = context("faulty_deployment", "cart");
        assert_eq!(
            render(
                "roll {{service}} back to {{ previous_version }} ({{score}}, #{{incident}})",
                &c
            ),
            "roll cart back to 1.3 (0.81, #7)"
        );
        assert_eq!(render("left {{open", &c), "left {{open");
    }

    #[test]
    fn matchers_are_globs_on_the_identity() {
        let doc = r#"
[[playbook]]
name = "prod-carts"
class = "memory_leak"
match = { service = "cart*", environment = "prod" }
[[playbook.actions]]
action = "restart"
"#;
        let p = Playbooks::from_documents(&[("t".into(), doc.into())]).expect("valid");
        assert!(p.find(&context("memory_leak", "cart-v2")).is_some());
        assert!(p.find(&context("memory_leak", "web")).is_none());
        let mut staging = context("memory_leak", "cart");
        staging.environment = "staging".into();
        assert!(p.find(&staging).is_none());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let doc = r#"
[[playbook]]
name = "x"
class = "meltdown"
match = { service = "[oops" }
[[playbook.actions]]
action = "scale"
params = { direction = "sideways", by = "0", note = "{{servce}}" }

[[playbook]]
name = "x"
class = "*"
actions = []
"#;
        let err = Playbooks::from_documents(&[("t".into(), doc.into())]).expect_err("invalid");
        let text = err.to_string();
        for needle in [
            "unknown class `meltdown`",
            "not a glob",
            "direction",
            "positive count",
            "unknown `{{servce}}`",
            "has no actions",
            "used twice",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        let unknown_action = "[[playbook]]\nname = \"y\"\nclass = \"*\"\n[[playbook.actions]]\naction = \"reboot\"\n";
        let err = Playbooks::from_documents(&[("u".into(), unknown_action.into())])
            .expect_err("unknown action");
        assert!(err.to_string().contains("reboot"), "{err}");
    }
}
