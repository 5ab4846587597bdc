//! A statement's rows in exactly the schema it announced.
//!
//! A statement's schema is decided once, by [`super::Planned::schema`]: GetFlightInfo,
//! CreatePreparedStatement and GetSchema announce it, and every batch [`super::execute`] and the
//! direct answers produce is brought to it here. DataFusion plans the schema before optimizing, and
//! the optimizer may tighten nullability (a folded constant is never NULL), drop field metadata or
//! change a nested field's nullability; Flight clients such as ADBC refuse a stream whose schema
//! differs from the one announced, so the stream is labelled with the announced schema.
//!
//! Labelling is free when only nullability or metadata differ: the arrays are shared, not copied.
//! A column whose type truly differs is cast; a column that cannot be cast, or NULLs in a column
//! announced as non-nullable, is an Internal error naming the column, since it is a bug in a plan,
//! not in the client's request.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use futures::{Stream, StreamExt};

use crate::error::{Error, Result};
use crate::storage::storable::cast_batch;

/// `batch` with `schema` as its schema (see the module documentation).
pub fn conform_batch(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    cast_batch(batch, schema).map_err(|e| {
        Error::Internal(format!(
            "a result does not fit the schema its statement announced: {e}"
        ))
    })
}

/// `stream` with `schema` as its schema and the schema of each of its batches.
pub fn conform_stream(
    stream: SendableRecordBatchStream,
    schema: SchemaRef,
) -> SendableRecordBatchStream {
    // Labelled per batch even when the stream's own schema is the announced one: DataFusion's
    // streams do not promise that every batch carries the stream's schema.
    Box::pin(Conformed { stream, schema })
}

struct Conformed {
    stream: SendableRecordBatchStream,
    schema: SchemaRef,
}

impl Stream for Conformed {
    type Item = DFResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let schema = Arc::clone(&self.schema);
        self.stream.poll_next_unpin(cx).map(|item| {
            item.map(|batch| {
                conform_batch(batch?, &schema).map_err(|e| DataFusionError::External(Box::new(e)))
            })
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.stream.size_hint()
    }
}

impl RecordBatchStream for Conformed {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, ArrayRef, Int64Array, ListArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use std::collections::HashMap;

    #[test]
    fn nullability_and_metadata_are_relabelled_without_a_copy() {
        let produced = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let column: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        let batch = RecordBatch::try_new(produced, vec![Arc::clone(&column)]).unwrap();
        let announced = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true)
                .with_metadata(HashMap::from([("k".to_string(), "v".to_string())])),
        ]));
        let conformed = conform_batch(batch, &announced).unwrap();
        assert_eq!(conformed.schema(), announced);
        assert!(Arc::ptr_eq(conformed.column(0), &column));
    }

    #[test]
    fn nested_nullability_is_relabelled_sharing_the_values() {
        let list = ListArray::from_iter_primitive::<Int64Type, _, _>(vec![Some(vec![Some(1)])]);
        let values = list.values().to_data();
        let batch = RecordBatch::try_from_iter([("l", Arc::new(list) as ArrayRef)]).unwrap();
        let item = Arc::new(Field::new_list_field(DataType::Int64, false));
        let announced = Arc::new(Schema::new(vec![Field::new(
            "l",
            DataType::List(item),
            true,
        )]));
        let conformed = conform_batch(batch, &announced).unwrap();
        assert_eq!(conformed.schema(), announced);
        let list = conformed
            .column(0)
            .as_any()
            .downcast_ref::<ListArray>()
            .unwrap();
        assert_eq!(
            list.values().to_data().buffers()[0].as_ptr(),
            values.buffers()[0].as_ptr()
        );
    }

    #[test]
    fn nulls_where_none_were_announced_are_internal_naming_the_column() {
        let batch = RecordBatch::try_from_iter([(
            "x",
            Arc::new(Int64Array::from(vec![None, Some(1)])) as ArrayRef,
        )])
        .unwrap();
        let announced = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let e = conform_batch(batch, &announced).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        assert!(e.to_string().contains('x'), "{e}");
    }

    #[test]
    fn other_types_are_cast_and_impossible_ones_refused() {
        let batch =
            RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![1])) as ArrayRef)])
                .unwrap();
        let announced = Arc::new(Schema::new(vec![Field::new("x", DataType::Utf8, true)]));
        let conformed = conform_batch(batch.clone(), &announced).unwrap();
        assert_eq!(conformed.column(0).data_type(), &DataType::Utf8);
        let announced = Arc::new(Schema::new(vec![Field::new(
            "x",
            DataType::Struct(vec![Field::new("y", DataType::Int64, true)].into()),
            true,
        )]));
        let e = conform_batch(batch, &announced).unwrap_err();
        assert!(e.to_string().contains("column x is Int64"), "{e}");
        assert_eq!(conformed.column(0).len(), 1);
    }
}
