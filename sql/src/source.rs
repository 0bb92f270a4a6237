//! Where the SQL layer gets its data from.
//!
//! The table providers only need two things from the store: a consistent snapshot of a table for each scan and
//! the object store holding the Parquet files. Putting that behind a trait keeps `vigil-sql` testable on its
//! own (tests build snapshots from Parquet files they write themselves) and keeps the store free to change how
//! it produces snapshots.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use object_store::ObjectStore;
use vigil_store::{Store, Table, TableSnapshot};

/// A source of table snapshots for the SQL layer.
pub trait SnapshotSource: Send + Sync {
    /// A consistent view of `table` for one query: live Parquet files plus rows still buffered in memory.
    fn snapshot(&self, table: Table) -> TableSnapshot;

    /// The object store holding the snapshot's files, and the URL to register it under. Only the URL's scheme
    /// and authority matter: `StoredFile::path` is a path inside this store.
    fn object_store(&self) -> (url::Url, Arc<dyn ObjectStore>);

    /// The schema a table is registered with. Defaults to the table's canonical schema; a test source can
    /// override it for tables whose schema it defines itself.
    fn schema(&self, table: Table) -> SchemaRef {
        table.schema()
    }
}

impl SnapshotSource for Store {
    fn snapshot(&self, table: Table) -> TableSnapshot {
        Store::snapshot(self, table)
    }

    fn object_store(&self) -> (url::Url, Arc<dyn ObjectStore>) {
        Store::object_store(self)
    }
}
