//! Files named in a configuration or a policy, read safely: regular files only, of bounded size.
//! A FIFO would block its reader for good (a policy update that never ends, a start that never
//! listens), and a device such as /dev/zero never ends (a sidecar that reads it until the kernel
//! kills it, then again on restart). Whoever writes a policy may name any path.

use std::io::{Error, ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The largest key, certificate, trust bundle or JWKS file read (a bundle of hundreds of roots).
pub const MAX_KEY_FILE_BYTES: usize = 1024 * 1024;

/// How many reads of a set of files [`settled`] makes at most before it gives up for now.
const SETTLE_READS: usize = 5;

/// A set of files as one moment's: `first`, read again until two reads in a row agree. A
/// ConfigMap's `..data` swap between the reads of two of its files, or a file being written,
/// gives a set no one wrote (a DENY moved from one file to another was in neither); the next
/// read gives the finished one. `None` when no two reads agreed: something is still writing, and
/// the next look decides. Callers read again only when `first` differs from what they hold.
pub fn settled<T>(first: T, mut read: impl FnMut() -> T, same: impl Fn(&T, &T) -> bool) -> Option<T> {
    let mut last = first;
    for _ in 1..SETTLE_READS {
        let next = read();
        if same(&last, &next) {
            return Some(next);
        }
        last = next;
    }
    None
}

/// The bytes of the regular file at `path`, at most `max_bytes` of them.
pub fn read_regular(path: &Path, max_bytes: usize) -> std::io::Result<Vec<u8>> {
    // O_NONBLOCK: opening a FIFO with no writer would otherwise wait for one.
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > max_bytes as u64 {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("the file has {} bytes, more than the limit of {max_bytes}", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow between the stat and the read: never read more than the limit.
    file.take(max_bytes as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > max_bytes {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("the file has more than the limit of {max_bytes} bytes"),
        ));
    }
    Ok(bytes)
}

/// `path` opened to append a log or events to, created if missing. A FIFO with no reader is an
/// error at once (ENXIO), not a start that waits for one for good; a FIFO being read (a pipe to
/// a log shipper), a character device or a regular file opens as usual.
pub fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    let options = |flags: i32| {
        let mut o = std::fs::OpenOptions::new();
        o.create(true).append(true).custom_flags(flags | libc::O_CLOEXEC);
        o
    };
    // The first open only proves that an open cannot wait; writes go through a blocking one.
    drop(options(libc::O_NONBLOCK).open(path)?);
    options(0).open(path)
}

/// `uri` with the user information of its authority hidden (`https://***@host/x`), for messages.
pub fn uri_without_credentials(uri: &str) -> String {
    // A query may carry a key (`?api_key=...`): shown as `?***`.
    let uri = match uri.find('?') {
        Some(at) => format!("{}?***", &uri[..at]),
        None => uri.to_string(),
    };
    let Some((scheme, rest)) = uri.split_once("://") else { return uri };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => uri,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_of_files_is_taken_once_two_reads_in_a_row_agree() {
        // A ConfigMap swapped between two files' reads: a.yaml new, b.yaml old, then both new.
        let mut reads = ["a2 b2", "a2 b2"].into_iter();
        assert_eq!(settled("a2 b1", || reads.next().unwrap(), |a, b| a == b), Some("a2 b2"));
        // A file still being written at every read: nothing is taken this time.
        let mut growing = 1..;
        assert_eq!(settled(0, || growing.next().unwrap(), |a, b| a == b), None);
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.json");
        std::fs::write(&file, b"{\"keys\":[]}").unwrap();
        assert_eq!(read_regular(&file, 64).unwrap(), b"{\"keys\":[]}");
        assert_eq!(read_regular(&file, 4).unwrap_err().kind(), ErrorKind::InvalidData, "over the limit");
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // Neither blocks: the FIFO has no writer, /dev/zero never ends.
        assert_eq!(read_regular(&fifo, 64).unwrap_err().kind(), ErrorKind::InvalidInput);
        assert_eq!(read_regular(Path::new("/dev/zero"), 64).unwrap_err().kind(), ErrorKind::InvalidInput);
        // A FIFO with no reader is refused at once; a directory too; files and /dev/null open.
        assert!(open_append(&fifo).is_err() && open_append(dir.path()).is_err());
        assert!(open_append(&file).is_ok() && open_append(&dir.path().join("new.log")).is_ok());
        assert!(open_append(Path::new("/dev/null")).is_ok());
    }
}
