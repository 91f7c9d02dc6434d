//! Files named in a configuration or a policy, read safely: regular files only, of bounded size.
//! A FIFO would block its reader for good (a policy update that never ends, a start that never
//! listens), and a device such as /dev/zero never ends (a sidecar that reads it until the kernel
//! kills it, then again on restart). Whoever writes a policy may name any path.

use std::io::{Error, ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The largest key, certificate, trust bundle or JWKS file read (a bundle of hundreds of roots).
pub const MAX_KEY_FILE_BYTES: usize = 1024 * 1024;

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

/// Whether `path` may be opened to write a log or events to: a regular file, a new one, or a
/// character device such as /dev/null; not a FIFO (opening one for writing waits for a reader,
/// for good), a socket, a block device or a directory. The standard streams are the sinks
/// `stdout` and `stderr`, not their paths.
pub fn check_writable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() && !meta.file_type().is_char_device() => Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (use the stdout or stderr sink for those streams)",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(check_writable(&fifo).is_err() && check_writable(dir.path()).is_err());
        assert!(check_writable(&file).is_ok() && check_writable(&dir.path().join("new.log")).is_ok());
        assert!(check_writable(Path::new("/dev/null")).is_ok(), "a character device never blocks an open");
    }
}
