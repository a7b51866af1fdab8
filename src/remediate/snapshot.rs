//! What remediation keeps across a restart (`store.path/remediation.json`):
//! the cases (so a step in flight is neither forgotten nor repeated under
//! another id), what was learned, the governor's state, incidents a human
//! stopped, and the services' versions. Written after every window that
//! changed something (before its commands are published), after each outcome
//! and control request, and at stop; a damaged file stops the start with an
//! error naming it. A case whose playbook or steps no longer exist (the
//! playbooks were edited) is dropped with a warning.
//!
//! It is the outbox: a command the file records as sent but unconfirmed (no
//! final outcome yet) is sent again, under the same id, when the engine starts;
//! a crash before the file recorded it re-decides the same step, which gets
//! the same id. Either way the executor, deduping by id, acts once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::RemediateStage;
use super::case::Case;
use super::governor::Saved;
use super::learn::Learning;
use crate::persist::{self, StateFileError};

/// Format version of `remediation.json`.
const VERSION: u32 = 1;

/// The persisted state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    now_ms: i64,
    /// Each case with the name of its playbook.
    cases: Vec<(String, Case)>,
    learning: Learning,
    governor: Saved,
    stopped: Vec<u64>,
    versions: BTreeMap<String, (String, String)>,
    #[serde(default)]
    instances: BTreeMap<String, crate::window::inventory::Instances>,
}

impl RemediateStage {
    /// Keeps the state in `path` across restarts, loading what it holds.
    pub fn stored_at(mut self, path: &Path) -> Result<Self, StateFileError> {
        if let Some(snapshot) = persist::load::<Snapshot>(path, VERSION)? {
            self.restore(snapshot);
            info!(cases = self.cases.len(), path = %path.display(), "restored remediation");
        }
        self.state_path = Some(path.to_path_buf());
        Ok(self)
    }

    fn restore(&mut self, s: Snapshot) {
        self.now_ms = s.now_ms;
        self.learning = s.learning;
        self.governor.restore(s.governor);
        self.stopped = s.stopped.into_iter().collect();
        self.versions = s.versions;
        self.instances = s.instances;
        let playbooks = &self.playbooks.playbooks;
        for (name, mut case) in s.cases {
            let Some(index) = playbooks.iter().position(|p| p.name == name) else {
                warn!(incident = case.incident, playbook = %name, "playbook gone; remediation dropped");
                continue;
            };
            let steps = playbooks[index].actions.len();
            let fits = case.order.iter().all(|&i| i < steps)
                && case.current.as_ref().is_none_or(|a| a.step < steps);
            if !fits {
                warn!(incident = case.incident, playbook = %name, "playbook changed; remediation dropped");
                continue;
            }
            case.playbook = index;
            if case.state == super::case::State::Mitigating
                && let Some(a) = case.current.as_ref().filter(|a| a.sent)
            {
                self.unconfirmed.push(a.command.clone());
            }
            self.cases.insert(case.incident, case);
        }
    }

    /// Writes the state if a path is set.
    pub(super) fn persist(&self) {
        let Some(path) = &self.state_path else {
            return;
        };
        let snapshot = Snapshot {
            now_ms: self.now_ms,
            cases: self
                .cases
                .values()
                .map(|c| (self.playbooks.playbooks[c.playbook].name.clone(), c.clone()))
                .collect(),
            learning: self.learning.clone(),
            governor: self.governor.save(),
            stopped: self.stopped.iter().copied().collect(),
            versions: self.versions.clone(),
            instances: self.instances.clone(),
        };
        persist::save(path, VERSION, &snapshot);
    }
}

/// `remediation.json` under `store_path`.
pub fn path(store_path: &Path) -> PathBuf {
    store_path.join("remediation.json")
}
