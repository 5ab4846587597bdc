//! Feature views through arrow-flight's FlightSqlServiceClient: REFRESH, then online lookups as an
//! application makes them, with prepared statements (`= ?`, `IN (?, ?)`, a two-column key).

use std::sync::Arc;

use datafusion::arrow::array::{Array, Int64Array, RecordBatch};
use tonic::Code;

use crate::common::{TestServer, code, fetch, pretty, query};

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
    for statement in [
        "CREATE TABLE interactions (user_id BIGINT, item_id BIGINT, event VARCHAR, ts TIMESTAMP)",
        "INSERT INTO interactions VALUES \
           (1, 10, 'view',  now() - INTERVAL '3 days'), \
           (1, 10, 'click', now() - INTERVAL '2 days'), \
           (1, 11, 'purchase', now() - INTERVAL '1 hour'), \
           (2, 11, 'view',  now() - INTERVAL '5 hours')",
        "CREATE TABLE items (item_id BIGINT, category VARCHAR)",
        "INSERT INTO items VALUES (10, 'books'), (11, 'games')",
    ] {
        client
            .execute_update(statement.into(), None)
            .await
            .expect(statement);
    }
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
    for statement in [
        "CREATE TABLE interactions (user_id BIGINT, item_id BIGINT, event VARCHAR, ts TIMESTAMP)",
        "INSERT INTO interactions VALUES (1, 10, 'view', now() - INTERVAL '1 hour')",
        "CREATE TABLE items (item_id BIGINT, category VARCHAR)",
        "INSERT INTO items VALUES (10, 'books')",
        "REFRESH FEATURE VIEWS",
    ] {
        client
            .execute_update(statement.into(), None)
            .await
            .expect(statement);
    }
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
            for statement in [
                "INSERT INTO interactions VALUES (1, 10, 'click', now() - INTERVAL '5 minutes')",
                "REFRESH FEATURE VIEW user_activity",
            ] {
                client
                    .execute_update(statement.into(), None)
                    .await
                    .expect(statement);
            }
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
