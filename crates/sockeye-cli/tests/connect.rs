//! `sockeye connect` run as a process: driven through standard input, and interactively on a
//! pseudo-terminal. The servers are `sockeye serve --echo` processes, or a sockeye server
//! inside the test when it must select a subprotocol, see headers or push messages.

use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sockeye::{Connection, Message};

mod support;
use support::{run_connect, spawn_connect, wait_with_timeout, Served, SOCKEYE};

/// A sockeye server inside the test, on its own runtime: selects the subprotocol "chat",
/// records the handshake headers and the text messages received, echoes them, fails the
/// connection (1011) on "fail", and sends what [`TestServer::push`] is given.
struct TestServer {
    addr: String,
    headers: Arc<Mutex<Vec<http::HeaderMap>>>,
    received: Arc<Mutex<Vec<String>>>,
    push: tokio::sync::broadcast::Sender<String>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    fn start() -> TestServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let headers = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (push, _) = tokio::sync::broadcast::channel(16);
        let server = runtime.block_on({
            let headers = headers.clone();
            let received = received.clone();
            let push = push.clone();
            async move {
                sockeye::Server::builder()
                    .subprotocols(["chat"])
                    .process_request(move |request| {
                        headers.lock().unwrap().push(request.headers().clone());
                        None
                    })
                    .serve("127.0.0.1:0", move |ws| {
                        handle(ws, received.clone(), push.subscribe())
                    })
                    .await
                    .unwrap()
            }
        });
        let addr = server.local_addr().unwrap().to_string();
        TestServer {
            addr,
            headers,
            received,
            push,
            runtime: Some(runtime),
        }
    }

    fn uri(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    fn push(&self, text: &str) {
        self.push.send(text.to_owned()).unwrap();
    }

    /// Waits (bounded) until the server has received `count` text messages; returns them.
    fn received(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.received.lock().unwrap().clone();
            if got.len() >= count || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

async fn handle(
    ws: Connection,
    received: Arc<Mutex<Vec<String>>>,
    mut push: tokio::sync::broadcast::Receiver<String>,
) -> Result<(), sockeye::BoxError> {
    loop {
        tokio::select! {
            message = ws.recv() => {
                let Some(message) = message? else { return Ok(()) };
                if let Message::Text(text) = &message {
                    received.lock().unwrap().push(text.as_str().to_owned());
                    if text.as_str() == "fail" {
                        return Err("asked to fail".into());
                    }
                }
                ws.send(message).await?;
            }
            pushed = push.recv() => {
                if let Ok(text) = pushed {
                    ws.send(text).await?;
                }
            }
        }
    }
}

/// Runs `sockeye connect ARGS` with `input` on stdin, which stays open until the client exits
/// by itself (the server ends the connection). Returns (exit status ok, stdout, stderr).
fn run_until_closed(args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = spawn_connect(args);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    let output = wait_with_timeout(child, Duration::from_secs(20));
    drop(stdin);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// [`run_connect`] against a `sockeye serve --echo` of its own, with no other arguments.
fn run_against_echo(input: &str, replies: usize) -> (bool, String, String) {
    let server = Served::echo();
    run_connect(&[&server.uri()], input, replies)
}

// ----- Driven through standard input ---------------------------------------------------------

#[test]
fn ping_command_prints_a_pong_line() {
    let (ok, stdout, stderr) = run_against_echo("/ping\n/ping hello\n", 2);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for line in lines {
        let ms = line
            .strip_prefix("< PONG (")
            .and_then(|l| l.strip_suffix(" ms)"))
            .unwrap_or_else(|| panic!("not a pong line: {line:?}"));
        assert!(ms.parse::<f64>().unwrap() >= 0.0, "{line}");
    }
    assert!(stderr.contains("Connection closed: 1000 (OK)."), "{stderr}");
}

#[test]
fn close_command_closes_with_its_code_and_reason() {
    let (ok, stdout, stderr) = run_against_echo("/close 4000 bye now\nnot sent\n", 0);
    // 4000 is not a normal close: non-zero exit status.
    assert!(!ok, "{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("Connection closed: 4000 (private use) bye now."),
        "{stderr}"
    );
}

#[test]
fn close_command_with_1000_exits_zero() {
    let (ok, _, stderr) = run_against_echo("/close 1000 done\n", 0);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("Connection closed: 1000 (OK) done."),
        "{stderr}"
    );
}

#[test]
fn bad_commands_are_reported_and_the_connection_stays_open() {
    let input = "/close 999\n/close 1006\n/close x\n/binary 0\n/nope\nstill here\n";
    let (ok, stdout, stderr) = run_against_echo(input, 1);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "< still here\n");
    assert!(stderr.contains("invalid close code 999"), "{stderr}");
    assert!(stderr.contains("invalid close code 1006"), "{stderr}");
    assert!(stderr.contains("invalid close code \"x\""), "{stderr}");
    assert!(
        stderr.contains("/binary: odd number of hex digits"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown command /nope"), "{stderr}");
    assert!(stderr.contains("Connection closed: 1000 (OK)."), "{stderr}");
}

#[test]
fn double_slash_sends_a_line_starting_with_slash() {
    let (ok, stdout, stderr) = run_against_echo("//x\n// y\n", 2);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "< /x\n< / y\n");
}

#[test]
fn binary_command_sends_bytes_printed_back_as_hex() {
    let (ok, stdout, stderr) = run_against_echo("/binary 0a0B ff\n", 1);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "< (binary) 0a 0b ff\n");
}

#[test]
fn help_command_lists_the_commands() {
    let (ok, _, stderr) = run_against_echo("/help\n", 0);
    assert!(ok, "{stderr}");
    for command in ["/ping", "/close", "/binary", "//TEXT", "/help"] {
        assert!(stderr.contains(command), "{command} missing: {stderr}");
    }
}

#[test]
fn subprotocol_selected_by_the_server_is_printed() {
    let server = TestServer::start();
    let uri = server.uri();
    let args = ["--subprotocol", "other", "--subprotocol", "chat", &uri];
    let (ok, stdout, stderr) = run_connect(&args, "hi\n", 1);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "< hi\n");
    assert!(stderr.contains("Subprotocol: chat."), "{stderr}");
    let headers = server.headers.lock().unwrap();
    let offered = headers[0]["sec-websocket-protocol"].to_str().unwrap();
    assert_eq!(offered.replace(' ', ""), "other,chat");
}

