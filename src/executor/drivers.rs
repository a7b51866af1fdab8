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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::HeaderMap;
    use axum::routing::post;

    use super::*;
    use crate::remediate::playbook::Action;

    #[tokio::test]
    async fn the_webhook_posts_the_structured_cloudevent_and_reads_the_status() {
        let seen: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
        let recorder = seen.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: String| {
                let recorder = recorder.clone();
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    recorder.lock().expect("lock").push((
                        h("content-type"),
                        h("traceparent"),
                        body,
                    ));
                    axum::http::StatusCode::ACCEPTED
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut config = crate::config::Config::from_toml_str("")
            .expect("defaults")
            .executor;
        config.webhook_url = format!("http://{addr}/hook");
        let command = crate::remediate::command::tests::sample(Action::Restart);
        let client = reqwest::Client::new();
        let done = webhook(&client, &config, &command).await;
        assert_eq!(
            done,
            Done::Succeeded("webhook answered 202 Accepted".into())
        );
        let (ctype, traceparent, body) = seen.lock().expect("lock").remove(0);
        assert_eq!(ctype, CONTENT_TYPE);
        assert_eq!(traceparent, command.traceparent);
        let back = crate::remediate::command::parse_command(body.as_bytes()).expect("a command");
        assert_eq!(back, command);
        config.webhook_url = format!("http://{addr}/missing");
        let Done::Failed(why) = webhook(&client, &config, &command).await else {
            panic!("a 404 fails")
        };
        assert!(why.contains("404"), "{why}");
    }

    #[test]
    fn words_are_templated_one_by_one() {
        let mut command = crate::remediate::command::tests::sample(Action::Scale);
        command
            .data
            .params
            .insert("by".into(), "2; rm -rf /".into());
        assert_eq!(render_word("{{service}}@{{version}}", &command), "cart@2.1");
        // A value with spaces stays one argument: no word splitting, no shell.
        assert_eq!(
            render_word("--by={{params.by}}", &command),
            "--by=2; rm -rf /"
        );
    }
}
