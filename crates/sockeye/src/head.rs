//! The handshake's request and response, kept for [`Connection::request`] and
//! [`Connection::response`](crate::Connection::response) at a fraction of their parsed size.
//!
//! A parsed `http` head costs 1 to 2 KB per connection (a header map with room to grow, one
//! allocation per header value), several times what an idle connection needs otherwise. So
//! each head is kept as its serialised bytes (a few hundred) and parsed again, once, the first
//! time the application asks for it. A handler that never looks at the request pays nothing.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Request, Response};

use crate::proto::{handshake, Config};

/// A request or response head: its bytes, and the parsed head once asked for.
pub(crate) struct Head<T> {
    raw: Box<[u8]>,
    parsed: OnceLock<Box<T>>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Head<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Head")
            .field("bytes", &self.raw.len())
            .field("parsed", &self.parsed.get().is_some())
            .finish()
    }
}

/// Limits for parsing a head again: it was accepted once under the connection's limits,
/// whatever they were.
fn permissive() -> Config {
    let mut config = Config::new();
    config
        .max_line_length(usize::MAX)
        .max_headers(usize::MAX)
        .max_handshake_size(usize::MAX);
    config
}

impl From<Request<()>> for Head<Request<()>> {
    fn from(request: Request<()>) -> Self {
        let mut raw = Vec::new();
        handshake::write_request(&request, &mut raw);
        let parsed = OnceLock::new();
        // Requests the handshake read have a path-only URI; one built by a client may be
        // absolute (ws://host/path), which the bytes do not keep: parsed now, kept as is.
        if request.uri().scheme().is_some() {
            let _ = parsed.set(Box::new(request));
        }
        Head {
            raw: raw.into_boxed_slice(),
            parsed,
        }
    }
}

impl From<Response<()>> for Head<Response<()>> {
    fn from(response: Response<()>) -> Self {
        let (parts, ()) = response.into_parts();
        let mut raw = Vec::new();
        handshake::write_response(&Response::from_parts(parts, Bytes::new()), &mut raw);
        Head {
            raw: raw.into_boxed_slice(),
            parsed: OnceLock::new(),
        }
    }
}

impl Head<Request<()>> {
    /// The request, parsed on first use.
    pub(crate) fn get(&self) -> &Request<()> {
        self.parsed.get_or_init(|| {
            let parsed = handshake::parse_request(&self.raw, &permissive());
            Box::new(match parsed {
                Ok(Some((request, _))) => request,
                // Written by `write_request` from a valid request: cannot happen.
                _ => Request::default(),
            })
        })
    }
}

impl Head<Response<()>> {
    /// The response, parsed on first use.
    pub(crate) fn get(&self) -> &Response<()> {
        self.parsed.get_or_init(|| {
            let parsed = handshake::parse_response(&self.raw, &permissive());
            Box::new(match parsed {
                Ok(Some((response, _))) => response,
                _ => Response::default(),
            })
        })
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
            ResponseHead::Rebuilt { config, parsed } => parsed.get_or_init(|| {
                let (response, _) = handshake::answer(request, config, Some(subprotocol));
                let (parts, _) = response.into_parts();
                Box::new(Response::from_parts(parts, ()))
            }),
        }
    }
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
        let head = Head::from(request.clone());
        let again = head.get();
        assert_eq!(again.method(), request.method());
        assert_eq!(again.uri(), request.uri());
        assert_eq!(again.headers(), request.headers());
        assert!(head.raw.len() < 200, "{}", head.raw.len());
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
    }
}
