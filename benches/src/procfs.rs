//! CPU time, memory and write syscalls of a process from /proc (Linux).

use anyhow::Context;

/// USER_HZ, the unit of utime/stime in /proc/PID/stat. It is 100 on every Linux architecture
/// we run on (the kernel ABI fixes it regardless of CONFIG_HZ).
pub const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// utime + stime of all its threads, in ticks.
    pub cpu_ticks: u64,
    /// Current resident set size, KiB (VmRSS).
    pub rss_kib: u64,
    /// Peak resident set size since the process started, KiB (VmHWM).
    pub hwm_kib: u64,
    /// write-family syscalls so far (write, writev...: `syscw` in /proc/PID/io), if readable.
    pub syscw: Option<u64>,
    /// (thread id, ns it has run) of each live thread, sorted by id (the first field of
    /// /proc/PID/task/TID/schedstat); empty if unreadable. The same CPU time as `cpu_ticks`
    /// at nanosecond rather than 10 ms resolution, which a light load (one publisher's
    /// ingest) needs.
    pub threads_run_ns: Vec<(u32, u64)>,
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
        threads_run_ns: threads_run_ns(pid).unwrap_or_default(),
    })
}

/// Each live thread's run time from its schedstat file, sorted by thread id.
fn threads_run_ns(pid: &str) -> Option<Vec<(u32, u64)>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let task = task.ok()?;
        let tid: u32 = task.file_name().to_str()?.parse().ok()?;
        // A thread that exited since the directory was read has no file: skip it.
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        threads.push((tid, text.split_whitespace().next()?.parse().ok()?));
    }
    threads.sort_unstable();
    Some(threads)
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
    cpu_secs(from, to) / secs * 100.0
}

/// CPU time between two samples, seconds. From the threads' run times when both samples
/// have them: each thread alive at `to` counts what it ran since `from` (all of it if it
/// started since), so a thread that exited in between loses only its share of the interval,
/// not its whole life. Else from the 10 ms ticks.
pub fn cpu_secs(from: &Sample, to: &Sample) -> f64 {
    if from.threads_run_ns.is_empty() || to.threads_run_ns.is_empty() {
        return to.cpu_ticks.saturating_sub(from.cpu_ticks) as f64 / TICKS_PER_SEC;
    }
    let ran: u64 = to
        .threads_run_ns
        .iter()
        .map(|&(tid, ns)| {
            let before = from
                .threads_run_ns
                .binary_search_by_key(&tid, |&(t, _)| t)
                .map_or(0, |i| from.threads_run_ns[i].1);
            ns.saturating_sub(before)
        })
        .sum();
    ran as f64 / 1e9
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
        assert!(s.threads_run_ns.iter().any(|&(_, ns)| ns > 0));
    }

    #[test]
    fn cpu_secs_counts_each_live_threads_share_and_falls_back_to_ticks() {
        let from = Sample {
            cpu_ticks: 10,
            threads_run_ns: vec![(1, 100_000_000), (2, 900_000_000)],
            ..Sample::default()
        };
        // Thread 1 ran 20 ms more, thread 2 exited, thread 3 started and ran 3 ms.
        let to = Sample {
            cpu_ticks: 13,
            threads_run_ns: vec![(1, 120_000_000), (3, 3_000_000)],
            ..Sample::default()
        };
        assert!((cpu_secs(&from, &to) - 0.023).abs() < 1e-9);
        let no_threads = Sample {
            threads_run_ns: Vec::new(),
            ..to
        };
        assert!((cpu_secs(&from, &no_threads) - 0.03).abs() < 1e-9, "ticks");
    }
}
