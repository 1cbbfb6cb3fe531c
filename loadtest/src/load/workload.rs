//! The work submitted to volley: recipient addresses, campaign request bodies, the generated
//! size-controlled template, and which recipients the sink will refuse for good.

use std::fmt::Write as _;
use std::path::Path;

use super::LoadError;

/// The generated template's name.
pub(crate) const LOAD_TEMPLATE: &str = "load";
/// The campaigns' sender (and DKIM signing domain).
pub(crate) const FROM: &str = "news@load.test";
/// DKIM `d=` and selector of the generated `[dkim]` section.
pub(crate) const DKIM_DOMAIN: &str = "load.test";
/// Bytes of a built message that are not the body variable: headers (From, To, Subject,
/// Date, Message-ID, MIME-Version, Content-Type...), the greeting line and line ends.
/// Measured on volley's output; the report shows the real average size.
const HEADER_ESTIMATE: usize = 330;

/// Recipient number `i` of a run with `domains` domains.
pub(crate) fn address(i: u64, domains: u32) -> String {
    format!("user{i}@{}", domain(i % u64::from(domains.max(1))))
}

/// Domain number `i`.
pub(crate) fn domain(i: u64) -> String {
    format!("d{i}.load.test")
}

/// Writes `dir/load/{subject,text}.hbs`: subject `{{subject}}`, text a greeting with
/// `{{name}}` and then `{{body}}`.
pub(crate) fn write_template(dir: &Path) -> Result<(), LoadError> {
    let t = dir.join(LOAD_TEMPLATE);
    std::fs::create_dir_all(&t).map_err(LoadError::io("cannot create the template"))?;
    std::fs::write(t.join("subject.hbs"), "{{subject}}\n")
        .and_then(|()| std::fs::write(t.join("text.hbs"), "Hello {{name}},\n\n{{body}}\n"))
        .map_err(LoadError::io("cannot write the template"))
}

/// A body variable that brings a message to about `size` bytes: 76-character lines, one in
/// ten starting with a dot (so that volley must dot-stuff), ASCII only.
pub(crate) fn body_text(size: usize) -> String {
    let target = size.saturating_sub(HEADER_ESTIMATE).max(1);
    let mut body = String::with_capacity(target + 80);
    let mut line = 0usize;
    while body.len() < target {
        let room = target - body.len();
        let len = room.clamp(1, 76);
        body.push(if line % 10 == 9 {
            '.'
        } else {
            char::from(b'a' + (line % 26) as u8)
        });
        body.extend(std::iter::repeat_n('x', len - 1));
        body.push('\n');
        line += 1;
    }
    body
}

/// The JSON body of one `POST /v1/campaigns` for recipients `range`.
///
/// With the generated template, shared `subject` and `body` and a per-recipient `name`;
/// with a repository template, every variable the shipped examples use (`name` per
/// recipient; `order_id`, `total`, `lines`, `items` shared). `send_at` delays every delivery
/// (queue-only runs).
pub(crate) fn campaign_body(
    range: std::ops::Range<u64>,
    domains: u32,
    template: Option<&str>,
    size: usize,
    send_at: Option<u64>,
) -> String {
    let shared = match template {
        None => serde_json::json!({
            "subject": "volley load test",
            "body": body_text(size),
        }),
        Some(_) => serde_json::json!({
            "order_id": "LOAD-1",
            "total": "9.99",
            "lines": [{"item": "Load test", "amount": "9.99"}],
            "items": [{"url": "https://example.com/a", "title": "A"}],
        }),
    };
    let name = template.unwrap_or(LOAD_TEMPLATE);
    let mut out = String::with_capacity(64 * (range.end - range.start) as usize + 4096);
    // Names and addresses are ASCII letters, digits, '@' and '.': no JSON escaping needed.
    let _ = write!(
        out,
        "{{\"template\":{},\"from\":\"{FROM}\",\"vars\":{shared},",
        serde_json::Value::from(name)
    );
    if let Some(at) = send_at {
        let _ = write!(out, "\"send_at\":{at},");
    }
    out.push_str("\"recipients\":[");
    for i in range.clone() {
        if i > range.start {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"to\":\"{}\",\"vars\":{{\"name\":\"user{i}\"}}}}",
            address(i, domains)
        );
    }
    out.push_str("]}");
    out
}

/// Whether the sink, started with `--permfail-percent percent --seed seed`, refuses `address`
/// with 550 on every attempt. Mirrors the sink's own decision (FNV-1a of the lower-cased
/// address, a SplitMix64 finaliser, compared with the percentage); the load test checks the
/// two agree, since every such recipient must bounce and no other one may.
pub(crate) fn sink_permfails(address: &str, percent: f64, seed: u64) -> bool {
    if percent <= 0.0 {
        return false;
    }
    let h = address
        .to_ascii_lowercase()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    let v = mix(h ^ seed);
    (v >> 11) as f64 / (1u64 << 53) as f64 * 100.0 < percent
}

/// SplitMix64's finaliser (the sink's `mix`).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaign_bodies_are_valid_json() {
        let body = campaign_body(5..8, 2, None, 300, Some(99));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["template"], "load");
        assert_eq!(v["send_at"], 99);
        assert_eq!(v["recipients"].as_array().unwrap().len(), 3);
        assert_eq!(v["recipients"][0]["to"], "user5@d1.load.test");
        assert_eq!(v["recipients"][1]["vars"]["name"], "user6");
        let v: serde_json::Value =
            serde_json::from_str(&campaign_body(0..1, 1, Some("welcome"), 0, None)).unwrap();
        assert_eq!(v["template"], "welcome");
        assert!(v.get("send_at").is_none());
    }

    #[test]
    fn body_reaches_the_size_with_dot_lines() {
        let body = body_text(10_000);
        assert!((10_000 - HEADER_ESTIMATE..10_000 - HEADER_ESTIMATE + 80).contains(&body.len()));
        assert!(body.lines().any(|l| l.starts_with('.')));
        assert!(body.lines().all(|l| l.len() <= 76));
        assert!(!body_text(0).is_empty());
    }

    #[test]
    fn permfail_prediction_is_proportional_and_case_blind() {
        let failed = (0..10_000)
            .filter(|i| sink_permfails(&address(*i, 20), 5.0, 1))
            .count();
        assert!((400..600).contains(&failed), "{failed}");
        assert_eq!(
            sink_permfails("User7@D7.load.test", 30.0, 3),
            sink_permfails("user7@d7.load.test", 30.0, 3)
        );
        assert!(!sink_permfails("a@b", 0.0, 1));
    }
}
