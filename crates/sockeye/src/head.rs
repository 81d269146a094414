//! The handshake's request and response, kept for [`Connection::request`] and
//! [`Connection::response`](crate::Connection::response) at a fraction of their parsed size.
//!
//! A parsed `http` head costs 1 to 2 KB per connection (a header map with room to grow, one
//! allocation per header value), several times what an idle connection needs otherwise. So
//! each head is kept in a compact encoding (below) and decoded, once, the first time the
//! application asks for it. A handler that never looks at the request pays nothing more.
//!
//! **The encoding** is HPACK's static table without its dynamic parts: the header names and
//! values every WebSocket handshake carries (`upgrade: websocket`, `sec-websocket-version:
//! 13`, the usual extension offers...) are one byte each, anything else is a length and its
//! bytes. A browser's request of 498 bytes keeps 218 (unit test below). Nothing is lost: names are lowercase in `http` already, values are kept
//! byte for byte, repeated headers in their order.

use std::sync::{Arc, OnceLock};

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};

use crate::proto::{handshake, Config};

/// A request or response head: its encoding, and the decoded head once asked for.
pub(crate) struct Head<T> {
    raw: Box<[u8]>,
    parsed: OnceLock<Box<Parsed<T>>>,
}

/// A decoded head, and (for a server's request) the `101` built again from it when the
/// application asks for the response (the event loops keep no response per connection).
struct Parsed<T> {
    value: T,
    answer: OnceLock<Response<()>>,
}

impl<T> Parsed<T> {
    fn new(value: T) -> Box<Self> {
        Box::new(Parsed {
            value,
            answer: OnceLock::new(),
        })
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Head<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Head")
            .field("bytes", &self.raw.len())
            .field("parsed", &self.parsed.get().is_some())
            .finish()
    }
}

/// Header names of one byte: the handshake's own, and the ones browsers and proxies send.
/// Append only at the end (an index is the encoding); at most 250 entries.
const NAMES: &[&str] = &[
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "user-agent",
    "origin",
    "cookie",
    "authorization",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "pragma",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-real-ip",
    "forwarded",
    "server",
    "date",
    "content-length",
    "content-type",
    "set-cookie",
    "referer",
    "accept",
];

/// Header values of one byte (compared byte for byte).
const VALUES: &[&[u8]] = &[
    b"websocket",
    b"Upgrade",
    b"upgrade",
    b"keep-alive, Upgrade",
    b"13",
    b"permessage-deflate; client_max_window_bits",
    b"permessage-deflate",
    b"no-cache",
    b"gzip, deflate, br, zstd",
    b"gzip, deflate, br",
    b"gzip, deflate",
    b"http",
    b"https",
    b"*/*",
];

/// A name or value written out: its length and bytes follow.
const LITERAL: u8 = 0xFF;
/// After the last header.
const END: u8 = 0xFE;

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    // LEB128: seven bits a byte, low bits first.
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        match NAMES.iter().position(|n| *n == name.as_str()) {
            Some(i) => out.push(i as u8),
            None => {
                out.push(LITERAL);
                put_bytes(out, name.as_str().as_bytes());
            }
        }
        match VALUES.iter().position(|v| *v == value.as_bytes()) {
            Some(i) => out.push(i as u8),
            None => {
                out.push(LITERAL);
                put_bytes(out, value.as_bytes());
            }
        }
    }
    out.push(END);
}

/// Reads what the `put_` functions wrote. `None` only for input they did not write.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn len(&mut self) -> Option<usize> {
        let mut n = 0usize;
        for shift in (0..usize::BITS).step_by(7) {
            let b = self.byte()?;
            n |= usize::from(b & 0x7F).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.len()?;
        if n > self.0.len() {
            return None;
        }
        let (bytes, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(bytes)
    }

    fn headers(&mut self) -> Option<HeaderMap> {
        let mut headers = HeaderMap::new();
        loop {
            let name = match self.byte()? {
                END => return Some(headers),
                LITERAL => HeaderName::from_bytes(self.bytes()?).ok()?,
                i => HeaderName::from_static(NAMES.get(usize::from(i))?),
            };
            let value = match self.byte()? {
                LITERAL => HeaderValue::from_bytes(self.bytes()?).ok()?,
                i => {
                    HeaderValue::from_static(std::str::from_utf8(VALUES.get(usize::from(i))?).ok()?)
                }
            };
            headers.append(name, value);
        }
    }
}

