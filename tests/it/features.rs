//! Feature engineering through arrow-flight's FlightSqlServiceClient: a point-in-time training set
//! built with ASOF JOIN and the recommender functions, including as a prepared statement.

use std::sync::Arc;

use datafusion::arrow::array::{Array, Int64Array, RecordBatch};
use tonic::Code;

use crate::common::{TestServer, code, fetch, pretty, query, update_all};

#[tokio::test]
async fn asof_join_builds_a_point_in_time_training_set() {
    let server = TestServer::start().await;
    let mut client = server.sql_client().await;
    update_all(
        &mut client,
        &[
            "CREATE TABLE labels (user_id BIGINT, ts TIMESTAMP, clicked BOOLEAN) AS VALUES \
             (1, TIMESTAMP '2024-01-02', true), (1, TIMESTAMP '2024-01-05', false), \
             (2, TIMESTAMP '2024-01-03', true)",
            // user 1's second row is 1 µs after the first label: it must not leak into it.
            "CREATE TABLE activity (user_id BIGINT, ts TIMESTAMP, clicks_7d BIGINT) AS VALUES \
             (1, TIMESTAMP '2024-01-01', 3), (1, TIMESTAMP '2024-01-02 00:00:00.000001', 7), \
             (2, TIMESTAMP '2024-01-04', 9)",
        ],
    )
    .await;
    let training = "SELECT l.user_id, l.ts, l.clicked, f.clicks_7d, \
         bucketize(f.clicks_7d, [1, 5]) AS bucket, feature_hash(l.user_id, 8) AS user_bucket \
         FROM labels l ASOF JOIN activity f MATCH_CONDITION (l.ts >= f.ts) ON l.user_id = f.user_id \
         ORDER BY l.user_id, l.ts";
    assert_eq!(
        query(&mut client, training).await,
        [
            "+---------+---------------------+---------+-----------+--------+-------------+",
            "| user_id | ts                  | clicked | clicks_7d | bucket | user_bucket |",
            "+---------+---------------------+---------+-----------+--------+-------------+",
            "| 1       | 2024-01-02T00:00:00 | true    | 3         | 1      | 3           |",
            "| 1       | 2024-01-05T00:00:00 | false   | 7         | 2      | 3           |",
            "| 2       | 2024-01-03T00:00:00 | true    |           |        | 7           |",
            "+---------+---------------------+---------+-----------+--------+-------------+",
        ]
    );

    let mut prepared = client
        .prepare(
            "SELECT f.clicks_7d FROM labels l ASOF JOIN activity f \
             MATCH_CONDITION (l.ts >= f.ts) ON l.user_id = f.user_id WHERE l.user_id = ? \
             ORDER BY l.ts"
                .into(),
            None,
        )
        .await
        .expect("prepare");
    let binding =
        RecordBatch::try_from_iter([("0", Arc::new(Int64Array::from(vec![1])) as Arc<dyn Array>)])
            .expect("binding");
    prepared.set_parameters(binding).expect("bind");
    let info = prepared.execute().await.expect("execute");
    let batches = fetch(&mut client, info).await;
    assert_eq!(
        pretty(&batches),
        [
            "+-----------+",
            "| clicks_7d |",
            "+-----------+",
            "| 3         |",
            "| 7         |",
            "+-----------+",
        ]
    );

    let error = client
        .execute(
            "SELECT * FROM labels l ASOF JOIN activity f MATCH_CONDITION (l.ts = f.ts) \
             ON l.user_id = f.user_id"
                .into(),
            None,
        )
        .await
        .expect_err("= is not an ASOF match condition");
    assert_eq!(code(&error), Code::InvalidArgument);
    assert!(error.to_string().contains("MATCH_CONDITION"), "{error}");
}
