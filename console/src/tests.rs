//! The console's routes against a memory state store: pages render, filters and paging hold,
//! actions follow the auth rules. (End-to-end tests drive the real binary over real runs.)

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use connector_framework::{MemoryStateStore, StateStore, SyncMode, TableState};
use tower::ServiceExt;

use crate::*;

struct Recorder(std::sync::Mutex<Vec<String>>);

#[async_trait]
impl Operator for Recorder {
    async fn check_lock(&self) -> std::result::Result<(), String> {
        Ok(())
    }
    async fn sync(&self, request: SyncRequest) -> std::result::Result<String, String> {
        self.0.lock().unwrap().push(format!("sync {:?} {:?} {}", request.databases, request.tables, request.full));
        Ok("synced".into())
    }
    async fn reset(&self, request: ResetRequest) -> std::result::Result<String, String> {
        self.0.lock().unwrap().push(format!("reset {} {:?}", request.database, request.table));
        Ok("reset".into())
    }
    async fn verify(&self, _: SyncRequest) -> std::result::Result<String, String> {
        Err("verify failed".into())
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({"password": "***"})
    }
    fn metrics(&self) -> String {
        "connector_runs_total 3\n".into()
    }
}

async fn fleet(tenants: usize, tables: usize) -> MemoryStateStore {
    let store = MemoryStateStore::default();
    let now = chrono::Utc::now().naive_utc();
    for d in 0..tenants {
        for t in 0..tables {
            let mut state = TableState::succeeded(&format!("t{t:02}"), SyncMode::Incremental, 5, now);
            if d == 3 && t == 1 {
                state = TableState::failed(
                    &state.table_name,
                    Some(&state),
                    None,
                    &connector_framework::ConnectorError::permanent("boom <b>"),
                );
            }
            if d == 4 && t == 2 {
                state.last_success_at = Some(now - chrono::Duration::hours(5));
            }
            store.record(&format!("shop{d:04}"), state).await.unwrap();
        }
    }
    store
}

async fn console(token: Option<&str>) -> (Arc<Console>, Arc<Recorder>) {
    let recorder = Arc::new(Recorder(Default::default()));
    let store: Arc<dyn StateStore> = Arc::new(fleet(100, 5).await);
    let options = ConsoleOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: token.map(str::to_string),
        freshness_slo_minutes: 120,
        refresh: Duration::from_secs(60),
        title: "test".into(),
    };
    let c = Console::new(options, vec![StateSource { target: "default".into(), store }], recorder.clone());
    c.refresh().await;
    (c, recorder)
}

