//! Process CPU accounting, read from `/proc/self/stat` (Linux only, no `unsafe`).

/// Clock ticks per second used by `/proc/<pid>/stat`. The kernel reports `utime`/`stime` in
/// `USER_HZ`, which is 100 on every Linux architecture in practice; reading the real value would
/// need `sysconf`, i.e. `unsafe` FFI, which this crate forbids.
const TICKS_PER_SECOND: f64 = 100.0;

/// Returns this process's user + system CPU time in seconds.
///
/// Read from `/proc/self/stat` (fields `utime` and `stime`). Returns `0.0` when that file is
/// not available or not parseable (e.g. not on Linux), so a report never fails because of it.
pub fn process_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| parse_stat(&stat))
        .map_or(0.0, |ticks| ticks as f64 / TICKS_PER_SECOND)
}

/// Extracts `utime + stime` (in ticks) from the contents of a `/proc/<pid>/stat` file.
fn parse_stat(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may itself contain spaces or ')', so
    // split after the LAST ')'. What follows starts with field 3 (state).
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    // Field 14 is utime and 15 is stime; `rest` starts at field 3, so skip fields 3..=13.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime() {
        let stat = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(stat), Some(300));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
        assert_eq!(parse_stat("1 (x) S 1 2 3 4 5 6 7 8 9 10 a b"), None);
    }

    #[test]
    fn reads_own_process() {
        assert!(process_cpu_seconds() >= 0.0);
    }
}
