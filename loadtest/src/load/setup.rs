//! The run's surroundings: its temporary directory, the DNS records, volley's `volley.toml`,
//! and the Redis keys to remove afterwards.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::workload::{DKIM_DOMAIN, domain};
use super::{DkimMode, LoadError, LoadOptions, QueueBackend};
use crate::DnsRecords;

/// A directory removed when dropped (unless kept).
#[derive(Debug)]
pub(crate) struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// Creates `$TMPDIR/volley-load-<pid>-<nanos>`.
    pub(super) fn create(keep: bool) -> Result<Self, LoadError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let path = std::env::temp_dir().join(format!("volley-load-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(LoadError::io(format!("cannot create {}", path.display())))?;
        Ok(Self { path, keep })
    }

    /// Its path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("volley-load: kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The sink address serving domain `i`: `127.0.0.{10 + i % n}`.
pub(crate) fn sink_ip(i: u64, n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + (i % u64::from(n.max(1))) as u8)
}

/// `d{i}.load.test MX 10 mx.d{i}.load.test`, `mx.d{i}.load.test A 127.0.0.{10 + i % n}`.
pub(crate) fn dns_records(domains: u32, sink_addresses: u8) -> DnsRecords {
    let mut records = DnsRecords::new().ttl(3600);
    for i in 0..u64::from(domains) {
        let d = domain(i);
        let mx = format!("mx.{d}");
        records = records.mx(&d, 10, &mx).a(&mx, sink_ip(i, sink_addresses));
    }
    records
}

/// What `volley.toml` needs besides the options.
#[derive(Debug)]
pub(crate) struct ConfigInputs<'a> {
    /// Where the API listens.
    pub listen: SocketAddr,
    /// The sink's common port.
    pub sink_port: u16,
    /// The DNS server.
    pub dns: SocketAddr,
    /// The templates directory.
    pub templates: &'a Path,
    /// The embedded queue's directory.
    pub data: &'a Path,
    /// The Redis key prefix.
    pub redis_prefix: &'a str,
}

/// The text of `volley.toml`.
pub(crate) fn volley_toml(options: &LoadOptions, inputs: &ConfigInputs<'_>) -> String {
    let path = |p: &Path| toml_string(&p.display().to_string());
    let mut t = String::new();
    let _ = writeln!(t, "[server]\nlisten = \"{}\"\n", inputs.listen);
    let _ = writeln!(t, "[queue]\nbackend = \"{}\"", options.backend.name());
    match options.backend {
        QueueBackend::Embedded => {
            let _ = writeln!(t, "path = {}\n", path(inputs.data));
        }
        QueueBackend::Redis => {
            let _ = writeln!(
                t,
                "redis_url = {}\nredis_prefix = {}\n",
                toml_string(&options.redis_url),
                toml_string(inputs.redis_prefix)
            );
        }
    }
    let _ = writeln!(t, "[templates]\npath = {}\n", path(inputs.templates));
    let tls = if options.tls {
        "opportunistic"
    } else {
        "disabled"
    };
    let _ = writeln!(
        t,
        "[smtp]\nhelo_name = \"volley.load\"\nport = {}\ntls = \"{tls}\"\nmax_connections_per_site = {}\nbatch_size = {}\nmax_pipeline = {}\n",
        inputs.sink_port, options.concurrency, options.batch_size, options.max_pipeline
    );
    if let Some(rate) = options.rate {
        let _ = writeln!(t, "[limits]\nglobal = \"{rate}/s\"\n");
    }
    if !options.shared_limits {
        t.push_str("[cluster]\nshared_limits = false\n\n");
    }
    let _ = writeln!(t, "[dns]\nnameservers = [\"{}\"]\n", inputs.dns);
    t.push_str("[security]\nallow_loopback_mx = true\n\n");
    t.push_str("[retry]\nschedule = [\"1s\"]\nmax_age = \"10m\"\n");
    if let Some((file, algorithm)) = dkim_key(options.dkim) {
        let _ = write!(
            t,
            "\n[dkim]\ndomain = \"{DKIM_DOMAIN}\"\nselector = \"load\"\nkey_file = {}\nalgorithm = \"{algorithm}\"\n",
            path(&options.repo_dir.join("tests/data").join(file))
        );
    }
    t
}

