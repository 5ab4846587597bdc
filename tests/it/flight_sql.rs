//! Flight SQL through arrow-flight's FlightSqlServiceClient: queries, prepared statements with
//! parameters, updates, ingest, metadata and errors.

use std::sync::Arc;

use arrow_flight::sql::{
    CommandGetDbSchemas, CommandGetTables, CommandStatementIngest, SqlInfo, TableDefinitionOptions,
    TableExistsOption, TableNotExistOption,
};
use datafusion::arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Schema};
use futures::TryStreamExt;
use tonic::Code;

use crate::common::{TestServer, code, fetch, pretty, query, update_all};

fn rows(ids: &[i64], names: &[&str]) -> RecordBatch {
    RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(Int64Array::from(ids.to_vec())) as Arc<dyn Array>,
        ),
        (
            "name",
            Arc::new(StringArray::from(names.to_vec())) as Arc<dyn Array>,
        ),
    ])
    .expect("batch")
}

fn ingest_command(
    table: &str,
    if_not_exist: TableNotExistOption,
    if_exists: TableExistsOption,
) -> CommandStatementIngest {
    CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: if_not_exist.into(),
            if_exists: if_exists.into(),
        }),
        table: table.to_string(),
        ..Default::default()
    }
}

#[tokio::test]
async fn statements_create_insert_query_delete() {
    let server = TestServer::start().await;
    let mut client = server.sql_client().await;
    client
        .execute_update("CREATE TABLE t (id BIGINT, name VARCHAR)".into(), None)
        .await
        .expect("create");
    let inserted = client
        .execute_update(
            "INSERT INTO t VALUES (2, 'b'), (1, 'a'), (3, 'c')".into(),
            None,
        )
        .await
        .expect("insert");
    assert_eq!(inserted, 3);
    let result = query(&mut client, "SELECT id, name FROM t ORDER BY id").await;
    assert_eq!(
        result,
        [
            "+----+------+",
            "| id | name |",
            "+----+------+",
            "| 1  | a    |",
            "| 2  | b    |",
            "| 3  | c    |",
            "+----+------+"
        ]
    );
    let deleted = client
        .execute_update("DELETE FROM t WHERE id >= 2".into(), None)
        .await
        .expect("delete");
    assert_eq!(deleted, 2);
    assert_eq!(
        query(&mut client, "SELECT count(*) AS n FROM t").await[3],
        "| 1 |"
    );
    // create + insert + delete: three Delta commits.
    assert_eq!(server.commits("public", "t"), 3);
}

#[tokio::test]
async fn prepared_query_binds_parameters() {
    let server = TestServer::start().await;
    let mut client = server.sql_client().await;
    client
        .execute_update(
            "CREATE TABLE p AS SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS v(id, name)".into(),
            None,
        )
        .await
        .expect("ctas");
    let mut prepared = client
        .prepare("SELECT name FROM p WHERE id = ?".into(), None)
        .await
        .expect("prepare");
    let params = prepared.parameter_schema().expect("params").clone();
    assert_eq!(params.fields().len(), 1);
    assert_eq!(params.field(0).data_type(), &DataType::Int64);
    assert_eq!(
        prepared.dataset_schema().expect("schema").field(0).name(),
        "name"
    );
    let binding =
        RecordBatch::try_from_iter([("0", Arc::new(Int64Array::from(vec![2])) as Arc<dyn Array>)])
            .expect("binding");
    prepared.set_parameters(binding).expect("bind");
    let info = prepared.execute().await.expect("execute");
    let batches = fetch(&mut client, info).await;
    assert_eq!(
        pretty(&batches),
        ["+------+", "| name |", "+------+", "| b    |", "+------+"]
    );
}

#[tokio::test]
async fn prepared_insert_of_many_rows_is_one_commit() {
    let server = TestServer::start().await;
    let mut client = server.sql_client().await;
    client
        .execute_update("CREATE TABLE m (id BIGINT, name VARCHAR)".into(), None)
        .await
        .expect("create");
    let mut prepared = client
        .prepare("INSERT INTO m VALUES ($1, $2)".into(), None)
        .await
        .expect("prepare");
    prepared
        .set_parameters(rows(&[1, 2, 3, 4], &["a", "b", "c", "d"]))
        .expect("bind");
    assert_eq!(prepared.execute_update().await.expect("update"), 4);
    assert_eq!(server.commits("public", "m"), 2, "create + one insert");
    assert_eq!(
        query(&mut client, "SELECT sum(id) AS s FROM m").await[3],
        "| 10 |"
    );
}

