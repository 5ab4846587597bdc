//! A two-tower model's `[exclude]` query answered from memory.
//!
//! `[exclude]` names, for the user `$1`, the items not to recommend: typically the ones the user
//! already interacted with. Run per call, the query costs a parse, a plan and a read of the table's
//! files, several milliseconds. When it has the shape
//!
//! ```sql
//! SELECT <item> FROM <table> WHERE <key> = $1 [AND <conditions without $1>]
//! ```
//!
//! over one warehouse Delta table (no join, aggregate or subquery), its answer for every user is kept
//! in an [`Index`] of key → items, built by running the query once without `<key> = $1`. It stays as
//! fresh as the query: each call first checks that the table's commit at the index's version is
//! still the one read and that no later commit exists (two `head`s of the table's log). New commits
//! that only append are applied by reading just the files they added; anything else (a delete, an
//! overwrite, a schema change, the table written again) rebuilds the index.
//!
//! Any other query, a time travel read, a key that is not an integer, or more than
//! [`MAX_INDEXED_ROWS`] rows to index: the query runs per call, as a child of the recommend plan.
//! EXPLAIN shows which (`exclude=index of ...` or the child plan).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{Result, exec_datafusion_err};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    BinaryExpr, Distinct, Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder, Operator,
};
use datafusion::physical_plan::execute_stream;
use futures::TryStreamExt;

use crate::storage::DeltaTableProvider;
use crate::storage::changes::{Changes, LogMark, LogState, delta_read, limited_to, replace_read};

/// Rows (key, item pairs, before removing repeats) past which a table is not indexed: about 16
/// bytes each in memory, plus a map entry per key.
pub const MAX_INDEXED_ROWS: usize = 20_000_000;

/// The `[exclude]` query of one model version, and its index once built.
#[derive(Debug)]
pub struct Exclusion {
    query: String,
    state: RwLock<State>,
    /// One update at a time; calls arriving meanwhile wait for it and use its result.
    updating: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
enum State {
    /// Not tried yet, or the last try failed (tried again by the next call).
    Unknown,
    Indexed(Box<Index>),
    /// Run per call, for this reason.
    PerCall(String),
}

/// Each key's items, as of one version of the table.
#[derive(Debug)]
struct Index {
    /// `schema.table`, and the key expression: for EXPLAIN.
    table: String,
    key: String,
    at: LogMark,
    items: HashMap<i64, Vec<i64>>,
    rows: usize,
    /// Times rows of later commits were added since the index was built.
    appended: usize,
}

impl Exclusion {
    pub fn new(query: String) -> Self {
        Self {
            query,
            state: RwLock::new(State::Unknown),
            updating: tokio::sync::Mutex::new(()),
        }
    }

    /// Brings the index up to date with the table's latest commit, building it the first time.
    /// `false`: the query is not indexed and runs per call.
    pub async fn bring_up_to_date(&self, state: &SessionState) -> Result<bool> {
        match self.current() {
            Some(Current::Indexed(at)) if at.state().await == LogState::Unchanged => {
                return Ok(true);
            }
            Some(Current::PerCall) => return Ok(false),
            _ => {}
        }
        let _turn = self.updating.lock().await;
        // A call that held the turn before this one may have done the work.
        let previous = match self.current() {
            Some(Current::Indexed(at)) if at.state().await == LogState::Unchanged => {
                return Ok(true);
            }
            Some(Current::PerCall) => return Ok(false),
            Some(Current::Indexed(at)) => Some(at),
            None => None,
        };
        let update = self.update(state, previous).await;
        let mut current = self.write();
        match update {
            Ok(Update::Replace(index)) => {
                tracing::info!(
                    table = %index.table, version = index.at.version(), keys = index.items.len(),
                    rows = index.rows, "[exclude] index built"
                );
                *current = State::Indexed(Box::new(index));
                Ok(true)
            }
            Ok(Update::Append(at, rows)) => {
                if let State::Indexed(index) = &mut *current {
                    index.append(at, rows);
                }
                Ok(true)
            }
            Ok(Update::PerCall(reason)) => {
                tracing::info!(query = %self.query, %reason, "[exclude] runs per call");
                *current = State::PerCall(reason);
                Ok(false)
            }
            Ok(Update::NotNow(reason)) => {
                tracing::debug!(query = %self.query, %reason, "[exclude] index not updated");
                *current = State::Unknown;
                Ok(false)
            }
            Err(error) => {
                *current = State::Unknown;
                Err(error)
            }
        }
    }

