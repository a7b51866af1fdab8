//! The `kubernetes` driver: rollout restart, scale and rollback of a Deployment
//! through the Kubernetes API, as `kubectl` does them.
//!
//! - restart: a strategic-merge PATCH of the pod template's
//!   `kubectl.kubernetes.io/restartedAt` annotation;
//! - scale: GET the `scale` subresource, then a merge PATCH of `spec.replicas`
//!   (`by` a count or a percentage, rounded up, `direction` out or in, never
//!   under one replica);
//! - rollback: the containers whose image is tagged with the running version
//!   get the previous version's tag (images tagged by `service.version`).
//!
//! The Deployment is `params.k8s_deployment`, else the target's
//! `k8s.deployment.name`, else the service; its namespace
//! `params.k8s_namespace`, else the target's `k8s.namespace.name`, else its
//! `service.namespace`, else `default`. The API is reached over plain HTTP (`executor.kubernetes_api`,
//! typically `kubectl proxy` or a proxy sidecar at http://127.0.0.1:8001); the
//! bearer token is read from `executor.kubernetes_token_file` at each call, as
//! service-account tokens rotate. TLS to the API server directly is not built
//! in (the HTTP client is built without TLS).

use serde_json::{Value, json};

use super::config::ExecutorConfig;
use super::drivers::Done;
use crate::remediate::command::{Command, rfc3339};
use crate::remediate::playbook::Action;

/// Whether the driver handles `action`.
pub fn handles(action: Action) -> bool {
    matches!(action, Action::Restart | Action::Scale | Action::Rollback)
}

/// A client of one API server.
pub struct Kubernetes {
    base: String,
    token_file: String,
    client: reqwest::Client,
}