async fn call(c: &Arc<Console>, request: Request<Body>) -> (StatusCode, String) {
    let answer = c.router().oneshot(request).await.unwrap();
    let code = answer.status();
    let body = axum::body::to_bytes(answer.into_body(), usize::MAX).await.unwrap();
    (code, String::from_utf8_lossy(&body).into_owned())
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post(uri: &str, token: Option<&str>, body: &str) -> Request<Body> {
    let mut r = Request::post(uri).header("host", "127.0.0.1:8080").header("content-type", "application/json");
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.body(Body::from(body.to_string())).unwrap()
}

#[tokio::test]
async fn pages_render_counts_filter_and_page_the_fleet() {
    let (c, _) = console(None).await;
    let (code, html) = call(&c, get("/")).await;
    assert_eq!(code, StatusCode::OK, "{html}");
    assert!(
        html.contains("<b>1</b> failed") && html.contains("<b>1</b> stale") && html.contains("<b>498</b> ok"),
        "{html}"
    );
    assert_eq!(
        html.matches("class=\"cell ").count(),
        5 * views::TENANTS_PER_PAGE,
        "one page of tenants: {}",
        &html[html.find("tenants match").unwrap_or(0)..][..200]
    );
    assert!(html.contains("page 1 of 3"));
    assert!(!html.contains("data-action=\"sync\" data-full"), "no token: read-only, no buttons rendered as usable");
    let (_, failed) = call(&c, get("/?status=failed")).await;
    assert_eq!(failed.matches("class=\"cell failed\"").count(), 1, "{failed}");
    assert!(failed.contains("data-table=\"t01\"") && !failed.contains("data-table=\"t00\""));
    assert!(failed.contains("boom &lt;b&gt;"), "the error is escaped in the tooltip");
    let (_, page3) = call(&c, get("/?page=3&sort=problems")).await;
    assert!(page3.contains("page 3 of 3"));
    let (_, first) = call(&c, get("/?sort=problems")).await;
    let pos = |h: &str, t: &str| h.find(&format!("<span>{t}</span>")).unwrap_or(usize::MAX);
    assert!(pos(&first, "shop0003") < pos(&first, "shop0000"), "problems first");
    let (code, table) = call(&c, get("/table/t01")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(table.matches("<tr data-tenant=").count(), 100);
    assert_eq!(call(&c, get("/table/nope")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&c, get("/assets/console.js")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_api_reports_health_and_state_and_actions_follow_the_rules() {
    let (c, recorder) = console(Some("0123456789abcdef")).await;
    let (code, health) = call(&c, get("/healthz")).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["failed"], serde_json::json!(["shop0003.t01 → default"]));
    assert_eq!(health["stale"], serde_json::json!(["shop0004.t02 → default"]));
    let (_, state) = call(&c, get("/api/state?status=failed")).await;
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["tables"].as_array().unwrap().len(), 1);
    assert_eq!(state["counts"]["ok"], 498);
    assert_eq!(call(&c, get("/metrics")).await.1, "connector_runs_total 3\n");

    assert_eq!(call(&c, post("/api/sync", None, "{}")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(call(&c, post("/api/sync", Some("wrong-token-xxxx"), "{}")).await.0, StatusCode::UNAUTHORIZED);
    let cross = Request::post("/api/sync")
        .header("host", "127.0.0.1:8080")
        .header("origin", "https://elsewhere.example")
        .header("authorization", "Bearer 0123456789abcdef")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(call(&c, cross).await.0, StatusCode::FORBIDDEN);
    assert_eq!(call(&c, post("/api/sync", Some("0123456789abcdef"), "{not json")).await.0, StatusCode::BAD_REQUEST);
    let (code, started) =
        call(&c, post("/api/sync", Some("0123456789abcdef"), r#"{"tables": ["t01"], "full": true}"#)).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{started}");
    let id = serde_json::from_str::<serde_json::Value>(&started).unwrap()["action"].as_u64().unwrap();
    let mut done = serde_json::Value::Null;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        done = serde_json::from_str(&call(&c, get(&format!("/api/actions/{id}"))).await.1).unwrap();
        if done["status"] != "running" {
            break;
        }
    }
    assert_eq!(done["status"], "done");
    assert_eq!(recorder.0.lock().unwrap()[0], "sync None Some([\"t01\"]) true");
    let (code, _) = call(&c, post("/api/reset", Some("0123456789abcdef"), r#"{"table": "t01"}"#)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "a reset names its database");

    let (ro, _) = console(None).await;
    assert_eq!(call(&ro, post("/api/sync", Some("0123456789abcdef"), "{}")).await.0, StatusCode::FORBIDDEN);
}

#[test]
fn a_fleet_of_fifty_thousand_cells_is_grouped_in_milliseconds() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let snapshot = rt.block_on(async {
        let store: Arc<dyn StateStore> = Arc::new(fleet(1000, 50).await);
        Snapshot::take(&[StateSource { target: "default".into(), store }], 120, &[]).await
    });
    assert_eq!(snapshot.cells.len(), 50_000);
    let view = views::overview(&snapshot, &views::OverviewQuery::default());
    assert_eq!((view.rows.len(), view.page_tenants.len(), view.pages), (50, views::TENANTS_PER_PAGE, 25));
}
