//! Resident memory of a long-running process: most of a sidecar's is its own code.

/// [`release_startup_pages`] on the blocking pool, so the first requests need not wait for it.
/// Call it from the runtime once the process is ready.
pub fn release_startup_pages_soon() {
    tokio::task::spawn_blocking(|| {
        if let Err(e) = release_startup_pages() {
            tracing::debug!(error = %e, "start-up pages stay resident");
        }
    });
}

/// Hands the pages of the executable touched only while starting (configuration parsing,
/// certificate loading, the CLI) back to the kernel once the process is ready, and returns how
/// many bytes of mappings it advised. Start-up touches code spread across the binary that the
/// data path never runs again, and every fault maps its neighbours too; the pages the data path
/// does need fault back in from the page cache (minor faults, no I/O).
#[allow(unsafe_code)] // the one unsafe call in the crate: see the SAFETY note
pub fn release_startup_pages() -> std::io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.to_string_lossy();
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for line in maps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        // Only the read-only and executable mappings of the binary: clean file pages.
        if perms.contains('w') || !line.ends_with(exe.as_ref()) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
            continue;
        };
        // SAFETY: advice about a read-only file mapping of our own executable, page-aligned as
        // /proc/self/maps lists it. MADV_PAGEOUT drops page-table entries and reclaims clean
        // pages; their contents never change, and the next access faults them back in.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        advised += end - start;
    }
    Ok(advised)
}

#[cfg(test)]
mod tests {
    /// Resident kB of this test binary's own read-only mappings.
    fn resident_code_kb() -> u64 {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut ours = false;
        let mut total = 0;
        for line in smaps.lines() {
            if line.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) && line.contains('-') {
                let perms = line.split_ascii_whitespace().nth(1).unwrap_or("");
                ours = line.ends_with(exe.to_string_lossy().as_ref()) && !perms.contains('w');
            } else if ours {
                if let Some(kb) = line.strip_prefix("Rss:") {
                    total += kb.trim().trim_end_matches(" kB").trim().parse::<u64>().unwrap();
                }
            }
        }
        total
    }

    #[test]
    fn startup_pages_leave_and_the_code_still_runs() {
        let before = resident_code_kb();
        match super::release_startup_pages() {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                eprintln!("this kernel has no MADV_PAGEOUT (before Linux 5.4): nothing to measure");
            }
            Err(e) => panic!("madvise failed: {e}"),
            Ok(advised) => {
                assert!(advised > 0, "the executable's mappings were found");
                let after = resident_code_kb();
                assert!(after < before, "resident code {before} kB -> {after} kB");
            }
        }
        // Code that start-up ran, and that was paged out with the rest, runs again: its pages
        // come back from the page cache on use.
        let documents = crate::yaml::parse("a: [1, {b: c}]\n", &crate::yaml::Limits::FILE).unwrap();
        assert_eq!(documents[0].root.find("a[1].b").and_then(crate::yaml::Node::as_str), Some("c"));
        let policy = crate::policy::parse_file(
            std::path::Path::new("p.yaml"),
            "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: p, namespace: shop}\n",
        );
        assert_eq!((policy.0.len(), policy.1.len()), (1, 0));
    }
}
