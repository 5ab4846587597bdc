//! ASOF JOIN from SQL to a logical plan node.
//!
//! sqlparser parses Snowflake's `l ASOF JOIN r MATCH_CONDITION (l.ts >= r.ts) ON l.k = r.k`, but
//! DataFusion's planner rejects the join operator. [`nest_asof_joins`] wraps each ASOF join, with
//! everything joined before it, into a parenthesized join (a single FROM item), which DataFusion hands
//! to registered relation planners; [`AsofRelationPlanner`] plans both sides with DataFusion and
//! joins them with an [`AsofJoin`] node.

use std::cmp::Ordering;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::common::{Column, DFSchemaRef, Result, plan_datafusion_err, plan_err};
use datafusion::logical_expr::expr::Cast;
use datafusion::logical_expr::planner::{
    PlannedRelation, RelationPlanner, RelationPlannerContext, RelationPlanning,
};
use datafusion::logical_expr::type_coercion::binary::comparison_coercion;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    BinaryExpr, Expr, ExprSchemable, JoinType, LogicalPlan, Operator, UserDefinedLogicalNodeCore,
    build_join_schema,
};
use datafusion::sql::sqlparser::ast::{
    Join, JoinConstraint, JoinOperator, Query, SetExpr, Statement, TableFactor, TableWithJoins,
    VisitMut, VisitorMut,
};

/// Which right row an ASOF join picks for a left row with time `t`, from `l.t <op> r.t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Hash)]
pub enum AsofMatch {
    /// `>=`: the latest right row at or before `t`.
    AtOrBefore,
    /// `>`: the latest right row strictly before `t`.
    Before,
    /// `<=`: the earliest right row at or after `t`.
    AtOrAfter,
    /// `<`: the earliest right row strictly after `t`.
    After,
}

impl AsofMatch {
    fn from_operator(op: Operator) -> Option<Self> {
        Some(match op {
            Operator::GtEq => Self::AtOrBefore,
            Operator::Gt => Self::Before,
            Operator::LtEq => Self::AtOrAfter,
            Operator::Lt => Self::After,
            _ => return None,
        })
    }

    pub fn operator(self) -> &'static str {
        match self {
            Self::AtOrBefore => ">=",
            Self::Before => ">",
            Self::AtOrAfter => "<=",
            Self::After => "<",
        }
    }
}

/// `left ASOF JOIN right`: every left row once, with the matching right row or NULLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AsofJoin {
    pub left: Arc<LogicalPlan>,
    pub right: Arc<LogicalPlan>,
    /// Equality keys `(left expression, right expression)`, of equal types.
    pub on: Vec<(Expr, Expr)>,
    /// `left_time <match> right_time`, of equal types.
    pub left_time: Expr,
    pub right_time: Expr,
    pub matching: AsofMatch,
    pub schema: DFSchemaRef,
}

// The schema is derived from the inputs, so it takes no part in the order.
impl PartialOrd for AsofJoin {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        fn key(
            j: &AsofJoin,
        ) -> (
            &LogicalPlan,
            &LogicalPlan,
            &[(Expr, Expr)],
            &Expr,
            &Expr,
            AsofMatch,
        ) {
            (
                &j.left,
                &j.right,
                &j.on,
                &j.left_time,
                &j.right_time,
                j.matching,
            )
        }
        key(self).partial_cmp(&key(other))
    }
}

impl AsofJoin {
    pub fn try_new(
        left: LogicalPlan,
        right: LogicalPlan,
        on: Vec<(Expr, Expr)>,
        (left_time, right_time): (Expr, Expr),
        matching: AsofMatch,
    ) -> Result<Self> {
        let schema = build_join_schema(left.schema(), right.schema(), &JoinType::Left)?;
        Ok(Self {
            left: Arc::new(left),
            right: Arc::new(right),
            on,
            left_time,
            right_time,
            matching,
            schema: Arc::new(schema),
        })
    }
}

