//! `recall_at_k(predicted, relevant, k)`: recall at k of one recommendation list.

use std::sync::LazyLock;

use datafusion::logical_expr::{Documentation, ScalarUDF};

use crate::ranking::{self, Hits, RankingMetric};

pub const NAME: &str = "recall_at_k";

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    ranking::documentation(
        NAME,
        "Recall at k: the fraction of the relevant ids found among the first `k` recommended, \
         `hits / |relevant|`. NULL when there are no relevant ids (recall is undefined).",
        "recall_at_k([3, 1, 2], [1, 2], 2)  -- 0.5",
    )
});

pub fn udf() -> ScalarUDF {
    RankingMetric::udf(NAME, &DOCUMENTATION, metric)
}

fn metric(hits: &Hits) -> Option<f64> {
    (hits.relevant > 0).then(|| hits.ranks.len() as f64 / hits.relevant as f64)
}
