//! Message templates: handlebars files compiled once at start and rendered per
//! recipient.
//!
//! This module owns the layout of the templates directory
//! (`NAME/{subject,html,text}.hbs`, `partials/*.hbs`), strict-mode rendering, the
//! escaping rules (variables are HTML-escaped in `html.hbs` only) and the text part
//! derived from the HTML when `text.hbs` is absent. It knows nothing of MIME, the
//! network, queues or HTTP: it turns a name and variables into strings.
//!
//! Strict mode refuses a missing variable in an expression (`{{name}}`). Block helpers
//! keep handlebars' own semantics: `{{#each items}}` or `{{#if x}}` over an absent
//! variable renders the `{{else}}` branch (or nothing), it is not an error.

mod error;
mod html_text;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use handlebars::{Handlebars, RenderErrorReason};
use serde::{Deserialize, Serialize};

pub use error::TemplateError;
pub use html_text::html_to_text;

/// The directory partials live in, inside the templates directory.
const PARTIALS: &str = "partials";

/// The `[templates]` section of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TemplatesConfig {
    /// The templates directory. Default: `templates`.
    pub path: PathBuf,
}

impl Default for TemplatesConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("templates"),
        }
    }
}

/// One rendered template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The subject: one line, not HTML-escaped, never holding CR, LF or NUL.
    pub subject: String,
    /// The HTML part, when the template has `html.hbs`.
    pub html: Option<String>,
    /// The text part: `text.hbs`, or derived from the HTML.
    pub text: String,
}

/// Which optional files a template has.
#[derive(Clone, Copy, Debug)]
struct Parts {
    html: bool,
    text: bool,
}

/// Every template and partial of a directory, compiled.
///
/// `Send + Sync`: load once, share through an `Arc`, render from any thread.
pub struct Templates {
    /// Subjects and text parts: variables are not HTML-escaped.
    plain: Handlebars<'static>,
    /// HTML parts: variables are HTML-escaped.
    html: Handlebars<'static>,
    templates: BTreeMap<String, Parts>,
    /// Partial name to its file, to name the file in errors raised inside a partial.
    partial_files: HashMap<String, String>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates")
            .field("templates", &self.templates.keys().collect::<Vec<_>>())
            .field("partials", &self.partial_files.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Templates {
    /// Loads and compiles every template under `dir` and every partial under
    /// `dir/partials`. Fails on the first unreadable file, syntax error, missing
    /// `subject.hbs`, or template with neither `html.hbs` nor `text.hbs`.
    pub fn load(dir: &Path) -> Result<Self, TemplateError> {
        let mut templates = Self {
            plain: registry(false),
            html: registry(true),
            templates: BTreeMap::new(),
            partial_files: HashMap::new(),
        };
        for (name, path) in subdirectories(dir)? {
            if name == PARTIALS {
                templates.load_partials(&path)?;
            } else {
                templates.load_template(name, &path)?;
            }
        }
        Ok(templates)
    }

    /// The names of the loaded templates, sorted.
    pub fn names(&self) -> Vec<String> {
        self.templates.keys().cloned().collect()
    }

    /// Whether a template of this name was loaded.
    pub fn contains(&self, name: &str) -> bool {
        self.templates.contains_key(name)
    }

    /// Renders template `name` with `vars`.
    pub fn render(&self, name: &str, vars: &serde_json::Value) -> Result<Rendered, TemplateError> {
        let parts = self
            .templates
            .get(name)
            .ok_or_else(|| TemplateError::UnknownTemplate {
                template: name.to_owned(),
            })?;
        let subject = self.render_file(&self.plain, name, "subject.hbs", vars)?;
        if subject.contains(['\r', '\n', '\0']) {
            return Err(TemplateError::SubjectLineBreak {
                template: name.to_owned(),
            });
        }
        let html = match parts.html {
            true => Some(self.render_file(&self.html, name, "html.hbs", vars)?),
            false => None,
        };
        let text = match (parts.text, &html) {
            (true, _) => self.render_file(&self.plain, name, "text.hbs", vars)?,
            (false, Some(html)) => html_to_text(html),
            // `load` refuses a template with neither part.
            (false, None) => String::new(),
        };
        Ok(Rendered {
            subject,
            html,
            text,
        })
    }

    /// Renders and discards: refuses, before anything is stored, variables the
    /// template cannot be rendered with.
    pub fn check(&self, name: &str, vars: &serde_json::Value) -> Result<(), TemplateError> {
        self.render(name, vars).map(drop)
    }

    fn load_template(&mut self, name: String, dir: &Path) -> Result<(), TemplateError> {
        let read = |file: &'static str| read_optional(&name, &dir.join(file));
        let subject = read("subject.hbs")?.ok_or_else(|| TemplateError::MissingFile {
            template: name.clone(),
            file: "subject.hbs",
        })?;
        let html = read("html.hbs")?;
        let text = read("text.hbs")?;
        if html.is_none() && text.is_none() {
            return Err(TemplateError::NoBody { template: name });
        }
        // The file's trailing newline is not part of the subject; a line break that
        // survives rendering can then only come from a variable, and is refused.
        compile(&mut self.plain, &name, "subject.hbs", subject.trim_end())?;
        if let Some(html) = &html {
            compile(&mut self.html, &name, "html.hbs", html)?;
        }
        if let Some(text) = &text {
            compile(&mut self.plain, &name, "text.hbs", text)?;
        }
        let parts = Parts {
            html: html.is_some(),
            text: text.is_some(),
        };
        self.templates.insert(name, parts);
        Ok(())
    }

    fn load_partials(&mut self, dir: &Path) -> Result<(), TemplateError> {
        for (name, path) in files_with_extension(dir, "hbs")? {
            let file = format!("{PARTIALS}/{name}.hbs");
            let source = read_optional(PARTIALS, &path)?.unwrap_or_default();
            for registry in [&mut self.plain, &mut self.html] {
                registry
                    .register_partial(&name, &source)
                    .map_err(|e| syntax_error(PARTIALS, &file, &e))?;
            }
            self.partial_files.insert(name, file);
        }
        Ok(())
    }

    fn render_file(
        &self,
        registry: &Handlebars<'static>,
        template: &str,
        file: &str,
        vars: &serde_json::Value,
    ) -> Result<String, TemplateError> {
        let key = format!("{template}/{file}");
        // Rendered into a buffer sized for the template's text up front: a 100 KB
        // newsletter grown from empty was copied again at every doubling.
        let mut out = Vec::with_capacity(output_hint(registry, &key));
        let rendered = registry.render_to_write(&key, vars, &mut out).map(|()| {
            // Handlebars writes only `str`s: the bytes are UTF-8.
            String::from_utf8(out)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        });
        rendered.map_err(|e| {
            // An error inside a partial carries the partial's name: report its file.
            let failing = match e.template_name.as_deref() {
                Some(name) if name != key => self
                    .partial_files
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| name.to_owned()),
                _ => key.clone(),
            };
            render_error(template, failing, &e)
        })
    }
}

/// About the length of a rendering of `key`: its literal text, plus room for what its
/// expressions write.
fn output_hint(registry: &Handlebars<'static>, key: &str) -> usize {
    use handlebars::template::TemplateElement;
    registry.get_template(key).map_or(256, |t| {
        let literal: usize = t
            .elements
            .iter()
            .map(|e| match e {
                TemplateElement::RawString(text) => text.len(),
                _ => 32,
            })
            .sum();
        literal + literal / 8 + 64
    })
}

fn registry(escape_html: bool) -> Handlebars<'static> {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    if !escape_html {
        registry.register_escape_fn(handlebars::no_escape);
    }
    registry
}

