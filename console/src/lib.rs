//! `connector-console`: the web console of `connector-run serve` (docs/console.md).
//!
//! Along the data flow:
//! - [`snapshot`]: the state stores read into cells (target × tenant × table, with a status:
//!   ok, stale past the freshness SLO, failed, running, streaming), the change streams and the
//!   run history; refreshed in the background and after every action.
//! - [`views`]: the overview grid and a table's page computed from a snapshot per request
//!   (filtered, sorted and paged on the server).
//! - `pages`: server-rendered HTML (minijinja templates and assets compiled into the binary).
//! - `api`: the JSON API the pages use and scripts can call, `/metrics` and `/healthz`.
//! - `auth`: actions need the token (`Authorization: Bearer`), and cross-site requests are
//!   refused; without a token the console is read-only.
//!
//! The console runs nothing itself: actions go to an [`Operator`] (the command line's, which
//! builds the pipeline and runs it), so this crate depends on the framework only.

mod api;
mod auth;
mod pages;
pub mod snapshot;
#[cfg(test)]
mod tests;
pub mod views;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use snapshot::{Activity, Snapshot, StateSource, Status};

/// What an action asks for: the tenants and tables (all when absent), and a full sync.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SyncRequest {
    #[serde(default)]
    pub databases: Option<Vec<String>>,
    #[serde(default)]
    pub tables: Option<Vec<String>>,
    #[serde(default)]
    pub full: bool,
}

/// What a reset asks for.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ResetRequest {
    pub database: String,
    #[serde(default)]
    pub table: Option<String>,
}

/// Runs what the console's actions ask for.
#[async_trait]
pub trait Operator: Send + Sync {
    /// `Err(why)` when another run holds the state's lock (naming it), so an action is refused
    /// before it starts.
    async fn check_lock(&self) -> std::result::Result<(), String>;
    /// A sync; returns the report as text.
    async fn sync(&self, request: SyncRequest) -> std::result::Result<String, String>;
    /// Forgets watermarks so the next sync of these tables is full.
    async fn reset(&self, request: ResetRequest) -> std::result::Result<String, String>;
    /// `verify` of these tenants and tables; returns its report as text.
    async fn verify(&self, request: SyncRequest) -> std::result::Result<String, String>;
    /// The pipeline's config with every secret redacted.
    fn config(&self) -> serde_json::Value;
    /// The Prometheus metrics, as text.
    fn metrics(&self) -> String;
}

/// How the console is set up.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    pub addr: SocketAddr,
    /// Actions need it; `None` makes the console read-only. Never shown or logged.
    pub token: Option<String>,
    /// A table whose last success is older than this is stale.
    pub freshness_slo_minutes: i64,
    /// How often the state is read again.
    pub refresh: Duration,
    /// Shown in the page title.
    pub title: String,
}

/// An action as the API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ActionRecord {
    pub id: u64,
    /// `sync`, `reset`, `verify`.
    pub kind: String,
    pub request: serde_json::Value,
    /// `running`, `done`, `failed`.
    pub status: String,
    pub result: Option<String>,
    pub started_at: chrono::NaiveDateTime,
    pub finished_at: Option<chrono::NaiveDateTime>,
}

/// Actions kept for the API.
const ACTIONS_KEPT: usize = 50;

/// The console's shared state.
pub struct Console {
    options: ConsoleOptions,
    sources: Vec<StateSource>,
    operator: Arc<dyn Operator>,
    snapshot: RwLock<Arc<Snapshot>>,
    activity: Mutex<Vec<(u64, Activity)>>,
    actions: Mutex<Vec<ActionRecord>>,
    next_id: Mutex<u64>,
    templates: minijinja::Environment<'static>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("addr", &self.options.addr).field("targets", &self.sources.len()).finish()
    }
}

/// Marks the cells a run covers as running until dropped.
#[derive(Debug)]
pub struct RunningGuard {
    console: Arc<Console>,
    id: u64,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let mut activity = self.console.activity.lock().unwrap_or_else(|p| p.into_inner());
        activity.retain(|(id, _)| *id != self.id);
    }
}

impl Console {
    pub fn new(options: ConsoleOptions, sources: Vec<StateSource>, operator: Arc<dyn Operator>) -> Arc<Self> {
        Arc::new(Self {
            options,
            sources,
            operator,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            activity: Mutex::new(Vec::new()),
            actions: Mutex::new(Vec::new()),
            next_id: Mutex::new(1),
            templates: pages::templates(),
        })
    }

    /// The last snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the state again now.
    pub async fn refresh(&self) {
        let running: Vec<Activity> =
            self.activity.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(_, a)| a.clone()).collect();
        let snapshot = Snapshot::take(&self.sources, self.options.freshness_slo_minutes, &running).await;
        for e in &snapshot.errors {
            tracing::warn!(error = %e, "console: cannot read the state");
        }
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
    }

    /// Marks what a run covers as running (its cells show it) until the guard is dropped.
    pub fn running(self: &Arc<Self>, activity: Activity) -> RunningGuard {
        let id = self.next_id();
        self.activity.lock().unwrap_or_else(|p| p.into_inner()).push((id, activity));
        RunningGuard { console: self.clone(), id }
    }

    fn next_id(&self) -> u64 {
        let mut next = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
        *next += 1;
        *next - 1
    }

    pub fn options(&self) -> &ConsoleOptions {
        &self.options
    }

    /// The HTTP routes (pages, API, metrics, health).
    pub fn router(self: &Arc<Self>) -> axum::Router {
        pages::routes().merge(api::routes()).with_state(self.clone())
    }

    /// Serves until `shutdown` resolves; the state is read again every `refresh`.
    pub async fn serve(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.refresh().await;
        let refresher = {
            let console = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(console.options.refresh).await;
                    console.refresh().await;
                }
            })
        };
        let listener = tokio::net::TcpListener::bind(self.options.addr).await?;
        tracing::info!(addr = %listener.local_addr()?, read_only = self.options.token.is_none(), "console serving");
        let served = axum::serve(listener, self.router()).with_graceful_shutdown(shutdown).await;
        refresher.abort();
        served
    }
}
