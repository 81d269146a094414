//! The transport of a blocking connection: TCP or a Unix domain socket, each bare or under
//! TLS, split into a reading half
//! (the I/O thread's) and a writing half (behind the connection's write lock), so that one
//! thread may write while another is blocked in `read`.
//!
//! A TLS session is one state for both directions. The halves share it behind a mutex that
//! is held only to encrypt or decrypt, never during a blocking socket call: the reading half
//! reads ciphertext from the socket with no lock held, then decrypts it under the lock; the
//! writing half encrypts under the lock, then writes the records with no lock held (the
//! connection's write lock keeps records in order). Lock order: write lock, then session.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::time::Duration;

#[cfg(feature = "tls")]
use std::sync::{Arc, Mutex, MutexGuard};

/// A connected socket: TCP or a Unix domain socket (a file descriptor either way).
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

/// Runs `$body` with `$s` bound to whichever socket `$socket` holds.
macro_rules! each_socket {
    ($socket:expr, $s:ident => $body:expr) => {
        match $socket {
            Socket::Tcp($s) => $body,
            #[cfg(unix)]
            Socket::Unix($s) => $body,
        }
    };
}

impl Socket {
    pub(crate) fn try_clone(&self) -> io::Result<Socket> {
        Ok(match self {
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
            #[cfg(unix)]
            Socket::Unix(s) => Socket::Unix(s.try_clone()?),
        })
    }

    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        each_socket!(self, s => s.set_read_timeout(timeout))
    }

    pub(crate) fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        each_socket!(self, s => s.set_write_timeout(timeout))
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        each_socket!(self, s => s.shutdown(how))
    }

    /// The local and remote addresses of a TCP socket; `None` for a Unix socket.
    pub(crate) fn addresses(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        match self {
            Socket::Tcp(s) => (s.local_addr().ok(), s.peer_addr().ok()),
            #[cfg(unix)]
            Socket::Unix(_) => (None, None),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        each_socket!(self, s => s.read(buf))
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        each_socket!(self, s => s.write(buf))
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        each_socket!(self, s => s.write_all(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        each_socket!(self, s => s.flush())
    }
}

/// A connection's transport, both halves and the socket (for addresses, timeouts and
/// shutdown from any thread).
pub(crate) struct Transport {
    pub(crate) reader: ReadHalf,
    pub(crate) writer: WriteHalf,
    pub(crate) socket: Socket,
}

impl Transport {
    /// A bare socket.
    pub(crate) fn plain(socket: Socket) -> io::Result<Transport> {
        Ok(Transport {
            reader: ReadHalf::Plain(socket.try_clone()?),
            writer: WriteHalf::Plain(socket.try_clone()?),
            socket,
        })
    }

    /// TLS over `tcp`, with a session whose handshake is done.
    #[cfg(feature = "tls")]
    pub(crate) fn tls(session: rustls::Connection, tcp: Socket) -> io::Result<Transport> {
        let session = Arc::new(Mutex::new(session));
        Ok(Transport {
            reader: ReadHalf::Tls(TlsReader {
                tcp: tcp.try_clone()?,
                session: session.clone(),
                raw: Vec::new(),
                start: 0,
                end: 0,
            }),
            writer: WriteHalf::Tls(TlsWriter {
                tcp: tcp.try_clone()?,
                session,
                out: Vec::new(),
            }),
            socket: tcp,
        })
    }

    /// Sets the socket's read timeout (both halves share the socket).
    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }

    /// Ends the connection's writing side: TLS close_notify, then the socket's shutdown.
    pub(crate) fn shutdown(&mut self, how: Shutdown) {
        self.writer.close_notify();
        let _ = self.socket.shutdown(how);
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// The reading half.
pub(crate) enum ReadHalf {
    Plain(Socket),
    #[cfg(feature = "tls")]
    Tls(TlsReader),
}

impl ReadHalf {
    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            ReadHalf::Plain(s) => s.set_read_timeout(timeout),
            #[cfg(feature = "tls")]
            ReadHalf::Tls(r) => r.tcp.set_read_timeout(timeout),
        }
    }
}

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ReadHalf::Plain(s) => s.read(buf),
            #[cfg(feature = "tls")]
            ReadHalf::Tls(r) => r.read(buf),
        }
    }
}

