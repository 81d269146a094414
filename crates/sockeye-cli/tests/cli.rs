//! The `sockeye` command, run as a process over loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{run_connect, wait_with_timeout, Served};

/// Runs `f` to completion on a new current-thread runtime.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn connect_sends_stdin_lines_and_prints_what_comes_back() {
    let server = Served::echo();
    let (ok, stdout, stderr) = run_connect(&[&server.uri()], "hello\nκόσμε\n", 2);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "< hello\n< κόσμε\n");
    assert!(stderr.contains("Connection closed: 1000 (OK)"), "{stderr}");
}

#[test]
fn connect_reports_a_refused_handshake_with_non_zero_status() {
    let server = Served::echo();
    // /healthz answers 200 instead of upgrading.
    let (ok, _, stderr) = run_connect(&[&format!("ws://{}/healthz", server.addr)], "", 0);
    assert!(!ok);
    assert!(stderr.contains("HTTP 200"), "{stderr}");
}

#[test]
fn healthz_answers_200() {
    let server = Served::start(&[], None);
    let response = http_get(&server.addr, "/healthz");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nOK\n"), "{response}");
}

#[test]
fn relay_delivers_to_the_other_clients_of_the_same_topic() {
    relay_delivers_within_topics(&[]);
}

#[test]
fn event_loop_relay_delivers_to_the_other_clients_of_the_same_topic() {
    relay_delivers_within_topics(&["--reactor", "--threads", "2"]);
}

fn relay_delivers_within_topics(flags: &[&str]) {
    let server = Served::start(flags, None);
    block_on(async {
        let room = |path: &str| format!("ws://{}/{path}", server.addr);
        let a = sockeye::connect(&room("room1")).await.unwrap();
        let b = sockeye::connect(&room("room1")).await.unwrap();
        let c = sockeye::connect(&room("room2")).await.unwrap();
        a.send("from a").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), b.recv()).await;
        assert_eq!(got.unwrap().unwrap(), Some("from a".into()));
        c.send("from c").await.unwrap();
        b.send("from b").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), a.recv()).await;
        assert_eq!(got.unwrap().unwrap(), Some("from b".into()));
        // Nothing crossed topics, and c is alone on room2: its own message is not echoed.
        let nothing = tokio::time::timeout(Duration::from_millis(200), c.recv()).await;
        assert!(nothing.is_err(), "room2 received {nothing:?}");
    });
}

#[test]
fn accept_loop_survives_running_out_of_file_descriptors() {
    // The event loops (the default), then a task per connection.
    for flags in [&["--echo"][..], &["--echo", "--tasks"][..]] {
        accept_survives_emfile(flags);
    }
}

fn accept_survives_emfile(flags: &[&str]) {
    // 40 descriptors: a few for the runtime, the rest for connections.
    let server = Served::start(flags, Some("ulimit -n 40"));
    let mut held = Vec::new();
    for _ in 0..60 {
        // The kernel completes TCP handshakes into the backlog even when accept() fails.
        held.push(TcpStream::connect(&server.addr).unwrap());
    }
    let cpu_before = server.cpu_seconds();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let cpu = server.cpu_seconds() - cpu_before;
    let wall = start.elapsed().as_secs_f64();
    assert!(
        server.log_shows("accept failed"),
        "no accept error logged:\n{}",
        server.log()
    );
    // Out of descriptors, the accept loop backs off instead of spinning on EMFILE.
    assert!(
        cpu < 0.5 * wall,
        "accept loop spins: {cpu:.2} s CPU in {wall:.2} s"
    );
    // Free descriptors: the server accepts again and serves a WebSocket connection.
    held.clear();
    let (ok, stdout, stderr) = run_connect(&[&server.uri()], "still alive\n", 1);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "< still alive\n");
}

#[test]
fn blocking_echo_server_with_sync_flag() {
    let server = Served::start(&["--echo", "--sync"], None);
    let (ok, stdout, stderr) = run_connect(&[&server.uri()], "hello\nworld\n", 2);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "< hello\n< world\n");
    let response = http_get(&server.addr, "/healthz");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
}