    /// The items of `user` in the index (empty when it has none, or there is no index).
    pub fn items(&self, user: i64) -> HashSet<i64> {
        match &*self.read() {
            State::Indexed(index) => index
                .items
                .get(&user)
                .map(|items| items.iter().copied().collect())
                .unwrap_or_default(),
            _ => HashSet::new(),
        }
    }

    /// How the query is answered, for EXPLAIN.
    pub fn describe(&self) -> String {
        match &*self.read() {
            State::Indexed(index) => {
                let appended = match index.appended {
                    0 => String::new(),
                    n => format!(", {n} appends since built"),
                };
                format!(
                    "index of {} by {} at version {} ({} keys, {} rows){appended}",
                    index.table,
                    index.key,
                    index.at.version(),
                    index.items.len(),
                    index.rows
                )
            }
            State::PerCall(reason) => format!("per call ({reason})"),
            State::Unknown => "not built".into(),
        }
    }

    fn current(&self) -> Option<Current> {
        match &*self.read() {
            State::Indexed(index) => Some(Current::Indexed(index.at.clone())),
            State::PerCall(_) => Some(Current::PerCall),
            State::Unknown => None,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What brings the index to the table's latest version: the rows of the commits after
    /// `previous` when they only appended, else a new index.
    async fn update(&self, state: &SessionState, previous: Option<LogMark>) -> Result<Update> {
        // Planned afresh each time: the catalog hands out the table's latest snapshot.
        let plan = state.create_logical_plan(&self.query).await?;
        let shape = match Shape::of(&plan) {
            Ok(shape) => shape,
            Err(reason) => return Ok(Update::PerCall(reason)),
        };
        let table = shape.delta.delta_table();
        let Some(at) = LogMark::of(table).await else {
            return Ok(Update::NotNow(format!(
                "the latest commit of {} cannot be read",
                shape.table
            )));
        };
        let changes = match &previous {
            Some(previous) => previous.changes_to(table, &shape.table).await?,
            None => Changes::Other("not built yet".into()),
        };
        match changes {
            // Nothing was committed (a check of the log failed, perhaps for a moment).
            Changes::None => return Ok(Update::Append(at, Vec::new())),
            Changes::Appended(files) => {
                let limited = limited_to(table, Arc::new(state.clone()), files).await?;
                let plan = replace_read(shape.rows_plan()?, &shape.table, 0, &limited)?;
                return match read_rows(state, plan, MAX_INDEXED_ROWS).await? {
                    Some(rows) if self.fits(rows.len()) => Ok(Update::Append(at, rows)),
                    _ => Ok(Update::PerCall(too_many(&shape.table))),
                };
            }
            Changes::Other(reason) => tracing::debug!(%reason, "[exclude] index rebuilt"),
        }
        let Some(rows) = read_rows(state, shape.rows_plan()?, MAX_INDEXED_ROWS).await? else {
            return Ok(Update::PerCall(too_many(&shape.table)));
        };
        Ok(Update::Replace(Index::new(
            shape.table.clone(),
            shape.key.to_string(),
            at,
            rows,
        )))
    }

    /// Whether the index still fits with `more` rows added.
    fn fits(&self, more: usize) -> bool {
        match &*self.read() {
            State::Indexed(index) => index.rows + more <= MAX_INDEXED_ROWS,
            _ => true,
        }
    }
}

fn too_many(table: &str) -> String {
    format!("{table} has more than {MAX_INDEXED_ROWS} rows to index")
}

/// The state of the index without its contents, read under the lock and used after it.
enum Current {
    Indexed(LogMark),
    PerCall,
}

enum Update {
    Replace(Index),
    Append(LogMark, Vec<(i64, i64)>),
    PerCall(String),
    /// Per call this time, tried again at the next.
    NotNow(String),
}

impl Index {
    fn new(table: String, key: String, at: LogMark, rows: Vec<(i64, i64)>) -> Self {
        let mut index = Self {
            table,
            key,
            at,
            items: HashMap::new(),
            rows: 0,
            appended: 0,
        };
        index.add(rows);
        index
    }

    /// Adds the (key, item) rows of the commits up to `at`.
    fn append(&mut self, at: LogMark, rows: Vec<(i64, i64)>) {
        if at.version() != self.at.version() {
            self.appended += 1;
        }
        self.add(rows);
        self.at = at;
    }

    /// Adds (key, item) rows; each key's items stay sorted, without repeats.
    fn add(&mut self, rows: Vec<(i64, i64)>) {
        self.rows += rows.len();
        let mut touched = HashSet::new();
        for (key, item) in rows {
            self.items.entry(key).or_default().push(item);
            touched.insert(key);
        }
        for key in touched {
            if let Some(items) = self.items.get_mut(&key) {
                items.sort_unstable();
                items.dedup();
            }
        }
    }
}

/// The parts of an `[exclude]` query that can be indexed.
struct Shape<'a> {
    /// The rows the query filters: one Delta table, perhaps under an alias.
    input: &'a LogicalPlan,
    delta: &'a DeltaTableProvider,
    table: String,
    key: Expr,
    item: Expr,
    /// The conditions besides `key = $1`.
    rest: Vec<Expr>,
}

impl<'a> Shape<'a> {
    /// The query's shape from its plan (unoptimized, as the SQL planner made it), or why it does
    /// not have one that can be indexed.
    fn of(plan: &'a LogicalPlan) -> std::result::Result<Self, String> {
        let mut node = plan;
        // The result is a set: DISTINCT changes nothing.
        if let LogicalPlan::Distinct(Distinct::All(input)) = node {
            node = input.as_ref();
        }
        let LogicalPlan::Projection(projection) = node else {
            return Err("not a SELECT of one column with WHERE <key> = $1".into());
        };
        let [item] = projection.expr.as_slice() else {
            return Err("it returns more than one column".into());
        };
        let LogicalPlan::Filter(filter) = projection.input.as_ref() else {
            return Err("no WHERE <key> = $1 over one table".into());
        };
        let mut key = None;
        let mut rest = Vec::new();
        for term in split_conjunction(&filter.predicate) {
            match user_key(term) {
                Some(k) if key.is_none() => key = Some(k.clone()),
                _ if has_placeholder(term) => {
                    return Err(format!("$1 is used other than in <key> = $1: {term}"));
                }
                _ => rest.push(term.clone()),
            }
        }
        let Some(key) = key else {
            return Err("no condition <key> = $1".into());
        };
        let item = item.clone().unalias();
        for expr in std::iter::once(&key).chain([&item]).chain(&rest) {
            if has_placeholder(expr) || expr.is_volatile() || has_subquery(expr) {
                return Err(format!("{expr} is not a plain row expression"));
            }
        }
        let key_type = key
            .get_type(filter.input.schema().as_ref())
            .map_err(|e| e.to_string())?;
        if !key_type.is_integer() {
            return Err(format!("the key {key} is {key_type}, not an integer"));
        }
        let mut input = filter.input.as_ref();
        while let LogicalPlan::SubqueryAlias(alias) = input {
            input = alias.input.as_ref();
        }
        let LogicalPlan::TableScan(scan) = input else {
            return Err("it reads more than one table".into());
        };
        let Some(delta) = delta_read(scan) else {
            return Err(format!(
                "{} is not a warehouse Delta table",
                scan.table_name
            ));
        };
        if !delta.is_latest() {
            return Err(format!("it reads a snapshot of {}", delta.name()));
        }
        Ok(Self {
            input: filter.input.as_ref(),
            table: delta.name().to_string(),
            delta,
            key,
            item,
            rest,
        })
    }

