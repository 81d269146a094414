//! Client proxies: HTTP `CONNECT` and SOCKS5, chosen from the environment by default.
//!
//! Everything here is shared by both front ends and does no I/O: which proxy a URI goes
//! through ([`Proxy`], with the `*_PROXY` / `NO_PROXY` rules), and the proxy handshakes as a
//! [`Tunnel`] that says what to write and how much to read, and checks the answers. Each
//! front end connects to the proxy, runs the tunnel over its socket (tokio or blocking), then
//! carries on as with a direct connection: TLS to the server for `wss://` (SNI and
//! certificate checked for the server's name, not the proxy's), then the WebSocket handshake.

use std::fmt;
use std::net::IpAddr;

use http::{StatusCode, Uri};

use crate::error::{Error, Result};
use crate::proto::handshake::{basic_credentials, percent_decode, Target};

/// How a client reaches servers: directly, through the proxy the environment names (the
/// default), or through a given proxy. Set it with the client builders' `proxy` setter.
///
/// - [`Proxy::from_env`] (default): `ws://` URIs use `ws_proxy` (python-websockets'
///   variable) or else `http_proxy`, `wss://` URIs `wss_proxy` or else `https_proxy`, both
///   falling back to `all_proxy`; `no_proxy` lists hosts to reach directly (see
///   [`Proxy::from_env`]). Each name is looked up in lowercase, then in uppercase
///   (`HTTP_PROXY`...): lowercase wins, as in curl. Loopback hosts (`localhost`,
///   `127.0.0.0/8`, `::1`) are always reached directly, as Go does: a proxy between a
///   machine and itself is never wanted.
/// - [`Proxy::none`]: always directly.
/// - [`Proxy::url`]: always through this proxy, loopback hosts included.
///
/// Proxy URLs: `http://[user:password@]host[:port]` (HTTP `CONNECT`, port 80 by default;
/// credentials as `Proxy-Authorization: Basic`), `socks5://` (SOCKS5, port 1080, the
/// server's name resolved by the client) and `socks5h://` (SOCKS5, the name resolved by the
/// proxy), with optional `user:password@` (RFC 1929). Credentials are percent-decoded. A URL
/// without a scheme is `http://`, as in curl. `https://` proxies (TLS to the proxy) are not
/// supported: an error says so.
///
/// ```
/// use sockeye::Proxy;
///
/// let proxy = Proxy::url("socks5h://alice:s%40cret@proxy.example:1080")?;
/// assert_eq!(
///     proxy.for_uri("ws://example.com/chat")?.as_deref(),
///     Some("socks5h://alice@proxy.example:1080"),
/// );
/// assert_eq!(Proxy::none().for_uri("ws://example.com/")?, None);
/// let client = sockeye::ClientBuilder::default().proxy(proxy);
/// # let _ = client;
/// # Ok::<(), sockeye::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Proxy {
    mode: Mode,
    /// Hosts reached directly (`NO_PROXY` syntax), besides the environment's.
    bypass: Option<String>,
}

#[derive(Clone, Default, PartialEq, Eq)]
enum Mode {
    #[default]
    Env,
    Off,
    Url(ProxyUrl),
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mode {
            Mode::Env => f.write_str("Proxy::from_env()")?,
            Mode::Off => f.write_str("Proxy::none()")?,
            // The password stays out of logs.
            Mode::Url(url) => write!(f, "Proxy::url({:?})", url.shown)?,
        }
        match &self.bypass {
            Some(list) => write!(f, ".no_proxy({list:?})"),
            None => Ok(()),
        }
    }
}

impl Proxy {
    /// The proxy the environment names for each URI (the default; see [`Proxy`]). The
    /// variables are read at each connection; empty ones count as unset.
    ///
    /// `no_proxy` / `NO_PROXY` is a comma-separated list: `*` matches every host; a name
    /// matches itself and its subdomains, with or without a leading `.` or `*.`
    /// (`example.com`, `.example.com`); an IP address matches itself, `addr/bits` a network
    /// (`10.0.0.0/8`); any entry may end with `:port` to match that port only (IPv6 in
    /// brackets then: `[::1]:8080`). In a CGI program (`REQUEST_METHOD` set), uppercase
    /// `HTTP_PROXY` is ignored: it may come from the request (httpoxy).
    pub fn from_env() -> Proxy {
        Proxy {
            mode: Mode::Env,
            bypass: None,
        }
    }

    /// No proxy: connect to servers directly, whatever the environment says.
    pub fn none() -> Proxy {
        Proxy {
            mode: Mode::Off,
            bypass: None,
        }
    }

    /// Always this proxy: `http://`, `socks5://` or `socks5h://`, with optional
    /// `user:password@`. An invalid or unsupported URL is an [`Error::Proxy`] now.
    pub fn url(url: &str) -> Result<Proxy> {
        Ok(Proxy {
            mode: Mode::Url(ProxyUrl::parse(url)?),
            bypass: None,
        })
    }

    /// Hosts to reach directly, in `NO_PROXY`'s syntax (see [`Proxy::from_env`]): for
    /// [`Proxy::url`], the exceptions to the proxy; for [`Proxy::from_env`], more
    /// exceptions besides the environment's `NO_PROXY`.
    ///
    /// ```
    /// let proxy = sockeye::Proxy::url("http://proxy.corp.example:3128")?
    ///     .no_proxy("corp.example, 10.0.0.0/8");
    /// assert_eq!(proxy.for_uri("ws://chat.corp.example/")?, None);
    /// assert!(proxy.for_uri("ws://example.com/")?.is_some());
    /// # Ok::<(), sockeye::Error>(())
    /// ```
    pub fn no_proxy(mut self, hosts: &str) -> Proxy {
        self.bypass = Some(hosts.to_owned());
        self
    }

    /// The proxy a connection to `uri` goes through, its URL without the password, or
    /// `None` for a direct connection. Reads the environment for [`Proxy::from_env`].
    pub fn for_uri(&self, uri: &str) -> Result<Option<String>> {
        let (_, target) = crate::client::target(uri)?;
        Ok(self.select(&target)?.map(|p| p.shown))
    }

    /// The proxy to reach `target` through, if any.
    pub(crate) fn select(&self, target: &Target) -> Result<Option<ProxyUrl>> {
        self.select_with(target, |name| std::env::var(name).ok())
    }

