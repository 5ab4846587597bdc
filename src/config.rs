//! Command line and environment: raw flags (clap) validated into a `Config` before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use url::Url;

use crate::auth::Auth;
use crate::error::{Error, Result};
use crate::flight::limits::Limits;
use crate::server::{ServerOptions, TlsFiles};
use crate::session::SessionOptions;

/// Quiver: a SQL-first feature and recommendation server over Delta Lake, served with Arrow Flight SQL.
#[derive(Debug, Parser)]
#[command(name = "quiver", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the warehouse over Arrow Flight SQL (and plain Arrow Flight).
    Serve(ServeArgs),
    /// Serve a ready-to-query recommender demo: writes a synthetic shop (users, items, ~1M
    /// interactions) into the warehouse unless it is there already, materializes the feature views and
    /// serves the models of models/demo. Takes every `serve` flag.
    #[command(mut_arg("models_dir", |a| a.default_value("./models/demo")))]
    Demo(DemoArgs),
    /// Run one SQL statement against the warehouse without a server and print the result.
    Sql(SqlArgs),
    /// Make entries for an auth file (`--auth-file`).
    #[command(subcommand)]
    Auth(AuthCommand),
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Read a password on stdin and print its Argon2 hash, for a `[[users]]` entry.
    HashPassword,
    /// Print a new random API token and the `[[tokens]]` entry that accepts it.
    NewToken {
        /// Name the token is known by (in logs and errors).
        #[arg(long)]
        name: String,
        /// `read` or `read_write`.
        #[arg(long, default_value = "read")]
        role: String,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub warehouse: WarehouseArgs,

    /// Address to listen on (HOST:PORT); port 0 picks a free port, printed at start.
    #[arg(long, env = "QUIVER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,

    #[command(flatten)]
    pub query: QueryArgs,

    #[command(flatten)]
    pub security: SecurityArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    /// Refresh every materialized feature view on this schedule (e.g. "5m", "1h"); each refresh is
    /// incremental where the sources only had appends. Unset: only `REFRESH FEATURE VIEW` refreshes.
    #[arg(long, env = "QUIVER_REFRESH_INTERVAL")]
    pub refresh_interval: Option<String>,

    /// Serve HTTP on this address (HOST:PORT): `/health`, `/ready` and Prometheus `/metrics`, none
    /// behind credentials (keep it on loopback or a private network). Unset: no HTTP listener and
    /// no metrics recorded.
    #[arg(long, env = "QUIVER_HTTP_LISTEN")]
    pub http_listen: Option<String>,

    /// Statements `system.queries` keeps in memory (the newest); 0 keeps none.
    #[arg(long, env = "QUIVER_QUERY_HISTORY", default_value_t = crate::history::DEFAULT_CAPACITY)]
    pub query_history: usize,

    /// Also append every statement `system.queries` records to this Delta table of the warehouse
    /// (`schema.table`, created if absent), every 5 s and at shutdown. Unset: no audit table.
    #[arg(long, env = "QUIVER_AUDIT_TABLE")]
    pub audit_table: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    /// Auth file (TOML): users with Argon2 password hashes and API tokens stored as SHA-256, each
    /// with a role, `read` or `read_write`. Required unless --listen is a loopback address.
    #[arg(long, env = "QUIVER_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,

    /// Serve a non-loopback address without authentication: anyone who can reach the port can read
    /// and write everything.
    #[arg(long, env = "QUIVER_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// TLS certificate chain (PEM). With --tls-key, the server speaks only TLS (grpc+tls://).
    #[arg(long, env = "QUIVER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) for --tls-cert.
    #[arg(long, env = "QUIVER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Longest a query or DML statement may run, planning to last batch (e.g. "30s", "5m"); past it
    /// the query is stopped with DeadlineExceeded. Unset: no limit.
    #[arg(long, env = "QUIVER_QUERY_TIMEOUT")]
    pub query_timeout: Option<String>,

    /// Statements (queries, DML, ingest) running at once; one more is refused with
    /// ResourceExhausted.
    #[arg(long, env = "QUIVER_MAX_CONCURRENT_QUERIES", default_value_t = crate::flight::limits::DEFAULT_MAX_CONCURRENT_QUERIES)]
    pub max_concurrent_queries: usize,

    /// Largest gRPC message accepted or sent (one Arrow batch of an upload or a result).
    #[arg(long, env = "QUIVER_MAX_MESSAGE_SIZE", default_value = "256MiB")]
    pub max_message_size: String,

    /// Largest upload (uncompressed Arrow data) one ingest call may send.
    #[arg(long, env = "QUIVER_MAX_UPLOAD_SIZE", default_value = "16GiB")]
    pub max_upload_size: String,
}

