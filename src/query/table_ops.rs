//! Runs the Delta table statements of [`super::command_sql`] and answers them as rows: OPTIMIZE's
//! metrics, the files VACUUM removed, RESTORE's result, `DESCRIBE HISTORY` / `DESCRIBE DETAIL`.
//!
//! Maps (commit parameters and metrics, table properties) are JSON text, which every client reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int32Array, Int64Array, ListBuilder, RecordBatch, StringArray,
    StringBuilder, TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr as SqlExpr, Value};
use deltalake::kernel::partitions::{FilterLiteral, FilterValue, filter_literal};

use crate::error::{Error, Result};
use crate::query::command_sql::TableOperation;
use crate::query::one_batch;
use crate::session::QuiverSession;
use crate::storage::maintenance::{self, Detail, OptimizeReport};
use crate::storage::{AsOf, open_delta};

/// The schema of the rows `operation` answers with.
pub fn report_schema(operation: &TableOperation) -> SchemaRef {
    let utc = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let list = || DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
    let fields = match operation {
        TableOperation::Optimize { .. } => vec![
            Field::new("table", DataType::Utf8, false),
            Field::new("version", DataType::UInt64, false),
            Field::new("files_removed", DataType::UInt64, false),
            Field::new("files_added", DataType::UInt64, false),
            Field::new("bytes_removed", DataType::Int64, false),
            Field::new("bytes_added", DataType::Int64, false),
            Field::new("partitions_optimized", DataType::UInt64, false),
            Field::new("files_considered", DataType::UInt64, false),
            Field::new("files_skipped", DataType::UInt64, false),
            Field::new("duration_ms", DataType::UInt64, false),
        ],
        TableOperation::Vacuum { .. } => vec![Field::new("path", DataType::Utf8, false)],
        TableOperation::Restore { .. } => vec![
            Field::new("table", DataType::Utf8, false),
            Field::new("version", DataType::UInt64, false),
            Field::new("files_restored", DataType::UInt64, false),
            Field::new("files_removed", DataType::UInt64, false),
        ],
        TableOperation::History { .. } => vec![
            Field::new("version", DataType::Int64, false),
            Field::new("timestamp", utc(), true),
            Field::new("operation", DataType::Utf8, true),
            Field::new("operation_parameters", DataType::Utf8, true),
            Field::new("operation_metrics", DataType::Utf8, true),
            Field::new("read_version", DataType::Int64, true),
            Field::new("isolation_level", DataType::Utf8, true),
            Field::new("is_blind_append", DataType::Boolean, true),
            Field::new("engine_info", DataType::Utf8, true),
            Field::new("user_metadata", DataType::Utf8, true),
        ],
        TableOperation::Detail => vec![
            Field::new("format", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("description", DataType::Utf8, true),
            Field::new("location", DataType::Utf8, false),
            Field::new("created_at", utc(), true),
            Field::new("version", DataType::Int64, false),
            Field::new("num_files", DataType::Int64, false),
            Field::new("size_in_bytes", DataType::Int64, false),
            Field::new("partition_columns", list(), false),
            Field::new("properties", DataType::Utf8, false),
            Field::new("min_reader_version", DataType::Int32, false),
            Field::new("min_writer_version", DataType::Int32, false),
            Field::new("reader_features", list(), false),
            Field::new("writer_features", list(), false),
        ],
        TableOperation::AddColumns { .. } | TableOperation::SetProperties { .. } => vec![],
    };
    Arc::new(Schema::new(fields))
}

/// Runs `operation` on the Delta table `schema.table`.
pub async fn run(
    session: &QuiverSession,
    schema: &str,
    table: &str,
    operation: TableOperation,
) -> Result<SendableRecordBatchStream> {
    let name = format!("{schema}.{table}");
    let location = session
        .warehouse()
        .locate(schema, table)
        .await?
        .ok_or_else(|| Error::TableNotFound(name.clone()))?;
    let delta = open_delta(location.url(), &AsOf::Latest).await?;
    let out = report_schema(&operation);
    let columns: Vec<ArrayRef> = match operation {
        TableOperation::Optimize { predicate, zorder } => {
            let partitions = delta.snapshot()?.metadata().partition_columns().to_vec();
            let filters = match &predicate {
                Some(p) => partition_filters(p, &partitions)?,
                None => Vec::new(),
            };
            let literals = filters
                .iter()
                .map(|f| f.literal())
                .collect::<Result<Vec<FilterLiteral<'_>>>>()?;
            let zorder = zorder.into_iter().map(|c| c.value).collect();
            let report =
                maintenance::optimize(delta, &session.state(), &literals, zorder, None).await?;
            optimize_columns(&name, &report)
        }
        TableOperation::Vacuum {
            retain_hours,
            dry_run,
            check_retention,
        } => {
            let retain = retain_hours.map(|h| Duration::from_secs_f64(h * 3600.0));
            let report = maintenance::vacuum(delta, retain, dry_run, check_retention).await?;
            vec![Arc::new(StringArray::from(report.files))]
        }
        TableOperation::Restore { to } => {
            let report = maintenance::restore(delta, &to).await?;
            vec![
                Arc::new(StringArray::from(vec![name])),
                Arc::new(UInt64Array::from(vec![report.version])),
                Arc::new(UInt64Array::from(vec![report.files_restored])),
                Arc::new(UInt64Array::from(vec![report.files_removed])),
            ]
        }
        TableOperation::History { limit } => {
            let limit = limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
            history_columns(maintenance::history(&delta, limit).await?)
        }
        TableOperation::Detail => detail_columns(&name, maintenance::detail(&delta).await?),
        TableOperation::AddColumns { columns } => {
            let fields = column_fields(session, &columns).await?;
            maintenance::add_columns(delta, &fields).await?;
            session.catalog().forget_snapshots();
            Vec::new()
        }
        TableOperation::SetProperties { properties } => {
            maintenance::set_properties(delta, properties.into_iter().collect::<HashMap<_, _>>())
                .await?;
            Vec::new()
        }
    };
    let batch = if columns.is_empty() {
        RecordBatch::new_empty(out)
    } else {
        RecordBatch::try_new(out, columns)?
    };
    one_batch(batch)
}

fn optimize_columns(name: &str, r: &OptimizeReport) -> Vec<ArrayRef> {
    let u = |v: u64| -> ArrayRef { Arc::new(UInt64Array::from(vec![v])) };
    vec![
        Arc::new(StringArray::from(vec![name.to_string()])),
        u(r.version),
        u(r.files_removed),
        u(r.files_added),
        Arc::new(Int64Array::from(vec![r.bytes_removed])),
        Arc::new(Int64Array::from(vec![r.bytes_added])),
        u(r.partitions_optimized),
        u(r.files_considered),
        u(r.files_skipped),
        u(u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX)),
    ]
}

