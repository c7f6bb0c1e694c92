//! The guide's security advice, checked: TLS to MySQL in every `db_ssl_mode`, the user's
//! privileges, secrets in nothing a run leaves behind, private state and log files.

use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};

use crate::support::*;

/// `validate --online` for `params`, in a folder of its own.
async fn validate_online(params: &Value) -> RunOutput {
    let run = TestRun::new();
    run.params(params);
    run_cli_async(
        vec!["validate".into(), "--pipeline".into(), "params.json".into(), "--online".into()],
        run.path().into(),
    )
    .await
}

fn params_for(server: &PrivateServer, db: &str, mode: &str, ca: Option<&str>) -> Value {
    // State and log in the run's own folder (a folder made here would be gone before the run, and
    // the run would make it again under /tmp and leave it there).
    let mut p = flat_params(&[db.to_string()], &["orders"], &unique("tls"), &EMULATOR, std::path::Path::new("."));
    p["db_port"] = json!(server.port.to_string());
    p["db_user"] = json!("tls_reader");
    p["db_pass"] = json!("tls-reader-pass");
    p["db_ssl_mode"] = json!(mode);
    if let Some(ca) = ca {
        p["db_ssl_ca"] = json!(ca);
    }
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn every_ssl_mode_against_tls_plain_and_wrongly_named_servers() {
    let (tls, plain, other) = tokio::join!(
        tokio::task::spawn_blocking(PrivateServer::start),
        tokio::task::spawn_blocking(|| PrivateServer::start_with(&["--no-binlog", "--no-tls"])),
        tokio::task::spawn_blocking(|| PrivateServer::start_with(&["--no-binlog", "--tls-name", "db.other.invalid"])),
    );
    let (tls, plain, other) = (tls.unwrap(), plain.unwrap(), other.unwrap());
    let db = unique("tlsdb");
    for s in [&tls, &plain, &other] {
        create_shop_at(&s.url(), &db, 3, 5).await;
        // A user that may only read: the runs below then have no privilege warning.
        mysql_exec_at(
            &s.url(),
            &format!("CREATE USER 'tls_reader'@'%' IDENTIFIED BY 'tls-reader-pass'; GRANT SELECT ON `{db}`.* TO 'tls_reader'@'%'"),
        )
        .await;
    }
    let ca = tls.tls_file("ca.pem");
    let encrypted = |out: &RunOutput| out.stdout.contains("connected over TLS (TLSv1.");

    let out = validate_online(&params_for(&tls, &db, "disabled", None)).await;
    assert!(out.code == 0 && out.stdout.contains("connected unencrypted (db_ssl_mode disabled)"), "{}", out.all());
    let out = validate_online(&params_for(&tls, &db, "preferred", None)).await;
    assert!(out.code == 0 && encrypted(&out), "preferred takes TLS when offered: {}", out.all());
    let out = validate_online(&params_for(&plain, &db, "preferred", None)).await;
    assert!(out.code == 1 && out.stdout.contains("the connection is not encrypted"), "{}", out.all());
    let out = validate_online(&params_for(&tls, &db, "required", None)).await;
    assert!(out.code == 0 && encrypted(&out), "{}", out.all());
    let out = validate_online(&params_for(&plain, &db, "required", None)).await;
    assert!(out.code == 2 && out.stderr.contains("offers no TLS, and db_ssl_mode is required"), "{}", out.all());
    let out = validate_online(&params_for(&tls, &db, "verify_ca", Some(&ca))).await;
    assert!(out.code == 0 && encrypted(&out), "{}", out.all());
    let out = validate_online(&params_for(&tls, &db, "verify_ca", Some(&tls.tls_file("other-ca.pem")))).await;
    assert!(out.code == 2 && out.stderr.contains("does not chain to db_ssl_ca"), "a wrong CA: {}", out.all());
    let out = validate_online(&params_for(&tls, &db, "verify_identity", Some(&ca))).await;
    assert!(out.code == 0 && encrypted(&out), "{}", out.all());
    let other_ca = other.tls_file("ca.pem");
    let out = validate_online(&params_for(&other, &db, "verify_identity", Some(&other_ca))).await;
    assert!(
        out.code == 2 && out.stderr.contains("is not for `127.0.0.1`"),
        "another host's certificate: {}",
        out.all()
    );
    let out = validate_online(&params_for(&other, &db, "verify_ca", Some(&other_ca))).await;
    assert!(out.code == 0 && encrypted(&out), "verify_ca checks the CA only: {}", out.all());

    // A user that must present a client certificate.
    let user = unique("x509");
    mysql_exec_at(
        &tls.url(),
        &format!("CREATE USER '{user}'@'%' REQUIRE X509; GRANT SELECT ON `{db}`.* TO '{user}'@'%'"),
    )
    .await;
    let mut p = params_for(&tls, &db, "verify_identity", Some(&ca));
    p["db_user"] = json!(user);
    p["db_pass"] = json!("");
    let out = validate_online(&p).await;
    assert_eq!(out.code, 2, "no client certificate: {}", out.all());
    p["db_ssl_cert"] = json!(tls.tls_file("client.pem"));
    p["db_ssl_key"] = json!(tls.tls_file("client-key.pem"));
    let out = validate_online(&p).await;
    assert!(out.code == 0 && encrypted(&out), "{}", out.all());

    // A whole sync over verified TLS, the server counting the handshakes.
    let before = mysql_rows_at(&tls.url(), "SHOW GLOBAL STATUS LIKE 'Ssl_accepts'").await[0][1].clone().unwrap();
    let run = TestRun::new();
    let mut p = params_for(&tls, &db, "verify_identity", Some(&ca));
    p["status_dir"] = json!(run.path().join("status").display().to_string());
    run.params(&p);
    run.sync(&[]).await;
    let after = mysql_rows_at(&tls.url(), "SHOW GLOBAL STATUS LIKE 'Ssl_accepts'").await[0][1].clone().unwrap();
    assert!(after.parse::<u64>().unwrap() > before.parse::<u64>().unwrap(), "the run's connections used TLS");
    let how = Compared { mysql_url: Some(&tls.url()), ..Default::default() };
    assert_table_equal_as(&EMULATOR, p["bq_dataset"].as_str().unwrap(), &db, "orders", "id", &how).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn privileges_beyond_select_are_named_and_refused_with_require_readonly() {
    let db = unique("grants");
    create_shop(&db, 3, 5).await;
    let (reader, writer) = (unique("reader"), unique("writer"));
    mysql_exec(&format!(
        "CREATE USER '{reader}'@'%' IDENTIFIED BY 'pw-{reader}'; GRANT SELECT ON `{db}`.* TO '{reader}'@'%';
         CREATE USER '{writer}'@'%' IDENTIFIED BY 'pw-{writer}'; GRANT SELECT, INSERT, DELETE ON `{db}`.* TO '{writer}'@'%';"
    ))
    .await;
    let as_user = |run: &TestRun, user: &str| {
        let mut p = flat_params(std::slice::from_ref(&db), &["orders"], &unique("grants"), &EMULATOR, run.path());
        p["db_user"] = json!(user);
        p["db_pass"] = json!(format!("pw-{user}"));
        p
    };
    let run = TestRun::new();
    run.params(&as_user(&run, &reader));
    let out = run.sync(&[]).await;
    assert!(!out.stderr.contains("holds more than") && !run.log().contains("holds more than"), "{}", out.all());

    let run = TestRun::new();
    let params = as_user(&run, &writer);
    run.params(&params);
    let out = run.sync(&[]).await;
    assert!(
        out.stderr.contains(&format!("the MySQL user `{writer}` holds more than this tool needs (SELECT only)"))
            && out.stderr.contains(&format!("INSERT, DELETE on `{db}`.*")),
        "{}",
        out.all()
    );

    let run = TestRun::new();
    let mut params = as_user(&run, &writer);
    params["require_readonly"] = json!(true);
    run.params(&params);
    let out = run.run(&[]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stderr.contains("require_readonly is set, so nothing was read or written"), "{}", out.all());
    assert!(!run.path().join("status").exists(), "a refused run writes no state");
    let tables = list_tables(&EMULATOR, params["bq_dataset"].as_str().unwrap()).await;
    assert!(tables.is_empty(), "nothing reached BigQuery: {tables:?}");
}

/// Every file a run leaves, and what it prints, scanned for the password; with the umask at
/// 000 the state folder, state, lock and log files are still private.
#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_anything_a_run_leaves_and_private_files_under_any_umask() {
    let db = unique("secrets");
    create_shop(&db, 3, 5).await;
    let user = unique("sec");
    let password = format!("Pa55-{}-word", unique("x"));
    mysql_exec(&format!(
        "CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'; GRANT SELECT ON `{db}`.* TO '{user}'@'%';"
    ))
    .await;
    let run = TestRun::new();
    std::fs::write(run.path().join("db.pass"), format!("{password}\n")).unwrap();
    let mut params = flat_params(std::slice::from_ref(&db), &["orders"], &unique("secrets"), &EMULATOR, run.path());
    params["db_user"] = json!(user);
    params["db_pass_file"] = json!(run.path().join("db.pass").display().to_string());
    run.params(&params);
    let with_umask = |args: &[&str]| {
        let mut all = vec!["-c".to_string(), "umask 000; exec \"$@\"".into(), "sh".into(), binary().into()];
        all.extend(
            ["--pipeline", "params.json", "--report-json", "report.json", "--metrics-file", "run.prom"]
                .map(String::from),
        );
        all.extend(args.iter().map(|a| a.to_string()));
        let out = std::process::Command::new("sh").args(&all).current_dir(run.path()).output().unwrap();
        RunOutput::from(out)
    };
    let out = with_umask(&[]);
    assert_eq!(out.code, 0, "{}", out.all());
    // A failed connection too: the wrong password, and the server gone.
    std::fs::write(run.path().join("db.pass"), format!("{password}-wrong\n")).unwrap();
    let failed = with_umask(&[]);
    assert_eq!(failed.code, 2, "{}", failed.all());
    let mut everything = format!("{}{}", out.all(), failed.all());
    for file in files_under(run.path()) {
        if !file.ends_with("db.pass") && !file.ends_with("params.json") {
            everything.push_str(&std::fs::read_to_string(&file).unwrap_or_default());
        }
    }
    assert!(everything.contains(&db), "the scan read the run's files");
    assert!(!everything.contains(&password), "the password appears in what the run left");

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let status = run.path().join("status");
    assert_eq!(mode(&status), 0o700, "status_dir");
    assert_eq!(mode(&status.join(format!("{db}.json"))), 0o600, "state file");
    assert_eq!(mode(&status.join(".lock")), 0o600, "lock file");
    assert_eq!(mode(&run.path().join("sync.log")), 0o600, "log file");

    // A state folder others can read is reported by `status`.
    std::fs::set_permissions(&status, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run_cli_async(vec!["status".into(), "--pipeline".into(), "params.json".into()], run.path().into()).await;
    assert!(out.stdout.contains("other users may read this state") && out.stdout.contains("mode 755"), "{}", out.all());
}
