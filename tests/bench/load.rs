//! Load test: many concurrent Flight SQL clients against a real `quiver serve` process, mixing
//! prepared point queries, aggregate scans and ingest, for a fixed time.
//!
//! Prints throughput and p50/p99 per kind, the errors (goal: none), the server's peak RSS, and checks
//! that every acknowledged ingest landed exactly once. Exits non-zero on any error, so CI runs a short
//! version (`tests/run.sh`: 16 clients, 5 s, debug build); the full run is
//!
//!     tests/bench/run.sh load            # 64 clients, 60 s, release build
//!     tests/bench/run.sh load --auto-compact true   # the ingest table compacted as it grows

mod client;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow_flight::sql::CommandStatementIngest;
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch};
use tokio::sync::Mutex;
use tonic::transport::Channel;

struct Args {
    server: String,
    clients: usize,
    seconds: u64,
    rows: u64,
    /// Create the ingest table first with `delta.autoOptimize.autoCompact` on.
    auto_compact: bool,
}

fn args() -> Args {
    let mut parsed = Args {
        server: format!(
            "{}/release/quiver",
            std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())
        ),
        clients: 64,
        seconds: 60,
        rows: 200_000,
        auto_compact: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => parsed.server = value,
            "--clients" => parsed.clients = value.parse().expect("--clients N"),
            "--seconds" => parsed.seconds = value.parse().expect("--seconds N"),
            "--rows" => parsed.rows = value.parse().expect("--rows N"),
            "--auto-compact" => {
                parsed.auto_compact = value.parse().expect("--auto-compact true|false")
            }
            other => panic!("unknown flag {other}"),
        }
    }
    parsed
}

/// The server process; killed when dropped.
struct Server {
    child: Child,
    addr: std::net::SocketAddr,
    _warehouse: tempfile::TempDir,
}

impl Server {
    fn start(binary: &str) -> Self {
        let warehouse = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--warehouse"])
            .arg(warehouse.path())
            .args(["--models-dir", "/nonexistent", "--sql-dir", "/nonexistent"])
            .env("QUIVER_LOG", "error,buoyant_kernel=off")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("address");
        let addr = line
            .trim()
            .rsplit("://")
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("server did not start: {line:?}"));
        Self {
            child,
            addr,
            _warehouse: warehouse,
        }
    }

    /// (current, peak) resident set size in KiB, from /proc.
    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Tally {
    latencies: BTreeMap<&'static str, Vec<Duration>>,
    errors: Vec<String>,
    ingested_rows: u64,
}

const INGEST_ROWS: usize = 1_000;

