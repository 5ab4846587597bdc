//! Online lookup latency through Flight SQL prepared statements, from the arrow-flight Rust client,
//! end to end on loopback: one key (`WHERE user_id = ?`) and 100 keys (`WHERE user_id IN (?, ...)`),
//! with 1 and with 50 online feature views loaded. Prints p50/p90/p99/max; asserts nothing.
//!
//!   tests/bench/run.sh online [--users N] [--lookups N]
//!
//! Each lookup is what an application does per request: bind the parameters (DoPut), execute
//! (GetFlightInfo), fetch (DoGet). The server runs in this process on its own runtime, the client on
//! another; they talk over TCP on 127.0.0.1.
//!
//! Last, with one view: single-key lookups while another client runs a large `REFRESH` (a view over
//! ten times the rows, recomputed whole), against the same lookups with nothing else running. The
//! refresh runs on the server's query runtime, not on the threads that answer lookups' RPCs.

use std::time::{Duration, Instant};

#[path = "client.rs"]
mod client;

use arrow_flight::sql::client::FlightSqlServiceClient;
use client::{Phased, binding, connect, list_binding, lookup, lookup_bound, report, server_steps};
use datafusion::arrow::array::RecordBatch;
use futures::TryStreamExt;
use quiver::session::{QuiverSession, SessionOptions};

const VIEW: &str = "\
-- @entity user_id
-- @event_time event_time
-- @ttl 365 days
-- @materialize offline, online
SELECT user_id, max(ts) AS event_time, count(*) AS events, sum(clicks) AS clicks,
       avg(clicks) AS mean_clicks, min(ts) AS first_seen
FROM events GROUP BY user_id
";

/// The view the refresh phase recomputes: every row of `big_events`, each time a source changed.
const BIG_VIEW: &str = "\
-- @entity user_id
-- @event_time event_time
-- @materialize offline, online
-- @refresh full
SELECT user_id, max(ts) AS event_time, count(*) AS events, sum(clicks) AS clicks,
       approx_distinct(clicks) AS kinds, stddev(clicks) AS spread
FROM big_events GROUP BY user_id
";

struct Args {
    users: u64,
    lookups: usize,
    query_history: Option<usize>,
}

