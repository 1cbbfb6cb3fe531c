use super::*;
use serde_json::json;

/// A templates directory made of `(relative path, content)` pairs.
fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

fn load(files: &[(&str, &str)]) -> Result<Templates, TemplateError> {
    Templates::load(dir(files).path())
}

const BASIC: &[(&str, &str)] = &[
    ("t/subject.hbs", "Hello {{name}}\n"),
    ("t/html.hbs", "<p>Hi {{name}} {{{markup}}}</p>"),
    ("t/text.hbs", "Hi {{name}}"),
];

#[test]
fn templates_are_send_sync_and_debug() {
    fn assert_shared<T: Send + Sync + fmt::Debug>() {}
    assert_shared::<Templates>();
}

#[test]
fn escapes_variables_in_html_only() {
    let templates = load(BASIC).unwrap();
    let table: &[(&str, &str, &str, &str)] = &[
        // name, subject, html, text
        ("Ann", "Hello Ann", "<p>Hi Ann <i>ok</i></p>", "Hi Ann"),
        (
            "<script>alert(1)</script>",
            "Hello <script>alert(1)</script>",
            "<p>Hi &lt;script&gt;alert(1)&lt;/script&gt; <i>ok</i></p>",
            "Hi <script>alert(1)</script>",
        ),
        (
            "Tom & Jerry",
            "Hello Tom & Jerry",
            "<p>Hi Tom &amp; Jerry <i>ok</i></p>",
            "Hi Tom & Jerry",
        ),
        (
            "Zoë 日本",
            "Hello Zoë 日本",
            "<p>Hi Zoë 日本 <i>ok</i></p>",
            "Hi Zoë 日本",
        ),
    ];
    for (name, subject, html, text) in table {
        let r = templates
            .render("t", &json!({"name": name, "markup": "<i>ok</i>"}))
            .unwrap();
        assert_eq!(r.subject, *subject, "{name}");
        assert_eq!(r.html.as_deref(), Some(*html), "{name}");
        assert_eq!(r.text, *text, "{name}");
    }
}

#[test]
fn line_breaks_in_subject_are_refused() {
    let templates = load(BASIC).unwrap();
    for name in ["Hi\r\nBcc: victim@x", "a\nb", "a\rb", "nul\0"] {
        let err = templates
            .render("t", &json!({"name": name, "markup": ""}))
            .unwrap_err();
        assert!(
            matches!(&err, TemplateError::SubjectLineBreak { template } if template == "t"),
            "{name:?}: {err}"
        );
    }
    // The same value is fine where it is not a header: but the subject refuses first.
    let multi = load(&[("m/subject.hbs", "S\n"), ("m/text.hbs", "{{body}}")]).unwrap();
    let r = multi.render("m", &json!({"body": "a\r\nb"})).unwrap();
    assert_eq!((r.subject.as_str(), r.text.as_str()), ("S", "a\r\nb"));
}

#[test]
fn missing_variable_names_template_file_and_variable() {
    let templates = load(&[
        ("t/subject.hbs", "Hello {{name}}"),
        ("t/html.hbs", "<p>{{greeting}} {{> footer}}</p>"),
        ("partials/footer.hbs", "<small>{{company}}</small>"),
    ])
    .unwrap();
    let table: &[(serde_json::Value, &str, &str)] = &[
        (json!({}), "t/subject.hbs", "name"),
        (json!({"name": "a"}), "t/html.hbs", "greeting"),
        (
            json!({"name": "a", "greeting": "b"}),
            "partials/footer.hbs",
            "company",
        ),
    ];
    for (vars, file, variable) in table {
        let err = templates.render("t", vars).unwrap_err();
        match &err {
            TemplateError::MissingVariable {
                template,
                file: f,
                variable: v,
            } => assert_eq!(
                (template.as_str(), f.as_str(), v.as_str()),
                ("t", *file, *variable)
            ),
            other => panic!("{vars}: expected a missing variable, got {other}"),
        }
        let message = err.to_string();
        for part in ["\"t\"", file, variable] {
            assert!(message.contains(part), "{message}");
        }
        assert!(templates.check("t", vars).is_err());
    }
    let vars = json!({"name": "a", "greeting": "b", "company": "c"});
    assert!(templates.check("t", &vars).is_ok());
}

