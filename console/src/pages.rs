//! Server-rendered pages: the overview and a table's page, from minijinja templates and assets
//! compiled into the binary (no build step, nothing fetched from elsewhere).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use minijinja::{Environment, context};
use serde::Deserialize;

use crate::Console;
use crate::views::{self, OverviewQuery};

const CSS: &str = include_str!("../assets/console.css");
const JS: &str = include_str!("../assets/console.js");

pub fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("../templates/base.html")),
        ("overview.html", include_str!("../templates/overview.html")),
        ("table.html", include_str!("../templates/table.html")),
    ] {
        env.add_template(name, source).unwrap_or_else(|e| panic!("template {name}: {e}"));
    }
    env
}

pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/", get(overview))
        .route("/table/{name}", get(table))
        .route("/assets/console.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], CSS) }))
        .route("/assets/console.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], JS) }))
}

fn render(console: &Console, name: &str, ctx: minijinja::Value) -> Response {
    match console.templates.get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(template = name, error = %e, "console: a page failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page failed to render; see the log").into_response()
        }
    }
}

/// What every page shows around its content.
fn common(console: &Console) -> minijinja::Value {
    let snapshot = console.snapshot();
    context! {
        title => console.options.title,
        read_only => console.options.token.is_none(),
        slo_minutes => console.options.freshness_slo_minutes,
        taken_at => snapshot.taken_at.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
        unreadable => snapshot.unreadable,
        errors => snapshot.errors,
        streams => snapshot.streams.iter().map(|s| context! {
            target => s.target,
            status => s.state.status,
            lag => s.state.lag_seconds,
            error => s.state.error,
        }).collect::<Vec<_>>(),
    }
}

async fn overview(State(console): State<Arc<Console>>, Query(query): Query<OverviewQuery>) -> Response {
    let snapshot = console.snapshot();
    let view = views::overview(&snapshot, &query);
    let link = |page: usize| {
        let mut q = query.clone();
        q.page = Some(page);
        format!("/?{}", serde_urlencoded::to_string(&q).unwrap_or_default())
    };
    let prev = (view.page > 1).then(|| link(view.page - 1));
    let next = (view.page < view.pages).then(|| link(view.page + 1));
    render(&console, "overview.html", context! { page => common(&console), view => view, prev => prev, next => next })
}

#[derive(Debug, Deserialize)]
struct TableQuery {
    target: Option<String>,
}

async fn table(State(console): State<Arc<Console>>, Path(name): Path<String>, Query(q): Query<TableQuery>) -> Response {
    let snapshot = console.snapshot();
    match views::table_page(&snapshot, &name, q.target.as_deref()) {
        Some(view) => render(&console, "table.html", context! { page => common(&console), view => view }),
        None => (StatusCode::NOT_FOUND, Html("<p>No state for a table of that name. <a href=\"/\">Overview</a></p>"))
            .into_response(),
    }
}
