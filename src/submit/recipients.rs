//! Recipient lists for `volley send`: CSV with a header row (an `email` column, every
//! other column a template variable) or JSON Lines (`{"to": "...", "vars": {...}}`).
//! An error names the file's line.

use std::path::Path;

use serde_json::{Map, Value};

use super::request::RecipientInput;

/// A recipient list that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecipientsError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is wrong.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No recipient at all.
    #[error("{0}: no recipients")]
    Empty(String),
}

/// Reads a CSV or JSON Lines file (by extension: `.jsonl`, `.ndjson` and `.json` are
/// JSON Lines; anything else is CSV).
pub fn read(path: &Path) -> Result<Vec<RecipientInput>, RecipientsError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| RecipientsError::Read {
        path: shown.clone(),
        source,
    })?;
    let json = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "ndjson" | "json")
    );
    let list = if json {
        parse_jsonl(&text, &shown)?
    } else {
        parse_csv(&text, &shown)?
    };
    if list.is_empty() {
        return Err(RecipientsError::Empty(shown));
    }
    Ok(list)
}

/// JSON Lines: one object per line, blank lines skipped.
pub fn parse_jsonl(text: &str, path: &str) -> Result<Vec<RecipientInput>, RecipientsError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let recipient: RecipientInput =
            serde_json::from_str(line).map_err(|e| RecipientsError::Line {
                path: path.to_owned(),
                line: i + 1,
                message: format!("expected {{\"to\": \"...\", \"vars\": {{...}}}}: {e}"),
            })?;
        out.push(recipient);
    }
    Ok(out)
}

/// CSV with a header row; the `email` column is the address.
pub fn parse_csv(text: &str, path: &str) -> Result<Vec<RecipientInput>, RecipientsError> {
    let line_error = |line: usize, message: String| RecipientsError::Line {
        path: path.to_owned(),
        line,
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| line_error(1, e.to_string()))?
        .clone();
    let email = headers
        .iter()
        .position(|h| h.eq_ignore_ascii_case("email"))
        .ok_or_else(|| line_error(1, "the header row has no `email` column".into()))?;
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e
                .position()
                .map_or(0, |p| usize::try_from(p.line()).unwrap_or(usize::MAX));
            line_error(line, e.to_string())
        })?;
        let line = record
            .position()
            .map_or(0, |p| usize::try_from(p.line()).unwrap_or(usize::MAX));
        let to = record.get(email).unwrap_or_default().to_owned();
        if to.is_empty() {
            return Err(line_error(line, "empty email".into()));
        }
        let mut vars = Map::new();
        for (i, (name, value)) in headers.iter().zip(record.iter()).enumerate() {
            if i != email {
                vars.insert(name.to_owned(), Value::String(value.to_owned()));
            }
        }
        out.push(RecipientInput { to, vars });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_variables() {
        let list = parse_csv(
            "email,name,plan\na@example.com,Ann,pro\n\"b@example.com\",\"Bo, Jr\",free\n",
            "r.csv",
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].to, "b@example.com");
        assert_eq!(list[1].vars["name"], "Bo, Jr");
        assert!(!list[0].vars.contains_key("email"));
    }

    #[test]
    fn csv_errors_name_the_line() {
        let err = parse_csv("name\nAnn\n", "r.csv").unwrap_err();
        assert!(
            err.to_string().contains("r.csv:1") && err.to_string().contains("email"),
            "{err}"
        );
        let err = parse_csv("email,name\na@example.com,Ann\n,Bo\n", "r.csv").unwrap_err();
        assert!(err.to_string().starts_with("r.csv:3"), "{err}");
    }

    #[test]
    fn json_lines() {
        let list = parse_jsonl(
            "{\"to\": \"a@example.com\", \"vars\": {\"n\": 1}}\n\n{\"to\": \"b@example.com\"}\n",
            "r.jsonl",
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].vars["n"], 1);
        let err = parse_jsonl("{\"to\": \"a@example.com\"}\n{bad\n", "r.jsonl").unwrap_err();
        assert!(err.to_string().starts_with("r.jsonl:2"), "{err}");
    }
}
