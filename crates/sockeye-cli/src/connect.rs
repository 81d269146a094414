//! `sockeye connect`: a client in the style of python-websockets' `websockets URI`.
//!
//! When standard input and output are a terminal, a line editor (rustyline) reads lines on
//! its own thread with a `> ` prompt and in-memory history, and the messages received are
//! printed above the prompt through its external printer, so that they never corrupt the line
//! being typed. Otherwise each line of standard input is read on a thread and sent; messages
//! are printed on standard output (`< TEXT`, `< (binary) 0a 0b`), everything else on standard
//! error. Either way the lines reach the tokio side through one channel, and a line starting
//! with `/` is a command (`/ping`, `/close`, `/binary`, `//text`, `/help`).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sockeye::{CloseCode, Connection, Message};
use tokio::sync::mpsc;

/// The commands, for `--help` and `/help`.
macro_rules! commands {
    () => {
        "\
Commands (a line starting with /):
  /ping [PAYLOAD]          send a ping; `< PONG (N ms)` is printed when its pong arrives
  /close [CODE [REASON]]   close with this code (default 1000) and reason
  /binary HEX              send a binary message, e.g. `/binary 0a0b` or `/binary 0a 0b`
  //TEXT                   send the text message `/TEXT`
  /help                    list the commands
Any other line is sent as a text message."
    };
}

const COMMANDS: &str = commands!();

/// The rest of `--help`.
const AFTER_HELP: &str = concat!(
    commands!(),
    "

On a terminal: a `> ` prompt with line editing and history (Up/Down); messages received are
printed above it as `< TEXT`, binary ones as `< (binary) 0a 0b ...`; Ctrl-D or Ctrl-C
closes the connection (1000). Otherwise each line of standard input is sent, messages go to
standard output and the rest to standard error; the end of input closes the connection.

At the end `Connection closed: CODE REASON.` is printed; the exit status is 0 when the
connection closed normally (1000 or 1001 both ways), 1 otherwise."
);

/// `sockeye connect` arguments.
#[derive(clap::Args)]
#[command(after_help = AFTER_HELP)]
pub(crate) struct ConnectArgs {
    /// The URI, ws://HOST[:PORT]/PATH.
    uri: String,
    /// Extra header for the handshake, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Subprotocol to offer (repeatable, in order of preference); the one the server selects
    /// is printed on connect.
    #[arg(long = "subprotocol", value_name = "NAME")]
    subprotocols: Vec<String>,
    /// Accept any TLS certificate for wss:// (self-signed test servers).
    #[arg(long)]
    insecure: bool,
    /// Connect through this proxy: http://[USER:PASS@]HOST[:PORT] (CONNECT),
    /// socks5://... or socks5h://... (default: the one the environment names, with
    /// HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY).
    #[arg(long, value_name = "URL", conflicts_with = "no_proxy")]
    proxy: Option<String>,
    /// Connect directly, whatever the proxy environment variables say.
    #[arg(long)]
    no_proxy: bool,
    /// Do not offer permessage-deflate.
    #[arg(long)]
    no_compression: bool,
    /// Largest message accepted, in bytes (default 1 MiB).
    #[arg(long, value_name = "BYTES")]
    max_size: Option<usize>,
    /// Connect to the Unix domain socket at this path instead of the URI's host and port; the
    /// URI still gives the handshake's Host and path (e.g. ws://localhost/).
    #[cfg(unix)]
    #[arg(long, value_name = "PATH")]
    unix: Option<std::path::PathBuf>,
}

/// What the input thread (line editor or standard input) passes to the tokio side.
enum Input {
    Line(String),
    /// End of input, or Ctrl-D at the prompt.
    Eof,
    /// Ctrl-C at the prompt.
    Interrupt,
    /// The terminal failed.
    Failed(String),
}

/// Where output goes: plain standard output and error, or above the line editor's prompt.
#[derive(Clone)]
enum Out {
    Plain,
    /// To the printer thread; `None` tells it to stop after what came before.
    Editor(std::sync::mpsc::Sender<Option<String>>),
}

impl Out {
    /// A `< ` line: standard output.
    fn message(&self, line: String) {
        match self {
            Out::Plain => println!("{line}"),
            Out::Editor(tx) => {
                let _ = tx.send(Some(line + "\n"));
            }
        }
    }

