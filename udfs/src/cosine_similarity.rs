//! `cosine_similarity(a, b)`: the cosine of the angle between two embeddings.

use std::sync::LazyLock;

use datafusion::logical_expr::{Documentation, ScalarUDF};

use crate::DOC_SECTION;
use crate::vectors::{Pairwise, dot};

pub const NAME: &str = "cosine_similarity";

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_SECTION,
        "Cosine similarity `dot(a, b) / (|a| * |b|)` of two vectors of equal length (List or \
         FixedSizeList of any numbers; computed in Float64), between -1 and 1. Vectors of different \
         lengths are an error naming the lengths. NULL if either vector is NULL, holds a NULL, or \
         has length zero (the angle is undefined). DataFusion's `cosine_distance` is `1 -` this.",
        "cosine_similarity(a, b)",
    )
    .with_sql_example(
        "```sql\nSELECT cosine_similarity([1.0, 0.0], [1.0, 1.0]);  -- 0.7071...\n```",
    )
    .with_argument("a", "First vector.")
    .with_argument("b", "Second vector, of the same length.")
    .build()
});

pub fn udf() -> ScalarUDF {
    Pairwise::udf(NAME, &DOCUMENTATION, cosine)
}

fn cosine(x: &[f64], y: &[f64]) -> Option<f64> {
    // One square root of the product: exact for parallel vectors, where |x| * |y| rounds twice.
    let norms = (dot(x, x) * dot(y, y)).sqrt();
    (norms > 0.0).then(|| (dot(x, y) / norms).clamp(-1.0, 1.0))
}
