//! The two-tower scoring pipeline behind `recommend` and `recommend_items`: embed users with the user
//! tower, scan the item matrix for the top candidates ([`Retrieval`]), re-rank them when the model
//! says so, and lay the result out as rows.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, Float64Builder, Int32Builder, Int64Builder, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{Result, exec_datafusion_err, exec_err, internal_err, plan_err};

use crate::error::Error;
use crate::scoring::recommend::TABLE_FUNCTION;
use crate::scoring::retrieval::{Retrieval, Scored};
use crate::scoring::spec::ElementType;
use crate::scoring::{Model, ModelRegistry};
use tract_onnx::prelude::{IntoTValue, Tensor, tvec};

/// Most items one call may ask for.
pub const MAX_K: i64 = 10_000;

pub(crate) fn result_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("item_id", DataType::Int64, false),
            Field::new("score", DataType::Float64, true),
            Field::new("rank", DataType::Int32, false),
        ]))
    });
    SCHEMA.clone()
}

/// A two-tower model and, when its model.toml has `[rerank]`, the scorer that re-ranks its candidates;
/// both pinned for one query.
#[derive(Debug, Clone)]
pub(crate) struct Pipeline {
    pub(crate) model: Arc<Model>,
    pub(crate) ranker: Option<Arc<Model>>,
}

impl Pipeline {
    pub(crate) fn resolve(registry: &ModelRegistry, model: Arc<Model>) -> Result<Self> {
        model.retrieval()?;
        let ranker = match &model.spec.rerank {
            Some(rerank) => Some(registry.get(&rerank.model).map_err(|e| Error::Context {
                context: format!("model '{}' re-ranks with", model.name),
                source: Box::new(e),
            })?),
            None => None,
        };
        Ok(Self { model, ranker })
    }

    /// The top `k` for each user in `users` (`None`: a NULL user, no result), known users embedded
    /// in one user-tower call, each list re-ranked when the model says so.
    pub(crate) fn recommend(
        &self,
        users: &[Option<i64>],
        k: usize,
        exclude: &HashSet<i64>,
    ) -> Result<Vec<Option<Vec<Scored>>>> {
        let model = &self.model;
        let retrieval = model.retrieval()?;
        let candidates = match (&self.ranker, &model.spec.rerank) {
            (Some(_), Some(rerank)) => k.max(rerank.candidates),
            _ => k,
        };
        // One user-tower call for the batch; each user's vector serves the scan and the re-ranker.
        let vectors = user_vectors(model, retrieval, users)?;
        let mut next = vectors.iter();
        users
            .iter()
            .map(|user| {
                let Some(user) = *user else { return Ok(None) };
                if !retrieval.knows(user) {
                    return Ok(Some(retrieval.fallback(k, exclude)));
                }
                let vector = next.next().map(Vec::as_slice).unwrap_or_default();
                let top = retrieval.top_k(vector, candidates, exclude);
                match &self.ranker {
                    Some(ranker) => rerank(ranker, retrieval, vector, top, k).map(Some),
                    None => Ok(Some(top)),
                }
            })
            .collect()
    }
}

/// The embeddings of the known users among `users`, in order.
fn user_vectors(
    model: &Model,
    retrieval: &Retrieval,
    users: &[Option<i64>],
) -> Result<Vec<Vec<f32>>> {
    let known: Vec<i64> = users
        .iter()
        .flatten()
        .copied()
        .filter(|u| retrieval.knows(*u))
        .collect();
    if known.is_empty() {
        return Ok(Vec::new());
    }
    let flat = retrieval.embed_users(&model.onnx, &known).map_err(|e| {
        exec_datafusion_err!("{}('{}'): user tower: {e}", TABLE_FUNCTION, model.name)
    })?;
    Ok(flat
        .chunks_exact(retrieval.dim().max(1))
        .map(<[f32]>::to_vec)
        .collect())
}

