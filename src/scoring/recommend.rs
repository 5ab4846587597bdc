//! `SELECT * FROM recommend('model', user_id, k)` and `recommend_items('model', user_id, k)`.
//!
//! Both embed the user with the two-tower model's user tower and scan the item matrix for the top k
//! (see [`Retrieval`]). A user the model does not know (outside its `[users]` query) gets the
//! `[fallback]` list, or no rows without one. `recommend` also drops the items of the model's
//! `[exclude]` query for that user: answered from the model's index of it ([`Exclusion`]) when the
//! query can be indexed, else planned as a child of [`RecommendExec`]; EXPLAIN shows which.
//! `recommend_items` ([`crate::scoring::recommend_items`]) is for batch scoring and does not exclude.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ParamValues, Result, ScalarValue, exec_err, internal_err, plan_err};
use datafusion::datasource::{TableProvider, TableType, source_as_provider};
use datafusion::execution::context::SessionState;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, collect,
};

use crate::scoring::ModelRegistry;
use crate::scoring::pipeline::{Pipeline, item_count, one_user, result_schema};
use crate::scoring::predict::model_name;

pub const TABLE_FUNCTION: &str = "recommend";

/// An integer argument of the call: known at planning, or the statement's parameter `$n`
/// (`Parameter(n)`), known when the statement runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Argument {
    Known(i64),
    Parameter(usize),
}

/// An argument of the table function: a constant, or a parameter not bound yet.
fn constant_int(function: &str, what: &str, expr: &Expr) -> Result<Argument> {
    match expr {
        Expr::Placeholder(p) => match crate::parameters::index(&p.id) {
            Some(i) => Ok(Argument::Parameter(i + 1)),
            _ => plan_err!(
                "{function}: {what} is parameter {}, expected $1, $2, ...",
                p.id
            ),
        },
        Expr::Literal(value, _) if value.is_null() => {
            plan_err!("{function}: {what} is NULL")
        }
        Expr::Literal(value, _) if value.data_type().is_integer() => {
            match value.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(Some(v)) => Ok(Argument::Known(v)),
                other => plan_err!("{function}: {what} {other} is not an integer"),
            }
        }
        Expr::Negative(inner) => match constant_int(function, what, inner)? {
            Argument::Known(v) => match v.checked_neg() {
                Some(v) => Ok(Argument::Known(v)),
                None => plan_err!("{function}: {what} is out of range"),
            },
            // `-$1` is not a parameter of the call: its sign would be lost.
            Argument::Parameter(_) => {
                plan_err!(
                    "{function}: {what} must be an integer constant or a parameter, got {expr}"
                )
            }
        },
        other => {
            plan_err!("{function}: {what} must be an integer constant or a parameter, got {other}")
        }
    }
}

impl Argument {
    /// The value, taking a parameter from `params`.
    fn value(self, what: &str, params: Option<&ParamValues>) -> Result<i64> {
        let n = match self {
            Argument::Known(v) => return Ok(v),
            Argument::Parameter(n) => n,
        };
        let Some(params) = params else {
            return plan_err!("{TABLE_FUNCTION}(...): a parameter of the call was not bound");
        };
        let bound = params.get_placeholders_with_values(&format!("${n}"))?;
        match constant_int(TABLE_FUNCTION, what, &Expr::Literal(bound.value, None))? {
            Argument::Known(v) => Ok(v),
            Argument::Parameter(_) => internal_err!("a bound parameter is a parameter"),
        }
    }
}

/// The `recommend` table function.
#[derive(Debug)]
pub struct Recommend {
    pub registry: Arc<ModelRegistry>,
}

impl TableFunctionImpl for Recommend {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let usage = "recommend('model', user_id, k)";
        let [model, user, k] = args.exprs() else {
            return plan_err!("{usage} takes 3 arguments, got {}", args.exprs().len());
        };
        let name = match model {
            Expr::Literal(value, _) => model_name(TABLE_FUNCTION, Some(value))?,
            _ => return plan_err!("{usage}: the model must be a string literal"),
        };
        let model = self.registry.get(name)?;
        let pipeline = Pipeline::resolve(&self.registry, model)?;
        let user = constant_int(TABLE_FUNCTION, "user_id", user)?;
        let k = constant_int(TABLE_FUNCTION, "k", k)?;
        if let Argument::Known(k) = k {
            item_count(TABLE_FUNCTION, k)?;
        }
        Ok(Arc::new(RecommendTable { pipeline, user, k }))
    }
}

