//! Kafka source throughput and freshness against librdkafka's mock cluster (a Kafka-protocol
//! broker in this process, so on the same cores): prints figures, asserts nothing.
//!
//!   tests/bench/run.sh sources [--seconds 60] [--partitions 3] [--rates 10000,50000]
//!
//! 1. Sustained rate: a producer sends JSON events like the demo's interactions as fast as it can
//!    for `--seconds` while the source consumes them into a Delta table; the rate is events
//!    committed over the time until the last one is in the table. The table's log and files and the
//!    process RSS are printed at the end.
//! 2. Freshness at each of `--rates` events/s: each event carries its produce time; every 50 ms a
//!    query reads the newest event time the table holds, and the age of that event at the moment
//!    the query answers is a sample (an upper bound of produce-to-visible for that event).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use futures::TryStreamExt;
use quiver::query::run_sql;
use quiver::session::QuiverSession;
use quiver::sources::kafka;
use quiver::storage::sources::KafkaSource;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

struct Args {
    seconds: u64,
    partitions: i32,
    rates: Vec<u64>,
}

fn args() -> Args {
    let mut args = Args {
        seconds: 60,
        partitions: 3,
        rates: vec![10_000, 50_000],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--seconds" => args.seconds = value.parse().expect("--seconds N"),
            "--partitions" => args.partitions = value.parse().expect("--partitions N"),
            "--rates" => {
                args.rates = value
                    .split(',')
                    .map(|r| r.parse().expect("--rates N,M"))
                    .collect()
            }
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

async fn scalar(session: &QuiverSession, sql: &str) -> Option<i64> {
    let batches: Vec<_> = run_sql(session, sql)
        .await
        .expect(sql)
        .try_collect()
        .await
        .expect(sql);
    let column = batches.first()?.column(0).clone();
    if column.is_null(0) {
        return None;
    }
    Some(match column.data_type() {
        datafusion::arrow::datatypes::DataType::Timestamp(..) => {
            column.as_primitive::<TimestampMicrosecondType>().value(0)
        }
        _ => column.as_primitive::<Int64Type>().value(0),
    })
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Produces events for `seconds` at `rate` per second (0: as fast as it can); returns the count.
fn produce(brokers: &str, topic: &str, seconds: u64, rate: u64, stop: &AtomicBool) -> u64 {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let start = Instant::now();
    let mut sent = 0u64;
    let events = ["view", "click", "cart", "buy"];
    while start.elapsed() < Duration::from_secs(seconds) && !stop.load(Ordering::Relaxed) {
        if rate > 0 {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_micros(500));
                continue;
            }
        }
        let payload = format!(
            "{{\"user_id\": {}, \"item_id\": {}, \"event\": \"{}\", \"ts\": {}}}",
            sent % 100_000,
            (sent * 7919) % 50_000,
            events[(sent % 4) as usize],
            now_micros()
        );
        let key = (sent % 100_000).to_string();
        loop {
            match producer.send(BaseRecord::to(topic).key(&key).payload(&payload)) {
                Ok(()) => break,
                Err(_) => {
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
        sent += 1;
        if sent.is_multiple_of(1000) {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    sent
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn source(brokers: &str, topic: &str, table: &str) -> KafkaSource {
    KafkaSource {
        name: format!("{table}_in"),
        brokers: brokers.into(),
        topic: topic.into(),
        group: format!("bench-{table}"),
        schema: "public".into(),
        table: table.into(),
        max_latency: Duration::from_secs(1),
        max_messages: 200_000,
        start_latest: false,
        options: BTreeMap::new(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let warehouse = tempfile::tempdir().expect("tempdir");
    let url = url::Url::from_directory_path(warehouse.path()).expect("url");
    let session = QuiverSession::open(url).await.expect("session");

    // 1. Sustained rate.
    cluster
        .create_topic("events", args.partitions, 1)
        .expect("topic");
    run_sql(
        &session,
        "CREATE TABLE events (user_id BIGINT NOT NULL, item_id BIGINT, event VARCHAR, ts BIGINT)",
    )
    .await
    .expect("table");
    let running = kafka::start(
        session.clone(),
        source(&brokers, "events", "events"),
        tokio::runtime::Handle::current(),
    )
    .expect("source");
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let producer = {
        let (brokers, stop, produced) = (brokers.clone(), stop.clone(), produced.clone());
        let seconds = args.seconds;
        std::thread::spawn(move || {
            let n = produce(&brokers, "events", seconds, 0, &stop);
            produced.store(n, Ordering::Release);
        })
    };
    let mut peak_rss = 0.0f64;
    while !producer.is_finished() {
        peak_rss = peak_rss.max(rss_mib());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    producer.join().expect("producer");
    let produced = produced.load(Ordering::Acquire) as i64;
    let produce_seconds = began.elapsed().as_secs_f64();
    loop {
        let count = scalar(&session, "SELECT count(*) FROM events")
            .await
            .unwrap_or(0);
        peak_rss = peak_rss.max(rss_mib());
        if count >= produced {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = began.elapsed().as_secs_f64();
    let status = running.status();
    running.stop();
    let log = warehouse.path().join("public/events/_delta_log");
    let commits = std::fs::read_dir(&log)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0);
    let checkpoints = std::fs::read_dir(&log)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains(".checkpoint."))
                .count()
        })
        .unwrap_or(0);
    let detail: Vec<_> = run_sql(&session, "DESCRIBE DETAIL events")
        .await
        .expect("detail")
        .try_collect()
        .await
        .expect("detail");
    let files = detail.first().map(|b| {
        b.column_by_name("num_files")
            .expect("num_files")
            .as_primitive::<Int64Type>()
            .value(0)
    });
    println!(
        "Kafka source, sustained: {produced} JSON events over {} partitions, producer {:.1} s, \
         all committed after {elapsed:.1} s",
        args.partitions, produce_seconds
    );
    println!(
        "  rate            {:.0} events/s (produced {:.0}/s)",
        produced as f64 / elapsed,
        produced as f64 / produce_seconds
    );
    println!(
        "  batches         {} ({:.0} events per commit)",
        status.batches,
        produced as f64 / status.batches.max(1) as f64
    );
    println!(
        "  delta log       {commits} commit files in _delta_log, {checkpoints} checkpoints, live files: {}",
        files.map_or("n/a".into(), |f| f.to_string())
    );
    println!(
        "  process RSS     peak {peak_rss:.0} MiB (broker, producer and server in one process)"
    );

    // 2. Freshness at fixed rates.
    for (i, rate) in args.rates.iter().enumerate() {
        let topic = format!("fresh{i}");
        let table = format!("fresh{i}");
        cluster
            .create_topic(&topic, args.partitions, 1)
            .expect("topic");
        run_sql(
            &session,
            &format!(
                "CREATE TABLE {table} (user_id BIGINT NOT NULL, item_id BIGINT, event VARCHAR, ts BIGINT)"
            ),
        )
        .await
        .expect("table");
        let mut source = source(&brokers, &topic, &table);
        source.max_latency = Duration::from_millis(250);
        let running = kafka::start(session.clone(), source, tokio::runtime::Handle::current())
            .expect("source");
        let seconds = args.seconds.min(30);
        let stop = Arc::new(AtomicBool::new(false));
        let producer = {
            let (brokers, stop, topic, rate) =
                (brokers.clone(), stop.clone(), topic.clone(), *rate);
            std::thread::spawn(move || produce(&brokers, &topic, seconds, rate, &stop))
        };
        // Let the group settle before sampling.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut ages = Vec::new();
        while !producer.is_finished() {
            if let Some(newest) = scalar(&session, &format!("SELECT max(ts) FROM {table}")).await {
                ages.push((now_micros() - newest) as f64 / 1000.0);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        producer.join().expect("producer");
        running.stop();
        ages.sort_by(|a, b| a.total_cmp(b));
        println!(
            "Freshness at {rate} events/s ({} samples): newest visible event's age p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            ages.len(),
            percentile(&ages, 0.5),
            percentile(&ages, 0.99),
            ages.last().copied().unwrap_or(f64::NAN)
        );
    }
}
