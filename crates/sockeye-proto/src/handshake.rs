//! The opening handshake (RFC 6455 §4), sans I/O.
//!
//! Everything here works on byte buffers and [`http`] types; nothing reads or writes a socket.
//!
//! A server calls [`parse_request`] on the bytes received so far until it returns a request,
//! then [`check_request`] to validate it and negotiate, then [`build_response`] (or [`reject`]
//! with [`HandshakeError::status`]) and [`write_response`].
//!
//! A client calls [`build_request`] and [`write_request`], then [`parse_response`] on the bytes
//! received until it returns a response, then [`check_response`] if its status is 101.
//!
//! Peer input never panics: every limit of [`Config`] is enforced while parsing
//! (`max_line_length`, `max_headers`, `max_handshake_size`) and every malformed input is an
//! error.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, AsHeaderName, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use sha1::{Digest, Sha1};

use crate::config::Config;
use crate::error::{HandshakeError, Limit, LimitExceeded};
use crate::extensions::deflate::DeflateParams;
use crate::extensions::Extension;

/// The GUID of RFC 6455 §1.3.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The name of the only extension sockeye implements (RFC 7692 §7).
const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// The `Sec-WebSocket-*` header names (RFC 6455 §11.3).
const SEC_WEBSOCKET_KEY: &str = "sec-websocket-key";
const SEC_WEBSOCKET_ACCEPT: &str = "sec-websocket-accept";
const SEC_WEBSOCKET_VERSION: &str = "sec-websocket-version";
const SEC_WEBSOCKET_EXTENSIONS: &str = "sec-websocket-extensions";
const SEC_WEBSOCKET_PROTOCOL: &str = "sec-websocket-protocol";

/// What a server decided while validating a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAccept {
    /// The client's Sec-WebSocket-Key.
    pub key: String,
    /// The subprotocol chosen.
    pub subprotocol: Option<String>,
    /// permessage-deflate accepted, and the extension to put in the response.
    pub deflate: Option<(DeflateParams, Extension)>,
}

