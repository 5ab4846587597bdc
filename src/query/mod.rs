//! SQL statements: Quiver's extensions rewritten, then planned by DataFusion over the warehouse catalog.
//!
//! `plan_sql` turns text into a [`Planned`] (no side effects), `execute` runs it as a stream.

pub mod asof;
pub mod ddl;
pub mod dml;
pub mod planner;
pub mod prepared;
pub mod rewrite;
pub mod statement;

pub use statement::{
    Command, Planned, direct_answer, execute, plan_sql, run_sql, schema_and_table,
};
