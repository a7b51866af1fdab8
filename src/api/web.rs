//! The web view: one self-contained page (`GET /`, no CDN: its script and style
//! are inline) that reads the engine through `/sql` and steers remediation
//! through `/control/*`, which are the gRPC remediation methods over JSON.
//!
//! Control routes take the same bearer token as the gRPC control methods
//! (`authorization: Bearer <api.control_token>`) and go through the same
//! service, so authentication and every check live in one place
//! ([`super::remediation`]). gRPC statuses map to HTTP here, once.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tonic::metadata::MetadataValue;

use super::query::pb;
use super::remediation::RemediationService;
use pb::remediation_server::Remediation as _;

/// The page.
const PAGE: &str = include_str!("web/index.html");

/// The web view's routes.
pub fn router(service: RemediationService) -> axum::Router {
    axum::Router::new()
        .route("/", get(page))
        .route("/control/pending", get(pending))
        .route("/control/pause", post(pause))
        .route("/control/decide", post(decide))
        .route("/control/kill-switch", post(kill_switch))
        .with_state(service)
}

async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            // Everything the page needs is in it or on this origin.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
                ),
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// A gRPC request carrying the caller's `authorization` header.
fn request<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<MetadataValue<_>>().ok())
    {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// A gRPC status as an HTTP answer with `{"error": ...}`.
fn failure(status: &tonic::Status) -> Response {
    use tonic::Code;
    let code = match status.code() {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, Json(json!({ "error": status.message() }))).into_response()
}

fn answered(result: Result<tonic::Response<pb::ControlResponse>, tonic::Status>) -> Response {
    match result {
        Ok(r) => Json(json!({ "message": r.into_inner().message })).into_response(),
        Err(status) => failure(&status),
    }
}

async fn pending(State(service): State<RemediationService>, headers: HeaderMap) -> Response {
    match service
        .list_pending(request(&headers, pb::ListPendingRequest {}))
        .await
    {
        Ok(r) => {
            let commands: Vec<_> = r
                .into_inner()
                .commands
                .into_iter()
                .map(|c| {
                    json!({"id": c.id, "incident": c.incident, "service": c.service,
                        "action": c.action, "score": c.score})
                })
                .collect();
            Json(commands).into_response()
        }
        Err(status) => failure(&status),
    }
}

#[derive(Deserialize)]
struct Pause {
    service: String,
    pause: bool,
}

async fn pause(
    State(service): State<RemediationService>,
    headers: HeaderMap,
    Json(body): Json<Pause>,
) -> Response {
    let message = pb::PauseServiceRequest {
        service: body.service,
        pause: body.pause,
    };
    answered(service.pause_service(request(&headers, message)).await)
}

#[derive(Deserialize)]
struct Decide {
    command: String,
    approve: bool,
}

async fn decide(
    State(service): State<RemediationService>,
    headers: HeaderMap,
    Json(body): Json<Decide>,
) -> Response {
    let message = pb::DecideCommandRequest {
        command: body.command,
        approve: body.approve,
    };
    answered(service.decide_command(request(&headers, message)).await)
}

#[derive(Deserialize)]
struct KillSwitch {
    on: bool,
}

async fn kill_switch(
    State(service): State<RemediationService>,
    headers: HeaderMap,
    Json(body): Json<KillSwitch>,
) -> Response {
    let message = pb::SetKillSwitchRequest { on: body.on };
    answered(service.set_kill_switch(request(&headers, message)).await)
}
