//! `features.<view>` as SQL sees it: key lookups on an online view come from its index, everything
//! else reads the view's Delta table. Either way a view with a TTL shows only unexpired rows, so the
//! same SQL gives the same answer on both paths.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::datasource::source_as_provider;
use datafusion::error::Result as DFResult;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::prelude::{col, lit};

use super::keys::{
    KeyTerm, MAX_LOOKUP_KEYS, key_combinations, key_terms, key_values, lookup_keys, non_null,
};
use super::lookup_exec::OnlineLookupExec;
use super::online::OnlineIndex;
use super::{FEATURES_SCHEMA, FeatureStore, Materialized, ViewState};
use crate::storage::catalog::ServedTables;
use crate::storage::{AsOf, DeltaTableProvider, open_delta};

/// Answers `SELECT <columns> FROM features.<view> WHERE <key filters>` straight from the index, without
/// DataFusion's optimizer and physical planner, when the (bound) plan is exactly that ([`Lookup::of`]).
/// The answer is the one `OnlineLookupExec` would give; any other shape returns `None` and is planned
/// as usual.
pub fn direct_lookup(plan: &LogicalPlan) -> Option<DFResult<RecordBatch>> {
    Lookup::of(plan)?.answer(None)
}

/// An online lookup's plan taken apart: the view's index, its key filters (their values literals or
/// the statement's parameters), the columns asked for. A prepared lookup keeps this and answers each
/// request from its parameters: no plan is bound, copied or walked per request.
#[derive(Debug)]
pub struct Lookup {
    index: Arc<OnlineIndex>,
    entity: Vec<String>,
    filters: Vec<(String, Vec<KeyTerm>)>,
    projection: Option<Vec<usize>>,
    /// The plan's own schema (names, nullability).
    schema: SchemaRef,
}

impl Lookup {
    /// The lookup `plan` is, if it is plain columns of one filter over an online view whose every
    /// conjunct is a key filter ([`key_terms`]), together pinning the key to at most
    /// [`MAX_LOOKUP_KEYS`] combinations whatever the parameters (a list parameter's keys are counted
    /// when it is bound).
    pub fn of(plan: &LogicalPlan) -> Option<Self> {
        let (columns, filter) = match plan {
            LogicalPlan::Projection(projection) => match projection.input.as_ref() {
                LogicalPlan::Filter(filter) => (Some(&projection.expr), filter),
                _ => return None,
            },
            LogicalPlan::Filter(filter) => (None, filter),
            _ => return None,
        };
        let LogicalPlan::TableScan(scan) = filter.input.as_ref() else {
            return None;
        };
        if !scan.filters.is_empty() || scan.fetch.is_some() || scan.projection.is_some() {
            return None;
        }
        let provider = source_as_provider(&scan.source).ok()?;
        let table = provider.downcast_ref::<FeatureViewTable>()?;
        let index = table.materialized.index.as_ref()?;
        let entity = &table.view.definition.entity;
        let filters = split_conjunction(&filter.predicate)
            .into_iter()
            .map(|c| key_terms(c).filter(|(column, _)| entity.contains(column)))
            .collect::<Option<Vec<_>>>()?;
        // Filters on one column intersect: the shortest bounds how many values it keeps. A list
        // parameter's length is known only when bound ([`Lookup::answer`] checks it then).
        let mut combinations = Some(1usize);
        for column in entity {
            let mut on_column = filters.iter().filter(|(c, _)| c == column).peekable();
            on_column.peek()?;
            let known = on_column
                .filter(|(_, terms)| !terms.iter().any(|t| matches!(t, KeyTerm::Elements(_))))
                .map(|(_, terms)| terms.len())
                .min();
            combinations = match (combinations, known) {
                (Some(n), Some(values)) => Some(n.checked_mul(values)?),
                _ => None,
            };
        }
        if combinations.is_some_and(|n| n > MAX_LOOKUP_KEYS) {
            return None;
        }
        let schema = table.materialized.schema.clone();
        let projection = match columns {
            None => None,
            Some(exprs) => Some(
                exprs
                    .iter()
                    .map(|e| match e {
                        Expr::Column(c) => schema.index_of(&c.name).ok(),
                        _ => None,
                    })
                    .collect::<Option<Vec<usize>>>()?,
            ),
        };
        Some(Self {
            index: index.clone(),
            entity: entity.clone(),
            filters,
            projection,
            schema: Arc::new(plan.schema().as_arrow().clone()),
        })
    }