async fn one_request(
    kind: &'static str,
    sql: &mut FlightSqlServiceClient<Channel>,
    point: &mut arrow_flight::sql::client::PreparedStatement<Channel>,
    key: i64,
) -> Result<u64, String> {
    match kind {
        "point" => {
            let (_, rows) = client::lookup(sql, point, &[key]).await;
            Ok(rows as u64)
        }
        "scan" => {
            let info = sql
                .execute(
                    "SELECT user_id % 10 AS g, count(*) AS n, avg(value) AS v FROM events \
                     GROUP BY 1 ORDER BY 1"
                        .into(),
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            let batches = client::fetch(sql, info).await.map_err(|e| e.to_string())?;
            Ok(batches.iter().map(RecordBatch::num_rows).sum::<usize>() as u64)
        }
        _ => {
            let ids =
                Int64Array::from_iter_values((0..INGEST_ROWS as i64).map(|i| key * 10_000 + i));
            let values = Float64Array::from_iter_values((0..INGEST_ROWS).map(|i| i as f64));
            let batch = RecordBatch::try_from_iter([
                ("id", Arc::new(ids) as _),
                ("value", Arc::new(values) as _),
            ])
            .map_err(|e| e.to_string())?;
            let command = CommandStatementIngest {
                table_definition_options: None,
                table: "ingested".into(),
                schema: None,
                catalog: None,
                temporary: false,
                transaction_id: None,
                options: Default::default(),
            };
            let rows = sql
                .execute_ingest(command, futures::stream::iter([Ok(batch)]))
                .await
                .map_err(|e| e.to_string())?;
            Ok(rows as u64)
        }
    }
}

fn main() {
    let args = args();
    let server = Server::start(&args.server);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr = server.addr;
    let setup_started = Instant::now();
    runtime.block_on(async {
        let mut sql = FlightSqlServiceClient::new(client::connect(addr).connect().await.expect("connect"));
        sql.execute_update(
            format!(
                "CREATE TABLE events AS SELECT v AS id, v % 5000 AS user_id, CAST(v AS DOUBLE) / 7 AS value \
                 FROM generate_series(1, {}) t(v)",
                args.rows
            ),
            None,
        )
        .await
        .expect("create events");
        if args.auto_compact {
            for statement in [
                "CREATE TABLE ingested (id BIGINT, value DOUBLE)",
                "ALTER TABLE ingested SET TBLPROPERTIES ('delta.autoOptimize.autoCompact' = 'true')",
            ] {
                sql.execute_update(statement.into(), None)
                    .await
                    .expect(statement);
            }
        }
    });
    println!(
        "load: {} clients, {} s, events table {} rows (set up in {:.1} s), auto-compaction {}, server {}",
        args.clients,
        args.seconds,
        args.rows,
        setup_started.elapsed().as_secs_f64(),
        if args.auto_compact { "on" } else { "off" },
        args.server
    );

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let next_key = Arc::new(AtomicU64::new(1));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let peak_sampled = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let mut workers = Vec::new();
        for worker in 0..args.clients {
            let tally = tally.clone();
            let stop = stop.clone();
            let next_key = next_key.clone();
            let rows = args.rows;
            workers.push(tokio::spawn(async move {
                let channel = client::connect(addr).connect().await.expect("connect");
                let mut sql = FlightSqlServiceClient::new(channel);
                let mut point = sql
                    .prepare(
                        "SELECT id, user_id, value FROM events WHERE id = ?".into(),
                        None,
                    )
                    .await
                    .expect("prepare");
                let mut local = Tally::default();
                let mut n: u64 = worker as u64;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    // 75% point queries, 20% scans, 5% ingest.
                    let kind = match (n >> 33) % 100 {
                        0..75 => "point",
                        75..95 => "scan",
                        _ => "ingest",
                    };
                    let key = if kind == "ingest" {
                        next_key.fetch_add(1, Ordering::Relaxed) as i64
                    } else {
                        1 + ((n >> 17) % rows) as i64
                    };
                    let began = Instant::now();
                    match one_request(kind, &mut sql, &mut point, key).await {
                        Ok(rows) => {
                            local
                                .latencies
                                .entry(kind)
                                .or_default()
                                .push(began.elapsed());
                            if kind == "ingest" {
                                local.ingested_rows += rows;
                            }
                        }
                        Err(e) => local.errors.push(format!("{kind}: {e}")),
                    }
                }
                let mut tally = tally.lock().await;
                for (kind, mut lat) in local.latencies {
                    tally.latencies.entry(kind).or_default().append(&mut lat);
                }
                tally.errors.append(&mut local.errors);
                tally.ingested_rows += local.ingested_rows;
            }));
        }
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (rss, _) = server.rss_kib();
            peak_sampled.fetch_max(rss, Ordering::Relaxed);
        }
        for worker in workers {
            if let Err(e) = worker.await {
                tally
                    .lock()
                    .await
                    .errors
                    .push(format!("worker panicked: {e}"));
            }
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let (_, peak_kib) = server.rss_kib();

    // Every acknowledged ingest exactly once.
    let landed = runtime.block_on(async {
        let mut sql =
            FlightSqlServiceClient::new(client::connect(addr).connect().await.expect("connect"));
        let info = sql
            .execute(
                "SELECT count(*) AS n, count(DISTINCT id) AS d FROM ingested".into(),
                None,
            )
            .await;
        let Ok(info) = info else { return (0, 0) };
        let batches = client::fetch(&mut sql, info).await.expect("count");
        let col = |i: usize| {
            batches[0]
                .column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .map_or(0, |a| a.value(0) as u64)
        };
        (col(0), col(1))
    });

    let mut tally = runtime.block_on(tally.lock_owned());
    let total: usize = tally.latencies.values().map(Vec::len).sum();
    println!(
        "load: {total} requests in {elapsed:.1} s = {:.0} req/s",
        total as f64 / elapsed
    );
    for (kind, latencies) in tally.latencies.iter_mut() {
        let rate = latencies.len() as f64 / elapsed;
        client::report(&format!("load {kind:>6} ({rate:.0}/s)"), latencies);
    }
    println!(
        "load: errors {} | ingest acknowledged {} rows, table holds {} rows ({} distinct) | server peak RSS {:.0} MiB (sampled max {:.0} MiB)",
        tally.errors.len(),
        tally.ingested_rows,
        landed.0,
        landed.1,
        peak_kib as f64 / 1024.0,
        peak_sampled.load(Ordering::Relaxed) as f64 / 1024.0,
    );
    for error in tally.errors.iter().take(5) {
        println!("  error: {error}");
    }
    let lost = landed.0 != tally.ingested_rows || landed.1 != tally.ingested_rows;
    if !tally.errors.is_empty() || lost {
        // `exit` runs no destructors: stop the server first, or it outlives this run.
        drop(server);
        std::process::exit(1);
    }
}
