//! Unix domain sockets, for both front ends: binding a path (with what to do about a file
//! already there) and removing the socket file when the server closes.
//!
//! The rules, the same for the tokio and the blocking server:
//! - **A stale socket file is replaced.** If `path` exists and is a socket that nothing
//!   listens on (connecting is refused: the server that made it died without removing it),
//!   it is removed and bound again. If a server listens there, or the path is not a socket
//!   (a regular file, a directory), binding fails with `AddrInUse` and the file is left alone.
//! - **The server removes the file it bound when it closes**, if the file at `path` is still
//!   the one it bound (same device and inode: a newer server on the same path keeps its own).
//!   A server started on a listener the application bound (`unix_serve_listener`) leaves the
//!   file to the application.
//!
//! The inode comparison is exact because the socket stays open until the comparison is made:
//! the file keeps a duplicate of the listening descriptor, so the inode cannot be freed and
//! given to a newer file in between (tmpfs hands a freed inode number out again at once).

#[cfg(unix)]
pub(crate) use imp::*;

/// No Unix domain sockets on this platform: a server never has a socket file.
#[cfg(not(unix))]
pub(crate) enum SocketFile {}

#[cfg(not(unix))]
impl SocketFile {
    pub(crate) fn path(&self) -> &std::path::Path {
        match *self {}
    }

    pub(crate) fn remove(&self) {
        match *self {}
    }
}

#[cfg(unix)]
mod imp {
    use std::io;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// The socket file of a server listening on a Unix domain socket.
    #[derive(Debug)]
    pub(crate) struct SocketFile {
        path: PathBuf,
        /// Device and inode of the file this server bound, and a duplicate of its listening
        /// descriptor that keeps the inode from being reused, until the file is removed; `None`
        /// when the application bound it (the file is the application's), or once removed.
        bound: Mutex<Option<(u64, u64, UnixListener)>>,
    }

    impl SocketFile {
        /// The file of a listener that the application bound: never removed by the server.
        pub(crate) fn not_owned(path: &Path) -> SocketFile {
            SocketFile {
                path: path.to_owned(),
                bound: Mutex::new(None),
            }
        }

        /// The path the server listens on.
        pub(crate) fn path(&self) -> &Path {
            &self.path
        }

        /// Removes the socket file if this server bound it and it is still the one it bound;
        /// later calls do nothing.
        pub(crate) fn remove(&self) {
            let taken = self.bound.lock().unwrap_or_else(|e| e.into_inner()).take();
            // `_pin` is dropped at the end, after the comparison.
            let Some((dev, ino, _pin)) = taken else {
                return;
            };
            match std::fs::symlink_metadata(&self.path) {
                Ok(m) if (m.dev(), m.ino()) == (dev, ino) => {
                    if let Err(e) = std::fs::remove_file(&self.path) {
                        tracing::warn!(target: "sockeye::server", "cannot remove {}: {e}", self.path.display());
                    }
                }
                _ => {}
            }
        }
    }

    /// Binds a Unix domain socket at `path`, replacing a stale socket file (see the module's
    /// rules). Blocking, but brief: a `connect` to a local socket is answered at once.
    pub(crate) fn bind(path: &Path) -> io::Result<(UnixListener, SocketFile)> {
        let listener = match UnixListener::bind(path) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let is_socket = std::fs::symlink_metadata(path)
                    .map(|m| m.file_type().is_socket())
                    .unwrap_or(false);
                if !is_socket {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{} exists and is not a socket", path.display()),
                    ));
                }
                match UnixStream::connect(path) {
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        tracing::info!(target: "sockeye::server", "removing stale socket {}", path.display());
                        std::fs::remove_file(path)?;
                        UnixListener::bind(path)?
                    }
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("a server listens on {} already", path.display()),
                        ))
                    }
                }
            }
            Err(e) => return Err(e),
        };
        let m = std::fs::symlink_metadata(path)?;
        let file = SocketFile {
            path: path.to_owned(),
            bound: Mutex::new(Some((m.dev(), m.ino(), listener.try_clone()?))),
        };
        Ok((listener, file))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A socket path in a directory of its own, removed with it when dropped.
        struct TempSock(PathBuf);

        impl Drop for TempSock {
            fn drop(&mut self) {
                if let Some(dir) = self.0.parent() {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }

        fn temp_path(name: &str) -> TempSock {
            let dir =
                std::env::temp_dir().join(format!("sockeye-unix-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempSock(dir.join("s.sock"))
        }

        #[test]
        fn stale_socket_is_replaced_live_one_is_not() {
            let tmp = temp_path("stale");
            let path = tmp.0.clone();
            // A server that died without removing its file: the next bind replaces it.
            drop(UnixListener::bind(&path).unwrap());
            let (_live, file) = bind(&path).unwrap();
            // A server listens: AddrInUse, and its file stays.
            let err = bind(&path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
            assert!(err.to_string().contains("listens"), "{err}");
            assert!(path.exists());
            file.remove();
            assert!(!path.exists());
            // Once only.
            let (_again, file2) = bind(&path).unwrap();
            file.remove();
            assert!(path.exists());
            file2.remove();
            assert!(!path.exists());
        }

        #[test]
        fn a_newer_servers_file_is_left_alone() {
            let tmp = temp_path("newer");
            let path = tmp.0.clone();
            let (_first, file) = bind(&path).unwrap();
            // Someone removes the first server's file and a second server binds the path.
            std::fs::remove_file(&path).unwrap();
            let (_second, file2) = bind(&path).unwrap();
            file.remove();
            assert!(path.exists(), "the second server's file was removed");
            file2.remove();
            assert!(!path.exists());
        }

        #[test]
        fn a_regular_file_is_never_removed() {
            let tmp = temp_path("regular");
            let path = tmp.0.clone();
            std::fs::write(&path, b"data").unwrap();
            let err = bind(&path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
            assert!(err.to_string().contains("not a socket"), "{err}");
            assert_eq!(std::fs::read(&path).unwrap(), b"data");
        }

        #[test]
        fn a_listener_bound_by_the_application_keeps_its_file() {
            let tmp = temp_path("app");
            let path = tmp.0.clone();
            let _listener = UnixListener::bind(&path).unwrap();
            let file = SocketFile::not_owned(&path);
            assert_eq!(file.path(), path);
            file.remove();
            assert!(path.exists());
        }
    }
}
