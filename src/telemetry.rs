//! Logging: one tracing subscriber, to stderr so stdout stays for results and the "listening" line.

use tracing_subscriber::EnvFilter;

use crate::config::LogArgs;

pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.filter)
        .unwrap_or_else(|_| EnvFilter::new("warn,quiver=info,buoyant_kernel=off"));
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
