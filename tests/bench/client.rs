//! What the benchmarks' Flight SQL clients share: the connection, one request, and the report.

#![allow(dead_code)] // each benchmark uses part of it

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_flight::FlightInfo;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::{FlightSqlServiceClient, PreparedStatement};
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
use futures::TryStreamExt;
use tonic::transport::{Channel, Endpoint};

/// The endpoint of an arrow-flight client to the server at `addr`.
pub fn connect(addr: SocketAddr) -> Endpoint {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .tcp_nodelay(true)
        // arrow-flight's PreparedStatement drops the DoPut result stream after its first
        // message, so this client resets one stream per request; hyper's default closes the
        // connection after 1024 such resets (GOAWAY too_many_internal_resets).
        .http2_max_local_error_reset_streams(None)
}

pub fn binding(keys: &[i64]) -> RecordBatch {
    let columns: Vec<(String, ArrayRef)> = keys
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            (
                i.to_string(),
                Arc::new(Int64Array::from(vec![k])) as ArrayRef,
            )
        })
        .collect();
    RecordBatch::try_from_iter(columns).expect("binding")
}

/// Bind, execute, fetch: one request of an application.
pub async fn lookup(
    sql: &mut FlightSqlServiceClient<Channel>,
    statement: &mut PreparedStatement<Channel>,
    keys: &[i64],
) -> (Duration, usize) {
    let started = Instant::now();
    statement.set_parameters(binding(keys)).expect("bind");
    let info = statement.execute().await.expect("execute");
    let batches = fetch(sql, info).await.expect("fetch");
    let rows = batches.iter().map(RecordBatch::num_rows).sum::<usize>();
    (started.elapsed(), rows)
}

/// Every batch of every endpoint of `info`.
pub async fn fetch(
    sql: &mut FlightSqlServiceClient<Channel>,
    info: FlightInfo,
) -> Result<Vec<RecordBatch>, FlightError> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint
            .ticket
            .ok_or_else(|| FlightError::ProtocolError("endpoint without a ticket".into()))?;
        let mut part: Vec<RecordBatch> = sql.do_get(ticket).await?.try_collect().await?;
        batches.append(&mut part);
    }
    Ok(batches)
}

pub fn report(label: &str, latencies: &mut [Duration]) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label}: n={} p50={:.3} ms p90={:.3} ms p99={:.3} ms max={:.3} ms",
        latencies.len(),
        ms(at(0.50)),
        ms(at(0.90)),
        ms(at(0.99)),
        ms(latencies[latencies.len() - 1])
    );
}
