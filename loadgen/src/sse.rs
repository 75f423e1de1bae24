//! The lean event-stream scanner and the loadgen's event payload.
//!
//! [`scan`] walks a buffer line by line with `memchr` and hands each complete frame (the
//! lines up to a blank line) to a callback as a [`Frame`] of slices into the buffer: no
//! allocation and no copy per event. It understands what a load client needs: the first
//! `data:` line, the `id:` and `event:` fields, and the comments ringcast sends (heartbeat,
//! "disconnected" on lapping, "server shutting down"). Lines end with LF; a CR before the LF
//! is tolerated (so CRLF streams work), a lone CR as a line end is not (neither ringcast
//! nor nchan sends one). `StreamReader` carries the partial frame between reads, so a
//! connection keeps only that (usually nothing) between reads; the read buffer itself is
//! per thread (see `client`).
//!
//! # Payload
//! The data of every published event is `TOPIC SEQ SENT_NS ` (decimal numbers, each followed
//! by a space) padded with `x` to the configured size: the topic index, the per-topic
//! sequence number from 1, and the send time in nanoseconds since the run started.

#[cfg(test)]
mod tests;

use std::io;

use crate::http::Dechunker;

/// What a comment line says, for the comments ringcast sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `: heartbeat`.
    Heartbeat,
    /// `: disconnected: ...`: the server dropped the client for falling a whole ring behind.
    Lapped,
    /// `: server shutting down ...`.
    Shutdown,
}

/// One complete frame: slices into the scanned buffer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The frame's bytes up to (not including) its blank line.
    pub raw: &'a [u8],
    /// The last `id:` value.
    pub id: Option<&'a [u8]>,
    /// The last `event:` value.
    pub event: Option<&'a [u8]>,
    /// The first `data:` value (the frame is an event when `data_lines > 0`).
    pub data: Option<&'a [u8]>,
    /// Number of `data:` lines.
    pub data_lines: u32,
    /// Number of comment lines.
    pub comments: u32,
    /// What the last recognised comment said.
    pub signal: Option<Signal>,
}

impl<'a> Frame<'a> {
    /// Whether a browser would dispatch this frame as an event (it has data).
    pub fn is_event(&self) -> bool {
        self.data_lines > 0
    }

    /// Every `data:` value, in order (to rebuild multi-line data: join with `\n`).
    pub fn data_lines(&self) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        self.raw.split(|&b| b == b'\n').map(trim_cr).filter_map(|line| match split_field(line) {
            (b"data", value) => Some(value),
            _ => None,
        })
    }

    fn add_line(&mut self, line: &'a [u8]) {
        if let Some(comment) = line.strip_prefix(b":") {
            self.comments += 1;
            let comment = comment.strip_prefix(b" ").unwrap_or(comment);
            if comment.starts_with(b"heartbeat") {
                self.signal = Some(Signal::Heartbeat);
            } else if comment.starts_with(b"disconnected:") {
                self.signal = Some(Signal::Lapped);
            } else if comment.starts_with(b"server shutting down") {
                self.signal = Some(Signal::Shutdown);
            }
            return;
        }
        match split_field(line) {
            (b"data", value) => {
                if self.data_lines == 0 {
                    self.data = Some(value);
                }
                self.data_lines += 1;
            }
            (b"id", value) => self.id = Some(value),
            (b"event", value) => self.event = Some(value),
            _ => {}
        }
    }
}

