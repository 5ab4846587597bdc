//! `average_precision_at_k(predicted, relevant, k)`: average precision at k of one recommendation list.

use std::sync::LazyLock;

use datafusion::logical_expr::{Documentation, ScalarUDF};

use crate::ranking::{self, Hits, RankingMetric};

pub const NAME: &str = "average_precision_at_k";

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    ranking::documentation(
        NAME,
        "Average precision at k: the mean, over the relevant ids found in the first `k`, of the \
         precision at each one's rank, divided by `min(k, |relevant|)` (the usual AP@k, as in \
         `ml_metrics.apk`); with `k` covering the whole list it equals scikit-learn's \
         `average_precision_score`, and its mean over users is MAP@k. NULL when there are no \
         relevant ids.",
        "average_precision_at_k([1, 3, 2], [1, 2], 3)  -- 0.8333...",
    )
});

pub fn udf() -> ScalarUDF {
    RankingMetric::udf(NAME, &DOCUMENTATION, metric)
}

fn metric(hits: &Hits) -> Option<f64> {
    (hits.relevant > 0).then(|| {
        let precisions = (hits.ranks.iter().enumerate()).fold(0.0, |acc, (found, rank)| {
            acc + (found + 1) as f64 / (rank + 1) as f64
        });
        precisions / hits.k.min(hits.relevant) as f64
    })
}
