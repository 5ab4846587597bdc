//! Updates from clients: a statement with many parameter rows (`executemany`), and the re-run of a
//! write that lost a Delta commit race to another writer.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use datafusion::arrow::array::{Array, RecordBatch, UInt64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{DmlStatement, LogicalPlan, WriteOp};
use futures::TryStreamExt;

use crate::error::{Error, Result};
use crate::query::statement::row_parameters;
use crate::query::{Planned, execute, plan_sql};
use crate::session::QuiverSession;

/// Runs a planned update once per parameter row (or once without parameters) and returns the rows
/// affected. An `INSERT` or `MERGE` with many parameter rows becomes one statement over all of
/// them, so it is one Delta commit (an upsert of the rows a client sends). A statement that loses a
/// commit race with another writer runs again from planning.
pub async fn run(
    session: &QuiverSession,
    sql: &str,
    planned: Planned,
    params: Option<RecordBatch>,
) -> Result<i64> {
    let Some(params) = params.filter(|p| p.num_rows() > 0) else {
        let mut first = Some(planned);
        return retry_conflicts(sql, || {
            let planned = first.take();
            Box::pin(async move {
                let planned = match planned {
                    Some(planned) => planned,
                    None => plan_sql(session, sql).await?,
                };
                affected_rows(execute(session, planned).await?).await
            })
        })
        .await;
    };
    if let Planned::Query(LogicalPlan::Dml(dml)) = &planned
        && matches!(dml.op, WriteOp::Insert(_) | WriteOp::MergeInto(_))
    {
        return retry_conflicts(sql, || Box::pin(write_many(session, dml, &params))).await;
    }
    let mut total = 0;
    // Other statements run once per row, each planned afresh so it sees the previous row's commit.
    for row in 0..params.num_rows() {
        let params = &params;
        total += retry_conflicts(sql, || {
            Box::pin(async move {
                let bound = plan_sql(session, sql).await?.bind(params, row)?;
                affected_rows(execute(session, bound).await?).await
            })
        })
        .await?;
    }
    Ok(total)
}

/// Attempts of one write statement before a lost Delta commit race is reported.
const WRITE_ATTEMPTS: usize = 5;

/// Runs a write statement, again from planning when it lost a commit race with another writer
/// (`Aborted`: nothing of it was committed, so running it again on the newer version is what a
/// serial order would have done), after an exponential backoff with jitter so racing writers do not
/// meet again. After [`WRITE_ATTEMPTS`] the conflict is reported as `Aborted`.
pub async fn retry_conflicts<'a, T>(
    statement: &str,
    attempt: impl FnMut() -> futures::future::BoxFuture<'a, Result<T>>,
) -> Result<T> {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(1))
        .with_max_times(WRITE_ATTEMPTS - 1)
        .with_jitter();
    let mut retries = 0;
    let result = attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(Error::is_write_conflict)
        .notify(|error, wait| {
            retries += 1;
            let table = match error {
                Error::Conflict { table, .. } => crate::metrics::table(table),
                _ => metrics::SharedString::const_str("other"),
            };
            metrics::counter!(crate::metrics::DELTA_RETRIES, "table" => table).increment(1);
            tracing::info!(?wait, %error, "write conflict; running the statement again");
        })
        .await;
    match result {
        Err(e) if e.is_write_conflict() => Err(Error::Conflict {
            table: statement.chars().take(120).collect(),
            message: format!(
                "{e} (gave up after {} attempts; retry the statement)",
                retries + 1
            ),
        }),
        other => other,
    }
}

/// Binds every parameter row into the INSERT's or MERGE's source, then runs the statement once
/// over all the rows.
async fn write_many(
    session: &QuiverSession,
    dml: &DmlStatement,
    params: &RecordBatch,
) -> Result<i64> {
    let mut rows = Vec::with_capacity(params.num_rows());
    for row in 0..params.num_rows() {
        let source = dml
            .input
            .as_ref()
            .clone()
            .with_param_values(row_parameters(params, row)?)?;
        let batches = session
            .ctx()
            .execute_logical_plan(source)
            .await?
            .collect()
            .await?;
        rows.extend(batches);
    }
    let source = session
        .ctx()
        .read_batches(unify(rows)?)?
        .into_unoptimized_plan();
    // MERGE's conditions name the source by its alias: the rows keep it.
    let source = match dml
        .input
        .schema()
        .iter()
        .next()
        .and_then(|(q, _)| q.cloned())
    {
        Some(alias) if matches!(dml.op, WriteOp::MergeInto(_)) => {
            datafusion::logical_expr::LogicalPlanBuilder::from(source)
                .alias(alias)?
                .build()?
        }
        _ => source,
    };
    let write = DmlStatement::new(
        dml.table_name.clone(),
        dml.target.clone(),
        dml.op.clone(),
        Arc::new(source),
    );
    affected_rows(execute(session, Planned::Query(LogicalPlan::Dml(write))).await?).await
}

