//! The writer thread: the only writer of the log's files, and (through
//! [`Hub::commit_batch`]) the only writer of the rings while a log is attached.
//!
//! Each round takes every batch waiting (group commit), writes their records with one
//! `write` to the current segment (starting a new one beyond `segment_bytes`), syncs as the
//! policy says, commits the batches to the rings in order, and answers their publishers.
//! A failed write or sync cuts the segment back to where the round began (nothing
//! half-written is ever read), refuses the round's batches, and leaves the next round to try
//! again. Retention then drops whole segments from the oldest while the log is over a bound.

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::segment::{MAGIC, Segment};
use super::{Fsync, LogState, Shared, StoreConfig, record};
use crate::hub::{Batch, Hub, JournalError};

/// Most batches one round takes.
const MAX_ROUND: usize = 4096;
/// How long an idle writer sleeps between looks (it wakes at once for a batch).
const IDLE: Duration = Duration::from_secs(1);

pub(super) fn spawn(
    config: StoreConfig,
    shared: Arc<Shared>,
    rx: Receiver<Batch>,
    hub: Hub,
) -> io::Result<std::thread::JoinHandle<()>> {
    let file = {
        let segments = shared.segments.lock().unwrap_or_else(PoisonError::into_inner);
        match segments.last() {
            Some(last) => Some(File::options().append(true).open(&last.path)?),
            None => None,
        }
    };
    let writer = Writer { config, shared, hub, file, buf: Vec::new(), offsets: Vec::new(), dirty_since: None };
    std::thread::Builder::new().name("ringcast-log".into()).spawn(move || writer.run(&rx))
}

struct Writer {
    config: StoreConfig,
    shared: Arc<Shared>,
    hub: Hub,
    /// The current (last) segment, open for appending; `None` before the first record.
    file: Option<File>,
    /// The round's records.
    buf: Vec<u8>,
    /// Each record of the round: key, offset in `buf`, size, time.
    offsets: Vec<(u64, u64, u64, u64)>,
    /// Written and not synced since then (`Fsync::Interval`).
    dirty_since: Option<Instant>,
}

