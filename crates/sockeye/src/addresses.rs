//! A connection's two transport addresses, kept in 16 bytes.
//!
//! Two `Option<SocketAddr>` are 64 bytes in every connection (a `SocketAddr` has room for an
//! IPv6 address, flow info and scope). Most connections are IPv4 on both ends: 12 bytes. So
//! [`Addresses`] keeps those inline and boxes anything else (IPv6, one address missing).

use std::net::{SocketAddr, SocketAddrV4};

/// The local and remote addresses of a connection's transport; either may be unknown (a
/// Unix socket, a hyper upgrade).
#[derive(Debug, Clone)]
pub(crate) enum Addresses {
    /// Neither is known.
    None,
    /// Both IPv4, the common case, inline.
    V4 {
        local: SocketAddrV4,
        remote: SocketAddrV4,
    },
    /// Anything else.
    Other(Box<(Option<SocketAddr>, Option<SocketAddr>)>),
}

impl Addresses {
    /// Keeps `local` and `remote`.
    pub(crate) fn new(local: Option<SocketAddr>, remote: Option<SocketAddr>) -> Self {
        match (local, remote) {
            (None, None) => Addresses::None,
            (Some(SocketAddr::V4(local)), Some(SocketAddr::V4(remote))) => {
                Addresses::V4 { local, remote }
            }
            other => Addresses::Other(Box::new(other)),
        }
    }

    /// The local address.
    pub(crate) fn local(&self) -> Option<SocketAddr> {
        match self {
            Addresses::None => None,
            Addresses::V4 { local, .. } => Some(SocketAddr::V4(*local)),
            Addresses::Other(both) => both.0,
        }
    }

    /// The remote address.
    pub(crate) fn remote(&self) -> Option<SocketAddr> {
        match self {
            Addresses::None => None,
            Addresses::V4 { remote, .. } => Some(SocketAddr::V4(*remote)),
            Addresses::Other(both) => both.1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_addresses_come_back_in_16_bytes() {
        assert_eq!(std::mem::size_of::<Addresses>(), 16);
        let v4: SocketAddr = "127.0.0.1:8765".parse().unwrap();
        let v4b: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        let v6: SocketAddr = "[::1]:9000".parse().unwrap();
        let scoped: SocketAddr = "[fe80::1%2]:9000".parse().unwrap();
        for (local, remote) in [
            (None, None),
            (Some(v4), Some(v4b)),
            (Some(v6), Some(scoped)),
            (Some(v4), Some(v6)),
            (Some(v4), None),
            (None, Some(v6)),
        ] {
            let kept = Addresses::new(local, remote);
            assert_eq!((kept.local(), kept.remote()), (local, remote));
        }
        assert!(matches!(
            Addresses::new(Some(v4), Some(v4b)),
            Addresses::V4 { .. }
        ));
    }
}