    /// Status and errors: standard error.
    fn status(&self, line: String) {
        match self {
            Out::Plain => eprintln!("{line}"),
            Out::Editor(tx) => {
                let _ = tx.send(Some(line + "\n"));
            }
        }
    }
}

fn show(message: &Message) -> String {
    match message {
        Message::Text(t) => format!("< {t}"),
        Message::Binary(b) => format!("< (binary) {}", hex(b)),
    }
}

fn hex(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|x| format!("{x:02x}")).collect();
    hex.join(" ")
}

/// Parses `0a0b`, `0a 0b` or `0A:0B`.
fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b':')
        .collect();
    if digits.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("invalid hex {:?}", String::from_utf8_lossy(pair)))
        })
        .collect()
}

/// Parses the arguments of `/close`: `[CODE [REASON]]`.
fn parse_close(args: &str) -> Result<(CloseCode, String), String> {
    let args = args.trim();
    if args.is_empty() {
        return Ok((CloseCode::NORMAL, String::new()));
    }
    let (code, reason) = args.split_once(' ').unwrap_or((args, ""));
    let code: u16 = code
        .parse()
        .map_err(|_| format!("invalid close code {code:?}: expected a number"))?;
    let code = CloseCode(code);
    if !code.is_valid_on_wire() {
        return Err(format!(
            "invalid close code {}: use 1000-1003, 1007-1014 or 3000-4999",
            code.0
        ));
    }
    let reason = reason.trim();
    if reason.len() > sockeye::proto::close::MAX_CLOSE_REASON {
        return Err(format!(
            "close reason too long: {} bytes, at most {}",
            reason.len(),
            sockeye::proto::close::MAX_CLOSE_REASON
        ));
    }
    Ok((code, reason.to_owned()))
}

/// Connects over TCP and says so.
async fn connect_to(builder: sockeye::ClientBuilder, uri: &str) -> sockeye::Result<Connection> {
    let ws = builder.connect(uri).await?;
    eprintln!("Connected to {uri}.");
    Ok(ws)
}

pub(crate) async fn connect(args: ConnectArgs) -> Result<ExitCode, sockeye::BoxError> {
    let uri = args.uri.as_str();
    let mut builder = sockeye::ClientBuilder::default().compression(!args.no_compression);
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("invalid header {h:?}: expected 'Name: value'"))?;
        builder = builder.header(name.trim(), value.trim())?;
    }
    if !args.subprotocols.is_empty() {
        builder = builder.subprotocols(args.subprotocols.iter().cloned());
    }
    if let Some(bytes) = args.max_size {
        builder = builder.max_size(bytes);
    }
    builder = builder.insecure(args.insecure);
    if let Some(url) = &args.proxy {
        builder = builder.proxy(sockeye::Proxy::url(url)?);
    } else if args.no_proxy {
        builder = builder.proxy(sockeye::Proxy::none());
    }
    #[cfg(unix)]
    let ws = match &args.unix {
        Some(path) => {
            let ws = builder.unix_connect(path, uri).await?;
            eprintln!("Connected to {uri} through unix socket {}.", path.display());
            ws
        }
        None => connect_to(builder, uri).await?,
    };
    #[cfg(not(unix))]
    let ws = connect_to(builder, uri).await?;
    if !args.subprotocols.is_empty() {
        match ws.subprotocol() {
            Some(p) => eprintln!("Subprotocol: {p}."),
            None => eprintln!("Subprotocol: none (the server selected none of those offered)."),
        }
    }

    let (input_tx, input) = mpsc::unbounded_channel();
    let editor = if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        match Editor::start(input_tx.clone()) {
            Ok(editor) => Some(editor),
            Err(e) => {
                eprintln!("No line editor ({e}): reading lines from standard input.");
                None
            }
        }
    } else {
        None
    };
    let out = match &editor {
        Some(editor) => Out::Editor(editor.printer.clone()),
        None => {
            read_stdin(input_tx);
            Out::Plain
        }
    };
    let ok = session(&ws, &out, input).await;

    out.status(closed_line(&ws));
    if let Some(editor) = editor {
        editor.finish().await;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `Connection closed: CODE REASON.` with the peer's code (1006 when it sent no close frame),
/// and the code this side sent when the peer sent none (1009 for a message too big, ...).
fn closed_line(ws: &Connection) -> String {
    let code = ws.close_code();
    let reason = ws.close_reason();
    let mut line = format!("Connection closed: {code}");
    if !reason.is_empty() {
        line.push(' ');
        line.push_str(&reason);
    }
    if let Some(sockeye::Closed {
        received: None,
        sent: Some(sent),
    }) = ws.closed()
    {
        line.push_str(&format!("; sent {}", sent.code));
        if !sent.reason.is_empty() {
            line.push(' ');
            line.push_str(&sent.reason);
        }
    }
    line.push('.');
    line
}

/// Sends what is typed, prints what arrives, until the connection is closed. Returns whether
/// it closed normally.
async fn session(ws: &Connection, out: &Out, mut input: mpsc::UnboundedReceiver<Input>) -> bool {
    let mut receiver = tokio::spawn(receive(ws.clone(), out.clone()));
    let mut received_all = false;
    let signal = crate::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut receiver => {
                // The peer closed, or the connection failed.
                received_all = true;
                break;
            }
            _ = &mut signal => {
                let _ = ws.close(CloseCode::NORMAL, "").await;
                break;
            }
            next = input.recv() => match next {
                Some(Input::Line(line)) => {
                    if let Some((code, reason)) = line_or_command(ws, out, &line).await {
                        let _ = ws.close(code, &reason).await;
                        break;
                    }
                }
                Some(Input::Failed(e)) => {
                    out.status(format!("Error: terminal: {e}"));
                    let _ = ws.close(CloseCode::NORMAL, "").await;
                    break;
                }
                Some(Input::Eof | Input::Interrupt) | None => {
                    // Start the closing handshake; the receiver prints what still arrives.
                    let _ = ws.close(CloseCode::NORMAL, "").await;
                    break;
                }
            },
        }
    }
    if !received_all {
        let _ = receiver.await;
    }
    ws.closed().is_some_and(|c| c.is_ok())
}

