use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// An application that stamps DATETIME in a zone behind the server's, plus one row dated in
/// the future: the watermark comes from rows at or below the source's clock, so the future row
/// cannot pin it ahead of the application's stamps.
#[tokio::test(flavor = "multi_thread")]
async fn a_future_dated_row_does_not_hide_changes_stamped_behind_the_servers_zone() {
    future_dated_row_case(Some("-05:00")).await;
}

/// The same with nothing configured: the cursor is compared in the server's own zone (UTC
/// here), still ahead of every application stamp, and the future row still moves nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_future_dated_row_does_not_hide_changes_with_no_cursor_zone_configured() {
    future_dated_row_case(None).await;
}

async fn future_dated_row_case(cursor_time_zone: Option<&str>) {
    let emulator = &*EMULATOR;
    let db = unique("behind");
    create_shop(&db, 20, 200).await;
    // The application writes local time 5 hours behind the server's UTC clock.
    mysql_exec(&format!(
        "UPDATE `{db}`.orders SET updated_at = UTC_TIMESTAMP(6) - INTERVAL 5 HOUR - INTERVAL id SECOND;
         UPDATE `{db}`.orders SET updated_at = '2099-01-01 00:00:00' WHERE id = 1;"
    ))
    .await;
    let dataset = unique("behind");
    let run = TestRun::new();
    let mut params = flat_params(std::slice::from_ref(&db), &["orders"], &dataset, emulator, run.path());
    if let Some(zone) = cursor_time_zone {
        params["cursor_time_zone"] = json!(zone);
    }
    run.params(&params);
    let out = run.sync(&[]).await;
    assert!(out.stdout.contains("1 row has a cursor later than the source's clock"), "{}", out.stdout);
    let watermark = run.state(&db)["tables"]["orders"]["watermark"]["value"].as_str().unwrap().to_string();
    assert!(!watermark.starts_with("2099"), "{watermark}");
    mysql_exec(&format!(
        "UPDATE `{db}`.orders SET amount = 4242, updated_at = UTC_TIMESTAMP(6) - INTERVAL 5 HOUR WHERE id BETWEEN 10 AND 20"
    ))
    .await;
    let out = run.sync(&[]).await;
    assert!(out.stdout.contains("INCREMENTAL"), "{}", out.stdout);
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;
}

/// The autumn clock change: an hour of wall-clock time repeats. A watermark taken before it is
/// ahead of rows stamped in the repeated hour; the next read sees the zone's offset shrank and
/// widens its window by the difference. The zone is a real MariaDB time zone whose clock goes
/// back an hour a few seconds into the test.
#[tokio::test(flavor = "multi_thread")]
async fn changes_in_the_repeated_hour_after_a_clock_change_are_synced() {
    let emulator = &*EMULATOR;
    let zone = format!("Test/FallBack_{}", unique("z"));
    let back_in = 12;
    mysql_exec(&format!(
        "INSERT INTO mysql.time_zone (Use_leap_seconds) VALUES ('N');
         SET @tz = LAST_INSERT_ID();
         INSERT INTO mysql.time_zone_name (Name, Time_zone_id) VALUES ('{zone}', @tz);
         INSERT INTO mysql.time_zone_transition_type (Time_zone_id, Transition_type_id, `Offset`, Is_DST, Abbreviation)
           VALUES (@tz, 0, 3600, 1, 'TDT'), (@tz, 1, 0, 0, 'TST');
         INSERT INTO mysql.time_zone_transition (Time_zone_id, Transition_time, Transition_type_id)
           VALUES (@tz, 0, 0), (@tz, UNIX_TIMESTAMP() + {back_in}, 1);"
    ))
    .await;
    let db = unique("fallback");
    create_shop(&db, 20, 100).await;
    let local = format!("CONVERT_TZ(UTC_TIMESTAMP(6), '+00:00', '{zone}')");
    mysql_exec(&format!("UPDATE `{db}`.orders SET updated_at = {local} - INTERVAL id SECOND")).await;
    let dataset = unique("fallback");
    let run = TestRun::new();
    let mut params = flat_params(std::slice::from_ref(&db), &["orders"], &dataset, emulator, run.path());
    params["cursor_time_zone"] = json!(zone);
    run.params(&params);
    run.sync(&[]).await;
    let watermark = &run.state(&db)["tables"]["orders"]["watermark"];
    assert_eq!(watermark["utc_offset"], 3600, "{watermark}");

    // After the change the application's stamps are an hour behind the watermark.
    tokio::time::sleep(Duration::from_secs(back_in + 1)).await;
    mysql_exec(&format!("UPDATE `{db}`.orders SET amount = 777, updated_at = {local} WHERE id BETWEEN 40 AND 45"))
        .await;
    let out = run.sync(&[]).await;
    assert!(out.stdout.contains("INCREMENTAL"), "{}", out.stdout);
    let window = run.report()["outcomes"][0]["window"].as_str().unwrap().to_string();
    assert!(window.contains("moved back 60 min"), "{window}");
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;
}