    /// `SELECT <key>, <item> FROM <table> WHERE <rest>`: every key's rows.
    fn rows_plan(&self) -> Result<LogicalPlan> {
        let mut plan = LogicalPlanBuilder::from(self.input.clone());
        if let Some(rest) = conjunction(self.rest.clone()) {
            plan = plan.filter(rest)?;
        }
        plan.project([
            self.key.clone().alias("key"),
            self.item.clone().alias("item"),
        ])?
        .build()
    }
}

/// `K` of a condition `K = $1` or `$1 = K`.
fn user_key(term: &Expr) -> Option<&Expr> {
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::Eq,
        right,
    }) = term
    else {
        return None;
    };
    let first =
        |e: &Expr| matches!(e, Expr::Placeholder(p) if crate::parameters::index(&p.id) == Some(0));
    match (first(left), first(right)) {
        (false, true) => Some(left),
        (true, false) => Some(right),
        _ => None,
    }
}

fn has_placeholder(expr: &Expr) -> bool {
    expr.exists(|e| Ok(matches!(e, Expr::Placeholder(_))))
        .unwrap_or(true)
}

fn has_subquery(expr: &Expr) -> bool {
    expr.exists(|e| {
        Ok(matches!(
            e,
            Expr::ScalarSubquery(_)
                | Expr::Exists(_)
                | Expr::InSubquery(_)
                | Expr::OuterReferenceColumn(..)
        ))
    })
    .unwrap_or(true)
}

