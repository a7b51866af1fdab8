//! The `kubernetes` driver: rollout restart, scale and rollback of a Deployment
//! through the Kubernetes API, as `kubectl` does them.
//!
//! - restart: a strategic-merge PATCH of the pod template's
//!   `kubectl.kubernetes.io/restartedAt` annotation; with `params.instances`
//!   (a canary, or the rest after it) a DELETE of each of those pods instead,
//!   which the Deployment replaces (instances are pod names where Kubernetes
//!   runs a service, see `window::inventory`);
//! - scale: GET the `scale` subresource, then a merge PATCH of `spec.replicas`
//!   (`by` a count or a percentage, rounded up, `direction` out or in, never
//!   under one replica);
//! - rollback: the containers whose image is tagged with the running version
//!   get the previous version's tag (images tagged by `service.version`).
//!   A canary rollback (`params.canary = "true"`) is refused: a Deployment
//!   rolls back all its pods at once.
//!
//! The Deployment is `params.k8s_deployment`, else the target's
//! `k8s.deployment.name`, else the service; its namespace
//! `params.k8s_namespace`, else the target's `k8s.namespace.name`, else its
//! `service.namespace`, else `default`.
//!
//! The API server is `executor.kubernetes_api`: `http://` through `kubectl
//! proxy` or a proxy sidecar, or `https://` straight to the server, checked
//! against `executor.kubernetes_ca_file`. Unset, in a pod it is the cluster's
//! own (`KUBERNETES_SERVICE_HOST`, with the service account's CA and token),
//! elsewhere `kubectl proxy`'s (see [`super::kube_http`]). The bearer token is
//! read from `executor.kubernetes_token_file` at each call, as
//! service-account tokens rotate.

use serde_json::{Value, json};

use hyper::Method;

use super::config::ExecutorConfig;
use super::drivers::Done;
use super::kube_http::{ApiClient, endpoint};
use crate::remediate::command::{Command, rfc3339};
use crate::remediate::playbook::Action;

/// Whether the driver handles `action`.
pub fn handles(action: Action) -> bool {
    matches!(action, Action::Restart | Action::Scale | Action::Rollback)
}

/// A client of one API server.
pub struct Kubernetes {
    api: ApiClient,
    token_file: String,
}

impl Kubernetes {
    /// The driver for the configured (or the in-cluster) API server; a bad
    /// URL or CA file is an error now, not at the first remediation.
    pub fn new(config: &ExecutorConfig) -> Result<Self, String> {
        let at = endpoint(
            &config.kubernetes_api,
            &config.kubernetes_ca_file,
            &config.kubernetes_token_file,
            |name| std::env::var(name).ok(),
        );
        Ok(Self {
            api: ApiClient::new(&at.base, &at.ca_file, config.timeout)?,
            token_file: at.token_file,
        })
    }

