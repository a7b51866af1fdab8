//! The executor's drivers: `exec` (a command line per action) and `webhook`
//! (an HTTP POST of the structured CloudEvent); `kubernetes` is in
//! [`super::kubernetes`].

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command as Process;

use super::config::ExecutorConfig;
use crate::remediate::command::{CONTENT_TYPE, Command};

/// What a driver made of a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Done {
    Succeeded(String),
    Failed(String),
    /// The driver does not handle this action.
    NotMine,
}

/// Fills the executor's placeholders of one word.
pub fn render_word(word: &str, command: &Command) -> String {
    let d = &command.data;
    let mut out = word.to_string();
    for (name, value) in [
        ("service", d.target.service.as_str()),
        ("namespace", d.target.namespace.as_str()),
        ("environment", d.target.environment.as_str()),
        ("version", d.target.version.as_str()),
        ("previous_version", d.target.previous_version.as_str()),
        ("action", d.action.as_str()),
        ("id", command.id.as_str()),
    ] {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    out = out.replace("{{incident}}", &d.incident.to_string());
    for (key, value) in &d.params {
        out = out.replace(&format!("{{{{params.{key}}}}}"), value);
    }
    out
}

/// Runs the action's command line, if one is configured.
pub async fn exec(config: &ExecutorConfig, command: &Command) -> Done {
    let Some(line) = config.exec.get(command.data.action.as_str()) else {
        return Done::NotMine;
    };
    let argv: Vec<String> = line
        .split_whitespace()
        .map(|w| render_word(w, command))
        .collect();
    let Some((program, args)) = argv.split_first() else {
        return Done::NotMine;
    };
    let child = Process::new(program)
        .args(args)
        .env("HOMEOSTAT_COMMAND_ID", &command.id)
        .env("HOMEOSTAT_DRY_RUN", command.data.dry_run.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(error) => return Done::Failed(format!("cannot run {program}: {error}")),
    };
    match tokio::time::timeout(config.timeout, child.wait_with_output()).await {
        Err(_) => Done::Failed(format!(
            "{program} did not finish within {}",
            humantime::format_duration(config.timeout)
        )),
        Ok(Err(error)) => Done::Failed(format!("{program}: {error}")),
        Ok(Ok(output)) => {
            let tail = |bytes: &[u8]| {
                let text = String::from_utf8_lossy(bytes);
                let text = text.trim();
                let start = text.len().saturating_sub(300);
                let start = (start..=text.len())
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(text.len());
                text[start..].to_string()
            };
            if output.status.success() {
                Done::Succeeded(format!("{program} exited 0: {}", tail(&output.stdout)))
            } else {
                Done::Failed(format!(
                    "{program} exited {}: {}",
                    output.status,
                    tail(&output.stderr)
                ))
            }
        }
    }
}

/// POSTs the command as a structured CloudEvent; 2xx is success.
pub async fn webhook(client: &reqwest::Client, config: &ExecutorConfig, command: &Command) -> Done {
    if config.webhook_url.is_empty() {
        return Done::NotMine;
    }
    let body = match serde_json::to_vec(command) {
        Ok(body) => body,
        Err(error) => return Done::Failed(format!("cannot encode the command: {error}")),
    };
    let response = client
        .post(&config.webhook_url)
        .header("content-type", CONTENT_TYPE)
        .header("traceparent", &command.traceparent)
        .timeout(config.timeout.max(Duration::from_millis(1)))
        .body(body)
        .send()
        .await;
    match response {
        Ok(r) if r.status().is_success() => {
            Done::Succeeded(format!("webhook answered {}", r.status()))
        }
        Ok(r) => Done::Failed(format!("webhook answered {}", r.status())),
        Err(error) => Done::Failed(format!("webhook: {error}")),
    }
}
