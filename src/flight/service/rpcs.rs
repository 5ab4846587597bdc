//! The Flight SQL RPCs of [`QuiverFlightSql`]: each decodes its command, runs it through the
//! service (admitted, on the executor) and encodes the answer.

use std::pin::Pin;

use arrow_flight::sql::server::{DoPutError, FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementIngest, CommandStatementQuery, CommandStatementUpdate,
    DoPutPreparedStatementResult, DoPutUpdateResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, FlightDescriptor,
    FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, PutResult, SchemaAsIpc, Ticket,
};
use bytes::Bytes;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use futures::Stream;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, Result};
use crate::flight::guard::{client_settings, principal};
use crate::flight::handle::StatementHandle;
use crate::flight::ingest::{
    bound_parameters, bounded, collect_parameters, ingest_command, ingest_path, upload_options,
};
use crate::flight::session_options;
use crate::flight::stream::{FlightDataStream, batch_to_flight, wire_schema};
use crate::flight::{metadata, planner};
use crate::history::{self, Outcome, Running};

use super::{Origin, QuiverFlightSql, flight_info};

type ActionStream =
    Pin<Box<dyn Stream<Item = Result<arrow_flight::Result, Status>> + Send + 'static>>;
type HandshakeStream =
    Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send + 'static>>;
type PutStream = Pin<Box<dyn Stream<Item = Result<PutResult, Status>> + Send + 'static>>;

impl QuiverFlightSql {
    /// `CancelFlightInfo`: stops the DoGets of the info's tickets (and any that start later).
    fn cancel_flight_info(&self, body: &[u8]) -> Result<Response<ActionStream>, Status> {
        let request = CancelFlightInfoRequest::decode(body)
            .map_err(|e| Error::InvalidInput(format!("malformed CancelFlightInfoRequest: {e}")))?;
        let info = request.info.ok_or_else(|| {
            Error::InvalidInput("CancelFlightInfoRequest carries no FlightInfo".into())
        })?;
        let mut running = false;
        for endpoint in &info.endpoint {
            if let Some(ticket) = &endpoint.ticket {
                running |= self.admission.cancel_ticket(&ticket.ticket)?;
            }
        }
        tracing::info!(running, "CancelFlightInfo");
        let result = CancelFlightInfoResult {
            status: CancelStatus::Cancelled as i32,
        };
        let body = arrow_flight::Result {
            body: result.encode_to_vec().into(),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(body)]))))
    }
}

/// A metadata command's FlightInfo: the command itself is the ticket.
fn command_info(
    request: Request<FlightDescriptor>,
    schema: &Schema,
    command: impl ProstMessageExt,
) -> Result<Response<FlightInfo>, Status> {
    let info = flight_info(
        request.into_inner(),
        schema,
        command.as_any().encode_to_vec(),
    )?;
    Ok(Response::new(info))
}

fn schema_bytes(schema: &Schema) -> Result<Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e| Error::Arrow(e).to_status())?;
    Ok(bytes)
}

/// Records an update or ingest that affected `rows` rows (or failed) and passes its answer on.
fn finish_update(running: Running, result: Result<i64, Status>) -> Result<i64, Status> {
    running.finish(match &result {
        Ok(rows) => Outcome {
            rows: u64::try_from(*rows).ok(),
            ..Outcome::default()
        },
        Err(status) => Outcome::error(status.message()),
    });
    result
}

fn batch_response(
    batch: Result<datafusion::arrow::array::RecordBatch>,
) -> Result<Response<FlightDataStream>, Status> {
    Ok(Response::new(batch_to_flight(batch?)))
}

