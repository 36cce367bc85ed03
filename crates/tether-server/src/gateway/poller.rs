//! Where parked connections' sockets wait: an epoll instance of the gateway's own and the
//! thread that waits on it (see `super::task` for parking).

use std::io;
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use tether_core::ConnId;
use tracing::{error, warn};

use super::outbox::Socket;
use super::table::ConnTable;

/// The token that stops the poller's thread.
const STOP: Token = Token(usize::MAX);

/// The epoll instance that parked connections' sockets wait in, and the thread that waits on
/// it and wakes a connection whose socket becomes readable (its client sent something or went
/// away). tokio's reactor keeps a registration of about 300 bytes per socket (`ScheduledIo`,
/// cache-line aligned, and the stream around it); here a socket costs the kernel's epoll entry
/// alone, plus its 4-byte descriptor in the handle.
#[derive(Debug)]
pub(super) struct Poller {
    registry: mio::Registry,
    stop: Arc<AtomicBool>,
    waker: mio::Waker,
}

impl Poller {
    /// Starts the poller's thread, which finds woken connections in `table`.
    pub fn start(table: Arc<ConnTable>) -> io::Result<Poller> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = mio::Waker::new(poll.registry(), STOP)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::Builder::new()
            .name("tether-parked".into())
            .spawn(move || watch(poll, &table, &stopped))?;
        Ok(Poller {
            registry,
            stop,
            waker,
        })
    }

    /// Moves a live socket that nothing else holds (its wire is gone) out of tokio's reactor
    /// into this poller. `false`, with the socket untouched, when it cannot.
    pub fn park(&self, socket: &mut Socket, id: ConnId) -> bool {
        let Socket::Live(stream) = socket else {
            return false;
        };
        // Under the handle's lock, where every clone is made: a wake that gave the connection
        // a new task (and wire) while this one was parking shows here.
        if Arc::strong_count(stream) != 1 {
            return false;
        }
        // A second descriptor for the same socket: tokio's goes (deregistered, closed) with
        // the last reference to its stream, and a failure leaves the connection as it was.
        let Ok(parked) = socket2::SockRef::from(&**stream).try_clone() else {
            return false;
        };
        let parked = std::net::TcpStream::from(parked);
        let token = Token(id.0 as usize);
        let fd = parked.as_raw_fd();
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            warn!(error = %e, "cannot park a socket");
            return false;
        }
        *socket = Socket::Parked(parked);
        true
    }

    pub fn unwatch(&self, stream: &std::net::TcpStream) -> io::Result<()> {
        self.registry.deregister(&mut SourceFd(&stream.as_raw_fd()))
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

/// The poller's thread: wakes the parked connection behind each readable socket.
fn watch(mut poll: Poll, table: &ConnTable, stop: &AtomicBool) {
    let mut events = Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // Not expected from epoll_wait on a valid instance; parked connections would
            // still wake on everything but their client's bytes, so keep trying, slowly.
            warn!(error = %e, "the parked-socket poller failed");
            thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        for event in &events {
            if event.token() == STOP {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                continue;
            }
            // Gone, or serving again (a stale event): nothing to do.
            if let Some(conn) = table.handle(ConnId(event.token().0 as u64)) {
                // The wake resumes the connection on this thread. A panic there must not end
                // the thread: every parked client would stop being heard, and be closed at its
                // heartbeat timeout.
                let woken = std::panic::catch_unwind(AssertUnwindSafe(|| conn.wake_parked()));
                if woken.is_err() {
                    error!(conn = %conn.id, "waking a parked connection panicked");
                }
            }
        }
    }
}