impl Writer {
    fn run(mut self, rx: &Receiver<Batch>) {
        loop {
            let wait = match (self.config.fsync, self.dirty_since) {
                (Fsync::Interval, Some(since)) => self.config.fsync_interval.saturating_sub(since.elapsed()),
                _ => IDLE,
            };
            match rx.recv_timeout(wait) {
                Ok(first) => {
                    let mut round = vec![first];
                    while round.len() < MAX_ROUND {
                        match rx.try_recv() {
                            Ok(batch) => round.push(batch),
                            Err(_) => break,
                        }
                    }
                    self.round(round);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.dirty_since.is_some_and(|since| since.elapsed() >= self.config.fsync_interval)
                && let Err(error) = self.sync()
            {
                self.failed(&error);
            }
        }
        if self.dirty_since.is_some()
            && let Err(error) = self.sync()
        {
            tracing::warn!(%error, "the event log could not be synced at shutdown");
        }
        // A restart goes on after every key this run used, logged or not.
        let mut meta = self.shared.meta.lock().unwrap_or_else(PoisonError::into_inner);
        meta.last_key = meta.last_key.max(self.hub.last_event_id().seq);
        if let Err(error) = meta.write(&self.config.dir) {
            tracing::warn!(%error, "the event log's meta file could not be updated at shutdown");
        }
    }

    fn round(&mut self, mut round: Vec<Batch>) {
        let queued: usize = round.iter().flat_map(Batch::events).map(|event| event.frame().len() + 64).sum();
        // Relaxed: the bound's bookkeeping (see `Store::append`).
        self.shared.queued.fetch_sub(queued, Relaxed);
        let written = self.write(&round);
        if let Err(error) = &written {
            self.failed(error);
        }
        for batch in &mut round {
            let outcome = if let (Err(error), true) = (&written, batch.persist()) {
                Err(journal_error(error))
            } else {
                self.hub.commit_batch(batch);
                Ok(())
            };
            if outcome.is_err() {
                self.hub.metrics().log.append_errors.inc();
            }
            batch.finish(outcome);
        }
        if written.is_ok() {
            self.recovered();
            self.retain();
        }
    }

    /// Writes (and syncs, as the policy says) the records of the round's persistent batches.
    fn write(&mut self, round: &[Batch]) -> io::Result<()> {
        self.buf.clear();
        self.offsets.clear();
        let now = crate::hub::now_ms();
        for batch in round.iter().filter(|batch| batch.persist()) {
            for event in batch.events() {
                let start = self.buf.len();
                let flags = record::flags(event.routed());
                record::encode(&mut self.buf, event.key(), now, flags, batch.topic_names(event), event.frame());
                self.offsets.push((event.key(), start as u64, (self.buf.len() - start) as u64, now));
            }
        }
        let Some(&(first_key, ..)) = self.offsets.first() else { return Ok(()) };
        self.rotate_if_full(first_key, self.buf.len() as u64)?;
        let start = self.open_current(first_key)?;
        let wrote = match self.file.as_mut() {
            Some(file) => file.write_all(&self.buf),
            None => Err(io::Error::other("no segment open")),
        };
        if let Err(error) = wrote.and_then(|()| self.sync_if_always()) {
            // Nothing half-written stays: cut back to where the round began.
            if let Some(file) = &self.file
                && let Err(cut) = file.set_len(start).and_then(|()| file.sync_data())
            {
                tracing::error!(%cut, "the event log could not be cut back after a failed write");
            }
            return Err(error);
        }
        let mut segments = self.shared.segments.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(segment) = segments.last_mut() {
            for &(key, offset, size, time) in &self.offsets {
                segment.add(key, start + offset, size, time);
            }
        }
        Ok(())
    }

    /// The current segment's length, starting the first segment (at `first_key`) if there
    /// is none.
    fn open_current(&mut self, first_key: u64) -> io::Result<u64> {
        if self.file.is_none() {
            self.start_segment(first_key)?;
        }
        Ok(self.shared.segments.lock().unwrap_or_else(PoisonError::into_inner).last().map_or(0, |s| s.bytes))
    }

    /// Starts a new segment if the current one would grow beyond `segment_bytes`.
    fn rotate_if_full(&mut self, first_key: u64, adding: u64) -> io::Result<()> {
        let full = self
            .shared
            .segments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .is_some_and(|segment| segment.events > 0 && segment.bytes + adding > self.config.segment_bytes);
        if full {
            self.sync()?;
            self.start_segment(first_key)?;
        }
        Ok(())
    }

    fn start_segment(&mut self, first_key: u64) -> io::Result<()> {
        let segment = Segment::new(&self.config.dir, first_key);
        let mut file = File::options().create_new(true).append(true).open(&segment.path)?;
        file.write_all(MAGIC)?;
        if self.config.fsync != Fsync::Never {
            file.sync_all()?;
            File::open(&self.config.dir)?.sync_all()?;
        }
        self.file = Some(file);
        self.shared.segments.lock().unwrap_or_else(PoisonError::into_inner).push(segment);
        Ok(())
    }

    fn sync_if_always(&mut self) -> io::Result<()> {
        match self.config.fsync {
            Fsync::Always => self.sync(),
            Fsync::Interval => {
                self.dirty_since.get_or_insert_with(Instant::now);
                Ok(())
            }
            Fsync::Never => Ok(()),
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        let started = Instant::now();
        file.sync_data()?;
        self.hub.metrics().log.fsync_seconds.observe(started.elapsed().as_secs_f64());
        self.dirty_since = None;
        Ok(())
    }

    fn failed(&self, error: &io::Error) {
        let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        if *state == LogState::Ok {
            tracing::error!(%error, dir = %self.config.dir.display(), "the event log cannot be written: publishes are refused");
        }
        *state = LogState::Failing(error.to_string());
    }

    fn recovered(&self) {
        let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        if *state != LogState::Ok {
            tracing::info!(dir = %self.config.dir.display(), "the event log is writable again");
            *state = LogState::Ok;
        }
    }

    /// Drops whole segments from the oldest while the log is over a retention bound (never
    /// the segment being written).
    fn retain(&mut self) {
        let now = crate::hub::now_ms();
        let mut dropped = Vec::new();
        {
            let mut segments = self.shared.segments.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                let bytes: u64 = segments.iter().map(|segment| segment.bytes).sum();
                let events: u64 = segments.iter().map(|segment| segment.events).sum();
                let Some(oldest) = segments.first().filter(|_| segments.len() > 1) else { break };
                let over = self.config.retain_bytes.is_some_and(|max| bytes > max)
                    || self.config.retain_events.is_some_and(|max| events > max)
                    || self.config.retain_age.is_some_and(|age| {
                        now.saturating_sub(oldest.last_time_ms) > u64::try_from(age.as_millis()).unwrap_or(u64::MAX)
                    });
                if !over {
                    break;
                }
                dropped.push(segments.remove(0));
            }
        }
        let Some(last) = dropped.last() else { return };
        let mut meta = self.shared.meta.lock().unwrap_or_else(PoisonError::into_inner);
        meta.dropped_through = meta.dropped_through.max(last.last_key);
        if let Err(error) = meta.write(&self.config.dir) {
            tracing::warn!(%error, "the event log's meta file could not be updated after retention");
        }
        drop(meta);
        for segment in dropped {
            match std::fs::remove_file(&segment.path) {
                Ok(()) => {
                    tracing::debug!(file = %segment.path.display(), events = segment.events, "log segment dropped");
                }
                Err(error) => {
                    tracing::warn!(%error, file = %segment.path.display(), "a log segment could not be removed");
                }
            }
        }
    }
}

/// What a publisher is told of a failed write: disk full (507) or another error (503).
fn journal_error(error: &io::Error) -> JournalError {
    // ENOSPC (28), EFBIG (27: the file size limit), EDQUOT (122).
    match error.raw_os_error() {
        Some(28 | 27 | 122) => JournalError::Full(error.to_string()),
        _ => JournalError::Io(error.to_string()),
    }
}
