//! Client reconnection, as python-websockets' `async for websocket in connect(uri)`: a
//! stream of connections that connects again, with backoff, after transient errors.
//!
//! The policy lives here once — which errors are retried ([`is_retryable`]), the delays
//! between attempts ([`Backoff`]), the INFO log of each retry — in [`Core`], which both
//! front ends drive: [`Reconnecting`] (tokio, a `Stream`) and
//! [`sync::Reconnecting`](crate::sync::Reconnecting) (an `Iterator`).

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::client::ClientBuilder;
use crate::error::{Error, Result};
use crate::proto::{CloseCode, HandshakeError};
use crate::Connection;

/// The delays between reconnection attempts: python-websockets' backoff.
///
/// After a connection attempt fails with a transient error, the first delay is random,
/// between 0 and `initial_delay` (5 s), so that clients cut off together do not all come
/// back at once (RFC 6455 §7.2.3); then `min_delay` (3.1 s), multiplied by `factor` (1.618)
/// after each failure, up to `max_delay` (90 s), which repeats. A successful connection
/// starts the sequence over. Every parameter may be changed, to small values for tests:
///
/// ```
/// use std::time::Duration;
///
/// let backoff = sockeye::Backoff::default()
///     .initial_delay(Duration::from_millis(10))
///     .min_delay(Duration::from_millis(20))
///     .factor(2.0)
///     .max_delay(Duration::from_millis(100));
/// let delays: Vec<_> = backoff.delays_with_jitter(0.5).take(6).collect();
/// let ms = Duration::from_millis;
/// assert_eq!(delays, [ms(5), ms(20), ms(40), ms(80), ms(100), ms(100)]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial_delay: Duration,
    min_delay: Duration,
    max_delay: Duration,
    factor: f64,
}

impl Default for Backoff {
    /// python-websockets' values: initial 5 s, min 3.1 s, factor 1.618, max 90 s.
    fn default() -> Self {
        Backoff {
            initial_delay: Duration::from_secs(5),
            min_delay: Duration::from_millis(3100),
            max_delay: Duration::from_secs(90),
            factor: 1.618,
        }
    }
}

impl Backoff {
    /// The first delay is random, between 0 and this (default 5 s).
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// The second delay, the first of the exponential series (default 3.1 s).
    pub fn min_delay(mut self, delay: Duration) -> Self {
        self.min_delay = delay;
        self
    }

    /// The longest delay, repeated once reached (default 90 s).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// How much each delay grows over the one before (default 1.618).
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// The delays, with a random first one.
    pub fn delays(&self) -> Delays {
        // A fraction in [0, 1) from the process's random hasher keys and the clock: enough
        // to spread clients apart, no generator to carry.
        let bits = RandomState::new().hash_one(Instant::now());
        self.delays_with_jitter((bits >> 11) as f64 / (1u64 << 53) as f64)
    }

    /// The delays, with `jitter` (in [0, 1], clamped) times `initial_delay` as the first one:
    /// deterministic, for tests.
    pub fn delays_with_jitter(&self, jitter: f64) -> Delays {
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        Delays {
            backoff: *self,
            first: Some(self.initial_delay.mul_f64(jitter)),
            next: self.min_delay.as_secs_f64(),
        }
    }
}

/// The delays of a [`Backoff`], one per failed attempt; endless.
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    /// The random first delay, until taken.
    first: Option<Duration>,
    /// The next delay of the exponential series, in seconds.
    next: f64,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let max = self.backoff.max_delay;
        if self.next < max.as_secs_f64() {
            let delay = Duration::try_from_secs_f64(self.next).unwrap_or(max);
            self.next *= self.backoff.factor;
            return Some(delay);
        }
        Some(max)
    }
}

