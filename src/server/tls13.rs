//! TLS 1.3 after rustls's handshake, reduced to its record keys: what an idle TLS connection
//! keeps is its socket and two AEAD keys, not rustls's session and buffers.
//!
//! rustls does the handshake (and everything TLS 1.2). Once a TLS 1.3 connection has its
//! traffic keys and nothing is left in rustls's buffers, [`seal`] takes the keys and the
//! sequence numbers out of rustls (`dangerous_extract_secrets`, the API meant for kernel TLS)
//! and drops the session: its 4 KiB read buffer, handshake state and record layer (about
//! 6 KiB per connection, measured in `perf/results/2026-12-02-tls-idle.md`). [`Sealed`] then
//! writes and reads application-data records itself with `ring`'s AEADs, the same code
//! rustls's ring provider uses:
//!
//! - **Writes** encrypt a batch into records of at most 16 KiB of plaintext in one buffer per
//!   runtime thread (one copy of the frames, one encryption pass) and send them with one
//!   `write`. Records are made only when the socket is writable; what it does not take is
//!   kept for this connection until it does (the only write buffer a connection ever holds,
//!   freed once sent).
//! - **Reads** take application data (junk, on an event stream, that the stream counts),
//!   `close_notify` (end of stream), and refuse the rest: any other
//!   alert, and post-handshake handshake messages (a client's `KeyUpdate`): the connection
//!   ends with an error, and an `EventSource` reconnects with `Last-Event-ID`.
//! - **Key limits**: after [`MAX_RECORDS`] records in one direction (below AES-GCM's 2^24.5
//!   limit) the connection ends the same way instead of updating its keys.
//!
//! Record format (RFC 8446 section 5.2): a 5-byte header `17 03 03 LEN`, then the
//! ciphertext of `data || content type`, then the 16-byte tag; the nonce is the write IV
//! XOR the record's sequence number, the additional data is the header.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use ring::aead;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ConnectionTrafficSecrets, ProtocolVersion};

/// Largest plaintext in one record (RFC 8446 section 5.1).
const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest ciphertext a peer may send in one record (section 5.2: 2^14 + 256).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
const HEADER: usize = 5;
const TAG: usize = 16;
/// Most plaintext bytes one write encrypts (a stream's batch is at most 32 KiB).
const MAX_PLAINTEXT_PER_WRITE: usize = 64 << 10;
/// Records per direction before the connection ends instead of updating its keys: below
/// AES-GCM's confidentiality limit of 2^24.5 full records (RFC 8446 section 5.5).
const MAX_RECORDS: u64 = 1 << 24;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;

thread_local! {
    /// The records of one write, made and sent between two polls (never across an await).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// One read from a socket, between two polls.
    static RX_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One direction's key, IV and next record number.
struct Direction {
    key: aead::LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
}

impl Direction {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Option<Self> {
        let (algorithm, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&aead::CHACHA20_POLY1305, key, iv),
            _ => return None,
        };
        let key = aead::LessSafeKey::new(aead::UnboundKey::new(algorithm, key.as_ref()).ok()?);
        let iv = iv.as_ref().try_into().ok()?;
        Some(Self { key, iv, seq })
    }

    /// The next record's nonce; fails once the key has sealed or opened `MAX_RECORDS`.
    fn next_nonce(&mut self) -> io::Result<aead::Nonce> {
        if self.seq >= MAX_RECORDS {
            return Err(io::Error::other("TLS key usage limit reached: the connection ends (clients reconnect)"));
        }
        let mut nonce = self.iv;
        for (byte, seq) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *byte ^= seq;
        }
        self.seq += 1;
        Ok(aead::Nonce::assume_unique_for_key(nonce))
    }
}

/// A TLS 1.3 connection after its handshake (module docs).
///
/// What it holds besides its socket and keys is boxed apart and there only while in use
/// (records the socket did not take, bytes the client sent), so an idle connection is one
/// allocation of about 1.2 KiB.
pub(crate) struct Sealed {
    tcp: TcpStream,
    tx: Direction,
    rx: Direction,
    /// Records the socket has not taken yet (only while it is full).
    unsent: Option<Box<Buffer>>,
    /// A partial record read from the socket, and plaintext opened but not read yet (only
    /// while the client is sending).
    received: Option<Box<Received>>,
    /// `close_notify` or end of stream seen.
    rx_closed: bool,
    close_notify_sent: bool,
}

/// Bytes and how many of them are used up.
#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    at: usize,
}

impl Buffer {
    fn rest(&self) -> &[u8] {
        &self.bytes[self.at..]
    }
}

