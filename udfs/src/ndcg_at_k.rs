//! `ndcg_at_k(predicted, relevant, k)`: normalized discounted cumulative gain at k of one recommendation list.

use std::sync::LazyLock;

use datafusion::logical_expr::{Documentation, ScalarUDF};

use crate::ranking::{self, Hits, RankingMetric, discount};

pub const NAME: &str = "ndcg_at_k";

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    ranking::documentation(
        NAME,
        "Normalized discounted cumulative gain at k with binary relevance: \
         `DCG / IDCG`, where `DCG = sum over hits at 0-based rank r < k of 1 / log2(r + 2)` and IDCG \
         is the DCG of a perfect list (`min(k, |relevant|)` hits first). Equals scikit-learn's \
         `ndcg_score` on 0/1 relevance. NULL when there are no relevant ids.",
        "ndcg_at_k([3, 1, 2], [1, 2], 3)  -- 0.693...",
    )
});

pub fn udf() -> ScalarUDF {
    RankingMetric::udf(NAME, &DOCUMENTATION, metric)
}

fn metric(hits: &Hits) -> Option<f64> {
    (hits.relevant > 0).then(|| {
        let dcg = hits.ranks.iter().fold(0.0, |acc, r| acc + discount(*r));
        let ideal = (0..hits.k.min(hits.relevant)).fold(0.0, |acc, r| acc + discount(r));
        dcg / ideal
    })
}
