//! What the loops listen on and talk over: TCP, or a Unix domain socket (`unix_serve` on
//! the event loops). One type each, so that a loop is compiled once for both.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::event::Source;
use mio::{Interest, Registry, Token};

/// Runs `$body` with `$s` bound to the variant's socket, whichever it is.
macro_rules! each {
    ($value:expr, $ty:ident, $s:ident => $body:expr) => {
        match $value {
            $ty::Tcp($s) => $body,
            #[cfg(unix)]
            $ty::Unix($s) => $body,
        }
    };
}

/// `mio::event::Source` for an enum of mio sockets: each call goes to the variant's.
macro_rules! impl_source {
    ($ty:ident) => {
        impl Source for $ty {
            fn register(
                &mut self,
                registry: &Registry,
                token: Token,
                interests: Interest,
            ) -> io::Result<()> {
                each!(self, $ty, s => s.register(registry, token, interests))
            }

            fn reregister(
                &mut self,
                registry: &Registry,
                token: Token,
                interests: Interest,
            ) -> io::Result<()> {
                each!(self, $ty, s => s.reregister(registry, token, interests))
            }

            fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
                each!(self, $ty, s => s.deregister(registry))
            }
        }
    };
}

/// An accepted connection's socket.
pub(crate) enum Stream {
    Tcp(mio::net::TcpStream),
    #[cfg(unix)]
    Unix(mio::net::UnixStream),
}

impl Stream {
    /// The peer's address; `None` on a Unix socket (its clients are unnamed).
    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr().ok(),
            #[cfg(unix)]
            Stream::Unix(_) => None,
        }
    }

    /// The local address; `None` on a Unix socket.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr().ok(),
            #[cfg(unix)]
            Stream::Unix(_) => None,
        }
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        each!(self, Stream, s => s.shutdown(how))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        each!(self, Stream, s => s.read(buf))
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        each!(self, Stream, s => s.write(buf))
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        each!(self, Stream, s => s.write_vectored(bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        each!(self, Stream, s => s.flush())
    }
}

impl_source!(Stream);

/// A loop's listener (each loop registers its own clone).
pub(crate) enum Listener {
    Tcp(mio::net::TcpListener),
    #[cfg(unix)]
    Unix(mio::net::UnixListener),
}

impl Listener {
    /// The next connection (TCP: with Nagle's algorithm off, as frames are corked already).
    pub(crate) fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (socket, _) = l.accept()?;
                let _ = socket.set_nodelay(true);
                Ok(Stream::Tcp(socket))
            }
            #[cfg(unix)]
            Listener::Unix(l) => Ok(Stream::Unix(l.accept()?.0)),
        }
    }
}

impl_source!(Listener);

/// A bound listener as the standard library has it, before the loops take it over.
pub(crate) enum StdListener {
    Tcp(std::net::TcpListener),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixListener),
}

impl StdListener {
    /// Non-blocking, as the loops need it.
    pub(crate) fn set_nonblocking(&self) -> io::Result<()> {
        each!(self, StdListener, l => l.set_nonblocking(true))
    }

    /// The TCP address; `None` on a Unix socket.
    pub(crate) fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        match self {
            StdListener::Tcp(l) => l.local_addr().map(Some),
            #[cfg(unix)]
            StdListener::Unix(_) => Ok(None),
        }
    }

    /// A clone for one loop, registered with nothing yet.
    pub(crate) fn for_loop(&self) -> io::Result<Listener> {
        Ok(match self {
            StdListener::Tcp(l) => Listener::Tcp(mio::net::TcpListener::from_std(l.try_clone()?)),
            #[cfg(unix)]
            StdListener::Unix(l) => {
                Listener::Unix(mio::net::UnixListener::from_std(l.try_clone()?))
            }
        })
    }
}
