//! permessage-deflate (RFC 7692): negotiation and the per-connection codec.
//!
//! Negotiation ([`DeflateConfig::offer`], [`DeflateConfig::accept_offer`],
//! [`DeflateConfig::accept_response`]) follows RFC 7692 §7.1 and, where the RFC leaves a
//! choice, python-websockets. The codec ([`Deflate`]) follows RFC 7692 §7.2: raw DEFLATE
//! (RFC 1951), each message ended by a sync flush whose trailing `00 00 ff ff` is removed.
//!
//! # Window sizes
//!
//! RFC 7692 allows LZ77 windows of 2^8 to 2^15 bytes. zlib (and zlib-rs) cannot *compress* raw
//! deflate with a 256-byte window, so sockeye only ever compresses with windows of 9 to 15
//! bits: it never promises to use an 8-bit window (a server declines an offer with
//! `server_max_window_bits=8`, a client refuses a response with `client_max_window_bits=8`).
//! A peer that compresses with an 8-bit window is fine: inflating with a larger window always
//! works, so receiving windows are widened to 9 bits.
//!
//! # Memory
//!
//! A [`Deflate`] allocates its zlib compressor and decompressor on first use, and frees them
//! after each message when the context is not taken over, so idle connections stay small.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::error::{Error, HandshakeError, Limit, LimitExceeded, ProtocolError};
use crate::extensions::Extension;
use crate::Side;

/// The extension token of permessage-deflate (RFC 7692 §7).
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// The smallest LZ77 window, in bits, that sockeye compresses with (zlib's raw deflate cannot
/// do RFC 7692's minimum of 8).
pub const MIN_WINDOW_BITS: u8 = 9;

/// The largest LZ77 window, in bits (RFC 7692 §7.1.2), and the window used when none is
/// negotiated.
pub const MAX_WINDOW_BITS: u8 = 15;

/// The tail of a sync flush: an empty stored block's `LEN`/`NLEN`. Removed from the end of
/// each compressed message (RFC 7692 §7.2.1) and appended again before inflating (§7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The most output inflated per zlib call, so that a message is never inflated much beyond
/// the size limit.
const INFLATE_CHUNK: usize = 16 * 1024;

/// Spare output space kept free for each deflate call; zlib asks for more than 6 bytes so that
/// a sync flush completes in one call.
const DEFLATE_SLACK: usize = 64;

/// What permessage-deflate to offer (client) or accept (server).
///
/// Window bits are 9..=15 (see the [module docs](self) for why not 8); values outside are
/// clamped into that range, and [`DeflateConfig::validate`] reports them. The default turns
/// every parameter off and compresses at level 6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Client: ask the server to reset its compression context after each message
    /// (RFC 7692 §7.1.1.1); a response without it is refused.
    /// Server: always reset the server's context, and say so in the response.
    pub server_no_context_takeover: bool,
    /// Client: reset the client's own compression context after each message, and say so in
    /// the offer (RFC 7692 §7.1.1.2).
    /// Server: require the client to reset its context (the response includes the parameter).
    pub client_no_context_takeover: bool,
    /// Client: ask the server to use at most this LZ77 window (RFC 7692 §7.1.2.1); a response
    /// without it, or with a larger value, is refused.
    /// Server: the largest window the server compresses with.
    pub server_max_window_bits: Option<u8>,
    /// Client: `None` offers `client_max_window_bits` without a value (the client accepts a
    /// limit from the server, RFC 7692 §7.1.2.2); `Some(b)` offers `client_max_window_bits=b`
    /// and compresses with at most `b`.
    /// Server: the limit imposed on the client's window. Since a server may only send this
    /// parameter when the client offered it, an offer without `client_max_window_bits` is
    /// declined when this is set.
    pub client_max_window_bits: Option<u8>,
    /// zlib compression level 0..=9 (larger values are clamped to 9).
    pub compression_level: u32,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: None,
            client_max_window_bits: None,
            compression_level: 6,
        }
    }
}

/// The negotiated parameters, as both ends apply them (RFC 7692 §7.1).
///
/// Window bits are the effective values, 9..=15: 15 when the negotiation set no limit, and a
/// peer's 8 widened to 9 (only for a direction this end inflates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compression context after each message (RFC 7692 §7.1.1.1).
    pub server_no_context_takeover: bool,
    /// The client resets its compression context after each message (RFC 7692 §7.1.1.2).
    pub client_no_context_takeover: bool,
    /// The LZ77 window of the server's compressor, in bits (RFC 7692 §7.1.2.1).
    pub server_max_window_bits: u8,
    /// The LZ77 window of the client's compressor, in bits (RFC 7692 §7.1.2.2).
    pub client_max_window_bits: u8,
}