#[tokio::test]
async fn ingest_in_every_mode() {
    let server = TestServer::start().await;
    let mut client = server.sql_client().await;
    let upload = |b: RecordBatch| futures::stream::iter([Ok(b)]);
    let create = ingest_command("ing", TableNotExistOption::Create, TableExistsOption::Fail);
    let n = client
        .execute_ingest(create.clone(), upload(rows(&[1, 2], &["a", "b"])))
        .await
        .expect("create");
    assert_eq!(n, 2);
    let again = client
        .execute_ingest(create, upload(rows(&[3], &["c"])))
        .await
        .expect_err("exists");
    assert_eq!(code(&again), Code::AlreadyExists);

    let append = ingest_command("ing", TableNotExistOption::Fail, TableExistsOption::Append);
    client
        .execute_ingest(append, upload(rows(&[3], &["c"])))
        .await
        .expect("append");
    assert_eq!(
        query(&mut client, "SELECT count(*) AS n FROM ing").await[3],
        "| 3 |"
    );
    assert_eq!(
        server.commits("public", "ing"),
        2,
        "one commit per ingest call"
    );

    let replace = ingest_command(
        "ing",
        TableNotExistOption::Create,
        TableExistsOption::Replace,
    );
    let other =
        RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![9])) as Arc<dyn Array>)])
            .expect("b");
    client
        .execute_ingest(replace, upload(other))
        .await
        .expect("replace");
    assert_eq!(
        query(&mut client, "SELECT * FROM ing").await,
        ["+---+", "| x |", "+---+", "| 9 |", "+---+"]
    );

    let create_append = ingest_command(
        "ing2",
        TableNotExistOption::Create,
        TableExistsOption::Append,
    );
    client
        .execute_ingest(create_append.clone(), upload(rows(&[1], &["a"])))
        .await
        .expect("ca1");
    client
        .execute_ingest(create_append, upload(rows(&[2], &["b"])))
        .await
        .expect("ca2");
    assert_eq!(
        query(&mut client, "SELECT count(*) AS n FROM ing2").await[3],
        "| 2 |"
    );

    // Wrong type for an existing column: rejected, naming the column, and no commit is made.
    let wrong = RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(StringArray::from(vec!["x"])) as Arc<dyn Array>,
        ),
        (
            "name",
            Arc::new(StringArray::from(vec!["y"])) as Arc<dyn Array>,
        ),
    ])
    .expect("wrong");
    let append = ingest_command("ing2", TableNotExistOption::Fail, TableExistsOption::Append);
    let err = client
        .execute_ingest(append, upload(wrong))
        .await
        .expect_err("mismatch");
    assert_eq!(code(&err), Code::InvalidArgument);
    assert!(err.to_string().contains("column 'id'"), "{err}");
    assert_eq!(server.commits("public", "ing2"), 2);
}

#[tokio::test]
async fn ingest_option_merge_schema_adds_a_column_in_the_same_commit() {
    let server = TestServer::start().await;
    let mut client = server.sql_client().await;
    let upload = |b: RecordBatch| futures::stream::iter([Ok(b)]);
    let create = ingest_command("evo", TableNotExistOption::Create, TableExistsOption::Fail);
    client
        .execute_ingest(create, upload(rows(&[1], &["a"])))
        .await
        .expect("create");
    let wider = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(vec![2])) as Arc<dyn Array>),
        (
            "name",
            Arc::new(StringArray::from(vec!["b"])) as Arc<dyn Array>,
        ),
        (
            "extra",
            Arc::new(Int64Array::from(vec![7])) as Arc<dyn Array>,
        ),
    ])
    .expect("wider");
    let append = ingest_command("evo", TableNotExistOption::Fail, TableExistsOption::Append);
    let err = client
        .execute_ingest(append.clone(), upload(wider.clone()))
        .await
        .expect_err("a new column without the option");
    assert_eq!(code(&err), Code::InvalidArgument);
    assert!(err.to_string().contains("merge_schema=true"), "{err}");

    let mut merging = append.clone();
    merging
        .options
        .insert("merge_schema".into(), "nonsense".into());
    let err = client
        .execute_ingest(merging.clone(), upload(wider.clone()))
        .await
        .expect_err("a bad value");
    assert_eq!(code(&err), Code::InvalidArgument);
    merging.options.insert("merge_schema".into(), "true".into());
    let n = client
        .execute_ingest(merging, upload(wider))
        .await
        .expect("merged");
    assert_eq!(n, 1);
    assert_eq!(
        server.commits("public", "evo"),
        2,
        "schema and rows in one commit"
    );
    assert_eq!(
        query(&mut client, "SELECT id, extra FROM evo ORDER BY id").await,
        [
            "+----+-------+",
            "| id | extra |",
            "+----+-------+",
            "| 1  |       |",
            "| 2  | 7     |",
            "+----+-------+",
        ]
    );
}

