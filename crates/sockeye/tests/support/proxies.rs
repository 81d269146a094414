//! Proxies for the tests, on 127.0.0.1, in tokio: an HTTP `CONNECT` proxy and a SOCKS5 proxy
//! (each with optional credentials), which count the tunnels they open and record where
//! to; and a scripted one that answers whatever it is told. Included with `#[path]` by the
//! proxy tests.
// Each including test binary uses a different subset of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running test proxy.
pub struct TestProxy {
    /// `127.0.0.1:PORT`.
    pub addr: SocketAddr,
    /// The tunnels it opened, as the client asked for them: `host:port`.
    pub tunnels: Arc<Mutex<Vec<String>>>,
}

impl TestProxy {
    pub fn url(&self, scheme_and_credentials: &str) -> String {
        format!("{scheme_and_credentials}{}", self.addr)
    }

    pub fn tunnels(&self) -> Vec<String> {
        self.tunnels.lock().unwrap().clone()
    }
}

/// Where the proxies connect: names in `hosts` go to their address (so that made-up
/// names such as `ws.sockeye.test` reach the test servers, and only through a proxy);
/// loopback addresses go to 127.0.0.1 (a client may resolve `localhost` to `::1`); other
/// targets are not reached.
#[derive(Clone, Default)]
pub struct Hosts(pub HashMap<String, SocketAddr>);

impl Hosts {
    fn resolve(&self, host: &str, port: u16) -> Option<SocketAddr> {
        if let Some(addr) = self.0.get(host) {
            return Some(*addr);
        }
        let ip: std::net::IpAddr = host.trim_matches(['[', ']']).parse().ok()?;
        ip.is_loopback()
            .then(|| SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

async fn listen() -> (TcpListener, TestProxy) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = TestProxy {
        addr: listener.local_addr().unwrap(),
        tunnels: Arc::default(),
    };
    (listener, proxy)
}

/// Relays both ways until either side closes.
async fn splice(mut client: TcpStream, mut server: TcpStream) {
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// An HTTP `CONNECT` proxy. With `auth`, requests must carry exactly
/// `Proxy-Authorization: <auth>` (else 407).
pub async fn http_proxy(auth: Option<&'static str>, hosts: Hosts) -> TestProxy {
    let (listener, proxy) = listen().await;
    let tunnels = proxy.tunnels.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let tunnels = tunnels.clone();
            let hosts = hosts.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    match client.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut lines = head.split("\r\n");
                let request_line = lines.next().unwrap_or("");
                let target = match request_line.split(' ').collect::<Vec<_>>()[..] {
                    ["CONNECT", target, "HTTP/1.1"] => target.to_owned(),
                    _ => {
                        let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                        return;
                    }
                };
                let authorization = lines.find_map(|l| {
                    let (name, value) = l.split_once(": ")?;
                    name.eq_ignore_ascii_case("proxy-authorization")
                        .then(|| value.to_owned())
                });
                if auth.is_some() && authorization.as_deref() != auth {
                    let _ = client
                        .write_all(
                            b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                              Proxy-Authenticate: Basic realm=\"test\"\r\n\
                              Content-Length: 0\r\n\r\n",
                        )
                        .await;
                    return;
                }
                let Some((host, port)) = target.rsplit_once(':') else {
                    return;
                };
                let port: u16 = port.parse().unwrap_or(0);
                let server = match hosts.resolve(host, port) {
                    Some(addr) => TcpStream::connect(addr).await.ok(),
                    None => None,
                };
                let Some(server) = server else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                tunnels.lock().unwrap().push(target);
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_ok()
                {
                    splice(client, server).await;
                }
            });
        }
    });
    proxy
}

/// A SOCKS5 proxy (RFC 1928). With `credentials`, only username/password authentication
/// (RFC 1929) with exactly these is accepted.
pub async fn socks5_proxy(
    credentials: Option<(&'static str, &'static str)>,
    hosts: Hosts,
) -> TestProxy {
    let (listener, proxy) = listen().await;
    let tunnels = proxy.tunnels.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let tunnels = tunnels.clone();
            let hosts = hosts.clone();
            tokio::spawn(async move {
                let _ = socks5_session(client, credentials, hosts, tunnels).await;
            });
        }
    });
    proxy
}

async fn socks5_session(
    mut client: TcpStream,
    credentials: Option<(&'static str, &'static str)>,
    hosts: Hosts,
    tunnels: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let mut greeting = [0u8; 2];
    client.read_exact(&mut greeting).await?;
    let mut methods = vec![0u8; usize::from(greeting[1])];
    client.read_exact(&mut methods).await?;
    let wanted = if credentials.is_some() { 2 } else { 0 };
    if greeting[0] != 5 || !methods.contains(&wanted) {
        return client.write_all(&[5, 0xFF]).await;
    }
    client.write_all(&[5, wanted]).await?;
    if let Some((user, password)) = credentials {
        let mut header = [0u8; 2];
        client.read_exact(&mut header).await?;
        let mut name = vec![0u8; usize::from(header[1])];
        client.read_exact(&mut name).await?;
        let mut len = [0u8; 1];
        client.read_exact(&mut len).await?;
        let mut pass = vec![0u8; usize::from(len[0])];
        client.read_exact(&mut pass).await?;
        if name != user.as_bytes() || pass != password.as_bytes() {
            return client.write_all(&[1, 1]).await;
        }
        client.write_all(&[1, 0]).await?;
    }
    let mut request = [0u8; 4];
    client.read_exact(&mut request).await?;
    let host = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        4 => {
            let mut ip = [0u8; 16];
            client.read_exact(&mut ip).await?;
            format!("[{}]", std::net::Ipv6Addr::from(ip))
        }
        3 => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            client.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        _ => return client.write_all(&[5, 8, 0, 1, 0, 0, 0, 0, 0, 0]).await,
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port).await?;
    let port = u16::from_be_bytes(port);
    let Some(addr) = hosts.resolve(&host, port) else {
        return client.write_all(&[5, 4, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    };
    let Ok(server) = TcpStream::connect(addr).await else {
        return client.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    };
    tunnels.lock().unwrap().push(format!("{host}:{port}"));
    // The bound address, as a name: the client must read a reply of any address type.
    let name = b"bound.test";
    let mut reply = vec![5, 0, 0, 3, name.len() as u8];
    reply.extend(name);
    reply.extend(port.to_be_bytes());
    client.write_all(&reply).await?;
    splice(client, server).await;
    Ok(())
}

/// A misbehaving proxy: for each connection, reads `read` bytes, writes `answer`, reads
/// `read_after` bytes, writes `then`, and ends its side (or, with `hang`, stays silent),
/// reading until the client closes (so that the client gets an end of stream, not a
/// reset).
pub async fn scripted_proxy(
    read: usize,
    answer: &'static [u8],
    read_after: usize,
    then: &'static [u8],
    hang: bool,
) -> TestProxy {
    let (listener, proxy) = listen().await;
    let tunnels = proxy.tunnels.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tunnels.lock().unwrap().push("scripted".to_owned());
            tokio::spawn(async move {
                let mut buf = vec![0u8; read.max(read_after)];
                if client.read_exact(&mut buf[..read]).await.is_err()
                    || client.write_all(answer).await.is_err()
                    || client.read_exact(&mut buf[..read_after]).await.is_err()
                    || client.write_all(then).await.is_err()
                {
                    return;
                }
                if !hang {
                    let _ = client.shutdown().await;
                }
                let mut rest = [0u8; 64];
                while matches!(client.read(&mut rest).await, Ok(n) if n > 0) {}
            });
        }
    });
    proxy
}