impl Default for DeflateParams {
    /// Context takeover in both directions, 15-bit windows: what an offer and a response
    /// without parameters agree on.
    fn default() -> Self {
        DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: MAX_WINDOW_BITS,
            client_max_window_bits: MAX_WINDOW_BITS,
        }
    }
}

/// The parameters of one offer or response, checked for syntax (RFC 7692 §7.1).
#[derive(Debug, Default)]
struct Parsed {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `None`: absent; `Some(None)`: present without a value (offers only); `Some(Some(b))`.
    client_max_window_bits: Option<Option<u8>>,
}

/// Parses window bits: a decimal integer 8..=15 without leading zeros (RFC 7692 §7.1.2.1,
/// §7.1.2.2).
fn parse_bits(value: &str) -> Option<u8> {
    match value {
        "8" => Some(8),
        "9" => Some(9),
        "10" => Some(10),
        "11" => Some(11),
        "12" => Some(12),
        "13" => Some(13),
        "14" => Some(14),
        "15" => Some(15),
        _ => None,
    }
}

/// Parses the parameters of an offer (`is_offer`) or a response. RFC 7692 §7.1: a duplicate
/// parameter, an unknown one, a value on a flag, or an invalid window size makes the offer or
/// response invalid. `client_max_window_bits` may lack a value only in an offer (§7.1.2.2).
/// Names are matched exactly (they are lowercase in RFC 7692), like python-websockets.
fn parse(params: &[(String, Option<String>)], is_offer: bool) -> Result<Parsed, String> {
    let mut p = Parsed::default();
    let mut seen = [false; 4];
    for (name, value) in params {
        let index = match name.as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return Err(format!("unknown parameter {name}")),
        };
        if std::mem::replace(&mut seen[index], true) {
            return Err(format!("duplicate parameter {name}"));
        }
        let value = value.as_deref();
        let bits = |v: &str| parse_bits(v).ok_or_else(|| format!("invalid value {v:?} for {name}"));
        match (index, value) {
            (0, None) => p.server_no_context_takeover = true,
            (1, None) => p.client_no_context_takeover = true,
            (0 | 1, Some(_)) => return Err(format!("parameter {name} takes no value")),
            (2, Some(v)) => p.server_max_window_bits = Some(bits(v)?),
            (2, None) => return Err(format!("parameter {name} needs a value")),
            (_, Some(v)) => p.client_max_window_bits = Some(Some(bits(v)?)),
            (_, None) if is_offer => p.client_max_window_bits = Some(None),
            (_, None) => return Err(format!("parameter {name} needs a value")),
        }
    }
    Ok(p)
}

/// Clamps configured window bits into what zlib can compress with.
fn clamp_bits(bits: u8) -> u8 {
    bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS)
}

