//! What the benchmarks' Flight SQL clients share: the connection, one request, and the report.

#![allow(dead_code)] // each benchmark uses part of it

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::{FlightSqlServiceClient, PreparedStatement};
use arrow_flight::sql::{
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
    CommandPreparedStatementQuery, DoPutPreparedStatementResult, ProstMessageExt,
};
use arrow_flight::{Action, FlightData, FlightDescriptor, FlightInfo};
use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
use futures::TryStreamExt;
use prost::Message;
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

/// `keys` as one parameter: a list (`WHERE user_id = ANY(?)`).
pub fn list_binding(keys: &[i64]) -> RecordBatch {
    let list = datafusion::arrow::array::ListArray::from_iter_primitive::<
        datafusion::arrow::datatypes::Int64Type,
        _,
        _,
    >([Some(keys.iter().copied().map(Some))]);
    RecordBatch::try_from_iter([("keys", Arc::new(list) as ArrayRef)]).expect("binding")
}

/// Bind, execute, fetch: one request of an application.
pub async fn lookup(
    sql: &mut FlightSqlServiceClient<Channel>,
    statement: &mut PreparedStatement<Channel>,
    keys: &[i64],
) -> (Duration, usize) {
    lookup_bound(sql, statement, binding(keys)).await
}

/// [`lookup`] with the parameters as given.
pub async fn lookup_bound(
    sql: &mut FlightSqlServiceClient<Channel>,
    statement: &mut PreparedStatement<Channel>,
    parameters: RecordBatch,
) -> (Duration, usize) {
    let started = Instant::now();
    statement.set_parameters(parameters).expect("bind");
    let info = statement.execute().await.expect("execute");
    let batches = fetch(sql, info).await.expect("fetch");
    let rows = batches.iter().map(RecordBatch::num_rows).sum::<usize>();
    (started.elapsed(), rows)
}

/// A prepared statement driven by hand, so each of a request's three round trips can be timed:
/// bind (DoPut), execute (GetFlightInfo), fetch (DoGet). The same messages as arrow-flight's
/// `PreparedStatement`, which times them only together.
pub struct Phased {
    handle: Bytes,
}

impl Phased {
    pub async fn prepare(sql: &mut FlightSqlServiceClient<Channel>, query: &str) -> Self {
        let request = ActionCreatePreparedStatementRequest {
            query: query.into(),
            transaction_id: None,
        };
        let action = Action::new("CreatePreparedStatement", request.as_any().encode_to_vec());
        let mut results = sql.do_action(action).await.expect("prepare");
        let body = results
            .message()
            .await
            .expect("prepare")
            .expect("a result")
            .body;
        let result: ActionCreatePreparedStatementResult = Any::decode(body)
            .expect("any")
            .unpack()
            .expect("unpack")
            .expect("a prepared statement result");
        Self {
            handle: result.prepared_statement_handle,
        }
    }

    /// `warmup + n` requests with the keys `next` gives, each answered with `rows` rows; reports the
    /// latencies of the `n` last, round trip by round trip, as `label, bind (DoPut)` and so on.
    pub async fn measure(
        &self,
        sql: &mut FlightSqlServiceClient<Channel>,
        label: &str,
        (warmup, n): (usize, usize),
        rows: usize,
        mut next: impl FnMut() -> Vec<i64>,
    ) {
        let mut phases = [Vec::new(), Vec::new(), Vec::new()];
        for i in 0..warmup + n {
            let (took, got) = self.lookup(sql, &next()).await;
            assert_eq!(got, rows, "{label}");
            if i >= warmup {
                for (phase, took) in phases.iter_mut().zip(took) {
                    phase.push(took);
                }
            }
        }
        for (name, latencies) in ["bind (DoPut)", "execute (GetFlightInfo)", "fetch (DoGet)"]
            .iter()
            .zip(phases.iter_mut())
        {
            report(&format!("{label}, {name}"), latencies);
        }
    }

    /// One request; the time of each round trip and the rows.
    pub async fn lookup(
        &self,
        sql: &mut FlightSqlServiceClient<Channel>,
        keys: &[i64],
    ) -> ([Duration; 3], usize) {
        let t0 = Instant::now();
        let command = |handle: Bytes| {
            FlightDescriptor::new_cmd(
                CommandPreparedStatementQuery {
                    prepared_statement_handle: handle,
                }
                .as_any()
                .encode_to_vec(),
            )
        };
        let params = binding(keys);
        let data: Vec<FlightData> = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(command(self.handle.clone())))
            .with_schema(params.schema())
            .build(futures::stream::iter([Ok(params)]))
            .try_collect()
            .await
            .expect("encode");
        let put = sql
            .do_put(futures::stream::iter(data))
            .await
            .expect("bind")
            .message()
            .await
            .expect("bind")
            .expect("a DoPut result");
        let bound: DoPutPreparedStatementResult =
            prost::Message::decode(&*put.app_metadata).expect("DoPut result");
        let handle = bound
            .prepared_statement_handle
            .unwrap_or_else(|| self.handle.clone());
        let t1 = Instant::now();
        let info = sql
            .inner_mut()
            .get_flight_info(command(handle))
            .await
            .expect("execute")
            .into_inner();
        let t2 = Instant::now();
        let batches = fetch(sql, info).await.expect("fetch");
        let t3 = Instant::now();
        let rows = batches.iter().map(RecordBatch::num_rows).sum::<usize>();
        ([t1 - t0, t2 - t1, t3 - t2], rows)
    }
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

