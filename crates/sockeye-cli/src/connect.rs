//! `sockeye connect`: a client reading messages to send from standard input.

use std::io::IsTerminal;
use std::process::ExitCode;

use sockeye::{CloseCode, Message};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn show(message: &Message) -> String {
    match message {
        Message::Text(t) => format!("< {t}"),
        Message::Binary(b) => {
            let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("< (binary) {}", hex.join(" "))
        }
    }
}

pub(crate) async fn connect(uri: &str, headers: &[String]) -> Result<ExitCode, sockeye::BoxError> {
    let mut builder = sockeye::ClientBuilder::default();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("invalid header {h:?}: expected 'Name: value'"))?;
        builder = builder.header(name.trim(), value.trim())?;
    }
    let ws = builder.connect(uri).await?;
    let interactive = std::io::stdin().is_terminal();
    eprintln!("Connected to {uri}.");
    let printer = {
        let ws = ws.clone();
        tokio::spawn(async move {
            let mut stdout = tokio::io::stdout();
            loop {
                match ws.recv().await {
                    Ok(Some(m)) => {
                        let line = format!("{}\n", show(&m));
                        let _ = stdout.write_all(line.as_bytes()).await;
                        let _ = stdout.flush().await;
                    }
                    Ok(None) => return true,
                    Err(_) => return false,
                }
            }
        })
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        match lines.next_line().await {
            Ok(Some(line)) => {
                if ws.send(line).await.is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
    // End of input: start the closing handshake; the printer shows what still arrives.
    let _ = ws.close(CloseCode::NORMAL, "").await;
    let clean = printer.await.unwrap_or(false);
    let code = ws.close_code();
    let reason = ws.close_reason();
    if reason.is_empty() {
        eprintln!("Connection closed: {code}.");
    } else {
        eprintln!("Connection closed: {code} {reason}.");
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
