//! The Flight SQL planner: commands to plans and results, without any gRPC types.
//!
//! The service layer decodes a request, calls one function here, and encodes what comes back.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{DmlStatement, LogicalPlan, WriteOp};
use futures::TryStreamExt;
use tracing::Instrument;

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::flight::handle::StatementHandle;
use crate::flight::session_cookie::ClientSettings;
use crate::query::Command;
use crate::query::command_sql::SourceStatement;
use crate::query::prepared::PreparedPlans;
use crate::query::settings::Settings;
use crate::query::statement::{plan_sql_with, row_parameters};
use crate::query::update::{self, retry_conflicts};
use crate::query::{Planned, direct_answer, execute, plan_sql};
use crate::session::QuiverSession;

/// Largest result (an online lookup, a recommend call) sent inside its ticket rather than computed
/// again at DoGet.
const MAX_RESULT_IN_TICKET: usize = 256 * 1024;

/// A statement prepared for a client: its handle and the schemas it reports.
pub struct Prepared {
    pub handle: StatementHandle,
    pub dataset_schema: SchemaRef,
    pub parameter_schema: Schema,
}

pub async fn prepare(session: &QuiverSession, sql: &str) -> Result<Prepared> {
    let planned = plan_sql(session, sql).await?;
    Ok(Prepared {
        handle: StatementHandle::new(sql),
        dataset_schema: planned.schema(),
        parameter_schema: planned.parameter_schema()?,
    })
}

/// Plans the statement in a handle with its bound parameters (one row, for queries).
pub async fn plan_handle(session: &QuiverSession, handle: &StatementHandle) -> Result<Planned> {
    plan_bound(session, &handle.sql, handle.parameter_batch()?).await
}

/// Plans `sql` with its bound parameters, if any.
async fn plan_bound(
    session: &QuiverSession,
    sql: &str,
    params: Option<RecordBatch>,
) -> Result<Planned> {
    match params {
        None => plan_sql(session, sql).await,
        Some(params) if params.num_rows() == 1 => {
            let values = row_parameters(&params, 0)?;
            plan_sql_with(session, sql, Some(&values))
                .await?
                .bind(&params, 0)
        }
        Some(params) => Err(Error::InvalidInput(format!(
            "a query binds one row of parameters, got {} rows (use executemany for updates)",
            params.num_rows()
        ))),
    }
}

/// A statement planned for a client at GetFlightInfo.
pub struct ClientPlan {
    pub schema: SchemaRef,
    pub handle: StatementHandle,
    /// The client's session settings after the statement, if it changed them (`SET`, `RESET`).
    pub settings: Option<Settings>,
}

impl ClientPlan {
    fn done((schema, handle): (SchemaRef, StatementHandle)) -> Self {
        Self {
            schema,
            handle,
            settings: None,
        }
    }
}

/// Plans a handle for GetFlightInfo, for a client whose session settings are `settings` (already
/// applied to `session`). A statement with side effects (DDL, INSERT, DELETE, ...) runs here, so it
/// has taken effect when the client's `execute` returns; its result goes into the returned handle.
/// `SET` / `RESET` change the returned settings. Queries are only planned.
pub async fn plan_for_client(
    session: &QuiverSession,
    prepared: &PreparedPlans,
    handle: StatementHandle,
    caller: &Principal,
    settings: &Settings,
) -> Result<ClientPlan> {
    let params = handle.parameter_batch()?;
    // A prepared lookup or recommend call: planned once, then only bound and answered.
    if let Some(params) = params.as_ref().filter(|p| p.num_rows() == 1)
        && let Some(direct) = prepared.direct(session, &handle.sql).await
        && let Some(answer) = direct.answer(params).await
    {
        return Ok(ClientPlan::done(with_answer(handle, answer?)?));
    }
    let planned = plan_bound(session, &handle.sql, params).await?;
    authorize(&planned, caller)?;
    let schema = planned.schema();
    if let Some(changed) = changed_settings(&planned, settings)? {
        return Ok(ClientPlan {
            handle: handle.with_result(&schema, &[])?,
            schema,
            settings: Some(changed),
        });
    }
    // An online lookup or a lone recommend(...) call is answered now (on this, the query runtime),
    // and its rows travel in the ticket: DoGet then has nothing to plan.
    if let Planned::Query(plan) = &planned
        && let Some(batch) = direct_answer(session, plan).await
    {
        return Ok(ClientPlan::done(with_answer(handle, batch?)?));
    }
    if !has_side_effects(&planned) {
        return Ok(ClientPlan::done((schema, handle)));
    }
    let mut first = Some(planned);
    let executing = tracing::info_span!("execute");
    let batches: Vec<RecordBatch> = retry_conflicts(&handle.sql, || {
        let planned = first.take();
        let handle = &handle;
        Box::pin(async move {
            let planned = match planned {
                Some(planned) => planned,
                None => plan_handle(session, handle).await?,
            };
            Ok(execute(session, planned).await?.try_collect().await?)
        })
    })
    .instrument(executing)
    .await?;
    let handle = handle.with_result(&schema, &batches)?;
    Ok(ClientPlan::done((schema, handle)))
}

