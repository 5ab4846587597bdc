//! The dead-letter table: records that could not be written to their table (not JSON, a value of
//! the wrong type, a NOT NULL column left empty), kept with the reason instead of failing the
//! records that fit or stalling a stream.
//!
//! One table per schema, `<schema>.dead_letters`, created on first use:
//! `target_table, source, payload, error, topic, partition, offset, received_at` (topic, partition
//! and offset are a Kafka message's; null for HTTP). A writer's transactions (an idempotency key,
//! a partition's offsets) are committed here too, so a batch sent again does not reject twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use datafusion::arrow::array::{
    Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

use crate::error::Result;
use crate::ingest::json::Rejected;
use crate::ingest::{IngestMode, IngestOptions, ingest, latest_table};
use crate::session::QuiverSession;
use crate::storage::group_commit::{self, AppTransaction, Outcome};

/// The dead-letter table's name in each schema.
pub const DEAD_LETTERS: &str = "dead_letters";

/// Where a rejected record came from.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// `http`, or `kafka:<source>`.
    pub source: String,
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
}

/// The dead-letter table's columns.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("target_table", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("payload", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, true),
        Field::new("partition", DataType::Int32, true),
        Field::new("offset", DataType::Int64, true),
        Field::new(
            "received_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

/// Appends `rejected` (each with its origin) for `target` (`schema.table`) to `schema`'s
/// dead-letter table with `transactions`; returns whether they were already recorded.
pub async fn append(
    session: &QuiverSession,
    schema_name: &str,
    target: &str,
    rejected: &[(Rejected, Origin)],
    transactions: Vec<AppTransaction>,
) -> Result<bool> {
    let table = table(session, schema_name).await?;
    let batch = batch(target, rejected)?;
    let data = RecordBatchStreamAdapter::new(schema(), futures::stream::iter([Ok(batch)]));
    let appended = group_commit::append_with(table, Box::pin(data), transactions).await?;
    metrics::counter!(crate::metrics::DEAD_LETTERS, "table" => crate::metrics::table(target))
        .increment(appended.rows);
    Ok(appended.outcome == Outcome::Duplicate)
}

/// Appends a stream's rejected messages once: those at or before the offset the dead-letter table
/// records for their partition (under `app_id(partition)`) were written by an earlier attempt and
/// are left out; the rest are committed with each partition's last offset.
pub async fn append_once(
    session: &QuiverSession,
    schema_name: &str,
    target: &str,
    letters: Vec<(Rejected, Origin)>,
    app_id: impl Fn(i32) -> String,
) -> Result<()> {
    let table = table(session, schema_name).await?;
    let mut recorded: BTreeMap<i32, Option<i64>> = BTreeMap::new();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for (_, origin) in &letters {
        let (Some(partition), Some(offset)) = (origin.partition, origin.offset) else {
            continue;
        };
        if let std::collections::btree_map::Entry::Vacant(entry) = recorded.entry(partition) {
            entry.insert(group_commit::recorded_version(&table, &app_id(partition)).await?);
        }
        let end = ends.entry(partition).or_insert(offset);
        *end = (*end).max(offset);
    }
    let fresh: Vec<(Rejected, Origin)> = letters
        .into_iter()
        .filter(|(_, o)| match (o.partition, o.offset) {
            (Some(p), Some(offset)) => recorded
                .get(&p)
                .copied()
                .flatten()
                .is_none_or(|r| offset > r),
            _ => true,
        })
        .collect();
    if fresh.is_empty() {
        return Ok(());
    }
    let transactions = ends
        .into_iter()
        .filter(|(p, end)| recorded.get(p).copied().flatten().is_none_or(|r| *end > r))
        .map(|(p, end)| AppTransaction::once(app_id(p), end))
        .collect();
    append(session, schema_name, target, &fresh, transactions).await?;
    Ok(())
}

/// `schema`'s dead-letter table at its latest version, created empty if absent (or found created by
/// another writer).
async fn table(session: &QuiverSession, schema_name: &str) -> Result<deltalake::DeltaTable> {
    if let Some(table) = latest_table(session, schema_name, DEAD_LETTERS).await? {
        return Ok(table.delta_table().clone());
    }
    let empty = RecordBatchStreamAdapter::new(schema(), futures::stream::empty());
    ingest(
        session,
        schema_name,
        DEAD_LETTERS,
        IngestMode::CreateAppend,
        IngestOptions::default(),
        Box::pin(empty),
    )
    .await?;
    Ok(latest_table(session, schema_name, DEAD_LETTERS)
        .await?
        .ok_or_else(|| crate::error::Error::TableNotFound(dead_letters(schema_name)))?
        .delta_table()
        .clone())
}

/// `schema.dead_letters`.
pub fn dead_letters(schema_name: &str) -> String {
    format!("{schema_name}.{DEAD_LETTERS}")
}

fn batch(target: &str, rejected: &[(Rejected, Origin)]) -> Result<RecordBatch> {
    let now = Utc::now().timestamp_micros();
    let n = rejected.len();
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(vec![target; n])),
            Arc::new(StringArray::from_iter_values(
                rejected.iter().map(|(_, o)| o.source.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rejected.iter().map(|(r, _)| r.payload.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rejected.iter().map(|(r, _)| r.error.as_str()),
            )),
            Arc::new(StringArray::from_iter(
                rejected.iter().map(|(_, o)| o.topic.as_deref()),
            )),
            Arc::new(Int32Array::from_iter(
                rejected.iter().map(|(_, o)| o.partition),
            )),
            Arc::new(Int64Array::from_iter(
                rejected.iter().map(|(_, o)| o.offset),
            )),
            Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
        ],
    )?)
}
