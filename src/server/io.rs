//! A connection's bytes as hyper and the HTTP/2 adapter see them: first the bytes the front
//! door already read, then the socket; reads and writes reported to the connection's watch.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ctx::Ctx;
use super::watch::ConnState;

/// A stream that first yields `prefix` (bytes already read from `inner`), then reads `inner`.
pub(crate) struct Replay<I> {
    prefix: Bytes,
    inner: I,
    /// Where reads and writes are reported, with the clock to stamp them (hyper's HTTP/1.1).
    watch: Option<(Arc<ConnState>, Arc<Ctx>)>,
}

impl<I> Replay<I> {
    pub(crate) fn new(inner: I, prefix: Vec<u8>) -> Self {
        Self { prefix: Bytes::from(prefix), inner, watch: None }
    }

    /// Reports reads and writes into `state`.
    pub(crate) fn watched(mut self, state: Arc<ConnState>, ctx: Arc<Ctx>) -> Self {
        self.watch = Some((state, ctx));
        self
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Replay<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Some((state, ctx)), true) = (&this.watch, buf.filled().len() > before) {
            state.read(ctx.tick());
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> Replay<I> {
    fn wrote(&self, result: &Poll<io::Result<usize>>) {
        if let (Some((state, ctx)), Poll::Ready(Ok(1..))) = (&self.watch, result) {
            state.wrote(ctx.tick());
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Replay<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
