//! Throughput of `seal` and `open` for a 200-byte field and a 1 MiB blob.
//!
//! Run with `cargo bench -p medconnect-crypto`, or with `bench/crypto.sh`, which also runs
//! `openssl speed` on the same machine for comparison. Throughput is in decimal units (1 MB is
//! 10^6 bytes), as in `openssl speed`. The `open` figures include wiping the returned plaintext
//! buffer when it is dropped, which every caller pays too.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use medconnect_crypto::{open, seal, Aad, DataKey, KeyId};

const AAD: Aad<'static> = Aad {
    tenant: "0b5e0a4e-5d0c-4a5e-9f36-8f1d2c3b4a59",
    table: "photos",
    column: "content",
    record: "6c1f9e2a-7b3d-4c8e-a1f0-123456789abc",
};

fn seal_and_open(c: &mut Criterion) {
    let key = DataKey::generate(KeyId::new()).expect("random source works");
    let sizes = [("field_200B", 200usize), ("blob_1MiB", 1 << 20)];

    for (name, size) in sizes {
        let plaintext: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let sealed = seal(&key, 1, &AAD, &plaintext).expect("seal succeeds");

        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::BytesDecimal(size as u64));
        group.bench_function("seal", |b| {
            b.iter(|| seal(&key, 1, &AAD, black_box(&plaintext)).expect("seal succeeds"))
        });
        group.bench_function("open", |b| {
            b.iter(|| open(&key, &AAD, black_box(&sealed)).expect("open succeeds"))
        });
        group.finish();
    }
}

criterion_group!(benches, seal_and_open);
criterion_main!(benches);