/// Prints the messages received until the connection is over.
async fn receive(ws: Connection, out: Out) {
    while let Ok(Some(m)) = ws.recv().await {
        out.message(show(&m));
    }
}

/// Sends a line or runs the command it is. Returns the code and reason to close with for
/// `/close`.
async fn line_or_command(ws: &Connection, out: &Out, line: &str) -> Option<(CloseCode, String)> {
    let Some(command) = line.strip_prefix('/') else {
        send(ws, out, Message::Text(line.into())).await;
        return None;
    };
    if command.starts_with('/') {
        send(ws, out, Message::Text(command.into())).await;
        return None;
    }
    let (name, args) = command.split_once(' ').unwrap_or((command, ""));
    match name {
        "ping" => ping(ws, out, args).await,
        "close" => match parse_close(args) {
            Ok(close) => return Some(close),
            Err(e) => out.status(format!("Error: /close: {e}")),
        },
        "binary" => match parse_hex(args) {
            Ok(bytes) => send(ws, out, Message::Binary(bytes.into())).await,
            Err(e) => out.status(format!("Error: /binary: {e}")),
        },
        "help" => out.status(COMMANDS.to_owned()),
        _ => out.status(format!(
            "Error: unknown command /{name} (/help lists the commands; //TEXT sends /TEXT)"
        )),
    }
    None
}

async fn send(ws: &Connection, out: &Out, message: Message) {
    if let Err(e) = ws.send(message).await {
        out.status(format!("Error: cannot send: {e}"));
    }
}

/// `/ping [PAYLOAD]`: sends the ping now, prints the pong when it comes.
async fn ping(ws: &Connection, out: &Out, payload: &str) {
    const MAX_PING: usize = 125;
    let sent = if payload.is_empty() {
        ws.ping().await
    } else if payload.len() > MAX_PING {
        out.status(format!(
            "Error: /ping: payload too long: {} bytes, at most {MAX_PING}",
            payload.len()
        ));
        return;
    } else {
        ws.ping_with(payload.as_bytes()).await
    };
    match sent {
        Ok(pong) => {
            let out = out.clone();
            tokio::spawn(async move {
                if let Ok(rtt) = pong.await {
                    let ms = rtt.as_secs_f64() * 1000.0;
                    out.message(format!("< PONG ({ms:.3} ms)"));
                }
            });
        }
        Err(e) => out.status(format!("Error: /ping: {e}")),
    }
}

