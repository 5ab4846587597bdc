//! The `quiver` binary: parse the command line, start tracing, hand over to the library.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = quiver::config::Cli::parse();
    let default_filter = match cli.command {
        quiver::config::Command::Demo(_) => quiver::telemetry::DEMO_FILTER,
        _ => quiver::telemetry::DEFAULT_FILTER,
    };
    let telemetry = match quiver::telemetry::init(&cli.log, default_filter) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match quiver::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The message names the problem; a backtrace of a user error is noise.
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    };
    // The last spans are exported before the process ends (a blocking flush, off the async threads).
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}
