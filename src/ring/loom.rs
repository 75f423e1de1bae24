//! loom models of the ring protocol. Run with
//! `RUSTFLAGS="--cfg ringcast_loom" cargo test --release --lib ring::loom` (each model sets its own
//! preemption bound, the largest that finishes in seconds; `LOOM_MAX_PREEMPTIONS` overrides).
//!
//! Capacity 2 forces wraparound after two publishes. Every model checks, for every reader:
//! sequence numbers strictly increase; delivered + missed (`Lagged`) == published; each
//! producer's values arrive in its order; readers agree on the value of each sequence; and
//! loom's `Arc` leak check proves no entry or wait node is leaked. The blocking models also
//! prove there is no lost wake-up: loom fails a model in which every thread is parked.

use loom::future::block_on;
use loom::thread;

use super::{RecvError, Ring};

/// (producer, n)
type Value = (usize, usize);

#[derive(Default, Debug)]
struct Seen {
    entries: Vec<(u64, Value)>,
    missed: u64,
}

impl Seen {
    fn check(&self, published: u64, per_producer: usize) {
        assert_eq!(self.entries.len() as u64 + self.missed, published, "lost or duplicated: {self:?}");
        assert!(self.entries.windows(2).all(|w| w[0].0 < w[1].0), "seq not increasing: {self:?}");
        let mut last = vec![None; 2];
        for &(_, (p, n)) in &self.entries {
            assert!(n < per_producer, "value out of range: {self:?}");
            assert!(last[p].is_none_or(|m| n > m), "producer order broken: {self:?}");
            last[p] = Some(n);
        }
    }
}

fn agree(a: &Seen, b: &Seen) {
    for (seq, value) in &a.entries {
        if let Some((_, other)) = b.entries.iter().find(|(s, _)| s == seq) {
            assert_eq!(value, other, "readers disagree on seq {seq}");
        }
    }
}

/// A reader that polls without parking (loom's `yield_now` lets the others run).
fn read_spinning(mut cursor: super::Cursor<Value>) -> Seen {
    let mut seen = Seen::default();
    let mut out = Vec::new();
    loop {
        match cursor.try_recv_many(&mut out, 4) {
            Ok(0) => thread::yield_now(),
            Ok(_) => seen.entries.extend(out.drain(..).map(|e| (e.seq(), *e.value()))),
            Err(RecvError::Lagged { missed }) => seen.missed += missed,
            Err(RecvError::Closed) => return seen,
        }
    }
}

/// A reader that parks through the dispatcher.
fn read_parking(mut cursor: super::Cursor<Value>) -> Seen {
    let mut seen = Seen::default();
    let mut out = Vec::new();
    loop {
        match block_on(cursor.recv_many(&mut out, 4)) {
            Ok(_) => seen.entries.extend(out.drain(..).map(|e| (e.seq(), *e.value()))),
            Err(RecvError::Lagged { missed }) => seen.missed += missed,
            Err(RecvError::Closed) => return seen,
        }
    }
}

fn producer(ring: Ring<Value>, p: usize, count: usize) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for n in 0..count {
            ring.publish((p, n));
        }
    })
}

/// Runs `f` under loom with a preemption bound chosen per model (so that CI finishes in
/// minutes) unless `LOOM_MAX_PREEMPTIONS` overrides it.
fn model(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(preemptions);
    }
    builder.max_branches = 100_000;
    builder.check(f);
}

/// Two producers race through a ring of two slots (each slot is written twice) while a
/// reader reads: the monotone slot store, the sequence check and lap accounting under
/// wraparound, with the producers' claims and stores interleaved every way.
#[test]
fn two_producers_one_reader_wraparound() {
    model(3, || {
        let (ring, _dispatcher) = Ring::new(2);
        let cursor = ring.cursor_at(0).expect("empty ring");
        let p0 = producer(ring.clone(), 0, 2);
        let p1 = producer(ring, 1, 2);
        let seen = read_spinning(cursor);
        p0.join().expect("producer 0");
        p1.join().expect("producer 1");
        seen.check(4, 2);
    });
}

/// One producer laps two concurrent readers (three publishes into two slots). Each reader
/// makes two attempts while the producer runs (no spinning, so the model stays finite), then
/// drains the rest once it has finished: both account for every sequence and agree on what
/// each sequence held.
#[test]
fn one_producer_two_readers_agree() {
    model(4, || {
        let (ring, _dispatcher) = Ring::new(2);
        let mut first = ring.cursor_at(0).expect("empty ring");
        let second = ring.cursor_at(0).expect("empty ring");
        let other = thread::spawn(move || {
            let (mut cursor, mut seen) = (second, Seen::default());
            read_attempts(&mut cursor, &mut seen, 2);
            (cursor, seen)
        });
        let p0 = producer(ring, 0, 3);
        let mut a = Seen::default();
        read_attempts(&mut first, &mut a, 2);
        p0.join().expect("producer");
        let (mut second, mut b) = other.join().expect("reader");
        read_attempts(&mut first, &mut a, usize::MAX);
        read_attempts(&mut second, &mut b, usize::MAX);
        a.check(3, 3);
        b.check(3, 3);
        agree(&a, &b);
    });
}