/// The client's settings after `planned`, when it is a `SET` or `RESET`.
fn changed_settings(planned: &Planned, settings: &Settings) -> Result<Option<Settings>> {
    Ok(match planned {
        Planned::Command(Command::Set { name, value }) => Some(settings.with(name, value)?),
        Planned::Command(Command::Reset { name }) => Some(settings.without(name.as_deref())?),
        _ => None,
    })
}

/// GetFlightInfo of a prepared online lookup this server has planned before, answered on the
/// calling thread: binding a key and reading the index is less work than handing the call to the
/// query runtime. `None` for any other statement.
pub fn answer_known_lookup(
    session: &QuiverSession,
    prepared: &PreparedPlans,
    handle: &StatementHandle,
) -> Option<Result<(SchemaRef, StatementHandle)>> {
    if handle.parameters.is_empty() {
        return None;
    }
    let direct = prepared
        .current(session, &handle.sql)
        .filter(|d| d.is_lookup())?;
    // Parameters that do not decode or are not one row take the usual path, which says why.
    let params = handle.parameter_batch().ok()??;
    if params.num_rows() != 1 {
        return None;
    }
    let answer = direct.answer_now(&params)?;
    Some(answer.and_then(|batch| with_answer(handle.clone(), batch)))
}

/// The handle of a statement answered at GetFlightInfo (the answer's schema is the statement's), its
/// rows inside when they are small: a ticket is one gRPC message, so a larger answer is computed
/// again at DoGet and streamed.
fn with_answer(
    handle: StatementHandle,
    batch: RecordBatch,
) -> Result<(SchemaRef, StatementHandle)> {
    let schema = batch.schema();
    let handle = if batch.get_array_memory_size() <= MAX_RESULT_IN_TICKET {
        handle.with_result(&schema, std::slice::from_ref(&batch))?
    } else {
        handle
    };
    Ok((schema, handle))
}

fn has_side_effects(planned: &Planned) -> bool {
    write_kind(planned).is_some()
}

/// What a statement writes, named for error messages; `None` for a read-only statement.
fn write_kind(planned: &Planned) -> Option<&'static str> {
    match planned {
        Planned::Command(command) => Some(match command {
            Command::CreateSchema { .. } => "CREATE SCHEMA",
            Command::DropSchema { .. } => "DROP SCHEMA",
            Command::CreateTable { .. } => "CREATE TABLE",
            Command::CreateExternal { .. } => "CREATE EXTERNAL TABLE",
            Command::DropTable { .. } => "DROP TABLE",
            Command::RefreshFeatureViews { .. } => "REFRESH FEATURE VIEW",
            Command::ReloadModels => "RELOAD MODELS",
            Command::ReloadFeatureViews => "RELOAD FEATURE VIEWS",
            Command::Source(SourceStatement::Show) => return None,
            Command::Source(statement) => statement.name(),
            // A session setting is the caller's own, not a write.
            Command::Set { .. } | Command::Reset { .. } => return None,
            Command::Table { operation, .. } if !operation.writes() => return None,
            Command::Table { operation, .. } => operation.name(),
        }),
        Planned::Query(LogicalPlan::Dml(dml)) => Some(dml_name(dml)),
        // EXPLAIN ANALYZE runs its statement.
        Planned::Query(LogicalPlan::Analyze(a)) => match a.input.as_ref() {
            LogicalPlan::Dml(dml) => Some(dml_name(dml)),
            _ => None,
        },
        Planned::Query(_) => None,
    }
}

fn dml_name(dml: &DmlStatement) -> &'static str {
    match dml.op {
        WriteOp::Insert(_) => "INSERT",
        WriteOp::Delete => "DELETE",
        WriteOp::Update => "UPDATE",
        WriteOp::Ctas => "CREATE TABLE AS",
        WriteOp::Truncate => "TRUNCATE",
        WriteOp::MergeInto(_) => "MERGE",
        _ => "a write statement",
    }
}

/// Read-only callers may run anything that does not write.
pub fn authorize(planned: &Planned, caller: &Principal) -> Result<()> {
    match write_kind(planned) {
        Some(kind) => caller.authorize_write(kind),
        None => Ok(()),
    }
}

/// Executes the query in a handle (DoGet) now. Handles carrying a stored result are streamed by the
/// service without coming here.
pub async fn execute_handle(
    session: &QuiverSession,
    handle: &StatementHandle,
    caller: &Principal,
) -> Result<SendableRecordBatchStream> {
    let planned = plan_handle(session, handle).await?;
    authorize(&planned, caller)?;
    execute(session, planned).await
}

/// Runs an update for `caller` once per parameter row (or once without parameters) and returns the
/// rows affected; a `SET` changes the client's settings instead.
pub async fn execute_update(
    session: &QuiverSession,
    sql: &str,
    params: Option<RecordBatch>,
    caller: &Principal,
    settings: &ClientSettings,
) -> Result<i64> {
    let planned = plan_sql(session, sql).await?;
    authorize(&planned, caller)?;
    if let Some(changed) = changed_settings(&planned, &settings.current)? {
        settings.change(changed);
        return Ok(0);
    }
    update::run(session, sql, planned, params).await
}