#[derive(Debug, Clone, Args)]
pub struct QueryArgs {
    /// Directory of SQL files: feature views are `<sql-dir>/features/**/*.sql`. A missing
    /// directory means no views.
    #[arg(long, env = "QUIVER_SQL_DIR", default_value = "./sql")]
    pub sql_dir: PathBuf,

    /// Directory of models: each `<models-dir>/<name>/` holds `model.onnx` and `model.toml`.
    /// Changed directories are reloaded (`RELOAD MODELS`, or the server's poll). Missing: no models.
    #[arg(long, env = "QUIVER_MODELS_DIR", default_value = "./models")]
    pub models_dir: PathBuf,

    /// Memory for query execution, shared by all queries (e.g. "2GiB", "512MiB"). Sorts, joins and
    /// aggregations spill to disk under it where DataFusion can; a query that still does not fit fails
    /// with ResourceExhausted. Unset: no limit.
    #[arg(long, env = "QUIVER_MEMORY_LIMIT")]
    pub memory_limit: Option<String>,
}

impl QueryArgs {
    pub fn options(&self) -> Result<SessionOptions> {
        let memory_limit = match &self.memory_limit {
            None => None,
            Some(raw) => Some(parse_size("--memory-limit", raw)?),
        };
        Ok(SessionOptions {
            memory_limit,
            sql_dir: Some(self.sql_dir.clone()),
            models_dir: Some(self.models_dir.clone()),
            ..SessionOptions::default()
        })
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub dataset: DatasetArgs,
}

/// The demo's data; equal settings give equal data. models/demo was trained on the defaults.
#[derive(Debug, Clone, Args)]
pub struct DatasetArgs {
    /// Interaction events to generate (views, clicks, purchases).
    #[arg(long, env = "QUIVER_DEMO_EVENTS", default_value_t = 1_000_000)]
    pub events: u64,

    /// Users in the demo shop.
    #[arg(long, env = "QUIVER_DEMO_USERS", default_value_t = 10_000)]
    pub users: u32,

    /// Items in the demo shop.
    #[arg(long, env = "QUIVER_DEMO_ITEMS", default_value_t = 2_000)]
    pub items: u32,

    /// Days the interactions span.
    #[arg(long, env = "QUIVER_DEMO_DAYS", default_value_t = 90)]
    pub days: u32,

    /// When the interactions end (UTC): YYYY-MM-DD (midnight), YYYY-MM-DDTHH:MM:SS or RFC 3339. Default: now,
    /// so the feature views' TTLs keep the demo's features served.
    #[arg(long, env = "QUIVER_DEMO_END")]
    pub end: Option<String>,

    /// Seed of the generator.
    #[arg(long, env = "QUIVER_DEMO_SEED", default_value_t = 42)]
    pub seed: u64,
}

impl DatasetArgs {
    pub fn spec(&self) -> Result<crate::demo::dataset::Spec> {
        let end = match &self.end {
            // Whole seconds: the printed end, given back as --end, gives the same data.
            None => chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0)
                .unwrap_or_default()
                .naive_utc(),
            Some(raw) => crate::query::rewrite::parse_timestamp(raw)
                .map_err(|e| Error::Config {
                    setting: "--end",
                    message: e.to_string(),
                })?
                .naive_utc(),
        };
        let spec = crate::demo::dataset::Spec {
            users: self.users,
            items: self.items,
            events: self.events,
            days: self.days,
            end,
            seed: self.seed,
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The SQL statement to run.
    pub statement: String,

    #[command(flatten)]
    pub warehouse: WarehouseArgs,

    #[command(flatten)]
    pub query: QueryArgs,
}

#[derive(Debug, Clone, Args)]
pub struct WarehouseArgs {
    /// Warehouse root: a local directory (created if absent), a file:// URI, or any object_store URI
    /// (s3://, gs://, az://...). Schemas are directories under it, tables are Delta tables in those.
    #[arg(long, env = "QUIVER_WAREHOUSE", default_value = "./warehouse")]
    pub warehouse: String,