/// The test key file and algorithm name of a DKIM mode.
fn dkim_key(mode: DkimMode) -> Option<(&'static str, &'static str)> {
    match mode {
        DkimMode::None => None,
        DkimMode::Ed25519 => Some(("dkim-test-ed25519.pem", "ed25519-sha256")),
        DkimMode::Rsa => Some(("dkim-test-rsa2048.pem", "rsa-sha256")),
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A free TCP port on `ip` (bound then released: the caller retries on a collision).
pub(crate) fn free_port(ip: Ipv4Addr) -> Result<u16, LoadError> {
    let probe = std::net::TcpListener::bind((ip, 0))
        .map_err(LoadError::io(format!("cannot probe a free port on {ip}")))?;
    probe
        .local_addr()
        .map(|a| a.port())
        .map_err(LoadError::io("cannot read the probed port"))
}

/// Removes the Redis keys of `prefix` (volley's keys are `{prefix}:...`) with `redis-cli`,
/// when it is installed. Returns how it went, for the report.
pub(crate) fn redis_cleanup(url: &str, prefix: &str) -> String {
    let installed = Command::new("redis-cli")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        return "skipped: redis-cli not installed".to_owned();
    }
    // The prefix is ours (letters, digits, '-'): no quoting issue in the shell line.
    let script = format!(
        "redis-cli -u '{url}' --scan --pattern '{{{prefix}}}:*' | xargs -r redis-cli -u '{url}' del >/dev/null"
    );
    match Command::new("sh").arg("-c").arg(&script).status() {
        Ok(s) if s.success() => format!("removed keys {{{prefix}}}:*"),
        Ok(s) => format!("redis-cli failed: {s}"),
        Err(e) => format!("redis-cli failed: {e}"),
    }
}

/// The Redis server's CPU seconds (`used_cpu_user + used_cpu_sys` of `INFO cpu`), when
/// `redis-cli` can tell.
pub(crate) fn redis_cpu_seconds(url: &str) -> Option<f64> {
    let out = Command::new("redis-cli")
        .args(["-u", url, "info", "cpu"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    parse_redis_cpu(&String::from_utf8_lossy(&out.stdout))
}

fn parse_redis_cpu(info: &str) -> Option<f64> {
    let field = |key: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some(field("used_cpu_user:")? + field("used_cpu_sys:")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_the_contract_keys() {
        let mut options = LoadOptions::new("v".into(), "s".into(), "/repo".into());
        options.dkim = DkimMode::Ed25519;
        let inputs = ConfigInputs {
            listen: "127.0.0.1:8025".parse().unwrap(),
            sink_port: 2525,
            dns: "127.0.0.1:5353".parse().unwrap(),
            templates: Path::new("/t\"x"),
            data: Path::new("/d"),
            redis_prefix: "p",
        };
        let text = volley_toml(&options, &inputs);
        for needle in [
            "listen = \"127.0.0.1:8025\"",
            "backend = \"embedded\"",
            "path = \"/d\"",
            "path = \"/t\\\"x\"",
            "port = 2525",
            "tls = \"disabled\"",
            "max_connections_per_site = 4",
            "nameservers = [\"127.0.0.1:5353\"]",
            "allow_loopback_mx = true",
            "schedule = [\"1s\"]",
            "key_file = \"/repo/tests/data/dkim-test-ed25519.pem\"",
            "algorithm = \"ed25519-sha256\"",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
        options.backend = QueueBackend::Redis;
        options.dkim = DkimMode::None;
        let text = volley_toml(&options, &inputs);
        assert!(text.contains("redis_prefix = \"p\"") && !text.contains("[dkim]"));
    }

    #[test]
    fn redis_cpu_parses() {
        let info = "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\nused_cpu_sys_children:0\r\n";
        assert_eq!(parse_redis_cpu(info), Some(3.75));
        assert_eq!(parse_redis_cpu("nothing"), None);
    }

    #[test]
    fn sink_addresses_cycle() {
        assert_eq!(sink_ip(0, 10), Ipv4Addr::new(127, 0, 0, 10));
        assert_eq!(sink_ip(13, 10), Ipv4Addr::new(127, 0, 0, 13));
        assert_eq!(sink_ip(7, 1), Ipv4Addr::new(127, 0, 0, 10));
    }
}