/// The (key, item) rows of `plan`, both cast to Int64 as the per-call path casts its items; rows
/// with a NULL in either are skipped. `None` past `max` rows.
async fn read_rows(
    state: &SessionState,
    plan: LogicalPlan,
    max: usize,
) -> Result<Option<Vec<(i64, i64)>>> {
    let plan = state.create_physical_plan(&plan).await?;
    let mut stream = execute_stream(plan, state.task_ctx())?;
    let mut rows = Vec::new();
    while let Some(batch) = stream.try_next().await? {
        if rows.len() + batch.num_rows() > max {
            return Ok(None);
        }
        pairs(&batch, &mut rows)?;
    }
    Ok(Some(rows))
}

fn pairs(batch: &RecordBatch, rows: &mut Vec<(i64, i64)>) -> Result<()> {
    let [key, item] = batch.columns() else {
        return Err(exec_datafusion_err!(
            "the [exclude] index read {} columns, expected 2",
            batch.num_columns()
        ));
    };
    let (key, item) = (cast(key, &DataType::Int64)?, cast(item, &DataType::Int64)?);
    let (key, item) = (
        key.as_primitive::<Int64Type>(),
        item.as_primitive::<Int64Type>(),
    );
    rows.extend(
        key.iter()
            .zip(item.iter())
            .filter_map(|(k, i)| Some((k?, i?))),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape_of(sql: &str) -> std::result::Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let ctx = datafusion::prelude::SessionContext::new();
            ctx.sql("CREATE TABLE t (user_id BIGINT, item_id BIGINT, kind VARCHAR, name VARCHAR)")
                .await
                .expect("table");
            let plan = ctx.state().create_logical_plan(sql).await.expect("plan");
            Shape::of(&plan).map(|_| ())
        })
    }

    #[test]
    fn only_one_table_filtered_by_key_equals_the_user_has_a_shape() {
        // A memory table is not a Delta table: every query stops at that check at the latest.
        for (sql, reason) in [
            (
                "SELECT item_id FROM t WHERE user_id = $1",
                "not a warehouse Delta table",
            ),
            (
                "SELECT DISTINCT item_id FROM t WHERE $1 = user_id AND kind = 'click'",
                "not a warehouse Delta table",
            ),
            (
                "SELECT item_id, kind FROM t WHERE user_id = $1",
                "more than one column",
            ),
            ("SELECT item_id FROM t", "no WHERE"),
            (
                "SELECT item_id FROM t WHERE kind = 'click'",
                "no condition <key> = $1",
            ),
            (
                "SELECT item_id FROM t WHERE user_id = $1 OR kind = 'x'",
                "$1 is used other than",
            ),
            (
                "SELECT item_id FROM t WHERE user_id = $1 AND item_id > $1",
                "$1 is used other than",
            ),
            ("SELECT item_id FROM t WHERE name = $1", "not an integer"),
            (
                "SELECT item_id FROM t WHERE user_id = $1 AND random() > 0.5",
                "not a plain row expression",
            ),
            (
                "SELECT a.item_id FROM t a JOIN t b ON a.item_id = b.item_id WHERE a.user_id = $1",
                "more than one table",
            ),
            (
                "SELECT item_id FROM t WHERE user_id = $1 GROUP BY item_id",
                "no WHERE",
            ),
        ] {
            let error = shape_of(sql).expect_err(sql);
            assert!(error.contains(reason), "{sql}: {error}");
        }
    }
}
