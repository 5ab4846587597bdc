//! The Flight SQL service: decodes each RPC, runs the planner on the executor, encodes the answer.
//!
//! Statement RPCs: GetFlightInfo only plans; DoGet re-plans from the stateless ticket and streams.
//! The RPCs themselves are in `rpcs.rs`; here is what they share: admission, the runtimes, handles.

mod rpcs;

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::{ProstMessageExt, TicketStatementQuery};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use bytes::Bytes;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use prost::Message;
use tonic::{Response, Status};
use tracing::Instrument;

use crate::auth::{Auth, Principal, Role};
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::flight::guard::request_id;
use crate::flight::handle::StatementHandle;
use crate::flight::limits::{Admission, Limits};
use crate::flight::session_cookie::ClientSettings;
use crate::flight::stream::{
    FlightDataStream, batches_to_flight, execute_to_flight, served, wire_schema,
};
use crate::flight::{metadata, planner};
use crate::history::{self, Outcome, Running, Viewer};
use crate::query::prepared::PreparedPlans;
use crate::session::QuiverSession;

#[derive(Clone)]
pub struct QuiverFlightSql {
    session: QuiverSession,
    /// Prepared statements answered without planning (online lookups, recommend calls).
    prepared: Arc<PreparedPlans>,
    executor: Arc<Executor>,
    /// Where uploads run (their own runtime, so queries cannot starve them).
    uploads: Arc<Executor>,
    auth: Arc<Auth>,
    admission: Arc<Admission>,
    sql_info: Arc<SqlInfoData>,
    xdbc: Arc<XdbcTypeInfoData>,
}

impl QuiverFlightSql {
    pub fn new(
        session: QuiverSession,
        executor: Arc<Executor>,
        uploads: Arc<Executor>,
        auth: Arc<Auth>,
        limits: Limits,
    ) -> Result<Self> {
        Ok(Self {
            session,
            prepared: Arc::default(),
            executor,
            uploads,
            auth,
            admission: Arc::new(Admission::new(limits)),
            sql_info: Arc::new(metadata::sql_info()?),
            xdbc: Arc::new(metadata::xdbc_type_info()?),
        })
    }

    pub fn auth(&self) -> &Arc<Auth> {
        &self.auth
    }

    /// A handle sent back by `caller`, its signature checked.
    pub fn open_handle(&self, caller: &Principal, bytes: &[u8]) -> Result<StatementHandle, Status> {
        StatementHandle::open(bytes, &self.auth, caller).map_err(Status::from)
    }

    /// A handle for `caller`, signed.
    pub fn seal_handle(&self, caller: &Principal, handle: &StatementHandle) -> Bytes {
        handle.seal(&self.auth, caller)
    }

