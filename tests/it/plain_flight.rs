//! Plain Arrow Flight (what pyarrow.flight speaks): SQL text tickets, uploads to a path, listings.

use std::sync::Arc;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{Criteria, FlightDescriptor, Ticket};
use datafusion::arrow::array::{Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::Schema;
use futures::{StreamExt, TryStreamExt};
use tonic::Code;

use crate::common::{TestServer, pretty};

async fn upload(
    server: &TestServer,
    path: &[&str],
    batch: RecordBatch,
) -> Result<(), tonic::Status> {
    let mut client = server.flight_client().await;
    let descriptor = FlightDescriptor::new_path(path.iter().map(|p| p.to_string()).collect());
    let data = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor))
        .build(futures::stream::iter([Ok(batch)]))
        .map(|d| d.expect("encode"));
    let mut results = client.do_put(data).await?.into_inner();
    while results.message().await?.is_some() {}
    Ok(())
}

async fn sql_ticket(server: &TestServer, sql: &str) -> Result<Vec<RecordBatch>, tonic::Status> {
    let mut client = server.flight_client().await;
    let stream = client
        .do_get(Ticket::new(sql.to_string()))
        .await?
        .into_inner();
    FlightRecordBatchStream::new_from_flight_data(stream.map_err(FlightError::from))
        .try_collect()
        .await
        .map_err(|e| match e {
            FlightError::Tonic(s) => *s,
            other => tonic::Status::internal(other.to_string()),
        })
}

fn ids(values: &[i64]) -> RecordBatch {
    RecordBatch::try_from_iter([(
        "id",
        Arc::new(Int64Array::from(values.to_vec())) as Arc<dyn Array>,
    )])
    .expect("batch")
}

#[tokio::test]
async fn upload_to_a_path_then_query_with_a_sql_ticket() {
    let server = TestServer::start().await;
    upload(&server, &["events"], ids(&[1, 2]))
        .await
        .expect("first upload creates");
    upload(&server, &["events"], ids(&[3]))
        .await
        .expect("second upload appends");
    let result = sql_ticket(&server, "SELECT sum(id) AS s FROM events")
        .await
        .expect("query");
    assert_eq!(pretty(&result)[3], "| 6 |");
    assert_eq!(server.commits("public", "events"), 2);

    let missing_schema = upload(&server, &["nowhere", "t"], ids(&[1]))
        .await
        .expect_err("no schema");
    assert_eq!(missing_schema.code(), Code::NotFound);
}

#[tokio::test]
async fn list_flights_and_get_schema_describe_tables() {
    let server = TestServer::start().await;
    upload(&server, &["a"], ids(&[1])).await.expect("upload");
    let mut client = server.flight_client().await;
    let flights: Vec<_> = client
        .list_flights(Criteria::default())
        .await
        .expect("list")
        .into_inner()
        .try_collect()
        .await
        .expect("flights");
    assert_eq!(flights.len(), 1);
    let descriptor = flights[0].flight_descriptor.clone().expect("descriptor");
    assert_eq!(descriptor.path, ["a"]);

    let schema = client
        .get_schema(descriptor.clone())
        .await
        .expect("schema")
        .into_inner();
    let schema = Schema::try_from(&schema).expect("decode");
    assert_eq!(schema.field(0).name(), "id");

    // The endpoint of a path's FlightInfo streams the table.
    let info = client
        .get_flight_info(descriptor)
        .await
        .expect("info")
        .into_inner();
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let stream = client.do_get(ticket).await.expect("get").into_inner();
    let batches: Vec<RecordBatch> =
        FlightRecordBatchStream::new_from_flight_data(stream.map_err(FlightError::from))
            .try_collect()
            .await
            .expect("batches");
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
}

#[tokio::test]
async fn bad_sql_tickets_are_invalid_argument() {
    let server = TestServer::start().await;
    let err = sql_ticket(&server, "SELEC 1").await.expect_err("bad");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = sql_ticket(&server, "SELECT * FROM missing_table")
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
}
