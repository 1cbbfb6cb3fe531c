//! Per-message costs of the message path: rendering the newsletter template and
//! building its MIME message (about 3 KB: HTML, derived text, List-Unsubscribe), and
//! DKIM signing with rsa-sha256 (2048-bit) and ed25519-sha256. Keys are the test-only
//! keys of tests/data.

// A benchmark or tool reports its figures on the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use volley::address::Address;
use volley::message::{
    DkimAlgorithm, DkimConfig, DkimSigner, ListUnsubscribe, Mailbox, MessageSpec,
    UnsubscribeConfig, UnsubscribeTokens, build_message,
};
use volley::template::Templates;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn vars() -> serde_json::Value {
    let items: Vec<_> = (1..=3)
        .map(|i| {
            json!({
                "title": format!("Article number {i}: what we learned this week"),
                "url": format!("https://example.com/articles/{i}?utm_source=newsletter"),
            })
        })
        .collect();
    json!({"name": "Alice Example", "items": items})
}

/// Renders the newsletter for one recipient and builds its message.
fn newsletter(
    templates: &Templates,
    vars: &serde_json::Value,
    unsubscribe: &UnsubscribeConfig,
    tokens: &UnsubscribeTokens,
) -> Vec<u8> {
    let rendered = templates.render("newsletter", vars).unwrap();
    let to = Address::parse("alice@example.org").unwrap();
    let spec = MessageSpec {
        from: Mailbox::named("Example News", Address::parse("news@example.com").unwrap()),
        list_unsubscribe: ListUnsubscribe::for_recipient(
            unsubscribe,
            tokens,
            token_for("job-1", to.as_str()),
        )
        .unwrap(),
        to: vec![Mailbox::named("Alice Example", to)],
        cc: vec![],
        reply_to: None,
        subject: rendered.subject,
        text: Some(rendered.text),
        html: rendered.html,
        attachments: vec![],
        headers: vec![],
    };
    build_message(&spec, "mail.example.com").unwrap()
}

fn render_and_build(c: &mut Criterion) {
    let templates = Templates::load(&root().join("templates")).unwrap();
    let vars = vars();
    let unsubscribe = UnsubscribeConfig {
        url: Some("https://example.com/unsubscribe/{token}".into()),
        mailto: None,
        one_click: true,
        secret: "benchmark secret, thirty-two bytes+".into(),
        previous_secrets: Vec::new(),
    };
    let tokens = UnsubscribeTokens::new(&unsubscribe.secret, &[]);
    let size = newsletter(&templates, &vars, &unsubscribe, &tokens).len();
    assert!((1500..4000).contains(&size), "newsletter is {size} bytes");

    let mut group = c.benchmark_group("message");
    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("render+build newsletter ({size} B)"), |b| {
        b.iter(|| newsletter(&templates, black_box(&vars), &unsubscribe, &tokens));
    });
    // A large static text with one variable, as in issue 16's 100 KB runs.
    let big = tempfile::tempdir().unwrap();
    let dir = big.path().join("big");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("subject.hbs"), "Big news for {{name}}\n").unwrap();
    let line = "The quick brown fox jumps over the lazy dog, again and again and again.\n";
    let text = format!(
        "Hello {{{{name}}}},\n\n{}",
        line.repeat(102_400 / line.len())
    );
    std::fs::write(dir.join("text.hbs"), &text).unwrap();
    let big_templates = Templates::load(big.path()).unwrap();
    group.bench_function("render 100 KB text template", |b| {
        b.iter(|| big_templates.render("big", black_box(&vars)).unwrap());
    });
    group.finish();

    let message = newsletter(&templates, &vars, &unsubscribe, &tokens);
    let mut group = c.benchmark_group("dkim");
    group.throughput(Throughput::Elements(1));
    for (algorithm, key) in [
        (DkimAlgorithm::RsaSha256, "dkim-test-rsa2048.pem"),
        (DkimAlgorithm::Ed25519Sha256, "dkim-test-ed25519.pem"),
    ] {
        let key_file = root().join("tests/data").join(key);
        let config = DkimConfig::new("example.com", "s1", key_file, algorithm);
        let signer = DkimSigner::from_config(&config).unwrap();
        group.bench_function(format!("sign {algorithm} ({size} B)"), |b| {
            b.iter(|| signer.sign(black_box(&message)).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, render_and_build);
criterion_main!(benches);

/// The unsubscribe token's subject: `address` of job `job`, leaving the default list.
fn token_for<'a>(job: &'a str, address: &'a str) -> volley::message::TokenFor<'a> {
    volley::message::TokenFor {
        job,
        list: "default",
        address,
        issued: std::time::SystemTime::now(),
    }
}