/// A plan that is one `recommend(...)` call, at most its columns picked or renamed.
#[derive(Debug)]
pub struct SingleCall {
    call: RecommendTable,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
}

/// The call in `plan`, when `plan` is nothing but one `recommend(...)` call. Such a plan is run
/// directly, without DataFusion's optimizer and physical planner: the call is a handful of rows,
/// and planning it took as long as scoring it. `None` for any other plan.
pub fn single_call(plan: &LogicalPlan) -> Option<SingleCall> {
    let schema = Arc::new(plan.schema().as_arrow().clone());
    let (columns, mut node) = match plan {
        LogicalPlan::Projection(projection) => (Some(&projection.expr), projection.input.as_ref()),
        other => (None, other),
    };
    if let LogicalPlan::SubqueryAlias(alias) = node {
        node = alias.input.as_ref();
    }
    let LogicalPlan::TableScan(scan) = node else {
        return None;
    };
    if !scan.filters.is_empty() || scan.fetch.is_some() || scan.projection.is_some() {
        return None;
    }
    let table = source_as_provider(&scan.source).ok()?;
    let call = table.downcast_ref::<RecommendTable>()?.clone();
    let projection = match columns {
        None => None,
        Some(exprs) => Some(
            exprs
                .iter()
                .map(|e| match e.clone().unalias() {
                    Expr::Column(c) => result_schema().index_of(&c.name).ok(),
                    _ => None,
                })
                .collect::<Option<Vec<usize>>>()?,
        ),
    };
    Some(SingleCall {
        call,
        projection,
        schema,
    })
}

impl SingleCall {
    /// Scores the call, its parameters (`recommend('m', $1, 10)`) taken from `params`; the rows carry
    /// the plan's own schema (its column names). Without an `[exclude]` query there is no plan to
    /// run: the user is scored here, as [`RecommendExec`] would, without building one.
    pub async fn run(
        &self,
        state: &SessionState,
        params: Option<&ParamValues>,
    ) -> Result<RecordBatch> {
        let call = self.call.bind(params)?;
        let (user, k) = call.arguments()?;
        let excluded = call.excluded(state, user).await?;
        // A task context copies the session's function registries: only for a plan to run.
        let excluded = excluded
            .items(&call.pipeline.model, user, || state.task_ctx())
            .await?;
        let batch = one_user(
            &call.pipeline,
            user,
            k,
            &excluded,
            self.projection.as_deref(),
        )?;
        Ok(RecordBatch::try_new(
            self.schema.clone(),
            batch.columns().to_vec(),
        )?)
    }
}

/// One call's result as a table: planned once its arguments are known.
#[derive(Debug, Clone)]
struct RecommendTable {
    pipeline: Pipeline,
    user: Argument,
    k: Argument,
}

impl RecommendTable {
    /// The call with its parameters replaced by their values.
    fn bind(&self, params: Option<&ParamValues>) -> Result<RecommendTable> {
        let k = self.k.value("k", params)?;
        item_count(TABLE_FUNCTION, k)?;
        Ok(RecommendTable {
            pipeline: self.pipeline.clone(),
            user: Argument::Known(self.user.value("user_id", params)?),
            k: Argument::Known(k),
        })
    }

    /// The user and the count of a bound call.
    fn arguments(&self) -> Result<(i64, usize)> {
        let (Argument::Known(user), Argument::Known(k)) = (self.user, self.k) else {
            return plan_err!(
                "recommend('{}', ...): a parameter of the call was not bound",
                self.pipeline.model.name
            );
        };
        Ok((user, item_count(TABLE_FUNCTION, k)?))
    }

    /// Where the items of the model's `[exclude]` query for `user` come from: its index, brought
    /// up to date now, or else the query's plan.
    async fn excluded(&self, state: &dyn Session, user: i64) -> Result<Excluded> {
        let model = &self.pipeline.model;
        let Some(exclude) = &model.spec.exclude else {
            return Ok(Excluded::Nothing);
        };
        let Some(state) = state.as_any().downcast_ref::<SessionState>() else {
            return internal_err!("recommend needs Quiver's session state");
        };
        if let Some(exclusion) = &model.exclusion
            && exclusion.bring_up_to_date(state).await?
        {
            return Ok(Excluded::Index);
        }
        let plan = state
            .create_logical_plan(&exclude.query)
            .await?
            .with_param_values(ParamValues::from(vec![ScalarValue::Int64(Some(user))]))?;
        Ok(Excluded::Plan(state.create_physical_plan(&plan).await?))
    }
}

