//! Quiver's SQL functions for recommender features, registered into every session by
//! `quiver::session`: event-time decay, bucketing and hashing of raw values, embedding maths,
//! and ranking metrics to evaluate recommendations in SQL.
//!
//! One function per file. Each is vectorized over whole Arrow arrays, states its null semantics in
//! its documentation (visible in `information_schema.routines` and `SHOW FUNCTIONS`), and rejects
//! wrong argument types at planning time.

mod args;
mod ranking;
mod vectors;

pub mod auc;
pub mod average_precision_at_k;
pub mod bucketize;
pub mod cosine_similarity;
pub mod dot;
pub mod feature_hash;
pub mod l2_normalize;
pub mod ndcg_at_k;
pub mod precision_at_k;
pub mod recall_at_k;
pub mod time_decay;

use datafusion::logical_expr::{AggregateUDF, DocSection, ScalarUDF};
use datafusion::prelude::SessionContext;

/// The documentation section every function of this crate is listed under.
pub const DOC_SECTION: DocSection = DocSection {
    include: true,
    label: "Recommender Functions",
    description: Some("Quiver's functions for recommender features and evaluation."),
};

/// Every scalar function in this crate.
pub fn scalar_functions() -> Vec<ScalarUDF> {
    vec![
        time_decay::udf(),
        bucketize::udf(),
        feature_hash::udf(),
        dot::udf(),
        cosine_similarity::udf(),
        l2_normalize::udf(),
        precision_at_k::udf(),
        recall_at_k::udf(),
        ndcg_at_k::udf(),
        average_precision_at_k::udf(),
    ]
}

/// Every aggregate function in this crate.
pub fn aggregate_functions() -> Vec<AggregateUDF> {
    vec![auc::udaf()]
}

/// Registers every function of this crate with `ctx`.
pub fn register(ctx: &SessionContext) {
    for function in scalar_functions() {
        ctx.register_udf(function);
    }
    for function in aggregate_functions() {
        ctx.register_udaf(function);
    }
}
