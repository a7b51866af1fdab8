//! The executor's memory of the commands it saw: the last `executor.dedupe`
//! (source, id) keys, each with its final outcome once known, so that a
//! redelivered command is not carried out twice.
//!
//! With `executor.journal` set, the memory survives a restart. Every new
//! command is appended to the journal (JSON lines) and synced *before* it is
//! carried out, and its final outcome after; a restarted executor reads the
//! journal back. A command the journal shows started but never concluded (the
//! executor died while carrying it out) is not carried out again: a restart
//! or a rollback run twice is worse than one reported as lost, and the engine,
//! told `failed`, verifies and moves to the playbook's next step. If the journal
//! cannot be written (disk full, permissions), the command is refused rather
//! than carried out without a record. The file is rewritten with only the
//! remembered keys once it holds twice as many lines.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::remediate::command::Status;

/// (command source, command id).
pub type Key = (String, String);

/// What became of a command: `None` while it is being carried out.
pub type Known = Option<(Status, String)>;

/// The detail of a command found unfinished in the journal at start.
pub const INTERRUPTED: &str =
    "the executor stopped while carrying this command out; not carried out again";

/// A journal that cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[error("executor journal {path}: {source}")]
pub struct JournalError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    source: String,
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    detail: String,
}

/// The last commands seen, with their final outcome once known.
#[derive(Debug, Default)]
pub struct Seen {
    order: VecDeque<Key>,
    last: HashMap<Key, Known>,
    capacity: usize,
    journal: Option<(PathBuf, File)>,
    lines: usize,
}

