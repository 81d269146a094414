//! A `redis-server` (Debian's package) on a free loopback port, for tests of the Redis hub.
//! Included with `#[path]` by the tests that need it. Blocking: async tests start it with
//! `spawn_blocking`; its short loopback commands may run inline.
// Each including test binary uses a different subset of this module.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on a free loopback port, killed (by its PID) on drop. `None` (the test
/// skips, loudly) when redis-server is not installed, except under CI where that fails.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Redis::start_on(port)
    }

    pub fn start_on(port: u16) -> Option<Redis> {
        let child = match Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                let what = format!("redis-server cannot run ({e}); scripts/test.sh installs it");
                assert!(std::env::var_os("CI").is_none(), "{what}");
                eprintln!("SKIPPED: {what}");
                return None;
            }
        };
        let redis = Redis { child, port };
        // Ready when it answers PING.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut answer = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut answer).is_ok()
                    && &answer == b"+PONG\r\n"
                {
                    return Some(redis);
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server now (drop does the same).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends one command and returns the last line of the reply (enough for these tests).
    pub fn command(&self, args: &[&[u8]]) -> std::io::Result<String> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            write!(request, "${}\r\n", a.len())?;
            request.extend_from_slice(a);
            request.extend_from_slice(b"\r\n");
        }
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(&request)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply.trim_end().lines().last().unwrap_or("").to_owned())
    }

    /// How many Redis connections subscribe to `channel`.
    pub fn numsub(&self, channel: &str) -> u64 {
        let reply = self
            .command(&[b"PUBSUB", b"NUMSUB", channel.as_bytes()])
            .expect("PUBSUB NUMSUB");
        reply
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected NUMSUB reply {reply:?}"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
