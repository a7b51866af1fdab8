//! The API listener: `/healthz`, `/readyz`, Prometheus `/metrics` about the engine
//! itself, `/sql` over the retained window tables, and the web view (`/`,
//! [`web`]).
//!
//! `POST /sql` takes the query as the body (plain text, or JSON `{"query": "..."}`);
//! `GET /sql?query=...` works too. `format=json` (default) answers a JSON array of
//! row objects, `format=table` an aligned text table. Errors answer 400 with
//! `{"error": "..."}`.

pub mod cli;
pub mod query;
pub mod remediation;
pub mod remediation_cli;
pub mod sql;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::read_model::ReadModel;
use crate::self_metrics::SelfMetrics;

/// What the API handlers read.
#[derive(Clone)]
pub struct ApiState {
    /// The tables stages publish for SQL.
    pub tables: ReadModel,
    /// Self-metrics.
    pub metrics: Arc<SelfMetrics>,
    /// Set once every listener is up.
    pub ready: Arc<AtomicBool>,
    /// Row cap of SQL answers.
    pub max_result_rows: usize,
}

/// The API routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/sql", get(sql_get).post(sql_post))
        .with_state(state)
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct SqlParams {
    query: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SqlBody {
    query: String,
}

async fn sql_get(State(state): State<ApiState>, Query(params): Query<SqlParams>) -> Response {
    match params.query {
        Some(query) => run_sql(&state, &query, params.format.as_deref()).await,
        None => sql_error(StatusCode::BAD_REQUEST, "missing query parameter `query`"),
    }
}

async fn sql_post(
    State(state): State<ApiState>,
    Query(params): Query<SqlParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let query = if is_json {
        match serde_json::from_slice::<SqlBody>(&body) {
            Ok(body) => body.query,
            Err(error) => {
                return sql_error(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid JSON body: {error}"),
                );
            }
        }
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(query) => query,
            Err(_) => return sql_error(StatusCode::BAD_REQUEST, "query is not UTF-8"),
        }
    };
    run_sql(&state, &query, params.format.as_deref()).await
}

async fn run_sql(state: &ApiState, query: &str, format: Option<&str>) -> Response {
    if query.trim().is_empty() {
        return sql_error(StatusCode::BAD_REQUEST, "empty query");
    }
    let result = match sql::query(&state.tables, query, state.max_result_rows).await {
        Ok(result) => result,
        Err(error @ sql::SqlError::Query(_)) => {
            return sql_error(StatusCode::BAD_REQUEST, &error.to_string());
        }
        Err(error) => return sql_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    };
    let truncated = if result.truncated { "true" } else { "false" };
    let rendered = match format.unwrap_or("json") {
        "json" => sql::to_json(&result.batches).map(|body| ("application/json", body)),
        "table" => {
            sql::to_table(&result).map(|text| ("text/plain; charset=utf-8", text.into_bytes()))
        }
        other => {
            return sql_error(
                StatusCode::BAD_REQUEST,
                &format!("unknown format {other:?}: use json or table"),
            );
        }
    };
    match rendered {
        Ok((content_type, body)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (
                    header::HeaderName::from_static("x-homeostat-truncated"),
                    HeaderValue::from_static(truncated),
                ),
            ],
            body,
        )
            .into_response(),
        Err(error) => sql_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

fn sql_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// The API listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address serving `/healthz`, `/metrics` and `/sql`.
    pub addr: SocketAddr,
    /// Most rows a SQL answer returns.
    pub max_result_rows: usize,
    /// Bearer token the remediation control methods require; empty: they are
    /// refused. `HOMEOSTAT__API__CONTROL_TOKEN` sets it without a file.
    pub control_token: String,
}

impl ApiConfig {
    /// Every rule the section breaks, one line each.
    pub fn problems(&self) -> Vec<String> {
        if self.max_result_rows == 0 {
            vec!["api.max_result_rows must be positive".to_string()]
        } else {
            Vec::new()
        }
    }
}