/// Whether a failed connection attempt is worth retrying: the default policy of
/// reconnecting clients, python-websockets' `process_exception`.
///
/// Retried (the error may be transient): I/O errors (connection refused or reset,
/// unreachable network, name resolution), the open timeout, the connection closed before
/// the handshake's response ([`HandshakeError::UnexpectedEof`]), and the HTTP statuses 500,
/// 502, 503 and 504 (server or gateway errors); and the proxy failures that may be transient
/// ([`ProxyError::is_transient`](crate::ProxyError::is_transient): a proxy's 5xx to
/// `CONNECT`, SOCKS5 replies 1, 3, 4, 5, 6, a proxy that closed before answering).
/// Everything else is fatal: an invalid URI, redirect errors, proxy credentials refused,
/// other statuses (403, 404, 429, ...), a response that is not a valid handshake, and TLS
/// errors that are not I/O errors (an untrusted certificate stays untrusted; python retries
/// them, as its `SSLError` is an `OSError`).
pub fn is_retryable(error: &Error) -> bool {
    match error {
        Error::Io(_) | Error::OpenTimeout => true,
        Error::Proxy(e) => e.is_transient(),
        Error::Handshake(HandshakeError::UnexpectedEof) => true,
        Error::Handshake(HandshakeError::UnexpectedStatus(response)) => matches!(
            response.status,
            StatusCode::INTERNAL_SERVER_ERROR
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
        ),
        _ => false,
    }
}

/// A hook deciding whether a failed connection attempt is retried (`true`) or ends the
/// stream of connections with its error (`false`); see [`is_retryable`], the default.
pub type RetryIf = Arc<dyn Fn(&Error) -> bool + Send + Sync>;

/// The reconnection options of the client builders (both front ends).
#[derive(Clone, Default)]
pub(crate) struct Policy {
    pub(crate) backoff: Backoff,
    pub(crate) retry_if: Option<RetryIf>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("backoff", &self.backoff)
            .field("retry_if", &self.retry_if.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// What to do with the result of a connection attempt.
pub(crate) enum Outcome<C> {
    /// Give this to the application: a connection, or the error that ends the stream.
    Yield(Result<C>),
    /// Wait this long, then try again.
    Retry(Duration),
}

/// The state of a reconnecting client, without I/O: both front ends connect, close and
/// sleep as it says.
pub(crate) struct Core<C> {
    pub(crate) uri: String,
    policy: Policy,
    /// The delays of the current run of failures; `None` after a success.
    delays: Option<Delays>,
    /// Failed attempts in the current run.
    failures: u32,
    /// The connection given to the application last, closed when it asks for the next.
    current: Option<C>,
    /// A fatal error ended the stream.
    done: bool,
}

impl<C> std::fmt::Debug for Core<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconnecting")
            .field("uri", &self.uri)
            .field("policy", &self.policy)
            .field("failures", &self.failures)
            .field("done", &self.done)
            .finish()
    }
}

impl<C: Clone> Core<C> {
    pub(crate) fn new(uri: &str, policy: Policy) -> Self {
        Core {
            uri: uri.to_owned(),
            policy,
            delays: None,
            failures: 0,
            current: None,
            done: false,
        }
    }

    /// Starts the next item: `None` once the stream has ended, else the previous connection
    /// to close first, if any.
    pub(crate) fn start(&mut self) -> Option<Option<C>> {
        (!self.done).then(|| self.current.take())
    }

    /// The outcome of one attempt; logs each retry at INFO.
    pub(crate) fn attempted(&mut self, result: Result<C>) -> Outcome<C> {
        let error = match result {
            Ok(conn) => {
                self.delays = None;
                self.failures = 0;
                self.current = Some(conn.clone());
                return Outcome::Yield(Ok(conn));
            }
            Err(e) => e,
        };
        let retry = match &self.policy.retry_if {
            Some(hook) => hook(&error),
            None => is_retryable(&error),
        };
        if !retry {
            self.done = true;
            return Outcome::Yield(Err(error));
        }
        let backoff = &self.policy.backoff;
        let delay = self
            .delays
            .get_or_insert_with(|| backoff.delays())
            .next()
            .unwrap_or(backoff.max_delay);
        self.failures += 1;
        tracing::info!(
            target: "sockeye::client",
            attempt = self.failures,
            delay_secs = delay.as_secs_f64(),
            "connect to {} failed; reconnecting in {delay:.1?}: {error}",
            self.uri
        );
        Outcome::Retry(delay)
    }
}

