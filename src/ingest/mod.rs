//! The write path for uploaded data: Flight SQL ingest and plain Flight DoPut -> one Delta commit.
//!
//! SQL `INSERT`, `CREATE TABLE AS` and `DELETE` reach Delta through the table provider instead
//! (see `storage::table`); uploads come here because they bring their own schema and a mode.

pub mod audit;
pub mod collect;
pub mod dead_letters;
pub mod json;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use deltalake::DeltaTable;
use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::session::QuiverSession;
use crate::storage::storable::storable_stream;
use crate::storage::{AsOf, DeltaTableProvider, WriteKind, WriteRequest, open_delta, write_stream};

/// What to do when the target table exists or does not, as in ADBC's ingest modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestMode {
    /// Create the table; fail if it exists.
    Create,
    /// Append to an existing table; fail if it does not exist.
    Append,
    /// Replace the table's rows and schema, creating it if absent.
    Replace,
    /// Append, creating the table if absent.
    CreateAppend,
}

/// What an upload may change besides the rows, named as the client names it (Flight SQL ingest
/// options, or `x-quiver-ingest-<name>` headers on any upload).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestOptions {
    /// Spark's `mergeSchema`: columns the upload has and the table lacks are added to the table
    /// (nullable) in the same commit as the rows, and nullable columns the upload lacks are
    /// written as nulls. Off (the default): the upload must have exactly the table's columns.
    pub merge_schema: bool,
}

impl IngestOptions {
    /// The options these `(name, value)` pairs set; a name or value Quiver does not know is
    /// refused, naming it (a misspelled option must not be silently ignored).
    pub fn parse<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut options = IngestOptions::default();
        for (name, value) in pairs {
            // `merge_schema`, `mergeSchema` and `merge-schema` are one option.
            let key: String = name
                .chars()
                .filter(|c| !matches!(c, '_' | '-'))
                .flat_map(char::to_lowercase)
                .collect();
            match key.as_str() {
                "mergeschema" => options.merge_schema = flag(name, value)?,
                _ => {
                    return Err(Error::InvalidInput(format!(
                        "unknown ingest option '{name}' (known: merge_schema)"
                    )));
                }
            }
        }
        Ok(options)
    }
}

fn flag(name: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "on" => Ok(true),
        "false" | "0" | "off" => Ok(false),
        _ => Err(Error::InvalidInput(format!(
            "ingest option '{name}' is true or false, not '{value}'"
        ))),
    }
}

/// Writes an uploaded stream into `schema.table` as one Delta commit; returns the rows written.
pub async fn ingest(
    session: &QuiverSession,
    schema: &str,
    table: &str,
    mode: IngestMode,
    options: IngestOptions,
    data: SendableRecordBatchStream,
) -> Result<u64> {
    // Compared with the table in the types it will be stored as (metadata dropped, Float16 as
    // Float32, ...); what Delta cannot store is refused here, naming the column.
    let mut data = storable_stream(data)?;
    let warehouse = session.warehouse();
    let qualified = format!("{schema}.{table}");
    let existing = warehouse.locate(schema, table).await?;
    let mut merge_schema = false;
    let (delta, kind) = match (mode, existing) {
        (IngestMode::Create, Some(_)) => {
            return Err(Error::AlreadyExists {
                kind: "table",
                name: qualified,
            });
        }
        (IngestMode::Append, None) => return Err(Error::TableNotFound(qualified)),
        (IngestMode::Create | IngestMode::Replace | IngestMode::CreateAppend, None) => {
            let url = warehouse.new_table_url(schema, table).await?;
            // Another upload may create the table first: create_append then appends to it.
            let kind = match mode {
                IngestMode::CreateAppend => WriteKind::CreateOrAppend,
                IngestMode::Replace => WriteKind::Replace,
                _ => WriteKind::Create,
            };
            (DeltaTable::try_from_url(url).await?, kind)
        }
        (IngestMode::Append | IngestMode::CreateAppend, Some(location)) => {
            let provider = session
                .catalog()
                .provider(qualified.clone(), &location, &AsOf::Latest)
                .await?;
            let current = TableProvider::schema(&provider);
            let delta = provider.delta_table().clone();
            merge_schema =
                check_compatible(&qualified, &current, &data.schema(), options.merge_schema)?;
            if merge_schema {
                data = with_table_nullability(&qualified, &current, data);
            }
            (delta, WriteKind::Append)
        }
        (IngestMode::Replace, Some(location)) => (
            open_delta(location.url(), &AsOf::Latest).await?,
            WriteKind::Replace,
        ),
    };
    // Bytes as they arrive, for the ingest metrics.
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = bytes.clone();
    let data: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
        data.schema(),
        data.inspect_ok(move |batch| {
            counted.fetch_add(batch.get_array_memory_size() as u64, Ordering::Relaxed);
        }),
    ));
    let request = WriteRequest {
        table: delta,
        kind,
        partition_by: Vec::new(),
        data,
        transactions: Vec::new(),
        merge_schema,
    };
    let rows = write_stream(&session.state(), request).await?;
    let label = crate::metrics::table(&qualified);
    metrics::counter!(crate::metrics::ROWS_INGESTED, "table" => label.clone()).increment(rows);
    metrics::counter!(crate::metrics::BYTES_INGESTED, "table" => label)
        .increment(bytes.load(Ordering::Relaxed));
    Ok(rows)
}

