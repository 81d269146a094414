//! Frames: the wire format of RFC 6455 §5.2.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! ```
//!
//! The header parser is bounded: it looks at no more than 14 bytes, and the declared length is
//! checked against `max_frame_size` before a single payload byte is buffered.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{Error, Limit, LimitExceeded, ProtocolError};
use crate::mask::apply_mask;

/// A frame's opcode (RFC 6455 §5.2). Reserved opcodes are rejected when parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: the first frame of a text message.
    Text,
    /// 0x2: the first frame of a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// The opcode for these four bits, or `None` for a reserved one.
    pub fn from_u8(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// The four bits of this opcode.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Whether this is a control opcode (close, ping, pong; RFC 6455 §5.5).
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }

    /// The name used in logs: `TEXT`, `BINARY`, `CONT`, `CLOSE`, `PING`, `PONG`.
    pub fn name(self) -> &'static str {
        match self {
            OpCode::Continuation => "CONT",
            OpCode::Text => "TEXT",
            OpCode::Binary => "BINARY",
            OpCode::Close => "CLOSE",
            OpCode::Ping => "PING",
            OpCode::Pong => "PONG",
        }
    }
}

/// The longest header: 2 bytes, 8 of extended length, 4 of mask.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest control frame payload (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: the last frame of a message.
    pub fin: bool,
    /// RSV1: "compressed" under permessage-deflate (RFC 7692 §6).
    pub rsv1: bool,
    /// RSV2: no extension of ours defines it.
    pub rsv2: bool,
    /// RSV3: no extension of ours defines it.
    pub rsv3: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, if the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// The payload length.
    pub payload_len: u64,
    /// The length of the header itself, 2 to 14 bytes.
    pub header_len: usize,
}

impl FrameHeader {
    /// Parses a header from the start of `buf`.
    ///
    /// Returns `Ok(None)` if `buf` does not hold the whole header yet. Checks everything a
    /// header alone can tell: reserved opcodes, control frame rules (§5.5), the high bit of a
    /// 64-bit length (§5.2) and `max_frame_size`. Masking and reserved bits depend on the side
    /// and the negotiated extensions; the connection checks those.
    pub fn parse(buf: &[u8], max_frame_size: usize) -> Result<Option<FrameHeader>, Error> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let b0 = buf[0];
        let b1 = buf[1];
        let opcode = OpCode::from_u8(b0 & 0x0f).ok_or(ProtocolError::UnknownOpcode(b0 & 0x0f))?;
        let fin = b0 & 0x80 != 0;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7f;
        if opcode.is_control() {
            // RFC 6455 §5.5: "All control frames MUST have a payload length of 125 bytes or
            // less and MUST NOT be fragmented."
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame.into());
            }
            if len7 > 125 {
                return Err(ProtocolError::ControlFrameTooLong.into());
            }
        }
        let (payload_len, mut pos) = match len7 {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(b);
                // RFC 6455 §5.2: "the most significant bit MUST be 0".
                if len >> 63 != 0 {
                    return Err(ProtocolError::InvalidLength.into());
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        if payload_len > max_frame_size as u64 {
            return Err(LimitExceeded {
                limit: Limit::FrameSize,
                max: max_frame_size,
            }
            .into());
        }
        let mask = if masked {
            if buf.len() < pos + 4 {
                return Ok(None);
            }
            let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
            pos += 4;
            Some(m)
        } else {
            None
        };
        Ok(Some(FrameHeader {
            fin,
            rsv1: b0 & 0x40 != 0,
            rsv2: b0 & 0x20 != 0,
            rsv3: b0 & 0x10 != 0,
            opcode,
            mask,
            payload_len,
            header_len: pos,
        }))
    }

    /// Appends the header of a frame to `out`. Writes the shortest length encoding.
    pub fn encode(
        out: &mut Vec<u8>,
        fin: bool,
        rsv1: bool,
        opcode: OpCode,
        mask: Option<[u8; 4]>,
        payload_len: usize,
    ) {
        let b0 = (u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode.as_u8();
        let m = if mask.is_some() { 0x80 } else { 0 };
        if payload_len < 126 {
            out.extend_from_slice(&[b0, m | payload_len as u8]);
        } else if payload_len <= u16::MAX as usize {
            out.extend_from_slice(&[b0, m | 126]);
            out.extend_from_slice(&(payload_len as u16).to_be_bytes());
        } else {
            out.extend_from_slice(&[b0, m | 127]);
            out.extend_from_slice(&(payload_len as u64).to_be_bytes());
        }
        if let Some(key) = mask {
            out.extend_from_slice(&key);
        }
    }
}

/// A whole frame, with its payload unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// RSV1 bit.
    pub rsv1: bool,
    /// RSV2 bit.
    pub rsv2: bool,
    /// RSV3 bit.
    pub rsv3: bool,
    /// Opcode.
    pub opcode: OpCode,
    /// Payload, unmasked.
    pub payload: Bytes,
}

