//! The echo mode of WebSocket connections (`gateway.ws_echo`, a test mode that `tether serve`
//! takes only with `--test-modes`): every message comes back as it came, text as text and
//! binary as binary, and no tether frame is read or written. It is what the Autobahn
//! testsuite's fuzzingclient needs (`bench/autobahn.sh`), and what it measures is the framing
//! every client connection uses: this wire's reading, UTF-8 checks, limits, pongs, writing and
//! closes.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::timeout;

use super::{WsWire, encoding_of};
use crate::transport::{Carrier, Wire};

/// How long writing one echo (or the answering close) may take before the client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

impl<C: Carrier> WsWire<C> {
    /// Echoes the client's messages, one at a time, until the connection ends. Pongs go out
    /// while a message is still arriving; a message is written whole before the next is read.
    pub async fn echo(mut self) {
        let mut out = VecDeque::new();
        loop {
            let next = std::future::poll_fn(|cx| {
                if self.wants_write() {
                    std::task::ready!(self.poll_send(cx, &mut out))?;
                }
                self.poll_message(cx)
            })
            .await;
            match next {
                Ok(Some((opcode, payload))) => {
                    // Written with the opcode it came with; the encoding stays unfixed, so
                    // that both kinds are taken.
                    self.encoding = encoding_of(opcode);
                    out.push_back(payload);
                    if !matches!(
                        timeout(WRITE_TIMEOUT, self.send(&mut out)).await,
                        Ok(Ok(()))
                    ) {
                        return;
                    }
                }
                // The client's close (answered once written), or its stream's end.
                Ok(None) => {
                    let sent = timeout(WRITE_TIMEOUT, self.send(&mut out)).await;
                    self.end(matches!(sent, Ok(Ok(())))).await;
                    return;
                }
                Err(e) => {
                    if let Some(code) = e.code() {
                        let _ = timeout(WRITE_TIMEOUT, self.close(code, &e.to_string())).await;
                    }
                    return;
                }
            }
        }
    }
}