    /// Retries of a failed object-store request (5xx, timeout, connection reset) on S3/GCS/Azure,
    /// with exponential backoff from 100 ms up to 15 s. 0: no retries.
    #[arg(long, env = "QUIVER_STORE_MAX_RETRIES", default_value_t = 10)]
    pub store_max_retries: usize,

    /// Longest time spent retrying one object-store request (e.g. "3m").
    #[arg(long, env = "QUIVER_STORE_RETRY_TIMEOUT", default_value = "3m")]
    pub store_retry_timeout: String,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log filter in tracing's EnvFilter syntax (e.g. "info", "warn,quiver=debug"). Default:
    /// "warn,quiver=info"; for `quiver demo`, "warn" (it prints its own progress).
    #[arg(long = "log", env = "QUIVER_LOG", global = true)]
    pub filter: Option<String>,

    /// `text` for people, `json` for log collectors: one object per line, with the request id
    /// (`system.queries.id` for statements) of the call a line belongs to.
    #[arg(
        long = "log-format",
        env = "QUIVER_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub format: LogFormat,

    /// Export trace spans (each RPC, and a statement's plan, execute and commit phases) to this
    /// OpenTelemetry collector over OTLP/gRPC, e.g. `http://localhost:4317`. Unset: no traces.
    #[arg(long = "otlp-endpoint", env = "QUIVER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration of a server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub warehouse: Url,
    pub listen: SocketAddr,
    /// `--http-listen`: health, readiness and metrics over HTTP.
    pub http_listen: Option<SocketAddr>,
    pub session: SessionOptions,
    pub server: ServerOptions,
}

/// A size like "512MiB" in bytes, more than zero.
fn parse_size(setting: &'static str, raw: &str) -> Result<usize> {
    let size: bytesize::ByteSize = raw.trim().parse().map_err(|e| Error::Config {
        setting,
        message: format!("'{raw}' is not a size like 512MiB or 2GiB: {e}"),
    })?;
    let bytes = usize::try_from(size.as_u64()).unwrap_or(usize::MAX);
    if bytes == 0 {
        return Err(Error::Config {
            setting,
            message: "must be more than 0 bytes".into(),
        });
    }
    Ok(bytes)
}

/// A duration like "30s" or "5m", longer than zero.
fn parse_duration(setting: &'static str, raw: &str) -> Result<Duration> {
    let duration = humantime::parse_duration(raw.trim()).map_err(|e| Error::Config {
        setting,
        message: format!("'{raw}' is not a duration like 30s, 5m or 1h: {e}"),
    })?;
    if duration.is_zero() {
        return Err(Error::Config {
            setting,
            message: "must be longer than 0s".into(),
        });
    }
    Ok(duration)
}

impl SecurityArgs {
    /// Auth and TLS for a server on `listen`. Without an auth file only a loopback address may be
    /// served, unless --insecure-no-auth says otherwise.
    pub fn validate(&self, listen: &SocketAddr) -> Result<(Arc<Auth>, Option<TlsFiles>)> {
        let auth = match &self.auth_file {
            Some(path) => Auth::from_file(path)?,
            None if listen.ip().is_loopback() || self.insecure_no_auth => Auth::open()?,
            None => {
                return Err(Error::Config {
                    setting: "--listen",
                    message: format!(
                        "{listen} is not a loopback address and no authentication is configured: \
                         give --auth-file (QUIVER_AUTH_FILE), or pass --insecure-no-auth to let \
                         anyone who can reach the port read and write everything"
                    ),
                });
            }
        };
        if !auth.is_enabled() && !listen.ip().is_loopback() {
            tracing::warn!(%listen, "serving WITHOUT authentication (--insecure-no-auth)");
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles::read(cert, key)?),
            _ => None,
        };
        if tls.is_none() && auth.is_enabled() && !listen.ip().is_loopback() {
            tracing::warn!(
                %listen,
                "authentication without TLS: passwords and tokens cross the network in clear text"
            );
        }
        Ok((Arc::new(auth), tls))
    }
}

impl LimitArgs {
    pub fn validate(&self) -> Result<(Limits, usize)> {
        let query_timeout = match &self.query_timeout {
            None => None,
            Some(raw) => Some(parse_duration("--query-timeout", raw)?),
        };
        if self.max_concurrent_queries == 0 {
            return Err(Error::Config {
                setting: "--max-concurrent-queries",
                message: "must be at least 1".into(),
            });
        }
        let max_message = parse_size("--max-message-size", &self.max_message_size)?;
        let max_upload = parse_size("--max-upload-size", &self.max_upload_size)?;
        let limits = Limits {
            query_timeout,
            max_concurrent_queries: self.max_concurrent_queries,
            max_upload_bytes: max_upload as u64,
        };
        Ok((limits, max_message))
    }
}

impl ServeArgs {
    pub fn validate(&self) -> Result<ServeConfig> {
        let listen = self.listen.parse().map_err(|e| Error::Config {
            setting: "--listen",
            message: format!("'{}' is not HOST:PORT: {e}", self.listen),
        })?;
        let refresh_interval = match &self.refresh_interval {
            None => None,
            Some(raw) => Some(parse_duration("--refresh-interval", raw)?),
        };
        let (auth, tls) = self.security.validate(&listen)?;
        let (limits, max_message_bytes) = self.limits.validate()?;
        let audit_table = self
            .audit_table
            .as_deref()
            .map(crate::ingest::audit::AuditTable::parse)
            .transpose()?;
        let http_listen = match &self.http_listen {
            None => None,
            Some(raw) => Some(raw.parse().map_err(|e| Error::Config {
                setting: "--http-listen",
                message: format!("'{raw}' is not HOST:PORT: {e}"),
            })?),
        };
        Ok(ServeConfig {
            warehouse: self.warehouse.url()?,
            listen,
            http_listen,
            session: SessionOptions {
                query_history: Some(self.query_history),
                audit: audit_table.is_some(),
                ..self.query.options()?
            },
            server: ServerOptions {
                auth,
                tls,
                limits,
                max_message_bytes,
                refresh_interval,
                readiness: Arc::default(),
                audit_table,
            },
        })
    }
}

impl WarehouseArgs {
    /// The warehouse root as a URL with a trailing slash. A plain path becomes an absolute `file://` URL
    /// and the directory is created if it does not exist.
    pub fn url(&self) -> Result<Url> {
        let timeout = parse_duration("--store-retry-timeout", &self.store_retry_timeout)?;
        crate::storage::stores::set_retry(self.store_max_retries, timeout);
        warehouse_url(&self.warehouse)
    }
}

pub fn warehouse_url(raw: &str) -> Result<Url> {
    let bad = |message: String| Error::Config {
        setting: "--warehouse",
        message,
    };
    let mut url = match Url::parse(raw) {
        // A one-letter scheme is a Windows drive letter, not a URL.
        Ok(url) if url.scheme().len() > 1 => url,
        _ => {
            let path = Path::new(raw);
            std::fs::create_dir_all(path)
                .map_err(|e| bad(format!("cannot create directory '{raw}': {e}")))?;
            let abs = std::fs::canonicalize(path)
                .map_err(|e| bad(format!("cannot resolve directory '{raw}': {e}")))?;
            Url::from_directory_path(&abs)
                .map_err(|()| bad(format!("'{}' is not an absolute path", abs.display())))?
        }
    };
    if url.scheme() == "file" {
        let path = url
            .to_file_path()
            .map_err(|()| bad(format!("'{raw}' is not a local path")))?;
        std::fs::create_dir_all(&path)
            .map_err(|e| bad(format!("cannot create directory '{}': {e}", path.display())))?;
    }
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_directory_becomes_file_url_with_slash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = dir.path().join("wh");
        let url = warehouse_url(raw.to_str().expect("utf8")).expect("url");
        assert_eq!(url.scheme(), "file");
        assert!(url.path().ends_with("/wh/"));
        assert!(raw.is_dir());
    }

    #[test]
    fn object_store_urls_are_used_as_given() {
        let url = warehouse_url("s3://bucket/prefix").expect("url");
        assert_eq!(url.as_str(), "s3://bucket/prefix/");
    }
}