#[test]
fn event_loop_echo_server_with_reactor_flag() {
    // The echo as a callback, then as an async handler (--async).
    for handler in [&[][..], &["--async"][..]] {
        let flags = [&["--echo", "--reactor", "--threads", "2"][..], handler].concat();
        let server = Served::start(&flags, None);
        let (ok, stdout, stderr) = run_connect(&[&server.uri()], "hello\nworld\n", 2);
        assert!(ok, "{handler:?}: {stderr}");
        assert_eq!(stdout, "< hello\n< world\n", "{handler:?}");
        let response = http_get(&server.addr, "/healthz");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        // The limits flags reach it: over --max-size, 1009.
        let flags = [&["--echo", "--reactor", "--max-size", "10"][..], handler].concat();
        let small = Served::start(&flags, None);
        block_on(async {
            let ws = sockeye::connect(&small.uri()).await.unwrap();
            ws.send("more than ten bytes").await.unwrap();
            let end = tokio::time::timeout(Duration::from_secs(10), ws.recv()).await;
            assert!(end.unwrap().is_err());
            assert_eq!(ws.close_code(), sockeye::CloseCode::MESSAGE_TOO_BIG);
        });
    }
}

#[test]
fn demo_page_at_root_while_websocket_clients_of_root_still_join_topic_root() {
    demo_page_and_topic_root(&[]);
}

#[test]
fn event_loop_relay_serves_the_demo_page_and_topic_root() {
    demo_page_and_topic_root(&["--reactor"]);
}

fn demo_page_and_topic_root(flags: &[&str]) {
    let server = Served::start(flags, None);
    let response = http_get(&server.addr, "/");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.contains("Content-Type: text/html; charset=utf-8\r\n"),
        "{response}"
    );
    assert!(response.contains("<title>sockeye demo</title>"));
    assert!(response.contains("/_sockeye/clock"));
    // The echo server has no page: a plain GET is told to upgrade.
    let echo = Served::echo();
    let response = http_get(&echo.addr, "/");
    assert!(
        response.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{response}"
    );
    // ws://ADDR/ is topic "/".
    block_on(async {
        let uri = server.uri();
        let a = sockeye::connect(&uri).await.unwrap();
        let b = sockeye::connect(&uri).await.unwrap();
        a.send("on the root topic").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), b.recv()).await;
        assert_eq!(got.unwrap().unwrap(), Some("on the root topic".into()));
    });
}

#[test]
fn clock_pushes_the_server_time_every_second() {
    clock_pushes_every_second(&[]);
}

#[test]
fn event_loop_relay_has_the_clock_too() {
    clock_pushes_every_second(&["--reactor", "--threads", "2"]);
}

fn clock_pushes_every_second(flags: &[&str]) {
    let server = Served::start(flags, None);
    block_on(async {
        let ws = sockeye::connect(&format!("ws://{}/_sockeye/clock", server.addr))
            .await
            .unwrap();
        let mut times = Vec::new();
        for _ in 0..2 {
            let got = tokio::time::timeout(Duration::from_secs(5), ws.recv()).await;
            let Some(sockeye::Message::Text(t)) = got.unwrap().unwrap() else {
                panic!("expected a text message");
            };
            let t = t.to_string();
            // YYYY-MM-DDTHH:MM:SSZ
            assert_eq!(t.len(), 20, "{t}");
            assert!(
                t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T",
                "{t}"
            );
            times.push(t);
        }
        // One second apart: the second is later (string order is time order here).
        assert!(times[1] > times[0], "{times:?}");
        // What the clock's client sends is not relayed anywhere, and the clock keeps going.
        ws.send("ignored").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), ws.recv()).await;
        assert!(matches!(got, Ok(Ok(Some(sockeye::Message::Text(_))))));
        ws.close(sockeye::CloseCode::NORMAL, "").await.unwrap();
    });
}

