//! The service on the wire: Flight SQL, plus plain Arrow Flight for clients without Flight SQL
//! (pyarrow.flight).
//!
//! Plain Flight: a ticket or CMD descriptor holding UTF-8 SQL runs that SQL; a PATH descriptor
//! `[table]` / `[schema, table]` names a table (GetFlightInfo, GetSchema, DoPut appends); ListFlights
//! lists the tables. Everything that is a Flight SQL command goes to [`QuiverFlightSql`].

use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::{Any, Command, ProstMessageExt, TicketStatementQuery};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use futures::StreamExt;
use futures::stream::BoxStream;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::flight::guard::{client_settings, principal};
use crate::flight::handle::StatementHandle;
use crate::flight::metadata::{path_to_table, table_arrow_schema};
use crate::flight::planner;
use crate::flight::service::{Origin, QuiverFlightSql, flight_info};
use crate::flight::session_cookie::ClientSettings;
use crate::flight::stream::{FlightDataStream, wire_schema};
use crate::session::QuiverSession;
use crate::storage::DEFAULT_SCHEMA;

const FLIGHT_SQL_TYPE_PREFIX: &str = "type.googleapis.com/arrow.flight.protocol.sql.";

#[derive(Clone)]
pub struct QuiverFlight {
    sql: QuiverFlightSql,
}

impl QuiverFlight {
    pub fn new(sql: QuiverFlightSql) -> Self {
        Self { sql }
    }

    fn session(&self) -> &QuiverSession {
        self.sql.session()
    }
}

/// Whether bytes are a Flight SQL command (a protobuf `Any` of a Flight SQL message).
fn is_flight_sql(bytes: &[u8]) -> bool {
    Any::decode(bytes).is_ok_and(|any| any.type_url.starts_with(FLIGHT_SQL_TYPE_PREFIX))
}

fn sql_text(bytes: &[u8]) -> Result<String> {
    let text = std::str::from_utf8(bytes).map_err(|_| {
        Error::InvalidInput("ticket is neither a Flight SQL command nor UTF-8 SQL text".into())
    })?;
    if text.trim().is_empty() {
        return Err(Error::InvalidInput(
            "empty ticket: send SQL text or a Flight SQL command".into(),
        ));
    }
    Ok(text.to_string())
}

/// The SQL a descriptor stands for: a table path, a Flight SQL statement command, or SQL text.
fn descriptor_sql(
    descriptor: &FlightDescriptor,
    sql: &QuiverFlightSql,
    caller: &Principal,
) -> Result<String, Status> {
    match descriptor.r#type() {
        DescriptorType::Path => Ok(table_sql(&descriptor.path)?),
        _ if is_flight_sql(&descriptor.cmd) => statement_of_command(&descriptor.cmd, sql, caller),
        _ => Ok(sql_text(&descriptor.cmd)?),
    }
}

/// SQL that reads a whole table named by a descriptor path.
fn table_sql(path: &[String]) -> Result<String> {
    let (schema, table) = path_to_table(path)?;
    Ok(format!(
        "SELECT * FROM \"{}\".\"{}\"",
        schema.replace('"', "\"\""),
        table.replace('"', "\"\"")
    ))
}

impl QuiverFlight {
    async fn plain_info(
        &self,
        descriptor: FlightDescriptor,
        caller: Principal,
        settings: &ClientSettings,
        origin: Origin,
    ) -> Result<FlightInfo, Status> {
        let sql = descriptor_sql(&descriptor, &self.sql, &caller)?;
        let handle = StatementHandle::new(sql.clone());
        let (schema, handle) = self
            .sql
            .plan_statement(handle, &caller, settings, origin)
            .await?;
        // A query's ticket is its SQL text; a statement that already ran carries its result.
        let ticket = if handle.result.is_empty() {
            sql.into_bytes()
        } else {
            TicketStatementQuery {
                statement_handle: self.sql.seal_handle(&caller, &handle),
            }
            .as_any()
            .encode_to_vec()
        };
        flight_info(descriptor, &schema, ticket)
    }

    async fn list_tables(&self) -> Result<Vec<FlightInfo>> {
        let warehouse = self.session().warehouse().clone();
        let mut infos = Vec::new();
        for schema in warehouse.schemas().await? {
            for (table, location) in warehouse.tables(&schema).await? {
                // One unreadable table (e.g. an external table using a Delta feature delta-rs lacks)
                // must not hide all the others.
                let arrow_schema = match table_arrow_schema(
                    self.session(),
                    &schema,
                    &table,
                    &location,
                )
                .await
                {
                    Ok(arrow_schema) => arrow_schema,
                    Err(e) => {
                        tracing::warn!(%schema, %table, error = %e, "ListFlights: skipping unreadable table");
                        continue;
                    }
                };
                let path = if schema == DEFAULT_SCHEMA {
                    vec![table.clone()]
                } else {
                    vec![schema.clone(), table.clone()]
                };
                let sql = table_sql(&[schema.clone(), table])?;
                let info = flight_info(
                    FlightDescriptor::new_path(path),
                    &arrow_schema,
                    sql.into_bytes(),
                )
                .map_err(|s| Error::Internal(s.message().to_string()))?;
                infos.push(info);
            }
        }
        Ok(infos)
    }
}

