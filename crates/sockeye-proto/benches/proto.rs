//! Micro-benchmarks of sockeye-proto's hot paths, each at 20 B, 1 KiB, 64 KiB and 1 MiB, with
//! throughput in bytes:
//!
//! - `frame_decode`: `Frame::decode` of a masked binary frame, unmasking included;
//! - `frame_encode/server` and `frame_encode/client`: `Frame::encode`, unmasked and masked;
//! - `mask/apply_mask` against the byte-at-a-time reference `mask/apply_mask_scalar`;
//! - `utf8/{ascii,multibyte}/{validator,std}`: `Utf8Validator::feed` + `finish` against
//!   `std::str::from_utf8`;
//! - `handshake/parse_request`: a typical browser request head;
//! - `deflate/compress` and `deflate/inflate`: a JSON-like text payload, default parameters.
//!
//! Run with `bench/micro.sh [filter]` (pins the benchmark to one CPU), or
//! `cargo bench -p sockeye-proto --bench proto -- <filter>`.
//! Measurement times are short so a full run takes a few minutes; pass
//! `--measurement-time <s>` for steadier numbers.

// criterion_group! defines an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use sockeye_proto::extensions::deflate::Deflate;
use sockeye_proto::frame::{Frame, OpCode};
use sockeye_proto::mask::{apply_mask, apply_mask_scalar};
use sockeye_proto::utf8::Utf8Validator;
use sockeye_proto::{handshake, Config, DeflateParams, Side};

/// 20 B, 1 KiB, 64 KiB, 1 MiB.
const SIZES: [usize; 4] = [20, 1024, 64 * 1024, 1024 * 1024];

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn label(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{}MiB", s >> 20),
        s if s >= 1 << 10 => format!("{}KiB", s >> 10),
        s => format!("{s}B"),
    }
}

/// Bytes that are not all alike, so nothing is special-cased by accident.
fn binary(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 31 + i / 7) as u8).collect()
}

/// ASCII text of exactly `size` bytes.
fn ascii(size: usize) -> String {
    let words = "the quick brown fox jumps over the lazy dog 0123456789 ";
    words.chars().cycle().take(size).collect()
}

/// Mixed 2-, 3- and 4-byte characters (with some ASCII), exactly `size` bytes.
fn multibyte(size: usize) -> String {
    let mut s = String::with_capacity(size + 4);
    for c in "κόσμε€𝄞 日本語テキスト ".chars().cycle() {
        if s.len() + c.len_utf8() > size {
            break;
        }
        s.push(c);
    }
    while s.len() < size {
        s.push('.');
    }
    s
}

/// A JSON-like text payload of exactly `size` bytes: repetitive keys, varying values.
fn json(size: usize) -> String {
    let mut s = String::with_capacity(size + 128);
    s.push('[');
    let mut i = 0u64;
    while s.len() < size {
        let x = i.wrapping_mul(2_654_435_761) % 100_000;
        s.push_str(&format!(
            r#"{{"id":{i},"user":"user{}","price":{}.{:02},"tags":["ws","bench"],"ok":{}}},"#,
            x % 997,
            x / 100,
            x % 100,
            i % 3 == 0
        ));
        i += 1;
    }
    s.truncate(size);
    s
}

fn frame_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_decode");
    for size in SIZES {
        let frame = Frame::new(OpCode::Binary, binary(size));
        let mut wire = Vec::new();
        frame.encode(&mut wire, Some(MASK));
        group.throughput(Throughput::Bytes(size as u64));
        let batch = if size > 64 * 1024 {
            BatchSize::LargeInput
        } else {
            BatchSize::SmallInput
        };
        group.bench_function(BenchmarkId::from_parameter(label(size)), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |buf| Frame::decode(black_box(buf), usize::MAX).unwrap().unwrap(),
                batch,
            )
        });
    }
    group.finish();
}

fn frame_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_encode");
    for size in SIZES {
        let frame = Frame::new(OpCode::Binary, Bytes::from(binary(size)));
        let mut out = Vec::with_capacity(size + 14);
        group.throughput(Throughput::Bytes(size as u64));
        for (side, mask) in [("server", None), ("client", Some(MASK))] {
            group.bench_function(BenchmarkId::new(side, label(size)), |b| {
                b.iter(|| {
                    out.clear();
                    black_box(&frame).encode(&mut out, black_box(mask));
                    black_box(out.len())
                })
            });
        }
    }
    group.finish();
}

