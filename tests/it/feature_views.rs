//! Feature views through arrow-flight's FlightSqlServiceClient: REFRESH, then online lookups as an
//! application makes them, with prepared statements (`= ?`, `IN (?, ?)`, a two-column key).

use std::sync::Arc;

use datafusion::arrow::array::{Array, Int64Array, RecordBatch};
use tonic::Code;

use crate::common::{TestServer, code, fetch, pretty, query, update_all};

fn binding(keys: &[i64]) -> RecordBatch {
    RecordBatch::try_from_iter(keys.iter().enumerate().map(|(i, &k)| {
        (
            i.to_string(),
            Arc::new(Int64Array::from(vec![k])) as Arc<dyn Array>,
        )
    }))
    .expect("binding")
}

#[tokio::test]
async fn example_views_refresh_and_serve_prepared_lookups() {
    let server = TestServer::with_example_views().await;
    let mut client = server.sql_client().await;
    update_all(
        &mut client,
        &[
            "CREATE TABLE interactions (user_id BIGINT, item_id BIGINT, event VARCHAR, ts TIMESTAMP)",
            "INSERT INTO interactions VALUES \
               (1, 10, 'view',  now() - INTERVAL '3 days'), \
               (1, 10, 'click', now() - INTERVAL '2 days'), \
               (1, 11, 'purchase', now() - INTERVAL '1 hour'), \
               (2, 11, 'view',  now() - INTERVAL '5 hours')",
            "CREATE TABLE items (item_id BIGINT, category VARCHAR)",
            "INSERT INTO items VALUES (10, 'books'), (11, 'games')",
        ],
    )
    .await;
    let refreshed = query(
        &mut client,
        "SELECT 1", // warm-up: the connection works before the refresh
    )
    .await;
    assert_eq!(refreshed.len(), 5);
    let info = client
        .execute("REFRESH FEATURE VIEWS".into(), None)
        .await
        .expect("refresh");
    let reports = fetch(&mut client, info).await;
    assert_eq!(reports.iter().map(RecordBatch::num_rows).sum::<usize>(), 5);

    let mut one = client
        .prepare(
            "SELECT user_id, events_30d, clicks_7d, purchases_30d FROM features.user_activity \
             WHERE user_id = ?"
                .into(),
            None,
        )
        .await
        .expect("prepare");
    one.set_parameters(binding(&[1])).expect("bind");
    let info = one.execute().await.expect("execute");
    assert_eq!(
        pretty(&fetch(&mut client, info).await),
        [
            "+---------+------------+-----------+---------------+",
            "| user_id | events_30d | clicks_7d | purchases_30d |",
            "+---------+------------+-----------+---------------+",
            "| 1       | 3          | 1         | 1             |",
            "+---------+------------+-----------+---------------+",
        ]
    );
    // The same handle, bound again: a key with no row gives no rows.
    one.set_parameters(binding(&[42])).expect("bind");
    let info = one.execute().await.expect("execute");
    assert!(
        fetch(&mut client, info)
            .await
            .iter()
            .all(|b| b.num_rows() == 0)
    );

    let mut many = client
        .prepare(
            "SELECT item_id, views_7d, purchases_30d FROM features.item_popularity \
             WHERE item_id IN (?, ?) ORDER BY item_id"
                .into(),
            None,
        )
        .await
        .expect("prepare");
    many.set_parameters(binding(&[11, 10])).expect("bind");
    let info = many.execute().await.expect("execute");
    assert_eq!(
        pretty(&fetch(&mut client, info).await),
        [
            "+---------+----------+---------------+",
            "| item_id | views_7d | purchases_30d |",
            "+---------+----------+---------------+",
            "| 10      | 1        | 0             |",
            "| 11      | 1        | 1             |",
            "+---------+----------+---------------+",
        ]
    );

    let mut pair = client
        .prepare(
            "SELECT interactions, purchases FROM features.user_item_affinity \
             WHERE user_id = ? AND item_id = ?"
                .into(),
            None,
        )
        .await
        .expect("prepare");
    pair.set_parameters(binding(&[1, 10])).expect("bind");
    let info = pair.execute().await.expect("execute");
    assert_eq!(
        pretty(&fetch(&mut client, info).await),
        [
            "+--------------+-----------+",
            "| interactions | purchases |",
            "+--------------+-----------+",
            "| 2            | 0         |",
            "+--------------+-----------+",
        ]
    );

    // A view over a join (interactions x items), recomputed whole: user 1's taste by category.
    let taste = query(
        &mut client,
        "SELECT category, events, round(share, 4) AS share, ctr FROM features.user_category \
         WHERE user_id = 1 ORDER BY category",
    )
    .await;
    assert_eq!(
        taste,
        [
            "+----------+--------+--------+-----+",
            "| category | events | share  | ctr |",
            "+----------+--------+--------+-----+",
            "| books    | 2      | 0.6667 | 1.0 |",
            "| games    | 1      | 0.3333 |     |",
            "+----------+--------+--------+-----+",
        ]
    );

    let plan = query(
        &mut client,
        "EXPLAIN SELECT * FROM features.user_item_affinity WHERE user_id = 1 AND item_id = 10",
    )
    .await;
    assert!(
        plan.iter()
            .any(|l| l.contains("OnlineLookupExec: view=user_item_affinity")),
        "{plan:#?}"
    );

    let error = client
        .execute("REFRESH FEATURE VIEW nope".into(), None)
        .await
        .expect_err("unknown view");
    assert_eq!(code(&error), Code::NotFound);
}

