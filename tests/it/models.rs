//! Models through arrow-flight's FlightSqlServiceClient: `recommend` as a prepared statement with
//! the user bound (as an application calls it), `predict`, and the gRPC codes of bad calls.

use std::sync::Arc;

use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::array::{Array, AsArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{Float32Type, Int32Type};
use quiver::session::SessionOptions;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{TestServer, code, fetch, update_all};

async fn with_test_models() -> TestServer {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    TestServer::start_with(SessionOptions {
        models_dir: Some(root.join("tests").join("models")),
        ..Default::default()
    })
    .await
}

/// The tables the test models' `[items]`, `[exclude]` and `[fallback]` queries read.
async fn create_items_and_interactions(client: &mut FlightSqlServiceClient<Channel>) {
    update_all(
        client,
        &[
            "CREATE TABLE items AS SELECT CAST(value AS BIGINT) AS item_id FROM generate_series(0, 199)",
            "CREATE TABLE interactions AS SELECT CAST(value % 40 AS BIGINT) AS user_id, \
             CAST((value * 7) % 200 AS BIGINT) AS item_id FROM generate_series(0, 499)",
            "RELOAD MODELS",
        ],
    )
    .await;
}

#[tokio::test]
async fn recommend_and_predict_from_the_rust_client() {
    let server = with_test_models().await;
    let mut client = server.sql_client().await;
    create_items_and_interactions(&mut client).await;

    let mut recommend = client
        .prepare(
            "SELECT item_id, score, rank FROM recommend('mf', ?, 5)".into(),
            None,
        )
        .await
        .expect("prepare");
    let mut firsts = Vec::new();
    for user in [3i64, 4, 45] {
        let params = RecordBatch::try_from_iter([(
            "0",
            Arc::new(Int64Array::from(vec![user])) as Arc<dyn Array>,
        )])
        .expect("params");
        recommend.set_parameters(params).expect("bind");
        let info = recommend.execute().await.expect("execute");
        let batches = fetch(&mut client, info).await;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 5, "user {user}");
        let ranks: Vec<i32> = batches
            .iter()
            .flat_map(|b| b.column(2).as_primitive::<Int32Type>().values().to_vec())
            .collect();
        assert_eq!(ranks, [1, 2, 3, 4, 5]);
        firsts.push(
            batches[0]
                .column(0)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .value(0),
        );
    }
    // Different users, different lists (45 is unknown: the popularity fallback).
    assert_ne!(firsts[0], firsts[1]);

    let info = client
        .execute(
            "SELECT predict('ranker', [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]) AS s".into(),
            None,
        )
        .await
        .expect("predict");
    let batches = fetch(&mut client, info).await;
    let score = batches[0].column(0).as_primitive::<Float32Type>().value(0);
    assert!((0.0..=1.0).contains(&score));

    for (sql, expected) in [
        ("SELECT predict('nope', 1.0)", Code::InvalidArgument),
        (
            "SELECT * FROM recommend('ranker', 1, 5)",
            Code::InvalidArgument,
        ),
        ("SELECT predict('ranker', 'x')", Code::InvalidArgument),
    ] {
        let error = client.execute(sql.into(), None).await.expect_err(sql);
        assert_eq!(code(&error), expected, "{sql}: {error}");
    }
}

/// A `recommend` call is scored at GetFlightInfo and its rows travel in the ticket, so DoGet has
/// nothing to plan: the ticket grows with k. Renamed columns keep the names the query gave them, and
/// a call joined with a table still goes through DataFusion (its ticket carries only the statement).
#[tokio::test]
async fn a_recommend_call_is_answered_at_get_flight_info() {
    let server = with_test_models().await;
    let mut client = server.sql_client().await;
    create_items_and_interactions(&mut client).await;
    let ticket_size = |info: &arrow_flight::FlightInfo| {
        info.endpoint[0]
            .ticket
            .as_ref()
            .map_or(0, |t| t.ticket.len())
    };
    let small = client
        .execute("SELECT * FROM recommend('mf', 3, 2)".into(), None)
        .await
        .expect("k = 2");
    let large_sql = "SELECT r.item_id AS id, r.rank FROM recommend('mf', 3, 150) r";
    let large = client
        .execute(large_sql.into(), None)
        .await
        .expect("k = 150");
    let joined_sql = "SELECT r.item_id, i.item_id FROM recommend('mf', 3, 150) r \
                      JOIN items i ON r.item_id = i.item_id";
    let joined = client
        .execute(joined_sql.into(), None)
        .await
        .expect("joined");
    // 148 more rows of (item_id, score, rank) are well over 1 KB.
    assert!(
        ticket_size(&large) > ticket_size(&small) + 1000,
        "{} vs {}",
        ticket_size(&large),
        ticket_size(&small)
    );
    assert!(ticket_size(&joined) < ticket_size(&large) / 2);
    let batches = fetch(&mut client, large).await;
    assert_eq!(batches[0].schema().field(0).name(), "id");
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, 150);
    let joined: usize = fetch(&mut client, joined)
        .await
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    assert_eq!(joined, rows);
}

/// A prepared call with both user and k bound gives, request after request, the rows of the call
/// with those arguments written out; bad arguments are InvalidArgument naming them, and the handle
/// keeps working.
#[tokio::test]
async fn a_prepared_recommend_call_binds_user_and_k_on_every_request() {
    let server = with_test_models().await;
    let mut client = server.sql_client().await;
    create_items_and_interactions(&mut client).await;
    let mut recommend = client
        .prepare(
            "SELECT item_id, score FROM recommend('mf', ?, ?)".into(),
            None,
        )
        .await
        .expect("prepare");
    let bind = |user: Arc<dyn Array>, k: i64| {
        RecordBatch::try_from_iter([
            ("0", user),
            ("1", Arc::new(Int64Array::from(vec![k])) as Arc<dyn Array>),
        ])
        .expect("params")
    };
    for (user, k) in [(3i64, 4i64), (4, 2), (3, 4), (45, 3)] {
        recommend
            .set_parameters(bind(Arc::new(Int64Array::from(vec![user])), k))
            .expect("bind");
        let info = recommend.execute().await.expect("execute");
        let prepared = fetch(&mut client, info).await;
        let info = client
            .execute(
                format!("SELECT item_id, score FROM recommend('mf', {user}, {k})"),
                None,
            )
            .await
            .expect("literal");
        let literal = fetch(&mut client, info).await;
        assert_eq!(prepared, literal, "user {user}, k {k}");
    }
    for (user, k, message) in [
        (
            Arc::new(Int64Array::from(vec![3])) as Arc<dyn Array>,
            20_000,
            "k must be between 0 and 10000",
        ),
        (
            Arc::new(datafusion::arrow::array::StringArray::from(vec!["x"])) as Arc<dyn Array>,
            3,
            "user_id must be an integer",
        ),
    ] {
        recommend.set_parameters(bind(user, k)).expect("bind");
        let error = recommend.execute().await.expect_err(message);
        assert_eq!(code(&error), Code::InvalidArgument, "{error}");
        assert!(error.to_string().contains(message), "{error}");
    }
    recommend
        .set_parameters(bind(Arc::new(Int64Array::from(vec![3])), 1))
        .expect("bind");
    let info = recommend.execute().await.expect("execute");
    let rows: usize = fetch(&mut client, info)
        .await
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    assert_eq!(rows, 1);
}
