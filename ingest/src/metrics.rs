//! Ingest metrics, registered in the process-wide Prometheus registry.
