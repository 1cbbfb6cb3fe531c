//! Throughput of the SMTP codec on the hot path: parsing replies and encoding
//! message content (CRLF normalisation, dot-stuffing, BDAT framing).

// A benchmark or tool reports its figures on the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use volley::smtp::ReplyParser;
use volley::smtp::body::{encode_bdat_last, encode_data};

/// The replies to one pipelined transaction with three recipients.
const PIPELINED: &[u8] = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as 4XyZ1b2c3d\r\n";

const EHLO: &[u8] = b"250-mx.example.com\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-ETRN\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n";

fn replies(c: &mut Criterion) {
    let mut group = c.benchmark_group("reply_parse");
    for (name, wire) in [("pipelined_group", PIPELINED), ("ehlo", EHLO)] {
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function(name, |b| {
            let mut parser = ReplyParser::new();
            let mut buf = BytesMut::with_capacity(4096);
            b.iter(|| {
                buf.extend_from_slice(wire);
                while let Some(reply) = parser.parse(&mut buf).unwrap() {
                    black_box(reply);
                }
            });
        });
    }
    group.finish();
}

/// A message of about `size` octets, CRLF lines of 76 characters, some starting
/// with a dot; `bare_lf` uses LF line ends (the slow path).
fn message(size: usize, bare_lf: bool) -> Vec<u8> {
    let mut body = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hello\r\n\r\n".to_vec();
    let mut i = 0;
    while body.len() < size {
        let lead = if i % 10 == 0 { "." } else { "x" };
        body.extend_from_slice(lead.as_bytes());
        body.extend_from_slice(&[b'q'; 75]);
        body.extend_from_slice(if bare_lf { b"\n" } else { b"\r\n" });
        i += 1;
    }
    body
}

fn bodies(c: &mut Criterion) {
    let mut group = c.benchmark_group("body_encode");
    for size in [2 * 1024, 100 * 1024] {
        for bare_lf in [false, true] {
            let body = message(size, bare_lf);
            let label = format!("{}KiB{}", size / 1024, if bare_lf { "_lf" } else { "" });
            group.throughput(Throughput::Bytes(body.len() as u64));
            let mut out = Vec::with_capacity(body.len() * 2);
            group.bench_with_input(BenchmarkId::new("data", &label), &body, |b, body| {
                b.iter(|| {
                    out.clear();
                    encode_data(black_box(body), &mut out);
                });
            });
            group.bench_with_input(BenchmarkId::new("bdat", &label), &body, |b, body| {
                b.iter(|| {
                    out.clear();
                    encode_bdat_last(black_box(body), &mut out);
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, replies, bodies);
criterion_main!(benches);
