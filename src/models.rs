//! Reading the declarative models users edit (`models/`: the failure-pattern
//! catalogue, the playbooks): a TOML file, or a directory of them.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// The documents `(file name, text)` at `path`: the file itself, or every
/// `*.toml` file of the directory in name order. `None` when the built-in copy
/// applies: an empty path, or `default` when it does not exist. The error is
/// one line naming what could not be read.
pub fn read_toml_documents(
    path: &Path,
    default: &str,
) -> Result<Option<Vec<(String, String)>>, String> {
    if path.as_os_str().is_empty() || (path == Path::new(default) && !path.exists()) {
        return Ok(None);
    }
    let files: Vec<PathBuf> = if path.is_dir() {
        let pattern = path.join("*.toml");
        let mut files: Vec<PathBuf> = glob::glob(&pattern.to_string_lossy())
            .map_err(|e| format!("cannot list the directory: {e}"))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            return Err("no .toml files in the directory".to_string());
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut documents = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        documents.push((file.display().to_string(), text));
    }
    Ok(Some(documents))
}

/// Parses each document as a `F`, gathers the items `items` takes from it, and
/// checks each item (`check`) and that no two share a name (`what` names them
/// in the message). Returns the items, every problem found, and the
/// documents' names joined.
pub fn parse_documents<F: DeserializeOwned, T>(
    documents: &[(String, String)],
    items: impl Fn(F) -> Vec<T>,
    name: impl Fn(&T) -> &str,
    check: impl Fn(&T) -> Vec<String>,
    what: &str,
) -> (Vec<T>, Vec<String>, String) {
    let mut problems = Vec::new();
    let mut all: Vec<T> = Vec::new();
    for (file, text) in documents {
        match toml::from_str::<F>(text) {
            Ok(parsed) => all.extend(items(parsed)),
            Err(e) => problems.push(format!("{file}: {}", e.to_string().trim())),
        }
    }
    for (i, item) in all.iter().enumerate() {
        problems.extend(check(item));
        if all[..i].iter().any(|other| name(other) == name(item)) {
            problems.push(format!("{what} name `{}` is used twice", name(item)));
        }
    }
    let source = documents
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    (all, problems, source)
}
