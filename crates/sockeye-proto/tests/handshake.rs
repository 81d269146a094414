//! Tests of the opening handshake (RFC 6455 §4), grouped by RFC section.

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use proptest::prelude::*;
use sockeye_proto::extensions::Extension;
use sockeye_proto::handshake::*;
use sockeye_proto::{Config, HandshakeError, Limit, LimitExceeded};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A configuration that passes without the permessage-deflate module.
fn config() -> Config {
    let mut config = Config::new();
    config.compression(None);
    config
}

/// The headers Chrome sends, in its order.
const CHROME: &str = "GET /chat?room=1 HTTP/1.1\r\n\
    Host: example.com:8000\r\n\
    Connection: Upgrade\r\n\
    Pragma: no-cache\r\n\
    Cache-Control: no-cache\r\n\
    User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
    Upgrade: websocket\r\n\
    Origin: http://example.com\r\n\
    Sec-WebSocket-Version: 13\r\n\
    Accept-Encoding: gzip, deflate, br, zstd\r\n\
    Accept-Language: en-US,en;q=0.9\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
    \r\n";

fn parse(raw: &str) -> Request<()> {
    let (req, n) = parse_request(raw.as_bytes(), &config())
        .expect("valid request")
        .expect("complete request");
    assert_eq!(n, raw.len());
    req
}

/// A minimal valid request with `extra` headers added and the header named `without` removed.
fn request_with(without: &str, extra: &str) -> String {
    let mut raw = String::from("GET / HTTP/1.1\r\n");
    for line in [
        "Host: example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ] {
        if !without.is_empty() && line.starts_with(without) {
            continue;
        }
        raw.push_str(line);
        raw.push_str("\r\n");
    }
    raw.push_str(extra);
    raw.push_str("\r\n");
    raw
}

fn check(raw: &str, config: &Config) -> Result<ServerAccept, HandshakeError> {
    check_request(&parse(raw), config, None)
}

fn assert_rejected(raw: &str, config: &Config, header: &str, status: StatusCode) {
    match check(raw, config) {
        Err(e @ HandshakeError::InvalidHeader { name, .. }) => {
            assert_eq!(name, header, "{e}");
            assert_eq!(e.status(), status);
        }
        other => panic!("expected InvalidHeader {header}, got {other:?}"),
    }
}

fn serialize(resp: &Response<Bytes>) -> String {
    let mut out = Vec::new();
    write_response(resp, &mut out);
    String::from_utf8(out).expect("ASCII response")
}

// ---------------------------------------------------------------------------------------------
// RFC 6455 §1.3 / §4.2.2 item 5.4: Sec-WebSocket-Accept
// ---------------------------------------------------------------------------------------------

#[test]
fn rfc_example_accept_key() {
    assert_eq!(accept_key(KEY.as_bytes()), ACCEPT);
}

#[test]
fn generated_key_is_base64_of_16_bytes() {
    assert_eq!(generate_key(*b"the sample nonce"), KEY);
}

// ---------------------------------------------------------------------------------------------
// RFC 6455 §4.2.1: reading the client's opening handshake
// ---------------------------------------------------------------------------------------------