/// The same prepared lookup, run again after a refresh, answers from the new index (the server keeps
/// the statement's plan between requests and must drop it when the view changes). A key that is no
/// BIGINT ('one') is InvalidArgument naming the key, and the handle still works with a right one.
#[tokio::test]
async fn a_prepared_lookup_follows_each_refresh() {
    let server = TestServer::with_example_views().await;
    let mut client = server.sql_client().await;
    update_all(
        &mut client,
        &[
            "CREATE TABLE interactions (user_id BIGINT, item_id BIGINT, event VARCHAR, ts TIMESTAMP)",
            "INSERT INTO interactions VALUES (1, 10, 'view', now() - INTERVAL '1 hour')",
            "CREATE TABLE items (item_id BIGINT, category VARCHAR)",
            "INSERT INTO items VALUES (10, 'books')",
            "REFRESH FEATURE VIEWS",
        ],
    )
    .await;
    let mut lookup = client
        .prepare(
            "SELECT events_30d FROM features.user_activity WHERE user_id = ?".into(),
            None,
        )
        .await
        .expect("prepare");
    let mut events = Vec::new();
    for round in 0..3 {
        if round > 0 {
            update_all(
                &mut client,
                &[
                    "INSERT INTO interactions VALUES (1, 10, 'click', now() - INTERVAL '5 minutes')",
                    "REFRESH FEATURE VIEW user_activity",
                ],
            )
            .await;
        }
        // Twice per round: the second request is the one answered from the kept plan.
        for _ in 0..2 {
            lookup.set_parameters(binding(&[1])).expect("bind");
            let info = lookup.execute().await.expect("execute");
            let batches = fetch(&mut client, info).await;
            events.push(
                batches[0]
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("events_30d")
                    .value(0),
            );
        }
    }
    assert_eq!(events, [1, 1, 2, 2, 3, 3]);

    let wrong = RecordBatch::try_from_iter([(
        "0",
        Arc::new(datafusion::arrow::array::StringArray::from(vec!["one"])) as Arc<dyn Array>,
    )])
    .expect("wrong key");
    lookup.set_parameters(wrong).expect("bind");
    let error = lookup.execute().await.expect_err("a string key");
    assert_eq!(code(&error), Code::InvalidArgument, "{error}");
    assert!(error.to_string().contains("key user_id"), "{error}");
    lookup.set_parameters(binding(&[1])).expect("bind");
    let info = lookup.execute().await.expect("execute");
    assert_eq!(fetch(&mut client, info).await[0].num_rows(), 1);
}

