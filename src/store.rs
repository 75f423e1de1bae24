//! History that survives restarts: an embedded, crash-safe event log for a single node
//! (`--data-dir`), the durable log behind a standalone hub (a [`Journal`]).
//!
//! - `record`: one record's bytes (length, CRC-32, body). `segment`: segment files, scanning
//!   and recovery, reading ranges. `writer`: the writer thread (group commit, fsync policy,
//!   rotation, retention).
//!
//! # How an event goes
//! A publish is keyed and encoded by the hub and handed here in key order. One writer
//! thread takes every batch that is waiting, writes their records in one `write`, syncs as
//! the policy says (`always`: before anything is acknowledged, one `fdatasync` for the whole
//! group; `interval`: at most every `fsync_interval`; `never`), then writes the events into
//! the rings (in the same order) and answers the publishers. Subscribers therefore never see
//! an event the log does not hold, and the rings never wait for the disk: the fan-out path
//! does no I/O.
//!
//! # On disk (`DIR`)
//! - `lock`: held (`flock`) by the running process; a second one is refused.
//! - `meta.json`: the id epoch (fixed at the first start, so ids keep increasing and
//!   `Last-Event-ID` resumes across restarts) and the last key retention dropped.
//! - `<first key>.log`: segments of records, dropped whole (oldest first) by retention.
//!
//! # Crash safety
//! Every record has its length and CRC. At start every segment is scanned: an incomplete or
//! garbled *last* record (a write cut short by a crash) is cut off and reported; a bad record
//! with valid ones after it is damage: the start fails and says which file and offset
//! (`--log-recover` cuts the log there and starts). A failed write or sync is cut back, so
//! nothing half-written is ever read, its publishers get 507 (disk full) or 503, and the
//! next batch tries again.

mod record;
mod segment;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use self::record::Record;
use self::segment::{Ending, RangeError, Segment};
use crate::hub::{Batch, Gap, Hub, Journal, JournalError, RESERVED_PREFIX};
use crate::metrics::Metrics;

/// When the log syncs what it wrote to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fsync {
    /// Before a publish is acknowledged (one sync for every publish waiting: group commit).
    Always,
    /// At most `fsync_interval` after a write: a power cut loses at most that window, a
    /// process crash nothing.
    Interval,
    /// Never (the kernel writes back when it likes): a process crash loses nothing, a power
    /// cut what was not written back.
    Never,
}

/// Settings of the log.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The data directory.
    pub dir: PathBuf,
    /// The sync policy.
    pub fsync: Fsync,
    /// The longest time between a write and its sync (`Fsync::Interval`).
    pub fsync_interval: Duration,
    /// Largest segment file, in bytes (a new one is started beyond it).
    pub segment_bytes: u64,
    /// Keep at most this many events (whole segments are dropped).
    pub retain_events: Option<u64>,
    /// Keep at most this many bytes.
    pub retain_bytes: Option<u64>,
    /// Drop segments whose last event is older than this.
    pub retain_age: Option<Duration>,
    /// Most events one resume may read from the log (beyond: the reset event).
    pub replay_limit: usize,
    /// Most bytes one resume may read from the log.
    pub replay_bytes: usize,
    /// Most bytes of publishes waiting for the writer (beyond: 503).
    pub max_queued_bytes: usize,
    /// Start even with a corrupt record in the middle: cut the log there.
    pub recover: bool,
}

impl StoreConfig {
    /// Defaults for `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            fsync: Fsync::Interval,
            fsync_interval: Duration::from_millis(10),
            segment_bytes: 64 << 20,
            retain_events: None,
            retain_bytes: Some(1 << 30),
            retain_age: None,
            replay_limit: 10_000,
            replay_bytes: 16 << 20,
            max_queued_bytes: 64 << 20,
            recover: false,
        }
    }
}