fn masking(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    for size in SIZES {
        let mut data = binary(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("apply_mask", label(size)), |b| {
            b.iter(|| apply_mask(black_box(&mut data), black_box(MASK), 0))
        });
        group.bench_function(BenchmarkId::new("apply_mask_scalar", label(size)), |b| {
            b.iter(|| apply_mask_scalar(black_box(&mut data), black_box(MASK), 0))
        });
    }
    group.finish();
}

fn utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        for (kind, text) in [("ascii", ascii(size)), ("multibyte", multibyte(size))] {
            let bytes = text.into_bytes();
            assert_eq!(bytes.len(), size);
            group.bench_function(
                BenchmarkId::new(format!("{kind}/validator"), label(size)),
                |b| {
                    b.iter(|| {
                        let mut v = Utf8Validator::new();
                        v.feed(black_box(&bytes)).unwrap();
                        v.finish().unwrap();
                    })
                },
            );
            group.bench_function(BenchmarkId::new(format!("{kind}/std"), label(size)), |b| {
                b.iter(|| std::str::from_utf8(black_box(&bytes)).unwrap().len())
            });
        }
    }
    group.finish();
}

/// What Chrome sends, give or take the cookie.
const BROWSER_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\n\
Host: example.com:8000\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: http://example.com:8000\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: session=4f1d2c3b5a6978e0; theme=dark\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

fn handshake_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    let config = Config::new();
    group.throughput(Throughput::Bytes(BROWSER_REQUEST.len() as u64));
    group.bench_function("parse_request", |b| {
        b.iter(|| {
            handshake::parse_request(black_box(BROWSER_REQUEST), &config)
                .unwrap()
                .unwrap()
                .1
        })
    });
    group.finish();
}

/// The parameters negotiated when neither side asks for anything.
const DEFAULT_PARAMS: DeflateParams = DeflateParams {
    server_no_context_takeover: false,
    client_no_context_takeover: false,
    server_max_window_bits: 15,
    client_max_window_bits: 15,
};

fn deflate(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate");
    for size in SIZES {
        let payload = json(size).into_bytes();
        group.throughput(Throughput::Bytes(size as u64));

        // The server compresses; with context takeover (the default) each message may refer
        // to the previous ones, as on a real connection sending similar messages. State is
        // made inside the closures, so that filtered-out benchmarks cost nothing.
        let mut server = None;
        let mut out = Vec::with_capacity(size);
        group.bench_function(BenchmarkId::new("compress", label(size)), |b| {
            let server =
                server.get_or_insert_with(|| Deflate::new(DEFAULT_PARAMS, Side::Server, 6));
            b.iter(|| {
                out.clear();
                server.compress(black_box(&payload), true, &mut out);
                black_box(out.len())
            })
        });

        // The client inflates one message compressed by a fresh server: its references stay
        // inside the message, so inflating it again and again with one context is valid.
        let mut client = None;
        let mut inflated = Vec::with_capacity(size);
        group.bench_function(BenchmarkId::new("inflate", label(size)), |b| {
            let (client, compressed) = client.get_or_insert_with(|| {
                let mut compressed = Vec::new();
                Deflate::new(DEFAULT_PARAMS, Side::Server, 6).compress(
                    &payload,
                    true,
                    &mut compressed,
                );
                let mut client = Deflate::new(DEFAULT_PARAMS, Side::Client, 6);
                let mut check = Vec::new();
                client
                    .decompress(&compressed, true, &mut check, usize::MAX)
                    .unwrap();
                assert_eq!(check, payload, "deflate round trip");
                (client, compressed)
            });
            b.iter(|| {
                inflated.clear();
                client
                    .decompress(black_box(compressed), true, &mut inflated, usize::MAX)
                    .unwrap();
                black_box(inflated.len())
            })
        });
    }
    group.finish();
}

fn short() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = short();
    targets = frame_decode, frame_encode, masking, utf8, handshake_parse, deflate
}
criterion_main!(benches);
