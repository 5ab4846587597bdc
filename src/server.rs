//! The gRPC server: serves a pre-bound listener until a shutdown signal, then drains in-flight calls.
//! Every call passes the guard layer (authentication, panics to Internal); TLS when configured.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::auth::Auth;
use crate::config::ServeConfig;
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::flight::guard::GuardLayer;
use crate::flight::limits::Limits;
use crate::flight::{QuiverFlight, QuiverFlightSql};
use crate::http::collect::Collector;
use crate::http::{Http, HttpListener, Readiness};
use crate::ingest::audit::AuditTable;
use crate::session::QuiverSession;

/// How the server admits and bounds calls.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub auth: Arc<Auth>,
    pub tls: Option<TlsFiles>,
    pub limits: Limits,
    pub max_message_bytes: usize,
    /// Refresh every materialized feature view this often (`--refresh-interval`); `None`: only
    /// on `REFRESH`.
    pub refresh_interval: Option<Duration>,
    /// What `/ready` answers: set to serving once Flight serves, to draining at shutdown.
    pub readiness: Arc<Readiness>,
    /// `--audit-table`: where every statement is appended.
    pub audit_table: Option<AuditTable>,
}

impl ServerOptions {
    /// No auth, no TLS, default limits: a local development server (and the tests' default).
    pub fn local() -> Result<Self> {
        Ok(Self {
            auth: Arc::new(Auth::open()?),
            tls: None,
            limits: Limits::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            refresh_interval: None,
            readiness: Arc::default(),
            audit_table: None,
        })
    }
}

/// A PEM certificate chain and key, read at start so a bad path fails before serving.
#[derive(Clone)]
pub struct TlsFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsFiles { .. }")
    }
}

impl TlsFiles {
    pub fn read(cert: &std::path::Path, key: &std::path::Path) -> Result<Self> {
        let read = |setting: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| Error::Config {
                setting,
                message: format!("cannot read {}: {e}", path.display()),
            })
        };
        Ok(Self::from_pem(
            read("--tls-cert", cert)?,
            read("--tls-key", key)?,
        ))
    }

    pub fn from_pem(cert: Vec<u8>, key: Vec<u8>) -> Self {
        Self { cert, key }
    }
}

/// Default largest gRPC message accepted or sent (one Arrow batch in an upload or a result).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
/// How long in-flight calls may run on after a shutdown signal before they are cancelled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// `quiver serve`: opens the warehouse, binds, prints the address, serves until SIGINT/SIGTERM.
/// The HTTP listener, if any, answers from the start: live, and not ready until the session loads.
pub async fn serve_from_config(config: ServeConfig) -> Result<()> {
    let http = start_http(&config).await?;
    let session =
        QuiverSession::open_with(config.warehouse.clone(), config.session.clone()).await?;
    serve_session(config, http, session, |_| String::new()).await
}

/// Starts the HTTP listener `config` asks for (`--http-listen`), printing its address.
pub async fn start_http(config: &ServeConfig) -> Result<Option<Http>> {
    let Some(address) = config.http_listen else {
        return Ok(None);
    };
    let listener = HttpListener::bind(address, config.server.readiness.clone()).await?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "HTTP: /health, /ready, /metrics, POST /v1/ingest/{{table}}");
    let mut stdout = std::io::stdout();
    writeln!(stdout, "quiver http on http://{address}")?;
    stdout.flush()?;
    Ok(Some(listener.spawn()))
}

/// Serves an opened session as `config` says; once listening, prints the address and then what
/// `banner` makes of the server's URI. `http`: the HTTP listener, if started already (else it is
/// started here when configured).
pub async fn serve_session(
    config: ServeConfig,
    http: Option<Http>,
    session: QuiverSession,
    banner: impl FnOnce(&str) -> String,
) -> Result<()> {
    let http = match http {
        Some(http) => Some(http),
        None => start_http(&config).await?,
    };
    if let Some(http) = &http {
        http.set_session(&session);
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Config {
            setting: "--listen",
            message: format!("cannot listen on {}: {e}", config.listen),
        })?;
    let address = listener.local_addr()?;
    let shutdown = shutdown_signal()?;
    let scheme = if config.server.tls.is_some() {
        "grpc+tls"
    } else {
        "grpc"
    };
    tracing::info!(warehouse = %config.warehouse, %address, auth = config.server.auth.is_enabled(), "serving");
    let uri = format!("{scheme}://{address}");
    // Bound, the session loaded and the HTTP collector set: ready from the moment a client can
    // learn the address (calls queue on the bound listener until serving starts).
    let announce = format!("quiver listening on {uri}\n{}", banner(&uri));
    let served = serve_with(
        listener,
        session,
        config.server,
        shutdown,
        http.as_ref(),
        Some(announce),
    )
    .await;
    crate::storage::upkeep::finish().await;
    drop(http);
    served
}

/// Serves Flight SQL on `listener` until `shutdown` resolves; in-flight calls get [`DRAIN_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    session: QuiverSession,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    serve_with(listener, session, options, shutdown, None, None).await
}