    /// [`select`](Self::select), with the environment read through `lookup`.
    fn select_with(
        &self,
        target: &Target,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ProxyUrl>> {
        if let Some(list) = &self.bypass {
            if no_proxy_matches(list, &target.host, target.port) {
                return Ok(None);
            }
        }
        match &self.mode {
            Mode::Off => Ok(None),
            Mode::Url(url) => Ok(Some(url.clone())),
            Mode::Env => from_env(target, lookup),
        }
    }
}

// ----- the environment -----------------------------------------------------------------------

/// A variable by its lowercase name, else its uppercase one; empty counts as unset.
fn var(
    lookup: &impl Fn(&str) -> Option<String>,
    lower: &str,
    upper: bool,
) -> Option<(String, String)> {
    let names = [lower.to_owned(), lower.to_ascii_uppercase()];
    names
        .into_iter()
        .take(if upper { 2 } else { 1 })
        .find_map(|name| {
            let value = lookup(&name)?;
            (!value.trim().is_empty()).then_some((name, value))
        })
}

/// The proxy the environment gives for `target`.
fn from_env(target: &Target, lookup: impl Fn(&str) -> Option<String>) -> Result<Option<ProxyUrl>> {
    if is_loopback(&target.host) {
        return Ok(None);
    }
    if let Some((_, list)) = var(&lookup, "no_proxy", true) {
        if no_proxy_matches(&list, &target.host, target.port) {
            return Ok(None);
        }
    }
    // python-websockets' WebSocket-only variables first.
    let found = if target.secure {
        var(&lookup, "wss_proxy", true).or_else(|| var(&lookup, "https_proxy", true))
    } else {
        // httpoxy: in a CGI program (REQUEST_METHOD set), HTTP_PROXY comes from the
        // request's `Proxy` header; only the lowercase name is trusted there, as in curl
        // and reqwest.
        let cgi = lookup("REQUEST_METHOD").is_some();
        var(&lookup, "ws_proxy", true).or_else(|| var(&lookup, "http_proxy", !cgi))
    };
    let Some((name, value)) = found.or_else(|| var(&lookup, "all_proxy", true)) else {
        return Ok(None);
    };
    ProxyUrl::parse(&value).map(Some).map_err(|e| match e {
        Error::Proxy(ProxyError::InvalidUrl { url, reason }) => {
            Error::Proxy(ProxyError::InvalidUrl {
                url,
                reason: format!("{reason} (from {name})"),
            })
        }
        e => e,
    })
}

/// `localhost`, `*.localhost` (RFC 6761 §6.3) and loopback addresses.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `NO_PROXY` excludes `host:port`. The list is comma-separated, entries trimmed:
/// `*` matches every host; an IP address matches itself, `addr/bits` a network; a name
/// matches itself and its subdomains, with or without a leading `.` or `*.` (as reqwest
/// and curl); any entry may end with `:port` (IPv6 in brackets then) to match that port
/// only. Names compare without case or trailing dot.
pub(crate) fn no_proxy_matches(list: &str, host: &str, port: u16) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let host_ip = host.parse::<IpAddr>().ok();
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let Some((name, entry_port)) = split_port(entry) else {
                return false;
            };
            if entry_port.is_some_and(|p| p != port) {
                return false;
            }
            if let Some((net, bits)) = name.split_once('/') {
                return match (net.parse::<IpAddr>(), bits.parse::<u8>(), host_ip) {
                    (Ok(net), Ok(bits), Some(ip)) => in_network(ip, net, bits),
                    _ => false,
                };
            }
            if let Ok(ip) = name.parse::<IpAddr>() {
                return host_ip == Some(ip);
            }
            let name = name.trim_start_matches("*.").trim_start_matches('.');
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            !name.is_empty()
                && (host == name
                    || host
                        .strip_suffix(name.as_str())
                        .is_some_and(|rest| rest.ends_with('.')))
        })
}

/// An entry's host and port: `[v6]:port`, `[v6]`, `v4:port`, `name:port`, a bare IPv6
/// address or a network. `None` for an unreadable port.
fn split_port(entry: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(port) => Some((host, Some(port.parse().ok()?))),
            None if after.is_empty() || after.starts_with('/') => Some((host, None)),
            None => None,
        };
    }
    match entry.rsplit_once(':') {
        // One colon: a port; more: an IPv6 address (or network) without brackets.
        Some((host, port)) if !host.contains(':') => Some((host, Some(port.parse().ok()?))),
        _ => Some((entry, None)),
    }
}

/// Whether `ip` is in `net/bits` (same family only; a prefix too long matches nothing).
fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
        let bits = usize::from(bits);
        if bits > a.len() * 8 {
            return false;
        }
        let (whole, rest) = (bits / 8, bits % 8);
        a[..whole] == b[..whole]
            && (rest == 0 || (a[whole] ^ b[whole]) & (0xFFu8 << (8 - rest)) == 0)
    }
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => prefix_eq(&a.octets(), &b.octets(), bits),
        (IpAddr::V6(a), IpAddr::V6(b)) => prefix_eq(&a.octets(), &b.octets(), bits),
        _ => false,
    }
}

// ----- proxy URLs ----------------------------------------------------------------------------

/// The protocol spoken to a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// HTTP `CONNECT` (RFC 9110 §9.3.6).
    Http,
    /// SOCKS5 (RFC 1928), the server's name resolved by the proxy (`socks5h`) or not.
    Socks5 { remote_dns: bool },
}

/// A parsed proxy URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ProxyUrl {
    kind: Kind,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `user:password` as written in the URL (percent-encoded), if any.
    userinfo: Option<String>,
    /// The URL without the password, for messages.
    shown: String,
}

