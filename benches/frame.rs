//! Frame encoding: the time to turn one event (an `id`, an `event` name and multi-line `data`)
//! into its SSE bytes with `Event::encode`, for 100-byte and 4 KiB `data`.
//!
//! Run: `cargo bench --bench frame` (about 6 s). Throughput is in bytes of `data`; each sample
//! includes the allocation of the output buffer and dropping it, as a publish pays both.

/// The server binary's allocator, so allocation costs match what the server pays.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringcast::wire::frame::Event;

/// `data` sizes measured, with their labels.
const SIZES: [(&str, usize); 2] = [("100B", 100), ("4KiB", 4096)];
/// Line breaks placed in each `data`, evenly spaced: "a few", as JSON pretty-printed by a
/// publisher would have, so encoding takes the multi-line path.
const LINE_BREAKS: usize = 4;

/// `len` bytes of text with `LINE_BREAKS` evenly spaced `\n`s.
fn data(len: usize) -> String {
    let every = len / (LINE_BREAKS + 1);
    let byte_at = |i: usize| {
        let line_break = i > 0 && i.is_multiple_of(every) && i / every <= LINE_BREAKS;
        if line_break { '\n' } else { char::from(b'a' + (i % 26) as u8) }
    };
    (0..len).map(byte_at).collect()
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for (label, len) in SIZES {
        let data = data(len);
        assert_eq!(data.matches('\n').count(), LINE_BREAKS);
        let event = Event { id: Some("1234567"), event: Some("price-update"), ..Event::data(&data) };
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| black_box(&event).encode().expect("id and event are single lines"));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // No HTML plots: they cost CPU on a shared 2-core machine; the numbers are in the console
    // output and target/criterion/*/new/estimates.json.
    config = Criterion::default().without_plots();
    targets = encode
}
criterion_main!(benches);
