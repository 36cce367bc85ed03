//! `tether-bench bare-writer`: the kernel's floor for fan-out on the machine at hand.
//!
//! A server that does, per published message, one `write()` per subscriber and nothing else:
//! no protocol, no queue, no runtime. Subscribers connect and send one `S` byte; a publisher
//! connects, sends one `P` byte, then length-prefixed messages (see [`crate::target::bare`]).
//! Each message is framed once and written whole to every subscriber with a blocking
//! `write()`, so a subscriber that does not read holds the writer up (back-pressure instead of
//! a queue: the floor, not a server). With `--threads N`, subscribers are dealt round-robin to
//! N writer threads, each writing every message to its share.
//!
//! Plain threads and blocking sockets on purpose: whatever this costs above the kernel's work
//! is as little as a program can spend.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use socket2::{Domain, Socket, Type};

use crate::target::{MAX_MESSAGE, bare};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:7600")]
    addr: SocketAddr,
    /// Writer threads; subscribers are dealt round-robin among them.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

type Subscribers = Arc<Mutex<Vec<TcpStream>>>;

pub fn run(args: Args) -> anyhow::Result<()> {
    let socket = Socket::new(Domain::for_address(args.addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket
        .bind(&args.addr.into())
        .with_context(|| format!("cannot bind {}", args.addr))?;
    socket.listen(4096)?;
    eprintln!(
        "bare writer on {} (pid {}), {} writer thread(s)",
        args.addr,
        std::process::id(),
        args.threads.max(1)
    );
    serve(socket.into(), args.threads);
    Ok(())
}

/// Accepts subscribers and publishers on `listener` for as long as it accepts.
pub fn serve(listener: TcpListener, threads: usize) {
    let threads = threads.max(1);
    let shards: Vec<Subscribers> = (0..threads).map(|_| Subscribers::default()).collect();
    // With one thread, the publisher's thread writes itself; with more, each writer thread
    // gets every message through a small bounded channel.
    let lanes: Vec<SyncSender<Arc<Vec<u8>>>> = if threads == 1 {
        Vec::new()
    } else {
        shards
            .iter()
            .map(|shard| {
                let (tx, rx) = sync_channel(64);
                let shard = shard.clone();
                std::thread::spawn(move || writer_thread(&shard, &rx));
                tx
            })
            .collect()
    };
    let lanes = Arc::new(lanes);

    let mut next_shard = 0;
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // Out of files (a previous run's subscribers, closed since, still counted):
                // drop the closed ones, and do not spin on the error.
                if matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) {
                    reap(&shards);
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        // A client that never says what it is must not hold up the accept loop for long.
        if stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .is_err()
        {
            continue;
        }
        let mut kind = [0_u8];
        if stream.read_exact(&mut kind).is_err() || stream.set_read_timeout(None).is_err() {
            continue;
        }
        let _ = stream.set_nodelay(true);
        match kind[0] {
            bare::SUBSCRIBER => {
                lock(&shards[next_shard % threads]).push(stream);
                next_shard += 1;
            }
            bare::PUBLISHER => {
                // A new run: start it without the subscribers of the previous one.
                reap(&shards);
                let (shard, lanes) = (shards[0].clone(), lanes.clone());
                std::thread::spawn(move || match publisher(stream, &shard, &lanes) {
                    Err(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => {
                        eprintln!("publisher gone: {e}");
                    }
                    _ => {}
                });
            }
            _ => {}
        }
    }
}

/// "Too many open files" (per process, system-wide).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// Drops the subscribers whose connection is closed. Not on the fan-out path: a closed
/// subscriber is otherwise only noticed when a write to it fails.
fn reap(shards: &[Subscribers]) {
    for shard in shards {
        lock(shard).retain(|s| {
            if s.set_nonblocking(true).is_err() {
                return false;
            }
            let open = match s.peek(&mut [0_u8]) {
                Ok(0) => false,
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            };
            open && s.set_nonblocking(false).is_ok()
        });
    }
}

fn lock(s: &Subscribers) -> std::sync::MutexGuard<'_, Vec<TcpStream>> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads messages from one publisher; frames each once and hands it to the writers (or writes
/// it itself with one writer thread).
fn publisher(
    mut stream: TcpStream,
    shard: &Subscribers,
    lanes: &[SyncSender<Arc<Vec<u8>>>],
) -> std::io::Result<()> {
    let mut framed = Vec::with_capacity(4096);
    loop {
        let mut prefix = [0_u8; 4];
        stream.read_exact(&mut prefix)?;
        let len = u32::from_be_bytes(prefix) as usize;
        if len > MAX_MESSAGE {
            return Err(std::io::Error::other(format!("message of {len} bytes")));
        }
        framed.clear();
        framed.extend_from_slice(&prefix);
        framed.resize(4 + len, 0);
        stream.read_exact(&mut framed[4..])?;
        if lanes.is_empty() {
            write_all(shard, &framed);
        } else {
            let message = Arc::new(framed.clone());
            for lane in lanes {
                lane.send(message.clone()).map_err(std::io::Error::other)?;
            }
        }
    }
}

fn writer_thread(shard: &Subscribers, rx: &Receiver<Arc<Vec<u8>>>) {
    while let Ok(message) = rx.recv() {
        write_all(shard, &message);
    }
}

/// One `write()` per subscriber (more only if the kernel takes part of it); subscribers whose
/// write fails are dropped.
fn write_all(shard: &Subscribers, message: &[u8]) {
    lock(shard).retain_mut(|s| s.write_all(message).is_ok());
}
