//! Appends with group commit, and a replay of everything, in three logs:
//! - `ringcast`: ringcast's own segment log, through its real API (a hub with the log
//!   attached: `Hub::publish_acked` with `--fsync always`, so each group of events is one
//!   write and one `fdatasync`, and it also commits to the rings); the replay is a restart
//!   (`Store::open` and `recover`, which checks every record and rebuilds the rings);
//! - `fjall` 2 (an LSM tree): a write batch per group, then `persist(SyncData)`; the replay
//!   iterates the partition;
//! - `redb` 2 (a copy-on-write B-tree): a write transaction per group (durable commit); the
//!   replay iterates the table.
//!
//! Usage: `ringcast-storebench [EVENTS] [GROUP]` (default 1,000,000 events in groups of 100,
//! 128-byte payloads, about 200-byte records). Prints one line per log and measure.

use std::time::Instant;

use ringcast::hub::{Hub, HubConfig, Publish};
use ringcast::metrics::Metrics;
use redb::ReadableTable as _;
use ringcast::store::{Fsync, Store, StoreConfig};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");

fn main() {
    let mut args = std::env::args().skip(1);
    let events: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let group: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let payload = "p".repeat(128);
    // What the others store per event: about the size of a ringcast record of that event.
    let record = vec![b'r'; 200];
    println!("{events} events in groups of {group}, 128-byte payloads (~200-byte records)");

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(ringcast(events, group, &payload));
    fjall(events, group, &record);
    redb(events, group, &record);
}

fn report(log: &str, what: &str, events: u64, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    println!("{log:<9} {what:<28} {seconds:>8.3} s  {:>12.0} events/s", events as f64 / seconds);
}

async fn ringcast(events: u64, group: u64, payload: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || StoreConfig {
        fsync: Fsync::Always,
        retain_bytes: None,
        replay_limit: usize::MAX,
        ..StoreConfig::new(dir.path().to_owned())
    };
    let hub_config = HubConfig { ring_capacity: 1024, ..HubConfig::default() };
    {
        let opening = Store::open(config()).expect("open");
        let hub = Hub::with_epoch(hub_config.clone(), std::sync::Arc::new(Metrics::default()), opening.epoch())
            .expect("hub");
        let store = opening.recover(&hub).expect("recover");
        let topics = ["t"];
        let batch: Vec<Publish<'_>> =
            (0..group).map(|_| Publish { topics: &topics, event: None, data: payload, retry: None, routed: None }).collect();
        let started = Instant::now();
        for _ in 0..events / group {
            hub.publish_acked(&batch).await.expect("publish");
        }
        report("ringcast", "append (group commit)", events, started);
        store.close();
    }
    let started = Instant::now();
    let opening = Store::open(config()).expect("open");
    let hub =
        Hub::with_epoch(hub_config, std::sync::Arc::new(Metrics::default()), opening.epoch()).expect("hub");
    let store = opening.recover(&hub).expect("recover");
    report("ringcast", "replay (restart: check, rings)", events, started);
    assert_eq!(hub.last_event_id().seq, events, "every event came back");
    store.close();
}

fn fjall(events: u64, group: u64, record: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let keyspace = fjall::Config::new(dir.path()).open().expect("open");
        let log = keyspace.open_partition("log", fjall::PartitionCreateOptions::default()).expect("partition");
        let started = Instant::now();
        let mut key = 0u64;
        for _ in 0..events / group {
            let mut batch = keyspace.batch();
            for _ in 0..group {
                key += 1;
                batch.insert(&log, key.to_be_bytes(), record);
            }
            batch.commit().expect("commit");
            keyspace.persist(fjall::PersistMode::SyncData).expect("persist");
        }
        report("fjall", "append (group commit)", events, started);
    }
    let started = Instant::now();
    let keyspace = fjall::Config::new(dir.path()).open().expect("open");
    let log = keyspace.open_partition("log", fjall::PartitionCreateOptions::default()).expect("partition");
    let mut count = 0u64;
    let mut bytes = 0usize;
    for item in log.iter() {
        let (_, value) = item.expect("read");
        count += 1;
        bytes += value.len();
    }
    report("fjall", "replay (open, iterate)", events, started);
    assert_eq!(count, events, "{bytes} bytes");
}

fn redb(events: u64, group: u64, record: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log.redb");
    {
        let db = redb::Database::create(&path).expect("create");
        let started = Instant::now();
        let mut key = 0u64;
        for _ in 0..events / group {
            let txn = db.begin_write().expect("write");
            {
                let mut table = txn.open_table(TABLE).expect("table");
                for _ in 0..group {
                    key += 1;
                    table.insert(key, record).expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        report("redb", "append (group commit)", events, started);
    }
    let started = Instant::now();
    let db = redb::Database::create(&path).expect("open");
    let txn = db.begin_read().expect("read");
    let table = txn.open_table(TABLE).expect("table");
    let mut count = 0u64;
    let mut bytes = 0usize;
    for item in table.iter().expect("iter") {
        let (_, value) = item.expect("read");
        count += 1;
        bytes += value.value().len();
    }
    report("redb", "replay (open, iterate)", events, started);
    assert_eq!(count, events, "{bytes} bytes");
}