#[tokio::test]
async fn catalog_metadata() {
    let server = TestServer::start().await;
    let mut client = server.sql_client().await;
    client
        .execute_update("CREATE SCHEMA features".into(), None)
        .await
        .expect("schema");
    client
        .execute_update(
            "CREATE TABLE features.user_stats (user_id BIGINT, clicks INT)".into(),
            None,
        )
        .await
        .expect("table");

    let catalogs_info = client.get_catalogs().await.expect("catalogs");
    let catalogs = fetch(&mut client, catalogs_info).await;
    assert_eq!(pretty(&catalogs)[3], "| quiver       |");

    let schemas_info = client
        .get_db_schemas(CommandGetDbSchemas {
            catalog: None,
            db_schema_filter_pattern: Some("feat%".into()),
        })
        .await
        .expect("schemas");
    let schemas = pretty(&fetch(&mut client, schemas_info).await);
    assert_eq!(schemas.len(), 5, "{schemas:?}");
    assert!(schemas[3].contains("features"));

    let tables_info = client
        .get_tables(CommandGetTables {
            include_schema: true,
            ..Default::default()
        })
        .await
        .expect("tables");
    let tables = fetch(&mut client, tables_info).await;
    assert_eq!(tables[0].num_rows(), 1);
    let table_schema = tables[0]
        .column_by_name("table_schema")
        .expect("schema column");
    let bytes = table_schema
        .as_any()
        .downcast_ref::<datafusion::arrow::array::BinaryArray>()
        .expect("binary")
        .value(0);
    let decoded =
        Schema::try_from(arrow_flight::IpcMessage(bytes.to_vec().into())).expect("schema");
    assert_eq!(decoded.field(1).name(), "clicks");

    let types_info = client.get_table_types().await.expect("types");
    let types = fetch(&mut client, types_info).await;
    assert!(pretty(&types).iter().any(|l| l.contains("TABLE")));

    let info = client
        .get_sql_info(vec![SqlInfo::FlightSqlServerName])
        .await
        .expect("sql info");
    let info = fetch(&mut client, info).await;
    assert_eq!(info[0].num_rows(), 1);

    let pk = client
        .get_primary_keys(arrow_flight::sql::CommandGetPrimaryKeys {
            table: "user_stats".into(),
            ..Default::default()
        })
        .await
        .expect("pk");
    assert_eq!(
        fetch(&mut client, pk)
            .await
            .iter()
            .map(RecordBatch::num_rows)
            .sum::<usize>(),
        0
    );

    let xdbc = client
        .get_xdbc_type_info(arrow_flight::sql::CommandGetXdbcTypeInfo { data_type: None })
        .await
        .expect("xdbc");
    assert!(fetch(&mut client, xdbc).await[0].num_rows() >= 10);
}

#[tokio::test]
async fn errors_have_the_right_status_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    let mut client = server.sql_client().await;
    let bad = client
        .execute("SELEC 1".into(), None)
        .await
        .expect_err("bad sql");
    assert_eq!(code(&bad), Code::InvalidArgument);
    assert!(bad.to_string().contains("SELEC"), "{bad}");
    let missing = client
        .execute("SELECT * FROM nope".into(), None)
        .await
        .expect_err("missing");
    assert_eq!(code(&missing), Code::NotFound);
    assert!(missing.to_string().contains("public.nope"), "{missing}");
    let unsupported = client
        .execute("BEGIN".into(), None)
        .await
        .expect_err("begin");
    assert_eq!(code(&unsupported), Code::Unimplemented);
    let garbage = client
        .do_get(arrow_flight::Ticket::new(vec![0xff, 0xfe, 0x00]))
        .await
        .expect_err("garbage ticket");
    assert_eq!(code(&garbage), Code::InvalidArgument);
    assert_eq!(query(&mut client, "SELECT 1 AS one").await[3], "| 1   |");
}

