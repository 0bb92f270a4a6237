//! One writer per object-store prefix.
//!
//! The data directory's lock (`dir_lock`) keeps a second process off one WAL, but two servers with data
//! directories of their own and one S3 prefix (instances scaled out with a shared config, `vigil sql
//! --offline` on another host) would each rewrite `_manifest.json`, and each would delete the other's new
//! Parquet files as a crash's orphans when it opens: acknowledged rows lost. So the first store to open a
//! remote prefix claims it in `_writer.json` with its data directory's instance id (`<data_dir>/INSTANCE`,
//! made once), and a store with another id is refused with the holder's name. The same data directory
//! (a restart, a crash) takes its claim back. A local object store is the data directory itself: its lock
//! is enough.

use std::path::Path;

use object_store::path::Path as ObjectPath;
use object_store::{PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::object_files::ObjectFiles;
use crate::StoreError;

pub(crate) const CLAIM_PATH: &str = "_writer.json";
const INSTANCE_FILE: &str = "INSTANCE";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Claim {
    instance: String,
    data_dir: String,
    host: Option<String>,
    claimed_at: String,
}

/// The data directory's instance id, created on first use.
fn instance_id(data_dir: &Path) -> Result<String, StoreError> {
    let path = data_dir.join(INSTANCE_FILE);
    let io = |source: std::io::Error| StoreError::Wal {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let id = uuid::Uuid::now_v7().to_string();
    std::fs::write(&path, format!("{id}\n")).map_err(io)?;
    Ok(id)
}

/// Claims the object store's prefix for the store in `data_dir`, or says who holds it.
pub(crate) async fn claim(objects: &ObjectFiles, data_dir: &Path) -> Result<(), StoreError> {
    if objects.local_root.is_some() {
        return Ok(());
    }
    let ours = Claim {
        instance: instance_id(data_dir)?,
        data_dir: data_dir.display().to_string(),
        host: std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()),
        claimed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let path = ObjectPath::from(CLAIM_PATH);
    let body = serde_json::to_vec_pretty(&ours)
        .map_err(|e| StoreError::Manifest(format!("serialize {CLAIM_PATH}: {e}")))?;
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match objects
        .store
        .put_opts(&path, PutPayload::from(body.clone()), create)
        .await
    {
        Ok(_) => return Ok(()),
        // Stores without conditional puts (S3 with `conditional_put` disabled): read, then write.
        Err(object_store::Error::AlreadyExists { .. })
        | Err(object_store::Error::NotImplemented { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let held = match objects.get(CLAIM_PATH).await {
        Ok(bytes) => serde_json::from_slice::<Claim>(&bytes).ok(),
        Err(StoreError::ObjectStore(object_store::Error::NotFound { .. })) => None,
        Err(e) => return Err(e),
    };
    match held {
        Some(h) if h.instance != ours.instance => Err(StoreError::PrefixClaimed {
            holder: format!(
                "the store of data directory {} (instance {}{}, since {})",
                h.data_dir,
                h.instance,
                h.host.map(|x| format!(" on {x}")).unwrap_or_default(),
                h.claimed_at
            ),
        }),
        _ => objects
            .put_durable(CLAIM_PATH, body.into())
            .await
            .map(|_| ()),
    }
}
