//! HTTP Basic authentication of the opening handshake (RFC 7617), as python-websockets'
//! `basic_auth`.
//!
//! Install a [`BasicAuth`] with `basic_auth` on a server builder, tokio or blocking: requests
//! without valid credentials get `401 Unauthorized` with a `WWW-Authenticate` challenge and
//! never reach the handler; the handler of an accepted connection finds the user's name in
//! [`Connection::username`](crate::Connection::username).
//!
//! ```no_run
//! # async fn run() -> Result<(), sockeye::BoxError> {
//! let server = sockeye::Server::builder()
//!     .basic_auth(sockeye::auth::basic("chat", [("alice", "s3cret"), ("bob", "hunter2")]))
//!     .serve("127.0.0.1:8765", |ws: sockeye::ServerConnection| async move {
//!         let user = ws.username().unwrap_or_default().to_owned();
//!         ws.send(format!("Hello {user}!")).await?;
//!         Ok(())
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Basic credentials travel in clear text (base64 is an encoding, not encryption): serve
//! them over TLS (`wss://`) anywhere but on loopback. Clients send them from the URI
//! (`ws://alice:s3cret@host/`) or an `Authorization` header.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};

type CheckFn = dyn Fn(&str, &str) -> bool + Send + Sync;

enum Check {
    /// (username, password) pairs.
    Static(Box<[(Box<str>, Box<str>)]>),
    Function(Arc<CheckFn>),
}

/// HTTP Basic authentication for a server: a realm and the way to check credentials. Build
/// one with [`basic`] or [`basic_with`]; install it with `basic_auth` on
/// [`ServerBuilder`](crate::ServerBuilder) or [`sync::ServerBuilder`](crate::sync::ServerBuilder).
///
/// It runs before the builder's own `process_request` hook (and before routing): a request
/// that fails it gets a 401 whatever its path.
pub struct BasicAuth {
    check: Check,
    /// `Basic realm="...", charset="UTF-8"`, built once.
    challenge: HeaderValue,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the passwords.
        let check = match &self.check {
            Check::Static(c) => format!("{} credentials", c.len()),
            Check::Function(_) => "a check function".to_owned(),
        };
        f.debug_struct("BasicAuth")
            .field("challenge", &self.challenge)
            .field("check", &check)
            .finish()
    }
}

/// Basic authentication against a fixed list of `(username, password)` pairs.
///
/// Credentials are compared in constant time (see [`constant_time_eq`]), with every pair of
/// the list, so that the time taken tells neither which user exists nor how much of a
/// password was right.
///
/// # Panics
/// If `realm` contains control characters (it goes into a header).
pub fn basic<I, U, P>(realm: &str, credentials: I) -> BasicAuth
where
    I: IntoIterator<Item = (U, P)>,
    U: Into<String>,
    P: Into<String>,
{
    let credentials = credentials
        .into_iter()
        .map(|(u, p)| (u.into().into_boxed_str(), p.into().into_boxed_str()))
        .collect();
    BasicAuth::new(realm, Check::Static(credentials))
}

/// Basic authentication with a function of `(username, password)` that returns whether to
/// let the request in, for credentials kept elsewhere (hashed passwords, a database...). It
/// runs during the handshake, in the server's task or thread: keep it quick. Compare secrets
/// with [`constant_time_eq`].
///
/// # Panics
/// If `realm` contains control characters (it goes into a header).
pub fn basic_with<F>(realm: &str, check: F) -> BasicAuth
where
    F: Fn(&str, &str) -> bool + Send + Sync + 'static,
{
    BasicAuth::new(realm, Check::Function(Arc::new(check)))
}

/// Why a request was refused, with the body of its 401 (python-websockets' wording).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Missing,
    Unsupported,
    Invalid,
}

impl Refusal {
    fn body(self) -> &'static str {
        match self {
            Refusal::Missing => "Missing credentials\n",
            Refusal::Unsupported => "Unsupported credentials\n",
            Refusal::Invalid => "Invalid credentials\n",
        }
    }
}

