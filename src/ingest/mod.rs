//! The write path for uploaded data: Flight SQL ingest and plain Flight DoPut -> one Delta commit.
//!
//! SQL `INSERT`, `CREATE TABLE AS` and `DELETE` reach Delta through the table provider instead
//! (see `storage::table`); uploads come here because they bring their own schema and a mode.

use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::execution::SendableRecordBatchStream;
use deltalake::DeltaTable;

use crate::error::{Error, Result};
use crate::session::QuiverSession;
use crate::storage::storable::storable_stream;
use crate::storage::{AsOf, WriteKind, WriteRequest, open_delta, write_stream};

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

/// Writes an uploaded stream into `schema.table` as one Delta commit; returns the rows written.
pub async fn ingest(
    session: &QuiverSession,
    schema: &str,
    table: &str,
    mode: IngestMode,
    data: SendableRecordBatchStream,
) -> Result<u64> {
    // Compared with the table in the types it will be stored as (metadata dropped, Float16 as
    // Float32, ...); what Delta cannot store is refused here, naming the column.
    let data = storable_stream(data)?;
    let warehouse = session.warehouse();
    let qualified = format!("{schema}.{table}");
    let existing = warehouse.locate(schema, table).await?;
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
            (DeltaTable::try_from_url(url).await?, WriteKind::Create)
        }
        (IngestMode::Append | IngestMode::CreateAppend, Some(location)) => {
            let provider = session
                .catalog()
                .provider(qualified.clone(), &location, &AsOf::Latest)
                .await?;
            let current = TableProvider::schema(&provider);
            let delta = provider.delta_table().clone();
            check_compatible(&qualified, &current, &data.schema())?;
            (delta, WriteKind::Append)
        }
        (IngestMode::Replace, Some(location)) => (
            open_delta(location.url(), &AsOf::Latest).await?,
            WriteKind::Replace,
        ),
    };
    let request = WriteRequest {
        table: delta,
        kind,
        partition_by: Vec::new(),
        data,
        transactions: Vec::new(),
    };
    write_stream(&session.state(), request).await
}

/// Checks that appended data has exactly the table's columns with types Delta stores the same way.
pub fn check_compatible(table: &str, current: &Schema, incoming: &Schema) -> Result<()> {
    let mismatch = |message: String| Error::SchemaMismatch {
        table: table.to_string(),
        message,
    };
    for field in incoming.fields() {
        let Ok(existing) = current.field_with_name(field.name()) else {
            let columns: Vec<&str> = current.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(mismatch(format!(
                "column '{}' is not in the table (its columns: {})",
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
    if let Some(missing) = current
        .fields()
        .iter()
        .find(|f| incoming.field_with_name(f.name()).is_err())
    {
        return Err(mismatch(format!(
            "column '{}' is missing from the data",
            missing.name()
        )));
    }
    Ok(())
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
        check_compatible("t", &current, &incoming).expect("compatible");
    }

    #[test]
    fn mismatches_name_the_column() {
        let current = schema(vec![("id", DataType::Int64), ("name", DataType::Utf8)]);
        let wrong_type = schema(vec![("id", DataType::Utf8), ("name", DataType::Utf8)]);
        let err = check_compatible("t", &current, &wrong_type).unwrap_err();
        assert!(err.to_string().contains("column 'id'"), "{err}");
        let extra = schema(vec![
            ("id", DataType::Int64),
            ("name", DataType::Utf8),
            ("x", DataType::Int8),
        ]);
        assert!(
            check_compatible("t", &current, &extra)
                .unwrap_err()
                .to_string()
                .contains("'x'")
        );
        let missing = schema(vec![("id", DataType::Int64)]);
        assert!(
            check_compatible("t", &current, &missing)
                .unwrap_err()
                .to_string()
                .contains("'name'")
        );
    }
}