impl Seen {
    /// Remembers up to `capacity` commands, in memory only.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            ..Self::default()
        }
    }

    /// Remembers up to `capacity` commands in the journal at `path`, reading
    /// back what it holds (created when absent).
    pub fn open(path: &Path, capacity: usize) -> Result<Self, JournalError> {
        let fail = |source| JournalError {
            path: path.to_path_buf(),
            source,
        };
        let mut seen = Self::new(capacity);
        match File::open(path) {
            Ok(file) => seen.read(BufReader::new(file)).map_err(fail)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e)),
        }
        for known in seen.last.values_mut() {
            known.get_or_insert((Status::Failed, INTERRUPTED.to_string()));
        }
        seen.rewrite(path).map_err(fail)?;
        Ok(seen)
    }

    fn read(&mut self, reader: impl BufRead) -> std::io::Result<()> {
        for (n, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let parsed: Line = serde_json::from_str(&line).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("line {}: {e}", n + 1),
                )
            })?;
            let key = (parsed.source, parsed.id);
            let known = parsed.status.map(|s| (s, parsed.detail));
            match self.last.get_mut(&key) {
                Some(slot) => {
                    if known.is_some() {
                        *slot = known;
                    }
                }
                None => self.remember(key, known),
            }
        }
        Ok(())
    }

    fn remember(&mut self, key: Key, known: Known) {
        self.last.insert(key.clone(), known);
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.last.remove(&old);
            }
        }
    }

    /// `Ok(None)` for a new command (now remembered, and journaled before it
    /// is carried out), else what became of it. An error means the command
    /// could not be recorded: it must not be carried out.
    pub fn check(&mut self, key: Key) -> Result<Option<Known>, JournalError> {
        if let Some(known) = self.last.get(&key) {
            return Ok(Some(known.clone()));
        }
        self.append(&key, None)?;
        self.remember(key, None);
        Ok(None)
    }

    /// Records the final outcome of a remembered command.
    pub fn conclude(
        &mut self,
        key: &Key,
        status: Status,
        detail: &str,
    ) -> Result<(), JournalError> {
        let Some(slot) = self.last.get_mut(key) else {
            return Ok(());
        };
        *slot = Some((status, detail.to_string()));
        self.append(key, Some((status, detail)))
    }

    fn append(&mut self, key: &Key, outcome: Option<(Status, &str)>) -> Result<(), JournalError> {
        let Some((path, file)) = &mut self.journal else {
            return Ok(());
        };
        let line = Line {
            source: key.0.clone(),
            id: key.1.clone(),
            status: outcome.map(|(s, _)| s),
            detail: outcome.map_or(String::new(), |(_, d)| d.to_string()),
        };
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        if let Err(source) = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_data())
        {
            return Err(JournalError {
                path: path.clone(),
                source,
            });
        }
        self.lines += 1;
        if self.lines > 2 * self.capacity {
            // Once per compaction: the path is borrowed from the journal it rewrites.
            let path = path.clone();
            self.rewrite(&path)
                .map_err(|source| JournalError { path, source })?;
        }
        Ok(())
    }

    /// Rewrites the journal with the remembered commands only (a new file
    /// renamed over the old, so a crash leaves one or the other whole).
    fn rewrite(&mut self, path: &Path) -> std::io::Result<()> {
        let fresh = path.with_extension("tmp");
        let mut out = std::io::BufWriter::new(File::create(&fresh)?);
        for key in &self.order {
            let known = self.last.get(key).cloned().flatten();
            let line = Line {
                source: key.0.clone(),
                id: key.1.clone(),
                status: known.as_ref().map(|(s, _)| *s),
                detail: known.map_or(String::new(), |(_, d)| d),
            };
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&fresh, path)?;
        let file = OpenOptions::new().append(true).open(path)?;
        self.journal = Some((path.to_path_buf(), file));
        self.lines = self.order.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> Key {
        ("engine".into(), id.into())
    }

    #[test]
    fn outcomes_survive_a_restart_and_an_unfinished_command_is_not_repeated() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("executor.jsonl");
        let mut seen = Seen::open(&path, 10).expect("open");
        assert!(seen.check(key("a")).expect("a").is_none());
        seen.conclude(&key("a"), Status::Succeeded, "restarted cart")
            .expect("conclude");
        assert!(seen.check(key("b")).expect("b").is_none());
        drop(seen);
        let mut seen = Seen::open(&path, 10).expect("reopen");
        assert_eq!(
            seen.check(key("a")).expect("a"),
            Some(Some((Status::Succeeded, "restarted cart".into())))
        );
        assert_eq!(
            seen.check(key("b")).expect("b"),
            Some(Some((Status::Failed, INTERRUPTED.into())))
        );
        assert!(seen.check(key("c")).expect("c").is_none());
    }

    #[test]
    fn the_journal_keeps_only_the_last_commands() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("executor.jsonl");
        let mut seen = Seen::open(&path, 3).expect("open");
        for n in 0..20 {
            let k = key(&n.to_string());
            assert!(seen.check(k.clone()).expect("check").is_none());
            seen.conclude(&k, Status::Succeeded, "").expect("conclude");
        }
        let lines = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .count();
        assert!(lines <= 2 * 3 + 1, "{lines} lines");
        let mut seen = Seen::open(&path, 3).expect("reopen");
        assert!(seen.check(key("19")).expect("19").is_some());
        assert!(seen.check(key("0")).expect("0").is_none(), "forgotten");
    }

    #[test]
    fn a_corrupt_journal_is_a_clear_error_at_start() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("executor.jsonl");
        std::fs::write(&path, "{\"source\":\"e\",\"id\":\"a\"}\nnot json\n").expect("write");
        let error = Seen::open(&path, 10).expect_err("corrupt");
        let text = error.to_string();
        assert!(
            text.contains("executor.jsonl") && text.contains("line 2"),
            "{text}"
        );
    }

    #[test]
    fn an_unwritable_journal_refuses_the_command() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("executor.jsonl");
        let mut seen = Seen::open(&path, 10).expect("open");
        // The journal's file handle now writes to a full device.
        seen.journal = Some((
            path.clone(),
            OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .expect("/dev/full"),
        ));
        assert!(seen.check(key("a")).is_err());
        assert!(
            seen.check(key("a")).is_err(),
            "not remembered, so not taken for done"
        );
    }
}
