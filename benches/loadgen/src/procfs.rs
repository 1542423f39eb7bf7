//! The proxy's CPU time and memory, from /proc.

use std::time::Instant;

/// CPU time (user + system) of every process in `pids`, in seconds.
/// /proc/PID/stat counts every thread of the process, live or exited.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let tck = clock_ticks_per_second();
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The command name may contain spaces; fields resume after ')'.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // After ')': state is field 3, so utime (14) is index 11, stime (15) index 12.
            let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
            let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
            (utime + stime) as f64 / tck
        })
        .sum()
}

/// Resident set size of every process in `pids`, in KiB (VmRSS).
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        })
        .sum()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if tck > 0 {
        tck as f64
    } else {
        100.0
    }
}

/// Raise the open-file limit to the hard limit (idle holds thousands).
pub fn raise_nofile_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// CPU time and wall clock at one instant, to difference later.
pub struct Window {
    pids: Vec<u32>,
    cpu: f64,
    wall: Instant,
}

impl Window {
    pub fn start(pids: &[u32]) -> Window {
        Window {
            pids: pids.to_vec(),
            cpu: cpu_seconds(pids),
            wall: Instant::now(),
        }
    }

    /// (proxy CPU seconds, wall seconds) since `start`.
    pub fn finish(&self) -> (f64, f64) {
        (
            cpu_seconds(&self.pids) - self.cpu,
            self.wall.elapsed().as_secs_f64(),
        )
    }
}