impl Frame {
    /// A final frame with no reserved bits set.
    pub fn new(opcode: OpCode, payload: impl Into<Bytes>) -> Frame {
        Frame {
            fin: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            payload: payload.into(),
        }
    }

    /// Takes one frame off the front of `buf`, unmasking its payload in place.
    ///
    /// Returns `Ok(None)` (and leaves `buf` alone) while the frame is incomplete. The payload
    /// is a view of `buf`'s memory: no copy. `max_frame_size` is checked against the declared
    /// length before waiting for the payload, so a peer cannot make us buffer more.
    pub fn decode(buf: &mut BytesMut, max_frame_size: usize) -> Result<Option<Frame>, Error> {
        let Some(h) = FrameHeader::parse(buf, max_frame_size)? else {
            return Ok(None);
        };
        // payload_len <= max_frame_size, a usize, so the cast is lossless.
        let total = h.header_len + h.payload_len as usize;
        if buf.len() < total {
            return Ok(None);
        }
        buf.advance(h.header_len);
        let mut payload = buf.split_to(h.payload_len as usize);
        if let Some(key) = h.mask {
            apply_mask(&mut payload, key, 0);
        }
        Ok(Some(Frame {
            fin: h.fin,
            rsv1: h.rsv1,
            rsv2: h.rsv2,
            rsv3: h.rsv3,
            opcode: h.opcode,
            payload: payload.freeze(),
        }))
    }

    /// Appends this frame to `out`, masked with `mask` if given.
    pub fn encode(&self, out: &mut Vec<u8>, mask: Option<[u8; 4]>) {
        let start = out.len();
        FrameHeader::encode(
            out,
            self.fin,
            self.rsv1,
            self.opcode,
            mask,
            self.payload.len(),
        );
        if self.rsv2 || self.rsv3 {
            out[start] |= (u8::from(self.rsv2) << 5) | (u8::from(self.rsv3) << 4);
        }
        encode_payload(out, &self.payload, mask);
    }
}

