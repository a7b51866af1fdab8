//! The Kubernetes driver's connection to the API server: plain HTTP (a
//! `kubectl proxy`, a proxy sidecar) or HTTPS straight to the server, whose
//! certificate is checked against the cluster's CA (in a pod, the service
//! account's `ca.crt`).
//!
//! One connection per request, over hyper's connection API and tokio-rustls
//! (ring). A remediation makes two or three calls, so a pooled client would
//! buy nothing; and reqwest stays built without TLS, because its rustls
//! backends need either aws-lc (a C build this project avoids) or a
//! process-wide crypto provider installed before any client is built, which
//! every other HTTP client of the engine and its tests would then depend on.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// In a pod: where the service account's CA and token are mounted.
pub const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// `kubectl proxy`'s address, used outside a pod when nothing is configured.
pub const PROXY: &str = "http://127.0.0.1:8001";

/// Where the API server is, and the files that authenticate the exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub base: String,
    pub ca_file: String,
    pub token_file: String,
}

/// The configured API server (`api`, `ca_file`, `token_file`); with no `api`,
/// the one of the pod this runs in (`KUBERNETES_SERVICE_HOST` and `_PORT`, the
/// service account's CA and token unless set), else `kubectl proxy`'s.
pub fn endpoint(
    api: &str,
    ca_file: &str,
    token_file: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Endpoint {
    let configured = |base: String| Endpoint {
        base,
        ca_file: ca_file.to_string(),
        token_file: token_file.to_string(),
    };
    if !api.is_empty() {
        return configured(api.trim_end_matches('/').to_string());
    }
    let (Some(host), Some(port)) = (
        env("KUBERNETES_SERVICE_HOST"),
        env("KUBERNETES_SERVICE_PORT"),
    ) else {
        return configured(PROXY.to_string());
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let or_mounted = |set: &str, file: &str| {
        if set.is_empty() {
            format!("{SERVICE_ACCOUNT}/{file}")
        } else {
            set.to_string()
        }
    };
    Endpoint {
        base: format!("https://{host}:{port}"),
        ca_file: or_mounted(ca_file, "ca.crt"),
        token_file: or_mounted(token_file, "token"),
    }
}

/// A client of one API server.
pub struct ApiClient {
    host: String,
    port: u16,
    authority: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

impl ApiClient {
    /// A client of `base` (`http://` or `https://`); an `https` base needs
    /// `ca_file`, the PEM certificates the server's is checked against.
    pub fn new(base: &str, ca_file: &str, timeout: Duration) -> Result<Self, String> {
        let bad = |why: &str| format!("executor.kubernetes_api {base:?}: {why}");
        let uri: hyper::Uri = base.parse().map_err(|e| bad(&format!("{e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?.to_string();
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            Some(tls(&host, ca_file)?)
        } else {
            None
        };
        Ok(Self {
            host,
            port,
            authority,
            tls,
            timeout,
        })
    }

    /// Sends one request with `headers` and `body`; the status and the body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let call = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
            match &self.tls {
                Some((connector, name)) => {
                    let stream = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| format!("TLS with {}: {e}", self.authority))?;
                    exchange(stream, request).await
                }
                None => exchange(tcp, request).await,
            }
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| {
                format!(
                    "no answer from {} within {:?}",
                    self.authority, self.timeout
                )
            })?
    }
}

/// One HTTP/1.1 request and its response over `stream`.
async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// A TLS connector trusting only the certificates of `ca_file`.
fn tls(host: &str, ca_file: &str) -> Result<(TlsConnector, ServerName<'static>), String> {
    if ca_file.is_empty() {
        return Err(
            "an https Kubernetes API needs executor.kubernetes_ca_file (the cluster's CA, PEM)"
                .into(),
        );
    }
    let bad = |e: &dyn std::fmt::Display| format!("executor.kubernetes_ca_file {ca_file}: {e}");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no certificate in it"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}
