//! Client redirects, shared by both front ends without I/O: which answers are followed, where
//! to, with which headers, and when to stop.
//!
//! A client that gets a 301, 302, 303, 307 or 308 answer to its opening handshake connects
//! again to the `Location` (resolved against the URI that answered, RFC 3986 §5.2), at most
//! `max_redirects` times (default 10, as python-websockets). [`Chain`] is the state of one
//! `connect`: the URI to try, its target, the headers to send; each front end runs
//! `loop { attempt; chain.follow(error)? }` within one `open_timeout`.

use std::fmt;

use http::header::{HeaderName, HeaderValue, AUTHORIZATION, COOKIE, LOCATION};
use http::{StatusCode, Uri};

use crate::error::{Error, Result};
use crate::proto::handshake::Target;
use crate::proto::HandshakeError;

/// The default of `max_redirects`: python-websockets' `MAX_REDIRECTS`.
pub(crate) const DEFAULT_MAX_REDIRECTS: usize = 10;

/// Why a redirect was not followed ([`Error::Redirect`]).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectError {
    /// More than `max_redirects` redirects; `uri` is where the last one pointed.
    TooMany {
        /// The limit (`max_redirects`).
        max: usize,
        /// The URI the redirect after the last one allowed pointed to.
        uri: String,
    },
    /// A redirect pointed back to a URI already visited in this chain.
    Loop {
        /// The URI visited twice.
        uri: String,
    },
    /// A redirect from `wss://` to `ws://`: following it would send the request, and any
    /// credentials, in clear text.
    Insecure {
        /// The `wss://` URI that redirected.
        from: String,
        /// The `ws://` URI it pointed to.
        to: String,
    },
    /// A redirect status without a `Location` header.
    MissingLocation {
        /// The status of the answer.
        status: StatusCode,
        /// The URI that answered.
        uri: String,
    },
    /// A `Location` that is not a valid `ws://` or `wss://` URI (`http://` and `https://`
    /// included: a WebSocket server redirects to WebSocket URIs, as python-websockets
    /// requires).
    InvalidLocation {
        /// The `Location` header, as received (lossily decoded).
        location: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for RedirectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedirectError::TooMany { max, uri } => {
                write!(f, "more than {max} redirects (the next one to {uri})")
            }
            RedirectError::Loop { uri } => write!(f, "redirect loop: {uri} was visited already"),
            RedirectError::Insecure { from, to } => {
                write!(
                    f,
                    "refused to follow a redirect from {from} to non-secure {to}"
                )
            }
            RedirectError::MissingLocation { status, uri } => {
                write!(f, "{uri} answered {status} without a Location header")
            }
            RedirectError::InvalidLocation { location, reason } => {
                write!(f, "invalid redirect Location {location:?}: {reason}")
            }
        }
    }
}

impl std::error::Error for RedirectError {}

/// Whether a status is a redirect the client follows.
fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// The state of one `connect` through its redirects.
pub(crate) struct Chain {
    /// The URI to connect to now.
    pub(crate) uri: Uri,
    /// Its host, port and TLS.
    pub(crate) target: Target,
    /// The user's headers, less `Authorization` and `Cookie` once the origin has changed.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    max: usize,
    /// The URIs connected to so far, the current one last.
    visited: Vec<Uri>,
}

impl Chain {
    /// The chain of a `connect(uri)` with the builder's headers; an invalid URI is an error.
    pub(crate) fn new(
        uri: &str,
        headers: &[(HeaderName, HeaderValue)],
        max: usize,
    ) -> Result<Chain> {
        let (uri, target) = crate::client::target(uri)?;
        Ok(Chain {
            visited: vec![uri.clone()],
            uri,
            target,
            headers: headers.to_vec(),
            max,
        })
    }