/// Why the log could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory is in use.
    #[error(
        "the data directory {0} is in use by another ringcast process (its lock file is held); stop it or use another --data-dir"
    )]
    Locked(PathBuf),
    /// A corrupt record in the middle of the log.
    #[error(
        "the event log is corrupt: {what} in {file} at byte {offset}; restore the directory from a backup, or start with --log-recover to keep the log up to the last good record (everything from there is dropped)"
    )]
    Corrupt {
        /// The segment file.
        file: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong with it.
        what: &'static str,
    },
    /// An I/O error, with what was being done.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The meta file is not ours.
    #[error("{0} is not a ringcast meta file ({1}); is --data-dir the right directory?")]
    Meta(PathBuf, String),
    /// The log cannot serve a resume.
    #[error("{0}")]
    Range(String),
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { what, path: path.to_owned(), source }
}

/// The persistent part of `meta.json`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct Meta {
    format: u32,
    epoch: u64,
    /// The last key of the newest segment retention dropped (0: none).
    pub(crate) dropped_through: u64,
    /// The last key the hub had used at a graceful stop (node-local `$sys/` events take keys
    /// without being logged; a restart goes on after them, so no id repeats).
    #[serde(default)]
    pub(crate) last_key: u64,
}

impl Meta {
    pub(crate) fn write(&self, dir: &Path) -> Result<(), StoreError> {
        let path = dir.join("meta.json");
        let temporary = dir.join("meta.json.new");
        let text = serde_json::to_string(self).unwrap_or_default();
        std::fs::write(&temporary, text).map_err(io_error("writing", &temporary))?;
        File::open(&temporary).and_then(|file| file.sync_all()).map_err(io_error("syncing", &temporary))?;
        std::fs::rename(&temporary, &path).map_err(io_error("renaming to", &path))?;
        sync_dir(dir)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(io_error("syncing the directory", dir))
}

/// A log opened (locked, its epoch read) and not yet recovered.
#[derive(Debug)]
pub struct Opening {
    config: StoreConfig,
    lock: File,
    meta: Meta,
}

/// How the log is doing, for `/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogState {
    /// Writes succeed.
    Ok,
    /// The last write failed with this error (publishing answers 507 or 503 until a write
    /// succeeds again).
    Failing(String),
}

/// State the writer thread and the front share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The segments, oldest first; the last one is being written.
    pub(crate) segments: Mutex<Vec<Segment>>,
    /// The meta file's contents (the last key retention dropped changes).
    pub(crate) meta: Mutex<Meta>,
    /// Bytes of publishes handed to the writer and not processed yet.
    pub(crate) queued: AtomicUsize,
    pub(crate) state: Mutex<LogState>,
}

/// The log of a standalone node (see the module docs).
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    shared: Arc<Shared>,
    /// To the writer thread; `None` once closed.
    writer_tx: Mutex<Option<std::sync::mpsc::Sender<Batch>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Held while the process runs (the `flock` goes with it).
    _lock: File,
}

impl Store {
    /// Locks `config.dir` (creating it) and reads or makes its epoch.
    pub fn open(config: StoreConfig) -> Result<Opening, StoreError> {
        let dir = &config.dir;
        std::fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
        let lock_path = dir.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error("opening", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(dir.clone())),
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StoreError::Io { what: "locking", path: lock_path, source });
            }
        }
        let meta_path = dir.join("meta.json");
        let meta = match std::fs::read_to_string(&meta_path) {
            Ok(text) => {
                let meta: Meta = serde_json::from_str(&text)
                    .map_err(|error| StoreError::Meta(meta_path.clone(), error.to_string()))?;
                if meta.format != 1 {
                    return Err(StoreError::Meta(meta_path, format!("format {} is not 1", meta.format)));
                }
                meta
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let meta = Meta { format: 1, epoch: crate::hub::now_ms(), dropped_through: 0, last_key: 0 };
                meta.write(dir)?;
                meta
            }
            Err(source) => return Err(StoreError::Io { what: "reading", path: meta_path, source }),
        };
        Ok(Opening { config, lock, meta })
    }
}

impl Opening {
    /// The id epoch of this log (make the hub with it: [`Hub::with_epoch`]).
    pub fn epoch(&self) -> u64 {
        self.meta.epoch
    }