#[test]
fn chrome_request_is_accepted() {
    let req = parse(CHROME);
    assert_eq!(req.method(), http::Method::GET);
    assert_eq!(req.uri(), "/chat?room=1");
    assert_eq!(req.version(), http::Version::HTTP_11);
    assert!(req.headers()["user-agent"]
        .to_str()
        .unwrap()
        .starts_with("Mozilla/5.0 (X11"));

    let accept = check_request(&req, &config(), None).unwrap();
    assert_eq!(accept.key, KEY);
    assert_eq!(accept.subprotocol, None);
    assert_eq!(accept.deflate, None);

    let resp = build_response(&accept, &config());
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let text = serialize(&resp);
    assert!(
        text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nUpgrade: websocket\r\n"), "{text}");
    assert!(text.contains("\r\nConnection: Upgrade\r\n"), "{text}");
    assert!(
        text.contains(&format!("\r\nSec-WebSocket-Accept: {ACCEPT}\r\n")),
        "{text}"
    );
    assert!(text.contains("\r\nServer: sockeye/"), "{text}");
    assert!(!text.contains("Sec-WebSocket-Extensions"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text}");
}

#[test]
fn repeated_headers_are_kept_in_order() {
    let req = parse(&request_with("", "X-A: 1\r\nX-B: 2\r\nX-A: 3\r\n"));
    let values: Vec<_> = req.headers().get_all("x-a").iter().collect();
    assert_eq!(values, ["1", "3"]);
}

#[test]
fn minimal_request_is_accepted() {
    let accept = check(&request_with("", ""), &config()).unwrap();
    assert_eq!(accept.key, KEY);
}

// §4.2.1 item 1: method GET (405), HTTP/1.1.
#[test]
fn rejects_other_methods_with_405() {
    let raw = request_with("", "").replacen("GET", "POST", 1);
    let e = check(&raw, &config()).unwrap_err();
    assert_eq!(e, HandshakeError::InvalidMethod);
    assert_eq!(e.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn rejects_http_1_0() {
    let raw = request_with("", "").replacen("HTTP/1.1", "HTTP/1.0", 1);
    let e = parse_request(raw.as_bytes(), &config()).unwrap_err();
    assert_eq!(e, HandshakeError::InvalidHttp("HTTP/1.1 required".into()));
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);

    let mut req = parse(&request_with("", ""));
    *req.version_mut() = http::Version::HTTP_10;
    assert!(matches!(
        check_request(&req, &config(), None),
        Err(HandshakeError::InvalidHttp(_))
    ));
}

#[test]
fn rejects_malformed_http() {
    for raw in [
        "GET / HTTP/1.1\r\nHost example.com\r\n\r\n",
        "GET / HTTP/2.0\r\n\r\n",
        "GET  HTTP/1.1\r\n\r\n",
        "\x00\x01\x02\r\n\r\n",
        "GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
    ] {
        let e = parse_request(raw.as_bytes(), &config()).unwrap_err();
        assert!(
            matches!(e, HandshakeError::InvalidHttp(_)),
            "{raw:?}: {e:?}"
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}

#[test]
fn rejects_header_values_that_http_refuses() {
    // httparse accepts DEL in values; http::HeaderValue does not.
    let raw = "GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n";
    let e = parse_request(raw.as_bytes(), &config()).unwrap_err();
    assert!(matches!(e, HandshakeError::InvalidHttp(_)), "{e:?}");
}

// §4.1: the request is a head only; what follows it is frames.
#[test]
fn rejects_request_bodies() {
    let c = config();
    check(&request_with("", "Content-Length: 0\r\n"), &c).unwrap();
    for extra in [
        "Content-Length: 5\r\n",
        "Transfer-Encoding: chunked\r\n",
        "Content-Length: 0\r\nContent-Length: 1\r\n",
    ] {
        let e = check(&request_with("", extra), &c).unwrap_err();
        assert!(
            matches!(e, HandshakeError::InvalidHttp(_)),
            "{extra:?}: {e:?}"
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}

#[test]
fn header_tokens_split_lists() {
    let req = parse(&request_with(
        "Connection",
        "Connection: keep-alive , ,Upgrade\r\nConnection:\tclose\r\n",
    ));
    let tokens: Vec<&[u8]> = header_tokens(req.headers(), "connection").collect();
    assert_eq!(tokens, [&b"keep-alive"[..], b"Upgrade", b"close"]);
    assert_eq!(header_tokens(req.headers(), "x-missing").count(), 0);
}

// §4.2.1 item 2: Host.
#[test]
fn rejects_missing_or_repeated_host() {
    let c = config();
    assert_rejected(
        &request_with("Host", ""),
        &c,
        "Host",
        StatusCode::BAD_REQUEST,
    );
    assert_rejected(
        &request_with("", "Host: other.example\r\n"),
        &c,
        "Host",
        StatusCode::BAD_REQUEST,
    );
}

// §4.2.1 item 3: Upgrade: websocket (426).
#[test]
fn rejects_missing_upgrade_with_426() {
    let c = config();
    assert_rejected(
        &request_with("Upgrade", ""),
        &c,
        "Upgrade",
        StatusCode::UPGRADE_REQUIRED,
    );
    assert_rejected(
        &request_with("Upgrade", "Upgrade: h2c\r\n"),
        &c,
        "Upgrade",
        StatusCode::UPGRADE_REQUIRED,
    );
}

#[test]
fn upgrade_token_is_case_insensitive_and_may_be_in_a_list() {
    let c = config();
    check(&request_with("Upgrade", "Upgrade: WebSocket\r\n"), &c).unwrap();
    check(&request_with("Upgrade", "Upgrade: h2c, websocket\r\n"), &c).unwrap();
    check(
        &request_with("Upgrade", "Upgrade: h2c\r\nUpgrade: websocket\r\n"),
        &c,
    )
    .unwrap();
}

// §4.2.1 item 4: Connection: Upgrade.
#[test]
fn connection_token_is_found_in_a_list() {
    let c = config();
    check(
        &request_with("Connection", "Connection: keep-alive, Upgrade\r\n"),
        &c,
    )
    .unwrap();
    check(&request_with("Connection", "Connection: upgrade\r\n"), &c).unwrap();
    check(
        &request_with("Connection", "Connection: close\r\nConnection: UPGRADE\r\n"),
        &c,
    )
    .unwrap();
}

#[test]
fn rejects_missing_connection_upgrade() {
    let c = config();
    assert_rejected(
        &request_with("Connection", ""),
        &c,
        "Connection",
        StatusCode::BAD_REQUEST,
    );
    assert_rejected(
        &request_with("Connection", "Connection: keep-alive\r\n"),
        &c,
        "Connection",
        StatusCode::BAD_REQUEST,
    );
    // Not a substring match.
    assert_rejected(
        &request_with("Connection", "Connection: upgrades\r\n"),
        &c,
        "Connection",
        StatusCode::BAD_REQUEST,
    );
}

// §4.2.1 item 5: Sec-WebSocket-Key, base64 of 16 bytes.
#[test]
fn rejects_bad_keys() {
    let c = config();
    let name = "Sec-WebSocket-Key";
    assert_rejected(&request_with(name, ""), &c, name, StatusCode::BAD_REQUEST);
    for bad in [
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n",     // no padding
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZXg=\r\n",   // 17 bytes
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j\r\n",       // 15 bytes
        "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==\r\n",   // not base64
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR==\r\n",   // non-canonical trailing bits
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    ] {
        assert_rejected(&request_with(name, bad), &c, name, StatusCode::BAD_REQUEST);
    }
}

// §4.2.1 item 6, §4.4: Sec-WebSocket-Version: 13 (426).
#[test]
fn rejects_other_versions_with_426() {
    let c = config();
    for extra in [
        "",
        "Sec-WebSocket-Version: 8\r\n",
        "Sec-WebSocket-Version: 13, 8\r\n",
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 8\r\n",
    ] {
        let e = check(&request_with("Sec-WebSocket-Version", extra), &c).unwrap_err();
        assert_eq!(e, HandshakeError::UnsupportedVersion, "{extra:?}");
        assert_eq!(e.status(), StatusCode::UPGRADE_REQUIRED);
    }
}

// §4.2.1 item 7, §4.2.2 item 4 (§10.2): Origin (403).
#[test]
fn origins_are_checked_when_configured() {
    let mut c = config();
    c.origins(Some(vec![Some("https://good.example".into())]));
    check(&request_with("", "Origin: https://good.example\r\n"), &c).unwrap();

    let e = check(&request_with("", "Origin: https://evil.example\r\n"), &c).unwrap_err();
    assert_eq!(e, HandshakeError::ForbiddenOrigin);
    assert_eq!(e.status(), StatusCode::FORBIDDEN);

    // No Origin: refused unless None is in the list.
    let e = check(&request_with("", ""), &c).unwrap_err();
    assert_eq!(e, HandshakeError::ForbiddenOrigin);
    c.origins(Some(vec![Some("https://good.example".into()), None]));
    check(&request_with("", ""), &c).unwrap();

    assert_rejected(
        &request_with(
            "",
            "Origin: https://good.example\r\nOrigin: https://good.example\r\n",
        ),
        &c,
        "Origin",
        StatusCode::BAD_REQUEST,
    );

    // Without a list, any origin passes.
    check(
        &request_with("", "Origin: https://evil.example\r\n"),
        &config(),
    )
    .unwrap();
}

// §4.2.1 item 8, §4.2.2 item 5.4 /subprotocol/.
#[test]
fn subprotocol_default_follows_server_preference() {
    let mut c = config();
    c.subprotocols(["chat.v2", "chat.v1"]);
    let raw = request_with("", "Sec-WebSocket-Protocol: chat.v1, chat.v2\r\n");
    assert_eq!(
        check(&raw, &c).unwrap().subprotocol.as_deref(),
        Some("chat.v2")
    );

    // Offers across repeated headers, with whitespace.
    let raw = request_with(
        "",
        "Sec-WebSocket-Protocol:  other ,\r\nSec-WebSocket-Protocol: chat.v1\r\n",
    );
    assert_eq!(
        check(&raw, &c).unwrap().subprotocol.as_deref(),
        Some("chat.v1")
    );
    assert_eq!(offered_subprotocols(&parse(&raw)), ["other", "chat.v1"]);

    // The client offered none: no subprotocol.
    assert_eq!(check(&request_with("", ""), &c).unwrap().subprotocol, None);

    // The server supports none: no subprotocol.
    let raw = request_with("", "Sec-WebSocket-Protocol: chat.v1\r\n");
    assert_eq!(check(&raw, &config()).unwrap().subprotocol, None);
}

#[test]
fn subprotocol_mismatch_is_a_400() {
    let mut c = config();
    c.subprotocols(["chat.v2"]);
    let raw = request_with("", "Sec-WebSocket-Protocol: chat.v1, chat.v0\r\n");
    let e = check(&raw, &c).unwrap_err();
    assert!(
        matches!(&e, HandshakeError::Negotiation(m) if m.contains("no supported subprotocol")),
        "{e:?}"
    );
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn subprotocol_chosen_by_the_application() {
    let c = config();
    let req = parse(&request_with("", "Sec-WebSocket-Protocol: a, b\r\n"));
    let accept = check_request(&req, &c, Some(Some("b"))).unwrap();
    assert_eq!(accept.subprotocol.as_deref(), Some("b"));
    assert_eq!(
        check_request(&req, &c, Some(None)).unwrap().subprotocol,
        None
    );
    let e = check_request(&req, &c, Some(Some("c"))).unwrap_err();
    assert!(matches!(e, HandshakeError::Negotiation(_)), "{e:?}");
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);

    let resp = serialize(&build_response(&accept, &c));
    assert!(resp.contains("\r\nSec-WebSocket-Protocol: b\r\n"), "{resp}");
}

#[test]
fn subprotocols_must_be_tokens() {
    let raw = request_with("", "Sec-WebSocket-Protocol: a b\r\n");
    assert_rejected(
        &raw,
        &config(),
        "Sec-WebSocket-Protocol",
        StatusCode::BAD_REQUEST,
    );
    assert!(offered_subprotocols(&parse(&raw)).is_empty());
}

// §4.2.1 item 9, §9.1: extensions.
#[test]
fn extensions_ignored_without_compression() {
    // Not even parsed when nothing can be negotiated.
    let raw = request_with("", "Sec-WebSocket-Extensions: x-foo; ;;\r\n");
    assert_eq!(check(&raw, &config()).unwrap().deflate, None);
}

// ---------------------------------------------------------------------------------------------
// RFC 6455 §4.2.2: the server's response; §4.4 and HTTP rejections
// ---------------------------------------------------------------------------------------------

#[test]
fn response_without_server_header() {
    let mut c = config();
    c.server_header(None);
    let accept = check(&request_with("", ""), &c).unwrap();
    let resp = build_response(&accept, &c);
    assert!(resp.headers().get("server").is_none());
    assert!(resp.body().is_empty());
}

#[test]
fn reject_426_advertises_version() {
    let resp = reject(StatusCode::UPGRADE_REQUIRED, "Upgrade required", &config());
    assert_eq!(resp.status(), StatusCode::UPGRADE_REQUIRED);
    let h = resp.headers();
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["sec-websocket-version"], "13");
    assert_eq!(h["content-length"], "16");
    assert_eq!(h["connection"], "close");
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    let text = serialize(&resp);
    assert!(
        text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\nUpgrade required"), "{text}");
}

#[test]
fn reject_other_statuses() {
    let mut c = config();
    c.server_header(Some("test/1".into()));
    let resp = reject(StatusCode::FORBIDDEN, "nope ✗", &c);
    let h = resp.headers();
    assert!(h.get("upgrade").is_none());
    assert!(h.get("sec-websocket-version").is_none());
    assert_eq!(h["content-length"], "8");
    assert_eq!(h["server"], "test/1");
    assert_eq!(resp.body().as_ref(), "nope ✗".as_bytes());
    c.server_header(None);
    assert!(reject(StatusCode::BAD_REQUEST, "", &c)
        .headers()
        .get("server")
        .is_none());
}

// ---------------------------------------------------------------------------------------------
// Limits of the HTTP parser (431)
// ---------------------------------------------------------------------------------------------

#[test]
fn line_length_at_and_over_the_limit() {
    let raw = request_with("", "X-Long: aaaaaaaaaa\r\n"); // "X-Long: " + 10 = 18 bytes
    let mut c = config();
    c.max_line_length(44); // "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==" is 43 bytes
    assert!(parse_request(raw.as_bytes(), &c).unwrap().is_some());
    c.max_line_length(43);
    assert!(parse_request(raw.as_bytes(), &c).unwrap().is_some());
    c.max_line_length(42);
    let e = parse_request(raw.as_bytes(), &c).unwrap_err();
    assert_eq!(
        e,
        HandshakeError::LimitExceeded(LimitExceeded {
            limit: Limit::HttpLine,
            max: 42
        })
    );
    assert_eq!(e.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[test]
fn partial_line_over_the_limit_fails_at_once() {
    let mut c = config();
    c.max_line_length(20);
    let at = "GET / HTTP/1.1\r\nX-A: 123456789012345"; // partial line of 20 bytes
    assert!(parse_request(at.as_bytes(), &c).unwrap().is_none());
    let over = format!("{at}6");
    let e = parse_request(over.as_bytes(), &c).unwrap_err();
    assert_eq!(e.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // The same for a request line that never ends.
    let e = parse_request(&[b'G'; 21], &c).unwrap_err();
    assert!(matches!(
        e,
        HandshakeError::LimitExceeded(LimitExceeded {
            limit: Limit::HttpLine,
            max: 20
        })
    ));
    // And for responses.
    let e = parse_response(b"HTTP/1.1 101 Switching Protocols", &c).unwrap_err();
    assert!(matches!(
        e,
        HandshakeError::LimitExceeded(LimitExceeded {
            limit: Limit::HttpLine,
            ..
        })
    ));
}

#[test]
fn header_count_at_and_over_the_limit() {
    let raw = request_with("", ""); // 5 headers
    let mut c = config();
    c.max_headers(5);
    assert!(parse_request(raw.as_bytes(), &c).unwrap().is_some());
    c.max_headers(4);
    let e = parse_request(raw.as_bytes(), &c).unwrap_err();
    assert_eq!(
        e,
        HandshakeError::LimitExceeded(LimitExceeded {
            limit: Limit::Headers,
            max: 4
        })
    );
    assert_eq!(e.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // Even while the head is incomplete.
    let partial = &raw[..raw.len() - 2];
    assert!(parse_request(partial.as_bytes(), &c).is_err());

    let resp = "HTTP/1.1 101 Switching Protocols\r\nA: 1\r\nB: 2\r\n\r\n";
    c.max_headers(2);
    assert!(parse_response(resp.as_bytes(), &c).unwrap().is_some());
    c.max_headers(1);
    assert!(matches!(
        parse_response(resp.as_bytes(), &c),
        Err(HandshakeError::LimitExceeded(LimitExceeded {
            limit: Limit::Headers,
            max: 1
        }))
    ));
}

#[test]
fn many_headers_with_a_large_limit() {
    let mut raw = String::from("GET / HTTP/1.1\r\n");
    for i in 0..1000 {
        raw.push_str(&format!("X-{i}: {i}\r\n"));
    }
    raw.push_str("\r\n");
    let mut c = config();
    c.max_headers(usize::MAX);
    let (req, _) = parse_request(raw.as_bytes(), &c).unwrap().unwrap();
    assert_eq!(req.headers().len(), 1000);
}

#[test]
fn handshake_size_at_and_over_the_limit() {
    let raw = request_with("", "");
    let len = raw.len();
    let mut c = config();

    // A complete head exactly at the limit, and one byte over.
    c.max_handshake_size(len);
    assert!(parse_request(raw.as_bytes(), &c).unwrap().is_some());
    c.max_handshake_size(len - 1);
    let e = parse_request(raw.as_bytes(), &c).unwrap_err();
    assert_eq!(
        e,
        HandshakeError::LimitExceeded(LimitExceeded {
            limit: Limit::HandshakeSize,
            max: len - 1
        })
    );
    assert_eq!(e.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // An incomplete head: buffered up to the limit, an error one byte over.
    let partial = &raw.as_bytes()[..len - 2];
    c.max_handshake_size(len - 2);
    assert!(parse_request(partial, &c).unwrap().is_none());
    c.max_handshake_size(len - 3);
    assert!(matches!(
        parse_request(partial, &c),
        Err(HandshakeError::LimitExceeded(LimitExceeded {
            limit: Limit::HandshakeSize,
            ..
        }))
    ));
    assert!(matches!(
        parse_response(b"HTTP/1.1 101 OK\r\nA: b\r\n", &c),
        Ok(None)
    ));
    c.max_handshake_size(10);
    assert!(matches!(
        parse_response(b"HTTP/1.1 101 OK\r\nA: b\r\n", &c),
        Err(HandshakeError::LimitExceeded(LimitExceeded {
            limit: Limit::HandshakeSize,
            ..
        }))
    ));
}

// ---------------------------------------------------------------------------------------------
// Incremental parsing
// ---------------------------------------------------------------------------------------------

#[test]
fn every_prefix_of_a_request_is_incomplete() {
    let raw = CHROME.as_bytes();
    for i in 0..raw.len() {
        assert!(
            parse_request(&raw[..i], &config()).unwrap().is_none(),
            "split at {i}"
        );
    }
    let (_, n) = parse_request(raw, &config()).unwrap().unwrap();
    assert_eq!(n, raw.len());
}

#[test]
fn every_prefix_of_a_response_is_incomplete() {
    let accept = check(&request_with("", ""), &config()).unwrap();
    let raw = serialize(&build_response(&accept, &config()));
    for i in 0..raw.len() {
        assert!(
            parse_response(&raw.as_bytes()[..i], &config())
                .unwrap()
                .is_none(),
            "split at {i}"
        );
    }
}

#[test]
fn bytes_after_the_head_are_not_consumed() {
    let mut raw = CHROME.as_bytes().to_vec();
    raw.extend_from_slice(&[0x81, 0x85, 1, 2, 3, 4, b'\n']);
    raw.extend_from_slice(&[b'x'; 20000]); // no line limit beyond the head
    let (_, n) = parse_request(&raw, &config()).unwrap().unwrap();
    assert_eq!(n, CHROME.len());
}

#[test]
fn bare_lf_line_endings_are_accepted() {
    let raw = request_with("", "").replace("\r\n", "\n");
    let (req, n) = parse_request(raw.as_bytes(), &config()).unwrap().unwrap();
    assert_eq!(n, raw.len());
    check_request(&req, &config(), None).unwrap();
}

// ---------------------------------------------------------------------------------------------
// RFC 6455 §4.1: the client's request
// ---------------------------------------------------------------------------------------------

fn build(uri: &str, config: &Config) -> Result<Request<()>, HandshakeError> {
    build_request(&uri.parse::<Uri>().unwrap(), KEY, config)
}

fn host(uri: &str) -> String {
    build(uri, &config()).unwrap().headers()["host"]
        .to_str()
        .unwrap()
        .to_owned()
}

fn request_line(req: &Request<()>) -> String {
    let mut out = Vec::new();
    write_request(req, &mut out);
    let text = String::from_utf8(out).unwrap();
    text.split("\r\n").next().unwrap().to_owned()
}

#[test]
fn host_header_omits_default_ports() {
    assert_eq!(host("ws://example.com/"), "example.com");
    assert_eq!(host("ws://example.com:80/"), "example.com");
    assert_eq!(host("ws://example.com:443/"), "example.com:443");
    assert_eq!(host("wss://example.com:443/"), "example.com");
    assert_eq!(host("wss://example.com:80/"), "example.com:80");
    assert_eq!(host("ws://example.com:8080/"), "example.com:8080");
    assert_eq!(host("ws://[::1]:8080/"), "[::1]:8080");
    assert_eq!(host("wss://[2001:db8::1]/"), "[2001:db8::1]");
}

#[test]
fn request_target_defaults_to_slash() {
    let c = config();
    assert_eq!(
        request_line(&build("ws://example.com", &c).unwrap()),
        "GET / HTTP/1.1"
    );
    assert_eq!(
        request_line(&build("ws://example.com/a/b?x=1&y", &c).unwrap()),
        "GET /a/b?x=1&y HTTP/1.1"
    );
    assert_eq!(
        request_line(&build("ws://example.com?x=1", &c).unwrap()),
        "GET /?x=1 HTTP/1.1"
    );
}

#[test]
fn request_headers() {
    let mut c = config();
    c.subprotocols(["chat", "superchat"]);
    c.user_agent(Some("test-agent/1".into()));
    let req = build("wss://example.com/chat", &c).unwrap();
    let h = req.headers();
    assert_eq!(req.method(), http::Method::GET);
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "Upgrade");
    assert_eq!(h["sec-websocket-key"], KEY);
    assert_eq!(h["sec-websocket-version"], "13");
    assert_eq!(h["sec-websocket-protocol"], "chat, superchat");
    assert_eq!(h["user-agent"], "test-agent/1");
    assert!(h.get("sec-websocket-extensions").is_none());
    assert!(h.get("authorization").is_none());

    c.subprotocols(Vec::<String>::new());
    c.user_agent(None);
    let req = build("wss://example.com/chat", &c).unwrap();
    assert!(req.headers().get("sec-websocket-protocol").is_none());
    assert!(req.headers().get("user-agent").is_none());
}

#[test]
fn userinfo_becomes_basic_authorization() {
    let req = build("ws://user:pass@example.com/", &config()).unwrap();
    // base64("user:pass")
    assert_eq!(req.headers()["authorization"], "Basic dXNlcjpwYXNz");
    assert_eq!(req.headers()["host"], "example.com");
    let req = build("ws://us%40er:p%3Ass@example.com/", &config()).unwrap();
    // base64("us@er:p:ss")
    assert_eq!(req.headers()["authorization"], "Basic dXNAZXI6cDpzcw==");
    assert!(matches!(
        build("ws://user@example.com/", &config()),
        Err(HandshakeError::InvalidHttp(_))
    ));
}

#[test]
fn build_request_requires_ws_schemes() {
    for uri in ["http://example.com/", "https://example.com/", "/relative"] {
        let e = build(uri, &config()).unwrap_err();
        assert!(matches!(e, HandshakeError::InvalidHttp(_)), "{uri}: {e:?}");
    }
    build("WSS://example.com/", &config()).unwrap();
}

#[test]
fn build_request_rejects_invalid_header_values() {
    let mut c = config();
    c.user_agent(Some("bad\nagent".into()));
    assert!(build("ws://example.com/", &c).is_err());
    let mut c = config();
    c.subprotocols(["not a token"]);
    assert!(build("ws://example.com/", &c).is_err());
    assert!(build_request(&"ws://a/".parse().unwrap(), "bad\r\nkey", &config()).is_err());
}

// ---------------------------------------------------------------------------------------------
// Round trip: client request -> server -> client
// ---------------------------------------------------------------------------------------------

#[test]
fn round_trip() {
    let mut client = config();
    client.subprotocols(["v2.chat", "v1.chat"]);
    let mut server = config();
    server.subprotocols(["v1.chat", "v2.chat"]);
    let key = generate_key([7; 16]);

    let uri: Uri = "ws://example.com:9000/socket?token=abc".parse().unwrap();
    let req = build_request(&uri, &key, &client).unwrap();
    let mut wire = Vec::new();
    write_request(&req, &mut wire);
    wire.extend_from_slice(b"trailing frame bytes");

    let (parsed, n) = parse_request(&wire, &server).unwrap().unwrap();
    assert_eq!(&wire[n..], b"trailing frame bytes");
    assert_eq!(parsed.uri(), "/socket?token=abc");
    assert_eq!(parsed.headers()["host"], "example.com:9000");
    let accept = check_request(&parsed, &server, None).unwrap();
    assert_eq!(accept.key, key);
    assert_eq!(accept.subprotocol.as_deref(), Some("v1.chat"));

    let resp = build_response(&accept, &server);
    let mut wire = Vec::new();
    write_response(&resp, &mut wire);
    let (parsed, n) = parse_response(&wire, &client).unwrap().unwrap();
    assert_eq!(n, wire.len());
    assert_eq!(parsed.status(), StatusCode::SWITCHING_PROTOCOLS);
    let offered = offered_subprotocols(&req);
    assert_eq!(offered, ["v2.chat", "v1.chat"]);
    let result = check_response(&parsed, &key, &offered, &client).unwrap();
    assert_eq!(
        result,
        ClientAccept {
            subprotocol: Some("v1.chat".into()),
            deflate: None
        }
    );
}

// ---------------------------------------------------------------------------------------------
// RFC 6455 §4.1: the client's checks of the server's response
// ---------------------------------------------------------------------------------------------

fn response(extra: &str) -> Response<()> {
    let raw = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
    );
    let (resp, _) = parse_response(raw.as_bytes(), &config()).unwrap().unwrap();
    resp
}

fn accepted(extra: &str) -> Response<()> {
    response(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n{extra}"))
}

fn offered() -> Vec<String> {
    vec!["chat".into(), "superchat".into()]
}

#[test]
fn valid_response_is_accepted() {
    let r = check_response(&accepted(""), KEY, &offered(), &config()).unwrap();
    assert_eq!(
        r,
        ClientAccept {
            subprotocol: None,
            deflate: None
        }
    );
    let r = check_response(
        &accepted("Sec-WebSocket-Protocol: superchat\r\n"),
        KEY,
        &offered(),
        &config(),
    )
    .unwrap();
    assert_eq!(r.subprotocol.as_deref(), Some("superchat"));
}

#[test]
fn response_status_must_be_101() {
    let raw = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let (resp, _) = parse_response(raw.as_bytes(), &config()).unwrap().unwrap();
    assert!(matches!(
        check_response(&resp, KEY, &[], &config()),
        Err(HandshakeError::InvalidHttp(_))
    ));
}

#[test]
fn response_with_wrong_accept() {
    let c = config();
    let wrong = response("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOp=\r\n");
    assert_eq!(
        check_response(&wrong, KEY, &[], &c),
        Err(HandshakeError::InvalidAccept)
    );
    assert_eq!(
        check_response(&response(""), KEY, &[], &c),
        Err(HandshakeError::InvalidAccept)
    );
    let twice = accepted(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n"));
    assert_eq!(
        check_response(&twice, KEY, &[], &c),
        Err(HandshakeError::InvalidAccept)
    );
    // Right accept, other key.
    let other = generate_key([0; 16]);
    assert_eq!(
        check_response(&accepted(""), &other, &[], &c),
        Err(HandshakeError::InvalidAccept)
    );
}

#[test]
fn response_without_upgrade_or_connection() {
    let c = config();
    let raw = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
    );
    let (resp, _) = parse_response(raw.as_bytes(), &c).unwrap().unwrap();
    assert!(matches!(
        check_response(&resp, KEY, &[], &c),
        Err(HandshakeError::InvalidHeader {
            name: "Upgrade",
            ..
        })
    ));
    let raw = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
    );
    let (resp, _) = parse_response(raw.as_bytes(), &c).unwrap().unwrap();
    assert!(matches!(
        check_response(&resp, KEY, &[], &c),
        Err(HandshakeError::InvalidHeader {
            name: "Connection",
            ..
        })
    ));
}

#[test]
fn response_with_unexpected_subprotocol() {
    let c = config();
    for extra in [
        "Sec-WebSocket-Protocol: other\r\n",
        "Sec-WebSocket-Protocol: chat, superchat\r\n",
        "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: chat\r\n",
    ] {
        let e = check_response(&accepted(extra), KEY, &offered(), &c).unwrap_err();
        assert!(
            matches!(e, HandshakeError::Negotiation(_)),
            "{extra:?}: {e:?}"
        );
    }
    // Nothing offered, something chosen.
    let e =
        check_response(&accepted("Sec-WebSocket-Protocol: chat\r\n"), KEY, &[], &c).unwrap_err();
    assert!(matches!(e, HandshakeError::Negotiation(_)), "{e:?}");
}

#[test]
fn response_with_unoffered_extension() {
    let c = config(); // compression off: nothing offered
    for extra in [
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
        "Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n",
    ] {
        let e = check_response(&accepted(extra), KEY, &[], &c).unwrap_err();
        assert!(
            matches!(e, HandshakeError::Negotiation(_)),
            "{extra:?}: {e:?}"
        );
    }
    // Malformed extension header.
    let e = check_response(&accepted("Sec-WebSocket-Extensions: ;\r\n"), KEY, &[], &c).unwrap_err();
    assert!(
        matches!(
            e,
            HandshakeError::InvalidHeader {
                name: "Sec-WebSocket-Extensions",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn response_with_unknown_extension_even_when_offering_deflate() {
    // Fails before the deflate module is consulted.
    let c = Config::new();
    let e = check_response(
        &accepted("Sec-WebSocket-Extensions: x-foo\r\n"),
        KEY,
        &[],
        &c,
    )
    .unwrap_err();
    assert!(matches!(e, HandshakeError::Negotiation(_)), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// RFC 6455 §9.1: Sec-WebSocket-Extensions grammar
// ---------------------------------------------------------------------------------------------

fn ext(name: &str, params: &[(&str, Option<&str>)]) -> Extension {
    Extension {
        name: name.into(),
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
            .collect(),
    }
}

#[test]
fn parse_extensions_simple() {
    assert_eq!(
        parse_extensions("permessage-deflate").unwrap(),
        [ext("permessage-deflate", &[])]
    );
    assert_eq!(
        parse_extensions("permessage-deflate; client_max_window_bits; server_max_window_bits=10")
            .unwrap(),
        [ext(
            "permessage-deflate",
            &[
                ("client_max_window_bits", None),
                ("server_max_window_bits", Some("10"))
            ]
        )]
    );
}

#[test]
fn parse_extensions_tricky() {
    // Whitespace around every separator, tabs included.
    assert_eq!(
        parse_extensions(" \tfoo \t; a \t= \t1 ;b ,\tbar ").unwrap(),
        [
            ext("foo", &[("a", Some("1")), ("b", None)]),
            ext("bar", &[])
        ]
    );
    // Quoted values are unquoted, escapes resolved.
    assert_eq!(
        parse_extensions(r#"foo; a="10"; b="x\yz""#).unwrap(),
        [ext("foo", &[("a", Some("10")), ("b", Some("xyz"))])]
    );
    // Repeated params and repeated extensions are kept, in order.
    assert_eq!(
        parse_extensions("foo; a=1; a=2, foo, foo; a").unwrap(),
        [
            ext("foo", &[("a", Some("1")), ("a", Some("2"))]),
            ext("foo", &[]),
            ext("foo", &[("a", None)]),
        ]
    );
    // Empty list elements are tolerated.
    assert_eq!(
        parse_extensions(", a , , b ,").unwrap(),
        [ext("a", &[]), ext("b", &[])]
    );
}

#[test]
fn parse_extensions_rejects_bad_syntax() {
    for bad in [
        "",
        " , ",
        ";",
        "foo;",
        "foo; ;a",
        "foo bar",
        "foo; a b",
        "foo; a=",
        "foo; =1",
        "foo; a==1",
        "foo; a=1 2",
        "foo; a=\"1",
        "foo; a=\"\"",     // empty after unquoting: not a token
        "foo; a=\"1 2\"",  // a space: not a token
        "foo; a=\"\\\"\"", // a quote: not a token
        "foo; a=\"x\\",    // escape at the end
        "foo; a=\"x\"y",
        "fo\"o",
        "foo, bar;",
        "foo/1",
    ] {
        let e = parse_extensions(bad).unwrap_err();
        assert!(
            matches!(
                e,
                HandshakeError::InvalidHeader {
                    name: "Sec-WebSocket-Extensions",
                    ..
                }
            ),
            "{bad:?}: {e:?}"
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}

#[test]
fn format_extensions_output() {
    assert_eq!(format_extensions(&[]), "");
    assert_eq!(
        format_extensions(&[
            ext(
                "permessage-deflate",
                &[
                    ("client_no_context_takeover", None),
                    ("server_max_window_bits", Some("10"))
                ]
            ),
            ext("x-foo", &[]),
        ]),
        "permessage-deflate; client_no_context_takeover; server_max_window_bits=10, x-foo"
    );
    assert_eq!(
        format_extensions(&[ext("x", &[("a", Some("b c\"\\"))])]),
        r#"x; a="b c\"\\""#
    );
}

#[test]
fn format_then_parse_round_trips() {
    let exts = [
        ext("a", &[("p", None), ("q", Some("1"))]),
        ext("b", &[("r", Some("x.y"))]),
    ];
    assert_eq!(parse_extensions(&format_extensions(&exts)).unwrap(), exts);
}

// ---------------------------------------------------------------------------------------------
// RFC 7692 through the permessage-deflate module (enabled after merge)
// ---------------------------------------------------------------------------------------------

#[test]
fn chrome_request_negotiates_deflate() {
    let c = Config::new();
    let accept = check_request(&parse(CHROME), &c, None).unwrap();
    let (_, ext) = accept.deflate.clone().expect("deflate accepted");
    assert_eq!(ext.name, "permessage-deflate");
    let text = serialize(&build_response(&accept, &c));
    assert!(
        text.contains("\r\nSec-WebSocket-Extensions: permessage-deflate"),
        "{text}"
    );
}

#[test]
fn first_acceptable_deflate_offer_wins() {
    let c = Config::new();
    // The first offer is unacceptable (window bits out of range): the second is taken.
    let raw = request_with(
        "",
        "Sec-WebSocket-Extensions: x-foo, permessage-deflate; server_max_window_bits=7\r\n\
         Sec-WebSocket-Extensions: permessage-deflate\r\n",
    );
    let accept = check(&raw, &c);
    match accept {
        Ok(a) => assert!(a.deflate.is_some()),
        // accept_offer may treat an invalid offer as an error instead.
        Err(e) => assert!(matches!(
            e,
            HandshakeError::Negotiation(_) | HandshakeError::InvalidHeader { .. }
        )),
    }
}

#[test]
fn round_trip_with_deflate() {
    let c = Config::new();
    let key = generate_key([1; 16]);
    let req = build_request(&"ws://example.com/".parse().unwrap(), &key, &c).unwrap();
    assert!(req.headers()["sec-websocket-extensions"]
        .to_str()
        .unwrap()
        .starts_with("permessage-deflate"));
    let mut wire = Vec::new();
    write_request(&req, &mut wire);
    let (parsed, _) = parse_request(&wire, &c).unwrap().unwrap();
    let accept = check_request(&parsed, &c, None).unwrap();
    let (server_params, _) = accept.deflate.clone().expect("deflate accepted");
    let mut wire = Vec::new();
    write_response(&build_response(&accept, &c), &mut wire);
    let (resp, _) = parse_response(&wire, &c).unwrap().unwrap();
    let result = check_response(&resp, &key, &[], &c).unwrap();
    assert_eq!(result.deflate, Some(server_params));
}

#[test]
fn response_with_two_deflates_is_refused() {
    let c = Config::new();
    let e = check_response(
        &accepted("Sec-WebSocket-Extensions: permessage-deflate, permessage-deflate\r\n"),
        KEY,
        &[],
        &c,
    )
    .unwrap_err();
    assert!(matches!(e, HandshakeError::Negotiation(_)), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// Peer input never panics
// ---------------------------------------------------------------------------------------------

fn small_limits() -> Config {
    let mut c = config();
    c.max_line_length(64).max_headers(8).max_handshake_size(512);
    c
}

proptest! {
    #[test]
    fn parse_request_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_request(&buf, &config());
        if let Ok(Some((req, n))) = parse_request(&buf, &small_limits()) {
            prop_assert!(n <= buf.len());
            let _ = check_request(&req, &config(), None);
        }
    }

    #[test]
    fn parse_request_never_panics_on_near_valid_input(
        raw in "GET /[a-z?=&%]{0,8} HTTP/1\\.[01]\r\n(([A-Za-z-]{1,12}): ?[ -~]{0,20}\r\n){0,10}(\r\n)?",
    ) {
        if let Ok(Some((req, _))) = parse_request(raw.as_bytes(), &small_limits()) {
            let _ = check_request(&req, &config(), None);
            let _ = check_request(&req, &config(), Some(Some("x")));
        }
    }

    #[test]
    fn parse_response_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(Some((resp, _))) = parse_response(&buf, &small_limits()) {
            let _ = check_response(&resp, KEY, &[], &config());
        }
    }

    #[test]
    fn parse_extensions_never_panics(s in "[ -~\t]{0,40}") {
        if let Ok(exts) = parse_extensions(&s) {
            // Whatever parses formats back to something that parses the same.
            prop_assert_eq!(parse_extensions(&format_extensions(&exts)).unwrap(), exts);
        }
    }
}
