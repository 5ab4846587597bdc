//! The ADBC pass: a Quiver server on a real gRPC socket and the ADBC Flight SQL driver as its
//! client (see the runner's documentation).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use adbc_core::options::{AdbcVersion, OptionDatabase, OptionValue};
use adbc_core::{Connection, Database, Driver, Statement};
use adbc_driver_manager::{ManagedConnection, ManagedDriver};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::{FlightDescriptor, FlightInfo};
use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use futures::TryStreamExt;
use quiver::session::QuiverSession;
use sqllogictest::{DBOutput, DefaultColumnType};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use super::{Broken, SltError, note_broken, output};

const DRIVER_FILE: &str = "libadbc_driver_flightsql.so";

/// The ADBC Flight SQL driver: `QUIVER_ADBC_DRIVER`, else the one in the test venv. `Ok(None)` when
/// there is none and none was asked for.
pub fn load_driver() -> Result<Option<ManagedDriver>, String> {
    let (path, required) = match std::env::var_os("QUIVER_ADBC_DRIVER") {
        Some(path) => (Some(PathBuf::from(path)), true),
        None => (venv_driver(), false),
    };
    let Some(path) = path.filter(|p| p.is_file()) else {
        if required {
            return Err(format!(
                "QUIVER_ADBC_DRIVER is set but names no file ({:?})",
                std::env::var_os("QUIVER_ADBC_DRIVER").unwrap_or_default()
            ));
        }
        println!(
            "skip   ADBC pass: no {DRIVER_FILE} (set QUIVER_ADBC_DRIVER, or run tests/run.sh, which \
             installs adbc-driver-flightsql in its venv)"
        );
        return Ok(None);
    };
    ManagedDriver::load_dynamic_from_filename(&path, None, AdbcVersion::V110)
        .map(Some)
        .map_err(|e| format!("cannot load the ADBC driver {}: {e}", path.display()))
}

/// `<venv>/lib/python3*/site-packages/adbc_driver_flightsql/libadbc_driver_flightsql.so`.
fn venv_driver() -> Option<PathBuf> {
    let venv = std::env::var_os("QUIVER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(Result::ok)
        .map(|python| {
            python
                .path()
                .join("site-packages")
                .join("adbc_driver_flightsql")
                .join(DRIVER_FILE)
        })
        .find(|p| p.is_file())
}

/// A server for one file, serving `session` as `quiver serve` does, until dropped.
pub struct Server {
    addr: SocketAddr,
    _shutdown: oneshot::Sender<()>,
}

impl Server {
    pub async fn start(session: QuiverSession) -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let options = quiver::server::ServerOptions::local().map_err(|e| e.to_string())?;
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(quiver::server::serve(listener, session, options, async {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            _shutdown: tx,
        })
    }
}

/// One ADBC connection to the file's server, and the arrow-flight Rust clients (Flight SQL, and
/// plain Flight with SQL tickets as pyarrow.flight sends them) that read-only queries also run
/// through.
pub struct AdbcDb {
    connection: ManagedConnection,
    sql_client: FlightSqlServiceClient<Channel>,
    plain_client: FlightServiceClient<Channel>,
    broken: Broken,
    _server: Server,
}

impl AdbcDb {
    pub async fn connect(
        driver: &ManagedDriver,
        server: Server,
        broken: Broken,
    ) -> Result<Self, String> {
        let channel = Channel::from_shared(format!("http://{}", server.addr))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let sql_client = FlightSqlServiceClient::new(channel.clone());
        let plain_client = FlightServiceClient::new(channel);
        let uri = format!("grpc://{}", server.addr);
        let database = driver
            .clone()
            .new_database_with_opts([(OptionDatabase::Uri, OptionValue::String(uri))])
            .map_err(|e| e.to_string())?;
        let connection = database.new_connection().map_err(|e| e.to_string())?;
        Ok(Self {
            connection,
            sql_client,
            plain_client,
            broken,
            _server: server,
        })
    }
}

/// A statement's result through the driver: prepared (`true`) or not.
fn execute(
    connection: &mut ManagedConnection,
    sql: &str,
    prepared: bool,
) -> Result<(SchemaRef, Vec<RecordBatch>), adbc_core::error::Error> {
    let mut statement = connection.new_statement()?;
    statement.set_sql_query(sql)?;
    if prepared {
        statement.prepare()?;
    }
    let reader = statement.execute()?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| {
        adbc_core::error::Error::with_message_and_status(
            e.to_string(),
            adbc_core::error::Status::IO,
        )
    })?;
    Ok((schema, batches))
}

fn same(a: &DBOutput<DefaultColumnType>, b: &DBOutput<DefaultColumnType>) -> bool {
    match (a, b) {
        (
            DBOutput::Rows {
                types: t1,
                rows: r1,
            },
            DBOutput::Rows {
                types: t2,
                rows: r2,
            },
        ) => t1 == t2 && r1 == r2,
        (DBOutput::StatementComplete(a), DBOutput::StatementComplete(b)) => a == b,
        _ => false,
    }
}