/// The writing half: `write` writes everything it is given (TLS encrypts it all at once).
pub(crate) enum WriteHalf {
    Plain(Socket),
    #[cfg(feature = "tls")]
    Tls(TlsWriter),
}

impl WriteHalf {
    /// Sends TLS close_notify (nothing for TCP); errors are ignored, the socket is closing.
    pub(crate) fn close_notify(&mut self) {
        #[cfg(feature = "tls")]
        if let WriteHalf::Tls(w) = self {
            lock(&w.session).send_close_notify();
            let _ = w.write_records(&[]);
        }
    }
}

impl Write for WriteHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Plain(s) => s.write(buf),
            #[cfg(feature = "tls")]
            WriteHalf::Tls(w) => w.write_records(buf).map(|()| buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            WriteHalf::Plain(s) => s.flush(),
            #[cfg(feature = "tls")]
            WriteHalf::Tls(w) => w.write_records(&[]),
        }
    }
}

#[cfg(feature = "tls")]
fn lock(session: &Mutex<rustls::Connection>) -> MutexGuard<'_, rustls::Connection> {
    // A panic under this lock leaves rustls's state as it was between two calls.
    session.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ciphertext read per socket read: one full TLS record.
#[cfg(feature = "tls")]
const RAW_BUF: usize = 16 * 1024 + 256;

/// The reading half of a TLS transport.
#[cfg(feature = "tls")]
pub(crate) struct TlsReader {
    tcp: Socket,
    session: Arc<Mutex<rustls::Connection>>,
    /// Ciphertext read and not yet given to rustls: `raw[start..end]`.
    raw: Vec<u8>,
    start: usize,
    end: usize,
}

#[cfg(feature = "tls")]
impl TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut session = lock(&self.session);
                match session.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    // The peer closed the socket without close_notify. The WebSocket closing
                    // handshake, not TLS's, tells a clean close from a cut one (1006), as on
                    // plain TCP: report the end of stream.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if self.start < self.end {
                    let mut pending = &self.raw[self.start..self.end];
                    let n = session.read_tls(&mut pending)?;
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "TLS: stuck"));
                    }
                    self.start += n;
                    session
                        .process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    continue;
                }
            }
            // No plaintext and no ciphertext left: read the socket, with no lock held.
            if self.raw.is_empty() {
                self.raw = vec![0; RAW_BUF];
            }
            let n = self.tcp.read(&mut self.raw)?;
            if n == 0 {
                // Tells rustls about the end of stream; its reader reports it next.
                let _ = lock(&self.session).read_tls(&mut io::empty());
            }
            self.start = 0;
            self.end = n;
        }
    }
}

/// The writing half of a TLS transport.
#[cfg(feature = "tls")]
pub(crate) struct TlsWriter {
    tcp: Socket,
    session: Arc<Mutex<rustls::Connection>>,
    /// The records of one batch, encrypted, on their way to the socket.
    out: Vec<u8>,
}

#[cfg(feature = "tls")]
impl TlsWriter {
    /// Encrypts `plaintext` (and takes any record rustls has queued, alerts and key updates),
    /// then writes the records with one `write_all`.
    fn write_records(&mut self, plaintext: &[u8]) -> io::Result<()> {
        {
            let mut session = lock(&self.session);
            if !plaintext.is_empty() {
                session.writer().write_all(plaintext)?;
            }
            while session.wants_write() {
                session.write_tls(&mut self.out)?;
            }
        }
        let result = self.tcp.write_all(&self.out);
        self.out.clear();
        if self.out.capacity() > 64 * 1024 {
            self.out = Vec::new();
        }
        result
    }
}
