//! Helpers shared by the `sockeye` command's tests: a `sockeye serve` process and a
//! `sockeye connect` run. Included with `mod support;` by each test file.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SOCKEYE: &str = env!("CARGO_BIN_EXE_sockeye");

/// A `sockeye serve` process, killed on drop.
pub struct Served {
    pub child: Child,
    /// `HOST:PORT`, as the server printed it.
    pub addr: String,
    /// `ws` or `wss`.
    scheme: String,
    log: Arc<Mutex<String>>,
}

impl Served {
    /// `sockeye serve --echo`.
    pub fn echo() -> Served {
        Served::start(&["--echo"], None)
    }

    /// Starts `sockeye serve ARGS 127.0.0.1:0` (through `sh` when a shell prefix such as a
    /// `ulimit` is given) and waits for its "... on ws://ADDR/" (or wss://) line on stderr.
    pub fn start(args: &[&str], shell_prefix: Option<&str>) -> Served {
        let cmd = match shell_prefix {
            Some(prefix) => {
                let mut c = Command::new("sh");
                let line = format!("{prefix}; exec \"$0\" serve {} 127.0.0.1:0", args.join(" "));
                c.arg("-c").arg(line).arg(SOCKEYE);
                c
            }
            None => {
                let mut c = Command::new(SOCKEYE);
                c.arg("serve").args(args).arg("127.0.0.1:0");
                c
            }
        };
        Served::spawn(cmd, |line| {
            ["ws", "wss"].into_iter().find_map(|scheme| {
                let rest = line.split(&format!(" on {scheme}://")).nth(1)?;
                Some((
                    scheme.to_owned(),
                    rest.split('/').next().unwrap().to_owned(),
                ))
            })
        })
    }

    /// Starts `sockeye serve --unix PATH ARGS` and waits for its "... on unix socket PATH
    /// (ws://)" line; `addr` is then the path.
    pub fn start_unix(args: &[&str], path: &std::path::Path) -> Served {
        let mut cmd = Command::new(SOCKEYE);
        cmd.arg("serve").arg("--unix").arg(path).args(args);
        Served::spawn(cmd, |line| {
            let rest = line.split(" on unix socket ").nth(1)?;
            let (path, scheme) = rest.split_once(" (")?;
            Some((scheme.split(':').next()?.to_owned(), path.to_owned()))
        })
    }

    /// Spawns `cmd` and reads its stderr until `parse` finds (scheme, address) in a line.
    fn spawn(mut cmd: Command, parse: impl Fn(&str) -> Option<(String, String)>) -> Served {
        let mut child = cmd
            .env("RUST_LOG", "sockeye=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let (scheme, addr) = loop {
            line.clear();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "server exited");
            if let Some(found) = parse(&line) {
                break found;
            }
        };
        // Keep draining stderr (so the server never blocks on a full pipe) into a log.
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while stderr.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Served {
            child,
            addr,
            scheme,
            log,
        }
    }

    /// `ws://ADDR/` (or `wss://ADDR/` for a TLS server).
    pub fn uri(&self) -> String {
        format!("{}://{}/", self.scheme, self.addr)
    }

    /// What the server has written to stderr since its address line.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether the server's log gets a line containing `needle` within 10 s. The log is
    /// copied by a reader thread, so a line the server has written may not be in `log()` yet.
    pub fn log_shows(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(needle) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// CPU time (user and system) the server has used, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat.rsplit(") ").next().unwrap().split(' ').collect();
        // utime and stime, fields 14 and 15 of the whole line (11 and 12 after the name).
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    }
}

impl Served {
    /// Sends `signal` (`TERM`, `INT`) to the server and waits for it to exit (at most 20 s).
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -s {signal} failed");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "server did not exit on SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `sockeye connect ARGS` with piped stdin, stdout and stderr, and no logging.
pub fn spawn_connect(args: &[&str]) -> Child {
    Command::new(SOCKEYE)
        .arg("connect")
        .args(args)
        .env("RUST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs `sockeye connect ARGS` with `input` on stdin, keeps stdin open until `replies` lines
/// were printed on stdout (so that the closing handshake does not race the replies), then
/// closes it. Returns (exit status ok, stdout, stderr).
pub fn run_connect(args: &[&str], input: &str, replies: usize) -> (bool, String, String) {
    let mut child = spawn_connect(args);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        let mut line = String::new();
        let mut seen = 0;
        while stdout.read_line(&mut line).unwrap_or(0) > 0 {
            all.push_str(&line);
            line.clear();
            seen += 1;
            if seen == replies {
                let _ = tx.send(None);
            }
        }
        let _ = tx.send(Some(all));
    });
    let mut out = None;
    if replies > 0 {
        // Either the replies came, or stdout ended (the connection ended) first.
        out = rx.recv_timeout(Duration::from_secs(20)).expect("no reply");
    }
    drop(stdin);
    let output = wait_with_timeout(child, Duration::from_secs(20));
    let stdout = match out {
        Some(all) => all,
        None => rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap()
            .unwrap_or_default(),
    };
    (
        output.status.success(),
        stdout,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Waits for `child` to exit and collects its output; kills it and panics after `limit`.
pub fn wait_with_timeout(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