fn compile(
    registry: &mut Handlebars<'static>,
    template: &str,
    file: &str,
    source: &str,
) -> Result<(), TemplateError> {
    let key = format!("{template}/{file}");
    registry
        .register_template_string(&key, source)
        .map_err(|e| syntax_error(template, &key, &e))
}

fn syntax_error(template: &str, file: &str, e: &handlebars::TemplateError) -> TemplateError {
    let (line, column) = e.pos().map_or((None, None), |(l, c)| (Some(l), Some(c)));
    TemplateError::Syntax {
        template: template.to_owned(),
        file: file.to_owned(),
        line,
        column,
        reason: e.reason().to_string(),
    }
}

fn render_error(template: &str, file: String, e: &handlebars::RenderError) -> TemplateError {
    match e.reason() {
        RenderErrorReason::MissingVariable(variable) => TemplateError::MissingVariable {
            template: template.to_owned(),
            file,
            variable: variable.clone().unwrap_or_else(|| "?".to_owned()),
        },
        reason => TemplateError::Render {
            template: template.to_owned(),
            file,
            line: e.line_no,
            column: e.column_no,
            reason: reason.to_string(),
        },
    }
}

/// Reads a file that may be absent; any other I/O error is reported.
fn read_optional(template: &str, path: &Path) -> Result<Option<String>, TemplateError> {
    match std::fs::read_to_string(path) {
        Ok(source) => Ok(Some(source)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TemplateError::Read {
            template: template.to_owned(),
            file: path.to_owned(),
            source,
        }),
    }
}

/// Names are referenced from the HTTP API and the command line: keep them plain.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Visible entries of `dir` with their names, sorted, split by whether they are
/// directories. Hidden entries (`.git`, editor files) are skipped.
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>, TemplateError> {
    let io = |source| TemplateError::Directory {
        path: dir.to_owned(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let is_dir = entry.file_type().map_err(io)?.is_dir();
        found.push((name, entry.path(), is_dir));
    }
    found.sort();
    Ok(found)
}

fn subdirectories(dir: &Path) -> Result<Vec<(String, PathBuf)>, TemplateError> {
    let mut found = Vec::new();
    for (name, path, is_dir) in entries(dir)? {
        if !is_dir {
            continue; // README.md and the like
        }
        if !valid_name(&name) {
            let dir = dir.to_owned();
            return Err(TemplateError::InvalidName { name, dir });
        }
        found.push((name, path));
    }
    Ok(found)
}

fn files_with_extension(dir: &Path, ext: &str) -> Result<Vec<(String, PathBuf)>, TemplateError> {
    let mut found = Vec::new();
    for (name, path, is_dir) in entries(dir)? {
        let Some(stem) = name.strip_suffix(&format!(".{ext}")) else {
            continue;
        };
        if is_dir {
            continue;
        }
        if !valid_name(stem) {
            let dir = dir.to_owned();
            return Err(TemplateError::InvalidName { name, dir });
        }
        found.push((stem.to_owned(), path));
    }
    Ok(found)
}

#[cfg(test)]
mod tests;
