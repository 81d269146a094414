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
//! The receiving window only matters to zlib; zlib-rs allocates a 32 KiB inflate window
//! whatever the negotiated size, and (like zlib) resolves back-references from the output of
//! the current call as well as from its window, so a peer that exceeds the negotiated window is
//! not always detected. That is harmless: the data still inflates correctly.
//!
//! # Memory
//!
//! A [`Deflate`] allocates its zlib compressor and decompressor on first use, and frees them
//! after each message when the context is not taken over, so idle connections stay small.
//! When allocated, a compressor takes about 2^(window bits + 2) bytes plus 128 KiB of zlib
//! hash tables and buffers, a decompressor about 40 KiB.

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
    ///   invalid window size (RFC 7692 §7.1: "A server MUST decline an extension negotiation
    ///   offer for this extension if" it has any of these; python-websockets likewise skips
    ///   such an offer and tries the next, rather than answering 400);
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
    /// Fails with [`HandshakeError::Negotiation`] (RFC 7692 §7.1: "A client MUST _Fail the
    /// WebSocket Connection_ if" the response is invalid or unsupported) on a duplicate or unknown parameter, a value on a flag parameter, an
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
    /// Boxed: zlib's stream structs are about 100 bytes each, an idle connection needs none.
    compressor: Option<Box<Compress>>,
    decompressor: Option<Box<Decompress>>,
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
    /// empty message compresses to the single byte `00`, an empty stored block without its
    /// tail (RFC 7692 §7.2.3.6).
    ///
    /// Never fails: zlib only reports errors for a misused stream.
    pub fn compress(&mut self, payload: &[u8], fin: bool, out: &mut Vec<u8>) {
        let start = out.len();
        let (level, bits) = (self.level, self.send_bits);
        let compressor = self
            .compressor
            .get_or_insert_with(|| Box::new(Compress::new_with_window_bits(level, false, bits)));

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
    /// block, or back-references to data that the decompressor does not have fail with
    /// [`ProtocolError::Inflate`].
    ///
    /// After an error the decompressor is dropped: the connection is expected to fail
    /// (close code 1002 or 1009).
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
            // A stream ended by a final block cannot go on: start the next message afresh.
            if self.recv_no_context_takeover || self.recv_stream_ended {
                self.decompressor = None;
            }
            self.recv_stream_ended = false;
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
            .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, bits)));
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
                let wanted = (max_size - len).saturating_add(1).min(INFLATE_CHUNK);
                reserve_for_inflate(out, wanted, max_size);
                // zlib writes into the spare capacity (no zeroing it first: that was 32 KiB
                // of memset per message, a quarter of the server's instructions in a
                // compressed echo). The spare may exceed `wanted` when the buffer is already
                // bigger; it is memory held anyway, and the size check below still holds.
                let room = out.capacity() - len;
                let (in_before, out_before) = (decompressor.total_in(), decompressor.total_out());
                let status = decompressor.decompress_vec(piece, out, FlushDecompress::None);
                let consumed = decompressor.total_in() - in_before;
                let produced = decompressor.total_out() - out_before;
                let consumed = usize::try_from(consumed).unwrap_or(usize::MAX);
                let produced = usize::try_from(produced).unwrap_or(usize::MAX).min(room);
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

    const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    const HELLO_AGAIN: [u8; 5] = [0xf2, 0x00, 0x11, 0x00, 0x00];

    type Params = Vec<(String, Option<String>)>;

    fn params(list: &[(&str, Option<&str>)]) -> Params {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), v.map(str::to_owned)))
            .collect()
    }

    /// Deterministic pseudo-random bytes (xorshift), incompressible.
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8
            })
            .collect()
    }

    /// Text of pseudo-random words: compresses, but not to almost nothing.
    fn words(len: usize, seed: u64) -> Vec<u8> {
        let words = [
            "alpha ", "bravo ", "charlie ", "delta ", "echo ", "foxtrot ", "golf ", "hotel ",
        ];
        let mut out = Vec::new();
        for r in noise(len, seed) {
            out.extend_from_slice(words[usize::from(r) % words.len()].as_bytes());
        }
        out.truncate(len);
        out
    }

    /// Compressible text.
    fn text(len: usize) -> Vec<u8> {
        let words = [
            "websocket ",
            "deflate ",
            "window ",
            "context ",
            "takeover ",
            "frame ",
        ];
        let mut out = Vec::new();
        let mut i = 0usize;
        while out.len() < len {
            out.extend_from_slice(words[(i * 7 + i / 3) % words.len()].as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    fn compress(d: &mut Deflate, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        d.compress(payload, true, &mut out);
        out
    }

    fn inflate(d: &mut Deflate, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        d.decompress(input, true, &mut out, usize::MAX).unwrap();
        out
    }

    fn pair(p: DeflateParams) -> (Deflate, Deflate) {
        (
            Deflate::new(p, Side::Client, 6),
            Deflate::new(p, Side::Server, 6),
        )
    }

    fn all_configs() -> Vec<DeflateConfig> {
        let mut configs = Vec::new();
        for snct in [false, true] {
            for cnct in [false, true] {
                for smwb in [None, Some(9), Some(12), Some(15)] {
                    for cmwb in [None, Some(9), Some(12), Some(15)] {
                        configs.push(DeflateConfig {
                            server_no_context_takeover: snct,
                            client_no_context_takeover: cnct,
                            server_max_window_bits: smwb,
                            client_max_window_bits: cmwb,
                            compression_level: 6,
                        });
                    }
                }
            }
        }
        configs
    }

    #[test]
    fn rfc_7692_hello_examples_inflate() {
        // §7.2.3.1 and §7.2.3.2: "Hello", then "Hello" again with context takeover.
        let mut d = Deflate::new(DeflateParams::default(), Side::Client, 6);
        assert_eq!(inflate(&mut d, &HELLO), b"Hello");
        assert_eq!(inflate(&mut d, &HELLO_AGAIN), b"Hello");
        // §7.2.3.1 again, without context: a fresh decompressor.
        let mut d = Deflate::new(DeflateParams::default(), Side::Server, 6);
        assert_eq!(inflate(&mut d, &HELLO), b"Hello");
    }

    #[test]
    fn rfc_7692_hello_examples_compress() {
        for level in 1..=9 {
            let (mut c, mut s) = pair(DeflateParams::default());
            let first = compress(&mut c, b"Hello");
            let second = compress(&mut c, b"Hello");
            assert_eq!(first, HELLO, "level {level}");
            assert_eq!(second, HELLO_AGAIN, "level {level}");
            assert_eq!(inflate(&mut s, &first), b"Hello");
            assert_eq!(inflate(&mut s, &second), b"Hello");
        }
        // Level 0 (stored blocks) is valid too.
        let p = DeflateParams::default();
        let mut c = Deflate::new(p, Side::Client, 0);
        let mut s = Deflate::new(p, Side::Server, 0);
        let out = compress(&mut c, b"Hello");
        assert_eq!(inflate(&mut s, &out), b"Hello");
    }

    #[test]
    fn rfc_7692_bfinal_block() {
        // §7.2.3.3: "Hello" in a block with BFINAL set; the appended tail is ignored.
        let mut d = Deflate::new(DeflateParams::default(), Side::Client, 6);
        let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&mut d, &bfinal), b"Hello");
        // The next message starts a new stream.
        assert_eq!(inflate(&mut d, &HELLO), b"Hello");
        // Data after the final block is an error.
        let mut trailing = bfinal.to_vec();
        trailing.extend_from_slice(&HELLO);
        let mut out = Vec::new();
        let err = d.decompress(&trailing, true, &mut out, 1000).unwrap_err();
        assert!(
            matches!(err, Error::Protocol(ProtocolError::Inflate(_))),
            "{err:?}"
        );
        // Also when it comes in a later fragment.
        let mut d = Deflate::new(DeflateParams::default(), Side::Client, 6);
        let mut out = Vec::new();
        d.decompress(&bfinal, false, &mut out, 1000).unwrap();
        assert!(d.decompress(&HELLO, true, &mut out, 1000).is_err());
    }

    #[test]
    fn rfc_7692_stored_block_example() {
        // §7.2.3.4: "Hello" in a stored block.
        let mut d = Deflate::new(DeflateParams::default(), Side::Client, 6);
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(inflate(&mut d, &stored), b"Hello");
    }

    #[test]
    fn offer_lists_parameters_in_order() {
        let offer = DeflateConfig::default().offer();
        assert_eq!(offer.name, "permessage-deflate");
        assert_eq!(offer.params, params(&[("client_max_window_bits", None)]));
        let all = DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: Some(10),
            client_max_window_bits: Some(11),
            compression_level: 6,
        };
        assert_eq!(
            all.offer().params,
            params(&[
                ("server_no_context_takeover", None),
                ("client_no_context_takeover", None),
                ("server_max_window_bits", Some("10")),
                ("client_max_window_bits", Some("11")),
            ])
        );
    }

    #[test]
    fn validate_and_clamp() {
        assert!(DeflateConfig::default().validate().is_ok());
        for bad in [
            DeflateConfig {
                server_max_window_bits: Some(8),
                ..DeflateConfig::default()
            },
            DeflateConfig {
                client_max_window_bits: Some(16),
                ..DeflateConfig::default()
            },
            DeflateConfig {
                compression_level: 10,
                ..DeflateConfig::default()
            },
        ] {
            assert!(matches!(bad.validate(), Err(Error::Misuse(_))));
        }
        let clamped = DeflateConfig {
            server_max_window_bits: Some(3),
            client_max_window_bits: Some(200),
            ..DeflateConfig::default()
        };
        assert_eq!(
            clamped.offer().params,
            params(&[
                ("server_max_window_bits", Some("9")),
                ("client_max_window_bits", Some("15")),
            ])
        );
        // Out-of-range params never panic in the codec either.
        let p = DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 0,
            client_max_window_bits: 255,
        };
        let (mut c, mut s) = pair(p);
        let data = text(5000);
        assert_eq!(inflate(&mut s, &compress(&mut c, &data)), data);
        assert_eq!(inflate(&mut c, &compress(&mut s, &data)), data);
    }

    /// Negotiates between a client and a server configuration, checking that both ends agree.
    fn negotiate(client: &DeflateConfig, server: &DeflateConfig) -> DeflateParams {
        let offer = client.offer();
        let (on_server, response) = server
            .accept_offer(&offer.params)
            .unwrap()
            .unwrap_or_else(|| panic!("declined: {client:?} {server:?}"));
        assert_eq!(response.name, EXTENSION_NAME);
        let on_client = client.accept_response(&response.params).unwrap();
        assert_eq!(on_client, on_server, "{client:?} {server:?} {response:?}");
        on_client
    }

    #[test]
    fn every_combination_negotiates_and_round_trips() {
        // Short enough for zlib to refer back to it with a 9-bit window (at most 250 bytes back).
        let message = words(200, 1);
        let messages = [message.clone(), message.clone(), message];
        for client in all_configs() {
            for server in all_configs() {
                let p = negotiate(&client, &server);
                // What each end asked for is honoured.
                assert_eq!(
                    p.server_no_context_takeover,
                    client.server_no_context_takeover || server.server_no_context_takeover
                );
                assert_eq!(
                    p.client_no_context_takeover,
                    client.client_no_context_takeover || server.client_no_context_takeover
                );
                let limit = |a: Option<u8>, b: Option<u8>| a.unwrap_or(15).min(b.unwrap_or(15));
                assert_eq!(
                    p.server_max_window_bits,
                    limit(client.server_max_window_bits, server.server_max_window_bits)
                );
                assert_eq!(
                    p.client_max_window_bits,
                    limit(client.client_max_window_bits, server.client_max_window_bits)
                );
            }
        }
        // Messages both ways for every client configuration against a few servers (every
        // pair would be slow in debug builds; the params above cover every pair).
        let servers = [
            DeflateConfig::default(),
            DeflateConfig {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: Some(10),
                client_max_window_bits: Some(10),
                compression_level: 6,
            },
        ];
        for client in all_configs() {
            for server in &servers {
                for (a, b) in [(&client, server), (server, &client)] {
                    let p = negotiate(a, b);
                    let (mut c, mut s) = pair(p);
                    exchange(&mut c, &mut s, p.client_no_context_takeover, &messages);
                    exchange(&mut s, &mut c, p.server_no_context_takeover, &messages);
                }
            }
        }
    }

    /// Sends identical messages from one end to the other; checks that they come back and
    /// that they shrink with context takeover, or compress the same without.
    fn exchange(from: &mut Deflate, to: &mut Deflate, reset: bool, messages: &[Vec<u8>]) {
        let sizes: Vec<usize> = messages
            .iter()
            .map(|m| {
                let z = compress(from, m);
                assert_eq!(&inflate(to, &z), m);
                z.len()
            })
            .collect();
        if reset {
            assert!(sizes.windows(2).all(|w| w[0] == w[1]), "{sizes:?}");
        } else {
            assert!(sizes[1] < sizes[0] / 2, "{sizes:?}");
            assert!(sizes[2] < sizes[0] / 2, "{sizes:?}");
        }
    }

    #[test]
    fn context_takeover_shrinks_repeated_messages() {
        let data = text(2000);
        let (mut c, mut s) = pair(DeflateParams::default());
        let first = compress(&mut c, &data);
        let second = compress(&mut c, &data);
        assert!(second.len() < first.len());
        assert_eq!(inflate(&mut s, &first), data);
        assert_eq!(inflate(&mut s, &second), data);
        assert_eq!(c.is_allocated(), (true, false));
        assert_eq!(s.is_allocated(), (false, true));

        let p = DeflateParams {
            client_no_context_takeover: true,
            ..DeflateParams::default()
        };
        let (mut c, mut s) = pair(p);
        let first = compress(&mut c, &data);
        assert_eq!(c.is_allocated(), (false, false), "freed after the message");
        let second = compress(&mut c, &data);
        assert_eq!(first, second);
        assert_eq!(inflate(&mut s, &first), data);
        assert_eq!(s.is_allocated(), (false, false), "freed after the message");
        assert_eq!(inflate(&mut s, &second), data);
    }

    #[test]
    fn fresh_codec_allocates_nothing() {
        let d = Deflate::new(DeflateParams::default(), Side::Server, 6);
        assert_eq!(d.is_allocated(), (false, false));
        assert!(
            std::mem::size_of::<Deflate>() <= 32,
            "{}",
            std::mem::size_of::<Deflate>()
        );
    }

    #[test]
    fn each_window_size() {
        // Repeats at distances of 300 to 20,000 bytes: every window finds some of them.
        let mut data = Vec::new();
        for (i, len) in [300usize, 700, 1500, 5000, 20_000].into_iter().enumerate() {
            let block = noise(len, i as u64 + 1);
            data.extend_from_slice(&block);
            data.extend_from_slice(&block);
        }
        let mut previous = usize::MAX;
        for bits in 9..=15 {
            let p = DeflateParams {
                server_max_window_bits: bits,
                client_max_window_bits: bits,
                ..DeflateParams::default()
            };
            let (mut c, mut s) = pair(p);
            let z = compress(&mut c, &data);
            assert_eq!(inflate(&mut s, &z), data, "bits {bits}");
            let z2 = compress(&mut s, &data);
            assert_eq!(inflate(&mut c, &z2), data, "bits {bits}");
            assert!(
                z.len() <= previous,
                "bits {bits}: larger windows compress better"
            );
            previous = z.len();
        }
    }

    #[test]
    fn fragmented_messages() {
        let data = text(50_000);
        for reset in [false, true] {
            let p = DeflateParams {
                client_no_context_takeover: reset,
                ..DeflateParams::default()
            };
            let (mut c, mut s) = pair(p);
            for _ in 0..3 {
                let pieces: Vec<&[u8]> = data.chunks(7_000).collect();
                let mut frames = Vec::new();
                for (i, piece) in pieces.iter().enumerate() {
                    let fin = i + 1 == pieces.len();
                    let mut frame = Vec::new();
                    c.compress(piece, fin, &mut frame);
                    if !fin {
                        assert!(frame.ends_with(&TAIL), "intermediate frames keep the flush");
                    }
                    frames.push(frame);
                }
                assert!(!frames.last().unwrap().ends_with(&TAIL));
                let mut out = Vec::new();
                for (i, frame) in frames.iter().enumerate() {
                    let fin = i + 1 == frames.len();
                    s.decompress(frame, fin, &mut out, usize::MAX).unwrap();
                    // Each fragment inflates as it arrives.
                    assert_eq!(out.len(), (7_000 * (i + 1)).min(data.len()));
                }
                assert_eq!(out, data);
            }
        }
    }

    #[test]
    fn compressed_stream_split_anywhere() {
        let data = text(20_000);
        let (mut c, mut s) = pair(DeflateParams::default());
        let z = compress(&mut c, &data);
        for split in [1, 2, 3, 13, 100, 1000] {
            let mut d = Deflate::new(DeflateParams::default(), Side::Server, 6);
            let mut out = Vec::new();
            let pieces: Vec<&[u8]> = z.chunks(split).collect();
            for (i, piece) in pieces.iter().enumerate() {
                d.decompress(piece, i + 1 == pieces.len(), &mut out, usize::MAX)
                    .unwrap();
            }
            assert_eq!(out, data, "split {split}");
        }
        assert_eq!(inflate(&mut s, &z), data);
    }

    #[test]
    fn empty_messages() {
        for reset in [false, true] {
            let p = DeflateParams {
                client_no_context_takeover: reset,
                server_no_context_takeover: reset,
                ..DeflateParams::default()
            };
            let (mut c, mut s) = pair(p);
            // §7.2.3.6: an empty message is the single byte 00.
            assert_eq!(compress(&mut c, b""), [0x00]);
            assert_eq!(inflate(&mut s, &[0x00]), b"");
            // Empty after non-empty, repeatedly (zlib refuses back-to-back sync flushes).
            for _ in 0..3 {
                let z = compress(&mut c, b"Hello");
                assert_eq!(inflate(&mut s, &z), b"Hello");
                let z = compress(&mut c, b"");
                assert!(!z.is_empty());
                assert_eq!(inflate(&mut s, &z), b"");
                let z = compress(&mut c, b"");
                assert_eq!(inflate(&mut s, &z), b"");
            }
            // Empty fragments, including an empty final one.
            let mut frames = Vec::new();
            for (payload, fin) in [
                (&b""[..], false),
                (b"abc", false),
                (b"", false),
                (b"", true),
            ] {
                let mut frame = Vec::new();
                c.compress(payload, fin, &mut frame);
                frames.push((frame, fin));
            }
            let mut out = Vec::new();
            for (frame, fin) in &frames {
                s.decompress(frame, *fin, &mut out, 100).unwrap();
            }
            assert_eq!(out, b"abc");
            // Empty input frames on the receiving side.
            let mut out = Vec::new();
            s.decompress(&[], false, &mut out, 100).unwrap();
            s.decompress(&[0x00], true, &mut out, 100).unwrap();
            assert!(out.is_empty());
        }
    }

    #[test]
    fn incompressible_data() {
        let data = noise(200_000, 42);
        let (mut c, mut s) = pair(DeflateParams::default());
        for _ in 0..2 {
            let z = compress(&mut c, &data);
            assert!(z.len() < data.len() + data.len() / 100 + 64, "{}", z.len());
            assert_eq!(inflate(&mut s, &z), data);
        }
    }

    #[test]
    fn zip_bomb_is_stopped_at_the_limit() {
        let zeros = vec![0u8; 1 << 20];
        let (mut c, mut s) = pair(DeflateParams::default());
        let z = compress(&mut c, &zeros);
        assert!(z.len() < 2000, "{}", z.len());
        let max = 64 * 1024;
        let mut out = Vec::new();
        let err = s.decompress(&z, true, &mut out, max).unwrap_err();
        assert_eq!(
            err,
            Error::LimitExceeded(LimitExceeded {
                limit: Limit::MessageSize,
                max
            })
        );
        assert!(out.capacity() < 2 * max, "{}", out.capacity());
        assert!(out.len() <= max + 1);
        assert_eq!(
            s.is_allocated(),
            (false, false),
            "a failed stream is dropped"
        );

        // The same, arriving in fragments: the limit is on the whole message.
        let mut s = Deflate::new(DeflateParams::default(), Side::Server, 6);
        let mut out = Vec::new();
        let mut result = Ok(());
        for piece in z.chunks(100) {
            result = s.decompress(piece, false, &mut out, max);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(Error::LimitExceeded(_))));
        assert!(out.capacity() < 2 * max);
    }

    #[test]
    fn limit_is_exact() {
        let data = text(10_000);
        for (max, ok) in [(10_000, true), (9_999, false), (0, false)] {
            let (mut c, mut s) = pair(DeflateParams::default());
            let z = compress(&mut c, &data);
            let mut out = Vec::new();
            let result = s.decompress(&z, true, &mut out, max);
            assert_eq!(result.is_ok(), ok, "max {max}");
            if ok {
                assert_eq!(out, data);
            }
        }
        // An empty message fits in a limit of 0.
        let (mut c, mut s) = pair(DeflateParams::default());
        let z = compress(&mut c, b"");
        let mut out = Vec::new();
        s.decompress(&z, true, &mut out, 0).unwrap();
        // Output already over the limit fails at once.
        let mut out = vec![1, 2, 3];
        assert!(s.decompress(&[0x00], true, &mut out, 2).is_err());
    }

    #[test]
    fn corrupt_data_is_a_protocol_error() {
        for bad in [
            &[0xff, 0xff, 0xff, 0xff][..],   // reserved block type 11
            &[0x07],                         // BTYPE=11 too
            &[0x00, 0x05, 0x00, 0x00, 0x00], // stored block with bad NLEN
        ] {
            let mut d = Deflate::new(DeflateParams::default(), Side::Client, 6);
            let mut out = Vec::new();
            let err = d.decompress(bad, true, &mut out, 1 << 20).unwrap_err();
            assert!(
                matches!(&err, Error::Protocol(ProtocolError::Inflate(_))),
                "{bad:?}: {err:?}"
            );
            assert_eq!(err.close_code(), Some(crate::CloseCode::PROTOCOL_ERROR));
        }
        // A truncated stream that is not final is fine: more may come.
        let (mut c, _) = pair(DeflateParams::default());
        let z = compress(&mut c, &text(5000));
        let mut d = Deflate::new(DeflateParams::default(), Side::Server, 6);
        let mut out = Vec::new();
        d.decompress(&z[..z.len() / 2], false, &mut out, 1 << 20)
            .unwrap();
    }

    #[test]
    fn server_declines_invalid_offers() {
        let server = DeflateConfig::default();
        for bad in [
            params(&[
                ("server_no_context_takeover", None),
                ("server_no_context_takeover", None),
            ]),
            params(&[
                ("client_max_window_bits", None),
                ("client_max_window_bits", Some("10")),
            ]),
            params(&[
                ("server_max_window_bits", Some("10")),
                ("server_max_window_bits", Some("10")),
            ]),
            params(&[("x-unknown", None)]),
            params(&[("Server_No_Context_Takeover", None)]),
            params(&[("server_no_context_takeover", Some("true"))]),
            params(&[("client_no_context_takeover", Some(""))]),
            params(&[("server_max_window_bits", None)]),
            params(&[("server_max_window_bits", Some("7"))]),
            params(&[("server_max_window_bits", Some("16"))]),
            params(&[("server_max_window_bits", Some("09"))]),
            params(&[("server_max_window_bits", Some("+9"))]),
            params(&[("server_max_window_bits", Some(" 9"))]),
            params(&[("server_max_window_bits", Some(""))]),
            params(&[("client_max_window_bits", Some("abc"))]),
            params(&[("client_max_window_bits", Some("1000000000000000000000"))]),
            // Valid, but the server cannot compress with a 256-byte window (§7.1.2.1).
            params(&[("server_max_window_bits", Some("8"))]),
        ] {
            assert_eq!(server.accept_offer(&bad), Ok(None), "{bad:?}");
        }
        // A configured limit lowers 9 no further than the client's 8.
        let limited = DeflateConfig {
            server_max_window_bits: Some(12),
            ..DeflateConfig::default()
        };
        let eight = params(&[("server_max_window_bits", Some("8"))]);
        assert_eq!(limited.accept_offer(&eight), Ok(None));
    }

    #[test]
    fn server_responses() {
        let server = DeflateConfig::default();
        // No parameters: nothing in the response.
        let (p, r) = server.accept_offer(&[]).unwrap().unwrap();
        assert_eq!(p, DeflateParams::default());
        assert!(r.params.is_empty());
        // A client's 8 is echoed, and inflated with a 9-bit window.
        let offer = params(&[("client_max_window_bits", Some("8"))]);
        let (p, r) = server.accept_offer(&offer).unwrap().unwrap();
        assert_eq!(p.client_max_window_bits, 9);
        assert_eq!(r.params, params(&[("client_max_window_bits", Some("8"))]));
        // The client's hint of no context takeover is accepted and echoed.
        let offer = params(&[("client_no_context_takeover", None)]);
        let (p, r) = server.accept_offer(&offer).unwrap().unwrap();
        assert!(p.client_no_context_takeover);
        assert_eq!(r.params, offer);

        // A server that limits the client declines clients that cannot be limited.
        let limiting = DeflateConfig {
            client_max_window_bits: Some(10),
            ..DeflateConfig::default()
        };
        assert_eq!(limiting.accept_offer(&[]), Ok(None));
        let offer = params(&[("client_max_window_bits", None)]);
        let (p, r) = limiting.accept_offer(&offer).unwrap().unwrap();
        assert_eq!(p.client_max_window_bits, 10);
        assert_eq!(r.params, params(&[("client_max_window_bits", Some("10"))]));
        let offer = params(&[("client_max_window_bits", Some("9"))]);
        let (p, _) = limiting.accept_offer(&offer).unwrap().unwrap();
        assert_eq!(p.client_max_window_bits, 9);

        // Everything configured on the server, nothing asked by the client.
        let strict = DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: Some(11),
            client_max_window_bits: Some(12),
            compression_level: 6,
        };
        let offer = params(&[("client_max_window_bits", None)]);
        let (p, r) = strict.accept_offer(&offer).unwrap().unwrap();
        assert_eq!(
            p,
            DeflateParams {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: 11,
                client_max_window_bits: 12,
            }
        );
        assert_eq!(
            r.params,
            params(&[
                ("server_no_context_takeover", None),
                ("client_no_context_takeover", None),
                ("server_max_window_bits", Some("11")),
                ("client_max_window_bits", Some("12")),
            ])
        );
    }

    #[test]
    fn client_rejects_invalid_responses() {
        let default = DeflateConfig::default();
        let asking = DeflateConfig {
            server_no_context_takeover: true,
            server_max_window_bits: Some(10),
            client_max_window_bits: Some(11),
            ..DeflateConfig::default()
        };
        let good = params(&[
            ("server_no_context_takeover", None),
            ("server_max_window_bits", Some("10")),
        ]);
        assert!(asking.accept_response(&good).is_ok());
        let cases: Vec<(&DeflateConfig, Params)> = vec![
            (&default, params(&[("x", None)])),
            (
                &default,
                params(&[("server_no_context_takeover", Some("1"))]),
            ),
            (
                &default,
                params(&[("client_no_context_takeover", Some("1"))]),
            ),
            (
                &default,
                params(&[
                    ("client_no_context_takeover", None),
                    ("client_no_context_takeover", None),
                ]),
            ),
            (&default, params(&[("server_max_window_bits", Some("16"))])),
            (&default, params(&[("server_max_window_bits", Some("010"))])),
            (&default, params(&[("server_max_window_bits", None)])),
            // Without a value only in offers (§7.1.2.2).
            (&default, params(&[("client_max_window_bits", None)])),
            // Cannot compress with 8 bits.
            (&default, params(&[("client_max_window_bits", Some("8"))])),
            // Missing what was asked.
            (&asking, params(&[("server_max_window_bits", Some("10"))])),
            (&asking, params(&[("server_no_context_takeover", None)])),
            // Larger than asked.
            (
                &asking,
                params(&[
                    ("server_no_context_takeover", None),
                    ("server_max_window_bits", Some("11")),
                ]),
            ),
            (
                &asking,
                params(&[
                    ("server_no_context_takeover", None),
                    ("server_max_window_bits", Some("10")),
                    ("client_max_window_bits", Some("12")),
                ]),
            ),
        ];
        for (config, response) in cases {
            let err = config.accept_response(&response).unwrap_err();
            assert!(
                matches!(err, HandshakeError::Negotiation(_)),
                "{response:?}"
            );
        }
    }

    #[test]
    fn client_applies_responses() {
        let default = DeflateConfig::default();
        assert_eq!(default.accept_response(&[]), Ok(DeflateParams::default()));
        // The server may limit itself, reset its context, and limit the client.
        let response = params(&[
            ("server_no_context_takeover", None),
            ("client_no_context_takeover", None),
            ("server_max_window_bits", Some("8")),
            ("client_max_window_bits", Some("9")),
        ]);
        assert_eq!(
            default.accept_response(&response),
            Ok(DeflateParams {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: 9,
                client_max_window_bits: 9,
            })
        );
        // Our own limit and context reset apply even when the response is silent.
        let own = DeflateConfig {
            client_no_context_takeover: true,
            client_max_window_bits: Some(12),
            ..DeflateConfig::default()
        };
        let p = own.accept_response(&[]).unwrap();
        assert!(p.client_no_context_takeover);
        assert_eq!(p.client_max_window_bits, 12);
        let p = own
            .accept_response(&params(&[("client_max_window_bits", Some("10"))]))
            .unwrap();
        assert_eq!(p.client_max_window_bits, 10);
    }
}