/// What a client learned from a 101 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAccept {
    /// The subprotocol the server chose.
    pub subprotocol: Option<String>,
    /// permessage-deflate as negotiated.
    pub deflate: Option<DeflateParams>,
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key`: base64(SHA-1(key ++ GUID)).
///
/// RFC 6455 §4.2.2 item 5.4; `key` is the header value as sent (base64 text, not decoded).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID.as_bytes());
    BASE64.encode(sha1.finalize())
}

/// A `Sec-WebSocket-Key` value from 16 random bytes: their base64 encoding (RFC 6455 §4.1,
/// client requirement 7). The caller supplies the randomness.
pub fn generate_key(bytes: [u8; 16]) -> String {
    BASE64.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// Parsing HTTP heads
// ---------------------------------------------------------------------------------------------

fn limit(limit: Limit, max: usize) -> HandshakeError {
    HandshakeError::LimitExceeded(LimitExceeded { limit, max })
}

/// Checks every line of the HTTP head at the start of `buf` against `max_line_length`.
///
/// A line's length excludes its terminator (`\r\n` or `\n`). The scan stops at the empty line
/// that ends the head (empty lines before the start line are skipped, as httparse does), so
/// bytes after the head (e.g. the first WebSocket frames) are not measured. A last, unterminated
/// line is measured too: once it is over the limit, the head can only fail, so it fails now.
fn check_line_lengths(buf: &[u8], max: usize) -> Result<(), HandshakeError> {
    let mut seen_start_line = false;
    let mut rest = buf;
    loop {
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let line = rest.get(..i).unwrap_or_default();
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.len() > max {
                    return Err(limit(Limit::HttpLine, max));
                }
                if line.is_empty() {
                    if seen_start_line {
                        return Ok(());
                    }
                } else {
                    seen_start_line = true;
                }
                rest = rest.get(i + 1..).unwrap_or_default();
            }
            None => {
                // A trailing `\r` may be the first half of the terminator.
                let line = rest.strip_suffix(b"\r").unwrap_or(rest);
                if line.len() > max {
                    return Err(limit(Limit::HttpLine, max));
                }
                return Ok(());
            }
        }
    }
}

/// Header storage for httparse: `max_headers` slots, but never more than `buf` could fill
/// (a header line is at least 3 bytes, `a:\n`), so that a large `max_headers` does not
/// allocate for nothing.
fn header_storage(buf: &[u8], config: &Config) -> Vec<httparse::Header<'static>> {
    let slots = config.max_headers.min(buf.len() / 3 + 1);
    vec![httparse::EMPTY_HEADER; slots]
}

/// Maps an httparse error (on a buffer that passed the line check) to a handshake error.
fn httparse_error(e: httparse::Error, config: &Config) -> HandshakeError {
    match e {
        httparse::Error::TooManyHeaders => limit(Limit::Headers, config.max_headers),
        e => HandshakeError::InvalidHttp(e.to_string()),
    }
}

/// The checks common to requests and responses before httparse's result is used.
fn check_status(
    status: Result<httparse::Status<usize>, httparse::Error>,
    buf: &[u8],
    config: &Config,
) -> Result<Option<usize>, HandshakeError> {
    match status {
        Err(e) => Err(httparse_error(e, config)),
        Ok(httparse::Status::Partial) => {
            if buf.len() > config.max_handshake_size {
                Err(limit(Limit::HandshakeSize, config.max_handshake_size))
            } else {
                Ok(None)
            }
        }
        Ok(httparse::Status::Complete(n)) => {
            if n > config.max_handshake_size {
                Err(limit(Limit::HandshakeSize, config.max_handshake_size))
            } else {
                Ok(Some(n))
            }
        }
    }
}

/// RFC 6455 §4.1 client requirement 2 and §4.2.1 item 1: "HTTP/1.1 or higher"; httparse only
/// knows HTTP/1.x, so the minor version must be 1.
fn check_version(minor: Option<u8>) -> Result<(), HandshakeError> {
    match minor {
        Some(1) => Ok(()),
        _ => Err(HandshakeError::InvalidHttp("HTTP/1.1 required".to_owned())),
    }
}

/// Copies httparse's headers into a [`HeaderMap`], repeated headers kept in order.
fn convert_headers(
    parsed: &[httparse::Header<'_>],
    config: &Config,
) -> Result<HeaderMap, HandshakeError> {
    let too_many = |_| limit(Limit::Headers, config.max_headers);
    let mut map = HeaderMap::try_with_capacity(parsed.len()).map_err(too_many)?;
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            HandshakeError::InvalidHttp(format!("invalid header name {:?}", h.name))
        })?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| {
            HandshakeError::InvalidHttp(format!("invalid value for header {:?}", h.name))
        })?;
        map.try_append(name, value).map_err(too_many)?;
    }
    Ok(map)
}

/// Parses an HTTP/1.1 request head at the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete (call again with the whole buffer once more
/// bytes arrive), and `Ok(Some((request, n)))` once it is
/// complete, where `n` is the length of the head; bytes after it belong to the WebSocket
/// connection. The request has the method, the request target as its URI, version HTTP/1.1
/// and the headers in order (repeated headers kept).
///
/// Errors: [`Limit::HttpLine`] as soon as a line (terminator excluded) is longer than
/// `max_line_length`, even before the line is complete; [`Limit::Headers`] for more than
/// `max_headers` headers; [`Limit::HandshakeSize`] when the head is longer than
/// `max_handshake_size` (for an incomplete head: when `buf` is); [`HandshakeError::InvalidHttp`]
/// for anything malformed, including HTTP/1.0.
pub fn parse_request(
    buf: &[u8],
    config: &Config,
) -> Result<Option<(Request<()>, usize)>, HandshakeError> {
    check_line_lengths(buf, config.max_line_length)?;
    let mut storage = header_storage(buf, config);
    let mut parsed = httparse::Request::new(&mut storage);
    let status = parsed.parse(buf);
    let Some(n) = check_status(status, buf, config)? else {
        return Ok(None);
    };
    check_version(parsed.version)?;
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Err(HandshakeError::InvalidHttp(
            "incomplete request line".to_owned(),
        ));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| HandshakeError::InvalidHttp(format!("invalid method {method:?}")))?;
    let uri = Uri::try_from(path)
        .map_err(|e| HandshakeError::InvalidHttp(format!("invalid request target: {e}")))?;
    let headers = convert_headers(parsed.headers, config)?;

    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Ok(Some((req, n)))
}

/// Parses an HTTP/1.1 response head (status line and headers) at the start of `buf`.
///
/// Same contract and limits as [`parse_request`]. The body, if any, is not read: `n` is the
/// length of the head only.
pub fn parse_response(
    buf: &[u8],
    config: &Config,
) -> Result<Option<(Response<()>, usize)>, HandshakeError> {
    check_line_lengths(buf, config.max_line_length)?;
    let mut storage = header_storage(buf, config);
    let mut parsed = httparse::Response::new(&mut storage);
    let status = parsed.parse(buf);
    let Some(n) = check_status(status, buf, config)? else {
        return Ok(None);
    };
    check_version(parsed.version)?;
    let Some(code) = parsed.code else {
        return Err(HandshakeError::InvalidHttp(
            "incomplete status line".to_owned(),
        ));
    };
    let status = StatusCode::from_u16(code)
        .map_err(|_| HandshakeError::InvalidHttp(format!("invalid status code {code}")))?;
    let headers = convert_headers(parsed.headers, config)?;

    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = Version::HTTP_11;
    *resp.headers_mut() = headers;
    Ok(Some((resp, n)))
}

// ---------------------------------------------------------------------------------------------
// Writing HTTP heads
// ---------------------------------------------------------------------------------------------

/// Writes a header name in its conventional capitalisation (`Sec-WebSocket-Key`,
/// `Content-Type`): [`http`] stores names in lowercase, which is valid (names are
/// case-insensitive) but some peers are picky.
fn write_header_name(name: &HeaderName, out: &mut Vec<u8>) {
    for (i, part) in name.as_str().split('-').enumerate() {
        if i > 0 {
            out.push(b'-');
        }
        if part == "websocket" {
            out.extend_from_slice(b"WebSocket");
        } else if part == "www" {
            out.extend_from_slice(b"WWW");
        } else {
            let mut bytes = part.bytes();
            if let Some(first) = bytes.next() {
                out.push(first.to_ascii_uppercase());
            }
            out.extend(bytes);
        }
    }
}

fn write_headers(headers: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in headers {
        write_header_name(name, out);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Serialises a request head: `GET <path-and-query> HTTP/1.1`, the headers, a blank line.
///
/// The request line uses the request's method (GET for [`build_request`]'s requests) and the
/// origin form of its URI (`/` when the URI has no path), whether the URI is absolute
/// (`ws://host/path`) or not.
pub fn write_request(req: &Request<()>, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    match req.uri().path_and_query().map(|pq| pq.as_str()) {
        Some(pq) if pq.starts_with('/') => out.extend_from_slice(pq.as_bytes()),
        Some(pq) if !pq.is_empty() => {
            // `?query` with an empty path.
            out.push(b'/');
            out.extend_from_slice(pq.as_bytes());
        }
        _ => out.push(b'/'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_headers(req.headers(), out);
}

/// Serialises a response: status line with the canonical reason phrase, the headers, a blank
/// line, and the body. Headers are written as they are: [`reject`] sets `Content-Length`.
pub fn write_response(resp: &Response<Bytes>, out: &mut Vec<u8>) {
    let status = resp.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    write_headers(resp.headers(), out);
    out.extend_from_slice(resp.body());
}

// ---------------------------------------------------------------------------------------------
// Header helpers
// ---------------------------------------------------------------------------------------------

/// Is `b` a `tchar` of RFC 7230 §3.2.6?
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Is `s` a `token` of RFC 7230 §3.2.6 (one or more `tchar`)?
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ' && b != b'\t');
    let Some(start) = start else {
        return &[];
    };
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .unwrap_or(start);
    s.get(start..=end).unwrap_or_default()
}

/// The elements of a comma-separated header list (RFC 7230 §7), across every header named
/// `name`, in order, with optional whitespace trimmed and empty elements skipped.
///
/// `Connection: keep-alive, Upgrade` gives `keep-alive` and `Upgrade`. Elements are bytes:
/// header values may hold non-ASCII octets.
pub fn header_tokens<'a, K: AsHeaderName>(
    headers: &'a HeaderMap,
    name: K,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(trim_ows)
        .filter(|element| !element.is_empty())
}

