//! Single-threaded behaviour of the ring, plus the real-thread stress test (`#[ignore]`,
//! run by name in CI: `cargo test --release --lib ring::tests::stress -- --ignored`).

use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Wake, Waker};

use super::{Lookup, RecvError, Ring, SeekError};
use crate::sync::Arc;

fn drain<T: Clone>(cursor: &mut super::Cursor<T>) -> (Vec<(u64, T)>, u64) {
    let mut got = Vec::new();
    let mut missed = 0;
    let mut out = Vec::new();
    loop {
        match cursor.try_recv_many(&mut out, usize::MAX) {
            Ok(0) | Err(RecvError::Closed) => break,
            Ok(_) => got.extend(out.drain(..).map(|e| (e.seq(), e.value().clone()))),
            Err(RecvError::Lagged { missed: m }) => missed += m,
        }
    }
    (got, missed)
}

#[test]
fn capacity_is_rounded_up_to_a_power_of_two_and_clamped() {
    assert_eq!(Ring::<u8>::new(0).0.capacity(), 1);
    assert_eq!(Ring::<u8>::new(5).0.capacity(), 8);
    assert_eq!(Ring::<u8>::new(1024).0.capacity(), 1024);
    assert_eq!(Ring::<u8>::new(usize::MAX).0.capacity(), super::MAX_CAPACITY);
}

#[test]
fn a_new_reader_starts_at_the_next_publish() {
    let (ring, _dispatcher) = Ring::new(8);
    ring.publish("before");
    let mut cursor = ring.subscribe();
    assert_eq!(cursor.next_seq(), 1);
    ring.publish("after");
    assert_eq!(drain(&mut cursor), (vec![(1, "after")], 0));
}

