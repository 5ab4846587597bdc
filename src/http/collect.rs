//! `POST /v1/ingest/{table}`: the collector stock log shippers post to (Logstash's `http` output,
//! Vector's `http` sink, Fluent Bit's `http` output; their configs are in the README).
//!
//! - `{table}` is `table` (in schema `public`) or `schema.table`; the table must exist.
//! - The body is newline-delimited JSON or a JSON array of objects, plain or with
//!   `Content-Encoding: gzip`, `deflate` or `zstd`, at most `--max-upload-size` (and never more than
//!   [`MAX_BODY_BYTES`]) as sent and decompressed.
//! - Credentials as on Flight: `Authorization: Bearer <token>` or `Basic <user:password>`; the
//!   caller needs `read_write`.
//! - `Idempotency-Key: <key>` makes a request sent again land at most once (see
//!   [`crate::ingest::collect`]).
//!
//! Answers: 200 `{"version", "rows", "rejected"}` once the Delta commit holding the rows exists
//! (`"duplicate": true` for a key already recorded); records that do not fit the table go to
//! `<schema>.dead_letters` and are counted in `rejected`, not refused. 429 with `Retry-After` when
//! the server is at its concurrency cap, 503 with `Retry-After` when a write conflict, storage or
//! shutdown stops the write (shippers retry both); 4xx with `{"error"}` naming the problem for a
//! request that cannot succeed as sent.

use std::io::Read;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tonic::Code;

use crate::auth::{Auth, Principal};
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::ingest::collect::{Collect, collect};
use crate::session::QuiverSession;
use crate::storage::DEFAULT_SCHEMA;

use super::Shared;

/// Largest body accepted, compressed and decompressed alike, whatever `--max-upload-size` says (a
/// body is decoded whole).
pub const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;
/// What a refused request is told to wait before sending again.
const RETRY_AFTER_SECONDS: &str = "1";

/// What the collector writes with, set once the server serves.
pub struct Collector {
    pub session: QuiverSession,
    pub auth: Arc<Auth>,
    /// Where decoding and writing run (the upload runtime, never the IO threads).
    pub executor: Arc<Executor>,
    /// Requests collecting at once (`--max-concurrent-queries`); one more gets 429.
    pub slots: Arc<Semaphore>,
    /// Largest body, as sent and decompressed (`--max-upload-size`, at most [`MAX_BODY_BYTES`]).
    pub max_body: usize,
}

/// The handler of `POST /v1/ingest/{table}`.
pub(super) async fn ingest(
    State(state): State<Arc<Shared>>,
    Path(table): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let answer = match state.collector.get() {
        _ if state.readiness.is_draining() => Err(Error::Unavailable(
            "the server is shutting down: send to another replica or retry".into(),
        )),
        None => Err(Error::Unavailable(
            "the server is still loading: retry in a moment".into(),
        )),
        Some(collector) => handle(collector, table, headers, body).await,
    };
    let response = match answer {
        Ok(response) => response,
        Err(e) => error_response(&e),
    };
    metrics::counter!(
        crate::metrics::HTTP_INGEST_REQUESTS,
        "status" => response.status().as_str().to_string()
    )
    .increment(1);
    response
}

async fn handle(
    collector: &Collector,
    table: String,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let caller = authenticate(collector, &headers).await?;
    caller.authorize_write("HTTP ingest")?;
    let (schema, table) = table_name(&table)?;
    let encoding = Encoding::of(&headers)?;
    let key = match headers.get("idempotency-key") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| Error::InvalidInput("the Idempotency-Key header is not ASCII".into()))?
                .to_string(),
        ),
        None => None,
    };
    let permit = collector.slots.clone().try_acquire_owned().map_err(|_| {
        Error::ResourceExhausted(
            "too many requests are writing at once (--max-concurrent-queries): retry".into(),
        )
    })?;
    let max_body = collector.max_body.min(MAX_BODY_BYTES);
    let sent = axum::body::to_bytes(body, max_body)
        .await
        .map_err(|e| body_error(&e, max_body))?;
    let session = collector.session.clone();
    let collected = collector
        .executor
        .run(async move {
            let _permit = permit;
            let body = encoding.decode(sent, max_body)?;
            collect(
                &session,
                Collect {
                    schema: &schema,
                    table: &table,
                    body: &body,
                    idempotency_key: key.as_deref(),
                    source: "http",
                },
            )
            .await
        })
        .await?;
    let mut answer = serde_json::json!({
        "version": collected.version,
        "rows": collected.rows,
        "rejected": collected.rejected,
    });
    if collected.duplicate {
        answer["duplicate"] = true.into();
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
        .into_response())
}

