//! Kafka sources against librdkafka's mock cluster (in-process, the real Kafka protocol): a topic's
//! messages land exactly once, misfits go to the dead-letter table with their offsets, a restarted
//! source resumes from the offsets in the table's Delta log, and two members of one consumer group
//! share the partitions without writing a message twice, also when one leaves.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use futures::TryStreamExt;
use quiver::query::run_sql;
use quiver::session::QuiverSession;
use quiver::sources::kafka;
use quiver::storage::sources::KafkaSource;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const PARTITIONS: i32 = 3;

async fn session() -> (tempfile::TempDir, QuiverSession) {
    let warehouse = tempfile::tempdir().expect("tempdir");
    let url = url::Url::from_directory_path(warehouse.path()).expect("url");
    let session = QuiverSession::open(url).await.expect("session");
    sql(
        &session,
        "CREATE TABLE clicks (user_id BIGINT NOT NULL, item_id BIGINT, ts TIMESTAMP)",
    )
    .await;
    (warehouse, session)
}

async fn sql(session: &QuiverSession, statement: &str) -> Vec<RecordBatch> {
    run_sql(session, statement)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"))
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"))
}

async fn count(session: &QuiverSession, statement: &str) -> i64 {
    let batches = sql(session, statement).await;
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

fn source(brokers: &str) -> KafkaSource {
    KafkaSource {
        name: "clicks_in".into(),
        brokers: brokers.into(),
        topic: "clicks".into(),
        group: "quiver-clicks_in".into(),
        schema: "public".into(),
        table: "clicks".into(),
        max_latency: Duration::from_millis(200),
        max_messages: 10_000,
        start_latest: false,
        options: BTreeMap::new(),
    }
}

/// Produces users `from..to` (one message each, spread over the partitions by key); every
/// `bad_every`-th is a message that does not fit the table.
fn produce(brokers: &str, from: i64, to: i64, bad_every: Option<i64>) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    for user in from..to {
        let payload = match bad_every {
            Some(n) if user % n == 0 => format!("{{\"user_id\": \"user-{user}\"}}"),
            _ => format!(
                "{{\"user_id\": {user}, \"item_id\": {}, \"ts\": \"2026-12-05T10:00:00Z\", \"extra\": true}}",
                user % 17
            ),
        };
        let key = user.to_string();
        producer
            .send(BaseRecord::to("clicks").key(&key).payload(&payload))
            .expect("queued");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");
}

/// Waits until `statement` counts `expected` (panics after a minute with what it counts).
async fn eventually(session: &QuiverSession, statement: &str, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = count(session, statement).await;
        if got == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{statement}: {got}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster
        .create_topic("clicks", PARTITIONS, 1)
        .expect("topic");
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_lands_once_with_misfits_in_dead_letters_and_resumes_from_the_table() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let (_warehouse, session) = session().await;
    produce(&brokers, 0, 300, Some(30));

    let running = kafka::start(
        session.clone(),
        source(&brokers),
        tokio::runtime::Handle::current(),
    )
    .expect("started");
    eventually(&session, "SELECT count(*) FROM clicks", 290).await;
    eventually(&session, "SELECT count(*) FROM dead_letters", 10).await;
    let status = running.status();
    assert_eq!(status.rows, 290);
    assert_eq!(status.rejected, 10);
    assert_eq!(status.partitions.len(), PARTITIONS as usize);
    running.stop();

    // The dead letters carry where each message came from.
    let letters = sql(
        &session,
        "SELECT count(*) FROM dead_letters WHERE source = 'kafka:clicks_in' AND topic = 'clicks' \
         AND partition IS NOT NULL AND \"offset\" IS NOT NULL AND payload LIKE '%user-%' \
         AND target_table = 'public.clicks'",
    )
    .await;
    assert_eq!(
        letters[0].column(0).as_primitive::<Int64Type>().value(0),
        10
    );

    // Stopped, more is produced; started again, it resumes where the table's log says.
    produce(&brokers, 300, 400, None);
    let running = kafka::start(
        session.clone(),
        source(&brokers),
        tokio::runtime::Handle::current(),
    )
    .expect("restarted");
    eventually(&session, "SELECT count(*) FROM clicks", 390).await;
    // Nothing more arrives later, and nothing twice.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        count(&session, "SELECT count(DISTINCT user_id) FROM clicks").await,
        390
    );
    assert_eq!(count(&session, "SELECT count(*) FROM clicks").await, 390);
    assert_eq!(
        count(&session, "SELECT count(*) FROM dead_letters").await,
        10
    );
    // Every partition caught up, as the source reports it (watermarks are read once a second).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = running.status();
        let caught_up = status.partitions.len() == PARTITIONS as usize
            && status.partitions.values().all(|p| p.lag() == Some(0));
        if caught_up {
            break;
        }
        assert!(Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_of_one_group_share_the_partitions_without_duplicates() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let (_warehouse, session) = session().await;
    let runtime = tokio::runtime::Handle::current();
    let first = kafka::start(session.clone(), source(&brokers), runtime.clone()).expect("first");
    let second = kafka::start(session.clone(), source(&brokers), runtime.clone()).expect("second");
    produce(&brokers, 0, 3000, None);
    eventually(&session, "SELECT count(*) FROM clicks", 3000).await;
    // One member leaves: the other takes its partitions over from the table's offsets.
    first.stop();
    produce(&brokers, 3000, 4500, None);
    eventually(&session, "SELECT count(*) FROM clicks", 4500).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        count(&session, "SELECT count(DISTINCT user_id) FROM clicks").await,
        4500
    );
    assert_eq!(count(&session, "SELECT count(*) FROM clicks").await, 4500);
    second.stop();
}

