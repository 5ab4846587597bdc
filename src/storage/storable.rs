//! Data on its way into a Delta table, brought to what the Delta protocol stores.
//!
//! Every write (uploads, `CREATE TABLE AS`, feature-view refresh) passes through here first, so
//! what a client's Arrow schema carries beyond Delta's types never fails a write obscurely:
//!
//! - **Metadata** (pandas' `pandas` key, polars' and Spark's annotations, field metadata) is
//!   dropped: Delta does not keep it, and delta-rs refuses a batch whose schema differs from the
//!   table's in anything, metadata included.
//! - **Types Delta lacks but holds losslessly** become the nearest Delta type, as Spark and delta-rs
//!   read them back: Float16 → Float32, Decimal32/64/256 of at most 38 digits → Decimal128,
//!   dictionaries and run-end encodings → their value type, timestamps in any time zone → the same
//!   instants in UTC (Delta's `timestamp`), timestamps in seconds → microseconds.
//! - **Types Delta cannot hold** (Time32/Time64, Duration, Interval, Union, decimals of more than
//!   38 digits) are refused with `InvalidArgument` naming the column and the type.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::{CastOptions, can_cast_types, cast_with_options};
use datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit,
};
use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use crate::error::{Error, Result};

/// Delta's largest decimal precision.
const MAX_DECIMAL_DIGITS: u8 = 38;

/// The schema `schema`'s data has once stored in a Delta table, without metadata; an error naming
/// the first column whose type Delta cannot hold.
pub fn storable_schema(schema: &Schema) -> Result<SchemaRef> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| storable_field(f, f.name()))
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// `data` in [`storable_schema`] of its schema: batches relabelled (no copy) where only metadata
/// differs, columns cast where the type changes.
pub fn storable_stream(data: SendableRecordBatchStream) -> Result<SendableRecordBatchStream> {
    let schema = storable_schema(&data.schema())?;
    if schema == data.schema() {
        return Ok(data);
    }
    let target = Arc::clone(&schema);
    let stream = data.map(move |batch| {
        cast_batch(batch?, &target).map_err(|e| {
            DataFusionError::External(Box::new(Error::InvalidInput(format!(
                "data cannot be stored in Delta: {e}"
            ))))
        })
    });
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
}

fn storable_field(field: &Field, column: &str) -> Result<FieldRef> {
    let data_type = storable_type(field.data_type(), column)?;
    Ok(Arc::new(Field::new(
        field.name(),
        data_type,
        field.is_nullable(),
    )))
}

fn storable_type(data_type: &DataType, column: &str) -> Result<DataType> {
    let refuse = |hint: &str| {
        Err(Error::InvalidInput(format!(
            "column '{column}' has type {data_type}, which a Delta table cannot store; {hint}"
        )))
    };
    let item = |f: &FieldRef| storable_field(f, column);
    Ok(match data_type {
        DataType::Float16 => DataType::Float32,
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) => DataType::Decimal128(*p, *s),
        DataType::Decimal256(p, s) if *p <= MAX_DECIMAL_DIGITS => DataType::Decimal128(*p, *s),
        DataType::Decimal256(..) => {
            return refuse("Delta decimals have at most 38 digits (cast to DOUBLE or a string)");
        }
        DataType::Dictionary(_, value) => storable_type(value, column)?,
        DataType::RunEndEncoded(_, values) => storable_type(values.data_type(), column)?,
        DataType::Timestamp(unit, tz) => {
            let unit = match unit {
                TimeUnit::Second => TimeUnit::Microsecond,
                other => *other,
            };
            DataType::Timestamp(unit, tz.as_ref().map(|_| "UTC".into()))
        }
        DataType::Time32(_) | DataType::Time64(_) => {
            return refuse("Delta has no time-of-day type (cast to a string or to microseconds)");
        }
        DataType::Duration(_) | DataType::Interval(_) => {
            return refuse("Delta has no duration type (cast to a number of seconds or a string)");
        }
        DataType::Union(..) => return refuse("Delta has no union type (use a struct)"),
        DataType::List(f) => DataType::List(item(f)?),
        DataType::LargeList(f) => DataType::LargeList(item(f)?),
        DataType::ListView(f) => DataType::ListView(item(f)?),
        DataType::LargeListView(f) => DataType::LargeListView(item(f)?),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(item(f)?, *n),
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| storable_field(f, &format!("{column}.{}", f.name())))
                .collect::<Result<Fields>>()?,
        ),
        DataType::Map(f, sorted) => DataType::Map(item(f)?, *sorted),
        other => other.clone(),
    })
}

