//! The log (DESIGN §7) of both server back ends, as a subscriber sees it: INFO when a
//! connection opens and closes, DEBUG frames inside the connection's `conn` span, which
//! names the remote address. One test in this binary: it installs the global subscriber.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sockeye::{CloseCode, Message};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.0.lock().unwrap())).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_log_their_frames_in_their_span() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    for tasks in [false, true] {
        let server = sockeye::Server::builder()
            .tasks(tasks)
            .compression(false)
            .serve("127.0.0.1:0", |ws| async move {
                while let Some(m) = ws.recv().await? {
                    ws.send(m).await?;
                }
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(server.on_event_loops(), !tasks);
        let ws = sockeye::connect(&format!("ws://{}/", server.local_addr().unwrap()))
            .await
            .unwrap();
        let me = ws.local_addr().unwrap();
        ws.send("hello").await.unwrap();
        assert_eq!(ws.recv().await.unwrap(), Some(Message::from("hello")));
        // A message from elsewhere (a broadcast) is logged in the connection's span too.
        let skipped = sockeye::broadcast(&server.connections(), "to all");
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(ws.recv().await.unwrap(), Some(Message::from("to all")));
        ws.close(CloseCode::NORMAL, "").await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), server.close())
            .await
            .unwrap();
        let log = captured.take();
        let server_lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("sockeye::server"))
            .collect();
        let has = |needle: &str, in_span: bool| {
            server_lines.iter().any(|l| {
                l.contains(needle)
                    && (!in_span || l.contains("conn{") && l.contains(&me.to_string()))
            })
        };
        assert!(has("connection open", false), "tasks {tasks}:\n{log}");
        assert!(
            has("< TEXT 'hello' [5 bytes]", true),
            "tasks {tasks}: received frame in the span:\n{log}"
        );
        assert!(
            has("> TEXT 'hello' [5 bytes]", true),
            "tasks {tasks}: sent frame in the span:\n{log}"
        );
        assert!(
            has("connection closed (1000", false),
            "tasks {tasks}:\n{log}"
        );
        // On the loops, also what other tasks send (the loop queues it into the core). A
        // task's connection encodes it in the sender's context, outside its span (left so
        // far: its span lives in its task).
        assert!(
            tasks || has("> TEXT 'to all' [6 bytes]", true),
            "tasks {tasks}: broadcast in the span:\n{log}"
        );
        // The span gets the connection's id once the handshake gives it one (the loop's
        // span has an id field; the task's names the remote address only).
        assert!(!log.contains("conn{id=0"), "tasks {tasks}:\n{log}");
        assert!(
            has("connection open", true),
            "tasks {tasks}: open in the span:\n{log}"
        );
    }
}
