//! The object store that holds Parquet files and the manifest, plus what `object_store` does not do for a
//! local directory: fsync. `LocalFileSystem::put` renames a staged file into place but never syncs it, and a
//! WAL segment may be deleted only once the Parquet rows it held survive a power loss.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use crate::StoreError;

pub(crate) struct ObjectFiles {
    pub store: Arc<dyn ObjectStore>,
    /// Set when the store is a local directory (`LocalFileSystem::new_with_prefix(root)`).
    pub local_root: Option<PathBuf>,
}

fn local_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Manifest(format!("{}: {e}", path.display()))
}

/// fsyncs a file and the directories from it up to `root`, so a freshly created partition directory is as
/// durable as the file in it.
fn sync_local(root: &Path, rel: &str) -> Result<(), StoreError> {
    let path = root.join(rel);
    std::fs::File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(|e| local_err(&path, e))?;
    let mut dir = path.parent();
    while let Some(d) = dir {
        std::fs::File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| local_err(d, e))?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// [`sync_local`] off the async threads, when the store is a local directory (S3 is durable once it answers).
async fn sync_if_local(local_root: Option<PathBuf>, rel: String) -> Result<(), StoreError> {
    let Some(root) = local_root else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || sync_local(&root, &rel))
        .await
        .map_err(|e| StoreError::Manifest(format!("fsync task: {e}")))?
}

impl ObjectFiles {
    /// Writes an object atomically (staged + rename locally, a single PUT on S3) and durably.
    pub async fn put_durable(&self, path: &str, bytes: Bytes) -> Result<u64, StoreError> {
        let size = bytes.len() as u64;
        self.store
            .put(&ObjectPath::from(path), PutPayload::from_bytes(bytes))
            .await?;
        sync_if_local(self.local_root.clone(), path.to_string()).await?;
        Ok(size)
    }

    /// Starts writing an object in parts (a multipart upload on S3; a staging file renamed into place on a
    /// local disk), for a file bigger than the writer should hold in memory at once.
    pub async fn upload(&self, path: &str) -> Result<Upload, StoreError> {
        let parts = self.store.put_multipart(&ObjectPath::from(path)).await?;
        Ok(Upload {
            parts: WriteMultipart::new_with_chunk_size(parts, UPLOAD_PART_BYTES),
            path: path.to_string(),
            size: 0,
            local_root: self.local_root.clone(),
        })
    }

    pub async fn get(&self, path: &str) -> Result<Bytes, StoreError> {
        Ok(self
            .store
            .get(&ObjectPath::from(path))
            .await?
            .bytes()
            .await?)
    }

    /// Deletes an object; one that is already gone is not an error.
    pub async fn delete(&self, path: &str) -> Result<(), StoreError> {
        match self.store.delete(&ObjectPath::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if let (Some(root), Some((dir, _))) = (&self.local_root, path.rsplit_once('/')) {
            remove_empty_dirs(root, dir);
        }
        Ok(())
    }

    /// Every object under `prefix/`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let prefix = ObjectPath::from(prefix);
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        Ok(metas.into_iter().map(|m| m.location.to_string()).collect())
    }

    /// Local only: files `object_store` stages as `name#N` and never lists; a crash mid-put leaves them.
    pub fn remove_local_staging_leftovers(&self, prefix: &str) -> usize {
        let Some(root) = &self.local_root else {
            return 0;
        };
        let mut removed = 0;
        let mut stack = vec![root.join(prefix)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.contains('#'))
                    && std::fs::remove_file(&path).is_ok()
                {
                    removed += 1;
                }
            }
        }
        removed
    }
}

/// S3 wants parts of at least 5 MiB; 8 MiB keeps the number of parts of a 256 MiB file small.
const UPLOAD_PART_BYTES: usize = 8 * 1024 * 1024;

/// An object being written in parts; durable (as `put_durable` makes it) once `finish` returns. Dropped or
/// aborted unfinished, it never appears under its path: a local staging file left by a crash is removed at
/// the next open.
pub(crate) struct Upload {
    parts: WriteMultipart,
    path: String,
    size: u64,
    local_root: Option<PathBuf>,
}

impl Upload {
    /// Queues `bytes` a part at a time, waiting before each while two parts are still being sent, so what
    /// is in flight stays at a few parts whatever the size of `bytes`.
    pub async fn write(&mut self, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.size += bytes.len() as u64;
        let mut bytes = Bytes::from(bytes);
        while !bytes.is_empty() {
            self.parts.wait_for_capacity(2).await?;
            let part = bytes.split_to(bytes.len().min(UPLOAD_PART_BYTES));
            self.parts.put(part);
        }
        Ok(())
    }

    /// Completes the object and makes it durable; returns its size. A failed part aborts the upload (an
    /// unfinished S3 multipart upload would otherwise keep its parts, billed, until a lifecycle rule).
    pub async fn finish(mut self) -> Result<u64, StoreError> {
        if let Err(e) = self.parts.wait_for_capacity(0).await {
            let _ = self.parts.abort().await;
            return Err(e.into());
        }
        self.parts.finish().await?;
        sync_if_local(self.local_root, self.path).await?;
        Ok(self.size)
    }

    /// Gives up the object (best effort: parts already sent are cleaned up where the store can).
    pub async fn abort(self) {
        if let Err(e) = self.parts.abort().await {
            tracing::warn!(path = %self.path, error = %e, "aborting an upload failed");
        }
    }
}

/// Removes `dir` and then its parents while they are empty, stopping at the table directory (`events`).
pub(crate) fn remove_empty_dirs(root: &Path, dir: &str) {
    let mut rel = dir;
    loop {
        // Never remove the table directory itself (one path segment).
        if !rel.contains('/') {
            break;
        }
        // `remove_dir` fails on a non-empty directory, which is the signal to stop.
        if std::fs::remove_dir(root.join(rel)).is_err() {
            break;
        }
        match rel.rsplit_once('/') {
            Some((parent, _)) => rel = parent,
            None => break,
        }
    }
}
