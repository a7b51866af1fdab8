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
//! The Deployment is `params.k8s_deployment`, else the target service; its
//! namespace `params.k8s_namespace`, else the target's namespace, else
//! `default`. The API is reached over plain HTTP (`executor.kubernetes_api`,
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
        let name = d
            .params
            .get("k8s_deployment")
            .cloned()
            .unwrap_or_else(|| d.target.service.clone());
        let namespace = d
            .params
            .get("k8s_namespace")
            .cloned()
            .filter(|n| !n.is_empty())
            .or_else(|| Some(d.target.namespace.clone()).filter(|n| !n.is_empty()))
            .unwrap_or_else(|| "default".to_string());
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
