//! The `quiver` binary: parse the command line, start tracing, hand over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = quiver::config::Cli::parse();
    quiver::telemetry::init(&cli.log);
    quiver::run(cli).await?;
    Ok(())
}