/// `batch` with `schema` as its schema: columns of the same type are shared (nullability and
/// metadata are only labels), others are cast. Errors name the column.
pub fn cast_batch(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.schema_ref() == schema {
        return Ok(batch);
    }
    if batch.num_columns() != schema.fields().len() {
        return Err(ArrowError::SchemaError(format!(
            "{} columns where {} were expected ({})",
            batch.num_columns(),
            schema.fields().len(),
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| cast_column(column, field))
        .collect::<Result<Vec<_>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)
}

/// A column in `field`'s type: itself when the types are equal; otherwise arrow's cast, which shares
/// the buffers where only nested nullability or field names differ.
fn cast_column(column: &ArrayRef, field: &Field) -> Result<ArrayRef, ArrowError> {
    let (from, to) = (column.data_type(), field.data_type());
    if from == to {
        return Ok(Arc::clone(column));
    }
    let name = field.name();
    if !can_cast_types(from, to) {
        return Err(ArrowError::CastError(format!(
            "column {name} is {from}, which cannot become {to}"
        )));
    }
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(column, to, &options)
        .map_err(|e| ArrowError::CastError(format!("column {name} ({from} to {to}): {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        Array, DictionaryArray, Float32Array, StringArray, TimestampSecondArray,
    };
    use datafusion::arrow::datatypes::Int32Type;
    use std::collections::HashMap;

    #[test]
    fn metadata_is_dropped_and_same_typed_columns_shared() {
        let column: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None]));
        let schema = Schema::new(vec![
            Field::new("s", DataType::Utf8, true)
                .with_metadata(HashMap::from([("k".into(), "v".into())])),
        ])
        .with_metadata(HashMap::from([("pandas".into(), "{}".into())]));
        let storable = storable_schema(&schema).unwrap();
        assert!(storable.metadata().is_empty());
        assert!(storable.field(0).metadata().is_empty());
        let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::clone(&column)]).unwrap();
        let stored = cast_batch(batch, &storable).unwrap();
        assert!(Arc::ptr_eq(stored.column(0), &column));
    }

    #[test]
    fn lossless_types_become_delta_types() {
        let float16 =
            datafusion::arrow::compute::cast(&Float32Array::from(vec![1.5]), &DataType::Float16)
                .unwrap();
        let dictionary: ArrayRef = Arc::new(
            vec![Some("x"), None]
                .into_iter()
                .collect::<DictionaryArray<Int32Type>>()
                .slice(0, 1),
        );
        let seconds: ArrayRef =
            Arc::new(TimestampSecondArray::from(vec![1]).with_timezone("+05:30"));
        let batch = RecordBatch::try_from_iter([("h", float16), ("d", dictionary), ("t", seconds)])
            .unwrap();
        let storable = storable_schema(&batch.schema()).unwrap();
        assert_eq!(storable.field(0).data_type(), &DataType::Float32);
        assert_eq!(storable.field(1).data_type(), &DataType::Utf8);
        assert_eq!(
            storable.field(2).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        let stored = cast_batch(batch, &storable).unwrap();
        let t = stored.column(2).as_any();
        let t = t
            .downcast_ref::<datafusion::arrow::array::TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(t.value(0), 1_000_000, "the same instant");
        assert_eq!(stored.column(1).len(), 1);
    }

    #[test]
    fn unstorable_types_are_refused_naming_the_column() {
        for (data_type, words) in [
            (DataType::Time64(TimeUnit::Nanosecond), "time-of-day"),
            (DataType::Decimal256(60, 2), "38 digits"),
            (
                DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano),
                "duration",
            ),
        ] {
            let schema = Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new(
                    "s",
                    DataType::Struct(vec![Field::new("when", data_type.clone(), true)].into()),
                    true,
                ),
            ]);
            let e = storable_schema(&schema).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            let message = e.to_string();
            assert!(message.contains("column 's.when'"), "{message}");
            assert!(message.contains(&data_type.to_string()), "{message}");
            assert!(message.contains(words), "{message}");
        }
        let ok = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
        assert_eq!(storable_schema(&ok).unwrap().as_ref(), &ok);
    }
}