impl DeflateConfig {
    /// Checks the configuration: window bits 9..=15 (RFC 7692 §7.1.2 allows 8, which zlib's
    /// raw deflate cannot compress with) and a compression level 0..=9.
    ///
    /// Invalid values are clamped by the other methods; this tells the application about them.
    pub fn validate(&self) -> Result<(), Error> {
        let ok = |b: Option<u8>| b.is_none_or(|b| (MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(&b));
        if !ok(self.server_max_window_bits) {
            return Err(Error::Misuse(
                "server_max_window_bits must be within 9..=15",
            ));
        }
        if !ok(self.client_max_window_bits) {
            return Err(Error::Misuse(
                "client_max_window_bits must be within 9..=15",
            ));
        }
        if self.compression_level > 9 {
            return Err(Error::Misuse("compression_level must be within 0..=9"));
        }
        Ok(())
    }

    /// The compression level to use, clamped to 0..=9.
    pub fn level(&self) -> u32 {
        self.compression_level.min(9)
    }

    /// Client: the offer for `Sec-WebSocket-Extensions` (RFC 7692 §7.1).
    ///
    /// Parameters come in a fixed order: `server_no_context_takeover`,
    /// `client_no_context_takeover`, `server_max_window_bits=N`, `client_max_window_bits[=N]`.
    /// `client_max_window_bits` is always offered (RFC 7692 §7.1.2.2), so that a server can
    /// limit the client's window instead of declining.
    pub fn offer(&self) -> Extension {
        let mut params = Vec::with_capacity(4);
        if self.server_no_context_takeover {
            params.push(("server_no_context_takeover".to_owned(), None));
        }
        if self.client_no_context_takeover {
            params.push(("client_no_context_takeover".to_owned(), None));
        }
        if let Some(bits) = self.server_max_window_bits {
            params.push((
                "server_max_window_bits".to_owned(),
                Some(clamp_bits(bits).to_string()),
            ));
        }
        params.push((
            "client_max_window_bits".to_owned(),
            self.client_max_window_bits
                .map(|bits| clamp_bits(bits).to_string()),
        ));
        Extension {
            name: EXTENSION_NAME.to_owned(),
            params,
        }
    }

    /// Server: accepts one permessage-deflate offer (RFC 7692 §7.1), given its parameters.
    ///
    /// Returns the negotiated parameters and the response for `Sec-WebSocket-Extensions`,
    /// which lists exactly what the server agreed to, or `Ok(None)` to decline this offer (the
    /// server then tries the client's next offer, or goes on without compression). Declined:
    ///
    /// - an invalid offer: a duplicate or unknown parameter, a value on a flag parameter, an
    ///   invalid window size (RFC 7692 §7.1: "the server MUST decline" what it cannot accept;
    ///   python-websockets likewise skips such an offer rather than failing the handshake);
    /// - `server_max_window_bits=8`: the server must not use a larger window than the client
    ///   asked for (§7.1.2.1), and zlib cannot compress with a 256-byte window;
    /// - an offer without `client_max_window_bits` when [`Self::client_max_window_bits`] is
    ///   set: the server may only limit the client's window if the client offered the
    ///   parameter (§7.1.2.2).
    ///
    /// The response carries `server_no_context_takeover` when the client asked for it or the
    /// server is configured to (§7.1.1.1); `client_no_context_takeover` when the server
    /// requires it or the client offered it, which makes the client's hint binding
    /// (§7.1.1.2); `server_max_window_bits` as the smaller of the offered and configured
    /// values (§7.1.2.1); `client_max_window_bits` as the smaller of the offered value and the
    /// configured limit, when the client offered the parameter and either is set (§7.1.2.2).
    ///
    /// This implementation never returns `Err`: every problem with an offer declines it.
    pub fn accept_offer(
        &self,
        params: &[(String, Option<String>)],
    ) -> Result<Option<(DeflateParams, Extension)>, HandshakeError> {
        let Ok(offer) = parse(params, true) else {
            return Ok(None);
        };

        let server_no_context_takeover =
            offer.server_no_context_takeover || self.server_no_context_takeover;
        let client_no_context_takeover =
            offer.client_no_context_takeover || self.client_no_context_takeover;

        let configured_server = self.server_max_window_bits.map(clamp_bits);
        let server_max_window_bits = match (offer.server_max_window_bits, configured_server) {
            (Some(offered), Some(configured)) => Some(offered.min(configured)),
            (offered, configured) => offered.or(configured),
        };
        if server_max_window_bits.is_some_and(|bits| bits < MIN_WINDOW_BITS) {
            return Ok(None);
        }

        let configured_client = self.client_max_window_bits.map(clamp_bits);
        let client_max_window_bits = match (offer.client_max_window_bits, configured_client) {
            (None, Some(_)) => return Ok(None),
            (None, None) => None,
            (Some(offered), configured) => match (offered, configured) {
                (Some(offered), Some(configured)) => Some(offered.min(configured)),
                (offered, configured) => offered.or(configured),
            },
        };

        let negotiated = DeflateParams {
            server_no_context_takeover,
            client_no_context_takeover,
            server_max_window_bits: server_max_window_bits.unwrap_or(MAX_WINDOW_BITS),
            // The server only inflates with this window: a client's 8 is widened to 9.
            client_max_window_bits: client_max_window_bits
                .map_or(MAX_WINDOW_BITS, |bits| bits.max(MIN_WINDOW_BITS)),
        };
        let mut response = Vec::with_capacity(4);
        if server_no_context_takeover {
            response.push(("server_no_context_takeover".to_owned(), None));
        }
        if client_no_context_takeover {
            response.push(("client_no_context_takeover".to_owned(), None));
        }
        if let Some(bits) = server_max_window_bits {
            response.push(("server_max_window_bits".to_owned(), Some(bits.to_string())));
        }
        if let Some(bits) = client_max_window_bits {
            response.push(("client_max_window_bits".to_owned(), Some(bits.to_string())));
        }
        let response = Extension {
            name: EXTENSION_NAME.to_owned(),
            params: response,
        };
        Ok(Some((negotiated, response)))
    }

    /// Client: checks the server's response to [`Self::offer`] (RFC 7692 §7.1) and returns the
    /// negotiated parameters.
    ///
    /// Fails with [`HandshakeError::Negotiation`] (the client must then fail the connection,
    /// RFC 7692 §7.1) on a duplicate or unknown parameter, a value on a flag parameter, an
    /// invalid window size or `client_max_window_bits` without a value; when
    /// `server_no_context_takeover` was asked for and is missing (§7.1.1.1); when
    /// `server_max_window_bits` was asked for and is missing or larger (§7.1.2.1); when
    /// `client_max_window_bits` is larger than the value offered (§7.1.2.2) or is 8 (which
    /// zlib cannot compress with).
    ///
    /// The client's window is the smaller of its own limit and the server's value, 15 when
    /// neither is set; it resets its context when configured to or told to (§7.1.1.2).
    pub fn accept_response(
        &self,
        params: &[(String, Option<String>)],
    ) -> Result<DeflateParams, HandshakeError> {
        let fail = |msg: String| HandshakeError::Negotiation(format!("{EXTENSION_NAME}: {msg}"));
        let response = parse(params, false).map_err(fail)?;

        if self.server_no_context_takeover && !response.server_no_context_takeover {
            return Err(fail("expected server_no_context_takeover".to_owned()));
        }

        let asked_server = self.server_max_window_bits.map(clamp_bits);
        let server_max_window_bits = match (asked_server, response.server_max_window_bits) {
            (Some(_), None) => return Err(fail("expected server_max_window_bits".to_owned())),
            (Some(asked), Some(bits)) if bits > asked => {
                return Err(fail(format!(
                    "server_max_window_bits={bits} is larger than the {asked} offered"
                )))
            }
            // The client only inflates with this window: a server's 8 is widened to 9.
            (_, Some(bits)) => bits.max(MIN_WINDOW_BITS),
            (None, None) => MAX_WINDOW_BITS,
        };

        // `Self::offer` always includes client_max_window_bits, so a response may carry it.
        let offered_client = true;
        let own_client = self.client_max_window_bits.map(clamp_bits);
        let client_max_window_bits = match response.client_max_window_bits.flatten() {
            Some(_) if !offered_client => {
                return Err(fail("unexpected client_max_window_bits".to_owned()))
            }
            Some(bits) if bits < MIN_WINDOW_BITS => {
                return Err(fail(format!(
                    "client_max_window_bits={bits} is not supported (the minimum is 9)"
                )))
            }
            Some(bits) => match own_client {
                Some(own) if bits > own => {
                    return Err(fail(format!(
                        "client_max_window_bits={bits} is larger than the {own} offered"
                    )))
                }
                _ => bits,
            },
            None => own_client.unwrap_or(MAX_WINDOW_BITS),
        };

        Ok(DeflateParams {
            server_no_context_takeover: response.server_no_context_takeover,
            client_no_context_takeover: response.client_no_context_takeover
                || self.client_no_context_takeover,
            server_max_window_bits,
            client_max_window_bits,
        })
    }
}

/// Per-connection compression state of permessage-deflate (RFC 7692 §7.2).
///
/// Created from the negotiated [`DeflateParams`]; holds no zlib state until the first message
/// is compressed or inflated ([`Deflate::is_allocated`]). Without context takeover, the state
/// of that direction is freed after each message (rather than reset), so that a connection
/// between messages holds nothing.
#[derive(Debug)]
pub struct Deflate {
    compressor: Option<Compress>,
    decompressor: Option<Decompress>,
    level: Compression,
    /// LZ77 window of our compressor, in bits.
    send_bits: u8,
    /// LZ77 window of our decompressor, in bits.
    recv_bits: u8,
    /// We reset our compressor after each message.
    send_no_context_takeover: bool,
    /// The peer resets its compressor after each message, so we reset our decompressor.
    recv_no_context_takeover: bool,
    /// The peer ended its deflate stream (a block with BFINAL set) in the message being
    /// inflated; only the end of the message may follow.
    recv_stream_ended: bool,
}

impl Deflate {
    /// The codec for one connection, on `side`, with the negotiated `params`, compressing at
    /// `level` (0..=9, clamped).
    ///
    /// This end compresses with its own side's window and context flag, and inflates with the
    /// peer's (RFC 7692 §7.1). Window bits outside 9..=15 are clamped. Allocates nothing.
    pub fn new(params: DeflateParams, side: Side, level: u32) -> Self {
        let (send_bits, recv_bits, send_reset, recv_reset) = match side {
            Side::Server => (
                params.server_max_window_bits,
                params.client_max_window_bits,
                params.server_no_context_takeover,
                params.client_no_context_takeover,
            ),
            Side::Client => (
                params.client_max_window_bits,
                params.server_max_window_bits,
                params.client_no_context_takeover,
                params.server_no_context_takeover,
            ),
        };
        Deflate {
            compressor: None,
            decompressor: None,
            level: Compression::new(level.min(9)),
            send_bits: clamp_bits(send_bits),
            recv_bits: clamp_bits(recv_bits),
            send_no_context_takeover: send_reset,
            recv_no_context_takeover: recv_reset,
            recv_stream_ended: false,
        }
    }

