//! Errors of the template module: each names the template and, where there is one, the
//! file and the variable, so that a refused submission or a failed `volley check` says
//! exactly what to fix.

use std::path::PathBuf;

/// Why templates could not be loaded or a template could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The templates directory (or a template's directory) could not be listed.
    #[error("cannot read template directory {}: {source}", path.display())]
    Directory {
        /// The directory that could not be listed: the templates directory or one in it.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A template file could not be read.
    #[error("template {template:?}: cannot read {}: {source}", file.display())]
    Read {
        /// The template (or `partials`).
        template: String,
        /// The path of the template or partial file that could not be read.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A template directory or partial file has a name that cannot be referenced safely.
    #[error(
        "template {name:?} in {}: names may only hold ASCII letters, digits, '-' and '_'",
        dir.display()
    )]
    InvalidName {
        /// The offending name (lossily decoded).
        name: String,
        /// The directory it was found in.
        dir: PathBuf,
    },
    /// A required file is absent.
    #[error("template {template:?}: {file} is missing")]
    MissingFile {
        /// The name of the template (its directory) that lacks the file.
        template: String,
        /// The file name, relative to the template directory.
        file: &'static str,
    },
    /// Neither `html.hbs` nor `text.hbs` exists.
    #[error("template {template:?}: needs html.hbs or text.hbs (or both)")]
    NoBody {
        /// The name of the template whose directory has neither body file.
        template: String,
    },
    /// A file does not compile.
    #[error("template {template:?}: syntax error in {file}{}: {reason}", position(*line, *column))]
    Syntax {
        /// The template (or `partials`).
        template: String,
        /// The file, relative to the templates directory.
        file: String,
        /// 1-based line, when handlebars reports it.
        line: Option<usize>,
        /// Column, when handlebars reports it.
        column: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// No template by this name was loaded.
    #[error("unknown template {template:?}")]
    UnknownTemplate {
        /// The name asked for.
        template: String,
    },
    /// Strict mode: the template refers to a variable the submission did not supply.
    #[error("template {template:?}: {file} refers to variable {variable:?}, which is missing")]
    MissingVariable {
        /// The name of the template being rendered.
        template: String,
        /// The file (possibly a partial) that refers to it.
        file: String,
        /// The variable's path, as handlebars reports it (`name`, `items.[0].title`).
        variable: String,
    },
    /// Any other rendering failure (an unknown partial or helper, a type mismatch).
    #[error("template {template:?}: cannot render {file}{}: {reason}", position(*line, *column))]
    Render {
        /// The name of the template being rendered when it failed.
        template: String,
        /// The file (possibly a partial).
        file: String,
        /// 1-based line, when handlebars reports it.
        line: Option<usize>,
        /// Column, when handlebars reports it.
        column: Option<usize>,
        /// What went wrong.
        reason: String,
    },
    /// The rendered subject holds a line break (or NUL): it would become a second
    /// header line, so it is refused rather than sent.
    #[error("template {template:?}: the rendered subject contains CR, LF or NUL (from a variable)")]
    SubjectLineBreak {
        /// The name of the template whose rendered subject was refused.
        template: String,
    },
}

fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(" at line {line}, column {column}"),
        (Some(line), None) => format!(" at line {line}"),
        _ => String::new(),
    }
}