    /// One call: `body`, if any, is sent with its content type.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Value)>,
    ) -> Result<Value, String> {
        let mut headers = vec![("accept", "application/json".to_string())];
        if !self.token_file.is_empty()
            && let Ok(token) = std::fs::read_to_string(&self.token_file)
        {
            headers.push(("authorization", format!("Bearer {}", token.trim())));
        }
        let bytes = match body {
            Some((content_type, body)) => {
                headers.push(("content-type", content_type.to_string()));
                body.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        let (status, answer) = self
            .api
            .send(method, path, &headers, bytes)
            .await
            .map_err(|e| format!("kubernetes API: {e}"))?;
        let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(answer)
        } else {
            let message = answer["message"].as_str().unwrap_or("");
            Err(format!("kubernetes API answered {status}: {message}"))
        }
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        self.call(Method::GET, path, None).await
    }

    async fn patch(&self, path: &str, content_type: &str, body: Value) -> Result<Value, String> {
        self.call(Method::PATCH, path, Some((content_type, body)))
            .await
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
        let pods: Vec<&str> = d
            .params
            .get("instances")
            .map(|i| i.split(',').filter(|p| !p.is_empty()).collect())
            .unwrap_or_default();
        let result = match d.action {
            Action::Restart if !pods.is_empty() => self.delete_pods(&namespace, &pods).await,
            Action::Restart => self.restart(&path, command).await,
            Action::Rollback if d.params.get("canary").is_some_and(|c| c == "true") => Err(
                "a Deployment rolls back all its pods at once: no canary rollback \
                 (keep rollback out of remediation.canary_actions)"
                    .into(),
            ),
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

    /// Deletes `pods` (their Deployment starts new ones): a restart of some
    /// instances only.
    async fn delete_pods(&self, namespace: &str, pods: &[&str]) -> Result<String, String> {
        for pod in pods {
            let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}");
            self.call(Method::DELETE, &path, None).await?;
        }
        Ok(format!("deleted pods {}", pods.join(",")))
    }

    async fn scale(&self, path: &str, command: &Command) -> Result<String, String> {
        let scale_path = format!("{path}/scale");
        let current = self.get(&scale_path).await?;
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
        let deployment = self.get(path).await?;
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

    /// The fake API server's routes, what they saw, and a listener for them.
    async fn fake_app() -> (axum::Router, Seen, tokio::net::TcpListener) {
        let seen: Seen = Arc::default();
        let app = axum::Router::new()
            .route("/{*path}", any(fake))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        (app, seen, listener)
    }

    async fn server() -> (String, Seen) {
        let (app, seen, listener) = fake_app().await;
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    /// A self-signed certificate for 127.0.0.1: (its PEM, the server's TLS
    /// settings).
    fn certificate() -> (String, rustls::ServerConfig) {
        let issued =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(issued.key_pair.serialize_der());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![issued.cert.der().clone()], key.into())
            .expect("server config");
        (issued.cert.pem(), config)
    }

    /// The fake API server over TLS: its `https://` base, what it saw, and the
    /// PEM of its certificate.
    async fn tls_server() -> (String, Seen, String) {
        let (pem, config) = certificate();
        let (app, seen, listener) = fake_app().await;
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        (format!("https://{addr}"), seen, pem)
    }

    fn tls_driver(base: &str, ca: &std::path::Path) -> Result<Kubernetes, String> {
        let mut executor = crate::config::Config::from_toml_str("")
            .expect("defaults")
            .executor;
        executor.kubernetes_api = base.to_string();
        executor.kubernetes_ca_file = ca.display().to_string();
        Kubernetes::new(&executor)
    }

    #[tokio::test]
    async fn over_tls_the_server_is_checked_against_the_configured_ca() {
        let (base, seen, pem) = tls_server().await;
        let dir = tempfile::tempdir().expect("dir");
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, &pem).expect("write");
        let k = tls_driver(&base, &ca).expect("driver");
        let done = k.carry_out(&cmd(Action::Restart, &[])).await;
        assert!(matches!(done, Done::Succeeded(_)), "{done:?}");
        let (method, at, ctype, _, _) = seen.lock().expect("lock").remove(0);
        assert_eq!(method, "PATCH");
        assert_eq!(at, "/apis/apps/v1/namespaces/shop/deployments/cart");
        assert_eq!(ctype, "application/strategic-merge-patch+json");

        // Another CA: the server is not trusted and nothing is sent.
        let (other, _) = certificate();
        std::fs::write(&ca, other).expect("write");
        let k = tls_driver(&base, &ca).expect("driver");
        let Done::Failed(why) = k.carry_out(&cmd(Action::Restart, &[])).await else {
            panic!("an untrusted server was trusted")
        };
        assert!(why.contains("TLS"), "{why}");
        assert!(seen.lock().expect("lock").is_empty());

        // No CA, or no certificate in the file: refused at start, clearly.
        let none = tls_driver(&base, std::path::Path::new(""))
            .err()
            .expect("no CA");
        assert!(none.contains("kubernetes_ca_file"), "{none}");
        std::fs::write(&ca, "not a certificate\n").expect("write");
        let empty = tls_driver(&base, &ca).err().expect("empty CA");
        assert!(empty.contains("no certificate"), "{empty}");
    }

    #[test]
    fn in_a_pod_the_cluster_api_and_the_service_account_are_used() {
        use super::super::kube_http::{Endpoint, PROXY, SERVICE_ACCOUNT};
        let pod = |name: &str| match name {
            "KUBERNETES_SERVICE_HOST" => Some("10.96.0.1".to_string()),
            "KUBERNETES_SERVICE_PORT" => Some("443".to_string()),
            _ => None,
        };
        assert_eq!(
            endpoint("", "", "", pod),
            Endpoint {
                base: "https://10.96.0.1:443".into(),
                ca_file: format!("{SERVICE_ACCOUNT}/ca.crt"),
                token_file: format!("{SERVICE_ACCOUNT}/token"),
            }
        );
        assert_eq!(endpoint("", "", "", |_| None).base, PROXY);
        let set = endpoint("https://api.example:6443/", "/etc/ca.pem", "", pod);
        assert_eq!(set.base, "https://api.example:6443");
        assert_eq!(set.ca_file, "/etc/ca.pem");
        assert_eq!(set.token_file, "");
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
        Kubernetes::new(&executor).expect("driver")
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

    #[tokio::test]
    async fn a_canary_restart_deletes_its_pods_and_a_canary_rollback_is_refused() {
        let (base, seen) = server().await;
        let k = driver(&base, None);
        let restart = cmd(
            Action::Restart,
            &[("instances", "cart-7d9-x2"), ("canary", "true")],
        );
        let Done::Succeeded(detail) = k.carry_out(&restart).await else {
            panic!("restart")
        };
        assert!(detail.contains("deleted pods cart-7d9-x2"), "{detail}");
        let calls: Vec<_> = seen.lock().expect("lock").drain(..).collect();
        let calls: Vec<(&str, &str)> = calls.iter().map(|c| (c.0.as_str(), c.1.as_str())).collect();
        assert_eq!(
            calls,
            [("DELETE", "/api/v1/namespaces/shop/pods/cart-7d9-x2")]
        );

        let rollback = cmd(
            Action::Rollback,
            &[
                ("to_version", "2.0"),
                ("from_version", "2.1"),
                ("canary", "true"),
            ],
        );
        let Done::Failed(why) = k.carry_out(&rollback).await else {
            panic!("a canary rollback")
        };
        assert!(why.contains("no canary rollback"), "{why}");
        assert!(seen.lock().expect("lock").is_empty(), "nothing sent");
    }
}
