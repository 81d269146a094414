//! Raw WebSocket peers and test data, shared by the behaviour tests of the front ends
//! (event loop, blocking, tokio). A raw peer is a blocking `std::net::TcpStream` that does the
//! opening handshake by hand and reads frames with `sockeye::proto::frame::Frame::decode`, to
//! misbehave where a client would not. Included with `#[path]` by the tests that need it.
// Each including test binary uses a different subset of this module.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use sockeye::proto::frame::{Frame, OpCode};
use sockeye::proto::CloseFrame;

/// Failure guard for a read that should return promptly.
const READ_GUARD: Duration = Duration::from_secs(10);

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads what is there into `buf`; 0 at end of stream or on a reset.
pub fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> usize {
    let mut chunk = [0u8; 64 * 1024];
    stream.set_read_timeout(Some(READ_GUARD)).unwrap();
    loop {
        match stream.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("read timed out")
            }
            Err(_) => return 0,
        }
    }
}

/// The opening handshake request (RFC 6455 §1.3's example key, no extensions offered).
pub fn handshake_request(addr: SocketAddr) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Reads until `buf` holds a whole response head and splits it off (blank line included);
/// what came after it stays in `buf`.
pub fn read_response_head(stream: &mut TcpStream, buf: &mut BytesMut) -> BytesMut {
    let end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        assert!(read_more(stream, buf) > 0, "EOF during the handshake");
    };
    buf.split_to(end)
}

/// Opens a WebSocket connection by hand (no extensions offered) and returns the stream with
/// whatever arrived after the 101 response head.
pub fn raw_handshake(addr: SocketAddr) -> (TcpStream, BytesMut) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(&handshake_request(addr)).unwrap();
    let mut buf = BytesMut::new();
    let head = read_response_head(&mut stream, &mut buf);
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    (stream, buf)
}

/// Reads the next frame; `None` at end of stream (or on a reset).
pub fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Frame> {
    loop {
        if let Some(frame) = Frame::decode(buf, usize::MAX).unwrap() {
            return Some(frame);
        }
        if read_more(stream, buf) == 0 {
            return None;
        }
    }
}

/// Reads frames until a data or close frame, skipping pings and pongs.
pub fn read_data_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Frame {
    loop {
        let frame = read_frame(stream, buf).expect("end of stream before a frame");
        if !matches!(frame.opcode, OpCode::Ping | OpCode::Pong) {
            return frame;
        }
    }
}

/// Reads frames until a close frame, skipping pings and pongs (any other frame fails the
/// test); returns its parsed payload.
pub fn read_close(stream: &mut TcpStream, buf: &mut BytesMut) -> CloseFrame {
    let frame = read_data_frame(stream, buf);
    assert_eq!(frame.opcode, OpCode::Close, "unexpected frame: {frame:?}");
    CloseFrame::parse(&frame.payload)
        .unwrap()
        .expect("close frame without a code")
}

/// Appends a frame masked as a client masks it to `out`.
pub fn masked_into(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    Frame::new(opcode, payload.to_vec()).encode(out, Some([0x37, 0xfa, 0x21, 0x3d]));
}

/// A frame masked as a client masks it.
pub fn masked(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    masked_into(opcode, payload, &mut out);
    out
}

// ----- Test data -----------------------------------------------------------------------------

/// A deterministic xorshift sequence, one value a byte.
fn xorshift(len: usize, seed: u64) -> impl Iterator<Item = u64> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    })
}

/// Deterministic bytes that deflate compresses poorly (lowercase letters, so also text).
pub fn letters(len: usize, seed: u64) -> Vec<u8> {
    xorshift(len, seed).map(|x| b'a' + (x % 26) as u8).collect()
}

/// Bytes that do not compress.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    xorshift(len, seed).map(|x| (x >> 24) as u8).collect()
}

/// `len` bytes of numbered lines of text: compressible, and any corruption shows.
pub fn numbered_lines(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(format!("line {i} of a large message\n").as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// `len` (at least 4) bytes that start with `i` as a big-endian u32.
pub fn numbered(i: usize, len: usize) -> Vec<u8> {
    let mut v = vec![i as u8; len];
    v[..4].copy_from_slice(&(i as u32).to_be_bytes());
    v
}

/// The number `numbered` put in `payload`.
pub fn number_of(payload: &[u8]) -> usize {
    u32::from_be_bytes(payload[..4].try_into().unwrap()) as usize
}