#[tokio::test]
async fn dml_runs_once_even_if_the_ticket_is_fetched_twice() {
    let server = TestServer::start().await;
    let mut client = server.sql_client().await;
    client
        .execute_update("CREATE TABLE once (id BIGINT)".into(), None)
        .await
        .expect("create");
    let info = client
        .execute("INSERT INTO once VALUES (1)".into(), None)
        .await
        .expect("insert");
    let first = fetch(&mut client, info.clone()).await;
    let second = fetch(&mut client, info).await;
    assert_eq!(pretty(&first), pretty(&second));
    assert_eq!(
        query(&mut client, "SELECT count(*) AS n FROM once").await[3],
        "| 1 |"
    );
}

#[tokio::test]
async fn time_travel_by_version() {
    let server = TestServer::start().await;
    let mut client = server.sql_client().await;
    client
        .execute_update("CREATE TABLE tt (id BIGINT)".into(), None)
        .await
        .expect("v0");
    client
        .execute_update("INSERT INTO tt VALUES (1)".into(), None)
        .await
        .expect("v1");
    client
        .execute_update("INSERT INTO tt VALUES (2)".into(), None)
        .await
        .expect("v2");
    assert_eq!(
        query(&mut client, "SELECT count(*) AS n FROM tt VERSION AS OF 1").await[3],
        "| 1 |"
    );
    assert_eq!(
        query(&mut client, "SELECT count(*) AS n FROM tt").await[3],
        "| 2 |"
    );
    let write = client
        .execute_update("INSERT INTO tt VERSION AS OF 1 VALUES (3)".into(), None)
        .await;
    assert!(write.is_err(), "old snapshots are read-only");
}

/// A parameter upload that is not Arrow IPC is refused at DoPut with InvalidArgument naming it, and
/// the prepared statement binds and runs afterwards.
#[tokio::test]
async fn a_malformed_parameter_upload_is_invalid_argument() {
    use arrow_flight::sql::{
        ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
        CommandPreparedStatementQuery, ProstMessageExt,
    };
    use arrow_flight::{Action, FlightData, FlightDescriptor};
    use prost::Message;

    let server = TestServer::start().await;
    let mut client = server.sql_client().await;
    let request = ActionCreatePreparedStatementRequest {
        query: "SELECT ? + 1 AS n".into(),
        transaction_id: None,
    };
    let action = Action::new("CreatePreparedStatement", request.as_any().encode_to_vec());
    let body = client
        .do_action(action)
        .await
        .expect("prepare")
        .message()
        .await
        .expect("prepare")
        .expect("a result")
        .body;
    let prepared: ActionCreatePreparedStatementResult = Any::decode(body)
        .expect("any")
        .unpack()
        .expect("unpack")
        .expect("a prepared statement");
    let descriptor = FlightDescriptor::new_cmd(
        CommandPreparedStatementQuery {
            prepared_statement_handle: prepared.prepared_statement_handle,
        }
        .as_any()
        .encode_to_vec(),
    );
    let garbage = FlightData {
        flight_descriptor: Some(descriptor),
        data_header: vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4].into(),
        ..Default::default()
    };
    let err = refused_put(&mut client, vec![garbage]).await;
    assert_eq!(code(&err), Code::InvalidArgument, "{err}");
    assert!(
        err.to_string().contains("malformed Arrow data in upload"),
        "{err}"
    );
    // The server keeps serving, and the same statement binds a real batch.
    let mut prepared = client
        .prepare("SELECT ? + 1 AS n".into(), None)
        .await
        .expect("prepare");
    let binding =
        RecordBatch::try_from_iter([("0", Arc::new(Int64Array::from(vec![41])) as Arc<dyn Array>)])
            .expect("binding");
    prepared.set_parameters(binding).expect("bind");
    let info = prepared.execute().await.expect("execute");
    assert_eq!(
        pretty(&fetch(&mut client, info).await),
        ["+----+", "| n  |", "+----+", "| 42 |", "+----+"]
    );
}

