//! The manifest (`_manifest.json`): the single source of truth for which Parquet files are live and which
//! WAL sequence they cover. Every change is a whole new manifest that replaces the old one atomically, so a
//! crash leaves either the old or the new state, never a mix.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::object_files::ObjectFiles;
use crate::{StoreError, StoredFile, Table};

pub(crate) const MANIFEST_PATH: &str = "_manifest.json";
const VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub version: u32,
    /// Every WAL record with a sequence `<=` this is in the files below.
    pub wal_seq: u64,
    /// Live files per table name.
    pub tables: BTreeMap<String, Vec<StoredFile>>,
}

impl Manifest {
    pub fn files(&self, table: Table) -> &[StoredFile] {
        self.tables
            .get(table.name())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn files_mut(&mut self, table: Table) -> &mut Vec<StoredFile> {
        self.tables.entry(table.name().to_string()).or_default()
    }

    pub fn contains(&self, path: &str) -> bool {
        self.tables.values().flatten().any(|f| f.path == path)
    }
}

pub(crate) async fn load(objects: &ObjectFiles) -> Result<Manifest, StoreError> {
    match objects.get(MANIFEST_PATH).await {
        Ok(bytes) => {
            let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::Manifest(format!("{MANIFEST_PATH} does not parse: {e}"))
            })?;
            if m.version > VERSION {
                return Err(StoreError::Manifest(format!(
                    "{MANIFEST_PATH} has version {} but this build reads up to {VERSION}",
                    m.version
                )));
            }
            Ok(m)
        }
        Err(StoreError::ObjectStore(object_store::Error::NotFound { .. })) => Ok(Manifest {
            version: VERSION,
            ..Default::default()
        }),
        Err(e) => Err(e),
    }
}

/// Locally: write a temp file, fsync it, rename over the manifest, fsync the directory. On S3 a PUT is
/// already atomic and durable once acknowledged.
pub(crate) async fn save(objects: &ObjectFiles, manifest: &Manifest) -> Result<(), StoreError> {
    let mut m = manifest.clone();
    m.version = VERSION;
    let json = serde_json::to_vec_pretty(&m)
        .map_err(|e| StoreError::Manifest(format!("serialize: {e}")))?;
    match &objects.local_root {
        Some(root) => {
            let root = root.clone();
            tokio::task::spawn_blocking(move || write_local(&root, &json))
                .await
                .map_err(|e| StoreError::Manifest(format!("manifest task: {e}")))?
        }
        None => objects
            .put_durable(MANIFEST_PATH, Bytes::from(json))
            .await
            .map(|_| ()),
    }
}

fn write_local(root: &Path, json: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let err = |what: &str, e: std::io::Error| {
        StoreError::Manifest(format!("{what} in {}: {e}", root.display()))
    };
    let tmp = root.join(format!("{MANIFEST_PATH}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| err("create temp manifest", e))?;
    f.write_all(json)
        .and_then(|_| f.sync_all())
        .map_err(|e| err("write temp manifest", e))?;
    drop(f);
    std::fs::rename(&tmp, root.join(MANIFEST_PATH)).map_err(|e| err("rename manifest", e))?;
    std::fs::File::open(root)
        .and_then(|d| d.sync_all())
        .map_err(|e| err("fsync directory", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn save_then_load_round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let objects = ObjectFiles {
            store: Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap(),
            ),
            local_root: Some(dir.path().to_path_buf()),
        };
        assert_eq!(load(&objects).await.unwrap().wal_seq, 0);
        let mut m = Manifest {
            wal_seq: 42,
            ..Default::default()
        };
        m.files_mut(Table::Events).push(StoredFile {
            path: "events/date=2026-11-22/hour=14/a.parquet".into(),
            size: 10,
            rows: 3,
            min_time_us: 1,
            max_time_us: 2,
        });
        save(&objects, &m).await.unwrap();
        let back = load(&objects).await.unwrap();
        assert_eq!((back.wal_seq, back.files(Table::Events).len()), (42, 1));
        assert!(back.contains("events/date=2026-11-22/hour=14/a.parquet"));
        assert!(!dir.path().join("_manifest.json.tmp").exists());
    }
}
