//! `sockeye bench`, run as a process against `sockeye serve` (and a corrupting echo server)
//! over loopback: about a second per run, results read from its `--json` line.

use std::process::{Command, Stdio};

mod support;
use support::{Served, SOCKEYE};

/// The `--json` line of a run, and whether the command succeeded.
struct Results {
    ok: bool,
    json: String,
    stderr: String,
}

impl Results {
    fn raw(&self, key: &str) -> &str {
        let pat = format!("\"{key}\":");
        let at = self
            .json
            .find(&pat)
            .unwrap_or_else(|| panic!("no {key} in {}", self.json))
            + pat.len();
        let rest = &self.json[at..];
        let end = rest.find([',', '}']).unwrap();
        &rest[..end]
    }

    fn num(&self, key: &str) -> f64 {
        self.raw(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not a number in {}", self.json))
    }

    /// Counts made progress, no errors, figures consistent.
    fn assert_sane(&self) {
        assert!(self.ok, "bench failed: {}\n{}", self.json, self.stderr);
        let msgs = self.num("msgs");
        let rate = self.num("msgs_per_sec");
        let seconds = self.num("seconds");
        assert!(msgs > 0.0, "{}", self.json);
        assert_eq!(self.num("errors"), 0.0, "{}", self.json);
        assert_eq!(self.raw("first_error"), "null");
        assert!(
            (rate * seconds - msgs).abs() <= msgs * 0.01 + 1.0,
            "msgs {msgs} != {rate}/s x {seconds} s"
        );
        let (p50, p99, p999, max) = (
            self.num("p50"),
            self.num("p99"),
            self.num("p999"),
            self.num("max"),
        );
        assert!(
            0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max,
            "{}",
            self.json
        );
        assert!(self.num("client_cpu_percent") >= 0.0);
    }
}

fn bench(uri: &str, args: &[&str]) -> Results {
    let out = Command::new(SOCKEYE)
        .arg("bench")
        .arg(uri)
        .args(["--duration", "1", "--warmup", "0.3", "--json"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in {stdout:?}"))
        .to_owned();
    Results {
        ok: out.status.success(),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn echo_text_pipelined_with_server_cpu() {
    let server = Served::echo();
    let pid = server.child.id().to_string();
    let r = bench(
        &server.uri(),
        &["-c", "4", "-f", "32", "--text", "--server-pid", &pid],
    );
    r.assert_sane();
    assert_eq!(r.raw("mode"), "\"echo\"");
    assert_eq!(r.raw("in_flight"), "32");
    assert_eq!(r.raw("text"), "true");
    assert!(r.num("server_cpu_percent") >= 0.0, "{}", r.json);
    assert!(r.num("server_cpu_s_per_gb") >= 0.0, "{}", r.json);
    assert!(matches!(r.raw("server_saturated"), "true" | "false"));
    assert!(r.num("mib_per_sec") > 0.0);
}

#[test]
fn echo_binary_one_in_flight_busy_poll() {
    let server = Served::echo();
    let r = bench(
        &server.uri(),
        &[
            "-c",
            "3",
            "-f",
            "1",
            "-s",
            "3000",
            "--binary",
            "--busy-poll",
        ],
    );
    r.assert_sane();
    assert_eq!(r.raw("text"), "false");
    assert_eq!(r.raw("busy_poll"), "true");
    assert_eq!(r.raw("server_cpu_percent"), "null");
}

#[test]
fn echo_large_messages_span_many_reads() {
    let server = Served::echo();
    let r = bench(
        &server.uri(),
        &["-c", "2", "-f", "2", "-s", "300000", "--binary"],
    );
    r.assert_sane();
}

#[test]
fn echo_with_compression() {
    let server = Served::echo();
    let r = bench(
        &server.uri(),
        &["-c", "3", "-f", "4", "-s", "1024", "--compression"],
    );
    r.assert_sane();
    assert!(
        r.raw("compression").contains("permessage-deflate"),
        "{}",
        r.json
    );
}

#[test]
fn handshakes() {
    let server = Served::echo();
    let r = bench(&server.uri(), &["--mode", "handshake", "-c", "3"]);
    r.assert_sane();
    assert_eq!(r.raw("unit"), "\"handshakes\"");
}

#[test]
fn broadcast_through_the_relay() {
    broadcast_through(&[]);
}

#[test]
fn broadcast_through_the_event_loop_relay() {
    broadcast_through(&["--reactor"]);
}

fn broadcast_through(flags: &[&str]) {
    let server = Served::start(flags, None);
    let r = bench(
        &format!("ws://{}/bench-topic", server.addr),
        &["--mode", "broadcast", "-c", "20", "-f", "4"],
    );
    r.assert_sane();
    assert_eq!(r.raw("unit"), "\"deliveries\"");
}

#[test]
fn wrong_echoes_are_errors() {
    // An echo server that flips a bit of the last byte of every message.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = sockeye::Server::builder()
                .serve("127.0.0.1:0", |ws| async move {
                    while let Some(message) = ws.recv().await? {
                        let mut bytes = message.into_bytes().to_vec();
                        if let Some(last) = bytes.last_mut() {
                            *last ^= 1;
                        }
                        ws.send(sockeye::Message::Binary(bytes.into())).await?;
                    }
                    Ok(())
                })
                .await
                .unwrap();
            tx.send(server.local_addr().unwrap()).unwrap();
            // Serve until the test process exits.
            std::future::pending::<()>().await;
        });
    });
    let addr = rx.recv().unwrap();
    let r = bench(
        &format!("ws://{addr}/"),
        &["-c", "2", "-f", "4", "--binary"],
    );
    assert!(!r.ok, "a corrupting server must fail the run: {}", r.json);
    assert!(r.num("errors") > 0.0, "{}", r.json);
    assert!(r.raw("first_error").contains("wrong"), "{}", r.json);
}
