//! One process per data directory.
//!
//! The WAL, the manifest and the audit chain each assume a single writer: a second process on the same
//! directory (`vigil sql --offline` beside a running server, two servers given one volume) would start its
//! own WAL segment, append its own links to the chain and rewrite the manifest under the first. An
//! advisory lock (`flock`) on `<data_dir>/LOCK`, held for the life of the store, refuses the second opener
//! with the first one's pid. The kernel drops the lock when its holder exits, so a crash leaves nothing to
//! clean up.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::StoreError;

/// Held while the store is open; dropping it unlocks the directory.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

const LOCK_FILE: &str = "LOCK";

/// Locks `data_dir` for this process, or says who holds it.
pub(crate) fn acquire(data_dir: &Path) -> Result<DirLock, StoreError> {
    let path = data_dir.join(LOCK_FILE);
    let io = |source: std::io::Error| StoreError::Wal {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(StoreError::Locked {
                path: data_dir.to_path_buf(),
                holder: holder_of(&holder),
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    // For the message a second opener gets; the lock, not this text, is what excludes it.
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(io)?;
    Ok(DirLock { _file: file })
}

fn holder_of(text: &str) -> String {
    match text.trim() {
        "" => "another process".to_string(),
        pid => format!("process {pid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_opener_is_refused_with_the_holders_pid_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path()).unwrap();
        let err = acquire(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Locked { .. }), "{msg}");
        assert!(
            msg.contains(&format!("process {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        acquire(dir.path()).unwrap();
    }
}