/// Runs `encode` on this thread's scratch buffer and returns what it wrote in an
/// allocation of exactly that size. (A `Vec` built in place and shrunk left the rest of its
/// allocation as a free chunk per connection, which later allocations of other sizes could
/// not use: 170 B of RSS per idle connection on the event loops, once an unrelated change
/// made the handler's future a few bytes too big for those chunks.)
fn encoded(encode: impl FnOnce(&mut Vec<u8>)) -> Box<[u8]> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut encode = Some(encode);
    let kept = SCRATCH.try_with(|scratch| {
        let mut out = scratch.try_borrow_mut().ok()?;
        out.clear();
        (encode.take()?)(&mut out);
        let kept = Box::from(&out[..]);
        if out.capacity() > 16 * 1024 {
            // A huge head once (cookies): not kept for the thread's life.
            *out = Vec::new();
        }
        Some(kept)
    });
    match (kept, encode) {
        (Ok(Some(kept)), _) => kept,
        // No scratch buffer here (a thread being torn down): a `Vec` of its own.
        (_, Some(encode)) => {
            let mut out = Vec::new();
            encode(&mut out);
            out.into_boxed_slice()
        }
        (_, None) => Box::default(),
    }
}

fn encode_request(request: &Request<()>) -> Box<[u8]> {
    encoded(|out| {
        if request.method() == Method::GET {
            out.push(0);
        } else {
            out.push(LITERAL);
            put_bytes(out, request.method().as_str().as_bytes());
        }
        let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        put_bytes(out, target.as_bytes());
        put_headers(out, request.headers());
    })
}

fn decode_request(raw: &[u8]) -> Option<Request<()>> {
    let mut r = Reader(raw);
    let method = match r.byte()? {
        0 => Method::GET,
        _ => Method::from_bytes(r.bytes()?).ok()?,
    };
    let target = r.bytes()?;
    let mut request = Request::builder()
        .method(method)
        .uri(target)
        .body(())
        .ok()?;
    *request.headers_mut() = r.headers()?;
    Some(request)
}

fn encode_response(response: &Response<()>) -> Box<[u8]> {
    encoded(|out| {
        out.extend_from_slice(&response.status().as_u16().to_le_bytes());
        put_headers(out, response.headers());
    })
}

fn decode_response(raw: &[u8]) -> Option<Response<()>> {
    let mut r = Reader(raw);
    let status = u16::from_le_bytes([r.byte()?, r.byte()?]);
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::from_u16(status).ok()?;
    *response.headers_mut() = r.headers()?;
    Some(response)
}

impl From<Request<()>> for Head<Request<()>> {
    fn from(request: Request<()>) -> Self {
        let parsed = OnceLock::new();
        // Requests the handshake read have a path-only URI; one built by a client may be
        // absolute (ws://host/path), which the encoding does not keep: kept as is.
        let raw = if request.uri().scheme().is_some() {
            let _ = parsed.set(Parsed::new(request));
            Box::default()
        } else {
            encode_request(&request)
        };
        Head { raw, parsed }
    }
}

impl From<Response<()>> for Head<Response<()>> {
    fn from(response: Response<()>) -> Self {
        Head {
            raw: encode_response(&response),
            parsed: OnceLock::new(),
        }
    }
}

impl Head<Request<()>> {
    /// The request, decoded on first use.
    pub(crate) fn get(&self) -> &Request<()> {
        &self.parsed().value
    }

    fn parsed(&self) -> &Parsed<Request<()>> {
        // Encoded from a valid request: decoding cannot fail.
        self.parsed
            .get_or_init(|| Parsed::new(decode_request(&self.raw).unwrap_or_default()))
    }
}

impl Head<Response<()>> {
    /// The response, decoded on first use.
    pub(crate) fn get(&self) -> &Response<()> {
        &self
            .parsed
            .get_or_init(|| Parsed::new(decode_response(&self.raw).unwrap_or_default()))
            .value
    }
}

/// The handshake response of a connection.
///
/// A server's `101` is what [`handshake::answer`] builds from the request, the configuration
/// and the negotiated subprotocol, unless a `process_response` hook changed it: without such
/// a hook the server keeps only its configuration (shared by every connection) and builds
/// the response again the first time the application asks, about 200 bytes less per
/// connection. A client keeps what it received; so does a server with the hook.
#[derive(Debug)]
pub(crate) enum ResponseHead {
    /// The response as sent or received.
    Kept(Head<Response<()>>),
    /// A server's unchanged `101`, built again on first use.
    Rebuilt {
        config: Arc<Config>,
        parsed: OnceLock<Box<Response<()>>>,
    },
}

