//! Model scoring figures (tests/bench/run.sh models; models_bench.py generates the models and the
//! onnxruntime/numpy baselines). Prints figures, asserts nothing.
//!
//!   models --models DIR [--rows N] [--requests N] [--users N]
//!
//! - predict: the 64 -> 256 -> 128 -> 1 MLP on one thread, tract alone on 8192-row batches and
//!   through SQL (`sum(predict('mlp', features))` over an in-memory table of one partition);
//! - recommend: `SELECT item_id, score FROM recommend('retrieval', ?, 10)` as a prepared statement
//!   from the arrow-flight Rust client over loopback (bind, execute, fetch), and in process;
//! - recommend_items for `--users` users in one query.

#[path = "client.rs"]
mod client;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use client::{Phased, connect, lookup, report};
use datafusion::arrow::array::{FixedSizeListArray, Float32Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::datasource::MemTable;
use futures::TryStreamExt;
use quiver::session::{QuiverSession, SessionOptions};
use tract_onnx::prelude::{IntoTValue, Tensor, tvec};

const BATCH: usize = 8192;

struct Args {
    models: std::path::PathBuf,
    rows: usize,
    requests: usize,
    users: usize,
}

fn args() -> Args {
    let mut args = Args {
        models: std::path::PathBuf::new(),
        rows: 2_000_000,
        requests: 5_000,
        users: 10_000,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--models" => args.models = value.into(),
            "--rows" => args.rows = value.parse().expect("--rows N"),
            "--requests" => args.requests = value.parse().expect("--requests N"),
            "--users" => args.users = value.parse().expect("--users N"),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        args.models.is_dir(),
        "--models DIR (from models_bench.py generate)"
    );
    args
}

fn main() {
    let args = args();
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = url::Url::from_directory_path(dir.path()).expect("url");
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    let models = args.models.clone();
    let (session, addr) = server.block_on(async move {
        let started = Instant::now();
        let options = SessionOptions {
            models_dir: Some(models),
            ..Default::default()
        };
        let session = QuiverSession::open_with(warehouse, options)
            .await
            .expect("session");
        println!(
            "models loaded in {:.1?} (the item matrix included)",
            started.elapsed()
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(quiver::server::serve(
            listener,
            session.clone(),
            quiver::server::ServerOptions::local().expect("server options"),
            std::future::pending(),
        ));
        (session, addr)
    });
    predict_kernel(&session, args.rows);
    server.block_on(predict_sql(&session, args.rows));
    server.block_on(recommend_in_process(&session, args.requests, args.users));
    recommend_flight(addr, &args);
    server.block_on(recommend_items(&session, args.users));
    server.shutdown_timeout(Duration::from_secs(1));
}

fn features(rows: usize, seed: u32) -> FixedSizeListArray {
    let values: Vec<f32> = (0..rows * 64)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0
        })
        .collect();
    FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float32, false)),
        64,
        Arc::new(Float32Array::from(values)),
        None,
    )
    .expect("features")
}

/// tract alone: one `run` per 8192-row batch, the same work onnxruntime's figure measures.
fn predict_kernel(session: &QuiverSession, rows: usize) {
    let model = session.models().get("mlp").expect("mlp model");
    let list = features(BATCH, 1);
    let values = list
        .values()
        .as_any()
        .downcast_ref::<Float32Array>()
        .expect("f32")
        .values()
        .to_vec();
    let input = Tensor::from_shape(&[BATCH, 64], &values).expect("tensor");
    model
        .onnx
        .run(tvec![input.clone().into_tvalue()])
        .expect("warm up");
    let mut best = 0.0f64;
    for _ in 0..3 {
        let started = Instant::now();
        let mut done = 0;
        while done < rows {
            model
                .onnx
                .run(tvec![input.clone().into_tvalue()])
                .expect("run");
            done += BATCH;
        }
        best = best.max(done as f64 / started.elapsed().as_secs_f64());
    }
    println!(
        "predict, tract {BATCH}-row batches, 1 thread: {:.2} M rows/s (best of 3)",
        best / 1e6
    );
}

