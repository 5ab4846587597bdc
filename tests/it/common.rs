//! A server per test, on a listener bound before serving starts (no sleeps, no port races).

use std::net::SocketAddr;

use arrow_flight::FlightInfo;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use futures::TryStreamExt;
use quiver::server::ServerOptions;
use quiver::session::{QuiverSession, SessionOptions};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub struct TestServer {
    pub addr: SocketAddr,
    pub warehouse: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(SessionOptions::default()).await
    }

    /// A server with the repository's example feature views (`sql/features`).
    pub async fn with_example_views() -> Self {
        Self::start_with(SessionOptions {
            sql_dir: Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql")),
            ..Default::default()
        })
        .await
    }

    pub async fn start_with(options: SessionOptions) -> Self {
        Self::start_serving(options, ServerOptions::local().expect("options")).await
    }

    /// A server with its own auth, TLS and limits.
    pub async fn start_serving(options: SessionOptions, server: ServerOptions) -> Self {
        let warehouse = tempfile::tempdir().expect("tempdir");
        let url = url::Url::from_directory_path(warehouse.path()).expect("url");
        let session = QuiverSession::open_with(url, options)
            .await
            .expect("session");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(quiver::server::serve(listener, session, server, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            warehouse,
            shutdown: Some(tx),
        }
    }

    /// Starts the server's shutdown, as SIGTERM does: it stops accepting and drains.
    pub fn shut_down(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn sql_client(&self) -> FlightSqlServiceClient<Channel> {
        FlightSqlServiceClient::new(self.channel().await)
    }

    pub async fn flight_client(&self) -> FlightServiceClient<Channel> {
        FlightServiceClient::new(self.channel().await)
    }

    /// Number of commits in a table's Delta log.
    pub fn commits(&self, schema: &str, table: &str) -> usize {
        let log = self
            .warehouse
            .path()
            .join(schema)
            .join(table)
            .join("_delta_log");
        std::fs::read_dir(log)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The items and interactions the test models (`tests/models`) recommend from and exclude by,
/// then the models loaded over them.
pub const RECOMMEND_TABLES: [&str; 3] = [
    "CREATE TABLE items AS SELECT CAST(value AS BIGINT) AS item_id FROM generate_series(0, 199)",
    "CREATE TABLE interactions AS SELECT CAST(value % 40 AS BIGINT) AS user_id, \
     CAST((value * 7) % 200 AS BIGINT) AS item_id FROM generate_series(0, 499)",
    "RELOAD MODELS",
];

/// Fetches every endpoint of a FlightInfo.
pub async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    info: FlightInfo,
) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("ticket");
        let stream = client.do_get(ticket).await.expect("do_get");
        batches.extend(stream.try_collect::<Vec<_>>().await.expect("stream"));
    }
    batches
}

/// Runs each statement as an update, in order; a failure names the statement.
pub async fn update_all(client: &mut FlightSqlServiceClient<Channel>, statements: &[&str]) {
    for statement in statements {
        client
            .execute_update(statement.to_string(), None)
            .await
            .expect(statement);
    }
}

/// Runs a query and returns its result pretty-printed, one line per element.
pub async fn query(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Vec<String> {
    let info = client.execute(sql.to_string(), None).await.expect(sql);
    let batches = fetch(client, info).await;
    pretty(&batches)
}

pub fn pretty(batches: &[RecordBatch]) -> Vec<String> {
    pretty_format_batches(batches)
        .expect("format")
        .to_string()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The gRPC code of a failed call.
pub fn code(e: &FlightError) -> tonic::Code {
    match e {
        FlightError::Tonic(status) => status.code(),
        other => panic!("not a gRPC error: {other:?}"),
    }
}
