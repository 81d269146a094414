//! Routing: one handler per path pattern, as python-websockets' `route`.
//!
//! A [`Router`] maps patterns to handlers; [`route`](crate::route) (or
//! [`ServerBuilder::route`](crate::ServerBuilder::route)) serves it. A request whose path
//! matches no pattern gets `404 Not Found` during the opening handshake: no connection is
//! opened and no handler runs. The handler of a connection reads the path parameters with
//! [`Connection::param`](crate::Connection::param).
//!
//! ```no_run
//! # async fn run() -> Result<(), sockeye::BoxError> {
//! use sockeye::{Router, ServerConnection};
//!
//! let router = Router::new()
//!     .route("/", |ws: ServerConnection| async move {
//!         ws.send("the lobby").await?;
//!         Ok(())
//!     })
//!     .route("/rooms/{id}", |ws: ServerConnection| async move {
//!         let room = ws.param("id").unwrap_or_default().to_owned();
//!         ws.send(format!("room {room}")).await?;
//!         Ok(())
//!     });
//! sockeye::route("127.0.0.1:8765", router).await?.serve_forever().await?;
//! # Ok(()) }
//! ```
//!
//! The blocking front end has the same with [`sync::Router`](crate::sync::Router) and
//! [`sync::route`](crate::sync::route).
//!
//! # Patterns
//!
//! - A pattern is a path: `/`, `/status`, `/rooms/{id}`, `/rooms/{id}/users/{user}`.
//! - `{name}` matches one whole segment, not empty: `/rooms/{id}` matches `/rooms/42`, not
//!   `/rooms/` nor `/rooms/42/x`.
//! - `{*name}`, last only, matches the rest of the path, not empty, slashes included:
//!   `/files/{*path}` matches `/files/a/b.txt` with `path` = `a/b.txt`.
//! - Segments match after percent-decoding (`/rooms/caf%C3%A9` gives `id` = `café`; a
//!   `%2F` in a segment is a `/` in its parameter); a path that does not decode to UTF-8
//!   matches nothing. Write literal segments decoded. The query string is ignored.
//! - Paths match exactly: `/rooms` and `/rooms/` are different paths.
//! - When several patterns match, the most specific wins, segment by segment from the left:
//!   a literal before `{name}` before `{*name}` (`/rooms/new` wins over `/rooms/{id}` for
//!   `/rooms/new`); between equals, the first added.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::server::BoxError;
use crate::Connection;

/// A handler's future, boxed: routes have handlers of different types.
pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;
type Handler = Box<dyn Fn(Connection) -> BoxFuture + Send + Sync>;

/// Path patterns and their handlers, for [`route`](crate::route). See the [module
/// documentation](self) for the patterns.
#[derive(Default)]
pub struct Router {
    routes: Routes<Handler>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Router").field(&self.routes.table).finish()
    }
}

impl Router {
    /// A router without routes (every path gets 404).
    pub fn new() -> Self {
        Router::default()
    }

    /// Routes connections whose path matches `pattern` to `handler`.
    ///
    /// # Panics
    /// If `pattern` is not a valid pattern: not starting with `/`, braces that are not a
    /// whole segment, a parameter name that is empty, repeated or not made of letters,
    /// digits and `_`, or `{*name}` other than last.
    pub fn route<H, Fut>(mut self, pattern: &str, handler: H) -> Self
    where
        H: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let handler: Handler = Box::new(move |ws| Box::pin(handler(ws)));
        self.routes.add(pattern, handler);
        self
    }

    /// The patterns, for the handshake, and the handler of a connection, by the route its
    /// handshake chose.
    pub(crate) fn into_parts(
        self,
    ) -> (
        Arc<Table>,
        impl Fn(Connection) -> BoxFuture + Send + Sync + 'static,
    ) {
        let (table, handlers) = self.routes.into_parts();
        let dispatch = move |ws: Connection| match ws.route().and_then(|i| handlers.get(i)) {
            Some(handler) => handler(ws),
            // Cannot happen: the handshake of a routed server grants every connection a route.
            None => Box::pin(async { Err::<(), BoxError>("no route".into()) }) as BoxFuture,
        };
        (table, dispatch)
    }
}