    /// After an attempt failed with `error`: `Ok(())` when it was a redirect to follow (the
    /// chain now points to its `Location`), else the error to report (`error` itself, or an
    /// [`Error::Redirect`]).
    pub(crate) fn follow(&mut self, error: Error) -> Result<()> {
        let Error::Handshake(HandshakeError::UnexpectedStatus(response)) = &error else {
            return Err(error);
        };
        if self.max == 0 || !is_redirect(response.status) {
            return Err(error);
        }
        let status = response.status;
        let Some(location) = response.headers.get(LOCATION) else {
            return Err(redirect(RedirectError::MissingLocation {
                status,
                uri: shown(&self.uri),
            }));
        };
        let invalid = |reason: &str| {
            redirect(RedirectError::InvalidLocation {
                location: String::from_utf8_lossy(location.as_bytes()).into_owned(),
                reason: reason.to_owned(),
            })
        };
        let reference = location
            .to_str()
            .map_err(|_| invalid("not printable ASCII"))?;
        let next = resolve(&self.uri, reference).map_err(|reason| invalid(&reason))?;
        let (next, target) = match Target::from_uri(&next) {
            Ok(target) => (next, target),
            Err(_) => return Err(invalid("only ws:// and wss:// URIs can be followed")),
        };
        if self.target.secure && !target.secure {
            return Err(redirect(RedirectError::Insecure {
                from: shown(&self.uri),
                to: shown(&next),
            }));
        }
        let same_origin = same_origin(&self.target, &target);
        // python-websockets: the credentials of the URI go along to the same origin only.
        let next = match (userinfo(&self.uri), userinfo(&next)) {
            (Some(info), None) if same_origin => {
                with_userinfo(&next, info).map_err(|r| invalid(&r))?
            }
            _ => next,
        };
        if self.visited.contains(&next) {
            return Err(redirect(RedirectError::Loop { uri: shown(&next) }));
        }
        if self.visited.len() > self.max {
            return Err(redirect(RedirectError::TooMany {
                max: self.max,
                uri: shown(&next),
            }));
        }
        if !same_origin {
            // Credentials the user meant for one server are not sent to another.
            self.headers
                .retain(|(name, _)| name != AUTHORIZATION && name != COOKIE);
        }
        tracing::info!(
            target: "sockeye::client",
            "{} redirected ({status}) to {}",
            shown(&self.uri),
            shown(&next)
        );
        self.visited.push(next.clone());
        self.uri = next;
        self.target = target;
        Ok(())
    }
}

fn redirect(e: RedirectError) -> Error {
    Error::Redirect(e)
}

/// A URI for errors and logs: `user:password@` shown as `user@`.
pub(crate) fn shown(uri: &Uri) -> String {
    let text = uri.to_string();
    match (userinfo(uri), uri.authority()) {
        (Some(info), Some(authority)) if info.contains(':') => {
            let user = info.split(':').next().unwrap_or("");
            let host = authority.as_str().rsplit_once('@').map_or("", |(_, h)| h);
            text.replacen(authority.as_str(), &format!("{user}@{host}"), 1)
        }
        _ => text,
    }
}

/// Same scheme, host and port (RFC 6454 §4; hosts compare without case).
fn same_origin(a: &Target, b: &Target) -> bool {
    a.secure == b.secure && a.port == b.port && a.host.eq_ignore_ascii_case(&b.host)
}

/// The `user:password` of a URI, if any.
fn userinfo(uri: &Uri) -> Option<&str> {
    uri.authority()?
        .as_str()
        .rsplit_once('@')
        .map(|(info, _)| info)
}

/// `uri` with `info@` in its authority.
fn with_userinfo(uri: &Uri, info: &str) -> std::result::Result<Uri, String> {
    let (scheme, authority) = match (uri.scheme_str(), uri.authority()) {
        (Some(s), Some(a)) => (s, a.as_str()),
        _ => return Err("not an absolute URI".to_owned()),
    };
    let path = uri.path_and_query().map_or("", |p| p.as_str());
    format!("{scheme}://{info}@{authority}{path}")
        .parse()
        .map_err(|e| format!("{e}"))
}

/// Resolves a URI reference against an absolute base (RFC 3986 §5.2.2, without fragments:
/// WebSocket URIs have none, RFC 6455 §3).
pub(crate) fn resolve(base: &Uri, reference: &str) -> std::result::Result<Uri, String> {
    let reference = reference.trim();
    if reference.is_empty() {
        return Err("empty".to_owned());
    }
    let reference = reference.split('#').next().unwrap_or("");
    let scheme = base.scheme_str().ok_or("the base URI is not absolute")?;
    let authority = base.authority().map_or("", |a| a.as_str());
    let (ref_path, ref_query) = match reference.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (reference, None),
    };
    let has_scheme = reference
        .split_once(':')
        .is_some_and(|(s, _)| is_scheme(s) && !ref_path.starts_with('/'));
    let joined = if has_scheme {
        reference.to_owned()
    } else if let Some(rest) = reference.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else {
        let path = if ref_path.is_empty() {
            base.path().to_owned()
        } else if ref_path.starts_with('/') {
            remove_dot_segments(ref_path)
        } else {
            // RFC 3986 §5.2.3: merge with the base path up to its last slash.
            let base_path = base.path();
            let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
            let dir = if dir.is_empty() { "/" } else { dir };
            remove_dot_segments(&format!("{dir}{ref_path}"))
        };
        let query = match (ref_path.is_empty(), ref_query) {
            (_, Some(q)) => Some(q),
            (true, None) => base.query(),
            (false, None) => None,
        };
        match query {
            Some(q) => format!("{scheme}://{authority}{path}?{q}"),
            None => format!("{scheme}://{authority}{path}"),
        }
    };
    let uri: Uri = joined.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme().is_none() || uri.authority().is_none() {
        return Err("not an absolute URI".to_owned());
    }
    // Normalise the path of absolute references too (`ws://h/a/../b`).
    match uri.path_and_query() {
        Some(pq) if pq.path().contains("/.") => {
            let path = remove_dot_segments(pq.path());
            let query = pq.query().map(|q| format!("?{q}")).unwrap_or_default();
            let authority = uri.authority().map_or("", |a| a.as_str());
            let scheme = uri.scheme_str().unwrap_or(scheme);
            format!("{scheme}://{authority}{path}{query}")
                .parse()
                .map_err(|e| format!("{e}"))
        }
        _ => Ok(uri),
    }
}