/// The future of one item: it owns the state while it runs and gives it back.
type Advance = Pin<Box<dyn Future<Output = (State, Option<Result<Connection>>)> + Send>>;

/// The tokio state behind [`Reconnecting`], moved into the future of each item.
struct State {
    builder: ClientBuilder,
    core: Core<Connection>,
}

impl State {
    /// Closes the previous connection, then connects until a connection opens or an error
    /// is fatal.
    async fn advance(mut self) -> (Self, Option<Result<Connection>>) {
        let previous = match self.core.start() {
            Some(previous) => previous,
            None => return (self, None),
        };
        if let Some(conn) = previous {
            let _ = conn.close(CloseCode::NORMAL, "").await;
        }
        loop {
            let result = self.builder.clone().connect(&self.core.uri).await;
            match self.core.attempted(result) {
                Outcome::Yield(item) => return (self, Some(item)),
                Outcome::Retry(delay) => tokio::time::sleep(delay).await,
            }
        }
    }
}

/// A client that reconnects: a stream of connections to one URI, from
/// [`ClientBuilder::reconnecting`] or [`reconnecting`].
///
/// The first item is the first connection that opens; asking for the next item closes the
/// previous connection (1000, if still open) and connects again. Failed attempts are retried
/// with [`Backoff`] while [`is_retryable`] (or the builder's `retry_if` hook) says so, each
/// logged at INFO (target `sockeye::client`); a fatal error is the last item.
///
/// ```no_run
/// # async fn run() -> Result<(), sockeye::BoxError> {
/// let mut connections = sockeye::reconnecting("ws://127.0.0.1:8765");
/// while let Some(ws) = connections.next().await {
///     let ws = ws?;
///     // Until the connection ends, normally or not: then reconnect.
///     while let Ok(Some(msg)) = ws.recv().await {
///         println!("{msg:?}");
///     }
/// }
/// # Ok(()) }
/// ```
///
/// It is also a `futures_core::Stream`. `next` is cancel-safe: a connection attempt (or
/// delay) cut short resumes at the next call.
pub struct Reconnecting {
    /// `None` while the future of an item owns it.
    state: Option<State>,
    /// The item in progress. In a `Mutex` only to be `Sync` without `unsafe`: reached
    /// through `&mut self` (`get_mut`), never locked.
    pending: Mutex<Option<Advance>>,
}

impl std::fmt::Debug for Reconnecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.state {
            Some(state) => state.core.fmt(f),
            None => f.write_str("Reconnecting { .. }"),
        }
    }
}

impl Reconnecting {
    pub(crate) fn new(builder: ClientBuilder, uri: &str, policy: Policy) -> Self {
        Reconnecting {
            state: Some(State {
                builder,
                core: Core::new(uri, policy),
            }),
            pending: Mutex::new(None),
        }
    }

    /// The next connection: waits for a connection to open, retrying transient errors; a
    /// fatal error, then `None`.
    pub async fn next(&mut self) -> Option<Result<Connection>> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Connection>>> {
        let pending = self.pending.get_mut().unwrap_or_else(|e| e.into_inner());
        if pending.is_none() {
            let Some(state) = self.state.take() else {
                return Poll::Ready(None);
            };
            *pending = Some(Box::pin(state.advance()));
        }
        let Some(fut) = pending.as_mut() else {
            return Poll::Ready(None);
        };
        let (state, item) = std::task::ready!(fut.as_mut().poll(cx));
        *pending = None;
        self.state = Some(state);
        Poll::Ready(item)
    }
}

impl futures_core::Stream for Reconnecting {
    type Item = Result<Connection>;

    /// As [`Reconnecting::next`].
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}

