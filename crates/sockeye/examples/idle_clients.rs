//! Opens N idle WebSocket connections and holds them until standard input closes: the load
//! side of `bench/idle_memory.sh`, which measures a server's memory per idle connection.
//!
//! `cargo run --release -p sockeye --example idle_clients -- ws://127.0.0.1:8765/ 10000`

use std::io::Read;

#[tokio::main]
async fn main() -> Result<(), sockeye::BoxError> {
    let mut args = std::env::args().skip(1);
    let uri = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8765/".to_owned());
    let n: usize = args.next().map_or(Ok(1000), |s| s.parse())?;
    let mut conns = Vec::with_capacity(n);
    // Connect in batches so the server's accept backlog is not overrun.
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let batch = chunk.iter().map(|_| {
            let uri = uri.clone();
            async move {
                sockeye::ClientBuilder::default()
                    .ping_interval(None)
                    .connect(&uri)
                    .await
            }
        });
        for r in futures_join(batch).await {
            conns.push(r?);
        }
    }
    println!("ready {}", conns.len());
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    for c in &conns {
        let _ = c.close(sockeye::CloseCode::NORMAL, "").await;
    }
    Ok(())
}

async fn futures_join<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("connect task panicked"));
    }
    out
}