    /// Whether the zlib compressor and decompressor are currently allocated, in that order.
    ///
    /// Both are `false` for a new `Deflate`; each becomes `true` on first use, and `false`
    /// again after each message in a direction without context takeover.
    pub fn is_allocated(&self) -> (bool, bool) {
        (self.compressor.is_some(), self.decompressor.is_some())
    }

    /// Compresses one fragment of a message, appending it to `out` (RFC 7692 §7.2.1).
    ///
    /// Each fragment ends with a sync flush, so the peer can inflate it as it arrives. When
    /// `fin` (the last fragment of the message), the trailing `00 00 ff ff` of the flush is
    /// removed, and without context takeover (RFC 7692 §7.1.1) the compressor is freed. An
    /// empty message compresses to the single byte `00` (RFC 7692 §7.2.3.6).
    pub fn compress(&mut self, payload: &[u8], fin: bool, out: &mut Vec<u8>) {
        let start = out.len();
        let (level, bits) = (self.level, self.send_bits);
        let compressor = self
            .compressor
            .get_or_insert_with(|| Compress::new_with_window_bits(level, false, bits));

        // First the payload without flushing, at least one call even when it is empty: zlib
        // refuses a sync flush right after another one with no input in between (it returns
        // a buffer error and writes nothing), and a call without flush clears that memory.
        let mut input = payload;
        let mut ok = true;
        loop {
            reserve_for_deflate(out, input.len());
            let before = compressor.total_in();
            ok &= compressor
                .compress_vec(input, out, FlushCompress::None)
                .is_ok();
            let consumed = usize::try_from(compressor.total_in() - before).unwrap_or(input.len());
            input = input.get(consumed..).unwrap_or_default();
            if input.is_empty() || !ok {
                break;
            }
        }
        // Then the sync flush, complete once zlib leaves output space unused.
        while ok {
            reserve_for_deflate(out, 0);
            ok &= compressor
                .compress_vec(&[], out, FlushCompress::Sync)
                .is_ok();
            if out.len() < out.capacity() {
                break;
            }
        }
        // zlib only fails on a misused stream, which this code never does.
        debug_assert!(ok, "deflate failed");

        if fin {
            if out[start..].ends_with(&TAIL) {
                out.truncate(out.len() - TAIL.len());
            } else if out.len() == start {
                // Not expected (see above); an empty stored block keeps the message valid.
                out.push(0x00);
            }
            if self.send_no_context_takeover || !ok {
                self.compressor = None;
            }
        } else if !ok {
            self.compressor = None;
        }
    }