#[test]
fn header_option_reaches_the_server() {
    let server = TestServer::start();
    let uri = server.uri();
    let args = ["-H", "X-Token: s3cret", "--header", "x-other:two", &uri];
    let (ok, _, stderr) = run_connect(&args, "", 0);
    assert!(ok, "{stderr}");
    let headers = server.headers.lock().unwrap();
    assert_eq!(headers.len(), 1);
    assert_eq!(headers[0]["x-token"], "s3cret");
    assert_eq!(headers[0]["x-other"], "two");
    // Not offered, so none was selected, and nothing is printed about it.
    assert!(!stderr.contains("Subprotocol"), "{stderr}");
}

#[test]
fn invalid_header_is_refused() {
    let (ok, _, stderr) = run_connect(&["-H", "no colon", "ws://127.0.0.1:9/"], "", 0);
    assert!(!ok);
    assert!(stderr.contains("expected 'Name: value'"), "{stderr}");
}

/// A one-tunnel HTTP CONNECT proxy on a thread: answers the first request with 200 and
/// relays to `target` (whatever the request asked for); reports the request line.
fn one_tunnel_proxy(target: String) -> (String, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (mut client, _) = listener.accept().unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut reader = BufReader::new(client.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        let server = std::net::TcpStream::connect(&target).unwrap();
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .unwrap();
        let (mut from_server, mut to_client) = (server.try_clone().unwrap(), client);
        let mut to_server = server;
        let up = std::thread::spawn(move || {
            let _ = std::io::copy(&mut reader, &mut to_server);
            let _ = to_server.shutdown(std::net::Shutdown::Write);
        });
        let _ = std::io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(std::net::Shutdown::Write);
        let _ = up.join();
        request_line.trim_end().to_owned()
    });
    (url, handle)
}