impl From<Response<()>> for ResponseHead {
    fn from(response: Response<()>) -> Self {
        ResponseHead::Kept(response.into())
    }
}

impl ResponseHead {
    /// A server's `101` as the core built it under `config` (no hook changed it).
    pub(crate) fn rebuilt(config: Arc<Config>) -> Self {
        ResponseHead::Rebuilt {
            config,
            parsed: OnceLock::new(),
        }
    }

    /// The response; `request` and `subprotocol` are the connection's (what a server's
    /// response is built from).
    pub(crate) fn get(&self, request: &Request<()>, subprotocol: Option<&str>) -> &Response<()> {
        match self {
            ResponseHead::Kept(head) => head.get(),
            ResponseHead::Rebuilt { config, parsed } => {
                parsed.get_or_init(|| Box::new(answer(request, config, subprotocol)))
            }
        }
    }
}

/// The `101` a server answers `request` with under `config`, with `subprotocol` chosen.
fn answer(request: &Request<()>, config: &Config, subprotocol: Option<&str>) -> Response<()> {
    let (response, _) = handshake::answer(request, config, Some(subprotocol));
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, ())
}

/// What a server's own checks learned from a handshake request they let through: the user
/// that [`BasicAuth`](crate::auth::BasicAuth) authenticated, the route a
/// [`Router`](crate::Router) chose and its parameters. Boxed, and absent unless one of them
/// was configured, so that connections without them pay one pointer.
#[derive(Debug, Default)]
pub(crate) struct Granted {
    pub(crate) username: Option<Box<str>>,
    /// Index of the route in its router.
    pub(crate) route: Option<usize>,
    /// Path parameters, percent-decoded; names shared with the route's pattern.
    pub(crate) params: Box<[(Arc<str>, Box<str>)]>,
    /// The `101` as a `process_response` hook left it, on the event loops (which otherwise
    /// build it again from the request: [`RequestHead::answer`]).
    pub(crate) response: Option<Head<Response<()>>>,
}

/// The handshake request of a connection, and what the server granted it.
#[derive(Debug)]
pub(crate) struct RequestHead {
    head: Head<Request<()>>,
    granted: Option<Box<Granted>>,
}

impl From<Request<()>> for RequestHead {
    fn from(request: Request<()>) -> Self {
        RequestHead::new(request, None)
    }
}

impl RequestHead {
    pub(crate) fn new(request: Request<()>, granted: Option<Box<Granted>>) -> Self {
        RequestHead {
            head: request.into(),
            granted,
        }
    }

    /// The request, parsed on first use.
    pub(crate) fn get(&self) -> &Request<()> {
        self.head.get()
    }

    /// The server's `101` to this request, built again on first use (as
    /// [`ResponseHead::Rebuilt`]): the event loops keep no response per connection.
    pub(crate) fn answer(&self, config: &Config, subprotocol: Option<&str>) -> &Response<()> {
        if let Some(kept) = self.granted.as_ref().and_then(|g| g.response.as_ref()) {
            return kept.get();
        }
        let parsed = self.head.parsed();
        parsed
            .answer
            .get_or_init(|| answer(&parsed.value, config, subprotocol))
    }

    /// The user authenticated by the server's basic auth.
    pub(crate) fn username(&self) -> Option<&str> {
        self.granted.as_ref()?.username.as_deref()
    }

    /// The index of the route that matched.
    pub(crate) fn route(&self) -> Option<usize> {
        self.granted.as_ref()?.route
    }

    /// The path parameters of the route that matched.
    pub(crate) fn params(&self) -> &[(Arc<str>, Box<str>)] {
        match &self.granted {
            Some(g) => &g.params,
            None => &[],
        }
    }