#[derive(Default)]
struct Received {
    records: Vec<u8>,
    plain: Buffer,
}

/// A rustls-served TLS connection.
pub(crate) type TlsStream = tokio_rustls::server::TlsStream<ByRecord>;

/// The socket under rustls: it hands rustls whole TLS records only (in pieces if rustls's
/// read is smaller, but never waiting on the socket in between), at most one per read.
/// rustls processes what it reads before it returns, so whenever tokio-rustls stops reading
/// (the handshake done, or plaintext there) rustls holds no partial record: what it took is
/// a handshake message or plaintext, and whatever came after is here. [`seal`] passes both on.
pub(crate) struct ByRecord {
    tcp: TcpStream,
    /// Bytes read from the socket and not handed to rustls yet (unallocated when none).
    ahead: Vec<u8>,
    /// Bytes of the current record not handed to rustls yet (0: at a record boundary).
    left: usize,
}

impl ByRecord {
    pub(crate) fn new(tcp: TcpStream) -> Self {
        Self { tcp, ahead: Vec::new(), left: 0 }
    }
}

impl AsyncRead for ByRecord {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.left == 0 && this.ahead.len() >= HEADER {
                this.left = HEADER + usize::from(u16::from_be_bytes([this.ahead[3], this.ahead[4]]));
            }
            // A record is handed over only once all of it is here: rustls never waits on the
            // socket with part of a record inside.
            if this.left > 0 && this.ahead.len() >= this.left {
                let n = this.left.min(this.ahead.len()).min(buf.remaining());
                buf.put_slice(&this.ahead[..n]);
                this.ahead.drain(..n);
                this.left -= n;
                if this.ahead.is_empty() {
                    this.ahead = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            let ahead = &mut this.ahead;
            if ready!(poll_read_appending(&mut this.tcp, cx, |bytes| ahead.extend_from_slice(bytes)))? == 0 {
                // End of stream: hand over what is left as it is (rustls reports a cut record).
                let n = this.ahead.len().min(buf.remaining());
                buf.put_slice(&this.ahead[..n]);
                this.ahead.drain(..n);
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for ByRecord {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// What [`seal`] did not seal.
pub(crate) enum Unsealed {
    /// Left with rustls, untouched: TLS 1.2, or rustls holds bytes not used yet.
    Kept(Box<TlsStream>),
    /// rustls refused its secrets after giving up the session (an enabled extraction does
    /// not fail after a finished TLS 1.3 handshake): the connection is closed.
    Lost,
}

/// Takes a TLS 1.3 connection's keys out of rustls (module docs), or says why not. Call it
/// right after the handshake or after rustls returned plaintext: [`ByRecord`] makes those
/// the points where rustls holds no unprocessed input (what it cannot show from outside,
/// and would otherwise be lost).
pub(crate) async fn seal(mut tls: Box<TlsStream>) -> Result<Box<Sealed>, Unsealed> {
    use tokio::io::AsyncWriteExt as _;
    if tls.get_ref().1.protocol_version() != Some(ProtocolVersion::TLSv1_3) {
        return Err(Unsealed::Kept(tls));
    }
    // Everything rustls queued (session tickets) goes out first.
    if tls.flush().await.is_err() {
        return Err(Unsealed::Kept(tls));
    }
    if tls.get_ref().1.wants_write() {
        return Err(Unsealed::Kept(tls));
    }
    // Plaintext rustls opened but nobody read yet (an HTTP/2 client's preface) is passed on.
    let mut opened = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match io::Read::read(&mut tls.get_mut().1.reader(), &mut chunk) {
            Ok(0) => break, // close_notify: the stream reads it as the end
            Ok(n) => opened.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) => {
                tracing::debug!(%error, "TLS connection failed before sealing");
                return Err(Unsealed::Lost);
            }
        }
    }
    let (by_record, session) = (*tls).into_inner();
    let ByRecord { tcp, ahead, left: _ } = by_record;
    let secrets = match session.dangerous_extract_secrets() {
        Ok(secrets) => secrets,
        Err(error) => {
            tracing::warn!(%error, "TLS secret extraction failed; closing the connection");
            return Err(Unsealed::Lost);
        }
    };
    let rustls::ExtractedSecrets { tx: (tx_seq, tx), rx: (rx_seq, rx) } = secrets;
    if let (Some(tx), Some(rx)) = (Direction::new(tx_seq, tx), Direction::new(rx_seq, rx)) {
        // What rustls opened comes first; the records after it are opened by `Sealed`.
        let received = (!ahead.is_empty() || !opened.is_empty())
            .then(|| Box::new(Received { records: ahead, plain: Buffer { bytes: opened, at: 0 } }));
        tracing::debug!("TLS 1.3 connection sealed: rustls's session is freed, its record keys go on");
        Ok(Box::new(Sealed { tcp, tx, rx, unsent: None, received, rx_closed: false, close_notify_sent: false }))
    } else {
        tracing::warn!("TLS secrets of an unknown cipher suite; closing the connection");
        Err(Unsealed::Lost)
    }
}

impl Sealed {
    /// Seals the first `len` bytes (`len <= MAX_PLAINTEXT`) of `data`, after `skip` bytes
    /// of its first slice, as one record of `content` type at the end of `out`.
    fn seal_record(
        &mut self,
        out: &mut Vec<u8>,
        content: u8,
        data: &[IoSlice<'_>],
        skip: usize,
        len: usize,
    ) -> io::Result<()> {
        let start = out.len();
        let record_len = len + 1 + TAG;
        out.extend_from_slice(&[CONTENT_APPLICATION_DATA, 3, 3]);
        out.extend_from_slice(&u16::try_from(record_len).unwrap_or(u16::MAX).to_be_bytes());
        let mut left = len;
        for (i, slice) in data.iter().enumerate() {
            let slice = if i == 0 { &slice[skip..] } else { &slice[..] };
            let take = slice.len().min(left);
            out.extend_from_slice(&slice[..take]);
            left -= take;
            if left == 0 {
                break;
            }
        }
        out.push(content);
        let nonce = self.tx.next_nonce()?;
        let (header, body) = out[start..].split_at_mut(HEADER);
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(nonce, aead::Aad::from(&*header), body)
            .map_err(|_| io::Error::other("TLS record encryption failed"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Sends what the socket has not taken yet; `Ready(Ok)` once nothing is left.
    fn poll_flush_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(unsent) = &mut self.unsent {
            while !unsent.rest().is_empty() {
                let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, unsent.rest()))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                unsent.at += n;
            }
            self.unsent = None;
        }
        Poll::Ready(Ok(()))
    }

    /// Encrypts up to `MAX_PLAINTEXT_PER_WRITE` bytes of `bufs` as records and sends them
    /// once the socket is writable; returns the plaintext bytes taken.
    fn poll_write_records(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        ready!(self.poll_flush_unsent(cx))?;
        let total = bufs.iter().map(|b| b.len()).sum::<usize>().min(MAX_PLAINTEXT_PER_WRITE);
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        ready!(self.tcp.poll_write_ready(cx))?;
        SCRATCH
            .with_borrow_mut(|out| {
                out.clear();
                let mut bufs = bufs;
                let mut skip = 0;
                let mut left = total;
                while left > 0 {
                    let len = left.min(MAX_PLAINTEXT);
                    self.seal_record(out, CONTENT_APPLICATION_DATA, bufs, skip, len)?;
                    // Move past the `len` bytes sealed.
                    let mut advance = len;
                    while advance > 0 {
                        let room = bufs[0].len() - skip;
                        if advance < room {
                            skip += advance;
                            advance = 0;
                        } else {
                            advance -= room;
                            bufs = &bufs[1..];
                            skip = 0;
                        }
                    }
                    left -= len;
                }
                self.send_records(out);
                Ok(total)
            })
            .map_or_else(|error| Poll::Ready(Err(error)), |n| Poll::Ready(Ok(n)))
    }

    /// Writes `records` now as far as the socket takes them, keeping the rest.
    fn send_records(&mut self, records: &[u8]) {
        // WouldBlock (or an error the next write reports): all of it is kept below.
        let sent = self.tcp.try_write(records).unwrap_or_default();
        if sent < records.len() {
            self.unsent = Some(Box::new(Buffer { bytes: records[sent..].to_vec(), at: 0 }));
        }
    }

    /// Opens the complete records at the start of `received.records` into `received.plain`.
    fn open_records(rx: &mut Direction, received: &mut Received, closed: &mut bool) -> io::Result<()> {
        let mut at = 0;
        let records = &mut received.records;
        while records.len() - at >= HEADER && !*closed {
            let header: [u8; HEADER] = records[at..at + HEADER].try_into().unwrap_or_default();
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if header[0] != CONTENT_APPLICATION_DATA || !(TAG + 1..=MAX_CIPHERTEXT).contains(&len) {
                return Err(invalid("a TLS record this connection cannot take"));
            }
            if records.len() - at < HEADER + len {
                break;
            }
            let nonce = rx.next_nonce()?;
            let body = &mut records[at + HEADER..at + HEADER + len];
            let plain = rx
                .key
                .open_in_place(nonce, aead::Aad::from(header), body)
                .map_err(|_| invalid("a TLS record failed to decrypt"))?;
            // The content type is the last non-zero byte; zeros after it are padding.
            let Some(end) = plain.iter().rposition(|&b| b != 0) else {
                return Err(invalid("a TLS record without a content type"));
            };
            match plain[end] {
                CONTENT_APPLICATION_DATA => {
                    let out = &mut received.plain;
                    if out.rest().is_empty() {
                        out.bytes.clear();
                        out.at = 0;
                    }
                    out.bytes.extend_from_slice(&plain[..end]);
                }
                CONTENT_ALERT if plain[..end] == [1, 0] || plain[..end] == [2, 0] => *closed = true,
                CONTENT_ALERT => return Err(invalid("the client sent a TLS alert")),
                CONTENT_HANDSHAKE => {
                    return Err(invalid("the client sent a post-handshake TLS message (a key update?): reconnect"));
                }
                _ => return Err(invalid("a TLS record of an unknown content type")),
            }
            at += HEADER + len;
        }
        records.drain(..at);
        Ok(())
    }
}

/// Reads the socket into this thread's buffer and gives `append` the bytes that came (an idle
/// connection's poll keeps and allocates nothing); returns how many (0: end of stream).
fn poll_read_appending(
    tcp: &mut TcpStream,
    cx: &mut Context<'_>,
    append: impl FnOnce(&[u8]),
) -> Poll<io::Result<usize>> {
    RX_SCRATCH.with_borrow_mut(|scratch| {
        scratch.resize(MAX_CIPHERTEXT + HEADER, 0);
        let mut read = ReadBuf::new(scratch);
        ready!(Pin::new(tcp).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n > 0 {
            append(&scratch[..n]);
        }
        Poll::Ready(Ok(n))
    })
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl AsyncRead for Sealed {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(received) = &mut this.received {
                // Records already here (passed on by `seal`, or after a partial one) first.
                Self::open_records(&mut this.rx, received, &mut this.rx_closed)?;
                let plain = &mut received.plain;
                if !plain.rest().is_empty() {
                    let n = plain.rest().len().min(buf.remaining());
                    buf.put_slice(&plain.rest()[..n]);
                    plain.at += n;
                    if plain.rest().is_empty() && received.records.is_empty() {
                        this.received = None;
                    }
                    return Poll::Ready(Ok(()));
                }
                if received.records.is_empty() {
                    this.received = None;
                }
            }
            if this.rx_closed {
                return Poll::Ready(Ok(()));
            }
            let received = &mut this.received;
            let append = |bytes: &[u8]| received.get_or_insert_default().records.extend_from_slice(bytes);
            if ready!(poll_read_appending(&mut this.tcp, cx, append))? == 0 {
                if this.received.is_none() {
                    this.rx_closed = true;
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

impl AsyncWrite for Sealed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_records(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_records(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_unsent(cx)
    }

    /// Sends `close_notify` (once), then closes the socket's sending side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_unsent(cx))?;
        if !this.close_notify_sent {
            this.close_notify_sent = true;
            let mut out = Vec::with_capacity(HEADER + 3 + TAG);
            let alert = [1u8, 0]; // warning, close_notify
            this.seal_record(&mut out, CONTENT_ALERT, &[IoSlice::new(&alert)], 0, alert.len())?;
            this.send_records(&out);
            ready!(this.poll_flush_unsent(cx))?;
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    /// An idle sealed connection is this one allocation: the socket and two AEAD keys (544
    /// bytes each with ring 0.17). The allocator's size class above 1,280 bytes is 1,536, so
    /// a field added inline here costs every idle TLS connection 256 bytes: box it instead
    /// (as the write and read buffers are).
    #[test]
    fn a_sealed_connection_fits_in_1280_bytes() {
        let size = size_of::<super::Sealed>();
        assert!(size <= 1280, "Sealed grew to {size} bytes");
    }

    #[test]
    fn nonces_are_the_iv_xor_the_sequence_number_and_stop_at_the_limit() {
        let key = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &[7; 16]).expect("a 16-byte key"),
        );
        let mut direction = super::Direction { key, iv: [0xAA; 12], seq: 0x0102 };
        let nonce = direction.next_nonce().expect("below the limit");
        let mut expected = [0xAA; 12];
        expected[10] ^= 0x01;
        expected[11] ^= 0x02;
        assert_eq!(nonce.as_ref(), &expected);
        assert_eq!(direction.seq, 0x0103);
        direction.seq = super::MAX_RECORDS;
        assert!(direction.next_nonce().is_err(), "no record past the key's limit");
    }
}