fn args() -> Args {
    let mut args = Args {
        users: 100_000,
        lookups: 20_000,
        query_history: None,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut observe = "on".to_string();
    for pair in raw.chunks(2) {
        if pair[0] == "--observe" {
            observe = pair.get(1).cloned().unwrap_or_default();
            continue;
        }
        let value = pair.get(1).and_then(|v| v.parse().ok());
        match (pair[0].as_str(), value) {
            ("--users", Some(v)) => args.users = v,
            ("--lookups", Some(v)) => args.lookups = v as usize,
            _ => panic!("usage: online_lookup [--users N] [--lookups N] [--observe on|off]"),
        }
    }
    args.query_history = client::observe(&observe);
    println!("metrics and query history: {observe}");
    args
}

fn main() {
    let args = args();
    for views in [1, 50] {
        run(&args, views);
    }
}

fn run(args: &Args, views: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sql_dir = dir.path().join("sql");
    std::fs::create_dir_all(sql_dir.join("features")).expect("sql dir");
    for v in 0..views {
        std::fs::write(sql_dir.join(format!("features/view_{v}.sql")), VIEW).expect("view");
    }
    let during_refresh = views == 1;
    if during_refresh {
        std::fs::write(sql_dir.join("features/big.sql"), BIG_VIEW).expect("view");
    }
    let warehouse = url::Url::from_directory_path(dir.path().join("warehouse")).expect("url");
    std::fs::create_dir_all(dir.path().join("warehouse")).expect("warehouse");

    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    let users = args.users;
    let query_history = args.query_history;
    let addr = server.block_on(async move {
        let options = SessionOptions {
            sql_dir: Some(sql_dir.clone()),
            query_history,
            ..Default::default()
        };
        let session = QuiverSession::open_with(warehouse.clone(), options.clone())
            .await
            .expect("session");
        let setup = format!(
            "CREATE TABLE events AS SELECT value % {users} AS user_id, \
             to_timestamp_seconds(1790000000 - value) AS ts, value % 7 AS clicks \
             FROM generate_series(1, {})",
            users * 5
        );
        let big = format!(
            "CREATE TABLE big_events AS SELECT value % {users} AS user_id, \
             to_timestamp_seconds(1790000000 - value) AS ts, value % 13 AS clicks \
             FROM generate_series(1, {})",
            if during_refresh { users * 50 } else { 1 }
        );
        for sql in [setup.as_str(), big.as_str(), "REFRESH FEATURE VIEWS"] {
            let started = Instant::now();
            let stream = quiver::query::run_sql(&session, sql).await.expect("setup");
            let _: Vec<RecordBatch> = stream.try_collect().await.expect("setup rows");
            eprintln!(
                "setup: {} in {:.1?}",
                sql.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
                started.elapsed()
            );
        }
        // Restart: the indexes are built from the materialized Delta tables, as after a deploy.
        let session = QuiverSession::open_with(warehouse, options)
            .await
            .expect("session");
        in_process(&session, users).await;
        let executor = quiver::executor::Executor::new("quiver-exec", 0).expect("executor");
        for keys in [1, 100] {
            let marks = vec!["?"; keys].join(", ");
            let sql = format!("SELECT * FROM features.view_0 WHERE user_id IN ({marks})");
            let label = format!("{keys} key(s)");
            server_steps(&session, &executor, &label, &sql, |i| {
                (0..keys as u64)
                    .map(|j| ((i * 7919 + j * 997) % users) as i64)
                    .collect()
            })
            .await;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(quiver::server::serve(
            listener,
            session,
            quiver::server::ServerOptions::local().expect("server options"),
            std::future::pending(),
        ));
        addr
    });

    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    client.block_on(async move {
        let endpoint = connect(addr);
        let mut sql = FlightSqlServiceClient::new(endpoint.connect().await.expect("connect"));
        // The floor: a round trip the server rejects at once (a malformed ticket), no query work.
        // On a connection of its own: hyper ends a connection after 1024 streams it had to reset.
        let mut rejecting = FlightSqlServiceClient::new(endpoint.connect().await.expect("connect"));
        let mut floor = Vec::new();
        for i in 0..1000 {
            let started = Instant::now();
            let rejected = rejecting
                .do_get(arrow_flight::Ticket::new(vec![0xff, 0xff]))
                .await;
            assert!(rejected.is_err());
            if i >= 100 {
                floor.push(started.elapsed());
            }
        }
        report("round trip floor (rejected DoGet)", &mut floor);
        let mut single = Vec::new();
        let mut multi = Vec::new();
        for v in 0..views {
            single.push(
                sql.prepare(
                    format!("SELECT * FROM features.view_{v} WHERE user_id = ?"),
                    None,
                )
                .await
                .expect("prepare"),
            );
            let marks = vec!["?"; 100].join(", ");
            multi.push(
                sql.prepare(
                    format!("SELECT * FROM features.view_{v} WHERE user_id IN ({marks})"),
                    None,
                )
                .await
                .expect("prepare"),
            );
        }
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next_key = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % users) as i64
        };
        let warmup = args.lookups / 10;
        let mut latencies = Vec::with_capacity(args.lookups);
        for i in 0..warmup + args.lookups {
            let keys = [next_key()];
            let statement = &mut single[i % views];
            let (took, rows) = lookup(&mut sql, statement, &keys).await;
            assert_eq!(rows, 1, "every user has a row");
            if i >= warmup {
                latencies.push(took);
            }
        }
        report(&format!("1 key,    {views:>2} view(s)"), &mut latencies);
        // The same request with each round trip timed on its own.
        let phased =
            Phased::prepare(&mut sql, "SELECT * FROM features.view_0 WHERE user_id = ?").await;
        phased
            .measure(&mut sql, "  1 key", (warmup, args.lookups / 4), 1, || {
                vec![next_key()]
            })
            .await;
        let mut latencies = Vec::with_capacity(args.lookups / 10);
        for i in 0..(warmup + args.lookups) / 10 {
            let keys: Vec<i64> = (0..100).map(|_| next_key()).collect();
            let statement = &mut multi[i % views];
            let (took, _) = lookup(&mut sql, statement, &keys).await;
            if i >= warmup / 10 {
                latencies.push(took);
            }
        }
        report(&format!("100 keys, {views:>2} view(s)"), &mut latencies);
        // The same 100 keys bound as one list parameter.
        let mut any = Vec::new();
        for v in 0..views {
            any.push(
                sql.prepare(
                    format!("SELECT * FROM features.view_{v} WHERE user_id = ANY(?)"),
                    None,
                )
                .await
                .expect("prepare"),
            );
        }
        let mut latencies = Vec::with_capacity(args.lookups / 10);
        for i in 0..(warmup + args.lookups) / 10 {
            let keys: Vec<i64> = (0..100).map(|_| next_key()).collect();
            let statement = &mut any[i % views];
            let (took, _) = lookup_bound(&mut sql, statement, list_binding(&keys)).await;
            if i >= warmup / 10 {
                latencies.push(took);
            }
        }
        report(
            &format!("100 keys as one list (= ANY(?)), {views:>2} view(s)"),
            &mut latencies,
        );
        let marks = vec!["?"; 100].join(", ");
        let phased = Phased::prepare(
            &mut sql,
            &format!("SELECT * FROM features.view_0 WHERE user_id IN ({marks})"),
        )
        .await;
        // 100 distinct keys from a random start.
        let users = args.users as i64;
        let mut keys = || {
            let start = next_key();
            (0..100).map(|j| (start + j * 997) % users).collect()
        };
        phased
            .measure(
                &mut sql,
                "  100 keys",
                (warmup / 10, args.lookups / 40),
                100,
                &mut keys,
            )
            .await;
        if during_refresh {
            lookups_during_refresh(
                &endpoint,
                &mut sql,
                &mut single[0],
                args.lookups,
                &mut next_key,
            )
            .await;
        }
    });
    server.shutdown_timeout(Duration::from_secs(1));
}

