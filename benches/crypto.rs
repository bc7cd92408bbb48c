//! Criterion figures for sealing and opening an access token: the per-call crypto cost on the
//! vault's cold path (the hot path serves from memory and does no crypto).

use criterion::{criterion_group, criterion_main, Criterion};
use token_vault::crypto::{Aad, Keyring, Purpose};

fn sealing(c: &mut Criterion) {
    let (ring, _) = Keyring::generate("bench");
    let token = "a".repeat(900);
    let aad = Aad::for_generation(Purpose::AccessToken, "tenant-0000001", "understory", 7);
    let sealed = ring.seal(&aad, token.as_bytes()).expect("sealing works");
    c.bench_function("seal_access_token", |b| {
        b.iter(|| ring.seal(std::hint::black_box(&aad), std::hint::black_box(token.as_bytes())))
    });
    c.bench_function("open_access_token", |b| {
        b.iter(|| ring.open(std::hint::black_box(&aad), std::hint::black_box(&sealed)))
    });
    // What a cache miss does: the plaintext opened as the secret string handed out.
    c.bench_function("open_access_token_as_text", |b| {
        b.iter(|| ring.open_str(std::hint::black_box(&aad), std::hint::black_box(&sealed)))
    });
}

criterion_group!(benches, sealing);
criterion_main!(benches);