/// Where a call's excluded items come from.
#[derive(Debug, Clone)]
enum Excluded {
    Nothing,
    /// The model's [`Exclusion`] index (brought up to date when the call was planned).
    Index,
    /// The `[exclude]` query for the user, run per call.
    Plan(Arc<dyn ExecutionPlan>),
}

impl Excluded {
    /// The items not to recommend to `user`; `context` runs the plan of a per-call query.
    async fn items(
        self,
        model: &crate::scoring::Model,
        user: i64,
        context: impl FnOnce() -> Arc<TaskContext>,
    ) -> Result<HashSet<i64>> {
        match self {
            Excluded::Nothing => Ok(HashSet::new()),
            Excluded::Index => Ok(model
                .exclusion
                .as_ref()
                .map(|e| e.items(user))
                .unwrap_or_default()),
            Excluded::Plan(plan) => excluded_items(collect(plan, context()).await?),
        }
    }
}

#[async_trait]
impl TableProvider for RecommendTable {
    fn schema(&self) -> SchemaRef {
        result_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (user, k) = self.arguments()?;
        let exclude = self.excluded(state, user).await?;
        Ok(Arc::new(RecommendExec::new(
            self.pipeline.clone(),
            user,
            k,
            exclude,
            projection.cloned(),
        )?))
    }
}

/// Scores one user's top k, without the items of the model's `[exclude]` index or of its `exclude`
/// child (the query run per call).
#[derive(Debug)]
pub struct RecommendExec {
    pipeline: Pipeline,
    user: i64,
    k: usize,
    exclude: Excluded,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl RecommendExec {
    fn new(
        pipeline: Pipeline,
        user: i64,
        k: usize,
        exclude: Excluded,
        projection: Option<Vec<usize>>,
    ) -> Result<Self> {
        let schema = match &projection {
            Some(p) => Arc::new(result_schema().project(p)?),
            None => result_schema(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self {
            pipeline,
            user,
            k,
            exclude,
            projection,
            properties: Arc::new(properties),
        })
    }
}

impl DisplayAs for RecommendExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let items = self
            .pipeline
            .model
            .retrieval
            .as_ref()
            .map_or(0, |r| r.items());
        write!(
            f,
            "RecommendExec: model={}, version={}, user={}, k={}, items={items}, metric={:?}",
            self.pipeline.model.name,
            self.pipeline.model.spec.version,
            self.user,
            self.k,
            self.pipeline.model.spec.metric
        )?;
        if let (Some(ranker), Some(rerank)) =
            (&self.pipeline.ranker, &self.pipeline.model.spec.rerank)
        {
            write!(
                f,
                ", rerank={} version {} of {} candidates",
                ranker.name, ranker.spec.version, rerank.candidates
            )?;
        }
        if let (Excluded::Index, Some(exclusion)) = (&self.exclude, &self.pipeline.model.exclusion)
        {
            write!(f, ", exclude={}", exclusion.describe())?;
        }
        Ok(())
    }
}

impl ExecutionPlan for RecommendExec {
    fn name(&self) -> &'static str {
        "RecommendExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        match &self.exclude {
            Excluded::Plan(plan) => vec![plan],
            _ => Vec::new(),
        }
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(
            self.pipeline.clone(),
            self.user,
            self.k,
            match children.into_iter().next() {
                Some(plan) => Excluded::Plan(plan),
                None => self.exclude.clone(),
            },
            self.projection.clone(),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("RecommendExec has one partition, asked for {partition}");
        }
        let (pipeline, user, k) = (self.pipeline.clone(), self.user, self.k);
        let (exclude, projection) = (self.exclude.clone(), self.projection.clone());
        let schema = self.properties.eq_properties.schema().clone();
        let batch = async move {
            let excluded = exclude.items(&pipeline.model, user, || context).await?;
            one_user(&pipeline, user, k, &excluded, projection.as_deref())
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(batch),
        )))
    }
}

fn excluded_items(batches: Vec<RecordBatch>) -> Result<HashSet<i64>> {
    let mut items = HashSet::new();
    for batch in batches {
        let Some(column) = batch.columns().first() else {
            return exec_err!("the [exclude] query returns no columns");
        };
        let ids = cast(column, &DataType::Int64)?;
        items.extend(ids.as_primitive::<Int64Type>().iter().flatten());
    }
    Ok(items)
}
