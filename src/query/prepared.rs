//! Prepared statements answered without planning: an online lookup or one `recommend(...)` call,
//! planned the first time it runs and from then on only bound and answered.
//!
//! A prepared statement's handle carries its SQL text (handles are stateless, see
//! [`crate::flight::handle`]), so an application running `SELECT * FROM features.user_activity
//! WHERE user_id = ?` once per request would have that text parsed and planned on every request:
//! several times the work of the lookup itself. Here the unbound plan is kept by its text: for a
//! statement [`super::direct_answer`] serves, what to bind and answer; for any other, a note that it
//! is planned as usual. An entry holds for one generation of the session's feature views and models
//! ([`QuiverSession::generation`]): after a refresh or a model reload the statement is planned again,
//! so no answer comes from an index or a model that has been swapped out.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::context::SessionState;
use quick_cache::sync::Cache;

use crate::error::Result;
use crate::features::table::Lookup;
use crate::query::conform::conform_batch;
use crate::query::statement::row_parameters;
use crate::query::{Planned, plan_sql};
use crate::scoring::recommend::{SingleCall, single_call};
use crate::session::QuiverSession;

/// Statements kept at most; past it, the least used go first.
pub const CAPACITY: usize = 1024;

/// The session's prepared statements, by SQL text.
#[derive(Debug)]
pub struct PreparedPlans {
    entries: Cache<String, Entry>,
}

impl Default for PreparedPlans {
    fn default() -> Self {
        Self {
            entries: Cache::new(CAPACITY),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    generation: u64,
    /// `None`: the statement is planned as usual.
    direct: Option<Arc<Direct>>,
}

/// How a prepared statement is answered without planning, and the schema it announced.
#[derive(Debug)]
pub struct Direct {
    how: How,
    /// [`Planned::schema`] of the statement: every answer is labelled with it.
    schema: SchemaRef,
}

#[derive(Debug)]
enum How {
    /// An online lookup, answered from the view's index with each request's keys.
    Lookup(Lookup),
    /// One `recommend(...)` call; its parameters are bound when it is scored. With the session's
    /// state as of planning: taking it afresh copies every function registry, per request.
    Recommend(SingleCall, Box<SessionState>),
}

impl Direct {
    /// Whether the answer is only index lookups: light enough for the thread that received the call,
    /// where scoring a model is not.
    pub fn is_lookup(&self) -> bool {
        matches!(self.how, How::Lookup(_))
    }

    /// The answer for one row of parameters. `None`: plan the statement as usual for these (a
    /// list parameter of more keys than a lookup takes).
    pub async fn answer(&self, params: &RecordBatch) -> Option<Result<RecordBatch>> {
        let answer = match &self.how {
            How::Lookup(lookup) => look_up(lookup, params)?,
            How::Recommend(call, state) => match row_parameters(params, 0) {
                Ok(values) => call.run(state, Some(&values)).await.map_err(Into::into),
                Err(e) => Err(e),
            },
        };
        Some(answer.and_then(|batch| conform_batch(batch, &self.schema)))
    }

    /// The answer without waiting on anything: an online lookup's. `None` for a recommend call, and
    /// as from [`Direct::answer`].
    pub fn answer_now(&self, params: &RecordBatch) -> Option<Result<RecordBatch>> {
        match &self.how {
            How::Lookup(lookup) => {
                Some(look_up(lookup, params)?.and_then(|batch| conform_batch(batch, &self.schema)))
            }
            How::Recommend(..) => None,
        }
    }
}

/// Reads a lookup's keys from one row of parameters and the index.
fn look_up(lookup: &Lookup, params: &RecordBatch) -> Option<Result<RecordBatch>> {
    Some(lookup.answer(Some(params))?.map_err(Into::into))
}

impl PreparedPlans {
    /// How `sql` is answered without planning, if it is; planned (unbound) the first time and after
    /// the views or models changed. `None`: plan it as usual (also when it does not plan here: the
    /// usual path reports why).
    pub async fn direct(&self, session: &QuiverSession, sql: &str) -> Option<Arc<Direct>> {
        // Read before planning: a swap during planning leaves the entry out of date, not wrong.
        let generation = session.generation();
        if let Some(entry) = self.entry(sql, generation) {
            return entry.direct;
        }
        let direct = classify(session, sql).await.map(Arc::new);
        self.insert(sql, generation, direct.clone());
        direct
    }

    /// The entry for `sql` if it is known and current, without planning anything.
    pub fn current(&self, session: &QuiverSession, sql: &str) -> Option<Arc<Direct>> {
        self.entry(sql, session.generation())?.direct
    }

    fn entry(&self, sql: &str, generation: u64) -> Option<Entry> {
        self.entries.get(sql).filter(|e| e.generation == generation)
    }

    fn insert(&self, sql: &str, generation: u64, direct: Option<Arc<Direct>>) {
        self.entries
            .insert(sql.to_string(), Entry { generation, direct });
    }
}

/// Plans `sql` without its parameters and tells whether it is answered directly. A statement that
/// does not plan this way is planned as usual (`recommend(?, ...)` needs its model name bound
/// first) until the views or models change. Parameters that do not fit are an error of each request
/// that sends them, as on the usual path.
async fn classify(session: &QuiverSession, sql: &str) -> Option<Direct> {
    let planned = plan_sql(session, sql).await.ok()?;
    let schema = planned.schema();
    let Planned::Query(plan) = planned else {
        return None;
    };
    let how = match single_call(&plan) {
        Some(call) => How::Recommend(call, Box::new(session.state())),
        // Whether a plan is a lookup depends on its shape, not on the keys bound into it.
        None => How::Lookup(Lookup::of(&plan)?),
    };
    Some(Direct { how, schema })
}
