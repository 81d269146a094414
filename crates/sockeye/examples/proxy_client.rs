//! A client that reaches its server through a proxy and follows redirects: sends one line,
//! prints the answer.
//!
//! ```text
//! # The proxy the environment names (HTTPS_PROXY for wss://, HTTP_PROXY for ws://,
//! # ALL_PROXY, NO_PROXY), or none:
//! cargo run -p sockeye --example proxy_client -- wss://echo.example/ws
//! # An explicit proxy: HTTP CONNECT, or SOCKS5 (socks5h:// resolves names at the proxy):
//! cargo run -p sockeye --example proxy_client -- ws://10.0.0.5:8765/ http://user:pass@proxy:3128
//! cargo run -p sockeye --example proxy_client -- ws://internal.lan/ socks5h://127.0.0.1:1080
//! # Directly, whatever the environment says:
//! cargo run -p sockeye --example proxy_client -- ws://127.0.0.1:8765/ none
//! ```

use sockeye::{BoxError, ClientBuilder, CloseCode, Proxy};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let uri = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8765/".to_owned());
    let proxy = match args.next().as_deref() {
        None => Proxy::from_env(),
        Some("none") => Proxy::none(),
        Some(url) => Proxy::url(url)?,
    };
    // Which proxy, if any, this URI goes through (credentials are not shown).
    match proxy.for_uri(&uri)? {
        Some(via) => println!("through {via}"),
        None => println!("direct"),
    }

    let ws = ClientBuilder::default()
        .proxy(proxy)
        // Follow at most 3 redirects (the default is 10; 0 refuses any).
        .max_redirects(3)
        .connect(&uri)
        .await?;
    // After redirects, the request that opened the connection names the final URI.
    println!("connected: {}", ws.request().uri());

    ws.send("Hello through the proxy!").await?;
    if let Some(answer) = ws.recv().await? {
        println!("<<< {}", answer.as_text().unwrap_or("(binary)"));
    }
    ws.close(CloseCode::NORMAL, "").await?;
    Ok(())
}