/// RFC 3986 §3.1: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// RFC 3986 §5.2.4, on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::HttpResponse;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn resolves_references_as_rfc_3986() {
        let base = uri("ws://a.test:8000/b/c/d?q");
        let cases = [
            ("wss://other.test/x", "wss://other.test/x"),
            ("//other.test:9/x?y", "ws://other.test:9/x?y"),
            ("/g", "ws://a.test:8000/g"),
            ("g", "ws://a.test:8000/b/c/g"),
            ("./g", "ws://a.test:8000/b/c/g"),
            ("g/", "ws://a.test:8000/b/c/g/"),
            ("../g", "ws://a.test:8000/b/g"),
            ("../..", "ws://a.test:8000/"),
            ("../../../../g", "ws://a.test:8000/g"),
            ("?y", "ws://a.test:8000/b/c/d?y"),
            ("g?y#frag", "ws://a.test:8000/b/c/g?y"),
            ("#only", "ws://a.test:8000/b/c/d?q"),
            ("ws://x.test/a/./b/../c", "ws://x.test/a/c"),
            ("/a:b", "ws://a.test:8000/a:b"),
        ];
        for (reference, want) in cases {
            assert_eq!(
                resolve(&base, reference).unwrap().to_string(),
                want,
                "{reference}"
            );
        }
        for bad in ["", "  ", "ws://", "ws://exa mple/", "/a b"] {
            assert!(resolve(&base, bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            resolve(&uri("ws://h"), "g").unwrap().to_string(),
            "ws://h/g"
        );
    }

    #[test]
    fn random_locations_never_panic() {
        let base = uri("wss://u:p@a.test:9/x/y?z");
        let alphabet = b"/.?#:@[]%ws ab1";
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            let len = (state % 24) as usize;
            let reference: String = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state as usize) % alphabet.len()] as char
                })
                .collect();
            if let Ok(resolved) = resolve(&base, &reference) {
                assert!(resolved.scheme().is_some() && resolved.authority().is_some());
            }
            let mut c = chain("ws://a.test/", 10);
            let _ = c.follow(answer(302, Some(&reference)));
        }
    }

    fn answer(status: u16, location: Option<&str>) -> Error {
        let mut headers = http::HeaderMap::new();
        if let Some(l) = location {
            headers.insert(LOCATION, HeaderValue::from_bytes(l.as_bytes()).unwrap());
        }
        Error::Handshake(HandshakeError::UnexpectedStatus(Box::new(HttpResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: bytes::Bytes::new(),
        })))
    }

    fn chain(start: &str, max: usize) -> Chain {
        let headers = [
            (AUTHORIZATION, HeaderValue::from_static("Bearer t")),
            (COOKIE, HeaderValue::from_static("a=b")),
            (
                HeaderName::from_static("x-kept"),
                HeaderValue::from_static("1"),
            ),
        ];
        Chain::new(start, &headers, max).unwrap()
    }

    fn names(c: &Chain) -> Vec<&str> {
        c.headers.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn follows_each_redirect_status_only() {
        for status in [301, 302, 303, 307, 308] {
            let mut c = chain("ws://a.test/x", 10);
            c.follow(answer(status, Some("/y"))).unwrap();
            assert_eq!(c.uri.to_string(), "ws://a.test/y");
        }
        for status in [300, 304, 305, 400, 404, 503] {
            let mut c = chain("ws://a.test/x", 10);
            let e = c.follow(answer(status, Some("/y"))).unwrap_err();
            assert!(matches!(e, Error::Handshake(_)), "{status}: {e}");
        }
        let mut c = chain("ws://a.test/x", 10);
        assert!(matches!(
            c.follow(Error::OpenTimeout),
            Err(Error::OpenTimeout)
        ));
    }

    #[test]
    fn zero_max_redirects_reports_the_answer() {
        let mut c = chain("ws://a.test/x", 0);
        let e = c.follow(answer(302, Some("/y"))).unwrap_err();
        assert!(
            matches!(e, Error::Handshake(HandshakeError::UnexpectedStatus(r)) if r.status == 302)
        );
    }

    #[test]
    fn limit_counts_redirects_followed() {
        let mut c = chain("ws://a.test/0", 3);
        for i in 1..=3 {
            c.follow(answer(302, Some(&format!("/{i}")))).unwrap();
        }
        let e = c.follow(answer(302, Some("/4"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "more than 3 redirects (the next one to ws://a.test/4)"
        );
    }

    #[test]
    fn loops_name_the_uri() {
        let mut c = chain("ws://a.test/a", 10);
        c.follow(answer(302, Some("/b"))).unwrap();
        // Hosts compare without case.
        let e = c.follow(answer(302, Some("ws://A.test/a"))).unwrap_err();
        assert!(
            matches!(e, Error::Redirect(RedirectError::Loop { .. })),
            "{e}"
        );
        let mut c = chain("ws://a.test/a", 10);
        c.follow(answer(302, Some("/b"))).unwrap();
        let e = c.follow(answer(301, Some("/a"))).unwrap_err();
        assert!(
            matches!(&e, Error::Redirect(RedirectError::Loop { uri }) if uri == "ws://a.test/a")
        );
        assert_eq!(
            e.to_string(),
            "redirect loop: ws://a.test/a was visited already"
        );
    }

    #[test]
    fn refuses_wss_to_ws_and_other_schemes() {
        #[cfg(feature = "tls")]
        {
            let mut c = chain("wss://a.test/", 10);
            let e = c.follow(answer(302, Some("ws://a.test/"))).unwrap_err();
            assert!(
                matches!(e, Error::Redirect(RedirectError::Insecure { .. })),
                "{e}"
            );
            let mut c = chain("ws://a.test/", 10);
            c.follow(answer(302, Some("wss://a.test/"))).unwrap();
            assert!(c.target.secure);
        }
        for location in ["http://a.test/", "https://a.test/", "ftp://a.test/"] {
            let mut c = chain("ws://a.test/", 10);
            let e = c.follow(answer(302, Some(location))).unwrap_err();
            assert!(
                matches!(&e, Error::Redirect(RedirectError::InvalidLocation { location: l, .. }) if l == location),
                "{e}"
            );
        }
        let mut c = chain("ws://a.test/", 10);
        let e = c.follow(answer(307, None)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ws://a.test/ answered 307 Temporary Redirect without a Location header"
        );
        let mut c = chain("ws://a.test/", 10);
        let e = c.follow(answer(302, Some("ws://bad host/"))).unwrap_err();
        assert!(
            matches!(e, Error::Redirect(RedirectError::InvalidLocation { .. })),
            "{e}"
        );
        let mut c = chain("ws://a.test/", 10);
        let e = c.follow(answer(302, Some("/caf\u{e9}"))).unwrap_err();
        assert!(e.to_string().contains("not printable ASCII"), "{e}");
    }

    #[test]
    fn passwords_stay_out_of_errors() {
        assert_eq!(
            shown(&uri("ws://u:secret@a.test:8/p?q")),
            "ws://u@a.test:8/p?q"
        );
        assert_eq!(shown(&uri("ws://u@a.test/")), "ws://u@a.test/");
        let mut c = chain("ws://u:secret@a.test/a", 10);
        c.follow(answer(302, Some("/b"))).unwrap();
        let e = c.follow(answer(302, Some("/a"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "redirect loop: ws://u@a.test/a was visited already"
        );
    }

    #[test]
    fn credentials_stay_with_their_origin() {
        // Same origin: everything kept, the URI's userinfo carried over.
        let mut c = chain("ws://u:p@a.test/x", 10);
        c.follow(answer(302, Some("ws://a.test:80/y"))).unwrap();
        assert_eq!(c.uri.to_string(), "ws://u:p@a.test:80/y");
        assert_eq!(names(&c), ["authorization", "cookie", "x-kept"]);
        // Another port is another origin: headers and userinfo dropped, for good.
        c.follow(answer(302, Some("ws://a.test:81/z"))).unwrap();
        assert_eq!(c.uri.to_string(), "ws://a.test:81/z");
        assert_eq!(names(&c), ["x-kept"]);
        c.follow(answer(302, Some("ws://a.test/back"))).unwrap();
        assert_eq!(names(&c), ["x-kept"]);
        // Another host, another scheme.
        let mut c = chain("ws://a.test/", 10);
        c.follow(answer(302, Some("ws://b.test/"))).unwrap();
        assert_eq!(names(&c), ["x-kept"]);
        #[cfg(feature = "tls")]
        {
            let mut c = chain("ws://a.test/", 10);
            c.follow(answer(302, Some("wss://a.test/"))).unwrap();
            assert_eq!(names(&c), ["x-kept"]);
        }
        // Host case does not make another origin.
        let mut c = chain("ws://a.test/", 10);
        c.follow(answer(302, Some("ws://A.TEST/b"))).unwrap();
        assert_eq!(names(&c), ["authorization", "cookie", "x-kept"]);
    }
}