/// Patterns and handlers of either front end's router.
pub(crate) struct Routes<H> {
    table: Table,
    handlers: Vec<H>,
}

impl<H> Default for Routes<H> {
    fn default() -> Self {
        Routes {
            table: Table::default(),
            handlers: Vec::new(),
        }
    }
}

impl<H> fmt::Debug for Routes<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.table.fmt(f)
    }
}

impl<H> Routes<H> {
    /// Adds a route. Panics on an invalid pattern (see [`Router::route`]).
    pub(crate) fn add(&mut self, pattern: &str, handler: H) {
        match Pattern::parse(pattern) {
            Ok(p) => self.table.patterns.push(p),
            Err(why) => panic!("invalid route pattern {pattern:?}: {why}"),
        }
        self.handlers.push(handler);
    }

    pub(crate) fn into_parts(self) -> (Arc<Table>, Box<[H]>) {
        (Arc::new(self.table), self.handlers.into_boxed_slice())
    }
}

/// The patterns of a router, matched during the handshake.
#[derive(Default)]
pub(crate) struct Table {
    patterns: Vec<Pattern>,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.patterns.iter().map(|p| &p.source))
            .finish()
    }
}

/// A route's path parameters: names (shared with the pattern) and decoded values.
pub(crate) type Params = Box<[(Arc<str>, Box<str>)]>;
type ParamList = Vec<(Arc<str>, Box<str>)>;

impl Table {
    /// The route for `path` (without the query) and its parameters; `None` for none (404).
    pub(crate) fn find(&self, path: &str) -> Option<(usize, Params)> {
        let rest = path.strip_prefix('/')?;
        // Each segment with its offset in `rest`, for `{*name}`.
        let mut segments = Vec::new();
        let mut start = 0;
        for raw in rest.split('/') {
            segments.push((start, raw, percent_decode(raw)));
            start += raw.len() + 1;
        }
        let mut best: Option<(usize, ParamList)> = None;
        for (index, pattern) in self.patterns.iter().enumerate() {
            let Some(params) = pattern.matches(rest, &segments) else {
                continue;
            };
            let better = match &best {
                None => true,
                Some((b, _)) => pattern.rank > self.patterns[*b].rank,
            };
            if better {
                best = Some((index, params));
            }
        }
        best.map(|(index, params)| (index, params.into_boxed_slice()))
    }
}

enum Segment {
    Literal(Box<str>),
    Param(Arc<str>),
    Rest(Arc<str>),
}

struct Pattern {
    source: Box<str>,
    segments: Vec<Segment>,
    /// Specificity, segment by segment: 2 literal, 1 `{name}`, 0 `{*name}`; compared
    /// lexicographically.
    rank: Vec<u8>,
}