/// Row-by-row binding gives batches whose types differ in nullability (or are Null where a parameter
/// was NULL); brings them to one nullable schema, taking each column's type from its first non-Null.
fn unify(batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
    let Some(first) = batches.first() else {
        return Ok(batches);
    };
    let fields: Vec<Field> = (0..first.num_columns())
        .map(|c| {
            let data_type = batches
                .iter()
                .map(|b| b.column(c).data_type())
                .find(|t| **t != DataType::Null)
                .unwrap_or(&DataType::Null)
                .clone();
            Field::new(first.schema().field(c).name(), data_type, true)
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    batches
        .iter()
        .map(|b| {
            let columns = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(column, field)| cast(column, field.data_type()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(RecordBatch::try_new(schema.clone(), columns)?)
        })
        .collect()
}

/// The rows a statement affected: the `count` DML returns, or the rows of anything else.
pub async fn affected_rows(stream: SendableRecordBatchStream) -> Result<i64> {
    let is_count = is_count(&stream.schema());
    // Folded batch by batch: an update that returns rows never holds them all.
    let total: u64 = stream
        .try_fold(0u64, |total, batch| async move {
            Ok(total + affected_in(&batch, is_count))
        })
        .await?;
    Ok(i64::try_from(total).unwrap_or(i64::MAX))
}

/// [`affected_rows`] of a result already collected.
pub fn affected(schema: &Schema, batches: &[RecordBatch]) -> u64 {
    let is_count = is_count(schema);
    batches.iter().map(|b| affected_in(b, is_count)).sum()
}

/// Whether a result is DML's count of affected rows.
fn is_count(schema: &Schema) -> bool {
    schema.fields().len() == 1 && schema.field(0).name() == "count"
}

fn affected_in(batch: &RecordBatch, is_count: bool) -> u64 {
    if is_count {
        batch
            .column(0)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .map_or(0, |a| a.iter().flatten().sum::<u64>())
    } else {
        batch.num_rows() as u64
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn conflict() -> Error {
        Error::Conflict {
            table: "public.t".into(),
            message: "another writer committed first".into(),
        }
    }

    /// Runs `retry_conflicts` over attempts that fail with `failures[i]` (then succeed), counting
    /// the attempts made.
    async fn run(failures: Vec<Error>) -> (Result<u32>, u32) {
        let made = AtomicU32::new(0);
        let failures = std::sync::Mutex::new(failures.into_iter());
        let result = retry_conflicts("INSERT INTO t VALUES (1)", || {
            let n = made.fetch_add(1, Ordering::SeqCst) + 1;
            let next = failures.lock().expect("lock").next();
            Box::pin(async move {
                match next {
                    Some(e) => Err(e),
                    None => Ok(n),
                }
            })
        })
        .await;
        (result, made.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_lost_commit_race_runs_again_until_it_wins() {
        let (result, attempts) = run(vec![conflict(), conflict()]).await;
        assert_eq!(result.expect("third attempt wins"), 3);
        assert_eq!(attempts, 3);
    }

    #[tokio::test]
    async fn after_the_last_attempt_the_conflict_is_reported() {
        let (result, attempts) = run((0..10).map(|_| conflict()).collect()).await;
        assert_eq!(attempts, WRITE_ATTEMPTS as u32);
        let error = result.expect_err("every attempt lost");
        assert!(error.is_write_conflict(), "{error}");
        assert!(
            error.to_string().contains("gave up after 5 attempts"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn other_errors_are_not_retried() {
        let (result, attempts) = run(vec![Error::InvalidInput("bad".into())]).await;
        assert_eq!(attempts, 1);
        assert!(matches!(result, Err(Error::InvalidInput(_))));
    }
}
