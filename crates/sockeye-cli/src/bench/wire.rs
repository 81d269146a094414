//! What goes on the wire: the payloads (with their sequence numbers), masked frames, the
//! opening handshake, and the receive-side frame scanner that checks what comes back.
//!
//! The scanner never copies an uncompressed payload: it parses frame headers with
//! [`FrameHeader::parse`] and compares payload bytes where they lie in the read buffer
//! against the payload expected, so a frame may span any number of reads.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use sockeye::proto::extensions::deflate::{Deflate, DeflateParams};
use sockeye::proto::frame::{encode_payload, FrameHeader, OpCode};
use sockeye::proto::{handshake, Config, Side};

/// Bytes of the sequence number at the start of each payload (8 hex digits: valid UTF-8).
pub(crate) const SEQ_LEN: usize = 8;

/// Compression level of our side (0..=9). The server's level is its own business; ours is
/// low so that the generator stays cheaper than the server it measures.
pub(crate) const OUR_DEFLATE_LEVEL: u32 = 1;

/// The 8 hex digits of `seq`.
pub(crate) fn hex8(seq: u32) -> [u8; SEQ_LEN] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0; SEQ_LEN];
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((seq >> (28 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// The payload every message carries, but for its first [`SEQ_LEN`] bytes (the sequence
/// number, when the message is that long). Text: JSON-like records; binary: pseudo-random
/// bytes.
pub(crate) fn template(size: usize, text: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 128);
    out.extend_from_slice(&[b'0'; SEQ_LEN]);
    if text {
        let mut i = 0u32;
        while out.len() < size {
            let record = format!(
                "{{\"id\":{i},\"user\":\"user-{}\",\"item\":\"widget-{}\",\"price\":{}.{:02},\"tags\":[\"a\",\"b\"]}},",
                i * 7919 % 1000,
                i * 104_729 % 97,
                i * 31 % 500,
                i % 100
            );
            out.extend_from_slice(record.as_bytes());
            i += 1;
        }
    } else {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        while out.len() < size {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.truncate(size);
    out
}

/// What every connection of a run shares: the message to send and how to check it.
pub(crate) struct Payload {
    pub(crate) opcode: OpCode,
    pub(crate) template: Vec<u8>,
    /// Largest frame accepted from the server.
    pub(crate) max_frame: usize,
}

impl Payload {
    pub(crate) fn new(size: usize, text: bool) -> Payload {
        Payload {
            opcode: if text { OpCode::Text } else { OpCode::Binary },
            template: template(size, text),
            max_frame: size.saturating_mul(2).max(4096) + 1024,
        }
    }

    pub(crate) fn size(&self) -> usize {
        self.template.len()
    }

    /// Writes message `seq` (unmasked) into `out`.
    pub(crate) fn message(&self, seq: u32, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.template);
        let n = SEQ_LEN.min(out.len());
        out[..n].copy_from_slice(&hex8(seq)[..n]);
    }
}

/// A small, fast PRNG for masking keys (xorshift64*, seeded from the standard library's
/// per-process random hasher keys).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new() -> Rng {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        Rng(h.finish() | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn key(&mut self) -> [u8; 4] {
        (self.next() as u32).to_ne_bytes()
    }
}

/// Appends a whole masked frame; returns the offset of its payload in `out`.
pub(crate) fn push_frame(
    out: &mut Vec<u8>,
    opcode: OpCode,
    rsv1: bool,
    key: [u8; 4],
    payload: &[u8],
) -> usize {
    FrameHeader::encode(out, true, rsv1, opcode, Some(key), payload.len());
    let at = out.len();
    encode_payload(out, payload, Some(key));
    at
}

/// A masked close frame, code 1000.
pub(crate) fn close_frame(key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    push_frame(&mut out, OpCode::Close, false, key, &1000u16.to_be_bytes());
    out
}

/// The client configuration: compression offered or not, no keepalive.
pub(crate) fn client_config(compression: bool) -> Arc<Config> {
    let mut config = Config::new();
    if !compression {
        config.compression(None);
    }
    config.ping_interval(None);
    Arc::new(config)
}

/// The address to connect to, from a `ws://` URI.
pub(crate) fn resolve(uri: &http::Uri) -> Result<SocketAddr, String> {
    if uri.scheme_str() != Some("ws") {
        return Err(format!("{uri}: only ws:// URIs are supported"));
    }
    let host = uri.host().ok_or_else(|| format!("{uri}: no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))
}

/// A fresh handshake request: the bytes to send and the key to check the answer with.
pub(crate) fn request(
    uri: &http::Uri,
    config: &Config,
    rng: &mut Rng,
) -> Result<(Vec<u8>, String), String> {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&rng.next().to_ne_bytes());
    raw[8..].copy_from_slice(&rng.next().to_ne_bytes());
    let key = handshake::generate_key(raw);
    let req = handshake::build_request(uri, &key, config).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(256);
    handshake::write_request(&req, &mut out);
    Ok((out, key))
}

/// Parses and checks the response at the start of `buf`: `Ok(None)` while incomplete, else
/// the negotiated compression and the length of the head.
pub(crate) fn response(
    buf: &[u8],
    key: &str,
    config: &Config,
) -> Result<Option<(Option<DeflateParams>, usize)>, String> {
    let Some((resp, n)) = handshake::parse_response(buf, config).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let accept = handshake::check_response(&resp, key, &[], config).map_err(|e| e.to_string())?;
    Ok(Some((accept.deflate, n)))
}

/// An open connection, after a blocking handshake: the socket (non-blocking from now on),
/// the codec if permessage-deflate was negotiated, and any bytes read past the response.
pub(crate) struct Opened {
    pub(crate) sock: TcpStream,
    pub(crate) deflate: Option<DeflateParams>,
    pub(crate) extra: Vec<u8>,
}

/// Connects and performs the opening handshake, blocking (used before the run starts).
pub(crate) fn open(
    addr: SocketAddr,
    uri: &http::Uri,
    config: &Config,
    rng: &mut Rng,
) -> Result<Opened, String> {
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let (req, key) = request(uri, config, rng)?;
    sock.write_all(&req)
        .map_err(|e| format!("handshake: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = sock
            .read(&mut chunk)
            .map_err(|e| format!("handshake: {e}"))?;
        if n == 0 {
            return Err("handshake: the server closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((deflate, head)) = response(&buf, &key, config)? {
            sock.set_read_timeout(None).map_err(|e| e.to_string())?;
            sock.set_nonblocking(true).map_err(|e| e.to_string())?;
            return Ok(Opened {
                sock,
                deflate,
                extra: buf.split_off(head),
            });
        }
    }
}

/// The per-connection codec of permessage-deflate, on the client side.
pub(crate) fn codec(params: Option<DeflateParams>) -> Option<Box<Deflate>> {
    params.map(|p| Box::new(Deflate::new(p, Side::Client, OUR_DEFLATE_LEVEL)))
}

/// What one pass of the scanner found.
#[derive(Default)]
pub(crate) struct Scan {
    /// Data messages completed (good or bad), in sequence order.
    pub(crate) messages: u32,
    /// Of those, the ones whose payload was not the one expected.
    pub(crate) bad: u32,
    /// The server's close frame arrived.
    pub(crate) close: bool,
    /// Pongs to send (payloads of pings received).
    pub(crate) pongs: Vec<Vec<u8>>,
}

/// The receive side of one connection: where it is in the current frame and message.
pub(crate) struct Rx {
    /// Payload bytes left in the current data frame.
    frame_left: u64,
    frame_fin: bool,
    in_message: bool,
    /// Payload bytes of the current message seen so far.
    msg_off: usize,
    msg_compressed: bool,
    msg_bad: bool,
    /// Compressed payload of the current message.
    comp: Vec<u8>,
    expect_seq: [u8; SEQ_LEN],
    /// The sequence number of the next message.
    pub(crate) next_seq: u32,
    /// Only parse (the publisher of a broadcast run does not check what it may receive).
    pub(crate) discard: bool,
    /// Unconsumed bytes (a partial header or control frame) kept between reads.
    pub(crate) carry: Vec<u8>,
}

impl Rx {
    pub(crate) fn new() -> Rx {
        Rx {
            frame_left: 0,
            frame_fin: false,
            in_message: false,
            msg_off: 0,
            msg_compressed: false,
            msg_bad: false,
            comp: Vec::new(),
            expect_seq: hex8(0),
            next_seq: 0,
            discard: false,
            carry: Vec::new(),
        }
    }

    /// Whether `chunk`, at offset `off` of the message, is what was expected.
    fn matches(&self, p: &Payload, chunk: &[u8], off: usize) -> bool {
        let t = &p.template;
        if off + chunk.len() > t.len() {
            return false;
        }
        let mut chunk = chunk;
        let mut off = off;
        if off < SEQ_LEN {
            let n = (SEQ_LEN - off).min(chunk.len());
            if chunk[..n] != self.expect_seq[off..off + n] {
                return false;
            }
            chunk = &chunk[n..];
            off += n;
        }
        chunk == &t[off..off + chunk.len()]
    }

    fn finish_message(
        &mut self,
        p: &Payload,
        deflate: Option<&mut Deflate>,
        inflated: &mut Vec<u8>,
        scan: &mut Scan,
    ) -> Result<(), String> {
        let mut ok = !self.msg_bad && self.msg_off == p.size();
        if self.msg_compressed {
            let d = deflate.ok_or("compressed frame without permessage-deflate")?;
            inflated.clear();
            d.decompress(&self.comp, true, inflated, p.max_frame)
                .map_err(|e| format!("inflate: {e}"))?;
            self.comp.clear();
            ok = inflated.len() == p.size() && self.matches(p, inflated, 0);
        }
        self.in_message = false;
        if !self.discard {
            scan.messages += 1;
            scan.bad += u32::from(!ok);
            self.next_seq = self.next_seq.wrapping_add(1);
            self.expect_seq = hex8(self.next_seq);
        }
        Ok(())
    }

    /// Scans `data`; returns how many bytes were consumed (the rest is an incomplete header
    /// or control frame, to be presented again with more data). Errors are protocol
    /// violations: the connection is done.
    pub(crate) fn scan(
        &mut self,
        data: &[u8],
        p: &Payload,
        mut deflate: Option<&mut Deflate>,
        inflated: &mut Vec<u8>,
        scan: &mut Scan,
    ) -> Result<usize, String> {
        let mut pos = 0;
        loop {
            if self.frame_left > 0 {
                let n = (self.frame_left.min((data.len() - pos) as u64)) as usize;
                if n == 0 {
                    return Ok(pos);
                }
                let chunk = &data[pos..pos + n];
                if self.msg_compressed {
                    self.comp.extend_from_slice(chunk);
                } else if !self.discard && !self.msg_bad && !self.matches(p, chunk, self.msg_off) {
                    self.msg_bad = true;
                }
                self.msg_off += n;
                pos += n;
                self.frame_left -= n as u64;
                if self.frame_left == 0 && self.frame_fin {
                    self.finish_message(p, deflate.as_deref_mut(), inflated, scan)?;
                }
                continue;
            }
            let rest = &data[pos..];
            let Some(h) = FrameHeader::parse(rest, p.max_frame).map_err(|e| e.to_string())? else {
                return Ok(pos);
            };
            if h.mask.is_some() {
                return Err("the server sent a masked frame".into());
            }
            if h.rsv2 || h.rsv3 {
                return Err("reserved bits set".into());
            }
            if h.opcode.is_control() {
                let total = h.header_len + h.payload_len as usize;
                if rest.len() < total {
                    return Ok(pos);
                }
                let payload = &rest[h.header_len..total];
                match h.opcode {
                    OpCode::Ping => scan.pongs.push(payload.to_vec()),
                    OpCode::Close => scan.close = true,
                    _ => {}
                }
                pos += total;
                continue;
            }
            match (h.opcode, self.in_message) {
                (OpCode::Continuation, true) if !h.rsv1 => {}
                (OpCode::Text | OpCode::Binary, false) => {
                    if h.rsv1 && deflate.is_none() {
                        return Err("RSV1 set without permessage-deflate".into());
                    }
                    self.in_message = true;
                    self.msg_off = 0;
                    self.msg_compressed = h.rsv1;
                    self.msg_bad = !self.discard && h.opcode != p.opcode;
                    self.comp.clear();
                }
                (op, _) => return Err(format!("unexpected {} frame", op.name())),
            }
            pos += h.header_len;
            self.frame_left = h.payload_len;
            self.frame_fin = h.fin;
            if h.payload_len == 0 && h.fin {
                self.finish_message(p, deflate.as_deref_mut(), inflated, scan)?;
            }
        }
    }
}