/// Does a header list named `name` contain `token`, compared case-insensitively?
fn has_token<K: AsHeaderName>(headers: &HeaderMap, name: K, token: &str) -> bool {
    header_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The only value of a header that must appear once: `Err` with a reason if it is missing or
/// repeated.
fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a HeaderValue, String> {
    let mut values = headers.get_all(name).into_iter();
    match (values.next(), values.next()) {
        (Some(value), None) => Ok(value),
        (None, _) => Err("missing".to_owned()),
        (Some(_), Some(_)) => Err("more than one".to_owned()),
    }
}

/// The subprotocols a client offers: the elements of all its `Sec-WebSocket-Protocol`
/// headers, comma-separated and trimmed, in order (RFC 6455 §4.1 client requirement 10).
///
/// Elements that are not tokens (RFC 6455 §4.1) are skipped here; [`check_request`] rejects
/// a request holding any.
pub fn offered_subprotocols(req: &Request<()>) -> Vec<String> {
    header_tokens(req.headers(), SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|t| std::str::from_utf8(t).ok())
        .filter(|t| is_token(t))
        .map(str::to_owned)
        .collect()
}

/// The subprotocol tokens of all `Sec-WebSocket-Protocol` headers, or an error if one is not
/// a token.
fn subprotocol_list(headers: &HeaderMap) -> Result<Vec<String>, HandshakeError> {
    header_tokens(headers, SEC_WEBSOCKET_PROTOCOL)
        .map(|t| match std::str::from_utf8(t) {
            Ok(t) if is_token(t) => Ok(t.to_owned()),
            _ => Err(HandshakeError::InvalidHeader {
                name: "Sec-WebSocket-Protocol",
                reason: format!("{:?} is not a token", String::from_utf8_lossy(t)),
            }),
        })
        .collect()
}

/// The extensions of all `Sec-WebSocket-Extensions` headers, in order.
fn extension_list(headers: &HeaderMap) -> Result<Vec<Extension>, HandshakeError> {
    let mut all = Vec::new();
    for value in headers.get_all(SEC_WEBSOCKET_EXTENSIONS) {
        let value = value.to_str().map_err(|_| HandshakeError::InvalidHeader {
            name: "Sec-WebSocket-Extensions",
            reason: "not ASCII".to_owned(),
        })?;
        all.extend(parse_extensions(value)?);
    }
    Ok(all)
}

/// RFC 6455 §4.2.1 items 3 and 4, §4.1 client requirements 2 and 3: `Upgrade` must hold the
/// `websocket` token and `Connection` the `upgrade` token (both case-insensitive).
fn check_upgrade_connection(headers: &HeaderMap) -> Result<(), HandshakeError> {
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(HandshakeError::InvalidHeader {
            name: "Upgrade",
            reason: describe_tokens(headers, header::UPGRADE, "websocket"),
        });
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(HandshakeError::InvalidHeader {
            name: "Connection",
            reason: describe_tokens(headers, header::CONNECTION, "Upgrade"),
        });
    }
    Ok(())
}

fn describe_tokens(headers: &HeaderMap, name: HeaderName, expected: &str) -> String {
    let found: Vec<String> = headers
        .get_all(&name)
        .into_iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    if found.is_empty() {
        format!("missing; expected {expected}")
    } else {
        format!("expected {expected}, got {:?}", found.join(", "))
    }
}

fn header_value(name: &'static str, value: &str) -> Result<HeaderValue, HandshakeError> {
    HeaderValue::from_str(value).map_err(|_| HandshakeError::InvalidHeader {
        name,
        reason: format!("{value:?} is not a valid header value"),
    })
}

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

/// Decodes `%XX` escapes (RFC 3986 §2.1); a `%` not followed by two hex digits is kept.
pub fn percent_decode(s: &str) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex);
            let lo = bytes.get(i + 2).copied().and_then(hex);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

/// The HTTP Basic credentials (RFC 7617) of a URI's `user:password` userinfo, percent-decoded
/// as python-websockets does: `Basic base64(user ":" password)`, the value of an
/// `Authorization` (or a proxy's `Proxy-Authorization`) header.
///
/// Errors: [`HandshakeError::InvalidHttp`] for a username without a password.
pub fn basic_credentials(userinfo: &str) -> Result<String, HandshakeError> {
    let Some((user, password)) = userinfo.split_once(':') else {
        return Err(HandshakeError::InvalidHttp(
            "URI has a username but no password".to_owned(),
        ));
    };
    let mut credentials = percent_decode(user);
    credentials.push(b':');
    credentials.extend(percent_decode(password));
    Ok(format!("Basic {}", BASE64.encode(credentials)))
}