    /// Inflates one fragment of a message, appending it to `out` (RFC 7692 §7.2.2).
    ///
    /// `out` holds the message inflated so far; `max_size` bounds its length. Inflating stops
    /// with [`Error::LimitExceeded`] ([`Limit::MessageSize`]) as soon as `out` would grow past
    /// `max_size`: output is produced in chunks of at most 16 KiB and never more than one
    /// byte past the limit, so a "zip bomb" allocates about `max_size` at most.
    ///
    /// When `fin` (the last fragment), the `00 00 ff ff` removed by the sender is appended
    /// before inflating, and if the peer does not take over context (RFC 7692 §7.1.1) the
    /// decompressor is freed. A fragment that ends inside a deflate block is fine: the rest
    /// comes with the next fragment. Input that is not valid deflate, data after a final
    /// block, or back-references beyond the negotiated window fail with
    /// [`ProtocolError::Inflate`].
    pub fn decompress(
        &mut self,
        input: &[u8],
        fin: bool,
        out: &mut Vec<u8>,
        max_size: usize,
    ) -> Result<(), Error> {
        let result = self.inflate(input, fin, out, max_size);
        if result.is_err() {
            // The stream is in an unknown state; never use it again.
            self.decompressor = None;
            self.recv_stream_ended = false;
        } else if fin {
            self.recv_stream_ended = false;
            if self.recv_no_context_takeover {
                self.decompressor = None;
            }
        }
        result
    }