impl Kubernetes {
    pub fn new(config: &ExecutorConfig) -> Self {
        let base = if config.kubernetes_api.is_empty() {
            "http://127.0.0.1:8001".to_string()
        } else {
            config.kubernetes_api.trim_end_matches('/').to_string()
        };
        Self {
            base,
            token_file: config.kubernetes_token_file.clone(),
            client: reqwest::Client::builder()
                .timeout(config.timeout)
                .build()
                .unwrap_or_default(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if !self.token_file.is_empty()
            && let Ok(token) = std::fs::read_to_string(&self.token_file)
        {
            request = request.bearer_auth(token.trim());
        }
        request
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, String> {
        let response = request
            .send()
            .await
            .map_err(|e| format!("kubernetes API: {e}"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            let message = body["message"].as_str().unwrap_or("").to_string();
            Err(format!("kubernetes API answered {status}: {message}"))
        }
    }

    async fn patch(&self, path: &str, content_type: &str, body: Value) -> Result<Value, String> {
        let request = self
            .request(reqwest::Method::PATCH, path)
            .header("content-type", content_type)
            .body(body.to_string());
        self.send(request).await
    }

    /// Carries out `command`, if it is an action this driver handles.
    pub async fn carry_out(&self, command: &Command) -> Done {
        let d = &command.data;
        if !handles(d.action) {
            return Done::NotMine;
        }
        let first = |candidates: [Option<&String>; 3], fallback: &str| {
            candidates
                .into_iter()
                .flatten()
                .find(|v| !v.is_empty())
                .cloned()
                .unwrap_or_else(|| fallback.to_string())
        };
        let name = first(
            [
                d.params.get("k8s_deployment"),
                Some(&d.target.k8s_deployment),
                None,
            ],
            &d.target.service,
        );
        let namespace = first(
            [
                d.params.get("k8s_namespace"),
                Some(&d.target.k8s_namespace),
                Some(&d.target.namespace),
            ],
            "default",
        );
        let path = format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}");
        let result = match d.action {
            Action::Restart => self.restart(&path, command).await,
            Action::Scale => self.scale(&path, command).await,
            _ => self.rollback(&path, command).await,
        };
        match result {
            Ok(detail) => Done::Succeeded(format!("{namespace}/{name}: {detail}")),
            Err(detail) => Done::Failed(format!("{namespace}/{name}: {detail}")),
        }
    }

    async fn restart(&self, path: &str, command: &Command) -> Result<String, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let body = json!({"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": rfc3339(now),
            "homeostat.dev/command": command.id,
        }}}}});
        self.patch(path, "application/strategic-merge-patch+json", body)
            .await?;
        Ok("rollout restarted".into())
    }

    async fn scale(&self, path: &str, command: &Command) -> Result<String, String> {
        let scale_path = format!("{path}/scale");
        let current = self
            .send(self.request(reqwest::Method::GET, &scale_path))
            .await?;
        let replicas = current["spec"]["replicas"].as_u64().unwrap_or(1);
        let params = &command.data.params;
        let by = params.get("by").map(String::as_str).unwrap_or("1");
        let step = match by.strip_suffix('%') {
            Some(pct) => {
                let pct: u64 = pct.parse().map_err(|_| format!("bad scale `by` {by:?}"))?;
                (replicas * pct).div_ceil(100).max(1)
            }
            None => by.parse().map_err(|_| format!("bad scale `by` {by:?}"))?,
        };
        let target = match params.get("direction").map(String::as_str) {
            Some("in") => replicas.saturating_sub(step).max(1),
            _ => replicas + step,
        };
        let body = json!({"spec": {"replicas": target}});
        self.patch(&scale_path, "application/merge-patch+json", body)
            .await?;
        Ok(format!("scaled from {replicas} to {target} replicas"))
    }

    async fn rollback(&self, path: &str, command: &Command) -> Result<String, String> {
        let d = &command.data;
        let to = d
            .params
            .get("to_version")
            .filter(|v| !v.is_empty())
            .unwrap_or(&d.target.previous_version);
        let from = d
            .params
            .get("from_version")
            .filter(|v| !v.is_empty())
            .unwrap_or(&d.target.version);
        if to.is_empty() || from.is_empty() {
            return Err("rollback needs the running and the previous version".into());
        }
        let deployment = self.send(self.request(reqwest::Method::GET, path)).await?;
        let containers = deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let suffix = format!(":{from}");
        let changed: Vec<Value> = containers
            .iter()
            .filter_map(|c| {
                let image = c["image"].as_str()?;
                let base = image.strip_suffix(&suffix)?;
                Some(json!({"name": c["name"], "image": format!("{base}:{to}")}))
            })
            .collect();
        if changed.is_empty() {
            return Err(format!("no container image is tagged {from}"));
        }
        let body = json!({"spec": {"template": {"spec": {"containers": changed}}}});
        self.patch(path, "application/strategic-merge-patch+json", body)
            .await?;
        Ok(format!("rolled back from {from} to {to}"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, Method};
    use axum::routing::any;
    use serde_json::{Value, json};

    use super::*;

    /// What the fake API server saw: (method, path, content type, auth, body).
    type Seen = Arc<Mutex<Vec<(String, String, String, String, Value)>>>;

    async fn fake(
        State(seen): State<Seen>,
        method: Method,
        Path(path): Path<String>,
        headers: HeaderMap,
        body: String,
    ) -> axum::Json<Value> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        seen.lock().expect("lock").push((
            method.to_string(),
            format!("/{path}"),
            header("content-type"),
            header("authorization"),
            body,
        ));
        axum::Json(if path.ends_with("/scale") {
            json!({"kind": "Scale", "spec": {"replicas": 3}})
        } else {
            json!({"kind": "Deployment", "spec": {"template": {"spec": {"containers": [
                {"name": "cart", "image": "registry.example/cart:2.1"},
                {"name": "sidecar", "image": "envoy:1.30"}
            ]}}}})
        })
    }

    async fn server() -> (String, Seen) {
        let seen: Seen = Arc::default();
        let app = axum::Router::new()
            .route("/{*path}", any(fake))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    fn cmd(action: Action, params: &[(&str, &str)]) -> Command {
        let mut command = crate::remediate::command::tests::sample(action);
        command.data.params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>();
        command
    }

    fn driver(base: &str, token: Option<&std::path::Path>) -> Kubernetes {
        let config = crate::config::Config::from_toml_str("").expect("defaults");
        let mut executor = config.executor;
        executor.kubernetes_api = base.to_string();
        executor.kubernetes_token_file = token.map(|p| p.display().to_string()).unwrap_or_default();
        Kubernetes::new(&executor)
    }

    #[tokio::test]
    async fn restart_scale_and_rollback_send_what_kubectl_sends() {
        let (base, seen) = server().await;
        let token = tempfile::NamedTempFile::new().expect("token file");
        std::fs::write(token.path(), "t0ken\n").expect("write");
        let k = driver(&base, Some(token.path()));
        let path = "/apis/apps/v1/namespaces/shop/deployments/cart";

        assert!(matches!(
            k.carry_out(&cmd(Action::Restart, &[])).await,
            Done::Succeeded(_)
        ));
        let (method, at, ctype, auth, body) = seen.lock().expect("lock").remove(0);
        assert_eq!((method.as_str(), at.as_str()), ("PATCH", path));
        assert_eq!(ctype, "application/strategic-merge-patch+json");
        assert_eq!(auth, "Bearer t0ken");
        let annotations = &body["spec"]["template"]["metadata"]["annotations"];
        assert!(
            annotations["kubectl.kubernetes.io/restartedAt"].is_string(),
            "{body}"
        );

        let scale = cmd(Action::Scale, &[("direction", "out"), ("by", "50%")]);
        let Done::Succeeded(detail) = k.carry_out(&scale).await else {
            panic!("scale")
        };
        assert!(detail.contains("from 3 to 5"), "{detail}");
        let calls: Vec<_> = seen.lock().expect("lock").drain(..).collect();
        assert_eq!(
            (calls[0].0.as_str(), calls[0].1.as_str()),
            ("GET", &*format!("{path}/scale"))
        );
        assert_eq!(calls[1].2, "application/merge-patch+json");
        assert_eq!(calls[1].4, json!({"spec": {"replicas": 5}}));

        let rollback = cmd(
            Action::Rollback,
            &[("to_version", "2.0"), ("from_version", "2.1")],
        );
        assert!(matches!(k.carry_out(&rollback).await, Done::Succeeded(_)));
        let calls: Vec<_> = seen.lock().expect("lock").drain(..).collect();
        assert_eq!(calls[0].0, "GET");
        assert_eq!(
            calls[1].4,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "cart", "image": "registry.example/cart:2.0"}
            ]}}}})
        );

        let other = cmd(
            Action::Rollback,
            &[("to_version", "1.0"), ("from_version", "9.9")],
        );
        let Done::Failed(why) = k.carry_out(&other).await else {
            panic!("no such tag")
        };
        assert!(why.contains("tagged 9.9"), "{why}");
        assert_eq!(k.carry_out(&cmd(Action::Notify, &[])).await, Done::NotMine);
    }
}
