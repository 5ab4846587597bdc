//! `precision_at_k(predicted, relevant, k)`: precision at k of one recommendation list.

use std::sync::LazyLock;

use datafusion::logical_expr::{Documentation, ScalarUDF};

use crate::ranking::{self, Hits, RankingMetric};

pub const NAME: &str = "precision_at_k";

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    ranking::documentation(
        NAME,
        "Precision at k: the fraction of the first `k` recommended ids that are relevant, \
         `hits / k`. The denominator is `k` even when fewer than `k` ids are recommended (a short \
         list is not rewarded). 0 when nothing is relevant.",
        "precision_at_k([3, 1, 2], [1, 2], 2)  -- 0.5",
    )
});

pub fn udf() -> ScalarUDF {
    RankingMetric::udf(NAME, &DOCUMENTATION, metric)
}

fn metric(hits: &Hits) -> Option<f64> {
    Some(hits.ranks.len() as f64 / hits.k as f64)
}
