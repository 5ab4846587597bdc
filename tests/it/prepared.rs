//! Prepared statements answered without planning (`quiver::query::prepared`): an online lookup or a
//! recommend call is planned once per SQL text and then only bound, until a refresh or a model
//! reload makes the kept plan out of date. In process, over a real warehouse, Delta tables and the
//! example views; the same statements through Flight SQL are in `feature_views.rs` and `models.rs`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Int64Array, ListArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::Int64Type;
use futures::TryStreamExt;
use quiver::query::prepared::PreparedPlans;
use quiver::query::run_sql;
use quiver::session::{QuiverSession, SessionOptions};

const LOOKUP: &str = "SELECT user_id, events_30d FROM features.user_activity WHERE user_id = ?";

fn key(user: i64) -> RecordBatch {
    RecordBatch::try_from_iter([(
        "0",
        Arc::new(Int64Array::from(vec![user])) as Arc<dyn Array>,
    )])
    .expect("key")
}

async fn run(session: &QuiverSession, sql: &str) -> Vec<RecordBatch> {
    run_sql(session, sql)
        .await
        .expect(sql)
        .try_collect()
        .await
        .expect(sql)
}

async fn events_30d(session: &QuiverSession, prepared: &PreparedPlans, user: i64) -> i64 {
    let direct = prepared
        .direct(session, LOOKUP)
        .await
        .expect("an online lookup is answered directly");
    assert!(direct.is_lookup());
    let batch = direct
        .answer(&key(user))
        .await
        .expect("direct")
        .expect("answer");
    assert_eq!(batch.schema().field(1).name(), "events_30d");
    batch.column(1).as_primitive::<Int64Type>().value(0)
}

/// A session over a fresh warehouse (kept alive by the returned directory).
async fn open(
    options: impl FnOnce(&std::path::Path) -> SessionOptions,
) -> (tempfile::TempDir, QuiverSession) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let warehouse = tempfile::tempdir().expect("tempdir");
    let session = QuiverSession::open_with(
        url::Url::from_directory_path(warehouse.path()).expect("url"),
        options(root),
    )
    .await
    .expect("session");
    (warehouse, session)
}

#[tokio::test]
async fn a_prepared_lookup_is_planned_once_per_generation_of_the_views() {
    let (_warehouse, session) = open(|root| SessionOptions {
        sql_dir: Some(root.join("sql")),
        ..Default::default()
    })
    .await;
    for sql in [
        "CREATE TABLE interactions (user_id BIGINT, item_id BIGINT, event VARCHAR, ts TIMESTAMP)",
        "INSERT INTO interactions VALUES (1, 10, 'view', now() - INTERVAL '1 hour'), \
         (2, 10, 'view', now() - INTERVAL '2 hours')",
        "CREATE TABLE items (item_id BIGINT, category VARCHAR)",
        "INSERT INTO items VALUES (10, 'books')",
        "REFRESH FEATURE VIEWS",
    ] {
        run(&session, sql).await;
    }
    let prepared = PreparedPlans::default();
    assert!(
        prepared.current(&session, LOOKUP).is_none(),
        "nothing kept yet"
    );
    assert_eq!(events_30d(&session, &prepared, 1).await, 1);
    // Kept: the next request is answered without planning, for any key.
    assert!(
        prepared
            .current(&session, LOOKUP)
            .is_some_and(|d| d.is_lookup())
    );
    assert_eq!(events_30d(&session, &prepared, 2).await, 1);

    // A refresh swaps the index: the kept plan (which holds the old one) is out of date at once.
    run(
        &session,
        "INSERT INTO interactions VALUES (1, 10, 'click', now() - INTERVAL '30 minutes')",
    )
    .await;
    run(&session, "REFRESH FEATURE VIEW user_activity").await;
    assert!(prepared.current(&session, LOOKUP).is_none());
    assert_eq!(
        events_30d(&session, &prepared, 1).await,
        2,
        "the refreshed row"
    );

    // A key that is not a value of the key column is an error naming the column; a string that is
    // one is taken as it.
    let key_text = |text: &str| {
        RecordBatch::try_from_iter([(
            "0",
            Arc::new(StringArray::from(vec![text])) as Arc<dyn Array>,
        )])
        .expect("key")
    };
    let direct = prepared.current(&session, LOOKUP).expect("kept");
    let error = direct
        .answer(&key_text("one"))
        .await
        .expect("direct")
        .expect_err("'one'");
    assert!(error.to_string().contains("key user_id"), "{error}");
    let batch = direct
        .answer(&key_text("1"))
        .await
        .expect("direct")
        .expect("'1'");
    assert_eq!(batch.num_rows(), 1);

    // Whether a statement is a lookup does not depend on its parameters: one request that sends
    // too few gets the usual path's error, the next, bound in full, its rows.
    let pair = "SELECT events_30d FROM features.user_activity WHERE user_id IN (?, ?)";
    let direct = prepared.direct(&session, pair).await.expect("a lookup");
    let error = direct
        .answer(&key(1))
        .await
        .expect("direct")
        .expect_err("one of two keys");
    assert!(
        error
            .to_string()
            .contains("No value found for placeholder with id $2"),
        "{error}"
    );
    let both = RecordBatch::try_from_iter([
        ("0", Arc::new(Int64Array::from(vec![1])) as Arc<dyn Array>),
        ("1", Arc::new(Int64Array::from(vec![2])) as Arc<dyn Array>),
    ])
    .expect("keys");
    assert_eq!(
        direct
            .answer(&both)
            .await
            .expect("direct")
            .expect("answer")
            .num_rows(),
        2
    );
    // A NULL key matches nothing, as `user_id IN (1, NULL)` does.
    let one_null = RecordBatch::try_from_iter([
        ("0", Arc::new(Int64Array::from(vec![1])) as Arc<dyn Array>),
        (
            "1",
            Arc::new(Int64Array::from(vec![None])) as Arc<dyn Array>,
        ),
    ])
    .expect("keys");
    assert_eq!(
        direct
            .answer(&one_null)
            .await
            .expect("direct")
            .expect("answer")
            .num_rows(),
        1
    );

    // `= ANY(?)` binds the keys as one list parameter: a lookup whatever the list's length, up
    // to the most keys a lookup takes; past it the statement is planned as usual (and scans Delta).
    let any = "SELECT user_id, events_30d FROM features.user_activity WHERE user_id = ANY(?)";
    let direct = prepared.direct(&session, any).await.expect("a lookup");
    let list = |keys: Vec<Option<i64>>| {
        let list = ListArray::from_iter_primitive::<Int64Type, _, _>([Some(keys)]);
        RecordBatch::try_from_iter([("0", Arc::new(list) as Arc<dyn Array>)]).expect("list")
    };
    let answer = direct
        .answer(&list(vec![Some(2), None, Some(99), Some(1), Some(2)]))
        .await
        .expect("direct")
        .expect("answer");
    let users = answer.column(0).as_primitive::<Int64Type>();
    assert_eq!(users.values().to_vec(), vec![2, 1], "each present key once");
    let many = list((0..20_000).map(Some).collect());
    assert!(
        direct.answer(&many).await.is_none(),
        "too many keys for a lookup"
    );
    let error = direct
        .answer(&key(1))
        .await
        .expect("direct")
        .expect_err("not a list");
    assert!(
        error.to_string().contains("expected a list of keys"),
        "{error}"
    );

    // Statements that need planning are kept as such, and answered by the usual path.
    let scan = "SELECT count(*) FROM interactions WHERE user_id = ?";
    assert!(prepared.direct(&session, scan).await.is_none());
    assert!(prepared.current(&session, scan).is_none());
}

