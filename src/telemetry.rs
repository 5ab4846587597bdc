//! Logging: one tracing subscriber, to stderr so stdout stays for results and the "listening" line;
//! text for people, or JSON lines (`--log-format json`) for log collectors.

use tracing_subscriber::EnvFilter;

use crate::config::{LogArgs, LogFormat};

/// The filter when `--log` is not given.
pub const DEFAULT_FILTER: &str = "warn,quiver=info,buoyant_kernel=off";
/// `quiver demo` prints its own progress: its logs default to warnings, so the console reads as
/// progress, then the snippets.
pub const DEMO_FILTER: &str = "warn,buoyant_kernel=off";

pub fn init(args: &LogArgs, default_filter: &str) {
    let filter = args
        .filter
        .as_deref()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = match args.format {
        LogFormat::Text => builder.try_init(),
        // Each line carries the fields of the spans it is in (an RPC's `request_id`, ...).
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
