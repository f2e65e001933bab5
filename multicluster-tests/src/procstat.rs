//! Memory and CPU time of running processes, read from `/proc`, and the machine's
//! load average: what the benchmarks report beside their latencies.

use std::time::Duration;

use crate::error::{Error, Result};

/// Clock ticks per second of the CPU times in `/proc/<pid>/stat`. Linux fixes
/// this user-visible unit (USER_HZ) at 100 whatever the kernel's own tick rate.
const USER_HZ: u32 = 100;

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(Error::io(format!("reading {path}")))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .ok_or_else(|| Error::Invalid(format!("{field} missing from {path}")))
}

/// User plus system CPU time the process has used so far, all threads included.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let fields = stat_fields(pid)?;
    // utime and stime are fields 14 and 15 of the whole line; 3 is the first here.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| Error::Invalid(format!("/proc/{pid}/stat: field {i} unreadable")))
    };
    let total = ticks(14)? + ticks(15)?;
    Ok(Duration::from_secs(total) / USER_HZ)
}

/// The direct children of `pid` (nginx's workers under its master).
pub fn children(pid: u32) -> Vec<u32> {
    pids()
        .filter(|child| {
            stat_fields(*child)
                .ok()
                .and_then(|f| f.get(1)?.parse().ok())
                == Some(pid)
        })
        .collect()
}

/// Processes in any of the process groups `pgids` that have not exited (a
/// zombie, which only waits for its parent to reap it, has).
pub fn running_in_groups(pgids: &[u32]) -> Vec<u32> {
    pids()
        .filter(|pid| {
            stat_fields(*pid).is_ok_and(|f| {
                f.first().is_some_and(|state| state != "Z")
                    && f.get(2)
                        .and_then(|g| g.parse().ok())
                        .is_some_and(|g: u32| pgids.contains(&g))
            })
        })
        .collect()
}

/// Every pid in `/proc`.
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
}

/// The fields of `/proc/<pid>/stat` after the command name (field 2, which may
/// hold spaces): state, ppid, pgrp, ...
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(Error::io(format!("reading {path}")))?;
    let (_, rest) = stat
        .rsplit_once(')')
        .ok_or_else(|| Error::Invalid(format!("{path}: no command name")))?;
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

/// The first three fields of `/proc/loadavg` (1, 5 and 15 minutes).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let rss = status_kib(me, "VmRSS").unwrap();
        assert!(rss > 0);
        // Other test threads map and unmap memory between two reads, and the
        // kernel's RSS counters are per-CPU estimates: only the peak's presence
        // is certain, not its order against an earlier RSS read.
        assert!(status_kib(me, "VmHWM").unwrap() > 0);
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        assert!(cpu_time(me).unwrap() > Duration::ZERO);
        assert!(status_kib(me, "NoSuchField").is_err());
        assert_eq!(load_average().split(' ').count(), 3);
    }

    #[test]
    fn finds_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = children(std::process::id()).contains(&child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found);
    }

    #[test]
    fn a_killed_group_stops_counting_once_its_process_exits() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let group = [child.id()];
        assert_eq!(running_in_groups(&group), vec![child.id()]);
        child.kill().unwrap();
        // Not reaped yet: a zombie until `wait`, and a zombie has exited.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !running_in_groups(&group).is_empty() {
            assert!(std::time::Instant::now() < deadline, "sleep still runs");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(stat_fields(child.id()).is_ok_and(|f| f[0] == "Z"));
        child.wait().unwrap();
    }
}
