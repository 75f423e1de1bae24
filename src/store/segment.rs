//! Segment files: `DIR/<first key, 20 digits>.log`, each the magic [`MAGIC`] and then
//! records in increasing key order. Scanning checks every record; reading a range for a
//! resume uses a sparse index (a key and offset every [`INDEX_EVERY`] records).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::record::{self, Decoded, Record};

/// The first bytes of every segment.
pub(crate) const MAGIC: &[u8; 8] = b"RCLOG\0\0\x01";
/// Records between two entries of a segment's sparse index.
pub(crate) const INDEX_EVERY: u64 = 512;

/// What the log knows of one segment.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub(crate) path: PathBuf,
    /// The key in its name: every record in it has this key or a later one.
    pub(crate) first_key: u64,
    /// Its last record's key (0 while empty).
    pub(crate) last_key: u64,
    pub(crate) events: u64,
    /// Its length in bytes (magic included).
    pub(crate) bytes: u64,
    /// When its last record was written (Unix ms; 0 while empty).
    pub(crate) last_time_ms: u64,
    /// `(key, offset)` of every `INDEX_EVERY`-th record, in order.
    pub(crate) index: Vec<(u64, u64)>,
}

impl Segment {
    pub(crate) fn new(dir: &Path, first_key: u64) -> Self {
        Self {
            path: path_of(dir, first_key),
            first_key,
            last_key: 0,
            events: 0,
            bytes: MAGIC.len() as u64,
            last_time_ms: 0,
            index: Vec::new(),
        }
    }

    /// Accounts for a record of `key` written at `offset` (its size `size`) at `time_ms`.
    pub(crate) fn add(&mut self, key: u64, offset: u64, size: u64, time_ms: u64) {
        if self.events.is_multiple_of(INDEX_EVERY) {
            self.index.push((key, offset));
        }
        self.events += 1;
        self.last_key = key;
        self.bytes = offset + size;
        self.last_time_ms = time_ms;
    }
}

/// The path of the segment whose first key is `first_key`.
pub(crate) fn path_of(dir: &Path, first_key: u64) -> PathBuf {
    dir.join(format!("{first_key:020}.log"))
}

/// The segments in `dir`, by first key.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let key = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".log"))
            .filter(|digits| digits.len() == 20)
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(key) = key {
            found.push((key, path));
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// How a scanned segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// At a record boundary, at the end of the file.
    Clean,
    /// With an incomplete or garbled last record, from `at` to the end (`dropped` bytes): a
    /// write cut short by a crash.
    Torn { at: u64, dropped: u64 },
    /// With a bad record at `at` that has more written after it: damage, not a crash.
    Corrupt { at: u64, what: &'static str },
}

/// Reads a whole segment, checks every record, and calls `visit` for each valid one in
/// order (stopping at the first bad one). Returns what the log knows of it and how it ends.
pub(crate) fn scan(path: &Path, first_key: u64, mut visit: impl FnMut(&Record)) -> io::Result<(Segment, Ending)> {
    let bytes = std::fs::read(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut segment = Segment::new(dir, first_key);
    path.clone_into(&mut segment.path);
    if bytes.len() < MAGIC.len() {
        let ending = if MAGIC.starts_with(&bytes) {
            Ending::Torn { at: 0, dropped: bytes.len() as u64 }
        } else {
            Ending::Corrupt { at: 0, what: "not a ringcast log segment" }
        };
        segment.bytes = 0;
        return Ok((segment, ending));
    }
    if bytes[..MAGIC.len()] != MAGIC[..] {
        return Ok((segment, Ending::Corrupt { at: 0, what: "not a ringcast log segment (bad magic)" }));
    }
    let mut at = MAGIC.len();
    let ending = loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            break Ending::Clean;
        }
        match record::decode(rest, |range| Bytes::copy_from_slice(&rest[range])) {
            Decoded::Record { record, size } => {
                if record.key < first_key || (segment.events > 0 && record.key <= segment.last_key) {
                    break Ending::Corrupt { at: at as u64, what: "a key out of order" };
                }
                visit(&record);
                segment.add(record.key, at as u64, size as u64, record.time_ms);
                at += size;
            }
            // A bad or short record with a valid one somewhere after it is damage in the
            // middle (a flipped length byte can make a record look short or huge); with
            // nothing valid after it, it is the tail a crash cut short.
            Decoded::Short | Decoded::Bad(_) if valid_after(rest, segment.last_key) => {
                let what = match record::decode(rest, |_| Bytes::new()) {
                    Decoded::Bad(what) => what,
                    _ => "a record length that overruns the next record",
                };
                break Ending::Corrupt { at: at as u64, what };
            }
            Decoded::Short | Decoded::Bad(_) => break Ending::Torn { at: at as u64, dropped: rest.len() as u64 },
        }
    };
    Ok((segment, ending))
}

/// Whether a valid record with a key above `last_key` starts anywhere in `rest` after its
/// first byte. Cheap checks (a plausible length, the event kind, a later key) come before
/// the checksum, so a long tail is scanned quickly.
fn valid_after(rest: &[u8], last_key: u64) -> bool {
    (1..rest.len().saturating_sub(record::HEADER + 9)).any(|i| {
        let candidate = &rest[i..];
        let len = u32::from_le_bytes([candidate[0], candidate[1], candidate[2], candidate[3]]) as usize;
        if !(18..=record::MAX_BODY).contains(&len) || len + record::HEADER > candidate.len() || candidate[8] != 1 {
            return false;
        }
        let key = u64::from_le_bytes(candidate[9..17].try_into().unwrap_or([0; 8]));
        key > last_key && matches!(record::decode(candidate, |_| Bytes::new()), Decoded::Record { .. })
    })
}