/// Single-key lookups with nothing else running, then while another connection runs a full
/// `REFRESH` of the big view (a source changed first, so it recomputes every row). Lookups keep
/// going until the refresh has answered; each phase reports its own percentiles.
async fn lookups_during_refresh(
    endpoint: &tonic::transport::Endpoint,
    sql: &mut FlightSqlServiceClient<tonic::transport::Channel>,
    statement: &mut arrow_flight::sql::client::PreparedStatement<tonic::transport::Channel>,
    lookups: usize,
    next_key: &mut impl FnMut() -> i64,
) {
    let mut quiet = Vec::with_capacity(lookups / 4);
    for _ in 0..lookups / 4 {
        let (took, _) = lookup(sql, statement, &[next_key()]).await;
        quiet.push(took);
    }
    report("1 key, nothing else running", &mut quiet);
    let mut admin = FlightSqlServiceClient::new(endpoint.connect().await.expect("connect"));
    admin
        .execute_update("INSERT INTO big_events VALUES (0, now(), 1)".into(), None)
        .await
        .expect("insert");
    let refresh = tokio::spawn(async move {
        let started = Instant::now();
        let info = admin
            .execute("REFRESH FEATURE VIEW big".into(), None)
            .await
            .expect("refresh");
        let ticket = info.endpoint[0].ticket.clone().expect("ticket");
        let _: Vec<RecordBatch> = admin
            .do_get(ticket)
            .await
            .expect("refresh rows")
            .try_collect()
            .await
            .expect("refresh rows");
        started.elapsed()
    });
    let mut busy = Vec::new();
    while !refresh.is_finished() {
        let (took, _) = lookup(sql, statement, &[next_key()]).await;
        busy.push(took);
    }
    let took = refresh.await.expect("refresh task");
    eprintln!(
        "REFRESH FEATURE VIEW big (full, {} lookups meanwhile) took {took:.1?}",
        busy.len()
    );
    report(
        "1 key, during a full REFRESH of a 50x larger view",
        &mut busy,
    );
}

/// The server's share of a lookup, without the network: plan the SQL, bind the key, execute.
async fn in_process(session: &QuiverSession, users: u64) {
    use quiver::query::{execute, plan_sql};
    let sql = "SELECT * FROM features.view_0 WHERE user_id = ?";
    let mut phases = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..3000u64 {
        let key = binding(&[(i * 7919 % users) as i64]);
        let t0 = Instant::now();
        let planned = plan_sql(session, sql).await.expect("plan");
        let t1 = Instant::now();
        let bound = planned.bind(&key, 0).expect("bind");
        let t2 = Instant::now();
        let batches: Vec<RecordBatch> = execute(session, bound)
            .await
            .expect("execute")
            .try_collect()
            .await
            .expect("rows");
        let t3 = Instant::now();
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
        if i >= 1000 {
            phases[0].push(t1 - t0);
            phases[1].push(t2 - t1);
            phases[2].push(t3 - t2);
        }
    }
    for (name, latencies) in ["plan", "bind", "execute"].iter().zip(phases.iter_mut()) {
        report(&format!("in-process {name}"), latencies);
    }
}
