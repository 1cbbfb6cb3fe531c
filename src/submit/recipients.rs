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
        /// The recipient list file, as given on the command line.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is wrong.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The recipient list file holding the bad line, as given on the command line.
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

/// A recipient list read from a file, with where each recipient came from, so that a
/// refusal of recipient `i` names the file's line.
#[derive(Debug, Clone)]
pub struct RecipientList {
    /// The file, as given.
    pub path: String,
    /// The recipients, in file order.
    pub recipients: Vec<RecipientInput>,
    /// The 1-based line of each recipient.
    pub lines: Vec<usize>,
    /// The column (CSV) or key (JSON Lines) holding the address.
    pub address_column: &'static str,
}

impl RecipientList {
    /// Where a submission field such as `recipients[3].to` is in the file:
    /// `list.csv:5: email`, or `None` when the field is not a recipient's.
    pub fn locate(&self, field: &str) -> Option<String> {
        let rest = field.strip_prefix("recipients[")?;
        let (index, part) = rest.split_once(']')?;
        let line = self.lines.get(index.parse::<usize>().ok()?)?;
        let column = match part.trim_start_matches('.') {
            "to" => self.address_column,
            "vars" | "" => return Some(format!("{}:{line}", self.path)),
            other => return Some(format!("{}:{line}: {other}", self.path)),
        };
        Some(format!("{}:{line}: {column}", self.path))
    }
}

/// Reads a CSV or JSON Lines file (by extension: `.jsonl`, `.ndjson` and `.json` are
/// JSON Lines; anything else is CSV).
pub fn read(path: &Path) -> Result<RecipientList, RecipientsError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| RecipientsError::Read {
        path: shown.clone(),
        source,
    })?;
    let json = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "ndjson" | "json")
    );
    let (entries, address_column) = if json {
        (parse_jsonl(&text, &shown)?, "to")
    } else {
        (parse_csv(&text, &shown)?, "email")
    };
    if entries.is_empty() {
        return Err(RecipientsError::Empty(shown));
    }
    let (lines, recipients) = entries.into_iter().unzip();
    Ok(RecipientList {
        path: shown,
        recipients,
        lines,
        address_column,
    })
}

/// JSON Lines: one object per line, blank lines skipped; each with its line number.
pub fn parse_jsonl(
    text: &str,
    path: &str,
) -> Result<Vec<(usize, RecipientInput)>, RecipientsError> {
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
        out.push((i + 1, recipient));
    }
    Ok(out)
}

/// CSV with a header row; the `email` column is the address. Each recipient comes with
/// the line its record starts on.
pub fn parse_csv(text: &str, path: &str) -> Result<Vec<(usize, RecipientInput)>, RecipientsError> {
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
        out.push((line, RecipientInput::new(to, &vars)));
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
        assert_eq!(list[1].1.to, "b@example.com");
        assert_eq!(list[1].1.vars().unwrap()["name"], "Bo, Jr");
        assert!(!list[0].1.vars().unwrap().contains_key("email"));
        assert_eq!((list[0].0, list[1].0), (2, 3), "line numbers");
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
        assert_eq!(list[0].1.vars().unwrap()["n"], 1);
        assert_eq!(
            (list[0].0, list[1].0),
            (1, 3),
            "blank lines keep the numbering"
        );
        let err = parse_jsonl("{\"to\": \"a@example.com\"}\n{bad\n", "r.jsonl").unwrap_err();
        assert!(err.to_string().starts_with("r.jsonl:2"), "{err}");
    }

    #[test]
    fn fields_are_located_in_the_file() {
        let list = RecipientList {
            path: "list.csv".into(),
            recipients: Vec::new(),
            lines: vec![2, 3, 5],
            address_column: "email",
        };
        assert_eq!(
            list.locate("recipients[2].to").as_deref(),
            Some("list.csv:5: email")
        );
        assert_eq!(
            list.locate("recipients[0].vars").as_deref(),
            Some("list.csv:2")
        );
        assert_eq!(list.locate("recipients[9].to"), None);
        assert_eq!(list.locate("subject"), None);
    }
}
