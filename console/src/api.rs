//! The JSON API (docs/console.md), `/metrics` and `/healthz`.
//!
//! Reads need nothing; actions (`POST /api/sync`, `/api/reset`, `/api/verify`) need the token,
//! are refused while another run holds the lock (409, naming it) or another action of this
//! console runs, start in the background (202 with the action's id) and are followed with
//! `GET /api/actions/{id}`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::snapshot::{Activity, Status};
use crate::views::OverviewQuery;
use crate::{ACTIONS_KEPT, ActionRecord, Console, ResetRequest, SyncRequest};

pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/api/state", get(state))
        .route("/api/config", get(config))
        .route("/api/sync", post(sync))
        .route("/api/reset", post(reset))
        .route("/api/verify", post(verify))
        .route("/api/actions", get(actions))
        .route("/api/actions/{id}", get(action))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({"error": message.into()}))).into_response()
}

/// Every tenant × table (of every target, or `?target=`), filtered like the overview.
async fn state(State(console): State<Arc<Console>>, Query(q): Query<OverviewQuery>) -> Response {
    let snapshot = console.snapshot();
    let tables: Vec<&crate::snapshot::Cell> = snapshot
        .cells
        .iter()
        .filter(|c| q.target.as_ref().is_none_or(|t| &c.target == t) && crate::views::cell_matches(c, &q))
        .collect();
    Json(json!({
        "taken_at": snapshot.taken_at,
        "freshness_slo_minutes": console.options.freshness_slo_minutes,
        "counts": snapshot.counts().into_iter().map(|(s, n)| (s.as_str(), n)).collect::<std::collections::BTreeMap<_, _>>(),
        "tables": tables,
        "unreadable": snapshot.unreadable,
        "streams": snapshot.streams,
        "errors": snapshot.errors,
    }))
    .into_response()
}

/// The pipeline's config, secrets redacted.
async fn config(State(console): State<Arc<Console>>) -> Response {
    Json(console.operator.config()).into_response()
}

async fn metrics(State(console): State<Arc<Console>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], console.operator.metrics()).into_response()
}

/// 200 when nothing failed and nothing breaches the freshness SLO, else 503; the body says what.
async fn healthz(State(console): State<Arc<Console>>) -> Response {
    let snapshot = console.snapshot();
    let name = |c: &crate::snapshot::Cell| format!("{}.{} → {}", c.database, c.table, c.target);
    let failed: Vec<String> = snapshot.cells.iter().filter(|c| c.status == Status::Failed).map(name).collect();
    let stale: Vec<String> = snapshot.cells.iter().filter(|c| c.status == Status::Stale).map(name).collect();
    let unreadable: Vec<String> =
        snapshot.unreadable.iter().map(|u| format!("{} → {}", u.database, u.target)).collect();
    let healthy = failed.is_empty() && stale.is_empty() && unreadable.is_empty() && snapshot.errors.is_empty();
    let body = json!({
        "healthy": healthy,
        "tables": snapshot.cells.len(),
        "failed": failed,
        "stale": stale,
        "unreadable": unreadable,
        "errors": snapshot.errors,
        "freshness_slo_minutes": console.options.freshness_slo_minutes,
        "taken_at": snapshot.taken_at,
    });
    let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

async fn actions(State(console): State<Arc<Console>>) -> Response {
    let actions = console.actions.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Json(actions).into_response()
}

async fn action(State(console): State<Arc<Console>>, Path(id): Path<u64>) -> Response {
    let actions = console.actions.lock().unwrap_or_else(|p| p.into_inner());
    match actions.iter().find(|a| a.id == id) {
        Some(a) => Json(a.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no action {id} (the last {ACTIONS_KEPT} are kept)")),
    }
}

/// An action's body: JSON, or empty for the defaults.
fn body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| format!("the body is not the JSON expected: {e}"))
}

async fn sync(State(console): State<Arc<Console>>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    let request: SyncRequest = match body(&bytes) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let activity = Activity { databases: request.databases.clone(), tables: request.tables.clone() };
    start(console, &headers, "sync", json!(request), Some(activity), move |operator| {
        Box::pin(async move { operator.sync(request).await })
    })
    .await
}

async fn verify(State(console): State<Arc<Console>>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    let request: SyncRequest = match body(&bytes) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    start(console, &headers, "verify", json!(request), None, move |operator| {
        Box::pin(async move { operator.verify(request).await })
    })
    .await
}

#[derive(Debug, Default, serde::Deserialize)]
struct ResetBody {
    database: Option<String>,
    table: Option<String>,
}

async fn reset(State(console): State<Arc<Console>>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    let request: ResetBody = match body(&bytes) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Some(database) = request.database else {
        return error(StatusCode::BAD_REQUEST, "a reset needs {\"database\": ...} (and optionally \"table\")");
    };
    let request = ResetRequest { database, table: request.table };
    start(console, &headers, "reset", json!(request), None, move |operator| {
        Box::pin(async move { operator.reset(request).await })
    })
    .await
}

type ActionFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>>;

/// Authorizes, refuses while something else runs, then runs the action in the background.
async fn start(
    console: Arc<Console>,
    headers: &HeaderMap,
    kind: &str,
    request: serde_json::Value,
    activity: Option<Activity>,
    run: impl FnOnce(Arc<dyn crate::Operator>) -> ActionFuture + Send + 'static,
) -> Response {
    if let Err((code, why)) = crate::auth::authorize(headers, console.options.token.as_deref()) {
        return error(code, why);
    }
    let id = console.next_id();
    {
        // The check and the claim under one lock: two requests at once cannot both start.
        let mut actions = console.actions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(busy) = actions.iter().find(|a| a.status == "running") {
            return error(StatusCode::CONFLICT, format!("action {} ({}) is still running", busy.id, busy.kind));
        }
        actions.push(ActionRecord {
            id,
            kind: kind.to_string(),
            request,
            status: "running".into(),
            result: None,
            started_at: chrono::Utc::now().naive_utc(),
            finished_at: None,
        });
        let excess = actions.len().saturating_sub(ACTIONS_KEPT);
        actions.drain(..excess);
    }
    if let Err(holder) = console.operator.check_lock().await {
        console.actions.lock().unwrap_or_else(|p| p.into_inner()).retain(|a| a.id != id);
        return error(StatusCode::CONFLICT, format!("another run holds the lock: {holder}"));
    }
    let guard = activity.map(|a| console.running(a));
    console.refresh().await;
    let worker = console.clone();
    tokio::spawn(async move {
        let outcome = run(worker.operator.clone()).await;
        drop(guard);
        worker.refresh().await;
        let mut actions = worker.actions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = actions.iter_mut().find(|a| a.id == id) {
            a.finished_at = Some(chrono::Utc::now().naive_utc());
            match outcome {
                Ok(text) => {
                    a.status = "done".into();
                    a.result = Some(text);
                }
                Err(e) => {
                    a.status = "failed".into();
                    a.result = Some(e);
                }
            }
        }
    });
    (StatusCode::ACCEPTED, Json(json!({"action": id, "status": "running", "follow": format!("/api/actions/{id}")})))
        .into_response()
}