#[test]
fn proxy_option_tunnels_through_an_http_proxy() {
    let served = Served::echo();
    let port = served
        .uri()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let (proxy, handle) = one_tunnel_proxy(format!("127.0.0.1:{port}"));
    // A name only the proxy "resolves": the connection can only go through it.
    let uri = format!("ws://cli.sockeye.test:{port}/");
    let (ok, stdout, stderr) = run_connect(&["--proxy", &proxy, &uri], "via proxy\n", 1);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("< via proxy"), "{stdout}");
    let request_line = handle.join().unwrap();
    assert_eq!(
        request_line,
        format!("CONNECT cli.sockeye.test:{port} HTTP/1.1")
    );
}

#[test]
fn invalid_proxy_options_are_refused() {
    let (ok, _, stderr) = run_connect(&["--proxy", "socks4://p", "ws://127.0.0.1:9/"], "", 0);
    assert!(!ok);
    assert!(stderr.contains("invalid proxy URL socks4://p"), "{stderr}");
    let args = ["--proxy", "http://p", "--no-proxy", "ws://127.0.0.1:9/"];
    let (ok, _, stderr) = run_connect(&args, "", 0);
    assert!(!ok);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn server_error_close_exits_non_zero() {
    let server = TestServer::start();
    let (ok, stdout, stderr) = run_until_closed(&[&server.uri()], "fail\n");
    assert!(!ok, "{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("Connection closed: 1011 (internal error)"),
        "{stderr}"
    );
}

#[test]
fn connection_lost_exits_non_zero_with_1006_while_input_is_open() {
    let mut server = Served::echo();
    let mut child = spawn_connect(&[&server.uri()]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"ping\n").unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "< ping\n");
    // The server dies without a closing handshake; stdin stays open all along.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let output = wait_with_timeout(child, Duration::from_secs(20));
    drop(stdin);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("Connection closed: 1006 (abnormal closure)."),
        "{stderr}"
    );
}

#[test]
fn max_size_and_no_compression_options() {
    let server = Served::echo();
    let uri = server.uri();
    // A reply within the limit, then one over it: the client fails the connection (1009).
    let (ok, stdout, stderr) = run_until_closed(
        &["--no-compression", "--max-size", "16", &uri],
        "short\nthis line is longer than sixteen bytes\n",
    );
    assert_eq!(stdout, "< short\n");
    assert!(!ok, "{stderr}");
    // The client failed the connection: it sent 1009 and received no close frame.
    assert!(
        stderr.contains("Connection closed: 1006 (abnormal closure); sent 1009 (message too big)"),
        "{stderr}"
    );
}