fn history_columns(commits: Vec<(u64, deltalake::kernel::CommitInfo)>) -> Vec<ArrayRef> {
    let json = |v: Option<&serde_json::Value>| v.map(|v| v.to_string());
    let version: Int64Array = commits.iter().map(|(v, _)| Some(*v as i64)).collect();
    let timestamp: TimestampMillisecondArray = commits
        .iter()
        .map(|(_, c)| c.in_commit_timestamp.or(c.timestamp))
        .collect::<TimestampMillisecondArray>()
        .with_timezone("UTC");
    let operation: StringArray = commits.iter().map(|(_, c)| c.operation.clone()).collect();
    let parameters: StringArray = commits
        .iter()
        .map(|(_, c)| {
            c.operation_parameters
                .as_ref()
                .map(|p| serde_json::Value::Object(p.clone().into_iter().collect()).to_string())
        })
        .collect();
    let metrics: StringArray = commits
        .iter()
        .map(|(_, c)| json(c.info.get("operationMetrics")))
        .collect();
    let read_version: Int64Array = commits
        .iter()
        .map(|(_, c)| c.read_version.map(|v| v as i64))
        .collect();
    let isolation: StringArray = commits
        .iter()
        .map(|(_, c)| c.isolation_level.map(|l| format!("{l:?}")))
        .collect();
    let blind: BooleanArray = commits.iter().map(|(_, c)| c.is_blind_append).collect();
    let engine: StringArray = commits.iter().map(|(_, c)| c.engine_info.clone()).collect();
    let user: StringArray = commits
        .iter()
        .map(|(_, c)| c.user_metadata.clone())
        .collect();
    vec![
        Arc::new(version),
        Arc::new(timestamp),
        Arc::new(operation),
        Arc::new(parameters),
        Arc::new(metrics),
        Arc::new(read_version),
        Arc::new(isolation),
        Arc::new(blind),
        Arc::new(engine),
        Arc::new(user),
    ]
}