/// Appends `payload` to `out`, masking the copy if a key is given (the source is not touched).
pub fn encode_payload(out: &mut Vec<u8>, payload: &[u8], mask: Option<[u8; 4]>) {
    let at = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[at..], key, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, Error> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(f) = Frame::decode(&mut buf, 1 << 20)? {
            frames.push(f);
        }
        assert!(buf.is_empty(), "leftover bytes");
        Ok(frames)
    }

    // RFC 6455 §5.7, example by example.
    #[test]
    fn rfc_5_7_single_frame_unmasked_text() {
        let f = decode_all(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]).unwrap();
        assert_eq!(f, vec![Frame::new(OpCode::Text, &b"Hello"[..])]);
    }

    #[test]
    fn rfc_5_7_single_frame_masked_text() {
        let wire = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let f = decode_all(&wire).unwrap();
        assert_eq!(f, vec![Frame::new(OpCode::Text, &b"Hello"[..])]);
        let mut out = Vec::new();
        f[0].encode(&mut out, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(out, wire);
    }

    #[test]
    fn rfc_5_7_fragmented_unmasked_text() {
        let f = decode_all(&[0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f]).unwrap();
        assert_eq!(f.len(), 2);
        assert!(!f[0].fin && f[0].opcode == OpCode::Text && f[0].payload == "Hel");
        assert!(f[1].fin && f[1].opcode == OpCode::Continuation && f[1].payload == "lo");
    }

    #[test]
    fn rfc_5_7_ping_and_masked_pong() {
        let f = decode_all(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]).unwrap();
        assert_eq!(f, vec![Frame::new(OpCode::Ping, &b"Hello"[..])]);
        let wire = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let f = decode_all(&wire).unwrap();
        assert_eq!(f, vec![Frame::new(OpCode::Pong, &b"Hello"[..])]);
    }

    #[test]
    fn rfc_5_7_256_bytes_and_64_kib_binary() {
        let mut wire = vec![0x82, 0x7e, 0x01, 0x00];
        wire.extend(std::iter::repeat_n(0xab, 256));
        let f = decode_all(&wire).unwrap();
        assert_eq!(f[0].payload.len(), 256);
        let mut out = Vec::new();
        f[0].encode(&mut out, None);
        assert_eq!(out, wire);

        let mut wire = vec![0x82, 0x7f, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00];
        wire.extend(std::iter::repeat_n(0xcd, 65536));
        let f = decode_all(&wire).unwrap();
        assert_eq!(f[0].payload.len(), 65536);
        let mut out = Vec::new();
        f[0].encode(&mut out, None);
        assert_eq!(out, wire);
    }

    #[test]
    fn length_encodings_at_their_boundaries() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let mut out = Vec::new();
            FrameHeader::encode(&mut out, true, false, OpCode::Binary, None, len);
            assert_eq!(out.len(), header, "{len}");
            let h = FrameHeader::parse(&out, usize::MAX).unwrap().unwrap();
            assert_eq!(h.payload_len, len as u64);
            assert_eq!(h.header_len, header);
        }
    }

    #[test]
    fn partial_headers_wait_for_more() {
        let mut out = Vec::new();
        FrameHeader::encode(
            &mut out,
            true,
            false,
            OpCode::Binary,
            Some([1, 2, 3, 4]),
            70000,
        );
        for cut in 0..out.len() {
            assert_eq!(
                FrameHeader::parse(&out[..cut], usize::MAX),
                Ok(None),
                "{cut}"
            );
        }
    }

    #[test]
    fn reserved_opcodes_rejected() {
        for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            assert_eq!(
                FrameHeader::parse(&[0x80 | op, 0], 100),
                Err(ProtocolError::UnknownOpcode(op).into())
            );
        }
    }

    #[test]
    fn control_frame_rules() {
        // Ping without FIN.
        assert_eq!(
            FrameHeader::parse(&[0x09, 0], 100),
            Err(ProtocolError::FragmentedControlFrame.into())
        );
        // Ping with a 126-byte payload (16-bit length form).
        assert_eq!(
            FrameHeader::parse(&[0x89, 126, 0, 126], 1000),
            Err(ProtocolError::ControlFrameTooLong.into())
        );
        // 125 is fine.
        assert!(FrameHeader::parse(&[0x89, 125], 1000).unwrap().is_some());
    }

    #[test]
    fn high_bit_of_64_bit_length_rejected() {
        let wire = [0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            FrameHeader::parse(&wire, usize::MAX),
            Err(ProtocolError::InvalidLength.into())
        );
    }

    #[test]
    fn max_frame_size_checked_before_payload_arrives() {
        // Declares 1 GiB and sends only the header: rejected at once.
        let wire = [0x82, 127, 0, 0, 0, 0, 0x40, 0, 0, 0];
        let err = FrameHeader::parse(&wire, 1 << 20).unwrap_err();
        assert_eq!(
            err,
            Error::LimitExceeded(LimitExceeded {
                limit: Limit::FrameSize,
                max: 1 << 20
            })
        );
        // Exactly the limit is allowed.
        assert!(FrameHeader::parse(&[0x82, 126, 0x04, 0x00], 1024)
            .unwrap()
            .is_some());
        assert!(FrameHeader::parse(&[0x82, 126, 0x04, 0x01], 1024).is_err());
    }

    fn any_opcode() -> impl Strategy<Value = OpCode> {
        prop_oneof![
            Just(OpCode::Continuation),
            Just(OpCode::Text),
            Just(OpCode::Binary),
            Just(OpCode::Close),
            Just(OpCode::Ping),
            Just(OpCode::Pong),
        ]
    }

    proptest! {
        #[test]
        fn encode_then_decode_gives_back_the_frame(
            opcode in any_opcode(),
            fin in any::<bool>(),
            rsv in any::<[bool; 3]>(),
            payload in proptest::collection::vec(any::<u8>(), 0..70000),
            mask in proptest::option::of(any::<[u8; 4]>()),
        ) {
            let control = opcode.is_control();
            let payload = if control { payload[..payload.len().min(125)].to_vec() } else { payload };
            let frame = Frame {
                fin: fin || control, rsv1: rsv[0], rsv2: rsv[1], rsv3: rsv[2],
                opcode, payload: Bytes::from(payload),
            };
            let mut out = Vec::new();
            frame.encode(&mut out, mask);
            let mut buf = BytesMut::from(&out[..]);
            let back = Frame::decode(&mut buf, usize::MAX).unwrap().unwrap();
            prop_assert!(buf.is_empty());
            prop_assert_eq!(back, frame);
        }

        #[test]
        fn decode_then_encode_gives_back_the_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&bytes[..]);
            if let Ok(Some(frame)) = Frame::decode(&mut buf, usize::MAX) {
                let used = bytes.len() - buf.len();
                let h = FrameHeader::parse(&bytes, usize::MAX).unwrap().unwrap();
                let mut out = Vec::new();
                frame.encode(&mut out, h.mask);
                // Our encoder writes minimal lengths; compare when the input did too.
                let minimal = match h.payload_len { 0..=125 => 2, 126..=65535 => 4, _ => 10 }
                    + if h.mask.is_some() { 4 } else { 0 };
                if minimal == h.header_len {
                    prop_assert_eq!(&out[..], &bytes[..used]);
                }
            }
        }
    }
}
