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
///
/// 40 bytes: it lives in every connection's task for as long as the connection does, and
/// the payloads written without a copy (64 KiB and more) are rare, so their bookkeeping is
/// boxed, allocated on first use and given back with the buffer ([`release`](Self::release)).
#[derive(Default)]
pub(crate) struct Outgoing {
    /// The bytes (frame headers, small frames).
    buf: Vec<u8>,
    /// How much of `buf` is written.
    pos: usize,
    spliced: Option<Box<Spliced>>,
}

/// The payloads to write between the bytes of [`Outgoing::buf`].
#[derive(Default)]
struct Spliced {
    /// Payloads to write after a position of `buf`, in order.
    splices: Vec<(usize, Bytes)>,
    /// The first splice not completely written.
    next: usize,
    /// How much of splice `next` is written (when `pos` is at its position).
    in_splice: usize,
}

/// What no splice looks like.
const NO_SPLICES: &Spliced = &Spliced {
    splices: Vec::new(),
    next: 0,
    in_splice: 0,
};

impl Outgoing {
    /// Starts with bytes already due (what the handshake read left to answer).
    pub(crate) fn new(buf: Vec<u8>) -> Outgoing {
        Outgoing {
            buf,
            ..Outgoing::default()
        }
    }

    fn spliced(&self) -> &Spliced {
        self.spliced.as_deref().unwrap_or(NO_SPLICES)
    }

    /// Whether everything taken has been written.
    pub(crate) fn is_drained(&self) -> bool {
        let sp = self.spliced();
        self.pos == self.buf.len() && sp.next == sp.splices.len()
    }

    /// Bytes taken and not written yet.
    pub(crate) fn remaining(&self) -> usize {
        let sp = self.spliced();
        let spliced: usize = sp.splices[sp.next..].iter().map(|s| s.1.len()).sum();
        self.buf.len() - self.pos + spliced - sp.in_splice
    }

    /// Once drained: takes everything the core has to send (`buf` keeps its allocation, and
    /// so does the splice list once it has one).
    pub(crate) fn refill(&mut self, proto: &mut Protocol) {
        debug_assert!(self.is_drained());
        self.buf.clear();
        self.pos = 0;
        match &mut self.spliced {
            Some(sp) => {
                sp.splices.clear();
                sp.next = 0;
                sp.in_splice = 0;
                proto.poll_transmit_spliced(&mut self.buf, &mut sp.splices);
            }
            None => {
                let mut splices = Vec::new();
                proto.poll_transmit_spliced(&mut self.buf, &mut splices);
                if !splices.is_empty() {
                    self.spliced = Some(Box::new(Spliced {
                        splices,
                        ..Spliced::default()
                    }));
                }
            }
        }
    }

    /// Once drained: gives back a buffer over `keep` bytes (grown for a burst), and the
    /// splice list.
    pub(crate) fn release(&mut self, keep: usize) {
        if self.is_drained() {
            self.spliced = None;
            if self.buf.capacity() > keep {
                *self = Outgoing::default();
            }
        }
    }

    /// The next slices to write, in order.
    fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut slices = Vec::with_capacity(4);
        let sp = self.spliced();
        let (mut pos, mut next, mut in_splice) = (self.pos, sp.next, sp.in_splice);
        while slices.len() < MAX_SLICES {
            match sp.splices.get(next) {
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
        let Some(sp) = self.spliced.as_deref_mut() else {
            debug_assert!(n <= self.buf.len() - self.pos, "advanced past the end");
            self.pos += n.min(self.buf.len() - self.pos);
            return;
        };
        while n > 0 {
            match sp.splices.get(sp.next) {
                Some((at, payload)) if *at == self.pos => {
                    let take = n.min(payload.len() - sp.in_splice);
                    sp.in_splice += take;
                    n -= take;
                    if sp.in_splice == payload.len() {
                        sp.next += 1;
                        sp.in_splice = 0;
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
        while let Some((at, payload)) = sp.splices.get(sp.next) {
            if *at == self.pos && sp.in_splice == payload.len() {
                sp.next += 1;
                sp.in_splice = 0;
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

    fn with_splices(buf: Vec<u8>, splices: Vec<(usize, Bytes)>) -> Outgoing {
        Outgoing {
            buf,
            pos: 0,
            spliced: Some(Box::new(Spliced {
                splices,
                ..Spliced::default()
            })),
        }
    }

    #[test]
    fn bytes_alone_leave_in_order_whatever_each_write_takes() {
        for per_call in [1, 3, 64, 100_000] {
            let buf: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
            let mut out = Outgoing::new(buf.clone());
            let mut writer = Trickle {
                got: Vec::new(),
                per_call,
            };
            let mut cx = Context::from_waker(std::task::Waker::noop());
            while !out.is_drained() {
                assert!(
                    matches!(out.poll_write(&mut writer, &mut cx), Poll::Ready(Ok(n)) if n > 0)
                );
                assert_eq!(out.remaining(), buf.len() - writer.got.len());
            }
            assert_eq!(writer.got, buf);
            assert!(out.spliced.is_none(), "no splice list without splices");
        }
    }

    #[test]
    fn the_state_kept_per_connection_is_small() {
        assert!(std::mem::size_of::<Outgoing>() <= 40);
    }

    #[test]
    fn bytes_and_splices_leave_in_order_whatever_each_write_takes() {
        for per_call in [1, 2, 3, 7, 64, 1000, 100_000] {
            let big = |seed: u8, len: usize| -> Bytes {
                (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect()
            };
            let (a, b, c) = (big(3, 700), big(5, 0), big(7, 1500));
            let buf = b"head1|head2|tail".to_vec();
            let mut out = with_splices(
                buf.clone(),
                vec![(6, a.clone()), (6, b.clone()), (12, c.clone())],
            );
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
        let mut out = with_splices(
            b"ab".to_vec(),
            vec![(0, payload.clone()), (2, payload.clone())],
        );
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