impl Pattern {
    fn parse(source: &str) -> Result<Pattern, &'static str> {
        let rest = source.strip_prefix('/').ok_or("must start with /")?;
        let mut segments = Vec::new();
        let mut names: Vec<Arc<str>> = Vec::new();
        let count = rest.split('/').count();
        for (i, raw) in rest.split('/').enumerate() {
            let segment = match raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                Some(inner) => {
                    let (name, is_rest) = match inner.strip_prefix('*') {
                        Some(name) => (name, true),
                        None => (inner, false),
                    };
                    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                        return Err("parameter names are letters, digits and _");
                    }
                    if names.iter().any(|n| **n == *name) {
                        return Err("repeated parameter name");
                    }
                    let name: Arc<str> = name.into();
                    names.push(name.clone());
                    if is_rest {
                        if i + 1 != count {
                            return Err("{*name} must be the last segment");
                        }
                        Segment::Rest(name)
                    } else {
                        Segment::Param(name)
                    }
                }
                None if raw.contains(['{', '}']) => {
                    return Err("a parameter must be a whole segment");
                }
                None => Segment::Literal(raw.into()),
            };
            segments.push(segment);
        }
        let rank = segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 2,
                Segment::Param(_) => 1,
                Segment::Rest(_) => 0,
            })
            .collect();
        Ok(Pattern {
            source: source.into(),
            segments,
            rank,
        })
    }

    /// The parameters if the path matches. `rest` is the path after its first `/`;
    /// `segments` its segments (offset, raw, decoded).
    fn matches(
        &self,
        rest: &str,
        segments: &[(usize, &str, Option<Cow<'_, str>>)],
    ) -> Option<ParamList> {
        let mut params = Vec::new();
        for (i, segment) in self.segments.iter().enumerate() {
            if let Segment::Rest(name) = segment {
                let (start, _, _) = segments.get(i)?;
                let raw = &rest[*start..];
                if raw.is_empty() {
                    return None;
                }
                params.push((name.clone(), percent_decode(raw)?.into()));
                return Some(params);
            }
            let (_, _, decoded) = segments.get(i)?;
            let decoded = decoded.as_deref()?;
            match segment {
                Segment::Literal(literal) if **literal == *decoded => {}
                Segment::Param(name) if !decoded.is_empty() => {
                    params.push((name.clone(), decoded.into()));
                }
                _ => return None,
            }
        }
        (segments.len() == self.segments.len()).then_some(params)
    }
}

/// `%XX` escapes decoded (others kept as they are); `None` if the result is not UTF-8.
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| Some((hex(*bytes.get(i + 1)?)? << 4) | hex(*bytes.get(i + 2)?)?))
            .flatten();
        match escape {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(patterns: &[&str]) -> Table {
        let mut routes = Routes::default();
        for p in patterns {
            routes.add(p, ());
        }
        routes.table
    }

    fn find(table: &Table, path: &str) -> Option<(usize, Vec<(String, String)>)> {
        table.find(path).map(|(i, params)| {
            let params = params
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            (i, params)
        })
    }

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn literals_params_and_rest() {
        let t = table(&[
            "/",
            "/rooms/{id}",
            "/rooms/{id}/users/{user}",
            "/files/{*path}",
        ]);
        assert_eq!(find(&t, "/"), Some((0, p(&[]))));
        assert_eq!(find(&t, "/rooms/42"), Some((1, p(&[("id", "42")]))));
        assert_eq!(
            find(&t, "/rooms/42/users/ann"),
            Some((2, p(&[("id", "42"), ("user", "ann")])))
        );
        assert_eq!(
            find(&t, "/files/a/b%20c.txt"),
            Some((3, p(&[("path", "a/b c.txt")])))
        );
        for path in [
            "",
            "/x",
            "/rooms",
            "/rooms/",
            "/rooms/42/",
            "/files",
            "/files/",
            "//",
        ] {
            assert_eq!(find(&t, path), None, "{path}");
        }
    }

    #[test]
    fn percent_decoding() {
        let t = table(&["/rooms/{id}", "/café"]);
        assert_eq!(
            find(&t, "/rooms/caf%C3%A9"),
            Some((0, p(&[("id", "café")])))
        );
        assert_eq!(find(&t, "/rooms/a%2Fb"), Some((0, p(&[("id", "a/b")]))));
        assert_eq!(find(&t, "/rooms/100%"), Some((0, p(&[("id", "100%")]))));
        assert_eq!(find(&t, "/rooms/%zz"), Some((0, p(&[("id", "%zz")]))));
        assert_eq!(find(&t, "/caf%c3%a9"), Some((1, p(&[]))));
        // Not UTF-8.
        assert_eq!(find(&t, "/rooms/%FF"), None);
    }

    #[test]
    fn most_specific_wins() {
        let t = table(&["/{*all}", "/rooms/{id}", "/rooms/new", "/{a}/{b}"]);
        assert_eq!(find(&t, "/rooms/new").unwrap().0, 2);
        assert_eq!(find(&t, "/rooms/7").unwrap().0, 1);
        assert_eq!(find(&t, "/x/y").unwrap().0, 3);
        assert_eq!(find(&t, "/x/y/z").unwrap().0, 0);
        // Equals: the first added.
        let t = table(&["/{a}", "/{b}"]);
        assert_eq!(find(&t, "/x"), Some((0, p(&[("a", "x")]))));
    }

    #[test]
    fn invalid_patterns() {
        for bad in [
            "rooms",
            "/rooms/{}",
            "/rooms/{id}.json",
            "/{a}/{a}",
            "/{*rest}/x",
            "/{a-b}",
            "/{*}",
        ] {
            let result = std::panic::catch_unwind(|| table(&[bad]));
            assert!(result.is_err(), "{bad}");
        }
    }
}