/// The caller, from `Authorization` (Bearer as on Flight, or Basic, checked as the Flight
/// handshake checks it, off the IO threads: Argon2 is slow on purpose).
async fn authenticate(collector: &Collector, headers: &HeaderMap) -> Result<Principal> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| Error::Unauthenticated("the Authorization header is not ASCII".into()))
        })
        .transpose()?;
    let basic = authorization
        .as_deref()
        .is_some_and(|h| h.len() > 6 && h[..6].eq_ignore_ascii_case("basic "));
    if !basic || !collector.auth.is_enabled() {
        return collector.auth.authenticate(authorization.as_deref());
    }
    let auth = collector.auth.clone();
    collector
        .executor
        .run(async move {
            tokio::task::spawn_blocking(move || {
                auth.login(authorization.as_deref())
                    .map(|(principal, _)| principal)
            })
            .await
            .map_err(|e| Error::Internal(format!("checking the password failed: {e}")))?
        })
        .await
}

/// `table` or `schema.table`.
fn table_name(name: &str) -> Result<(String, String)> {
    let (schema, table) = match name.split_once('.') {
        Some((schema, table)) => (schema, table),
        None => (DEFAULT_SCHEMA, name),
    };
    let valid = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !valid(schema) || !valid(table) {
        return Err(Error::InvalidInput(format!(
            "'{name}' is not a table name: use 'table' or 'schema.table' (letters, digits, '_', '-')"
        )));
    }
    Ok((schema.to_string(), table.to_string()))
}

/// How the body is compressed (`Content-Encoding`).
#[derive(Debug, Clone, Copy)]
enum Encoding {
    Identity,
    Gzip,
    /// HTTP's `deflate`: zlib-wrapped (RFC 9110).
    Deflate,
    Zstd,
}

impl Encoding {
    fn of(headers: &HeaderMap) -> Result<Self> {
        let Some(value) = headers.get(header::CONTENT_ENCODING) else {
            return Ok(Encoding::Identity);
        };
        match value
            .to_str()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "" | "identity" => Ok(Encoding::Identity),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "deflate" => Ok(Encoding::Deflate),
            "zstd" => Ok(Encoding::Zstd),
            other => Err(Error::Unsupported(format!(
                "Content-Encoding '{other}' (send the body plain, gzip, deflate or zstd)"
            ))),
        }
    }

    /// The body decompressed, refused past `max` bytes.
    fn decode(self, sent: Bytes, max: usize) -> Result<Bytes> {
        let reader: Box<dyn Read> = match self {
            Encoding::Identity => return Ok(sent),
            Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&sent[..])),
            Encoding::Deflate => Box::new(flate2::read::ZlibDecoder::new(&sent[..])),
            Encoding::Zstd => Box::new(
                zstd::stream::read::Decoder::new(&sent[..])
                    .map_err(|e| Error::InvalidInput(format!("the zstd body is not valid: {e}")))?,
            ),
        };
        let mut body = Vec::new();
        reader
            .take(max as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| {
                Error::InvalidInput(format!("the body is not valid {self:?} data: {e}"))
            })?;
        if body.len() > max {
            return Err(too_large(max));
        }
        Ok(body.into())
    }
}

fn too_large(max: usize) -> Error {
    Error::TooLarge(format!(
        "the body is larger than {} (--max-upload-size): send smaller batches",
        bytesize::ByteSize(max as u64)
    ))
}

fn body_error(e: &axum::Error, max: usize) -> Error {
    let too_long =
        std::error::Error::source(e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
    if too_long {
        too_large(max)
    } else {
        Error::InvalidInput(format!("reading the body failed: {e}"))
    }
}

/// An error as the collector answers it: the status a shipper acts on, and `{"error"}`.
fn error_response(e: &Error) -> Response {
    let status = match e.code() {
        _ if matches!(e, Error::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::Unimplemented => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // A lost commit race, storage or shutdown: the same request may succeed when sent again.
        Code::Aborted | Code::Unavailable | Code::DeadlineExceeded => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = e.to_string();
    match status {
        // Back-pressure a shipper retries: expected under load, counted in the metrics.
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            tracing::debug!(status = status.as_u16(), %message, "HTTP ingest deferred");
        }
        _ if status.is_server_error() => tracing::error!(%message, "HTTP ingest failed"),
        _ => tracing::info!(status = status.as_u16(), %message, "HTTP ingest refused"),
    }
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    let headers = response.headers_mut();
    match status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            headers.insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        StatusCode::UNAUTHORIZED => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"quiver\", Basic realm=\"quiver\""),
            );
        }
        _ => {}
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_default_to_public_and_refuse_paths() {
        assert_eq!(
            table_name("events").expect("plain"),
            ("public".into(), "events".into())
        );
        assert_eq!(
            table_name("logs.events").expect("qualified"),
            ("logs".into(), "events".into())
        );
        assert!(table_name("a.b.c").is_err());
        assert!(table_name("../x").is_err());
        assert!(table_name("").is_err());
    }

    #[test]
    fn statuses_follow_what_shippers_retry() {
        let conflict = Error::Conflict {
            table: "t".into(),
            message: "lost".into(),
        };
        let response = error_response(&conflict);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            error_response(&Error::ResourceExhausted("busy".into())).status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            error_response(&too_large(1)).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            error_response(&Error::TableNotFound("t".into())).status(),
            StatusCode::NOT_FOUND
        );
        let refused = error_response(&Error::Unauthenticated("who".into()));
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert!(refused.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