impl ProxyUrl {
    fn parse(url: &str) -> Result<ProxyUrl> {
        let invalid = |reason: &str| {
            Error::Proxy(ProxyError::InvalidUrl {
                url: hide_password(url),
                reason: reason.to_owned(),
            })
        };
        let url = url.trim();
        let full = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let uri: Uri = full.parse().map_err(|_| invalid("not a URL"))?;
        let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
        let (kind, default_port) = match scheme.as_str() {
            "http" => (Kind::Http, 80),
            "socks5" => (Kind::Socks5 { remote_dns: false }, 1080),
            "socks5h" => (Kind::Socks5 { remote_dns: true }, 1080),
            "https" => {
                return Err(invalid(
                    "https:// proxies (TLS to the proxy) are not supported; use http:// \
                     (wss:// stays encrypted end to end through the tunnel)",
                ))
            }
            _ => return Err(invalid("the scheme must be http, socks5 or socks5h")),
        };
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid("a proxy URL has no path or query"));
        }
        let userinfo = authority
            .as_str()
            .rsplit_once('@')
            .map(|(info, _)| info.to_owned());
        if let (Some(info), Kind::Socks5 { .. }) = (&userinfo, kind) {
            // RFC 1929: each is one length byte and at most 255 bytes.
            let (user, password) = split_userinfo(info);
            if user.is_empty() || user.len() > 255 || password.len() > 255 {
                return Err(invalid(
                    "SOCKS5 username must be 1 to 255 bytes, password at most 255 (RFC 1929)",
                ));
            }
        }
        let port = authority.port_u16().unwrap_or(default_port);
        let shown_host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let shown_user = userinfo
            .as_deref()
            .map(|info| format!("{}@", info.split(':').next().unwrap_or("")))
            .unwrap_or_default();
        Ok(ProxyUrl {
            kind,
            host: host.to_owned(),
            port,
            shown: format!("{scheme}://{shown_user}{shown_host}:{port}"),
            userinfo,
        })
    }

    /// What to ask the proxy to connect to for `host`: an IP address as is, a name as is
    /// (the proxy resolves it), or `None` when the client must resolve it first and pass
    /// the address (`socks5://`).
    pub(crate) fn dest(&self, host: &str) -> Option<Dest> {
        match host.parse() {
            Ok(ip) => Some(Dest::Ip(ip)),
            Err(_) if self.kind == (Kind::Socks5 { remote_dns: false }) => None,
            Err(_) => Some(Dest::Name(host.to_owned())),
        }
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// The percent-decoded user and password of a userinfo (no colon: an empty password).
fn split_userinfo(info: &str) -> (Vec<u8>, Vec<u8>) {
    let (user, password) = info.split_once(':').unwrap_or((info, ""));
    (percent_decode(user), percent_decode(password))
}

/// A URL for an error message: `user:password@` becomes `user@`.
fn hide_password(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((info, host)) => {
                format!("{scheme}://{}@{host}", info.split(':').next().unwrap_or(""))
            }
            None => url.to_owned(),
        },
        None => hide_password(&format!("http://{url}"))
            .trim_start_matches("http://")
            .to_owned(),
    }
}

// ----- errors --------------------------------------------------------------------------------

/// Why a connection through a proxy failed ([`Error::Proxy`]). `proxy` is the proxy's URL
/// without its password.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// The proxy URL is invalid, or of a kind sockeye does not speak (`https://`,
    /// `socks4://`).
    InvalidUrl {
        /// The URL, without its password.
        url: String,
        /// What is wrong with it (and the variable it came from).
        reason: String,
    },
    /// The HTTP proxy answered `CONNECT` with a status other than 2xx (407 is
    /// [`AuthRequired`](Self::AuthRequired) or [`AuthFailed`](Self::AuthFailed)).
    Status {
        /// The proxy.
        proxy: String,
        /// Its answer.
        status: StatusCode,
    },
    /// The proxy wants credentials and the proxy URL has none (HTTP 407, or SOCKS5 asking
    /// for username/password authentication).
    AuthRequired {
        /// The proxy.
        proxy: String,
    },
    /// The proxy refused the credentials of the proxy URL (HTTP 407, or a SOCKS5
    /// username/password failure).
    AuthFailed {
        /// The proxy.
        proxy: String,
    },
    /// The SOCKS5 proxy could not connect to the server: the reply code of RFC 1928 §6
    /// (1 general failure, 2 not allowed by ruleset, 3 network unreachable, 4 host
    /// unreachable, 5 connection refused, 6 TTL expired, 7 command not supported, 8 address
    /// type not supported).
    SocksReply {
        /// The proxy.
        proxy: String,
        /// The reply code.
        code: u8,
    },
    /// The proxy closed the connection before it answered.
    Closed {
        /// The proxy.
        proxy: String,
    },
    /// The proxy's answer breaks its protocol (not HTTP, not SOCKS5, a head too long, an
    /// unknown address type...).
    Protocol {
        /// The proxy.
        proxy: String,
        /// What was wrong.
        reason: String,
    },
}

impl ProxyError {
    /// Whether a reconnecting client retries after this error: the proxy's gateway errors
    /// (500, 502, 503, 504) and SOCKS5 failures that may be transient (1, 3, 4, 5, 6), as
    /// [`crate::is_retryable`] does for the server's 5xx; and a proxy that closed early.
    pub fn is_transient(&self) -> bool {
        match self {
            ProxyError::Status { status, .. } => matches!(status.as_u16(), 500 | 502 | 503 | 504),
            ProxyError::SocksReply { code, .. } => matches!(code, 1 | 3 | 4 | 5 | 6),
            ProxyError::Closed { .. } => true,
            _ => false,
        }
    }
}

fn socks_reply_text(code: u8) -> &'static str {
    match code {
        1 => "general SOCKS server failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unassigned reply code",
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::InvalidUrl { url, reason } => {
                write!(f, "invalid proxy URL {url}: {reason}")
            }
            ProxyError::Status { proxy, status } => {
                write!(f, "proxy {proxy} refused to connect: HTTP {status}")
            }
            ProxyError::AuthRequired { proxy } => write!(
                f,
                "proxy {proxy} requires authentication: give user:password@ in the proxy URL"
            ),
            ProxyError::AuthFailed { proxy } => {
                write!(f, "proxy {proxy} refused the username and password")
            }
            ProxyError::SocksReply { proxy, code } => write!(
                f,
                "SOCKS5 proxy {proxy} failed to connect: {} (reply {code})",
                socks_reply_text(*code)
            ),
            ProxyError::Closed { proxy } => {
                write!(f, "proxy {proxy} closed the connection before answering")
            }
            ProxyError::Protocol { proxy, reason } => write!(f, "proxy {proxy}: {reason}"),
        }
    }
}

impl std::error::Error for ProxyError {}

// ----- the handshakes ------------------------------------------------------------------------