/// delta-rs turns an IN list into a chain of ORs and walks it recursively: 30,000 values used to
/// overflow the executor's stack and abort the server. A query with such a list answers (the
/// filter applies above the scan), a DELETE or UPDATE with one is refused before writing, and
/// the server keeps serving.
#[tokio::test]
async fn long_in_lists_neither_crash_the_server_nor_write() {
    let server = TestServer::with_example_views().await;
    let mut client = server.sql_client().await;
    client
        .execute_update(
            "CREATE TABLE wide AS SELECT value AS id FROM generate_series(0, 39999)".into(),
            None,
        )
        .await
        .expect("create");
    let evens = (0..60_000)
        .step_by(2)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let count = query(
        &mut client,
        &format!("SELECT count(*) AS n FROM wide WHERE id IN ({evens})"),
    )
    .await;
    assert!(count.iter().any(|l| l.contains("| 20000 |")), "{count:?}");
    for statement in [
        format!("DELETE FROM wide WHERE id IN ({evens})"),
        format!("UPDATE wide SET id = 0 WHERE id IN ({evens})"),
    ] {
        let error = client
            .execute_update(statement, None)
            .await
            .expect_err("refused");
        assert_eq!(code(&error), tonic::Code::InvalidArgument, "{error}");
        assert!(
            error.to_string().contains("more than 1000 values"),
            "{error}"
        );
    }
    let count = query(&mut client, "SELECT count(*) AS n FROM wide").await;
    assert!(count.iter().any(|l| l.contains("| 40000 |")), "{count:?}");
    // A feature view's Delta path (more keys than an online lookup takes) too.
    update_all(
        &mut client,
        &[
            "CREATE TABLE interactions (user_id BIGINT, item_id BIGINT, event VARCHAR, ts TIMESTAMP)",
            "INSERT INTO interactions VALUES (1, 10, 'view', now() - INTERVAL '1 hour')",
            "CREATE TABLE items (item_id BIGINT, category VARCHAR)",
        ],
    )
    .await;
    query(&mut client, "REFRESH FEATURE VIEWS").await;
    let users = query(
        &mut client,
        &format!("SELECT count(*) AS n FROM features.user_activity WHERE user_id IN ({evens})"),
    )
    .await;
    assert!(users.iter().any(|l| l.contains("| 0 |")), "{users:?}");
    let one = query(
        &mut client,
        &format!("SELECT count(*) AS n FROM features.user_activity WHERE user_id IN (1, {evens})"),
    )
    .await;
    assert!(one.iter().any(|l| l.contains("| 1 |")), "{one:?}");
}

/// An upload whose record batch names buffers beyond its body (a truncated or forged message) is
/// INVALID_ARGUMENT: arrow's decoder would panic on it, dropping the connection. Nothing is written
/// and the server keeps serving.
#[tokio::test]
async fn uploads_with_buffers_outside_their_body_are_refused() {
    use arrow_flight::FlightDescriptor;
    use arrow_flight::sql::ProstMessageExt;
    use prost::Message;

    let server = TestServer::start().await;
    let mut client = server.sql_client().await;
    let batch = rows(&[1, 2, 3], &["a", "b", "c"]);
    let mut messages =
        arrow_flight::utils::batches_to_flight_data(&batch.schema(), vec![batch]).expect("encode");
    let last = messages.last_mut().expect("a batch message");
    last.data_body = last.data_body.slice(..8);
    let create = ingest_command(
        "forged",
        TableNotExistOption::Create,
        TableExistsOption::Fail,
    );
    let descriptor = FlightDescriptor::new_cmd(create.as_any().encode_to_vec());
    messages[0].flight_descriptor = Some(descriptor);
    let err = refused_put(&mut client, messages).await;
    assert_eq!(code(&err), Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("outside"), "{err}");
    let tables = query(&mut client, "SELECT 1 AS still_serving").await;
    assert_eq!(tables[3].split_whitespace().collect::<String>(), "|1|");
    assert!(
        client
            .execute("SELECT * FROM forged".into(), None)
            .await
            .is_err(),
        "nothing was created"
    );
}

/// The error of a DoPut the server must refuse (at the call or in its result stream).
async fn refused_put(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    messages: Vec<arrow_flight::FlightData>,
) -> arrow_flight::error::FlightError {
    use arrow_flight::error::FlightError;
    use futures::TryStreamExt;
    let refused = match client.do_put(futures::stream::iter(messages)).await {
        Ok(mut results) => results
            .try_next()
            .await
            .map(|_| ())
            .map_err(FlightError::from),
        Err(e) => Err(e),
    };
    refused.expect_err("the server refuses the upload")
}