#[test]
fn wss_against_serve_with_tls_flags_needs_insecure_for_a_self_signed_certificate() {
    let dir = std::env::temp_dir().join(format!("sockeye-cli-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    for server_args in [
        vec!["--echo", "--tls-cert", cert, "--tls-key", key],
        vec!["--echo", "--sync", "--tls-cert", cert, "--tls-key", key],
    ] {
        let server = Served::start(&server_args, None);
        let uri = format!("wss://{}/", server.addr);
        let (ok, stdout, stderr) = run_connect(&["--insecure", &uri], "over tls\n", 1);
        assert!(ok, "{server_args:?}: {stderr}");
        assert_eq!(stdout, "< over tls\n");
        // Without --insecure, the self-signed certificate is refused, clearly.
        let (ok, _, stderr) = run_connect(&[&uri], "", 0);
        assert!(!ok);
        assert!(
            stderr.contains("TLS") && stderr.contains("certificate"),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ----- Interactive, on a pseudo-terminal --------------------------------------------------------

#[cfg(unix)]
mod pty {
    use super::*;
    use rexpect::process::WaitStatus;
    use rexpect::session::PtySession;

    fn spawn(uri: &str) -> PtySession {
        let mut cmd = Command::new(SOCKEYE);
        cmd.args(["connect", uri])
            .env("RUST_LOG", "off")
            .env("TERM", "xterm");
        rexpect::session::spawn_command(cmd, Some(10_000)).unwrap()
    }

    /// Sends `keys` to the terminal at once.
    fn type_keys(p: &mut PtySession, keys: &str) {
        p.send(keys).unwrap();
        p.flush().unwrap();
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    fn exit_code(p: &PtySession) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match p.process().status() {
                Some(WaitStatus::Exited(_, code)) => return code,
                Some(WaitStatus::StillAlive) | None => {}
                Some(other) => panic!("not exited normally: {other:?}"),
            }
            assert!(Instant::now() < deadline, "the client did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn typed_lines_are_sent_and_a_pushed_message_keeps_the_partial_line() {
        let server = TestServer::start();
        let mut p = spawn(&server.uri());
        p.exp_string("Connected to").unwrap();
        p.exp_string("> ").unwrap();
        type_keys(&mut p, "first line\r");
        p.exp_string("< first line").unwrap();
        p.exp_string("> ").unwrap();

        // Half a line on screen, then the server speaks.
        type_keys(&mut p, "partial");
        p.exp_string("partial").unwrap();
        server.push("pushed by the server");
        p.exp_string("< pushed by the server").unwrap();
        // Printed above the prompt, which is drawn again with the partial line.
        p.exp_regex(r"> (\x1b\[[0-9;?]*[A-Za-z])*partial").unwrap();

        // The partial line was kept: finishing it sends the whole line.
        type_keys(&mut p, " line\r");
        p.exp_string("< partial line").unwrap();
        assert_eq!(server.received(2), ["first line", "partial line"]);

        // History: Up brings the last line back.
        type_keys(&mut p, "\x1b[A\r");
        p.exp_string("< partial line").unwrap();
        assert_eq!(server.received(3).len(), 3);

        // Ctrl-D on an empty line: closing handshake, 1000, exit status 0.
        p.send_control('d').unwrap();
        p.exp_string("Connection closed: 1000 (OK).").unwrap();
        assert_eq!(exit_code(&p), 0);
    }

    #[test]
    fn commands_work_at_the_prompt() {
        let server = Served::echo();
        let mut p = spawn(&server.uri());
        p.exp_string("> ").unwrap();
        type_keys(&mut p, "/ping\r");
        p.exp_regex(r"< PONG \([0-9.]+ ms\)").unwrap();
        type_keys(&mut p, "/binary 01ff\r");
        p.exp_string("< (binary) 01 ff").unwrap();
        type_keys(&mut p, "/close 4001 over\r");
        p.exp_string("Connection closed: 4001 (private use) over.")
            .unwrap();
        assert_ne!(exit_code(&p), 0);
    }

    #[test]
    fn ctrl_c_closes_cleanly() {
        let server = Served::echo();
        let mut p = spawn(&server.uri());
        p.exp_string("> ").unwrap();
        type_keys(&mut p, "typed but not sent");
        p.exp_string("typed but not sent").unwrap();
        p.send_control('c').unwrap();
        p.exp_string("Connection closed: 1000 (OK).").unwrap();
        assert_eq!(exit_code(&p), 0);
    }

    #[test]
    fn server_failure_while_at_the_prompt_exits_non_zero() {
        let server = TestServer::start();
        let mut p = spawn(&server.uri());
        p.exp_string("> ").unwrap();
        type_keys(&mut p, "fail\r");
        // The connection ends while the editor waits at the prompt: the client still exits.
        p.exp_string("Connection closed: 1011 (internal error)")
            .unwrap();
        assert_eq!(exit_code(&p), 1);
    }
}
