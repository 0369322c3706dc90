//! CPU time, memory and write syscalls of a process from /proc (Linux).

use anyhow::Context;

/// USER_HZ, the unit of utime/stime in /proc/PID/stat. It is 100 on every Linux architecture
/// we run on (the kernel ABI fixes it regardless of CONFIG_HZ).
pub const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// utime + stime of all its threads, in ticks.
    pub cpu_ticks: u64,
    /// Current resident set size, KiB (VmRSS).
    pub rss_kib: u64,
    /// Peak resident set size since the process started, KiB (VmHWM).
    pub hwm_kib: u64,
    /// write-family syscalls so far (write, writev...: `syscw` in /proc/PID/io), if readable.
    pub syscw: Option<u64>,
}

/// Reads `/proc/{pid}/stat`, `status` and `io`; `pid` may be `self`.
pub fn sample(pid: &str) -> anyhow::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok();
    Ok(Sample {
        cpu_ticks: parse_cpu_ticks(&stat).context("parsing /proc/PID/stat")?,
        rss_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
        hwm_kib: status_kib(&status, "VmHWM:").unwrap_or(0),
        syscw: io.as_deref().and_then(|io| field(io, "syscw:")),
    })
}

/// utime + stime (fields 14 and 15) of a stat line; the command name may contain spaces
/// and parentheses, so fields are counted after the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // state is field 3
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    field(status, key)
}

fn field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU use between two samples taken `secs` apart, in percent of one core.
pub fn cpu_pct(from: &Sample, to: &Sample, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    to.cpu_ticks.saturating_sub(from.cpu_ticks) as f64 / TICKS_PER_SEC / secs * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 70 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_cpu_ticks(stat), Some(320));
    }

    #[test]
    fn samples_itself() {
        let s = sample("self").unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
        assert!(s.syscw.is_some());
    }
}