fn detail_columns(name: &str, d: Detail) -> Vec<ArrayRef> {
    let list = |items: &[String]| -> ArrayRef {
        let mut builder = ListBuilder::new(StringBuilder::new());
        builder.append_value(items.iter().map(Some));
        Arc::new(builder.finish())
    };
    let properties = serde_json::Value::Object(
        d.properties
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
    .to_string();
    vec![
        Arc::new(StringArray::from(vec!["delta"])),
        Arc::new(StringArray::from(vec![
            d.name.unwrap_or_else(|| name.to_string()),
        ])),
        Arc::new(StringArray::from(vec![d.description])),
        Arc::new(StringArray::from(vec![d.location])),
        Arc::new(TimestampMillisecondArray::from(vec![d.created_at]).with_timezone("UTC")),
        Arc::new(Int64Array::from(vec![d.version as i64])),
        Arc::new(Int64Array::from(vec![d.files as i64])),
        Arc::new(Int64Array::from(vec![d.bytes])),
        list(&d.partition_columns),
        Arc::new(StringArray::from(vec![properties])),
        Arc::new(Int32Array::from(vec![d.min_reader_version])),
        Arc::new(Int32Array::from(vec![d.min_writer_version])),
        list(&d.reader_features),
        list(&d.writer_features),
    ]
}

/// The Arrow fields of `ALTER TABLE ADD COLUMNS`' definitions, typed as DataFusion types a
/// `CREATE TABLE` with the same definitions (planned, never run).
async fn column_fields(
    session: &QuiverSession,
    columns: &[datafusion::sql::sqlparser::ast::ColumnDef],
) -> Result<Vec<Field>> {
    let defs = columns
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let plan = session
        .state()
        .create_logical_plan(&format!("CREATE TABLE added_columns ({defs})"))
        .await?;
    match plan {
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(c)) => Ok(c
            .input
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect()),
        other => Err(Error::Internal(format!(
            "column definitions planned as {}",
            other.display()
        ))),
    }
}

/// One `column op value(s)` condition of OPTIMIZE's WHERE, owned.
#[derive(Debug, Clone, PartialEq)]
struct PartitionFilter {
    column: String,
    op: &'static str,
    values: Vec<String>,
}

impl PartitionFilter {
    fn literal(&self) -> Result<FilterLiteral<'_>> {
        let value = match self.op {
            "in" | "not in" => FilterValue::Set(self.values.iter().map(String::as_str).collect()),
            _ => FilterValue::Scalar(self.values.first().map_or("", String::as_str)),
        };
        Ok(filter_literal(&self.column, self.op, value)?)
    }
}