    /// The rows for the keys the filters select, `params` (one row) giving the parameters' values.
    /// `None` when the bound keys are more than [`MAX_LOOKUP_KEYS`] combinations, or the index's
    /// columns do not fit the plan's schema: the query is then planned as usual (which reads the
    /// Delta table, or says what is wrong).
    pub fn answer(&self, params: Option<&RecordBatch>) -> Option<DFResult<RecordBatch>> {
        let filters = self
            .filters
            .iter()
            .map(|(column, terms)| {
                let mut values = Vec::with_capacity(terms.len());
                for term in terms {
                    values.extend(term.values(params)?);
                }
                Ok((column.as_str(), non_null(values)))
            })
            .collect::<DFResult<Vec<_>>>();
        let filters = match filters {
            Ok(filters) => filters,
            Err(e) => return Some(Err(e)),
        };
        let keys = key_combinations(&self.entity, filters)?;
        let now_us = chrono::Utc::now().timestamp_micros();
        let batch = match self.index.lookup(&keys, self.projection.as_deref(), now_us) {
            Ok(batch) => batch,
            Err(e) => return Some(Err(e)),
        };
        RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec())
            .ok()
            .map(Ok)
    }
}

/// Materialized views are served from memory in place of their Delta tables in the `features`
/// schema (the catalog asks at planning; the session registers the store for that schema).
impl ServedTables for FeatureStore {
    fn latest(&self, table: &str, settings: &Arc<SessionState>) -> Option<Arc<dyn TableProvider>> {
        let view = self.get(table)?;
        let materialized = view.materialized()?;
        Some(Arc::new(FeatureViewTable::new(
            view,
            materialized,
            settings.clone(),
        )))
    }
}

/// The provider of one materialized view, fixed to what was materialized when the query was planned.
#[derive(Debug)]
pub struct FeatureViewTable {
    view: Arc<ViewState>,
    materialized: Arc<Materialized>,
    settings: Arc<SessionState>,
}

impl FeatureViewTable {
    pub fn new(
        view: Arc<ViewState>,
        materialized: Arc<Materialized>,
        settings: Arc<SessionState>,
    ) -> Self {
        Self {
            view,
            materialized,
            settings,
        }
    }

    fn name(&self) -> String {
        format!("{FEATURES_SCHEMA}.{}", self.view.definition.name)
    }

    /// `event_time >= now - ttl` in the event time column's own type.
    fn ttl_filter(&self) -> DFResult<Option<Expr>> {
        let Some(ttl) = self.view.definition.ttl else {
            return Ok(None);
        };
        let column = &self.view.definition.event_time;
        let data_type = self
            .materialized
            .schema
            .field_with_name(column)?
            .data_type();
        let oldest = chrono::Utc::now().timestamp_micros()
            - i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        let tz = match data_type {
            DataType::Timestamp(_, tz) => tz.clone(),
            _ => None,
        };
        let bound = ScalarValue::TimestampMicrosecond(Some(oldest), tz).cast_to(data_type)?;
        Ok(Some(col(column.as_str()).gt_eq(lit(bound))))
    }

    /// The Delta path: the table's latest version, filtered by every pushed filter and the TTL.
    async fn scan_delta(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let delta = open_delta(&self.materialized.location, &AsOf::Latest).await?;
        let provider =
            DeltaTableProvider::try_new(self.name(), delta, &AsOf::Latest, &self.settings).await?;
        let schema = provider.schema();
        let mut plan = provider.scan(state, None, filters, None).await?;
        let predicate = conjunction(filters.iter().cloned().chain(self.ttl_filter()?));
        if let Some(predicate) = predicate {
            let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
            let predicate = state.create_physical_expr(predicate, &df_schema)?;
            plan = Arc::new(FilterExec::try_new(predicate, plan)?);
        }
        if let Some(projection) = projection {
            let exprs = projection.iter().map(|&i| {
                let name = schema.field(i).name().clone();
                (
                    Arc::new(PhysicalColumn::new(&name, i))
                        as Arc<dyn datafusion::physical_expr::PhysicalExpr>,
                    name,
                )
            });
            plan = Arc::new(ProjectionExec::try_new(exprs, plan)?);
        }
        Ok(plan)
    }
}

#[async_trait]
impl TableProvider for FeatureViewTable {
    fn schema(&self) -> SchemaRef {
        self.materialized.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        let entity = &self.view.definition.entity;
        let online = self.materialized.index.is_some();
        Ok(filters
            .iter()
            .map(|filter| match key_values(filter) {
                // The index answers these exactly; the Delta path applies every filter itself.
                Some((column, values))
                    if online && entity.contains(&column) && values.len() <= MAX_LOOKUP_KEYS =>
                {
                    TableProviderFilterPushDown::Exact
                }
                _ => TableProviderFilterPushDown::Inexact,
            })
            .collect())
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        _input: Arc<dyn ExecutionPlan>,
        _insert_op: datafusion::logical_expr::dml::InsertOp,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        datafusion::common::plan_err!(
            "{} is a feature view: only REFRESH FEATURE VIEW {} writes it (change its SQL file or its sources)",
            self.name(),
            self.view.definition.name
        )
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        if let Some(index) = &self.materialized.index
            && let Some(keys) = lookup_keys(&self.view.definition.entity, filters)
        {
            return Ok(Arc::new(OnlineLookupExec::new(
                self.view.definition.name.clone(),
                index.clone(),
                keys,
                projection.cloned(),
            )?));
        }
        self.scan_delta(state, projection, filters).await
    }
}
