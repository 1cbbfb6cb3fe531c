//! Child processes the driver starts (the sink, volley) and what `/proc` says about them.
//!
//! Every child is held by a [`Guarded`] that kills it (by its own PID, never by name) when
//! the run ends in any way — including a `--timeout` that drops the run's future. A child
//! is never reaped before it is killed, so its PID cannot be reused under us.

use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use super::LoadError;

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`: 100 on Linux in practice; reading
/// it for real needs `sysconf`, i.e. `unsafe`, which this crate forbids).
const TICKS_PER_SECOND: f64 = 100.0;

/// A child process that is killed when dropped.
#[derive(Debug)]
pub(crate) struct Guarded {
    child: Option<Child>,
    name: &'static str,
}

impl Guarded {
    /// Takes ownership of `child`.
    pub(super) fn new(child: Child, name: &'static str) -> Self {
        Self {
            child: Some(child),
            name,
        }
    }

    /// Its PID.
    pub(super) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The child itself (e.g. to take its stdout).
    pub(super) fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// `Some(status)` once it has exited.
    pub(super) fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends SIGTERM and waits up to `grace` for it to exit, then kills it. Returns its exit
    /// status (`None` if it had to be killed).
    pub(super) async fn terminate(mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        signal(child.id(), "TERM");
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "volley-load: {} did not stop after SIGTERM: killing it",
            self.name
        );
        kill(&mut child);
        None
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if !matches!(child.try_wait(), Ok(Some(_))) {
                eprintln!("volley-load: killing {} (pid {})", self.name, child.id());
            }
            kill(&mut child);
        }
    }
}

/// SIGKILL through `kill(1)` (falling back to std's), then reap.
fn kill(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal(child.id(), "KILL");
    if !matches!(child.try_wait(), Ok(Some(_))) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Sends `SIG<name>` to `pid` with `kill(1)`.
fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Spawns `command`, naming `what` in the error.
pub(crate) fn spawn(command: &mut Command, what: &str) -> Result<Child, LoadError> {
    command.spawn().map_err(LoadError::io(format!(
        "cannot start {what} ({})",
        command.get_program().to_string_lossy()
    )))
}

/// `utime + stime` of `pid` in seconds, from `/proc/<pid>/stat`; `None` once it is gone.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&stat).map(|t| t as f64 / TICKS_PER_SECOND)
}

/// `utime + stime` (ticks) from the text of `/proc/<pid>/stat`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name may contain spaces and ')': fields restart after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3; utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// Memory of a process from `/proc/<pid>/status`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the most ever resident.
    pub hwm: u64,
}

/// Reads `VmRSS` and `VmHWM` of `pid`; `None` once it is gone.
pub(crate) fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(parse_status(&status))
}

fn parse_status(status: &str) -> Memory {
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |k| k * 1024)
    };
    Memory {
        rss: kib("VmRSS:"),
        hwm: kib("VmHWM:"),
    }
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_parse() {
        let stat = "42 (a) b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(300));
        assert_eq!(parse_stat_ticks("garbage"), None);
        let status = "Name:\tvolley\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(
            parse_status(status),
            Memory {
                rss: 1024 * 1024,
                hwm: 2048 * 1024
            }
        );
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(memory(pid).is_some_and(|m| m.rss > 0 && m.hwm >= m.rss));
    }
}