    /// Scans every segment (cutting a torn tail, refusing corruption unless
    /// `config.recover`), restores the newest events of every topic into `hub`'s rings,
    /// starts the writer and makes it `hub`'s journal.
    pub fn recover(self, hub: &Hub) -> Result<Arc<Store>, StoreError> {
        let Self { config, lock, meta } = self;
        let dir = &config.dir;
        let started = std::time::Instant::now();
        let found = segment::list(dir).map_err(io_error("listing", dir))?;
        let mut segments = Vec::with_capacity(found.len());
        let mut restored = 0u64;
        let mut events = 0u64;
        let last = found.len().saturating_sub(1);
        for (i, (first_key, path)) in found.iter().enumerate() {
            let (segment, ending) = segment::scan(path, *first_key, |record| {
                events += 1;
                let topics: Vec<&str> = record.topics.iter().map(String::as_str).collect();
                let into_rings = match record.routed() {
                    Some(private) => hub.restore_routed(record.key, &topics, private, &record.frame),
                    None => hub.restore(record.key, &topics, &record.frame),
                };
                restored += u64::from(into_rings);
            })
            .map_err(io_error("reading", path))?;
            let cut_at = match ending {
                Ending::Clean => {
                    segments.push(segment);
                    continue;
                }
                Ending::Torn { at, dropped } if i == last => {
                    tracing::warn!(
                        file = %path.display(),
                        offset = at,
                        dropped_bytes = dropped,
                        "the event log ended with a record cut short (a crash while writing): cut it off"
                    );
                    cut(path, at)?;
                    if at >= segment::MAGIC.len() as u64 {
                        segments.push(segment);
                    }
                    break;
                }
                Ending::Torn { at, .. } => corrupt(&config, path, at, "a record cut short before the last segment")?,
                Ending::Corrupt { at, what } => corrupt(&config, path, at, what)?,
            };
            // Recovering from corruption: the log ends at the last good record.
            cut(path, cut_at)?;
            for (_, later) in &found[i + 1..] {
                std::fs::remove_file(later).map_err(io_error("removing", later))?;
            }
            if cut_at >= segment::MAGIC.len() as u64 {
                segments.push(segment);
            }
            break;
        }
        hub.start_at(meta.last_key);
        tracing::info!(
            dir = %dir.display(),
            segments = segments.len(),
            events,
            restored,
            ms = started.elapsed().as_millis(),
            "event log recovered"
        );
        let shared = Arc::new(Shared {
            segments: Mutex::new(segments),
            meta: Mutex::new(meta),
            queued: AtomicUsize::new(0),
            state: Mutex::new(LogState::Ok),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = writer::spawn(config.clone(), Arc::clone(&shared), rx, hub.clone())
            .map_err(io_error("starting the writer for", dir))?;
        hub.metrics().log.enable();
        let store = Arc::new(Store {
            config,
            shared,
            writer_tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(thread)),
            _lock: lock,
        });
        hub.attach_journal(Arc::clone(&store) as Arc<dyn Journal>)
            .map_err(|_| StoreError::Range("the hub already has a journal".into()))?;
        Ok(store)
    }
}

/// Cuts `path` at `at` (removing it if not even the magic is left), durably.
fn cut(path: &Path, at: u64) -> Result<(), StoreError> {
    if at < segment::MAGIC.len() as u64 {
        return std::fs::remove_file(path).map_err(io_error("removing", path));
    }
    let file = File::options().write(true).open(path).map_err(io_error("opening", path))?;
    file.set_len(at).map_err(io_error("cutting", path))?;
    file.sync_all().map_err(io_error("syncing", path))
}

/// A corrupt record: an error, unless recovering (then where to cut).
fn corrupt(config: &StoreConfig, path: &Path, at: u64, what: &'static str) -> Result<u64, StoreError> {
    if !config.recover {
        return Err(StoreError::Corrupt { file: path.to_owned(), offset: at, what });
    }
    tracing::warn!(
        file = %path.display(),
        offset = at,
        what,
        "--log-recover: the event log is cut at the corrupt record; everything after it is dropped"
    );
    Ok(at)
}

impl Journal for Store {
    fn append(&self, batch: Batch) -> Result<(), JournalError> {
        let bytes: usize = batch.events().iter().map(|event| event.frame().len() + 64).sum();
        // Relaxed: a bound, not a synchronization; the writer subtracts what it took.
        let queued = self.shared.queued.fetch_add(bytes, Relaxed);
        if queued + bytes > self.config.max_queued_bytes {
            self.shared.queued.fetch_sub(bytes, Relaxed);
            return Err(JournalError::Behind(queued));
        }
        let sender = self.writer_tx.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(sender) = sender.as_ref() else {
            self.shared.queued.fetch_sub(bytes, Relaxed);
            return Err(JournalError::Closed);
        };
        sender.send(batch).map_err(|_| JournalError::Closed)
    }
}

impl Store {
    /// How the log is doing.
    pub fn state(&self) -> LogState {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Bytes, segments and the oldest key the log holds.
    pub fn size(&self) -> (u64, usize, Option<u64>) {
        let segments = self.shared.segments.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes = segments.iter().map(|segment| segment.bytes).sum();
        let oldest = segments.iter().find(|segment| segment.events > 0).map(|segment| segment.first_key);
        (bytes, segments.len(), oldest)
    }

    /// Sets the log gauges of `metrics` (at each scrape).
    pub fn update_metrics(&self, metrics: &Metrics) {
        let (bytes, segments, oldest) = self.size();
        metrics.log.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        metrics.log.segments.set(i64::try_from(segments).unwrap_or(i64::MAX));
        metrics.log.oldest_seq.set(oldest.map_or(0, |key| i64::try_from(key).unwrap_or(i64::MAX)));
    }

    /// The frames of `gap` for the topics `topics`, from the log: `Err` when the log no
    /// longer holds the start of the gap, or it is larger than the replay limits (the client
    /// then gets a `reset` instead). Node-local `$sys/` topics are not in the log.
    pub async fn fill_gap(&self, gap: Gap, topics: &[&str]) -> Result<Vec<Bytes>, StoreError> {
        if topics.iter().any(|topic| topic.starts_with(RESERVED_PREFIX)) {
            return Err(StoreError::Range("$sys/ topics are not kept in the log".into()));
        }
        let dropped = self.shared.meta.lock().unwrap_or_else(PoisonError::into_inner).dropped_through;
        if gap.after < dropped {
            return Err(StoreError::Range(format!("the log no longer holds the events after key {}", gap.after)));
        }
        let segments = self.shared.segments.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let topics: Vec<String> = topics.iter().map(|topic| (*topic).to_owned()).collect();
        let (max_events, max_bytes) = (self.config.replay_limit, self.config.replay_bytes);
        let read = tokio::task::spawn_blocking(move || {
            // A routed event's topics name no ring: it is never part of a topic's gap.
            let wanted =
                |record: &Record| record.routed().is_none() && record.topics.iter().any(|topic| topics.contains(topic));
            segment::read_range(&segments, gap.after, gap.through, wanted, max_events, max_bytes)
        });
        match read.await {
            Ok(Ok(frames)) => Ok(frames),
            Ok(Err(RangeError::TooOld)) => Err(StoreError::Range("the log no longer holds those events".into())),
            Ok(Err(RangeError::TooMany)) => Err(StoreError::Range(format!(
                "more than {max_events} events or {max_bytes} bytes to replay (--replay-limit)"
            ))),
            Ok(Err(RangeError::Io(error))) => Err(StoreError::Range(error)),
            Err(error) => Err(StoreError::Range(error.to_string())),
        }
    }

    /// Stops taking publishes, writes and syncs what is waiting, and stops the writer.
    pub fn close(&self) {
        drop(self.writer_tx.lock().unwrap_or_else(PoisonError::into_inner).take());
        if let Some(thread) = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = thread.join();
        }
    }
}