/// A commit file that is not JSON (a torn copy, another writer's bug): reads and writes of that
/// table are DATA_LOSS naming the file, earlier versions still read, the table is still listed,
/// and every other table keeps working.
#[tokio::test]
async fn a_corrupt_commit_is_data_loss_naming_the_file() {
    let server = TestServer::start().await;
    let mut client = server.sql_client().await;
    update_all(
        &mut client,
        &[
            "CREATE TABLE torn AS SELECT 1 AS a",
            "INSERT INTO torn VALUES (2)",
            "CREATE TABLE whole AS SELECT 5 AS b",
        ],
    )
    .await;
    let log = server.warehouse.path().join("public/torn/_delta_log");
    std::fs::write(
        log.join("00000000000000000002.json"),
        "{\"add\": {\"path\": broken\n",
    )
    .expect("corrupt");
    for sql in ["SELECT * FROM torn", "INSERT INTO torn VALUES (3)"] {
        let error = match client.execute(sql.into(), None).await {
            Err(e) => e,
            Ok(info) => match client
                .do_get(info.endpoint[0].ticket.clone().expect("ticket"))
                .await
            {
                Err(e) => e,
                Ok(stream) => stream.try_collect::<Vec<_>>().await.expect_err(sql),
            },
        };
        assert_eq!(code(&error), tonic::Code::DataLoss, "{sql}: {error}");
        let message = error.to_string();
        for part in [
            "commit 2 (_delta_log/00000000000000000002.json) is not JSON at line 1",
            "VERSION AS OF 1",
        ] {
            assert!(message.contains(part), "{sql}: {message}");
        }
        assert!(!message.contains("with_backtrace"), "{message}");
    }
    let old = query(&mut client, "SELECT sum(a) AS s FROM torn VERSION AS OF 1").await;
    assert!(old.iter().any(|l| l.contains("| 3 |")), "{old:?}");
    let listed = query(
        &mut client,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .await;
    assert!(listed.iter().any(|l| l.contains("torn")), "{listed:?}");
    assert!(listed.iter().any(|l| l.contains("whole")), "{listed:?}");
    let whole = query(&mut client, "SELECT b FROM whole").await;
    assert!(whole.iter().any(|l| l.contains("| 5 |")), "{whole:?}");
    assert_eq!(server.commits("public", "torn"), 3, "nothing was committed");
}

/// What GetFlightInfo (and a prepared statement's dataset schema) announces is the schema DoGet
/// streams and every batch carries, for expressions the optimizer folds, where the planned and the
/// optimized schemas differ in nullability or nested fields.
#[tokio::test]
async fn announced_schemas_are_the_streamed_schemas() {
    let server = TestServer::start().await;
    let mut client = server.sql_client().await;
    for sql in [
        "SELECT abs(-1.0) AS a",
        "SELECT make_array(1, 2) AS a",
        "SELECT dot(make_array(1.0), make_array(2.0)) AS a",
        "SELECT substr(str => 'quiver', start_pos => 2) AS a",
        "SELECT named_struct('a', 1, 'b', 'x') AS s, coalesce(NULL, 7) AS c",
        "SELECT feature_hash('user:42', 1024) AS h, l2_normalize([3, 4]) AS v",
    ] {
        let info = client.execute(sql.to_string(), None).await.expect(sql);
        let announced = Arc::new(info.clone().try_decode_schema().expect("schema"));
        let mut prepared = client.prepare(sql.to_string(), None).await.expect(sql);
        assert_eq!(
            prepared.dataset_schema().expect("dataset schema"),
            announced.as_ref(),
            "{sql}: prepared"
        );
        let prepared_info = prepared.execute().await.expect(sql);
        assert_eq!(
            prepared_info.clone().try_decode_schema().expect("schema"),
            *announced,
            "{sql}: prepared GetFlightInfo"
        );
        for info in [info, prepared_info] {
            let ticket = info.endpoint[0].ticket.clone().expect("ticket");
            let mut stream = client.do_get(ticket).await.expect("do_get");
            let mut rows = 0;
            while let Some(batch) = stream.try_next().await.expect(sql) {
                assert_eq!(batch.schema(), announced, "{sql}: a batch");
                rows += batch.num_rows();
            }
            assert_eq!(stream.schema(), Some(&announced), "{sql}: the stream");
            assert_eq!(rows, 1, "{sql}");
        }
    }
}
