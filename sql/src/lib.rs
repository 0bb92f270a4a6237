//! SQL over Vigil's store: DataFusion table providers, the read-only guard for network-facing SQL, the HTTP
//! query API and the PostgreSQL wire protocol server.