impl BasicAuth {
    fn new(realm: &str, check: Check) -> BasicAuth {
        // RFC 7617 §2: realm is a quoted-string (RFC 7230 §3.2.6): escape `"` and `\`.
        let mut quoted = String::with_capacity(realm.len());
        for c in realm.chars() {
            if c == '"' || c == '\\' {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        let challenge = format!("Basic realm=\"{quoted}\", charset=\"UTF-8\"");
        // `from_bytes`: UTF-8 realms are fine (obs-text), control characters are not.
        let challenge = HeaderValue::from_bytes(challenge.as_bytes())
            .unwrap_or_else(|_| panic!("invalid characters in the realm {realm:?}"));
        BasicAuth { check, challenge }
    }

    /// Checks the credentials of a handshake request: the authenticated username, or the
    /// `401 Unauthorized` response (with `WWW-Authenticate`) to answer with. A missing,
    /// malformed or non-Basic `Authorization` header is a 401 too.
    ///
    /// The server builders call this; it is public for `process_request` hooks of your own
    /// (`auth.check(request).err().map(|refused| *refused)`).
    pub fn check(&self, request: &Request<()>) -> Result<String, Box<Response<Bytes>>> {
        self.username(request).map_err(|refusal| {
            let mut response = crate::respond(StatusCode::UNAUTHORIZED, refusal.body());
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, self.challenge.clone());
            Box::new(response)
        })
    }

    fn username(&self, request: &Request<()>) -> Result<String, Refusal> {
        let header = request
            .headers()
            .get(AUTHORIZATION)
            .ok_or(Refusal::Missing)?;
        let (user, password) = parse_basic(header.as_bytes())?;
        let ok = match &self.check {
            Check::Static(credentials) => {
                // Every pair, without short cuts (`&`, `|`, not `&&`, `||`).
                let mut found = false;
                for (u, p) in credentials.iter() {
                    found |= constant_time_eq(user.as_bytes(), u.as_bytes())
                        & constant_time_eq(password.as_bytes(), p.as_bytes());
                }
                found
            }
            Check::Function(check) => check(&user, &password),
        };
        if ok {
            Ok(user)
        } else {
            Err(Refusal::Invalid)
        }
    }
}

/// `Basic <base64(user:password)>` (RFC 7617 §2): the user and the password, or why not.
fn parse_basic(value: &[u8]) -> Result<(String, String), Refusal> {
    let value = std::str::from_utf8(value).map_err(|_| Refusal::Invalid)?;
    // RFC 7235 §2.1: credentials = auth-scheme [ 1*SP token68 ], the scheme case-insensitive.
    let value = value.trim_matches([' ', '\t']);
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Refusal::Unsupported);
    }
    let decoded = BASE64
        .decode(token.trim_start_matches(' '))
        .map_err(|_| Refusal::Invalid)?;
    // RFC 7617 §2.1: charset="UTF-8" asks clients for UTF-8.
    let decoded = String::from_utf8(decoded).map_err(|_| Refusal::Invalid)?;
    // RFC 7617 §2: the user-id cannot contain a colon; the password may.
    let (user, password) = decoded.split_once(':').ok_or(Refusal::Invalid)?;
    Ok((user.to_owned(), password.to_owned()))
}

/// Whether `given` equals `secret`, in a time that depends on the length of `given` only:
/// neither on where the first difference is nor on the length of `secret`. For comparing what
/// a client sent with a secret.
pub fn constant_time_eq(given: &[u8], secret: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != secret.len());
    if secret.is_empty() {
        return given.is_empty();
    }
    for (i, g) in given.iter().enumerate() {
        // The secret repeated, to compare every byte given: no branch on the secret's length.
        diff |= g ^ secret[i % secret.len()];
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut builder = Request::get("/");
        if let Some(value) = authorization {
            builder = builder.header(AUTHORIZATION, value);
        }
        builder.body(()).unwrap()
    }

    fn header(user_password: &str) -> String {
        format!("Basic {}", BASE64.encode(user_password))
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abcabc", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
        assert!(!constant_time_eq(b"a", b""));
    }

    #[test]
    fn static_credentials() {
        let auth = basic("test", [("alice", "pw:with:colons"), ("bob", "")]);
        let ok = auth.check(&request(Some(&header("alice:pw:with:colons"))));
        assert_eq!(ok.unwrap(), "alice");
        assert_eq!(auth.check(&request(Some(&header("bob:")))).unwrap(), "bob");
        for bad in ["alice:wrong", "eve:pw:with:colons", "bob:x", "alice", ":"] {
            let refused = auth.check(&request(Some(&header(bad)))).unwrap_err();
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{bad}");
            assert_eq!(&refused.body()[..], b"Invalid credentials\n", "{bad}");
        }
    }

    #[test]
    fn malformed_headers_are_401() {
        let auth = basic("a \"quoted\" realm", [("alice", "pw")]);
        for (value, body) in [
            (None, "Missing credentials\n"),
            (Some("Bearer abc"), "Unsupported credentials\n"),
            (Some("Basic"), "Invalid credentials\n"),
            (Some("Basic !!!not base64"), "Invalid credentials\n"),
            (Some("Basic //79"), "Invalid credentials\n"), // not UTF-8
            (Some("Basic YWxpY2U="), "Invalid credentials\n"), // "alice", no colon
        ] {
            let refused = auth.check(&request(value)).unwrap_err();
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{value:?}");
            assert_eq!(&refused.body()[..], body.as_bytes(), "{value:?}");
            assert_eq!(
                refused.headers()[WWW_AUTHENTICATE],
                r#"Basic realm="a \"quoted\" realm", charset="UTF-8""#
            );
        }
        // The scheme is case-insensitive, extra spaces are fine.
        let lax = format!("  bAsIc   {}", BASE64.encode("alice:pw"));
        assert_eq!(auth.check(&request(Some(&lax))).unwrap(), "alice");
    }

    #[test]
    fn check_function() {
        let auth = basic_with("", |user, password| {
            user.len() == 3 && constant_time_eq(password.as_bytes(), b"open sesame")
        });
        let ok = auth.check(&request(Some(&header("ali:open sesame"))));
        assert_eq!(ok.unwrap(), "ali");
        assert!(auth
            .check(&request(Some(&header("alice:open sesame"))))
            .is_err());
        assert!(format!("{auth:?}").contains("check function"));
    }

    #[test]
    fn utf8_realm() {
        let auth = basic("café", [("a", "b")]);
        let refused = auth.check(&request(None)).unwrap_err();
        assert_eq!(
            refused.headers()[WWW_AUTHENTICATE].as_bytes(),
            "Basic realm=\"café\", charset=\"UTF-8\"".as_bytes()
        );
    }

    #[test]
    #[should_panic(expected = "invalid characters")]
    fn realm_must_be_a_header_value() {
        basic("bad\r\nrealm", [("a", "b")]);
    }
}