    /// Runs a statement (`timed`: under `--query-timeout`; uploads are not) on the executor within
    /// the concurrency cap.
    pub async fn run_statement<F, Fut, T>(&self, timed: bool, work: F) -> Result<T, Status>
    where
        F: FnOnce(QuiverSession) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.run_statement_as(self.session.clone(), timed, work)
            .await
    }

    /// [`Self::run_statement`] in `session` (a client's, with its settings).
    pub async fn run_statement_as<F, Fut, T>(
        &self,
        session: QuiverSession,
        timed: bool,
        work: F,
    ) -> Result<T, Status>
    where
        F: FnOnce(QuiverSession) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        admitted(&self.admission, &self.executor, timed, work(session)).await
    }

    /// Runs an upload (not under `--query-timeout`) on the uploads' runtime within the
    /// concurrency cap.
    pub async fn run_upload<F, Fut, T>(&self, work: F) -> Result<T, Status>
    where
        F: FnOnce(QuiverSession) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        admitted(
            &self.admission,
            &self.uploads,
            false,
            work(self.session.clone()),
        )
        .await
    }

    pub fn session(&self) -> &QuiverSession {
        &self.session
    }

    pub fn prepared(&self) -> &Arc<PreparedPlans> {
        &self.prepared
    }

    /// The session a client's statements run in: the server's, with the client's settings; a
    /// `read` caller's shows them only their own statements in `system.queries`.
    pub fn client_session(
        &self,
        settings: &ClientSettings,
        caller: &Principal,
    ) -> Result<QuiverSession, Status> {
        let session = self
            .session
            .with_settings(settings.current.iter())
            .map_err(Status::from)?;
        Ok(match caller.role {
            Role::ReadWrite => session,
            Role::Read => session.viewed_by(Viewer {
                user: caller.name.to_string(),
            }),
        })
    }

    /// Opens `system.queries`' entry for a statement `caller` sent.
    pub fn statement_started(
        &self,
        origin: Origin,
        caller: &Principal,
        kind: &'static str,
        sql: &str,
    ) -> Running {
        self.session.history().start(
            origin.id,
            history::Statement {
                user: caller.name.to_string(),
                role: caller.role.as_str(),
                kind,
                sql: sql.to_string(),
                client: origin.client.map(|a| a.to_string()),
            },
        )
    }

    pub fn executor(&self) -> &Arc<Executor> {
        &self.executor
    }

    /// Runs `work` against the session on the executor, within the concurrency cap and under
    /// `--query-timeout`: metadata RPCs read the warehouse like any query.
    pub async fn run<F, Fut, T>(&self, work: F) -> Result<T, Status>
    where
        F: FnOnce(QuiverSession) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.run_statement(true, work).await
    }

    /// Streams the result of the statement in `handle` (DoGet of `ticket`).
    pub fn stream_statement(
        &self,
        session: QuiverSession,
        handle: StatementHandle,
        caller: Principal,
        ticket: &[u8],
        origin: Origin,
    ) -> Response<FlightDataStream> {
        // A result that came with the ticket (a statement that ran at GetFlightInfo, an online
        // lookup) is only decoded and sent: no planning, no executor. Its statement was recorded
        // when it ran.
        match handle.stored_result() {
            Ok(Some((schema, batches))) => {
                return Response::new(batches_to_flight(schema, batches));
            }
            Err(e) => return Response::new(error_stream(e)),
            Ok(None) => {}
        }
        let running =
            self.statement_started(origin, &caller, history::kind_of(&handle.sql), &handle.sql);
        let slot = match self.admission.admit_ticket(ticket) {
            Ok(slot) => slot,
            Err(e) => {
                running.finish(Outcome::failed(&e));
                return Response::new(error_stream(e));
            }
        };
        Response::new(execute_to_flight(
            &self.executor,
            slot,
            running,
            async move { planner::execute_handle(&session, &handle, &caller).await },
        ))
    }

    /// Plans the statement in `handle` for `caller` (GetFlightInfo): a query is only planned (its
    /// DoGet runs it); anything else runs now and its result travels in the returned handle. The
    /// statement is recorded in `system.queries` here when it ran or failed.
    pub async fn plan_statement(
        &self,
        handle: StatementHandle,
        caller: &Principal,
        settings: &ClientSettings,
        origin: Origin,
    ) -> Result<(SchemaRef, StatementHandle), Status> {
        let running =
            self.statement_started(origin, caller, history::kind_of(&handle.sql), &handle.sql);
        let planned = match planner::answer_known_lookup(&self.session, &self.prepared, &handle) {
            Some(answer) => answer.map_err(Status::from),
            None => {
                let planning_caller = caller.clone();
                let current = settings.current.clone();
                let session = self.client_session(settings, caller)?;
                let prepared = self.prepared.clone();
                self.run_statement_as(session, true, move |session| async move {
                    planner::plan_for_client(
                        &session,
                        &prepared,
                        handle,
                        &planning_caller,
                        &current,
                    )
                    .await
                })
                .await
                .map(|plan| {
                    if let Some(changed) = plan.settings {
                        settings.change(changed);
                    }
                    (plan.schema, plan.handle)
                })
            }
        };
        match &planned {
            Err(status) => running.finish(Outcome::error(status.message())),
            Ok((_, handle)) if !handle.result.is_empty() => {
                let bytes = handle.result.len() as u64;
                served(handle.result_rows, bytes);
                running.finish(Outcome {
                    rows: handle.affected_rows,
                    bytes: Some(bytes),
                    error: None,
                });
            }
            // A query: recorded by its DoGet.
            Ok(_) => running.discard(),
        }
        planned
    }

    /// Plans the statement in `handle` and describes where to fetch its result (GetFlightInfo).
    pub async fn statement_info(
        &self,
        handle: StatementHandle,
        descriptor: FlightDescriptor,
        caller: &Principal,
        settings: &ClientSettings,
        origin: Origin,
    ) -> Result<FlightInfo, Status> {
        let (schema, handle) = self
            .plan_statement(handle, caller, settings, origin)
            .await?;
        let ticket = TicketStatementQuery {
            statement_handle: self.seal_handle(caller, &handle),
        };
        flight_info(descriptor, &schema, ticket.as_any().encode_to_vec())
    }
}

/// Where a statement came from: its request's id and the client's address.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub id: u64,
    pub client: Option<SocketAddr>,
}

impl Origin {
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        Self {
            id: request_id(request),
            client: request.remote_addr(),
        }
    }
}

/// Runs `work` on `executor` once admitted under the concurrency cap (`timed`: under
/// `--query-timeout`).
async fn admitted<Fut, T>(
    admission: &Admission,
    executor: &Executor,
    timed: bool,
    work: Fut,
) -> Result<T, Status>
where
    Fut: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let slot = admission.admit(timed)?;
    executor
        .run(async move { slot.bound(work).await }.in_current_span())
        .await
        .map_err(Status::from)
}

/// A DoGet answer that is only an error.
fn error_stream(e: Error) -> FlightDataStream {
    let status = e.to_status();
    Box::pin(futures::stream::once(async { Err(status) }))
}

/// A FlightInfo with one endpoint whose ticket is `ticket`, on this same server.
pub fn flight_info(
    descriptor: FlightDescriptor,
    schema: &Schema,
    ticket: Vec<u8>,
) -> Result<FlightInfo, Status> {
    let info = FlightInfo::new()
        .try_with_schema(&wire_schema(schema))
        .map_err(|e| Error::Arrow(e).to_status())?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor)
        .with_total_records(-1)
        .with_total_bytes(-1);
    Ok(info)
}