/// `schema.table` at its latest version, as the catalog reads it; `None` if there is no such table.
pub async fn latest_table(
    session: &QuiverSession,
    schema: &str,
    table: &str,
) -> Result<Option<DeltaTableProvider>> {
    let Some(location) = session.warehouse().locate(schema, table).await? else {
        return Ok(None);
    };
    let provider = session
        .catalog()
        .provider(format!("{schema}.{table}"), &location, &AsOf::Latest)
        .await?;
    Ok(Some(provider))
}

/// The upload with the table's nullability on the columns the table has. delta-rs merges the two
/// schemas field by field, and a column nullable on either side (pyarrow's are) would become
/// nullable in the table; a null in a NOT NULL column fails the upload instead.
fn with_table_nullability(
    table: &str,
    current: &Schema,
    data: SendableRecordBatchStream,
) -> SendableRecordBatchStream {
    let fields: Vec<Field> = data
        .schema()
        .fields()
        .iter()
        .map(|f| match current.field_with_name(f.name()) {
            Ok(existing) => f.as_ref().clone().with_nullable(existing.is_nullable()),
            Err(_) => f.as_ref().clone().with_nullable(true),
        })
        .collect();
    let schema = Arc::new(Schema::new_with_metadata(
        fields,
        data.schema().metadata().clone(),
    ));
    let table = table.to_string();
    let relabel = schema.clone();
    let batches = data.map(move |batch| {
        let batch = batch?;
        RecordBatch::try_new(relabel.clone(), batch.columns().to_vec()).map_err(|e| {
            DataFusionError::External(Box::new(Error::SchemaMismatch {
                table: table.clone(),
                message: e.to_string(),
            }))
        })
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

/// Checks that appended data has the table's columns with types Delta stores the same way, and
/// returns whether the write changes the table's schema. Without `merge_schema` the columns must be
/// exactly the table's; with it, new columns are added and nullable columns may be missing.
pub fn check_compatible(
    table: &str,
    current: &Schema,
    incoming: &Schema,
    merge_schema: bool,
) -> Result<bool> {
    let mismatch = |message: String| Error::SchemaMismatch {
        table: table.to_string(),
        message,
    };
    let mut changes = false;
    for field in incoming.fields() {
        let Ok(existing) = current.field_with_name(field.name()) else {
            if merge_schema {
                if let Some(same) = current
                    .fields()
                    .iter()
                    .find(|f| f.name().eq_ignore_ascii_case(field.name()))
                {
                    return Err(mismatch(format!(
                        "column '{}' differs from the table's column '{}' only in case",
                        field.name(),
                        same.name()
                    )));
                }
                if field.data_type() == &DataType::Null {
                    return Err(mismatch(format!(
                        "new column '{}' has no type (every value is null): give it one",
                        field.name()
                    )));
                }
                changes = true;
                continue;
            }
            let columns: Vec<&str> = current.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(mismatch(format!(
                "column '{}' is not in the table (its columns: {}); to add it, upload with the \
                 ingest option merge_schema=true",
                field.name(),
                columns.join(", ")
            )));
        };
        if storage_type(field.data_type()) != storage_type(existing.data_type()) {
            return Err(mismatch(format!(
                "column '{}' has type {} but the table stores {}",
                field.name(),
                field.data_type(),
                existing.data_type()
            )));
        }
    }
    for missing in current
        .fields()
        .iter()
        .filter(|f| incoming.field_with_name(f.name()).is_err())
    {
        if merge_schema && missing.is_nullable() {
            changes = true;
            continue;
        }
        let why = if merge_schema {
            " (it is NOT NULL)"
        } else {
            ""
        };
        return Err(mismatch(format!(
            "column '{}' is missing from the data{why}",
            missing.name()
        )));
    }
    Ok(changes)
}

/// The type a column has once in Delta: string/binary encodings, dictionaries and timestamp units
/// all collapse to what the Delta protocol stores.
fn storage_type(data_type: &DataType) -> DataType {
    let item = |f: &Field| Field::new("item", storage_type(f.data_type()), true);
    match data_type {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Dictionary(_, value) => storage_type(value),
        DataType::Timestamp(_, tz) => {
            DataType::Timestamp(TimeUnit::Microsecond, tz.as_ref().map(|_| "UTC".into()))
        }
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f) => DataType::List(item(f).into()),
        DataType::FixedSizeList(f, _) => DataType::List(item(f).into()),
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| Field::new(f.name(), storage_type(f.data_type()), true))
                .collect::<Fields>(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: Vec<(&str, DataType)>) -> Schema {
        Schema::new(
            fields
                .into_iter()
                .map(|(n, t)| Field::new(n, t, true))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn same_storage_types_are_compatible() {
        let current = schema(vec![("id", DataType::Int64), ("name", DataType::Utf8)]);
        let incoming = schema(vec![("name", DataType::LargeUtf8), ("id", DataType::Int64)]);
        assert!(!check_compatible("t", &current, &incoming, false).expect("compatible"));
    }

    #[test]
    fn mismatches_name_the_column() {
        let current = schema(vec![("id", DataType::Int64), ("name", DataType::Utf8)]);
        let wrong_type = schema(vec![("id", DataType::Utf8), ("name", DataType::Utf8)]);
        let err = check_compatible("t", &current, &wrong_type, false).unwrap_err();
        assert!(err.to_string().contains("column 'id'"), "{err}");
        let extra = schema(vec![
            ("id", DataType::Int64),
            ("name", DataType::Utf8),
            ("x", DataType::Int8),
        ]);
        assert!(
            check_compatible("t", &current, &extra, false)
                .unwrap_err()
                .to_string()
                .contains("'x'")
        );
        let missing = schema(vec![("id", DataType::Int64)]);
        assert!(
            check_compatible("t", &current, &missing, false)
                .unwrap_err()
                .to_string()
                .contains("'name'")
        );
    }

    #[test]
    fn merge_schema_adds_columns_and_allows_nullable_ones_missing() {
        let current = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]);
        let wider = schema(vec![
            ("id", DataType::Int64),
            ("name", DataType::Utf8),
            ("score", DataType::Float64),
        ]);
        assert!(check_compatible("t", &current, &wider, true).expect("merged"));
        let narrower = schema(vec![("id", DataType::Int64)]);
        assert!(check_compatible("t", &current, &narrower, true).expect("merged"));
        let same = schema(vec![("id", DataType::Int64), ("name", DataType::Utf8)]);
        assert!(!check_compatible("t", &current, &same, true).expect("same"));
        // Types still must match, and a NOT NULL column cannot be left out.
        let wrong_type = schema(vec![("id", DataType::Utf8), ("name", DataType::Utf8)]);
        assert!(check_compatible("t", &current, &wrong_type, true).is_err());
        let no_id = schema(vec![("name", DataType::Utf8)]);
        let err = check_compatible("t", &current, &no_id, true).unwrap_err();
        assert!(err.to_string().contains("NOT NULL"), "{err}");
    }

    #[test]
    fn options_parse_by_any_spelling_and_refuse_unknown_names() {
        let parsed = IngestOptions::parse([("mergeSchema", "true")]).expect("parsed");
        assert!(parsed.merge_schema);
        let parsed = IngestOptions::parse([("merge-schema", "FALSE")]).expect("parsed");
        assert!(!parsed.merge_schema);
        assert!(IngestOptions::parse([]).expect("none") == IngestOptions::default());
        let err = IngestOptions::parse([("merge_schemas", "true")]).unwrap_err();
        assert!(err.to_string().contains("'merge_schemas'"), "{err}");
        let err = IngestOptions::parse([("merge_schema", "yes please")]).unwrap_err();
        assert!(err.to_string().contains("true or false"), "{err}");
    }
}
