//! Resident memory of a long-running process: most of a sidecar's is its own code; what a
//! load adds is heap, measured here for the overload guard ([`Pressure`]).

mod pressure;

#[cfg(test)]
pub use pressure::CUT_AFTER;
pub use pressure::{Cut, CutWait, Pressure};

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
#[allow(unsafe_code)] // see the SAFETY note
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

/// How often freed heap is looked for.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// How much freed heap the allocator may keep, past what the last trim could not return, before
/// it is asked to give it back.
const TRIM_SLACK: u64 = 8 << 20;

/// Hands heap freed after a burst back to the kernel, every [`TRIM_EVERY`], when there is more
/// than [`TRIM_SLACK`] of it, counting the bytes in `returned`. glibc returns only the top of each
/// arena by itself: after 300 callers fetched 256 KB answers at once, a sidecar had 2 MB of heap in
/// use and 51 MB resident, for good, until `malloc_trim` gave back 46 MB of it. A container's
/// working set (what its memory limit and the OOM killer see) keeps such pages too. What is
/// returned is counted in `palisade_memory_returned_bytes_total`, registered in `registry`.
pub fn return_freed_heap_periodically(registry: &prometheus::Registry, mut stop: tokio::sync::watch::Receiver<bool>) {
    if heap_in_use().is_none() || resident_anonymous().is_none() {
        return;
    }
    let returned = prometheus::IntCounter::new(
        "palisade_memory_returned_bytes_total",
        "Freed heap handed back to the kernel after a burst (glibc's malloc_trim), bytes.",
    )
    .expect("metric");
    registry.register(Box::new(returned.clone())).expect("metric registers once");
    tokio::spawn(async move {
        let mut every = tokio::time::interval(TRIM_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trimming = Trimming::default();
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            let (Some(resident), Some(heap)) = (resident_anonymous(), heap_in_use()) else { return };
            if !trimming.due(resident, heap) {
                continue;
            }
            let Ok(Some((after, heap))) = tokio::task::spawn_blocking(|| {
                trim();
                resident_anonymous().zip(heap_in_use())
            })
            .await
            else {
                return;
            };
            tracing::debug!(before = resident, after, heap, "freed heap handed back to the kernel");
            returned.inc_by(resident.saturating_sub(after));
            trimming.trimmed(after, heap);
        }
    });
}

/// When to trim: the resident memory that is not heap in use (freed pages the allocator keeps,
/// and a little that is never heap: stacks, writable data) has grown by [`TRIM_SLACK`] past what
/// the last trim left, or, before any trim, past nothing.
#[derive(Debug, Default)]
struct Trimming {
    /// What the last trim could not return (pages part in use, stacks); lowered whenever the
    /// gap falls below it by other means, so the bar never stays above what is kept now.
    kept: u64,
}

impl Trimming {
    fn due(&mut self, resident: u64, heap: u64) -> bool {
        let freed = resident.saturating_sub(heap);
        self.kept = self.kept.min(freed);
        freed > self.kept + TRIM_SLACK
    }

    fn trimmed(&mut self, resident: u64, heap: u64) {
        self.kept = resident.saturating_sub(heap);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // see the SAFETY note
fn trim() {
    // SAFETY: malloc_trim takes a size and returns an int; it walks glibc's arenas under their
    // own locks and only advises the kernel about pages no allocation holds.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// This process's resident anonymous memory, bytes (`RssAnon` of `/proc/self/status`: the
/// resident size without the code's file pages; kept as a counter by the kernel, cheap to read).
fn resident_anonymous() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("RssAnon:"))?;
    let kb = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kb * 1024)
}

