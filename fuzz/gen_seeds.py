#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets: fuzz/corpus/<target>/seed-*.

Run from anywhere: python3 fuzz/gen_seeds.py. Deterministic; re-running rewrites the same
files. The connection targets read a control byte first (see Control in
crates/sockeye-proto/tests/oracles/mod.rs):

  bits 0-3 chunk size index, bit 4 stream_fragments, bit 5 long time steps,
  bit 6 compression off, bit 7 start from Protocol::open (then one byte picks the deflate
  parameters: 0 = defaults, 1 = no context takeover, 5 = no compression).
"""

import base64
import hashlib
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])  # RFC 6455 §5.7


def accept(key):
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


assert accept(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def frame(opcode, payload, fin=True, rsv1=False, mask=None):
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    m = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def http(lines):
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# RFC 7692 §7.2.3: "Hello" compressed, then again sharing the LZ77 window.
DEFLATED_HELLO = bytes([0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00])
DEFLATED_HELLO_AGAIN = bytes([0xF2, 0x00, 0x11, 0x00, 0x00])
# RFC 7692 §7.2.3.3: "Hello" in a stored (no compression) block.
STORED_HELLO = bytes([0x00, 0x05, 0x00, 0xFA, 0xFF]) + b"Hello" + bytes([0x00])

CHROME_REQUEST = http([
    "GET /chat HTTP/1.1",
    "Host: example.com:8000",
    "Connection: Upgrade",
    "Pragma: no-cache",
    "Cache-Control: no-cache",
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Upgrade: websocket",
    "Origin: http://example.com",
    "Sec-WebSocket-Version: 13",
    "Accept-Encoding: gzip, deflate, br, zstd",
    "Accept-Language: en-US,en;q=0.9",
    "Sec-WebSocket-Key: " + KEY.decode(),
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
    "Sec-WebSocket-Protocol: chat, superchat",
])

FIREFOX_REQUEST = http([
    "GET /socket?room=1 HTTP/1.1",
    "Host: example.com",
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Accept: */*",
    "Accept-Language: en-US,en;q=0.5",
    "Accept-Encoding: gzip, deflate, br, zstd",
    "Sec-WebSocket-Version: 13",
    "Origin: http://example.com",
    "Sec-WebSocket-Extensions: permessage-deflate",
    "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==",
    "Connection: keep-alive, Upgrade",
    "Sec-Fetch-Dest: empty",
    "Sec-Fetch-Mode: websocket",
    "Sec-Fetch-Site: same-origin",
    "Pragma: no-cache",
    "Cache-Control: no-cache",
    "Upgrade: websocket",
])

# RFC 6455 §1.3 example, no extensions, one subprotocol.
RFC_REQUEST = http([
    "GET /chat HTTP/1.1",
    "Host: server.example.com",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: " + KEY.decode(),
    "Origin: http://example.com",
    "Sec-WebSocket-Protocol: chat, superchat",
    "Sec-WebSocket-Version: 13",
])

DEFLATE_PARAMS_REQUEST = http([
    "GET / HTTP/1.1",
    "Host: localhost",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: " + KEY.decode(),
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
    "client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12, "
    "permessage-deflate; client_max_window_bits, x-webkit-deflate-frame",
])

BAD_VERSION_REQUEST = http([
    "GET /chat HTTP/1.1",
    "Host: example.com",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: " + KEY.decode(),
    "Sec-WebSocket-Version: 8",
])

POST_REQUEST = http([
    "POST /chat HTTP/1.1",
    "Host: example.com",
    "Content-Length: 0",
])

RESPONSE_101 = http([
    "HTTP/1.1 101 Switching Protocols",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Accept: " + accept(KEY).decode(),
    "Sec-WebSocket-Protocol: chat",
])

RESPONSE_101_DEFLATE = http([
    "HTTP/1.1 101 Switching Protocols",
    "Server: sockeye/0.1.0",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Accept: " + accept(KEY).decode(),
    "Sec-WebSocket-Extensions: permessage-deflate",
])

RESPONSE_101_DEFLATE_PARAMS = http([
    "HTTP/1.1 101 Switching Protocols",
    "Upgrade: websocket",
    "Connection: upgrade",
    "Sec-WebSocket-Accept: " + accept(KEY).decode(),
    "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
    "server_max_window_bits=12",
    "Sec-WebSocket-Protocol: superchat",
])

RESPONSE_404 = (
    http([
        "HTTP/1.1 404 Not Found",
        "Content-Type: text/plain",
        "Content-Length: 13",
    ])
    + b"404 Not Found"
)

RESPONSE_302 = http([
    "HTTP/1.1 302 Found",
    "Location: wss://example.com/chat",
    "Content-Length: 0",
])

RESPONSE_WRONG_ACCEPT = http([
    "HTTP/1.1 101 Switching Protocols",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Accept: " + accept(b"x3JJHMbDL1EzLkh9GBhXDw==").decode(),
])


def masked(opcode, payload, **kw):
    return frame(opcode, payload, mask=MASK, **kw)


def client_frames():
    """What a client sends after its request: masked frames."""
    return (
        masked(0x1, b"Hello")
        + masked(0x9, b"ping!")
        + masked(0x2, bytes(range(200)))
        + masked(0x1, "κόσμε".encode()[:5], fin=False)
        + masked(0x0, "κόσμε".encode()[5:])
        + masked(0x8, struct.pack(">H", 1000) + b"bye")
    )


def client_compressed_frames():
    return (
        masked(0x1, DEFLATED_HELLO, rsv1=True)
        + masked(0x1, DEFLATED_HELLO_AGAIN, rsv1=True)
        + masked(0x1, STORED_HELLO, rsv1=True)
        + masked(0x1, DEFLATED_HELLO[:3], rsv1=True, fin=False)
        + masked(0x0, DEFLATED_HELLO[3:])
        + masked(0xA, b"")
        + masked(0x8, struct.pack(">H", 1001))
    )


def server_frames():
    """What a server sends: unmasked frames."""
    return (
        frame(0x1, b"Hello")
        + frame(0x9, b"")
        + frame(0x1, b"Hel", fin=False)
        + frame(0x0, b"lo")
        + frame(0x2, b"\xab" * 300)
        + frame(0x8, struct.pack(">H", 1000))
    )


def server_compressed_frames():
    return (
        frame(0x1, DEFLATED_HELLO, rsv1=True)
        + frame(0x1, DEFLATED_HELLO_AGAIN, rsv1=True)
        + frame(0x2, STORED_HELLO, rsv1=True)
        + frame(0x1, DEFLATED_HELLO[:2], rsv1=True, fin=False)
        + frame(0x0, DEFLATED_HELLO[2:])
        + frame(0x8, b"")
    )


def open_control(chunk=15, stream=False, long_steps=False):
    return bytes([0x80 | chunk | (0x10 if stream else 0) | (0x20 if long_steps else 0)])


SEEDS = {
    "frame_decode": {
        # RFC 6455 §5.7, in order.
        "rfc-unmasked-text": frame(0x1, b"Hello"),
        "rfc-masked-text": masked(0x1, b"Hello"),
        "rfc-fragmented-text": frame(0x1, b"Hel", fin=False) + frame(0x0, b"lo"),
        "rfc-ping-masked-pong": frame(0x9, b"Hello") + masked(0xA, b"Hello"),
        "rfc-256-binary": frame(0x2, bytes([0xAB]) * 256),
        # 64 KiB declared, over the oracle's max_frame_size.
        "rfc-64k-binary-header": bytes([0x82, 0x7F]) + struct.pack(">Q", 65536) + b"\xcd" * 16,
        "close-with-reason": masked(0x8, struct.pack(">H", 1000) + b"normal closure"),
        "compressed-hello": frame(0x1, DEFLATED_HELLO, rsv1=True),
        "mixed": client_frames() + client_compressed_frames(),
        "long-length-form": bytes([0x82, 0x7F]) + struct.pack(">Q", 3) + b"abc",
    },
    "handshake_request": {
        "chrome": CHROME_REQUEST,
        "firefox": FIREFOX_REQUEST,
        "rfc": RFC_REQUEST,
        "deflate-params": DEFLATE_PARAMS_REQUEST,
        "bad-version": BAD_VERSION_REQUEST,
        "post": POST_REQUEST,
        "pipelined-frames": CHROME_REQUEST + client_frames(),
    },
    "handshake_response": {
        "101": RESPONSE_101,
        "101-deflate": RESPONSE_101_DEFLATE,
        "101-deflate-params": RESPONSE_101_DEFLATE_PARAMS,
        "404": RESPONSE_404,
        "302": RESPONSE_302,
        "wrong-accept": RESPONSE_WRONG_ACCEPT,
        "101-then-frames": RESPONSE_101 + server_frames(),
    },
    "server_connection": {
        # Whole input at once, compression on.
        "chrome-then-frames": bytes([0x0F]) + CHROME_REQUEST + client_frames(),
        "chrome-then-compressed": bytes([0x0F]) + CHROME_REQUEST + client_compressed_frames(),
        # Byte by byte, compression off.
        "rfc-bytewise": bytes([0x40]) + RFC_REQUEST + client_frames(),
        # Chunks of 7, streaming fragments, long time steps (timers fire).
        "firefox-stream-timers": bytes([0x34]) + FIREFOX_REQUEST + client_compressed_frames(),
        "bad-version": bytes([0x0F]) + BAD_VERSION_REQUEST,
        # Protocol::open with default deflate parameters.
        "open-deflate": open_control() + bytes([0]) + client_compressed_frames(),
        "open-no-context-takeover-stream": open_control(3, stream=True) + bytes([1])
        + client_compressed_frames(),
        "open-plain": open_control(9) + bytes([5]) + client_frames(),
    },
    "client_connection": {
        "101-then-frames": bytes([0x0F]) + RESPONSE_101 + server_frames(),
        "101-deflate-then-compressed": bytes([0x0F]) + RESPONSE_101_DEFLATE
        + server_compressed_frames(),
        "101-deflate-params-bytewise": bytes([0x00]) + RESPONSE_101_DEFLATE_PARAMS
        + server_compressed_frames(),
        "404": bytes([0x0F]) + RESPONSE_404,
        "302-stream-timers": bytes([0x3F]) + RESPONSE_302,
        "open-deflate": open_control() + bytes([0]) + server_compressed_frames(),
        "open-no-context-takeover": open_control(4) + bytes([1]) + server_compressed_frames(),
        "open-plain-stream": open_control(2, stream=True, long_steps=True) + bytes([5])
        + server_frames(),
    },
}


def main():
    for target, seeds in SEEDS.items():
        directory = os.path.join(ROOT, target)
        os.makedirs(directory, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(directory, "seed-" + name), "wb") as f:
                f.write(data)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
