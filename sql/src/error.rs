//! The one error type every query interface reports, classified so each interface can map it to its own
//! status (HTTP code, pg SQLSTATE) without looking inside DataFusion errors.

use std::time::Duration;

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

use crate::guard::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The read-only guard refused the statement (DDL, DML, COPY, file-reading functions, ...).
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    /// The SQL does not parse or does not plan (unknown table or column, type error, unsupported syntax).
    #[error("invalid SQL: {0}")]
    Invalid(String),
    /// The SQL nests expressions deeper than [`crate::guard::MAX_EXPRESSION_DEPTH`]: refused before any parser
    /// builds its tree, because the parser, DataFusion's planner and the trees' destructors recurse once per
    /// level and a deep enough chain (`1+1+1...`) overflows the thread's stack, which aborts the process.
    #[error(
        "the SQL nests expressions up to {depth} levels deep, more than the {limit} allowed; use IN (...) \
         for long lists of alternatives or split the query"
    )]
    TooComplex { depth: usize, limit: usize },
    /// Planning plus execution took longer than the statement timeout.
    #[error("query cancelled: it ran longer than the statement timeout of {0:?}")]
    Timeout(Duration),
    /// The query needed more memory than the configured limit allows.
    #[error("query cancelled: it needs more memory than the query memory limit allows ({0})")]
    ResourcesExhausted(String),
    /// The answer has more rows than one response may carry.
    #[error("the result has more than {0} rows; add a LIMIT or aggregate")]
    TooManyRows(usize),
    /// The answer is larger in memory than one response may carry.
    #[error(
        "the result holds more than {0} bytes; add a LIMIT or select fewer or shorter columns"
    )]
    TooManyBytes(usize),
    /// The query is valid but its values are not: a division by zero, a cast or parse of text that is no
    /// number or time, an overflow, a function argument out of its range. The client's to fix, like
    /// [`QueryError::Invalid`], and told apart so that pg clients get the usual SQLSTATE (class 22). Only
    /// Arrow's value errors are: the time functions' bad arguments (`date_bin` with a zero stride), which
    /// DataFusion reports as plain execution errors, are turned into Arrow's by `bounded_functions`; any
    /// other plain execution error stays [`QueryError::Execution`], as a failing read does.
    #[error("the query failed on a value: {message}")]
    Data {
        kind: DataErrorKind,
        message: String,
    },
    /// As many collected answers are being built and sent as the interface allows at once: each may hold
    /// up to `max_result_bytes` of batches and twice that of text, outside the query memory pool. Not the
    /// query's fault; sent again shortly, it runs.
    #[error(
        "{0} queries are being answered already, the most this interface takes at once; retry shortly"
    )]
    Busy(usize),
    /// An error the pg protocol layer (datafusion-postgres) reported with its own SQLSTATE (`25P01` in an
    /// aborted transaction, cursor errors, its own timeout): kept as it chose it, so clients see the usual
    /// code rather than a syntax error.
    #[error("{message}")]
    Reported { code: String, message: String },
    /// Anything else DataFusion reported while running the query (I/O, corrupt file, internal error).
    #[error("query failed: {0}")]
    Execution(DataFusionError),
}

/// What was wrong with a value ([`QueryError::Data`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataErrorKind {
    DivisionByZero,
    /// Text that does not cast or parse to the type asked for.
    InvalidText,
    Overflow,
    InvalidArgument,
}

impl QueryError {
    /// Whether the client caused the error (and should fix its query) rather than the server.
    pub fn is_client_error(&self) -> bool {
        match self {
            QueryError::Execution(_) | QueryError::Busy(_) => false,
            // Class XX (internal), 58 (system) and 53 (resources) are the server's.
            QueryError::Reported { code, .. } => {
                !(code.starts_with("XX") || code.starts_with("58") || code.starts_with("53"))
            }
            _ => true,
        }
    }

    /// A short label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            QueryError::Refused(_) => "refused",
            QueryError::Invalid(_) => "invalid",
            QueryError::TooComplex { .. } => "too_complex",
            QueryError::Data { .. } => "data",
            QueryError::Timeout(_) => "timeout",
            QueryError::ResourcesExhausted(_) => "memory_limit",
            QueryError::TooManyRows(_) => "too_many_rows",
            QueryError::TooManyBytes(_) => "too_many_bytes",
            QueryError::Busy(_) => "busy",
            QueryError::Reported { code, .. } if code == "57014" => "timeout",
            QueryError::Reported { .. } if self.is_client_error() => "invalid",
            QueryError::Reported { .. } => "error",
            QueryError::Execution(_) => "error",
        }
    }
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        // Look through the wrappers DataFusion adds (Context, Shared, ArrowError(External(..))) for the cause.
        match e.find_root() {
            DataFusionError::ResourcesExhausted(msg) => QueryError::ResourcesExhausted(msg.clone()),
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Configuration(_) => QueryError::Invalid(e.strip_backtrace()),
            DataFusionError::ArrowError(arrow, _) => match data_error_kind(arrow) {
                Some(kind) => QueryError::Data {
                    kind,
                    message: arrow.to_string(),
                },
                None => QueryError::Execution(e),
            },
            _ => QueryError::Execution(e),
        }
    }
}

/// The Arrow errors a query's own values cause (kernels report them as they meet the value, while running).
fn data_error_kind(e: &ArrowError) -> Option<DataErrorKind> {
    match e {
        ArrowError::DivideByZero => Some(DataErrorKind::DivisionByZero),
        ArrowError::CastError(_) | ArrowError::ParseError(_) => Some(DataErrorKind::InvalidText),
        ArrowError::ArithmeticOverflow(_) => Some(DataErrorKind::Overflow),
        ArrowError::InvalidArgumentError(_) => Some(DataErrorKind::InvalidArgument),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_datafusion_errors() {
        let plan = DataFusionError::Plan("table 'x' not found".into());
        assert!(matches!(QueryError::from(plan), QueryError::Invalid(_)));
        let mem = DataFusionError::Context(
            "sort".into(),
            Box::new(DataFusionError::ResourcesExhausted(
                "Failed to allocate".into(),
            )),
        );
        let e = QueryError::from(mem);
        assert!(matches!(e, QueryError::ResourcesExhausted(_)), "{e:?}");
        assert!(e.is_client_error());
        let io = DataFusionError::Execution("object store failed".into());
        let e = QueryError::from(io);
        assert!(!e.is_client_error());
        assert_eq!(e.outcome(), "error");
    }
}