/// `field: value` per the spec: the value starts after the colon and one optional space; a
/// line without a colon is a field with an empty value.
fn split_field(line: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b':', line) {
        Some(colon) => {
            let value = &line[colon + 1..];
            (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (line, &[]),
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Hands every complete frame in `buf` to `on_frame`; returns the bytes consumed (the start of
/// the unfinished frame, which the caller keeps for the next read).
pub fn scan<'a>(buf: &'a [u8], mut on_frame: impl FnMut(&Frame<'a>)) -> usize {
    let mut frame_start = 0;
    let mut line_start = 0;
    let mut frame = Frame::default();
    for newline in memchr::memchr_iter(b'\n', buf) {
        let line = trim_cr(&buf[line_start..newline]);
        if line.is_empty() {
            frame.raw = &buf[frame_start..line_start];
            on_frame(&frame);
            frame = Frame::default();
            frame_start = newline + 1;
        } else {
            frame.add_line(line);
        }
        line_start = newline + 1;
    }
    frame_start
}

/// Largest frame a reader carries over between reads; beyond it the stream is refused.
const MAX_FRAME: usize = 4 << 20;
/// Bytes of room each read gets after the carried partial frame.
pub(crate) const READ_CHUNK: usize = 16 << 10;
/// A carry buffer with more capacity than this is freed once empty (idle clients stay small).
const KEEP_CARRY: usize = 1024;

/// The per-connection state of a stream reader: the partial frame carried between reads and
/// the de-chunking state (for servers that send `transfer-encoding: chunked`).
#[derive(Debug, Default)]
pub(crate) struct StreamReader {
    carry: Vec<u8>,
    chunked: Option<Dechunker>,
}

impl StreamReader {
    pub(crate) fn new(chunked: bool) -> Self {
        Self { carry: Vec::new(), chunked: chunked.then(Dechunker::default) }
    }

    /// Reads once with `fill` into `scratch` (after the carried partial frame), scans the
    /// complete frames, and carries the rest. Returns what `fill` returned (0: end of stream);
    /// an error for a broken chunked encoding or an oversized frame.
    pub(crate) fn read_with(
        &mut self,
        scratch: &mut Vec<u8>,
        fill: impl FnOnce(&mut [u8]) -> io::Result<usize>,
        on_frame: impl FnMut(&Frame<'_>),
    ) -> io::Result<usize> {
        let start = self.carry.len();
        if scratch.len() < start + READ_CHUNK {
            scratch.resize(start + READ_CHUNK, 0);
        }
        scratch[..start].copy_from_slice(&self.carry);
        let read = fill(&mut scratch[start..])?;
        let mut end = start + read;
        if let Some(dechunker) = &mut self.chunked {
            end = start + dechunker.decode_in_place(&mut scratch[start..end])?;
        }
        let consumed = scan(&scratch[..end], on_frame);
        self.carry.clear();
        if consumed == end && self.carry.capacity() > KEEP_CARRY {
            self.carry = Vec::new();
        }
        self.carry.extend_from_slice(&scratch[consumed..end]);
        if self.carry.len() > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("an event-stream frame exceeds {MAX_FRAME} bytes without a blank line"),
            ));
        }
        Ok(read)
    }

    /// Whether the chunked body ended (the last chunk was seen).
    pub(crate) fn body_ended(&self) -> bool {
        self.chunked.as_ref().is_some_and(Dechunker::is_done)
    }
}

/// The fields of a loadgen payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// Topic index.
    pub topic: u32,
    /// Per-topic sequence number, from 1.
    pub seq: u64,
    /// Send time, nanoseconds since the run started.
    pub sent_ns: u64,
}

/// Appends the payload's data, padded with `x` to `size` bytes (never cut below the header).
pub fn encode_payload(out: &mut Vec<u8>, payload: Payload, size: usize) {
    let start = out.len();
    for number in [u64::from(payload.topic), payload.seq, payload.sent_ns] {
        push_decimal(out, number);
        out.push(b' ');
    }
    let len = out.len() - start;
    if len < size {
        out.resize(start + size, b'x');
    }
}

fn push_decimal(out: &mut Vec<u8>, mut number: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (number % 10) as u8;
        number /= 10;
        if number == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Reads a payload's header; `None` for data that is not a loadgen payload.
pub fn decode_payload(data: &[u8]) -> Option<Payload> {
    let mut rest = data;
    let mut next = || {
        let space = memchr::memchr(b' ', rest)?;
        let digits = &rest[..space];
        rest = &rest[space + 1..];
        if digits.is_empty() || digits.len() > 19 {
            return None;
        }
        digits.iter().try_fold(0u64, |n, &d| d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0')))
    };
    Some(Payload { topic: u32::try_from(next()?).ok()?, seq: next()?, sent_ns: next()? })
}