/// Where a WebSocket URI points: host, port and whether TLS is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host, without the brackets of an IPv6 literal.
    pub host: String,
    /// The port: the URI's, else 80 for `ws` and 443 for `wss` (RFC 6455 §3).
    pub port: u16,
    /// Whether the scheme is `wss` (TLS).
    pub secure: bool,
}

impl Target {
    /// Reads the target of a `ws://` or `wss://` URI (RFC 6455 §3); any other scheme, or a
    /// URI without a host, is an error.
    pub fn from_uri(uri: &Uri) -> Result<Target, HandshakeError> {
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => {
                return Err(HandshakeError::InvalidHttp(format!(
                    "{uri}: the scheme must be ws or wss"
                )))
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| HandshakeError::InvalidHttp(format!("{uri}: no host")))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        Ok(Target { host, port, secure })
    }
}

/// Builds a client's opening handshake request for a `ws://` or `wss://` URI (RFC 6455 §4.1).
///
/// `key` is the `Sec-WebSocket-Key` (see [`generate_key`]). The request's URI is `uri` itself;
/// [`write_request`] sends its path and query (`/` by default). Headers, in order: `Host`
/// (`host[:port]`, the port omitted when it is the scheme's default, IPv6 addresses in
/// brackets), `Authorization: Basic ...` when the URI has `user:password@` (percent-decoded,
/// as python-websockets does), `Upgrade: websocket`, `Connection: Upgrade`,
/// `Sec-WebSocket-Key`, `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Extensions` when
/// compression is configured, `Sec-WebSocket-Protocol` when subprotocols are configured,
/// `User-Agent` when configured.
///
/// Errors: [`HandshakeError::InvalidHttp`] for a URI that is not `ws`/`wss` with a host, or
/// with a username but no password; [`HandshakeError::InvalidHeader`] when the key or a
/// configured value cannot be a header value.
pub fn build_request(uri: &Uri, key: &str, config: &Config) -> Result<Request<()>, HandshakeError> {
    // RFC 6455 §3: the ws and wss schemes, with 80 and 443 as default ports.
    let default_port = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("ws") => 80,
        Some(s) if s.eq_ignore_ascii_case("wss") => 443,
        Some(s) => {
            return Err(HandshakeError::InvalidHttp(format!(
                "URI scheme must be ws or wss, not {s:?}"
            )))
        }
        None => {
            return Err(HandshakeError::InvalidHttp(
                "URI must be absolute, with a ws or wss scheme".to_owned(),
            ))
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(HandshakeError::InvalidHttp("URI has no host".to_owned()));
    };
    let host = authority.host();
    if host.is_empty() {
        return Err(HandshakeError::InvalidHttp("URI has no host".to_owned()));
    }
    // RFC 6455 §4.1 client requirement 4 (Host), RFC 7230 §5.4: the port only if not default.
    let host_header = match authority.port_u16() {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host.to_owned(),
    };

    let mut headers = HeaderMap::new();
    headers.append(header::HOST, header_value("Host", &host_header)?);

    if let Some((userinfo, _)) = authority.as_str().rsplit_once('@') {
        let value = basic_credentials(userinfo)?;
        headers.append(
            header::AUTHORIZATION,
            header_value("Authorization", &value)?,
        );
    }

    // RFC 6455 §4.1 client requirements 5-7 and 9.
    headers.append(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.append(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.append(SEC_WEBSOCKET_KEY, header_value("Sec-WebSocket-Key", key)?);
    headers.append(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));

    // RFC 6455 §4.1 client requirement 11, RFC 7692 §5.
    if config.compression.is_some() {
        let offers: Vec<Extension> = config.deflate_offer_list().map(|d| d.offer()).collect();
        let value = format_extensions(&offers);
        headers.append(
            SEC_WEBSOCKET_EXTENSIONS,
            header_value("Sec-WebSocket-Extensions", &value)?,
        );
    }
    // RFC 6455 §4.1 client requirement 10.
    if !config.subprotocols.is_empty() {
        if let Some(bad) = config.subprotocols.iter().find(|p| !is_token(p)) {
            return Err(HandshakeError::InvalidHeader {
                name: "Sec-WebSocket-Protocol",
                reason: format!("{bad:?} is not a token"),
            });
        }
        let value = config.subprotocols.join(", ");
        headers.append(
            SEC_WEBSOCKET_PROTOCOL,
            header_value("Sec-WebSocket-Protocol", &value)?,
        );
    }
    if let Some(agent) = &config.user_agent {
        headers.append(header::USER_AGENT, header_value("User-Agent", agent)?);
    }

    let mut req = Request::new(());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri.clone();
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Validates a server's 101 response to a request sent with `key` and offering
/// `offered_subprotocols` (RFC 6455 §4.1, the client's requirements on the response).
///
/// Checks, in order: status 101 (the caller deals with other statuses; here they are
/// [`HandshakeError::InvalidHttp`]); the `Upgrade: websocket` and `Connection: upgrade` tokens
/// ([`HandshakeError::InvalidHeader`]); exactly one `Sec-WebSocket-Accept` matching
/// [`accept_key`] ([`HandshakeError::InvalidAccept`]); the extensions (at most one
/// permessage-deflate, only if offered, validated by
/// [`DeflateConfig::accept_response`](crate::extensions::deflate::DeflateConfig::accept_response);
/// anything else is [`HandshakeError::Negotiation`]); the subprotocol (at most one, and one we
/// offered, else [`HandshakeError::Negotiation`]).
pub fn check_response(
    resp: &Response<()>,
    key: &str,
    offered_subprotocols: &[String],
    config: &Config,
) -> Result<ClientAccept, HandshakeError> {
    // RFC 6455 §4.1: "If the status code received from the server is not 101, the client
    // handles the response per HTTP procedures."
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(HandshakeError::InvalidHttp(format!(
            "expected 101 Switching Protocols, got {}",
            resp.status()
        )));
    }
    let headers = resp.headers();

    // RFC 6455 §4.1 client requirements on the response, items 2 and 3.
    check_upgrade_connection(headers)?;

    // Item 4: Sec-WebSocket-Accept is base64(SHA-1(key ++ GUID)).
    let accept =
        single_header(headers, SEC_WEBSOCKET_ACCEPT).map_err(|_| HandshakeError::InvalidAccept)?;
    if accept.as_bytes() != accept_key(key.as_bytes()).as_bytes() {
        return Err(HandshakeError::InvalidAccept);
    }

    // Item 5: "If the response includes a Sec-WebSocket-Extensions header field and this
    // header field indicates the use of an extension that was not present in the client's
    // handshake ..., the client MUST Fail the WebSocket Connection."
    let mut deflate = None;
    for ext in extension_list(headers)? {
        if ext.name != PERMESSAGE_DEFLATE {
            return Err(HandshakeError::Negotiation(format!(
                "server accepted extension {:?}, which was not offered",
                ext.name
            )));
        }
        if config.compression.is_none() {
            return Err(HandshakeError::Negotiation(
                "server accepted permessage-deflate, which was not offered".to_owned(),
            ));
        }
        if deflate.is_some() {
            return Err(HandshakeError::Negotiation(
                "server accepted permessage-deflate more than once".to_owned(),
            ));
        }
        // RFC 7692 §5: the response accepts one of the offers; the first offer whose
        // parameters the response fits is the one accepted.
        let mut first_error = None;
        for dc in config.deflate_offer_list() {
            match dc.accept_response(&ext.params) {
                Ok(params) => {
                    deflate = Some(params);
                    break;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if deflate.is_none() {
            if let Some(e) = first_error {
                return Err(e);
            }
        }
    }

    // Item 6: the subprotocol must be one the client offered.
    let mut chosen = subprotocol_list(headers)?;
    let subprotocol = match chosen.len() {
        0 => None,
        1 => chosen.pop(),
        _ => {
            return Err(HandshakeError::Negotiation(format!(
                "server chose more than one subprotocol: {}",
                chosen.join(", ")
            )))
        }
    };
    if let Some(p) = &subprotocol {
        if !offered_subprotocols.contains(p) {
            return Err(HandshakeError::Negotiation(format!(
                "server chose subprotocol {p:?}, which was not offered"
            )));
        }
    }

    Ok(ClientAccept {
        subprotocol,
        deflate,
    })
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

/// Validates a client's opening handshake request and negotiates extensions and subprotocol
/// (RFC 6455 §4.2.1, §4.2.2).
///
/// Checks, in order, each failure with the [`HandshakeError`] whose
/// [`status`](HandshakeError::status) a server answers with: method GET
/// ([`InvalidMethod`](HandshakeError::InvalidMethod), 405); HTTP/1.1; no request body
/// (`Transfer-Encoding`, or a `Content-Length` other than 0, are
/// [`InvalidHttp`](HandshakeError::InvalidHttp), 400); exactly one `Host`;
/// `Upgrade` holding `websocket` (426); `Connection` holding `upgrade`; exactly one
/// `Sec-WebSocket-Key` that is the base64 of 16 bytes (400);
/// `Sec-WebSocket-Version: 13` ([`UnsupportedVersion`](HandshakeError::UnsupportedVersion),
/// 426); the `Origin` when `config.origins` restricts it
/// ([`ForbiddenOrigin`](HandshakeError::ForbiddenOrigin), 403).
///
/// Then it negotiates permessage-deflate when compression is configured: the first offer that
/// [`DeflateConfig::accept_offer`](crate::extensions::deflate::DeflateConfig::accept_offer)
/// accepts wins; other extensions are ignored. Then the subprotocol: `subprotocol` is
/// `Some(choice)` when the application chose already (`Some(Some(p))` must have been offered),
/// or `None` for the default: the first of `config.subprotocols` that the client offered. If
/// the server has subprotocols and the client offered some but none of them,
/// [`Negotiation`](HandshakeError::Negotiation) (400).
pub fn check_request(
    req: &Request<()>,
    config: &Config,
    subprotocol: Option<Option<&str>>,
) -> Result<ServerAccept, HandshakeError> {
    // RFC 6455 §4.2.1 item 1: "An HTTP/1.1 or higher GET request".
    if req.method() != Method::GET {
        return Err(HandshakeError::InvalidMethod);
    }
    if req.version() != Version::HTTP_11 {
        return Err(HandshakeError::InvalidHttp("HTTP/1.1 required".to_owned()));
    }
    let headers = req.headers();

    // The handshake request has no body (RFC 6455 §4.1 only describes a head). Bytes after the
    // head are WebSocket frames, so a request announcing a body is refused rather than having
    // its body read as frames (RFC 7230 §3.3.3, as python-websockets does). Some clients send
    // `Content-Length: 0`, which is harmless.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(HandshakeError::InvalidHttp(
            "transfer codings are not supported".to_owned(),
        ));
    }
    if headers
        .get_all(header::CONTENT_LENGTH)
        .into_iter()
        .any(|v| v.as_bytes() != b"0")
    {
        return Err(HandshakeError::InvalidHttp(
            "a request body is not supported".to_owned(),
        ));
    }

    // Item 2: "A |Host| header field containing the server's authority."
    single_header(headers, "host").map_err(|reason| HandshakeError::InvalidHeader {
        name: "Host",
        reason,
    })?;

    // Items 3 and 4: Upgrade: websocket, Connection: Upgrade.
    check_upgrade_connection(headers)?;

    // Item 5: "A |Sec-WebSocket-Key| header field with a base64-encoded value that, when
    // decoded, is 16 bytes in length."
    let key = single_header(headers, SEC_WEBSOCKET_KEY).map_err(|reason| {
        HandshakeError::InvalidHeader {
            name: "Sec-WebSocket-Key",
            reason,
        }
    })?;
    let key_is_valid = key.len() == 24
        && BASE64
            .decode(key.as_bytes())
            .is_ok_and(|decoded| decoded.len() == 16);
    let key = match key.to_str() {
        Ok(key) if key_is_valid => key.to_owned(),
        _ => {
            return Err(HandshakeError::InvalidHeader {
                name: "Sec-WebSocket-Key",
                reason: format!(
                    "{:?} is not the base64 encoding of 16 bytes",
                    String::from_utf8_lossy(key.as_bytes())
                ),
            })
        }
    };

    // Item 6 and §4.4: "|Sec-WebSocket-Version| header field, with a value of 13"; anything
    // else is answered with 426 and the version we support.
    match single_header(headers, SEC_WEBSOCKET_VERSION) {
        Ok(v) if v.as_bytes() == b"13" => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }

    // Item 7 and §4.2.2 item 4 (bullet 2 of §10.2): a server may refuse origins.
    if let Some(allowed) = &config.origins {
        let mut values = headers.get_all(header::ORIGIN).into_iter();
        let origin = match (values.next(), values.next()) {
            (None, _) => None,
            (Some(v), None) => Some(v.to_str().map_err(|_| HandshakeError::ForbiddenOrigin)?),
            (Some(_), Some(_)) => {
                return Err(HandshakeError::InvalidHeader {
                    name: "Origin",
                    reason: "more than one".to_owned(),
                })
            }
        };
        if !allowed.iter().any(|a| a.as_deref() == origin) {
            return Err(HandshakeError::ForbiddenOrigin);
        }
    }

    // Item 9 and §9.1: extensions. Only permessage-deflate is known; the first offer it
    // accepts wins, unknown extensions are ignored. Without compression configured the header
    // is not even parsed (as python-websockets does).
    let mut deflate = None;
    if let Some(dc) = &config.compression {
        for ext in extension_list(headers)? {
            if ext.name != PERMESSAGE_DEFLATE {
                continue;
            }
            if let Some(accepted) = dc.accept_offer(&ext.params)? {
                deflate = Some(accepted);
                break;
            }
        }
    }

    // Item 8 and §4.2.2 item 5.4 (/subprotocol/): one of the client's offers, or none.
    let offered = subprotocol_list(headers)?;
    let subprotocol = match subprotocol {
        Some(Some(choice)) => {
            if !offered.iter().any(|p| p == choice) {
                return Err(HandshakeError::Negotiation(format!(
                    "subprotocol {choice:?} was not offered by the client"
                )));
            }
            Some(choice.to_owned())
        }
        Some(None) => None,
        None => select_subprotocol(&offered, &config.subprotocols)?,
    };

    Ok(ServerAccept {
        key,
        subprotocol,
        deflate,
    })
}

/// The default subprotocol choice: the first of the server's (in its order of preference)
/// that the client offered; none if either side has none; an error if both have some but
/// none in common.
fn select_subprotocol(
    offered: &[String],
    supported: &[String],
) -> Result<Option<String>, HandshakeError> {
    if offered.is_empty() || supported.is_empty() {
        return Ok(None);
    }
    match supported.iter().find(|p| offered.contains(p)) {
        Some(p) => Ok(Some(p.clone())),
        None => Err(HandshakeError::Negotiation(format!(
            "no supported subprotocol; the client offered {}",
            offered.join(", ")
        ))),
    }
}

/// Does this request ask to become a WebSocket: does its `Upgrade` header list `websocket`
/// (case-insensitively)?
///
/// For servers that share a port with plain HTTP (hyper, axum): a request that asks is sent
/// to [`check_request`] / [`answer`], so that a malformed one gets its 4xx rather than a page.
/// It does not validate anything else.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    has_token(headers, header::UPGRADE, "websocket")
}

/// A server's answer to a handshake request: [`check_request`], then [`build_response`] if
/// it passes, or [`reject`] with the error's [`status`](HandshakeError::status) and a body
/// that states the error. Returns the response and the outcome of the check.
///
/// For servers whose HTTP layer parsed the request (hyper, axum); a [`Protocol`] server
/// answers the same way through [`Protocol::accept`].
///
/// [`Protocol`]: crate::Protocol
/// [`Protocol::accept`]: crate::Protocol::accept
pub fn answer(
    req: &Request<()>,
    config: &Config,
    subprotocol: Option<Option<&str>>,
) -> (Response<Bytes>, Result<ServerAccept, HandshakeError>) {
    let result = check_request(req, config, subprotocol);
    let response = match &result {
        Ok(accept) => build_response(accept, config),
        Err(e) => reject(
            e.status(),
            &format!("Failed to open a WebSocket connection: {e}.\n"),
            config,
        ),
    };
    (response, result)
}

/// Builds the server's `101 Switching Protocols` response (RFC 6455 §4.2.2 item 5).
///
/// Headers: `Upgrade: websocket`, `Connection: Upgrade`, `Sec-WebSocket-Accept` computed from
/// `accept.key`, `Sec-WebSocket-Extensions` when permessage-deflate was accepted,
/// `Sec-WebSocket-Protocol` when a subprotocol was chosen, and `Server` when configured. A
/// configured `Server` value that cannot be a header value is left out. The body is empty.
pub fn build_response(accept: &ServerAccept, config: &Config) -> Response<Bytes> {
    let mut headers = HeaderMap::new();
    headers.append(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.append(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    // accept_key yields base64 text: always a valid header value.
    if let Ok(v) = HeaderValue::from_str(&accept_key(accept.key.as_bytes())) {
        headers.append(SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some((_, ext)) = &accept.deflate {
        if let Ok(v) = HeaderValue::from_str(&format_extensions(std::slice::from_ref(ext))) {
            headers.append(SEC_WEBSOCKET_EXTENSIONS, v);
        }
    }
    if let Some(p) = &accept.subprotocol {
        if let Ok(v) = HeaderValue::from_str(p) {
            headers.append(SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    if let Some(server) = &config.server_header {
        if let Ok(v) = HeaderValue::from_str(server) {
            headers.append(header::SERVER, v);
        }
    }
    let mut resp = Response::new(Bytes::new());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = headers;
    resp
}

/// An HTTP error response to a handshake that failed: `status`, a plain-text `body`,
/// `Content-Type: text/plain; charset=utf-8`, `Content-Length`, `Connection: close`, and
/// `Server` when configured.
///
/// A 426 also carries `Upgrade: websocket` and `Sec-WebSocket-Version: 13`, which tell the
/// client what to ask for (RFC 6455 §4.2.2 item 4, §4.4).
pub fn reject(status: StatusCode, body: &str, config: &Config) -> Response<Bytes> {
    let mut headers = HeaderMap::new();
    headers.append(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.append(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.append(header::CONNECTION, HeaderValue::from_static("close"));
    if status == StatusCode::UPGRADE_REQUIRED {
        headers.append(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.append(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
    if let Some(server) = &config.server_header {
        if let Ok(v) = HeaderValue::from_str(server) {
            headers.append(header::SERVER, v);
        }
    }
    let mut resp = Response::new(Bytes::copy_from_slice(body.as_bytes()));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

// ---------------------------------------------------------------------------------------------
// Sec-WebSocket-Extensions (RFC 6455 §9.1)
// ---------------------------------------------------------------------------------------------

/// A cursor over a `Sec-WebSocket-Extensions` value.
struct ExtParser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl ExtParser<'_> {
    fn error(&self, what: &str) -> HandshakeError {
        HandshakeError::InvalidHeader {
            name: "Sec-WebSocket-Extensions",
            reason: format!("{what} at position {}", self.pos),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn token(&mut self, what: &str) -> Result<String, HandshakeError> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        match self.bytes.get(start..self.pos) {
            Some(t) if !t.is_empty() => Ok(String::from_utf8_lossy(t).into_owned()),
            _ => Err(self.error(&format!("expected {what}"))),
        }
    }

    /// RFC 7230 §3.2.6: `quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE`; the opening
    /// quote is at `pos`.
    fn quoted_string(&mut self) -> Result<String, HandshakeError> {
        self.pos += 1;
        let mut value = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated quoted string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(String::from_utf8_lossy(&value).into_owned());
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b) if b == b'\t' || b == b' ' || b >= 0x21 && b != 0x7f => {
                            value.push(b);
                            self.pos += 1;
                        }
                        _ => return Err(self.error("invalid escape in quoted string")),
                    }
                }
                Some(b) if b == b'\t' || b == b' ' || b >= 0x21 && b != 0x7f => {
                    value.push(b);
                    self.pos += 1;
                }
                Some(_) => return Err(self.error("invalid character in quoted string")),
            }
        }
    }

    /// `param = token [ "=" (token / quoted-string) ]`; RFC 6455 §9.1: a quoted value must
    /// be a token once unquoted.
    fn param(&mut self) -> Result<(String, Option<String>), HandshakeError> {
        let name = self.token("parameter name")?;
        self.skip_ows();
        if self.peek() != Some(b'=') {
            return Ok((name, None));
        }
        self.pos += 1;
        self.skip_ows();
        let value = if self.peek() == Some(b'"') {
            let start = self.pos;
            let value = self.quoted_string()?;
            if !is_token(&value) {
                self.pos = start;
                return Err(self.error("quoted parameter value that is not a token"));
            }
            value
        } else {
            self.token("parameter value")?
        };
        Ok((name, Some(value)))
    }

    /// `extension = token *( OWS ";" OWS param )`, at a non-empty list element.
    fn extension(&mut self) -> Result<Extension, HandshakeError> {
        let name = self.token("extension name")?;
        let mut params = Vec::new();
        loop {
            self.skip_ows();
            match self.peek() {
                None | Some(b',') => break,
                Some(b';') => {
                    self.pos += 1;
                    self.skip_ows();
                    params.push(self.param()?);
                }
                Some(_) => return Err(self.error("expected ';' or ','")),
            }
        }
        Ok(Extension { name, params })
    }
}

/// Parses a `Sec-WebSocket-Extensions` value (RFC 6455 §9.1, with RFC 7230 §7 lists):
///
/// ```text
/// ext-list  = 1#extension
/// extension = token *( ";" param )
/// param     = token [ "=" ( token / quoted-string ) ]
/// ```
///
/// with optional whitespace around separators. Quoted values are unquoted (backslash escapes
/// resolved) and must then be tokens, as RFC 6455 §9.1 requires. Empty list elements
/// (`a, , b`) are skipped, but a value without any extension is an error. Parameters are kept
/// in order, repeated ones too (the extension decides whether that is valid).
///
/// Errors are [`HandshakeError::InvalidHeader`] naming `Sec-WebSocket-Extensions`.
pub fn parse_extensions(value: &str) -> Result<Vec<Extension>, HandshakeError> {
    let mut p = ExtParser {
        bytes: value.as_bytes(),
        pos: 0,
    };
    let mut extensions = Vec::new();
    loop {
        p.skip_ows();
        match p.peek() {
            None => break,
            Some(b',') => p.pos += 1,
            Some(_) => {
                extensions.push(p.extension()?);
                // `extension` stops at the end or at a ','.
                if p.peek() == Some(b',') {
                    p.pos += 1;
                }
            }
        }
    }
    if extensions.is_empty() {
        return Err(p.error("expected at least one extension"));
    }
    Ok(extensions)
}

/// Formats extensions for `Sec-WebSocket-Extensions`: `name; p1; p2=v2, name2`. A value that
/// is not a token is written as a quoted string (which RFC 6455 §9.1 peers will reject, but the
/// output stays well-formed HTTP).
pub fn format_extensions(exts: &[Extension]) -> String {
    let mut out = String::new();
    for (i, ext) in exts.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&ext.name);
        for (name, value) in &ext.params {
            out.push_str("; ");
            out.push_str(name);
            if let Some(value) = value {
                out.push('=');
                if is_token(value) {
                    out.push_str(value);
                } else {
                    out.push('"');
                    for c in value.chars() {
                        if c == '"' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push('"');
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_lengths_stop_at_end_of_head() {
        // The line after the head is not measured.
        assert!(check_line_lengths(b"GET / HTTP/1.1\r\n\r\nxxxxxxxxxxxxxxxxxxxxx", 14).is_ok());
        // Leading empty lines do not end the head.
        assert!(check_line_lengths(b"\r\nGET / HTTP/1.1\r\n\r\n", 14).is_ok());
        assert!(check_line_lengths(b"\r\nGET / HTTP/1.1\r\n\r\n", 13).is_err());
        // A partial line ending in CR is measured without it.
        assert!(check_line_lengths(b"GET / HTTP/1.1\r", 14).is_ok());
        assert!(check_line_lengths(b"GET / HTTP/1.1x", 14).is_err());
        // Bare LF terminators.
        assert!(check_line_lengths(b"GET / HTTP/1.1\nab\n\n", 14).is_ok());
    }

    #[test]
    fn trim_ows_edges() {
        assert_eq!(trim_ows(b""), b"");
        assert_eq!(trim_ows(b" \t "), b"");
        assert_eq!(trim_ows(b" a b\t"), b"a b");
        assert_eq!(trim_ows(b"x"), b"x");
    }

    #[test]
    fn header_storage_is_bounded_by_input() {
        let mut config = Config::new();
        config.max_headers(1_000_000);
        assert_eq!(header_storage(b"0123456789", &config).len(), 4);
        config.max_headers(2);
        assert_eq!(header_storage(&[0; 100], &config).len(), 2);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b"), b"a b");
        assert_eq!(percent_decode("%3a%3A"), b"::");
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
    }

    #[test]
    fn upgrade_requests_are_recognised_by_their_upgrade_header() {
        let mut headers = HeaderMap::new();
        assert!(!is_upgrade_request(&headers));
        headers.append(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_upgrade_request(&headers));
        headers.append(header::UPGRADE, HeaderValue::from_static("foo, WebSocket"));
        assert!(is_upgrade_request(&headers));
    }

    #[test]
    fn answer_accepts_or_rejects_with_the_status_of_the_error() {
        let config = Config::new();
        let request = |version: &'static str| {
            Request::builder()
                .uri("/")
                .header("host", "example.com")
                .header("upgrade", "websocket")
                .header("connection", "Upgrade")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                .header("sec-websocket-version", version)
                .body(())
                .unwrap()
        };
        let (response, result) = answer(&request("13"), &config, None);
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            response.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(result.is_ok());
        let (response, result) = answer(&request("8"), &config, None);
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(result, Err(HandshakeError::UnsupportedVersion));
        let body = std::str::from_utf8(response.body()).unwrap();
        assert!(body.contains("unsupported WebSocket version"), "{body}");
    }

    #[test]
    fn header_names_are_capitalised() {
        let mut out = Vec::new();
        write_header_name(&HeaderName::from_static("sec-websocket-accept"), &mut out);
        out.push(b' ');
        write_header_name(&HeaderName::from_static("www-authenticate"), &mut out);
        out.push(b' ');
        write_header_name(&HeaderName::from_static("x-"), &mut out);
        assert_eq!(out, b"Sec-WebSocket-Accept WWW-Authenticate X-");
    }
}

#[cfg(test)]
mod target_tests {
    use super::*;

    #[test]
    fn targets_of_ws_uris() {
        let t = |u: &str| Target::from_uri(&u.parse().unwrap());
        assert_eq!(
            t("ws://example.com/chat").unwrap(),
            Target {
                host: "example.com".into(),
                port: 80,
                secure: false
            }
        );
        assert_eq!(
            t("wss://example.com:8443/").unwrap(),
            Target {
                host: "example.com".into(),
                port: 8443,
                secure: true
            }
        );
        assert_eq!(t("wss://[::1]/").unwrap().host, "::1");
        assert_eq!(t("wss://[::1]/").unwrap().port, 443);
        assert!(t("http://example.com/").is_err());
        assert!(t("/just/a/path").is_err());
    }
}