    fn inflate(
        &mut self,
        input: &[u8],
        fin: bool,
        out: &mut Vec<u8>,
        max_size: usize,
    ) -> Result<(), Error> {
        let too_big = || {
            Error::LimitExceeded(LimitExceeded {
                limit: Limit::MessageSize,
                max: max_size,
            })
        };
        if out.len() > max_size {
            return Err(too_big());
        }
        let bits = self.recv_bits;
        let decompressor = self
            .decompressor
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, bits));
        let tail: &[u8] = if fin { &TAIL } else { &[] };

        for (piece, is_tail) in [(input, false), (tail, true)] {
            let mut piece = piece;
            if self.recv_stream_ended {
                // After a final block only the end of the message may come. A sender that
                // flushes with BFINAL blocks (RFC 7692 §7.2.3.3) ends its message there; the
                // tail we append is then left over, and ignored.
                if is_tail || piece.is_empty() {
                    continue;
                }
                return Err(inflate_error("data after the final deflate block"));
            }
            loop {
                let len = out.len();
                // One byte more than allowed reveals that the message is too big.
                let room = (max_size - len).saturating_add(1).min(INFLATE_CHUNK);
                reserve_for_inflate(out, room, max_size);
                out.resize(len + room, 0);
                let (in_before, out_before) = (decompressor.total_in(), decompressor.total_out());
                let status = decompressor.decompress(piece, &mut out[len..], FlushDecompress::None);
                let consumed = decompressor.total_in() - in_before;
                let produced = decompressor.total_out() - out_before;
                let consumed = usize::try_from(consumed).unwrap_or(usize::MAX);
                let produced = usize::try_from(produced).unwrap_or(usize::MAX).min(room);
                out.truncate(len + produced);
                let status = status.map_err(|e| inflate_error(&e.to_string()))?;
                if out.len() > max_size {
                    return Err(too_big());
                }
                piece = piece.get(consumed..).unwrap_or_default();
                if status == Status::StreamEnd {
                    self.recv_stream_ended = true;
                    if is_tail || piece.is_empty() {
                        break;
                    }
                    return Err(inflate_error("data after the final deflate block"));
                }
                if produced < room && piece.is_empty() {
                    // All input consumed, and zlib had space left: nothing more to come.
                    break;
                }
                if consumed == 0 && produced == 0 {
                    // zlib always progresses with input and output space; be safe anyway.
                    return Err(inflate_error("inflate made no progress"));
                }
            }
        }
        Ok(())
    }
}

fn inflate_error(msg: &str) -> Error {
    Error::Protocol(ProtocolError::Inflate(msg.to_owned()))
}

/// Makes sure `out` has spare capacity for a deflate call compressing `remaining` bytes:
/// at least [`DEFLATE_SLACK`], more for large inputs (amortized by `Vec::reserve`).
fn reserve_for_deflate(out: &mut Vec<u8>, remaining: usize) {
    if out.capacity() - out.len() < DEFLATE_SLACK {
        let want = remaining.min(64 * 1024) + DEFLATE_SLACK;
        out.reserve(want);
    }
}

/// Makes sure `out` can grow by `room` bytes, growing it geometrically but never past
/// `max_size + 1` bytes of capacity (unless it already has more).
fn reserve_for_inflate(out: &mut Vec<u8>, room: usize, max_size: usize) {
    let len = out.len();
    if out.capacity() - len >= room {
        return;
    }
    let ceiling = max_size.saturating_add(1);
    let target = len
        .saturating_mul(2)
        .max(len + room)
        .min(ceiling)
        .max(len + room);
    out.reserve_exact(target - len);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(list: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn rfc_hello_example() {
        let mut d = Deflate::new(DeflateParams::default(), Side::Client, 6);
        let mut out = Vec::new();
        d.decompress(
            &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
            true,
            &mut out,
            100,
        )
        .unwrap();
        assert_eq!(out, b"Hello");
        let mut out = Vec::new();
        d.decompress(&[0xf2, 0x00, 0x11, 0x00, 0x00], true, &mut out, 100)
            .unwrap();
        assert_eq!(out, b"Hello");
    }
}
