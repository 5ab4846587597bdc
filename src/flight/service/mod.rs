//! The Flight SQL service: decodes each RPC, runs the planner on the executor, encodes the answer.
//!
//! Statement RPCs: GetFlightInfo only plans; DoGet re-plans from the stateless ticket and streams.
//! The RPCs themselves are in `rpcs.rs`; here is what they share: admission, the runtimes, handles.

mod rpcs;

use std::sync::Arc;

use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::{ProstMessageExt, TicketStatementQuery};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use bytes::Bytes;
use datafusion::arrow::datatypes::Schema;
use prost::Message;
use tonic::{Response, Status};

use crate::auth::{Auth, Principal};
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::flight::handle::StatementHandle;
use crate::flight::limits::{Admission, Limits};
use crate::flight::session_cookie::ClientSettings;
use crate::flight::stream::{FlightDataStream, batches_to_flight, execute_to_flight, wire_schema};
use crate::flight::{metadata, planner};
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

    /// The session a client's statements run in: the server's, with the client's settings.
    pub fn client_session(&self, settings: &ClientSettings) -> Result<QuiverSession, Status> {
        self.session
            .with_settings(settings.current.iter())
            .map_err(Status::from)
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
    ) -> Response<FlightDataStream> {
        // A result that came with the ticket (a statement that ran at GetFlightInfo, an online
        // lookup) is only decoded and sent: no planning, no executor.
        match handle.stored_result() {
            Ok(Some((schema, batches))) => {
                return Response::new(batches_to_flight(schema, batches));
            }
            Err(e) => return Response::new(error_stream(e)),
            Ok(None) => {}
        }
        let slot = match self.admission.admit_ticket(ticket) {
            Ok(slot) => slot,
            Err(e) => return Response::new(error_stream(e)),
        };
        Response::new(execute_to_flight(&self.executor, slot, async move {
            planner::execute_handle(&session, &handle, &caller).await
        }))
    }

    /// Plans the statement in `handle` and describes where to fetch its result (GetFlightInfo).
    pub async fn statement_info(
        &self,
        handle: StatementHandle,
        descriptor: FlightDescriptor,
        caller: &Principal,
        settings: &ClientSettings,
    ) -> Result<FlightInfo, Status> {
        let (schema, handle) =
            match planner::answer_known_lookup(&self.session, &self.prepared, &handle) {
                Some(answer) => answer?,
                None => {
                    let planning_caller = caller.clone();
                    let current = settings.current.clone();
                    let session = self.client_session(settings)?;
                    let prepared = self.prepared.clone();
                    let plan = self
                        .run_statement_as(session, true, move |session| async move {
                            planner::plan_for_client(
                                &session,
                                &prepared,
                                handle,
                                &planning_caller,
                                &current,
                            )
                            .await
                        })
                        .await?;
                    if let Some(changed) = plan.settings {
                        settings.change(changed);
                    }
                    (plan.schema, plan.handle)
                }
            };
        let ticket = TicketStatementQuery {
            statement_handle: self.seal_handle(caller, &handle),
        };
        flight_info(descriptor, &schema, ticket.as_any().encode_to_vec())
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
        .run(async move { slot.bound(work).await })
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
