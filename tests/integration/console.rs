use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

const TOKEN: &str = "console-token-0123456789";

/// A fleet of `good` tenants without zero dates and one whose orders have one, synced with
/// `zero_dates: fail`, so exactly `bad.orders` fails until its data is fixed.
async fn fleet(prefix: &str, good: usize) -> (Vec<String>, String) {
    let goods: Vec<String> = (0..good).map(|i| format!("{prefix}_g{i:02}")).collect();
    for g in &goods {
        create_shop(g, 4, 10).await;
    }
    let bad = format!("{prefix}_bad");
    create_shop(&bad, 4, 20).await;
    (goods, bad)
}

async fn fix(bad: &str) {
    mysql_exec(&format!("UPDATE `{bad}`.orders SET ordered_on = '2024-01-01', updated_at = NOW(6) WHERE id % 13 = 0"))
        .await;
}

/// `connector-run serve` in the run's folder; stopped (SIGTERM) when dropped.
struct Serve {
    child: std::process::Child,
    url: String,
}

impl Serve {
    async fn start(run: &TestRun, token: bool) -> Self {
        let port = free_port();
        let mut args = vec!["serve".to_string(), "--pipeline".into(), run.file.clone(), "-q".into()];
        args.extend(["--addr".into(), format!("127.0.0.1:{port}")]);
        if token {
            std::fs::write(run.path().join("token.txt"), format!("{TOKEN}\n")).unwrap();
            args.extend(["--token-file".into(), "token.txt".into()]);
        }
        let child = std::process::Command::new(binary())
            .args(&args)
            .current_dir(run.path())
            .env_remove("BIGQUERY_EMULATOR_HOST")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let serve = Self { child, url };
        for _ in 0..100 {
            if reqwest::get(format!("{}/healthz", serve.url)).await.is_ok() {
                return serve;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("serve did not answer on {}", serve.url);
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let answer = reqwest::get(format!("{}{path}", self.url)).await.unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    }

    async fn json(&self, path: &str) -> Value {
        serde_json::from_str(&self.get(path).await.1).unwrap()
    }

    async fn post(&self, path: &str, token: Option<&str>, origin: Option<&str>, body: Value) -> (u16, Value) {
        let mut request = reqwest::Client::new().post(format!("{}{path}", self.url)).json(&body);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        if let Some(o) = origin {
            request = request.header("Origin", o);
        }
        let answer = request.send().await.unwrap();
        (answer.status().as_u16(), answer.json().await.unwrap_or(Value::Null))
    }

    /// Posts an action and waits for its end; its record.
    async fn act(&self, path: &str, body: Value) -> Value {
        let (code, started) = self.post(path, Some(TOKEN), None, body).await;
        assert_eq!(code, 202, "{started}");
        let id = started["action"].as_u64().unwrap();
        for _ in 0..600 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let action = self.json(&format!("/api/actions/{id}")).await;
            if action["status"] != "running" {
                return action;
            }
        }
        panic!("action {id} did not end");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn cell<'a>(state: &'a Value, database: &str, table: &str) -> &'a Value {
    state["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["database"] == database && c["table"] == table)
        .unwrap_or_else(|| panic!("no {database}.{table} in {state}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_real_state_and_its_actions_follow_the_token_the_origin_and_the_lock() {
    let emulator = &*EMULATOR;
    let prefix = unique("con");
    let (goods, bad) = fleet(&prefix, 2).await;
    let mut dbs = goods.clone();
    dbs.push(bad.clone());
    let dataset = unique("con");
    let run = TestRun::new();
    let mut params = flat_params(&dbs, &["orders", "page_views"], &dataset, emulator, run.path());
    params["zero_dates"] = json!("fail");
    params["alerts"] =
        json!([{"kind": "webhook", "url": "http://127.0.0.1:9/hook?key=SECRETWEBHOOK123", "on": ["stale"]}]);
    run.params(&params);
    let first = run.run(&[]).await;
    assert_eq!(first.code, 1, "{}", first.all());

    let serve = Serve::start(&run, true).await;
    let (code, overview) = serve.get("/").await;
    assert_eq!(code, 200);
    assert!(overview.contains("<b>1</b> failed") && overview.contains("<b>5</b> ok"), "{overview}");
    assert_eq!(overview.matches("class=\"cell ").count(), 6);
    let (_, failed) = serve.get("/?status=failed").await;
    assert_eq!(failed.matches("class=\"cell failed\"").count(), 1);
    assert!(failed.contains("data-table=\"orders\"") && !failed.contains("data-table=\"page_views\""));
    let (code, table) = serve.get("/table/orders").await;
    assert_eq!(code, 200);
    assert!(table.contains(&bad) && table.contains("invalid date"), "{table}");
    let state = serve.json("/api/state").await;
    assert_eq!(state["tables"].as_array().unwrap().len(), 6);
    assert_eq!(cell(&state, &bad, "orders")["status"], "failed");
    assert_eq!(cell(&state, &goods[0], "orders")["status"], "ok");
    let (code, health) = serve.get("/healthz").await;
    assert_eq!(code, 503, "{health}");
    assert!(health.contains(&format!("{bad}.orders → default")), "{health}");
    let (code, metrics) = serve.get("/metrics").await;
    assert_eq!(code, 200, "{metrics}");
    let (_, config) = serve.get("/api/config").await;
    assert!(
        config.contains("\"alerts\"") && !config.contains("SECRETWEBHOOK123") && !config.contains(TOKEN),
        "{config}"
    );

    // The rules: no token, a wrong one, another site's page.
    assert_eq!(serve.post("/api/sync", None, None, json!({})).await.0, 401);
    assert_eq!(serve.post("/api/sync", Some("wrong-token-0123456789"), None, json!({})).await.0, 401);
    assert_eq!(serve.post("/api/sync", Some(TOKEN), Some("https://evil.example"), json!({})).await.0, 403);
    // Another run holds the lock: refused, and said so.
    {
        let lock = std::fs::OpenOptions::new().write(true).open(run.path().join("status/.lock")).unwrap();
        lock.try_lock().unwrap();
        let (code, why) = serve.post("/api/sync", Some(TOKEN), None, json!({})).await;
        assert_eq!(code, 409, "{why}");
        assert!(why["error"].as_str().unwrap().contains("already syncing"), "{why}");
    }

    fix(&bad).await;
    let synced = serve.act("/api/sync", json!({"databases": [bad], "tables": ["orders"]})).await;
    assert_eq!(synced["status"], "done", "{synced}");
    assert!(synced["result"].as_str().unwrap().contains(" OK"), "{synced}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = serve.json("/api/state").await;
    assert_eq!(cell(&state, &bad, "orders")["status"], "ok", "{state}");
    assert_eq!(serve.get("/healthz").await.0, 200);

    let reset = serve.act("/api/reset", json!({"database": bad, "table": "orders"})).await;
    assert_eq!(reset["status"], "done", "{reset}");
    assert!(run.state(&bad)["tables"]["orders"]["watermark"].is_null(), "the watermark is gone");
    let verified = serve.act("/api/verify", json!({"databases": [goods[0]], "tables": ["orders"]})).await;
    assert_eq!(verified["status"], "done", "{verified}");
    assert!(verified["result"].as_str().unwrap().contains("equal"), "{verified}");

    let (_, table) = serve.get("/table/orders").await;
    assert!(table.contains("the last 2 runs"), "the cron run and the console's: {table}");
    let actions = serve.json("/api/actions").await;
    let kinds: Vec<&str> = actions.as_array().unwrap().iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["sync", "reset", "verify"], "refused actions leave no record: {actions}");
    let log = run.log();
    assert!(!log.contains(TOKEN) && !log.contains("SECRETWEBHOOK123"), "no secret in the log");

    // Without a token: read-only.
    let read_only = Serve::start(&run, false).await;
    assert_eq!(read_only.post("/api/sync", Some(TOKEN), None, json!({})).await.0, 403);
    assert!(!read_only.get("/").await.1.contains("sync now"));
    for db in &dbs {
        mysql_exec(&format!("DROP DATABASE `{db}`")).await;
    }
}

/// A local webhook receiver: every JSON body it was posted.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<Value>| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push(body.0);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

fn events(received: &Arc<Mutex<Vec<Value>>>) -> Vec<String> {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|v| {
            format!(
                "{} {}.{}",
                v["event"].as_str().unwrap(),
                v["database"].as_str().unwrap(),
                v["table"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_go_out_once_per_transition_and_an_unreachable_webhook_fails_nothing() {
    let emulator = &*EMULATOR;
    let prefix = unique("alert");
    let (goods, bad) = fleet(&prefix, 1).await;
    let dbs = vec![goods[0].clone(), bad.clone()];
    let dataset = unique("alert");
    let run = TestRun::new();
    let (url, received) = receiver().await;
    let mut params = flat_params(&dbs, &["orders"], &dataset, emulator, run.path());
    params["zero_dates"] = json!("fail");
    params["alerts"] = json!([
        {"kind": "webhook", "url": url, "on": ["failure", "recovery", "stale"]},
        {"kind": "webhook", "url": format!("http://127.0.0.1:{}/nobody", free_port())},
        {"kind": "command", "run": ["sh", "-c", "cat >> alerts.jsonl; echo >> alerts.jsonl"], "on": ["failure", "recovery"]},
    ]);
    run.params(&params);
    assert_eq!(run.run(&[]).await.code, 1, "the bad tenant fails; the dead webhook changes nothing");
    assert_eq!(events(&received), [format!("failure {bad}.orders")]);
    assert_eq!(run.run(&[]).await.code, 1);
    assert_eq!(events(&received).len(), 1, "still failing: no second message");
    fix(&bad).await;
    run.sync(&[]).await;
    assert_eq!(events(&received), [format!("failure {bad}.orders"), format!("recovery {bad}.orders")]);
    let payload = received.lock().unwrap()[0].clone();
    assert!(payload["error"].as_str().unwrap().contains("invalid date"), "{payload}");
    assert_eq!(payload["consecutive_failures"], 1);
    let lines = std::fs::read_to_string(run.path().join("alerts.jsonl")).unwrap();
    assert_eq!(lines.lines().filter(|l| !l.is_empty()).count(), 2, "the command got both: {lines}");

    // serve notices a table past the freshness SLO, and says so once.
    params["freshness_slo_minutes"] = json!(30);
    run.params(&params);
    let path = run.path().join(format!("status/{}.json", goods[0]));
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["tables"]["orders"]["last_success_at"] = json!("2020-01-01T00:00:00");
    std::fs::write(&path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    let serve = Serve::start(&run, false).await;
    for _ in 0..100 {
        if events(&received).len() > 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(events(&received)[2..], [format!("stale {}.orders", goods[0])], "once, not every check");
    let stale = received.lock().unwrap()[2].clone();
    assert_eq!(stale["freshness_slo_minutes"], 30, "{stale}");
    drop(serve);
    for db in &dbs {
        mysql_exec(&format!("DROP DATABASE `{db}`")).await;
    }
}

/// ChromeDriver on a free port; killed when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        let port = free_port();
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            // Its own process group, with the browsers it starts: all are killed together, even
            // when a failed assertion leaves the session open.
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; scripts/test.sh installs it)");
        let driver = Self { child, url: format!("http://127.0.0.1:{port}") };
        for _ in 0..100 {
            if reqwest::get(format!("{}/status", driver.url)).await.is_ok() {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_real_browser_the_overview_filters_to_failures_and_sync_now_fixes_one() {
    use fantoccini::{ClientBuilder, Locator};
    let emulator = &*EMULATOR;
    let prefix = unique("web");
    let (goods, bad) = fleet(&prefix, 11).await;
    let mut dbs = goods.clone();
    dbs.push(bad.clone());
    let dataset = unique("web");
    let run = TestRun::new();
    let mut params = flat_params(&dbs, &["orders", "page_views"], &dataset, emulator, run.path());
    params["zero_dates"] = json!("fail");
    run.params(&params);
    assert_eq!(run.run(&[]).await.code, 1);
    let serve = Serve::start(&run, true).await;

    let driver = Driver::start().await;
    let mut caps = serde_json::Map::new();
    // The profile in the test's folder: Chromium's default one under /tmp outlives a killed browser.
    let profile = format!("--user-data-dir={}", run.path().join("chromium-profile").display());
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": "/usr/bin/chromium", "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900", profile]}),
    );
    let browser =
        ClientBuilder::rustls().unwrap().capabilities(caps).connect(&driver.url).await.expect("a browser session");
    browser.goto(&serve.url).await.unwrap();
    let counts = browser.find(Locator::Id("counts")).await.unwrap().text().await.unwrap();
    assert!(
        counts.contains("1 failed") && counts.contains("23 ok") && counts.contains("2 tables × 12 tenants"),
        "{counts}"
    );
    assert_eq!(browser.find_all(Locator::Css("td.cell")).await.unwrap().len(), 24);
    assert_eq!(browser.find_all(Locator::Css("td.cell.failed")).await.unwrap().len(), 1);
    let shots = repo_root().join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::write(shots.join("console-overview.png"), browser.screenshot().await.unwrap()).unwrap();

    // Filter to the failures.
    browser.find(Locator::Css("#status-filter option[value='failed']")).await.unwrap().click().await.unwrap();
    browser.find(Locator::Id("apply-filters")).await.unwrap().click().await.unwrap();
    url_with(&browser, "status=failed").await;
    let rows = browser.find_all(Locator::Css("#grid tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].attr("data-table").await.unwrap().as_deref(), Some("orders"));

    // Fix the data, enter the token, press "sync now" on the row: the failure goes away.
    fix(&bad).await;
    let token = browser.find(Locator::Id("token")).await.unwrap();
    token.send_keys(TOKEN).await.unwrap();
    browser.execute("document.getElementById('token').dispatchEvent(new Event('change'))", vec![]).await.unwrap();
    rows[0].find(Locator::Css("button.action")).await.unwrap().click().await.unwrap();
    let mut fixed = false;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let result = browser.find(Locator::Id("action-result")).await.ok();
        if let Some(r) = result
            && r.text().await.unwrap_or_default().starts_with("sync done")
            && browser.find_all(Locator::Css("td.cell.failed")).await.map(|c| c.is_empty()).unwrap_or(false)
        {
            fixed = true;
            break;
        }
    }
    assert!(fixed, "the sync ran and the page shows no failure");
    browser.goto(&serve.url).await.unwrap();
    let counts = browser.find(Locator::Id("counts")).await.unwrap().text().await.unwrap();
    assert!(counts.contains("0 failed") && counts.contains("24 ok"), "{counts}");
    browser.goto(&format!("{}/table/orders", serve.url)).await.unwrap();
    let tenants = browser.find_all(Locator::Css("#tenants tbody tr")).await.unwrap();
    assert_eq!(tenants.len(), 12);
    std::fs::write(shots.join("console-table.png"), browser.screenshot().await.unwrap()).unwrap();
    browser.close().await.unwrap();
    for db in &dbs {
        mysql_exec(&format!("DROP DATABASE `{db}`")).await;
    }
}

/// Waits for the current URL to contain `part` (the form's GET navigation).
async fn url_with(browser: &fantoccini::Client, part: &str) {
    for _ in 0..100 {
        if browser.current_url().await.unwrap().as_str().contains(part) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the page never went to a URL with {part}");
}