impl UserDefinedLogicalNodeCore for AsofJoin {
    fn name(&self) -> &str {
        "AsofJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.left, &self.right]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    /// Left keys, right keys, then the two times: the order `with_exprs_and_inputs` reads back.
    fn expressions(&self) -> Vec<Expr> {
        let left = self.on.iter().map(|(l, _)| l.clone());
        let right = self.on.iter().map(|(_, r)| r.clone());
        left.chain(right)
            .chain([self.left_time.clone(), self.right_time.clone()])
            .collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let on: Vec<String> = self.on.iter().map(|(l, r)| format!("{l} = {r}")).collect();
        write!(
            f,
            "AsofJoin: match=({} {} {}), on=[{}]",
            self.left_time,
            self.matching.operator(),
            self.right_time,
            on.join(", ")
        )
    }

    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let [left, right]: [LogicalPlan; 2] = inputs
            .try_into()
            .map_err(|_| plan_datafusion_err!("AsofJoin takes two inputs"))?;
        let keys = self.on.len();
        if exprs.len() != 2 * keys + 2 {
            return plan_err!("AsofJoin expects {} expressions", 2 * keys + 2);
        }
        let on = exprs[..keys]
            .iter()
            .cloned()
            .zip(exprs[keys..2 * keys].iter().cloned())
            .collect();
        let times = (exprs[2 * keys].clone(), exprs[2 * keys + 1].clone());
        Self::try_new(left, right, on, times, self.matching)
    }
}

/// Plans the parenthesized joins [`nest_asof_joins`] made.
#[derive(Debug)]
pub struct AsofRelationPlanner;

impl RelationPlanner for AsofRelationPlanner {
    fn plan_relation(
        &self,
        relation: TableFactor,
        context: &mut dyn RelationPlannerContext,
    ) -> Result<RelationPlanning> {
        let TableFactor::NestedJoin {
            table_with_joins,
            alias,
        } = relation
        else {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        };
        let ends_with_asof = table_with_joins
            .joins
            .last()
            .is_some_and(|j| matches!(j.join_operator, JoinOperator::AsOf { .. }));
        if !ends_with_asof {
            let relation = TableFactor::NestedJoin {
                table_with_joins,
                alias,
            };
            return Ok(RelationPlanning::Original(Box::new(relation)));
        }
        let TableWithJoins {
            relation: first,
            mut joins,
        } = *table_with_joins;
        let Some(Join {
            relation: right,
            join_operator:
                JoinOperator::AsOf {
                    match_condition,
                    constraint,
                },
            ..
        }) = joins.pop()
        else {
            return plan_err!("ASOF JOIN: expected an ASOF join");
        };
        let left = if joins.is_empty() {
            context.plan(first)?
        } else {
            context.plan(TableFactor::NestedJoin {
                table_with_joins: Box::new(TableWithJoins {
                    relation: first,
                    joins,
                }),
                alias: None,
            })?
        };
        let right = context.plan(right)?;
        let both = left.schema().join(right.schema())?;
        let condition = context.sql_to_expr(match_condition, &both)?;
        let (times, matching) = match_condition_sides(&condition, &left, &right)?;
        let on = match constraint {
            JoinConstraint::On(expr) => {
                let expr = context.sql_to_expr(expr, &both)?;
                equality_keys(&expr, &left, &right)?
            }
            JoinConstraint::None => Vec::new(),
            JoinConstraint::Using(_) | JoinConstraint::Natural => {
                return plan_err!(
                    "ASOF JOIN supports ON <equalities> (or no ON clause), not USING or NATURAL"
                );
            }
        };
        let on = on
            .into_iter()
            .map(|(l, r)| coerce_pair(l, r, &left, &right, "ON"))
            .collect::<Result<_>>()?;
        let times = coerce_pair(times.0, times.1, &left, &right, "MATCH_CONDITION")?;
        let join = AsofJoin::try_new(left, right, on, times, matching)?;
        let plan = LogicalPlan::Extension(datafusion::logical_expr::Extension {
            node: Arc::new(join),
        });
        Ok(RelationPlanning::Planned(Box::new(PlannedRelation::new(
            plan, alias,
        ))))
    }
}

/// Which side an expression reads: `Some(true)` left only, `Some(false)` right only.
fn side(expr: &Expr, left: &LogicalPlan, right: &LogicalPlan) -> Option<bool> {
    let columns: Vec<&Column> = expr.column_refs().into_iter().collect();
    if columns.is_empty() {
        return None;
    }
    if columns.iter().all(|c| left.schema().has_column(c)) {
        Some(true)
    } else if columns.iter().all(|c| right.schema().has_column(c)) {
        Some(false)
    } else {
        None
    }
}