#[test]
fn a_reader_that_is_behind_takes_every_ready_entry_in_one_call() {
    let (ring, _dispatcher) = Ring::new(8);
    let mut cursor = ring.subscribe();
    for i in 0..5 {
        assert_eq!(ring.publish(i), i);
    }
    let mut out = Vec::new();
    assert_eq!(cursor.try_recv_many(&mut out, 64), Ok(5));
    assert_eq!(out.iter().map(|e| *e.value()).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    assert_eq!(cursor.try_recv_many(&mut out, 64), Ok(0), "nothing left");
}

#[test]
fn max_bounds_a_batch() {
    let (ring, _dispatcher) = Ring::new(8);
    let mut cursor = ring.subscribe();
    (0..5).for_each(|i| {
        ring.publish(i);
    });
    let mut out = Vec::new();
    assert_eq!(cursor.try_recv_many(&mut out, 2), Ok(2));
    assert_eq!(cursor.try_recv_many(&mut out, 2), Ok(2));
    assert_eq!(cursor.try_recv_many(&mut out, 2), Ok(1));
    assert_eq!(out.iter().map(|e| e.seq()).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
}

#[test]
fn a_lapped_reader_gets_an_exact_count_then_the_oldest_held_entries() {
    let (ring, _dispatcher) = Ring::new(4);
    let mut cursor = ring.subscribe();
    (0..10u64).for_each(|i| {
        ring.publish(i);
    });
    let mut out = Vec::new();
    // Slot 0 holds seq 8: seqs 0..6 are gone (6..10 are the four held).
    assert_eq!(cursor.try_recv_many(&mut out, 64), Err(RecvError::Lagged { missed: 6 }));
    assert_eq!(cursor.try_recv_many(&mut out, 64), Ok(4));
    assert_eq!(out.iter().map(|e| *e.value()).collect::<Vec<_>>(), [6, 7, 8, 9]);
}

#[test]
fn entries_read_before_a_lap_are_delivered_before_it_is_reported() {
    let (ring, _dispatcher) = Ring::new(4);
    let mut cursor = ring.subscribe();
    (0..2u64).for_each(|i| {
        ring.publish(i);
    });
    let mut out = Vec::new();
    assert_eq!(cursor.try_recv_many(&mut out, 1), Ok(1));
    (2..7u64).for_each(|i| {
        ring.publish(i);
    }); // seq 1 (slot 1) overwritten by 5
    assert_eq!(cursor.try_recv_many(&mut out, 64), Err(RecvError::Lagged { missed: 2 }));
    assert_eq!(cursor.try_recv_many(&mut out, 64), Ok(4));
    let seqs: Vec<u64> = out.iter().map(|e| e.seq()).collect();
    assert_eq!(seqs, [0, 3, 4, 5, 6]);
    assert_eq!(seqs.len() as u64 + 2, 7, "delivered + missed == published");
}

#[test]
fn cursor_at_seeks_in_constant_time_within_the_window() {
    let (ring, _dispatcher) = Ring::new(4);
    (0..10u64).for_each(|i| {
        ring.publish(i);
    });
    assert_eq!(ring.cursor_at(5).err(), Some(SeekError::TooOld { seq: 5, oldest: 6 }));
    assert_eq!(ring.cursor_at(11).err(), Some(SeekError::Ahead { seq: 11, tail: 10 }));
    let mut at_seven = ring.cursor_at(7).expect("held");
    assert_eq!(drain(&mut at_seven), (vec![(7, 7), (8, 8), (9, 9)], 0));
    let mut at_tail = ring.cursor_at(10).expect("the tail is a valid place to wait");
    assert_eq!(drain(&mut at_tail), (vec![], 0));
}

#[test]
fn get_tells_ready_not_yet_and_overwritten_apart() {
    let (ring, _dispatcher) = Ring::new(2);
    (0..3u64).for_each(|i| {
        ring.publish(i);
    });
    assert!(matches!(ring.get(0), Lookup::Overwritten(2)));
    assert!(matches!(ring.get(1), Lookup::Ready(e) if *e.value() == 1));
    assert!(matches!(ring.get(3), Lookup::NotYet));
}

#[test]
fn dropping_the_last_producer_closes_after_the_reader_drains() {
    let (ring, _dispatcher) = Ring::new(4);
    let second = ring.clone();
    let mut cursor = ring.subscribe();
    ring.publish(1);
    drop(ring);
    assert!(!second.is_closed(), "a producer handle is still alive");
    second.publish(2);
    drop(second);
    let mut out = Vec::new();
    assert_eq!(cursor.try_recv_many(&mut out, 64), Ok(2));
    assert_eq!(cursor.try_recv_many(&mut out, 64), Err(RecvError::Closed));
}

#[test]
fn readers_share_the_published_value_and_release_it_after_being_overwritten() {
    let (ring, _dispatcher) = Ring::new(2);
    let mut a = ring.subscribe();
    let mut b = ring.subscribe();
    let frame = bytes::Bytes::from_static(b"data: shared\n\n");
    ring.publish(frame.clone());
    let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
    assert_eq!(a.try_recv_many(&mut out_a, 8), Ok(1));
    assert_eq!(b.try_recv_many(&mut out_b, 8), Ok(1));
    assert!(Arc::ptr_eq(&out_a[0], &out_b[0]), "both readers hold the same entry");
    assert_eq!(out_a[0].value().as_ptr(), frame.as_ptr(), "no copy of the frame bytes");
    let weak = Arc::downgrade(&out_a[0]);
    drop((out_a, out_b));
    ring.publish(bytes::Bytes::new());
    assert!(weak.upgrade().is_some(), "still in its slot");
    ring.publish(bytes::Bytes::new());
    ring.publish(bytes::Bytes::new());
    assert!(weak.upgrade().is_none(), "freed once overwritten and no reader holds it");
}

#[test]
fn cursor_count_tracks_live_readers() {
    let (ring, _dispatcher) = Ring::<()>::new(2);
    let a = ring.subscribe();
    let b = ring.cursor_at(0).expect("tail");
    assert_eq!(ring.cursor_count(), 2);
    drop((a, b));
    assert_eq!(ring.cursor_count(), 0);
}

/// Counts wake-ups of a task.
struct CountingWaker(std::sync::atomic::AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_parked_reader_is_woken_once_however_many_entries_arrive() {
    let (ring, mut dispatcher) = Ring::new(64);
    let mut cursor = ring.subscribe();
    let reader_count = Arc::new(CountingWaker(0.into()));
    let reader_waker = Waker::from(Arc::clone(&reader_count));
    let dispatcher_count = Arc::new(CountingWaker(0.into()));
    let dispatcher_waker = Waker::from(Arc::clone(&dispatcher_count));
    let mut out = Vec::new();

    assert!(std::pin::Pin::new(&mut dispatcher).poll(&mut Context::from_waker(&dispatcher_waker)).is_pending());
    assert!(cursor.poll_recv_many(&mut Context::from_waker(&reader_waker), &mut out, 64).is_pending());
    for i in 0..50 {
        ring.publish(i);
    }
    assert_eq!(dispatcher_count.0.load(Ordering::SeqCst), 1, "publishers wake the dispatcher once");
    assert!(std::pin::Pin::new(&mut dispatcher).poll(&mut Context::from_waker(&dispatcher_waker)).is_pending());
    assert_eq!(reader_count.0.load(Ordering::SeqCst), 1, "the dispatcher wakes the reader once");
    let ready = cursor.poll_recv_many(&mut Context::from_waker(&reader_waker), &mut out, 64);
    assert_eq!(ready, Poll::Ready(Ok(50)), "one wake-up takes all fifty");
}

use std::future::Future as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_on_a_runtime_wait_without_spinning_and_see_every_entry() {
    let (ring, dispatcher) = Ring::new(1024);
    tokio::spawn(dispatcher);
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let mut cursor = ring.subscribe();
            tokio::spawn(async move {
                let (mut out, mut seen, mut polls) = (Vec::new(), Vec::new(), 0);
                loop {
                    polls += 1;
                    match cursor.recv_many(&mut out, 64).await {
                        Ok(_) => seen.extend(out.drain(..).map(|e| *e.value())),
                        Err(RecvError::Closed) => return (seen, polls),
                        Err(lagged) => panic!("capacity 1024 cannot lap 500 entries: {lagged}"),
                    }
                }
            })
        })
        .collect();
    for i in 0..500u32 {
        ring.publish(i);
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    drop(ring);
    for reader in readers {
        let (seen, polls) = reader.await.expect("reader task");
        assert_eq!(seen, (0..500).collect::<Vec<_>>());
        assert!(polls <= 501, "at most one wake per entry, usually far fewer ({polls})");
    }
}

/// Many producers and readers on OS threads, a small ring (wraparound every 64 publishes),
/// one deliberately slow reader (lapped over and over). Checks per reader: sequence numbers
/// strictly increase, delivered + missed == published, every value is intact and matches its
/// producer's order, and readers agree on what each sequence number holds.
#[test]
#[ignore = "stress test: run by name in CI (release build)"]
fn stress_many_producers_many_readers_with_wraparound_and_lapping() {
    const PRODUCERS: u64 = 4;
    const PER_PRODUCER: u64 = 500_000;
    const READERS: usize = 4;
    const TOTAL: u64 = PRODUCERS * PER_PRODUCER;

    // value = (producer, n, check); a torn or mixed-up value fails `check`.
    type Value = (u64, u64, u64);
    fn check(p: u64, n: u64) -> u64 {
        (p << 40 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    let (ring, _dispatcher) = Ring::<Value>::new(64);
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let mut cursor = ring.cursor_at(0).expect("empty ring");
            std::thread::spawn(move || {
                let (mut out, mut last_seq, mut delivered, mut missed) = (Vec::new(), None::<u64>, 0u64, 0u64);
                let mut last_n = vec![None::<u64>; PRODUCERS as usize];
                let mut sample = Vec::new();
                loop {
                    match cursor.try_recv_many(&mut out, 256) {
                        Ok(0) => std::thread::yield_now(),
                        Ok(_) => {
                            for entry in out.drain(..) {
                                let (p, n, c) = *entry.value();
                                assert_eq!(c, check(p, n), "torn or wrong value at seq {}", entry.seq());
                                assert!(last_seq.is_none_or(|s| entry.seq() > s), "sequence went backwards");
                                assert!(last_n[p as usize].is_none_or(|m| n > m), "producer order broken");
                                last_seq = Some(entry.seq());
                                last_n[p as usize] = Some(n);
                                if entry.seq() % 997 == 0 {
                                    sample.push((entry.seq(), (p, n)));
                                }
                                delivered += 1;
                            }
                            if r == 0 {
                                // the slow reader: gets lapped again and again
                                #[expect(clippy::disallowed_methods, reason = "an OS thread, not a runtime worker")]
                                std::thread::sleep(std::time::Duration::from_micros(50));
                            }
                        }
                        Err(RecvError::Lagged { missed: m }) => missed += m,
                        Err(RecvError::Closed) => return (delivered, missed, sample),
                    }
                }
            })
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let ring = ring.clone();
            std::thread::spawn(move || {
                for n in 0..PER_PRODUCER {
                    ring.publish((p, n, check(p, n)));
                }
            })
        })
        .collect();
    drop(ring);
    for producer in producers {
        producer.join().expect("producer");
    }
    let mut by_seq = std::collections::HashMap::new();
    for (r, reader) in readers.into_iter().enumerate() {
        let (delivered, missed, sample) = reader.join().expect("reader");
        assert_eq!(delivered + missed, TOTAL, "reader {r}: every sequence delivered or counted as missed");
        if r == 0 {
            assert!(missed > 0, "the slow reader must have been lapped");
        }
        for (seq, value) in sample {
            assert_eq!(*by_seq.entry(seq).or_insert(value), value, "readers disagree on seq {seq}");
        }
    }
}