    /// The value of path parameter `name`.
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params()
            .iter()
            .find(|(n, _)| **n == *name)
            .map(|(_, v)| &**v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes `request`, checks that it decodes to the same, and gives the head back.
    fn round_trip(request: &Request<()>) -> Head<Request<()>> {
        let head = Head::from(request.clone());
        let again = head.get();
        assert_eq!(again.method(), request.method());
        assert_eq!(again.uri(), request.uri());
        assert_eq!(again.headers(), request.headers());
        head
    }

    #[test]
    fn request_comes_back_as_it_was() {
        let request = Request::get("/chat/room?name=ann")
            .header("Host", "example.com")
            .header("Upgrade", "websocket")
            .header("Cookie", "a=1")
            .header("Cookie", "b=2")
            .header("X-Custom", "value with spaces")
            .body(())
            .unwrap();
        let head = round_trip(&request);
        assert!(head.raw.len() < 100, "{}", head.raw.len());
    }

    #[test]
    fn a_browsers_request_comes_back_as_it_was_in_half_the_bytes() {
        let request = Request::get("/socket?token=abc")
            .header("Host", "example.com")
            .header("Connection", "Upgrade")
            .header("Pragma", "no-cache")
            .header("Cache-Control", "no-cache")
            .header("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36")
            .header("Upgrade", "websocket")
            .header("Origin", "https://example.com")
            .header("Sec-WebSocket-Version", "13")
            .header("Accept-Encoding", "gzip, deflate, br, zstd")
            .header("Accept-Language", "en-US,en;q=0.9")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")
            .body(())
            .unwrap();
        let mut wire = Vec::new();
        handshake::write_request(&request, &mut wire);
        let head = round_trip(&request);
        assert!(
            head.raw.len() * 2 < wire.len(),
            "{} of {}",
            head.raw.len(),
            wire.len()
        );
    }

    #[test]
    fn anything_off_the_table_is_kept_literally() {
        let long = "v".repeat(20_000); // a length of three bytes
        let request = Request::builder()
            .method("PATCH")
            .uri("/?q")
            .header("X-Custom", "value with spaces")
            .header("Upgrade", "WebSocket") // not the table's spelling
            .header("X-Long", long.as_str())
            .header("X-Opaque", HeaderValue::from_bytes(b"caf\xe9\t!").unwrap())
            .header("Cookie", "a=1")
            .header("X-Custom", "again")
            .header("Cookie", "b=2")
            .body(())
            .unwrap();
        let head = round_trip(&request);
        let cookies: Vec<_> = head.get().headers().get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }

    #[test]
    fn every_table_entry_round_trips() {
        for (i, name) in NAMES.iter().enumerate() {
            let value = VALUES[i % VALUES.len()];
            let mut response = Response::new(());
            response.headers_mut().append(
                HeaderName::from_static(name),
                HeaderValue::from_bytes(value).unwrap(),
            );
            let head = Head::from(response.clone());
            assert_eq!(head.get().headers(), response.headers(), "{name}");
            assert_eq!(
                head.raw.len(),
                2 + 2 + 1,
                "{name}: one byte for the name, one for the value"
            );
        }
        assert!(NAMES.len() < usize::from(END) && VALUES.len() < usize::from(END));
    }

    #[test]
    fn a_damaged_encoding_decodes_to_nothing_without_panicking() {
        let request = Request::get("/a")
            .header("Host", "h")
            .header("X-Thing", "y".repeat(300))
            .body(())
            .unwrap();
        let raw = encode_request(&request);
        for end in 0..raw.len() {
            assert!(decode_request(&raw[..end]).is_none(), "cut at {end}");
        }
        for at in 0..raw.len() {
            let mut bad = raw.clone();
            bad[at] ^= 0xA5;
            let _ = decode_request(&bad);
        }
        assert!(decode_request(&[
            0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01
        ])
        .is_none());
        assert!(
            decode_response(&[0xFF, 0xFF, END]).is_none(),
            "status 65535"
        );
    }

    #[test]
    fn absolute_uris_of_clients_are_kept() {
        let request = Request::get("ws://example.com:8080/x?y=1")
            .header("Host", "example.com:8080")
            .body(())
            .unwrap();
        let head = Head::from(request.clone());
        assert_eq!(head.get().uri(), request.uri());
    }

    #[test]
    fn response_comes_back_as_it_was() {
        let response = Response::builder()
            .status(101)
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Extensions", "permessage-deflate")
            .body(())
            .unwrap();
        let head = Head::from(response.clone());
        assert_eq!(head.get().status(), response.status());
        assert_eq!(head.get().headers(), response.headers());
        assert_eq!(head.get().version(), http::Version::HTTP_11);
    }
}
