//! When to read a set of certificate files again: when any of them changed since the set in
//! force was read. A set that did not load is reported once and tried again at every look,
//! quietly, until it loads or changes: a certificate issued a few seconds ahead of this clock
//! is taken once it is valid, and a key written after its certificate once it comes.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

use super::TlsError;

/// One file as a reload sees it: changed when its time, length or inode did (a Secret's
/// `..data` swap changes the inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamps<const N: usize>(paths: [&Path; N]) -> [FileStamp; N] {
    paths.map(|path| match std::fs::metadata(path) {
        Ok(m) => FileStamp { modified: m.modified().ok(), len: m.len(), inode: m.ino() },
        Err(_) => FileStamp::default(),
    })
}

/// The stamps of `N` files: of the set in force, and of a set that did not load.
#[derive(Debug)]
pub(crate) struct Reload<const N: usize> {
    installed: [FileStamp; N],
    failed: Option<[FileStamp; N]>,
}

impl<const N: usize> Reload<N> {
    /// The files as they are now, read into the set in force.
    pub(crate) fn read_now(paths: [&Path; N]) -> Self {
        Reload { installed: stamps(paths), failed: None }
    }

    /// Runs `load` when the files changed since the set in force was read, or when the set
    /// that changed them did not load: `Ok(Some)` when it loaded, its error the first time it
    /// fails for these files, `Ok(None)` otherwise.
    pub(crate) fn look<T>(
        &mut self,
        paths: [&Path; N],
        load: impl FnOnce() -> Result<T, TlsError>,
    ) -> Result<Option<T>, TlsError> {
        let now = stamps(paths);
        if self.installed == now {
            return Ok(None);
        }
        let first_try = self.failed != Some(now);
        match load() {
            Ok(loaded) => {
                *self = Reload { installed: now, failed: None };
                Ok(Some(loaded))
            }
            Err(e) => {
                self.failed = Some(now);
                match first_try {
                    true => Err(e),
                    false => Ok(None),
                }
            }
        }
    }
}
