//! A client over TLS (`wss://`): sends a message to the server of `tls_server.rs` and prints
//! the echo. The server's certificate is checked against Mozilla's roots plus the CA of an
//! optional PEM file; `--insecure` skips the check (for tests only).
//!
//! ```text
//! cargo run -p sockeye --example tls_client -- wss://localhost:8443/ ca.pem
//! cargo run -p sockeye --example tls_client -- wss://localhost:8443/ --insecure
//! ```

use sockeye::{BoxError, CloseCode};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut builder = sockeye::ClientBuilder::default();
    let mut uri = "wss://localhost:8443/".to_owned();
    for (i, arg) in std::env::args().skip(1).enumerate() {
        if arg == "--insecure" {
            // Any certificate is accepted: never outside a test.
            builder = builder.insecure(true);
        } else if i == 0 {
            uri = arg;
        } else {
            // Read now: a missing or unparsable file is an error that names it.
            builder = builder.ca_file(&arg)?;
        }
    }

    // TLS handshake (certificate checked for the URI's host), then the WebSocket one. A
    // certificate that is not trusted gives `Error::Tls` with the reason.
    let ws = builder.connect(&uri).await?;
    ws.send("Hello over TLS!").await?;
    println!(">>> Hello over TLS!");
    if let Some(reply) = ws.recv().await? {
        println!("<<< {}", reply.as_text().unwrap_or("(binary)"));
    }
    ws.close(CloseCode::NORMAL, "").await?;
    Ok(())
}
