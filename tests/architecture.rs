//! The shape of `src/`, held by a test: no import cycle between top-level modules, and
//! the layer rules of the design (the SMTP client knows nothing of queues, HTTP,
//! templates, messages or the engine; the queue knows nothing of SMTP, HTTP or the
//! engine; templates and messages know nothing of the network or the queue; the one
//! classification imports no queue, HTTP, template or message).
//!
//! It reads the source: every `crate::NAME` outside comments in a file under
//! `src/NAME/` or `src/NAME.rs` is an edge from that file's top-level module to `NAME`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules it names.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to; `None` for the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(stem) => Some(stem.to_owned()),
        None => Some(first.to_owned()),
    }
}

/// The code of a line without its comment (good enough: no string in `src/` holds `//`
/// before a `crate::` path).
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

fn names_after_crate(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code(line);
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        // `volley_crate::` or `some_crate::` are other paths.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = Graph::new();
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(&src, f)).collect();
    for file in &files {
        let Some(from) = module_of(&src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{e}"));
        let edges = graph.entry(from.clone()).or_default();
        for line in text.lines() {
            for to in names_after_crate(line) {
                if to != from && modules.contains(&to) {
                    edges.insert(to);
                }
            }
        }
    }
    graph
}

/// Every cycle found by a depth-first search, each as the path that closes it.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(node.to_owned());
            found.push(cycle);
            return;
        }
        if done.contains(node) {
            return;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, stack, done, found);
        }
        stack.pop();
        done.insert(node.to_owned());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let graph = graph();
    assert!(graph.len() > 5, "src/ was not read: {graph:?}");
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "import cycles between top-level modules (each `a -> b` is a `crate::b` in a): {}",
        found
            .iter()
            .map(|c| c.join(" -> "))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

/// (module, modules it must not import, why).
const FORBIDDEN: &[(&str, &[&str], &str)] = &[
    (
        "smtp",
        &[
            "queue", "http", "template", "message", "engine", "dispatch", "compose", "submit",
            "app", "webhooks", "route", "outcome", "inbound",
        ],
        "the SMTP client and server sessions speak the protocol and nothing else",
    ),
    (
        "queue",
        &[
            "smtp", "http", "engine", "dispatch", "compose", "submit", "app", "template",
            "message", "route", "outcome",
        ],
        "the queue stores opaque payloads",
    ),
    (
        "template",
        &[
            "smtp", "http", "engine", "dispatch", "queue", "route", "app", "message",
        ],
        "templates render text; they know nothing of the network or the queue",
    ),
    (
        "message",
        &[
            "smtp", "http", "engine", "dispatch", "queue", "route", "app", "template",
        ],
        "messages are bytes; they know nothing of the network or the queue",
    ),
    (
        "outcome",
        &[
            "queue", "http", "template", "message", "compose", "submit", "dispatch", "app",
        ],
        "the classification reads replies and errors only",
    ),
    (
        "engine",
        &[
            "queue", "http", "template", "message", "compose", "submit", "dispatch", "app",
            "cluster",
        ],
        "the engine delivers what it is handed; shared limits come in through its traits",
    ),
    (
        "cluster",
        &[
            "http", "dispatch", "app", "compose", "submit", "template", "message", "smtp",
            "inbound", "webhooks", "queue",
        ],
        "the cluster keeps shared limits and leads in Redis; it knows no delivery",
    ),
    (
        "rate",
        &["engine", "cluster", "queue", "http", "dispatch", "app"],
        "a rate limiter takes permits, from its own clock or a source it is handed",
    ),
    (
        "inbound",
        &["http", "engine", "dispatch", "app", "webhooks", "route"],
        "the SMTP listeners take messages and reports in and store them; delivery is not their business",
    ),
];

#[test]
fn layer_rules_hold() {
    let graph = graph();
    let mut broken = Vec::new();
    for (module, forbidden, why) in FORBIDDEN {
        let edges = graph.get(*module);
        assert!(edges.is_some(), "no module {module} in src/");
        for target in edges.into_iter().flatten() {
            if forbidden.contains(&target.as_str()) {
                broken.push(format!("{module} imports {target} ({why})"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "layer rules broken: {}",
        broken.join("; ")
    );
}

#[test]
fn the_reader_finds_paths_in_code_only() {
    assert_eq!(names_after_crate("use crate::queue::Queue;"), ["queue"]);
    assert_eq!(
        names_after_crate("use crate::{address::Address, time};"),
        ["address", "time"]
    );
    assert!(names_after_crate("// see crate::queue").is_empty());
    assert!(names_after_crate("use other_crate::queue;").is_empty());
    let g: Graph = [
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]
    .into();
    assert_eq!(cycles(&g), [["a", "b", "a"]]);
}
