//! A client-side event-stream parser, written from the WHATWG HTML spec (section 9.2.6,
//! "Interpreting an event stream") independently of [`super::frame`].
//!
//! ringcast itself never parses streams; this is here so the tests, the load generator and
//! embedders have one conforming parser, checked against the spec's own examples. Input may
//! arrive in arbitrary chunks (a line, or a CR LF pair, may be split across chunks).

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

/// One dispatched event, as a browser's `EventSource` would deliver it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event type (`message` unless an `event:` field said otherwise).
    pub event: String,
    /// The data: `data:` lines joined with `\n`.
    pub data: String,
    /// The stream's last event id at dispatch time (ids persist across events, per spec).
    pub last_event_id: String,
}

/// What the parser produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A dispatched event.
    Event(SseEvent),
    /// A comment line (without the leading `:` and one optional space).
    Comment(String),
}

/// An incremental event-stream parser.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// The previous chunk ended with CR: a leading LF of the next chunk belongs to it.
    after_cr: bool,
    /// Whether the first line (the place of an optional BOM) was seen.
    started: bool,
    data: String,
    event: String,
    last_event_id: String,
    retry: Option<u64>,
    items: VecDeque<Item>,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk of the stream.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        while let Some(at) = memchr::memchr2(b'\r', b'\n', chunk) {
            self.line.extend_from_slice(&chunk[..at]);
            let line = std::mem::take(&mut self.line);
            self.process_line(&line);
            self.line = line;
            self.line.clear();
            if chunk[at] == b'\r' {
                match chunk.get(at + 1) {
                    Some(b'\n') => chunk = &chunk[at + 2..],
                    Some(_) => chunk = &chunk[at + 1..],
                    None => {
                        self.after_cr = true;
                        chunk = &[];
                    }
                }
            } else {
                chunk = &chunk[at + 1..];
            }
        }
        self.line.extend_from_slice(chunk);
    }

    /// The next parsed item, if any.
    pub fn next_item(&mut self) -> Option<Item> {
        self.items.pop_front()
    }

    /// The next dispatched event, skipping comments.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        while let Some(item) = self.items.pop_front() {
            if let Item::Event(event) = item {
                return Some(event);
            }
        }
        None
    }

    /// The reconnection time set by the last valid `retry:` field, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// The last event id buffer (what a reconnecting client sends as `Last-Event-ID`).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    fn process_line(&mut self, raw: &[u8]) {
        let mut raw = raw;
        if !self.started {
            self.started = true;
            raw = raw.strip_prefix("\u{feff}".as_bytes()).unwrap_or(raw);
        }
        let line = String::from_utf8_lossy(raw);
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            let comment = comment.strip_prefix(' ').unwrap_or(comment);
            self.items.push_back(Item::Comment(comment.to_owned()));
            return;
        }
        let (field, value) = match line.find(':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (&*line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => value.clone_into(&mut self.last_event_id),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        if self.data.is_empty() {
            self.event.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let event = match std::mem::take(&mut self.event) {
            event if event.is_empty() => "message".to_owned(),
            event => event,
        };
        self.items.push_back(Item::Event(SseEvent { event, data, last_event_id: self.last_event_id.clone() }));
    }
}