/// Through SQL: packing the list column into a tensor and the result back into Arrow included.
async fn predict_sql(session: &QuiverSession, rows: usize) {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "features",
        DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), 64),
        false,
    )]));
    let batches: Vec<RecordBatch> = (0..rows.div_ceil(BATCH))
        .map(|i| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(features(BATCH, i as u32))])
                .expect("batch")
        })
        .collect();
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let table = MemTable::try_new(schema, vec![batches]).expect("memtable");
    let catalog = MemoryCatalogProvider::new();
    let memory = MemorySchemaProvider::new();
    memory
        .register_table("feats".into(), Arc::new(table))
        .expect("register");
    catalog
        .register_schema("s", Arc::new(memory))
        .expect("schema");
    session.ctx().register_catalog("mem", Arc::new(catalog));
    // One thread, as onnxruntime's figure: no repartitioning of the one in-memory partition.
    let _: Vec<RecordBatch> = session
        .ctx()
        .sql("SET datafusion.execution.target_partitions = 1")
        .await
        .expect("set")
        .collect()
        .await
        .expect("set");
    let sql = "SELECT sum(predict('mlp', features)) FROM mem.s.feats";
    let mut best = 0.0f64;
    for _ in 0..3 {
        let started = Instant::now();
        let _: Vec<RecordBatch> = session
            .ctx()
            .sql(sql)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        best = best.max(total as f64 / started.elapsed().as_secs_f64());
    }
    println!(
        "predict, SQL over one in-memory partition: {:.2} M rows/s (best of 3)",
        best / 1e6
    );
}

async fn recommend_in_process(session: &QuiverSession, requests: usize, users: usize) {
    // The two phases of a call, without SQL: the user tower, then the scan of the item matrix.
    let model = session.models().get("retrieval").expect("retrieval model");
    let retrieval = model.retrieval().expect("two tower");
    let (mut tower, mut scan) = (Vec::new(), Vec::new());
    let none = std::collections::HashSet::new();
    for i in 0..requests {
        let user = ((i * 7919) % users) as i64;
        let started = Instant::now();
        let vector = retrieval.embed_users(&model.onnx, &[user]).expect("embed");
        let embedded = Instant::now();
        let top = retrieval.top_k(&vector, 10, &none);
        scan.push(embedded.elapsed());
        tower.push(embedded - started);
        assert_eq!(top.len(), 10);
    }
    report("recommend phase: user tower (tract)", &mut tower);
    report("recommend phase: top-10 scan of the item matrix", &mut scan);
    let mut latencies = Vec::with_capacity(requests);
    for i in 0..requests + requests / 10 {
        let user = (i * 7919) % users;
        let sql = format!("SELECT item_id, score FROM recommend('retrieval', {user}, 10)");
        let started = Instant::now();
        let stream = quiver::query::run_sql(session, &sql).await.expect("plan");
        let batches: Vec<RecordBatch> = stream.try_collect().await.expect("run");
        let took = started.elapsed();
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 10);
        if i >= requests / 10 {
            latencies.push(took);
        }
    }
    report(
        "recommend top-10, in process (plan + score)",
        &mut latencies,
    );
}

fn recommend_flight(addr: std::net::SocketAddr, args: &Args) {
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    client.block_on(async move {
        let endpoint = connect(addr);
        let mut sql = FlightSqlServiceClient::new(endpoint.connect().await.expect("connect"));
        let mut statement = sql
            .prepare(
                "SELECT item_id, score FROM recommend('retrieval', ?, 10)".into(),
                None,
            )
            .await
            .expect("prepare");
        let mut latencies = Vec::with_capacity(args.requests);
        for i in 0..args.requests + args.requests / 10 {
            let user = ((i * 7919) % args.users) as i64;
            let (took, rows) = lookup(&mut sql, &mut statement, &[user]).await;
            assert_eq!(rows, 10);
            if i >= args.requests / 10 {
                latencies.push(took);
            }
        }
        report(
            "recommend top-10, Flight SQL prepared statement (Rust client)",
            &mut latencies,
        );
        // The same request with each round trip timed on its own.
        let phased = Phased::prepare(
            &mut sql,
            "SELECT item_id, score FROM recommend('retrieval', ?, 10)",
        )
        .await;
        let mut i = 0;
        let warmup = args.requests / 10;
        phased
            .measure(
                &mut sql,
                "  recommend",
                (warmup, args.requests / 2),
                10,
                || {
                    i += 1;
                    vec![((i * 7919) % args.users) as i64]
                },
            )
            .await;
    });
}

async fn recommend_items(session: &QuiverSession, users: usize) {
    let sql = format!(
        "SELECT count(*) FROM (SELECT unnest(recommend_items('retrieval', value, 10)) \
         FROM generate_series(0, {}))",
        users - 1
    );
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let _: Vec<RecordBatch> = session
            .ctx()
            .sql(&sql)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        best = best.min(started.elapsed());
    }
    println!(
        "recommend_items top-10 for {users} users: {:.2} s ({:.0} users/s, best of 3)",
        best.as_secs_f64(),
        users as f64 / best.as_secs_f64()
    );
}
