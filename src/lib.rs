//! Quiver: a SQL-first feature and recommendation server.
//!
//! Data flows ingest -> storage -> session -> scoring -> flight:
//! uploads and SQL writes become Delta commits ([`ingest`], [`storage`]), the warehouse is a DataFusion
//! catalog with feature views ([`session`], [`features`]), ONNX models score from SQL ([`scoring`]),
//! statements are planned and run as streams ([`query`]), and everything is served over Arrow Flight
//! SQL and plain Arrow Flight ([`flight`], [`server`]).

pub mod config;
pub mod error;
pub mod executor;
pub mod features;
pub mod flight;
pub mod ingest;
pub mod query;
pub mod scoring;
pub mod server;
pub mod session;
pub mod storage;
pub mod telemetry;

use datafusion::arrow::util::pretty::pretty_format_batches;
use futures::TryStreamExt;

use crate::config::{Cli, Command, SqlArgs};
use crate::error::Result;
use crate::session::QuiverSession;

/// Runs the command the user asked for.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => server::serve_from_config(args.validate()?).await,
        Command::Sql(args) => print_sql(args).await,
    }
}

/// `quiver sql`: one statement against the warehouse, printed as a table.
async fn print_sql(args: SqlArgs) -> Result<()> {
    let options = args.query.options()?;
    let session = QuiverSession::open_with(args.warehouse.url()?, options).await?;
    let stream = query::run_sql(&session, &args.statement).await?;
    let batches: Vec<_> = stream.try_collect().await?;
    println!("{}", pretty_format_batches(&batches)?);
    Ok(())
}
