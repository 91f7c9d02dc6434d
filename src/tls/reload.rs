//! When to read a set of certificate files again: when any of them changed since the set in
//! force was read. A set that did not load is tried again at every look until it loads or
//! changes: a certificate issued a few seconds ahead of this clock is taken once it is valid,
//! and a key written after its certificate once it comes. Its failure is reported once, and
//! only when the files held still for a look: a writer that puts the key, then the certificate,
//! in place is caught between the two by some look, and that half-written set is no failure.

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
    failed: Option<Failed<N>>,
}

#[derive(Debug)]
struct Failed<const N: usize> {
    stamps: [FileStamp; N],
    reported: bool,
}

impl<const N: usize> Reload<N> {
    /// The files as they are now, read into the set in force.
    pub(crate) fn read_now(paths: [&Path; N]) -> Self {
        Reload { installed: stamps(paths), failed: None }
    }

    /// Runs `load` when the files changed since the set in force was read, or when the set
    /// that changed them did not load: `Ok(Some)` when it loaded; its error when it failed for
    /// these files at the last look too and was not reported yet; `Ok(None)` otherwise.
    pub(crate) fn look<T>(
        &mut self,
        paths: [&Path; N],
        load: impl FnOnce() -> Result<T, TlsError>,
    ) -> Result<Option<T>, TlsError> {
        let now = stamps(paths);
        if self.installed == now {
            return Ok(None);
        }
        match (load(), &mut self.failed) {
            (Ok(loaded), _) => {
                *self = Reload { installed: now, failed: None };
                Ok(Some(loaded))
            }
            (Err(e), Some(failed)) if failed.stamps == now && !failed.reported => {
                failed.reported = true;
                Err(e)
            }
            (Err(_), Some(failed)) if failed.stamps == now => Ok(None),
            (Err(_), _) => {
                self.failed = Some(Failed { stamps: now, reported: false });
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Result<(), TlsError> {
        Err(TlsError::Identity { path: "tls.key".into(), reason: "does not match the certificate".into() })
    }

    /// A certificate and a key, as read into the set in force.
    fn files_in_force() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf, Reload<2>) {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, "old certificate").unwrap();
        std::fs::write(&key, "old key").unwrap();
        let reload = Reload::read_now([&cert, &key]);
        (dir, cert, key, reload)
    }

    #[test]
    fn a_set_caught_halfway_through_its_writing_is_not_reported() {
        let (_dir, cert, key, mut reload) = files_in_force();
        assert!(reload.look([&cert, &key], || Ok(())).unwrap().is_none(), "nothing changed, nothing loaded");

        // The key is in place, its certificate not yet: a look between the two says nothing.
        // (Lengths differ: a rewrite within one tick of the clock keeps the time.)
        std::fs::write(&key, "the new key").unwrap();
        assert!(reload.look([&cert, &key], refused).unwrap().is_none());
        // The certificate follows and the set loads: no failure was ever reported.
        std::fs::write(&cert, "new certificate, a little longer").unwrap();
        assert!(reload.look([&cert, &key], || Ok(())).unwrap().is_some());
    }

    #[test]
    fn a_set_that_holds_still_and_does_not_load_is_reported_once_then_tried_quietly() {
        let (_dir, cert, key, mut reload) = files_in_force();
        std::fs::write(&cert, "a certificate not valid yet").unwrap();
        assert!(reload.look([&cert, &key], refused).unwrap().is_none(), "maybe midway");
        assert!(reload.look([&cert, &key], refused).is_err(), "held still: reported");
        let mut tried = 0;
        for _ in 0..3 {
            let outcome = reload.look([&cert, &key], || {
                tried += 1;
                refused()
            });
            assert!(outcome.unwrap().is_none(), "reported once only");
        }
        assert_eq!(tried, 3, "tried at every look");
        // Valid now, with no other change to the files: taken.
        assert!(reload.look([&cert, &key], || Ok(())).unwrap().is_some());
        assert!(reload.look([&cert, &key], || Ok(())).unwrap().is_none(), "nothing more to take");
        // A new failure after that is a new failure.
        std::fs::write(&key, "a broken key, written on its own").unwrap();
        assert!(reload.look([&cert, &key], refused).unwrap().is_none());
        assert!(reload.look([&cert, &key], refused).is_err());
    }
}
