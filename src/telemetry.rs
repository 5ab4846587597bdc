//! Logging and tracing: one tracing subscriber. Logs go to stderr (stdout stays for results and the
//! "listening" line), as text for people or JSON lines (`--log-format json`) for log collectors;
//! with `--otlp-endpoint`, spans (an RPC's `rpc`, a statement's `plan`, `execute` and `commit`) are
//! also exported as OpenTelemetry traces over OTLP/gRPC, through the same tonic as Flight.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogArgs, LogFormat};
use crate::error::{Error, Result};

/// The filter when `--log` is not given.
pub const DEFAULT_FILTER: &str = "warn,quiver=info,buoyant_kernel=off";
/// `quiver demo` prints its own progress: its logs default to warnings, so the console reads as
/// progress, then the snippets.
pub const DEMO_FILTER: &str = "warn,buoyant_kernel=off";

/// What must be flushed before the process exits: buffered trace spans.
#[must_use]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (blocking: call it off the async threads).
    pub fn shutdown(self) {
        if let Some(traces) = self.traces
            && let Err(e) = traces.shutdown()
        {
            eprintln!("could not export the last trace spans: {e}");
        }
    }
}

/// Installs the subscriber. Must run inside the tokio runtime (the OTLP exporter's channel).
pub fn init(args: &LogArgs, default_filter: &str) -> Result<Telemetry> {
    let filter = args
        .filter
        .as_deref()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match args.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        // Each line carries the fields of the spans it is in (an RPC's `request_id`, ...).
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let traces = args.otlp_endpoint.as_deref().map(otlp).transpose()?;
    let exported = traces.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("quiver"))
            .boxed()
    });
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(exported)
        .with(filter)
        .try_init();
    Ok(Telemetry { traces })
}

/// Spans batched and sent to the OTLP/gRPC collector at `endpoint` (e.g. `http://localhost:4317`).
fn otlp(endpoint: &str) -> Result<SdkTracerProvider> {
    let config = |e: &dyn std::fmt::Display| Error::Config {
        setting: "--otlp-endpoint",
        message: format!("'{endpoint}': {e}"),
    };
    let url = url::Url::parse(endpoint).map_err(|e| config(&e))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(config(&"the endpoint is an http:// or https:// URL"));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| config(&e))?;
    let resource = Resource::builder_empty()
        .with_service_name("quiver")
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}