/// Reads standard input, a line at a time, on its own thread (a blocking read in a thread of
/// its own never holds up the end of the process, unlike tokio's stdin).
fn read_stdin(tx: mpsc::UnboundedSender<Input>) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(Input::Line(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Input::Eof);
    });
}

/// The line editor: its thread, and the thread that prints above its prompt.
struct Editor {
    printer: std::sync::mpsc::Sender<Option<String>>,
    printer_thread: std::thread::JoinHandle<()>,
    /// Whether the editor thread is in `readline` (the terminal is in raw mode).
    editing: Arc<AtomicBool>,
    #[cfg(unix)]
    saved: Option<nix::sys::termios::Termios>,
}

impl Editor {
    fn start(tx: mpsc::UnboundedSender<Input>) -> rustyline::Result<Editor> {
        use rustyline::error::ReadlineError;
        use rustyline::ExternalPrinter as _;

        #[cfg(unix)]
        let saved = nix::sys::termios::tcgetattr(std::io::stdin()).ok();
        let config = rustyline::Config::builder()
            .auto_add_history(true)
            .max_history_size(1000)?
            .build();
        let mut rl = rustyline::DefaultEditor::with_config(config)?;
        let mut printer = rl.create_external_printer()?;
        let (printer_tx, printer_rx) = std::sync::mpsc::channel::<Option<String>>();
        let printer_thread = std::thread::spawn(move || {
            while let Ok(Some(text)) = printer_rx.recv() {
                if printer.print(text).is_err() {
                    break;
                }
            }
        });
        let editing = Arc::new(AtomicBool::new(true));
        let flag = editing.clone();
        std::thread::spawn(move || loop {
            flag.store(true, Ordering::SeqCst);
            let result = rl.readline("> ");
            flag.store(false, Ordering::SeqCst);
            let input = match result {
                Ok(line) => Input::Line(line),
                Err(ReadlineError::Eof) => Input::Eof,
                Err(ReadlineError::Interrupted) => Input::Interrupt,
                Err(e) => Input::Failed(e.to_string()),
            };
            let last = !matches!(input, Input::Line(_));
            if tx.send(input).is_err() || last {
                return;
            }
        });
        Ok(Editor {
            printer: printer_tx,
            printer_thread,
            editing,
            #[cfg(unix)]
            saved,
        })
    }

    /// Prints what is still queued, then, if the prompt is still up (the connection ended
    /// while a line was being typed), gives the terminal back as it was and erases the prompt.
    async fn finish(self) {
        let _ = self.printer.send(None);
        let thread = self.printer_thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        if !self.editing.load(Ordering::SeqCst) {
            return;
        }
        // The editor draws what it was handed from its own thread: give it a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
        #[cfg(unix)]
        if let Some(saved) = &self.saved {
            use nix::sys::termios::{tcsetattr, SetArg};
            let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
        }
        // Bracketed paste off (the editor turns it on while it reads), erase the prompt line.
        let mut stdout = std::io::stdout();
        let _ = stdout.write_all(b"\x1b[?2004l\r\x1b[K");
        let _ = stdout.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_arguments() {
        assert_eq!(parse_close("").unwrap(), (CloseCode::NORMAL, String::new()));
        assert_eq!(
            parse_close("4000").unwrap(),
            (CloseCode(4000), String::new())
        );
        assert_eq!(
            parse_close("4000 good bye").unwrap(),
            (CloseCode(4000), "good bye".to_owned())
        );
        assert!(parse_close("1006").is_err());
        assert!(parse_close("999").is_err());
        assert!(parse_close("abc").is_err());
        assert!(parse_close(&format!("1000 {}", "x".repeat(124))).is_err());
    }

    #[test]
    fn hex_arguments() {
        assert_eq!(parse_hex("0a0B").unwrap(), vec![0x0a, 0x0b]);
        assert_eq!(parse_hex("0a 0b").unwrap(), vec![0x0a, 0x0b]);
        assert_eq!(parse_hex("").unwrap(), Vec::<u8>::new());
        assert!(parse_hex("0").is_err());
        assert!(parse_hex("zz").is_err());
        assert_eq!(hex(&[0x0a, 0xff]), "0a ff");
    }
}