/// The first value of a query's result, as text.
async fn value(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
) -> String {
    let info = client.execute(sql.to_string(), None).await.expect(sql);
    let batches = crate::common::fetch(client, info).await;
    let batch = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .unwrap_or_else(|| panic!("{sql}: no rows"));
    datafusion::arrow::util::display::array_value_to_string(batch.column(0), 0).expect("text")
}

async fn eventually_value(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
    expected: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = value(client, sql).await;
        if got == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {got}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_are_created_paused_resumed_and_dropped_with_sql() {
    use crate::common::{TestServer, code, query, update_all};

    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let server = TestServer::start().await;
    let mut client = server.sql_client().await;
    update_all(
        &mut client,
        &["CREATE TABLE clicks (user_id BIGINT NOT NULL, item_id BIGINT, ts TIMESTAMP)"],
    )
    .await;

    // Mistakes are named, and nothing is stored.
    let wrong = client
        .execute_update(
            format!("CREATE SOURCE s FROM KAFKA (brokers '{brokers}', topic 'clicks', format 'avro') INTO clicks"),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(code(&wrong), tonic::Code::InvalidArgument);
    assert!(wrong.to_string().contains("avro"), "{wrong}");
    let missing = client
        .execute_update(
            format!(
                "CREATE SOURCE s FROM KAFKA (brokers '{brokers}', topic 'clicks') INTO nowhere"
            ),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(code(&missing), tonic::Code::NotFound);

    let create = format!(
        "CREATE SOURCE clicks_in FROM KAFKA (brokers '{brokers}', topic 'clicks', format 'json', \
         max_latency '200ms') INTO public.clicks"
    );
    update_all(&mut client, &[create.as_str()]).await;
    let again = client
        .execute_update(create.clone(), None)
        .await
        .unwrap_err();
    assert_eq!(code(&again), tonic::Code::AlreadyExists);
    let if_not_exists = create.replace("CREATE SOURCE", "CREATE SOURCE IF NOT EXISTS");
    update_all(&mut client, &[if_not_exists.as_str()]).await;

    produce(&brokers, 0, 100, None);
    eventually_value(&mut client, "SELECT count(*) FROM clicks", "100").await;
    let shown = query(&mut client, "SHOW SOURCES").await.join("\n");
    assert!(
        shown.contains("clicks_in") && shown.contains("public.clicks") && shown.contains("false"),
        "{shown}"
    );
    eventually_value(
        &mut client,
        "SELECT count(*) FROM system.sources WHERE source = 'clicks_in' AND lag = 0",
        "3",
    )
    .await;

    // Paused: the consumer stops; what is produced meanwhile arrives once resumed.
    update_all(&mut client, &["ALTER SOURCE clicks_in PAUSE"]).await;
    eventually_value(&mut client, "SELECT count(*) FROM system.sources", "0").await;
    produce(&brokers, 100, 150, None);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        value(&mut client, "SELECT count(*) FROM clicks").await,
        "100"
    );
    update_all(&mut client, &["ALTER SOURCE clicks_in RESUME"]).await;
    eventually_value(&mut client, "SELECT count(*) FROM clicks", "150").await;

    update_all(&mut client, &["DROP SOURCE clicks_in"]).await;
    eventually_value(&mut client, "SELECT count(*) FROM system.sources", "0").await;
    let gone = client
        .execute_update("DROP SOURCE clicks_in".to_string(), None)
        .await
        .unwrap_err();
    assert_eq!(code(&gone), tonic::Code::NotFound);
    update_all(&mut client, &["DROP SOURCE IF EXISTS clicks_in"]).await;
    assert_eq!(
        value(&mut client, "SELECT count(DISTINCT user_id) FROM clicks").await,
        "150"
    );
}

/// Runs `quiver sql <statement>` against `warehouse`, failing with its stderr.
fn quiver_sql(warehouse: &std::path::Path, statement: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["sql", statement, "--warehouse"])
        .arg(warehouse)
        .output()
        .expect("run quiver sql");
    assert!(
        out.status.success(),
        "{statement}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `quiver serve` process on `warehouse`, once it has printed its address.
fn serve(warehouse: &std::path::Path) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["serve", "--listen", "127.0.0.1:0", "--warehouse"])
        .arg(warehouse)
        .env("QUIVER_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn quiver serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert!(line.starts_with("quiver listening on"), "{line}");
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_killed_at_any_point_while_consuming_lose_and_duplicate_nothing() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = dir.path();
    // Defined with `quiver sql`: the definition lives in the warehouse, every server runs it.
    quiver_sql(
        warehouse,
        "CREATE TABLE clicks (user_id BIGINT NOT NULL, item_id BIGINT, ts TIMESTAMP)",
    );
    quiver_sql(
        warehouse,
        &format!(
            "CREATE SOURCE clicks_in FROM KAFKA (brokers '{brokers}', topic 'clicks', \
             max_latency '100ms', max_messages '400', 'session.timeout.ms' '6000', \
             'heartbeat.interval.ms' '500') INTO clicks"
        ),
    );
    const EVENTS: i64 = 12_000;
    let producer = {
        let brokers = brokers.clone();
        std::thread::spawn(move || {
            for chunk in 0..30 {
                let from = chunk * EVENTS / 30;
                produce(&brokers, from, from + EVENTS / 30, Some(97));
                std::thread::sleep(Duration::from_millis(600));
            }
        })
    };
    // SIGKILL after each of these (a server killed before it joined the group, while it reads,
    // and while it commits).
    for seconds in [1.5, 8.0, 3.0, 9.5, 7.0, 10.0] {
        let mut server = serve(warehouse);
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        server.kill().expect("SIGKILL");
        server.wait().expect("reaped");
    }
    producer.join().expect("producer");
    let url = url::Url::from_directory_path(warehouse).expect("url");
    let session = QuiverSession::open(url).await.expect("session");
    // The killed servers did consume (the kills fell while they were reading and committing).
    let before = count(&session, "SELECT count(*) FROM clicks").await;
    assert!(
        before > 0,
        "no server committed anything before it was killed"
    );
    let mut last = serve(warehouse);
    let bad = (0..EVENTS).filter(|u| u % 97 == 0).count() as i64;
    eventually(&session, "SELECT count(*) FROM clicks", EVENTS - bad).await;
    eventually(&session, "SELECT count(*) FROM dead_letters", bad).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        count(&session, "SELECT count(DISTINCT user_id) FROM clicks").await,
        EVENTS - bad
    );
    assert_eq!(
        count(&session, "SELECT count(*) FROM clicks").await,
        EVENTS - bad
    );
    // Each rejected message once.
    assert_eq!(
        count(
            &session,
            "SELECT count(*) FROM (SELECT DISTINCT partition, \"offset\" FROM dead_letters)"
        )
        .await,
        bad
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &last.id().to_string()])
        .status();
    last.wait().expect("stopped");
}
