//! Telling whether a watched file changed without reading it: the token store and the TLS certificates are
//! re-read only when one of these moves, so polling them on every request costs one `stat`.

use std::path::Path;
use std::time::SystemTime;

/// Identifies one version of a file cheaply, so a poll can tell whether it must be re-read. The inode catches
/// a rename-replace that kept size and (coarse) mtime, which is how certificate renewers and editors write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// `None` when the file cannot be looked at (missing, no permission): a later look that succeeds counts as a
/// change.
pub(crate) fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Fingerprint {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rename_replace_of_the_same_size_is_a_new_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cert.pem");
        assert_eq!(fingerprint(&path), None);
        std::fs::write(&path, "aaaa").expect("write");
        let first = fingerprint(&path);
        assert!(first.is_some());
        assert_eq!(fingerprint(&path), first, "nothing changed");
        let next = dir.path().join("cert.pem.new");
        std::fs::write(&next, "bbbb").expect("write");
        std::fs::rename(&next, &path).expect("rename");
        assert_ne!(fingerprint(&path), first);
    }
}
