//! The task's part in token refresh: asking the application's token source for new tokens
//! off the read loop, sending them in `refresh`, and adopting them for the next connect.

use std::time::Duration;

use futures_util::FutureExt as _;

use tether_proto::{Code, Frame, Refresh};
use tokio::time::{Instant, timeout};

use super::{FETCH_LIMIT, Task};
use crate::ClientError;
use crate::refresh::{Arrival, Next};
use crate::transport::Transport;

impl Task {
    /// Tokens that arrived while no connection was up: the next connect uses them.
    pub(super) fn adopt_tokens(&mut self) {
        for (app, arrival) in self.shared.take_tokens() {
            if let Some(why) = self.tokens.adopt(&app, arrival) {
                tracing::debug!(%app, %why, "the token source failed between connections");
            }
        }
    }

    /// Asks the token source for a new token for every binding, one after the other. `Err`:
    /// why one could not be had (`None`: the client is closing).
    pub(super) async fn renew_tokens(&mut self) -> Result<(), Option<String>> {
        let Some(source) = self.config.token_source.clone() else {
            return Err(Some("no token source".into()));
        };
        let apps: Vec<String> = self.tokens.apps().map(str::to_owned).collect();
        for app in apps {
            let result = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Err(None),
                result = fetch_token(&source, &app) => result,
            };
            match result {
                Ok(token) => {
                    self.tokens.adopt(&app, Arrival::Offered(token));
                }
                Err(why) => {
                    return Err(Some(format!(
                        "the token source failed for app {app}: {why}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Fetches a token for `app` from the token source beside the connection; the result
    /// comes back through the shared state and wakes the task.
    pub(super) fn spawn_fetch(&self, app: String) {
        let Some(source) = self.config.token_source.clone() else {
            return;
        };
        let (shared, cancel) = (self.shared.clone(), self.cancel.clone());
        tokio::spawn(async move {
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                result = fetch_token(&source, &app) => result,
            };
            shared.push_token(&app, Arrival::Fetched(result));
            shared.wake.notify_one();
        });
    }

    /// Sends the tokens that arrived in `refresh` requests (reporting failed fetches), and
    /// starts the token fetches whose retry is due. `Err(Closed)` when the client is gone.
    pub(super) async fn write_tokens(
        &mut self,
        conn: &mut Transport,
        limit: Duration,
    ) -> Result<bool, ClientError> {
        let now = Instant::now();
        let mut frames = Vec::new();
        for (app, arrival) in self.shared.take_tokens() {
            match self.tokens.arrived(&app, arrival, now) {
                Next::Send(token) => {
                    let id = self.next_id();
                    self.tokens.sent(id, app.clone(), token.clone());
                    frames.push(Frame::new(id, Refresh { app, token }));
                }
                Next::Event(event) => {
                    if !self.deliver(event) {
                        return Err(ClientError::Closed);
                    }
                }
                Next::Nothing => {}
            }
        }
        for app in self.tokens.due(now) {
            self.spawn_fetch(app);
        }
        if frames.is_empty() {
            return Ok(false);
        }
        Self::send(conn, &frames, limit).await?;
        Ok(true)
    }
}

/// A refusal because a token expired: 4205 from a gateway, or `token_expired` from the
/// dispatcher.
pub(super) fn is_token_expired(e: &ClientError) -> bool {
    e.code() == Some(Code::TOKEN_EXPIRED)
        || matches!(e, ClientError::Dispatch { code, .. } if code == "token_expired")
}

/// One token from `source` for `app`, within [`FETCH_LIMIT`]. A source that panics fails
/// like one that answers `Err` (else its app would wait for the fetch forever).
pub(super) async fn fetch_token(source: &crate::TokenSource, app: &str) -> Result<String, String> {
    // Nothing of the client's is inside the future: unwinding out of it breaks no state.
    let fetch = std::panic::AssertUnwindSafe(timeout(FETCH_LIMIT, source.fetch(app)));
    match fetch.catch_unwind().await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(format!("no token within {FETCH_LIMIT:?}")),
        Err(_) => Err("the token source panicked".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_source_that_panics_fails_like_one_that_errs() {
        let source = crate::TokenSource::new(|app| {
            let app = app.to_owned();
            async move {
                assert_ne!(app, "demo", "the source breaks");
                Ok(format!("token for {app}"))
            }
        });
        assert_eq!(
            fetch_token(&source, "demo").await,
            Err("the token source panicked".to_owned())
        );
        assert_eq!(
            fetch_token(&source, "shop").await,
            Ok("token for shop".to_owned())
        );
    }
}
