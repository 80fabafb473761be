//! CPU time and memory of a process, read from Linux `/proc`.
//!
//! CPU comes from `/proc/PID/stat` (`utime` + `stime`, every thread of the process, in clock
//! ticks; `cutime` + `cstime` add children that were waited for). Memory comes from
//! `/proc/PID/status` (`VmRSS`, `VmHWM`); `/proc/PID/clear_refs` resets the peak. Reading `/proc` avoids `getrusage(2)`, which Rust
//! can only reach through `unsafe` FFI, and works the same for our own process and the daemon.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::BenchError;

/// CPU time consumed by a process, as `/proc/PID/stat` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    /// User-mode time of the process (all threads), in clock ticks.
    pub utime: u64,
    /// Kernel-mode time of the process (all threads), in clock ticks.
    pub stime: u64,
    /// User-mode time of waited-for children.
    pub cutime: u64,
    /// Kernel-mode time of waited-for children.
    pub cstime: u64,
}

impl CpuTicks {
    /// The process's own time (user + system), excluding children.
    pub fn own(&self) -> u64 {
        self.utime + self.stime
    }

    /// The process's own time plus that of its waited-for children.
    pub fn with_children(&self) -> u64 {
        self.own() + self.cutime + self.cstime
    }
}

/// Memory figures from `/proc/PID/status`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss: u64,
    /// Peak resident set size since the process started (`VmHWM`).
    pub peak_rss: u64,
}

/// Parses the contents of `/proc/PID/stat`.
///
/// The second field (the command name) is in parentheses and may itself contain spaces and
/// parentheses, so fields are counted from the *last* closing parenthesis.
pub fn parse_stat(text: &str) -> Option<CpuTicks> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: state (field 3), ppid (4), ... utime is field 14.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(CpuTicks {
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}

/// The command name in the contents of a `/proc/PID/stat` or `/proc/PID/task/TID/stat` file
/// (for a thread: its name, truncated by the kernel to 15 bytes).
pub fn parse_stat_name(text: &str) -> Option<&str> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    text.get(open + 1..close)
}

/// Parses the contents of `/proc/PID/status` for `VmRSS` and `VmHWM` (reported in kB).
pub fn parse_status(text: &str) -> Option<Memory> {
    let kb = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .map(|n| n * 1024)
    };
    Some(Memory {
        rss: kb("VmRSS:")?,
        peak_rss: kb("VmHWM:")?,
    })
}

fn proc_path(pid: Option<u32>, file: &str) -> PathBuf {
    match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/{file}")),
        None => PathBuf::from(format!("/proc/self/{file}")),
    }
}

fn read_proc(path: PathBuf) -> Result<String, BenchError> {
    std::fs::read_to_string(&path).map_err(|source| BenchError::Io {
        what: format!("read {}", path.display()),
        source,
    })
}

/// CPU ticks of process `pid` (`None`: this process).
pub fn cpu_ticks(pid: Option<u32>) -> Result<CpuTicks, BenchError> {
    let path = proc_path(pid, "stat");
    let text = read_proc(path.clone())?;
    parse_stat(&text).ok_or(BenchError::ProcFormat { path })
}

/// Memory of process `pid` (`None`: this process).
pub fn memory(pid: Option<u32>) -> Result<Memory, BenchError> {
    let path = proc_path(pid, "status");
    let text = read_proc(path.clone())?;
    parse_status(&text).ok_or(BenchError::ProcFormat { path })
}

/// Resets the peak resident set size (`VmHWM`) of process `pid` to its current RSS, by writing
/// `5` to `/proc/PID/clear_refs` (Linux 4.0 and later; allowed for one's own processes), so
/// that a later `VmHWM` is the peak of what ran in between rather than since start.
pub fn reset_peak_rss(pid: Option<u32>) -> Result<(), BenchError> {
    let path = proc_path(pid, "clear_refs");
    std::fs::write(&path, b"5").map_err(|source| BenchError::Io {
        what: format!("write {}", path.display()),
        source,
    })
}

/// CPU ticks (user + system) of every live thread of process `pid`, summed per thread name.
/// Threads that ended are missing, so the sum can be below the process's total; it shows
/// which kind of thread is busy, not an exact split.
pub fn thread_ticks(pid: u32) -> Result<BTreeMap<String, u64>, BenchError> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let entries =
        std::fs::read_dir(&dir).map_err(BenchError::io(format!("list {}", dir.display())))?;
    let mut by_name = BTreeMap::new();
    for entry in entries.flatten() {
        // A thread may end between listing and reading: skip it.
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let (Some(name), Some(ticks)) = (parse_stat_name(&text), parse_stat(&text)) {
            *by_name.entry(name.to_owned()).or_insert(0) += ticks.own();
        }
    }
    Ok(by_name)
}

/// Clock ticks per second (`CLK_TCK`), asked of `getconf` once. Linux has used 100 on every
/// mainstream architecture for decades, which is the fallback if `getconf` is missing.
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// Converts a tick count to a duration.
pub fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / per_second.max(1) as f64)
}

/// Facts about the machine for the report: CPU count, CPU model, kernel release.
pub fn machine() -> (usize, String, String) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    (cpus, model, kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parentheses_in_the_name() {
        let line = "4242 (md d) (x)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    731 112 5 7 20 0 9 0 123456 987654321 4321 18446744073709551615 \
                    0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let t = parse_stat(line).unwrap();
        assert_eq!(
            t,
            CpuTicks {
                utime: 731,
                stime: 112,
                cutime: 5,
                cstime: 7
            }
        );
        assert_eq!(t.own(), 843);
        assert_eq!(parse_stat_name(line), Some("md d) (x)"));
        assert_eq!(
            parse_stat_name("7 (mdm-store-write) S 1"),
            Some("mdm-store-write")
        );
        assert_eq!(t.with_children(), 855);
        assert!(parse_stat("12 (truncated) S 1 2").is_none());
        assert!(parse_stat("no parenthesis").is_none());
    }

    #[test]
    fn status_memory_lines() {
        let text = "Name:\tmdmd\nVmPeak:\t  900000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\nThreads:\t5\n";
        assert_eq!(
            parse_status(text),
            Some(Memory {
                rss: 40960 * 1024,
                peak_rss: 51200 * 1024
            })
        );
        assert!(parse_status("Name:\tkthreadd\n").is_none());
    }

    #[test]
    fn this_process_is_readable_and_consistent() {
        let before = cpu_ticks(None).unwrap();
        // Burn a little CPU so the counters have something to show on a slow tick.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = cpu_ticks(None).unwrap();
        assert!(after.own() >= before.own());
        let threads = thread_ticks(std::process::id()).unwrap();
        assert!(!threads.is_empty());
        let mem = memory(None).unwrap();
        assert!(mem.rss > 0 && mem.peak_rss >= mem.rss);
        assert!(clock_ticks_per_second() > 0);
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
    }

    #[test]
    fn the_peak_rss_can_be_reset() {
        // Touch 64 MiB and free it, so the peak is well above what stays resident.
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        drop(big);
        let before = memory(None).unwrap();
        assert!(before.peak_rss >= 64 << 20, "{before:?}");
        reset_peak_rss(None).unwrap();
        let after = memory(None).unwrap();
        // Other tests run in parallel threads of this process, so allow them some growth.
        assert!(
            after.peak_rss + (32 << 20) < before.peak_rss,
            "{before:?} then {after:?}"
        );
    }
}