/// Why a range could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RangeError {
    /// Events after the start were dropped by retention (or the segment went meanwhile).
    TooOld,
    /// More than the limit of events or bytes.
    TooMany,
    /// Reading failed.
    Io(String),
}

/// The frames of the events after `after` up to and including `through` whose topics pass
/// `wanted`, from `segments` (sorted by first key), within `max_events` and `max_bytes`.
pub(crate) fn read_range(
    segments: &[Segment],
    after: u64,
    through: u64,
    wanted: impl Fn(&Record) -> bool,
    max_events: usize,
    max_bytes: usize,
) -> Result<Vec<Bytes>, RangeError> {
    let mut frames = Vec::new();
    let mut bytes = 0usize;
    // The first segment that may hold a key above `after`.
    let start = segments.partition_point(|segment| segment.events > 0 && segment.last_key <= after);
    for segment in &segments[start..] {
        if segment.first_key > through {
            break;
        }
        let offset = segment
            .index
            .iter()
            .take_while(|(key, _)| *key <= after.saturating_add(1))
            .last()
            .map_or(MAGIC.len() as u64, |&(_, offset)| offset);
        let mut file = match File::open(&segment.path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(RangeError::TooOld),
            Err(error) => return Err(RangeError::Io(error.to_string())),
        };
        let io = |error: io::Error| RangeError::Io(error.to_string());
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut data = Vec::new();
        file.take(segment.bytes.saturating_sub(offset)).read_to_end(&mut data).map_err(io)?;
        let mut at = 0;
        while at < data.len() {
            let rest = &data[at..];
            let Decoded::Record { record, size } = record::decode(rest, |range| Bytes::copy_from_slice(&rest[range]))
            else {
                return Err(RangeError::Io(format!(
                    "a bad record in {} at {}",
                    segment.path.display(),
                    offset + at as u64
                )));
            };
            at += size;
            if record.key <= after {
                continue;
            }
            if record.key > through {
                return Ok(frames);
            }
            if wanted(&record) {
                bytes += record.frame.len();
                frames.push(record.frame);
                if frames.len() > max_events || bytes > max_bytes {
                    return Err(RangeError::TooMany);
                }
            }
        }
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::{Ending, INDEX_EVERY, MAGIC, read_range, scan};
    use crate::store::record;

    fn segment_with(dir: &std::path::Path, keys: std::ops::Range<u64>) -> std::path::PathBuf {
        let path = super::path_of(dir, keys.start);
        let mut bytes = MAGIC.to_vec();
        for key in keys {
            let topic = if key % 2 == 0 { "even" } else { "odd" };
            record::encode(&mut bytes, key, key, 0, [topic].into_iter(), format!("data: {key}\n\n").as_bytes());
        }
        std::fs::File::create(&path).and_then(|mut file| file.write_all(&bytes)).expect("write");
        path
    }

    #[test]
    fn a_clean_segment_scans_whole_and_ranges_read_through_the_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = segment_with(dir.path(), 1..2001);
        let mut keys = Vec::new();
        let (segment, ending) = scan(&path, 1, |r| keys.push(r.key)).expect("scan");
        assert_eq!(ending, Ending::Clean);
        assert_eq!(keys, (1..2001).collect::<Vec<_>>());
        assert_eq!((segment.first_key, segment.last_key, segment.events), (1, 2000, 2000));
        assert_eq!(segment.index.len() as u64, 2000u64.div_ceil(INDEX_EVERY));
        let frames = read_range(&[segment], 1500, 1510, |r| r.topics[0] == "even", 100, 1 << 20).expect("range");
        let got: Vec<String> = frames.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
        assert_eq!(got, (1502..=1510).step_by(2).map(|k| format!("data: {k}\n\n")).collect::<Vec<_>>());
    }

    #[test]
    fn a_cut_tail_is_torn_and_a_flipped_byte_inside_is_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = segment_with(dir.path(), 1..11);
        let len = std::fs::metadata(&path).expect("meta").len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(len - 3).expect("truncate");
        let (segment, ending) = scan(&path, 1, |_| {}).expect("scan");
        assert!(matches!(ending, Ending::Torn { .. }), "{ending:?}");
        assert_eq!(segment.last_key, 9, "the cut record is not read");

        // Any byte flipped inside (the length fields included) is corruption, not a torn tail.
        let path = segment_with(dir.path(), 20..30);
        let clean = std::fs::read(&path).expect("read");
        let record_len = (clean.len() - MAGIC.len()) / 10;
        for at in MAGIC.len()..clean.len() - record_len {
            let mut bytes = clean.clone();
            bytes[at] ^= 0xff;
            std::fs::write(&path, &bytes).expect("write");
            let (_, ending) = scan(&path, 20, |_| {}).expect("scan");
            assert!(matches!(ending, Ending::Corrupt { .. }), "byte {at}: {ending:?}");
        }
    }
}
