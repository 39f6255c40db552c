//! Frame codec throughput: encode and decode of Submit and Deliver frames.

#![allow(clippy::unwrap_used)] // benchmark setup: a panic is a failure

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herold_proto::codec::{DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encode_frame};
use herold_proto::v1::{self, server_frame};

fn deliver(size: usize) -> v1::ServerFrame {
    v1::ServerFrame {
        kind: Some(server_frame::Kind::Deliver(v1::Deliver {
            envelope: Some(v1::Envelope {
                conversation_id: "station:0042".into(),
                seq: 123_456,
                message_id: vec![7; 16],
                sender_account_id: "volunteer-4711".into(),
                sender_device_id: "volunteer-4711.phone".into(),
                server_time_ms: 1_790_000_000_000,
                expires_at_ms: 1_790_086_400_000,
                ciphertext: vec![0xAB; size],
                welcomed_devices: Vec::new(),
            }),
        })),
    }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for size in [128usize, 1024, 16 * 1024] {
        let frame = deliver(size);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("encode_deliver", size), &frame, |b, f| {
            let mut out = BytesMut::with_capacity(size + 256);
            b.iter(|| {
                out.clear();
                encode_frame(f, DEFAULT_MAX_FRAME_BYTES, &mut out).unwrap();
            })
        });
        let mut wire = BytesMut::new();
        for _ in 0..64 {
            encode_frame(&frame, DEFAULT_MAX_FRAME_BYTES, &mut wire).unwrap();
        }
        let wire = wire.freeze();
        g.throughput(Throughput::Elements(64));
        g.bench_with_input(
            BenchmarkId::new("decode_deliver_x64", size),
            &wire,
            |b, w| {
                b.iter(|| {
                    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
                    dec.extend(w);
                    let mut n = 0;
                    while let Some(f) = dec.next_message::<v1::ServerFrame>().unwrap() {
                        n += usize::from(f.kind.is_some());
                    }
                    assert_eq!(n, 64);
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