/// The server's share of one prepared request of `sql`, step by step as the service runs it,
/// without the network: decode the DoPut upload and seal the bound handle; open it at
/// GetFlightInfo, hop to the query runtime (timed alone: an empty task on `executor`, as the service
/// hands over a statement that is not an online lookup), answer and seal the ticket; open the ticket
/// at DoGet and encode its stored result. `keys(i)` are request `i`'s parameters.
pub async fn server_steps(
    session: &quiver::session::QuiverSession,
    executor: &quiver::executor::Executor,
    label: &str,
    sql: &str,
    mut keys: impl FnMut(u64) -> Vec<i64>,
) {
    use quiver::auth::{Auth, Principal};
    use quiver::flight::handle::StatementHandle;
    use quiver::flight::ingest::bound_parameters;
    use quiver::flight::stream::batches_to_flight;
    let auth = Auth::open().expect("auth");
    let me = Principal::anonymous();
    // The server's cache of prepared plans, as the Flight service holds it.
    let prepared = quiver::query::prepared::PreparedPlans::default();
    let sealed = StatementHandle::new(sql).seal(&auth, &me);
    let names = [
        "client encode",
        "DoPut decode",
        "DoPut seal",
        "GetFlightInfo open",
        "GetFlightInfo hop to the query runtime (empty task)",
        "GetFlightInfo answer",
        "GetFlightInfo seal",
        "DoGet open+encode",
    ];
    let mut phases: Vec<Vec<Duration>> = names.iter().map(|_| Vec::new()).collect();
    for i in 0..3000u64 {
        let params = keys(i);
        let mut t = [Instant::now(); 9];
        let upload: Vec<_> = FlightDataEncoderBuilder::new()
            .build(futures::stream::iter([Ok(binding(&params))]))
            .try_collect()
            .await
            .expect("encode");
        t[1] = Instant::now();
        let stream = bound_parameters(futures::stream::iter(upload.into_iter().map(Ok)))
            .await
            .expect("decode")
            .expect("a batch");
        t[2] = Instant::now();
        let handle = StatementHandle::open(&sealed, &auth, &me)
            .expect("open")
            .with_parameter_stream(stream);
        let bound = handle.seal(&auth, &me);
        t[3] = Instant::now();
        let handle = StatementHandle::open(&bound, &auth, &me).expect("open");
        let params = handle.parameter_batch().expect("params").expect("bound");
        t[4] = Instant::now();
        executor.run(async { Ok(()) }).await.expect("hop");
        t[5] = Instant::now();
        let direct = prepared
            .direct(session, &handle.sql)
            .await
            .expect("a direct answer");
        let answer = direct
            .answer(&params)
            .await
            .expect("direct")
            .expect("answer");
        t[6] = Instant::now();
        let ticket = handle
            .with_result(&answer.schema(), std::slice::from_ref(&answer))
            .expect("result")
            .seal(&auth, &me);
        t[7] = Instant::now();
        let handle = StatementHandle::open(&ticket, &auth, &me).expect("open");
        let (schema, batches) = handle.stored_result().expect("stored").expect("result");
        let sent: Vec<_> = batches_to_flight(schema, batches)
            .try_collect()
            .await
            .expect("flight");
        t[8] = Instant::now();
        assert!(!sent.is_empty());
        if i >= 1000 {
            for (p, phase) in phases.iter_mut().enumerate() {
                phase.push(t[p + 1] - t[p]);
            }
        }
    }
    for (name, latencies) in names.iter().zip(phases.iter_mut()) {
        report(&format!("server steps, {label}: {name}"), latencies);
    }
}

/// `--observe on|off`: with `on` (as `quiver serve --http-listen` runs) the Prometheus recorder is
/// installed and `system.queries` keeps the default 1,000 statements; with `off` neither. Returns
/// the session's `query_history`.
pub fn observe(setting: &str) -> Option<usize> {
    match setting {
        "on" => {
            quiver::metrics::install();
            None
        }
        "off" => Some(0),
        other => panic!("--observe on|off, not {other}"),
    }
}