/// [`serve`], with the HTTP listener's collector (`POST /v1/ingest/{table}`) writing through the
/// same upload runtime and credentials as Flight; `announce` is printed to stdout once everything
/// a client can call is in place (readiness turns to serving at the same moment).
pub async fn serve_with(
    listener: TcpListener,
    session: QuiverSession,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    http: Option<&Http>,
    announce: Option<String>,
) -> Result<()> {
    let executor = Arc::new(Executor::new("quiver-exec", 0)?);
    // A quarter of the cores (at least one) for uploads: see `executor`.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let uploads = Arc::new(Executor::new("quiver-upload", (cores / 4).max(1))?);
    if let Some(http) = http {
        http.set_collector(Collector {
            session: session.clone(),
            auth: options.auth.clone(),
            executor: uploads.clone(),
            slots: Arc::new(tokio::sync::Semaphore::new(
                options.limits.max_concurrent_queries,
            )),
            max_body: usize::try_from(options.limits.max_upload_bytes).unwrap_or(usize::MAX),
        });
    }
    // Background work runs on the query runtime, never on the gRPC IO threads: scheduled
    // refreshes, and reloads of changed model directories.
    if let Some(interval) = options.refresh_interval {
        executor.spawn(crate::features::refresh::refresh_every(
            session.ctx().clone(),
            session.catalog().clone(),
            session.features().clone(),
            interval,
        ));
    }
    let audit = options
        .audit_table
        .clone()
        .map(|target| (session.clone(), target));
    let auditing = audit.clone().map(|(session, target)| {
        executor.spawn(crate::ingest::audit::flush_every(session, target))
    });
    // Sources: consumers of the warehouse's source definitions, writing on the upload runtime.
    let (stop_sources, sources_stopped) = tokio::sync::watch::channel(false);
    let sources = executor.spawn(crate::sources::run(
        session.clone(),
        uploads.handle(),
        crate::sources::RECONCILE_INTERVAL,
        sources_stopped,
    ));
    executor.spawn(crate::scoring::watch(
        session.ctx().clone(),
        session.models().clone(),
    ));
    let guard = GuardLayer::new(options.auth.clone());
    let readiness = options.readiness.clone();
    let service = QuiverFlight::new(QuiverFlightSql::new(
        session,
        executor.clone(),
        uploads,
        options.auth,
        options.limits,
    )?);
    let server = FlightServiceServer::new(service)
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(options.max_message_bytes);
    // The standard gRPC health service (`grpc.health.v1.Health`) on the same port: SERVING once
    // serving starts (the session, its views and models are loaded by then), NOT_SERVING from the
    // moment shutdown begins, so a load balancer stops routing before the calls drain.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<FlightServiceServer<QuiverFlight>>()
        .await;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = options.tls {
        install_crypto_provider();
        let identity = tonic::transport::Identity::from_pem(tls.cert, tls.key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| Error::Config {
                setting: "--tls-cert",
                message: format!("the certificate and key are not usable: {e}"),
            })?;
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut drain_rx = stop_rx.clone();
    let signalled = async move {
        shutdown.await;
        readiness.draining();
        health
            .set_not_serving::<FlightServiceServer<QuiverFlight>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        tracing::info!("shutting down: no new connections, draining in-flight calls");
        let _ = stop_tx.send(true);
    };
    options.readiness.serving();
    if let Some(announce) = announce {
        let mut stdout = std::io::stdout();
        write!(stdout, "{announce}")?;
        stdout.flush()?;
    }
    let serving = builder
        // Uploads of Arrow batches are large: HTTP/2's default 64 KiB windows would stall each
        // stream on a round trip per window.
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .layer(guard)
        .add_service(health_service)
        .add_service(server)
        .serve_with_incoming_shutdown(incoming(listener), signalled);
    let drain_deadline = async move {
        let _ = drain_rx.wait_for(|stopped| *stopped).await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    let served = tokio::select! {
        result = serving => result.map_err(|e| Error::Internal(format!("gRPC server failed: {e}"))),
        () = drain_deadline => {
            tracing::warn!("in-flight calls still running after {DRAIN_TIMEOUT:?}; cancelling them");
            Ok(())
        }
    };
    // Consumers finish the batch they are writing and leave their groups.
    let _ = stop_sources.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, sources).await.is_err() {
        tracing::warn!("sources still stopping after {DRAIN_TIMEOUT:?}");
    }
    // The statements of the last interval reach the audit table before the process ends.
    if let (Some(task), Some((session, target))) = (auditing, audit) {
        task.abort();
        let last =
            executor.spawn(async move { crate::ingest::audit::flush(&session, &target).await });
        if let Ok(Err(e)) = last.await {
            tracing::warn!(error = %e, "could not append the last statements to the audit table");
        }
    }
    served
}

/// rustls has both of its providers compiled in (ring and aws-lc-rs, through different dependencies),
/// so it picks none by itself; Quiver uses aws-lc-rs. Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The accepted connections, with Nagle's algorithm off: tonic's own `tcp_nodelay` applies only to
/// listeners it binds itself, and with Nagle a small response (a key lookup) waits for the client's
/// delayed ACK, ~40 ms on Linux.
fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled, so a signal sent right after the address is printed is not lost.
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