/// The longest `CONNECT` answer head read from an HTTP proxy (they are a line or two).
const MAX_CONNECT_HEAD: usize = 8 * 1024;

/// Where a SOCKS5 proxy connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dest {
    /// A name the proxy resolves (`socks5h`, and HTTP proxies always).
    Name(String),
    /// An address (an IP host, or a name the client resolved).
    Ip(IpAddr),
}

/// Which answer a [`Tunnel`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The head of the HTTP proxy's answer to `CONNECT`.
    ConnectHead,
    /// The SOCKS5 method selection (RFC 1928 §3).
    SocksMethod,
    /// The username/password status (RFC 1929 §2).
    SocksAuth,
    /// The SOCKS5 reply to CONNECT (RFC 1928 §6).
    SocksReply,
    /// The tunnel is open.
    Done,
}

/// A proxy handshake without I/O, for both front ends:
///
/// ```text
/// loop {
///     write tunnel.transmit();
///     if tunnel.wants() == 0 { break }        // open: carry on with TLS / WebSocket
///     read at most tunnel.wants() bytes;      // 0 bytes: tunnel.eof()
///     tunnel.receive(bytes)?;
/// }
/// ```
///
/// `wants` never asks for a byte beyond the proxy's answer, so nothing of the server's
/// traffic is read here.
pub(crate) struct Tunnel {
    proxy: String,
    step: Step,
    /// Bytes to write.
    out: Vec<u8>,
    /// The answer received so far.
    buf: Vec<u8>,
    /// SOCKS5: the credentials to send if the proxy asks, then the CONNECT request.
    auth: Option<Vec<u8>>,
    connect: Vec<u8>,
    /// Whether credentials were offered (to tell "required" from "refused").
    credentials: bool,
}

impl Tunnel {
    /// The handshake with `proxy` for a tunnel to `dest` port `port` (`host` is `dest`'s
    /// name for HTTP: the `CONNECT` target).
    pub(crate) fn new(proxy: &ProxyUrl, host: &str, port: u16, dest: Dest) -> Result<Tunnel> {
        let mut tunnel = Tunnel {
            proxy: proxy.shown.clone(),
            step: Step::Done,
            out: Vec::new(),
            buf: Vec::new(),
            auth: None,
            connect: Vec::new(),
            credentials: proxy.userinfo.is_some(),
        };
        match proxy.kind {
            Kind::Http => {
                // RFC 9110 §9.3.6: the authority form, IPv6 in brackets; Host the same.
                let authority = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
                if let Some(info) = &proxy.userinfo {
                    let info = if info.contains(':') {
                        info.clone()
                    } else {
                        format!("{info}:")
                    };
                    let value = basic_credentials(&info).map_err(Error::Handshake)?;
                    head.push_str(&format!("Proxy-Authorization: {value}\r\n"));
                }
                head.push_str("\r\n");
                tunnel.out = head.into_bytes();
                tunnel.step = Step::ConnectHead;
            }
            Kind::Socks5 { .. } => {
                // RFC 1928 §3: version 5, the methods offered: 0 none, 2 username/password.
                tunnel.out = match &proxy.userinfo {
                    Some(_) => vec![5, 2, 0, 2],
                    None => vec![5, 1, 0],
                };
                if let Some(info) = &proxy.userinfo {
                    // RFC 1929 §2: version 1, ULEN, UNAME, PLEN, PASSWD (lengths checked
                    // when the URL was parsed).
                    let (user, password) = split_userinfo(info);
                    let mut auth = vec![1, user.len() as u8];
                    auth.extend(&user);
                    auth.push(password.len() as u8);
                    auth.extend(&password);
                    tunnel.auth = Some(auth);
                }
                // RFC 1928 §4: version 5, CONNECT, reserved, the address, the port.
                let mut connect = vec![5, 1, 0];
                match &dest {
                    Dest::Ip(IpAddr::V4(ip)) => {
                        connect.push(1);
                        connect.extend(ip.octets());
                    }
                    Dest::Ip(IpAddr::V6(ip)) => {
                        connect.push(4);
                        connect.extend(ip.octets());
                    }
                    Dest::Name(name) => {
                        let len = u8::try_from(name.len())
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| {
                                Error::InvalidUri(format!(
                                    "{name}: a SOCKS5 host name is 1 to 255 bytes"
                                ))
                            })?;
                        connect.push(3);
                        connect.push(len);
                        connect.extend(name.as_bytes());
                    }
                }
                connect.extend(port.to_be_bytes());
                tunnel.connect = connect;
                tunnel.step = Step::SocksMethod;
            }
        }
        Ok(tunnel)
    }

    /// The bytes to write now (empty if none).
    pub(crate) fn transmit(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// How many bytes to read at most: what cannot go past the proxy's answer; 0 once the
    /// tunnel is open.
    pub(crate) fn wants(&self) -> usize {
        let len = self.buf.len();
        match self.step {
            Step::Done => 0,
            Step::SocksMethod | Step::SocksAuth => 2usize.saturating_sub(len),
            Step::SocksReply => {
                // VER REP RSV ATYP, then the address (its first byte is a name's length)
                // and the port.
                let total = match self.buf.get(3..5) {
                    Some([1, _]) => 4 + 4 + 2,
                    Some([4, _]) => 4 + 16 + 2,
                    Some([3, n]) => 4 + 1 + usize::from(*n) + 2,
                    _ => 5,
                };
                total.saturating_sub(len)
            }
            // The head ends with CRLF CRLF: read no more than could complete it.
            // The head ends with an empty line; a line ends with LF, CRLF or a bare LF
            // (RFC 9112 §2.2 lets a recipient accept it).
            Step::ConnectHead => {
                if self.buf.ends_with(b"\n") || self.buf.ends_with(b"\n\r") {
                    1
                } else {
                    2
                }
            }
        }
    }

    /// The error when the proxy closed the connection before the tunnel was open.
    pub(crate) fn eof(&self) -> Error {
        Error::Proxy(ProxyError::Closed {
            proxy: self.proxy.clone(),
        })
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Proxy(ProxyError::Protocol {
            proxy: self.proxy.clone(),
            reason: reason.into(),
        })
    }

    /// Takes bytes read from the proxy (at most [`wants`](Self::wants)).
    pub(crate) fn receive(&mut self, data: &[u8]) -> Result<()> {
        if data.len() > self.wants() {
            return Err(Error::Misuse("proxy tunnel: more bytes than it asked for"));
        }
        self.buf.extend_from_slice(data);
        match self.step {
            Step::Done => Err(self.error("data after the tunnel opened")),
            Step::ConnectHead => self.connect_head(),
            Step::SocksMethod => self.socks_method(),
            Step::SocksAuth => self.socks_auth(),
            Step::SocksReply => self.socks_reply(),
        }
    }

    fn connect_head(&mut self) -> Result<()> {
        if self.buf.len() > MAX_CONNECT_HEAD {
            return Err(self.error(format!(
                "the answer to CONNECT is longer than {MAX_CONNECT_HEAD} bytes"
            )));
        }
        // The status line is checked as soon as it is complete: a peer that is not an
        // HTTP proxy is told apart without waiting for the whole head.
        let Some(line_end) = self.buf.iter().position(|b| *b == b'\n') else {
            return Ok(());
        };
        let line = &self.buf[..line_end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let status = parse_status_line(line).ok_or_else(|| {
            let line = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
            self.error(format!("not an HTTP answer to CONNECT: {line:?}"))
        })?;
        if !(self.buf.ends_with(b"\n\n") || self.buf.ends_with(b"\n\r\n")) {
            return Ok(());
        }
        let proxy = self.proxy.clone();
        match status {
            // RFC 9110 §9.3.6: "Any 2xx (Successful) response indicates that the sender
            // (and all inbound proxies) will switch to tunnel mode".
            s if s.is_success() => {
                self.step = Step::Done;
                Ok(())
            }
            StatusCode::PROXY_AUTHENTICATION_REQUIRED if self.credentials => {
                Err(Error::Proxy(ProxyError::AuthFailed { proxy }))
            }
            StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
                Err(Error::Proxy(ProxyError::AuthRequired { proxy }))
            }
            status => Err(Error::Proxy(ProxyError::Status { proxy, status })),
        }
    }

    fn socks_method(&mut self) -> Result<()> {
        let [version, method] = self.buf[..] else {
            return Ok(());
        };
        if version != 5 {
            return Err(self.error(format!("not a SOCKS5 proxy (version {version})")));
        }
        self.buf.clear();
        match (method, self.auth.take()) {
            (0, _) => {
                self.out = std::mem::take(&mut self.connect);
                self.step = Step::SocksReply;
            }
            (2, Some(auth)) => {
                self.out = auth;
                self.step = Step::SocksAuth;
            }
            (2 | 0xFF, None) => {
                let proxy = self.proxy.clone();
                return Err(Error::Proxy(ProxyError::AuthRequired { proxy }));
            }
            (0xFF, Some(_)) => {
                return Err(self.error(
                    "accepts none of the authentication methods offered (none, username/password)",
                ))
            }
            (m, _) => return Err(self.error(format!("chose method {m}, which was not offered"))),
        }
        Ok(())
    }

    fn socks_auth(&mut self) -> Result<()> {
        let [version, status] = self.buf[..] else {
            return Ok(());
        };
        if version != 1 {
            return Err(self.error(format!(
                "username/password answer of version {version}, not 1 (RFC 1929)"
            )));
        }
        if status != 0 {
            let proxy = self.proxy.clone();
            return Err(Error::Proxy(ProxyError::AuthFailed { proxy }));
        }
        self.buf.clear();
        self.out = std::mem::take(&mut self.connect);
        self.step = Step::SocksReply;
        Ok(())
    }

    fn socks_reply(&mut self) -> Result<()> {
        if let Some(&version) = self.buf.first() {
            if version != 5 {
                return Err(self.error(format!("SOCKS reply of version {version}, not 5")));
            }
        }
        if let Some(&code) = self.buf.get(1) {
            if code != 0 {
                let proxy = self.proxy.clone();
                return Err(Error::Proxy(ProxyError::SocksReply { proxy, code }));
            }
        }
        if let Some(&atyp) = self.buf.get(3) {
            if !matches!(atyp, 1 | 3 | 4) {
                return Err(self.error(format!("unknown address type {atyp} in its reply")));
            }
        }
        if self.buf.len() >= 5 && self.complete_reply() {
            self.step = Step::Done;
        }
        Ok(())
    }

    /// Whether the whole SOCKS5 reply is in (its length is known from 5 bytes on).
    fn complete_reply(&self) -> bool {
        let total = match self.buf[3] {
            1 => 10,
            4 => 22,
            _ => 7 + usize::from(self.buf[4]),
        };
        self.buf.len() >= total
    }
}