#[tonic::async_trait]
impl FlightService for QuiverFlight {
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = FlightDataStream;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let response = FlightService::handshake(&self.sql, request).await?;
        Ok(response.map(|s| s.boxed()))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let this = self.clone();
        let infos = self
            .sql
            .run(move |_| async move { this.list_tables().await })
            .await?;
        Ok(Response::new(
            futures::stream::iter(infos.into_iter().map(Ok)).boxed(),
        ))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let descriptor = request.get_ref();
        if descriptor.r#type() == DescriptorType::Cmd && is_flight_sql(&descriptor.cmd) {
            return FlightService::get_flight_info(&self.sql, request)
                .await
                .map_err(malformed_message);
        }
        let caller = principal(&request)?;
        let settings = client_settings(&request);
        let origin = Origin::of(&request);
        Ok(Response::new(
            self.plain_info(request.into_inner(), caller, &settings, origin)
                .await?,
        ))
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        FlightService::poll_flight_info(&self.sql, request)
            .await
            .map_err(malformed_message)
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let caller = principal(&request)?;
        let session = self
            .sql
            .client_session(&client_settings(&request), &caller)?;
        let descriptor = request.into_inner();
        let handle = StatementHandle::new(descriptor_sql(&descriptor, &self.sql, &caller)?);
        let schema = self
            .sql
            .run_statement_as(session, false, move |session| async move {
                Ok(planner::plan_handle(&session, &handle).await?.schema())
            })
            .await?;
        Ok(Response::new(schema_result(&schema)?))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        if is_flight_sql(&request.get_ref().ticket) {
            return FlightService::do_get(&self.sql, request)
                .await
                .map_err(malformed_message);
        }
        let caller = principal(&request)?;
        let session = self
            .sql
            .client_session(&client_settings(&request), &caller)?;
        let origin = Origin::of(&request);
        let ticket = &request.get_ref().ticket;
        let sql = sql_text(ticket)?;
        Ok(self
            .sql
            .stream_statement(session, StatementHandle::new(sql), caller, ticket, origin))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let response = FlightService::do_put(&self.sql, request)
            .await
            .map_err(malformed_message)?;
        Ok(response.map(|s| s.boxed()))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let response = FlightService::do_action(&self.sql, request)
            .await
            .map_err(malformed_message)?;
        Ok(response.map(|s| s.boxed()))
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let response = FlightService::list_actions(&self.sql, request).await?;
        Ok(response.map(|s| s.boxed()))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented(
            "DoExchange is not supported: use DoGet for queries and DoPut for uploads",
        ))
    }
}

/// arrow-flight's Flight SQL dispatch reports a command or action body it cannot decode as Internal
/// (`ParseError(..)`); it is the client's malformed message, so InvalidArgument.
fn malformed_message(status: Status) -> Status {
    if status.code() == tonic::Code::Internal && status.message().starts_with("ParseError(") {
        let status = Error::InvalidInput(format!(
            "malformed Flight SQL message: {}",
            status.message()
        ))
        .to_status();
        return status;
    }
    status
}

/// The SQL inside a Flight SQL statement command, for GetSchema.
fn statement_of_command(
    bytes: &[u8],
    sql: &QuiverFlightSql,
    caller: &Principal,
) -> Result<String, Status> {
    let any =
        Any::decode(bytes).map_err(|e| Error::InvalidInput(format!("malformed command: {e}")))?;
    match Command::try_from(any)
        .map_err(|e| Error::InvalidInput(format!("malformed command: {e}")))?
    {
        Command::CommandStatementQuery(q) => Ok(q.query),
        Command::CommandPreparedStatementQuery(p) => {
            Ok(sql.open_handle(caller, &p.prepared_statement_handle)?.sql)
        }
        other => Err(Error::Unsupported(format!("GetSchema for {}", other.type_url())).into()),
    }
}

fn schema_result(schema: &Schema) -> Result<SchemaResult> {
    let options = IpcWriteOptions::default();
    Ok(SchemaAsIpc::new(&wire_schema(schema), &options).try_into()?)
}