#[tonic::async_trait]
impl FlightSqlService for QuiverFlightSql {
    type FlightService = Self;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = principal(&request)?;
        let settings = client_settings(&request);
        let origin = Origin::of(&request);
        let info = self
            .statement_info(
                StatementHandle::new(query.query),
                request.into_inner(),
                &caller,
                &settings,
                origin,
            )
            .await?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = principal(&request)?;
        let settings = client_settings(&request);
        let handle = self.open_handle(&caller, &query.prepared_statement_handle)?;
        let origin = Origin::of(&request);
        Ok(Response::new(
            self.statement_info(handle, request.into_inner(), &caller, &settings, origin)
                .await?,
        ))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(request, &metadata::catalogs_schema(), query)
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(request, &metadata::db_schemas_schema(query.clone()), query)
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(request, &metadata::tables_schema(query.clone()), query)
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(request, &metadata::table_types_schema(), query)
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(request, &self.sql_info.schema(), query)
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(request, &metadata::primary_keys_schema(), query)
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(request, &self.xdbc.schema(), query)
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        let caller = principal(&request)?;
        let session = self.client_session(&client_settings(&request), &caller)?;
        let handle = self.open_handle(&caller, &ticket.statement_handle)?;
        let origin = Origin::of(&request);
        Ok(self.stream_statement(session, handle, caller, &request.get_ref().ticket, origin))
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        let caller = principal(&request)?;
        let session = self.client_session(&client_settings(&request), &caller)?;
        let handle = self.open_handle(&caller, &query.prepared_statement_handle)?;
        let origin = Origin::of(&request);
        Ok(self.stream_statement(session, handle, caller, &request.get_ref().ticket, origin))
    }

    async fn do_get_catalogs(
        &self,
        _query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        batch_response(metadata::catalogs())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        let batch = self
            .run(move |session| async move { metadata::db_schemas(&session, query).await })
            .await?;
        batch_response(Ok(batch))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        let batch = self
            .run(move |session| async move { metadata::tables(&session, query).await })
            .await?;
        batch_response(Ok(batch))
    }

    async fn do_get_table_types(
        &self,
        _query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        batch_response(metadata::table_types())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        batch_response(
            query
                .into_builder(&self.sql_info)
                .build()
                .map_err(Error::from),
        )
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        batch_response(metadata::primary_keys())
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        batch_response(query.into_builder(&self.xdbc).build().map_err(Error::from))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<FlightDataStream>, Status> {
        Err(Status::unimplemented(format!(
            "DoGet: unsupported ticket type {}",
            message.type_url
        )))
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = principal(&request)?;
        if command.transaction_id.is_some() {
            return Err(Error::Unsupported("transactions".into()).into());
        }
        let settings = client_settings(&request);
        let session = self.client_session(&settings, &caller)?;
        let running = self.statement_started(
            Origin::of(&request),
            &caller,
            history::kind_of(&command.query),
            &command.query,
        );
        let updated = self
            .run_statement_as(session, true, move |session| async move {
                planner::execute_update(&session, &command.query, None, &caller, &settings).await
            })
            .await;
        finish_update(running, updated)
    }

    async fn do_put_statement_ingest(
        &self,
        command: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = principal(&request)?;
        caller.authorize_write("ingest")?;
        let options = upload_options(request.metadata(), &command.options)?;
        let running = self.statement_started(
            Origin::of(&request),
            &caller,
            "ingest",
            &format!("ingest into {}", command.table),
        );
        let upload = request.into_inner();
        let max_bytes = self.admission.limits().max_upload_bytes;
        let ingested = self
            .run_upload(move |session| async move {
                ingest_command(&session, command, options, upload, max_bytes).await
            })
            .await;
        finish_update(running, ingested)
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let caller = principal(&request)?;
        let handle = self.open_handle(&caller, &query.prepared_statement_handle)?;
        let upload = bounded(
            request.into_inner(),
            self.admission.limits().max_upload_bytes,
        );
        // Decoding one parameter row is no query work: it stays on this thread (no executor hop on
        // the latency path of every prepared lookup).
        let bound = match bound_parameters(upload).await? {
            Some(stream) => handle.with_parameter_stream(stream),
            None => handle,
        };
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(self.seal_handle(&caller, &bound)),
        })
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = principal(&request)?;
        let handle = self.open_handle(&caller, &query.prepared_statement_handle)?;
        let settings = client_settings(&request);
        let session = self.client_session(&settings, &caller)?;
        let running = self.statement_started(
            Origin::of(&request),
            &caller,
            history::kind_of(&handle.sql),
            &handle.sql,
        );
        let upload = bounded(
            request.into_inner(),
            self.admission.limits().max_upload_bytes,
        );
        let updated = self
            .run_statement_as(session, true, move |session| async move {
                let params = match collect_parameters(upload).await? {
                    Some(params) => Some(params),
                    None => handle.parameter_batch()?,
                };
                planner::execute_update(&session, &handle.sql, params, &caller, &settings).await
            })
            .await;
        finish_update(running, updated)
    }

    async fn do_put_fallback(
        &self,
        request: Request<PeekableFlightDataStream>,
        message: Any,
    ) -> Result<Response<PutStream>, Status> {
        let caller = principal(&request)?;
        caller.authorize_write("ingest")?;
        let options = upload_options(request.metadata(), &Default::default())?;
        let running = self.statement_started(
            Origin::of(&request),
            &caller,
            "ingest",
            &format!("ingest ({})", message.type_url),
        );
        let upload = request.into_inner();
        let max_bytes = self.admission.limits().max_upload_bytes;
        let ingested = self
            .run_upload(move |session| async move {
                ingest_path(&session, options, upload, &message.type_url, max_bytes).await
            })
            .await;
        let rows = finish_update(running, ingested)?;
        let result = DoPutUpdateResult { record_count: rows };
        let put = PutResult {
            app_metadata: result.encode_to_vec().into(),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(put)]))))
    }

    async fn do_put_error_callback(
        &self,
        _request: Request<PeekableFlightDataStream>,
        error: DoPutError,
    ) -> Result<Response<PutStream>, Status> {
        let problem = match error {
            // The ADBC drivers send nothing at all when asked to ingest a table with no batches.
            DoPutError::MissingCommand => {
                "DoPut carried no messages, so there is no command and no schema: nothing to ingest \
                 (an empty Arrow table sends no batches; create an empty table with CREATE TABLE)"
            }
            DoPutError::MissingFlightDescriptor => {
                "DoPut's first message has no FlightDescriptor: it must name the command or table"
            }
        };
        Err(Error::InvalidInput(problem.into()).into())
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let caller = principal(&request)?;
        if query.transaction_id.is_some() {
            return Err(Error::Unsupported("transactions".into()).into());
        }
        let session = self.client_session(&client_settings(&request), &caller)?;
        // A statement that does not prepare (bad SQL, a missing table) is recorded as failed here;
        // one that does is recorded when it runs.
        let running = self.statement_started(
            Origin::of(&request),
            &caller,
            history::kind_of(&query.query),
            &query.query,
        );
        // Preparing plans the statement: within the cap and under `--query-timeout`, as running it.
        let prepared = self
            .run_statement_as(session, true, move |session| async move {
                planner::prepare(&session, &query.query).await
            })
            .await;
        let prepared = match prepared {
            Ok(prepared) => {
                running.discard();
                prepared
            }
            Err(status) => {
                running.finish(Outcome::error(status.message()));
                return Err(status);
            }
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: self.seal_handle(&caller, &prepared.handle),
            dataset_schema: schema_bytes(&wire_schema(&prepared.dataset_schema))?,
            parameter_schema: schema_bytes(&prepared.parameter_schema)?,
        })
    }

    async fn do_action_cancel_query(
        &self,
        _query: arrow_flight::sql::ActionCancelQueryRequest,
        _request: Request<Action>,
    ) -> Result<arrow_flight::sql::ActionCancelQueryResult, Status> {
        Err(Status::unimplemented(
            "CancelQuery is deprecated: send the CancelFlightInfo action with the FlightInfo",
        ))
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        // Handles are stateless: there is nothing to release.
        Ok(())
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<ActionStream>, Status> {
        principal(&request)?;
        let settings = client_settings(&request);
        let action = request.into_inner();
        if action.r#type == "CancelFlightInfo" {
            return self.cancel_flight_info(&action.body);
        }
        let body = match action.r#type.as_str() {
            "SetSessionOptions" => session_options::set(&action.body, &settings)?,
            "GetSessionOptions" => session_options::get(&settings),
            "CloseSession" => session_options::close(&settings),
            other => {
                return Err(Status::unimplemented(format!("unknown action '{other}'")));
            }
        };
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(result)]))))
    }

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<HandshakeStream>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let auth = self.auth.clone();
        // Argon2 verification is deliberately slow: it runs on the blocking pool, not an IO thread.
        let (caller, token) =
            tokio::task::spawn_blocking(move || auth.login(authorization.as_deref()))
                .await
                .map_err(|e| Status::internal(format!("login task failed: {e}")))??;
        tracing::info!(user = %caller.name, "logged in");
        let bearer = format!("Bearer {token}");
        let value = tonic::metadata::MetadataValue::try_from(bearer.as_str())
            .map_err(|e| Status::internal(format!("token is not a header value: {e}")))?;
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: Bytes::from(token),
        };
        let mut response: Response<HandshakeStream> =
            Response::new(Box::pin(futures::stream::iter([Ok(reply)])));
        response.metadata_mut().insert("authorization", value);
        Ok(response)
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
