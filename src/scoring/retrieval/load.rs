//! Building a model version's [`Retrieval`] at load: the `[items]` query (embeddings, or ids run
//! through the item tower), the `[users]` the model knows and the `[fallback]` list.

use std::path::Path;

use datafusion::arrow::array::{Array, AsArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Float32Type, Float64Type, Int64Type};
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use tract_onnx::prelude::{IntoTValue, TVec, Tensor, tvec};

use crate::error::{Error, Result};
use crate::scoring::onnx::OnnxModel;
use crate::scoring::spec::{ElementType, Metric, ModelSpec, TensorSpec};
use crate::scoring::tensors::list_rows;

use super::{ITEM_TOWER_BATCH, Retrieval, normalize};

impl Retrieval {
    pub async fn load(ctx: &SessionContext, spec: &ModelSpec, dir: &Path) -> Result<Self> {
        let dim = spec.outputs[0].width();
        let items = spec
            .items
            .as_ref()
            .ok_or_else(|| Error::InvalidInput("a two_tower model needs [items]".into()))?;
        let rows = query(ctx, &items.query, "[items] query").await?;
        let (item_ids, mut matrix) = match &items.tower {
            Some(tower) => embed_items(&dir.join(tower), &rows, dim).await?,
            None => read_embeddings(&rows, dim)?,
        };
        if let Some(row) = matrix
            .chunks_exact(dim)
            .position(|v| v.iter().any(|x| x.is_nan()))
        {
            return Err(Error::InvalidInput(format!(
                "item {} (row {row} of the [items] query) has NaN in its embedding: a NaN item \
                 cannot be ranked",
                item_ids[row]
            )));
        }
        if spec.metric == Metric::Cosine {
            for row in matrix.chunks_exact_mut(dim) {
                normalize(row);
            }
        }
        let known_users = match &spec.users {
            Some(users) => {
                let rows = query(ctx, &users.query, "[users] query").await?;
                Some(
                    int64_column(&rows, 0, "[users] query")?
                        .values()
                        .iter()
                        .copied()
                        .collect(),
                )
            }
            None => None,
        };
        let fallback = match &spec.fallback {
            Some(fallback) => {
                read_fallback(&query(ctx, &fallback.query, "[fallback] query").await?)?
            }
            None => Vec::new(),
        };
        Ok(Self::new(
            item_ids,
            matrix,
            dim,
            spec.metric,
            known_users,
            fallback,
        ))
    }
}

async fn query(ctx: &SessionContext, sql: &str, what: &str) -> Result<RecordBatch> {
    let failed = |e: Error| Error::InvalidInput(format!("{what} ({sql}): {e}"));
    // DataFusion's own entry point, read-only: a model's queries are plain SELECTs.
    let read_only = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let frame = ctx
        .sql_with_options(sql, read_only)
        .await
        .map_err(|e| failed(e.into()))?;
    let stream = frame.execute_stream().await.map_err(|e| failed(e.into()))?;
    let schema = stream.schema();
    let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| failed(e.into()))?;
    Ok(concat_batches(&schema, &batches)?)
}

fn int64_column(rows: &RecordBatch, index: usize, what: &str) -> Result<Int64Array> {
    let column = rows.columns().get(index).ok_or_else(|| {
        Error::InvalidInput(format!("{what} returns {} columns", rows.num_columns()))
    })?;
    if !column.data_type().is_integer() {
        return Err(Error::InvalidInput(format!(
            "{what}: column {} must be an integer id, it is {}",
            index + 1,
            column.data_type()
        )));
    }
    if column.null_count() > 0 {
        return Err(Error::InvalidInput(format!("{what}: ids must not be NULL")));
    }
    Ok(cast(column, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

/// Item ids through the item tower, in batches.
async fn embed_items(path: &Path, rows: &RecordBatch, dim: usize) -> Result<(Vec<i64>, Vec<f32>)> {
    let ids = int64_column(rows, 0, "[items] query")?.values().to_vec();
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let input = TensorSpec {
            name: String::new(),
            element: ElementType::Int64,
            shape: vec![-1],
        };
        let output = TensorSpec {
            name: String::new(),
            element: ElementType::Float32,
            shape: vec![-1, dim as i64],
        };
        let tower = OnnxModel::load(&path, &[input], &[output])?;
        let mut matrix = Vec::with_capacity(ids.len() * dim);
        for chunk in ids.chunks(ITEM_TOWER_BATCH) {
            let input = Tensor::from_shape(&[chunk.len()], chunk)
                .map_err(|e| Error::Internal(format!("item id tensor: {e}")))?;
            let outputs: TVec<_> = tower.run(tvec![input.into_tvalue()])?;
            matrix.extend(flat_f32(&outputs[0], chunk.len() * dim, "item tower")?);
        }
        Ok((ids, matrix))
    })
    .await
    .map_err(|e| Error::Internal(format!("item tower panicked: {e}")))?
}

/// `(item_id, embedding)` rows as ids and a matrix.
fn read_embeddings(rows: &RecordBatch, dim: usize) -> Result<(Vec<i64>, Vec<f32>)> {
    let what = "[items] query";
    let ids = int64_column(rows, 0, what)?.values().to_vec();
    let Some(embeddings) = rows.columns().get(1) else {
        return Err(Error::InvalidInput(format!(
            "{what} returns item ids only: add the embedding column, or set [items] tower"
        )));
    };
    // Every row must have `dim` values: checked per row, so a short row cannot shift the others.
    let Some((offsets, values)) = list_rows(embeddings) else {
        return Err(Error::InvalidInput(format!(
            "{what}: column 2 must be a list of floats (the embedding), it is {}",
            embeddings.data_type()
        )));
    };
    if let Some(row) = offsets.windows(2).position(|w| w[1] - w[0] != dim) {
        return Err(Error::InvalidInput(format!(
            "{what}: every embedding must have {dim} values (the user tower's output); item {} has {}",
            ids.get(row).copied().unwrap_or_default(),
            offsets[row + 1] - offsets[row]
        )));
    }
    let start = offsets.first().copied().unwrap_or_default();
    let values = values.slice(start, ids.len() * dim);
    if embeddings.null_count() > 0 || values.null_count() > 0 {
        return Err(Error::InvalidInput(format!(
            "{what}: embeddings must not be NULL or hold NULLs"
        )));
    }
    let values = cast(&values, &DataType::Float32)?;
    Ok((ids, values.as_primitive::<Float32Type>().values().to_vec()))
}

fn read_fallback(rows: &RecordBatch) -> Result<Vec<(i64, Option<f64>)>> {
    let ids = int64_column(rows, 0, "[fallback] query")?;
    let scores = match rows.columns().get(1) {
        Some(column) => Some(cast(column, &DataType::Float64)?),
        None => None,
    };
    Ok((0..ids.len())
        .map(|i| {
            let score = scores.as_ref().and_then(|s| {
                let s = s.as_primitive::<Float64Type>();
                s.is_valid(i).then(|| s.value(i))
            });
            (ids.value(i), score)
        })
        .collect())
}

pub(super) fn flat_f32(tensor: &Tensor, expected: usize, what: &str) -> Result<Vec<f32>> {
    let view = tensor
        .to_plain_array_view::<f32>()
        .map_err(|e| Error::InvalidInput(format!("{what} output: {e}")))?;
    if view.len() != expected {
        return Err(Error::InvalidInput(format!(
            "{what} returned shape {:?}, expected {expected} values",
            tensor.shape()
        )));
    }
    Ok(view.iter().copied().collect())
}