#[tokio::test]
async fn a_prepared_recommend_call_binds_its_arguments_and_follows_reloads() {
    let (_warehouse, session) = open(|root| SessionOptions {
        models_dir: Some(root.join("tests").join("models")),
        ..Default::default()
    })
    .await;
    for sql in crate::common::RECOMMEND_TABLES {
        run(&session, sql).await;
    }
    let sql = "SELECT item_id, score FROM recommend('mf', ?, ?)";
    let prepared = PreparedPlans::default();
    for (user, k) in [(3i64, 4i64), (4, 2), (45, 3)] {
        let params = RecordBatch::try_from_iter([
            (
                "0",
                Arc::new(Int64Array::from(vec![user])) as Arc<dyn Array>,
            ),
            ("1", Arc::new(Int64Array::from(vec![k])) as Arc<dyn Array>),
        ])
        .expect("params");
        let direct = prepared
            .direct(&session, sql)
            .await
            .expect("a lone recommend call is answered directly");
        assert!(!direct.is_lookup());
        let answer = direct
            .answer(&params)
            .await
            .expect("direct")
            .expect("answer");
        // The same rows as the call with its arguments written out.
        let literal = run(
            &session,
            &format!("SELECT item_id, score FROM recommend('mf', {user}, {k})"),
        )
        .await;
        assert_eq!(vec![answer], literal, "user {user}, k {k}");
    }
    // Arguments out of range or of the wrong type are the call's usual errors.
    let direct = prepared.current(&session, sql).expect("kept");
    for (user, k, message) in [
        (
            Arc::new(Int64Array::from(vec![3])) as Arc<dyn Array>,
            20_000,
            "k must be between 0 and 10000",
        ),
        (
            Arc::new(StringArray::from(vec!["x"])) as Arc<dyn Array>,
            3,
            "user_id must be an integer",
        ),
    ] {
        let params = RecordBatch::try_from_iter([
            ("0", user),
            ("1", Arc::new(Int64Array::from(vec![k])) as Arc<dyn Array>),
        ])
        .expect("params");
        let error = direct
            .answer(&params)
            .await
            .expect("direct")
            .expect_err(message);
        assert!(error.to_string().contains(message), "{error}");
    }

    // A reload may swap the model: what was planned against the old one is not used again.
    run(&session, "RELOAD MODELS").await;
    assert!(prepared.current(&session, sql).is_none());
}