/// What the browser test needs: node, Debian's chromium, and playwright-core installed in
/// tests/browser (scripts/test.sh installs all three). Missing pieces fail the test under CI
/// and skip it, loudly, elsewhere.
fn browser_tools() -> Option<(std::path::PathBuf, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut missing = Vec::new();
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("node".to_owned());
    }
    if !std::path::Path::new(&chromium).exists() {
        missing.push(chromium.clone());
    }
    if !dir.join("node_modules/playwright-core").is_dir() {
        missing.push("playwright-core (npm ci in tests/browser)".to_owned());
    }
    if missing.is_empty() {
        return Some((dir, chromium));
    }
    let what = format!(
        "browser test needs {} (scripts/test.sh installs them)",
        missing.join(", ")
    );
    assert!(std::env::var_os("CI").is_none(), "{what}");
    eprintln!("SKIPPED: {what}");
    None
}

#[test]
fn demo_page_in_headless_chromium_clock_and_chat() {
    let Some((dir, chromium)) = browser_tools() else {
        return;
    };
    let server = Served::start(&[], None);
    let artifacts = std::env::var_os("SOCKEYE_ARTIFACTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts")
        });
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("demo-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let child = Command::new("node")
        .current_dir(&dir)
        .arg("demo.mjs")
        .arg(format!("http://{}/", server.addr))
        .arg(&screenshot)
        .env("CHROMIUM", chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    for check in [
        "ok: the page is served at GET /",
        "ok: the clock moves",
        "ok: bob's page shows alice's message",
        "ok: alice's page shows bob's answer",
        "ok: rooms are separate topics",
    ] {
        assert!(stdout.contains(check), "missing {check:?} in:\n{stdout}");
    }
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    println!("screenshot: {}", screenshot.display());
}

// A redis-server launcher shared with the library's example tests.
#[path = "../../sockeye/tests/support/redis_server.rs"]
mod redis_server;
use redis_server::Redis;

/// Sends `prefix N` from `from` until `to` receives one of them (bounded): subscriptions
/// reach Redis asynchronously, and after a Redis restart the hubs take a moment to reconnect.
/// Leftover probes of an earlier phase are skipped. Returns the message received.
async fn send_until_received(
    from: &sockeye::Connection,
    to: &sockeye::Connection,
    prefix: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in 0.. {
        assert!(Instant::now() < deadline, "{prefix}: nothing got through");
        from.send(format!("{prefix} {n}")).await.unwrap();
        let wait = Instant::now() + Duration::from_millis(200);
        while let Ok(got) = tokio::time::timeout_at(wait.into(), to.recv()).await {
            let text = got.unwrap().unwrap().as_text().unwrap().to_owned();
            if text
                .strip_prefix(prefix)
                .is_some_and(|n| n.starts_with(' '))
            {
                return text;
            }
        }
    }
    unreachable!()
}

#[test]
fn relay_across_two_processes_through_redis_and_a_redis_restart() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let one = Served::start(&["--redis", &url], None);
    let two = Served::start(&["--redis", &url], None);
    let mut redis = Some(redis);
    block_on(async {
        let a = sockeye::connect(&format!("ws://{}/room", one.addr))
            .await
            .unwrap();
        let b = sockeye::connect(&format!("ws://{}/room", two.addr))
            .await
            .unwrap();
        let other = sockeye::connect(&format!("ws://{}/other", two.addr))
            .await
            .unwrap();
        // A client of one process receives what a client of the other publishes, both ways.
        send_until_received(&a, &b, "one to two").await;
        send_until_received(&b, &a, "two to one").await;
        // Exactly once, in order, and not on another topic.
        for i in 0..100 {
            a.send(format!("in order {i}")).await.unwrap();
        }
        let mut i = 0;
        while i < 100 {
            let got = tokio::time::timeout(Duration::from_secs(10), b.recv()).await;
            let got = got.unwrap().unwrap().unwrap();
            // Probes still in flight from the first phase come first.
            if got.as_text().is_some_and(|t| t.starts_with("one to two")) {
                continue;
            }
            assert_eq!(got.as_text(), Some(format!("in order {i}").as_str()));
            i += 1;
        }
        let nothing = tokio::time::timeout(Duration::from_millis(200), other.recv()).await;
        assert!(nothing.is_err(), "topic /other received {nothing:?}");

        // Redis goes away and comes back on the same port: delivery resumes.
        let port = redis.as_ref().unwrap().port;
        drop(redis.take());
        redis = Some(Redis::start_on(port).unwrap());
        send_until_received(&a, &b, "after the restart").await;
        send_until_received(&b, &a, "after the restart, back").await;
    });
    for served in [&one, &two] {
        assert!(
            served.log_shows("lost the connection to Redis"),
            "{}",
            served.log()
        );
        assert!(served.log_shows("reconnected"), "{}", served.log());
    }
}

