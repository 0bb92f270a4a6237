//! SQL over Vigil's store: DataFusion table providers, the read-only guard for network-facing SQL, the HTTP
//! query API and the PostgreSQL wire protocol server.
//!
//! Every interface (the `vigil sql` CLI, `POST /api/v1/query`, the pg-wire server) goes through the same
//! [`context::session_context`] (tables, memory limit) and the same guard and statement timeout, so a query
//! refused or cut off on one interface is refused or cut off on all of them.

mod bounded_functions;
mod constant_limit;
pub mod context;
pub mod error;
pub mod guard;
pub mod http_api;
pub mod metrics;
pub mod pg;
mod search_path;
pub mod source;
pub mod tables;

#[cfg(test)]
pub(crate) mod test_support;

pub use context::{run_query, run_query_as, session_context, Interface, QueryLimits, QueryOutput};
pub use error::QueryError;
pub use guard::{GuardPolicy, Refusal};
pub use source::SnapshotSource;
pub use tables::{
    register_alert_responses, register_live_table, AlertsView, LiveTable, StoreTable,
};
