//! The tokio driver's write side: the bytes taken from the core, with the large payloads it
//! spliced in rather than copied (`Protocol::set_zero_copy`), written with vectored writes.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;

use crate::proto::Protocol;

/// At most this many slices per vectored write.
const MAX_SLICES: usize = 16;

/// What the driver took from the core and has not written yet.
#[derive(Default)]
pub(crate) struct Outgoing {
    /// The bytes (frame headers, small frames).
    buf: Vec<u8>,
    /// How much of `buf` is written.
    pos: usize,
    /// Payloads to write after a position of `buf`, in order.
    splices: Vec<(usize, Bytes)>,
    /// The first splice not completely written.
    next: usize,
    /// How much of splice `next` is written (when `pos` is at its position).
    in_splice: usize,
}

impl Outgoing {
    /// Starts with bytes already due (what the handshake read left to answer).
    pub(crate) fn new(buf: Vec<u8>) -> Outgoing {
        Outgoing {
            buf,
            ..Outgoing::default()
        }
    }

    /// Whether everything taken has been written.
    pub(crate) fn is_drained(&self) -> bool {
        self.pos == self.buf.len() && self.next == self.splices.len()
    }

    /// Bytes taken and not written yet.
    pub(crate) fn remaining(&self) -> usize {
        let spliced: usize = self.splices[self.next..].iter().map(|s| s.1.len()).sum();
        self.buf.len() - self.pos + spliced - self.in_splice
    }

    /// Once drained: takes everything the core has to send (`buf` keeps its allocation).
    pub(crate) fn refill(&mut self, proto: &mut Protocol) {
        debug_assert!(self.is_drained());
        self.buf.clear();
        self.pos = 0;
        self.splices.clear();
        self.next = 0;
        self.in_splice = 0;
        proto.poll_transmit_spliced(&mut self.buf, &mut self.splices);
    }

    /// Once drained: gives back a buffer over `keep` bytes (grown for a burst).
    pub(crate) fn release(&mut self, keep: usize) {
        if self.is_drained() && self.buf.capacity() > keep {
            *self = Outgoing::default();
        }
    }

    /// The next slices to write, in order.
    fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut slices = Vec::with_capacity(4);
        let (mut pos, mut next, mut in_splice) = (self.pos, self.next, self.in_splice);
        while slices.len() < MAX_SLICES {
            match self.splices.get(next) {
                Some((at, payload)) if *at == pos => {
                    if in_splice < payload.len() {
                        slices.push(IoSlice::new(&payload[in_splice..]));
                    }
                    next += 1;
                    in_splice = 0;
                }
                Some((at, _)) => {
                    slices.push(IoSlice::new(&self.buf[pos..*at]));
                    pos = *at;
                }
                None if pos < self.buf.len() => {
                    slices.push(IoSlice::new(&self.buf[pos..]));
                    break;
                }
                None => break,
            }
        }
        slices
    }

    /// Marks `n` more bytes as written.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            match self.splices.get(self.next) {
                Some((at, payload)) if *at == self.pos => {
                    let take = n.min(payload.len() - self.in_splice);
                    self.in_splice += take;
                    n -= take;
                    if self.in_splice == payload.len() {
                        self.next += 1;
                        self.in_splice = 0;
                    }
                }
                other => {
                    let end = other.map_or(self.buf.len(), |s| s.0);
                    let take = n.min(end - self.pos);
                    debug_assert!(take > 0, "advanced past the end");
                    if take == 0 {
                        return;
                    }
                    self.pos += take;
                    n -= take;
                }
            }
        }
        // Empty payloads at the current position are written too.
        while let Some((at, payload)) = self.splices.get(self.next) {
            if *at == self.pos && self.in_splice == payload.len() {
                self.next += 1;
                self.in_splice = 0;
            } else {
                break;
            }
        }
    }

    /// Writes what it can: `Ready(Ok(n))` with `n > 0` bytes written, `Ready(Ok(0))` when
    /// the transport takes nothing more (write zero), `Pending` when it is full.
    pub(crate) fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let result = {
            let slices = self.slices();
            if slices.len() == 1 {
                Pin::new(&mut *stream).poll_write(cx, &slices[0])
            } else {
                Pin::new(&mut *stream).poll_write_vectored(cx, &slices)
            }
        };
        if let Poll::Ready(Ok(n)) = result {
            self.advance(n);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `per_call` bytes per call.
    struct Trickle {
        got: Vec<u8>,
        per_call: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.per_call);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut left = self.per_call;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.got.extend_from_slice(&b[..take]);
                left -= take;
                n += take;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }
    }

    #[test]
    fn bytes_and_splices_leave_in_order_whatever_each_write_takes() {
        for per_call in [1, 2, 3, 7, 64, 1000, 100_000] {
            let big = |seed: u8, len: usize| -> Bytes {
                (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect()
            };
            let (a, b, c) = (big(3, 700), big(5, 0), big(7, 1500));
            let buf = b"head1|head2|tail".to_vec();
            let mut out = Outgoing {
                buf: buf.clone(),
                splices: vec![(6, a.clone()), (6, b.clone()), (12, c.clone())],
                ..Outgoing::default()
            };
            let mut expected = Vec::new();
            expected.extend_from_slice(&buf[..6]);
            expected.extend_from_slice(&a);
            expected.extend_from_slice(&b);
            expected.extend_from_slice(&buf[6..12]);
            expected.extend_from_slice(&c);
            expected.extend_from_slice(&buf[12..]);
            assert_eq!(out.remaining(), expected.len());
            let mut writer = Trickle {
                got: Vec::new(),
                per_call,
            };
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            let mut calls = 0;
            while !out.is_drained() {
                match out.poll_write(&mut writer, &mut cx) {
                    Poll::Ready(Ok(n)) => assert!(n > 0),
                    other => panic!("{other:?}"),
                }
                calls += 1;
                assert!(calls < 10_000, "no progress");
                assert_eq!(out.remaining(), expected.len() - writer.got.len());
            }
            assert_eq!(writer.got, expected, "per_call {per_call}");
        }
    }

    #[test]
    fn a_splice_at_the_start_and_at_the_end() {
        let payload = Bytes::from(vec![9u8; 300]);
        let mut out = Outgoing {
            buf: b"ab".to_vec(),
            splices: vec![(0, payload.clone()), (2, payload.clone())],
            ..Outgoing::default()
        };
        let mut writer = Trickle {
            got: Vec::new(),
            per_call: 128,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while !out.is_drained() {
            let _ = out.poll_write(&mut writer, &mut cx);
        }
        let mut expected = payload.to_vec();
        expected.extend_from_slice(b"ab");
        expected.extend_from_slice(&payload);
        assert_eq!(writer.got, expected);
    }
}
