//! An echo server over TLS (`wss://`): the certificate chain and its private key come from
//! PEM files.
//!
//! ```text
//! cargo run -p sockeye --example tls_server -- cert.pem key.pem [127.0.0.1:8443]
//! cargo run -p sockeye --example tls_client -- wss://localhost:8443/ ca.pem
//! ```
//!
//! A certificate for a test, with the CA that signed it, can come from `mkcert` or
//! `openssl`; the tests of `tests/tls.rs` make theirs with `rcgen`.

use sockeye::{BoxError, ServerConnection};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let (Some(cert), Some(key)) = (args.next(), args.next()) else {
        eprintln!("usage: tls_server CERT.pem KEY.pem [ADDR]");
        std::process::exit(2);
    };
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8443".to_owned());

    // The files are read here: a missing or unparsable one is an error that names it.
    let server = sockeye::Server::builder()
        .tls_pem_files(&cert, &key)?
        .serve(addr, |ws: ServerConnection| async move {
            while let Some(msg) = ws.recv().await? {
                ws.send(msg).await?;
            }
            Ok(())
        })
        .await?;
    let bound = server.local_addr().ok_or("no local address")?;
    println!("listening on wss://{bound}/");
    server.serve_forever().await?;
    Ok(())
}