/// Bytes the allocator has handed out and not had back (glibc's `mallinfo2`: in use in its
/// arenas plus its own mappings), or `None` where that is not known (another C library). Not
/// the resident size: freed memory the allocator keeps for reuse is not counted, so the figure
/// falls as soon as buffers are released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // see the SAFETY note
pub fn heap_in_use() -> Option<u64> {
    // SAFETY: mallinfo2 takes no arguments, only reads the allocator's statistics under its own
    // locks and returns a plain struct by value (glibc 2.33 and later; Debian 12 has 2.36).
    let info = unsafe { libc::mallinfo2() };
    Some((info.uordblks + info.hblkhd) as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap_in_use() -> Option<u64> {
    None
}

/// The memory limit of this process's container (cgroup v2 `memory.max`, or v1
/// `memory.limit_in_bytes`), if it has one.
pub fn container_memory_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |path: String| std::fs::read_to_string(path).ok();
    cgroup_memory_limit(&cgroups, read)
}

/// [`container_memory_limit`] from `/proc/self/cgroup`'s text, reading files through `read`.
/// The process's own cgroup is looked at first, then the root of the mount (inside a container
/// with a cgroup namespace the two are the same).
fn cgroup_memory_limit(cgroups: &str, read: impl Fn(String) -> Option<String>) -> Option<u64> {
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let path = path.trim_end_matches('/');
        let candidates = match controllers {
            "" => [format!("/sys/fs/cgroup{path}/memory.max"), "/sys/fs/cgroup/memory.max".to_string()],
            c if c.split(',').any(|c| c == "memory") => [
                format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"),
                "/sys/fs/cgroup/memory/memory.limit_in_bytes".to_string(),
            ],
            _ => continue,
        };
        for file in candidates {
            let Some(text) = read(file) else { continue };
            // "max" (v2) or a page-rounded i64::MAX (v1): no limit.
            return text.trim().parse::<u64>().ok().filter(|&bytes| bytes < 1 << 60);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn freed_heap_is_trimmed_once_it_outgrows_what_the_last_trim_kept_by_the_slack() {
        const MB: u64 = 1 << 20;
        let mut trimming = super::Trimming::default();
        // At rest: stacks and such beside a small heap.
        assert!(!trimming.due(3 * MB, MB));
        // After a burst: 50 MB freed and kept by the allocator.
        assert!(trimming.due(52 * MB, 2 * MB));
        // The trim could not return 5 MB of it (pages part in use): not trimmed again for that.
        trimming.trimmed(7 * MB, 2 * MB);
        assert!(!trimming.due(7 * MB, 2 * MB));
        assert!(!trimming.due(12 * MB, 2 * MB), "5 MB more: under the slack");
        assert!(trimming.due(16 * MB, 2 * MB), "9 MB more");
        // What was kept went back by itself (the heap's top): the bar comes down with it.
        assert!(!trimming.due(3 * MB, 2 * MB));
        assert!(trimming.due(12 * MB, 2 * MB), "9 MB past what is kept now");
        // Heap in use is not freed memory, however much of it there is.
        assert!(!trimming.due(300 * MB, 297 * MB));
    }

    #[test]
    fn a_trim_hands_back_freed_heap_that_glibc_keeps_by_itself() {
        if super::heap_in_use().is_none() {
            return;
        }
        // In a process of its own: other tests of this binary allocate meanwhile, reusing the
        // freed pieces before they are measured (it failed so on a busy machine).
        const CHILD: &str = "PALISADE_TRIM_TEST_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let name = "memory::tests::a_trim_hands_back_freed_heap_that_glibc_keeps_by_itself";
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--test-threads=1", "--nocapture"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && said.contains("1 passed"), "{said}");
            return;
        }
        const MB: u64 = 1 << 20;
        // 32 MB in pieces glibc takes from its arena (not mappings of their own), each held in
        // place by a small piece allocated after it, then freed: free chunks between pieces in
        // use, which glibc keeps resident until trimmed (a free chunk at an arena's top, or a
        // heap left wholly free, it returns by itself).
        let mut seen = Vec::new();
        let returned = (0..5).any(|_| {
            let (pieces, pins): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
                (0..1024).map(|_| (vec![1u8; 32 * 1024], vec![1u8; 64])).unzip();
            drop(pieces);
            let before = super::resident_anonymous().unwrap();
            super::trim();
            let after = super::resident_anonymous().unwrap();
            drop(pins);
            seen.push((before / MB, after / MB));
            before > after + 16 * MB
        });
        assert!(returned, "resident MB before and after each trim: {seen:?}");
    }

    #[test]
    fn resident_anonymous_memory_is_read() {
        let resident = super::resident_anonymous().expect("Linux has RssAnon in /proc/self/status");
        assert!(resident > 0 && resident < 1 << 40, "{resident}");
    }

    #[test]
    fn the_heap_in_use_grows_with_a_buffer_and_falls_when_it_is_freed() {
        if super::heap_in_use().is_none() {
            return;
        }
        // The heap is the process's: another test of this binary may free tens of MB between two
        // readings (the YAML and catalog tests do), so a reading is tried again, a bounded number
        // of times, until one shows the buffer both counted and given back.
        let mut seen = Vec::new();
        let grew_and_fell = (0..20).any(|_| {
            let before = super::heap_in_use().unwrap();
            let buffer = vec![1u8; 64 << 20];
            let during = super::heap_in_use().unwrap();
            drop(std::hint::black_box(buffer));
            let after = super::heap_in_use().unwrap();
            seen.push((before, during, after));
            during >= before + (48 << 20) && after <= during - (48 << 20)
        });
        assert!(grew_and_fell, "before, during, after: {seen:?}");
    }

    #[test]
    fn a_container_limit_is_read_from_cgroup_v2_or_v1_and_none_means_none() {
        let files = |found: &'static [(&'static str, &'static str)]| {
            move |path: String| found.iter().find(|(p, _)| *p == path).map(|(_, text)| text.to_string())
        };
        let v2 = "0::/kubepods/pod1/c1\n";
        let own = files(&[("/sys/fs/cgroup/kubepods/pod1/c1/memory.max", "268435456\n")]);
        assert_eq!(super::cgroup_memory_limit(v2, own), Some(268435456));
        let namespaced = files(&[("/sys/fs/cgroup/memory.max", "134217728\n")]);
        assert_eq!(super::cgroup_memory_limit("0::/\n", namespaced), Some(134217728));
        assert_eq!(super::cgroup_memory_limit("0::/\n", files(&[("/sys/fs/cgroup/memory.max", "max\n")])), None);
        let v1 = "4:memory:/process_api/x\n0::/\n";
        let unlimited = files(&[("/sys/fs/cgroup/memory/process_api/x/memory.limit_in_bytes", "9223372036854771712")]);
        assert_eq!(super::cgroup_memory_limit(v1, unlimited), None);
        let limited = files(&[("/sys/fs/cgroup/memory/memory.limit_in_bytes", "536870912")]);
        assert_eq!(super::cgroup_memory_limit("5:cpuacct,memory:/a\n", limited), Some(536870912));
        assert_eq!(super::cgroup_memory_limit("1:cpu:/\n", files(&[])), None, "no memory controller");
    }

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