/// `RELOAD FEATURE VIEWS` reads the directory again: a new file is a new view, a changed one is
/// served from its table until the next (full) refresh, a broken one is reported and its previous
/// version keeps serving, a removed one goes. A prepared lookup follows every swap.
#[tokio::test]
async fn reload_picks_up_new_changed_broken_and_removed_view_files() {
    let sql_dir = tempfile::tempdir().expect("sql dir");
    let views = sql_dir.path().join("features");
    std::fs::create_dir_all(&views).expect("features dir");
    let counts = |n: &str| {
        format!(
            "-- @entity user_id\n-- @event_time ts\n-- @materialize offline, online\n\
             SELECT user_id, max(ts) AS ts, {n} AS n FROM events GROUP BY user_id\n"
        )
    };
    std::fs::write(views.join("counts.sql"), counts("count(*)")).expect("counts");
    let server = TestServer::start_with(quiver::session::SessionOptions {
        sql_dir: Some(sql_dir.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let mut client = server.sql_client().await;
    update_all(
        &mut client,
        &[
            "CREATE TABLE events (user_id BIGINT, ts TIMESTAMP)",
            "INSERT INTO events VALUES (1, now()), (1, now()), (2, now())",
            "REFRESH FEATURE VIEWS",
        ],
    )
    .await;
    let mut lookup = client
        .prepare(
            "SELECT n FROM features.counts WHERE user_id = ?".into(),
            None,
        )
        .await
        .expect("prepare");
    let mut n_of_user_1 = async || {
        lookup.set_parameters(binding(&[1])).expect("bind");
        let info = lookup.execute().await.expect("execute");
        pretty(&fetch(&mut server.sql_client().await, info).await)
    };
    assert!(n_of_user_1().await.iter().any(|l| l == "| 2 |"));
    let reload = async |client: &mut _| query(client, "RELOAD FEATURE VIEWS").await;

    std::fs::write(
        views.join("sums.sql"),
        counts("sum(user_id)").replace("AS n", "AS total"),
    )
    .expect("sums");
    let report = reload(&mut client).await;
    assert!(
        report.iter().any(|l| l.contains("| sums | loaded |")),
        "{report:?}"
    );
    assert_eq!(report.len(), 5, "one row: {report:?}");
    client
        .execute_update("REFRESH FEATURE VIEW sums".into(), None)
        .await
        .expect("refresh sums");
    let sums = query(
        &mut client,
        "SELECT total FROM features.sums WHERE user_id = 1",
    )
    .await;
    assert!(sums.iter().any(|l| l == "| 2     |"), "{sums:?}");

    std::fs::write(views.join("counts.sql"), counts("count(*) * 10")).expect("changed");
    let report = reload(&mut client).await;
    assert!(
        report.iter().any(|l| l.contains("| counts | reloaded |")),
        "{report:?}"
    );
    assert!(
        n_of_user_1().await.iter().any(|l| l == "| 2 |"),
        "served from its table"
    );
    let refreshed = query(&mut client, "REFRESH FEATURE VIEW counts").await;
    assert!(
        refreshed.iter().any(|l| l.contains("full")),
        "{refreshed:?}"
    );
    assert!(n_of_user_1().await.iter().any(|l| l == "| 20 |"));

    // A renamed key: the table does not fit until the refresh rewrites it.
    let renamed = counts("count(*)")
        .replace("@entity user_id", "@entity uid")
        .replace("SELECT user_id,", "SELECT user_id AS uid,");
    std::fs::write(views.join("counts.sql"), renamed).expect("renamed");
    let report = reload(&mut client).await;
    assert!(
        report
            .iter()
            .any(|l| l.contains("| counts | reloaded | not served online until the next REFRESH")),
        "{report:?}"
    );
    client
        .execute_update("REFRESH FEATURE VIEW counts".into(), None)
        .await
        .expect("refresh renamed");
    let plan = query(
        &mut client,
        "EXPLAIN SELECT n FROM features.counts WHERE uid = 1",
    )
    .await;
    assert!(
        plan.iter().any(|l| l.contains("OnlineLookupExec")),
        "{plan:?}"
    );
    let renamed = query(&mut client, "SELECT n FROM features.counts WHERE uid = 1").await;
    assert!(renamed.iter().any(|l| l == "| 2 |"), "{renamed:?}");
    std::fs::write(views.join("counts.sql"), counts("count(*) * 10")).expect("back");
    reload(&mut client).await;
    query(&mut client, "REFRESH FEATURE VIEW counts").await;
    assert!(n_of_user_1().await.iter().any(|l| l == "| 20 |"));

    std::fs::write(views.join("counts.sql"), "SELECT 1").expect("broken");
    let report = reload(&mut client).await;
    assert!(
        report.iter().any(|l| l.contains("| counts | failed | ")),
        "{report:?}"
    );
    assert!(
        report.iter().any(|l| l.contains("counts.sql:")),
        "{report:?}"
    );
    assert!(
        n_of_user_1().await.iter().any(|l| l == "| 20 |"),
        "the previous version"
    );
    let again = reload(&mut client).await;
    assert!(
        !again.iter().any(|l| l.contains("counts")),
        "reported once: {again:?}"
    );

    std::fs::remove_file(views.join("sums.sql")).expect("remove");
    let report = reload(&mut client).await;
    assert!(
        report.iter().any(|l| l.contains("| sums | removed |")),
        "{report:?}"
    );
    let error = client
        .execute_update("REFRESH FEATURE VIEW sums".into(), None)
        .await
        .expect_err("gone");
    assert_eq!(code(&error), Code::NotFound, "{error}");

    let plain = TestServer::start().await;
    let error = plain
        .sql_client()
        .await
        .execute("RELOAD FEATURE VIEWS".into(), None)
        .await
        .expect_err("no sql dir");
    assert_eq!(code(&error), Code::InvalidArgument, "{error}");
    assert!(error.to_string().contains("--sql-dir"), "{error}");
}
