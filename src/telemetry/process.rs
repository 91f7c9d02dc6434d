//! The standard `process_*` metrics, read from `/proc/self` at each scrape.
//!
//! The prometheus crate's own collector reports `process_cpu_seconds_total` in whole seconds, so
//! `rate()` over a sidecar using a tenth of a core reads 0 for most of a minute and then a jump;
//! Linkerd's proxy and Go's client report fractions. This one reports the kernel's ticks (10 ms).

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, Opts};

/// `/proc` reports CPU times and start times in USER_HZ, which the kernel fixes at 100 on every
/// architecture the image is built for (x86_64, aarch64), whatever its internal tick rate.
const USER_HZ: f64 = 100.0;

pub struct ProcessMetrics {
    descs: Vec<Desc>,
    cpu_seconds: Counter,
    /// Serialises two scrapes' read-then-add on the counter, which would otherwise add twice.
    cpu_update: Mutex<()>,
    open_fds: Gauge,
    max_fds: Gauge,
    virtual_bytes: Gauge,
    resident_bytes: Gauge,
    start_time: Gauge,
    threads: Gauge,
}

/// What `/proc/self/stat` says of the process, in its own units.
#[derive(Debug, PartialEq)]
struct Stat {
    cpu_ticks: u64,
    threads: u64,
    start_ticks_after_boot: u64,
    virtual_bytes: u64,
}

impl ProcessMetrics {
    pub fn new() -> Self {
        let counter = |name: &str, help: &str| Counter::with_opts(Opts::new(name, help)).expect("metric");
        let gauge = |name: &str, help: &str| Gauge::with_opts(Opts::new(name, help)).expect("metric");
        let metrics = ProcessMetrics {
            descs: Vec::new(),
            cpu_seconds: counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds."),
            cpu_update: Mutex::new(()),
            open_fds: gauge("process_open_fds", "Number of open file descriptors."),
            max_fds: gauge("process_max_fds", "Maximum number of open file descriptors."),
            virtual_bytes: gauge("process_virtual_memory_bytes", "Virtual memory size in bytes."),
            resident_bytes: gauge("process_resident_memory_bytes", "Resident memory size in bytes."),
            start_time: gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds."),
            threads: gauge("process_threads", "Number of OS threads in the process."),
        };
        if let (Some(stat), Some(boot)) = (read_stat(), boot_time()) {
            metrics.start_time.set(boot as f64 + stat.start_ticks_after_boot as f64 / USER_HZ);
        }
        let descs = metrics.parts().iter().flat_map(|m| m.desc()).cloned().collect();
        ProcessMetrics { descs, ..metrics }
    }

    fn parts(&self) -> [&dyn Collector; 7] {
        [
            &self.cpu_seconds,
            &self.open_fds,
            &self.max_fds,
            &self.virtual_bytes,
            &self.resident_bytes,
            &self.start_time,
            &self.threads,
        ]
    }
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Some(stat) = read_stat() {
            let seconds = stat.cpu_ticks as f64 / USER_HZ;
            let _one_scrape = self.cpu_update.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let past = self.cpu_seconds.get();
            if seconds > past {
                self.cpu_seconds.inc_by(seconds - past);
            }
            self.threads.set(stat.threads as f64);
            self.virtual_bytes.set(stat.virtual_bytes as f64);
        }
        if let Some(kb) = std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(resident_kb) {
            self.resident_bytes.set((kb * 1024) as f64);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // The directory's own descriptor, open while it is read, is one of them.
            self.open_fds.set(fds.count().saturating_sub(1) as f64);
        }
        if let Some(max) = std::fs::read_to_string("/proc/self/limits").ok().as_deref().and_then(max_open_files) {
            self.max_fds.set(max as f64);
        }
        self.parts().iter().flat_map(|m| m.collect()).collect()
    }
}

fn read_stat() -> Option<Stat> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// proc(5)'s fields, counted from 1; the command name (field 2) is in parentheses and may
/// itself hold blanks and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_ascii_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n.checked_sub(3)?)?.parse().ok() };
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        threads: field(20)?,
        start_ticks_after_boot: field(22)?,
        virtual_bytes: field(23)?,
    })
}

fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

fn resident_kb(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// The soft limit; "unlimited" leaves the gauge unset, as nothing finite describes it.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_ascii_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis_of_the_command_name() {
        let text = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 3303 0 0 0 1234 56 0 0 20 0 3 0 98765 \
                    123456789 2800 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(text),
            Some(Stat { cpu_ticks: 1290, threads: 3, start_ticks_after_boot: 98765, virtual_bytes: 123456789 })
        );
        assert_eq!(parse_stat("4242 (cut short) S 1 2"), None);
        assert_eq!(parse_stat("no name at all"), None);
    }

    #[test]
    fn resident_size_and_the_descriptor_limit_are_read_from_their_lines() {
        assert_eq!(resident_kb("Name:\tpalisade\nVmHWM:\t  14000 kB\nVmRSS:\t   12345 kB\n"), Some(12345));
        assert_eq!(resident_kb("Name:\tkthreadd\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(max_open_files("Max open files            unlimited            unlimited            files\n"), None);
    }

    #[test]
    fn cpu_seconds_are_the_kernels_ticks_with_their_fraction() {
        let metrics = ProcessMetrics::new();
        let before = read_stat().expect("/proc/self/stat").cpu_ticks;
        // Work enough for several ticks, so that the reading is not zero.
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let families = metrics.collect();
        let after = read_stat().expect("/proc/self/stat").cpu_ticks;
        let cpu = families.iter().find(|f| f.name() == "process_cpu_seconds_total").expect("cpu family");
        let seconds = cpu.get_metric()[0].get_counter().get_value();
        assert!(
            before as f64 / USER_HZ <= seconds && seconds <= after as f64 / USER_HZ,
            "{before} <= {seconds} * 100 <= {after}"
        );
        assert!(seconds > 0.0);
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        for name in
            ["process_open_fds", "process_resident_memory_bytes", "process_start_time_seconds", "process_threads"]
        {
            let family = families.iter().find(|f| f.name() == name).unwrap_or_else(|| panic!("{name} in {names:?}"));
            assert!(family.get_metric()[0].get_gauge().get_value() > 0.0, "{name}");
        }
    }
}