/// Orders `candidates` by the ranker's score of (user embedding, item embedding, retrieval score)
/// and keeps the first `k`; the score column becomes the ranker's.
fn rerank(
    ranker: &Model,
    retrieval: &Retrieval,
    user: &[f32],
    candidates: Vec<Scored>,
    k: usize,
) -> Result<Vec<Scored>> {
    let dim = retrieval.dim();
    let width = 2 * dim + 1;
    let fits = matches!(ranker.onnx.inputs(), [input] if input.width() == width && input.element == ElementType::Float32)
        && matches!(ranker.onnx.outputs(), [output] if output.width() == 1);
    if !fits {
        return exec_err!(
            "re-ranking model '{}' must take one float32 [-1, {width}] input (user embedding, item \
             embedding, retrieval score) and return one value per row",
            ranker.name
        );
    }
    if candidates.is_empty() {
        return Ok(candidates);
    }
    let mut rows = Vec::with_capacity(candidates.len() * width);
    for candidate in &candidates {
        let Some(index) = candidate.index else {
            return internal_err!("a retrieved candidate has no matrix row");
        };
        rows.extend_from_slice(user);
        rows.extend_from_slice(retrieval.item_vector(index));
        rows.push(candidate.score.unwrap_or_default() as f32);
    }
    let input = Tensor::from_shape(&[candidates.len(), width], &rows)
        .map_err(|e| exec_datafusion_err!("re-ranking input: {e}"))?;
    let outputs = ranker
        .onnx
        .run(tvec![input.into_tvalue()])
        .map_err(|e| exec_datafusion_err!("re-ranking model '{}': {e}", ranker.name))?;
    let scores = outputs[0]
        .cast_to::<f64>()
        .map_err(|e| exec_datafusion_err!("re-ranking model '{}': {e}", ranker.name))?;
    let scores = scores
        .to_plain_array_view::<f64>()
        .map_err(|e| exec_datafusion_err!("re-ranking model '{}': {e}", ranker.name))?;
    // A candidate the scorer gives NaN is left out, as the retrieval scan leaves out NaN scores.
    let mut reranked: Vec<Scored> = candidates
        .into_iter()
        .zip(scores.iter())
        .filter(|(_, s)| !s.is_nan())
        .map(|(c, s)| Scored {
            score: Some(*s),
            ..c
        })
        .collect();
    reranked.sort_by(|a, b| {
        let (x, y) = (a.score.unwrap_or(f64::NAN), b.score.unwrap_or(f64::NAN));
        y.total_cmp(&x).then(a.index.cmp(&b.index))
    });
    reranked.truncate(k);
    Ok(reranked)
}

/// `k` as a count of items, with the limits named.
pub(crate) fn item_count(function: &str, k: i64) -> Result<usize> {
    if !(0..=MAX_K).contains(&k) {
        return plan_err!("{function}: k must be between 0 and {MAX_K}, got {k}");
    }
    Ok(k as usize)
}

/// One user's top `k` as rows of [`result_schema`] (its `projection`), without `excluded`.
pub(crate) fn one_user(
    pipeline: &Pipeline,
    user: i64,
    k: usize,
    excluded: &HashSet<i64>,
    projection: Option<&[usize]>,
) -> Result<RecordBatch> {
    let started = std::time::Instant::now();
    let scored = pipeline.recommend(&[Some(user)], k, excluded)?;
    // Model names come from the models directory (the operator's), not from clients: unbounded.
    metrics::histogram!(crate::metrics::RECOMMEND_SECONDS, "model" => pipeline.model.name.clone())
        .record(started.elapsed().as_secs_f64());
    let batch = ranked_batch(scored.into_iter().flatten().next().unwrap_or_default())?;
    match projection {
        Some(p) => Ok(batch.project(p)?),
        None => Ok(batch),
    }
}

fn ranked_batch(scored: Vec<Scored>) -> Result<RecordBatch> {
    let mut ids = Int64Builder::with_capacity(scored.len());
    let mut scores = Float64Builder::with_capacity(scored.len());
    let mut ranks = Int32Builder::with_capacity(scored.len());
    for (rank, item) in scored.iter().enumerate() {
        ids.append_value(item.item_id);
        scores.append_option(item.score);
        ranks.append_value(rank as i32 + 1);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids.finish()),
        Arc::new(scores.finish()),
        Arc::new(ranks.finish()),
    ];
    Ok(RecordBatch::try_new(result_schema(), columns)?)
}