/// OPTIMIZE's WHERE as delta-rs's partition filters: comparisons and IN lists of partition columns
/// with literals, joined by AND (as Databricks allows).
fn partition_filters(predicate: &SqlExpr, partitions: &[String]) -> Result<Vec<PartitionFilter>> {
    let bad = |what: String| {
        Error::InvalidInput(format!(
            "OPTIMIZE ... WHERE takes conditions on partition columns ({}) joined by AND: \
             column = value, <, <=, >, >=, <>, IN (...); {what}",
            if partitions.is_empty() {
                "this table has none".to_string()
            } else {
                partitions.join(", ")
            }
        ))
    };
    let column = |e: &SqlExpr| -> Result<String> {
        let name = match e {
            SqlExpr::Identifier(ident) => ident.value.clone(),
            SqlExpr::CompoundIdentifier(parts) => {
                parts.last().map(|p| p.value.clone()).unwrap_or_default()
            }
            other => return Err(bad(format!("'{other}' is not a column"))),
        };
        match partitions.iter().find(|p| p.eq_ignore_ascii_case(&name)) {
            Some(p) => Ok(p.clone()),
            None => Err(bad(format!("'{name}' is not a partition column"))),
        }
    };
    let literal = |e: &SqlExpr| -> Result<String> {
        match e {
            SqlExpr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Ok(s.clone()),
                Value::Number(n, _) => Ok(n.to_string()),
                Value::Boolean(b) => Ok(b.to_string()),
                other => Err(bad(format!("'{other}' is not a literal"))),
            },
            other => Err(bad(format!("'{other}' is not a literal"))),
        }
    };
    match predicate {
        SqlExpr::Nested(inner) => partition_filters(inner, partitions),
        SqlExpr::BinaryOp { left, op, right } if *op == BinaryOperator::And => {
            let mut filters = partition_filters(left, partitions)?;
            filters.extend(partition_filters(right, partitions)?);
            Ok(filters)
        }
        SqlExpr::BinaryOp { left, op, right } => {
            let op = match op {
                BinaryOperator::Eq => "=",
                BinaryOperator::NotEq => "!=",
                BinaryOperator::Lt => "<",
                BinaryOperator::LtEq => "<=",
                BinaryOperator::Gt => ">",
                BinaryOperator::GtEq => ">=",
                other => return Err(bad(format!("'{other}' is not a comparison it takes"))),
            };
            Ok(vec![PartitionFilter {
                column: column(left)?,
                op,
                values: vec![literal(right)?],
            }])
        }
        SqlExpr::InList {
            expr,
            list,
            negated,
        } => Ok(vec![PartitionFilter {
            column: column(expr)?,
            op: if *negated { "not in" } else { "in" },
            values: list.iter().map(literal).collect::<Result<_>>()?,
        }]),
        other => Err(bad(format!("'{other}' is not one"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn filters(sql: &str) -> Result<Vec<PartitionFilter>> {
        let expr = Parser::new(&GenericDialect {})
            .try_with_sql(sql)
            .unwrap()
            .parse_expr()
            .unwrap();
        partition_filters(&expr, &["day".to_string(), "country".to_string()])
    }

    #[test]
    fn optimize_where_becomes_partition_filters() {
        let got = filters("day >= '2026-01-01' AND (country IN ('de', 'fr'))").unwrap();
        assert_eq!(
            got,
            vec![
                PartitionFilter {
                    column: "day".into(),
                    op: ">=",
                    values: vec!["2026-01-01".into()]
                },
                PartitionFilter {
                    column: "country".into(),
                    op: "in",
                    values: vec!["de".into(), "fr".into()]
                },
            ]
        );
        assert!(got.iter().all(|f| f.literal().is_ok()));
    }

    #[test]
    fn optimize_where_refuses_other_columns_and_shapes() {
        let e = filters("user_id = 3").unwrap_err().to_string();
        assert!(e.contains("'user_id' is not a partition column"), "{e}");
        let e = filters("day = '1' OR day = '2'").unwrap_err().to_string();
        assert!(e.contains("is not a comparison it takes"), "{e}");
    }
}
