//! `dot(a, b)`: the dot product of two embeddings.

use std::sync::LazyLock;

use datafusion::logical_expr::{Documentation, ScalarUDF};

use crate::DOC_SECTION;
use crate::vectors::{Pairwise, dot};

pub const NAME: &str = "dot";

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_SECTION,
        "Dot product `sum(a[i] * b[i])` of two vectors of equal length (List or FixedSizeList of \
         any numbers; computed in Float64). Vectors of different lengths are an error naming the \
         lengths. NULL if either vector is NULL or holds a NULL; 0 for two empty vectors.",
        "dot(a, b)",
    )
    .with_sql_example(
        "```sql\nSELECT i.item_id, dot(u.embedding, i.embedding) AS score\nFROM users u CROSS JOIN items i WHERE u.user_id = 42\nORDER BY score DESC LIMIT 10;\n```",
    )
    .with_argument("a", "First vector.")
    .with_argument("b", "Second vector, of the same length.")
    .build()
});

pub fn udf() -> ScalarUDF {
    Pairwise::udf(NAME, &DOCUMENTATION, |x, y| Some(dot(x, y)))
}
