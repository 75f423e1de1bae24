//! The spread of single-publish times behind the `publish` group of the `ring` bench: for one
//! and for 10,000 parked readers, back to back and paced (`PUBLISH_PERIOD` between timed calls),
//! plus one reader with the same period spent in an idle spin (`idle_gap`: time alone, no other
//! work). Prints min/p10/p50/p90/p99/max and the mean of 2,000 single calls each (20,000 for
//! the back-to-back row), and the 10,000-reader rows' ratios to the one-reader rows.
//!
//! Run: `cargo bench --bench publish_spread` (about 15 s).

#![expect(clippy::cast_precision_loss, reason = "nanosecond figures far below 2^52 print exactly")]

/// The server binary's allocator, so allocation costs match what the server pays.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

mod common;
use common::{PUBLISH_PERIOD, pace, publish_loop};

/// Single-call times of one configuration, sorted, in nanoseconds.
struct Spread {
    name: &'static str,
    sorted: Vec<u64>,
}

impl Spread {
    fn measure(name: &'static str, n: usize, calls: u64, mut between: impl FnMut()) -> Self {
        let mut sorted = Vec::with_capacity(calls as usize);
        publish_loop(
            calls,
            n,
            |_| between(),
            |elapsed| sorted.push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)),
        );
        sorted.sort_unstable();
        Self { name, sorted }
    }

    /// The `per_mille`/1000 quantile (nearest rank below).
    fn quantile(&self, per_mille: usize) -> u64 {
        self.sorted[(self.sorted.len() - 1) * per_mille / 1000]
    }

    fn mean(&self) -> f64 {
        self.sorted.iter().sum::<u64>() as f64 / self.sorted.len() as f64
    }

    fn print(&self) {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} |",
            self.name,
            self.quantile(0),
            self.quantile(100),
            self.quantile(500),
            self.quantile(900),
            self.quantile(990),
            self.quantile(1000),
            self.mean()
        );
    }
}

/// Spins for `PUBLISH_PERIOD` touching nothing.
fn idle_gap() {
    let until = Instant::now() + PUBLISH_PERIOD;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Measures one setup unless `filter` (the first argument that is not a flag) leaves it out.
fn measure(filter: Option<&str>, name: &'static str, n: usize, calls: u64, between: impl FnMut()) -> Option<Spread> {
    if filter.is_some_and(|filter| !name.contains(filter)) {
        return None;
    }
    let spread = Spread::measure(name, n, calls, between);
    spread.print();
    Some(spread)
}

fn main() {
    const CALLS: u64 = 2_000;
    // `cargo bench` passes `--bench`; anything else is a filter on the setup's name
    // (`perf/publish-callgrind.sh` runs one setup at a time).
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with("--"));
    let filter = filter.as_deref();
    let period = PUBLISH_PERIOD.as_secs_f64() * 1e3;
    println!("single `Ring::publish` times, ns (period {period} ms)\n");
    println!("| setup | min | p10 | p50 | p90 | p99 | max | mean |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let back_to_back = measure(filter, "1 reader, back to back", 1, 10 * CALLS, || {});
    measure(filter, "1 reader, idle spin of one period", 1, CALLS, idle_gap);
    let mut next = Instant::now();
    let one = measure(filter, "1 reader, paced", 1, CALLS, || pace(&mut next));
    let many_back_to_back = measure(filter, "10,000 readers, back to back", 10_000, CALLS, || {});
    let mut next = Instant::now();
    let many = measure(filter, "10,000 readers, paced", 10_000, CALLS, || pace(&mut next));
    println!();
    for (label, many, one) in [("paced", &many, &one), ("back to back", &many_back_to_back, &back_to_back)] {
        if let (Some(many), Some(one)) = (many, one) {
            println!(
                "10,000 / 1 reader, {label}: p50 {:.2}, p90 {:.2}, mean {:.2}",
                many.quantile(500) as f64 / one.quantile(500) as f64,
                many.quantile(900) as f64 / one.quantile(900) as f64,
                many.mean() / one.mean(),
            );
        }
    }
}