/// `(left time, right time)` and the match kind, from `a <op> b` with one side from each input.
fn match_condition_sides(
    condition: &Expr,
    left: &LogicalPlan,
    right: &LogicalPlan,
) -> Result<((Expr, Expr), AsofMatch)> {
    let problem = || {
        plan_datafusion_err!(
            "ASOF JOIN MATCH_CONDITION must compare a left column with a right column using \
             >=, >, <= or <, got {condition}"
        )
    };
    let Expr::BinaryExpr(BinaryExpr {
        left: a,
        op,
        right: b,
    }) = condition
    else {
        return Err(problem());
    };
    let matching = AsofMatch::from_operator(*op).ok_or_else(problem)?;
    match (side(a, left, right), side(b, left, right)) {
        (Some(true), Some(false)) => Ok((((**a).clone(), (**b).clone()), matching)),
        (Some(false), Some(true)) => {
            // `r.ts <= l.ts` is `l.ts >= r.ts`.
            let swapped = op
                .swap()
                .and_then(AsofMatch::from_operator)
                .ok_or_else(problem)?;
            Ok((((**b).clone(), (**a).clone()), swapped))
        }
        _ => Err(problem()),
    }
}

/// The `(left, right)` pairs of an ON clause made of `=` between the two sides, joined by AND.
fn equality_keys(
    expr: &Expr,
    left: &LogicalPlan,
    right: &LogicalPlan,
) -> Result<Vec<(Expr, Expr)>> {
    split_conjunction(expr)
        .into_iter()
        .map(|part| match part {
            Expr::BinaryExpr(BinaryExpr {
                left: a,
                op: Operator::Eq,
                right: b,
            }) => match (side(a, left, right), side(b, left, right)) {
                (Some(true), Some(false)) => Ok(((**a).clone(), (**b).clone())),
                (Some(false), Some(true)) => Ok(((**b).clone(), (**a).clone())),
                _ => plan_err!(
                    "ASOF JOIN ON must compare a left expression with a right one, got {part}"
                ),
            },
            other => plan_err!(
                "ASOF JOIN ON supports only equalities joined by AND (put other conditions in \
                 WHERE), got {other}"
            ),
        })
        .collect()
}

/// Casts both sides of a comparison to their common type, so both inputs sort and compare alike.
fn coerce_pair(
    l: Expr,
    r: Expr,
    left: &LogicalPlan,
    right: &LogicalPlan,
    clause: &str,
) -> Result<(Expr, Expr)> {
    let lt = l.get_type(left.schema())?;
    let rt = r.get_type(right.schema())?;
    if lt == rt {
        return Ok((l, r));
    }
    let Some(common) = comparison_coercion(&lt, &rt) else {
        return plan_err!("ASOF JOIN {clause}: cannot compare {l} ({lt}) with {r} ({rt})");
    };
    let cast = |e: Expr, t: &datafusion::arrow::datatypes::DataType| {
        if *t == common {
            e
        } else {
            Expr::Cast(Cast::new(Box::new(e), common.clone()))
        }
    };
    Ok((cast(l, &lt), cast(r, &rt)))
}

/// Wraps every `... ASOF JOIN r ...` in the statement so that the ASOF join and everything joined
/// before it become one parenthesized FROM item, which [`AsofRelationPlanner`] receives.
pub fn nest_asof_joins(statement: &mut Statement) {
    struct Nest;
    impl VisitorMut for Nest {
        type Break = ();

        fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
            nest_in_set_expr(query.body.as_mut());
            ControlFlow::Continue(())
        }

        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
            if let TableFactor::NestedJoin {
                table_with_joins, ..
            } = factor
            {
                nest(table_with_joins, false);
            }
            ControlFlow::Continue(())
        }
    }
    let _ = statement.visit(&mut Nest);
}

fn nest_in_set_expr(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) => select.from.iter_mut().for_each(|from| nest(from, true)),
        SetExpr::SetOperation { left, right, .. } => {
            nest_in_set_expr(left);
            nest_in_set_expr(right);
        }
        _ => {}
    }
}

/// In a parenthesized join, an ASOF join as the last join is already what the planner takes; at
/// the top of a FROM clause every ASOF join is wrapped.
fn nest(from: &mut TableWithJoins, top_level: bool) {
    let wrap = |joins: &[Join]| {
        joins.iter().enumerate().position(|(i, j)| {
            matches!(j.join_operator, JoinOperator::AsOf { .. })
                && (top_level || i + 1 < joins.len())
        })
    };
    while let Some(position) = wrap(&from.joins) {
        let joins: Vec<Join> = from.joins.drain(..=position).collect();
        from.relation = TableFactor::NestedJoin {
            table_with_joins: Box::new(TableWithJoins {
                relation: from.relation.clone(),
                joins,
            }),
            alias: None,
        };
    }
}
