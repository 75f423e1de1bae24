//! SSE frames: an event encoded once, as the exact bytes every subscriber receives.
//!
//! The format is the WHATWG HTML "event stream" (`text/event-stream`, section 9.2): a frame
//! is a block of `field: value` lines ended by a blank line. Encoding is pure (no I/O) and
//! happens once per published event; readers only share the resulting [`Bytes`].
//!
//! Rules enforced here, so that no input can break a subscriber's stream (the SSE injection
//! bug class: a line break in a field would let a publisher forge extra fields or events):
//! - `data` may contain anything; it is split on `\r\n`, `\n` and `\r` into one `data:` line
//!   each, which a conforming parser joins back with `\n`. Empty data still yields a `data:` line.
//! - `id` and `event` are single-line: a CR, LF or NUL in them is an error, never escaped or
//!   dropped silently. (A NUL would make browsers ignore the `id`, breaking resume.)
//! - `comment` may span lines; each line becomes its own `:` comment line.

#[cfg(test)]
mod tests;

use bytes::{BufMut, Bytes, BytesMut};

/// One event to encode. Borrowed fields, so callers encode straight from a parsed request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `id:` field (becomes the client's `Last-Event-ID`). Single line, no NUL.
    pub id: Option<&'a str>,
    /// The `event:` field (the event type; `message` when absent). Single line, no NUL.
    pub event: Option<&'a str>,
    /// The payload; any text, split into `data:` lines.
    pub data: &'a str,
    /// The `retry:` field: the client's reconnection delay in milliseconds.
    pub retry: Option<u64>,
    /// A comment (`: ...`) placed before the fields; ignored by clients, useful for humans.
    pub comment: Option<&'a str>,
}

/// Why an event could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A single-line field contains a CR, LF or NUL.
    #[error(
        "the `{field}` field contains {what} at byte {at}; SSE fields are single lines, so remove it \
         (put multi-line content in `data`)"
    )]
    ForbiddenByte {
        /// `"id"` or `"event"`.
        field: &'static str,
        /// `"a carriage return (CR)"`, `"a line feed (LF)"` or `"a NUL byte"`.
        what: &'static str,
        /// Byte offset of the first forbidden byte.
        at: usize,
    },
}

impl Event<'_> {
    /// An event with only `data`.
    pub fn data(data: &str) -> Event<'_> {
        Event { data, ..Event::default() }
    }

    /// Checks the single-line fields without encoding.
    pub fn validate(&self) -> Result<(), FrameError> {
        check_single_line("id", self.id)?;
        check_single_line("event", self.event)
    }

    /// The exact number of bytes [`Event::encode`] produces (after a successful validation).
    pub fn encoded_len(&self) -> usize {
        let mut len = 1; // the blank line that ends the frame
        if let Some(comment) = self.comment {
            len += lines(comment).map(|line| 2 + line.len() + 1).sum::<usize>();
        }
        if let Some(id) = self.id {
            len += "id: \n".len() + id.len();
        }
        if let Some(event) = self.event {
            len += "event: \n".len() + event.len();
        }
        if let Some(retry) = self.retry {
            len += "retry: \n".len() + decimal_len(retry);
        }
        len + lines(self.data).map(|line| "data:\n".len() + usize::from(!line.is_empty()) + line.len()).sum::<usize>()
    }

    /// Encodes the event as one complete frame.
    pub fn encode(&self) -> Result<Bytes, FrameError> {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut buf)?;
        Ok(buf.freeze())
    }

    /// Appends the encoded frame to `buf`; on error `buf` is unchanged.
    pub fn encode_into(&self, buf: &mut BytesMut) -> Result<(), FrameError> {
        self.validate()?;
        buf.reserve(self.encoded_len());
        if let Some(comment) = self.comment {
            for line in lines(comment) {
                buf.put_slice(b": ");
                buf.put_slice(line.as_bytes());
                buf.put_u8(b'\n');
            }
        }
        if let Some(id) = self.id {
            put_field(buf, b"id: ", id);
        }
        if let Some(event) = self.event {
            put_field(buf, b"event: ", event);
        }
        if let Some(retry) = self.retry {
            buf.put_slice(b"retry: ");
            put_decimal(buf, retry);
            buf.put_u8(b'\n');
        }
        for line in lines(self.data) {
            if line.is_empty() {
                buf.put_slice(b"data:\n");
            } else {
                put_field(buf, b"data: ", line);
            }
        }
        buf.put_u8(b'\n');
        Ok(())
    }
}

/// The `id:` field of a frame [`Event::encode`] made (its fields come before the data).
pub fn id_of(frame: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(frame).ok()?;
    for line in text.split('\n') {
        if let Some(id) = line.strip_prefix("id: ") {
            return Some(id);
        }
        if line.is_empty() || line.starts_with("data:") {
            return None;
        }
    }
    None
}

/// A comment-only frame (`: text`, blank line): dispatches no event, keeps proxies and
/// clients from timing out. Multi-line text becomes several comment lines.
pub fn comment(text: &str) -> Bytes {
    let event = Event { comment: Some(text), data: "", ..Event::default() };
    let mut buf = BytesMut::with_capacity(event.encoded_len());
    for line in lines(text) {
        buf.put_slice(b": ");
        buf.put_slice(line.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_u8(b'\n');
    buf.freeze()
}

/// A `retry:` hint on its own (no event is dispatched for it).
pub fn retry_hint(millis: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity("retry: \n\n".len() + decimal_len(millis));
    buf.put_slice(b"retry: ");
    put_decimal(&mut buf, millis);
    buf.put_slice(b"\n\n");
    buf.freeze()
}

fn put_field(buf: &mut BytesMut, name: &[u8], value: &str) {
    buf.put_slice(name);
    buf.put_slice(value.as_bytes());
    buf.put_u8(b'\n');
}

fn check_single_line(field: &'static str, value: Option<&str>) -> Result<(), FrameError> {
    let Some(value) = value else { return Ok(()) };
    match memchr::memchr3(b'\r', b'\n', 0, value.as_bytes()) {
        None => Ok(()),
        Some(at) => {
            let what = match value.as_bytes()[at] {
                b'\r' => "a carriage return (CR)",
                b'\n' => "a line feed (LF)",
                _ => "a NUL byte",
            };
            Err(FrameError::ForbiddenByte { field, what, at })
        }
    }
}

/// Splits `text` on `\r\n`, `\n` and `\r`, the event stream's line terminators. Always
/// yields at least one (possibly empty) line; a trailing terminator yields a last empty line.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match memchr::memchr2(b'\r', b'\n', current.as_bytes()) {
            None => {
                rest = None;
                Some(current)
            }
            Some(at) => {
                let skip = if current.as_bytes()[at] == b'\r' && current.as_bytes().get(at + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = Some(&current[at + skip..]);
                Some(&current[..at])
            }
        }
    })
}

fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

fn put_decimal(buf: &mut BytesMut, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&digits[at..]);
}