/// Graceful shutdown (issue 6 item 9): SIGTERM or SIGINT (Ctrl-C) makes `sockeye serve`
/// close its connections with 1001 (going away) and exit 0, for the echo server and the relay
/// (on event loops and on tasks), the blocking echo server and the event-loop callbacks.
#[test]
fn serve_shuts_down_gracefully_on_sigterm_and_sigint() {
    let cases: [(&[&str], &str); 9] = [
        (&["--echo"], "TERM"),
        (&["--echo", "--tasks"], "TERM"),
        (&["--tasks"], "INT"),
        (&[], "INT"),
        (&["--echo", "--sync"], "TERM"),
        (&["--echo", "--sync"], "INT"),
        (&["--echo", "--reactor"], "TERM"),
        (&["--echo", "--reactor"], "INT"),
        (&["--echo", "--reactor", "--async"], "TERM"),
    ];
    // One runtime with its own threads, so that the client keeps running (and answers the
    // server's close) while this thread waits for the server to exit.
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (args, signal) in cases {
        let mut server = Served::start(args, None);
        let ws = rt.block_on(async {
            let ws = tokio::time::timeout(Duration::from_secs(10), sockeye::connect(&server.uri()))
                .await
                .unwrap()
                .unwrap();
            // The connection is open and served (the relay's demo clock answers nothing;
            // a ping does, on every server).
            let pong = ws.ping().await.unwrap();
            tokio::time::timeout(Duration::from_secs(10), pong)
                .await
                .unwrap()
                .unwrap();
            ws
        });
        let status = server.signal_and_wait(signal);
        assert!(status.success(), "{args:?} SIG{signal}: {status}");
        rt.block_on(async {
            let end = tokio::time::timeout(Duration::from_secs(10), ws.recv()).await;
            assert_eq!(end.unwrap().unwrap(), None, "{args:?} SIG{signal}");
        });
        assert_eq!(
            ws.close_code(),
            sockeye::CloseCode::GOING_AWAY,
            "{args:?} SIG{signal}"
        );
        assert!(server.log_shows("shutting down"), "{}", server.log());
    }
}

/// `serve --unix PATH` and `connect --unix PATH URI`, both servers; SIGTERM removes the socket.
#[cfg(unix)]
#[test]
fn serve_and_connect_over_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("sockeye-cli-unix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for args in [&["--echo"][..], &["--echo", "--sync"]] {
        let path = dir.join("echo.sock");
        let mut server = Served::start_unix(args, &path);
        assert_eq!(server.addr, path.display().to_string());
        assert!(path.exists());
        let unix = path.to_str().unwrap();
        let (ok, stdout, stderr) =
            run_connect(&["--unix", unix, "ws://localhost/"], "over unix\n", 1);
        assert!(ok, "{stderr}");
        assert_eq!(stdout, "< over unix\n");
        assert!(stderr.contains("through unix socket"), "{stderr}");
        assert!(server.signal_and_wait("TERM").success());
        assert!(!path.exists(), "{args:?}: the socket file is left");
    }
    // No server there: a clear error, non-zero status.
    let missing = dir.join("none.sock");
    let (ok, _, stderr) = run_connect(
        &["--unix", missing.to_str().unwrap(), "ws://localhost/"],
        "",
        0,
    );
    assert!(!ok);
    assert!(stderr.contains("No such file"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