#[test]
fn partials_loops_and_derived_text() {
    let templates = load(&[
        ("news/subject.hbs", "News for {{name}}"),
        (
            "news/html.hbs",
            "<h1>Hi {{name}}</h1><ul>{{#each items}}<li><a href=\"{{url}}\">{{title}}</a></li>{{/each}}</ul>{{> footer}}",
        ),
        ("partials/footer.hbs", "<p>Bye &amp; thanks</p>"),
    ])
    .unwrap();
    let vars = json!({"name": "Ann", "items": [
        {"title": "One & two", "url": "https://ex.com/1?a=1&b=2"},
        {"title": "Three", "url": "https://ex.com/3"},
    ]});
    let r = templates.render("news", &vars).unwrap();
    let html = r.html.unwrap();
    assert!(html.contains("One &amp; two"), "{html}");
    assert!(
        html.contains("https://ex.com/1?a&#x3D;1&amp;b&#x3D;2"),
        "{html}"
    );
    assert_eq!(
        r.text,
        "Hi Ann\n\n- One & two (https://ex.com/1?a=1&b=2)\n- Three (https://ex.com/3)\n\nBye & thanks\n"
    );
}

#[test]
fn load_errors_name_template_and_file() {
    let table: &[(&[(&str, &str)], &str)] = &[
        (&[("t/html.hbs", "x")], "subject.hbs is missing"),
        (&[("t/subject.hbs", "x")], "needs html.hbs or text.hbs"),
        (
            &[("t/subject.hbs", "x"), ("t/html.hbs", "{{#if a}}open")],
            "syntax error in t/html.hbs",
        ),
        (
            &[("t/subject.hbs", "{{name"), ("t/text.hbs", "x")],
            "syntax error in t/subject.hbs",
        ),
        (
            &[("partials/f.hbs", "{{/each}}")],
            "syntax error in partials/f.hbs",
        ),
        (&[("bad name/subject.hbs", "x")], "\"bad name\""),
    ];
    for (files, expected) in table {
        let err = load(files).unwrap_err();
        assert!(err.to_string().contains(expected), "{files:?}: {err}");
    }
    let missing = Templates::load(Path::new("/nonexistent/templates")).unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/templates"),
        "{missing}"
    );
}

#[test]
fn unknown_template_and_names() {
    let templates = load(&[
        ("b/subject.hbs", "B"),
        ("b/text.hbs", "b"),
        ("a/subject.hbs", "A"),
        ("a/text.hbs", "a"),
        ("README.md", "ignored"),
        (".hidden/subject.hbs", "ignored"),
    ])
    .unwrap();
    assert_eq!(templates.names(), ["a", "b"]);
    assert!(templates.contains("a") && !templates.contains("c"));
    let err = templates.render("c", &json!({})).unwrap_err();
    assert!(matches!(err, TemplateError::UnknownTemplate { template } if template == "c"));
    let text_only = templates.render("a", &json!({})).unwrap();
    assert_eq!(text_only.html, None);
}

#[test]
fn unknown_partial_is_a_render_error() {
    let templates = load(&[("t/subject.hbs", "S"), ("t/text.hbs", "{{> nope}}")]).unwrap();
    let err = templates.render("t", &json!({})).unwrap_err();
    assert!(
        matches!(&err, TemplateError::Render { template, .. } if template == "t"),
        "{err}"
    );
}

#[test]
fn shipped_templates_render() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let templates = Templates::load(&dir).unwrap();
    assert_eq!(templates.names(), ["newsletter", "receipt", "welcome"]);
    let table = [
        ("welcome", json!({"name": "Ann"})),
        (
            "newsletter",
            json!({"name": "Ann", "items": [{"title": "T", "url": "https://ex.com"}]}),
        ),
        (
            "receipt",
            json!({"name": "Ann", "order_id": "A-1", "lines": [{"item": "Tea", "amount": "3.00"}], "total": "3.00"}),
        ),
    ];
    for (name, vars) in table {
        let r = templates.render(name, &vars).unwrap();
        assert!(
            r.subject.contains("Ann") || r.subject.contains("A-1"),
            "{name}: {r:?}"
        );
        assert!(r.text.contains("Ann"), "{name}: {r:?}");
        assert!(templates.check(name, &json!({})).is_err(), "{name}");
    }
}

#[test]
fn variables_named_like_helpers_need_this() {
    let templates = load(&[
        ("t/subject.hbs", "S"),
        ("t/text.hbs", "{{this.len}}/{{this.raw}}"),
    ])
    .unwrap();
    let r = templates
        .render("t", &json!({"len": "L", "raw": "R"}))
        .unwrap();
    assert_eq!(r.text, "L/R");
}
