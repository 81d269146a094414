//! `--mode handshake`: each of the connections connects, upgrades, sends a close frame,
//! waits for the server's close frame and for the end of the TCP stream (the server closes
//! first, so TIME_WAIT stays on its side), then starts over. The rate counts whole cycles;
//! the latency is that of the opening handshake (connect to 101).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use sockeye::proto::frame::{FrameHeader, OpCode};
use sockeye::proto::Config;

use super::wire::{self, Rng};
use super::{CpuMeter, CpuUse, Progress, Stats};

pub(crate) struct Settings {
    pub(crate) connections: usize,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) busy_poll: bool,
    pub(crate) server_pid: Option<u32>,
}

#[derive(PartialEq, Eq)]
enum State {
    Connecting,
    Upgrading,
    Closing,
}

struct Slot {
    sock: TcpStream,
    state: State,
    started: Instant,
    handshake: Duration,
    key: String,
    request: Vec<u8>,
    buf: Vec<u8>,
    close_received: bool,
}

/// Gives up after this many failed cycles (a server refusing connections, no ports left).
const MAX_ERRORS: u64 = 1000;

fn start(
    addr: SocketAddr,
    uri: &http::Uri,
    config: &Config,
    rng: &mut Rng,
    poll: &Poll,
    token: Token,
) -> Result<Slot, String> {
    let mut sock = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    poll.registry()
        .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
        .map_err(|e| e.to_string())?;
    let (request, key) = wire::request(uri, config, rng)?;
    Ok(Slot {
        sock,
        state: State::Connecting,
        started: Instant::now(),
        handshake: Duration::ZERO,
        key,
        request,
        buf: Vec::with_capacity(512),
        close_received: false,
    })
}

/// Advances a slot; `Ok(true)` when its cycle is complete.
fn advance(slot: &mut Slot, config: &Config, rng: &mut Rng) -> Result<bool, String> {
    if slot.state == State::Connecting {
        if let Some(e) = slot.sock.take_error().map_err(|e| e.to_string())? {
            return Err(format!("connect: {e}"));
        }
        match slot.sock.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotConnected => return Ok(false),
            Err(e) => return Err(format!("connect: {e}")),
        }
        slot.sock.set_nodelay(true).map_err(|e| e.to_string())?;
        // A request of a few hundred bytes always fits in an empty socket buffer.
        let n = slot
            .sock
            .write(&slot.request)
            .map_err(|e| format!("write: {e}"))?;
        if n != slot.request.len() {
            return Err("short write of the request".into());
        }
        slot.state = State::Upgrading;
    }
    let mut chunk = [0u8; 2048];
    let mut eof = false;
    loop {
        match slot.sock.read(&mut chunk) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => slot.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    if slot.state == State::Upgrading {
        let Some((_, head)) = wire::response(&slot.buf, &slot.key, config)? else {
            return match eof {
                true => Err("the server closed the connection during the handshake".into()),
                false => Ok(false),
            };
        };
        slot.handshake = slot.started.elapsed();
        slot.buf.drain(..head);
        let close = wire::close_frame(rng.key());
        let n = slot.sock.write(&close).map_err(|e| format!("write: {e}"))?;
        if n != close.len() {
            return Err("short write of the close frame".into());
        }
        slot.state = State::Closing;
    }
    // Closing: skip frames until the server's close frame.
    while !slot.close_received {
        let Some(h) = FrameHeader::parse(&slot.buf, 1 << 20).map_err(|e| e.to_string())? else {
            break;
        };
        let total = h.header_len + h.payload_len as usize;
        if slot.buf.len() < total {
            break;
        }
        slot.close_received = h.opcode == OpCode::Close;
        slot.buf.drain(..total);
    }
    match (eof, slot.close_received) {
        (false, _) => Ok(false),
        (true, true) => Ok(true),
        (true, false) => Err("the server closed the connection without a close frame".into()),
    }
}

/// Runs the handshake loop; returns the seconds measured and the CPU figures.
pub(crate) fn run(
    addr: SocketAddr,
    uri: &http::Uri,
    config: &Config,
    rng: &mut Rng,
    s: Settings,
    stats: &mut Stats,
) -> Result<(f64, CpuUse), String> {
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut events = Events::with_capacity(1024);
    let mut slots = Vec::with_capacity(s.connections);
    for i in 0..s.connections {
        slots.push(start(addr, uri, config, rng, &poll, Token(i))?);
    }
    let mut progress = Progress::new(0, "handshakes");
    let begin = Instant::now();
    let mut measure_start = begin + s.warmup;
    let mut end = measure_start + s.duration;
    let mut cpu = None;
    let timeout = if s.busy_poll {
        Duration::ZERO
    } else {
        Duration::from_millis(100)
    };
    loop {
        let now = Instant::now();
        if cpu.is_none() && now >= measure_start {
            stats.measuring = true;
            cpu = Some(CpuMeter::start(s.server_pid));
            measure_start = now;
            end = now + s.duration;
        }
        if now >= end {
            break;
        }
        let phase = if stats.measuring {
            "measuring"
        } else {
            "warm-up"
        };
        progress.tick(now, stats.progress_msgs, phase);
        let wait = timeout.min(end.saturating_duration_since(now));
        if let Err(e) = poll.poll(&mut events, Some(wait)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("poll: {e}"));
            }
        }
        for event in events.iter() {
            let i = event.token().0;
            let Some(slot) = slots.get_mut(i) else {
                continue;
            };
            match advance(slot, config, rng) {
                Ok(false) => continue,
                Ok(true) => stats.message(slot.handshake),
                Err(e) => stats.error(e),
            }
            if stats.errors >= MAX_ERRORS {
                return Err(format!(
                    "giving up after {MAX_ERRORS} errors; first: {}",
                    stats.first_error.as_deref().unwrap_or("?")
                ));
            }
            let _ = poll.registry().deregister(&mut slot.sock);
            *slot = start(addr, uri, config, rng, &poll, Token(i))?;
        }
    }
    stats.measuring = false;
    progress.done();
    let cpu = cpu.as_ref().map_or((None, None), CpuMeter::stop);
    Ok((
        Instant::now().duration_since(measure_start).as_secs_f64(),
        cpu,
    ))
}