/// Up to `attempts` non-blocking receives; stops early at `Closed`.
fn read_attempts(cursor: &mut super::Cursor<Value>, seen: &mut Seen, attempts: usize) {
    let mut out = Vec::new();
    for _ in 0..attempts {
        match cursor.try_recv_many(&mut out, 4) {
            Ok(_) => seen.entries.extend(out.drain(..).map(|e| (e.seq(), *e.value()))),
            Err(RecvError::Lagged { missed }) => seen.missed += missed,
            Err(RecvError::Closed) => return,
        }
    }
}

/// A parked reader is woken by the dispatcher for every publish it needs: two producers,
/// one reader that only ever parks. The ring stays open until the reader has accounted for
/// both publishes, so a lost wake-up leaves every thread parked, which loom reports.
#[test]
fn parked_reader_is_never_forgotten() {
    model(1, || {
        let (ring, dispatcher) = Ring::new(2);
        let mut cursor = ring.cursor_at(0).expect("empty ring");
        let dispatch = thread::spawn(move || block_on(dispatcher));
        let p0 = producer(ring.clone(), 0, 1);
        let p1 = producer(ring.clone(), 1, 1);
        let mut seen = Seen::default();
        let mut out = Vec::new();
        while seen.entries.len() as u64 + seen.missed < 2 {
            match block_on(cursor.recv_many(&mut out, 4)) {
                Ok(_) => seen.entries.extend(out.drain(..).map(|e| (e.seq(), *e.value()))),
                Err(RecvError::Lagged { missed }) => seen.missed += missed,
                Err(RecvError::Closed) => panic!("closed while open"),
            }
        }
        drop(ring);
        p0.join().expect("producer 0");
        p1.join().expect("producer 1");
        dispatch.join().expect("dispatcher");
        seen.check(2, 1);
    });
}

/// One producer laps a parked reader (three publishes into two slots) while it sleeps and
/// then closes the ring: the reader must wake, account for every sequence and see `Closed`.
#[test]
fn lapping_and_closing_wake_a_parked_reader() {
    model(1, || {
        let (ring, dispatcher) = Ring::new(2);
        let cursor = ring.cursor_at(0).expect("empty ring");
        let dispatch = thread::spawn(move || block_on(dispatcher));
        let p0 = producer(ring, 0, 3);
        let seen = read_parking(cursor);
        p0.join().expect("producer");
        dispatch.join().expect("dispatcher");
        seen.check(3, 3);
    });
}

/// The slot on its own (`slot.rs`): one publisher stores two entries in turn, reusing the one it
/// displaces through the spare, while a lapped publisher tries to store an older entry and two
/// readers peek twice each, keeping clones. Every interleaving: a reader never sees a torn
/// entry or a sequence go back; a clone reads right after any number of stores; the older entry
/// never replaces a newer one, nor lowers the stamp; and loom's `Arc` registry proves each entry is dropped exactly
/// once (never while a reader is registered on it: `Arc::from_raw` on a freed entry panics).
#[test]
fn slot_reclaims_each_entry_once_with_readers_in_flight() {
    use super::slot::{Slot, Spare};
    use crate::sync::Arc;

    fn store(slot: &Slot<u64>, spare: &Spare<u64>, seq: u64) {
        // The ring's publish path: reuse or allocate, store, keep what was displaced.
        if let Some(displaced) = slot.store_newer(spare.entry(seq, seq * 10)) {
            spare.put(displaced);
        }
    }

    model(2, || {
        let cell = Arc::new((Slot::<u64>::empty(), Spare::<u64>::new()));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let cell = Arc::clone(&cell);
                thread::spawn(move || {
                    let (mut last, mut kept) = (0, Vec::new());
                    for _ in 0..2 {
                        cell.0.peek(|entry| {
                            if let Some(entry) = entry {
                                let seq = entry.seq;
                                // Let every other thread run while this one is registered: the
                                // entry must stay the one it read, not be freed or reused.
                                thread::yield_now();
                                assert_eq!(entry.seq, seq, "an entry changed under a registered reader");
                                assert_eq!(entry.value, entry.seq * 10, "torn entry");
                                assert!(entry.seq >= last, "sequence went back");
                                last = entry.seq;
                                kept.push(Arc::clone(entry));
                            }
                        });
                    }
                    kept.iter().all(|entry| entry.value == entry.seq * 10)
                })
            })
            .collect();
        let lapped = {
            let cell = Arc::clone(&cell);
            thread::spawn(move || store(&cell.0, &cell.1, 1))
        };
        store(&cell.0, &cell.1, 3);
        store(&cell.0, &cell.1, 5);
        lapped.join().expect("lapped publisher");
        for reader in readers {
            assert!(reader.join().expect("reader"), "a kept clone changed under its reader");
        }
        assert_eq!(cell.0.peek(|entry| entry.map(|entry| entry.seq)), Some(5), "the newest entry stays");
        assert_eq!(cell.0.newest(), Some(5), "the stamp names the newest entry");
    });
}
