//! Unit tests of gap and duplicate detection and of the `/proc/self/stat` parsing.

use super::*;

#[test]
fn an_in_order_sequence_has_no_gap_or_duplicate() {
    let mut tracker = SeqTracker::default();
    for seq in 1..=100 {
        assert_eq!(tracker.observe(seq), Seen::InOrder);
    }
    assert_eq!(
        (tracker.received, tracker.missing, tracker.gaps, tracker.duplicates, tracker.last),
        (100, 0, 0, 0, 100)
    );
}

#[test]
fn gaps_and_duplicates_are_reported() {
    let mut tracker = SeqTracker::default();
    let seen: Vec<Seen> = [1, 2, 3, 6, 6, 7, 5, 10].into_iter().map(|seq| tracker.observe(seq)).collect();
    assert_eq!(
        seen,
        [
            Seen::InOrder,
            Seen::InOrder,
            Seen::InOrder,
            Seen::Gap { missing: 2 }, // 4 and 5
            Seen::Duplicate,          // 6 again
            Seen::InOrder,
            Seen::Duplicate,          // 5 after 7: late, counted as duplicate / out of order
            Seen::Gap { missing: 2 }, // 8 and 9
        ]
    );
    assert_eq!(tracker.received, 6);
    assert_eq!(tracker.missing, 4);
    assert_eq!(tracker.gaps, 2);
    assert_eq!(tracker.duplicates, 2);
    assert_eq!(tracker.last, 10);
}

#[test]
fn a_first_event_after_one_is_a_gap() {
    let mut tracker = SeqTracker::default();
    assert_eq!(tracker.observe(3), Seen::Gap { missing: 2 });
}

#[test]
fn proc_status_memory_is_read() {
    let status = "Name:\tloadgen\nVmHWM:\t   81916 kB\nVmRSS:\t   81280 kB\nThreads:\t1\n";
    assert_eq!(parse_memory(status), Some((81_280 * 1024, 81_916 * 1024)));
    let (rss, peak) = memory().unwrap();
    assert!(0 < rss && rss <= peak);
}

#[test]
fn proc_stat_times_are_read_after_the_command_name() {
    // pid (comm with spaces and a paren) state ppid ... utime(14)=250 stime(15)=75
    let line = "1234 (load gen) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1000 0 0";
    let (user, system) = parse_cpu_times(line).unwrap();
    assert_eq!(user, Duration::from_millis(2500));
    assert_eq!(system, Duration::from_millis(750));
    assert!(cpu_times().is_some(), "/proc/self/stat is readable on Linux");
}
