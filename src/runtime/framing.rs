//! Seeing what hyper hides: whether any request on a connection carried both
//! `Content-Length` and `Transfer-Encoding` (the request-smuggling pair, RFC 9112
//! §6.1). hyper resolves that pair itself (the transfer coding wins, the
//! `Content-Length` is removed before a handler sees the request, and the connection
//! closes after the answer), so a handler that accepts `Transfer-Encoding: chunked`
//! could not otherwise refuse it. [`FramingWatch`] wraps a connection's byte stream
//! and scans every byte read, header sections and bodies alike, for a block of lines
//! (no empty line between them) with a line starting `content-length:` and a line
//! starting `transfer-encoding:` (either case; hyper's parser admits no space before
//! the colon nor folded lines). Every header section is such a block, so the pair is
//! never missed wherever reads split it; a body that happens to hold both lines marks
//! its connection too, which only ever refuses more. The mark is a flag the server
//! puts in each request's extensions ([`AmbiguousFraming`]); the shim refuses every
//! request of a marked connection. The state is a few bytes per connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const CONTENT_LENGTH: &[u8] = b"content-length:";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";

/// Set once a block of lines on the connection held both framing headers.
#[derive(Debug, Clone, Default)]
pub struct AmbiguousFraming(Arc<AtomicBool>);

impl AmbiguousFraming {
    /// Whether the connection carried both framing headers in one block.
    pub fn seen(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The line scanner: the start of the current line and what its block has held.
#[derive(Debug, Default)]
struct Scanner {
    /// The current line's first bytes, lowercased (carriage returns skipped).
    start: [u8; TRANSFER_ENCODING.len()],
    /// Bytes of the current line so far (saturating).
    len: usize,
    content_length: bool,
    transfer_encoding: bool,
}

impl Scanner {
    /// Scans `bytes`; true once a block has held both headers.
    fn scan(&mut self, bytes: &[u8]) -> bool {
        let mut both = false;
        for &b in bytes {
            match b {
                b'\r' => {}
                b'\n' => {
                    if self.len == 0 {
                        self.content_length = false;
                        self.transfer_encoding = false;
                    } else {
                        let line = &self.start[..self.len.min(self.start.len())];
                        self.content_length |= line.starts_with(CONTENT_LENGTH);
                        self.transfer_encoding |= line.starts_with(TRANSFER_ENCODING);
                        both |= self.content_length && self.transfer_encoding;
                    }
                    self.len = 0;
                }
                b => {
                    if let Some(slot) = self.start.get_mut(self.len) {
                        *slot = b.to_ascii_lowercase();
                    }
                    self.len = self.len.saturating_add(1);
                }
            }
        }
        both
    }
}

/// A connection whose reads are scanned for the framing pair.
#[derive(Debug)]
pub struct FramingWatch<IO> {
    inner: IO,
    scanner: Scanner,
    flag: AmbiguousFraming,
}

impl<IO> FramingWatch<IO> {
    /// Wraps `inner`; the flag to hand to each request of this connection.
    pub fn new(inner: IO) -> (Self, AmbiguousFraming) {
        let flag = AmbiguousFraming::default();
        let watch = FramingWatch {
            inner,
            scanner: Scanner::default(),
            flag: flag.clone(),
        };
        (watch, flag)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingWatch<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let this = &mut *self;
            if this.scanner.scan(&buf.filled()[before..]) {
                this.flag.0.store(true, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingWatch<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    fn scan_split(bytes: &[u8], cuts: &[usize]) -> bool {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        at.push(0);
        at.push(bytes.len());
        at.sort_unstable();
        let mut scanner = Scanner::default();
        let mut both = false;
        for w in at.windows(2) {
            both |= scanner.scan(&bytes[w[0]..w[1]]);
        }
        both
    }

    #[test]
    fn the_pair_in_one_header_section_is_seen_in_either_order() {
        for head in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\nhost: a\r\ncontent-length: 5\r\n\r\n",
            "POST / HTTP/1.1\nTransfer-Encoding: chunked\nContent-Length: 5\n\n",
        ] {
            assert!(scan_split(head.as_bytes(), &[]), "{head:?}");
        }
    }

    #[test]
    fn one_framing_header_or_the_two_in_separate_requests_is_not_the_pair() {
        let two = "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}\
                   POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert!(!scan_split(two.as_bytes(), &[]));
        // A header whose name only starts like one is not it.
        let lookalike =
            "POST / HTTP/1.1\r\nX-Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(!scan_split(lookalike.as_bytes(), &[]));
    }

    proptest! {
        #[test]
        fn the_pair_is_seen_however_the_reads_split_it(
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
            pad in "[a-z]{0,300}",
        ) {
            let head = format!(
                "GET /x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}POST / HTTP/1.1\r\nX-Pad: {pad}\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            prop_assert!(scan_split(head.as_bytes(), &cuts));
        }
    }
}