/// The status of `HTTP/1.x SSS reason`, if the line is one.
fn parse_status_line(line: &[u8]) -> Option<StatusCode> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (minor, rest) = rest.split_first()?;
    if !minor.is_ascii_digit() {
        return None;
    }
    let rest = rest.strip_prefix(b" ")?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || !matches!(rest.get(3), None | Some(b' ')) {
        return None;
    }
    StatusCode::from_bytes(code).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn target(uri: &str) -> Target {
        crate::client::target(uri).unwrap().1
    }

    /// The proxy the environment `vars` gives for `uri`, shown.
    fn env_proxy(vars: &[(&str, &str)], uri: &str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_env(&target(uri), |name| vars.get(name).cloned())
            .unwrap()
            .map(|p| p.shown)
    }

    /// The environment's choice: variables, URI, the proxy expected.
    type EnvCase = (
        &'static [(&'static str, &'static str)],
        &'static str,
        Option<&'static str>,
    );

    const ENV_CASES: &[EnvCase] = &[
        // By scheme, falling back to ALL_PROXY.
        (
            &[("HTTP_PROXY", "http://h:1"), ("HTTPS_PROXY", "http://s:2")],
            "ws://a.test/",
            Some("http://h:1"),
        ),
        (
            &[("HTTP_PROXY", "http://h:1"), ("HTTPS_PROXY", "http://s:2")],
            "wss://a.test/",
            Some("http://s:2"),
        ),
        (
            &[
                ("ALL_PROXY", "socks5h://all:3"),
                ("HTTPS_PROXY", "http://s:2"),
            ],
            "ws://a.test/",
            Some("socks5h://all:3"),
        ),
        (
            &[
                ("ALL_PROXY", "socks5h://all:3"),
                ("HTTPS_PROXY", "http://s:2"),
            ],
            "wss://a.test/",
            Some("http://s:2"),
        ),
        (&[], "ws://a.test/", None),
        // Empty values are unset.
        (
            &[("http_proxy", " "), ("ALL_PROXY", "http://all:4")],
            "ws://a.test/",
            Some("http://all:4"),
        ),
        // python-websockets' WebSocket variables first; https_proxy is for wss:// only.
        (
            &[("ws_proxy", "http://ws:1"), ("http_proxy", "http://h:2")],
            "ws://a.test/",
            Some("http://ws:1"),
        ),
        (
            &[
                ("WSS_PROXY", "socks5h://wss:3"),
                ("https_proxy", "http://s:4"),
            ],
            "wss://a.test/",
            Some("socks5h://wss:3"),
        ),
        (&[("https_proxy", "http://s:4")], "ws://a.test/", None),
        // Lowercase wins.
        (
            &[
                ("HTTP_PROXY", "http://upper:1"),
                ("http_proxy", "http://lower:2"),
            ],
            "ws://a.test/",
            Some("http://lower:2"),
        ),
        (
            &[
                ("ALL_PROXY", "http://upper:1"),
                ("all_proxy", "http://lower:2"),
            ],
            "ws://a.test/",
            Some("http://lower:2"),
        ),
        (
            &[
                ("ALL_PROXY", "http://p:1"),
                ("NO_PROXY", "*"),
                ("no_proxy", "b.test"),
            ],
            "ws://a.test/",
            Some("http://p:1"),
        ),
        (
            &[
                ("ALL_PROXY", "http://p:1"),
                ("NO_PROXY", "*"),
                ("no_proxy", "b.test"),
            ],
            "ws://b.test/",
            None,
        ),
        // httpoxy: in CGI, only lowercase http_proxy.
        (
            &[("HTTP_PROXY", "http://evil:1"), ("REQUEST_METHOD", "GET")],
            "ws://a.test/",
            None,
        ),
        (
            &[("http_proxy", "http://ok:1"), ("REQUEST_METHOD", "GET")],
            "ws://a.test/",
            Some("http://ok:1"),
        ),
    ];

    #[test]
    fn env_selection() {
        for &(vars, uri, want) in ENV_CASES {
            if uri.starts_with("wss:") && !cfg!(feature = "tls") {
                continue;
            }
            assert_eq!(env_proxy(vars, uri).as_deref(), want, "{vars:?} {uri}");
        }
    }

    #[test]
    fn env_never_proxies_loopback() {
        let vars = [("ALL_PROXY", "http://p:1")];
        for uri in [
            "ws://localhost:1/",
            "ws://LOCALHOST./",
            "ws://app.localhost/",
            "ws://127.0.0.1/",
            "ws://127.9.9.9/",
            "ws://[::1]:8/",
        ] {
            assert_eq!(env_proxy(&vars, uri), None, "{uri}");
        }
        assert!(env_proxy(&vars, "ws://localhost.example/").is_some());
        // An explicit proxy is used for loopback too.
        let explicit = Proxy::url("http://p:1").unwrap();
        assert!(explicit
            .select(&target("ws://127.0.0.1/"))
            .unwrap()
            .is_some());
        assert!(Proxy::none()
            .select(&target("ws://a.test/"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn env_errors_name_the_variable() {
        let t = target("ws://a.test/");
        let e = from_env(&t, |n| (n == "ALL_PROXY").then(|| "ftp://x".to_owned())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid proxy URL ftp://x: the scheme must be http, socks5 or socks5h (from ALL_PROXY)"
        );
    }

    #[test]
    fn no_proxy_lists() {
        let cases: &[(&str, &str, u16, bool)] = &[
            ("*", "anything.test", 80, true),
            ("example.com", "example.com", 80, true),
            ("example.com", "www.example.com", 80, true),
            ("example.com", "notexample.com", 80, false),
            (".example.com", "example.com", 80, true),
            (".example.com", "a.b.example.com", 80, true),
            ("*.example.com", "a.example.com", 80, true),
            ("EXAMPLE.com.", "www.Example.COM", 80, true),
            ("example.com:8080", "example.com", 8080, true),
            ("example.com:8080", "example.com", 80, false),
            (" a.test , b.test ", "b.test", 1, true),
            ("a.test,,", "c.test", 1, false),
            ("10.0.0.1", "10.0.0.1", 1, true),
            ("10.0.0.1", "10.0.0.2", 1, false),
            ("10.0.0.1:99", "10.0.0.1", 99, true),
            ("10.0.0.0/8", "10.200.3.4", 1, true),
            ("10.0.0.0/8", "11.0.0.1", 1, false),
            ("192.168.1.0/23", "192.168.0.9", 1, true),
            ("192.168.1.0/24", "192.168.0.9", 1, false),
            ("0.0.0.0/0", "1.2.3.4", 1, true),
            ("::2", "::2", 1, true),
            ("[::2]", "::2", 1, true),
            ("[::2]:5", "::2", 5, true),
            ("[::2]:5", "::2", 6, false),
            ("fd00::/8", "fd12::1", 1, true),
            ("fd00::/8", "fe12::1", 1, false),
            ("10.0.0.0/8", "ten.test", 1, false),
            ("example.com:notaport", "example.com", 80, false),
            ("[::2", "::2", 1, false),
            (".", "a.test", 1, false),
            ("10.0.0.0/99", "10.1.1.1", 1, false),
            ("10.1.1.1/32", "10.1.1.1", 1, true),
            ("10.0.0.0/x", "10.1.1.1", 1, false),
        ];
        for &(list, host, port, want) in cases {
            assert_eq!(
                no_proxy_matches(list, host, port),
                want,
                "{list:?} {host}:{port}"
            );
        }
    }

    #[test]
    fn proxy_urls() {
        let shown = |u: &str| ProxyUrl::parse(u).map(|p| p.shown);
        assert_eq!(shown("http://p.test").unwrap(), "http://p.test:80");
        assert_eq!(shown("p.test:3128").unwrap(), "http://p.test:3128");
        assert_eq!(
            shown("HTTP://u:pw@p.test:3128/").unwrap(),
            "http://u@p.test:3128"
        );
        assert_eq!(shown("socks5://[::1]").unwrap(), "socks5://[::1]:1080");
        assert_eq!(
            shown("socks5h://u:p@p.test:9").unwrap(),
            "socks5h://u@p.test:9"
        );
        let name = Some(Dest::Name("h.test".into()));
        let ip = Some(Dest::Ip("::1".parse().unwrap()));
        assert_eq!(ProxyUrl::parse("socks5://p").unwrap().dest("h.test"), None);
        assert_eq!(ProxyUrl::parse("socks5://p").unwrap().dest("::1"), ip);
        assert_eq!(ProxyUrl::parse("socks5h://p").unwrap().dest("h.test"), name);
        assert_eq!(ProxyUrl::parse("http://p").unwrap().dest("h.test"), name);
        for (bad, reason) in [
            ("https://p.test", "not supported"),
            ("socks4://p.test", "scheme"),
            ("http://p.test/path", "no path"),
            ("http://p.test?q", "no path"),
            ("http://", "not a URL"),
            ("http://p test", "not a URL"),
            ("socks5://:pw@p.test", "1 to 255"),
        ] {
            let e = ProxyUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains(reason), "{bad}: {e}");
        }
        let long = format!("socks5://{}:p@p.test", "u".repeat(256));
        assert!(ProxyUrl::parse(&long).is_err());
        // Passwords stay out of errors and Debug.
        let e = Proxy::url("https://u:secret@p.test")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
        let p = Proxy::url("http://u:secret@p.test").unwrap();
        assert!(!format!("{p:?}").contains("secret"));
    }

    /// Runs a tunnel against scripted answers; returns what it wrote, or its error.
    fn run(proxy: &str, dest: Dest, answers: &[&[u8]]) -> Result<Vec<Vec<u8>>> {
        let proxy = ProxyUrl::parse(proxy).unwrap();
        let mut tunnel = Tunnel::new(&proxy, "ws.test", 8080, dest)?;
        let mut written = Vec::new();
        let mut input: Vec<u8> = answers.concat();
        loop {
            let out = tunnel.transmit();
            if !out.is_empty() {
                written.push(out);
            }
            let want = tunnel.wants();
            if want == 0 {
                assert!(input.is_empty(), "bytes left: {input:?}");
                return Ok(written);
            }
            if input.is_empty() {
                return Err(tunnel.eof());
            }
            let n = want.min(input.len());
            let chunk: Vec<u8> = input.drain(..n).collect();
            tunnel.receive(&chunk)?;
        }
    }

    fn name() -> Dest {
        Dest::Name("ws.test".into())
    }

    #[test]
    fn http_connect() {
        let w = run(
            "http://p",
            name(),
            &[b"HTTP/1.1 200 Connection established\r\n\r\n"],
        )
        .unwrap();
        assert_eq!(
            w,
            [b"CONNECT ws.test:8080 HTTP/1.1\r\nHost: ws.test:8080\r\n\r\n".to_vec()]
        );
        // HTTP/1.0, any 2xx, headers; credentials percent-decoded (user "a b", password "p:w").
        let w = run(
            "http://a%20b:p%3Aw@p",
            name(),
            &[b"HTTP/1.0 204 OK\r\nVia: x\r\n\r\n"],
        )
        .unwrap();
        let head = String::from_utf8(w[0].clone()).unwrap();
        assert!(
            head.contains("Proxy-Authorization: Basic YSBiOnA6dw==\r\n"),
            "{head}"
        );
        let proxy = ProxyUrl::parse("http://p").unwrap();
        let mut t = Tunnel::new(&proxy, "::1", 9, Dest::Ip("::1".parse().unwrap())).unwrap();
        assert!(t
            .transmit()
            .starts_with(b"CONNECT [::1]:9 HTTP/1.1\r\nHost: [::1]:9\r\n"));
    }

    #[test]
    fn http_connect_failures() {
        let err = |proxy: &str, answer: &[u8]| run(proxy, name(), &[answer]).unwrap_err();
        assert!(matches!(
            err(
                "http://p",
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"
            ),
            Error::Proxy(ProxyError::AuthRequired { .. })
        ));
        assert!(matches!(
            err("http://u:p@p", b"HTTP/1.1 407 Nope\r\n\r\n"),
            Error::Proxy(ProxyError::AuthFailed { .. })
        ));
        let e = err(
            "http://p",
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\n",
        );
        assert!(matches!(&e, Error::Proxy(ProxyError::Status { status, .. }) if *status == 502));
        assert_eq!(
            e.to_string(),
            "proxy http://p:80 refused to connect: HTTP 502 Bad Gateway"
        );
        for garbage in [
            &b"SSH-2.0-OpenSSH\r\n"[..],
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 2000 x\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"\x05\x00\r\n",
            b"HTTP/1.1 099 x\r\n\r\n",
        ] {
            let e = err("http://p", garbage);
            assert!(
                matches!(e, Error::Proxy(ProxyError::Protocol { .. })),
                "{garbage:?}: {e}"
            );
        }
        // Closed midway; a head that never ends is bounded.
        assert!(matches!(
            err("http://p", b"HTTP/1.1 200 OK\r\n"),
            Error::Proxy(ProxyError::Closed { .. })
        ));
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        endless.extend(std::iter::repeat_n(b'x', 20_000));
        let e = err("http://p", &endless);
        assert!(e.to_string().contains("longer than 8192 bytes"), "{e}");
    }

    #[test]
    fn http_connect_reads_nothing_past_the_head() {
        let proxy = ProxyUrl::parse("http://p").unwrap();
        for answer in [
            &b"HTTP/1.1 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nVia: a\r\nX: \r\r\n\r\n",
            b"HTTP/1.0 200 OK\n\n",
            b"HTTP/1.0 200 OK\nVia: a\r\n\n",
            b"HTTP/1.0 200 OK\r\nVia: a\n\r\n",
        ] {
            let mut t = Tunnel::new(&proxy, "ws.test", 1, name()).unwrap();
            t.transmit();
            let mut fed = 0;
            while t.wants() > 0 {
                let n = t.wants();
                assert!(fed + n <= answer.len(), "would read past {answer:?}");
                t.receive(&answer[fed..fed + n]).unwrap();
                fed += n;
            }
            assert_eq!(fed, answer.len(), "{answer:?}");
        }
    }

    #[test]
    fn socks5_no_auth_by_name_and_address() {
        let w = run(
            "socks5h://p",
            name(),
            &[&[5, 0], &[5, 0, 0, 1, 10, 0, 0, 1, 0x1F, 0x90]],
        )
        .unwrap();
        let mut connect = vec![5, 1, 0, 3, 7];
        connect.extend(b"ws.test");
        connect.extend([0x1F, 0x90]);
        assert_eq!(w, [vec![5, 1, 0], connect]);
        let ip = Dest::Ip("192.0.2.7".parse().unwrap());
        // Replies with a name and an IPv6 address as the bound address.
        let w = run(
            "socks5://p",
            ip,
            &[&[5, 0], &[5, 0, 0, 3, 2, b'h', b'i', 0, 1]],
        )
        .unwrap();
        assert_eq!(w[1], [5, 1, 0, 1, 192, 0, 2, 7, 0x1F, 0x90]);
        let ip6 = Dest::Ip("2001:db8::1".parse().unwrap());
        let mut reply = vec![5, 0, 0, 4];
        reply.extend([0; 18]);
        let w = run("socks5://p", ip6, &[&[5, 0], &reply]).unwrap();
        assert_eq!(w[1][..4], [5, 1, 0, 4]);
        assert_eq!(w[1].len(), 4 + 16 + 2);
    }

    #[test]
    fn socks5_username_password() {
        let ok: &[&[u8]] = &[&[5, 2], &[1, 0], &[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]];
        let w = run("socks5h://al%40ce:pw@p", name(), ok).unwrap();
        assert_eq!(w[0], [5, 2, 0, 2]);
        assert_eq!(w[1], b"\x01\x05al@ce\x02pw");
        // The proxy may choose no authentication although credentials are offered.
        let w = run(
            "socks5h://u:p@p",
            name(),
            &[&[5, 0], &[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]],
        )
        .unwrap();
        assert_eq!(w.len(), 2);
        let e = run("socks5h://u:p@p", name(), &[&[5, 2], &[1, 1]]).unwrap_err();
        assert!(
            matches!(e, Error::Proxy(ProxyError::AuthFailed { .. })),
            "{e}"
        );
        let e = run("socks5h://p", name(), &[&[5, 2]]).unwrap_err();
        assert!(
            matches!(e, Error::Proxy(ProxyError::AuthRequired { .. })),
            "{e}"
        );
        let e = run("socks5h://p", name(), &[&[5, 0xFF]]).unwrap_err();
        assert!(
            matches!(e, Error::Proxy(ProxyError::AuthRequired { .. })),
            "{e}"
        );
        let e = run("socks5h://u:p@p", name(), &[&[5, 0xFF]]).unwrap_err();
        assert!(
            e.to_string().contains("none of the authentication methods"),
            "{e}"
        );
    }

    #[test]
    fn socks5_every_reply_code_is_an_error() {
        for code in 1..=9u8 {
            let e = run(
                "socks5h://p",
                name(),
                &[&[5, 0], &[5, code, 0, 1, 0, 0, 0, 0, 0, 0]],
            )
            .unwrap_err();
            assert!(
                matches!(&e, Error::Proxy(ProxyError::SocksReply { code: c, .. }) if *c == code),
                "{code}: {e}"
            );
            let text = e.to_string();
            assert!(text.contains(&format!("(reply {code})")), "{text}");
            let retry = matches!(code, 1 | 3 | 4 | 5 | 6);
            assert_eq!(crate::is_retryable(&e), retry, "{code}");
        }
        let e = run("socks5h://p", name(), &[&[5, 0], &[5, 5, 0, 1]]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SOCKS5 proxy socks5h://p:1080 failed to connect: connection refused (reply 5)"
        );
    }

    #[test]
    fn random_answers_never_panic() {
        // xorshift: deterministic, no dependency.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for proxy in ["http://p", "http://u:p@p", "socks5h://p", "socks5://u:p@p"] {
            let proxy = ProxyUrl::parse(proxy).unwrap();
            for _ in 0..2000 {
                let mut t = Tunnel::new(&proxy, "h.test", 1, name()).unwrap();
                // Bytes biased towards the ones the parsers look for.
                let alphabet = b"\x00\x01\x02\x03\x04\x05\xff HTTP/1.0 200\r\n";
                for _ in 0..64 {
                    t.transmit();
                    let want = t.wants();
                    if want == 0 {
                        break;
                    }
                    let n = 1 + (next() as usize) % want;
                    let chunk: Vec<u8> = (0..n)
                        .map(|_| alphabet[(next() as usize) % alphabet.len()])
                        .collect();
                    if t.receive(&chunk).is_err() {
                        break;
                    }
                }
            }
        }
        let proxy = ProxyUrl::parse("socks5h://p").unwrap();
        let mut t = Tunnel::new(&proxy, "h.test", 1, name()).unwrap();
        assert!(matches!(t.receive(&[5, 0, 0]), Err(Error::Misuse(_))));
    }

    #[test]
    fn socks5_malformed_answers() {
        let cases: &[&[&[u8]]] = &[
            &[&[4, 0]],                   // not SOCKS5
            &[b"HT"],                     // an HTTP proxy
            &[&[5, 1]],                   // a method not offered
            &[&[5, 0], &[4, 0, 0, 1]],    // reply version
            &[&[5, 0], &[5, 0, 0, 9, 0]], // address type
        ];
        for answers in cases {
            let e = run("socks5h://p", name(), answers).unwrap_err();
            assert!(
                matches!(e, Error::Proxy(ProxyError::Protocol { .. })),
                "{answers:?}: {e}"
            );
        }
        let e = run("socks5h://u:p@p", name(), &[&[5, 2], &[5, 0]]).unwrap_err();
        assert!(e.to_string().contains("RFC 1929"), "{e}");
        // Cut short anywhere: closed.
        for answers in [&[][..], &[&[5u8][..]], &[&[5, 0], &[5, 0, 0, 3, 9, b'x']]] {
            let e = run("socks5h://p", name(), answers).unwrap_err();
            assert!(
                matches!(e, Error::Proxy(ProxyError::Closed { .. })),
                "{answers:?}: {e}"
            );
        }
        // A name too long for SOCKS5 is refused before anything is sent.
        let proxy = ProxyUrl::parse("socks5h://p").unwrap();
        let long = "a".repeat(256);
        assert!(Tunnel::new(&proxy, &long, 1, Dest::Name(long.clone())).is_err());
    }
}
