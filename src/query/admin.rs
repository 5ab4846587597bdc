//! The answers of the statements that run the feature and model layers: `REFRESH FEATURE VIEW[S]`,
//! `RELOAD FEATURE VIEWS` and `RELOAD MODELS`, each one batch of report rows.

use std::sync::Arc;

use datafusion::execution::SendableRecordBatchStream;

use crate::error::{Error, Result};
use crate::features::{self, ViewState, refresh};
use crate::query::one_batch;
use crate::scoring;
use crate::session::QuiverSession;

/// `REFRESH FEATURE VIEW name` (one view) or `REFRESH FEATURE VIEWS` (every materialized view, in
/// name order; the first failure stops it).
pub async fn refresh_views(
    session: &QuiverSession,
    name: Option<&str>,
) -> Result<SendableRecordBatchStream> {
    let views: Vec<Arc<ViewState>> = match name {
        Some(name) => vec![session.features().view(name)?],
        None => session.features().materialized_views(),
    };
    let mut reports = Vec::with_capacity(views.len());
    for view in &views {
        reports.push(refresh::refresh(session.ctx(), session.catalog(), view).await?);
    }
    one_batch(refresh::report_batch(&reports)?)
}

/// `RELOAD FEATURE VIEWS`.
pub async fn reload_feature_views(session: &QuiverSession) -> Result<SendableRecordBatchStream> {
    let report = session
        .features()
        .reload(session.ctx(), session.catalog())
        .await?;
    one_batch(features::reload_report_batch(&report)?)
}

/// `RELOAD MODELS`.
pub async fn reload_models(session: &QuiverSession) -> Result<SendableRecordBatchStream> {
    if session.models().dir().is_none() {
        return Err(Error::InvalidInput(
            "RELOAD MODELS: no models directory is configured (--models-dir)".into(),
        ));
    }
    let outcomes = session.models().reload(session.ctx()).await?;
    one_batch(scoring::reload_report_batch(&outcomes)?)
}