/// A reconnecting client with the default options. See [`ClientBuilder::reconnecting`].
pub fn reconnecting(uri: &str) -> Reconnecting {
    ClientBuilder::default().reconnecting(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn default_backoff_is_python_websockets() {
        let b = Backoff::default();
        let d: Vec<Duration> = b.delays_with_jitter(1.0).take(12).collect();
        assert_eq!(d[0], Duration::from_secs(5));
        assert_eq!(d[1], ms(3100));
        let mut expected = 3.1;
        for pair in d[1..].windows(2) {
            expected *= 1.618;
            let want = Duration::from_secs_f64(expected).min(Duration::from_secs(90));
            assert!(pair[1].abs_diff(want) < ms(1), "{pair:?} vs {want:?}");
        }
        // 3.1 * 1.618^7 = 90.5: capped from the 9th delay on, for ever.
        assert!(d[8] < Duration::from_secs(90));
        assert_eq!(d[9], Duration::from_secs(90));
        assert_eq!(b.delays().nth(100), Some(Duration::from_secs(90)));
    }

    #[test]
    fn first_delay_is_random_up_to_initial() {
        let b = Backoff::default().initial_delay(ms(1000));
        let firsts: Vec<Duration> = (0..50).map(|_| b.delays().next().unwrap()).collect();
        assert!(firsts.iter().all(|d| *d <= ms(1000)), "{firsts:?}");
        assert!(
            firsts.windows(2).any(|w| w[0] != w[1]),
            "not random: {firsts:?}"
        );
        assert_eq!(b.delays_with_jitter(0.0).next(), Some(Duration::ZERO));
        assert_eq!(b.delays_with_jitter(7.0).next(), Some(ms(1000)));
        assert_eq!(b.delays_with_jitter(f64::NAN).next(), Some(Duration::ZERO));
    }

    #[test]
    fn odd_parameters_do_not_panic() {
        let b = Backoff::default().min_delay(ms(200)).max_delay(ms(100));
        let d: Vec<Duration> = b.delays_with_jitter(0.0).take(3).collect();
        assert_eq!(d, [Duration::ZERO, ms(100), ms(100)]);
        let b = Backoff::default().factor(f64::INFINITY);
        let d: Vec<Duration> = b.delays_with_jitter(0.0).take(3).collect();
        assert_eq!(d, [Duration::ZERO, ms(3100), Duration::from_secs(90)]);
    }

    #[test]
    fn retry_policy_follows_process_exception() {
        let status = |code: u16| {
            Error::Handshake(HandshakeError::UnexpectedStatus(Box::new(
                crate::proto::HttpResponse {
                    status: StatusCode::from_u16(code).unwrap(),
                    headers: http::HeaderMap::new(),
                    body: bytes::Bytes::new(),
                },
            )))
        };
        for code in [500, 502, 503, 504] {
            assert!(is_retryable(&status(code)), "{code}");
        }
        for code in [400, 401, 403, 404, 429, 501, 505] {
            assert!(!is_retryable(&status(code)), "{code}");
        }
        let refused = Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_retryable(&refused));
        assert!(is_retryable(&Error::OpenTimeout));
        assert!(is_retryable(&Error::Handshake(
            HandshakeError::UnexpectedEof
        )));
        assert!(!is_retryable(&Error::InvalidUri("x".into())));
        assert!(!is_retryable(&Error::Handshake(
            HandshakeError::InvalidAccept
        )));
    }

    #[test]
    fn core_resets_after_success_and_ends_after_fatal() {
        let policy = Policy {
            backoff: Backoff::default().initial_delay(Duration::ZERO),
            retry_if: None,
        };
        let mut core: Core<u8> = Core::new("ws://x/", policy);
        let refused = || Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into());
        assert!(matches!(core.start(), Some(None)));
        assert!(matches!(core.attempted(refused()), Outcome::Retry(d) if d.is_zero()));
        assert!(matches!(core.attempted(refused()), Outcome::Retry(d) if d == ms(3100)));
        assert!(matches!(core.attempted(Ok(7)), Outcome::Yield(Ok(7))));
        // The previous connection comes back to be closed; the delays start over.
        assert!(matches!(core.start(), Some(Some(7))));
        assert!(matches!(core.attempted(refused()), Outcome::Retry(d) if d.is_zero()));
        let fatal = Err(Error::InvalidUri("x".into()));
        assert!(matches!(core.attempted(fatal), Outcome::Yield(Err(_))));
        assert!(core.start().is_none());
    }
}