/// The batches of a DoGet, checked against the schema GetFlightInfo announced.
async fn conforming(
    mut stream: FlightRecordBatchStream,
    announced: &SchemaRef,
) -> Result<Vec<RecordBatch>, String> {
    let mut batches = Vec::new();
    while let Some(batch) = stream.try_next().await.map_err(|e| e.to_string())? {
        if batch.schema_ref() != announced {
            return Err(format!(
                "a batch's schema {:?} is not the announced {announced:?}",
                batch.schema()
            ));
        }
        batches.push(batch);
    }
    match stream.schema() {
        Some(schema) if schema != announced => Err(format!(
            "the stream's schema {schema:?} is not the announced {announced:?}"
        )),
        _ => Ok(batches),
    }
}

/// Whether a query can run twice with the same answer (no side effects).
fn is_read_only(sql: &str) -> bool {
    let head = sql.trim_start().to_ascii_uppercase();
    ["SELECT", "WITH", "VALUES"]
        .iter()
        .any(|k| head.starts_with(k))
}

#[async_trait]
impl sqllogictest::AsyncDB for AdbcDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let mut connection = self.connection.clone();
        let text = sql.to_string();
        // The driver blocks: off the runtime that serves the calls it makes.
        let (prepared, unprepared) = tokio::task::spawn_blocking(move || {
            let prepared = execute(&mut connection, &text, true);
            let unprepared = (prepared.is_ok() && is_read_only(&text))
                .then(|| execute(&mut connection, &text, false));
            (prepared, unprepared)
        })
        .await
        .map_err(|e| SltError(format!("ADBC call panicked: {e}")))?;
        let (schema, batches) = match prepared {
            Ok(result) => result,
            Err(e) => return Err(self.failed(sql, e)),
        };
        let result = output(sql, &schema, &batches);
        match unprepared {
            Some(Err(e)) => {
                note_broken(&self.broken, sql, format!("unprepared, an error: {e}"));
            }
            Some(Ok((schema2, batches2)))
                if schema2 != schema || !same(&output(sql, &schema2, &batches2), &result) =>
            {
                note_broken(
                    &self.broken,
                    sql,
                    format!("unprepared, another result: {schema2:?} vs {schema:?} (prepared)"),
                );
            }
            _ => {}
        }
        if is_read_only(sql) {
            for (client, answer) in [
                (
                    "the Rust Flight SQL client",
                    self.through_flight_sql(sql).await,
                ),
                (
                    "plain Flight (pyarrow.flight's calls)",
                    self.through_plain_flight(sql).await,
                ),
            ] {
                match answer {
                    Ok((schema2, batches2))
                        if schema2 == schema
                            && same(&output(sql, &schema2, &batches2), &result) => {}
                    Ok((schema2, _)) => note_broken(
                        &self.broken,
                        sql,
                        format!("{client}, another result: {schema2:?} vs {schema:?} (ADBC)"),
                    ),
                    Err(e) => note_broken(&self.broken, sql, format!("{client}, an error: {e}")),
                }
            }
        }
        Ok(result)
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "quiver-adbc"
    }
}

impl AdbcDb {
    /// A query through arrow-flight's Flight SQL client; the stream's and every batch's schema must
    /// be the one GetFlightInfo announced.
    async fn through_flight_sql(
        &mut self,
        sql: &str,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
        let info = self
            .sql_client
            .execute(sql.to_string(), None)
            .await
            .map_err(|e| e.to_string())?;
        self.fetch(info).await
    }

    /// A query as pyarrow.flight runs it: GetFlightInfo of a command descriptor holding the SQL
    /// text, then DoGet of its ticket.
    async fn through_plain_flight(
        &mut self,
        sql: &str,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
        let descriptor = FlightDescriptor::new_cmd(sql.to_string());
        let info = self
            .plain_client
            .get_flight_info(descriptor)
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        self.fetch(info).await
    }

    /// Every endpoint of `info` (DoGet is the same call for both clients), each stream checked
    /// against the schema `info` announced.
    async fn fetch(&mut self, info: FlightInfo) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
        let announced = Arc::new(
            info.clone()
                .try_decode_schema()
                .map_err(|e| e.to_string())?,
        );
        let mut batches = Vec::new();
        for endpoint in info.endpoint {
            let ticket = endpoint.ticket.ok_or("an endpoint without a ticket")?;
            let data = self
                .plain_client
                .do_get(ticket)
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .map_err(|s| FlightError::Tonic(Box::new(s)));
            let stream = FlightRecordBatchStream::new_from_flight_data(data);
            batches.extend(conforming(stream, &announced).await?);
        }
        Ok((announced, batches))
    }

    /// The driver's error as the file sees it; Internal, Unknown and schema mismatches noted as bugs.
    fn failed(&self, sql: &str, e: adbc_core::error::Error) -> SltError {
        use adbc_core::error::Status;
        let message = e.message.clone();
        if matches!(e.status, Status::Internal | Status::Unknown)
            || message.contains("inconsistent schema")
            || message.contains("INTERNAL")
            || message.contains("UNKNOWN")
        {
            note_broken(&self.broken, sql, format!("{:?}: {message}", e.status));
        }
        SltError(message)
    }
}
