//! `volley suppress import FILE` and `volley suppress export FILE`: the suppression list
//! as CSV (`address,scope,reason,at`), to bring a list from another provider or keep one.

use std::io::Write as _;
use std::path::Path;
use std::time::SystemTime;

use crate::address::{Address, suppression_key};
use crate::queue::{AnyQueue, Queue, QueueError, Suppression, SuppressionScope};
use crate::time::rfc3339;

/// The CSV header, in column order.
pub const HEADER: [&str; 4] = ["address", "scope", "reason", "at"];

/// Why an import or export failed.
#[derive(Debug, thiserror::Error)]
pub enum SuppressError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The CSV file being imported or exported, as given on the command line.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the file is wrong: nothing of the file was stored.
    #[error("{path}:{line}: {message} (nothing was imported)")]
    Line {
        /// The CSV file being imported, as given on the command line.
        path: String,
        /// 1-based line.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The queue store failed while storing or listing suppression entries.
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
}

/// Reads `path` whole, checks every line, then stores every entry; returns how many.
/// `address` is required; `scope` defaults to `all`, `reason` to `imported`, `at` (RFC
/// 3339) to now.
pub async fn import(queue: &AnyQueue, path: &Path) -> Result<usize, SuppressError> {
    let shown = path.display().to_string();
    let file = |source| SuppressError::File {
        path: shown.clone(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(file)?;
    let entries = parse(&text, &shown, SystemTime::now())?;
    let n = entries.len();
    for entry in entries {
        queue.suppress(entry).await?;
    }
    Ok(n)
}

fn parse(text: &str, path: &str, now: SystemTime) -> Result<Vec<Suppression>, SuppressError> {
    let line_error = |line: u64, message: String| SuppressError::Line {
        path: path.to_owned(),
        line,
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| line_error(1, e.to_string()))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let address_at = column("address")
        .ok_or_else(|| line_error(1, "the header row has no `address` column".into()))?;
    let (scope_at, reason_at, at_at) = (column("scope"), column("reason"), column("at"));
    let mut out = Vec::new();
    for record in reader.records() {
        let record =
            record.map_err(|e| line_error(e.position().map_or(0, |p| p.line()), e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line());
        let get = |i: Option<usize>| i.and_then(|i| record.get(i)).filter(|v| !v.is_empty());
        let given = get(Some(address_at)).unwrap_or_default();
        Address::parse(given).map_err(|e| line_error(line, format!("address: {e}")))?;
        let scope = match get(scope_at) {
            Some(s) => s.parse().map_err(|e| line_error(line, e))?,
            None => SuppressionScope::All,
        };
        let reason = get(reason_at).unwrap_or("imported").to_owned();
        let at = match get(at_at) {
            Some(t) => humantime::parse_rfc3339_weak(t)
                .map_err(|e| line_error(line, format!("at: {t:?}: {e}")))?,
            None => now,
        };
        out.push(Suppression {
            address: suppression_key(given),
            scope,
            reason,
            at,
        });
    }
    Ok(out)
}

/// Writes every entry to `path`, in address order; returns how many.
pub async fn export(queue: &AnyQueue, path: &Path) -> Result<usize, SuppressError> {
    let shown = path.display().to_string();
    let file = |source| SuppressError::File {
        path: shown.clone(),
        source,
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(file)?);
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(HEADER).map_err(|e| file(e.into()))?;
    let mut after = None;
    let mut n = 0;
    loop {
        let page = queue.suppressions(after.clone(), 1000).await?;
        for e in &page {
            writer
                .write_record([
                    e.address.as_str(),
                    &e.scope.as_text(),
                    e.reason.as_str(),
                    &rfc3339(e.at),
                ])
                .map_err(|e| file(e.into()))?;
            n += 1;
        }
        out.write_all(&writer.get_ref()[..]).map_err(file)?;
        writer = csv::Writer::from_writer(Vec::new());
        match page.last() {
            Some(last) if page.len() == 1000 => after = Some(last.address.clone()),
            _ => break,
        }
    }
    out.flush().map_err(file)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_checked_and_defaults_filled() {
        let now = SystemTime::UNIX_EPOCH;
        let entries = parse(
            "address,scope,reason,at\nBob@Bücher.example,list:news,unsubscribed,2026-01-02T03:04:05Z\nann@example.org,,,\n",
            "in.csv",
            now,
        )
        .unwrap();
        assert_eq!(entries[0].address, "bob@xn--bcher-kva.example");
        assert_eq!(entries[0].scope, SuppressionScope::List("news".into()));
        assert_eq!(rfc3339(entries[0].at), "2026-01-02T03:04:05Z");
        assert_eq!(
            (
                entries[1].scope.clone(),
                entries[1].reason.as_str(),
                entries[1].at
            ),
            (SuppressionScope::All, "imported", now)
        );
        let err = parse("address\nok@example.org\nnot an address\n", "in.csv", now).unwrap_err();
        assert!(err.to_string().starts_with("in.csv:3: address"), "{err}");
        let err = parse("email\nx@y.z\n", "in.csv", now).unwrap_err();
        assert!(err.to_string().contains("`address` column"), "{err}");
    }
}
