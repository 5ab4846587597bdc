//! What keeps state derived from a Delta table follows its commits: feature view refresh plans
//! (unchanged, incremental after appends, full after anything else) and the `[exclude]` index of a
//! two-tower model (rows of appended commits added, rebuilt after a delete). In process, no server:
//! the session is built from options alone.

use datafusion::arrow::array::{Array, RecordBatch, StringArray};
use datafusion::arrow::util::display::array_value_to_string;
use futures::TryStreamExt;
use quiver::query::run_sql;
use quiver::session::{QuiverSession, SessionOptions};

async fn run(session: &QuiverSession, sql: &str) -> Vec<RecordBatch> {
    run_sql(session, sql)
        .await
        .expect(sql)
        .try_collect()
        .await
        .expect(sql)
}

/// Every value of `column` in the answer to `sql`, as text.
async fn column(session: &QuiverSession, sql: &str, column: &str) -> Vec<String> {
    let mut values = Vec::new();
    for batch in run(session, sql).await {
        let array = batch.column_by_name(column).expect(column);
        for row in 0..array.len() {
            values.push(array_value_to_string(array, row).expect("text"));
        }
    }
    values
}

async fn session(options: SessionOptions) -> (tempfile::TempDir, QuiverSession) {
    let warehouse = tempfile::tempdir().expect("tempdir");
    let session = QuiverSession::open_with(
        url::Url::from_directory_path(warehouse.path()).expect("url"),
        options,
    )
    .await
    .expect("session");
    (warehouse, session)
}

const VIEW: &str = "\
-- @entity user_id
-- @event_time seen
-- @materialize offline, online
SELECT user_id, max(ts) AS seen, count(*) AS events, sum(clicks) AS clicks
FROM events GROUP BY user_id
";

#[tokio::test]
async fn a_refresh_recomputes_only_what_appends_touched() {
    let sql_dir = tempfile::tempdir().expect("sql dir");
    std::fs::create_dir_all(sql_dir.path().join("features")).expect("features dir");
    std::fs::write(sql_dir.path().join("features/activity.sql"), VIEW).expect("view");
    let (_warehouse, session) = session(SessionOptions {
        sql_dir: Some(sql_dir.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    run(
        &session,
        "CREATE TABLE events AS SELECT value % 10 AS user_id, value % 3 AS clicks, \
         to_timestamp_seconds(1790000000 + value) AS ts FROM generate_series(1, 100)",
    )
    .await;
    let refresh = async |session: &QuiverSession| {
        column(session, "REFRESH FEATURE VIEW activity", "mode").await[0].clone()
    };
    let mode = refresh(&session).await;
    assert_eq!(mode, "full", "the first refresh computes every entity");

    let mode = refresh(&session).await;
    assert_eq!(mode, "unchanged");

    run(
        &session,
        "INSERT INTO events VALUES (3, 2, to_timestamp_seconds(1790000200)), \
         (42, 1, to_timestamp_seconds(1790000300))",
    )
    .await;
    let mode = refresh(&session).await;
    assert_eq!(
        mode, "incremental",
        "an append recomputes the entities it touched"
    );
    let events = column(
        &session,
        "SELECT events FROM features.activity WHERE user_id IN (3, 42) ORDER BY user_id",
        "events",
    )
    .await;
    assert_eq!(events, ["11", "1"]);

    run(&session, "DELETE FROM events WHERE user_id = 42").await;
    let sql = "REFRESH FEATURE VIEW activity";
    let batches = run(&session, sql).await;
    let mode = batches[0].column_by_name("mode").expect("mode");
    let reason = batches[0].column_by_name("reason").expect("reason");
    let reason = reason
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("text")
        .value(0);
    assert_eq!(array_value_to_string(mode, 0).expect("text"), "full");
    assert!(reason.contains("had rows deleted or replaced"), "{reason}");
    let left = column(
        &session,
        "SELECT count(*) AS n FROM features.activity WHERE user_id = 42",
        "n",
    )
    .await;
    assert_eq!(left, ["0"]);
}

/// The `exclude=` part of EXPLAIN for a recommend call.
async fn exclusion(session: &QuiverSession) -> String {
    let plans = column(
        session,
        "EXPLAIN SELECT * FROM recommend('mf', 3, 5)",
        "plan",
    )
    .await;
    let plan = plans.join("\n");
    let at = plan.find("exclude=").expect("the plan names its exclusion");
    plan[at..].lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn the_exclude_index_adds_appended_rows_and_rebuilds_after_a_delete() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (_warehouse, session) = session(SessionOptions {
        models_dir: Some(root.join("tests").join("models")),
        ..Default::default()
    })
    .await;
    for sql in crate::common::RECOMMEND_TABLES {
        run(&session, sql).await;
    }
    let first = exclusion(&session).await;
    assert!(
        first.contains("at version 0 (40 keys, 500 rows)"),
        "{first}"
    );

    // The item user 3 would be recommended first is seen now: the next answer leaves it out.
    let top = column(
        &session,
        "SELECT item_id FROM recommend('mf', 3, 1)",
        "item_id",
    )
    .await;
    run(
        &session,
        &format!("INSERT INTO interactions VALUES (3, {}), (41, 1)", top[0]),
    )
    .await;
    let appended = exclusion(&session).await;
    assert!(
        appended.contains("at version 1 (41 keys, 502 rows), 1 appends since built"),
        "the appended commit's rows are added to the index: {appended}"
    );
    let next = column(
        &session,
        "SELECT item_id FROM recommend('mf', 3, 1)",
        "item_id",
    )
    .await;
    assert_ne!(next, top, "the item just seen is excluded");

    run(&session, "DELETE FROM interactions WHERE user_id = 41").await;
    let rebuilt = exclusion(&session).await;
    assert!(
        rebuilt.contains("at version 2 (40 keys, 501 rows)") && !rebuilt.contains("appends"),
        "a delete cannot be followed as appends: the index is built again: {rebuilt}"
    );
}
