//! One error type for the whole server, and the one place it becomes a gRPC status.
//!
//! Every stage returns [`Error`]; DataFusion extension points return `DataFusionError` and keep the
//! root cause. [`Error::to_status`] walks to that root and picks the status a client can act on.

use datafusion::error::DataFusionError;
use deltalake::DeltaTableError;
use deltalake::kernel::transaction::TransactionError;
use tonic::{Code, Status};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid setting {setting}: {message}")]
    Config {
        setting: &'static str,
        message: String,
    },

    /// The client sent something malformed: bad SQL text, a bad handle, a bad argument.
    #[error("{0}")]
    InvalidInput(String),

    #[error("table not found: {0}")]
    TableNotFound(String),

    #[error("schema not found: {0}")]
    SchemaNotFound(String),

    #[error("catalog not found: {0}")]
    CatalogNotFound(String),

    #[error("{kind} already exists: {name}")]
    AlreadyExists { kind: &'static str, name: String },

    /// Data offered for a table does not fit its schema.
    #[error("schema mismatch for table {table}: {message}")]
    SchemaMismatch { table: String, message: String },

    #[error("not supported: {0}")]
    Unsupported(String),

    /// Another writer committed first and the operation cannot be retried automatically.
    #[error("write conflict on {table}: {message}")]
    Conflict { table: String, message: String },

    #[error(transparent)]
    DataFusion(#[from] DataFusionError),

    #[error(transparent)]
    Delta(#[from] DeltaTableError),

    /// Arrow failed on a batch or schema the server built (a report, a system table, its own result
    /// stream): a bug, so Internal. Client data that Arrow rejects is said as `InvalidInput` where it
    /// is read (uploads, parameters, casts to Delta types).
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),

    #[error(transparent)]
    ObjectStore(#[from] object_store::Error),

    #[error(transparent)]
    Flight(#[from] arrow_flight::error::FlightError),

    #[error(transparent)]
    Io(#[from] std::io::Error),

    /// No valid credentials came with the call.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),

    /// The caller is known but its role does not allow this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),

    /// A configured limit was reached (concurrent queries, upload size, memory).
    #[error("resource limit: {0}")]
    ResourceExhausted(String),

    /// Something other than a table, schema or catalog that does not exist (a source).
    #[error("{kind} '{name}' does not exist")]
    NotFound { kind: &'static str, name: String },

    /// A request or body larger than the server takes (HTTP 413).
    #[error("too large: {0}")]
    TooLarge(String),

    /// The server cannot take this now (still loading, shutting down); the same request may
    /// succeed later or on another replica.
    #[error("unavailable: {0}")]
    Unavailable(String),

    /// The query ran past `--query-timeout`.
    #[error("{0}")]
    Timeout(String),

    /// The client cancelled the query (CancelFlightInfo).
    #[error("{0}")]
    Cancelled(String),

    /// Stored data that cannot be read as what it claims to be: a Delta commit file that is not
    /// JSON. Retrying will not help; the table needs repair.
    #[error("{0}")]
    Corrupt(String),

    /// A table version that exists in the log but whose data files VACUUM removed.
    #[error("{0}")]
    VersionGone(String),

    /// An error said with where it arose (a feature view's file and line); its status is its
    /// cause's, so a lost commit race stays `Aborted` and a missing table `NotFound`.
    #[error("{context}: {source}")]
    Context { context: String, source: Box<Error> },

    /// A bug or an impossible state: reported as Internal and logged at error level.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The gRPC status for this error. User errors are logged at info, bugs at error.
    pub fn to_status(&self) -> Status {
        let code = self.code();
        let message = self.to_string();
        if matches!(
            code,
            Code::Internal | Code::Unavailable | Code::Unknown | Code::DataLoss
        ) {
            tracing::error!(%message, "request failed");
        } else {
            tracing::info!(?code, %message, "request rejected");
        }
        Status::new(code, without_backtrace(&message))
    }

    /// Whether this is a lost commit race (another writer committed first): the write can be sent
    /// again on the newer version.
    pub fn is_write_conflict(&self) -> bool {
        self.code() == Code::Aborted
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Error::Config { .. } => Code::InvalidArgument,
            Error::InvalidInput(_) => Code::InvalidArgument,
            Error::TableNotFound(_) => Code::NotFound,
            Error::SchemaNotFound(_) => Code::NotFound,
            Error::CatalogNotFound(_) => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::SchemaMismatch { .. } => Code::InvalidArgument,
            Error::Unsupported(_) => Code::Unimplemented,
            Error::Conflict { .. } => Code::Aborted,
            Error::DataFusion(e) => datafusion_code(e),
            Error::Delta(e) => delta_code(e),
            Error::Arrow(_) => Code::Internal,
            Error::ObjectStore(e) => object_store_code(e),
            Error::Flight(e) => flight_code(e),
            Error::Io(_) => Code::Unavailable,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::NotFound { .. } => Code::NotFound,
            Error::TooLarge(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::Cancelled(_) => Code::Cancelled,
            Error::Corrupt(_) => Code::DataLoss,
            Error::VersionGone(_) => Code::NotFound,
            Error::Context { source, .. } => source.code(),
            Error::Internal(_) => Code::Internal,
        }
    }
}

/// What a caught panic said (its `&str` or `String` payload).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message")
}

/// `message` up to the stack trace some errors carry when `RUST_BACKTRACE` is set (the Delta
/// kernel's do, one frame per line from `0:`): clients get the error, the log keeps the frames.
fn without_backtrace(message: &str) -> &str {
    let mut at = 0;
    for line in message.split_inclusive('\n') {
        let frame = line.trim_start();
        if at > 0 && line.len() > frame.len() && frame.starts_with("0: ") {
            return message[..at].trim_end();
        }
        at += line.len();
    }
    message
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        e.to_status()
    }
}

/// Lets errors raised inside DataFusion extension points (catalog, providers) keep their kind:
/// they travel as `DataFusionError::External` and are unwrapped again by [`datafusion_code`].
impl From<Error> for DataFusionError {
    fn from(e: Error) -> Self {
        match e {
            Error::DataFusion(e) => e,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

fn datafusion_code(e: &DataFusionError) -> Code {
    match e.find_root() {
        DataFusionError::External(inner) => external_code(inner.as_ref()),
        DataFusionError::SQL(..) | DataFusionError::Plan(_) | DataFusionError::SchemaError(..) => {
            Code::InvalidArgument
        }
        DataFusionError::Configuration(_) => Code::InvalidArgument,
        DataFusionError::NotImplemented(_) => Code::Unimplemented,
        DataFusionError::ResourcesExhausted(_) => Code::ResourceExhausted,
        // Execution errors come from user data (casts, division by zero, bad arguments).
        DataFusionError::Execution(_) | DataFusionError::ArrowError(..) => Code::InvalidArgument,
        DataFusionError::ObjectStore(e) => object_store_code(e),
        DataFusionError::IoError(_) => Code::Unavailable,
        // A corrupt or unreadable data file: retrying will not help.
        DataFusionError::ParquetError(_) => Code::Internal,
        DataFusionError::Collection(errors) => errors
            .first()
            .map(datafusion_code)
            .unwrap_or(Code::Internal),
        DataFusionError::Internal(_)
        | DataFusionError::ExecutionJoin(_)
        | DataFusionError::Substrait(_)
        | DataFusionError::Ffi(_)
        | DataFusionError::Context(..)
        | DataFusionError::Diagnostic(..)
        | DataFusionError::Shared(_) => Code::Internal,
    }
}

fn external_code(inner: &(dyn std::error::Error + Send + Sync + 'static)) -> Code {
    if let Some(e) = inner.downcast_ref::<Error>() {
        e.code()
    } else if let Some(e) = inner.downcast_ref::<DeltaTableError>() {
        delta_code(e)
    } else if let Some(e) = inner.downcast_ref::<DataFusionError>() {
        datafusion_code(e)
    } else {
        Code::Internal
    }
}

fn delta_code(e: &DeltaTableError) -> Code {
    match e {
        DeltaTableError::NotATable(_) | DeltaTableError::InvalidTableLocation(_) => Code::NotFound,
        DeltaTableError::InvalidVersion(_)
        | DeltaTableError::InvalidDateTimeString { .. }
        | DeltaTableError::SchemaMismatch { .. }
        | DeltaTableError::PartitionError { .. }
        | DeltaTableError::InvalidPartitionFilter { .. }
        | DeltaTableError::InvalidData { .. }
        | DeltaTableError::Generic(_) => Code::InvalidArgument,
        DeltaTableError::VersionAlreadyExists(_) | DeltaTableError::VersionMismatch(..) => {
            Code::Aborted
        }
        DeltaTableError::Transaction { source } => match source {
            TransactionError::VersionAlreadyExists(_)
            | TransactionError::CommitConflict(_)
            | TransactionError::MaxCommitAttempts(_) => Code::Aborted,
            TransactionError::DeltaTableAppendOnly => Code::FailedPrecondition,
            TransactionError::UnsupportedTableFeatures(_)
            | TransactionError::TableFeaturesRequired(_) => Code::Unimplemented,
            TransactionError::ObjectStore { source } => object_store_code(source),
            // A commit Quiver built that could not be written as JSON, or a log store failing in a
            // way it does not classify: the server's problem.
            TransactionError::SerializeLogJson { .. } | TransactionError::LogStoreError { .. } => {
                Code::Internal
            }
        },
        DeltaTableError::MissingFeature { .. }
        | DeltaTableError::UnsupportedColumnMapping { .. } => Code::Unimplemented,
        DeltaTableError::GenericError { source } => external_code(source.as_ref()),
        DeltaTableError::ObjectStore { source } => object_store_code(source),
        DeltaTableError::NoStartingVersionOrTimestamp
        | DeltaTableError::ChangeDataNotEnabled { .. }
        | DeltaTableError::ChangeDataInvalidVersionRange { .. }
        | DeltaTableError::ChangeDataTimestampGreaterThanCommit { .. } => Code::InvalidArgument,
        // A log or data file that does not read as Delta says it should (written by someone else,
        // or damaged), a table not loaded yet, or a failure delta-rs does not classify: not the
        // caller's input. Listed one by one, so a new variant must be mapped here on purpose.
        DeltaTableError::KernelError(_)
        | DeltaTableError::Kernel { .. }
        | DeltaTableError::Parquet { .. }
        | DeltaTableError::Arrow { .. }
        | DeltaTableError::InvalidJsonLog { .. }
        | DeltaTableError::InvalidStatsJson { .. }
        | DeltaTableError::VersionDowngrade { .. }
        | DeltaTableError::NoSchema
        | DeltaTableError::Io { .. }
        | DeltaTableError::CommitValidation { .. }
        | DeltaTableError::SerializeLogJson { .. }
        | DeltaTableError::MetadataError(_)
        | DeltaTableError::NotInitialized
        | DeltaTableError::NotInitializedWithFiles(_)
        | DeltaTableError::ChangeDataNotRecorded { .. } => Code::Internal,
    }
}

fn flight_code(e: &arrow_flight::error::FlightError) -> Code {
    use arrow_flight::error::FlightError;
    match e {
        FlightError::Tonic(status) => status.code(),
        FlightError::Arrow(_) | FlightError::DecodeError(_) | FlightError::ProtocolError(_) => {
            Code::InvalidArgument
        }
        FlightError::NotYetImplemented(_) => Code::Unimplemented,
        FlightError::ExternalError(inner) => external_code(inner.as_ref()),
    }
}

fn object_store_code(e: &object_store::Error) -> Code {
    match e {
        object_store::Error::NotFound { .. } => Code::NotFound,
        object_store::Error::AlreadyExists { .. } => Code::AlreadyExists,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => Code::PermissionDenied,
        _ => Code::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_the_server_built_wrong_is_internal() {
        use datafusion::arrow::array::{Int64Array, RecordBatch};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Utf8, false)]));
        let wrong = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))]);
        let error: Error = wrong.expect_err("a column of another type").into();
        assert_eq!(error.code(), Code::Internal);
    }

    #[test]
    fn wrapped_errors_keep_their_kind() {
        let inner = Error::TableNotFound("public.nope".into());
        let df: DataFusionError = inner.into();
        let wrapped = DataFusionError::Context("planning".into(), Box::new(df));
        assert_eq!(Error::DataFusion(wrapped).code(), Code::NotFound);
        let conflict = Error::Conflict {
            table: "t".into(),
            message: "another writer committed first".into(),
        };
        let said = Error::Context {
            context: "feature view v (v.sql:3)".into(),
            source: Box::new(conflict),
        };
        assert_eq!(said.code(), Code::Aborted);
        assert!(said.is_write_conflict());
        assert_eq!(
            said.to_string(),
            "feature view v (v.sql:3): write conflict on t: another writer committed first"
        );
    }

    #[test]
    fn clients_get_no_stack_traces() {
        let traced = "Kernel error: Json error: Encountered unexpected 'b'\n   0: with_backtrace\n             at src/error.rs:482:25\n   1: next";
        assert_eq!(
            without_backtrace(traced),
            "Kernel error: Json error: Encountered unexpected 'b'"
        );
        let plain = "line one\nline two: 0: not a frame\n";
        assert_eq!(without_backtrace(plain), plain);
        let status = Error::Internal(traced.into()).to_status();
        assert!(!status.message().contains("with_backtrace"), "{status:?}");
    }

    #[test]
    fn parser_errors_are_invalid_argument() {
        let e = DataFusionError::Plan("bad".into());
        assert_eq!(Error::DataFusion(e).code(), Code::InvalidArgument);
    }
}
