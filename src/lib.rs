//! Quiver: a SQL-first feature and recommendation server.
//!
//! Data flows ingest -> storage -> session -> scoring -> flight:
//! uploads and SQL writes become Delta commits ([`ingest`], [`storage`]), the warehouse is a DataFusion
//! catalog with feature views ([`session`], [`features`]), ONNX models score from SQL ([`scoring`]),
//! statements are planned and run as streams ([`query`]), and everything is served over Arrow Flight
//! SQL and plain Arrow Flight ([`flight`], [`server`]); log shippers post JSON over HTTP ([`http`]) and
//! Kafka topics are consumed into tables ([`sources`]).

pub mod auth;
pub mod config;
pub mod demo;
pub mod error;
pub mod executor;
pub mod features;
pub mod flight;
pub mod history;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod parameters;
pub mod planning;
pub mod query;
pub mod scoring;
pub mod server;
pub mod session;
pub mod sources;
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
        Command::Demo(args) => demo::run(args).await,
        Command::Sql(args) => print_sql(args).await,
        Command::Auth(command) => auth_command(command),
    }
}

/// `quiver auth ...`: entries for an auth file.
fn auth_command(command: config::AuthCommand) -> Result<()> {
    match command {
        config::AuthCommand::HashPassword => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                return Err(error::Error::InvalidInput(
                    "no password on stdin (e.g. `echo -n secret | quiver auth hash-password`)"
                        .into(),
                ));
            }
            println!("{}", auth::hash_password(password)?);
        }
        config::AuthCommand::NewToken { name, role } => {
            if role != "read" && role != "read_write" {
                return Err(error::Error::InvalidInput(format!(
                    "--role must be read or read_write, got '{role}'"
                )));
            }
            let (token, digest) = auth::new_token()?;
            eprintln!("token (shown once, give it to the client): {token}");
            println!("[[tokens]]\nname = {name:?}\nsha256 = \"{digest}\"\nrole = \"{role}\"");
        }
    }
    Ok(())
}

/// `quiver sql`: one statement against the warehouse, printed as a table.
async fn print_sql(args: SqlArgs) -> Result<()> {
    let options = args.query.options()?;
    let session = QuiverSession::open_with(args.warehouse.url()?, options).await?;
    let stream = query::run_sql(&session, &args.statement).await?;
    let batches: Vec<_> = stream.try_collect().await?;
    storage::upkeep::finish().await;
    println!("{}", pretty_format_batches(&batches)?);
    Ok(())
}
